//! The client verbs: ask a daemon over its API socket and render the answer.

pub mod client;
pub mod render;

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, ValueEnum};

use crate::{
    config::DEFAULT_SOCKET,
    export::api::{InterfaceView, PodView, ServiceView, StatusView},
    flows::view::FlowView,
};

use self::client::Client;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// A readable table.
    Table,
    /// A table with more columns.
    Wide,
    /// JSON, for scripts.
    Json,
}

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
            Some(node) => Client::new(crate::lab::node_socket(&self.lab, node)?),
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

pub async fn flows(args: QueryArgs) -> Result<()> {
    let flows: Vec<FlowView> = args.target.client()?.get("/v1/flows").await?;
    match args.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&flows)?),
        o => print!("{}", render::flows_table(&flows, o == Output::Wide)),
    }
    Ok(())
}

pub async fn pods(args: QueryArgs) -> Result<()> {
    let list: Vec<PodView> = args.target.client()?.get("/v1/pods").await?;
    match args.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&list)?),
        _ => print!("{}", render::pods_table(&list)),
    }
    Ok(())
}

pub async fn services(args: QueryArgs) -> Result<()> {
    let list: Vec<ServiceView> = args.target.client()?.get("/v1/services").await?;
    match args.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&list)?),
        _ => print!("{}", render::services_text(&list)),
    }
    Ok(())
}

pub async fn interfaces(args: QueryArgs) -> Result<()> {
    let list: Vec<InterfaceView> = args.target.client()?.get("/v1/interfaces").await?;
    match args.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&list)?),
        _ => print!("{}", render::interfaces_table(&list)),
    }
    Ok(())
}

pub async fn status(args: QueryArgs) -> Result<()> {
    let status: StatusView = args.target.client()?.get("/v1/status").await?;
    match args.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&status)?),
        _ => print!("{}", render::status_text(&status)),
    }
    Ok(())
}
