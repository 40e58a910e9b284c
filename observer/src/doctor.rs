//! `observer doctor`: the checks an operator would otherwise make by hand
//! with `ip route`, `ip link`, `bpftool`, `calicoctl node status` and
//! `ipvsadm -Ln`, each with its evidence and a hint. Run by the daemon
//! (`/v1/doctor`), which has everything at hand; routes, links and our
//! programs on them are asked of the kernel at the moment it runs.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use crate::{
    api::{Check, Verdict},
    datapath::{attach::Via, links::LinkInfoView},
    flows::InterfaceKind,
    model::Model,
    sources::routes::RouteTable,
    state::State,
};

impl Check {
    fn new(name: &str, problems: Vec<String>, looked_at: String, hint: &str, bad: Verdict) -> Self {
        if problems.is_empty() {
            Self {
                name: name.into(),
                verdict: Verdict::Ok,
                summary: looked_at,
                evidence: Vec::new(),
                hint: None,
            }
        } else {
            Self {
                name: name.into(),
                verdict: bad,
                summary: format!("{} problem(s)", problems.len()),
                evidence: problems,
                hint: Some(hint.into()),
            }
        }
    }

    fn skip(name: &str, why: &str) -> Self {
        Self {
            name: name.into(),
            verdict: Verdict::Skip,
            summary: why.into(),
            evidence: Vec::new(),
            hint: None,
        }
    }
}

/// Runs every check: the daemon's state beside what the kernel says now.
pub async fn run(state: &crate::state::Shared) -> Vec<Check> {
    // Asked of the kernel without holding the state, so that polls go on
    // meanwhile.
    let (attached, ours) = {
        let st = state.read().await;
        let attached: Vec<(u32, String, Via)> = st
            .interfaces
            .iter()
            .filter(|(_, i)| i.iface.kind == InterfaceKind::Pod && !i.gone)
            .filter_map(|(ix, i)| Some((*ix, i.iface.name.clone(), i.via?)))
            .collect();
        (attached, st.status.program_ids.clone())
    };
    let (hooks, routes, links) = tokio::join!(
        hooks(attached, ours),
        crate::sources::routes::dump(),
        crate::datapath::links::dump()
    );
    let st = state.read().await;
    let kernel = Kernel::new(&st, routes, links, hooks);
    checks(&st, &kernel)
}

/// Whether our programs are on each interface, as the kernel lists them:
/// the very programs we loaded (`ours`, by id), not any of the same name.
async fn hooks(attached: Vec<(u32, String, Via)>, ours: Vec<u32>) -> Hooks {
    let mut kernel = Hooks::new();
    for (ifindex, name, via) in attached {
        let found = match via {
            Via::Clsact => clsact_present(ifindex, &ours).await,
            Via::Tcx => {
                let ours = ours.clone();
                tokio::task::spawn_blocking(move || tcx_present(&name, &ours))
                    .await
                    .unwrap_or_else(|e| Err(e.to_string()))
            }
        };
        kernel.insert(ifindex, (via, found));
    }
    kernel
}

/// Whether one of `ours` is among the cls_bpf filters at our priority on
/// the clsact (ingress, egress) hooks.
async fn clsact_present(ifindex: u32, ours: &[u32]) -> Result<(bool, bool), String> {
    use crate::datapath::attach::our_filters;
    let on = |filters: Vec<crate::datapath::attach::OurFilter>| {
        filters
            .iter()
            .any(|f| f.program_id.is_some_and(|id| ours.contains(&id)))
    };
    let ingress = our_filters(ifindex, false)
        .await
        .map_err(|e| format!("{e:#}"))?;
    let egress = our_filters(ifindex, true)
        .await
        .map_err(|e| format!("{e:#}"))?;
    Ok((on(ingress), on(egress)))
}

/// How we attached to an interface, and whether the kernel has our program
/// on (ingress, egress), or why it could not tell.
type Found = (Via, Result<(bool, bool), String>);

/// [`Found`] per interface.
type Hooks = std::collections::HashMap<u32, Found>;

/// What the kernel says at the moment the doctor runs: a route deleted a
/// moment ago is missing here even before the daemon's next poll.
struct Kernel {
    routes: RouteTable,
    /// Links by ifindex.
    links: BTreeMap<u32, LinkInfoView>,
    hooks: Hooks,
    /// Why routes or links are the daemon's last view instead.
    unread: Vec<String>,
}

