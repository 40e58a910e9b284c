//! The client verbs: ask a daemon over its API socket and render the answer.

pub mod calico;
pub mod doctor;
pub mod encap;
pub mod filter;
pub mod flows;

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use crate::{
    api::{Client, FlowView, InterfaceView, PodView, ServiceView, StatusView},
    config::DEFAULT_SOCKET,
    term::{Output, inventory as render, style},
};

/// Which daemon to ask.
#[derive(Args, Debug, Clone)]
pub struct Target {
    /// The daemon's API socket.
    #[arg(long, env = "OBSERVER_SOCKET", default_value = DEFAULT_SOCKET, conflicts_with = "lab_node")]
    pub socket: PathBuf,
    /// Ask the daemon of this node of a running `observer lab`.
    #[arg(long)]
    pub lab_node: Option<String>,
    /// The lab to look in, with --lab-node.
    #[arg(long, default_value = "obslab", requires = "lab_node")]
    pub lab: String,
}

impl Target {
    pub fn client(&self) -> Result<Client> {
        Ok(match &self.lab_node {
            Some(node) => Client::new(crate::lab_dir::node_socket(&self.lab, node)?),
            None => Client::new(self.socket.clone()),
        })
    }
}

#[derive(Args, Debug)]
pub struct QueryArgs {
    #[command(flatten)]
    pub target: Target,
    /// Output format.
    #[arg(short, long, value_enum, default_value = "table")]
    pub output: Output,
}

/// Asks the daemon for `path` and prints the answer as JSON, or as the
/// table `render` makes of it (`wide` for `-o wide`).
async fn show<T: serde::de::DeserializeOwned + serde::Serialize>(
    args: QueryArgs,
    path: &str,
    render: impl Fn(&T, bool) -> String,
) -> Result<()> {
    let answer: T = args.target.client()?.get(path).await?;
    style::set(args.output != Output::Json && style::wanted());
    match args.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&answer)?),
        o => print!("{}", render(&answer, o == Output::Wide)),
    }
    Ok(())
}

pub use self::flows::FlowsArgs;

/// `observer flows`: filters, sorting, --top, --watch with rates.
pub async fn flows(args: FlowsArgs) -> Result<()> {
    flows::run(args).await
}

pub async fn pods(args: QueryArgs) -> Result<()> {
    show(args, "/v1/pods", |p: &Vec<PodView>, _| {
        render::pods_table(p)
    })
    .await
}

pub async fn services(args: QueryArgs) -> Result<()> {
    show(args, "/v1/services", |s: &Vec<ServiceView>, _| {
        render::services_text(s)
    })
    .await
}

pub async fn interfaces(args: QueryArgs) -> Result<()> {
    show(args, "/v1/interfaces", |i: &Vec<InterfaceView>, wide| {
        render::interfaces_table(i, wide)
    })
    .await
}

pub async fn status(args: QueryArgs) -> Result<()> {
    show(args, "/v1/status", |s: &StatusView, _| {
        render::status_text(s)
    })
    .await
}

/// `observer encap`: per tunnel device and peer node, from the daemon's
/// flows, interfaces and pods.
pub async fn encap(args: QueryArgs) -> Result<()> {
    let client = args.target.client()?;
    let flows: Vec<FlowView> = client.get("/v1/flows").await?;
    let interfaces: Vec<InterfaceView> = client.get("/v1/interfaces").await?;
    let pods: Vec<PodView> = client.get("/v1/pods").await?;
    let report = encap::aggregate(&flows, &interfaces, &pods);
    style::set(args.output != Output::Json && style::wanted());
    match args.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        o => print!("{}", encap::encap_text(&report, o == Output::Wide)),
    }
    Ok(())
}

/// `observer completions SHELL`: the completion script for `cmd`, on stdout.
pub fn completions(shell: clap_complete::Shell, mut cmd: clap::Command) {
    let name = cmd.get_name().to_owned();
    clap_complete::generate(shell, &mut cmd, name, &mut std::io::stdout());
}
