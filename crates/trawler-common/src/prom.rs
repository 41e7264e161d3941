//! Prometheus text exposition (format 0.0.4), written by hand: the few
//! rules of the format in one place instead of in every crate with metrics.
//!
//! `/metrics` is assembled from the crawl's, the store's, the enrichment's,
//! the cluster's and the API's figures, each crate writing its own
//! families. The format is simple enough that a client library would be
//! more code than it saves, but its details are easy to get subtly wrong in
//! one of five copies: `# HELP` and `# TYPE` once per family and before its
//! samples, label values escaped (`\`, `"` and newline), `+Inf` and `NaN`
//! spelled as Prometheus reads them. [`family`] writes the header lines of
//! a family and returns a [`Family`] that writes its samples.
//!
//! ```
//! use trawler_common::prom::{family, Kind};
//!
//! let mut out = String::new();
//! family(&mut out, "trawler_crawl_errors_total", Kind::Counter, "Failed attempts by kind.")
//!     .sample(&[("job", "influencers"), ("kind", "timeout")], 3u64)
//!     .sample(&[("job", "influencers"), ("kind", "connect")], 0u64);
//! assert_eq!(
//!     out.lines().collect::<Vec<_>>(),
//!     [
//!         "# HELP trawler_crawl_errors_total Failed attempts by kind.",
//!         "# TYPE trawler_crawl_errors_total counter",
//!         r#"trawler_crawl_errors_total{job="influencers",kind="timeout"} 3"#,
//!         r#"trawler_crawl_errors_total{job="influencers",kind="connect"} 0"#,
//!     ]
//! );
//! ```

use std::fmt::Write as _;

/// A family's type, its `# TYPE` line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up (resets when the process restarts).
    Counter,
    /// Goes up and down.
    Gauge,
    /// Cumulative `_bucket{le=…}` samples with `_sum` and `_count`.
    Histogram,
    /// No declared type.
    Untyped,
}

impl Kind {
    /// The kind named as in a `# TYPE` line (`"counter"`, `"gauge"`, …).
    pub fn from_name(name: &str) -> Option<Self> {
        [Kind::Counter, Kind::Gauge, Kind::Histogram, Kind::Untyped]
            .into_iter()
            .find(|k| k.name() == name)
    }

    fn name(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
            Kind::Untyped => "untyped",
        }
    }
}

/// A sample's value. Counts are written exactly, as integers; floats as
/// Rust writes them (never in exponent form), with `+Inf`, `-Inf` and `NaN`
/// spelled as the format wants.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value {
    /// A count.
    Int(u64),
    /// Anything else.
    Float(f64),
}

impl From<u64> for Value {
    fn from(v: u64) -> Self {
        Value::Int(v)
    }
}

impl From<f64> for Value {
    fn from(v: f64) -> Self {
        Value::Float(v)
    }
}

impl std::fmt::Display for Value {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Value::Int(v) => write!(f, "{v}"),
            Value::Float(v) if v.is_nan() => f.write_str("NaN"),
            Value::Float(v) if v == f64::INFINITY => f.write_str("+Inf"),
            Value::Float(v) if v == f64::NEG_INFINITY => f.write_str("-Inf"),
            Value::Float(v) => write!(f, "{v}"),
        }
    }
}

/// Appends the `# HELP` and `# TYPE` lines of the family `name` to `out`
/// and returns the writer of its samples. Call it once per family: the
/// format allows one header and wants the family's samples together.
pub fn family<'a>(out: &'a mut String, name: &'a str, kind: Kind, help: &str) -> Family<'a> {
    out.push_str("# HELP ");
    out.push_str(name);
    out.push(' ');
    for c in help.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    let _ = writeln!(out, "\n# TYPE {name} {}", kind.name());
    Family { out, name }
}

/// The samples of one family, appended after its header (see [`family`]).
#[derive(Debug)]
pub struct Family<'a> {
    out: &'a mut String,
    name: &'a str,
}

impl Family<'_> {
    /// Appends `name{labels} value`; without labels, `name value`.
    pub fn sample(&mut self, labels: &[(&str, &str)], value: impl Into<Value>) -> &mut Self {
        self.sample_of("", labels, value)
    }

    /// Appends a sample of the series `name` + `suffix` (a histogram's
    /// `_bucket`, `_sum` and `_count`).
    pub fn sample_of(
        &mut self,
        suffix: &str,
        labels: &[(&str, &str)],
        value: impl Into<Value>,
    ) -> &mut Self {
        let out = &mut *self.out;
        out.push_str(self.name);
        out.push_str(suffix);
        for (i, (label, v)) in labels.iter().enumerate() {
            out.push(if i == 0 { '{' } else { ',' });
            out.push_str(label);
            out.push_str("=\"");
            escape_label_value(v, out);
            out.push('"');
        }
        if !labels.is_empty() {
            out.push('}');
        }
        let _ = writeln!(out, " {}", value.into());
        self
    }
}

