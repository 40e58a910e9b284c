//! A real Prometheus (Debian's `prometheus` package) for the tests: started
//! in a network namespace (the lab's underlay, from where every lab node's
//! observer is reachable at its underlay address), scraping the given
//! targets every second into a temporary TSDB, killed on drop. Queries go
//! over HTTP from a thread that has entered the same namespace; `promtool
//! check metrics` lints a scrape.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;

pub const PROMETHEUS: &str = "/usr/bin/prometheus";
pub const PROMTOOL: &str = "/usr/bin/promtool";

/// Runs `f` on a thread that has joined network namespace `netns` (a name
/// as `ip netns` knows it; `None`: this process's namespace, and thread).
pub fn in_netns<T: Send>(netns: Option<&str>, f: impl FnOnce() -> T + Send) -> Result<T, String> {
    match netns {
        Some(ns) => observer::lab::netns::within(ns, f).map_err(|e| format!("{e:#}")),
        None => Ok(f()),
    }
}

/// Percent-encoding for a query-string value.
pub fn urlencode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// A plain HTTP/1.0 GET (no keep-alive, the body ends at close); returns
/// (status, body). For loopback and lab addresses only: no TLS.
pub fn http_get(address: SocketAddr, path_and_query: &str) -> Result<(u16, String), String> {
    let mut s = TcpStream::connect_timeout(&address, Duration::from_secs(3))
        .map_err(|e| format!("connecting to {address}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    write!(
        s,
        "GET {path_and_query} HTTP/1.0\r\nHost: {address}\r\nAccept: */*\r\n\r\n"
    )
    .map_err(|e| format!("writing to {address}: {e}"))?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)
        .map_err(|e| format!("reading from {address}: {e}"))?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("no HTTP header from {address}"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("bad status line from {address}: {head:?}"))?;
    Ok((status, body.to_owned()))
}

/// `http://host:port/path` -> (address, path).
pub fn split_url(url: &str) -> Result<(SocketAddr, String), String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("{url}: not an http:// URL"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].to_owned()),
        None => (rest, "/".to_owned()),
    };
    let address = authority
        .parse()
        .map_err(|e| format!("{url}: address {authority:?}: {e}"))?;
    Ok((address, path))
}

/// GETs `url` from inside `netns`; the body of a 200.
pub fn fetch(netns: Option<&str>, url: &str) -> Result<String, String> {
    let (address, path) = split_url(url)?;
    let (status, body) = in_netns(netns, move || http_get(address, &path))??;
    if status != 200 {
        return Err(format!("GET {url}: HTTP {status}: {body}"));
    }
    Ok(body)
}

/// `promtool check metrics` on a scrape: Ok, or promtool's complaints.
pub fn check_metrics(exposition: &str) -> Result<(), String> {
    let mut child = Command::new(PROMTOOL)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("starting {PROMTOOL}: {e}"))?;
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(exposition.as_bytes())
        .map_err(|e| format!("feeding promtool: {e}"))?;
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() && said.trim().is_empty() {
        Ok(())
    } else {
        Err(format!("promtool check metrics ({}): {said}", out.status))
    }
}

/// One sample of an instant query's result.
#[derive(Clone, Debug)]
pub struct Sample {
    /// The series' labels.
    pub metric: BTreeMap<String, String>,
    value: f64,
}

impl Sample {
    pub fn value(&self) -> f64 {
        self.value
    }

    /// A label's value; empty when the series has no such label.
    pub fn label(&self, name: &str) -> &str {
        self.metric.get(name).map_or("", String::as_str)
    }
}

/// A running Prometheus; killed (and its TSDB removed) on drop.
pub struct Prometheus {
    child: Child,
    netns: Option<String>,
    address: SocketAddr,
    dir: tempfile::TempDir,
}

impl Prometheus {
    /// Starts Prometheus in network namespace `netns` scraping `targets`
    /// (`host:port`) at `/metrics` every second, and waits until it is
    /// ready (not until the first scrape: see `wait_scrapes`).
    pub fn start(netns: &str, targets: &[String]) -> Self {
        Self::start_with(Some(netns), targets, "/metrics")
    }

