//! Map updates: a flow's counters (a slot of the mmapable `SLOTS` array,
//! found through a per-CPU cache or the `FLOW_INDEX` table, shared by all
//! CPUs, atomic adds), per-interface and per-encapsulation totals and datapath
//! counters (per-CPU arrays).

use core::{
    ffi::c_void,
    intrinsics::{AtomicOrdering, atomic_cxchg, atomic_xadd},
    mem::MaybeUninit,
    ptr::{read_volatile, write_volatile},
};

use aya_ebpf::{
    bindings::BPF_F_MMAPABLE,
    helpers::{bpf_jiffies64, bpf_ktime_get_ns, bpf_loop},
    macros::map,
    maps::{Array, PerCpuArray},
};
use aya_log_ebpf::{macro_support::Level, warn};
use observer_common::{
    CACHE_COUNTING, CACHE_FLUSHING, CACHE_IDLE, ClockSample, DEFAULT_FLOW_CAPACITY,
    DEFAULT_INDEX_ENTRIES, Encap, EncapTotals, FAMILY_IPV4, FLOW_CACHE_SLOTS, FlowCacheEntry,
    FlowKey, FlowSlot, FlowStats, IFACE_SLOTS, IfaceTotals, MtuLimit, PendingCounts, RingHead,
    SLOT_IN_RING, Stat, StopAfter,
    index::{INDEX_FREE, INDEX_GONE, INDEX_PROBES, entry_slot, flow_hash, index_entry, same_tag},
};

use crate::logs;
#[cfg(doc)]
use crate::parse::Fail;

/// Flow key -> its slot (see `observer_common::index`): only userspace
/// removes entries, when it retires the slot. Size set at load time.
#[map(name = "FLOW_INDEX")]
static FLOW_INDEX: Array<u64> = Array::with_max_entries(DEFAULT_INDEX_ENTRIES, BPF_F_MMAPABLE);

/// The flows' counters; userspace maps this array and reads it in place.
#[map(name = "SLOTS")]
static SLOTS: Array<FlowSlot> = Array::with_max_entries(DEFAULT_FLOW_CAPACITY, BPF_F_MMAPABLE);

/// The slots userspace gave back, a ring of `RING_HEAD.capacity` (u64:
/// array elements are 8-byte aligned, so userspace sees them so).
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

/// The totals of the counts the `flush_pending` program moved into slots:
/// it runs as an interrupt of a classifier, whose plain adds to
/// `IFACE_TOTALS` it must not race, so it adds here, atomically (shared by
/// all CPUs: flushes are rare).
#[map(name = "FLUSHED_IFACE")]
static FLUSHED_IFACE: Array<IfaceTotals> = Array::with_max_entries(IFACE_SLOTS, 0);

#[map(name = "FLUSHED_ENCAP")]
static FLUSHED_ENCAP: Array<EncapTotals> = Array::with_max_entries(Encap::COUNT, 0);

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

/// Compare-and-swap attempts on `fresh` or the ring before an insert gives
/// up (counted as an insert failure: the packet goes to the overflow
/// totals).
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

/// Adds a packet to its flow's slot: for a packet that found the slot
/// through the index, not the cache.
#[inline(always)]
fn add_to_flow(v: *mut FlowStats, d: &Delta, now: u64) {
    add_counts(
        v,
        &PendingCounts {
            skbs: 1,
            extra_segments: d.segs - 1,
            bytes: d.bytes,
            overhead_bytes: d.overhead,
            last_seen_jiffies: now,
            tcp_flags: d.tcp_flags as u32,
            oversize_packets: d.oversize,
        },
    );
}

