//! Packet parsing with direct packet access: link layer, IPv4/IPv6 (with
//! extension headers), TCP/UDP/ICMP, and one level of encapsulation (IPIP,
//! VXLAN, WireGuard). Nothing here writes to the packet.

use core::mem::size_of;

use observer_common::{Encap, FAMILY_IPV4, FAMILY_IPV6, FlowKey, VXLAN_PORT, WIREGUARD_PORT};

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;

const IPPROTO_IPIP: u8 = 4;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const IPPROTO_IPV6: u8 = 41;
const IPPROTO_ICMP: u8 = 1;
const IPPROTO_ICMPV6: u8 = 58;

const VXLAN_HLEN: usize = 8;
const UDP_HLEN: usize = 8;
/// WireGuard data message: 16-byte header before, 16-byte tag after.
const WG_DATA_OVERHEAD: usize = 32;
const WG_MSG_DATA: u8 = 4;

/// Most IPv6 extension headers we walk before giving up on finding L4.
const MAX_IPV6_EXT: usize = 6;

/// Why a packet did not become a flow.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Fail {
    /// A header reaches beyond the linear data: may be retried after
    /// `bpf_skb_pull_data`, else counted as unparsed.
    Truncated,
    /// A header is invalid (bad version, bad header length).
    Malformed,
    /// Not an IP packet (ARP, LLDP, ...), or an encapsulated non-IP frame.
    NonIp,
}

/// Where the packet starts: an Ethernet header, or the IP header directly
/// (L3 devices such as `tunl0`).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Link {
    Ethernet,
    L3,
}

/// What the parser learned about one packet.
pub struct Parsed {
    /// Offset of the IP header whose bytes are counted (the inner one for
    /// IPIP/VXLAN).
    pub l3_off: usize,
    /// Offset of the outermost IP header.
    pub outer_off: usize,
    /// Bytes of the counted packet's IP + L4 headers, repeated in every GSO
    /// segment.
    pub hdr_len: usize,
    /// Encapsulation bytes not counted as IP bytes of a WireGuard packet.
    pub wg_overhead: usize,
    pub tcp_flags: u8,
}

/// Headers must start within this many bytes of the frame; also what lets
/// the verifier bound offsets that went through the stack.
const MAX_HDR_OFF: usize = 1024;

#[inline(always)]
fn ptr_at<T>(data: usize, end: usize, off: usize) -> Result<*const T, Fail> {
    if off > MAX_HDR_OFF {
        return Err(Fail::Malformed);
    }
    if data + off + size_of::<T>() > end {
        return Err(Fail::Truncated);
    }
    Ok((data + off) as *const T)
}

#[inline(always)]
fn u8_at(data: usize, end: usize, off: usize) -> Result<u8, Fail> {
    // SAFETY: bounds checked against data_end by ptr_at.
    Ok(unsafe { *ptr_at::<u8>(data, end, off)? })
}

#[inline(always)]
fn be16_at(data: usize, end: usize, off: usize) -> Result<u16, Fail> {
    // SAFETY: bounds checked; read_unaligned because headers sit at any
    // offset.
    let b = unsafe { ptr_at::<[u8; 2]>(data, end, off)?.read_unaligned() };
    Ok(u16::from_be_bytes(b))
}

/// Walks the link layer; returns the ethertype and the offset of what
/// follows.
#[inline(always)]
fn link(data: usize, end: usize, link: Link) -> Result<(u16, usize), Fail> {
    if link == Link::L3 {
        // L3 devices carry no link header; the IP version nibble says which
        // IP it is. (skb->protocol agrees on a real device, and this also
        // holds under BPF_PROG_TEST_RUN, which fills skb->protocol from
        // bytes 12-13 of whatever frame it is given.)
        // (Two bytes are read: LLVM folds a one-byte check at offset 0 into a
        // form the verifier cannot use.)
        return match be16_at(data, end, 0)? >> 12 {
            4 => Ok((ETH_P_IP, 0)),
            6 => Ok((ETH_P_IPV6, 0)),
            _ => Err(Fail::Malformed),
        };
    }
    let mut proto = be16_at(data, end, 12)?;
    let mut off = ETH_HLEN;
    // Up to two VLAN tags (802.1ad QinQ outer, 802.1Q inner).
    for _ in 0..2 {
        if proto != ETH_P_8021Q && proto != ETH_P_8021AD {
            break;
        }
        proto = be16_at(data, end, off + 2)?;
        off += 4;
    }
    Ok((proto, off))
}

