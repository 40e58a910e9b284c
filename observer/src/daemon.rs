//! `observer run`: load the programs, keep them attached to the selected
//! interfaces as they come and go, poll the maps into the flow table, and
//! serve the JSON API; on SIGTERM/SIGINT detach and remove what we added.

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
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
    config::{InterfaceSelector, KubeMode, RunArgs},
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
    sources::{
        bird::BirdStatus,
        cni::CniDir,
        ipvs::{self, IpvsService},
        kube::{self, KubeStores},
        objects::ClusterObjects,
        routes,
    },
};

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
    let mut dp = Datapath::load(args.flow_capacity)?;
    let jiffy_ns = dp.jiffy_ns(std::time::Duration::from_millis(30))?;
    let mut attacher = Attacher::new(args.attach_mode)?;
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
                    if names.ready(&args) {
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

/// Pod interfaces get the MTU of the tunnel devices that carry routes to
/// other nodes' blocks (per family) as their limit, so that the kernel
/// counts what pods send that cannot fit through the tunnel. A tunnel
/// device that routes nothing (a `tunl0` that exists because the module is
/// loaded) sets no limit. Set on every pod interface when the limits change,
/// and on new pod interfaces.
#[derive(Default)]
struct MtuLimits {
    current: (u16, u16),
    set_on: std::collections::HashSet<u32>,
}

impl MtuLimits {
    async fn apply(&mut self, dp: &mut Datapath, state: &Shared) {
        let st = state.read().await;
        let routed: std::collections::HashSet<u32> = st
            .model
            .routes()
            .remote_blocks
            .values()
            .map(|r| r.ifindex)
            .collect();
        let (mut v4, mut v6) = (u16::MAX, u16::MAX);
        for (ifindex, s) in st.interfaces.iter().filter(|(_, s)| !s.gone) {
            if !routed.contains(ifindex) {
                continue;
            }
            if let (InterfaceKind::Tunnel(_), Some(mtu)) = (s.iface.kind, s.mtu) {
                let mtu = mtu.min(u16::MAX as u32) as u16;
                if s.iface.name.contains("v6") {
                    v6 = v6.min(mtu);
                } else {
                    v4 = v4.min(mtu);
                }
            }
        }
        let none = |m: u16| if m == u16::MAX { 0 } else { m };
        let limits = (none(v4), none(v6));
        if limits != self.current {
            self.current = limits;
            self.set_on.clear();
        }
        let pods = st
            .interfaces
            .iter()
            .filter(|(_, s)| s.iface.kind == InterfaceKind::Pod && s.via.is_some() && !s.gone);
        for (ifindex, s) in pods {
            if self.set_on.contains(ifindex) {
                continue;
            }
            match dp.set_mtu_limit(*ifindex, limits.0, limits.1) {
                Ok(()) => {
                    self.set_on.insert(*ifindex);
                }
                Err(e) => tracing::warn!(interface = %s.iface.name, "{e:#}"),
            }
        }
        self.set_on.retain(|i| st.interfaces.contains_key(i));
    }
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
    Ok(())
}

/// Where names come from, and when to rebuild the model.
struct Names {
    routes: tokio::sync::watch::Receiver<Arc<routes::RouteTable>>,
    dir_objects: ClusterObjects,
    dir_stamp: Option<std::time::SystemTime>,
    kube: Option<KubeStores>,
    kube_changed: Arc<AtomicBool>,
    ipvs: Vec<IpvsService>,
    /// BIRD's peers (IPv4, IPv6), read by their own task (see
    /// [`follow_bird`]) so that a hung BIRD never holds up a poll.
    bird: tokio::sync::watch::Receiver<Vec<BirdStatus>>,
    cni: Option<CniDir>,
    cni_stamp: Option<std::time::SystemTime>,
    interfaces: Vec<(String, ipnet::IpNet)>,
}

impl Names {
    async fn start(args: &RunArgs) -> Result<Self> {
        let kube_changed = Arc::new(AtomicBool::new(true));
        let use_kube = match args.kubernetes {
            KubeMode::Never => false,
            KubeMode::Always => true,
            KubeMode::Auto => kube::configured(),
        };
        let kube = if use_kube {
            match kube::start(kube_changed.clone()).await {
                Ok(stores) => Some(stores),
                Err(e) if args.kubernetes == KubeMode::Auto => {
                    tracing::warn!("going on without the Kubernetes API: {e:#}");
                    None
                }
                Err(e) => return Err(e),
            }
        } else {
            None
        };
        Ok(Self {
            routes: routes::follow().await?,
            dir_objects: ClusterObjects::default(),
            dir_stamp: None,
            kube,
            kube_changed,
            ipvs: Vec::new(),
            bird: follow_bird(
                args.bird_socket.clone(),
                args.bird6_socket.clone(),
                args.poll_interval,
            ),
            cni: None,
            cni_stamp: None,
            interfaces: Vec::new(),
        })
    }

    /// Rebuilds the model if the routes, the API's objects or the objects
    /// directory changed.
    async fn refresh(&mut self, args: &RunArgs, state: &Shared, force: bool) {
        let mut changed = force || self.routes.has_changed().unwrap_or(false);
        if let Some(dir) = &args.objects_dir {
            let stamp = dir_stamp(dir);
            if stamp != self.dir_stamp {
                match ClusterObjects::load_dir(dir) {
                    Ok(o) => {
                        self.dir_objects = o;
                        self.dir_stamp = stamp;
                        changed = true;
                    }
                    Err(e) => tracing::warn!("reading objects: {e:#}"),
                }
            }
        }
        changed |= self.kube.is_some() && self.kube_changed.swap(false, Ordering::AcqRel);
        // kube-proxy in IPVS mode: its table, where the kernel has IPVS.
        let ipvs = ipvs::read().unwrap_or_default();
        if ipvs != self.ipvs {
            self.ipvs = ipvs;
            changed = true;
        }
        // BGP peers (read by their own task), the CNI directory (when it
        // changed) and this node's addresses (for CrossSubnet).
        changed |= self.bird.has_changed().unwrap_or(false);
        let stamp = dir_stamp(&args.cni_dir);
        if stamp != self.cni_stamp || self.cni.is_none() {
            self.cni_stamp = stamp;
            let cni = CniDir::read(&args.cni_dir);
            if self.cni.as_ref() != Some(&cni) {
                self.cni = Some(cni);
                changed = true;
            }
        }
        let interfaces = crate::model::calico::interface_networks();
        if interfaces != self.interfaces {
            self.interfaces = interfaces;
            changed = true;
        }
        if changed {
            let mut objects = self.dir_objects.clone();
            if let Some(k) = &self.kube {
                let live = k.snapshot();
                objects.pods.extend(live.pods);
                objects.nodes.extend(live.nodes);
                objects.services.extend(live.services);
                objects.endpoint_slices.extend(live.endpoint_slices);
                objects.jobs.extend(live.jobs);
                objects.replica_sets.extend(live.replica_sets);
                objects.ip_pools.extend(live.ip_pools);
                objects.block_affinities.extend(live.block_affinities);
                objects.ipam_blocks.extend(live.ipam_blocks);
            }
            let routes = self.routes.borrow_and_update().clone();
            let mut model = Model::build(
                &objects,
                routes,
                &args.interface_prefix(),
                args.node_name.clone(),
            );
            model.set_node_state(
                self.bird.borrow_and_update().clone(),
                self.cni.clone(),
                &self.interfaces,
            );
            state.write().await.model = Arc::new(model);
        }
    }
}

impl Names {
    /// Whether each configured source of names answered at its last read.
    fn synced(&self, args: &RunArgs) -> Vec<(&'static str, bool)> {
        let mut out = vec![("routes", true)];
        if args.objects_dir.is_some() {
            out.push(("objects", self.dir_stamp.is_some()));
        }
        if let Some(k) = &self.kube {
            // Synced once every reflector has listed.
            use futures::FutureExt as _;
            fn listed<K>(s: &::kube::runtime::reflector::Store<K>) -> bool
            where
                K: ::kube::Resource + Clone + 'static,
                K::DynamicType: Eq + std::hash::Hash + Clone,
            {
                matches!(s.wait_until_ready().now_or_never(), Some(Ok(())))
            }
            let core = listed(&k.pods)
                && listed(&k.nodes)
                && listed(&k.services)
                && listed(&k.endpoint_slices)
                && listed(&k.jobs)
                && listed(&k.replica_sets);
            out.push(("kubernetes", core));
            let calico =
                listed(&k.ip_pools) && listed(&k.block_affinities) && listed(&k.ipam_blocks);
            out.push(("calico", calico));
        }
        out.push(("bird", self.bird.borrow().iter().any(|b| b.running)));
        out.push(("cni", self.cni.as_ref().is_some_and(|c| c.error.is_none())));
        out
    }

    /// Whether the names the daemon needs before it is ready have been read
    /// once: the routes, the objects directory, the Kubernetes API's core
    /// kinds (Calico's CRDs, BIRD and CNI are optional).
    fn ready(&self, args: &RunArgs) -> bool {
        self.synced(args)
            .iter()
            .filter(|(s, _)| matches!(*s, "routes" | "objects" | "kubernetes"))
            .all(|(_, ok)| *ok)
    }
}

/// Asks BIRD (IPv4 and IPv6) every `interval` on a blocking thread; each
/// exchange is bounded ([`crate::sources::bird::DEADLINE`]). Publishes
/// only changes, and logs only when a BIRD comes or goes.
fn follow_bird(
    v4: std::path::PathBuf,
    v6: std::path::PathBuf,
    interval: std::time::Duration,
) -> tokio::sync::watch::Receiver<Vec<BirdStatus>> {
    let (tx, rx) = tokio::sync::watch::channel(Vec::new());
    tokio::spawn(async move {
        let mut was_running: [Option<bool>; 2] = [None, None];
        loop {
            let (a, b) = (v4.clone(), v6.clone());
            let Ok(now) = tokio::task::spawn_blocking(move || {
                vec![BirdStatus::query(&a, false), BirdStatus::query(&b, true)]
            })
            .await
            else {
                return;
            };
            for (i, s) in now.iter().enumerate() {
                if was_running[i] != Some(s.running) {
                    was_running[i] = Some(s.running);
                    match &s.error {
                        None => {
                            tracing::info!(family = %s.family, socket = %s.socket, "BIRD answers")
                        }
                        Some(e) => tracing::info!(family = %s.family, "BIRD: {e}"),
                    }
                }
            }
            let differs = *tx.borrow() != now;
            if differs && tx.send(now).is_err() {
                return;
            }
            tokio::time::sleep(interval.max(std::time::Duration::from_millis(500))).await;
        }
    });
    rx
}

/// The newest modification time in a directory (it and its files).
fn dir_stamp(dir: &std::path::Path) -> Option<std::time::SystemTime> {
    let mut newest = std::fs::metadata(dir).and_then(|m| m.modified()).ok()?;
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        if let Ok(t) = entry.metadata().and_then(|m| m.modified()) {
            newest = newest.max(t);
        }
    }
    Some(newest)
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
