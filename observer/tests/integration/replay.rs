//! `observer replay` on real captures from tcpdump's test suite
//! (tests/pcaps, BSD licence): flows, addresses, ports, encapsulation and
//! byte counts must agree with tcpdump's own decode beside each capture
//! (the `.out` files), which nobody here wrote.

use std::path::{Path, PathBuf};

use observer::{api::FlowView, replay::ReplayReport};

use crate::common::{self, lab::observer};

fn replay(capture: &str) -> ReplayReport {
    common::require_root();
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/pcaps")
        .join(capture);
    replay_path(&path)
}

fn find<'a>(r: &'a ReplayReport, src: &str, dst: &str, proto: &str) -> Vec<&'a FlowView> {
    r.flows
        .iter()
        .filter(|f| {
            f.src_ip.to_string() == src
                && f.dst_ip.to_string() == dst
                && f.protocol.to_string() == proto
        })
        .collect()
}

fn one<'a>(r: &'a ReplayReport, src: &str, dst: &str, proto: &str) -> &'a FlowView {
    let found = find(r, src, dst, proto);
    assert_eq!(
        found.len(),
        1,
        "one {proto} flow {src} -> {dst} in {:#?}",
        r.flows
    );
    found[0]
}

#[test]
fn vxlan_inner_icmp_and_arp() {
    // 10 VXLAN frames (VNI 100): 8 carry ICMP echo (IP length 84 inside,
    // "length 98" as inner Ethernet), 2 carry ARP.
    let r = replay("vxlan.pcap");
    assert_eq!((r.frames, r.non_ip, r.unparsed), (10, 2, 0));
    assert_eq!(r.flows.len(), 2);
    for (src, dst, icmp_type) in [
        ("192.168.203.3", "192.168.203.5", 8),
        ("192.168.203.5", "192.168.203.3", 0),
    ] {
        let f = one(&r, src, dst, "icmp");
        assert_eq!(f.encap.name(), "vxlan");
        assert_eq!(f.icmp_type, Some(icmp_type));
        assert_eq!((f.packets, f.bytes, f.overhead_bytes), (4, 4 * 84, 4 * 50));
    }
}

#[test]
fn gso_vxlan_super_packet() {
    // One 7 KB skb: outer UDP length 7092 -> inner IP length 7042, TCP
    // 192.168.1.2.37099 > 192.168.1.1.41547 Flags [P.].
    let r = replay("gso-ipv4-vxlan-ipv4.pcap");
    assert_eq!((r.frames, r.unparsed), (1, 0));
    let f = one(&r, "192.168.1.2", "192.168.1.1", "tcp");
    assert_eq!((f.src_port, f.dst_port), (37099, 41547));
    assert_eq!(f.encap.name(), "vxlan");
    assert_eq!((f.packets, f.bytes, f.overhead_bytes), (1, 7042, 50));
    assert_eq!(f.tcp_flags, "PSH|ACK");
}

#[test]
fn raw_ip_link_type_as_on_tunl0() {
    // 192.168.1.100.12345 > 9.9.9.9.53: A? example.com. (29)
    let r = replay("LINKTYPE_RAW_ipv4.pcap");
    let f = one(&r, "192.168.1.100", "9.9.9.9", "udp");
    assert_eq!(
        (f.src_port, f.dst_port, f.bytes, f.encap.name()),
        (12345, 53, 20 + 8 + 29, "none")
    );
    // 2001:db8::1.12345 > 2620:fe::9.53: (29)
    let r = replay("LINKTYPE_RAW_ipv6.pcap");
    let f = one(&r, "2001:db8::1", "2620:fe::9", "udp");
    assert_eq!((f.src_port, f.dst_port, f.bytes), (12345, 53, 40 + 8 + 29));
}

