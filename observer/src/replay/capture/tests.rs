//! Captures written byte by byte, the bad ones included.

use super::*;

fn frames(bytes: &[u8]) -> (Vec<Frame>, Option<Stop>) {
    let mut out = Vec::new();
    let stop = read_from(bytes, |f| {
        out.push(f);
        Ok(())
    })
    .expect("a capture");
    (out, stop)
}

fn pcap_header(magic: u32, big: bool, linktype: u32) -> Vec<u8> {
    let mut h = Vec::new();
    for (v, len) in [
        (magic, 4),
        (2, 2),
        (4, 2),
        (0, 4),
        (0, 4),
        (65535, 4),
        (linktype, 4),
    ] {
        let b = if big {
            v.to_be_bytes()
        } else {
            v.to_le_bytes()
        };
        let b = if big { &b[4 - len..] } else { &b[..len] };
        h.extend_from_slice(b);
    }
    h
}

fn pcap_record(big: bool, data: &[u8], orig_len: u32) -> Vec<u8> {
    let mut r = Vec::new();
    for v in [1, 2, data.len() as u32, orig_len] {
        r.extend_from_slice(&if big {
            v.to_be_bytes()
        } else {
            v.to_le_bytes()
        });
    }
    r.extend_from_slice(data);
    r
}

fn pcap(records: &[(&[u8], u32)]) -> Vec<u8> {
    let mut f = pcap_header(0xa1b2c3d4, false, 1);
    for (data, orig) in records {
        f.extend(pcap_record(false, data, *orig));
    }
    f
}

#[test]
fn pcap_in_either_byte_order_and_resolution() {
    let mut le = pcap_header(0xa1b2c3d4, false, 1);
    let mut be = pcap_header(0xa1b23c4d, true, 1);
    for (data, orig) in [(&[1u8; 60][..], 60), (&[2; 40], 1500)] {
        le.extend(pcap_record(false, data, orig));
        be.extend(pcap_record(true, data, orig));
    }
    let (a, stop) = frames(&le);
    assert_eq!(stop, None);
    assert_eq!(a.len(), 2);
    assert_eq!((a[1].caplen, a[1].orig_len, a[1].linktype), (40, 1500, 1));
    assert_eq!(frames(&be), (a, None));
}

#[test]
fn pcap_link_type_without_its_fcs_bits() {
    // Bits 26-31 say how long the FCS is (libpcap's LT_FCS_DATALINK_EXT).
    let f = pcap_header(0xa1b2c3d4, false, 1 | (0x3 << 28) | (1 << 26));
    let mut f = f;
    f.extend(pcap_record(false, &[0; 20], 20));
    assert_eq!(frames(&f).0[0].linktype, 1);
}

#[test]
fn a_lying_wire_length_is_a_number_not_memory() {
    let (f, stop) = frames(&pcap(&[(&[1; 60], u32::MAX)]));
    assert_eq!(stop, None);
    assert_eq!(
        (f[0].data.len(), f[0].wire_len()),
        (60, u64::from(u32::MAX))
    );
}

#[test]
fn only_the_first_bytes_of_a_long_frame_are_kept() {
    let long = vec![7u8; KEEP + 5000];
    let (f, stop) = frames(&pcap(&[(&long, 9000), (&[1; 20], 20)]));
    assert_eq!(stop, None);
    assert_eq!((f[0].data.len(), f[0].caplen), (KEEP, KEEP as u32 + 5000));
    // The rest was skipped, not lost track of.
    assert_eq!(f[1].data, vec![1; 20]);
}

#[test]
fn a_pcap_cut_in_a_record_stops_there_after_the_complete_ones() {
    let whole = pcap(&[(&[1; 60], 60), (&[2; 60], 60), (&[3; 60], 60)]);
    let third = 24 + 2 * (16 + 60);
    for (cut, needs, got) in [(third + 10, 16, 10), (third + 16 + 7, 76, 23)] {
        let (f, stop) = frames(&whole[..cut]);
        assert_eq!(f.len(), 2);
        let stop = stop.expect("stopped");
        assert_eq!((stop.record, stop.offset), (3, third as u64));
        assert_eq!(
            stop.reason,
            format!("the record is cut off: it needs {needs} bytes, the file ends after {got}")
        );
    }
    // Cut between records: a clean end.
    assert_eq!(frames(&whole[..third]).1, None);
}

