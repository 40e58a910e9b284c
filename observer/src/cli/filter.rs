//! `observer flows` filters, sorting and `--top`, applied client-side to the
//! daemon's flows. Every filter given must match (AND); a filter on names
//! matches when either end (or the Service, or the peer node) has it.

use anyhow::{Result, bail};
use clap::{Args, ValueEnum};
use glob::Pattern;

use crate::api::{Encap, EndpointView, FlowView, Protocol};

#[derive(Args, Debug, Clone, Default)]
pub struct FilterArgs {
    /// Flows from or to a pod in this namespace (or to a Service in it).
    #[arg(long, value_name = "NAMESPACE")]
    pub namespace: Option<String>,
    /// Flows from or to this pod: NAME or NAMESPACE/NAME.
    #[arg(long, value_name = "[NAMESPACE/]POD")]
    pub pod: Option<String>,
    /// Flows from or to a pod of this workload (Deployment, StatefulSet, ...):
    /// NAME or NAMESPACE/NAME.
    #[arg(long, value_name = "[NAMESPACE/]WORKLOAD")]
    pub workload: Option<String>,
    /// Flows to this Service (its VIP or one of its endpoints): NAME or
    /// NAMESPACE/NAME.
    #[arg(long, value_name = "[NAMESPACE/]SERVICE")]
    pub service: Option<String>,
    /// Flows from or to this node (either end, or the tunnel's peer node).
    #[arg(long, value_name = "NODE")]
    pub node: Option<String>,
    /// tcp, udp, icmp, icmpv6 or an IP protocol number (0-255).
    #[arg(long, value_name = "PROTOCOL", value_parser = parse_protocol)]
    pub protocol: Option<Protocol>,
    /// Flows with this source or destination port.
    #[arg(long, value_name = "PORT")]
    pub port: Option<u16>,
    /// Encapsulation of the flow.
    #[arg(long, value_enum)]
    pub encap: Option<EncapFilter>,
    /// Interface name, or a glob such as 'cali*'.
    #[arg(long, value_name = "NAME|GLOB", value_parser = parse_interface)]
    pub interface: Option<Pattern>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum EncapFilter {
    None,
    Ipip,
    Vxlan,
    Wireguard,
}

impl From<EncapFilter> for Encap {
    fn from(e: EncapFilter) -> Self {
        match e {
            EncapFilter::None => Encap::None,
            EncapFilter::Ipip => Encap::Ipip,
            EncapFilter::Vxlan => Encap::Vxlan,
            EncapFilter::Wireguard => Encap::Wireguard,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Default)]
pub enum SortBy {
    /// Most bytes first.
    #[default]
    Bytes,
    /// Most packets first.
    Packets,
    /// Highest byte rate first (needs two samples: --watch, or one
    /// --interval apart).
    Rate,
}

/// `tcp`, `udp`, `icmp`, `icmpv6` (any case) or a number.
pub fn parse_protocol(s: &str) -> Result<Protocol, String> {
    s.trim().to_ascii_lowercase().parse().map_err(|_| {
        format!("unknown protocol {s:?}: use tcp, udp, icmp, icmpv6 or an IP protocol number 0-255")
    })
}

fn parse_interface(s: &str) -> Result<Pattern, String> {
    Pattern::new(s).map_err(|e| {
        format!("bad interface pattern {s:?}: {e} (give a name, or a glob such as 'cali*')")
    })
}

/// `ns/name` or `name`, split.
fn qualified(s: &str) -> Result<(Option<&str>, &str)> {
    match s.split_once('/') {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
            Ok((Some(ns), name))
        }
        Some(_) => bail!("{s:?}: give NAME or NAMESPACE/NAME"),
        None if s.is_empty() => bail!("an empty name matches nothing"),
        None => Ok((None, s)),
    }
}

impl FilterArgs {
    /// Checks what clap cannot (NAMESPACE/NAME forms); errors say what is allowed.
    pub fn validate(&self) -> Result<()> {
        for (flag, v) in [
            ("--pod", &self.pod),
            ("--workload", &self.workload),
            ("--service", &self.service),
        ] {
            if let Some(v) = v {
                qualified(v).map_err(|e| anyhow::anyhow!("{flag} {e}"))?;
            }
        }
        for (flag, v) in [("--namespace", &self.namespace), ("--node", &self.node)] {
            if v.as_deref()
                .is_some_and(|v| v.is_empty() || v.contains('/'))
            {
                bail!("{flag} takes a plain name (no '/')");
            }
        }
        Ok(())
    }

