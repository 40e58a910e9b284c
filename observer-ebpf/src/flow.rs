//! Map updates: a flow's counters (a slot of the mmapable `SLOTS` array,
//! found through a per-CPU cache or the `FLOWS` hash, shared by all CPUs,
//! atomic adds), per-interface and per-encapsulation totals and datapath
//! counters (per-CPU arrays).

use core::intrinsics::{AtomicOrdering, atomic_cxchg, atomic_xadd};

use aya_ebpf::{
    bindings::{BPF_F_MMAPABLE, BPF_NOEXIST},
    helpers::{bpf_jiffies64, bpf_ktime_get_ns},
    macros::map,
    maps::{Array, HashMap, PerCpuArray},
    programs::TcContext,
};
use aya_log_ebpf::warn;
use observer_common::{
    ClockSample, DEFAULT_FLOW_CAPACITY, Encap, EncapTotals, FAMILY_IPV4, FLOW_CACHE_SLOTS,
    FlowCacheEntry, FlowKey, FlowSlot, FlowStats, IFACE_SLOTS, IfaceTotals, MtuLimit, RingHead,
    SLOT_RETURNED, SlotRef, Stat,
};

#[cfg(doc)]
use crate::parse::Fail;

/// Flow key -> its slot. A plain (preallocated) hash, not an LRU: only
/// userspace deletes, when it retires the slot. Capacity set at load time.
#[map(name = "FLOWS")]
static FLOWS: HashMap<FlowKey, SlotRef> = HashMap::with_max_entries(DEFAULT_FLOW_CAPACITY, 0);

/// The flows' counters; userspace maps this array and reads it in place.
#[map(name = "SLOTS")]
static SLOTS: Array<FlowSlot> = Array::with_max_entries(DEFAULT_FLOW_CAPACITY, BPF_F_MMAPABLE);

/// Free slot indexes, `RING_HEAD.capacity` of them, filled by userspace
/// (u64: array elements are 8-byte aligned, so userspace sees them so).
#[map(name = "FREE_RING")]
static FREE_RING: Array<u64> = Array::with_max_entries(DEFAULT_FLOW_CAPACITY, BPF_F_MMAPABLE);

#[map(name = "RING_HEAD")]
static RING_HEAD: Array<RingHead> = Array::with_max_entries(1, BPF_F_MMAPABLE);

/// The flows each CPU saw last (see `FlowCacheEntry`).
#[map(name = "FLOW_CACHE")]
static FLOW_CACHE: PerCpuArray<FlowCacheEntry> = PerCpuArray::with_max_entries(FLOW_CACHE_SLOTS, 0);

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

/// Compare-and-swap attempts on the ring before an insert gives up (counted
/// as an insert failure: the packet goes to the overflow totals).
const RING_TRIES: usize = 8;

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
const ENOSPC: i64 = 28;

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
        // Stored only when it changes (once a tick): an idle flow's line is
        // not written for nothing.
        if (*v).last_seen_jiffies != now {
            (*v).last_seen_jiffies = now;
        }
        // Plain read-modify-write: only when a new flag appears, so the rare
        // race loses at most a flag bit, never a count.
        let flags = d.tcp_flags as u32;
        if (*v).tcp_flags & flags != flags {
            (*v).tcp_flags |= flags;
        }
    }
}

/// Word-by-word equality of two keys (a byte-wise compare would be a loop).
#[inline(always)]
fn same_key(a: *const FlowKey, b: &FlowKey) -> bool {
    let (a, b) = (a as *const u32, b as *const FlowKey as *const u32);
    let mut diff = 0;
    for i in 0..(size_of::<FlowKey>() / 4) {
        // SAFETY: both are 44-byte keys, 4-byte aligned.
        diff |= unsafe { *a.add(i) ^ *b.add(i) };
    }
    diff == 0
}

#[inline(always)]
fn copy_key(to: *mut FlowKey, from: &FlowKey) {
    let (to, from) = (to as *mut u32, from as *const FlowKey as *const u32);
    for i in 0..(size_of::<FlowKey>() / 4) {
        // SAFETY: both are 44-byte keys, 4-byte aligned.
        unsafe { *to.add(i) = *from.add(i) };
    }
}

