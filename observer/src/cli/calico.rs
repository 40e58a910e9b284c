//! `observer ipam`, `observer routes`, `observer node`: Calico's control
//! plane as the daemon sees it, like `calicoctl ipam show --show-blocks`,
//! `ip route | grep bird` and `calicoctl node status`, with traffic.

use std::fmt::Write as _;

use anyhow::Result;

use super::{QueryArgs, show};
use crate::{
    api::{BirdStatus, Encap, IpamView, NodeView, RoutesView},
    term::{
        table,
        units::{bytes, count},
    },
};

pub async fn ipam(args: QueryArgs) -> Result<()> {
    show(args, "/v1/ipam", |v: &IpamView, wide| ipam_text(v, wide)).await
}

pub async fn routes(args: QueryArgs) -> Result<()> {
    show(args, "/v1/routes", |v: &RoutesView, wide| {
        routes_text(v, wide)
    })
    .await
}

pub async fn node(args: QueryArgs) -> Result<()> {
    show(args, "/v1/node", |v: &NodeView, wide| node_text(v, wide)).await
}

fn opt<T: ToString>(v: &Option<T>) -> String {
    v.as_ref().map_or_else(|| "-".into(), ToString::to_string)
}

fn percent(part: u64, whole: u128) -> String {
    if whole == 0 {
        return "-".into();
    }
    format!("{:.0}%", part as f64 * 100.0 / whole as f64)
}

/// An address count as a person reads it: exact while it is short, as a
/// power of two past that (an IPv6 pool holds 2^80 or more).
fn ips(n: u128) -> String {
    if n < 1_000_000_000_000 {
        return n.to_string();
    }
    if n.is_power_of_two() {
        format!("2^{}", n.trailing_zeros())
    } else {
        format!("~2^{}", (n as f64).log2().round())
    }
}

pub fn ipam_text(v: &IpamView, wide: bool) -> String {
    let mut out = String::new();
    if v.pools.is_empty() {
        out.push_str(
            "no IP pools known (the daemon reads IPPools from the Kubernetes API or --objects-dir)\n",
        );
    } else {
        let mut header = vec![
            "POOL", "CIDR", "BLOCK", "IPIP", "VXLAN", "NAT", "DISABLED", "BLOCKS", "IN-USE", "FREE",
        ];
        if wide {
            header.extend(["TOTAL", "SELECTOR", "BGP-EXPORT"]);
        }
        let rows: Vec<Vec<String>> = v
            .pools
            .iter()
            .map(|p| {
                let mut r = vec![
                    p.name.clone(),
                    p.cidr.clone(),
                    format!("/{}", p.block_size),
                    p.ipip_mode.clone(),
                    p.vxlan_mode.clone(),
                    p.nat_outgoing.to_string(),
                    p.disabled.to_string(),
                    p.blocks.to_string(),
                    format!("{} ({})", p.ips_in_use, percent(p.ips_in_use, p.ips_total)),
                    ips(p.ips_free),
                ];
                if wide {
                    r.extend([
                        ips(p.ips_total),
                        p.node_selector.clone(),
                        (!p.disable_bgp_export).to_string(),
                    ]);
                }
                r
            })
            .collect();
        out.push_str(&table(&header, &rows));
    }
    out.push('\n');
    if v.blocks.is_empty() {
        out.push_str("no blocks known\n");
        return out;
    }
    let mut header = vec!["BLOCK", "NODE", "POOL", "IN-USE", "FREE", "AFFINITY"];
    if wide {
        header.extend(["SEEN-IN", "SPECIAL"]);
    }
    let rows: Vec<Vec<String>> = v
        .blocks
        .iter()
        .map(|b| {
            let node = match (&b.node, b.local) {
                (Some(n), true) => format!("{n} (this node)"),
                (Some(n), false) => n.clone(),
                (None, true) => "(this node)".into(),
                (None, false) => "-".into(),
            };
            let in_use = match (&b.in_use, b.in_use_from.as_deref()) {
                (Some(n), Some("routes")) => format!("{n} (routes)"),
                (Some(n), _) => format!("{n} ({})", percent(*n, u128::from(b.capacity))),
                (None, _) => "-".into(),
            };
            let mut r = vec![
                b.cidr.clone(),
                node,
                opt(&b.pool),
                in_use,
                opt(&b.free),
                opt(&b.affinity_state),
            ];
            if wide {
                r.extend([b.sources.join(","), b.special.join(", ")]);
            }
            r
        })
        .collect();
    out.push_str(&table(&header, &rows));
    out
}

