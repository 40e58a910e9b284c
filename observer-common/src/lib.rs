//! Types shared by the kernel programs and userspace.
//!
//! Everything here is `#[repr(C)]` with explicit padding, because the same
//! bytes are written by the eBPF programs and read back through the bpf
//! syscall. A `user` feature adds `aya::Pod` impls for userspace.
#![no_std]

pub mod index;

/// Name of the mmapable array that finds a flow's slot from its key: an
/// open-addressing table of index entries (see [`index`]). An entry leaves
/// only when userspace retires its slot, so no count is ever dropped
/// unread; when no slot (or no entry near the key's) is free, packets go to
/// the interface's overflow totals (see [`IfaceTotals::overflow`]).
pub const FLOW_INDEX_MAP: &str = "FLOW_INDEX";
/// Name of the mmapable array of [`FlowSlot`]s: the flows' counters, read by
/// userspace straight from memory (no syscall, no copy of unchanged flows).
pub const SLOTS_MAP: &str = "SLOTS";
/// Name of the mmapable array of free slot indexes, a ring of the slots
/// userspace gave back, which the kernel takes from (see [`RingHead`]).
pub const FREE_RING_MAP: &str = "FREE_RING";
/// Name of the mmapable one-element array holding the [`RingHead`].
pub const RING_HEAD_MAP: &str = "RING_HEAD";
/// Name of the per-CPU array of [`FlowCacheEntry`]s: the flows last seen
/// on each CPU, so that a burst of one flow skips the index lookup, and
/// the counts they wait to flush into the flows' slots.
pub const FLOW_CACHE_MAP: &str = "FLOW_CACHE";
/// Name of the per-CPU array of per-interface totals.
pub const IFACE_TOTALS_MAP: &str = "IFACE_TOTALS";
/// Name of the per-CPU array of per-encapsulation totals.
pub const ENCAP_TOTALS_MAP: &str = "ENCAP_TOTALS";
/// Name of the array of per-interface totals that the `flush_pending`
/// program adds to (atomically, as an interrupt of a classifier, which
/// owns `IFACE_TOTALS`).
pub const FLUSHED_IFACE_TOTALS_MAP: &str = "FLUSHED_IFACE";
/// Name of the array of per-encapsulation totals `flush_pending` adds to.
pub const FLUSHED_ENCAP_TOTALS_MAP: &str = "FLUSHED_ENCAP";
/// Name of the per-CPU array of datapath counters (see [`Stat`]).
pub const STATS_MAP: &str = "STATS";
/// Name of the array of [`MtuLimit`]s, by interface slot.
pub const MTU_LIMITS_MAP: &str = "MTU_LIMITS";
/// Name of the one-slot array the `clock` program writes a [`ClockSample`] to.
pub const CLOCK_MAP: &str = "CLOCK";

/// Default number of flow slots (the map is preallocated).
pub const DEFAULT_FLOW_CAPACITY: u32 = 131_072;
/// Entries of the flow index for [`DEFAULT_FLOW_CAPACITY`] slots.
pub const DEFAULT_INDEX_ENTRIES: u32 = index::index_entries(DEFAULT_FLOW_CAPACITY);
/// Entries of the per-CPU flow cache, picked by a hash of the key (see
/// `FlowKey::cache_slot`): the flows interleaved on one interface, and the
/// two hooks a forwarded packet passes (a pod's ingress, the other pod's
/// egress), mostly have entries of their own.
pub const FLOW_CACHE_SLOTS: u32 = 1 << FLOW_CACHE_BITS;
/// Bits of a [`FLOW_CACHE_SLOTS`] index: the top bits of the key's hash.
pub const FLOW_CACHE_BITS: u32 = 8;
/// Slots in the per-interface totals array; an interface uses slot
/// `ifindex % IFACE_SLOTS`.
pub const IFACE_SLOTS: u32 = 4096;

/// UDP destination port of VXLAN (IANA; Calico's default).
pub const VXLAN_PORT: u16 = 4789;
/// UDP port of WireGuard (Calico's default).
pub const WIREGUARD_PORT: u16 = 51820;

/// The TC hook a packet was seen at. The API turns this into the pod's or
/// node's point of view depending on the interface kind.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Hook {
    Ingress = 0,
    Egress = 1,
}

