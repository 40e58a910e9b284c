//! `observer encap`: traffic per tunnel device and peer node with its
//! encapsulation overhead and the device's MTU, and the MTU problems seen:
//! ICMP "fragmentation needed" (IPv4 type 3 code 4) and ICMPv6 "packet too
//! big" (type 2) flows, and pod interfaces with a larger MTU than a tunnel.
//! Aggregated here from `/v1/flows`, `/v1/interfaces` and `/v1/pods`.

use std::{collections::BTreeMap, fmt::Write as _};

use serde::{Deserialize, Serialize};

use crate::{
    api::{Direction, Encap, FlowView, InterfaceKind, InterfaceView, PodView, Protocol},
    term::{
        flows::named,
        style::{Paint, paint},
        table,
        units::{bytes, count, percent},
    },
};

/// Traffic through one tunnel device to or from one peer node. Directions
/// are the node's: `tx` left the node, `rx` arrived.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
pub struct TunnelRow {
    pub device: String,
    /// `ipip`, `vxlan` or `wireguard`.
    pub encap: Encap,
    /// The node at the other end; absent when not known (or no traffic yet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_node: Option<String>,
    /// The device's MTU.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    pub packets: u64,
    /// Inner (pod) packet bytes.
    pub bytes: u64,
    /// Encapsulation header bytes around them: read from the outer headers
    /// on underlay devices; on tunnel devices, which never see those,
    /// packets times the device's encapsulation (`device_overhead`).
    pub overhead_bytes: u64,
    /// overhead / (bytes + overhead): the share of what crossed the
    /// underlay that was encapsulation; absent without traffic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overhead_percent: Option<f64>,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    pub rx_packets: u64,
    pub rx_bytes: u64,
}

/// An MTU problem seen on this node.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct MtuProblem {
    /// `fragmentation-needed` (ICMP 3/4), `packet-too-big` (ICMPv6 2) or
    /// `pod-mtu-over-tunnel`.
    pub kind: String,
    pub interface: String,
    /// The pod of a pod interface, `namespace/name`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// ICMP: the flow, who sent the error to whom, and how many.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direction: Option<Direction>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub src: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dst: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub packets: Option<u64>,
    /// MTU: the interface's, and the tunnel's it exceeds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tunnel: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tunnel_mtu: Option<u32>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
pub struct EncapReport {
    pub tunnels: Vec<TunnelRow>,
    pub mtu_problems: Vec<MtuProblem>,
}

/// Bytes of encapsulation a tunnel device adds to each packet (see
/// `Encap::overhead`; the `-v6` devices run over IPv6).
pub fn device_overhead(device: &str, encap: Encap) -> u64 {
    u64::from(encap.overhead(device.contains("v6")))
}

fn icmp_problem(f: &FlowView) -> Option<&'static str> {
    match (f.protocol, f.icmp_type, f.icmp_code) {
        (Protocol::Icmp, Some(3), Some(4)) => Some("fragmentation-needed"),
        (Protocol::Icmpv6, Some(2), _) => Some("packet-too-big"),
        _ => None,
    }
}

