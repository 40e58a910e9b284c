//! Calico's IPAM objects in the Kubernetes datastore
//! (`crd.projectcalico.org/v1`): IPPools, BlockAffinities and IPAMBlocks,
//! as `kubectl get ... -o json` prints them and as the API serves them.
//! The decoders take only the fields we use and tolerate every other one
//! (Calico adds fields from release to release); they are tested against
//! objects from Calico 3.20 and 3.29/3.30 (`tests/fixtures/calico/`).
//! `projectcalico.org/v3` objects (what `calicoctl get -o json` prints)
//! have the same spec fields and decode the same way.

use std::{borrow::Cow, collections::BTreeMap, net::IpAddr};

use anyhow::{Context as _, Result};
use ipnet::IpNet;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::{Deserialize, Deserializer, Serialize};

pub const GROUP: &str = "crd.projectcalico.org";
pub const VERSION: &str = "v1";

/// `ipipMode` / `vxlanMode` of a pool.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum EncapMode {
    /// Also what an empty or absent mode means.
    #[default]
    Never,
    Always,
    /// Only to nodes outside this node's subnet.
    CrossSubnet,
}

impl EncapMode {
    /// Calico's spelling; empty is `Never`. Case is ignored, and so is the
    /// pre-3.0 `cross-subnet` spelling.
    pub fn parse(s: &str) -> Self {
        match s.to_ascii_lowercase().replace('-', "").as_str() {
            "always" => Self::Always,
            "crosssubnet" => Self::CrossSubnet,
            _ => Self::Never,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Never => "Never",
            Self::Always => "Always",
            Self::CrossSubnet => "CrossSubnet",
        }
    }
}

/// Booleans that some Calico releases write as strings
/// (`BlockAffinity.spec.deleted` is `"false"` in the v1 CRD).
/// `null` as the empty value (Go marshals a nil slice as `null`): one
/// such object must not fail the whole list.
fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

fn bool_or_string<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum B {
        Bool(bool),
        Str(String),
        Null(()),
    }
    Ok(match B::deserialize(d)? {
        B::Bool(b) => b,
        B::Str(s) => s.eq_ignore_ascii_case("true"),
        B::Null(()) => false,
    })
}

/// Deprecated pre-3.0 pool fields that the v1 CRD still carries.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LegacyIpip {
    #[serde(default)]
    pub enabled: bool,
    #[serde(default)]
    pub mode: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IpPoolSpec {
    pub cidr: String,
    #[serde(default)]
    pub block_size: Option<u8>,
    #[serde(default)]
    pub ipip_mode: Option<String>,
    #[serde(default)]
    pub vxlan_mode: Option<String>,
    #[serde(default, deserialize_with = "bool_or_string")]
    pub nat_outgoing: bool,
    #[serde(default, deserialize_with = "bool_or_string")]
    pub disabled: bool,
    #[serde(default)]
    pub node_selector: Option<String>,
    #[serde(
        default,
        rename = "disableBGPExport",
        deserialize_with = "bool_or_string"
    )]
    pub disable_bgp_export: bool,
    #[serde(default)]
    pub allowed_uses: Option<Vec<String>>,
    #[serde(default)]
    pub ipip: Option<LegacyIpip>,
    #[serde(default, rename = "nat-outgoing", deserialize_with = "bool_or_string")]
    pub legacy_nat_outgoing: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct IpPool {
    #[serde(default)]
    pub metadata: ObjectMeta,
    pub spec: IpPoolSpec,
}

impl IpPool {
    pub fn name(&self) -> &str {
        self.metadata.name.as_deref().unwrap_or("")
    }

    pub fn cidr(&self) -> Result<IpNet> {
        self.spec
            .cidr
            .parse()
            .with_context(|| format!("IPPool {}: bad cidr {:?}", self.name(), self.spec.cidr))
    }

    /// The block size: the pool's, else Calico's default (26 for IPv4,
    /// 122 for IPv6).
    pub fn block_size(&self) -> u8 {
        self.spec.block_size.unwrap_or(match self.cidr() {
            Ok(IpNet::V6(_)) => 122,
            _ => 26,
        })
    }

