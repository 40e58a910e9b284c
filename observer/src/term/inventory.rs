//! The daemon's pods, Services, interfaces and status
//! ([`crate::api::inventory`]) as tables and text.

use std::fmt::Write as _;

use crate::api::{InterfaceView, IpvsStats, PodView, ServiceView, StatusView};

use super::{
    style::{Paint, paint},
    table::table,
    units::{bytes, count},
};

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

/// Like `ipvsadm -Ln`: a virtual service per line, its backends under it.
/// Where IPVS serves them (kube-proxy's IPVS mode), like `ipvsadm -Ln
/// --stats` instead, with what this node counted beside IPVS's numbers.
pub fn services_text(list: &[ServiceView]) -> String {
    if list.is_empty() {
        return "no Services known (give the daemon --objects-dir or a Kubernetes API)\n"
            .to_owned();
    }
    let (ipvs, plain): (Vec<&ServiceView>, Vec<&ServiceView>) =
        list.iter().partition(|s| !s.ipvs.is_empty());
    let mut out = String::new();
    if !ipvs.is_empty() {
        out.push_str(&ipvs_text(&ipvs));
    }
    if !plain.is_empty() {
        if !out.is_empty() {
            out.push('\n');
        }
        out.push_str(&plain_services_text(&plain));
    }
    out
}

fn service_name(s: &ServiceView) -> String {
    if s.name.is_empty() {
        "(IPVS, no Service)".into()
    } else {
        format!("{}/{}:{}", s.namespace, s.name, s.port)
    }
}

fn plain_services_text(list: &[&ServiceView]) -> String {
    let mut rows = Vec::new();
    for s in list {
        rows.push(vec![
            s.protocol.to_string().to_uppercase(),
            s.vips.join(","),
            if s.name.is_empty() {
                format!("(IPVS, no Service) :{}", s.port)
            } else {
                service_name(s)
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

/// `ipvsadm -Ln --stats` with names: per virtual service its scheduler and
/// IPVS's counters, per real server its forwarding method, weight and
/// connections; then the Service or pod, and what this node counted (sent
/// to the VIP by local pods; per real server, on the connections IPVS gave
/// it).
fn ipvs_text(list: &[&ServiceView]) -> String {
    let stats = |s: Option<IpvsStats>| match s {
        Some(s) => vec![
            count(s.connections),
            count(s.in_packets),
            count(s.out_packets),
            bytes(s.in_bytes),
            bytes(s.out_bytes),
        ],
        None => vec!["-".into(); 5],
    };
    let mut rows = Vec::new();
    for s in list {
        for v in &s.ipvs {
            let (proto, vip) = v
                .virtual_service
                .split_once(' ')
                .unwrap_or(("", &v.virtual_service));
            let mut row = vec![
                proto.to_owned(),
                vip.to_owned(),
                v.scheduler.clone(),
                String::new(),
                String::new(),
                String::new(),
            ];
            row.extend(stats(v.stats));
            row.extend([service_name(s), count(v.packets), bytes(v.bytes)]);
            rows.push(row);
            for r in &v.real_servers {
                let who = match (&r.pod, &r.node) {
                    (Some(p), Some(n)) => format!("{p} on {n}"),
                    (Some(p), None) => p.clone(),
                    (None, Some(n)) => format!("on {n}"),
                    _ => "-".into(),
                };
                let mut row = vec![
                    String::new(),
                    format!("  -> {}", r.address),
                    r.forward.clone(),
                    r.weight.to_string(),
                    r.active_connections.to_string(),
                    r.inactive_connections.to_string(),
                ];
                row.extend(stats(r.stats));
                row.extend([who, count(r.packets), bytes(r.bytes)]);
                rows.push(row);
            }
        }
    }
    table(
        &[
            "PROT",
            "LOCAL ADDRESS",
            "SCHED/FORWARD",
            "WEIGHT",
            "ACTIVE",
            "INACT",
            "CONNS",
            "INPKTS",
            "OUTPKTS",
            "INBYTES",
            "OUTBYTES",
            "SERVICE / POD",
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
                (Some(v), _, _) => v.to_string(),
                (None, Some(e), _) => paint(Paint::Bad, format!("error: {e}")),
                (None, None, _) => paint(Paint::Warn, "no"),
            };
            let mut r = vec![
                i.name.clone(),
                i.ifindex.to_string(),
                i.kind.to_string(),
                i.mtu.map_or_else(|| "-".into(), |m| m.to_string()),
                attached,
                count(i.ingress_packets),
                bytes(i.ingress_bytes),
                count(i.egress_packets),
                bytes(i.egress_bytes),
                count(i.non_ip_packets),
            ];
            if wide {
                r.push(i.layer.name().into());
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
        "kernel flow map: {} / {} entries; {} flows shown ({} of them evicted from it)",
        s.kernel_flow_entries, s.flow_capacity, s.flows_tracked, s.evicted_flows_listed
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
    if s.flows_forgotten_over_limit > 0 {
        let _ = writeln!(
            out,
            "{} evicted flows no longer listed before --retain ran out: more ended than \
             --retain-flows keeps (their counts stay in the metrics; raise it to list more)",
            s.flows_forgotten_over_limit
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
