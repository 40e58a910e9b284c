//! The lab's shape, computed before anything is built: names, addresses and
//! blocks of every node and pod, as Calico would assign them.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub use crate::model::calico_interface;
use anyhow::{Result, bail};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};

pub const POOL_V4: &str = "10.244.0.0/16";
pub const POOL_V6: &str = "fd00:10:244::/48";
/// Calico's IPv6 block size.
pub const BLOCK_V6: u8 = 122;
/// The Kubernetes namespace of the lab's pods.
pub const POD_NAMESPACE: &str = "default";
/// The port of each node's observer metrics (`--metrics-address`).
pub const METRICS_PORT: u16 = 9477;

/// How the lab's nodes reach each other's blocks, as an IPPool's modes say.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Routing {
    /// `vxlanMode: Always`: Felix's routes via `vxlan.calico`, no BGP.
    #[default]
    Vxlan,
    /// `ipipMode: Never`, `vxlanMode: Never`: a BIRD per node in an iBGP
    /// full mesh, `proto bird` routes over the underlay, no encapsulation.
    Bgp,
}

impl Routing {
    pub fn name(self) -> &'static str {
        match self {
            Routing::Vxlan => "vxlan",
            Routing::Bgp => "bgp",
        }
    }
}

/// How pod traffic between nodes is encapsulated, as the IPv4 pool's
/// `ipipMode`/`vxlanMode` (and Felix's `wireguardEnabled`) say.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Encap {
    /// `vxlanMode: Always`: `vxlan.calico` (and `vxlan-v6.calico`).
    #[default]
    Vxlan,
    /// `ipipMode: Always` (or `CrossSubnet`): `tunl0`, IPv4 only; IPv6
    /// pods go unencapsulated over BGP, as Calico's IPv6 pools have no IPIP.
    Ipip,
    /// WireGuard over `wireguard.cali` (IPv4) on top of BGP routes; IPv6
    /// pods go unencapsulated.
    Wireguard,
    /// Unencapsulated BGP routes.
    None,
}

impl Encap {
    pub fn name(self) -> &'static str {
        match self {
            Encap::Vxlan => "vxlan",
            Encap::Ipip => "ipip",
            Encap::Wireguard => "wireguard",
            Encap::None => "none",
        }
    }
}

/// How Services are programmed in each node, as kube-proxy's `--proxy-mode`.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum KubeProxy {
    /// nftables DNAT to a random endpoint.
    #[default]
    Nftables,
    /// IPVS: VIPs on `kube-ipvs0`, a virtual service per Service port
    /// (`rr`), its ready endpoints as Masq real servers.
    Ipvs,
}

impl KubeProxy {
    pub fn name(self) -> &'static str {
        match self {
            KubeProxy::Nftables => "nftables",
            KubeProxy::Ipvs => "ipvs",
        }
    }
}

/// The lab's modes, resolved from what was asked.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Modes {
    pub routing: Routing,
    pub encap: Encap,
    /// IPIP only towards nodes in another subnet (`ipipMode: CrossSubnet`).
    pub cross_subnet: bool,
    pub kube_proxy: KubeProxy,
}

impl Modes {
    /// `--routing` and `--encap` together: VXLAN is Felix's routes; IPIP,
    /// WireGuard and none ride BGP routes (a BIRD mesh). Without `--encap`,
    /// `--routing bgp` is unencapsulated BGP; without either, VXLAN.
    pub fn resolve(
        routing: Option<Routing>,
        encap: Option<Encap>,
        cross_subnet: bool,
        kube_proxy: KubeProxy,
    ) -> Result<Self> {
        let encap = encap.unwrap_or(match routing {
            Some(Routing::Bgp) => Encap::None,
            _ => Encap::Vxlan,
        });
        let routing = match (encap, routing) {
            (Encap::Vxlan, None | Some(Routing::Vxlan)) => Routing::Vxlan,
            (Encap::Vxlan, Some(Routing::Bgp)) => bail!(
                "--encap vxlan routes with Felix's VXLAN routes (--routing vxlan); \
                 for BGP use --encap ipip, wireguard or none"
            ),
            (_, None | Some(Routing::Bgp)) => Routing::Bgp,
            (e, Some(Routing::Vxlan)) => bail!(
                "--encap {} needs BGP routes (--routing bgp, the default for it), as in Calico",
                e.name()
            ),
        };
        if cross_subnet && encap != Encap::Ipip {
            bail!("--cross-subnet is IPIP's CrossSubnet mode: use it with --encap ipip");
        }
        Ok(Modes {
            routing,
            encap,
            cross_subnet,
            kube_proxy,
        })
    }

