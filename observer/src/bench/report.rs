//! The report: `report.json` (headline keys plus every figure's details)
//! and `report.md` (the same numbers, each with what was measured). Every
//! headline is the median over the run's full passes, with their spread;
//! a verdict the spread cannot support is called inconclusive.

use std::{fmt::Write as _, path::Path};

use anyhow::{Context as _, Result};
use serde::Serialize;

use super::{
    kernel::KernelResult, machine::MachineLoad, memory::MemoryResult, render::RenderResult,
    scale::ScaleResult, stats::Summary, throughput::ThroughputResult,
};

#[derive(Serialize, Default)]
pub struct Report {
    pub mode: &'static str,
    pub kernel: String,
    pub cpu: String,
    pub cpus_online: usize,
    pub cpus_possible: u32,
    pub started: String,
    pub duration_seconds: f64,
    /// Full passes of the measuring parts in this run.
    pub passes: usize,
    /// Load average, steal and busy time: other load skews every figure.
    pub machine: MachineLoad,
    /// Why this run's figures should not be trusted as they stand (an
    /// overloaded machine, stolen CPU time, passes far apart); empty when
    /// nothing was noticed.
    pub noisy: Vec<String>,

    pub kernel_hot_ratio: Option<f64>,
    pub kernel_distinct_ratio: Option<f64>,
    pub kernel_empty_ns: Option<f64>,
    pub throughput_ratio: Option<f64>,
    pub throughput_ratio_vs_empty: Option<f64>,
    pub veth_hot_ratio: Option<f64>,
    pub veth_distinct_ratio: Option<f64>,
    pub poll_ms_100k: Option<f64>,
    pub metrics_render_ms_10k: Option<f64>,
    pub metrics_bytes_per_series: Option<f64>,
    pub rss_mib_100k: Option<f64>,
    pub map_mib_64cpu: Option<f64>,
    pub targets: Vec<Target>,

    pub memory: Option<MemoryResult>,
    pub pass_results: Vec<Pass>,
    /// Phases that failed, with why.
    pub errors: Vec<String>,
}

/// One full pass of the measuring parts.
#[derive(Serialize, Default)]
pub struct Pass {
    pub pass: usize,
    /// /proc/loadavg when the pass began.
    pub load_average: String,
    pub kernel: Option<KernelResult>,
    pub metrics: Option<RenderResult>,
    pub scale: Option<ScaleResult>,
    pub throughput: Option<ThroughputResult>,
}

#[derive(Serialize)]
pub struct Target {
    pub key: &'static str,
    /// The median over the passes.
    pub value: Option<f64>,
    /// Each pass's value, in order.
    pub passes: Vec<f64>,
    pub spread: Summary,
    /// `<=` or `>=`.
    pub op: &'static str,
    pub target: f64,
    pub met: Option<bool>,
    /// `met`, `missed`, `inconclusive` (some passes meet the target and
    /// some do not: the run cannot tell) or `not measured`.
    pub verdict: &'static str,
    /// (max - min) / median of the passes, percent.
    pub spread_percent: f64,
    /// The passes differ by more than [`NOISY_SPREAD_PERCENT`].
    pub noisy: bool,
    /// What bounds the figure, from the measurements.
    pub bound: String,
}

/// Passes further apart than this (percent of their median) make a figure
/// noisy.
pub const NOISY_SPREAD_PERCENT: f64 = 10.0;
/// Stolen CPU time above this (percent) makes the whole run noisy.
pub const NOISY_STEAL_PERCENT: f64 = 5.0;

impl Report {
    /// A value of every pass that has it.
    fn per_pass(&self, f: impl Fn(&Pass) -> Option<f64>) -> Vec<f64> {
        self.pass_results.iter().filter_map(f).collect()
    }

    /// Fills the headline keys and the targets from the details.
    pub fn conclude(&mut self) {
        let kernel = |f: fn(&KernelResult) -> f64| move |p: &Pass| p.kernel.as_ref().map(f);
        let hot = self.per_pass(kernel(|k| k.hot_ratio));
        let distinct = self.per_pass(kernel(|k| k.distinct.ratio.median));
        let empty = self.per_pass(kernel(|k| k.empty_ns));
        let tp = self.per_pass(|p| p.throughput.as_ref().map(|t| t.ratio));
        let tp_empty = self.per_pass(|p| p.throughput.as_ref().map(|t| t.ratio_vs_empty));
        let veth = |loads: &'static [&'static str]| {
            move |p: &Pass| {
                let t = p.throughput.as_ref()?;
                t.bpf_stats
                    .iter()
                    .filter(|s| loads.contains(&s.load))
                    .map(|s| s.ratio_vs_empty())
                    .try_fold(f64::NEG_INFINITY, |worst, r| Some(worst.max(r?)))
                    .filter(|r| r.is_finite())
            }
        };
        let veth_hot = self.per_pass(veth(&["hot_udp"]));
        let veth_distinct = self.per_pass(veth(&["distinct_new", "distinct_known"]));
        fn at_100k(p: &Pass) -> Option<&super::scale::DaemonScale> {
            p.scale
                .as_ref()
                .and_then(|s| s.daemon.iter().find(|d| d.flows == 100_000))
        }
        let poll = self.per_pass(|p| at_100k(p).map(|d| d.poll_ms.median));
        // The peak: what a memory limit has to allow.
        let rss = self.per_pass(|p| at_100k(p).map(|d| d.peak_rss_mib));
        let render = self.per_pass(|p| p.metrics.as_ref().map(|m| m.ms.median));
        let per_series = self.per_pass(|p| p.metrics.as_ref().map(|m| m.bytes_per_flow_series));
        let map = self
            .memory
            .as_ref()
            .map(|m| vec![m.map_mib_64cpu])
            .unwrap_or_default();
        let median = |v: &[f64]| (!v.is_empty()).then(|| Summary::of(v).median);
        self.kernel_hot_ratio = median(&hot);
        self.kernel_distinct_ratio = median(&distinct);
        self.kernel_empty_ns = median(&empty);
        self.throughput_ratio = median(&tp);
        self.throughput_ratio_vs_empty = median(&tp_empty);
        self.veth_hot_ratio = median(&veth_hot);
        self.veth_distinct_ratio = median(&veth_distinct);
        self.poll_ms_100k = median(&poll);
        self.rss_mib_100k = median(&rss);
        self.metrics_render_ms_10k = median(&render);
        self.metrics_bytes_per_series = median(&per_series);
        self.map_mib_64cpu = median(&map);

