//! The HTTP face of the simulator: the Mockstagram routes, the package
//! registry's route (`GET /api/v2/packages/{name}`, a second API of another
//! shape, see [`crate::packages`]) plus a small, non-mutating `/_sim`
//! inspection API for tests and operators.
//!
//! Built directly on hyper's HTTP/1.1 connection driver rather than a router
//! framework: there are a handful of routes, and the simulator must never be
//! what limits a crawl on the same machine, so every request is one match on
//! the path and one small pre-sized buffer for the body.
//!
//! Both APIs go through the same fault knobs ([`Faults`]: rate limit,
//! latency, injected 503s) before their data is touched, so a politeness
//! test written against one can run against the other.

use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::model::Accounts;
use crate::packages::{self, Packages};
use crate::rng::{normal, unit, Entropy};
use crate::Faults;

/// Largest accepted `is_suspicious` body; larger bodies get 413.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// Counters of what the simulator answered, exposed at `/_sim/stats`.
#[derive(Debug, Default)]
pub struct Counters {
    /// 500 InfluencerNotFoundError answers.
    pub not_found: AtomicU64,
    /// Requests answered with an injected 503.
    pub injected_errors: AtomicU64,
    /// `is_suspicious` calls answered.
    pub suspicious_calls: AtomicU64,
    /// Requests answered `429` beyond `max_rps`.
    pub rate_limited: AtomicU64,
    /// 404 `no such package` answers of the packages API.
    pub package_not_found: AtomicU64,
}

/// The turn of each request under `max_rps`: a virtual queue (the
/// generic cell rate algorithm), one slot every `1 / max_rps` seconds.
#[derive(Debug, Default)]
pub(crate) struct Pacer {
    /// Requests per second (`f64` bits; 0 = no limit), changeable while
    /// serving.
    rate: AtomicU64,
    next: std::sync::Mutex<Option<tokio::time::Instant>>,
}

impl Pacer {
    pub(crate) fn new(max_rps: f64) -> Self {
        let pacer = Self::default();
        pacer.set_rate(max_rps);
        pacer
    }

    pub(crate) fn set_rate(&self, max_rps: f64) {
        self.rate.store(max_rps.to_bits(), Ordering::Relaxed);
    }

    fn rate(&self) -> f64 {
        f64::from_bits(self.rate.load(Ordering::Relaxed))
    }

    /// Requests allowed ahead of the rate at once: a tenth of a second's.
    const BURST: Duration = Duration::from_millis(100);

    /// When the request may be served; `None` when `queue` is false and
    /// it would have to wait beyond the burst (then it takes no turn).
    fn turn(&self, max_rps: f64, queue: bool) -> Option<tokio::time::Instant> {
        let now = tokio::time::Instant::now();
        let mut next = self.next.lock().unwrap_or_else(|e| e.into_inner());
        let at = next.map_or(now, |n| n.max(now.checked_sub(Self::BURST).unwrap_or(now)));
        if !queue && at > now {
            return None;
        }
        *next = Some(at + Duration::from_secs_f64(1.0 / max_rps));
        Some(at)
    }
}

/// Everything a request handler needs, shared by all connections.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) accounts: Accounts,
    pub(crate) packages: Packages,
    pub(crate) faults: Faults,
    pub(crate) entropy: Entropy,
    pub(crate) counters: Counters,
    pub(crate) pacer: Pacer,
    pub(crate) max_connections: usize,
}

type Body = Full<Bytes>;

const PREFIX: &str = "/api/v1/influencers/";
const PACKAGES_PREFIX: &str = "/api/v2/packages/";

fn json(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    response
}

