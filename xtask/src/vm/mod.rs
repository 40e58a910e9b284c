//! `cargo xtask vm [--kernel PATH] [--kvm] [-- COMMAND...]`: boots a kernel
//! other than the host's (Debian's stock kernel by default) in QEMU with
//! virtme-ng, on a copy-on-write view of the host's root file system, and
//! runs COMMAND there (default: the VM test suite, `xtask/vm/suite.sh`)
//! with an optimised `observer` (the `ci` profile) on PATH; returns its
//! exit status.

mod binaries;
mod boot;
mod kernel;
mod suite;

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};

use crate::tally::Tally;
use boot::{Boot, DidNotBoot};
use kernel::Kernel;

/// Measured here: 55-150 s to boot on QEMU's emulated CPU, depending on
/// what else the two cores do; beyond this the VM is taken as hung.
const BOOT_TIMEOUT: Duration = Duration::from_secs(600);
/// A KVM guest boots in seconds; a nested one here hangs instead.
const KVM_BOOT_TIMEOUT: Duration = Duration::from_secs(60);
/// The command's own time limit once the guest runs it.
const RUN_TIMEOUT: Duration = Duration::from_secs(30 * 60);

pub struct Options {
    /// A bzImage (`/boot/vmlinuz-<version>`); default: the stock kernel.
    pub kernel: Option<PathBuf>,
    /// Try KVM first (falling back to the emulated CPU if it does not boot).
    pub kvm: bool,
    /// Release binaries (else the dev ones `cargo test` builds).
    pub release: bool,
    /// A shell command line for the guest; empty: the VM test suite.
    pub command: Vec<String>,
}

pub struct Outcome {
    /// The command's exit status in the guest.
    pub status: i32,
    /// The libtest summaries the guest printed.
    pub tally: Tally,
}

pub fn run(opts: &Options) -> Result<Outcome> {
    let vng = crate::setup::vng().context(
        "cannot run a VM on this machine: virtme-ng's `vng` is not installed \
         (run `cargo xtask setup`)",
    )?;
    if crate::setup::which("qemu-system-x86_64").is_none() {
        bail!(
            "cannot run a VM on this machine: qemu-system-x86_64 is not installed \
             (run `cargo xtask setup`)"
        );
    }
    let kernel = Kernel::find(opts.kernel.as_deref())?;
    eprintln!("vm: kernel {} ({})", kernel.release, kernel.image.display());
    if kernel.modules.is_none() {
        eprintln!(
            "vm: warning: no /lib/modules/{}: the guest cannot load modules (ipip, ip_vs, \
             wireguard) unless they are built in",
            kernel.release
        );
    }

    let suite = opts.command.is_empty();
    if suite {
        crate::require_root("the VM suite replays captures on the host to compare")?;
    }
    let bins = binaries::build(if opts.release { "ci" } else { "dev" })?;
    let dir = vm_dir(&bins.observer)?;
    let mut env = vec![
        ("OBSERVER".to_owned(), bins.observer.clone()),
        (
            "OBSERVER_DIR".to_owned(),
            bins.observer
                .parent()
                .context("observer's directory")?
                .into(),
        ),
    ];
    // The suite's test binary, also for a command of one's own:
    // `cargo xtask vm -- '$TEST_integration --exact daemon::...'`.
    env.extend(
        bins.tests
            .iter()
            .map(|(name, exe)| (format!("TEST_{name}"), exe.clone())),
    );
    let command = if suite {
        env.extend(suite::prepare(&bins.observer, &dir)?);
        suite::COMMAND.to_owned()
    } else {
        opts.command.join(" ")
    };
    let env_file = dir.join("env");
    std::fs::write(&env_file, env_script(&env))
        .with_context(|| format!("writing {}", env_file.display()))?;

    let root = crate::workspace_root();
    let guest = root.join("xtask/vm/guest.sh");
    let mut boot = Boot {
        vng: &vng,
        kernel: &kernel,
        kvm: opts.kvm,
        cwd: &root,
        exec: format!(
            "sh {} {} {}",
            quote(&guest.to_string_lossy()),
            quote(&env_file.to_string_lossy()),
            quote(&command)
        ),
        boot_timeout: if opts.kvm {
            KVM_BOOT_TIMEOUT
        } else {
            BOOT_TIMEOUT
        },
        run_timeout: RUN_TIMEOUT,
    };
    let mut tally = Tally::default();
    let mut on_line = |line: &str| {
        println!("{line}");
        tally.add_line(line);
    };
    let ran = match boot::run(&boot, &mut on_line) {
        Err(e) if opts.kvm && e.is::<DidNotBoot>() => {
            eprintln!(
                "vm: the KVM guest did not boot ({e:#}); nested KVM hangs at boot on some \
                 machines: falling back to QEMU's emulated CPU"
            );
            boot.kvm = false;
            boot.boot_timeout = BOOT_TIMEOUT;
            boot::run(&boot, &mut on_line)
        }
        other => other,
    }
    .map_err(|e| {
        if e.is::<DidNotBoot>() {
            e.context(format!(
                "cannot run the VM on this machine (kernel {})",
                kernel.image.display()
            ))
        } else {
            e
        }
    })?;
    eprintln!(
        "vm: {} booted in {:.0} s ({}); the command took {:.0} s and exited {}",
        kernel.release,
        ran.boot.as_secs_f64(),
        if boot.kvm { "KVM" } else { "emulated CPU" },
        ran.run.as_secs_f64(),
        ran.status
    );
    Ok(Outcome {
        status: ran.status,
        tally,
    })
}

/// `<target>/vm/`, beside cargo's profile directories: the guest's
/// environment file and what the suite prepared on the host, left there
/// to look at after a run.
fn vm_dir(observer: &Path) -> Result<PathBuf> {
    let target = observer
        .parent()
        .and_then(Path::parent)
        .context("the observer binary is not in <target>/<profile>/")?;
    let dir = target.join("vm");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

fn env_script(env: &[(String, PathBuf)]) -> String {
    let mut s = String::from("# Written by `cargo xtask vm` for xtask/vm/guest.sh.\n");
    for (name, value) in env {
        let _ = writeln!(s, "export {name}={}", quote(&value.to_string_lossy()));
    }
    s
}

/// `text` as one POSIX shell word.
fn quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::quote;

    #[test]
    fn quotes_for_the_shell() {
        assert_eq!(quote("a b"), "'a b'");
        assert_eq!(quote("it's"), r"'it'\''s'");
    }
}
