//! Reading captures (pcap and pcapng) front to back, as libpcap does, but
//! never trusting a length field with memory: a frame keeps at most its
//! first [`KEEP`] bytes (more than the classifier is ever run on) and the
//! rest is skipped. A file that ends or goes wrong inside a record stops
//! the reading with a [`Stop`] that says where, after every complete frame
//! before it has been handed out.

mod pcap;
mod pcapng;

use std::{
    fmt,
    fs::File,
    io::{self, BufRead, BufReader, Read},
    path::Path,
};

use anyhow::{Context as _, Result, bail};
use serde::{Deserialize, Serialize};

/// Bytes of a frame kept in memory: the classifier runs on at most
/// `input::RUN_MAX` bytes of a frame, after its link header.
pub const KEEP: usize = 4096;

/// libpcap's `MAXIMUM_SNAPLEN`: neither libpcap nor Wireshark keeps more of
/// a packet, and libpcap refuses a record that claims more as corrupt.
pub const MAX_CAPLEN: u32 = 262_144;

/// One captured frame: its link type, the first bytes kept, how many bytes
/// the capture kept and its length on the wire as the capture claims it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub linktype: u32,
    pub data: Vec<u8>,
    pub caplen: u32,
    pub orig_len: u32,
}

impl Frame {
    /// Length on the wire: never less than what was captured.
    pub fn wire_len(&self) -> u64 {
        u64::from(self.caplen.max(self.orig_len))
    }
}

/// Where and why reading stopped before the end of the file.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Stop {
    /// The record (pcapng: block) it stopped in, counting from 1.
    pub record: u64,
    /// The byte offset in the file where that record starts.
    pub offset: u64,
    pub reason: String,
}

impl fmt::Display for Stop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "reading stopped at record {} (byte offset {}): {}",
            self.record, self.offset, self.reason
        )
    }
}

/// Calls `each` for every complete frame of a pcap or pcapng file, in
/// order. `Ok(Some(stop))`: the file is cut off or corrupt at `stop`.
/// `Err`: the file cannot be read as a capture at all, or `each` failed.
pub fn read(path: &Path, each: impl FnMut(Frame) -> Result<()>) -> Result<Option<Stop>> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    read_from(BufReader::with_capacity(1 << 16, file), each)
        .with_context(|| format!("reading {}", path.display()))
}

pub fn read_from(
    reader: impl BufRead,
    mut each: impl FnMut(Frame) -> Result<()>,
) -> Result<Option<Stop>> {
    let mut src = Source::new(reader);
    let mut magic = [0u8; 4];
    if src.read_exact(&mut magic).is_err() {
        bail!("too short to be a capture");
    }
    match magic {
        pcapng::SHB_TYPE => pcapng::read(&mut src, &mut each),
        _ => pcap::read(&mut src, magic, &mut each),
    }
}

/// Byte order of a file (pcap) or section (pcapng).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Endian {
    Little,
    Big,
}

impl Endian {
    fn u16(self, b: &[u8]) -> u16 {
        let b = [b[0], b[1]];
        match self {
            Endian::Little => u16::from_le_bytes(b),
            Endian::Big => u16::from_be_bytes(b),
        }
    }

    fn u32(self, b: &[u8]) -> u32 {
        let b = [b[0], b[1], b[2], b[3]];
        match self {
            Endian::Little => u32::from_le_bytes(b),
            Endian::Big => u32::from_be_bytes(b),
        }
    }
}

/// Why a read came up short.
#[derive(Debug)]
enum Short {
    /// The file ended.
    End,
    Io(io::Error),
}

impl Short {
    /// The reason to stop, for a record that needed `need` bytes from
    /// `start` and got as far as `at`.
    fn reason(self, what: &str, start: u64, at: u64, need: u64) -> String {
        match self {
            Short::End => format!(
                "the {what} is cut off: it needs {need} bytes, the file ends after {}",
                at - start
            ),
            Short::Io(e) => format!("read error in the {what}: {e}"),
        }
    }
}

/// A capture file being read, with the offset reached.
struct Source<R> {
    inner: R,
    offset: u64,
}

impl<R: BufRead> Source<R> {
    fn new(inner: R) -> Self {
        Self { inner, offset: 0 }
    }

    /// Whether the file ends here: the end between two records is clean.
    fn at_end(&mut self) -> Result<bool, Short> {
        loop {
            match self.inner.fill_buf() {
                Ok(buf) => return Ok(buf.is_empty()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Short::Io(e)),
            }
        }
    }

    fn read_exact(&mut self, buf: &mut [u8]) -> Result<(), Short> {
        let mut got = 0;
        while got < buf.len() {
            match self.inner.read(&mut buf[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Short::Io(e)),
            }
        }
        self.offset += got as u64;
        if got < buf.len() {
            return Err(Short::End);
        }
        Ok(())
    }

    /// Skips `n` bytes by reading them: a file may be a pipe.
    fn skip(&mut self, n: u64) -> Result<(), Short> {
        let skipped =
            io::copy(&mut (&mut self.inner).take(n), &mut io::sink()).map_err(Short::Io)?;
        self.offset += skipped;
        if skipped < n {
            return Err(Short::End);
        }
        Ok(())
    }

    /// Reads `len` bytes of packet data and keeps the first [`KEEP`].
    fn packet(&mut self, len: u32) -> Result<Vec<u8>, Short> {
        let mut data = vec![0u8; (len as usize).min(KEEP)];
        self.read_exact(&mut data)?;
        self.skip(u64::from(len) - data.len() as u64)?;
        Ok(data)
    }
}

#[cfg(test)]
mod tests;
