//! The API's read model of a running job, on top of the [`Node`].
//!
//! Latest values, ranks and averages come from the live views (memory,
//! microseconds); series come from the store. A derived metric's series is
//! computed from its stored operands point by point — they share slot
//! timestamps — or bucket by bucket from their averages when a step is given.

use std::fmt::Write;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use serde_json::{json, Map, Value as Json};
use trawler_api::{ApiError, Backend, JobInfo, Points, SeriesQuery, TopBy, TrackOutcome};
use trawler_common::prom::{family, Kind};
use trawler_store::{Aggregate, Point};
use trawler_views::{Views, Window};

use crate::layout::{Layout, Term};
use crate::node::Node;

/// [`Backend`] over a [`Node`].
pub struct NodeBackend {
    node: Arc<Node>,
    names: Names,
}

impl NodeBackend {
    /// Wraps a node.
    pub fn new(node: Arc<Node>) -> Self {
        let names = Names::new(node.crawl.job(), &node.layout);
        Self { node, names }
    }
}

/// Formats unix ms as RFC 3339 with milliseconds.
pub fn rfc3339(ms: i64) -> Json {
    let Ok(ms) = u64::try_from(ms) else {
        return Json::Null;
    };
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    Json::String(humantime::format_rfc3339_millis(t).to_string())
}

/// How the API names a job's entities: its key (`pk`, a number or an
/// interned string) and label (`username`), and the job's other names
/// ([`JobInfo`]). Built once from the job file; shared by both modes.
#[derive(Debug, Clone)]
pub struct Names {
    job: trawler_crawl::Job,
    info: JobInfo,
}

impl Names {
    /// The names of `job`, whose metrics are laid out as `layout`.
    pub fn new(job: &trawler_crawl::Job, layout: &Layout) -> Self {
        let info = JobInfo {
            name: job.name().to_owned(),
            key_name: job.key_name().to_owned(),
            string_keys: job.keys().kind() == trawler_crawl::KeyKind::String,
            label_name: job.has_label().then(|| job.label_name().to_owned()),
            metrics: layout.series_names(),
            rank_metric: layout.views.rank_by.clone(),
            average: layout.average.clone(),
            flag: layout.flag.clone(),
        };
        Self {
            job: job.clone(),
            info,
        }
    }

    /// The job's names as the API describes them.
    pub fn info(&self) -> &JobInfo {
        &self.info
    }

    /// The id of a key (see [`Backend::key`]).
    pub fn key(&self, text: &str) -> Result<Option<u64>, ApiError> {
        self.job
            .keys()
            .parse(text)
            .map_err(|e| ApiError::bad_request("bad_key", e.to_string()))
    }

    /// The ids of keys, interning new string keys.
    pub fn intern(&self, keys: &[String]) -> Result<Vec<u64>, ApiError> {
        keys.iter()
            .map(|k| {
                self.job
                    .keys()
                    .intern(k)
                    .map_err(|e| ApiError::bad_request("bad_key", e.to_string()))
            })
            .collect()
    }

    /// An id's key as JSON.
    pub fn key_json(&self, id: u64) -> Json {
        self.job.keys().to_json(id)
    }

    /// `{pk, username}`: the head of every object naming an entity.
    pub fn object(&self, id: u64) -> Map<String, Json> {
        let mut out = Map::new();
        out.insert(self.info.key_name.clone(), self.key_json(id));
        if let Some(name) = &self.info.label_name {
            out.insert(
                name.clone(),
                self.job.label_for(id).map_or(Json::Null, Json::from),
            );
        }
        out
    }
}

