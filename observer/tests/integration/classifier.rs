//! The kernel classifier on crafted frames, run by the real kernel with
//! BPF_PROG_TEST_RUN: parsing, keys, byte accounting, encapsulations, and
//! that every frame, however broken, gets TC_ACT_UNSPEC and is accounted
//! exactly once (as a flow, as non-IP, or as unparsed).

use observer::{
    datapath::{Datapath, cpu, object, testrun},
    flows::key_addrs,
};
use observer_common::{Encap, FlowKey, FlowStats, Stat, StopAfter};

use crate::common::*;

const TC_ACT_UNSPEC: u32 = u32::MAX;

struct Classifier {
    dp: Datapath,
}

#[derive(Debug, PartialEq, Eq)]
struct Flow {
    src: String,
    dst: String,
    sport: u16,
    dport: u16,
    proto: u8,
    encap: Encap,
    packets: u64,
    bytes: u64,
    skbs: u64,
    overhead: u64,
    tcp_flags: u32,
    oversize: u32,
}

impl Classifier {
    fn new() -> Self {
        require_root();
        Self {
            dp: Datapath::load(4096).expect("load the eBPF object"),
        }
    }

    fn run(&self, prog: &str, data: &[u8], gso: Option<(u32, u32)>) {
        assert!(
            self.try_run(prog, data, gso),
            "the kernel refused a {}-byte frame",
            data.len()
        );
    }

    /// False when the kernel refuses the frame before our program runs
    /// (BPF_PROG_TEST_RUN rejects IP frames shorter than their fixed IP
    /// header).
    fn try_run(&self, prog: &str, data: &[u8], gso: Option<(u32, u32)>) -> bool {
        match testrun::run(&self.dp.ebpf, prog, data, gso, 1) {
            Ok(r) => {
                assert_eq!(
                    r.return_value, TC_ACT_UNSPEC,
                    "the classifier must always return TC_ACT_UNSPEC"
                );
                true
            }
            Err(_) => false,
        }
    }

    fn eth(&self, frame: &[u8]) {
        self.run(object::ETH_INGRESS, frame, None)
    }

    fn l3(&self, packet: &[u8]) {
        self.run(object::L3_INGRESS, packet, None)
    }

    fn flows(&self) -> Vec<Flow> {
        let mut out = Vec::new();
        self.dp
            .read_flows(|k: &FlowKey, v: &FlowStats| {
                let (src, dst) = key_addrs(k);
                out.push(Flow {
                    src: src.to_string(),
                    dst: dst.to_string(),
                    sport: k.src_port,
                    dport: k.dst_port,
                    proto: k.protocol,
                    encap: Encap::from_u8(k.encap).expect("valid encap"),
                    packets: v.skbs + v.extra_segments,
                    bytes: v.bytes,
                    skbs: v.skbs,
                    overhead: v.overhead_bytes,
                    tcp_flags: v.tcp_flags,
                    oversize: v.oversize_packets,
                })
            })
            .expect("read flows");
        out.sort_by(|a, b| (&a.src, &a.dst, a.sport).cmp(&(&b.src, &b.dst, b.sport)));
        out
    }

    fn only_flow(&self) -> Flow {
        let mut f = self.flows();
        assert_eq!(f.len(), 1, "expected exactly one flow, got {f:#?}");
        f.pop().unwrap()
    }

    fn stat(&self, s: Stat) -> u64 {
        self.dp.stats().expect("stats")[s as usize]
    }
}

fn flow(src: &str, dst: &str, sport: u16, dport: u16, proto: u8, encap: Encap) -> Flow {
    Flow {
        src: src.into(),
        dst: dst.into(),
        sport,
        dport,
        proto,
        encap,
        packets: 0,
        bytes: 0,
        skbs: 0,
        overhead: 0,
        tcp_flags: 0,
        oversize: 0,
    }
}

