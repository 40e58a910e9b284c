//! What the daemon serves: the JSON API (Unix socket, optionally TCP), and
//! metrics with health endpoints over HTTP.

pub mod api;
pub mod calico_views;
pub mod http;
pub mod metrics;
