//! Routes and handlers. Each handler parses its inputs with [`crate::params`]
//! and answers through the [`Backend`]; extractor rejections are turned into
//! the API's JSON errors instead of axum's plain-text ones.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, MatchedPath, Path, Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use tower::limit::GlobalConcurrencyLimitLayer;

use crate::events::Hub;
use crate::{
    params, ApiConfig, ApiError, Backend, ErrorBody, HttpMetrics, JobShaped, KeyPage, Named,
    SeriesQuery, TopAnswer, TopBy,
};

struct Ctx<B> {
    backend: Arc<B>,
    /// The job's names (`info.key_name` names path keys in messages).
    info: crate::JobInfo,
    /// `bad_{key}` (`bad_pk`): the code of a malformed key, made once.
    bad_key: &'static str,
    /// `too_many_{keys}`: the code of an oversized track request.
    too_many_keys: &'static str,
    token: Option<String>,
    max_body_bytes: usize,
    max_track_ids: usize,
    max_points: usize,
    http_metrics: Arc<HttpMetrics>,
    hub: Arc<Hub>,
}

type Shared<B> = State<Arc<Ctx<B>>>;

pub(crate) fn router<B: Backend>(
    backend: Arc<B>,
    config: &ApiConfig,
    http_metrics: Arc<HttpMetrics>,
    hub: Arc<Hub>,
) -> Router {
    let info = backend.info().clone();
    let job = info.name.clone();
    let dashboard = crate::dashboard::router(&info);
    // Error codes are static strings; these two name the job's key, and
    // a router is built once per process.
    let bad_key: &'static str = Box::leak(format!("bad_{}", info.key_name).into_boxed_str());
    let too_many_keys: &'static str =
        Box::leak(format!("too_many_{}", info.keys_name()).into_boxed_str());
    let flag = info.flag.clone();
    // The path parameter carries the key's name, so routes read as the job
    // names them (`/api/v1/influencers/{pk}`, also in /metrics).
    let key = info.key_name.clone();
    let ctx = Arc::new(Ctx {
        backend,
        info,
        bad_key,
        too_many_keys,
        token: config.token.clone(),
        max_body_bytes: config.max_body_bytes,
        max_track_ids: config.max_track_ids,
        max_points: config.max_points,
        http_metrics: http_metrics.clone(),
        hub,
    });
    let base = format!("/api/v1/{job}");
    let mut router = Router::new();
    if let Some(flag) = flag {
        router = router.route(&format!("{base}/{flag}"), get(flagged::<B>));
    }
    router
        .route(&base, get(job_info::<B>))
        .route(
            "/healthz",
            get(|| async { Json(serde_json::json!({"status": "ok"})) }),
        )
        .route("/metrics", get(metrics::<B>))
        .route(&format!("{base}/stats"), get(stats::<B>))
        .route(&format!("{base}/invalid"), get(invalid::<B>))
        .route(&format!("{base}/top"), get(top::<B>))
        .route(&format!("{base}/average/series"), get(average_series::<B>))
        .route("/api/openapi.json", get(openapi::<B>))
        .route(&format!("{base}/track"), post(track::<B>))
        .route(
            &format!("{base}/{{{key}}}"),
            get(entity::<B>).delete(untrack::<B>),
        )
        .route(&format!("{base}/{{{key}}}/series"), get(series::<B>))
        .route("/api/v1/events", get(events::<B>))
        .route(&format!("{base}/health/history"), get(health_history::<B>))
        .merge(dashboard)
        .fallback(|| async { ApiError::not_found("no_route", "no such route") })
        .method_not_allowed_fallback(|| async {
            let body = ErrorBody::new("method_not_allowed", "method not allowed on this route");
            (StatusCode::METHOD_NOT_ALLOWED, Json(body))
        })
        .layer(middleware::from_fn_with_state(http_metrics, count_requests))
        .layer(DefaultBodyLimit::max(config.max_body_bytes))
        .layer(GlobalConcurrencyLimitLayer::new(config.max_concurrency))
        .with_state(ctx)
}

pub(crate) async fn count_requests(
    State(metrics): State<Arc<HttpMetrics>>,
    request: Request,
    next: Next,
) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let response = next.run(request).await;
    metrics.record(&route, response.status().as_u16());
    response
}

