//! One running job on this node: the crawl, the store, the live views and
//! the enrichment, and the ingest path that joins them.
//!
//! Events flow one way: the crawler sends observations into a bounded
//! channel; the ingest task takes them in batches, appends each batch to the
//! store (one WAL record, durable against `kill -9` when `append` returns)
//! and only then applies it to the views. So anything the API shows as
//! latest is already on disk, and a crash never loses an acknowledged sample.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use tokio::sync::mpsc;
use trawler_api::{ApiError, Figures, TrackOutcome};
use trawler_crawl::{CrawlHandle, Event, IdSet, Observation};
use trawler_enrich::{EnrichHandle, Verdict};
use trawler_store::{Store, Value};
use trawler_views::{HourlyFirsts, Reference, Row, Suspicion, Update, Views, HOURS};

use crate::layout::Layout;
use crate::state::StateFiles;
use crate::storage::embedded::EmbeddedStorage;
use crate::storage::{Reader, Writer};

pub use crate::storage::embedded::aggregates_job;

const HOUR_MS: i64 = 3_600_000;

/// Counters of the ingest path.
#[derive(Debug, Default)]
pub struct IngestCounters {
    /// Samples the store accepted.
    pub samples: AtomicU64,
    /// Batches that failed to append (their samples are lost and logged).
    pub store_errors: AtomicU64,
    /// Slots that ended in a gap.
    pub gaps: AtomicU64,
    /// Suspicion verdicts received.
    pub verdicts: AtomicU64,
    /// Crawl events waiting in the buffer before ingest, at the last batch.
    pub queued: AtomicU64,
    /// The most events ever seen waiting.
    pub queued_peak: AtomicU64,
    /// The buffer's capacity.
    pub queue_capacity: AtomicU64,
}

/// Everything a running job shares between its tasks and the API.
pub struct Node {
    /// The job's name.
    pub job: String,
    /// Metric layout.
    pub layout: Layout,
    /// The embedded store behind the storage seams.
    pub storage: Arc<EmbeddedStorage>,
    /// Live views.
    pub views: Views,
    /// The crawl.
    pub crawl: CrawlHandle,
    /// The enrichment, once started (it needs the node for its inputs).
    enrich: OnceLock<EnrichHandle>,
    /// Movers' references by entity, fed by ingest (no store reads on the
    /// ingest path) and restored from the store once at start-up.
    references: Mutex<HourlyFirsts>,
    /// The persisted tracked and invalid sets and key table.
    pub files: StateFiles,
    /// String keys in the saved key table (a new key saves it again).
    keys_saved: AtomicU64,
    /// Serialises writes of the state files.
    state_lock: Mutex<()>,
    /// Ingest counters.
    pub counters: IngestCounters,
    /// Set when the node cannot go on: the store refuses writes after a
    /// failed fsync, so every observation from now on would be lost.
    failed: tokio::sync::watch::Sender<Option<String>>,
}

impl Node {
    /// Assembles a node over `store`; series ids come from its catalog.
    pub fn new(
        job: String,
        layout: Layout,
        store: Arc<Store>,
        views: Views,
        crawl: CrawlHandle,
        files: StateFiles,
    ) -> Self {
        let keys_saved = AtomicU64::new(crawl.job().keys().len() as u64);
        let storage = Arc::new(EmbeddedStorage::new(&job, &layout, store));
        Self {
            job,
            layout,
            storage,
            views,
            crawl,
            enrich: OnceLock::new(),
            references: Mutex::new(HourlyFirsts::default()),
            files,
            keys_saved,
            state_lock: Mutex::new(()),
            counters: IngestCounters::default(),
            failed: tokio::sync::watch::channel(None).0,
        }
    }

    /// Why the node cannot go on, once it cannot: the store refuses writes
    /// after a failed fsync.
    pub fn failure(&self) -> tokio::sync::watch::Receiver<Option<String>> {
        self.failed.subscribe()
    }

