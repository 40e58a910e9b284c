//! Header builders for the generator: each puts one header in front of a
//! packet built inside out, fills its lengths from what it wraps, and
//! records where its length and next-header fields are.

use super::{
    generate::{Field, Kind},
    rng::Rng,
};

pub(super) const IPPROTO_ICMP: u8 = 1;
pub(super) const IPPROTO_IPIP: u8 = 4;
pub(super) const IPPROTO_TCP: u8 = 6;
pub(super) const IPPROTO_UDP: u8 = 17;
pub(super) const IPPROTO_IPV6: u8 = 41;
pub(super) const IPPROTO_ICMPV6: u8 = 58;
const EXT_HOP: u8 = 0;
const EXT_ROUTING: u8 = 43;
const EXT_FRAGMENT: u8 = 44;
const EXT_AH: u8 = 51;
const EXT_DEST: u8 = 60;
const EXT_TYPES: [u8; 5] = [EXT_HOP, EXT_ROUTING, EXT_FRAGMENT, EXT_AH, EXT_DEST];

#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Family {
    V4,
    V6,
}

/// A packet built inside out: each header is put in front of what is
/// there, and the field offsets move with it.
pub(super) struct Pkt {
    pub bytes: Vec<u8>,
    pub fields: Vec<Field>,
    /// Header names, innermost first.
    pub names: Vec<String>,
    pub gso: Option<(u32, u32)>,
}

impl Pkt {
    pub fn new(payload: Vec<u8>) -> Self {
        Self {
            bytes: payload,
            fields: Vec::new(),
            names: Vec::new(),
            gso: None,
        }
    }

    /// Puts `hdr` in front; `fields` are (kind, offset in `hdr`, own type).
    pub fn wrap(&mut self, hdr: &[u8], fields: &[(Kind, usize, Option<u8>)], name: String) {
        for f in &mut self.fields {
            f.at += hdr.len();
        }
        self.fields.extend(
            fields
                .iter()
                .map(|&(kind, at, own)| Field { kind, at, own }),
        );
        let mut bytes = Vec::with_capacity(hdr.len() + self.bytes.len());
        bytes.extend_from_slice(hdr);
        bytes.append(&mut self.bytes);
        self.bytes = bytes;
        self.names.push(name);
    }

    pub fn shape(&self) -> String {
        let names: Vec<&str> = self.names.iter().rev().map(String::as_str).collect();
        names.join("/")
    }
}

pub(super) fn ethertype(f: Family) -> u16 {
    match f {
        Family::V4 => 0x0800,
        Family::V6 => 0x86dd,
    }
}

/// An Ethernet header (VLAN or QinQ tagged when `tags`) around `p`.
pub(super) fn ethernet(rng: &mut Rng, p: &mut Pkt, ethertype: u16, tags: bool) {
    let tags = if tags { rng.pick(&[0, 0, 0, 1, 2]) } else { 0 };
    let mut inner = ethertype;
    // Innermost tag first: QinQ is 802.1ad (outer) around 802.1Q.
    for i in 0..tags {
        let tpid: u16 = if i == 1 { 0x88a8 } else { 0x8100 };
        let tci = (rng.below(4096) as u16).to_be_bytes();
        let mut tag = Vec::with_capacity(4);
        tag.extend_from_slice(&tci);
        tag.extend_from_slice(&inner.to_be_bytes());
        // A tag is put in front of the payload, after the MAC addresses:
        // its TCI and the type it carries; its own TPID comes from outside.
        p.wrap(&tag, &[(Kind::EtherType, 2, None)], "vlan".into());
        inner = tpid;
    }
    let mut hdr = Vec::with_capacity(14);
    hdr.extend_from_slice(&mac(rng));
    hdr.extend_from_slice(&mac(rng));
    hdr.extend_from_slice(&inner.to_be_bytes());
    p.wrap(&hdr, &[(Kind::EtherType, 12, None)], "eth".into());
}

fn mac(rng: &mut Rng) -> [u8; 6] {
    // Calico's host side, a pod, and one whose first byte reads as an IPv4
    // version nibble when the frame reaches an L3 entry point.
    rng.pick(&[
        [0xee; 6],
        [0x02, 0x42, 0x0a, 0xf4, 0x00, 0x02],
        [0x46, 0x00, 0x00, 0x00, 0x00, 0x01],
        [0x66, 0x00, 0x00, 0x00, 0x00, 0x01],
    ])
}