pub fn aggregate(
    flows: &[FlowView],
    interfaces: &[InterfaceView],
    pods: &[PodView],
) -> EncapReport {
    let live = |name: &str| {
        interfaces
            .iter()
            .filter(|i| i.name == name)
            .min_by_key(|i| i.gone)
    };
    let tunnels: Vec<&InterfaceView> = interfaces
        .iter()
        .filter(|i| matches!(i.kind, InterfaceKind::Tunnel(_)) && !i.gone)
        .collect();

    let mut rows: BTreeMap<(String, Encap, Option<String>), TunnelRow> = BTreeMap::new();
    for f in flows {
        let on_tunnel =
            live(&f.interface).is_some_and(|i| matches!(i.kind, InterfaceKind::Tunnel(_)));
        if !on_tunnel && f.encap == Encap::None {
            continue;
        }
        let key = (f.interface.clone(), f.encap, f.peer_node.clone());
        let r = rows.entry(key).or_insert_with(|| TunnelRow {
            device: f.interface.clone(),
            encap: f.encap,
            peer_node: f.peer_node.clone(),
            mtu: live(&f.interface).and_then(|i| i.mtu),
            ..Default::default()
        });
        r.packets += f.packets;
        r.bytes += f.bytes;
        // A tunnel device sees its packets without the outer headers (they
        // are counted on the underlay): its overhead is per packet.
        r.overhead_bytes += if on_tunnel && f.overhead_bytes == 0 {
            f.packets * device_overhead(&f.interface, f.encap)
        } else {
            f.overhead_bytes
        };
        if f.direction == Direction::Egress {
            r.tx_packets += f.packets;
            r.tx_bytes += f.bytes;
        } else {
            r.rx_packets += f.packets;
            r.rx_bytes += f.bytes;
        }
    }
    // Tunnel devices without traffic still show, with their MTU.
    for t in &tunnels {
        if !rows.keys().any(|(d, _, _)| *d == t.name) {
            let encap = match t.kind {
                InterfaceKind::Tunnel(e) => e,
                _ => Encap::None,
            };
            rows.insert(
                (t.name.clone(), encap, None),
                TunnelRow {
                    device: t.name.clone(),
                    encap,
                    mtu: t.mtu,
                    ..Default::default()
                },
            );
        }
    }
    let mut tunnel_rows: Vec<TunnelRow> = rows.into_values().collect();
    for r in &mut tunnel_rows {
        let wire = r.bytes + r.overhead_bytes;
        r.overhead_percent =
            (wire > 0).then(|| (r.overhead_bytes as f64 * 1000.0 / wire as f64).round() / 10.0);
    }

    let pod_of = |iface: &str| {
        pods.iter()
            .find(|p| p.interface == iface)
            .map(|p| format!("{}/{}", p.namespace, p.name))
    };
    let mut problems = Vec::new();
    for f in flows {
        if let Some(kind) = icmp_problem(f) {
            problems.push(MtuProblem {
                kind: kind.into(),
                interface: f.interface.clone(),
                pod: pod_of(&f.interface),
                direction: Some(f.direction),
                src: Some(named(f.src.as_ref(), f.src_ip, 0)),
                dst: Some(named(f.dst.as_ref(), f.dst_ip, 0)),
                packets: Some(f.packets),
                mtu: None,
                tunnel: None,
                tunnel_mtu: None,
            });
        }
    }
    for i in interfaces
        .iter()
        .filter(|i| i.kind == InterfaceKind::Pod && !i.gone)
    {
        let Some(mtu) = i.mtu else { continue };
        // Against the smallest tunnel MTU it exceeds.
        if let Some(t) = tunnels
            .iter()
            .filter(|t| t.mtu.is_some_and(|tm| mtu > tm))
            .min_by_key(|t| t.mtu)
        {
            problems.push(MtuProblem {
                kind: "pod-mtu-over-tunnel".into(),
                interface: i.name.clone(),
                pod: pod_of(&i.name),
                direction: None,
                src: None,
                dst: None,
                packets: None,
                mtu: Some(mtu),
                tunnel: Some(t.name.clone()),
                tunnel_mtu: t.mtu,
            });
        }
    }
    EncapReport {
        tunnels: tunnel_rows,
        mtu_problems: problems,
    }
}

