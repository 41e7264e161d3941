//! trawler's HTTP API.
//!
//! The API knows only a [`Backend`]: a read model of one job (latest values,
//! series, tracking, statistics) that the binary implements on top of the
//! crawler, the store and the live views. That keeps this crate about HTTP —
//! routing, parameter parsing, limits, authentication and error shapes — and
//! lets the backend change without touching a route.
//!
//! Every answer is JSON of a type in this crate ([`Entity`], [`Stats`],
//! [`TopAnswer`], [`Series`], [`KeyPage`], [`JobInfo`], [`TrackOutcome`],
//! [`ErrorBody`]…): the backend fills them, the routes send them, and the
//! OpenAPI document at `/api/openapi.json` is assembled from their schemas
//! ([`Schema`], see [`answers`]), so the contract is written once. The job names some
//! members (its key, label, metrics, flag and average): those answers hold
//! values only and are written with the job's names by [`Named`]. Every
//! error is `{"error":{"code","message"}}` with a 4xx status for anything
//! the client did wrong. No input reaches a panic.
//!
//! Secure by default: the binary listens on 127.0.0.1; when told to listen
//! beyond loopback, [`ApiConfig::build`] refuses to start without a token for
//! the endpoints that change state. Request bodies and concurrent requests
//! are bounded.

pub mod answers;
mod dashboard;
mod error;
mod events;
mod metrics;
mod openapi;
pub mod params;
pub mod prom;
mod routes;
pub mod runtime;
pub mod streams;
mod topn;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

pub use answers::{
    Entity, EntityRef, ErrorBody, ErrorDetail, Figures, FlagNames, JobInfo, JobShaped, KeyPage,
    Mover, Named, RankedEntry, Sample, Schema, Series, Stats, TopAnswer, TopEntries, TrackOutcome,
};
pub use error::ApiError;

/// The dashboard page of a batch job (`trawler crawl`) at `/`, with its
/// script and the shared styles and chart library: a progress bar, rates,
/// ETA, dead letters by kind and the busiest hosts, read every second
/// from `GET /api/v1/batch/{job}` and `GET /api/v1/batch/{job}/hosts`
/// (which the binary serves: this crate does not know batch jobs).
pub fn batch_dashboard<S: Clone + Send + Sync + 'static>(job: &str) -> axum::Router<S> {
    dashboard::batch_router(job)
}
pub use metrics::HttpMetrics;

/// Points of a series, as `[[unix_ms, value], …]`.
pub type Points = Vec<(i64, f64)>;

/// A series read: a time range and an optional step to downsample to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeriesQuery {
    /// Start, unix milliseconds, inclusive.
    pub from_ms: i64,
    /// End, unix milliseconds, inclusive.
    pub to_ms: i64,
    /// Bucket width in milliseconds; `None` returns raw points.
    pub step_ms: Option<i64>,
}