/// Adds counts to a flow's slot, which other CPUs add to as well; the last
/// tick seen and the flags are stored only when they change (once a tick,
/// a new flag), so that an idle flow's line is not written for nothing.
#[inline(always)]
fn add_counts(v: *mut FlowStats, c: &PendingCounts) {
    // SAFETY: v is a live map value; see `add`. Volatile stores: a slot is
    // given back only after every CPU left it (see `bump`).
    unsafe {
        add(&raw mut (*v).skbs, c.skbs);
        if c.extra_segments != 0 {
            add(&raw mut (*v).extra_segments, c.extra_segments);
        }
        add(&raw mut (*v).bytes, c.bytes);
        if c.overhead_bytes != 0 {
            add(&raw mut (*v).overhead_bytes, c.overhead_bytes);
        }
        if c.oversize_packets != 0 {
            atomic_xadd::<u32, u32, { AtomicOrdering::Relaxed }>(
                &raw mut (*v).oversize_packets,
                c.oversize_packets,
            );
        }
        // A later tick from another CPU may be overwritten by an earlier
        // one here: the flow looks idle a tick sooner, no count changes.
        let seen = &raw mut (*v).last_seen_jiffies;
        if read_volatile(seen) < c.last_seen_jiffies {
            write_volatile(seen, c.last_seen_jiffies);
        }
        // Plain read-modify-write: only when a new flag appears, so the rare
        // race loses at most a flag bit, never a count.
        let have = &raw mut (*v).tcp_flags;
        let had = read_volatile(have);
        if had & c.tcp_flags != c.tcp_flags {
            write_volatile(have, had | c.tcp_flags);
        }
    }
}

/// Adds a packet to the counts waiting in this CPU's cache entry (plain
/// adds: only this CPU writes them, under `busy`).
#[inline(always)]
fn add_pending(p: *mut PendingCounts, d: &Delta, now: u64) {
    // SAFETY: a per-CPU entry, ours while busy is CACHE_COUNTING.
    unsafe {
        bump(&raw mut (*p).skbs, 1);
        if d.segs > 1 {
            bump(&raw mut (*p).extra_segments, d.segs - 1);
        }
        bump(&raw mut (*p).bytes, d.bytes);
        if d.overhead != 0 {
            bump(&raw mut (*p).overhead_bytes, d.overhead);
        }
        if d.oversize != 0 {
            let o = &raw mut (*p).oversize_packets;
            write_volatile(o, read_volatile(o) + d.oversize);
        }
        let seen = &raw mut (*p).last_seen_jiffies;
        if read_volatile(seen) != now {
            write_volatile(seen, now);
        }
        let flags = d.tcp_flags as u32;
        let have = &raw mut (*p).tcp_flags;
        let had = read_volatile(have);
        if had & flags != flags {
            write_volatile(have, had | flags);
        }
    }
}

/// A plain add, volatile: what a program does at an entry it holds stays
/// between its stores to `busy`. (The BPF target has no compiler fence,
/// and the compiler may move other accesses across volatile ones; only
/// this CPU runs these, so program order is all that is needed.)
#[inline(always)]
fn bump(field: *mut u64, v: u64) {
    // SAFETY: the caller's field of a per-CPU entry it holds.
    unsafe { write_volatile(field, read_volatile(field) + v) };
}

/// Takes `busy` from idle to `to`, or says the entry is someone else's
/// (a flush or classifier this program interrupted).
#[inline(always)]
fn enter_entry(c: *mut FlowCacheEntry, to: u32) -> bool {
    // SAFETY: a per-CPU entry; volatile: read and written around
    // interruptions.
    unsafe {
        let busy = &raw mut (*c).busy;
        if read_volatile(busy) != CACHE_IDLE {
            return false;
        }
        write_volatile(busy, to);
    }
    true
}

#[inline(always)]
fn leave_entry(c: *mut FlowCacheEntry) {
    // SAFETY: see `enter_entry`.
    unsafe { write_volatile(&raw mut (*c).busy, CACHE_IDLE) };
}

