//! The packets the kernel benchmarks run: a mix of what a Calico node
//! carries, and streams of distinct flows.

use etherparse::{IpNumber, Ipv4Header, PacketBuilder};

use crate::datapath::object;

/// One packet of the mix and the entry point that sees it.
pub struct Case {
    pub name: &'static str,
    pub what: &'static str,
    pub prog: &'static str,
    pub frame: Vec<u8>,
}

/// The hot-flow case of the headline ratio.
pub const HOT: &str = "tcp4";

const MAC_A: [u8; 6] = [0x02, 0, 0, 0, 0, 0xaa];
const MAC_B: [u8; 6] = [0xee, 0xee, 0xee, 0xee, 0xee, 0xee];

/// The packet mix; each case is one flow hit again and again.
pub fn mix() -> Vec<Case> {
    let tcp = tcp4([10, 244, 0, 2], [10, 244, 1, 7], 40000, 80, 100);
    let inner_eth = eth(0x0800, &tcp);
    // VXLAN header: flags (VNI valid), VNI 4096 as Calico uses.
    let mut vxlan_payload = vec![0x08, 0, 0, 0, 0, 0x10, 0x00, 0];
    vxlan_payload.extend_from_slice(&inner_eth);
    let vxlan = udp4(
        [172, 30, 0, 10],
        [172, 30, 0, 11],
        40001,
        4789,
        &vxlan_payload,
    );
    vec![
        Case {
            name: HOT,
            what: "TCP/IPv4, 100-byte payload, on a pod's cali veth (Ethernet)",
            prog: object::ETH_INGRESS,
            frame: eth(0x0800, &tcp),
        },
        Case {
            name: "udp6",
            what: "UDP/IPv6, 60-byte payload, on a pod's cali veth (Ethernet)",
            prog: object::ETH_INGRESS,
            frame: eth(
                0x86dd,
                &udp6(
                    [0xfd, 0, 0, 0x10, 0x2, 0x44, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2],
                    [0xfd, 0, 0, 0x10, 0x2, 0x44, 0, 1, 0, 0, 0, 0, 0, 0, 0, 7],
                    53000,
                    53,
                    60,
                ),
            ),
        },
        Case {
            name: "vxlan",
            what: "VXLAN (UDP 4789, VNI 4096) around the TCP/IPv4 frame, on the underlay NIC",
            prog: object::ETH_INGRESS,
            frame: eth(0x0800, &vxlan),
        },
        Case {
            name: "ipip_l3",
            what: "IPIP around the TCP/IPv4 packet, on an L3 device (tunl0: no Ethernet header)",
            prog: object::L3_INGRESS,
            frame: ipv4_around([172, 30, 0, 10], [172, 30, 0, 11], 4, &tcp),
        },
    ]
}

/// Frame `i` of a stream of distinct TCP/IPv4 flows (distinct source
/// address and port), as on a pod's cali veth.
pub fn distinct_tcp4(i: u32) -> Vec<u8> {
    let src = [10, (i >> 16) as u8 | 0x80, (i >> 8) as u8, i as u8];
    eth(
        0x0800,
        &tcp4(src, [10, 244, 1, 7], 1024 + (i % 60000) as u16, 80, 100),
    )
}

/// The order turn `turn` over `n` distinct flows visits them in: in order
/// for the first (new flows take their slots in it), then shuffled, each
/// turn differently: in the first turn's order again, the flows' slots
/// would be read one after the other, which the CPU's prefetcher foresees
/// and real traffic does not. (Fisher-Yates with a fixed-seed xorshift:
/// the same orders in every run.)
pub fn visiting_order(n: usize, turn: u32) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    if turn == 0 {
        return order;
    }
    let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ u64::from(turn) << 32;
    for i in (1..n).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        order.swap(i, (x % (i as u64 + 1)) as usize);
    }
    order
}

fn eth(ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(14 + payload.len());
    f.extend_from_slice(&MAC_B);
    f.extend_from_slice(&MAC_A);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

fn tcp4(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, len: usize) -> Vec<u8> {
    let b = PacketBuilder::ipv4(src, dst, 64)
        .tcp(sport, dport, 1000, 65535)
        .ack(1)
        .psh();
    let mut out = Vec::with_capacity(b.size(len));
    b.write(&mut out, &vec![0x5a; len]).expect("tcp4 frame");
    out
}

fn udp4(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let b = PacketBuilder::ipv4(src, dst, 64).udp(sport, dport);
    let mut out = Vec::with_capacity(b.size(payload.len()));
    b.write(&mut out, payload).expect("udp4 frame");
    out
}

fn udp6(src: [u8; 16], dst: [u8; 16], sport: u16, dport: u16, len: usize) -> Vec<u8> {
    let b = PacketBuilder::ipv6(src, dst, 64).udp(sport, dport);
    let mut out = Vec::with_capacity(b.size(len));
    b.write(&mut out, &vec![0x5a; len]).expect("udp6 frame");
    out
}

fn ipv4_around(src: [u8; 4], dst: [u8; 4], proto: u8, payload: &[u8]) -> Vec<u8> {
    let h =
        Ipv4Header::new(payload.len() as u16, 64, IpNumber(proto), src, dst).expect("ipv4 header");
    let mut out = h.to_bytes().to_vec();
    out.extend_from_slice(payload);
    out
}
