//! kube-proxy's IPVS table, as `ipvsadm -Ln` shows it: virtual services
//! and their real servers. Read over generic netlink (family `IPVS`) where
//! the kernel has IPVS, falling back to `/proc/net/ip_vs`. This machine's
//! kernel has no IPVS: the decoders are tested on recorded attribute
//! payloads and `/proc` text, and [`read`] says why it found nothing.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use anyhow::{Context as _, Result, bail};
use netlink_packet_core::{NlaBuffer, NlasIterator};
use serde::Serialize;

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct IpvsService {
    /// IP protocol number (6, 17, 132); 0 for firewall-mark services.
    pub protocol: u8,
    /// The virtual address, or `None` for a firewall-mark service.
    pub address: Option<SocketAddr>,
    pub fwmark: Option<u32>,
    pub scheduler: String,
    pub destinations: Vec<IpvsDest>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct IpvsDest {
    pub address: SocketAddr,
    /// `Masq`, `Local`, `Tunnel`, `Route`, `Bypass`.
    pub forward: String,
    pub weight: u32,
    pub active_conns: u32,
    pub inactive_conns: u32,
}

// include/uapi/linux/ip_vs.h
const SVC_ATTR_AF: u16 = 1;
const SVC_ATTR_PROTOCOL: u16 = 2;
const SVC_ATTR_ADDR: u16 = 3;
const SVC_ATTR_PORT: u16 = 4;
const SVC_ATTR_FWMARK: u16 = 5;
const SVC_ATTR_SCHED_NAME: u16 = 6;
const DEST_ATTR_ADDR: u16 = 1;
const DEST_ATTR_PORT: u16 = 2;
const DEST_ATTR_FWD_METHOD: u16 = 3;
const DEST_ATTR_WEIGHT: u16 = 4;
const DEST_ATTR_ACTIVE_CONNS: u16 = 7;
const DEST_ATTR_INACT_CONNS: u16 = 8;
const DEST_ATTR_ADDR_FAMILY: u16 = 11;
const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;

fn attrs(payload: &[u8]) -> Result<Vec<(u16, Vec<u8>)>> {
    let mut out = Vec::new();
    for nla in NlasIterator::new(payload) {
        let nla: NlaBuffer<&[u8]> =
            nla.map_err(|e| anyhow::anyhow!("bad netlink attribute: {e}"))?;
        // Mask the nested / byte-order flag bits.
        out.push((nla.kind() & 0x3fff, nla.value().to_vec()));
    }
    Ok(out)
}

fn u16_ne(v: &[u8]) -> Result<u16> {
    Ok(u16::from_ne_bytes(
        v.get(..2).context("short u16 attribute")?.try_into()?,
    ))
}

fn u32_ne(v: &[u8]) -> Result<u32> {
    Ok(u32::from_ne_bytes(
        v.get(..4).context("short u32 attribute")?.try_into()?,
    ))
}

/// Ports are in network byte order.
fn port(v: &[u8]) -> Result<u16> {
    Ok(u16::from_be_bytes(
        v.get(..2).context("short port attribute")?.try_into()?,
    ))
}

/// `union nf_inet_addr`: 16 bytes, IPv4 in the first four.
fn addr(af: u16, v: &[u8]) -> Result<IpAddr> {
    match af {
        AF_INET => Ok(IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(
            v.get(..4).context("short address")?,
        )?))),
        AF_INET6 => Ok(IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(
            v.get(..16).context("short address")?,
        )?))),
        other => bail!("unknown address family {other}"),
    }
}

fn forward_name(method: u32) -> &'static str {
    // IP_VS_CONN_F_FWD_MASK values.
    match method & 7 {
        0 => "Masq",
        1 => "Local",
        2 => "Tunnel",
        3 => "Route",
        4 => "Bypass",
        _ => "?",
    }
}

