//! The JSON API on a Unix socket (mode 0600: root only). Everything the CLI
//! shows comes from here.

use std::{collections::HashMap, path::Path};

use anyhow::{Context as _, Result};
use axum::{Json, Router, extract::State as AxState, routing::get};
use observer_common::{Encap, FlowKey, Hook, Stat};
use tokio::task::JoinHandle;

use crate::{
    api::{
        BackendView, Direction, EncapView, FlowView, InterfaceView, POLLED_AT, PodView, Protocol,
        ServiceView, StatusView, Via,
    },
    flows::{Interface, direction, table::FlowEntry, to_view},
    state::{Shared, interface_of},
};

/// Binds the socket (mode 0600 from the start; [`super::prepare`] has
/// removed a stale one) and serves until the returned task is aborted.
pub async fn serve(socket: &Path, state: Shared) -> Result<JoinHandle<()>> {
    let listener = super::socket::bind(socket)?;
    Ok(super::serve::spawn(listener, router(state), "API socket"))
}

/// Also serves the API on TCP (`--api-address`): no authentication, so
/// loopback unless `--api-allow-remote` (checked at start).
pub async fn serve_tcp(address: std::net::SocketAddr, state: Shared) -> Result<JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .with_context(|| format!("binding the API address {address}"))?;
    if !address.ip().is_loopback() {
        tracing::warn!(
            %address,
            "the JSON API listens beyond loopback (--api-allow-remote) and has no \
             authentication: whoever reaches {address} reads every flow"
        );
    }
    Ok(super::serve::spawn(listener, router(state), "API address"))
}

/// Every API route.
fn router(state: Shared) -> Router {
    Router::new()
        .route("/v1/flows", get(flows))
        .route("/v1/interfaces", get(interfaces))
        .route("/v1/status", get(status))
        .route("/v1/pods", get(pods))
        .route("/v1/services", get(services))
        .route("/v1/doctor", get(doctor))
        .route("/v1/ipam", get(super::calico_views::ipam))
        .route("/v1/routes", get(super::calico_views::routes))
        .route("/v1/node", get(super::calico_views::node))
        .with_state(state)
}

async fn doctor(AxState(state): AxState<Shared>) -> Json<Vec<crate::api::Check>> {
    Json(crate::doctor::run(&state).await)
}

