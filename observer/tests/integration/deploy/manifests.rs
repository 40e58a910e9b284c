//! The Kubernetes manifests as `kubectl apply -k` sees them: every variant
//! rendered by kubectl's own kustomize, each object parsed strictly into its
//! API type (the first field it would lose named), and what the DaemonSet
//! tells the daemon checked against the daemon's own defaults and argument
//! parser.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    process::Command,
};

use k8s_openapi::{
    api::{
        apps::v1::DaemonSet,
        core::v1::{Container, Namespace, Service, ServiceAccount},
        rbac::v1::{ClusterRole, ClusterRoleBinding},
    },
    apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta},
};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{kube_dir, read, repo, strict, yaml_docs};

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

/// The objects of a rendered kustomization, by kind, each parsed strictly.
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

/// The parts of a `kustomization.yaml` this test reads: kustomize itself
/// rejects unknown fields when it renders.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Kustomization {
    kind: String,
    #[serde(default)]
    resources: Vec<String>,
    #[serde(default)]
    patches: Vec<KustomizePatch>,
}

#[derive(Deserialize)]
struct KustomizePatch {
    /// A patch file; an inline patch (`patch: |-`) has none.
    path: Option<String>,
}

fn kustomization(dir: &Path) -> Kustomization {
    let path = dir.join("kustomization.yaml");
    let docs = yaml_docs(&path);
    assert_eq!(docs.len(), 1, "{}: one document", path.display());
    serde_json::from_value(docs[0].clone()).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
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

/// `kubectl version --client`, on one line (for failure messages).
fn kubectl_version() -> String {
    Command::new("kubectl")
        .args(["version", "--client"])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .trim()
                .replace('\n', ", ")
        })
        .unwrap_or_default()
}

/// `kubectl kustomize DIR`: the objects `kubectl apply -k DIR` applies.
fn kustomize(dir: &Path) -> Vec<Value> {
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(dir)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "kubectl: {e}. The manifests are rendered as `kubectl apply -k` renders them, \
                 by kubectl's kustomize: `cargo xtask setup` installs kubectl"
            )
        });
    assert!(
        out.status.success(),
        "kubectl kustomize {}: {}\n  ({}; Components need kustomize v3.7 or later)",
        dir.display(),
        String::from_utf8_lossy(&out.stderr).trim(),
        kubectl_version()
    );
    let text = String::from_utf8(out.stdout).expect("kubectl's output is UTF-8");
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|doc| Value::deserialize(doc).expect("kubectl's output is YAML"))
        .filter(|v| !v.is_null())
        .collect()
}

/// The objects of a kustomization as kubectl renders them, each parsed
/// strictly.
fn objects(dir: &Path) -> Objects {
    let mut o = Objects::default();
    for (i, doc) in kustomize(dir).iter().enumerate() {
        o.add(
            doc,
            &format!(
                "kubectl kustomize {} object {i} ({} {})",
                dir.display(),
                doc["kind"],
                doc["metadata"]["name"]
            ),
        );
    }
    o
}

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
    for doc in kustomize(&kube_dir()) {
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
    assert_eq!(kustomization(&component).kind, "Component");
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
/// its resources or one of its patches: nothing lies around unchecked; and
/// every directory renders, its objects parsing strictly.
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
    for d in dirs {
        assert!(
            d.join("kustomization.yaml").exists(),
            "{}: no kustomization",
            d.display()
        );
        let k = kustomization(&d);
        let used: BTreeSet<String> = k
            .resources
            .into_iter()
            .filter(|r| d.join(r).is_file())
            .chain(k.patches.into_iter().filter_map(|p| p.path))
            .collect();
        assert_eq!(
            used,
            files_of(&d),
            "{}: the kustomization must list every file of its directory",
            d.display()
        );
        objects(&d);
    }
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

/// The README's own kustomization renders into a whole installation whose
/// PodMonitor carries the `release` label.
#[test]
fn the_readmes_kustomization_renders() {
    // As a user writes it next to a checkout (`../observer/`): kustomize
    // takes only relative paths to bases.
    let dir = std::env::temp_dir().join(format!("observer-deploy-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let dir = dir.canonicalize().unwrap();
    let up = "../".repeat(dir.components().count() - 1);
    let root = repo().canonicalize().unwrap();
    let root = root.strip_prefix("/").unwrap();
    let yaml = readme_kustomization().replace("../observer/", &format!("{up}{}/", root.display()));
    std::fs::write(dir.join("kustomization.yaml"), &yaml).unwrap();
    let rendered = std::panic::catch_unwind(|| objects(&dir));
    std::fs::remove_dir_all(&dir).unwrap();
    let o = rendered.unwrap_or_else(|e| std::panic::resume_unwind(e));
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
