//! Configuration of the daemon (`observer run`): flags and environment
//! variables with the same names, validated at start.

use std::{path::PathBuf, time::Duration};

use anyhow::{Context as _, Result, bail};
use clap::Args;
use observer_common::{DEFAULT_FLOW_CAPACITY, Encap, index::MAX_FLOW_CAPACITY};

use crate::{
    datapath::{attach::AttachMode, kernel_log::KernelLogLevel, links::LinkInfoView},
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

    /// At most this many evicted flows stay visible in the API, whatever
    /// `--retain` says: past it the least recently seen are forgotten (their
    /// counts stay in the metrics). Bounds memory under churn, where
    /// `--retain` alone would keep every flow of its whole window.
    #[arg(long, env = "OBSERVER_RETAIN_FLOWS", default_value_t = 100_000)]
    pub retain_flows: usize,

    /// Slots in the kernel flow map (preallocated; about 200 bytes each).
    #[arg(long, env = "OBSERVER_FLOW_CAPACITY", default_value_t = DEFAULT_FLOW_CAPACITY)]
    pub flow_capacity: u32,

    /// How to attach to interfaces.
    #[arg(long, env = "OBSERVER_ATTACH_MODE", value_enum, default_value = "auto")]
    pub attach_mode: AttachMode,

    /// The eBPF programs' own log, shown in the daemon's log (target
    /// `observer::ebpf`): `warn` says when a flow could not be inserted
    /// (the map is full), `debug` also why each unparsed packet was
    /// (header, byte offset). `off` costs nothing per packet; `debug` on
    /// busy, malformed traffic writes a record per such packet.
    #[arg(long, env = "OBSERVER_EBPF_LOG", value_enum, default_value = "off")]
    pub ebpf_log: KernelLogLevel,

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

    /// Also serve the JSON API over TCP here; by default only the Unix
    /// socket. It has no authentication: loopback addresses only, unless
    /// --api-allow-remote.
    #[arg(long, env = "OBSERVER_API_ADDRESS")]
    pub api_address: Option<std::net::SocketAddr>,

    /// Let --api-address be a non-loopback address: anyone who can reach
    /// it reads every flow (there is no authentication).
    #[arg(long, env = "OBSERVER_API_ALLOW_REMOTE")]
    pub api_allow_remote: bool,

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

    /// The settings that came from the config file (as written there), so
    /// that errors found later name them as the file does.
    #[arg(skip)]
    pub from_file: Vec<String>,
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

/// `what` names the setting (see [`RunArgs::setting`]).
fn patterns(what: &str, list: &[String]) -> Result<Vec<glob::Pattern>> {
    list.iter()
        .filter(|p| !p.is_empty())
        .map(|p| {
            glob::Pattern::new(p)
                .with_context(|| format!("{what}: bad pattern {p:?}: use a glob such as `cali*`"))
        })
        .collect()
}

impl InterfaceSelector {
    pub fn new(args: &RunArgs) -> Result<Self> {
        Ok(Self {
            pod: patterns(&args.setting("pod-interfaces"), &args.pod_interfaces)?,
            tunnel: patterns(&args.setting("tunnel-interfaces"), &args.tunnel_interfaces)?,
            underlay: patterns(&args.setting("underlay"), &args.underlay)?,
        })
    }

    /// The kind of a link we should attach to, or `None` to leave it alone.
    pub fn classify(&self, link: &LinkInfoView) -> Option<InterfaceKind> {
        let m = |ps: &[glob::Pattern]| ps.iter().any(|p| p.matches(&link.name));
        if m(&self.pod) {
            Some(InterfaceKind::Pod)
        } else if m(&self.tunnel) {
            Some(InterfaceKind::Tunnel(
                link.tunnel
                    .or_else(|| Encap::from_device(&link.name))
                    .unwrap_or(Encap::Ipip),
            ))
        } else if m(&self.underlay) {
            Some(InterfaceKind::Underlay)
        } else {
            None
        }
    }
}

/// What the sources of names read: the Kubernetes API or an objects
/// directory, BIRD, the CNI configuration.
#[derive(Clone, Debug)]
pub struct NamesSettings {
    pub kubernetes: KubeMode,
    pub objects_dir: Option<PathBuf>,
    pub bird_socket: PathBuf,
    pub bird6_socket: PathBuf,
    pub cni_dir: PathBuf,
    /// How often BIRD is asked.
    pub poll_interval: Duration,
    /// Calico's interface prefix (see [`RunArgs::interface_prefix`]).
    pub interface_prefix: String,
    pub node_name: Option<String>,
}

/// What metrics keep and how finely they name things.
#[derive(Clone, Debug)]
pub struct MetricsSettings {
    pub granularity: Granularity,
    pub dimensions: Vec<Dimension>,
    pub max_series: usize,
}

impl MetricsSettings {
    pub fn keeps(&self, d: Dimension) -> bool {
        self.dimensions.contains(&d)
    }
}

/// When the poll evicts flows from the kernel map and forgets them.
#[derive(Clone, Copy, Debug)]
pub struct PollSettings {
    pub idle_timeout: Duration,
    pub retain: Duration,
    /// See `RunArgs::retain_flows`.
    pub retain_flows: usize,
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

    /// The settings of the sources of names.
    pub fn names(&self) -> NamesSettings {
        NamesSettings {
            kubernetes: self.kubernetes,
            objects_dir: self.objects_dir.clone(),
            bird_socket: self.bird_socket.clone(),
            bird6_socket: self.bird6_socket.clone(),
            cni_dir: self.cni_dir.clone(),
            poll_interval: self.poll_interval,
            interface_prefix: self.interface_prefix(),
            node_name: self.node_name.clone(),
        }
    }

    /// The settings of the metrics.
    pub fn metrics(&self) -> MetricsSettings {
        MetricsSettings {
            granularity: self.metrics_granularity,
            dimensions: self.metrics_dimensions.clone(),
            max_series: self.metrics_max_series,
        }
    }

    /// The settings of each poll.
    pub fn polling(&self) -> PollSettings {
        PollSettings {
            idle_timeout: self.idle_timeout,
            retain: self.retain,
            retain_flows: self.retain_flows,
        }
    }

    /// A setting as errors name it: as the config file wrote it when it
    /// came from there, else as its flag.
    pub fn setting(&self, key: &str) -> String {
        match &self.config {
            Some(path) if self.from_file.iter().any(|k| k == key) => {
                format!("config file {}: {key}", path.display())
            }
            _ => format!("--{key}"),
        }
    }

    /// A setting with its value, as errors show it.
    fn given(&self, key: &str, value: impl std::fmt::Display) -> String {
        let name = self.setting(key);
        if name.starts_with("--") {
            format!("{name} {value}")
        } else {
            format!("{name}: {value}")
        }
    }

    pub fn validate(&self) -> Result<()> {
        if let Some(dir) = &self.objects_dir
            && !dir.is_dir()
        {
            bail!(
                "{} is not a directory",
                self.given("objects-dir", dir.display())
            );
        }
        if self.flow_capacity < 1024 {
            bail!(
                "{} is too small: use at least 1024",
                self.given("flow-capacity", self.flow_capacity)
            );
        }
        if self.flow_capacity > MAX_FLOW_CAPACITY {
            bail!(
                "{} is too large: use at most {MAX_FLOW_CAPACITY}",
                self.given("flow-capacity", self.flow_capacity)
            );
        }
        if self.poll_interval < Duration::from_millis(100) {
            bail!("{} must be at least 100ms", self.setting("poll-interval"));
        }
        if self.idle_timeout < self.poll_interval {
            bail!(
                "{} must be at least {}",
                self.setting("idle-timeout"),
                self.setting("poll-interval")
            );
        }
        if let Some(address) = self.api_address
            && !address.ip().is_loopback()
            && !self.api_allow_remote
        {
            bail!(
                "{} is not a loopback address: the JSON API has no authentication, so anyone \
                 who reaches it reads every flow; use 127.0.0.1:PORT or [::1]:PORT, or add \
                 --api-allow-remote to serve it there anyway",
                self.given("api-address", address)
            );
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
    let settings = read_settings(path)?;
    let command = <RunArgs as Args>::augment_args(clap::Command::new("run"));
    // Which settings the command line or the environment already gave.
    let given = command
        .clone()
        .try_get_matches_from(std::iter::once("run".into()).chain(argv.iter().cloned()))
        .with_context(|| "parsing the command line".to_string())?;
    let in_file = |e: String| anyhow::anyhow!("config file {}: {e}", path.display());
    let mut from_file: Vec<std::ffi::OsString> = Vec::new();
    let mut keys = Vec::new();
    for (key, value) in &settings {
        let key = key
            .as_str()
            .ok_or_else(|| in_file(format!("keys must be strings, got {key:?}")))?;
        let arg = setting_arg(&command, key).map_err(in_file)?;
        use clap::parser::ValueSource;
        if matches!(
            given.value_source(arg.get_id().as_str()),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        ) {
            continue;
        }
        let flag = file_arg(arg, value).map_err(|e| in_file(format!("{key}: {e}")))?;
        from_file.extend(flag);
        keys.push(key.to_owned());
    }
    let all = std::iter::once("run".into())
        .chain(from_file)
        .chain(argv.iter().cloned());
    let matches = command
        .try_get_matches_from(all)
        .map_err(|e| in_file(e.render().to_string()))?;
    let mut out = <RunArgs as clap::FromArgMatches>::from_arg_matches(&matches)?;
    out.from_file = keys;
    Ok(out)
}

/// The file as a YAML mapping (an empty file sets nothing).
fn read_settings(path: &std::path::Path) -> Result<serde_yaml_ng::Mapping> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the config file {}", path.display()))?;
    if text.trim().is_empty() {
        return Ok(Default::default());
    }
    serde_yaml_ng::from_str(&text).with_context(|| {
        format!(
            "config file {}: expected a YAML mapping of settings",
            path.display()
        )
    })
}

/// The flag a setting of the file stands for.
fn setting_arg<'a>(command: &'a clap::Command, key: &str) -> Result<&'a clap::Arg, String> {
    if key == "config" {
        return Err("`config` cannot be set in a config file".into());
    }
    let known = || {
        command
            .get_arguments()
            .filter_map(|a| a.get_long())
            .filter(|k| *k != "config" && *k != "help")
            .collect::<Vec<_>>()
            .join(", ")
    };
    command
        .get_arguments()
        .find(|a| a.get_long() == Some(key))
        .ok_or_else(|| format!("unknown setting `{key}`; the settings are {}", known()))
}

