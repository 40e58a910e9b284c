//! `observer replay CAPTURE`: runs the kernel classifier itself
//! (BPF_PROG_TEST_RUN) on every frame of a capture and reports the flows it
//! counted, as `observer flows` would show them.

pub mod capture;

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
};

use anyhow::{Result, bail};
use clap::Args;
use observer_common::{DEFAULT_FLOW_CAPACITY, FlowKey, FlowStats, Hook, Stat};
use serde::{Deserialize, Serialize};

use crate::{
    cli::{Output, render},
    datapath::{Datapath, object, testrun},
    flows::{Clock, Interface, InterfaceKind, table::FlowTable, to_view, view::FlowView},
};

use self::capture::{Input, for_each_frame, to_input};

/// TC_ACT_UNSPEC as the kernel returns it: the only verdict we ever give.
const TC_ACT_UNSPEC: u32 = u32::MAX;

/// BPF_PROG_TEST_RUN takes at most about a page of linear data. Larger
/// frames (GSO super-packets, jumbo frames) are run cut to this size on a
/// scratch map of their own, and the bytes cut off are added to the flow
/// they were counted in.
const TEST_RUN_MAX: usize = 3072;

#[derive(Args, Debug)]
pub struct ReplayArgs {
    /// A pcap or pcapng file (Ethernet, raw IP, Linux cooked SLL/SLL2).
    pub capture: PathBuf,
    /// Output format.
    #[arg(short, long, value_enum, default_value = "table")]
    pub output: Output,
    /// Read directions as on a pod interface (the pod's point of view) or a
    /// node device (the node's).
    #[arg(long, value_enum, default_value = "node")]
    pub view: ReplayView,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum ReplayView {
    Pod,
    Node,
}

#[derive(Serialize, Deserialize, Debug)]
pub struct ReplayReport {
    pub frames: u64,
    /// Frames the classifier could not parse, plus frames of link types we
    /// do not read and frames the kernel would not run.
    pub unparsed: u64,
    /// Frames that are not IP (ARP, ...), counted but not flows.
    pub non_ip: u64,
    pub flow_insert_failures: u64,
    pub flows: Vec<FlowView>,
}

pub fn replay(path: &Path, view: ReplayView) -> Result<ReplayReport> {
    let dp = Datapath::load(DEFAULT_FLOW_CAPACITY)?;
    let scratch = Datapath::load(1024)?;
    let mut frames = 0u64;
    let mut skipped = 0u64;
    let mut failure = None;
    // Flows of cut frames, with the cut bytes added back.
    let mut large: Vec<(FlowKey, FlowStats)> = Vec::new();
    let mut run_frame = |frames: u64, prog: &str, data: Vec<u8>| -> Result<()> {
        let cut = data.len().saturating_sub(TEST_RUN_MAX) as u64;
        let target = if cut > 0 { &scratch } else { &dp };
        let r = testrun::run(
            &target.ebpf,
            prog,
            &data[..data.len() - cut as usize],
            None,
            1,
        )?;
        if r.return_value != TC_ACT_UNSPEC {
            failure = Some(format!(
                "frame {frames}: verdict {} instead of TC_ACT_UNSPEC",
                r.return_value as i32
            ));
        }
        if cut > 0 {
            let mut got = Vec::new();
            scratch.read_flows(|k, v| got.push((*k, *v)))?;
            for (k, mut v) in got {
                scratch.evict(&k)?;
                v.bytes += cut;
                large.push((k, v));
            }
        }
        Ok(())
    };
    for_each_frame(path, |frame| {
        frames += 1;
        let (prog, data) = match to_input(&frame) {
            Input::Ethernet {
                frame,
                hook: Hook::Ingress,
            } => (object::ETH_INGRESS, frame),
            Input::Ethernet {
                frame,
                hook: Hook::Egress,
            } => (object::ETH_EGRESS, frame),
            Input::L3 {
                packet,
                hook: Hook::Ingress,
            } => (object::L3_INGRESS, packet),
            Input::L3 {
                packet,
                hook: Hook::Egress,
            } => (object::L3_EGRESS, packet),
            Input::Unsupported(_) => {
                skipped += 1;
                return;
            }
        };
        // The kernel refuses frames shorter than an Ethernet header:
        // nothing we could count.
        if let Err(e) = run_frame(frames, prog, data) {
            tracing::debug!("frame {frames}: {e:#}");
            skipped += 1;
        }
    })?;
    if let Some(f) = failure {
        bail!("the classifier changed a verdict, which it must never do: {f}");
    }

    let mut stats = dp.stats()?;
    for (total, s) in stats.iter_mut().zip(scratch.stats()?) {
        *total += s;
    }
    let mut entries: HashMap<FlowKey, FlowStats> = HashMap::new();
    dp.read_flows(|k, v| {
        entries.insert(*k, *v);
    })?;
    for (k, v) in large {
        let e = entries.entry(k).or_insert(FlowStats {
            first_seen_jiffies: v.first_seen_jiffies,
            ..Default::default()
        });
        e.skbs += v.skbs;
        e.extra_segments += v.extra_segments;
        e.bytes += v.bytes;
        e.overhead_bytes += v.overhead_bytes;
        e.tcp_flags |= v.tcp_flags;
        e.last_seen_jiffies = e.last_seen_jiffies.max(v.last_seen_jiffies);
    }
    let mut table = FlowTable::default();
    table.begin_poll();
    for (k, v) in &entries {
        table.observe(k, v);
    }
    let iface = Interface {
        name: "capture".into(),
        kind: match view {
            ReplayView::Pod => InterfaceKind::Pod,
            ReplayView::Node => InterfaceKind::Underlay,
        },
    };
    // The frames ran just now: anchoring the clock now is exact enough.
    let clock = Clock::new(
        dp.clock_sample()?,
        dp.jiffy_ns(std::time::Duration::from_millis(20))?,
    );
    let mut flows: Vec<FlowView> = table
        .iter()
        .map(|(k, e)| to_view(k, e, Some(&iface), &clock, None, None))
        .collect();
    flows.sort_by(|a, b| {
        (&a.src_ip, &a.dst_ip, a.src_port, a.dst_port, &a.direction).cmp(&(
            &b.src_ip,
            &b.dst_ip,
            b.src_port,
            b.dst_port,
            &b.direction,
        ))
    });
    Ok(ReplayReport {
        frames,
        unparsed: stats[Stat::Unparsed as usize] + skipped,
        non_ip: stats[Stat::NonIp as usize],
        flow_insert_failures: stats[Stat::FlowInsertFailures as usize],
        flows,
    })
}

pub fn main(args: ReplayArgs) -> Result<()> {
    let report = replay(&args.capture, args.view)?;
    match args.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        Output::Table | Output::Wide => {
            print!(
                "{}",
                render::flows_table(&report.flows, args.output == Output::Wide)
            );
            println!(
                "\n{} frames: {} in flows, {} not IP, {} unparsed",
                report.frames,
                report.frames - report.non_ip - report.unparsed,
                report.non_ip,
                report.unparsed
            );
        }
    }
    Ok(())
}
