//! The lab's BGP control plane (routing `bgp`): a real BIRD 1.6 per node
//! namespace (`bird`, and `bird6` on dual-stack labs) with a configuration
//! shaped like the one calico-node's confd renders from its templates
//! (`bird.cfg.template`, `bird_aggr.cfg.template`, `bird_ipam.cfg.template`):
//! a node-to-node iBGP full mesh in AS 64512, each node announcing its own
//! blocks (blackholed by a static protocol, as Calico does) and programming
//! the others' into the kernel as `proto bird` routes via their underlay
//! address, unencapsulated (`ipipMode: Never`, `vxlanMode: Never`).
//!
//! Each node's files are in `/run/observer-lab/<lab>/<node>/`: `bird.cfg`,
//! `bird.ctl` (the control socket), `bird.pid`, `bird.log` (and `bird6.*`).

use std::{
    fmt::Write as _,
    net::IpAddr,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use ipnet::IpNet;

use super::{
    netns,
    plan::{Encap, NodePlan, POOL_V4, POOL_V6, Plan},
    state,
};

/// Calico's default AS number.
pub const AS_NUMBER: u32 = 64512;
/// How long bring-up waits for every mesh session and route.
const ESTABLISH_TIMEOUT: Duration = Duration::from_secs(20);

/// One BIRD of a node: `bird` (IPv4) or `bird6` (IPv6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    /// The daemon's (and its files') name.
    pub fn daemon(self) -> &'static str {
        match self {
            Family::V4 => "bird",
            Family::V6 => "bird6",
        }
    }

    fn client(self) -> &'static str {
        match self {
            Family::V4 => "birdc",
            Family::V6 => "birdc6",
        }
    }

    fn pool(self) -> &'static str {
        match self {
            Family::V4 => POOL_V4,
            Family::V6 => POOL_V6,
        }
    }
}

/// The BIRDs a node runs: IPv4, and IPv6 on dual-stack labs.
pub fn families(node: &NodePlan) -> Vec<(Family, &str)> {
    let mut out = Vec::new();
    if let Some(s) = &node.bird_socket {
        out.push((Family::V4, s.as_str()));
    }
    if let Some(s) = &node.bird6_socket {
        out.push((Family::V6, s.as_str()));
    }
    out
}

fn node_dir(plan: &Plan, node: &NodePlan) -> PathBuf {
    state::dir(&plan.lab).join(&node.name)
}

/// The node's address of a family on the underlay: BGP's source address.
fn underlay(node: &NodePlan, family: Family) -> Option<IpAddr> {
    match family {
        Family::V4 => Some(node.underlay_ip),
        Family::V6 => node.underlay_ip6,
    }
}

/// Calico's name of a mesh session: `Mesh_` and the peer's address with
/// `.` (or `:`) replaced by `_`.
pub fn mesh_protocol(peer: IpAddr) -> String {
    format!("Mesh_{}", peer.to_string().replace(['.', ':'], "_"))
}

/// calico-node's kernel protocol: learned routes into the kernel.
const KERNEL_PROTOCOL: &str = "# Configure synchronization between routing tables and kernel.
protocol kernel {
  learn;             # Learn all alien routes from the kernel
  persist;           # Don't remove routes on bird shutdown
  scan time 2;       # Scan kernel routing table every 2 seconds
  import all;
  export filter calico_kernel_programming; # Default is export none
  graceful restart;  # Turn on graceful restart to reduce potential flaps in
                     # routes when reloading BIRD configuration.
  merge paths on;    # Allow export multipath routes (ECMP)
}

";

/// Whether BIRD programs the kernel's routes for a family: not IPv4 in
/// IPIP mode (see [`super::ipip`]).
fn programs_kernel(plan: &Plan, family: Family) -> bool {
    !(plan.encap == Encap::Ipip && family == Family::V4)
}