/// The read model of one job, implemented by the binary.
///
/// Methods are synchronous. Those that may block on disk (series reads,
/// the average's history, and `track`/`untrack`, which persist the tracked
/// set) are run through `spawn_blocking` by the routes; the others must be
/// fast (microseconds): they run on the API's async workers.
pub trait Backend: Send + Sync + 'static {
    /// The job's names.
    fn info(&self) -> &JobInfo;
    /// The id of a key written in a path or a query: `Ok(None)` for a
    /// well-formed key the job does not know, a 400 for a malformed one.
    fn key(&self, text: &str) -> Result<Option<u64>, ApiError>;
    /// An id's key as JSON (a number or a string).
    fn key_json(&self, id: u64) -> serde_json::Value;
    /// The latest view of an entity, or `None` when the entity is not
    /// tracked.
    fn entity(&self, id: u64) -> Result<Option<Entity>, ApiError>;
    /// Points of one metric of a tracked entity. `None` when not tracked.
    fn series(&self, id: u64, metric: &str, query: SeriesQuery)
        -> Result<Option<Points>, ApiError>;
    /// Starts tracking keys (new string keys are numbered first); a 400
    /// names a malformed key.
    fn track(&self, keys: &[String]) -> Result<TrackOutcome, ApiError>;
    /// Stops tracking an id; `false` when it was not tracked.
    fn untrack(&self, id: u64) -> Result<bool, ApiError>;
    /// Job-wide statistics.
    fn stats(&self) -> Stats;
    /// Ids the target reported as not found, after `after`, at most `limit`.
    fn invalid(&self, after: Option<u64>, limit: usize) -> Vec<u64>;
    /// Appends the process's own metrics in Prometheus text format.
    fn render_metrics(&self, out: &mut String);
    /// The first `limit` entities by `by`.
    fn top(&self, by: TopBy, limit: usize) -> TopEntries;
    /// Entities whose flag (the enrichment's answer) is yes, in id order
    /// after `after`, at most `limit`.
    fn flagged(&self, after: Option<u64>, limit: usize) -> Vec<u64>;
    /// The history of the average of the ranked metric.
    fn average_series(&self, query: SeriesQuery) -> Result<Points, ApiError>;
    /// Now, in unix ms, on the clock the job stamps its samples with: the
    /// default end of a series read and the time of a live sample.
    fn now_ms(&self) -> i64 {
        trawler_common::clock::unix_ms()
    }
}

/// What `GET /api/v1/{job}/top` orders by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopBy {
    /// The ranked metric, largest first.
    Ranked,
    /// Largest gain over the last hour.
    Gain1h,
    /// Largest gain over the last 24 hours.
    Gain24h,
    /// Largest loss over the last hour.
    Loss1h,
    /// Largest loss over the last 24 hours.
    Loss24h,
}

/// How to serve the API. Validated by [`ApiConfig::build`].
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Bearer token for state-changing endpoints. Required when `listen` is
    /// not a loopback address.
    pub token: Option<String>,
    /// Largest request body accepted (413 beyond).
    pub max_body_bytes: usize,
    /// Requests handled at once; more wait.
    pub max_concurrency: usize,
    /// Most ids one `track` request may add.
    pub max_track_ids: usize,
    /// Most points one series read may return (400 beyond: use a step).
    pub max_points: usize,
    /// How often live statistics are sampled, kept in the health history
    /// and sent to event-stream subscribers.
    pub events_interval: Duration,
    /// Samples the health history keeps (the last `history_len ×
    /// events_interval`).
    pub history_len: usize,
    /// Event-stream subscribers at once (503 beyond).
    pub max_subscribers: usize,
    /// Samples queued for one subscriber; a subscriber that lets this many
    /// pile up has stopped reading and is dropped.
    pub subscriber_queue: usize,
    /// Limits of the Prometheus API (queries, remote write), when it is
    /// served ([`Api::with_prometheus`]).
    pub prometheus: prom::PromSettings,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            token: None,
            max_body_bytes: 1 << 20,
            max_concurrency: 1_024,
            max_track_ids: 100_000,
            max_points: 100_000,
            events_interval: Duration::from_secs(1),
            history_len: 900,
            max_subscribers: 256,
            subscriber_queue: 32,
            prometheus: prom::PromSettings::default(),
        }
    }
}

/// A configuration the API refuses.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigError {
    /// Listening beyond loopback without a token would let anyone change
    /// what is tracked.
    #[error(
        "listening on {0} exposes the API beyond this machine: set an API token \
         (--api-token or TRAWLER_API_TOKEN) so that state-changing endpoints are protected"
    )]
    TokenRequired(SocketAddr),
    /// An empty token protects nothing.
    #[error("the API token must not be empty")]
    EmptyToken,
    /// A limit set to zero.
    #[error("{0} must be at least 1")]
    ZeroLimit(&'static str),
}