async fn flows(
    AxState(state): AxState<Shared>,
) -> ([(&'static str, String); 1], Json<Vec<FlowView>>) {
    // A copy of what the views need, so that the state is free for the
    // next poll while the answer is built.
    let (rows, model, clock, interfaces, polled_at) = {
        let st = state.read().await;
        let rows: Vec<(FlowKey, FlowEntry)> =
            st.table.iter().map(|(k, e)| (*k, e.clone())).collect();
        let interfaces: HashMap<u32, Interface> = st
            .interfaces
            .iter()
            .map(|(i, s)| (*i, s.iface.clone()))
            .collect();
        let polled_at = st.status.last_poll_at_ms;
        (rows, st.model.clone(), st.clock, interfaces, polled_at)
    };
    // Flows to Service VIPs are named by their endpoint through conntrack,
    // dumped on a blocking thread: a big table never holds up a poll.
    let to_vip = rows.iter().any(|(k, _)| {
        let (_, dst) = crate::flows::key_addrs(k);
        model
            .service_of(dst, k.dst_port, k.protocol)
            .is_some_and(|r| r.via == Via::Vip)
    });
    let nat = if to_vip {
        tokio::task::spawn_blocking(crate::sources::conntrack::dnat_table)
            .await
            .map_err(anyhow::Error::from)
            .and_then(|r| r)
            .inspect_err(|e| tracing::debug!("conntrack: {e:#}"))
            .ok()
    } else {
        None
    };
    let mut out: Vec<FlowView> = rows
        .iter()
        .map(|(k, e)| {
            to_view(
                k,
                e,
                interfaces.get(&k.ifindex),
                &clock,
                Some(&model),
                nat.as_ref(),
            )
        })
        .collect();
    out.sort_by(|a, b| {
        b.bytes
            .cmp(&a.bytes)
            .then_with(|| a.interface.cmp(&b.interface))
    });
    ([(POLLED_AT, polled_at.to_string())], Json(out))
}

async fn pods(AxState(state): AxState<Shared>) -> Json<Vec<PodView>> {
    let st = state.read().await;
    let local = st.model.local_node().map(str::to_owned);
    let mut out = Vec::new();
    for p in st.model.pods() {
        let iface = st
            .interfaces
            .values()
            .find(|i| i.iface.name == p.interface && !i.gone);
        // This node's pods: by name when we know ours, else by interface.
        let here = match &local {
            Some(n) => p.node.as_deref() == Some(n.as_str()),
            None => iface.is_some(),
        };
        if !here {
            continue;
        }
        let t = iface.map(|i| i.totals).unwrap_or_default();
        // On pod interfaces TC ingress carries what the pod sends.
        let (sent, got) = (
            t.hook[Hook::Ingress as usize],
            t.hook[Hook::Egress as usize],
        );
        out.push(PodView {
            namespace: p.namespace.clone(),
            name: p.name.clone(),
            workload: p.workload.as_ref().map(|w| w.1.clone()),
            workload_kind: p.workload.as_ref().map(|w| w.0.clone()),
            node: p.node.clone(),
            networks: p
                .ips
                .iter()
                .map(|ip| format!("{ip}/{}", if ip.is_ipv4() { 32 } else { 128 }))
                .collect(),
            interface: p.interface.clone(),
            attached: iface.is_some_and(|i| i.via.is_some()),
            ingress_packets: got.packets,
            ingress_bytes: got.bytes,
            egress_packets: sent.packets,
            egress_bytes: sent.bytes,
        });
    }
    out.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    Json(out)
}

fn socket_addr(ip: std::net::IpAddr, port: u16) -> String {
    std::net::SocketAddr::new(ip, port).to_string()
}

async fn services(AxState(state): AxState<Shared>) -> Json<Vec<ServiceView>> {
    use std::collections::HashMap;
    let st = state.read().await;
    // Traffic per (destination, port, protocol, hook) on pod interfaces:
    // TC ingress there is what local pods sent, TC egress what they got.
    let mut seen: HashMap<(std::net::IpAddr, u16, u8, u8), (u64, u64)> = HashMap::new();
    for (k, e) in st.table.iter() {
        let on_pod = interface_of(&st, k.ifindex)
            .is_some_and(|i| i.kind == crate::flows::InterfaceKind::Pod);
        if !on_pod {
            continue;
        }
        let (_, dst) = crate::flows::key_addrs(k);
        let c = e.counters();
        let t = seen
            .entry((dst, k.dst_port, k.protocol, k.hook))
            .or_default();
        t.0 += c.packets;
        t.1 += c.bytes;
    }
    let get = |ip, port, proto, hook: Hook| {
        seen.get(&(ip, port, proto, hook as u8))
            .copied()
            .unwrap_or_default()
    };
    let mut out: Vec<ServiceView> = st
        .model
        .services()
        .iter()
        .map(|sp| {
            let (mut vp, mut vb) = (0, 0);
            for vip in &sp.vips {
                let (p, b) = get(*vip, sp.port, sp.protocol, Hook::Ingress);
                vp += p;
                vb += b;
            }
            ServiceView {
                namespace: sp.namespace.clone(),
                name: sp.name.clone(),
                port: sp.port_name.clone().unwrap_or_else(|| sp.port.to_string()),
                protocol: Protocol::from_number(sp.protocol),
                vips: sp.vips.iter().map(|v| socket_addr(*v, sp.port)).collect(),
                vip_packets: vp,
                vip_bytes: vb,
                backends: sp
                    .backends
                    .iter()
                    .map(|b| {
                        let (packets, bytes) = get(b.ip, b.port, sp.protocol, Hook::Egress);
                        BackendView {
                            address: socket_addr(b.ip, b.port),
                            pod: b.pod.clone(),
                            node: b.node.clone(),
                            ready: b.ready,
                            packets,
                            bytes,
                        }
                    })
                    .collect(),
            }
        })
        .collect();
    // IPVS virtual services without a Service object: listed, unnamed.
    for v in st.model.unnamed_ipvs() {
        out.push(ServiceView {
            namespace: String::new(),
            name: String::new(),
            port: v.address.map_or_else(
                || format!("fwmark {}", v.fwmark.unwrap_or(0)),
                |a| a.port().to_string(),
            ),
            protocol: Protocol::from_number(v.protocol),
            vips: v.address.iter().map(ToString::to_string).collect(),
            vip_packets: 0,
            vip_bytes: 0,
            backends: v
                .destinations
                .iter()
                .map(|d| {
                    let (packets, bytes) =
                        get(d.address.ip(), d.address.port(), v.protocol, Hook::Egress);
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
        });
    }
    Json(out)
}

async fn interfaces(AxState(state): AxState<Shared>) -> Json<Vec<InterfaceView>> {
    let st = state.read().await;
    Json(
        st.interfaces
            .iter()
            .map(|(ifindex, s)| {
                let mut v = InterfaceView {
                    name: s.iface.name.clone(),
                    ifindex: *ifindex,
                    kind: s.iface.kind.label(),
                    layer: format!("{:?}", s.layer).to_lowercase(),
                    attached_via: s.via.map(|v| format!("{v:?}").to_lowercase()),
                    attach_error: s.attach_error.clone(),
                    gone: s.gone,
                    ingress_packets: 0,
                    ingress_bytes: 0,
                    egress_packets: 0,
                    egress_bytes: 0,
                    non_ip_packets: s.totals.non_ip_packets,
                    overflow_packets: s.totals.overflow.iter().map(|t| t.packets).sum(),
                    mtu: s.mtu,
                };
                for hook in [Hook::Ingress, Hook::Egress] {
                    let t = s.totals.hook[hook as usize];
                    if direction(s.iface.kind, hook) == Direction::Ingress {
                        (v.ingress_packets, v.ingress_bytes) = (t.packets, t.bytes);
                    } else {
                        (v.egress_packets, v.egress_bytes) = (t.packets, t.bytes);
                    }
                }
                v
            })
            .collect(),
    )
}

async fn status(AxState(state): AxState<Shared>) -> Json<StatusView> {
    let st = state.read().await;
    let s = &st.status;
    let encap = [Encap::Ipip, Encap::Vxlan, Encap::Wireguard]
        .into_iter()
        .map(|e| {
            let t = s.encap[e as usize];
            (
                e.name().to_owned(),
                EncapView {
                    packets: t.packets,
                    bytes: t.bytes,
                    overhead_bytes: t.overhead_bytes,
                },
            )
        })
        .collect();
    Json(StatusView {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        uptime_seconds: st.started.elapsed().map(|d| d.as_secs()).unwrap_or(0),
        attached_interfaces: st.interfaces.values().filter(|i| i.via.is_some()).count(),
        polls: s.polls,
        last_poll_ms: s.last_poll_ms,
        kernel_flow_entries: s.kernel_flow_entries,
        flow_capacity: s.flow_capacity,
        flows_tracked: st.table.len(),
        datapath: Stat::ALL
            .iter()
            .map(|x| (x.name().to_owned(), s.stats[*x as usize]))
            .collect(),
        lru_evictions: st.table.lru_evictions,
        overflow_packets: st
            .interfaces
            .values()
            .flat_map(|i| i.totals.overflow)
            .map(|t| t.packets)
            .sum(),
        encap,
    })
}
