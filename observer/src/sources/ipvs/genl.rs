//! The IPVS table over generic netlink (family `IPVS`), as `ipvsadm -Ln
//! --stats` reads it: one dump of the virtual services, then one of each
//! service's real servers.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use anyhow::{Context as _, Result, bail};
use bytes::Bytes;
use netlink_packet_core::{NlaBuffer, NlasIterator};

use super::{IpvsDest, IpvsService, IpvsStats};

// include/uapi/linux/ip_vs.h
const SVC_ATTR_AF: u16 = 1;
const SVC_ATTR_PROTOCOL: u16 = 2;
const SVC_ATTR_ADDR: u16 = 3;
const SVC_ATTR_PORT: u16 = 4;
const SVC_ATTR_FWMARK: u16 = 5;
const SVC_ATTR_SCHED_NAME: u16 = 6;
const SVC_ATTR_STATS: u16 = 10;
const SVC_ATTR_STATS64: u16 = 12;
const DEST_ATTR_ADDR: u16 = 1;
const DEST_ATTR_PORT: u16 = 2;
const DEST_ATTR_FWD_METHOD: u16 = 3;
const DEST_ATTR_WEIGHT: u16 = 4;
const DEST_ATTR_ACTIVE_CONNS: u16 = 7;
const DEST_ATTR_INACT_CONNS: u16 = 8;
const DEST_ATTR_STATS: u16 = 10;
const DEST_ATTR_ADDR_FAMILY: u16 = 11;
const DEST_ATTR_STATS64: u16 = 12;
const STATS_ATTR_CONNS: u16 = 1;
const STATS_ATTR_INPKTS: u16 = 2;
const STATS_ATTR_OUTPKTS: u16 = 3;
const STATS_ATTR_INBYTES: u16 = 4;
const STATS_ATTR_OUTBYTES: u16 = 5;
const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;

/// The attributes in `payload`: kind (flag bits masked) and value, borrowed.
fn attrs(payload: &[u8]) -> Result<Vec<(u16, &[u8])>> {
    let mut out = Vec::new();
    for nla in NlasIterator::new(payload) {
        let nla: NlaBuffer<&[u8]> =
            nla.map_err(|e| anyhow::anyhow!("bad netlink attribute: {e}"))?;
        // Mask the nested / byte-order flag bits.
        let kind = nla.kind() & 0x3fff;
        let len = nla.value_length();
        // The value after the 4-byte attribute header (checked above).
        out.push((kind, &nla.into_inner()[4..4 + len]));
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

/// A counter: `STATS` has u32 and u64 ones, `STATS64` only u64.
fn uint_ne(v: &[u8]) -> Result<u64> {
    match v.len() {
        4 => Ok(u32_ne(v)?.into()),
        8 => Ok(u64::from_ne_bytes(v.try_into()?)),
        n => bail!("a counter of {n} bytes"),
    }
}

/// The nested counters of a service or destination: `STATS64` where the
/// kernel sends it (4.x and later), else the older `STATS`.
fn stats(a: &[(u16, &[u8])], stats64: u16, stats32: u16) -> Result<Option<IpvsStats>> {
    let get = |k| a.iter().find(|(kind, _)| *kind == k).map(|(_, v)| v);
    let Some(nested) = get(stats64).or_else(|| get(stats32)) else {
        return Ok(None);
    };
    let c = attrs(nested).context("IPVS counters")?;
    let counter = |k| -> Result<u64> {
        c.iter()
            .find(|(kind, _)| *kind == k)
            .map(|(_, v)| uint_ne(v))
            .transpose()
            .map(Option::unwrap_or_default)
    };
    Ok(Some(IpvsStats {
        connections: counter(STATS_ATTR_CONNS)?,
        in_packets: counter(STATS_ATTR_INPKTS)?,
        out_packets: counter(STATS_ATTR_OUTPKTS)?,
        in_bytes: counter(STATS_ATTR_INBYTES)?,
        out_bytes: counter(STATS_ATTR_OUTBYTES)?,
    }))
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
    let get = |k| a.iter().find(|(kind, _)| *kind == k).map(|(_, v)| *v);
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
        stats: stats(&a, SVC_ATTR_STATS64, SVC_ATTR_STATS)?,
    })
}

/// Decodes the nested IPVS_CMD_ATTR_DEST of a GET_DEST reply; `svc_af` is
/// the service's family (older kernels omit the destination's own).
pub fn decode_dest(payload: &[u8], svc_af: u16) -> Result<IpvsDest> {
    let a = attrs(payload)?;
    let get = |k| a.iter().find(|(kind, _)| *kind == k).map(|(_, v)| *v);
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
        stats: stats(&a, DEST_ATTR_STATS64, DEST_ATTR_STATS)?,
    })
}

const IPVS_CMD_GET_SERVICE: u8 = 4;
const IPVS_CMD_GET_DEST: u8 = 8;
const IPVS_CMD_ATTR_SERVICE: u16 = 1;
const IPVS_CMD_ATTR_DEST: u16 = 2;
const IPVS_GENL_VERSION: u8 = 1;
const NLA_F_NESTED: u16 = 0x8000;

