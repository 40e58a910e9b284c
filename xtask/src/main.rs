//! Project tasks: `cargo xtask setup | build-ebpf | lab | test | bench | fuzz`.
//!
//! `setup` installs what a fresh machine lacks (nightly rust-src,
//! bpf-linker built against the nightly's LLVM, Debian packages the lab and
//! tests use); it is idempotent and quick when everything is there, and
//! `lab` and `test` run it first.

mod setup;

use std::process::Command;

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install the toolchain pieces and packages this project needs.
    Setup,
    /// Build the eBPF programs alone (the observer build embeds them anyway).
    BuildEbpf,
    /// Set up, build, and run `observer lab` (extra arguments are passed on).
    Lab {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Set up, build, and run the benchmarks (`--quick`: a CI smoke); writes
    /// target/bench/report.md and report.json (arguments go to observer-bench).
    Bench {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Set up, build, and run generated and mutated frames through the kernel
    /// classifier; exits non-zero on any violation (arguments go to
    /// observer-fuzz: `--frames N`, default 1,000,000; `--seed`, `--start`).
    Fuzz {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Set up, then check formatting, lints and run every test.
    Test {
        /// Skip `cargo fmt --check` and clippy.
        #[arg(long)]
        no_lint: bool,
        /// Extra arguments for `cargo test`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Task::Setup => setup::run(),
        Task::BuildEbpf => {
            setup::run()?;
            cargo(&[
                "+nightly",
                "build",
                "--package",
                "observer-ebpf",
                "--bins",
                "--release",
                "--target",
                "bpfel-unknown-none",
                "-Z",
                "build-std=core",
            ])
        }
        Task::Lab { args } => {
            setup::run()?;
            require_root("the lab creates network namespaces and loads eBPF programs")?;
            cargo(&["build", "--release", "--package", "observer"])?;
            let mut cmd = Command::new(workspace_root().join("target/release/observer"));
            cmd.arg("lab").args(&args);
            run(&mut cmd)
        }
        Task::Bench { args } => {
            setup::run()?;
            require_root("the benchmarks load eBPF programs and build network namespaces")?;
            cargo(&["build", "--release", "--package", "observer", "--bins"])?;
            let mut cmd = Command::new(workspace_root().join("target/release/observer-bench"));
            cmd.args(&args).current_dir(workspace_root());
            run(&mut cmd)
        }
        Task::Fuzz { args } => {
            setup::run()?;
            require_root("the fuzzer loads eBPF programs")?;
            cargo(&[
                "build",
                "--release",
                "--package",
                "observer",
                "--bin",
                "observer-fuzz",
            ])?;
            let mut cmd = Command::new(target_dir().join("release/observer-fuzz"));
            cmd.args(&args);
            run(&mut cmd)
        }
        Task::Test { no_lint, args } => {
            setup::run()?;
            require_root("the tests load eBPF programs and build network namespaces")?;
            if !no_lint {
                cargo(&["fmt", "--all", "--check"])?;
                cargo(&[
                    "clippy",
                    "--workspace",
                    "--exclude",
                    "observer-ebpf",
                    "--all-targets",
                    "--",
                    "-D",
                    "warnings",
                ])?;
            }
            // Every test binary runs, so the closing line counts them all.
            let mut test = vec![
                "test",
                "--workspace",
                "--exclude",
                "observer-ebpf",
                "--no-fail-fast",
            ];
            test.extend(args.iter().map(String::as_str));
            cargo_test(&test)
        }
    }
}

fn workspace_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

/// Where cargo puts what it builds: CARGO_TARGET_DIR (relative to the
/// workspace, where `cargo` runs), else `target/`.
fn target_dir() -> std::path::PathBuf {
    let dir = std::env::var_os("CARGO_TARGET_DIR").unwrap_or_else(|| "target".into());
    workspace_root().join(dir)
}

fn require_root(why: &str) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("this must run as root: {why} (try `sudo -E cargo xtask ...`)");
    }
    Ok(())
}

pub(crate) fn run(cmd: &mut Command) -> Result<()> {
    let shown = format!("{cmd:?}");
    let status = cmd.status().with_context(|| format!("starting {shown}"))?;
    if !status.success() {
        bail!("{shown} failed: {status}");
    }
    Ok(())
}

/// Runs `cargo test`, passing its output through, and closes with one line
/// that adds up every test binary's result (cargo's own last line is that
/// of whichever binary ran last, often one without tests).
fn cargo_test(args: &[&str]) -> Result<()> {
    use std::io::{BufRead as _, BufReader};
    let mut child = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(args)
        .current_dir(workspace_root())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("starting cargo test")?;
    let (mut passed, mut failed, mut ignored) = (0u64, 0u64, 0u64);
    for line in BufReader::new(child.stdout.take().context("cargo test stdout")?).lines() {
        let line = line?;
        println!("{line}");
        if let Some(rest) = line.strip_prefix("test result: ") {
            for part in rest.split(';') {
                let mut words = part.split_whitespace().rev();
                let (Some(what), Some(n)) = (words.next(), words.next()) else {
                    continue;
                };
                let n: u64 = n.parse().unwrap_or(0);
                match what {
                    "passed" => passed += n,
                    "failed" => failed += n,
                    "ignored" => ignored += n,
                    _ => {}
                }
            }
        }
    }
    let status = child.wait()?;
    println!("tests: {passed} passed, {failed} failed, {ignored} skipped");
    if !status.success() {
        bail!("cargo test failed: {status}");
    }
    Ok(())
}

fn cargo(args: &[&str]) -> Result<()> {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.args(args).current_dir(workspace_root());
    run(&mut cmd)
}
