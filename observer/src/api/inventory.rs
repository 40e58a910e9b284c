//! What the daemon says about this node: its pods (`/v1/pods`), Services
//! (`/v1/services`), attached interfaces (`/v1/interfaces`) and itself
//! (`/v1/status`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::flow::{Encap, Protocol};

/// What an attached interface is, which decides whose point of view its
/// directions take and which encapsulation its packets have. In JSON:
/// `pod`, `tunnel/<encap>` (`tunnel/vxlan`, ...) or `underlay`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub enum InterfaceKind {
    /// A Calico workload interface (host side of a pod's veth).
    Pod,
    /// A tunnel device: packets on it are (to be) encapsulated.
    Tunnel(Encap),
    /// The node's underlay NIC: encapsulation is read from outer headers.
    Underlay,
}

impl std::fmt::Display for InterfaceKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Pod => f.write_str("pod"),
            Self::Tunnel(e) => write!(f, "tunnel/{}", e.name()),
            Self::Underlay => f.write_str("underlay"),
        }
    }
}

impl From<InterfaceKind> for String {
    fn from(k: InterfaceKind) -> Self {
        k.to_string()
    }
}

impl TryFrom<String> for InterfaceKind {
    type Error = String;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        match s.as_str() {
            "pod" => Ok(Self::Pod),
            "underlay" => Ok(Self::Underlay),
            other => other
                .strip_prefix("tunnel/")
                .and_then(Encap::from_name)
                .map(Self::Tunnel)
                .ok_or_else(|| format!("unknown interface kind {s:?}")),
        }
    }
}

/// A Service port as `ipvsadm -Ln` lists a virtual service, with names and
/// the traffic this node saw: sent to its VIPs by local pods, and delivered
/// to its endpoints on local pods. An IPVS virtual service without a
/// Service object has an empty `namespace` and `name`.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct ServiceView {
    pub namespace: String,
    pub name: String,
    pub port: String,
    pub protocol: Protocol,
    pub vips: Vec<String>,
    pub vip_packets: u64,
    pub vip_bytes: u64,
    pub backends: Vec<BackendView>,
    /// The IPVS virtual services at its VIPs (one per address family).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ipvs: Vec<IpvsView>,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct BackendView {
    pub address: String,
    pub pod: Option<String>,
    pub node: Option<String>,
    pub ready: bool,
    /// Delivered to it on this node's pod interface.
    pub packets: u64,
    pub bytes: u64,
}

/// One IPVS virtual service, as `ipvsadm -Ln --stats` shows it.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct IpvsView {
    /// `TCP 10.96.0.10:80`.
    pub virtual_service: String,
    pub scheduler: String,
    /// IPVS's own counters (absent when read from `/proc/net/ip_vs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stats: Option<IpvsStats>,
    /// What local pods sent to this VIP, as counted on their interfaces.
    pub packets: u64,
    pub bytes: u64,
    pub real_servers: Vec<RealServerView>,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct RealServerView {
    pub address: String,
    /// `Masq`, `Local`, `Tunnel`, `Route`.
    pub forward: String,
    pub weight: u32,
    pub active_connections: u32,
    pub inactive_connections: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stats: Option<IpvsStats>,
    pub pod: Option<String>,
    pub node: Option<String>,
    /// What local pods sent to the VIP on connections IPVS gave to this
    /// real server (its connection table), as counted on their interfaces.
    pub packets: u64,
    pub bytes: u64,
}

/// IPVS's own counters of a virtual service or real server (since it was
/// added), as `ipvsadm -Ln --stats` prints them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpvsStats {
    pub connections: u64,
    pub in_packets: u64,
    pub out_packets: u64,
    pub in_bytes: u64,
    pub out_bytes: u64,
}

/// A workload endpoint on this node, like `calicoctl get workloadEndpoint`
/// shows it, with its traffic (the pod's point of view).
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct PodView {
    pub namespace: String,
    pub name: String,
    pub workload: Option<String>,
    pub workload_kind: Option<String>,
    pub node: Option<String>,
    /// Addresses as Calico's networks: `/32` and `/128`.
    pub networks: Vec<String>,
    pub interface: String,
    /// Whether the observer is attached to the interface.
    pub attached: bool,
    pub ingress_packets: u64,
    pub ingress_bytes: u64,
    pub egress_packets: u64,
    pub egress_bytes: u64,
}

/// Whether a device's packets start with an Ethernet header (else they
/// start with IP: tunl0, wireguard.cali).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LinkLayer {
    Ethernet,
    L3,
}

impl LinkLayer {
    pub fn name(self) -> &'static str {
        match self {
            Self::Ethernet => "ethernet",
            Self::L3 => "l3",
        }
    }
}

/// How our programs are attached to an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttachedVia {
    /// TCX links (Linux 6.6+).
    Tcx,
    /// A clsact qdisc with cls_bpf filters.
    Clsact,
}

impl AttachedVia {
    pub fn name(self) -> &'static str {
        match self {
            Self::Tcx => "tcx",
            Self::Clsact => "clsact",
        }
    }
}

impl std::fmt::Display for AttachedVia {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct InterfaceView {
    pub name: String,
    pub ifindex: u32,
    pub kind: InterfaceKind,
    pub layer: LinkLayer,
    /// Absent when not attached.
    pub attached_via: Option<AttachedVia>,
    pub attach_error: Option<String>,
    pub gone: bool,
    /// Directions as for flows (the pod's view on pod interfaces).
    pub ingress_packets: u64,
    pub ingress_bytes: u64,
    pub egress_packets: u64,
    pub egress_bytes: u64,
    pub non_ip_packets: u64,
    /// Packets counted without a flow because the flow map was full (in
    /// the totals above, in no flow).
    #[serde(default)]
    pub overflow_packets: u64,
    /// The link's MTU.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
}

#[derive(Serialize, Deserialize, Debug, Clone, Default)]
pub struct EncapView {
    pub packets: u64,
    pub bytes: u64,
    pub overhead_bytes: u64,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct StatusView {
    pub version: String,
    pub uptime_seconds: u64,
    pub attached_interfaces: usize,
    pub polls: u64,
    pub last_poll_ms: f64,
    /// Entries in the kernel flow map at the last poll, and its size.
    pub kernel_flow_entries: u64,
    pub flow_capacity: u32,
    /// Flows the API shows (live and recently evicted).
    pub flows_tracked: usize,
    /// Of those, the ones evicted from the kernel map: at most
    /// `--retain-flows`, none older than `--retain`.
    #[serde(default)]
    pub evicted_flows_listed: usize,
    /// Datapath counters: unparsed, flow_inserts, flow_insert_failures, non_ip.
    pub datapath: BTreeMap<String, u64>,
    /// Kernel entries that vanished before we read them out (only after a
    /// crash: nothing else deletes flows).
    pub lru_evictions: u64,
    /// Evicted flows the API stopped showing before `--retain` ran out,
    /// over `--retain-flows` (since the daemon started).
    #[serde(default)]
    pub flows_forgotten_over_limit: u64,
    /// Packets counted without a flow because the flow map was full: in
    /// their interface's and pod's totals, in no flow.
    #[serde(default)]
    pub overflow_packets: u64,
    /// Per encapsulation, from outer headers on underlay devices.
    pub encap: BTreeMap<String, EncapView>,
}