pub fn routes_text(v: &RoutesView, wide: bool) -> String {
    if v.peers.is_empty() {
        return "no routes to other nodes' blocks\n".into();
    }
    let mut out = String::new();
    for p in &v.peers {
        let name = p.node.clone().unwrap_or_else(|| "(unknown node)".into());
        let addrs = if p.addresses.is_empty() {
            String::new()
        } else {
            format!(" ({})", p.addresses.join(", "))
        };
        let _ = writeln!(
            out,
            "{name}{addrs}: sent {} pkts {}, received {} pkts {}{}",
            count(p.tx_packets),
            bytes(p.tx_bytes),
            count(p.rx_packets),
            bytes(p.rx_bytes),
            if wide {
                format!(" in {} flows", p.flows)
            } else {
                String::new()
            }
        );
        let mut header = vec![
            "  BLOCK", "NEXT-HOP", "DEVICE", "PROTO", "ENCAP", "EXPECTED",
        ];
        if wide {
            header.push("POOL");
        }
        let rows: Vec<Vec<String>> = p
            .routes
            .iter()
            .map(|r| {
                let mut row = vec![
                    format!("  {}", r.block),
                    r.next_hop.clone().unwrap_or_else(|| "(no route)".into()),
                    opt(&r.device),
                    opt(&r.protocol),
                    opt(&r.device_encap.map(Encap::name)),
                    opt(&r.expected_encap.map(Encap::name)),
                ];
                if wide {
                    row.push(opt(&r.pool));
                }
                row
            })
            .collect();
        if !rows.is_empty() {
            out.push_str(&table(&header, &rows));
        }
        out.push('\n');
    }
    out
}

fn bgp_text(out: &mut String, s: &BirdStatus, wide: bool) {
    let _ = writeln!(out, "{} BGP status", s.family);
    if !s.running {
        let why = s.error.as_deref().unwrap_or("no answer");
        if why.starts_with("not running") {
            let _ = writeln!(out, "BIRD is {why}\n");
        } else {
            let _ = writeln!(out, "BIRD does not answer: {why}\n");
        }
        return;
    }
    if let Some(v) = &s.version
        && wide
    {
        let _ = writeln!(out, "{v} at {}", s.socket);
    }
    if s.peers.is_empty() {
        let _ = writeln!(out, "No {} peers found.\n", s.family);
        return;
    }
    let mut header = vec!["PEER ADDRESS", "PEER TYPE", "STATE", "SINCE", "INFO"];
    if wide {
        header.push("PROTOCOL");
    }
    let rows: Vec<Vec<String>> = s
        .peers
        .iter()
        .map(|p| {
            let mut r = vec![
                match p.port {
                    Some(port) => format!("{}:{port}", p.address),
                    None => p.address.to_string(),
                },
                p.peer_type.clone(),
                p.state.clone(),
                p.since.clone(),
                p.info.clone(),
            ];
            if wide {
                r.push(p.name.clone());
            }
            r
        })
        .collect();
    out.push_str(&table(&header, &rows));
    out.push('\n');
}