impl Hook {
    pub fn name(self) -> &'static str {
        match self {
            Self::Ingress => "ingress",
            Self::Egress => "egress",
        }
    }

    pub fn from_u8(v: u8) -> Option<Self> {
        match v {
            0 => Some(Self::Ingress),
            1 => Some(Self::Egress),
            _ => None,
        }
    }
}

/// Where a classifier entry point stops: all the way (the daemon's), or,
/// for the benchmark's account of where the time goes, after the parse or
/// after the packet's sizes (and MTU check), just before its flow is
/// looked up (entry points of their own, so that the daemon's carry no
/// check).
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopAfter {
    Nothing = 0,
    Parse = 1,
    Sizes = 2,
}

/// Encapsulation of a flow: known from the outer headers in the kernel, or
/// from the device it was seen on (set by userspace for tunnel devices).
#[repr(u8)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(
    feature = "user",
    derive(serde::Serialize, serde::Deserialize),
    serde(rename_all = "lowercase")
)]
pub enum Encap {
    #[default]
    None = 0,
    Ipip = 1,
    Vxlan = 2,
    Wireguard = 3,
}

impl Encap {
    pub const COUNT: u32 = 4;

    pub fn from_u8(v: u8) -> Option<Self> {
        match v {
            0 => Some(Self::None),
            1 => Some(Self::Ipip),
            2 => Some(Self::Vxlan),
            3 => Some(Self::Wireguard),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Ipip => "ipip",
            Self::Vxlan => "vxlan",
            Self::Wireguard => "wireguard",
        }
    }

    /// The encapsulation named `none`, `ipip`, `vxlan` or `wireguard`.
    pub fn from_name(name: &str) -> Option<Self> {
        [Self::None, Self::Ipip, Self::Vxlan, Self::Wireguard]
            .into_iter()
            .find(|e| e.name() == name)
    }

    /// The encapsulation a tunnel device does, by Calico's device names:
    /// `tunl0` (IPIP), `vxlan.calico` and `vxlan-v6.calico`,
    /// `wireguard.cali` and `wg-v6.cali`.
    pub fn from_device(name: &str) -> Option<Self> {
        if name.starts_with("tunl") {
            Some(Self::Ipip)
        } else if name.starts_with("vxlan") {
            Some(Self::Vxlan)
        } else if name.starts_with("wireguard") || name.starts_with("wg") {
            Some(Self::Wireguard)
        } else {
            None
        }
    }

    /// Header bytes it adds to each inner packet over an IPv4 underlay, or
    /// an IPv6 one (`v6`): the outer IP header, plus VXLAN's UDP, VXLAN
    /// header and inner Ethernet, or WireGuard's UDP and its own 32 (without
    /// its padding to 16 bytes).
    pub const fn overhead(self, v6: bool) -> u32 {
        let ip = if v6 { 40 } else { 20 };
        match self {
            Self::None => 0,
            Self::Ipip => ip,
            Self::Vxlan => ip + 8 + 8 + 14,
            Self::Wireguard => ip + 8 + 32,
        }
    }

    /// [`overhead`](Self::overhead) of a tunnel device by its name (the
    /// `-v6` devices run over IPv6); 0 for a device that is no tunnel.
    pub fn device_overhead(name: &str) -> u32 {
        Self::from_device(name).map_or(0, |e| e.overhead(name.contains("-v6")))
    }
}

/// Its [`name`](Encap::name).
#[cfg(feature = "user")]
impl core::fmt::Display for Encap {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.name())
    }
}

/// Address family of a flow key.
pub const FAMILY_IPV4: u8 = 4;
pub const FAMILY_IPV6: u8 = 6;

/// Key of the flow map. Addresses are kept as the packet has them (network
/// byte order) in 32-bit words, so the kernel copies them a word at a time;
/// IPv4 uses the first word, the rest zero. See [`FlowKey::src_bytes`].
///
/// Aligned to 8 so that the kernel compares, copies and hashes its 44
/// bytes as five u64 words and one u32 ([`FlowKey::WORDS`]): half the
/// instructions of eleven u32s on the hot path. The 4 bytes of padding at
/// the end are never read.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[cfg_attr(feature = "user", derive(serde::Serialize, serde::Deserialize))]
pub struct FlowKey {
    pub ifindex: u32,
    pub src_addr: [u32; 4],
    pub dst_addr: [u32; 4],
    pub src_port: u16,
    pub dst_port: u16,
    /// [`Hook`] as u8.
    pub hook: u8,
    /// [`FAMILY_IPV4`] or [`FAMILY_IPV6`].
    pub family: u8,
    /// IP protocol number of the (inner) transport header.
    pub protocol: u8,
    /// [`Encap`] as u8, from outer headers.
    pub encap: u8,
}