/// Moves an entry's pending counts into its slot and its interface's and
/// encapsulation's totals, and, if `by_program` (the `flush_pending`
/// program, not a classifier), empties the entry when the slot is no
/// longer its flow's (the caller holds `busy`). Without pending counts or
/// `by_program`, the slot is not read: the entry's slot is most likely out
/// of the CPU's caches.
///
/// The slot is the flow's, or being retired (generation one past, not in
/// the free ring): userspace gives a slot back only after a flush of every
/// CPU that left no entry, and that flush emptied every entry of the slot.
/// Should the slot be given back or another flow's all the same (a CPU
/// offline during that flush), the counts go to the interface's overflow
/// totals, not into another flow.
#[inline(always)]
fn flush_entry(c: *mut FlowCacheEntry, by_program: bool) {
    // SAFETY: a per-CPU entry, ours under busy; slots are live map values.
    unsafe {
        if read_volatile(&raw const (*c).key.ifindex) == 0 {
            return;
        }
        let p = &raw mut (*c).pending;
        let skbs = read_volatile(&raw const (*p).skbs);
        if skbs == 0 && !by_program {
            return;
        }
        let cached = read_volatile(&raw const (*c).generation);
        let (live, ours) = match SLOTS.get_ptr_mut(read_volatile(&raw const (*c).slot)) {
            Some(s) => {
                let generation = read_volatile(&raw const (*s).generation) as u32;
                let retiring = generation == cached.wrapping_add(1)
                    && read_volatile(&raw const (*s).key.hook) != SLOT_IN_RING;
                (
                    generation == cached,
                    (generation == cached || retiring).then_some(s),
                )
            }
            None => (false, None),
        };
        if skbs != 0 {
            let counts = PendingCounts {
                skbs,
                extra_segments: read_volatile(&raw const (*p).extra_segments),
                bytes: read_volatile(&raw const (*p).bytes),
                overhead_bytes: read_volatile(&raw const (*p).overhead_bytes),
                last_seen_jiffies: read_volatile(&raw const (*p).last_seen_jiffies),
                tcp_flags: read_volatile(&raw const (*p).tcp_flags),
                oversize_packets: read_volatile(&raw const (*p).oversize_packets),
            };
            clear_pending(p);
            if let Some(s) = ours {
                add_counts(&raw mut (*s).stats, &counts);
            }
            let key = &(*c).key;
            let packets = skbs + counts.extra_segments;
            let (bytes, overhead) = (counts.bytes, counts.overhead_bytes);
            if by_program {
                add_flushed_totals(key, packets, bytes, overhead, ours.is_none());
            } else {
                add_totals(key, packets, bytes, overhead);
                if ours.is_none() {
                    add_overflow(key, packets, bytes);
                }
            }
        }
        if !live && by_program {
            write_volatile(&raw mut (*c).key.ifindex, 0);
        }
    }
}

#[inline(always)]
fn clear_pending(p: *mut PendingCounts) {
    // SAFETY: a per-CPU entry's counts, ours under busy; word by word (see
    // `zero_words` in main.rs).
    unsafe {
        for f in [
            &raw mut (*p).skbs,
            &raw mut (*p).extra_segments,
            &raw mut (*p).bytes,
            &raw mut (*p).overhead_bytes,
            &raw mut (*p).last_seen_jiffies,
        ] {
            write_volatile(f, 0);
        }
        write_volatile(&raw mut (*p).tcp_flags, 0);
        write_volatile(&raw mut (*p).oversize_packets, 0);
    }
}

/// Moves the pending counts of this CPU's cache entry `i` into their slots
/// (the `flush_pending` program); returns 1 when the entry was busy (a
/// classifier this flush interrupted is counting in it), else 0.
#[inline(always)]
pub fn flush_cached(i: u32) -> u32 {
    let Some(c) = FLOW_CACHE.get_ptr_mut(i) else {
        return 0;
    };
    if !enter_entry(c, CACHE_FLUSHING) {
        return 1;
    }
    flush_entry(c, true);
    leave_entry(c);
    0
}

/// Word-by-word equality of two keys (a byte-wise compare would be a loop).
/// `a`'s words are read volatile: in a cache entry, only once `busy` is
/// taken (see `bump`).
#[inline(always)]
fn same_key(a: *const FlowKey, b: &FlowKey) -> bool {
    let words = a as *const u64;
    // SAFETY: a points to a live key (map value or stack), 8-aligned; the
    // words and tail as `FlowKey::word` and `tail` read them.
    unsafe {
        for i in 0..FlowKey::WORDS {
            if read_volatile(words.add(i)) != b.word(i) {
                return false;
            }
        }
        read_volatile((a as *const u8).add(FlowKey::TAIL) as *const u32) == b.tail()
    }
}