#[test]
fn udp_ipv4_counts_ip_bytes_per_packet() {
    let c = Classifier::new();
    let pkt = udp4(ip4("10.244.0.1"), ip4("10.244.0.66"), 40000, 53, &[7; 100]);
    for _ in 0..5 {
        c.eth(&eth(0x0800, &pkt));
    }
    let f = c.only_flow();
    assert_eq!(
        f,
        Flow {
            packets: 5,
            skbs: 5,
            bytes: 5 * 128,
            ..flow("10.244.0.1", "10.244.0.66", 40000, 53, 17, Encap::None)
        }
    );
    assert_eq!(c.stat(Stat::FlowInserts), 1);
    assert_eq!(c.stat(Stat::Unparsed), 0);
}

#[test]
fn tcp_flags_accumulate() {
    let c = Classifier::new();
    let a = ip4("10.0.0.1");
    let b = ip4("10.0.0.2");
    c.eth(&eth(0x0800, &tcp4(a, b, 1234, 80, true, &[])));
    c.eth(&eth(0x0800, &tcp4(a, b, 1234, 80, false, &[1; 10])));
    let f = c.only_flow();
    assert_eq!((f.packets, f.bytes), (2, 40 + 50));
    assert_eq!(f.tcp_flags, 0x02 | 0x10, "SYN and ACK seen");
}

/// What a pod sends (TC ingress) over its tunnel's MTU is counted in its
/// flow, against the limit userspace set last.
#[test]
fn packets_over_the_tunnel_mtu_are_counted_against_the_limit_set() {
    let mut c = Classifier::new();
    // BPF_PROG_TEST_RUN runs the program on the namespace's loopback device.
    // SAFETY: a NUL-terminated name.
    let lo = unsafe { libc::if_nametoindex(c"lo".as_ptr()) };
    assert_ne!(lo, 0, "no loopback device");
    let (a, b) = (ip4("10.65.0.2"), ip4("10.65.0.3"));
    // IP packets of 100, 1400 and 1401 bytes.
    let sized = |ip_len: usize| eth(0x0800, &udp4(a, b, 1000, 2000, &vec![0; ip_len - 28]));
    let oversize = |c: &Classifier| c.only_flow().oversize;

    c.eth(&sized(1401));
    assert_eq!(oversize(&c), 0, "no limit set yet");

    c.dp.set_mtu_limit(lo, 1400, 0).expect("set a limit");
    for len in [100, 1400, 1401, 1400] {
        c.eth(&sized(len));
    }
    assert_eq!(oversize(&c), 1, "only the 1401-byte packet is over 1400");

    c.dp.set_mtu_limit(lo, 99, 0).expect("lower the limit");
    c.eth(&sized(100));
    assert_eq!(oversize(&c), 2, "100 bytes are over a limit of 99");
    assert_eq!(c.only_flow().packets, 6);
}

#[test]
fn vlan_and_qinq_tags_are_skipped() {
    let c = Classifier::new();
    let pkt = udp4(ip4("192.0.2.1"), ip4("192.0.2.2"), 1, 2, &[0; 10]);
    let mut single = vec![0, 100, 0x08, 0x00];
    single.extend_from_slice(&pkt);
    c.eth(&eth(0x8100, &single));
    let mut double = vec![0, 200, 0x81, 0x00, 0x07, 0xd1, 0x08, 0x00];
    double.extend_from_slice(&pkt);
    c.eth(&eth(0x88a8, &double));
    let f = c.only_flow();
    assert_eq!((f.packets, f.bytes), (2, 2 * 38));
}

