//! Which endpoint a Service connection was DNATed to, from the kernel's
//! connection tracking (ctnetlink dump): the original tuple goes to the
//! VIP, the reply comes from the endpoint. This names the backend of the
//! flows seen before DNAT, on the client's interface. The messages are
//! decoded by `netlink-packet-netfilter`.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
};

use anyhow::{Context as _, Result};
use netlink_packet_core::ParseableParametrized as _;
use netlink_packet_netfilter::{
    NetfilterMessage, NetfilterMessageInner, NetfilterSubsystem,
    conntrack::{
        ConntrackAttribute, ConntrackMessage, ConntrackMessageType, IPTuple, ProtoTuple,
        Tuple as CtTuple,
    },
};
use netlink_sys::protocols::NETLINK_NETFILTER;

use super::netlink;

/// (source, destination, protocol) of a connection as the client sent it.
pub type Tuple = (SocketAddr, SocketAddr, u8);

/// The netlink message type of a conntrack dump request.
fn ct_get() -> u16 {
    (u16::from(u8::from(NetfilterSubsystem::Conntrack)) << 8)
        | u16::from(u8::from(ConntrackMessageType::Get))
}

/// (src, dst, protocol) of a CTA_TUPLE_* attribute's parts.
fn tuple(parts: &[CtTuple]) -> Option<Tuple> {
    let (mut src, mut dst, mut num) = (None, None, None);
    let (mut sport, mut dport) = (0, 0);
    for part in parts {
        match part {
            CtTuple::Ip(ips) => {
                for ip in ips {
                    match ip {
                        IPTuple::SourceAddress(a) => src = Some(*a),
                        IPTuple::DestinationAddress(a) => dst = Some(*a),
                        _ => {}
                    }
                }
            }
            CtTuple::Proto(protos) => {
                for p in protos {
                    match p {
                        ProtoTuple::Protocol(n) => num = Some(u8::from(*n)),
                        ProtoTuple::SourcePort(port) => sport = *port,
                        ProtoTuple::DestinationPort(port) => dport = *port,
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    let (src, dst): (IpAddr, IpAddr) = (src?, dst?);
    Some((
        SocketAddr::new(src, sport),
        SocketAddr::new(dst, dport),
        num?,
    ))
}

/// Reads one conntrack entry (after the netlink header): the original
/// tuple and where replies come from, if the destination was translated.
pub fn decode_entry(msg: &[u8]) -> Option<(Tuple, SocketAddr)> {
    // A dump answers with entries of any conntrack message type; they
    // carry the same attributes.
    let parsed = NetfilterMessage::parse_with_param(msg, ct_get()).ok()?;
    let NetfilterMessageInner::Conntrack(
        ConntrackMessage::Get(attrs) | ConntrackMessage::New(attrs),
    ) = parsed.inner
    else {
        return None;
    };
    let (mut orig, mut reply) = (None, None);
    for attr in &attrs {
        match attr {
            ConntrackAttribute::CtaTupleOrig(t) => orig = tuple(t),
            ConntrackAttribute::CtaTupleReply(t) => reply = tuple(t),
            _ => {}
        }
    }
    let (orig, reply) = (orig?, reply?);
    (reply.0 != orig.1).then_some((orig, reply.0))
}

/// Every DNATed connection: original tuple -> the endpoint it went to.
pub fn dnat_table() -> Result<HashMap<Tuple, SocketAddr>> {
    // nfgenmsg: AF_UNSPEC (both families), version 0, res_id 0.
    let replies = netlink::request(
        NETLINK_NETFILTER,
        ct_get(),
        netlink::NLM_F_DUMP,
        &[0, 0, 0, 0],
    )
    .context("dumping the conntrack table")?;
    Ok(replies.iter().filter_map(|r| decode_entry(r)).collect())
}

#[cfg(test)]
mod tests {
    use netlink_packet_core::Emitable as _;
    use netlink_packet_netfilter::{
        NetfilterHeader, NetfilterProtoFamily,
        conntrack::{Protocol, Status},
    };

    use super::*;

    fn tuple_attr(src: &str, dst: &str, sport: u16, dport: u16) -> Vec<CtTuple> {
        vec![
            CtTuple::Ip(vec![
                IPTuple::SourceAddress(src.parse().unwrap()),
                IPTuple::DestinationAddress(dst.parse().unwrap()),
            ]),
            CtTuple::Proto(vec![
                ProtoTuple::Protocol(Protocol::Udp),
                ProtoTuple::SourcePort(sport),
                ProtoTuple::DestinationPort(dport),
            ]),
        ]
    }

    /// An entry as the kernel sends it in a dump (IPCTNL_MSG_CT_NEW).
    fn entry(orig: Vec<CtTuple>, reply: Vec<CtTuple>) -> Vec<u8> {
        let msg = NetfilterMessage::new(
            NetfilterHeader::new(NetfilterProtoFamily::IPv4, 0, 0),
            ConntrackMessage::New(vec![
                ConntrackAttribute::CtaTupleOrig(orig),
                ConntrackAttribute::CtaTupleReply(reply),
                ConntrackAttribute::CtaStatus(Status::from_bits_retain(0x1be)),
                ConntrackAttribute::CtaTimeout(120),
            ]),
        );
        let mut buf = vec![0; msg.buffer_len()];
        msg.emit(&mut buf);
        buf
    }

    #[test]
    fn dnat_entries_give_the_endpoint() {
        let msg = entry(
            tuple_attr("10.244.0.1", "10.96.0.12", 40000, 53),
            tuple_attr("10.244.0.66", "10.244.0.1", 5353, 40000),
        );
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
        // IPv6 the same way.
        let msg = entry(
            tuple_attr("fd00::1", "fd00:96::c", 40000, 53),
            tuple_attr("fd00::42", "fd00::1", 53, 40000),
        );
        assert_eq!(
            decode_entry(&msg).unwrap().1,
            "[fd00::42]:53".parse().unwrap()
        );
        // Not translated: not a Service connection.
        let plain = entry(
            tuple_attr("10.244.0.1", "10.244.0.2", 1, 2),
            tuple_attr("10.244.0.2", "10.244.0.1", 2, 1),
        );
        assert_eq!(decode_entry(&plain), None);
        // Cut short or garbage: nothing, no panic.
        assert_eq!(decode_entry(&[2, 0]), None);
        assert_eq!(decode_entry(&msg[..msg.len() - 3]), None);
    }

    #[test]
    fn the_real_table_can_be_read() {
        if !crate::have_root("CAP_NET_ADMIN, to read conntrack") {
            return;
        }
        dnat_table().expect("dump conntrack");
    }
}
