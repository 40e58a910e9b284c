//! `/metrics` at the series cap: the daemon's own `Metrics`, fed 10,000
//! flows of a pod that differ by destination port (one flow label set
//! each), encoded as OpenMetrics (what Prometheus asks for) again and again.

use std::{sync::Arc, time::Instant};

use anyhow::{Result, ensure};
use observer_common::{FAMILY_IPV4, FlowKey, FlowStats};
use serde::Serialize;

use super::stats::Summary;
use crate::{
    config::{Dimension, Granularity, MetricsSettings},
    export::metrics::Metrics,
    model::Model,
    state::State,
};

#[derive(Serialize)]
pub struct RenderResult {
    /// Flow label sets (each a packets and a bytes series).
    pub flow_series: usize,
    pub encodes: usize,
    /// Wall time of one OpenMetrics encoding of everything.
    pub ms: Summary,
    pub bytes: usize,
    /// Lines of samples in the output.
    pub samples: usize,
    pub bytes_per_flow_series: f64,
    /// The metrics' update after a poll in which every flow grew: the
    /// first, which resolves every flow's series, and the later ones.
    pub first_update_ms: f64,
    pub update_ms: Summary,
}

pub fn run(flows: u16, encodes: usize) -> Result<RenderResult> {
    let mut st = state();
    let config = MetricsSettings {
        granularity: Granularity::Workload,
        dimensions: vec![
            Dimension::Protocol,
            Dimension::Port,
            Dimension::Service,
            Dimension::Encap,
        ],
        max_series: flows as usize,
    };
    let mut m = Metrics::new(config, "node-1");
    let mut updates = Vec::new();
    for poll in 1..=4u64 {
        st.table.begin_poll();
        for port in 1..=flows {
            // One kernel slot per flow, grown by the same amount each poll.
            let grown = FlowStats {
                skbs: 10 + port as u64,
                bytes: 1000 * port as u64,
                first_seen_jiffies: 1,
                last_seen_jiffies: 2,
                ..Default::default()
            };
            let now = FlowStats {
                skbs: poll * grown.skbs,
                bytes: poll * grown.bytes,
                ..grown
            };
            st.table.add(&flow(port), &grown, &now, poll == 1, false);
        }
        st.table.end_poll(0);
        let growth = st.table.take_growth();
        let t = Instant::now();
        m.update(&st, &growth, &[], &[], t);
        updates.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let mut ms = Vec::with_capacity(encodes);
    let mut text = String::new();
    for _ in 0..encodes {
        let t = Instant::now();
        text = m.encode(true);
        ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let samples = text.lines().filter(|l| !l.starts_with('#')).count();
    let flow_series = text
        .lines()
        .filter(|l| l.starts_with("observer_flow_packets_total{"))
        .count();
    ensure!(
        flow_series == flows as usize,
        "expected {flows} flow series, the encoding has {flow_series}"
    );
    let flow_bytes: usize = text
        .lines()
        .filter(|l| l.starts_with("observer_flow_"))
        .map(|l| l.len() + 1)
        .sum();
    Ok(RenderResult {
        flow_series,
        encodes,
        ms: Summary::of(&ms),
        bytes: text.len(),
        samples,
        bytes_per_flow_series: flow_bytes as f64 / flow_series as f64,
        first_update_ms: updates[0],
        update_ms: Summary::of(&updates[1..]),
    })
}

/// A pod's flow to destination port `port`.
fn flow(port: u16) -> FlowKey {
    let mut key = FlowKey {
        ifindex: 7,
        src_port: 40000,
        dst_port: port,
        family: FAMILY_IPV4,
        protocol: 6,
        ..Default::default()
    };
    let (mut s, mut d) = ([0u8; 16], [0u8; 16]);
    s[..4].copy_from_slice(&[10, 244, 0, 5]);
    d[..4].copy_from_slice(&[10, 244, 1, 9]);
    key.set_addrs(s, d);
    key
}

fn state() -> State {
    State::with_pod_interface("cali0123456789a".into(), Arc::new(Model::default()))
}
