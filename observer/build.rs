//! Builds the eBPF programs (crate `observer-ebpf`) for the BPF target with
//! the nightly toolchain and bpf-linker, so that `src/datapath/object.rs`
//! can embed the object with `include_bytes_aligned!`.
//!
//! aya-build passes every line of the inner cargo's progress on as a cargo
//! warning, which a newcomer's first build prints by the hundred; its
//! output is filtered here: progress lines are dropped, compiler
//! diagnostics kept, and everything shown when the build fails.
use std::{
    io::{BufRead as _, BufReader, Write as _},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    let metadata = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let ebpf = metadata
        .packages
        .into_iter()
        .find(|p| p.name.as_str() == "observer-ebpf")
        .ok_or_else(|| anyhow!("observer-ebpf package not found"))?;
    let root = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("observer-ebpf manifest has no parent"))?;
    let (built, lines) = capture_stdout(|| {
        aya_build::build_ebpf(
            [Package {
                name: ebpf.name.as_str(),
                root_dir: root.as_str(),
                ..Default::default()
            }],
            Toolchain::default(),
        )
    })?;
    for line in lines {
        if built.is_err() || !is_progress(&line) {
            println!("{line}");
        }
    }
    built.context(
        "building the eBPF programs failed; run `cargo xtask setup` (nightly rust-src, bpf-linker)",
    )
}

/// A line of the inner cargo's progress, passed on as a warning.
fn is_progress(line: &str) -> bool {
    let Some(text) = line.strip_prefix("cargo:warning=") else {
        return false;
    };
    let word = text.trim_start().split(' ').next().unwrap_or("");
    text.trim().is_empty()
        || matches!(
            word,
            "Compiling" | "Finished" | "Blocking" | "Updating" | "Downloading" | "Downloaded"
        )
}

/// Runs `f` with this process's stdout (where cargo reads a build
/// script's directives) going into a pipe, and returns its lines.
fn capture_stdout<T>(f: impl FnOnce() -> T) -> anyhow::Result<(T, Vec<String>)> {
    let mut fds = [0; 2];
    // SAFETY: pipe(2) fills the two descriptors on success.
    if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
        return Err(std::io::Error::last_os_error()).context("pipe");
    }
    // SAFETY: both are new descriptors that nothing else owns.
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let stdout = std::io::stdout();
    // SAFETY: dup(2) of our stdout, kept to restore it.
    let saved = unsafe { libc::dup(stdout.as_raw_fd()) };
    if saved < 0 {
        return Err(std::io::Error::last_os_error()).context("dup stdout");
    }
    // SAFETY: the saved descriptor is ours.
    let saved = unsafe { OwnedFd::from_raw_fd(saved) };
    let reader = std::thread::spawn(move || {
        BufReader::new(std::fs::File::from(read))
            .lines()
            .map_while(Result::ok)
            .collect::<Vec<_>>()
    });
    // SAFETY: dup2(2) onto our own stdout with valid descriptors.
    unsafe { libc::dup2(write.as_raw_fd(), stdout.as_raw_fd()) };
    drop(write);
    let out = f();
    let _ = stdout.lock().flush();
    // SAFETY: as above; this also closes the pipe's last write end.
    unsafe { libc::dup2(saved.as_raw_fd(), stdout.as_raw_fd()) };
    let lines = reader
        .join()
        .map_err(|_| anyhow!("reading the build's output"))?;
    Ok((out, lines))
}
