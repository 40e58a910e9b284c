//! `observer-bench` (run by `cargo xtask bench`): the numbers behind the
//! observer's cost. In-kernel cost with BPF_PROG_TEST_RUN ([`kernel`]),
//! throughput on real veths ([`throughput`]), kernel map memory
//! ([`memory`]), userspace scale ([`scale`]) and `/metrics` encoding
//! ([`render`]); the measuring parts run in several full passes, and every
//! headline is the median of the passes with their spread, beside the
//! machine's load ([`machine`]); written as `report.json` and `report.md`
//! ([`report`]).

pub mod churn;
pub mod daemon;
pub mod frames;
pub mod kernel;
pub mod machine;
pub mod memory;
pub mod netns;
pub mod procfs;
pub mod render;
pub mod report;
pub mod scale;
pub mod stats;
pub mod throughput;

use std::{
    path::PathBuf,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Result, bail};
use clap::{Parser, ValueEnum};

use report::Report;

#[derive(Parser, Debug)]
#[command(
    name = "observer-bench",
    about = "Benchmarks of the observer; writes report.md and report.json"
)]
pub struct BenchArgs {
    /// Small counts (CI smoke): well under a minute, rough numbers.
    #[arg(long)]
    pub quick: bool,
    /// Where the reports go.
    #[arg(long, default_value = "target/bench")]
    pub out: PathBuf,
    /// Run only these parts (comma-separated); all by default.
    #[arg(long, value_enum, value_delimiter = ',')]
    pub only: Vec<Part>,
    /// Full passes of the measuring parts (default: 3, quick: 1).
    #[arg(long)]
    pub passes: Option<usize>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Part {
    Kernel,
    Memory,
    Scale,
    Throughput,
    Metrics,
}

pub fn run(args: BenchArgs) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("observer-bench loads eBPF programs and creates network namespaces: run it as root");
    }
    netns::catch_signals();
    netns::Netns::remove_stale();
    let exe = daemon::observer_exe()?;
    let started = Instant::now();
    let q = args.quick;
    let mut r = Report {
        mode: if q { "quick" } else { "full" },
        kernel: procfs::kernel_release(),
        cpu: procfs::cpu_model(),
        cpus_online: std::thread::available_parallelism().map_or(1, |n| n.get()),
        cpus_possible: procfs::possible_cpus(),
        started: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
        ..Default::default()
    };
    let machine = machine::Sampler::start();
    let passes = args.passes.unwrap_or(if q { 1 } else { 3 }).max(1);
    r.passes = passes;
    println!(
        "observer-bench ({} mode, {passes} pass(es)): kernel {}, CPU {} x{}; load average {}",
        r.mode,
        r.kernel,
        r.cpu,
        r.cpus_online,
        machine.load_now()
    );
    let wanted = |p: Part| args.only.is_empty() || args.only.contains(&p);

    if wanted(Part::Memory) {
        println!(
            "[memory] memlock of each map (fdinfo) at the default capacity; 64 and 128 CPUs computed"
        );
        r.memory = phase(&mut r.errors, "memory", memory::run);
    }
    for pass in 1..=passes {
        println!("== pass {pass} of {passes} ==");
        let at = machine.load_now();
        let mut one = report::Pass {
            pass,
            load_average: at,
            ..Default::default()
        };
        if wanted(Part::Kernel) {
            let p = kernel::Params {
                rounds: if q { 7 } else { 15 },
                repeat: if q { 20_000 } else { 300_000 },
                distinct_flows: 100_000,
                distinct_repetitions: 1,
                distinct_passes: 2,
            };
            println!(
                "[kernel] TEST_RUN: packet mix, {} rounds x {} repetitions, ours, the empty program and ours stopping after the parse and after the packet's sizes, rotated; then {} distinct flows, one run each, {} pass(es) x {} fresh map(s)",
                p.rounds, p.repeat, p.distinct_flows, p.distinct_passes, p.distinct_repetitions
            );
            one.kernel = phase(&mut r.errors, "kernel", || kernel::run(&p));
        }
        if wanted(Part::Metrics) {
            println!("[metrics] /metrics (OpenMetrics) with 10,000 flow series");
            one.metrics = phase(&mut r.errors, "metrics", || {
                render::run(10_000, if q { 5 } else { 15 })
            });
        }
        if wanted(Part::Scale) {
            let p = scale::Params {
                // Room to keep every flow: past half full the daemon gives
                // back flows that did not grow, and these do not.
                sizes: vec![(10_000, 65_536), (65_536, 131_072), (100_000, 262_144)],
                polls: if q { 3 } else { 7 },
                daemon_interval: Duration::from_millis(if q { 500 } else { 1000 }),
                daemon_polls: if q { 2 } else { 4 },
                churn: churn::Params {
                    rates: if q {
                        vec![20_000]
                    } else {
                        vec![10_000, 40_000]
                    },
                    // Quick: fewer slots than the flows sent, so that the
                    // given-back ones are taken again.
                    capacity: if q { 65_536 } else { 262_144 },
                    interval: Duration::from_millis(if q { 500 } else { 1000 }),
                    idle_timeout: Duration::from_secs(if q { 1 } else { 2 }),
                    // Quick: fewer than the flows that end, so that the
                    // bound is reached; full: the default.
                    retain_flows: if q { 16_384 } else { 100_000 },
                    polls: 4,
                },
            };
            println!(
                "[scale] poll work at {:?} (flows, map slots): in this process ({} polls), and a real daemon (its poll time, RSS, CPU over {} polls, with no flow changing, then with every flow changing); then churn: {:?} new flows/s, idle timeout {:?}",
                p.sizes, p.polls, p.daemon_polls, p.churn.rates, p.churn.idle_timeout
            );
            one.scale = phase(&mut r.errors, "scale", || scale::run(&p, &exe));
        }
        if wanted(Part::Throughput) {
            let p = throughput::Params {
                rounds: if q { 1 } else { 4 },
                seconds: if q { 1 } else { 2 },
                stats_seconds: if q { 1 } else { 3 },
                stats_rounds: if q { 4 } else { 6 },
                sustained_pps: 100_000,
                distinct_flows: if q { 20_000 } else { 200_000 },
            };
            println!(
                "[throughput] iperf3 pod -> node -> pod over cali veths, UDP pps and TCP, {} round(s) of nothing / the empty program / the observer attached, {} s per test; then BPF run-time stats of ours, the empty program and ours stopping after its parts ({} rounds: hot flows, TCP, {} distinct flows)",
                p.rounds, p.seconds, p.stats_rounds, p.distinct_flows
            );
            one.throughput = phase(&mut r.errors, "throughput", || throughput::run(&p, &exe));
        }
        r.pass_results.push(one);
    }

    r.duration_seconds = started.elapsed().as_secs_f64();
    r.machine = machine.finish();
    r.conclude();
    r.write(&args.out)?;
    println!(
        "\nwrote {0}/report.md and {0}/report.json\n{1}",
        args.out.display(),
        r.summary()
    );
    if !r.errors.is_empty() {
        bail!("{} part(s) of the benchmark failed", r.errors.len());
    }
    Ok(())
}

/// Runs one part; a failure is recorded and the others still run.
fn phase<T>(errors: &mut Vec<String>, name: &str, f: impl FnOnce() -> Result<T>) -> Option<T> {
    if netns::interrupted().is_err() {
        errors.push(format!("{name}: skipped (interrupted)"));
        return None;
    }
    let t = Instant::now();
    match f() {
        Ok(v) => {
            println!("  done in {:.1} s", t.elapsed().as_secs_f64());
            Some(v)
        }
        Err(e) => {
            eprintln!("  {name} failed: {e:#}");
            errors.push(format!("{name}: {e:#}"));
            None
        }
    }
}
