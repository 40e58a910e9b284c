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

    pub fn add(&mut self, o: &Counters) {
        self.packets += o.packets;
        self.bytes += o.bytes;
        self.skbs += o.skbs;
        self.overhead_bytes += o.overhead_bytes;
        self.oversize_packets += o.oversize_packets;
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FlowEntry {
    /// Everything counted for the flow, over all its kernel slots so far.
    total: Counters,
    /// Kernel jiffies (see `datapath::clock`).
    pub first_seen: u64,
    pub last_seen: u64,
    pub tcp_flags: u32,
    /// Kernel slots the flow has now (more than one while an old slot's
    /// final counts are still to be read).
    slots: u32,
}

impl FlowEntry {
    pub fn counters(&self) -> Counters {
        self.total
    }
}

#[derive(Default)]
pub struct FlowTable {
    /// Fx hashing: the keys are ours, not an attacker's, and SipHash was a
    /// third of the poll at 100k flows.
    entries: FxHashMap<FlowKey, FlowEntry>,
    /// Kernel slots that vanished before their counts were saved: given
    /// back (or reused) by a daemon that crashed before it saved what it had
    /// read of them. Only the daemon gives slots back, after reading them,
    /// so this stays 0 unless a daemon crashed.
    pub lru_evictions: u64,
    /// What flows grew by in this poll (and whether they are new), for the
    /// metrics: only the flows that changed, with no second map to keep.
    growth: Vec<(FlowKey, Counters, bool)>,
    /// Flows without a kernel slot, as the last `end_poll` counted them.
    ended: usize,
    /// Ended flows forgotten before their retention time, over the limit
    /// of [`FlowTable::limit_ended`] (since this daemon started).
    pub forgotten_over_limit: u64,
}

impl FlowTable {
    pub fn begin_poll(&mut self) {
        self.growth.clear();
    }

    /// Takes what one kernel slot of `key` grew by (`grown`, with the
    /// slot's current first/last seen and flags in `now`); `opened`: the
    /// slot is new to us, `closed`: these were its final counts.
    pub fn add(
        &mut self,
        key: &FlowKey,
        grown: &FlowStats,
        now: &FlowStats,
        opened: bool,
        closed: bool,
    ) {
        let mut created = false;
        let e = self.entries.entry(*key).or_insert_with(|| {
            created = true;
            FlowEntry {
                total: Counters::default(),
                first_seen: now.first_seen_jiffies,
                last_seen: now.last_seen_jiffies,
                tcp_flags: 0,
                slots: 0,
            }
        });
        let g = Counters::from_kernel(grown);
        e.total.add(&g);
        e.first_seen = e.first_seen.min(now.first_seen_jiffies);
        e.last_seen = e.last_seen.max(now.last_seen_jiffies);
        e.tcp_flags |= now.tcp_flags;
        e.slots += opened as u32;
        e.slots = e.slots.saturating_sub(closed as u32);
        if created || g != Counters::default() {
            self.growth.push((*key, g, created));
        }
    }

    /// Ends a poll: forgets flows without a kernel slot idle since
    /// `forget_before` (jiffies).
    pub fn end_poll(&mut self, forget_before: u64) {
        let mut ended = 0;
        self.entries.retain(|_, e| {
            let keep = e.slots > 0 || e.last_seen >= forget_before;
            ended += (keep && e.slots == 0) as usize;
            keep
        });
        self.ended = ended;
    }

    /// Keeps at most `keep` ended flows (no kernel slot left): past that,
    /// forgets the least recently seen, down to 7/8 of `keep` so that a
    /// steady churn trims once every few polls, not at each. Their counts
    /// are in the metrics already; only the API stops listing them. Without
    /// a bound, churn would fill the table with every flow of the retention
    /// time. Returns how many were forgotten.
    pub fn limit_ended(&mut self, keep: usize) -> usize {
        if self.ended <= keep {
            return 0;
        }
        let mut ended: Vec<(u64, FlowKey)> = self
            .entries
            .iter()
            .filter(|(_, e)| e.slots == 0)
            .map(|(k, e)| (e.last_seen, *k))
            .collect();
        let forget = ended.len().saturating_sub(keep - keep / 8);
        if forget == 0 {
            return 0;
        }
        ended.select_nth_unstable_by_key(forget - 1, |(seen, _)| *seen);
        for (_, key) in &ended[..forget] {
            self.entries.remove(key);
        }
        self.ended = ended.len() - forget;
        self.forgotten_over_limit += forget as u64;
        forget
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

    /// Takes over a saved table. With `same_kernel_slots` the kernel maps
    /// are the ones the table was saved from (and the slots' memory is
    /// restored beside it); else the new maps' slots count from zero and
    /// every flow keeps its totals.
    pub fn restore(&mut self, saved: SavedTable, same_kernel_slots: bool) {
        self.lru_evictions = saved.lru_evictions;
        self.entries = saved
            .entries
            .into_iter()
            .map(|(k, mut e)| {
                if !same_kernel_slots {
                    e.slots = 0;
                }
                (k, e)
            })
            .collect();
    }

    pub fn iter(&self) -> impl Iterator<Item = (&FlowKey, &FlowEntry)> {
        self.entries.iter()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Flows evicted from the kernel map and still listed, as the last
    /// poll left them.
    pub fn ended(&self) -> usize {
        self.ended
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

impl SavedTable {
    /// A table of flows with their totals and no kernel slot (what an
    /// older state file holds, for maps that are not ours any more).
    pub fn without_slots(
        flows: impl IntoIterator<Item = (FlowKey, Counters, u64, u64, u32)>,
        lru_evictions: u64,
    ) -> Self {
        let entries = flows
            .into_iter()
            .map(|(key, total, first_seen, last_seen, tcp_flags)| {
                let e = FlowEntry {
                    total,
                    first_seen,
                    last_seen,
                    tcp_flags,
                    slots: 0,
                };
                (key, e)
            })
            .collect();
        Self {
            entries,
            lru_evictions,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Counts of a slot: `skbs` packets, `bytes` bytes, seen first at 1.
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

    fn take(t: &mut FlowTable) -> Vec<(u16, u64, u64, bool)> {
        t.take_growth()
            .into_iter()
            .map(|(k, g, new)| (k.src_port, g.packets, g.bytes, new))
            .collect()
    }

    #[test]
    fn totals_add_up_over_slots_and_growth_is_what_changed() {
        let mut t = FlowTable::default();
        t.begin_poll();
        t.add(&key(1), &stats(3, 300, 10), &stats(3, 300, 10), true, false);
        t.end_poll(0);
        assert_eq!(take(&mut t), [(1, 3, 300, true)]);
        // The slot grew; then it is given back and a new slot opens for
        // the same flow in the same poll.
        t.begin_poll();
        t.add(
            &key(1),
            &stats(2, 200, 20),
            &stats(5, 500, 20),
            false,
            false,
        );
        t.end_poll(0);
        assert_eq!(take(&mut t), [(1, 2, 200, false)]);
        t.begin_poll();
        t.add(&key(1), &stats(1, 100, 30), &stats(6, 600, 30), false, true);
        t.add(&key(1), &stats(4, 40, 35), &stats(4, 40, 35), true, false);
        t.end_poll(0);
        let c = t.iter().next().unwrap().1.counters();
        assert_eq!((c.packets, c.bytes), (10, 640));
        assert_eq!(t.iter().next().unwrap().1.last_seen, 35);
    }

    #[test]
    fn flows_without_a_slot_are_forgotten_after_retention() {
        let mut t = FlowTable::default();
        t.begin_poll();
        t.add(&key(1), &stats(1, 100, 10), &stats(1, 100, 10), true, false);
        t.add(&key(2), &stats(1, 100, 10), &stats(1, 100, 10), true, false);
        t.end_poll(11);
        // Still in the kernel: kept whatever their age.
        assert_eq!(t.len(), 2);
        t.begin_poll();
        t.add(
            &key(1),
            &FlowStats::default(),
            &stats(1, 100, 10),
            false,
            true,
        );
        t.end_poll(11);
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn past_the_limit_the_least_recently_seen_ended_flows_are_forgotten() {
        let mut t = FlowTable::default();
        t.begin_poll();
        // Sixteen flows; the first ten end, last seen at 10..20.
        for p in 0..16 {
            let s = stats(1, 100, 10 + p as u64);
            t.add(&key(p), &s, &s, true, false);
        }
        t.end_poll(0);
        t.begin_poll();
        for p in 0..10 {
            let s = stats(1, 100, 10 + p as u64);
            t.add(&key(p), &FlowStats::default(), &s, false, true);
        }
        t.end_poll(0);
        assert_eq!(t.ended(), 10);
        assert_eq!(t.limit_ended(10), 0, "at the limit: nothing forgotten");
        // Keep 8: down to 7 (7/8 of it), the three seen least recently go.
        assert_eq!(t.limit_ended(8), 3);
        assert_eq!(t.ended(), 7);
        assert_eq!(t.forgotten_over_limit, 3);
        let mut left: Vec<u16> = t.iter().map(|(k, _)| k.src_port).collect();
        left.sort();
        assert_eq!(left, (3..16).collect::<Vec<u16>>(), "live flows all stay");
        assert_eq!(t.limit_ended(8), 0);
        // No ended flow kept at all: the live ones still stay.
        assert_eq!(t.limit_ended(0), 7);
        assert_eq!(t.len(), 6);
    }

    #[test]
    fn a_flow_seen_again_after_it_ended_is_forgotten_in_its_new_place() {
        let mut t = FlowTable::default();
        let poll = |t: &mut FlowTable, port: u16, seen: u64, opened: bool, closed: bool| {
            let s = stats(1, 100, seen);
            t.add(&key(port), &s, &s, opened, closed);
        };
        t.begin_poll();
        for p in 0..4 {
            poll(&mut t, p, 10 + p as u64, true, false);
        }
        t.end_poll(0);
        t.begin_poll();
        for p in 0..4 {
            poll(&mut t, p, 10 + p as u64, false, true);
        }
        t.end_poll(0);
        // Flow 0, ended first, has a slot again.
        t.begin_poll();
        poll(&mut t, 0, 30, true, false);
        t.end_poll(0);
        assert_eq!(t.ended(), 3);
        assert_eq!(t.limit_ended(2), 1);
        let ports = |t: &FlowTable| {
            let mut p: Vec<u16> = t.iter().map(|(k, _)| k.src_port).collect();
            p.sort();
            p
        };
        assert_eq!(ports(&t), [0, 2, 3], "the live flow 0 stays, 1 goes");
        // Flow 0 ends again: last now, so 2 goes before it.
        t.begin_poll();
        poll(&mut t, 0, 30, false, true);
        t.end_poll(0);
        assert_eq!(t.limit_ended(2), 1);
        assert_eq!(ports(&t), [0, 3]);
        assert_eq!(t.forgotten_over_limit, 2);
    }

    #[test]
    fn a_restored_table_goes_on_counting() {
        let mut t = FlowTable::default();
        t.begin_poll();
        t.add(&key(1), &stats(3, 300, 10), &stats(3, 300, 10), true, false);
        t.end_poll(0);
        let mut same = FlowTable::default();
        same.restore(t.save(), true);
        same.begin_poll();
        same.add(
            &key(1),
            &stats(2, 200, 20),
            &stats(5, 500, 20),
            false,
            false,
        );
        same.end_poll(100);
        assert_eq!(take(&mut same), [(1, 2, 200, false)]);
        assert_eq!(same.iter().next().unwrap().1.counters().packets, 5);
        // New maps: the flow keeps its totals but has no slot any more.
        let mut fresh = FlowTable::default();
        fresh.restore(t.save(), false);
        fresh.end_poll(100);
        assert_eq!(fresh.len(), 0);
    }
}
