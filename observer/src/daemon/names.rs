//! Where names come from (routes, the objects directory, the Kubernetes
//! API, IPVS, BIRD, the CNI config) and when to rebuild the model.

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use anyhow::Result;

use super::Shared;
use crate::{
    api::{BirdStatus, CniDir},
    config::{KubeMode, NamesSettings},
    model::{Model, SourceError},
    sources::{
        ipvs::{self, IpvsService},
        kube::{self, KubeStores},
        objects::ClusterObjects,
        routes,
    },
};

/// How long the start waits for BIRD's first answer.
const BIRD_FIRST_READ: std::time::Duration = std::time::Duration::from_secs(2);

/// How often kube-proxy's IPVS table is read.
const IPVS_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// Where names come from, and when to rebuild the model.
pub(super) struct Names {
    settings: NamesSettings,
    routes: tokio::sync::watch::Receiver<Arc<routes::RouteTable>>,
    objects: ObjectsDir,
    kube: Option<KubeStores>,
    kube_changed: Arc<AtomicBool>,
    /// kube-proxy's IPVS table, read by its own task (see [`follow_ipvs`]).
    ipvs: tokio::sync::watch::Receiver<IpvsRead>,
    /// BIRD's peers (IPv4, IPv6), read by their own task (see
    /// [`follow_bird`]) so that a hung BIRD never holds up a poll.
    bird: tokio::sync::watch::Receiver<Vec<BirdStatus>>,
    cni: Option<CniDir>,
    cni_stamp: Option<std::time::SystemTime>,
    interfaces: Vec<(String, ipnet::IpNet)>,
}

impl Names {
    pub(super) async fn start(settings: NamesSettings) -> Result<Self> {
        let kube_changed = Arc::new(AtomicBool::new(true));
        let use_kube = match settings.kubernetes {
            KubeMode::Never => false,
            KubeMode::Always => true,
            KubeMode::Auto => kube::configured(),
        };
        let kube = if use_kube {
            match kube::start(kube_changed.clone()).await {
                Ok(stores) => Some(stores),
                Err(e) if settings.kubernetes == KubeMode::Auto => {
                    tracing::warn!("going on without the Kubernetes API: {e:#}");
                    None
                }
                Err(e) => return Err(e),
            }
        } else {
            None
        };
        let mut bird = follow_bird(
            settings.bird_socket.clone(),
            settings.bird6_socket.clone(),
            settings.poll_interval,
        );
        // BIRD's first answer, so that the first model (what the API shows
        // once the daemon is ready) has the BGP peers; a hung BIRD delays
        // the start by this much at most.
        if tokio::time::timeout(BIRD_FIRST_READ, bird.changed())
            .await
            .is_err()
        {
            tracing::warn!("BIRD did not answer within {BIRD_FIRST_READ:?}; going on without");
        }
        Ok(Self {
            routes: routes::follow().await?,
            objects: ObjectsDir::default(),
            kube,
            kube_changed,
            ipvs: follow_ipvs(),
            bird,
            cni: None,
            cni_stamp: None,
            interfaces: Vec::new(),
            settings,
        })
    }

    /// Rebuilds the model if the routes, the API's objects or the objects
    /// directory changed.
    pub(super) async fn refresh(&mut self, state: &Shared, force: bool) {
        let mut changed = force || self.routes.has_changed().unwrap_or(false);
        if let Some(dir) = &self.settings.objects_dir {
            changed |= self.objects.refresh(dir);
        }
        changed |= self.kube.is_some() && self.kube_changed.swap(false, Ordering::AcqRel);
        // kube-proxy in IPVS mode: its table, where the kernel has IPVS.
        changed |= self.ipvs.has_changed().unwrap_or(false);
        // BGP peers (read by their own task), the CNI directory (when it
        // changed) and this node's addresses (for CrossSubnet).
        changed |= self.bird.has_changed().unwrap_or(false);
        let stamp = dir_stamp(&self.settings.cni_dir);
        if stamp != self.cni_stamp || self.cni.is_none() {
            self.cni_stamp = stamp;
            let cni = CniDir::read(&self.settings.cni_dir);
            if self.cni.as_ref() != Some(&cni) {
                self.cni = Some(cni);
                changed = true;
            }
        }
        let interfaces = crate::model::calico::interface_networks();
        if interfaces != self.interfaces {
            self.interfaces = interfaces;
            changed = true;
        }
        if changed {
            let mut objects = self.objects.last_good.clone();
            if let Some(k) = &self.kube {
                let live = k.snapshot();
                objects.pods.extend(live.pods);
                objects.nodes.extend(live.nodes);
                objects.services.extend(live.services);
                objects.endpoint_slices.extend(live.endpoint_slices);
                objects.jobs.extend(live.jobs);
                objects.replica_sets.extend(live.replica_sets);
                objects.ip_pools.extend(live.ip_pools);
                objects.block_affinities.extend(live.block_affinities);
                objects.ipam_blocks.extend(live.ipam_blocks);
            }
            let routes = self.routes.borrow_and_update().clone();
            let mut model = Model::build(
                &objects,
                routes,
                &self.settings.interface_prefix,
                self.settings.node_name.clone(),
            );
            model.set_node_state(
                self.bird.borrow_and_update().clone(),
                self.cni.clone(),
                &self.interfaces,
            );
            let ipvs = self.ipvs.borrow_and_update().clone();
            model.set_ipvs(ipvs.table);
            let errors = self.objects.error.iter().cloned();
            let ipvs_error = ipvs.error.map(|error| SourceError {
                source: "ipvs".into(),
                error,
            });
            model.set_source_errors(errors.chain(ipvs_error).collect());
            state.write().await.model = Arc::new(model);
        }
    }
}

