//! Calico's IPIP mode (`ipipMode: Always` or `CrossSubnet`): `tunl0` up
//! on every node with the node's tunnel address from its block, MTU 1480,
//! and the IPv4 block routes as Calico's BIRD programs them:
//! `<block> via <node underlay IP> dev tunl0 onlink proto bird` (or, for
//! CrossSubnet between nodes of one subnet, via `eth0` unencapsulated).
//!
//! Upstream BIRD 1.6 cannot install `onlink` routes through `tunl0`
//! (Calico's fork adds that), so the lab's BIRDs keep the mesh and carry
//! the blocks (`birdc show route`), and the lab installs the kernel routes
//! the way the fork would. The IPv4 BIRD runs without its kernel protocol:
//! it would otherwise take these `proto bird` routes for stale ones of its
//! own and delete them.

use anyhow::Result;

use super::{
    netns::{ip, sysctl},
    plan::{NodePlan, Plan},
};

/// The underlay's 1500 less the 20 bytes of the outer IPv4 header.
pub const TUNNEL_MTU: u32 = 1480;

/// `tunl0` as calico-node sets it up: up, MTU 1480, the tunnel address.
pub fn tunnel(node: &NodePlan) -> Result<()> {
    let ns = &node.netns;
    // Every namespace has its own `tunl0` once the ipip module is loaded.
    ip(
        ns,
        &["link", "set", "tunl0", "mtu", &TUNNEL_MTU.to_string(), "up"],
    )?;
    if let Some(addr) = node.tunnel_ips.iter().find(|a| a.is_ipv4()) {
        ip(ns, &["addr", "add", &format!("{addr}/32"), "dev", "tunl0"])?;
    }
    // Decapsulated packets arrive on tunl0 from a source routed via eth0.
    sysctl(ns, "net.ipv4.conf.tunl0.rp_filter", "0")?;
    Ok(())
}

/// Whether traffic between two nodes is encapsulated: always, or with
/// CrossSubnet only between different /24s.
pub fn encapsulated(plan: &Plan, a: &NodePlan, b: &NodePlan) -> bool {
    !plan.cross_subnet || subnet(a) != subnet(b)
}

fn subnet(node: &NodePlan) -> [u8; 3] {
    match node.underlay_ip {
        std::net::IpAddr::V4(v4) => {
            let o = v4.octets();
            [o[0], o[1], o[2]]
        }
        std::net::IpAddr::V6(_) => [0; 3],
    }
}

/// The node's own IPv4 blocks blackholed and the peers' routed, `proto
/// bird`, as Calico's BIRD does in IPIP mode.
pub fn routes(plan: &Plan, node: &NodePlan) -> Result<()> {
    let ns = &node.netns;
    for block in node.blocks.iter().filter(|b| b.addr().is_ipv4()) {
        ip(
            ns,
            &[
                "route",
                "add",
                "blackhole",
                &block.to_string(),
                "proto",
                "bird",
            ],
        )?;
    }
    for peer in plan.nodes.iter().filter(|p| p.name != node.name) {
        let via = peer.underlay_ip.to_string();
        for block in peer.blocks.iter().filter(|b| b.addr().is_ipv4()) {
            let block = block.to_string();
            let mut route = vec!["route", "add", &block, "via", &via];
            if encapsulated(plan, node, peer) {
                route.extend(["dev", "tunl0", "onlink"]);
            } else {
                route.extend(["dev", "eth0"]);
            }
            route.extend(["proto", "bird"]);
            ip(ns, &route)?;
        }
    }
    Ok(())
}
