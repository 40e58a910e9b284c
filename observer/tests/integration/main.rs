//! The integration tests: one binary with a module per concern, as aya
//! organises its own (`cargo test -p observer --test integration`; a
//! module alone: `... -- daemon::`). What they read is beside them:
//! captures in `tests/pcaps/`, cluster objects in `tests/fixtures/`.
//!
//! Most need root (they load eBPF programs, build network namespaces and
//! labs) and fail with the reason, never pass quietly, without it: run
//! them with `sudo -E cargo xtask test`. Tests of one module run side by
//! side; tests of different modules never do (see [`common::require_root`]).

mod common;

mod bench_smoke;
mod bird;
mod calico_views;
mod classifier;
mod cli;
mod daemon;
mod deploy;
mod doctor;
mod fuzz;
mod kernel_log;
mod lab;
mod lab_bgp;
mod metrics;
mod nothing_lost;
mod older_kernel;
mod replay;
mod tunnels;
