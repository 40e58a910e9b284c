//! `cargo xtask test`'s runs and closing line: the host's `cargo test`,
//! then the VM suite, counted together. A VM that cannot start fails the
//! run; it is never skipped unless asked (`--no-vm`), and then it says so.

use std::process::Command;

use anyhow::{Context as _, Result, bail};

use crate::{tally::Tally, vm, workspace_root};

/// Runs `cargo test`, passing its output through, and adds up every test
/// binary's result (for the closing line). Unit tests that need root fail
/// without it here (`OBSERVER_REQUIRE_ROOT=1`), never skip.
pub fn cargo_test(args: &[&str]) -> (Tally, Result<()>) {
    let mut tally = Tally::default();
    let result = (|| {
        use std::io::{BufRead as _, BufReader};
        let mut child = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args(args)
            .env("OBSERVER_REQUIRE_ROOT", "1")
            .current_dir(workspace_root())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .context("starting cargo test")?;
        for line in BufReader::new(child.stdout.take().context("cargo test stdout")?).lines() {
            let line = line?;
            println!("{line}");
            tally.add_line(&line);
        }
        let status = child.wait()?;
        if !status.success() {
            bail!("cargo test failed: {status}");
        }
        Ok(())
    })();
    (tally, result)
}

/// The VM test suite, as part of `cargo xtask test`, and what it counted:
/// a VM that cannot start fails the run, never skips it.
pub fn vm_suite() -> (Tally, Result<()>) {
    let outcome = vm::run(&vm::Options {
        kernel: None,
        kvm: false,
        // The `ci` profile's binaries, which the host's run just built: dev
        // ones run many times slower on the emulated CPU (the suite took
        // 27 minutes with them, 4 optimised).
        release: true,
        command: Vec::new(),
    });
    match outcome {
        Err(e) => (
            Tally::default(),
            Err(e.context("the VM suite could not run")),
        ),
        Ok(o) if o.status != 0 => (
            o.tally,
            Err(anyhow::anyhow!(
                "the VM suite failed (exit status {})",
                o.status
            )),
        ),
        Ok(o) => (o.tally, Ok(())),
    }
}

/// Closes `cargo xtask test` with one line counting the host's and the VM's
/// tests, then fails if either part did.
pub fn report(host: (Tally, Result<()>), vm: Option<(Tally, Result<()>)>) -> Result<()> {
    let (mut total, host) = host;
    let vm = match vm {
        None => {
            println!("VM suite: NOT RUN (--no-vm)");
            Ok(())
        }
        Some((tally, result)) => {
            total.add(tally);
            if let Err(e) = &result {
                println!("VM suite: FAILED: {e:#}");
                // A VM that never ran has no failed test of its own to count.
                if tally.failed == 0 {
                    total.failed += 1;
                }
            }
            result
        }
    };
    println!("tests: {total}");
    host.and(vm)
}
