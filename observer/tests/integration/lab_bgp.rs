//! End to end on a BGP lab (`observer lab up --routing bgp`): a real BIRD
//! 1.6 per node in Calico's node-to-node iBGP mesh. Every mesh session is
//! Established, every node has `proto bird` routes to the other nodes'
//! blocks via their underlay address, a peer whose BIRD stops shows down
//! within the hold time, and cross-node traffic is counted unencapsulated
//! with exact packet and byte counts.

use std::time::{Duration, Instant};

use observer::lab::plan::NodePlan;

use crate::common::{
    lab::{TestLab, counts, iface_of},
    sh,
};

/// Calico's mesh session name for a peer: `Mesh_172_30_0_12`.
fn mesh(peer: &NodePlan) -> String {
    format!("Mesh_{}", peer.underlay_ip.to_string().replace('.', "_"))
}

/// `birdc show protocols` on a node: (name, whole line) of its Mesh sessions.
fn mesh_sessions(node: &NodePlan) -> Vec<(String, String)> {
    let socket = node
        .bird_socket
        .as_deref()
        .expect("a BGP node has a BIRD socket");
    sh(&["birdc", "-s", socket, "show", "protocols"])
        .lines()
        .filter(|l| l.starts_with("Mesh_"))
        .map(|l| {
            (
                l.split_whitespace().next().unwrap().to_owned(),
                l.to_owned(),
            )
        })
        .collect()
}

fn established(node: &NodePlan, peer: &NodePlan) -> bool {
    mesh_sessions(node)
        .iter()
        .any(|(name, line)| *name == mesh(peer) && line.contains("Established"))
}

fn bird_pid(node: &NodePlan) -> i32 {
    let socket = node.bird_socket.as_deref().unwrap();
    let pid_file = socket.replace("bird.ctl", "bird.pid");
    std::fs::read_to_string(&pid_file)
        .unwrap_or_else(|e| panic!("{pid_file}: {e}"))
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn bgp_mesh_is_established_routes_are_bird_and_a_stopped_peer_goes_down() {
    // Dropped, the lab is taken down with its BIRDs, stopped ones included.
    let lab = TestLab::up(
        &["--routing", "bgp", "--nodes", "3", "--pods-per-node", "1"],
        &[],
    );
    let plan = lab.status();
    assert_eq!(plan.routing.name(), "bgp");
    let status = lab.status_json();
    assert_eq!(status["routing"], "bgp");
    for (node, json) in plan.nodes.iter().zip(status["nodes"].as_array().unwrap()) {
        assert_eq!(
            json["metrics_url"],
            format!("http://{}:9477/metrics", node.underlay_ip)
        );
        assert!(json["bird_socket"].as_str().unwrap().ends_with("/bird.ctl"));
        assert!(json.get("bird6_socket").is_none(), "IPv4-only lab");
        assert!(
            node.tunnel_ips.is_empty(),
            "no tunnel addresses without VXLAN"
        );
        // The CNI config Calico's install-cni would write: no tunnel, so the
        // underlay's MTU.
        let conflist: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(format!("{}/10-calico.conflist", node.cni_dir)).unwrap(),
        )
        .unwrap();
        assert_eq!(conflist["plugins"][0]["type"], "calico");
        assert_eq!(conflist["plugins"][0]["mtu"], 1500);
        assert_eq!(conflist["plugins"][0]["nodename"], node.name.as_str());
    }
    // The IPPool says what the lab built: unencapsulated.
    let pools: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(format!(
            "/run/observer-lab/{}/objects/ippools.json",
            lab.name
        ))
        .unwrap(),
    )
    .unwrap();
    let spec = &pools["items"][0]["spec"];
    assert_eq!(
        (&spec["ipipMode"], &spec["vxlanMode"], &spec["cidr"]),
        (&"Never".into(), &"Never".into(), &"10.244.0.0/16".into())
    );

    for node in &plan.nodes {
        // No VXLAN device at all.
        let links = sh(&["ip", "-n", &node.netns, "-o", "link", "show"]);
        assert!(!links.contains("vxlan"), "{}: {links}", node.name);
        // Every mesh peer Established, and only the peers.
        let sessions = mesh_sessions(node);
        assert_eq!(sessions.len(), plan.nodes.len() - 1, "{sessions:?}");
        for peer in plan.nodes.iter().filter(|p| p.name != node.name) {
            assert!(
                established(node, peer),
                "{} -> {}: {sessions:?}",
                node.name,
                peer.name
            );
        }
        // BIRD programmed the node's own block as a blackhole, and the
        // others' via their underlay address on eth0.
        let routes = sh(&[
            "ip",
            "-n",
            &node.netns,
            "-4",
            "route",
            "show",
            "proto",
            "bird",
        ]);
        assert!(
            routes.contains(&format!("blackhole {}", node.blocks[0])),
            "{}: {routes}",
            node.name
        );
        for peer in plan.nodes.iter().filter(|p| p.name != node.name) {
            let want = format!("{} via {} dev eth0", peer.blocks[0], peer.underlay_ip);
            assert!(
                routes.lines().any(|l| l.trim() == want),
                "{}: no `{want}` in\n{routes}",
                node.name
            );
        }
    }
    // Pods reach each other across every pair of nodes.
    for src in &plan.pods {
        for dst in plan.pods.iter().filter(|p| p.node != src.node) {
            sh(&[
                "ip",
                "netns",
                "exec",
                &src.netns,
                "ping",
                "-c1",
                "-W2",
                &dst.ips[0].to_string(),
            ]);
        }
    }

    // Freeze node3's BIRD: its TCP sessions stay open, so only the hold
    // timer can tell. The lab's template sets `hold time 9` (keepalives
    // every 3 s) instead of BIRD's 240 s so that this takes seconds.
    let (n1, n2, n3) = (&plan.nodes[0], &plan.nodes[1], &plan.nodes[2]);
    let frozen = bird_pid(n3);
    // SAFETY: kill(2) on the lab's own BIRD, by its pid file.
    unsafe { libc::kill(frozen, libc::SIGSTOP) };
    let stopped = Instant::now();
    let hold = Duration::from_secs(9);
    while established(n1, n3) || established(n2, n3) {
        assert!(
            stopped.elapsed() < hold + Duration::from_secs(3),
            "node3's sessions still Established {:?} after its BIRD stopped: {:?} {:?}",
            stopped.elapsed(),
            mesh_sessions(n1),
            mesh_sessions(n2)
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    let gone = stopped.elapsed();
    assert!(
        gone <= hold + Duration::from_secs(1),
        "down after {gone:?}, hold time {hold:?}"
    );
    // The rest of the mesh is untouched.
    assert!(established(n1, n2) && established(n2, n1));

    // Killed outright, its peers see the connection close at once.
    let killed = bird_pid(n2);
    // SAFETY: as above.
    unsafe { libc::kill(killed, libc::SIGKILL) };
    let deadline = Instant::now() + Duration::from_secs(3);
    while established(n1, n2) {
        assert!(Instant::now() < deadline, "{:?}", mesh_sessions(n1));
        std::thread::sleep(Duration::from_millis(100));
    }

    // `lab down` kills the BIRDs, the frozen one too.
    lab.down();
    let alive = |pid: i32| std::path::Path::new(&format!("/proc/{pid}")).exists();
    let deadline = Instant::now() + Duration::from_secs(3);
    while alive(frozen) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!alive(frozen), "node3's BIRD survived `lab down`");
    assert!(!std::path::Path::new(&format!("/run/observer-lab/{}", lab.name)).exists());
}