pub(super) fn port(rng: &mut Rng) -> u16 {
    rng.pick(&[53, 80, 443, 5353, 8080, 40000, 40001, 40002, 53000])
}

pub(super) fn udp(p: &mut Pkt, sport: u16, dport: u16) {
    let len = (8 + p.bytes.len()) as u16;
    let mut h = Vec::with_capacity(8);
    h.extend_from_slice(&sport.to_be_bytes());
    h.extend_from_slice(&dport.to_be_bytes());
    h.extend_from_slice(&len.to_be_bytes());
    h.extend_from_slice(&[0, 0]);
    p.wrap(
        &h,
        &[(Kind::UdpDstPort, 2, None), (Kind::UdpLen, 4, None)],
        format!("udp:{dport}"),
    );
}

pub(super) fn tcp(rng: &mut Rng, p: &mut Pkt) {
    // Options: MSS, SACK permitted, timestamps, NOP padding, EOL.
    let words = if rng.one_in(3) { rng.range(1, 10) } else { 0 };
    let mut opts = Vec::new();
    while opts.len() < words * 4 {
        match rng.below(4) {
            0 => opts.extend_from_slice(&[2, 4, 0x05, 0xb4]),
            1 => opts.extend_from_slice(&[4, 2]),
            2 => {
                opts.extend_from_slice(&[8, 10]);
                opts.extend_from_slice(&rng.bytes(8));
            }
            _ => opts.push(1),
        }
    }
    opts.resize(words * 4, 0);
    let flags = rng.pick(&[0x02u8, 0x12, 0x10, 0x18, 0x11, 0x04, 0x14, 0xff]);
    let mut h = Vec::with_capacity(20 + opts.len());
    h.extend_from_slice(&port(rng).to_be_bytes());
    h.extend_from_slice(&port(rng).to_be_bytes());
    h.extend_from_slice(&rng.bytes(8));
    h.push(((5 + words) as u8) << 4);
    h.push(flags);
    h.extend_from_slice(&[0xff, 0xff, 0, 0, 0, 0]);
    h.extend_from_slice(&opts);
    p.wrap(&h, &[(Kind::TcpDataOff, 12, None)], "tcp".into());
}

/// Echo, or an error quoting the start of a packet (fragmentation needed,
/// packet too big: what the MTU accounting looks for).
pub(super) fn icmp(rng: &mut Rng, fam: Family) -> (Pkt, u8) {
    let (ty, code, proto, name) = match (fam, rng.below(2)) {
        (Family::V4, 0) => (8u8, 0u8, IPPROTO_ICMP, "icmp-echo"),
        (Family::V4, _) => (3, 4, IPPROTO_ICMP, "icmp-frag-needed"),
        (Family::V6, 0) => (128, 0, IPPROTO_ICMPV6, "icmp6-echo"),
        (Family::V6, _) => (2, 0, IPPROTO_ICMPV6, "icmp6-too-big"),
    };
    let mut h = vec![ty, code, 0, 0, 0, 0, 0x05, 0xaa];
    let quoted = rng.range(0, 64);
    h.extend_from_slice(&rng.bytes(quoted));
    let mut p = Pkt::new(h);
    p.names.push(name.into());
    (p, proto)
}

const V4_ADDRS: [[u8; 4]; 6] = [
    [10, 244, 0, 2],
    [10, 244, 0, 66],
    [10, 244, 1, 7],
    [172, 30, 0, 10],
    [172, 30, 0, 11],
    // Reads as the ethertype IPv4 (bytes 12-13 of an L3 frame).
    [8, 0, 0, 1],
];

fn v6_addr(rng: &mut Rng) -> [u8; 16] {
    let mut a = [0u8; 16];
    a[..6].copy_from_slice(rng.pick(&[
        &[0xfd, 0, 0, 0x10, 0x02, 0x44][..],
        &[0xfd, 0, 0x01, 0x72, 0, 0x30],
        &[0xfe, 0x80, 0, 0, 0, 0],
    ]));
    a[15] = rng.range(1, 8) as u8;
    a
}