/// Decodes the nested IPVS_CMD_ATTR_SERVICE of a GET_SERVICE reply.
pub fn decode_service(payload: &[u8]) -> Result<IpvsService> {
    let a = attrs(payload)?;
    let get = |k| {
        a.iter()
            .find(|(kind, _)| *kind == k)
            .map(|(_, v)| v.as_slice())
    };
    let af = get(SVC_ATTR_AF).map(u16_ne).transpose()?.unwrap_or(AF_INET);
    let fwmark = get(SVC_ATTR_FWMARK)
        .map(u32_ne)
        .transpose()?
        .filter(|m| *m != 0);
    let address = match (get(SVC_ATTR_ADDR), get(SVC_ATTR_PORT), fwmark) {
        (Some(a), Some(p), None) => Some(SocketAddr::new(addr(af, a)?, port(p)?)),
        _ => None,
    };
    Ok(IpvsService {
        protocol: get(SVC_ATTR_PROTOCOL).map(u16_ne).transpose()?.unwrap_or(0) as u8,
        address,
        fwmark,
        scheduler: get(SVC_ATTR_SCHED_NAME)
            .map(|s| String::from_utf8_lossy(s).trim_end_matches('\0').to_owned())
            .unwrap_or_default(),
        destinations: Vec::new(),
    })
}

/// Decodes the nested IPVS_CMD_ATTR_DEST of a GET_DEST reply; `svc_af` is
/// the service's family (older kernels omit the destination's own).
pub fn decode_dest(payload: &[u8], svc_af: u16) -> Result<IpvsDest> {
    let a = attrs(payload)?;
    let get = |k| {
        a.iter()
            .find(|(kind, _)| *kind == k)
            .map(|(_, v)| v.as_slice())
    };
    let af = get(DEST_ATTR_ADDR_FAMILY)
        .map(u16_ne)
        .transpose()?
        .unwrap_or(svc_af);
    let ip = addr(
        af,
        get(DEST_ATTR_ADDR).context("destination without address")?,
    )?;
    let p = port(get(DEST_ATTR_PORT).context("destination without port")?)?;
    let u32_of = |k| {
        get(k)
            .map(u32_ne)
            .transpose()
            .map(Option::unwrap_or_default)
    };
    Ok(IpvsDest {
        address: SocketAddr::new(ip, p),
        forward: forward_name(u32_of(DEST_ATTR_FWD_METHOD)?).to_owned(),
        weight: u32_of(DEST_ATTR_WEIGHT)?,
        active_conns: u32_of(DEST_ATTR_ACTIVE_CONNS)?,
        inactive_conns: u32_of(DEST_ATTR_INACT_CONNS)?,
    })
}

/// `0A60000A:0050` (IPv4 as a big-endian hex word) or `[fd00:...]:0050`.
fn proc_addr(s: &str) -> Result<SocketAddr> {
    let (host, port) = s
        .rsplit_once(':')
        .with_context(|| format!("bad address {s:?}"))?;
    let port = u16::from_str_radix(port, 16).with_context(|| format!("bad port in {s:?}"))?;
    let ip = if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        IpAddr::V6(
            v6.parse()
                .with_context(|| format!("bad IPv6 address in {s:?}"))?,
        )
    } else {
        IpAddr::V4(Ipv4Addr::from(
            u32::from_str_radix(host, 16).with_context(|| format!("bad IPv4 address in {s:?}"))?,
        ))
    };
    Ok(SocketAddr::new(ip, port))
}

/// Parses `/proc/net/ip_vs`.
pub fn parse_proc(text: &str) -> Result<Vec<IpvsService>> {
    let mut out: Vec<IpvsService> = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let bad = || format!("line {}: {line:?}", n + 1);
        match f.as_slice() {
            ["IP", ..] | ["Prot", ..] | ["->", "RemoteAddress:Port", ..] | [] => {}
            ["->", a, fwd, weight, active, inactive, ..] => {
                let svc = out
                    .last_mut()
                    .with_context(|| format!("{}: destination before any service", bad()))?;
                svc.destinations.push(IpvsDest {
                    address: proc_addr(a).with_context(bad)?,
                    forward: (*fwd).to_owned(),
                    weight: weight.parse().with_context(bad)?,
                    active_conns: active.parse().with_context(bad)?,
                    inactive_conns: inactive.parse().with_context(bad)?,
                });
            }
            [proto @ ("TCP" | "UDP" | "SCTP"), a, sched, ..] => out.push(IpvsService {
                protocol: match *proto {
                    "TCP" => 6,
                    "UDP" => 17,
                    _ => 132,
                },
                address: Some(proc_addr(a).with_context(bad)?),
                fwmark: None,
                scheduler: (*sched).to_owned(),
                destinations: Vec::new(),
            }),
            ["FWM", mark, sched, ..] => out.push(IpvsService {
                protocol: 0,
                address: None,
                fwmark: Some(u32::from_str_radix(mark, 16).with_context(bad)?),
                scheduler: (*sched).to_owned(),
                destinations: Vec::new(),
            }),
            _ => bail!("unexpected {}", bad()),
        }
    }
    Ok(out)
}