#[test]
fn a_record_claiming_more_than_any_capture_keeps_stops() {
    let mut f = pcap(&[(&[1; 60], 60)]);
    let mut bad = pcap_record(false, &[], 100);
    bad[8..12].copy_from_slice(&(MAX_CAPLEN + 1).to_le_bytes());
    f.extend(bad);
    let (got, stop) = frames(&f);
    assert_eq!(got.len(), 1);
    let stop = stop.expect("stopped");
    assert_eq!((stop.record, stop.offset), (2, 24 + 76));
    assert!(
        stop.reason.contains("262145 captured bytes"),
        "{}",
        stop.reason
    );
}

#[test]
fn not_a_capture() {
    assert!(read_from(&b"GIF89a..."[..], |_| Ok(())).is_err());
    assert!(read_from(&b"\xd4"[..], |_| Ok(())).is_err());
    // A pcap cut in its file header has nothing to report.
    let h = pcap_header(0xa1b2c3d4, false, 1);
    let e = read_from(&h[..10], |_| Ok(())).unwrap_err();
    assert!(
        format!("{e:#}").contains("pcap file header is cut off"),
        "{e:#}"
    );
}

/// pcapng blocks, little-endian unless `BE` is used.
mod ng {
    #[derive(Clone, Copy)]
    pub struct Order(pub bool);
    pub const LE: Order = Order(false);
    pub const BE: Order = Order(true);

    impl Order {
        fn u16(self, v: u16) -> [u8; 2] {
            if self.0 {
                v.to_be_bytes()
            } else {
                v.to_le_bytes()
            }
        }
        fn u32(self, v: u32) -> [u8; 4] {
            if self.0 {
                v.to_be_bytes()
            } else {
                v.to_le_bytes()
            }
        }

        pub fn block(self, ty: u32, body: &[u8]) -> Vec<u8> {
            let mut body = body.to_vec();
            pad(&mut body);
            let total = (body.len() + 12) as u32;
            let mut b = [self.u32(ty), self.u32(total)].concat();
            b.extend(body);
            b.extend(self.u32(total));
            b
        }

        pub fn shb(self) -> Vec<u8> {
            let mut body = self.u32(0x1a2b3c4d).to_vec();
            body.extend(self.u16(1));
            body.extend(self.u16(0));
            body.extend([0xff; 8]);
            self.block(0x0a0d0d0a, &body)
        }

        pub fn idb(self, linktype: u16, snaplen: u32, options: &[u8]) -> Vec<u8> {
            let mut body = self.u16(linktype).to_vec();
            body.extend([0, 0]);
            body.extend(self.u32(snaplen));
            body.extend_from_slice(options);
            self.block(1, &body)
        }

        pub fn epb(self, interface: u32, data: &[u8], orig_len: u32, options: &[u8]) -> Vec<u8> {
            let mut body = Vec::new();
            for v in [interface, 0, 0, data.len() as u32, orig_len] {
                body.extend(self.u32(v));
            }
            body.extend_from_slice(data);
            pad(&mut body);
            body.extend_from_slice(options);
            self.block(6, &body)
        }
    }

    fn pad(v: &mut Vec<u8>) {
        while !v.len().is_multiple_of(4) {
            v.push(0);
        }
    }

    pub fn option(code: u16, value: &[u8]) -> Vec<u8> {
        let mut o = [LE.u16(code), LE.u16(value.len() as u16)].concat();
        o.extend_from_slice(value);
        pad(&mut o);
        o
    }

    pub const END: [u8; 4] = [0; 4];
}

use ng::{BE, LE};