#[test]
fn ipv6_extension_headers_are_walked_to_l4() {
    let c = Classifier::new();
    let udp = udp6(ip6("fd00::1"), ip6("fd00::2"), 5000, 6000, &[0; 20]);
    // Rebuild as IPv6 + hop-by-hop (8) + routing (24) + destination options
    // (8) + first fragment (8) + UDP.
    let (ip_hdr, l4) = udp.split_at(40);
    let mut ext = Vec::new();
    ext.extend_from_slice(&[43, 0, 1, 4, 0, 0, 0, 0]); // hop-by-hop -> routing
    ext.extend_from_slice(&[60, 2, 0, 1, 0, 0, 0, 0]); // routing (len 2: 24 bytes) -> dest opts
    ext.extend_from_slice(&[0; 16]);
    ext.extend_from_slice(&[44, 0, 1, 4, 0, 0, 0, 0]); // dest opts -> fragment
    ext.extend_from_slice(&[17, 0, 0x00, 0x01, 0, 0, 0, 42]); // fragment, offset 0, M=1 -> UDP
    let mut pkt = ip_hdr.to_vec();
    pkt[6] = 0; // next header: hop-by-hop
    let plen = (ext.len() + l4.len()) as u16;
    pkt[4..6].copy_from_slice(&plen.to_be_bytes());
    pkt.extend_from_slice(&ext);
    pkt.extend_from_slice(l4);
    c.eth(&eth(0x86dd, &pkt));

    // A later fragment of the same datagram: no ports to read.
    let mut later = ip_hdr.to_vec();
    later[6] = 44;
    later[4..6].copy_from_slice(&16u16.to_be_bytes());
    later.extend_from_slice(&[17, 0, 0x05, 0x00, 0, 0, 0, 42]);
    later.extend_from_slice(&[0; 8]);
    c.eth(&eth(0x86dd, &later));

    let flows = c.flows();
    assert_eq!(flows.len(), 2, "{flows:#?}");
    let first = flows
        .iter()
        .find(|f| f.sport == 5000)
        .expect("first fragment has ports");
    assert_eq!(
        (first.dport, first.proto, first.bytes),
        (6000, 17, pkt.len() as u64)
    );
    let second = flows
        .iter()
        .find(|f| f.sport == 0)
        .expect("later fragment without ports");
    assert_eq!((second.proto, second.bytes), (17, 56));
}

#[test]
fn ipip_is_seen_from_outer_headers_on_ethernet_and_l3_devices() {
    let c = Classifier::new();
    let inner = udp4(ip4("10.244.1.5"), ip4("10.244.2.7"), 1111, 2222, &[0; 60]);
    let outer = ipv4_around(ip4("172.30.0.10"), ip4("172.30.0.11"), 4, &inner);
    c.eth(&eth(0x0800, &outer));
    c.l3(&outer);
    let f = c.only_flow();
    assert_eq!(
        f,
        Flow {
            packets: 2,
            skbs: 2,
            bytes: 2 * 88,
            overhead: 2 * 20,
            ..flow("10.244.1.5", "10.244.2.7", 1111, 2222, 17, Encap::Ipip)
        }
    );
}

/// The inner IPv4 header must clear the address words an outer IPv6 one
/// wrote: else one flow would be two, told apart by the tunnel's outer
/// addresses.
#[test]
fn ipv4_in_ipv6_is_the_same_flow_as_ipv4_in_ipv4() {
    let c = Classifier::new();
    let inner = udp4(ip4("10.244.1.5"), ip4("10.244.2.7"), 1111, 2222, &[0; 60]);
    c.l3(&ipv6_around(ip6("fd00::10"), ip6("fd00::11"), 4, &inner));
    c.l3(&ipv4_around(
        ip4("172.30.0.10"),
        ip4("172.30.0.11"),
        4,
        &inner,
    ));
    assert_eq!(
        c.only_flow(),
        Flow {
            packets: 2,
            skbs: 2,
            bytes: 2 * 88,
            overhead: 40 + 20,
            ..flow("10.244.1.5", "10.244.2.7", 1111, 2222, 17, Encap::Ipip)
        }
    );
}