    /// After a failed append: a store that refuses writes for good (a
    /// failed fsync) makes the node stop, instead of crawling into a store
    /// that loses everything.
    fn check_store(&self) {
        if let Some(why) = self.storage.refused() {
            if self.failed.borrow().is_none() {
                tracing::error!(error = %why, "the store refuses writes after a failed fsync; the node stops");
                self.failed.send_replace(Some(why));
            }
        }
    }

    /// Attaches the enrichment.
    pub fn set_enrich(&self, handle: EnrichHandle) {
        let _ = self.enrich.set(handle);
    }

    /// The enrichment, if running.
    pub fn enrich(&self) -> Option<&EnrichHandle> {
        self.enrich.get()
    }

    /// Appends a batch of crawl events to the store, then to the views.
    pub fn ingest(&self, events: &[Event]) {
        let observations: Vec<&Observation> = events
            .iter()
            .filter_map(|e| match e {
                Event::Observation(o) => Some(o),
                _ => None,
            })
            .collect();
        if !observations.is_empty() {
            match self.storage.append(&observations) {
                Ok(accepted) => {
                    self.counters.samples.fetch_add(accepted, Ordering::Relaxed);
                }
                Err(e) => {
                    self.counters.store_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(error = %e, observations = observations.len(), "store append failed; batch not acknowledged");
                    self.check_store();
                    return;
                }
            }
        }
        let rows: Vec<(u64, i64)> = observations.iter().map(|o| (o.id, o.slot_ms)).collect();
        let viewed = &self.layout.viewed;
        if let Err(e) = apply_to_views(
            &self.views,
            &self.layout,
            &self.references,
            &rows,
            |n, slot| Some(observations[n].values[viewed[slot]]),
        ) {
            tracing::error!(error = %e, "views rejected a batch");
        }
        let mut invalid = Vec::new();
        for event in events {
            match event {
                Event::Gap(_) => {
                    self.counters.gaps.fetch_add(1, Ordering::Relaxed);
                }
                Event::Invalid { id } => invalid.push(*id),
                _ => {}
            }
        }
        if !invalid.is_empty() {
            self.views.remove(&invalid);
            if let Some(enrich) = self.enrich.get() {
                for id in &invalid {
                    enrich.untrack(*id);
                }
            }
            self.forget_references(&invalid);
            if let Err(e) = self.save_state() {
                tracing::error!(error = %e, "could not persist the invalid ids");
            }
        }
    }

    /// Drops the references of entities no longer tracked.
    pub fn forget_references(&self, ids: &[u64]) {
        let mut firsts = self.references.lock().unwrap_or_else(|e| e.into_inner());
        for id in ids {
            firsts.remove(*id);
        }
    }

    /// Heap bytes of the movers' references, for `/metrics`.
    pub fn references_memory_bytes(&self) -> usize {
        self.references
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .memory_bytes()
    }

    /// Restores the movers' references from the store's hourly rollups
    /// once at start-up (see [`restore_references`]).
    pub fn restore_references(&self, now_ms: i64) -> usize {
        restore_references(&*self.storage, &self.references, now_ms, |id| {
            self.crawl.is_tracked(id)
        })
    }

    /// Appends the current average of the ranked metric to its history.
    pub fn record_average(&self, ts_ms: i64) {
        let stats = self.views.stats();
        let Some(mean) = stats
            .averages
            .get(self.views.schema().rank_by())
            .and_then(|a| a.mean())
        else {
            return;
        };
        if let Err(e) = self.storage.append_average(ts_ms, mean) {
            tracing::error!(error = %e, "could not store the average");
        }
    }

    /// Records the enrichment's answers in the store (one point per check,
    /// so the answer and when it was checked survive a restart; a constant
    /// series costs next to nothing) and then in the views.
    pub fn record_verdicts(&self, verdicts: &[Verdict]) {
        self.counters
            .verdicts
            .fetch_add(verdicts.len() as u64, Ordering::Relaxed);
        if let Err(e) = self.storage.append_flags(verdicts) {
            tracing::error!(error = %e, "could not store the enrichment's answers");
            self.counters.store_errors.fetch_add(1, Ordering::Relaxed);
            self.check_store();
            return;
        }
        let checks: Vec<(u64, Suspicion)> = verdicts
            .iter()
            .map(|v| {
                (
                    v.id,
                    Suspicion {
                        suspicious: v.value,
                        checked_at_ms: v.checked_at_ms,
                    },
                )
            })
            .collect();
        self.views.apply_suspicion(&checks);
    }