/// The network header: addresses into the key; returns the next protocol,
/// the offset after the IP headers, and whether the L4 header is absent (a
/// non-first fragment).
struct Ip {
    proto: u8,
    l4_off: usize,
    later_fragment: bool,
}

#[inline(always)]
fn ipv4(data: usize, end: usize, off: usize, key: &mut FlowKey) -> Result<Ip, Fail> {
    // SAFETY: bounds checked; 20 bytes of fixed header.
    let h = unsafe { ptr_at::<[u8; 20]>(data, end, off)?.read_unaligned() };
    if h[0] >> 4 != 4 {
        return Err(Fail::Malformed);
    }
    let ihl = ((h[0] & 0x0f) as usize) * 4;
    if ihl < 20 {
        return Err(Fail::Malformed);
    }
    let frag_off = u16::from_be_bytes([h[6], h[7]]) & 0x1fff;
    key.family = FAMILY_IPV4;
    key.src_addr = [0; 16];
    key.dst_addr = [0; 16];
    key.src_addr[..4].copy_from_slice(&h[12..16]);
    key.dst_addr[..4].copy_from_slice(&h[16..20]);
    Ok(Ip {
        proto: h[9],
        l4_off: off + ihl,
        later_fragment: frag_off != 0,
    })
}

#[inline(always)]
fn ipv6(data: usize, end: usize, off: usize, key: &mut FlowKey) -> Result<Ip, Fail> {
    // SAFETY: bounds checked; 40 bytes of fixed header.
    let h = unsafe { ptr_at::<[u8; 40]>(data, end, off)?.read_unaligned() };
    if h[0] >> 4 != 6 {
        return Err(Fail::Malformed);
    }
    key.family = FAMILY_IPV6;
    key.src_addr.copy_from_slice(&h[8..24]);
    key.dst_addr.copy_from_slice(&h[24..40]);
    let mut next = h[6];
    let mut at = off + 40;
    let mut later_fragment = false;
    for _ in 0..MAX_IPV6_EXT {
        if !matches!(next, 0 | 43 | 60 | 44 | 51) {
            break;
        }
        // Every extension header starts with next-header and a length
        // byte and is at least 8 bytes long; one read serves them all.
        // SAFETY: bounds checked.
        let e = unsafe { ptr_at::<[u8; 4]>(data, end, at)?.read_unaligned() };
        let len = match next {
            // Fragment: fixed 8 bytes; only the first fragment has L4.
            44 => {
                later_fragment = u16::from_be_bytes([e[2], e[3]]) & 0xfff8 != 0;
                8
            }
            // Authentication header: (len + 2) * 4.
            51 => ((e[1] as usize) + 2) * 4,
            // Hop-by-hop, routing, destination options: (len + 1) * 8.
            _ => ((e[1] as usize) + 1) * 8,
        };
        next = e[0];
        at += len;
    }
    Ok(Ip {
        proto: next,
        l4_off: at,
        later_fragment,
    })
}

#[inline(always)]
fn ip(data: usize, end: usize, ethertype: u16, off: usize, key: &mut FlowKey) -> Result<Ip, Fail> {
    match ethertype {
        ETH_P_IP => ipv4(data, end, off, key),
        ETH_P_IPV6 => ipv6(data, end, off, key),
        _ => Err(Fail::NonIp),
    }
}

