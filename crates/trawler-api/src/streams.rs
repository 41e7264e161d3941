//! The API of a stream job: events in, windows out.
//!
//! * `POST /api/v1/streams/{job}/events` — NDJSON or a JSON array
//!   (`Content-Encoding: gzip` accepted), answered once the accepted events
//!   are durable, with what was accepted, filtered, late or malformed; 413
//!   beyond the job's `max_batch_bytes`, 503 while the pipeline's queue is
//!   full (retry after the `Retry-After`).
//! * `GET /api/v1/streams/{job}` — the job (labels, series, formulas) and
//!   its live statistics.
//! * `GET /api/v1/streams/{job}/groups` — the groups seen, by label.
//! * `GET /api/v1/streams/{job}/series?{key_label}=…&{value_label}=…&metrics=a,b&from=&to=`
//!   — stored series and formulas of one group (formulas are computed from
//!   their inputs, read in one batch); `live` adds the open windows.
//! * `GET /api/v1/streams/{job}/windows?from=&to=[&format=csv]` — every
//!   stored value in a time range, one row per window × group × series.
//! * `/metrics`, `/healthz`, and the dashboard page `/streams/{job}`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Serialize;
use tower::limit::GlobalConcurrencyLimitLayer;

pub use crate::topn::{TopAnswer, TopInfo, TopMember, TopMessage, TopSubscription};
use crate::{params, ApiConfig, ApiError, ErrorBody, HttpMetrics};

/// What a stream job's node answers.
pub trait StreamBackend: Send + Sync + 'static {
    /// The job.
    fn info(&self) -> &StreamInfo;
    /// Decodes and ingests a body (blocking: it waits until the batch is
    /// durable). `gzip` when the body is compressed.
    fn ingest(&self, body: &[u8], gzip: bool) -> Result<IngestAnswer, ApiError>;
    /// Live statistics.
    fn stats(&self) -> StreamStats;
    /// Every group's labels (key, value), by group id.
    fn groups(&self) -> Vec<(String, String)>;
    /// Points of `names` (series or formulas) of the group (key, value) in
    /// `[from, to]`, plus the open windows' values when `live`. `None`
    /// when the group is unknown. Blocking (reads the store).
    fn series(
        &self,
        group: (&str, &str),
        names: &[String],
        from_ms: i64,
        to_ms: i64,
        live: bool,
    ) -> Result<Option<Vec<NamedPoints>>, ApiError>;
    /// Every stored value in `[from, to]`. Blocking.
    fn windows(&self, from_ms: i64, to_ms: i64, limit: usize) -> Result<Vec<WindowRow>, ApiError>;
    /// Appends the job's metrics in Prometheus text format.
    fn render_metrics(&self, out: &mut String);
    /// A top-N job: the lists of `keys`.
    fn top(&self, _keys: &[String]) -> Result<Vec<TopAnswer>, ApiError> {
        Err(no_topn())
    }
    /// A top-N job: the `limit` hottest keys' lists.
    fn hottest(&self, _limit: usize) -> Result<Vec<TopAnswer>, ApiError> {
        Err(no_topn())
    }
    /// A top-N job: a subscription to `keys` (checked and deduplicated).
    fn subscribe(&self, _keys: Vec<String>) -> Result<TopSubscription, ApiError> {
        Err(no_topn())
    }
    /// A top-N job: replaces the keys of subscription `id`.
    fn resubscribe(&self, _id: &str, _keys: Vec<String>) -> Result<(), ApiError> {
        Err(no_topn())
    }
}

fn no_topn() -> ApiError {
    ApiError::not_found("no_topn", "this job keeps no top-N lists")
}

/// A stream job's description.
#[derive(Debug, Clone, Serialize)]
pub struct StreamInfo {
    /// The job name.
    pub name: String,
    /// Always `stream`.
    pub kind: &'static str,
    /// The label of a group member's key (`experiment`).
    pub key_label: String,
    /// The label of its value (`variant`).
    pub value_label: String,
    /// Window length, ms.
    pub window_ms: i64,
    /// Allowed lateness, ms.
    pub lateness_ms: i64,
    /// `http`, `nats` or `file`.
    pub source: String,
    /// Stored series, in order.
    pub series: Vec<String>,
    /// Formulas: (name, expression), in dependency order.
    pub formulas: Vec<FormulaInfo>,
    /// Largest accepted request body.
    pub max_batch_bytes: usize,
    /// A top-N job's settings (`None`: a windows job).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub topn: Option<TopInfo>,
}

