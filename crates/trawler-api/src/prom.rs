//! The Prometheus HTTP API: PromQL queries, series and label lookups,
//! metadata and remote write in, with Prometheus' own envelope.
//!
//! Grafana's Prometheus data source, promtool and anything else that speaks
//! this API can point at trawler. Answers are Prometheus 2.42's, byte for
//! byte where it matters: `{"status":"success","data":…}`, or
//! `{"status":"error","errorType":"bad_data|execution|timeout|unavailable",
//! "error":"…"}` with 400, 422 or 503, parameters from the query string and
//! from a form body (`POST` with `application/x-www-form-urlencoded`, as
//! Grafana sends long queries), repeated `match[]`, times as unix seconds
//! or RFC 3339.
//!
//! What is queried is a [`PromBackend`]: the node exposes its jobs' series
//! (and what was remote-written to it) through [`trawler_promql::Queryable`].
//! PromQL is evaluated by [`trawler_promql::Engine`] on the API runtime's
//! blocking threads, at most `max_queries` at once (more wait, as in
//! Prometheus), each bounded in series, samples, points and time.
//!
//! `POST /api/v1/write` takes remote write 1.0 (snappy + protobuf): the
//! body is decoded within [`WriteLimits`], every series' labels are checked
//! as Prometheus checks them, and the answer (204) is sent only after the
//! backend made the samples durable. It changes state, so it needs the
//! API token when one is set (remote-write senders send it as
//! `authorization.credentials`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, RawQuery, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::Serialize;
use trawler_promql::params::{parse_duration, parse_time, MAX_TIME_MS, MIN_TIME_MS};
use trawler_promql::remote::{self, DecodeError, MetricMetadata, WriteLimits, WriteRequest};
use trawler_promql::{
    is_label_name, is_metric_name, Engine, EngineConfig, Labels, Matcher, QueryError, Queryable,
    StorageError, METRIC_NAME,
};

use crate::HttpMetrics;

/// The Prometheus version whose API and PromQL trawler answers as
/// (`/api/v1/status/buildinfo`): what Grafana and promtool adapt to.
pub const PROMETHEUS_VERSION: &str = "2.42.0";

/// What the Prometheus API reads and writes.
pub trait PromBackend: Send + Sync + 'static {
    /// The series PromQL reads. Its calls block; they run on blocking
    /// threads.
    fn queryable(&self) -> &dyn Queryable;
    /// Stores remote-written series (labels already checked, sorted and
    /// unique, `__name__` set). Blocking; returns once the samples are as
    /// durable as the node's own, with how many were stored.
    fn write(&self, series: Vec<(Labels, Vec<(i64, f64)>)>) -> Result<WriteOutcome, WriteError>;
    /// Records the metadata a sender sent along (type, help, unit).
    fn write_metadata(&self, metadata: Vec<MetricMetadata>);
    /// The metadata of every metric family known, by family name.
    fn metadata(&self) -> BTreeMap<String, Vec<MetricMetadata>>;
}

/// What a write stored.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteOutcome {
    /// Samples stored.
    pub samples: u64,
    /// Samples dropped because their series already had newer data on
    /// disk (out of order), as Prometheus drops them.
    pub out_of_order: u64,
}

/// Why a write was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WriteError {
    /// The client's fault (400): the message says what to change.
    #[error("{0}")]
    Invalid(String),
    /// The store cannot take writes now (503: the sender retries).
    #[error("{0}")]
    Unavailable(String),
}

/// Limits of the Prometheus API.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PromSettings {
    /// How queries are evaluated and bounded (series, samples, points,
    /// timeout).
    pub engine: EngineConfig,
    /// Queries evaluated at once; more wait for a slot.
    pub max_queries: usize,
    /// Bounds on one remote-write request (decoded size, series, labels).
    pub write: WriteLimits,
    /// Largest compressed remote-write body (413 beyond).
    pub max_write_body_bytes: usize,
    /// Most results of a series or label lookup without a `limit`.
    pub max_lookup_results: usize,
}

