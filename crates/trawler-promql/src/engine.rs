//! The query engine: `Engine::instant` and `Engine::range`.
//!
//! This first version evaluates plain instant-vector selectors only (with
//! the lookback delta and staleness markers); the rest of the language
//! answers [`QueryError::Execution`] naming what is not evaluated yet.

use std::time::Duration;

use promql_parser::label::MatchOp as ParserOp;
use promql_parser::parser::{self, Expr, VectorSelector};

use crate::{MatchOp, Matcher, Queryable, SelectLimits, StorageError, Value, VectorSample};

/// Prometheus' staleness marker: a NaN with this bit pattern ends a series.
pub const STALE_NAN_BITS: u64 = 0x7ff0_0000_0000_0002;

/// Whether a value is the staleness marker.
pub fn is_stale_nan(v: f64) -> bool {
    v.to_bits() == STALE_NAN_BITS
}

/// How queries are evaluated and bounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineConfig {
    /// How far back an instant selector looks for a sample (Prometheus'
    /// `--query.lookback-delta`, 5 minutes).
    pub lookback_delta_ms: i64,
    /// Bounds on what one selector may load.
    pub limits: SelectLimits,
    /// Most points one series of a range query's result may hold
    /// (Prometheus: 11,000).
    pub max_points_per_series: usize,
    /// The longest a query may run (`timeout` parameter may lower it).
    pub timeout: Duration,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            lookback_delta_ms: 300_000,
            limits: SelectLimits::default(),
            max_points_per_series: 11_000,
            timeout: Duration::from_secs(120),
        }
    }
}

/// Why a query failed, with the Prometheus API's error type for each.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
#[non_exhaustive]
pub enum QueryError {
    /// The query or a parameter is malformed (`bad_data`, 400).
    #[error("{0}")]
    BadData(String),
    /// The query is well formed but cannot be evaluated (`execution`, 422).
    #[error("{0}")]
    Execution(String),
    /// A limit was passed while loading data (`execution`, 422).
    #[error("{0}")]
    Storage(#[from] StorageError),
    /// The query ran longer than its timeout (`timeout`, 503).
    #[error("query timed out in {0}")]
    Timeout(&'static str),
}

impl QueryError {
    /// The `errorType` of the API's error envelope.
    pub fn error_type(&self) -> &'static str {
        match self {
            QueryError::BadData(_) => "bad_data",
            QueryError::Execution(_) => "execution",
            QueryError::Storage(StorageError::Unavailable(_)) => "unavailable",
            QueryError::Storage(_) => "execution",
            QueryError::Timeout(_) => "timeout",
        }
    }

    /// The HTTP status Prometheus answers with.
    pub fn status(&self) -> u16 {
        match self {
            QueryError::BadData(_) => 400,
            QueryError::Execution(_) => 422,
            QueryError::Storage(StorageError::Unavailable(_)) => 503,
            QueryError::Storage(_) => 422,
            QueryError::Timeout(_) => 503,
        }
    }
}

/// Parses a series selector such as `up{job="api"}` (`match[]` of the
/// series and label endpoints) into matchers. A selector whose every
/// matcher matches the empty string is refused, as Prometheus does.
pub fn parse_selector(text: &str) -> Result<Vec<Matcher>, QueryError> {
    match parser::parse(text).map_err(QueryError::BadData)? {
        Expr::VectorSelector(vs) => selector_matchers(&vs),
        _ => Err(QueryError::BadData(format!(
            "invalid parameter \"match[]\": {text:?} is not a series selector"
        ))),
    }
}

/// The matchers of a vector selector, its metric name included.
pub fn selector_matchers(vs: &VectorSelector) -> Result<Vec<Matcher>, QueryError> {
    let mut out = Vec::with_capacity(vs.matchers.matchers.len() + 1);
    if let Some(name) = &vs.name {
        out.push(Matcher::new(crate::METRIC_NAME, MatchOp::Equal, name).expect("no regex"));
    }
    if !vs.matchers.or_matchers.is_empty() {
        return Err(QueryError::BadData(
            "`or` inside a selector is not PromQL".to_owned(),
        ));
    }
    for m in &vs.matchers.matchers {
        let (op, value) = match &m.op {
            ParserOp::Equal => (MatchOp::Equal, m.value.as_str()),
            ParserOp::NotEqual => (MatchOp::NotEqual, m.value.as_str()),
            ParserOp::Re(_) => (MatchOp::Regex, m.value.as_str()),
            ParserOp::NotRe(_) => (MatchOp::NotRegex, m.value.as_str()),
        };
        out.push(Matcher::new(&m.name, op, value).map_err(|e| QueryError::BadData(e.to_string()))?);
    }
    if out.iter().all(Matcher::matches_empty) {
        return Err(QueryError::BadData(
            "vector selector must contain at least one non-empty matcher".to_owned(),
        ));
    }
    Ok(out)
}

/// Evaluates PromQL over a [`Queryable`].
#[derive(Debug, Clone, Default)]
pub struct Engine {
    config: EngineConfig,
}

impl Engine {
    /// An engine.
    pub fn new(config: EngineConfig) -> Self {
        Self { config }
    }

