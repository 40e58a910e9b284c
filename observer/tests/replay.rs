//! `observer replay` on real captures from tcpdump's test suite
//! (tests/pcaps, BSD licence): flows, addresses, ports, encapsulation and
//! byte counts must agree with tcpdump's own decode beside each capture
//! (the `.out` files), which nobody here wrote.

mod common;

use std::path::{Path, PathBuf};

use common::lab::observer;
use observer::{flows::view::FlowView, replay::ReplayReport};

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
        .filter(|f| f.src_ip == src && f.dst_ip == dst && f.protocol == proto)
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
        assert_eq!(f.encap, "vxlan");
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
    assert_eq!(f.encap, "vxlan");
    assert_eq!((f.packets, f.bytes, f.overhead_bytes), (1, 7042, 50));
    assert_eq!(f.tcp_flags, "PSH|ACK");
}

#[test]
fn raw_ip_link_type_as_on_tunl0() {
    // 192.168.1.100.12345 > 9.9.9.9.53: A? example.com. (29)
    let r = replay("LINKTYPE_RAW_ipv4.pcap");
    let f = one(&r, "192.168.1.100", "9.9.9.9", "udp");
    assert_eq!(
        (f.src_port, f.dst_port, f.bytes, f.encap.as_str()),
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
    assert_eq!((q.direction.as_str(), q.bytes), ("egress", 58));
    let a = one(&r, "10.244.0.66", "10.244.0.1", "udp");
    assert_eq!((a.direction.as_str(), a.bytes), ("ingress", 118));
}