/// The payloads of one nested attribute kind in genl replies. The kernel
/// does not set NLA_F_NESTED on them (see the recorded replies).
pub fn nested_payloads(replies: &[Bytes], kind: u16) -> Result<Vec<Bytes>> {
    let mut out = Vec::new();
    for r in replies {
        // After the 4-byte generic netlink header.
        for (k, v) in attrs(r.get(4..).context("short generic netlink reply")?)? {
            if k == kind {
                out.push(r.slice_ref(v));
            }
        }
    }
    Ok(out)
}

/// The IPVS table over generic netlink, as `ipvsadm -Ln` reads it; `None`
/// where the kernel has no IPVS family.
pub fn read_netlink() -> Result<Option<Vec<IpvsService>>> {
    use crate::sources::netlink::{NLM_F_DUMP, genl_family, put_attr, request};
    let Some(family) = genl_family("IPVS")? else {
        return Ok(None);
    };
    let genl = |cmd: u8| vec![cmd, IPVS_GENL_VERSION, 0, 0];
    let generic = netlink_sys::protocols::NETLINK_GENERIC;
    let replies = request(generic, family, NLM_F_DUMP, &genl(IPVS_CMD_GET_SERVICE))
        .context("dumping IPVS services")?;
    let mut services = Vec::new();
    for svc_attrs in nested_payloads(&replies, IPVS_CMD_ATTR_SERVICE)? {
        let mut svc = decode_service(&svc_attrs).context("decoding an IPVS service")?;
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
            svc.destinations
                .push(decode_dest(&d, af).context("decoding an IPVS destination")?);
        }
        services.push(svc);
    }
    Ok(Some(services))
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::sources::netlink::put_attr as nla;

    /// A live 6.1 kernel's replies (`tests/fixtures/ipvs/`, see its
    /// README): each after its 16-byte netlink header.
    fn recorded(which: &str) -> Vec<Bytes> {
        let json: serde_json::Value = serde_json::from_str(include_str!(
            "../../../tests/fixtures/ipvs/ipvs-genl-6.1.json"
        ))
        .unwrap();
        json[which]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| {
                let h = h.as_str().unwrap();
                (0..h.len())
                    .step_by(2)
                    .map(|i| u8::from_str_radix(&h[i..i + 2], 16).unwrap())
                    .collect::<Vec<u8>>()
                    .into()
            })
            .collect()
    }

    fn stats(connections: u64, in_packets: u64, in_bytes: u64) -> Option<IpvsStats> {
        Some(IpvsStats {
            connections,
            in_packets,
            out_packets: 0,
            in_bytes,
            out_bytes: 0,
        })
    }

    #[test]
    fn a_live_kernels_services_as_ipvsadm_shows_them() {
        let services: Vec<IpvsService> =
            nested_payloads(&recorded("service_dump"), IPVS_CMD_ATTR_SERVICE)
                .unwrap()
                .iter()
                .map(|p| decode_service(p).unwrap())
                .collect();
        // The datagram to :53 (29 bytes) as ipvsadm-Ln-stats-6.1.txt
        // shows it; these replies were recorded before the SYN to :80 that
        // ipvsadm's later dump counts (1 connection, 60 bytes).
        let seen: Vec<_> = services
            .iter()
            .map(|s| (s.protocol, s.address, s.scheduler.as_str(), s.stats))
            .collect();
        assert_eq!(
            seen,
            vec![
                (
                    6,
                    Some("[fd00:10:96::a]:80".parse().unwrap()),
                    "rr",
                    stats(0, 0, 0)
                ),
                (
                    6,
                    Some("10.96.0.10:80".parse().unwrap()),
                    "rr",
                    stats(0, 0, 0)
                ),
                (
                    17,
                    Some("10.96.0.10:53".parse().unwrap()),
                    "rr",
                    stats(1, 1, 29)
                ),
            ]
        );
        assert!(services.iter().all(|s| s.fwmark.is_none()));
    }

    #[test]
    fn a_live_kernels_destinations() {
        let dests: Vec<IpvsDest> = nested_payloads(&recorded("dest_dump"), IPVS_CMD_ATTR_DEST)
            .unwrap()
            .iter()
            .map(|p| decode_dest(p, AF_INET6).unwrap())
            .collect();
        assert_eq!(
            dests,
            vec![IpvsDest {
                address: "[fd00:10:244::5]:8080".parse().unwrap(),
                forward: "Masq".into(),
                weight: 1,
                active_conns: 0,
                inactive_conns: 0,
                stats: stats(0, 0, 0),
            }]
        );
        // Cut anywhere inside, a reply is an error, never a panic.
        let whole = &recorded("dest_dump")[0][4..];
        for end in 1..whole.len() {
            let _ = attrs(&whole[..end]).and_then(|a| {
                a.iter()
                    .map(|(_, v)| decode_dest(v, AF_INET6).map(drop))
                    .collect::<Result<Vec<_>>>()
            });
        }
    }

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
        assert_eq!(
            (s.fwmark, s.scheduler.as_str(), s.stats),
            (None, "wlc", None)
        );
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
        // Counters of a size no kernel sends: an error, not a zero.
        let mut bad = p.clone();
        let mut nested = Vec::new();
        nla(&mut nested, STATS_ATTR_CONNS, &[1, 2, 3]);
        nla(&mut bad, DEST_ATTR_STATS64, &nested);
        assert!(decode_dest(&bad, AF_INET).is_err());
    }
}
