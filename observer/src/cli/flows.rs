//! `observer flows`: filters, sorting, `--top`, and rates from the
//! difference between two fetches (`--watch`, `--sort rate`).

use std::{
    collections::HashMap,
    io::{IsTerminal as _, Write as _},
    net::IpAddr,
    time::{Duration, Instant},
};

use super::{
    QueryArgs,
    filter::{FilterArgs, SortBy},
};
use crate::{
    api::{Client, Direction, Encap, FlowView, Protocol},
    term::{FlowRow, Output, flows::flow_rows_table, style},
};
use anyhow::{Result, bail};
use clap::Args;

#[derive(Args, Debug)]
pub struct FlowsArgs {
    #[command(flatten)]
    pub query: QueryArgs,
    #[command(flatten)]
    pub filter: FilterArgs,
    /// Order of the flows: most bytes, packets, or highest byte rate first.
    #[arg(long, value_enum, default_value = "bytes")]
    pub sort: SortBy,
    /// Show only the first N flows (after filtering and sorting).
    #[arg(long, value_name = "N")]
    pub top: Option<usize>,
    /// Refresh every --interval with per-flow rates (bytes/s, packets/s),
    /// until Ctrl-C or --count refreshes.
    #[arg(short, long)]
    pub watch: bool,
    /// Time between two samples (`--watch`, `--sort rate`): 2s, 500ms, 1m.
    #[arg(long, default_value = "2s", value_parser = parse_interval)]
    pub interval: Duration,
    /// With --watch: stop after N refreshes.
    #[arg(long, value_name = "N", requires = "watch")]
    pub count: Option<u64>,
}

fn parse_interval(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s)
        .map_err(|e| format!("{e}: give a duration such as 2s, 500ms or 1m"))?;
    if d < Duration::from_millis(100) {
        return Err("the interval must be at least 100ms".into());
    }
    Ok(d)
}

/// What makes two fetches' flows the same flow: interface, direction, the
/// 5-tuple and protocol (with the encapsulation and the ICMP type/code,
/// which the kernel's key also separates).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct FlowId {
    interface: String,
    direction: Direction,
    src_ip: IpAddr,
    src_port: u16,
    dst_ip: IpAddr,
    dst_port: u16,
    protocol: Protocol,
    encap: Encap,
    icmp: Option<(u8, Option<u8>)>,
}

impl FlowId {
    pub fn of(f: &FlowView) -> Self {
        Self {
            interface: f.interface.clone(),
            direction: f.direction,
            src_ip: f.src_ip,
            src_port: f.src_port,
            dst_ip: f.dst_ip,
            dst_port: f.dst_port,
            protocol: f.protocol,
            encap: f.encap,
            icmp: f.icmp_type.map(|t| (t, f.icmp_code)),
        }
    }
}

/// The counters of one fetch, when it was made, and when the daemon read
/// them from the kernel (its poll: what rates are computed over, when the
/// daemon says).
pub struct Sample {
    at: Instant,
    polled_ms: Option<u64>,
    counts: HashMap<FlowId, (u64, u64)>,
}

impl Sample {
    pub fn new(flows: &[FlowView], at: Instant) -> Self {
        Self::polled(flows, at, None)
    }

    pub fn polled(flows: &[FlowView], at: Instant, polled_ms: Option<u64>) -> Self {
        let mut counts = HashMap::with_capacity(flows.len());
        for f in flows {
            let c = counts.entry(FlowId::of(f)).or_insert((0, 0));
            c.0 += f.bytes;
            c.1 += f.packets;
        }
        Self {
            at,
            polled_ms,
            counts,
        }
    }

    /// `flows` (fetched at `now`) with their rates since this sample.
    pub fn rates(&self, flows: Vec<FlowView>, now: Instant) -> Vec<FlowRow> {
        self.rates_polled(flows, now, None)
    }