    /// Whether the flow passes every filter given.
    pub fn matches(&self, f: &FlowView) -> bool {
        let ends = [f.src.as_ref(), f.dst.as_ref()];
        let either = |pred: &dyn Fn(&EndpointView) -> bool| ends.iter().flatten().any(|e| pred(e));
        if let Some(ns) = &self.namespace {
            let svc = f.service.as_ref().is_some_and(|s| &s.namespace == ns);
            if !svc && !either(&|e| e.namespace.as_ref() == Some(ns)) {
                return false;
            }
        }
        if let Some(pod) = &self.pod {
            let (ns, name) = qualified(pod).unwrap_or((None, pod));
            if !either(&|e| {
                e.pod.as_deref() == Some(name)
                    && ns.is_none_or(|n| e.namespace.as_deref() == Some(n))
            }) {
                return false;
            }
        }
        if let Some(w) = &self.workload {
            let (ns, name) = qualified(w).unwrap_or((None, w));
            if !either(&|e| {
                e.workload.as_deref() == Some(name)
                    && ns.is_none_or(|n| e.namespace.as_deref() == Some(n))
            }) {
                return false;
            }
        }
        if let Some(s) = &self.service {
            let (ns, name) = qualified(s).unwrap_or((None, s));
            if !f
                .service
                .as_ref()
                .is_some_and(|r| r.name == name && ns.is_none_or(|n| r.namespace == n))
            {
                return false;
            }
        }
        if let Some(node) = &self.node
            && f.peer_node.as_ref() != Some(node)
            && !either(&|e| e.node.as_ref() == Some(node))
        {
            return false;
        }
        if let Some(p) = self.protocol
            && f.protocol != p
        {
            return false;
        }
        if let Some(p) = self.port
            && f.src_port != p
            && f.dst_port != p
        {
            return false;
        }
        if let Some(e) = self.encap
            && f.encap != Encap::from(e)
        {
            return false;
        }
        if let Some(i) = &self.interface
            && !i.matches(&f.interface)
        {
            return false;
        }
        true
    }

    /// Whether any filter is given.
    pub fn any(&self) -> bool {
        self.namespace.is_some()
            || self.pod.is_some()
            || self.workload.is_some()
            || self.service.is_some()
            || self.node.is_some()
            || self.protocol.is_some()
            || self.port.is_some()
            || self.encap.is_some()
            || self.interface.is_some()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::api::{ServiceRef, Via};
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        f: FilterArgs,
    }

    fn args(a: &[&str]) -> Result<FilterArgs, clap::Error> {
        let mut v = vec!["t"];
        v.extend_from_slice(a);
        T::try_parse_from(v).map(|t| t.f)
    }

    fn ep(ns: &str, pod: &str, workload: &str, node: &str) -> EndpointView {
        EndpointView {
            kind: crate::api::EndpointKind::Pod,
            namespace: Some(ns.into()),
            pod: Some(pod.into()),
            workload: Some(workload.into()),
            workload_kind: Some("Deployment".into()),
            node: Some(node.into()),
        }
    }

    /// A flow with the given fields, 10 packets and 1000 bytes; built from
    /// JSON so that fields added to FlowView later keep their defaults.
    pub(crate) fn flow(iface: &str, proto: &str, sport: u16, dport: u16, encap: &str) -> FlowView {
        serde_json::from_value(serde_json::json!({
            "interface": iface,
            "ifindex": 7,
            "direction": "egress",
            "src_ip": "10.244.0.2",
            "dst_ip": "10.244.0.66",
            "src_port": sport,
            "dst_port": dport,
            "protocol": proto,
            "encap": encap,
            "packets": 10,
            "bytes": 1000,
            "skbs": 10,
            "overhead_bytes": 0,
            "first_seen": "",
            "last_seen": "",
        }))
        .expect("a FlowView")
    }

    fn named() -> FlowView {
        let mut f = flow("vxlan.calico", "udp", 40000, 53, "vxlan");
        f.src = Some(ep("default", "web-0", "web", "node1"));
        f.dst = Some(ep("kube-system", "dns-1", "dns", "node2"));
        f.peer_node = Some("node2".into());
        f.service = Some(ServiceRef {
            namespace: "kube-system".into(),
            name: "kube-dns".into(),
            port: "dns".into(),
            via: Via::Endpoint,
            ..Default::default()
        });
        f
    }

