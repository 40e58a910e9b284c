//! What the guest runs, built on the host: `observer` and, for the VM
//! suite, the integration test binary, of one profile (so that the tests'
//! `CARGO_BIN_EXE_observer` is that same binary). The `ci` profile by
//! default (optimised, with debug checks), with the same selection as
//! `cargo xtask test`'s host run, so that after it nothing is built again:
//! dev binaries run many times slower on the emulated CPU (27 minutes for
//! the suite instead of 4). The guest sees the host's root file system, so
//! the host paths cargo reports work there.

use std::{
    io::{BufRead as _, BufReader},
    path::PathBuf,
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};

/// The test binaries the guest gets (`$TEST_<name>`): the one integration
/// binary, of which `xtask/vm/suite.sh` runs some modules.
pub const SUITE_TESTS: &[&str] = &["integration"];

pub struct Binaries {
    pub observer: PathBuf,
    /// Test target name and executable.
    pub tests: Vec<(String, PathBuf)>,
}

/// Builds with cargo (output passed through) and reads the executables'
/// paths from its JSON messages. Always `cargo xtask test`'s selection,
/// also for another command: building the binary alone unifies other
/// features (no dev-dependencies) and would rebuild most crates again.
pub fn build(profile: &str) -> Result<Binaries> {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.args(["test", "--no-run", "--profile", profile]);
    cmd.args(crate::TEST_SELECTION);
    cmd.arg("--message-format=json-render-diagnostics")
        .current_dir(crate::workspace_root())
        .stdout(Stdio::piped());
    let shown = format!("{cmd:?}");
    let mut child = cmd.spawn().with_context(|| format!("starting {shown}"))?;
    let stdout = child.stdout.take().context("cargo's stdout")?;
    let mut observer = None;
    let mut tests = Vec::new();
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        let (Some(exe), Some(name)) = (msg["executable"].as_str(), msg["target"]["name"].as_str())
        else {
            continue;
        };
        let kinds = msg["target"]["kind"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let is = |k: &str| kinds.iter().any(|v| v == k);
        // A bin's own unit tests are a `bin` built as a test: not the bin.
        let test_harness = msg["profile"]["test"] == true;
        if test_harness && is("test") && SUITE_TESTS.contains(&name) {
            tests.push((name.to_owned(), PathBuf::from(exe)));
        } else if !test_harness && is("bin") && name == "observer" {
            observer = Some(PathBuf::from(exe));
        }
    }
    let status = child.wait()?;
    if !status.success() {
        bail!("{shown} failed: {status}");
    }
    let observer = observer.context("cargo built no `observer` binary")?;
    Ok(Binaries { observer, tests })
}
