//! Calico's control plane as the model knows it: IP pools, blocks and
//! their nodes (from IPAMBlocks and BlockAffinities), this node's BGP
//! peers (BIRD) and CNI configuration, and the encapsulation a flow should
//! have between nodes.
//!
//! For others (doctor, metrics): everything is on [`super::Model::calico`]
//! ([`CalicoView`]): `pools`, `blocks`, `bgp` (one [`BirdStatus`] per
//! family), `cni` (the CNI directory), `local_subnets`; and
//! [`super::Model::expected_encap`] for any pair of addresses.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::{
    api::{BirdStatus, CniDir, Encap},
    sources::{
        calico::{Allocation, EncapMode},
        objects::ClusterObjects,
    },
};

/// An IP pool, decoded.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolInfo {
    pub name: String,
    pub cidr: IpNet,
    pub block_size: u8,
    pub ipip_mode: EncapMode,
    pub vxlan_mode: EncapMode,
    pub nat_outgoing: bool,
    pub disabled: bool,
    pub disable_bgp_export: bool,
    /// `all()` when absent, as Calico reads it.
    pub node_selector: String,
}

impl PoolInfo {
    /// The encapsulation between nodes and its mode: VXLAN if its mode is
    /// not Never, else IPIP; `None` when both are Never.
    pub fn encap(&self) -> Option<(Encap, EncapMode)> {
        if self.vxlan_mode != EncapMode::Never {
            Some((Encap::Vxlan, self.vxlan_mode))
        } else if self.ipip_mode != EncapMode::Never {
            Some((Encap::Ipip, self.ipip_mode))
        } else {
            None
        }
    }
}

/// A block: from its IPAMBlock (with counts) and/or its BlockAffinity.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockInfo {
    pub cidr: IpNet,
    /// The node it is affine to: a confirmed, not deleted BlockAffinity,
    /// else the IPAMBlock's `host:<node>`.
    pub node: Option<String>,
    /// The BlockAffinity's state (`confirmed`, `pending`,
    /// `pendingDeletion`), if there is one.
    pub affinity_state: Option<String>,
    pub pool: Option<String>,
    pub capacity: u64,
    /// From the IPAMBlock; absent without one.
    pub in_use: Option<u64>,
    pub free: Option<u64>,
    /// Tunnel addresses and other non-pod allocations of the block.
    pub special: Vec<Allocation>,
}

/// The control plane view: see the module doc.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CalicoView {
    pub pools: Vec<PoolInfo>,
    /// Sorted by CIDR.
    pub blocks: Vec<BlockInfo>,
    /// Each node's underlay addresses, with their prefix where Calico's
    /// `projectcalico.org/IPv4Address`/`IPv6Address` annotation gives it
    /// (else a host prefix): the InternalIP/ExternalIP addresses.
    pub node_addresses: BTreeMap<String, Vec<IpNet>>,
    /// This node's BGP daemons (IPv4, IPv6), as last read.
    pub bgp: Vec<BirdStatus>,
    /// This node's CNI directory, as last read.
    pub cni: Option<CniDir>,
    /// The subnets this node's underlay addresses are in, for CrossSubnet.
    pub local_subnets: Vec<IpNet>,
}

fn host_net(ip: IpAddr) -> IpNet {
    IpNet::from(ip)
}