impl FlowKey {
    /// The key's bytes as the kernel reads them: this many u64 words, then
    /// one u32 (see [`FlowKey::TAIL`]).
    pub const WORDS: usize = 5;
    /// Offset of the final u32 word: the key has 44 bytes of fields.
    pub const TAIL: usize = Self::WORDS * 8;

    /// The key's u64 word `i` (`i < WORDS`, a constant on the BPF target).
    #[inline(always)]
    pub fn word(&self, i: usize) -> u64 {
        debug_assert!(i < Self::WORDS);
        // SAFETY: within the first 40 bytes, all fields, no padding; the
        // key is 8-aligned.
        unsafe { *(self as *const Self as *const u64).add(i) }
    }

    /// The key's last u32 word (hook, family, protocol, encap).
    #[inline(always)]
    pub fn tail(&self) -> u32 {
        // SAFETY: bytes TAIL..TAIL + 4 are fields; 4-aligned.
        unsafe { *((self as *const Self as *const u8).add(Self::TAIL) as *const u32) }
    }

    /// The key's entry in the per-CPU flow cache: a multiplicative hash of
    /// the words that tell flows apart (the interface, the addresses' first
    /// and last words, the ports, and the last word, with the hook, moved
    /// up 24 bits so that the two hooks of one forwarded packet differ in
    /// more than their interfaces' low bits). A dozen instructions, where
    /// the index's hash takes about fifty.
    #[inline(always)]
    pub fn cache_slot(&self) -> u32 {
        let x = self.word(0) ^ self.word(2) ^ self.word(4) ^ ((self.tail() as u64) << 24);
        (x.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> (64 - FLOW_CACHE_BITS)) as u32
    }

    /// The source address as bytes in network order (first 4 for IPv4).
    pub fn src_bytes(&self) -> [u8; 16] {
        words_to_bytes(&self.src_addr)
    }

    pub fn dst_bytes(&self) -> [u8; 16] {
        words_to_bytes(&self.dst_addr)
    }

    /// Sets addresses from network-order bytes (tests, userspace).
    pub fn set_addrs(&mut self, src: [u8; 16], dst: [u8; 16]) {
        self.src_addr = bytes_to_words(&src);
        self.dst_addr = bytes_to_words(&dst);
    }
}

// The words hold the packet's bytes in memory order, whatever the host's
// endianness: convert with native-endian byte views.
fn words_to_bytes(w: &[u32; 4]) -> [u8; 16] {
    let mut out = [0u8; 16];
    for (i, word) in w.iter().enumerate() {
        out[i * 4..i * 4 + 4].copy_from_slice(&word.to_ne_bytes());
    }
    out
}

fn bytes_to_words(b: &[u8; 16]) -> [u32; 4] {
    let mut out = [0u32; 4];
    for (i, word) in out.iter_mut().enumerate() {
        *word = u32::from_ne_bytes([b[i * 4], b[i * 4 + 1], b[i * 4 + 2], b[i * 4 + 3]]);
    }
    out
}

/// The largest IP packet an interface's traffic fits through, per family
/// (0: no limit), by slot `ifindex % IFACE_SLOTS`. Userspace sets it on
/// pod interfaces to the tunnel devices' MTU; the kernel counts packets over
/// it per flow.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct MtuLimit {
    pub ifindex: u32,
    pub ipv4: u16,
    pub ipv6: u16,
}

/// Counters of one flow. Shared by all CPUs, so memory does not multiply by
/// the CPU count: the kernel adds with atomic operations, a burst's packets
/// first gathered in the CPU's [`FlowCacheEntry`] and added at once.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[cfg_attr(feature = "user", derive(serde::Serialize, serde::Deserialize))]
pub struct FlowStats {
    /// Socket buffers seen (a GSO super-packet is one).
    pub skbs: u64,
    /// Wire packets beyond one per skb (`gso_segs - 1` of GSO skbs), so
    /// that packets on the wire = `skbs + extra_segments`. Kept apart so
    /// the common non-GSO packet costs one atomic add less.
    pub extra_segments: u64,
    /// Bytes of the IP packets (inner ones for encapsulated traffic), as on
    /// the wire: every segment with its headers.
    pub bytes: u64,
    /// Bytes of encapsulation headers around the inner IP packets.
    pub overhead_bytes: u64,
    /// Kernel jiffies at insert. Jiffies cost nothing to read where a
    /// nanosecond clock costs a fifth of the per-packet budget; userspace
    /// maps them to wall time with a [`ClockSample`].
    pub first_seen_jiffies: u64,
    /// Kernel jiffies at the last packet.
    pub last_seen_jiffies: u64,
    /// Union of the TCP flags seen (low 8 bits used).
    pub tcp_flags: u32,
    /// Packets (not GSO) larger than the interface's [`MtuLimit`]: a pod
    /// sending more than fits the tunnel.
    pub oversize_packets: u32,
}

