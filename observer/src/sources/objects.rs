//! Kubernetes objects read from a directory of `kubectl get ... -o json`
//! output (lists or single objects), so that a cluster's names can be used
//! offline and the lab can name its pods. The same decoding serves objects
//! that come from the API.

use std::{net::IpAddr, path::Path};

use anyhow::{Context as _, Result, bail};
use k8s_openapi::api::{
    apps::v1::ReplicaSet,
    batch::v1::Job,
    core::v1::{Node, Pod, Service},
    discovery::v1::EndpointSlice,
};
use serde_json::Value;

use super::calico::{BlockAffinity, IpPool, IpamBlock};

/// The objects the model is built from.
#[derive(Clone, Debug, Default)]
pub struct ClusterObjects {
    pub pods: Vec<Pod>,
    pub nodes: Vec<Node>,
    pub services: Vec<Service>,
    pub endpoint_slices: Vec<EndpointSlice>,
    /// Jobs, for the CronJobs that own them.
    pub jobs: Vec<Job>,
    /// ReplicaSets, for the Deployments that own them.
    pub replica_sets: Vec<ReplicaSet>,
    /// Calico's IPAM objects (`crd.projectcalico.org/v1`).
    pub ip_pools: Vec<IpPool>,
    pub block_affinities: Vec<BlockAffinity>,
    pub ipam_blocks: Vec<IpamBlock>,
}

impl ClusterObjects {
    /// Adds one object, or every item of a list, by `kind`; other kinds
    /// are skipped (a directory may hold anything `kubectl` printed). A
    /// value that is not a Kubernetes object or list at all (no `kind`, a
    /// list's `items` not a list) is an error, never an empty answer.
    pub fn add_value(&mut self, v: Value) -> Result<()> {
        let Some(kind) = v.get("kind").and_then(Value::as_str).map(str::to_owned) else {
            bail!(
                "{} has no `kind`: expected a Kubernetes object or list as \
                 `kubectl get -o json` prints it",
                shape(&v)
            );
        };
        if kind == "List" || kind.ends_with("List") {
            let Some(Value::Array(items)) = v.get("items") else {
                bail!(
                    "a {kind} whose `items` is {}, not a list",
                    v.get("items").map_or("missing".into(), shape)
                );
            };
            let item_kind = kind
                .strip_suffix("List")
                .filter(|k| !k.is_empty())
                .map(str::to_owned);
            for (i, mut item) in items.clone().into_iter().enumerate() {
                // `kubectl get pods -o json` items carry their kind; API
                // list items may not.
                if let (Some(k), Some(obj)) = (&item_kind, item.as_object_mut()) {
                    obj.entry("kind")
                        .or_insert_with(|| Value::String(k.clone()));
                }
                self.add_value(item)
                    .with_context(|| format!("{kind} item {i}"))?;
            }
            return Ok(());
        }
        let name = v
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("?")
            .to_owned();
        match kind.as_str() {
            "Pod" => self
                .pods
                .push(serde_json::from_value(v).with_context(|| format!("decoding Pod {name}"))?),
            "Node" => self
                .nodes
                .push(serde_json::from_value(v).with_context(|| format!("decoding Node {name}"))?),
            "Service" => self.services.push(
                serde_json::from_value(v).with_context(|| format!("decoding Service {name}"))?,
            ),
            "ReplicaSet" => self.replica_sets.push(
                serde_json::from_value(v).with_context(|| format!("decoding ReplicaSet {name}"))?,
            ),
            "Job" => self
                .jobs
                .push(serde_json::from_value(v).with_context(|| format!("decoding Job {name}"))?),
            "EndpointSlice" => self.endpoint_slices.push(
                serde_json::from_value(v)
                    .with_context(|| format!("decoding EndpointSlice {name}"))?,
            ),
            "IPPool" => self.ip_pools.push(
                serde_json::from_value(v).with_context(|| format!("decoding IPPool {name}"))?,
            ),
            "BlockAffinity" => self.block_affinities.push(
                serde_json::from_value(v)
                    .with_context(|| format!("decoding BlockAffinity {name}"))?,
            ),
            "IPAMBlock" => self.ipam_blocks.push(
                serde_json::from_value(v).with_context(|| format!("decoding IPAMBlock {name}"))?,
            ),
            _ => {}
        }
        Ok(())
    }