const IPVS_CMD_GET_SERVICE: u8 = 4;
const IPVS_CMD_GET_DEST: u8 = 8;
const IPVS_CMD_ATTR_SERVICE: u16 = 1;
const IPVS_CMD_ATTR_DEST: u16 = 2;
const IPVS_GENL_VERSION: u8 = 1;
const NLA_F_NESTED: u16 = 0x8000;

/// The payloads of one nested attribute kind in genl replies.
fn nested_payloads(replies: &[Vec<u8>], kind: u16) -> Result<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    for r in replies {
        // After the 4-byte generic netlink header.
        for (k, v) in attrs(r.get(4..).context("short generic netlink reply")?)? {
            if k == kind {
                out.push(v);
            }
        }
    }
    Ok(out)
}

/// The IPVS table over generic netlink, as `ipvsadm -Ln` reads it; `None`
/// where the kernel has no IPVS family.
pub fn read_netlink() -> Result<Option<Vec<IpvsService>>> {
    use super::netlink::{NLM_F_DUMP, genl_family, put_attr, request};
    let Some(family) = genl_family("IPVS")? else {
        return Ok(None);
    };
    let genl = |cmd: u8| vec![cmd, IPVS_GENL_VERSION, 0, 0];
    let generic = netlink_sys::protocols::NETLINK_GENERIC;
    let replies = request(generic, family, NLM_F_DUMP, &genl(IPVS_CMD_GET_SERVICE))
        .context("dumping IPVS services")?;
    let mut services = Vec::new();
    for svc_attrs in nested_payloads(&replies, IPVS_CMD_ATTR_SERVICE)? {
        let mut svc = decode_service(&svc_attrs)?;
        let af = if svc.address.is_some_and(|a| a.is_ipv6()) {
            AF_INET6
        } else {
            AF_INET
        };
        // Destinations are asked for by the service's own attributes.
        let mut ask = genl(IPVS_CMD_GET_DEST);
        put_attr(&mut ask, IPVS_CMD_ATTR_SERVICE | NLA_F_NESTED, &svc_attrs);
        let dests =
            request(generic, family, NLM_F_DUMP, &ask).context("dumping IPVS destinations")?;
        for d in nested_payloads(&dests, IPVS_CMD_ATTR_DEST)? {
            svc.destinations.push(decode_dest(&d, af)?);
        }
        services.push(svc);
    }
    Ok(Some(services))
}

/// The IPVS table: over generic netlink, else from `/proc/net/ip_vs`; an
/// error saying so where the kernel has no IPVS.
pub fn read() -> Result<Vec<IpvsService>> {
    match read_netlink() {
        Ok(Some(table)) => Ok(table),
        Ok(None) => read_proc(),
        Err(e) => read_proc().map_err(|p| e.context(format!("and then: {p:#}"))),
    }
}