/// `FlowSlot::key.hook` of a slot userspace put back in the free ring.
pub const SLOT_IN_RING: u8 = 0xfe;

/// One flow's counters, in the mmapable `SLOTS` array.
///
/// `generation` is odd while the slot belongs to a flow: the kernel writes the key
/// and first counts, makes `generation` odd (atomically: userspace reads the key
/// only after seeing an odd `generation`, and counts the slot from then on), then
/// enters the slot in `FLOW_INDEX`. Userspace retires a slot in two steps a poll
/// apart: it removes the index entry and then makes `generation` even (so no CPU
/// finds the slot any more, and the next flush of the CPUs' caches empties their
/// entries of it, see [`FlowCacheEntry`]), then, a poll later, after a flush that
/// left nothing, reads the final counts and puts the slot back in the ring. Two
/// cache lines of its own per slot: no two flows share a line that CPUs write.
/// The first holds `generation` and `stats`, all that a flush of a live flow's
/// cache entry reads and writes; the key, which only the index lookup reads, is
/// in the second.
#[repr(C, align(64))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FlowSlot {
    /// 64 bits: the BPF target has no 32-bit compare-and-swap everywhere.
    pub generation: u64,
    pub stats: FlowStats,
    pub key: FlowKey,
    pub _pad: [u32; 4],
}

/// How slots are handed out, and the flow index's parameters.
///
/// A new flow takes a slot from the free ring, which holds the slots
/// userspace gave back (the kernel takes index `cons` by compare and swap;
/// userspace, the only producer, writes at `prod` and then moves it), or,
/// when the ring is empty, one never handed out, from `fresh`, a counter
/// the kernel moves by compare and swap (slots below it have been handed
/// out at least once, and are all that a poll reads).
///
/// `seed`, `index_mask` and then `capacity` are written by userspace before
/// any program runs. While `capacity` is 0 (the object loaded by something
/// other than the daemon: a benchmark harness, `bpftool`), the programs use
/// the maps' declared sizes ([`DEFAULT_FLOW_CAPACITY`] slots,
/// [`DEFAULT_INDEX_ENTRIES`] index entries) and seed 0: they count exactly
/// on their own, as they do under the daemon. (A reader of the slots runs
/// the `flush_pending` program on every CPU first, as the daemon does: see
/// [`FlowCacheEntry`].)
#[repr(C, align(64))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct RingHead {
    pub cons: u64,
    /// Beside `cons`: both are moved by CPUs that insert flows.
    pub fresh: u64,
    pub _pad0: [u64; 6],
    pub prod: u64,
    pub capacity: u64,
    /// The index's hash seed (random, per map), see [`index::flow_hash`].
    pub seed: u64,
    /// Entries of `FLOW_INDEX` minus one (a power of two minus one).
    pub index_mask: u64,
    pub _pad1: [u64; 4],
}

/// A flow a CPU saw lately: its key, and the slot and generation the index
/// gave. An entry whose key has ifindex 0 is empty.
///
/// The packets this CPU counts through the entry wait in `pending`, added
/// with plain instructions and without a look at the shared slot (an atomic
/// add there costs as much as the parse), until they are flushed into the
/// slot: when the entry is given to another flow, or when userspace runs
/// the `flush_pending` program on this CPU, which it does before every read
/// of the slots. A flush also empties an entry whose slot is no longer its
/// flow's (retired since), so that the flow's next packet looks it up
/// again: a slot is given back only after a flush that left no entry.
/// `busy` says who is at the entry: [`CACHE_IDLE`], [`CACHE_COUNTING`] (a
/// classifier, which a flush interrupting it leaves alone and says so) or
/// [`CACHE_FLUSHING`] (a flush, which a classifier interrupting it leaves
/// alone, counting straight into the slot instead).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FlowCacheEntry {
    pub key: FlowKey,
    pub slot: u32,
    pub generation: u32,
    pub busy: u32,
    pub _pad: u32,
    pub pending: PendingCounts,
}