#[test]
fn truncated_capture_counts_wire_length() {
    // The reply was captured 98 of 266 bytes: IP length 252 on the wire.
    let r = replay("dns_udp_2.pcap");
    assert_eq!((r.frames, r.unparsed), (2, 0));
    let q = one(&r, "192.168.1.11", "209.87.249.18", "udp");
    assert_eq!((q.src_port, q.dst_port, q.bytes), (43966, 53, 84));
    let a = one(&r, "209.87.249.18", "192.168.1.11", "udp");
    assert_eq!((a.src_port, a.dst_port, a.bytes), (53, 43966, 252));
}

#[test]
fn malformed_frame_is_unparsed_not_a_crash() {
    let r = replay("heap-overflow-1.pcap");
    assert_eq!((r.frames, r.unparsed, r.flows.len()), (1, 1, 0));
}

#[test]
fn qinq_tagged_arp_is_non_ip() {
    let r = replay("802.1ad_QinQ.pcap");
    assert_eq!(
        (r.frames, r.non_ip, r.unparsed, r.flows.len()),
        (2, 2, 0, 0)
    );
}

#[test]
fn ipv6_routing_header_is_walked() {
    // Payload lengths 32 and 48 after the 40-byte header, to the final
    // destination of each routing header: ICMPv6 echo and UDP 5645 > 5642.
    let r = replay("ipv6-routing-header.pcap");
    assert_eq!((r.frames, r.unparsed), (4, 0));
    let src = "2200::244:212:3fff:feae:22f7";
    for (dst, bytes) in [("2200::240:2:0:0:4", 72), ("2200::211:2:0:0:2", 88)] {
        let e = one(&r, src, dst, "icmpv6");
        assert_eq!((e.icmp_type, e.bytes), (Some(128), bytes));
        let u = one(&r, src, dst, "udp");
        assert_eq!((u.src_port, u.dst_port, u.bytes), (5645, 5642, bytes));
    }
}

#[test]
fn icmpv6_with_hop_by_hop_options() {
    let r = replay("icmpv6.pcap");
    assert_eq!((r.frames, r.unparsed), (5, 0));
    let ra = one(&r, "fe80::b299:28ff:fec8:d66c", "ff02::1", "icmpv6");
    assert_eq!((ra.icmp_type, ra.bytes), (Some(134), 40 + 176));
    let reports = one(&r, "fe80::215:17ff:fecc:e546", "ff02::16", "icmpv6");
    assert_eq!(
        (reports.icmp_type, reports.packets, reports.bytes),
        (Some(143), 3, 76 + 136 + 76)
    );
    let query = one(&r, "fe80::b2a8:6eff:fe0c:d4e8", "ff02::1", "icmpv6");
    assert_eq!((query.icmp_type, query.bytes), (Some(130), 76));
}

fn replay_path(path: &Path) -> ReplayReport {
    let path = path.to_str().expect("UTF-8 path");
    serde_json::from_str(&observer(&["replay", "-o", "json", path])).expect("replay JSON")
}

/// Flows without their times, to compare two replays.
fn shape(r: &ReplayReport) -> Vec<String> {
    let mut v: Vec<String> = r
        .flows
        .iter()
        .map(|f| {
            format!(
                "{} {}:{} > {}:{} {} {} pkts {} bytes {} overhead",
                f.protocol,
                f.src_ip,
                f.src_port,
                f.dst_ip,
                f.dst_port,
                f.encap,
                f.packets,
                f.bytes,
                f.overhead_bytes
            )
        })
        .collect();
    v.sort();
    v
}

