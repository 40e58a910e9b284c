//! The API socket: one daemon per socket, and root-only from the moment
//! it exists.
//!
//! A daemon holds an exclusive `flock` on `<socket>.lock` for its whole
//! life, taken before anything is loaded, so that two daemons starting
//! together cannot both go on; and it refuses to start while something
//! answers on the socket (a daemon that takes no lock, such as an older
//! version). A socket nothing answers on is a dead daemon's: replaced.

use std::{
    fs::File,
    io::Write as _,
    os::{
        fd::AsRawFd as _,
        unix::fs::{FileTypeExt as _, MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _},
    },
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};

/// Held while the daemon runs; removes the lock file when dropped.
pub struct Claim {
    path: PathBuf,
    _file: File,
}

impl Drop for Claim {
    fn drop(&mut self) {
        // Safe while we hold the lock: a daemon that opened the file
        // before this unlink sees, once it holds the lock, that the path
        // no longer names it, and starts over (see `take_lock`).
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Makes this process the only daemon serving `socket`, or says which
/// one already does. A stale socket is removed, ready for [`bind`].
pub async fn claim(socket: &Path) -> Result<Claim> {
    if let Some(dir) = socket.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let lock_path = lock_path(socket);
    let file = match take_lock(&lock_path)? {
        Ok(file) => file,
        Err(holder) => bail!(
            "another observer daemon{holder} is already running with --socket {}: \
             stop it first, or give this one its own --socket (and --metrics-address)",
            socket.display()
        ),
    };
    let claim = Claim {
        path: lock_path,
        _file: file,
    };
    remove_if_stale(socket).await?;
    Ok(claim)
}

fn lock_path(socket: &Path) -> PathBuf {
    let mut name = socket.as_os_str().to_owned();
    name.push(".lock");
    PathBuf::from(name)
}

/// The locked file with our pid in it, or `Err(" (pid N)")` naming the
/// daemon that holds it.
fn take_lock(path: &Path) -> Result<std::result::Result<File, String>> {
    loop {
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)
            .with_context(|| format!("opening the lock file {}", path.display()))?;
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
                let pid = std::fs::read_to_string(path).unwrap_or_default();
                let pid = pid.trim();
                return Ok(Err(if pid.is_empty() {
                    String::new()
                } else {
                    format!(" (pid {pid})")
                }));
            }
            return Err(e).with_context(|| format!("locking {}", path.display()));
        }
        // The previous holder unlinks the file as it exits: a lock on a
        // file no longer at `path` locks nothing.
        let ours = file.metadata()?.ino();
        if std::fs::metadata(path).is_ok_and(|m| m.ino() == ours) {
            file.set_len(0)?;
            writeln!(file, "{}", std::process::id())?;
            return Ok(Ok(file));
        }
    }
}

/// Refuses a socket something answers on; removes one nothing answers on.
async fn remove_if_stale(socket: &Path) -> Result<()> {
    let meta = match std::fs::symlink_metadata(socket) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("looking at {}", socket.display())),
    };
    if !meta.file_type().is_socket() {
        bail!(
            "{} exists and is not a socket: remove it, or choose another --socket",
            socket.display()
        );
    }
    // Bounded: a hung daemon with a full backlog would block a connect.
    let connect = tokio::net::UnixStream::connect(socket);
    match tokio::time::timeout(Duration::from_secs(2), connect).await {
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            tracing::info!(socket = %socket.display(), "replacing a stale socket (nothing answers on it)");
            std::fs::remove_file(socket)
                .with_context(|| format!("removing the stale socket {}", socket.display()))
        }
        Ok(Err(e)) => Err(e).with_context(|| {
            format!(
                "cannot tell whether a daemon serves {}: remove it if none does",
                socket.display()
            )
        }),
        Ok(Ok(_)) | Err(_) => bail!(
            "another observer daemon is already serving {}: stop it first, or give this one \
             its own --socket (and --metrics-address)",
            socket.display()
        ),
    }
}

