//! Churn: the real daemon while flows keep opening and going idle at a
//! steady rate, as on a node whose pods make many short connections. Each
//! new flow takes a slot (a given-back one first), goes idle, and is given
//! back by the daemon after the idle timeout: the poll's cost and the
//! memory in that steady state, whether every new flow found a slot, and
//! how many ended flows the daemon goes on listing (`--retain-flows`).

use std::{
    os::fd::AsFd as _,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Result, anyhow};
use serde::Serialize;

use super::{
    daemon::{Daemon, map_and_poll_flags},
    frames,
    netns::Netns,
    stats::Summary,
};
use crate::datapath::sys;

pub struct Params {
    /// New flows per second to measure, one daemon each.
    pub rates: Vec<u32>,
    pub capacity: u32,
    pub interval: Duration,
    pub idle_timeout: Duration,
    /// The daemon's `--retain-flows`: ended flows it goes on listing.
    pub retain_flows: usize,
    /// Polls watched once the live flows are steady.
    pub polls: u64,
}

#[derive(Serialize)]
pub struct Churn {
    /// New flows per second asked for, and sent (one packet each, through
    /// the daemon's classifier, paced by a thread of ours).
    pub rate: u32,
    pub sent_per_s: f64,
    pub flow_capacity: u32,
    pub idle_timeout_ms: f64,
    pub poll_interval_ms: f64,
    /// Kernel flow entries after each poll watched: about the rate times
    /// the idle timeout plus the poll that gives them back.
    pub live_entries: Summary,
    /// `--retain-flows`, and the evicted flows the daemon listed after each
    /// poll watched: at most that.
    pub retain_flows: usize,
    pub evicted_listed: Summary,
    /// Ended flows it stopped listing over that bound, by the end.
    pub flows_forgotten: u64,
    pub poll_ms: Summary,
    pub cpu_percent: f64,
    /// The largest VmRSS seen just after a poll.
    pub rss_mib: f64,
    /// Packets sent over the whole run, and the flows the kernel inserted
    /// for them: equal when every new flow found a slot.
    pub sent: u64,
    pub flow_inserts: u64,
    pub flow_insert_failures: u64,
    /// Slots that vanished before their counts were read (0 unless a
    /// daemon crashed).
    pub vanished: u64,
}

pub fn run(p: &Params, exe: &std::path::Path) -> Result<Vec<Churn>> {
    p.rates.iter().map(|&rate| one(p, rate, exe)).collect()
}

fn one(p: &Params, rate: u32, exe: &std::path::Path) -> Result<Churn> {
    let ns = Netns::new("churn")?;
    let mut flags = map_and_poll_flags(p.capacity, p.interval, p.idle_timeout);
    flags.extend(["--retain-flows".into(), p.retain_flows.to_string()]);
    let d = Daemon::start(exe, &ns, &flags)?;
    let timeout = p.interval * 4 + Duration::from_secs(10);
    d.wait_polls(1, timeout)?;
    let before = d.status()?;
    let prog = d.classifier()?;
    let stop = AtomicBool::new(false);
    let (sent, seconds, watched) = std::thread::scope(|s| {
        let sender = s.spawn(|| send_new_flows(prog.as_fd(), rate, &stop));
        // The live flows level off once the first ones are given back: an
        // idle timeout, the poll that retires them, the one that reads them.
        let steady = (p.idle_timeout.as_millis() / p.interval.as_millis().max(1)) as u64 + 3;
        let watched = d
            .watch(steady, timeout * steady as u32)
            .and_then(|_| d.watch(p.polls, timeout));
        stop.store(true, Ordering::Relaxed);
        let (sent, seconds) = sender
            .join()
            .map_err(|_| anyhow!("the flow sender panicked"))??;
        anyhow::Ok((sent, seconds, watched?))
    })?;
    // The last packets' inserts are counted at the next poll.
    d.wait_polls(2, timeout)?;
    let after = d.status()?;
    let counter = |st: &serde_json::Value, name: &str| st["datapath"][name].as_u64().unwrap_or(0);
    let grew = |name: &str| counter(&after, name).saturating_sub(counter(&before, name));
    Ok(Churn {
        rate,
        sent_per_s: sent as f64 / seconds,
        flow_capacity: p.capacity,
        idle_timeout_ms: p.idle_timeout.as_secs_f64() * 1e3,
        poll_interval_ms: p.interval.as_secs_f64() * 1e3,
        live_entries: Summary::of(&watched.each("kernel_flow_entries")),
        retain_flows: p.retain_flows,
        evicted_listed: Summary::of(&watched.each("evicted_flows_listed")),
        flows_forgotten: after["flows_forgotten_over_limit"].as_u64().unwrap_or(0),
        poll_ms: Summary::of(&watched.each("last_poll_ms")),
        cpu_percent: watched.cpu_percent,
        rss_mib: watched.rss as f64 / (1u64 << 20) as f64,
        sent,
        flow_inserts: grew("flow_inserts"),
        flow_insert_failures: grew("flow_insert_failures"),
        vanished: after["lru_evictions"].as_u64().unwrap_or(0),
    })
}

/// One packet of a new flow at a time, `rate` a second on average, until
/// `stop`: the packets sent and the seconds taken.
fn send_new_flows(
    prog: std::os::fd::BorrowedFd<'_>,
    rate: u32,
    stop: &AtomicBool,
) -> Result<(u64, f64)> {
    let started = Instant::now();
    let mut sent = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let due = (started.elapsed().as_secs_f64() * rate as f64) as u64;
        if sent >= due {
            std::thread::sleep(Duration::from_millis(1));
            continue;
        }
        // `distinct_tcp4` has 2^23 distinct flows: hours at these rates.
        sys::prog_test_run(prog, &frames::distinct_tcp4(sent as u32))?;
        sent += 1;
    }
    Ok((sent, started.elapsed().as_secs_f64()))
}