#[test]
fn pcapng_replays_like_pcap() {
    use pcap_file::{
        DataLink,
        pcap::PcapReader,
        pcapng::{
            PcapNgWriter,
            blocks::{
                enhanced_packet::EnhancedPacketBlock,
                interface_description::InterfaceDescriptionBlock,
            },
        },
    };
    common::require_root();
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/pcaps/vxlan.pcap");
    let dir = tempfile::tempdir().unwrap();
    let dst = dir.path().join("vxlan.pcapng");
    let mut reader = PcapReader::new(std::fs::File::open(&src).unwrap()).unwrap();
    let mut writer = PcapNgWriter::new(std::fs::File::create(&dst).unwrap()).unwrap();
    writer
        .write_pcapng_block(InterfaceDescriptionBlock {
            linktype: DataLink::ETHERNET,
            snaplen: 0,
            options: vec![],
        })
        .unwrap();
    while let Some(p) = reader.next_packet() {
        let p = p.unwrap();
        writer
            .write_pcapng_block(EnhancedPacketBlock {
                interface_id: 0,
                timestamp: p.timestamp,
                original_len: p.orig_len,
                data: p.data,
                options: vec![],
            })
            .unwrap();
    }
    drop(writer);
    let (a, b) = (replay("vxlan.pcap"), replay_path(&dst));
    assert_eq!(
        (b.frames, b.non_ip, b.unparsed),
        (a.frames, a.non_ip, a.unparsed)
    );
    assert_eq!(shape(&b), shape(&a));
}

#[test]
fn cooked_captures_keep_their_direction() {
    use pcap_file::{
        DataLink,
        pcap::{PcapHeader, PcapPacket, PcapWriter},
    };
    common::require_root();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("any.pcap");
    let header = PcapHeader {
        datalink: DataLink::LINUX_SLL2,
        ..Default::default()
    };
    let mut w = PcapWriter::with_header(std::fs::File::create(&path).unwrap(), header).unwrap();
    let query = common::udp4(
        common::ip4("10.244.0.1"),
        common::ip4("10.244.0.66"),
        40000,
        53,
        &[1; 30],
    );
    let answer = common::udp4(
        common::ip4("10.244.0.66"),
        common::ip4("10.244.0.1"),
        53,
        40000,
        &[2; 90],
    );
    // SLL2: protocol, reserved, ifindex, ARPHRD, packet type, addr len, addr.
    for (pkt, pkttype) in [(&query, 4u8), (&answer, 0u8)] {
        let mut frame = vec![
            0x08, 0x00, 0, 0, 0, 0, 0, 5, 0, 1, pkttype, 6, 2, 0, 0, 0, 0, 1, 0, 0,
        ];
        frame.extend_from_slice(pkt);
        w.write_packet(&PcapPacket::new(
            std::time::Duration::ZERO,
            frame.len() as u32,
            &frame,
        ))
        .unwrap();
    }
    drop(w);
    let r = replay_path(&path);
    assert_eq!((r.frames, r.unparsed), (2, 0));
    let q = one(&r, "10.244.0.1", "10.244.0.66", "udp");
    assert_eq!((q.direction.name(), q.bytes), ("egress", 58));
    let a = one(&r, "10.244.0.66", "10.244.0.1", "udp");
    assert_eq!((a.direction.name(), a.bytes), ("ingress", 118));
}

// Captures that lie, end early or are of a kind replay does not read,
// written byte by byte: replay must say so, never count what was not there.

/// A classic little-endian pcap: `linktype`, then each frame with the
/// wire length its record claims.
fn pcap_bytes(linktype: u32, frames: &[(Vec<u8>, u32)]) -> Vec<u8> {
    let mut f = Vec::new();
    for v in [0xa1b2c3d4u32, 0x0004_0002, 0, 0, 262_144, linktype] {
        f.extend(v.to_le_bytes());
    }
    for (data, orig_len) in frames {
        for v in [0, 0, data.len() as u32, *orig_len] {
            f.extend(v.to_le_bytes());
        }
        f.extend_from_slice(data);
    }
    f
}

/// Little-endian pcapng blocks.
mod ng {
    fn pad(v: &mut Vec<u8>) {
        while !v.len().is_multiple_of(4) {
            v.push(0);
        }
    }

    pub fn block(ty: u32, body: &[u8]) -> Vec<u8> {
        let mut body = body.to_vec();
        pad(&mut body);
        let total = (body.len() as u32 + 12).to_le_bytes();
        [&ty.to_le_bytes()[..], &total, &body, &total].concat()
    }

