//! Running things in network namespaces: `ip` commands, sysctls, and
//! threads that enter a namespace to open sockets there.

use std::{
    os::{fd::AsRawFd as _, unix::ffi::OsStrExt as _},
    path::Path,
    process::Command,
};

use anyhow::{Context as _, Result, bail};

/// Runs a command, failing with its command line and stderr.
pub fn run(args: &[&str]) -> Result<String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .with_context(|| format!("starting {}", args.join(" ")))?;
    if !out.status.success() {
        // The status tells a signal (Ctrl-C reaches our `ip` children too)
        // from a refusal, whose reason is on stderr.
        bail!(
            "`{}` failed ({}): {}",
            args.join(" "),
            out.status,
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

/// Whether `pid` still runs. Reaps it first if it is our own child (the
/// daemons of plain `observer lab` are), since a zombie still "exists" for
/// kill(2) and would hold teardown for its whole grace period.
pub fn alive(pid: i32) -> bool {
    // SAFETY: WNOHANG never blocks; for a pid that is not our child it
    // fails with ECHILD and changes nothing.
    unsafe { libc::waitpid(pid, std::ptr::null_mut(), libc::WNOHANG) };
    // SAFETY: signal 0 only checks for existence.
    unsafe { libc::kill(pid, 0) == 0 }
}

/// Pids of `observer run` processes whose `--socket` lies under `dir`, in
/// whatever namespace they are.
pub fn daemons_under(dir: &Path) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|cmdline| socket_under(&cmdline, dir))
        })
        .collect()
}

/// Whether a NUL-separated command line is an `observer run` with
/// `--socket PATH`, PATH in `dir` (a client given `--socket` is not one).
fn socket_under(cmdline: &[u8], dir: &Path) -> bool {
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    args.get(1) == Some(&&b"run"[..])
        && args.windows(2).any(|w| {
            w[0] == b"--socket" && Path::new(std::ffi::OsStr::from_bytes(w[1])).starts_with(dir)
        })
}

/// Runs `f` on a thread that entered namespace `ns` (a name as `ip netns`
/// knows it); sockets it opens stay in that namespace after the thread
/// ends.
pub fn within<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> Result<T> {
    within_path(&Path::new("/run/netns").join(ns), f)
}

/// [`within`] for the namespace file at `path` (`/run/netns/NAME`,
/// `/proc/PID/ns/net`). A thread of its own, because setns(2) moves only
/// the calling thread and the caller's must stay where it is.
pub fn within_path<T: Send>(path: &Path, f: impl FnOnce() -> T + Send) -> Result<T> {
    let ns = path.display();
    let file =
        std::fs::File::open(path).with_context(|| format!("opening network namespace {ns}"))?;
    std::thread::scope(|s| {
        s.spawn(|| -> Result<T> {
            // SAFETY: setns on a descriptor we hold open; it moves only this
            // thread, which ends with `f`.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                bail!(
                    "entering network namespace {ns}: {}",
                    std::io::Error::last_os_error()
                );
            }
            Ok(f())
        })
        .join()
        .map_err(|_| anyhow::anyhow!("the thread in network namespace {ns} panicked"))?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn daemons_are_known_by_their_socket_directory() {
        let dir = Path::new("/run/observer-lab/lab1");
        let cmd =
            b"/x/observer\0run\0--socket\0/run/observer-lab/lab1/node1.sock\0--underlay\0eth0\0";
        assert!(socket_under(cmd, dir));
        // Another lab whose name starts alike is not ours.
        let other = b"/x/observer\0run\0--socket\0/run/observer-lab/lab10/node1.sock\0";
        assert!(!socket_under(other, dir));
        assert!(!socket_under(b"/bin/sleep\0x\0", dir));
        let client = b"/x/observer\0flows\0--socket\0/run/observer-lab/lab1/node1.sock\0";
        assert!(!socket_under(client, dir));
    }

    #[test]
    fn a_missing_namespace_is_named() {
        let e = within("observer-no-such-ns", || ()).unwrap_err();
        assert!(
            format!("{e:#}").contains("/run/netns/observer-no-such-ns"),
            "{e:#}"
        );
    }
}
