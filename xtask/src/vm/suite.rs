//! What the VM test suite needs from the host besides the binaries: the
//! flows the host's kernel makes of every capture, for the guest to compare
//! with its own (`older_kernel::replay_gives_the_hosts_flows`).

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

/// The guest's command line for the suite (relative to the workspace).
pub const COMMAND: &str = "sh xtask/vm/suite.sh";

/// `OBSERVER_HOST_REPLAY` for the suite: a directory of `<capture>.json`
/// made here by `observer`.
pub fn prepare(observer: &Path, dir: &Path) -> Result<Vec<(String, PathBuf)>> {
    let replays = dir.join("host-replay");
    host_replays(observer, &replays)?;
    Ok(vec![("OBSERVER_HOST_REPLAY".into(), replays)])
}

fn host_replays(observer: &Path, out: &Path) -> Result<()> {
    let _ = std::fs::remove_dir_all(out);
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let pcaps = crate::workspace_root().join("observer/tests/pcaps");
    for entry in
        std::fs::read_dir(&pcaps).with_context(|| format!("reading {}", pcaps.display()))?
    {
        let path = entry?.path();
        if path.extension().is_none_or(|e| e != "pcap") {
            continue;
        }
        let run = Command::new(observer)
            .args(["replay", "-o", "json"])
            .arg(&path)
            .output()
            .with_context(|| format!("starting {}", observer.display()))?;
        if !run.status.success() {
            bail!(
                "observer replay {} failed on the host: {}",
                path.display(),
                String::from_utf8_lossy(&run.stderr).trim()
            );
        }
        // Not with_extension: `802.1ad_QinQ` has a dot of its own.
        let name = path.file_stem().context("capture name")?.to_string_lossy();
        let file = out.join(format!("{name}.json"));
        std::fs::write(&file, &run.stdout)
            .with_context(|| format!("writing {}", file.display()))?;
    }
    Ok(())
}