#[test]
fn l3_device_packets_count_like_ethernet_ones() {
    let c = Classifier::new();
    let v4 = udp4(ip4("10.1.0.1"), ip4("10.1.0.2"), 7, 8, &[0; 30]);
    c.l3(&v4);
    c.eth(&eth(0x0800, &v4));
    let v6 = udp6(ip6("fd00::a"), ip6("fd00::b"), 7, 8, &[0; 30]);
    c.l3(&v6);
    let flows = c.flows();
    assert_eq!(flows.len(), 2);
    assert_eq!((flows[0].packets, flows[0].bytes), (2, 2 * 58));
    assert_eq!((flows[1].src.as_str(), flows[1].bytes), ("fd00::a", 78));
}

#[test]
fn vxlan_counts_inner_packet_and_50_bytes_overhead() {
    let c = Classifier::new();
    let inner = tcp4(
        ip4("10.244.0.2"),
        ip4("10.244.0.70"),
        33000,
        8080,
        false,
        &[0; 200],
    );
    let outer = vxlan4(ip4("172.30.0.10"), ip4("172.30.0.11"), &eth(0x0800, &inner));
    c.eth(&eth(0x0800, &outer));
    let f = c.only_flow();
    assert_eq!(
        f,
        Flow {
            packets: 1,
            skbs: 1,
            bytes: 240,
            overhead: 50,
            tcp_flags: 0x10,
            ..flow("10.244.0.2", "10.244.0.70", 33000, 8080, 6, Encap::Vxlan)
        }
    );
    let encap = c.dp.encap_totals().unwrap()[Encap::Vxlan as usize];
    assert_eq!(
        (encap.packets, encap.bytes, encap.overhead_bytes),
        (1, 240, 50)
    );
}

#[test]
fn vxlan_with_non_ip_inner_frame_is_non_ip() {
    let c = Classifier::new();
    let arp = eth(0x0806, &[0; 28]);
    c.eth(&eth(
        0x0800,
        &vxlan4(ip4("172.30.0.10"), ip4("172.30.0.11"), &arp),
    ));
    c.eth(&arp);
    assert!(c.flows().is_empty());
    assert_eq!(c.stat(Stat::NonIp), 2);
    assert_eq!(c.stat(Stat::Unparsed), 0);
}

#[test]
fn wireguard_is_counted_as_the_outer_flow_with_its_overhead() {
    let c = Classifier::new();
    let mut data_msg = vec![4, 0, 0, 0];
    data_msg.extend_from_slice(&[0; 12 + 80 + 16]);
    let pkt = udp4(
        ip4("172.30.0.10"),
        ip4("172.30.0.11"),
        51820,
        51820,
        &data_msg,
    );
    c.eth(&eth(0x0800, &pkt));
    let handshake = udp4(
        ip4("172.30.0.10"),
        ip4("172.30.0.11"),
        51820,
        51820,
        &[1; 148],
    );
    c.eth(&eth(0x0800, &handshake));
    let f = c.only_flow();
    assert_eq!(f.encap, Encap::Wireguard);
    assert_eq!(f.packets, 2);
    // Data: IP 20 + UDP 8 + WG 32 of overhead, 80 bytes inside; handshake:
    // all overhead.
    assert_eq!((f.bytes, f.overhead), (80, 60 + 176));
}

#[test]
fn gso_super_packets_count_every_segment_with_its_headers() {
    let c = Classifier::new();
    // 3 segments of 1000 bytes payload in one skb: 3 x (20 + 20 + 1000).
    let pkt = tcp4(ip4("10.0.0.1"), ip4("10.0.0.2"), 1, 2, false, &[0; 3000]);
    c.run(object::ETH_EGRESS, &eth(0x0800, &pkt), Some((3, 1000)));
    let f = c.only_flow();
    assert_eq!((f.packets, f.skbs, f.bytes), (3, 1, 3 * 1040));
}