impl Default for PromSettings {
    fn default() -> Self {
        Self {
            engine: EngineConfig::default(),
            max_queries: 8,
            write: WriteLimits::default(),
            max_write_body_bytes: 16 << 20,
            max_lookup_results: 1_000_000,
        }
    }
}

struct Ctx {
    backend: Arc<dyn PromBackend>,
    settings: PromSettings,
    token: Option<String>,
    queries: tokio::sync::Semaphore,
    metrics: Arc<HttpMetrics>,
}

type Shared = State<Arc<Ctx>>;

/// The routes, ready to merge into an API's router.
pub(crate) fn router(
    backend: Arc<dyn PromBackend>,
    settings: PromSettings,
    token: Option<String>,
    max_body_bytes: usize,
    metrics: Arc<HttpMetrics>,
) -> Router {
    let ctx = Arc::new(Ctx {
        backend,
        settings,
        token,
        queries: tokio::sync::Semaphore::new(settings.max_queries.max(1)),
        metrics: metrics.clone(),
    });
    let write = Router::new()
        .route("/api/v1/write", post(write))
        .layer(DefaultBodyLimit::max(settings.max_write_body_bytes));
    Router::new()
        .route("/api/v1/query", get(query).post(query))
        .route("/api/v1/query_range", get(query_range).post(query_range))
        .route("/api/v1/series", get(series).post(series))
        .route("/api/v1/labels", get(labels).post(labels))
        .route("/api/v1/label/{name}/values", get(label_values))
        .route("/api/v1/metadata", get(metadata))
        .route("/api/v1/query_exemplars", get(exemplars).post(exemplars))
        .route("/api/v1/status/buildinfo", get(buildinfo))
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .merge(write)
        .layer(axum::middleware::from_fn_with_state(
            metrics,
            crate::routes::count_requests,
        ))
        .with_state(ctx)
}

// ------------------------------------------------------------------ answers

#[derive(Serialize)]
struct Success<'a, T: Serialize> {
    status: &'static str,
    data: &'a T,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    warnings: Vec<String>,
}

/// An answer of the API: data or an error, in Prometheus' envelope.
struct Answer(Response);

impl IntoResponse for Answer {
    fn into_response(self) -> Response {
        self.0
    }
}

fn success<T: Serialize>(data: &T, warnings: Vec<String>) -> Answer {
    match serde_json::to_vec(&Success {
        status: "success",
        data,
        warnings,
    }) {
        Ok(body) => Answer(
            (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "application/json")],
                body,
            )
                .into_response(),
        ),
        Err(e) => failure(&QueryError::Execution(format!("encoding the answer: {e}"))),
    }
}

/// A lookup's results (with their warnings) or its error.
fn answer<T: Serialize>(r: Result<(T, Vec<String>), QueryError>) -> Answer {
    match r {
        Ok((data, warnings)) => success(&data, warnings),
        Err(e) => failure(&e),
    }
}

fn failure(e: &QueryError) -> Answer {
    failure_with(e.status(), e.error_type(), &e.to_string())
}

fn failure_with(status: u16, error_type: &str, message: &str) -> Answer {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if status.is_server_error() {
        tracing::warn!(error_type, error = message, "Prometheus API request failed");
    }
    let body = serde_json::json!({"status": "error", "errorType": error_type, "error": message});
    Answer(
        (
            status,
            [(header::CONTENT_TYPE, "application/json")],
            body.to_string(),
        )
            .into_response(),
    )
}

fn bad(message: impl Into<String>) -> QueryError {
    QueryError::BadData(message.into())
}

// ------------------------------------------------------------------ parameters

/// The parameters of a request: the query string's, then (for a form
/// `POST`) the body's, as Go's `r.Form` merges them.
struct Form(Vec<(String, String)>);

