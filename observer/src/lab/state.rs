//! The lab's plan on disk (in [`crate::lab_dir`]), its pins, and the
//! daemons' logs beside it.

use std::path::{Path, PathBuf};

use anyhow::Result;

use super::plan::Plan;
pub use crate::lab_dir::dir;

/// Where a lab's daemons pin their maps and links, a directory per node:
/// a BPF file system of the lab's own (`ip netns exec`, which starts the
/// daemons, hides the host's `/sys/fs/bpf`), mounted by `lab up` and
/// unmounted by `lab down`.
pub fn pin_dir(lab: &str) -> PathBuf {
    dir(lab).join("bpf")
}

pub fn save(plan: &Plan) -> Result<()> {
    crate::lab_dir::save(&plan.lab, plan)
}

pub fn load(lab: &str) -> Result<Plan> {
    crate::lab_dir::load(lab)
}

/// The last `lines` lines of a daemon's log, for an error message.
pub fn log_tail(log: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let tail: Vec<&str> = text.lines().rev().take(lines).collect();
    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
}