/// Puts an IPv4 header around `p`; says whether the parser will reach
/// what it carries (not in a later fragment).
pub(super) fn ipv4(rng: &mut Rng, p: &mut Pkt, proto: u8, loops: bool) -> bool {
    let opts = if rng.one_in(4) {
        ipv4_options(rng)
    } else {
        Vec::new()
    };
    let hlen = 20 + opts.len();
    let total = hlen + p.bytes.len();
    // BIG TCP: a GSO packet may carry a total length of 0.
    let tot_len = if p.gso.is_some() && rng.one_in(3) {
        0
    } else {
        total as u16
    };
    // Later fragments carry no transport header: only for payloads that
    // are not themselves parsed as headers, and not in GSO packets.
    let frag: u16 = if p.gso.is_none() && !loops && rng.one_in(12) {
        rng.pick(&[0x2000, 0x00b9, 0x20b9])
    } else {
        0x4000 // don't fragment
    };
    let mut h = Vec::with_capacity(hlen);
    h.push(0x40 | (hlen / 4) as u8);
    h.push(0);
    h.extend_from_slice(&tot_len.to_be_bytes());
    h.extend_from_slice(&(rng.next_u64() as u16).to_be_bytes());
    h.extend_from_slice(&frag.to_be_bytes());
    h.push(64);
    h.push(proto);
    h.extend_from_slice(&[0, 0]);
    h.extend_from_slice(&rng.pick(&V4_ADDRS));
    h.extend_from_slice(&rng.pick(&V4_ADDRS));
    h.extend_from_slice(&opts);
    let sum = checksum(&h);
    h[10..12].copy_from_slice(&sum.to_be_bytes());
    let name = if opts.is_empty() { "ipv4" } else { "ipv4+opt" };
    p.wrap(
        &h,
        &[
            (Kind::Ipv4Ihl, 0, None),
            (Kind::Ipv4TotalLen, 2, None),
            (Kind::NextHeader, 9, None),
        ],
        name.into(),
    );
    frag & 0x1fff == 0
}

/// 4 to 40 bytes of options: router alert, record route, timestamp, NOPs,
/// padded with EOL to a multiple of 4.
fn ipv4_options(rng: &mut Rng) -> Vec<u8> {
    let want = 4 * rng.range(1, 10);
    let mut o = Vec::with_capacity(want);
    while o.len() < want {
        let room = want - o.len();
        match rng.below(4) {
            0 if room >= 4 => o.extend_from_slice(&[148, 4, 0, 0]),
            1 if room >= 7 => {
                let n = rng.range(1, (room - 3) / 4);
                o.extend_from_slice(&[7, (3 + 4 * n) as u8, 4]);
                o.extend_from_slice(&vec![0; 4 * n]);
            }
            2 if room >= 8 => {
                let n = rng.range(1, (room - 4) / 4);
                o.extend_from_slice(&[68, (4 + 4 * n) as u8, 5, 0]);
                o.extend_from_slice(&vec![0; 4 * n]);
            }
            _ => o.push(1),
        }
    }
    if o.len() > want {
        o.truncate(want);
    }
    if let Some(last) = o.last_mut()
        && *last == 1
    {
        *last = 0;
    }
    o
}

/// Puts an IPv6 header (and extension headers) around `p`; says whether
/// the parser will reach what it carries.
pub(super) fn ipv6(rng: &mut Rng, p: &mut Pkt, proto: u8, long_chains: bool) -> bool {
    // A chain of extension headers, built innermost first. Loops: a long
    // chain of one repeated type, past the parser's walking limit.
    let n = if long_chains && rng.one_in(2) {
        rng.range(7, 12)
    } else if rng.one_in(3) {
        rng.range(1, 4)
    } else {
        0
    };
    let repeated = rng.pick(&EXT_TYPES);
    let mut next = proto;
    let mut names = Vec::new();
    // Per header, innermost first: Some(is a later fragment) for fragment
    // headers.
    let mut frags = Vec::new();
    // BIG TCP over IPv6: payload length 0 and a jumbo option in hop-by-hop.
    let jumbo = p.gso.is_some() && rng.one_in(3);
    for i in 0..n {
        let ty = if n > 4 {
            repeated
        } else if i == n - 1 && !jumbo {
            // Hop-by-hop belongs first; let it be there often.
            rng.pick(&EXT_TYPES)
        } else {
            rng.pick(&[EXT_ROUTING, EXT_DEST, EXT_AH, EXT_FRAGMENT])
        };
        let gso = p.gso.is_some();
        frags.push(ext_header(rng, p, ty, next, !gso));
        names.push(ext_name(ty));
        next = ty;
    }
    if jumbo {
        let mut h = vec![next, 0, 0xc2, 4];
        h.extend_from_slice(&((40 + 8 + p.bytes.len()) as u32).to_be_bytes());
        p.wrap(
            &h,
            &[
                (Kind::NextHeader, 0, Some(EXT_HOP)),
                (Kind::ExtLen, 1, None),
            ],
            "hbh-jumbo".into(),
        );
        names.push("hbh-jumbo");
        frags.push(None);
        next = EXT_HOP;
    }
    let plen = if jumbo { 0 } else { p.bytes.len() as u16 };
    let mut h = Vec::with_capacity(40);
    h.extend_from_slice(&[0x60, 0, 0, 0]);
    h.extend_from_slice(&plen.to_be_bytes());
    h.push(next);
    h.push(64);
    h.extend_from_slice(&v6_addr(rng));
    h.extend_from_slice(&v6_addr(rng));
    // Every wrap pushed a name; the IPv6 header takes them into one.
    p.names.truncate(p.names.len() - names.len());
    names.reverse();
    let name = std::iter::once("ipv6")
        .chain(names)
        .collect::<Vec<_>>()
        .join("+");
    p.wrap(
        &h,
        &[(Kind::Ipv6PayloadLen, 4, None), (Kind::NextHeader, 6, None)],
        name,
    );
    // The parser walks at most this many extension headers; the last
    // fragment header it walks (the innermost) says whether L4 follows.
    const WALKED: usize = 6;
    let later_fragment = frags.iter().find_map(|f| *f).unwrap_or(false);
    frags.len() <= WALKED && !later_fragment
}

