//! Turning a captured frame into what the classifier sees on a device: an
//! Ethernet frame, or an IP packet as on an L3 device such as `tunl0`. The
//! classifier runs on at most [`RUN_MAX`] bytes; the rest of the frame's
//! wire length is counted as a number, never allocated.

use observer_common::Hook;
use pcap_file::DataLink;

use super::capture::{Frame, KEEP};

/// BPF_PROG_TEST_RUN takes at most about a page of linear data. Larger
/// frames (GSO super-packets, jumbo frames) are run cut to this size, and
/// the bytes cut off are added to the flow they were counted in.
pub const RUN_MAX: usize = 3072;

/// The longest wire length believed. Linux builds no skb larger than
/// GSO_MAX_SIZE / GRO_MAX_SIZE, 512 KiB (BIG TCP: 8 x 64 KiB), and a
/// capture records `skb->len`; 256 bytes more leave room for the link,
/// VLAN and tunnel headers around such a super-packet. A record claiming
/// more (0xffffffff...) is counted at this length and reported as capped.
pub const MAX_WIRE_LEN: u64 = 512 * 1024 + 256;

const LINKTYPE_ETHERNET: u32 = 1;
const LINKTYPE_RAW: u32 = 101;
const LINKTYPE_LINUX_SLL: u32 = 113;
const LINKTYPE_IPV4: u32 = 228;
const LINKTYPE_IPV6: u32 = 229;
const LINKTYPE_LINUX_SLL2: u32 = 276;
/// `DLT_RAW` as some BSDs write it.
const DLT_RAW_BSD: u32 = 12;
const DLT_RAW_OPENBSD: u32 = 14;

const ETH_HLEN: usize = 14;
const SLL_HLEN: usize = 16;
const SLL2_HLEN: usize = 20;
const _: () = assert!(RUN_MAX + SLL2_HLEN - ETH_HLEN <= KEEP);

/// SLL packet type of a frame the capturing host sent.
const PACKET_OUTGOING: u16 = 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layer {
    Ethernet,
    /// The packet starts at the IP header.
    L3,
}

/// A frame as the classifier runs on it.
#[derive(Debug, PartialEq, Eq)]
pub struct Run {
    pub layer: Layer,
    pub hook: Hook,
    /// The first bytes on the wire, zero-padded where the capture kept
    /// fewer, at most [`RUN_MAX`].
    pub data: Vec<u8>,
    /// Wire bytes beyond `data`.
    pub cut: u64,
    /// The capture claimed more than [`MAX_WIRE_LEN`].
    pub capped: bool,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Input {
    Run(Run),
    /// Shorter than its own link header: counted as unparsed.
    Malformed,
    /// A link type replay does not read.
    Unsupported(u32),
}

/// The frame as the classifier would see it on a device, at its length on
/// the wire (a capture may keep only the first bytes).
pub fn to_input(frame: &Frame) -> Input {
    let claimed = frame.wire_len();
    let capped = claimed > MAX_WIRE_LEN;
    let wire = claimed.min(MAX_WIRE_LEN);
    let data = &frame.data;
    let (layer, hook, bytes, wire) = match frame.linktype {
        LINKTYPE_ETHERNET => (Layer::Ethernet, Hook::Ingress, data.clone(), wire),
        LINKTYPE_RAW | LINKTYPE_IPV4 | LINKTYPE_IPV6 | DLT_RAW_BSD | DLT_RAW_OPENBSD => {
            (Layer::L3, Hook::Ingress, data.clone(), wire)
        }
        // Linux cooked captures (`tcpdump -i any`): rebuild an Ethernet
        // header with the same protocol; the packet type says the direction.
        LINKTYPE_LINUX_SLL if data.len() >= SLL_HLEN => {
            let pkttype = u16::from_be_bytes([data[0], data[1]]);
            let (hook, frame) =
                ethernet_from_cooked(&data[SLL_HLEN..], [data[14], data[15]], pkttype);
            (
                Layer::Ethernet,
                hook,
                frame,
                wire - (SLL_HLEN - ETH_HLEN) as u64,
            )
        }
        LINKTYPE_LINUX_SLL2 if data.len() >= SLL2_HLEN => {
            let pkttype = u16::from(data[10]);
            let (hook, frame) =
                ethernet_from_cooked(&data[SLL2_HLEN..], [data[0], data[1]], pkttype);
            (
                Layer::Ethernet,
                hook,
                frame,
                wire - (SLL2_HLEN - ETH_HLEN) as u64,
            )
        }
        LINKTYPE_LINUX_SLL | LINKTYPE_LINUX_SLL2 => return Input::Malformed,
        other => return Input::Unsupported(other),
    };
    Input::Run(fit(layer, hook, bytes, wire, capped))
}

/// Cuts or zero-pads `bytes` to what is run of a `wire`-byte frame.
fn fit(layer: Layer, hook: Hook, mut bytes: Vec<u8>, wire: u64, capped: bool) -> Run {
    let run = wire.min(RUN_MAX as u64);
    bytes.resize(run as usize, 0);
    Run {
        layer,
        hook,
        data: bytes,
        cut: wire - run,
        capped,
    }
}

fn ethernet_from_cooked(payload: &[u8], protocol: [u8; 2], pkttype: u16) -> (Hook, Vec<u8>) {
    let mut frame = Vec::with_capacity(ETH_HLEN + payload.len());
    frame.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x01, 0x02, 0, 0, 0, 0, 0x02]);
    frame.extend_from_slice(&protocol);
    frame.extend_from_slice(payload);
    let hook = if pkttype == PACKET_OUTGOING {
        Hook::Egress
    } else {
        Hook::Ingress
    };
    (hook, frame)
}

