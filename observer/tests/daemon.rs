//! The daemon on real interfaces in network namespaces: attaching (TCX and
//! clsact), following 50 interfaces coming and going, exact counts of
//! known traffic, and a shutdown that leaves no tc state behind.

mod common;

use std::{
    net::UdpSocket,
    os::fd::AsRawFd as _,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use common::sh;
use observer::{cli::client::Client, export::api::InterfaceView, flows::view::FlowView};

/// A network namespace removed on drop, even when the test fails.
struct Netns(String);

impl Netns {
    fn new(tag: &str) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "obst-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        sh(&["ip", "netns", "add", &name]);
        sh(&["ip", "-n", &name, "link", "set", "lo", "up"]);
        Netns(name)
    }

    fn ip(&self, args: &[&str]) -> String {
        let mut full = vec!["ip", "-n", &self.0];
        full.extend_from_slice(args);
        sh(&full)
    }

    fn exec(&self, args: &[&str]) -> String {
        let mut full = vec!["ip", "netns", "exec", &self.0];
        full.extend_from_slice(args);
        sh(&full)
    }

    /// Runs `f` on a thread that entered this namespace (sockets made there
    /// stay in it).
    fn within<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/run/netns/{}", self.0);
        std::thread::scope(|s| {
            s.spawn(|| {
                let ns = std::fs::File::open(&path).expect("open netns");
                // SAFETY: setns on this thread only, with a valid fd.
                let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
                f()
            })
            .join()
            .expect("thread in netns")
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// `observer run` in a namespace, stopped with SIGTERM on drop.
struct Daemon {
    child: Option<Child>,
    socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl Daemon {
    fn start(ns: &Netns, extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("api.sock");
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &ns.0,
                env!("CARGO_BIN_EXE_observer"),
                "run",
                "--poll-interval",
                "200ms",
            ])
            .arg("--socket")
            .arg(&socket)
            .args(extra)
            .stdout(Stdio::null())
            .spawn()
            .expect("start observer run");
        let d = Daemon {
            child: Some(child),
            socket,
            _dir: dir,
        };
        d.wait_for(
            |d| d.get::<serde_json::Value>("/v1/status").is_some(),
            "the API socket to answer",
        );
        d
    }

    fn get<T: serde::de::DeserializeOwned>(&self, path: &str) -> Option<T> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(Client::new(&self.socket).get(path)).ok()
    }

    fn wait_for(&self, mut cond: impl FnMut(&Self) -> bool, what: &str) {
        let deadline = Instant::now() + common::patience(15);
        while Instant::now() < deadline {
            if cond(self) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("timed out waiting for {what}");
    }

    fn interfaces(&self) -> Vec<InterfaceView> {
        self.get("/v1/interfaces").expect("interfaces")
    }

    fn flows(&self) -> Vec<FlowView> {
        self.get("/v1/flows").expect("flows")
    }

    /// SIGTERM, and the exit status.
    fn stop(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        // `ip netns exec` execs the observer: the pid is the daemon's.
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
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

/// Everything tc and bpftool show on an interface: empty when we left
/// nothing behind.
fn tc_state(ns: &Netns, dev: &str) -> String {
    let mut s = String::new();
    for dir in ["ingress", "egress"] {
        s += &ns.exec(&["tc", "filter", "show", "dev", dev, dir]);
    }
    s += &ns
        .exec(&["tc", "qdisc", "show", "dev", dev])
        .replace("qdisc noqueue 0: root refcnt 2", "");
    let net = ns.exec(&["bpftool", "net", "show", "dev", dev]);
    // bpftool prints section headers even when empty.
    s += &net
        .lines()
        .filter(|l| {
            !l.trim().is_empty()
                && !l.starts_with("xdp:")
                && !l.starts_with("tc:")
                && !l.starts_with("flow_dissector:")
                && !l.starts_with("netfilter:")
        })
        .collect::<Vec<_>>()
        .join("\n");
    s.trim().to_owned()
}

fn known_udp_counts(mode: &str) {
    common::require_root();
    let node = Netns::new("node");
    let pod = Netns::new("pod");
    node.ip(&[
        "link",
        "add",
        "cali0123456789a",
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        &pod.0,
    ]);
    node.ip(&["addr", "add", "10.99.0.1/24", "dev", "cali0123456789a"]);
    node.ip(&["link", "set", "cali0123456789a", "up"]);
    pod.ip(&["addr", "add", "10.99.0.2/24", "dev", "eth0"]);
    pod.ip(&["link", "set", "eth0", "up"]);
    let mut d = Daemon::start(&node, &["--attach-mode", mode]);
    d.wait_for(
        |d| {
            d.interfaces()
                .iter()
                .any(|i| i.attached_via.as_deref() == Some(mode))
        },
        "the cali interface to be attached",
    );

    // Ten datagrams of 100 bytes each way: 128 IP bytes each.
    let sink = node.within(|| UdpSocket::bind("10.99.0.1:9000").expect("bind in node"));
    pod.within(|| {
        let s = UdpSocket::bind("10.99.0.2:9001").expect("bind in pod");
        for _ in 0..10 {
            s.send_to(&[0x55; 100], "10.99.0.1:9000").expect("send");
        }
    });
    sink.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 200];
    for _ in 0..10 {
        let (_, from) = sink.recv_from(&mut buf).expect("datagram arrives");
        sink.send_to(&buf[..100], from).expect("reply");
    }
    let want = |f: &FlowView, src: &str, dir: &str| {
        f.src_ip == src
            && f.protocol == "udp"
            && f.direction == dir
            && f.interface == "cali0123456789a"
    };
    d.wait_for(
        |d| {
            let flows = d.flows();
            flows
                .iter()
                .any(|f| want(f, "10.99.0.2", "egress") && f.packets == 10)
                && flows
                    .iter()
                    .any(|f| want(f, "10.99.0.1", "ingress") && f.packets == 10)
        },
        "both UDP flows with 10 packets",
    );
    let flows = d.flows();
    let sent = flows
        .iter()
        .find(|f| want(f, "10.99.0.2", "egress"))
        .unwrap();
    assert_eq!(
        (sent.dst_ip.as_str(), sent.src_port, sent.dst_port),
        ("10.99.0.1", 9001, 9000)
    );
    assert_eq!(
        (sent.packets, sent.bytes, sent.encap.as_str()),
        (10, 1280, "none")
    );
    let got = flows
        .iter()
        .find(|f| want(f, "10.99.0.1", "ingress"))
        .unwrap();
    assert_eq!((got.packets, got.bytes, got.src_port), (10, 1280, 9000));

    assert!(d.stop().success(), "daemon exits cleanly on SIGTERM");
    assert_eq!(
        tc_state(&node, "cali0123456789a"),
        "",
        "no tc state left after shutdown"
    );
}

#[test]
fn exact_udp_counts_with_tcx() {
    known_udp_counts("tcx");
}

#[test]
fn exact_udp_counts_with_clsact_and_clean_shutdown() {
    known_udp_counts("clsact");
}

#[test]
fn follows_fifty_interfaces_coming_and_going() {
    common::require_root();
    let node = Netns::new("churn");
    let mut d = Daemon::start(&node, &[]);
    // A non-matching interface stays alone.
    node.ip(&[
        "link", "add", "other0", "type", "veth", "peer", "name", "other1",
    ]);
    let names: Vec<String> = (0..50).map(|i| format!("cali{i:011x}")).collect();
    for (i, n) in names.iter().enumerate() {
        node.ip(&[
            "link",
            "add",
            n,
            "type",
            "veth",
            "peer",
            "name",
            &format!("peer{i}"),
        ]);
    }
    d.wait_for(
        |d| {
            d.interfaces()
                .iter()
                .filter(|i| i.attached_via.is_some() && !i.gone)
                .count()
                == 50
        },
        "all 50 cali interfaces attached",
    );
    assert!(d.interfaces().iter().all(|i| i.name.starts_with("cali")));
    for n in &names[..25] {
        node.ip(&["link", "del", n]);
    }
    d.wait_for(
        |d| {
            d.interfaces()
                .iter()
                .filter(|i| i.attached_via.is_some())
                .count()
                == 25
        },
        "25 interfaces left attached",
    );
    // New ones keep being picked up after deletions.
    node.ip(&[
        "link",
        "add",
        "calinew00000",
        "type",
        "veth",
        "peer",
        "name",
        "peernew",
    ]);
    d.wait_for(
        |d| {
            d.interfaces()
                .iter()
                .any(|i| i.name == "calinew00000" && i.attached_via.is_some())
        },
        "a new interface after churn",
    );
    assert!(d.stop().success());
    for n in names[25..]
        .iter()
        .map(String::as_str)
        .chain(["calinew00000", "other0"])
    {
        assert_eq!(tc_state(&node, n), "", "{n} clean after shutdown");
    }
}

/// Packets and IP bytes per direction of one TCP connection, as tcpdump
/// (an independent decoder) saw them: `(client_to_server, server_to_client)`.
fn tcpdump_totals(pcap: &std::path::Path, client: &str) -> ((u64, u64), (u64, u64)) {
    let text = sh(&[
        "tcpdump",
        "-r",
        pcap.to_str().unwrap(),
        "-t",
        "-nn",
        "-v",
        "tcp",
    ]);
    let (mut up, mut down) = ((0, 0), (0, 0));
    // -v prints "IP (tos 0x0, ttl 64, ..., length 52)" then, on the next
    // line, "    10.99.0.2.40000 > 10.99.0.1.7000: Flags ...".
    let lines: Vec<&str> = text.lines().collect();
    for pair in lines.windows(2) {
        if !pair[0].starts_with("IP (") {
            continue;
        }
        let Some(at) = pair[0].rfind(", length ") else {
            continue;
        };
        let len: u64 = pair[0][at + 9..]
            .trim_end_matches(')')
            .parse()
            .expect("IP length");
        let side = if pair[1].trim_start().starts_with(client) {
            &mut up
        } else {
            &mut down
        };
        side.0 += 1;
        side.1 += len;
    }
    (up, down)
}

#[test]
fn tcp_counts_match_tcpdump() {
    common::require_root();
    let node = Netns::new("tcpn");
    let pod = Netns::new("tcpp");
    let cali = "cali5e1f0c0ffee";
    node.ip(&[
        "link", "add", cali, "type", "veth", "peer", "name", "eth0", "netns", &pod.0,
    ]);
    node.ip(&["addr", "add", "10.99.0.1/24", "dev", cali]);
    node.ip(&["link", "set", cali, "up"]);
    pod.ip(&["addr", "add", "10.99.0.2/24", "dev", "eth0"]);
    pod.ip(&["link", "set", "eth0", "up"]);
    // One skb per wire packet, so that tcpdump's frames are the packets.
    node.exec(&[
        "ethtool", "-K", cali, "tso", "off", "gso", "off", "gro", "off",
    ]);
    pod.exec(&[
        "ethtool", "-K", "eth0", "tso", "off", "gso", "off", "gro", "off",
    ]);
    let d = Daemon::start(&node, &[]);
    d.wait_for(
        |d| {
            d.interfaces()
                .iter()
                .any(|i| i.name == cali && i.attached_via.is_some())
        },
        "attached",
    );

    let dir = tempfile::tempdir().unwrap();
    let pcap = dir.path().join("tcp.pcap");
    let mut dump = Command::new("ip")
        .args([
            "netns",
            "exec",
            &pod.0,
            "tcpdump",
            "-Z",
            "root",
            "--immediate-mode",
            "-i",
            "eth0",
            "-U",
            "-n",
            "-w",
        ])
        .arg(&pcap)
        .arg("tcp")
        .stderr(Stdio::piped())
        .spawn()
        .expect("tcpdump");
    // tcpdump says "listening on" once it captures.
    {
        use std::io::BufRead as _;
        let mut line = String::new();
        std::io::BufReader::new(dump.stderr.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert!(line.contains("listening"), "tcpdump: {line}");
    }

    let listener = node.within(|| std::net::TcpListener::bind("10.99.0.1:7000").expect("listen"));
    let server = std::thread::spawn(move || {
        use std::io::Read as _;
        let (mut s, _) = listener.accept().expect("accept");
        let mut got = Vec::new();
        s.read_to_end(&mut got).expect("read");
        got.len()
    });
    pod.within(|| {
        use std::io::Write as _;
        let mut c = std::net::TcpStream::connect("10.99.0.1:7000").expect("connect");
        c.write_all(&vec![0x42; 200_000]).expect("write");
    });
    assert_eq!(server.join().unwrap(), 200_000);

    // Let the last ACKs pass, then stop the capture.
    std::thread::sleep(Duration::from_millis(500));
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(dump.id() as i32, libc::SIGINT) };
    dump.wait().unwrap();
    let (up, down) = tcpdump_totals(&pcap, "10.99.0.2.");
    assert!(
        up.0 > 100,
        "tcpdump saw {up:?}: {}",
        sh(&["tcpdump", "-r", pcap.to_str().unwrap(), "-nn", "-v", "tcp"])
    );

    fn tcp(dir: &'static str) -> impl Fn(&&FlowView) -> bool {
        move |f| f.interface == "cali5e1f0c0ffee" && f.protocol == "tcp" && f.direction == dir
    }
    let counts = |d: &Daemon| {
        let flows = d.flows();
        let get = |dir| flows.iter().find(tcp(dir)).map(|f| (f.packets, f.bytes));
        (get("egress"), get("ingress"))
    };
    let deadline = Instant::now() + common::patience(10);
    while counts(&d) != (Some(up), Some(down)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        counts(&d),
        (Some(up), Some(down)),
        "daemon (egress, ingress) vs tcpdump"
    );
    let flows = d.flows();
    let sent = flows.iter().find(tcp("egress")).unwrap();
    assert_eq!(
        (
            sent.dst_port,
            sent.tcp_flags.contains("SYN"),
            sent.tcp_flags.contains("FIN")
        ),
        (7000, true, true)
    );
}
