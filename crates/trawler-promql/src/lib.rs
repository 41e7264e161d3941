//! PromQL for trawler: Prometheus' query language evaluated over any store.
//!
//! Grafana, promtool and alerting rules speak PromQL and the Prometheus
//! HTTP API; implementing them lets users point what they already run at
//! trawler. The engine follows Prometheus 2.42 exactly (the reference its
//! tests compare against): lookback delta, staleness markers, the
//! extrapolation of `rate`/`increase`/`delta`, the ordering and labels of
//! every result.
//!
//! The seam is [`Queryable`]: a store lists the series matching a set of
//! [`Matcher`]s with their samples in a time range, and names its labels.
//! The node implements it over the embedded store and over
//! VictoriaMetrics, so the same query answers the same in both modes;
//! [`MemoryStorage`] implements it in memory for tests.
//!
//! How close "exactly" is, is measured, not claimed: `tests/compliance.rs`
//! (through the module `oracle`, behind the feature of that name)
//! loads one data set into a real Prometheus 2.42 (through its
//! remote-write receiver, stale markers included) and into
//! [`MemoryStorage`], runs the corpus `tests/compliance/queries.txt` (over
//! a thousand queries covering the ground of Prometheus' compliance tester)
//! as instant and range queries on both, and fails on any difference not
//! listed with its reason in `tests/compliance/known_differences.txt`.
//!
//! Where Prometheus 2.42 is odd, the engine is odd the same way, on
//! purpose: a sample exactly one lookback delta old still counts, range
//! windows include their start, `timestamp(x @ t offset o)` ignores the
//! offset, and an `@` argument of `predict_linear` moves with the steps of
//! a range query. Limits (`max_series`, `max_samples`, steps, timeout)
//! turn a query too large into an error naming the limit, never into
//! unbounded memory.

mod engine;
#[cfg(feature = "oracle")]
pub mod oracle;
pub mod params;
pub mod remote;
mod storage;
mod value;

pub use engine::{
    check_query, is_stale_nan, parse_selector, selector_matchers, Engine, EngineConfig, QueryError,
    STALE_NAN_BITS,
};

pub use storage::{
    is_label_name, is_metric_name, Label, Labels, MatchOp, Matcher, MemoryStorage, Queryable,
    SelectLimits, Series, StorageError, METRIC_NAME,
};
pub use value::{format_value, Sample, Value, VectorSample};
