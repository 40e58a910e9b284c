//! The classifier under generated and mutated frames (`cargo xtask
//! fuzz`): see `observer::fuzz`. Exits 1 on any violation.

use clap::Parser as _;
use observer::fuzz::{FuzzArgs, run};

fn main() {
    match run(FuzzArgs::parse()) {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(2);
        }
    }
}
