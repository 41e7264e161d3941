//! The crawler core of trawler: polls a JSON HTTP API for a large set of
//! ids, each once per interval, and reports what it saw.
//!
//! It knows nothing about storage: it emits [`Event`]s (observations stamped
//! with their slot time, gaps with a reason, invalid ids) into a bounded
//! channel the caller drains, and exposes a [`CrawlHandle`] to change the
//! tracked set at run time, read [metrics](MetricsSnapshot) and shut down.
//!
//! The pieces, each in its module:
//!
//! * [`job`] — the job file: [`JobConfig`] (TOML, unknown keys rejected) →
//!   [`JobConfig::build`] → [`Job`].
//! * [`ids`] — [`IdSet`], compact id ranges and their spec syntax.
//! * [`schedule`] — the flat-phase timer wheel: every id at a fixed phase
//!   of the interval, slots aligned to the epoch.
//! * [`crawler`] — the dispatcher and slot tasks: one read per id per slot,
//!   retries only when certainly not served, gaps never invented.
//! * [`limit`] — adaptive concurrency: find what the target can take.
//! * [`fetch`] — the [`Fetch`] seam and the pooled [`HttpFetcher`].
//! * [`metrics`] — atomic counters, lag histogram, Prometheus text.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use trawler_crawl::{Event, JobConfig, Overrides};
//!
//! let config = JobConfig::load("jobs/mockstagram.toml".as_ref())?;
//! let job = config.build_with(&Overrides { ids: Some("1000000..1000100".into()), ..Overrides::default() })?;
//! let (events_tx, mut events) = tokio::sync::mpsc::channel(65_536);
//! let crawl = trawler_crawl::start_http(job, events_tx)?;
//! crawl.track([1_500_000]);
//! tokio::spawn(async move {
//!     let mut batch = Vec::new();
//!     while events.recv_many(&mut batch, 1_024).await > 0 {
//!         for event in batch.drain(..) {
//!             if let Event::Observation(o) = event {
//!                 println!("{} @ {}: {:?}", o.id, o.slot_ms, o.values);
//!             }
//!         }
//!     }
//! });
//! tokio::time::sleep(Duration::from_secs(120)).await;
//! println!("{}", crawl.metrics().to_prometheus(crawl.job().name()));
//! crawl.shutdown(Duration::from_secs(5)).await;
//! # Ok(()) }
//! ```

#[cfg(feature = "bench")]
pub mod bench;
pub use trawler_common::clock;
pub mod crawler;
mod event;
pub mod fetch;
pub mod ids;
pub mod job;
pub mod keys;
pub mod limit;
pub mod metrics;
pub mod polite;
pub mod schedule;

pub use crawler::{start, start_http, CrawlHandle, ShutdownReport};
pub use event::{Event, Gap, GapReason, Observation};
pub use fetch::{Fetch, HttpFetcher, Response, TransportError};
pub use ids::{IdSet, IdSetError};
pub use job::{Job, JobConfig, JobError, Overload, Overrides};
pub use keys::{KeyKind, Keys};
pub use metrics::{ErrorKind, MetricsSnapshot, Schedule};