impl Kernel {
    fn new(
        st: &State,
        routes: anyhow::Result<RouteTable>,
        links: anyhow::Result<Vec<LinkInfoView>>,
        hooks: Hooks,
    ) -> Self {
        let mut unread = Vec::new();
        let routes = routes.unwrap_or_else(|e| {
            unread.push(format!("routes: {e:#}"));
            st.model.routes().clone()
        });
        let links = match links {
            Ok(links) => links.into_iter().map(|l| (l.index, l)).collect(),
            Err(e) => {
                unread.push(format!("links: {e:#}"));
                remembered_links(st)
            }
        };
        Self {
            routes,
            links,
            hooks,
            unread,
        }
    }

    fn link_named(&self, name: &str) -> Option<&LinkInfoView> {
        self.links.values().find(|l| l.name == name)
    }

    fn link_name(&self, ifindex: u32) -> String {
        self.links
            .get(&ifindex)
            .map_or_else(|| format!("ifindex {ifindex}"), |l| l.name.clone())
    }
}

/// The links as the daemon last heard of them, when the kernel cannot be
/// asked.
fn remembered_links(st: &State) -> BTreeMap<u32, LinkInfoView> {
    st.interfaces
        .iter()
        .filter(|(_, i)| !i.gone)
        .map(|(ix, i)| {
            let link = LinkInfoView {
                index: *ix,
                name: i.iface.name.clone(),
                layer: i.layer,
                tunnel: None,
                mtu: i.mtu,
            };
            (*ix, link)
        })
        .collect()
}

fn checks(st: &State, kernel: &Kernel) -> Vec<Check> {
    let m = &st.model;
    let mut checks = vec![
        pod_routes_and_interfaces(st, m, kernel),
        interfaces_belong_to_pods(st, m, kernel),
        remote_block_routes(m, kernel),
        bgp_peers(m),
        mtus(st, m, kernel),
        ipvs_backends(m),
        datapath_counters(st),
        name_sources(m),
    ];
    if !kernel.unread.is_empty() {
        checks.push(Check::new(
            "kernel-view",
            kernel.unread.clone(),
            String::new(),
            "the checks of routes and links used the daemon's last view, not the kernel's: \
             see the daemon's log",
            Verdict::Warn,
        ));
    }
    checks
}

/// This node's pods that have their network: an address (pending pods
/// have none yet).
fn local_pods(st: &State, m: &Model) -> Vec<crate::model::PodEntry> {
    let local = m.local_node();
    m.pods()
        .iter()
        .filter(|p| !p.ips.is_empty())
        .filter(|p| match local {
            Some(n) => p.node.as_deref() == Some(n),
            None => st.interfaces.values().any(|i| i.iface.name == p.interface),
        })
        .cloned()
        .collect()
}

/// Every local pod has its `/32` (`/128`) route to its interface, and the
/// interface is there with our programs on it (all asked of the kernel).
fn pod_routes_and_interfaces(st: &State, m: &Model, kernel: &Kernel) -> Check {
    let pods = local_pods(st, m);
    if pods.is_empty() {
        return Check::skip(
            "pod-routes-and-interfaces",
            "no local pods known (no API objects or --node-name)",
        );
    }
    let mut problems = Vec::new();
    for p in &pods {
        let name = format!("{}/{}", p.namespace, p.name);
        let Some(link) = kernel.link_named(&p.interface) else {
            problems.push(format!("{name}: interface {} does not exist", p.interface));
            continue;
        };
        let ifindex = link.index;
        for ip in &p.ips {
            match kernel.routes.local_endpoints.get(ip) {
                Some(idx) if *idx == ifindex => {}
                Some(idx) => problems.push(format!(
                    "{name}: the route to {ip} goes to ifindex {idx}, not {} ({ifindex})",
                    p.interface
                )),
                None => problems.push(format!(
                    "{name}: no route to {ip} dev {} (Felix programs one per pod IP)",
                    p.interface
                )),
            }
        }
        let attach_error = st
            .interfaces
            .get(&ifindex)
            .and_then(|i| i.attach_error.as_ref());
        if let Some(problem) = attachment_problem(attach_error, kernel.hooks.get(&ifindex)) {
            problems.push(format!("{name}: {}: {problem}", p.interface));
        }
    }
    Check::new(
        "pod-routes-and-interfaces",
        problems,
        format!("{} local pods: routes and attached interfaces", pods.len()),
        "missing routes: check calico-node/Felix on this node (`ip route | grep cali`); \
         detached programs: restart the observer pod",
        Verdict::Fail,
    )
}

