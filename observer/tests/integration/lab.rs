//! End to end on the netns lab: known traffic between lab pods shows up in
//! each node's `observer flows -o json` with exact packet and byte counts on
//! the right interfaces, directions and encapsulations; `lab down` leaves
//! nothing behind.

use std::time::{Duration, Instant};

use observer::lab::traffic::Sent;

use crate::common::{
    self,
    lab::{TestLab, counts, iface_of},
    sh,
};

fn exact_counts(v6: bool) {
    let lab = TestLab::up(if v6 { &["--ipv6"] } else { &[] }, &[]);
    let plan = lab.status();
    let (ip_hdr, outer) = if v6 { (40, 70) } else { (20, 50) };
    let bytes = 12 * (ip_hdr + 8 + 200);

    // Same node: sender's cali sees the pod's egress, receiver's its ingress.
    let same = lab.send_udp("node1-pod1", "node1-pod2", v6, 7001, 12, 200);
    let f = lab.flow("node1", &iface_of(&plan, "node1-pod1"), &same, 12);
    assert_eq!(counts(&f), (12, bytes, "egress", "none", 0));
    let f = lab.flow("node1", &iface_of(&plan, "node1-pod2"), &same, 12);
    assert_eq!(counts(&f), (12, bytes, "ingress", "none", 0));

    // Across nodes over VXLAN: the same inner bytes everywhere; the tunnel
    // device knows its encapsulation, the underlay reads it from headers.
    let cross = lab.send_udp("node1-pod1", "node2-pod1", v6, 7002, 12, 200);
    let tunnel = if v6 {
        "vxlan-v6.calico"
    } else {
        "vxlan.calico"
    };
    let f = lab.flow("node1", &iface_of(&plan, "node1-pod1"), &cross, 12);
    assert_eq!(counts(&f), (12, bytes, "egress", "none", 0));
    let f = lab.flow("node1", tunnel, &cross, 12);
    assert_eq!(counts(&f), (12, bytes, "egress", "vxlan", 0));
    let f = lab.flow("node1", "eth0", &cross, 12);
    assert_eq!(counts(&f), (12, bytes, "egress", "vxlan", 12 * outer));
    let f = lab.flow("node2", "eth0", &cross, 12);
    assert_eq!(counts(&f), (12, bytes, "ingress", "vxlan", 12 * outer));
    let f = lab.flow("node2", tunnel, &cross, 12);
    assert_eq!(counts(&f), (12, bytes, "ingress", "vxlan", 0));
    let f = lab.flow("node2", &iface_of(&plan, "node2-pod1"), &cross, 12);
    assert_eq!(counts(&f), (12, bytes, "ingress", "none", 0));
    // Nothing of it on the other pod of node 2.
    let other = iface_of(&plan, "node2-pod2");
    assert!(
        !lab.flows("node2")
            .iter()
            .any(|f| f.interface == other && f.dst_port == 7002)
    );
}

#[test]
fn exact_udp_counts_ipv4_same_node_and_across_vxlan() {
    exact_counts(false);
}

#[test]
fn exact_udp_counts_ipv6_dual_stack() {
    exact_counts(true);
}

#[test]
fn status_describes_the_lab_and_down_removes_everything() {
    let lab = TestLab::up(
        &["--nodes", "3", "--pods-per-node", "3", "--block-size", "27"],
        &[],
    );
    let status = lab.status_json();
    let nodes = status["nodes"].as_array().unwrap();
    let pods = status["pods"].as_array().unwrap();
    assert_eq!((nodes.len(), pods.len()), (3, 9));
    for key in ["name", "netns", "underlay_ip", "blocks", "api_socket"] {
        assert!(!nodes[0][key].is_null(), "node has {key}");
    }
    for key in ["namespace", "name", "netns", "ips", "interface", "node"] {
        assert!(!pods[0][key].is_null(), "pod has {key}");
    }
    assert_eq!(nodes[2]["blocks"][0], "10.244.0.64/27");
    let iface = pods[0]["interface"].as_str().unwrap();
    assert!(iface.starts_with("cali") && iface.len() == 15);

    // Traffic across all three nodes works (the full mesh of VXLAN routes).
    let sent: Vec<Sent> = lab.traffic();
    assert_eq!(
        sent.len(),
        5,
        "4 pod-to-pod exchanges and 1 through a Service VIP"
    );

    // A daemon stopped with SIGTERM leaves its interfaces clean.
    let node = nodes[0]["netns"].as_str().unwrap().to_owned();
    let pids = sh(&["ip", "netns", "pids", &node]);
    for pid in pids.lines() {
        // SAFETY: kill(2) on the lab's daemon.
        unsafe { libc::kill(pid.trim().parse().unwrap(), libc::SIGTERM) };
    }
    std::thread::sleep(Duration::from_secs(1));
    let net = sh(&["ip", "netns", "exec", &node, "bpftool", "net"]);
    assert!(
        !net.contains("eth_") && !net.contains("l3_"),
        "programs left attached: {net}"
    );

    lab.down();
    let left = sh(&["ip", "netns", "list"]);
    assert!(
        !left
            .lines()
            .any(|l| l.starts_with(&format!("{}-", lab.name))),
        "namespaces left: {left}"
    );
    assert!(!std::path::Path::new(&format!("/run/observer-lab/{}", lab.name)).exists());
    // Down is idempotent.
    lab.down();
}

