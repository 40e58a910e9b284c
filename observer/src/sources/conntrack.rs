//! Which endpoint a Service connection was DNATed to, from the kernel's
//! connection tracking (ctnetlink dump): the original tuple goes to the
//! VIP, the reply comes from the endpoint. This names the backend of the
//! flows seen before DNAT, on the client's interface.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
};

use anyhow::{Context as _, Result};
use netlink_packet_core::{NlaBuffer, NlasIterator};
use netlink_sys::protocols::NETLINK_NETFILTER;

use super::netlink;

/// (source, destination, protocol) of a connection as the client sent it.
pub type Tuple = (SocketAddr, SocketAddr, u8);

// include/uapi/linux/netfilter/nfnetlink_conntrack.h
const NFNL_SUBSYS_CTNETLINK: u16 = 1;
const IPCTNL_MSG_CT_GET: u16 = 1;
const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_REPLY: u16 = 2;
const CTA_TUPLE_IP: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;
const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V4_DST: u16 = 2;
const CTA_IP_V6_SRC: u16 = 3;
const CTA_IP_V6_DST: u16 = 4;
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_SRC_PORT: u16 = 2;
const CTA_PROTO_DST_PORT: u16 = 3;

fn nested(payload: &[u8]) -> Vec<(u16, Vec<u8>)> {
    NlasIterator::new(payload)
        .filter_map(|n: Result<NlaBuffer<&[u8]>, _>| n.ok())
        .map(|n| (n.kind() & 0x3fff, n.value().to_vec()))
        .collect()
}

fn find(attrs: &[(u16, Vec<u8>)], kind: u16) -> Option<&[u8]> {
    attrs
        .iter()
        .find(|(k, _)| *k == kind)
        .map(|(_, v)| v.as_slice())
}

/// (src, dst, protocol) of a CTA_TUPLE_* attribute.
fn tuple(payload: &[u8]) -> Option<Tuple> {
    let t = nested(payload);
    let ip = nested(find(&t, CTA_TUPLE_IP)?);
    let proto = nested(find(&t, CTA_TUPLE_PROTO)?);
    let v4 = |k| {
        find(&ip, k)
            .and_then(|v| <[u8; 4]>::try_from(v).ok())
            .map(|b| IpAddr::V4(Ipv4Addr::from(b)))
    };
    let v6 = |k| {
        find(&ip, k)
            .and_then(|v| <[u8; 16]>::try_from(v).ok())
            .map(|b| IpAddr::V6(Ipv6Addr::from(b)))
    };
    let (src, dst) = (
        v4(CTA_IP_V4_SRC).or(v6(CTA_IP_V6_SRC))?,
        v4(CTA_IP_V4_DST).or(v6(CTA_IP_V6_DST))?,
    );
    let port = |k| {
        find(&proto, k)
            .and_then(|v| <[u8; 2]>::try_from(v).ok())
            .map(u16::from_be_bytes)
            .unwrap_or(0)
    };
    let num = *find(&proto, CTA_PROTO_NUM)?.first()?;
    Some((
        SocketAddr::new(src, port(CTA_PROTO_SRC_PORT)),
        SocketAddr::new(dst, port(CTA_PROTO_DST_PORT)),
        num,
    ))
}

/// Reads one conntrack entry (after the netlink header): the original
/// tuple and where replies come from, if the destination was translated.
pub fn decode_entry(msg: &[u8]) -> Option<(Tuple, SocketAddr)> {
    // struct nfgenmsg: family, version, res_id.
    let attrs = nested(msg.get(4..)?);
    let orig = tuple(find(&attrs, CTA_TUPLE_ORIG)?)?;
    let reply = tuple(find(&attrs, CTA_TUPLE_REPLY)?)?;
    (reply.0 != orig.1).then_some((orig, reply.0))
}

/// Every DNATed connection: original tuple -> the endpoint it went to.
pub fn dnat_table() -> Result<HashMap<Tuple, SocketAddr>> {
    // nfgenmsg: AF_UNSPEC (both families), version 0, res_id 0.
    let replies = netlink::request(
        NETLINK_NETFILTER,
        (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_GET,
        netlink::NLM_F_DUMP,
        &[0, 0, 0, 0],
    )
    .context("dumping the conntrack table")?;
    Ok(replies.iter().filter_map(|r| decode_entry(r)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nla(kind: u16, value: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        netlink::put_attr(&mut out, kind, value);
        out
    }

    fn tuple_attr(kind: u16, src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> Vec<u8> {
        let ip = [nla(CTA_IP_V4_SRC, &src), nla(CTA_IP_V4_DST, &dst)].concat();
        let proto = [
            nla(CTA_PROTO_NUM, &[17]),
            nla(CTA_PROTO_SRC_PORT, &sport.to_be_bytes()),
            nla(CTA_PROTO_DST_PORT, &dport.to_be_bytes()),
        ]
        .concat();
        nla(
            kind | 0x8000,
            &[
                nla(CTA_TUPLE_IP | 0x8000, &ip),
                nla(CTA_TUPLE_PROTO | 0x8000, &proto),
            ]
            .concat(),
        )
    }

    #[test]
    fn dnat_entries_give_the_endpoint() {
        let mut msg = vec![2, 0, 0, 0];
        msg.extend(tuple_attr(
            CTA_TUPLE_ORIG,
            [10, 244, 0, 1],
            [10, 96, 0, 12],
            40000,
            53,
        ));
        msg.extend(tuple_attr(
            CTA_TUPLE_REPLY,
            [10, 244, 0, 66],
            [10, 244, 0, 1],
            5353,
            40000,
        ));
        let (orig, endpoint) = decode_entry(&msg).unwrap();
        assert_eq!(
            orig,
            (
                "10.244.0.1:40000".parse().unwrap(),
                "10.96.0.12:53".parse().unwrap(),
                17
            )
        );
        assert_eq!(endpoint, "10.244.0.66:5353".parse().unwrap());
        // Not translated: not a Service connection.
        let mut plain = vec![2, 0, 0, 0];
        plain.extend(tuple_attr(
            CTA_TUPLE_ORIG,
            [10, 244, 0, 1],
            [10, 244, 0, 2],
            1,
            2,
        ));
        plain.extend(tuple_attr(
            CTA_TUPLE_REPLY,
            [10, 244, 0, 2],
            [10, 244, 0, 1],
            2,
            1,
        ));
        assert_eq!(decode_entry(&plain), None);
        assert_eq!(decode_entry(&[2, 0]), None);
    }

    #[test]
    fn the_real_table_can_be_read() {
        assert!(
            unsafe { libc::geteuid() } == 0,
            "needs root (CAP_NET_ADMIN) to read conntrack"
        );
        dnat_table().expect("dump conntrack");
    }
}
