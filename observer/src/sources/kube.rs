//! Kubernetes objects from the API: kube-rs reflectors (list, then watch,
//! relisting after errors) keep stores of Pods (cluster-wide: remote pod
//! IPs get names too), Nodes, Services, EndpointSlices, and Calico's
//! IPPools, BlockAffinities and IPAMBlocks (empty where the CRDs are not
//! installed). Every change wakes the model builder; the decoding is the
//! one the offline directory uses.

use std::sync::Arc;

use anyhow::{Context as _, Result};
use futures::StreamExt as _;
use k8s_openapi::api::{
    apps::v1::ReplicaSet,
    batch::v1::Job,
    core::v1::{Node, Pod, Service},
    discovery::v1::EndpointSlice,
};
use kube::{
    Api, Client,
    runtime::{
        WatchStreamExt as _,
        reflector::{self, Store},
        watcher,
    },
};
use serde::de::DeserializeOwned;
use std::sync::atomic::{AtomicBool, Ordering};

use super::{
    calico::{BlockAffinity, IpPool, IpamBlock},
    objects::ClusterObjects,
};

/// Every (group, version, resource) the daemon lists and watches,
/// cluster-wide: what its ClusterRole must grant (`list`, `watch`).
pub const WATCHED: &[(&str, &str, &str)] = &[
    ("", "v1", "pods"),
    ("", "v1", "nodes"),
    ("", "v1", "services"),
    ("discovery.k8s.io", "v1", "endpointslices"),
    ("batch", "v1", "jobs"),
    ("apps", "v1", "replicasets"),
    ("crd.projectcalico.org", "v1", "ippools"),
    ("crd.projectcalico.org", "v1", "blockaffinities"),
    ("crd.projectcalico.org", "v1", "ipamblocks"),
];

/// Readers of the reflectors' stores.
#[derive(Clone)]
pub struct KubeStores {
    pub pods: Store<Pod>,
    pub nodes: Store<Node>,
    pub services: Store<Service>,
    pub endpoint_slices: Store<EndpointSlice>,
    pub jobs: Store<Job>,
    pub replica_sets: Store<ReplicaSet>,
    /// Calico's CRDs: empty where they are not installed.
    pub ip_pools: Store<IpPool>,
    pub block_affinities: Store<BlockAffinity>,
    pub ipam_blocks: Store<IpamBlock>,
}

impl KubeStores {
    /// The objects the stores hold now.
    pub fn snapshot(&self) -> ClusterObjects {
        ClusterObjects {
            pods: self.pods.state().iter().map(|p| (**p).clone()).collect(),
            nodes: self.nodes.state().iter().map(|n| (**n).clone()).collect(),
            jobs: self.jobs.state().iter().map(|n| (**n).clone()).collect(),
            replica_sets: self
                .replica_sets
                .state()
                .iter()
                .map(|n| (**n).clone())
                .collect(),
            services: self
                .services
                .state()
                .iter()
                .map(|n| (**n).clone())
                .collect(),
            endpoint_slices: self
                .endpoint_slices
                .state()
                .iter()
                .map(|n| (**n).clone())
                .collect(),
            ip_pools: self
                .ip_pools
                .state()
                .iter()
                .map(|n| (**n).clone())
                .collect(),
            block_affinities: self
                .block_affinities
                .state()
                .iter()
                .map(|n| (**n).clone())
                .collect(),
            ipam_blocks: self
                .ipam_blocks
                .state()
                .iter()
                .map(|n| (**n).clone())
                .collect(),
        }
    }

    /// Waits until every store has finished its first list.
    pub async fn synced(&self) -> Result<()> {
        self.pods
            .wait_until_ready()
            .await
            .context("waiting for the Pod list")?;
        self.nodes
            .wait_until_ready()
            .await
            .context("waiting for the Node list")?;
        Ok(())
    }
}