#[test]
fn flows_carry_pod_workload_node_and_service_names() {
    let lab = TestLab::up(&[], &[]);
    let plan = lab.status();
    let svc = plan
        .services
        .iter()
        .find(|s| s.name == "app2")
        .expect("Service app2")
        .clone();
    let client = common::lab::pod(&plan, "node1-pod1").clone();
    let sent = observer::lab::traffic::udp_service(&plan, &client, client.ips[0], &svc, 10, 100)
        .expect("UDP to the VIP");

    // Before DNAT, on the client's interface: sent to the Service's VIP.
    let before = lab.flow("node1", &client.interface, &sent, 10);
    assert_eq!(
        (before.packets, before.bytes, before.direction.name()),
        (10, 1280, "egress")
    );
    let service = before.service.as_ref().expect("attributed to a Service");
    assert_eq!(
        (
            service.name.as_str(),
            service.port.as_str(),
            service.via.name()
        ),
        ("app2", "dns", "vip")
    );
    let src = before.src.as_ref().unwrap();
    assert_eq!(
        (
            src.kind.name(),
            src.pod.as_deref(),
            src.workload.as_deref(),
            src.workload_kind.as_deref(),
            src.node.as_deref()
        ),
        (
            "pod",
            Some("node1-pod1"),
            Some("app1"),
            Some("Deployment"),
            Some("node1")
        )
    );
    assert_eq!(before.dst.as_ref().unwrap().kind.name(), "service");

    // After DNAT, on the chosen endpoint's interface: the backend pod, and
    // still the Service (as its endpoint).
    let deadline = Instant::now() + Duration::from_secs(10);
    let (node, backend) = loop {
        let found = ["node1", "node2"].iter().find_map(|node| {
            lab.flows(node)
                .into_iter()
                .find(|f| {
                    f.src_port == sent.src_port
                        && f.dst_port == 5353
                        && f.direction.to_string() == "ingress"
                        && f.interface.starts_with("cali")
                        && f.packets == 10
                })
                .map(|f| (node.to_string(), f))
        });
        match found {
            Some(x) => break x,
            None if Instant::now() > deadline => panic!("no DNATed flow on any endpoint"),
            None => std::thread::sleep(Duration::from_millis(200)),
        }
    };
    assert_eq!((backend.packets, backend.bytes), (10, 1280));
    let dst = backend.dst.as_ref().unwrap();
    assert_eq!(
        (dst.workload.as_deref(), dst.node.as_deref()),
        (Some("app2"), Some(node.as_str()))
    );
    assert_eq!(
        backend
            .service
            .as_ref()
            .map(|s| (s.name.as_str(), s.via.name())),
        Some(("app2", "endpoint"))
    );
    let backend_pod = format!("default/{}", dst.pod.as_deref().unwrap());
    assert_eq!(
        backend.service.as_ref().and_then(|s| s.backend_pod.clone()),
        Some(backend_pod.clone())
    );

    // The flow before DNAT names the same endpoint, from conntrack.
    let before = lab.flow("node1", &client.interface, &sent, 10);
    let service = before.service.as_ref().unwrap();
    assert_eq!(service.backend_pod.as_ref(), Some(&backend_pod));
    assert_eq!(
        service.backend.as_deref().map(|b| b.ends_with(":5353")),
        Some(true)
    );

    // `observer services` on node1 counts the VIP traffic of its client.
    let services = lab.json("node1", "services", &[]);
    let dns = services
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "app2" && s["port"] == "dns")
        .expect("app2:dns listed");
    assert_eq!(
        (dns["vip_packets"].as_u64(), dns["vip_bytes"].as_u64()),
        (Some(10), Some(1280))
    );
    assert_eq!(dns["backends"].as_array().unwrap().len(), 2);

    // Across nodes, tunnelled flows name the node at the other end.
    let cross = lab.send_udp("node1-pod1", "node2-pod1", false, 7010, 3, 50);
    let f = lab.flow("node1", "vxlan.calico", &cross, 3);
    assert_eq!(f.peer_node.as_deref(), Some("node2"));
    assert_eq!(
        f.dst.as_ref().and_then(|d| d.pod.as_deref()),
        Some("node2-pod1")
    );

    // `observer pods` lists node1's pods as the lab built them.
    let pods = lab.json("node1", "pods", &[]);
    let pods = pods.as_array().unwrap();
    assert_eq!(pods.len(), 2);
    for p in pods {
        let planned = plan
            .pods
            .iter()
            .find(|q| p["name"] == q.name.as_str())
            .unwrap();
        assert_eq!(p["interface"], planned.interface.as_str());
        assert_eq!(p["networks"][0], format!("{}/32", planned.ips[0]));
        assert_eq!(p["attached"], true);
        assert_eq!(p["node"], "node1");
    }
    let sender = pods.iter().find(|p| p["name"] == "node1-pod1").unwrap();
    assert!(sender["egress_packets"].as_u64().unwrap() >= 13);
}
