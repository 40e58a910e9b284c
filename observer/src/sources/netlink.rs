//! One netlink request and its replies, for the families no crate here
//! speaks (ctnetlink, IPVS over generic netlink): send a message, gather
//! the payload of every reply until the dump is done.

use anyhow::{Context as _, Result, bail};
use netlink_sys::{Socket, SocketAddr};

const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
pub const NLM_F_REQUEST: u16 = 1;
pub const NLM_F_ACK: u16 = 4;
pub const NLM_F_DUMP: u16 = 0x300;
const HEADER: usize = 16;

/// Sends `msg_type` with `payload` (family header and attributes) and
/// returns each reply's payload. A `dump` ends with NLMSG_DONE; a plain
/// request with its one answer or an error.
pub fn request(protocol: isize, msg_type: u16, flags: u16, payload: &[u8]) -> Result<Vec<Vec<u8>>> {
    let mut sock = Socket::new(protocol).context("opening a netlink socket")?;
    sock.bind_auto()?;
    sock.connect(&SocketAddr::new(0, 0))?;
    let mut msg = Vec::with_capacity(HEADER + payload.len());
    msg.extend_from_slice(&((HEADER + payload.len()) as u32).to_ne_bytes());
    msg.extend_from_slice(&msg_type.to_ne_bytes());
    msg.extend_from_slice(&(flags | NLM_F_REQUEST).to_ne_bytes());
    msg.extend_from_slice(&1u32.to_ne_bytes());
    msg.extend_from_slice(&0u32.to_ne_bytes());
    msg.extend_from_slice(payload);
    sock.send(&msg, 0).context("sending a netlink request")?;
    let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
    let mut out = Vec::new();
    loop {
        let (buf, _) = sock.recv_from_full().context("reading netlink replies")?;
        let mut at = 0;
        while at + HEADER <= buf.len() {
            let len = u32::from_ne_bytes(buf[at..at + 4].try_into()?) as usize;
            let kind = u16::from_ne_bytes(buf[at + 4..at + 6].try_into()?);
            if len < HEADER || at + len > buf.len() {
                bail!("malformed netlink reply");
            }
            let body = &buf[at + HEADER..at + len];
            match kind {
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
                    out.push(body.to_vec());
                    if !dump {
                        return Ok(out);
                    }
                }
            }
            at += (len + 3) & !3;
        }
    }
}

/// Appends a netlink attribute, padded to four bytes.
pub fn put_attr(out: &mut Vec<u8>, kind: u16, value: &[u8]) {
    out.extend_from_slice(&((4 + value.len()) as u16).to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(value);
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

const GENL_ID_CTRL: u16 = 0x10;
const CTRL_CMD_GETFAMILY: u8 = 3;
const CTRL_ATTR_FAMILY_ID: u16 = 1;
const CTRL_ATTR_FAMILY_NAME: u16 = 2;

/// The id of a generic netlink family, `None` if the kernel has none of
/// that name.
pub fn genl_family(name: &str) -> Result<Option<u16>> {
    let mut payload = vec![CTRL_CMD_GETFAMILY, 1, 0, 0];
    let mut cname = name.as_bytes().to_vec();
    cname.push(0);
    put_attr(&mut payload, CTRL_ATTR_FAMILY_NAME, &cname);
    let replies = match request(
        netlink_sys::protocols::NETLINK_GENERIC,
        GENL_ID_CTRL,
        0,
        &payload,
    ) {
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
        for nla in netlink_packet_core::NlasIterator::new(reply.get(4..).unwrap_or_default()) {
            let nla = nla.map_err(|e| anyhow::anyhow!("bad attribute from nlctrl: {e}"))?;
            if nla.kind() == CTRL_ATTR_FAMILY_ID {
                return Ok(Some(u16::from_ne_bytes(
                    nla.value()
                        .get(..2)
                        .context("short family id")?
                        .try_into()?,
                )));
            }
        }
    }
    bail!("nlctrl answered without a family id for {name}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generic_netlink_families_resolve_on_this_kernel() {
        assert!(unsafe { libc::geteuid() } == 0, "needs root");
        // nlctrl names itself; a made-up family is absent, not an error.
        assert_eq!(genl_family("nlctrl").unwrap(), Some(GENL_ID_CTRL));
        assert_eq!(genl_family("no-such-family").unwrap(), None);
    }
}