/// One flow's packets on two CPUs at once, each CPU finding the flow's
/// slot through its own cache and keeping its counts there until they are
/// flushed: not one packet or byte may be lost between them (with plain
/// adds into the shared slot, 3% were).
#[test]
fn one_flow_counted_on_two_cpus_at_once_loses_nothing() {
    const RUNS: u32 = 200_000;
    let c = Classifier::new();
    let cpus = cpu::allowed().expect("sched_getaffinity");
    assert!(
        cpus.len() >= 2,
        "this test needs two CPUs to run on, this thread may use {cpus:?}"
    );
    let pkt = udp4(ip4("10.244.0.1"), ip4("10.244.0.66"), 40000, 53, &[7; 100]);
    let frame = eth(0x0800, &pkt);
    let gso = tcp4(
        ip4("10.244.0.1"),
        ip4("10.244.0.66"),
        1,
        2,
        false,
        &[0; 2000],
    );
    let gso = eth(0x0800, &gso);
    {
        let _on_first = cpu::Pinned::to(cpus[0]).expect("pinning");
        c.eth(&frame);
    }
    std::thread::scope(|s| {
        for &n in &cpus[..2] {
            let (c, frame) = (&c, &frame);
            s.spawn(move || {
                let _pinned = cpu::Pinned::to(n).expect("pinning");
                let r = testrun::run(&c.dp.ebpf, object::ETH_INGRESS, frame, None, RUNS)
                    .expect("test run");
                assert_eq!(r.return_value, TC_ACT_UNSPEC);
            });
        }
    });
    // A GSO packet of 2 segments, of another flow, on each CPU in turn.
    for &n in &cpus[..2] {
        let _pinned = cpu::Pinned::to(n).expect("pinning");
        c.run(object::ETH_INGRESS, &gso, Some((2, 1000)));
    }
    let flows = c.flows();
    let udp = flows.iter().find(|f| f.proto == 17).expect("the UDP flow");
    let skbs = 1 + 2 * RUNS as u64;
    assert_eq!((udp.skbs, udp.packets, udp.bytes), (skbs, skbs, skbs * 128));
    let tcp = flows.iter().find(|f| f.proto == 6).expect("the TCP flow");
    assert_eq!((tcp.skbs, tcp.packets, tcp.bytes), (2, 4, 4 * 1040));
    assert_eq!(c.stat(Stat::FlowInserts), 2);
}

/// A reader flushing the CPUs' pending counts while a CPU counts one flow
/// (its flush interrupting the classifier on that CPU, and, on its own CPU,
/// a classifier interrupting the flush): what it reads never goes back, and
/// at the end it is every packet, none twice.
#[test]
fn flushes_while_a_cpu_counts_lose_nothing_and_count_nothing_twice() {
    const CALLS: u32 = 40;
    const RUNS: u32 = 20_000;
    let c = Classifier::new();
    let cpus = cpu::allowed().expect("sched_getaffinity");
    assert!(
        cpus.len() >= 2,
        "this test needs two CPUs to run on, this thread may use {cpus:?}"
    );
    let frame = eth(
        0x0800,
        &udp4(ip4("10.244.0.1"), ip4("10.244.0.66"), 40000, 53, &[7; 100]),
    );
    let _reader = cpu::Pinned::to(cpus[0]).expect("pinning");
    let done = std::sync::atomic::AtomicBool::new(false);
    let mut reads = 0;
    std::thread::scope(|s| {
        let (c, frame, done) = (&c, &frame, &done);
        s.spawn(move || {
            let _pinned = cpu::Pinned::to(cpus[1]).expect("pinning");
            for _ in 0..CALLS {
                testrun::run(&c.dp.ebpf, object::ETH_INGRESS, frame, None, RUNS).expect("test run");
            }
            done.store(true, std::sync::atomic::Ordering::Release);
        });
        let mut last = 0;
        // The reader's own CPU counts too, between its reads.
        while !done.load(std::sync::atomic::Ordering::Acquire) {
            c.eth(frame);
            let skbs = c.flows().first().map_or(0, |f| f.skbs);
            assert!(skbs >= last, "the count went back from {last} to {skbs}");
            last = skbs;
            reads += 1;
        }
    });
    let f = c.only_flow();
    let skbs = (CALLS * RUNS) as u64 + reads;
    assert_eq!((f.skbs, f.bytes), (skbs, skbs * 128), "after {reads} reads");
    assert!(reads > 10, "only {reads} reads while the other CPU counted");
}

