//! The Kubernetes objects of a lab (Nodes, and Pods owned by Deployments
//! through ReplicaSets), written as `kubectl get -o json` would print them,
//! for the observers' `--objects-dir`.

use std::path::Path;

use anyhow::{Context as _, Result};
use serde_json::{Value, json};

use super::plan::{Plan, PodPlan};

/// Pod `nodeK-podI` belongs to Deployment `appI`: every Deployment has a
/// pod on every node.
pub fn deployment_of(pod: &PodPlan) -> String {
    let i = pod.name.rsplit("-pod").next().unwrap_or("0");
    format!("app{i}")
}

fn template_hash(deployment: &str) -> String {
    // Kubernetes hashes the pod template; any stable string does here.
    let digest = <sha1::Sha1 as sha1::Digest>::digest(deployment.as_bytes());
    digest[..5]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<String>()[..9]
        .to_owned()
}

fn pod_object(pod: &PodPlan) -> Value {
    let deployment = deployment_of(pod);
    let hash = template_hash(&deployment);
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": pod.name,
            "namespace": pod.namespace,
            "labels": {"app": deployment, "pod-template-hash": hash},
            "ownerReferences": [{
                "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": format!("{deployment}-{hash}"),
                "uid": format!("rs-{deployment}"), "controller": true, "blockOwnerDeletion": true
            }]
        },
        "spec": {"nodeName": pod.node, "containers": [{"name": "app", "image": "lab"}]},
        "status": {
            "phase": "Running",
            "podIP": pod.ips[0].to_string(),
            "podIPs": pod.ips.iter().map(|ip| json!({"ip": ip.to_string()})).collect::<Vec<_>>()
        }
    })
}

fn node_objects(plan: &Plan) -> Vec<Value> {
    plan.nodes
        .iter()
        .map(|n| {
            let mut addresses =
                vec![json!({"type": "InternalIP", "address": n.underlay_ip.to_string()})];
            if let Some(v6) = n.underlay_ip6 {
                addresses.push(json!({"type": "InternalIP", "address": v6.to_string()}));
            }
            addresses.push(json!({"type": "Hostname", "address": n.name}));
            let mut annotations = serde_json::Map::new();
            for ip in &n.tunnel_ips {
                let key = if ip.is_ipv4() {
                    "IPv4VXLANTunnelAddr"
                } else {
                    "IPv6VXLANTunnelAddr"
                };
                annotations.insert(format!("projectcalico.org/{key}"), json!(ip.to_string()));
            }
            json!({
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {"name": n.name, "annotations": annotations},
                "status": {"addresses": addresses}
            })
        })
        .collect()
}

pub fn write(plan: &Plan, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let list = |items: Vec<Value>| json!({"apiVersion": "v1", "kind": "List", "items": items});
    let pods = plan.pods.iter().map(pod_object).collect();
    for (file, value) in [
        ("nodes.json", list(node_objects(plan))),
        ("pods.json", list(pods)),
    ] {
        let path = dir.join(file);
        std::fs::write(&path, serde_json::to_vec_pretty(&value)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{model::Model, sources::objects::ClusterObjects};

    #[test]
    fn the_observers_read_back_what_the_lab_writes() {
        let plan = crate::lab::plan::plan("lab", 2, 2, 26, true, "/x").unwrap();
        let dir = tempfile::tempdir().unwrap();
        write(&plan, dir.path()).unwrap();
        let objects = ClusterObjects::load_dir(dir.path()).unwrap();
        let model = Model::build(&objects, Default::default(), "cali", Some("node1".into()));
        let pod = &plan.pods[3];
        let ep = model.endpoint(pod.ips[1]);
        assert_eq!(ep.pod.as_deref(), Some(pod.name.as_str()));
        assert_eq!(
            (ep.workload.as_deref(), ep.workload_kind.as_deref()),
            (Some("app2"), Some("Deployment"))
        );
        assert_eq!(
            model
                .pod_of_interface(&pod.interface)
                .map(|p| p.name.as_str()),
            Some(pod.name.as_str())
        );
        assert_eq!(
            model.endpoint(plan.nodes[1].tunnel_ips[0]).node.as_deref(),
            Some("node2")
        );
    }
}
