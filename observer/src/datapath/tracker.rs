//! What userspace knows of each slot: the counts it last read, and where
//! the slot is in its life (a flow's, being given back, free). A poll walks
//! the slots handed out so far and reports only what changed: a flow that
//! did not grow costs a generation load and a compare, no syscall, no hash.

use observer_common::{FlowKey, FlowStats, SLOT_IN_RING};
use serde::{Deserialize, Serialize};

use super::slots::Slots;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
enum Phase {
    /// Not a flow's as far as we know (free, or never seen).
    #[default]
    Empty,
    /// A flow owns it (generation odd).
    Live,
    /// Step one done at this poll: final counts read at a later poll.
    Retiring(u32),
    /// Even generation, no free marker, not ours to retire: a claim in
    /// progress, or a slot a crashed daemon was giving back. Retired if it
    /// is still so a poll later.
    Suspect(u32),
}

#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
struct Memo {
    phase: Phase,
    generation: u64,
    /// The last poll the slot's counts grew in.
    grew: u32,
    /// The counts as last read.
    stats: FlowStats,
}

/// One change a poll found.
#[derive(Clone, Copy, Debug)]
pub struct SlotChange {
    pub slot: u32,
    pub key: FlowKey,
    /// The slot's counts now (first and last seen, flags).
    pub stats: FlowStats,
    /// What the counts grew by since the last read.
    pub grown: FlowStats,
    /// The flow got this slot since the last poll.
    pub opened: bool,
    /// The slot's final counts: it is free now.
    pub closed: bool,
}

/// Per-slot memory of the poll, saved across restarts with the flow table.
#[derive(Default, Serialize, Deserialize)]
pub struct Tracker {
    memo: Vec<Memo>,
    poll: u32,
    live: usize,
}

/// What a slot's counts grew by (saturating: counters never go back).
fn growth(now: &FlowStats, before: &FlowStats) -> FlowStats {
    FlowStats {
        skbs: now.skbs.saturating_sub(before.skbs),
        extra_segments: now.extra_segments.saturating_sub(before.extra_segments),
        bytes: now.bytes.saturating_sub(before.bytes),
        overhead_bytes: now.overhead_bytes.saturating_sub(before.overhead_bytes),
        // The kernel's 32-bit count may wrap: what it added is the difference.
        oversize_packets: now.oversize_packets.wrapping_sub(before.oversize_packets),
        ..*now
    }
}

impl Tracker {
    pub fn new() -> Self {
        Self::default()
    }

    /// Slots a flow owns, as of the last poll.
    pub fn live(&self) -> usize {
        self.live
    }

    /// Reads every slot handed out so far; calls `each` for every slot that
    /// changed, and gives back the slots whose step one is a poll old.
    pub fn poll(&mut self, slots: &Slots, mut each: impl FnMut(SlotChange)) {
        self.poll += 1;
        let poll = self.poll;
        // Only as many as the kernel handed out so far.
        let bound = slots.in_use_bound();
        if self.memo.len() < bound as usize {
            self.memo.resize(bound as usize, Memo::default());
        }
        let mut live = 0;
        for i in 0..bound {
            let m = &mut self.memo[i as usize];
            let generation = slots.generation(i);
            if generation & 1 == 1 {
                live += 1;
                if m.phase == Phase::Live && m.generation == generation {
                    let s = slots.stats(i);
                    if s != m.stats {
                        let grown = growth(&s, &m.stats);
                        m.stats = s;
                        m.grew = poll;
                        each(SlotChange {
                            slot: i,
                            key: slots.key(i),
                            stats: s,
                            grown,
                            opened: false,
                            closed: false,
                        });
                    }
                    continue;
                }
                // A flow new to us (the key is complete: the kernel made
                // the generation odd after writing it).
                let key = slots.key(i);
                let s = slots.stats(i);
                *m = Memo {
                    phase: Phase::Live,
                    generation,
                    grew: poll,
                    stats: s,
                };
                each(SlotChange {
                    slot: i,
                    key,
                    stats: s,
                    grown: s,
                    opened: true,
                    closed: false,
                });
                continue;
            }
            match m.phase {
                Phase::Retiring(at) | Phase::Suspect(at) if at < poll => {
                    let before = m.stats;
                    *m = Memo::default();
                    if slots.marker(i) == SLOT_IN_RING {
                        continue;
                    }
                    let s = slots.stats(i);
                    each(SlotChange {
                        slot: i,
                        key: slots.key(i),
                        stats: s,
                        grown: growth(&s, &before),
                        opened: false,
                        closed: true,
                    });
                    slots.give_back(i);
                }
                Phase::Retiring(_) | Phase::Suspect(_) => live += 1,
                // Ended by another daemon (one that crashed after it saved
                // our memo): give it back a poll from now.
                Phase::Live if slots.marker(i) == SLOT_IN_RING => *m = Memo::default(),
                Phase::Live => m.phase = Phase::Retiring(poll),
                Phase::Empty => {
                    if slots.returned(i) {
                        slots.give_back(i);
                    } else if slots.marker(i) != SLOT_IN_RING {
                        m.phase = Phase::Suspect(poll);
                    }
                }
            }
        }
        self.live = live;
    }

    /// Live slots to give back: those idle since `idle_before` (jiffies),
    /// and, when more than `keep` would stay, the least recently seen of
    /// those that did not grow in the last poll (active flows stay).
    pub fn choose(&self, idle_before: u64, keep: usize) -> Vec<u32> {
        let mut out = Vec::new();
        let mut quiet = Vec::new();
        let mut staying = 0usize;
        for (i, m) in self.memo.iter().enumerate() {
            if m.phase != Phase::Live {
                continue;
            }
            if m.stats.last_seen_jiffies < idle_before {
                out.push(i as u32);
            } else {
                staying += 1;
                if m.grew != self.poll {
                    quiet.push((m.stats.last_seen_jiffies, i as u32));
                }
            }
        }
        let extra = staying.saturating_sub(keep).min(quiet.len());
        if extra > 0 {
            quiet.select_nth_unstable_by_key(extra - 1, |(seen, _)| *seen);
            out.extend(quiet[..extra].iter().map(|(_, i)| *i));
        }
        out
    }

    /// Step one for `slots` (the caller deletes their hash entries): their
    /// final counts are read at the next poll.
    pub fn retire(&mut self, slots: &Slots, which: &[u32]) {
        for &i in which {
            let m = &mut self.memo[i as usize];
            if m.phase == Phase::Live {
                slots.end_generation(i);
                m.phase = Phase::Retiring(self.poll);
            }
        }
    }
}