/// An entity's latest view as the API's JSON object (nulls until its first
/// observation). Shared by the embedded and the cluster read models.
pub fn entity_json(views: &Views, names: &Names, id: u64) -> Map<String, Json> {
    let mut out = names.object(id);
    let flag = names.info.flag.as_deref();
    let schema = views.schema();
    match views.entity(id) {
        Some(e) => {
            for (m, (name, value)) in schema.metrics().iter().zip(&e.values).enumerate() {
                let value = match value {
                    Some(v) if schema.is_float(m) => number(trawler_views::decode_float(*v)),
                    Some(v) => json!(v),
                    None => Json::Null,
                };
                out.insert(name.clone(), value);
            }
            for ((name, _, _), ratio) in schema.ratios().iter().zip(&e.ratios) {
                out.insert(name.clone(), ratio.map(number).unwrap_or(Json::Null));
            }
            out.insert("rank".into(), json!(e.rank));
            if let Some(flag) = flag {
                out.insert(flag.into(), json!(e.suspicion.map(|s| s.suspicious)));
                out.insert(
                    format!("{flag}CheckedAt"),
                    e.suspicion
                        .map(|s| rfc3339(s.checked_at_ms))
                        .unwrap_or(Json::Null),
                );
            }
            out.insert("lastCrawledAt".into(), rfc3339(e.ts_ms));
        }
        None => {
            for name in schema.metrics() {
                out.insert(name.clone(), Json::Null);
            }
            for (name, _, _) in schema.ratios() {
                out.insert(name.clone(), Json::Null);
            }
            out.insert("rank".into(), Json::Null);
            if let Some(flag) = flag {
                out.insert(flag.into(), Json::Null);
                out.insert(format!("{flag}CheckedAt"), Json::Null);
            }
            out.insert("lastCrawledAt".into(), Json::Null);
        }
    }
    out
}

/// The statistics of the job's enrichment: how many entities are flagged
/// (`suspiciousCount`) and how far the current sweep is
/// (`lastSuspiciousSweepProgress`), when the job has one.
pub fn flag_stats(
    out: &mut Map<String, Json>,
    names: &Names,
    flagged: usize,
    enrich: Option<&trawler_enrich::EnrichHandle>,
) {
    let Some(flag) = names.info.flag.as_deref() else {
        return;
    };
    out.insert(format!("{flag}Count"), json!(flagged));
    let mut capital = flag.chars();
    let capital: String = capital
        .next()
        .map(|c| c.to_uppercase().chain(capital).collect())
        .unwrap_or_default();
    out.insert(
        format!("last{capital}SweepProgress"),
        enrich
            .map(|e| number(e.sweep_progress()))
            .unwrap_or(Json::Null),
    );
}

/// Points of `metric` of one entity: a stored metric read through
/// `stored(position in layout.stored)`, or a derived one computed point by
/// point from its operands (which share timestamps: slot times, or bucket
/// starts). Shared by the embedded and the cluster read models.
pub fn metric_points(
    layout: &Layout,
    metric: &str,
    mut stored: impl FnMut(usize) -> Result<Points, ApiError>,
) -> Result<Points, ApiError> {
    if let Some(pos) = layout.stored.iter().position(|s| s.name == metric) {
        return stored(pos);
    }
    let Some(derived) = layout.derived.iter().find(|d| d.name == metric) else {
        return Err(ApiError::bad_request(
            "bad_metric",
            format!("unknown metric {metric:?}"),
        ));
    };
    let mut operand = |t: Term| -> Result<Option<Points>, ApiError> {
        match t {
            Term::Stored(pos) => stored(pos).map(Some),
            Term::Const(_) => Ok(None),
        }
    };
    let (left, right) = (operand(derived.left)?, operand(derived.right)?);
    let value = |points: &Option<Points>, t: Term, i: usize| match (points, t) {
        (_, Term::Const(c)) => Some(c),
        (Some(p), _) => p.get(i).map(|x| x.1),
        (None, _) => None,
    };
    // Both operands share timestamps (slot times, or bucket starts):
    // walk the longer list and match the other by timestamp.
    let timeline: Vec<i64> = match (&left, &right) {
        (Some(p), _) | (None, Some(p)) => p.iter().map(|x| x.0).collect(),
        (None, None) => Vec::new(),
    };
    let index = |points: &Option<Points>| -> std::collections::HashMap<i64, usize> {
        points
            .iter()
            .flatten()
            .enumerate()
            .map(|(i, (t, _))| (*t, i))
            .collect()
    };
    let (li, ri) = (index(&left), index(&right));
    let mut out = Vec::with_capacity(timeline.len());
    for t in timeline {
        let l = li
            .get(&t)
            .map_or(value(&left, derived.left, usize::MAX), |&i| {
                value(&left, derived.left, i)
            });
        let r = ri
            .get(&t)
            .map_or(value(&right, derived.right, usize::MAX), |&i| {
                value(&right, derived.right, i)
            });
        if let (Some(l), Some(r)) = (l, r) {
            let v = derived.eval(l, r);
            if v.is_finite() {
                out.push((t, v));
            }
        }
    }
    Ok(out)
}

