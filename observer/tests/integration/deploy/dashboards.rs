//! Dashboards.

use std::{
    collections::{BTreeMap, BTreeSet},
    process::Command,
    time::Duration,
};

use promql_parser::{
    label::MatchOp,
    parser::{Expr, VectorSelector},
};
use serde_json::Value;

use super::{read, repo, yaml_docs};
use crate::common;

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

/// Grafana's variables in an expression: `$name`, `${name}` and
/// `${name:format}`, in string literals too.
fn grafana_variables(expr: &str) -> BTreeSet<String> {
    let is_name = |c: char| c.is_ascii_alphanumeric() || c == '_';
    expr.split('$')
        .skip(1)
        .filter_map(|rest| match rest.strip_prefix('{') {
            Some(braced) => braced.split(['}', ':']).next(),
            None => rest.split(|c| !is_name(c)).next(),
        })
        .filter(|name| !name.is_empty())
        .map(str::to_owned)
        .collect()
}

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

/// An expression's syntax tree, its Grafana variables replaced first as
/// Grafana does: the built-in intervals by a duration, the dashboard's own
/// variables (used only in label values) by a label value.
fn parse(expr: &str) -> Result<Expr, String> {
    let values = grafana_variables(expr)
        .into_iter()
        .map(|v| {
            let value = if v.starts_with("__") { "1m" } else { "x" };
            (v, value.to_owned())
        })
        .collect();
    promql_parser::parser::parse(&substitute(expr, &values)).map_err(|e| format!("not PromQL: {e}"))
}

/// What an expression reads.
#[derive(Debug, Default)]
struct Uses {
    /// Each selector's metric (none for a selector without a name) and the
    /// labels its matchers name.
    selectors: Vec<(Option<String>, Vec<String>)>,
    /// The labels of each grouping (an aggregation's `by`/`without`, a
    /// binary operation's `on`/`ignoring` and `group_left`/`group_right`),
    /// with the metrics of the expressions it groups.
    groupings: Vec<(BTreeSet<String>, Vec<String>)>,
}

impl Uses {
    fn of(expr: &str) -> Result<Uses, String> {
        let mut uses = Uses::default();
        uses.walk(&parse(expr)?);
        Ok(uses)
    }

    /// Records what `e` reads; gives the metrics it reads.
    fn walk(&mut self, e: &Expr) -> BTreeSet<String> {
        match e {
            Expr::VectorSelector(vs) => self.selector(vs),
            Expr::MatrixSelector(ms) => self.selector(&ms.vs),
            Expr::Aggregate(a) => {
                let mut metrics = self.walk(&a.expr);
                if let Some(param) = &a.param {
                    metrics.extend(self.walk(param));
                }
                if let Some(m) = &a.modifier {
                    self.groupings
                        .push((metrics.clone(), m.labels().labels.clone()));
                }
                metrics
            }
            Expr::Binary(b) => {
                let mut metrics = self.walk(&b.lhs);
                metrics.extend(self.walk(&b.rhs));
                if let Some(m) = &b.modifier {
                    let labels: Vec<String> = m
                        .matching
                        .iter()
                        .map(|l| l.labels())
                        .chain(m.card.labels())
                        .flat_map(|l| l.labels.iter().cloned())
                        .collect();
                    if !labels.is_empty() {
                        self.groupings.push((metrics.clone(), labels));
                    }
                }
                metrics
            }
            Expr::Paren(p) => self.walk(&p.expr),
            Expr::Unary(u) => self.walk(&u.expr),
            Expr::Subquery(s) => self.walk(&s.expr),
            Expr::Call(c) => c.args.args.iter().flat_map(|a| self.walk(a)).collect(),
            Expr::NumberLiteral(_) | Expr::StringLiteral(_) | Expr::Extension(_) => BTreeSet::new(),
        }
    }

    fn selector(&mut self, vs: &VectorSelector) -> BTreeSet<String> {
        let matchers = vs
            .matchers
            .matchers
            .iter()
            .chain(vs.matchers.or_matchers.iter().flatten());
        let name = vs.name.clone().or_else(|| {
            matchers
                .clone()
                .find(|m| m.name == "__name__" && m.op == MatchOp::Equal)
                .map(|m| m.value.clone())
        });
        let labels = matchers
            .filter(|m| m.name != "__name__")
            .map(|m| m.name.clone())
            .collect();
        self.selectors.push((name.clone(), labels));
        name.into_iter().collect()
    }
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
    let uses = Uses::of(expr)?;
    if uses.selectors.is_empty() {
        return Err("uses no observer_ metric".into());
    }
    let labels_of = |metric: &str| -> Result<&BTreeSet<String>, String> {
        family(metric, documented)
            .map(|f| &documented[&f])
            .ok_or_else(|| format!("metric {metric} is not in docs/metrics.md"))
    };
    let undocumented = |label: &String, allowed: &BTreeSet<&String>| {
        !COMMON_LABELS.contains(&label.as_str()) && !allowed.contains(label)
    };
    for (metric, labels) in &uses.selectors {
        let metric = metric
            .as_deref()
            .ok_or("a selector without a metric name")?;
        let allowed = labels_of(metric)?.iter().collect();
        if let Some(label) = labels.iter().find(|l| undocumented(l, &allowed)) {
            return Err(format!("label {label} is not documented for {metric}"));
        }
    }
    for (metrics, labels) in &uses.groupings {
        let mut allowed = BTreeSet::new();
        for m in metrics {
            allowed.extend(labels_of(m)?);
        }
        if let Some(label) = labels.iter().find(|l| undocumented(l, &allowed)) {
            return Err(format!("label {label} is not documented for {metrics:?}"));
        }
    }
    Ok(())
}

#[test]
fn label_extraction_sees_matchers_and_groupings() {
    let uses = Uses::of(
        r#"sum by (node, direction) (rate(observer_pod_bytes_total{node=~"$node", pod="a,b{c}"}[$__rate_interval])) / ignoring (backend) group_left sum(observer_x)"#,
    )
    .unwrap();
    let pod_bytes = "observer_pod_bytes_total".to_owned();
    assert_eq!(
        uses.selectors,
        [
            (Some(pod_bytes.clone()), vec!["node".into(), "pod".into()]),
            (Some("observer_x".into()), vec![])
        ]
    );
    assert_eq!(
        uses.groupings,
        [
            (
                BTreeSet::from([pod_bytes.clone()]),
                vec!["node".into(), "direction".into()]
            ),
            (
                BTreeSet::from([pod_bytes, "observer_x".into()]),
                vec!["backend".into()]
            )
        ]
    );
    assert_eq!(
        grafana_variables(r#"x{a="$node", b="${pod:regex}"}[$__rate_interval]"#),
        ["__rate_interval", "node", "pod"].map(str::to_owned).into()
    );
    let docs = documented_metrics();
    assert!(check_expr("rate(observer_pod_bytes_total{podd=\"x\"}[1m])", &docs).is_err());
    assert!(check_expr("rate(observer_nope_total[1m])", &docs).is_err());
    assert!(check_expr("sum by (nope) (observer_flows_tracked)", &docs).is_err());
    assert!(check_expr("sum(rate(observer_polls_total[1m]", &docs).is_err());
    assert!(check_expr("histogram_quantile(0.9, sum by (le) (rate(observer_poll_duration_seconds_bucket[$__rate_interval])))", &docs).is_ok());
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
                for var in grafana_variables(expr) {
                    assert!(
                        defined.contains(&var),
                        "{f}: panel {title}: undefined ${var}"
                    );
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
