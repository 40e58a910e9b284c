//! Configuration of the daemon (`observer run`): flags and environment
//! variables with the same names, validated at start.

use std::{path::PathBuf, time::Duration};

use anyhow::{Context as _, Result, bail};
use clap::Args;
use observer_common::{DEFAULT_FLOW_CAPACITY, Encap};

use crate::{
    datapath::{attach::AttachMode, links::LinkInfoView},
    flows::InterfaceKind,
};

pub const DEFAULT_SOCKET: &str = "/run/observer/observer.sock";

#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    /// A YAML file of settings named like these flags (`poll-interval: 5s`,
    /// lists as YAML lists); flags and environment variables override it.
    #[arg(long, env = "OBSERVER_CONFIG")]
    pub config: Option<PathBuf>,

    /// Unix socket of the JSON API (created with mode 0600).
    #[arg(long, env = "OBSERVER_SOCKET", default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,

    /// Name patterns (glob) of Calico workload interfaces; like Felix's
    /// FELIX_INTERFACEPREFIX, comma-separated.
    #[arg(
        long,
        env = "OBSERVER_POD_INTERFACES",
        value_delimiter = ',',
        default_value = "cali*"
    )]
    pub pod_interfaces: Vec<String>,

    /// Name patterns (glob) of tunnel devices, comma-separated.
    #[arg(
        long,
        env = "OBSERVER_TUNNEL_INTERFACES",
        value_delimiter = ',',
        default_value = "tunl0,vxlan.calico,vxlan-v6.calico,wireguard.cali,wg-v6.cali"
    )]
    pub tunnel_interfaces: Vec<String>,

    /// Name patterns (glob) of underlay NICs to watch too (encapsulation is
    /// then read from outer headers), comma-separated; none by default.
    #[arg(long, env = "OBSERVER_UNDERLAY", value_delimiter = ',')]
    pub underlay: Vec<String>,

    /// How often to read the kernel maps.
    #[arg(long, env = "OBSERVER_POLL_INTERVAL", default_value = "2s", value_parser = humantime::parse_duration)]
    pub poll_interval: Duration,

    /// Flows without packets for this long are evicted from the kernel map
    /// (their counts are kept).
    #[arg(long, env = "OBSERVER_IDLE_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration)]
    pub idle_timeout: Duration,

    /// Evicted flows stay visible in the API for this long.
    #[arg(long, env = "OBSERVER_RETAIN", default_value = "10m", value_parser = humantime::parse_duration)]
    pub retain: Duration,

    /// Slots in the kernel flow map (preallocated; about 200 bytes each).
    #[arg(long, env = "OBSERVER_FLOW_CAPACITY", default_value_t = DEFAULT_FLOW_CAPACITY)]
    pub flow_capacity: u32,

    /// How to attach to interfaces.
    #[arg(long, env = "OBSERVER_ATTACH_MODE", value_enum, default_value = "auto")]
    pub attach_mode: AttachMode,

    /// This node's Kubernetes name (the DaemonSet passes it from the
    /// downward API).
    #[arg(long, env = "NODE_NAME")]
    pub node_name: Option<String>,

    /// Read names from the Kubernetes API: `auto` when a service account or
    /// kubeconfig is there, `always` (fail without one), or `never`.
    #[arg(long, env = "OBSERVER_KUBERNETES", value_enum, default_value = "auto")]
    pub kubernetes: KubeMode,

    /// A directory of Kubernetes objects as `kubectl get ... -o json`
    /// prints them (Pods, Nodes), read for names; re-read when it changes.
    #[arg(long, env = "OBSERVER_OBJECTS_DIR")]
    pub objects_dir: Option<PathBuf>,

    /// Where to serve `/metrics`, `/healthz` and `/readyz` (HTTP); `off` to
    /// serve none.
    #[arg(long, env = "OBSERVER_METRICS_ADDRESS", default_value = DEFAULT_METRICS_ADDRESS)]
    pub metrics_address: ListenAddress,

    /// Also serve the JSON API over TCP here (it has no authentication:
    /// keep it on loopback); by default only the Unix socket.
    #[arg(long, env = "OBSERVER_API_ADDRESS")]
    pub api_address: Option<std::net::SocketAddr>,

    /// How finely metrics name pods: `pod`, `workload` (pods of one
    /// Deployment, StatefulSet, ... share a series) or `namespace`.
    #[arg(
        long,
        env = "OBSERVER_METRICS_GRANULARITY",
        value_enum,
        default_value = "workload"
    )]
    pub metrics_granularity: Granularity,

    /// Dimensions of the flow metrics to keep, comma-separated, out of
    /// `protocol,port,service,encap`; the others are left empty.
    #[arg(
        long,
        env = "OBSERVER_METRICS_DIMENSIONS",
        value_delimiter = ',',
        default_value = "protocol,port,service,encap"
    )]
    pub metrics_dimensions: Vec<Dimension>,

    /// Most series of each flow metric family; traffic of further label
    /// sets is folded into one series whose labels are all `other`.
    #[arg(long, env = "OBSERVER_METRICS_MAX_SERIES", default_value_t = 10_000)]
    pub metrics_max_series: usize,

    /// BIRD's control socket for IPv4 (calico-node's `bird.ctl`).
    #[arg(
        long,
        env = "OBSERVER_BIRD_SOCKET",
        default_value = "/var/run/calico/bird.ctl"
    )]
    pub bird_socket: PathBuf,

    /// BIRD's control socket for IPv6 (calico-node's `bird6.ctl`).
    #[arg(
        long,
        env = "OBSERVER_BIRD6_SOCKET",
        default_value = "/var/run/calico/bird6.ctl"
    )]
    pub bird6_socket: PathBuf,

    /// The node's CNI configuration directory (`*.conflist`).
    #[arg(long, env = "OBSERVER_CNI_DIR", default_value = "/etc/cni/net.d")]
    pub cni_dir: PathBuf,

    /// Where to pin the maps and TCX links on the BPF file system, so that
    /// counting goes on while no daemon runs and the next daemon (a
    /// restart, an upgrade) takes over; `none` to pin nothing and detach
    /// at exit. `observer cleanup` removes what is pinned.
    #[arg(long, env = "OBSERVER_PIN_PATH", default_value = DEFAULT_PIN_PATH)]
    pub pin_path: PinPath,

    /// Where the daemon saves its counts (at exit and every 30 s) for the
    /// next daemon to go on from; used only with --pin-path.
    #[arg(long, env = "OBSERVER_STATE_FILE", default_value = DEFAULT_STATE_FILE)]
    pub state_file: PathBuf,
}

