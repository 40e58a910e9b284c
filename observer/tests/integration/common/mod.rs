//! Shared by the integration tests: root check and the gate between
//! modules, commands, packet builders and the lab.

pub mod lab;
pub mod node;
pub mod prometheus;

use std::{
    cell::RefCell,
    net::{Ipv4Addr, Ipv6Addr},
    panic::Location,
    process::Command,
    sync::{Condvar, Mutex, PoisonError},
};

use etherparse::{IpNumber, Ipv4Header, Ipv6FlowLabel, Ipv6Header, PacketBuilder};

/// Privileged tests fail loudly when they cannot run, never pass quietly.
///
/// Every privileged test calls this (directly or through `TestLab::up`),
/// which also takes it past the gate between modules: each module was a
/// test binary of its own once, which cargo ran one after another, so a
/// module's labs, daemons, loaded programs, namespaces and measurements
/// never met another module's. In one binary they would; so tests of one
/// module still run side by side, but a test of another module waits until
/// none of them runs. The module is that of the file calling (helpers in
/// between are `#[track_caller]`); the test holds the gate until its thread
/// ends, after what it made is dropped. Tests that need no root change
/// nothing host-wide and run free.
#[track_caller]
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "this test loads eBPF programs and needs root (run `sudo -E cargo xtask test`)"
    );
    enter_gate(module_of(Location::caller().file()));
}

/// The test module of a source file: `daemon` for
/// `observer/tests/integration/daemon.rs`, `deploy` for `.../deploy/rbac.rs`.
fn module_of(file: &'static str) -> &'static str {
    let rest = file.rsplit_once("integration/").map_or(file, |(_, r)| r);
    let module = rest.split(['/', '.']).next().unwrap_or(rest);
    assert_ne!(
        module, "common",
        "{file} takes the gate for its caller: make it #[track_caller]"
    );
    module
}

/// The module whose tests are past the gate, and how many of them.
static GATE: Mutex<(Option<&'static str>, usize)> = Mutex::new((None, 0));
static GATE_LEFT: Condvar = Condvar::new();

thread_local! {
    /// The module this thread's test is past the gate for (libtest runs
    /// each test on a thread of its own): left when the thread ends.
    static PAST_GATE: RefCell<Option<PastGate>> = const { RefCell::new(None) };
}

struct PastGate(&'static str);

impl Drop for PastGate {
    fn drop(&mut self) {
        let mut gate = GATE.lock().unwrap_or_else(PoisonError::into_inner);
        gate.1 -= 1;
        if gate.1 == 0 {
            gate.0 = None;
            GATE_LEFT.notify_all();
        }
    }
}

fn enter_gate(module: &'static str) {
    PAST_GATE.with_borrow_mut(|past| {
        if past.as_ref().is_some_and(|p| p.0 == module) {
            return;
        }
        // Past it for another module: this thread ran an earlier test
        // (libtest's fallback when it cannot start a thread).
        *past = None;
        let mut gate = GATE.lock().unwrap_or_else(PoisonError::into_inner);
        while gate.0.is_some_and(|m| m != module) {
            gate = GATE_LEFT.wait(gate).unwrap_or_else(PoisonError::into_inner);
        }
        gate.0 = Some(module);
        gate.1 += 1;
        *past = Some(PastGate(module));
    });
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

/// An IPv6 header with next header `next` around `payload`.
pub fn ipv6_around(src: Ipv6Addr, dst: Ipv6Addr, next: u8, payload: &[u8]) -> Vec<u8> {
    let h = Ipv6Header {
        traffic_class: 0,
        flow_label: Ipv6FlowLabel::ZERO,
        payload_length: payload.len() as u16,
        next_header: IpNumber(next),
        hop_limit: 64,
        source: src.octets(),
        destination: dst.octets(),
    };
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
