//! The joined view: who an address is (a pod with its workload and node, a
//! node, or the world), which pod an interface belongs to, and which node
//! a remote block lives on. Built from the sources; rebuilt when they
//! change, read on every API call.

pub mod calico;
pub mod ipvs;

use std::{collections::HashMap, net::IpAddr, sync::Arc};

use serde::{Deserialize, Serialize};
use sha1::{Digest as _, Sha1};

pub use self::calico::{BlockInfo, CalicoView, PoolInfo};
use crate::api::{Encap, EndpointKind, EndpointView, ServiceRef, Via};
use crate::sources::{
    calico::EncapMode,
    objects::{ClusterObjects, node_addresses, pod_ips, workload_with_owners},
    routes::RouteTable,
};

/// Calico's host-side interface name: `cali` + the first 11 hex digits of
/// sha1("<namespace>.<pod>").
pub fn calico_interface(prefix: &str, namespace: &str, pod: &str) -> String {
    let digest = Sha1::digest(format!("{namespace}.{pod}").as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("{prefix}{}", &hex[..11])
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodEntry {
    pub namespace: String,
    pub name: String,
    pub node: Option<String>,
    pub workload: Option<(String, String)>,
    pub ips: Vec<IpAddr>,
    /// Calico's host-side interface name for this pod.
    pub interface: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Backend {
    pub ip: IpAddr,
    pub port: u16,
    pub ready: bool,
    pub pod: Option<String>,
    pub node: Option<String>,
}

/// One port of one Service, with its virtual IPs and endpoints.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServicePort {
    pub namespace: String,
    pub name: String,
    pub port_name: Option<String>,
    /// IP protocol number (6 TCP, 17 UDP, 132 SCTP).
    pub protocol: u8,
    pub port: u16,
    pub vips: Vec<IpAddr>,
    pub backends: Vec<Backend>,
    /// `internalTrafficPolicy: Local`: kube-proxy sends only to endpoints
    /// on the client's node.
    #[serde(default)]
    pub node_local: bool,
}

impl ServicePort {
    fn reference(&self, via: Via) -> ServiceRef {
        ServiceRef {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            port: self
                .port_name
                .clone()
                .unwrap_or_else(|| self.port.to_string()),
            via,
            ..Default::default()
        }
    }
}

pub fn protocol_number(p: Option<&str>) -> u8 {
    match p.unwrap_or("TCP") {
        "UDP" => 17,
        "SCTP" => 132,
        _ => 6,
    }
}

#[derive(Default)]
pub struct Model {
    /// kube-proxy's IPVS virtual services (what `ipvsadm -Ln` shows).
    ipvs: ipvs::IpvsTable,
    services: Vec<ServicePort>,
    service_by_vip: HashMap<(IpAddr, u16, u8), usize>,
    service_by_backend: HashMap<(IpAddr, u16, u8), usize>,
    pods: Vec<PodEntry>,
    pod_by_ip: HashMap<IpAddr, usize>,
    pod_by_interface: HashMap<String, usize>,
    node_by_ip: HashMap<IpAddr, String>,
    routes: Arc<RouteTable>,
    local_node: Option<String>,
    calico: CalicoView,
    /// Sources of names whose last read failed (their last good state is
    /// what the model holds).
    source_errors: Vec<SourceError>,
}

/// A source of names whose input did not decode, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceError {
    /// `objects`, ...: as `observer_source_synced` labels it.
    pub source: String,
    /// What is wrong, naming the file.
    pub error: String,
}

impl Model {
    /// `iface_prefix` is Calico's interface prefix (`cali`, like
    /// FELIX_INTERFACEPREFIX); `local_node` this node's name, if known.
    pub fn build(
        objects: &ClusterObjects,
        routes: Arc<RouteTable>,
        iface_prefix: &str,
        local_node: Option<String>,
    ) -> Self {
        let mut m = Model {
            routes,
            local_node,
            ..Default::default()
        };
        for pod in &objects.pods {
            let namespace = pod
                .metadata
                .namespace
                .clone()
                .unwrap_or_else(|| "default".into());
            let name = pod.metadata.name.clone().unwrap_or_default();
            // Host-network pods share the node's address: they are not
            // endpoints of their own.
            if pod.spec.as_ref().and_then(|s| s.host_network) == Some(true) {
                continue;
            }
            // Finished pods keep their IPs in their status, but Calico has
            // released them (to other pods, maybe) and removed their veth.
            let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
            if matches!(phase, Some("Succeeded" | "Failed")) {
                continue;
            }
            let entry = PodEntry {
                interface: calico_interface(iface_prefix, &namespace, &name),
                node: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
                workload: workload_with_owners(pod, objects),
                ips: pod_ips(pod),
                namespace,
                name,
            };
            let i = m.pods.len();
            for ip in &entry.ips {
                m.pod_by_ip.insert(*ip, i);
            }
            m.pod_by_interface.insert(entry.interface.clone(), i);
            m.pods.push(entry);
        }
        for node in &objects.nodes {
            let name = node.metadata.name.clone().unwrap_or_default();
            for ip in node_addresses(node) {
                m.node_by_ip.insert(ip, name.clone());
            }
        }
        m.add_services(objects);
        m.calico = CalicoView::build(objects);
        m
    }

    /// Calico's control plane: pools, blocks, BGP peers, CNI config.
    pub fn calico(&self) -> &CalicoView {
        &self.calico
    }

    /// What the node itself reads (BIRD, the CNI directory) and this
    /// node's interface addresses (for CrossSubnet; see
    /// [`CalicoView::pick_local_subnets`]).
    pub fn set_node_state(
        &mut self,
        bgp: Vec<crate::api::BirdStatus>,
        cni: Option<crate::api::CniDir>,
        interfaces: &[(String, ipnet::IpNet)],
    ) {
        self.calico.local_subnets = self
            .calico
            .pick_local_subnets(self.local_node.as_deref(), interfaces);
        self.calico.bgp = bgp;
        self.calico.cni = cni;
    }

    pub fn set_source_errors(&mut self, errors: Vec<SourceError>) {
        self.source_errors = errors;
    }

    pub fn source_errors(&self) -> &[SourceError] {
        &self.source_errors
    }

    /// Whether `ip` lives on this node: a local pod interface's or in a
    /// local block (blackhole route or affinity), or a pod of this node.
    pub fn is_local(&self, ip: IpAddr) -> bool {
        if self.routes.local_endpoints.contains_key(&ip)
            || self.routes.local_blocks.keys().any(|b| b.contains(&ip))
        {
            return true;
        }
        match (&self.local_node, self.node_of(ip)) {
            (Some(l), Some(n)) => *l == n,
            _ => false,
        }
    }

    /// The encapsulation traffic between `src` and `dst` should have
    /// between nodes, from the pool of its remote end (the destination,
    /// else the source): `vxlan`/`ipip` for Always; for CrossSubnet, that
    /// or `none` as the peer node's address is outside or inside this
    /// node's subnet; `none` when both modes are Never, or when no end is
    /// a pool address on another node (local traffic, traffic to hosts
    /// and the world). `None` when it cannot be told (CrossSubnet without
    /// the peer's or this node's address).
    pub fn expected_encap(&self, src: IpAddr, dst: IpAddr) -> Option<Encap> {
        // Link-local and multicast traffic is not routed between nodes:
        // no expectation (it is sent on tunnel devices as on any other).
        if [src, dst].iter().any(|ip| not_routed(*ip)) {
            return None;
        }
        for ip in [dst, src] {
            if self.calico.pool_of(ip).is_none() || self.is_local(ip) {
                continue;
            }
            return self.expected_encap_to(ip);
        }
        Some(Encap::None)
    }

    /// The encapsulation traffic from this node to `remote` (an address
    /// on another node) should have, from its pool; see
    /// [`Model::expected_encap`].
    pub fn expected_encap_to(&self, remote: IpAddr) -> Option<Encap> {
        let Some(pool) = self.calico.pool_of(remote) else {
            return Some(Encap::None);
        };
        let Some((encap, mode)) = pool.encap() else {
            return Some(Encap::None);
        };
        match mode {
            EncapMode::CrossSubnet => {
                let peer = self.node_of(remote)?;
                let same = self.calico.same_subnet(&peer, remote.is_ipv6())?;
                Some(if same { Encap::None } else { encap })
            }
            _ => Some(encap),
        }
    }

    fn add_services(&mut self, objects: &ClusterObjects) {
        for svc in &objects.services {
            let (Some(name), Some(spec)) = (svc.metadata.name.clone(), svc.spec.as_ref()) else {
                continue;
            };
            let namespace = svc
                .metadata
                .namespace
                .clone()
                .unwrap_or_else(|| "default".into());
            let vips: Vec<IpAddr> = spec
                .cluster_ips
                .iter()
                .flatten()
                .chain(spec.cluster_ip.iter())
                .filter_map(|s| s.parse().ok())
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .collect();
            let slices = objects.endpoint_slices.iter().filter(|es| {
                es.metadata.namespace.as_deref().unwrap_or("default") == namespace
                    && es
                        .metadata
                        .labels
                        .as_ref()
                        .and_then(|l| l.get("kubernetes.io/service-name"))
                        == Some(&name)
            });
            let slices: Vec<_> = slices.collect();
            for sp in spec.ports.iter().flatten() {
                let protocol = protocol_number(sp.protocol.as_deref());
                let mut backends = Vec::new();
                for es in &slices {
                    // The slice's port of the same name carries the target port.
                    let Some(port) = es
                        .ports
                        .iter()
                        .flatten()
                        .find(|p| {
                            p.name == sp.name && protocol_number(p.protocol.as_deref()) == protocol
                        })
                        .and_then(|p| p.port)
                    else {
                        continue;
                    };
                    for ep in &es.endpoints {
                        let ready = ep.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
                        for addr in ep.addresses.iter().filter_map(|a| a.parse().ok()) {
                            backends.push(Backend {
                                ip: addr,
                                port: port as u16,
                                ready,
                                pod: ep.target_ref.as_ref().and_then(|t| t.name.clone()),
                                node: ep.node_name.clone(),
                            });
                        }
                    }
                }
                let i = self.services.len();
                for vip in &vips {
                    self.service_by_vip
                        .insert((*vip, sp.port as u16, protocol), i);
                }
                for b in backends.iter().filter(|b| b.ready) {
                    self.service_by_backend.insert((b.ip, b.port, protocol), i);
                }
                self.services.push(ServicePort {
                    namespace: namespace.clone(),
                    name: name.clone(),
                    port_name: sp.name.clone(),
                    protocol,
                    port: sp.port as u16,
                    vips: vips.clone(),
                    backends,
                    node_local: spec.internal_traffic_policy.as_deref() == Some("Local"),
                });
            }
        }
    }

    pub fn services(&self) -> &[ServicePort] {
        &self.services
    }

    pub fn set_ipvs(&mut self, table: Vec<crate::sources::ipvs::IpvsService>) {
        self.ipvs = ipvs::IpvsTable::new(table);
    }

    /// kube-proxy's IPVS table as last read.
    pub fn ipvs(&self) -> &[crate::sources::ipvs::IpvsService] {
        self.ipvs.services()
    }

    /// The IPVS virtual service at a VIP, port and protocol.
    pub fn ipvs_at(
        &self,
        vip: IpAddr,
        port: u16,
        protocol: u8,
    ) -> Option<&crate::sources::ipvs::IpvsService> {
        self.ipvs.at(vip, port, protocol)
    }

    /// The node's Calico routes as last read.
    pub fn routes(&self) -> &RouteTable {
        &self.routes
    }

    /// IPVS virtual services that no Service object accounts for.
    pub fn unnamed_ipvs(&self) -> impl Iterator<Item = &crate::sources::ipvs::IpvsService> {
        self.ipvs.services().iter().filter(|v| {
            v.address.is_none_or(|a| {
                !self
                    .service_by_vip
                    .contains_key(&(a.ip(), a.port(), v.protocol))
            })
        })
    }

    /// The Service a destination belongs to: its virtual IP and port (a
    /// Service object's, or an IPVS virtual service's without one), or one
    /// of its ready endpoints.
    pub fn service_of(&self, dst: IpAddr, port: u16, protocol: u8) -> Option<ServiceRef> {
        let vs = self.ipvs.at(dst, port, protocol);
        let at_vip = match self.service_by_vip.get(&(dst, port, protocol)) {
            Some(i) => Some(self.services[*i].reference(Via::Vip)),
            None => vs.map(|_| ServiceRef {
                port: port.to_string(),
                via: Via::Vip,
                ..Default::default()
            }),
        };
        if let Some(mut r) = at_vip {
            if let Some(vs) = vs {
                r.virtual_service = Some(ipvs::name(vs));
                r.scheduler = Some(vs.scheduler.clone());
            }
            return Some(r);
        }
        self.service_by_backend
            .get(&(dst, port, protocol))
            .map(|i| self.services[*i].reference(Via::Endpoint))
    }

    pub fn pods(&self) -> &[PodEntry] {
        &self.pods
    }

    pub fn local_node(&self) -> Option<&str> {
        self.local_node.as_deref()
    }

    pub fn pod_of_interface(&self, name: &str) -> Option<&PodEntry> {
        self.pod_by_interface.get(name).map(|i| &self.pods[*i])
    }

    /// The node an address lives on: the pod's node, else the node its
    /// block is routed to, else this node for its own blocks.
    pub fn node_of(&self, ip: IpAddr) -> Option<String> {
        if let Some(node) = self
            .pod_by_ip
            .get(&ip)
            .and_then(|i| self.pods[*i].node.clone())
        {
            return Some(node);
        }
        if let Some(node) = self.node_by_ip.get(&ip) {
            return Some(node.clone());
        }
        // Calico's BlockAffinities (or IPAMBlocks) say whose block it is.
        if let Some(node) = self.calico.block_node(ip) {
            return Some(node.to_owned());
        }
        if let Some(hop) = self.routes.remote_block_of(ip).and_then(|r| r.next_hop) {
            return self.node_by_ip.get(&hop).cloned();
        }
        if self.routes.local_endpoints.contains_key(&ip)
            || self.routes.local_blocks.keys().any(|b| b.contains(&ip))
        {
            return self.local_node.clone();
        }
        None
    }

    /// Whether `ip` is a pod address: in a block (routes, IPAMBlocks,
    /// affinities) or an IP pool.
    pub fn in_pod_network(&self, ip: IpAddr) -> bool {
        self.routes.local_endpoints.contains_key(&ip)
            || self.routes.local_blocks.keys().any(|b| b.contains(&ip))
            || self.routes.remote_block_of(ip).is_some()
            || self.calico.block_of(ip).is_some()
            || self.calico.pool_of(ip).is_some()
    }

    pub fn endpoint(&self, ip: IpAddr) -> EndpointView {
        if let Some(p) = self.pod_by_ip.get(&ip).map(|i| &self.pods[*i]) {
            return EndpointView {
                kind: EndpointKind::Pod,
                namespace: Some(p.namespace.clone()),
                pod: Some(p.name.clone()),
                workload: p.workload.as_ref().map(|w| w.1.clone()),
                workload_kind: p.workload.as_ref().map(|w| w.0.clone()),
                node: p.node.clone(),
            };
        }
        if self.service_by_vip.keys().any(|(vip, _, _)| *vip == ip) || self.ipvs.is_vip(ip) {
            return EndpointView {
                kind: EndpointKind::Service,
                ..Default::default()
            };
        }
        if let Some(node) = self.node_by_ip.get(&ip) {
            return EndpointView {
                kind: EndpointKind::Host,
                node: Some(node.clone()),
                ..Default::default()
            };
        }
        if self.in_pod_network(ip) {
            // A pod address we have no object for: which pod is unknown.
            return EndpointView {
                kind: EndpointKind::Pod,
                node: self.node_of(ip),
                ..Default::default()
            };
        }
        // Neighbour discovery, MLD, DHCP and the like never leave the link:
        // not the world's traffic.
        let kind = if ip.is_multicast() {
            EndpointKind::Multicast
        } else if calico::is_link_local(ip) {
            EndpointKind::LinkLocal
        } else {
            EndpointKind::World
        };
        EndpointView {
            kind,
            ..Default::default()
        }
    }

    /// Fills in the backend of a Service flow: the destination itself for
    /// `endpoint`; for `vip`, where the connection went (`chosen`: the real
    /// server IPVS chose, or conntrack's DNAT), with its pod and node, and
    /// for IPVS its forwarding method.
    pub fn with_backend(
        &self,
        mut r: ServiceRef,
        dst: std::net::SocketAddr,
        protocol: u8,
        chosen: Option<ipvs::Chosen>,
    ) -> ServiceRef {
        let backend = if r.via == Via::Endpoint {
            Some(dst)
        } else {
            chosen.map(|c| {
                r.backend_source = Some(c.source.name().into());
                c.backend
            })
        };
        if let Some(b) = backend {
            r.backend = Some(b.to_string());
            r.backend_pod = self
                .pod_by_ip
                .get(&b.ip())
                .map(|i| format!("{}/{}", self.pods[*i].namespace, self.pods[*i].name));
            r.backend_node = self.node_of(b.ip());
            if r.via == Via::Vip {
                r.forward = self
                    .ipvs
                    .at(dst.ip(), dst.port(), protocol)
                    .and_then(|vs| vs.destinations.iter().find(|d| d.address == b))
                    .map(|d| d.forward.clone());
            }
        }
        r
    }

    /// For tunnelled traffic: the node at the other end of the tunnel.
    pub fn peer_node(&self, src: IpAddr, dst: IpAddr) -> Option<String> {
        let (s, d) = (self.node_of(src), self.node_of(dst));
        match self.local_node.as_deref() {
            Some(local) if s.as_deref() == Some(local) => d,
            Some(local) if d.as_deref() == Some(local) => s,
            // Without our own name: the end that is routed elsewhere.
            _ => {
                if self.routes.remote_block_of(dst).is_some() {
                    d
                } else {
                    s
                }
            }
        }
    }
}

/// Unspecified, multicast or link-local: never routed to another node.
fn not_routed(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => {
            a.is_unspecified() || a.is_multicast() || a.is_link_local() || a.is_broadcast()
        }
        IpAddr::V6(a) => {
            a.is_unspecified() || a.is_multicast() || (a.segments()[0] & 0xffc0) == 0xfe80
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::routes::{BlockRoute, RouteTable};
    use serde_json::json;

    fn model() -> Model {
        let mut objects = ClusterObjects::default();
        objects
            .add_value(json!({"kind": "PodList", "items": [
                {"metadata": {"name": "web-1", "namespace": "shop", "labels": {"pod-template-hash": "abc"},
                    "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-abc", "uid": "u", "controller": true}]},
                 "spec": {"nodeName": "node1", "containers": []}, "status": {"podIP": "10.244.0.5"}},
                {"metadata": {"name": "db-0", "namespace": "shop",
                    "ownerReferences": [{"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "db", "uid": "u", "controller": true}]},
                 "spec": {"nodeName": "node2", "containers": []}, "status": {"podIP": "10.244.0.70"}},
                {"metadata": {"name": "backup-1-x", "namespace": "shop"},
                 "spec": {"nodeName": "node1", "containers": []},
                 "status": {"phase": "Succeeded", "podIP": "10.244.0.6"}}
            ]}))
            .unwrap();
        objects
            .add_value(json!({"kind": "NodeList", "items": [
                {"metadata": {"name": "node1"}, "status": {"addresses": [{"type": "InternalIP", "address": "172.30.0.11"}]}},
                {"metadata": {"name": "node2", "annotations": {"projectcalico.org/IPv4VXLANTunnelAddr": "10.244.0.64"}},
                 "status": {"addresses": [{"type": "InternalIP", "address": "172.30.0.12"}]}}
            ]}))
            .unwrap();
        let mut routes = RouteTable::default();
        routes
            .local_blocks
            .insert("10.244.0.0/26".parse().unwrap(), ());
        routes.remote_blocks.insert(
            "10.244.0.64/26".parse().unwrap(),
            BlockRoute {
                block: "10.244.0.64/26".parse().unwrap(),
                next_hop: Some("10.244.0.64".parse().unwrap()),
                ifindex: 3,
                protocol: "80".into(),
            },
        );
        Model::build(&objects, Arc::new(routes), "cali", Some("node1".into()))
    }

    #[test]
    fn pods_hosts_and_the_world() {
        let m = model();
        let web = m.endpoint("10.244.0.5".parse().unwrap());
        assert_eq!(
            (
                web.kind.name(),
                web.pod.as_deref(),
                web.workload.as_deref(),
                web.workload_kind.as_deref(),
                web.node.as_deref()
            ),
            (
                "pod",
                Some("web-1"),
                Some("web"),
                Some("Deployment"),
                Some("node1")
            )
        );
        assert_eq!(
            m.endpoint("172.30.0.12".parse().unwrap()).node.as_deref(),
            Some("node2")
        );
        assert_eq!(
            m.endpoint("172.30.0.12".parse().unwrap()).kind,
            EndpointKind::Host
        );
        assert_eq!(
            m.endpoint("8.8.8.8".parse().unwrap()).kind,
            EndpointKind::World
        );
        // In a remote block but no pod object: a pod on node2, name unknown.
        let anon = m.endpoint("10.244.0.99".parse().unwrap());
        assert_eq!(
            (anon.kind.name(), anon.pod, anon.node.as_deref()),
            ("pod", None, Some("node2"))
        );
    }

    #[test]
    fn finished_pods_name_nothing() {
        let m = model();
        assert!(m.pods().iter().all(|p| p.name != "backup-1-x"));
        // Its address is free for Calico to give to another pod.
        assert_eq!(m.endpoint("10.244.0.6".parse().unwrap()).pod, None);
    }

    #[test]
    fn services_by_vip_and_by_endpoint() {
        let mut objects = ClusterObjects::default();
        objects
            .add_value(json!({"kind": "List", "items": [
                {"kind": "Service", "metadata": {"name": "web", "namespace": "shop"},
                 "spec": {"clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"],
                          "ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}]}},
                {"kind": "EndpointSlice", "apiVersion": "discovery.k8s.io/v1", "addressType": "IPv4",
                 "metadata": {"name": "web-abc", "namespace": "shop", "labels": {"kubernetes.io/service-name": "web"}},
                 "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
                 "endpoints": [
                    {"addresses": ["10.244.0.5"], "conditions": {"ready": true}, "nodeName": "node1", "targetRef": {"kind": "Pod", "name": "web-1"}},
                    {"addresses": ["10.244.0.9"], "conditions": {"ready": false}}
                 ]}
            ]}))
            .unwrap();
        let m = Model::build(&objects, Default::default(), "cali", None);
        let vip = m.service_of("10.96.0.10".parse().unwrap(), 80, 6).unwrap();
        assert_eq!(
            (vip.name.as_str(), vip.port.as_str(), vip.via),
            ("web", "http", Via::Vip)
        );
        let ep = m
            .service_of("10.244.0.5".parse().unwrap(), 8080, 6)
            .unwrap();
        assert_eq!(ep.via, Via::Endpoint);
        // Not ready, wrong port, wrong protocol: not the Service's.
        assert_eq!(m.service_of("10.244.0.9".parse().unwrap(), 8080, 6), None);
        assert_eq!(m.service_of("10.96.0.10".parse().unwrap(), 81, 6), None);
        assert_eq!(m.service_of("10.96.0.10".parse().unwrap(), 80, 17), None);
        assert_eq!(
            m.endpoint("10.96.0.10".parse().unwrap()).kind,
            EndpointKind::Service
        );
        assert_eq!(m.services()[0].backends.len(), 2);
    }

    #[test]
    fn peer_node_is_the_far_end() {
        let m = model();
        let (a, b) = (
            "10.244.0.5".parse().unwrap(),
            "10.244.0.70".parse().unwrap(),
        );
        assert_eq!(m.peer_node(a, b).as_deref(), Some("node2"));
        assert_eq!(m.peer_node(b, a).as_deref(), Some("node2"));
    }

    #[test]
    fn calico_names_interfaces_by_sha1() {
        // echo -n default.node1-pod1 | sha1sum: 20a2ad68006...
        assert_eq!(
            calico_interface("cali", "default", "node1-pod1"),
            "cali20a2ad68006"
        );
    }

    #[test]
    fn interfaces_map_to_pods_by_calicos_rule() {
        let m = model();
        let iface = calico_interface("cali", "shop", "web-1");
        assert_eq!(
            m.pod_of_interface(&iface).map(|p| p.name.as_str()),
            Some("web-1")
        );
    }
}