    /// Writes the tracked and invalid sets to their files.
    pub fn save_state(&self) -> crate::Result<()> {
        let _guard = self.state_lock.lock().unwrap_or_else(|e| e.into_inner());
        // The key table first: a saved tracked set never names an id the
        // table does not number.
        let keys = self.crawl.job().keys();
        if keys.len() as u64 != self.keys_saved.load(Ordering::Relaxed) {
            let names = keys.names();
            self.files.keys.save(&names)?;
            self.keys_saved.store(names.len() as u64, Ordering::Relaxed);
        }
        self.files.tracked.save(&self.crawl.tracked_ids())?;
        self.files
            .invalid
            .save(&self.crawl.invalid_ids().into_iter().collect())?;
        Ok(())
    }
}

impl crate::backend::Host for Node {
    fn views(&self) -> &Views {
        &self.views
    }

    fn layout(&self) -> &Layout {
        &self.layout
    }

    fn is_tracked(&self, id: u64) -> bool {
        self.crawl.is_tracked(id)
    }

    fn tracked_ids(&self) -> IdSet {
        self.crawl.tracked_ids()
    }

    fn track(&self, ids: &[u64]) -> Result<TrackOutcome, ApiError> {
        let added = self.crawl.track(ids.iter().copied()) as u64;
        if let Some(enrich) = self.enrich() {
            enrich.track(ids.to_vec());
        }
        self.save_state().map_err(|e| {
            ApiError::Unavailable(format!("could not persist the tracked set: {e}"))
        })?;
        let distinct = ids.iter().collect::<std::collections::HashSet<_>>().len() as u64;
        Ok(TrackOutcome {
            added,
            already_tracked: distinct - added,
            tracked: self.crawl.tracked_count() as u64,
        })
    }

    fn untrack(&self, id: u64) -> Result<bool, ApiError> {
        if !self.crawl.untrack(id) {
            return Ok(false);
        }
        self.views.remove(&[id]);
        self.forget_references(&[id]);
        if let Some(enrich) = self.enrich() {
            enrich.untrack(id);
        }
        self.save_state().map_err(|e| {
            ApiError::Unavailable(format!("could not persist the tracked set: {e}"))
        })?;
        Ok(true)
    }

    fn invalid(&self, after: Option<u64>, limit: usize) -> Vec<u64> {
        crate::backend::invalid_page(&self.crawl, after, limit)
    }

    fn stats(&self, out: &mut Figures) {
        let crawl = self.crawl.metrics();
        out.tracked_accounts = crawl.gauges.tracked;
        out.invalid_accounts = crawl.gauges.invalid;
        crate::backend::crawl_stats(out, &crawl, self.crawl.job().interval());
        let store = self.storage.store().stats();
        out.samples_stored = store.samples;
        out.bytes_on_disk = Some(store.bytes_on_disk);
        out.bytes_per_sample =
            (store.samples > 0).then(|| store.bytes_on_disk as f64 / store.samples as f64);
    }