/// The configuration of one node's BIRD for one family.
pub fn config(plan: &Plan, node: &NodePlan, family: Family) -> Result<String> {
    let me = underlay(node, family).context("no underlay address for this family")?;
    let log = node_dir(plan, node).join(format!("{}.log", family.daemon()));
    let blocks: Vec<&IpNet> = node
        .blocks
        .iter()
        .filter(|b| matches!(b, IpNet::V4(_)) == (family == Family::V4))
        .collect();
    let pool = family.pool();
    let mut c = String::new();
    writeln!(
        c,
        "# Written by `observer lab` (routing bgp) for {}, shaped like calico-node's\n\
         # confd output: bird_aggr.cfg, bird_ipam.cfg and bird.cfg in one file.\n\
         log \"{}\" all;\n",
        node.name,
        log.display()
    )?;

    // bird_aggr.cfg: the node's blocks, blackholed, and only the blocks
    // themselves (not the pods' /32s inside them) exported.
    c.push_str("# ------------- Static black hole addresses -------------\nprotocol static {\n");
    for b in &blocks {
        writeln!(c, "  route {b} blackhole;")?;
    }
    c.push_str("}\n\n# Aggregation of routes on this host; export the block, nothing beneath it.\nfunction calico_aggr ()\n{\n");
    for b in &blocks {
        writeln!(
            c,
            "  # Block {b} is confirmed\n  if ( net = {b} ) then {{ accept; }}\n  if ( net ~ {b} ) then {{ reject; }}"
        )?;
    }
    c.push_str("}\n\n");

    // bird_ipam.cfg: what goes to peers and to the kernel. Debian's BIRD
    // has no `krt_tunnel` (a Calico fork attribute): with IPIP off the fork
    // sets it empty, which is what upstream BIRD does anyway.
    writeln!(
        c,
        "filter calico_export_to_bgp_peers {{\n  calico_aggr();\n  if ( net ~ {pool} ) then {{\n    accept;\n  }}\n  reject;\n}}\n\n\
         filter calico_kernel_programming {{\n  if ( net ~ {pool} ) then {{\n    accept;\n  }}\n  accept;\n}}\n"
    )?;

    // bird.cfg.
    writeln!(c, "router id {};\n", node.underlay_ip)?;
    if programs_kernel(plan, family) {
        c.push_str(KERNEL_PROTOCOL);
    } else {
        c.push_str(
            "# IPIP: the lab installs the blocks' routes via tunl0 onlink, `proto bird`, as\n\
             # Calico's BIRD fork does (upstream BIRD cannot); without a kernel protocol\n\
             # BIRD leaves them alone instead of pruning them as stale routes of its own.\n\n",
        );
    }
    writeln!(
        c,
        "# Watch interface up/down events.\n\
         protocol device {{\n  debug {{ states }};\n  scan time 2;    # Scan interfaces every 2 seconds\n}}\n\n\
         protocol direct {{\n  debug {{ states }};\n\
         \x20 interface -\"cali*\", -\"kube-ipvs*\", \"*\"; # Exclude cali* and kube-ipvs* but\n\
         \x20                                         # include everything else.\n}}\n",
    )?;
    writeln!(
        c,
        "# Template for all BGP clients\n\
         template bgp bgp_template {{\n\
         \x20 debug {{ states }};\n\
         \x20 description \"Connection to BGP peer\";\n\
         \x20 local as {AS_NUMBER};\n\
         \x20 multihop;\n\
         \x20 gateway recursive; # This should be the default, but just in case.\n\
         \x20 import all;        # Import all routes, since we don't know what the upstream\n\
         \x20                    # topology is and therefore have to trust the ToR/RR.\n\
         \x20 export filter calico_export_to_bgp_peers;  # Only want to export routes for workloads.\n\
         \x20 next hop self;     # Disable next hop processing and always advertise our\n\
         \x20                    # local address as nexthop\n\
         \x20 source address {me};  # The local address we use for the TCP connection\n\
         \x20 add paths on;\n\
         \x20 graceful restart;  # See comment in kernel section about graceful restart.\n\
         \x20 connect delay time 2;\n\
         \x20 connect retry time 5;\n\
         \x20 error wait time 5,30;\n\
         \x20 # Lab only: Calico keeps BIRD's 240 s hold time; 9 s (keepalives every\n\
         \x20 # 3 s) lets the lab and its tests see a stopped peer go down quickly.\n\
         \x20 hold time 9;\n\
         \x20 keepalive time 3;\n\
         }}\n\n\
         # ------------- Node-to-node mesh -------------"
    )?;
    for peer in plan.nodes.iter().filter(|p| p.name != node.name) {
        let Some(addr) = underlay(peer, family) else {
            continue;
        };
        writeln!(
            c,
            "\n# For peer /host/{}/ip_addr_{}",
            peer.name,
            match family {
                Family::V4 => "v4",
                Family::V6 => "v6",
            }
        )?;
        writeln!(
            c,
            "protocol bgp {} from bgp_template {{\n  neighbor {addr} as {AS_NUMBER};",
            mesh_protocol(addr)
        )?;
        // Calico makes the mesh unidirectional: the lower address waits.
        if addr > me {
            c.push_str("  passive on; # Mesh is unidirectional, peer will connect to us.\n");
        }
        c.push_str("}\n");
    }
    c.push_str("\n# ------------- Global peers -------------\n# No global peers configured.\n");
    Ok(c)
}

