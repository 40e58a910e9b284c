//! `observer cleanup`: removes everything a daemon leaves in the kernel for
//! the next one (pinned maps and TCX links, clsact filters, the saved
//! state), for an uninstall. Refuses while a daemon runs.

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::Args;

use crate::{
    config::{DEFAULT_PIN_PATH, DEFAULT_SOCKET, DEFAULT_STATE_FILE, PinPath},
    datapath::{attach, links, pin::PinRoot},
};

#[derive(Args, Debug)]
pub struct CleanupArgs {
    /// The daemon's --pin-path.
    #[arg(long, env = "OBSERVER_PIN_PATH", default_value = DEFAULT_PIN_PATH)]
    pub pin_path: PinPath,
    /// The daemon's --state-file.
    #[arg(long, env = "OBSERVER_STATE_FILE", default_value = DEFAULT_STATE_FILE)]
    pub state_file: PathBuf,
    /// The daemon's --socket: cleanup refuses while a daemon answers there.
    #[arg(long, env = "OBSERVER_SOCKET", default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,
}

/// What cleanup removed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Removed {
    pub link_pins: usize,
    pub filters: usize,
    pub pin_dir: bool,
    pub state_file: bool,
}

pub async fn run(args: CleanupArgs) -> Result<()> {
    let r = cleanup(&args).await?;
    println!(
        "removed {} pinned TCX links, {} clsact filters, {}, {}",
        r.link_pins,
        r.filters,
        match (&args.pin_path.0, r.pin_dir) {
            (Some(p), true) => format!("the pinned maps under {}", p.display()),
            _ => "no pinned maps".to_owned(),
        },
        if r.state_file {
            format!("the state file {}", args.state_file.display())
        } else {
            "no state file".to_owned()
        }
    );
    Ok(())
}

pub async fn cleanup(args: &CleanupArgs) -> Result<Removed> {
    if tokio::net::UnixStream::connect(&args.socket).await.is_ok() {
        bail!(
            "a daemon is running (it answers on {}): stop it first, then run cleanup",
            args.socket.display()
        );
    }
    let mut removed = Removed::default();
    if let Some(root) = &args.pin_path.0
        && root.exists()
    {
        let pins = PinRoot::open(root)?;
        // Without its pin (and no daemon holding it) a link is detached.
        for (_, _, path) in pins.links() {
            if std::fs::remove_file(path).is_ok() {
                removed.link_pins += 1;
            }
        }
        pins.remove_all()?;
        removed.pin_dir = true;
    }
    // Filters are not pinned: they stay on their interfaces until removed.
    let (present, _events) = links::follow().await?;
    for link in present {
        removed.filters += attach::remove_our_filters(link.index, &link.name).await?;
    }
    removed.state_file = std::fs::remove_file(&args.state_file).is_ok();
    Ok(removed)
}
