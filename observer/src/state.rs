//! What the daemon knows, shared with the API, the metrics and the doctor:
//! the flow table, the model of names, the attached interfaces and the
//! datapath's counters. Written by the poll loop (`daemon`), read by
//! `export` and `doctor`; it depends on nothing above it.

use std::{collections::BTreeMap, sync::Arc, time::Instant};

use observer_common::{ClockSample, Encap, EncapTotals, IfaceTotals, Stat};
use tokio::sync::RwLock;

use crate::{
    datapath::attach::{LinkLayer, Via},
    flows::{Clock, Interface, InterfaceKind, table::FlowTable},
    model::Model,
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
    /// The kernel's ids of the programs we loaded: how the doctor tells
    /// ours from others of the same name.
    pub program_ids: Vec<u32>,
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

impl State {
    /// A state with one pod interface (ifindex 7, attached with TCX, MTU
    /// 1450) and nothing counted yet: what the metrics' tests and the
    /// `/metrics` bench start from.
    pub fn with_pod_interface(name: String, model: Arc<Model>) -> Self {
        let pod = InterfaceState {
            iface: Interface {
                name,
                kind: InterfaceKind::Pod,
            },
            layer: LinkLayer::Ethernet,
            via: Some(Via::Tcx),
            attach_error: None,
            totals: IfaceTotals::default(),
            gone: false,
            mtu: Some(1450),
        };
        Self {
            table: FlowTable::default(),
            model,
            interfaces: BTreeMap::from([(7, pod)]),
            status: DatapathStatus::default(),
            clock: Clock::new(ClockSample::default(), 4_000_000),
            started: std::time::SystemTime::now(),
        }
    }
}

pub type Shared = Arc<RwLock<State>>;

/// The interface of a flow for display: `None` once forgotten.
pub fn interface_of(st: &State, ifindex: u32) -> Option<&Interface> {
    st.interfaces.get(&ifindex).map(|s| &s.iface)
}
