//! Building and removing the lab: an underlay bridge, node namespaces with
//! Calico's routes and VXLAN devices, pod namespaces with Calico's veths,
//! and one `observer run` per node.

use std::{
    net::IpAddr,
    os::unix::process::CommandExt as _,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use super::{
    netns::{self, ip, sysctl},
    plan::{Encap, KubeProxy, NodePlan, Plan, PodPlan, Routing},
    state,
};
use crate::api::Client;

/// The bridge namespace joining the nodes' `eth0`s.
pub fn underlay_ns(lab: &str) -> String {
    format!("{lab}-underlay")
}

/// Calico's host-side veth MAC; pods reach it as fe80::ecee:eeff:feee:eeee.
const HOST_VETH_MAC: &str = "ee:ee:ee:ee:ee:ee";
const HOST_VETH_LL: &str = "fe80::ecee:eeff:feee:eeee";
const VXLAN_VNI: &str = "4096";
const UNDERLAY_GATEWAY_CIDR: &str = "172.30.0.1/24";
/// CrossSubnet labs' second underlay subnet (even nodes).
const UNDERLAY_GATEWAY2_CIDR: &str = "172.30.1.1/24";

/// A node's gateway: the bridge's address in the node's /24.
fn gateway(node: &NodePlan) -> String {
    match node.underlay_ip {
        IpAddr::V4(a) => {
            let o = a.octets();
            format!("{}.{}.{}.1", o[0], o[1], o[2])
        }
        IpAddr::V6(_) => unreachable!("IPv4 underlay"),
    }
}
const VXLAN_PORT: &str = "4789";
/// How long a node's observer may take to answer.
const READY_TIMEOUT: Duration = Duration::from_secs(120);

fn prefix_len(ip: &IpAddr) -> &'static str {
    if ip.is_ipv4() { "32" } else { "128" }
}

pub fn up(plan: &Plan, exe: &Path) -> Result<()> {
    // Pins of an earlier lab of this name that did not come down cleanly
    // would hand its counts to this one's daemons.
    let pins = state::pin_dir(&plan.lab);
    crate::datapath::pin::unmount(&pins);
    crate::datapath::pin::mount_private_bpffs(&pins)?;
    let ul = underlay_ns(&plan.lab);
    netns::add(&ul)?;
    ip(&ul, &["link", "add", "br0", "type", "bridge"])?;
    ip(&ul, &["link", "set", "br0", "up"])?;
    // The nodes' default gateway. Besides being realistic, proxy ARP for
    // the pods' 169.254.1.1 only answers for addresses the node can route.
    ip(&ul, &["addr", "add", UNDERLAY_GATEWAY_CIDR, "dev", "br0"])?;
    if plan.cross_subnet {
        // Two subnets on one bridge, routed between by the bridge's host.
        ip(&ul, &["addr", "add", UNDERLAY_GATEWAY2_CIDR, "dev", "br0"])?;
        sysctl(&ul, "net.ipv4.ip_forward", "1")?;
    }
    for (k, node) in plan.nodes.iter().enumerate() {
        build_node(plan, node, &ul, k)?;
    }
    for node in &plan.nodes {
        match plan.encap {
            Encap::Vxlan => routes_to_peers(plan, node)?,
            Encap::Ipip => super::ipip::routes(plan, node)?,
            Encap::Wireguard | Encap::None => {}
        }
        match plan.kube_proxy {
            KubeProxy::Nftables => super::services::program(plan, node)?,
            KubeProxy::Ipvs => super::ipvs::program(plan, node)?,
        }
    }
    for pod in &plan.pods {
        build_pod(plan, pod)?;
    }
    super::objects::write(plan, &state::dir(&plan.lab).join("objects"))?;
    super::objects::write_cni(plan)?;
    if plan.routing == Routing::Bgp {
        // Every BIRD first (the passive side must be listening when its
        // peer connects), then the whole mesh up and its routes in place.
        for node in &plan.nodes {
            super::bird::start(plan, node)?;
        }
        super::bird::wait_established(plan)?;
    }
    for node in &plan.nodes {
        start_daemon(plan, node, exe)?;
    }
    Ok(())
}

