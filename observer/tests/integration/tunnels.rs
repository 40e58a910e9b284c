//! The lab in the seed cluster's modes, live: IPIP over real `tunl0`s,
//! WireGuard over `wireguard.cali`, kube-proxy's IPVS. Only a kernel with
//! the ipip, wireguard and ip_vs modules runs them: the VM's stock kernel
//! (`cargo xtask vm` runs them with `--ignored`); on a kernel without them
//! they are ignored, and `lab_modes_say_what_this_kernel_lacks` checks what
//! the lab says instead.
//!
//! Every count is exact: UDP datagrams of known size are counted on the
//! sender's pod interface, the tunnel device, the underlay NIC (20 bytes of
//! overhead per IPIP packet) and the receiver's pod interface; TCP, with
//! segmentation offloads off in the sending pod, is the same packets at
//! every point as tcpdump saw leave the tunnel device, and those are what
//! the kernel counted on the device.

use std::{
    io::{BufRead as _, BufReader},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::fd::AsRawFd as _,
    process::{Child, ChildStderr, Command, Stdio},
    time::{Duration, Instant},
};

use observer::{
    api::{FlowView, ServiceView, Via},
    lab::{netns::within, plan::Plan, traffic},
};

use crate::common::{
    self,
    lab::{TestLab, iface_of, pod},
};

/// How long the lab's observers take at most to show what was sent.
fn patience() -> Duration {
    common::patience(15)
}

/// (packets, bytes, encap, overhead) of the flow of `ends` (src, sport,
/// dst, dport) on `iface` in `direction`.
type Seen = Option<(u64, u64, String, u64)>;

fn find(flows: &[FlowView], iface: &str, dir: &str, ends: &Ends) -> Seen {
    flows
        .iter()
        .find(|f| {
            f.interface == iface
                && f.direction.name() == dir
                && f.src_ip == ends.0.ip()
                && f.src_port == ends.0.port()
                && f.dst_ip == ends.1.ip()
                && f.dst_port == ends.1.port()
        })
        .map(|f| {
            (
                f.packets,
                f.bytes,
                f.encap.name().to_owned(),
                f.overhead_bytes,
            )
        })
}

/// Source and destination of a flow.
type Ends = (SocketAddr, SocketAddr);

fn ends(s: &traffic::Sent) -> Ends {
    (
        SocketAddr::new(s.src_ip, s.src_port),
        SocketAddr::new(s.dst_ip, s.dst_port),
    )
}

fn reversed(e: &Ends) -> Ends {
    (e.1, e.0)
}

/// Waits until every `(node, iface, direction, ends, want)` is seen as
/// wanted, then asserts it (showing everything seen when not).
fn expect(lab: &TestLab, what: &str, want: &[(&str, &str, &str, Ends, Seen)]) {
    let seen = || -> Vec<Seen> {
        want.iter()
            .map(|(node, iface, dir, e, _)| find(&lab.flows(node), iface, dir, e))
            .collect()
    };
    let wanted: Vec<Seen> = want.iter().map(|w| w.4.clone()).collect();
    let deadline = Instant::now() + patience();
    while seen() != wanted && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(300));
    }
    let got = seen();
    for (i, (node, iface, dir, e, _)) in want.iter().enumerate() {
        assert_eq!(
            got[i], wanted[i],
            "{what}: {node} {iface} {dir} {} -> {}: (packets, bytes, encap, overhead)",
            e.0, e.1
        );
    }
}

fn some(packets: u64, bytes: u64, encap: &str, overhead: u64) -> Seen {
    Some((packets, bytes, encap.to_owned(), overhead))
}

/// A counter of a device in a lab namespace, as the kernel keeps it.
fn stat(lab: &TestLab, ns: &str, dev: &str, counter: &str) -> u64 {
    let path = format!("/sys/class/net/{dev}/statistics/{counter}");
    let out = lab.exec(ns, &["cat", &path]);
    assert!(out.status.success(), "reading {path} in {ns}");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("a number")
}

