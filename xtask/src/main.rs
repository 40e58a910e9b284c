//! Project tasks: `cargo xtask setup | build-ebpf | lab | test | bench | fuzz | vm`.
//!
//! `setup` installs what a fresh machine lacks (nightly rust-src,
//! bpf-linker built against the nightly's LLVM, Debian packages the lab and
//! tests use); it is idempotent and quick when everything is there, and
//! `lab` and `test` run it first.

mod setup;
mod tally;
mod test;
mod vm;

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
        /// Skip the VM suite (`cargo xtask vm`), which the closing line then says.
        #[arg(long)]
        no_vm: bool,
        /// Extra arguments for `cargo test`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Boot Debian's stock kernel (or --kernel) in a VM and run COMMAND there
    /// with an optimised observer on PATH (default: the VM test suite).
    Vm {
        /// A bzImage to boot instead, e.g. your nodes' /boot/vmlinuz-<version>.
        #[arg(long, value_name = "PATH")]
        kernel: Option<std::path::PathBuf>,
        /// Try KVM first (nested KVM hangs on some machines; then the
        /// emulated CPU is used).
        #[arg(long)]
        kvm: bool,
        /// The dev-profile binaries instead of the optimised `ci` profile's
        /// (no second build after a dev one, but many times slower in the VM).
        #[arg(long)]
        dev: bool,
        /// A shell command line for the guest.
        #[arg(last = true)]
        args: Vec<String>,
    },
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Task::Setup => setup::run(),
        Task::BuildEbpf => {
            setup::run()?;
            nightly_cargo(&[
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
            let mut cmd = Command::new(target_dir().join("release/observer"));
            cmd.arg("lab").args(&args);
            run(&mut cmd)
        }
        Task::Bench { args } => {
            setup::run()?;
            require_root("the benchmarks load eBPF programs and build network namespaces")?;
            cargo(&["build", "--release", "--package", "observer", "--bins"])?;
            let mut cmd = Command::new(target_dir().join("release/observer-bench"));
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
        Task::Test {
            no_lint,
            no_vm,
            args,
        } => {
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
                // The eBPF crate for its own target, as aya lints its own.
                nightly_cargo(&[
                    "clippy",
                    "-p",
                    "observer-ebpf",
                    "--bins",
                    "--lib",
                    "--release",
                    "--target",
                    "bpfel-unknown-none",
                    "-Z",
                    "build-std=core",
                    "--",
                    "-D",
                    "warnings",
                ])?;
            }
            // Every test binary runs, so the closing line counts them all;
            // the `ci` profile, which the VM suite runs too (one build).
            let mut test = vec!["test", "--profile", "ci", "--no-fail-fast"];
            test.extend(TEST_SELECTION);
            test.extend(args.iter().map(String::as_str));
            let host = test::cargo_test(&test);
            let vm = (!no_vm).then(test::vm_suite);
            test::report(host, vm)
        }
        Task::Vm {
            kernel,
            kvm,
            dev,
            args,
        } => {
            setup::run()?;
            let outcome = vm::run(&vm::Options {
                kernel,
                kvm,
                release: !dev,
                command: args,
            })?;
            std::process::exit(outcome.status)
        }
    }
}

/// What `cargo xtask test` builds and tests (the eBPF crate is built for
/// its own target by `observer`'s build script).
pub(crate) const TEST_SELECTION: [&str; 3] = ["--workspace", "--exclude", "observer-ebpf"];

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

fn cargo(args: &[&str]) -> Result<()> {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.args(args).current_dir(workspace_root());
    run(&mut cmd)
}

/// The nightly's cargo (what builds for the BPF target), through rustup:
/// `$CARGO` is the stable toolchain's own binary, which takes no `+nightly`.
fn nightly_cargo(args: &[&str]) -> Result<()> {
    let mut cmd = Command::new("rustup");
    cmd.args(["run", "nightly", "cargo"])
        .args(args)
        .current_dir(workspace_root());
    run(&mut cmd)
}