fn build_node(plan: &Plan, node: &NodePlan, ul: &str, k: usize) -> Result<()> {
    let ns = &node.netns;
    netns::add(ns)?;
    for (key, value) in [
        ("net.ipv4.ip_forward", "1"),
        ("net.ipv4.conf.all.rp_filter", "0"),
        ("net.ipv4.conf.default.rp_filter", "0"),
        ("net.ipv6.conf.all.forwarding", "1"),
        // Addresses usable at once, without duplicate address detection.
        ("net.ipv6.conf.default.accept_dad", "0"),
        ("net.ipv6.conf.all.accept_dad", "0"),
    ] {
        sysctl(ns, key, value)?;
    }
    let port = format!("n{k}");
    ip(
        ul,
        &[
            "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", ns,
        ],
    )?;
    ip(ul, &["link", "set", &port, "master", "br0", "up"])?;
    let ul4 = format!("{}/24", node.underlay_ip);
    ip(ns, &["addr", "add", &ul4, "dev", "eth0"])?;
    if let Some(ul6) = node.underlay_ip6 {
        ip(
            ns,
            &["addr", "add", &format!("{ul6}/64"), "dev", "eth0", "nodad"],
        )?;
    }
    ip(ns, &["link", "set", "eth0", "up"])?;
    ip(ns, &["route", "add", "default", "via", &gateway(node)])?;

    match plan.encap {
        Encap::Vxlan => {}
        Encap::Ipip => return super::ipip::tunnel(node),
        Encap::Wireguard => return super::wireguard::device(plan, node),
        // No tunnel: BIRD blackholes the node's blocks (a static protocol,
        // as calico-node's bird_aggr.cfg does) and routes the others'.
        Encap::None => return Ok(()),
    }
    // Calico's VXLAN devices: VNI 4096, port 4789, no learning (Felix
    // programs neighbours and FDB entries), 50 bytes under the underlay.
    for (dev, local) in vxlan_devices(plan, node) {
        ip(
            ns,
            &[
                "link",
                "add",
                dev,
                "type",
                "vxlan",
                "id",
                VXLAN_VNI,
                "dstport",
                VXLAN_PORT,
                "dev",
                "eth0",
                "local",
                &local.to_string(),
                "nolearning",
            ],
        )?;
        ip(
            ns,
            &[
                "link",
                "set",
                dev,
                "address",
                &node.vxlan_mac,
                "mtu",
                if local.is_ipv4() { "1450" } else { "1430" },
                "up",
            ],
        )?;
    }
    for (tunnel, dev) in node
        .tunnel_ips
        .iter()
        .zip(["vxlan.calico", "vxlan-v6.calico"])
    {
        ip(
            ns,
            &[
                "addr",
                "add",
                &format!("{tunnel}/{}", prefix_len(tunnel)),
                "dev",
                dev,
            ],
        )?;
    }
    for block in &node.blocks {
        ip(ns, &["route", "add", "blackhole", &block.to_string()])?;
    }
    Ok(())
}

fn vxlan_devices(plan: &Plan, node: &NodePlan) -> Vec<(&'static str, IpAddr)> {
    let mut v = vec![("vxlan.calico", node.underlay_ip)];
    if plan.ipv6
        && let Some(ul6) = node.underlay_ip6
    {
        v.push(("vxlan-v6.calico", ul6));
    }
    v
}

/// Felix's routes to the other nodes' blocks over VXLAN: a route via the
/// peer's tunnel address, a permanent neighbour for it, and an FDB entry
/// sending its MAC to the peer's underlay address.
fn routes_to_peers(plan: &Plan, node: &NodePlan) -> Result<()> {
    let ns = &node.netns;
    for peer in plan.nodes.iter().filter(|p| p.name != node.name) {
        let underlays = [Some(peer.underlay_ip), peer.underlay_ip6];
        for (i, (block, tunnel)) in peer.blocks.iter().zip(&peer.tunnel_ips).enumerate() {
            let dev = if i == 0 {
                "vxlan.calico"
            } else {
                "vxlan-v6.calico"
            };
            let Some(dst) = underlays[i] else { continue };
            let tunnel = tunnel.to_string();
            ip(
                ns,
                &[
                    "route",
                    "add",
                    &block.to_string(),
                    "via",
                    &tunnel,
                    "dev",
                    dev,
                    "onlink",
                    // Felix's own route protocol number.
                    "proto",
                    "80",
                ],
            )?;
            ip(
                ns,
                &[
                    "neigh",
                    "add",
                    &tunnel,
                    "lladdr",
                    &peer.vxlan_mac,
                    "dev",
                    dev,
                    "nud",
                    "permanent",
                ],
            )?;
            netns::run(&[
                "ip",
                "netns",
                "exec",
                ns,
                "bridge",
                "fdb",
                "append",
                &peer.vxlan_mac,
                "dev",
                dev,
                "dst",
                &dst.to_string(),
                "self",
                "permanent",
            ])?;
        }
    }
    Ok(())
}

