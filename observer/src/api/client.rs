//! Talking to a daemon's JSON API over its Unix socket (HTTP/1.1).

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};
use http_body_util::{BodyExt as _, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;

pub struct Client {
    socket: PathBuf,
}

impl Client {
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Self {
            socket: socket.into(),
        }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// GET `path` (e.g. `/v1/flows`) and decode the JSON answer.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        let body = self.get_bytes(path).await?;
        serde_json::from_slice(&body)
            .with_context(|| format!("decoding the daemon's answer to {path}"))
    }

    /// GET `path` and decode the JSON answer, with when the daemon read the
    /// counters in it (`None` from a daemon that does not say).
    pub async fn get_polled<T: DeserializeOwned>(&self, path: &str) -> Result<(T, Option<u64>)> {
        let (body, headers) = self.request(path).await?;
        let polled = headers
            .get(super::POLLED_AT)
            .and_then(|v| v.to_str().ok()?.parse().ok());
        let answer = serde_json::from_slice(&body)
            .with_context(|| format!("decoding the daemon's answer to {path}"))?;
        Ok((answer, polled))
    }

    pub async fn get_bytes(&self, path: &str) -> Result<Bytes> {
        Ok(self.request(path).await?.0)
    }

    async fn request(&self, path: &str) -> Result<(Bytes, hyper::HeaderMap)> {
        let stream = tokio::net::UnixStream::connect(&self.socket)
            .await
            .map_err(|e| connect_error(&self.socket, &e))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .context("HTTP handshake with the daemon")?;
        let conn = tokio::spawn(conn);
        let req = hyper::Request::get(path)
            .header(hyper::header::HOST, "observer")
            .body(Empty::<Bytes>::new())?;
        let resp = sender
            .send_request(req)
            .await
            .context("sending request to the daemon")?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp.into_body().collect().await?.to_bytes();
        conn.abort();
        if !status.is_success() {
            bail!(
                "daemon answered {status} to {path}: {}",
                String::from_utf8_lossy(&body)
            );
        }
        Ok((body, headers))
    }
}

/// What to tell the operator when the daemon's socket cannot be reached.
pub fn connect_error(socket: &Path, e: &std::io::Error) -> anyhow::Error {
    const START: &str = "start it with `observer run` (as root), or for a lab `observer lab up` \
                         and then --lab-node NAME; or pass --socket PATH (or set OBSERVER_SOCKET) \
                         if it listens elsewhere";
    let s = socket.display();
    match e.kind() {
        std::io::ErrorKind::NotFound => anyhow::anyhow!(
            "the observer daemon is not running: there is no API socket at {s}; {START}"
        ),
        std::io::ErrorKind::ConnectionRefused => anyhow::anyhow!(
            "the observer daemon is not running: nothing listens on {s} (a stale socket); {START}"
        ),
        std::io::ErrorKind::PermissionDenied => anyhow::anyhow!(
            "cannot open the observer's API socket {s}: permission denied; it is root-only \
             (mode 0600): run this as root (sudo observer ...)"
        ),
        _ => anyhow::anyhow!(
            "cannot connect to the observer daemon at {s}: {e}; check --socket / OBSERVER_SOCKET"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_say_what_to_do() {
        let p = Path::new("/run/observer/observer.sock");
        let e = |k| connect_error(p, &std::io::Error::from(k)).to_string();
        let missing = e(std::io::ErrorKind::NotFound);
        assert!(missing.contains("not running"), "{missing}");
        assert!(missing.contains("observer run"), "{missing}");
        assert!(missing.contains("observer lab up"), "{missing}");
        assert!(missing.contains("OBSERVER_SOCKET"), "{missing}");
        assert!(missing.contains("/run/observer/observer.sock"), "{missing}");
        assert!(e(std::io::ErrorKind::ConnectionRefused).contains("not running"));
        assert!(e(std::io::ErrorKind::PermissionDenied).contains("root"));
    }

    #[tokio::test]
    async fn missing_socket_is_not_running() {
        let c = Client::new("/nonexistent/observer-test.sock");
        let err = c.get_bytes("/v1/status").await.unwrap_err().to_string();
        assert!(
            err.starts_with("the observer daemon is not running"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn stale_socket_is_not_running() {
        let dir = std::env::temp_dir().join(format!("observer-cli-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("stale.sock");
        let _ = std::fs::remove_file(&path);
        // Bound, then closed: the file stays, nothing listens.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        let err = Client::new(&path)
            .get_bytes("/v1/status")
            .await
            .unwrap_err()
            .to_string();
        let _ = std::fs::remove_dir_all(&dir);
        assert!(err.contains("nothing listens"), "{err}");
    }
}
