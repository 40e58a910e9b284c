//! Tables for people: aligned columns, human units.

use std::fmt::Write as _;

use crate::{
    export::api::{InterfaceView, StatusView},
    export::api::{PodView, ServiceView},
    flows::view::FlowView,
    model::EndpointView,
};

/// Formats rows as left-aligned columns separated by two spaces.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let parts: Vec<String> = cells
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        let _ = writeln!(out, "{}", parts.join("  ").trim_end());
    };
    line(&mut header.iter().copied());
    for r in rows {
        line(&mut r.iter().map(String::as_str));
    }
    out
}

/// 1234567 -> "1.2 MiB".
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i < UNITS.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[i])
    }
}

/// 1234567 -> "1.2M".
pub fn count(n: u64) -> String {
    match n {
        0..1_000 => n.to_string(),
        1_000..1_000_000 => format!("{:.1}k", n as f64 / 1e3),
        1_000_000..1_000_000_000 => format!("{:.1}M", n as f64 / 1e6),
        _ => format!("{:.1}G", n as f64 / 1e9),
    }
}

fn endpoint(ip: &str, port: u16) -> String {
    match (ip.contains(':'), port) {
        (_, 0) => ip.to_owned(),
        (true, p) => format!("[{ip}]:{p}"),
        (false, p) => format!("{ip}:{p}"),
    }
}

pub fn flows_table(flows: &[FlowView], wide: bool) -> String {
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
    if wide {
        header.extend(["SKBS", "OVERHEAD", "TCP-FLAGS", "FIRST-SEEN", "LAST-SEEN"]);
    }
    let rows: Vec<Vec<String>> = flows
        .iter()
        .map(|f| {
            let mut proto = f.protocol.clone();
            if let (Some(t), Some(c)) = (f.icmp_type, f.icmp_code) {
                proto = format!("{proto} {t}/{c}");
            }
            let mut r = vec![
                f.interface.clone(),
                f.direction.clone(),
                proto,
                named(f.src.as_ref(), &f.src_ip, f.src_port),
                named(f.dst.as_ref(), &f.dst_ip, f.dst_port),
                f.encap.clone(),
                count(f.packets),
                bytes(f.bytes),
            ];
            if wide {
                r.extend([
                    count(f.skbs),
                    bytes(f.overhead_bytes),
                    f.tcp_flags.clone(),
                    f.first_seen.clone(),
                    f.last_seen.clone(),
                ]);
            }
            r
        })
        .collect();
    if rows.is_empty() {
        return "no flows seen yet\n".to_owned();
    }
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
                    format!("{} (not attached)", p.interface)
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
fn named(ep: Option<&EndpointView>, ip: &str, port: u16) -> String {
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

pub fn interfaces_table(list: &[InterfaceView]) -> String {
    let header = [
        "INTERFACE",
        "IFINDEX",
        "KIND",
        "ATTACHED",
        "IN-PKTS",
        "IN-BYTES",
        "OUT-PKTS",
        "OUT-BYTES",
        "NON-IP",
    ];
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|i| {
            let attached = match (&i.attached_via, &i.attach_error, i.gone) {
                (_, _, true) => "gone".to_owned(),
                (Some(v), _, _) => v.clone(),
                (None, Some(e), _) => format!("error: {e}"),
                (None, None, _) => "no".to_owned(),
            };
            vec![
                i.name.clone(),
                i.ifindex.to_string(),
                i.kind.clone(),
                attached,
                count(i.ingress_packets),
                bytes(i.ingress_bytes),
                count(i.egress_packets),
                bytes(i.egress_bytes),
                count(i.non_ip_packets),
            ]
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
        "kernel flow map: {} / {} entries; {} flows shown; {} LRU evictions",
        s.kernel_flow_entries, s.flow_capacity, s.flows_tracked, s.lru_evictions
    );
    for (k, v) in &s.datapath {
        let _ = writeln!(out, "{k}: {v}");
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
