//! `observer ipam`, `routes` and `node` agree with what the lab built in
//! VXLAN mode, and on a BGP lab `observer node` (and the doctor) see a peer
//! go down when we freeze its BIRD, within the hold time.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::lab::TestLab;

#[test]
fn ipam_routes_and_node_agree_with_a_vxlan_lab() {
    let lab = TestLab::up(&["--nodes", "3", "--pods-per-node", "2"], &[]);
    let plan = lab.status();
    // node1 sends 12 datagrams to a pod on node2: the peer's traffic.
    lab.send_udp("node1-pod1", "node2-pod1", false, 7300, 12, 200);

    let ipam = &lab.json("node1", "ipam", &[]);
    let pools = ipam["pools"].as_array().unwrap();
    assert_eq!(pools.len(), 1, "{ipam:#}");
    let pool = &pools[0];
    assert_eq!(pool["cidr"], "10.244.0.0/16");
    assert_eq!(pool["block_size"], 26);
    assert_eq!(pool["vxlan_mode"], "Always");
    assert_eq!(pool["ipip_mode"], "Never");
    assert_eq!(pool["nat_outgoing"], true);
    assert_eq!(pool["blocks"], 3);
    // Each node's block: its pods and its VXLAN tunnel address in use.
    let blocks = ipam["blocks"].as_array().unwrap();
    assert_eq!(blocks.len(), 3);
    for n in &plan.nodes {
        let b = blocks
            .iter()
            .find(|b| b["cidr"] == n.blocks[0].to_string())
            .unwrap_or_else(|| panic!("no block of {}: {ipam:#}", n.name));
        assert_eq!(b["node"], n.name.as_str());
        assert_eq!(b["affinity_state"], "confirmed");
        assert_eq!(b["local"], n.name == "node1");
        assert_eq!(b["capacity"], 64);
        assert_eq!(b["in_use"], 3, "2 pods + the tunnel address");
        assert_eq!(b["free"], 61);
    }

    // Routes: every other node's block over vxlan.calico to its tunnel
    // address, as its pool asks; Felix's protocol 80.
    let routes = &lab.json("node1", "routes", &[]);
    let peers = routes["peers"].as_array().unwrap();
    assert_eq!(peers.len(), 2, "{routes:#}");
    for n in plan.nodes.iter().filter(|n| n.name != "node1") {
        let p = peers.iter().find(|p| p["node"] == n.name.as_str()).unwrap();
        let r = &p["routes"].as_array().unwrap()[0];
        assert_eq!(r["block"], n.blocks[0].to_string());
        assert_eq!(r["next_hop"], n.tunnel_ips[0].to_string());
        assert_eq!(r["device"], "vxlan.calico");
        assert_eq!(r["expected_encap"], "vxlan");
        assert_eq!(r["device_encap"], "vxlan");
        assert_eq!(r["protocol"], "80");
    }
    // The datagrams, once the daemon has polled.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let routes = &lab.json("node1", "routes", &[]);
        let node2 = routes["peers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["node"] == "node2")
            .cloned()
            .unwrap();
        if node2["tx_packets"].as_u64().unwrap() >= 12 {
            break;
        }
        assert!(Instant::now() < deadline, "no traffic to node2: {node2:#}");
        std::thread::sleep(Duration::from_millis(300));
    }

    // Node: no BIRD in VXLAN mode, the tunnel device at the lab's MTU, the
    // CNI config's MTU the same.
    let node = &lab.json("node1", "node", &[]);
    assert!(
        node["bgp"]
            .as_array()
            .unwrap()
            .iter()
            .all(|b| b["running"] == false)
    );
    let vxlan = node["devices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["name"] == "vxlan.calico")
        .expect("vxlan.calico");
    assert_eq!(vxlan["mtu"], 1450);
    assert_eq!(vxlan["attached"], true);
    assert_eq!(node["cni_mtu"], 1450);
    let local: Vec<&Value> = node["blocks"].as_array().unwrap().iter().collect();
    assert_eq!(local.len(), 1);
    assert_eq!(local[0]["cidr"], plan.nodes[0].blocks[0].to_string());
}

/// The BGP state of node1's session with `peer` in `observer node`.
/// The BGP state node1's observer shows for `peer`, if it lists it.
fn peer_listed(lab: &TestLab, peer: &str) -> Option<String> {
    let node = lab.json("node1", "node", &[]);
    node["bgp"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|b| b["peers"].as_array().cloned().unwrap_or_default())
        .find(|p| p["address"] == peer)
        .map(|p| p["bgp_state"].as_str().unwrap_or_default().to_owned())
}

fn peer_state(lab: &TestLab, peer: &str) -> String {
    peer_listed(lab, peer).unwrap_or_else(|| panic!("no peer {peer} in node1's `observer node`"))
}

#[test]
fn observer_node_sees_a_frozen_bird_peer_go_down_within_the_hold_time() {
    let lab = TestLab::up(&["--routing", "bgp"], &[]);
    let plan = lab.status();
    let node2 = &plan.nodes[1];
    let peer = node2.underlay_ip.to_string();
    // The daemon waits 2 s at most for BIRD's first answer before it is
    // ready; on a loaded machine the peer can show a poll or two later.
    let start = Instant::now();
    while peer_listed(&lab, &peer).is_none() {
        assert!(
            start.elapsed() < crate::common::patience(10),
            "node1 never listed the peer {peer}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(peer_state(&lab, &peer), "Established");
    let (healthy, checks) = lab.doctor("node1");
    assert!(healthy, "doctor on a healthy BGP lab: {checks:#?}");

    // Frozen, node2's BIRD sends no keepalives: node1 notices when the
    // lab's hold time (9 s) runs out.
    let socket = node2.bird_socket.as_deref().unwrap();
    let pid_file = socket.replace("bird.ctl", "bird.pid");
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // SAFETY: signalling a process the lab started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
    let frozen = Instant::now();
    while peer_state(&lab, &peer) == "Established" {
        // Hold time 9 s, plus a poll of the daemon's BIRD reader.
        assert!(
            frozen.elapsed() < Duration::from_secs(13),
            "node1 still shows {peer} Established after {:?}",
            frozen.elapsed()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let (healthy, checks) = lab.doctor("node1");
    // SAFETY: as above; lets `lab down` stop it.
    unsafe { libc::kill(pid, libc::SIGCONT) };
    assert!(!healthy, "doctor passed with a peer down");
    let bgp = checks.iter().find(|c| c.name == "bgp-peers").unwrap();
    assert_eq!(bgp.verdict, observer::api::Verdict::Fail);
    assert!(
        bgp.evidence.iter().any(|e| e.contains(&peer)),
        "{:?}",
        bgp.evidence
    );
}
