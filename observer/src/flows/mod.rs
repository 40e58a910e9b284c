//! Flows: the table of monotonic counters, and how a flow is shown.

pub mod table;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use observer_common::{Encap, FAMILY_IPV4, FlowKey, Hook};

use self::table::FlowEntry;
pub use crate::api::InterfaceKind;
use crate::api::{Direction, FlowView, Protocol, Via};
pub use crate::datapath::clock::Clock;
use crate::model::Model;

#[derive(Clone, Debug)]
pub struct Interface {
    pub name: String,
    pub kind: InterfaceKind,
}

/// The direction of a flow: on pod interfaces the pod's point of view (TC
/// ingress of the host-side veth carries what the pod sends), elsewhere the
/// node's.
pub fn direction(kind: InterfaceKind, hook: Hook) -> Direction {
    match (kind, hook) {
        (InterfaceKind::Pod, Hook::Ingress) => Direction::Egress,
        (InterfaceKind::Pod, Hook::Egress) => Direction::Ingress,
        (_, Hook::Ingress) => Direction::Ingress,
        (_, Hook::Egress) => Direction::Egress,
    }
}

pub fn tcp_flags_string(flags: u32) -> String {
    const NAMES: [&str; 8] = ["FIN", "SYN", "RST", "PSH", "ACK", "URG", "ECE", "CWR"];
    NAMES
        .iter()
        .enumerate()
        .filter(|(i, _)| flags & (1 << i) != 0)
        .map(|(_, n)| *n)
        .collect::<Vec<_>>()
        .join("|")
}

pub fn key_addrs(key: &FlowKey) -> (IpAddr, IpAddr) {
    if key.family == FAMILY_IPV4 {
        let a = |b: &[u8; 16]| IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]));
        (a(&key.src_bytes()), a(&key.dst_bytes()))
    } else {
        (
            IpAddr::V6(Ipv6Addr::from(key.src_bytes())),
            IpAddr::V6(Ipv6Addr::from(key.dst_bytes())),
        )
    }
}

/// Where connections to VIPs went (IPVS's choice, conntrack's DNAT).
pub type NatTable = crate::model::ipvs::VipConnections;

/// Builds the shown form of a flow. `iface` is `None` for an interface we
/// no longer know (its name is then `if<N>`).
pub fn to_view(
    key: &FlowKey,
    entry: &FlowEntry,
    iface: Option<&Interface>,
    clock: &Clock,
    model: Option<&Model>,
    nat: Option<&NatTable>,
) -> FlowView {
    let kind = iface.map_or(InterfaceKind::Underlay, |i| i.kind);
    let hook = Hook::from_u8(key.hook).unwrap_or(Hook::Ingress);
    let mut encap = Encap::from_u8(key.encap).unwrap_or(Encap::None);
    if let (Encap::None, InterfaceKind::Tunnel(e)) = (encap, kind) {
        encap = e;
    }
    let (src, dst) = key_addrs(key);
    let icmp = key.protocol == 1 || key.protocol == 58;
    let c = entry.counters();
    let service = model.filter(|_| !icmp).and_then(|m| {
        let r = m.service_of(dst, key.dst_port, key.protocol)?;
        let (s, d) = (
            SocketAddr::new(src, key.src_port),
            SocketAddr::new(dst, key.dst_port),
        );
        Some(m.with_backend(
            r,
            d,
            key.protocol,
            nat.and_then(|n| n.chosen(s, d, key.protocol)),
        ))
    });
    // To a Service VIP: where it goes is its backend (when known).
    let expected_encap = model.and_then(|m| {
        let to = match &service {
            Some(r) if r.via == Via::Vip => r.backend.as_ref()?.parse::<SocketAddr>().ok()?.ip(),
            _ => dst,
        };
        m.expected_encap(src, to)
    });
    FlowView {
        interface: iface.map_or_else(|| format!("if{}", key.ifindex), |i| i.name.clone()),
        ifindex: key.ifindex,
        direction: direction(kind, hook),
        src_ip: src,
        dst_ip: dst,
        src_port: if icmp { 0 } else { key.src_port },
        dst_port: if icmp { 0 } else { key.dst_port },
        protocol: Protocol::from_number(key.protocol),
        icmp_type: icmp.then_some(key.src_port as u8),
        icmp_code: icmp.then_some(key.dst_port as u8),
        encap,
        expected_encap,
        packets: c.packets,
        bytes: c.bytes,
        skbs: c.skbs,
        overhead_bytes: c.overhead_bytes,
        tcp_flags: if key.protocol == 6 {
            tcp_flags_string(entry.tcp_flags)
        } else {
            String::new()
        },
        first_seen: clock.rfc3339(entry.first_seen),
        last_seen: clock.rfc3339(entry.last_seen),
        src: model.map(|m| m.endpoint(src)),
        dst: model.map(|m| m.endpoint(dst)),
        service,
        // Tunnelled traffic, and pod traffic routed bare over the underlay
        // (BGP without encapsulation): the node at the other end.
        peer_node: model
            .filter(|m| {
                encap != Encap::None
                    || (kind == InterfaceKind::Underlay
                        && [src, dst]
                            .iter()
                            .any(|ip| m.in_pod_network(*ip) && !m.is_local(*ip)))
            })
            .and_then(|m| m.peer_node(src, dst)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directions_take_the_pods_view_on_pod_interfaces() {
        assert_eq!(
            direction(InterfaceKind::Pod, Hook::Ingress),
            Direction::Egress
        );
        assert_eq!(
            direction(InterfaceKind::Pod, Hook::Egress),
            Direction::Ingress
        );
        assert_eq!(
            direction(InterfaceKind::Tunnel(Encap::Vxlan), Hook::Egress),
            Direction::Egress
        );
        assert_eq!(
            direction(InterfaceKind::Underlay, Hook::Ingress),
            Direction::Ingress
        );
    }

    #[test]
    fn tcp_flags_render_in_bit_order() {
        assert_eq!(tcp_flags_string(0x12), "SYN|ACK");
        assert_eq!(tcp_flags_string(0x19), "FIN|PSH|ACK");
        assert_eq!(tcp_flags_string(0), "");
    }
}