impl Form {
    fn read(
        method: &Method,
        headers: &HeaderMap,
        raw: Option<String>,
        body: Result<Bytes, BytesRejection>,
    ) -> Result<Self, QueryError> {
        let mut pairs = Self::from_query(raw).0;
        if method == Method::POST {
            let form = headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
            let body = body.map_err(|e| bad(format!("unreadable body: {}", e.body_text())))?;
            if form {
                pairs.extend(form_urlencoded::parse(&body).into_owned());
            }
        }
        Ok(Self(pairs))
    }

    /// The parameters of a `GET`-only route: its query string's.
    fn from_query(raw: Option<String>) -> Self {
        Self(
            raw.as_deref()
                .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
                .unwrap_or_default(),
        )
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn all(&self, name: &str) -> Vec<&str> {
        self.0
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    fn time_or(&self, name: &str, default: i64) -> Result<i64, QueryError> {
        match self.get(name) {
            Some(t) if !t.is_empty() => parse_time(name, t),
            _ => Ok(default),
        }
    }

    fn required_time(&self, name: &str) -> Result<i64, QueryError> {
        parse_time(name, self.get(name).unwrap_or(""))
    }

    /// The engine for this request: its own `timeout` when shorter.
    fn engine(&self, config: EngineConfig) -> Result<Engine, QueryError> {
        let mut config = config;
        if let Some(t) = self.get("timeout").filter(|t| !t.is_empty()) {
            let ms = parse_duration("timeout", t)?;
            if ms > 0 {
                config.timeout = config.timeout.min(Duration::from_millis(ms as u64));
            }
        }
        Ok(Engine::new(config))
    }

    /// `limit`: 0 or absent is "no limit" (the configured maximum).
    fn limit(&self, max: usize) -> Result<usize, QueryError> {
        match self.get("limit").filter(|l| !l.is_empty()) {
            None => Ok(max),
            Some(l) => match l.parse::<i64>() {
                Ok(n) if n > 0 => Ok((n as usize).min(max)),
                Ok(0) => Ok(max),
                _ => Err(bad(format!(
                    "invalid parameter \"limit\": cannot parse \"{l}\" to a valid limit"
                ))),
            },
        }
    }

    /// The parameters of the series and label lookups: `match[]`,
    /// `start` and `end` (unbounded by default) and `limit`.
    fn lookup(&self, max_results: usize) -> Result<Lookup, QueryError> {
        Ok(Lookup {
            selectors: self.matchers()?,
            start: self.time_or("start", MIN_TIME_MS)?,
            end: self.time_or("end", MAX_TIME_MS)?,
            limit: self.limit(max_results)?,
        })
    }

    fn matchers(&self) -> Result<Vec<Vec<Matcher>>, QueryError> {
        self.all("match[]")
            .into_iter()
            .map(trawler_promql::parse_selector)
            .collect()
    }
}

/// What a series or label lookup asks for.
struct Lookup {
    selectors: Vec<Vec<Matcher>>,
    start: i64,
    end: i64,
    limit: usize,
}

/// Runs `f` on a blocking thread once a query slot is free.
async fn blocking<T: Send + 'static>(
    ctx: &Arc<Ctx>,
    f: impl FnOnce(&dyn PromBackend) -> Result<T, QueryError> + Send + 'static,
) -> Result<T, QueryError> {
    let _slot = ctx
        .queries
        .acquire()
        .await
        .map_err(|_| QueryError::Storage(StorageError::Unavailable("shutting down".into())))?;
    let backend = ctx.backend.clone();
    tokio::task::spawn_blocking(move || f(&*backend))
        .await
        .map_err(|e| QueryError::Execution(format!("the query failed: {e}")))?
}

fn now_ms() -> i64 {
    trawler_common::clock::unix_ms()
}

// ------------------------------------------------------------------ handlers

async fn query(
    State(ctx): Shared,
    method: Method,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
    body: Result<Bytes, BytesRejection>,
) -> Answer {
    let run = async {
        let form = Form::read(&method, &headers, raw, body)?;
        let q = form.get("query").unwrap_or("").to_owned();
        let t = form.time_or("time", now_ms())?;
        let engine = form.engine(ctx.settings.engine)?;
        blocking(&ctx, move |b| engine.instant(b.queryable(), &q, t)).await
    };
    match run.await {
        Ok(v) => success(&v, Vec::new()),
        Err(e) => failure(&e),
    }
}

async fn query_range(
    State(ctx): Shared,
    method: Method,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
    body: Result<Bytes, BytesRejection>,
) -> Answer {
    let run = async {
        let form = Form::read(&method, &headers, raw, body)?;
        let start = form.required_time("start")?;
        let end = form.required_time("end")?;
        let step = parse_duration("step", form.get("step").unwrap_or(""))?;
        let q = form.get("query").unwrap_or("").to_owned();
        let engine = form.engine(ctx.settings.engine)?;
        blocking(&ctx, move |b| {
            engine.range(b.queryable(), &q, start, end, step)
        })
        .await
    };
    match run.await {
        Ok(v) => success(&v, Vec::new()),
        Err(e) => failure(&e),
    }
}

/// Truncates `items` to `limit`, with Prometheus' warning when it did.
fn truncate<T>(items: &mut Vec<T>, limit: usize) -> Vec<String> {
    if items.len() > limit {
        items.truncate(limit);
        vec!["results truncated due to limit".to_owned()]
    } else {
        Vec::new()
    }
}

async fn series(
    State(ctx): Shared,
    method: Method,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
    body: Result<Bytes, BytesRejection>,
) -> Answer {
    let run = async {
        let form = Form::read(&method, &headers, raw, body)?;
        let l = form.lookup(ctx.settings.max_lookup_results)?;
        if l.selectors.is_empty() {
            return Err(bad("no match[] parameter provided"));
        }
        let limits = ctx.settings.engine.limits;
        let mut all = blocking(&ctx, move |b| {
            let mut all: Vec<Labels> = Vec::new();
            for m in &l.selectors {
                all.extend(b.queryable().series(m, l.start, l.end, limits)?);
            }
            all.sort();
            all.dedup();
            Ok(all)
        })
        .await?;
        let warnings = truncate(&mut all, l.limit);
        Ok((all, warnings))
    };
    answer(run.await)
}

async fn labels(
    State(ctx): Shared,
    method: Method,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
    body: Result<Bytes, BytesRejection>,
) -> Answer {
    let run = async {
        let form = Form::read(&method, &headers, raw, body)?;
        let l = form.lookup(ctx.settings.max_lookup_results)?;
        let mut names = blocking(&ctx, move |b| {
            Ok(b.queryable().label_names(&l.selectors, l.start, l.end)?)
        })
        .await?;
        let warnings = truncate(&mut names, l.limit);
        Ok((names, warnings))
    };
    answer(run.await)
}

async fn label_values(
    State(ctx): Shared,
    Path(name): Path<String>,
    RawQuery(raw): RawQuery,
) -> Answer {
    let run = async {
        if !is_label_name(&name) {
            return Err(bad(format!("invalid label name: {name:?}")));
        }
        let l = Form::from_query(raw).lookup(ctx.settings.max_lookup_results)?;
        let mut values = blocking(&ctx, move |b| {
            Ok(b.queryable()
                .label_values(&name, &l.selectors, l.start, l.end)?)
        })
        .await?;
        let warnings = truncate(&mut values, l.limit);
        Ok((values, warnings))
    };
    answer(run.await)
}

#[derive(Serialize)]
struct MetadataEntry<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    help: &'a str,
    unit: &'a str,
}