    /// Rates over the time between the daemon's two polls when both are
    /// known (the client's own timing jitters against the poll interval),
    /// else between the two fetches.
    pub fn rates_polled(
        &self,
        flows: Vec<FlowView>,
        now: Instant,
        polled_ms: Option<u64>,
    ) -> Vec<FlowRow> {
        let secs = match (self.polled_ms, polled_ms) {
            (Some(a), Some(b)) if b > a => (b - a) as f64 / 1e3,
            _ => now.saturating_duration_since(self.at).as_secs_f64(),
        };
        flows
            .into_iter()
            .map(|f| {
                let (b, p) = rate(
                    self.counts.get(&FlowId::of(&f)).copied(),
                    (f.bytes, f.packets),
                    secs,
                );
                FlowRow {
                    flow: f,
                    bytes_per_second: Some(b),
                    packets_per_second: Some(p),
                }
            })
            .collect()
    }
}

/// (bytes/s, packets/s) from the counts before (`None`: the flow is new
/// since, so all of it came in between) and now. Counters are monotonic;
/// should one go back (the daemon restarted) the rate is 0, not negative.
pub fn rate(before: Option<(u64, u64)>, now: (u64, u64), secs: f64) -> (f64, f64) {
    if secs <= 0.0 {
        return (0.0, 0.0);
    }
    let (b0, p0) = before.unwrap_or((0, 0));
    let per = |a: u64, b: u64| a.saturating_sub(b) as f64 / secs;
    (per(now.0, b0), per(now.1, p0))
}

fn without_rates(flows: Vec<FlowView>) -> Vec<FlowRow> {
    flows
        .into_iter()
        .map(|flow| FlowRow {
            flow,
            bytes_per_second: None,
            packets_per_second: None,
        })
        .collect()
}

/// Filters, sorts and cuts to `top`.
pub fn select(
    mut rows: Vec<FlowRow>,
    filter: &FilterArgs,
    sort: SortBy,
    top: Option<usize>,
) -> Vec<FlowRow> {
    rows.retain(|r| filter.matches(&r.flow));
    let key = |r: &FlowRow| -> (f64, f64, u64, u64) {
        let (b, p) = (r.flow.bytes, r.flow.packets);
        let (rb, rp) = (
            r.bytes_per_second.unwrap_or(0.0),
            r.packets_per_second.unwrap_or(0.0),
        );
        match sort {
            SortBy::Bytes => (b as f64, p as f64, 0, 0),
            SortBy::Packets => (p as f64, b as f64, 0, 0),
            SortBy::Rate => (rb, rp, b, p),
        }
    };
    rows.sort_by(|a, b| {
        let (ka, kb) = (key(a), key(b));
        kb.0.total_cmp(&ka.0)
            .then(kb.1.total_cmp(&ka.1))
            .then(kb.2.cmp(&ka.2))
            .then(kb.3.cmp(&ka.3))
            .then_with(|| a.flow.interface.cmp(&b.flow.interface))
            .then_with(|| a.flow.direction.cmp(&b.flow.direction))
            .then_with(|| a.flow.src_ip.cmp(&b.flow.src_ip))
            .then(a.flow.src_port.cmp(&b.flow.src_port))
    });
    if let Some(n) = top {
        rows.truncate(n);
    }
    rows
}

/// The text of one answer (or refresh): JSON, or the table.
fn format_rows(rows: &[FlowRow], total: usize, filtered: bool, output: Output) -> Result<String> {
    Ok(match output {
        Output::Json => serde_json::to_string_pretty(rows)? + "\n",
        o => {
            if rows.is_empty() && total > 0 && filtered {
                format!("no flows match the filters ({total} flows seen)\n")
            } else {
                flow_rows_table(rows, o == Output::Wide)
            }
        }
    })
}

async fn fetch(client: &Client) -> Result<Vec<FlowView>> {
    client.get("/v1/flows").await
}

