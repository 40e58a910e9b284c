//! Frame number `index` of a run seeded with `seed`: which frame, which
//! mutations, which entry point. A pure function of the two numbers, so
//! that a failure report is enough to rebuild the frame.
//!
//! Frames come in blocks of [`BLOCK`]. One block in [`SWEEP_ONE_IN`] is a
//! truncation sweep: one frame (valid, or with one lying length field) cut
//! at every offset in turn, so that every header of its shape is cut
//! everywhere. In the other blocks each frame is generated on its own: one
//! in [`VALID_ONE_IN`] stays valid, the rest get one to three mutations.

use observer_common::Hook;

use super::{
    generate::{self, Frame, Link},
    mutate::{self, Mutation},
    rng::Rng,
};
use crate::datapath::object;

pub const BLOCK: u64 = 512;
pub const SWEEP_ONE_IN: usize = 8;
pub const VALID_ONE_IN: usize = 8;

/// Keeps the block streams apart from the per-frame streams.
const BLOCK_SALT: u64 = 0x5eed_b10c;

/// One run of the classifier: a frame and where it goes.
pub struct Case {
    pub index: u64,
    pub frame: Frame,
    pub prog: &'static str,
    pub hook: Hook,
    pub mutations: Vec<Mutation>,
    /// Set in sweeps: the frame is its base cut to this length.
    pub sweep_cut: Option<usize>,
}

pub fn build(seed: u64, index: u64) -> Case {
    let mut rng = Rng::for_item(seed, index);
    let mut block = Rng::for_item(seed ^ BLOCK_SALT, index / BLOCK);
    let mut mutations = Vec::new();
    let mut sweep_cut = None;
    let frame = if block.one_in(SWEEP_ONE_IN) {
        let mut f = generate::frame(&mut block);
        if block.one_in(2) && mutate::apply(&mut block, &mut f, Mutation::LieLength) {
            mutations.push(Mutation::LieLength);
        }
        // Offsets past the frame's end wrap around: short frames are
        // swept more than once per block.
        let cut = (index % BLOCK) as usize % (f.bytes.len() + 1);
        if cut < f.bytes.len() {
            mutate::truncate(&mut f, cut);
            f.expect = None;
            f.gso = None;
            mutations.push(Mutation::Truncate);
            sweep_cut = Some(cut);
        }
        f
    } else {
        let mut f = generate::frame(&mut rng);
        if !rng.one_in(VALID_ONE_IN) {
            for _ in 0..rng.range(1, 3) {
                let m = rng.pick(&Mutation::ALL);
                if mutate::apply(&mut rng, &mut f, m) {
                    mutations.push(m);
                }
            }
        }
        f
    };
    let hook = if rng.one_in(2) {
        Hook::Ingress
    } else {
        Hook::Egress
    };
    let prog = match (frame.link, hook) {
        (Link::Ethernet, Hook::Ingress) => object::ETH_INGRESS,
        (Link::Ethernet, Hook::Egress) => object::ETH_EGRESS,
        (Link::L3, Hook::Ingress) => object::L3_INGRESS,
        (Link::L3, Hook::Egress) => object::L3_EGRESS,
    };
    Case {
        index,
        frame,
        prog,
        hook,
        mutations,
        sweep_cut,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_case_is_rebuilt_from_seed_and_index() {
        for index in [0, 1, 511, 512, 99_999] {
            let (a, b) = (build(42, index), build(42, index));
            assert_eq!(a.frame.bytes, b.frame.bytes);
            assert_eq!((a.prog, &a.mutations), (b.prog, &b.mutations));
        }
    }

    #[test]
    fn sweeps_cut_their_frame_at_every_offset() {
        // Find a sweep block and check it covers 0..len of its frame.
        let seed = 9;
        let block = (0..64)
            .find(|&b| build(seed, b * BLOCK).sweep_cut.is_some())
            .expect("a sweep block among 64");
        let cuts: std::collections::BTreeSet<usize> = (0..BLOCK)
            .filter_map(|j| build(seed, block * BLOCK + j).sweep_cut)
            .collect();
        let full = (0..BLOCK)
            .map(|j| build(seed, block * BLOCK + j))
            .find(|c| c.sweep_cut.is_none())
            .map(|c| c.frame.bytes.len());
        if let Some(len) = full {
            assert_eq!(cuts, (0..len).collect(), "every offset below {len}");
        } else {
            assert_eq!(cuts, (0..BLOCK as usize).collect());
        }
    }

    #[test]
    fn every_mutation_and_every_entry_point_is_used() {
        let cases: Vec<Case> = (0..4096).map(|i| build(5, i)).collect();
        for m in Mutation::ALL {
            assert!(cases.iter().any(|c| c.mutations.contains(&m)), "{m:?}");
        }
        for p in [
            object::ETH_INGRESS,
            object::ETH_EGRESS,
            object::L3_INGRESS,
            object::L3_EGRESS,
        ] {
            assert!(cases.iter().any(|c| c.prog == p), "{p}");
        }
        assert!(cases.iter().any(|c| c.frame.expect.is_some()));
    }
}
