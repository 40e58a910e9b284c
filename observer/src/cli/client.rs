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

    pub async fn get_bytes(&self, path: &str) -> Result<Bytes> {
        let stream = tokio::net::UnixStream::connect(&self.socket).await.map_err(|e| {
            let hint = match e.kind() {
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
                    "is the daemon running? start it with `observer run` (or `observer lab up`), or pass --socket PATH / --lab-node NAME"
                }
                std::io::ErrorKind::PermissionDenied => "the API socket is root-only: run as root (sudo)",
                _ => "check --socket",
            };
            anyhow::anyhow!("cannot connect to the observer daemon at {}: {e}; {hint}", self.socket.display())
        })?;
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
        let body = resp.into_body().collect().await?.to_bytes();
        conn.abort();
        if !status.is_success() {
            bail!(
                "daemon answered {status} to {path}: {}",
                String::from_utf8_lossy(&body)
            );
        }
        Ok(body)
    }
}
