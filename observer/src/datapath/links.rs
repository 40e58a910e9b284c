//! Following interfaces as they appear and disappear: an rtnetlink dump at
//! start, then RTM_NEWLINK / RTM_DELLINK events (no polling).

use anyhow::{Context as _, Result};
use futures::{StreamExt as _, TryStreamExt as _};
use netlink_packet_core::NetlinkPayload;
use netlink_packet_route::{
    RouteNetlinkMessage,
    link::{InfoKind, LinkAttribute, LinkInfo, LinkLayerType, LinkMessage},
};
use netlink_sys::{AsyncSocket as _, SocketAddr};
use observer_common::Encap;
use tokio::sync::mpsc;

use super::attach::LinkLayer;

/// What we need to know of an interface to decide whether and how to attach.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkInfoView {
    pub index: u32,
    pub name: String,
    pub layer: LinkLayer,
    /// Encapsulation the device itself performs (from its link kind).
    pub tunnel: Option<Encap>,
    /// The link's MTU (IFLA_MTU).
    pub mtu: Option<u32>,
}

#[derive(Debug)]
pub enum LinkEvent {
    /// The interface exists (newly, or it changed).
    Present(LinkInfoView),
    /// The interface was deleted.
    Gone { index: u32 },
}

const RTMGRP_LINK: u32 = 1;

fn view(msg: &LinkMessage) -> Option<LinkInfoView> {
    let mut name = None;
    let mut kind = None;
    let mut mtu = None;
    for attr in &msg.attributes {
        match attr {
            LinkAttribute::IfName(n) => name = Some(n.clone()),
            LinkAttribute::Mtu(m) => mtu = Some(*m),
            LinkAttribute::LinkInfo(infos) => {
                for info in infos {
                    if let LinkInfo::Kind(k) = info {
                        kind = Some(k.clone());
                    }
                }
            }
            _ => {}
        }
    }
    let layer = match msg.header.link_layer_type {
        LinkLayerType::Ether => LinkLayer::Ethernet,
        _ => LinkLayer::L3,
    };
    let tunnel = match kind {
        Some(InfoKind::IpIp) | Some(InfoKind::SitTun) | Some(InfoKind::Ip6Tnl) => Some(Encap::Ipip),
        Some(InfoKind::Vxlan) => Some(Encap::Vxlan),
        Some(InfoKind::Wireguard) => Some(Encap::Wireguard),
        _ => None,
    };
    Some(LinkInfoView {
        index: msg.header.index,
        name: name?,
        layer,
        tunnel,
        mtu,
    })
}

/// Subscribes to link events, then dumps the current links, so that nothing
/// is missed between the two (duplicates are harmless). Returns the links
/// there are now, and the channel on which later events arrive.
pub async fn follow() -> Result<(Vec<LinkInfoView>, mpsc::Receiver<LinkEvent>)> {
    let (mut conn, handle, mut messages) =
        rtnetlink::new_connection().context("opening an rtnetlink socket")?;
    conn.socket_mut()
        .socket_mut()
        .bind(&SocketAddr::new(0, RTMGRP_LINK))
        .context("subscribing to rtnetlink link events")?;
    let conn_task = tokio::spawn(conn);

    let (tx, rx) = mpsc::channel(1024);
    let initial = dump_with(&handle).await?;
    tokio::spawn(async move {
        let _conn_task = AbortOnDrop(conn_task);
        while let Some((msg, _)) = messages.next().await {
            let ev = match msg.payload {
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(m)) => {
                    view(&m).map(LinkEvent::Present)
                }
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(m)) => {
                    Some(LinkEvent::Gone {
                        index: m.header.index,
                    })
                }
                _ => None,
            };
            if let Some(ev) = ev
                && tx.send(ev).await.is_err()
            {
                return;
            }
        }
        tracing::error!("rtnetlink event stream ended");
    });
    Ok((initial, rx))
}

/// The links as the kernel has them now, on a connection of its own (the
/// doctor asks at the moment it runs).
pub async fn dump() -> Result<Vec<LinkInfoView>> {
    let (conn, handle, _) = rtnetlink::new_connection().context("opening an rtnetlink socket")?;
    let _conn = AbortOnDrop(tokio::spawn(conn));
    dump_with(&handle).await
}

async fn dump_with(handle: &rtnetlink::Handle) -> Result<Vec<LinkInfoView>> {
    let mut dump = handle.link().get().execute();
    let mut links = Vec::new();
    while let Some(msg) = dump.try_next().await.context("dumping links")? {
        if let Some(v) = view(&msg) {
            links.push(v);
        }
    }
    Ok(links)
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
