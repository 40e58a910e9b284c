//! The daemon's JSON API as both ends see it: the shapes of its answers
//! (the server in [`crate::export`] builds them; [`crate::cli`], the lab
//! and the tests read them), the typed values in them, and the client that
//! asks a daemon over its Unix socket. Depends on nothing else in the
//! crate, so that a reader of the API needs nothing of the server.

pub mod calico;
pub mod client;
pub mod doctor;
pub mod flow;
pub mod inventory;

pub use self::{
    calico::{
        BgpPeer, BirdStatus, BlockRouteView, CniConfig, CniDir, CniIpam, CniPlugin, DeviceView,
        IpamBlockView, IpamPoolView, IpamView, NodeView, PeerRoutesView, RoutesView,
    },
    client::Client,
    doctor::{Check, Verdict, healthy},
    flow::{Direction, Encap, EndpointKind, EndpointView, FlowView, Protocol, ServiceRef, Via},
    inventory::{
        AttachedVia, BackendView, EncapView, InterfaceKind, InterfaceView, IpvsStats, IpvsView,
        LinkLayer, PodView, RealServerView, ServiceView, StatusView,
    },
};

/// The header that says when the counters of an answer were read from the
/// kernel (milliseconds since the Unix epoch).
pub const POLLED_AT: &str = "x-observer-polled-at-ms";
