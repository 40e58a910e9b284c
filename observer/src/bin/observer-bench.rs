//! The observer's benchmarks (`cargo xtask bench [--quick]`): see
//! `observer::bench`.

use clap::Parser as _;
use observer::bench::{BenchArgs, run};

fn main() {
    if let Err(e) = run(BenchArgs::parse()) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
