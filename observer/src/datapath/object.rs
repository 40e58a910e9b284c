//! The embedded eBPF object and loading it into the kernel.

use std::path::Path;

use anyhow::{Context as _, Result, bail};
use aya::{
    Ebpf, EbpfLoader,
    programs::{RawTracePoint, SchedClassifier},
    util::KernelVersion,
};
use observer_common::{FLOW_INDEX_MAP, FREE_RING_MAP, SLOTS_MAP, StopAfter, index::index_entries};

use super::{
    kernel_log::{self, KernelLogLevel},
    pin::PINNED_MAPS,
};

/// The kernel programs, built from `observer-ebpf` by `build.rs`. Other
/// loaders may load it as it is (see `RingHead` in observer-common): with
/// the maps' declared sizes, it counts on its own (read the slots after
/// running [`FLUSH_PENDING`] on every CPU).
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/observer"));

/// Entry points, by link layer and TC hook.
pub const ETH_INGRESS: &str = "eth_ingress";
pub const ETH_EGRESS: &str = "eth_egress";
pub const L3_INGRESS: &str = "l3_ingress";
pub const L3_EGRESS: &str = "l3_egress";
/// Writes jiffies and CLOCK_MONOTONIC to the clock map; never attached.
pub const CLOCK: &str = "clock";
/// An empty classifier, the baseline of the benchmarks; never attached.
pub const EMPTY: &str = "empty";
pub const PROGRAMS: [&str; 6] = [ETH_INGRESS, ETH_EGRESS, L3_INGRESS, L3_EGRESS, CLOCK, EMPTY];
/// Moves the counts waiting in one CPU's flow cache into the flows' slots
/// (a raw tracepoint program, run on each CPU; never attached).
pub const FLUSH_PENDING: &str = "flush_pending";

/// The benchmark's entry point that runs `program` (an Ethernet entry
/// point, or `l3_ingress`) up to `part` and stops: where the time goes.
/// Never attached by the daemon; see [`load_parts`].
pub fn stopping_after(program: &str, part: StopAfter) -> Option<&'static str> {
    Some(match (program, part) {
        (ETH_INGRESS, StopAfter::Parse) => "eth_in_parse",
        (ETH_EGRESS, StopAfter::Parse) => "eth_eg_parse",
        (L3_INGRESS, StopAfter::Parse) => "l3_in_parse",
        (ETH_INGRESS, StopAfter::Sizes) => "eth_in_sizes",
        (ETH_EGRESS, StopAfter::Sizes) => "eth_eg_sizes",
        (L3_INGRESS, StopAfter::Sizes) => "l3_in_sizes",
        _ => return None,
    })
}

/// Loads the benchmark's entry points that stop after `part` into the
/// kernel (the daemon never loads them), beside the others.
pub fn load_parts(ebpf: &mut Ebpf, part: StopAfter) -> Result<()> {
    for program in [ETH_INGRESS, ETH_EGRESS, L3_INGRESS] {
        if let Some(name) = stopping_after(program, part) {
            load_program(ebpf, name)?;
        }
    }
    Ok(())
}

/// Loads the object with a flow map of `flow_capacity` slots and loads every
/// program into the kernel (verifier included), ready to attach or run.
/// With `maps_dir`, the maps that carry counts are pinned there, or taken
/// from there when an earlier daemon pinned them. The programs write log
/// records up to `log` (see [`KernelLog`](super::kernel_log::KernelLog)).
pub fn load(flow_capacity: u32, maps_dir: Option<&Path>, log: KernelLogLevel) -> Result<Ebpf> {
    check_kernel()?;
    raise_memlock_limit();
    let mut loader = EbpfLoader::new();
    // A slot and a ring position per flow, and index entries to spare.
    for name in [SLOTS_MAP, FREE_RING_MAP] {
        loader.map_max_entries(name, flow_capacity);
    }
    loader.map_max_entries(FLOW_INDEX_MAP, index_entries(flow_capacity));
    let level = log.global_value();
    loader.override_global(kernel_log::LEVEL_GLOBAL, &level, true);
    if let Some(dir) = maps_dir {
        for name in PINNED_MAPS {
            loader.map_pin_path(name, dir.join(name));
        }
    }
    let mut ebpf = loader
        .load(OBJECT)
        .context("loading the eBPF object (are we root, with CAP_BPF and CAP_NET_ADMIN?)")?;
    for name in PROGRAMS {
        load_program(&mut ebpf, name)?;
    }
    let flush: &mut RawTracePoint = ebpf
        .program_mut(FLUSH_PENDING)
        .with_context(|| format!("program {FLUSH_PENDING} missing from the object"))?
        .try_into()?;
    flush.load().map_err(|e| refused(FLUSH_PENDING, &e))?;
    Ok(ebpf)
}

/// Loads one program of the object into the kernel (verifier included).
fn load_program(ebpf: &mut Ebpf, name: &str) -> Result<()> {
    let prog: &mut SchedClassifier = ebpf
        .program_mut(name)
        .with_context(|| format!("program {name} missing from the object"))?
        .try_into()?;
    prog.load().map_err(|e| refused(name, &e))
}

/// The kernel's refusal of program `name`, shortened: the verifier's log
/// can run to thousands of lines, and its end says what it refused.
fn refused(name: &str, e: &dyn std::fmt::Display) -> anyhow::Error {
    let text = format!("{e:#}");
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(40)..].join("\n");
    anyhow::anyhow!("loading program {name}: the kernel refused it:\n{tail}")
}

/// The oldest kernel the programs work on: `bpf_loop` (the flow index's
/// probes) came in 5.17, the BPF ring buffer (the programs' log) in 5.8,
/// mmapable arrays (the flow slots and index) in 5.5. Older ones are told
/// so in one line rather than with the verifier's log.
fn check_kernel() -> Result<()> {
    // A version we cannot read is left to the kernel to judge.
    if KernelVersion::current().is_ok_and(|v| v < KernelVersion::new(5, 17, 0)) {
        bail!(
            "observer needs Linux 5.17 or newer (bpf_loop, BPF ring buffer, \
             mmapable arrays); this kernel is {}",
            kernel_release()
        );
    }
    Ok(())
}

/// `uname -r`, for messages.
pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|r| r.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into())
}

/// Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK; lift it so that
/// large flow maps load there too. Harmless where memcg accounting is used.
fn raise_memlock_limit() {
    let rlim = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: plain syscall with a valid struct.
    let ret = unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &rlim) };
    if ret != 0 {
        tracing::debug!(
            "setrlimit(RLIMIT_MEMLOCK) failed: {}",
            std::io::Error::last_os_error()
        );
    }
}
