//! CI's share of the fuzzing: 100,000 generated and mutated frames through
//! the kernel classifier, checked as `cargo xtask fuzz` checks its million
//! (see `observer::fuzz`). The seed is fixed so that CI is repeatable;
//! `OBSERVER_FUZZ_SEED` picks another.

use observer::{
    datapath::{Datapath, object, testrun},
    fuzz::{
        check,
        runner::{Config, run},
    },
};

use crate::common;

const SEED: u64 = 20_250_612;

#[test]
fn a_hundred_thousand_frames_are_each_accounted_once_and_left_unchanged() {
    common::require_root();
    let seed = std::env::var("OBSERVER_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(SEED);
    let s = run(&Config {
        seed,
        start: 0,
        frames: 100_000,
        batch: 4096,
        max_reports: 5,
        verbose: false,
        progress_every: 0,
    })
    .expect("the fuzzer runs");
    println!("{s}");
    assert_eq!(s.violations, 0, "{}", s.reports.join("\n"));
    // What was run covers what it should: every entry point, every place a
    // packet can be accounted, valid frames and truncation sweeps.
    assert_eq!(s.runs.len(), 4, "{:?}", s.runs);
    assert!(s.landed.iter().all(|&n| n > 1000), "{:?}", s.landed);
    assert!(s.valid > 5000 && s.swept > 5000);
    assert!(s.batches >= 100_000 / 4096);
}

/// The rule by which the fuzzer tells the kernel's own refusals (before any
/// program runs) from failures is exactly the kernel's.
#[test]
fn the_kernel_refuses_exactly_the_frames_the_fuzzer_expects_it_to() {
    common::require_root();
    let dp = Datapath::load(1024).expect("load the eBPF object");
    for prog in [object::ETH_INGRESS, object::L3_EGRESS] {
        for ethertype in [[0x08, 0x00], [0x86, 0xdd], [0x08, 0x06], [0x81, 0x00]] {
            for len in 0..80 {
                let mut f = vec![0x45u8; len];
                if len >= 14 {
                    f[12..14].copy_from_slice(&ethertype);
                }
                let refused = testrun::run(&dp.ebpf, prog, &f, None, 1).is_err();
                assert_eq!(
                    refused,
                    check::refused_by_kernel(&f),
                    "{prog}, {len}-byte frame, bytes 12-13 {ethertype:02x?}"
                );
            }
        }
    }
}