/// The first `limit` entities by the ranked metric, as the API's objects.
pub fn ranked_json(views: &Views, names: &Names, limit: usize) -> Vec<Map<String, Json>> {
    views
        .top(limit)
        .into_iter()
        .map(|r| {
            let mut o = names.object(r.id);
            o.insert(names.info.rank_metric.clone(), json!(r.value));
            o.insert("rank".into(), json!(r.rank));
            o
        })
        .collect()
}

/// The first `limit` entities by `by` from the views (rank, or the
/// movers: gain = latest − first value of the previous clock hour, or of the
/// clock hour 24 h before), in both modes.
pub fn top_json(views: &Views, names: &Names, by: TopBy, limit: usize) -> Vec<Map<String, Json>> {
    let movers = |movers: Vec<trawler_views::Mover>| {
        movers
            .into_iter()
            .map(|m| {
                let mut o = names.object(m.id);
                o.insert("gain".into(), json!(m.gain));
                o
            })
            .collect()
    };
    match by {
        TopBy::Ranked => ranked_json(views, names, limit),
        TopBy::Gain1h => movers(views.top_gainers(Window::Hour, limit)),
        TopBy::Gain24h => movers(views.top_gainers(Window::Day, limit)),
        TopBy::Loss1h => movers(views.top_losers(Window::Hour, limit)),
        TopBy::Loss24h => movers(views.top_losers(Window::Day, limit)),
    }
}

/// Ids the target reported invalid, after `after`, at most `limit`.
pub fn invalid_page(
    crawl: &trawler_crawl::CrawlHandle,
    after: Option<u64>,
    limit: usize,
) -> Vec<u64> {
    crawl
        .invalid_ids()
        .into_iter()
        .filter(|id| after.is_none_or(|a| *id > a))
        .take(limit)
        .collect()
}

/// Appends one-sample metrics labelled with the job, in Prometheus text.
/// `kind` is the `# TYPE` (`"counter"`, `"gauge"`); another name is
/// written as `untyped`.
pub fn write_metrics(out: &mut String, job: &str, metrics: &[(&str, &str, &str, u64)]) {
    for (name, help, kind, value) in metrics {
        let kind = Kind::from_name(kind).unwrap_or(Kind::Untyped);
        family(out, name, kind, help).sample(&[("job", job)], *value);
    }
}

fn storage_error(e: trawler_store::Error) -> ApiError {
    ApiError::Unavailable(format!("storage: {e}"))
}

fn number(v: f64) -> Json {
    serde_json::Number::from_f64(v)
        .map(Json::Number)
        .unwrap_or(Json::Null)
}

impl NodeBackend {
    fn stored_points(
        &self,
        series: trawler_store::SeriesId,
        q: SeriesQuery,
    ) -> Result<Points, ApiError> {
        let store = &self.node.store;
        Ok(match q.step_ms {
            None => store
                .range(series, q.from_ms, q.to_ms)
                .map_err(storage_error)?
                .into_iter()
                .map(|Point { ts_ms, value }| (ts_ms, value.as_f64()))
                .collect(),
            Some(step) => store
                .downsample(series, q.from_ms, q.to_ms, step)
                .map_err(storage_error)?
                .into_iter()
                .map(|a: Aggregate| (a.start_ms, a.avg()))
                .collect(),
        })
    }
}

impl Backend for NodeBackend {
    fn info(&self) -> &JobInfo {
        self.names.info()
    }

    fn key(&self, text: &str) -> Result<Option<u64>, ApiError> {
        self.names.key(text)
    }

    fn key_json(&self, id: u64) -> Json {
        self.names.key_json(id)
    }

