//! The flow index (`FLOW_INDEX`): an open-addressing table from a flow's
//! key to its slot, shared by the kernel programs (which look flows up and
//! enter new ones) and userspace (which removes the flows it retires).
//!
//! An entry is a u64: [`INDEX_FREE`], [`INDEX_GONE`] (a removed flow's), or
//! the high 32 bits of the key's [`flow_hash`] (a tag: most mismatches are
//! told without reading the slot) above the slot's index plus one. A key's
//! entries are probed from `hash & mask` on, one after the other, for at
//! most [`INDEX_PROBES`] entries; a lookup stops at a free one. Entries are
//! changed only by compare-and-swap, so the kernel needs no lock: a new
//! flow's slot is published first and entered after, and a race at worst
//! gives one flow two slots, both counted.

use crate::FlowKey;

/// A free entry: ends a lookup.
pub const INDEX_FREE: u64 = 0;
/// A removed flow's entry: a lookup goes past it, an insert may take it.
pub const INDEX_GONE: u64 = u64::MAX;
/// Entries a lookup or insert probes at most (each probe one call of a
/// `bpf_loop` callback, so the bound costs the verifier nothing). With the
/// table at most a quarter full, a run this long at a key's place does not
/// happen in practice (simulations that filled 262,144 slots 5 times over
/// needed 14 probes at most; 131,072 slots 20 times, 15); should one
/// happen, the flow's packets go to the overflow totals, counted.
pub const INDEX_PROBES: u32 = 64;
/// Index entries per flow slot: the table is at most a quarter full, and
/// takes 32 bytes a slot (which the daemon's memory shows: it maps it).
pub const INDEX_ENTRIES_PER_SLOT: u32 = 4;
/// The largest flow capacity (the index's size must fit a u32).
pub const MAX_FLOW_CAPACITY: u32 = 1 << 24;

/// Entries in the index of a map of `capacity` slots: a power of two.
pub const fn index_entries(capacity: u32) -> u32 {
    capacity.next_power_of_two() * INDEX_ENTRIES_PER_SLOT
}

/// The entry of `slot` for a key of this hash.
#[inline(always)]
pub const fn index_entry(hash: u64, slot: u32) -> u64 {
    (hash & !0xffff_ffff) | (slot as u64 + 1)
}

/// The slot an entry names, if it names one.
#[inline(always)]
pub const fn entry_slot(entry: u64) -> Option<u32> {
    if entry == INDEX_FREE || entry == INDEX_GONE {
        None
    } else {
        Some(entry as u32 - 1)
    }
}

/// Whether an entry may be of a key of this hash (same tag).
#[inline(always)]
pub const fn same_tag(entry: u64, hash: u64) -> bool {
    entry >> 32 == hash >> 32
}

const MULTIPLIER: u64 = 0x9e37_79b9_7f4a_7c15;

/// The key's hash under `seed`: eight bytes at a time, multiplied and
/// folded, then the 64-bit finaliser of MurmurHash3. A few dozen
/// instructions where the kernel's jhash of the same key is twice that;
/// the random seed keeps outsiders from choosing keys that collide.
#[inline(always)]
pub fn flow_hash(key: &FlowKey, seed: u64) -> u64 {
    let mut h = seed ^ MULTIPLIER;
    for i in 0..FlowKey::WORDS {
        h = (h ^ key.word(i)).wrapping_mul(MULTIPLIER);
        h ^= h >> 29;
    }
    h = (h ^ key.tail() as u64).wrapping_mul(MULTIPLIER);
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ h >> 33
}

const _: () = assert!((MAX_FLOW_CAPACITY as u64) * (INDEX_ENTRIES_PER_SLOT as u64) <= 1 << 32);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_name_their_slot_and_tag() {
        let h = 0xdead_beef_0000_1234;
        let e = index_entry(h, 0);
        assert_eq!(entry_slot(e), Some(0));
        assert!(same_tag(e, h) && !same_tag(e, h ^ 1 << 40));
        assert_eq!(entry_slot(INDEX_FREE), None);
        assert_eq!(entry_slot(INDEX_GONE), None);
        assert_eq!(index_entries(1000), 4096);
        assert_eq!(index_entries(1024), 4096);
    }

    #[test]
    fn the_hash_depends_on_every_word_and_the_seed() {
        let base = FlowKey::default();
        let h = flow_hash(&base, 1);
        assert_ne!(h, flow_hash(&base, 2));
        for i in 0..11 {
            let mut k = base;
            // SAFETY: word i of the key, as in `flow_hash`.
            unsafe { *(&raw mut k as *mut u32).add(i) = 1 };
            assert_ne!(flow_hash(&k, 1), h, "word {i}");
        }
    }

    #[test]
    fn nearby_keys_spread_over_the_table() {
        // Flows differing in the source port only: a table a quarter full
        // has short runs (a quarter of the probes at most).
        let mask = (1u64 << 12) - 1;
        let mut taken = [false; 1 << 12];
        for port in 0..1024u16 {
            let k = FlowKey {
                src_port: port,
                ..Default::default()
            };
            let mut p = flow_hash(&k, 7) & mask;
            let mut probes = 0;
            while taken[p as usize] {
                p = (p + 1) & mask;
                probes += 1;
            }
            assert!(probes < INDEX_PROBES / 4, "port {port}: {probes} probes");
            taken[p as usize] = true;
        }
    }
}