    fn render_metrics(&self, out: &mut String) {
        out.push_str(&self.crawl.metrics().to_prometheus(&self.job));
        let s = self.storage.store().stats();
        let c = &self.counters;
        crate::backend::write_metrics(
            out,
            &self.job,
            &[
                (
                    "trawler_store_bytes_on_disk",
                    "Bytes the store holds on disk.",
                    "gauge",
                    s.bytes_on_disk,
                ),
                (
                    "trawler_store_block_bytes",
                    "Bytes in compressed blocks.",
                    "gauge",
                    s.block_bytes,
                ),
                (
                    "trawler_store_wal_bytes",
                    "Bytes in write-ahead log segments.",
                    "gauge",
                    s.wal_bytes,
                ),
                (
                    "trawler_store_samples",
                    "Samples stored.",
                    "gauge",
                    s.samples,
                ),
                (
                    "trawler_store_head_samples",
                    "Samples in the in-memory head.",
                    "gauge",
                    s.head_samples,
                ),
                (
                    "trawler_store_series",
                    "Series in the catalog.",
                    "gauge",
                    s.series,
                ),
                (
                    "trawler_store_memory_bytes",
                    "Memory the store holds.",
                    "gauge",
                    s.memory_bytes,
                ),
                ("trawler_store_blocks", "Live blocks.", "gauge", s.blocks),
                (
                    "trawler_store_flushes_total",
                    "Heads written as blocks.",
                    "counter",
                    s.flushes,
                ),
                (
                    "trawler_store_compactions_total",
                    "Compactions run.",
                    "counter",
                    s.compactions,
                ),
                (
                    "trawler_store_corrupt_blocks",
                    "Blocks that failed their checksum.",
                    "gauge",
                    s.corrupt_blocks,
                ),
                (
                    "trawler_store_stale_samples_total",
                    "Samples dropped as stale.",
                    "counter",
                    s.stale_samples,
                ),
                (
                    "trawler_ingest_store_errors_total",
                    "Batches the store refused.",
                    "counter",
                    c.store_errors.load(Ordering::Relaxed),
                ),
                (
                    "trawler_ingest_queue_events",
                    "Crawl events waiting for ingest (sampled at each batch).",
                    "gauge",
                    c.queued.load(Ordering::Relaxed),
                ),
                (
                    "trawler_ingest_queue_peak_events",
                    "Most crawl events ever waiting for ingest.",
                    "gauge",
                    c.queued_peak.load(Ordering::Relaxed),
                ),
                (
                    "trawler_ingest_queue_capacity",
                    "Crawl events the buffer between crawl and ingest holds.",
                    "gauge",
                    c.queue_capacity.load(Ordering::Relaxed),
                ),
                (
                    "trawler_views_references_memory_bytes",
                    "Memory the movers' hourly references hold.",
                    "gauge",
                    self.references_memory_bytes() as u64,
                ),
            ],
        );
        if s.samples > 0 {
            use trawler_common::prom::{family, Kind};
            family(
                out,
                "trawler_store_bytes_per_sample",
                Kind::Gauge,
                "Bytes on disk per stored sample.",
            )
            .sample(
                &[("job", &self.job)],
                s.bytes_on_disk as f64 / s.samples as f64,
            );
        }
    }

    fn enrich(&self) -> Option<&EnrichHandle> {
        self.enrich.get()
    }
}

/// Applies a batch to the views, the same in both modes: row `n` of `rows`
/// is `(id, slot time)`, and `value(n, slot)` its value of the views'
/// `slot`-th metric (`None` or not finite: no value), converted as the
/// views hold it. Each row's movers' reference comes from memory
/// (`references`), fed by this very batch: no store read on the way in.
pub fn apply_to_views(
    views: &Views,
    layout: &Layout,
    references: &Mutex<HourlyFirsts>,
    rows: &[(u64, i64)],
    value: impl Fn(usize, usize) -> Option<f64>,
) -> Result<trawler_views::Applied, trawler_views::ViewsError> {
    let width = layout.viewed.len();
    let rank = views.schema().rank_by();
    let finite = |n: usize, slot: usize| value(n, slot).filter(|v| v.is_finite());
    let references: Vec<Reference> = {
        let mut firsts = references.lock().unwrap_or_else(|e| e.into_inner());
        rows.iter()
            .enumerate()
            .map(|(n, &(id, ts))| firsts.observe(id, ts, finite(n, rank).map(|v| v as i64)))
            .collect()
    };
    let mut values = Vec::with_capacity(rows.len() * width);
    for n in 0..rows.len() {
        values.extend(
            (0..width).map(|slot| finite(n, slot).and_then(|v| layout.view_value(slot, v))),
        );
    }
    let updates: Vec<Update> = rows
        .iter()
        .zip(references)
        .enumerate()
        .map(|(n, (&(id, ts_ms), reference))| Update {
            id,
            ts_ms,
            values: &values[n * width..(n + 1) * width],
            reference,
        })
        .collect();
    views.apply(&updates)
}

