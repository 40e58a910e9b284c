//! Userspace's side of the flow index (`FLOW_INDEX`, see
//! `observer_common::index`): removing a retired slot's entry, freeing the
//! removed entries no lookup needs any more, and finding a flow's slot
//! (replay and tests).

use std::{
    io,
    os::fd::BorrowedFd,
    sync::atomic::{AtomicU64, Ordering},
};

use observer_common::{
    FlowKey,
    index::{INDEX_FREE, INDEX_GONE, INDEX_PROBES, entry_slot, flow_hash, index_entries, same_tag},
};

use super::slots::Mmap;

/// The index mapped into our memory.
pub(super) struct FlowIndex {
    entries: Mmap<u64>,
    mask: u32,
}

impl FlowIndex {
    pub(super) fn map(fd: BorrowedFd<'_>, capacity: u32) -> io::Result<Self> {
        let n = index_entries(capacity);
        Ok(Self {
            entries: Mmap::new(fd, 0, n as usize)?,
            mask: n - 1,
        })
    }

    /// Entries minus one, as the kernel masks positions.
    pub(super) fn mask(&self) -> u32 {
        self.mask
    }

    fn entry(&self, pos: u32) -> &AtomicU64 {
        // SAFETY: an aligned u64 of the mapping, shared with the kernel.
        unsafe { AtomicU64::from_ptr(self.entries.at((pos & self.mask) as usize)) }
    }

