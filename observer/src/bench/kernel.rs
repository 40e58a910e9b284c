//! In-kernel cost with BPF_PROG_TEST_RUN: our classifier beside the empty
//! SCHED_CLS program, loaded from the same object and run in the same
//! process, interleaved so that drift (frequency, other load) hits both.

use anyhow::{Context as _, Result, bail, ensure};
use observer_common::{DEFAULT_FLOW_CAPACITY, Stat, StopAfter};
use serde::Serialize;

use super::{
    frames,
    netns::interrupted,
    stats::{Summary, trimmed_mean},
};
use crate::datapath::{Datapath, cpu, object, testrun};

const TC_ACT_UNSPEC: u32 = u32::MAX;

pub struct Params {
    /// Rounds of the empty program, ours, and ours stopping after its
    /// parts, per case; the order rotates every round.
    pub rounds: usize,
    /// TEST_RUN repetitions per call: the kernel returns the mean.
    pub repeat: u32,
    pub distinct_flows: u32,
    /// Fresh flow maps the distinct flows are run into.
    pub distinct_repetitions: u32,
    /// Passes over the distinct flows per map (later passes: every flow is
    /// in the map, and the per-CPU cache misses: the index path).
    pub distinct_passes: u32,
}

#[derive(Serialize)]
pub struct CaseResult {
    pub name: &'static str,
    pub what: &'static str,
    pub program: &'static str,
    pub frame_bytes: usize,
    /// Kernel mean ns per run of one TEST_RUN call, over rounds.
    pub ours_ns: Summary,
    pub empty_ns: Summary,
    /// ours/empty within each round.
    pub ratio: Summary,
    /// Ours made to stop after the parse, then after the packet's sizes
    /// (just before its flow), over the empty program within each round:
    /// where the time goes (the rest is the flow's counters and totals).
    pub parse_only_ratio: Summary,
    pub sizes_only_ratio: Summary,
}

#[derive(Serialize)]
pub struct DistinctResult {
    pub flows: u32,
    pub flow_capacity: u32,
    /// Repetitions, each on a fresh flow map: a pass over the new flows,
    /// then `passes - 1` more passes over the same flows.
    pub repetitions: u32,
    pub passes: u32,
    /// First passes (every flow new): ns of single runs (repeat = 1).
    pub ours_ns: Summary,
    pub empty_ns: Summary,
    /// median(ours) / median(empty) of each repetition's first pass.
    pub ratio: Summary,
    /// mean(ours) / mean(empty) of the first passes: the tail counts here.
    pub mean_ratio: f64,
    /// The same with means of the central 90% of each: single-run times
    /// move in steps of the kernel clock's resolution, which the medians
    /// of short runs (the empty program's) feel.
    pub trimmed_mean_ratio: f64,
    /// First passes: every packet a new flow (a slot never used, an index
    /// entry).
    pub filling_ours_ns: Summary,
    /// Later passes: every packet of a flow in the map, but not the one
    /// before it (the per-CPU cache misses; the index lookup finds it).
    pub known_ours_ns: Summary,
    pub known_ratio: f64,
    /// Known flows again, but only [`RESIDENT_FLOWS`] of them: their index
    /// entries and slots stay in the CPU's caches, so this is what the
    /// code costs, and the known flows' figure less this one what the
    /// memory does.
    pub resident_flows: u32,
    pub resident_known_ns: Summary,
    pub resident_ratio: f64,
    pub flow_inserts: u64,
    pub flow_insert_failures: u64,
    /// Entries in the map after the last repetition.
    pub entries_at_end: u64,
}

#[derive(Serialize)]
pub struct KernelResult {
    pub rounds: usize,
    pub repeat: u32,
    pub pinned_cpu: Option<usize>,
    pub cases: Vec<CaseResult>,
    /// ours/empty over the packet mix: the median of the cases' median
    /// per-round ratios (the headline `kernel_hot_ratio`).
    pub hot_ratio: f64,
    /// The same for the TCP/IPv4 case alone.
    pub tcp4_ratio: f64,
    /// The same for ours stopping after the parse, and after the sizes.
    pub parse_only_ratio: f64,
    pub sizes_only_ratio: f64,
    /// The empty program's ns per run beside the hot flow.
    pub empty_ns: f64,
    pub distinct: DistinctResult,
}

