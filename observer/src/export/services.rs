//! `/v1/services`: each Service port with its VIPs and endpoints, and,
//! where kube-proxy runs in IPVS mode, what `ipvsadm -Ln --stats` shows
//! for each of its VIPs (scheduler, real servers with forwarding method,
//! weight, connections and IPVS's counters), beside the traffic this node
//! counted: sent to the VIP by local pods, per real server IPVS chose, and
//! delivered to local endpoints.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
};

use axum::{Json, extract::State as AxState};
use observer_common::Hook;

use crate::{
    api::{BackendView, IpvsView, Protocol, RealServerView, ServiceView},
    flows::{InterfaceKind, key_addrs},
    model::ipvs::VipConnections,
    sources::ipvs::IpvsService,
    state::{Shared, State, interface_of},
};

/// Traffic on pod interfaces per (destination, port, protocol, hook), and
/// per (client, destination, port, protocol) for what pods sent.
#[derive(Default)]
struct Seen {
    by_dst: HashMap<(IpAddr, u16, u8, u8), (u64, u64)>,
    sent: HashMap<(SocketAddr, SocketAddr, u8), (u64, u64)>,
}

impl Seen {
    fn gather(st: &State) -> Self {
        let mut seen = Seen::default();
        for (k, e) in st.table.iter() {
            let on_pod = interface_of(st, k.ifindex).is_some_and(|i| i.kind == InterfaceKind::Pod);
            if !on_pod {
                continue;
            }
            let (src, dst) = key_addrs(k);
            let c = e.counters();
            let add = |t: &mut (u64, u64)| {
                t.0 += c.packets;
                t.1 += c.bytes;
            };
            add(seen
                .by_dst
                .entry((dst, k.dst_port, k.protocol, k.hook))
                .or_default());
            // TC ingress of a pod interface: what the pod sent.
            if k.hook == Hook::Ingress as u8 {
                add(seen
                    .sent
                    .entry((
                        SocketAddr::new(src, k.src_port),
                        SocketAddr::new(dst, k.dst_port),
                        k.protocol,
                    ))
                    .or_default());
            }
        }
        seen
    }

    fn get(&self, ip: IpAddr, port: u16, protocol: u8, hook: Hook) -> (u64, u64) {
        self.by_dst
            .get(&(ip, port, protocol, hook as u8))
            .copied()
            .unwrap_or_default()
    }
}

pub async fn services(AxState(state): AxState<Shared>) -> Json<Vec<ServiceView>> {
    // IPVS's connection table, read on a blocking thread before the state
    // is taken (as for /v1/flows: a big table never holds up a poll).
    let any_ipvs = !state.read().await.model.ipvs().is_empty();
    let conns = if any_ipvs {
        tokio::task::spawn_blocking(|| VipConnections::read(true, false))
            .await
            .inspect_err(|e| tracing::debug!("reading IPVS's connections: {e}"))
            .ok()
    } else {
        None
    };
    let st = state.read().await;
    let seen = Seen::gather(&st);
    let ipvs_view = |vs: &IpvsService| ipvs_view(&st, &seen, conns.as_ref(), vs);
    let mut out: Vec<ServiceView> = st
        .model
        .services()
        .iter()
        .map(|sp| {
            let (mut vp, mut vb) = (0, 0);
            for vip in &sp.vips {
                let (p, b) = seen.get(*vip, sp.port, sp.protocol, Hook::Ingress);
                vp += p;
                vb += b;
            }
            ServiceView {
                namespace: sp.namespace.clone(),
                name: sp.name.clone(),
                port: sp.port_name.clone().unwrap_or_else(|| sp.port.to_string()),
                protocol: Protocol::from_number(sp.protocol),
                vips: sp
                    .vips
                    .iter()
                    .map(|v| SocketAddr::new(*v, sp.port).to_string())
                    .collect(),
                vip_packets: vp,
                vip_bytes: vb,
                backends: sp
                    .backends
                    .iter()
                    .map(|b| {
                        let (packets, bytes) = seen.get(b.ip, b.port, sp.protocol, Hook::Egress);
                        BackendView {
                            address: SocketAddr::new(b.ip, b.port).to_string(),
                            pod: b.pod.clone(),
                            node: b.node.clone(),
                            ready: b.ready,
                            packets,
                            bytes,
                        }
                    })
                    .collect(),
                ipvs: sp
                    .vips
                    .iter()
                    .filter_map(|v| st.model.ipvs_at(*v, sp.port, sp.protocol))
                    .map(ipvs_view)
                    .collect(),
            }
        })
        .collect();
    // IPVS virtual services without a Service object: listed, unnamed.
    for v in st.model.unnamed_ipvs() {
        let view = ipvs_view(v);
        out.push(ServiceView {
            namespace: String::new(),
            name: String::new(),
            port: v.address.map_or_else(
                || format!("fwmark {}", v.fwmark.unwrap_or(0)),
                |a| a.port().to_string(),
            ),
            protocol: Protocol::from_number(v.protocol),
            vips: v.address.iter().map(ToString::to_string).collect(),
            vip_packets: view.packets,
            vip_bytes: view.bytes,
            backends: v
                .destinations
                .iter()
                .map(|d| {
                    let (packets, bytes) =
                        seen.get(d.address.ip(), d.address.port(), v.protocol, Hook::Egress);
                    BackendView {
                        address: d.address.to_string(),
                        pod: None,
                        node: None,
                        ready: d.weight > 0,
                        packets,
                        bytes,
                    }
                })
                .collect(),
            ipvs: vec![view],
        });
    }
    Json(out)
}

/// A virtual service with its real servers, their pods and nodes, and the
/// traffic local pods sent to its VIP, split by the real server IPVS chose
/// for each connection.
fn ipvs_view(
    st: &State,
    seen: &Seen,
    conns: Option<&VipConnections>,
    vs: &IpvsService,
) -> IpvsView {
    let mut per_server: HashMap<SocketAddr, (u64, u64)> = HashMap::new();
    if let (Some(vip), Some(conns)) = (vs.address, conns) {
        for (client, server) in conns.ipvs_clients_of(vip, vs.protocol) {
            if let Some((p, b)) = seen.sent.get(&(client, vip, vs.protocol)) {
                let t = per_server.entry(server).or_default();
                t.0 += p;
                t.1 += b;
            }
        }
    }
    let (packets, bytes) = vs
        .address
        .map(|a| seen.get(a.ip(), a.port(), vs.protocol, Hook::Ingress))
        .unwrap_or_default();
    IpvsView {
        virtual_service: crate::model::ipvs::name(vs),
        scheduler: vs.scheduler.clone(),
        stats: vs.stats,
        packets,
        bytes,
        real_servers: vs
            .destinations
            .iter()
            .map(|d| {
                let who = st.model.endpoint(d.address.ip());
                let (packets, bytes) = per_server.get(&d.address).copied().unwrap_or_default();
                RealServerView {
                    address: d.address.to_string(),
                    forward: d.forward.clone(),
                    weight: d.weight,
                    active_connections: d.active_conns,
                    inactive_connections: d.inactive_conns,
                    stats: d.stats,
                    pod: who
                        .pod
                        .map(|p| format!("{}/{p}", who.namespace.unwrap_or_default())),
                    node: who.node,
                    packets,
                    bytes,
                }
            })
            .collect(),
    }
}