fn ext_name(ty: u8) -> &'static str {
    match ty {
        EXT_HOP => "hbh",
        EXT_ROUTING => "rt",
        EXT_FRAGMENT => "frag",
        EXT_AH => "ah",
        _ => "dst",
    }
}

/// One extension header of type `ty` whose next header is `next`.
/// `may_be_later_fragment`: a fragment header may say "not the first".
/// Returns, for a fragment header, whether it is a later fragment.
fn ext_header(
    rng: &mut Rng,
    p: &mut Pkt,
    ty: u8,
    next: u8,
    may_be_later_fragment: bool,
) -> Option<bool> {
    let mut later = None;
    let h = match ty {
        EXT_FRAGMENT => {
            let is_later = may_be_later_fragment && rng.one_in(4);
            later = Some(is_later);
            // Offset 181 (x8 bytes), or offset 0 with more fragments.
            let off: u16 = if is_later { 0x05a8 } else { 0x0001 };
            let mut h = vec![next, 0];
            h.extend_from_slice(&off.to_be_bytes());
            h.extend_from_slice(&rng.bytes(4));
            h
        }
        EXT_AH => {
            // (len + 2) * 4 bytes: SPI, sequence, a 12-byte ICV typically.
            let len = rng.pick(&[1u8, 4, 4, 6]);
            let mut h = vec![next, len, 0, 0];
            h.extend_from_slice(&rng.bytes((len as usize + 2) * 4 - 4));
            h
        }
        EXT_ROUTING => {
            // Type 4 (segment routing) with 1-2 addresses, or type 0.
            let addrs = rng.range(0, 2);
            let mut h = vec![next, (2 * addrs) as u8, rng.pick(&[0u8, 4]), addrs as u8];
            h.extend_from_slice(&[0; 4]);
            for _ in 0..addrs {
                h.extend_from_slice(&v6_addr(rng));
            }
            h
        }
        _ => {
            // Hop-by-hop / destination options: PadN (and router alert).
            let len = rng.range(0, 2);
            let mut h = vec![next, len as u8];
            if rng.one_in(2) {
                h.extend_from_slice(&[5, 2, 0, 0]);
            }
            let pad = (len + 1) * 8 - h.len();
            h.extend_from_slice(&[1, (pad - 2) as u8]);
            h.resize((len + 1) * 8, 0);
            h
        }
    };
    let mut fields = vec![(Kind::NextHeader, 0, Some(ty))];
    if ty != EXT_FRAGMENT {
        fields.push((Kind::ExtLen, 1, None));
    }
    p.wrap(&h, &fields, ext_name(ty).into());
    later
}

/// The IPv4 header checksum (RFC 1071).
fn checksum(h: &[u8]) -> u16 {
    let mut sum: u32 = h
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_checksum_is_right() {
        // RFC 1071's example header.
        let h = [
            0x45, 0, 0, 0x73, 0, 0, 0x40, 0, 0x40, 0x11, 0, 0, 0xc0, 0xa8, 0, 1, 0xc0, 0xa8, 0,
            0xc7,
        ];
        assert_eq!(checksum(&h), 0xb861);
    }
}
