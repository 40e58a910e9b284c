//! Which endpoint a Service connection was DNATed to, from the kernel's
//! connection tracking (ctnetlink dump): the original tuple goes to the
//! VIP, the reply comes from the endpoint. This names the backend of the
//! flows seen before DNAT, on the client's interface.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
};

use anyhow::{Context as _, Result, bail};
use netlink_packet_core::{NlaBuffer, NlasIterator};
use netlink_sys::{Socket, SocketAddr as NlAddr, protocols::NETLINK_NETFILTER};

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
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_DUMP: u16 = 0x300;

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
    let mut sock = Socket::new(NETLINK_NETFILTER).context("opening a ctnetlink socket")?;
    sock.bind_auto()?;
    sock.connect(&NlAddr::new(0, 0))?;
    let mut req = Vec::with_capacity(20);
    req.extend_from_slice(&20u32.to_ne_bytes());
    req.extend_from_slice(&((NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_GET).to_ne_bytes());
    req.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    req.extend_from_slice(&1u32.to_ne_bytes());
    req.extend_from_slice(&0u32.to_ne_bytes());
    // nfgenmsg: AF_UNSPEC (both families), version 0, res_id 0.
    req.extend_from_slice(&[0, 0, 0, 0]);
    sock.send(&req, 0)
        .context("asking for the conntrack table")?;
    let mut out = HashMap::new();
    loop {
        let (buf, _) = sock
            .recv_from_full()
            .context("reading the conntrack table")?;
        let mut at = 0;
        while at + 16 <= buf.len() {
            let len = u32::from_ne_bytes(buf[at..at + 4].try_into()?) as usize;
            let kind = u16::from_ne_bytes(buf[at + 4..at + 6].try_into()?);
            if len < 16 || at + len > buf.len() {
                bail!("malformed netlink message from ctnetlink");
            }
            match kind {
                NLMSG_DONE => return Ok(out),
                NLMSG_ERROR => {
                    let code = i32::from_ne_bytes(buf[at + 16..at + 20].try_into()?);
                    if code != 0 {
                        bail!("ctnetlink: {}", std::io::Error::from_raw_os_error(-code));
                    }
                }
                _ => {
                    if let Some((orig, endpoint)) = decode_entry(&buf[at + 16..at + len]) {
                        out.insert(orig, endpoint);
                    }
                }
            }
            at += (len + 3) & !3;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nla(kind: u16, value: &[u8]) -> Vec<u8> {
        let mut out = ((4 + value.len()) as u16).to_ne_bytes().to_vec();
        out.extend_from_slice(&kind.to_ne_bytes());
        out.extend_from_slice(value);
        while !out.len().is_multiple_of(4) {
            out.push(0);
        }
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
