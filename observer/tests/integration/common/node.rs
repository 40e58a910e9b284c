//! A node of our own for daemon tests: a network namespace, and `observer
//! run` in it with a socket, pin directory and state file of its own (tests
//! run in parallel; the BPF file system is one for all namespaces), all
//! removed on drop even when the test fails.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use observer::api::{Client, FlowView, InterfaceView, StatusView};

use super::sh;

static N: AtomicU32 = AtomicU32::new(0);

fn unique(tag: &str) -> String {
    format!(
        "obst-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A network namespace removed on drop, even when the test fails.
pub struct Netns(pub String);

impl Netns {
    pub fn new(tag: &str) -> Self {
        let name = unique(tag);
        sh(&["ip", "netns", "add", &name]);
        sh(&["ip", "-n", &name, "link", "set", "lo", "up"]);
        Netns(name)
    }

    pub fn ip(&self, args: &[&str]) -> String {
        let mut full = vec!["ip", "-n", &self.0];
        full.extend_from_slice(args);
        sh(&full)
    }

    pub fn exec(&self, args: &[&str]) -> String {
        let mut full = vec!["ip", "netns", "exec", &self.0];
        full.extend_from_slice(args);
        sh(&full)
    }

    /// Runs `f` on a thread that entered this namespace (sockets made there
    /// stay in it).
    pub fn within<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        observer::lab::netns::within(&self.0, f).unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// A Calico-like pod: a veth `cali` (in this namespace, `node_ip/24`)
    /// to `eth0` in a new namespace (`pod_ip/24`).
    pub fn pod(&self, cali: &str, node_ip: &str, pod_ip: &str) -> Netns {
        let pod = Netns::new("pod");
        self.ip(&[
            "link", "add", cali, "type", "veth", "peer", "name", "eth0", "netns", &pod.0,
        ]);
        self.ip(&["addr", "add", &format!("{node_ip}/24"), "dev", cali]);
        self.ip(&["link", "set", cali, "up"]);
        pod.ip(&["addr", "add", &format!("{pod_ip}/24"), "dev", "eth0"]);
        pod.ip(&["link", "set", "eth0", "up"]);
        pod
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// Where a node's daemons keep what outlives them: the pins and the state
/// file, shared by every daemon started on it (so that a restart takes
/// over), removed on drop.
pub struct Keep {
    pub pins: PathBuf,
    pub dir: tempfile::TempDir,
}

impl Keep {
    /// Pins on a BPF file system of its own: `ip netns exec`, which starts
    /// the daemons, hides the host's `/sys/fs/bpf`.
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let bpffs = dir.path().join("bpf");
        observer::datapath::pin::mount_private_bpffs(&bpffs).expect("mount a bpffs");
        Keep {
            pins: bpffs.join("observer"),
            dir,
        }
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("api.sock")
    }

    pub fn state_file(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// The arguments that make a daemon use these.
    pub fn args(&self) -> Vec<String> {
        vec![
            "--socket".into(),
            self.socket().display().to_string(),
            "--pin-path".into(),
            self.pins.display().to_string(),
            "--state-file".into(),
            self.state_file().display().to_string(),
        ]
    }
}

impl Default for Keep {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Keep {
    fn drop(&mut self) {
        observer::datapath::pin::unmount(&self.dir.path().join("bpf"));
    }
}

/// `observer run` in a namespace, stopped with SIGTERM on drop.
pub struct Daemon {
    child: Option<Child>,
    pub socket: PathBuf,
    /// Its own pins and state when not given a [`Keep`] to share.
    _keep: Option<Keep>,
}

impl Daemon {
    /// A daemon with pins and state of its own.
    pub fn start(ns: &Netns, extra: &[&str]) -> Self {
        Self::start_with(ns, extra, |_| {})
    }

    /// [`start`](Self::start) with `tweak` applied to the command.
    pub fn start_with(ns: &Netns, extra: &[&str], tweak: impl FnOnce(&mut Command)) -> Self {
        let keep = Keep::new();
        let mut d = Self::spawn_with(ns, &keep.socket(), &keep.args(), extra, tweak);
        d._keep = Some(keep);
        d.wait_answers();
        d
    }

    /// A daemon using `keep`'s socket, pins and state file: one started
    /// after it on the same `keep` takes over from it.
    pub fn start_keeping(ns: &Netns, keep: &Keep, extra: &[&str]) -> Self {
        let d = Self::spawn_with(ns, &keep.socket(), &keep.args(), extra, |_| {});
        d.wait_answers();
        d
    }

    /// `observer run --socket socket extra...` in `ns`, pinning nothing
    /// unless `extra` says, with `tweak` applied to the command; does not
    /// wait for it.
    pub fn spawn(
        ns: &Netns,
        socket: &Path,
        extra: &[&str],
        tweak: impl FnOnce(&mut Command),
    ) -> Self {
        let own = ["--socket".into(), socket.display().to_string()];
        Self::spawn_with(ns, socket, &own, extra, tweak)
    }

    fn spawn_with(
        ns: &Netns,
        socket: &Path,
        own: &[String],
        extra: &[&str],
        tweak: impl FnOnce(&mut Command),
    ) -> Self {
        let mut cmd = Command::new("ip");
        cmd.args([
            "netns",
            "exec",
            &ns.0,
            env!("CARGO_BIN_EXE_observer"),
            "run",
        ]);
        // What `extra` gives wins over our own settings.
        let given = |flag: &str| extra.contains(&flag);
        for pair in own.chunks(2) {
            if !given(&pair[0]) {
                cmd.args(pair);
            }
        }
        if !given("--pin-path") && !own.iter().any(|a| a == "--pin-path") {
            cmd.args(["--pin-path", "none"]);
        }
        if !given("--poll-interval") {
            cmd.args(["--poll-interval", "200ms"]);
        }
        cmd.args(extra).stdout(Stdio::null());
        tweak(&mut cmd);
        let child = cmd.spawn().expect("start observer run");
        Daemon {
            child: Some(child),
            socket: socket.to_owned(),
            _keep: None,
        }
    }

    fn wait_answers(&self) {
        self.wait_for(
            |d| d.get::<serde_json::Value>("/v1/status").is_some(),
            "the API socket to answer",
        );
    }

    pub fn pid(&self) -> i32 {
        // `ip netns exec` execs the observer: the pid is the daemon's.
        self.child.as_ref().expect("running").id() as i32
    }

    pub fn get<T: serde::de::DeserializeOwned>(&self, path: &str) -> Option<T> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(Client::new(&self.socket).get(path)).ok()
    }

    pub fn wait_for(&self, cond: impl FnMut(&Self) -> bool, what: &str) {
        self.wait_within(super::patience(15), cond, what);
    }

    pub fn wait_within(
        &self,
        limit: Duration,
        mut cond: impl FnMut(&Self) -> bool,
        what: &str,
    ) -> Duration {
        let started = Instant::now();
        while started.elapsed() < limit {
            if cond(self) {
                return started.elapsed();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("timed out waiting for {what}");
    }

    pub fn interfaces(&self) -> Vec<InterfaceView> {
        self.get("/v1/interfaces").expect("interfaces")
    }

    pub fn flows(&self) -> Vec<FlowView> {
        self.get("/v1/flows").expect("flows")
    }

    pub fn status(&self) -> StatusView {
        self.get("/v1/status").expect("status")
    }

    /// Waits for the next poll to end, so that what happened before the
    /// call is in the answers after it.
    pub fn wait_poll(&self) {
        let polls = self.status().polls;
        self.wait_for(|d| d.status().polls >= polls + 2, "two more polls");
    }

    /// Waits until `iface` is attached.
    pub fn wait_attached(&self, iface: &str) {
        self.wait_for(
            |d| {
                d.interfaces()
                    .iter()
                    .any(|i| i.name == iface && i.attached_via.is_some())
            },
            &format!("{iface} attached"),
        );
    }

    /// SIGTERM, and the exit status.
    pub fn stop(&mut self) -> ExitStatus {
        self.signal(libc::SIGTERM)
    }

    /// Sends `signal` and waits for the exit.
    pub fn signal(&mut self, signal: i32) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(child.id() as i32, signal) };
        child.wait().expect("wait for daemon")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.child.is_some() {
            let _ = self.stop();
        }
    }
}

/// Metrics served on `address` inside a namespace.
pub fn scrape(ns: &Netns, address: SocketAddr) -> String {
    super::prometheus::fetch(Some(&ns.0), &format!("http://{address}/metrics"))
        .unwrap_or_else(|e| panic!("scraping {address}: {e}"))
}

/// The sum of every sample of `metric` whose labels contain all of
/// `labels` (`key="value"` strings) in a text exposition.
pub fn sum(exposition: &str, metric: &str, labels: &[&str]) -> u64 {
    exposition
        .lines()
        .filter(|l| l.starts_with(metric) && l[metric.len()..].starts_with('{'))
        .filter(|l| labels.iter().all(|want| l.contains(want)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// The names of the TCX programs on an interface's (ingress, egress), as
/// the kernel lists them (Debian's bpftool cannot).
pub fn tcx_programs(ns: &Netns, iface: &str) -> (Vec<String>, Vec<String>) {
    use aya::programs::{SchedClassifier, TcAttachType};
    ns.within(|| {
        let names = |hook| {
            SchedClassifier::query_tcx(iface, hook)
                .map(|(_, progs)| {
                    progs
                        .iter()
                        .map(|p| p.name_as_str().unwrap_or("?").to_owned())
                        .collect()
                })
                .unwrap_or_default()
        };
        (names(TcAttachType::Ingress), names(TcAttachType::Egress))
    })
}
