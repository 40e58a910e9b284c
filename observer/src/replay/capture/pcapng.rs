//! pcapng: blocks of a type, a total length, a body and the total length
//! again. Only what replay needs is decoded: each section's byte order, each
//! interface's link type (and snap length, for simple packets) and the
//! packets. Options are never parsed: they end where the block's body ends,
//! which is also how libpcap reads option lists without `opt_endofopt`.

use std::io::BufRead;

use anyhow::Result;

use super::{Endian, Frame, MAX_CAPLEN, Short, Source, Stop};

/// The section header block's type reads the same in either byte order.
pub(super) const SHB_TYPE: [u8; 4] = [0x0a, 0x0d, 0x0d, 0x0a];
const INTERFACE_DESCRIPTION: u32 = 1;
/// The packet block of pcapng 1.0, which libpcap still reads.
const OBSOLETE_PACKET: u32 = 2;
const SIMPLE_PACKET: u32 = 3;
const ENHANCED_PACKET: u32 = 6;

/// Type and total length before the body, the total length again after.
const FRAMING: u64 = 12;

struct Interface {
    linktype: u32,
    snaplen: u32,
}

struct Section {
    endian: Endian,
    interfaces: Vec<Interface>,
}

/// Reads the file after the first block's type (the magic).
pub(super) fn read<R: BufRead>(
    src: &mut Source<R>,
    each: &mut dyn FnMut(Frame) -> Result<()>,
) -> Result<Option<Stop>> {
    let mut section = None;
    let mut record = 0;
    loop {
        record += 1;
        let first = record == 1;
        let offset = if first { src.offset - 4 } else { src.offset };
        match block(src, offset, first, &mut section) {
            Ok(Next::End) => return Ok(None),
            Ok(Next::Frame(frame)) => each(frame)?,
            Ok(Next::Other) => {}
            Err(reason) => {
                return Ok(Some(Stop {
                    record,
                    offset,
                    reason,
                }));
            }
        }
    }
}

enum Next {
    End,
    Frame(Frame),
    /// A block without a packet.
    Other,
}

/// Reads one block starting at `start`; the first block's type has been
/// read already.
fn block<R: BufRead>(
    src: &mut Source<R>,
    start: u64,
    first: bool,
    section: &mut Option<Section>,
) -> Result<Next, String> {
    let cut = |e: Short, at: u64| e.reason("block", start, at, FRAMING);
    let ty = if first {
        SHB_TYPE
    } else {
        if src.at_end().map_err(|e| cut(e, start))? {
            return Ok(Next::End);
        }
        let mut ty = [0u8; 4];
        src.read_exact(&mut ty).map_err(|e| cut(e, src.offset))?;
        ty
    };
    if ty == SHB_TYPE {
        let (endian, mut body) = section_start(src, start)?;
        *section = Some(section_header(&mut body, endian)?);
        body.finish(endian)?;
        return Ok(Next::Other);
    }
    let Some(section) = section.as_mut() else {
        return Err("a block before any section header".into());
    };
    let endian = section.endian;
    let mut length = [0u8; 4];
    src.read_exact(&mut length)
        .map_err(|e| cut(e, src.offset))?;
    let mut body = Body::new(src, start, endian.u32(&length), 8)?;
    let next = match endian.u32(&ty) {
        INTERFACE_DESCRIPTION => {
            section.interfaces.push(interface(&mut body, endian)?);
            Next::Other
        }
        ENHANCED_PACKET => Next::Frame(enhanced(&mut body, endian, section)?),
        OBSOLETE_PACKET => Next::Frame(obsolete(&mut body, endian, section)?),
        SIMPLE_PACKET => Next::Frame(simple(&mut body, endian, section)?),
        // Statistics, name resolution, secrets, custom blocks...
        _ => Next::Other,
    };
    body.finish(endian)?;
    Ok(next)
}

/// The section header's total length and byte-order magic: the magic says
/// in which order to read the length.
fn section_start<R: BufRead>(
    src: &mut Source<R>,
    start: u64,
) -> Result<(Endian, Body<'_, R>), String> {
    let mut head = [0u8; 8];
    src.read_exact(&mut head)
        .map_err(|e| e.reason("block", start, src.offset, FRAMING + 4))?;
    let endian = match head[4..] {
        [0x4d, 0x3c, 0x2b, 0x1a] => Endian::Little,
        [0x1a, 0x2b, 0x3c, 0x4d] => Endian::Big,
        _ => {
            return Err(format!(
                "a section header with byte-order magic {:02x?}, neither 1a2b3c4d nor 4d3c2b1a",
                &head[4..]
            ));
        }
    };
    let body = Body::new(src, start, endian.u32(&head), 12)?;
    Ok((endian, body))
}

fn section_header<R: BufRead>(body: &mut Body<'_, R>, endian: Endian) -> Result<Section, String> {
    // Version, then a section length that libpcap ignores too.
    let mut fields = [0u8; 12];
    body.fields(&mut fields)?;
    let (major, minor) = (endian.u16(&fields), endian.u16(&fields[2..]));
    if major != 1 {
        return Err(format!(
            "pcapng version {major}.{minor}: only version 1 is read"
        ));
    }
    Ok(Section {
        endian,
        interfaces: Vec::new(),
    })
}