fn build_pod(plan: &Plan, pod: &PodPlan) -> Result<()> {
    let node = plan
        .nodes
        .iter()
        .find(|n| n.name == pod.node)
        .context("pod on an unknown node")?;
    netns::add(&pod.netns)?;
    sysctl(&pod.netns, "net.ipv6.conf.default.accept_dad", "0")?;
    sysctl(&pod.netns, "net.ipv6.conf.all.accept_dad", "0")?;
    pod_veth(&PodVeth {
        node_ns: &node.netns,
        pod_ns: &pod.netns,
        cali: &pod.interface,
        ips: &pod.ips,
        // Calico's CNI gives pods the tunnel's MTU, so that nothing needs
        // fragmenting on the way into the tunnel.
        mtu: Some(plan.pod_mtu()),
        neighbours: Neighbours::ProxyArp,
    })
}

/// A pod's link as Calico's CNI makes it, between two namespaces that
/// exist: a veth from `cali` (Calico's MAC) in the node's namespace to
/// `eth0` in the pod's, the pod's addresses (/32, /128) on `eth0` with
/// host routes to them through `cali`, and 169.254.1.1 (IPv6: the veth's
/// link-local address) as the pod's gateway.
pub struct PodVeth<'a> {
    pub node_ns: &'a str,
    pub pod_ns: &'a str,
    pub cali: &'a str,
    pub ips: &'a [IpAddr],
    /// Both ends' MTU; `None`: the kernel's default.
    pub mtu: Option<u32>,
    pub neighbours: Neighbours<'a>,
}

/// How the pod and the node learn each other's MAC.
pub enum Neighbours<'a> {
    /// Calico's way: proxy ARP on `cali` answers for 169.254.1.1.
    ProxyArp,
    /// Permanent entries on both sides, `eth0` given `pod_mac`: no ARP in
    /// a measurement, and the same forwarding path (the bench).
    Static { pod_mac: &'a str },
}

pub fn pod_veth(p: &PodVeth<'_>) -> Result<()> {
    let (host, ns, cali) = (p.node_ns, p.pod_ns, p.cali);
    let mut add = vec![
        "link",
        "add",
        cali,
        "address",
        HOST_VETH_MAC,
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
    ];
    if let Neighbours::Static { pod_mac } = p.neighbours {
        add.extend(["address", pod_mac]);
    }
    add.extend(["netns", ns]);
    ip(host, &add)?;
    let mut up = vec!["link", "set", cali, "up"];
    let mtu = p.mtu.map(|m| m.to_string());
    if let Some(mtu) = &mtu {
        up.extend(["mtu", mtu]);
        ip(ns, &["link", "set", "eth0", "mtu", mtu])?;
    }
    ip(host, &up)?;
    if let Neighbours::ProxyArp = p.neighbours {
        sysctl(host, &format!("net.ipv4.conf.{cali}.proxy_arp"), "1")?;
        sysctl(host, &format!("net.ipv4.neigh.{cali}.proxy_delay"), "0")?;
    }
    for addr in p.ips {
        let cidr = format!("{addr}/{}", prefix_len(addr));
        ip(ns, &["addr", "add", &cidr, "dev", "eth0"])?;
        ip(host, &["route", "add", &cidr, "dev", cali, "scope", "link"])?;
        if let Neighbours::Static { pod_mac } = p.neighbours {
            ip(
                host,
                &[
                    "neigh",
                    "add",
                    &addr.to_string(),
                    "lladdr",
                    pod_mac,
                    "dev",
                    cali,
                    "nud",
                    "permanent",
                ],
            )?;
        }
    }
    ip(ns, &["link", "set", "eth0", "up"])?;
    ip(
        ns,
        &[
            "route",
            "add",
            "169.254.1.1",
            "dev",
            "eth0",
            "scope",
            "link",
        ],
    )?;
    ip(
        ns,
        &[
            "route",
            "add",
            "default",
            "via",
            "169.254.1.1",
            "dev",
            "eth0",
        ],
    )?;
    if let Neighbours::Static { .. } = p.neighbours {
        ip(
            ns,
            &[
                "neigh",
                "add",
                "169.254.1.1",
                "lladdr",
                HOST_VETH_MAC,
                "dev",
                "eth0",
                "nud",
                "permanent",
            ],
        )?;
    }
    if p.ips.iter().any(IpAddr::is_ipv6) {
        ip(
            ns,
            &[
                "-6",
                "route",
                "add",
                "default",
                "via",
                HOST_VETH_LL,
                "dev",
                "eth0",
            ],
        )?;
    }
    Ok(())
}

