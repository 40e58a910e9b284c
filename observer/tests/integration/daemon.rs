//! The daemon on real interfaces in network namespaces: attaching (TCX and
//! clsact), following 50 interfaces coming and going, exact counts of
//! known traffic, and a shutdown that leaves no tc state behind (without
//! pins), or that `observer cleanup` removes (with pins). And the daemon
//! under abuse: idle and oversized clients, a second daemon on its
//! socket, objects that do not decode, a doctor asked right after a route
//! went away.

use std::{
    net::UdpSocket,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use observer::api::FlowView;

use crate::common::{
    self,
    node::{Daemon, Netns},
    sh,
};

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

/// Ten datagrams each way between a pod and its node, counted exactly;
/// then the daemon stops: without pins it leaves nothing behind, with pins
/// its programs stay until `observer cleanup`.
fn known_udp_counts(mode: &str, pinned: bool) {
    common::require_root();
    let node = Netns::new("node");
    let pod = node.pod("cali0123456789a", "10.99.0.1", "10.99.0.2");
    let keep = common::node::Keep::new();
    let mut extra = vec!["--attach-mode", mode];
    if !pinned {
        extra.extend(["--pin-path", "none"]);
    }
    let mut d = Daemon::start_keeping(&node, &keep, &extra);
    d.wait_for(
        |d| {
            d.interfaces()
                .iter()
                .any(|i| i.attached_via.map(|v| v.name()) == Some(mode))
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
        f.src_ip.to_string() == src
            && f.protocol.to_string() == "udp"
            && f.direction.name() == dir
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
        (
            sent.dst_ip.to_string().as_str(),
            sent.src_port,
            sent.dst_port
        ),
        ("10.99.0.1", 9001, 9000)
    );
    assert_eq!(
        (sent.packets, sent.bytes, sent.encap.name()),
        (10, 1280, "none")
    );
    let got = flows
        .iter()
        .find(|f| want(f, "10.99.0.1", "ingress"))
        .unwrap();
    assert_eq!((got.packets, got.bytes, got.src_port), (10, 1280, 9000));

    let stopping = Instant::now();
    assert!(d.stop().success(), "daemon exits cleanly on SIGTERM");
    let took = stopping.elapsed();
    eprintln!("shutdown took {took:?}");
    assert!(took < common::patience(3), "shutdown took {took:?}");
    let attached = |node: &Netns| {
        let (i, e) = common::node::tcx_programs(node, "cali0123456789a");
        let filters = tc_state(node, "cali0123456789a");
        let ours = filters
            .lines()
            .filter(|l| l.contains(" bpf ") && l.contains("handle"));
        i.len() + e.len() + ours.count()
    };
    if pinned {
        // Still attached for the next daemon, until cleanup.
        assert_eq!(attached(&node), 2, "attached after exit");
        let out = node.exec(&[
            env!("CARGO_BIN_EXE_observer"),
            "cleanup",
            "--pin-path",
            keep.pins.to_str().unwrap(),
            "--state-file",
            keep.state_file().to_str().unwrap(),
            "--socket",
            keep.socket().to_str().unwrap(),
        ]);
        assert!(out.contains("removed"), "{out}");
        assert!(!keep.pins.exists(), "cleanup removes the pins");
        assert!(!keep.state_file().exists(), "cleanup removes the state");
    }
    assert_eq!(
        tc_state(&node, "cali0123456789a"),
        "",
        "no tc state left after shutdown (and cleanup)"
    );
    assert_eq!(attached(&node), 0, "no TCX link left");
}

#[test]
fn exact_udp_counts_with_tcx_and_cleanup() {
    known_udp_counts("tcx", true);
}

#[test]
fn exact_udp_counts_with_clsact_and_clean_shutdown() {
    known_udp_counts("clsact", false);
}

#[test]
fn exact_udp_counts_with_clsact_and_cleanup() {
    known_udp_counts("clsact", true);
}

#[test]
fn follows_fifty_interfaces_coming_and_going() {
    common::require_root();
    let node = Netns::new("churn");
    let mut d = Daemon::start(&node, &["--pin-path", "none"]);
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
fn tcpdump_totals(pcap: &Path, client: &str) -> ((u64, u64), (u64, u64)) {
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
    let cali = "cali5e1f0c0ffee";
    let pod = node.pod(cali, "10.99.0.1", "10.99.0.2");
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
        move |f| {
            f.interface == "cali5e1f0c0ffee"
                && f.protocol.to_string() == "tcp"
                && f.direction.name() == dir
        }
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

/// The metrics port of a [`Daemon`] (its default address), inside its
/// namespace.
const METRICS: &str = "127.0.0.1:9477";

/// The status code of an HTTP answer; 0 when there was none.
fn status_of(answer: &[u8]) -> u16 {
    String::from_utf8_lossy(answer)
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// Writes `request` as is and reads the answer until the server closes;
/// its status.
fn exchange(mut stream: impl std::io::Read + std::io::Write, request: &[u8]) -> u16 {
    // The server may stop reading (and answer) before the end of it.
    let _ = stream.write_all(request);
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    status_of(&answer)
}

fn tcp_connect(address: &str) -> std::net::TcpStream {
    let address: std::net::SocketAddr = address.parse().unwrap();
    let s = std::net::TcpStream::connect_timeout(&address, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("connect to {address}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s
}

fn unix_connect(socket: &Path) -> std::os::unix::net::UnixStream {
    let s = std::os::unix::net::UnixStream::connect(socket)
        .unwrap_or_else(|e| panic!("connect to {}: {e}", socket.display()));
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s
}

/// GET `path` from the metrics port in `ns`: (status, body, time taken).
fn metrics_get(ns: &Netns, path: &str) -> (u16, String, Duration) {
    ns.within(|| {
        use std::io::{Read as _, Write as _};
        let started = Instant::now();
        let mut s = tcp_connect(METRICS);
        write!(s, "GET {path} HTTP/1.0\r\nHost: observer\r\n\r\n").unwrap();
        let mut answer = Vec::new();
        let _ = s.read_to_end(&mut answer);
        let text = String::from_utf8_lossy(&answer);
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned());
        (
            status_of(&answer),
            body.unwrap_or_default(),
            started.elapsed(),
        )
    })
}

/// Lowers the soft limit on open files of the command's process.
fn soft_fd_limit(cmd: &mut Command, soft: u64) {
    use std::os::unix::process::CommandExt as _;
    // SAFETY: only getrlimit/setrlimit between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            let mut lim = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            lim.rlim_cur = soft.min(lim.rlim_max);
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    };
}

/// A client socket that can wait for its peer to close it.
trait Idle: std::io::Read {
    fn wait_at_most(&self, t: Duration);
}

impl Idle for std::net::TcpStream {
    fn wait_at_most(&self, t: Duration) {
        self.set_read_timeout(Some(t)).unwrap();
    }
}

impl Idle for std::os::unix::net::UnixStream {
    fn wait_at_most(&self, t: Duration) {
        self.set_read_timeout(Some(t)).unwrap();
    }
}

/// Whether the peer closed `s` before `deadline`.
fn closed_by_peer(s: &mut impl Idle, deadline: Instant) -> bool {
    let mut buf = [0u8; 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        s.wait_at_most(left);
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return false;
            }
            // Reset: closed all the same.
            Err(_) => return true,
        }
    }
}

/// 300 idle connections on the metrics port and 300 on the API socket,
/// to a daemon started with a soft limit of 256 open files (as some
/// runtimes start it): `/healthz` and the CLI still answer within a
/// second, and the daemon closes the idle ones after its idle timeout.
#[test]
fn idle_clients_never_starve_the_daemon_and_are_closed() {
    use observer::export::serve::IDLE_TIMEOUT;
    common::require_root();
    let node = Netns::new("idle");
    let d = Daemon::start_with(&node, &[], |c| soft_fd_limit(c, 256));
    let opened = Instant::now();
    let mut tcp: Vec<_> = node.within(|| (0..300).map(|_| tcp_connect(METRICS)).collect());
    let mut unix: Vec<_> = (0..300).map(|_| unix_connect(&d.socket)).collect();
    // Time for the daemon to accept them all.
    std::thread::sleep(Duration::from_millis(500));

    let (status, body, healthz) = metrics_get(&node, "/healthz");
    assert_eq!((status, body.as_str()), (200, "ok\n"), "/healthz");
    let started = Instant::now();
    let out = common::lab::run(&["status", "--socket", d.socket.to_str().unwrap()]);
    let cli = started.elapsed();
    assert!(
        out.status.success(),
        "observer status: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!(
        "with 600 idle clients: /healthz answered in {healthz:?}, observer status in {cli:?}"
    );
    assert!(
        healthz < Duration::from_secs(1),
        "/healthz took {healthz:?}"
    );
    assert!(cli < Duration::from_secs(1), "observer status took {cli:?}");

    let deadline = opened + IDLE_TIMEOUT + Duration::from_secs(5);
    for (i, s) in tcp.iter_mut().enumerate() {
        assert!(
            closed_by_peer(s, deadline),
            "idle TCP client {i} still open after {:?}",
            opened.elapsed()
        );
    }
    for (i, s) in unix.iter_mut().enumerate() {
        assert!(
            closed_by_peer(s, deadline),
            "idle API client {i} still open after {:?}",
            opened.elapsed()
        );
    }
    let closed = opened.elapsed();
    eprintln!("all 600 idle clients closed {closed:?} after they connected");
    assert!(
        closed > IDLE_TIMEOUT - Duration::from_secs(1),
        "closed early: {closed:?}"
    );
    assert!(
        d.get::<serde_json::Value>("/v1/status").is_some(),
        "still answering"
    );
}

/// Request heads and bodies beyond the bounds are refused on both
/// listeners; ordinary requests are served.
#[test]
fn oversized_requests_are_refused() {
    common::require_root();
    let node = Netns::new("big");
    let d = Daemon::start(&node, &[]);
    let request = |path: &str, extra: &str| {
        format!("GET {path} HTTP/1.1\r\nHost: observer\r\nConnection: close\r\n{extra}\r\n")
    };
    let big_head = |path| request(path, &format!("X-Filler: {}\r\n", "a".repeat(64 * 1024)));
    // Announces 1 MiB, sends 8 KiB of it.
    let big_body = |path| request(path, "Content-Length: 1048576\r\n") + &"b".repeat(8192);
    let tcp = |r: String| node.within(|| exchange(tcp_connect(METRICS), r.as_bytes()));
    let unix = |r: String| exchange(unix_connect(&d.socket), r.as_bytes());

    assert_eq!(tcp(request("/healthz", "")), 200);
    assert_eq!(
        tcp(big_head("/healthz")),
        431,
        "a 64 KiB head on the metrics port"
    );
    assert_eq!(
        tcp(big_body("/healthz")),
        413,
        "a 1 MiB body on the metrics port"
    );
    assert_eq!(unix(request("/v1/status", "")), 200);
    assert_eq!(
        unix(big_head("/v1/status")),
        431,
        "a 64 KiB head on the API socket"
    );
    assert_eq!(
        unix(big_body("/v1/status")),
        413,
        "a 1 MiB body on the API socket"
    );
    assert!(
        d.get::<serde_json::Value>("/v1/status").is_some(),
        "still answering"
    );
}

/// Runs `cmd` for at most `limit`; its output (killed if still running).
fn output_within(mut cmd: Command, limit: Duration) -> std::process::Output {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + limit;
    while child.try_wait().expect("try_wait").is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    child.wait_with_output().expect("output")
}

/// A second `observer run` on a live socket exits 1 saying so, before it
/// attaches anything, and the first keeps answering on its socket; once
/// the first is killed, its stale socket is replaced.
#[test]
fn a_second_daemon_is_refused_and_a_stale_socket_replaced() {
    use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
    common::require_root();
    let node = Netns::new("twice");
    node.ip(&[
        "link",
        "add",
        "cali0000000aaaa",
        "type",
        "veth",
        "peer",
        "name",
        "peer0",
    ]);
    let mut first = Daemon::start(&node, &[]);
    first.wait_for(
        |d| d.interfaces().iter().any(|i| i.attached_via.is_some()),
        "the cali interface attached",
    );
    let socket = first.socket.clone();
    let meta = std::fs::metadata(&socket).unwrap();
    assert_eq!(
        meta.permissions().mode() & 0o777,
        0o600,
        "the API socket's mode"
    );
    let pid = first.pid();

    let mut second = Command::new("ip");
    second
        .args([
            "netns",
            "exec",
            &node.0,
            env!("CARGO_BIN_EXE_observer"),
            "run",
            "--socket",
        ])
        .arg(&socket);
    let started = Instant::now();
    let out = output_within(second, Duration::from_secs(10));
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("the second daemon exited in {:?}", started.elapsed());
    assert!(
        first.get::<serde_json::Value>("/v1/status").is_some(),
        "the first answers: {stderr}"
    );
    assert_eq!(
        std::fs::metadata(&socket).unwrap().ino(),
        meta.ino(),
        "its socket is untouched: {stderr}"
    );
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let want = format!(
        "error: another observer daemon (pid {pid}) is already running with --socket {}",
        socket.display()
    );
    assert!(stderr.contains(&want), "{stderr}");
    assert!(
        !stderr.contains("attached"),
        "it attached before refusing: {stderr}"
    );

    // A dead daemon's socket: nothing answers on it.
    assert!(!first.signal(libc::SIGKILL).success());
    assert!(socket.exists());
    let third = Daemon::spawn(&node, &socket, &[], |_| {});
    third.wait_for(
        |d| d.get::<serde_json::Value>("/v1/status").is_some(),
        "a new daemon on the stale socket",
    );
    let meta = std::fs::metadata(&socket).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
}

/// A pod as `kubectl get pod -o json` prints it.
fn pod_object(name: &str, ip: &str) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"nodeName": "node1", "containers": [{"name": "c", "image": "i"}]},
        "status": {"podIP": ip, "podIPs": [{"ip": ip}]}
    })
}

