//! Prometheus metrics (OpenMetrics text), as documented in
//! `docs/metrics.md`. Updated after every poll from the flow table's
//! monotonic counters: each flow's growth since the last update is added to
//! the series its current names give, so counters never go back when flows
//! are evicted or renamed.

use std::{
    collections::{HashMap, HashSet},
    hash::Hash,
    net::IpAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering::Relaxed},
    },
};

use observer_common::{Encap, FlowKey, Hook, Stat};
use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
        info::Info,
    },
    registry::{Registry, Unit},
};

use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};

use super::series::{Labels, RenderedLabels, SeriesCounter, SeriesFamilies};
use crate::{
    api::{Direction, EndpointKind, EndpointView, Protocol, Via},
    config::{Dimension, Granularity, MetricsSettings},
    flows::{InterfaceKind, direction, key_addrs, table::Counters},
    model::Model,
    state::State,
};

pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
pub const PROMETHEUS_TEXT: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// The label value of series that folded traffic beyond the cap.
pub const OTHER: &str = "other";

/// The label value for what packets counted while the flow map was full
/// (in their interface's overflow totals) were between: not known.
pub const OVERFLOW: &str = "overflow";

#[derive(Clone, Debug, Hash, PartialEq, Eq, Serialize, Deserialize)]
struct PodLabels {
    namespace: String,
    pod: String,
    direction: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, Serialize, Deserialize)]
struct FlowLabels {
    direction: String,
    src_namespace: String,
    src: String,
    dst_namespace: String,
    dst: String,
    protocol: String,
    port: String,
    service: String,
    encap: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, Serialize, Deserialize)]
struct ServiceLabels {
    namespace: String,
    service: String,
    port: String,
    via: String,
    backend: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, Serialize, Deserialize)]
struct EncapLabels {
    encap: String,
    peer_node: String,
    direction: String,
}

impl Labels for PodLabels {
    fn pairs(&self) -> Vec<(&'static str, &str)> {
        vec![
            ("namespace", &self.namespace),
            ("pod", &self.pod),
            ("direction", &self.direction),
        ]
    }
}

impl Labels for FlowLabels {
    fn pairs(&self) -> Vec<(&'static str, &str)> {
        vec![
            ("direction", &self.direction),
            ("src_namespace", &self.src_namespace),
            ("src", &self.src),
            ("dst_namespace", &self.dst_namespace),
            ("dst", &self.dst),
            ("protocol", &self.protocol),
            ("port", &self.port),
            ("service", &self.service),
            ("encap", &self.encap),
        ]
    }
}

impl Labels for ServiceLabels {
    fn pairs(&self) -> Vec<(&'static str, &str)> {
        vec![
            ("namespace", &self.namespace),
            ("service", &self.service),
            ("port", &self.port),
            ("via", &self.via),
            ("backend", &self.backend),
        ]
    }
}

impl Labels for EncapLabels {
    fn pairs(&self) -> Vec<(&'static str, &str)> {
        vec![
            ("encap", &self.encap),
            ("peer_node", &self.peer_node),
            ("direction", &self.direction),
        ]
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet, Serialize, Deserialize)]
struct MtuLabels {
    namespace: String,
    pod: String,
    encap: String,
    peer_node: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet, Serialize, Deserialize)]
struct IcmpLabels {
    family: String,
    direction: String,
}