/// Fetches a sample of a later poll than `before` (waiting a little when the
/// daemon has not polled since), so that a rate always spans polls.
async fn fetch_after(client: &Client, before: &Sample) -> Result<(Vec<FlowView>, Sample)> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (flows, polled): (Vec<FlowView>, _) = client.get_polled("/v1/flows").await?;
        let same_poll = polled.is_some() && polled == before.polled_ms;
        if !same_poll || Instant::now() > deadline {
            let sample = Sample::polled(&flows, Instant::now(), polled);
            return Ok((flows, sample));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn first_sample(client: &Client) -> Result<Sample> {
    let (flows, polled): (Vec<FlowView>, _) = client.get_polled("/v1/flows").await?;
    Ok(Sample::polled(&flows, Instant::now(), polled))
}

pub async fn run(args: FlowsArgs) -> Result<()> {
    args.filter.validate()?;
    if args.top == Some(0) {
        bail!("--top takes a number of flows, 1 or more");
    }
    let client = args.query.target.client()?;
    let output = args.query.output;
    style::set(output != Output::Json && style::wanted());
    let filtered = args.filter.any();

    if !args.watch {
        let rows = if args.sort == SortBy::Rate {
            let before = first_sample(&client).await?;
            tokio::time::sleep(args.interval).await;
            let (flows, after) = fetch_after(&client, &before).await?;
            before.rates_polled(flows, after.at, after.polled_ms)
        } else {
            without_rates(fetch(&client).await?)
        };
        let total = rows.len();
        let rows = select(rows, &args.filter, args.sort, args.top);
        print!("{}", format_rows(&rows, total, filtered, output)?);
        return Ok(());
    }

    let tty = std::io::stdout().is_terminal();
    let mut before = first_sample(&client).await?;
    let mut shown = 0u64;
    loop {
        tokio::time::sleep_until((before.at + args.interval).into()).await;
        let (flows, next) = fetch_after(&client, &before).await?;
        let rows = before.rates_polled(flows, next.at, next.polled_ms);
        before = next;
        let total = rows.len();
        let rows = select(rows, &args.filter, args.sort, args.top);
        let mut out = std::io::stdout().lock();
        match output {
            // One JSON document per line and refresh.
            Output::Json => writeln!(out, "{}", serde_json::to_string(&rows)?)?,
            _ => {
                let table = format_rows(&rows, total, filtered, output)?;
                if tty {
                    let when = humantime::format_rfc3339_seconds(std::time::SystemTime::now());
                    let title = format!(
                        "observer flows  every {}  {when}  {} of {total} flows  (Ctrl-C to stop)",
                        humantime::format_duration(args.interval),
                        rows.len(),
                    );
                    write!(
                        out,
                        "\x1b[H\x1b[2J{}\n\n{table}",
                        style::paint(style::Paint::Dim, title)
                    )?;
                } else {
                    if shown > 0 {
                        writeln!(out)?;
                    }
                    write!(out, "{table}")?;
                }
            }
        }
        out.flush()?;
        shown += 1;
        if args.count.is_some_and(|n| shown >= n) {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::filter::tests::flow;

    #[test]
    fn rates_from_two_samples() {
        assert_eq!(rate(Some((1000, 10)), (3000, 30), 2.0), (1000.0, 10.0));
        // New since the last sample: all of it is new.
        assert_eq!(rate(None, (500, 5), 0.5), (1000.0, 10.0));
        // A counter that went back (daemon restarted) is not negative.
        assert_eq!(rate(Some((1000, 10)), (10, 1), 1.0), (0.0, 0.0));
        assert_eq!(rate(Some((0, 0)), (10, 1), 0.0), (0.0, 0.0));
    }

    #[test]
    fn identity_is_interface_direction_tuple() {
        let t0 = Instant::now();
        let a = flow("cali1", "udp", 1000, 53, "none");
        let mut other_dir = a.clone();
        other_dir.direction = Direction::Ingress;
        other_dir.bytes = 50;
        let mut other_if = a.clone();
        other_if.interface = "vxlan.calico".into();
        let s = Sample::new(&[a.clone(), other_dir.clone(), other_if.clone()], t0);
        let mut a2 = a.clone();
        a2.bytes += 4000;
        a2.packets += 40;
        let mut od2 = other_dir.clone();
        od2.bytes += 2;
        let mut new = flow("cali1", "udp", 1001, 53, "none");
        new.bytes = 200;
        new.packets = 2;
        let rows = s.rates(vec![a2, od2, other_if, new], t0 + Duration::from_secs(2));
        let r: Vec<(f64, f64)> = rows
            .iter()
            .map(|r| (r.bytes_per_second.unwrap(), r.packets_per_second.unwrap()))
            .collect();
        assert_eq!(
            r,
            vec![(2000.0, 20.0), (1.0, 0.0), (0.0, 0.0), (100.0, 1.0)]
        );
    }

    #[test]
    fn sort_and_top() {
        let mk = |port, bytes, packets, rate: Option<f64>| {
            let mut f = flow("cali1", "tcp", 1, port, "none");
            f.bytes = bytes;
            f.packets = packets;
            FlowRow {
                flow: f,
                bytes_per_second: rate,
                packets_per_second: rate.map(|r| r / 100.0),
            }
        };
        let rows = vec![
            mk(1, 100, 50, Some(5.0)),
            mk(2, 300, 1, Some(1.0)),
            mk(3, 200, 10, Some(90.0)),
        ];
        let none = FilterArgs::default();
        let ports = |v: Vec<FlowRow>| v.iter().map(|r| r.flow.dst_port).collect::<Vec<_>>();
        assert_eq!(
            ports(select(rows.clone(), &none, SortBy::Bytes, None)),
            [2, 3, 1]
        );
        assert_eq!(
            ports(select(rows.clone(), &none, SortBy::Packets, None)),
            [1, 3, 2]
        );
        assert_eq!(
            ports(select(rows.clone(), &none, SortBy::Rate, None)),
            [3, 1, 2]
        );
        assert_eq!(
            ports(select(rows.clone(), &none, SortBy::Bytes, Some(1))),
            [2]
        );
        let port3 = FilterArgs {
            port: Some(3),
            ..Default::default()
        };
        assert_eq!(ports(select(rows, &port3, SortBy::Bytes, Some(5))), [3]);
    }

    #[test]
    fn rates_span_the_daemons_polls_when_it_says_when() {
        let mut f = flow("cali1", "udp", 1, 53, "none");
        let t0 = Instant::now();
        let before = Sample::polled(std::slice::from_ref(&f), t0, Some(10_000));
        f.bytes += 2000;
        // Fetched 300 ms later, but the daemon's polls were 2 s apart.
        let t1 = t0 + Duration::from_millis(300);
        let rows = before.rates_polled(vec![f.clone()], t1, Some(12_000));
        assert_eq!(rows[0].bytes_per_second, Some(1000.0));
        // Without poll times, the fetches' own.
        let rows = Sample::new(std::slice::from_ref(&f), t0).rates(vec![f], t1);
        assert_eq!(rows[0].bytes_per_second, Some(0.0));
    }

    #[test]
    fn json_rows_are_flows_plus_rates() {
        let row = FlowRow {
            flow: flow("cali1", "udp", 1, 53, "none"),
            bytes_per_second: Some(12.5),
            packets_per_second: Some(0.5),
        };
        let v: serde_json::Value = serde_json::to_value(&row).unwrap();
        assert_eq!(v["bytes_per_second"], 12.5);
        assert_eq!(v["bytes"], 1000);
        assert_eq!(v["interface"], "cali1");
        // Still a FlowView for those who read it as one.
        let f: FlowView = serde_json::from_value(v).unwrap();
        assert_eq!(f, row.flow);
        let plain = serde_json::to_value(without_rates(vec![row.flow])).unwrap();
        assert!(plain[0].get("bytes_per_second").is_none());
    }
}
