//! Tables for people: aligned columns, human units.

use std::fmt::Write as _;

use crate::api::{EndpointView, FlowView, InterfaceView, PodView, ServiceView, StatusView};

use super::flows::FlowRow;

pub use super::units::{bytes, count};
use super::{
    style::{self, Paint, paint},
    units::{byte_rate, packet_rate},
};

/// Columns of numbers (by their header) are right-aligned.
fn numeric(header: &str) -> bool {
    [
        "PKTS", "BYTES", "PACKETS", "OVERHEAD", "SKBS", "IFINDEX", "NON-IP", "MTU", "/S", "%",
    ]
    .iter()
    .any(|k| header.contains(k))
}

/// Formats rows as columns separated by two spaces: left-aligned, numbers
/// right-aligned; widths ignore colour escapes; the header is highlighted.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(style::visible_width(c));
        }
    }
    let right: Vec<bool> = header.iter().map(|h| numeric(h)).collect();
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = String>| {
        let mut l = String::new();
        for (i, c) in cells.enumerate() {
            let Some(&w) = widths.get(i) else { break };
            if i > 0 {
                l.push_str("  ");
            }
            let pad = " ".repeat(w.saturating_sub(style::visible_width(&c)));
            if right[i] {
                l.push_str(&pad);
                l.push_str(&c);
            } else {
                l.push_str(&c);
                l.push_str(&pad);
            }
        }
        let _ = writeln!(out, "{}", l.trim_end());
    };
    line(&mut header.iter().map(|h| paint(Paint::Header, *h)));
    for r in rows {
        line(&mut r.iter().cloned());
    }
    out
}

fn endpoint(ip: &str, port: u16) -> String {
    match (ip.contains(':'), port) {
        (_, 0) => ip.to_owned(),
        (true, p) => format!("[{ip}]:{p}"),
        (false, p) => format!("{ip}:{p}"),
    }
}

pub fn flows_table(flows: &[FlowView], wide: bool) -> String {
    let rows: Vec<FlowRow> = flows
        .iter()
        .map(|f| FlowRow {
            flow: f.clone(),
            bytes_per_second: None,
            packets_per_second: None,
        })
        .collect();
    flow_rows_table(&rows, wide)
}

/// Flows, with rate columns when they have rates.
pub fn flow_rows_table(flows: &[FlowRow], wide: bool) -> String {
    if flows.is_empty() {
        return "no flows seen yet\n".to_owned();
    }
    let rates = flows.iter().any(|r| r.bytes_per_second.is_some());
    let mut header = vec![
        "INTERFACE",
        "DIR",
        "PROTO",
        "SOURCE",
        "DESTINATION",
        "ENCAP",
        "PACKETS",
        "BYTES",
    ];
    if rates {
        header.extend(["BYTES/S", "PKTS/S"]);
    }
    if wide {
        header.extend([
            "SKBS",
            "OVERHEAD",
            "SERVICE",
            "PEER-NODE",
            "TCP-FLAGS",
            "FIRST-SEEN",
            "LAST-SEEN",
        ]);
    }
    let rows: Vec<Vec<String>> = flows
        .iter()
        .map(|row| {
            let f = &row.flow;
            let mut proto = f.protocol.clone();
            if let (Some(t), Some(c)) = (f.icmp_type, f.icmp_code) {
                proto = format!("{proto} {t}/{c}");
            }
            let mut r = vec![
                f.interface.clone(),
                style::direction(&f.direction),
                proto,
                named(f.src.as_ref(), &f.src_ip, f.src_port),
                named(f.dst.as_ref(), &f.dst_ip, f.dst_port),
                f.encap.clone(),
                count(f.packets),
                bytes(f.bytes),
            ];
            if rates {
                r.extend([
                    row.bytes_per_second.map_or_else(|| "-".into(), byte_rate),
                    row.packets_per_second
                        .map_or_else(|| "-".into(), packet_rate),
                ]);
            }
            if wide {
                r.extend([
                    count(f.skbs),
                    bytes(f.overhead_bytes),
                    f.service.as_ref().map_or_else(
                        || "-".into(),
                        |s| format!("{}/{}:{} ({})", s.namespace, s.name, s.port, s.via),
                    ),
                    f.peer_node.clone().unwrap_or_else(|| "-".into()),
                    f.tcp_flags.clone(),
                    f.first_seen.clone(),
                    f.last_seen.clone(),
                ]);
            }
            r
        })
        .collect();
    table(&header, &rows)
}

pub fn pods_table(list: &[PodView]) -> String {
    if list.is_empty() {
        return "no pods known on this node (give the daemon --objects-dir or a Kubernetes API)\n"
            .to_owned();
    }
    let header = [
        "NAMESPACE",
        "POD",
        "WORKLOAD",
        "NODE",
        "NETWORKS",
        "INTERFACE",
        "IN-PKTS",
        "IN-BYTES",
        "OUT-PKTS",
        "OUT-BYTES",
    ];
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|p| {
            vec![
                p.namespace.clone(),
                p.name.clone(),
                match (&p.workload_kind, &p.workload) {
                    (Some(k), Some(w)) => format!("{}/{w}", k.to_lowercase()),
                    _ => "-".into(),
                },
                p.node.clone().unwrap_or_else(|| "-".into()),
                p.networks.join(","),
                if p.attached {
                    p.interface.clone()
                } else {
                    format!("{} {}", p.interface, paint(Paint::Warn, "(not attached)"))
                },
                count(p.ingress_packets),
                bytes(p.ingress_bytes),
                count(p.egress_packets),
                bytes(p.egress_bytes),
            ]
        })
        .collect();
    table(&header, &rows)
}