/// Writes a node's BIRD configurations and starts them in its namespace
/// (they daemonize, leaving pid files beside their sockets).
pub fn start(plan: &Plan, node: &NodePlan) -> Result<()> {
    let dir = node_dir(plan, node);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    for (family, socket) in families(node) {
        let cfg = dir.join(format!("{}.cfg", family.daemon()));
        std::fs::write(&cfg, config(plan, node, family)?)
            .with_context(|| format!("writing {}", cfg.display()))?;
        let pid = dir.join(format!("{}.pid", family.daemon()));
        netns::run(&[
            "ip",
            "netns",
            "exec",
            &node.netns,
            family.daemon(),
            "-c",
            &cfg.to_string_lossy(),
            "-s",
            socket,
            "-P",
            &pid.to_string_lossy(),
        ])
        .with_context(|| {
            format!(
                "starting {} on {} (BIRD 1.6, Debian's `bird` package: `cargo xtask setup` installs it)",
                family.daemon(),
                node.name
            )
        })?;
    }
    Ok(())
}

/// A protocol of `show protocols`: name, state (`up`, `start`, ...) and
/// info (`Established`, `Active`, `Connect`, ...).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProtocolState {
    pub name: String,
    pub state: String,
    pub info: String,
}

/// Parses `birdc show protocols`:
/// `Mesh_172_30_0_12 BGP master up 10:00:03 Established`.
pub fn parse_protocols(text: &str) -> Vec<ProtocolState> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            // name proto table state since [info...]
            if f.len() < 5 || f[0] == "name" || f[0] == "BIRD" {
                return None;
            }
            Some(ProtocolState {
                name: f[0].to_owned(),
                state: f[3].to_owned(),
                info: f[5..].join(" "),
            })
        })
        .collect()
}

/// `birdc -s SOCKET show protocols` (run from the host: the socket is a
/// file, whatever namespace BIRD lives in).
pub fn show_protocols(family: Family, socket: &str) -> Result<Vec<ProtocolState>> {
    let out = netns::run(&[family.client(), "-s", socket, "show", "protocols"])?;
    Ok(parse_protocols(&out))
}

/// Routes BIRD programmed in a node's kernel (`ip route show proto bird`).
fn kernel_routes(node: &NodePlan, family: Family) -> Result<String> {
    let flag = match family {
        Family::V4 => "-4",
        Family::V6 => "-6",
    };
    netns::ip(&node.netns, &[flag, "route", "show", "proto", "bird"])
}

