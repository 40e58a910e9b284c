//! What ships in `deploy/`: the Kubernetes manifests parse into the API's
//! types with no unknown field and agree with the daemon (ports, probes,
//! socket, mounts, NODE_NAME); the ClusterRole grants exactly the API calls
//! the daemon's reflectors make (run against a fake API server); the
//! Dockerfile builds what the repository holds; every Grafana panel queries
//! only documented metrics and labels, and, against a real Prometheus
//! scraping the lab with traffic running, returns data.

mod common;

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    process::Command,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use k8s_openapi::{
    api::{
        apps::v1::DaemonSet,
        core::v1::{Container, Namespace, Service, ServiceAccount},
        rbac::v1::{ClusterRole, ClusterRoleBinding},
    },
    apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta},
};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use serde_json::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn kube_dir() -> PathBuf {
    repo().join("deploy/kubernetes")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// Every YAML document of a file, as JSON values (empty documents left out).
fn yaml_docs(path: &Path) -> Vec<Value> {
    let text = read(path);
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|doc| {
            Value::deserialize(doc).unwrap_or_else(|e| panic!("{}: bad YAML: {e}", path.display()))
        })
        .filter(|v| !v.is_null())
        .collect()
}

// ---------------------------------------------------------------------------
// Strict parsing: k8s-openapi ignores unknown fields, so an object is
// re-serialized from its typed form and every key of the original must still
// be there, with the same value.

/// The path of the first key (or value) of `original` that `typed` lost.
fn first_lost(original: &Value, typed: &Value, path: &str) -> Option<String> {
    match (original, typed) {
        (Value::Object(a), Value::Object(b)) => a.iter().find_map(|(k, va)| {
            let p = format!("{path}.{k}");
            match b.get(k) {
                None => Some(format!("{p} (unknown field)")),
                Some(vb) => first_lost(va, vb, &p),
            }
        }),
        (Value::Array(a), Value::Array(b)) => {
            if a.len() != b.len() {
                return Some(format!("{path} (length {} became {})", a.len(), b.len()));
            }
            a.iter()
                .zip(b)
                .enumerate()
                .find_map(|(i, (va, vb))| first_lost(va, vb, &format!("{path}[{i}]")))
        }
        (a, b) if a == b => None,
        (a, b) => Some(format!("{path} ({a} became {b})")),
    }
}

fn strict<T: DeserializeOwned + Serialize>(doc: &Value, what: &str) -> T {
    let typed: T = serde_json::from_value(doc.clone())
        .unwrap_or_else(|e| panic!("{what}: does not parse as its API type: {e}"));
    let back = serde_json::to_value(&typed).expect("serialize");
    if let Some(lost) = first_lost(doc, &back, "") {
        panic!("{what}: {lost}");
    }
    typed
}