fn sh_in(lab: &TestLab, ns: &str, args: &[&str]) -> String {
    let out = lab.exec(ns, args);
    assert!(
        out.status.success(),
        "{args:?} in {ns}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Segmentation offloads off in a pod: each skb it sends is one packet, so
/// that the kernel's device counters count packets as we do.
fn no_offloads(lab: &TestLab, pod: &str) {
    sh_in(
        lab,
        pod,
        &["ethtool", "-K", "eth0", "tso", "off", "gso", "off"],
    );
}

fn pod_ip(plan: &Plan, name: &str, v6: bool) -> IpAddr {
    *pod(plan, name)
        .ips
        .iter()
        .find(|ip| ip.is_ipv6() == v6)
        .expect("address")
}

/// tcpdump on a device of a lab namespace, outgoing packets only: what the
/// kernel's packet taps saw leave the device, the reference our counts are
/// checked against.
struct Capture {
    tcpdump: Child,
    // Held open: tcpdump writes its summary there when it stops.
    stderr: BufReader<ChildStderr>,
}

/// A packet a capture saw: "src.port > dst.port" and its IP length.
type Captured = (String, u64);

impl Capture {
    fn start(lab: &TestLab, ns: &str, dev: &str) -> Self {
        let mut tcpdump = Command::new("ip")
            .args(["netns", "exec", &format!("{}-{ns}", lab.name)])
            // Headers only: with a full snap length its ring holds 8.
            .args([
                "tcpdump",
                "-nn",
                "-v",
                "-l",
                "--immediate-mode",
                "-s",
                "128",
            ])
            .args(["-Q", "out", "-i", dev])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting tcpdump");
        let mut stderr = BufReader::new(tcpdump.stderr.take().expect("tcpdump's stderr"));
        // tcpdump says "listening on" once its socket is open.
        let mut line = String::new();
        stderr.read_line(&mut line).expect("tcpdump's stderr");
        assert!(
            line.contains("listening on"),
            "tcpdump on {dev} in {ns}: {line}"
        );
        Self { tcpdump, stderr }
    }

    /// Every packet seen, in order. `-v` prints the IP header's length on
    /// one line and the addresses on the next.
    fn stop(mut self) -> Vec<Captured> {
        // What is still in the socket's ring is read before tcpdump exits.
        std::thread::sleep(Duration::from_millis(500));
        let pid = self.tcpdump.id().to_string();
        let _ = Command::new("kill").args(["-INT", &pid]).status();
        let out = self.tcpdump.wait_with_output().expect("tcpdump's output");
        let mut summary = String::new();
        let _ = std::io::Read::read_to_string(&mut self.stderr, &mut summary);
        assert!(
            summary
                .lines()
                .any(|l| l.trim() == "0 packets dropped by kernel"),
            "tcpdump missed packets, it is no reference: {summary}"
        );
        let text = String::from_utf8_lossy(&out.stdout);
        let mut seen = Vec::new();
        let mut length = None;
        for line in text.lines() {
            if line.contains(" IP") && line.trim_end().ends_with(')') {
                let tail = line.rsplit("length ").next().unwrap_or_default();
                length = tail.trim_end_matches(')').parse::<u64>().ok();
            } else if let Some(len) = length.take() {
                let ends = line.trim().split(':').next().unwrap_or_default();
                seen.push((ends.to_owned(), len));
            }
        }
        seen
    }
}

/// How tcpdump writes the ends of a flow: "10.0.0.1.4000 > 10.0.0.2.80".
fn dump_ends(e: &Ends) -> String {
    format!("{}.{} > {}.{}", e.0.ip(), e.0.port(), e.1.ip(), e.1.port())
}

/// (packets, bytes) of the packets from `e` in a capture.
fn captured(seen: &[Captured], e: &Ends) -> (u64, u64) {
    let want = dump_ends(e);
    seen.iter()
        .filter(|(ends, _)| *ends == want)
        .fold((0, 0), |(p, b), (_, len)| (p + 1, b + len))
}

/// Checks a tunnel device's own TX counters (their growth over a capture's
/// window) against the packets the capture saw leave it. tunl0 counts the
/// inner packets as they are. wireguard.cali counts the WireGuard messages
/// it sends (udp_tunnel_xmit_skb accounts their UDP payload on the device):
/// each inner packet padded to 16 bytes plus 32 of header and tag, and any
/// handshake initiations (148 bytes) and keepalives (32) in the window.
fn tunnel_tx_matches(encap: &str, seen: &[Captured], tx: (u64, u64)) {
    let packets = seen.len() as u64;
    match encap {
        "ipip" => {
            let bytes: u64 = seen.iter().map(|(_, len)| len).sum();
            assert_eq!(tx, (packets, bytes), "tunl0's own TX counters");
        }
        "wireguard" => {
            let bytes: u64 = seen.iter().map(|(_, len)| len.div_ceil(16) * 16 + 32).sum();
            // extra = handshakes + keepalives; extra bytes = 148 h + 32 k.
            let fits = match (tx.0.checked_sub(packets), tx.1.checked_sub(bytes)) {
                (Some(extra), Some(extra_bytes)) => extra_bytes
                    .checked_sub(32 * extra)
                    .is_some_and(|b| b % 116 == 0 && b / 116 <= extra),
                _ => false,
            };
            assert!(
                fits,
                "wireguard.cali's own TX counters: {tx:?} for {packets} data messages \
                 of {bytes} bytes"
            );
        }
        other => panic!("no TX relation for {other}"),
    }
}

/// A TCP connection carrying 64 KiB from `src` to `dst`, counted on every
/// point against what tcpdump saw leave the sender's `tunnel`, and that
/// against the kernel's own counters of the device.
fn tcp_through(
    lab: &TestLab,
    plan: &Plan,
    (src, dst): (&str, &str),
    tunnel: &str,
    encap: &str,
    port: u16,
) {
    let (s, d) = (pod(plan, src), pod(plan, dst));
    let (sn, dn) = (s.node.as_str(), d.node.as_str());
    let tx = || {
        (
            stat(lab, sn, tunnel, "tx_packets"),
            stat(lab, sn, tunnel, "tx_bytes"),
        )
    };
    let capture = Capture::start(lab, sn, tunnel);
    let before = tx();
    let sent = traffic::tcp(
        s,
        pod_ip(plan, src, false),
        d,
        pod_ip(plan, dst, false),
        port,
        64 * 1024,
    )
    .expect("TCP through the tunnel");
    // The client's last ACK (to the server's FIN) may leave just after.
    std::thread::sleep(Duration::from_secs(1));
    let after = tx();
    let seen = capture.stop();
    let out = ends(&sent);
    let (packets, bytes) = captured(&seen, &out);
    assert!(packets > 40, "64 KiB in {packets} packets");
    assert_eq!(
        packets,
        seen.len() as u64,
        "only this connection left {tunnel}: {seen:?}"
    );
    tunnel_tx_matches(encap, &seen, (after.0 - before.0, after.1 - before.1));
    let through = some(packets, bytes, encap, 0);
    expect(
        lab,
        "TCP through the tunnel",
        &[
            (
                sn,
                &iface_of(plan, src),
                "egress",
                out,
                some(packets, bytes, "none", 0),
            ),
            (sn, tunnel, "egress", out, through.clone()),
            (dn, tunnel, "ingress", out, through),
            (
                dn,
                &iface_of(plan, dst),
                "ingress",
                out,
                some(packets, bytes, "none", 0),
            ),
        ],
    );
}

#[test]
#[ignore = "needs the ipip and ip_vs modules: run by `cargo xtask vm`"]
fn ipip_lab_counts_every_packet_at_every_point() {
    let lab = TestLab::up(
        &[
            "--encap",
            "ipip",
            "--kube-proxy",
            "ipvs",
            "--ipv6",
            "--block-size",
            "24",
        ],
        &[],
    );
    let plan = lab.status();

    // Calico's IPIP shape: tunl0 up at 1480 with the block's first address,
    // the peer's block via its underlay address onlink, proto bird.
    let tunl0 = sh_in(&lab, "node1", &["ip", "-d", "addr", "show", "tunl0"]);
    assert!(
        tunl0.contains("mtu 1480") && tunl0.contains("inet 10.244.0.0/32"),
        "{tunl0}"
    );
    let routes = sh_in(&lab, "node1", &["ip", "route", "show", "proto", "bird"]);
    assert!(
        routes.contains("10.244.1.0/24 via 172.30.0.12 dev tunl0 onlink")
            && routes.contains("blackhole 10.244.0.0/24"),
        "{routes}"
    );
    let pools: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(format!(
            "/run/observer-lab/{}/objects/ippools.json",
            lab.name
        ))
        .expect("the lab's IPPools"),
    )
    .expect("IPPools JSON");
    let modes: Vec<(&str, &str)> = pools["items"]
        .as_array()
        .expect("a list")
        .iter()
        .map(|p| {
            (
                p["spec"]["ipipMode"].as_str().unwrap_or("?"),
                p["spec"]["vxlanMode"].as_str().unwrap_or("?"),
            )
        })
        .collect();
    assert_eq!(
        modes,
        [("Always", "Never"), ("Never", "Never")],
        "IPv4, IPv6 pools"
    );

    // Cross-node UDP, IPv4: 11 datagrams of 100 bytes (128 IP bytes).
    let n = 11;
    no_offloads(&lab, "node1-pod1");
    let before = (
        stat(&lab, "node1", "tunl0", "tx_packets"),
        stat(&lab, "node1", "tunl0", "tx_bytes"),
    );
    let udp = lab.send_udp("node1-pod1", "node2-pod1", false, 7001, n, 100);
    let e = ends(&udp);
    let (c1, c2) = (iface_of(&plan, "node1-pod1"), iface_of(&plan, "node2-pod1"));
    expect(
        &lab,
        "UDP across nodes over IPIP",
        &[
            ("node1", &c1, "egress", e, some(n, n * 128, "none", 0)),
            ("node1", "tunl0", "egress", e, some(n, n * 128, "ipip", 0)),
            (
                "node1",
                "eth0",
                "egress",
                e,
                some(n, n * 128, "ipip", n * 20),
            ),
            (
                "node2",
                "eth0",
                "ingress",
                e,
                some(n, n * 128, "ipip", n * 20),
            ),
            ("node2", "tunl0", "ingress", e, some(n, n * 128, "ipip", 0)),
            ("node2", &c2, "ingress", e, some(n, n * 128, "none", 0)),
        ],
    );
    assert_eq!(
        (
            stat(&lab, "node1", "tunl0", "tx_packets") - before.0,
            stat(&lab, "node1", "tunl0", "tx_bytes") - before.1
        ),
        (n, n * 128),
        "tunl0's own TX counters"
    );

    // Same node: the two pod interfaces, no tunnel.
    let local = lab.send_udp("node1-pod1", "node1-pod2", false, 7002, n, 100);
    let l = ends(&local);
    let c12 = iface_of(&plan, "node1-pod2");
    expect(
        &lab,
        "UDP on one node",
        &[
            ("node1", &c1, "egress", l, some(n, n * 128, "none", 0)),
            ("node1", &c12, "ingress", l, some(n, n * 128, "none", 0)),
            ("node1", "tunl0", "egress", l, None),
        ],
    );

    // IPv6 pods: Calico's IPv6 pools have no IPIP; the lab routes them
    // unencapsulated over BGP (bird6): 148 IP bytes each, on eth0 bare.
    let v6 = lab.send_udp("node1-pod1", "node2-pod1", true, 7003, n, 100);
    let e6 = ends(&v6);
    expect(
        &lab,
        "UDP across nodes over IPv6 (no IPIP)",
        &[
            ("node1", &c1, "egress", e6, some(n, n * 148, "none", 0)),
            ("node1", "eth0", "egress", e6, some(n, n * 148, "none", 0)),
            ("node1", "tunl0", "egress", e6, None),
            ("node2", &c2, "ingress", e6, some(n, n * 148, "none", 0)),
        ],
    );

    // TCP across nodes and back (ACKs the other way).
    tcp_through(
        &lab,
        &plan,
        ("node1-pod1", "node2-pod1"),
        "tunl0",
        "ipip",
        7004,
    );

    ipvs_names_flows(&lab, &plan);
    mtu_of_a_pod_above_the_tunnel(&lab, &plan);
}

/// Flows to IPVS VIPs carry the Service and the real server IPVS chose;
/// `observer services` is `ipvsadm -Ln --stats` with our counts; an IPVS
/// virtual service without a Service still names its flows; doctor's
/// `ipvs-backends` compares the live table with the EndpointSlices.
fn ipvs_names_flows(lab: &TestLab, plan: &Plan) {
    assert_eq!(
        sh_in(lab, "node1", &["sysctl", "-n", "net.ipv4.vs.conntrack"]).trim(),
        "1"
    );
    let svc = &plan.services[1];
    let client = pod(plan, "node1-pod1");
    let sent = traffic::udp_service(
        plan,
        client,
        pod_ip(plan, "node1-pod1", false),
        svc,
        10,
        100,
    )
    .expect("UDP to the VIP");
    let e = ends(&sent);
    // IPVS's own answer: `ipvsadm -Lnc` in the client's node.
    let conns = sh_in(lab, "node1", &["ipvsadm", "-Lnc"]);
    let chosen: SocketAddr = conns
        .lines()
        .find(|l| l.contains(&e.0.to_string()) && l.contains(&e.1.to_string()))
        .and_then(|l| l.split_whitespace().last())
        .unwrap_or_else(|| panic!("no IPVS connection {e:?}: {conns}"))
        .parse()
        .expect("a real server");
    let chosen_pod = plan
        .pods
        .iter()
        .find(|p| p.ips.contains(&chosen.ip()))
        .expect("a pod");
    let c1 = iface_of(plan, "node1-pod1");
    let deadline = Instant::now() + patience();
    let flow = loop {
        let f = lab
            .flows("node1")
            .into_iter()
            .find(|f| f.interface == c1 && f.src_port == e.0.port() && f.dst_ip == e.1.ip());
        match f {
            Some(f)
                if f.packets == 10 && f.service.as_ref().is_some_and(|s| s.backend.is_some()) =>
            {
                break f;
            }
            _ if Instant::now() > deadline => panic!("flow to the VIP: {f:#?}"),
            _ => std::thread::sleep(Duration::from_millis(300)),
        }
    };
    let s = flow.service.expect("a Service");
    assert_eq!(
        (
            s.name.as_str(),
            s.port.as_str(),
            s.via,
            s.backend.as_deref(),
            s.backend_pod.clone(),
            s.backend_node.as_deref(),
            s.backend_source.as_deref(),
            s.virtual_service.as_deref(),
            s.scheduler.as_deref(),
            s.forward.as_deref(),
        ),
        (
            svc.name.as_str(),
            "dns",
            Via::Vip,
            Some(chosen.to_string().as_str()),
            Some(format!("default/{}", chosen_pod.name)),
            Some(chosen_pod.node.as_str()),
            Some("ipvs"),
            Some(format!("UDP {}", e.1).as_str()),
            Some("rr"),
            Some("Masq"),
        )
    );
    assert_eq!((flow.packets, flow.bytes), (10, 10 * 128));

    // `observer services`: IPVS's numbers (`ipvsadm -Ln --stats --exact`,
    // read by the daemon every 10 s) and ours beside them.
    let vs_name = format!("UDP {}", e.1);
    let vip = e.1.to_string();
    let ipvsadm = || -> Vec<u64> {
        let text = sh_in(
            lab,
            "node1",
            &["ipvsadm", "-Ln", "--stats", "--exact", "-u", &vip],
        );
        text.lines()
            .find(|l| l.starts_with("UDP"))
            .expect("the service line")
            .split_whitespace()
            .skip(2)
            .map(|n| n.parse().expect("a number"))
            .collect()
    };
    let deadline = Instant::now() + common::patience(25);
    let vs = loop {
        let services: Vec<ServiceView> =
            serde_json::from_value(lab.json("node1", "services", &[])).expect("services JSON");
        let vs = services
            .iter()
            .find(|v| v.name == svc.name && v.port == "dns")
            .and_then(|v| v.ipvs.iter().find(|i| i.virtual_service == vs_name))
            .cloned()
            .expect("the Service's IPv4 virtual service");
        let ours = vs.stats.map(|s| {
            vec![
                s.connections,
                s.in_packets,
                s.out_packets,
                s.in_bytes,
                s.out_bytes,
            ]
        });
        let theirs = ipvsadm();
        if ours.as_ref() == Some(&theirs) && theirs[1] >= 10 {
            break vs;
        }
        assert!(
            Instant::now() < deadline,
            "IPVS's counters: ours {ours:?}, ipvsadm -Ln --stats --exact {theirs:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(
        (vs.scheduler.as_str(), vs.packets, vs.bytes),
        ("rr", 10, 1280)
    );
    for r in &vs.real_servers {
        let is_chosen = r.address == chosen.to_string();
        assert_eq!((r.forward.as_str(), r.weight), ("Masq", 1));
        assert_eq!(
            (r.packets, r.bytes),
            if is_chosen { (10, 1280) } else { (0, 0) },
            "{r:?}"
        );
    }

    // An IPVS virtual service with no Service object: listed, and its
    // flows named by their VIP and real server.
    let target = pod(plan, "node2-pod2");
    let target_ip = pod_ip(plan, "node2-pod2", false);
    sh_in(
        lab,
        "node1",
        &["ip", "addr", "add", "10.96.0.99/32", "dev", "kube-ipvs0"],
    );
    sh_in(
        lab,
        "node1",
        &["ipvsadm", "-A", "-t", "10.96.0.99:80", "-s", "rr"],
    );
    sh_in(
        lab,
        "node1",
        &[
            "ipvsadm",
            "-a",
            "-t",
            "10.96.0.99:80",
            "-r",
            &format!("{target_ip}:8080"),
            "-m",
        ],
    );
    let listener = within(&target.netns, || {
        TcpListener::bind(SocketAddr::new(target_ip, 8080))
    })
    .unwrap()
    .expect("listen in node2-pod2");
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().expect("accept");
        std::io::copy(&mut s, &mut std::io::sink()).expect("read");
    });
    let port = within(&client.netns, || {
        let mut c =
            TcpStream::connect_timeout(&"10.96.0.99:80".parse().unwrap(), Duration::from_secs(5))
                .expect("connect to the IPVS-only VIP");
        std::io::Write::write_all(&mut c, &[7; 1000]).expect("write");
        c.local_addr().unwrap().port()
    })
    .unwrap();
    server.join().unwrap();
    let deadline = Instant::now() + common::patience(25);
    let named = loop {
        let f = lab.flows("node1").into_iter().find(|f| {
            f.interface == c1 && f.src_port == port && f.dst_ip == IpAddr::from([10, 96, 0, 99])
        });
        let s = f.as_ref().and_then(|f| f.service.clone());
        if s.as_ref().is_some_and(|s| s.backend.is_some()) {
            break s.unwrap();
        }
        assert!(
            Instant::now() < deadline,
            "flow to the IPVS-only VIP: {f:#?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(
        (
            named.name.as_str(),
            named.virtual_service.as_deref(),
            named.backend.clone(),
            named.backend_pod.clone(),
        ),
        (
            "",
            Some("TCP 10.96.0.99:80"),
            Some(format!("{target_ip}:8080")),
            Some("default/node2-pod2".to_owned()),
        )
    );
    let services: Vec<ServiceView> =
        serde_json::from_value(lab.json("node1", "services", &[])).expect("services JSON");
    assert!(
        services
            .iter()
            .any(|v| v.name.is_empty() && v.vips == ["10.96.0.99:80"] && v.ipvs.len() == 1),
        "{services:#?}"
    );
    let table = lab.query("node1", "services", &[]);
    assert!(
        table.contains("(IPVS, no Service)") && table.contains("Masq"),
        "{table}"
    );

    // doctor's ipvs-backends on the live table: every Service port's VIP
    // (2 Services x 2 ports x 2 families) matches; then a real server
    // removed behind kube-proxy's back is found.
    let check = |lab: &TestLab| {
        lab.doctor("node1")
            .1
            .into_iter()
            .find(|c| c.name == "ipvs-backends")
            .expect("ipvs-backends")
    };
    let ok = check(lab);
    assert_eq!(
        (
            format!("{:?}", ok.verdict),
            ok.summary.contains("8 IPVS virtual services match")
        ),
        ("Ok".to_owned(), true),
        "{ok:?}"
    );
    let gone = SocketAddr::new(pod_ip(plan, "node2-pod2", false), 5353);
    sh_in(
        lab,
        "node1",
        &[
            "ipvsadm",
            "-d",
            "-u",
            &e.1.to_string(),
            "-r",
            &gone.to_string(),
        ],
    );
    let deadline = Instant::now() + common::patience(25);
    loop {
        let c = check(lab);
        if c.evidence
            .iter()
            .any(|p| p.contains(&format!("ready endpoint {gone} missing from IPVS")))
        {
            break;
        }
        assert!(Instant::now() < deadline, "doctor did not see it: {c:?}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// A pod at 1500 behind a 1480 tunl0: the doctor finds it, and its
/// oversize DF packets are counted.
fn mtu_of_a_pod_above_the_tunnel(lab: &TestLab, plan: &Plan) {
    let big = pod(plan, "node1-pod2");
    sh_in(
        lab,
        "node1",
        &["ip", "link", "set", &big.interface, "mtu", "1500"],
    );
    sh_in(
        lab,
        "node1-pod2",
        &["ip", "link", "set", "eth0", "mtu", "1500"],
    );
    let deadline = Instant::now() + patience();
    loop {
        let (_, checks) = lab.doctor("node1");
        let mtu = checks.into_iter().find(|c| c.name == "mtu").expect("mtu");
        if mtu.evidence.iter().any(|p| p.contains(&big.interface)) {
            assert_eq!(format!("{:?}", mtu.verdict), "Fail", "{mtu:?}");
            break;
        }
        assert!(Instant::now() < deadline, "doctor's mtu check: {mtu:?}");
        std::thread::sleep(Duration::from_millis(500));
    }
    // Five 1500-byte datagrams with DF, whatever the path MTU the socket
    // learns (IP_PMTUDISC_PROBE): each is too big for tunl0.
    let dst = SocketAddr::new(pod_ip(plan, "node2-pod1", false), 7100);
    let src_ip = pod_ip(plan, "node1-pod2", false);
    let port = within(&big.netns, || {
        let s = UdpSocket::bind(SocketAddr::new(src_ip, 0)).expect("bind");
        let probe: libc::c_int = libc::IP_PMTUDISC_PROBE;
        // SAFETY: setsockopt on our socket with an int option.
        let rc = unsafe {
            libc::setsockopt(
                s.as_raw_fd(),
                libc::IPPROTO_IP,
                libc::IP_MTU_DISCOVER,
                (&probe as *const libc::c_int).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(rc, 0, "IP_MTU_DISCOVER");
        for _ in 0..5 {
            s.send_to(&[1; 1472], dst).expect("send 1500 bytes");
        }
        s.local_addr().unwrap().port()
    })
    .unwrap();
    let e = (SocketAddr::new(src_ip, port), dst);
    expect(
        lab,
        "oversize datagrams on the pod's interface",
        &[(
            "node1",
            &big.interface,
            "egress",
            e,
            some(5, 5 * 1500, "none", 0),
        )],
    );
    let node = &plan.nodes[0];
    let deadline = Instant::now() + patience();
    loop {
        let text = common::prometheus::fetch(Some(&plan.underlay_netns), &node.metrics_url)
            .expect("scrape node1");
        let exceeded = common::node::sum(
            &text,
            "observer_mtu_exceeded_packets_total",
            &["pod=\"node1-pod2\"", "encap=\"ipip\""],
        );
        if exceeded == 5 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "observer_mtu_exceeded_packets_total for node1-pod2: {exceeded}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
#[ignore = "needs the wireguard module: run by `cargo xtask vm`"]
fn wireguard_lab_counts_every_packet_and_the_overhead() {
    let lab = TestLab::up(&["--encap", "wireguard"], &[]);
    let plan = lab.status();
    let wg = sh_in(&lab, "node1", &["wg", "show", "wireguard.cali"]);
    assert!(
        wg.contains("listening port: 51820") && wg.contains("endpoint: 172.30.0.12:51820"),
        "{wg}"
    );
    let rules = sh_in(&lab, "node1", &["ip", "rule"]);
    assert!(
        rules
            .lines()
            .any(|l| l.starts_with("99:") && l.contains("fwmark 0x100000/0x100000 lookup 1")),
        "{rules}"
    );

    // 13 datagrams of 300 bytes (328 IP bytes) one way across nodes.
    let n = 13;
    no_offloads(&lab, "node1-pod1");
    let tx = || {
        (
            stat(&lab, "node1", "wireguard.cali", "tx_packets"),
            stat(&lab, "node1", "wireguard.cali", "tx_bytes"),
        )
    };
    let capture = Capture::start(&lab, "node1", "wireguard.cali");
    let before = tx();
    let udp = lab.send_udp("node1-pod1", "node2-pod1", false, 7201, n, 300);
    let e = ends(&udp);
    let (c1, c2) = (iface_of(&plan, "node1-pod1"), iface_of(&plan, "node2-pod1"));
    expect(
        &lab,
        "UDP across nodes over WireGuard",
        &[
            ("node1", &c1, "egress", e, some(n, n * 328, "none", 0)),
            (
                "node1",
                "wireguard.cali",
                "egress",
                e,
                some(n, n * 328, "wireguard", 0),
            ),
            (
                "node2",
                "wireguard.cali",
                "ingress",
                e,
                some(n, n * 328, "wireguard", 0),
            ),
            ("node2", &c2, "ingress", e, some(n, n * 328, "none", 0)),
        ],
    );
    let after = tx();
    let seen = capture.stop();
    assert_eq!(
        (captured(&seen, &e), seen.len() as u64),
        ((n, n * 328), n),
        "tcpdump on wireguard.cali: {seen:?}"
    );
    tunnel_tx_matches("wireguard", &seen, (after.0 - before.0, after.1 - before.1));
    // On the underlay, inner bytes are WireGuard's padded length (to 16:
    // 336 for 328), 60 bytes of overhead each; handshake initiations (176
    // bytes) and keepalives (60) are all overhead.
    let ul = (
        SocketAddr::new(plan.nodes[0].underlay_ip, 51820),
        SocketAddr::new(plan.nodes[1].underlay_ip, 51820),
    );
    let deadline = Instant::now() + patience();
    let (packets, inner, encap, overhead) = loop {
        match find(&lab.flows("node1"), "eth0", "egress", &ul) {
            Some(f) if f.1 >= n * 336 => break f,
            f => assert!(Instant::now() < deadline, "the underlay flow: {f:?}"),
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    assert_eq!((inner, encap.as_str()), (n * 336, "wireguard"));
    // packets = n + handshakes + keepalives; overhead = 60 n + 176 h + 60 k.
    let extra = packets - n;
    let handshakes = (overhead - 60 * n - 60 * extra) / 116;
    assert!(
        extra >= 1
            && handshakes >= 1
            && overhead == 60 * n + 176 * handshakes + 60 * (extra - handshakes),
        "{packets} packets, {overhead} bytes of overhead for {n} data packets"
    );
    let back = find(&lab.flows("node1"), "eth0", "ingress", &reversed(&ul));
    assert!(
        back.as_ref()
            .is_some_and(|b| b.1 == 0 && b.2 == "wireguard"),
        "the handshake response, all overhead: {back:?}"
    );

    // Same node: no WireGuard.
    let local = lab.send_udp("node1-pod1", "node1-pod2", false, 7202, n, 300);
    let l = ends(&local);
    expect(
        &lab,
        "UDP on one node",
        &[
            ("node1", &c1, "egress", l, some(n, n * 328, "none", 0)),
            ("node1", "wireguard.cali", "egress", l, None),
        ],
    );
    tcp_through(
        &lab,
        &plan,
        ("node1-pod1", "node2-pod1"),
        "wireguard.cali",
        "wireguard",
        7203,
    );
}

/// On a kernel without IPIP, WireGuard or IPVS, the lab says which module
/// is missing and what to do; where the kernel has it, the lab comes up.
#[test]
fn lab_modes_say_what_this_kernel_lacks() {
    common::require_root();
    for (args, module, what) in [
        (
            &["--encap", "ipip"][..],
            "/sys/module/ipip",
            "IPIP needs the ipip module",
        ),
        (
            &["--encap", "wireguard"][..],
            "/sys/module/wireguard",
            "WireGuard needs the wireguard module",
        ),
        (
            &["--kube-proxy", "ipvs"][..],
            "/proc/net/ip_vs",
            "IPVS needs the ip_vs module",
        ),
    ] {
        let name = format!("m{}x{}", std::process::id() % 100_000, module.len());
        let mut full = vec![
            "lab",
            "up",
            "--name",
            &name,
            "--nodes",
            "1",
            "--pods-per-node",
            "1",
        ];
        full.extend_from_slice(args);
        let out = common::lab::run(&full);
        let _ = common::lab::run(&["lab", "down", "--name", &name]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        // The lab loads the module if it can: what is there now is what
        // this kernel has.
        if std::path::Path::new(module).exists() {
            assert!(
                out.status.success(),
                "{args:?} on a kernel with it: {stderr}"
            );
        } else {
            assert!(!out.status.success(), "{args:?} without the module");
            assert!(
                stderr.contains(what)
                    && stderr.contains("cargo xtask vm")
                    && stderr.lines().count() <= 2,
                "{args:?}: {stderr}"
            );
        }
    }
}
