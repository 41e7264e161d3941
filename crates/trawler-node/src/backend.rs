//! The API's read model of a running job, the same in both modes.
//!
//! Latest values, ranks, top and movers come from the live views (memory,
//! microseconds); series come through the storage [`Reader`] (the embedded
//! store or VictoriaMetrics). A derived metric's series is computed from its
//! stored operands point by point — they share slot timestamps — or bucket
//! by bucket from their averages when a step is given. What differs between
//! the modes (tracking, their own figures) is behind [`Host`].

use std::sync::Arc;

use serde_json::{Number, Value as Json};
use trawler_api::{
    ApiError, Backend, Entity, EntityRef, Figures, JobInfo, Mover, Points, RankedEntry,
    SeriesQuery, Stats, TopBy, TopEntries, TrackOutcome,
};
use trawler_common::prom::{family, Kind};
use trawler_views::{Views, Window};

use crate::layout::{Layout, Term};
use crate::storage::{Reader, StorageError};

/// What the read model needs from the mode it runs in (the embedded
/// [`crate::node::Node`] or a cluster node): its views, which entities it
/// tracks and how to change that, and its own figures. Everything else —
/// names, latest values, rank, top, movers, series through a [`Reader`] —
/// is answered the same in both modes by [`NodeBackend`].
pub trait Host: Send + Sync + 'static {
    /// The live views.
    fn views(&self) -> &Views;
    /// The job's metric layout.
    fn layout(&self) -> &Layout;
    /// Whether `id` is tracked (an untracked entity is a 404).
    fn is_tracked(&self, id: u64) -> bool;
    /// Every tracked id (PromQL selectors without a key list them).
    fn tracked_ids(&self) -> trawler_crawl::IdSet;
    /// Starts tracking ids (persisted before it returns).
    fn track(&self, ids: &[u64]) -> Result<TrackOutcome, ApiError>;
    /// Stops tracking an id; `false` when it was not tracked.
    fn untrack(&self, id: u64) -> Result<bool, ApiError>;
    /// Ids the target reported as not found, after `after`, at most `limit`.
    fn invalid(&self, after: Option<u64>, limit: usize) -> Vec<u64>;
    /// The mode's own figures (crawl or cluster, store) into the stats.
    fn stats(&self, out: &mut Figures);
    /// The mode's own metrics, in Prometheus text.
    fn render_metrics(&self, out: &mut String);
    /// The enrichment, if running.
    fn enrich(&self) -> Option<&trawler_enrich::EnrichHandle>;
}

/// The API's read model: one [`Backend`] for both modes, over a [`Host`]
/// and a [`Reader`].
pub struct NodeBackend<H: Host> {
    host: Arc<H>,
    reader: Arc<dyn Reader>,
    names: Names,
}

impl<H: Host> NodeBackend<H> {
    /// The read model of `host`'s `job`, reading series from `reader`.
    pub fn new(host: Arc<H>, job: &trawler_crawl::Job, reader: Arc<dyn Reader>) -> Self {
        let names = Names::new(job, host.layout());
        Self {
            host,
            reader,
            names,
        }
    }

    /// The job's names.
    pub fn names(&self) -> &Names {
        &self.names
    }

    /// The mode the read model runs in.
    pub fn host(&self) -> &H {
        &self.host
    }
}

/// Formats unix ms as RFC 3339 with milliseconds (`None` before 1970).
pub fn rfc3339(ms: i64) -> Option<String> {
    let ms = u64::try_from(ms).ok()?;
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    Some(humantime::format_rfc3339_millis(t).to_string())
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

    /// An id's key as text (`1000001`, or a string key as written).
    pub fn key_text(&self, id: u64) -> String {
        let mut key = String::new();
        self.job.keys().write(id, &mut key);
        key
    }

    /// An id's label (`user_1000001`), when the job has one.
    pub fn label_for(&self, id: u64) -> Option<String> {
        self.job.label_for(id)
    }

    /// An id's key as JSON.
    pub fn key_json(&self, id: u64) -> Json {
        self.job.keys().to_json(id)
    }

    /// `{pk, username}`: the head of every answer naming an entity.
    pub fn entity_ref(&self, id: u64) -> EntityRef {
        EntityRef {
            key: self.key_json(id),
            label: self.job.label_for(id),
        }
    }
}