/// Restores the movers' references from `reader` once at start-up: the
/// first value of the ranked metric in each of the last [`HOURS`] clock
/// hours up to `now_ms`'s (the embedded store's hourly rollups, or
/// VictoriaMetrics' `first_over_time`), beside the crawl: ingest (or the
/// stream) fills the hours it sees meanwhile, and the stored first value of
/// an hour (older) replaces it. Until an entity is restored its movers may
/// lack a reference (it is left out of them for that observation). Returns
/// the entities restored; the same in both modes.
pub fn restore_references(
    reader: &dyn Reader,
    references: &Mutex<HourlyFirsts>,
    now_ms: i64,
    is_tracked: impl Fn(u64) -> bool,
) -> usize {
    let hour = now_ms.div_euclid(HOUR_MS) * HOUR_MS;
    let from = hour - (HOURS as i64 - 1) * HOUR_MS;
    let mut restored = std::collections::HashSet::new();
    // In chunks, so ingest never waits long on the references' lock.
    let mut chunk: Vec<(u64, i64, i64)> = Vec::with_capacity(4_096);
    let flush = |chunk: &mut Vec<(u64, i64, i64)>,
                 restored: &mut std::collections::HashSet<u64>| {
        let mut firsts = references.lock().unwrap_or_else(|e| e.into_inner());
        for (entity, start, v) in chunk.drain(..) {
            if is_tracked(entity) {
                firsts.restore(entity, start, v);
                restored.insert(entity);
            }
        }
    };
    let result = reader.hourly_firsts(from, hour + HOUR_MS, &mut |entity, start, v| {
        chunk.push((entity, start, v));
        if chunk.len() == chunk.capacity() {
            flush(&mut chunk, &mut restored);
        }
    });
    flush(&mut chunk, &mut restored);
    if let Err(e) = result {
        tracing::warn!(error = %e, "the movers' references were not all restored");
    }
    restored.len()
}

/// The job's enrichment (its first `[[enrichment]]`), each entity asked
/// once per `period` if given (`--enrichment-period`) or the job file's
/// period; `None` when the job has none. The same in both modes, which
/// differ only in where answers go.
pub fn job_enrichment(
    job: &trawler_crawl::Job,
    period: Option<std::time::Duration>,
) -> crate::Result<Option<trawler_enrich::Enrichment>> {
    use crate::error::Step;
    let Some(spec) = job.enrichments().first() else {
        return Ok(None);
    };
    let mut config = trawler_enrich::EnrichConfig::from(spec);
    if let Some(period) = period {
        config.period = period;
    }
    config
        .build()
        .with_step(|| format!("the {} enrichment", spec.name))
        .map(Some)
}

/// Rebuilds the views from the store's latest values of tracked ids.
pub fn rebuild_views(
    store: &Store,
    views: &Views,
    layout: &Layout,
    job: &str,
    tracked: &IdSet,
) -> crate::Result<usize> {
    let stored = &layout.stored;
    let viewed: Vec<usize> = layout
        .viewed
        .iter()
        .map(|index| {
            stored
                .iter()
                .position(|s| s.index == *index)
                .unwrap_or(usize::MAX)
        })
        .collect();
    /// Per entity: newest timestamp, viewed values, last suspicion check.
    type Latest = (i64, Vec<Option<i64>>, Option<Suspicion>);
    let mut latest: HashMap<u64, Latest> = HashMap::new();
    store
        .for_each_latest(job, |entry| {
            if !tracked.contains(entry.entity) {
                return;
            }
            let row = latest
                .entry(entry.entity)
                .or_insert_with(|| (i64::MIN, vec![None; viewed.len()], None));
            if layout.flag.as_deref() == Some(entry.metric) {
                row.2 = Some(Suspicion {
                    suspicious: entry.point.value.as_f64() != 0.0,
                    checked_at_ms: entry.point.ts_ms,
                });
                return;
            }
            let Some(pos) = stored.iter().position(|s| s.name == entry.metric) else {
                return;
            };
            if let Some(slot) = viewed.iter().position(|&v| v == pos) {
                row.1[slot] = match entry.point.value {
                    Value::Int(v) => Some(v),
                    Value::Float(v) => layout.view_value(slot, v),
                };
                row.0 = row.0.max(entry.point.ts_ms);
            }
        })
        .map_err(|e| crate::Error::Step {
            step: "reading the latest values from the store".into(),
            source: e.into(),
        })?;
    let rows = latest
        .iter()
        .filter(|(_, r)| r.0 != i64::MIN)
        .map(|(id, (ts, values, s))| Row {
            update: Update {
                id: *id,
                ts_ms: *ts,
                values,
                reference: Reference::default(),
            },
            suspicion: *s,
        });
    views.rebuild(rows).map_err(|e| crate::Error::Step {
        step: "rebuilding the live views".into(),
        source: e.into(),
    })
}