/// libpcap's name of a link type (`LINKTYPE_` left out), if it has one.
pub fn linktype_name(linktype: u32) -> Option<String> {
    match DataLink::from(linktype) {
        DataLink::Unknown(_) => None,
        known => Some(format!("{known:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(linktype: u32, data: Vec<u8>, orig_len: u32) -> Frame {
        Frame {
            linktype,
            caplen: data.len() as u32,
            data,
            orig_len,
        }
    }

    fn run(input: Input) -> Run {
        match input {
            Input::Run(r) => r,
            other => panic!("not run: {other:?}"),
        }
    }

    #[test]
    fn truncated_frames_are_padded_to_wire_length() {
        let r = run(to_input(&frame(LINKTYPE_ETHERNET, vec![1; 60], 100)));
        assert_eq!((r.data.len(), r.cut, r.capped), (100, 0, false));
        assert_eq!(&r.data[59..61], &[1, 0]);
    }

    #[test]
    fn long_frames_are_cut_and_the_rest_counted() {
        let r = run(to_input(&frame(LINKTYPE_ETHERNET, vec![1; 200], 7106)));
        assert_eq!(
            (r.data.len(), r.cut, r.capped),
            (RUN_MAX, 7106 - RUN_MAX as u64, false)
        );
    }

    #[test]
    fn lying_wire_lengths_are_capped_not_allocated() {
        let r = run(to_input(&frame(LINKTYPE_ETHERNET, vec![1; 60], u32::MAX)));
        assert!(r.capped);
        assert_eq!(r.data.len(), RUN_MAX);
        assert_eq!(r.data.len() as u64 + r.cut, MAX_WIRE_LEN);
        // The largest real skb (BIG TCP, 512 KiB) with its headers is not.
        let big = 512 * 1024 + 14 + 50;
        let r = run(to_input(&frame(LINKTYPE_ETHERNET, vec![1; 60], big)));
        assert!(!r.capped);
        assert_eq!(r.data.len() as u64 + r.cut, u64::from(big));
    }

    #[test]
    fn captured_length_wins_over_a_smaller_original_length() {
        let r = run(to_input(&frame(LINKTYPE_RAW, vec![0x45; 80], 20)));
        assert_eq!((r.layer, r.data.len()), (Layer::L3, 80));
    }

    #[test]
    fn cooked_v1_becomes_ethernet_with_direction() {
        let mut d = vec![0u8; 16];
        d[1] = 4; // outgoing
        d[14] = 0x08; // IPv4
        d.extend_from_slice(&[0x45; 20]);
        let len = d.len() as u32;
        let r = run(to_input(&frame(LINKTYPE_LINUX_SLL, d, len + 100)));
        assert_eq!((r.layer, r.hook), (Layer::Ethernet, Hook::Egress));
        assert_eq!(&r.data[12..14], &[0x08, 0x00]);
        assert_eq!(r.data.len(), 14 + 20 + 100);
    }

    #[test]
    fn cooked_frames_shorter_than_their_header_are_malformed() {
        let f = frame(LINKTYPE_LINUX_SLL2, vec![0; 19], 19);
        assert_eq!(to_input(&f), Input::Malformed);
    }

    #[test]
    fn unknown_link_types_are_unsupported_and_named() {
        let f = frame(127, vec![0; 40], 40);
        assert_eq!(to_input(&f), Input::Unsupported(127));
        assert_eq!(linktype_name(127).as_deref(), Some("IEEE802_11_RADIOTAP"));
        assert_eq!(linktype_name(60_000), None);
    }
}
