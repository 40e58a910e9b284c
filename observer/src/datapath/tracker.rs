//! What userspace knows of each slot: the counts it last read, and where
//! the slot is in its life (a flow's, being given back, free). A poll walks
//! the slots handed out so far and reports only what changed: a flow that
//! did not grow costs a generation load and a compare, no syscall, no hash.

use std::io;

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
    /// Slots given back or reused by a daemon that stopped before saving
    /// what it read of them (a crash): their counts since the last save
    /// were lost with it. Taken by [`Tracker::take_vanished`].
    vanished: u64,
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

    /// A memory of the slots as they are now, for maps whose counts so far
    /// are in the flow table already but whose memory was lost: every count
    /// in the slots is taken as read. Nothing is counted twice; what came
    /// after the table was saved is not counted.
    pub fn adopt(slots: &Slots) -> io::Result<Self> {
        let bound = slots.in_use_bound()?;
        let mut live = 0;
        let memo = (0..bound)
            .map(|i| {
                let generation = slots.generation(i);
                let phase = if generation & 1 == 1 {
                    live += 1;
                    Phase::Live
                } else if slots.marker(i) == SLOT_IN_RING {
                    Phase::Empty
                } else {
                    // Being given back: its final counts at the next poll.
                    Phase::Retiring(0)
                };
                Memo {
                    phase,
                    generation,
                    grew: 0,
                    stats: slots.stats(i),
                }
            })
            .collect();
        Ok(Self {
            memo,
            poll: 0,
            live,
            vanished: 0,
        })
    }

    /// Slots a flow owns, as of the last poll.
    pub fn live(&self) -> usize {
        self.live
    }

    /// Reads every slot handed out so far; calls `each` for every slot that
    /// changed, and gives back the slots whose step one is a poll old if
    /// `flushed`: the CPUs' pending counts were all flushed into the slots
    /// just before (else they wait for a poll that was).
    pub fn poll(
        &mut self,
        slots: &Slots,
        flushed: bool,
        mut each: impl FnMut(SlotChange),
    ) -> io::Result<()> {
        self.poll += 1;
        let poll = self.poll;
        // Only as many as the kernel handed out so far.
        let bound = slots.in_use_bound()?;
        if self.memo.len() < bound as usize {
            self.memo.resize(bound as usize, Memo::default());
        }
        let (mut live, mut vanished) = (0, 0);
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
                // the generation odd after writing it). If we knew the slot
                // as another flow's, a crashed daemon gave it back since.
                if matches!(m.phase, Phase::Live | Phase::Retiring(_)) {
                    vanished += 1;
                }
                let key = slots.key(i);
                let s = slots.stats(i);
                *m = Memo {
                    phase: Phase::Live,
                    generation,
                    grew: poll,
                    stats: s,
                };
                each(SlotChange {
                    key,
                    stats: s,
                    grown: s,
                    opened: true,
                    closed: false,
                });
                continue;
            }
            match m.phase {
                Phase::Retiring(at) | Phase::Suspect(at) if at < poll && flushed => {
                    let suspect = matches!(m.phase, Phase::Suspect(_));
                    let before = m.stats;
                    *m = Memo::default();
                    if slots.marker(i) == SLOT_IN_RING {
                        continue;
                    }
                    let s = slots.stats(i);
                    each(SlotChange {
                        key: slots.key(i),
                        stats: s,
                        grown: growth(&s, &before),
                        // A suspect slot was never reported open.
                        opened: suspect,
                        closed: true,
                    });
                    slots.give_back(i);
                }
                Phase::Retiring(_) | Phase::Suspect(_) => live += 1,
                // Ended by another daemon (one that crashed after it saved
                // our memo): give it back a poll from now.
                Phase::Live if slots.marker(i) == SLOT_IN_RING => {
                    *m = Memo::default();
                    vanished += 1;
                }
                Phase::Live => m.phase = Phase::Retiring(poll),
                Phase::Empty => {
                    if slots.marker(i) != SLOT_IN_RING {
                        m.phase = Phase::Suspect(poll);
                    }
                }
            }
        }
        self.live = live;
        self.vanished += vanished;
        Ok(())
    }

    /// Slots that vanished since the last call (see `vanished`).
    pub fn take_vanished(&mut self) -> u64 {
        std::mem::take(&mut self.vanished)
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

    /// Step one for `slots`: their index entries removed and generations
    /// ended; their final counts are read at the next poll.
    pub fn retire(&mut self, slots: &Slots, which: &[u32]) {
        for &i in which {
            let m = &mut self.memo[i as usize];
            if m.phase == Phase::Live {
                slots.unindex(i);
                slots.end_generation(i);
                m.phase = Phase::Retiring(self.poll);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::{AsFd as _, OwnedFd};

    use observer_common::{FlowSlot, RingHead, index::index_entries};

    use super::*;
    use crate::datapath::slots::{Mmap, SlotFds, memfd};

    const CAPACITY: u32 = 8;

    /// Memory standing in for the kernel's four arrays, and the kernel's
    /// side of the protocol (see `flow.rs` in observer-ebpf), done by hand
    /// (flows are not entered in the index: none is looked up).
    struct Kernel {
        fds: [OwnedFd; 4],
        slots: Mmap<FlowSlot>,
        ring: Mmap<u64>,
        head: Mmap<RingHead>,
    }

    impl Kernel {
        fn new() -> Self {
            let n = CAPACITY as usize;
            let index = index_entries(CAPACITY) as usize * size_of::<u64>();
            let fds = [
                memfd(n * size_of::<FlowSlot>()),
                memfd(4096),
                memfd(4096),
                memfd(index.next_multiple_of(4096)),
            ];
            Self {
                slots: Mmap::new(fds[0].as_fd(), 0, n).unwrap(),
                ring: Mmap::new(fds[1].as_fd(), 0, n).unwrap(),
                head: Mmap::new(fds[2].as_fd(), 0, 1).unwrap(),
                fds,
            }
        }

        /// Userspace's view of the same memory.
        fn user(&self) -> Slots {
            let fds = SlotFds {
                slots: self.fds[0].as_fd(),
                ring: self.fds[1].as_fd(),
                head: self.fds[2].as_fd(),
                index: self.fds[3].as_fd(),
            };
            Slots::map(fds, CAPACITY).unwrap()
        }

        /// A slot from the ring, else one never handed out.
        fn take_slot(&self) -> u32 {
            // SAFETY: test memory, one thread.
            unsafe {
                let h = self.head.at(0);
                if (*h).cons < (*h).prod {
                    let i = *self.ring.at(((*h).cons % (*h).capacity) as usize);
                    (*h).cons += 1;
                    return i as u32;
                }
                assert!((*h).fresh < (*h).capacity, "no slot is free");
                (*h).fresh += 1;
                ((*h).fresh - 1) as u32
            }
        }

        /// A new flow with `skbs` packets of 100 bytes at jiffy `t`.
        fn open(&self, port: u16, skbs: u64, t: u64) -> u32 {
            let i = self.take_slot();
            // SAFETY: test memory, one thread.
            unsafe {
                let s = self.slots.at(i as usize);
                (*s).key = key(port);
                (*s).stats = FlowStats {
                    skbs,
                    bytes: 100 * skbs,
                    first_seen_jiffies: t,
                    last_seen_jiffies: t,
                    ..Default::default()
                };
                (*s).generation |= 1;
            }
            i
        }

        fn add(&self, i: u32, skbs: u64, t: u64) {
            // SAFETY: test memory, one thread.
            unsafe {
                let s = &mut (*self.slots.at(i as usize)).stats;
                s.skbs += skbs;
                s.bytes += 100 * skbs;
                s.last_seen_jiffies = t;
            }
        }
    }

    fn key(port: u16) -> FlowKey {
        FlowKey {
            src_port: port,
            ..Default::default()
        }
    }

    /// (port, skbs grown, opened, closed) of each change of one poll.
    fn poll(t: &mut Tracker, s: &Slots) -> Vec<(u16, u64, bool, bool)> {
        poll_flushed(t, s, true)
    }

    /// The same, after a flush of the CPUs' pending counts that left some
    /// (`flushed` false) or none.
    fn poll_flushed(t: &mut Tracker, s: &Slots, flushed: bool) -> Vec<(u16, u64, bool, bool)> {
        let mut out = Vec::new();
        t.poll(s, flushed, |c| {
            out.push((c.key.src_port, c.grown.skbs, c.opened, c.closed))
        })
        .unwrap();
        out
    }

    #[test]
    fn a_poll_reports_new_and_grown_slots_only() {
        let k = Kernel::new();
        let s = k.user();
        let mut t = Tracker::new();
        assert_eq!(poll(&mut t, &s), []);
        let a = k.open(1, 3, 10);
        assert_eq!(poll(&mut t, &s), [(1, 3, true, false)]);
        k.add(a, 2, 11);
        k.open(2, 1, 11);
        assert_eq!(
            poll(&mut t, &s),
            [(1, 2, false, false), (2, 1, true, false)]
        );
        assert_eq!(poll(&mut t, &s), []);
        assert_eq!(t.live(), 2);
    }

    #[test]
    fn a_retired_slot_counts_to_its_last_packet_and_goes_back_a_poll_later() {
        let k = Kernel::new();
        let s = k.user();
        let mut t = Tracker::new();
        let a = k.open(1, 3, 10);
        k.open(2, 1, 50);
        poll(&mut t, &s);
        assert_eq!(s.free(), CAPACITY as u64 - 2);
        // Idle since before 20: only the first.
        assert_eq!(t.choose(20, 100), [a]);
        t.retire(&s, &[a]);
        assert_eq!(s.generation(a) & 1, 0);
        // A CPU that found the slot before it was retired adds after.
        k.add(a, 4, 30);
        assert_eq!(poll(&mut t, &s), [(1, 4, false, true)]);
        assert_eq!(s.free(), CAPACITY as u64 - 1);
        // Reused by a new flow: a new generation, counted from its start.
        let mut reused = None;
        for port in 3..=9 {
            let i = k.open(port, 1, 60);
            if i == a {
                reused = Some(port);
            }
        }
        let port = reused.expect("the given-back slot was handed out again");
        assert_eq!(s.generation(a), 3);
        let changes = poll(&mut t, &s);
        assert!(changes.contains(&(port, 1, true, false)), "{changes:?}");
        assert_eq!(changes.len(), 7);
    }

    #[test]
    fn a_retired_slot_waits_for_a_poll_after_a_clean_flush() {
        let k = Kernel::new();
        let s = k.user();
        let mut t = Tracker::new();
        let a = k.open(1, 3, 10);
        poll(&mut t, &s);
        t.retire(&s, &[a]);
        // A CPU's pending counts for the slot were not flushed: the slot
        // stays, and what is in it is not final yet.
        k.add(a, 1, 11);
        assert_eq!(poll_flushed(&mut t, &s, false), []);
        assert_eq!(s.free(), CAPACITY as u64 - 1);
        assert_eq!(t.live(), 1);
        // Flushed at the next poll: its counts in, and the slot back.
        k.add(a, 2, 12);
        assert_eq!(poll(&mut t, &s), [(1, 3, false, true)]);
        assert_eq!(s.free(), CAPACITY as u64);
        assert_eq!(t.live(), 0);
    }

    #[test]
    fn a_slot_seen_mid_claim_counts_once_published() {
        let k = Kernel::new();
        let s = k.user();
        let mut t = Tracker::new();
        // Taken and its key written; the generation not odd yet.
        let i = k.take_slot();
        // SAFETY: test memory, one thread.
        unsafe { (*k.slots.at(i as usize)).key = key(1) };
        assert_eq!(poll(&mut t, &s), []);
        // SAFETY: as above.
        unsafe {
            (*k.slots.at(i as usize)).stats = FlowStats {
                skbs: 2,
                bytes: 200,
                ..Default::default()
            };
            (*k.slots.at(i as usize)).generation |= 1;
        }
        assert_eq!(poll(&mut t, &s), [(1, 2, true, false)]);
        assert_eq!(t.live(), 1);
    }

    #[test]
    fn slots_a_crashed_daemon_gave_back_after_its_save_are_counted_as_vanished() {
        let k = Kernel::new();
        let s = k.user();
        let mut t = Tracker::new();
        let a = k.open(1, 3, 10);
        let b = k.open(2, 3, 10);
        poll(&mut t, &s);
        let saved = postcard::to_stdvec(&t).unwrap();
        // After the save, the daemon read and gave back both, then the
        // kernel handed b's out again, and the daemon crashed.
        poll(&mut t, &s);
        t.retire(&s, &[a, b]);
        poll(&mut t, &s);
        assert_eq!(s.free(), CAPACITY as u64);
        let mut reused = None;
        while reused.is_none() {
            let i = k.open(3, 1, 20);
            reused = (i == b).then_some(i);
        }
        let mut t2: Tracker = postcard::from_bytes(&saved).unwrap();
        let changes = poll(&mut t2, &s);
        assert!(changes.contains(&(3, 1, true, false)), "{changes:?}");
        assert_eq!(t2.take_vanished(), 2);
        assert_eq!(t2.take_vanished(), 0);
    }

    #[test]
    fn an_adopted_memory_counts_nothing_twice() {
        let k = Kernel::new();
        let s = k.user();
        let a = k.open(1, 3, 10);
        let b = k.open(2, 5, 10);
        // b was being given back by the daemon whose memory was lost.
        s.in_use_bound().unwrap();
        s.end_generation(b);
        let mut t = Tracker::adopt(&s).unwrap();
        k.add(a, 2, 11);
        k.add(b, 1, 11);
        // Only what came after: a grew by 2; b's last packet, and b freed.
        assert_eq!(
            poll(&mut t, &s),
            [(1, 2, false, false), (2, 1, false, true)]
        );
        assert_eq!(s.free(), CAPACITY as u64 - 1);
    }

    #[test]
    fn past_the_room_to_keep_the_least_recently_seen_quiet_ones_go() {
        let k = Kernel::new();
        let s = k.user();
        let mut t = Tracker::new();
        let slots: Vec<u32> = (1..=5).map(|p| k.open(p, 1, 100 + p as u64)).collect();
        poll(&mut t, &s);
        // All grew in the last poll: none is taken for room.
        assert_eq!(t.choose(0, 2), Vec::<u32>::new());
        k.add(slots[4], 1, 200);
        poll(&mut t, &s);
        // Keep two: three go, the least recently seen of the quiet four.
        let mut out = t.choose(0, 2);
        out.sort();
        assert_eq!(out, [slots[0], slots[1], slots[2]]);
    }

    #[test]
    fn a_saved_tracker_goes_on_from_its_last_read() {
        let k = Kernel::new();
        let s = k.user();
        let mut t = Tracker::new();
        let a = k.open(1, 3, 10);
        poll(&mut t, &s);
        let saved = postcard::to_stdvec(&t).unwrap();
        k.add(a, 2, 11);
        // The next daemon maps the same memory, which is filled already.
        let s2 = k.user();
        assert_eq!(s2.free(), CAPACITY as u64 - 1);
        let mut t2: Tracker = postcard::from_bytes(&saved).unwrap();
        assert_eq!(poll(&mut t2, &s2), [(1, 2, false, false)]);
    }
}
