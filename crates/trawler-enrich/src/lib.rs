//! Slow enrichments, off the crawl's path.
//!
//! An enrichment asks a slow service a yes/no question about each tracked
//! entity once per period — for the flagship job, Mockstagram's
//! `POST /api/v1/influencers/is_suspicious`, which takes 1–10 s per call, once
//! a day for a million accounts. Three rules shape this crate:
//!
//! * **Spread, never burst.** Each id has a fixed phase inside the period
//!   (the crawler's [`Wheel`], with the period as its interval), so a million
//!   checks a day arrive at a flat 11.6/s instead of a million at midnight.
//!   The sweep's progress is the position inside the current period.
//! * **Its own budget.** The enrichment has its own connection pool and a cap
//!   on calls in flight, sized for slow answers; it never takes a connection
//!   or a permit from the crawl. When the cap is reached the wheel's cursor
//!   simply waits: checks are delayed, not dropped.
//! * **Do not ask twice.** If the request body for an id is identical to the
//!   one last answered, the previous answer is reused without a call (a
//!   64-bit hash of the body is kept per id, not the body).
//!
//! A failed call is retried with exponential backoff up to `retries` times;
//! after that the failure is counted and the id is checked again
//! `retry_later` afterwards, outside its regular slot.
//!
//! ```no_run
//! # async fn run(inputs: std::sync::Arc<dyn trawler_enrich::Inputs>) -> Result<(), trawler_enrich::EnrichError> {
//! use trawler_enrich::EnrichConfig;
//! let enrichment = EnrichConfig {
//!     url: "http://127.0.0.1:3000/api/v1/influencers/is_suspicious".into(),
//!     answer: "/suspicious".into(),
//!     ..EnrichConfig::default()
//! }
//! .build()?;
//! let (verdicts_tx, mut verdicts) = tokio::sync::mpsc::channel(1024);
//! let (_stop, stop_rx) = trawler_common::shutdown::channel();
//! let (handle, _task) = enrichment.spawn(1_000_000..2_000_000, inputs, verdicts_tx, stop_rx);
//! while let Some(v) = verdicts.recv().await {
//!     println!("{} suspicious={} (progress {:.1} %)", v.id, v.value, 100.0 * handle.sweep_progress());
//! }
//! # Ok(()) }
//! ```

use std::cmp::Reverse;
use std::collections::hash_map::DefaultHasher;
use std::collections::{BinaryHeap, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, Uri};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinHandle;
use trawler_common::clock::unix_ms;
use trawler_common::http::ClientSettings;
use trawler_crawl::schedule::Wheel;

/// How to run an enrichment. Validated by [`EnrichConfig::build`].
#[derive(Debug, Clone, PartialEq)]
pub struct EnrichConfig {
    /// The endpoint to POST each entity's body to.
    pub url: String,
    /// Each id is checked once per period.
    pub period: Duration,
    /// Per-call timeout.
    pub timeout: Duration,
    /// Calls in flight at most (the enrichment's own budget).
    pub max_in_flight: usize,
    /// Retries of a failed call before the id is put off.
    pub retries: u32,
    /// First backoff between retries; doubles each time.
    pub backoff: Duration,
    /// How long after exhausted retries the id is tried again.
    pub retry_later: Duration,
    /// JSON pointer to the boolean answer in the response.
    pub answer: String,
}

impl Default for EnrichConfig {
    fn default() -> Self {
        Self {
            // No sensible default endpoint: a job file names its own.
            url: String::new(),
            period: Duration::from_secs(24 * 3600),
            timeout: Duration::from_secs(15),
            max_in_flight: 256,
            retries: 3,
            backoff: Duration::from_secs(1),
            retry_later: Duration::from_secs(600),
            answer: "/answer".into(),
        }
    }
}

impl From<&trawler_crawl::job::Enrichment> for EnrichConfig {
    /// The settings of a job file's `[[enrichment]]` (checked there already).
    fn from(e: &trawler_crawl::job::Enrichment) -> Self {
        Self {
            url: e.url.clone(),
            period: e.period,
            timeout: e.timeout,
            max_in_flight: e.max_in_flight,
            retries: e.retries,
            backoff: e.backoff,
            retry_later: e.retry_later,
            answer: e.answer.clone(),
        }
    }
}

