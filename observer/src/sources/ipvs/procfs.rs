//! IPVS's text files: `/proc/net/ip_vs` (the table, where generic netlink
//! is not there) and `/proc/net/ip_vs_conn` (the connections it scheduled,
//! which no netlink command dumps).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use anyhow::{Context as _, Result, bail};

use super::{IpvsConn, IpvsDest, IpvsService};

/// `0A60000A:0050` (IPv4 as a big-endian hex word) or `[fd00:...]:0050`.
fn proc_addr(s: &str) -> Result<SocketAddr> {
    let (host, port) = s
        .rsplit_once(':')
        .with_context(|| format!("bad address {s:?}"))?;
    let port = u16::from_str_radix(port, 16).with_context(|| format!("bad port in {s:?}"))?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    Ok(SocketAddr::new(proc_ip(host)?, port))
}

/// An address as the kernel prints it there: IPv4 as 8 hex digits
/// (`%08X`), IPv6 in full (`%pI6`).
fn proc_ip(s: &str) -> Result<IpAddr> {
    if s.contains(':') {
        return Ok(IpAddr::V6(
            s.parse()
                .with_context(|| format!("bad IPv6 address {s:?}"))?,
        ));
    }
    if s.len() != 8 {
        bail!("bad IPv4 address {s:?}");
    }
    Ok(IpAddr::V4(Ipv4Addr::from(
        u32::from_str_radix(s, 16).with_context(|| format!("bad IPv4 address {s:?}"))?,
    )))
}

fn protocol_number(name: &str) -> Option<u8> {
    match name {
        "TCP" => Some(6),
        "UDP" => Some(17),
        "SCTP" => Some(132),
        _ => None,
    }
}

/// Parses `/proc/net/ip_vs`.
pub fn parse_proc(text: &str) -> Result<Vec<IpvsService>> {
    let mut out: Vec<IpvsService> = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let bad = || format!("/proc/net/ip_vs line {}: {line:?}", n + 1);
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
                    stats: None,
                });
            }
            [proto, a, sched, ..] if protocol_number(proto).is_some() => out.push(IpvsService {
                protocol: protocol_number(proto).unwrap_or_default(),
                address: Some(proc_addr(a).with_context(bad)?),
                fwmark: None,
                scheduler: (*sched).to_owned(),
                destinations: Vec::new(),
                stats: None,
            }),
            ["FWM", mark, sched, ..] => out.push(IpvsService {
                protocol: 0,
                address: None,
                fwmark: Some(u32::from_str_radix(mark, 16).with_context(bad)?),
                scheduler: (*sched).to_owned(),
                destinations: Vec::new(),
                stats: None,
            }),
            _ => bail!("unexpected {}", bad()),
        }
    }
    Ok(out)
}

