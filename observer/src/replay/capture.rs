//! Reading captures (pcap and pcapng) and turning each frame into what the
//! classifier sees on a device: an Ethernet frame, or an IP packet as on an
//! L3 device such as `tunl0`.

use std::{fs::File, io::BufReader, path::Path};

use anyhow::{Context as _, Result, bail};
use observer_common::Hook;
use pcap_file::{
    DataLink,
    pcap::PcapReader,
    pcapng::{Block, PcapNgReader},
};

/// One captured frame: its link type (without the FCS bits some writers
/// add to it), the bytes kept, and its length on the wire.
pub struct Frame {
    pub linktype: u32,
    pub data: Vec<u8>,
    pub orig_len: u32,
}

/// What to run the classifier on.
#[derive(Debug, PartialEq, Eq)]
pub enum Input {
    Ethernet {
        frame: Vec<u8>,
        hook: Hook,
    },
    L3 {
        packet: Vec<u8>,
        hook: Hook,
    },
    /// A link type we do not read; counted as unparsed.
    Unsupported(u32),
}

const LINKTYPE_ETHERNET: u32 = 1;
const LINKTYPE_RAW: u32 = 101;
const LINKTYPE_LINUX_SLL: u32 = 113;
const LINKTYPE_IPV4: u32 = 228;
const LINKTYPE_IPV6: u32 = 229;
const LINKTYPE_LINUX_SLL2: u32 = 276;
/// `DLT_RAW` as some BSDs write it.
const DLT_RAW_BSD: u32 = 12;
const DLT_RAW_OPENBSD: u32 = 14;

/// SLL packet type of a frame the capturing host sent.
const PACKET_OUTGOING: u16 = 4;

fn linktype_number(dl: DataLink) -> u32 {
    // The upper bits of the link-type field carry FCS information.
    u32::from(dl) & 0xffff
}

/// Calls `each` for every frame of a pcap or pcapng file, in order.
pub fn for_each_frame(path: &Path, mut each: impl FnMut(Frame)) -> Result<()> {
    let mut magic = [0u8; 4];
    {
        use std::io::Read as _;
        File::open(path)
            .with_context(|| format!("opening {}", path.display()))?
            .read_exact(&mut magic)
            .with_context(|| format!("{} is too short to be a capture", path.display()))?;
    }
    let file = BufReader::new(File::open(path)?);
    if magic == [0x0a, 0x0d, 0x0d, 0x0a] {
        let mut reader = PcapNgReader::new(file)
            .with_context(|| format!("reading pcapng {}", path.display()))?;
        let mut linktypes: Vec<u32> = Vec::new();
        while let Some(block) = reader.next_block() {
            match block.with_context(|| format!("reading a pcapng block of {}", path.display()))? {
                Block::SectionHeader(_) => linktypes.clear(),
                Block::InterfaceDescription(idb) => linktypes.push(linktype_number(idb.linktype)),
                Block::EnhancedPacket(epb) => {
                    let Some(&linktype) = linktypes.get(epb.interface_id as usize) else {
                        bail!(
                            "{}: packet for undeclared interface {}",
                            path.display(),
                            epb.interface_id
                        );
                    };
                    each(Frame {
                        linktype,
                        data: epb.data.into_owned(),
                        orig_len: epb.original_len,
                    });
                }
                Block::SimplePacket(spb) => {
                    let linktype = *linktypes
                        .first()
                        .context("simple packet before any interface")?;
                    each(Frame {
                        linktype,
                        orig_len: spb.original_len,
                        data: spb.data.into_owned(),
                    });
                }
                _ => {}
            }
        }
        return Ok(());
    }
    let mut reader = PcapReader::new(file)
        .with_context(|| format!("{} is neither pcap nor pcapng", path.display()))?;
    let linktype = linktype_number(reader.header().datalink);
    while let Some(pkt) = reader.next_raw_packet() {
        let pkt = pkt.with_context(|| format!("reading a packet record of {}", path.display()))?;
        each(Frame {
            linktype,
            data: pkt.data.into_owned(),
            orig_len: pkt.orig_len,
        });
    }
    Ok(())
}

/// The frame as the classifier would see it on a device, padded with zeros
/// to its length on the wire (a capture may keep only the first bytes), so
/// that byte counts are those of the wire.
pub fn to_input(frame: &Frame) -> Input {
    let mut data = frame.data.clone();
    if (frame.orig_len as usize) > data.len() {
        data.resize(frame.orig_len as usize, 0);
    }
    match frame.linktype {
        LINKTYPE_ETHERNET => Input::Ethernet {
            frame: data,
            hook: Hook::Ingress,
        },
        LINKTYPE_RAW | LINKTYPE_IPV4 | LINKTYPE_IPV6 | DLT_RAW_BSD | DLT_RAW_OPENBSD => Input::L3 {
            packet: data,
            hook: Hook::Ingress,
        },
        // Linux cooked captures (`tcpdump -i any`): rebuild an Ethernet
        // header with the same protocol; the packet type says the direction.
        LINKTYPE_LINUX_SLL if data.len() >= 16 => {
            let pkttype = u16::from_be_bytes([data[0], data[1]]);
            ethernet_from_cooked(&data[16..], [data[14], data[15]], pkttype)
        }
        LINKTYPE_LINUX_SLL2 if data.len() >= 20 => {
            let pkttype = data[10] as u16;
            ethernet_from_cooked(&data[20..], [data[0], data[1]], pkttype)
        }
        other => Input::Unsupported(other),
    }
}

fn ethernet_from_cooked(payload: &[u8], protocol: [u8; 2], pkttype: u16) -> Input {
    let mut frame = Vec::with_capacity(14 + payload.len());
    frame.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x01, 0x02, 0, 0, 0, 0, 0x02]);
    frame.extend_from_slice(&protocol);
    frame.extend_from_slice(payload);
    let hook = if pkttype == PACKET_OUTGOING {
        Hook::Egress
    } else {
        Hook::Ingress
    };
    Input::Ethernet { frame, hook }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncated_frames_are_padded_to_wire_length() {
        let f = Frame {
            linktype: LINKTYPE_ETHERNET,
            data: vec![1; 60],
            orig_len: 100,
        };
        match to_input(&f) {
            Input::Ethernet { frame, .. } => assert_eq!(frame.len(), 100),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn cooked_v1_becomes_ethernet_with_direction() {
        let mut d = vec![0u8; 16];
        d[1] = 4; // outgoing
        d[14] = 0x08; // IPv4
        d.extend_from_slice(&[0x45; 20]);
        let f = Frame {
            linktype: LINKTYPE_LINUX_SLL,
            orig_len: d.len() as u32,
            data: d,
        };
        match to_input(&f) {
            Input::Ethernet { frame, hook } => {
                assert_eq!(hook, Hook::Egress);
                assert_eq!(&frame[12..14], &[0x08, 0x00]);
                assert_eq!(frame.len(), 14 + 20);
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn unknown_link_types_are_unsupported() {
        let f = Frame {
            linktype: 147,
            data: vec![0; 40],
            orig_len: 40,
        };
        assert_eq!(to_input(&f), Input::Unsupported(147));
    }
}
