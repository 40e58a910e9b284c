//! `observer`: an eBPF flow observer for Kubernetes clusters networked by
//! Calico. The library holds everything; `main.rs` is the command line.
//!
//! What depends on what (`scripts/imports.py` draws it from the `use`s and
//! fails on a cycle); each module uses only the ones listed after it:
//!
//! - [`api`]: the JSON API's types and its client. Uses nothing.
//! - [`datapath`] (load, attach, drain the kernel maps): `api` (the
//!   values it reports). [`lab_dir`] (where a lab's files are): nothing.
//! - [`sources`] (routes, Kubernetes, IPVS, BIRD, CNI, conntrack): `api`.
//! - [`model`] (who an address is, which Service, which node): `sources`,
//!   `api`.
//! - [`flows`] (the flow table, a flow as the API shows it): `model`,
//!   `datapath`, `api`.
//! - [`config`] (the daemon's flags, and each part's own settings built
//!   from them: only [`daemon`] sees the flags): `flows`, `datapath`.
//! - [`state`] (the daemon's shared state): `model`, `flows`, `datapath`.
//! - [`doctor`], then [`export`] (JSON API server, metrics): `state` and
//!   what is below it; `export` also `doctor` and `config`.
//! - [`daemon`] (`observer run`): the wiring, above all of those.
//! - [`term`] (tables, colour, units): `api`.
//! - [`cli`] (the client verbs): `api`, `term`, `config`, `lab_dir`; never
//!   the server.
//! - [`lab`], [`replay`], [`bench`], [`fuzz`]: beside the daemon, on
//!   `api`, `term`, `datapath`, `flows`, `model`, `sources` as they need;
//!   `lab` also on `lab_dir`, `bench` also on `lab` (its namespaces and
//!   pods).
//!
//! A flow goes one way: kernel maps -> [`datapath`] (read, and evicted
//! when idle) -> the [`flows`] table in [`state`] (the [`daemon`]'s poll
//! does both) -> [`export`]: the metrics, and the JSON API, where
//! [`flows::to_view`] makes it an [`api::FlowView`] -> [`api`]'s client ->
//! [`cli`], which [`term`] lays out.

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
pub mod lab_dir;
pub mod model;
pub mod replay;
pub mod sources;
pub mod state;
pub mod term;

/// Whether a unit test that needs root can run. Not as root it cannot:
/// it says so (on stderr, which libtest does not capture) and is skipped,
/// or fails when `OBSERVER_REQUIRE_ROOT=1`, which `cargo xtask test` sets
/// so that CI never skips one quietly. (The integration tests need root
/// and always fail without it.)
#[cfg(test)]
pub(crate) fn have_root(why: &str) -> bool {
    use std::io::Write as _;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    let test = std::thread::current()
        .name()
        .unwrap_or("this test")
        .to_owned();
    assert!(
        std::env::var_os("OBSERVER_REQUIRE_ROOT").is_none_or(|v| v != "1"),
        "{test} needs root ({why}), and OBSERVER_REQUIRE_ROOT=1 forbids skipping it"
    );
    let _ = writeln!(std::io::stderr(), "{test}: skipped, needs root ({why})");
    false
}
