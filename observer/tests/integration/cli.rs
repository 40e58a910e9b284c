//! The operator's CLI against a real lab: every query verb in table and
//! JSON form, `flows` filters, `--top`, `--watch --count` with rates,
//! `encap`; and, without a lab, the errors when the daemon is not there,
//! bad filter values and shell completions.

use std::{
    collections::BTreeSet,
    os::unix::fs::PermissionsExt as _,
    process::Command,
    time::{Duration, Instant},
};

use observer::api::FlowView;
use serde_json::Value;

use crate::common::{
    self,
    lab::{TestLab, command, observer, run},
};

/// Interface, direction and 5-tuple: what tells flows apart.
fn ids(flows: &[FlowView]) -> BTreeSet<String> {
    flows
        .iter()
        .map(|f| {
            format!(
                "{} {} {} {}:{} {}:{} {:?}",
                f.interface,
                f.direction,
                f.protocol,
                f.src_ip,
                f.src_port,
                f.dst_ip,
                f.dst_port,
                f.icmp_type
            )
        })
        .collect()
}

fn ns_is(f: &FlowView, ns: &str) -> bool {
    [&f.src, &f.dst]
        .into_iter()
        .flatten()
        .any(|e| e.namespace.as_deref() == Some(ns))
}

/// Lines of a table after its header.
fn data_lines(table: &str) -> Vec<&str> {
    table.lines().skip(1).filter(|l| !l.is_empty()).collect()
}

