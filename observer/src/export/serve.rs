//! Serving HTTP to clients we do not trust: the metrics port is reachable
//! from the node's network, and the API socket from anything root runs.
//! Each listener caps its connections, closes silent clients and stalled
//! transfers, and bounds what a request may carry, so that no client can
//! take the file descriptors, memory or time that the poll loop and the
//! name sources need.

use std::{sync::Arc, time::Duration};

use anyhow::{Context as _, Result};
use axum::{Router, http::StatusCode, serve::Listener};
use hyper::server::conn::http1;
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    service::TowerToHyperService,
};
use tokio::{sync::Semaphore, task::JoinHandle};
use tower_http::{limit::RequestBodyLimitLayer, timeout::TimeoutLayer};

/// A connection that has not sent a whole request head this long after it
/// opened, or after its last answer, is closed (hyper's header read
/// timeout: idle keep-alive connections and slow senders alike).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// An answer the client stops reading is abandoned after this long
/// without progress (hyper has no write timeout of its own).
pub const STALL_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest a handler may take before the client gets a 503.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Request line and headers together (hyper's read buffer; larger: 431).
pub const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Request bodies (every endpoint is a GET; larger: 413).
pub const MAX_BODY_BYTES: usize = 4 * 1024;
/// Connections per listener at most; further clients wait in the kernel's
/// listen backlog, which costs no file descriptor.
pub const MAX_CONNECTIONS: usize = 512;
/// Listeners sharing the budget: the API socket, the API on TCP, metrics.
const LISTENERS: u64 = 3;

/// Raises the soft limit on open files to the hard limit, so that the
/// connection caps stay far below it; gives the limit now in force.
pub fn raise_fd_limit() -> Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to an rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error()).context("reading RLIMIT_NOFILE");
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            let e = std::io::Error::last_os_error();
            tracing::warn!(
                soft = lim.rlim_cur,
                hard = lim.rlim_max,
                "cannot raise the open files limit: {e}"
            );
            return Ok(lim.rlim_cur);
        }
        lim.rlim_cur = lim.rlim_max;
    }
    Ok(lim.rlim_cur)
}

/// Connections per listener for an open-files limit: half of the limit
/// stays for the daemon itself (a TCX link per hook of every attached
/// interface, maps, netlink, the Kubernetes API), the other half is
/// shared by the listeners, each capped at [`MAX_CONNECTIONS`].
pub fn connection_cap(fd_limit: u64) -> usize {
    let share = fd_limit / 2 / LISTENERS;
    (share as usize).clamp(16, MAX_CONNECTIONS)
}

/// The open-files limit in force now.
fn fd_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit with a valid pointer to an rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return 1024;
    }
    lim.rlim_cur
}

/// The limits every router is served with: bounded bodies, bounded
/// handler time.
fn bounded(app: Router) -> Router {
    app.layer(TimeoutLayer::with_status_code(
        StatusCode::SERVICE_UNAVAILABLE,
        REQUEST_TIMEOUT,
    ))
    .layer(RequestBodyLimitLayer::new(MAX_BODY_BYTES))
}

/// HTTP/1 with the head size and idle limits above (no HTTP/2: its
/// version sniffing would wait on a silent client with no timeout).
fn http() -> http1::Builder {
    let mut b = http1::Builder::new();
    b.timer(TokioTimer::new())
        .header_read_timeout(IDLE_TIMEOUT)
        .max_buf_size(MAX_HEAD_BYTES);
    b
}

/// Serves `app` on `listener` until the task is aborted; `what` names the
/// listener in logs.
pub fn spawn<L: Listener>(mut listener: L, app: Router, what: &'static str) -> JoinHandle<()> {
    let cap = connection_cap(fd_limit());
    let slots = Arc::new(Semaphore::new(cap));
    let app = bounded(app);
    let http = http();
    tokio::spawn(async move {
        let mut full = false;
        loop {
            let slot = match slots.clone().try_acquire_owned() {
                Ok(slot) => {
                    full = false;
                    slot
                }
                Err(_) => {
                    if !full {
                        full = true;
                        tracing::warn!(
                            "{what}: {cap} connections open, the most it serves at once; \
                             further clients wait until one closes"
                        );
                    }
                    let Ok(slot) = slots.clone().acquire_owned().await else {
                        return;
                    };
                    slot
                }
            };
            let (io, _) = listener.accept().await;
            let mut io = tokio_io_timeout::TimeoutStream::new(io);
            io.set_write_timeout(Some(STALL_TIMEOUT));
            let conn = http.serve_connection(
                TokioIo::new(Box::pin(io)),
                TowerToHyperService::new(app.clone()),
            );
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!("{what}: connection closed: {e}");
                }
                drop(slot);
            });
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_leaves_half_the_fds_to_the_daemon() {
        assert_eq!(connection_cap(1_048_576), MAX_CONNECTIONS);
        assert_eq!(connection_cap(1024), 170);
        // Never zero: a daemon that cannot be asked is worse.
        assert_eq!(connection_cap(32), 16);
    }
}
