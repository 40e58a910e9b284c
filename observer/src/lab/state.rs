//! Where a lab keeps its plan: `/run/observer-lab/<lab>/state.json`, with
//! the daemons' sockets and logs beside it.

use std::path::PathBuf;

use anyhow::{Context as _, Result};

use super::plan::Plan;

pub const STATE_ROOT: &str = "/run/observer-lab";

pub fn dir(lab: &str) -> PathBuf {
    PathBuf::from(STATE_ROOT).join(lab)
}

/// Where a lab's daemons pin their maps and links, a directory per node:
/// a BPF file system of the lab's own (`ip netns exec`, which starts the
/// daemons, hides the host's `/sys/fs/bpf`), mounted by `lab up` and
/// unmounted by `lab down`.
pub fn pin_dir(lab: &str) -> PathBuf {
    dir(lab).join("bpf")
}

pub fn save(plan: &Plan) -> Result<()> {
    let d = dir(&plan.lab);
    std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
    let path = d.join("state.json");
    std::fs::write(&path, serde_json::to_vec_pretty(plan)?)
        .with_context(|| format!("writing {}", path.display()))
}

pub fn load(lab: &str) -> Result<Plan> {
    let path = dir(lab).join("state.json");
    let text = std::fs::read(&path).with_context(|| {
        format!(
            "lab {lab:?} is not up (no {}): start it with `observer lab up`",
            path.display()
        )
    })?;
    serde_json::from_slice(&text).with_context(|| format!("reading {}", path.display()))
}
