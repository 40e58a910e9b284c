//! `observer run`: load the programs, keep them attached to the selected
//! interfaces as they come and go, poll the maps into the flow table, and
//! serve the JSON API. With pins (the default) the programs stay attached
//! at SIGTERM/SIGINT and the counts are saved, for the next daemon to take
//! over; without, we detach and remove what we added.

pub mod cleanup;
mod mtu;
mod names;
pub mod saved;

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::Instant,
};

use anyhow::{Result, bail};
use observer_common::{Hook, IfaceTotals};
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::RwLock,
    time::{MissedTickBehavior, interval},
};

use crate::{
    config::{InterfaceSelector, PollSettings, RunArgs},
    datapath::{
        Datapath,
        attach::{Attacher, Via},
        kernel_log::{KernelLog, KernelLogLevel},
        links::{self, LinkEvent, LinkInfoView},
        pin::PinRoot,
    },
    export::{
        api, http,
        metrics::{Metrics, Overflow},
    },
    flows::{Clock, Interface, table::FlowTable},
    model::Model,
    state::{DatapathStatus, InterfaceState, Shared, State},
};

use self::{mtu::MtuLimits, names::Names};

pub async fn run(args: RunArgs) -> Result<()> {
    // First, before anything is loaded: the only daemon on this socket.
    let _claim = crate::export::prepare(&args.socket).await?;
    args.validate()?;
    let selector = InterfaceSelector::new(&args)?;
    let pins = args.pin_path.0.as_deref().map(PinRoot::open).transpose()?;
    // Before loading anything: a kernel without TCX is told at once.
    let mut attacher = Attacher::new(args.attach_mode, pins.clone())?;
    let mut dp = Datapath::load_with(args.flow_capacity, pins.as_ref(), args.ebpf_log)?;
    // Read from before the first attach, so that no record is missed.
    if args.ebpf_log != KernelLogLevel::Off {
        KernelLog::take(&mut dp.ebpf)?.spawn()?;
    }
    let jiffy_ns = dp.jiffy_ns(std::time::Duration::from_millis(30))?;
    let state: Shared = Arc::new(RwLock::new(State {
        table: FlowTable::default(),
        model: Arc::new(Model::default()),
        interfaces: BTreeMap::new(),
        status: DatapathStatus {
            flow_capacity: args.flow_capacity,
            program_ids: dp.program_ids(),
            ..Default::default()
        },
        clock: Clock::new(dp.clock_sample()?, jiffy_ns),
        started: std::time::SystemTime::now(),
    }));
    let metrics = Arc::new(Mutex::new(Metrics::new(
        args.metrics(),
        args.node_name.as_deref().unwrap_or(""),
    )));

    // Attach to what is there before answering: once the API answers, the
    // interfaces present at start are watched.
    let (present, mut link_events) = links::follow().await?;
    for link in present {
        on_link_present(&mut dp, &mut attacher, &selector, &state, link).await;
    }
    if let Some(p) = &pins {
        // Ours took over what an earlier daemon left; the rest is stale.
        attacher.unpin_stale_links();
        if let Some(layout) = &dp.layout {
            p.remove_other_layouts(layout);
        }
        take_over_saved(&args.state_file, &mut dp, &state, &metrics).await;
    }
    let mut mtu_limits = MtuLimits::default();
    mtu_limits.apply(&mut dp, &state).await;
    let mut names = Names::start(args.names()).await?;
    names.refresh(&state, true).await;
    let mut servers = vec![api::serve(&args.socket, state.clone()).await?];
    if let Some(address) = args.api_address {
        servers.push(api::serve_tcp(address, state.clone()).await?);
    }
    let health = Arc::new(http::Health::new(args.poll_interval));
    if let Some(address) = args.metrics_address.0 {
        servers.push(http::serve(address, metrics.clone(), health.clone()).await?);
    }
    tracing::info!(socket = %args.socket.display(), metrics = ?args.metrics_address.0, "observer running");

    let mut tick = interval(args.poll_interval);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut last_saved = Instant::now();

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
                    let sources = names.synced();
                    poll(&mut dp, &attacher, args.polling(), jiffy_ns, &state, &metrics, &sources).await?;
                    names.refresh(&state, false).await;
                    // Routes to other nodes may have come or gone.
                    mtu_limits.apply(&mut dp, &state).await;
                    health.polled();
                    // Attached to what was there, polled and named once.
                    if !health.is_ready() && names.ready() {
                        health.set_ready();
                    }
                    if pins.is_some() && last_saved.elapsed() >= saved::SAVE_EVERY {
                        last_saved = Instant::now();
                        let s = snapshot(&dp, &state, &metrics).await;
                        let path = args.state_file.clone();
                        tokio::task::spawn_blocking(move || save(&path, &s));
                    }
                }
                _ = sigterm.recv() => return Ok(()),
                _ = sigint.recv() => return Ok(()),
            }
        }
    }
    .await;

    for server in servers {
        server.abort();
    }
    let _ = std::fs::remove_file(&args.socket);
    if pins.is_some() {
        save(&args.state_file, &snapshot(&dp, &state, &metrics).await);
        attacher.keep_all();
        tracing::info!(
            "exiting; the programs stay attached and counting for the next daemon \
             (`observer cleanup` removes them)"
        );
    } else {
        tracing::info!("shutting down: detaching");
        attacher.detach_all().await;
    }
    result
}

