//! What must hold after every run of the classifier, and after every batch.
//!
//! Every run: the kernel ran the program (only its own refusal of frames too
//! short to test is allowed), the verdict is TC_ACT_UNSPEC, the frame comes
//! out as it went in, no more IP bytes are counted than the frame holds,
//! only the run's own hook moved, and a valid frame lands where it should.
//!
//! Accounting is checked through counter deltas, in two ledgers, so that
//! no check depends on how the flow map is built (LRU or plain hash) or on
//! its filling:
//!
//! - per run: the frame's packets land in exactly one of [`PER_RUN`] (IP
//!   packets in the interface totals, unparsed, non-IP);
//! - per batch: the IP packets of the interface totals are all found in
//!   [`PER_BATCH`] (the flow map, read at the end of the batch).
//!
//! A new counter category is one more line in one of the two lists.

use anyhow::Result;
use observer_common::{Hook, IfaceTotals, Stat};

use super::{case::Case, generate::Class};
use crate::datapath::Datapath;

/// BPF_PROG_TEST_RUN hands the skb to the network namespace's loopback
/// device, whose ifindex is always 1.
pub const LOOPBACK_IFINDEX: u32 = 1;

/// `TC_ACT_UNSPEC` (-1) as the kernel reports the return value.
pub const TC_ACT_UNSPEC: u32 = u32::MAX;

/// The kernel's counters at one moment, summed over CPUs.
#[derive(Clone, Copy, Debug, Default)]
pub struct Counters {
    pub stats: [u64; Stat::COUNT as usize],
    pub iface: IfaceTotals,
    /// Packets in the flow map; read only at batch ends (it costs a map
    /// walk), else carried over.
    pub flow_packets: u64,
}

impl Counters {
    /// Reads the per-CPU counters, after a flush of the CPUs' flow caches
    /// (the interface totals get a cached flow's packets with its counts);
    /// `flow_packets` is carried over.
    pub fn read(dp: &Datapath, flow_packets: u64) -> Result<Self> {
        dp.flush_pending()?;
        Ok(Self {
            stats: dp.stats()?,
            iface: dp.iface_totals(LOOPBACK_IFINDEX)?,
            flow_packets,
        })
    }

    /// Reads everything, the flow map included.
    pub fn read_all(dp: &Datapath) -> Result<Self> {
        Self::read(dp, flow_packets(dp)?)
    }

    fn hook_packets(&self, hook: Hook) -> u64 {
        self.iface.hook[hook as usize].packets
    }
}

/// Every packet in the flow map (skbs and their extra GSO segments).
pub fn flow_packets(dp: &Datapath) -> Result<u64> {
    let mut sum = 0;
    dp.read_flows(|_, v| sum += v.skbs + v.extra_segments)?;
    Ok(sum)
}

/// Reads one counter out of a snapshot.
pub type Count = fn(&Counters) -> u64;

/// A place where a packet can be accounted.
pub struct Category {
    pub name: &'static str,
    pub count: Count,
}

fn ip_packets(c: &Counters) -> u64 {
    c.iface.hook[0].packets + c.iface.hook[1].packets
}

/// Where one run's packets land: each in exactly one.
pub const PER_RUN: &[Category] = &[
    Category {
        name: "ip",
        count: ip_packets,
    },
    Category {
        name: "unparsed",
        count: |c| c.stats[Stat::Unparsed as usize],
    },
    Category {
        name: "non_ip",
        count: |c| c.stats[Stat::NonIp as usize],
    },
];

/// Where the interface totals' IP packets land: each in exactly one.
pub const PER_BATCH: &[Category] = &[Category {
    name: "flow map",
    count: |c| c.flow_packets,
}];

/// Counters that count the same packets twice over and must move together.
const MIRRORS: &[(&str, Count, Count)] = &[(
    "non_ip (stats vs interface totals)",
    |c| c.stats[Stat::NonIp as usize],
    |c| c.iface.non_ip_packets,
)];

/// What one run did, as the kernel reported it.
pub struct Run {
    /// Return value and the frame the program left, or the run's error.
    pub result: Result<(u32, Vec<u8>), String>,
}

/// Where a run's packets went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Landed {
    /// BPF_PROG_TEST_RUN refused the frame before any program ran.
    Refused,
    /// In no category: lost (always a violation).
    Nowhere,
    /// In [`PER_RUN`]`[i]` (the first one, if several moved).
    In(usize),
}

