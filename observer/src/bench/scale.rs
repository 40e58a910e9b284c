//! Userspace scale: the daemon's poll work and footprint as the number of
//! live flows grows.
//!
//! Two views. In this process: a flow map filled by the classifier itself
//! (one TEST_RUN per distinct packet), then the poll's work timed phase by
//! phase (read of the slots, flow-table update), with no flow changed and
//! with every flow changed. In a real `observer run`: its flow map filled
//! the same way (its own classifier run on as many distinct packets), then
//! its own poll time, resident memory and CPU while it polls, with no flow
//! changing and then with every flow changing between two polls.

use std::{
    os::fd::AsFd as _,
    path::Path,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::Result;
use serde::Serialize;

use super::{
    churn,
    daemon::{Daemon, map_and_poll_flags},
    frames,
    netns::{Netns, interrupted},
    procfs,
    stats::Summary,
};
use crate::{
    datapath::{Datapath, object, sys, testrun},
    flows::table::FlowTable,
};

pub struct Params {
    /// (live flows, flow-map capacity) to measure.
    pub sizes: Vec<(u32, u32)>,
    /// Poll cycles timed in this process, per size.
    pub polls: usize,
    /// The real daemon's poll interval, and polls watched per size.
    pub daemon_interval: Duration,
    pub daemon_polls: u64,
    pub churn: churn::Params,
}

#[derive(Serialize)]
pub struct PollWork {
    pub flows: u32,
    pub flow_capacity: u32,
    /// Entries in the kernel map after the fill (the LRU may have pushed
    /// some out before the map was full).
    pub live_entries: u64,
    pub fill_seconds: f64,
    /// The first poll, which creates every flow-table entry.
    pub first_poll_ms: f64,
    /// Later polls (steady state): whole cycle, slot read, table update.
    pub poll_ms: Summary,
    pub read_ms: Summary,
    pub table_ms: Summary,
    pub us_per_flow: f64,
    /// Polls after every flow got one more packet (the worst case: every
    /// flow's growth goes through the table).
    pub all_changed_poll_ms: Summary,
}

#[derive(Serialize)]
pub struct DaemonScale {
    pub flows: u32,
    pub flow_capacity: u32,
    pub live_entries: u64,
    pub poll_interval_ms: f64,
    /// `last_poll_ms` the daemon reports after each poll (steady state).
    pub poll_ms: Summary,
    /// VmRSS and VmHWM before the fill, after a couple of polls.
    pub rss_mib_empty: f64,
    pub peak_rss_mib_empty: f64,
    /// The largest VmRSS seen just after each poll watched.
    pub rss_mib: f64,
    /// VmHWM: the peak, during a poll (entries read + flow table).
    pub peak_rss_mib: f64,
    /// CPU (user + system) over the polls watched, percent of one CPU.
    pub cpu_percent: f64,
    /// The same, while every flow keeps getting packets (see [`Changing`]).
    pub changing: Changing,
}

/// The daemon watched while a thread of ours sends one more packet to
/// every flow, round after round, through the daemon's classifier: each
/// poll finds up to `flows_changed_per_s` times its interval changed flows,
/// and puts each through its flow table. (Seen on the loopback, no pod's
/// interface: the metrics make no series of them.)
#[derive(Serialize)]
pub struct Changing {
    pub flows_changed_per_s: f64,
    pub poll_ms: Summary,
    pub cpu_percent: f64,
}

#[derive(Serialize)]
pub struct ScaleResult {
    pub in_process: Vec<PollWork>,
    pub daemon: Vec<DaemonScale>,
    /// Growth between the smallest and the largest size.
    pub poll_us_per_flow: f64,
    pub rss_bytes_per_flow: f64,
    pub churn: Vec<churn::Churn>,
}

pub fn run(p: &Params, exe: &Path) -> Result<ScaleResult> {
    let mut in_process = Vec::new();
    for &(n, cap) in &p.sizes {
        in_process.push(poll_work(n, cap, p.polls)?);
    }
    let mut daemon = Vec::new();
    for &(n, cap) in &p.sizes {
        daemon.push(daemon_scale(exe, n, cap, p)?);
    }
    let churn = churn::run(&p.churn, exe)?;
    let slope = |f: &dyn Fn(&DaemonScale) -> f64| match (daemon.first(), daemon.last()) {
        (Some(a), Some(b)) if b.live_entries > a.live_entries => {
            (f(b) - f(a)) / (b.live_entries - a.live_entries) as f64
        }
        _ => 0.0,
    };
    Ok(ScaleResult {
        poll_us_per_flow: slope(&|d| d.poll_ms.median * 1e3),
        rss_bytes_per_flow: slope(&|d| d.peak_rss_mib * (1u64 << 20) as f64),
        in_process,
        daemon,
        churn,
    })
}

/// Fills a fresh flow map with `n` distinct flows through the classifier.
fn fill(n: u32, capacity: u32) -> Result<(Datapath, f64)> {
    let dp = Datapath::load(capacity)?;
    let started = Instant::now();
    run_distinct(&dp, n)?;
    Ok((dp, started.elapsed().as_secs_f64()))
}

/// One packet of each of `n` distinct flows through the classifier.
fn run_distinct(dp: &Datapath, n: u32) -> Result<()> {
    for i in 0..n {
        if i % 8192 == 0 {
            interrupted()?;
        }
        testrun::run(
            &dp.ebpf,
            object::ETH_INGRESS,
            &frames::distinct_tcp4(i),
            None,
            1,
        )?;
    }
    Ok(())
}

/// The daemon's poll work (see `daemon::poll`) on `n` live flows.
fn poll_work(n: u32, capacity: u32, polls: usize) -> Result<PollWork> {
    let (mut dp, fill_seconds) = fill(n, capacity)?;
    let mut table = FlowTable::default();
    let (mut total, mut read, mut upd) = (vec![], vec![], vec![]);
    let mut one = |dp: &mut Datapath| -> Result<(f64, f64, f64)> {
        let t0 = Instant::now();
        // The read and the table's update one after the other, to time
        // each (the daemon adds each change to the table as it reads it).
        let mut changes = Vec::new();
        dp.poll_flows(|c| changes.push(c))?;
        let t1 = Instant::now();
        table.begin_poll();
        for c in &changes {
            table.add(&c.key, &c.grown, &c.stats, c.opened, c.closed);
        }
        // Nothing is idle: the flows are seconds old.
        table.end_poll(0);
        let t2 = Instant::now();
        Ok((ms(t2 - t0), ms(t1 - t0), ms(t2 - t1)))
    };
    for _ in 0..polls + 1 {
        interrupted()?;
        let (a, b, c) = one(&mut dp)?;
        total.push(a);
        read.push(b);
        upd.push(c);
    }
    // The worst case: every flow got a packet since the last poll, so every
    // flow's growth goes through the table.
    let mut all_changed = Vec::new();
    for _ in 0..polls.min(3) {
        run_distinct(&dp, n)?;
        all_changed.push(one(&mut dp)?.0);
    }
    let live = dp.live_flows() as u64;
    let poll_ms = Summary::of(&total[1..]);
    Ok(PollWork {
        flows: n,
        flow_capacity: capacity,
        live_entries: live,
        fill_seconds,
        first_poll_ms: total[0],
        us_per_flow: poll_ms.median * 1e3 / live.max(1) as f64,
        poll_ms,
        read_ms: Summary::of(&read[1..]),
        table_ms: Summary::of(&upd[1..]),
        all_changed_poll_ms: Summary::of(&all_changed),
    })
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// A real daemon with `n` live flows in its map.
fn daemon_scale(exe: &Path, n: u32, capacity: u32, p: &Params) -> Result<DaemonScale> {
    let ns = Netns::new("scale")?;
    let flags = map_and_poll_flags(capacity, p.daemon_interval, Duration::from_secs(3600));
    let d = Daemon::start(exe, &ns, &flags)?;
    let pid = d.pid();
    let timeout = p.daemon_interval * 4 + Duration::from_secs(10);
    d.wait_polls(2, timeout)?;
    let rss_empty = procfs::status_bytes(pid, "VmRSS")?;
    let peak_empty = procfs::status_bytes(pid, "VmHWM")?;

    insert_flows(&d, n)?;
    // The first poll after the fill creates the table entries: let it pass.
    d.wait_for("the flows to be read", timeout, |d| {
        Ok(d.status()?["kernel_flow_entries"].as_u64().unwrap_or(0) > 0)
    })?;
    d.wait_polls(1, timeout)?;

    let steady = d.watch(p.daemon_polls, timeout)?;
    // Before the flows change: the steady state's peak.
    let peak = procfs::status_bytes(pid, "VmHWM")?;
    let changing = watch_changing(&d, n, p.daemon_polls, timeout)?;
    let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
    Ok(DaemonScale {
        flows: n,
        flow_capacity: capacity,
        live_entries: steady
            .each("kernel_flow_entries")
            .last()
            .copied()
            .unwrap_or(0.0) as u64,
        poll_interval_ms: ms(p.daemon_interval),
        poll_ms: Summary::of(&steady.each("last_poll_ms")),
        rss_mib_empty: mib(rss_empty),
        peak_rss_mib_empty: mib(peak_empty),
        rss_mib: mib(steady.rss),
        peak_rss_mib: mib(peak),
        cpu_percent: steady.cpu_percent,
        changing,
    })
}

/// [`watch`] while a thread sends one more packet to each of the `n`
/// flows, over and over (see [`Changing`]). The first poll after the
/// thread starts is not counted: it saw part of a round.
fn watch_changing(d: &Daemon, n: u32, polls_wanted: u64, timeout: Duration) -> Result<Changing> {
    let prog = d.classifier()?;
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        let sender = s.spawn(|| {
            let (mut sent, t0) = (0u64, Instant::now());
            'rounds: loop {
                for i in 0..n {
                    if stop.load(Ordering::Relaxed) {
                        break 'rounds;
                    }
                    sys::prog_test_run(prog.as_fd(), &frames::distinct_tcp4(i))?;
                    sent += 1;
                }
            }
            anyhow::Ok(sent as f64 / t0.elapsed().as_secs_f64())
        });
        let watched = d
            .watch(1, timeout)
            .and_then(|_| d.watch(polls_wanted, timeout));
        stop.store(true, Ordering::Relaxed);
        let per_s = sender
            .join()
            .map_err(|_| anyhow::anyhow!("the packet sender panicked"))??;
        let w = watched?;
        Ok(Changing {
            flows_changed_per_s: per_s,
            poll_ms: Summary::of(&w.each("last_poll_ms")),
            cpu_percent: w.cpu_percent,
        })
    })
}

/// Puts `n` distinct flows, all just seen, into the daemon's flow map:
/// one packet of each through the daemon's own classifier.
fn insert_flows(d: &Daemon, n: u32) -> Result<()> {
    let prog = d.classifier()?;
    for i in 0..n {
        if i % 8192 == 0 {
            interrupted()?;
        }
        sys::prog_test_run(prog.as_fd(), &frames::distinct_tcp4(i))?;
    }
    Ok(())
}
