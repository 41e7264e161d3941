//! The API of a top-N job (`[stream.topn]`): live top-N lists per key.
//!
//! * `GET /api/v1/streams/{job}/top?keys=p1,p2` — the current lists.
//! * `GET /api/v1/streams/{job}/hot?limit=20` — the keys with the highest
//!   totals, with their lists.
//! * `GET /api/v1/streams/{job}/subscribe?keys=p1,p2` — server-sent
//!   events: `subscribed` (the subscription's id and keys), then a
//!   `snapshot` with every key's current list, then an `update` whenever a
//!   list or total changes — every changed key of the subscriber in one
//!   message, at most one per key per the job's `push_interval`. Each
//!   message carries whole lists (not deltas), so a reconnect (with or
//!   without `Last-Event-ID`) starts from a snapshot and misses nothing the
//!   state still holds. A subscriber whose queue fills (it stopped
//!   reading) is dropped — its stream ends — and counted; it never slows
//!   the others.
//! * `POST /api/v1/streams/{job}/subscriptions/{id}` with `{"keys":[…]}` —
//!   replaces the keys of a live subscription; the new keys' snapshots
//!   follow on its stream. The id is a random 128-bit capability known only
//!   to the subscriber, so this needs no API token.
//!
//! Limits: the job's `max_subscribers` (503 beyond) and `max_keys` per
//! subscriber (400 beyond). Subscriptions are outside the API's
//! request-concurrency limit, which is for short requests.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::streams::{Ctx, StreamBackend};
use crate::ApiError;

/// A top-N job's settings, for clients.
#[derive(Debug, Clone, Serialize)]
pub struct TopInfo {
    /// Members per list.
    pub n: usize,
    /// Sliding window, ms.
    pub window_ms: i64,
    /// Slide, ms.
    pub slide_ms: i64,
    /// What a key is (`post`).
    pub key_label: String,
    /// What a member is (`user`).
    pub member_label: String,
    /// Whether members are ranked by a sum (else by a count of events).
    pub weighted: bool,
    /// Coalescing interval of pushes, ms.
    pub push_interval_ms: i64,
    /// Most subscribers.
    pub max_subscribers: usize,
    /// Most keys per subscriber.
    pub max_keys: usize,
}

/// One member of a list.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TopMember {
    /// The member.
    pub member: String,
    /// Its sum (or count) over the window.
    pub value: u64,
}

/// One key's list.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TopAnswer {
    /// The key.
    pub key: String,
    /// Sum (or count) over the window, all members.
    pub total: u64,
    /// Events in the window.
    pub events: u64,
    /// Members in the window.
    pub members: u64,
    /// The top members, highest first (ties by member text).
    pub top: Vec<TopMember>,
    /// Event time of the key's latest event (unix ms; 0 when none).
    pub latest_ts: i64,
    /// The window's end, exclusive (unix ms).
    pub window_end: i64,
}

/// One server-sent event of a subscription: the lists of one push that
/// concern this subscriber. Each list is serialized once for every
/// subscriber of its key (shared); the subscriber's own task joins them,
/// so the pusher only clones pointers.
#[derive(Debug, Clone)]
pub struct TopMessage {
    /// `Last-Event-ID` of the message (the push's sequence number).
    pub id: u64,
    /// `snapshot`, `update`, or (cluster mode) `rebuilding`: keys whose
    /// owner is being replaced, whose lists follow as updates.
    pub event: &'static str,
    /// The lists, each a [`TopAnswer`] as JSON (for `rebuilding`, the keys
    /// as JSON strings).
    pub lists: Vec<Arc<str>>,
}

impl TopMessage {
    /// `{"lists":[…]}` (`{"keys":[…]}` for `rebuilding`).
    pub fn data(&self) -> String {
        let mut out =
            String::with_capacity(12 + self.lists.iter().map(|l| l.len() + 1).sum::<usize>());
        out.push_str(if self.event == "rebuilding" {
            "{\"keys\":["
        } else {
            "{\"lists\":["
        });
        for (i, l) in self.lists.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(l);
        }
        out.push_str("]}");
        out
    }
}

/// A live subscription: its id, its queue, and what ends it when dropped.
pub struct TopSubscription {
    /// The random id (`POST …/subscriptions/{id}` changes its keys).
    pub id: String,
    /// Its keys.
    pub keys: Vec<String>,
    /// Messages for it; closed when the hub drops it.
    pub rx: mpsc::Receiver<TopMessage>,
    /// Unsubscribes when dropped (the client went away).
    pub guard: Box<dyn Send + Sync>,
}

