//! The JSON API on a Unix socket (mode 0600: root only). Everything the CLI
//! shows comes from here.

use std::{collections::HashMap, path::Path};

use anyhow::{Context as _, Result};
use axum::{Json, Router, extract::State as AxState, routing::get};
use observer_common::{Encap, FlowKey, Hook, Stat};
use tokio::task::JoinHandle;

use crate::{
    api::{Direction, EncapView, FlowView, InterfaceView, POLLED_AT, PodView, StatusView, Via},
    flows::{Interface, direction, table::FlowEntry, to_view},
    model::ipvs::VipConnections,
    state::Shared,
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
        .route("/v1/services", get(super::services::services))
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
    // Flows to VIPs are named by their backend: IPVS's connection table for
    // IPVS VIPs, conntrack's DNAT for the others; read only when needed, on
    // a blocking thread with the state released: a big table never holds up
    // a poll.
    let (to_ipvs, to_other) = vip_kinds(&rows, &model);
    let nat = if to_ipvs || to_other {
        tokio::task::spawn_blocking(move || VipConnections::read(to_ipvs, to_other))
            .await
            .inspect_err(|e| tracing::debug!("reading the VIP connections: {e}"))
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

/// Whether any flow goes to an IPVS VIP (its backend is in IPVS's
/// connection table), and whether any goes to another Service's VIP (in
/// conntrack's DNAT).
fn vip_kinds(rows: &[(FlowKey, FlowEntry)], model: &crate::model::Model) -> (bool, bool) {
    let (mut to_ipvs, mut to_other) = (false, false);
    for (k, _) in rows {
        let (_, dst) = crate::flows::key_addrs(k);
        if model.ipvs_at(dst, k.dst_port, k.protocol).is_some() {
            to_ipvs = true;
        } else if !to_other {
            to_other = model
                .service_of(dst, k.dst_port, k.protocol)
                .is_some_and(|r| r.via == Via::Vip);
        }
        if to_ipvs && to_other {
            break;
        }
    }
    (to_ipvs, to_other)
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

async fn interfaces(AxState(state): AxState<Shared>) -> Json<Vec<InterfaceView>> {
    let st = state.read().await;
    Json(
        st.interfaces
            .iter()
            .map(|(ifindex, s)| {
                let mut v = InterfaceView {
                    name: s.iface.name.clone(),
                    ifindex: *ifindex,
                    kind: s.iface.kind,
                    layer: s.layer,
                    attached_via: s.via,
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
        evicted_flows_listed: st.table.ended(),
        datapath: Stat::ALL
            .iter()
            .map(|x| (x.name().to_owned(), s.stats[*x as usize]))
            .collect(),
        lru_evictions: st.table.lru_evictions,
        flows_forgotten_over_limit: st.table.forgotten_over_limit,
        overflow_packets: st
            .interfaces
            .values()
            .flat_map(|i| i.totals.overflow)
            .map(|t| t.packets)
            .sum(),
        encap,
    })
}