#[inline(always)]
fn copy_key(to: *mut FlowKey, from: &FlowKey) {
    let words = to as *mut u64;
    // SAFETY: the key's fields, as `FlowKey::word` and `tail` read them.
    unsafe {
        for i in 0..FlowKey::WORDS {
            write_volatile(words.add(i), from.word(i));
        }
        write_volatile((to as *mut u8).add(FlowKey::TAIL) as *mut u32, from.tail());
    }
}

/// Adds the packet to its flow and to its interface's and encapsulation's
/// totals: through the CPU's cache, to the counts waiting there (the
/// totals get them with the flow's slot, when they are flushed), else at
/// once. When `STOP` is [`StopAfter::Sizes`] (a benchmark's entry point),
/// to nothing.
#[inline(always)]
pub fn account<const STOP: u8>(key: &FlowKey, d: &Delta) {
    // SAFETY: helper without preconditions (inlined by the verifier to a
    // load of `jiffies`).
    let now = unsafe { bpf_jiffies64() };
    if STOP == StopAfter::Sizes as u8 {
        return;
    }
    let cache_slot = key.cache_slot();
    if add_cached(FLOW_CACHE.get_ptr_mut(cache_slot), key, d, now) {
        return;
    }
    add_totals(key, d.segs, d.bytes, d.overhead);
    add_indexed_apart(cache_slot, key, d, now);
}

/// Adds to `key`'s interface and encapsulation totals on this CPU (plain
/// adds: a classifier's, never interrupted by another).
#[inline(always)]
fn add_totals(key: &FlowKey, packets: u64, bytes: u64, overhead: u64) {
    if let Some(slot) = iface_slot(key.ifindex) {
        let hook = (key.hook & 1) as usize;
        // SAFETY: per-CPU slot; index masked to 0..2.
        unsafe {
            (*slot).hook[hook].packets += packets;
            (*slot).hook[hook].bytes += bytes;
        }
    }
    if key.encap != Encap::None as u8
        && let Some(e) = ENCAP_TOTALS.get_ptr_mut(key.encap as u32)
    {
        // SAFETY: per-CPU slot.
        unsafe {
            (*e).packets += packets;
            (*e).bytes += bytes;
            (*e).overhead_bytes += overhead;
        }
    }
}

/// [`add_totals`] and [`add_overflow`] for the `flush_pending` program:
/// to `FLUSHED_IFACE` and `FLUSHED_ENCAP`, atomically.
#[inline(always)]
fn add_flushed_totals(key: &FlowKey, packets: u64, bytes: u64, overhead: u64, overflow: bool) {
    if let Some(slot) = FLUSHED_IFACE.get_ptr_mut(key.ifindex & (IFACE_SLOTS - 1)) {
        let hook = (key.hook & 1) as usize;
        // SAFETY: a map value; index masked to 0..2; see `add`.
        unsafe {
            if read_volatile(&raw const (*slot).ifindex) != key.ifindex {
                write_volatile(&raw mut (*slot).ifindex, key.ifindex);
            }
            add(&raw mut (*slot).hook[hook].packets, packets);
            add(&raw mut (*slot).hook[hook].bytes, bytes);
            if overflow {
                add(&raw mut (*slot).overflow[hook].packets, packets);
                add(&raw mut (*slot).overflow[hook].bytes, bytes);
            }
        }
    }
    if key.encap != Encap::None as u8
        && let Some(e) = FLUSHED_ENCAP.get_ptr_mut(key.encap as u32)
    {
        // SAFETY: a map value; see `add`.
        unsafe {
            add(&raw mut (*e).packets, packets);
            add(&raw mut (*e).bytes, bytes);
            add(&raw mut (*e).overhead_bytes, overhead);
        }
    }
}

/// No room for the flow: the packet still counts, in its interface's
/// overflow totals.
#[inline(always)]
fn overflow(key: &FlowKey, d: &Delta, error: i64) {
    count(Stat::FlowInsertFailures);
    if logs(Level::Warn) {
        // aya-log-ebpf writes to its ring buffer: the macro ignores the
        // context argument.
        warn!(
            &(),
            "flow map insert failed (error {}): {} packets counted in ifindex {}'s overflow",
            error,
            d.segs,
            key.ifindex
        );
    }
    add_overflow(key, d.segs, d.bytes);
}

