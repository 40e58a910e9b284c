//! Valid frames of the shapes a Calico node carries (and some it rarely
//! does): Ethernet with up to two VLAN tags or bare IP (as on `tunl0`);
//! IPv4 with options, IPv6 with extension-header chains; IPIP, 6in4, VXLAN
//! and WireGuard, nested; TCP, UDP, ICMP, ICMPv6 and other protocols; GSO
//! super-packets. Each frame carries a map of its length and next-header
//! fields so that the mutator can lie in exactly those bytes.

use super::{
    headers::{
        Family, IPPROTO_IPIP, IPPROTO_IPV6, IPPROTO_TCP, IPPROTO_UDP, Pkt, ethernet, ethertype,
        icmp, ipv4, ipv6, port, tcp, udp,
    },
    rng::Rng,
};

/// Largest frame we build: BPF_PROG_TEST_RUN takes at most a page less
/// the skb's head- and tailroom.
pub const MAX_FRAME: usize = 3000;

/// Which entry points see the frame: Ethernet ones, or L3 ones (the
/// packet starts at the IP header).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Link {
    Ethernet,
    L3,
}

/// A header field the mutator may lie in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// 16 bits.
    EtherType,
    /// Low nibble of the byte.
    Ipv4Ihl,
    /// 16 bits.
    Ipv4TotalLen,
    /// 16 bits.
    Ipv6PayloadLen,
    /// 8 bits: an IPv6 extension header's length.
    ExtLen,
    /// 8 bits: IPv4 protocol, IPv6 next header, or an extension header's.
    NextHeader,
    /// 16 bits.
    UdpLen,
    /// 16 bits: what steers UDP into VXLAN or WireGuard.
    UdpDstPort,
    /// High nibble of the byte.
    TcpDataOff,
}

#[derive(Clone, Copy, Debug)]
pub struct Field {
    pub kind: Kind,
    pub at: usize,
    /// For an extension header's next-header byte: its own type, so that
    /// a mutation can make it point at itself.
    pub own: Option<u8>,
}

/// What the datapath must make of a valid frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    Flow,
    NonIp,
}

/// A frame to run, and what is known about it.
#[derive(Clone, Debug)]
pub struct Frame {
    pub bytes: Vec<u8>,
    pub link: Link,
    /// (segments, segment size) of a GSO super-packet.
    pub gso: Option<(u32, u32)>,
    pub fields: Vec<Field>,
    /// None once mutated: only the accounting invariants hold then.
    pub expect: Option<Class>,
    /// Headers outermost first, e.g. `eth/vlan/ipv4+opt/udp:4789/eth/ipv6+hbh/tcp`.
    pub shape: String,
}

impl Frame {
    /// Wire packets this frame is (GSO segments, else 1).
    pub fn packets(&self) -> u64 {
        self.gso.map_or(1, |(segs, _)| u64::from(segs.max(1)))
    }
}

const VXLAN_PORT: u16 = observer_common::VXLAN_PORT;
const WG_PORT: u16 = observer_common::WIREGUARD_PORT;

/// One valid frame.
pub fn frame(rng: &mut Rng) -> Frame {
    // One frame in 16 loops: long extension chains or deep nesting.
    let loops = rng.one_in(16);
    let l3 = rng.one_in(4);
    if !l3 && rng.one_in(12) {
        return finish(non_ip(rng), Link::Ethernet, Class::NonIp);
    }
    let fam = family(rng);
    let depth = depth(rng, loops);
    let (mut pkt, class) = ip_packet(rng, fam, depth, loops, 0);
    if l3 {
        return finish(pkt, Link::L3, class);
    }
    ethernet(rng, &mut pkt, ethertype(fam), true);
    finish(pkt, Link::Ethernet, class)
}

fn finish(p: Pkt, link: Link, class: Class) -> Frame {
    debug_assert!(p.bytes.len() <= MAX_FRAME, "{} bytes", p.bytes.len());
    Frame {
        shape: p.shape(),
        bytes: p.bytes,
        link,
        gso: p.gso,
        fields: p.fields,
        expect: Some(class),
    }
}

fn family(rng: &mut Rng) -> Family {
    if rng.one_in(2) {
        Family::V4
    } else {
        Family::V6
    }
}

