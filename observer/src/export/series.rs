//! The capped families' series (pods, flows, Services, tunnels: up to
//! `--max-series` label sets each): each label set rendered once as text,
//! the counters of all families that share it side by side, in the order
//! the series appeared. A scrape of 10,000 flows then writes prepared text
//! and walks memory in order; through `Family`, encoding nine labels per
//! sample and chasing a pointer per counter were most of its time.

use std::{
    fmt::Write as _,
    sync::{
        Arc, RwLock,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, LabelSetEncoder, NoLabelSet},
    metrics::MetricType,
};

/// A label set whose labels can be listed in order, as `(key, value)`.
pub trait Labels {
    fn pairs(&self) -> Vec<(&'static str, &str)>;
}

/// `key="value",...` with the values escaped as the exposition formats
/// want (`\\`, `\"`, `\n`), ready to be written between the braces.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RenderedLabels(Box<str>);

impl RenderedLabels {
    pub fn of(labels: &impl Labels) -> Self {
        let mut text = String::new();
        for (i, (key, value)) in labels.pairs().into_iter().enumerate() {
            if i > 0 {
                text.push(',');
            }
            text.push_str(key);
            text.push_str("=\"");
            for c in value.chars() {
                match c {
                    '\\' => text.push_str("\\\\"),
                    '"' => text.push_str("\\\""),
                    '\n' => text.push_str("\\n"),
                    c => text.push(c),
                }
            }
            text.push('"');
        }
        Self(text.into())
    }
}

impl EncodeLabelSet for RenderedLabels {
    /// Written through the label-key writer, which writes text as it is
    /// (after the `{` or `,` that separates it from the labels before,
    /// the node's): the whole list at once, no value encoder.
    fn encode(&self, encoder: &mut LabelSetEncoder<'_>) -> Result<(), std::fmt::Error> {
        if self.0.is_empty() {
            return Ok(());
        }
        let mut label = encoder.encode_label();
        let mut key = label.encode_label_key()?;
        key.write_str(&self.0)
    }
}

/// Counter families sharing their label sets; registered as a collector.
#[derive(Debug)]
pub struct SeriesFamilies {
    /// Each family's name (without the registry's prefix) and help.
    descriptors: Vec<(&'static str, String)>,
    store: RwLock<Store>,
}

/// Series per chunk of counters.
const CHUNK: usize = 256;

#[derive(Debug, Default)]
struct Store {
    labels: Vec<RenderedLabels>,
    /// Series `s`'s counter of family `f`: `chunks[s / CHUNK]` at
    /// `(s % CHUNK) * families + f`. Chunks never move, so counters are
    /// added to without the lock.
    chunks: Vec<Arc<[AtomicU64]>>,
}

/// One counter of one series.
#[derive(Clone, Debug)]
pub struct SeriesCounter {
    chunk: Arc<[AtomicU64]>,
    at: usize,
}

impl SeriesCounter {
    pub fn inc_by(&self, v: u64) {
        self.chunk[self.at].fetch_add(v, Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.chunk[self.at].load(Relaxed)
    }
}

impl SeriesFamilies {
    /// Families named `(name, help)`, as `Registry::register` takes them.
    pub fn new(descriptors: &[(&'static str, &str)]) -> Arc<Self> {
        Arc::new(Self {
            // The registry ends help texts with a full stop; so do we.
            descriptors: descriptors
                .iter()
                .map(|(name, help)| (*name, format!("{help}.")))
                .collect(),
            store: RwLock::default(),
        })
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Store> {
        // Nothing panics while holding the lock half-way through a change.
        self.store.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a series; returns its index.
    pub fn add(&self, labels: RenderedLabels) -> usize {
        let mut store = self.store.write().unwrap_or_else(|e| e.into_inner());
        let s = store.labels.len();
        if s.is_multiple_of(CHUNK) {
            let n = self.descriptors.len();
            store
                .chunks
                .push((0..CHUNK * n).map(|_| AtomicU64::new(0)).collect());
        }
        store.labels.push(labels);
        s
    }

    /// Family `family`'s counter of series `series`.
    pub fn counter(&self, series: usize, family: usize) -> SeriesCounter {
        SeriesCounter {
            chunk: self.read().chunks[series / CHUNK].clone(),
            at: (series % CHUNK) * self.descriptors.len() + family,
        }
    }
}

impl Collector for SeriesFamilies {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let store = self.read();
        // As the registry does with a `Family`: no series, no family.
        if store.labels.is_empty() {
            return Ok(());
        }
        let n = self.descriptors.len();
        for (f, (name, help)) in self.descriptors.iter().enumerate() {
            let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (s, labels) in store.labels.iter().enumerate() {
                let v = store.chunks[s / CHUNK][(s % CHUNK) * n + f].load(Relaxed);
                metric
                    .encode_family(labels)?
                    .encode_counter::<NoLabelSet, _, u64>(&v, None)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use prometheus_client::{
        encoding::text::encode,
        metrics::{counter::Counter, family::Family},
        registry::Registry,
    };

    use super::*;

    #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
    struct Two {
        pod: String,
        direction: String,
    }

    impl Labels for Two {
        fn pairs(&self) -> Vec<(&'static str, &str)> {
            vec![("pod", &self.pod), ("direction", &self.direction)]
        }
    }

    const FAMILIES: [(&str, &str); 2] = [("pod_packets", "Packets"), ("pod_bytes", "Bytes")];

    /// Both formats of a registry with the node label, as the daemon's.
    fn encoded(register: impl Fn(&mut Registry)) -> String {
        let mut r = Registry::with_prefix_and_labels(
            "observer",
            [("node".into(), "n1".into())].into_iter(),
        );
        register(&mut r);
        let mut open = String::new();
        encode(&mut open, &r).unwrap();
        let mut text = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut text, &r).unwrap();
        open + &text
    }

    /// The same series through `Family` (derived labels) and through
    /// `SeriesFamilies` (rendered labels): series `i` counts `i + 1` packets
    /// and `10 * (i + 1)` bytes.
    fn both(series: &[Two]) -> (String, String) {
        let derived = encoded(|r| {
            for (f, (name, help)) in FAMILIES.iter().enumerate() {
                let family = Family::<Two, Counter>::default();
                for (i, labels) in series.iter().enumerate() {
                    let v = (i as u64 + 1) * if f == 0 { 1 } else { 10 };
                    family.get_or_create(labels).inc_by(v);
                }
                r.register(*name, *help, family);
            }
        });
        let rendered = encoded(|r| {
            let families = SeriesFamilies::new(&FAMILIES);
            for (i, labels) in series.iter().enumerate() {
                let s = families.add(RenderedLabels::of(labels));
                families.counter(s, 0).inc_by(i as u64 + 1);
                families.counter(s, 1).inc_by(10 * (i as u64 + 1));
            }
            r.register_collector(Box::new(families));
        });
        (derived, rendered)
    }

    #[test]
    fn series_encode_exactly_as_a_family_does() {
        let one = Two {
            pod: "web-1".into(),
            direction: "egress".into(),
        };
        let (derived, rendered) = both(std::slice::from_ref(&one));
        assert!(
            derived.contains(
                r#"observer_pod_bytes_total{node="n1",pod="web-1",direction="egress"} 10"#
            ),
            "{derived}"
        );
        assert_eq!(derived, rendered);
        // Several series, more than a chunk: the same lines (a Family's
        // order is its hash map's).
        let many: Vec<Two> = (0..CHUNK + 50)
            .map(|i| Two {
                pod: format!("web-{i}"),
                direction: "ingress".into(),
            })
            .collect();
        let (derived, rendered) = both(&many);
        let sorted = |s: &str| {
            let mut l: Vec<&str> = s.lines().collect();
            l.sort_unstable();
            l.join("\n")
        };
        assert_eq!(sorted(&derived), sorted(&rendered));
        assert!(rendered.contains(
            r#"observer_pod_packets_total{node="n1",pod="web-299",direction="ingress"} 300"#
        ));
    }

    #[test]
    fn values_are_escaped_as_prometheus_client_escapes_them() {
        let (derived, rendered) = both(&[Two {
            pod: "a\"b\\c\nd".into(),
            direction: String::new(),
        }]);
        assert!(
            rendered.contains(r#"pod="a\"b\\c\nd",direction="""#),
            "{rendered}"
        );
        assert_eq!(derived, rendered);
    }

    #[test]
    fn families_without_series_are_not_written() {
        let (derived, rendered) = both(&[]);
        assert!(!rendered.contains("pod_packets"), "{rendered}");
        assert_eq!(derived, rendered);
    }

    #[test]
    fn counters_count_where_they_point() {
        let families = SeriesFamilies::new(&FAMILIES);
        let a = families.add(RenderedLabels(r#"pod="a""#.into()));
        let b = families.add(RenderedLabels(r#"pod="b""#.into()));
        let (a_bytes, b_packets) = (families.counter(a, 1), families.counter(b, 0));
        a_bytes.inc_by(5);
        b_packets.inc_by(3);
        b_packets.inc_by(4);
        assert_eq!(
            [0, 1].map(|f| [a, b].map(|s| families.counter(s, f).get())),
            [[0, 7], [5, 0]]
        );
    }
}
