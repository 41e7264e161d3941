//! Stream jobs: metrics from an event stream.
//!
//! A stream job (`[job] kind = "stream"`, see `jobs/expo.toml` and
//! `docs/STREAMS.md`) takes events from HTTP, NATS JetStream or a file and
//! turns them into series, one sample per group × aggregate × closed
//! window, written into the same store the polling jobs use — so series
//! reads, retention and compression are the store's.
//!
//! The path of an event, each step done once:
//!
//! 1. [`decode`]: the body is walked once; only what the job's pointers
//!    name is kept, and an event whose type no metric uses is dropped the
//!    moment its type is read. This runs on the caller's thread (an HTTP
//!    handler, the JetStream puller), in parallel.
//! 2. [`Pipeline::ingest`], on the one sequencer thread: the watermark
//!    decides what is late ([`window`]), the accepted events are logged
//!    and fsynced ([`wal`]) — only then is the batch acknowledged — and
//!    aggregated into their open windows ([`agg`]).
//! 3. [`Pipeline::tick`]: windows past the watermark close; their samples
//!    go to a [`Sink`] (the store), which syncs, then the checkpoint moves
//!    and log segments whose windows are all stored are deleted.
//!
//! Formulas ([`formula`]) are not stored: a read computes them from the
//! stored inputs, fetched in one batch.

pub mod agg;
pub mod decode;
pub mod formula;
pub mod spec;
pub mod topn;
pub mod wal;
pub mod window;

use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

pub use agg::Num;
pub use decode::{Batch, DecodeStats, Decoder};
pub use spec::{Source, SpecError, StreamJob, StreamJobConfig, TopNSpec};
pub use topn::{KeyFilter, Publish, Replay, ReplayPlan, TopList, TopN, TopPipeline, TopRecord};
pub use window::{Accepted, Admitted, Engine, Groups, Sample};

/// What the sequencer drives, whatever the job computes: tumbling windows
/// into the store ([`Pipeline`]) or top-N lists to subscribers
/// ([`TopPipeline`]). One thread calls these, in arrival order.
pub trait Processor: Send {
    /// Decides, logs durably and applies `batch`. When this returns `Ok`,
    /// its accepted events survive a crash.
    fn ingest(&mut self, batch: &Batch, now_ms: i64) -> io::Result<Admitted>;
    /// Whether [`Processor::tick`] has work now.
    fn should_tick(&self, now_ms: i64) -> bool;
    /// Time-driven work: close windows, push changes.
    fn tick(&mut self, now_ms: i64) -> Result<usize, String>;
    /// The end of a file source.
    fn finish(&mut self, now_ms: i64) -> Result<usize, String>;
    /// The source position of the last durable batch.
    fn position(&self) -> u64;
    /// How often the sequencer looks at the clock when no batch comes.
    fn tick_every(&self) -> std::time::Duration {
        std::time::Duration::from_millis(100)
    }
}

/// Where closed windows go: the store.
pub trait Sink: Send {
    /// Writes `samples` (stamped with their window's start); `groups`
    /// names their group ids. May buffer.
    fn write(&mut self, samples: &[Sample], groups: &Groups) -> Result<(), String>;
    /// Makes everything written durable.
    fn sync(&mut self) -> Result<(), String>;
}

/// Counters readable without the pipeline's lock (for `/metrics`, stats
/// and the dashboard).
#[derive(Debug, Default)]
pub struct Counters {
    /// Events accepted into a window.
    pub accepted: AtomicU64,
    /// Events dropped by the early filter (no metric uses their type, or
    /// no group).
    pub filtered: AtomicU64,
    /// Events of closed windows.
    pub late: AtomicU64,
    /// Events too far ahead of the wall clock.
    pub future: AtomicU64,
    /// Events that are not valid (no time, not an object, bad JSON).
    pub malformed: AtomicU64,
    /// Windows closed and stored.
    pub windows_closed: AtomicU64,
    /// Samples stored.
    pub samples: AtomicU64,
    /// Store writes that failed (retried at the next tick).
    pub sink_errors: AtomicU64,
    /// Largest accepted event time (unix ms; `i64::MIN` before any).
    pub max_ts: AtomicI64,
    /// Groups known.
    pub groups: AtomicU64,
    /// Windows open (a top-N job: events in the window).
    pub open_windows: AtomicU64,
    /// A top-N job: members in the window.
    pub members: AtomicU64,
    /// A top-N job: (key, member) pairs in the window.
    pub pairs: AtomicU64,
    /// Close latencies, ms (from the moment a window could close to its
    /// samples being durable in the store).
    pub close_latency: Mutex<Latencies>,
}