/// Counts packets of `key`'s interface and hook that are in no flow.
#[inline(always)]
fn add_overflow(key: &FlowKey, packets: u64, bytes: u64) {
    if let Some(slot) = iface_slot(key.ifindex) {
        let hook = (key.hook & 1) as usize;
        // SAFETY: per-CPU slot; index masked to 0..2.
        unsafe {
            (*slot).overflow[hook].packets += packets;
            (*slot).overflow[hook].bytes += bytes;
        }
    }
}

/// The flow this CPU saw last of the packet's cache entry, if the packet is
/// of it: the packet waits in the entry's pending counts. (No look at the
/// slot: an entry whose slot was retired is emptied by the flush before
/// the slot is given back.)
#[inline(always)]
fn add_cached(cached: Option<*mut FlowCacheEntry>, key: &FlowKey, d: &Delta, now: u64) -> bool {
    let Some(c) = cached else { return false };
    if !enter_entry(c, CACHE_COUNTING) {
        return false;
    }
    // SAFETY: per-CPU entry, ours under busy.
    let hit = unsafe { same_key(&raw const (*c).key, key) };
    if hit {
        // SAFETY: as above.
        add_pending(unsafe { &raw mut (*c).pending }, d, now);
    }
    leave_entry(c);
    hit
}

/// Where in the index a key's new entry goes: its hash and the entry.
#[derive(Clone, Copy)]
struct Probe {
    hash: u64,
    pos: u32,
}

/// [`lookup`]'s answer for a key not in the index and no entry free in
/// its probes. (Its other answers: the flow's odd generation's low 32 bits
/// above its slot's index, or, not found, the entry a new slot would take,
/// below 2^32.)
const LOOKUP_FULL: u64 = u64::MAX;

/// [`add_indexed`], or the overflow totals, as a global function: the
/// verifier checks it once, on its own, whatever the parse that calls it
/// (as a static one it walked it again for every caller's state, a
/// quarter of a minute per load on 6.1 under an emulated CPU). Hence its
/// form: pointers it checks for null, a number returned (0), the cache
/// entry by index, no context (a global function's must be used, and the
/// log needs none). Not inlined into the hot path either, whose registers
/// it would crowd.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn add_indexed_apart(
    cache_slot: u32,
    key: *const FlowKey,
    d: *const Delta,
    now: u64,
) -> i32 {
    // SAFETY: the verifier checked that both point to readable memory of
    // their types' sizes, or are null.
    let (Some(key), Some(d)) = (unsafe { key.as_ref() }, unsafe { d.as_ref() }) else {
        return 0;
    };
    if let Err(error) = add_indexed(FLOW_CACHE.get_ptr_mut(cache_slot), key, d, now) {
        overflow(key, d, error);
    }
    0
}

/// The flow's slot from the index (remembered in the cache), or a new slot
/// for it. The error is `-ENOSPC` when no slot or no index entry is free.
#[inline(always)]
fn add_indexed(
    cached: Option<*mut FlowCacheEntry>,
    key: &FlowKey,
    d: &Delta,
    now: u64,
) -> Result<(), i64> {
    let Some(h) = RING_HEAD.get_ptr_mut(0) else {
        return Err(-ENOSPC);
    };
    let table = Table::of(h);
    let hash = flow_hash(key, table.seed);
    let found = lookup(key, hash, table.mask);
    if found == LOOKUP_FULL {
        return Err(-ENOSPC);
    }
    let (generation, slot) = ((found >> 32) as u32, found as u32);
    if generation == 0 {
        let at = Probe { hash, pos: slot };
        return insert(cached, key, d, now, h, table.capacity, at);
    }
    if let Some(s) = SLOTS.get_ptr_mut(slot) {
        // SAFETY: live map value.
        add_to_flow(unsafe { &raw mut (*s).stats }, d, now);
        remember(cached, key, slot, generation);
    }
    Ok(())
}

/// The flow map's parameters, as userspace set them, or, when it has not
/// (`capacity` 0: the object run on its own), the maps' declared sizes and
/// seed 0 (see `RingHead`).
struct Table {
    seed: u64,
    mask: u32,
    capacity: u64,
}

