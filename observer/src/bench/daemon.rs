//! `observer run` as a child in a namespace, queried over its API socket,
//! stopped with SIGTERM on drop (it then detaches what it attached).

use std::{
    os::fd::OwnedFd,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde::de::DeserializeOwned;

use super::{
    netns::{Netns, Proc, interrupted},
    procfs,
};
use crate::{
    api::Client,
    datapath::{object, sys},
};

pub struct Daemon {
    proc: Proc,
    socket: PathBuf,
    dir: PathBuf,
    log: PathBuf,
    rt: tokio::runtime::Runtime,
}

impl Daemon {
    /// Starts `observer run` in `ns` and waits for its API to answer.
    pub fn start(exe: &Path, ns: &Netns, extra: &[impl AsRef<std::ffi::OsStr>]) -> Result<Self> {
        let dir = std::env::temp_dir().join(format!("{}-daemon", ns.0));
        std::fs::create_dir_all(&dir)?;
        let socket = dir.join("api.sock");
        let log = dir.join("daemon.log");
        let logf = std::fs::File::create(&log)?;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &ns.0])
            .arg(exe)
            .arg("run")
            .arg("--socket")
            .arg(&socket)
            // Measured alone: nothing pinned, nothing left to the next one.
            .args(["--pin-path", "none"])
            .args(extra)
            .env("OBSERVER_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(logf);
        // `ip netns exec` execs the observer: the child's pid is the daemon's.
        let proc = Proc::spawn(&mut cmd, "observer run")?;
        let d = Self {
            proc,
            socket,
            dir,
            log,
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?,
        };
        d.wait_for("its API to answer", Duration::from_secs(20), |d| {
            Ok(d.get::<serde_json::Value>("/v1/status").is_ok())
        })?;
        Ok(d)
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    pub fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        self.rt.block_on(Client::new(&self.socket).get(path))
    }

    pub fn status(&self) -> Result<serde_json::Value> {
        self.get("/v1/status")
    }

    /// Polls `cond` every 50 ms until it holds or `timeout` passes.
    pub fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        mut cond: impl FnMut(&Self) -> Result<bool>,
    ) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            interrupted()?;
            if cond(self)? {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "timed out waiting for the daemon: {what}{}",
                    self.log_tail()
                );
            }
            if let Some(status) = self.exited() {
                bail!("the daemon exited ({status}){}", self.log_tail());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn exited(&self) -> Option<String> {
        // Not reaped here (Proc owns it): a zombie's /proc state is `Z`.
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).ok()?;
        let state = stat.rsplit_once(')')?.1.split_whitespace().next()?;
        (state == "Z").then(|| "zombie".into())
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(10)..].join("\n");
        if tail.is_empty() {
            String::new()
        } else {
            format!("; its log ends with:\n{tail}")
        }
    }

    /// Waits until the daemon has finished `n` more polls.
    pub fn wait_polls(&self, n: u64, timeout: Duration) -> Result<()> {
        let start = polls(&self.status()?);
        self.wait_for("polls", timeout, |d| Ok(polls(&d.status()?) >= start + n))
    }

    /// Watches the daemon over its next `polls_wanted` polls.
    pub fn watch(&self, polls_wanted: u64, timeout: Duration) -> Result<Watched> {
        let pid = self.pid();
        let (cpu0, t0) = (procfs::cpu_time(pid)?, Instant::now());
        let mut seen = polls(&self.status()?);
        let (mut after_polls, mut rss) = (Vec::new(), 0);
        while (after_polls.len() as u64) < polls_wanted {
            interrupted()?;
            if t0.elapsed() > timeout * polls_wanted as u32 {
                bail!("the daemon stopped polling");
            }
            std::thread::sleep(Duration::from_millis(200));
            let st = self.status()?;
            if polls(&st) > seen {
                seen = polls(&st);
                rss = rss.max(procfs::status_bytes(pid, "VmRSS")?);
                after_polls.push(st);
            }
        }
        let cpu = (procfs::cpu_time(pid)? - cpu0).as_secs_f64() / t0.elapsed().as_secs_f64();
        Ok(Watched {
            after_polls,
            rss,
            cpu_percent: cpu * 100.0,
        })
    }

    /// The daemon's `eth_ingress` program, opened by id from among its fds
    /// (its maps are only reachable through it: a flow is a slot and an index
    /// entry).
    pub fn classifier(&self) -> Result<OwnedFd> {
        let pid = self.pid();
        let names: std::collections::BTreeMap<u32, String> = aya::programs::loaded_programs()
            .filter_map(|p| p.ok())
            .map(|p| (p.id(), p.name_as_str().unwrap_or("?").to_owned()))
            .collect();
        let id = procfs::bpf_fds(pid, "run_cnt")?
            .iter()
            .map(|i| procfs::num(i, "prog_id") as u32)
            .find(|id| names.get(id).is_some_and(|n| n == object::ETH_INGRESS))
            .context("the daemon's eth_ingress program not found among its fds")?;
        sys::prog_fd_by_id(id).context("opening the daemon's program")
    }
}

/// What [`Daemon::watch`] saw of the daemon.
pub struct Watched {
    /// Its status (`/v1/status`) after each poll.
    pub after_polls: Vec<serde_json::Value>,
    /// The largest VmRSS seen just after a poll.
    pub rss: u64,
    pub cpu_percent: f64,
}

impl Watched {
    /// The number `key` of its status after each poll (`last_poll_ms`,
    /// `kernel_flow_entries`, ...).
    pub fn each(&self, key: &str) -> Vec<f64> {
        self.after_polls
            .iter()
            .map(|st| st[key].as_f64().unwrap_or(0.0))
            .collect()
    }
}

/// The flags that size a measured daemon's flow map and pace its polls.
pub fn map_and_poll_flags(
    capacity: u32,
    interval: Duration,
    idle_timeout: Duration,
) -> Vec<String> {
    let d = |t: Duration| humantime::format_duration(t).to_string();
    vec![
        "--flow-capacity".into(),
        capacity.to_string(),
        "--poll-interval".into(),
        d(interval),
        "--idle-timeout".into(),
        d(idle_timeout),
    ]
}

/// The polls a `/v1/status` says the daemon has made.
fn polls(status: &serde_json::Value) -> u64 {
    status["polls"].as_u64().unwrap_or(0)
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.proc.stop(Duration::from_secs(10));
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The `observer` binary beside this one (cargo builds both into one
/// directory).
pub fn observer_exe() -> Result<PathBuf> {
    let me = std::env::current_exe()?;
    let exe = me
        .parent()
        .context("no directory for this binary")?
        .join("observer");
    if !exe.exists() {
        bail!(
            "{} is missing: build with `cargo build --release -p observer --bins`",
            exe.display()
        );
    }
    Ok(exe)
}
