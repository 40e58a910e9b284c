//! Where a running lab keeps its files: `/run/observer-lab/<lab>/`, with
//! its plan (`state.json`), each node's API socket, logs and pins. The lab
//! writes them; the CLI's `--lab-node` finds a node's daemon here without
//! depending on the lab.

use std::path::PathBuf;

use anyhow::{Context as _, Result, bail};
use serde::{Deserialize, Serialize, de::DeserializeOwned};

pub const STATE_ROOT: &str = "/run/observer-lab";

pub fn dir(lab: &str) -> PathBuf {
    PathBuf::from(STATE_ROOT).join(lab)
}

fn state_file(lab: &str) -> PathBuf {
    dir(lab).join("state.json")
}

/// Whether a lab of this name has a plan on disk (is up, or was left).
pub fn exists(lab: &str) -> bool {
    state_file(lab).exists()
}

/// Writes the lab's plan.
pub fn save(lab: &str, plan: &impl Serialize) -> Result<()> {
    let d = dir(lab);
    std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
    let path = state_file(lab);
    std::fs::write(&path, serde_json::to_vec_pretty(plan)?)
        .with_context(|| format!("writing {}", path.display()))
}

/// Reads the lab's plan, or what of it `T` wants.
pub fn load<T: DeserializeOwned>(lab: &str) -> Result<T> {
    let path = state_file(lab);
    let text = std::fs::read(&path).with_context(|| {
        format!(
            "lab {lab:?} is not up (no {}): start it with `observer lab up`",
            path.display()
        )
    })?;
    serde_json::from_slice(&text).with_context(|| format!("reading {}", path.display()))
}

/// The part of the plan that says where each node's daemon listens.
#[derive(Deserialize)]
struct Nodes {
    nodes: Vec<Node>,
}

#[derive(Deserialize)]
struct Node {
    name: String,
    api_socket: String,
}

/// The API socket of a lab node's observer.
pub fn node_socket(lab: &str, node: &str) -> Result<PathBuf> {
    let plan: Nodes = load(lab)?;
    match plan.nodes.iter().find(|n| n.name == node) {
        Some(n) => Ok(PathBuf::from(&n.api_socket)),
        None => {
            let names: Vec<&str> = plan.nodes.iter().map(|n| n.name.as_str()).collect();
            bail!(
                "lab {lab:?} has no node {node:?}; its nodes are {}",
                names.join(", ")
            )
        }
    }
}