/// What is wrong with our programs on an interface, if anything.
fn attachment_problem(attach_error: Option<&String>, kernel: Option<&Found>) -> Option<String> {
    let hooks = |ingress: bool, egress: bool| match (ingress, egress) {
        (false, false) => "ingress and egress",
        (false, true) => "ingress",
        _ => "egress",
    };
    match (attach_error, kernel) {
        (Some(e), _) => Some(format!("not attached: {e}")),
        (None, None) => Some("not attached".into()),
        (None, Some((_, Err(e)))) => Some(format!("cannot ask the kernel: {e}")),
        (None, Some((via, Ok((ingress, egress))))) if !(*ingress && *egress) => {
            let what = match via {
                Via::Tcx => "program is not on TCX",
                Via::Clsact => "filter is not on clsact",
            };
            Some(format!(
                "our {what} {} (the kernel says)",
                hooks(*ingress, *egress)
            ))
        }
        (None, Some(_)) => None,
    }
}

/// Whether our TCX programs are on an interface's (ingress, egress), as
/// the kernel lists them.
fn tcx_present(interface: &str, ours: &[u32]) -> Result<(bool, bool), String> {
    use aya::programs::{SchedClassifier, tc::TcAttachType};
    let on = |t: TcAttachType| -> Result<bool, String> {
        let (_, programs) = SchedClassifier::query_tcx(interface, t).map_err(|e| e.to_string())?;
        Ok(programs.iter().any(|p| ours.contains(&p.id())))
    };
    Ok((on(TcAttachType::Ingress)?, on(TcAttachType::Egress)?))
}

/// Every `cali*` interface belongs to a pod we know.
fn interfaces_belong_to_pods(st: &State, m: &Model, kernel: &Kernel) -> Check {
    if m.pods().is_empty() {
        return Check::skip(
            "interfaces-belong-to-pods",
            "no pod objects to compare with",
        );
    }
    // Pod interfaces by the daemon's patterns, that the kernel still has.
    let pod_ifaces: Vec<&str> = st
        .interfaces
        .iter()
        .filter(|(_, i)| i.iface.kind == InterfaceKind::Pod)
        .filter_map(|(ix, _)| kernel.links.get(ix))
        .map(|l| l.name.as_str())
        .collect();
    let problems = pod_ifaces
        .iter()
        .filter(|n| m.pod_of_interface(n).is_none())
        .map(|n| format!("{n} belongs to no known pod (a leftover of a deleted pod?)"))
        .collect();
    Check::new(
        "interfaces-belong-to-pods",
        problems,
        format!("{} pod interfaces, each a known pod's", pod_ifaces.len()),
        "a leftover veth: find its pod with `calicoctl get workloadendpoints -o wide`; \
         delete it if none",
        Verdict::Warn,
    )
}

/// Every remote block has a route over the device its pool's
/// encapsulation mode asks for.
fn remote_block_routes(m: &Model, kernel: &Kernel) -> Check {
    let calico = m.calico();
    let local = m.local_node();
    let routes = &kernel.routes;
    let remote: Vec<_> = calico
        .blocks
        .iter()
        .filter(|b| b.node.is_some() && b.node.as_deref() != local)
        // Ours by the blackhole route, even when our name is not known.
        .filter(|b| !routes.local_blocks.contains_key(&b.cidr))
        .collect();
    if remote.is_empty() {
        return Check::skip(
            "remote-block-routes",
            "no remote blocks known (no BlockAffinities)",
        );
    }
    let mut problems = Vec::new();
    for b in &remote {
        let node = b.node.as_deref().unwrap_or("?");
        let expected = m.expected_encap_to(b.cidr.network());
        let Some(route) = routes.remote_blocks.get(&b.cidr) else {
            problems.push(format!("{} of {node}: no route", b.cidr));
            continue;
        };
        let device = kernel.link_name(route.ifindex);
        let on = observer_common::Encap::from_device(&device);
        let fits = match expected {
            Some(observer_common::Encap::None) => on.is_none(),
            Some(want) => on == Some(want),
            None => true,
        };
        if !fits {
            problems.push(format!(
                "{} of {node}: routed via {device} (proto {}), but its pool wants {}",
                b.cidr,
                route.protocol,
                expected.map_or("?", observer_common::Encap::name)
            ));
        }
    }
    Check::new(
        "remote-block-routes",
        problems,
        format!("{} remote blocks routed as their pools say", remote.len()),
        "compare `ip route` with `calicoctl get ippool -o wide`; BGP routes come from BIRD \
         (`observer node`), VXLAN routes from Felix",
        Verdict::Fail,
    )
}

