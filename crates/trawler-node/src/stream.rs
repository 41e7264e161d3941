//! A stream job's node: sources → the sequencer → the store, and the API.
//!
//! ```text
//! POST …/events ─┐ decode + early filter (handler threads, in parallel)
//! file reader ───┼──► bounded queue ──► sequencer thread ──► WAL (fsync) ──► answer / ack
//! JetStream ─────┘                        │  windows, watermark
//!                                         └──► closed windows ──► store (sync) ──► checkpoint
//! ```
//!
//! One thread owns the [`Pipeline`]: arrival order is one order, the one
//! the log records. A full queue answers 503 (HTTP) or waits (file,
//! JetStream): back-pressure, never an unbounded buffer. The store is the
//! embedded one in `<data>/store`, so stream results live beside crawl
//! series, with their retention and compression; the log is
//! `<data>/stream/`.

pub mod cluster;
pub mod hub;
pub mod nats;

use std::collections::HashMap;
use std::io::{BufRead, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use trawler_api::streams::{
    EventError, FormulaInfo, IngestAnswer, NamedPoints, StreamBackend, StreamInfo, StreamStats,
    WindowRow,
};
use trawler_api::streams::{TopAnswer, TopInfo, TopSubscription};
use trawler_api::{ApiConfig, ApiError};
use trawler_store::{
    Sample as StoreSample, SeriesId, SeriesKey, Store, StoreConfig, SyncPolicy, Value, ValueKind,
};
use trawler_stream::{
    spec::Aggregate, Batch, Counters, Decoder, Groups, Num, Pipeline, Processor, Sample, Sink,
    Source, StreamJob, TopPipeline,
};

use self::hub::{Hub, HubPublisher};

use crate::error::{Result, Step};

/// Batches waiting for the sequencer.
const QUEUE: usize = 32;
/// Lines per batch read from a file.
const FILE_BATCH: usize = 8_192;

/// How to run a stream job.
#[derive(Debug, Clone)]
pub struct StreamConfig {
    /// The checked job.
    pub job: Arc<StreamJob>,
    /// Data folder.
    pub data: PathBuf,
    /// API settings (listen address, token, limits).
    pub api: ApiConfig,
    /// Store retention.
    pub retention: Duration,
    /// Keep serving after a file source is done (false: stop then).
    pub serve_after_file: bool,
    /// A top-N job as one node of a cluster (see [`cluster`]).
    pub cluster: Option<trawler_cluster::ClusterConfig>,
}

enum Work {
    Batch(Batch, SyncSender<std::io::Result<trawler_stream::Admitted>>),
    /// The end of a file: close every window.
    Finish(SyncSender<()>),
}

/// (group, series) → store series id.
type Ids = RwLock<HashMap<(u32, u16), SeriesId>>;

/// The embedded store as the pipeline's sink.
struct StoreSink {
    store: Arc<Store>,
    job: Arc<StreamJob>,
    ids: Arc<Ids>,
    samples: Vec<StoreSample>,
}

impl Sink for StoreSink {
    fn write(&mut self, samples: &[Sample], _groups: &Groups) -> std::result::Result<(), String> {
        let mut missing = Vec::new();
        {
            let ids = self.ids.read().expect("ids lock");
            for s in samples {
                if !ids.contains_key(&(s.group, s.series))
                    && !missing.contains(&(s.group, s.series))
                {
                    missing.push((s.group, s.series));
                }
            }
        }
        if !missing.is_empty() {
            let keys: Vec<(SeriesKey<'_>, ValueKind)> = missing
                .iter()
                .map(|&(g, s)| {
                    let series = &self.job.series[s as usize];
                    (
                        SeriesKey {
                            job: &self.job.name,
                            entity: u64::from(g),
                            metric: &series.name,
                        },
                        if series.integer {
                            ValueKind::Int
                        } else {
                            ValueKind::Float
                        },
                    )
                })
                .collect();
            let got = self.store.series_batch(&keys).map_err(|e| e.to_string())?;
            let mut ids = self.ids.write().expect("ids lock");
            for (k, id) in missing.into_iter().zip(got) {
                ids.insert(k, id);
            }
        }
        self.samples.clear();
        let ids = self.ids.read().expect("ids lock");
        for s in samples {
            self.samples.push(StoreSample {
                series: ids[&(s.group, s.series)],
                ts_ms: s.ts,
                value: match s.value {
                    Num::Int(v) => Value::Int(v),
                    Num::Float(v) => Value::Float(v),
                },
            });
        }
        drop(ids);
        self.store
            .append(&self.samples)
            .map_err(|e| e.to_string())?;
        Ok(())
    }

    fn sync(&mut self) -> std::result::Result<(), String> {
        self.store.sync().map_err(|e| e.to_string())
    }
}

/// What the job computes, and what its reads need.
enum Core {
    /// Tumbling windows into the store.
    Windows(WindowsCore),
    /// Top-N lists pushed to subscribers.
    Top {
        pipeline: Arc<Mutex<TopPipeline>>,
        hub: Arc<Hub>,
        /// Cluster mode: the partitions and the routing of lists.
        cluster: Option<Arc<cluster::TopCluster>>,
    },
}

/// A windows job's pipeline, store and series ids.
struct WindowsCore {
    pipeline: Arc<Mutex<Pipeline>>,
    store: Arc<Store>,
    ids: Arc<Ids>,
}

/// The running job, shared by the API and the sources.
pub struct StreamNode {
    job: Arc<StreamJob>,
    info: StreamInfo,
    decoder: Decoder,
    counters: Arc<Counters>,
    core: Core,
    tx: SyncSender<Work>,
}

/// Starts the sequencer thread over `pipeline`.
fn start_sequencer<P: Processor + 'static>(
    pipeline: Arc<Mutex<P>>,
    rx: mpsc::Receiver<Work>,
) -> Result<()> {
    std::thread::Builder::new()
        .name("stream-sequencer".into())
        .spawn(move || sequencer(pipeline, rx))
        .step("starting the sequencer")?;
    Ok(())
}

impl StreamNode {
    /// Opens the store and the log in `data`, replays, and starts the
    /// sequencer thread (it stops when the node is dropped).
    pub fn open(job: Arc<StreamJob>, data: &Path, retention: Duration) -> Result<Arc<StreamNode>> {
        std::fs::create_dir_all(data)
            .with_step(|| format!("creating the data folder {}", data.display()))?;
        crate::state::claim_folder(data, &job.name)?;
        let counters = Arc::new(Counters::default());
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        let core = match &job.topn {
            None => Self::open_windows(&job, data, retention, &counters, rx)?,
            Some(t) => {
                let hub = Hub::new(t.max_subscribers);
                let (pipeline, replayed) = TopPipeline::open(
                    job.clone(),
                    &data.join("stream"),
                    Box::new(HubPublisher(hub.clone())),
                    counters.clone(),
                )
                .step("opening the stream's write-ahead log")?;
                let (keys, members, pairs, entries) = pipeline.engine().sizes();
                tracing::info!(
                    job = %job.name,
                    records = replayed.records,
                    events = replayed.events,
                    torn = replayed.torn,
                    keys, members, pairs, entries,
                    "top-N log replayed"
                );
                let pipeline = Arc::new(Mutex::new(pipeline));
                start_sequencer(pipeline.clone(), rx)?;
                Core::Top {
                    pipeline,
                    hub,
                    cluster: None,
                }
            }
        };
        Ok(Self::with_core(job, counters, core, tx))
    }

    /// A top-N job as one node of a cluster: no data folder, no log (the
    /// JetStream stream is the log); only the keys of the partitions
    /// `cluster` holds are applied, and changed lists go to `publish`
    /// (NATS), not to the local hub, which the cluster feeds.
    pub fn open_partitioned(
        job: Arc<StreamJob>,
        cluster: Arc<cluster::TopCluster>,
        publish: Box<dyn trawler_stream::Publish>,
    ) -> Result<Arc<StreamNode>> {
        let t = job.topn.as_ref().ok_or_else(|| {
            crate::Error::Config(format!(
                "--cluster: the stream job {} has no [stream.topn]: cluster mode is for top-N jobs",
                job.name
            ))
        })?;
        let counters = Arc::new(Counters::default());
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        let hub = Hub::new(t.max_subscribers);
        let pipeline = Arc::new(Mutex::new(TopPipeline::partitioned(
            job.clone(),
            cluster.filter(),
            publish,
            counters.clone(),
        )));
        cluster.attach(pipeline.clone(), hub.clone());
        start_sequencer(pipeline.clone(), rx)?;
        let core = Core::Top {
            pipeline,
            hub,
            cluster: Some(cluster),
        };
        Ok(Self::with_core(job, counters, core, tx))
    }

    fn with_core(
        job: Arc<StreamJob>,
        counters: Arc<Counters>,
        core: Core,
        tx: SyncSender<Work>,
    ) -> Arc<StreamNode> {
        let info = StreamInfo {
            name: job.name.clone(),
            kind: "stream",
            key_label: job
                .group
                .as_ref()
                .map_or_else(|| topn_label(&job, true), |g| g.key_label.clone()),
            value_label: job
                .group
                .as_ref()
                .map_or_else(|| topn_label(&job, false), |g| g.value_label.clone()),
            window_ms: job.window_ms,
            lateness_ms: job.lateness_ms,
            source: match &job.source {
                Source::Http => "http",
                Source::Nats(_) => "nats",
                Source::File(_) => "file",
            }
            .into(),
            series: job.series.iter().map(|s| s.name.clone()).collect(),
            formulas: job
                .formulas
                .iter()
                .map(|(name, _)| FormulaInfo {
                    name: name.clone(),
                    expr: job_formula_text(&job, name),
                })
                .collect(),
            max_batch_bytes: job.max_batch_bytes,
            topn: job.topn.as_ref().map(|t| TopInfo {
                n: t.n,
                window_ms: job.window_ms,
                slide_ms: t.slide_ms,
                key_label: t.key_label.clone(),
                member_label: t.member_label.clone(),
                weighted: t.weighted,
                push_interval_ms: t.push_interval_ms,
                max_subscribers: t.max_subscribers,
                max_keys: t.max_keys,
            }),
        };
        Arc::new(StreamNode {
            decoder: Decoder::new(&job),
            job,
            info,
            counters,
            core,
            tx,
        })
    }

    /// A windows job's store, log and sequencer.
    fn open_windows(
        job: &Arc<StreamJob>,
        data: &Path,
        retention: Duration,
        counters: &Arc<Counters>,
        rx: mpsc::Receiver<Work>,
    ) -> Result<Core> {
        let mut store_config = StoreConfig::new(data.join("store"));
        store_config.retention = retention;
        store_config.sync = SyncPolicy::Interval(Duration::from_secs(1));
        let store = Arc::new(store_config.open().step("opening the store")?);
        let mut ids = HashMap::new();
        for s in store.list_series(&job.name) {
            if let Some(i) = job.series.iter().position(|x| x.name == s.metric) {
                ids.insert((s.entity as u32, i as u16), s.id);
            }
        }
        let ids = Arc::new(RwLock::new(ids));
        let sink = StoreSink {
            store: store.clone(),
            job: job.clone(),
            ids: ids.clone(),
            samples: Vec::new(),
        };
        let (pipeline, replayed) = Pipeline::open(
            job.clone(),
            &data.join("stream"),
            Box::new(sink),
            counters.clone(),
        )
        .step("opening the stream's write-ahead log")?;
        tracing::info!(
            job = %job.name,
            records = replayed.records,
            events = replayed.events,
            torn = replayed.torn,
            groups = pipeline.engine().groups().len(),
            "stream log replayed"
        );
        let pipeline = Arc::new(Mutex::new(pipeline));
        start_sequencer(pipeline.clone(), rx)?;
        Ok(Core::Windows(WindowsCore {
            pipeline,
            store,
            ids,
        }))
    }

    /// A windows job's pipeline, store and ids (404 for a top-N job).
    fn windows_core(&self) -> std::result::Result<&WindowsCore, ApiError> {
        match &self.core {
            Core::Windows(w) => Ok(w),
            Core::Top { .. } => Err(ApiError::not_found(
                "no_windows",
                "this job keeps top-N lists, not windows",
            )),
        }
    }

    /// The store of a windows job (synced at shutdown).
    fn store(&self) -> Option<Arc<Store>> {
        match &self.core {
            Core::Windows(w) => Some(w.store.clone()),
            Core::Top { .. } => None,
        }
    }

    /// The counters.
    pub fn counters(&self) -> &Arc<Counters> {
        &self.counters
    }

    /// The source position of the last durable batch.
    pub fn position(&self) -> u64 {
        match &self.core {
            Core::Windows(w) => w.pipeline.lock().expect("pipeline lock").position(),
            Core::Top { pipeline, .. } => pipeline.lock().expect("pipeline lock").position(),
        }
    }

    /// Decodes `body` (NDJSON or an array) and submits it; `wait` blocks
    /// on a full queue (file, JetStream), else a full queue is an error.
    pub fn submit(
        &self,
        body: &[u8],
        position: u64,
        wait: bool,
    ) -> std::result::Result<IngestAnswer, ApiError> {
        let mut batch = Batch::default();
        self.decoder.decode(body, &mut batch);
        batch.position = position;
        self.submit_batch(batch, wait)
    }

    fn submit_batch(
        &self,
        batch: Batch,
        wait: bool,
    ) -> std::result::Result<IngestAnswer, ApiError> {
        self.counters.count_decode(&batch.stats);
        if let Some((line, why)) = batch.stats.errors.first() {
            tracing::debug!(job = %self.job.name, line, error = %why, malformed = batch.stats.malformed, "malformed events");
        }
        let mut answer = IngestAnswer {
            filtered: batch.stats.filtered,
            malformed: batch.stats.malformed,
            errors: batch
                .stats
                .errors
                .iter()
                .map(|(line, error)| EventError {
                    line: *line,
                    error: error.clone(),
                })
                .collect(),
            ..IngestAnswer::default()
        };
        if batch.events.is_empty() && batch.position == 0 {
            return Ok(answer);
        }
        let (reply_tx, reply_rx) = mpsc::sync_channel(1);
        let work = Work::Batch(batch, reply_tx);
        if wait {
            self.tx
                .send(work)
                .map_err(|_| ApiError::Unavailable("the stream is shutting down".into()))?;
        } else {
            match self.tx.try_send(work) {
                Ok(()) => {}
                Err(TrySendError::Full(_)) => {
                    return Err(ApiError::Unavailable(
                        "the stream's queue is full; retry shortly".into(),
                    ))
                }
                Err(TrySendError::Disconnected(_)) => {
                    return Err(ApiError::Unavailable("the stream is shutting down".into()))
                }
            }
        }
        let admitted = reply_rx
            .recv()
            .map_err(|_| ApiError::Unavailable("the stream is shutting down".into()))?
            .map_err(|e| {
                tracing::error!(error = %e, "the stream's log refused a batch");
                ApiError::Unavailable(format!("events could not be made durable: {e}"))
            })?;
        answer.accepted = admitted.accepted;
        answer.late = admitted.late;
        answer.future = admitted.future;
        Ok(answer)
    }

    /// Closes every open window and waits until they are stored (the end
    /// of a file source).
    pub fn finish(&self) {
        let (tx, rx) = mpsc::sync_channel(1);
        if self.tx.send(Work::Finish(tx)).is_ok() {
            let _ = rx.recv();
        }
    }

    /// The series of one group: stored points and formulas.
    fn read(
        &self,
        group: u32,
        names: &[String],
        from: i64,
        to: i64,
    ) -> std::result::Result<Vec<NamedPoints>, ApiError> {
        let job = &self.job;
        // Every stored series the names need, formulas resolved through
        // their inputs: fetched once each.
        let mut base: Vec<usize> = Vec::new();
        let mut stack: Vec<String> = names.to_vec();
        let mut seen: Vec<String> = Vec::new();
        while let Some(n) = stack.pop() {
            if seen.contains(&n) {
                continue;
            }
            match job.lookup(&n) {
                Some(Ok(s)) if !base.contains(&s) => base.push(s),
                Some(Ok(_)) => {}
                Some(Err(f)) => {
                    let mut inputs = Vec::new();
                    job.formulas[f].1.names(&mut inputs);
                    stack.extend(inputs);
                }
                None => {}
            }
            seen.push(n);
        }
        // Only the ids this read needs, copied out of the lock: the store
        // reads below must not hold it against the sequencer's writes.
        let WindowsCore { store, ids, .. } = self.windows_core()?;
        let ids: Vec<Option<SeriesId>> = {
            let all = ids.read().expect("ids lock");
            base.iter()
                .map(|&s| all.get(&(group, s as u16)).copied())
                .collect()
        };
        let mut columns: HashMap<usize, std::collections::BTreeMap<i64, f64>> = HashMap::new();
        for (&s, id) in base.iter().zip(ids) {
            let mut col = std::collections::BTreeMap::new();
            if let Some(id) = id {
                for p in store
                    .range(id, from, to)
                    .map_err(|e| ApiError::Unavailable(e.to_string()))?
                {
                    col.insert(p.ts_ms, p.value.as_f64());
                }
            }
            columns.insert(s, col);
        }
        Ok(evaluate(job, names, &base, &columns))
    }
}

/// The values of `names` per window from the stored `columns`. Counts,
/// distinct counts and sums absent in a window where the group has data
/// are 0 in formulas (no event counted); other absent values make the
/// formula absent there.
fn evaluate(
    job: &StreamJob,
    names: &[String],
    base: &[usize],
    columns: &HashMap<usize, std::collections::BTreeMap<i64, f64>>,
) -> Vec<NamedPoints> {
    let mut times: Vec<i64> = columns.values().flat_map(|c| c.keys().copied()).collect();
    times.sort_unstable();
    times.dedup();
    let additive = |s: usize| {
        let m = job
            .metrics
            .iter()
            .rev()
            .find(|m| m.first_series <= s)
            .expect("a metric");
        matches!(
            m.aggregate,
            Aggregate::Count | Aggregate::Distinct | Aggregate::Sum
        )
    };
    let mut out: Vec<NamedPoints> = names
        .iter()
        .map(|n| NamedPoints {
            name: n.clone(),
            points: Vec::new(),
            open: Vec::new(),
        })
        .collect();
    let mut formula_values: Vec<Option<f64>> = vec![None; job.formulas.len()];
    for &t in &times {
        let value_of = |name: &str, fv: &[Option<f64>]| -> Option<f64> {
            match job.lookup(name)? {
                Ok(s) => match columns.get(&s).and_then(|c| c.get(&t)) {
                    Some(v) => Some(*v),
                    None if additive(s) => Some(0.0),
                    None => None,
                },
                Err(f) => fv[f],
            }
        };
        for f in 0..job.formulas.len() {
            let v = job.formulas[f].1.eval(&|n| value_of(n, &formula_values));
            formula_values[f] = v;
        }
        for np in &mut out {
            let v = match job.lookup(&np.name) {
                Some(Ok(s)) if base.contains(&s) => {
                    columns.get(&s).and_then(|c| c.get(&t)).copied()
                }
                Some(Err(f)) => formula_values[f],
                _ => None,
            };
            if let Some(v) = v {
                np.points.push((t, v));
            }
        }
    }
    out
}

/// A top-N job's key (or member) label.
fn topn_label(job: &StreamJob, key: bool) -> String {
    job.topn
        .as_ref()
        .map(|t| {
            if key {
                t.key_label.clone()
            } else {
                t.member_label.clone()
            }
        })
        .unwrap_or_default()
}

fn job_formula_text(job: &StreamJob, name: &str) -> String {
    job.formula_texts
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, t)| t.clone())
        .unwrap_or_default()
}