impl Landed {
    pub fn name(self) -> &'static str {
        match self {
            Landed::Refused => "refused by BPF_PROG_TEST_RUN",
            Landed::Nowhere => "nowhere",
            Landed::In(i) => PER_RUN[i].name,
        }
    }
}

/// Checks one run; returns where its packets landed and what was wrong.
pub fn run(case: &Case, run: &Run, before: &Counters, after: &Counters) -> (Landed, Vec<String>) {
    let mut problems = Vec::new();
    let bytes = &case.frame.bytes;
    match &run.result {
        Err(e) if refused_by_kernel(bytes) => {
            // The harness's own floor, before any program runs: nothing may
            // have been counted.
            if deltas(PER_RUN, before, after).iter().any(|&d| d != 0) {
                problems.push(format!("refused run ({e}) moved counters"));
            }
            return (Landed::Refused, problems);
        }
        Err(e) => problems.push(format!("the run failed: {e}")),
        Ok((ret, out)) => {
            if *ret != TC_ACT_UNSPEC {
                problems.push(format!("verdict {} instead of TC_ACT_UNSPEC", *ret as i32));
            }
            if out != bytes {
                problems.push(format!(
                    "the frame changed: {} bytes in, {} out{}",
                    bytes.len(),
                    out.len(),
                    first_difference(bytes, out)
                        .map(|i| format!(", first difference at byte {i}"))
                        .unwrap_or_default()
                ));
            }
        }
    }

    let packets = case.frame.packets();
    let d = deltas(PER_RUN, before, after);
    let total: u64 = d.iter().sum();
    if total != packets {
        problems.push(format!(
            "{packets} packet(s) accounted {total} times: {}",
            describe(PER_RUN, &d)
        ));
    }
    let landed = d
        .iter()
        .position(|&n| n != 0)
        .map_or(Landed::Nowhere, Landed::In);

    // Lengths come from the skb, never from a length field: the IP bytes
    // counted cannot exceed the frame (a GSO segment repeats at most all
    // of the frame's headers).
    let ip_bytes = delta(
        |c| c.iface.hook[0].bytes + c.iface.hook[1].bytes,
        before,
        after,
    );
    if ip_bytes > bytes.len() as u64 * packets {
        problems.push(format!(
            "{ip_bytes} IP bytes counted for a {}-byte frame of {packets} packet(s)",
            bytes.len()
        ));
    }

    for (name, a, b) in MIRRORS {
        let (da, db) = (delta(*a, before, after), delta(*b, before, after));
        if da != db {
            problems.push(format!("{name} moved apart: {da} vs {db}"));
        }
    }
    let other = match case.hook {
        Hook::Ingress => Hook::Egress,
        Hook::Egress => Hook::Ingress,
    };
    if after.hook_packets(other) != before.hook_packets(other) {
        problems.push(format!("{other:?} totals moved on an {:?} run", case.hook));
    }

    if let Some(class) = case.frame.expect {
        let want = match class {
            Class::Flow => "ip",
            Class::NonIp => "non_ip",
        };
        let got = landed.name();
        if got != want {
            problems.push(format!("a valid {class:?} frame was counted as {got}"));
        }
    }
    (landed, problems)
}

/// Checks a batch: the IP packets the interface totals gained are all in
/// [`PER_BATCH`].
pub fn batch(before: &Counters, after: &Counters) -> Option<String> {
    let ip = delta(ip_packets, before, after);
    let d = deltas(PER_BATCH, before, after);
    let found: u64 = d.iter().sum();
    (found != ip).then(|| {
        format!(
            "{ip} IP packets in the interface totals, {found} found: {}",
            describe(PER_BATCH, &d)
        )
    })
}

/// Whether BPF_PROG_TEST_RUN refuses `frame` before any program runs: when
/// it is shorter than an Ethernet header, or when its bytes 12-13 (read as
/// an ethertype whatever the entry point) say IPv4 or IPv6 and what follows
/// is shorter than that IP header. No such frame can be tested; every other
/// refusal is a failure. (Measured on 6.18; `tests/integration/fuzz.rs`
/// checks the rule against the kernel.)
pub fn refused_by_kernel(frame: &[u8]) -> bool {
    const ETH_HLEN: usize = 14;
    if frame.len() < ETH_HLEN {
        return true;
    }
    let ip_header = match [frame[12], frame[13]] {
        [0x08, 0x00] => 20,
        [0x86, 0xdd] => 40,
        _ => 0,
    };
    frame.len() < ETH_HLEN + ip_header
}

fn delta(count: Count, before: &Counters, after: &Counters) -> u64 {
    count(after).wrapping_sub(count(before))
}