/// Every BGP peer BIRD has is Established.
fn bgp_peers(m: &Model) -> Check {
    let running: Vec<_> = m.calico().bgp.iter().filter(|b| b.running).collect();
    if running.is_empty() {
        return Check::skip("bgp-peers", "BIRD is not running here (no BGP)");
    }
    let mut problems = Vec::new();
    let mut peers = 0;
    for b in &running {
        for p in &b.peers {
            peers += 1;
            if p.bgp_state != "Established" {
                problems.push(format!(
                    "{} {} ({}): {} {} since {}",
                    b.family, p.address, p.peer_type, p.state, p.info, p.since
                ));
            }
        }
    }
    Check::new(
        "bgp-peers",
        problems,
        format!("{peers} BGP peers Established"),
        "a peer not Established: is calico-node running on that node, and is TCP 179 open \
         between the nodes?",
        Verdict::Fail,
    )
}

/// Tunnel MTUs fit the underlay minus their overhead; pod interfaces and
/// the CNI config fit the tunnel.
fn mtus(st: &State, m: &Model, kernel: &Kernel) -> Check {
    // The daemon's interfaces as the kernel has them now: (ifindex, kind,
    // name, MTU).
    let live: Vec<(u32, InterfaceKind, &str, Option<u32>)> = st
        .interfaces
        .iter()
        .filter_map(|(ix, i)| {
            let link = kernel.links.get(ix)?;
            Some((*ix, i.iface.kind, link.name.as_str(), link.mtu))
        })
        .collect();
    let underlay = live
        .iter()
        .filter(|l| l.1 == InterfaceKind::Underlay)
        .filter_map(|l| l.3)
        .min();
    let tunnels: Vec<(&str, u32)> = live
        .iter()
        .filter(|l| matches!(l.1, InterfaceKind::Tunnel(_)))
        .filter_map(|l| Some((l.2, l.3?)))
        .collect();
    let mut problems = Vec::new();
    if let Some(u) = underlay {
        for (name, mtu) in &tunnels {
            let headers = observer_common::Encap::device_overhead(name);
            let fits = u.saturating_sub(headers);
            if *mtu > fits {
                problems.push(format!(
                    "{name} MTU {mtu} > underlay {u} - {headers} bytes of headers = {fits}"
                ));
            }
        }
    }
    // What a pod may send: the smallest MTU of the tunnels that carry
    // routes to other nodes (either family: the veth's MTU serves both),
    // else the underlay's.
    let routed: BTreeSet<u32> = kernel
        .routes
        .remote_blocks
        .values()
        .map(|r| r.ifindex)
        .collect();
    let limit = live
        .iter()
        .filter(|l| routed.contains(&l.0) && matches!(l.1, InterfaceKind::Tunnel(_)))
        .filter_map(|l| l.3)
        .min()
        .or(underlay);
    if let Some(limit) = limit {
        for (_, _, name, mtu) in live.iter().filter(|l| l.1 == InterfaceKind::Pod) {
            if let Some(mtu) = mtu.filter(|mtu| *mtu > limit) {
                let pod = m
                    .pod_of_interface(name)
                    .map(|p| format!(" ({}/{})", p.namespace, p.name))
                    .unwrap_or_default();
                problems.push(format!(
                    "{name}{pod} MTU {mtu} > {limit} that the tunnel carries"
                ));
            }
        }
        if let Some(cni) = &m.calico().cni {
            for c in cni.configs.iter().filter(|c| c.in_use) {
                for p in &c.plugins {
                    if let Some(mtu) = p.mtu.filter(|mtu| *mtu > limit) {
                        problems.push(format!(
                            "{}: {} plugin mtu {mtu} > {limit} that the tunnel carries",
                            c.file, p.kind
                        ));
                    }
                }
            }
        }
    }
    if underlay.is_none() && limit.is_none() {
        return Check::skip(
            "mtu",
            "no tunnel or watched underlay device to compare with",
        );
    }
    Check::new(
        "mtu",
        problems,
        format!(
            "tunnel MTUs: {}; underlay MTU: {}",
            if tunnels.is_empty() {
                "none".to_owned()
            } else {
                let each: Vec<String> = tunnels.iter().map(|(n, m)| format!("{n} {m}")).collect();
                each.join(", ")
            },
            underlay.map_or("not watched".into(), |u| u.to_string())
        ),
        "set Calico's MTU (FelixConfiguration mtu / the CNI config's mtu) to the underlay MTU \
         minus the encapsulation overhead; recreate pods to apply it",
        Verdict::Fail,
    )
}

