//! Packet parsing with direct packet access: link layer, IPv4/IPv6 (with
//! extension headers), TCP/UDP/ICMP, and one level of encapsulation (IPIP,
//! VXLAN, WireGuard). Nothing here writes to the packet.
//!
//! Headers are read through naturally aligned structs, one load per field:
//! the verifier allows unaligned packet loads on the architectures whose
//! JITs handle them (x86-64, arm64), and byte-by-byte reads cost a third of
//! the per-packet budget.

use core::{mem::size_of, num::NonZeroU32};

use observer_common::{Encap, FAMILY_IPV4, FAMILY_IPV6, FlowKey, VXLAN_PORT, WIREGUARD_PORT};

const ETH_HLEN: usize = 14;
// Ethertypes as they sit in memory (network order read as little-endian
// u16), so that no byte swap is needed on the hot path.
const ETH_P_IP: u16 = 0x0800u16.to_be();
const ETH_P_IPV6: u16 = 0x86ddu16.to_be();
const ETH_P_8021Q: u16 = 0x8100u16.to_be();
const ETH_P_8021AD: u16 = 0x88a8u16.to_be();

const IPPROTO_ICMP: u8 = 1;
const IPPROTO_IPIP: u8 = 4;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const IPPROTO_IPV6: u8 = 41;
const IPPROTO_ICMPV6: u8 = 58;

const VXLAN_HLEN: usize = 8;
const UDP_HLEN: usize = 8;
/// WireGuard data message: 16-byte header before, 16-byte tag after.
const WG_DATA_OVERHEAD: usize = 32;
const WG_MSG_DATA: u8 = 4;

/// Most IPv6 extension headers we walk before giving up on finding L4.
const MAX_IPV6_EXT: usize = 6;

/// Headers must start within this many bytes of the frame; also what lets
/// the verifier bound offsets that went through the stack.
const MAX_HDR_OFF: usize = 1024;

/// Why a packet did not become a flow, which header said so and where in
/// the frame the failed read (or check) starts: what the kernel log
/// (`observer run --ebpf-log debug`) reports. One non-zero word, so that
/// `Result<(), Fail>` stays in one register on the hot path: why in bits
/// 24-31, the header in 16-23, the offset in 0-15.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Fail(NonZeroU32);

#[derive(Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Why {
    /// A header reaches beyond the linear data: may be retried after
    /// `bpf_skb_pull_data`, else counted as unparsed.
    Truncated = 1,
    /// A header is invalid (bad version, bad header length), or starts
    /// too deep in the frame.
    Malformed,
    /// Not an IP packet (ARP, LLDP, ...), or an encapsulated non-IP frame.
    NonIp,
}

/// The header being read when parsing stopped.
#[derive(Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Header {
    /// Ethernet and VLAN tags, or an L3 device's IP version nibble.
    Link,
    Ipv4,
    Ipv6,
    Ipv6Extension,
    Tcp,
    Udp,
    Icmp,
    /// VXLAN's inner Ethernet header.
    Vxlan,
    /// The WireGuard message type.
    Wireguard,
}

impl Fail {
    #[inline(always)]
    fn new(why: Why, header: Header, at: usize) -> Self {
        let code = ((why as u32) << 24) | ((header as u32) << 16) | (at as u32 & 0xffff);
        // SAFETY: `why` starts at 1, so bits 24-31 are never all zero.
        Self(unsafe { NonZeroU32::new_unchecked(code) })
    }

    #[inline(always)]
    fn malformed(header: Header, at: usize) -> Self {
        Self::new(Why::Malformed, header, at)
    }

    /// The failure as a number, for [`Fail::from_code`].
    #[inline(always)]
    pub fn code(self) -> u32 {
        self.0.get()
    }

    /// A code from [`Fail::code`] (0, never written, reads as truncated).
    #[inline(always)]
    pub fn from_code(code: u32) -> Self {
        NonZeroU32::new(code).map_or(Self::new(Why::Truncated, Header::Link, 0), Self)
    }

