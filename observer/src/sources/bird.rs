//! BGP peer state from BIRD 1.6's control socket (calico-node runs a BIRD
//! 1.6 fork: `/var/run/calico/bird.ctl` for IPv4, `bird6.ctl` for IPv6), as
//! `calicoctl node status` shows it.
//!
//! The protocol (BIRD's `doc/reply_codes`): BIRD greets with `0001 BIRD
//! 1.6.8 ready.`; we send `show protocols`; every reply line starts with a
//! four-digit code followed by `-` (more lines follow) or ` ` (the last
//! line of this code), or with a space (one more line of the previous
//! code). `2002` is the table heading, `1002` the protocol rows, `0000` the
//! end; codes 8xxx/9xxx are errors.
//!
//! Calico names its BGP protocols `Mesh_<ip>` (node-to-node mesh),
//! `Node_<ip>` (node-specific BGPPeer) and `Global_<ip>` (global BGPPeer),
//! with `_` for the address's `.` or `:`, and `_port_<n>` when the peer has
//! a port. Every read and write has a timeout and the whole exchange a
//! deadline, so a hung BIRD never blocks the daemon; no socket is "not
//! running", not an error.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    os::unix::net::UnixStream,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde::{Deserialize, Serialize};

use crate::api::{BgpPeer, BirdStatus};

/// How long one read or write may take, and the whole exchange.
pub const IO_TIMEOUT: Duration = Duration::from_secs(1);
pub const DEADLINE: Duration = Duration::from_secs(2);

/// One row of `show protocols`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Protocol {
    pub name: String,
    /// `BGP`, `Kernel`, `Device`, `Direct`, `Static`, ...
    pub proto: String,
    pub table: String,
    /// `up`, `start`, `down`, `flush`, ...
    pub state: String,
    pub since: String,
    /// The rest of the row: `Established`, `Active   Socket: Connection
    /// refused`, `Connect`, `Idle`, ... (empty for down protocols).
    pub info: String,
}

impl BirdStatus {
    /// Asks the BIRD behind `socket` (IPv6 when `ipv6`), never failing: a
    /// missing socket or a dead BIRD is `running: false` with the reason.
    pub fn query(socket: &Path, ipv6: bool) -> Self {
        let mut status = BirdStatus {
            family: if ipv6 { "IPv6" } else { "IPv4" }.into(),
            socket: socket.display().to_string(),
            running: false,
            version: None,
            error: None,
            peers: Vec::new(),
        };
        match show_protocols(socket) {
            Ok((version, protocols)) => {
                status.running = true;
                status.version = version;
                status.peers = peers(&protocols, ipv6);
            }
            Err(e) => status.error = Some(format!("{e:#}")),
        }
        status
    }
}

/// Connects, reads the greeting, sends `show protocols` and parses the
/// rows. Returns BIRD's version from the greeting too.
pub fn show_protocols(socket: &Path) -> Result<(Option<String>, Vec<Protocol>)> {
    let lines = exchange(socket, "show protocols")?;
    let version = lines
        .iter()
        .find_map(|l| l.strip_prefix("0001 "))
        .map(|g| g.trim_end_matches(" ready.").trim().to_owned());
    Ok((version, parse_protocols(&lines)?))
}

/// Longest reply line we read, and most lines per reply.
const MAX_LINE: u64 = 4096;
const MAX_LINES: usize = 100_000;