fn start_daemon(plan: &Plan, node: &NodePlan, exe: &Path) -> Result<()> {
    let dir = state::dir(&plan.lab);
    let log_path = dir.join(format!("{}.log", node.name));
    let log = std::fs::File::create(&log_path)
        .with_context(|| format!("creating {}", log_path.display()))?;
    let node_dir = dir.join(&node.name);
    let mut child = Command::new("ip")
        .args(["netns", "exec", &node.netns])
        .arg(exe)
        .args([
            "run",
            "--socket",
            &node.api_socket,
            "--poll-interval",
            "1s",
            "--underlay",
            "eth0",
            "--node-name",
            &node.name,
            "--metrics-address",
            &format!("{}:{}", node.underlay_ip, super::plan::METRICS_PORT),
            "--cni-dir",
            &node.cni_dir,
        ])
        // Where the node's BIRDs' sockets are (or would be: a VXLAN node
        // runs none, like calico-node with `calico_backend: vxlan`).
        .arg("--bird-socket")
        .arg(node_dir.join("bird.ctl"))
        .arg("--bird6-socket")
        .arg(node_dir.join("bird6.ctl"))
        .arg("--objects-dir")
        .arg(dir.join("objects"))
        .arg("--pin-path")
        .arg(state::pin_dir(&plan.lab).join(&node.name))
        .arg("--state-file")
        .arg(node_dir.join("state"))
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        // Its own process group: Ctrl-C on the lab does not reach it; `lab
        // down` stops it.
        .process_group(0)
        .spawn()
        .with_context(|| format!("starting the observer of {}", node.name))?;
    wait_ready(&mut child, &node.api_socket, &log_path)
}

/// Waits until a daemon's API answers; if it exits or times out, fails with
/// the end of its log.
fn wait_ready(child: &mut Child, socket: &str, log: &Path) -> Result<()> {
    // Loading and verifying the programs takes a second here, and a
    // minute on an emulated CPU (`cargo xtask vm`); a daemon that fails
    // exits, which ends the wait at once.
    let deadline = Instant::now() + READY_TIMEOUT;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let why = loop {
        if rt
            .block_on(Client::new(socket).get::<serde_json::Value>("/v1/status"))
            .is_ok()
        {
            return Ok(());
        }
        // A daemon that refused its flags or failed to load is not worth
        // the whole wait.
        if let Some(status) = child.try_wait()? {
            break format!("exited ({status}) before its API answered");
        }
        if Instant::now() > deadline {
            break format!("did not answer within {} s", READY_TIMEOUT.as_secs());
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    bail!(
        "the observer at {socket} {why}; end of {}:\n{}",
        log.display(),
        state::log_tail(log, 20)
    )
}

/// Removes every namespace of the lab (daemons first, so they detach
/// cleanly), whether or not its state file survived.
pub fn down(lab: &str) -> Result<()> {
    let prefix = format!("{lab}-");
    let all = netns::list(&prefix)?;
    // Nodes hold the daemons: stop those first and give them time to detach.
    // A daemon whose namespace was already deleted (a crash, a hand-run `ip
    // netns del`) keeps it alive unnamed: find it by its socket path too.
    let mut victims: Vec<i32> = all.iter().flat_map(|ns| netns::pids(ns)).collect();
    // The same for BIRDs (routing `bgp`), by pid file or command line.
    let dir = state::dir(lab);
    for pid in netns::daemons_under(&dir)
        .into_iter()
        .chain(super::bird::pids_under(&dir))
    {
        if !victims.contains(&pid) {
            victims.push(pid);
        }
    }
    for pid in &victims {
        // SAFETY: kill(2) on processes of the lab's namespaces. SIGCONT
        // lets one that was stopped (a test freezing a BIRD) see SIGTERM.
        unsafe {
            libc::kill(*pid, libc::SIGTERM);
            libc::kill(*pid, libc::SIGCONT);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while !victims.is_empty() && Instant::now() < deadline {
        victims.retain(|pid| netns::alive(*pid));
        std::thread::sleep(Duration::from_millis(50));
    }
    for pid in victims {
        // SAFETY: as above; it did not stop in time.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    let mut errors = Vec::new();
    for ns in &all {
        if let Err(e) = netns::run(&["ip", "netns", "del", ns]) {
            errors.push(format!("{e:#}"));
        }
    }
    // The daemons' pins (their links went with the namespaces' devices).
    crate::datapath::pin::unmount(&state::pin_dir(lab));
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    if !errors.is_empty() {
        bail!(
            "some namespaces could not be removed:\n{}",
            errors.join("\n")
        );
    }
    Ok(())
}