        let last = self.pass_results.last();
        let k = last.and_then(|p| p.kernel.as_ref());
        let hot_bound = k.map_or(String::new(), |k| {
            let cases: Vec<String> = k
                .cases
                .iter()
                .map(|c| format!("{} {:.2}", c.name, c.ratio.median))
                .collect();
            format!(
                "median of the mix's cases ({}, last pass); the hot path is parse + the packet's sizes + the per-CPU cache's check of the flow's 44-byte key + plain adds to the counts waiting in that cache entry (flushed into the flow's shared slot and the interface totals before each read); ours stopping after the parse {:.2}, after the sizes {:.2} (the rest, {:.2}, is the flow's counters); the empty program takes {:.1} ns per run",
                cases.join(", "),
                k.parse_only_ratio,
                k.sizes_only_ratio,
                k.hot_ratio - k.sizes_only_ratio,
                k.empty_ns
            )
        });
        let distinct_bound = k.map_or(String::new(), |k| {
            let d = &k.distinct;
            format!(
                "a new flow per packet (an index lookup that misses, then a slot never used, taken by compare-and-swap, and its index entry): median {:.0} ns beside {:.0} ns for the empty program's single run (timer reads included); a known flow whose packet follows another flow's, in a shuffled order (an index lookup that finds it): {:.0} ns, {:.2}x; the same with {} flows, whose index entries and slots stay in the CPU's caches: {:.0} ns, {:.2}x (the difference, {:.0} ns, is memory's)",
                d.filling_ours_ns.median,
                d.empty_ns.median,
                d.known_ours_ns.median,
                d.known_ratio,
                d.resident_flows,
                d.resident_known_ns.median,
                d.resident_ratio,
                d.known_ours_ns.median - d.resident_known_ns.median
            )
        });
        let t = last.and_then(|p| p.throughput.as_ref());
        let tp_bound = t.map_or(String::new(), |t| {
            let Some(udp) = t.figures.first() else {
                return String::new();
            };
            // Small UDP packets keep the sending CPU busy with the whole path
            // (both veths, forwarding, both hooks): our share of it is what
            // the pps can lose.
            let budget = 1e9 / udp.nothing.median.max(1.0);
            let ours: f64 = t
                .bpf_stats
                .first()
                .map_or(0.0, |s| s.programs.iter().map(|p| p.ns_per_run).sum());
            let ratios: Vec<String> = t
                .figures
                .iter()
                .map(|f| format!("{} {:.3}", f.name, f.ratio.median))
                .collect();
            format!(
                "{} (last pass). A 64-byte UDP packet costs the sending CPU {:.0} ns end to end with nothing attached; our two hooks on its path cost {:.0} ns together (bpf_stats, its clock reads included): expected ratio near {:.3}. The empty program attached the same way gives {:.3} (UDP pps sent): TC hooks alone cost that much. Spread with nothing attached: UDP sent {}",
                ratios.join(", "),
                budget,
                ours,
                budget / (budget + ours),
                udp.empty_ratio.median,
                rel_iqr(&udp.nothing)
            )
        });
        let tp_empty_bound = t.map_or(String::new(), |t| {
            let f: Vec<String> = t
                .figures
                .iter()
                .map(|f| format!("{} {}", f.name, f.vs_empty.show(3)))
                .collect();
            format!(
                "observer / empty program within each round, the lower of the UDP figures (last pass: {}): our programs' cost beyond a TC program's",
                f.join("; ")
            )
        });
        let veth_bound = |loads: &[&str]| {
            t.map_or(String::new(), |t| {
                let runs: Vec<String> = t
                    .bpf_stats
                    .iter()
                    .filter(|s| loads.contains(&s.load))
                    .map(|s| {
                        let (parse, sizes) = s.parts_ns_per_run();
                        format!(
                            "{}: ours {:.1} ns per run (stopping after the parse {:.1}, after the sizes {:.1}), the empty program {:.1} ns",
                            s.about,
                            s.ours_ns_per_run().unwrap_or(0.0),
                            parse.unwrap_or(0.0),
                            sizes.unwrap_or(0.0),
                            s.empty_ns_per_run().unwrap_or(0.0)
                        )
                    })
                    .collect();
                format!(
                    "bpf_stats on the cali veths (run_time_ns / run_cnt, over all four hooks; the statistics' clock reads included on both sides), ours over the empty program's under the same load (last pass: {})",
                    runs.join("; ")
                )
            })
        };
        let veth_hot_bound = veth_bound(&["hot_udp"]);
        let veth_distinct_bound = format!(
            "the higher of the two loads; {}",
            veth_bound(&["distinct_new", "distinct_known"])
        );
        let scale = last.and_then(|p| p.scale.as_ref());
        let (poll_bound, rss_bound) = scale.map_or((String::new(), String::new()), |s| {
            let w = s.in_process.iter().find(|w| w.flows == 100_000);
            let d = s.daemon.iter().find(|d| d.flows == 100_000);
            (
                format!(
                    "the daemon's whole poll (flow map, datapath counters, table, metrics) with {} live flows, none changed: every slot handed out is read in place (in this process: read {:.1} ms + table {:.1} ms); with every flow changed, in this process: {:.1} ms (last pass)",
                    d.map_or(0, |d| d.live_entries),
                    w.map_or(0.0, |w| w.read_ms.median),
                    w.map_or(0.0, |w| w.table_ms.median),
                    w.map_or(0.0, |w| w.all_changed_poll_ms.median),
                ),
                format!(
                    "peak RSS (VmHWM); {:.1} MiB with no flows, then {:.0} bytes per live flow (flow table, the poll's memory of each slot, the slots mapped)",
                    d.map_or(0.0, |d| d.rss_mib_empty),
                    s.rss_bytes_per_flow
                ),
            )
        });
        let render_bound = last
            .and_then(|p| p.metrics.as_ref())
            .map_or(String::new(), |m| {
                format!(
                    "OpenMetrics text of every family, {} flow label sets (packets and bytes each): {} bytes, {:.0} bytes per flow label set (its two samples); the update after a poll in which all of them grew: {:.1} ms the first time (every series resolved), then {:.1} ms (last pass)",
                    m.flow_series,
                    m.bytes,
                    m.bytes_per_flow_series,
                    m.first_update_ms,
                    m.update_ms.median
                )
            });
        let map_bound = self.memory.as_ref().map_or(String::new(), |m| {
            let percpu: u64 = m.maps.iter().map(|x| x.per_cpu_bytes).sum();
            format!(
                "{:.1} B per flow slot whatever the CPU count (the slot, its ring position and index entries); per-CPU arrays add {:.1} KiB per CPU",
                m.bytes_per_slot - percpu as f64 * m.possible_cpus as f64 / m.flow_capacity as f64,
                percpu as f64 / 1024.0
            )
        });
        self.targets = vec![
            target("kernel_hot_ratio", hot, "<=", 2.0, hot_bound),
            target("kernel_distinct_ratio", distinct, "<=", 4.0, distinct_bound),
            target(
                "throughput_ratio_vs_empty",
                tp_empty,
                ">=",
                0.99,
                tp_empty_bound,
            ),
            target("throughput_ratio", tp, ">=", 0.95, tp_bound),
            target("veth_hot_ratio", veth_hot, "<=", 2.0, veth_hot_bound),
            target(
                "veth_distinct_ratio",
                veth_distinct,
                "<=",
                4.0,
                veth_distinct_bound,
            ),
            target("poll_ms_100k", poll, "<=", 20.0, poll_bound),
            target("metrics_render_ms_10k", render, "<=", 10.0, render_bound),
            target("rss_mib_100k", rss, "<=", 96.0, rss_bound),
            target("map_mib_64cpu", map, "<=", 64.0, map_bound),
        ];
        self.noisy = self.noise();
    }

    /// What makes this run's figures doubtful: a load average above the
    /// CPU count (others' work shared our CPUs) at the start, at a pass or
    /// at the end; stolen time; headlines whose passes lie far apart.
    fn noise(&self) -> Vec<String> {
        let mut out = Vec::new();
        let cpus = self.cpus_online.max(1) as f64;
        let one_min = |l: &str| {
            l.split_whitespace()
                .next()
                .and_then(|x| x.parse::<f64>().ok())
        };
        let mut loads = vec![("start", self.machine.load_average_start.as_str())];
        for p in &self.pass_results {
            loads.push(("a pass", p.load_average.as_str()));
        }
        loads.push(("end", self.machine.load_average_end.as_str()));
        let worst = loads
            .iter()
            .filter_map(|(at, l)| one_min(l).map(|v| (v, *at)))
            .max_by(|a, b| a.0.total_cmp(&b.0));
        if let Some((v, at)) = worst
            && v > cpus
        {
            out.push(format!(
                "1-minute load average {v:.2} (at {at}) above the {cpus} CPUs: other work shared the CPUs"
            ));
        }
        if self.machine.steal_percent > NOISY_STEAL_PERCENT {
            out.push(format!(
                "{:.1}% of CPU time stolen by the hypervisor",
                self.machine.steal_percent
            ));
        }
        let wide: Vec<String> = self
            .targets
            .iter()
            .filter(|t| t.noisy)
            .map(|t| format!("{} ({:.0}%)", t.key, t.spread_percent))
            .collect();
        if !wide.is_empty() {
            out.push(format!(
                "passes more than {NOISY_SPREAD_PERCENT:.0}% apart: {}",
                wide.join(", ")
            ));
        }
        if self.passes < 3 {
            out.push(format!(
                "{} pass(es): a headline needs at least 3 to have a spread",
                self.passes
            ));
        }
        out
    }

    pub fn write(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        std::fs::write(
            dir.join("report.json"),
            serde_json::to_string_pretty(self)? + "\n",
        )?;
        std::fs::write(dir.join("report.md"), self.markdown())?;
        Ok(())
    }

    /// The headlines, as printed at the end of a run.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "kernel {}, CPU {} ({} CPUs), {} pass(es); load average {} -> {}, steal {:.1}%, busy {:.0}%\n",
            self.kernel,
            self.cpu,
            self.cpus_online,
            self.passes,
            self.machine.load_average_start,
            self.machine.load_average_end,
            self.machine.steal_percent,
            self.machine.busy_percent
        );
        for n in &self.noisy {
            let _ = writeln!(s, "  NOISY: {n}");
        }
        for t in &self.targets {
            let _ = writeln!(
                s,
                "  {:<26} {:>9}  [{}] spread {:.0}%  target {} {:<5} {}{}",
                t.key,
                t.value.map_or("-".into(), |v| format!("{v:.3}")),
                t.passes
                    .iter()
                    .map(|v| format!("{v:.3}"))
                    .collect::<Vec<_>>()
                    .join(" "),
                t.spread_percent,
                t.op,
                t.target,
                t.verdict,
                if t.noisy { " (noisy)" } else { "" }
            );
        }
        for e in &self.errors {
            let _ = writeln!(s, "  error: {e}");
        }
        s
    }

    fn markdown(&self) -> String {
        let mut md = String::new();
        let w = &mut md;
        let _ = writeln!(w, "# observer benchmarks\n");
        let m = &self.machine;
        let _ = writeln!(
            w,
            "`cargo xtask bench{}` on {}: kernel **{}**, CPU **{}** ({} online, {} possible), \
             {} full pass(es), took {:.0} s. Load average at the start `{}`, at each pass {}, \
             at the end `{}`; over the run the CPUs were {:.0}% busy (everyone's work) and \
             {:.1}% stolen by the hypervisor (/proc/stat).\n",
            if self.mode == "quick" { " --quick" } else { "" },
            self.started,
            self.kernel,
            self.cpu,
            self.cpus_online,
            self.cpus_possible,
            self.passes,
            self.duration_seconds,
            m.load_average_start,
            self.pass_results
                .iter()
                .map(|p| format!("`{}`", p.load_average))
                .collect::<Vec<_>>()
                .join(", "),
            m.load_average_end,
            m.busy_percent,
            m.steal_percent
        );
        if !self.noisy.is_empty() {
            let _ = writeln!(
                w,
                "**Noisy run**: {}. Compare figures of this run with each other (the ratios), \
                 not with another run's.\n",
                self.noisy.join("; ")
            );
        }
        if self.mode == "quick" {
            let _ = writeln!(
                w,
                "**Quick mode** (CI smoke): small counts, the numbers are rough.\n"
            );
        }
        let _ = writeln!(w, "## Headlines\n");
        let _ = writeln!(
            w,
            "Each value is the median over the passes; the passes' values follow. A verdict is \
             **inconclusive** when some passes meet the target and others do not.\n"
        );
        let _ = writeln!(
            w,
            "| key | median | passes | target | verdict | what bounds it |"
        );
        let _ = writeln!(w, "| --- | ---: | --- | --- | --- | --- |");
        for t in &self.targets {
            let _ = writeln!(
                w,
                "| `{}` | {} | {} | {} {} | {} | {} |",
                t.key,
                t.value.map_or("not measured".into(), |v| format!("{v:.3}")),
                t.passes
                    .iter()
                    .map(|v| format!("{v:.3}"))
                    .collect::<Vec<_>>()
                    .join(", "),
                t.op,
                t.target,
                match t.verdict {
                    "met" => "met".to_owned(),
                    v => format!("**{v}**"),
                },
                t.bound
            );
        }
        let _ = writeln!(
            w,
            "| `kernel_empty_ns` | {} | | | | the empty SCHED_CLS program, ns per TEST_RUN repetition |",
            self.kernel_empty_ns
                .map_or("-".into(), |v| format!("{v:.2}"))
        );
        let _ = writeln!(
            w,
            "| `metrics_bytes_per_series` | {} | | | | bytes of `/metrics` per flow label set (its packets and bytes samples) |\n",
            self.metrics_bytes_per_series
                .map_or("-".into(), |v| format!("{v:.0}"))
        );
        if let Some(m) = &self.memory {
            memory_md(w, m);
        }
        for p in &self.pass_results {
            let _ = writeln!(
                w,
                "# Pass {} of {} (load average `{}`)\n",
                p.pass, self.passes, p.load_average
            );
            if let Some(k) = &p.kernel {
                kernel_md(w, k);
            }
            if let Some(r) = &p.metrics {
                render_md(w, r);
            }
            if let Some(s) = &p.scale {
                scale_md(w, s);
            }
            if let Some(t) = &p.throughput {
                throughput_md(w, t);
            }
        }
        if !self.errors.is_empty() {
            let _ = writeln!(w, "## Errors\n");
            for e in &self.errors {
                let _ = writeln!(w, "- {e}");
            }
        }
        md
    }
}