    fn of_routing(routing: Routing) -> Self {
        Modes {
            routing,
            encap: match routing {
                Routing::Vxlan => Encap::Vxlan,
                Routing::Bgp => Encap::None,
            },
            ..Default::default()
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct NodePlan {
    pub name: String,
    pub netns: String,
    pub underlay_ip: IpAddr,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub underlay_ip6: Option<IpAddr>,
    pub blocks: Vec<IpNet>,
    /// The address of `vxlan.calico` (and `vxlan-v6.calico`), from the
    /// node's block, as Calico allocates it; none when routing is `bgp`.
    pub tunnel_ips: Vec<IpAddr>,
    /// MAC of the node's VXLAN devices (the static FDB entries point at it).
    pub vxlan_mac: String,
    /// The public key of the node's `wireguard.cali` (encap `wireguard`);
    /// its private key is in the node's directory, `wireguard.key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wireguard_public_key: Option<String>,
    pub api_socket: String,
    /// The node observer's Prometheus endpoint, on its underlay address
    /// (reachable from the lab's underlay namespace).
    #[serde(default)]
    pub metrics_url: String,
    /// BIRD's control socket (IPv4), routing `bgp` only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bird_socket: Option<String>,
    /// BIRD's control socket for IPv6 (`bird6`), routing `bgp` with IPv6.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bird6_socket: Option<String>,
    /// The node's CNI configuration directory (`10-calico.conflist`).
    #[serde(default)]
    pub cni_dir: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct PodPlan {
    pub namespace: String,
    pub name: String,
    pub netns: String,
    pub ips: Vec<IpAddr>,
    pub interface: String,
    pub node: String,
}

/// A Service over one Deployment's pods (one on every node), programmed
/// with nftables DNAT as kube-proxy's nftables mode does.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ServicePlan {
    pub namespace: String,
    pub name: String,
    pub cluster_ips: Vec<IpAddr>,
    pub ports: Vec<ServicePortPlan>,
    /// Names of the backend pods.
    pub backends: Vec<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ServicePortPlan {
    pub name: String,
    /// `TCP` or `UDP`.
    pub protocol: String,
    pub port: u16,
    pub target_port: u16,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Plan {
    pub lab: String,
    pub ipv6: bool,
    #[serde(default)]
    pub routing: Routing,
    /// How pods' traffic crosses between nodes (IPv4; IPv6 is VXLAN in
    /// `vxlan` labs, unencapsulated BGP otherwise).
    #[serde(default)]
    pub encap: Encap,
    /// IPIP's CrossSubnet: nodes alternate between 172.30.0.0/24 and
    /// 172.30.1.0/24, and only traffic between the two is encapsulated.
    #[serde(default)]
    pub cross_subnet: bool,
    #[serde(default)]
    pub kube_proxy: KubeProxy,
    /// The namespace of the underlay bridge (172.30.0.1): the node
    /// observers' metrics are reachable from there.
    #[serde(default)]
    pub underlay_netns: String,
    pub nodes: Vec<NodePlan>,
    pub pods: Vec<PodPlan>,
    #[serde(default)]
    pub services: Vec<ServicePlan>,
}

impl Plan {
    /// The underlay's 1500 less the encapsulation's overhead, as Calico's
    /// automatic MTU picks it: VXLAN 50 bytes over IPv4 (70 over IPv6, for
    /// dual-stack), IPIP 20, WireGuard 60; unencapsulated, the underlay's own.
    pub fn pod_mtu(&self) -> u32 {
        match self.encap {
            Encap::None => 1500,
            Encap::Vxlan => 1500 - observer_common::Encap::Vxlan.overhead(self.ipv6),
            Encap::Ipip => super::ipip::TUNNEL_MTU,
            Encap::Wireguard => super::wireguard::TUNNEL_MTU,
        }
    }
}

/// Pod `nodeK-podI` belongs to Deployment `appI`: every Deployment has a
/// pod on every node.
pub fn deployment_of(pod: &str) -> String {
    let i = pod.rsplit("-pod").next().unwrap_or("0");
    format!("app{i}")
}

fn nth_block_v4(pool: Ipv4Net, prefix: u8, n: u32) -> Result<Ipv4Net> {
    let size = 1u32 << (32 - prefix);
    let base = u32::from(pool.network()) + n * size;
    let net = Ipv4Net::new(Ipv4Addr::from(base), prefix)?;
    if !pool.contains(&net) {
        bail!("the pool {pool} has no room for block {n} of /{prefix}");
    }
    Ok(net)
}

fn nth_block_v6(pool: Ipv6Net, prefix: u8, n: u32) -> Result<Ipv6Net> {
    let size = 1u128 << (128 - prefix);
    let base = u128::from(pool.network()) + n as u128 * size;
    Ok(Ipv6Net::new(Ipv6Addr::from(base), prefix)?)
}

fn host_v4(net: Ipv4Net, i: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(u32::from(net.network()) + i))
}

fn host_v6(net: Ipv6Net, i: u32) -> IpAddr {
    IpAddr::V6(Ipv6Addr::from(u128::from(net.network()) + i as u128))
}

/// Plans a VXLAN lab of `nodes` nodes with `pods` pods each.
pub fn plan(
    lab: &str,
    nodes: u32,
    pods: u32,
    block_size: u8,
    ipv6: bool,
    state_dir: &str,
) -> Result<Plan> {
    plan_routed(
        lab,
        nodes,
        pods,
        block_size,
        ipv6,
        Routing::Vxlan,
        state_dir,
    )
}

/// Plans a lab of `nodes` nodes with `pods` pods each, routed as `routing`.
pub fn plan_routed(
    lab: &str,
    nodes: u32,
    pods: u32,
    block_size: u8,
    ipv6: bool,
    routing: Routing,
    state_dir: &str,
) -> Result<Plan> {
    plan_modes(
        lab,
        nodes,
        pods,
        block_size,
        ipv6,
        Modes::of_routing(routing),
        state_dir,
    )
}

/// The underlay address of node `k` (from 1): 172.30.0.1k; with
/// CrossSubnet, even nodes are in 172.30.1.0/24.
fn underlay_v4(k: u32, cross_subnet: bool) -> Ipv4Addr {
    let subnet = u8::from(cross_subnet && k.is_multiple_of(2));
    Ipv4Addr::new(172, 30, subnet, 10 + k as u8)
}

/// Plans a lab of `nodes` nodes with `pods` pods each in `modes`.
pub fn plan_modes(
    lab: &str,
    nodes: u32,
    pods: u32,
    block_size: u8,
    ipv6: bool,
    modes: Modes,
    state_dir: &str,
) -> Result<Plan> {
    let routing = modes.routing;
    if !(1..=50).contains(&nodes) {
        bail!("--nodes must be between 1 and 50");
    }
    if !(20..=30).contains(&block_size) {
        bail!("--block-size must be between 20 and 30 (Calico's default is 26)");
    }
    // The block's first address is the node's tunnel address.
    let room = (1u32 << (32 - block_size)) - 2;
    if pods == 0 || pods > room.min(60) {
        bail!(
            "--pods-per-node must be between 1 and {} for /{block_size} blocks",
            room.min(60)
        );
    }
    if lab.is_empty() || lab.len() > 12 || !lab.chars().all(|c| c.is_ascii_alphanumeric()) {
        bail!("the lab name must be 1 to 12 letters or digits");
    }
    let pool4: Ipv4Net = POOL_V4.parse()?;
    let pool6: Ipv6Net = POOL_V6.parse()?;
    let mut plan = Plan {
        lab: lab.to_owned(),
        ipv6,
        routing,
        encap: modes.encap,
        cross_subnet: modes.cross_subnet,
        kube_proxy: modes.kube_proxy,
        underlay_netns: format!("{lab}-underlay"),
        nodes: Vec::new(),
        pods: Vec::new(),
        services: Vec::new(),
    };
    for k in 1..=nodes {
        let name = format!("node{k}");
        let b4 = nth_block_v4(pool4, block_size, k - 1)?;
        let b6 = nth_block_v6(pool6, BLOCK_V6, k - 1)?;
        let mut blocks = vec![IpNet::V4(b4)];
        let mut tunnel_ips = vec![host_v4(b4, 0)];
        if ipv6 {
            blocks.push(IpNet::V6(b6));
            tunnel_ips.push(host_v6(b6, 0));
        }
        match modes.encap {
            Encap::Vxlan => {}
            // IPv4 only: the node's tunl0 or wireguard.cali address.
            Encap::Ipip | Encap::Wireguard => tunnel_ips.truncate(1),
            // No tunnel device, so no tunnel address (ordinal 0 stays free).
            Encap::None => tunnel_ips.clear(),
        }
        let underlay_ip = underlay_v4(k, modes.cross_subnet);
        let node_dir = format!("{state_dir}/{name}");
        let bgp = routing == Routing::Bgp;
        for i in 1..=pods {
            let pod = format!("{name}-pod{i}");
            let mut ips = vec![host_v4(b4, i)];
            if ipv6 {
                ips.push(host_v6(b6, i));
            }
            plan.pods.push(PodPlan {
                namespace: POD_NAMESPACE.to_owned(),
                interface: calico_interface("cali", POD_NAMESPACE, &pod),
                netns: format!("{lab}-{pod}"),
                name: pod,
                ips,
                node: name.clone(),
            });
        }
        plan.nodes.push(NodePlan {
            netns: format!("{lab}-{name}"),
            underlay_ip: IpAddr::V4(underlay_ip),
            // fd00:172:30::11 beside 172.30.0.11.
            underlay_ip6: ipv6.then(|| {
                IpAddr::V6(Ipv6Addr::new(
                    0xfd00,
                    0x172,
                    0x30,
                    0,
                    0,
                    0,
                    0,
                    0x10 + k as u16,
                ))
            }),
            blocks,
            tunnel_ips,
            vxlan_mac: format!("66:ca:11:00:00:{k:02x}"),
            wireguard_public_key: None,
            api_socket: format!("{state_dir}/{name}.sock"),
            metrics_url: format!("http://{underlay_ip}:{METRICS_PORT}/metrics"),
            bird_socket: bgp.then(|| format!("{node_dir}/bird.ctl")),
            bird6_socket: (bgp && ipv6).then(|| format!("{node_dir}/bird6.ctl")),
            cni_dir: format!("{node_dir}/net.d"),
            name,
        });
    }
    for i in 1..=pods {
        let name = format!("app{i}");
        let mut cluster_ips = vec![IpAddr::V4(Ipv4Addr::new(10, 96, 0, 10 + i as u8))];
        if ipv6 {
            cluster_ips.push(IpAddr::V6(Ipv6Addr::new(
                0xfd00,
                0x10,
                0x96,
                0,
                0,
                0,
                0,
                10 + i as u16,
            )));
        }
        plan.services.push(ServicePlan {
            namespace: POD_NAMESPACE.to_owned(),
            backends: plan
                .pods
                .iter()
                .filter(|p| deployment_of(&p.name) == name)
                .map(|p| p.name.clone())
                .collect(),
            name,
            cluster_ips,
            ports: vec![
                ServicePortPlan {
                    name: "dns".into(),
                    protocol: "UDP".into(),
                    port: 53,
                    target_port: 5353,
                },
                ServicePortPlan {
                    name: "http".into(),
                    protocol: "TCP".into(),
                    port: 80,
                    target_port: 8080,
                },
            ],
        });
    }
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_and_addresses_follow_calicos_layout() {
        let p = plan("lab", 3, 2, 26, true, "/run/x").unwrap();
        assert_eq!(p.nodes[1].blocks[0].to_string(), "10.244.0.64/26");
        assert_eq!(p.nodes[2].blocks[1].to_string(), "fd00:10:244::80/122");
        assert_eq!(p.nodes[1].tunnel_ips[0].to_string(), "10.244.0.64");
        let pod = &p.pods[3];
        assert_eq!(
            (pod.name.as_str(), pod.node.as_str()),
            ("node2-pod2", "node2")
        );
        assert_eq!(pod.ips[0].to_string(), "10.244.0.66");
        assert_eq!(pod.ips[1].to_string(), "fd00:10:244::42");
        assert_eq!(pod.netns, "lab-node2-pod2");
        assert_eq!(p.nodes[0].underlay_ip.to_string(), "172.30.0.11");
    }

    #[test]
    fn bgp_labs_have_bird_sockets_and_no_tunnel_addresses() {
        let p = plan_routed("lab", 2, 2, 26, true, Routing::Bgp, "/run/x").unwrap();
        let n = &p.nodes[1];
        assert!(n.tunnel_ips.is_empty());
        assert_eq!(n.bird_socket.as_deref(), Some("/run/x/node2/bird.ctl"));
        assert_eq!(n.bird6_socket.as_deref(), Some("/run/x/node2/bird6.ctl"));
        assert_eq!(n.cni_dir, "/run/x/node2/net.d");
        assert_eq!(n.metrics_url, "http://172.30.0.12:9477/metrics");
        // Pods keep their addresses whatever the routing.
        assert_eq!(p.pods[2].ips[0].to_string(), "10.244.0.65");
        let v = plan("lab", 2, 2, 26, false, "/run/x").unwrap();
        assert_eq!(v.routing, Routing::Vxlan);
        assert_eq!(v.nodes[0].bird_socket, None);
        let json = serde_json::to_value(&p).unwrap();
        assert_eq!(json["routing"], "bgp");
        assert_eq!(json["underlay_netns"], "lab-underlay");
    }

    #[test]
    fn modes_resolve_as_calico_combines_them() {
        let m = |r, e, x| Modes::resolve(r, e, x, KubeProxy::Nftables);
        assert_eq!(m(None, None, false).unwrap(), Modes::default());
        let bgp = m(Some(Routing::Bgp), None, false).unwrap();
        assert_eq!((bgp.routing, bgp.encap), (Routing::Bgp, Encap::None));
        let ipip = m(None, Some(Encap::Ipip), true).unwrap();
        assert_eq!(
            (ipip.routing, ipip.encap, ipip.cross_subnet),
            (Routing::Bgp, Encap::Ipip, true)
        );
        assert!(m(Some(Routing::Vxlan), Some(Encap::Ipip), false).is_err());
        assert!(m(Some(Routing::Bgp), Some(Encap::Vxlan), false).is_err());
        assert!(m(None, Some(Encap::Wireguard), true).is_err());
    }

    #[test]
    fn ipip_and_wireguard_nodes_have_an_ipv4_tunnel_address_from_their_block() {
        let modes = Modes::resolve(None, Some(Encap::Ipip), true, KubeProxy::Ipvs).unwrap();
        let p = plan_modes("lab", 3, 2, 24, true, modes, "/x").unwrap();
        assert_eq!(p.nodes[1].blocks[0].to_string(), "10.244.1.0/24");
        assert_eq!(
            p.nodes[1].tunnel_ips,
            vec!["10.244.1.0".parse::<IpAddr>().unwrap()]
        );
        assert_eq!(p.pods[2].ips[0].to_string(), "10.244.1.1");
        // CrossSubnet: node2 in the other subnet, node3 with node1.
        let ul: Vec<String> = p.nodes.iter().map(|n| n.underlay_ip.to_string()).collect();
        assert_eq!(ul, ["172.30.0.11", "172.30.1.12", "172.30.0.13"]);
        let json = serde_json::to_value(&p).unwrap();
        assert_eq!(
            (&json["encap"], &json["kube_proxy"]),
            (&"ipip".into(), &"ipvs".into())
        );
    }

    #[test]
    fn bad_sizes_are_refused_with_a_reason() {
        assert!(plan("lab", 0, 1, 26, false, "/x").is_err());
        assert!(plan("lab", 2, 70, 26, false, "/x").is_err());
        assert!(plan("lab", 2, 2, 31, false, "/x").is_err());
        assert!(plan("bad-name!", 2, 2, 26, false, "/x").is_err());
    }
}