async fn metadata(State(ctx): Shared, RawQuery(raw): RawQuery) -> Answer {
    let form = Form::from_query(raw);
    let limit = match form.get("limit").filter(|l| !l.is_empty()) {
        None => usize::MAX,
        Some(l) => match l.parse::<i64>() {
            Ok(n) if n < 0 => usize::MAX,
            Ok(n) => n as usize,
            Err(_) => {
                return failure(&bad(format!(
                    "invalid parameter \"limit\": cannot parse \"{l}\" to a valid limit"
                )))
            }
        },
    };
    let metric = form.get("metric").filter(|m| !m.is_empty());
    let all = ctx.backend.metadata();
    let mut out: BTreeMap<&str, Vec<MetadataEntry<'_>>> = BTreeMap::new();
    for (family, entries) in &all {
        if metric.is_some_and(|m| m != family) || out.len() >= limit {
            continue;
        }
        out.insert(
            family,
            entries
                .iter()
                .map(|m| MetadataEntry {
                    kind: &m.kind,
                    help: &m.help,
                    unit: &m.unit,
                })
                .collect(),
        );
    }
    success(&out, Vec::new())
}

/// trawler keeps no exemplars: the answer is always empty, as Prometheus'
/// is for series without them (Grafana asks when exemplars are enabled).
async fn exemplars(
    method: Method,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
    body: Result<Bytes, BytesRejection>,
) -> Answer {
    let run = || {
        let form = Form::read(&method, &headers, raw, body)?;
        let q = form.get("query").unwrap_or("");
        trawler_promql::check_query(q)
    };
    match run() {
        Ok(()) => success(&Vec::<()>::new(), Vec::new()),
        Err(e) => failure(&e),
    }
}

