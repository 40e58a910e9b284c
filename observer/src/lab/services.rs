//! The lab's Service VIPs, programmed in every node with nftables DNAT the
//! way kube-proxy's nftables mode does: a random endpoint per new
//! connection, conntrack undoing it on the way back.

use std::{fmt::Write as _, net::IpAddr};

use anyhow::Result;

use super::{
    netns,
    plan::{NodePlan, Plan},
};

/// The nftables script for one family (`ip` or `ip6`), or `None` when no
/// Service has an address of that family.
pub fn script(plan: &Plan, v6: bool) -> Option<String> {
    let (family, daddr) = if v6 {
        ("ip6", "ip6 daddr")
    } else {
        ("ip", "ip daddr")
    };
    let mut rules = String::new();
    for svc in &plan.services {
        let Some(vip) = svc.cluster_ips.iter().find(|ip| ip.is_ipv6() == v6) else {
            continue;
        };
        let backends: Vec<IpAddr> = plan
            .pods
            .iter()
            .filter(|p| svc.backends.contains(&p.name))
            .filter_map(|p| p.ips.iter().find(|ip| ip.is_ipv6() == v6).copied())
            .collect();
        if backends.is_empty() {
            continue;
        }
        for port in &svc.ports {
            let map: Vec<String> = backends
                .iter()
                .enumerate()
                .map(|(i, b)| format!("{i} : {b} . {}", port.target_port))
                .collect();
            let _ = writeln!(
                rules,
                "    {daddr} {vip} {} dport {} dnat {family} to numgen random mod {} map {{ {} }}",
                port.protocol.to_lowercase(),
                port.port,
                backends.len(),
                map.join(", ")
            );
        }
    }
    if rules.is_empty() {
        return None;
    }
    Some(format!(
        "table {family} observer-lab {{\n  chain services {{\n    type nat hook prerouting priority dstnat; policy accept;\n{rules}  }}\n}}\n"
    ))
}

/// Loads the Services' DNAT rules into a node.
pub fn program(plan: &Plan, node: &NodePlan) -> Result<()> {
    for v6 in [false, true] {
        if let Some(text) = script(plan, v6) {
            let path = std::env::temp_dir().join(format!(
                "{}-{}-{}.nft",
                plan.lab,
                node.name,
                if v6 { 6 } else { 4 }
            ));
            std::fs::write(&path, text)?;
            let result = netns::run(&[
                "ip",
                "netns",
                "exec",
                &node.netns,
                "nft",
                "-f",
                &path.to_string_lossy(),
            ]);
            let _ = std::fs::remove_file(&path);
            result?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_rule_per_service_port_with_every_endpoint() {
        let plan = crate::lab::plan::plan("lab", 2, 2, 26, false, "/x").unwrap();
        let text = script(&plan, false).unwrap();
        assert!(text.contains(
            "ip daddr 10.96.0.12 udp dport 53 dnat ip to numgen random mod 2 map { 0 : 10.244.0.2 . 5353, 1 : 10.244.0.66 . 5353 }"
        ));
        assert_eq!(text.matches("dnat").count(), 4);
        assert!(script(&plan, true).is_none(), "no IPv6 without --ipv6");
    }
}
