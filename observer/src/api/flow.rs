//! A flow as the API shows it (`/v1/flows`): its interface, direction,
//! addresses, counters, and who and which Service its ends are.

use serde::{Deserialize, Serialize};

/// One flow on one interface in one direction, with monotonic counters.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct FlowView {
    pub interface: String,
    pub ifindex: u32,
    /// `egress`/`ingress`: from the pod's point of view on pod interfaces,
    /// from the node's on tunnel and underlay devices.
    pub direction: String,
    pub src_ip: String,
    pub dst_ip: String,
    /// 0 for protocols without ports (ICMP: see `icmp_type`).
    pub src_port: u16,
    pub dst_port: u16,
    /// `tcp`, `udp`, `icmp`, `icmpv6`, or the protocol number.
    pub protocol: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icmp_type: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icmp_code: Option<u8>,
    /// `none`, `ipip`, `vxlan` or `wireguard`.
    pub encap: String,
    /// The encapsulation the flow should have between nodes, from the IP
    /// pool of its remote end (`ipipMode`/`vxlanMode`, CrossSubnet decided
    /// by the peer node's subnet): `none`, `ipip` or `vxlan`; absent when
    /// it cannot be told. On pod interfaces, where packets are never
    /// encapsulated, it says how the flow crosses to the other node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_encap: Option<String>,
    /// Packets as on the wire (GSO segments counted one by one).
    pub packets: u64,
    /// Bytes of the IP packets (inner ones when encapsulated), as on the wire.
    pub bytes: u64,
    /// Socket buffers seen (a GSO super-packet is one).
    pub skbs: u64,
    /// Encapsulation header bytes around the counted packets.
    pub overhead_bytes: u64,
    /// TCP flags seen, e.g. `SYN|ACK|FIN`; empty for other protocols.
    #[serde(default)]
    pub tcp_flags: String,
    /// RFC 3339 wall-clock times.
    pub first_seen: String,
    pub last_seen: String,
    /// Who the addresses are (absent where nothing is known, as in replay).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub src: Option<EndpointView>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dst: Option<EndpointView>,
    /// The Service the destination belongs to (its VIP, or an endpoint).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<ServiceRef>,
    /// The node at the other end of the tunnel, for encapsulated traffic;
    /// on the underlay also for pod traffic routed without encapsulation
    /// (Calico's BGP mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_node: Option<String>,
}
/// Who an address is, as flows show it. Fields we do not know are absent:
/// unknown stays visibly unknown.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct EndpointView {
    /// `pod`, `host` (a node's address), `service` (a Service VIP),
    /// `link-local` (fe80::/10, 169.254.0.0/16), `multicast` or `world`.
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// The owning workload's name, and its kind (`Deployment`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload_kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

/// The Service a flow's destination belongs to.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ServiceRef {
    pub namespace: String,
    pub name: String,
    /// The Service port's name, else its number.
    pub port: String,
    /// `vip`: sent to the ClusterIP (seen before DNAT); `endpoint`: sent to
    /// one of its ready endpoints (after DNAT, or directly).
    pub via: String,
    /// The endpoint that serves it (for `vip`: from conntrack's DNAT), and
    /// its pod as `namespace/name`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend_pod: Option<String>,
}
