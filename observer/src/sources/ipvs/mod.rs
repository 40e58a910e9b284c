//! kube-proxy's IPVS state, as `ipvsadm` shows it: the virtual services
//! with their real servers and counters (`ipvsadm -Ln --stats`, over
//! generic netlink, else `/proc/net/ip_vs`), and the connections IPVS
//! scheduled (`ipvsadm -Lnc`, `/proc/net/ip_vs_conn`).
//!
//! Which real server a client's connection went to is read from
//! `/proc/net/ip_vs_conn`, not from the conntrack entries IPVS alters when
//! `net.ipv4.vs.conntrack=1`: it is IPVS's own record of the decision,
//! keyed like the flow on the client's interface (client, VIP, protocol);
//! it holds only IPVS's connections (a conntrack dump holds every
//! connection of the node); and it is right whatever the sysctl says and
//! for every forwarding method, while IPVS rewrites a conntrack entry's
//! reply tuple only for Masq, only on a new entry, and only with the
//! sysctl on. The IPVS generic netlink family has no connection dump:
//! `ipvsadm -Lnc` reads this same file.

pub mod genl;
pub mod procfs;

use std::net::SocketAddr;

use anyhow::{Context as _, Result, bail};
use serde::{Deserialize, Serialize};

pub use procfs::{parse_conns, parse_proc};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpvsService {
    /// IP protocol number (6, 17, 132); 0 for firewall-mark services.
    pub protocol: u8,
    /// The virtual address, or `None` for a firewall-mark service.
    pub address: Option<SocketAddr>,
    pub fwmark: Option<u32>,
    pub scheduler: String,
    pub destinations: Vec<IpvsDest>,
    /// What `ipvsadm -Ln --stats` shows; `None` when read from
    /// `/proc/net/ip_vs`, which has no counters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stats: Option<IpvsStats>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpvsDest {
    pub address: SocketAddr,
    /// `Masq`, `Local`, `Tunnel`, `Route`, `Bypass`.
    pub forward: String,
    pub weight: u32,
    pub active_conns: u32,
    pub inactive_conns: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stats: Option<IpvsStats>,
}

/// IPVS's own counters, as the API shows them (the type lives in
/// [`crate::api`], which depends on nothing).
pub use crate::api::IpvsStats;

/// One connection IPVS scheduled: a line of `/proc/net/ip_vs_conn`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IpvsConn {
    pub protocol: u8,
    pub client: SocketAddr,
    pub virtual_address: SocketAddr,
    /// The real server IPVS chose.
    pub destination: SocketAddr,
    /// `ESTABLISHED`, `SYN_RECV`, `UDP`, ...
    pub state: String,
}

/// The IPVS table: over generic netlink, else from `/proc/net/ip_vs`; an
/// error saying so where the kernel has no IPVS ([`is_absent`]).
pub fn read() -> Result<Vec<IpvsService>> {
    match genl::read_netlink() {
        Ok(Some(table)) => Ok(table),
        Ok(None) => read_proc(),
        Err(e) => read_proc().map_err(|p| e.context(format!("and then: {p:#}"))),
    }
}

const NO_IPVS: &str = "this kernel has no IPVS";

/// Whether `error` (from [`read`] or [`read_conns`]) only says that the
/// kernel has no IPVS: a normal state, not a failure.
pub fn is_absent(error: &anyhow::Error) -> bool {
    format!("{error:#}").contains(NO_IPVS)
}

/// The IPVS table from `/proc/net/ip_vs`.
pub fn read_proc() -> Result<Vec<IpvsService>> {
    parse_proc(&proc_file("/proc/net/ip_vs")?)
}

/// The connections IPVS scheduled, from `/proc/net/ip_vs_conn`.
pub fn read_conns() -> Result<Vec<IpvsConn>> {
    parse_conns(&proc_file("/proc/net/ip_vs_conn")?)
}

fn proc_file(path: &str) -> Result<String> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            bail!("{NO_IPVS} (no {path})")
        }
        Err(e) => Err(e).with_context(|| format!("reading {path}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn real_kernel_ipvs_table() {
        // The VM's kernel has IPVS (`cargo xtask vm`); this one has none,
        // and says so.
        match read() {
            Ok(table) => assert!(
                table
                    .iter()
                    .all(|s| s.address.is_some() || s.fwmark.is_some())
            ),
            Err(e) => {
                assert!(is_absent(&e), "{e:#}");
                // No table to check here: what was checked is that the
                // absence is said plainly.
                eprintln!("real_kernel_ipvs_table: {e:#}");
            }
        }
    }
}