impl Names {
    /// Whether each configured source of names answered at its last read.
    pub(super) fn synced(&self) -> Vec<(&'static str, bool)> {
        let mut out = vec![("routes", true)];
        if self.settings.objects_dir.is_some() {
            out.push(("objects", self.objects.synced()));
        }
        if let Some(k) = &self.kube {
            // Synced once every reflector has listed.
            use futures::FutureExt as _;
            fn listed<K>(s: &::kube::runtime::reflector::Store<K>) -> bool
            where
                K: ::kube::Resource + Clone + 'static,
                K::DynamicType: Eq + std::hash::Hash + Clone,
            {
                matches!(s.wait_until_ready().now_or_never(), Some(Ok(())))
            }
            let core = listed(&k.pods)
                && listed(&k.nodes)
                && listed(&k.services)
                && listed(&k.endpoint_slices)
                && listed(&k.jobs)
                && listed(&k.replica_sets);
            out.push(("kubernetes", core));
            let calico =
                listed(&k.ip_pools) && listed(&k.block_affinities) && listed(&k.ipam_blocks);
            out.push(("calico", calico));
        }
        // Only where the kernel has IPVS: elsewhere there is nothing to read.
        let ipvs = self.ipvs.borrow();
        if ipvs.present || ipvs.error.is_some() {
            out.push(("ipvs", ipvs.error.is_none()));
        }
        drop(ipvs);
        out.push(("bird", self.bird.borrow().iter().any(|b| b.running)));
        out.push(("cni", self.cni.as_ref().is_some_and(|c| c.error.is_none())));
        out
    }

    /// Whether the names the daemon needs before it is ready have been read
    /// once: the routes, the objects directory, the Kubernetes API's core
    /// kinds (Calico's CRDs, BIRD and CNI are optional).
    pub(super) fn ready(&self) -> bool {
        self.synced()
            .iter()
            .filter(|(s, _)| matches!(*s, "routes" | "objects" | "kubernetes"))
            .all(|(_, ok)| *ok)
    }
}

/// The objects directory: what it last said that decoded, and what is
/// wrong with it now.
#[derive(Default)]
struct ObjectsDir {
    last_good: ClusterObjects,
    loaded: bool,
    /// The stamp of the last read: re-read when it changes, and at every
    /// poll while failing (a write that raced a read may leave the stamp
    /// as it was).
    stamp: Option<Option<std::time::SystemTime>>,
    error: Option<SourceError>,
}

impl ObjectsDir {
    /// Re-reads `dir` if it changed. A read that fails keeps the names of
    /// the last good one and is logged once per error, not at every poll.
    /// Returns whether the model must be rebuilt: new names, or a new
    /// error for the doctor to show.
    fn refresh(&mut self, dir: &std::path::Path) -> bool {
        let stamp = dir_stamp(dir);
        if self.error.is_none() && self.stamp == Some(stamp) {
            return false;
        }
        // File times are coarse (a clock tick): a write later in the tick of
        // the newest one would leave the stamp as it is. A stamp that recent
        // is not kept, so the next poll reads again.
        let racy = stamp.is_none_or(|t| t.elapsed().is_ok_and(|age| age < RACY_STAMP));
        self.stamp = (!racy).then_some(stamp);
        match ClusterObjects::load_dir(dir) {
            Ok(objects) => {
                if self.error.take().is_some() {
                    tracing::info!(dir = %dir.display(), "the objects directory reads again");
                }
                self.last_good = objects;
                self.loaded = true;
                true
            }
            Err(e) => {
                let error = SourceError {
                    source: "objects".into(),
                    error: format!("{e:#}"),
                };
                if self.error.as_ref() == Some(&error) {
                    return false;
                }
                tracing::warn!(
                    dir = %dir.display(),
                    "objects: {}; keeping the names read before",
                    error.error
                );
                self.error = Some(error);
                true
            }
        }
    }

