//! `observer run`: load the programs, keep them attached to the selected
//! interfaces as they come and go, poll the maps into the flow table, and
//! serve the JSON API; on SIGTERM/SIGINT detach and remove what we added.

mod mtu;
mod names;

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::Instant,
};

use anyhow::{Result, bail};
use observer_common::{Encap, EncapTotals, FlowKey, FlowStats, IfaceTotals, Stat};
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::RwLock,
    time::{MissedTickBehavior, interval},
};

use crate::{
    config::{InterfaceSelector, RunArgs},
    datapath::{
        Datapath,
        attach::{Attacher, LinkLayer, Via},
        links::{self, LinkEvent, LinkInfoView},
    },
    export::{
        api, http,
        metrics::{Metrics, MetricsConfig},
    },
    flows::{Clock, Interface, InterfaceKind, table::FlowTable},
    model::Model,
};

use self::{mtu::MtuLimits, names::Names};

/// An interface we attached to (or tried to).
#[derive(Clone, Debug)]
pub struct InterfaceState {
    pub iface: Interface,
    pub layer: LinkLayer,
    pub via: Option<Via>,
    pub attach_error: Option<String>,
    pub totals: IfaceTotals,
    /// Deleted; kept while flows seen on it are still shown.
    pub gone: bool,
    /// The link's MTU, as rtnetlink last said.
    pub mtu: Option<u32>,
}

#[derive(Default)]
pub struct DatapathStatus {
    pub polls: u64,
    pub last_poll_ms: f64,
    /// When the last poll ended (milliseconds since the Unix epoch): what
    /// clients compute rates with, whatever their own timing.
    pub last_poll_at_ms: u64,
    pub kernel_flow_entries: u64,
    pub flow_capacity: u32,
    pub stats: [u64; Stat::COUNT as usize],
    pub encap: [EncapTotals; Encap::COUNT as usize],
    pub attach_mode_tcx: bool,
    /// Datapath counters at each poll of the last minute (for the doctor).
    pub stats_history: std::collections::VecDeque<(Instant, [u64; Stat::COUNT as usize])>,
    /// (run time ns, runs) per program when `kernel.bpf_stats_enabled`.
    pub program_stats: Vec<(String, (u64, u64))>,
}

/// Everything the API shows; written by the poll loop.
pub struct State {
    pub table: FlowTable,
    pub model: Arc<Model>,
    pub interfaces: BTreeMap<u32, InterfaceState>,
    pub status: DatapathStatus,
    pub clock: Clock,
    pub started: std::time::SystemTime,
}

pub type Shared = Arc<RwLock<State>>;

pub async fn run(args: RunArgs) -> Result<()> {
    args.validate()?;
    let selector = InterfaceSelector::new(&args)?;
    // Before loading anything: a kernel without TCX is told at once.
    let mut attacher = Attacher::new(args.attach_mode)?;
    let mut dp = Datapath::load(args.flow_capacity)?;
    let jiffy_ns = dp.jiffy_ns(std::time::Duration::from_millis(30))?;
    let state: Shared = Arc::new(RwLock::new(State {
        table: FlowTable::default(),
        model: Arc::new(Model::default()),
        interfaces: BTreeMap::new(),
        status: DatapathStatus {
            flow_capacity: args.flow_capacity,
            ..Default::default()
        },
        clock: Clock::new(dp.clock_sample()?, jiffy_ns),
        started: std::time::SystemTime::now(),
    }));

    // Attach to what is there before answering: once the API answers, the
    // interfaces present at start are watched.
    let (present, mut link_events) = links::follow().await?;
    for link in present {
        on_link_present(&mut dp, &mut attacher, &selector, &state, link).await;
    }
    let mut mtu_limits = MtuLimits::default();
    mtu_limits.apply(&mut dp, &state).await;
    let mut names = Names::start(&args).await?;
    names.refresh(&args, &state, true).await;
    let mut servers = vec![api::serve(&args.socket, state.clone()).await?];
    if let Some(address) = args.api_address {
        servers.push(api::serve_tcp(address, state.clone()).await?);
    }
    let metrics = Arc::new(Mutex::new(Metrics::new(
        MetricsConfig::from_args(&args),
        args.node_name.as_deref().unwrap_or(""),
    )));
    let health = Arc::new(http::Health::new(args.poll_interval));
    if let Some(address) = args.metrics_address.0 {
        servers.push(http::serve(address, metrics.clone(), health.clone()).await?);
    }
    tracing::info!(socket = %args.socket.display(), metrics = ?args.metrics_address.0, "observer running");

    let mut tick = interval(args.poll_interval);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;

    let result: Result<()> = async {
        loop {
            tokio::select! {
                ev = link_events.recv() => match ev {
                    Some(ev) => {
                        on_link(&mut dp, &mut attacher, &selector, &state, ev).await;
                        mtu_limits.apply(&mut dp, &state).await;
                    }
                    None => bail!("the rtnetlink event stream ended"),
                },
                _ = tick.tick() => {
                    let sources = names.synced(&args);
                    poll(&dp, &attacher, &args, jiffy_ns, &state, &metrics, &sources).await?;
                    names.refresh(&args, &state, false).await;
                    // Routes to other nodes may have come or gone.
                    mtu_limits.apply(&mut dp, &state).await;
                    health.polled();
                    // Attached to what was there, polled and named once.
                    if !health.is_ready() && names.ready(&args) {
                        health.set_ready();
                    }
                }
                _ = sigterm.recv() => return Ok(()),
                _ = sigint.recv() => return Ok(()),
            }
        }
    }
    .await;

    tracing::info!("shutting down: detaching");
    attacher.detach_all(&mut dp.ebpf).await;
    for server in servers {
        server.abort();
    }
    let _ = std::fs::remove_file(&args.socket);
    result
}

