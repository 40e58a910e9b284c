//! The node's routes, as Calico programs them, from rtnetlink (a dump, then
//! change events; no polling): `/32 scope link` routes to pod interfaces,
//! `blackhole` routes for this node's blocks, and block routes to other
//! nodes (`proto bird` via the underlay or `tunl0`, Felix's VXLAN routes
//! via `vxlan.calico`). Works without any Kubernetes API.

use std::{collections::BTreeMap, net::IpAddr, sync::Arc};

use anyhow::{Context as _, Result};
use futures::{StreamExt as _, TryStreamExt as _};
use ipnet::IpNet;
use netlink_packet_core::NetlinkPayload;
use netlink_packet_route::{
    AddressFamily, RouteNetlinkMessage,
    route::{
        RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope,
        RouteType,
    },
};
use netlink_sys::{AsyncSocket as _, SocketAddr};
use serde::Serialize;
use tokio::sync::watch;

/// A route to another node's block.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BlockRoute {
    pub block: IpNet,
    /// The next hop: the peer node's address (BGP, IPIP) or its tunnel
    /// address (VXLAN).
    pub next_hop: Option<IpAddr>,
    pub ifindex: u32,
    /// `bird`, `static`, `kernel`, or the protocol number (Felix uses 80).
    pub protocol: String,
}

/// What a route says about the pod network.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RouteFact {
    /// `<pod ip>/32 dev caliX scope link`.
    LocalEndpoint { ip: IpAddr, ifindex: u32 },
    /// `blackhole <block>`: a block this node owns.
    LocalBlock(IpNet),
    /// `<block> via <next hop> dev <dev>`: a block on another node.
    RemoteBlock(BlockRoute),
}

/// All the facts, keyed by destination.
#[derive(Clone, Debug, Default)]
pub struct RouteTable {
    pub local_endpoints: BTreeMap<IpAddr, u32>,
    pub local_blocks: BTreeMap<IpNet, ()>,
    pub remote_blocks: BTreeMap<IpNet, BlockRoute>,
}

impl RouteTable {
    fn apply(&mut self, fact: RouteFact, present: bool) {
        match (fact, present) {
            (RouteFact::LocalEndpoint { ip, ifindex }, true) => {
                self.local_endpoints.insert(ip, ifindex);
            }
            (RouteFact::LocalEndpoint { ip, .. }, false) => {
                self.local_endpoints.remove(&ip);
            }
            (RouteFact::LocalBlock(b), true) => {
                self.local_blocks.insert(b, ());
            }
            (RouteFact::LocalBlock(b), false) => {
                self.local_blocks.remove(&b);
            }
            (RouteFact::RemoteBlock(r), true) => {
                self.remote_blocks.insert(r.block, r);
            }
            (RouteFact::RemoteBlock(r), false) => {
                self.remote_blocks.remove(&r.block);
            }
        }
    }

    /// The remote block route covering `ip` (longest prefix).
    pub fn remote_block_of(&self, ip: IpAddr) -> Option<&BlockRoute> {
        self.remote_blocks
            .values()
            .filter(|r| r.block.contains(&ip))
            .max_by_key(|r| r.block.prefix_len())
    }
}

fn addr(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

fn protocol_name(p: RouteProtocol) -> String {
    match p {
        RouteProtocol::Bird => "bird".into(),
        RouteProtocol::Static => "static".into(),
        RouteProtocol::Kernel => "kernel".into(),
        RouteProtocol::Boot => "boot".into(),
        other => u8::from(other).to_string(),
    }
}

/// Reads one route message; `None` for routes that say nothing about the
/// pod network (connected subnets, defaults, other tables).
pub fn classify(msg: &RouteMessage) -> Option<RouteFact> {
    let h: &RouteHeader = &msg.header;
    if h.table != RouteHeader::RT_TABLE_MAIN {
        return None;
    }
    let host_len = match h.address_family {
        AddressFamily::Inet => 32,
        AddressFamily::Inet6 => 128,
        _ => return None,
    };
    let (mut dst, mut gateway, mut oif) = (None, None, None);
    for a in &msg.attributes {
        match a {
            RouteAttribute::Destination(d) => dst = addr(d),
            RouteAttribute::Gateway(g) => gateway = addr(g),
            RouteAttribute::Oif(i) => oif = Some(*i),
            _ => {}
        }
    }
    let dst = dst?;
    let net = IpNet::new(dst, h.destination_prefix_length).ok()?;
    if h.destination_prefix_length == 0 {
        return None;
    }
    match h.kind {
        RouteType::BlackHole => Some(RouteFact::LocalBlock(net)),
        RouteType::Unicast
            // IPv6 routes carry no link scope: a /128 without a gateway
            // is Felix's route to a pod all the same.
            if gateway.is_none()
                && (h.scope == RouteScope::Link || h.address_family == AddressFamily::Inet6)
                && h.destination_prefix_length == host_len =>
        {
            Some(RouteFact::LocalEndpoint {
                ip: dst,
                ifindex: oif?,
            })
        }
        RouteType::Unicast if gateway.is_some() => Some(RouteFact::RemoteBlock(BlockRoute {
            block: net,
            next_hop: gateway,
            ifindex: oif.unwrap_or(0),
            protocol: protocol_name(h.protocol),
        })),
        _ => None,
    }
}

const RTMGRP_IPV4_ROUTE: u32 = 0x40;
const RTMGRP_IPV6_ROUTE: u32 = 0x400;

/// Dumps the routes, then follows changes; the table is republished on
/// every change.
pub async fn follow() -> Result<watch::Receiver<Arc<RouteTable>>> {
    let (mut conn, handle, mut messages) =
        rtnetlink::new_connection().context("opening an rtnetlink socket")?;
    conn.socket_mut()
        .socket_mut()
        .bind(&SocketAddr::new(0, RTMGRP_IPV4_ROUTE | RTMGRP_IPV6_ROUTE))
        .context("subscribing to rtnetlink route events")?;
    let conn_task = tokio::spawn(conn);

    let mut table = dump_with(&handle).await?;
    let (tx, rx) = watch::channel(Arc::new(table.clone()));
    tokio::spawn(async move {
        let _conn = conn_task;
        while let Some((msg, _)) = messages.next().await {
            let (route, present) = match msg.payload {
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewRoute(m)) => (m, true),
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelRoute(m)) => (m, false),
                _ => continue,
            };
            if let Some(f) = classify(&route) {
                table.apply(f, present);
                if tx.send(Arc::new(table.clone())).is_err() {
                    return;
                }
            }
        }
    });
    Ok(rx)
}