/// One command: its reply lines, greeting included, up to and including
/// the final `0000` (or error) line.
pub fn exchange(socket: &Path, command: &str) -> Result<Vec<String>> {
    let deadline = Instant::now() + DEADLINE;
    let stream = match UnixStream::connect(socket) {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            bail!("not running (no socket at {})", socket.display())
        }
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            bail!(
                "not running (nothing listens on {}: a stale socket)",
                socket.display()
            )
        }
        Err(e) => return Err(e).with_context(|| format!("connecting to {}", socket.display())),
    };
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut lines = Vec::new();
    let mut read_line = |lines: &mut Vec<String>| -> Result<String> {
        if Instant::now() > deadline {
            bail!("BIRD at {} took longer than {DEADLINE:?}", socket.display());
        }
        // BIRD's lines are short: a bounded line and a bounded reply keep
        // a confused peer from growing our memory.
        if lines.len() >= MAX_LINES {
            bail!(
                "BIRD at {} sent more than {MAX_LINES} lines",
                socket.display()
            );
        }
        let mut line = String::new();
        let n = std::io::Read::take(&mut reader, MAX_LINE)
            .read_line(&mut line)
            .with_context(|| format!("reading from BIRD at {}", socket.display()))?;
        if n == 0 {
            bail!("BIRD at {} closed the connection", socket.display());
        }
        if !line.ends_with('\n') && n as u64 == MAX_LINE {
            bail!(
                "BIRD at {} sent a line over {MAX_LINE} bytes",
                socket.display()
            );
        }
        let line = line.trim_end_matches(['\n', '\r']).to_owned();
        lines.push(line.clone());
        Ok(line)
    };
    let greeting = read_line(&mut lines)?;
    if !greeting.starts_with("0001 ") {
        bail!(
            "unexpected greeting from {}: {greeting:?}",
            socket.display()
        );
    }
    (&stream)
        .write_all(format!("{command}\n").as_bytes())
        .with_context(|| format!("writing to BIRD at {}", socket.display()))?;
    loop {
        let line = read_line(&mut lines)?;
        match code(&line) {
            Some((0, _)) => return Ok(lines),
            Some((c, ' ')) if c >= 8000 => bail!("BIRD answered {line:?}"),
            _ => {}
        }
    }
}

/// `dddd-` or `dddd `: the code and its separator.
fn code(line: &str) -> Option<(u16, char)> {
    let b = line.as_bytes();
    if b.len() >= 5 && b[..4].iter().all(u8::is_ascii_digit) && (b[4] == b'-' || b[4] == b' ') {
        Some((line[..4].parse().ok()?, b[4] as char))
    } else if b.len() == 4 && b.iter().all(u8::is_ascii_digit) {
        Some((line.parse().ok()?, ' '))
    } else {
        None
    }
}

/// The rows of a `show protocols` reply (lines as BIRD sent them).
pub fn parse_protocols(lines: &[impl AsRef<str>]) -> Result<Vec<Protocol>> {
    let mut out = Vec::new();
    let mut current = None;
    for line in lines {
        let line = line.as_ref();
        let text = match code(line) {
            Some((c, _)) => {
                current = Some(c);
                &line[5.min(line.len())..]
            }
            None if line.starts_with(' ') => &line[1..],
            None if line.is_empty() => continue,
            None => bail!("unexpected line from BIRD: {line:?}"),
        };
        match current {
            Some(2002) => {
                let heading: Vec<&str> = text.split_whitespace().collect();
                if heading != ["name", "proto", "table", "state", "since", "info"] {
                    bail!("unknown BIRD table heading: {text:?}");
                }
            }
            Some(1002) => {
                if let Some(p) = parse_row(text) {
                    out.push(p);
                }
            }
            Some(c) if c >= 8000 => bail!("BIRD answered {line:?}"),
            _ => {}
        }
    }
    Ok(out)
}

fn parse_row(text: &str) -> Option<Protocol> {
    let cols: Vec<&str> = text.split_whitespace().collect();
    if cols.len() < 5 {
        return None;
    }
    // `timeformat protocol iso long` prints the date and the time.
    let (since, rest) = if cols.len() >= 6 && is_date(cols[4]) && is_time(cols[5]) {
        (format!("{} {}", cols[4], cols[5]), &cols[6..])
    } else {
        (cols[4].to_owned(), &cols[5..])
    };
    Some(Protocol {
        name: cols[0].into(),
        proto: cols[1].into(),
        table: cols[2].into(),
        state: cols[3].into(),
        since,
        info: rest.join(" "),
    })
}

fn is_date(s: &str) -> bool {
    s.len() == 10 && s.as_bytes()[4] == b'-' && s.as_bytes()[7] == b'-'
}

fn is_time(s: &str) -> bool {
    s.len() >= 8 && s.as_bytes()[2] == b':' && s.as_bytes()[5] == b':'
}