/// A formula.
#[derive(Debug, Clone, Serialize)]
pub struct FormulaInfo {
    /// Its name.
    pub name: String,
    /// Its expression.
    pub expr: String,
}

/// The answer to `POST …/events`.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct IngestAnswer {
    /// Events accepted (durable now).
    pub accepted: u64,
    /// Dropped by the early filter.
    pub filtered: u64,
    /// Events of closed windows.
    pub late: u64,
    /// Events too far ahead of the clock.
    pub future: u64,
    /// Malformed events.
    pub malformed: u64,
    /// The first malformed events: line (or array element) and reason.
    pub errors: Vec<EventError>,
}

/// One malformed event.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct EventError {
    /// 1-based line of an NDJSON body, element of an array (0: the body).
    pub line: u64,
    /// Why.
    pub error: String,
}

/// Live statistics of a stream job.
#[derive(Debug, Clone, Default, Serialize)]
pub struct StreamStats {
    /// Events accepted since start.
    pub accepted: u64,
    /// Dropped by the early filter.
    pub filtered: u64,
    /// Late.
    pub late: u64,
    /// Ahead of the clock.
    pub future: u64,
    /// Malformed.
    pub malformed: u64,
    /// Largest accepted event time (unix ms), if any.
    pub watermark_ms: Option<i64>,
    /// Now minus the watermark, ms.
    pub watermark_lag_ms: Option<i64>,
    /// Windows open.
    pub open_windows: u64,
    /// Windows closed and stored since start.
    pub windows_closed: u64,
    /// Samples stored since start.
    pub samples: u64,
    /// Groups known.
    pub groups: u64,
    /// Window close latency, median and p99, ms.
    pub close_latency_p50_ms: Option<f64>,
    /// p99.
    pub close_latency_p99_ms: Option<f64>,
    /// Failed store writes (retried).
    pub sink_errors: u64,
    /// A top-N job in cluster mode: this node's share.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<TopClusterStats>,
}

/// A top-N cluster node's share of the partitions.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TopClusterStats {
    /// This node's id.
    pub node: String,
    /// Live nodes it sees.
    pub nodes: usize,
    /// Partitions the keys are hashed into.
    pub partitions: u32,
    /// The partitions it holds and serves.
    pub owned: Vec<u32>,
    /// The partitions it holds and is rebuilding from the stream.
    pub rebuilding: Vec<u32>,
    /// Rebuilds done since start.
    pub rebuilds: u64,
}

/// One series' points.
#[derive(Debug, Clone, Serialize)]
pub struct NamedPoints {
    /// The series or formula.
    pub name: String,
    /// (window start ms, value), oldest first.
    pub points: Vec<(i64, f64)>,
    /// The open windows' current values (with `live`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub open: Vec<(i64, f64)>,
}

/// One stored value.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct WindowRow {
    /// Window start, ms.
    pub window_start_ms: i64,
    /// The group's key.
    pub key: String,
    /// The group's value.
    pub value_label: String,
    /// The series.
    pub metric: String,
    /// The value.
    pub value: f64,
}

pub(crate) struct Ctx<S> {
    pub(crate) backend: Arc<S>,
    token: Option<String>,
    max_points: usize,
    http_metrics: Arc<HttpMetrics>,
}

type Shared<S> = State<Arc<Ctx<S>>>;