    #[inline(always)]
    pub fn why(self) -> Why {
        match self.0.get() >> 24 {
            1 => Why::Truncated,
            2 => Why::Malformed,
            _ => Why::NonIp,
        }
    }

    #[inline(always)]
    pub fn is(self, why: Why) -> bool {
        self.0.get() >> 24 == why as u32
    }

    pub fn header(self) -> Header {
        match (self.0.get() >> 16) & 0xff {
            0 => Header::Link,
            1 => Header::Ipv4,
            2 => Header::Ipv6,
            3 => Header::Ipv6Extension,
            4 => Header::Tcp,
            5 => Header::Udp,
            6 => Header::Icmp,
            7 => Header::Vxlan,
            _ => Header::Wireguard,
        }
    }

    pub fn at(self) -> u32 {
        self.0.get() & 0xffff
    }
}

impl Why {
    pub fn name(self) -> &'static str {
        match self {
            Why::Truncated => "truncated",
            Why::Malformed => "malformed",
            Why::NonIp => "non-IP",
        }
    }
}

impl Header {
    pub fn name(self) -> &'static str {
        match self {
            Header::Link => "link",
            Header::Ipv4 => "IPv4",
            Header::Ipv6 => "IPv6",
            Header::Ipv6Extension => "IPv6 extension",
            Header::Tcp => "TCP",
            Header::Udp => "UDP",
            Header::Icmp => "ICMP",
            Header::Vxlan => "VXLAN",
            Header::Wireguard => "WireGuard",
        }
    }
}

/// Where the packet starts: an Ethernet header, or the IP header directly
/// (L3 devices such as `tunl0`).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Link {
    Ethernet,
    L3,
}

/// What the parser learned about one packet besides its key.
#[derive(Default)]
pub struct Parsed {
    /// Offset of the IP header whose bytes are counted (the inner one for
    /// IPIP/VXLAN).
    pub l3_off: usize,
    /// Offset of the outermost IP header.
    pub outer_off: usize,
    /// Bytes of the counted packet's IP + L4 headers, repeated in every GSO
    /// segment.
    pub hdr_len: usize,
    /// WireGuard only: outer bytes that are tunnel overhead (`usize::MAX`:
    /// all of them, a handshake); 0 otherwise.
    pub wg_overhead: usize,
    pub tcp_flags: u8,
}

#[repr(C)]
struct Ipv4Hdr {
    ver_ihl: u8,
    tos: u8,
    tot_len: u16,
    id: u16,
    frag_off: u16,
    ttl: u8,
    proto: u8,
    check: u16,
    src: u32,
    dst: u32,
}

#[repr(C)]
struct Ipv6Hdr {
    ver_tc_flow: u32,
    payload_len: u16,
    next: u8,
    hop_limit: u8,
    src: [u32; 4],
    dst: [u32; 4],
}

#[repr(C)]
struct Ports {
    src: u16,
    dst: u16,
}

#[inline(always)]
fn ptr_at<T>(data: usize, end: usize, off: usize, header: Header) -> Result<*const T, Fail> {
    if off > MAX_HDR_OFF {
        return Err(Fail::malformed(header, off));
    }
    if data + off + size_of::<T>() > end {
        return Err(Fail::new(Why::Truncated, header, off));
    }
    Ok((data + off) as *const T)
}

/// Reads a header struct at `off`.
#[inline(always)]
fn hdr<T>(data: usize, end: usize, off: usize, header: Header) -> Result<&'static T, Fail> {
    // SAFETY: bounds checked against data_end; the packet outlives the
    // program run. Alignment: see the module comment.
    Ok(unsafe { &*ptr_at::<T>(data, end, off, header)? })
}