/// Parses `/proc/net/ip_vs_conn`: `Pro FromIP FPrt ToIP TPrt DestIP DPrt
/// State Expires [PEName PEData]`, addresses as in [`proc_ip`], ports in
/// hex. Connections of protocols other than TCP, UDP and SCTP (IPVS also
/// tracks ICMP errors) are left out.
pub fn parse_conns(text: &str) -> Result<Vec<IpvsConn>> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let bad = || format!("/proc/net/ip_vs_conn line {}: {line:?}", n + 1);
        match f.as_slice() {
            ["Pro", ..] | [] => {}
            [
                proto,
                cip,
                cport,
                vip,
                vport,
                dip,
                dport,
                state,
                _expires,
                ..,
            ] => {
                let Some(protocol) = protocol_number(proto) else {
                    continue;
                };
                let at = |ip: &str, port: &str| -> Result<SocketAddr> {
                    Ok(SocketAddr::new(
                        proc_ip(ip)?,
                        u16::from_str_radix(port, 16)
                            .with_context(|| format!("bad port {port:?}"))?,
                    ))
                };
                out.push(IpvsConn {
                    protocol,
                    client: at(cip, cport).with_context(bad)?,
                    virtual_address: at(vip, vport).with_context(bad)?,
                    destination: at(dip, dport).with_context(bad)?,
                    state: (*state).to_owned(),
                });
            }
            _ => bail!("unexpected {}", bad()),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROC_IP_VS: &str = include_str!("../../../tests/fixtures/ipvs/proc_net_ip_vs-6.1.txt");
    const PROC_IP_VS_CONN: &str =
        include_str!("../../../tests/fixtures/ipvs/proc_net_ip_vs_conn-6.1.txt");
    const IPVSADM_LN: &str = include_str!("../../../tests/fixtures/ipvs/ipvsadm-Ln-6.1.txt");
    const IPVSADM_LNC: &str = include_str!("../../../tests/fixtures/ipvs/ipvsadm-Lnc-6.1.txt");

    /// `ipvsadm -Ln`'s lines for a table (services sorted as it sorts them
    /// is not needed: compared as sets of lines).
    fn as_ipvsadm(table: &[IpvsService]) -> Vec<String> {
        let mut out = Vec::new();
        for s in table {
            let proto = match s.protocol {
                6 => "TCP",
                17 => "UDP",
                _ => "SCTP",
            };
            out.push(format!("{proto} {} {}", s.address.unwrap(), s.scheduler));
            for d in &s.destinations {
                out.push(format!(
                    "-> {} {} {} {} {}",
                    d.address, d.forward, d.weight, d.active_conns, d.inactive_conns
                ));
            }
        }
        out.sort();
        out
    }

    fn lines_of(text: &str, skip: usize) -> Vec<String> {
        let mut out: Vec<String> = text
            .lines()
            .skip(skip)
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect();
        out.sort();
        out
    }

    #[test]
    fn a_live_kernels_proc_net_ip_vs_is_what_ipvsadm_printed() {
        let table = parse_proc(PROC_IP_VS).unwrap();
        assert_eq!(as_ipvsadm(&table), lines_of(IPVSADM_LN, 3));
        assert!(table.iter().all(|s| s.stats.is_none()));
    }

    #[test]
    fn a_live_kernels_connections_are_what_ipvsadm_lnc_printed() {
        let conns = parse_conns(PROC_IP_VS_CONN).unwrap();
        let shown: Vec<String> = conns
            .iter()
            .map(|c| {
                format!(
                    "{} {} {} {} {}",
                    if c.protocol == 6 { "TCP" } else { "UDP" },
                    c.state,
                    c.client,
                    c.virtual_address,
                    c.destination
                )
            })
            .collect();
        // ipvsadm -Lnc: pro expire state source virtual destination.
        let want: Vec<String> = IPVSADM_LNC
            .lines()
            .skip(2)
            .map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                format!("{} {} {} {} {}", f[0], f[2], f[3], f[4], f[5])
            })
            .collect();
        assert_eq!(shown, want);
        assert_eq!(
            (conns[0].protocol, conns[0].destination),
            (17, "10.2.0.3:5353".parse().unwrap())
        );
    }

    #[test]
    fn ipv6_connections_and_bad_lines() {
        // %pI6: every group in full.
        let text = "Pro FromIP   FPrt ToIP     TPrt DestIP   DPrt State       Expires PEName PEData
TCP fd00:0010:0244:0000:0000:0000:0000:0001 9C40 fd00:0010:0096:0000:0000:0000:0000:000a 0050 fd00:0010:0244:0000:0000:0000:0000:0005 1F90 ESTABLISHED     899
ICMP 0A000001 0000 0A60000A 0000 0A020003 0000 ICMP              1
";
        let conns = parse_conns(text).unwrap();
        assert_eq!(conns.len(), 1, "ICMP is left out");
        assert_eq!(
            (
                conns[0].client,
                conns[0].virtual_address,
                conns[0].destination
            ),
            (
                "[fd00:10:244::1]:40000".parse().unwrap(),
                "[fd00:10:96::a]:80".parse().unwrap(),
                "[fd00:10:244::5]:8080".parse().unwrap()
            )
        );
        for bad in [
            "TCP 0A60000A ZZZZ 0A60000A 0050 0A020002 1F90 SYN_RECV 58",
            "TCP 0A6000 ACCE 0A60000A 0050 0A020002 1F90 SYN_RECV 58",
            "TCP 0A60000A ACCE 0A60000A",
        ] {
            let e = parse_conns(bad).unwrap_err();
            assert!(format!("{e:#}").contains("ip_vs_conn line 1"), "{e:#}");
        }
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
}
