//! What only the VM's kernel (Debian's stock 6.1, `cargo xtask vm`) can
//! check; ignored on the host, whose kernel has no IPIP and has TCX:
//! - a real `tunl0` (IPIP) between two namespaces, counted exactly by the
//!   daemon on our L3 entry point (inner bytes, encap `ipip`) and on the
//!   underlay (20 bytes of overhead per packet), attached with clsact;
//! - `--attach-mode tcx` on a kernel without TCX stops the daemon at start
//!   with one clear line, not a verifier dump;
//! - `observer replay` gives the same flows from every capture as the
//!   host's kernel did (`cargo xtask vm` replays them on the host first).

use std::{
    net::UdpSocket,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use observer::api::{FlowView, InterfaceView};

use crate::common::{self, lab::observer, sh};

/// What the daemon takes at most, on a real CPU, to come up or to count.
fn wait() -> Duration {
    common::patience(15)
}

/// A network namespace removed on drop, even when the test fails.
struct Netns(String);

impl Netns {
    fn new(tag: &str) -> Self {
        let name = format!("obsk-{tag}-{}", std::process::id());
        sh(&["ip", "netns", "add", &name]);
        sh(&["ip", "-n", &name, "link", "set", "lo", "up"]);
        Netns(name)
    }

    fn ip(&self, args: &[&str]) {
        let mut full = vec!["ip", "-n", &self.0];
        full.extend_from_slice(args);
        sh(&full);
    }

    /// A counter of `dev` from its statistics, as the kernel keeps them.
    fn stat(&self, dev: &str, counter: &str) -> u64 {
        let path = format!("/sys/class/net/{dev}/statistics/{counter}");
        sh(&["ip", "netns", "exec", &self.0, "cat", &path])
            .trim()
            .parse()
            .expect("a number")
    }

    /// Runs `f` on a thread that entered this namespace (sockets made there
    /// stay in it).
    fn within<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        observer::lab::netns::within(&self.0, f).unwrap_or_else(|e| panic!("{e:#}"))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// `observer run` in `ns`, serving its API on `socket`.
fn observer_run(ns: &Netns, socket: &Path, extra: &[&str]) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args([
        "netns",
        "exec",
        &ns.0,
        env!("CARGO_BIN_EXE_observer"),
        "run",
    ])
    .args(["--poll-interval", "200ms", "--metrics-address", "off"])
    .arg("--socket")
    .arg(socket)
    // Nothing pinned: the test's daemon detaches at exit. Its state file
    // beside its socket, in the test's own directory.
    .args(["--pin-path", "none", "--state-file"])
    .arg(socket.with_file_name("state"))
    .args(extra)
    .stdout(Stdio::null());
    cmd
}

/// `observer run` in a namespace; stopped with SIGTERM on drop.
struct Daemon {
    child: Child,
    socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl Daemon {
    fn start(ns: &Netns, extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("api.sock");
        let child = observer_run(ns, &socket, extra)
            .spawn()
            .expect("start observer run");
        let d = Daemon {
            child,
            socket,
            _dir: dir,
        };
        wait_for(
            || d.query::<serde_json::Value>("status").is_some(),
            "the API",
        );
        d
    }

    fn query<T: serde::de::DeserializeOwned>(&self, verb: &str) -> Option<T> {
        let socket = self.socket.to_str().expect("UTF-8 path");
        let out = common::lab::run(&[verb, "--socket", socket, "-o", "json"]);
        out.status
            .success()
            .then(|| serde_json::from_slice(&out.stdout).ok())
            .flatten()
    }

    fn flows(&self) -> Vec<FlowView> {
        self.query("flows").expect("flows")
    }

    fn interface(&self, name: &str) -> Option<InterfaceView> {
        self.query::<Vec<InterfaceView>>("interfaces")?
            .into_iter()
            .find(|i| i.name == name && !i.gone)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // `ip netns exec` execs the observer: the pid is the daemon's.
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

fn wait_for(mut cond: impl FnMut() -> bool, what: &str) {
    let deadline = Instant::now() + wait();
    while Instant::now() < deadline {
        if cond() {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("timed out after {:?} waiting for {what}", wait());
}

/// The running kernel's (major, minor).
fn kernel_version() -> (u32, u32) {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").expect("osrelease");
    let mut parts = release
        .trim()
        .split(['.', '-'])
        .map(|p| p.parse().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}

#[test]
#[ignore = "needs a kernel with IPIP: run by `cargo xtask vm`"]
fn ipip_over_a_real_tunl0_is_counted_exactly() {
    common::require_root();
    // Loading ipip gives every namespace its own `tunl0`.
    let out = Command::new("modprobe")
        .arg("ipip")
        .output()
        .expect("modprobe");
    assert!(
        out.status.success(),
        "modprobe ipip failed (are /lib/modules/<release> this kernel's?): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let node1 = Netns::new("ipip1");
    let node2 = Netns::new("ipip2");
    node1.ip(&[
        "link", "add", "ul1", "type", "veth", "peer", "name", "ul2", "netns", &node2.0,
    ]);
    // As Calico's IPIP mode does it: the node's tunnel address from its
    // block on tunl0, the peer's block via its underlay address, onlink.
    for (node, dev, underlay, tunnel, peer, peer_block) in [
        (
            &node1,
            "ul1",
            "172.31.0.1/24",
            "10.244.1.1/32",
            "172.31.0.2",
            "10.244.2.0/24",
        ),
        (
            &node2,
            "ul2",
            "172.31.0.2/24",
            "10.244.2.1/32",
            "172.31.0.1",
            "10.244.1.0/24",
        ),
    ] {
        node.ip(&["addr", "add", underlay, "dev", dev]);
        node.ip(&["link", "set", dev, "up"]);
        node.ip(&["addr", "add", tunnel, "dev", "tunl0"]);
        node.ip(&["link", "set", "tunl0", "up"]);
        node.ip(&[
            "route", "add", peer_block, "via", peer, "dev", "tunl0", "onlink", "proto", "bird",
        ]);
    }
    let d = Daemon::start(&node1, &["--underlay", "ul1"]);
    wait_for(
        || {
            ["tunl0", "ul1"]
                .iter()
                .all(|n| d.interface(n).is_some_and(|i| i.attached_via.is_some()))
        },
        "tunl0 and ul1 attached",
    );
    let tunl0 = d.interface("tunl0").unwrap();
    assert_eq!(
        (tunl0.layer.name(), tunl0.attached_via.map(|v| v.name())),
        (
            "l3",
            Some(if kernel_version() < (6, 6) {
                "clsact"
            } else {
                "tcx"
            })
        ),
        "tunl0 is an L3 device; kernels before 6.6 have no TCX"
    );
    let (tx_packets, tx_bytes) = (
        node1.stat("tunl0", "tx_packets"),
        node1.stat("tunl0", "tx_bytes"),
    );

    // Eleven datagrams of 100 bytes through the tunnel, each echoed back:
    // 128 IP bytes inside, 20 more of IPIP header on the underlay.
    const N: u64 = 11;
    let sink = node2.within(|| UdpSocket::bind("10.244.2.1:9000").expect("bind in node2"));
    sink.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let echo = std::thread::spawn(move || {
        let mut buf = [0u8; 200];
        for _ in 0..N {
            let (n, from) = sink.recv_from(&mut buf).expect("a datagram through tunl0");
            sink.send_to(&buf[..n], from).expect("echo");
        }
    });
    node1.within(|| {
        let s = UdpSocket::bind("10.244.1.1:9001").expect("bind in node1");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut buf = [0u8; 200];
        for _ in 0..N {
            s.send_to(&[0x49; 100], "10.244.2.1:9000").expect("send");
            s.recv_from(&mut buf).expect("the echo through tunl0");
        }
    });
    echo.join().unwrap();

    let (out, back) = (("10.244.1.1", "10.244.2.1"), ("10.244.2.1", "10.244.1.1"));
    let find = |flows: &[FlowView], dev: &str, dir: &str, (src, dst): (&str, &str)| {
        flows
            .iter()
            .find(|f| {
                f.interface == dev
                    && f.direction.name() == dir
                    && f.protocol.to_string() == "udp"
                    && (f.src_ip.to_string().as_str(), f.dst_ip.to_string().as_str()) == (src, dst)
            })
            .map(|f| (f.packets, f.bytes, f.encap, f.overhead_bytes))
    };
    let inner = N * 128;
    let want = [
        ("tunl0", "egress", out, 0),
        ("tunl0", "ingress", back, 0),
        ("ul1", "egress", out, N * 20),
        ("ul1", "ingress", back, N * 20),
    ];
    let seen = |flows: &[FlowView]| {
        want.iter()
            .map(|&(dev, dir, ends, _)| find(flows, dev, dir, ends))
            .collect::<Vec<_>>()
    };
    let expected: Vec<_> = want
        .iter()
        .map(|&(_, _, _, overhead)| Some((N, inner, observer::api::Encap::Ipip, overhead)))
        .collect();
    let deadline = Instant::now() + wait();
    while seen(&d.flows()) != expected && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        seen(&d.flows()),
        expected,
        "(packets, inner bytes, encap, overhead) on tunl0 out/in and ul1 out/in: {:#?}",
        d.flows()
    );
    // The kernel's own counters for tunl0 agree: inner packets and bytes.
    assert_eq!(
        (
            node1.stat("tunl0", "tx_packets") - tx_packets,
            node1.stat("tunl0", "tx_bytes") - tx_bytes
        ),
        (N, inner),
        "tunl0's TX counters"
    );
}

#[test]
#[ignore = "needs a kernel older than 6.6 (no TCX): run by `cargo xtask vm`"]
fn tcx_on_a_kernel_without_it_stops_the_daemon_with_one_clear_line() {
    common::require_root();
    let version = kernel_version();
    assert!(
        version < (6, 6),
        "this kernel ({version:?}) has TCX: this test is for older ones (`cargo xtask vm`)"
    );
    let ns = Netns::new("tcx");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut child = observer_run(&ns, &dir.path().join("api.sock"), &["--attach-mode", "tcx"])
        .stderr(Stdio::piped())
        .spawn()
        .expect("start observer run");
    let deadline = Instant::now() + wait();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!(
                "observer run --attach-mode tcx did not stop within {:?}",
                wait()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert!(
        !status.success(),
        "observer run --attach-mode tcx on {version:?}"
    );
    assert!(
        stderr.contains("--attach-mode tcx needs Linux 6.6 or newer"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("verifier") && stderr.lines().count() <= 3,
        "a clear message, not a dump: {stderr}"
    );
}

/// A replay's JSON without what differs from run to run (times).
fn without_times(mut report: serde_json::Value) -> serde_json::Value {
    for flow in report["flows"].as_array_mut().into_iter().flatten() {
        if let Some(flow) = flow.as_object_mut() {
            flow.remove("first_seen");
            flow.remove("last_seen");
        }
    }
    report
}

#[test]
#[ignore = "compares with the host's replays: run by `cargo xtask vm`"]
fn replay_gives_the_hosts_flows() {
    common::require_root();
    let dir = std::env::var_os("OBSERVER_HOST_REPLAY")
        .map(PathBuf::from)
        .expect("OBSERVER_HOST_REPLAY: the host's replays, made by `cargo xtask vm`");
    let pcaps = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/pcaps");
    let mut compared = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("the host's replays") {
        let host_file = entry.unwrap().path();
        let name = host_file
            .file_stem()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let pcap = pcaps.join(format!("{name}.pcap"));
        let guest = observer(&["replay", "-o", "json", pcap.to_str().unwrap()]);
        let host: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&host_file).unwrap()).unwrap();
        assert_eq!(
            without_times(serde_json::from_str(&guest).unwrap()),
            without_times(host),
            "{name}: this kernel's flows (left) vs the host's (right)"
        );
        compared.push(name);
    }
    compared.sort();
    assert!(
        compared.iter().any(|n| n == "vxlan") && compared.len() >= 9,
        "compared only {compared:?}"
    );
}