pub const DEFAULT_PIN_PATH: &str = "/sys/fs/bpf/observer";
pub const DEFAULT_STATE_FILE: &str = "/run/observer/state";

/// A directory on the BPF file system, or `none`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PinPath(pub Option<PathBuf>);

impl std::str::FromStr for PinPath {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "none" => Ok(Self(None)),
            p if p.starts_with('/') => Ok(Self(Some(PathBuf::from(p)))),
            p => Err(format!(
                "{p:?} is not an absolute path: use a directory on the BPF file system such \
                 as {DEFAULT_PIN_PATH}, or `none`"
            )),
        }
    }
}

pub const DEFAULT_METRICS_ADDRESS: &str = "0.0.0.0:9477";

/// A TCP address to listen on, or `off`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListenAddress(pub Option<std::net::SocketAddr>);

impl std::str::FromStr for ListenAddress {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        if s == "off" {
            return Ok(Self(None));
        }
        s.parse().map(|a| Self(Some(a))).map_err(|_| {
            format!("{s:?} is not an address: use IP:PORT such as 0.0.0.0:9477, or `off`")
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Granularity {
    Pod,
    Workload,
    Namespace,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Dimension {
    Protocol,
    Port,
    Service,
    Encap,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum KubeMode {
    Auto,
    Always,
    Never,
}

/// Which interfaces to attach to, and as what.
pub struct InterfaceSelector {
    pod: Vec<glob::Pattern>,
    tunnel: Vec<glob::Pattern>,
    underlay: Vec<glob::Pattern>,
}

fn patterns(what: &str, list: &[String]) -> Result<Vec<glob::Pattern>> {
    list.iter()
        .filter(|p| !p.is_empty())
        .map(|p| {
            glob::Pattern::new(p)
                .with_context(|| format!("bad {what} pattern {p:?}: use a glob such as `cali*`"))
        })
        .collect()
}

impl InterfaceSelector {
    pub fn new(args: &RunArgs) -> Result<Self> {
        Ok(Self {
            pod: patterns("--pod-interfaces", &args.pod_interfaces)?,
            tunnel: patterns("--tunnel-interfaces", &args.tunnel_interfaces)?,
            underlay: patterns("--underlay", &args.underlay)?,
        })
    }

    /// The kind of a link we should attach to, or `None` to leave it alone.
    pub fn classify(&self, link: &LinkInfoView) -> Option<InterfaceKind> {
        let m = |ps: &[glob::Pattern]| ps.iter().any(|p| p.matches(&link.name));
        if m(&self.pod) {
            Some(InterfaceKind::Pod)
        } else if m(&self.tunnel) {
            Some(InterfaceKind::Tunnel(
                link.tunnel.unwrap_or_else(|| encap_by_name(&link.name)),
            ))
        } else if m(&self.underlay) {
            Some(InterfaceKind::Underlay)
        } else {
            None
        }
    }
}

/// Calico's device names, for tunnel devices whose link kind did not say.
fn encap_by_name(name: &str) -> Encap {
    if name.starts_with("vxlan") {
        Encap::Vxlan
    } else if name.starts_with("wireguard") || name.starts_with("wg") {
        Encap::Wireguard
    } else {
        Encap::Ipip
    }
}

impl RunArgs {
    /// Calico's interface prefix (FELIX_INTERFACEPREFIX), from the first pod
    /// interface pattern: the part before any wildcard.
    pub fn interface_prefix(&self) -> String {
        let first = self
            .pod_interfaces
            .first()
            .map(String::as_str)
            .unwrap_or("cali");
        first
            .split(['*', '?', '['])
            .next()
            .unwrap_or("cali")
            .to_owned()
    }

    pub fn validate(&self) -> Result<()> {
        if let Some(dir) = &self.objects_dir
            && !dir.is_dir()
        {
            bail!("--objects-dir {} is not a directory", dir.display());
        }
        if self.flow_capacity < 1024 {
            bail!(
                "--flow-capacity {} is too small: use at least 1024",
                self.flow_capacity
            );
        }
        if self.poll_interval < Duration::from_millis(100) {
            bail!("--poll-interval must be at least 100ms");
        }
        if self.idle_timeout < self.poll_interval {
            bail!("--idle-timeout must be at least --poll-interval");
        }
        InterfaceSelector::new(self)?;
        Ok(())
    }
}

/// The `run` arguments with the config file applied: a flag wins over its
/// environment variable, which wins over the file, which wins over the
/// default. `argv` is the command line after `run`.
pub fn with_config_file(args: RunArgs, argv: &[std::ffi::OsString]) -> Result<RunArgs> {
    let Some(path) = &args.config else {
        return Ok(args);
    };
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the config file {}", path.display()))?;
    let settings: serde_yaml_ng::Mapping = if text.trim().is_empty() {
        Default::default()
    } else {
        serde_yaml_ng::from_str(&text).with_context(|| {
            format!(
                "config file {}: expected a YAML mapping of settings",
                path.display()
            )
        })?
    };
    let command = <RunArgs as Args>::augment_args(clap::Command::new("run"));
    // Which settings the command line or the environment already gave.
    let given = command
        .clone()
        .try_get_matches_from(std::iter::once("run".into()).chain(argv.iter().cloned()))
        .with_context(|| "parsing the command line".to_string())?;
    let mut from_file: Vec<std::ffi::OsString> = Vec::new();
    for (key, value) in &settings {
        let key = key.as_str().with_context(|| {
            format!(
                "config file {}: keys must be strings, got {key:?}",
                path.display()
            )
        })?;
        let id = key.replace('-', "_");
        let Some(arg) = command.get_arguments().find(|a| a.get_id() == id.as_str()) else {
            let known: Vec<String> = command
                .get_arguments()
                .filter_map(|a| a.get_long().map(str::to_owned))
                .filter(|k| k != "config" && k != "help")
                .collect();
            bail!(
                "config file {}: unknown setting `{key}`; the settings are {}",
                path.display(),
                known.join(", ")
            );
        };
        if key == "config" {
            bail!(
                "config file {}: `config` cannot be set in a config file",
                path.display()
            );
        }
        use clap::parser::ValueSource;
        if matches!(
            given.value_source(&id),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        ) {
            continue;
        }
        let value = yaml_setting(value)
            .with_context(|| format!("config file {}: setting `{key}`", path.display()))?;
        from_file.push(format!("--{}", arg.get_long().unwrap_or(key)).into());
        from_file.push(value.into());
    }
    let all = std::iter::once("run".into())
        .chain(from_file)
        .chain(argv.iter().cloned());
    let matches = command
        .try_get_matches_from(all)
        .map_err(|e| anyhow::anyhow!("config file {}: {}", path.display(), e.render()))?;
    Ok(<RunArgs as clap::FromArgMatches>::from_arg_matches(
        &matches,
    )?)
}

/// A setting as its flag's text: scalars as they are, lists comma-joined.
fn yaml_setting(v: &serde_yaml_ng::Value) -> Result<String> {
    use serde_yaml_ng::Value;
    Ok(match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Sequence(items) => items
            .iter()
            .map(yaml_setting)
            .collect::<Result<Vec<_>>>()?
            .join(","),
        other => bail!("expected a string, number or list, got {other:?}"),
    })
}

#[cfg(test)]
mod tests {
    use std::ffi::OsString;

    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        run: RunArgs,
    }

    /// Parses `argv` as `observer run` would, then applies the config file.
    fn parse(argv: &[&str]) -> Result<RunArgs> {
        let args = Cli::try_parse_from(std::iter::once("run").chain(argv.iter().copied()))?.run;
        let argv: Vec<OsString> = argv.iter().map(OsString::from).collect();
        with_config_file(args, &argv)
    }

    fn file(text: &str) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), text).unwrap();
        f
    }