#[test]
fn bgp_cross_node_traffic_is_counted_unencapsulated() {
    let lab = TestLab::up(&["--routing", "bgp", "--ipv6"], &[]);
    let plan = lab.status();
    assert!(plan.nodes.iter().all(|n| n.bird6_socket.is_some()));
    for v6 in [false, true] {
        let (ip_hdr, port) = if v6 { (40, 7102) } else { (20, 7101) };
        let bytes = 12 * (ip_hdr + 8 + 200);
        let cross = lab.send_udp("node1-pod1", "node2-pod1", v6, port, 12, 200);
        // The same packets on the sender's veth, both underlays and the
        // receiver's veth, with no encapsulation anywhere.
        let f = lab.flow("node1", &iface_of(&plan, "node1-pod1"), &cross, 12);
        assert_eq!(counts(&f), (12, bytes, "egress", "none", 0));
        let f = lab.flow("node1", "eth0", &cross, 12);
        assert_eq!(counts(&f), (12, bytes, "egress", "none", 0));
        assert_eq!(
            f.dst.as_ref().and_then(|d| d.node.as_deref()),
            Some("node2"),
            "{f:?}"
        );
        let f = lab.flow("node2", "eth0", &cross, 12);
        assert_eq!(counts(&f), (12, bytes, "ingress", "none", 0));
        let f = lab.flow("node2", &iface_of(&plan, "node2-pod1"), &cross, 12);
        assert_eq!(counts(&f), (12, bytes, "ingress", "none", 0));
        assert_eq!(
            f.src.as_ref().and_then(|s| s.pod.as_deref()),
            Some("node1-pod1")
        );
        // No tunnel device saw it (there is none).
        assert!(
            !lab.flows("node1")
                .iter()
                .any(|f| f.dst_port == port && f.interface.contains("vxlan"))
        );
    }
    // The lab's traffic mix works over BGP routes too.
    let sent = lab.traffic();
    assert_eq!(
        sent.len(),
        10,
        "per family 4 pod-to-pod exchanges and 1 through a Service VIP"
    );

    // The Calico views agree with what the lab built.
    let view = |verb: &str| lab.json("node1", verb, &[]);
    // `observer node`: both BIRDs, the one mesh peer Established in each.
    let node = view("node");
    let bgp = node["bgp"].as_array().expect("bgp");
    assert_eq!(bgp.len(), 2, "{node:#}");
    for family in bgp {
        let peers = family["peers"].as_array().expect("peers");
        assert_eq!(peers.len(), 1, "{family:#}");
        assert_eq!(peers[0]["peer_type"], "node-to-node mesh");
        assert_eq!(peers[0]["bgp_state"], "Established");
    }
    // `observer routes`: node2's blocks via BIRD over eth0, unencapsulated
    // as the pool says, with the traffic just sent.
    let routes = view("routes");
    let node2 = routes["peers"]
        .as_array()
        .expect("peers")
        .iter()
        .find(|p| p["node"] == "node2")
        .unwrap_or_else(|| panic!("{routes:#}"));
    let blocks = node2["routes"].as_array().expect("routes");
    assert_eq!(blocks.len(), 2, "{node2:#}");
    for r in blocks {
        assert_eq!(
            (
                &r["protocol"],
                &r["device"],
                &r["device_encap"],
                &r["expected_encap"]
            ),
            (
                &"bird".into(),
                &"eth0".into(),
                &"none".into(),
                &"none".into()
            ),
            "{r:#}"
        );
    }
    assert!(node2["tx_packets"].as_u64().unwrap() > 0, "{node2:#}");
    // `observer ipam`: the pools in the lab's mode.
    let ipam = view("ipam");
    for pool in ipam["pools"].as_array().expect("pools") {
        assert_eq!(
            (&pool["ipip_mode"], &pool["vxlan_mode"]),
            (&"Never".into(), &"Never".into())
        );
    }
}
