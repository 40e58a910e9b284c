//! What the daemon serves: the JSON API (Unix socket).

pub mod api;