/// Walks the link layer; returns the ethertype (memory order) and the
/// offset of what follows.
#[inline(always)]
fn link(data: usize, end: usize, link: Link) -> Result<(u16, usize), Fail> {
    if link == Link::L3 {
        // L3 devices carry no link header; the IP version nibble says which
        // IP it is. (skb->protocol agrees on a real device, and this also
        // holds under BPF_PROG_TEST_RUN, which fills skb->protocol from
        // bytes 12-13 of whatever frame it is given.)
        return match hdr::<[u8; 2]>(data, end, 0, Header::Link)?[0] >> 4 {
            4 => Ok((ETH_P_IP, 0)),
            6 => Ok((ETH_P_IPV6, 0)),
            _ => Err(Fail::malformed(Header::Link, 0)),
        };
    }
    let mut proto = *hdr::<u16>(data, end, 12, Header::Link)?;
    let mut off = ETH_HLEN;
    // Up to two VLAN tags (802.1ad QinQ outer, 802.1Q inner).
    for _ in 0..2 {
        if proto != ETH_P_8021Q && proto != ETH_P_8021AD {
            break;
        }
        proto = *hdr::<u16>(data, end, off + 2, Header::Link)?;
        off += 4;
    }
    Ok((proto, off))
}

/// The network header: addresses into the key; the next protocol, the
/// offset after the IP headers, and whether the L4 header is absent (a
/// non-first fragment). Filled through `&mut` rather than returned: a
/// returned `Result<struct>` is copied byte by byte through the stack.
#[derive(Default)]
struct Ip {
    proto: u8,
    l4_off: usize,
    later_fragment: bool,
}

/// `inner`: an encapsulated header, whose outer one may have been IPv6 and
/// left words in the addresses (the outer header finds them zero).
#[inline(always)]
fn ipv4(
    data: usize,
    end: usize,
    off: usize,
    inner: bool,
    key: &mut FlowKey,
    ip: &mut Ip,
) -> Result<(), Fail> {
    let h = hdr::<Ipv4Hdr>(data, end, off, Header::Ipv4)?;
    if h.ver_ihl >> 4 != 4 {
        return Err(Fail::malformed(Header::Ipv4, off));
    }
    let ihl = ((h.ver_ihl & 0x0f) as usize) * 4;
    if ihl < 20 {
        return Err(Fail::malformed(Header::Ipv4, off));
    }
    key.family = FAMILY_IPV4;
    key.src_addr[0] = h.src;
    key.dst_addr[0] = h.dst;
    if inner {
        for i in 1..4 {
            key.src_addr[i] = 0;
            key.dst_addr[i] = 0;
        }
    }
    ip.proto = h.proto;
    ip.l4_off = off + ihl;
    // Offset bits (low 13 of the big-endian field).
    ip.later_fragment = u16::from_be(h.frag_off) & 0x1fff != 0;
    Ok(())
}