/// Drains crawl events into the node until the crawl's channel closes.
pub async fn ingest_events(node: Arc<Node>, mut events: mpsc::Receiver<Event>) {
    let mut batch = Vec::with_capacity(8_192);
    let counters = &node.counters;
    counters
        .queue_capacity
        .store(events.max_capacity() as u64, Ordering::Relaxed);
    while events.recv_many(&mut batch, 8_192).await > 0 {
        let queued = events.len() as u64;
        counters.queued.store(queued, Ordering::Relaxed);
        counters.queued_peak.fetch_max(queued, Ordering::Relaxed);
        // Appending may wait on the disk: keep it off the async workers'
        // queue without a thread hop per batch.
        tokio::task::block_in_place(|| node.ingest(&batch));
        batch.clear();
    }
}

/// Appends the average to its history once per `every`, on the minute grid.
pub async fn record_averages(node: Arc<Node>, every: std::time::Duration) {
    let every_ms = every.as_millis().max(1) as i64;
    loop {
        let now = crate::now_ms();
        let next = (now.div_euclid(every_ms) + 1) * every_ms;
        tokio::time::sleep(std::time::Duration::from_millis((next - now) as u64)).await;
        let node = node.clone();
        let _ = tokio::task::spawn_blocking(move || node.record_average(next)).await;
    }
}

/// Drains enrichment verdicts into the node.
pub async fn ingest_verdicts(node: Arc<Node>, mut verdicts: mpsc::Receiver<Verdict>) {
    let mut batch = Vec::with_capacity(1_024);
    while verdicts.recv_many(&mut batch, 1_024).await > 0 {
        tokio::task::block_in_place(|| node.record_verdicts(&batch));
        batch.clear();
    }
}

/// An enrichment's request bodies, from the job's body template and each
/// entity's latest values in the views.
pub struct EnrichmentInputs {
    node: Arc<Node>,
}

impl EnrichmentInputs {
    /// Inputs read from `node`'s views.
    pub fn new(node: Arc<Node>) -> Self {
        Self { node }
    }
}

impl trawler_enrich::Inputs for EnrichmentInputs {
    fn body(&self, id: u64) -> Option<Vec<u8>> {
        enrichment_body(self.node.crawl.job(), &self.node.views, id)
    }
}

/// The body of `job`'s enrichment for `id` (see
/// [`trawler_crawl::job::BodyPart`]), or `None` before the entity's first
/// observation of a metric the body names (and for a job without
/// enrichment).
pub fn enrichment_body(job: &trawler_crawl::Job, views: &Views, id: u64) -> Option<Vec<u8>> {
    use trawler_crawl::job::BodyPart;
    let spec = job.enrichments().first()?;
    let entity = views.entity(id)?;
    let schema = views.schema();
    let mut body = serde_json::Map::new();
    for (member, part) in &spec.body {
        let value = match part {
            BodyPart::Key => job.keys().to_json(id),
            BodyPart::Label => match job.label_for(id) {
                Some(label) => label.into(),
                None => continue,
            },
            BodyPart::Metric(index) => {
                let slot = schema.metric(&job.metrics()[*index].name)?;
                (*entity.values.get(slot)?)?.into()
            }
            BodyPart::Text(text) => text.as_str().into(),
        };
        body.insert(member.clone(), value);
    }
    serde_json::to_vec(&body).ok()
}