/// A setting of the file as command-line arguments. Each value is checked
/// with its flag's own parser here, so that an error names the key as the
/// file wrote it, and passed as `--flag=value`, so that a value starting
/// with `-` stays a value and never becomes a flag.
fn file_arg(
    arg: &clap::Arg,
    value: &serde_yaml_ng::Value,
) -> Result<Option<std::ffi::OsString>, String> {
    let long = arg.get_long().unwrap_or_default();
    if matches!(arg.get_action(), clap::ArgAction::SetTrue) {
        return match value {
            serde_yaml_ng::Value::Bool(true) => Ok(Some(format!("--{long}").into())),
            serde_yaml_ng::Value::Bool(false) => Ok(None),
            other => Err(format!("expected true or false, got {}", shown(other))),
        };
    }
    let values = scalars(value, arg.get_value_delimiter())?;
    // The flag alone, to check each value with its own parser.
    let alone = clap::Command::new("run").arg(arg.clone());
    for v in &values {
        alone
            .clone()
            .try_get_matches_from(["run".to_owned(), format!("--{long}={v}")])
            .map_err(|e| invalid(v, &e))?;
    }
    let joined = values.join(&arg.get_value_delimiter().unwrap_or(',').to_string());
    Ok(Some(format!("--{long}={joined}").into()))
}

