//! Throughput impact on real veths: two pods behind a node, shaped like
//! Calico's (host-side `cali*` veths, /32 routes, 169.254.1.1 as the pods'
//! gateway), iperf3 from pod A to pod B through the node, with nothing
//! attached to the cali veths, with the empty program attached, and with
//! `observer run` attached, alternated. Then the kernel's own per-run
//! statistics (BPF_ENABLE_STATS) of our programs while traffic flows, and
//! of the empty program under the same loads.

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, UdpSocket},
    path::Path,
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use aya::programs::{SchedClassifier, TcAttachType};
use observer_common::StopAfter;
use serde::Serialize;

use super::{
    daemon::Daemon,
    frames,
    netns::{Netns, Proc, interrupted},
    procfs,
    stats::Summary,
};
use crate::{
    datapath::{Datapath, cpu, object},
    lab::{
        build::{Neighbours, PodVeth, pod_veth},
        netns::within,
    },
    model::calico_interface,
};

const POD_A: &str = "10.65.0.2";
const POD_B: &str = "10.65.0.3";
const PORT: &str = "5201";
/// UDP payload bytes: small packets, so that per-packet cost shows.
const UDP_LEN: usize = 64;
/// The distinct flows' destination ports at pod B: from here, as many as
/// the flows over the sockets sending them.
const FIRST_PORT: u16 = 10_000;
/// Flows one source socket sends (one per destination port).
const PORTS_PER_SOCKET: u32 = 50_000;

pub struct Params {
    /// Rounds of the three setups, in rotating order.
    pub rounds: usize,
    /// Seconds per iperf3 test.
    pub seconds: u32,
    /// Seconds per test of the bpf_stats segment.
    pub stats_seconds: u32,
    /// Rounds of the bpf_stats segment, in the order of [`STATS_ORDER`].
    pub stats_rounds: usize,
    /// Packet rate of the sustained UDP load.
    pub sustained_pps: u64,
    /// Flows of the bpf_stats segment's distinct-flow loads.
    pub distinct_flows: u32,
}

/// What is attached to the cali veths during a test.
#[derive(Serialize, Clone, Copy, PartialEq, Eq, Debug)]
#[serde(rename_all = "snake_case")]
pub enum Setup {
    Nothing,
    /// The empty SCHED_CLS program, attached like ours (TCX, both hooks of
    /// both veths): what any TC program costs on this path.
    EmptyProgram,
    /// `observer run`.
    Observer,
}

const SETUPS: [Setup; 3] = [Setup::Nothing, Setup::EmptyProgram, Setup::Observer];

/// What runs on the cali veths' hooks in a round of the bpf_stats segment.
#[derive(Clone, Copy)]
enum Stats {
    /// `observer run`'s programs.
    Ours,
    /// The empty program, attached by the bench.
    Empty,
    /// Our programs, attached by the bench, made to stop after a part
    /// (no daemon: what they skip needs none).
    Stopping(StopAfter),
}

/// The bpf_stats rounds, in order: ours and the empty program first and
/// last, so that a drift of the machine over the segment weighs on both
/// alike; the parts of ours between.
const STATS_ORDER: [Stats; 6] = [
    Stats::Ours,
    Stats::Empty,
    Stats::Stopping(StopAfter::Parse),
    Stats::Stopping(StopAfter::Sizes),
    Stats::Empty,
    Stats::Ours,
];

#[derive(Serialize, Clone)]
pub struct Sample {
    pub round: usize,
    pub setup: Setup,
    pub udp_sent_pps: f64,
    pub udp_received_pps: f64,
    pub tcp_gbps: f64,
}

/// One throughput figure under the three setups.
#[derive(Serialize)]
pub struct Figure {
    pub name: &'static str,
    pub nothing: Summary,
    pub empty_program: Summary,
    pub observer: Summary,
    /// observer / nothing within each round: the headline ratio.
    pub ratio: Summary,
    /// empty program / nothing within each round.
    pub empty_ratio: Summary,
    /// observer / empty program within each round: what our programs cost
    /// beyond any TC program's hooks.
    pub vs_empty: Summary,
}

#[derive(Serialize)]
pub struct ProgStats {
    pub program: String,
    pub run_cnt: u64,
    pub run_time_ns: u64,
    pub ns_per_run: f64,
}