fn query(
    q: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<HashMap<String, String>, ApiError> {
    q.map(|Query(q)| q)
        .map_err(|e| ApiError::bad_request("bad_query", format!("malformed query string: {e}")))
}

fn check_token<B>(ctx: &Ctx<B>, headers: &HeaderMap) -> Result<(), ApiError> {
    token_ok(ctx.token.as_deref(), headers)
}

/// `Ok` when no token is configured or `headers` carry it as a bearer.
pub(crate) fn token_ok(expected: Option<&str>, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(expected) = expected else {
        return Ok(());
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    // Constant-time comparison: the token must not leak through timing.
    match given {
        Some(g)
            if g.len() == expected.len()
                && g.bytes()
                    .zip(expected.bytes())
                    .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                    == 0 =>
        {
            Ok(())
        }
        _ => Err(ApiError::Unauthorized),
    }
}

impl<B: Backend> Ctx<B> {
    /// The id of a key in a path or query: 400 if malformed, 404 if the
    /// job has never seen it.
    fn id(&self, text: &str) -> Result<u64, ApiError> {
        self.known(text)?.ok_or_else(|| self.not_tracked(text))
    }

    /// Like [`Ctx::id`], `None` for a well-formed key never seen.
    fn known(&self, text: &str) -> Result<Option<u64>, ApiError> {
        self.backend.key(text).map_err(|e| match e {
            ApiError::BadRequest { message, .. } => ApiError::bad_request(self.bad_key, message),
            other => other,
        })
    }

    fn not_tracked(&self, key: &str) -> ApiError {
        ApiError::not_found(
            "not_tracked",
            format!("{} {key} is not tracked", self.info.key_name),
        )
    }
}

/// `value` as JSON with the job's member names.
fn named<T: JobShaped>(info: &crate::JobInfo, value: &T) -> Response {
    Json(Named::new(info, value)).into_response()
}

async fn job_info<B: Backend>(State(ctx): Shared<B>) -> Json<crate::JobInfo> {
    Json(ctx.info.clone())
}

async fn entity<B: Backend>(
    State(ctx): Shared<B>,
    Path(key): Path<String>,
) -> Result<Response, ApiError> {
    let id = ctx.id(&key)?;
    let entity = ctx
        .backend
        .entity(id)?
        .ok_or_else(|| ctx.not_tracked(&key))?;
    Ok(named(&ctx.info, &entity))
}

async fn series<B: Backend>(
    State(ctx): Shared<B>,
    Path(key): Path<String>,
    q: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Response, ApiError> {
    let id = ctx.id(&key)?;
    let q = query(q)?;
    let metrics = &ctx.info.metrics;
    let metric = q.get("metric").ok_or_else(|| {
        ApiError::bad_request(
            "missing_metric",
            format!("metric is required; one of {}", metrics.join(", ")),
        )
    })?;
    if !metrics.iter().any(|m| m == metric) {
        return Err(ApiError::bad_request(
            "bad_metric",
            format!("unknown metric {metric:?}; one of {}", metrics.join(", ")),
        ));
    }
    let query = range(&q, ctx.backend.now_ms(), ctx.max_points)?;
    let backend = ctx.backend.clone();
    let metric_name = metric.clone();
    let points = tokio::task::spawn_blocking(move || backend.series(id, &metric_name, query))
        .await
        .map_err(|e| ApiError::Unavailable(format!("series read failed: {e}")))??
        .ok_or_else(|| ctx.not_tracked(&key))?;
    if points.len() > ctx.max_points {
        return Err(ApiError::bad_request(
            "too_many_points",
            format!(
                "the range holds more than {} points: narrow it or add a step",
                ctx.max_points
            ),
        ));
    }
    let series = crate::Series {
        key: Some(ctx.backend.key_json(id)),
        metric: metric.clone(),
        from: query.from_ms,
        to: query.to_ms,
        step: query.step_ms,
        points,
    };
    Ok(named(&ctx.info, &series))
}

/// A key in a track request: a number or a string, read as text and
/// checked by the backend.
#[derive(Debug, serde::Deserialize)]
#[serde(untagged)]
enum KeyText {
    Int(u64),
    Text(String),
}

async fn track<B: Backend>(
    State(ctx): Shared<B>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<crate::TrackOutcome>, ApiError> {
    check_token(&ctx, &headers)?;
    // Any content type is accepted (`curl -d` sends a form type): the body
    // must simply be the JSON document.
    let body = body.map_err(|e| match e.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::TooLarge {
            limit: ctx.max_body_bytes,
        },
        _ => ApiError::bad_request("bad_body", format!("unreadable body: {}", e.body_text())),
    })?;
    let field = ctx.info.keys_name();
    let expected = || {
        let kind = if ctx.info.string_keys {
            "strings"
        } else {
            "integers"
        };
        format!("expected {{\"{field}\":[{kind}]}}")
    };
    let mut body: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request("bad_body", format!("{}: {e}", expected())))?;
    let (Some(list), true) = (body.remove(&field), body.is_empty()) else {
        return Err(ApiError::bad_request("bad_body", expected()));
    };
    let list: Vec<KeyText> = serde_json::from_value(list)
        .map_err(|e| ApiError::bad_request("bad_body", format!("{}: {e}", expected())))?;
    if list.len() > ctx.max_track_ids {
        return Err(ApiError::bad_request(
            ctx.too_many_keys,
            format!(
                "at most {} {field} per request, got {}",
                ctx.max_track_ids,
                list.len()
            ),
        ));
    }
    let keys: Vec<String> = list
        .into_iter()
        .map(|k| match k {
            KeyText::Int(n) => n.to_string(),
            KeyText::Text(s) => s,
        })
        .collect();
    // Tracking persists the tracked set (write, fsync, rename): off the
    // async workers.
    let backend = ctx.backend.clone();
    let outcome = tokio::task::spawn_blocking(move || backend.track(&keys))
        .await
        .map_err(|e| ApiError::Unavailable(format!("track failed: {e}")))?
        .map_err(|e| match e {
            ApiError::BadRequest { message, .. } => ApiError::bad_request(ctx.bad_key, message),
            other => other,
        })?;
    Ok(Json(outcome))
}

async fn untrack<B: Backend>(
    State(ctx): Shared<B>,
    headers: HeaderMap,
    Path(key): Path<String>,
) -> Result<StatusCode, ApiError> {
    check_token(&ctx, &headers)?;
    let id = ctx.id(&key)?;
    let backend = ctx.backend.clone();
    let removed = tokio::task::spawn_blocking(move || backend.untrack(id))
        .await
        .map_err(|e| ApiError::Unavailable(format!("untrack failed: {e}")))??;
    if removed {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ctx.not_tracked(&key))
    }
}

async fn stats<B: Backend>(State(ctx): Shared<B>) -> Response {
    named(&ctx.info, &ctx.backend.stats())
}

async fn invalid<B: Backend>(
    State(ctx): Shared<B>,
    q: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Response, ApiError> {
    page(&ctx, q, |after, limit| ctx.backend.invalid(after, limit))
}

/// A page of keys after `after` (query `after`, `limit`), with the cursor
/// of the next page when this one is full ([`KeyPage`]).
fn page<B: Backend>(
    ctx: &Ctx<B>,
    q: Result<Query<HashMap<String, String>>, QueryRejection>,
    read: impl FnOnce(Option<u64>, usize) -> Vec<u64>,
) -> Result<Response, ApiError> {
    let q = query(q)?;
    let after = match q.get("after") {
        // A key never seen: nothing is after it in id order that a
        // client could have been given.
        Some(v) => Some(ctx.known(v)?.unwrap_or(u64::MAX)),
        None => None,
    };
    let limit = limit(&q, 100, 10_000)?;
    let ids = read(after, limit);
    let next = if ids.len() == limit {
        ids.last().map(|id| ctx.backend.key_json(*id))
    } else {
        None
    };
    let keys = ids.iter().map(|id| ctx.backend.key_json(*id)).collect();
    Ok(named(&ctx.info, &KeyPage { keys, next }))
}

async fn metrics<B: Backend>(State(ctx): Shared<B>) -> Response {
    let mut out = String::with_capacity(8 * 1024);
    ctx.backend.render_metrics(&mut out);
    ctx.http_metrics.render(&mut out);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}

/// Parses `from`, `to` (default: the last hour before `now`) and `step` of
/// a series read.
fn range(
    q: &HashMap<String, String>,
    now: i64,
    max_points: usize,
) -> Result<SeriesQuery, ApiError> {
    let to_ms = q
        .get("to")
        .map(|v| params::instant("to", v))
        .transpose()?
        .unwrap_or(now);
    let from_ms = q
        .get("from")
        .map(|v| params::instant("from", v))
        .transpose()?
        .unwrap_or(to_ms - 3_600_000);
    if from_ms > to_ms {
        return Err(ApiError::bad_request(
            "bad_range",
            format!("from ({from_ms}) is after to ({to_ms})"),
        ));
    }
    let step_ms = q
        .get("step")
        .map(|v| params::step(v))
        .transpose()?
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    let span = (to_ms - from_ms) as u128;
    if let Some(step) = step_ms {
        if span / step as u128 > max_points as u128 {
            return Err(ApiError::bad_request(
                "too_many_points",
                format!(
                    "from..to / step exceeds {} points: use a larger step",
                    max_points
                ),
            ));
        }
    }
    Ok(SeriesQuery {
        from_ms,
        to_ms,
        step_ms,
    })
}

/// Parses `limit` (default `default`, at most `max`).
fn limit(q: &HashMap<String, String>, default: usize, max: usize) -> Result<usize, ApiError> {
    match q.get("limit") {
        None => Ok(default),
        Some(v) => v
            .parse::<usize>()
            .ok()
            .filter(|l| (1..=max).contains(l))
            .ok_or_else(|| {
                ApiError::bad_request("bad_limit", format!("limit must be 1..={max}, got {v:?}"))
            }),
    }
}

async fn top<B: Backend>(
    State(ctx): Shared<B>,
    q: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Response, ApiError> {
    let q = query(q)?;
    let ranked = ctx.info.rank_metric.clone();
    let by_name = q.get("by").cloned().unwrap_or_else(|| ranked.clone());
    let by = match by_name.as_str() {
        "gain1h" => TopBy::Gain1h,
        "gain24h" => TopBy::Gain24h,
        "loss1h" => TopBy::Loss1h,
        "loss24h" => TopBy::Loss24h,
        name if name == ranked => TopBy::Ranked,
        other => {
            return Err(ApiError::bad_request(
                "bad_by",
                format!(
                    "by must be one of {ranked}, gain1h, gain24h, loss1h, loss24h; got {other:?}"
                ),
            ))
        }
    };
    let limit = limit(&q, 10, 1_000)?;
    let top = TopAnswer {
        by: by_name,
        entries: ctx.backend.top(by, limit),
    };
    Ok(named(&ctx.info, &top))
}

async fn flagged<B: Backend>(
    State(ctx): Shared<B>,
    q: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Response, ApiError> {
    page(&ctx, q, |after, limit| ctx.backend.flagged(after, limit))
}

async fn average_series<B: Backend>(
    State(ctx): Shared<B>,
    q: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Response, ApiError> {
    let q = query(q)?;
    let query = range(&q, ctx.backend.now_ms(), ctx.max_points)?;
    let backend = ctx.backend.clone();
    let points = tokio::task::spawn_blocking(move || backend.average_series(query))
        .await
        .map_err(|e| ApiError::Unavailable(format!("series read failed: {e}")))??;
    let series = crate::Series {
        key: None,
        metric: ctx.info.average.clone(),
        from: query.from_ms,
        to: query.to_ms,
        step: query.step_ms,
        points,
    };
    Ok(named(&ctx.info, &series))
}

async fn openapi<B: Backend>(State(ctx): Shared<B>) -> Response {
    Json(crate::openapi::document(&ctx.info)).into_response()
}

async fn events<B: Backend>(State(ctx): Shared<B>) -> Result<Response, ApiError> {
    Ok(ctx.hub.subscribe()?.into_response())
}

async fn health_history<B: Backend>(State(ctx): Shared<B>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        ctx.hub.history_json(),
    )
        .into_response()
}
