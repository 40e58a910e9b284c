//! Map updates: the flow map (shared hash, atomic adds), per-interface
//! and per-encapsulation totals and datapath counters (per-CPU arrays).

use core::intrinsics::{AtomicOrdering, atomic_xadd};

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{bpf_jiffies64, bpf_ktime_get_ns},
    macros::map,
    maps::{Array, HashMap, PerCpuArray},
    programs::TcContext,
};
use aya_log_ebpf::warn;
use observer_common::{
    ClockSample, DEFAULT_FLOW_CAPACITY, Encap, EncapTotals, FAMILY_IPV4, FlowKey, FlowStats,
    IFACE_SLOTS, IfaceTotals, MtuLimit, Stat,
};

#[cfg(doc)]
use crate::parse::Fail;

/// One entry per flow; values shared by all CPUs (memory does not grow
/// with the CPU count). Capacity is set by userspace at load time. A plain
/// (preallocated) hash, not an LRU: the LRU would drop entries whose counts
/// userspace has not read yet; here only userspace deletes, after reading.
#[map(name = "FLOWS")]
static FLOWS: HashMap<FlowKey, FlowStats> = HashMap::with_max_entries(DEFAULT_FLOW_CAPACITY, 0);

#[map(name = "IFACE_TOTALS")]
static IFACE_TOTALS: PerCpuArray<IfaceTotals> = PerCpuArray::with_max_entries(IFACE_SLOTS, 0);

#[map(name = "ENCAP_TOTALS")]
static ENCAP_TOTALS: PerCpuArray<EncapTotals> = PerCpuArray::with_max_entries(Encap::COUNT, 0);

#[map(name = "STATS")]
static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Stat::COUNT, 0);

/// Written by userspace: the tunnel MTU behind each pod interface.
#[map(name = "MTU_LIMITS")]
static MTU_LIMITS: Array<MtuLimit> = Array::with_max_entries(IFACE_SLOTS, 0);

#[map(name = "CLOCK")]
static CLOCK: Array<ClockSample> = Array::with_max_entries(1, 0);

/// The last unparsed packet's reason on this CPU, as [`Fail::code`]: the
/// log reads it back from here, so that the verifier sees unknown values
/// and checks the logging code once, not once per way a parse can fail
/// (that ran past its million-instruction limit).
#[map(name = "LAST_UNPARSED")]
static LAST_UNPARSED: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

/// Keeps an unparsed packet's reason for [`last_unparsed`].
#[inline(always)]
pub fn remember_unparsed(code: u32) {
    if let Some(v) = LAST_UNPARSED.get_ptr_mut(0) {
        // SAFETY: per-CPU slot, no other writer on this CPU.
        unsafe { *v = code };
    }
}

/// The reason [`remember_unparsed`] kept.
#[inline(always)]
pub fn last_unparsed() -> u32 {
    LAST_UNPARSED.get(0).copied().unwrap_or(0)
}

/// Writes jiffies and CLOCK_MONOTONIC side by side (for the `clock` program).
#[inline(always)]
pub fn sample_clock() {
    if let Some(c) = CLOCK.get_ptr_mut(0) {
        // SAFETY: helpers without preconditions; c points into the map.
        unsafe {
            (*c).jiffies = bpf_jiffies64();
            (*c).monotonic_ns = bpf_ktime_get_ns();
        }
    }
}

const EEXIST: i64 = 17;

/// What one skb adds to its flow.
pub struct Delta {
    pub segs: u64,
    pub bytes: u64,
    pub overhead: u64,
    pub tcp_flags: u8,
    /// 1 when the packet is over its interface's [`MtuLimit`].
    pub oversize: u32,
}

/// Whether a non-GSO packet of `ip_len` bytes is over the limit set for
/// its interface (GSO super-packets are cut to the MTU later).
#[inline(always)]
pub fn over_mtu(key: &FlowKey, ip_len: u64) -> u32 {
    let Some(l) = MTU_LIMITS.get(key.ifindex & (IFACE_SLOTS - 1)) else {
        return 0;
    };
    let limit = if key.family == FAMILY_IPV4 {
        l.ipv4
    } else {
        l.ipv6
    };
    (l.ifindex == key.ifindex && limit != 0 && ip_len > limit as u64) as u32
}

#[inline(always)]
pub fn count(stat: Stat) {
    if let Some(v) = STATS.get_ptr_mut(stat as u32) {
        // SAFETY: per-CPU slot, no other writer on this CPU.
        unsafe { *v += 1 };
    }
}