/// Prometheus Operator's PodMonitor (monitoring.coreos.com/v1): the fields
/// we use and their usual neighbours; anything else is an error.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct PodMonitor {
    api_version: String,
    kind: String,
    metadata: ObjectMeta,
    spec: PodMonitorSpec,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct PodMonitorSpec {
    selector: LabelSelector,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    namespace_selector: Option<NamespaceSelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    job_label: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pod_target_labels: Option<Vec<String>>,
    pod_metrics_endpoints: Vec<PodMetricsEndpoint>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct NamespaceSelector {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    any: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    match_names: Option<Vec<String>>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct PodMetricsEndpoint {
    port: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    scheme: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    interval: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    scrape_timeout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    honor_labels: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    relabelings: Option<Vec<RelabelConfig>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    metric_relabelings: Option<Vec<RelabelConfig>>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RelabelConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    source_labels: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    separator: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    target_label: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    regex: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    replacement: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    action: Option<String>,
}

/// kustomize's Kustomization (or Component), limited to what a plain base,
/// overlay and component use.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Kustomization {
    api_version: String,
    kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    namespace: Option<String>,
    #[serde(default)]
    resources: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    components: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    images: Vec<KustomizeImage>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    patches: Vec<KustomizePatch>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct KustomizeImage {
    name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    new_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    new_tag: Option<String>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct KustomizePatch {
    path: String,
    target: PatchTarget,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct PatchTarget {
    group: String,
    version: String,
    kind: String,
    name: String,
}

/// One operation of a JSON patch (RFC 6902).
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct PatchOp {
    op: String,
    path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    value: Option<Value>,
}

/// Applies `add`/`replace`/`remove` JSON patch operations.
fn json_patch(doc: &mut Value, ops: &[PatchOp]) {
    for op in ops {
        let (parent, last) = op.path.rsplit_once('/').expect("patch path");
        let last = last.replace("~1", "/").replace("~0", "~");
        let target = doc
            .pointer_mut(parent)
            .unwrap_or_else(|| panic!("patch path {} does not exist", op.path));
        match (op.op.as_str(), target) {
            ("add" | "replace", Value::Object(m)) => {
                if op.op == "replace" {
                    assert!(m.contains_key(&last), "replace of missing {}", op.path);
                }
                m.insert(last, op.value.clone().expect("value"));
            }
            ("replace", Value::Array(a)) => {
                a[last.parse::<usize>().expect("index")] = op.value.clone().expect("value");
            }
            ("remove", Value::Object(m)) => {
                m.remove(&last).expect("remove of missing key");
            }
            (other, _) => panic!("patch op {other} at {} not supported here", op.path),
        }
    }
}

/// The objects of one kustomization directory.
#[derive(Default)]
struct Objects {
    namespaces: Vec<Namespace>,
    service_accounts: Vec<ServiceAccount>,
    cluster_roles: Vec<ClusterRole>,
    bindings: Vec<ClusterRoleBinding>,
    daemon_sets: Vec<DaemonSet>,
    services: Vec<Service>,
    pod_monitors: Vec<PodMonitor>,
}

impl Objects {
    fn add(&mut self, doc: &Value, what: &str) {
        let key = (
            doc["apiVersion"].as_str().unwrap_or(""),
            doc["kind"].as_str().unwrap_or(""),
        );
        match key {
            ("v1", "Namespace") => self.namespaces.push(strict(doc, what)),
            ("v1", "ServiceAccount") => self.service_accounts.push(strict(doc, what)),
            ("v1", "Service") => self.services.push(strict(doc, what)),
            ("rbac.authorization.k8s.io/v1", "ClusterRole") => {
                self.cluster_roles.push(strict(doc, what))
            }
            ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => {
                self.bindings.push(strict(doc, what))
            }
            ("apps/v1", "DaemonSet") => self.daemon_sets.push(strict(doc, what)),
            ("monitoring.coreos.com/v1", "PodMonitor") => self.pod_monitors.push(strict(doc, what)),
            other => panic!("{what}: no test knows {other:?}; add it to Objects::add"),
        }
    }

    fn count(&self) -> usize {
        self.namespaces.len()
            + self.service_accounts.len()
            + self.cluster_roles.len()
            + self.bindings.len()
            + self.daemon_sets.len()
            + self.services.len()
            + self.pod_monitors.len()
    }
}

fn kustomization(dir: &Path) -> Kustomization {
    let path = dir.join("kustomization.yaml");
    let docs = yaml_docs(&path);
    assert_eq!(docs.len(), 1, "{}: one document", path.display());
    let k: Kustomization = strict(&docs[0], &path.display().to_string());
    assert!(
        matches!(
            (k.api_version.as_str(), k.kind.as_str()),
            ("kustomize.config.k8s.io/v1beta1", "Kustomization")
                | ("kustomize.config.k8s.io/v1alpha1", "Component")
        ),
        "{}: {} {}",
        path.display(),
        k.api_version,
        k.kind
    );
    k
}

fn is_component(dir: &Path) -> bool {
    kustomization(dir).kind == "Component"
}

/// The files of a directory other than its kustomization, sorted.
fn files_of(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_type().unwrap().is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != "kustomization.yaml")
        .collect()
}

/// Builds a kustomization the way kustomize does for what we use
/// (resources: files and directories; components; `namespace`; JSON
/// patches), parsing every file strictly. Returns the objects as JSON.
fn build(dir: &Path) -> Vec<Value> {
    build_onto(dir, Vec::new())
}

/// `build`, onto the objects accumulated so far: a Kustomization starts
/// from none; a Component (kind: Component) adds its resources to those of
/// the kustomization that lists it, and its patches and transformers apply
/// to all of them, after that kustomization's resources and before its own
/// patches.
fn build_onto(dir: &Path, mut out: Vec<Value>) -> Vec<Value> {
    let k = kustomization(dir);
    assert!(
        k.kind == "Component" || out.is_empty(),
        "{}: a Kustomization starts from nothing",
        dir.display()
    );
    // Every file here is used: a resource or a patch.
    let mut used: BTreeSet<String> = BTreeSet::new();
    for r in &k.resources {
        let path = dir.join(r);
        assert!(
            path.exists(),
            "{}: resource {r} does not exist",
            dir.display()
        );
        if path.is_dir() {
            // kustomize refuses a Component as a resource.
            assert!(
                !is_component(&path),
                "{}: {r} is a Component: list it under components",
                dir.display()
            );
            out.extend(build(&path));
        } else {
            used.insert(r.clone());
            out.extend(yaml_docs(&path));
        }
    }
    for c in &k.components {
        let path = dir.join(c);
        assert!(
            path.is_dir(),
            "{}: component {c} is not a directory",
            dir.display()
        );
        assert!(
            is_component(&path),
            "{}: component {c} is not a kind: Component",
            dir.display()
        );
        out = build_onto(&path, out);
    }
    for p in &k.patches {
        used.insert(p.path.clone());
        let path = dir.join(&p.path);
        let docs = yaml_docs(&path);
        assert_eq!(docs.len(), 1, "{}: one document", path.display());
        let ops: Vec<PatchOp> = strict(&docs[0], &path.display().to_string());
        let api_version = format!("{}/{}", p.target.group, p.target.version);
        let mut hits = 0;
        for o in out.iter_mut().filter(|o| {
            o["apiVersion"] == api_version.as_str()
                && o["kind"] == p.target.kind.as_str()
                && o["metadata"]["name"] == p.target.name.as_str()
        }) {
            json_patch(o, &ops);
            hits += 1;
        }
        assert_eq!(hits, 1, "{}: the patch's target", path.display());
    }
    assert_eq!(
        used,
        files_of(dir),
        "{}: the kustomization must list every file of its directory",
        dir.display()
    );
    if let Some(ns) = &k.namespace {
        for o in &mut out {
            let cluster_scoped = matches!(
                o["kind"].as_str(),
                Some("Namespace" | "ClusterRole" | "ClusterRoleBinding")
            );
            if !cluster_scoped {
                o["metadata"]["namespace"] = Value::String(ns.clone());
            }
        }
    }
    for image in &k.images {
        for o in &mut out {
            if let Some(cs) = o
                .pointer_mut("/spec/template/spec/containers")
                .and_then(Value::as_array_mut)
            {
                for c in cs {
                    if c["image"] == image.name.as_str() {
                        let name = image.new_name.clone().unwrap_or(image.name.clone());
                        let tag = image.new_tag.clone().expect("a tag");
                        c["image"] = Value::String(format!("{name}:{tag}"));
                    }
                }
            }
        }
    }
    out
}

fn objects(dir: &Path) -> Objects {
    let mut o = Objects::default();
    for (i, doc) in build(dir).iter().enumerate() {
        o.add(
            doc,
            &format!(
                "{} object {i} ({} {})",
                dir.display(),
                doc["kind"],
                doc["metadata"]["name"]
            ),
        );
    }
    o
}

/// The daemon's flags as the DaemonSet's container gives them, parsed by
/// the daemon's own argument parser.
#[derive(clap::Parser)]
struct Cli {
    #[command(subcommand)]
    command: Sub,
}

#[derive(clap::Subcommand)]
enum Sub {
    Run(observer::config::RunArgs),
}

fn run_args(c: &Container) -> observer::config::RunArgs {
    use clap::Parser as _;
    let mut argv = vec!["observer".to_owned()];
    argv.extend(c.command.iter().flatten().skip(1).cloned());
    argv.extend(c.args.clone().unwrap_or_default());
    match Cli::try_parse_from(&argv) {
        Ok(Cli {
            command: Sub::Run(a),
        }) => a,
        Err(e) => panic!("the DaemonSet's arguments {argv:?}: {e}"),
    }
}

/// The environment variable clap reads for a flag of `observer run`.
fn env_of(flag: &str) -> String {
    use clap::Args as _;
    let cmd = observer::config::RunArgs::augment_args(clap::Command::new("run"));
    let arg = cmd
        .get_arguments()
        .find(|a| a.get_long() == Some(flag))
        .unwrap_or_else(|| panic!("no --{flag}"));
    arg.get_env()
        .unwrap_or_else(|| panic!("--{flag} has no environment variable"))
        .to_string_lossy()
        .into_owned()
}

fn metrics_port() -> i32 {
    let a: std::net::SocketAddr = observer::config::DEFAULT_METRICS_ADDRESS.parse().unwrap();
    i32::from(a.port())
}

/// What every variant must satisfy, with or without the PodMonitor (the
/// opt-in component); returns the container.
fn check_install(o: &Objects, what: &str, pod_monitor: bool) -> Container {
    assert_eq!(o.namespaces.len(), 1, "{what}: one Namespace");
    let ns = o.namespaces[0].metadata.name.clone().unwrap();
    let [ds] = o.daemon_sets.as_slice() else {
        panic!("{what}: one DaemonSet")
    };
    let [sa] = o.service_accounts.as_slice() else {
        panic!("{what}: one ServiceAccount")
    };
    let [role] = o.cluster_roles.as_slice() else {
        panic!("{what}: one ClusterRole")
    };
    let [binding] = o.bindings.as_slice() else {
        panic!("{what}: one ClusterRoleBinding")
    };
    for m in [&ds.metadata, &sa.metadata] {
        assert_eq!(
            m.namespace.as_deref(),
            Some(ns.as_str()),
            "{what}: namespace"
        );
    }

    // The binding ties the role to the DaemonSet's service account.
    assert_eq!(binding.role_ref.kind, "ClusterRole");
    assert_eq!(Some(&binding.role_ref.name), role.metadata.name.as_ref());
    let subjects = binding.subjects.clone().unwrap_or_default();
    assert_eq!(subjects.len(), 1, "{what}: one subject");
    assert_eq!(
        (
            subjects[0].kind.as_str(),
            Some(&subjects[0].name),
            subjects[0].namespace.as_deref()
        ),
        (
            "ServiceAccount",
            sa.metadata.name.as_ref(),
            Some(ns.as_str())
        )
    );

    let spec = ds.spec.as_ref().expect("DaemonSet spec");
    let pod_labels = spec
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    let selects =
        |s: &BTreeMap<String, String>| s.iter().all(|(k, v)| pod_labels.get(k) == Some(v));
    assert!(selects(
        spec.selector.match_labels.as_ref().expect("matchLabels")
    ));
    let strategy = spec.update_strategy.as_ref().expect("updateStrategy");
    assert_eq!(strategy.type_.as_deref(), Some("RollingUpdate"));
    assert_eq!(
        strategy
            .rolling_update
            .as_ref()
            .and_then(|r| r.max_unavailable.clone()),
        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(1))
    );

    let pod = spec.template.spec.as_ref().expect("pod spec");
    assert_eq!(pod.service_account_name, sa.metadata.name, "{what}");
    assert_eq!(pod.host_network, Some(true), "{what}: hostNetwork");
    assert_eq!(pod.host_pid, None, "{what}: hostPID is not needed");
    assert_eq!(pod.dns_policy.as_deref(), Some("ClusterFirstWithHostNet"));
    assert_eq!(
        pod.priority_class_name.as_deref(),
        Some("system-node-critical")
    );
    let tolerations = pod.tolerations.clone().unwrap_or_default();
    assert!(
        tolerations
            .iter()
            .any(|t| t.operator.as_deref() == Some("Exists")
                && t.key.is_none()
                && t.effect.is_none()),
        "{what}: tolerate every taint"
    );
    assert!(pod.termination_grace_period_seconds.unwrap_or(30) >= 10);

    let [c] = pod.containers.as_slice() else {
        panic!("{what}: one container")
    };
    let args = run_args(c);

    // The metrics port: named, the daemon's, and what the probes use.
    let ports = c.ports.clone().unwrap_or_default();
    let metrics = ports
        .iter()
        .find(|p| p.name.as_deref() == Some("metrics"))
        .expect("a port named metrics");
    assert_eq!(metrics.container_port, metrics_port());
    let listen = args.metrics_address.0.expect("metrics served");
    assert_eq!(i32::from(listen.port()), metrics.container_port);
    assert!(
        listen.ip().is_unspecified(),
        "Prometheus scrapes the node's address"
    );
    for (probe, path) in [
        (&c.liveness_probe, "/healthz"),
        (&c.readiness_probe, "/readyz"),
    ] {
        let get = probe
            .as_ref()
            .and_then(|p| p.http_get.as_ref())
            .unwrap_or_else(|| panic!("{what}: an HTTP probe on {path}"));
        assert_eq!(get.path.as_deref(), Some(path));
        use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
        match &get.port {
            IntOrString::String(name) => assert_eq!(name, "metrics"),
            IntOrString::Int(n) => assert_eq!(*n, metrics.container_port),
        }
    }

    // NODE_NAME from the downward API, under the name the daemon reads.
    assert_eq!(env_of("node-name"), "NODE_NAME");
    let env = c.env.clone().unwrap_or_default();
    let node = env
        .iter()
        .find(|e| e.name == "NODE_NAME")
        .expect("NODE_NAME");
    let field = node
        .value_from
        .as_ref()
        .and_then(|v| v.field_ref.as_ref())
        .expect("NODE_NAME from a fieldRef");
    assert_eq!(field.field_path, "spec.nodeName");

    // Resources: requests and a memory limit.
    let res = c.resources.as_ref().expect("resources");
    let requests = res.requests.clone().unwrap_or_default();
    assert!(requests.contains_key("cpu") && requests.contains_key("memory"));
    assert!(
        res.limits
            .clone()
            .unwrap_or_default()
            .contains_key("memory")
    );

    // Mounts: where the daemon's defaults point, from the host.
    let volumes = pod.volumes.clone().unwrap_or_default();
    let mounts = c.volume_mounts.clone().unwrap_or_default();
    let host_mount = |dir: &Path| {
        let m = mounts
            .iter()
            .find(|m| Path::new(&m.mount_path) == dir)
            .unwrap_or_else(|| panic!("{what}: {} is not mounted", dir.display()));
        let v = volumes
            .iter()
            .find(|v| v.name == m.name)
            .unwrap_or_else(|| panic!("{what}: no volume {}", m.name));
        let hp = v.host_path.as_ref().expect("a hostPath volume");
        assert_eq!(Path::new(&hp.path), dir, "{what}: same path on the host");
        (m.read_only.unwrap_or(false), hp.type_.clone())
    };
    let socket_dir = Path::new(observer::config::DEFAULT_SOCKET)
        .parent()
        .unwrap();
    assert_eq!(args.socket, Path::new(observer::config::DEFAULT_SOCKET));
    assert_eq!(
        host_mount(socket_dir),
        (false, Some("DirectoryOrCreate".into())),
        "{what}: the API socket's directory"
    );
    assert!(!host_mount(Path::new("/sys/fs/bpf")).0);
    for dir in [
        args.bird_socket.parent().unwrap(),
        args.bird6_socket.parent().unwrap(),
        args.cni_dir.as_path(),
    ] {
        assert!(host_mount(dir).0, "{what}: {} read-only", dir.display());
    }

    // The Service and the PodMonitor find the pods and their port.
    let [svc] = o.services.as_slice() else {
        panic!("{what}: one Service")
    };
    let svc_spec = svc.spec.as_ref().unwrap();
    assert!(selects(svc_spec.selector.as_ref().expect("selector")));
    let sp = svc_spec.ports.clone().unwrap_or_default();
    assert!(sp.iter().any(|p| {
        p.name.as_deref() == Some("metrics")
            && p.port == metrics.container_port
            && p.target_port
                == Some(
                    k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(
                        "metrics".into(),
                    ),
                )
    }));
    if !pod_monitor {
        assert!(
            o.pod_monitors.is_empty(),
            "{what}: the PodMonitor is opt-in (components/prometheus-operator)"
        );
        return c.clone();
    }
    let [pm] = o.pod_monitors.as_slice() else {
        panic!("{what}: one PodMonitor")
    };
    assert_eq!(
        pm.metadata.namespace.as_deref(),
        Some(ns.as_str()),
        "{what}: the PodMonitor is in the DaemonSet's namespace"
    );
    assert!(
        pm.spec.namespace_selector.is_none(),
        "{what}: the PodMonitor looks in its own namespace"
    );
    assert!(
        pm.spec.selector.match_expressions.is_none(),
        "{what}: PodMonitor selector"
    );
    let pm_selector = pm.spec.selector.match_labels.as_ref().expect("matchLabels");
    assert!(
        !pm_selector.is_empty() && selects(pm_selector),
        "{what}: the PodMonitor selects the DaemonSet's pods"
    );
    assert!(
        !pm.spec.pod_metrics_endpoints.is_empty(),
        "{what}: endpoints"
    );
    for e in &pm.spec.pod_metrics_endpoints {
        assert_eq!(
            e.port, "metrics",
            "{what}: the PodMonitor scrapes the container's named port"
        );
        assert_eq!(e.path.as_deref().unwrap_or("/metrics"), "/metrics");
        assert_eq!(e.scheme.as_deref().unwrap_or("http"), "http");
        // Series carry `node` already: a target label of that name would
        // rename theirs to exported_node.
        for r in e.relabelings.iter().flatten() {
            assert_ne!(r.target_label.as_deref(), Some("node"));
        }
    }
    c.clone()
}

/// The component alone: one PodMonitor, the only object, strictly parsed.
fn check_component(o: &Objects, what: &str) {
    assert_eq!(o.count(), 1, "{what}: only the PodMonitor");
    let [pm] = o.pod_monitors.as_slice() else {
        panic!("{what}: one PodMonitor")
    };
    assert_eq!(pm.metadata.name.as_deref(), Some("observer"), "{what}");
    // Its own labels: what a Prometheus' podMonitorSelector may match.
    assert_eq!(
        pm.metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("app.kubernetes.io/name"))
            .map(String::as_str),
        Some("observer"),
        "{what}"
    );
}

/// API groups every cluster serves: what `base/` may use.
fn built_in(api_version: &str) -> bool {
    let group = api_version.rsplit_once('/').map_or("", |(g, _)| g);
    matches!(group, "" | "apps" | "rbac.authorization.k8s.io")
}

#[test]
fn manifests_parse_strictly_and_agree_with_the_daemon() {
    // The base, as `kubectl apply -k deploy/kubernetes` installs it: only
    // built-in kinds, so it applies on a cluster without the Prometheus
    // Operator's CRDs.
    for doc in build(&kube_dir()) {
        let v = doc["apiVersion"].as_str().unwrap_or("");
        assert!(
            built_in(v),
            "deploy/kubernetes: {v} {} needs a CRD; make it opt-in (a component)",
            doc["kind"]
        );
    }
    let base = objects(&kube_dir());
    let c = check_install(&base, "deploy/kubernetes", false);
    let sc = c.security_context.clone().expect("securityContext");
    assert_eq!(sc.privileged, Some(true));
    // The image is the crate's version.
    assert_eq!(
        c.image.as_deref(),
        Some(
            format!(
                "ghcr.io/observer-dev/observer:{}",
                env!("CARGO_PKG_VERSION")
            )
            .as_str()
        )
    );

    // The Prometheus Operator's overlay: the base and its PodMonitor.
    let po = objects(&kube_dir().join("prometheus-operator"));
    assert_eq!(po.count(), base.count() + 1);
    let c = check_install(&po, "deploy/kubernetes/prometheus-operator", true);
    assert_eq!(c.security_context.and_then(|s| s.privileged), Some(true));
    let component = kube_dir().join("components/prometheus-operator");
    assert!(is_component(&component));
    check_component(&objects(&component), "components/prometheus-operator");

    // The least-privilege overlay: the same, with capabilities.
    let lp = objects(&kube_dir().join("least-privilege"));
    assert_eq!(lp.count(), base.count());
    let c = check_install(&lp, "deploy/kubernetes/least-privilege", false);
    let sc = c.security_context.clone().expect("securityContext");
    assert_eq!(sc.privileged, Some(false));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    let caps = sc.capabilities.expect("capabilities");
    let set = |v: Option<Vec<String>>| v.unwrap_or_default().into_iter().collect::<BTreeSet<_>>();
    assert_eq!(set(caps.drop), BTreeSet::from(["ALL".to_owned()]));
    assert_eq!(
        set(caps.add),
        ["BPF", "NET_ADMIN", "PERFMON", "SYS_RESOURCE"]
            .map(str::to_owned)
            .into()
    );
}

/// Every YAML file under deploy/kubernetes is some kustomization, one of
/// its resources or one of its patches: nothing lies around unchecked.
#[test]
fn every_file_under_deploy_kubernetes_is_used() {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, out)
            } else {
                out.push(p)
            }
        }
    }
    let mut files = Vec::new();
    walk(&kube_dir(), &mut files);
    let mut dirs = BTreeSet::new();
    for f in &files {
        assert_eq!(
            f.extension().and_then(|e| e.to_str()),
            Some("yaml"),
            "{}: only .yaml files here",
            f.display()
        );
        dirs.insert(f.parent().unwrap().to_path_buf());
    }
    // `build` asserts that each kustomization lists every file of its
    // directory; every directory has one.
    for d in dirs {
        assert!(
            d.join("kustomization.yaml").exists(),
            "{}: no kustomization",
            d.display()
        );
        build(&d);
    }
}

