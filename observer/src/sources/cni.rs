//! The node's CNI configuration (`/etc/cni/net.d`, `--cni-dir`): every
//! `*.conflist` (a network with a chain of plugins) and `*.conf` (one
//! plugin), with what matters for Calico: plugin types, the MTU, the IPAM
//! plugin and its pools (calico-ipam's `ipv4_pools`/`ipv6_pools`,
//! host-local's `ranges`/`subnet`). A file that cannot be read or parsed
//! is listed with its error; the others are still shown. The runtime uses
//! the first valid file in name order (`in_use`).

use std::path::Path;

use anyhow::{Context as _, Result};
use serde_json::Value;

use crate::api::{CniConfig, CniDir, CniIpam, CniPlugin};

impl CniDir {
    /// Reads `dir`; never fails (errors are in the answer).
    pub fn read(dir: &Path) -> Self {
        match read_dir(dir) {
            Ok(configs) => CniDir {
                dir: dir.display().to_string(),
                configs,
                error: None,
            },
            Err(e) => CniDir {
                dir: dir.display().to_string(),
                configs: Vec::new(),
                error: Some(format!("{e:#}")),
            },
        }
    }

    /// The MTU of the config in use (its first plugin with one).
    pub fn mtu(&self) -> Option<u32> {
        self.configs
            .iter()
            .find(|c| c.in_use)?
            .plugins
            .iter()
            .find_map(|p| p.mtu)
    }
}

/// Every `*.conflist`, `*.conf` and `*.json` file of `dir`, in name order.
pub fn read_dir(dir: &Path) -> Result<Vec<CniConfig>> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("reading the CNI directory {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension()
                .is_some_and(|e| e == "conflist" || e == "conf" || e == "json")
        })
        .collect();
    files.sort();
    let mut out: Vec<CniConfig> = files
        .iter()
        .map(|path| {
            let file = path.display().to_string();
            let parsed = std::fs::read_to_string(path)
                .with_context(|| format!("reading {file}"))
                .and_then(|text| parse(&text).with_context(|| format!("parsing {file}")));
            match parsed {
                Ok(mut c) => {
                    c.file = file;
                    c
                }
                Err(e) => CniConfig {
                    file,
                    error: Some(format!("{e:#}")),
                    ..Default::default()
                },
            }
        })
        .collect();
    if let Some(first) = out.iter_mut().find(|c| c.error.is_none()) {
        first.in_use = true;
    }
    Ok(out)
}

/// One file's text: a conflist (`plugins`) or a single plugin's conf.
pub fn parse(text: &str) -> Result<CniConfig> {
    let v: Value = serde_json::from_str(text).context("not JSON")?;
    let obj = v.as_object().context("not a JSON object")?;
    let plugins = match obj.get("plugins") {
        Some(Value::Array(list)) => list.iter().map(plugin).collect::<Result<Vec<_>>>()?,
        Some(_) => anyhow::bail!("`plugins` is not a list"),
        // A `.conf`: the file is the plugin.
        None => vec![plugin(&v)?],
    };
    if plugins.is_empty() {
        anyhow::bail!("no plugins");
    }
    Ok(CniConfig {
        file: String::new(),
        name: obj.get("name").and_then(Value::as_str).map(str::to_owned),
        cni_version: obj
            .get("cniVersion")
            .and_then(Value::as_str)
            .map(str::to_owned),
        plugins,
        in_use: false,
        error: None,
    })
}

fn plugin(v: &Value) -> Result<CniPlugin> {
    let kind = v
        .get("type")
        .and_then(Value::as_str)
        .context("a plugin without `type`")?
        .to_owned();
    Ok(CniPlugin {
        kind,
        mtu: v.get("mtu").and_then(number),
        ipam: v.get("ipam").filter(|i| i.is_object()).map(ipam),
        policy: v
            .pointer("/policy/type")
            .and_then(Value::as_str)
            .map(str::to_owned),
        kubeconfig: v
            .pointer("/kubernetes/kubeconfig")
            .and_then(Value::as_str)
            .map(str::to_owned),
    })
}