#[inline(always)]
pub fn account(ctx: &TcContext, key: &FlowKey, d: &Delta) {
    // SAFETY: helper without preconditions (inlined by the verifier to a
    // load of `jiffies`).
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

    let cached = FLOW_CACHE
        .get_ptr_mut((key.ifindex.wrapping_mul(2) + hook as u32) & (FLOW_CACHE_SLOTS - 1));
    if add_cached(cached, key, d, now) || add_found(cached, key, d, now) {
        return;
    }
    let Err(error) = insert(cached, key, d, now) else {
        return;
    };
    // No room for the flow: the packet still counts, in its interface's
    // overflow totals.
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

/// The flow this CPU saw last on this interface and hook, if the packet is
/// of it and its slot is still the flow's.
#[inline(always)]
fn add_cached(cached: Option<*mut FlowCacheEntry>, key: &FlowKey, d: &Delta, now: u64) -> bool {
    let Some(c) = cached else { return false };
    // SAFETY: per-CPU entry; slots are live map values.
    unsafe {
        if !same_key(&raw const (*c).key, key) {
            return false;
        }
        let Some(s) = SLOTS.get_ptr_mut((*c).slot) else {
            return false;
        };
        if (*s).generation as u32 != (*c).generation {
            return false;
        }
        add_to_flow(&raw mut (*s).stats, d, now);
    }
    true
}

/// The flow's slot from the hash (and remembered in the cache).
#[inline(always)]
fn add_found(cached: Option<*mut FlowCacheEntry>, key: &FlowKey, d: &Delta, now: u64) -> bool {
    // SAFETY: the value is read at once; hash values live under RCU.
    let Some(r) = (unsafe { FLOWS.get(key) }) else {
        return false;
    };
    let (slot, generation) = (r.slot, r.generation);
    let Some(s) = SLOTS.get_ptr_mut(slot) else {
        return false;
    };
    // SAFETY: live map value; the key is written before the slot's hash
    // entry exists and stays until the slot is given back.
    let (now_generation, same) =
        unsafe { ((*s).generation as u32, same_key(&raw const (*s).key, key)) };
    // The flow's generation, or the even one before it while the inserting
    // CPU is still publishing the slot; and the slot holds this flow (a
    // preallocated hash reuses a deleted element at once, so the value read
    // may be another flow's by now). Else: not found (a new slot is taken,
    // or the packet counts in the overflow totals).
    if !same || (now_generation != generation && now_generation.wrapping_add(1) != generation) {
        return false;
    }
    // SAFETY: live map value.
    add_to_flow(unsafe { &raw mut (*s).stats }, d, now);
    remember(cached, key, slot, generation);
    true
}

#[inline(always)]
fn remember(cached: Option<*mut FlowCacheEntry>, key: &FlowKey, slot: u32, generation: u32) {
    if let Some(c) = cached {
        // SAFETY: per-CPU entry.
        unsafe {
            copy_key(&raw mut (*c).key, key);
            (*c).slot = slot;
            (*c).generation = generation;
        }
    }
}

/// A new flow: a slot from the ring, its key and first counts, the hash
/// entry, then the odd generation that makes it visible to userspace.
/// The error is the hash's, or `-ENOSPC` when no slot is free.
#[inline(always)]
fn insert(
    cached: Option<*mut FlowCacheEntry>,
    key: &FlowKey,
    d: &Delta,
    now: u64,
) -> Result<(), i64> {
    let Some(slot) = take_free_slot() else {
        return Err(-ENOSPC);
    };
    let Some(s) = SLOTS.get_ptr_mut(slot) else {
        return Err(-ENOSPC);
    };
    // SAFETY: the slot is ours until published (no other CPU has its index).
    unsafe {
        copy_key(&raw mut (*s).key, key);
        let v = &raw mut (*s).stats;
        (*v).skbs = 1;
        (*v).extra_segments = d.segs - 1;
        (*v).bytes = d.bytes;
        (*v).overhead_bytes = d.overhead;
        (*v).first_seen_jiffies = now;
        (*v).last_seen_jiffies = now;
        (*v).tcp_flags = d.tcp_flags as u32;
        (*v).oversize_packets = d.oversize;
        // Even while free: the flow's generation is the next, odd one.
        let free = (*s).generation;
        let generation = (free | 1) as u32;
        match FLOWS.insert(key, SlotRef { slot, generation }, BPF_NOEXIST as u64) {
            Ok(()) => {
                // A compare-and-swap: a full barrier after the writes above
                // (a plain or non-fetching store is not one on every
                // architecture), so that userspace, seeing the generation
                // odd, reads the whole key. Only we change an even one.
                atomic_cxchg::<u64, { AtomicOrdering::SeqCst }, { AtomicOrdering::SeqCst }>(
                    &raw mut (*s).generation,
                    free,
                    free + 1,
                );
                count(Stat::FlowInserts);
                remember(cached, key, slot, generation);
                Ok(())
            }
            Err(e) => {
                // Not used: userspace puts it back in the ring.
                (*s).key.hook = SLOT_RETURNED;
                // Another CPU inserted the same flow first: add to its slot.
                if e as i64 == -EEXIST && add_found(cached, key, d, now) {
                    return Ok(());
                }
                Err(e as i64)
            }
        }
    }
}

/// Takes a slot index from the free ring; `None` when it is empty.
#[inline(always)]
fn take_free_slot() -> Option<u32> {
    let h = RING_HEAD.get_ptr_mut(0)?;
    for _ in 0..RING_TRIES {
        // SAFETY: h points into the map; the fields are u64-aligned.
        unsafe {
            let cons = core::ptr::read_volatile(&raw const (*h).cons);
            let prod = core::ptr::read_volatile(&raw const (*h).prod);
            let cap = core::ptr::read_volatile(&raw const (*h).capacity);
            if cons >= prod || cap == 0 {
                return None;
            }
            // The compare-and-swap orders the read of the index after the
            // producer's write of it (it wrote the index, then `prod`).
            let (_, won) = atomic_cxchg::<
                u64,
                { AtomicOrdering::SeqCst },
                { AtomicOrdering::SeqCst },
            >(&raw mut (*h).cons, cons, cons + 1);
            if won {
                return FREE_RING.get((cons % cap) as u32).map(|s| *s as u32);
            }
        }
    }
    None
}