/// kube-proxy's IPVS destinations are the Service's ready endpoints.
fn ipvs_backends(m: &Model) -> Check {
    if m.ipvs().is_empty() {
        return Check::skip(
            "ipvs-backends",
            "no IPVS virtual services (kube-proxy not in IPVS mode, or no IPVS here)",
        );
    }
    let mut problems = Vec::new();
    let mut compared = 0;
    for sp in m.services() {
        for vip in &sp.vips {
            let Some(v) = m.ipvs().iter().find(|v| {
                v.protocol == sp.protocol
                    && v.address
                        .is_some_and(|a| a.ip() == *vip && a.port() == sp.port)
            }) else {
                continue;
            };
            compared += 1;
            // With internalTrafficPolicy Local, kube-proxy programs only
            // this node's endpoints.
            let ready: BTreeSet<(IpAddr, u16)> = sp
                .backends
                .iter()
                .filter(|b| b.ready)
                // kube-proxy runs a proxier per address family: a VIP's
                // virtual service holds only endpoints of its family.
                .filter(|b| b.ip.is_ipv6() == vip.is_ipv6())
                .filter(|b| !sp.node_local || b.node.as_deref() == m.local_node())
                .map(|b| (b.ip, b.port))
                .collect();
            let ipvs: BTreeSet<(IpAddr, u16)> = v
                .destinations
                .iter()
                .filter(|d| d.weight > 0)
                .map(|d| (d.address.ip(), d.address.port()))
                .collect();
            for (ip, port) in ipvs.difference(&ready) {
                problems.push(format!(
                    "{}/{} {vip}:{}: IPVS sends to {ip}:{port}, not a ready endpoint",
                    sp.namespace, sp.name, sp.port
                ));
            }
            for (ip, port) in ready.difference(&ipvs) {
                problems.push(format!(
                    "{}/{} {vip}:{}: ready endpoint {ip}:{port} missing from IPVS",
                    sp.namespace, sp.name, sp.port
                ));
            }
        }
    }
    Check::new(
        "ipvs-backends",
        problems,
        format!("{compared} IPVS virtual services match their EndpointSlices"),
        "kube-proxy is behind: check its logs and `ipvsadm -Ln`",
        Verdict::Fail,
    )
}

/// Every source of names decodes. One that does not keeps its last good
/// state, which goes stale while the file stays wrong.
fn name_sources(m: &Model) -> Check {
    let problems = m
        .source_errors()
        .iter()
        .map(|e| format!("{}: {}", e.source, e.error))
        .collect();
    Check::new(
        "name-sources",
        problems,
        "every source of names decodes".into(),
        "fix or remove the file named: until it decodes, the names read before it broke are \
         kept and new pods stay unnamed",
        Verdict::Fail,
    )
}