/// A number, or a string holding one (templates sometimes quote it).
fn number(v: &Value) -> Option<u32> {
    match v {
        Value::Number(n) => n.as_u64().and_then(|n| u32::try_from(n).ok()),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn flag(v: Option<&Value>) -> Option<bool> {
    match v? {
        Value::Bool(b) => Some(*b),
        Value::String(s) => Some(s.eq_ignore_ascii_case("true")),
        _ => None,
    }
}

fn ipam(v: &Value) -> CniIpam {
    let strings = |key: &str| -> Vec<String> {
        v.get(key)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect()
    };
    let mut pools = strings("ipv4_pools");
    pools.extend(strings("ipv6_pools"));
    // host-local: `ranges: [[{subnet, ...}, ...], ...]`, or the older
    // single `subnet`.
    for set in v
        .get("ranges")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        for r in set.as_array().into_iter().flatten() {
            if let Some(s) = r.get("subnet").and_then(Value::as_str) {
                pools.push(s.to_owned());
            }
        }
    }
    if let Some(s) = v.get("subnet").and_then(Value::as_str) {
        pools.push(s.to_owned());
    }
    CniIpam {
        kind: v
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned(),
        pools,
        assign_ipv4: flag(v.get("assign_ipv4")),
        assign_ipv6: flag(v.get("assign_ipv6")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> String {
        std::fs::read_to_string(format!(
            "{}/tests/fixtures/cni/{name}",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap()
    }

    #[test]
    fn calico_manifest_conflist() {
        let c = parse(&fixture("10-calico.conflist")).unwrap();
        assert_eq!(c.name.as_deref(), Some("k8s-pod-network"));
        assert_eq!(c.cni_version.as_deref(), Some("0.3.1"));
        let types: Vec<_> = c.plugins.iter().map(|p| p.kind.as_str()).collect();
        assert_eq!(types, ["calico", "portmap", "bandwidth"]);
        let calico = &c.plugins[0];
        assert_eq!(calico.mtu, Some(0));
        assert_eq!(calico.ipam.as_ref().unwrap().kind, "calico-ipam");
        assert!(calico.ipam.as_ref().unwrap().pools.is_empty());
        assert_eq!(calico.policy.as_deref(), Some("k8s"));
        assert_eq!(
            calico.kubeconfig.as_deref(),
            Some("/etc/cni/net.d/calico-kubeconfig")
        );
        assert_eq!(c.plugins[1].mtu, None);
    }

    #[test]
    fn operator_conflist_with_pools() {
        let c = parse(&fixture("operator-10-calico.conflist")).unwrap();
        let ipam = c.plugins[0].ipam.clone().unwrap();
        assert_eq!(c.plugins[0].mtu, Some(1450));
        assert_eq!(ipam.pools, ["default-ipv4-ippool", "fd00:10:244::/48"]);
        assert_eq!(
            (ipam.assign_ipv4, ipam.assign_ipv6),
            (Some(true), Some(true))
        );
    }

    #[test]
    fn directory_with_good_bad_and_host_local_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("10-calico.conflist"),
            fixture("10-calico.conflist"),
        )
        .unwrap();
        std::fs::write(dir.path().join("00-broken.conflist"), "{\"plugins\": [").unwrap();
        std::fs::write(
            dir.path().join("20-bridge.conf"),
            r#"{"cniVersion": "0.4.0", "name": "br", "type": "bridge", "mtu": "1400",
                "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.85.0.0/16"}], [{"subnet": "1100:200::/24"}]]}}"#,
        )
        .unwrap();
        std::fs::write(dir.path().join("calico-kubeconfig"), "not a config").unwrap();
        let d = CniDir::read(dir.path());
        assert_eq!(d.error, None);
        let files: Vec<_> = d
            .configs
            .iter()
            .map(|c| {
                (
                    Path::new(&c.file)
                        .file_name()
                        .unwrap()
                        .to_str()
                        .unwrap()
                        .to_owned(),
                    c.in_use,
                    c.error.is_some(),
                )
            })
            .collect();
        assert_eq!(
            files,
            [
                ("00-broken.conflist".into(), false, true),
                ("10-calico.conflist".into(), true, false),
                ("20-bridge.conf".into(), false, false),
            ]
        );
        assert!(d.configs[0].error.as_ref().unwrap().contains("00-broken"));
        assert_eq!(d.mtu(), Some(0));
        let bridge = &d.configs[2].plugins[0];
        assert_eq!(bridge.mtu, Some(1400));
        assert_eq!(
            bridge.ipam.as_ref().unwrap().pools,
            ["10.85.0.0/16", "1100:200::/24"]
        );
        let missing = CniDir::read(&dir.path().join("nope"));
        assert!(missing.error.unwrap().contains("nope"));
    }
}