    fn entity(&self, id: u64) -> Result<Option<Map<String, Json>>, ApiError> {
        let node = &self.node;
        if !node.crawl.is_tracked(id) {
            return Ok(None);
        }
        Ok(Some(entity_json(&node.views, &self.names, id)))
    }

    fn series(&self, id: u64, metric: &str, q: SeriesQuery) -> Result<Option<Points>, ApiError> {
        let node = &self.node;
        if !node.crawl.is_tracked(id) {
            return Ok(None);
        }
        let Some(series) = node
            .series
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .map(<[_]>::to_vec)
        else {
            return Ok(Some(Vec::new())); // tracked, not crawled yet
        };
        metric_points(&node.layout, metric, |pos| {
            self.stored_points(series[pos], q)
        })
        .map(Some)
    }

    fn track(&self, keys: &[String]) -> Result<TrackOutcome, ApiError> {
        let node = &self.node;
        let ids = self.names.intern(keys)?;
        let ids = ids.as_slice();
        let added = node.crawl.track(ids.iter().copied()) as u64;
        if let Some(enrich) = node.enrich() {
            enrich.track(ids.to_vec());
        }
        node.save_state().map_err(|e| {
            ApiError::Unavailable(format!("could not persist the tracked set: {e}"))
        })?;
        let distinct = ids.iter().collect::<std::collections::HashSet<_>>().len() as u64;
        Ok(TrackOutcome {
            added,
            already_tracked: distinct - added,
            tracked: node.crawl.tracked_count() as u64,
        })
    }

    fn untrack(&self, id: u64) -> Result<bool, ApiError> {
        let node = &self.node;
        if !node.crawl.untrack(id) {
            return Ok(false);
        }
        node.views.remove(&[id]);
        node.forget_references(&[id]);
        if let Some(enrich) = node.enrich() {
            enrich.untrack(id);
        }
        node.save_state().map_err(|e| {
            ApiError::Unavailable(format!("could not persist the tracked set: {e}"))
        })?;
        Ok(true)
    }

    fn stats(&self) -> Map<String, Json> {
        let node = &self.node;
        let crawl = node.crawl.metrics();
        let views = node.views.stats();
        let rank_by = node.views.schema().rank_by();
        let average = views.averages.get(rank_by);
        let mut out = Map::new();
        out.insert("trackedAccounts".into(), json!(crawl.gauges.tracked));
        out.insert("crawledAccounts".into(), json!(views.tracked));
        out.insert(
            node.layout.average.clone(),
            average
                .and_then(|a| a.mean())
                .map(number)
                .unwrap_or(Json::Null),
        );
        out.insert("averageCovers".into(), json!(average.map(|a| a.count)));
        out.insert("invalidAccounts".into(), json!(crawl.gauges.invalid));
        out.insert("pollsPerSecond".into(), number(crawl.polls_per_sec));
        out.insert(
            "lagP50Ms".into(),
            crawl.lag_p50_ms.map(number).unwrap_or(Json::Null),
        );
        out.insert(
            "lagP99Ms".into(),
            crawl.lag_p99_ms.map(number).unwrap_or(Json::Null),
        );
        out.insert("polls".into(), json!(crawl.polls_ok));
        out.insert(
            "errors".into(),
            json!(crawl.errors.iter().map(|(_, n)| n).sum::<u64>()),
        );
        out.insert("gaps".into(), json!(crawl.gaps));
        out.insert("missedSlots".into(), json!(crawl.missed_slots));
        let schedule = crawl.schedule;
        out.insert("behindSchedule".into(), json!(schedule.behind));
        out.insert(
            "intervalMs".into(),
            json!(node.crawl.job().interval().as_millis() as u64),
        );
        out.insert("neededPerSecond".into(), number(schedule.needed_per_sec));
        out.insert(
            "achievedPerSecond".into(),
            number(schedule.achieved_per_sec),
        );
        out.insert(
            "effectiveIntervalMs".into(),
            number(schedule.effective_interval_ms),
        );
        flag_stats(&mut out, &self.names, views.suspicious, node.enrich());
        let store = node.store.stats();
        out.insert("samplesStored".into(), json!(store.samples));
        out.insert("bytesOnDisk".into(), json!(store.bytes_on_disk));
        out.insert(
            "bytesPerSample".into(),
            if store.samples > 0 {
                number(store.bytes_on_disk as f64 / store.samples as f64)
            } else {
                Json::Null
            },
        );
        out
    }

