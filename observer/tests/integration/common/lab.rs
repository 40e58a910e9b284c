//! The observer binary, and a lab for one test: a name of its own, torn
//! down on drop even when the test fails.

use std::{
    process::{Command, Output},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use observer::{
    api::FlowView,
    lab::{
        plan::{Plan, PodPlan},
        traffic::Sent,
    },
};
use serde_json::Value;

/// The observer binary with `args`, without the caller's `OBSERVER_SOCKET`
/// and `NO_COLOR`: tests see what any pipe gets.
pub fn command(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_observer"));
    c.args(args)
        .env_remove("OBSERVER_SOCKET")
        .env_remove("NO_COLOR");
    c
}

/// Runs the observer binary, whatever its exit status.
pub fn run(args: &[&str]) -> Output {
    command(args).output().expect("run observer")
}

/// Runs the observer binary; panics with its stderr when it fails. Its
/// output is captured, so not a terminal: never coloured.
pub fn observer(args: &[&str]) -> String {
    succeeded(args, run(args))
}

fn succeeded(args: &[&str], out: Output) -> String {
    assert!(
        out.status.success(),
        "observer {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(!stdout.contains('\x1b'), "colour on a pipe: {stdout:?}");
    stdout
}

/// A pod of the plan by name.
pub fn pod<'a>(plan: &'a Plan, name: &str) -> &'a PodPlan {
    plan.pods
        .iter()
        .find(|p| p.name == name)
        .unwrap_or_else(|| panic!("no pod {name}"))
}

/// The host-side interface of a pod.
pub fn iface_of(plan: &Plan, name: &str) -> String {
    pod(plan, name).interface.clone()
}

/// (packets, bytes, direction, encap, overhead) of a flow.
pub fn counts(f: &FlowView) -> (u64, u64, &str, &str, u64) {
    (
        f.packets,
        f.bytes,
        f.direction.name(),
        f.encap.name(),
        f.overhead_bytes,
    )
}

pub struct TestLab {
    pub name: String,
}

impl TestLab {
    /// `observer lab up` with `extra` arguments; `env` is passed to the lab's
    /// daemons (they inherit it). The name is unique per test process and
    /// lab, so tests run in parallel. Root, and the caller's module past the
    /// gate ([`super::require_root`]).
    #[track_caller]
    pub fn up(extra: &[&str], env: &[(&str, &str)]) -> Self {
        super::require_root();
        static N: AtomicU32 = AtomicU32::new(0);
        // The test binary's initial (at most 12 letters or digits in all).
        let initial = &env!("CARGO_CRATE_NAME")[..1];
        let name = format!(
            "{initial}{}x{}",
            std::process::id() % 100_000,
            N.fetch_add(1, Ordering::Relaxed)
        );
        let lab = TestLab { name };
        let mut args = vec!["lab", "up", "--name", &lab.name];
        args.extend_from_slice(extra);
        let out = command(&args)
            .envs(env.iter().copied())
            .output()
            .expect("run observer lab up");
        succeeded(&args, out);
        lab
    }

    /// `observer lab down`, which must succeed (drop does it quietly).
    pub fn down(&self) {
        observer(&["lab", "down", "--name", &self.name]);
    }

    /// `observer lab status -o json` as text.
    fn status_text(&self) -> String {
        observer(&["lab", "status", "--name", &self.name, "-o", "json"])
    }

    pub fn status(&self) -> Plan {
        serde_json::from_str(&self.status_text()).expect("status JSON")
    }

    /// The status as JSON, to check fields the [`Plan`] may not carry.
    pub fn status_json(&self) -> Value {
        serde_json::from_str(&self.status_text()).expect("status JSON")
    }

    /// `observer lab traffic`: the lab's traffic mix, what it sent.
    pub fn traffic(&self) -> Vec<Sent> {
        serde_json::from_str(&observer(&[
            "lab", "traffic", "--name", &self.name, "-o", "json",
        ]))
        .expect("traffic JSON")
    }

    /// `observer VERB --lab NAME --lab-node NODE ARGS...`
    pub fn query(&self, node: &str, verb: &str, args: &[&str]) -> String {
        let mut a = vec![verb, "--lab", &self.name, "--lab-node", node];
        a.extend_from_slice(args);
        observer(&a)
    }

    /// [`query`](Self::query) with `-o json`, parsed.
    pub fn json(&self, node: &str, verb: &str, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.extend(["-o", "json"]);
        let text = self.query(node, verb, &a);
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{verb} JSON: {e}: {text}"))
    }

    /// (exit success, checks) of `observer doctor -o json` on a node: it
    /// exits 1 when it finds a problem, so its status is part of the answer.
    pub fn doctor(&self, node: &str) -> (bool, Vec<observer::api::Check>) {
        let args = [
            "doctor",
            "--lab",
            &self.name,
            "--lab-node",
            node,
            "-o",
            "json",
        ];
        let out = run(&args);
        let checks = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "doctor JSON: {e}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        });
        (out.status.success(), checks)
    }

    /// A node's flows.
    pub fn flows(&self, node: &str) -> Vec<FlowView> {
        self.flows_where(node, &[])
    }

    /// A node's flows through `observer flows` filters.
    pub fn flows_where(&self, node: &str, filters: &[&str]) -> Vec<FlowView> {
        serde_json::from_value(self.json(node, "flows", filters)).expect("flows JSON")
    }

    /// Waits (10 s at most) until node's flow matching `sent` on `iface`
    /// has `packets`, and returns it as it is then.
    pub fn flow(&self, node: &str, iface: &str, sent: &Sent, packets: u64) -> FlowView {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let found = self.flows(node).into_iter().find(|f| {
                f.interface == iface
                    && f.src_ip.to_string() == sent.src_ip.to_string()
                    && f.src_port == sent.src_port
                    && f.dst_ip.to_string() == sent.dst_ip.to_string()
                    && f.dst_port == sent.dst_port
            });
            match found {
                Some(f) if f.packets >= packets || Instant::now() > deadline => return f,
                None if Instant::now() > deadline => panic!(
                    "no flow {sent:?} on {node}/{iface}: {:#?}",
                    self.flows(node)
                ),
                _ => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }

    /// `count` UDP datagrams of `size` payload bytes between two lab pods,
    /// over IPv6 or IPv4.
    pub fn send_udp(
        &self,
        src: &str,
        dst: &str,
        v6: bool,
        port: u16,
        count: u64,
        size: usize,
    ) -> Sent {
        let plan = self.status();
        let (s, d) = (pod(&plan, src), pod(&plan, dst));
        let pick = |p: &PodPlan| *p.ips.iter().find(|ip| ip.is_ipv6() == v6).expect("address");
        observer::lab::traffic::udp(s, pick(s), d, pick(d), port, count, size).expect("UDP traffic")
    }

    /// A command in a namespace of the lab (`node1`, `node1-pod1`, `underlay`).
    pub fn exec(&self, ns: &str, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &format!("{}-{ns}", self.name)])
            .args(args)
            .output()
            .expect("ip netns exec")
    }
}

impl Drop for TestLab {
    fn drop(&mut self) {
        // Not `run`: no panic while a failed test unwinds.
        let _ = command(&["lab", "down", "--name", &self.name]).output();
    }
}