    /// Reads every `*.json`, `*.yaml` and `*.yml` file of `dir` (YAML files
    /// may hold several `---` documents).
    pub fn load_dir(dir: &Path) -> Result<Self> {
        let mut out = Self::default();
        let mut files: Vec<_> = std::fs::read_dir(dir)
            .with_context(|| format!("reading the objects directory {}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.extension()
                    .is_some_and(|e| e == "json" || e == "yaml" || e == "yml")
            })
            .collect();
        files.sort();
        for path in files {
            let text = match std::fs::read_to_string(&path) {
                Ok(text) => text,
                // Removed since the listing: the directory no longer holds it.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
            };
            let docs = if path.extension().is_some_and(|e| e == "json") {
                vec![
                    serde_json::from_str(&text)
                        .with_context(|| format!("{} is not JSON", path.display()))?,
                ]
            } else {
                yaml_documents(&text).with_context(|| format!("{} is not YAML", path.display()))?
            };
            for v in docs {
                out.add_value(v)
                    .with_context(|| format!("in {}", path.display()))?;
            }
        }
        Ok(out)
    }
}

/// What a JSON value is, for an error message.
fn shape(v: &Value) -> String {
    match v {
        Value::Object(_) => "an object".into(),
        Value::Array(_) => "a list".into(),
        Value::String(_) => "a string".into(),
        Value::Number(n) => format!("the number {n}"),
        Value::Bool(b) => format!("{b}"),
        Value::Null => "null".into(),
    }
}

fn yaml_documents(text: &str) -> Result<Vec<Value>> {
    use serde::Deserialize as _;
    let mut out = Vec::new();
    for doc in serde_yaml_ng::Deserializer::from_str(text) {
        let v = Value::deserialize(doc)?;
        if !v.is_null() {
            out.push(v);
        }
    }
    Ok(out)
}

/// A pod's IPs (status.podIPs, else status.podIP).
pub fn pod_ips(pod: &Pod) -> Vec<IpAddr> {
    let Some(status) = &pod.status else {
        return Vec::new();
    };
    let mut ips: Vec<IpAddr> = status
        .pod_ips
        .iter()
        .flatten()
        .filter_map(|p| p.ip.parse().ok())
        .collect();
    if ips.is_empty()
        && let Some(ip) = status.pod_ip.as_ref().and_then(|s| s.parse().ok())
    {
        ips.push(ip);
    }
    ips
}

/// The workload owning a pod: (kind, name). A ReplicaSet named
/// `<deployment>-<pod-template-hash>` is the Deployment's, as Kubernetes
/// names them; a Job owned by a CronJob is the CronJob's (given the Jobs);
/// StatefulSets and DaemonSets own their pods directly.
pub fn workload_with_owners(pod: &Pod, objects: &ClusterObjects) -> Option<(String, String)> {
    let (kind, name) = workload(pod)?;
    let ns = pod.metadata.namespace.as_deref();
    // A ReplicaSet we know says its Deployment itself.
    if let Some(rs_owner) = pod
        .metadata
        .owner_references
        .iter()
        .flatten()
        .filter(|o| o.kind == "ReplicaSet")
        .find_map(|o| {
            objects.replica_sets.iter().find(|rs| {
                rs.metadata.name.as_deref() == Some(o.name.as_str())
                    && rs.metadata.namespace.as_deref() == ns
            })
        })
        .and_then(|rs| {
            rs.metadata
                .owner_references
                .iter()
                .flatten()
                .find(|o| o.kind == "Deployment")
        })
    {
        return Some(("Deployment".into(), rs_owner.name.clone()));
    }
    let jobs = &objects.jobs;
    if kind == "Job" {
        let owner = jobs
            .iter()
            .filter(|j| {
                j.metadata.name.as_deref() == Some(name.as_str())
                    && j.metadata.namespace.as_deref() == ns
            })
            .flat_map(|j| j.metadata.owner_references.iter().flatten())
            .find(|o| o.kind == "CronJob");
        if let Some(o) = owner {
            return Some(("CronJob".into(), o.name.clone()));
        }
    }
    Some((kind, name))
}

/// The workload owning a pod, from the pod alone (see [`workload_with_jobs`]).
pub fn workload(pod: &Pod) -> Option<(String, String)> {
    let owner = pod
        .metadata
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))
        .or_else(|| pod.metadata.owner_references.iter().flatten().next())?;
    if owner.kind == "ReplicaSet" {
        let hash = pod
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("pod-template-hash"));
        if let Some(deployment) = hash.and_then(|h| owner.name.strip_suffix(&format!("-{h}"))) {
            return Some(("Deployment".into(), deployment.to_owned()));
        }
    }
    Some((owner.kind.clone(), owner.name.clone()))
}

