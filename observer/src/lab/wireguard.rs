//! Calico's WireGuard mode (`wireguardEnabled`), IPv4: per node a
//! `wireguard.cali` device (listen port 51820, MTU 1440, the node's
//! WireGuard address from its block, a key pair of its own made with
//! `wg genkey`), each other node a peer (its underlay address, its blocks
//! and WireGuard address as allowed IPs), and Felix's policy routing:
//! the peers' blocks in table 1 via `wireguard.cali`, looked up (rule
//! priority 99) by every packet not carrying WireGuard's own firewall mark,
//! so that the encrypted packets themselves take the main table's
//! underlay routes. IPv6 pods go unencapsulated over BGP (the lab builds
//! no `wg-v6.cali`).

use std::{io::Write as _, os::unix::fs::OpenOptionsExt as _, path::PathBuf, process::Stdio};

use anyhow::{Context as _, Result, bail};

use super::{
    netns::{ip, run},
    plan::{NodePlan, Plan},
    state,
};

pub const DEVICE: &str = "wireguard.cali";
pub const PORT: &str = "51820";
/// 1500 less WireGuard's 60 bytes over IPv4 (outer IP 20, UDP 8, its own 32).
pub const TUNNEL_MTU: u32 = 1440;
/// Felix's defaults: routing table 1, rule priority 99.
const TABLE: &str = "1";
const RULE_PRIORITY: &str = "99";
/// The mark WireGuard puts on its own packets (Felix uses a bit of its
/// iptables mark mask; the lab picks 0x100000).
const FWMARK: &str = "0x100000";

fn key_file(plan: &Plan, node: &NodePlan) -> PathBuf {
    state::dir(&plan.lab).join(&node.name).join("wireguard.key")
}

/// A key pair per node: the private key in the node's directory (mode
/// 0600), the public one in the plan (and the Node's annotation).
pub fn generate_keys(plan: &mut Plan) -> Result<()> {
    for i in 0..plan.nodes.len() {
        let private = run(&["wg", "genkey"]).context("wg genkey (wireguard-tools)")?;
        let public = pubkey(&private)?;
        let path = key_file(plan, &plan.nodes[i]);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(0o600)
            .open(&path)
            .and_then(|mut f| f.write_all(private.trim().as_bytes()))
            .with_context(|| format!("writing {}", path.display()))?;
        plan.nodes[i].wireguard_public_key = Some(public);
    }
    Ok(())
}

/// `wg pubkey` of a private key, given on its standard input.
fn pubkey(private: &str) -> Result<String> {
    let mut child = std::process::Command::new("wg")
        .arg("pubkey")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("starting wg pubkey")?;
    child
        .stdin
        .take()
        .context("wg's stdin")?
        .write_all(private.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("wg pubkey failed: {}", out.status);
    }
    Ok(String::from_utf8(out.stdout)?.trim().to_owned())
}

/// The node's `wireguard.cali`, its peers and Felix's policy routing.
pub fn device(plan: &Plan, node: &NodePlan) -> Result<()> {
    let ns = &node.netns;
    ip(ns, &["link", "add", DEVICE, "type", "wireguard"])?;
    let key = key_file(plan, node);
    let wg = |args: &[&str]| {
        let mut full = vec!["ip", "netns", "exec", ns, "wg", "set", DEVICE];
        full.extend_from_slice(args);
        run(&full)
    };
    wg(&[
        "listen-port",
        PORT,
        "fwmark",
        FWMARK,
        "private-key",
        &key.to_string_lossy(),
    ])?;
    for peer in plan.nodes.iter().filter(|p| p.name != node.name) {
        let public = peer
            .wireguard_public_key
            .as_deref()
            .context("a peer without a WireGuard key")?;
        let mut allowed: Vec<String> = peer
            .blocks
            .iter()
            .filter(|b| b.addr().is_ipv4())
            .map(ToString::to_string)
            .collect();
        allowed.extend(peer.tunnel_ips.iter().map(|a| format!("{a}/32")));
        let endpoint = format!("{}:{PORT}", peer.underlay_ip);
        wg(&[
            "peer",
            public,
            "endpoint",
            &endpoint,
            "allowed-ips",
            &allowed.join(","),
        ])?;
    }
    if let Some(addr) = node.tunnel_ips.first() {
        ip(ns, &["addr", "add", &format!("{addr}/32"), "dev", DEVICE])?;
    }
    ip(
        ns,
        &["link", "set", DEVICE, "mtu", &TUNNEL_MTU.to_string(), "up"],
    )?;
    for peer in plan.nodes.iter().filter(|p| p.name != node.name) {
        let targets = peer
            .blocks
            .iter()
            .filter(|b| b.addr().is_ipv4())
            .map(ToString::to_string)
            .chain(peer.tunnel_ips.iter().map(|a| format!("{a}/32")));
        for target in targets {
            ip(
                ns,
                &[
                    "route", "add", &target, "dev", DEVICE, "table", TABLE, "proto", "80",
                ],
            )?;
        }
    }
    let mark = format!("{FWMARK}/{FWMARK}");
    ip(
        ns,
        &[
            "rule",
            "add",
            "not",
            "fwmark",
            &mark,
            "lookup",
            TABLE,
            "priority",
            RULE_PRIORITY,
        ],
    )?;
    Ok(())
}
