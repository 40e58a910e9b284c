//! IPVS in the joined view: kube-proxy's virtual services by VIP, and
//! where the connections to a VIP went (the real server IPVS chose, from
//! `/proc/net/ip_vs_conn`; conntrack's DNAT for nftables/iptables modes).

use std::{
    collections::{HashMap, HashSet},
    net::{IpAddr, SocketAddr},
    sync::Mutex,
};

use crate::sources::{
    conntrack::{self, Tuple},
    ipvs::{self, IpvsConn, IpvsService},
};

/// The IPVS table, indexed by VIP.
#[derive(Default)]
pub struct IpvsTable {
    services: Vec<IpvsService>,
    by_vip: HashMap<(IpAddr, u16, u8), usize>,
    vips: HashSet<IpAddr>,
}

impl IpvsTable {
    pub fn new(services: Vec<IpvsService>) -> Self {
        let mut t = IpvsTable::default();
        for (i, s) in services.iter().enumerate() {
            if let Some(a) = s.address {
                t.by_vip.insert((a.ip(), a.port(), s.protocol), i);
                t.vips.insert(a.ip());
            }
        }
        t.services = services;
        t
    }

    pub fn services(&self) -> &[IpvsService] {
        &self.services
    }

    pub fn at(&self, vip: IpAddr, port: u16, protocol: u8) -> Option<&IpvsService> {
        self.by_vip
            .get(&(vip, port, protocol))
            .map(|i| &self.services[*i])
    }

    pub fn is_vip(&self, ip: IpAddr) -> bool {
        self.vips.contains(&ip)
    }
}

/// A virtual service as `ipvsadm -Ln` heads it: `TCP 10.96.0.10:80`,
/// `FWM 1`.
pub fn name(vs: &IpvsService) -> String {
    match (vs.address, vs.fwmark) {
        (Some(a), _) => format!("{} {a}", protocol(vs.protocol)),
        (None, mark) => format!("FWM {}", mark.unwrap_or_default()),
    }
}

pub fn protocol(number: u8) -> String {
    match number {
        6 => "TCP".into(),
        17 => "UDP".into(),
        132 => "SCTP".into(),
        n => n.to_string(),
    }
}

/// Where a connection to a VIP went, and who said so.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Chosen {
    pub backend: SocketAddr,
    pub source: Source,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// IPVS's connection table.
    Ipvs,
    /// Conntrack's DNAT (kube-proxy's nftables or iptables mode).
    Conntrack,
}

impl Source {
    pub fn name(self) -> &'static str {
        match self {
            Source::Ipvs => "ipvs",
            Source::Conntrack => "conntrack",
        }
    }
}

/// Where the connections to VIPs went, read when flows to VIPs are shown.
#[derive(Default)]
pub struct VipConnections {
    ipvs: HashMap<Tuple, SocketAddr>,
    conntrack: HashMap<Tuple, SocketAddr>,
}

impl VipConnections {
    /// From IPVS's connections and conntrack's DNAT.
    pub fn new(ipvs: &[IpvsConn], conntrack: HashMap<Tuple, SocketAddr>) -> Self {
        VipConnections {
            ipvs: ipvs
                .iter()
                .map(|c| ((c.client, c.virtual_address, c.protocol), c.destination))
                .collect(),
            conntrack,
        }
    }

    /// Reads what is needed: IPVS's connections when a flow goes to an IPVS
    /// VIP, conntrack's when one goes to another VIP. A source that cannot
    /// be read is logged when its error changes, not at every call.
    pub fn read(need_ipvs: bool, need_conntrack: bool) -> Self {
        static LAST_ERROR: Mutex<[Option<String>; 2]> = Mutex::new([None, None]);
        let note = |i: usize, what: &str, e: Option<&anyhow::Error>| {
            let now = e.map(|e| format!("{e:#}"));
            let mut last = LAST_ERROR.lock().unwrap_or_else(|p| p.into_inner());
            if last[i] != now {
                match &now {
                    Some(e) => {
                        tracing::warn!("{what}: {e}; flows to VIPs go without their backend")
                    }
                    None => tracing::info!("{what} reads again"),
                }
                last[i] = now;
            }
        };
        let ipvs = if need_ipvs {
            let read = ipvs::read_conns();
            note(0, "IPVS connections", read.as_ref().err());
            read.unwrap_or_default()
        } else {
            Vec::new()
        };
        let conntrack = if need_conntrack {
            let read = conntrack::dnat_table();
            note(1, "conntrack", read.as_ref().err());
            read.unwrap_or_default()
        } else {
            HashMap::new()
        };
        Self::new(&ipvs, conntrack)
    }

    /// Where the connection `client` -> `vip` went: IPVS's own record
    /// first.
    pub fn chosen(&self, client: SocketAddr, vip: SocketAddr, protocol: u8) -> Option<Chosen> {
        let key = (client, vip, protocol);
        if let Some(b) = self.ipvs.get(&key) {
            return Some(Chosen {
                backend: *b,
                source: Source::Ipvs,
            });
        }
        self.conntrack.get(&key).map(|b| Chosen {
            backend: *b,
            source: Source::Conntrack,
        })
    }

    /// The connections IPVS scheduled for a virtual service: (client, the
    /// real server it chose).
    pub fn ipvs_clients_of(
        &self,
        vip: SocketAddr,
        protocol: u8,
    ) -> impl Iterator<Item = (SocketAddr, SocketAddr)> + '_ {
        self.ipvs
            .iter()
            .filter(move |((_, v, p), _)| *v == vip && *p == protocol)
            .map(|((c, _, _), b)| (*c, *b))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde_json::json;

