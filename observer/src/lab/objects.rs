//! The Kubernetes objects of a lab (Nodes, Pods owned by Deployments
//! through ReplicaSets, Services, and Calico's IPPools, BlockAffinities and
//! IPAMBlocks), written as `kubectl get -o json` would print them, for the
//! observers' `--objects-dir`; and each node's CNI conflist, as Calico's
//! install-cni writes it.

use std::{net::IpAddr, path::Path};

use anyhow::{Context as _, Result};
use ipnet::IpNet;
use serde_json::{Value, json};

use super::plan::{BLOCK_V6, Encap, POOL_V4, POOL_V6, Plan, PodPlan, ServicePlan, deployment_of};

/// Calico's CRD group and version in the Kubernetes datastore.
const CALICO_API: &str = "crd.projectcalico.org/v1";
const POOL_V4_NAME: &str = "default-ipv4-ippool";
const POOL_V6_NAME: &str = "default-ipv6-ippool";

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

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A stable 64-hex-digit container ID for a pod (the CNI's handle is
/// `k8s-pod-network.<container ID>`).
pub fn container_id(pod: &PodPlan) -> String {
    use sha1::Digest as _;
    let a = sha1::Sha1::digest(format!("{}/{}", pod.namespace, pod.name));
    let b = sha1::Sha1::digest(format!("sandbox:{}", pod.name));
    format!("{}{}", hex(&a), &hex(&b)[..24])
}

fn pod_object(pod: &PodPlan) -> Value {
    let deployment = deployment_of(&pod.name);
    let hash = template_hash(&deployment);
    let ips: Vec<String> = pod
        .ips
        .iter()
        .map(|ip| format!("{ip}/{}", if ip.is_ipv4() { 32 } else { 128 }))
        .collect();
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": pod.name,
            "namespace": pod.namespace,
            "annotations": {
                "cni.projectcalico.org/containerID": container_id(pod),
                "cni.projectcalico.org/podIP": ips[0],
                "cni.projectcalico.org/podIPs": ips.join(","),
            },
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
            // calico-node's autodetected addresses, in every mode.
            annotations.insert(
                "projectcalico.org/IPv4Address".into(),
                json!(format!("{}/24", n.underlay_ip)),
            );
            if let Some(v6) = n.underlay_ip6 {
                annotations.insert(
                    "projectcalico.org/IPv6Address".into(),
                    json!(format!("{v6}/64")),
                );
            }
            for ip in &n.tunnel_ips {
                let key = tunnel_address_kind(plan.encap, ip.is_ipv6()).annotation;
                annotations.insert(format!("projectcalico.org/{key}"), json!(ip.to_string()));
            }
            if let Some(key) = &n.wireguard_public_key {
                annotations.insert("projectcalico.org/WireguardPublicKey".into(), json!(key));
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

/// Calico's name for an object about a CIDR: `.`, `:` and `/` become `-`
/// (`10.244.0.64/26` -> `10-244-0-64-26`).
pub fn cidr_name(cidr: &IpNet) -> String {
    cidr.to_string().replace(['.', ':', '/'], "-")
}

/// How Calico names a node's tunnel address: the Node annotation, and the
/// IPAM handle and attribute type of its allocation.
pub struct TunnelAddressKind {
    pub annotation: &'static str,
    pub handle: &'static str,
    pub kind: &'static str,
}

pub fn tunnel_address_kind(encap: Encap, v6: bool) -> TunnelAddressKind {
    let (annotation, handle, kind) = match (encap, v6) {
        (Encap::Ipip, _) => (
            "IPv4IPIPTunnelAddr",
            "ipip-tunnel-addr",
            "ipipTunnelAddress",
        ),
        (Encap::Wireguard, _) => (
            "IPv4WireguardInterfaceAddr",
            "wireguard-tunnel-addr",
            "wireguardTunnelAddress",
        ),
        (_, false) => (
            "IPv4VXLANTunnelAddr",
            "vxlan-tunnel-addr",
            "vxlanTunnelAddress",
        ),
        (_, true) => (
            "IPv6VXLANTunnelAddr",
            "vxlan-v6-tunnel-addr",
            "vxlanV6TunnelAddress",
        ),
    };
    TunnelAddressKind {
        annotation,
        handle,
        kind,
    }
}

/// The lab's IPPools, one per family, in the lab's modes: IPv4 in its
/// encapsulation, IPv6 in VXLAN only in VXLAN labs (Calico's IPv6 pools
/// have no IPIP; WireGuard is a Felix setting, not a pool mode).
fn ip_pools(plan: &Plan) -> Vec<Value> {
    let vxlan = if plan.encap == Encap::Vxlan {
        "Always"
    } else {
        "Never"
    };
    let ipip = match (plan.encap, plan.cross_subnet) {
        (Encap::Ipip, true) => "CrossSubnet",
        (Encap::Ipip, false) => "Always",
        _ => "Never",
    };
    let pool = |name: &str, cidr: &str, block: u8, ipip: &str| {
        json!({
            "apiVersion": CALICO_API,
            "kind": "IPPool",
            "metadata": {"name": name},
            "spec": {
                "allowedUses": ["Workload", "Tunnel"],
                "blockSize": block,
                "cidr": cidr,
                "ipipMode": ipip,
                "natOutgoing": true,
                "nodeSelector": "all()",
                "vxlanMode": vxlan
            }
        })
    };
    let v4_block = plan
        .nodes
        .first()
        .and_then(|n| n.blocks.first())
        .map_or(26, IpNet::prefix_len);
    let mut out = vec![pool(POOL_V4_NAME, POOL_V4, v4_block, ipip)];
    if plan.ipv6 {
        out.push(pool(POOL_V6_NAME, POOL_V6, BLOCK_V6, "Never"));
    }
    out
}

fn block_affinities(plan: &Plan) -> Vec<Value> {
    plan.nodes
        .iter()
        .flat_map(|n| {
            n.blocks.iter().map(|b| {
                json!({
                    "apiVersion": CALICO_API,
                    "kind": "BlockAffinity",
                    "metadata": {"name": format!("{}-{}", n.name, cidr_name(b))},
                    "spec": {"state": "confirmed", "node": n.name, "cidr": b.to_string(), "deleted": "false"}
                })
            })
        })
        .collect()
}

/// Position of `ip` in `block`.
fn ordinal(block: &IpNet, ip: IpAddr) -> Option<usize> {
    if !block.contains(&ip) {
        return None;
    }
    Some(match (block.network(), ip) {
        (IpAddr::V4(n), IpAddr::V4(a)) => (u32::from(a) - u32::from(n)) as usize,
        (IpAddr::V6(n), IpAddr::V6(a)) => (u128::from(a) - u128::from(n)) as usize,
        _ => return None,
    })
}

/// An IPAMBlock per node block: the tunnel address (VXLAN) and the pods
/// allocated, with Calico's attributes, the rest unallocated.
fn ipam_blocks(plan: &Plan, timestamp: &str) -> Vec<Value> {
    let mut out = Vec::new();
    for n in &plan.nodes {
        for block in &n.blocks {
            let size = 1usize << (block.max_prefix_len() - block.prefix_len());
            let mut allocations: Vec<Value> = vec![Value::Null; size];
            let mut attributes = Vec::new();
            for tunnel in n.tunnel_ips.iter().filter(|ip| block.contains(*ip)) {
                let TunnelAddressKind { handle, kind, .. } =
                    tunnel_address_kind(plan.encap, tunnel.is_ipv6());
                if let Some(i) = ordinal(block, *tunnel) {
                    allocations[i] = json!(attributes.len());
                    attributes.push(json!({
                        "handle_id": format!("{handle}-{}", n.name),
                        "secondary": {"node": n.name, "type": kind, "timestamp": timestamp}
                    }));
                }
            }
            for pod in plan.pods.iter().filter(|p| p.node == n.name) {
                for ip in &pod.ips {
                    if let Some(i) = ordinal(block, *ip) {
                        allocations[i] = json!(attributes.len());
                        attributes.push(json!({
                            "handle_id": format!("k8s-pod-network.{}", container_id(pod)),
                            "secondary": {
                                "namespace": pod.namespace,
                                "node": n.name,
                                "pod": pod.name,
                                "timestamp": timestamp
                            }
                        }));
                    }
                }
            }
            let unallocated: Vec<usize> = (0..size).filter(|i| allocations[*i].is_null()).collect();
            out.push(json!({
                "apiVersion": CALICO_API,
                "kind": "IPAMBlock",
                "metadata": {"name": cidr_name(block)},
                "spec": {
                    "cidr": block.to_string(),
                    "affinity": format!("host:{}", n.name),
                    "strictAffinity": false,
                    "allocations": allocations,
                    "unallocated": unallocated,
                    "attributes": attributes,
                    "deleted": false
                }
            }));
        }
    }
    out
}

/// Now as Go prints a `time.Time` (what Calico's IPAM puts in its
/// attributes): `2024-11-05 10:13:01.530417792 +0000 UTC`.
fn go_timestamp() -> String {
    let rfc = humantime::format_rfc3339_nanos(std::time::SystemTime::now()).to_string();
    format!("{} +0000 UTC", rfc.trim_end_matches('Z').replace('T', " "))
}

/// The CNI configuration of a node, as Calico's install-cni writes
/// `/etc/cni/net.d/10-calico.conflist`.
pub fn cni_conflist(plan: &Plan, node: &str) -> Value {
    let mut ipam = json!({
        "type": "calico-ipam",
        "assign_ipv4": "true",
        "ipv4_pools": [POOL_V4]
    });
    if plan.ipv6 {
        ipam["assign_ipv6"] = json!("true");
        ipam["ipv6_pools"] = json!([POOL_V6]);
    }
    let mtu = plan.pod_mtu();
    json!({
        "name": "k8s-pod-network",
        "cniVersion": "0.3.1",
        "plugins": [
            {
                "type": "calico",
                "log_level": "info",
                "log_file_path": "/var/log/calico/cni/cni.log",
                "datastore_type": "kubernetes",
                "nodename": node,
                "mtu": mtu,
                "ipam": ipam,
                "policy": {"type": "k8s"},
                "kubernetes": {"kubeconfig": "/etc/cni/net.d/calico-kubeconfig"}
            },
            {"type": "bandwidth", "capabilities": {"bandwidth": true}},
            {"type": "portmap", "snat": true, "capabilities": {"portMappings": true}}
        ]
    })
}

/// Each node's `<cni_dir>/10-calico.conflist`.
pub fn write_cni(plan: &Plan) -> Result<()> {
    for node in &plan.nodes {
        let dir = Path::new(&node.cni_dir);
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let path = dir.join("10-calico.conflist");
        std::fs::write(
            &path,
            serde_json::to_vec_pretty(&cni_conflist(plan, &node.name))?,
        )
        .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
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
        ("ippools.json", list(ip_pools(plan))),
        ("blockaffinities.json", list(block_affinities(plan))),
        ("ipamblocks.json", list(ipam_blocks(plan, &go_timestamp()))),
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

    #[test]
    fn calico_objects_are_shaped_like_calicos() {
        let plan = crate::lab::plan::plan("lab", 2, 2, 26, true, "/x").unwrap();
        let pools = ip_pools(&plan);
        assert_eq!(pools[0]["spec"]["vxlanMode"], "Always");
        assert_eq!(pools[0]["spec"]["blockSize"], 26);
        assert_eq!(pools[1]["spec"]["cidr"], "fd00:10:244::/48");
        let aff = block_affinities(&plan);
        assert_eq!(aff[2]["metadata"]["name"], "node2-10-244-0-64-26");
        assert_eq!(aff[3]["metadata"]["name"], "node2-fd00-10-244--40-122");
        assert_eq!(aff[2]["spec"]["deleted"], "false");
        let blocks = ipam_blocks(&plan, "t");
        let b = &blocks[2]["spec"];
        assert_eq!(blocks[2]["metadata"]["name"], "10-244-0-64-26");
        assert_eq!(b["affinity"], "host:node2");
        let alloc = b["allocations"].as_array().unwrap();
        assert_eq!(alloc.len(), 64);
        assert_eq!(
            (alloc[0].clone(), alloc[2].clone(), alloc[3].clone()),
            (json!(0), json!(2), Value::Null)
        );
        assert_eq!(b["unallocated"].as_array().unwrap().len(), 61);
        assert_eq!(b["attributes"][0]["handle_id"], "vxlan-tunnel-addr-node2");
        assert_eq!(b["attributes"][2]["secondary"]["pod"], "node2-pod2");
        assert!(
            b["attributes"][1]["handle_id"].as_str().unwrap().len()
                == "k8s-pod-network.".len() + 64
        );
        assert_eq!(
            blocks[3]["spec"]["attributes"][0]["secondary"]["type"],
            "vxlanV6TunnelAddress"
        );
        let cni = cni_conflist(&plan, "node1");
        assert_eq!(cni["plugins"][0]["mtu"], 1430);
        assert_eq!(cni["plugins"][0]["ipam"]["ipv6_pools"][0], POOL_V6);

        let bgp = crate::lab::plan::plan_routed(
            "lab",
            2,
            2,
            26,
            false,
            crate::lab::plan::Routing::Bgp,
            "/x",
        )
        .unwrap();
        assert_eq!(ip_pools(&bgp)[0]["spec"]["vxlanMode"], "Never");
        let blocks = ipam_blocks(&bgp, "t");
        let b = &blocks[0]["spec"];
        assert_eq!(b["allocations"][0], Value::Null);
        assert_eq!(b["attributes"].as_array().unwrap().len(), 2);
        assert_eq!(b["unallocated"].as_array().unwrap().len(), 62);
        assert_eq!(cni_conflist(&bgp, "node1")["plugins"][0]["mtu"], 1500);
        assert!(go_timestamp().ends_with(" +0000 UTC"));
    }
}