/// The keys of `?keys=a,b` or of a body, checked against `max_keys`.
fn checked_keys(keys: Vec<String>, max: usize) -> Result<Vec<String>, ApiError> {
    let mut keys: Vec<String> = keys
        .into_iter()
        .map(|k| k.trim().to_owned())
        .filter(|k| !k.is_empty())
        .collect();
    keys.sort();
    keys.dedup();
    if keys.is_empty() {
        return Err(ApiError::bad_request(
            "no_keys",
            "give the keys to follow: keys=a,b,c",
        ));
    }
    if keys.len() > max {
        return Err(ApiError::bad_request(
            "too_many_keys",
            format!("{} keys: at most {max} per subscriber", keys.len()),
        ));
    }
    Ok(keys)
}

fn query_keys(
    q: Result<Query<HashMap<String, String>>, QueryRejection>,
    max: usize,
) -> Result<Vec<String>, ApiError> {
    let q = crate::streams::query(q)?;
    let keys = q
        .get("keys")
        .map(|k| k.split(',').map(str::to_owned).collect())
        .unwrap_or_default();
    checked_keys(keys, max)
}

/// Adds the top-N routes to a stream job's router.
pub(crate) fn routes<S: StreamBackend>(base: &str) -> Router<Arc<Ctx<S>>> {
    Router::new()
        .route(&format!("{base}/top"), get(top::<S>))
        .route(&format!("{base}/hot"), get(hot::<S>))
        .route(
            &format!("{base}/subscriptions/{{id}}"),
            post(resubscribe::<S>),
        )
}

/// The subscription route, kept apart: it must not hold a slot of the
/// request-concurrency limit for its whole life.
pub(crate) fn subscribe_route<S: StreamBackend>(base: &str) -> Router<Arc<Ctx<S>>> {
    Router::new().route(&format!("{base}/subscribe"), get(subscribe::<S>))
}

fn info<S: StreamBackend>(ctx: &Ctx<S>) -> Result<&TopInfo, ApiError> {
    ctx.backend
        .info()
        .topn
        .as_ref()
        .ok_or_else(|| ApiError::not_found("no_topn", "this job keeps no top-N lists"))
}

async fn top<S: StreamBackend>(
    State(ctx): State<Arc<Ctx<S>>>,
    q: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Response, ApiError> {
    let keys = query_keys(q, info(&ctx)?.max_keys)?;
    let lists = ctx.backend.top(&keys)?;
    Ok(Json(serde_json::json!({ "lists": lists })).into_response())
}

async fn hot<S: StreamBackend>(
    State(ctx): State<Arc<Ctx<S>>>,
    q: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Response, ApiError> {
    info(&ctx)?;
    let q = crate::streams::query(q)?;
    let limit = match q.get("limit") {
        None => 20,
        Some(v) => v
            .parse::<usize>()
            .ok()
            .filter(|l| (1..=1000).contains(l))
            .ok_or_else(|| ApiError::bad_request("bad_limit", "limit must be 1 to 1000"))?,
    };
    let lists = ctx.backend.hottest(limit)?;
    Ok(Json(serde_json::json!({ "lists": lists })).into_response())
}

async fn subscribe<S: StreamBackend>(
    State(ctx): State<Arc<Ctx<S>>>,
    q: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Response, ApiError> {
    let keys = query_keys(q, info(&ctx)?.max_keys)?;
    let sub = ctx.backend.subscribe(keys)?;
    let hello = serde_json::json!({ "id": sub.id, "keys": sub.keys }).to_string();
    let first = Event::default().event("subscribed").data(hello);
    let stream = futures_util::stream::unfold((Some(first), sub), |(first, mut sub)| async move {
        if let Some(e) = first {
            return Some((Ok::<_, std::convert::Infallible>(e), (None, sub)));
        }
        let m = sub.rx.recv().await?;
        let e = Event::default()
            .event(m.event)
            .id(m.id.to_string())
            .data(m.data());
        Some((Ok(e), (None, sub)))
    });
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response())
}

#[derive(Deserialize)]
struct KeysBody {
    keys: Vec<String>,
}

async fn resubscribe<S: StreamBackend>(
    State(ctx): State<Arc<Ctx<S>>>,
    Path(id): Path<String>,
    body: Result<Json<KeysBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    let max = info(&ctx)?.max_keys;
    let Json(body) = body.map_err(|e| {
        ApiError::bad_request(
            "bad_body",
            format!("expected {{\"keys\":[\"…\"]}}: {}", e.body_text()),
        )
    })?;
    let keys = checked_keys(body.keys, max)?;
    ctx.backend.resubscribe(&id, keys.clone())?;
    Ok(Json(serde_json::json!({ "id": id, "keys": keys })).into_response())
}