/// Adds `more` to the same programs' figures in `into`.
fn merge(into: &mut Vec<ProgStats>, more: Vec<ProgStats>) {
    for m in more {
        match into.iter_mut().find(|p| p.program == m.program) {
            Some(p) => {
                p.run_cnt += m.run_cnt;
                p.run_time_ns += m.run_time_ns;
                p.ns_per_run = p.run_time_ns as f64 / p.run_cnt.max(1) as f64;
            }
            None => into.push(m),
        }
    }
}

/// One load of the statistics segment, over its rounds.
#[derive(Serialize)]
pub struct StatsRun {
    /// `hot_udp`, `hot_tcp`, `distinct_new` or `distinct_known`.
    pub load: &'static str,
    /// What the load is.
    pub about: String,
    #[serde(skip)]
    kind: Load,
    /// Rounds with our programs attached, and their wall time in all.
    pub rounds: usize,
    pub seconds: f64,
    /// UDP packets sent per second with ours attached (0 for TCP).
    pub achieved_pps: f64,
    pub programs: Vec<ProgStats>,
    /// Sum of our programs' run time over wall time, percent of one CPU.
    pub classifier_cpu_percent: f64,
    /// The daemon process (user + system), percent of one CPU.
    pub daemon_cpu_percent: f64,
    /// The empty program on the same hooks under the same load (our
    /// daemon gone), over its rounds: what a run of any program costs here.
    pub empty: Vec<ProgStats>,
    /// Ours made to stop after the parse, and after the interface and
    /// encapsulation totals: what each part adds.
    pub parse_only: Vec<ProgStats>,
    pub sizes_only: Vec<ProgStats>,
    #[serde(skip)]
    sent: f64,
    #[serde(skip)]
    daemon_cpu_seconds: f64,
}

impl StatsRun {
    fn of(kind: Load) -> Self {
        Self {
            load: kind.key(),
            about: kind.describe(),
            kind,
            rounds: 0,
            seconds: 0.0,
            achieved_pps: 0.0,
            programs: Vec::new(),
            classifier_cpu_percent: 0.0,
            daemon_cpu_percent: 0.0,
            empty: Vec::new(),
            parse_only: Vec::new(),
            sizes_only: Vec::new(),
            sent: 0.0,
            daemon_cpu_seconds: 0.0,
        }
    }

    /// Adds a round with ours attached: its programs' figures, wall time,
    /// UDP packets sent and the daemon's CPU seconds.
    fn add_ours(&mut self, programs: Vec<ProgStats>, wall: f64, sent: f64, cpu: f64) {
        merge(&mut self.programs, programs);
        self.rounds += 1;
        self.seconds += wall;
        self.sent += sent;
        self.daemon_cpu_seconds += cpu;
        let wall = self.seconds.max(f64::MIN_POSITIVE);
        let ours: u64 = self.programs.iter().map(|p| p.run_time_ns).sum();
        self.achieved_pps = self.sent / wall;
        self.classifier_cpu_percent = ours as f64 / 1e9 / wall * 100.0;
        self.daemon_cpu_percent = self.daemon_cpu_seconds / wall * 100.0;
    }

    /// Our programs' mean ns per run over their hooks.
    pub fn ours_ns_per_run(&self) -> Option<f64> {
        ns_per_run(&self.programs)
    }

    /// The empty program's mean ns per run.
    pub fn empty_ns_per_run(&self) -> Option<f64> {
        ns_per_run(&self.empty)
    }

    /// Ours stopping after the parse, then after the sizes: mean ns per run.
    pub fn parts_ns_per_run(&self) -> (Option<f64>, Option<f64>) {
        (ns_per_run(&self.parse_only), ns_per_run(&self.sizes_only))
    }

    /// [`Self::ours_ns_per_run`] over [`Self::empty_ns_per_run`].
    pub fn ratio_vs_empty(&self) -> Option<f64> {
        let empty = self.empty_ns_per_run()?;
        let ours = self.ours_ns_per_run()?;
        (empty > 0.0).then(|| ours / empty)
    }
}

/// Mean ns per run over the programs' runs.
fn ns_per_run(programs: &[ProgStats]) -> Option<f64> {
    let (t, c) = programs
        .iter()
        .fold((0, 0), |(t, c), p| (t + p.run_time_ns, c + p.run_cnt));
    (c > 0).then(|| t as f64 / c as f64)
}