pub fn run(p: &Params) -> Result<KernelResult> {
    // One CPU for all runs: no migration between the calls compared.
    let pin = cpu::allowed()
        .ok()
        .and_then(|c| c.last().copied())
        .and_then(|c| cpu::Pinned::to(c).ok());
    let cases = hot_cases(p)?;
    let hot = cases
        .iter()
        .find(|c| c.name == frames::HOT)
        .expect("the hot case is in the mix");
    let (tcp4_ratio, empty_ns) = (hot.ratio.median, hot.empty_ns.median);
    let over_cases = |f: fn(&CaseResult) -> f64| {
        let per_case: Vec<f64> = cases.iter().map(f).collect();
        Summary::of(&per_case).median
    };
    let hot_ratio = over_cases(|c| c.ratio.median);
    let parse_only_ratio = over_cases(|c| c.parse_only_ratio.median);
    let sizes_only_ratio = over_cases(|c| c.sizes_only_ratio.median);
    let distinct = distinct(p)?;
    Ok(KernelResult {
        rounds: p.rounds,
        repeat: p.repeat,
        pinned_cpu: pin.as_ref().map(|p| p.cpu),
        cases,
        hot_ratio,
        tcp4_ratio,
        parse_only_ratio,
        sizes_only_ratio,
        empty_ns,
        distinct,
    })
}

/// Each case of the mix, `rounds` times: the empty program, ours, and ours
/// stopping after the parse and after the sizes, in rotating order.
fn hot_cases(p: &Params) -> Result<Vec<CaseResult>> {
    let dp = Datapath::load(DEFAULT_FLOW_CAPACITY)?;
    let parse_only = Datapath::load_stopping_after(DEFAULT_FLOW_CAPACITY, StopAfter::Parse)?;
    let sizes_only = Datapath::load_stopping_after(DEFAULT_FLOW_CAPACITY, StopAfter::Sizes)?;
    let mix = frames::mix();
    // Warm up: the flow entries exist before timing (hot flows).
    // Each case's program made to stop after the parse, after the sizes.
    let parts = |prog: &str| -> Result<[&'static str; 2]> {
        let part = |p| object::stopping_after(prog, p).context("no stopping entry point");
        Ok([part(StopAfter::Parse)?, part(StopAfter::Sizes)?])
    };
    for c in &mix {
        let [parse, sizes] = parts(c.prog)?;
        testrun::run(&parse_only.ebpf, parse, &c.frame, None, 1000)?;
        testrun::run(&sizes_only.ebpf, sizes, &c.frame, None, 1000)?;
        let r = testrun::run(&dp.ebpf, c.prog, &c.frame, None, 1000)?;
        ensure!(
            r.return_value == TC_ACT_UNSPEC,
            "{} returned {}",
            c.prog,
            r.return_value
        );
        testrun::run(&dp.ebpf, object::EMPTY, &c.frame, None, 1000)?;
    }
    // Every packet of the mix must be counted as a flow, or we would be
    // timing an error path.
    let st = dp.stats()?;
    let mut flows = 0;
    dp.read_flows(|_, _| flows += 1)?;
    if st[Stat::Unparsed as usize] != 0 || flows != mix.len() {
        bail!(
            "the benchmark's packets are not all parsed as flows ({flows} flows, {} unparsed)",
            st[Stat::Unparsed as usize]
        );
    }
    let mut out = Vec::new();
    for c in &mix {
        let (mut ours, mut empty, mut ratio) = (vec![], vec![], vec![]);
        let (mut parse_ratio, mut sizes_ratio) = (vec![], vec![]);
        // The empty program, ours, ours stopping after the parse, after
        // the sizes.
        let [parse, sizes] = parts(c.prog)?;
        let runs = [
            (&dp, object::EMPTY),
            (&dp, c.prog),
            (&parse_only, parse),
            (&sizes_only, sizes),
        ];
        for round in 0..p.rounds {
            interrupted()?;
            let mut ns = [0.0; 4];
            for k in 0..runs.len() {
                let i = (k + round) % runs.len();
                let (d, prog) = runs[i];
                ns[i] = testrun::run(&d.ebpf, prog, &c.frame, None, p.repeat)?
                    .duration
                    .as_nanos() as f64;
            }
            let [e, o, parse, sizes] = ns;
            let e = e.max(1.0);
            ours.push(o);
            empty.push(e);
            ratio.push(o / e);
            parse_ratio.push(parse / e);
            sizes_ratio.push(sizes / e);
        }
        out.push(CaseResult {
            name: c.name,
            what: c.what,
            program: c.prog,
            frame_bytes: c.frame.len(),
            ours_ns: Summary::of(&ours),
            empty_ns: Summary::of(&empty),
            ratio: Summary::of(&ratio),
            parse_only_ratio: Summary::of(&parse_ratio),
            sizes_only_ratio: Summary::of(&sizes_ratio),
        });
    }
    Ok(out)
}

/// Flows whose index and slots stay in the CPU's caches (the resident
/// run): a known flow's cost without the memory's.
const RESIDENT_FLOWS: u32 = 1_000;
/// Timed passes over the resident flows.
pub const RESIDENT_PASSES: usize = 5;

