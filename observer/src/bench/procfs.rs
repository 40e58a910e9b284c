//! What /proc and /sys say about a process, its BPF objects and the machine.

use std::{collections::BTreeMap, fs, time::Duration};

use anyhow::{Context as _, Result};

/// `key: value` lines of /proc/<pid>/fdinfo/<fd> (or any such file).
pub fn fdinfo(pid: &str, fd: i32) -> Result<BTreeMap<String, String>> {
    let path = format!("/proc/{pid}/fdinfo/{fd}");
    let text = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    Ok(text
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect())
}

pub fn num(info: &BTreeMap<String, String>, key: &str) -> u64 {
    info.get(key).and_then(|v| v.parse().ok()).unwrap_or(0)
}

/// fdinfo of every fd of a process that has `key`: `run_cnt` for BPF
/// programs (links have a `prog_id` too), `map_id` for BPF maps.
pub fn bpf_fds(pid: u32, key: &str) -> Result<Vec<BTreeMap<String, String>>> {
    let dir = format!("/proc/{pid}/fdinfo");
    let mut out = Vec::new();
    for e in fs::read_dir(&dir).with_context(|| format!("listing {dir}"))? {
        let Some(fd) = e?.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        // Fds come and go while we read: skip the ones gone.
        if let Ok(info) = fdinfo(&pid.to_string(), fd)
            && info.contains_key(key)
        {
            out.push(info);
        }
    }
    Ok(out)
}

/// A `kB` field of /proc/<pid>/status, in bytes.
pub fn status_bytes(pid: u32, field: &str) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let text = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().strip_suffix("kB")?.trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .with_context(|| format!("no {field} in {path}"))
}

/// User + system CPU time a process (all its threads) has used so far, to
/// the nanosecond (/proc/<pid>/stat counts 10 ms ticks).
pub fn cpu_time(pid: u32) -> Result<Duration> {
    let mut clock: libc::clockid_t = 0;
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: out-pointers to locals; the clock id comes from the kernel.
    let rc = unsafe {
        match libc::clock_getcpuclockid(pid as libc::pid_t, &mut clock) {
            0 => libc::clock_gettime(clock, &mut ts),
            e => e,
        }
    };
    if rc != 0 {
        anyhow::bail!("reading the CPU clock of pid {pid}: error {rc}");
    }
    Ok(Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32))
}

/// CPUs the kernel sizes per-CPU maps for (`num_possible_cpus()`).
pub fn possible_cpus() -> u32 {
    fs::read_to_string("/sys/devices/system/cpu/possible")
        .ok()
        .map(|s| count_cpu_list(s.trim()))
        .unwrap_or(1)
}

/// Counts a CPU list such as `0-3,8,10-11`.
fn count_cpu_list(s: &str) -> u32 {
    s.split(',')
        .filter_map(|r| match r.split_once('-') {
            Some((a, b)) => Some(b.parse::<u32>().ok()? - a.parse::<u32>().ok()? + 1),
            None => r.parse::<u32>().ok().map(|_| 1),
        })
        .sum()
}

/// The machine the figures come from.
pub fn kernel_release() -> String {
    fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into())
}

pub fn cpu_model() -> String {
    fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("model name")?.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".into())
}

#[cfg(test)]
mod tests {
    #[test]
    fn cpu_lists() {
        assert_eq!(super::count_cpu_list("0-1"), 2);
        assert_eq!(super::count_cpu_list("0-3,8,10-11"), 7);
        assert_eq!(super::count_cpu_list("0"), 1);
    }
}