/// `namespace/pod` where known, else the address.
pub(crate) fn named(ep: Option<&EndpointView>, ip: &str, port: u16) -> String {
    let addr = endpoint(ip, port);
    match ep {
        Some(EndpointView {
            pod: Some(pod),
            namespace: Some(ns),
            ..
        }) => {
            if port == 0 {
                format!("{ns}/{pod}")
            } else {
                format!("{ns}/{pod}:{port}")
            }
        }
        Some(EndpointView {
            kind,
            node: Some(node),
            pod: None,
            ..
        }) if kind == "host" => {
            if port == 0 {
                format!("node/{node}")
            } else {
                format!("node/{node}:{port}")
            }
        }
        _ => addr,
    }
}

/// Like `ipvsadm -Ln`: a virtual service per line, its backends under it.
pub fn services_text(list: &[ServiceView]) -> String {
    if list.is_empty() {
        return "no Services known (give the daemon --objects-dir or a Kubernetes API)\n"
            .to_owned();
    }
    let mut rows = Vec::new();
    for s in list {
        rows.push(vec![
            s.protocol.to_uppercase(),
            s.vips.join(","),
            if s.name.is_empty() {
                format!("(IPVS, no Service) :{}", s.port)
            } else {
                format!("{}/{}:{}", s.namespace, s.name, s.port)
            },
            count(s.vip_packets),
            bytes(s.vip_bytes),
        ]);
        for b in &s.backends {
            let who = match (&b.pod, &b.node) {
                (Some(p), Some(n)) => format!("{p} on {n}"),
                (Some(p), None) => p.clone(),
                _ => "-".into(),
            };
            let ready = if b.ready { "" } else { " (not ready)" };
            rows.push(vec![
                String::new(),
                format!("  -> {}", b.address),
                format!("{who}{ready}"),
                count(b.packets),
                bytes(b.bytes),
            ]);
        }
    }
    table(
        &[
            "PROT",
            "LOCAL ADDRESS",
            "SERVICE / BACKEND",
            "PACKETS",
            "BYTES",
        ],
        &rows,
    )
}

pub fn interfaces_table(list: &[InterfaceView], wide: bool) -> String {
    if list.is_empty() {
        return "no interfaces attached (none matches --pod-interfaces / --tunnel-interfaces / --underlay)\n".to_owned();
    }
    let mut header = vec![
        "INTERFACE",
        "IFINDEX",
        "KIND",
        "MTU",
        "ATTACHED",
        "IN-PKTS",
        "IN-BYTES",
        "OUT-PKTS",
        "OUT-BYTES",
        "NON-IP",
    ];
    if wide {
        header.push("LAYER");
    }
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|i| {
            let attached = match (&i.attached_via, &i.attach_error, i.gone) {
                (_, _, true) => paint(Paint::Dim, "gone"),
                (Some(v), _, _) => v.clone(),
                (None, Some(e), _) => paint(Paint::Bad, format!("error: {e}")),
                (None, None, _) => paint(Paint::Warn, "no"),
            };
            let mut r = vec![
                i.name.clone(),
                i.ifindex.to_string(),
                i.kind.clone(),
                i.mtu.map_or_else(|| "-".into(), |m| m.to_string()),
                attached,
                count(i.ingress_packets),
                bytes(i.ingress_bytes),
                count(i.egress_packets),
                bytes(i.egress_bytes),
                count(i.non_ip_packets),
            ];
            if wide {
                r.push(i.layer.clone());
            }
            r
        })
        .collect();
    table(&header, &rows)
}

pub fn status_text(s: &StatusView) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "observer {}  up {}s  polls {} (last {:.1} ms)",
        s.version, s.uptime_seconds, s.polls, s.last_poll_ms
    );
    let _ = writeln!(out, "attached interfaces: {}", s.attached_interfaces);
    let _ = writeln!(
        out,
        "kernel flow map: {} / {} entries; {} flows shown",
        s.kernel_flow_entries, s.flow_capacity, s.flows_tracked
    );
    if s.overflow_packets > 0 {
        let _ = writeln!(
            out,
            "{}",
            paint(
                Paint::Bad,
                format!(
                    "{} packets counted without a flow: the flow map was full (they are in \
                     the pods' and interfaces' totals; raise --flow-capacity)",
                    s.overflow_packets
                )
            )
        );
    }
    if s.lru_evictions > 0 {
        let _ = writeln!(
            out,
            "{}",
            paint(
                Paint::Bad,
                format!(
                    "{} flow entries vanished before they were read (after a crash?)",
                    s.lru_evictions
                )
            )
        );
    }
    for (k, v) in &s.datapath {
        // Lost or unreadable packets are worth a look.
        let problem = matches!(k.as_str(), "unparsed" | "flow_insert_failures") && *v > 0;
        let v = if problem {
            paint(Paint::Bad, v.to_string())
        } else {
            v.to_string()
        };
        let _ = writeln!(out, "{k}: {v}");
    }
    // Outer headers seen on watched underlay devices, per encapsulation.
    for (encap, e) in s.encap.iter().filter(|(_, e)| e.packets > 0) {
        let _ = writeln!(
            out,
            "{encap} on the underlay: {} packets, {} inner, {} overhead",
            count(e.packets),
            bytes(e.bytes),
            bytes(e.overhead_bytes)
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_are_human() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(count(999), "999");
        assert_eq!(count(12_345), "12.3k");
    }

    #[test]
    fn columns_align() {
        let t = table(&["A", "BB"], &[vec!["xxx".into(), "y".into()]]);
        assert_eq!(t, "A    BB\nxxx  y\n");
    }
}