fn deltas(cats: &[Category], before: &Counters, after: &Counters) -> Vec<u64> {
    cats.iter().map(|c| delta(c.count, before, after)).collect()
}

fn describe(cats: &[Category], d: &[u64]) -> String {
    cats.iter()
        .zip(d)
        .map(|(c, n)| format!("{} +{}", c.name, *n as i64))
        .collect::<Vec<_>>()
        .join(", ")
}

fn first_difference(a: &[u8], b: &[u8]) -> Option<usize> {
    a.iter()
        .zip(b)
        .position(|(x, y)| x != y)
        .or_else(|| (a.len() != b.len()).then(|| a.len().min(b.len())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fuzz::generate::{Frame, Link};

    fn case(expect: Option<Class>, gso: Option<(u32, u32)>) -> Case {
        Case {
            index: 0,
            frame: Frame {
                bytes: vec![0x45; 40],
                link: Link::L3,
                gso,
                fields: Vec::new(),
                expect,
                shape: String::new(),
            },
            prog: "l3_ingress",
            hook: Hook::Ingress,
            mutations: Vec::new(),
            sweep_cut: None,
        }
    }

    fn ran(c: &Case) -> Run {
        Run {
            result: Ok((TC_ACT_UNSPEC, c.frame.bytes.clone())),
        }
    }

    fn after(f: impl FnOnce(&mut Counters)) -> Counters {
        let mut c = Counters::default();
        f(&mut c);
        c
    }

    #[test]
    fn one_packet_in_one_place_passes() {
        let c = case(Some(Class::Flow), None);
        let a = after(|a| a.iface.hook[0].packets = 1);
        let (landed, problems) = run(&c, &ran(&c), &Counters::default(), &a);
        assert_eq!((landed, problems), (Landed::In(0), Vec::<String>::new()));
        let gso = case(None, Some((3, 100)));
        let a = after(|a| a.iface.hook[0].packets = 3);
        assert!(run(&gso, &ran(&gso), &Counters::default(), &a).1.is_empty());
    }

    #[test]
    fn lost_and_doubly_counted_packets_are_caught() {
        let c = case(None, None);
        let none = Counters::default();
        assert_eq!(run(&c, &ran(&c), &none, &none).1.len(), 1);
        let twice = after(|a| {
            a.iface.hook[0].packets = 1;
            a.stats[Stat::Unparsed as usize] = 1;
        });
        assert_eq!(run(&c, &ran(&c), &none, &twice).1.len(), 1);
    }

    #[test]
    fn verdict_changed_frame_wrong_hook_mirror_and_class_are_caught() {
        let c = case(Some(Class::NonIp), None);
        let mut out = c.frame.bytes.clone();
        out[3] ^= 1;
        let r = Run {
            result: Ok((2, out)),
        };
        let a = after(|a| {
            a.iface.hook[1].packets = 1;
            a.iface.hook[1].bytes = 41;
            a.stats[Stat::NonIp as usize] = 0;
            a.iface.non_ip_packets = 1;
        });
        let (_, problems) = run(&c, &r, &Counters::default(), &a);
        let all = problems.join("\n");
        for want in [
            "verdict 2",
            "byte 3",
            "moved apart",
            "Egress totals",
            "counted as ip",
            "IP bytes",
        ] {
            assert!(all.contains(want), "{want} missing from:\n{all}");
        }
    }

    #[test]
    fn only_the_harness_floor_may_refuse_a_frame() {
        let mut c = case(Some(Class::Flow), None);
        let refused = Run {
            result: Err("EINVAL".into()),
        };
        let none = Counters::default();
        assert!(run(&c, &refused, &none, &none).1.len() > 1);
        c.frame.bytes.truncate(13);
        assert_eq!(
            run(&c, &refused, &none, &none),
            (Landed::Refused, Vec::new())
        );
        assert!(refused_by_kernel(&[0; 13]));
        assert!(!refused_by_kernel(&[0; 14]));
        let mut v4 = vec![0; 33];
        v4[12] = 0x08;
        assert!(refused_by_kernel(&v4));
        v4.push(0);
        assert!(!refused_by_kernel(&v4));
    }

    #[test]
    fn flow_map_must_hold_every_ip_packet() {
        let start = Counters::default();
        let end = after(|a| {
            a.iface.hook[0].packets = 5;
            a.flow_packets = 4;
        });
        assert!(batch(&start, &end).is_some());
        let end = after(|a| {
            a.iface.hook[1].packets = 5;
            a.flow_packets = 5;
        });
        assert!(batch(&start, &end).is_none());
    }
}
