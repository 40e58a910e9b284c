//! `observer replay CAPTURE`: runs the kernel classifier itself
//! (BPF_PROG_TEST_RUN) on every frame of a capture and reports the flows it
//! counted, as `observer flows` would show them. It reports only what is
//! true: every frame read is in a flow, not IP, unparsed, of a link type it
//! does not read, or counted as lost; and a capture it could not read to
//! the end, or only in part, makes it fail after the report.

pub mod capture;
pub mod input;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use anyhow::{Result, bail};
use clap::Args;
use observer_common::{DEFAULT_FLOW_CAPACITY, FlowKey, FlowStats, Hook, Stat};
use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};

use crate::{
    api::FlowView,
    datapath::{Datapath, object, testrun},
    flows::{Clock, Interface, InterfaceKind, table::FlowTable, to_view},
    term::{Output, flows::flows_table},
};

use self::{
    capture::{Frame, Stop},
    input::{Input, Layer, MAX_WIRE_LEN, Run, linktype_name, to_input},
};

/// TC_ACT_UNSPEC as the kernel returns it: the only verdict we ever give.
const TC_ACT_UNSPEC: u32 = u32::MAX;

/// Frames run between two drains of the flow map into userspace. A frame
/// adds at most one entry, so the map never fills: a quarter of it leaves
/// an LRU map's per-CPU free lists (128 entries a CPU) room before the LRU
/// would evict anything unread, and a plain hash map never refuses one.
const DRAIN_EVERY: u64 = DEFAULT_FLOW_CAPACITY as u64 / 4;

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
    /// Frames read from the capture.
    pub frames: u64,
    /// Frames counted in a flow (each is one skb of one flow).
    pub in_flows: u64,
    /// Frames the classifier could not parse, frames shorter than their
    /// link header and frames the kernel would not run.
    pub unparsed: u64,
    /// Frames that are not IP (ARP, ...), counted but not flows.
    pub non_ip: u64,
    /// Frames of link types replay does not read, per link type.
    pub unsupported: Vec<UnsupportedLinkType>,
    /// Frames counted nowhere: the flow map had no room for their flow.
    pub lost: u64,
    pub flow_insert_failures: u64,
    /// Frames claiming more than `MAX_WIRE_LEN` bytes on the wire, counted
    /// at that length.
    pub capped: u64,
    /// Where the capture is cut off or corrupt, if it is.
    pub stopped: Option<Stop>,
    pub flows: Vec<FlowView>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct UnsupportedLinkType {
    pub link_type: u32,
    /// libpcap's name for it, when it has one.
    pub name: Option<String>,
    pub frames: u64,
}

impl std::fmt::Display for UnsupportedLinkType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = self.name.as_deref().unwrap_or("unknown");
        write!(
            f,
            "link type {} ({name}) is not supported: {} frames not read",
            self.link_type, self.frames
        )
    }
}

impl ReplayReport {
    /// The summary under the flow table.
    pub fn footer(&self) -> String {
        let unsupported: u64 = self.unsupported.iter().map(|u| u.frames).sum();
        let mut out = format!(
            "\n{} frames: {} in flows, {} not IP, {} unparsed",
            self.frames, self.in_flows, self.non_ip, self.unparsed
        );
        if unsupported > 0 {
            out += &format!(", {unsupported} of link types not supported");
        }
        if self.lost > 0 {
            out += &format!(", {} lost", self.lost);
        }
        out += "\n";
        if self.capped > 0 {
            out += &format!(
                "{} frames claimed more than {MAX_WIRE_LEN} bytes on the wire: counted at {MAX_WIRE_LEN}\n",
                self.capped
            );
        }
        if self.flow_insert_failures > 0 {
            out += &format!("flow map: {} insert failures\n", self.flow_insert_failures);
        }
        out
    }

    /// What makes the report incomplete: the reasons to fail after it.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(stop) = &self.stopped {
            out.push(format!(
                "the capture is cut off or corrupt: {stop}; the {} complete frames before it are reported",
                self.frames
            ));
        }
        out.extend(self.unsupported.iter().map(ToString::to_string));
        if self.lost > 0 {
            out.push(format!(
                "{} frames were counted in no flow: the kernel flow map had no room for them \
                 (flow_insert_failures: {})",
                self.lost, self.flow_insert_failures
            ));
        }
        out
    }
}

pub fn replay(path: &Path, view: ReplayView) -> Result<ReplayReport> {
    let mut replayer = Replayer::new()?;
    let stopped = capture::read(path, |frame| replayer.frame(&frame))?;
    replayer.finish(view, stopped)
}

/// Runs frames one by one and keeps what they counted.
struct Replayer {
    dp: Datapath,
    /// Where frames cut to `RUN_MAX` run, so that their one flow can be
    /// found and given the bytes cut off.
    scratch: Datapath,
    /// Every flow counted so far, drained from the kernel maps.
    sums: FxHashMap<FlowKey, FlowStats>,
    since_drain: u64,
    frames: u64,
    /// Frames never run: malformed, or refused by the kernel.
    skipped: u64,
    capped: u64,
    unsupported: BTreeMap<u32, u64>,
    failure: Option<String>,
}

impl Replayer {
    fn new() -> Result<Self> {
        Ok(Self {
            dp: Datapath::load(DEFAULT_FLOW_CAPACITY)?,
            scratch: Datapath::load(1024)?,
            sums: FxHashMap::default(),
            since_drain: 0,
            frames: 0,
            skipped: 0,
            capped: 0,
            unsupported: BTreeMap::new(),
            failure: None,
        })
    }

