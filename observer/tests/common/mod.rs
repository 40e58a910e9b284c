//! Shared by the integration tests: root check, commands, packet builders
//! and the lab.
#![allow(
    dead_code,
    reason = "each test binary includes this module and uses a part of it"
)]

pub mod lab;
pub mod node;
pub mod prometheus;

use std::{
    net::{Ipv4Addr, Ipv6Addr},
    process::Command,
};

use etherparse::{IpNumber, Ipv4Header, PacketBuilder};

/// Privileged tests fail loudly when they cannot run, never pass quietly.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "this test loads eBPF programs and needs root (run `sudo -E cargo xtask test`)"
    );
}

/// How long to wait for what takes at most `secs` seconds on a real CPU:
/// `OBSERVER_TEST_SLOWDOWN` times that where the CPU is emulated (the VM
/// suite, `xtask/vm/suite.sh`, sets it), so that slow is not taken for
/// broken; still bounded.
pub fn patience(secs: u64) -> std::time::Duration {
    let slowdown = std::env::var("OBSERVER_TEST_SLOWDOWN")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1u64)
        .max(1);
    std::time::Duration::from_secs(secs * slowdown)
}

/// Runs `args[0]` with the rest as its arguments; panics with its stderr
/// when it fails, else gives its stdout.
pub fn sh(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub const MAC_A: [u8; 6] = [0x02, 0, 0, 0, 0, 0xaa];
pub const MAC_B: [u8; 6] = [0x02, 0, 0, 0, 0, 0xbb];

pub fn eth(ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(14 + payload.len());
    f.extend_from_slice(&MAC_B);
    f.extend_from_slice(&MAC_A);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

pub fn udp4(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let b = PacketBuilder::ipv4(src, dst, 64).udp(sport, dport);
    let mut out = Vec::with_capacity(b.size(payload.len()));
    b.write(&mut out, payload).expect("build udp4");
    out
}

pub fn tcp4(
    src: [u8; 4],
    dst: [u8; 4],
    sport: u16,
    dport: u16,
    syn: bool,
    payload: &[u8],
) -> Vec<u8> {
    let mut b = PacketBuilder::ipv4(src, dst, 64)
        .tcp(sport, dport, 1000, 65535)
        .ack(1);
    if syn {
        b = b.syn();
    }
    let mut out = Vec::with_capacity(b.size(payload.len()));
    b.write(&mut out, payload).expect("build tcp4");
    out
}

pub fn udp6(src: Ipv6Addr, dst: Ipv6Addr, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let b = PacketBuilder::ipv6(src.octets(), dst.octets(), 64).udp(sport, dport);
    let mut out = Vec::with_capacity(b.size(payload.len()));
    b.write(&mut out, payload).expect("build udp6");
    out
}

/// An IPv4 header with protocol `proto` around `payload`.
pub fn ipv4_around(src: [u8; 4], dst: [u8; 4], proto: u8, payload: &[u8]) -> Vec<u8> {
    let h =
        Ipv4Header::new(payload.len() as u16, 64, IpNumber(proto), src, dst).expect("ipv4 header");
    let mut out = h.to_bytes().to_vec();
    out.extend_from_slice(payload);
    out
}

/// VXLAN (UDP 4789, VNI 4096 as Calico uses) around an inner Ethernet frame.
pub fn vxlan4(src: [u8; 4], dst: [u8; 4], inner_frame: &[u8]) -> Vec<u8> {
    let mut payload = vec![0x08, 0, 0, 0, 0, 0x10, 0x00, 0];
    payload.extend_from_slice(inner_frame);
    udp4(src, dst, 40000, 4789, &payload)
}

pub fn ip4(s: &str) -> [u8; 4] {
    s.parse::<Ipv4Addr>().expect("ipv4").octets()
}

pub fn ip6(s: &str) -> Ipv6Addr {
    s.parse().expect("ipv6")
}
