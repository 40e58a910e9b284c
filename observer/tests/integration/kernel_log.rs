//! The programs' own log (`observer run --ebpf-log`): crafted frames run
//! through the loaded classifiers (BPF_PROG_TEST_RUN, on `lo`), and the
//! records that reach `tracing` are exactly the ones the level asks for.

use std::{
    io::Write,
    sync::{Arc, Mutex},
};

use observer::datapath::{
    Datapath,
    kernel_log::{KernelLog, KernelLogLevel},
    object, testrun,
};
use observer_common::Stat;

use crate::common::{
    node::{Daemon, Netns},
    *,
};

/// What `tracing` printed while `f` ran, one line per record.
fn captured(f: impl FnOnce()) -> Vec<String> {
    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);
    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let sink = Sink::default();
    let writer = sink.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .without_time()
        .with_max_level(tracing::Level::TRACE)
        .finish();
    tracing::subscriber::with_default(subscriber, f);
    let text = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
    text.lines().map(str::to_owned).collect()
}

struct Programs {
    dp: Datapath,
    log: Option<KernelLog>,
}

impl Programs {
    fn load(capacity: u32, level: KernelLogLevel) -> Self {
        require_root();
        let mut dp = Datapath::load_with(capacity, None, level).expect("load the eBPF object");
        let log = (level != KernelLogLevel::Off)
            .then(|| KernelLog::take(&mut dp.ebpf).expect("the log ring buffer"));
        Self { dp, log }
    }

    fn run(&self, prog: &str, frame: &[u8]) {
        let r = testrun::run(&self.dp.ebpf, prog, frame, None, 1).expect("BPF_PROG_TEST_RUN");
        assert_eq!(
            r.return_value,
            u32::MAX,
            "TC_ACT_UNSPEC: the packet goes on"
        );
    }

    /// The records written since the last call.
    fn records(&mut self) -> Vec<String> {
        let log = self.log.as_mut().expect("loaded with a log level");
        captured(|| log.flush())
    }

    fn stat(&self, s: Stat) -> u64 {
        self.dp.stats().expect("read the stats")[s as usize]
    }
}

fn udp_frame(sport: u16) -> Vec<u8> {
    eth(
        0x0800,
        &udp4(ip4("10.0.0.1"), ip4("10.0.0.2"), sport, 53, b"abcd"),
    )
}

#[test]
fn debug_says_which_header_and_where_a_packet_went_unparsed() {
    let mut p = Programs::load(1024, KernelLogLevel::Debug);

    // IPv4 header length 16 (IHL 4).
    let mut bad_ihl = udp_frame(1000);
    bad_ihl[14] = 0x44;
    // Cut inside the UDP header (BPF_PROG_TEST_RUN refuses IP frames
    // shorter than their fixed IP header).
    let short = udp_frame(1000)[..14 + 20 + 2].to_vec();
    // TCP data offset 3 (12 bytes).
    let mut bad_doff = eth(
        0x0800,
        &tcp4(ip4("10.0.0.1"), ip4("10.0.0.2"), 1000, 80, true, b""),
    );
    bad_doff[14 + 20 + 12] = 0x30;
    // On an L3 device: IP version 7.
    let no_ip_version = [0x70u8; 20];

    p.run(object::ETH_INGRESS, &bad_ihl);
    p.run(object::ETH_EGRESS, &short);
    p.run(object::ETH_INGRESS, &bad_doff);
    p.run(object::L3_INGRESS, &no_ip_version);
    p.run(object::ETH_INGRESS, &udp_frame(1001));

    let records = p.records();
    let expected = [
        "unparsed: malformed IPv4 header at byte 14 (46 B packet, 46 B linear), ifindex 1 ingress",
        "unparsed: truncated UDP header at byte 34 (36 B packet, 36 B linear), ifindex 1 egress",
        "unparsed: malformed TCP header at byte 34 (54 B packet, 54 B linear), ifindex 1 ingress",
        "unparsed: malformed link header at byte 0 (20 B packet, 20 B linear), ifindex 1 ingress",
    ];
    assert_eq!(
        records.len(),
        expected.len(),
        "one record per unparsed packet, none for the good one: {records:#?}"
    );
    for (record, want) in records.iter().zip(expected) {
        assert!(
            record.contains("observer::ebpf")
                && record.ends_with(&format!("{want} kernel_level=DEBUG")),
            "got {record:?}, want {want:?}"
        );
    }
    assert_eq!(p.stat(Stat::Unparsed), 4);
}