impl Counters {
    /// Adds a decode's filtered and malformed counts.
    pub fn count_decode(&self, stats: &DecodeStats) {
        self.filtered.fetch_add(stats.filtered, Ordering::Relaxed);
        self.malformed.fetch_add(stats.malformed, Ordering::Relaxed);
    }
}

/// The last close latencies, for percentiles.
#[derive(Debug, Default)]
pub struct Latencies {
    ring: Vec<f64>,
    next: usize,
    /// All observations.
    pub count: u64,
    /// Their sum, ms.
    pub sum_ms: f64,
}

impl Latencies {
    const KEEP: usize = 1024;

    /// Records one latency.
    pub fn record(&mut self, ms: f64) {
        if self.ring.len() < Self::KEEP {
            self.ring.push(ms);
        } else {
            self.ring[self.next] = ms;
        }
        self.next = (self.next + 1) % Self::KEEP;
        self.count += 1;
        self.sum_ms += ms;
    }

    /// The `q` quantile of the kept latencies.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        if self.ring.is_empty() {
            return None;
        }
        let mut v = self.ring.clone();
        v.sort_by(f64::total_cmp);
        Some(v[((v.len() - 1) as f64 * q).round() as usize])
    }
}

/// What a start-up replay did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Replayed {
    /// Records read back from the log.
    pub records: usize,
    /// Events applied again (in windows not yet stored).
    pub events: u64,
    /// Torn or corrupt records dropped (never acknowledged).
    pub torn: u64,
}

/// The sequencer's state: the engine, the log and the sink, used by one
/// thread at a time.
pub struct Pipeline {
    engine: Engine,
    wal: wal::Wal,
    sink: Box<dyn Sink>,
    counters: Arc<Counters>,
    record: Accepted,
    pending: Vec<Sample>,
    position: u64,
    last_accept_ms: i64,
    /// When some window became closable (wall ms), until it is stored.
    closable_since: Option<i64>,
    /// How far ahead of the wall clock an event may be.
    pub max_future_ms: i64,
    /// Without accepted events for this long, event time is taken to pass
    /// at the wall clock's pace (windows of a quiet stream close).
    pub idle_ms: i64,
}

impl Pipeline {
    /// Opens the job's log in `dir`, restores groups and checkpoint, and
    /// replays what was acknowledged but not yet stored.
    pub fn open(
        job: Arc<StreamJob>,
        dir: &Path,
        sink: Box<dyn Sink>,
        counters: Arc<Counters>,
    ) -> io::Result<(Pipeline, Replayed)> {
        let mut engine = Engine::new(job.clone());
        let opened = wal::Wal::open(dir, job.fields.len(), job.window_ms, engine.groups_mut())?;
        let mut position = 0;
        if let Some(cp) = opened.checkpoint {
            engine.restore(cp.closed_before, cp.max_ts);
            position = cp.position;
        }
        let mut replayed = Replayed {
            records: opened.records.len(),
            torn: opened.torn,
            ..Replayed::default()
        };
        for r in &opened.records {
            replayed.events += engine.apply(r);
            position = position.max(r.position);
        }
        let lateness = job.lateness_ms.max(1_000);
        let p = Pipeline {
            engine,
            wal: opened.wal,
            sink,
            counters,
            record: Accepted::default(),
            pending: Vec::new(),
            position,
            last_accept_ms: trawler_common::clock::unix_ms(),
            closable_since: None,
            max_future_ms: 10 * 60_000,
            idle_ms: lateness,
        };
        p.publish();
        Ok((p, replayed))
    }

    /// The engine (for reads of open windows and groups).
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Decides, logs durably and aggregates `batch`. When this returns
    /// `Ok`, its accepted events survive a crash.
    fn ingest_batch(&mut self, batch: &Batch, now_ms: i64) -> io::Result<Admitted> {
        self.record.clear();
        let admitted = self
            .engine
            .admit(batch, now_ms, self.max_future_ms, &mut self.record);
        self.wal
            .append_groups(self.engine.groups(), &admitted.new_groups)?;
        let fields = self.engine.job().fields.len();
        let window_ms = self.engine.job().window_ms;
        self.record.position = batch.position.max(self.position);
        self.wal.append(&self.record, fields, window_ms)?;
        self.position = self.record.position;
        self.engine.apply(&self.record);
        if admitted.accepted > 0 {
            self.last_accept_ms = now_ms;
        }
        let c = &self.counters;
        c.accepted.fetch_add(admitted.accepted, Ordering::Relaxed);
        c.late.fetch_add(admitted.late, Ordering::Relaxed);
        c.future.fetch_add(admitted.future, Ordering::Relaxed);
        if self.closable_since.is_none() && self.closable(self.watermark(now_ms)) {
            self.closable_since = Some(now_ms);
        }
        self.publish();
        Ok(admitted)
    }