#[derive(Serialize)]
pub struct ThroughputResult {
    pub topology: String,
    pub rounds: usize,
    pub seconds_per_test: u32,
    pub samples: Vec<Sample>,
    /// UDP pps sent, UDP pps received, TCP Gbit/s.
    pub figures: Vec<Figure>,
    /// The lowest of the figures' median observer/nothing ratios.
    pub ratio: f64,
    /// The lower of the UDP figures' median observer/empty ratios.
    pub ratio_vs_empty: f64,
    pub bpf_stats: Vec<StatsRun>,
    pub bpf_stats_sysctl: String,
}

pub fn run(p: &Params, exe: &Path) -> Result<ThroughputResult> {
    let lab = Lab::build()?;
    let _server = lab.iperf3_server()?;
    // Warm-up, not counted: first runs are slower (cold caches, slab).
    lab.udp(1, None)?;
    lab.tcp(1)?;
    let mut samples = Vec::new();
    for round in 0..p.rounds {
        // Each setup takes each place in the order, round after round.
        for i in 0..SETUPS.len() {
            interrupted()?;
            let setup = SETUPS[(i + round) % SETUPS.len()];
            let _daemon = (setup == Setup::Observer)
                .then(|| lab.observer(exe, &[]))
                .transpose()?;
            let _empty = (setup == Setup::EmptyProgram)
                .then(|| lab.attach_empty())
                .transpose()?;
            let (sent, received) = lab.udp(p.seconds, None)?;
            let tcp = lab.tcp(p.seconds)?;
            println!(
                "    round {round} {:<13}: UDP {sent:.0} pps sent, {received:.0} received; TCP {tcp:.2} Gbit/s",
                format!("{setup:?}")
            );
            samples.push(Sample {
                round,
                setup,
                udp_sent_pps: sent,
                udp_received_pps: received,
                tcp_gbps: tcp,
            });
        }
    }
    let figures = vec![
        figure(&samples, "UDP pps sent", |s| s.udp_sent_pps),
        figure(&samples, "UDP pps received", |s| s.udp_received_pps),
        figure(&samples, "TCP Gbit/s", |s| s.tcp_gbps),
    ];
    let bpf_stats = lab.bpf_stats(exe, p)?;
    let sysctl = std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled")
        .unwrap_or_default()
        .trim()
        .to_owned();
    Ok(ThroughputResult {
        topology: format!(
            "pod A ({POD_A}, netns) -> {} -> node netns (forwarding) -> {} -> pod B ({POD_B}); \
             iperf3 client pinned to CPU 0, server to CPU 1",
            lab.cali_a, lab.cali_b
        ),
        rounds: p.rounds,
        seconds_per_test: p.seconds,
        samples,
        ratio: figures
            .iter()
            .map(|f| f.ratio.median)
            .fold(f64::INFINITY, f64::min),
        ratio_vs_empty: figures
            .iter()
            .filter(|f| f.name.starts_with("UDP"))
            .map(|f| f.vs_empty.median)
            .fold(f64::INFINITY, f64::min),
        figures,
        bpf_stats,
        bpf_stats_sysctl: sysctl,
    })
}

/// A figure under each setup, and its ratios to nothing attached within
/// each round (slow drift of the machine cancels).
fn figure(samples: &[Sample], name: &'static str, f: fn(&Sample) -> f64) -> Figure {
    let of = |setup| {
        samples
            .iter()
            .filter(|s| s.setup == setup)
            .map(f)
            .collect::<Vec<_>>()
    };
    let ratio = |setup, to| {
        let per_round: Vec<f64> = samples
            .chunk_by(|a, b| a.round == b.round)
            .filter_map(|round| {
                let get = |x| round.iter().find(|s| s.setup == x).map(f);
                Some(get(setup)? / get(to)?.max(f64::MIN_POSITIVE))
            })
            .collect();
        Summary::of(&per_round)
    };
    Figure {
        name,
        nothing: Summary::of(&of(Setup::Nothing)),
        empty_program: Summary::of(&of(Setup::EmptyProgram)),
        observer: Summary::of(&of(Setup::Observer)),
        ratio: ratio(Setup::Observer, Setup::Nothing),
        empty_ratio: ratio(Setup::EmptyProgram, Setup::Nothing),
        vs_empty: ratio(Setup::Observer, Setup::EmptyProgram),
    }
}