    /// Its configuration.
    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// Evaluates `query` at `t_ms` (`/api/v1/query`).
    pub fn instant(&self, q: &dyn Queryable, query: &str, t_ms: i64) -> Result<Value, QueryError> {
        let expr = parser::parse(query).map_err(QueryError::BadData)?;
        match expr {
            Expr::VectorSelector(vs) => {
                let matchers = selector_matchers(&vs)?;
                let series = q.select(
                    &matchers,
                    t_ms - self.config.lookback_delta_ms + 1,
                    t_ms,
                    self.config.limits,
                )?;
                let mut out: Vec<VectorSample> = series
                    .into_iter()
                    .filter_map(|s| {
                        let &(_, v) = s.samples.last()?;
                        (!is_stale_nan(v)).then_some(VectorSample {
                            labels: s.labels,
                            ts_ms: t_ms,
                            value: v,
                        })
                    })
                    .collect();
                out.sort_by(|a, b| a.labels.cmp(&b.labels));
                Ok(Value::Vector(out))
            }
            other => Err(QueryError::Execution(format!(
                "not evaluated yet: {}",
                other.prettify()
            ))),
        }
    }

    /// Evaluates `query` at every step from `start_ms` to `end_ms`
    /// (`/api/v1/query_range`); the result is always a matrix.
    pub fn range(
        &self,
        q: &dyn Queryable,
        query: &str,
        start_ms: i64,
        end_ms: i64,
        step_ms: i64,
    ) -> Result<Value, QueryError> {
        if step_ms <= 0 {
            return Err(QueryError::BadData(
                "zero or negative query resolution step widths are not accepted. Try a positive integer".to_owned(),
            ));
        }
        if end_ms < start_ms {
            return Err(QueryError::BadData(
                "end timestamp must not be before start time".to_owned(),
            ));
        }
        let mut by_labels: std::collections::BTreeMap<crate::Labels, Vec<(i64, f64)>> =
            std::collections::BTreeMap::new();
        let mut t = start_ms;
        while t <= end_ms {
            match self.instant(q, query, t)? {
                Value::Vector(v) => {
                    for s in v {
                        by_labels.entry(s.labels).or_default().push((t, s.value));
                    }
                }
                other => {
                    return Err(QueryError::BadData(format!(
                        "invalid expression type \"{}\" for range query, must be Scalar or instant Vector",
                        other.result_type()
                    )))
                }
            }
            t += step_ms;
        }
        Ok(Value::Matrix(
            by_labels
                .into_iter()
                .map(|(labels, points)| crate::Sample { labels, points })
                .collect(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Labels, MemoryStorage};

    #[test]
    fn an_instant_selector_sees_the_last_sample_within_the_lookback() {
        let s = MemoryStorage::new();
        let up = Labels::new([("__name__", "up"), ("job", "a")]);
        s.push(&up, 0, 1.0);
        s.push(&up, 60_000, 2.0);
        let e = Engine::default();
        let Value::Vector(v) = e.instant(&s, "up", 100_000).unwrap() else {
            panic!()
        };
        assert_eq!(v[0].value, 2.0);
        let Value::Vector(v) = e.instant(&s, "up", 360_001).unwrap() else {
            panic!()
        };
        assert!(v.is_empty());
        s.push(&up, 120_000, f64::from_bits(STALE_NAN_BITS));
        let Value::Vector(v) = e.instant(&s, "up", 130_000).unwrap() else {
            panic!()
        };
        assert!(v.is_empty());
        assert_eq!(parse_selector("{job=~\".*\"}").unwrap_err().status(), 400);
    }
}