/// `kubectl kustomize DIR`, its objects parsed strictly.
fn kubectl_kustomize(path: &Path) -> Objects {
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(path)
        .output()
        .expect("kubectl kustomize");
    assert!(
        out.status.success(),
        "kubectl kustomize {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let mut o = Objects::default();
    for (i, doc) in serde_yaml_ng::Deserializer::from_str(&text).enumerate() {
        let v = Value::deserialize(doc).unwrap();
        o.add(
            &v,
            &format!("kubectl kustomize {} object {i}", path.display()),
        );
    }
    o
}

/// The README's example kustomization that adds the PodMonitor (and the
/// `release` label kube-prometheus-stack selects) to an installation.
fn readme_kustomization() -> String {
    let readme = read(&repo().join("README.md"));
    readme
        .split("```yaml\n")
        .skip(1)
        .filter_map(|b| b.split_once("```").map(|(yaml, _)| yaml))
        .find(|yaml| yaml.contains("components/prometheus-operator"))
        .expect("README: a kustomization with components/prometheus-operator")
        .to_owned()
}

/// kubectl's own kustomize (when kubectl is installed) renders every
/// variant, the component alone and the README's own kustomization into
/// objects that also parse strictly.
#[test]
fn kubectl_kustomize_renders_every_variant() {
    let Ok(out) = Command::new("kubectl")
        .arg("version")
        .arg("--client")
        .output()
    else {
        eprintln!("SKIPPED: kubectl is not installed (the other manifest tests still ran)");
        return;
    };
    assert!(out.status.success());
    for (dir, privileged, pod_monitor) in [
        ("", true, false),
        ("least-privilege", false, false),
        ("prometheus-operator", true, true),
    ] {
        let path = kube_dir().join(dir);
        let o = kubectl_kustomize(&path);
        let c = check_install(
            &o,
            &format!("kubectl kustomize {}", path.display()),
            pod_monitor,
        );
        assert_eq!(
            c.security_context.and_then(|s| s.privileged),
            Some(privileged)
        );
    }
    let component = kube_dir().join("components/prometheus-operator");
    check_component(
        &kubectl_kustomize(&component),
        "kubectl kustomize components/prometheus-operator",
    );

    // The README's kustomization, as a user writes it next to a checkout
    // (`../observer/`): kustomize takes only relative paths to bases.
    let dir = std::env::temp_dir().join(format!("observer-deploy-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let dir = dir.canonicalize().unwrap();
    let up = "../".repeat(dir.components().count() - 1);
    let root = repo().canonicalize().unwrap();
    let root = root.strip_prefix("/").unwrap();
    let yaml = readme_kustomization().replace("../observer/", &format!("{up}{}/", root.display()));
    std::fs::write(dir.join("kustomization.yaml"), &yaml).unwrap();
    let o = kubectl_kustomize(&dir);
    std::fs::remove_dir_all(&dir).unwrap();
    let what = "the README's kustomization";
    check_install(&o, what, true);
    let labels = o.pod_monitors[0]
        .metadata
        .labels
        .clone()
        .unwrap_or_default();
    assert!(
        labels.contains_key("release"),
        "{what}: the PodMonitor has a release label: {labels:?}"
    );
    assert_eq!(
        labels.get("app.kubernetes.io/name").map(String::as_str),
        Some("observer"),
        "{what}: the patch adds to the labels"
    );
}

// ---------------------------------------------------------------------------
// RBAC: the ClusterRole against the calls the reflectors really make.

/// (verb, API group, resource) of every request the fake API server saw.
type Calls = Arc<Mutex<BTreeSet<(String, String, String)>>>;

/// What a request asks, in RBAC's terms.
fn rbac_request(method: &str, path: &str, query: &str) -> (String, String, String) {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, rest) = match segs.as_slice() {
        ["api", _version, rest @ ..] => ("", rest),
        ["apis", group, _version, rest @ ..] => (*group, rest),
        // Discovery and other non-resource URLs.
        _ => return (method.to_lowercase(), "(non-resource)".into(), path.into()),
    };
    let (resource, name) = match rest {
        ["namespaces", _ns, resource, rest @ ..] => (*resource, rest.first()),
        [resource, rest @ ..] => (*resource, rest.first()),
        [] => return ("get".into(), "(discovery)".into(), path.into()),
    };
    let watch = query
        .split('&')
        .any(|kv| kv == "watch=true" || kv == "watch=1");
    let verb = match (method, name.is_some(), watch) {
        ("GET", _, true) => "watch",
        ("GET", true, false) => "get",
        ("GET", false, false) => "list",
        ("POST", ..) => "create",
        ("PUT", ..) => "update",
        ("PATCH", ..) => "patch",
        ("DELETE", ..) => "delete",
        _ => "unknown",
    };
    (verb.into(), group.into(), resource.into())
}

fn list_kind(resource: &str) -> &'static str {
    match resource {
        "pods" => "PodList",
        "nodes" => "NodeList",
        "services" => "ServiceList",
        "endpointslices" => "EndpointSliceList",
        "replicasets" => "ReplicaSetList",
        "jobs" => "JobList",
        "ippools" => "IPPoolList",
        "blockaffinities" => "BlockAffinityList",
        "ipamblocks" => "IPAMBlockList",
        _ => "List",
    }
}

async fn fake_api(
    axum::extract::State(calls): axum::extract::State<Calls>,
    method: axum::http::Method,
    uri: axum::http::Uri,
) -> axum::response::Response {
    use axum::{body::Body, http::header, response::IntoResponse as _};
    let query = uri.query().unwrap_or("");
    let (verb, group, resource) = rbac_request(method.as_str(), uri.path(), query);
    calls
        .lock()
        .unwrap()
        .insert((verb.clone(), group.clone(), resource.clone()));
    let version = uri
        .path()
        .split('/')
        .nth(if group.is_empty() { 2 } else { 3 });
    let api_version = match (group.as_str(), version) {
        ("", Some(v)) => v.to_owned(),
        (g, Some(v)) => format!("{g}/{v}"),
        _ => "v1".into(),
    };
    match verb.as_str() {
        "list" => axum::Json(serde_json::json!({
            "apiVersion": api_version,
            "kind": list_kind(&resource),
            "metadata": {"resourceVersion": "1"},
            "items": [],
        }))
        .into_response(),
        "watch" => {
            // No events; held open a while, as an idle watch is.
            let stream = futures::stream::once(async {
                tokio::time::sleep(Duration::from_secs(3)).await;
                Ok::<_, std::convert::Infallible>(axum::body::Bytes::new())
            });
            (
                [(header::CONTENT_TYPE, "application/json")],
                Body::from_stream(stream),
            )
                .into_response()
        }
        _ => (
            axum::http::StatusCode::FORBIDDEN,
            axum::Json(serde_json::json!({
                "kind": "Status", "apiVersion": "v1", "status": "Failure",
                "reason": "Forbidden", "code": 403,
                "message": format!("{verb} {group}/{resource}: not for an observer"),
            })),
        )
            .into_response(),
    }
}

/// What a ClusterRole grants, as (verb, group, resource).
fn grants(role: &ClusterRole) -> BTreeSet<(String, String, String)> {
    let mut out = BTreeSet::new();
    for rule in role.rules.iter().flatten() {
        assert!(
            rule.resource_names.is_none() && rule.non_resource_urls.is_none(),
            "rules by resource name or URL are not expected: {rule:?}"
        );
        for verb in &rule.verbs {
            assert!(
                ["get", "list", "watch"].contains(&verb.as_str()),
                "the observer's ClusterRole is read-only; it grants {verb}"
            );
            for group in rule.api_groups.iter().flatten() {
                for resource in rule.resources.iter().flatten() {
                    for s in [verb, group, resource] {
                        assert!(!s.contains('*'), "no wildcards: {rule:?}");
                    }
                    out.insert((verb.clone(), group.clone(), resource.clone()));
                }
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_role_grants_exactly_what_the_reflectors_call() {
    let calls: Calls = Arc::default();
    let app = axum::Router::new()
        .fallback(fake_api)
        .with_state(calls.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let config = kube::Config::new(format!("http://{address}").parse().unwrap());
    let client = kube::Client::try_from(config).expect("a client for the fake API server");
    let changed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let _stores = observer::sources::kube::start_with(client, changed)
        .await
        .expect("starting the reflectors");

    // Until every resource listed has been watched too, and nothing new
    // came for a while.
    let deadline = Instant::now() + Duration::from_secs(20);
    let (mut last, mut stable_since) = (BTreeSet::new(), Instant::now());
    let seen = loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = calls.lock().unwrap().clone();
        if now != last {
            (last, stable_since) = (now.clone(), Instant::now());
        }
        let listed: BTreeSet<_> = now
            .iter()
            .filter(|c| c.0 == "list")
            .map(|c| (&c.1, &c.2))
            .collect();
        let watched: BTreeSet<_> = now
            .iter()
            .filter(|c| c.0 == "watch")
            .map(|c| (&c.1, &c.2))
            .collect();
        if !listed.is_empty()
            && listed == watched
            && stable_since.elapsed() > Duration::from_millis(1500)
        {
            break now;
        }
        assert!(
            Instant::now() < deadline,
            "the reflectors did not settle: {now:?}"
        );
    };
    server.abort();

    // The reflectors watch what the code says it watches.
    let watched: BTreeSet<(String, String)> = observer::sources::kube::WATCHED
        .iter()
        .map(|(g, _, r)| (g.to_string(), r.to_string()))
        .collect();
    let called: BTreeSet<(String, String)> = seen
        .iter()
        .map(|(_, g, r)| (g.clone(), r.clone()))
        .collect();
    assert_eq!(called, watched, "the reflectors' calls and kube::WATCHED");

    let role_path = kube_dir().join("base/clusterrole.yaml");
    let docs = yaml_docs(&role_path);
    let role: ClusterRole = strict(&docs[0], &role_path.display().to_string());
    let granted = grants(&role);
    let missing: Vec<_> = seen.difference(&granted).collect();
    let unused: Vec<_> = granted.difference(&seen).collect();
    assert!(
        missing.is_empty() && unused.is_empty(),
        "the ClusterRole and the daemon disagree.\n  called but not granted: {missing:?}\n  granted but never called: {unused:?}"
    );
    eprintln!(
        "the reflectors made {} kinds of call, all granted: {seen:?}",
        seen.len()
    );
}

// ---------------------------------------------------------------------------
// The image.

/// Dockerfile instructions: (keyword, arguments), continuation lines joined.
fn dockerfile() -> Vec<(String, String)> {
    let text = read(&repo().join("deploy/Dockerfile"));
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let t = line.trim();
        if current.is_empty() && (t.is_empty() || t.starts_with('#')) {
            continue;
        }
        if let Some(cont) = t.strip_suffix('\\') {
            current.push_str(cont);
            current.push(' ');
            continue;
        }
        current.push_str(t);
        let (kw, rest) = current
            .split_once(char::is_whitespace)
            .unwrap_or((&current, ""));
        out.push((kw.to_uppercase(), rest.trim().to_owned()));
        current.clear();
    }
    out
}

#[test]
fn dockerfile_builds_what_the_repository_holds() {
    let ins = dockerfile();
    let stages: Vec<(usize, &str)> = ins
        .iter()
        .enumerate()
        .filter(|(_, (k, _))| k == "FROM")
        .map(|(i, (_, a))| (i, a.as_str()))
        .collect();
    assert!(stages.len() >= 2, "a multi-stage build: {stages:?}");
    let stage_name = |a: &str| {
        let w: Vec<&str> = a.split_whitespace().collect();
        match w.as_slice() {
            [_, as_, name] if as_.eq_ignore_ascii_case("as") => Some(name.to_string()),
            _ => None,
        }
    };
    let builder = stage_name(stages[0].1).expect("the first stage is named");
    let runtime_start = stages.last().unwrap().0;
    let (build, runtime) = ins.split_at(runtime_start);

    // The builder mirrors `cargo xtask setup`: nightly rust-src and the
    // same bpf-linker, built against the nightly's LLVM.
    let setup = read(&repo().join("xtask/src/setup.rs"));
    let linker_version = setup
        .split("BPF_LINKER_VERSION: &str = \"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .expect("xtask's bpf-linker version");
    let all = |k: &str| -> Vec<&str> {
        build
            .iter()
            .filter(|(kw, _)| kw == k)
            .map(|(_, a)| a.as_str())
            .collect()
    };
    assert!(
        all("ARG")
            .iter()
            .any(|a| *a == format!("BPF_LINKER_VERSION={linker_version}")),
        "the Dockerfile's bpf-linker is xtask's {linker_version}"
    );
    let runs = all("RUN").join("\n");
    for needle in [
        "rust-src",
        "nightly",
        "cargo install bpf-linker",
        "LLVM_PREFIX",
        "--features \"llvm-$major\"",
        "cargo build --release",
        "-p observer",
    ] {
        assert!(runs.contains(needle), "builder RUN lacks {needle:?}");
    }
    // Every path copied from the build context exists.
    for a in all("COPY") {
        let words: Vec<&str> = a
            .split_whitespace()
            .filter(|w| !w.starts_with("--"))
            .collect();
        let (dest, sources) = words.split_last().expect("COPY args");
        assert!(!dest.is_empty());
        for s in sources {
            assert!(repo().join(s).exists(), "COPY {s}: not in the repository");
        }
    }
    // The workspace's members are all there (cargo needs every one).
    let ws = read(&repo().join("Cargo.toml"));
    let copied = all("COPY").join(" ");
    for member in ["observer", "observer-common", "observer-ebpf", "xtask"] {
        assert!(ws.contains(&format!("\"{member}\"")));
        assert!(
            copied.split_whitespace().any(|w| w == member),
            "workspace member {member} is not copied"
        );
    }

    // The runtime stage: only the binary, from the builder, as entrypoint.
    let copies: Vec<&str> = runtime
        .iter()
        .filter(|(k, _)| k == "COPY")
        .map(|(_, a)| a.as_str())
        .collect();
    assert_eq!(copies.len(), 1, "the runtime copies one thing: {copies:?}");
    let words: Vec<&str> = copies[0].split_whitespace().collect();
    assert_eq!(words[0], format!("--from={builder}"));
    let binary = *words.last().unwrap();
    let entry = runtime
        .iter()
        .find(|(k, _)| k == "ENTRYPOINT")
        .map(|(_, a)| a)
        .expect("ENTRYPOINT");
    let entry: Vec<String> = serde_json::from_str(entry).expect("ENTRYPOINT in exec form");
    assert_eq!(entry, [binary]);
    assert!(runtime.iter().any(|(k, a)| k == "EXPOSE" && a == "9477"));
    let ignore = read(&repo().join("deploy/Dockerfile.dockerignore"));
    assert!(ignore.lines().any(|l| l.trim() == "target/"));
}

// ---------------------------------------------------------------------------
// Dashboards.

/// The dashboards' stable uids: links and bookmarks depend on them.
const DASHBOARD_UIDS: &[&str] = &[
    "observer-encapsulation",
    "observer-health",
    "observer-overview",
    "observer-pods",
    "observer-services",
];

/// Metrics of docs/metrics.md with their labels (from its tables: names in
/// the first column, labels in the third).
fn documented_metrics() -> BTreeMap<String, BTreeSet<String>> {
    let doc = read(&repo().join("docs/metrics.md"));
    let ticked = |cell: &str| -> Vec<String> {
        cell.split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_owned)
            .collect()
    };
    let mut out = BTreeMap::new();
    for line in doc.lines().filter(|l| l.starts_with("| `observer_")) {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let labels: BTreeSet<String> = cells
            .get(3)
            .map(|c| ticked(c))
            .unwrap_or_default()
            .into_iter()
            .collect();
        for name in ticked(cells[1]) {
            out.insert(name, labels.clone());
        }
    }
    assert!(
        out.len() > 20,
        "docs/metrics.md: {} metrics found",
        out.len()
    );
    out
}

struct Dashboard {
    file: String,
    json: Value,
}

fn dashboards() -> Vec<Dashboard> {
    let dir = repo().join("deploy/grafana/dashboards");
    let mut out: Vec<Dashboard> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| Dashboard {
            file: p.file_name().unwrap().to_string_lossy().into_owned(),
            json: serde_json::from_str(&read(&p))
                .unwrap_or_else(|e| panic!("{}: not JSON: {e}", p.display())),
        })
        .collect();
    out.sort_by(|a, b| a.file.cmp(&b.file));
    out
}

/// Every panel, rows' nested panels included.
fn panels(d: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for p in d["panels"].as_array().into_iter().flatten() {
        out.push(p);
        out.extend(p["panels"].as_array().into_iter().flatten());
    }
    out
}

/// (panel title, expr) of every query of a dashboard.
fn exprs(d: &Value) -> Vec<(String, String)> {
    panels(d)
        .into_iter()
        .filter(|p| p["type"] != "row")
        .flat_map(|p| {
            p["targets"].as_array().into_iter().flatten().map(move |t| {
                (
                    p["title"].as_str().unwrap_or("").to_owned(),
                    t["expr"].as_str().unwrap_or("").to_owned(),
                )
            })
        })
        .collect()
}

/// (name, query) of the dashboard's query variables, in order.
fn variables(d: &Value) -> Vec<(String, String)> {
    d["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|v| v["type"] == "query")
        .map(|v| {
            let q = v["query"]["query"]
                .as_str()
                .or(v["query"].as_str())
                .unwrap_or("")
                .to_owned();
            (v["name"].as_str().unwrap().to_owned(), q)
        })
        .collect()
}

/// `label_values(selector, label)` as a PromQL query giving one series per
/// value.
fn label_values_query(q: &str) -> (String, String) {
    let inner = q
        .strip_prefix("label_values(")
        .and_then(|s| s.strip_suffix(')'))
        .unwrap_or_else(|| panic!("variable query {q:?}: label_values(selector, label) expected"));
    let (selector, label) = inner
        .rsplit_once(',')
        .expect("label_values(selector, label)");
    let label = label.trim().to_owned();
    (format!("count by ({label}) ({})", selector.trim()), label)
}

/// Identifiers in a PromQL expression outside string literals.
fn idents(expr: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let b = expr.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c == b'"' {
            i += 1;
            while i < b.len() && b[i] != b'"' {
                i += if b[i] == b'\\' { 2 } else { 1 };
            }
            i += 1;
        } else if c.is_ascii_alphabetic() || c == b'_' || c == b'$' {
            let start = i;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b'$') {
                i += 1;
            }
            out.push((start, expr[start..i].to_owned()));
        } else {
            i += 1;
        }
    }
    out
}

/// The label names an expression uses: in `{...}` matchers and in
/// `by`/`without`/`on`/`ignoring`/`group_left`/`group_right` lists.
fn labels_used(expr: &str) -> Vec<(Option<String>, String)> {
    let mut out = Vec::new();
    let ids = idents(expr);
    let mut metric: Option<String> = None;
    let mut depth_braces = false;
    let mut grouping = false;
    let mut last_end = 0;
    for (start, id) in &ids {
        // What lies between the previous identifier and this one.
        let between = &expr[last_end..*start];
        if between.contains('}') {
            depth_braces = false;
        }
        if between.contains(')') {
            grouping = false;
        }
        if depth_braces {
            out.push((metric.clone(), id.clone()));
        } else if grouping && between.trim_start().starts_with([',', '(']) {
            out.push((None, id.clone()));
        } else if id.starts_with("observer_") {
            metric = Some(id.clone());
        }
        let end = start + id.len();
        let rest = expr[end..].trim_start();
        if id.starts_with("observer_") && rest.starts_with('{') {
            depth_braces = true;
        }
        if [
            "by",
            "without",
            "on",
            "ignoring",
            "group_left",
            "group_right",
        ]
        .contains(&id.as_str())
            && rest.starts_with('(')
        {
            grouping = true;
        }
        last_end = end;
    }
    out
}

/// Strips a histogram's series suffix.
fn family(metric: &str, documented: &BTreeMap<String, BTreeSet<String>>) -> Option<String> {
    if documented.contains_key(metric) {
        return Some(metric.to_owned());
    }
    ["_bucket", "_sum", "_count"].iter().find_map(|s| {
        metric
            .strip_suffix(s)
            .filter(|f| documented.contains_key(*f))
            .map(str::to_owned)
    })
}

/// Labels every series has besides its own: the daemon's `node`, the
/// scrape's `job` and `instance`, histograms' `le`.
const COMMON_LABELS: &[&str] = &["node", "job", "instance", "le"];

/// What is wrong with an expression's metrics and labels, if anything.
fn check_expr(expr: &str, documented: &BTreeMap<String, BTreeSet<String>>) -> Result<(), String> {
    let mut metrics = BTreeSet::new();
    for (_, id) in idents(expr) {
        if id.starts_with("observer_") {
            let f = family(&id, documented)
                .ok_or_else(|| format!("metric {id} is not in docs/metrics.md"))?;
            metrics.insert(f);
        }
    }
    if metrics.is_empty() {
        return Err("uses no observer_ metric".into());
    }
    let all_labels: BTreeSet<&String> = metrics.iter().flat_map(|m| &documented[m]).collect();
    for (metric, label) in labels_used(expr) {
        if COMMON_LABELS.contains(&label.as_str()) {
            continue;
        }
        let ok = match &metric {
            Some(m) => family(m, documented).is_some_and(|f| documented[&f].contains(&label)),
            None => all_labels.contains(&label),
        };
        if !ok {
            return Err(format!(
                "label {label} is not documented for {}",
                metric.unwrap_or_else(|| format!("{metrics:?}"))
            ));
        }
    }
    Ok(())
}

#[test]
fn label_extraction_sees_matchers_and_groupings() {
    let used = labels_used(
        r#"sum by (node, direction) (rate(observer_pod_bytes_total{node=~"$node", pod="a,b{c}"}[1m])) / ignoring (backend) group_left sum(observer_x)"#,
    );
    let names: Vec<&str> = used.iter().map(|(_, l)| l.as_str()).collect();
    assert_eq!(names, ["node", "direction", "node", "pod", "backend"]);
    let docs = documented_metrics();
    assert!(check_expr("rate(observer_pod_bytes_total{podd=\"x\"}[1m])", &docs).is_err());
    assert!(check_expr("rate(observer_nope_total[1m])", &docs).is_err());
    assert!(check_expr("sum by (nope) (observer_flows_tracked)", &docs).is_err());
    assert!(check_expr("histogram_quantile(0.9, sum by (le) (rate(observer_poll_duration_seconds_bucket[1m])))", &docs).is_ok());
}

#[test]
fn dashboards_query_only_documented_metrics_through_the_datasource_variable() {
    let documented = documented_metrics();
    let ds = serde_json::json!({"type": "prometheus", "uid": "${datasource}"});
    let mut uids = Vec::new();
    let mut count = 0;
    for d in dashboards() {
        let (f, j) = (&d.file, &d.json);
        let uid = j["uid"].as_str().unwrap_or_else(|| panic!("{f}: no uid"));
        assert!(
            uid.len() <= 40
                && uid
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'),
            "{f}: uid {uid:?}"
        );
        uids.push(uid.to_owned());
        assert!(
            j["schemaVersion"].as_u64().unwrap_or(0) >= 36,
            "{f}: schemaVersion"
        );
        assert!(j["title"].as_str().is_some_and(|t| !t.is_empty()));

        // Variables: a Prometheus data source, then nodes from build info.
        let list = j["templating"]["list"].as_array().expect("templating");
        let dsv = list
            .iter()
            .find(|v| v["name"] == "datasource")
            .expect("datasource variable");
        assert_eq!(
            (dsv["type"].as_str(), dsv["query"].as_str()),
            (Some("datasource"), Some("prometheus")),
            "{f}"
        );
        let vars = variables(j);
        assert_eq!(
            vars.first().map(|(n, q)| (n.as_str(), q.as_str())),
            Some(("node", "label_values(observer_build_info, node)")),
            "{f}: the node variable"
        );
        let mut defined: BTreeSet<String> =
            ["datasource", "__rate_interval", "__interval", "__range"]
                .map(str::to_owned)
                .into();
        for v in list {
            if v["type"] == "query" {
                assert_eq!(v["datasource"], ds, "{f}: variable {}", v["name"]);
            }
            defined.insert(v["name"].as_str().unwrap().to_owned());
        }
        for (name, q) in &vars {
            let (promql, _) = label_values_query(q);
            check_expr(&promql, &documented)
                .unwrap_or_else(|e| panic!("{f}: variable {name}: {e}"));
        }

        let mut ids = BTreeSet::new();
        for p in panels(j) {
            assert!(
                ids.insert(p["id"].as_u64().expect("panel id")),
                "{f}: duplicate panel id"
            );
            assert!(p["gridPos"].is_object());
            if p["type"] == "row" {
                continue;
            }
            let title = p["title"].as_str().unwrap_or("");
            assert_eq!(p["datasource"], ds, "{f}: panel {title}");
            let targets = p["targets"].as_array().filter(|t| !t.is_empty());
            for t in targets.unwrap_or_else(|| panic!("{f}: panel {title} has no query")) {
                assert_eq!(t["datasource"], ds, "{f}: panel {title}");
                let expr = t["expr"].as_str().unwrap_or("");
                assert!(!expr.trim().is_empty(), "{f}: panel {title}: empty expr");
                check_expr(expr, &documented)
                    .unwrap_or_else(|e| panic!("{f}: panel {title}: {e}\n  {expr}"));
                for (_, id) in idents(expr) {
                    if let Some(var) = id.strip_prefix('$') {
                        assert!(
                            defined.contains(var),
                            "{f}: panel {title}: undefined ${var}"
                        );
                    }
                }
                count += 1;
            }
        }
    }
    uids.sort();
    assert_eq!(
        uids, DASHBOARD_UIDS,
        "the dashboards' uids are stable and unique"
    );
    eprintln!("{count} panel queries checked");

    // Provisioning: a file provider, and a Prometheus data source example.
    let prov = yaml_docs(&repo().join("deploy/grafana/provisioning/dashboards.yaml"));
    assert_eq!(prov[0]["providers"][0]["type"], "file");
    let dsp = yaml_docs(&repo().join("deploy/grafana/provisioning/datasources.yaml"));
    assert_eq!(dsp[0]["datasources"][0]["type"], "prometheus");
}

// ---------------------------------------------------------------------------
// Live: every dashboard query against a real Prometheus scraping the lab.

/// Substitutes `$name` and `${name}` (longest names first).
fn substitute(expr: &str, values: &BTreeMap<String, String>) -> String {
    let mut names: Vec<&String> = values.keys().collect();
    names.sort_by_key(|n| std::cmp::Reverse(n.len()));
    let mut out = expr.to_owned();
    for n in names {
        out = out
            .replace(&format!("${{{n}}}"), &values[n])
            .replace(&format!("${n}"), &values[n]);
    }
    out
}

#[test]
fn every_dashboard_query_returns_data_from_the_lab() {
    use common::{lab::TestLab, prometheus::Prometheus};
    let lab = TestLab::up(&[], &[]);
    let status = lab.status_json();
    let nodes = status["nodes"].as_array().expect("nodes");
    let urls: Vec<String> = nodes
        .iter()
        .map(|n| {
            n["metrics_url"]
                .as_str()
                .unwrap_or_else(|| {
                    panic!(
                        "`observer lab status -o json` gives no metrics_url per node (issue 6): {n}"
                    )
                })
                .to_owned()
        })
        .collect();
    let underlay = format!("{}-underlay", lab.name);
    let mut targets = Vec::new();
    let mut path = None;
    for u in &urls {
        let (address, p) = common::prometheus::split_url(u).unwrap();
        targets.push(address.to_string());
        assert!(path.as_ref().is_none_or(|q| *q == p), "one metrics path");
        path = Some(p);
        // Each scrape is clean for promtool.
        let text = common::prometheus::fetch(Some(&underlay), u).unwrap();
        common::prometheus::check_metrics(&text).unwrap_or_else(|e| panic!("{u}: {e}"));
    }
    let prom = Prometheus::start_with(Some(&underlay), &targets, &path.unwrap());

    // The MTU problem the encapsulation dashboard shows: a pod (and its
    // host side) at 1500 over a 1450-byte tunnel, pinging with DF set.
    let pod = |n: &str| -> Value {
        status["pods"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == n)
            .unwrap_or_else(|| panic!("no pod {n}"))
            .clone()
    };
    let (src, dst) = (pod("node1-pod1"), pod("node2-pod1"));
    let src_ns = src["netns"].as_str().unwrap().to_owned();
    let dst_ip = dst["ips"][0].as_str().unwrap().to_owned();
    for (ns, dev) in [
        (src_ns.as_str(), "eth0"),
        (
            nodes[0]["netns"].as_str().unwrap(),
            src["interface"].as_str().unwrap(),
        ),
    ] {
        common::sh(&["ip", "-n", ns, "link", "set", dev, "mtu", "1500"]);
    }
    // DF set (`-M do`): the node answers fragmentation-needed and the pod
    // caches the path MTU, so flush that cache to send another one.
    let too_big = || {
        let _ = Command::new("ip")
            .args(["-n", &src_ns, "route", "flush", "cache"])
            .output();
        let out = Command::new("ip")
            .args(["netns", "exec", &src_ns, "ping", "-M", "do", "-s", "1460"])
            .args(["-c", "1", "-W", "1", &dst_ip])
            .output()
            .expect("ping");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("Frag needed"),
            "no fragmentation-needed for a 1488-byte packet into a 1450-byte tunnel: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    };

    // Traffic twice, a few scrapes apart, so that every rate has two
    // samples of every series.
    // `lab traffic` reaches app2 through its VIP, and DNAT picks the
    // backend at random: also send straight to every app2 endpoint (its
    // `dns` target port), so that each node's backend panels have data.
    let plan = observer::lab::state::load(&lab.name).expect("lab state");
    let to_each_backend = || {
        let app2 = plan.services.iter().find(|s| s.name == "app2").unwrap();
        let dns = app2.ports.iter().find(|p| p.protocol == "UDP").unwrap();
        let client = plan.pods.iter().find(|p| p.name == "node1-pod1").unwrap();
        for backend in plan.pods.iter().filter(|p| app2.backends.contains(&p.name)) {
            observer::lab::traffic::udp(
                client,
                client.ips[0],
                backend,
                backend.ips[0],
                dns.target_port,
                5,
                100,
            )
            .expect("UDP to a backend");
        }
    };
    for _ in 0..2 {
        lab.traffic();
        to_each_backend();
        too_big();
        prom.wait_scrapes(3, Duration::from_secs(30));
    }

    let values = |extra: &[(&str, &str)]| -> BTreeMap<String, String> {
        let mut m: BTreeMap<String, String> = [
            ("__rate_interval", "30s"),
            ("__interval", "5s"),
            ("__range", "2m"),
        ]
        .iter()
        .chain(extra)
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        m.insert("datasource".into(), "prometheus".into());
        m
    };
    let mut failures = Vec::new();
    let mut evaluated = 0;
    for d in dashboards() {
        // Each variable takes the first value its own query gives, as
        // Grafana shows a dashboard first; later variables see earlier ones.
        let mut vals = values(&[]);
        for (name, q) in variables(&d.json) {
            let (promql, label) = label_values_query(&substitute(&q, &vals));
            let found: BTreeSet<String> = prom
                .query_result(&promql)
                .unwrap_or_else(|e| panic!("{}: variable {name}: {promql}: {e}", d.file))
                .iter()
                .map(|s| s.label(&label).to_owned())
                .filter(|v| !v.is_empty())
                .collect();
            let first = found.into_iter().next().unwrap_or_else(|| {
                failures.push(format!(
                    "{}: variable {name} has no value: {promql}",
                    d.file
                ));
                "none".into()
            });
            assert!(
                first
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
                "{name}={first}: would need regex escaping"
            );
            vals.insert(name, first);
        }
        eprintln!(
            "{}: {:?}",
            d.file,
            vals.iter()
                .filter(|(k, _)| !k.starts_with("__") && *k != "datasource")
                .collect::<Vec<_>>()
        );
        for (title, expr) in exprs(&d.json) {
            let q = substitute(&expr, &vals);
            evaluated += 1;
            match prom.query_result(&q) {
                Ok(s) if !s.is_empty() => {}
                Ok(_) => failures.push(format!("{} / {title}: no data\n    {q}", d.file)),
                Err(e) => failures.push(format!("{} / {title}: {e}\n    {q}", d.file)),
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {evaluated} dashboard queries failed against the lab:\n  {}",
        failures.len(),
        failures.join("\n  ")
    );
    eprintln!("{evaluated} dashboard queries returned data");
}
