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

mod engine;
mod storage;
mod value;

pub use engine::{
    is_stale_nan, parse_selector, selector_matchers, Engine, EngineConfig, QueryError,
    STALE_NAN_BITS,
};

pub use storage::{
    Label, Labels, MatchOp, Matcher, MemoryStorage, Queryable, SelectLimits, Series, StorageError,
    METRIC_NAME,
};
pub use value::{format_value, Sample, Value, VectorSample};