/// A configuration the enrichment refuses.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum EnrichError {
    /// The URL is not an absolute `http://` URL.
    #[error("enrichment url {url:?} is not usable: {reason}")]
    BadUrl {
        /// The URL given.
        url: String,
        /// Why it was refused.
        reason: String,
    },
    /// The answer pointer is not a JSON pointer.
    #[error("enrichment answer {0:?} must be a JSON pointer such as \"/suspicious\"")]
    BadPointer(String),
    /// A duration or limit that must be positive was zero.
    #[error("enrichment {0} must be greater than zero")]
    Zero(&'static str),
    /// The period does not fit the schedule.
    #[error("enrichment period must be at most 49 days")]
    PeriodTooLong,
}

impl EnrichConfig {
    /// Validates the configuration and prepares the client.
    pub fn build(&self) -> Result<Enrichment, EnrichError> {
        let uri: Uri = self.url.parse().map_err(|e| EnrichError::BadUrl {
            url: self.url.clone(),
            reason: format!("{e}"),
        })?;
        if uri.scheme_str() != Some("http") || uri.host().is_none() {
            return Err(EnrichError::BadUrl {
                url: self.url.clone(),
                reason: "expected http://host[:port]/path".into(),
            });
        }
        if !self.answer.starts_with('/') {
            return Err(EnrichError::BadPointer(self.answer.clone()));
        }
        for (name, zero) in [
            ("period", self.period.is_zero()),
            ("timeout", self.timeout.is_zero()),
            ("max_in_flight", self.max_in_flight == 0),
        ] {
            if zero {
                return Err(EnrichError::Zero(name));
            }
        }
        if self.period.as_millis() > u32::MAX as u128 {
            return Err(EnrichError::PeriodTooLong);
        }
        let client = ClientSettings {
            max_idle_per_host: self.max_in_flight,
            ..ClientSettings::new(self.timeout)
        }
        .build();
        Ok(Enrichment {
            config: self.clone(),
            uri,
            client,
        })
    }
}

/// Where an enrichment gets each entity's request body.
pub trait Inputs: Send + Sync + 'static {
    /// The JSON body to send for `id`, built from its latest values, or
    /// `None` when nothing is known of it yet (it is tried again later).
    fn body(&self, id: u64) -> Option<Vec<u8>>;
}

/// One answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    /// The entity.
    pub id: u64,
    /// The service's answer.
    pub value: bool,
    /// When it was checked, unix ms.
    pub checked_at_ms: i64,
    /// True when the body was identical to the last one answered and the
    /// previous answer was reused without a call.
    pub reused: bool,
}

/// Counters of the enrichment, for `/metrics` and the stats endpoint.
#[derive(Debug, Default)]
pub struct Metrics {
    calls: AtomicU64,
    answers: AtomicU64,
    reused: AtomicU64,
    retries: AtomicU64,
    failures: AtomicU64,
    no_input: AtomicU64,
    in_flight: AtomicU64,
    put_off: AtomicU64,
    tracked: AtomicU64,
}

/// A copy of the counters at one instant.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MetricsSnapshot {
    /// HTTP calls made (including retries).
    pub calls: u64,
    /// Answers received.
    pub answers: u64,
    /// Answers reused from the cache without a call.
    pub reused: u64,
    /// Calls retried after a failure.
    pub retries: u64,
    /// Checks that failed after every retry (the id is put off).
    pub failures: u64,
    /// Checks skipped because the entity had no values yet.
    pub no_input: u64,
    /// Calls in flight now.
    pub in_flight: u64,
    /// Ids waiting for a later retry now.
    pub put_off: u64,
    /// Ids enriched.
    pub tracked: u64,
}

impl Metrics {
    fn snapshot(&self) -> MetricsSnapshot {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        MetricsSnapshot {
            calls: l(&self.calls),
            answers: l(&self.answers),
            reused: l(&self.reused),
            retries: l(&self.retries),
            failures: l(&self.failures),
            no_input: l(&self.no_input),
            in_flight: l(&self.in_flight),
            put_off: l(&self.put_off),
            tracked: l(&self.tracked),
        }
    }
}

enum Command {
    Track(Vec<u64>),
    Untrack(u64),
}

/// Controls a running enrichment: tracking changes and figures.
#[derive(Debug, Clone)]
pub struct EnrichHandle {
    commands: mpsc::UnboundedSender<Command>,
    metrics: Arc<Metrics>,
    period_ms: i64,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Command::Track(ids) => write!(f, "Track({} ids)", ids.len()),
            Command::Untrack(id) => write!(f, "Untrack({id})"),
        }
    }
}

impl EnrichHandle {
    /// Starts enriching `ids` (from their next slot on).
    pub fn track(&self, ids: Vec<u64>) {
        let _ = self.commands.send(Command::Track(ids));
    }