/// A flow given back while a CPU still has it in its cache (its counts
/// waiting there): the flush before the give-back moves them into the slot
/// and empties the entry, so the flow's next packets on that CPU open a
/// new slot and count there, not in the old one.
#[test]
fn a_flow_given_back_while_cached_counts_in_a_new_slot() {
    let c = Classifier::new();
    let cpus = cpu::allowed().expect("sched_getaffinity");
    let _pinned = cpu::Pinned::to(cpus[0]).expect("pinning");
    let frame = eth(
        0x0800,
        &udp4(ip4("10.244.0.1"), ip4("10.244.0.66"), 40000, 53, &[7; 100]),
    );
    for _ in 0..3 {
        c.eth(&frame);
    }
    let mut keys = Vec::new();
    c.dp.read_flows(|k, _| keys.push(*k)).expect("read flows");
    assert_eq!(keys.len(), 1);
    let gone = c.dp.evict(&keys[0]).expect("evict").expect("the flow");
    assert_eq!((gone.skbs, gone.bytes), (3, 3 * 128));
    for _ in 0..2 {
        c.eth(&frame);
    }
    let f = c.only_flow();
    assert_eq!((f.skbs, f.bytes), (2, 2 * 128));
    assert_eq!(c.stat(Stat::FlowInserts), 2);
    let t = c.dp.iface_totals(1).expect("loopback's totals");
    assert_eq!(t.overflow[0].packets + t.overflow[1].packets, 0);
}

#[test]
fn truncated_and_malformed_frames_are_unparsed() {
    let c = Classifier::new();
    let good = udp4(ip4("10.0.0.1"), ip4("10.0.0.2"), 1, 2, &[0; 10]);
    // Cut inside the UDP header.
    c.eth(&eth(0x0800, &good[..22]));
    // IHL below 5, and IHL pointing past the end of the frame.
    let mut bad = good.clone();
    bad[0] = 0x44;
    c.eth(&eth(0x0800, &bad));
    bad[0] = 0x4f;
    c.eth(&eth(0x0800, &bad));
    // IPv6 ethertype with an IPv4 packet in it.
    let mut long = good.clone();
    long.extend_from_slice(&[0; 20]);
    c.eth(&eth(0x86dd, &long));
    // VXLAN cut inside the inner Ethernet header.
    let inner = eth(0x0800, &good);
    let outer = vxlan4(ip4("172.30.0.1"), ip4("172.30.0.2"), &inner);
    c.eth(&eth(0x0800, &outer[..20 + 8 + 8 + 10]));
    // Not IP at all on an L3 device.
    c.l3(&[0x00; 40]);
    assert!(c.flows().is_empty());
    assert_eq!(c.stat(Stat::Unparsed), 6);
}

#[test]
fn random_garbage_never_changes_the_verdict_and_is_accounted_once() {
    let c = Classifier::new();
    // A small xorshift: reproducible garbage without a dependency.
    let mut s: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    };
    let frames = 2000;
    let mut refused = 0;
    for i in 0..frames {
        let len = 15 + (next() % 200) as usize;
        let mut f: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        // Steer half of them into the IP parsers.
        if i % 2 == 0 {
            f[12..14].copy_from_slice(if i % 4 == 0 {
                &[0x08, 0x00]
            } else {
                &[0x86, 0xdd]
            });
            f[14] = if i % 4 == 0 { 0x45 } else { 0x60 };
        }
        if !c.try_run(object::ETH_INGRESS, &f, None) {
            refused += 1;
        }
    }
    assert!(refused < frames / 4, "the kernel refused {refused} frames");
    let skbs: u64 = c.flows().iter().map(|f| f.skbs).sum();
    let accounted =
        skbs + c.stat(Stat::NonIp) + c.stat(Stat::Unparsed) + c.stat(Stat::FlowInsertFailures);
    assert_eq!(
        accounted,
        frames - refused,
        "every frame is a flow packet, non-IP or unparsed"
    );
    assert!(c.stat(Stat::Unparsed) > 0);
}