/// [`FlowCacheEntry::busy`]: nobody at the entry.
pub const CACHE_IDLE: u32 = 0;
/// [`FlowCacheEntry::busy`]: a classifier is counting in or replacing it.
pub const CACHE_COUNTING: u32 = 1;
/// [`FlowCacheEntry::busy`]: a flush is moving its counts into the slot.
pub const CACHE_FLUSHING: u32 = 2;

/// What a [`FlowCacheEntry`]'s packets add to its slot, not there yet (as
/// in [`FlowStats`]; `skbs` 0: nothing).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PendingCounts {
    pub skbs: u64,
    pub extra_segments: u64,
    pub bytes: u64,
    pub overhead_bytes: u64,
    pub last_seen_jiffies: u64,
    pub tcp_flags: u32,
    pub oversize_packets: u32,
}

/// The kernel's jiffies and CLOCK_MONOTONIC read together, so that
/// userspace can turn the flows' jiffies into time.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ClockSample {
    pub jiffies: u64,
    pub monotonic_ns: u64,
}

/// Totals of one direction on one interface slot.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[cfg_attr(feature = "user", derive(serde::Serialize, serde::Deserialize))]
pub struct Totals {
    pub packets: u64,
    pub bytes: u64,
}

/// Per-interface totals slot: one [`Totals`] per hook, plus the ifindex that
/// last wrote it (so userspace can notice two interfaces sharing a slot).
/// Every IP packet is in `hook`, and also either in a flow entry or, when
/// the flow map had no room for its flow, in `overflow`. A packet counted
/// through a CPU's flow cache is added to `hook` with its flow's counts,
/// when they are flushed into the slot (in `FLUSHED_IFACE` when the
/// `flush_pending` program flushes them): the totals are never behind the
/// flows.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[cfg_attr(feature = "user", derive(serde::Serialize, serde::Deserialize))]
pub struct IfaceTotals {
    /// First, beside `hook`: every packet writes both.
    pub ifindex: u32,
    pub _pad: u32,
    pub hook: [Totals; 2],
    /// Packets counted without a flow entry (the flow map was full), per hook.
    pub overflow: [Totals; 2],
    /// Packets that were not IP (ARP, LLDP, ...), counted but not in flows.
    pub non_ip_packets: u64,
}

/// Per-encapsulation totals (indexed by [`Encap`]), from outer headers.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct EncapTotals {
    pub packets: u64,
    /// Inner IP bytes.
    pub bytes: u64,
    pub overhead_bytes: u64,
}

/// Datapath counters, indexes into the stats array.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stat {
    /// Packets that could not be parsed (truncated, bad header lengths,
    /// unknown IP version); never dropped, only counted here.
    Unparsed = 0,
    /// New flow entries inserted.
    FlowInserts = 1,
    /// Packets whose flow found no slot in the flow map (full): counted in
    /// their interface's overflow totals instead, never lost.
    FlowInsertFailures = 2,
    /// Frames that are not IP (ARP, ...), including inner non-IP frames.
    NonIp = 3,
}

impl Stat {
    pub const COUNT: u32 = 4;
    pub const ALL: [Stat; 4] = [
        Stat::Unparsed,
        Stat::FlowInserts,
        Stat::FlowInsertFailures,
        Stat::NonIp,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Stat::Unparsed => "unparsed",
            Stat::FlowInserts => "flow_inserts",
            Stat::FlowInsertFailures => "flow_insert_failures",
            Stat::NonIp => "non_ip",
        }
    }
}

#[cfg(feature = "user")]
mod pod_impls {
    use super::*;
    // Each: plain-old-data, repr(C), explicit padding, no invalid bit
    // patterns (the layout checks below pin the sizes).
    // SAFETY: FlowStats is repr(C) plain-old-data, any bytes are a valid value.
    unsafe impl aya::Pod for FlowStats {}
    // SAFETY: Totals is repr(C) plain-old-data, any bytes are a valid value.
    unsafe impl aya::Pod for Totals {}
    // SAFETY: IfaceTotals is repr(C) plain-old-data, any bytes are a valid value.
    unsafe impl aya::Pod for IfaceTotals {}
    // SAFETY: EncapTotals is repr(C) plain-old-data, any bytes are a valid value.
    unsafe impl aya::Pod for EncapTotals {}
    // SAFETY: ClockSample is repr(C) plain-old-data, any bytes are a valid value.
    unsafe impl aya::Pod for ClockSample {}
    // SAFETY: MtuLimit is repr(C) plain-old-data, any bytes are a valid value.
    unsafe impl aya::Pod for MtuLimit {}
}

