//! What the daemon says about Calico's control plane: `/v1/ipam` (pools
//! and blocks, like `calicoctl ipam show --show-blocks`), `/v1/routes` (per
//! remote node its blocks, next hops, devices and expected encapsulation)
//! and `/v1/node` (like `calicoctl node status`: BGP peers, this node's
//! blocks, devices and their MTUs, its CNI configuration).

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::{flow::Encap, inventory::InterfaceKind};

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct DeviceView {
    pub name: String,
    /// A tunnel or the underlay.
    pub kind: InterfaceKind,
    pub mtu: Option<u32>,
    /// Whether the observer is attached to it.
    pub attached: bool,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct NodeView {
    pub node: Option<String>,
    /// BGP per family (IPv4, IPv6), as BIRD says; `running: false` with
    /// the reason when it is not there.
    pub bgp: Vec<BirdStatus>,
    /// This node's blocks.
    pub blocks: Vec<IpamBlockView>,
    /// Tunnel devices (Calico's, present here) and the underlay devices
    /// the observer watches, with their MTUs.
    pub devices: Vec<DeviceView>,
    /// The CNI directory, and the MTU of the config in use.
    pub cni: Option<CniDir>,
    pub cni_mtu: Option<u32>,
    /// The subnets this node counts as its own for CrossSubnet.
    pub local_subnets: Vec<String>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct RoutesView {
    pub node: Option<String>,
    /// One entry per remote node (`node` absent: blocks whose node is not
    /// known).
    pub peers: Vec<PeerRoutesView>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct PeerRoutesView {
    pub node: Option<String>,
    /// Its underlay addresses (from its Node object).
    pub addresses: Vec<String>,
    pub routes: Vec<BlockRouteView>,
    /// Traffic this node exchanged with it, from the flow table (the
    /// node's point of view: tx leaves this node): on tunnel devices, and
    /// unencapsulated pod traffic on the underlay.
    pub tx_packets: u64,
    pub tx_bytes: u64,
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub flows: usize,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct BlockRouteView {
    pub block: String,
    pub pool: Option<String>,
    /// Absent (with `device` and `protocol`) when the block has an
    /// affinity to that node but this node has no route to it.
    pub next_hop: Option<String>,
    pub device: Option<String>,
    /// The encapsulation the device does (`vxlan`, `ipip`, `wireguard`),
    /// `none` for the underlay.
    pub device_encap: Option<Encap>,
    /// `bird`, `80` (Felix's VXLAN routes), `static`, `kernel`, `boot`...
    pub protocol: Option<String>,
    /// What the pool's mode says it should be (`none`, `vxlan`, `ipip`).
    pub expected_encap: Option<Encap>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct IpamView {
    pub pools: Vec<IpamPoolView>,
    pub blocks: Vec<IpamBlockView>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct IpamPoolView {
    pub name: String,
    pub cidr: String,
    pub block_size: u8,
    /// `Never`, `Always` or `CrossSubnet`.
    pub ipip_mode: String,
    pub vxlan_mode: String,
    pub nat_outgoing: bool,
    pub disabled: bool,
    pub disable_bgp_export: bool,
    pub node_selector: String,
    /// Blocks of this pool that we know.
    pub blocks: usize,
    /// Addresses of the pool, in use (in known IPAMBlocks), free.
    pub ips_total: u128,
    pub ips_in_use: u64,
    pub ips_free: u128,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct IpamBlockView {
    pub cidr: String,
    pub pool: Option<String>,
    pub node: Option<String>,
    /// Whether the block is this node's.
    pub local: bool,
    /// The BlockAffinity's state, if there is one.
    pub affinity_state: Option<String>,
    pub capacity: u64,
    /// From the IPAMBlock; for this node's blocks without one, the pod
    /// interface routes in it (`in_use_from: routes`).
    pub in_use: Option<u64>,
    pub free: Option<u64>,
    /// `ipamblock`, `routes`, or absent when unknown.
    pub in_use_from: Option<String>,
    /// Where the block was seen: `ipamblock`, `affinity`, `route`.
    pub sources: Vec<String>,
    /// Tunnel addresses and other non-pod allocations: `<ip> <type>`.
    pub special: Vec<String>,
}

/// A BGP peer as `calicoctl node status` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BgpPeer {
    /// BIRD's protocol name (`Mesh_10_0_0_2`).
    pub name: String,
    pub address: IpAddr,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// `node-to-node mesh`, `node specific` or `global`.
    pub peer_type: String,
    /// BIRD's protocol state: `up`, `start`, `down`, ...
    pub state: String,
    pub since: String,
    /// The BGP state: `Established`, `Active`, `Connect`, `Idle`,
    /// `OpenSent`, `OpenConfirm`; empty when the protocol is down.
    pub bgp_state: String,
    /// The whole info column, as calicoctl prints it (`Active Socket:
    /// Connection refused`).
    pub info: String,
}

/// What one BIRD control socket says.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BirdStatus {
    /// `IPv4` or `IPv6`.
    pub family: String,
    pub socket: String,
    /// Whether BIRD answered.
    pub running: bool,
    /// From the greeting: `BIRD 1.6.8`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Why there are no peers: `not running (no socket ...)`, or what went
    /// wrong talking to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub peers: Vec<BgpPeer>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniIpam {
    /// `calico-ipam`, `host-local`, ...
    #[serde(rename = "type")]
    pub kind: String,
    /// Pools (names or CIDRs) for calico-ipam, subnets for host-local.
    #[serde(default)]
    pub pools: Vec<String>,
    /// calico-ipam's `assign_ipv4` / `assign_ipv6` (absent: its defaults,
    /// IPv4 yes, IPv6 no).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assign_ipv4: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assign_ipv6: Option<bool>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniPlugin {
    #[serde(rename = "type")]
    pub kind: String,
    /// The plugin's `mtu`; Calico's 0 means "detect" (calico-node picks it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipam: Option<CniIpam>,
    /// Calico's `policy.type` (`k8s`) and `kubernetes.kubeconfig`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubeconfig: Option<String>,
}

/// One file of the CNI directory.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniConfig {
    pub file: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cni_version: Option<String>,
    #[serde(default)]
    pub plugins: Vec<CniPlugin>,
    /// The first valid file in name order: the one the runtime uses.
    #[serde(default)]
    pub in_use: bool,
    /// Why this file could not be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The CNI directory: its files, or why it could not be listed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniDir {
    pub dir: String,
    pub configs: Vec<CniConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}