impl Table {
    #[inline(always)]
    fn of(h: *const RingHead) -> Self {
        // SAFETY: h points into the map; written once by userspace, before
        // any program runs (`capacity` last).
        unsafe {
            let capacity = read_volatile(&raw const (*h).capacity);
            if capacity == 0 {
                return Self {
                    seed: 0,
                    mask: DEFAULT_INDEX_ENTRIES - 1,
                    capacity: DEFAULT_FLOW_CAPACITY as u64,
                };
            }
            Self {
                seed: read_volatile(&raw const (*h).seed),
                mask: read_volatile(&raw const (*h).index_mask) as u32,
                capacity,
            }
        }
    }
}

/// What the probes of one lookup share: the key, where its probes start,
/// and the answer so far (on the caller's stack, passed to each probe).
#[repr(C)]
struct Probing {
    key: FlowKey,
    mask: u32,
    hash: u64,
    /// [`LOOKUP_FULL`] until a probe answers.
    answer: u64,
    /// The first removed flow's entry met, or [`LOOKUP_FULL`].
    gone: u64,
}

/// Probes the key's entries: a live slot of this key, or the first entry
/// a new one could take (a removed flow's, or the free one that ends the
/// probe); see [`LOOKUP_FULL`] for the answer's form.
///
/// One probe per call of [`probe`] from `bpf_loop` (5.17+), which the
/// verifier checks once, not once per probe and path: 16 probes written
/// out ran 6.1's verifier past its million instructions, and a loop of
/// them was refused there (the compiler laid its back-edge out as a
/// fall-through, "back-edge from insn").
#[inline(always)]
fn lookup(key: &FlowKey, hash: u64, mask: u32) -> u64 {
    let mut p = MaybeUninit::<Probing>::uninit();
    let q = p.as_mut_ptr();
    // SAFETY: each field written once; `probe` has the callback's
    // signature, and `p` outlives the call.
    let (answer, gone) = unsafe {
        (&raw mut (*q).key).write(*key);
        (&raw mut (*q).mask).write(mask);
        (&raw mut (*q).hash).write(hash);
        // Two stores: as a struct literal, LLVM merged the two into a call
        // of a byte-by-byte memset loop, 16 rounds on every lookup.
        (&raw mut (*q).answer).write_volatile(LOOKUP_FULL);
        (&raw mut (*q).gone).write_volatile(LOOKUP_FULL);
        bpf_loop(INDEX_PROBES, probe as *mut c_void, q as *mut c_void, 0);
        ((*q).answer, (*q).gone)
    };
    if answer == LOOKUP_FULL { gone } else { answer }
}

/// Probe `i` of a [`lookup`]: 1 (stop) once `p.answer` is set, else 0.
#[inline(never)]
extern "C" fn probe(i: u32, p: *mut c_void) -> i64 {
    let p = p as *mut Probing;
    // SAFETY: `p` is the lookup's `Probing`, on its stack.
    unsafe {
        let pos = ((*p).hash as u32).wrapping_add(i) & (*p).mask;
        let Some(e) = FLOW_INDEX.get_ptr_mut(pos) else {
            return 1;
        };
        // An aligned u64 of the map, written by compare-and-swap.
        let entry = read_volatile(e);
        if entry == INDEX_FREE {
            (*p).answer = if (*p).gone == LOOKUP_FULL {
                pos as u64
            } else {
                (*p).gone
            };
            return 1;
        }
        if entry == INDEX_GONE {
            if (*p).gone == LOOKUP_FULL {
                (*p).gone = pos as u64;
            }
            return 0;
        }
        if same_tag(entry, (*p).hash)
            && let Some(slot) = entry_slot(entry)
            && let Some(s) = SLOTS.get_ptr_mut(slot)
        {
            // A slot is published (odd generation) with its key written
            // before it is entered, and keeps the key until it is given
            // back; a slot given back and reused since holds another key,
            // or this one again (then it is this flow's, rightly found).
            let generation = (*s).generation;
            if generation & 1 == 1 && same_key(&raw const (*s).key, &(*p).key) {
                (*p).answer = (generation << 32) | slot as u64;
                return 1;
            }
        }
        0
    }
}

