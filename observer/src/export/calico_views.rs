//! The control-plane views of the API: `/v1/ipam` (pools and blocks, like
//! `calicoctl ipam show --show-blocks`), `/v1/routes` (per remote node its
//! blocks, next hops, devices, route protocols, expected encapsulation and
//! the traffic this node exchanged with it) and `/v1/node` (like
//! `calicoctl node status`: BGP peers, plus this node's blocks, tunnel
//! devices and their MTUs, and its CNI configuration).

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use axum::{Json, extract::State as AxState};
use ipnet::IpNet;
use observer_common::{Encap, Hook};

use crate::{
    api::{
        BlockRouteView, CniDir, DeviceView, IpamBlockView, IpamPoolView, IpamView, NodeView,
        PeerRoutesView, RoutesView,
    },
    flows::{InterfaceKind, key_addrs},
    model::Model,
    state::{Shared, State, interface_of},
};

/// `/v1/ipam`.
pub async fn ipam(AxState(state): AxState<Shared>) -> Json<IpamView> {
    let st = state.read().await;
    Json(ipam_view(&st.model))
}

pub fn ipam_view(m: &Model) -> IpamView {
    let c = m.calico();
    let routes = m.routes();
    let mut blocks: BTreeMap<IpNet, IpamBlockView> = BTreeMap::new();
    let local_node = m.local_node();
    for b in &c.blocks {
        let mut sources = Vec::new();
        if b.in_use.is_some() {
            sources.push("ipamblock".to_owned());
        }
        if b.affinity_state.is_some() {
            sources.push("affinity".to_owned());
        }
        blocks.insert(
            b.cidr,
            IpamBlockView {
                cidr: b.cidr.to_string(),
                pool: b.pool.clone(),
                node: b.node.clone(),
                local: local_node.is_some() && b.node.as_deref() == local_node,
                affinity_state: b.affinity_state.clone(),
                capacity: b.capacity,
                in_use: b.in_use,
                free: b.free,
                in_use_from: b.in_use.map(|_| "ipamblock".to_owned()),
                sources,
                special: b
                    .special
                    .iter()
                    .map(|a| format!("{} {}", a.ip, a.kind))
                    .collect(),
            },
        );
    }
    // Blocks the routes show: ours (blackhole) and other nodes'.
    let routed = routes
        .local_blocks
        .keys()
        .map(|b| (*b, true))
        .chain(routes.remote_blocks.keys().map(|b| (*b, false)));
    for (net, local) in routed {
        let e = blocks.entry(net).or_insert_with(|| {
            let capacity = 1u64
                .checked_shl(u32::from(net.max_prefix_len() - net.prefix_len()))
                .unwrap_or(u64::MAX);
            IpamBlockView {
                cidr: net.to_string(),
                pool: c.pool_of(net.addr()).map(|p| p.name.clone()),
                node: if local {
                    local_node.map(str::to_owned)
                } else {
                    m.node_of(net.addr())
                },
                local,
                affinity_state: None,
                capacity,
                in_use: None,
                free: None,
                in_use_from: None,
                sources: Vec::new(),
                special: Vec::new(),
            }
        });
        e.local |= local;
        e.sources.push("route".into());
        if local && e.in_use.is_none() {
            let n = routes
                .local_endpoints
                .keys()
                .filter(|ip| net.contains(*ip))
                .count() as u64;
            e.in_use = Some(n);
            e.free = Some(e.capacity.saturating_sub(n));
            e.in_use_from = Some("routes".into());
        }
    }
    let blocks: Vec<IpamBlockView> = blocks.into_values().collect();
    let pools = c
        .pools
        .iter()
        .map(|p| {
            let mine: Vec<&IpamBlockView> = blocks
                .iter()
                .filter(|b| b.pool.as_deref() == Some(p.name.as_str()))
                .collect();
            let host_bits = u32::from(p.cidr.max_prefix_len() - p.cidr.prefix_len());
            let total = 1u128.checked_shl(host_bits).unwrap_or(u128::MAX);
            let in_use: u64 = mine.iter().filter_map(|b| b.in_use).sum();
            IpamPoolView {
                name: p.name.clone(),
                cidr: p.cidr.to_string(),
                block_size: p.block_size,
                ipip_mode: p.ipip_mode.name().into(),
                vxlan_mode: p.vxlan_mode.name().into(),
                nat_outgoing: p.nat_outgoing,
                disabled: p.disabled,
                disable_bgp_export: p.disable_bgp_export,
                node_selector: p.node_selector.clone(),
                blocks: mine.len(),
                ips_total: total,
                ips_in_use: in_use,
                ips_free: total.saturating_sub(u128::from(in_use)),
            }
        })
        .collect();
    IpamView { pools, blocks }
}