fn target(key: &'static str, passes: Vec<f64>, op: &'static str, t: f64, bound: String) -> Target {
    let meets = |v: f64| if op == "<=" { v <= t } else { v >= t };
    let spread = Summary::of(&passes);
    let value = (!passes.is_empty()).then_some(spread.median);
    let met = value.map(meets);
    let verdict = match met {
        None => "not measured",
        Some(_) if meets(spread.min) != meets(spread.max) => "inconclusive",
        Some(true) => "met",
        Some(false) => "missed",
    };
    let spread_percent = if spread.median.abs() > f64::EPSILON {
        (spread.max - spread.min) / spread.median.abs() * 100.0
    } else {
        0.0
    };
    Target {
        key,
        value,
        noisy: passes.len() > 1 && spread_percent > NOISY_SPREAD_PERCENT,
        passes,
        spread,
        spread_percent,
        op,
        target: t,
        met,
        verdict,
        bound,
    }
}

/// The interquartile range relative to the median, e.g. "±1.2%".
fn rel_iqr(s: &Summary) -> String {
    format!(
        "±{:.1}%",
        (s.p75 - s.p25) / 2.0 / s.median.max(f64::MIN_POSITIVE) * 100.0
    )
}

fn kernel_md(w: &mut String, k: &KernelResult) {
    let _ = writeln!(
        w,
        "## In-kernel cost (BPF_PROG_TEST_RUN)\n\n\
         **What:** the kernel's mean time per run of our classifier and of an empty SCHED_CLS \
         program (returns TC_ACT_UNSPEC; same object, same process), on the same frame, \
         {} rounds of one TEST_RUN call each with repeat = {}, beside ours made to stop \
         after the parse and after the packet's sizes and MTU check, just before its \
         flow (where the time goes), the order of the four rotated every round{}. Each case is one flow hit again and again (the burst case: \
         its slot is found through the CPU's memory of recent flows). Ratio = ours/empty within a \
         round; medians, IQR in parentheses. Headline: the median of the cases' ratios \
         ({:.2}; tcp4 alone {:.2}).\n",
        k.rounds,
        k.repeat,
        k.pinned_cpu.map_or(String::new(), |c| format!(
            ", this thread pinned to CPU {c}"
        )),
        k.hot_ratio,
        k.tcp4_ratio
    );
    let _ = writeln!(
        w,
        "| case | program | frame bytes | ours ns | empty ns | ours/empty | parse only/empty | sizes only/empty |"
    );
    let _ = writeln!(w, "| --- | --- | ---: | --- | --- | --- | --- | --- |");
    for c in &k.cases {
        let _ = writeln!(
            w,
            "| {} — {} | `{}` | {} | {} | {} | {} | {} | {} |",
            c.name,
            c.what,
            c.program,
            c.frame_bytes,
            c.ours_ns.show(1),
            c.empty_ns.show(1),
            c.ratio.show(2),
            c.parse_only_ratio.show(2),
            c.sizes_only_ratio.show(2)
        );
    }
    let d = &k.distinct;
    let _ = writeln!(
        w,
        "\n### {} distinct flows\n\n\
         **What:** {} distinct TCP/IPv4 flows (distinct source address and port), one TEST_RUN \
         call per packet (repeat = 1) of our `eth_ingress` and of the empty program, \
         interleaved, into a fresh flow map of the default capacity ({} slots). {} \
         repetition(s), each a pass over the new flows (every packet an insert) and {} more \
         pass(es) over the same flows in a shuffled order (every packet a known flow, found by an \
         index lookup since each packet is of another flow, no insert; in the first pass's \
         order, their slots would be read one after the other, which the prefetcher foresees \
         and real traffic does not). Then {} flows alike, over {} shuffled passes: their index \
         entries and slots stay in the CPU's caches, so that figure is the code's cost, and the \
         known flows' less it the memory's. Per-packet times \
         include the kernel's timer reads around a single run (both programs alike). Headline: \
         median(ours) / median(empty) of each repetition's first pass; median over \
         repetitions.\n",
        d.flows,
        d.flows,
        d.flow_capacity,
        d.repetitions,
        d.passes - 1,
        d.resident_flows,
        super::kernel::RESIDENT_PASSES
    );
    let _ = writeln!(w, "| figure | ns per packet |");
    let _ = writeln!(w, "| --- | --- |");
    let _ = writeln!(
        w,
        "| ours, first passes (every flow new) | {} |",
        d.ours_ns.show(0)
    );
    let _ = writeln!(
        w,
        "| ours, later passes (known flows, cache missed) | {} |",
        d.known_ours_ns.show(0)
    );
    let _ = writeln!(
        w,
        "| ours, {} known flows in the CPU's caches | {} |",
        d.resident_flows,
        d.resident_known_ns.show(0)
    );
    let _ = writeln!(w, "| empty program | {} |", d.empty_ns.show(0));
    let _ = writeln!(
        w,
        "\nRatio **{}** (per repetition: {:.2}–{:.2}); known flows {:.2}; ratio of means \
         {:.2} (ours mean {:.0} ns, max {:.0} ns); ratio of the means of the central 90% \
         {:.2} (single-run times move in steps of the kernel clock here, which the empty \
         program's median feels: its samples range {:.0}–{:.0} ns between the quartiles). \
         Flow inserts {}, insert failures {}; {} flows in the map at the end.\n",
        d.ratio.show(2),
        d.ratio.min,
        d.ratio.max,
        d.known_ratio,
        d.mean_ratio,
        d.ours_ns.mean,
        d.ours_ns.max,
        d.trimmed_mean_ratio,
        d.empty_ns.p25,
        d.empty_ns.p75,
        d.flow_inserts,
        d.flow_insert_failures,
        d.entries_at_end
    );
}