    fn invalid(&self, after: Option<u64>, limit: usize) -> Vec<u64> {
        invalid_page(&self.node.crawl, after, limit)
    }

    fn top(&self, by: TopBy, limit: usize) -> Vec<Map<String, Json>> {
        top_json(&self.node.views, &self.names, by, limit)
    }

    fn flagged(&self, after: Option<u64>, limit: usize) -> Vec<u64> {
        self.node.views.suspicious(after, limit)
    }

    fn now_ms(&self) -> i64 {
        crate::now_ms()
    }

    fn average_series(&self, q: SeriesQuery) -> Result<Points, ApiError> {
        let node = &self.node;
        let job = crate::node::aggregates_job(&node.job);
        let metric = &node.layout.average;
        let series = node
            .store
            .list_series(&job)
            .into_iter()
            .find(|s| s.metric == *metric && s.entity == 0);
        match series {
            Some(s) => self.stored_points(s.id, q),
            None => Ok(Vec::new()),
        }
    }

    fn render_metrics(&self, out: &mut String) {
        let node = &self.node;
        out.push_str(&node.crawl.metrics().to_prometheus(&node.job));
        let s = node.store.stats();
        let job = &node.job;
        write_metrics(
            out,
            job,
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
                    node.counters.store_errors.load(Ordering::Relaxed),
                ),
                (
                    "trawler_ingest_queue_events",
                    "Crawl events waiting for ingest (sampled at each batch).",
                    "gauge",
                    node.counters.queued.load(Ordering::Relaxed),
                ),
                (
                    "trawler_ingest_queue_peak_events",
                    "Most crawl events ever waiting for ingest.",
                    "gauge",
                    node.counters.queued_peak.load(Ordering::Relaxed),
                ),
                (
                    "trawler_ingest_queue_capacity",
                    "Crawl events the buffer between crawl and ingest holds.",
                    "gauge",
                    node.counters.queue_capacity.load(Ordering::Relaxed),
                ),
                (
                    "trawler_views_memory_bytes",
                    "Memory the live views hold.",
                    "gauge",
                    node.views.memory().total() as u64,
                ),
                (
                    "trawler_views_references_memory_bytes",
                    "Memory the movers' hourly references hold.",
                    "gauge",
                    node.references_memory_bytes() as u64,
                ),
            ],
        );
        if s.samples > 0 {
            let _ = writeln!(
                out,
                "# HELP trawler_store_bytes_per_sample Bytes on disk per stored sample.\n# TYPE trawler_store_bytes_per_sample gauge\ntrawler_store_bytes_per_sample{{job=\"{job}\"}} {}",
                s.bytes_on_disk as f64 / s.samples as f64
            );
        }
        if let Some(enrich) = node.enrich() {
            let m = enrich.metrics();
            write_metrics(
                out,
                job,
                &[
                    (
                        "trawler_enrich_calls_total",
                        "Enrichment calls made.",
                        "counter",
                        m.calls,
                    ),
                    (
                        "trawler_enrich_answers_total",
                        "Enrichment answers received.",
                        "counter",
                        m.answers,
                    ),
                    (
                        "trawler_enrich_reused_total",
                        "Answers reused without a call.",
                        "counter",
                        m.reused,
                    ),
                    (
                        "trawler_enrich_retries_total",
                        "Enrichment calls retried.",
                        "counter",
                        m.retries,
                    ),
                    (
                        "trawler_enrich_failures_total",
                        "Checks failed after every retry.",
                        "counter",
                        m.failures,
                    ),
                    (
                        "trawler_enrich_in_flight",
                        "Enrichment calls in flight.",
                        "gauge",
                        m.in_flight,
                    ),
                    (
                        "trawler_enrich_put_off",
                        "Ids waiting for a later retry.",
                        "gauge",
                        m.put_off,
                    ),
                ],
            );
        }
    }
}