    fn watermark(&self, now_ms: i64) -> i64 {
        let max = self.engine.max_ts().unwrap_or(i64::MIN);
        let quiet = now_ms - self.last_accept_ms;
        if max != i64::MIN && quiet >= self.idle_ms {
            max.saturating_add(quiet)
        } else {
            max
        }
    }

    fn closable(&self, watermark: i64) -> bool {
        let job = self.engine.job();
        self.engine.open_windows() > 0
            && self
                .engine
                .first_open()
                .is_some_and(|s| s + job.window_ms + job.lateness_ms <= watermark)
    }

    /// Closes the windows past the watermark and stores them; then moves
    /// the checkpoint. A failing sink keeps the samples for the next tick
    /// (the log keeps the events meanwhile).
    fn close_due(&mut self, now_ms: i64) -> Result<usize, String> {
        let watermark = self.watermark(now_ms);
        if self.closable_since.is_none() && self.closable(watermark) {
            self.closable_since = Some(now_ms);
        }
        let closed = self.engine.close(watermark, &mut self.pending);
        self.store(closed, now_ms)
    }

    /// Closes every open window (the end of a file) and stores them.
    fn close_all(&mut self, now_ms: i64) -> Result<usize, String> {
        let closed = self.engine.close_all(&mut self.pending);
        if closed > 0 && self.closable_since.is_none() {
            self.closable_since = Some(now_ms);
        }
        self.store(closed, now_ms)
    }

    fn store(&mut self, closed: usize, now_ms: i64) -> Result<usize, String> {
        self.counters
            .windows_closed
            .fetch_add(closed as u64, Ordering::Relaxed);
        if self.pending.is_empty() && closed == 0 {
            self.publish();
            return Ok(0);
        }
        let written = self
            .sink
            .write(&self.pending, self.engine.groups())
            .and_then(|()| self.sink.sync());
        if let Err(e) = written {
            self.counters.sink_errors.fetch_add(1, Ordering::Relaxed);
            self.publish();
            return Err(e);
        }
        self.counters
            .samples
            .fetch_add(self.pending.len() as u64, Ordering::Relaxed);
        self.pending.clear();
        let cp = wal::Checkpoint {
            closed_before: self.engine.closed_before(),
            max_ts: self.engine.max_ts().unwrap_or(i64::MIN),
            position: self.position,
        };
        self.wal
            .checkpoint(cp)
            .map_err(|e| format!("checkpoint: {e}"))?;
        if let Some(since) = self.closable_since.take() {
            // Wall time: the store's write and sync are part of it.
            let ms = (trawler_common::clock::unix_ms().max(now_ms) - since).max(0);
            if let Ok(mut l) = self.counters.close_latency.lock() {
                l.record(ms as f64);
            }
        }
        self.publish();
        Ok(closed)
    }

    fn publish(&self) {
        let c = &self.counters;
        c.max_ts
            .store(self.engine.max_ts().unwrap_or(i64::MIN), Ordering::Relaxed);
        c.groups
            .store(self.engine.groups().len() as u64, Ordering::Relaxed);
        c.open_windows
            .store(self.engine.open_windows() as u64, Ordering::Relaxed);
    }
}

impl Processor for Pipeline {
    fn ingest(&mut self, batch: &Batch, now_ms: i64) -> io::Result<Admitted> {
        self.ingest_batch(batch, now_ms)
    }

    /// Whether a window can close now.
    fn should_tick(&self, now_ms: i64) -> bool {
        !self.pending.is_empty() || self.closable(self.watermark(now_ms))
    }

    fn tick(&mut self, now_ms: i64) -> Result<usize, String> {
        self.close_due(now_ms)
    }

    fn finish(&mut self, now_ms: i64) -> Result<usize, String> {
        self.close_all(now_ms)
    }

    /// A JetStream stream sequence, a file's line: a source skips what is
    /// at or before it.
    fn position(&self) -> u64 {
        self.position
    }
}

/// Decompresses a gzip body, refusing more than `limit` bytes out (a small
/// body must not expand into gigabytes).
pub fn gunzip(body: &[u8], limit: usize) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let mut out = Vec::with_capacity(body.len().saturating_mul(4).min(limit));
    let mut reader = flate2::read::MultiGzDecoder::new(body).take(limit as u64 + 1);
    reader
        .read_to_end(&mut out)
        .map_err(|e| format!("the gzip body is damaged: {e}"))?;
    if out.len() > limit {
        return Err(format!(
            "the body is larger than {limit} bytes once decompressed"
        ));
    }
    Ok(out)
}