    pub fn ipip_mode(&self) -> EncapMode {
        match (&self.spec.ipip_mode, &self.spec.ipip) {
            (Some(m), _) if !m.is_empty() => EncapMode::parse(m),
            // Pre-3.0 pools: `ipip: {enabled: true, mode: cross-subnet}`.
            (_, Some(l)) if l.enabled => {
                l.mode
                    .as_deref()
                    .map_or(EncapMode::Always, |m| match EncapMode::parse(m) {
                        EncapMode::Never => EncapMode::Always,
                        other => other,
                    })
            }
            _ => EncapMode::Never,
        }
    }

    pub fn vxlan_mode(&self) -> EncapMode {
        EncapMode::parse(self.spec.vxlan_mode.as_deref().unwrap_or(""))
    }

    pub fn nat_outgoing(&self) -> bool {
        self.spec.nat_outgoing || self.spec.legacy_nat_outgoing
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockAffinitySpec {
    /// `confirmed`, `pending` or `pendingDeletion`.
    #[serde(default)]
    pub state: String,
    #[serde(default)]
    pub node: String,
    pub cidr: String,
    /// A string (`"false"`) in the v1 CRD, a boolean in some releases.
    #[serde(default, deserialize_with = "bool_or_string")]
    pub deleted: bool,
    /// `host` or `virtual` (newer releases).
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct BlockAffinity {
    #[serde(default)]
    pub metadata: ObjectMeta,
    pub spec: BlockAffinitySpec,
}

impl BlockAffinity {
    /// Confirmed and not being deleted: the block is this node's.
    pub fn is_active(&self) -> bool {
        self.spec.state == "confirmed" && !self.spec.deleted
    }

    pub fn cidr(&self) -> Option<IpNet> {
        self.spec.cidr.parse().ok()
    }
}

/// What an allocation is for: `handle_id` (`k8s-pod-network.<container>`,
/// `ipip-tunnel-addr-<node>`, ...) and `secondary` (`namespace`, `node`,
/// `pod`, or `type: ipipTunnelAddress`/`vxlanTunnelAddress`/
/// `wireguardTunnelAddress`; newer releases add `timestamp`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllocationAttribute {
    #[serde(default)]
    pub handle_id: Option<String>,
    #[serde(default)]
    pub secondary: Option<BTreeMap<String, String>>,
}

impl AllocationAttribute {
    fn get(&self, key: &str) -> Option<&str> {
        self.secondary.as_ref()?.get(key).map(String::as_str)
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IpamBlockSpec {
    pub cidr: String,
    /// `host:<node>` (or `virtual:<name>`); absent for a block with no
    /// affinity.
    #[serde(default)]
    pub affinity: Option<String>,
    /// Index into `attributes` per address of the block; `null` is free.
    #[serde(default, deserialize_with = "null_as_default")]
    pub allocations: Vec<Option<i64>>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub unallocated: Vec<i64>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub attributes: Vec<AllocationAttribute>,
    #[serde(default, deserialize_with = "bool_or_string")]
    pub strict_affinity: bool,
    #[serde(default, deserialize_with = "bool_or_string")]
    pub deleted: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct IpamBlock {
    #[serde(default)]
    pub metadata: ObjectMeta,
    pub spec: IpamBlockSpec,
}

/// One allocated address of a block.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allocation {
    pub ip: IpAddr,
    pub handle_id: Option<String>,
    /// `pod`, or Calico's `type` (`ipipTunnelAddress`, `vxlanTunnelAddress`,
    /// `wireguardTunnelAddress`, ...).
    pub kind: String,
    /// `namespace/pod` for pods.
    pub pod: Option<String>,
}

impl IpamBlock {
    pub fn cidr(&self) -> Option<IpNet> {
        self.spec.cidr.parse().ok()
    }

    /// The node of a `host:<node>` affinity.
    pub fn node(&self) -> Option<&str> {
        self.spec.affinity.as_deref()?.strip_prefix("host:")
    }

    /// Addresses the block holds (2^(bits - prefix)).
    pub fn capacity(&self) -> u64 {
        match self.cidr() {
            Some(net) => {
                let host_bits = u32::from(net.max_prefix_len() - net.prefix_len());
                1u64.checked_shl(host_bits).unwrap_or(u64::MAX)
            }
            None => self.spec.allocations.len() as u64,
        }
    }

    /// Addresses in use: non-null allocations.
    pub fn in_use(&self) -> u64 {
        self.spec.allocations.iter().flatten().count() as u64
    }

    pub fn free(&self) -> u64 {
        self.capacity().saturating_sub(self.in_use())
    }

    /// The allocated addresses with what they are for.
    pub fn allocated(&self) -> Vec<Allocation> {
        let Some(net) = self.cidr() else {
            return Vec::new();
        };
        let base = net.network();
        self.spec
            .allocations
            .iter()
            .enumerate()
            .filter_map(|(ordinal, a)| {
                let attr = a
                    .and_then(|i| usize::try_from(i).ok())
                    .map(|i| self.spec.attributes.get(i).cloned().unwrap_or_default())?;
                let ip = add(base, ordinal as u128);
                let pod = match (attr.get("namespace"), attr.get("pod")) {
                    (Some(ns), Some(p)) => Some(format!("{ns}/{p}")),
                    _ => None,
                };
                let kind = attr
                    .get("type")
                    .map(str::to_owned)
                    .unwrap_or_else(|| if pod.is_some() { "pod" } else { "" }.to_owned());
                Some(Allocation {
                    ip,
                    handle_id: attr.handle_id.clone(),
                    kind,
                    pod,
                })
            })
            .collect()
    }
}

fn add(base: IpAddr, n: u128) -> IpAddr {
    match base {
        IpAddr::V4(a) => IpAddr::V4((u32::from(a).wrapping_add(n as u32)).into()),
        IpAddr::V6(a) => IpAddr::V6((u128::from(a).wrapping_add(n)).into()),
    }
}

macro_rules! calico_resource {
    ($t:ty, $kind:literal, $plural:literal) => {
        impl kube::Resource for $t {
            type DynamicType = ();
            type Scope = kube::core::ClusterResourceScope;
            fn kind(_: &()) -> Cow<'_, str> {
                $kind.into()
            }
            fn group(_: &()) -> Cow<'_, str> {
                GROUP.into()
            }
            fn version(_: &()) -> Cow<'_, str> {
                VERSION.into()
            }
            fn plural(_: &()) -> Cow<'_, str> {
                $plural.into()
            }
            fn meta(&self) -> &ObjectMeta {
                &self.metadata
            }
            fn meta_mut(&mut self) -> &mut ObjectMeta {
                &mut self.metadata
            }
        }
    };
}