fn throughput_md(w: &mut String, t: &ThroughputResult) {
    let _ = writeln!(
        w,
        "## Throughput on real veths\n\n\
         **What:** {}. iperf3 (Debian's) from pod A to pod B: UDP with 64-byte payloads at full \
         speed (`-b 0`; packets per second sent by the client and received by the server), \
         then TCP (one stream, goodput at the receiver), {} s each, under three setups: \
         nothing attached to the cali veths; the empty SCHED_CLS program attached to both \
         hooks of both (TCX, as the daemon attaches); `observer run` attached. {} round(s), \
         each setup taking each place in the order in turn. Ratios are within each round \
         (to nothing attached, and the observer to the empty program); medians over rounds.\n",
        t.topology, t.seconds_per_test, t.rounds
    );
    let _ = writeln!(
        w,
        "| figure | nothing attached | empty program | observer | empty/nothing | observer/nothing | observer/empty |"
    );
    let _ = writeln!(w, "| --- | --- | --- | --- | --- | --- | --- |");
    for f in &t.figures {
        let d = if f.name.starts_with("TCP") { 2 } else { 0 };
        let _ = writeln!(
            w,
            "| {} | {} | {} | {} | {} | {} | {} |",
            f.name,
            f.nothing.show(d),
            f.empty_program.show(d),
            f.observer.show(d),
            f.empty_ratio.show(3),
            f.ratio.show(3),
            f.vs_empty.show(3)
        );
    }
    let _ = writeln!(
        w,
        "\n`throughput_ratio` = the lowest observer/nothing median: **{:.3}**; \
         `throughput_ratio_vs_empty` = the lower UDP observer/empty median: **{:.3}**.\n",
        t.ratio, t.ratio_vs_empty
    );
    let _ = writeln!(
        w,
        "### Kernel statistics while traffic flows\n\n\
         **What:** `run_time_ns / run_cnt` of the daemon's programs (from their fdinfo), \
         with the kernel's BPF run-time statistics on only for this segment (BPF_ENABLE_STATS: \
         the switch behind `kernel.bpf_stats_enabled`, held by an fd so that it cannot be left \
         on; the sysctl read `{}` afterwards). Each run's time includes part of the \
         statistics' own clock reads. Beside it, the daemon gone, the same of the empty \
         program attached to the same four hooks under the same loads, and of ours \
         attached by the bench and made to stop after the parse, then after the packet's \
         sizes (where the time goes: what is left is the flow's counters and the \
         totals), in rounds ordered ours, empty, parse, sizes, empty, ours (`--quick`: \
         the first four; a drift of the machine weighs on ours and the empty program \
         alike; figures summed over the rounds): ours over the empty program is the real-veth counterpart of \
         `kernel_hot_ratio` and `kernel_distinct_ratio` (`veth_hot_ratio`, \
         `veth_distinct_ratio`). The distinct flows are sent by one socket per 50,000 \
         destination ports, to a daemon with room for all of them (`--flow-capacity` 4 \
         slots per flow: each is seen at two hooks, and past half full the daemon gives \
         back flows that did not grow); the known flows are sent once the daemon has \
         polled twice after the new ones. Also the daemon's CPU (user + system) over the \
         same time, and our programs' total run time as a share of one CPU.\n",
        t.bpf_stats_sysctl
    );
    let _ = writeln!(w, "| load | program | runs | ns per run |");
    let _ = writeln!(w, "| --- | --- | ---: | ---: |");
    for s in &t.bpf_stats {
        for p in &s.programs {
            let _ = writeln!(
                w,
                "| {} | `{}` | {} | {:.1} |",
                s.about, p.program, p.run_cnt, p.ns_per_run
            );
        }
        let bench_attached = [
            ("(all four hooks)", &s.empty),
            ("stopping after the parse", &s.parse_only),
            ("stopping after the sizes", &s.sizes_only),
        ];
        for (what, runs) in bench_attached {
            for e in runs {
                let _ = writeln!(
                    w,
                    "| {} | `{}` {what} | {} | {:.1} |",
                    s.about, e.program, e.run_cnt, e.ns_per_run
                );
            }
        }
    }
    let _ = writeln!(w);
    for s in &t.bpf_stats {
        let achieved = if s.achieved_pps > 0.0 {
            format!(" (achieved {:.0} pps)", s.achieved_pps)
        } else {
            String::new()
        };
        let vs_empty = s
            .ratio_vs_empty()
            .map_or(String::new(), |r| format!("; ours / empty per run {r:.2}"));
        let _ = writeln!(
            w,
            "- {}{achieved}, {} round(s), {:.1} s: our programs {:.2}% of one CPU, the daemon {:.2}%{vs_empty}.",
            s.about, s.rounds, s.seconds, s.classifier_cpu_percent, s.daemon_cpu_percent
        );
    }
    let _ = writeln!(w);
}

