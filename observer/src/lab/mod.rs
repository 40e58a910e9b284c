//! TEMPORARY STUB by the lead so the crate compiles; the lab helper replaces this file.
use std::path::PathBuf;
#[derive(clap::Args, Debug)]
pub struct LabArgs {}
pub async fn run(_args: LabArgs, _exe: PathBuf) -> anyhow::Result<()> {
    anyhow::bail!("lab not yet written")
}
pub fn node_socket(_lab: &str, _node: &str) -> anyhow::Result<PathBuf> {
    anyhow::bail!("lab not yet written")
}
