//! Flows as a table: one row per flow, its ends named (`namespace/pod`,
//! `node/NAME`, the Service) where the daemon knows them, with rate columns
//! when there were two samples.

use serde::{Deserialize, Serialize};

use std::net::{IpAddr, SocketAddr};

use crate::api::{EndpointKind, EndpointView, FlowView, Via};

use super::{
    style,
    table::table,
    units::{byte_rate, bytes, count, packet_rate},
};

/// A flow as `flows` prints it: the daemon's flow, and its rates when there
/// were two samples.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct FlowRow {
    #[serde(flatten)]
    pub flow: FlowView,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_per_second: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub packets_per_second: Option<f64>,
}

fn endpoint(ip: IpAddr, port: u16) -> String {
    match port {
        0 => ip.to_string(),
        p => SocketAddr::new(ip, p).to_string(),
    }
}

/// The destination column: the Service (`namespace/name:port`, or
/// `ipvs/<virtual service>` for an IPVS VIP without one) for a flow to its
/// VIP, else the destination as [`named`] shows it.
fn destination(f: &FlowView) -> String {
    match &f.service {
        Some(s) if s.via == Via::Vip => s.label(),
        _ => named(f.dst.as_ref(), f.dst_ip, f.dst_port),
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
            let mut proto = f.protocol.to_string();
            if let (Some(t), Some(c)) = (f.icmp_type, f.icmp_code) {
                proto = format!("{proto} {t}/{c}");
            }
            let mut r = vec![
                f.interface.clone(),
                style::direction(f.direction),
                proto,
                named(f.src.as_ref(), f.src_ip, f.src_port),
                destination(f),
                f.encap.name().to_owned(),
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
                        |s| match (&s.backend_pod, &s.backend) {
                            (Some(b), _) | (None, Some(b)) if s.via == Via::Vip => {
                                format!("{} (vip -> {b})", s.label())
                            }
                            _ => format!("{} ({})", s.label(), s.via),
                        },
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

/// `namespace/pod` where known, else the address.
pub(crate) fn named(ep: Option<&EndpointView>, ip: IpAddr, port: u16) -> String {
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
            kind: EndpointKind::Host,
            node: Some(node),
            pod: None,
            ..
        }) => {
            if port == 0 {
                format!("node/{node}")
            } else {
                format!("node/{node}:{port}")
            }
        }
        _ => addr,
    }
}