    /// The positions a lookup of this hash probes, in order.
    fn probes(&self, hash: u64) -> impl Iterator<Item = u32> + '_ {
        (0..INDEX_PROBES).map(move |i| (hash as u32).wrapping_add(i) & self.mask)
    }

    /// Removes `slot`'s entry for `key`, if it has one (a slot another CPU
    /// entered the same flow before has none); then frees the removed
    /// entries that end a run (see [`FlowIndex::free_run`]). Every probe
    /// is looked at, past free entries too: a CPU may enter a flow just
    /// after an entry that a removal freed meanwhile, and that entry must
    /// not outlive its slot (no lookup finds it, but it takes room).
    pub(super) fn remove(&self, key: &FlowKey, seed: u64, slot: u32) {
        let hash = flow_hash(key, seed);
        for pos in self.probes(hash) {
            let e = self.entry(pos);
            let entry = e.load(Ordering::Acquire);
            if same_tag(entry, hash) && entry_slot(entry) == Some(slot) {
                // Only we change a taken entry: this cannot fail.
                let _ = e.compare_exchange(entry, INDEX_GONE, Ordering::AcqRel, Ordering::Acquire);
                self.free_run(pos);
                return;
            }
        }
    }

    /// A removed entry followed by a free one is needed by no lookup (none
    /// goes past the free one): it becomes free, and so, going back, do the
    /// removed entries before it. Racing a CPU that enters a flow right
    /// after the free one, a lookup may then stop short of that flow: it
    /// takes a second slot, and both count.
    fn free_run(&self, pos: u32) {
        if self.entry(pos.wrapping_add(1)).load(Ordering::Acquire) != INDEX_FREE {
            return;
        }
        let mut p = pos;
        for _ in 0..=self.mask {
            let freed = self
                .entry(p)
                .compare_exchange(INDEX_GONE, INDEX_FREE, Ordering::AcqRel, Ordering::Acquire)
                .is_ok();
            if !freed {
                return;
            }
            p = p.wrapping_sub(1);
        }
    }

    /// The slot the index gives `key`, among those `is_key` accepts.
    pub(super) fn find(
        &self,
        key: &FlowKey,
        seed: u64,
        is_key: impl Fn(u32) -> bool,
    ) -> Option<u32> {
        for pos in self.probes(flow_hash(key, seed)) {
            let entry = self.entry(pos).load(Ordering::Acquire);
            if entry == INDEX_FREE {
                return None;
            }
            if let Some(slot) = entry_slot(entry)
                && is_key(slot)
            {
                return Some(slot);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd as _;

    use observer_common::index::{INDEX_GONE, index_entry};

    use super::*;
    use crate::datapath::slots::memfd;

    const CAPACITY: u32 = 1024;
    const SEED: u64 = 7;

    fn key(port: u16) -> FlowKey {
        FlowKey {
            src_port: port,
            dst_port: 80,
            ..Default::default()
        }
    }

    /// The kernel's insert (`enter` in observer-ebpf's flow.rs), by hand:
    /// the first free or removed entry of the key's probes.
    fn enter(index: &FlowIndex, k: &FlowKey, slot: u32) {
        let hash = flow_hash(k, SEED);
        let pos = index
            .probes(hash)
            .find(|&p| entry_slot(index.entry(p).load(Ordering::Relaxed)).is_none())
            .expect("a free entry");
        index
            .entry(pos)
            .store(index_entry(hash, slot), Ordering::Relaxed);
    }

    #[test]
    fn removed_flows_are_not_found_and_no_removed_entry_ends_a_run() {
        let fd = memfd((index_entries(CAPACITY) as usize * 8).next_multiple_of(4096));
        let index = FlowIndex::map(fd.as_fd(), CAPACITY).unwrap();
        let keys: Vec<FlowKey> = (0..CAPACITY as u16).map(key).collect();
        for (slot, k) in keys.iter().enumerate() {
            enter(&index, k, slot as u32);
        }
        let find = |slot: usize| index.find(&keys[slot], SEED, |s| keys[s as usize] == keys[slot]);
        for slot in 0..keys.len() {
            assert_eq!(find(slot), Some(slot as u32));
        }
        for slot in (0..keys.len()).step_by(2) {
            index.remove(&keys[slot], SEED, slot as u32);
        }
        for slot in 0..keys.len() {
            let want = (slot % 2 == 1).then_some(slot as u32);
            assert_eq!(find(slot), want, "slot {slot}");
        }
        // A removed entry stays only where a run of taken entries goes on
        // past it: otherwise it was freed.
        let entries = index_entries(CAPACITY);
        let gone = (0..entries)
            .filter(|&p| index.entry(p).load(Ordering::Relaxed) == INDEX_GONE)
            .inspect(|&p| {
                let next = index.entry(p + 1).load(Ordering::Relaxed);
                assert_ne!(next, INDEX_FREE, "entry {p} removed before a free one");
            })
            .count();
        let taken = (0..entries)
            .filter(|&p| entry_slot(index.entry(p).load(Ordering::Relaxed)).is_some())
            .count();
        assert_eq!(taken, keys.len() / 2);
        assert!(gone < keys.len() / 2, "{gone} removed entries kept");
        // Removed flows come back, into freed or removed entries.
        for slot in (0..keys.len()).step_by(2) {
            enter(&index, &keys[slot], slot as u32);
        }
        for slot in 0..keys.len() {
            assert_eq!(find(slot), Some(slot as u32));
        }
    }

    #[test]
    fn removing_a_slot_not_in_the_index_changes_nothing() {
        let fd = memfd((index_entries(CAPACITY) as usize * 8).next_multiple_of(4096));
        let index = FlowIndex::map(fd.as_fd(), CAPACITY).unwrap();
        enter(&index, &key(1), 0);
        // Slot 1 has the same flow but never got an entry (another CPU
        // entered the flow first).
        index.remove(&key(1), SEED, 1);
        assert_eq!(index.find(&key(1), SEED, |_| true), Some(0));
        // Nor does removing a slot under another flow's key.
        index.remove(&key(2), SEED, 0);
        assert_eq!(index.find(&key(1), SEED, |_| true), Some(0));
    }

    #[test]
    fn an_entry_entered_past_a_freed_one_is_removed_all_the_same() {
        let fd = memfd((index_entries(CAPACITY) as usize * 8).next_multiple_of(4096));
        let index = FlowIndex::map(fd.as_fd(), CAPACITY).unwrap();
        // A CPU's lookup of key 1 passed its first probe (another flow's)
        // and entered key 1 at the second; meanwhile the other flow was
        // removed and its entry freed.
        let hash = flow_hash(&key(1), SEED);
        let second = (hash as u32).wrapping_add(1) & index.mask();
        index
            .entry(second)
            .store(index_entry(hash, 5), Ordering::Relaxed);
        index.remove(&key(1), SEED, 5);
        assert_eq!(index.entry(second).load(Ordering::Relaxed), INDEX_FREE);
    }
}