impl CalicoView {
    pub fn build(objects: &ClusterObjects) -> Self {
        let mut v = CalicoView::default();
        for p in &objects.ip_pools {
            let Ok(cidr) = p.cidr() else {
                tracing::debug!("skipping IPPool {} with a bad cidr", p.name());
                continue;
            };
            v.pools.push(PoolInfo {
                name: p.name().to_owned(),
                cidr,
                block_size: p.block_size(),
                ipip_mode: p.ipip_mode(),
                vxlan_mode: p.vxlan_mode(),
                nat_outgoing: p.nat_outgoing(),
                disabled: p.spec.disabled,
                disable_bgp_export: p.spec.disable_bgp_export,
                node_selector: p
                    .spec
                    .node_selector
                    .clone()
                    .filter(|s| !s.is_empty())
                    .unwrap_or_else(|| "all()".into()),
            });
        }
        v.pools.sort_by_key(|p| p.cidr);
        let mut blocks: BTreeMap<IpNet, BlockInfo> = BTreeMap::new();
        let empty = |cidr: IpNet| BlockInfo {
            cidr,
            node: None,
            affinity_state: None,
            pool: None,
            capacity: 1u64
                .checked_shl(u32::from(cidr.max_prefix_len() - cidr.prefix_len()))
                .unwrap_or(u64::MAX),
            in_use: None,
            free: None,
            special: Vec::new(),
        };
        for b in objects.ipam_blocks.iter().filter(|b| !b.spec.deleted) {
            let Some(cidr) = b.cidr() else { continue };
            let e = blocks.entry(cidr).or_insert_with(|| empty(cidr));
            e.node = b.node().map(str::to_owned);
            e.capacity = b.capacity();
            e.in_use = Some(b.in_use());
            e.free = Some(b.free());
            e.special = b
                .allocated()
                .into_iter()
                .filter(|a| a.pod.is_none())
                .collect();
        }
        for a in &objects.block_affinities {
            let Some(cidr) = a.cidr() else { continue };
            // A deleted affinity of a block that has no IPAMBlock is gone.
            if !a.is_active() && !blocks.contains_key(&cidr) {
                continue;
            }
            let e = blocks.entry(cidr).or_insert_with(|| empty(cidr));
            e.affinity_state = Some(if a.spec.deleted {
                format!("{} (deleted)", a.spec.state)
            } else {
                a.spec.state.clone()
            });
            if a.is_active() {
                e.node = Some(a.spec.node.clone());
            }
        }
        for b in blocks.values_mut() {
            b.pool = v
                .pools
                .iter()
                .filter(|p| p.cidr.contains(&b.cidr))
                .max_by_key(|p| p.cidr.prefix_len())
                .map(|p| p.name.clone());
        }
        v.blocks = blocks.into_values().collect();
        for node in &objects.nodes {
            let name = node.metadata.name.clone().unwrap_or_default();
            let mut nets: Vec<IpNet> = Vec::new();
            for key in [
                "projectcalico.org/IPv4Address",
                "projectcalico.org/IPv6Address",
            ] {
                if let Some(n) = node
                    .metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(key))
                    .and_then(|s| s.parse::<IpNet>().ok())
                {
                    nets.push(n);
                }
            }
            for a in node
                .status
                .iter()
                .flat_map(|s| s.addresses.iter().flatten())
                .filter(|a| a.type_ == "InternalIP" || a.type_ == "ExternalIP")
            {
                if let Ok(ip) = a.address.parse::<IpAddr>()
                    && !nets.iter().any(|n| n.addr() == ip)
                {
                    nets.push(host_net(ip));
                }
            }
            v.node_addresses.insert(name, nets);
        }
        v
    }

    /// The pool holding `ip` (longest prefix).
    pub fn pool_of(&self, ip: IpAddr) -> Option<&PoolInfo> {
        self.pools
            .iter()
            .filter(|p| p.cidr.contains(&ip))
            .max_by_key(|p| p.cidr.prefix_len())
    }

    /// The block holding `ip` (longest prefix).
    pub fn block_of(&self, ip: IpAddr) -> Option<&BlockInfo> {
        self.blocks
            .iter()
            .filter(|b| b.cidr.contains(&ip))
            .max_by_key(|b| b.cidr.prefix_len())
    }

    /// The node `ip`'s block is affine to.
    pub fn block_node(&self, ip: IpAddr) -> Option<&str> {
        self.block_of(ip)?.node.as_deref()
    }

    /// The blocks affine to `node`.
    pub fn blocks_of_node<'a>(&'a self, node: &'a str) -> impl Iterator<Item = &'a BlockInfo> {
        self.blocks
            .iter()
            .filter(move |b| b.node.as_deref() == Some(node))
    }

    /// This node's subnets, for CrossSubnet: the prefixes of its Calico
    /// address annotations; else, of `interfaces` (name, address/prefix,
    /// as the kernel has them), those holding one of its Node addresses;
    /// else every interface address that is not loopback, link-local, a
    /// pod interface or a tunnel.
    pub fn pick_local_subnets(
        &self,
        local_node: Option<&str>,
        interfaces: &[(String, IpNet)],
    ) -> Vec<IpNet> {
        let mine = local_node.and_then(|n| self.node_addresses.get(n));
        let annotated: Vec<IpNet> = mine
            .into_iter()
            .flatten()
            .filter(|n| n.prefix_len() < n.max_prefix_len())
            .map(IpNet::trunc)
            .collect();
        if !annotated.is_empty() {
            return annotated;
        }
        let holding: Vec<IpNet> = interfaces
            .iter()
            .filter(|(_, net)| mine.into_iter().flatten().any(|m| m.addr() == net.addr()))
            .map(|(_, net)| net.trunc())
            .collect();
        if !holding.is_empty() {
            return holding;
        }
        let mut out: Vec<IpNet> = interfaces
            .iter()
            .filter(|(name, net)| {
                let ip = net.addr();
                !(ip.is_loopback()
                    || is_link_local(ip)
                    || name.starts_with("cali")
                    || name.starts_with("tunl")
                    || name.starts_with("vxlan")
                    || name.starts_with("wireguard")
                    || name.starts_with("kube-ipvs"))
            })
            .map(|(_, net)| net.trunc())
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// Whether `peer`'s underlay address of `family` is in one of this
    /// node's subnets; `None` if either side is not known.
    pub fn same_subnet(&self, peer: &str, ipv6: bool) -> Option<bool> {
        let addrs: Vec<IpAddr> = self
            .node_addresses
            .get(peer)?
            .iter()
            .map(IpNet::addr)
            .filter(|a| a.is_ipv6() == ipv6)
            .collect();
        let subnets: Vec<&IpNet> = self
            .local_subnets
            .iter()
            .filter(|n| n.addr().is_ipv6() == ipv6)
            .collect();
        if addrs.is_empty() || subnets.is_empty() {
            return None;
        }
        Some(addrs.iter().any(|a| subnets.iter().any(|n| n.contains(a))))
    }
}