/// Appends `value` as the text between a label value's quotes: backslash,
/// double quote and line feed escaped as `\\`, `\"` and `\n`.
fn escape_label_value(value: &str, out: &mut String) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A label value read back as a Prometheus parser reads it: the text
    /// between the quotes, with `\\`, `\"` and `\n` undone; `None` for an
    /// unescaped quote or line feed, or another escape.
    fn unescape_label_value(text: &str) -> Option<String> {
        let mut out = String::new();
        let mut chars = text.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next()? {
                    '\\' => out.push('\\'),
                    '"' => out.push('"'),
                    'n' => out.push('\n'),
                    _ => return None,
                },
                '"' | '\n' => return None,
                c => out.push(c),
            }
        }
        Some(out)
    }

    fn escaped(value: &str) -> String {
        let mut out = String::new();
        escape_label_value(value, &mut out);
        out
    }

    #[test]
    fn header_once_then_samples() {
        let mut out = String::new();
        family(&mut out, "m", Kind::Gauge, "A gauge.")
            .sample(&[], 1u64)
            .sample(&[("a", "x")], 2.5);
        assert_eq!(
            out,
            "# HELP m A gauge.\n# TYPE m gauge\nm 1\nm{a=\"x\"} 2.5\n"
        );
    }

    #[test]
    fn a_family_without_samples_still_has_its_header() {
        let mut out = String::new();
        family(&mut out, "m", Kind::Counter, "Nothing yet.");
        assert_eq!(out, "# HELP m Nothing yet.\n# TYPE m counter\n");
    }

    #[test]
    fn histogram_series_take_a_suffix() {
        let mut out = String::new();
        family(&mut out, "lag", Kind::Histogram, "Lag.")
            .sample_of("_bucket", &[("le", "+Inf")], 4u64)
            .sample_of("_sum", &[], 2.0225)
            .sample_of("_count", &[], 4u64);
        assert!(out.ends_with("lag_bucket{le=\"+Inf\"} 4\nlag_sum 2.0225\nlag_count 4\n"));
        assert!(out.contains("# TYPE lag histogram\n"));
    }

    #[test]
    fn label_values_and_help_are_escaped() {
        let mut out = String::new();
        family(
            &mut out,
            "m",
            Kind::Gauge,
            "back\\slash and\nnewline \"kept\"",
        )
        .sample(&[("route", "a\"b\\c\nd")], 1u64);
        assert_eq!(
            out,
            "# HELP m back\\\\slash and\\nnewline \"kept\"\n\
             # TYPE m gauge\n\
             m{route=\"a\\\"b\\\\c\\nd\"} 1\n"
        );
    }

    #[test]
    fn values_as_prometheus_reads_them() {
        let text = |v: Value| v.to_string();
        assert_eq!(text(u64::MAX.into()), "18446744073709551615");
        assert_eq!(text(3.0.into()), "3");
        assert_eq!(text(0.002.into()), "0.002");
        assert_eq!(text(1e-7.into()), "0.0000001");
        assert_eq!(text(f64::INFINITY.into()), "+Inf");
        assert_eq!(text(f64::NEG_INFINITY.into()), "-Inf");
        assert_eq!(text(f64::NAN.into()), "NaN");
    }

    #[test]
    fn kinds_by_name() {
        for kind in [Kind::Counter, Kind::Gauge, Kind::Histogram, Kind::Untyped] {
            assert_eq!(Kind::from_name(kind.name()), Some(kind));
        }
        assert_eq!(Kind::from_name("summary"), None);
    }

    proptest! {
        #[test]
        fn any_label_value_round_trips(value in any::<String>()) {
            let text = escaped(&value);
            prop_assert!(!text.contains('\n'));
            prop_assert_eq!(unescape_label_value(&text), Some(value));
        }

        #[test]
        fn values_of_quotes_backslashes_and_newlines_round_trip(
            value in "[\\\\\"\nab]{0,16}"
        ) {
            prop_assert_eq!(unescape_label_value(&escaped(&value)), Some(value));
        }
    }
}
