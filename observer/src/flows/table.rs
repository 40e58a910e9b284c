//! The flow table: kernel counters turned into monotonic counters that
//! survive eviction from the kernel map and restarts of the daemon.

use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};

use observer_common::{FlowKey, FlowStats};

/// Counters of one flow; all monotonic.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    pub packets: u64,
    pub bytes: u64,
    pub skbs: u64,
    pub overhead_bytes: u64,
    /// Packets over the interface's MTU limit (see `MtuLimit`).
    pub oversize_packets: u64,
}

impl Counters {
    pub fn from_kernel(s: &FlowStats) -> Self {
        Self {
            packets: s.skbs + s.extra_segments,
            bytes: s.bytes,
            skbs: s.skbs,
            overhead_bytes: s.overhead_bytes,
            oversize_packets: s.oversize_packets as u64,
        }
    }

    fn add(&mut self, o: &Counters) {
        self.packets += o.packets;
        self.bytes += o.bytes;
        self.skbs += o.skbs;
        self.overhead_bytes += o.overhead_bytes;
        self.oversize_packets += o.oversize_packets;
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FlowEntry {
    /// Counts of earlier kernel entries of this flow, already evicted.
    retired: Counters,
    /// The kernel entry's counts at the last read (zero if not in the map).
    current: Counters,
    /// Kernel jiffies (see `datapath::clock`).
    pub first_seen: u64,
    pub last_seen: u64,
    pub tcp_flags: u32,
    /// When the current kernel entry was created: another value means the
    /// kernel entry was evicted and created anew.
    kernel_first_seen: u64,
    in_kernel: bool,
    seen_in_poll: u64,
    /// The last poll its counts grew in.
    grew_in_poll: u64,
}

impl FlowEntry {
    pub fn counters(&self) -> Counters {
        let mut c = self.retired;
        c.add(&self.current);
        c
    }
}

#[derive(Default)]
pub struct FlowTable {
    /// Fx hashing: the keys are ours, not an attacker's, and SipHash was a
    /// third of the poll at 100k flows.
    entries: FxHashMap<FlowKey, FlowEntry>,
    poll: u64,
    /// Kernel entries that vanished without us evicting them: their packets
    /// after our last read were lost. Only userspace deletes from the flow
    /// map, so this stays 0 unless something else deletes entries (or a
    /// crashed daemon evicted flows after the state it saved last).
    pub lru_evictions: u64,
    /// What flows grew by in this poll (and whether they are new), for the
    /// metrics: only the flows that changed, with no second map to keep.
    growth: Vec<(FlowKey, Counters, bool)>,
}

impl FlowTable {
    pub fn begin_poll(&mut self) {
        self.poll += 1;
        self.growth.clear();
    }

    /// Takes one kernel entry read during the current poll.
    pub fn observe(&mut self, key: &FlowKey, s: &FlowStats) {
        let poll = self.poll;
        let now = Counters::from_kernel(s);
        let mut created = false;
        let e = self.entries.entry(*key).or_insert_with(|| {
            created = true;
            FlowEntry {
                retired: Counters::default(),
                current: Counters::default(),
                first_seen: s.first_seen_jiffies,
                last_seen: s.last_seen_jiffies,
                tcp_flags: 0,
                kernel_first_seen: s.first_seen_jiffies,
                in_kernel: true,
                seen_in_poll: poll,
                grew_in_poll: poll,
            }
        });
        let before = e.counters();
        // A kernel entry created anew since our last read (the LRU evicted
        // the old one): keep what the old one had counted, so that no
        // counter ever goes down.
        let c = &e.current;
        let renewed = s.first_seen_jiffies != e.kernel_first_seen
            || now.skbs < c.skbs
            || now.packets < c.packets
            || now.bytes < c.bytes
            || now.overhead_bytes < c.overhead_bytes;
        if renewed {
            let old = e.current;
            e.retired.add(&old);
        } else if now.oversize_packets < c.oversize_packets {
            // The kernel's 32-bit count wrapped.
            e.retired.oversize_packets += 1 << 32;
        }
        e.kernel_first_seen = s.first_seen_jiffies;
        e.current = now;
        e.last_seen = e.last_seen.max(s.last_seen_jiffies);
        e.first_seen = e.first_seen.min(s.first_seen_jiffies);
        e.tcp_flags |= s.tcp_flags;
        e.in_kernel = true;
        e.seen_in_poll = poll;
        let after = e.counters();
        if after != before {
            e.grew_in_poll = poll;
            // Totals only grow; saturating all the same, so that no
            // exported counter can ever go down.
            let growth = Counters {
                packets: after.packets.saturating_sub(before.packets),
                bytes: after.bytes.saturating_sub(before.bytes),
                skbs: after.skbs.saturating_sub(before.skbs),
                overhead_bytes: after.overhead_bytes.saturating_sub(before.overhead_bytes),
                oversize_packets: after
                    .oversize_packets
                    .saturating_sub(before.oversize_packets),
            };
            self.growth.push((*key, growth, created));
        }
    }

    /// Ends a poll: entries the kernel no longer has are retired. Returns the
    /// keys of kernel entries idle since `idle_before` (jiffies), to evict,
    /// and forgets retired flows idle since `forget_before`.
    pub fn end_poll(&mut self, idle_before: u64, forget_before: u64) -> Vec<FlowKey> {
        self.end_poll_keeping(idle_before, forget_before, usize::MAX)
    }

    /// [`end_poll`](Self::end_poll), and also, when more than `keep`
    /// entries would stay in the kernel map, the least recently seen of
    /// those that did not grow in this poll, down to `keep` (flows still
    /// active stay): room for new flows before the next poll. Evicting
    /// reads final counts, so this costs flow detail, never counts.
    pub fn end_poll_keeping(
        &mut self,
        idle_before: u64,
        forget_before: u64,
        keep: usize,
    ) -> Vec<FlowKey> {
        let poll = self.poll;
        let mut idle = Vec::new();
        let mut quiet = Vec::new();
        let mut in_kernel = 0usize;
        let mut lru = 0;
        self.entries.retain(|key, e| {
            if e.in_kernel && e.seen_in_poll != poll {
                lru += 1;
                let cur = e.current;
                e.retired.add(&cur);
                e.current = Counters::default();
                e.in_kernel = false;
            }
            if e.in_kernel {
                if e.last_seen < idle_before {
                    idle.push(*key);
                } else {
                    in_kernel += 1;
                    if keep != usize::MAX && e.grew_in_poll != poll {
                        quiet.push((e.last_seen, *key));
                    }
                }
            }
            e.in_kernel || e.last_seen >= forget_before
        });
        self.lru_evictions += lru;
        let extra = in_kernel.saturating_sub(keep).min(quiet.len());
        if extra > 0 {
            quiet.select_nth_unstable_by_key(extra - 1, |(seen, _)| *seen);
            idle.extend(quiet[..extra].iter().map(|(_, k)| *k));
        }
        idle
    }

    /// Records the final counts of an entry we evicted from the kernel.
    pub fn retire(&mut self, key: &FlowKey, last: Option<&FlowStats>) {
        if let Some(s) = last {
            self.observe(key, s);
        }
        if let Some(e) = self.entries.get_mut(key) {
            let cur = e.current;
            e.retired.add(&cur);
            e.current = Counters::default();
            e.in_kernel = false;
        }
    }

    /// What each flow grew by in this poll, and whether it is new: the
    /// metrics add it to their series.
    pub fn take_growth(&mut self) -> Vec<(FlowKey, Counters, bool)> {
        std::mem::take(&mut self.growth)
    }

    /// Everything needed to go on counting in another process.
    pub fn save(&self) -> SavedTable {
        SavedTable {
            entries: self.entries.iter().map(|(k, e)| (*k, e.clone())).collect(),
            lru_evictions: self.lru_evictions,
        }
    }

    /// Takes over a saved table. With `same_kernel_entries` the kernel map
    /// is the one the table was saved from, so its entries go on from the
    /// counts read then; else (new maps) every flow's counts are kept as
    /// retired and the kernel's entries count from zero.
    pub fn restore(&mut self, saved: SavedTable, same_kernel_entries: bool) {
        self.lru_evictions = saved.lru_evictions;
        self.entries = saved
            .entries
            .into_iter()
            .map(|(k, mut e)| {
                if !same_kernel_entries {
                    let cur = e.current;
                    e.retired.add(&cur);
                    e.current = Counters::default();
                    e.in_kernel = false;
                }
                e.seen_in_poll = 0;
                (k, e)
            })
            .collect();
        self.poll = 0;
    }

    pub fn iter(&self) -> impl Iterator<Item = (&FlowKey, &FlowEntry)> {
        self.entries.iter()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// A [`FlowTable`] as saved across restarts.
#[derive(Serialize, Deserialize)]
pub struct SavedTable {
    entries: Vec<(FlowKey, FlowEntry)>,
    lru_evictions: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A kernel entry created at jiffy 1, last seen at `t`.
    fn stats(skbs: u64, bytes: u64, t: u64) -> FlowStats {
        FlowStats {
            skbs,
            bytes,
            first_seen_jiffies: 1,
            last_seen_jiffies: t,
            ..Default::default()
        }
    }

    fn key(port: u16) -> FlowKey {
        FlowKey {
            src_port: port,
            ..Default::default()
        }
    }

    #[test]
    fn counters_stay_monotonic_across_our_eviction() {
        let mut t = FlowTable::default();
        t.begin_poll();
        t.observe(&key(1), &stats(3, 300, 10));
        assert!(t.end_poll(5, 0).is_empty());
        t.begin_poll();
        t.observe(&key(1), &stats(5, 500, 20));
        let idle = t.end_poll(100, 0);
        assert_eq!(idle, vec![key(1)]);
        // Evicted with two more packets counted since the read.
        t.retire(&key(1), Some(&stats(7, 700, 30)));
        // A new kernel entry for the same flow starts from zero.
        t.begin_poll();
        t.observe(&key(1), &stats(1, 100, 40));
        t.end_poll(0, 0);
        let c = t.iter().next().unwrap().1.counters();
        assert_eq!((c.packets, c.bytes), (8, 800));
    }

    #[test]
    fn lru_eviction_is_counted_and_keeps_counts() {
        let mut t = FlowTable::default();
        t.begin_poll();
        t.observe(&key(1), &stats(4, 400, 10));
        t.end_poll(0, 0);
        // Gone from the kernel without us evicting it.
        t.begin_poll();
        t.end_poll(0, 0);
        assert_eq!(t.lru_evictions, 1);
        assert_eq!(t.iter().next().unwrap().1.counters().packets, 4);
        // Recreated in the kernel, smaller: counted on top.
        t.begin_poll();
        t.observe(&key(1), &stats(2, 200, 20));
        t.end_poll(0, 0);
        assert_eq!(t.iter().next().unwrap().1.counters().bytes, 600);
    }

    #[test]
    fn recreated_between_reads_is_detected() {
        let mut t = FlowTable::default();
        t.begin_poll();
        t.observe(&key(1), &stats(10, 1000, 10));
        t.end_poll(0, 0);
        t.begin_poll();
        t.observe(&key(1), &stats(3, 300, 20));
        t.end_poll(0, 0);
        assert_eq!(t.iter().next().unwrap().1.counters().packets, 13);
    }

    #[test]
    fn recreated_with_more_skbs_but_fewer_bytes_is_detected() {
        let mut t = FlowTable::default();
        t.begin_poll();
        t.observe(&key(1), &stats(2, 3000, 10));
        t.end_poll(0, 0);
        // Evicted by the LRU and created anew between two reads: more skbs
        // than before, fewer bytes, a later creation time.
        let mut renewed = stats(3, 180, 20);
        renewed.first_seen_jiffies = 15;
        t.begin_poll();
        t.observe(&key(1), &renewed);
        t.end_poll(0, 0);
        let c = t.iter().next().unwrap().1.counters();
        assert_eq!((c.packets, c.bytes), (5, 3180));
        // The same entry read again adds only its growth.
        let mut later = renewed;
        later.skbs = 4;
        later.bytes = 240;
        t.begin_poll();
        t.observe(&key(1), &later);
        t.end_poll(0, 0);
        let c = t.iter().next().unwrap().1.counters();
        assert_eq!((c.packets, c.bytes), (6, 3240));
    }

    #[test]
    fn a_wrapped_32_bit_counter_never_goes_down() {
        let mut t = FlowTable::default();
        let mut s = stats(10, 1000, 10);
        s.oversize_packets = u32::MAX - 1;
        t.begin_poll();
        t.observe(&key(1), &s);
        t.end_poll(0, 0);
        s.skbs = 13;
        s.oversize_packets = 1;
        t.begin_poll();
        t.observe(&key(1), &s);
        t.end_poll(0, 0);
        let c = t.iter().next().unwrap().1.counters();
        // 2^32 - 2, then 3 more.
        assert_eq!(c.oversize_packets, (1 << 32) + 1);
        assert_eq!((c.packets, c.bytes), (13, 1000));
    }

    #[test]
    fn growth_is_what_changed_in_the_poll_and_new_flows_are_told() {
        let mut t = FlowTable::default();
        let take = |t: &mut FlowTable| {
            let got: Vec<_> = t
                .take_growth()
                .into_iter()
                .map(|(k, g, new)| (k.src_port, g.packets, g.bytes, new))
                .collect();
            got
        };
        t.begin_poll();
        t.observe(&key(1), &stats(3, 300, 10));
        t.end_poll(0, 0);
        assert_eq!(take(&mut t), [(1, 3, 300, true)]);
        assert_eq!(take(&mut t), []);
        // Unchanged: nothing; grown: the difference.
        t.begin_poll();
        t.observe(&key(1), &stats(3, 300, 10));
        t.observe(&key(2), &stats(1, 60, 10));
        t.end_poll(0, 0);
        assert_eq!(take(&mut t), [(2, 1, 60, true)]);
        t.begin_poll();
        t.observe(&key(1), &stats(5, 520, 20));
        t.end_poll(0, 0);
        assert_eq!(take(&mut t), [(1, 2, 220, false)]);
        // Idle, evicted by us with a packet since the read: that counts.
        t.begin_poll();
        t.observe(&key(1), &stats(5, 520, 20));
        assert_eq!(t.end_poll(100, 0), [key(1)]);
        t.retire(&key(1), Some(&stats(6, 600, 30)));
        assert_eq!(take(&mut t), [(1, 1, 80, false)]);
    }

    #[test]
    fn past_the_room_to_keep_the_least_recently_seen_quiet_ones_go() {
        let mut t = FlowTable::default();
        t.begin_poll();
        for port in 1..=6 {
            t.observe(&key(port), &stats(1, 100, 100 + port as u64));
        }
        // All new, so all grew: only the idle one (port 1) goes.
        assert_eq!(t.end_poll_keeping(102, 0, 3), [key(1)]);
        // Ports 2..=4 quiet, 5 and 6 grew: keep three, so 2 and 3 go.
        t.begin_poll();
        for port in 2..=6 {
            let n = if port >= 5 { 2 } else { 1 };
            t.observe(&key(port), &stats(n, 100 * n, 100 + port as u64));
        }
        let mut out = t.end_poll_keeping(0, 0, 3);
        out.sort_by_key(|k| k.src_port);
        assert_eq!(out, [key(2), key(3)]);
        // Within the room: nothing.
        t.begin_poll();
        for port in 2..=6 {
            t.observe(&key(port), &stats(2, 200, 200));
        }
        assert_eq!(t.end_poll_keeping(0, 0, 10), []);
    }

    #[test]
    fn a_restored_table_goes_on_counting() {
        let mut t = FlowTable::default();
        t.begin_poll();
        t.observe(&key(1), &stats(3, 300, 10));
        t.end_poll(0, 0);
        // Same kernel map: only what came after the read is new.
        let mut same = FlowTable::default();
        same.restore(t.save(), true);
        same.begin_poll();
        same.observe(&key(1), &stats(5, 500, 20));
        same.end_poll(0, 0);
        let g: Vec<_> = same
            .take_growth()
            .iter()
            .map(|(_, g, _)| g.packets)
            .collect();
        assert_eq!(g, [2]);
        assert_eq!(same.iter().next().unwrap().1.counters().packets, 5);
        // New maps: the old counts stay, the new entry counts on top.
        let mut fresh = FlowTable::default();
        fresh.restore(t.save(), false);
        fresh.begin_poll();
        fresh.observe(&key(1), &stats(2, 200, 30));
        fresh.end_poll(0, 0);
        assert_eq!(fresh.iter().next().unwrap().1.counters().packets, 5);
        assert_eq!(fresh.lru_evictions, 0);
    }

    #[test]
    fn retired_flows_are_forgotten_after_retention() {
        let mut t = FlowTable::default();
        t.begin_poll();
        t.observe(&key(1), &stats(1, 100, 10));
        t.end_poll(0, 0);
        t.retire(&key(1), None);
        t.begin_poll();
        t.end_poll(0, 11);
        assert_eq!(t.len(), 0);
    }
}