/// fe80::/10 or 169.254.0.0/16.
pub fn is_link_local(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => a.is_link_local(),
        IpAddr::V6(a) => (a.segments()[0] & 0xffc0) == 0xfe80,
    }
}

/// This host's interface addresses with their prefixes (getifaddrs: the
/// network namespace the daemon runs in).
pub fn interface_networks() -> Vec<(String, IpNet)> {
    let mut out = Vec::new();
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list we free below; every
    // pointer is checked for null before it is read.
    unsafe {
        if libc::getifaddrs(&mut head) != 0 {
            return out;
        }
        let mut cur = head;
        while !cur.is_null() {
            let ifa = &*cur;
            cur = ifa.ifa_next;
            if ifa.ifa_addr.is_null() || ifa.ifa_netmask.is_null() {
                continue;
            }
            let name = std::ffi::CStr::from_ptr(ifa.ifa_name)
                .to_string_lossy()
                .into_owned();
            let (addr, mask) = match i32::from((*ifa.ifa_addr).sa_family) {
                libc::AF_INET => {
                    let a = &*(ifa.ifa_addr as *const libc::sockaddr_in);
                    let m = &*(ifa.ifa_netmask as *const libc::sockaddr_in);
                    (
                        IpAddr::V4(Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr))),
                        u32::from_be(m.sin_addr.s_addr).count_ones() as u8,
                    )
                }
                libc::AF_INET6 => {
                    let a = &*(ifa.ifa_addr as *const libc::sockaddr_in6);
                    let m = &*(ifa.ifa_netmask as *const libc::sockaddr_in6);
                    (
                        IpAddr::V6(Ipv6Addr::from(a.sin6_addr.s6_addr)),
                        u128::from_be_bytes(m.sin6_addr.s6_addr).count_ones() as u8,
                    )
                }
                _ => continue,
            };
            if let Ok(net) = IpNet::new(addr, mask) {
                out.push((name, net));
            }
        }
        libc::freeifaddrs(head);
    }
    out
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde_json::json;

    use super::*;
    use crate::{
        model::Model,
        sources::routes::{BlockRoute, RouteTable},
    };

    /// Three nodes: node1 (us) and node2 in 172.30.0.0/24, node3 in
    /// 172.31.0.0/24; a pool per mode; blocks by affinity only (no
    /// routes), except one block routed to node2 that an affinity says is
    /// node3's.
    fn objects(vxlan_mode: &str, annotate: bool) -> ClusterObjects {
        let mut o = ClusterObjects::default();
        let node = |name: &str, ip: &str, prefix: u8| {
            let mut n = json!({"kind": "Node", "metadata": {"name": name},
                "status": {"addresses": [{"type": "InternalIP", "address": ip}]}});
            if annotate {
                n["metadata"]["annotations"] =
                    json!({"projectcalico.org/IPv4Address": format!("{ip}/{prefix}")});
            }
            n
        };
        o.add_value(json!({"kind": "List", "items": [
            node("node1", "172.30.0.11", 24),
            node("node2", "172.30.0.12", 24),
            node("node3", "172.31.0.13", 24),
            {"kind": "IPPool", "metadata": {"name": "pods"},
             "spec": {"cidr": "10.244.0.0/16", "ipipMode": "Never", "vxlanMode": vxlan_mode, "natOutgoing": true}},
            {"kind": "IPPool", "metadata": {"name": "ipip"},
             "spec": {"cidr": "10.250.0.0/16", "ipipMode": "Always"}},
            {"kind": "IPPool", "metadata": {"name": "flat"},
             "spec": {"cidr": "10.251.0.0/16"}},
            {"kind": "BlockAffinity", "metadata": {"name": "a1"},
             "spec": {"cidr": "10.244.0.0/26", "node": "node1", "state": "confirmed", "deleted": "false"}},
            {"kind": "BlockAffinity", "metadata": {"name": "a2"},
             "spec": {"cidr": "10.244.0.64/26", "node": "node2", "state": "confirmed", "deleted": "false"}},
            {"kind": "BlockAffinity", "metadata": {"name": "a3"},
             "spec": {"cidr": "10.244.0.128/26", "node": "node3", "state": "confirmed", "deleted": "false"}},
            {"kind": "BlockAffinity", "metadata": {"name": "a4"},
             "spec": {"cidr": "10.244.0.192/26", "node": "node2", "state": "pendingDeletion", "deleted": "true"}},
            {"kind": "BlockAffinity", "metadata": {"name": "a5"},
             "spec": {"cidr": "10.250.0.0/26", "node": "node2", "state": "confirmed", "deleted": "false"}},
            {"kind": "BlockAffinity", "metadata": {"name": "a6"},
             "spec": {"cidr": "10.251.0.0/26", "node": "node3", "state": "confirmed", "deleted": "false"}},
            {"kind": "IPAMBlock", "metadata": {"name": "b2"},
             "spec": {"cidr": "10.244.0.64/26", "affinity": "host:node2", "allocations": [0, null, 1],
                      "unallocated": [1], "attributes": [
                        {"handle_id": "vxlan-tunnel-addr-node2", "secondary": {"node": "node2", "type": "vxlanTunnelAddress"}},
                        {"handle_id": "k8s-pod-network.x", "secondary": {"namespace": "shop", "node": "node2", "pod": "db-0"}}],
                      "strictAffinity": false}}
        ]}))
        .unwrap();
        o
    }

    fn model(vxlan_mode: &str, annotate: bool, interfaces: &[(&str, &str)]) -> Model {
        let mut routes = RouteTable::default();
        routes
            .local_blocks
            .insert("10.244.0.0/26".parse().unwrap(), ());
        // A stale route says node2; the affinity says node3.
        routes.remote_blocks.insert(
            "10.244.0.128/26".parse().unwrap(),
            BlockRoute {
                block: "10.244.0.128/26".parse().unwrap(),
                next_hop: Some("172.30.0.12".parse().unwrap()),
                ifindex: 2,
                protocol: "bird".into(),
            },
        );
        // No affinity for this one: the route decides.
        routes.remote_blocks.insert(
            "10.244.1.0/26".parse().unwrap(),
            BlockRoute {
                block: "10.244.1.0/26".parse().unwrap(),
                next_hop: Some("172.30.0.12".parse().unwrap()),
                ifindex: 2,
                protocol: "bird".into(),
            },
        );
        let mut m = Model::build(
            &objects(vxlan_mode, annotate),
            Arc::new(routes),
            "cali",
            Some("node1".into()),
        );
        let ifs: Vec<(String, IpNet)> = interfaces
            .iter()
            .map(|(n, a)| (n.to_string(), a.parse().unwrap()))
            .collect();
        m.set_node_state(Vec::new(), None, &ifs);
        m
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn affinities_name_block_nodes_before_routes() {
        let m = model("Always", true, &[]);
        assert_eq!(m.node_of(ip("10.244.0.70")).as_deref(), Some("node2"));
        // The affinity wins over the route's next hop.
        assert_eq!(m.node_of(ip("10.244.0.130")).as_deref(), Some("node3"));
        // No affinity: the route's next hop's node.
        assert_eq!(m.node_of(ip("10.244.1.5")).as_deref(), Some("node2"));
        // A deleted affinity says nothing.
        assert_eq!(m.node_of(ip("10.244.0.200")), None);
        let anon = m.endpoint(ip("10.251.0.9"));
        assert_eq!(
            (anon.kind.name(), anon.node.as_deref()),
            ("pod", Some("node3"))
        );
        let b = m.calico().block_of(ip("10.244.0.70")).unwrap();
        assert_eq!(
            (b.in_use, b.free, b.pool.as_deref()),
            (Some(2), Some(62), Some("pods"))
        );
        assert_eq!(b.special[0].kind, "vxlanTunnelAddress");
        assert_eq!(m.calico().blocks_of_node("node1").count(), 1);
    }

    #[test]
    fn expected_encap_follows_the_pool() {
        let m = model("Always", true, &[]);
        let (local, remote) = (ip("10.244.0.5"), ip("10.244.0.70"));
        assert_eq!(m.expected_encap(local, remote), Some(Encap::Vxlan));
        assert_eq!(m.expected_encap(remote, local), Some(Encap::Vxlan));
        assert_eq!(m.expected_encap(local, ip("10.244.0.6")), Some(Encap::None));
        assert_eq!(m.expected_encap(local, ip("8.8.8.8")), Some(Encap::None));
        assert_eq!(m.expected_encap(local, ip("10.250.0.9")), Some(Encap::Ipip));
        assert_eq!(m.expected_encap(local, ip("10.251.0.9")), Some(Encap::None));
        // The node itself to a remote pod: the tunnel too.
        assert_eq!(
            m.expected_encap(ip("172.30.0.11"), remote),
            Some(Encap::Vxlan)
        );
    }

    #[test]
    fn cross_subnet_from_annotations() {
        let m = model("CrossSubnet", true, &[]);
        assert_eq!(
            m.calico().local_subnets,
            ["172.30.0.0/24".parse::<IpNet>().unwrap()]
        );
        let local = ip("10.244.0.5");
        // node2 shares our /24: no encapsulation; node3 does not.
        assert_eq!(
            m.expected_encap(local, ip("10.244.0.70")),
            Some(Encap::None)
        );
        assert_eq!(
            m.expected_encap(local, ip("10.244.0.130")),
            Some(Encap::Vxlan)
        );
        // No node for the address: cannot tell.
        assert_eq!(m.expected_encap(local, ip("10.244.0.200")), None);
    }

    #[test]
    fn cross_subnet_from_interfaces() {
        let ifs = [
            ("lo", "127.0.0.1/8"),
            ("eth0", "172.30.0.11/24"),
            ("eth1", "192.168.9.1/24"),
            ("vxlan.calico", "10.244.0.0/32"),
        ];
        let m = model("CrossSubnet", false, &ifs);
        // The interface holding node1's InternalIP.
        assert_eq!(
            m.calico().local_subnets,
            ["172.30.0.0/24".parse::<IpNet>().unwrap()]
        );
        assert_eq!(
            m.expected_encap(ip("10.244.0.5"), ip("10.244.0.130")),
            Some(Encap::Vxlan)
        );
        // Without Node objects for us: every underlay-looking interface.
        let c = CalicoView::default();
        let nets: Vec<(String, IpNet)> = ifs
            .iter()
            .map(|(n, a)| (n.to_string(), a.parse().unwrap()))
            .collect();
        let picked: Vec<String> = c
            .pick_local_subnets(None, &nets)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(picked, ["172.30.0.0/24", "192.168.9.0/24"]);
    }

    #[test]
    fn interface_networks_include_loopback() {
        let nets = interface_networks();
        assert!(
            nets.iter()
                .any(|(n, a)| n == "lo" && a.to_string() == "127.0.0.1/8"),
            "{nets:?}"
        );
    }
}