    /// `start`, in this process's namespace when `netns` is `None`, and
    /// with another metrics path.
    pub fn start_with(netns: Option<&str>, targets: &[String], metrics_path: &str) -> Self {
        assert!(
            Path::new(PROMETHEUS).exists(),
            "{PROMETHEUS} is missing: apt-get install prometheus"
        );
        let dir = tempfile::tempdir().expect("temp dir");
        // A free port in that namespace (its own port space).
        let port = in_netns(netns, || {
            TcpListener::bind("127.0.0.1:0").map(|l| l.local_addr().map(|a| a.port()))
        })
        .expect("entering the namespace")
        .expect("binding a port")
        .expect("port");
        let address: SocketAddr = ([127, 0, 0, 1], port).into();
        let quoted: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             scrape_configs:\n  - job_name: observer\n    metrics_path: '{metrics_path}'\n    \
             static_configs:\n      - targets: [{}]\n",
            quoted.join(", ")
        );
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config).expect("writing prometheus.yml");
        let log = std::fs::File::create(dir.path().join("prometheus.log")).expect("log file");
        let mut cmd = match netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, PROMETHEUS]);
                c
            }
            None => Command::new(PROMETHEUS),
        };
        cmd.arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={address}"))
            .arg("--storage.tsdb.retention.time=1h")
            .arg("--log.level=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log);
        // `ip netns exec` execs Prometheus itself: the child is Prometheus.
        let child = cmd.spawn().expect("starting prometheus");
        let mut p = Prometheus {
            child,
            netns: netns.map(str::to_owned),
            address,
            dir,
        };
        p.wait_ready();
        p
    }

    /// The end of Prometheus' own log, for failure messages.
    pub fn log_tail(&self) -> String {
        let text =
            std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("prometheus exited ({status}):\n{}", self.log_tail());
            }
            if self.get("/-/ready").is_ok_and(|(s, _)| s == 200) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "prometheus not ready within 30 s:\n{}",
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn get(&self, path_and_query: &str) -> Result<(u16, String), String> {
        let (address, path) = (self.address, path_and_query.to_owned());
        in_netns(self.netns.as_deref(), move || http_get(address, &path))?
    }

    /// The `data` of an API answer, or Prometheus' error.
    fn api(&self, path_and_query: &str) -> Result<Value, String> {
        let (status, body) = self.get(path_and_query)?;
        let v: Value = serde_json::from_str(&body)
            .map_err(|e| format!("HTTP {status}, not JSON ({e}): {body}"))?;
        if v["status"] != "success" {
            return Err(format!(
                "{}: {}",
                v["errorType"].as_str().unwrap_or("error"),
                v["error"].as_str().unwrap_or(&body)
            ));
        }
        Ok(v["data"].clone())
    }

    /// An instant query at the current time: its samples (a scalar is one
    /// sample without labels), or Prometheus' error.
    pub fn query_result(&self, expr: &str) -> Result<Vec<Sample>, String> {
        let data = self.api(&format!("/api/v1/query?query={}", urlencode(expr)))?;
        let value_of = |v: &Value| -> f64 {
            v[1].as_str()
                .and_then(|s| s.parse().ok())
                .unwrap_or(f64::NAN)
        };
        let labels = |m: &Value| -> BTreeMap<String, String> {
            m.as_object()
                .map(|o| {
                    o.iter()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_owned()))
                        .collect()
                })
                .unwrap_or_default()
        };
        match data["resultType"].as_str() {
            Some("vector") => Ok(data["result"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|s| Sample {
                            metric: labels(&s["metric"]),
                            value: value_of(&s["value"]),
                        })
                        .collect()
                })
                .unwrap_or_default()),
            Some("scalar") => Ok(vec![Sample {
                metric: BTreeMap::new(),
                value: value_of(&data["result"]),
            }]),
            other => Err(format!("unexpected result type {other:?}: {data}")),
        }
    }

    /// `query_result`, panicking on an error.
    pub fn query(&self, expr: &str) -> Vec<Sample> {
        self.query_result(expr)
            .unwrap_or_else(|e| panic!("query {expr}: {e}"))
    }

    /// `query_result`, `None` on an error.
    pub fn try_query(&self, expr: &str) -> Option<Vec<Sample>> {
        self.query_result(expr).ok()
    }

    /// The value of a query that must give exactly one sample.
    pub fn value(&self, expr: &str) -> f64 {
        match self.query(expr).as_slice() {
            [s] => s.value(),
            other => panic!("{expr}: want one sample, got {}: {other:?}", other.len()),
        }
    }

    /// Waits until `done` holds; panics after `timeout`, saying `what`.
    pub fn wait_until(&self, timeout: Duration, what: &str, done: impl Fn(&Prometheus) -> bool) {
        let deadline = Instant::now() + timeout;
        while !done(self) {
            assert!(
                Instant::now() < deadline,
                "Prometheus: {what}: not within {timeout:?}; targets {:?}\n{}",
                self.targets(),
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// The scrape targets: (scrape URL, health, last error).
    pub fn targets(&self) -> Result<Vec<(String, String, String)>, String> {
        let data = self.api("/api/v1/targets?state=active")?;
        Ok(data["activeTargets"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|t| {
                        let s = |k: &str| t[k].as_str().unwrap_or("").to_owned();
                        (s("scrapeUrl"), s("health"), s("lastError"))
                    })
                    .collect()
            })
            .unwrap_or_default())
    }

    /// Waits until every target is up and has been scraped `n` more times
    /// from now.
    pub fn wait_scrapes(&self, n: u32, timeout: Duration) {
        let scrapes = |p: &Prometheus| -> f64 {
            p.try_query("min(count_over_time(up{job=\"observer\"}[1h]))")
                .and_then(|s| s.first().map(Sample::value))
                .unwrap_or(0.0)
        };
        let start = scrapes(self);
        self.wait_until(
            timeout,
            &format!("{n} scrapes of every target, all up"),
            |p| {
                let all_up = p
                    .try_query("min(up{job=\"observer\"})")
                    .is_some_and(|s| s.first().is_some_and(|s| s.value() == 1.0));
                all_up && scrapes(p) >= start + f64::from(n)
            },
        );
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