    fn synced(&self) -> bool {
        self.loaded && self.error.is_none()
    }
}

/// The last read of the IPVS table.
#[derive(Clone, Debug, Default, PartialEq)]
struct IpvsRead {
    /// The last table read (kept while a read fails).
    table: Vec<IpvsService>,
    /// Whether the kernel has IPVS.
    present: bool,
    /// Why the last read failed, when it did (not for a kernel without
    /// IPVS: that is no failure).
    error: Option<String>,
}

/// Reads the IPVS table every [`IPVS_EVERY`] (a large kube-proxy table is
/// thousands of services: not every poll) on a blocking thread, since the
/// generic netlink dumps block. Publishes only changes; a failed read
/// keeps the last table, is logged when its error changes and is reported
/// as the `ipvs` source's error (doctor's `name-sources`).
fn follow_ipvs() -> tokio::sync::watch::Receiver<IpvsRead> {
    let (tx, rx) = tokio::sync::watch::channel(IpvsRead::default());
    tokio::spawn(async move {
        loop {
            let Ok(result) = tokio::task::spawn_blocking(ipvs::read).await else {
                return;
            };
            let mut now = tx.borrow().clone();
            match result {
                Ok(table) => {
                    if now.error.take().is_some() {
                        tracing::info!("the IPVS table reads again");
                    }
                    (now.table, now.present) = (table, true);
                }
                Err(e) if ipvs::is_absent(&e) => now = IpvsRead::default(),
                Err(e) => {
                    let error = format!("{e:#}");
                    if now.error.as_ref() != Some(&error) {
                        tracing::warn!("IPVS: {error}; keeping the table read before");
                    }
                    (now.error, now.present) = (Some(error), true);
                }
            }
            let differs = *tx.borrow() != now;
            if differs && tx.send(now).is_err() {
                return;
            }
            tokio::time::sleep(IPVS_EVERY).await;
        }
    });
    rx
}

/// Asks BIRD (IPv4 and IPv6) every `interval` on a blocking thread; each
/// exchange is bounded ([`crate::sources::bird::DEADLINE`]). Publishes
/// only changes, and logs only when a BIRD comes or goes.
fn follow_bird(
    v4: std::path::PathBuf,
    v6: std::path::PathBuf,
    interval: std::time::Duration,
) -> tokio::sync::watch::Receiver<Vec<BirdStatus>> {
    let (tx, rx) = tokio::sync::watch::channel(Vec::new());
    tokio::spawn(async move {
        let mut was_running: [Option<bool>; 2] = [None, None];
        loop {
            let (a, b) = (v4.clone(), v6.clone());
            let Ok(now) = tokio::task::spawn_blocking(move || {
                vec![BirdStatus::query(&a, false), BirdStatus::query(&b, true)]
            })
            .await
            else {
                return;
            };
            for (i, s) in now.iter().enumerate() {
                if was_running[i] != Some(s.running) {
                    was_running[i] = Some(s.running);
                    match &s.error {
                        None => {
                            tracing::info!(family = %s.family, socket = %s.socket, "BIRD answers")
                        }
                        Some(e) => tracing::info!(family = %s.family, "BIRD: {e}"),
                    }
                }
            }
            let differs = *tx.borrow() != now;
            if differs && tx.send(now).is_err() {
                return;
            }
            tokio::time::sleep(interval.max(std::time::Duration::from_millis(500))).await;
        }
    });
    rx
}

/// How old the objects directory's newest file time must be to be trusted
/// as its stamp (see `ObjectsDir::refresh`).
const RACY_STAMP: std::time::Duration = std::time::Duration::from_secs(1);

/// The newest modification time in a directory (it and its files).
fn dir_stamp(dir: &std::path::Path) -> Option<std::time::SystemTime> {
    let mut newest = std::fs::metadata(dir).and_then(|m| m.modified()).ok()?;
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        if let Ok(t) = entry.metadata().and_then(|m| m.modified()) {
            newest = newest.max(t);
        }
    }
    Some(newest)
}