async fn buildinfo() -> Answer {
    success(
        &serde_json::json!({
            "version": PROMETHEUS_VERSION,
            "revision": concat!("trawler-", env!("CARGO_PKG_VERSION")),
            "branch": "",
            "buildUser": "",
            "buildDate": "",
            "goVersion": "",
        }),
        Vec::new(),
    )
}

// ------------------------------------------------------------------ remote write

async fn write(
    State(ctx): Shared,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Answer {
    if crate::routes::token_ok(ctx.token.as_deref(), &headers).is_err() {
        return failure_with(
            401,
            "unauthorized",
            "a valid bearer token is required to write",
        );
    }
    let limit = ctx.settings.max_write_body_bytes;
    let body = match body {
        Ok(b) => b,
        Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return failure_with(
                413,
                "bad_data",
                &format!("the body is larger than {limit} bytes (limit max_write_body_bytes)"),
            )
        }
        Err(e) => {
            return failure_with(
                400,
                "bad_data",
                &format!("unreadable body: {}", e.body_text()),
            )
        }
    };
    let encoding = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !encoding.is_empty() && !encoding.eq_ignore_ascii_case("snappy") {
        return failure_with(
            415,
            "bad_data",
            &format!(
                "Content-Encoding {encoding:?} is not supported: remote write 1.0 sends snappy"
            ),
        );
    }
    let req = match remote::decode_body(&body, ctx.settings.write) {
        Ok(r) => r,
        Err(e @ DecodeError::TooLarge { .. }) => {
            return failure_with(413, "bad_data", &e.to_string())
        }
        Err(e) => return failure_with(400, "bad_data", &e.to_string()),
    };
    let (series, metadata) = match checked(req) {
        Ok(s) => s,
        Err(e) => return failure_with(400, "bad_data", &e),
    };
    let backend = ctx.backend.clone();
    let samples: usize = series.iter().map(|s| s.1.len()).sum();
    let stored = tokio::task::spawn_blocking(move || {
        if !metadata.is_empty() {
            backend.write_metadata(metadata);
        }
        backend.write(series)
    })
    .await;
    match stored {
        Ok(Ok(outcome)) => {
            ctx.metrics
                .record_remote_write(outcome.samples, outcome.out_of_order);
            tracing::debug!(
                samples,
                stored = outcome.samples,
                out_of_order = outcome.out_of_order,
                "remote write"
            );
            if outcome.out_of_order > 0 {
                // Prometheus answers 400 to out-of-order and out-of-bounds
                // samples, so that the sender does not retry them; the
                // samples that could be stored are.
                return failure_with(
                    400,
                    "bad_data",
                    &format!(
                        "{} of {samples} samples were dropped: out of order (their series has newer data on disk) or older than the store's retention, which counts back from its newest sample; the other {} are stored",
                        outcome.out_of_order, outcome.samples
                    ),
                );
            }
            Answer(StatusCode::NO_CONTENT.into_response())
        }
        Ok(Err(WriteError::Invalid(m))) => failure_with(400, "bad_data", &m),
        Ok(Err(WriteError::Unavailable(m))) => failure_with(503, "unavailable", &m),
        Err(e) => failure_with(503, "unavailable", &format!("the write failed: {e}")),
    }
}

