//! The API's read model of a running job, the same in both modes.
//!
//! Latest values, ranks, top and movers come from the live views (memory,
//! microseconds); series come through the storage [`Reader`] (the embedded
//! store or VictoriaMetrics). A derived metric's series is computed from its
//! stored operands point by point — they share slot timestamps — or bucket
//! by bucket from their averages when a step is given. What differs between
//! the modes (tracking, their own figures) is behind [`Host`].

use std::sync::Arc;

use serde_json::{json, Map, Value as Json};
use trawler_api::{ApiError, Backend, JobInfo, Points, SeriesQuery, TopBy, TrackOutcome};
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
    /// Starts tracking ids (persisted before it returns).
    fn track(&self, ids: &[u64]) -> Result<TrackOutcome, ApiError>;
    /// Stops tracking an id; `false` when it was not tracked.
    fn untrack(&self, id: u64) -> Result<bool, ApiError>;
    /// Ids the target reported as not found, after `after`, at most `limit`.
    fn invalid(&self, after: Option<u64>, limit: usize) -> Vec<u64>;
    /// The mode's own figures (crawl or cluster, store) into the stats.
    fn stats(&self, out: &mut Map<String, Json>);
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

/// The crawl's figures of one node (its polls, lag, errors and whether it
/// holds its schedule) into the stats.
pub fn crawl_stats(
    out: &mut Map<String, Json>,
    crawl: &trawler_crawl::MetricsSnapshot,
    interval: std::time::Duration,
) {
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
    let schedule = &crawl.schedule;
    out.insert("behindSchedule".into(), json!(schedule.behind));
    out.insert("intervalMs".into(), json!(interval.as_millis() as u64));
    out.insert("neededPerSecond".into(), number(schedule.needed_per_sec));
    out.insert(
        "achievedPerSecond".into(),
        number(schedule.achieved_per_sec),
    );
    out.insert(
        "effectiveIntervalMs".into(),
        number(schedule.effective_interval_ms),
    );
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

fn number(v: f64) -> Json {
    serde_json::Number::from_f64(v)
        .map(Json::Number)
        .unwrap_or(Json::Null)
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

    fn entity(&self, id: u64) -> Result<Option<Map<String, Json>>, ApiError> {
        if !self.host.is_tracked(id) {
            return Ok(None);
        }
        Ok(Some(entity_json(self.host.views(), &self.names, id)))
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

    fn stats(&self) -> Map<String, Json> {
        let views = self.host.views();
        let figures = views.stats();
        let average = figures.averages.get(views.schema().rank_by());
        let mut out = Map::new();
        out.insert("crawledAccounts".into(), json!(figures.tracked));
        out.insert(
            self.host.layout().average.clone(),
            average
                .and_then(|a| a.mean())
                .map(number)
                .unwrap_or(Json::Null),
        );
        out.insert("averageCovers".into(), json!(average.map(|a| a.count)));
        flag_stats(
            &mut out,
            &self.names,
            figures.suspicious,
            self.host.enrich(),
        );
        self.host.stats(&mut out);
        out
    }

    fn invalid(&self, after: Option<u64>, limit: usize) -> Vec<u64> {
        self.host.invalid(after, limit)
    }

    fn top(&self, by: TopBy, limit: usize) -> Vec<Map<String, Json>> {
        top_json(self.host.views(), &self.names, by, limit)
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