/// Encapsulation levels below the outer IP header.
fn depth(rng: &mut Rng, loops: bool) -> u32 {
    if loops {
        rng.range(2, 6) as u32
    } else {
        u32::from(rng.one_in(2))
    }
}

/// Ethernet frames that are not IP.
fn non_ip(rng: &mut Rng) -> Pkt {
    let (ethertype, body, name): (u16, Vec<u8>, &str) = match rng.below(4) {
        // ARP request.
        0 => {
            let mut arp = vec![0, 1, 8, 0, 6, 4, 0, 1];
            arp.extend_from_slice(&rng.bytes(20));
            (0x0806, arp, "arp")
        }
        1 => {
            let n = rng.range(14, 60);
            (0x88cc, rng.bytes(n), "lldp")
        }
        // 802.3 length field instead of a type.
        2 => (rng.range(46, 1500) as u16, rng.bytes(46), "802.3"),
        _ => {
            let n = rng.range(0, 60);
            (0x86dc, rng.bytes(n), "other")
        }
    };
    let mut p = Pkt::new(body);
    p.names.push(name.into());
    ethernet(rng, &mut p, ethertype, true);
    p
}

/// An IP packet of family `fam`, with `depth` encapsulations inside, at
/// nesting `level` (0: outermost). The outermost header decides the
/// frame's class: the parser follows its encapsulation, one level deep.
fn ip_packet(rng: &mut Rng, fam: Family, depth: u32, loops: bool, level: u32) -> (Pkt, Class) {
    let mut class = Class::Flow;
    let (mut pkt, proto) = if depth == 0 {
        transport(rng, fam, loops)
    } else {
        let inner = level + 1;
        match rng.below(5) {
            0 => (
                ip_packet(rng, Family::V4, depth - 1, loops, inner).0,
                IPPROTO_IPIP,
            ),
            1 => (
                ip_packet(rng, Family::V6, depth - 1, loops, inner).0,
                IPPROTO_IPV6,
            ),
            2 | 3 => {
                let (p, inner_class) = vxlan(rng, depth, loops, inner);
                class = inner_class;
                (p, IPPROTO_UDP)
            }
            _ => (wireguard(rng), IPPROTO_UDP),
        }
    };
    // Long extension chains only where the parser walks them (the outer
    // and the first inner header), which also bounds the frame size.
    let long_chains = loops && level <= 1;
    let transport_seen = match fam {
        Family::V4 => ipv4(rng, &mut pkt, proto, loops),
        Family::V6 => ipv6(rng, &mut pkt, proto, long_chains),
    };
    if !transport_seen {
        // A later fragment, or a chain longer than the parser walks: the
        // encapsulation is not looked into, the outer packet is the flow.
        class = Class::Flow;
    }
    (pkt, class)
}

/// UDP to port 4789 around VXLAN around an Ethernet frame (IP, or ARP).
fn vxlan(rng: &mut Rng, depth: u32, loops: bool, level: u32) -> (Pkt, Class) {
    let (mut inner, class) = if rng.one_in(10) {
        let mut p = Pkt::new(rng.bytes(28));
        p.names.push("arp".into());
        ethernet(rng, &mut p, 0x0806, false);
        (p, Class::NonIp)
    } else {
        let fam = family(rng);
        let (mut p, _) = ip_packet(rng, fam, depth - 1, loops, level);
        ethernet(rng, &mut p, ethertype(fam), false);
        (p, Class::Flow)
    };
    // Flags (VNI valid), VNI 4096 as Calico uses, reserved.
    inner.wrap(&[0x08, 0, 0, 0, 0, 0x10, 0x00, 0], &[], "vxlan".into());
    let sport = rng.range(32768, 60999) as u16;
    udp(&mut inner, sport, VXLAN_PORT);
    (inner, class)
}