/// The state to save: taken under the locks, encoded and written by the
/// caller.
async fn snapshot(dp: &Datapath, state: &Shared, metrics: &Mutex<Metrics>) -> saved::Saved {
    let st = state.read().await;
    saved::Saved {
        flows_map_id: dp.flows_map_id,
        saved_at_ms: saved::Saved::now_ms(),
        table: st.table.save(),
        slots: postcard::to_stdvec(&dp.tracker).unwrap_or_default(),
        interfaces: st
            .interfaces
            .iter()
            .filter(|(_, s)| !s.gone)
            .map(|(i, s)| (*i, s.totals))
            .collect(),
        metrics: metrics.lock().map(|m| m.save()).unwrap_or_default(),
    }
}

fn save(path: &std::path::Path, s: &saved::Saved) {
    let started = Instant::now();
    match saved::write(path, s) {
        Ok(()) => tracing::debug!(
            path = %path.display(),
            ms = started.elapsed().as_millis() as u64,
            "state saved"
        ),
        Err(e) => tracing::warn!("saving the state: {e:#}"),
    }
}

/// Goes on from the state an earlier daemon saved: its metrics' values, and
/// its flow table and interface totals when the kernel maps are the very
/// ones it read (else their counts are kept, and the new maps count from
/// zero).
async fn take_over_saved(
    state_file: &std::path::Path,
    dp: &mut Datapath,
    state: &Shared,
    metrics: &Mutex<Metrics>,
) {
    let saved = match saved::read(state_file) {
        Ok(Some(s)) => s,
        Ok(None) => return,
        Err(e) => {
            tracing::warn!("not going on from the saved state: {e:#}");
            return;
        }
    };
    let same = dp.reused_maps && saved.flows_map_id == dp.flows_map_id;
    let mut st = state.write().await;
    st.table.restore(saved.table, same);
    if same {
        match postcard::from_bytes(&saved.slots) {
            Ok(t) => dp.tracker = t,
            Err(e) => {
                // Every count in the slots is taken as in the table: none
                // twice, though those since the save are not counted.
                tracing::warn!("the saved slots do not decode ({e}); taking them as read now");
                match dp.adopt_slots() {
                    Ok(()) => {}
                    Err(e) => tracing::warn!("{e:#}"),
                }
            }
        }
    }
    if same {
        for (ifindex, totals) in saved.interfaces {
            if let Some(s) = st.interfaces.get_mut(&ifindex) {
                s.totals = totals;
            }
        }
    }
    if let Ok(mut m) = metrics.lock() {
        m.restore(saved.metrics);
    }
    tracing::info!(
        flows = st.table.len(),
        same_maps = same,
        age_s = saved::Saved::now_ms().saturating_sub(saved.saved_at_ms) / 1000,
        "going on from the saved state"
    );
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
            if let Some(name) = attacher.forget(index) {
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
            attacher.detach(link.index);
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
    // A slot that counted for another (older) interface starts from zero;
    // one that already counts for this one (a restart) goes on.
    if let Err(e) = dp.claim_iface_totals(link.index) {
        tracing::warn!(interface = %link.name, "resetting its totals: {e:#}");
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

/// The value, or `None` with a warning saying what failed.
fn reported<T>(what: &str, r: Result<T>) -> Option<T> {
    r.inspect_err(|e| tracing::warn!("{what}: {e:#}")).ok()
}

async fn poll(
    dp: &mut Datapath,
    attacher: &Attacher,
    settings: PollSettings,
    jiffy_ns: u64,
    state: &Shared,
    metrics: &Mutex<Metrics>,
    sources: &[(&'static str, bool)],
) -> Result<()> {
    let started = Instant::now();
    // Only the slots that changed since the last poll, read in place and
    // added to the table as they are read: no copy of them is held (at 100k
    // new flows, such a copy was 16 of the daemon's 97 MiB peak). From here
    // on, what was read must reach the table and the metrics: a read below
    // that fails is reported and leaves its last value in place.
    let mut st = state.write().await;
    st.table.begin_poll();
    dp.poll_flows(|c| st.table.add(&c.key, &c.grown, &c.stats, c.opened, c.closed))?;
    // Flows first, interface totals after: a packet is in its interface's
    // totals before it is in its flow, so the totals read are never behind.
    let stats = reported("reading the datapath counters", dp.stats());
    let encap = reported("reading the encapsulation totals", dp.encap_totals());
    let mut totals = Vec::new();
    for (ifindex, _, _) in attacher.attached() {
        match dp.iface_totals(ifindex) {
            Ok(t) => totals.push((ifindex, t)),
            Err(e) => tracing::warn!("reading interface {ifindex}'s totals: {e:#}"),
        }
    }

    // Sampled after the read, so every flow's last packet is before `now`.
    let clock = reported(
        "reading the kernel clock",
        dp.clock_sample().map(|c| Clock::new(c, jiffy_ns)),
    );
    let (mut retired, mut forget_before) = (0, 0);
    if let Some(clock) = &clock {
        let now = clock.now_jiffies();
        let idle_before = now.saturating_sub(clock.jiffies_in(settings.idle_timeout));
        forget_before = now.saturating_sub(clock.jiffies_in(settings.retain));
        // Half the map stays free for the flows of the next interval; past
        // that, the least recently seen are given back (their counts kept).
        let chosen = dp.tracker.choose(idle_before, (dp.capacity / 2) as usize);
        dp.retire(&chosen);
        retired = chosen.len();
    }

    st.table.lru_evictions += dp.tracker.take_vanished();
    st.table.end_poll(forget_before);
    let forgotten = st.table.limit_ended(settings.retain_flows);
    if forgotten > 0 {
        tracing::debug!(
            "forgot {forgotten} evicted flows before --retain ran out: over --retain-flows {}",
            settings.retain_flows
        );
    }
    let mut overflow = Vec::new();
    for (ifindex, t) in totals {
        if let Some(s) = st.interfaces.get_mut(&ifindex) {
            for (h, hook) in [Hook::Ingress, Hook::Egress].into_iter().enumerate() {
                let (now, before) = (t.overflow[h], s.totals.overflow[h]);
                if now.packets > before.packets {
                    overflow.push(Overflow {
                        ifindex,
                        hook,
                        packets: now.packets - before.packets,
                        bytes: now.bytes.saturating_sub(before.bytes),
                    });
                }
            }
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
    if let Some(clock) = clock {
        st.clock = clock;
    }
    let status = &mut st.status;
    status.polls += 1;
    status.kernel_flow_entries = (dp.live_flows() - retired) as u64;
    if let Some(stats) = stats {
        status.stats = stats;
        status.stats_history.push_back((Instant::now(), stats));
    }
    while status
        .stats_history
        .front()
        .is_some_and(|(t, _)| t.elapsed() > std::time::Duration::from_secs(60))
    {
        status.stats_history.pop_front();
    }
    if let Some(encap) = encap {
        status.encap = encap;
    }
    status.attach_mode_tcx = attacher.attached().any(|(_, _, v)| v == Via::Tcx);
    status.program_stats = dp.program_stats();
    status.last_poll_at_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    // The poll's growth goes to the metrics, under a read lock: the API
    // answers meanwhile (a scrape being encoded holds the metrics' lock).
    let growth = st.table.take_growth();
    let st = st.downgrade();
    if let Ok(mut m) = metrics.lock() {
        m.update(&st, &growth, &overflow, sources, started);
    }
    drop(st);
    // The metrics' share of the poll is part of its time.
    state.write().await.status.last_poll_ms = started.elapsed().as_secs_f64() * 1e3;
    Ok(())
}
