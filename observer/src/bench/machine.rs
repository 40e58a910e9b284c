//! How loaded the machine was while the benchmarks ran: the load average
//! at the start, at each pass and at the end, and the CPU time the
//! hypervisor stole and other processes took (from `/proc/stat`), so that a
//! reader can tell a figure of a quiet machine from one of a busy one.

use serde::Serialize;

/// The aggregate `cpu` line of /proc/stat, in clock ticks.
#[derive(Clone, Copy, Default)]
struct CpuTicks {
    busy: u64,
    idle: u64,
    steal: u64,
}

fn cpu_ticks() -> CpuTicks {
    let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = text.lines().find(|l| l.starts_with("cpu ")) else {
        return CpuTicks::default();
    };
    // user nice system idle iowait irq softirq steal (guest time is in user)
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    let at = |i: usize| v.get(i).copied().unwrap_or(0);
    CpuTicks {
        busy: at(0) + at(1) + at(2) + at(5) + at(6),
        idle: at(3) + at(4),
        steal: at(7),
    }
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// Started before the first measurement, finished after the last.
pub struct Sampler {
    start: CpuTicks,
    load_start: String,
}

#[derive(Serialize, Default, Clone)]
pub struct MachineLoad {
    /// /proc/loadavg (1, 5, 15 min) at the start and at the end.
    pub load_average_start: String,
    pub load_average_end: String,
    /// Steal time over the run, percent of all CPU time (/proc/stat).
    pub steal_percent: f64,
    /// Busy (non-idle, non-steal) CPU time over the run, percent of all
    /// CPUs: ours and everyone else's.
    pub busy_percent: f64,
}

impl Sampler {
    pub fn start() -> Self {
        Self {
            start: cpu_ticks(),
            load_start: loadavg(),
        }
    }

    pub fn load_now(&self) -> String {
        loadavg()
    }

    pub fn finish(&self) -> MachineLoad {
        let end = cpu_ticks();
        let busy = end.busy.saturating_sub(self.start.busy) as f64;
        let idle = end.idle.saturating_sub(self.start.idle) as f64;
        let steal = end.steal.saturating_sub(self.start.steal) as f64;
        let all = (busy + idle + steal).max(1.0);
        MachineLoad {
            load_average_start: self.load_start.clone(),
            load_average_end: loadavg(),
            steal_percent: steal / all * 100.0,
            busy_percent: busy / all * 100.0,
        }
    }
}
