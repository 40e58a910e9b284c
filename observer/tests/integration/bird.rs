//! The BIRD client against a real BIRD 1.6 (Debian's `bird`/`bird6`): two
//! network namespaces joined by a veth, an iBGP session between them named
//! the way Calico names its mesh peers, plus a peer that never answers.
//! We check the peers as `calicoctl node status` would show them, that a
//! peer whose BIRD we stop leaves `up`, and that BIRD's own socket is read
//! without a greeting problem. Fails (never passes quietly) without root or
//! without BIRD.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use observer::{api::BirdStatus, sources::bird::show_protocols};

use crate::common::{self, sh};

const BIRD: &str = "/usr/sbin/bird";
const BIRD6: &str = "/usr/sbin/bird6";

fn require_bird() {
    for b in [BIRD, BIRD6] {
        assert!(
            Path::new(b).exists(),
            "{b} is missing: this test runs a real BIRD 1.6 (`apt-get install bird`, which `cargo xtask setup` does)"
        );
    }
}

/// Two namespaces and the BIRDs we started in them; removed on drop, even
/// when the test fails.
struct Lab {
    ns: [String; 2],
    dir: tempfile::TempDir,
}

impl Lab {
    fn new() -> Self {
        let tag = std::process::id();
        let lab = Lab {
            ns: [format!("obsbird-a-{tag}"), format!("obsbird-b-{tag}")],
            dir: tempfile::tempdir().unwrap(),
        };
        for ns in &lab.ns {
            sh(&["ip", "netns", "add", ns]);
            sh(&["ip", "-n", ns, "link", "set", "lo", "up"]);
        }
        let (a, b) = (&lab.ns[0], &lab.ns[1]);
        sh(&[
            "ip", "-n", a, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns",
            b,
        ]);
        for (ns, v4, v6) in [
            (a, "10.99.0.1/24", "fd00:99::1/64"),
            (b, "10.99.0.2/24", "fd00:99::2/64"),
        ] {
            sh(&["ip", "-n", ns, "addr", "add", v4, "dev", "eth0"]);
            sh(&["ip", "-n", ns, "addr", "add", v6, "dev", "eth0", "nodad"]);
            sh(&["ip", "-n", ns, "link", "set", "eth0", "up"]);
        }
        lab
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Starts `bird` (or `bird6`) in namespace `i` with `config`; returns
    /// its control socket.
    fn start(&self, i: usize, v6: bool, config: &str) -> PathBuf {
        let name = format!("{}{}", if v6 { "bird6" } else { "bird" }, i);
        let conf = self.path(&format!("{name}.conf"));
        std::fs::write(&conf, config).unwrap();
        let sock = self.path(&format!("{name}.ctl"));
        let pid = self.path(&format!("{name}.pid"));
        sh(&[
            "ip",
            "netns",
            "exec",
            &self.ns[i],
            if v6 { BIRD6 } else { BIRD },
            "-c",
            conf.to_str().unwrap(),
            "-s",
            sock.to_str().unwrap(),
            "-P",
            pid.to_str().unwrap(),
        ]);
        sock
    }

    /// Stops the BIRD we started as `name` (by its pid file).
    fn stop(&self, name: &str) {
        let file = self.path(&format!("{name}.pid"));
        if let Some(pid) = std::fs::read_to_string(&file)
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok())
        {
            // SAFETY: a signal to a process we started (its own pid file).
            unsafe { libc::kill(pid, libc::SIGTERM) };
            let gone = Instant::now() + Duration::from_secs(5);
            while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < gone {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = std::fs::remove_file(&file);
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for name in ["bird0", "bird1", "bird60", "bird61"] {
            self.stop(name);
        }
        for ns in &self.ns {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

fn config(me: &str, peers: &[(&str, &str, bool)]) -> String {
    let mut c = format!(
        "router id {};\nprotocol device {{ scan time 2; }}\nprotocol direct {{ interface \"eth0\"; }}\nprotocol kernel {{ learn; export none; }}\n",
        if me.contains(':') {
            if me.ends_with("::1") {
                "10.99.0.1"
            } else {
                "10.99.0.2"
            }
        } else {
            me
        }
    );
    for (name, addr, disabled) in peers {
        c.push_str(&format!(
            "protocol bgp {name} {{\n  {}local as 64512;\n  neighbor {addr} as 64512;\n  source address {me};\n  connect delay time 1;\n  connect retry time 1;\n  error wait time 1,5;\n  hold time 6;\n}}\n",
            if *disabled { "disabled;\n  " } else { "" }
        ));
    }
    c
}

/// Waits until `pred` holds for the peers `socket` shows.
fn wait_for(socket: &Path, v6: bool, what: &str, pred: impl Fn(&BirdStatus) -> bool) -> BirdStatus {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = BirdStatus::query(socket, v6);
        if pred(&s) {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "waited 20 s for {what}; BIRD says {s:#?}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn real_bird_peers_as_calicoctl_shows_them() {
    common::require_root();
    require_bird();
    let lab = Lab::new();
    // Node A: a mesh peer B, a node-specific peer that never answers, and a
    // disabled global peer. Node B: its mesh peer A.
    let a4 = lab.start(
        0,
        false,
        &config(
            "10.99.0.1",
            &[
                ("Mesh_10_99_0_2", "10.99.0.2", false),
                ("Node_10_99_0_9", "10.99.0.9", false),
                ("Global_10_99_0_7", "10.99.0.7", true),
            ],
        ),
    );
    lab.start(
        1,
        false,
        &config("10.99.0.2", &[("Mesh_10_99_0_1", "10.99.0.1", false)]),
    );
    let a6 = lab.start(
        0,
        true,
        &config("fd00:99::1", &[("Mesh_fd00_99__2", "fd00:99::2", false)]),
    );
    lab.start(
        1,
        true,
        &config("fd00:99::2", &[("Mesh_fd00_99__1", "fd00:99::1", false)]),
    );

    let (version, protocols) = show_protocols(&a4).unwrap();
    assert_eq!(version.as_deref(), Some("BIRD 1.6.8"));
    // device1, direct1, kernel1 and our three BGP protocols.
    assert_eq!(protocols.len(), 6, "{protocols:#?}");

    // Established, and past BIRD's short `feed` state (routes being sent)
    // into `up`.
    let s = wait_for(&a4, false, "the IPv4 mesh session", |s| {
        s.peers
            .iter()
            .any(|p| p.name == "Mesh_10_99_0_2" && p.bgp_state == "Established" && p.state == "up")
    });
    assert!(s.running && s.error.is_none());
    assert_eq!(s.family, "IPv4");
    let by_name = |n: &str| s.peers.iter().find(|p| p.name == n).unwrap().clone();
    let mesh = by_name("Mesh_10_99_0_2");
    assert_eq!(
        (
            mesh.address.to_string(),
            mesh.peer_type.as_str(),
            mesh.state.as_str()
        ),
        ("10.99.0.2".into(), "node-to-node mesh", "up")
    );
    assert!(!mesh.since.is_empty());
    let silent = by_name("Node_10_99_0_9");
    assert_eq!(
        (silent.peer_type.as_str(), silent.state.as_str()),
        ("node specific", "start")
    );
    assert!(
        ["Active", "Connect", "Idle"].contains(&silent.bgp_state.as_str()),
        "{silent:?}"
    );
    let global = by_name("Global_10_99_0_7");
    assert_eq!(
        (
            global.peer_type.as_str(),
            global.state.as_str(),
            global.info.as_str()
        ),
        ("global", "down", "")
    );

    let s6 = wait_for(&a6, true, "the IPv6 mesh session", |s| {
        s.peers.iter().any(|p| p.bgp_state == "Established")
    });
    assert_eq!(s6.family, "IPv6");
    assert_eq!(s6.peers[0].address.to_string(), "fd00:99::2");

    // Stop B's BIRD: A's mesh peer leaves Established (B closes the
    // session on shutdown; at worst the 6 s hold time).
    lab.stop("bird1");
    let s = wait_for(&a4, false, "the mesh peer to go down", |s| {
        s.peers
            .iter()
            .any(|p| p.name == "Mesh_10_99_0_2" && p.state != "up" && p.bgp_state != "Established")
    });
    assert!(s.running);

    // And A's own BIRD gone: not running, said plainly.
    lab.stop("bird0");
    let gone = BirdStatus::query(&a4, false);
    assert!(!gone.running);
    assert!(
        gone.error
            .as_deref()
            .unwrap_or_default()
            .starts_with("not running"),
        "{gone:?}"
    );
}
