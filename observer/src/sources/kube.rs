//! Kubernetes objects from the API: kube-rs reflectors (list, then watch,
//! relisting after errors) keep stores of Pods (cluster-wide: remote pod
//! IPs get names too), Nodes, Services and EndpointSlices. Every change wakes the model builder; the
//! decoding is the one the offline directory uses.

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

use super::objects::ClusterObjects;

/// Readers of the reflectors' stores.
#[derive(Clone)]
pub struct KubeStores {
    pub pods: Store<Pod>,
    pub nodes: Store<Node>,
    pub services: Store<Service>,
    pub endpoint_slices: Store<EndpointSlice>,
    pub jobs: Store<Job>,
    pub replica_sets: Store<ReplicaSet>,
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
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(event) = stream.next().await {
            match event {
                Ok(_) => changed.store(true, Ordering::Release),
                // The reflector relists by itself after a back-off.
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
        replica_sets: reflect(Api::<ReplicaSet>::all(client), changed),
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
    use crate::model::Model;
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

    fn names(stores: &KubeStores) -> Vec<Option<String>> {
        let m = Model::build(
            &stores.snapshot(),
            Default::default(),
            "cali",
            Some("node1".into()),
        );
        ["10.244.0.5", "10.244.0.6", "10.244.0.7"]
            .iter()
            .map(|ip| m.endpoint(ip.parse().unwrap()).pod)
            .collect()
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