/// A node's addresses (InternalIP, ExternalIP), and Calico's tunnel
/// addresses from its annotations.
pub fn node_addresses(node: &Node) -> Vec<IpAddr> {
    let mut out: Vec<IpAddr> = node
        .status
        .iter()
        .flat_map(|s| s.addresses.iter().flatten())
        .filter(|a| a.type_ == "InternalIP" || a.type_ == "ExternalIP")
        .filter_map(|a| a.address.parse().ok())
        .collect();
    for key in [
        "projectcalico.org/IPv4VXLANTunnelAddr",
        "projectcalico.org/IPv6VXLANTunnelAddr",
        "projectcalico.org/IPv4IPIPTunnelAddr",
        "projectcalico.org/IPv4WireguardInterfaceAddr",
        "projectcalico.org/IPv6WireguardInterfaceAddr",
    ] {
        if let Some(ip) = node
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(key))
            .and_then(|s| s.parse().ok())
        {
            out.push(ip);
        }
    }
    // Calico's own node address annotation carries a prefix length.
    for key in [
        "projectcalico.org/IPv4Address",
        "projectcalico.org/IPv6Address",
    ] {
        if let Some(ip) = node
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(key))
            .and_then(|s| s.split('/').next())
            .and_then(|s| s.parse().ok())
        {
            out.push(ip);
        }
    }
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod_json() -> Value {
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {
                "name": "web-5d9c7b8f4-x2x7q", "namespace": "shop",
                "labels": {"app": "web", "pod-template-hash": "5d9c7b8f4"},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-5d9c7b8f4", "uid": "u1", "controller": true}]
            },
            "spec": {"nodeName": "node1", "containers": [{"name": "web", "image": "nginx"}]},
            "status": {"podIP": "10.244.0.5", "podIPs": [{"ip": "10.244.0.5"}, {"ip": "fd00:10:244::5"}]}
        })
    }

    #[test]
    fn lists_and_single_objects_decode() {
        let mut o = ClusterObjects::default();
        o.add_value(json!({"apiVersion": "v1", "kind": "List", "items": [pod_json()]}))
            .unwrap();
        o.add_value(json!({"apiVersion": "v1", "kind": "NodeList", "items": [
            {"metadata": {"name": "node1", "annotations": {"projectcalico.org/IPv4VXLANTunnelAddr": "10.244.0.0", "projectcalico.org/IPv4Address": "172.30.0.11/24"}},
             "status": {"addresses": [{"type": "InternalIP", "address": "172.30.0.11"}, {"type": "Hostname", "address": "node1"}]}}
        ]}))
        .unwrap();
        o.add_value(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}}))
            .unwrap();
        assert_eq!((o.pods.len(), o.nodes.len()), (1, 1));
        assert_eq!(pod_ips(&o.pods[0]).len(), 2);
        let addrs: Vec<String> = node_addresses(&o.nodes[0])
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(addrs, ["10.244.0.0", "172.30.0.11"]);
    }

    #[test]
    fn deployments_are_found_through_their_replicasets() {
        let pod: Pod = serde_json::from_value(pod_json()).unwrap();
        assert_eq!(workload(&pod), Some(("Deployment".into(), "web".into())));
        let mut sts = pod_json();
        sts["metadata"]["ownerReferences"][0]["kind"] = json!("StatefulSet");
        sts["metadata"]["ownerReferences"][0]["name"] = json!("db");
        let sts: Pod = serde_json::from_value(sts).unwrap();
        assert_eq!(workload(&sts), Some(("StatefulSet".into(), "db".into())));
        let mut bare = pod_json();
        bare["metadata"]
            .as_object_mut()
            .unwrap()
            .remove("ownerReferences");
        assert_eq!(workload(&serde_json::from_value(bare).unwrap()), None);
    }

    #[test]
    fn cronjobs_are_found_through_their_jobs() {
        let mut o = ClusterObjects::default();
        let mut pod = pod_json();
        pod["metadata"]["ownerReferences"][0]["kind"] = json!("Job");
        pod["metadata"]["ownerReferences"][0]["name"] = json!("backup-29000000");
        o.add_value(pod).unwrap();
        o.add_value(json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "backup-29000000", "namespace": "shop",
            "ownerReferences": [{"apiVersion": "batch/v1", "kind": "CronJob", "name": "backup", "uid": "c", "controller": true}]}}))
            .unwrap();
        assert_eq!(
            workload_with_owners(&o.pods[0], &o),
            Some(("CronJob".into(), "backup".into()))
        );
        o.jobs.clear();
        assert_eq!(
            workload_with_owners(&o.pods[0], &o),
            Some(("Job".into(), "backup-29000000".into()))
        );
    }

    #[test]
    fn replicasets_name_their_deployment() {
        let mut o = ClusterObjects::default();
        let mut pod = pod_json();
        // A ReplicaSet whose name does not follow the hash rule.
        pod["metadata"]["ownerReferences"][0]["name"] = json!("odd-rs");
        o.add_value(pod).unwrap();
        assert_eq!(
            workload_with_owners(&o.pods[0], &o),
            Some(("ReplicaSet".into(), "odd-rs".into()))
        );
        o.add_value(json!({"apiVersion": "apps/v1", "kind": "ReplicaSet", "metadata": {"name": "odd-rs", "namespace": "shop",
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": "frontend", "uid": "d", "controller": true}]}}))
            .unwrap();
        assert_eq!(
            workload_with_owners(&o.pods[0], &o),
            Some(("Deployment".into(), "frontend".into()))
        );
    }

    #[test]
    fn yaml_files_with_several_documents() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("objects.yaml"),
            "apiVersion: v1\nkind: Node\nmetadata:\n  name: node1\nstatus:\n  addresses:\n  - type: InternalIP\n    address: 172.30.0.11\n---\n---\napiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Pod\n  metadata:\n    name: p\n    namespace: default\n  status:\n    podIP: 10.244.0.9\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("notes.txt"), "not objects").unwrap();
        let o = ClusterObjects::load_dir(dir.path()).unwrap();
        assert_eq!((o.nodes.len(), o.pods.len()), (1, 1));
        std::fs::write(dir.path().join("bad.yml"), "kind: [unclosed").unwrap();
        let err = ClusterObjects::load_dir(dir.path()).unwrap_err();
        assert!(format!("{err:#}").contains("bad.yml"), "{err:#}");
    }

    #[test]
    fn wrong_shapes_are_errors_not_empty_lists() {
        for (v, want) in [
            (json!({"items": 5}), "an object has no `kind`"),
            (json!(5), "the number 5 has no `kind`"),
            (json!([pod_json()]), "a list has no `kind`"),
            (
                json!({"kind": "PodList", "items": 5}),
                "a PodList whose `items` is the number 5, not a list",
            ),
            (
                json!({"kind": "List"}),
                "a List whose `items` is missing, not a list",
            ),
            (
                json!({"kind": "List", "items": [{"metadata": {"name": "x"}}]}),
                "List item 0: an object has no `kind`",
            ),
        ] {
            let err = ClusterObjects::default().add_value(v).unwrap_err();
            assert!(format!("{err:#}").contains(want), "{err:#}");
        }
        // An empty list is a list.
        ClusterObjects::default()
            .add_value(json!({"kind": "List", "items": []}))
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("bad.json"), r#"{"items":5}"#).unwrap();
        let err = format!("{:#}", ClusterObjects::load_dir(dir.path()).unwrap_err());
        assert!(
            err.contains("bad.json") && err.contains("no `kind`"),
            "{err}"
        );
    }

    #[test]
    fn malformed_objects_say_which() {
        let mut o = ClusterObjects::default();
        let err = o
            .add_value(json!({"kind": "Pod", "metadata": {"name": "bad", "labels": "not-a-map"}}))
            .unwrap_err();
        assert!(format!("{err:#}").contains("Pod bad"));
    }

    /// A file listed but gone when read (here a dangling link, the same as a
    /// file removed between the listing and the read) is skipped, not an error.
    #[test]
    fn a_file_gone_before_it_is_read_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let pods = json!({"apiVersion": "v1", "kind": "List", "items": [pod_json()]});
        std::fs::write(dir.path().join("pods.json"), pods.to_string()).unwrap();
        std::os::unix::fs::symlink("/nonexistent", dir.path().join("gone.json")).unwrap();
        let objects = ClusterObjects::load_dir(dir.path()).unwrap();
        assert_eq!(objects.pods.len(), 1);
    }
}
