//! The fuzzing loop: build each frame, run it through the kernel classifier
//! with BPF_PROG_TEST_RUN, check the run against the counters; every batch,
//! check the flow map against the interface totals and clear it, so that
//! the map never fills (whatever its kind) and every batch starts alike.

use std::time::Instant;

use anyhow::{Context as _, Result};

use super::{
    case::{self, Case},
    check::{self, Counters, Run},
    generate::MAX_FRAME,
    report::{self, Summary},
};
use crate::datapath::{Datapath, testrun};

pub struct Config {
    pub seed: u64,
    /// Index of the first frame.
    pub start: u64,
    pub frames: u64,
    /// Frames between flow-map checks.
    pub batch: u64,
    /// Violations described in full; the rest are counted.
    pub max_reports: usize,
    /// Describe every frame and where it landed.
    pub verbose: bool,
    /// A progress line every this many frames (0: none).
    pub progress_every: u64,
}

/// Room for a program that would grow the frame, so that the kernel hands
/// back what it did rather than refusing the copy.
const OUT_SLACK: usize = 256;

pub fn run(cfg: &Config) -> Result<Summary> {
    let dp = Datapath::load(capacity(cfg.batch)?)?;
    let mut sum = Summary::new(cfg.seed, cfg.start);
    let started = Instant::now();
    let mut out = vec![0u8; MAX_FRAME + OUT_SLACK];
    let mut batch_start = Counters::read_all(&dp)?;
    let mut batch_first = cfg.start;
    let mut before = batch_start;
    let end = cfg.start + cfg.frames;
    for index in cfg.start..end {
        let case = case::build(cfg.seed, index);
        let run = execute(&dp, &case, &mut out);
        let after = Counters::read(&dp, before.flow_packets)?;
        let (landed, problems) = check::run(&case, &run, &before, &after);
        sum.count(&case, landed);
        if cfg.verbose {
            println!("{}", report::describe(cfg.seed, &case, landed, &problems));
        }
        if !problems.is_empty() {
            sum.violation(cfg.max_reports, || {
                report::describe(cfg.seed, &case, landed, &problems)
            });
        }
        before = after;

        if index + 1 == end || (index + 1 - cfg.start).is_multiple_of(cfg.batch) {
            let now = Counters::read_all(&dp)?;
            if let Some(problem) = check::batch(&batch_start, &now) {
                let culprit = locate(cfg.seed, batch_first, index + 1)?;
                sum.batch_violation(cfg.max_reports, || {
                    format!(
                        "flow map after frames {batch_first}..={index} (seed {}): {problem}\n{}",
                        cfg.seed,
                        culprit.unwrap_or_else(|| "  not reproduced frame by frame".into())
                    )
                });
            }
            sum.flows_cleared += clear(&dp)?;
            sum.batches += 1;
            batch_start = Counters::read_all(&dp)?;
            before = batch_start;
            batch_first = index + 1;
        }
        if cfg.progress_every != 0 && (index + 1 - cfg.start).is_multiple_of(cfg.progress_every) {
            eprintln!("{}", sum.progress(started.elapsed()));
        }
    }
    sum.elapsed = started.elapsed();
    Ok(sum)
}

/// Flow slots: a batch adds at most one flow per frame; an LRU map also
/// keeps free slots on per-CPU lists and evicts once its shared list runs
/// short, so leave room for those.
fn capacity(batch: u64) -> Result<u32> {
    let cpus = aya::util::nr_cpus().map_err(|(what, e)| anyhow::anyhow!("{what}: {e}"))?;
    let slots = 2 * batch + 512 * cpus as u64;
    u32::try_from(slots.next_power_of_two()).context("--batch is too large")
}

fn execute(dp: &Datapath, case: &Case, out: &mut [u8]) -> Run {
    let f = &case.frame;
    let result = testrun::run_with_output(&dp.ebpf, case.prog, &f.bytes, f.gso, out)
        .map(|(r, len)| (r.return_value, out[..len.min(out.len())].to_vec()))
        .map_err(|e| format!("{e:#}"));
    Run { result }
}

/// Removes every flow; returns how many there were.
fn clear(dp: &Datapath) -> Result<u64> {
    let mut keys = Vec::new();
    dp.read_flows(|k, _| keys.push(*k))?;
    for k in &keys {
        dp.evict(k)?;
    }
    Ok(keys.len() as u64)
}

/// Replays frames `first..end` on a fresh datapath, reading the flow map
/// after each, and describes the first whose IP packets did not all reach
/// it.
fn locate(seed: u64, first: u64, end: u64) -> Result<Option<String>> {
    let dp = Datapath::load(capacity(end - first)?)?;
    let mut out = vec![0u8; MAX_FRAME + OUT_SLACK];
    let mut before = Counters::read_all(&dp)?;
    for index in first..end {
        let case = case::build(seed, index);
        let run = execute(&dp, &case, &mut out);
        let after = Counters::read_all(&dp)?;
        if let Some(problem) = check::batch(&before, &after) {
            let (landed, _) = check::run(&case, &run, &before, &after);
            return Ok(Some(report::describe(seed, &case, landed, &[problem])));
        }
        before = after;
    }
    Ok(None)
}