    /// Stops enriching `id` and forgets its cached answer.
    pub fn untrack(&self, id: u64) {
        let _ = self.commands.send(Command::Untrack(id));
    }

    /// The counters now.
    pub fn metrics(&self) -> MetricsSnapshot {
        self.metrics.snapshot()
    }

    /// How far the current sweep is, 0.0–1.0: every id whose phase lies
    /// before this point of the period has had its slot in this period.
    pub fn sweep_progress(&self) -> f64 {
        unix_ms().rem_euclid(self.period_ms) as f64 / self.period_ms as f64
    }
}

/// A validated enrichment, ready to spawn.
#[derive(Debug)]
pub struct Enrichment {
    config: EnrichConfig,
    uri: Uri,
    client: Client<HttpConnector, Full<Bytes>>,
}

/// How often the dispatch loop looks at the wheel. Checks are due about
/// every 86 µs at a million per day, so a 50 ms tick hands out a handful at
/// a time; the order and the spacing of slots are kept by the wheel.
const TICK: Duration = Duration::from_millis(50);

struct Worker {
    config: EnrichConfig,
    uri: Uri,
    client: Client<HttpConnector, Full<Bytes>>,
    inputs: Arc<dyn Inputs>,
    out: mpsc::Sender<Verdict>,
    metrics: Arc<Metrics>,
    /// Per id: hash of the last body answered, and the answer.
    cache: Mutex<HashMap<u64, (u64, bool)>>,
    /// Ids whose check failed, sent back to the loop to be put off.
    failed: mpsc::UnboundedSender<u64>,
}

impl Enrichment {
    /// Starts enriching `ids`. Verdicts go to `out` (the enrichment waits
    /// when `out` is full). Stops when `shutdown` fires, abandoning
    /// calls in flight: an unanswered check is simply made next period.
    pub fn spawn(
        self,
        ids: impl IntoIterator<Item = u64>,
        inputs: Arc<dyn Inputs>,
        out: mpsc::Sender<Verdict>,
        mut shutdown: trawler_common::shutdown::Shutdown,
    ) -> (EnrichHandle, JoinHandle<()>) {
        let period_ms = self.config.period.as_millis() as i64;
        let metrics = Arc::new(Metrics::default());
        let (commands, mut command_rx) = mpsc::unbounded_channel();
        let (failed, mut failed_rx) = mpsc::unbounded_channel();
        let handle = EnrichHandle {
            commands,
            metrics: metrics.clone(),
            period_ms,
        };
        let mut wheel = Wheel::new(period_ms as u64, unix_ms());
        wheel.insert_many(ids.into_iter());
        metrics.tracked.store(wheel.len() as u64, Ordering::Relaxed);
        let permits = Arc::new(Semaphore::new(self.config.max_in_flight));
        let retry_later_ms = self.config.retry_later.as_millis() as i64;
        let worker = Arc::new(Worker {
            config: self.config,
            uri: self.uri,
            client: self.client,
            inputs,
            out,
            metrics: metrics.clone(),
            cache: Mutex::new(HashMap::new()),
            failed,
        });
        let task = tokio::spawn(async move {
            let mut put_off: BinaryHeap<Reverse<(i64, u64)>> = BinaryHeap::new();
            let mut due = Vec::new();
            let mut tick = tokio::time::interval(TICK);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = shutdown.wait() => break,
                    Some(command) = command_rx.recv() => {
                        match command {
                            Command::Track(ids) => { wheel.insert_many(ids.into_iter()); }
                            Command::Untrack(id) => {
                                wheel.remove(id);
                                worker.cache.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
                            }
                        }
                        metrics.tracked.store(wheel.len() as u64, Ordering::Relaxed);
                        continue;
                    }
                    Some(id) = failed_rx.recv() => {
                        put_off.push(Reverse((unix_ms() + retry_later_ms, id)));
                    }
                    _ = tick.tick() => {}
                }
                let now = unix_ms();
                while let Some(Reverse((at, id))) = put_off.peek().copied() {
                    if at > now || permits.available_permits() == 0 {
                        break;
                    }
                    put_off.pop();
                    if wheel.contains(id) {
                        dispatch(&worker, &permits, id);
                    }
                }
                metrics
                    .put_off
                    .store(put_off.len() as u64, Ordering::Relaxed);
                let budget = permits.available_permits();
                if budget > 0 {
                    wheel.advance(now, budget, &mut due);
                    for d in due.drain(..) {
                        dispatch(&worker, &permits, d.id);
                    }
                }
            }
            tracing::info!("enrichment stopped");
        });
        (handle, task)
    }
}