/// Checks every series' labels as Prometheus' receiver does: a valid
/// metric name, valid and unique label names; empty values are dropped.
/// Samples are sorted by time (a sender may batch out of order).
#[allow(clippy::type_complexity)]
fn checked(
    req: WriteRequest,
) -> Result<(Vec<(Labels, Vec<(i64, f64)>)>, Vec<MetricMetadata>), String> {
    let mut out = Vec::with_capacity(req.timeseries.len());
    for ts in req.timeseries {
        let mut names: Vec<&str> = ts.labels.iter().map(|(n, _)| n.as_str()).collect();
        names.sort_unstable();
        if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
            return Err(format!("a series has the label {:?} twice", w[0]));
        }
        if let Some((n, _)) = ts.labels.iter().find(|(n, _)| !is_label_name(n)) {
            return Err(format!("invalid label name {n:?}"));
        }
        let labels = Labels::new(ts.labels);
        let name = labels.get(METRIC_NAME);
        if name.is_empty() {
            return Err("a series has no metric name (label __name__)".to_owned());
        }
        if !is_metric_name(name) {
            return Err(format!("invalid metric name {name:?}"));
        }
        let mut samples = ts.samples;
        samples.sort_by_key(|s| s.0);
        if !samples.is_empty() {
            out.push((labels, samples));
        }
    }
    Ok((out, req.metadata))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_as_prometheus_does() {
        assert!(is_label_name("job") && is_label_name("_a1") && !is_label_name("1a"));
        assert!(!is_label_name("a-b") && !is_label_name("") && !is_label_name("a:b"));
        assert!(is_metric_name("a:b_c") && !is_metric_name("a-b") && !is_metric_name(""));
    }

    fn ts(labels: &[(&str, &str)]) -> remote::TimeSeries {
        remote::TimeSeries {
            labels: labels
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
            samples: vec![(2, 2.0), (1, 1.0)],
        }
    }

    #[test]
    fn written_series_are_checked_and_their_samples_sorted() {
        let req = |s: remote::TimeSeries| WriteRequest {
            timeseries: vec![s],
            metadata: vec![],
        };
        let (ok, _) = checked(req(ts(&[("__name__", "up"), ("job", "a"), ("x", "")]))).unwrap();
        assert_eq!(ok[0].0, Labels::new([("__name__", "up"), ("job", "a")]));
        assert_eq!(ok[0].1, vec![(1, 1.0), (2, 2.0)]);
        assert!(checked(req(ts(&[("job", "a")])))
            .unwrap_err()
            .contains("no metric name"));
        assert!(
            checked(req(ts(&[("__name__", "up"), ("job", "a"), ("job", "b")])))
                .unwrap_err()
                .contains("twice")
        );
        assert!(checked(req(ts(&[("__name__", "up"), ("a-b", "x")])))
            .unwrap_err()
            .contains("invalid label name"));
        assert!(checked(req(ts(&[("__name__", "up-time")])))
            .unwrap_err()
            .contains("invalid metric name"));
    }
}
