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
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use tokio::sync::mpsc;
use trawler_crawl::{CrawlHandle, Event, IdSet, Observation};
use trawler_enrich::{EnrichHandle, Verdict};
use trawler_store::{Resolution, Sample, SeriesId, SeriesKey, Store, Value, ValueKind};
use trawler_views::{HourlyFirsts, Reference, Row, Suspicion, Update, Views, HOURS};

use crate::layout::Layout;
use crate::state::StateFiles;

/// The job-level series (the average's history) live under this job name,
/// entity 0, so they never collide with an entity's series.
pub fn aggregates_job(job: &str) -> String {
    format!("{job}:aggregates")
}

const HOUR_MS: i64 = 3_600_000;

/// Series ids of each entity, in [`Layout::stored`] order, created on first
/// sight. A flat vector indexed through a map keeps it to ~24 bytes per
/// entity plus 8 per series.
#[derive(Debug, Default)]
pub struct SeriesTable {
    offsets: HashMap<u64, u32>,
    ids: Vec<SeriesId>,
    per_entity: usize,
}

impl SeriesTable {
    fn new(per_entity: usize) -> Self {
        Self {
            per_entity,
            ..Self::default()
        }
    }

    /// The series of `entity`, if it has any.
    pub fn get(&self, entity: u64) -> Option<&[SeriesId]> {
        let at = *self.offsets.get(&entity)? as usize * self.per_entity;
        Some(&self.ids[at..at + self.per_entity])
    }

