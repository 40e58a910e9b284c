//! `observer lab`: a Calico-shaped cluster built from network namespaces on
//! one machine (nodes on an underlay bridge, pods behind `cali*` veths, VXLAN
//! or a BIRD BGP mesh between nodes), with one `observer run` per node, like
//! a DaemonSet.

pub mod bird;
pub mod build;
pub mod ipip;
pub mod ipvs;
pub mod kernel;
pub mod netns;
pub mod objects;
pub mod plan;
pub mod services;
pub mod state;
pub mod traffic;
pub mod wireguard;

use std::{
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use anyhow::{Result, bail};
use clap::{Args, Subcommand};

use crate::{
    api::{Client, FlowView},
    term::{Output, flows::flows_table, table, units::bytes},
};

pub const DEFAULT_LAB: &str = "obslab";

/// Flows plain `observer lab` prints per node and round.
const SHOWN_PER_NODE: usize = 16;

#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct LabArgs {
    #[command(subcommand)]
    pub command: Option<LabCommand>,
    /// Plain `observer lab`: bring a lab up, send traffic and show what the
    /// observers see until Ctrl-C, then tear it down.
    #[command(flatten)]
    pub shape: Shape,
    /// Stop by itself after this many seconds (plain `observer lab`).
    #[arg(long)]
    pub duration: Option<u64>,
}

#[derive(Args, Debug, Clone)]
pub struct Shape {
    /// Name of the lab (prefix of its namespaces).
    #[arg(long, default_value = DEFAULT_LAB)]
    pub name: String,
    #[arg(long, default_value_t = 2)]
    pub nodes: u32,
    #[arg(long, default_value_t = 2)]
    pub pods_per_node: u32,
    /// Dual-stack: IPv6 addresses, blocks and `vxlan-v6.calico` too.
    #[arg(long)]
    pub ipv6: bool,
    /// Prefix length of each node's IPv4 block (Calico's default: 26).
    #[arg(long, default_value_t = 26)]
    pub block_size: u8,
    /// How nodes reach each other's blocks: `vxlan` (Felix's VXLAN routes;
    /// the default) or `bgp` (a BIRD per node in a node-to-node iBGP mesh;
    /// the default with `--encap ipip|wireguard|none`).
    #[arg(long, value_enum)]
    pub routing: Option<plan::Routing>,
    /// How pods' IPv4 traffic crosses between nodes: `vxlan` (the default),
    /// `ipip` (tunl0; needs the ipip module), `wireguard` (wireguard.cali;
    /// needs the wireguard module and `wg`) or `none`.
    #[arg(long, value_enum)]
    pub encap: Option<plan::Encap>,
    /// IPIP only between nodes in different subnets (the pool's `ipipMode:
    /// CrossSubnet`); the nodes alternate between two underlay subnets.
    #[arg(long)]
    pub cross_subnet: bool,
    /// How Services are programmed: `nftables` (the default) or `ipvs`
    /// (kube-ipvs0 and IPVS virtual services; needs the ip_vs module and
    /// `ipvsadm`).
    #[arg(long, value_enum, default_value = "nftables")]
    pub kube_proxy: plan::KubeProxy,
}

#[derive(Args, Debug)]
pub struct NameArg {
    #[arg(long, default_value = DEFAULT_LAB)]
    pub name: String,
}

#[derive(Args, Debug)]
pub struct OutputArgs {
    #[arg(long, default_value = DEFAULT_LAB)]
    pub name: String,
    #[arg(short, long, value_enum, default_value = "table")]
    pub output: Output,
}

#[derive(Subcommand, Debug)]
pub enum LabCommand {
    /// Build the lab and start an observer per node.
    Up(Shape),
    /// Remove everything the lab made (also after a crash).
    Down(NameArg),
    /// Nodes and pods of a running lab.
    Status(OutputArgs),
    /// Send a known mix of traffic between pods and print what was sent.
    Traffic(OutputArgs),
}