fn dispatch(worker: &Arc<Worker>, permits: &Arc<Semaphore>, id: u64) {
    let Ok(permit) = permits.clone().try_acquire_owned() else {
        // Budget exhausted between the check and now: put the id off briefly.
        let _ = worker.failed.send(id);
        return;
    };
    let worker = worker.clone();
    tokio::spawn(async move {
        worker.check(id).await;
        drop(permit);
    });
}

impl Worker {
    async fn check(&self, id: u64) {
        let Some(body) = self.inputs.body(id) else {
            self.metrics.no_input.fetch_add(1, Ordering::Relaxed);
            let _ = self.failed.send(id);
            return;
        };
        let body_hash = {
            let mut h = DefaultHasher::new();
            body.hash(&mut h);
            h.finish()
        };
        let cached = self
            .cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&id)
            .copied();
        if let Some((hash, value)) = cached {
            if hash == body_hash {
                self.metrics.reused.fetch_add(1, Ordering::Relaxed);
                let verdict = Verdict {
                    id,
                    value,
                    checked_at_ms: unix_ms(),
                    reused: true,
                };
                let _ = self.out.send(verdict).await;
                return;
            }
        }
        let body = Bytes::from(body);
        let mut backoff = self.config.backoff;
        for attempt in 0..=self.config.retries {
            if attempt > 0 {
                self.metrics.retries.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(backoff).await;
                backoff = backoff.saturating_mul(2);
            }
            self.metrics.calls.fetch_add(1, Ordering::Relaxed);
            self.metrics.in_flight.fetch_add(1, Ordering::Relaxed);
            let result = tokio::time::timeout(self.config.timeout, self.call(body.clone())).await;
            self.metrics.in_flight.fetch_sub(1, Ordering::Relaxed);
            match result {
                Ok(Ok(value)) => {
                    self.metrics.answers.fetch_add(1, Ordering::Relaxed);
                    self.cache
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(id, (body_hash, value));
                    let verdict = Verdict {
                        id,
                        value,
                        checked_at_ms: unix_ms(),
                        reused: false,
                    };
                    let _ = self.out.send(verdict).await;
                    return;
                }
                Ok(Err(reason)) => tracing::debug!(id, attempt, %reason, "enrichment call failed"),
                Err(_) => tracing::debug!(id, attempt, "enrichment call timed out"),
            }
        }
        self.metrics.failures.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            id,
            retries = self.config.retries,
            "enrichment failed; the id is put off"
        );
        let _ = self.failed.send(id);
    }

    async fn call(&self, body: Bytes) -> Result<bool, String> {
        let request = Request::builder()
            .method(Method::POST)
            .uri(self.uri.clone())
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(body))
            .map_err(|e| e.to_string())?;
        let response = self
            .client
            .request(request)
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status();
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        if !status.is_success() {
            return Err(format!("status {status}"));
        }
        let value: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|e| format!("malformed answer: {e}"))?;
        value
            .pointer(&self.config.answer)
            .and_then(serde_json::Value::as_bool)
            .ok_or_else(|| format!("answer has no boolean at {}", self.config.answer))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_rejects_bad_settings() {
        let bad = |f: fn(&mut EnrichConfig)| {
            let mut c = EnrichConfig {
                url: "http://127.0.0.1:3000/check".into(),
                ..EnrichConfig::default()
            };
            c.build().expect("the base of the cases is valid");
            f(&mut c);
            c.build().unwrap_err()
        };
        assert!(matches!(
            bad(|c| c.url = String::new()),
            EnrichError::BadUrl { .. }
        ));
        assert!(matches!(
            bad(|c| c.url = "ftp://x/".into()),
            EnrichError::BadUrl { .. }
        ));
        assert!(matches!(
            bad(|c| c.url = "not a url".into()),
            EnrichError::BadUrl { .. }
        ));
        assert_eq!(
            bad(|c| c.answer = "suspicious".into()),
            EnrichError::BadPointer("suspicious".into())
        );
        assert_eq!(
            bad(|c| c.period = Duration::ZERO),
            EnrichError::Zero("period")
        );
        assert_eq!(
            bad(|c| c.max_in_flight = 0),
            EnrichError::Zero("max_in_flight")
        );
        assert_eq!(
            bad(|c| c.period = Duration::from_secs(100 * 86_400)),
            EnrichError::PeriodTooLong
        );
    }
}
