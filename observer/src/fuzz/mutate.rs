//! Breaking valid frames: byte flips, truncation, lying length fields,
//! header loops, shifted headers, and the wrong entry point. Mutations
//! aim at the fields the generator recorded, where a parser is most
//! likely to trust what it should not.

use super::{
    generate::{Field, Frame, Kind, Link, MAX_FRAME},
    rng::Rng,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Mutation {
    /// Random bytes XORed or set to values parsers branch on.
    Flip,
    /// Cut at a random offset (see also the sweeps in `case`).
    Truncate,
    /// A length field says something else than the frame.
    LieLength,
    /// A next-header points at itself or at an encapsulation; UDP claims
    /// VXLAN or WireGuard; a VLAN tag claims another tag.
    Loop,
    /// A few bytes inserted or removed inside the headers.
    Shift,
    /// An Ethernet frame on an L3 entry point, or the other way round.
    WrongEntry,
}

impl Mutation {
    pub const ALL: [Mutation; 6] = [
        Mutation::Flip,
        Mutation::Truncate,
        Mutation::LieLength,
        Mutation::Loop,
        Mutation::Shift,
        Mutation::WrongEntry,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Mutation::Flip => "flip",
            Mutation::Truncate => "truncate",
            Mutation::LieLength => "lie-length",
            Mutation::Loop => "loop",
            Mutation::Shift => "shift",
            Mutation::WrongEntry => "wrong-entry",
        }
    }
}

/// Headers of every shape we build sit in the first bytes; mutations
/// land there most of the time.
const HEADER_BYTES: usize = 160;

/// Applies `m` to `f`; false when it did not apply (no field of the kind
/// left in the frame, say).
pub fn apply(rng: &mut Rng, f: &mut Frame, m: Mutation) -> bool {
    // What a mutated frame becomes is not known in advance, and a GSO
    // segment count is only meaningful for a well-formed packet.
    f.expect = None;
    f.gso = None;
    match m {
        Mutation::Flip => flip(rng, f),
        Mutation::Truncate => {
            let at = offset(rng, f.bytes.len());
            truncate(f, at);
            true
        }
        Mutation::LieLength => lie_length(rng, f),
        Mutation::Loop => make_loop(rng, f),
        Mutation::Shift => shift(rng, f),
        Mutation::WrongEntry => {
            f.link = match f.link {
                Link::Ethernet => Link::L3,
                Link::L3 => Link::Ethernet,
            };
            true
        }
    }
}

/// Cuts the frame to `len` bytes (fields past the cut are dropped).
pub fn truncate(f: &mut Frame, len: usize) {
    f.bytes.truncate(len);
    f.fields.retain(|fl| fl.at + width(fl.kind) <= len);
}

/// An offset in `0..len`, in the headers most of the time.
fn offset(rng: &mut Rng, len: usize) -> usize {
    if len == 0 {
        return 0;
    }
    if rng.one_in(5) {
        rng.below(len)
    } else {
        rng.below(len.min(HEADER_BYTES))
    }
}

fn width(kind: Kind) -> usize {
    match kind {
        Kind::EtherType
        | Kind::Ipv4TotalLen
        | Kind::Ipv6PayloadLen
        | Kind::UdpLen
        | Kind::UdpDstPort => 2,
        Kind::Ipv4Ihl | Kind::ExtLen | Kind::NextHeader | Kind::TcpDataOff => 1,
    }
}

fn flip(rng: &mut Rng, f: &mut Frame) -> bool {
    if f.bytes.is_empty() {
        return false;
    }
    for _ in 0..rng.range(1, 4) {
        let at = offset(rng, f.bytes.len());
        f.bytes[at] = if rng.one_in(2) {
            f.bytes[at] ^ rng.range(1, 255) as u8
        } else {
            // Version nibbles, ethertype and protocol bytes, extremes.
            rng.pick(&[
                0x00, 0xff, 0x45, 0x4f, 0x60, 0x08, 0x86, 0x81, 0x11, 0x04, 0x29,
            ])
        };
    }
    true
}

/// A field of one of `kinds`, picked at random.
fn pick_field(rng: &mut Rng, f: &Frame, kinds: &[Kind]) -> Option<Field> {
    let candidates: Vec<Field> = f
        .fields
        .iter()
        .filter(|fl| kinds.contains(&fl.kind))
        .copied()
        .collect();
    (!candidates.is_empty()).then(|| rng.pick(&candidates))
}