struct Lab {
    // Deleting the node's namespace deletes the veth pairs too.
    node: Netns,
    pod_a: Netns,
    pod_b: Netns,
    cali_a: String,
    cali_b: String,
}

impl Lab {
    fn build() -> Result<Self> {
        let lab = Self {
            node: Netns::new("node")?,
            pod_a: Netns::new("poda")?,
            pod_b: Netns::new("podb")?,
            cali_a: calico_interface("cali", "bench", "pod-a"),
            cali_b: calico_interface("cali", "bench", "pod-b"),
        };
        lab.node.exec(&["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
        for (pod, cali, ip, mac) in [
            (&lab.pod_a, &lab.cali_a, POD_A, "02:00:0a:41:00:02"),
            (&lab.pod_b, &lab.cali_b, POD_B, "02:00:0a:41:00:03"),
        ] {
            pod_veth(&PodVeth {
                node_ns: &lab.node.0,
                pod_ns: &pod.0,
                cali,
                ips: &[ip.parse()?],
                mtu: None,
                neighbours: Neighbours::Static { pod_mac: mac },
            })?;
        }
        lab.pod_a.exec(&["ping", "-c1", "-W2", POD_B])?;
        Ok(lab)
    }

    fn iperf3_server(&self) -> Result<Proc> {
        let mut args = vec!["iperf3", "-s", "-p", PORT];
        if cpus() > 1 {
            args.extend(["-A", "1"]);
        }
        let mut cmd = self.pod_b.command(&args);
        cmd.stdout(Stdio::null()).stderr(Stdio::null());
        let mut server = Proc::spawn(&mut cmd, "iperf3 server")?;
        let deadline = Instant::now() + Duration::from_secs(10);
        let filter = format!("sport = :{PORT}");
        while self
            .pod_b
            .exec(&["ss", "-Hltn", &filter])?
            .trim()
            .is_empty()
        {
            server.check_running()?;
            if Instant::now() > deadline {
                bail!("the iperf3 server did not start listening");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(server)
    }

    /// One iperf3 client run from pod A, and `pick` of its JSON report.
    /// Retried when it fails or has no result (the server takes a moment
    /// between tests, and a run can end without a report).
    fn iperf3<T>(
        &self,
        extra: &[&str],
        pick: impl Fn(&serde_json::Value) -> Option<T>,
    ) -> Result<T> {
        let mut args = vec!["iperf3", "-c", POD_B, "-p", PORT, "-J"];
        if cpus() > 1 {
            args.extend(["-A", "0"]);
        }
        args.extend_from_slice(extra);
        let mut last = String::new();
        for _ in 0..5 {
            interrupted()?;
            let out = self.pod_a.command(&args).stdin(Stdio::null()).output()?;
            let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
            if out.status.success()
                && let Some(v) = pick(&json["end"])
            {
                return Ok(v);
            }
            last = json["error"]
                .as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| String::from_utf8_lossy(&out.stderr).into_owned());
            std::thread::sleep(Duration::from_millis(500));
        }
        bail!("iperf3 {extra:?} failed 5 times, last: {last}")
    }

    /// UDP packets per second, (sent, received); at full speed unless a
    /// total rate (pps, over `streams`) is given.
    fn udp(&self, seconds: u32, rate: Option<(u64, u32)>) -> Result<(f64, f64)> {
        let (t, len) = (seconds.to_string(), UDP_LEN.to_string());
        let mut extra = vec!["-u", "-l", &len, "-t", &t];
        let (bw, streams);
        match rate {
            Some((pps, n)) => {
                bw = (pps * UDP_LEN as u64 * 8 / n as u64).to_string();
                streams = n.to_string();
                extra.extend(["-b", &bw, "-P", &streams]);
            }
            None => extra.extend(["-b", "0"]),
        }
        let pps = |s: &serde_json::Value| {
            let pk = s["packets"].as_f64()? - s["lost_packets"].as_f64()?;
            Some(pk / s["seconds"].as_f64()?.max(1e-9))
        };
        self.iperf3(&extra, |end| {
            Some((pps(&end["sum_sent"])?, pps(&end["sum_received"])?))
        })
    }

    /// TCP goodput at the receiver, Gbit/s.
    fn tcp(&self, seconds: u32) -> Result<f64> {
        self.iperf3(&["-t", &seconds.to_string()], |end| {
            Some(end["sum_received"]["bits_per_second"].as_f64()? / 1e9)
        })
    }

    /// The empty program attached to both hooks of both cali veths (TCX
    /// where the kernel has it, as the daemon does), from a thread that
    /// entered the node's namespace; detached when the result is dropped.
    fn attach_empty(&self) -> Result<Datapath> {
        let dp = Datapath::load(1024)?;
        self.attach_to_calis(dp, |_| object::EMPTY)
    }

    /// Our programs, made to stop after `part`, attached as the daemon
    /// attaches them (by the bench: no daemon).
    fn attach_stopping(&self, part: StopAfter) -> Result<Datapath> {
        let dp = Datapath::load_stopping_after(1024, part)?;
        let stopping = |prog| object::stopping_after(prog, part).context("no stopping entry point");
        let (ingress, egress) = (
            stopping(object::ETH_INGRESS)?,
            stopping(object::ETH_EGRESS)?,
        );
        self.attach_to_calis(dp, |hook| match hook {
            TcAttachType::Ingress => ingress,
            _ => egress,
        })
    }

    /// Attaches `dp`'s program `name(hook)` to both hooks of both cali
    /// veths; detached when the result is dropped.
    fn attach_to_calis(
        &self,
        mut dp: Datapath,
        name: impl Fn(TcAttachType) -> &'static str + Sync,
    ) -> Result<Datapath> {
        within(&self.node.0, || -> Result<()> {
            for hook in [TcAttachType::Ingress, TcAttachType::Egress] {
                let prog: &mut SchedClassifier = dp
                    .ebpf
                    .program_mut(name(hook))
                    .with_context(|| format!("program {}", name(hook)))?
                    .try_into()?;
                for cali in [&self.cali_a, &self.cali_b] {
                    prog.attach(cali, hook)
                        .with_context(|| format!("attaching {} to {cali}", name(hook)))?;
                }
            }
            Ok(())
        })??;
        Ok(dp)
    }

    /// `observer run` in the node's namespace, attached to both cali veths.
    fn observer(&self, exe: &Path, extra: &[&str]) -> Result<Daemon> {
        let d = Daemon::start(exe, &self.node, extra)?;
        d.wait_for("both cali veths attached", Duration::from_secs(15), |d| {
            let ifs: Vec<serde_json::Value> = d.get("/v1/interfaces")?;
            Ok(ifs.iter().filter(|i| !i["attached_via"].is_null()).count() == 2)
        })?;
        Ok(d)
    }

    /// Our programs' run time per run while traffic flows, with the
    /// kernel's BPF statistics on for just this segment, and the empty
    /// program's and our parts', attached to the same hooks under the same
    /// loads, in rounds ordered as [`STATS_ORDER`].
    fn bpf_stats(&self, exe: &Path, p: &Params) -> Result<Vec<StatsRun>> {
        // The switch behind kernel.bpf_stats_enabled, held by an fd: it
        // goes off again when the fd closes, even if we die.
        let _on = aya::sys::enable_stats(aya::sys::Stats::RunTime)
            .context("enabling BPF run-time statistics")?;
        let loads = [
            Load::Udp {
                pps: p.sustained_pps,
                streams: 4,
            },
            Load::Tcp,
            Load::NewFlows {
                flows: p.distinct_flows,
            },
            Load::KnownFlows {
                flows: p.distinct_flows,
            },
        ];
        let mut out: Vec<StatsRun> = loads.iter().map(|l| StatsRun::of(*l)).collect();
        for round in 0..p.stats_rounds {
            interrupted()?;
            match STATS_ORDER[round % STATS_ORDER.len()] {
                Stats::Ours => self.stats_of_ours(exe, p, &mut out)?,
                Stats::Empty => self.stats_of_bench(p, &mut out, None)?,
                Stats::Stopping(part) => self.stats_of_bench(p, &mut out, Some(part))?,
            }
        }
        Ok(out)
    }

    /// One round of every load with `observer run` attached.
    fn stats_of_ours(&self, exe: &Path, p: &Params, out: &mut [StatsRun]) -> Result<()> {
        let mut daemon: Option<(Daemon, bool)> = None;
        for run in out {
            // The distinct flows get a daemon with room for all of them
            // (past half full it gives back flows that did not grow);
            // the others the daemon as it comes.
            let roomy = run.kind.distinct();
            if daemon.as_ref().is_none_or(|(_, r)| *r != roomy) {
                // One daemon attached at a time.
                drop(daemon.take());
                let capacity = (2 * 2 * p.distinct_flows).next_power_of_two().to_string();
                let extra: &[&str] = if roomy {
                    &["--flow-capacity", &capacity]
                } else {
                    &[]
                };
                daemon = Some((self.observer(exe, extra)?, roomy));
            }
            let Some((d, _)) = &daemon else {
                unreachable!("a daemon was just started")
            };
            if matches!(run.kind, Load::KnownFlows { .. }) {
                // Measured once the daemon has taken in the new flows (the
                // poll after them does the most work), as it runs after:
                // two more polls, as the first may have begun before the
                // last packets.
                d.wait_polls(2, Duration::from_secs(30))?;
            }
            let before = prog_stats(d.pid())?;
            let (cpu0, t0) = (procfs::cpu_time(d.pid())?, Instant::now());
            let pps = self.stats_load(p, run.kind)?;
            let wall = t0.elapsed().as_secs_f64();
            let cpu = (procfs::cpu_time(d.pid())? - cpu0).as_secs_f64();
            // Only the attached classifiers (not the daemon's clock).
            let programs = grown(&before, &prog_stats(d.pid())?, |name| {
                name.starts_with("eth_") || name.starts_with("l3_")
            });
            run.add_ours(programs, wall, pps * wall, cpu);
        }
        Ok(())
    }

    /// One round of every load with programs the bench attaches: the
    /// empty program, or ours stopping after `part`.
    fn stats_of_bench(
        &self,
        p: &Params,
        out: &mut [StatsRun],
        part: Option<StopAfter>,
    ) -> Result<()> {
        let _attached = match part {
            None => self.attach_empty()?,
            Some(part) => self.attach_stopping(part)?,
        };
        let me = std::process::id();
        for run in out {
            let before = prog_stats(me)?;
            self.stats_load(p, run.kind)?;
            let ran = grown(&before, &prog_stats(me)?, |name| match part {
                None => name == object::EMPTY,
                Some(_) => name.starts_with("eth_"),
            });
            let into = match part {
                None => &mut run.empty,
                Some(StopAfter::Parse) => &mut run.parse_only,
                Some(_) => &mut run.sizes_only,
            };
            merge(into, ran);
        }
        Ok(())
    }

    /// One load of the statistics segment; returns the UDP packets per
    /// second sent (0 for TCP).
    fn stats_load(&self, p: &Params, load: Load) -> Result<f64> {
        Ok(match load {
            Load::Udp { pps, streams } => self.udp(p.stats_seconds, Some((pps, streams)))?.0,
            Load::Tcp => {
                self.tcp(p.stats_seconds)?;
                0.0
            }
            Load::NewFlows { flows } => self.each_flow_in_turn(flows, 0.0, 0)?,
            Load::KnownFlows { flows } => {
                self.each_flow_in_turn(flows, f64::from(p.stats_seconds), 1)?
            }
        })
    }

    /// One `UDP_LEN`-byte datagram from pod A to each of `flows` flows to
    /// pod B in turn (source sockets x destination ports, so that no two
    /// packets in a row are of one flow), turn after turn until `seconds`
    /// have passed (one turn at least), each turn in the order
    /// [`frames::visiting_order`] gives it (numbered from `first_turn`:
    /// 0, in order, for new flows); returns the packets sent per
    /// second. The ports are closed: pod B drops the packets (its ICMP
    /// answers are rate-limited to a few).
    fn each_flow_in_turn(&self, flows: u32, seconds: f64, first_turn: u32) -> Result<f64> {
        within(&self.pod_a.0, || -> Result<f64> {
            // On the iperf3 client's CPU.
            let _pin = (cpus() > 1)
                .then(|| cpu::Pinned::to(0))
                .transpose()
                .context("pinning the sender to CPU 0")?;
            let sockets = flows.div_ceil(PORTS_PER_SOCKET);
            let sockets: Vec<UdpSocket> = (0..sockets)
                .map(|_| UdpSocket::bind((POD_A, 0)))
                .collect::<std::io::Result<_>>()
                .context("binding pod A's UDP sockets")?;
            let to: Ipv4Addr = POD_B.parse()?;
            let payload = [0u8; UDP_LEN];
            let (t0, mut sent) = (Instant::now(), 0u64);
            for turn in first_turn.. {
                for i in frames::visiting_order(flows as usize, turn) {
                    let i = i as u32;
                    let socket = &sockets[(i % sockets.len() as u32) as usize];
                    let port = FIRST_PORT + (i / sockets.len() as u32) as u16;
                    socket
                        .send_to(&payload, (to, port))
                        .context("sending from pod A")?;
                    sent += 1;
                }
                interrupted()?;
                if t0.elapsed().as_secs_f64() >= seconds {
                    break;
                }
            }
            Ok(sent as f64 / t0.elapsed().as_secs_f64())
        })?
    }
}

/// A load of the statistics segment.
#[derive(Clone, Copy)]
enum Load {
    /// UDP at a total rate over streams (iperf3): a few hot flows.
    Udp { pps: u64, streams: u32 },
    /// TCP, one flow, at full speed (GSO packets).
    Tcp,
    /// One packet to each of many flows: each the first of its flow.
    NewFlows { flows: u32 },
    /// The same flows, known, turn after turn: each packet follows
    /// another flow's.
    KnownFlows { flows: u32 },
}

impl Load {
    fn distinct(self) -> bool {
        matches!(self, Self::NewFlows { .. } | Self::KnownFlows { .. })
    }

    fn key(self) -> &'static str {
        match self {
            Self::Udp { .. } => "hot_udp",
            Self::Tcp => "hot_tcp",
            Self::NewFlows { .. } => "distinct_new",
            Self::KnownFlows { .. } => "distinct_known",
        }
    }

    fn describe(self) -> String {
        match self {
            Self::Udp { pps, streams } => {
                format!("UDP, {UDP_LEN}-byte payload, {pps} pps over {streams} flows")
            }
            Self::Tcp => "TCP, one flow, full speed (GSO packets)".to_owned(),
            Self::NewFlows { flows } => format!(
                "UDP, {UDP_LEN}-byte payload, {flows} distinct flows, one packet each: every packet a new flow"
            ),
            Self::KnownFlows { flows } => format!(
                "UDP, {UDP_LEN}-byte payload, the same {flows} flows in turn, again and again, in a shuffled order each turn: every packet a known flow after another flow's"
            ),
        }
    }
}

/// What the programs `keep` names ran between two [`prog_stats`] reads
/// (those that ran at all).
fn grown(
    before: &BTreeMap<String, (u64, u64)>,
    after: &BTreeMap<String, (u64, u64)>,
    keep: impl Fn(&str) -> bool,
) -> Vec<ProgStats> {
    after
        .iter()
        .filter_map(|(name, &(t1, c1))| {
            let (t0, c0) = before.get(name).copied().unwrap_or((0, 0));
            let (t, c) = (t1.saturating_sub(t0), c1.saturating_sub(c0));
            (keep(name) && c > 0).then(|| ProgStats {
                program: name.clone(),
                run_cnt: c,
                run_time_ns: t,
                ns_per_run: t as f64 / c as f64,
            })
        })
        .collect()
}

/// (run_time_ns, run_cnt) of each BPF program the daemon holds, by name.
fn prog_stats(pid: u32) -> Result<BTreeMap<String, (u64, u64)>> {
    let names: BTreeMap<u32, String> = aya::programs::loaded_programs()
        .filter_map(|p| p.ok())
        .map(|p| (p.id(), p.name_as_str().unwrap_or("?").to_owned()))
        .collect();
    let mut out = BTreeMap::new();
    for info in procfs::bpf_fds(pid, "run_cnt")? {
        let id = procfs::num(&info, "prog_id") as u32;
        let name = names
            .get(&id)
            .cloned()
            .unwrap_or_else(|| format!("id {id}"));
        out.insert(
            name,
            (
                procfs::num(&info, "run_time_ns"),
                procfs::num(&info, "run_cnt"),
            ),
        );
    }
    Ok(out)
}

fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