pub fn node_text(v: &NodeView, wide: bool) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Node {}\n",
        v.node
            .as_deref()
            .unwrap_or("(name not known: give the daemon --node-name)")
    );
    if v.bgp.is_empty() {
        out.push_str("BGP: not read yet\n\n");
    }
    for s in &v.bgp {
        bgp_text(&mut out, s, wide);
    }
    out.push_str("Blocks\n");
    if v.blocks.is_empty() {
        out.push_str("none known\n");
    } else {
        let rows: Vec<Vec<String>> = v
            .blocks
            .iter()
            .map(|b| {
                vec![
                    b.cidr.clone(),
                    opt(&b.pool),
                    opt(&b.in_use),
                    opt(&b.free),
                    b.special.join(", "),
                ]
            })
            .collect();
        out.push_str(&table(
            &["BLOCK", "POOL", "IN-USE", "FREE", "SPECIAL"],
            &rows,
        ));
    }
    out.push_str("\nDevices\n");
    if v.devices.is_empty() {
        out.push_str("no tunnel or underlay devices\n");
    } else {
        let rows: Vec<Vec<String>> = v
            .devices
            .iter()
            .map(|d| {
                vec![
                    d.name.clone(),
                    d.kind.to_string(),
                    opt(&d.mtu),
                    if d.attached { "yes" } else { "no" }.into(),
                ]
            })
            .collect();
        out.push_str(&table(&["DEVICE", "KIND", "MTU", "OBSERVED"], &rows));
    }
    if wide && !v.local_subnets.is_empty() {
        let _ = writeln!(
            out,
            "local subnets (CrossSubnet): {}",
            v.local_subnets.join(", ")
        );
    }
    out.push_str("\nCNI\n");
    match &v.cni {
        None => out.push_str("not read yet\n"),
        Some(d) if d.error.is_some() => {
            let _ = writeln!(out, "{}", d.error.as_deref().unwrap_or_default());
        }
        Some(d) if d.configs.is_empty() => {
            let _ = writeln!(out, "no CNI configuration in {}", d.dir);
        }
        Some(d) => {
            for c in &d.configs {
                let mark = if c.in_use { " (in use)" } else { "" };
                if let Some(e) = &c.error {
                    let _ = writeln!(out, "{}{mark}: {e}", c.file);
                    continue;
                }
                let _ = writeln!(
                    out,
                    "{}{mark}: network {}, CNI {}",
                    c.file,
                    c.name.as_deref().unwrap_or("-"),
                    c.cni_version.as_deref().unwrap_or("-")
                );
                for p in &c.plugins {
                    let mut line = format!("  {}", p.kind);
                    if let Some(mtu) = p.mtu {
                        let _ = write!(
                            line,
                            " mtu {}",
                            if mtu == 0 {
                                "0 (auto)".to_owned()
                            } else {
                                mtu.to_string()
                            }
                        );
                    }
                    if let Some(i) = &p.ipam {
                        let _ = write!(line, " ipam {}", i.kind);
                        if !i.pools.is_empty() {
                            let _ = write!(line, " pools {}", i.pools.join(","));
                        }
                    }
                    if wide {
                        if let Some(pol) = &p.policy {
                            let _ = write!(line, " policy {pol}");
                        }
                        if let Some(k) = &p.kubeconfig {
                            let _ = write!(line, " kubeconfig {k}");
                        }
                    }
                    let _ = writeln!(out, "{line}");
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn big_address_counts_read_as_powers_of_two() {
        assert_eq!(ips(65_536), "65536");
        assert_eq!(ips(1 << 80), "2^80");
        assert_eq!(ips((1 << 80) - 7), "~2^80");
    }

    use super::*;
    use crate::api::BgpPeer;

    #[test]
    fn node_status_reads_like_calicoctl() {
        let v = NodeView {
            node: Some("node1".into()),
            bgp: vec![
                BirdStatus {
                    family: "IPv4".into(),
                    socket: "/var/run/calico/bird.ctl".into(),
                    running: true,
                    version: Some("BIRD 1.6.8".into()),
                    error: None,
                    peers: vec![BgpPeer {
                        name: "Mesh_172_30_0_12".into(),
                        address: "172.30.0.12".parse().unwrap(),
                        port: None,
                        peer_type: "node-to-node mesh".into(),
                        state: "up".into(),
                        since: "10:21:09".into(),
                        bgp_state: "Established".into(),
                        info: "Established".into(),
                    }],
                },
                BirdStatus {
                    family: "IPv6".into(),
                    socket: "/var/run/calico/bird6.ctl".into(),
                    running: false,
                    version: None,
                    error: Some("not running (no socket at /var/run/calico/bird6.ctl)".into()),
                    peers: vec![],
                },
            ],
            blocks: vec![],
            devices: vec![],
            cni: None,
            cni_mtu: None,
            local_subnets: vec![],
        };
        let text = node_text(&v, false);
        assert!(text.contains("IPv4 BGP status"), "{text}");
        assert!(
            text.lines().any(|l| l.starts_with("172.30.0.12")
                && l.contains("node-to-node mesh")
                && l.ends_with("Established")),
            "{text}"
        );
        assert!(text.contains("BIRD is not running (no socket"), "{text}");
    }
}
