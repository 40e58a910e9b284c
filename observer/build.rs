//! Builds the eBPF programs (crate `observer-ebpf`) for the BPF target with
//! the nightly toolchain and bpf-linker, so that `src/datapath/loader.rs`
//! can embed the object with `include_bytes_aligned!`.
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
    aya_build::build_ebpf(
        [Package {
            name: ebpf.name.as_str(),
            root_dir: root.as_str(),
            ..Default::default()
        }],
        Toolchain::default(),
    )
    .context(
        "building the eBPF programs failed; run `cargo xtask setup` (nightly rust-src, bpf-linker)",
    )
}