    fn frame(&mut self, frame: &Frame) -> Result<()> {
        self.frames += 1;
        match to_input(frame) {
            Input::Run(run) => return self.run(run),
            Input::Malformed => self.skipped += 1,
            Input::Unsupported(linktype) => *self.unsupported.entry(linktype).or_default() += 1,
        }
        Ok(())
    }

    fn run(&mut self, run: Run) -> Result<()> {
        self.capped += u64::from(run.capped);
        let target = if run.cut > 0 { &self.scratch } else { &self.dp };
        match testrun::run(
            &target.ebpf,
            program(run.layer, run.hook),
            &run.data,
            None,
            1,
        ) {
            Ok(r) if r.return_value != TC_ACT_UNSPEC => {
                self.failure.get_or_insert(format!(
                    "frame {}: verdict {} instead of TC_ACT_UNSPEC",
                    self.frames, r.return_value as i32
                ));
            }
            Ok(_) => {}
            // The kernel refuses frames shorter than an Ethernet header:
            // nothing we could count.
            Err(e) => {
                tracing::debug!("frame {}: {e:#}", self.frames);
                self.skipped += 1;
                return Ok(());
            }
        }
        if run.cut > 0 {
            for (key, mut stats) in drain(&self.scratch)? {
                stats.bytes += run.cut;
                add(&mut self.sums, key, &stats);
            }
            return Ok(());
        }
        self.since_drain += 1;
        if self.since_drain >= DRAIN_EVERY {
            self.drain()?;
        }
        Ok(())
    }

    fn drain(&mut self) -> Result<()> {
        for (key, stats) in drain(&self.dp)? {
            add(&mut self.sums, key, &stats);
        }
        self.since_drain = 0;
        Ok(())
    }

    fn finish(mut self, view: ReplayView, stopped: Option<Stop>) -> Result<ReplayReport> {
        self.drain()?;
        if let Some(f) = self.failure {
            bail!("the classifier changed a verdict, which it must never do: {f}");
        }
        let mut stats = self.dp.stats()?;
        for (total, s) in stats.iter_mut().zip(self.scratch.stats()?) {
            *total += s;
        }
        let in_flows: u64 = self.sums.values().map(|s| s.skbs).sum();
        let unparsed = stats[Stat::Unparsed as usize] + self.skipped;
        let non_ip = stats[Stat::NonIp as usize];
        let unsupported: Vec<UnsupportedLinkType> = self
            .unsupported
            .iter()
            .map(|(&link_type, &frames)| UnsupportedLinkType {
                link_type,
                name: linktype_name(link_type),
                frames,
            })
            .collect();
        let not_run: u64 = unsupported.iter().map(|u| u.frames).sum();
        Ok(ReplayReport {
            frames: self.frames,
            in_flows,
            unparsed,
            non_ip,
            lost: self
                .frames
                .saturating_sub(in_flows + unparsed + non_ip + not_run),
            unsupported,
            flow_insert_failures: stats[Stat::FlowInsertFailures as usize],
            capped: self.capped,
            stopped,
            flows: views(&self.sums, view, &self.dp)?,
        })
    }
}

fn program(layer: Layer, hook: Hook) -> &'static str {
    match (layer, hook) {
        (Layer::Ethernet, Hook::Ingress) => object::ETH_INGRESS,
        (Layer::Ethernet, Hook::Egress) => object::ETH_EGRESS,
        (Layer::L3, Hook::Ingress) => object::L3_INGRESS,
        (Layer::L3, Hook::Egress) => object::L3_EGRESS,
    }
}

/// Reads and deletes every entry of a flow map. Nothing else writes it
/// (frames run one at a time, on this thread), so what is read is final;
/// an LRU map and a plain hash map drain alike.
fn drain(dp: &Datapath) -> Result<Vec<(FlowKey, FlowStats)>> {
    let mut keys = Vec::new();
    dp.read_flows(|k, _| keys.push(*k))?;
    let mut out = Vec::with_capacity(keys.len());
    for key in keys {
        if let Some(stats) = dp.evict(&key)? {
            out.push((key, stats));
        }
    }
    Ok(out)
}

/// Adds one kernel entry's counts to a flow's.
fn add(sums: &mut FxHashMap<FlowKey, FlowStats>, key: FlowKey, v: &FlowStats) {
    let Some(e) = sums.get_mut(&key) else {
        sums.insert(key, *v);
        return;
    };
    e.skbs += v.skbs;
    e.extra_segments += v.extra_segments;
    e.bytes += v.bytes;
    e.overhead_bytes += v.overhead_bytes;
    e.oversize_packets = e.oversize_packets.saturating_add(v.oversize_packets);
    e.tcp_flags |= v.tcp_flags;
    e.first_seen_jiffies = e.first_seen_jiffies.min(v.first_seen_jiffies);
    e.last_seen_jiffies = e.last_seen_jiffies.max(v.last_seen_jiffies);
}

/// The flows as `observer flows` shows them, in a stable order.
fn views(
    sums: &FxHashMap<FlowKey, FlowStats>,
    view: ReplayView,
    dp: &Datapath,
) -> Result<Vec<FlowView>> {
    let mut table = FlowTable::default();
    table.begin_poll();
    for (k, v) in sums {
        // Each flow's sums, as one slot's counts.
        table.add(k, v, v, false, false);
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
    Ok(flows)
}

/// Prints the report, then fails if it is incomplete: a script sees the
/// exit status, a reader the flows that were read.
pub fn main(args: ReplayArgs) -> Result<()> {
    let report = replay(&args.capture, args.view)?;
    match args.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        Output::Table | Output::Wide => {
            print!(
                "{}",
                flows_table(&report.flows, args.output == Output::Wide)
            );
            print!("{}", report.footer());
        }
    }
    let problems = report.problems();
    if !problems.is_empty() {
        bail!("{}", problems.join("\n"));
    }
    Ok(())
}