/// A setting's values: a scalar (split like its flag's when the flag
/// takes a list), or a YAML list when it takes one.
fn scalars(v: &serde_yaml_ng::Value, list: Option<char>) -> Result<Vec<String>, String> {
    use serde_yaml_ng::Value;
    let scalar = |v: &Value| match v {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        Value::Bool(b) => Ok(b.to_string()),
        other => Err(format!(
            "expected a string or a number, got {}",
            shown(other)
        )),
    };
    match (v, list) {
        (Value::Sequence(items), Some(d)) => items
            .iter()
            .map(|i| {
                let s = scalar(i)?;
                if s.contains(d) {
                    return Err(format!("list item '{s}' contains '{d}'"));
                }
                Ok(s)
            })
            .collect(),
        (Value::Sequence(_), None) => Err("expected one value, got a list".into()),
        (v, Some(d)) => Ok(scalar(v)?.split(d).map(str::to_owned).collect()),
        (v, None) => Ok(vec![scalar(v)?]),
    }
}

/// A YAML value for an error message.
fn shown(v: &serde_yaml_ng::Value) -> String {
    serde_yaml_ng::to_string(v)
        .map(|s| s.trim_end().to_owned())
        .unwrap_or_else(|_| format!("{v:?}"))
}

/// What a flag's parser said of `value`, without naming the flag.
fn invalid(value: &str, e: &clap::Error) -> String {
    use clap::error::{ContextKind, ContextValue};
    if let Some(why) = std::error::Error::source(e) {
        return format!("invalid value '{value}': {why}");
    }
    match e.get(ContextKind::ValidValue) {
        Some(ContextValue::Strings(valid)) => {
            format!("invalid value '{value}': use one of {}", valid.join(", "))
        }
        _ => format!("invalid value '{value}'"),
    }
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
        let path = f.path().to_str().unwrap();
        let a = parse(&["--config", path]).unwrap();
        let e = format!("{:#}", a.validate().unwrap_err());
        assert!(
            e.contains(&format!("config file {path}: pod-interfaces: bad pattern")),
            "{e}"
        );
        let a = parse(&["--pod-interfaces", "cali["]).unwrap();
        let e = format!("{:#}", a.validate().unwrap_err());
        assert!(e.contains("--pod-interfaces: bad pattern"), "{e}");
    }

    /// `argv` with the config file `text`: the arguments, or the error.
    fn with_file(text: &str, argv: &[&str]) -> (String, Result<RunArgs>) {
        let f = file(text);
        let path = f.path().to_str().unwrap().to_owned();
        let mut all = vec!["--config", &path];
        all.extend_from_slice(argv);
        let parsed = parse(&all);
        (path, parsed)
    }

    #[test]
    fn values_that_look_like_flags_stay_values() {
        for name in ["-V", "--help", "-h", "--flow-capacity=1"] {
            let (_, a) = with_file(&format!("node-name: {name:?}\n"), &[]);
            let a = a.unwrap_or_else(|e| panic!("{name}: {e:#}"));
            assert_eq!(a.node_name.as_deref(), Some(name));
            assert_eq!(
                a.flow_capacity, DEFAULT_FLOW_CAPACITY,
                "{name} set nothing else"
            );
        }
        let (_, a) = with_file("underlay: [-x, eth0]\n", &[]);
        assert_eq!(a.unwrap().underlay, ["-x", "eth0"]);
    }

    #[test]
    fn errors_name_the_key_as_the_file_writes_it() {
        let (path, a) = with_file("flow-capacity: -5\n", &[]);
        let e = format!("{:#}", a.unwrap_err());
        assert!(
            e.starts_with(&format!(
                "config file {path}: flow-capacity: invalid value '-5': "
            )),
            "{e}"
        );
        assert!(!e.contains("--flow-capacity"), "{e}");

        let (path, a) = with_file("metrics-granularity: pods\n", &[]);
        let e = format!("{:#}", a.unwrap_err());
        assert_eq!(
            e,
            format!(
                "config file {path}: metrics-granularity: invalid value 'pods': \
                 use one of pod, workload, namespace"
            )
        );

        let (path, a) = with_file("poll-interval: [1s, 2s]\n", &[]);
        let e = format!("{:#}", a.unwrap_err());
        assert_eq!(
            e,
            format!("config file {path}: poll-interval: expected one value, got a list")
        );

        // Checked after parsing, still named as in the file.
        let (path, a) = with_file("flow-capacity: 5\n", &[]);
        let e = format!("{:#}", a.unwrap().validate().unwrap_err());
        assert_eq!(
            e,
            format!("config file {path}: flow-capacity: 5 is too small: use at least 1024")
        );
        let (_, a) = with_file("flow-capacity: 4096\n", &["--flow-capacity", "5"]);
        let e = format!("{:#}", a.unwrap().validate().unwrap_err());
        assert_eq!(e, "--flow-capacity 5 is too small: use at least 1024");
        let (_, a) = with_file("", &["--flow-capacity", "16777217"]);
        let e = format!("{:#}", a.unwrap().validate().unwrap_err());
        assert_eq!(
            e,
            "--flow-capacity 16777217 is too large: use at most 16777216"
        );
    }

    #[test]
    fn the_api_stays_on_loopback_unless_allowed() {
        let a = parse(&["--api-address", "127.0.0.1:9478"]).unwrap();
        a.validate().unwrap();
        let a = parse(&["--api-address", "[::1]:9478"]).unwrap();
        a.validate().unwrap();
        let a = parse(&["--api-address", "0.0.0.0:9478"]).unwrap();
        let e = format!("{:#}", a.validate().unwrap_err());
        assert!(
            e.contains("--api-address 0.0.0.0:9478 is not a loopback address"),
            "{e}"
        );
        assert!(e.contains("--api-allow-remote"), "{e}");
        let a = parse(&["--api-address", "0.0.0.0:9478", "--api-allow-remote"]).unwrap();
        a.validate().unwrap();
        let (_, a) = with_file("api-address: 10.0.0.1:9478\napi-allow-remote: true\n", &[]);
        let a = a.unwrap();
        assert!(a.api_allow_remote);
        a.validate().unwrap();
        let (path, a) = with_file("api-allow-remote: yes please\n", &[]);
        let e = format!("{:#}", a.unwrap_err());
        assert_eq!(
            e,
            format!("config file {path}: api-allow-remote: expected true or false, got yes please")
        );
    }
}
