//! Metrics end to end: a real Prometheus scrapes the lab's observers; the
//! counters it stores equal the traffic we sent; `promtool check metrics`
//! is clean; the series cap holds under a flood of distinct flows; a pod
//! whose MTU is larger than the tunnel's is caught.

use std::{
    io::{Read as _, Write as _},
    net::SocketAddr,
    time::Duration,
};

use crate::common::{
    self,
    lab::{TestLab, pod},
    prometheus::Prometheus,
    sh,
};

/// GET `path` from `address` inside the lab namespace `ns`.
fn http_get(ns: &str, address: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = observer::lab::netns::within(ns, || std::net::TcpStream::connect(address))
        .expect("enter namespace")
        .expect("connect to the metrics address");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: {address}\r\nAccept: text/plain\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let status = answer
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

fn metrics_address(lab: &TestLab, node: &str) -> SocketAddr {
    let plan = lab.status();
    let n = plan.nodes.iter().find(|n| n.name == node).expect("node");
    SocketAddr::new(n.underlay_ip, 9477)
}

fn start_prometheus(lab: &TestLab) -> Prometheus {
    let targets: Vec<String> = lab
        .status()
        .nodes
        .iter()
        .map(|n| SocketAddr::new(n.underlay_ip, 9477).to_string())
        .collect();
    let p = Prometheus::start(&format!("{}-underlay", lab.name), &targets);
    p.wait_until(Duration::from_secs(30), "every target up", |p| {
        p.try_query("sum(up)")
            .is_some_and(|r| r.first().is_some_and(|s| s.value() == targets.len() as f64))
    });
    p
}

/// Waits until `expr` gives `want` (counters are scraped every second).
fn expect_value(p: &Prometheus, expr: &str, want: f64) {
    let seen = std::cell::Cell::new(f64::NAN);
    let done = |p: &Prometheus| {
        let r = p.query(expr);
        if let [s] = r.as_slice() {
            seen.set(s.value());
        }
        seen.get() == want
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !done(p) {
        assert!(
            std::time::Instant::now() < deadline,
            "{expr}: want {want}, Prometheus has {}",
            seen.get()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn prometheus_counters_equal_the_traffic_sent_and_promtool_is_clean() {
    let lab = TestLab::up(&[], &[]);
    let p = start_prometheus(&lab);

    // Health endpoints answer on each node's own address.
    for node in ["node1", "node2"] {
        let ns = format!("{}-{node}", lab.name);
        let address = metrics_address(&lab, node);
        assert_eq!(http_get(&ns, address, "/healthz").0, 200);
        assert_eq!(http_get(&ns, address, "/readyz").0, 200);
    }

    // 12 datagrams of 200 bytes: 12 × (20 + 8 + 200) IP bytes.
    lab.send_udp("node1-pod1", "node2-pod1", false, 7100, 12, 200);
    let bytes = 12.0 * 228.0;
    let flow = |node: &str, dir: &str, what: &str| {
        format!(
            "observer_flow_{what}_total{{node=\"{node}\",direction=\"{dir}\",protocol=\"udp\",port=\"7100\"}}"
        )
    };
    expect_value(&p, &flow("node1", "egress", "packets"), 12.0);
    expect_value(&p, &flow("node1", "egress", "bytes"), bytes);
    expect_value(&p, &flow("node2", "ingress", "packets"), 12.0);
    expect_value(&p, &flow("node2", "ingress", "bytes"), bytes);
    // Names at the default (workload) granularity.
    let r = p.query(&flow("node1", "egress", "packets"));
    assert_eq!(r[0].metric["src"], "app1");
    assert_eq!(r[0].metric["dst"], "app1");
    assert_eq!(r[0].metric["src_namespace"], "default");
    // Across nodes in a VXLAN pool.
    assert_eq!(r[0].metric["encap"], "vxlan");

    // Through a Service VIP: counted on the client side (VIP) and the
    // backend's side (endpoint), 10 datagrams of 100 bytes.
    let plan = lab.status();
    let app2 = plan.services.iter().find(|s| s.name == "app2").unwrap();
    let src = pod(&plan, "node1-pod1");
    let sent = observer::lab::traffic::udp_service(&plan, src, src.ips[0], app2, 10, 100)
        .expect("traffic to the VIP");
    expect_value(
        &p,
        "sum(observer_service_packets_total{service=\"app2\",port=\"dns\",via=\"vip\"})",
        10.0,
    );
    expect_value(
        &p,
        "sum(observer_service_bytes_total{service=\"app2\",port=\"dns\",via=\"endpoint\"})",
        10.0 * 128.0,
    );
    expect_value(
        &p,
        "sum(observer_service_flows_total{service=\"app2\",via=\"vip\"})",
        1.0,
    );
    // Delivered to one of app2's backends, named as its pod.
    for s in p.query("observer_service_packets_total{service=\"app2\",via=\"endpoint\"}") {
        assert!(app2.backends.contains(&s.metric["backend"]), "{s:?}");
    }
    assert_eq!(sent.packets, Some(10));

    // Every counter is also exact per pod: node2-pod1 received at least our
    // 12 datagrams, and the observer's own series are there.
    assert!(
        p.value(
            "observer_pod_packets_total{node=\"node2\",pod=\"node2-pod1\",direction=\"ingress\"}"
        ) >= 12.0
    );
    assert_eq!(
        p.value("observer_flow_map_capacity{node=\"node1\"}"),
        observer_common::DEFAULT_FLOW_CAPACITY as f64
    );
    assert_eq!(
        p.value("observer_attached_interfaces{node=\"node1\",kind=\"pod\"}"),
        2.0
    );
    assert_eq!(
        p.value("observer_map_insert_failures_total{node=\"node1\"}"),
        0.0
    );
    assert_eq!(
        p.value("observer_source_synced{node=\"node1\",source=\"routes\"}"),
        1.0
    );
    assert!(p.value("observer_encap_packets_total{node=\"node1\",encap=\"vxlan\",peer_node=\"node2\",direction=\"egress\"}") >= 12.0);

    // promtool finds nothing to complain about in either node's scrape.
    for node in ["node1", "node2"] {
        let ns = format!("{}-{node}", lab.name);
        let (status, text) = http_get(&ns, metrics_address(&lab, node), "/metrics");
        assert_eq!(status, 200);
        common::prometheus::check_metrics(&text).unwrap_or_else(|e| panic!("{node}: {e}"));
    }
}

#[test]
fn the_series_cap_folds_a_flood_of_distinct_flows_into_other() {
    let cap = 20;
    let lab = TestLab::up(
        &["--nodes", "1"],
        &[("OBSERVER_METRICS_MAX_SERIES", &cap.to_string())],
    );
    let p = start_prometheus(&lab);
    // 150 destination ports, 2 datagrams each: 150 label sets per direction.
    let ports = 150u16;
    for i in 0..ports {
        lab.send_udp("node1-pod1", "node1-pod2", false, 20_000 + i, 2, 10);
    }
    let sent = 2.0 * ports as f64;
    // Nothing is lost: every packet on a pod interface is in some flow
    // series, the folded ones in `other`.
    p.wait_until(Duration::from_secs(20), "the flood in the metrics", |p| {
        p.try_query("sum(observer_pod_packets_total)")
            .is_some_and(|r| r.first().is_some_and(|s| s.value() >= 2.0 * sent))
    });
    let (flows, pods) = (
        p.value("sum(observer_flow_packets_total)"),
        p.value("sum(observer_pod_packets_total)"),
    );
    assert_eq!(flows, pods, "flow series lost packets");
    let series = p.value("observer_metrics_series{family=\"flow\"}");
    assert!(
        series <= cap as f64,
        "{series} flow series with a cap of {cap}"
    );
    let folded = p.value("observer_metrics_folded_total{family=\"flow\"}");
    assert!(folded > 0.0, "nothing folded");
    let other = p.value("observer_flow_packets_total{direction=\"other\"}");
    assert!(other > 0.0);
    let distinct = p.query("observer_flow_packets_total").len();
    assert!(
        distinct <= cap + 1,
        "{distinct} series exported with a cap of {cap} (+1 for other)"
    );
}

#[test]
fn a_pod_sending_over_the_tunnel_mtu_is_counted_with_the_icmp_it_gets() {
    let lab = TestLab::up(&[], &[]);
    let p = start_prometheus(&lab);
    let plan = lab.status();
    let (src, dst) = (pod(&plan, "node1-pod1"), pod(&plan, "node2-pod1"));
    // The fault: the pod and its host side think 1500 fits, the tunnel
    // carries 1450.
    let set = |ns: &str, dev: &str| sh(&["ip", "-n", ns, "link", "set", dev, "mtu", "1500"]);
    set(&src.netns, "eth0");
    set(&format!("{}-node1", lab.name), &src.interface);
    // DF set, path MTU ignored (IP_PMTUDISC_PROBE): each datagram goes out
    // at 1488 bytes and is refused with fragmentation-needed.
    let sock = observer::lab::netns::within(&src.netns, || {
        std::net::UdpSocket::bind(SocketAddr::new(src.ips[0], 0))
    })
    .unwrap()
    .unwrap();
    let probe: libc::c_int = libc::IP_PMTUDISC_PROBE;
    // SAFETY: a valid socket and option value of the size passed.
    let rc = unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&sock),
            libc::IPPROTO_IP,
            libc::IP_MTU_DISCOVER,
            (&raw const probe).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "IP_MTU_DISCOVER");
    for _ in 0..3 {
        sock.send_to(&[0u8; 1460], SocketAddr::new(dst.ips[0], 7200))
            .expect("send an oversize datagram");
        std::thread::sleep(Duration::from_millis(200));
    }
    expect_value(
        &p,
        "observer_mtu_exceeded_packets_total{node=\"node1\",pod=\"node1-pod1\"}",
        3.0,
    );
    expect_value(
        &p,
        "observer_icmp_too_big_packets_total{node=\"node1\",family=\"ipv4\",direction=\"ingress\"}",
        3.0,
    );
    // Small packets are not counted.
    for _ in 0..3 {
        sock.send_to(&[0u8; 100], SocketAddr::new(dst.ips[0], 7200))
            .unwrap();
    }
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        p.value("observer_mtu_exceeded_packets_total{node=\"node1\",pod=\"node1-pod1\"}"),
        3.0
    );
}