/// `/v1/routes`.
pub async fn routes(AxState(state): AxState<Shared>) -> Json<RoutesView> {
    let st = state.read().await;
    Json(routes_view(&st))
}

/// A device's name: the attached interface's, else the kernel's.
fn device_name(st: &State, ifindex: u32) -> Option<String> {
    if ifindex == 0 {
        return None;
    }
    interface_of(st, ifindex)
        .map(|i| i.name.clone())
        .or_else(|| if_name(ifindex))
}

fn if_name(ifindex: u32) -> Option<String> {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: the buffer is IF_NAMESIZE bytes, as if_indextoname needs.
    let p = unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr()) };
    if p.is_null() {
        return None;
    }
    // SAFETY: on success the buffer holds a NUL-terminated name.
    let name = unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) };
    Some(name.to_string_lossy().into_owned())
}

/// The encapsulation a device does, from its kind or Calico's names.
fn device_encap(st: &State, ifindex: u32, name: &str) -> Encap {
    if let Some(InterfaceKind::Tunnel(e)) = interface_of(st, ifindex).map(|i| i.kind) {
        return e;
    }
    Encap::from_device(name).unwrap_or(Encap::None)
}

pub fn routes_view(st: &State) -> RoutesView {
    let m = &st.model;
    let c = m.calico();
    let local = m.local_node();
    let mut peers: BTreeMap<Option<String>, PeerRoutesView> = BTreeMap::new();
    let empty = |node: Option<String>| PeerRoutesView {
        addresses: node
            .as_ref()
            .and_then(|n| c.node_addresses.get(n))
            .into_iter()
            .flatten()
            .map(|a| a.addr().to_string())
            .collect(),
        node,
        routes: Vec::new(),
        tx_packets: 0,
        tx_bytes: 0,
        rx_packets: 0,
        rx_bytes: 0,
        flows: 0,
    };
    let mut routed = BTreeSet::new();
    for r in m.routes().remote_blocks.values() {
        let node = m.node_of(r.block.addr());
        if node.is_some() && node.as_deref() == local {
            // A route to one of our own blocks is not a peer's.
            continue;
        }
        routed.insert(r.block);
        let device = device_name(st, r.ifindex);
        let device_encap = device.as_deref().map(|d| device_encap(st, r.ifindex, d));
        peers
            .entry(node.clone())
            .or_insert_with(|| empty(node.clone()))
            .routes
            .push(BlockRouteView {
                block: r.block.to_string(),
                pool: c.pool_of(r.block.addr()).map(|p| p.name.clone()),
                next_hop: r.next_hop.map(|h| h.to_string()),
                device,
                device_encap,
                protocol: Some(r.protocol.clone()),
                expected_encap: m.expected_encap_to(r.block.addr()),
            });
    }
    // Blocks other nodes have, with no route here.
    for b in &c.blocks {
        let Some(node) = b.node.clone() else { continue };
        if Some(node.as_str()) == local || routed.contains(&b.cidr) {
            continue;
        }
        peers
            .entry(Some(node.clone()))
            .or_insert_with(|| empty(Some(node.clone())))
            .routes
            .push(BlockRouteView {
                block: b.cidr.to_string(),
                pool: b.pool.clone(),
                next_hop: None,
                device: None,
                device_encap: None,
                protocol: None,
                expected_encap: m.expected_encap_to(b.cidr.addr()),
            });
    }
    // Traffic per peer node.
    let tunnels: BTreeSet<Encap> = st
        .interfaces
        .values()
        .filter(|i| !i.gone)
        .filter_map(|i| match i.iface.kind {
            InterfaceKind::Tunnel(e) => Some(e),
            _ => None,
        })
        .collect();
    for (k, e) in st.table.iter() {
        let Some(iface) = interface_of(st, k.ifindex) else {
            continue;
        };
        let (src, dst) = key_addrs(k);
        let egress = k.hook == Hook::Egress as u8;
        let encap = Encap::from_u8(k.encap).unwrap_or(Encap::None);
        let peer = match iface.kind {
            InterfaceKind::Pod => continue,
            InterfaceKind::Tunnel(_) => m.peer_node(src, dst),
            // Counted on the tunnel device when we see it there.
            InterfaceKind::Underlay if encap != Encap::None && tunnels.contains(&encap) => {
                continue;
            }
            InterfaceKind::Underlay if encap != Encap::None => m.peer_node(src, dst),
            // Bare (BGP-routed) pod traffic: the far end's block's node.
            InterfaceKind::Underlay => {
                let far = if egress { dst } else { src };
                if !in_pod_network(m, far) || m.is_local(far) {
                    continue;
                }
                m.node_of(far)
            }
        };
        let Some(peer) = peer else { continue };
        let c = e.counters();
        let p = peers
            .entry(Some(peer.clone()))
            .or_insert_with(|| empty(Some(peer.clone())));
        p.flows += 1;
        if egress {
            p.tx_packets += c.packets;
            p.tx_bytes += c.bytes;
        } else {
            p.rx_packets += c.packets;
            p.rx_bytes += c.bytes;
        }
    }
    let mut peers: Vec<PeerRoutesView> = peers.into_values().collect();
    for p in &mut peers {
        p.routes.sort_by(|a, b| a.block.cmp(&b.block));
    }
    // Known nodes first, by name; the unknown last.
    peers.sort_by(|a, b| (a.node.is_none(), &a.node).cmp(&(b.node.is_none(), &b.node)));
    RoutesView {
        node: local.map(str::to_owned),
        peers,
    }
}