impl ApiConfig {
    /// Validates the configuration and builds the router around `backend`.
    pub fn build<B: Backend>(self, backend: Arc<B>) -> Result<Api, ConfigError> {
        self.check()?;
        let http_metrics = Arc::new(HttpMetrics::default());
        let hub = Arc::new(events::Hub::new(
            self.events_interval,
            self.history_len,
            self.max_subscribers,
            self.subscriber_queue,
            http_metrics.clone(),
        ));
        let router = routes::router(backend.clone(), &self, http_metrics.clone(), hub.clone());
        let sampler: Sampler = Box::new(move |stop| Box::pin(hub.run(backend, stop)));
        Ok(Api {
            config: self,
            router,
            http_metrics,
            sampler,
        })
    }

    /// Refuses an exposed address without a token, an empty token and zero
    /// limits.
    fn check(&self) -> Result<(), ConfigError> {
        if matches!(&self.token, Some(t) if t.is_empty()) {
            return Err(ConfigError::EmptyToken);
        }
        if self.token.is_none() && !self.listen.ip().is_loopback() {
            return Err(ConfigError::TokenRequired(self.listen));
        }
        for (name, value) in [
            ("max_body_bytes", self.max_body_bytes),
            ("max_concurrency", self.max_concurrency),
            ("max_track_ids", self.max_track_ids),
            ("max_points", self.max_points),
            ("history_len", self.history_len),
            ("max_subscribers", self.max_subscribers),
            ("subscriber_queue", self.subscriber_queue),
            (
                "events_interval (ms)",
                self.events_interval.as_millis().min(usize::MAX as u128) as usize,
            ),
        ] {
            if value == 0 {
                return Err(ConfigError::ZeroLimit(name));
            }
        }
        Ok(())
    }
}

/// Starts the live-statistics sampler; it runs until its shutdown fires.
type Sampler = Box<
    dyn FnOnce(trawler_common::shutdown::Shutdown) -> Pin<Box<dyn Future<Output = ()> + Send>>
        + Send,
>;

/// A built API, ready to serve.
pub struct Api {
    config: ApiConfig,
    router: axum::Router,
    http_metrics: Arc<HttpMetrics>,
    sampler: Sampler,
}

impl Api {
    /// The configured listen address.
    pub fn listen(&self) -> SocketAddr {
        self.config.listen
    }

    /// Adds the Prometheus HTTP API (`/api/v1/query`, `/api/v1/write`, …,
    /// see [`prom`]) over `backend`.
    pub fn with_prometheus(mut self, backend: Arc<dyn prom::PromBackend>) -> Self {
        let routes = prom::router(
            backend,
            self.config.prometheus,
            self.config.token.clone(),
            self.config.max_body_bytes,
            self.http_metrics.clone(),
        )
        .layer(tower::limit::GlobalConcurrencyLimitLayer::new(
            self.config.max_concurrency,
        ));
        self.router = self.router.merge(routes);
        self
    }

    /// Request counters by route and status.
    pub fn http_metrics(&self) -> Arc<HttpMetrics> {
        self.http_metrics.clone()
    }

    /// Serves on `listener` until `shutdown` completes, then ends every
    /// event stream and lets requests in progress finish.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let (stop, stopped) = trawler_common::shutdown::channel();
        let sampler = tokio::spawn((self.sampler)(stopped));
        let shutdown = async move {
            shutdown.await;
            stop.trigger();
        };
        let served = axum::serve(listener, self.router)
            .with_graceful_shutdown(shutdown)
            .await;
        let _ = sampler.await;
        served
    }
}

#[cfg(test)]
pub(crate) mod tests {
    /// The flagship job's names, for unit tests.
    pub(crate) fn influencers() -> crate::JobInfo {
        crate::JobInfo {
            name: "influencers".into(),
            key_name: "pk".into(),
            string_keys: false,
            label_name: Some("username".into()),
            metrics: vec!["followerCount".into()],
            rank_metric: "followerCount".into(),
            average: "averageFollowerCount".into(),
            flag: Some("suspicious".into()),
        }
    }
}