/// The routes as the kernel has them now, on a connection of its own (the
/// doctor asks at the moment it runs, not the table [`follow`] keeps).
pub async fn dump() -> Result<RouteTable> {
    let (conn, handle, _) = rtnetlink::new_connection().context("opening an rtnetlink socket")?;
    let conn = tokio::spawn(conn);
    let table = dump_with(&handle).await;
    conn.abort();
    table
}

async fn dump_with(handle: &rtnetlink::Handle) -> Result<RouteTable> {
    let mut table = RouteTable::default();
    let v4 = rtnetlink::RouteMessageBuilder::<std::net::Ipv4Addr>::new().build();
    let v6 = rtnetlink::RouteMessageBuilder::<std::net::Ipv6Addr>::new().build();
    for request in [v4, v6] {
        let mut dump = handle.route().get(request).execute();
        while let Some(msg) = dump.try_next().await.context("dumping routes")? {
            if let Some(f) = classify(&msg) {
                table.apply(f, true);
            }
        }
    }
    Ok(table)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(
        dst: &str,
        len: u8,
        kind: RouteType,
        scope: RouteScope,
        gw: Option<&str>,
        oif: u32,
    ) -> RouteMessage {
        let mut m = RouteMessage::default();
        let ip: IpAddr = dst.parse().unwrap();
        m.header.address_family = if ip.is_ipv4() {
            AddressFamily::Inet
        } else {
            AddressFamily::Inet6
        };
        m.header.table = RouteHeader::RT_TABLE_MAIN;
        m.header.destination_prefix_length = len;
        m.header.kind = kind;
        m.header.scope = scope;
        m.header.protocol = RouteProtocol::Bird;
        m.attributes.push(RouteAttribute::Destination(ip.into()));
        if let Some(g) = gw {
            m.attributes
                .push(RouteAttribute::Gateway(g.parse::<IpAddr>().unwrap().into()));
        }
        m.attributes.push(RouteAttribute::Oif(oif));
        m
    }

    #[test]
    fn calico_routes_are_read() {
        let pod = route(
            "10.244.0.5",
            32,
            RouteType::Unicast,
            RouteScope::Link,
            None,
            7,
        );
        assert_eq!(
            classify(&pod),
            Some(RouteFact::LocalEndpoint {
                ip: "10.244.0.5".parse().unwrap(),
                ifindex: 7
            })
        );
        let bh = route(
            "10.244.0.0",
            26,
            RouteType::BlackHole,
            RouteScope::Universe,
            None,
            0,
        );
        assert_eq!(
            classify(&bh),
            Some(RouteFact::LocalBlock("10.244.0.0/26".parse().unwrap()))
        );
        let remote = route(
            "10.244.0.64",
            26,
            RouteType::Unicast,
            RouteScope::Universe,
            Some("172.30.0.11"),
            2,
        );
        match classify(&remote) {
            Some(RouteFact::RemoteBlock(r)) => {
                assert_eq!(r.next_hop, Some("172.30.0.11".parse().unwrap()));
                assert_eq!(r.protocol, "bird");
            }
            other => panic!("{other:?}"),
        }
        let v6 = route(
            "fd00:10:244::5",
            128,
            RouteType::Unicast,
            RouteScope::Link,
            None,
            9,
        );
        assert!(matches!(
            classify(&v6),
            Some(RouteFact::LocalEndpoint { ifindex: 9, .. })
        ));
    }

    #[test]
    fn other_routes_are_ignored() {
        let connected = route(
            "172.30.0.0",
            24,
            RouteType::Unicast,
            RouteScope::Link,
            None,
            2,
        );
        assert_eq!(classify(&connected), None);
        let default = route(
            "0.0.0.0",
            0,
            RouteType::Unicast,
            RouteScope::Universe,
            Some("172.30.0.1"),
            2,
        );
        assert_eq!(classify(&default), None);
    }

    #[test]
    fn longest_block_wins() {
        let mut t = RouteTable::default();
        for (b, hop) in [
            ("10.244.0.0/16", "172.30.0.1"),
            ("10.244.1.0/26", "172.30.0.12"),
        ] {
            t.apply(
                RouteFact::RemoteBlock(BlockRoute {
                    block: b.parse().unwrap(),
                    next_hop: Some(hop.parse().unwrap()),
                    ifindex: 2,
                    protocol: "bird".into(),
                }),
                true,
            );
        }
        let r = t.remote_block_of("10.244.1.3".parse().unwrap()).unwrap();
        assert_eq!(r.next_hop, Some("172.30.0.12".parse().unwrap()));
    }
}