/// Starts a reflector for kind `K`; `changed` is set on every event.
fn reflect<K>(api: Api<K>, changed: Arc<AtomicBool>) -> Store<K>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let (reader, writer) = reflector::store();
    let kind = K::kind(&()).into_owned();
    let stream = reflector::reflector(
        writer,
        watcher(api, watcher::Config::default().any_semantic()),
    )
    .default_backoff();
    // A missing CRD (404) or a missing grant (403) fails every relist:
    // said once (until the watch works again), then only at debug level.
    let optional = K::group(&()) == super::calico::GROUP;
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        let mut warned = false;
        while let Some(event) = stream.next().await {
            match event {
                Ok(_) => {
                    warned = false;
                    changed.store(true, Ordering::Release)
                }
                // The reflector relists by itself after a back-off.
                Err(e) if optional && warned => {
                    tracing::debug!(kind = %kind, "watch failed, retrying: {e}")
                }
                Err(e) if optional => {
                    warned = true;
                    tracing::warn!(
                        kind = %kind,
                        "cannot list Calico's {kind} objects (CRD not installed, or not granted?): {e}; going on without them, retrying quietly"
                    )
                }
                Err(e) => tracing::warn!(kind = %kind, "watch failed, retrying: {e}"),
            }
        }
    });
    reader
}

/// Connects to the API (in-cluster service account or kubeconfig) and
/// starts the reflectors.
pub async fn start(changed: Arc<AtomicBool>) -> Result<KubeStores> {
    let client = Client::try_default()
        .await
        .context("connecting to the Kubernetes API (in-cluster service account or kubeconfig)")?;
    start_with(client, changed).await
}

/// Starts the reflectors on `client` (the tests give it a fake API
/// server's address).
pub async fn start_with(client: Client, changed: Arc<AtomicBool>) -> Result<KubeStores> {
    Ok(KubeStores {
        pods: reflect(Api::<Pod>::all(client.clone()), changed.clone()),
        nodes: reflect(Api::<Node>::all(client.clone()), changed.clone()),
        services: reflect(Api::<Service>::all(client.clone()), changed.clone()),
        endpoint_slices: reflect(Api::<EndpointSlice>::all(client.clone()), changed.clone()),
        jobs: reflect(Api::<Job>::all(client.clone()), changed.clone()),
        replica_sets: reflect(Api::<ReplicaSet>::all(client.clone()), changed.clone()),
        ip_pools: reflect(Api::<IpPool>::all(client.clone()), changed.clone()),
        block_affinities: reflect(Api::<BlockAffinity>::all(client.clone()), changed.clone()),
        ipam_blocks: reflect(Api::<IpamBlock>::all(client), changed),
    })
}