/// Flow-map insert failures and unparsed packets rising.
fn datapath_counters(st: &State) -> Check {
    use observer_common::Stat;
    let h = &st.status.stats_history;
    let (Some((t0, first)), Some((t1, last))) = (h.front(), h.back()) else {
        return Check::skip("datapath-counters", "not polled yet");
    };
    let secs = t1.duration_since(*t0).as_secs();
    let window = match secs {
        0 => "since the first poll".to_owned(),
        s => format!("in the last {s} s"),
    };
    let mut problems = Vec::new();
    for (stat, why) in [
        (
            Stat::FlowInsertFailures,
            "packets counted without a flow because the flow map was full: they are in the \
             pods' and interfaces' totals, not in any flow; raise --flow-capacity",
        ),
        (Stat::Unparsed, "packets the classifier cannot parse"),
    ] {
        let grew = last[stat as usize].saturating_sub(first[stat as usize]);
        if grew > 0 {
            problems.push(format!("{}: +{grew} {window} ({why})", stat.name()));
        }
    }
    Check::new(
        "datapath-counters",
        problems,
        format!("no insert failures or unparsed packets {window}"),
        "a full flow map loses flow detail (not counts): raise --flow-capacity; unparsed \
         packets: capture some with tcpdump and run `observer replay` on them",
        Verdict::Warn,
    )
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde_json::json;

    use super::*;
    use crate::sources::{
        ipvs::{IpvsDest, IpvsService},
        objects::ClusterObjects,
        routes::RouteTable,
    };

    /// Service shop/web (10.96.0.10:80) with ready endpoints on node1 and
    /// node2 (and an IPv6 one, of the other family's slice), as node1 sees
    /// it, and an IPVS table sending to `dests`.
    fn model(policy: &str, dests: &[&str]) -> Model {
        let mut o = ClusterObjects::default();
        o.add_value(json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "web", "namespace": "shop"},
            "spec": {"clusterIP": "10.96.0.10", "internalTrafficPolicy": policy,
                     "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}}))
            .unwrap();
        o.add_value(
            json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "web-x", "namespace": "shop",
                         "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": [
                {"addresses": ["10.244.0.5"], "conditions": {"ready": true}, "nodeName": "node1"},
                {"addresses": ["10.244.0.70"], "conditions": {"ready": true}, "nodeName": "node2"},
                {"addresses": ["10.244.0.71"], "conditions": {"ready": false}, "nodeName": "node2"}
            ]}),
        )
        .unwrap();
        // Dual-stack: the IPv6 slice of the same Service, which the IPv4
        // VIP's virtual service does not hold.
        o.add_value(
            json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "web-y", "namespace": "shop",
                         "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv6",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": [
                {"addresses": ["fd00:10:244::5"], "conditions": {"ready": true}, "nodeName": "node1"}
            ]}),
        )
        .unwrap();
        let mut m = Model::build(
            &o,
            Arc::new(RouteTable::default()),
            "cali",
            Some("node1".into()),
        );
        m.set_ipvs(vec![IpvsService {
            protocol: 6,
            address: Some("10.96.0.10:80".parse().unwrap()),
            fwmark: None,
            scheduler: "rr".into(),
            destinations: dests
                .iter()
                .map(|d| IpvsDest {
                    address: d.parse().unwrap(),
                    forward: "Masq".into(),
                    weight: 1,
                    active_conns: 0,
                    inactive_conns: 0,
                    stats: None,
                })
                .collect(),
            stats: None,
        }]);
        m
    }

    #[test]
    fn ipvs_destinations_must_be_the_ready_endpoints() {
        let ok = ipvs_backends(&model("Cluster", &["10.244.0.5:8080", "10.244.0.70:8080"]));
        assert_eq!(ok.verdict, Verdict::Ok, "{ok:?}");

        // kube-proxy behind: one endpoint missing, a not-ready one kept.
        let behind = ipvs_backends(&model("Cluster", &["10.244.0.5:8080", "10.244.0.71:8080"]));
        assert_eq!(behind.verdict, Verdict::Fail);
        assert_eq!(
            behind.evidence,
            [
                "shop/web 10.96.0.10:80: IPVS sends to 10.244.0.71:8080, not a ready endpoint",
                "shop/web 10.96.0.10:80: ready endpoint 10.244.0.70:8080 missing from IPVS",
            ]
        );

        // internalTrafficPolicy Local: only this node's endpoint belongs.
        let local = ipvs_backends(&model("Local", &["10.244.0.5:8080"]));
        assert_eq!(local.verdict, Verdict::Ok, "{local:?}");
    }

    #[test]
    fn no_ipvs_is_a_skip_not_a_pass() {
        let mut m = model("Cluster", &[]);
        m.set_ipvs(Vec::new());
        assert_eq!(ipvs_backends(&m).verdict, Verdict::Skip);
    }
}
