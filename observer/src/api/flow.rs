//! A flow as the API shows it (`/v1/flows`): its interface, direction,
//! addresses, counters, and who and which Service its ends are.

use std::{fmt, net::IpAddr};

pub use observer_common::Encap;
use serde::{Deserialize, Serialize};

/// Which way a flow goes: from the pod's point of view on pod interfaces,
/// from the node's on tunnel and underlay devices.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Ingress,
    Egress,
}

impl Direction {
    pub fn name(self) -> &'static str {
        match self {
            Self::Ingress => "ingress",
            Self::Egress => "egress",
        }
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An IP protocol: `tcp`, `udp`, `icmp`, `icmpv6`, or its number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub enum Protocol {
    Tcp,
    Udp,
    Icmp,
    Icmpv6,
    Other(u8),
}

impl Protocol {
    pub fn from_number(n: u8) -> Self {
        match n {
            6 => Self::Tcp,
            17 => Self::Udp,
            1 => Self::Icmp,
            58 => Self::Icmpv6,
            n => Self::Other(n),
        }
    }

    pub fn number(self) -> u8 {
        match self {
            Self::Tcp => 6,
            Self::Udp => 17,
            Self::Icmp => 1,
            Self::Icmpv6 => 58,
            Self::Other(n) => n,
        }
    }

    /// ICMP or ICMPv6: no ports, a type and a code.
    pub fn is_icmp(self) -> bool {
        matches!(self, Self::Icmp | Self::Icmpv6)
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Tcp => f.write_str("tcp"),
            Self::Udp => f.write_str("udp"),
            Self::Icmp => f.write_str("icmp"),
            Self::Icmpv6 => f.write_str("icmpv6"),
            Self::Other(n) => write!(f, "{n}"),
        }
    }
}

impl From<Protocol> for String {
    fn from(p: Protocol) -> Self {
        p.to_string()
    }
}

impl std::str::FromStr for Protocol {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "tcp" => Ok(Self::Tcp),
            "udp" => Ok(Self::Udp),
            "icmp" => Ok(Self::Icmp),
            "icmpv6" => Ok(Self::Icmpv6),
            n => n
                .parse()
                .map(Self::from_number)
                .map_err(|_| format!("unknown protocol {s:?}: tcp, udp, icmp, icmpv6 or a number")),
        }
    }
}

impl TryFrom<String> for Protocol {
    type Error = String;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

/// How a flow reaches its Service.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Via {
    /// Sent to the ClusterIP (seen before DNAT).
    #[default]
    Vip,
    /// Sent to one of its ready endpoints (after DNAT, or directly).
    Endpoint,
}

impl Via {
    pub fn name(self) -> &'static str {
        match self {
            Self::Vip => "vip",
            Self::Endpoint => "endpoint",
        }
    }
}

impl fmt::Display for Via {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One flow on one interface in one direction, with monotonic counters.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct FlowView {
    pub interface: String,
    pub ifindex: u32,
    /// `egress`/`ingress`: from the pod's point of view on pod interfaces,
    /// from the node's on tunnel and underlay devices.
    pub direction: Direction,
    pub src_ip: IpAddr,
    pub dst_ip: IpAddr,
    /// 0 for protocols without ports (ICMP: see `icmp_type`).
    pub src_port: u16,
    pub dst_port: u16,
    /// `tcp`, `udp`, `icmp`, `icmpv6`, or the protocol number.
    pub protocol: Protocol,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icmp_type: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icmp_code: Option<u8>,
    /// `none`, `ipip`, `vxlan` or `wireguard`.
    pub encap: Encap,
    /// The encapsulation the flow should have between nodes, from the IP
    /// pool of its remote end (`ipipMode`/`vxlanMode`, CrossSubnet decided
    /// by the peer node's subnet): `none`, `ipip` or `vxlan`; absent when
    /// it cannot be told. On pod interfaces, where packets are never
    /// encapsulated, it says how the flow crosses to the other node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_encap: Option<Encap>,
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
/// What an address is, as flows show it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EndpointKind {
    Pod,
    /// A node's address.
    Host,
    /// A Service VIP (a ClusterIP, or an IPVS virtual service's address).
    Service,
    /// fe80::/10, 169.254.0.0/16: neighbour discovery and the like.
    LinkLocal,
    Multicast,
    /// None of those: an address we know nothing of.
    #[default]
    World,
}

impl EndpointKind {
    pub fn name(self) -> &'static str {
        match self {
            Self::Pod => "pod",
            Self::Host => "host",
            Self::Service => "service",
            Self::LinkLocal => "link-local",
            Self::Multicast => "multicast",
            Self::World => "world",
        }
    }
}

impl fmt::Display for EndpointKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Who an address is, as flows show it. Fields we do not know are absent:
/// unknown stays visibly unknown.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct EndpointView {
    pub kind: EndpointKind,
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
    pub via: Via,
    /// The endpoint that serves it (for `vip`: the real server IPVS chose,
    /// else conntrack's DNAT), and its pod as `namespace/name`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend_pod: Option<String>,
    /// The backend's node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend_node: Option<String>,
    /// Where `backend` was read for `vip`: `ipvs` (`/proc/net/ip_vs_conn`)
    /// or `conntrack` (its DNAT).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend_source: Option<String>,
    /// The IPVS virtual service that serves the VIP (`TCP
    /// 10.96.0.10:80`), its scheduler, and the chosen real server's
    /// forwarding method (`Masq`): present when IPVS serves it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub virtual_service: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduler: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forward: Option<String>,
}

impl ServiceRef {
    /// `namespace/name:port`, or for an IPVS virtual service that no
    /// Service object accounts for, `ipvs/<virtual service>`.
    pub fn label(&self) -> String {
        match (&self.virtual_service, self.name.is_empty()) {
            (Some(vs), true) => format!("ipvs/{}", vs.replace(' ', "/")),
            _ => format!("{}/{}:{}", self.namespace, self.name, self.port),
        }
    }
}
