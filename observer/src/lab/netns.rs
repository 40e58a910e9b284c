//! Running things in network namespaces: `ip` commands, sysctls, and
//! threads that enter a namespace to open sockets there.

use std::{os::fd::AsRawFd as _, process::Command};

use anyhow::{Context as _, Result, bail};

/// Runs a command, failing with its command line and stderr.
pub fn run(args: &[&str]) -> Result<String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .with_context(|| format!("starting {}", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "`{}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `ip -n NS ...`.
pub fn ip(ns: &str, args: &[&str]) -> Result<String> {
    let mut full = vec!["ip", "-n", ns];
    full.extend_from_slice(args);
    run(&full)
}

/// Writes a sysctl inside a namespace (`net.ipv4.ip_forward` style key).
pub fn sysctl(ns: &str, key: &str, value: &str) -> Result<()> {
    run(&[
        "ip",
        "netns",
        "exec",
        ns,
        "sysctl",
        "-q",
        "-w",
        &format!("{key}={value}"),
    ])
    .map(|_| ())
}

pub fn add(ns: &str) -> Result<()> {
    run(&["ip", "netns", "add", ns])?;
    ip(ns, &["link", "set", "lo", "up"]).map(|_| ())
}

/// Namespaces whose names start with `prefix`.
pub fn list(prefix: &str) -> Result<Vec<String>> {
    Ok(run(&["ip", "netns", "list"])?
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(prefix))
        .map(str::to_owned)
        .collect())
}

/// Pids of the processes living in a namespace.
pub fn pids(ns: &str) -> Vec<i32> {
    run(&["ip", "netns", "pids", ns])
        .map(|s| s.lines().filter_map(|l| l.trim().parse().ok()).collect())
        .unwrap_or_default()
}

/// Runs `f` on a thread that entered namespace `ns`; sockets it opens stay
/// in that namespace after the thread ends.
pub fn within<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> Result<T> {
    let path = format!("/run/netns/{ns}");
    std::thread::scope(|s| {
        s.spawn(|| -> Result<T> {
            let fd = std::fs::File::open(&path).with_context(|| format!("opening {path}"))?;
            // SAFETY: setns on this thread only, with a valid descriptor.
            if unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                bail!("entering {ns}: {}", std::io::Error::last_os_error());
            }
            Ok(f())
        })
        .join()
        .map_err(|_| anyhow::anyhow!("thread in {ns} panicked"))?
    })
}