calico_resource!(IpPool, "IPPool", "ippools");
calico_resource!(BlockAffinity, "BlockAffinity", "blockaffinities");
calico_resource!(IpamBlock, "IPAMBlock", "ipamblocks");

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::objects::ClusterObjects;

    fn load(files: &[&str]) -> ClusterObjects {
        let mut o = ClusterObjects::default();
        for f in files {
            let path = format!("{}/tests/fixtures/calico/{f}", env!("CARGO_MANIFEST_DIR"));
            let text = std::fs::read_to_string(&path).unwrap();
            o.add_value(serde_json::from_str(&text).unwrap())
                .unwrap_or_else(|e| panic!("{f}: {e:#}"));
        }
        o
    }

    #[test]
    fn calico_3_20_objects_decode() {
        let o = load(&[
            "ippools-v3.20.json",
            "ipamblocks-v3.20.json",
            "blockaffinities-v3.20.json",
        ]);
        let p = &o.ip_pools[0];
        assert_eq!(
            (
                p.name(),
                p.cidr().unwrap().to_string(),
                p.block_size(),
                p.ipip_mode(),
                p.vxlan_mode(),
                p.nat_outgoing(),
                p.spec.disabled,
                p.spec.node_selector.as_deref()
            ),
            (
                "default-ipv4-ippool",
                "192.168.0.0/16".into(),
                26,
                EncapMode::Always,
                EncapMode::Never,
                true,
                false,
                Some("all()")
            )
        );
        let b = &o.ipam_blocks[0];
        assert_eq!(b.node(), Some("node1"));
        assert_eq!((b.capacity(), b.in_use(), b.free()), (64, 3, 61));
        assert_eq!(b.spec.unallocated.len(), 61);
        let allocated = b.allocated();
        assert_eq!(allocated[0].ip.to_string(), "192.168.166.128");
        assert_eq!(allocated[0].kind, "ipipTunnelAddress");
        assert_eq!(
            allocated[2].pod.as_deref(),
            Some("default/web-6d4cf56db6-x2x7q")
        );
        assert_eq!(
            o.ipam_blocks[1].allocated()[1].ip.to_string(),
            "192.168.104.5"
        );
        assert_eq!(o.block_affinities.len(), 2);
        assert!(o.block_affinities.iter().all(BlockAffinity::is_active));
        assert_eq!(o.block_affinities[1].spec.node, "node2");
    }

    #[test]
    fn calico_3_29_objects_decode() {
        let o = load(&[
            "ippools-v3.29.json",
            "ipamblocks-v3.29.json",
            "blockaffinities-v3.29.json",
        ]);
        let modes: Vec<_> = o
            .ip_pools
            .iter()
            .map(|p| {
                (
                    p.name().to_owned(),
                    p.block_size(),
                    p.ipip_mode(),
                    p.vxlan_mode(),
                    p.spec.disabled,
                )
            })
            .collect();
        assert_eq!(
            modes,
            [
                (
                    "default-ipv4-ippool".into(),
                    26,
                    EncapMode::Never,
                    EncapMode::CrossSubnet,
                    false
                ),
                (
                    "default-ipv6-ippool".into(),
                    122,
                    EncapMode::Never,
                    EncapMode::Never,
                    false
                ),
                // No blockSize: the IPv4 default; empty ipipMode is Never.
                (
                    "old-pool".into(),
                    26,
                    EncapMode::Never,
                    EncapMode::Always,
                    true
                ),
            ]
        );
        assert!(o.ip_pools[2].spec.disable_bgp_export);
        let v4 = &o.ipam_blocks[0];
        assert_eq!(
            (v4.node(), v4.in_use(), v4.free()),
            (Some("worker-a"), 4, 60)
        );
        assert_eq!(v4.allocated()[0].kind, "vxlanTunnelAddress");
        let v6 = &o.ipam_blocks[2];
        assert_eq!((v6.capacity(), v6.in_use()), (64, 1));
        assert_eq!(
            v6.allocated()[0].ip.to_string(),
            "fd00:10:244:c8:d1c5:7f1e:9a00:0"
        );
        let active: Vec<_> = o
            .block_affinities
            .iter()
            .filter(|a| a.is_active())
            .map(|a| a.spec.node.as_str())
            .collect();
        assert_eq!(active, ["worker-a", "worker-b", "worker-a"]);
        // pendingDeletion with deleted "true": not the node's any more.
        assert!(o.block_affinities[3].spec.deleted);
    }

    #[test]
    fn modes_and_odd_spellings() {
        assert_eq!(EncapMode::parse(""), EncapMode::Never);
        assert_eq!(EncapMode::parse("crossSubnet"), EncapMode::CrossSubnet);
        assert_eq!(EncapMode::parse("cross-subnet"), EncapMode::CrossSubnet);
        let legacy: IpPool = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "old"},
            "spec": {"cidr": "10.0.0.0/16", "ipip": {"enabled": true, "mode": "cross-subnet"}, "nat-outgoing": true}
        }))
        .unwrap();
        assert_eq!(legacy.ipip_mode(), EncapMode::CrossSubnet);
        assert!(legacy.nat_outgoing());
        let ba: BlockAffinity = serde_json::from_value(serde_json::json!({
            "spec": {"cidr": "10.0.0.0/26", "node": "n", "state": "confirmed", "deleted": false, "somethingNew": 1}
        }))
        .unwrap();
        assert!(ba.is_active());
        // Go's nil slices arrive as null.
        let empty: IpamBlock = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "10-0-0-0-26"},
            "spec": {"cidr": "10.0.0.0/26", "affinity": "host:n", "allocations": null,
                     "unallocated": null, "attributes": null}
        }))
        .unwrap();
        assert!(empty.spec.allocations.is_empty() && empty.spec.attributes.is_empty());
    }
}