/// Loaded as another loader would load it (a benchmark harness, bpftool):
/// the maps' declared sizes, nothing written by userspace. The programs
/// count every packet in its flow all the same: slots handed out in order,
/// none overflowed. And they write no log record unasked (an unparsed
/// packet writes one at debug).
#[test]
fn the_object_counts_on_its_own_without_the_daemon() {
    use aya::maps::{Array, PerCpuArray, RingBuf};
    use observer_common::{FlowSlot, RingHead};

    require_root();
    let mut ebpf = aya::EbpfLoader::new()
        .load(object::OBJECT)
        .expect("load the object");
    let prog: &mut aya::programs::SchedClassifier = ebpf
        .program_mut(object::ETH_INGRESS)
        .expect("eth_ingress in the object")
        .try_into()
        .expect("a classifier");
    prog.load().expect("the verifier accepts eth_ingress");
    // Flow i (source port 1000 + i) gets i + 1 packets, interleaved.
    let frame = |i: u16| {
        eth(
            0x0800,
            &udp4(ip4("10.0.0.1"), ip4("10.0.0.2"), 1000 + i, 53, &[0; 10]),
        )
    };
    for round in 0..3 {
        for i in round..3 {
            let r = testrun::run(&ebpf, object::ETH_INGRESS, &frame(i), None, 1).expect("run");
            assert_eq!(r.return_value, TC_ACT_UNSPEC);
        }
    }
    // Its TCP header cut short.
    let mut unparsed = eth(
        0x0800,
        &tcp4(ip4("10.0.0.1"), ip4("10.0.0.2"), 1, 2, false, &[]),
    );
    unparsed.truncate(14 + 20 + 6);
    testrun::run(&ebpf, object::ETH_INGRESS, &unparsed, None, 1).expect("run");
    // Counts of a flow found in a CPU's cache wait there: a reader runs the
    // flush program on every CPU before it reads the slots.
    let flush: &mut aya::programs::RawTracePoint = ebpf
        .program_mut(object::FLUSH_PENDING)
        .expect("flush_pending in the object")
        .try_into()
        .expect("a raw tracepoint program");
    flush.load().expect("the verifier accepts flush_pending");
    for cpu in aya::util::online_cpus().expect("online CPUs") {
        use aya::TestRun as _;
        let mut opts = aya::programs::RawTracePointRunOptions::new();
        opts.cpu = Some(cpu);
        let left = flush.test_run(opts).expect("flush").return_value;
        assert_eq!(left, 0, "CPU {cpu}: no classifier was counting");
    }

    let map = |name: &str| ebpf.map(name).unwrap_or_else(|| panic!("map {name}"));
    // Read as 128-byte blocks: the two types' layout (checked in observer-common).
    let slots: Array<_, [u64; 16]> = Array::try_from(map("SLOTS")).expect("SLOTS");
    let slot = |i: u32| -> FlowSlot {
        // SAFETY: FlowSlot is 128 bytes of plain integers, any bits valid.
        unsafe { std::mem::transmute(slots.get(&i, 0).expect("read a slot")) }
    };
    for i in 0..3u32 {
        let s = slot(i);
        assert_eq!(s.generation, 1, "slot {i} published once");
        assert_eq!(s.key.src_port, 1000 + i as u16, "slot {i}: flows in order");
        assert_eq!(
            (s.stats.skbs, s.stats.bytes),
            (i as u64 + 1, (i as u64 + 1) * 38),
            "slot {i}: every packet, 38 IP bytes each"
        );
    }
    assert_eq!(slot(3).generation, 0, "no fourth slot handed out");
    let head: Array<_, [u64; 16]> = Array::try_from(map("RING_HEAD")).expect("RING_HEAD");
    // SAFETY: as above, RingHead is 128 bytes of u64s.
    let head: RingHead = unsafe { std::mem::transmute(head.get(&0, 0).expect("read the head")) };
    assert_eq!((head.fresh, head.cons, head.capacity), (3, 0, 0));
    let stats: PerCpuArray<_, u64> = PerCpuArray::try_from(map("STATS")).expect("STATS");
    let stat = |s: Stat| -> u64 { stats.get(&(s as u32), 0).expect("a stat").iter().sum() };
    assert_eq!(stat(Stat::FlowInserts), 3);
    assert_eq!(stat(Stat::FlowInsertFailures), 0, "nothing overflowed");
    assert_eq!(stat(Stat::Unparsed), 1);
    let logs = ebpf.take_map("AYA_LOGS").expect("the log ring");
    let mut logs = RingBuf::try_from(logs).expect("a ring buffer");
    assert!(logs.next().is_none(), "a log record written unasked");
}