/// Binds `socket` with mode 0600 from the start: the mode is set on the
/// socket before `bind` creates the file (Linux takes the file's mode from
/// the socket's inode), so there is no moment when others may connect and
/// no process-wide umask to change under other threads.
pub fn bind(socket: &Path) -> Result<tokio::net::UnixListener> {
    use socket2::{Domain, SockAddr, Socket, Type};
    let s = Socket::new(Domain::UNIX, Type::STREAM, None).context("creating the API socket")?;
    // SAFETY: fchmod on a descriptor we own.
    if unsafe { libc::fchmod(s.as_raw_fd(), 0o600) } != 0 {
        return Err(std::io::Error::last_os_error()).context("setting the API socket's mode");
    }
    let address = SockAddr::unix(socket)?;
    s.bind(&address).with_context(|| {
        format!(
            "binding the API socket {} (is another daemon starting?)",
            socket.display()
        )
    })?;
    let mode = std::fs::metadata(socket)?.permissions().mode() & 0o777;
    if mode != 0o600 {
        let _ = std::fs::remove_file(socket);
        bail!(
            "the API socket {} was created with mode {mode:o}, not 0600: refusing to serve it",
            socket.display()
        );
    }
    s.listen(1024)?;
    s.set_nonblocking(true)?;
    let std: std::os::unix::net::UnixListener = s.into();
    Ok(tokio::net::UnixListener::from_std(std)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_claim_per_socket_and_the_lock_goes_with_it() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("api.sock");
        let first = claim(&socket).await.unwrap();
        let e = claim(&socket)
            .await
            .err()
            .expect("a second claim is refused");
        let e = format!("{e:#}");
        assert!(e.contains("already running"), "{e}");
        assert!(e.contains(&format!("pid {}", std::process::id())), "{e}");
        assert!(e.contains(socket.to_str().unwrap()), "{e}");
        drop(first);
        assert!(!lock_path(&socket).exists());
        let _again = claim(&socket).await.unwrap();
    }

    #[tokio::test]
    async fn a_live_socket_is_refused_and_a_stale_one_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("api.sock");
        // A daemon that takes no lock (an older version) still answers.
        let live = bind(&socket).unwrap();
        let e = format!("{:#}", claim(&socket).await.err().expect("refused"));
        assert!(e.contains("already serving"), "{e}");
        assert!(socket.exists(), "the live socket is left alone");
        drop(live);
        // Nothing answers now: the file is a dead daemon's.
        let _claim = claim(&socket).await.unwrap();
        assert!(!socket.exists());
        let _listener = bind(&socket).unwrap();
    }

    #[tokio::test]
    async fn a_file_that_is_no_socket_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("api.sock");
        std::fs::write(&socket, "keep me").unwrap();
        let e = format!("{:#}", claim(&socket).await.err().expect("refused"));
        assert!(e.contains("is not a socket"), "{e}");
        assert_eq!(std::fs::read_to_string(&socket).unwrap(), "keep me");
    }

    /// The socket is 0600 when it appears, and its mode never changes
    /// after: inotify reports the creation and no attribute change (a
    /// chmod after bind would show as IN_ATTRIB).
    #[tokio::test]
    async fn the_socket_is_0600_from_the_start() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("api.sock");
        // SAFETY: plain inotify calls on a descriptor we own.
        let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        assert!(fd >= 0);
        let path = std::ffi::CString::new(dir.path().to_str().unwrap()).unwrap();
        // SAFETY: a NUL-terminated path that outlives the call.
        let watch = unsafe {
            libc::inotify_add_watch(fd, path.as_ptr(), libc::IN_CREATE | libc::IN_ATTRIB)
        };
        assert!(watch >= 0);
        let _listener = bind(&socket).unwrap();
        let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
        let mut buf = [0u8; 4096];
        // SAFETY: reads at most buf.len() bytes into buf, which we own.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        // SAFETY: closes the descriptor we opened above, once.
        unsafe { libc::close(fd) };
        assert!(n > 0, "no inotify event");
        let mut masks = Vec::new();
        let mut at = 0;
        while at < n as usize {
            // SAFETY: the kernel wrote whole events into buf.
            let ev: libc::inotify_event =
                unsafe { std::ptr::read_unaligned(buf[at..].as_ptr().cast()) };
            masks.push(ev.mask);
            at += size_of::<libc::inotify_event>() + ev.len as usize;
        }
        assert_eq!(masks, [libc::IN_CREATE], "created, then never chmod-ed");
        assert_eq!(mode, 0o600);
    }
}