/// Ports (ICMP: type and code) and TCP flags; returns the L4 header length.
#[inline(always)]
fn l4(data: usize, end: usize, ip: &Ip, key: &mut FlowKey, flags: &mut u8) -> Result<usize, Fail> {
    key.protocol = ip.proto;
    key.src_port = 0;
    key.dst_port = 0;
    if ip.later_fragment {
        return Ok(0);
    }
    let off = ip.l4_off;
    match ip.proto {
        IPPROTO_TCP => {
            // SAFETY: bounds checked; 20 bytes of fixed TCP header.
            let h = unsafe { ptr_at::<[u8; 20]>(data, end, off)?.read_unaligned() };
            key.src_port = u16::from_be_bytes([h[0], h[1]]);
            key.dst_port = u16::from_be_bytes([h[2], h[3]]);
            *flags = h[13];
            let doff = ((h[12] >> 4) as usize) * 4;
            if doff < 20 {
                return Err(Fail::Malformed);
            }
            Ok(doff)
        }
        IPPROTO_UDP => {
            // SAFETY: bounds checked.
            let h = unsafe { ptr_at::<[u8; 4]>(data, end, off)?.read_unaligned() };
            key.src_port = u16::from_be_bytes([h[0], h[1]]);
            key.dst_port = u16::from_be_bytes([h[2], h[3]]);
            Ok(UDP_HLEN)
        }
        IPPROTO_ICMP | IPPROTO_ICMPV6 => {
            // SAFETY: bounds checked.
            let h = unsafe { ptr_at::<[u8; 2]>(data, end, off)?.read_unaligned() };
            key.src_port = h[0] as u16;
            key.dst_port = h[1] as u16;
            Ok(8)
        }
        _ => Ok(0),
    }
}

/// Parses one packet into `key` (all fields but ifindex and hook).
#[inline(always)]
pub fn parse(data: usize, end: usize, link_kind: Link, key: &mut FlowKey) -> Result<Parsed, Fail> {
    let (ethertype, outer_off) = link(data, end, link_kind)?;
    let mut l3_off = outer_off;
    let mut ip_hdr = ip(data, end, ethertype, outer_off, key)?;
    let mut flags = 0u8;
    let mut wg_overhead = 0usize;
    key.encap = Encap::None as u8;

    if !ip_hdr.later_fragment {
        match ip_hdr.proto {
            IPPROTO_IPIP | IPPROTO_IPV6 => {
                let inner = if ip_hdr.proto == IPPROTO_IPIP {
                    ETH_P_IP
                } else {
                    ETH_P_IPV6
                };
                l3_off = ip_hdr.l4_off;
                ip_hdr = ip(data, end, inner, l3_off, key)?;
                key.encap = Encap::Ipip as u8;
            }
            IPPROTO_UDP => {
                let ports = ip_hdr.l4_off;
                let sport = be16_at(data, end, ports)?;
                let dport = be16_at(data, end, ports + 2)?;
                if dport == VXLAN_PORT {
                    let inner_eth = ports + UDP_HLEN + VXLAN_HLEN;
                    let inner = be16_at(data, end, inner_eth + 12)?;
                    key.encap = Encap::Vxlan as u8;
                    l3_off = inner_eth + ETH_HLEN;
                    ip_hdr = ip(data, end, inner, l3_off, key)?;
                } else if dport == WIREGUARD_PORT || sport == WIREGUARD_PORT {
                    // Encrypted: the outer packet is the flow; the tunnel's
                    // own headers are overhead, a handshake is all overhead.
                    key.encap = Encap::Wireguard as u8;
                    let msg = u8_at(data, end, ports + UDP_HLEN)?;
                    wg_overhead = if msg == WG_MSG_DATA {
                        ports - outer_off + UDP_HLEN + WG_DATA_OVERHEAD
                    } else {
                        usize::MAX
                    };
                }
            }
            _ => {}
        }
    }

    let l4_len = l4(data, end, &ip_hdr, key, &mut flags)?;
    Ok(Parsed {
        l3_off,
        outer_off,
        hdr_len: ip_hdr.l4_off - l3_off + l4_len,
        wg_overhead,
        tcp_flags: flags,
    })
}