fn memory_md(w: &mut String, m: &MemoryResult) {
    let _ = writeln!(
        w,
        "## Kernel map memory\n\n\
         **What:** `memlock` of each map's fd (`/proc/self/fdinfo`: the kernel's own \
         `map_mem_usage`) with the default flow capacity ({} slots), here ({} possible CPUs), \
         and computed for 64 and 128 CPUs: the per-CPU part (per-CPU arrays: entries × \
         value size rounded to 8, per CPU) scaled, the rest as measured. The flow capacity \
         sizes the slot array (128 bytes a slot), the free ring (8 bytes a slot) and the \
         flow index (8-byte entries, four per slot rounded up to a power of two).\n",
        m.flow_capacity, m.possible_cpus
    );
    let _ = writeln!(
        w,
        "| map | type | entries | key | value | here | per CPU | 64 CPUs | 128 CPUs |"
    );
    let _ = writeln!(
        w,
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    let kib = |b: u64| format!("{:.1} KiB", b as f64 / 1024.0);
    for x in &m.maps {
        let _ = writeln!(
            w,
            "| `{}` | {} | {} | {} | {} | {} | {} B | {} | {} |",
            x.name,
            x.map_type,
            x.max_entries,
            x.key_size,
            x.value_size,
            kib(x.memlock),
            x.per_cpu_bytes,
            kib(x.memlock_64cpu),
            kib(x.memlock_128cpu)
        );
    }
    let _ = writeln!(
        w,
        "| **total** | | | | | **{:.2} MiB** | | **{:.2} MiB** | **{:.2} MiB** |",
        m.map_mib, m.map_mib_64cpu, m.map_mib_128cpu
    );
    let _ = writeln!(
        w,
        "\nPer flow slot: slots, ring and index {:.1} B (shared by all CPUs); all maps {:.1} B here, \
         {:.1} B on 64 CPUs, {:.1} B on 128 CPUs.\n",
        m.flow_map_bytes_per_slot,
        m.bytes_per_slot,
        m.bytes_per_slot_64cpu,
        m.bytes_per_slot_128cpu
    );
}

fn scale_md(w: &mut String, s: &ScaleResult) {
    let _ = writeln!(
        w,
        "## Userspace scale\n\n\
         **Poll work, in this process.** A flow map filled by the classifier itself (one \
         TEST_RUN per distinct packet), then the daemon's poll work timed: a read of the \
         slots handed out so far, in place (mapped memory, no syscall), listing the changed \
         ones, then the flow table's update with them. The first \
         poll creates every table entry; later polls are the steady state (no flow changed); \
         \"all changed\": a poll after every flow got one more packet. Map sizes leave room \
         for every flow (past half full the daemon gives back flows that did not grow).\n"
    );
    let _ = writeln!(
        w,
        "| flows | map slots | live entries | fill s | first poll ms | poll ms | read ms | table ms | µs/flow | all changed, poll ms |"
    );
    let _ = writeln!(
        w,
        "| ---: | ---: | ---: | ---: | ---: | --- | --- | --- | ---: | --- |"
    );
    for p in &s.in_process {
        let _ = writeln!(
            w,
            "| {} | {} | {} | {:.2} | {:.1} | {} | {} | {} | {:.3} | {} |",
            p.flows,
            p.flow_capacity,
            p.live_entries,
            p.fill_seconds,
            p.first_poll_ms,
            p.poll_ms.show(1),
            p.read_ms.show(1),
            p.table_ms.show(1),
            p.us_per_flow,
            p.all_changed_poll_ms.show(1)
        );
    }
    let _ = writeln!(
        w,
        "\n**The real daemon.** `observer run` in its own namespace, its flow map filled \
         (its own classifier run on distinct packets, all just seen), then watched over several \
         polls: its own `last_poll_ms` (API `/v1/status`), its resident memory from /proc \
         (VmRSS with no flows; the largest VmRSS just after each poll; VmHWM, the peak, \
         reached during a poll: the headline `rss_mib_100k`) and its CPU (user + system over \
         the polls watched, one CPU = 100%). Then \"changing\": the same daemon watched while \
         a thread of ours sends one more packet to every flow, round after round, through the \
         daemon's classifier, so that each poll puts up to the rate times its interval changed \
         flows through its flow table (the first poll after the start, which saw part of a \
         round, is not counted). Their packets are TEST_RUN's, seen on the loopback, no pod's \
         or tunnel's interface: they get no metrics series, so this is the flow map's read and \
         the table's update, not the metrics' share.\n"
    );
    let _ = writeln!(
        w,
        "| flows | map slots | live entries | poll interval | poll ms | RSS MiB (peak), no flows | RSS MiB after polls | peak RSS MiB | CPU | changing: flows/s | poll ms | CPU |"
    );
    let _ = writeln!(
        w,
        "| ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | --- | ---: |"
    );
    for d in &s.daemon {
        let _ = writeln!(
            w,
            "| {} | {} | {} | {:.0} ms | {} | {:.1} ({:.1}) | {:.1} | {:.1} | {:.2}% | {:.0} | {} | {:.1}% |",
            d.flows,
            d.flow_capacity,
            d.live_entries,
            d.poll_interval_ms,
            d.poll_ms.show(1),
            d.rss_mib_empty,
            d.peak_rss_mib_empty,
            d.rss_mib,
            d.peak_rss_mib,
            d.cpu_percent,
            d.changing.flows_changed_per_s,
            d.changing.poll_ms.show(1),
            d.changing.cpu_percent
        );
    }
    let _ = writeln!(
        w,
        "\nGrowth with the number of live flows (smallest to largest size, real daemon): \
         poll time {:.3} µs per flow, peak RSS {:.0} bytes per flow on average (the flow \
         table grows in power-of-two steps, so memory does too); the \
         daemon's CPU is its poll time over the poll interval, so it grows like the poll \
         time.\n",
        s.poll_us_per_flow, s.rss_bytes_per_flow
    );
    churn_md(w, &s.churn);
}

fn churn_md(w: &mut String, churn: &[super::churn::Churn]) {
    let _ = writeln!(
        w,
        "**Churn.** A real daemon while a thread of ours opens new flows at a steady rate \
         (one packet each, through the daemon's classifier) that then go idle: each takes a \
         slot (a given-back one first) and is given back after the idle timeout. Watched once \
         the live flows level off. Every new flow should find a slot: the kernel's inserts \
         equal the packets sent, with no insert failure. The evicted flows the daemon goes on \
         listing stay under its `--retain-flows` (past it the least recently seen are \
         forgotten), which bounds its memory.\n"
    );
    let _ = writeln!(
        w,
        "| new flows/s (sent) | map slots | idle timeout | poll interval | live entries | --retain-flows | evicted flows listed | forgotten | poll ms | CPU | RSS MiB | sent | inserts | insert failures | vanished |"
    );
    let _ = writeln!(
        w,
        "| ---: | ---: | ---: | ---: | --- | ---: | --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    for c in churn {
        let _ = writeln!(
            w,
            "| {} ({:.0}) | {} | {:.0} ms | {:.0} ms | {} | {} | {} | {} | {} | {:.1}% | {:.1} | {} | {} | {} | {} |",
            c.rate,
            c.sent_per_s,
            c.flow_capacity,
            c.idle_timeout_ms,
            c.poll_interval_ms,
            c.live_entries.show(0),
            c.retain_flows,
            c.evicted_listed.show(0),
            c.flows_forgotten,
            c.poll_ms.show(1),
            c.cpu_percent,
            c.rss_mib,
            c.sent,
            c.flow_inserts,
            c.flow_insert_failures,
            c.vanished
        );
    }
    let _ = writeln!(w);
}

fn render_md(w: &mut String, r: &RenderResult) {
    let _ = writeln!(
        w,
        "## /metrics encoding\n\n\
         **What:** the daemon's `Metrics` fed {} flows of a pod to as many destination ports \
         (one flow label set each, the series cap at {}) over 4 polls in which every flow grew, \
         then every family encoded as OpenMetrics text (what Prometheus asks for), {} times; \
         wall time of one encoding, and of the update after each poll.\n\n\
         {} ms per encoding; {} bytes, {} samples; {:.0} bytes per flow label set (its packets \
         and bytes samples). Update: {:.1} ms the first time (every flow's series resolved), \
         then {} ms.\n",
        r.flow_series,
        r.flow_series,
        r.encodes,
        r.ms.show(2),
        r.bytes,
        r.samples,
        r.bytes_per_flow_series,
        r.first_update_ms,
        r.update_ms.show(2)
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn straddling_passes_are_inconclusive_and_wide_ones_noisy() {
        let t = target("k", vec![1.95, 2.05, 2.0], "<=", 2.0, String::new());
        assert_eq!((t.value, t.verdict), (Some(2.0), "inconclusive"));
        assert!((t.spread_percent - 5.0).abs() < 1e-9);
        assert!(!t.noisy);
        let t = target("k", vec![1.0, 1.5, 1.2], "<=", 2.0, String::new());
        assert_eq!(t.verdict, "met");
        assert!(t.noisy);
        let t = target("k", vec![], "<=", 2.0, String::new());
        assert_eq!(t.verdict, "not measured");
    }

    #[test]
    fn a_loaded_machine_makes_the_run_noisy() {
        let mut r = Report {
            cpus_online: 2,
            passes: 3,
            ..Default::default()
        };
        r.machine.load_average_start = "0.50 0.40 0.30".into();
        r.machine.load_average_end = "1.00 0.40 0.30".into();
        r.conclude();
        assert!(r.noisy.is_empty(), "{:?}", r.noisy);
        r.pass_results.push(Pass {
            load_average: "7.97 7.99 7.27".into(),
            ..Default::default()
        });
        r.machine.steal_percent = 12.0;
        r.conclude();
        assert_eq!(r.noisy.len(), 2, "{:?}", r.noisy);
        assert!(r.noisy[0].contains("7.97"), "{:?}", r.noisy);
        assert!(r.summary().contains("NOISY"));
    }
}