// Layout checks: the kernel and userspace must agree byte for byte.
const _: () = assert!(size_of::<FlowKey>() == 48);
const _: () = assert!(core::mem::offset_of!(FlowKey, encap) + 1 == FlowKey::TAIL + 4);
const _: () = assert!(size_of::<FlowStats>() == 56);
const _: () = assert!(size_of::<IfaceTotals>() == 80);
const _: () = assert!(size_of::<MtuLimit>() == 8);
const _: () = assert!(size_of::<EncapTotals>() == 24);
const _: () = assert!(size_of::<FlowSlot>() == 128);
// A flush of a cache entry touches the first line only.
const _: () = assert!(core::mem::offset_of!(FlowSlot, key) == 64);
const _: () = assert!(size_of::<RingHead>() == 128);
const _: () = assert!(size_of::<FlowCacheEntry>() == 112);
const _: () = assert!(core::mem::offset_of!(FlowCacheEntry, pending) == 64);

#[cfg(test)]
mod tests {
    use super::{Encap, FLOW_CACHE_SLOTS, FlowKey};

    fn udp4(ifindex: u32, hook: u8, src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16) -> FlowKey {
        let mut k = FlowKey {
            ifindex,
            hook,
            family: super::FAMILY_IPV4,
            protocol: 17,
            src_port: sport,
            dst_port: dport,
            ..FlowKey::default()
        };
        k.src_addr[0] = u32::from_ne_bytes(src);
        k.dst_addr[0] = u32::from_ne_bytes(dst);
        k
    }

    /// Flows interleaved on one interface should mostly keep cache entries
    /// of their own: 64 connections of one pod to one service take nearly as
    /// many entries as random picks would (57 expected of 256).
    #[test]
    fn one_pods_flows_spread_over_the_cache() {
        let mut used = [false; FLOW_CACHE_SLOTS as usize];
        for sport in 40000..40064 {
            let k = udp4(7, 0, [10, 65, 0, 2], sport, [10, 96, 0, 10], 53);
            used[k.cache_slot() as usize] = true;
        }
        let taken = used.iter().filter(|u| **u).count();
        assert!(taken >= 52, "64 flows took only {taken} cache entries");
    }

    /// A forwarded packet is seen on two interfaces (ingress of one pod's
    /// veth, egress of the other's) with the same addresses and ports: the
    /// two should rarely share an entry, whatever the interfaces' numbers.
    #[test]
    fn the_two_hooks_of_a_forwarded_packet_rarely_share_an_entry() {
        let mut shared = 0;
        for a in 2..258u32 {
            let b = a ^ 1;
            let tuple =
                |ifindex, hook| udp4(ifindex, hook, [10, 65, 0, 2], 4000, [10, 65, 0, 3], 80);
            if tuple(a, 0).cache_slot() == tuple(b, 1).cache_slot() {
                shared += 1;
            }
        }
        assert!(
            shared <= 8,
            "{shared} of 256 interface pairs share an entry"
        );
    }

    #[test]
    fn calico_devices_and_their_headers() {
        let figures = [
            (Encap::Vxlan, 50, 70),
            (Encap::Ipip, 20, 40),
            (Encap::Wireguard, 60, 80),
        ];
        for (e, v4, v6) in figures {
            assert_eq!((e.overhead(false), e.overhead(true)), (v4, v6), "{e:?}");
            assert_eq!(Encap::from_name(e.name()), Some(e));
        }
        for (device, encap, bytes) in [
            ("tunl0", Some(Encap::Ipip), 20),
            ("vxlan.calico", Some(Encap::Vxlan), 50),
            ("vxlan-v6.calico", Some(Encap::Vxlan), 70),
            ("wireguard.cali", Some(Encap::Wireguard), 60),
            ("wg-v6.cali", Some(Encap::Wireguard), 80),
            ("eth0", None, 0),
        ] {
            assert_eq!(Encap::from_device(device), encap, "{device}");
            assert_eq!(Encap::device_overhead(device), bytes, "{device}");
        }
    }
}
