//! `observer`: an eBPF flow observer for Kubernetes clusters networked by
//! Calico. The library holds everything; `main.rs` is the command line.
//!
//! Data flows one way: kernel maps -> [`datapath`] drain -> [`flows`] table
//! -> [`export`] (JSON API, metrics) -> [`cli`]; [`doctor`] checks the
//! node from the same state.

pub mod api;
pub mod bench;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod datapath;
pub mod doctor;
pub mod export;
pub mod flows;
pub mod fuzz;
pub mod lab;
pub mod model;
pub mod replay;
pub mod sources;
pub mod state;