/// What is still missing on a node: mesh sessions not Established, peers'
/// blocks not in the kernel yet.
fn missing(plan: &Plan, node: &NodePlan, family: Family, socket: &str) -> Result<Vec<String>> {
    let protocols = show_protocols(family, socket)?;
    // Where BIRD programs the kernel, its routes must be there; in IPIP
    // mode (the lab installs them) BIRD must have learned the blocks.
    let kernel = programs_kernel(plan, family);
    let routes = if kernel {
        kernel_routes(node, family)?
    } else {
        netns::run(&[family.client(), "-s", socket, "show", "route"])?
    };
    let mut out = Vec::new();
    for peer in plan.nodes.iter().filter(|p| p.name != node.name) {
        let Some(addr) = underlay(peer, family) else {
            continue;
        };
        let name = mesh_protocol(addr);
        match protocols.iter().find(|p| p.name == name) {
            Some(p) if p.info.starts_with("Established") => {}
            Some(p) => out.push(format!("{name}: {} {}", p.state, p.info)),
            None => out.push(format!("{name}: not configured")),
        }
        for block in peer
            .blocks
            .iter()
            .filter(|b| matches!(b, IpNet::V4(_)) == (family == Family::V4))
        {
            let (want, present) = if kernel {
                let want = format!("{block} via {addr} dev eth0");
                let present = routes.lines().any(|l| l.starts_with(&want));
                (want, present)
            } else {
                // `10.244.1.0/24 via 172.30.0.12 on eth0 [Mesh_172_30_0_12 ...`
                // (the next hop BIRD shows is the resolved gateway).
                let want = format!("{block} learned from {name}");
                let present = routes.lines().any(|l| {
                    l.starts_with(&format!("{block} ")) && l.contains(&format!("[{name} "))
                });
                (want, present)
            };
            if !present {
                out.push(format!("no route {want}"));
            }
        }
    }
    Ok(out)
}

/// Waits until every node's every mesh session is Established and the
/// peers' blocks are in its kernel; fails with what is missing and the end
/// of the BIRDs' logs.
pub fn wait_established(plan: &Plan) -> Result<()> {
    let deadline = Instant::now() + ESTABLISH_TIMEOUT;
    loop {
        let mut waiting = Vec::new();
        for node in &plan.nodes {
            for (family, socket) in families(node) {
                match missing(plan, node, family, socket) {
                    Ok(m) => waiting.extend(
                        m.into_iter()
                            .map(|m| format!("{} {}: {m}", node.name, family.daemon())),
                    ),
                    Err(e) => waiting.push(format!("{} {}: {e:#}", node.name, family.daemon())),
                }
            }
        }
        if waiting.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            let mut logs = String::new();
            for node in &plan.nodes {
                for (family, _) in families(node) {
                    let log = node_dir(plan, node).join(format!("{}.log", family.daemon()));
                    let _ = writeln!(
                        logs,
                        "--- end of {}:\n{}",
                        log.display(),
                        state::log_tail(&log, 10)
                    );
                }
            }
            bail!(
                "the BGP mesh did not come up within {} s:\n{}\n{logs}",
                ESTABLISH_TIMEOUT.as_secs(),
                waiting.join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Pids of the lab's BIRDs, in whatever namespace they are (also one whose
/// namespace was deleted): from their pid files, and from `/proc` by a
/// `bird`/`bird6` command line naming a file under the lab's directory.
pub fn pids_under(dir: &Path) -> Vec<i32> {
    let mut pids: Vec<i32> = Vec::new();
    let nodes = std::fs::read_dir(dir).into_iter().flatten().flatten();
    for node in nodes {
        for family in [Family::V4, Family::V6] {
            let file = node.path().join(format!("{}.pid", family.daemon()));
            if let Some(pid) = std::fs::read_to_string(&file)
                .ok()
                .and_then(|s| s.trim().parse::<i32>().ok())
                && is_bird_under(pid, dir)
                && !pids.contains(&pid)
            {
                pids.push(pid);
            }
        }
    }
    let procs = std::fs::read_dir("/proc").into_iter().flatten().flatten();
    for pid in procs.filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok()) {
        if is_bird_under(pid, dir) && !pids.contains(&pid) {
            pids.push(pid);
        }
    }
    pids
}

/// Whether `pid` is a BIRD of ours (so that a recycled pid is left alone).
fn is_bird_under(pid: i32, dir: &Path) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| bird_cmdline_under(&c, dir))
}

