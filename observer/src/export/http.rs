//! The HTTP endpoints for Prometheus and the kubelet: `/metrics`,
//! `/healthz` (the poll loop is alive) and `/readyz` (programs attached,
//! first poll and name sync done).

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, Result};
use axum::{
    Router,
    extract::State,
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use tokio::task::JoinHandle;

use super::metrics::{Metrics, OPENMETRICS, PROMETHEUS_TEXT};

/// What `/healthz` and `/readyz` answer from.
#[derive(Default)]
pub struct Health {
    ready: AtomicBool,
    /// Milliseconds since the epoch of the last completed poll.
    last_poll_ms: AtomicU64,
    /// Longest gap between polls that is still healthy.
    pub stall_after: Duration,
}

impl Health {
    pub fn new(poll_interval: Duration) -> Self {
        Self {
            stall_after: (poll_interval * 5).max(Duration::from_secs(10)),
            ..Default::default()
        }
    }

    pub fn polled(&self) {
        self.last_poll_ms.store(now_ms(), Ordering::Relaxed);
    }

    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Relaxed);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// Whether a poll has completed since the start.
    pub fn has_polled(&self) -> bool {
        self.last_poll_ms.load(Ordering::Relaxed) != 0
    }

    fn alive(&self) -> Result<(), String> {
        let last = self.last_poll_ms.load(Ordering::Relaxed);
        if last == 0 {
            // Starting: not yet polled, not yet stalled either.
            return Ok(());
        }
        let gap = Duration::from_millis(now_ms().saturating_sub(last));
        if gap > self.stall_after {
            return Err(format!("no poll of the kernel maps for {gap:?}"));
        }
        Ok(())
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[derive(Clone)]
struct Shared {
    metrics: Arc<Mutex<Metrics>>,
    health: Arc<Health>,
    /// One encoding at a time: the poll loop waits for the same lock, and
    /// many scrapes at once would make it wait behind each of them.
    encoding: Arc<tokio::sync::Semaphore>,
}

pub async fn serve(
    address: SocketAddr,
    metrics: Arc<Mutex<Metrics>>,
    health: Arc<Health>,
) -> Result<JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .with_context(|| {
            format!("binding the metrics address {address} (--metrics-address; `off` disables it)")
        })?;
    let app = Router::new()
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(Shared {
            metrics,
            health,
            encoding: Arc::new(tokio::sync::Semaphore::new(1)),
        });
    Ok(super::serve::spawn(listener, app, "metrics"))
}

/// OpenMetrics when the scraper asks for it (Prometheus does), else
/// Prometheus' plain text format. Encoded off the async workers: with many
/// series it takes a while, and the poll loop waits for the same lock.
async fn metrics_text(State(s): State<Shared>, headers: HeaderMap) -> Response {
    // Before the first poll a counter taken over from an earlier daemon
    // may not have caught up with what that one last served.
    if !s.health.has_polled() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "starting: not polled yet\n",
        )
            .into_response();
    }
    let openmetrics = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"));
    let Ok(_turn) = s.encoding.acquire().await else {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response();
    };
    let metrics = s.metrics.clone();
    let text = tokio::task::spawn_blocking(move || {
        metrics
            .lock()
            .map(|m| m.encode(openmetrics))
            .map_err(|_| "the metrics lock is poisoned".to_owned())
    })
    .await
    .unwrap_or_else(|e| Err(e.to_string()));
    match text {
        Ok(text) => {
            let content_type = if openmetrics {
                OPENMETRICS
            } else {
                PROMETHEUS_TEXT
            };
            ([(header::CONTENT_TYPE, content_type)], text).into_response()
        }
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    }
}

async fn healthz(State(s): State<Shared>) -> (StatusCode, String) {
    match s.health.alive() {
        Ok(()) => (StatusCode::OK, "ok\n".into()),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")),
    }
}

async fn readyz(State(s): State<Shared>) -> (StatusCode, String) {
    if !s.health.is_ready() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "starting: attaching and reading names\n".into(),
        );
    }
    healthz(State(s)).await
}