/// The IPVS table from `/proc/net/ip_vs`; an error saying so where the
/// kernel has no IPVS.
pub fn read_proc() -> Result<Vec<IpvsService>> {
    match std::fs::read_to_string("/proc/net/ip_vs") {
        Ok(text) => parse_proc(&text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            bail!("this kernel has no IPVS (no /proc/net/ip_vs)")
        }
        Err(e) => Err(e).context("reading /proc/net/ip_vs"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::sources::netlink::put_attr as nla;

    #[test]
    fn service_attributes_as_the_kernel_sends_them() {
        // The attribute values of cloudflare/ipvs's "single" service test
        // vector (AF_INET TCP 127.0.1.1:80, wlc, timeout 360, /31).
        let mut p = Vec::new();
        nla(&mut p, SVC_ATTR_AF, &[0x02, 0x00]);
        nla(&mut p, SVC_ATTR_PROTOCOL, &[0x06, 0x00]);
        nla(
            &mut p,
            SVC_ATTR_ADDR,
            &[0x7f, 0, 0x01, 0x01, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        );
        nla(&mut p, SVC_ATTR_PORT, &[0x00, 0x50]);
        nla(&mut p, SVC_ATTR_SCHED_NAME, b"wlc");
        nla(&mut p, 8, &[0x68, 0x01, 0x00, 0x00]);
        nla(&mut p, 9, &[0xff, 0xff, 0xff, 0xfe]);
        nla(&mut p, 7, &[0; 8]);
        let s = decode_service(&p).unwrap();
        assert_eq!(s.protocol, 6);
        assert_eq!(s.address, Some("127.0.1.1:80".parse().unwrap()));
        assert_eq!((s.fwmark, s.scheduler.as_str()), (None, "wlc"));
    }

    #[test]
    fn destination_attributes() {
        let mut p = Vec::new();
        nla(
            &mut p,
            DEST_ATTR_ADDR,
            &[10, 244, 0, 65, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        );
        nla(&mut p, DEST_ATTR_PORT, &[0x1f, 0x90]);
        nla(&mut p, DEST_ATTR_FWD_METHOD, &0u32.to_ne_bytes());
        nla(&mut p, DEST_ATTR_WEIGHT, &1u32.to_ne_bytes());
        nla(&mut p, DEST_ATTR_ACTIVE_CONNS, &3u32.to_ne_bytes());
        nla(&mut p, DEST_ATTR_INACT_CONNS, &7u32.to_ne_bytes());
        let d = decode_dest(&p, AF_INET).unwrap();
        assert_eq!(d.address, "10.244.0.65:8080".parse().unwrap());
        assert_eq!(
            (
                d.forward.as_str(),
                d.weight,
                d.active_conns,
                d.inactive_conns
            ),
            ("Masq", 1, 3, 7)
        );
        // Truncated: an error, not a panic.
        assert!(decode_dest(&p[..6], AF_INET).is_err());
    }

    #[test]
    fn proc_net_ip_vs_as_kube_proxy_leaves_it() {
        let text = "IP Virtual Server version 1.2.1 (size=4096)
Prot LocalAddress:Port Scheduler Flags
  -> RemoteAddress:Port Forward Weight ActiveConn InActConn
TCP  0A60000A:0050 rr
  -> 0AF40001:1F90      Masq    1      2          5
  -> 0AF40041:1F90      Masq    1      0          1
UDP  0A60000A:0035 rr
  -> 0AF40002:14E9      Masq    1      0          0
TCP  [fd00:0010:0096:0000:0000:0000:0000:000a]:0050 rr
  -> [fd00:0010:0244:0000:0000:0000:0000:0001]:1F90      Masq    1      0          0
FWM  00000001 rr
";
        let s = parse_proc(text).unwrap();
        assert_eq!(s.len(), 4);
        assert_eq!(
            (s[0].protocol, s[0].address),
            (6, Some("10.96.0.10:80".parse().unwrap()))
        );
        assert_eq!(
            s[0].destinations[1].address,
            "10.244.0.65:8080".parse().unwrap()
        );
        assert_eq!(
            (
                s[0].destinations[0].active_conns,
                s[0].destinations[0].inactive_conns
            ),
            (2, 5)
        );
        assert_eq!(
            s[1].destinations[0].address,
            "10.244.0.2:5353".parse().unwrap()
        );
        assert_eq!(s[2].address, Some("[fd00:10:96::a]:80".parse().unwrap()));
        assert_eq!((s[3].fwmark, s[3].address), (Some(1), None));
        assert!(parse_proc("TCP  nothex:0050 rr").is_err());
    }

    #[test]
    fn real_kernel_ipvs_table() {
        // Needs a kernel with IPVS; this one has none, and says so.
        match read() {
            Ok(table) => assert!(
                table
                    .iter()
                    .all(|s| s.address.is_some() || s.fwmark.is_some())
            ),
            Err(e) => {
                assert!(format!("{e:#}").contains("no IPVS"), "{e:#}");
                // No table to check here: what was checked is that the
                // absence is said plainly.
                eprintln!("real_kernel_ipvs_table: {e:#}");
            }
        }
    }
}