fn get16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn set16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

fn lie_length(rng: &mut Rng, f: &mut Frame) -> bool {
    let kinds = [
        Kind::Ipv4TotalLen,
        Kind::Ipv4Ihl,
        Kind::Ipv6PayloadLen,
        Kind::ExtLen,
        Kind::UdpLen,
        Kind::TcpDataOff,
    ];
    let Some(fl) = pick_field(rng, f, &kinds) else {
        return false;
    };
    let b = &mut f.bytes;
    match fl.kind {
        Kind::Ipv4Ihl => b[fl.at] = (b[fl.at] & 0xf0) | rng.below(16) as u8,
        Kind::TcpDataOff => b[fl.at] = (b[fl.at] & 0x0f) | (rng.below(16) as u8) << 4,
        Kind::ExtLen => {
            let (real, any) = (b[fl.at], rng.byte());
            b[fl.at] = rng.pick(&[0, 1, 0xff, real.wrapping_add(1), real.wrapping_sub(1), any]);
        }
        _ => {
            let (real, any) = (get16(b, fl.at), rng.next_u64() as u16);
            // Zero, below each header's minimum, off by one, the maximum.
            let v = rng.pick(&[
                0,
                1,
                7,
                8,
                19,
                20,
                39,
                40,
                real.wrapping_add(1),
                real.wrapping_sub(1),
                0x7fff,
                0xffff,
                any,
            ]);
            set16(b, fl.at, v);
        }
    }
    true
}

fn make_loop(rng: &mut Rng, f: &mut Frame) -> bool {
    let Some(fl) = pick_field(
        rng,
        f,
        &[Kind::NextHeader, Kind::UdpDstPort, Kind::EtherType],
    ) else {
        return false;
    };
    let b = &mut f.bytes;
    match fl.kind {
        Kind::NextHeader => {
            b[fl.at] = match fl.own {
                // An extension header that names itself as the next one.
                Some(own) if rng.one_in(2) => own,
                // IP in itself, 6in4, or an extension header where none is.
                _ => rng.pick(&[4, 41, 0, 43, 44, 51, 60, 17, 6]),
            };
        }
        Kind::UdpDstPort => {
            let port = rng.pick(&[observer_common::VXLAN_PORT, observer_common::WIREGUARD_PORT]);
            set16(b, fl.at, port);
        }
        _ => set16(b, fl.at, rng.pick(&[0x8100, 0x88a8, 0x0800, 0x86dd])),
    }
    true
}

fn shift(rng: &mut Rng, f: &mut Frame) -> bool {
    let at = offset(rng, f.bytes.len());
    let n = rng.range(1, 8);
    if rng.one_in(2) && f.bytes.len() + n <= MAX_FRAME {
        let junk = rng.bytes(n);
        f.bytes.splice(at..at, junk);
    } else {
        let end = (at + n).min(f.bytes.len());
        f.bytes.drain(at..end);
    }
    // Offsets after the cut no longer name the field they did.
    f.fields.retain(|fl| fl.at + width(fl.kind) <= at);
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fuzz::generate;

    #[test]
    fn mutations_keep_frames_in_bounds_and_forget_expectations() {
        for i in 0..5_000 {
            let mut rng = Rng::for_item(3, i);
            let mut f = generate::frame(&mut rng);
            for m in Mutation::ALL {
                apply(&mut rng, &mut f, m);
                assert!(f.bytes.len() <= MAX_FRAME);
                assert!(
                    f.fields
                        .iter()
                        .all(|fl| fl.at + width(fl.kind) <= f.bytes.len())
                );
                assert_eq!((f.expect, f.gso), (None, None));
            }
        }
    }

    #[test]
    fn lying_changes_the_field_it_picked() {
        let mut changed = 0;
        for i in 0..1_000 {
            let mut rng = Rng::for_item(4, i);
            let f = generate::frame(&mut rng);
            let mut g = f.clone();
            if apply(&mut rng, &mut g, Mutation::LieLength) && g.bytes != f.bytes {
                changed += 1;
            }
        }
        assert!(changed > 500, "{changed}");
    }
}
