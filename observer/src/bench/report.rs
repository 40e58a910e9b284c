//! The report: `report.json` (headline keys plus every figure's details)
//! and `report.md` (the same numbers, each with what was measured).

use std::{fmt::Write as _, path::Path};

use anyhow::{Context as _, Result};
use serde::Serialize;

use super::{
    kernel::KernelResult, memory::MemoryResult, scale::ScaleResult, stats::Summary,
    throughput::ThroughputResult,
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
    /// /proc/loadavg before and after: other load skews every figure.
    pub load_average: [String; 2],

    pub kernel_hot_ratio: Option<f64>,
    pub kernel_distinct_ratio: Option<f64>,
    pub kernel_empty_ns: Option<f64>,
    pub throughput_ratio: Option<f64>,
    pub poll_ms_100k: Option<f64>,
    pub rss_mib_100k: Option<f64>,
    pub map_mib_64cpu: Option<f64>,
    pub targets: Vec<Target>,

    pub kernel_cost: Option<KernelResult>,
    pub throughput: Option<ThroughputResult>,
    pub memory: Option<MemoryResult>,
    pub scale: Option<ScaleResult>,
    pub metrics_endpoint: NotMeasured,
    /// Phases that failed, with why.
    pub errors: Vec<String>,
}

#[derive(Serialize)]
pub struct NotMeasured {
    pub measured: bool,
    pub why: &'static str,
}

impl Default for NotMeasured {
    fn default() -> Self {
        Self {
            measured: false,
            why: "the /metrics endpoint does not exist yet (Prometheus export is a later issue): \
                  its render time and size with the series cap reached are not measured",
        }
    }
}

#[derive(Serialize)]
pub struct Target {
    pub key: &'static str,
    pub value: Option<f64>,
    /// `<=` or `>=`.
    pub op: &'static str,
    pub target: f64,
    pub met: Option<bool>,
    /// What bounds the figure, from the measurements.
    pub bound: String,
}