    fn m(a: &[&str], f: &FlowView) -> bool {
        let a = args(a).expect("parse");
        a.validate().expect("valid");
        a.matches(f)
    }

    #[test]
    fn no_filter_matches_all() {
        assert!(m(&[], &named()));
        assert!(!args(&[]).unwrap().any());
    }

    #[test]
    fn names_match_either_end() {
        let f = named();
        assert!(m(&["--namespace", "default"], &f));
        assert!(m(&["--namespace", "kube-system"], &f));
        assert!(!m(&["--namespace", "prod"], &f));
        assert!(m(&["--pod", "web-0"], &f));
        assert!(m(&["--pod", "kube-system/dns-1"], &f));
        assert!(!m(&["--pod", "default/dns-1"], &f));
        assert!(m(&["--workload", "dns"], &f));
        assert!(m(&["--workload", "default/web"], &f));
        assert!(!m(&["--workload", "kube-system/web"], &f));
        assert!(m(&["--node", "node1"], &f));
        assert!(m(&["--node", "node2"], &f));
        assert!(!m(&["--node", "node3"], &f));
        // Unnamed flows match no name filter.
        assert!(!m(
            &["--namespace", "default"],
            &flow("cali1", "udp", 1, 2, "none")
        ));
    }

    #[test]
    fn node_matches_peer() {
        let mut f = flow("vxlan.calico", "tcp", 1, 2, "vxlan");
        f.peer_node = Some("node3".into());
        assert!(m(&["--node", "node3"], &f));
    }

    #[test]
    fn service_by_name_or_qualified() {
        let f = named();
        assert!(m(&["--service", "kube-dns"], &f));
        assert!(m(&["--service", "kube-system/kube-dns"], &f));
        assert!(!m(&["--service", "default/kube-dns"], &f));
        assert!(!m(&["--service", "web"], &f));
        assert!(!m(
            &["--service", "kube-dns"],
            &flow("c", "udp", 1, 53, "none")
        ));
    }

    #[test]
    fn protocol_port_encap_interface() {
        let f = named();
        assert!(m(&["--protocol", "udp"], &f));
        assert!(m(&["--protocol", "UDP"], &f));
        assert!(m(&["--protocol", "17"], &f));
        assert!(!m(&["--protocol", "tcp"], &f));
        assert!(m(&["--protocol", "132"], &flow("c", "132", 0, 0, "none")));
        assert!(m(
            &["--protocol", "icmpv6"],
            &flow("c", "icmpv6", 0, 0, "none")
        ));
        assert!(m(&["--port", "53"], &f));
        assert!(m(&["--port", "40000"], &f));
        assert!(!m(&["--port", "80"], &f));
        assert!(m(&["--encap", "vxlan"], &f));
        assert!(!m(&["--encap", "none"], &f));
        assert!(m(&["--interface", "vxlan.calico"], &f));
        assert!(m(&["--interface", "vxlan*"], &f));
        assert!(!m(&["--interface", "cali*"], &f));
        // All together: AND.
        assert!(m(
            &[
                "--protocol",
                "udp",
                "--port",
                "53",
                "--namespace",
                "default",
                "--encap",
                "vxlan"
            ],
            &f
        ));
        assert!(!m(&["--protocol", "udp", "--port", "54"], &f));
    }

    #[test]
    fn bad_values_say_what_is_allowed() {
        let e = args(&["--protocol", "sctpx"]).err().unwrap().to_string();
        assert!(e.contains("tcp, udp, icmp, icmpv6"), "{e}");
        let e = args(&["--protocol", "300"]).err().unwrap().to_string();
        assert!(e.contains("0-255"), "{e}");
        let e = args(&["--encap", "gre"]).err().unwrap().to_string();
        assert!(e.contains("none") && e.contains("wireguard"), "{e}");
        let e = args(&["--port", "http"]).err().unwrap().to_string();
        assert!(e.contains("--port"), "{e}");
        let e = args(&["--interface", "cali["]).err().unwrap().to_string();
        assert!(e.contains("glob"), "{e}");
        let e = args(&["--pod", "a/b/c"])
            .unwrap()
            .validate()
            .unwrap_err()
            .to_string();
        assert!(e.contains("NAMESPACE/NAME"), "{e}");
        let e = args(&["--namespace", "a/b"])
            .unwrap()
            .validate()
            .unwrap_err()
            .to_string();
        assert!(e.contains("plain name"), "{e}");
    }
}
