//! Where names come from: the node's routes, and (later) the Kubernetes
//! API and IPVS.

pub mod bird;
pub mod calico;
pub mod cni;
pub mod conntrack;
pub mod ipvs;
pub mod kube;
pub mod netlink;
pub mod objects;
pub mod routes;
