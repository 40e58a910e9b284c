//! One netlink request and its replies, for the families rtnetlink does
//! not speak (ctnetlink, IPVS over generic netlink): send a message, gather
//! the payload of every reply until the dump is done. Headers are
//! `netlink-packet-core`'s; nlctrl is `netlink-packet-generic`'s.

use anyhow::{Context as _, Result, bail};
use bytes::Bytes;
use netlink_packet_core::{
    Emitable as _, NLM_F_REQUEST, NLMSG_DONE, NLMSG_ERROR, NetlinkBuffer, NetlinkHeader,
    NetlinkSerializable as _, ParseableParametrized as _,
};
use netlink_packet_generic::{
    GenlMessage,
    ctrl::{GenlCtrl, GenlCtrlCmd, nlas::GenlCtrlAttrs},
};
use netlink_sys::{Socket, SocketAddr};

pub use netlink_packet_core::NLM_F_DUMP;

/// The netlink header's size.
const HEADER: usize = 16;

/// Sends `msg_type` with `payload` (family header and attributes) and
/// returns each reply's payload, a view into the datagram it came in (a
/// conntrack dump is thousands of replies: none is copied). A `dump` ends
/// with NLMSG_DONE; a plain request with its one answer or an error.
pub fn request(protocol: isize, msg_type: u16, flags: u16, payload: &[u8]) -> Result<Vec<Bytes>> {
    let mut sock = Socket::new(protocol).context("opening a netlink socket")?;
    sock.bind_auto()?;
    sock.connect(&SocketAddr::new(0, 0))?;
    let mut header = NetlinkHeader::default();
    header.length = (HEADER + payload.len()) as u32;
    header.message_type = msg_type;
    header.flags = flags | NLM_F_REQUEST;
    header.sequence_number = 1;
    let mut msg = vec![0; HEADER];
    header.emit(&mut msg);
    msg.extend_from_slice(payload);
    sock.send(&msg, 0).context("sending a netlink request")?;
    let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
    let mut out = Vec::new();
    loop {
        let (buf, _) = sock.recv_from_full().context("reading netlink replies")?;
        let buf = Bytes::from(buf);
        let mut at = 0;
        while at < buf.len() {
            let reply = NetlinkBuffer::new_checked(&buf[at..])
                .map_err(|e| anyhow::anyhow!("malformed netlink reply: {e}"))?;
            let len = reply.length() as usize;
            let body = reply.payload();
            match reply.message_type() {
                NLMSG_DONE => return Ok(out),
                NLMSG_ERROR => {
                    let code = i32::from_ne_bytes(
                        body.get(..4).context("short netlink error")?.try_into()?,
                    );
                    if code != 0 {
                        return Err(std::io::Error::from_raw_os_error(-code).into());
                    }
                    if !dump {
                        return Ok(out);
                    }
                }
                _ => {
                    out.push(buf.slice_ref(body));
                    if !dump {
                        return Ok(out);
                    }
                }
            }
            at += (len + 3) & !3;
        }
    }
}

/// Appends a netlink attribute, padded to four bytes (for IPVS requests,
/// which no crate here encodes).
pub fn put_attr(out: &mut Vec<u8>, kind: u16, value: &[u8]) {
    out.extend_from_slice(&((4 + value.len()) as u16).to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(value);
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

/// The id of a generic netlink family, `None` if the kernel has none of
/// that name (asked of nlctrl, in `netlink-packet-generic`'s terms).
pub fn genl_family(name: &str) -> Result<Option<u16>> {
    let mut ask = GenlMessage::from_payload(GenlCtrl {
        cmd: GenlCtrlCmd::GetFamily,
        nlas: vec![GenlCtrlAttrs::FamilyName(name.to_owned())],
    });
    ask.finalize();
    let mut payload = vec![0; netlink_packet_core::Emitable::buffer_len(&ask)];
    netlink_packet_core::Emitable::emit(&ask, &mut payload);
    let ctrl = ask.message_type();
    let replies = match request(netlink_sys::protocols::NETLINK_GENERIC, ctrl, 0, &payload) {
        Ok(r) => r,
        Err(e)
            if e.downcast_ref::<std::io::Error>()
                .and_then(|e| e.raw_os_error())
                == Some(libc::ENOENT) =>
        {
            return Ok(None);
        }
        Err(e) => return Err(e),
    };
    for reply in replies {
        let answer = GenlMessage::<GenlCtrl>::parse_with_param(&reply, ctrl)
            .map_err(|e| anyhow::anyhow!("bad answer from nlctrl: {e}"))?;
        let id = answer.payload.nlas.iter().find_map(|a| match a {
            GenlCtrlAttrs::FamilyId(id) => Some(*id),
            _ => None,
        });
        if id.is_some() {
            return Ok(id);
        }
    }
    bail!("nlctrl answered without a family id for {name}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generic_netlink_families_resolve_on_this_kernel() {
        // nlctrl names itself; a made-up family is absent, not an error.
        assert_eq!(
            genl_family("nlctrl").unwrap(),
            Some(netlink_packet_generic::constants::GENL_ID_CTRL)
        );
        assert_eq!(genl_family("no-such-family").unwrap(), None);
    }
}