/// A slot given back is taken again before one never used: the slots
/// handed out, which every poll reads, stay as few as the flows need.
#[test]
fn a_slot_given_back_is_taken_before_a_new_one() {
    let c = Classifier::new();
    let frame = |port: u16| {
        eth(
            0x0800,
            &udp4(ip4("10.0.0.1"), ip4("10.0.0.2"), port, 53, &[0; 10]),
        )
    };
    let in_slot_order = || {
        let mut out = Vec::new();
        c.dp.read_flows(|k, v| out.push((k.src_port, v.skbs)))
            .expect("read flows");
        out
    };
    c.eth(&frame(1));
    c.eth(&frame(2));
    assert_eq!(in_slot_order(), [(1, 1), (2, 1)]);
    let mut first = None;
    c.dp.read_flows(|k, _| {
        first.get_or_insert(*k);
    })
    .expect("read flows");
    let gone = c.dp.evict(&first.expect("flow 1")).expect("evict");
    assert_eq!(gone.map(|s| s.skbs), Some(1));
    c.eth(&frame(3));
    c.eth(&frame(3));
    assert_eq!(
        in_slot_order(),
        [(3, 2), (2, 1)],
        "flow 3 in flow 1's slot, no third slot"
    );
}

/// The benchmark's partial programs, loaded to stop after the parse or
/// after the packet's sizes, do that much and no more (their shares of the
/// cost are of that work): no flow, no totals. They still let every packet
/// through.
#[test]
fn programs_loaded_to_stop_early_skip_what_follows() {
    require_root();
    let frame = eth(
        0x0800,
        &udp4(ip4("10.0.0.1"), ip4("10.0.0.2"), 1000, 53, &[0; 10]),
    );
    // TEST_RUN runs the program on the loopback device.
    for part in [StopAfter::Parse, StopAfter::Sizes] {
        let dp = Datapath::load_stopping_after(4096, part).expect("load the eBPF object");
        let program = object::stopping_after(object::ETH_INGRESS, part).expect("an entry point");
        for _ in 0..3 {
            let r = testrun::run(&dp.ebpf, program, &frame, None, 1).expect("run");
            assert_eq!(r.return_value, TC_ACT_UNSPEC, "{part:?}");
        }
        let mut flows = 0;
        dp.read_flows(|_, _| flows += 1).expect("read flows");
        assert_eq!(flows, 0, "stopping after {part:?}: no flow");
        let st = dp.stats().expect("stats");
        assert_eq!(st[Stat::Unparsed as usize], 0, "{part:?}: parsed");
        assert_eq!(st[Stat::FlowInserts as usize], 0, "{part:?}: no insert");
        let totals = dp
            .iface_totals(observer::fuzz::check::LOOPBACK_IFINDEX)
            .expect("interface totals");
        assert_eq!(
            totals.hook[0].packets, 0,
            "stopping after {part:?}: interface totals"
        );
    }
}