    #[test]
    fn the_file_sets_what_flags_do_not_and_flags_win() {
        let f = file(
            "poll-interval: 5s\npod-interfaces: [cali*, tap*]\nmetrics-max-series: 500\n\
             metrics-granularity: pod\nmetrics-address: 127.0.0.1:9999\n",
        );
        let path = f.path().to_str().unwrap();
        let a = parse(&["--config", path, "--metrics-max-series", "7"]).unwrap();
        assert_eq!(a.poll_interval, Duration::from_secs(5));
        assert_eq!(a.pod_interfaces, ["cali*", "tap*"]);
        assert_eq!(a.metrics_granularity, Granularity::Pod);
        assert_eq!(a.metrics_address.0, Some("127.0.0.1:9999".parse().unwrap()));
        // The flag wins over the file.
        assert_eq!(a.metrics_max_series, 7);
        // Untouched settings keep their defaults.
        assert_eq!(a.idle_timeout, Duration::from_secs(60));
    }

    #[test]
    fn bad_files_say_what_is_wrong() {
        let unknown = file("poll-intervall: 5s\n");
        let e = parse(&["--config", unknown.path().to_str().unwrap()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown setting `poll-intervall`"), "{e}");
        assert!(e.contains("poll-interval"), "lists the settings: {e}");

        let bad_address = file("metrics-address: nowhere\n");
        let e = format!(
            "{:#}",
            parse(&["--config", bad_address.path().to_str().unwrap()]).unwrap_err()
        );
        assert!(e.contains("is not an address"), "{e}");

        let not_a_map = file("- poll-interval\n");
        let e = format!(
            "{:#}",
            parse(&["--config", not_a_map.path().to_str().unwrap()]).unwrap_err()
        );
        assert!(e.contains("expected a YAML mapping"), "{e}");

        let e = format!(
            "{:#}",
            parse(&["--config", "/nonexistent/observer.yaml"]).unwrap_err()
        );
        assert!(e.contains("reading the config file"), "{e}");
    }

    #[test]
    fn bad_patterns_stop_the_daemon_at_start() {
        let f = file("pod-interfaces: ['cali[']\n");
        let a = parse(&["--config", f.path().to_str().unwrap()]).unwrap();
        let e = format!("{:#}", a.validate().unwrap_err());
        assert!(e.contains("bad --pod-interfaces pattern"), "{e}");
    }
}