    pub fn option(code: u16, value: &[u8]) -> Vec<u8> {
        let mut o = [code.to_le_bytes(), (value.len() as u16).to_le_bytes()].concat();
        o.extend_from_slice(value);
        pad(&mut o);
        o
    }

    /// `opt_endofopt`.
    pub const END: &[u8] = &[0; 4];

    pub fn shb() -> Vec<u8> {
        let body = [&0x1a2b3c4du32.to_le_bytes()[..], &[1, 0, 0, 0], &[0xff; 8]].concat();
        block(0x0a0d0d0a, &body)
    }

    pub fn idb(linktype: u16, options: &[u8]) -> Vec<u8> {
        let body = [&linktype.to_le_bytes()[..], &[0; 6], options].concat();
        block(1, &body)
    }

    pub fn epb(interface: u32, data: &[u8], orig_len: u32, options: &[u8]) -> Vec<u8> {
        let mut body = Vec::new();
        for v in [interface, 0, 0, data.len() as u32, orig_len] {
            body.extend(v.to_le_bytes());
        }
        body.extend_from_slice(data);
        pad(&mut body);
        body.extend_from_slice(options);
        block(6, &body)
    }
}

/// What one run of the binary did, and what it cost.
struct Run {
    exit_code: i32,
    stdout: String,
    stderr: String,
    peak_rss_kib: u64,
    elapsed: std::time::Duration,
}

impl Run {
    fn report(&self) -> ReplayReport {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("replay JSON: {e}; stderr: {}", self.stderr))
    }
}

/// Runs the observer and follows its peak RSS (VmHWM) while it runs. Not
/// wait4's ru_maxrss: that counts the test process's own memory too,
/// which the child shared until its exec.
fn run_measured(args: &[&str]) -> Run {
    common::require_root();
    let dir = tempfile::tempdir().unwrap();
    let (out, err) = (dir.path().join("stdout"), dir.path().join("stderr"));
    let start = std::time::Instant::now();
    let mut child = common::lab::command(args)
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .expect("run observer");
    let status_file = format!("/proc/{}/status", child.id());
    let mut peak_rss_kib = 0;
    let status = loop {
        let hwm = std::fs::read_to_string(&status_file).ok().and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
            line.split_whitespace().nth(1)?.parse::<u64>().ok()
        });
        peak_rss_kib = peak_rss_kib.max(hwm.unwrap_or(0));
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    Run {
        exit_code: status.code().expect("exited"),
        stdout: std::fs::read_to_string(out).unwrap(),
        stderr: std::fs::read_to_string(err).unwrap(),
        peak_rss_kib,
        elapsed: start.elapsed(),
    }
}

fn replay_file(dir: &Path, name: &str, bytes: &[u8], output: &str) -> Run {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    run_measured(&["replay", "-o", output, path.to_str().unwrap()])
}

/// 10.244.0.1:40000 > 10.244.0.66:53 in an Ethernet frame.
fn dns_query(payload_len: usize) -> Vec<u8> {
    let ip = common::udp4(
        common::ip4("10.244.0.1"),
        common::ip4("10.244.0.66"),
        40000,
        53,
        &vec![7; payload_len],
    );
    common::eth(0x0800, &ip)
}