/// Whether an API is configured here: in a pod (service account) or with
/// a kubeconfig.
pub fn configured() -> bool {
    std::env::var_os("KUBERNETES_SERVICE_HOST").is_some()
        || std::env::var_os("KUBECONFIG").is_some()
        || std::env::var_os("HOME")
            .is_some_and(|h| std::path::Path::new(&h).join(".kube/config").exists())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::objects::pod_ips;
    use kube::runtime::{reflector::store::Writer, watcher::Event};
    use serde_json::json;

    fn pod(name: &str, ip: &str) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "shop", "resourceVersion": "1"},
            "spec": {"nodeName": "node1", "containers": []},
            "status": {"podIP": ip}
        }))
        .unwrap()
    }

    /// The pod each address belongs to, in a snapshot of the stores (what
    /// the model is built from).
    fn names(stores: &KubeStores) -> Vec<Option<String>> {
        let pods = stores.snapshot().pods;
        ["10.244.0.5", "10.244.0.6", "10.244.0.7"]
            .iter()
            .map(|ip| {
                let ip = ip.parse().unwrap();
                pods.iter()
                    .find(|p| pod_ips(p).contains(&ip))
                    .and_then(|p| p.metadata.name.clone())
            })
            .collect()
    }

    fn gvr<K: kube::Resource<DynamicType = ()>>() -> (String, String, String) {
        (
            K::group(&()).into_owned(),
            K::version(&()).into_owned(),
            K::plural(&()).into_owned(),
        )
    }

    #[test]
    fn watched_lists_every_reflected_kind() {
        let reflected = [
            gvr::<Pod>(),
            gvr::<Node>(),
            gvr::<Service>(),
            gvr::<EndpointSlice>(),
            gvr::<Job>(),
            gvr::<ReplicaSet>(),
            gvr::<IpPool>(),
            gvr::<BlockAffinity>(),
            gvr::<IpamBlock>(),
        ];
        let watched: Vec<_> = WATCHED
            .iter()
            .map(|(g, v, r)| (g.to_string(), v.to_string(), r.to_string()))
            .collect();
        assert_eq!(watched, reflected);
    }

    #[test]
    fn calico_objects_come_through_the_stores() {
        let mut pools = Writer::<IpPool>::default();
        pools.apply_watcher_event(&Event::Apply(
            serde_json::from_value(json!({
                "apiVersion": "crd.projectcalico.org/v1", "kind": "IPPool",
                "metadata": {"name": "p", "resourceVersion": "1"},
                "spec": {"cidr": "10.244.0.0/16", "vxlanMode": "Always", "allowedUses": ["Workload"]}
            }))
            .unwrap(),
        ));
        let stores = KubeStores {
            pods: Writer::<Pod>::default().as_reader(),
            nodes: Writer::<Node>::default().as_reader(),
            services: Writer::<Service>::default().as_reader(),
            endpoint_slices: Writer::<EndpointSlice>::default().as_reader(),
            jobs: Writer::<Job>::default().as_reader(),
            replica_sets: Writer::<ReplicaSet>::default().as_reader(),
            ip_pools: pools.as_reader(),
            block_affinities: Writer::<BlockAffinity>::default().as_reader(),
            ipam_blocks: Writer::<IpamBlock>::default().as_reader(),
        };
        let o = stores.snapshot();
        assert_eq!(o.ip_pools.len(), 1);
        assert_eq!(o.ip_pools[0].spec.cidr, "10.244.0.0/16");
    }

    #[test]
    fn watch_events_keep_the_names_current() {
        let mut pods = Writer::<Pod>::default();
        let (nodes, services, slices) = (
            Writer::<Node>::default(),
            Writer::<Service>::default(),
            Writer::<EndpointSlice>::default(),
        );
        let stores = KubeStores {
            pods: pods.as_reader(),
            nodes: nodes.as_reader(),
            services: services.as_reader(),
            endpoint_slices: slices.as_reader(),
            jobs: Writer::<Job>::default().as_reader(),
            replica_sets: Writer::<ReplicaSet>::default().as_reader(),
            ip_pools: Writer::<IpPool>::default().as_reader(),
            block_affinities: Writer::<BlockAffinity>::default().as_reader(),
            ipam_blocks: Writer::<IpamBlock>::default().as_reader(),
        };
        // Initial list.
        pods.apply_watcher_event(&Event::Init);
        pods.apply_watcher_event(&Event::InitApply(pod("a", "10.244.0.5")));
        pods.apply_watcher_event(&Event::InitDone);
        assert_eq!(names(&stores), [Some("a".into()), None, None]);
        // Add, then modify (the pod got a new IP), then delete.
        pods.apply_watcher_event(&Event::Apply(pod("b", "10.244.0.6")));
        pods.apply_watcher_event(&Event::Apply(pod("a", "10.244.0.7")));
        assert_eq!(names(&stores), [None, Some("b".into()), Some("a".into())]);
        pods.apply_watcher_event(&Event::Delete(pod("b", "10.244.0.6")));
        assert_eq!(names(&stores), [None, None, Some("a".into())]);
        // A relist after a lost watch replaces everything: `a` is gone.
        pods.apply_watcher_event(&Event::Init);
        pods.apply_watcher_event(&Event::InitApply(pod("c", "10.244.0.5")));
        pods.apply_watcher_event(&Event::InitDone);
        assert_eq!(names(&stores), [Some("c".into()), None, None]);
    }
}
