//! Dashboards.

use std::{
    collections::{BTreeMap, BTreeSet},
    process::Command,
    time::Duration,
};

use serde_json::Value;

use crate::{common, read, repo, yaml_docs};

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