fn interface<R: BufRead>(body: &mut Body<'_, R>, endian: Endian) -> Result<Interface, String> {
    let mut fields = [0u8; 8];
    body.fields(&mut fields)?;
    Ok(Interface {
        linktype: u32::from(endian.u16(&fields)),
        snaplen: endian.u32(&fields[4..]),
    })
}

/// Interface id, timestamp (two words), captured and original lengths.
fn enhanced<R: BufRead>(
    body: &mut Body<'_, R>,
    endian: Endian,
    section: &Section,
) -> Result<Frame, String> {
    let mut fields = [0u8; 20];
    body.fields(&mut fields)?;
    let interface = endian.u32(&fields);
    let caplen = endian.u32(&fields[12..]);
    let orig_len = endian.u32(&fields[16..]);
    packet(body, section, interface, caplen, orig_len)
}

/// As enhanced, with a 16-bit interface id and a drop count.
fn obsolete<R: BufRead>(
    body: &mut Body<'_, R>,
    endian: Endian,
    section: &Section,
) -> Result<Frame, String> {
    let mut fields = [0u8; 20];
    body.fields(&mut fields)?;
    let interface = u32::from(endian.u16(&fields));
    let caplen = endian.u32(&fields[12..]);
    let orig_len = endian.u32(&fields[16..]);
    packet(body, section, interface, caplen, orig_len)
}

/// Only the original length: the captured length is the smaller of it and
/// the first interface's snap length (0: none).
fn simple<R: BufRead>(
    body: &mut Body<'_, R>,
    endian: Endian,
    section: &Section,
) -> Result<Frame, String> {
    let mut fields = [0u8; 4];
    body.fields(&mut fields)?;
    let orig_len = endian.u32(&fields);
    let snaplen = match section.interfaces.first() {
        Some(i) if i.snaplen != 0 => i.snaplen,
        _ => u32::MAX,
    };
    packet(body, section, 0, orig_len.min(snaplen), orig_len)
}

fn packet<R: BufRead>(
    body: &mut Body<'_, R>,
    section: &Section,
    interface: u32,
    caplen: u32,
    orig_len: u32,
) -> Result<Frame, String> {
    let Some(linktype) = section
        .interfaces
        .get(interface as usize)
        .map(|i| i.linktype)
    else {
        return Err(format!(
            "a packet of interface {interface}, but the section describes {} interfaces",
            section.interfaces.len()
        ));
    };
    if caplen > MAX_CAPLEN {
        return Err(format!(
            "the packet claims {caplen} captured bytes, more than any capture keeps \
             ({MAX_CAPLEN}): the file is corrupt here"
        ));
    }
    Ok(Frame {
        linktype,
        data: body.packet(caplen)?,
        caplen,
        orig_len,
    })
}

/// The body of a block being read: what is left of it, so that no field
/// is read past its end, and where the block started, to say where it is
/// cut off.
struct Body<'a, R> {
    src: &'a mut Source<R>,
    start: u64,
    total: u32,
    left: u64,
}

impl<'a, R: BufRead> Body<'a, R> {
    /// A block of `total` bytes of which `read` (its type, length and what
    /// else the caller read) are behind us.
    fn new(src: &'a mut Source<R>, start: u64, total: u32, read: u64) -> Result<Self, String> {
        if u64::from(total) < read + 4 || !total.is_multiple_of(4) {
            return Err(format!(
                "a block of total length {total}: not a multiple of 4 of at least {}",
                read + 4
            ));
        }
        Ok(Self {
            src,
            start,
            total,
            left: u64::from(total) - read - 4,
        })
    }

    fn cut(&self, e: Short) -> String {
        e.reason("block", self.start, self.src.offset, u64::from(self.total))
    }

    fn fields(&mut self, buf: &mut [u8]) -> Result<(), String> {
        if buf.len() as u64 > self.left {
            return Err(format!(
                "a block of {} bytes, too short for its fields",
                self.total
            ));
        }
        self.src.read_exact(buf).map_err(|e| self.cut(e))?;
        self.left -= buf.len() as u64;
        Ok(())
    }

    fn packet(&mut self, caplen: u32) -> Result<Vec<u8>, String> {
        if u64::from(caplen) > self.left {
            return Err(format!(
                "the packet claims {caplen} captured bytes, the block holds {}",
                self.left
            ));
        }
        let data = self.src.packet(caplen).map_err(|e| self.cut(e))?;
        self.left -= u64::from(caplen);
        Ok(data)
    }

    /// Skips the rest of the body (padding, options) and checks the
    /// trailing copy of the total length, as libpcap does.
    fn finish(mut self, endian: Endian) -> Result<(), String> {
        self.src.skip(self.left).map_err(|e| self.cut(e))?;
        self.left = 0;
        let mut trailer = [0u8; 4];
        self.src.read_exact(&mut trailer).map_err(|e| self.cut(e))?;
        let again = endian.u32(&trailer);
        if again != self.total {
            return Err(format!(
                "the block's total length is {} at its start and {again} at its end",
                self.total
            ));
        }
        Ok(())
    }
}