/// Calico's BGP protocols as peers; other protocols (and BGP protocols
/// not named the Calico way) are left out, as calicoctl does.
pub fn peers(protocols: &[Protocol], ipv6: bool) -> Vec<BgpPeer> {
    protocols
        .iter()
        .filter(|p| p.proto == "BGP")
        .filter_map(|p| {
            let (kind, rest) = p.name.split_once('_')?;
            let peer_type = match kind {
                "Mesh" => "node-to-node mesh",
                "Node" => "node specific",
                "Global" => "global",
                _ => return None,
            };
            let (addr, port) = match rest.rsplit_once("_port_") {
                Some((a, port)) => (a, Some(port.parse().ok()?)),
                None => (rest, None),
            };
            let address = addr
                .replace('_', if ipv6 { ":" } else { "." })
                .parse()
                .ok()?;
            Some(BgpPeer {
                name: p.name.clone(),
                address,
                port,
                peer_type: peer_type.into(),
                state: p.state.clone(),
                since: p.since.clone(),
                bgp_state: p.info.split_whitespace().next().unwrap_or("").into(),
                info: p.info.clone(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    // `birdc -v -s SOCKET show protocols` on a BIRD 1.6.8 with a Calico
    // node-to-node mesh of three nodes, one peer down.
    const REPLY: &str = "0001 BIRD 1.6.8 ready.
2002-name     proto    table    state  since       info
1002-static1  Static   master   up     10:21:07    
 kernel1  Kernel   master   up     10:21:07    
 device1  Device   master   up     10:21:07    
 direct1  Direct   master   up     10:21:07    
 Mesh_172_30_0_12 BGP      master   up     10:21:09    Established   
 Mesh_172_30_0_13 BGP      master   start  10:24:41    Active        Socket: Connection refused
 Node_10_0_0_1_port_1790 BGP      master   start  10:21:07    Connect       
 Global_192_0_2_1 BGP      master   down   10:30:00    
 upstream BGP      master   up     10:21:09    Established   
0000 
";

    #[test]
    fn show_protocols_rows_become_calico_peers() {
        let lines: Vec<&str> = REPLY.lines().collect();
        let protocols = parse_protocols(&lines).unwrap();
        assert_eq!(protocols.len(), 9);
        assert_eq!(protocols[0].name, "static1");
        let peers = peers(&protocols, false);
        let rows: Vec<_> = peers
            .iter()
            .map(|p| {
                (
                    p.address.to_string(),
                    p.port,
                    p.peer_type.as_str(),
                    p.state.as_str(),
                    p.since.as_str(),
                    p.bgp_state.as_str(),
                    p.info.as_str(),
                )
            })
            .collect();
        assert_eq!(
            rows,
            [
                (
                    "172.30.0.12".into(),
                    None,
                    "node-to-node mesh",
                    "up",
                    "10:21:09",
                    "Established",
                    "Established"
                ),
                (
                    "172.30.0.13".into(),
                    None,
                    "node-to-node mesh",
                    "start",
                    "10:24:41",
                    "Active",
                    "Active Socket: Connection refused"
                ),
                (
                    "10.0.0.1".into(),
                    Some(1790),
                    "node specific",
                    "start",
                    "10:21:07",
                    "Connect",
                    "Connect"
                ),
                (
                    "192.0.2.1".into(),
                    None,
                    "global",
                    "down",
                    "10:30:00",
                    "",
                    ""
                ),
            ]
        );
    }

    #[test]
    fn ipv6_names_and_long_times() {
        let lines = [
            "2002-name     proto    table    state  since       info",
            "1002-Mesh_fd00_172_30__12 BGP      master   up     2024-11-05 10:21:09    Established",
            "0000 ",
        ];
        let protocols = parse_protocols(&lines).unwrap();
        assert_eq!(protocols[0].since, "2024-11-05 10:21:09");
        let p = &peers(&protocols, true)[0];
        assert_eq!(p.address.to_string(), "fd00:172:30::12");
        assert_eq!(p.bgp_state, "Established");
    }

    #[test]
    fn errors_and_odd_headings_are_errors() {
        assert!(parse_protocols(&["9001 Parse error"]).is_err());
        assert!(parse_protocols(&["2002-name proto", "0000"]).is_err());
        assert!(parse_protocols(&["garbage"]).is_err());
    }

    #[test]
    fn a_missing_socket_is_not_running() {
        let s = BirdStatus::query(Path::new("/nonexistent/bird.ctl"), false);
        assert!(!s.running);
        assert!(s.error.unwrap().starts_with("not running"), "no socket");
    }

    #[test]
    fn a_silent_bird_times_out() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bird.ctl");
        // Accepts and never answers.
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let t = std::thread::spawn(move || {
            let c = listener.accept();
            std::thread::sleep(Duration::from_secs(3));
            drop(c);
        });
        let started = Instant::now();
        let s = BirdStatus::query(&path, false);
        assert!(!s.running);
        assert!(started.elapsed() < Duration::from_millis(2500));
        t.join().unwrap();
    }
}