#[inline(always)]
fn iface_slot(ifindex: u32) -> Option<*mut IfaceTotals> {
    let slot = IFACE_TOTALS.get_ptr_mut(ifindex & (IFACE_SLOTS - 1))?;
    // SAFETY: per-CPU slot.
    unsafe { (*slot).ifindex = ifindex };
    Some(slot)
}

#[inline(always)]
pub fn count_non_ip(ifindex: u32) {
    count(Stat::NonIp);
    if let Some(slot) = iface_slot(ifindex) {
        // SAFETY: per-CPU slot.
        unsafe { (*slot).non_ip_packets += 1 };
    }
}

#[inline(always)]
fn add(field: *mut u64, v: u64) {
    // SAFETY: field points into a map value that lives as long as the map;
    // other CPUs add to it concurrently, hence the atomic add (BPF_XADD;
    // `AtomicU64::fetch_add` is not offered on the BPF target).
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(field, v) };
}

#[inline(always)]
fn add_to_flow(v: *mut FlowStats, d: &Delta, now: u64) {
    // SAFETY: v is a live map value; see `add`.
    unsafe {
        add(&raw mut (*v).skbs, 1);
        if d.segs > 1 {
            add(&raw mut (*v).extra_segments, d.segs - 1);
        }
        add(&raw mut (*v).bytes, d.bytes);
        if d.overhead != 0 {
            add(&raw mut (*v).overhead_bytes, d.overhead);
        }
        if d.oversize != 0 {
            atomic_xadd::<u32, u32, { AtomicOrdering::Relaxed }>(
                &raw mut (*v).oversize_packets,
                d.oversize,
            );
        }
        (*v).last_seen_jiffies = now;
        // Plain read-modify-write: only when a new flag appears, so the rare
        // race loses at most a flag bit, never a count.
        let flags = d.tcp_flags as u32;
        if (*v).tcp_flags & flags != flags {
            (*v).tcp_flags |= flags;
        }
    }
}

#[inline(always)]
pub fn account(ctx: &TcContext, key: &FlowKey, d: &Delta) {
    // SAFETY: helper without preconditions; jiffies, because a nanosecond
    // clock read costs as much as the rest of the update.
    let now = unsafe { bpf_jiffies64() };
    let hook = (key.hook & 1) as usize;
    let slot = iface_slot(key.ifindex);

    if let Some(slot) = slot {
        // SAFETY: per-CPU slot; index masked to 0..2.
        unsafe {
            (*slot).hook[hook].packets += d.segs;
            (*slot).hook[hook].bytes += d.bytes;
        }
    }
    if key.encap != Encap::None as u8
        && let Some(e) = ENCAP_TOTALS.get_ptr_mut(key.encap as u32)
    {
        // SAFETY: per-CPU slot.
        unsafe {
            (*e).packets += d.segs;
            (*e).bytes += d.bytes;
            (*e).overhead_bytes += d.overhead;
        }
    }

    if let Some(v) = FLOWS.get_ptr_mut(key) {
        add_to_flow(v, d, now);
        return;
    }
    let fresh = FlowStats {
        skbs: 1,
        extra_segments: d.segs - 1,
        bytes: d.bytes,
        overhead_bytes: d.overhead,
        first_seen_jiffies: now,
        last_seen_jiffies: now,
        tcp_flags: d.tcp_flags as u32,
        oversize_packets: d.oversize,
    };
    let error = match FLOWS.insert(key, fresh, BPF_NOEXIST as u64) {
        Ok(()) => return count(Stat::FlowInserts),
        // Another CPU inserted the same flow first: add to its entry.
        Err(e) if e as i64 == -EEXIST => match FLOWS.get_ptr_mut(key) {
            Some(v) => return add_to_flow(v, d, now),
            None => e,
        },
        Err(e) => e,
    };
    // No room for the flow (or it was deleted under us): the packet still
    // counts, in its interface's overflow totals.
    count(Stat::FlowInsertFailures);
    warn!(
        ctx,
        "flow map insert failed (error {}): {} packets counted in ifindex {}'s overflow",
        error,
        d.segs,
        key.ifindex
    );
    if let Some(slot) = slot {
        // SAFETY: per-CPU slot; index masked to 0..2.
        unsafe {
            (*slot).overflow[hook].packets += d.segs;
            (*slot).overflow[hook].bytes += d.bytes;
        }
    }
}
