//! Label sets rendered once as text: a flow's nine labels cost more to
//! encode on every scrape than everything else in its sample, so the
//! capped families (up to `--max-series` label sets each) keep them as
//! `key="value",...` and write that string as it is.

use std::{fmt::Write as _, sync::Arc};

use prometheus_client::encoding::{EncodeLabelSet, LabelSetEncoder};

/// A label set whose labels can be listed in order, as `(key, value)`.
pub trait Labels {
    fn pairs(&self) -> Vec<(&'static str, &str)>;
}

/// `key="value",...` with the values escaped as the exposition formats
/// want (`\\`, `\"`, `\n`), ready to be written between the braces.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct RenderedLabels(Arc<str>);

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

    /// Both label sets registered the same way, encoded in both formats.
    fn both(labels: Two) -> (String, String) {
        let encode_with = |f: &dyn Fn(&mut Registry)| {
            let mut r = Registry::with_prefix_and_labels(
                "observer",
                [("node".into(), "n1".into())].into_iter(),
            );
            f(&mut r);
            let mut open = String::new();
            encode(&mut open, &r).unwrap();
            let mut text = String::new();
            prometheus_client::encoding::prometheus_text::encode(&mut text, &r).unwrap();
            open + &text
        };
        let derived = encode_with(&|r| {
            let f = Family::<Two, Counter>::default();
            f.get_or_create(&labels).inc_by(7);
            r.register("pod_packets", "Packets", f);
        });
        let rendered = encode_with(&|r| {
            let f = Family::<RenderedLabels, Counter>::default();
            f.get_or_create(&RenderedLabels::of(&labels)).inc_by(7);
            r.register("pod_packets", "Packets", f);
        });
        (derived, rendered)
    }

    #[test]
    fn rendered_labels_encode_exactly_as_derived_ones() {
        let (derived, rendered) = both(Two {
            pod: "web-1".into(),
            direction: "egress".into(),
        });
        assert!(
            derived.contains(
                r#"observer_pod_packets_total{node="n1",pod="web-1",direction="egress"} 7"#
            ),
            "{derived}"
        );
        assert_eq!(derived, rendered);
    }

    #[test]
    fn values_are_escaped_as_prometheus_client_escapes_them() {
        let (derived, rendered) = both(Two {
            pod: "a\"b\\c\nd".into(),
            direction: String::new(),
        });
        assert!(
            rendered.contains(r#"pod="a\"b\\c\nd",direction="""#),
            "{rendered}"
        );
        assert_eq!(derived, rendered);
    }
}