fn not_found_influencer(shared: &Shared) -> Response<Body> {
    shared.counters.not_found.fetch_add(1, Ordering::Relaxed);
    json(
        StatusCode::INTERNAL_SERVER_ERROR,
        Bytes::from_static(br#"{"error":{"name":"InfluencerNotFoundError"}}"#),
    )
}

fn not_found_package(shared: &Shared) -> Response<Body> {
    shared
        .counters
        .package_not_found
        .fetch_add(1, Ordering::Relaxed);
    json(
        StatusCode::NOT_FOUND,
        Bytes::from_static(br#"{"error":"no such package"}"#),
    )
}

fn error(status: StatusCode, name: &str, message: &str) -> Response<Body> {
    let body = serde_json::json!({ "error": { "name": name, "message": message } });
    json(status, body.to_string())
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Parses a pk the way the contract allows: ASCII digits only, no sign, no
/// spaces, no trailing text.
fn parse_pk(s: &str) -> Option<u64> {
    if s.is_empty() || s.len() > 19 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path();
    if let Some(rest) = path.strip_prefix(PREFIX) {
        if rest.contains('/') {
            return error(StatusCode::NOT_FOUND, "NotFound", "no such route");
        }
        return match (req.method(), rest) {
            (&Method::POST, "is_suspicious") => {
                if let Some(response) = shared.faults.inject(&shared).await {
                    return response;
                }
                is_suspicious(&shared, req).await
            }
            (&Method::GET, pk) => {
                let pk = parse_pk(pk);
                if let Some(response) = shared.faults.inject(&shared).await {
                    return response;
                }
                get_influencer(&shared, pk)
            }
            _ => error(StatusCode::NOT_FOUND, "NotFound", "no such route"),
        };
    }
    if let Some(name) = path.strip_prefix(PACKAGES_PREFIX) {
        if name.contains('/') || req.method() != Method::GET {
            return error(StatusCode::NOT_FOUND, "NotFound", "no such route");
        }
        if let Some(response) = shared.faults.inject(&shared).await {
            return response;
        }
        return get_package(&shared, name);
    }
    match (req.method(), path) {
        (&Method::GET, "/_sim/stats") => sim_stats(&shared),
        (&Method::GET, p) if p.starts_with("/_sim/accounts/") => {
            sim_account(&shared, parse_pk(&p["/_sim/accounts/".len()..]))
        }
        (&Method::GET, p) if p.starts_with("/_sim/packages/") => {
            sim_package(&shared, &p["/_sim/packages/".len()..])
        }
        _ => error(StatusCode::NOT_FOUND, "NotFound", "no such route"),
    }
}

fn get_influencer(shared: &Shared, pk: Option<u64>) -> Response<Body> {
    let Some(pk) = pk else {
        return not_found_influencer(shared);
    };
    let Some(counts) = shared.accounts.read(pk, now_ms()) else {
        return not_found_influencer(shared);
    };
    use std::io::Write;
    let mut body = Vec::with_capacity(112);
    // Writing into a Vec cannot fail.
    let _ = write!(
        body,
        r#"{{"pk":{pk},"username":"influencer-{pk}","followerCount":{},"followingCount":{}}}"#,
        counts.followers, counts.following
    );
    json(StatusCode::OK, body)
}

/// Writes a package score, kept in ten-thousandths, with exactly four
/// decimals: always a JSON float, never an integer, even at 0 and 1.
fn write_score(out: &mut Vec<u8>, score: u16) {
    use std::io::Write;
    let scale = packages::SCORE_SCALE;
    // Writing into a Vec cannot fail.
    let _ = write!(out, "{}.{:04}", score / scale, score % scale);
}

fn get_package(shared: &Shared, name: &str) -> Response<Body> {
    let Some(stats) = shared.packages.read(name) else {
        return not_found_package(shared);
    };
    use std::io::Write;
    let mut body = Vec::with_capacity(256);
    // Writing into a Vec cannot fail. The name needs no escaping: a name
    // that exists is only `[a-z0-9._-]`.
    let _ = write!(
        body,
        r#"{{"package":{{"name":"{name}","registry":"sim"}},"stats":{{"downloads":{{"total":{},"lastDay":{}}},"stars":{},"score":"#,
        stats.downloads, stats.last_day, stats.stars
    );
    write_score(&mut body, stats.score);
    body.extend_from_slice(br#"},"maintainers":["#);
    for (i, id) in packages::maintainers(shared.packages.seed(), name)
        .iter()
        .enumerate()
    {
        if i > 0 {
            body.push(b',');
        }
        let _ = write!(body, r#""{id}""#);
    }
    body.extend_from_slice(b"]}");
    json(StatusCode::OK, body)
}

async fn is_suspicious(shared: &Shared, req: Request<Incoming>) -> Response<Body> {
    let body = match Limited::new(req.into_body(), MAX_BODY_BYTES)
        .collect()
        .await
    {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "PayloadTooLargeError",
                "request body larger than 64 KiB",
            )
        }
        Err(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                "BadRequestError",
                "unreadable body",
            )
        }
    };
    let value: serde_json::Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                "BadRequestError",
                &format!("invalid JSON: {e}"),
            )
        }
    };
    let field = |name: &str| value.get(name).and_then(serde_json::Value::as_f64);
    let suspicious = match (field("followerCount"), field("followingCount")) {
        (Some(followers), Some(following)) => shared.accounts.is_suspicious(followers, following),
        _ => false,
    };
    // The answer is computed first and the delay only holds it back: the
    // rule stays a pure function of the body.
    let delay = suspicious_delay(
        shared.entropy.next_u64(),
        shared.faults.suspicious_delay_scale,
    );
    tokio::time::sleep(delay).await;
    shared
        .counters
        .suspicious_calls
        .fetch_add(1, Ordering::Relaxed);
    let pk = value.get("pk").cloned().unwrap_or(serde_json::Value::Null);
    json(
        StatusCode::OK,
        serde_json::json!({ "pk": pk, "suspicious": suspicious }).to_string(),
    )
}

/// N(1 s, 1 s), negative draws answer at once, capped at the contract's
/// 10 s, then scaled for tests that cannot wait.
pub fn suspicious_delay(random: u64, scale: f64) -> Duration {
    let seconds = (1.0 + normal(random)).clamp(0.0, 10.0);
    Duration::from_secs_f64(seconds * scale)
}

