//! What ships in `deploy/`: the Kubernetes manifests parse into the API's
//! types with no unknown field and agree with the daemon (ports, probes,
//! socket, mounts, NODE_NAME); the ClusterRole grants exactly the API calls
//! the daemon's reflectors make (run against a fake API server); the
//! Dockerfile builds what the repository holds; every Grafana panel queries
//! only documented metrics and labels, and, against a real Prometheus
//! scraping the lab with traffic running, returns data.
//!
//! A module per concern: `manifests` (rendered by `kubectl kustomize`,
//! parsed strictly, checked against the daemon), `rbac`, `dockerfile` and
//! `dashboards` (static, and live against the lab).

mod dashboards;
mod dockerfile;
mod manifests;
mod rbac;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize, de::DeserializeOwned};
use serde_json::Value;

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

pub fn kube_dir() -> PathBuf {
    repo().join("deploy/kubernetes")
}

pub fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// Every YAML document of a file, as JSON values (empty documents left out).
pub fn yaml_docs(path: &Path) -> Vec<Value> {
    let text = read(path);
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|doc| {
            Value::deserialize(doc).unwrap_or_else(|e| panic!("{}: bad YAML: {e}", path.display()))
        })
        .filter(|v| !v.is_null())
        .collect()
}

// ---------------------------------------------------------------------------
// Strict parsing: k8s-openapi ignores unknown fields, so an object is
// re-serialized from its typed form and every key of the original must still
// be there, with the same value.

/// The path of the first key (or value) of `original` that `typed` lost.
fn first_lost(original: &Value, typed: &Value, path: &str) -> Option<String> {
    match (original, typed) {
        (Value::Object(a), Value::Object(b)) => a.iter().find_map(|(k, va)| {
            let p = format!("{path}.{k}");
            match b.get(k) {
                None => Some(format!("{p} (unknown field)")),
                Some(vb) => first_lost(va, vb, &p),
            }
        }),
        (Value::Array(a), Value::Array(b)) => {
            if a.len() != b.len() {
                return Some(format!("{path} (length {} became {})", a.len(), b.len()));
            }
            a.iter()
                .zip(b)
                .enumerate()
                .find_map(|(i, (va, vb))| first_lost(va, vb, &format!("{path}[{i}]")))
        }
        (a, b) if a == b => None,
        (a, b) => Some(format!("{path} ({a} became {b})")),
    }
}

pub fn strict<T: DeserializeOwned + Serialize>(doc: &Value, what: &str) -> T {
    let typed: T = serde_json::from_value(doc.clone())
        .unwrap_or_else(|e| panic!("{what}: does not parse as its API type: {e}"));
    let back = serde_json::to_value(&typed).expect("serialize");
    if let Some(lost) = first_lost(doc, &back, "") {
        panic!("{what}: {lost}");
    }
    typed
}
