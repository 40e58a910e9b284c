//! kube-proxy's IPVS mode in a lab node: every ClusterIP on the
//! `kube-ipvs0` dummy device (left down, as kube-proxy leaves it: its
//! addresses are local all the same), one IPVS virtual service per Service
//! port and address family with the `rr` scheduler, its ready endpoints as
//! Masq real servers of weight 1, and `net.ipv4.vs.conntrack=1` (kube-proxy
//! sets it so that its iptables rules see IPVS's connections).

use std::net::{IpAddr, SocketAddr};

use anyhow::Result;

use super::{
    netns::{ip, run, sysctl},
    plan::{NodePlan, Plan},
};

pub const DEVICE: &str = "kube-ipvs0";

/// `ipvsadm` argument lists, in order: each virtual service, then its real
/// servers.
pub fn commands(plan: &Plan) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for svc in &plan.services {
        for vip in &svc.cluster_ips {
            let backends: Vec<IpAddr> = plan
                .pods
                .iter()
                .filter(|p| svc.backends.contains(&p.name))
                .filter_map(|p| p.ips.iter().find(|a| a.is_ipv6() == vip.is_ipv6()).copied())
                .collect();
            for port in &svc.ports {
                let kind = if port.protocol == "UDP" { "-u" } else { "-t" };
                let vs = SocketAddr::new(*vip, port.port).to_string();
                out.push(["-A", kind, &vs, "-s", "rr"].map(str::to_owned).to_vec());
                for b in &backends {
                    let rs = SocketAddr::new(*b, port.target_port).to_string();
                    out.push(
                        ["-a", kind, &vs, "-r", &rs, "-m", "-w", "1"]
                            .map(str::to_owned)
                            .to_vec(),
                    );
                }
            }
        }
    }
    out
}

/// Programs a node as kube-proxy in IPVS mode does.
pub fn program(plan: &Plan, node: &NodePlan) -> Result<()> {
    let ns = &node.netns;
    sysctl(ns, "net.ipv4.vs.conntrack", "1")?;
    ip(ns, &["link", "add", DEVICE, "type", "dummy"])?;
    for svc in &plan.services {
        for vip in &svc.cluster_ips {
            let len = if vip.is_ipv4() { 32 } else { 128 };
            ip(ns, &["addr", "add", &format!("{vip}/{len}"), "dev", DEVICE])?;
        }
    }
    for args in commands(plan) {
        let mut full = vec!["ip", "netns", "exec", ns, "ipvsadm"];
        full.extend(args.iter().map(String::as_str));
        run(&full)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_virtual_service_per_service_port_and_family_with_every_endpoint() {
        let plan = crate::lab::plan::plan("lab", 2, 2, 26, true, "/x").unwrap();
        let c: Vec<String> = commands(&plan).iter().map(|a| a.join(" ")).collect();
        // 2 Services x 2 families x 2 ports, each with its 2 endpoints.
        assert_eq!(c.iter().filter(|a| a.starts_with("-A")).count(), 8);
        assert_eq!(c.iter().filter(|a| a.starts_with("-a")).count(), 16);
        assert_eq!(c[0], "-A -u 10.96.0.11:53 -s rr");
        assert_eq!(c[1], "-a -u 10.96.0.11:53 -r 10.244.0.1:5353 -m -w 1");
        assert!(
            c.contains(&"-a -t [fd00:10:96::b]:80 -r [fd00:10:244::41]:8080 -m -w 1".to_owned())
        );
    }
}
