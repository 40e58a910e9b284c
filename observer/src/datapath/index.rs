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
    index::{INDEX_FREE, INDEX_GONE, INDEX_PROBES, entry_slot, flow_hash, index_entries},
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
    /// entries that end a run (see [`FlowIndex::free_run`]).
    pub(super) fn remove(&self, key: &FlowKey, seed: u64, slot: u32) {
        let hash = flow_hash(key, seed);
        for pos in self.probes(hash) {
            let e = self.entry(pos);
            let entry = e.load(Ordering::Acquire);
            if entry == INDEX_FREE {
                return;
            }
            if entry_slot(entry) == Some(slot) {
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
