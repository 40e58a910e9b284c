//! `observer doctor` on the lab: clean on a healthy lab, and it finds the
//! faults we inject — a deleted pod route, a wrong MTU, an interface our
//! program was taken off behind the daemon's back, and one where a program
//! of our name that is not ours took its place.

use observer::api::{Check, Verdict};

use crate::common::{
    lab::{TestLab, pod},
    sh,
};

fn check<'a>(checks: &'a [Check], name: &str) -> &'a Check {
    checks.iter().find(|c| c.name == name).expect(name)
}

#[test]
fn doctor_is_clean_on_a_healthy_lab_and_finds_injected_faults() {
    // clsact, so that the test can take a filter off with `tc`.
    let lab = TestLab::up(&[], &[("OBSERVER_ATTACH_MODE", "clsact")]);
    for node in ["node1", "node2"] {
        let (ok, checks) = lab.doctor(node);
        assert!(ok, "{node}: {checks:#?}");
        for name in [
            "pod-routes-and-interfaces",
            "interfaces-belong-to-pods",
            "remote-block-routes",
            "mtu",
        ] {
            assert_eq!(check(&checks, name).verdict, Verdict::Ok, "{node} {name}");
        }
    }

    let plan = lab.status();
    let (pod1, pod2) = (pod(&plan, "node1-pod1"), pod(&plan, "node1-pod2"));
    let node1 = format!("{}-node1", lab.name);
    // A deleted route, a wrong MTU, a filter gone.
    let ip = format!("{}/32", pod1.ips[0]);
    sh(&[
        "ip",
        "-n",
        &node1,
        "route",
        "del",
        &ip,
        "dev",
        &pod1.interface,
    ]);
    sh(&[
        "ip",
        "-n",
        &node1,
        "link",
        "set",
        &pod2.interface,
        "mtu",
        "1500",
    ]);
    sh(&[
        "tc",
        "-n",
        &node1,
        "filter",
        "del",
        "dev",
        &pod2.interface,
        "ingress",
        "pref",
        "1",
    ]);

    // Our name, our tag, not our program: loaded by this test.
    sh(&[
        "tc",
        "-n",
        &node1,
        "filter",
        "del",
        "dev",
        &pod2.interface,
        "egress",
        "pref",
        "1",
    ]);
    let mut foreign = observer::datapath::object::load(1024, None, Default::default())
        .expect("load a foreign copy");
    observer::lab::netns::within(&node1, || {
        use aya::programs::{
            SchedClassifier, TcAttachType,
            tc::{NlOptions, TcAttachOptions},
        };
        let prog: &mut SchedClassifier = foreign
            .program_mut("eth_egress")
            .unwrap()
            .try_into()
            .unwrap();
        let options = TcAttachOptions::Netlink(NlOptions {
            priority: 1,
            ..Default::default()
        });
        prog.attach_with_options(&pod2.interface, TcAttachType::Egress, options)
            .expect("attach the foreign program");
    })
    .unwrap();

    // No wait: the doctor asks the kernel when it runs.
    let (ok, checks) = lab.doctor("node1");
    assert!(!ok, "doctor exited 0 with faults: {checks:#?}");
    let pods = check(&checks, "pod-routes-and-interfaces");
    assert_eq!(pods.verdict, Verdict::Fail);
    let evidence = pods.evidence.join("\n");
    assert!(
        evidence.contains(&format!("default/node1-pod1: no route to {}", pod1.ips[0])),
        "{evidence}"
    );
    assert!(
        evidence.contains(&format!(
            "default/node1-pod2: {}: our filter is not on clsact ingress and egress",
            pod2.interface
        )),
        "{evidence}"
    );
    assert_eq!(pods.evidence.len(), 2, "{evidence}");
    let mtu = check(&checks, "mtu");
    assert_eq!(mtu.verdict, Verdict::Fail);
    assert_eq!(
        mtu.evidence,
        vec![format!(
            "{} (default/node1-pod2) MTU 1500 > 1450 that the tunnel carries",
            pod2.interface
        )]
    );
    assert!(mtu.hint.is_some() && pods.hint.is_some());
    // The other node is untouched.
    let (ok, checks) = lab.doctor("node2");
    assert!(ok, "node2: {checks:#?}");
    drop(foreign);
}
