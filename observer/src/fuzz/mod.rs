//! `observer-fuzz` (run by `cargo xtask fuzz`): generated and mutated
//! frames through the kernel classifier with BPF_PROG_TEST_RUN, on the
//! Ethernet and the L3 entry points, checking after every run that the
//! verdict is TC_ACT_UNSPEC, the frame is unchanged, the run did not fail
//! and the frame's packets were accounted exactly once.
//!
//! [`generate`] builds valid frames (from `headers`), [`mutate`] breaks them, [`case`] says
//! which frame number N of a seed is, [`check`] holds the invariants,
//! [`runner`] the loop and [`report`] the output.

pub mod case;
pub mod check;
pub mod generate;
mod headers;
pub mod mutate;
pub mod report;
pub mod rng;
pub mod runner;

use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Result, bail};
use clap::Parser;

#[derive(Parser, Debug)]
#[command(
    name = "observer-fuzz",
    about = "Generated and mutated frames through the kernel classifier"
)]
pub struct FuzzArgs {
    /// Frames to run.
    #[arg(long, default_value_t = 1_000_000)]
    pub frames: u64,
    /// PRNG seed (default: from the clock); every failure report names it.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Number of the first frame: with --seed and --frames 1, runs one
    /// reported frame again.
    #[arg(long, default_value_t = 0)]
    pub start: u64,
    /// Frames between checks of the flow map (which is cleared after each).
    #[arg(long, default_value_t = 4096)]
    pub batch: u64,
    /// Describe every frame and where it was accounted.
    #[arg(long)]
    pub verbose: bool,
}

/// Runs the fuzzer as the command line asks; false when anything was
/// violated.
pub fn run(args: FuzzArgs) -> Result<bool> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("observer-fuzz loads eBPF programs: run it as root");
    }
    if args.batch == 0 {
        bail!("--batch must be at least 1");
    }
    let seed = args.seed.unwrap_or_else(clock_seed);
    println!(
        "observer-fuzz: seed {seed}, frames {}..{}",
        args.start,
        args.start + args.frames
    );
    let summary = runner::run(&runner::Config {
        seed,
        start: args.start,
        frames: args.frames,
        batch: args.batch,
        max_reports: 20,
        verbose: args.verbose,
        progress_every: if args.frames >= 500_000 { 100_000 } else { 0 },
    })?;
    println!("{summary}");
    Ok(summary.violations == 0)
}

fn clock_seed() -> u64 {
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    t ^ u64::from(std::process::id()).rotate_left(32)
}