    fn insert(&mut self, entity: u64, series: &[SeriesId]) {
        let offset = (self.ids.len() / self.per_entity) as u32;
        self.offsets.insert(entity, offset);
        self.ids.extend_from_slice(series);
    }
}

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
    /// The embedded store.
    pub store: Arc<Store>,
    /// Live views.
    pub views: Views,
    /// The crawl.
    pub crawl: CrawlHandle,
    /// The enrichment, once started (it needs the node for its inputs).
    enrich: OnceLock<EnrichHandle>,
    /// Series ids by entity.
    pub series: RwLock<SeriesTable>,
    /// Series of the enrichment's answers by entity.
    flag_series: Mutex<HashMap<u64, SeriesId>>,
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
    /// Assembles a node; series ids come from the store's catalog.
    pub fn new(
        job: String,
        layout: Layout,
        store: Arc<Store>,
        views: Views,
        crawl: CrawlHandle,
        files: StateFiles,
    ) -> Self {
        let keys_saved = AtomicU64::new(crawl.job().keys().len() as u64);
        let mut table = SeriesTable::new(layout.stored.len());
        let mut flags = HashMap::new();
        let mut partial: HashMap<u64, Vec<Option<SeriesId>>> = HashMap::new();
        for info in store.list_series(&job) {
            if layout.flag.as_deref() == Some(info.metric.as_str()) {
                flags.insert(info.entity, info.id);
            } else if let Some(pos) = layout.stored.iter().position(|s| s.name == info.metric) {
                partial
                    .entry(info.entity)
                    .or_insert_with(|| vec![None; layout.stored.len()])[pos] = Some(info.id);
            }
        }
        for (entity, ids) in partial {
            if let Some(ids) = ids.into_iter().collect::<Option<Vec<_>>>() {
                table.insert(entity, &ids);
            }
        }
        Self {
            job,
            layout,
            store,
            views,
            crawl,
            enrich: OnceLock::new(),
            series: RwLock::new(table),
            flag_series: Mutex::new(flags),
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
        if let Some(why) = self.store.poisoned() {
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
        let stored = &self.layout.stored;
        let observations: Vec<&Observation> = events
            .iter()
            .filter_map(|e| match e {
                Event::Observation(o) => Some(o),
                _ => None,
            })
            .collect();
        self.ensure_series(observations.iter().map(|o| o.id));
        let mut samples = Vec::with_capacity(observations.len() * stored.len());
        {
            let table = self.series.read().unwrap_or_else(|e| e.into_inner());
            for o in &observations {
                let Some(ids) = table.get(o.id) else { continue };
                for (s, series) in stored.iter().zip(ids) {
                    let v = o.values[s.index];
                    if v.is_nan() {
                        continue;
                    }
                    let value = match s.kind {
                        ValueKind::Int => Value::Int(v as i64),
                        ValueKind::Float => Value::Float(v),
                    };
                    samples.push(Sample {
                        series: *series,
                        ts_ms: o.slot_ms,
                        value,
                    });
                }
            }
        }
        if !samples.is_empty() {
            match self.store.append(&samples) {
                Ok(appended) => {
                    self.counters
                        .samples
                        .fetch_add(appended.accepted as u64, Ordering::Relaxed);
                }
                Err(e) => {
                    self.counters.store_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(error = %e, samples = samples.len(), "store append failed; batch not acknowledged");
                    self.check_store();
                    return;
                }
            }
        }
        let mut values = Vec::with_capacity(observations.len() * self.layout.viewed.len());
        for o in &observations {
            values.extend(
                self.layout
                    .viewed
                    .iter()
                    .enumerate()
                    .map(|(slot, &i)| self.layout.view_value(slot, o.values[i])),
            );
        }
        let width = self.layout.viewed.len();
        let references = self.references(&observations);
        let updates: Vec<Update> = observations
            .iter()
            .zip(references)
            .enumerate()
            .map(|(n, (o, reference))| Update {
                id: o.id,
                ts_ms: o.slot_ms,
                values: &values[n * width..(n + 1) * width],
                reference,
            })
            .collect();
        if let Err(e) = self.views.apply(&updates) {
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

    /// The movers' references of each observation, from memory.
    fn references(&self, observations: &[&Observation]) -> Vec<Reference> {
        let rank = self.layout.stored[self.layout.rank_stored].index;
        let mut firsts = self.references.lock().unwrap_or_else(|e| e.into_inner());
        observations
            .iter()
            .map(|o| {
                let v = o.values[rank];
                firsts.observe(o.id, o.slot_ms, (!v.is_nan()).then_some(v as i64))
            })
            .collect()
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

    /// Restores the movers' references from the store's hourly rollups of
    /// the last [`HOURS`] clock hours up to `now_ms`'s, once at start-up and
    /// beside the crawl: ingest fills the hours it sees meanwhile, and the
    /// store's first value of an hour (older) replaces ingest's. Until an
    /// entity is restored its movers may lack a reference (it is left out
    /// of them for that observation). Returns the entities restored.
    pub fn restore_references(&self, now_ms: i64) -> usize {
        let hour = now_ms.div_euclid(HOUR_MS) * HOUR_MS;
        let from = hour - (HOURS as i64 - 1) * HOUR_MS;
        let rank = self.layout.rank_stored;
        let entities: Vec<(u64, SeriesId)> = {
            let table = self.series.read().unwrap_or_else(|e| e.into_inner());
            table
                .offsets
                .keys()
                .filter_map(|&e| table.get(e).map(|ids| (e, ids[rank])))
                .collect()
        };
        let mut restored = 0;
        for chunk in entities.chunks(1_024) {
            let read: Vec<(u64, Vec<(i64, i64)>)> = chunk
                .iter()
                .filter_map(|&(entity, series)| {
                    let rollups = self
                        .store
                        .rollups(series, from, hour + HOUR_MS, Resolution::Hour)
                        .ok()?;
                    let firsts = rollups
                        .iter()
                        .map(|r| match r.first {
                            Value::Int(v) => (r.start_ms, v),
                            Value::Float(v) => (r.start_ms, v as i64),
                        })
                        .collect();
                    Some((entity, firsts))
                })
                .collect();
            let mut firsts = self.references.lock().unwrap_or_else(|e| e.into_inner());
            for (entity, hours) in read {
                if !self.crawl.is_tracked(entity) {
                    continue;
                }
                restored += usize::from(!hours.is_empty());
                for (start, v) in hours {
                    firsts.restore(entity, start, v);
                }
            }
        }
        restored
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
        let job = aggregates_job(&self.job);
        let key = SeriesKey {
            job: &job,
            entity: 0,
            metric: &self.layout.average,
        };
        let result = self.store.series(key, ValueKind::Float).and_then(|series| {
            self.store.append(&[Sample {
                series,
                ts_ms,
                value: Value::Float(mean),
            }])
        });
        if let Err(e) = result {
            tracing::error!(error = %e, "could not store the average");
        }
    }

    /// Creates the series of entities seen for the first time, in one
    /// catalog batch.
    fn ensure_series(&self, entities: impl Iterator<Item = u64>) {
        let missing: Vec<u64> = {
            let table = self.series.read().unwrap_or_else(|e| e.into_inner());
            entities.filter(|id| table.get(*id).is_none()).collect()
        };
        if missing.is_empty() {
            return;
        }
        let keys: Vec<(SeriesKey, ValueKind)> = missing
            .iter()
            .flat_map(|&entity| {
                self.layout.stored.iter().map(move |s| {
                    (
                        SeriesKey {
                            job: &self.job,
                            entity,
                            metric: &s.name,
                        },
                        s.kind,
                    )
                })
            })
            .collect();
        match self.store.series_batch(&keys) {
            Ok(ids) => {
                let mut table = self.series.write().unwrap_or_else(|e| e.into_inner());
                for (entity, chunk) in missing.iter().zip(ids.chunks(self.layout.stored.len())) {
                    if table.get(*entity).is_none() {
                        table.insert(*entity, chunk);
                    }
                }
            }
            Err(e) => tracing::error!(error = %e, "could not create series"),
        }
    }

    /// Records the enrichment's answers in the store (one point per check,
    /// so the answer and when it was checked survive a restart; a constant
    /// series costs next to nothing) and then in the views.
    pub fn record_verdicts(&self, verdicts: &[Verdict]) {
        self.counters
            .verdicts
            .fetch_add(verdicts.len() as u64, Ordering::Relaxed);
        let Some(flag) = self.layout.flag.as_deref() else {
            return;
        };
        let mut samples = Vec::new();
        let mut series = self.flag_series.lock().unwrap_or_else(|e| e.into_inner());
        for v in verdicts {
            let id = match series.get(&v.id) {
                Some(id) => *id,
                None => {
                    let key = SeriesKey {
                        job: &self.job,
                        entity: v.id,
                        metric: flag,
                    };
                    match self.store.series(key, ValueKind::Int) {
                        Ok(id) => *series.entry(v.id).or_insert(id),
                        Err(e) => {
                            tracing::error!(error = %e, metric = flag, "could not create an enrichment series");
                            continue;
                        }
                    }
                }
            };
            samples.push(Sample {
                series: id,
                ts_ms: v.checked_at_ms,
                value: Value::Int(v.value as i64),
            });
        }
        drop(series);
        if !samples.is_empty() {
            if let Err(e) = self.store.append(&samples) {
                tracing::error!(error = %e, metric = flag, "could not store the enrichment's answers");
                self.counters.store_errors.fetch_add(1, Ordering::Relaxed);
                self.check_store();
                return;
            }
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