    use super::*;
    use crate::{
        model::Model,
        sources::{ipvs::procfs, objects::ClusterObjects},
    };

    /// A live kernel's table and connections (`tests/fixtures/ipvs/`):
    /// TCP 10.96.0.10:80 -> 10.2.0.1, 10.2.0.2 (a Service, `web`); UDP
    /// 10.96.0.10:53 -> 10.2.0.3 (no Service object); the connections of
    /// one SYN to :80 and one datagram to :53.
    fn model() -> (Model, VipConnections) {
        let mut objects = ClusterObjects::default();
        objects
            .add_value(json!({"kind": "List", "items": [
                {"kind": "Service", "metadata": {"name": "web", "namespace": "shop"},
                 "spec": {"clusterIP": "10.96.0.10", "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}},
                {"kind": "EndpointSlice", "apiVersion": "discovery.k8s.io/v1", "addressType": "IPv4",
                 "metadata": {"name": "web-a", "namespace": "shop", "labels": {"kubernetes.io/service-name": "web"}},
                 "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
                 "endpoints": [
                    {"addresses": ["10.2.0.1"], "conditions": {"ready": true}, "nodeName": "node1"},
                    {"addresses": ["10.2.0.2"], "conditions": {"ready": true}, "nodeName": "node2"}]},
                {"kind": "Pod", "metadata": {"name": "web-2", "namespace": "shop"},
                 "spec": {"nodeName": "node2", "containers": []}, "status": {"podIP": "10.2.0.2"}},
                {"kind": "Pod", "metadata": {"name": "dns-3", "namespace": "kube-system"},
                 "spec": {"nodeName": "node1", "containers": []}, "status": {"podIP": "10.2.0.3"}}
            ]}))
            .unwrap();
        let mut m = Model::build(&objects, Arc::default(), "cali", Some("node1".into()));
        m.set_ipvs(
            procfs::parse_proc(include_str!(
                "../../tests/fixtures/ipvs/proc_net_ip_vs-6.1.txt"
            ))
            .unwrap(),
        );
        let conns = procfs::parse_conns(include_str!(
            "../../tests/fixtures/ipvs/proc_net_ip_vs_conn-6.1.txt"
        ))
        .unwrap();
        (m, VipConnections::new(&conns, HashMap::new()))
    }

    fn named(m: &Model, c: &VipConnections, client: &str, vip: &str, proto: u8) -> ServiceRefShort {
        let (client, vip): (SocketAddr, SocketAddr) =
            (client.parse().unwrap(), vip.parse().unwrap());
        let r = m
            .service_of(vip.ip(), vip.port(), proto)
            .expect("a Service");
        let r = m.with_backend(r, vip, proto, c.chosen(client, vip, proto));
        (
            format!("{}/{}:{} {}", r.namespace, r.name, r.port, r.via),
            r.virtual_service,
            r.scheduler,
            r.backend,
            r.backend_pod,
            r.backend_node,
            r.backend_source,
            r.forward,
        )
    }

    type ServiceRefShort = (
        String,
        Option<String>,
        Option<String>,
        Option<String>,
        Option<String>,
        Option<String>,
        Option<String>,
        Option<String>,
    );

    fn s(v: &str) -> Option<String> {
        Some(v.into())
    }

    #[test]
    fn a_flow_to_a_vip_carries_its_service_and_the_real_server_ipvs_chose() {
        let (m, c) = model();
        assert_eq!(
            named(&m, &c, "10.96.0.10:44238", "10.96.0.10:80", 6),
            (
                "shop/web:http vip".into(),
                s("TCP 10.96.0.10:80"),
                s("rr"),
                s("10.2.0.2:8080"),
                s("shop/web-2"),
                s("node2"),
                s("ipvs"),
                s("Masq"),
            )
        );
        assert_eq!(
            m.endpoint("10.96.0.10".parse().unwrap()).kind,
            crate::api::EndpointKind::Service
        );
    }

    #[test]
    fn an_ipvs_virtual_service_without_a_service_names_flows_by_its_vip() {
        let (m, c) = model();
        let r = named(&m, &c, "10.96.0.10:54143", "10.96.0.10:53", 17);
        assert_eq!(
            r,
            (
                "/:53 vip".into(),
                s("UDP 10.96.0.10:53"),
                s("rr"),
                s("10.2.0.3:5353"),
                s("kube-system/dns-3"),
                s("node1"),
                s("ipvs"),
                s("Masq"),
            )
        );
        let unnamed: Vec<String> = m.unnamed_ipvs().map(name).collect();
        assert_eq!(unnamed, ["TCP [fd00:10:96::a]:80", "UDP 10.96.0.10:53"]);
        let label = m
            .service_of("10.96.0.10".parse().unwrap(), 53, 17)
            .unwrap()
            .label();
        assert_eq!(label, "ipvs/UDP/10.96.0.10:53");
    }

    #[test]
    fn a_connection_ipvs_does_not_know_has_no_backend() {
        let (m, c) = model();
        let r = named(&m, &c, "10.244.0.9:1000", "10.96.0.10:80", 6);
        assert_eq!((r.3, r.6), (None, None));
        // Conntrack's DNAT answers for what IPVS does not know.
        let nat = HashMap::from([(
            (
                "10.244.0.9:1000".parse().unwrap(),
                "10.96.0.10:80".parse().unwrap(),
                6,
            ),
            "10.2.0.1:8080".parse().unwrap(),
        )]);
        let c = VipConnections::new(&[], nat);
        let r = named(&m, &c, "10.244.0.9:1000", "10.96.0.10:80", 6);
        assert_eq!((r.3, r.6), (s("10.2.0.1:8080"), s("conntrack")));
    }
}