impl ApiConfig {
    /// Validates the configuration and builds the router of a stream job.
    pub fn build_stream<S: StreamBackend>(
        self,
        backend: Arc<S>,
    ) -> Result<crate::Api, crate::ConfigError> {
        self.check()?;
        let http_metrics = Arc::new(HttpMetrics::default());
        let info = backend.info().clone();
        let ctx = Arc::new(Ctx {
            backend,
            token: self.token.clone(),
            max_points: self.max_points,
            http_metrics: http_metrics.clone(),
        });
        let base = format!("/api/v1/streams/{}", info.name);
        let events = Router::new()
            .route(&format!("{base}/events"), post(ingest::<S>))
            .layer(DefaultBodyLimit::max(info.max_batch_bytes));
        let shaped = if info.topn.is_some() {
            crate::topn::routes::<S>(&base)
        } else {
            Router::new()
                .route(&format!("{base}/groups"), get(groups::<S>))
                .route(&format!("{base}/series"), get(series::<S>))
                .route(&format!("{base}/windows"), get(windows::<S>))
        };
        let router = Router::new()
            .route(&base, get(job::<S>))
            .merge(shaped)
            .route("/metrics", get(metrics::<S>))
            .route(
                "/healthz",
                get(|| async { Json(serde_json::json!({"status": "ok"})) }),
            )
            .layer(DefaultBodyLimit::max(self.max_body_bytes))
            .merge(events)
            .merge(crate::dashboard::stream_router(&info))
            .fallback(|| async { ApiError::not_found("no_route", "no such route") })
            .method_not_allowed_fallback(|| async {
                let body = ErrorBody::new("method_not_allowed", "method not allowed on this route");
                (StatusCode::METHOD_NOT_ALLOWED, Json(body))
            })
            .layer(axum::middleware::from_fn_with_state(
                http_metrics.clone(),
                crate::routes::count_requests,
            ))
            .layer(GlobalConcurrencyLimitLayer::new(self.max_concurrency))
            .merge(if info.topn.is_some() {
                crate::topn::subscribe_route::<S>(&base).layer(
                    axum::middleware::from_fn_with_state(
                        http_metrics.clone(),
                        crate::routes::count_requests,
                    ),
                )
            } else {
                Router::new()
            })
            .with_state(ctx);
        Ok(crate::Api {
            config: self,
            router,
            http_metrics,
            sampler: Box::new(|_stop| Box::pin(async {})),
        })
    }
}

pub(crate) fn query(
    q: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<HashMap<String, String>, ApiError> {
    q.map(|Query(q)| q)
        .map_err(|e| ApiError::bad_request("bad_query", format!("malformed query string: {e}")))
}

async fn ingest<S: StreamBackend>(
    State(ctx): Shared<S>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    crate::routes::token_ok(ctx.token.as_deref(), &headers)?;
    let limit = ctx.backend.info().max_batch_bytes;
    let body = body.map_err(|e| match e.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::TooLarge { limit },
        _ => ApiError::bad_request("bad_body", format!("unreadable body: {}", e.body_text())),
    })?;
    let gzip = match headers
        .get(header::CONTENT_ENCODING)
        .map(|v| v.to_str().unwrap_or("?"))
    {
        None | Some("identity") => false,
        Some(v) if v.eq_ignore_ascii_case("gzip") => true,
        Some(other) => {
            return Err(ApiError::bad_request(
                "bad_encoding",
                format!("Content-Encoding {other:?}: send identity or gzip"),
            ))
        }
    };
    let backend = ctx.backend.clone();
    let answer = tokio::task::spawn_blocking(move || backend.ingest(&body, gzip))
        .await
        .map_err(|e| ApiError::Unavailable(format!("ingest task failed: {e}")))?;
    match answer {
        Ok(a) => Ok(Json(a).into_response()),
        Err(ApiError::Unavailable(why)) => {
            let body = ErrorBody::new("busy", why);
            Ok((
                StatusCode::SERVICE_UNAVAILABLE,
                [(header::RETRY_AFTER, "1")],
                Json(body),
            )
                .into_response())
        }
        Err(e) => Err(e),
    }
}

#[derive(Serialize)]
struct JobAnswer<'a> {
    #[serde(flatten)]
    info: &'a StreamInfo,
    stats: StreamStats,
}

async fn job<S: StreamBackend>(State(ctx): Shared<S>) -> Response {
    Json(JobAnswer {
        info: ctx.backend.info(),
        stats: ctx.backend.stats(),
    })
    .into_response()
}

async fn groups<S: StreamBackend>(State(ctx): Shared<S>) -> Response {
    let info = ctx.backend.info();
    let list: Vec<BTreeMap<&str, String>> = ctx
        .backend
        .groups()
        .into_iter()
        .map(|(k, v)| {
            BTreeMap::from([(info.key_label.as_str(), k), (info.value_label.as_str(), v)])
        })
        .collect();
    Json(serde_json::json!({ "groups": list })).into_response()
}

fn time_range(q: &HashMap<String, String>) -> Result<(i64, i64), ApiError> {
    let from = q
        .get("from")
        .map(|v| params::instant("from", v))
        .transpose()?
        .unwrap_or(0);
    let to = q
        .get("to")
        .map(|v| params::instant("to", v))
        .transpose()?
        .unwrap_or(i64::MAX / 2);
    if from > to {
        return Err(ApiError::bad_request("bad_range", "from is after to"));
    }
    Ok((from, to))
}