/// Gives the cache entry to the flow, its pending counts (another flow's)
/// flushed first. Left as it is while a flush this program interrupted
/// holds it.
#[inline(always)]
fn remember(cached: Option<*mut FlowCacheEntry>, key: &FlowKey, slot: u32, generation: u32) {
    let Some(c) = cached else { return };
    if !enter_entry(c, CACHE_COUNTING) {
        return;
    }
    flush_entry(c, false);
    // SAFETY: per-CPU entry, ours under busy.
    unsafe {
        copy_key(&raw mut (*c).key, key);
        write_volatile(&raw mut (*c).slot, slot);
        write_volatile(&raw mut (*c).generation, generation);
    }
    leave_entry(c);
}

/// A new flow: a slot never used or given back (of `capacity`), its key
/// and first counts, the odd generation that makes it visible to userspace
/// (which counts it from then on), then its index entry, at `at.pos`.
#[inline(always)]
fn insert(
    cached: Option<*mut FlowCacheEntry>,
    key: &FlowKey,
    d: &Delta,
    now: u64,
    head: *mut RingHead,
    capacity: u64,
    at: Probe,
) -> Result<(), i64> {
    let Some(slot) = take_free_slot(head, capacity) else {
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
        // A compare-and-swap: a full barrier after the writes above (a
        // plain or non-fetching store is not one on every architecture),
        // so that userspace, seeing the generation odd, reads the whole
        // key. Only we change an even one.
        let even = (*s).generation;
        atomic_cxchg::<u64, { AtomicOrdering::SeqCst }, { AtomicOrdering::SeqCst }>(
            &raw mut (*s).generation,
            even,
            even + 1,
        );
        count(Stat::FlowInserts);
        remember(cached, key, slot, (even + 1) as u32);
    }
    enter(at, slot);
    Ok(())
}

/// Enters a published slot in the index, at the entry the lookup found
/// free (or a removed flow's). Should another CPU have taken that entry
/// since, the slot stays out of the index: counted all the same, and
/// retired once idle; the flow's next packet finds the other CPU's entry
/// (the same flow) or opens a slot again.
#[inline(always)]
fn enter(at: Probe, slot: u32) {
    let Some(e) = FLOW_INDEX.get_ptr_mut(at.pos) else {
        return;
    };
    // SAFETY: an aligned u64 of the map; see `lookup`.
    unsafe {
        let entry = read_volatile(e);
        if entry == INDEX_FREE || entry == INDEX_GONE {
            atomic_cxchg::<u64, { AtomicOrdering::SeqCst }, { AtomicOrdering::SeqCst }>(
                e,
                entry,
                index_entry(at.hash, slot),
            );
        }
    }
}

/// Takes a slot from the free ring (one given back), or else one never
/// handed out; `None` when neither has one. The ring first: slots are
/// reused before new ones are touched, so the slots in use, which every
/// poll reads, stay as few as the flows that need them.
#[inline(always)]
fn take_free_slot(h: *mut RingHead, capacity: u64) -> Option<u32> {
    for _ in 0..RING_TRIES {
        // SAFETY: h points into the map; the fields are u64-aligned.
        unsafe {
            let cons = read_volatile(&raw const (*h).cons);
            let prod = read_volatile(&raw const (*h).prod);
            if cons < prod {
                // The compare-and-swap orders the read of the index after
                // the producer's write of it (it wrote the index, then
                // `prod`).
                if step(&raw mut (*h).cons, cons) {
                    return FREE_RING.get((cons % capacity) as u32).map(|s| *s as u32);
                }
                continue;
            }
            let fresh = read_volatile(&raw const (*h).fresh);
            if fresh >= capacity {
                return None;
            }
            if step(&raw mut (*h).fresh, fresh) {
                return Some(fresh as u32);
            }
        }
    }
    None
}

/// Moves a counter other CPUs move too from `seen` to `seen + 1`, unless
/// one of them moved it first (compare and swap: a full barrier).
#[inline(always)]
fn step(counter: *mut u64, seen: u64) -> bool {
    // SAFETY: the caller's counter is an aligned u64 of a map.
    let (_, won) = unsafe {
        atomic_cxchg::<u64, { AtomicOrdering::SeqCst }, { AtomicOrdering::SeqCst }>(
            counter,
            seen,
            seen + 1,
        )
    };
    won
}