fn bird_cmdline_under(cmdline: &[u8], dir: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt as _;
    let args: Vec<&Path> = cmdline
        .split(|b| *b == 0)
        .map(|a| Path::new(std::ffi::OsStr::from_bytes(a)))
        .collect();
    let is_bird = args
        .first()
        .and_then(|a| a.file_name())
        .is_some_and(|n| n == "bird" || n == "bird6");
    is_bird && args[1..].iter().any(|a| a.starts_with(dir))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lab::plan::{Routing, plan_routed};

    #[test]
    fn config_is_calicos_mesh_with_the_lower_address_passive() {
        let plan =
            plan_routed("lab", 3, 1, 26, true, Routing::Bgp, "/run/observer-lab/lab").unwrap();
        let c = config(&plan, &plan.nodes[1], Family::V4).unwrap();
        assert!(c.contains("router id 172.30.0.12;"));
        assert!(c.contains("route 10.244.0.64/26 blackhole;"));
        assert!(c.contains("if ( net = 10.244.0.64/26 ) then { accept; }"));
        assert!(c.contains("source address 172.30.0.12;"));
        assert!(c.contains("log \"/run/observer-lab/lab/node2/bird.log\" all;"));
        // node2 waits for node3 (higher) and connects to node1 (lower).
        let mesh3 = c.split("protocol bgp Mesh_172_30_0_13").nth(1).unwrap();
        assert!(mesh3.split('}').next().unwrap().contains("passive on"));
        let mesh1 = c.split("protocol bgp Mesh_172_30_0_11").nth(1).unwrap();
        assert!(!mesh1.split('}').next().unwrap().contains("passive on"));
        assert!(!c.contains("Mesh_172_30_0_12"));
        let c6 = config(&plan, &plan.nodes[0], Family::V6).unwrap();
        assert!(c6.contains("router id 172.30.0.11;"));
        assert!(c6.contains("protocol bgp Mesh_fd00_172_30__12 from bgp_template"));
        assert!(c6.contains("neighbor fd00:172:30::12 as 64512;"));
        assert!(c6.contains("route fd00:10:244::/122 blackhole;"));
        assert!(c6.contains("if ( net ~ fd00:10:244::/48 ) then"));
    }

    #[test]
    fn show_protocols_is_parsed() {
        let text = "BIRD 1.6.8 ready.\n\
            name     proto    table    state  since       info\n\
            static1  Static   master   up     10:00:00    \n\
            kernel1  Kernel   master   up     10:00:00    \n\
            Mesh_172_30_0_12 BGP      master   up     10:00:03    Established   \n\
            Mesh_172_30_0_13 BGP      master   start  10:00:03    Active        Socket: Connection refused\n";
        let p = parse_protocols(text);
        assert_eq!(p.len(), 4);
        assert_eq!(
            p[2],
            ProtocolState {
                name: "Mesh_172_30_0_12".into(),
                state: "up".into(),
                info: "Established".into()
            }
        );
        assert_eq!(p[3].info, "Active Socket: Connection refused");
    }

    #[test]
    fn birds_are_known_by_their_files() {
        let dir = Path::new("/run/observer-lab/lab1");
        assert!(bird_cmdline_under(
            b"bird\0-c\0/run/observer-lab/lab1/node1/bird.cfg\0-s\0/run/observer-lab/lab1/node1/bird.ctl\0",
            dir
        ));
        assert!(bird_cmdline_under(
            b"/usr/sbin/bird6\0-c\0/run/observer-lab/lab1/node1/bird6.cfg\0",
            dir
        ));
        assert!(!bird_cmdline_under(
            b"bird\0-c\0/run/observer-lab/lab10/node1/bird.cfg\0",
            dir
        ));
        assert!(!bird_cmdline_under(
            b"birdc\0-s\0/run/observer-lab/lab1/node1/bird.ctl\0",
            dir
        ));
        assert!(!bird_cmdline_under(b"bird\0-c\0/etc/bird/bird.conf\0", dir));
    }
}