#[inline(always)]
fn ipv6(data: usize, end: usize, off: usize, key: &mut FlowKey, ip: &mut Ip) -> Result<(), Fail> {
    let h = hdr::<Ipv6Hdr>(data, end, off, Header::Ipv6)?;
    if (u32::from_be(h.ver_tc_flow) >> 28) != 6 {
        return Err(Fail::malformed(Header::Ipv6, off));
    }
    key.family = FAMILY_IPV6;
    // Word by word: an array copy becomes a call to a byte-wise memmove.
    for i in 0..4 {
        key.src_addr[i] = h.src[i];
        key.dst_addr[i] = h.dst[i];
    }
    let mut next = h.next;
    let mut at = off + 40;
    let mut later_fragment = false;
    for _ in 0..MAX_IPV6_EXT {
        if !matches!(next, 0 | 43 | 60 | 44 | 51) {
            break;
        }
        // Every extension header starts with next-header and a length
        // byte and is at least 8 bytes long; one read serves them all.
        let e = hdr::<[u8; 4]>(data, end, at, Header::Ipv6Extension)?;
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
    ip.proto = next;
    ip.l4_off = at;
    ip.later_fragment = later_fragment;
    Ok(())
}

#[inline(always)]
fn ip(
    data: usize,
    end: usize,
    ethertype: u16,
    off: usize,
    inner: bool,
    key: &mut FlowKey,
    ip: &mut Ip,
) -> Result<(), Fail> {
    if ethertype == ETH_P_IP {
        ipv4(data, end, off, inner, key, ip)
    } else if ethertype == ETH_P_IPV6 {
        ipv6(data, end, off, key, ip)
    } else {
        Err(Fail::new(Why::NonIp, Header::Link, off))
    }
}

/// Ports (ICMP: type and code) and TCP flags; returns the L4 header length.
#[inline(always)]
fn l4(data: usize, end: usize, ip: &Ip, key: &mut FlowKey, flags: &mut u8) -> Result<usize, Fail> {
    key.protocol = ip.proto;
    if ip.later_fragment {
        return Ok(0);
    }
    let off = ip.l4_off;
    match ip.proto {
        IPPROTO_TCP => {
            let h = hdr::<[u16; 10]>(data, end, off, Header::Tcp)?;
            key.src_port = u16::from_be(h[0]);
            key.dst_port = u16::from_be(h[1]);
            // Data offset and flags share the big-endian word at byte 12.
            let w = u16::from_be(h[6]);
            *flags = w as u8;
            let doff = ((w >> 12) as usize) * 4;
            if doff < 20 {
                return Err(Fail::malformed(Header::Tcp, off));
            }
            Ok(doff)
        }
        IPPROTO_UDP => {
            let p = hdr::<Ports>(data, end, off, Header::Udp)?;
            key.src_port = u16::from_be(p.src);
            key.dst_port = u16::from_be(p.dst);
            Ok(UDP_HLEN)
        }
        IPPROTO_ICMP | IPPROTO_ICMPV6 => {
            let h = hdr::<[u8; 2]>(data, end, off, Header::Icmp)?;
            key.src_port = h[0] as u16;
            key.dst_port = h[1] as u16;
            Ok(8)
        }
        _ => Ok(0),
    }
}

/// Parses one packet into `key` (whose fields other than ifindex and hook
/// must be zero) and `out`.
#[inline(always)]
pub fn parse(
    data: usize,
    end: usize,
    link_kind: Link,
    key: &mut FlowKey,
    out: &mut Parsed,
) -> Result<(), Fail> {
    let (ethertype, outer_off) = link(data, end, link_kind)?;
    let mut l3_off = outer_off;
    let mut ip_hdr = Ip::default();
    ip(data, end, ethertype, outer_off, false, key, &mut ip_hdr)?;
    let mut flags = 0u8;
    let mut wg_overhead = 0usize;

    if !ip_hdr.later_fragment {
        match ip_hdr.proto {
            IPPROTO_IPIP | IPPROTO_IPV6 => {
                let inner = if ip_hdr.proto == IPPROTO_IPIP {
                    ETH_P_IP
                } else {
                    ETH_P_IPV6
                };
                l3_off = ip_hdr.l4_off;
                ip(data, end, inner, l3_off, true, key, &mut ip_hdr)?;
                key.encap = Encap::Ipip as u8;
            }
            IPPROTO_UDP => {
                let ports = ip_hdr.l4_off;
                let p = hdr::<Ports>(data, end, ports, Header::Udp)?;
                if p.dst == VXLAN_PORT.to_be() {
                    let inner_eth = ports + UDP_HLEN + VXLAN_HLEN;
                    let inner = *hdr::<u16>(data, end, inner_eth + 12, Header::Vxlan)?;
                    key.encap = Encap::Vxlan as u8;
                    l3_off = inner_eth + ETH_HLEN;
                    ip(data, end, inner, l3_off, true, key, &mut ip_hdr)?;
                } else if p.dst == WIREGUARD_PORT.to_be() || p.src == WIREGUARD_PORT.to_be() {
                    // Encrypted: the outer packet is the flow; the tunnel's
                    // own headers are overhead, a handshake is all overhead.
                    key.encap = Encap::Wireguard as u8;
                    let msg = hdr::<[u8; 2]>(data, end, ports + UDP_HLEN, Header::Wireguard)?[0];
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
    out.l3_off = l3_off;
    out.outer_off = outer_off;
    out.hdr_len = ip_hdr.l4_off - l3_off + l4_len;
    out.wg_overhead = wg_overhead;
    out.tcp_flags = flags;
    Ok(())
}