/// A WireGuard message over UDP 51820: a data message (type 4: 16-byte
/// header, ciphertext, 16-byte tag) or a handshake (types 1-3).
fn wireguard(rng: &mut Rng) -> Pkt {
    let (ty, len) = rng.pick(&[(4u8, 0usize), (4, 0), (1, 148), (2, 92), (3, 64)]);
    let len = if ty == 4 {
        32 + 16 * rng.range(0, 20)
    } else {
        len
    };
    let mut msg = rng.bytes(len);
    msg[..4].copy_from_slice(&[ty, 0, 0, 0]);
    let mut p = Pkt::new(msg);
    p.names.push(format!("wg{ty}"));
    let (sport, dport) = if rng.one_in(2) {
        (WG_PORT, WG_PORT)
    } else {
        (rng.range(32768, 60999) as u16, WG_PORT)
    };
    udp(&mut p, sport, dport);
    p
}

/// The innermost transport header and its payload; returns the protocol.
fn transport(rng: &mut Rng, fam: Family, loops: bool) -> (Pkt, u8) {
    let payload_len = if loops {
        rng.range(0, 32)
    } else if rng.one_in(10) {
        rng.range(200, 1400)
    } else {
        rng.range(0, 200)
    };
    match rng.below(8) {
        0..=2 => {
            let gso = !loops && rng.one_in(6);
            let mut p = if gso {
                // A GSO super-packet: several MSS-sized segments in one skb.
                let mss = rng.range(100, 500);
                let segs = rng.range(2, 5);
                let len = mss * (segs - 1) + rng.range(1, mss);
                let mut p = Pkt::new(rng.bytes(len));
                p.gso = Some((segs as u32, mss as u32));
                p
            } else {
                Pkt::new(rng.bytes(payload_len))
            };
            tcp(rng, &mut p);
            (p, IPPROTO_TCP)
        }
        3 | 4 => {
            let mut p = Pkt::new(rng.bytes(payload_len));
            udp(&mut p, port(rng), port(rng));
            (p, IPPROTO_UDP)
        }
        5 | 6 => {
            let (p, proto) = icmp(rng, fam);
            (p, proto)
        }
        _ => {
            // GRE, SCTP, "no next header": no ports, still a flow.
            let proto = rng.pick(&[47u8, 132, 59]);
            let mut p = Pkt::new(rng.bytes(payload_len));
            p.names.push(format!("proto{proto}"));
            (p, proto)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::{LaxSlicedPacket, SlicedPacket};

    #[test]
    fn frames_fit_and_their_fields_point_inside() {
        for i in 0..20_000 {
            let f = frame(&mut Rng::for_item(1, i));
            assert!(f.bytes.len() <= MAX_FRAME, "{} {}", f.shape, f.bytes.len());
            for field in &f.fields {
                assert!(field.at + 1 < f.bytes.len() || field.at < f.bytes.len());
            }
        }
    }

    /// etherparse, which no one here wrote, agrees the outer headers are
    /// well formed and finds the same transport header.
    /// RFC 8200 wants hop-by-hop right after the IPv6 header; the loops
    /// put it anywhere.
    fn hop_by_hop_out_of_place(shape: &str) -> bool {
        shape
            .split('/')
            .filter(|h| h.starts_with("ipv6"))
            .any(|h| h.split('+').skip(2).any(|e| e.starts_with("hbh")))
    }

    #[test]
    fn plain_frames_parse_with_etherparse() {
        let mut checked = 0;
        for i in 0..5_000 {
            let f = frame(&mut Rng::for_item(2, i));
            if f.expect != Some(Class::Flow) {
                continue;
            }
            let parsed = match f.link {
                Link::Ethernet => SlicedPacket::from_ethernet(&f.bytes),
                Link::L3 => SlicedPacket::from_ip(&f.bytes),
            };
            let special = ["frag", "ah", "jumbo"].iter().any(|s| f.shape.contains(s))
                || hop_by_hop_out_of_place(&f.shape);
            if special || f.gso.is_some() {
                // etherparse stops at fragments, treats AH and jumbograms
                // specially, and refuses BIG TCP's IPv4 total length 0.
                assert!(match f.link {
                    Link::Ethernet => LaxSlicedPacket::from_ethernet(&f.bytes).is_ok(),
                    Link::L3 => LaxSlicedPacket::from_ip(&f.bytes).is_ok(),
                });
                continue;
            }
            let p = parsed.unwrap_or_else(|e| panic!("{}: {e}", f.shape));
            assert!(p.net.is_some(), "{}", f.shape);
            checked += 1;
        }
        assert!(checked > 1000);
    }
}