impl Report {
    /// Fills the headline keys and the targets from the details.
    pub fn conclude(&mut self) {
        let k = self.kernel_cost.as_ref();
        self.kernel_hot_ratio = k.map(|k| k.hot_ratio);
        self.kernel_empty_ns = k.map(|k| k.empty_ns);
        self.kernel_distinct_ratio = k.map(|k| k.distinct.ratio.median);
        self.throughput_ratio = self.throughput.as_ref().map(|t| t.ratio);
        let at_100k = self
            .scale
            .as_ref()
            .and_then(|s| s.daemon.iter().find(|d| d.flows == 100_000));
        self.poll_ms_100k = at_100k.map(|d| d.poll_ms.median);
        // The peak: what a memory limit has to allow.
        self.rss_mib_100k = at_100k.map(|d| d.peak_rss_mib);
        self.map_mib_64cpu = self.memory.as_ref().map(|m| m.map_mib_64cpu);

        let hot_bound = k.map_or(String::new(), |k| {
            let h = k.cases.iter().find(|c| c.name == "tcp4");
            format!(
                "parse + one shared LRU-hash lookup with atomic adds per packet: {:.1} ns beside {:.1} ns for the empty program",
                h.map_or(0.0, |h| h.ours_ns.median),
                k.empty_ns
            )
        });
        let distinct_bound = k.map_or(String::new(), |k| {
            let d = &k.distinct;
            format!(
                "a map insert per packet (preallocated LRU hash): median {:.0} ns while the map fills, {:.0} ns once every insert evicts ({:.1}x); empty program {:.0} ns per single run (timer reads included)",
                d.filling_ours_ns.median, d.evicting_ours_ns.median, d.evicting_ratio, d.empty_ns.median
            )
        });
        let tp_bound = self.throughput.as_ref().map_or(String::new(), |t| {
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
                "{}. A 64-byte UDP packet costs the sending CPU {:.0} ns end to end with nothing attached; our two hooks on its path cost {:.0} ns together (bpf_stats, clock reads included): expected ratio near {:.3}. The empty program attached the same way gives {:.3} (UDP pps sent): the TC hooks alone cost that much. Spread with nothing attached: UDP sent {}",
                ratios.join(", "),
                budget,
                ours,
                budget / (budget + ours),
                udp.empty_ratio.median,
                rel_iqr(&udp.nothing)
            )
        });
        let (poll_bound, rss_bound) = self
            .scale
            .as_ref()
            .map_or((String::new(), String::new()), |s| {
                let w = s.in_process.iter().find(|w| w.flows == 100_000);
                (
                    format!(
                        "at 100k flows: batch read of the kernel map {:.1} ms + flow-table update {:.1} ms (in this process); the daemon's poll adds {:.1} ms (table lock, datapath counters, interface bookkeeping over all flows); {:.2} µs per flow",
                        w.map_or(0.0, |w| w.read_ms.median),
                        w.map_or(0.0, |w| w.table_ms.median),
                        at_100k.map_or(0.0, |d| d.poll_ms.median)
                            - w.map_or(0.0, |w| w.poll_ms.median),
                        s.poll_us_per_flow
                    ),
                    format!(
                        "peak RSS (VmHWM); {:.1} MiB with no flows, then {:.0} bytes per live flow (flow table + the poll's read buffer)",
                        at_100k.map_or(0.0, |d| d.rss_mib_empty),
                        s.rss_bytes_per_flow
                    ),
                )
            });
        let map_bound = self.memory.as_ref().map_or(String::new(), |m| {
            let percpu: u64 = m.maps.iter().map(|x| x.per_cpu_bytes).sum();
            format!(
                "flow map {:.1} B per slot whatever the CPU count; per-CPU arrays add {:.1} KiB per CPU",
                m.flow_map_bytes_per_slot,
                percpu as f64 / 1024.0
            )
        });
        self.targets = vec![
            target(
                "kernel_hot_ratio",
                self.kernel_hot_ratio,
                "<=",
                2.5,
                hot_bound,
            ),
            target(
                "kernel_distinct_ratio",
                self.kernel_distinct_ratio,
                "<=",
                8.0,
                distinct_bound,
            ),
            target(
                "throughput_ratio",
                self.throughput_ratio,
                ">=",
                0.97,
                tp_bound,
            ),
            target("poll_ms_100k", self.poll_ms_100k, "<=", 50.0, poll_bound),
            target("rss_mib_100k", self.rss_mib_100k, "<=", 96.0, rss_bound),
            target("map_mib_64cpu", self.map_mib_64cpu, "<=", 64.0, map_bound),
        ];
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
            "kernel {}, CPU {} ({} CPUs)\n",
            self.kernel, self.cpu, self.cpus_online
        );
        for t in &self.targets {
            let _ = writeln!(
                s,
                "  {:<22} {:>10}  target {} {:<5} {}",
                t.key,
                t.value.map_or("-".into(), |v| format!("{v:.3}")),
                t.op,
                t.target,
                match t.met {
                    Some(true) => "met",
                    Some(false) => "MISSED",
                    None => "not measured",
                }
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
        let _ = writeln!(
            w,
            "`cargo xtask bench{}` on {}: kernel **{}**, CPU **{}** ({} online, {} possible), \
             took {:.0} s. Load average before / after: `{}` / `{}`.\n",
            if self.mode == "quick" { " --quick" } else { "" },
            self.started,
            self.kernel,
            self.cpu,
            self.cpus_online,
            self.cpus_possible,
            self.duration_seconds,
            self.load_average[0],
            self.load_average[1]
        );
        if self.mode == "quick" {
            let _ = writeln!(
                w,
                "**Quick mode** (CI smoke): small counts, the numbers are rough.\n"
            );
        }
        let _ = writeln!(w, "## Headlines\n");
        let _ = writeln!(w, "| key | value | target | | what bounds it |");
        let _ = writeln!(w, "| --- | ---: | --- | --- | --- |");
        for t in &self.targets {
            let _ = writeln!(
                w,
                "| `{}` | {} | {} {} | {} | {} |",
                t.key,
                t.value.map_or("not measured".into(), |v| format!("{v:.3}")),
                t.op,
                t.target,
                match t.met {
                    Some(true) => "met",
                    Some(false) => "**missed**",
                    None => "-",
                },
                t.bound
            );
        }
        let _ = writeln!(
            w,
            "| `kernel_empty_ns` | {} | | | the empty SCHED_CLS program, ns per TEST_RUN repetition |\n",
            self.kernel_empty_ns
                .map_or("-".into(), |v| format!("{v:.2}"))
        );
        if let Some(k) = &self.kernel_cost {
            kernel_md(w, k);
        }
        if let Some(t) = &self.throughput {
            throughput_md(w, t);
        }
        if let Some(m) = &self.memory {
            memory_md(w, m);
        }
        if let Some(s) = &self.scale {
            scale_md(w, s);
        }
        let _ = writeln!(
            w,
            "## /metrics\n\nNot measured: {}.\n",
            self.metrics_endpoint.why
        );
        if !self.errors.is_empty() {
            let _ = writeln!(w, "## Errors\n");
            for e in &self.errors {
                let _ = writeln!(w, "- {e}");
            }
        }
        md
    }
}

