//! `observer`: an eBPF flow observer for Kubernetes clusters networked by
//! Calico. One binary: the daemon (`run`), the client verbs, `replay` and
//! the netns `lab`.

use anyhow::Result;
use clap::{Parser, Subcommand};
use observer::{cli, config, daemon, lab, replay};

#[derive(Parser, Debug)]
#[command(name = "observer", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the daemon: attach to Calico's interfaces and serve the API.
    Run(config::RunArgs),
    /// Remove what daemons leave in the kernel for the next one (pinned
    /// maps and TCX links, clsact filters) and the saved state: for an
    /// uninstall. Stop the daemon first.
    Cleanup(daemon::cleanup::CleanupArgs),
    /// Flows seen by the daemon: filter, sort, --top, --watch with rates.
    Flows(cli::FlowsArgs),
    /// Pods on this node with their interfaces and traffic (like
    /// `calicoctl get workloadEndpoint`).
    Pods(cli::QueryArgs),
    /// Services with their VIPs and backends, and the traffic to each (like
    /// `ipvsadm -Ln`).
    Services(cli::QueryArgs),
    /// Attached interfaces and their totals.
    Interfaces(cli::QueryArgs),
    /// The daemon's own state: polls, map fill, datapath counters.
    Status(cli::QueryArgs),
    /// Calico's IP pools and blocks per node, IPs in use and free (like
    /// `calicoctl ipam show --show-blocks`).
    Ipam(cli::QueryArgs),
    /// Routes to other nodes' blocks: next hop, device, protocol, expected
    /// encapsulation, and the traffic with each node.
    Routes(cli::QueryArgs),
    /// This node: BGP peers (like `calicoctl node status`), blocks, tunnel
    /// devices and MTUs, CNI config.
    Node(cli::QueryArgs),
    /// Tunnel traffic per device and peer node: overhead, MTU, MTU problems.
    Encap(cli::QueryArgs),
    /// Check this node as an operator would by hand: pod routes and
    /// attachments, stray interfaces, block routes, BGP peers, MTUs, IPVS
    /// backends, datapath counters. Exits 1 when something is wrong.
    Doctor(cli::QueryArgs),
    /// Print a shell completion script (e.g. `observer completions bash >
    /// /etc/bash_completion.d/observer`).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Run the kernel classifier on a capture and show the flows it counts.
    Replay(replay::ReplayArgs),
    /// A Calico-shaped cluster from network namespaces on this machine.
    Lab(lab::LabArgs),
}

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("OBSERVER_LOG")
                // The netlink crate warns about every attribute newer than itself.
                .unwrap_or_else(|_| {
                    tracing_subscriber::EnvFilter::new("info,netlink_packet_route=error")
                }),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let rt = tokio::runtime::Runtime::new()?;
    let result = rt.block_on(async move {
        match cli.command {
            Command::Run(args) => {
                let argv: Vec<_> = std::env::args_os()
                    .skip_while(|a| a != "run")
                    .skip(1)
                    .collect();
                daemon::run(config::with_config_file(args, &argv)?).await
            }
            Command::Flows(args) => cli::flows(args).await,
            Command::Pods(args) => cli::pods(args).await,
            Command::Services(args) => cli::services(args).await,
            Command::Interfaces(args) => cli::interfaces(args).await,
            Command::Status(args) => cli::status(args).await,
            Command::Ipam(args) => cli::calico::ipam(args).await,
            Command::Routes(args) => cli::calico::routes(args).await,
            Command::Node(args) => cli::calico::node(args).await,
            Command::Encap(args) => cli::encap(args).await,
            Command::Doctor(args) => cli::doctor::doctor(args).await,
            Command::Completions { shell } => {
                cli::completions(shell, <Cli as clap::CommandFactory>::command());
                Ok(())
            }
            Command::Replay(args) => replay::main(args),
            Command::Cleanup(args) => daemon::cleanup::run(args).await,
            Command::Lab(args) => lab::run(args, std::env::current_exe()?).await,
        }
    });
    // Exit without waiting for blocking reads still in flight (a slow name
    // source): the daemon has saved what it must by now.
    rt.shutdown_timeout(std::time::Duration::from_millis(100));
    result
}
