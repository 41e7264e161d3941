//! The query engine: `Engine::instant` and `Engine::range`.
//!
//! A query is parsed by promql-parser, resolved into the engine's own tree
//! ([`ast`]), then evaluated the way Prometheus 2.42's engine does it
//! ([`eval`]): every node over all the steps at once, selectors loading
//! their data once per query. [`functions`], [`aggregate`] and [`binary`]
//! follow Prometheus' code operation for operation, so that results agree
//! with it (the compliance test compares them with a real Prometheus).

mod aggregate;
mod ast;
mod binary;
mod eval;
mod functions;

use std::sync::Arc;
use std::time::{Duration, Instant};

use promql_parser::label::MatchOp as ParserOp;
use promql_parser::parser::{self, Expr, VectorSelector};

use crate::{MatchOp, Matcher, Queryable, Sample, SelectLimits, StorageError, Value, VectorSample};

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
    match parse(text)? {
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
        let deadline = Instant::now() + self.config.timeout;
        let expr = parse(query)?;
        let mut conv = ast::Converter::new(t_ms, t_ms);
        let node = conv.convert(&expr)?;
        let ctx = eval::Ctx::new(q, &self.config, deadline, &node, conv.selectors, t_ms, t_ms);
        let r = eval::Rng {
            start: t_ms,
            end: t_ms,
            interval: 1,
        };
        let m = match ctx.eval(&node, r)? {
            eval::Val::S(s) => return Ok(Value::String(t_ms, s)),
            eval::Val::M(m) => m,
        };
        Ok(match node.ty() {
            ast::Ty::Scalar => Value::Scalar(
                t_ms,
                m.first()
                    .and_then(|s| s.points.first())
                    .map_or(f64::NAN, |p| p.1),
            ),
            ast::Ty::Matrix => Value::Matrix(
                m.into_iter()
                    .map(|s| Sample {
                        labels: Arc::unwrap_or_clone(s.labels),
                        points: s.points,
                    })
                    .collect(),
            ),
            _ => {
                let mut v: Vec<VectorSample> = m
                    .into_iter()
                    .filter_map(|s| {
                        let value = s.points.first()?.1;
                        Some(VectorSample {
                            labels: Arc::unwrap_or_clone(s.labels),
                            ts_ms: t_ms,
                            value,
                        })
                    })
                    .collect();
                if !order_matters(&node) {
                    v.sort_by(|a, b| a.labels.cmp(&b.labels));
                }
                Value::Vector(v)
            }
        })
    }

    /// Evaluates `query` at every step from `start_ms` to `end_ms`
    /// (`/api/v1/query_range`); the result is always a matrix, sorted by
    /// labels.
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
        if (end_ms - start_ms) / step_ms >= self.config.max_points_per_series as i64 {
            return Err(QueryError::BadData(format!(
                "exceeded maximum resolution of {} points per timeseries. Try decreasing the query resolution (?step=XX)",
                self.config.max_points_per_series
            )));
        }
        let deadline = Instant::now() + self.config.timeout;
        let expr = parse(query)?;
        let mut conv = ast::Converter::new(start_ms, end_ms);
        let node = conv.convert(&expr)?;
        let ty = node.ty();
        if ty != ast::Ty::Scalar && ty != ast::Ty::Vector {
            return Err(QueryError::BadData(format!(
                "invalid expression type \"{}\" for range query, must be Scalar or instant Vector",
                ty.name()
            )));
        }
        let ctx = eval::Ctx::new(
            q,
            &self.config,
            deadline,
            &node,
            conv.selectors,
            start_ms,
            end_ms,
        );
        let r = eval::Rng {
            start: start_ms,
            end: end_ms,
            interval: step_ms,
        };
        let m = ctx.eval_m(&node, r)?;
        let mut out: Vec<Sample> = m
            .into_iter()
            .filter(|s| !s.points.is_empty())
            .map(|s| Sample {
                labels: Arc::unwrap_or_clone(s.labels),
                points: s.points,
            })
            .collect();
        out.sort_by(|a, b| a.labels.cmp(&b.labels));
        Ok(Value::Matrix(out))
    }
}

/// Checks that `query` is PromQL (a 400 `bad_data` error otherwise),
/// without evaluating it.
pub fn check_query(query: &str) -> Result<(), QueryError> {
    parse(query).map(drop)
}

/// Parses PromQL as Prometheus 2.42 knows it.
fn parse(query: &str) -> Result<Expr, QueryError> {
    register_legacy_functions();
    let expr = parser::parse(query).map_err(QueryError::BadData)?;
    ast::check_durations(query)?;
    Ok(expr)
}

/// Teaches the parser the functions of Prometheus 2.42 that later
/// versions renamed (`holt_winters`, now `double_exponential_smoothing`,
/// which 2.42 does not know and the converter refuses).
fn register_legacy_functions() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        use promql_parser::parser::function::{register_extra_functions, Function};
        use promql_parser::parser::value::ValueType;
        // Fails only if a later parser has it built in, which is as good.
        let _ = register_extra_functions(vec![Function::new(
            "holt_winters",
            vec![ValueType::Matrix, ValueType::Scalar, ValueType::Scalar],
            0,
            ValueType::Vector,
            false,
        )]);
    });
}

/// Whether an instant vector's order is part of the answer: that of
/// `sort`, `sort_desc`, `topk` and `bottomk` at the top of the query.
fn order_matters(n: &ast::Node) -> bool {
    matches!(
        n,
        ast::Node::Call {
            func: ast::Func::Sort | ast::Func::SortDesc,
            ..
        } | ast::Node::Agg {
            op: ast::AggOp::Topk | ast::AggOp::Bottomk,
            ..
        }
    )
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