#[test]
fn a_wire_length_of_4_gib_is_capped_not_allocated() {
    use observer::replay::input::MAX_WIRE_LEN;
    let dir = tempfile::tempdir().unwrap();
    let frame = dns_query(30);
    let len = frame.len() as u32;
    let pcap = pcap_bytes(1, &[(frame.clone(), u32::MAX), (frame.clone(), len)]);
    let mut pcapng = [ng::shb(), ng::idb(1, &[])].concat();
    pcapng.extend(ng::epb(0, &frame, u32::MAX, &[]));
    pcapng.extend(ng::epb(0, &frame, len, &[]));
    for (name, bytes) in [("huge.pcap", pcap), ("huge.pcapng", pcapng)] {
        let run = replay_file(dir.path(), name, &bytes, "json");
        eprintln!(
            "{name}: {:?}, peak RSS {} KiB",
            run.elapsed, run.peak_rss_kib
        );
        assert_eq!(run.exit_code, 0, "{}", run.stderr);
        // Before the cap: 4 GiB allocated, 4.1 GB of RSS.
        assert!(
            run.peak_rss_kib < 128 * 1024,
            "{name}: {} KiB",
            run.peak_rss_kib
        );
        let r = run.report();
        assert_eq!((r.frames, r.in_flows, r.capped, r.lost), (2, 2, 1, 0));
        let f = one(&r, "10.244.0.1", "10.244.0.66", "udp");
        // The IP bytes of a capped frame: the cap less the Ethernet header.
        assert_eq!(f.packets, 2);
        assert_eq!(f.bytes, (MAX_WIRE_LEN - 14) + u64::from(len - 14));
    }
    let run = replay_file(
        dir.path(),
        "t.pcap",
        &pcap_bytes(1, &[(frame, u32::MAX)]),
        "table",
    );
    assert!(
        run.stdout.contains(&format!(
            "1 frames claimed more than {MAX_WIRE_LEN} bytes on the wire"
        )),
        "{}",
        run.stdout
    );
}

#[test]
fn a_capture_with_more_flows_than_the_map_holds_is_counted_whole() {
    // 100,000 distinct UDP flows; the kernel map holds 65,536.
    const FLOWS: u32 = 100_000;
    let frames: Vec<(Vec<u8>, u32)> = (0..FLOWS)
        .map(|i| {
            let src = [10, 0, 0, 1 + (i / 50_000) as u8];
            let ip = common::udp4(src, [10, 0, 0, 9], 1 + (i % 50_000) as u16, 53, &[1; 18]);
            let frame = common::eth(0x0800, &ip);
            let len = frame.len() as u32;
            (frame, len)
        })
        .collect();
    let ip_len = 20 + 8 + 18;
    let dir = tempfile::tempdir().unwrap();
    let run = replay_file(dir.path(), "flows.pcap", &pcap_bytes(1, &frames), "json");
    eprintln!(
        "{FLOWS} flows: {:?}, peak RSS {} KiB",
        run.elapsed, run.peak_rss_kib
    );
    assert_eq!(run.exit_code, 0, "{}", run.stderr);
    let r = run.report();
    let packets: u64 = r.flows.iter().map(|f| f.packets).sum();
    let bytes: u64 = r.flows.iter().map(|f| f.bytes).sum();
    let n = u64::from(FLOWS);
    assert_eq!(
        (
            r.frames,
            r.in_flows,
            r.lost,
            r.flow_insert_failures,
            r.unparsed
        ),
        (n, n, 0, 0, 0)
    );
    assert_eq!((r.flows.len() as u64, packets, bytes), (n, n, n * ip_len));
}

#[test]
fn a_capture_cut_mid_record_reports_what_it_read_then_fails() {
    let frames: Vec<(Vec<u8>, u32)> = (0..5)
        .map(|_| {
            let f = dns_query(30);
            let len = f.len() as u32;
            (f, len)
        })
        .collect();
    let record = 16 + frames[0].0.len();
    let fifth = 24 + 4 * record;
    let mut bytes = pcap_bytes(1, &frames);
    bytes.truncate(fifth + 16 + 10);
    let dir = tempfile::tempdir().unwrap();
    let run = replay_file(dir.path(), "cut.pcap", &bytes, "json");
    // Printed first, failed after.
    assert_eq!(run.exit_code, 1);
    let r = run.report();
    assert_eq!((r.frames, r.in_flows), (4, 4));
    assert_eq!(one(&r, "10.244.0.1", "10.244.0.66", "udp").packets, 4);
    let stop = r.stopped.expect("the stop point");
    assert_eq!((stop.record, stop.offset), (5, fifth as u64));
    for said in [
        format!("reading stopped at record 5 (byte offset {fifth})"),
        format!("it needs {record} bytes, the file ends after 26"),
        "the 4 complete frames before it are reported".into(),
    ] {
        assert!(run.stderr.contains(&said), "{said:?} in {}", run.stderr);
    }
    let run = replay_file(dir.path(), "cut.pcap", &bytes, "table");
    assert_eq!(run.exit_code, 1);
    assert!(
        run.stdout.contains("4 frames: 4 in flows"),
        "{}",
        run.stdout
    );
}

