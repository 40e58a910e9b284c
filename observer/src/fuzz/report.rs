//! What a fuzzing run prints: a frame in enough detail to rebuild and
//! paste into a test, and the totals at the end.

use std::{collections::BTreeMap, fmt, time::Duration};

use super::{
    case::Case,
    check::{Landed, PER_RUN},
    mutate::Mutation,
};

/// The frame as one hex string (paste-able into a test).
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A frame, where it went, what was wrong with it, and how to run it alone.
pub fn describe(seed: u64, case: &Case, landed: Landed, problems: &[String]) -> String {
    let f = &case.frame;
    let mut s = format!(
        "frame {} (seed {seed}): {} -> {}\n",
        case.index,
        case.prog,
        landed.name()
    );
    for p in problems {
        s += &format!("  - {p}\n");
    }
    let mutations: Vec<&str> = case.mutations.iter().map(|m| m.name()).collect();
    s += &format!(
        "  shape {}; mutations: {}{}; GSO {}\n",
        f.shape,
        if mutations.is_empty() {
            "none (valid)".to_owned()
        } else {
            mutations.join(", ")
        },
        case.sweep_cut
            .map(|c| format!(" (sweep cut at {c})"))
            .unwrap_or_default(),
        f.gso
            .map_or("no".to_owned(), |(n, size)| format!("{n} x {size}")),
    );
    s += &format!("  {} bytes: {}\n", f.bytes.len(), hex(&f.bytes));
    s += &format!(
        "  again: cargo xtask fuzz --seed {seed} --start {} --frames 1",
        case.index
    );
    s
}

/// Totals of a run.
pub struct Summary {
    pub seed: u64,
    pub start: u64,
    pub frames: u64,
    pub runs: BTreeMap<&'static str, u64>,
    pub refused: u64,
    /// Runs whose packets were counted nowhere.
    pub lost: u64,
    /// Runs per [`PER_RUN`] category.
    pub landed: Vec<u64>,
    pub packets: u64,
    pub valid: u64,
    pub mutations: BTreeMap<Mutation, u64>,
    pub swept: u64,
    pub batches: u64,
    pub flows_cleared: u64,
    pub violations: u64,
    /// Of which found by the flow-map check at the end of a batch.
    pub batch_violations: u64,
    /// Violations described in full, at most the configured number of
    /// each kind (per run, per batch).
    pub reports: Vec<String>,
    batch_reports: usize,
    pub elapsed: Duration,
}

impl Summary {
    pub fn new(seed: u64, start: u64) -> Self {
        Self {
            seed,
            start,
            frames: 0,
            runs: BTreeMap::new(),
            refused: 0,
            lost: 0,
            landed: vec![0; PER_RUN.len()],
            packets: 0,
            valid: 0,
            mutations: BTreeMap::new(),
            swept: 0,
            batches: 0,
            flows_cleared: 0,
            violations: 0,
            batch_violations: 0,
            reports: Vec::new(),
            batch_reports: 0,
            elapsed: Duration::ZERO,
        }
    }

    pub fn count(&mut self, case: &Case, landed: Landed) {
        self.frames += 1;
        *self.runs.entry(case.prog).or_default() += 1;
        match landed {
            Landed::In(i) => {
                self.landed[i] += 1;
                self.packets += case.frame.packets();
            }
            Landed::Refused => self.refused += 1,
            Landed::Nowhere => self.lost += 1,
        }
        if case.mutations.is_empty() {
            self.valid += 1;
        }
        for m in &case.mutations {
            *self.mutations.entry(*m).or_default() += 1;
        }
        self.swept += u64::from(case.sweep_cut.is_some());
    }

    /// Counts a violation found in a run; describes it (printing it at
    /// once) while under `max` such reports.
    pub fn violation(&mut self, max: usize, describe: impl FnOnce() -> String) {
        self.violations += 1;
        if self.reports.len() - self.batch_reports < max {
            self.report(describe());
        }
    }

    /// The same for a violation found by a batch's flow-map check, so that
    /// a flood of per-run reports does not hide it.
    pub fn batch_violation(&mut self, max: usize, describe: impl FnOnce() -> String) {
        self.violations += 1;
        self.batch_violations += 1;
        if self.batch_reports < max {
            self.batch_reports += 1;
            self.report(describe());
        }
    }

    fn report(&mut self, text: String) {
        eprintln!("VIOLATION {text}");
        self.reports.push(text);
    }

    pub fn frames_per_sec(&self) -> f64 {
        self.frames as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    pub fn progress(&self, elapsed: Duration) -> String {
        format!(
            "fuzz: {} frames, {:.0} frames/s, {} violations",
            self.frames,
            self.frames as f64 / elapsed.as_secs_f64().max(1e-9),
            self.violations
        )
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "fuzz: {} frames (seed {}, from frame {}) in {:.2} s: {:.0} frames/s",
            self.frames,
            self.seed,
            self.start,
            self.elapsed.as_secs_f64(),
            self.frames_per_sec()
        )?;
        let runs: Vec<String> = self.runs.iter().map(|(p, n)| format!("{p} {n}")).collect();
        writeln!(f, "  runs: {}", runs.join(", "))?;
        let landed: Vec<String> = PER_RUN
            .iter()
            .zip(&self.landed)
            .map(|(c, n)| format!("{} {n}", c.name))
            .collect();
        writeln!(
            f,
            "  accounted: {} ({} packets); nowhere: {}; refused by BPF_PROG_TEST_RUN \
             before any program ran (shorter than Ethernet + the IP header bytes 12-13 \
             name): {}",
            landed.join(", "),
            self.packets,
            self.lost,
            self.refused
        )?;
        let muts: Vec<String> = self
            .mutations
            .iter()
            .map(|(m, n)| format!("{} {n}", m.name()))
            .collect();
        writeln!(
            f,
            "  frames: {} valid, {} mutated ({}); {} in truncation sweeps",
            self.valid,
            self.frames - self.valid,
            muts.join(", "),
            self.swept
        )?;
        writeln!(
            f,
            "  flow map: {} batches checked against the interface totals, {} flows cleared",
            self.batches, self.flows_cleared
        )?;
        write!(
            f,
            "  violations: {} ({} found by the flow-map check)",
            self.violations, self.batch_violations
        )
    }
}
