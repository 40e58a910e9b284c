//! `observer-bench --quick` (the CI smoke of `cargo xtask bench`): it runs
//! every part and writes a report with the keys the issue asks for.

use std::process::Command;

use crate::common;

#[test]
fn quick_bench_writes_every_headline() {
    common::require_root();
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_observer-bench"))
        .arg("--quick")
        .arg("--out")
        .arg(dir.path())
        .output()
        .expect("run observer-bench");
    assert!(
        out.status.success(),
        "observer-bench --quick failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("report.json")).unwrap()).unwrap();
    for key in [
        "kernel_hot_ratio",
        "kernel_distinct_ratio",
        "kernel_empty_ns",
        "throughput_ratio",
        "throughput_ratio_vs_empty",
        "veth_hot_ratio",
        "veth_distinct_ratio",
        "poll_ms_100k",
        "metrics_render_ms_10k",
        "metrics_bytes_per_series",
        "rss_mib_100k",
        "map_mib_64cpu",
    ] {
        let v = report[key]
            .as_f64()
            .unwrap_or_else(|| panic!("{key} is not a number in the report"));
        assert!(v > 0.0, "{key} = {v}");
    }
    // Distinct flows: known flows whose index entries and slots stay in
    // the caches cost less than 100,000 visited in a shuffled order (the
    // difference is what the report calls memory's share).
    let distinct = &report["pass_results"][0]["kernel"]["distinct"];
    let (resident, known) = (
        distinct["resident_known_ns"]["median"].as_f64().unwrap(),
        distinct["known_ours_ns"]["median"].as_f64().unwrap(),
    );
    assert!(
        resident > 0.0 && resident < known,
        "known flows in the caches {resident} ns, 100k shuffled {known} ns"
    );
    // The real daemon while every flow changes: its polls put each change
    // through the flow table, which a poll with nothing changed skips.
    let daemons = report["pass_results"][0]["scale"]["daemon"]
        .as_array()
        .expect("the scale part's daemons");
    let at_100k = daemons
        .iter()
        .find(|d| d["flows"] == 100_000)
        .expect("a daemon with 100k flows");
    let changing = &at_100k["changing"];
    let (steady_ms, changing_ms) = (
        at_100k["poll_ms"]["median"].as_f64().unwrap(),
        changing["poll_ms"]["median"].as_f64().unwrap(),
    );
    assert!(
        changing["flows_changed_per_s"].as_f64().unwrap() > 0.0,
        "no packets sent while the daemon was watched: {changing}"
    );
    assert!(
        changing_ms > steady_ms,
        "polls with every flow changing ({changing_ms} ms) no slower than with none ({steady_ms} ms)"
    );
    // Churn: every new flow found a slot, given back ones included (the
    // quick run sends more new flows than the map has slots).
    let churn = report["pass_results"][0]["scale"]["churn"]
        .as_array()
        .expect("the scale part's churn");
    assert!(!churn.is_empty());
    for c in churn {
        let sent = c["sent"].as_u64().unwrap();
        assert!(
            sent > c["flow_capacity"].as_u64().unwrap(),
            "fewer new flows sent than slots, so none was reused: {c}"
        );
        assert_eq!(c["flow_inserts"].as_u64(), Some(sent), "{c}");
        assert_eq!(c["flow_insert_failures"].as_u64(), Some(0), "{c}");
        assert_eq!(c["vanished"].as_u64(), Some(0), "{c}");
        // The evicted flows listed stay under --retain-flows: the quick run
        // evicts more than that, so some were forgotten.
        assert!(
            c["evicted_listed"]["max"].as_f64().unwrap() <= c["retain_flows"].as_f64().unwrap(),
            "{c}"
        );
        assert!(c["flows_forgotten"].as_u64().unwrap() > 0, "{c}");
    }
    assert!(report["kernel"].as_str().is_some_and(|k| !k.is_empty()));
    assert!(report["cpu"].as_str().is_some_and(|c| !c.is_empty()));
    assert!(dir.path().join("report.md").exists());
}