#[test]
fn pcapng_options_without_an_end_marker_read_as_libpcap_reads_them() {
    use pcap_file::pcap::PcapReader;
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/pcaps/vxlan.pcap");
    let mut reader = PcapReader::new(std::fs::File::open(&src).unwrap()).unwrap();
    let mut packets = Vec::new();
    while let Some(p) = reader.next_packet() {
        let p = p.unwrap();
        packets.push((p.data.into_owned(), p.orig_len));
    }
    // if_name, if_tsresol; a comment on every packet.
    let idb_options = [ng::option(2, b"vxlan.calico"), ng::option(9, &[6])].concat();
    let comment = ng::option(1, b"replayed");
    let write = |end: &[u8]| {
        let mut f = [ng::shb(), ng::idb(1, &[&idb_options[..], end].concat())].concat();
        for (data, orig_len) in &packets {
            f.extend(ng::epb(0, data, *orig_len, &[&comment[..], end].concat()));
        }
        f
    };
    let dir = tempfile::tempdir().unwrap();
    let well_formed = replay_file(dir.path(), "a.pcapng", &write(ng::END), "json");
    let without_end = replay_file(dir.path(), "b.pcapng", &write(&[]), "json");
    assert_eq!(well_formed.exit_code, 0, "{}", well_formed.stderr);
    assert_eq!(without_end.exit_code, 0, "{}", without_end.stderr);
    let (a, b) = (well_formed.report(), without_end.report());
    assert_eq!((b.frames, b.non_ip, b.unparsed), (10, 2, 0));
    assert_eq!(
        (b.frames, b.non_ip, b.unparsed),
        (a.frames, a.non_ip, a.unparsed)
    );
    assert_eq!(shape(&b), shape(&a));
    assert_eq!(shape(&b), shape(&replay("vxlan.pcap")));
}

#[test]
fn an_unsupported_link_type_is_named_and_fails() {
    let dir = tempfile::tempdir().unwrap();
    let frame = dns_query(30);
    let len = frame.len() as u32;
    let radiotap = pcap_bytes(127, &vec![(frame.clone(), len); 3]);
    let run = replay_file(dir.path(), "radiotap.pcap", &radiotap, "json");
    assert_eq!(run.exit_code, 1);
    let said = "link type 127 (IEEE802_11_RADIOTAP) is not supported: 3 frames not read";
    assert!(run.stderr.contains(said), "{}", run.stderr);
    let r = run.report();
    assert_eq!((r.frames, r.unparsed, r.in_flows), (3, 0, 0));
    assert_eq!(r.unsupported.len(), 1);
    assert_eq!(
        (r.unsupported[0].link_type, r.unsupported[0].frames),
        (127, 3)
    );

    // Beside an Ethernet interface in one pcapng: its frames still count.
    let mut mixed = [ng::shb(), ng::idb(1, &[]), ng::idb(127, &[])].concat();
    mixed.extend(ng::epb(0, &frame, len, &[]));
    mixed.extend(ng::epb(1, &frame, len, &[]));
    let run = replay_file(dir.path(), "mixed.pcapng", &mixed, "table");
    assert_eq!(run.exit_code, 1);
    assert!(
        run.stderr
            .contains("link type 127 (IEEE802_11_RADIOTAP) is not supported: 1 frames not read"),
        "{}",
        run.stderr
    );
    assert!(
        run.stdout
            .contains("2 frames: 1 in flows, 0 not IP, 0 unparsed, 1 of link types not supported"),
        "{}",
        run.stdout
    );
}
