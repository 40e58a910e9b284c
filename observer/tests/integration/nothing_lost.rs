//! Nothing lost off the happy path: a daemon restarted under a steady
//! stream counts every packet and goes on from its counts, a killed clsact
//! daemon leaves no second filter, 500 pod interfaces coming and going leak
//! nothing, and a full flow map loses no count (every packet is in a pod's
//! series, and the flow series add up to them).

use std::{
    net::{SocketAddr, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use observer::api::FlowView;

use crate::common::{
    self,
    lab::TestLab,
    node::{Daemon, Keep, Netns, scrape, sum},
};

const CALI: &str = "cali0123456789a";

/// Sends one 100-byte UDP datagram from the pod to the node every `gap`
/// until stopped; the count sent, when stopped.
struct Stream {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Stream {
    fn start(pod: &Netns, gap: Duration) -> Self {
        let socket = pod.within(|| UdpSocket::bind("10.99.0.2:9001").expect("bind in pod"));
        let (stop, sent) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicU64::new(0)),
        );
        let (s, n) = (stop.clone(), sent.clone());
        let thread = std::thread::spawn(move || {
            let started = Instant::now();
            // Bounded: a test that forgets to stop it ends in a minute.
            while !s.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(60) {
                socket
                    .send_to(&[0x55; 100], "10.99.0.1:9000")
                    .expect("send");
                n.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(gap);
            }
        });
        Stream {
            stop,
            sent,
            thread: Some(thread),
        }
    }

    fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    fn stop(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap();
        self.sent()
    }
}

fn egress(flows: &[FlowView]) -> Option<&FlowView> {
    flows
        .iter()
        .find(|f| f.interface == CALI && f.direction.to_string() == "egress" && f.dst_port == 9000)
}

/// The pod's egress flow packets, polled until they equal `want` (or 10 s).
fn wait_egress(d: &Daemon, want: u64) -> u64 {
    let deadline = Instant::now() + common::patience(10);
    loop {
        let got = egress(&d.flows()).map_or(0, |f| f.packets);
        if got == want || Instant::now() > deadline {
            return got;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A restart under a steady stream: every packet sent is counted, in the
/// flow and in the metrics, and counters go on from where they were.
fn restart_loses_nothing(mode: &str) {
    common::require_root();
    let node = Netns::new("rst");
    let pod = node.pod(CALI, "10.99.0.1", "10.99.0.2");
    let keep = Keep::new();
    let metrics: SocketAddr = "127.0.0.1:9477".parse().unwrap();
    let args = ["--attach-mode", mode, "--metrics-address", "127.0.0.1:9477"];
    let mut first = Daemon::start_keeping(&node, &keep, &args);
    first.wait_attached(CALI);
    let stream = Stream::start(&pod, Duration::from_millis(1));
    std::thread::sleep(Duration::from_secs(2));
    first.wait_poll();
    let ours = [
        r#"direction="egress""#,
        r#"protocol="udp""#,
        r#"port="9000""#,
    ];
    let before = sum(
        &scrape(&node, metrics),
        "observer_flow_packets_total",
        &ours,
    );
    assert!(before > 0, "the first daemon counted nothing");

    let stopping = Instant::now();
    assert!(first.stop().success());
    let stopped_in = stopping.elapsed();
    // No daemon for a while: the kernel goes on counting.
    std::thread::sleep(Duration::from_secs(1));
    let second = Daemon::start_keeping(&node, &keep, &args);
    second.wait_attached(CALI);
    second.wait_poll();
    // Served once polled: never below what the first daemon served.
    let after = sum(
        &scrape(&node, metrics),
        "observer_flow_packets_total",
        &ours,
    );
    assert!(after >= before, "counter went back: {before} -> {after}");
    std::thread::sleep(Duration::from_secs(1));
    let sent = stream.stop();

    let counted = wait_egress(&second, sent);
    assert_eq!(counted, sent, "packets sent vs counted in the flow");
    let flow = egress(&second.flows()).cloned().unwrap();
    assert_eq!(flow.bytes, sent * 128);
    second.wait_poll();
    let exported = sum(
        &scrape(&node, metrics),
        "observer_flow_packets_total",
        &ours,
    );
    assert_eq!(exported, sent, "packets sent vs the flow metrics");
    eprintln!("{mode}: {sent} packets, shutdown took {stopped_in:?}");
    assert!(
        stopped_in < Duration::from_secs(1),
        "shutdown took {stopped_in:?}"
    );
    // One set of programs, not two.
    let (tcx_in, tcx_out) = common::node::tcx_programs(&node, CALI);
    let progs = match mode {
        "tcx" => (tcx_in.len(), tcx_out.len()),
        _ => our_filters(&node),
    };
    assert_eq!(
        progs,
        (1, 1),
        "one program per hook: {tcx_in:?} {tcx_out:?}"
    );
}

#[test]
fn a_tcx_restart_counts_every_packet() {
    restart_loses_nothing("tcx");
}

#[test]
fn a_clsact_restart_counts_every_packet() {
    restart_loses_nothing("clsact");
}

/// `tc filter show` lines of our filters on both hooks.
fn our_filters(node: &Netns) -> (usize, usize) {
    let count = |hook: &str| {
        node.exec(&["tc", "filter", "show", "dev", CALI, hook])
            .lines()
            .filter(|l| l.contains(" bpf ") && l.contains("eth_"))
            .count()
    };
    (count("ingress"), count("egress"))
}

#[test]
fn killed_clsact_daemons_leave_one_filter() {
    common::require_root();
    for pins in [true, false] {
        let node = Netns::new("kill");
        let pod = node.pod(CALI, "10.99.0.1", "10.99.0.2");
        let keep = Keep::new();
        let mut args = vec!["--attach-mode", "clsact"];
        if !pins {
            args.extend(["--pin-path", "none"]);
        }
        for _ in 0..4 {
            let mut d = Daemon::start_keeping(&node, &keep, &args);
            d.wait_attached(CALI);
            d.signal(libc::SIGKILL);
            assert_eq!(our_filters(&node), (1, 1), "pins {pins}: after a SIGKILL");
        }
        // The last one still counts: its filter is the live one.
        let d = Daemon::start_keeping(&node, &keep, &args);
        d.wait_attached(CALI);
        assert_eq!(our_filters(&node), (1, 1));
        let stream = Stream::start(&pod, Duration::from_millis(2));
        std::thread::sleep(Duration::from_millis(300));
        let sent = stream.stop();
        let counted = wait_egress(&d, sent);
        // With pins the dead daemons' filters counted into the same maps
        // before: the flow holds at least what was sent now.
        if pins {
            assert!(counted >= sent, "{counted} < {sent}");
        } else {
            assert_eq!(counted, sent);
        }
    }
}

fn rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

fn fds(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

#[test]
fn five_hundred_pods_come_and_go_leaving_nothing() {
    common::require_root();
    let node = Netns::new("many");
    let pod = node.pod(CALI, "10.99.0.1", "10.99.0.2");
    let keep = Keep::new();
    let d = Daemon::start_keeping(&node, &keep, &[]);
    d.wait_attached(CALI);
    let (rss_before, fds_before) = (rss_kib(d.pid()), fds(d.pid()));
    let stream = Stream::start(&pod, Duration::from_millis(2));

    let names: Vec<String> = (0..500).map(|i| format!("cali{i:011x}")).collect();
    let batch = |verb: &str| {
        let lines: String = names
            .iter()
            .enumerate()
            .map(|(i, n)| match verb {
                "add" => format!("link add {n} type veth peer name p{i:x}\n"),
                _ => format!("link del {n}\n"),
            })
            .collect();
        let file = keep.dir.path().join(format!("{verb}.batch"));
        std::fs::write(&file, lines).unwrap();
        node.ip(&["-batch", file.to_str().unwrap()]);
    };
    // Attaching waits for an RCU grace period per hook (TCX), about 15 ms
    // each here: bounded generously for a loaded machine.
    for _ in 0..2 {
        batch("add");
        let took = d.wait_within(
            Duration::from_secs(300),
            |d| d.status().attached_interfaces == 501,
            "all 500 attached",
        );
        eprintln!("500 attached in {took:?}");
        batch("del");
        let took = d.wait_within(
            Duration::from_secs(60),
            |d| d.status().attached_interfaces == 1,
            "back to one",
        );
        eprintln!("500 detached in {took:?}");
    }
    let sent = stream.stop();
    assert_eq!(wait_egress(&d, sent), sent, "traffic during churn counted");

    // Nothing left behind: one pair of link pins, no other TCX links on
    // this namespace's devices, no descriptors or memory kept per pod.
    let links: Vec<_> = std::fs::read_dir(keep.pins.join("links"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().into_string().unwrap())
        .collect();
    assert_eq!(links.len(), 2, "{links:?}");
    for n in names.iter().take(3) {
        assert!(
            !std::path::Path::new(&format!("/sys/class/net/{n}")).exists(),
            "{n} still there"
        );
    }
    let (i, e) = common::node::tcx_programs(&node, CALI);
    assert_eq!((i.len(), e.len()), (1, 1), "{i:?} {e:?}");
    let (rss_after, fds_after) = (rss_kib(d.pid()), fds(d.pid()));
    eprintln!("RSS {rss_before} -> {rss_after} KiB, fds {fds_before} -> {fds_after}");
    assert!(
        fds_after <= fds_before + 2,
        "fds {fds_before} -> {fds_after}"
    );
    assert!(
        rss_after < rss_before + 10 * 1024,
        "RSS grew by {} KiB",
        rss_after - rss_before
    );
}

/// Pod packets per (pod, direction) and the sums of the flow and pod
/// families in one scrape.
fn totals(scrape: &str) -> (u64, u64) {
    (
        sum(scrape, "observer_flow_packets_total", &[]),
        sum(scrape, "observer_pod_packets_total", &[]),
    )
}

#[test]
fn a_full_flow_map_loses_no_count() {
    let lab = TestLab::up(&[], &[("OBSERVER_FLOW_CAPACITY", "1024")]);
    let plan = lab.status();
    let node1 = plan.nodes.iter().find(|n| n.name == "node1").unwrap();
    let url = node1.metrics_url.clone();
    let underlay = format!("{}-underlay", lab.name);
    let fetch = || common::prometheus::fetch(Some(&underlay), &url).expect("scrape node1");
    // Nothing but our datagrams from the sender: no IPv6 neighbour
    // discovery or MLD in the middle of the count.
    let pod1_ns = format!("{}-node1-pod1", lab.name);
    common::sh(&[
        "ip",
        "netns",
        "exec",
        &pod1_ns,
        "sysctl",
        "-qw",
        "net.ipv6.conf.all.disable_ipv6=1",
    ]);
    let pod_sent = |text: &str| {
        sum(
            text,
            "observer_pod_packets_total",
            &[r#"pod="node1-pod1""#, r#"direction="egress""#],
        )
    };
    std::thread::sleep(Duration::from_secs(2));
    let first = fetch();
    let (flows0, pods0) = totals(&first);
    let sent0 = pod_sent(&first);

    // 6000 datagrams to 6000 ports: 6000 flows into 1024 slots, while
    // scrapes run.
    let scraping = Arc::new(AtomicBool::new(true));
    let checker = {
        let (scraping, fetch_url, ns) = (scraping.clone(), url.clone(), underlay.clone());
        std::thread::spawn(move || {
            let mut scrapes = 0;
            while scraping.load(Ordering::Relaxed) && scrapes < 200 {
                let text = common::prometheus::fetch(Some(&ns), &fetch_url).expect("scrape");
                let (f, p) = totals(&text);
                assert_eq!(
                    f - flows0,
                    p - pods0,
                    "flows vs pods in one scrape:\n{text}"
                );
                scrapes += 1;
                std::thread::sleep(Duration::from_millis(100));
            }
            scrapes
        })
    };
    let plan_pods = lab.status();
    let src = common::lab::pod(&plan_pods, "node1-pod1");
    let dst = common::lab::pod(&plan_pods, "node1-pod2");
    let (s_ip, d_ip) = (src.ips[0], dst.ips[0]);
    let sender =
        observer::lab::netns::within(&src.netns, || UdpSocket::bind(SocketAddr::new(s_ip, 0)))
            .unwrap()
            .unwrap();
    for port in 0..6000u16 {
        sender
            .send_to(&[0x11; 32], SocketAddr::new(d_ip, 10_000 + port))
            .unwrap();
    }
    // Two polls (1 s apart in the lab) after the last one.
    std::thread::sleep(Duration::from_secs(3));
    scraping.store(false, Ordering::Relaxed);
    let scrapes = checker.join().expect("every scrape adds up");
    assert!(scrapes > 5, "only {scrapes} scrapes");

    let text = fetch();
    let pod_egress = pod_sent(&text);
    assert_eq!(pod_egress - sent0, 6000, "pod series of the sender");
    let overflow = sum(
        &text,
        "observer_flow_packets_total",
        &[r#"dst="overflow""#, r#"direction="egress""#],
    );
    assert!(overflow > 0, "no overflow series: the map never filled?");
    let failures = sum(&text, "observer_map_insert_failures_total", &[]);
    assert!(failures >= overflow, "{failures} < {overflow}");
    // `observer pods` (the interface's totals) says the same.
    let pods = lab.json("node1", "pods", &[]);
    let p1 = pods
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "node1-pod1")
        .unwrap();
    let egress_packets = p1["egress_packets"].as_u64().unwrap();
    assert_eq!(
        egress_packets, pod_egress,
        "observer pods vs /metrics: {p1}"
    );
    // Said where an operator looks.
    let status = lab.json("node1", "status", &[]);
    assert!(status["overflow_packets"].as_u64().unwrap() > 0, "{status}");
    let (healthy, checks) = lab.doctor("node1");
    assert!(!healthy);
    let c = checks
        .iter()
        .find(|c| c.name == "datapath-counters")
        .unwrap();
    assert!(format!("{c:?}").contains("flow map was full"), "{c:?}");
}