fn in_pod_network(m: &Model, ip: IpAddr) -> bool {
    m.routes().remote_block_of(ip).is_some()
        || m.calico().block_of(ip).is_some()
        || m.calico().pool_of(ip).is_some()
}

/// `/v1/node`.
pub async fn node(AxState(state): AxState<Shared>) -> Json<NodeView> {
    let st = state.read().await;
    Json(node_view(&st))
}

/// Calico's tunnel devices, by name.
const TUNNELS: [&str; 5] = [
    "tunl0",
    "vxlan.calico",
    "vxlan-v6.calico",
    "wireguard.cali",
    "wg-v6.cali",
];

pub fn node_view(st: &State) -> NodeView {
    let m = &st.model;
    let c = m.calico();
    let mut devices: BTreeMap<String, DeviceView> = BTreeMap::new();
    for s in st.interfaces.values().filter(|s| !s.gone) {
        if matches!(s.iface.kind, InterfaceKind::Pod) {
            continue;
        }
        devices.insert(
            s.iface.name.clone(),
            DeviceView {
                name: s.iface.name.clone(),
                kind: s.iface.kind,
                mtu: interface_mtu(&s.iface.name),
                attached: s.via.is_some(),
            },
        );
    }
    for name in TUNNELS {
        if devices.contains_key(name) {
            continue;
        }
        let Some(encap) = Encap::from_device(name) else {
            continue;
        };
        if let Some(mtu) = interface_mtu(name) {
            devices.insert(
                name.to_owned(),
                DeviceView {
                    name: name.to_owned(),
                    kind: InterfaceKind::Tunnel(encap),
                    mtu: Some(mtu),
                    attached: false,
                },
            );
        }
    }
    let mut devices: Vec<DeviceView> = devices.into_values().collect();
    // Tunnels first.
    let underlay = |d: &DeviceView| d.kind == InterfaceKind::Underlay;
    devices.sort_by(|a, b| (underlay(a), &a.name).cmp(&(underlay(b), &b.name)));
    NodeView {
        node: m.local_node().map(str::to_owned),
        bgp: c.bgp.clone(),
        blocks: ipam_view(m)
            .blocks
            .into_iter()
            .filter(|b| b.local)
            .collect(),
        devices,
        cni_mtu: c.cni.as_ref().and_then(CniDir::mtu),
        cni: c.cni.clone(),
        local_subnets: c.local_subnets.iter().map(ToString::to_string).collect(),
    }
}

/// An interface's MTU (SIOCGIFMTU: the daemon's network namespace);
/// `None` if there is no such interface.
pub fn interface_mtu(name: &str) -> Option<u32> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        return None;
    }
    // SAFETY: a plain socket for the ioctl, closed below; `ifreq` is
    // zeroed and gets a NUL-terminated name shorter than IFNAMSIZ.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return None;
        }
        let mut req: libc::ifreq = std::mem::zeroed();
        for (d, s) in req.ifr_name.iter_mut().zip(name.bytes()) {
            *d = s as libc::c_char;
        }
        let rc = libc::ioctl(fd, libc::SIOCGIFMTU, &mut req);
        libc::close(fd);
        (rc == 0).then_some(req.ifr_ifru.ifru_mtu as u32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_has_an_mtu() {
        assert_eq!(interface_mtu("lo"), Some(65536));
        assert_eq!(interface_mtu("no-such-dev0"), None);
    }
}