fn sim_stats(shared: &Shared) -> Response<Body> {
    let c = &shared.counters;
    let body = serde_json::json!({
        "accounts": shared.accounts.len(),
        "firstPk": shared.accounts.first_pk(),
        "dynamics": shared.accounts.dynamics().to_string(),
        "suspiciousThreshold": shared.accounts.threshold(),
        "reads": shared.accounts.reads(),
        "notFound": c.not_found.load(Ordering::Relaxed),
        "injectedErrors": c.injected_errors.load(Ordering::Relaxed),
        "suspiciousCalls": c.suspicious_calls.load(Ordering::Relaxed),
        "rateLimited": c.rate_limited.load(Ordering::Relaxed),
        "packageReads": shared.packages.reads(),
        "packages": shared.packages.len(),
        "packageNotFound": c.package_not_found.load(Ordering::Relaxed),
    });
    json(StatusCode::OK, body.to_string())
}

fn sim_account(shared: &Shared, pk: Option<u64>) -> Response<Body> {
    match pk.and_then(|pk| shared.accounts.peek(pk, now_ms()).map(|v| (pk, v))) {
        Some((pk, view)) => {
            let body = serde_json::json!({
                "pk": pk,
                "calls": view.calls,
                "followerCount": view.counts.followers,
                "followingCount": view.counts.following,
            });
            json(StatusCode::OK, body.to_string())
        }
        None => error(StatusCode::NOT_FOUND, "NotFound", "no such account"),
    }
}

fn sim_package(shared: &Shared, name: &str) -> Response<Body> {
    match shared.packages.peek(name) {
        Some(view) => {
            let body = serde_json::json!({
                "name": name,
                "reads": view.reads,
                "downloads": view.stats.downloads,
                "lastDay": view.stats.last_day,
                "stars": view.stats.stars,
                "score": view.stats.score(),
            });
            json(StatusCode::OK, body.to_string())
        }
        None => error(StatusCode::NOT_FOUND, "NotFound", "no such package"),
    }
}

impl Faults {
    /// Applies the added latency, then maybe answers with an injected 503
    /// *before* the account is touched, so a failed call never moves data.
    async fn inject(&self, shared: &Shared) -> Option<Response<Body>> {
        let max_rps = shared.pacer.rate();
        if max_rps > 0.0 {
            match shared.pacer.turn(max_rps, self.retry_after.is_none()) {
                Some(at) => tokio::time::sleep_until(at).await,
                None => {
                    shared.counters.rate_limited.fetch_add(1, Ordering::Relaxed);
                    let seconds = self.retry_after.unwrap_or_default().as_secs().max(1);
                    let mut response = error(
                        StatusCode::TOO_MANY_REQUESTS,
                        "RateLimited",
                        "more requests per second than the simulator's --max-rps",
                    );
                    response
                        .headers_mut()
                        .insert(hyper::header::RETRY_AFTER, HeaderValue::from(seconds));
                    return Some(response);
                }
            }
        }
        if !self.latency.is_zero() {
            tokio::time::sleep(self.latency).await;
        }
        if self.error_rate > 0.0 && unit(shared.entropy.next_u64()) < self.error_rate {
            shared
                .counters
                .injected_errors
                .fetch_add(1, Ordering::Relaxed);
            return Some(error(
                StatusCode::SERVICE_UNAVAILABLE,
                "InjectedFault",
                "error injected by the simulator",
            ));
        }
        None
    }
}

/// Accepts connections on `listener` until `shutdown` completes, serving each
/// with HTTP/1.1 keep-alive. At most `max_connections` are served at once;
/// further clients wait in the kernel's accept backlog.
pub(crate) async fn serve(
    shared: Arc<Shared>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let limit = Arc::new(Semaphore::new(shared.max_connections));
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            _ = &mut shutdown => return Ok(()),
            permit = limit.clone().acquire_owned() => permit.expect("semaphore never closed"),
        };
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => return Ok(()),
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(handle(shared, req).await) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(30))
                .serve_connection(TokioIo::new(stream), service);
            if let Err(e) = connection.await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
            drop(permit);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pk_parsing_is_strict() {
        assert_eq!(parse_pk("1000000"), Some(1_000_000));
        for bad in [
            "",
            "-1",
            "+1",
            "1e6",
            "12a",
            " 1",
            "99999999999999999999",
            "0x10",
        ] {
            assert_eq!(parse_pk(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn suspicious_delay_is_bounded_and_centred() {
        let mut total = 0.0;
        let n = 20_000u64;
        for i in 0..n {
            let d = suspicious_delay(crate::rng::mix(i), 1.0);
            assert!(d <= Duration::from_secs(10));
            total += d.as_secs_f64();
        }
        // E[max(0, N(1,1))] = 1·Φ(1) + φ(1) ≈ 1.083.
        let mean = total / n as f64;
        assert!((mean - 1.083).abs() < 0.03, "mean delay {mean}");
        assert_eq!(suspicious_delay(7, 0.0), Duration::ZERO);
    }
}