#[test]
fn off_writes_nothing_and_still_counts() {
    let p = Programs::load(1024, KernelLogLevel::Off);
    let mut bad_ihl = udp_frame(1000);
    bad_ihl[14] = 0x44;
    p.run(object::ETH_INGRESS, &bad_ihl);
    assert_eq!(p.stat(Stat::Unparsed), 1);

    // The ring is still in the object, untaken: nothing was written to it.
    let mut dp = p.dp;
    let mut log = KernelLog::take(&mut dp.ebpf).expect("the log ring buffer");
    assert_eq!(captured(|| log.flush()), Vec::<String>::new());
}

#[test]
fn warn_reports_a_full_flow_map_and_not_unparsed_packets() {
    const CAPACITY: u32 = 4;
    let mut p = Programs::load(CAPACITY, KernelLogLevel::Warn);
    for sport in 0..CAPACITY as u16 + 2 {
        p.run(object::ETH_INGRESS, &udp_frame(2000 + sport));
    }
    let mut bad_ihl = udp_frame(1000);
    bad_ihl[14] = 0x44;
    p.run(object::ETH_INGRESS, &bad_ihl);

    let records = p.records();
    assert_eq!(records.len(), 2, "{records:#?}");
    for record in &records {
        // -ENOSPC: no flow slot is free.
        assert!(
            record.contains(" WARN observer::ebpf: ")
                && record.ends_with(
                    "flow map insert failed (error -28): 1 packets counted in ifindex 1's overflow"
                ),
            "{record:?}"
        );
    }
    assert_eq!(p.stat(Stat::FlowInsertFailures), 2);
    assert_eq!(p.stat(Stat::Unparsed), 1);
}

/// A pod sends a frame whose IPv4 header says it is 16 bytes long, on a
/// raw socket: the daemon run with `--ebpf-log debug` shows why its
/// program could not parse it, on the pod's cali interface.
#[test]
fn the_daemon_shows_the_programs_log_when_asked() {
    require_root();
    let node = Netns::new("klog");
    let pod = node.pod("cali1", "10.98.0.1", "10.98.0.2");
    let ifindex = node.exec(&["cat", "/sys/class/net/cali1/ifindex"]);
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("daemon.log");
    let log_file = std::fs::File::create(&log).unwrap();
    let mut d = Daemon::start_with(&node, &["--ebpf-log", "debug"], |c| {
        c.stderr(log_file);
    });
    d.wait_attached("cali1");

    // Ethernet to broadcast, IPv4 with IHL 4, 20 bytes of header.
    let send = "import socket; s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW); \
                s.bind(('eth0', 0)); \
                s.send(b'\\xff' * 6 + b'\\x02\\x00\\x00\\x00\\x00\\x01' + b'\\x08\\x00' + b'\\x44' + b'\\x00' * 19)";
    pod.exec(&["python3", "-c", send]);
    let want = format!(
        "unparsed: malformed IPv4 header at byte 14 (34 B packet, 34 B linear), ifindex {} ingress",
        ifindex.trim()
    );
    d.wait_for(
        |_| std::fs::read_to_string(&log).is_ok_and(|l| l.contains(&want)),
        "the kernel's record in the daemon's log",
    );
    assert!(d.stop().success());
    let text = std::fs::read_to_string(&log).unwrap();
    let records: Vec<_> = text
        .lines()
        .filter(|l| l.contains("observer::ebpf"))
        .collect();
    assert_eq!(records.len(), 1, "one bad packet, one record: {text}");
}