fn require_root() -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "the lab needs root: it creates network namespaces and loads eBPF programs (try sudo)"
        );
    }
    Ok(())
}

pub async fn run(args: LabArgs, exe: PathBuf) -> Result<()> {
    require_root()?;
    // The lab shells out and blocks; keep that off the async workers.
    tokio::task::spawn_blocking(move || match args.command {
        Some(LabCommand::Up(shape)) => up(&shape, &exe, &*interrupt_flag()?),
        Some(LabCommand::Down(n)) => build::down(&n.name),
        Some(LabCommand::Status(o)) => status(&o),
        Some(LabCommand::Traffic(o)) => traffic(&o),
        None => interactive(&args.shape, args.duration, &exe),
    })
    .await?
}

/// Builds the lab. Ctrl-C meanwhile (`stop`) lets the build finish and then
/// tears it down, so that an interrupted `up` leaves nothing behind.
fn up(shape: &Shape, exe: &Path, stop: &AtomicBool) -> Result<()> {
    if crate::lab_dir::exists(&shape.name) || !netns::list(&format!("{}-", shape.name))?.is_empty()
    {
        bail!(
            "lab {:?} is already up (or left over): `observer lab down --name {}` first",
            shape.name,
            shape.name
        );
    }
    let dir = state::dir(&shape.name);
    let modes = plan::Modes::resolve(
        shape.routing,
        shape.encap,
        shape.cross_subnet,
        shape.kube_proxy,
    )?;
    // What this kernel and machine lack is said before anything is built.
    kernel::check(&modes)?;
    let mut plan = plan::plan_modes(
        &shape.name,
        shape.nodes,
        shape.pods_per_node,
        shape.block_size,
        shape.ipv6,
        modes,
        &dir.to_string_lossy(),
    )?;
    if plan.encap == plan::Encap::Wireguard {
        wireguard::generate_keys(&mut plan)?;
    }
    state::save(&plan)?;
    if let Err(e) = build::up(&plan, exe) {
        // Leave nothing half-built behind.
        let _ = build::down(&shape.name);
        return Err(e.context("building the lab failed; it was torn down"));
    }
    if stop.load(Ordering::Relaxed) {
        build::down(&shape.name)?;
        bail!("interrupted: lab {:?} was torn down", shape.name);
    }
    eprintln!(
        "lab {:?} up ({} routing, {} encapsulation{}, kube-proxy {}): {} nodes, {} pods; `observer lab status`, `observer flows --lab-node {}`",
        plan.lab,
        plan.routing.name(),
        plan.encap.name(),
        if plan.cross_subnet {
            " across subnets"
        } else {
            ""
        },
        plan.kube_proxy.name(),
        plan.nodes.len(),
        plan.pods.len(),
        plan.nodes[0].name
    );
    Ok(())
}