async fn on_link(
    dp: &mut Datapath,
    attacher: &mut Attacher,
    selector: &InterfaceSelector,
    state: &Shared,
    ev: LinkEvent,
) {
    match ev {
        LinkEvent::Present(link) => on_link_present(dp, attacher, selector, state, link).await,
        LinkEvent::Gone { index } => {
            if let Some(name) = attacher.forget(&mut dp.ebpf, index) {
                tracing::info!(interface = %name, "interface gone, detached");
            }
            if let Some(s) = state.write().await.interfaces.get_mut(&index) {
                s.gone = true;
                s.via = None;
            }
        }
    }
}

async fn on_link_present(
    dp: &mut Datapath,
    attacher: &mut Attacher,
    selector: &InterfaceSelector,
    state: &Shared,
    link: LinkInfoView,
) {
    let Some(kind) = selector.classify(&link) else {
        // Renamed away from our patterns: let it go.
        if attacher.is_attached(link.index) {
            attacher.forget(&mut dp.ebpf, link.index);
            state.write().await.interfaces.remove(&link.index);
        }
        return;
    };
    if attacher.is_attached(link.index) {
        if let Some(i) = state.write().await.interfaces.get_mut(&link.index) {
            i.mtu = link.mtu;
        }
        return;
    }
    let result = attacher.attach(&mut dp.ebpf, link.index, &link.name, link.layer);
    let via = attacher
        .attached()
        .find(|(i, _, _)| *i == link.index)
        .map(|(_, _, v)| v);
    match &result {
        Ok(()) => tracing::info!(interface = %link.name, ?kind, ?via, "attached"),
        Err(e) => tracing::warn!(interface = %link.name, "cannot attach: {e:#}"),
    }
    state.write().await.interfaces.insert(
        link.index,
        InterfaceState {
            iface: Interface {
                name: link.name,
                kind,
            },
            layer: link.layer,
            via,
            attach_error: result.err().map(|e| format!("{e:#}")),
            totals: IfaceTotals::default(),
            gone: false,
            mtu: link.mtu,
        },
    );
}

async fn poll(
    dp: &Datapath,
    attacher: &Attacher,
    args: &RunArgs,
    jiffy_ns: u64,
    state: &Shared,
    metrics: &Mutex<Metrics>,
    sources: &[(&'static str, bool)],
) -> Result<()> {
    let started = Instant::now();
    let mut entries: Vec<(FlowKey, FlowStats)> = Vec::with_capacity(4096);
    dp.read_flows(|k, v| entries.push((*k, *v)))?;
    let stats = dp.stats()?;
    let encap = dp.encap_totals()?;
    let mut totals = Vec::new();
    for (ifindex, _, _) in attacher.attached() {
        totals.push((ifindex, dp.iface_totals(ifindex)?));
    }

    // Sampled after the read, so every flow's last packet is before `now`.
    let clock = Clock::new(dp.clock_sample()?, jiffy_ns);
    let now = clock.now_jiffies();
    let idle_before = now.saturating_sub(clock.jiffies_in(args.idle_timeout));
    let forget_before = now.saturating_sub(clock.jiffies_in(args.retain));
    let mut st = state.write().await;
    st.table.begin_poll();
    for (k, v) in &entries {
        st.table.observe(k, v);
    }
    let idle = st.table.end_poll(idle_before, forget_before);
    for key in idle {
        let last = dp.evict(&key)?;
        st.table.retire(&key, last.as_ref());
    }
    for (ifindex, t) in totals {
        if let Some(s) = st.interfaces.get_mut(&ifindex) {
            s.totals = t;
        }
    }
    // Deleted interfaces stay listed while their flows are shown (a walk
    // over all flows, so only when some interface is gone).
    if st.interfaces.values().any(|s| s.gone) {
        let live: std::collections::HashSet<u32> =
            st.table.iter().map(|(k, _)| k.ifindex).collect();
        st.interfaces.retain(|i, s| !s.gone || live.contains(i));
    }
    st.clock = clock;
    let status = &mut st.status;
    status.polls += 1;
    status.kernel_flow_entries = entries.len() as u64;
    status.stats = stats;
    status.stats_history.push_back((Instant::now(), stats));
    while status
        .stats_history
        .front()
        .is_some_and(|(t, _)| t.elapsed() > std::time::Duration::from_secs(60))
    {
        status.stats_history.pop_front();
    }
    status.encap = encap;
    status.attach_mode_tcx = attacher.attached().any(|(_, _, v)| v == Via::Tcx);
    status.program_stats = dp.program_stats();
    // The metrics' share of the poll is part of its time.
    if let Ok(mut m) = metrics.lock() {
        m.update(&mut st, sources, started);
    }
    st.status.last_poll_ms = started.elapsed().as_secs_f64() * 1e3;
    st.status.last_poll_at_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    Ok(())
}

/// The interface of a flow for display: `None` once forgotten.
pub fn interface_of(st: &State, ifindex: u32) -> Option<&Interface> {
    st.interfaces.get(&ifindex).map(|s| &s.iface)
}

impl InterfaceKind {
    pub fn label(&self) -> String {
        match self {
            InterfaceKind::Pod => "pod".into(),
            InterfaceKind::Tunnel(e) => format!("tunnel/{}", e.name()),
            InterfaceKind::Underlay => "underlay".into(),
        }
    }
}