pub fn encap_text(r: &EncapReport, wide: bool) -> String {
    let mut out = String::new();
    if r.tunnels.is_empty() {
        out.push_str("no tunnel devices or encapsulated traffic seen\n");
    } else {
        let mut header = vec![
            "DEVICE",
            "ENCAP",
            "PEER-NODE",
            "PACKETS",
            "BYTES",
            "OVERHEAD",
            "OVERHEAD%",
            "MTU",
        ];
        if wide {
            header.extend(["TX-PKTS", "TX-BYTES", "RX-PKTS", "RX-BYTES"]);
        }
        let rows: Vec<Vec<String>> = r
            .tunnels
            .iter()
            .map(|t| {
                let mut row = vec![
                    t.device.clone(),
                    t.encap.name().to_owned(),
                    t.peer_node.clone().unwrap_or_else(|| "-".into()),
                    count(t.packets),
                    bytes(t.bytes),
                    bytes(t.overhead_bytes),
                    percent(t.overhead_bytes, t.bytes + t.overhead_bytes),
                    t.mtu.map_or_else(|| "-".into(), |m| m.to_string()),
                ];
                if wide {
                    row.extend([
                        count(t.tx_packets),
                        bytes(t.tx_bytes),
                        count(t.rx_packets),
                        bytes(t.rx_bytes),
                    ]);
                }
                row
            })
            .collect();
        out.push_str(&table(&header, &rows));
    }
    out.push('\n');
    if r.mtu_problems.is_empty() {
        let _ = writeln!(out, "MTU problems: {}", paint(Paint::Good, "none seen"));
        return out;
    }
    let _ = writeln!(
        out,
        "MTU problems: {}",
        paint(Paint::Bad, r.mtu_problems.len().to_string())
    );
    let rows: Vec<Vec<String>> = r
        .mtu_problems
        .iter()
        .map(|p| {
            let at = match &p.pod {
                Some(pod) => format!("{} ({pod})", p.interface),
                None => p.interface.clone(),
            };
            let detail = match (&p.src, &p.dst, p.packets) {
                (Some(s), Some(d), Some(n)) => format!(
                    "{} {s} -> {d}: {} packets",
                    p.direction.map_or("", Direction::name),
                    count(n)
                ),
                _ => format!(
                    "MTU {} > {} MTU {}",
                    p.mtu.unwrap_or(0),
                    p.tunnel.as_deref().unwrap_or("tunnel"),
                    p.tunnel_mtu.unwrap_or(0)
                ),
            };
            vec![paint(Paint::Bad, &p.kind), at, detail]
        })
        .collect();
    out.push_str(&table(&["PROBLEM", "INTERFACE", "DETAIL"], &rows));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::filter::tests::flow;

    fn iface(name: &str, kind: &str, mtu: u32) -> InterfaceView {
        InterfaceView {
            name: name.into(),
            ifindex: 1,
            kind: kind.to_owned().try_into().expect("an interface kind"),
            layer: crate::api::LinkLayer::Ethernet,
            attached_via: Some(crate::api::AttachedVia::Tcx),
            attach_error: None,
            gone: false,
            ingress_packets: 0,
            ingress_bytes: 0,
            egress_packets: 0,
            egress_bytes: 0,
            non_ip_packets: 0,
            overflow_packets: 0,
            mtu: Some(mtu),
        }
    }

    fn tunnel_flow(dir: Direction, peer: &str, packets: u64, bytes: u64) -> FlowView {
        let mut f = flow("vxlan.calico", "udp", 1, 2, "vxlan");
        f.direction = dir;
        f.peer_node = Some(peer.into());
        f.packets = packets;
        f.bytes = bytes;
        // As the kernel counts it on the tunnel device.
        f.overhead_bytes = 0;
        f
    }

    #[test]
    fn per_device_and_peer() {
        let ifaces = [
            iface("vxlan.calico", "tunnel/vxlan", 1450),
            iface("wireguard.cali", "tunnel/wireguard", 1440),
            iface("cali1", "pod", 1450),
        ];
        let flows = vec![
            tunnel_flow(Direction::Egress, "node2", 10, 1000),
            tunnel_flow(Direction::Ingress, "node2", 5, 500),
            tunnel_flow(Direction::Egress, "node3", 1, 950),
            // Pod interface traffic is not tunnel traffic.
            flow("cali1", "udp", 1, 2, "none"),
        ];
        let r = aggregate(&flows, &ifaces, &[]);
        let t: Vec<(&str, Option<&str>, u64, u64, u64)> = r
            .tunnels
            .iter()
            .map(|t| {
                (
                    t.device.as_str(),
                    t.peer_node.as_deref(),
                    t.packets,
                    t.bytes,
                    t.overhead_bytes,
                )
            })
            .collect();
        assert_eq!(
            t,
            [
                ("vxlan.calico", Some("node2"), 15, 1500, 750),
                ("vxlan.calico", Some("node3"), 1, 950, 50),
                ("wireguard.cali", None, 0, 0, 0),
            ]
        );
        let n2 = &r.tunnels[0];
        assert_eq!(
            (n2.tx_packets, n2.tx_bytes, n2.rx_packets, n2.rx_bytes),
            (10, 1000, 5, 500)
        );
        assert_eq!(n2.mtu, Some(1450));
        assert_eq!(n2.overhead_percent, Some(33.3));
        assert_eq!(r.tunnels[1].overhead_percent, Some(5.0));
        assert_eq!(r.tunnels[2].overhead_percent, None);
        assert_eq!(r.tunnels[2].encap, Encap::Wireguard);
        // cali1 (1450) is over wireguard.cali's 1440.
        assert_eq!(r.mtu_problems.len(), 1);
        let p = &r.mtu_problems[0];
        assert_eq!(p.kind, "pod-mtu-over-tunnel");
        assert_eq!(
            (p.mtu, p.tunnel.as_deref(), p.tunnel_mtu),
            (Some(1450), Some("wireguard.cali"), Some(1440))
        );
    }

    #[test]
    fn device_overheads() {
        assert_eq!(device_overhead("vxlan.calico", Encap::Vxlan), 50);
        assert_eq!(device_overhead("vxlan-v6.calico", Encap::Vxlan), 70);
        assert_eq!(device_overhead("tunl0", Encap::Ipip), 20);
        assert_eq!(device_overhead("wireguard.cali", Encap::Wireguard), 60);
        assert_eq!(device_overhead("wg-v6.cali", Encap::Wireguard), 80);
    }

    #[test]
    fn underlay_flows_with_outer_headers_count() {
        let ifaces = [iface("eth0", "underlay", 1500)];
        let mut f = flow("eth0", "tcp", 1, 2, "vxlan");
        f.overhead_bytes = 500;
        let plain = flow("eth0", "tcp", 1, 2, "none");
        let r = aggregate(&[f, plain], &ifaces, &[]);
        assert_eq!(r.tunnels.len(), 1);
        let t = &r.tunnels[0];
        assert_eq!(
            (t.device.as_str(), t.encap.name(), t.bytes, t.overhead_bytes),
            ("eth0", "vxlan", 1000, 500)
        );
    }

    #[test]
    fn icmp_errors_are_mtu_problems() {
        let mut frag = flow("cali1", "icmp", 0, 0, "none");
        (frag.icmp_type, frag.icmp_code) = (Some(3), Some(4));
        let mut unreach = flow("cali1", "icmp", 0, 0, "none");
        (unreach.icmp_type, unreach.icmp_code) = (Some(3), Some(1));
        let mut ptb = flow("cali2", "icmpv6", 0, 0, "none");
        (ptb.icmp_type, ptb.icmp_code) = (Some(2), Some(0));
        let mut echo6 = flow("cali2", "icmpv6", 0, 0, "none");
        (echo6.icmp_type, echo6.icmp_code) = (Some(128), Some(0));
        let pods = [PodView {
            namespace: "default".into(),
            name: "web-0".into(),
            workload: None,
            workload_kind: None,
            node: None,
            networks: vec![],
            interface: "cali1".into(),
            attached: true,
            ingress_packets: 0,
            ingress_bytes: 0,
            egress_packets: 0,
            egress_bytes: 0,
        }];
        let ifaces = [
            iface("cali1", "pod", 1450),
            iface("vxlan.calico", "tunnel/vxlan", 1450),
        ];
        let r = aggregate(&[frag, unreach, ptb, echo6], &ifaces, &pods);
        let kinds: Vec<(&str, &str, Option<&str>)> = r
            .mtu_problems
            .iter()
            .map(|p| (p.kind.as_str(), p.interface.as_str(), p.pod.as_deref()))
            .collect();
        assert_eq!(
            kinds,
            [
                ("fragmentation-needed", "cali1", Some("default/web-0")),
                ("packet-too-big", "cali2", None),
            ]
        );
        assert_eq!(r.mtu_problems[0].packets, Some(10));
        let text = encap_text(&r, false);
        assert!(text.contains("MTU problems: 2"), "{text}");
        assert!(text.contains("fragmentation-needed"), "{text}");
    }

    #[test]
    fn healthy_says_none() {
        let r = aggregate(&[], &[iface("vxlan.calico", "tunnel/vxlan", 1450)], &[]);
        let text = encap_text(&r, true);
        assert!(text.contains("MTU problems: none seen"), "{text}");
        assert!(text.contains("1450"), "{text}");
        assert!(text.contains("TX-PKTS"), "{text}");
    }
}