/// One label: (key, value).
type OneLabel = [(&'static str, String); 1];

fn label(key: &'static str, value: &str) -> OneLabel {
    [(key, value.to_owned())]
}

/// A label set that can stand for "everything folded".
trait Foldable: Clone + Hash + Eq + Labels {
    fn other() -> Self;
}

impl Foldable for FlowLabels {
    fn other() -> Self {
        let o = || OTHER.to_owned();
        Self {
            direction: o(),
            src_namespace: o(),
            src: o(),
            dst_namespace: o(),
            dst: o(),
            protocol: o(),
            port: o(),
            service: o(),
            encap: o(),
        }
    }
}

impl Foldable for ServiceLabels {
    fn other() -> Self {
        let o = || OTHER.to_owned();
        Self {
            namespace: o(),
            service: o(),
            port: o(),
            via: o(),
            backend: o(),
        }
    }
}

impl Foldable for EncapLabels {
    fn other() -> Self {
        let o = || OTHER.to_owned();
        Self {
            encap: o(),
            peer_node: o(),
            direction: o(),
        }
    }
}

impl Foldable for PodLabels {
    fn other() -> Self {
        let o = || OTHER.to_owned();
        Self {
            namespace: o(),
            pod: o(),
            direction: o(),
        }
    }
}

/// Counter families sharing one label set, holding at most `cap` label
/// sets; traffic of further ones goes to the `other` series.
struct Capped<L: Foldable, const N: usize> {
    name: &'static str,
    families: Arc<SeriesFamilies>,
    /// Each label set's series.
    known: HashMap<L, usize>,
    cap: usize,
    /// The `other` series, once something was folded.
    other: Option<usize>,
}

impl<L: Foldable, const N: usize> Capped<L, N> {
    fn new(
        registry: &mut Registry,
        name: &'static str,
        metrics: [(&'static str, &str); N],
        cap: usize,
    ) -> Self {
        let families = SeriesFamilies::new(&metrics);
        registry.register_collector(Box::new(families.clone()));
        Self {
            name,
            families,
            known: HashMap::new(),
            cap,
            other: None,
        }
    }

    /// Every series' values, to carry over a restart.
    fn save(&self) -> Vec<(L, Vec<u64>)> {
        let other = self.other.map(|s| (L::other(), s));
        self.known
            .iter()
            .map(|(l, s)| (l.clone(), *s))
            .chain(other)
            .map(|(l, s)| {
                let values = (0..N).map(|f| self.families.counter(s, f).get());
                (l, values.collect())
            })
            .collect()
    }

    /// Takes over saved series (before any update).
    fn restore(&mut self, saved: Vec<(L, Vec<u64>)>) {
        for (labels, values) in saved {
            let s = if labels == L::other() {
                self.other_series()
            } else {
                self.series(labels)
            };
            for (f, v) in values.into_iter().enumerate().take(N) {
                self.families.counter(s, f).inc_by(v);
            }
        }
    }

    fn series(&mut self, labels: L) -> usize {
        if let Some(s) = self.known.get(&labels) {
            return *s;
        }
        let s = self.families.add(RenderedLabels::of(&labels));
        self.known.insert(labels, s);
        s
    }

    fn other_series(&mut self) -> usize {
        let families = &self.families;
        *self
            .other
            .get_or_insert_with(|| families.add(RenderedLabels::of(&L::other())))
    }

    /// The counters of the series of `labels` (or of `other`, past the cap:
    /// then also the family's folded counter), each to add `what` to.
    fn resolve(
        &mut self,
        labels: L,
        what: [What; N],
        folded: &Family<OneLabel, Counter>,
        out: &mut Vec<(Target, What)>,
    ) {
        let fold = !self.known.contains_key(&labels) && self.known.len() >= self.cap;
        let s = if fold {
            let count = folded.get_or_create(&label("family", self.name)).clone();
            out.push((Target::Plain(count), What::One));
            self.other_series()
        } else {
            self.series(labels)
        };
        for (f, w) in what.into_iter().enumerate() {
            out.push((Target::Series(self.families.counter(s, f)), w));
        }
    }
}

/// A counter that traffic adds to: a series of a capped family, or a
/// plain counter (the count of folded updates).
#[derive(Clone, Debug)]
enum Target {
    Series(SeriesCounter),
    Plain(Counter),
}

impl Target {
    fn inc_by(&self, v: u64) {
        match self {
            Target::Series(c) => c.inc_by(v),
            Target::Plain(c) => {
                c.inc_by(v);
            }
        }
    }
}

/// What one interface and hook counted without a flow in one poll.
#[derive(Clone, Copy, Debug)]
pub struct Overflow {
    pub ifindex: u32,
    pub hook: Hook,
    pub packets: u64,
    pub bytes: u64,
}

/// A counter family that remembers its label sets, so that its values can
/// be carried over a restart (prometheus-client does not list them).
struct Tracked<L: Clone + Hash + Eq + EncodeLabelSet + std::fmt::Debug + Send + Sync + 'static> {
    family: Family<L, Counter>,
    known: HashSet<L>,
}

impl<L> Tracked<L>
where
    L: Clone + Hash + Eq + EncodeLabelSet + std::fmt::Debug + Send + Sync + 'static,
{
    fn register(r: &mut Registry, metric: &str, help: &str) -> Self {
        let family = Family::default();
        r.register(metric, help, family.clone());
        Self {
            family,
            known: HashSet::new(),
        }
    }

    fn add(&mut self, labels: L, v: u64) {
        self.family.get_or_create(&labels).inc_by(v);
        self.known.insert(labels);
    }

    fn save(&self) -> Vec<(L, u64)> {
        self.known
            .iter()
            .map(|l| (l.clone(), self.family.get_or_create(l).get()))
            .collect()
    }

    fn restore(&mut self, saved: Vec<(L, u64)>) {
        for (l, v) in saved {
            self.add(l, v);
        }
    }
}

/// The traffic counters' values, carried over a restart so that they go on
/// from where they were (see `daemon::saved`).
#[derive(Serialize, Deserialize, Default)]
pub struct SavedMetrics {
    pods: Vec<(PodLabels, Vec<u64>)>,
    flows: Vec<(FlowLabels, Vec<u64>)>,
    services: Vec<(ServiceLabels, Vec<u64>)>,
    encap: Vec<(EncapLabels, Vec<u64>)>,
    mtu_exceeded: Vec<(MtuLabels, u64)>,
    icmp_too_big: Vec<(IcmpLabels, u64)>,
}

/// What a resolved counter adds per update.
#[derive(Clone, Copy, Debug)]
enum What {
    Packets,
    Bytes,
    /// Overhead bytes: measured, else packets times this many.
    Overhead(u64),
    /// 1 for a new flow.
    NewFlow,
    /// 1 per update (a folded update).
    One,
}

impl What {
    fn of(self, d: &Counters, new_flow: bool) -> u64 {
        match self {
            What::Packets => d.packets,
            What::Bytes => d.bytes,
            What::Overhead(_) if d.overhead_bytes > 0 => d.overhead_bytes,
            What::Overhead(per_packet) => d.packets * per_packet,
            What::NewFlow => new_flow as u64,
            What::One => 1,
        }
    }
}

/// Series of the observer itself.
struct SelfMetrics {
    attached: Family<OneLabel, Gauge>,
    map_entries: Gauge,
    map_capacity: Gauge,
    flows_tracked: Gauge,
    insert_failures: Counter,
    unparsed: Counter,
    non_ip: Counter,
    lru_evictions: Counter,
    flows_forgotten: Counter,
    polls: Counter,
    poll_duration: Histogram,
    source_synced: Family<OneLabel, Gauge>,
    program_run_seconds: Family<OneLabel, Counter<f64, std::sync::atomic::AtomicU64>>,
    program_runs: Family<OneLabel, Counter>,
    series: Family<OneLabel, Gauge>,
    folded: Family<OneLabel, Counter>,
}

pub struct Metrics {
    registry: Registry,
    config: MetricsSettings,
    pods: Capped<PodLabels, 2>,
    flows: Capped<FlowLabels, 2>,
    services: Capped<ServiceLabels, 3>,
    encap: Capped<EncapLabels, 3>,
    mtu_exceeded: Tracked<MtuLabels>,
    icmp_too_big: Tracked<IcmpLabels>,
    own: SelfMetrics,
    /// Each flow's series, resolved once per version of the names (label
    /// computation is most of the cost of a changed flow).
    resolved: FxHashMap<FlowKey, Vec<(Target, What)>>,
    resolved_with: Option<Arc<Model>>,
    /// The length of the last encoding, to size the next one.
    encoded_len: AtomicUsize,
}

impl Metrics {
    pub fn new(config: MetricsSettings, node: &str) -> Self {
        let mut registry = Registry::with_prefix_and_labels(
            "observer",
            [("node".into(), node.to_owned().into())].into_iter(),
        );
        let cap = config.max_series;
        let r = &mut registry;
        let pods = Capped::new(
            r,
            "pod",
            [
                (
                    "pod_packets",
                    "Packets of local pods, by direction (the pod's)",
                ),
                (
                    "pod_bytes",
                    "IP bytes of local pods, by direction (the pod's)",
                ),
            ],
            cap,
        );
        let flows = Capped::new(
            r,
            "flow",
            [
                ("flow_packets", "Packets of flows on local pod interfaces"),
                ("flow_bytes", "IP bytes of flows on local pod interfaces"),
            ],
            cap,
        );
        let services = Capped::new(
            r,
            "service",
            [
                (
                    "service_packets",
                    "Packets to Services: to a VIP, or delivered to a local backend",
                ),
                (
                    "service_bytes",
                    "IP bytes to Services: to a VIP, or delivered to a local backend",
                ),
                ("service_flows", "New flows to Services"),
            ],
            cap,
        );
        let encap = Capped::new(
            r,
            "encap",
            [
                (
                    "encap_packets",
                    "Packets through tunnel devices, by peer node",
                ),
                (
                    "encap_bytes",
                    "Inner IP bytes through tunnel devices, by peer node",
                ),
                (
                    "encap_overhead_bytes",
                    "Encapsulation header bytes, by peer node",
                ),
            ],
            cap,
        );
        let mtu_exceeded = Tracked::register(
            r,
            "mtu_exceeded_packets",
            "Packets a local pod sent to another node that are larger than the tunnel MTU",
        );
        let icmp_too_big = Tracked::register(
            r,
            "icmp_too_big_packets",
            "ICMP fragmentation-needed and ICMPv6 packet-too-big seen on pod interfaces",
        );
        r.register(
            "build",
            "The observer's version",
            Info::new([("version".to_owned(), env!("CARGO_PKG_VERSION").to_owned())]),
        );
        let own = SelfMetrics::register(r);
        // Present from the start, so that dashboards and alerts see zeros.
        for family in ["pod", "flow", "service", "encap"] {
            own.folded.get_or_create(&label("family", family)).inc_by(0);
            own.series.get_or_create(&label("family", family)).set(0);
        }
        Self {
            registry,
            config,
            pods,
            flows,
            services,
            encap,
            mtu_exceeded,
            icmp_too_big,
            own,
            resolved: FxHashMap::default(),
            resolved_with: None,
            encoded_len: AtomicUsize::new(0),
        }
    }

    /// The traffic counters' values, to go on from after a restart.
    pub fn save(&self) -> SavedMetrics {
        SavedMetrics {
            pods: self.pods.save(),
            flows: self.flows.save(),
            services: self.services.save(),
            encap: self.encap.save(),
            mtu_exceeded: self.mtu_exceeded.save(),
            icmp_too_big: self.icmp_too_big.save(),
        }
    }

    /// Takes over the values an earlier daemon saved (before any update).
    pub fn restore(&mut self, saved: SavedMetrics) {
        self.pods.restore(saved.pods);
        self.flows.restore(saved.flows);
        self.services.restore(saved.services);
        self.encap.restore(saved.encap);
        self.mtu_exceeded.restore(saved.mtu_exceeded);
        self.icmp_too_big.restore(saved.icmp_too_big);
    }

    /// Every series as OpenMetrics text, or in Prometheus' text format
    /// 0.0.4 (for clients that do not ask for OpenMetrics, and promtool).
    pub fn encode(&self, openmetrics: bool) -> String {
        // Sized like the last one: growing a few MiB step by step was a
        // tenth of the time.
        let mut out = String::with_capacity(self.encoded_len.load(Relaxed) + 4096);
        let written = if openmetrics {
            encode(&mut out, &self.registry)
        } else {
            prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)
        };
        written.expect("writing to a String cannot fail");
        self.encoded_len.store(out.len(), Relaxed);
        out
    }

    /// Adds what happened in the poll that began at `poll_started`: the
    /// flows' growth (from the flow table) and what interfaces counted
    /// without a flow (`overflow`), named with the state's model.
    pub fn update(
        &mut self,
        st: &State,
        growth: &[(FlowKey, Counters, bool)],
        overflow: &[Overflow],
        sources: &[(&'static str, bool)],
        poll_started: std::time::Instant,
    ) {
        let model = st.model.clone();
        // New names: every flow's series may have changed. A cache much
        // larger than the table holds forgotten flows: start afresh too.
        let renamed = !self
            .resolved_with
            .as_ref()
            .is_some_and(|m| Arc::ptr_eq(m, &model));
        if renamed || self.resolved.len() > 2 * st.table.len() + 1024 {
            self.resolved.clear();
            self.resolved_with = Some(model.clone());
        }
        for &(key, delta, new_flow) in growth {
            let Some(iface) = st.interfaces.get(&key.ifindex) else {
                continue;
            };
            // Looked up (a string hash) only where it is used: not for a
            // flow already resolved with no packet over the MTU.
            let pod = || match iface.iface.kind {
                InterfaceKind::Pod => model.pod_of_interface(&iface.iface.name),
                _ => None,
            };
            // One hash of the key for a flow already resolved, the common
            // case of a poll.
            if let Some(series) = self.resolved.get(&key) {
                add_to(series, &delta, new_flow);
            } else {
                let series = match iface.iface.kind {
                    InterfaceKind::Pod => self.resolve_pod_flow(&key, &model, pod()),
                    InterfaceKind::Tunnel(e) => self.resolve_tunnel_flow(&key, e, &model),
                    InterfaceKind::Underlay => Vec::new(),
                };
                add_to(&series, &delta, new_flow);
                self.resolved.insert(key, series);
            }
            // Rare: worth no cache.
            if iface.iface.kind == InterfaceKind::Pod {
                self.mtu_and_icmp(&key, &delta, &model, pod);
            }
        }
        for o in overflow {
            self.add_overflow(st, &model, o);
        }
        self.update_own(st, sources);
        self.own
            .poll_duration
            .observe(poll_started.elapsed().as_secs_f64());
    }

    /// Packets an interface counted while the flow map was full: to its
    /// pod's series and to explicit `overflow` series of the flow and
    /// encapsulation families, so that the families still add up to what
    /// the interfaces counted.
    fn add_overflow(&mut self, st: &State, model: &Model, o: &Overflow) {
        let Some(iface) = st.interfaces.get(&o.ifindex) else {
            return;
        };
        let d = Counters {
            packets: o.packets,
            bytes: o.bytes,
            ..Default::default()
        };
        let folded = &self.own.folded;
        let mut out = Vec::new();
        let dir = direction(iface.iface.kind, o.hook);
        match iface.iface.kind {
            InterfaceKind::Pod => {
                let pod = model.pod_of_interface(&iface.iface.name);
                if let Some(p) = pod {
                    let labels = PodLabels {
                        namespace: p.namespace.clone(),
                        pod: p.name.clone(),
                        direction: dir.name().to_owned(),
                    };
                    self.pods
                        .resolve(labels, [What::Packets, What::Bytes], folded, &mut out);
                }
                // The pod's side is known, the other one is not.
                let unknown = (OVERFLOW.to_owned(), OVERFLOW.to_owned());
                let this = pod
                    .and_then(|p| p.ips.first())
                    .map(|ip| name_of(self.config.granularity, &model.endpoint(*ip)))
                    .unwrap_or_else(|| unknown.clone());
                let ((src_namespace, src), (dst_namespace, dst)) = if dir == Direction::Egress {
                    (this, unknown)
                } else {
                    (unknown, this)
                };
                let c = &self.config;
                let dim = |d: Dimension| kept(c.keeps(d), || OVERFLOW.to_owned());
                let labels = FlowLabels {
                    direction: dir.name().to_owned(),
                    src_namespace,
                    src,
                    dst_namespace,
                    dst,
                    protocol: dim(Dimension::Protocol),
                    port: dim(Dimension::Port),
                    service: dim(Dimension::Service),
                    encap: dim(Dimension::Encap),
                };
                self.flows
                    .resolve(labels, [What::Packets, What::Bytes], folded, &mut out);
            }
            InterfaceKind::Tunnel(encap) => {
                let labels = EncapLabels {
                    encap: encap.name().to_owned(),
                    peer_node: OVERFLOW.to_owned(),
                    direction: dir.name().to_owned(),
                };
                // The inner family is not known: the device's name says it.
                let v6 = iface.iface.name.contains("v6");
                let inner = if v6 {
                    IpAddr::from(std::net::Ipv6Addr::UNSPECIFIED)
                } else {
                    IpAddr::from(std::net::Ipv4Addr::UNSPECIFIED)
                };
                let what = [
                    What::Packets,
                    What::Bytes,
                    What::Overhead(nominal_overhead(encap, inner)),
                ];
                self.encap.resolve(labels, what, folded, &mut out);
            }
            InterfaceKind::Underlay => {}
        }
        for (counter, what) in out {
            counter.inc_by(what.of(&d, false));
        }
    }

    /// Packets over the tunnel MTU, and ICMP too-big, on a pod interface
    /// (its pod looked up only for packets over the MTU).
    fn mtu_and_icmp<'m>(
        &mut self,
        key: &FlowKey,
        d: &Counters,
        model: &'m Model,
        pod: impl FnOnce() -> Option<&'m crate::model::PodEntry>,
    ) {
        let hook = Hook::from_u8(key.hook).unwrap_or(Hook::Ingress);
        let dir = direction(InterfaceKind::Pod, hook);
        let (src, dst) = key_addrs(key);
        // Over the tunnel's MTU matters only for what goes through it.
        if d.oversize_packets > 0
            && dir == Direction::Egress
            && let Some(p) = pod()
        {
            let encap = model.expected_encap(src, dst);
            if encap != Some(Encap::None) && self.is_remote(model, dst) {
                self.mtu_exceeded.add(
                    MtuLabels {
                        namespace: p.namespace.clone(),
                        pod: p.name.clone(),
                        encap: encap.map_or_else(|| "unknown".into(), |e| e.name().to_owned()),
                        peer_node: model.node_of(dst).unwrap_or_default(),
                    },
                    d.oversize_packets,
                );
            }
        }
        if let Some(family) = icmp_too_big(key) {
            self.icmp_too_big.add(
                IcmpLabels {
                    family: family.to_owned(),
                    direction: dir.name().to_owned(),
                },
                d.packets,
            );
        }
    }

    /// The series a flow on a pod interface adds to: its pod's, its
    /// aggregate's, and its Service's.
    fn resolve_pod_flow(
        &mut self,
        key: &FlowKey,
        model: &Model,
        pod: Option<&crate::model::PodEntry>,
    ) -> Vec<(Target, What)> {
        let hook = Hook::from_u8(key.hook).unwrap_or(Hook::Ingress);
        let dir = direction(InterfaceKind::Pod, hook);
        let (src, dst) = key_addrs(key);
        let folded = &self.own.folded;
        let mut out = Vec::new();
        if let Some(p) = pod {
            let labels = PodLabels {
                namespace: p.namespace.clone(),
                pod: p.name.clone(),
                direction: dir.name().to_owned(),
            };
            self.pods
                .resolve(labels, [What::Packets, What::Bytes], folded, &mut out);
        }

        let service = model.service_of(dst, key.dst_port, key.protocol);
        let (src_ns, src_name) = name_of(self.config.granularity, &model.endpoint(src));
        let (dst_ns, dst_name) = name_of(self.config.granularity, &model.endpoint(dst));
        let c = &self.config;
        let labels = FlowLabels {
            direction: dir.name().to_owned(),
            src_namespace: src_ns,
            src: src_name,
            dst_namespace: dst_ns,
            dst: dst_name,
            protocol: kept(c.keeps(Dimension::Protocol), || {
                Protocol::from_number(key.protocol).to_string()
            }),
            port: kept(c.keeps(Dimension::Port) && has_ports(key.protocol), || {
                key.dst_port.to_string()
            }),
            service: kept(c.keeps(Dimension::Service), || {
                service
                    .as_ref()
                    .map(crate::api::ServiceRef::label)
                    .unwrap_or_default()
            }),
            // On a pod interface a packet is not encapsulated yet (or any
            // more): the label says how it crosses between nodes. To a VIP,
            // before DNAT, the backend (and so the path) is not known yet.
            encap: kept(c.keeps(Dimension::Encap), || {
                let to_vip = service.as_ref().is_some_and(|s| s.via == Via::Vip);
                match model.expected_encap(src, dst) {
                    Some(e) if !to_vip => e.name().to_owned(),
                    _ => "unknown".into(),
                }
            }),
        };
        self.flows
            .resolve(labels, [What::Packets, What::Bytes], folded, &mut out);

        // Service traffic: the client's side (to the VIP, before DNAT) and
        // the backend's side (delivered to a local endpoint).
        if let Some(s) = service {
            let backend = match (s.via, dir) {
                (Via::Vip, Direction::Egress) => Some(String::new()),
                (Via::Endpoint, Direction::Ingress) => {
                    Some(model.endpoint(dst).pod.unwrap_or_else(|| {
                        std::net::SocketAddr::new(dst, key.dst_port).to_string()
                    }))
                }
                _ => None,
            };
            if let Some(backend) = backend {
                // An IPVS virtual service without a Service object is named
                // by its VIP.
                let service = if s.name.is_empty() {
                    s.label()
                } else {
                    s.name.clone()
                };
                let labels = ServiceLabels {
                    namespace: s.namespace,
                    service,
                    port: s.port,
                    via: s.via.name().to_owned(),
                    backend,
                };
                self.services.resolve(
                    labels,
                    [What::Packets, What::Bytes, What::NewFlow],
                    folded,
                    &mut out,
                );
            }
        }
        out
    }

    /// The series a flow through a tunnel device adds to: by peer node.
    fn resolve_tunnel_flow(
        &mut self,
        key: &FlowKey,
        encap: Encap,
        model: &Model,
    ) -> Vec<(Target, What)> {
        let hook = Hook::from_u8(key.hook).unwrap_or(Hook::Ingress);
        let (src, dst) = key_addrs(key);
        let labels = EncapLabels {
            encap: encap.name().to_owned(),
            peer_node: model.peer_node(src, dst).unwrap_or_default(),
            direction: direction(InterfaceKind::Tunnel(encap), hook)
                .name()
                .to_owned(),
        };
        let mut out = Vec::new();
        let what = [
            What::Packets,
            What::Bytes,
            What::Overhead(nominal_overhead(encap, src)),
        ];
        self.encap.resolve(labels, what, &self.own.folded, &mut out);
        out
    }

    /// Whether an address lives on another node (traffic to it crosses the
    /// tunnel or the underlay).
    fn is_remote(&self, model: &Model, ip: IpAddr) -> bool {
        match (model.node_of(ip), model.local_node()) {
            (Some(n), Some(local)) => n != local,
            (Some(_), None) => true,
            (None, _) => false,
        }
    }

    fn update_own(&mut self, st: &State, sources: &[(&'static str, bool)]) {
        let o = &self.own;
        let mut attached = [0i64; 3];
        for i in st.interfaces.values().filter(|i| i.via.is_some()) {
            attached[match i.iface.kind {
                InterfaceKind::Pod => 0,
                InterfaceKind::Tunnel(_) => 1,
                InterfaceKind::Underlay => 2,
            }] += 1;
        }
        for (kind, n) in ["pod", "tunnel", "underlay"].into_iter().zip(attached) {
            o.attached.get_or_create(&label("kind", kind)).set(n);
        }
        let s = &st.status;
        o.map_entries.set(s.kernel_flow_entries as i64);
        o.map_capacity.set(s.flow_capacity as i64);
        o.flows_tracked.set(st.table.len() as i64);
        catch_up(
            &o.insert_failures,
            s.stats[Stat::FlowInsertFailures as usize],
        );
        catch_up(&o.unparsed, s.stats[Stat::Unparsed as usize]);
        catch_up(&o.non_ip, s.stats[Stat::NonIp as usize]);
        catch_up(&o.lru_evictions, st.table.lru_evictions);
        catch_up(&o.flows_forgotten, st.table.forgotten_over_limit);
        catch_up(&o.polls, s.polls);
        for (source, synced) in sources {
            o.source_synced
                .get_or_create(&label("source", source))
                .set(*synced as i64);
        }
        for (program, (run_ns, runs)) in &s.program_stats {
            let secs = o
                .program_run_seconds
                .get_or_create(&label("program", program));
            let have = secs.get();
            let now = *run_ns as f64 / 1e9;
            if now > have {
                secs.inc_by(now - have);
            }
            catch_up(
                &o.program_runs.get_or_create(&label("program", program)),
                *runs,
            );
        }
        for (name, n) in [
            (self.pods.name, self.pods.known.len()),
            (self.flows.name, self.flows.known.len()),
            (self.services.name, self.services.known.len()),
            (self.encap.name, self.encap.known.len()),
        ] {
            o.series.get_or_create(&label("family", name)).set(n as i64);
        }
    }
}

impl SelfMetrics {
    fn register(r: &mut Registry) -> Self {
        let m = Self {
            attached: Family::default(),
            map_entries: Gauge::default(),
            map_capacity: Gauge::default(),
            flows_tracked: Gauge::default(),
            insert_failures: Counter::default(),
            unparsed: Counter::default(),
            non_ip: Counter::default(),
            lru_evictions: Counter::default(),
            flows_forgotten: Counter::default(),
            polls: Counter::default(),
            // 0.5 ms .. ~4 s.
            poll_duration: Histogram::new(exponential_buckets(0.0005, 2.0, 14)),
            source_synced: Family::default(),
            program_run_seconds: Family::default(),
            program_runs: Family::default(),
            series: Family::default(),
            folded: Family::default(),
        };
        r.register(
            "attached_interfaces",
            "Interfaces our programs are attached to, by kind",
            m.attached.clone(),
        );
        r.register(
            "flow_map_entries",
            "Entries in the kernel flow map",
            m.map_entries.clone(),
        );
        r.register(
            "flow_map_capacity",
            "Slots of the kernel flow map",
            m.map_capacity.clone(),
        );
        r.register(
            "flows_tracked",
            "Flows the API shows",
            m.flows_tracked.clone(),
        );
        r.register(
            "map_insert_failures",
            "Packets counted without a flow because the flow map was full (they are in the pod \
             series and in the flow and encap series labelled `overflow`)",
            m.insert_failures.clone(),
        );
        r.register(
            "unparsed_packets",
            "Packets the classifier could not parse",
            m.unparsed.clone(),
        );
        r.register(
            "non_ip_packets",
            "Packets that are not IP (ARP, ...)",
            m.non_ip.clone(),
        );
        r.register(
            "lru_evictions",
            "Kernel flow entries that vanished before they were read (only after a crash)",
            m.lru_evictions.clone(),
        );
        r.register(
            "flows_forgotten",
            "Evicted flows the API stopped showing before --retain ran out, over --retain-flows (their counts stay in the metrics)",
            m.flows_forgotten.clone(),
        );
        r.register("polls", "Reads of the kernel maps", m.polls.clone());
        r.register_with_unit(
            "poll_duration",
            "Time to read the kernel maps into the flow table",
            Unit::Seconds,
            m.poll_duration.clone(),
        );
        r.register(
            "source_synced",
            "Whether a source of names answered at its last read (1) or not (0)",
            m.source_synced.clone(),
        );
        r.register_with_unit(
            "program_run",
            "Kernel time spent in our programs (kernel.bpf_stats_enabled=1)",
            Unit::Seconds,
            m.program_run_seconds.clone(),
        );
        r.register(
            "program_runs",
            "Runs of our programs (kernel.bpf_stats_enabled=1)",
            m.program_runs.clone(),
        );
        r.register(
            "metrics_series",
            "Label sets of each flow metric family",
            m.series.clone(),
        );
        r.register(
            "metrics_folded",
            "Updates folded into the `other` series by the series cap",
            m.folded.clone(),
        );
        m
    }
}

/// (namespace, name) labels of an endpoint at the configured granularity.
fn name_of(granularity: Granularity, ep: &EndpointView) -> (String, String) {
    match (ep.kind, &ep.namespace) {
        (EndpointKind::Pod, Some(ns)) => {
            let name = match granularity {
                Granularity::Pod => ep.pod.clone().unwrap_or_default(),
                Granularity::Workload => ep
                    .workload
                    .clone()
                    .or_else(|| ep.pod.clone())
                    .unwrap_or_default(),
                Granularity::Namespace => String::new(),
            };
            (ns.clone(), name)
        }
        (kind, _) => (String::new(), kind.name().to_owned()),
    }
}

/// Brings a counter that mirrors a monotonic total up to it.
fn catch_up(c: &Counter, total: u64) {
    let have = c.get();
    if total > have {
        c.inc_by(total - have);
    }
}

/// An empty label value for dimensions not kept.
fn kept(keep: bool, value: impl FnOnce() -> String) -> String {
    if keep { value() } else { String::new() }
}

fn has_ports(protocol: u8) -> bool {
    matches!(protocol, 6 | 17 | 132)
}

/// Adds a flow's growth to its resolved series.
fn add_to(series: &[(Target, What)], delta: &Counters, new_flow: bool) {
    for (counter, what) in series {
        counter.inc_by(what.of(delta, new_flow));
    }
}

/// `ipv4`/`ipv6` for ICMP fragmentation-needed (3/4) and ICMPv6
/// packet-too-big (2); ICMP flows carry type and code in the port fields.
fn icmp_too_big(key: &FlowKey) -> Option<&'static str> {
    match (key.protocol, key.src_port, key.dst_port) {
        (1, 3, 4) => Some("ipv4"),
        (58, 2, _) => Some("ipv6"),
        _ => None,
    }
}

/// Header bytes an encapsulation adds per packet, for tunnel devices (the
/// outer headers are only seen on the underlay); the inner family stands
/// for the outer one (Calico's `-v6` devices carry IPv6 over IPv6).
fn nominal_overhead(encap: Encap, inner_src: IpAddr) -> u64 {
    encap.overhead(inner_src.is_ipv6()) as u64
}

#[cfg(test)]
mod tests {
    use observer_common::{FAMILY_IPV4, FlowStats};
    use serde_json::json;

    use super::*;
    use crate::{
        model::calico_interface,
        sources::{objects::ClusterObjects, routes::RouteTable},
    };

    fn model(with_pod: bool) -> Arc<Model> {
        let mut o = ClusterObjects::default();
        if with_pod {
            o.add_value(json!({"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": "web-1", "namespace": "shop"},
                "spec": {"nodeName": "node1", "containers": []},
                "status": {"podIP": "10.244.0.5"}}))
                .unwrap();
        }
        Arc::new(Model::build(
            &o,
            Arc::new(RouteTable::default()),
            "cali",
            Some("node1".into()),
        ))
    }

    fn state() -> State {
        State::with_pod_interface(calico_interface("cali", "shop", "web-1"), model(false))
    }

    /// One poll in which the pod's flow to 8.8.8.8:53 reached `skbs`.
    fn poll(st: &mut State, m: &mut Metrics, skbs: u64) {
        let mut key = FlowKey {
            ifindex: 7,
            src_port: 40000,
            dst_port: 53,
            family: FAMILY_IPV4,
            protocol: 17,
            ..Default::default()
        };
        let (mut s, mut d) = ([0u8; 16], [0u8; 16]);
        s[..4].copy_from_slice(&[10, 244, 0, 5]);
        d[..4].copy_from_slice(&[8, 8, 8, 8]);
        key.set_addrs(s, d);
        st.table.begin_poll();
        let stats = FlowStats {
            skbs,
            bytes: 100 * skbs,
            first_seen_jiffies: 1,
            last_seen_jiffies: 1,
            ..Default::default()
        };
        // One kernel slot that reached `skbs`: what it grew by since.
        let had = st.table.iter().next().map_or(0, |(_, e)| e.counters().skbs);
        let grown = FlowStats {
            skbs: skbs - had,
            bytes: 100 * (skbs - had),
            ..stats
        };
        st.table.add(&key, &grown, &stats, had == 0, false);
        st.table.end_poll(0);
        let growth = st.table.take_growth();
        m.update(st, &growth, &[], &[], std::time::Instant::now());
    }

    fn sample(m: &Metrics, series: &str) -> Option<u64> {
        m.encode(false)
            .lines()
            .find(|l| l.starts_with(series))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
    }

    #[test]
    fn series_follow_the_names_and_count_only_growth() {
        let mut st = state();
        let config = MetricsSettings {
            granularity: Granularity::Pod,
            dimensions: vec![Dimension::Protocol, Dimension::Port],
            max_series: 100,
        };
        let mut m = Metrics::new(config, "node1");
        let unnamed = r#"observer_flow_packets_total{node="node1",direction="egress",src_namespace="",src="world""#;
        let named = r#"observer_flow_packets_total{node="node1",direction="egress",src_namespace="shop",src="web-1""#;
        poll(&mut st, &mut m, 3);
        poll(&mut st, &mut m, 5);
        assert_eq!(sample(&m, unnamed), Some(5));
        // The pod becomes known: growth from now on goes to its series.
        st.model = model(true);
        poll(&mut st, &mut m, 9);
        assert_eq!(sample(&m, unnamed), Some(5));
        assert_eq!(sample(&m, named), Some(4));
        let pod = r#"observer_pod_packets_total{node="node1",namespace="shop",pod="web-1",direction="egress"}"#;
        assert_eq!(sample(&m, pod), Some(4));
        // An unchanged poll adds nothing.
        poll(&mut st, &mut m, 9);
        assert_eq!(sample(&m, named), Some(4));
    }
}