/// `observer doctor -o json` against `socket`: (exit success, checks).
fn doctor(socket: &Path) -> (bool, Vec<observer::api::Check>) {
    let out = common::lab::run(&["doctor", "--socket", socket.to_str().unwrap(), "-o", "json"]);
    let checks = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("doctor JSON: {e}: {}", String::from_utf8_lossy(&out.stderr)));
    (out.status.success(), checks)
}

fn check(checks: Vec<observer::api::Check>, name: &str) -> observer::api::Check {
    checks.into_iter().find(|c| c.name == name).expect(name)
}

/// `observer_source_synced{source="objects"}` as the daemon in `ns` says.
fn objects_synced(ns: &Netns) -> Option<f64> {
    let (_, body, _) = metrics_get(ns, "/metrics");
    body.lines()
        .find(|l| l.starts_with("observer_source_synced{") && l.contains(r#"source="objects""#))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

/// A wrong-shaped and a garbage objects file: the names read before stay,
/// `observer_source_synced` says 0, the doctor names the file and what is
/// wrong, and the daemon logs each once; fixed, all is well again.
#[test]
fn objects_that_do_not_decode_keep_their_names_and_say_so() {
    use observer::api::{PodView, Verdict};
    common::require_root();
    let node = Netns::new("objs");
    let objects = tempfile::tempdir().unwrap();
    let pods = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": [pod_object("web-1", "10.99.0.2")]});
    std::fs::write(objects.path().join("pods.json"), pods.to_string()).unwrap();
    let log = objects.path().join("daemon.log");
    let log_file = std::fs::File::create(&log).unwrap();
    let dir = objects.path().to_str().unwrap();
    let mut d = Daemon::start_with(
        &node,
        &["--node-name", "node1", "--objects-dir", dir],
        |c| {
            c.stderr(log_file);
        },
    );
    let named = |d: &Daemon| {
        d.get::<Vec<PodView>>("/v1/pods").is_some_and(|pods| {
            pods.iter()
                .any(|p| p.name == "web-1" && p.networks == ["10.99.0.2/32"])
        })
    };
    d.wait_for(
        |d| named(d) && objects_synced(&node) == Some(1.0),
        "names from the objects",
    );

    let bad = objects.path().join("bad.json");
    for (text, why) in [
        (r#"{"items":5}"#, "an object has no `kind`"),
        (r#"{"kind": "PodList", "items": [{"#, "is not JSON"),
    ] {
        // Written aside and renamed, so the daemon never reads half a file.
        let part = objects.path().join("bad.part");
        std::fs::write(&part, text).unwrap();
        std::fs::rename(&part, &bad).unwrap();
        d.wait_for(
            |_| objects_synced(&node) == Some(0.0),
            "objects source_synced 0",
        );
        let sources = |d: &Daemon| check(doctor(&d.socket).1, "name-sources");
        // The doctor names the file and what is wrong with it.
        d.wait_for(
            |d| {
                sources(d).evidence.iter().any(|e| e.contains(why))
                    && objects_synced(&node) == Some(0.0)
            },
            "the doctor to see the new error, and source_synced 0",
        );
        let sources = sources(&d);
        assert_eq!(sources.verdict, Verdict::Fail, "{sources:?}");
        let evidence = sources.evidence.join("\n");
        assert!(
            evidence.starts_with("objects: ") && evidence.contains(bad.to_str().unwrap()),
            "{evidence}"
        );
        assert!(named(&d), "the names read before are kept");
    }
    std::fs::remove_file(&bad).unwrap();
    d.wait_for(
        |_| objects_synced(&node) == Some(1.0),
        "objects source_synced 1 again",
    );
    assert_eq!(
        check(doctor(&d.socket).1, "name-sources").verdict,
        Verdict::Ok
    );
    assert!(d.stop().success());
    let log = std::fs::read_to_string(&log).unwrap();
    assert_eq!(
        log.matches("keeping the names read before").count(),
        2,
        "once per error: {log}"
    );
}

/// The doctor asks the kernel when it runs: a pod route deleted a moment
/// before is missing at once, though the daemon (polling every 30 s here)
/// has not looked again.
#[test]
fn doctor_reads_the_kernel_at_the_moment_it_runs() {
    use observer::api::Verdict;
    common::require_root();
    let node = Netns::new("docn");
    let pod = Netns::new("docp");
    let cali = observer::model::calico_interface("cali", "default", "web-1");
    node.ip(&[
        "link", "add", &cali, "type", "veth", "peer", "name", "eth0", "netns", &pod.0,
    ]);
    node.ip(&["link", "set", &cali, "up"]);
    pod.ip(&["link", "set", "eth0", "up"]);
    node.ip(&[
        "route",
        "add",
        "10.99.0.2/32",
        "dev",
        &cali,
        "scope",
        "link",
    ]);
    let objects = tempfile::tempdir().unwrap();
    std::fs::write(
        objects.path().join("pod.json"),
        pod_object("web-1", "10.99.0.2").to_string(),
    )
    .unwrap();
    let dir = objects.path().to_str().unwrap();
    let d = Daemon::start(
        &node,
        &[
            "--poll-interval",
            "30s",
            "--node-name",
            "node1",
            "--objects-dir",
            dir,
        ],
    );
    d.wait_for(
        |d| {
            d.interfaces()
                .iter()
                .any(|i| i.name == cali && i.attached_via.is_some())
        },
        "the pod interface attached",
    );
    let routes = |d: &Daemon| check(doctor(&d.socket).1, "pod-routes-and-interfaces");
    let before = routes(&d);
    assert_eq!(before.verdict, Verdict::Ok, "{before:?}");

    node.ip(&["route", "del", "10.99.0.2/32", "dev", &cali]);
    let after = routes(&d);
    assert_eq!(after.verdict, Verdict::Fail, "{after:?}");
    assert_eq!(
        after.evidence,
        [format!(
            "default/web-1: no route to 10.99.0.2 dev {cali} (Felix programs one per pod IP)"
        )]
    );
    node.ip(&[
        "route",
        "add",
        "10.99.0.2/32",
        "dev",
        &cali,
        "scope",
        "link",
    ]);
    assert_eq!(routes(&d).verdict, Verdict::Ok, "the route is back");
}

/// `/v1/flows` names flows to a VIP from a conntrack dump: with 60,000
/// entries in the table and three clients asking for flows without pause,
/// the polls still run on time (the dump runs with the state released).
#[test]
fn a_big_conntrack_table_never_holds_up_a_poll() {
    common::require_root();
    let node = Netns::new("ct");
    let pod = node.pod("cali0123456789c", "10.99.0.1", "10.99.0.2");
    pod.ip(&["route", "add", "10.96.0.0/12", "via", "10.99.0.1"]);
    let objects = tempfile::tempdir().unwrap();
    let service = serde_json::json!({"kind": "List", "items": [
        {"kind": "Service", "metadata": {"name": "dns", "namespace": "kube-system"},
         "spec": {"clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"],
                  "ports": [{"name": "dns", "port": 53, "protocol": "UDP"}]}}
    ]});
    std::fs::write(objects.path().join("svc.json"), service.to_string()).unwrap();

    // 60,000 conntrack entries in the node's namespace, loaded in one go.
    let entries = objects.path().join("conntrack.txt");
    let lines: String = (0..60_000u32)
        .map(|i| {
            let (client, port) = (
                format!("10.9.{}.{}", i / 250, i % 250 + 1),
                1024 + i % 60_000,
            );
            format!(
                "-I -s {client} -d 10.96.0.10 -p udp --sport {port} --dport 53 -t 600 \
                 -r 10.65.0.5 -q {client} --reply-port-src 53 --reply-port-dst {port}\n"
            )
        })
        .collect();
    std::fs::write(&entries, lines).unwrap();
    node.exec(&["conntrack", "-R", entries.to_str().unwrap()]);

    let d = Daemon::start(
        &node,
        &[
            "--objects-dir",
            objects.path().to_str().unwrap(),
            "--poll-interval",
            "100ms",
        ],
    );
    d.wait_attached("cali0123456789c");
    pod.within(|| {
        let s = UdpSocket::bind("10.99.0.2:0").unwrap();
        s.send_to(b"query", "10.96.0.10:53").unwrap();
    });
    d.wait_for(
        |d| {
            d.flows()
                .iter()
                .any(|f| f.dst_ip.to_string() == "10.96.0.10")
        },
        "the flow to the VIP",
    );

    // What one dump costs here.
    let (dumped, dump) = node.within(|| {
        let started = Instant::now();
        let n = observer::sources::conntrack::dnat_table().unwrap().len();
        (n, started.elapsed())
    });
    assert!(dumped >= 60_000, "{dumped} conntrack entries");

    let stop = std::sync::atomic::AtomicBool::new(false);
    let answered = std::sync::atomic::AtomicU64::new(0);
    let (polls, slowest) = std::thread::scope(|s| {
        for _ in 0..3 {
            s.spawn(|| {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    assert!(!d.flows().is_empty());
                    answered.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            });
        }
        let before = d.status().polls;
        let mut slowest: f64 = 0.0;
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(4) {
            slowest = slowest.max(d.status().last_poll_ms);
            std::thread::sleep(Duration::from_millis(30));
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        (d.status().polls - before, slowest)
    });
    let answered = answered.into_inner();
    eprintln!(
        "one dump of {dumped} entries: {dump:?}; {answered} flow answers, \
         {polls} polls in 4 s, the slowest {slowest:.1} ms"
    );
    assert!(answered >= 3, "the clients were answered: {answered}");
    assert!(
        slowest < dump.as_secs_f64() * 1e3 / 2.0,
        "a poll took {slowest:.1} ms while a dump takes {dump:?}"
    );
    assert!(polls >= 10, "{polls} polls in 4 s at 100 ms");
}
