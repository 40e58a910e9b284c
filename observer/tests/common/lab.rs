//! A lab for one test: a name of its own, torn down on drop even when the
//! test fails.

use std::{
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
};

use observer::lab::{plan::Plan, traffic::Sent};

/// Runs the observer binary; panics with its stderr when it fails.
pub fn observer(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_observer"))
        .args(args)
        .output()
        .expect("run observer");
    assert!(
        out.status.success(),
        "observer {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub struct TestLab {
    pub name: String,
}

impl TestLab {
    /// `observer lab up` with `extra` arguments; `env` is passed to the lab's
    /// daemons (they inherit it).
    pub fn up(extra: &[&str], env: &[(&str, &str)]) -> Self {
        super::require_root();
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "m{}x{}",
            std::process::id() % 100_000,
            N.fetch_add(1, Ordering::Relaxed)
        );
        let lab = TestLab { name };
        let out = Command::new(env!("CARGO_BIN_EXE_observer"))
            .args(["lab", "up", "--name", &lab.name])
            .args(extra)
            .envs(env.iter().copied())
            .output()
            .expect("run observer lab up");
        assert!(
            out.status.success(),
            "observer lab up failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        lab
    }

    pub fn status(&self) -> Plan {
        serde_json::from_str(&observer(&[
            "lab", "status", "--name", &self.name, "-o", "json",
        ]))
        .expect("status JSON")
    }

    /// `count` UDP datagrams of `size` payload bytes between two lab pods.
    pub fn send_udp(&self, src: &str, dst: &str, port: u16, count: u64, size: usize) -> Sent {
        let plan = self.status();
        let pod = |n: &str| plan.pods.iter().find(|p| p.name == n).expect("pod").clone();
        let (s, d) = (pod(src), pod(dst));
        let v4 = |p: &observer::lab::plan::PodPlan| *p.ips.iter().find(|ip| ip.is_ipv4()).unwrap();
        observer::lab::traffic::udp(&s, v4(&s), &d, v4(&d), port, count, size).expect("UDP traffic")
    }

    /// A command in a namespace of the lab (`node1`, `node1-pod1`, `underlay`).
    pub fn exec(&self, ns: &str, args: &[&str]) -> std::process::Output {
        Command::new("ip")
            .args(["netns", "exec", &format!("{}-{ns}", self.name)])
            .args(args)
            .output()
            .expect("ip netns exec")
    }
}

impl Drop for TestLab {
    fn drop(&mut self) {
        let _ = Command::new(env!("CARGO_BIN_EXE_observer"))
            .args(["lab", "down", "--name", &self.name])
            .status();
    }
}