#[test]
fn pcapng_options_end_where_the_block_ends() {
    // As Wireshark and libpcap read them: opt_endofopt is optional.
    let name = ng::option(2, b"cali1234567");
    let resolution = ng::option(9, &[9]);
    let comment = ng::option(1, b"no end marker");
    let capture = |end: &[u8]| {
        let mut f = LE.shb();
        f.extend(LE.idb(1, 0, &[&name[..], &resolution, end].concat()));
        f.extend(LE.epb(0, &[5; 42], 42, &[&comment[..], end].concat()));
        f.extend(LE.epb(0, &[6; 42], 60, &[]));
        f
    };
    let (with, stop) = frames(&capture(&ng::END));
    assert_eq!((with.len(), stop), (2, None));
    assert_eq!(frames(&capture(&[])), (with, None));
}

#[test]
fn pcapng_skips_blocks_without_packets_and_reads_simple_packets() {
    let mut f = LE.shb();
    f.extend(LE.idb(101, 30, &[]));
    f.extend(LE.block(5, &[0; 20])); // interface statistics
    f.extend(LE.block(0x4000_0bad, &[1; 7])); // custom
    let mut spb = 100u32.to_le_bytes().to_vec();
    spb.extend([0x45; 30]);
    f.extend(LE.block(3, &spb));
    let (got, stop) = frames(&f);
    assert_eq!(stop, None);
    // The snap length caps what a simple packet holds.
    assert_eq!(
        got,
        vec![Frame {
            linktype: 101,
            data: vec![0x45; 30],
            caplen: 30,
            orig_len: 100
        }]
    );
}

#[test]
fn pcapng_sections_have_their_own_byte_order_and_interfaces() {
    let mut f = LE.shb();
    f.extend(LE.idb(1, 0, &[]));
    f.extend(LE.idb(101, 0, &[]));
    f.extend(LE.epb(1, &[0x45; 20], 20, &[]));
    f.extend(BE.shb());
    f.extend(BE.idb(113, 0, &[]));
    f.extend(BE.epb(0, &[0; 20], 20, &[]));
    let (got, stop) = frames(&f);
    assert_eq!(stop, None);
    let linktypes: Vec<u32> = got.iter().map(|f| f.linktype).collect();
    assert_eq!(linktypes, vec![101, 113]);
    // Interface 1 belonged to the first section only.
    f.extend(BE.epb(1, &[0; 20], 20, &[]));
    let stop = frames(&f).1.expect("stopped");
    assert_eq!(stop.record, 8);
    assert_eq!(
        stop.reason,
        "a packet of interface 1, but the section describes 1 interfaces"
    );
}

#[test]
fn pcapng_cut_or_corrupt_blocks_stop_where_they_start() {
    let mut f = LE.shb();
    f.extend(LE.idb(1, 0, &[]));
    let third = f.len() as u64;
    f.extend(LE.epb(0, &[1; 60], 60, &[]));
    let whole = f.clone();
    f.truncate(f.len() - 30);
    let (got, stop) = frames(&f);
    assert!(got.is_empty());
    let stop = stop.expect("stopped");
    assert_eq!((stop.record, stop.offset), (3, third));
    assert_eq!(
        stop.reason,
        "the block is cut off: it needs 92 bytes, the file ends after 62"
    );

    let mut bad = whole.clone();
    let end = bad.len();
    bad[end - 4..].copy_from_slice(&96u32.to_le_bytes());
    let stop = frames(&bad).1.expect("stopped");
    assert_eq!(
        stop.reason,
        "the block's total length is 92 at its start and 96 at its end"
    );

    let mut bad = whole;
    bad[third as usize + 4..][..4].copy_from_slice(&90u32.to_le_bytes());
    let stop = frames(&bad).1.expect("stopped");
    assert_eq!(stop.offset, third);
    assert!(
        stop.reason.contains("not a multiple of 4"),
        "{}",
        stop.reason
    );
}

#[test]
fn pcapng_packets_claiming_more_than_their_block_stop() {
    let mut f = LE.shb();
    f.extend(LE.idb(1, 0, &[]));
    let mut epb = LE.epb(0, &[1; 60], u32::MAX, &[]);
    epb[20..24].copy_from_slice(&64u32.to_le_bytes());
    f.extend(epb);
    let stop = frames(&f).1.expect("stopped");
    assert_eq!(
        stop.reason,
        "the packet claims 64 captured bytes, the block holds 60"
    );
}