#[test]
fn every_verb_and_flow_filters_on_a_lab() {
    let lab = TestLab::up(&[], &[]);
    lab.traffic();

    // Wait until node1's observer has polled the traffic: the DNS Service
    // flow and the cross-node VXLAN flows.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let all = lab.flows("node1");
        let dns = all
            .iter()
            .any(|f| f.protocol.to_string() == "udp" && f.dst_port == 53);
        let vxlan = all
            .iter()
            .any(|f| f.interface == "vxlan.calico" && f.packets > 0);
        if dns && vxlan {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node1 never showed the lab traffic: {all:#?}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }

    // Every verb, table and JSON.
    let help = observer(&["--help"]);
    let mut verbs = vec!["flows", "pods", "services", "interfaces", "status", "encap"];
    for extra in ["ipam", "routes", "node"] {
        if help
            .lines()
            .any(|l| l.trim_start().starts_with(&format!("{extra} ")))
        {
            verbs.push(extra);
        }
    }
    for verb in &verbs {
        for o in ["table", "wide"] {
            let t = lab.query("node1", verb, &["-o", o]);
            assert!(!t.trim().is_empty(), "{verb} -o {o} printed nothing");
        }
        let v = lab.json("node1", verb, &[]);
        assert!(v.is_array() || v.is_object(), "{verb}: {v}");
    }

    // Tables: human units and aligned columns.
    let table = lab.query("node1", "flows", &[]);
    assert!(table.starts_with("INTERFACE"), "{table}");
    assert!(
        table.contains(" B") || table.contains("KiB"),
        "no units: {table}"
    );
    let header = table.lines().next().unwrap();
    let bytes_end = header.find("BYTES").unwrap() + "BYTES".len();
    for l in data_lines(&table) {
        // BYTES is right-aligned under its header: the unit ends there.
        assert!(
            l[..bytes_end].ends_with('B'),
            "BYTES not aligned in {l:?} (header {header:?})"
        );
    }

    // JSON never has units.
    let pods = lab.json("node1", "pods", &[]);
    assert_eq!(pods.as_array().unwrap().len(), 2, "{pods}");
    assert!(pods[0]["ingress_bytes"].is_u64(), "{pods}");

    // The interface MTU: the lab's tunnel and pods have 1450.
    let ifaces = lab.json("node1", "interfaces", &[]);
    let vx = ifaces
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == "vxlan.calico")
        .expect("vxlan.calico");
    assert_eq!(vx["mtu"], 1450, "{vx}");
    assert!(lab.query("node1", "interfaces", &[]).contains("1450"));

    // encap: node1's VXLAN traffic with node2, its overhead and MTU; a
    // healthy lab has no MTU problems.
    let encap = lab.json("node1", "encap", &[]);
    let t = encap["tunnels"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["device"] == "vxlan.calico" && t["peer_node"] == "node2")
        .unwrap_or_else(|| panic!("no vxlan.calico row for node2: {encap}"));
    let (packets, overhead) = (
        t["packets"].as_u64().unwrap(),
        t["overhead_bytes"].as_u64().unwrap(),
    );
    assert!(packets > 0, "{t}");
    assert_eq!(
        overhead,
        50 * packets,
        "VXLAN over IPv4: 50 bytes a packet: {t}"
    );
    assert_eq!(t["mtu"], 1450, "{t}");
    assert!(t["overhead_percent"].as_f64().unwrap() > 0.0, "{t}");
    assert_eq!(encap["mtu_problems"], Value::Array(vec![]), "{encap}");
    let text = lab.query("node1", "encap", &[]);
    assert!(
        text.contains("vxlan.calico") && text.contains("node2"),
        "{text}"
    );
    assert!(text.contains("MTU problems: none seen"), "{text}");

    // Filters select exactly the flows they say.
    let all = lab.flows("node1");
    let dns = lab.flows_where("node1", &["--protocol", "udp", "--port", "53"]);
    let want: Vec<FlowView> = all
        .iter()
        .filter(|f| f.protocol.to_string() == "udp" && (f.src_port == 53 || f.dst_port == 53))
        .cloned()
        .collect();
    assert!(!dns.is_empty(), "no DNS flows: {all:#?}");
    assert_eq!(ids(&dns), ids(&want));
    assert!(dns.iter().all(|f| f.protocol.to_string() == "udp"));
    // The same by Service.
    let svc = dns
        .iter()
        .find_map(|f| f.service.clone())
        .expect("a Service");
    let by_service = lab.flows_where(
        "node1",
        &["--service", &format!("{}/{}", svc.namespace, svc.name)],
    );
    assert!(!by_service.is_empty());
    assert!(
        by_service
            .iter()
            .all(|f| f.service.as_ref().is_some_and(|s| s.name == svc.name))
    );

    let vx = lab.flows_where("node1", &["--namespace", "default", "--encap", "vxlan"]);
    let want: Vec<FlowView> = all
        .iter()
        .filter(|f| f.encap.to_string() == "vxlan" && ns_is(f, "default"))
        .cloned()
        .collect();
    assert!(
        !vx.is_empty(),
        "no VXLAN flows of namespace default: {all:#?}"
    );
    assert_eq!(ids(&vx), ids(&want));
    // On the tunnel device, and on the underlay (from the outer headers).
    let on: BTreeSet<&str> = vx.iter().map(|f| f.interface.as_str()).collect();
    assert_eq!(on, BTreeSet::from(["eth0", "vxlan.calico"]), "{vx:#?}");

    let node2 = lab.flows_where("node1", &["--node", "node2", "--protocol", "tcp"]);
    assert!(!node2.is_empty());
    assert!(node2.iter().all(|f| {
        f.protocol.to_string() == "tcp"
            && (f.peer_node.as_deref() == Some("node2")
                || [&f.src, &f.dst]
                    .into_iter()
                    .flatten()
                    .any(|e| e.node.as_deref() == Some("node2")))
    }));

    let cali = lab.flows_where("node1", &["--interface", "cali*", "--protocol", "17"]);
    assert!(!cali.is_empty());
    assert!(
        cali.iter()
            .all(|f| f.interface.starts_with("cali") && f.protocol.to_string() == "udp")
    );

    // --top 1: one row, the biggest; by packets too.
    let top = lab.flows_where("node1", &["--top", "1"]);
    assert_eq!(top.len(), 1);
    assert_eq!(top[0].bytes, all.iter().map(|f| f.bytes).max().unwrap());
    assert_eq!(
        data_lines(&lab.query("node1", "flows", &["--top", "1"])).len(),
        1
    );
    let by_packets = lab.flows_where("node1", &["--sort", "packets", "--top", "3"]);
    assert_eq!(by_packets.len(), 3);
    assert!(by_packets.windows(2).all(|w| w[0].packets >= w[1].packets));

    // A filter matching nothing says so.
    let none = lab.query("node1", "flows", &["--port", "1"]);
    assert!(none.contains("no flows match"), "{none}");

    // --sort rate without --watch: two samples, rates in the table and JSON.
    let rated = lab.json(
        "node1",
        "flows",
        &["--sort", "rate", "--interval", "300ms", "--top", "2"],
    );
    assert_eq!(rated.as_array().unwrap().len(), 2);
    assert!(rated[0]["bytes_per_second"].is_number(), "{rated}");
    let t = lab.query("node1", "flows", &["--sort", "rate", "--interval", "300ms"]);
    assert!(t.lines().next().unwrap().contains("BYTES/S"), "{t}");

    // --watch --count 3: three tables, separated by a blank line, with
    // rates; not a terminal, so no screen clearing.
    let w = lab.query(
        "node1",
        "flows",
        &[
            "--watch",
            "--count",
            "3",
            "--interval",
            "500ms",
            "--top",
            "5",
        ],
    );
    assert!(!w.contains('\x1b'), "{w:?}");
    let tables: Vec<&str> = w.split("\n\n").filter(|t| !t.trim().is_empty()).collect();
    assert_eq!(tables.len(), 3, "{w}");
    for t in &tables {
        let head = t.lines().next().unwrap();
        assert!(head.contains("BYTES/S") && head.contains("PKTS/S"), "{t}");
        assert!(data_lines(t).len() <= 5, "{t}");
    }

    // --watch -o json: a JSON array per line and refresh; traffic sent
    // meanwhile shows up as a rate.
    let name = lab.name.clone();
    let watcher = std::thread::spawn(move || {
        let out = run(&[
            "flows",
            "--lab",
            &name,
            "--lab-node",
            "node1",
            "--watch",
            "--count",
            "5",
            "--interval",
            "1s",
            "--protocol",
            "udp",
            "-o",
            "json",
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    });
    std::thread::sleep(Duration::from_millis(300));
    lab.traffic();
    let out = watcher.join().expect("watch");
    let refreshes: Vec<Vec<Value>> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert_eq!(refreshes.len(), 5, "{out}");
    assert!(
        refreshes
            .iter()
            .flatten()
            .any(|f| f["bytes_per_second"].as_f64().unwrap() > 0.0),
        "no rate while traffic ran: {out}"
    );
    assert!(refreshes.iter().flatten().all(|f| f["protocol"] == "udp"));

    // A node the lab does not have: the error lists the ones it has.
    let out = run(&["flows", "--lab", &lab.name, "--lab-node", "node9"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.starts_with("error: "), "{err}");
    assert!(err.contains("node1, node2"), "{err}");
}

#[test]
fn not_running_says_what_to_do() {
    let out = run(&["flows", "--socket", "/nonexistent/observer.sock"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("error: the observer daemon is not running"),
        "{err}"
    );
    for hint in [
        "/nonexistent/observer.sock",
        "observer run",
        "observer lab up",
        "--socket",
        "OBSERVER_SOCKET",
    ] {
        assert!(err.contains(hint), "{hint:?} missing from {err}");
    }
    // The same through the environment, for every verb.
    for verb in ["pods", "services", "interfaces", "status", "encap"] {
        let out = command(&[verb])
            .env("OBSERVER_SOCKET", "/nonexistent/observer.sock")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{verb}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("not running"),
            "{verb}"
        );
    }
    // No such lab.
    let out = run(&["status", "--lab", "nolab-here", "--lab-node", "node1"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("observer lab up"));
}

/// A root-only socket read by another user: "needs root".
#[test]
fn unreadable_socket_needs_root() {
    common::require_root();
    let dir = std::env::temp_dir().join(format!("observer-cli-eacces-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let sock = dir.join("observer.sock");
    let _ = std::fs::remove_file(&sock);
    let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(env!("CARGO_BIN_EXE_observer"))
        .args(["status", "--socket"])
        .arg(&sock)
        .output()
        .expect("setpriv");
    let _ = std::fs::remove_dir_all(&dir);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("permission denied") && err.contains("root"),
        "{err}"
    );
}

#[test]
fn bad_filter_values_say_what_is_allowed() {
    let cases: [(&[&str], &str); 5] = [
        (&["--protocol", "tcpx"], "tcp, udp, icmp, icmpv6"),
        (&["--encap", "gre"], "wireguard"),
        (&["--sort", "name"], "rate"),
        (&["--interval", "soon"], "2s"),
        (&["--pod", "a/b/c"], "NAMESPACE/NAME"),
    ];
    for (args, allowed) in cases {
        let mut a = vec!["flows", "--socket", "/nonexistent/observer.sock"];
        a.extend_from_slice(args);
        let out = run(&a);
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(allowed), "{args:?}: {err}");
    }
    // --count only with --watch.
    assert!(!run(&["flows", "--count", "2"]).status.success());
}

#[test]
fn completions_for_each_shell() {
    for (shell, marker) in [
        ("bash", "_observer()"),
        ("zsh", "#compdef observer"),
        ("fish", "complete -c observer"),
    ] {
        let script = observer(&["completions", shell]);
        assert!(script.contains(marker), "{shell}: {script}");
        for word in ["flows", "encap", "namespace", "watch", "interval"] {
            assert!(script.contains(word), "{shell} lacks {word}");
        }
    }
}
