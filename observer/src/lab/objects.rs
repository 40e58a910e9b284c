//! The Kubernetes objects of a lab (Nodes, and Pods owned by Deployments
//! through ReplicaSets), written as `kubectl get -o json` would print them,
//! for the observers' `--objects-dir`.

use std::path::Path;

use anyhow::{Context as _, Result};
use serde_json::{Value, json};

use super::plan::{Plan, PodPlan, ServicePlan, deployment_of};

fn template_hash(deployment: &str) -> String {
    // Kubernetes hashes the pod template; any stable string does here.
    let digest = <sha1::Sha1 as sha1::Digest>::digest(deployment.as_bytes());
    digest[..5]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<String>()[..9]
        .to_owned()
}

/// A Deployment per Service of the lab, and the ReplicaSet it owns.
fn workload_objects(plan: &Plan) -> Vec<Value> {
    let mut out = Vec::new();
    for svc in &plan.services {
        let (name, ns) = (&svc.name, &svc.namespace);
        let hash = template_hash(name);
        let replicas = svc.backends.len();
        let labels = json!({"app": name});
        let template = json!({"metadata": {"labels": labels}, "spec": {"containers": [{"name": "app", "image": "lab"}]}});
        out.push(json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": name, "namespace": ns, "uid": format!("deploy-{name}")},
            "spec": {"replicas": replicas, "selector": {"matchLabels": labels}, "template": template}
        }));
        out.push(json!({
            "apiVersion": "apps/v1", "kind": "ReplicaSet",
            "metadata": {
                "name": format!("{name}-{hash}"), "namespace": ns, "uid": format!("rs-{name}"),
                "labels": {"app": name, "pod-template-hash": hash},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": name,
                    "uid": format!("deploy-{name}"), "controller": true, "blockOwnerDeletion": true}]
            },
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name, "pod-template-hash": hash}}, "template": template}
        }));
    }
    out
}

fn pod_object(pod: &PodPlan) -> Value {
    let deployment = deployment_of(&pod.name);
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

fn service_objects(plan: &Plan, svc: &ServicePlan) -> Vec<Value> {
    let ports = |target: bool| -> Vec<Value> {
        svc.ports
            .iter()
            .map(|p| {
                let port = if target { p.target_port } else { p.port };
                let mut v = json!({"name": p.name, "port": port, "protocol": p.protocol});
                if !target {
                    v["targetPort"] = json!(p.target_port);
                }
                v
            })
            .collect()
    };
    let mut out = vec![json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": svc.name, "namespace": svc.namespace},
        "spec": {
            "type": "ClusterIP",
            "clusterIP": svc.cluster_ips[0].to_string(),
            "clusterIPs": svc.cluster_ips.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "selector": {"app": svc.name},
            "ports": ports(false)
        }
    })];
    // One EndpointSlice per address family, as the EndpointSlice controller
    // makes them.
    for (family, v6) in [("IPv4", false), ("IPv6", true)] {
        let endpoints: Vec<Value> = plan
            .pods
            .iter()
            .filter(|p| svc.backends.contains(&p.name))
            .filter_map(|p| {
                let ip = p.ips.iter().find(|ip| ip.is_ipv6() == v6)?;
                Some(json!({
                    "addresses": [ip.to_string()],
                    "conditions": {"ready": true},
                    "nodeName": p.node,
                    "targetRef": {"kind": "Pod", "name": p.name, "namespace": p.namespace}
                }))
            })
            .collect();
        if endpoints.is_empty() {
            continue;
        }
        out.push(json!({
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": format!("{}-{}", svc.name, family.to_lowercase()),
                "namespace": svc.namespace,
                "labels": {"kubernetes.io/service-name": svc.name}
            },
            "addressType": family,
            "ports": ports(true),
            "endpoints": endpoints
        }));
    }
    out
}

pub fn write(plan: &Plan, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let list = |items: Vec<Value>| json!({"apiVersion": "v1", "kind": "List", "items": items});
    let pods = plan.pods.iter().map(pod_object).collect();
    let services = plan
        .services
        .iter()
        .flat_map(|s| service_objects(plan, s))
        .collect();
    for (file, value) in [
        ("nodes.json", list(node_objects(plan))),
        ("pods.json", list(pods)),
        ("workloads.json", list(workload_objects(plan))),
        ("services.json", list(services)),
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