fn target(
    key: &'static str,
    value: Option<f64>,
    op: &'static str,
    t: f64,
    bound: String,
) -> Target {
    let met = value.map(|v| if op == "<=" { v <= t } else { v >= t });
    Target {
        key,
        value,
        op,
        target: t,
        met,
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
         {} rounds of one TEST_RUN call each with repeat = {}, the order of the two flipped \
         every round{}. Each case is one flow hit again and again (its map entry exists: the \
         update path). Ratio = ours/empty within a round; medians, IQR in parentheses.\n",
        k.rounds,
        k.repeat,
        k.pinned_cpu.map_or(String::new(), |c| format!(
            ", this thread pinned to CPU {c}"
        ))
    );
    let _ = writeln!(
        w,
        "| case | program | frame bytes | ours ns | empty ns | ours/empty |"
    );
    let _ = writeln!(w, "| --- | --- | ---: | --- | --- | --- |");
    for c in &k.cases {
        let _ = writeln!(
            w,
            "| {} — {} | `{}` | {} | {} | {} | {} |",
            c.name,
            c.what,
            c.program,
            c.frame_bytes,
            c.ours_ns.show(1),
            c.empty_ns.show(1),
            c.ratio.show(2)
        );
    }
    let d = &k.distinct;
    let _ = writeln!(
        w,
        "\n### {} distinct flows\n\n\
         **What:** {} distinct TCP/IPv4 flows (distinct source address and port), one TEST_RUN \
         call per packet (repeat = 1) of our `eth_ingress` and of the empty program, \
         interleaved, into a fresh flow map of the default capacity ({} slots): past {} \
         flows every new flow makes the LRU evict one. {} repetition(s), each a pass over the \
         new flows and {} more pass(es) over the same flows (all evicting). Per-packet times \
         include the kernel's timer reads around a single run (both programs alike). Headline: \
         median(ours) / median(empty) of each repetition's first pass; median over \
         repetitions.\n",
        d.flows,
        d.flows,
        d.flow_capacity,
        d.flow_capacity,
        d.repetitions,
        d.passes - 1
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
        "| ours, while the map fills | {} |",
        d.filling_ours_ns.show(0)
    );
    let _ = writeln!(
        w,
        "| ours, once every insert evicts | {} |",
        d.evicting_ours_ns.show(0)
    );
    let _ = writeln!(w, "| empty program | {} |", d.empty_ns.show(0));
    let _ = writeln!(
        w,
        "\nRatio **{}** (per repetition: {:.2}–{:.2}); evicting only {:.2}; ratio of means \
         {:.2} (ours mean {:.0} ns, max {:.0} ns); ratio of the means of the central 90% \
         {:.2} (single-run times move in steps of the kernel clock here, which the empty \
         program's median feels: its samples range {:.0}–{:.0} ns between the quartiles). \
         Flow inserts {}, insert failures {}; {} entries in the map at the end.\n",
        d.ratio.show(2),
        d.ratio.min,
        d.ratio.max,
        d.evicting_ratio,
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
         each setup taking each place in the order in turn. Ratios are within each round, \
         to nothing attached; medians over rounds.\n",
        t.topology, t.seconds_per_test, t.rounds
    );
    let _ = writeln!(
        w,
        "| figure | nothing attached | empty program | observer | empty/nothing | observer/nothing |"
    );
    let _ = writeln!(w, "| --- | --- | --- | --- | --- | --- |");
    for f in &t.figures {
        let d = if f.name.starts_with("TCP") { 2 } else { 0 };
        let _ = writeln!(
            w,
            "| {} | {} | {} | {} | {} | {} |",
            f.name,
            f.nothing.show(d),
            f.empty_program.show(d),
            f.observer.show(d),
            f.empty_ratio.show(3),
            f.ratio.show(3)
        );
    }
    let _ = writeln!(
        w,
        "\nHeadline `throughput_ratio` = the lowest observer/nothing median: **{:.3}**.\n",
        t.ratio
    );
    let _ = writeln!(
        w,
        "### Kernel statistics while traffic flows\n\n\
         **What:** `run_time_ns / run_cnt` of the daemon's programs (from their fdinfo), \
         with the kernel's BPF run-time statistics on only for this segment (BPF_ENABLE_STATS: \
         the switch behind `kernel.bpf_stats_enabled`, held by an fd so that it cannot be left \
         on; the sysctl read `{}` afterwards). Each run's time includes part of the \
         statistics' own clock reads. Also the daemon's CPU (user + system) over the same \
         time, and our programs' total run time as a share of one CPU.\n",
        t.bpf_stats_sysctl
    );
    let _ = writeln!(w, "| load | program | runs | ns per run |");
    let _ = writeln!(w, "| --- | --- | ---: | ---: |");
    for s in &t.bpf_stats {
        for p in &s.programs {
            let _ = writeln!(
                w,
                "| {} | `{}` | {} | {:.1} |",
                s.load, p.program, p.run_cnt, p.ns_per_run
            );
        }
    }
    let _ = writeln!(w);
    for s in &t.bpf_stats {
        let achieved = if s.achieved_pps > 0.0 {
            format!(" (achieved {:.0} pps)", s.achieved_pps)
        } else {
            String::new()
        };
        let _ = writeln!(
            w,
            "- {}{achieved}, {:.1} s: our programs {:.2}% of one CPU, the daemon {:.2}%.",
            s.load, s.seconds, s.classifier_cpu_percent, s.daemon_cpu_percent
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
         value size rounded to 8, per CPU; the shared LRU hash: at most 32 bytes per CPU of \
         bucket-lock counters) scaled, the rest as measured. Not in `memlock`: the LRU's small \
         per-CPU free lists.\n",
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
        "\nPer flow slot: flow map {:.1} B (shared by all CPUs); all maps {:.1} B here, \
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
         TEST_RUN per distinct packet), then the daemon's poll work timed: batch read of the \
         kernel map (BPF_MAP_LOOKUP_BATCH) into a buffer, then the flow table's \
         begin/observe/end. The first poll creates every table entry; later polls are the \
         steady state. Sizes: 10k flows, the default capacity full (65,536 in 65,536 slots; \
         the LRU may have pushed a few out), and 100k flows in a map of 131,072 slots \
         (`--flow-capacity 131072`).\n"
    );
    let _ = writeln!(
        w,
        "| flows | map slots | live entries | fill s | first poll ms | poll ms | read ms | table ms | µs/flow |"
    );
    let _ = writeln!(
        w,
        "| ---: | ---: | ---: | ---: | ---: | --- | --- | --- | ---: |"
    );
    for p in &s.in_process {
        let _ = writeln!(
            w,
            "| {} | {} | {} | {:.2} | {:.1} | {} | {} | {} | {:.3} |",
            p.flows,
            p.flow_capacity,
            p.live_entries,
            p.fill_seconds,
            p.first_poll_ms,
            p.poll_ms.show(1),
            p.read_ms.show(1),
            p.table_ms.show(1),
            p.us_per_flow
        );
    }
    let _ = writeln!(
        w,
        "\n**The real daemon.** `observer run` in its own namespace, its flow map filled \
         (userspace inserts of distinct flows, all just seen), then watched over several \
         polls: its own `last_poll_ms` (API `/v1/status`), its resident memory from /proc \
         (VmRSS with no flows; the largest VmRSS just after each poll; VmHWM, the peak, \
         reached during a poll: the headline `rss_mib_100k`) and its CPU (user + system over \
         the polls watched, one CPU = 100%).\n"
    );
    let _ = writeln!(
        w,
        "| flows | map slots | live entries | poll interval | poll ms | RSS MiB (peak), no flows | RSS MiB after polls | peak RSS MiB | CPU |"
    );
    let _ = writeln!(
        w,
        "| ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: |"
    );
    for d in &s.daemon {
        let _ = writeln!(
            w,
            "| {} | {} | {} | {:.0} ms | {} | {:.1} ({:.1}) | {:.1} | {:.1} | {:.2}% |",
            d.flows,
            d.flow_capacity,
            d.live_entries,
            d.poll_interval_ms,
            d.poll_ms.show(1),
            d.rss_mib_empty,
            d.peak_rss_mib_empty,
            d.rss_mib,
            d.peak_rss_mib,
            d.cpu_percent
        );
    }
    let _ = writeln!(
        w,
        "\nGrowth with the number of live flows (smallest to largest size, real daemon): \
         poll time {:.3} µs per flow, peak RSS {:.0} bytes per flow on average (the flow \
         table and the poll's read buffer grow in power-of-two steps, so memory does too); the \
         daemon's CPU is its poll time over the poll interval, so it grows like the poll \
         time.\n",
        s.poll_us_per_flow, s.rss_bytes_per_flow
    );
}
