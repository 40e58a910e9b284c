//! What the daemon serves: the JSON API (Unix socket, optionally TCP), and
//! metrics with health endpoints over HTTP.

pub mod api;
pub mod calico_views;
pub mod http;
pub mod metrics;
mod series;
pub mod serve;
pub mod services;
pub mod socket;

use anyhow::Result;

/// What must hold before the daemon loads anything: it is the only daemon
/// on its socket (else it stops here, touching nothing of the running
/// one), and it has the file descriptors its listeners' caps assume.
/// Keep the returned claim for as long as the daemon runs.
pub async fn prepare(socket: &std::path::Path) -> Result<socket::Claim> {
    let claim = socket::claim(socket).await?;
    let limit = serve::raise_fd_limit()?;
    tracing::debug!(
        open_files = limit,
        connections_per_listener = serve::connection_cap(limit),
        "limits"
    );
    Ok(claim)
}