fn status(o: &OutputArgs) -> Result<()> {
    let plan = state::load(&o.name)?;
    if o.output == Output::Json {
        println!("{}", serde_json::to_string_pretty(&plan)?);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = plan
        .nodes
        .iter()
        .map(|n| {
            vec![
                n.name.clone(),
                n.netns.clone(),
                n.underlay_ip.to_string(),
                n.blocks
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(","),
                n.api_socket.clone(),
                n.bird_socket.clone().unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    println!(
        "routing: {}, encapsulation: {}{}, kube-proxy: {}",
        plan.routing.name(),
        plan.encap.name(),
        if plan.cross_subnet {
            " (CrossSubnet)"
        } else {
            ""
        },
        plan.kube_proxy.name()
    );
    print!(
        "{}",
        table(
            &[
                "NODE",
                "NETNS",
                "UNDERLAY",
                "BLOCKS",
                "API SOCKET",
                "BIRD SOCKET"
            ],
            &rows
        )
    );
    println!();
    let rows: Vec<Vec<String>> = plan
        .pods
        .iter()
        .map(|p| {
            vec![
                format!("{}/{}", p.namespace, p.name),
                p.node.clone(),
                p.ips
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(","),
                p.interface.clone(),
                p.netns.clone(),
            ]
        })
        .collect();
    print!(
        "{}",
        table(&["POD", "NODE", "IPS", "INTERFACE", "NETNS"], &rows)
    );
    Ok(())
}

fn traffic(o: &OutputArgs) -> Result<()> {
    let plan = state::load(&o.name)?;
    let sent = traffic::mix(&plan)?;
    if o.output == Output::Json {
        println!("{}", serde_json::to_string_pretty(&sent)?);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = sent
        .iter()
        .map(|s| {
            vec![
                s.protocol.clone(),
                format!("{} ({})", s.src_pod, s.src_ip),
                format!("{} ({}:{})", s.dst_pod, s.dst_ip, s.dst_port),
                s.packets.map_or("-".into(), |p| p.to_string()),
                bytes(s.payload_bytes),
            ]
        })
        .collect();
    print!(
        "{}",
        table(&["PROTO", "FROM", "TO", "PACKETS", "PAYLOAD"], &rows)
    );
    Ok(())
}

/// Plain `observer lab`: up, then traffic and the observers' view every few
/// seconds until Ctrl-C (or `--duration`), then down.
fn interactive(shape: &Shape, duration: Option<u64>, exe: &Path) -> Result<()> {
    let stop = interrupt_flag()?;
    // A lab left over by a crash is replaced.
    build::down(&shape.name)?;
    up(shape, exe, &stop)?;
    let result = watch_loop(shape, duration, &stop);
    eprintln!("tearing the lab down");
    build::down(&shape.name)?;
    result
}

fn watch_loop(shape: &Shape, duration: Option<u64>, stop: &AtomicBool) -> Result<()> {
    let plan = state::load(&shape.name)?;
    let started = std::time::Instant::now();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    eprintln!("sending traffic and showing flows every 3 s; Ctrl-C to stop and tear down");
    while !stop.load(Ordering::Relaxed) && duration.is_none_or(|d| started.elapsed().as_secs() < d)
    {
        traffic::mix(&plan)?;
        std::thread::sleep(std::time::Duration::from_millis(1500));
        for node in &plan.nodes {
            let flows: Vec<FlowView> =
                rt.block_on(Client::new(&node.api_socket).get("/v1/flows"))?;
            // Pod-to-pod traffic; the IPv6 link-local chatter is left out.
            let mut shown: Vec<FlowView> = flows
                .into_iter()
                .filter(|f| !is_link_local(f.src_ip) && !is_link_local_multicast(f.dst_ip))
                .collect();
            let total = shown.len();
            // The latest round's flows (every round opens new ones).
            shown.sort_by(|a, b| b.last_seen.cmp(&a.last_seen).then(b.bytes.cmp(&a.bytes)));
            shown.truncate(SHOWN_PER_NODE);
            shown.sort_by_key(|f| std::cmp::Reverse(f.bytes));
            println!(
                "== {}: {total} flows, the {} latest",
                node.name,
                shown.len()
            );
            print!("{}", flows_table(&shown, false));
        }
        println!();
        for _ in 0..15 {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
    Ok(())
}

/// A flag that SIGINT and SIGTERM set instead of killing the process, so
/// that the lab is torn down whatever moment Ctrl-C comes (the daemons, in
/// their own process group, do not get the terminal's SIGINT).
fn interrupt_flag() -> Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [libc::SIGINT, libc::SIGTERM] {
        signal_hook::flag::register(signal, stop.clone())?;
    }
    Ok(stop)
}

/// fe80::/10.
fn is_link_local(ip: std::net::IpAddr) -> bool {
    matches!(ip, std::net::IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80)
}

/// ff02::/16.
fn is_link_local_multicast(ip: std::net::IpAddr) -> bool {
    matches!(ip, std::net::IpAddr::V6(v6) if v6.segments()[0] == 0xff02)
}