/// An entity's latest view as the API answers it (nulls until its first
/// observation). Shared by the embedded and the cluster read models.
pub fn entity(views: &Views, names: &Names, id: u64) -> Entity {
    let schema = views.schema();
    let names_of_values = schema
        .metrics()
        .iter()
        .chain(schema.ratios().iter().map(|(name, _, _)| name));
    let Some(e) = views.entity(id) else {
        return Entity {
            entity: names.entity_ref(id),
            values: names_of_values.map(|name| (name.clone(), None)).collect(),
            rank: None,
            flag: None,
            flag_checked_at: None,
            last_crawled_at: None,
        };
    };
    let metrics = e.values.iter().enumerate().map(|(m, value)| {
        value.and_then(|v| {
            if schema.is_float(m) {
                Number::from_f64(trawler_views::decode_float(v))
            } else {
                Some(v.into())
            }
        })
    });
    let ratios = e.ratios.iter().map(|r| r.and_then(Number::from_f64));
    Entity {
        entity: names.entity_ref(id),
        values: names_of_values
            .cloned()
            .zip(metrics.chain(ratios))
            .collect(),
        rank: e.rank,
        flag: e.suspicion.map(|s| s.suspicious),
        flag_checked_at: e.suspicion.and_then(|s| rfc3339(s.checked_at_ms)),
        last_crawled_at: rfc3339(e.ts_ms),
    }
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

/// The first `limit` entities by `by` from the views (rank, or the
/// movers: gain = latest − first value of the previous clock hour, or of the
/// clock hour 24 h before), in both modes.
pub fn top(views: &Views, names: &Names, by: TopBy, limit: usize) -> TopEntries {
    let movers = |movers: Vec<trawler_views::Mover>| {
        let entries = movers.into_iter().map(|m| Mover {
            entity: names.entity_ref(m.id),
            gain: m.gain,
        });
        TopEntries::Movers(entries.collect())
    };
    match by {
        TopBy::Ranked => {
            let entries = views.top(limit).into_iter().map(|r| RankedEntry {
                entity: names.entity_ref(r.id),
                value: r.value,
                rank: r.rank,
            });
            TopEntries::Ranked(entries.collect())
        }
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

/// The crawl's figures of one node (its polls, lag, errors and whether it
/// holds its schedule) into the stats.
pub fn crawl_stats(
    out: &mut Figures,
    crawl: &trawler_crawl::MetricsSnapshot,
    interval: std::time::Duration,
) {
    let schedule = &crawl.schedule;
    out.polls_per_second = crawl.polls_per_sec;
    out.lag_p50_ms = crawl.lag_p50_ms;
    out.lag_p99_ms = crawl.lag_p99_ms;
    out.polls = crawl.polls_ok;
    out.errors = crawl.errors.iter().map(|(_, n)| n).sum();
    out.gaps = crawl.gaps;
    out.missed_slots = crawl.missed_slots;
    out.behind_schedule = schedule.behind;
    out.interval_ms = interval.as_millis() as u64;
    out.needed_per_second = schedule.needed_per_sec;
    out.achieved_per_second = schedule.achieved_per_sec;
    out.effective_interval_ms = schedule.effective_interval_ms;
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

fn storage_error(e: StorageError) -> ApiError {
    ApiError::Unavailable(e.to_string())
}

impl<H: Host> Backend for NodeBackend<H> {
    fn info(&self) -> &JobInfo {
        self.names.info()
    }

    fn key(&self, text: &str) -> Result<Option<u64>, ApiError> {
        self.names.key(text)
    }

    fn key_json(&self, id: u64) -> Json {
        self.names.key_json(id)
    }

    fn entity(&self, id: u64) -> Result<Option<Entity>, ApiError> {
        if !self.host.is_tracked(id) {
            return Ok(None);
        }
        Ok(Some(entity(self.host.views(), &self.names, id)))
    }

    fn series(&self, id: u64, metric: &str, q: SeriesQuery) -> Result<Option<Points>, ApiError> {
        if !self.host.is_tracked(id) {
            return Ok(None);
        }
        metric_points(self.host.layout(), metric, |pos| {
            self.reader.points(id, pos, q).map_err(storage_error)
        })
        .map(Some)
    }

    fn track(&self, keys: &[String]) -> Result<TrackOutcome, ApiError> {
        let ids = self.names.intern(keys)?;
        self.host.track(&ids)
    }

    fn untrack(&self, id: u64) -> Result<bool, ApiError> {
        self.host.untrack(id)
    }

    fn stats(&self) -> Stats {
        let views = self.host.views();
        let figures = views.stats();
        let average = figures.averages.get(views.schema().rank_by());
        let mut stats = Stats {
            figures: Figures {
                crawled_accounts: figures.tracked as u64,
                average_covers: average.map(|a| a.count),
                ..Figures::default()
            },
            average: average.and_then(|a| a.mean()),
            flagged: figures.suspicious as u64,
            sweep_progress: self.host.enrich().map(|e| e.sweep_progress()),
        };
        self.host.stats(&mut stats.figures);
        stats
    }

    fn invalid(&self, after: Option<u64>, limit: usize) -> Vec<u64> {
        self.host.invalid(after, limit)
    }

    fn top(&self, by: TopBy, limit: usize) -> TopEntries {
        top(self.host.views(), &self.names, by, limit)
    }

    fn flagged(&self, after: Option<u64>, limit: usize) -> Vec<u64> {
        self.host.views().suspicious(after, limit)
    }

    fn now_ms(&self) -> i64 {
        crate::now_ms()
    }

    fn average_series(&self, q: SeriesQuery) -> Result<Points, ApiError> {
        self.reader.average_history(q).map_err(storage_error)
    }

    fn render_metrics(&self, out: &mut String) {
        self.host.render_metrics(out);
        let job = &self.names.info().name;
        write_metrics(
            out,
            job,
            &[(
                "trawler_views_memory_bytes",
                "Memory the live views hold.",
                "gauge",
                self.host.views().memory().total() as u64,
            )],
        );
        if let Some(enrich) = self.host.enrich() {
            enrich_metrics(out, job, enrich);
        }
    }
}

/// The enrichment's counters, in Prometheus text.
fn enrich_metrics(out: &mut String, job: &str, enrich: &trawler_enrich::EnrichHandle) {
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
