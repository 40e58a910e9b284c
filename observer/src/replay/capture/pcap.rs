//! Classic pcap (libpcap's savefile format): a 24-byte file header, then
//! records of a 16-byte header and the captured bytes.

use std::io::BufRead;

use anyhow::{Result, bail};

use super::{Endian, Frame, MAX_CAPLEN, Source, Stop};

const FILE_HEADER: u64 = 24;
const RECORD_HEADER: u64 = 16;

/// The upper bits of the link-type field carry FCS information
/// (libpcap's `LT_LINKTYPE`).
const LINKTYPE_MASK: u32 = 0x03ff_ffff;

fn endian(magic: [u8; 4]) -> Option<Endian> {
    match magic {
        // Microsecond and nanosecond timestamps: the same layout.
        [0xd4, 0xc3, 0xb2, 0xa1] | [0x4d, 0x3c, 0xb2, 0xa1] => Some(Endian::Little),
        [0xa1, 0xb2, 0xc3, 0xd4] | [0xa1, 0xb2, 0x3c, 0x4d] => Some(Endian::Big),
        _ => None,
    }
}

/// Reads the rest of the file after its `magic`.
pub(super) fn read<R: BufRead>(
    src: &mut Source<R>,
    magic: [u8; 4],
    each: &mut dyn FnMut(Frame) -> Result<()>,
) -> Result<Option<Stop>> {
    let Some(endian) = endian(magic) else {
        bail!("neither pcap nor pcapng (the file starts with {magic:02x?})");
    };
    let mut header = [0u8; FILE_HEADER as usize - 4];
    if let Err(e) = src.read_exact(&mut header) {
        bail!(
            "{}",
            e.reason("pcap file header", 0, src.offset, FILE_HEADER)
        );
    }
    let linktype = endian.u32(&header[16..]) & LINKTYPE_MASK;
    let mut record = 0;
    loop {
        record += 1;
        let offset = src.offset;
        match next(src, endian, linktype) {
            Ok(None) => return Ok(None),
            Ok(Some(frame)) => each(frame)?,
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

/// The next record's frame; `None` at the end of the file.
fn next<R: BufRead>(
    src: &mut Source<R>,
    endian: Endian,
    linktype: u32,
) -> Result<Option<Frame>, String> {
    let start = src.offset;
    if src
        .at_end()
        .map_err(|e| e.reason("record", start, start, RECORD_HEADER))?
    {
        return Ok(None);
    }
    let mut header = [0u8; RECORD_HEADER as usize];
    src.read_exact(&mut header)
        .map_err(|e| e.reason("record", start, src.offset, RECORD_HEADER))?;
    let caplen = endian.u32(&header[8..]);
    let orig_len = endian.u32(&header[12..]);
    if caplen > MAX_CAPLEN {
        return Err(format!(
            "the record claims {caplen} captured bytes, more than any capture keeps \
             ({MAX_CAPLEN}): the file is corrupt here"
        ));
    }
    let data = src.packet(caplen).map_err(|e| {
        let need = RECORD_HEADER + u64::from(caplen);
        e.reason("record", start, src.offset, need)
    })?;
    Ok(Some(Frame {
        linktype,
        data,
        caplen,
        orig_len,
    }))
}