async fn series<S: StreamBackend>(
    State(ctx): Shared<S>,
    q: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Response, ApiError> {
    let q = query(q)?;
    let info = ctx.backend.info();
    let label = |name: &str| {
        q.get(name).cloned().ok_or_else(|| {
            ApiError::bad_request(
                "missing_label",
                format!(
                    "a series read names its group: ?{}=…&{}=…",
                    info.key_label, info.value_label
                ),
            )
        })
    };
    let (key, value) = (label(&info.key_label)?, label(&info.value_label)?);
    let (from, to) = time_range(&q)?;
    let names: Vec<String> = match q.get("metrics") {
        Some(list) => list
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
        None => info
            .series
            .iter()
            .cloned()
            .chain(info.formulas.iter().map(|f| f.name.clone()))
            .collect(),
    };
    for n in &names {
        if !info.series.contains(n) && !info.formulas.iter().any(|f| f.name == *n) {
            return Err(ApiError::bad_request(
                "unknown_metric",
                format!(
                    "{n:?} is neither a series nor a formula of job {}",
                    info.name
                ),
            ));
        }
    }
    let live = q.get("live").is_some_and(|v| v != "false" && v != "0");
    let backend = ctx.backend.clone();
    let names2 = names.clone();
    let (k2, v2) = (key.clone(), value.clone());
    let got =
        tokio::task::spawn_blocking(move || backend.series((&k2, &v2), &names2, from, to, live))
            .await
            .map_err(|e| ApiError::Unavailable(format!("read failed: {e}")))??;
    let Some(series) = got else {
        return Err(ApiError::not_found(
            "unknown_group",
            format!(
                "no events of {}={key:?}, {}={value:?} yet",
                info.key_label, info.value_label
            ),
        ));
    };
    let points: usize = series.iter().map(|s| s.points.len()).sum();
    if points > ctx.max_points {
        return Err(ApiError::bad_request(
            "too_many_points",
            format!(
                "{points} points, more than the limit of {}: narrow from/to",
                ctx.max_points
            ),
        ));
    }
    let mut labels = serde_json::Map::new();
    labels.insert(info.key_label.clone(), key.into());
    labels.insert(info.value_label.clone(), value.into());
    Ok(Json(serde_json::json!({ "labels": labels, "series": series })).into_response())
}

async fn windows<S: StreamBackend>(
    State(ctx): Shared<S>,
    q: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Response, ApiError> {
    let q = query(q)?;
    let (from, to) = time_range(&q)?;
    let csv = match q.get("format").map(String::as_str) {
        None | Some("json") => false,
        Some("csv") => true,
        Some(other) => {
            return Err(ApiError::bad_request(
                "bad_format",
                format!("format {other:?}: json or csv"),
            ))
        }
    };
    let backend = ctx.backend.clone();
    let limit = ctx.max_points.saturating_mul(10);
    let rows = tokio::task::spawn_blocking(move || backend.windows(from, to, limit + 1))
        .await
        .map_err(|e| ApiError::Unavailable(format!("read failed: {e}")))??;
    if rows.len() > limit {
        return Err(ApiError::bad_request(
            "too_many_points",
            format!("more than {limit} values: narrow from/to"),
        ));
    }
    let info = ctx.backend.info();
    if csv {
        let mut out = format!(
            "window_start_ms,{},{},metric,value\n",
            info.key_label, info.value_label
        );
        for r in &rows {
            use std::fmt::Write;
            let _ = writeln!(
                out,
                "{},{},{},{},{}",
                r.window_start_ms,
                csv_field(&r.key),
                csv_field(&r.value_label),
                r.metric,
                r.value
            );
        }
        return Ok(([(header::CONTENT_TYPE, "text/csv")], out).into_response());
    }
    let rows: Vec<serde_json::Value> = rows
        .into_iter()
        .map(|r| {
            serde_json::json!({
                "window_start_ms": r.window_start_ms,
                info.key_label.as_str(): r.key,
                info.value_label.as_str(): r.value_label,
                "metric": r.metric,
                "value": r.value,
            })
        })
        .collect();
    Ok(Json(serde_json::json!({ "rows": rows })).into_response())
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

async fn metrics<S: StreamBackend>(State(ctx): Shared<S>) -> Response {
    let mut out = String::with_capacity(4 * 1024);
    ctx.backend.render_metrics(&mut out);
    ctx.http_metrics.render(&mut out);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}