/// Distinct flows, one TEST_RUN each (repeat = 1), into a flow map of the
/// default capacity: the first pass inserts every flow, later ones find
/// them (through the index: the packet before was another flow's), in a
/// shuffled order. Their slots were handed out in the first pass's order:
/// visited in that order again, they would be read one after the other,
/// which the CPU's prefetcher sees coming and real traffic does not.
fn distinct(p: &Params) -> Result<DistinctResult> {
    let capacity = DEFAULT_FLOW_CAPACITY;
    let frames: Vec<Vec<u8>> = (0..p.distinct_flows).map(frames::distinct_tcp4).collect();
    let (mut ours, mut empty, mut ratios) = (vec![], vec![], vec![]);
    let (mut filling, mut known, mut known_empty) = (vec![], vec![], vec![]);
    let (mut inserts, mut failures, mut entries) = (0, 0, 0u64);
    for _ in 0..p.distinct_repetitions {
        let dp = Datapath::load(capacity)?;
        let (mut o1, mut e1) = (vec![], vec![]);
        for pass in 0..p.distinct_passes {
            interrupted()?;
            let order = frames::visiting_order(frames.len(), pass);
            for (n, &i) in order.iter().enumerate() {
                let (o, e) = ours_and_empty(&dp, &frames[i], n)?;
                if pass == 0 {
                    o1.push(o);
                    e1.push(e);
                    filling.push(o);
                } else {
                    known.push(o);
                    known_empty.push(e);
                }
            }
        }
        ratios.push(Summary::of(&o1).median / Summary::of(&e1).median.max(1.0));
        ours.extend(o1);
        empty.extend(e1);
        let st = dp.stats()?;
        inserts += st[Stat::FlowInserts as usize];
        failures += st[Stat::FlowInsertFailures as usize];
        entries = 0;
        dp.read_flows(|_, _| entries += 1)?;
    }
    let (resident, resident_empty) = resident_known()?;
    let (o, e) = (Summary::of(&ours), Summary::of(&empty));
    let trimmed_mean_ratio = trimmed_mean(&ours, 0.05) / trimmed_mean(&empty, 0.05).max(1.0);
    let known = Summary::of(&known);
    Ok(DistinctResult {
        flows: p.distinct_flows,
        flow_capacity: capacity,
        repetitions: p.distinct_repetitions,
        passes: p.distinct_passes,
        ratio: Summary::of(&ratios),
        mean_ratio: o.mean / e.mean.max(1.0),
        trimmed_mean_ratio,
        known_ratio: known.median / Summary::of(&known_empty).median.max(1.0),
        resident_flows: RESIDENT_FLOWS,
        resident_ratio: resident.median / resident_empty.median.max(1.0),
        resident_known_ns: resident,
        ours_ns: o,
        empty_ns: e,
        filling_ours_ns: Summary::of(&filling),
        known_ours_ns: known,
        flow_inserts: inserts,
        flow_insert_failures: failures,
        entries_at_end: entries,
    })
}

/// One single run of ours and one of the empty program on `frame`, the
/// first of the two alternating with `n`: (ours, empty) ns.
fn ours_and_empty(dp: &Datapath, frame: &[u8], n: usize) -> Result<(f64, f64)> {
    let time = |prog| -> Result<f64> {
        Ok(testrun::run(&dp.ebpf, prog, frame, None, 1)?
            .duration
            .as_nanos() as f64)
    };
    Ok(if n.is_multiple_of(2) {
        let e = time(object::EMPTY)?;
        (time(object::ETH_INGRESS)?, e)
    } else {
        let o = time(object::ETH_INGRESS)?;
        (o, time(object::EMPTY)?)
    })
}

/// [`RESIDENT_FLOWS`] flows entered (untimed), then timed over
/// [`RESIDENT_PASSES`] shuffled passes: (ours, empty) ns per packet.
fn resident_known() -> Result<(Summary, Summary)> {
    let frames: Vec<Vec<u8>> = (0..RESIDENT_FLOWS).map(frames::distinct_tcp4).collect();
    let dp = Datapath::load(DEFAULT_FLOW_CAPACITY)?;
    let (mut ours, mut empty) = (vec![], vec![]);
    for pass in 0..=RESIDENT_PASSES {
        interrupted()?;
        for (n, &i) in frames::visiting_order(frames.len(), pass as u32)
            .iter()
            .enumerate()
        {
            let (o, e) = ours_and_empty(&dp, &frames[i], n)?;
            if pass > 0 {
                ours.push(o);
                empty.push(e);
            }
        }
    }
    Ok((Summary::of(&ours), Summary::of(&empty)))
}