fn sequencer<P: Processor>(pipeline: Arc<Mutex<P>>, rx: mpsc::Receiver<Work>) {
    let handle = |work: Work, p: &mut P| match work {
        Work::Batch(batch, reply) => {
            let r = p.ingest(&batch, trawler_common::clock::unix_ms());
            let _ = reply.send(r);
        }
        Work::Finish(reply) => {
            if let Err(e) = p.finish(trawler_common::clock::unix_ms()) {
                tracing::warn!(error = %e, "storing the last windows failed; they stay in the log");
            }
            let _ = reply.send(());
        }
    };
    let every = pipeline.lock().expect("pipeline lock").tick_every();
    loop {
        let first = rx.recv_timeout(every);
        let mut p = pipeline.lock().expect("pipeline lock");
        match first {
            Ok(work) => {
                handle(work, &mut p);
                while let Ok(work) = rx.try_recv() {
                    handle(work, &mut p);
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        let now = trawler_common::clock::unix_ms();
        if p.should_tick(now) {
            if let Err(e) = p.tick(now) {
                tracing::warn!(error = %e, "storing closed windows failed; they stay in the log and are retried");
            }
        }
    }
}

impl StreamBackend for StreamNode {
    fn info(&self) -> &StreamInfo {
        &self.info
    }

    fn ingest(&self, body: &[u8], gzip: bool) -> std::result::Result<IngestAnswer, ApiError> {
        if let Core::Top {
            cluster: Some(_), ..
        } = &self.core
        {
            return Err(ApiError::bad_request(
                "cluster_ingest",
                "in cluster mode every node reads the job's JetStream stream: publish events to its subject, not to a node",
            ));
        }
        if gzip {
            let plain = trawler_stream::gunzip(body, self.job.max_batch_bytes).map_err(|why| {
                if why.contains("larger than") {
                    ApiError::TooLarge {
                        limit: self.job.max_batch_bytes,
                    }
                } else {
                    ApiError::bad_request("bad_gzip", why)
                }
            })?;
            return self.submit(&plain, 0, false);
        }
        self.submit(body, 0, false)
    }

    fn stats(&self) -> StreamStats {
        let c = &self.counters;
        let max_ts = c.max_ts.load(Ordering::Relaxed);
        let watermark = (max_ts != i64::MIN).then_some(max_ts);
        let (p50, p99) = c
            .close_latency
            .lock()
            .map(|l| (l.quantile(0.5), l.quantile(0.99)))
            .unwrap_or((None, None));
        StreamStats {
            accepted: c.accepted.load(Ordering::Relaxed),
            filtered: c.filtered.load(Ordering::Relaxed),
            late: c.late.load(Ordering::Relaxed),
            future: c.future.load(Ordering::Relaxed),
            malformed: c.malformed.load(Ordering::Relaxed),
            watermark_ms: watermark,
            watermark_lag_ms: watermark.map(|w| trawler_common::clock::unix_ms() - w),
            open_windows: c.open_windows.load(Ordering::Relaxed),
            windows_closed: c.windows_closed.load(Ordering::Relaxed),
            samples: c.samples.load(Ordering::Relaxed),
            groups: c.groups.load(Ordering::Relaxed),
            close_latency_p50_ms: p50,
            close_latency_p99_ms: p99,
            sink_errors: c.sink_errors.load(Ordering::Relaxed),
            cluster: match &self.core {
                Core::Top {
                    cluster: Some(cl), ..
                } => Some(cl.stats()),
                _ => None,
            },
        }
    }

    fn groups(&self) -> Vec<(String, String)> {
        let Ok(w) = self.windows_core() else {
            return Vec::new();
        };
        let p = w.pipeline.lock().expect("pipeline lock");
        let g = p.engine().groups();
        (0..g.len() as u32)
            .filter_map(|i| g.name(i).map(|(k, v)| (k.to_owned(), v.to_owned())))
            .collect()
    }

    fn series(
        &self,
        group: (&str, &str),
        names: &[String],
        from_ms: i64,
        to_ms: i64,
        live: bool,
    ) -> std::result::Result<Option<Vec<NamedPoints>>, ApiError> {
        let (id, open) = {
            let p = self.windows_core()?.pipeline.lock().expect("pipeline lock");
            let Some(id) = p.engine().groups().get(group.0, group.1) else {
                return Ok(None);
            };
            (
                id,
                if live {
                    p.engine().open_values(id)
                } else {
                    Vec::new()
                },
            )
        };
        let mut out = self.read(id, names, from_ms, to_ms)?;
        if live {
            for (start, values) in open {
                let columns: HashMap<usize, std::collections::BTreeMap<i64, f64>> = values
                    .iter()
                    .enumerate()
                    .filter_map(|(s, v)| {
                        v.map(|v| (s, std::collections::BTreeMap::from([(start, v.as_f64())])))
                    })
                    .collect();
                let all: Vec<usize> = (0..self.job.series.len()).collect();
                for (np, live) in out
                    .iter_mut()
                    .zip(evaluate(&self.job, names, &all, &columns))
                {
                    np.open.extend(live.points);
                }
            }
        }
        Ok(Some(out))
    }

    fn windows(
        &self,
        from_ms: i64,
        to_ms: i64,
        limit: usize,
    ) -> std::result::Result<Vec<WindowRow>, ApiError> {
        let groups = self.groups();
        let names: Vec<String> = self
            .job
            .series
            .iter()
            .map(|s| s.name.clone())
            .chain(self.job.formulas.iter().map(|(n, _)| n.clone()))
            .collect();
        let mut rows = Vec::new();
        for (g, (k, v)) in groups.iter().enumerate() {
            for np in self.read(g as u32, &names, from_ms, to_ms)? {
                for (t, value) in np.points {
                    rows.push(WindowRow {
                        window_start_ms: t,
                        key: k.clone(),
                        value_label: v.clone(),
                        metric: np.name.clone(),
                        value,
                    });
                }
            }
            if rows.len() > limit {
                break;
            }
        }
        rows.sort_by(|a, b| {
            (a.window_start_ms, &a.key, &a.value_label, &a.metric).cmp(&(
                b.window_start_ms,
                &b.key,
                &b.value_label,
                &b.metric,
            ))
        });
        Ok(rows)
    }

    fn render_metrics(&self, out: &mut String) {
        use std::fmt::Write;
        let s = self.stats();
        let job = &self.job.name;
        let _ = writeln!(out, "# HELP trawler_stream_events_total Events by what became of them.\n# TYPE trawler_stream_events_total counter");
        for (outcome, n) in [
            ("accepted", s.accepted),
            ("filtered", s.filtered),
            ("late", s.late),
            ("future", s.future),
            ("malformed", s.malformed),
        ] {
            let _ = writeln!(
                out,
                "trawler_stream_events_total{{job=\"{job}\",outcome=\"{outcome}\"}} {n}"
            );
        }
        let gauge = |out: &mut String, name: &str, help: &str, v: f64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name}{{job=\"{job}\"}} {v}"
            );
        };
        if let Some(w) = s.watermark_ms {
            gauge(
                out,
                "trawler_stream_watermark_seconds",
                "Largest accepted event time.",
                w as f64 / 1000.0,
            );
        }
        if let Some(l) = s.watermark_lag_ms {
            gauge(
                out,
                "trawler_stream_watermark_lag_seconds",
                "Now minus the watermark.",
                l as f64 / 1000.0,
            );
        }
        gauge(
            out,
            "trawler_stream_open_windows",
            "Windows open.",
            s.open_windows as f64,
        );
        gauge(
            out,
            "trawler_stream_groups",
            "Groups known.",
            s.groups as f64,
        );
        let _ = writeln!(out, "# HELP trawler_stream_windows_closed_total Windows closed and stored.\n# TYPE trawler_stream_windows_closed_total counter\ntrawler_stream_windows_closed_total{{job=\"{job}\"}} {}", s.windows_closed);
        let _ = writeln!(out, "# HELP trawler_stream_samples_total Samples stored.\n# TYPE trawler_stream_samples_total counter\ntrawler_stream_samples_total{{job=\"{job}\"}} {}", s.samples);
        let _ = writeln!(out, "# HELP trawler_stream_store_errors_total Failed store writes (retried).\n# TYPE trawler_stream_store_errors_total counter\ntrawler_stream_store_errors_total{{job=\"{job}\"}} {}", s.sink_errors);
        if let Ok(l) = self.counters.close_latency.lock() {
            let _ = writeln!(out, "# HELP trawler_stream_window_close_seconds From a window's closing to its samples being durable.\n# TYPE trawler_stream_window_close_seconds summary");
            for q in [0.5, 0.99] {
                if let Some(v) = l.quantile(q) {
                    let _ = writeln!(
                        out,
                        "trawler_stream_window_close_seconds{{job=\"{job}\",quantile=\"{q}\"}} {}",
                        v / 1000.0
                    );
                }
            }
            let _ = writeln!(out, "trawler_stream_window_close_seconds_sum{{job=\"{job}\"}} {}\ntrawler_stream_window_close_seconds_count{{job=\"{job}\"}} {}", l.sum_ms / 1000.0, l.count);
        }
        match &self.core {
            Core::Windows(w) => {
                let st = w.store.stats();
                let _ = writeln!(out, "# HELP trawler_store_samples Samples in the store.\n# TYPE trawler_store_samples gauge\ntrawler_store_samples {}", st.samples);
            }
            Core::Top { hub, cluster, .. } => {
                if let Some(cl) = cluster {
                    let st = cl.stats();
                    gauge(
                        out,
                        "trawler_topn_partitions_served",
                        "Partitions this cluster node holds and serves.",
                        st.owned.len() as f64,
                    );
                    gauge(
                        out,
                        "trawler_topn_partitions_rebuilding",
                        "Partitions this cluster node holds and is rebuilding from the stream.",
                        st.rebuilding.len() as f64,
                    );
                    let _ = writeln!(out, "# HELP trawler_topn_rebuilds_total Rebuilds of gained partitions from the stream.\n# TYPE trawler_topn_rebuilds_total counter\ntrawler_topn_rebuilds_total{{job=\"{job}\"}} {}", st.rebuilds);
                }
                let c = &self.counters;
                for (name, help, v) in [
                    (
                        "trawler_topn_members",
                        "Members in the window.",
                        c.members.load(Ordering::Relaxed),
                    ),
                    (
                        "trawler_topn_pairs",
                        "(key, member) pairs in the window.",
                        c.pairs.load(Ordering::Relaxed),
                    ),
                    (
                        "trawler_topn_subscribers",
                        "Live subscribers.",
                        hub.counters.subscribers.load(Ordering::Relaxed),
                    ),
                ] {
                    gauge(out, name, help, v as f64);
                }
                let h = &hub.counters;
                for (name, help, v) in [
                    (
                        "trawler_topn_subscribers_dropped_total",
                        "Subscribers dropped because they stopped reading.",
                        h.dropped_slow.load(Ordering::Relaxed),
                    ),
                    (
                        "trawler_topn_subscribers_refused_total",
                        "Subscriptions refused at the cap.",
                        h.refused.load(Ordering::Relaxed),
                    ),
                    (
                        "trawler_topn_messages_total",
                        "Messages queued to subscribers.",
                        h.messages.load(Ordering::Relaxed),
                    ),
                    (
                        "trawler_topn_lists_total",
                        "Key lists pushed.",
                        h.lists.load(Ordering::Relaxed),
                    ),
                ] {
                    let _ = writeln!(
                        out,
                        "# HELP {name} {help}\n# TYPE {name} counter\n{name}{{job=\"{job}\"}} {v}"
                    );
                }
            }
        }
    }

    fn top(&self, keys: &[String]) -> std::result::Result<Vec<TopAnswer>, ApiError> {
        let (pipeline, _, cluster) = self.top_core()?;
        if let Some(cluster) = cluster {
            return cluster.top(keys);
        }
        let p = pipeline.lock().expect("pipeline lock");
        Ok(keys
            .iter()
            .map(|k| hub::answer(&p.engine().top(k)))
            .collect())
    }

    fn hottest(&self, limit: usize) -> std::result::Result<Vec<TopAnswer>, ApiError> {
        let (pipeline, _, cluster) = self.top_core()?;
        if let Some(cluster) = cluster {
            return Ok(cluster.hottest(limit));
        }
        let p = pipeline.lock().expect("pipeline lock");
        let e = p.engine();
        Ok(e.hottest(limit)
            .iter()
            .map(|(k, _)| hub::answer(&e.top(k)))
            .collect())
    }

    fn subscribe(&self, keys: Vec<String>) -> std::result::Result<TopSubscription, ApiError> {
        let (pipeline, hub, cluster) = self.top_core()?;
        if let Some(cluster) = cluster {
            // The snapshot comes from the owners; no update before it.
            let r = hub.register_pending(&keys)?;
            cluster.snapshot(r.public.clone(), keys.clone());
            return Ok(TopSubscription {
                id: r.public,
                keys,
                rx: r.rx,
                guard: hub.guard(r.sub),
            });
        }
        let r = hub.register(&keys)?;
        let guard = hub.guard(r.sub);
        {
            // Under the pipeline's lock: no update newer than the snapshot
            // is queued before it.
            let p = pipeline.lock().expect("pipeline lock");
            let lists: Vec<_> = keys.iter().map(|k| p.engine().top(k)).collect();
            hub.send_one(&r.tx, "snapshot", &lists);
        }
        Ok(TopSubscription {
            id: r.public,
            keys,
            rx: r.rx,
            guard,
        })
    }

    fn resubscribe(&self, id: &str, keys: Vec<String>) -> std::result::Result<(), ApiError> {
        let (pipeline, hub, cluster) = self.top_core()?;
        if let Some(cluster) = cluster {
            let (_, added) = hub.set_keys(id, &keys)?;
            if !added.is_empty() {
                cluster.snapshot(id.to_owned(), added);
            }
            return Ok(());
        }
        let p = pipeline.lock().expect("pipeline lock");
        let (tx, added) = hub.set_keys(id, &keys)?;
        if !added.is_empty() {
            let lists: Vec<_> = added.iter().map(|k| p.engine().top(k)).collect();
            hub.send_one(&tx, "snapshot", &lists);
        }
        Ok(())
    }
}

impl StreamNode {
    #[allow(clippy::type_complexity)]
    fn top_core(
        &self,
    ) -> std::result::Result<
        (
            &Arc<Mutex<TopPipeline>>,
            &Arc<Hub>,
            Option<&Arc<cluster::TopCluster>>,
        ),
        ApiError,
    > {
        match &self.core {
            Core::Top {
                pipeline,
                hub,
                cluster,
            } => Ok((pipeline, hub, cluster.as_ref())),
            Core::Windows(_) => Err(ApiError::not_found(
                "no_topn",
                "this job keeps no top-N lists",
            )),
        }
    }
}

/// Reads an NDJSON file (`.gz` too) into the node, resuming after the
/// last durable line; then closes every window.
pub fn read_file(node: &StreamNode, path: &Path) -> Result<u64> {
    let file = std::fs::File::open(path)
        .with_step(|| format!("opening the stream's file {}", path.display()))?;
    let reader: Box<dyn Read> = if path.extension().is_some_and(|e| e == "gz") {
        Box::new(flate2::read::MultiGzDecoder::new(file))
    } else {
        Box::new(file)
    };
    let mut reader = std::io::BufReader::with_capacity(1 << 20, reader);
    let resume = node.position();
    let mut line_no = 0u64;
    let mut chunk = Vec::with_capacity(FILE_BATCH * 128);
    let mut lines = 0;
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = reader
            .read_until(b'\n', &mut line)
            .with_step(|| format!("reading {}", path.display()))?;
        if n > 0 {
            line_no += 1;
            if line_no > resume {
                chunk.extend_from_slice(&line);
                if !line.ends_with(b"\n") {
                    chunk.push(b'\n');
                }
                lines += 1;
            }
        }
        if (n == 0 && lines > 0) || lines == FILE_BATCH {
            node.submit(&chunk, line_no, true)
                .map_err(|e| crate::Error::Step {
                    step: "ingesting the file".into(),
                    source: e.to_string().into(),
                })?;
            chunk.clear();
            lines = 0;
        }
        if n == 0 {
            break;
        }
    }
    node.finish();
    Ok(line_no.saturating_sub(resume))
}

/// Binds and starts the job's API on `api_runtime`, until `stop`.
fn start_api(
    node: &Arc<StreamNode>,
    config: &StreamConfig,
    api_runtime: &tokio::runtime::Handle,
    stop: trawler_common::shutdown::Shutdown,
) -> Result<tokio::task::JoinHandle<std::io::Result<()>>> {
    let api = config
        .api
        .clone()
        .build_stream(node.clone())
        .step("the API")?;
    let api = {
        use trawler_api::streams::StreamBackend as _;
        let info = node.info();
        let names = info
            .series
            .iter()
            .cloned()
            .chain(info.formulas.iter().map(|f| f.name.clone()))
            .collect();
        api.with_prometheus(Arc::new(crate::prom::NodeProm::new(
            crate::prom::stream_queryable(node.clone()),
            &info.name,
            names,
            None,
        )))
    };
    let listener = crate::bind_api(config.api.listen)?;
    let addr = listener.local_addr().step("binding the API")?;
    tracing::info!(%addr, job = %config.job.name, "API listening");
    println!("listening on http://{addr}");
    let stopped = {
        let mut stop = stop;
        async move { stop.wait().await }
    };
    api.spawn_on(api_runtime, listener, stopped)
        .step("starting the API")
}

/// Runs a stream job until `shutdown` (or, for a file source without
/// `serve_after_file`, until the file is done).
pub async fn run(
    config: StreamConfig,
    api_runtime: tokio::runtime::Handle,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<()> {
    if let Some(cluster_config) = config.cluster.clone() {
        return cluster::run(config, cluster_config, api_runtime, shutdown).await;
    }
    let (job, data, retention) = (config.job.clone(), config.data.clone(), config.retention);
    let node = tokio::task::spawn_blocking(move || StreamNode::open(job, &data, retention))
        .await
        .step("opening the stream")??;
    let (stop_tx, stop_rx) = trawler_common::shutdown::channel();
    let api_task = start_api(&node, &config, &api_runtime, stop_rx.clone())?;

    let mut source_task = None;
    match &config.job.source {
        Source::Http => {}
        Source::File(path) => {
            let (node, path) = (node.clone(), path.clone());
            source_task = Some(tokio::task::spawn_blocking(move || {
                let started = std::time::Instant::now();
                let lines = read_file(&node, &path)?;
                let c = node.counters();
                tracing::info!(
                    file = %path.display(),
                    lines,
                    accepted = c.accepted.load(Ordering::Relaxed),
                    filtered = c.filtered.load(Ordering::Relaxed),
                    late = c.late.load(Ordering::Relaxed),
                    malformed = c.malformed.load(Ordering::Relaxed),
                    seconds = started.elapsed().as_secs_f64(),
                    "file done; every window is stored"
                );
                Ok::<_, crate::Error>(())
            }));
        }
        Source::Nats(settings) => {
            let (node, settings, rx) = (node.clone(), settings.clone(), stop_rx.clone());
            source_task = Some(tokio::spawn(async move {
                nats::consume(node, settings, rx).await
            }));
        }
    }

    tokio::pin!(shutdown);
    let serve_after = config.serve_after_file;
    let mut source_done = false;
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            r = async { source_task.as_mut().expect("a source").await }, if source_task.is_some() && !source_done => {
                source_done = true;
                match r {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => { stop_tx.trigger(); let _ = api_task.await; return Err(e) }
                    Err(e) => { stop_tx.trigger(); let _ = api_task.await; return Err(crate::Error::Step { step: "the stream's source".into(), source: e.to_string().into() }) }
                }
                if !serve_after && matches!(config.job.source, Source::File(_)) {
                    break;
                }
            }
        }
    }
    tracing::info!("shutting down");
    stop_tx.trigger();
    if let Core::Top { hub, .. } = &node.core {
        hub.close_all();
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), api_task).await;
    if let Some(store) = node.store() {
        tokio::task::spawn_blocking(move || store.sync())
            .await
            .step("syncing the store")?
            .step("syncing the store")?;
    }
    tracing::info!("stopped; every acknowledged event is durable");
    Ok(())
}

/// The stream job in `path`, when its `[job] kind` is `stream` (`None`
/// for a polling job). Errors name the file and key.
pub fn load_if_stream(path: &Path) -> Result<Option<Arc<StreamJob>>> {
    let text = std::fs::read_to_string(path).with_step(|| format!("reading {}", path.display()))?;
    let kind = toml::from_str::<toml::Value>(&text)
        .ok()
        .and_then(|v| v.get("job")?.get("kind")?.as_str().map(str::to_owned));
    if kind.as_deref() != Some("stream") {
        return Ok(None);
    }
    let file = path.display().to_string();
    let job = trawler_stream::StreamJobConfig::from_toml(&text, &file)
        .and_then(|c| c.build())
        .map_err(|e| crate::Error::Config(e.to_string()))?;
    Ok(Some(Arc::new(job)))
}
