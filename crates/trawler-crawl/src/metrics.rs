//! Crawl metrics: cheap atomic counters updated on the request path, read as
//! a [`MetricsSnapshot`] and rendered as Prometheus text for `/metrics`.
//!
//! The lag histogram has log-spaced buckets (8 per doubling, ≤ 9 % error)
//! over microseconds, up to days: 300-odd atomics, no allocation per
//! sample. Rates and recent quantiles come from a ring of per-second
//! snapshots, so `polls/s` and `lag p99` describe the last few seconds, not
//! the whole run.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;
use trawler_common::prom::family;
use trawler_common::prom::Kind::{self, Counter, Gauge};

/// Why an attempt failed. Also the label of `trawler_crawl_errors_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The connection failed before the request was written (refused,
    /// reset, connect timeout). Certainly not served: retried.
    Connect,
    /// The connection failed after the request was written. It may have
    /// been served: not retried.
    Transport,
    /// No answer within the request timeout (or before the slot's end). It
    /// may have been served: not retried.
    Timeout,
    /// A `5xx` or `429` answer: refused by the target, retried.
    Status5xx,
    /// Another non-success status (`4xx`): not retried.
    Status,
    /// A success answer whose body is not the expected JSON: the read did
    /// happen, so it is not retried.
    Malformed,
    /// The target's not-found answer: the id is marked invalid.
    NotFound,
}

impl ErrorKind {
    /// Every kind, in label order.
    pub const ALL: [ErrorKind; 7] = [
        ErrorKind::Connect,
        ErrorKind::Transport,
        ErrorKind::Timeout,
        ErrorKind::Status5xx,
        ErrorKind::Status,
        ErrorKind::Malformed,
        ErrorKind::NotFound,
    ];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            ErrorKind::Connect => "connect",
            ErrorKind::Transport => "transport",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Status5xx => "5xx",
            ErrorKind::Status => "status",
            ErrorKind::Malformed => "malformed",
            ErrorKind::NotFound => "not_found",
        }
    }

    /// Whether a retry within the slot is safe: only when the target
    /// certainly did not read the account.
    pub fn retryable(self) -> bool {
        matches!(self, ErrorKind::Connect | ErrorKind::Status5xx)
    }

    fn index(self) -> usize {
        self as usize
    }
}

const SUB_BITS: u32 = 3;
const SUB: u64 = 1 << SUB_BITS;
/// Values below this have a bucket each.
const LINEAR: u64 = 2 * SUB;
const BUCKETS: usize = (LINEAR + (64 - SUB_BITS as u64 - 1) * SUB) as usize;

fn bucket_of(v: u64) -> usize {
    if v < LINEAR {
        return v as usize;
    }
    let e = 63 - v.leading_zeros() as u64; // ≥ SUB_BITS + 1
    let sub = (v >> (e - SUB_BITS as u64)) & (SUB - 1);
    (LINEAR + (e - SUB_BITS as u64 - 1) * SUB + sub) as usize
}

/// The largest value of a bucket, reported as its quantile value so that
/// quantiles err on the high side.
fn bucket_high(b: usize) -> u64 {
    let b = b as u64;
    if b < LINEAR {
        return b;
    }
    let e = (b - LINEAR) / SUB + SUB_BITS as u64 + 1;
    let sub = (b - LINEAR) % SUB;
    let low = (1u64 << e) | (sub << (e - SUB_BITS as u64));
    low + ((1u64 << (e - SUB_BITS as u64)) - 1)
}

/// The `le` bounds of the exported lag histogram, seconds.
const LAG_BOUNDS_SECONDS: [f64; 15] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// A log-bucketed histogram of microseconds.
#[derive(Debug)]
pub struct Histogram {
    buckets: Box<[AtomicU64]>,
    sum: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0),
        }
    }
}

impl Histogram {
    /// Adds one value.
    pub fn record(&self, micros: u64) {
        self.buckets[bucket_of(micros)].fetch_add(1, Ordering::Relaxed);
        self.sum.fetch_add(micros, Ordering::Relaxed);
    }

    /// The sum of every value recorded, microseconds.
    pub fn sum(&self) -> u64 {
        self.sum.load(Ordering::Relaxed)
    }

    fn counts(&self) -> Vec<u64> {
        self.buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect()
    }
}

/// Bucket counts of a [`Histogram`] at one moment (or between two).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistogramCounts(Vec<u64>);

impl HistogramCounts {
    /// Number of values.
    pub fn count(&self) -> u64 {
        self.0.iter().sum()
    }

    /// The `q`-quantile (0–1), microseconds, rounded up to its bucket's top;
    /// `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<u64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (b, &n) in self.0.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Some(bucket_high(b));
            }
        }
        None
    }

    /// Values whose bucket lies wholly at or below `micros` — a cumulative
    /// count for a Prometheus `le` bound (values in the one bucket that
    /// straddles the bound are counted in the next bound up).
    pub fn count_at_most(&self, micros: u64) -> u64 {
        self.0
            .iter()
            .enumerate()
            .take_while(|(b, _)| bucket_high(*b) <= micros)
            .map(|(_, n)| n)
            .sum()
    }

    fn since(&self, earlier: &HistogramCounts) -> HistogramCounts {
        HistogramCounts(
            self.0
                .iter()
                .zip(&earlier.0)
                .map(|(a, b)| a.saturating_sub(*b))
                .collect(),
        )
    }
}

/// The crawl's live counters. Shared by the dispatcher, every request and
/// the handle; every update is one relaxed atomic add.
#[derive(Debug)]
pub struct Metrics {
    pub(crate) polls_ok: AtomicU64,
    errors: [AtomicU64; 7],
    pub(crate) retries: AtomicU64,
    pub(crate) pauses: AtomicU64,
    pub(crate) gaps: AtomicU64,
    pub(crate) missed: AtomicU64,
    /// Slots whose request started (claimed by the dispatcher).
    pub(crate) started: AtomicU64,
    /// How far the `stretch` policy has moved the schedule back, ms.
    pub(crate) stretch_ms: AtomicI64,
    pub(crate) abandoned: AtomicU64,
    pub(crate) lag: Histogram,
    /// One sample per second, for rates and recent quantiles.
    ring: Mutex<VecDeque<Tick>>,
}

/// A per-second sample of the counters.
#[derive(Debug)]
struct Tick {
    at: Instant,
    polls: u64,
    started: u64,
    missed: u64,
    stretch_ms: i64,
    lag: HistogramCounts,
}

/// Below this share of the slots the schedule needs, it is not held
/// (a few missed slots are a hiccup, not a target that cannot keep up).
const HELD_SHARE: f64 = 0.99;

/// How far back "recent" figures look.
const RECENT: Duration = Duration::from_secs(10);

impl Default for Metrics {
    fn default() -> Self {
        Self {
            polls_ok: AtomicU64::new(0),
            errors: Default::default(),
            retries: AtomicU64::new(0),
            pauses: AtomicU64::new(0),
            gaps: AtomicU64::new(0),
            missed: AtomicU64::new(0),
            started: AtomicU64::new(0),
            stretch_ms: AtomicI64::new(0),
            abandoned: AtomicU64::new(0),
            lag: Histogram::default(),
            ring: Mutex::new(VecDeque::new()),
        }
    }
}

impl Metrics {
    pub(crate) fn error(&self, kind: ErrorKind) {
        self.errors[kind.index()].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Records a ring sample if a second has passed (then true); called by
    /// the dispatcher.
    pub(crate) fn tick(&self, now: Instant) -> bool {
        let mut ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        if ring
            .back()
            .is_some_and(|t| now.duration_since(t.at) < Duration::from_secs(1))
        {
            return false;
        }
        ring.push_back(Tick {
            at: now,
            polls: self.polls_ok.load(Ordering::Relaxed),
            started: self.started.load(Ordering::Relaxed),
            missed: self.missed.load(Ordering::Relaxed),
            stretch_ms: self.stretch_ms.load(Ordering::Relaxed),
            lag: HistogramCounts(self.lag.counts()),
        });
        while ring.len() > 2 && now.duration_since(ring[1].at) >= RECENT {
            ring.pop_front();
        }
        true
    }

    /// Whether the schedule was held over the recent window: the slots
    /// started per second against what `tracked` ids every `interval_ms`
    /// need, and the effective interval that rate gives every id.
    pub(crate) fn schedule(&self, tracked: u64, interval_ms: u64) -> Schedule {
        let needed = tracked as f64 * 1_000.0 / interval_ms.max(1) as f64;
        let ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        let stretched_ms = self.stretch_ms.load(Ordering::Relaxed) as f64;
        let (achieved, missed, stretching) = match (ring.front(), ring.back()) {
            (Some(a), Some(b)) if b.at.duration_since(a.at) >= Duration::from_secs(1) => {
                let dt = b.at.duration_since(a.at).as_secs_f64();
                (
                    (b.started - a.started) as f64 / dt,
                    (b.missed - a.missed) as f64 / dt,
                    // Share of the time the schedule stood still.
                    (b.stretch_ms - a.stretch_ms) as f64 / 1e3 / dt,
                )
            }
            _ => {
                return Schedule {
                    stretched_ms,
                    ..Schedule::held(needed, interval_ms)
                }
            }
        };
        // Held when (almost) no slot was missed and the schedule (almost)
        // never had to stretch; otherwise the rate the target sustained is
        // what every id gets.
        let short = 1.0 - HELD_SHARE;
        if (missed <= short * needed && stretching <= short) || achieved >= needed {
            return Schedule {
                achieved_per_sec: achieved,
                stretched_ms,
                ..Schedule::held(needed, interval_ms)
            };
        }
        Schedule {
            needed_per_sec: needed,
            achieved_per_sec: achieved,
            effective_interval_ms: interval_ms as f64 * needed / achieved.max(needed * 1e-6),
            behind: true,
            stretched_ms,
        }
    }

    /// Reads everything at once. `gauges` come from the crawler.
    pub(crate) fn snapshot(&self, gauges: Gauges) -> MetricsSnapshot {
        let now = Instant::now();
        let polls_ok = self.polls_ok.load(Ordering::Relaxed);
        let lag_total = HistogramCounts(self.lag.counts());
        let ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        let (polls_per_sec, lag_recent) = match ring.front() {
            Some(t) if now.duration_since(t.at) >= Duration::from_millis(500) => (
                (polls_ok - t.polls) as f64 / now.duration_since(t.at).as_secs_f64(),
                lag_total.since(&t.lag),
            ),
            _ => (0.0, lag_total.clone()),
        };
        drop(ring);
        let schedule = self.schedule(gauges.tracked, gauges.interval_ms);
        let ms = |q| lag_recent.quantile(q).map(|us| us as f64 / 1e3);
        MetricsSnapshot {
            polls_ok,
            errors: ErrorKind::ALL.map(|k| (k, self.errors[k.index()].load(Ordering::Relaxed))),
            retries: self.retries.load(Ordering::Relaxed),
            pauses: self.pauses.load(Ordering::Relaxed),
            gaps: self.gaps.load(Ordering::Relaxed),
            missed_slots: self.missed.load(Ordering::Relaxed),
            abandoned: self.abandoned.load(Ordering::Relaxed),
            polls_per_sec,
            lag_p50_ms: ms(0.5),
            lag_p99_ms: ms(0.99),
            lag_total,
            lag_sum_us: self.lag.sum(),
            schedule,
            gauges,
        }
    }
}

/// Point-in-time values owned by the crawler rather than counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Gauges {
    /// Ids being polled.
    pub tracked: u64,
    /// Ids reported invalid by the target.
    pub invalid: u64,
    /// Requests in flight.
    pub in_flight: u64,
    /// The adaptive concurrency limit.
    pub concurrency_limit: u64,
    /// The configured poll interval.
    pub interval_ms: u64,
}

/// Whether the crawl holds its schedule, over the last 10 s.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Schedule {
    /// Slots per second the schedule needs (tracked ids / interval).
    pub needed_per_sec: f64,
    /// Slots started per second.
    pub achieved_per_sec: f64,
    /// The interval every id actually gets: the configured one while the
    /// schedule is held, else stretched by needed / achieved.
    pub effective_interval_ms: f64,
    /// More than 1 % of the needed slots were missed, or (`stretch`) the
    /// schedule stood still more than 1 % of the time.
    pub behind: bool,
    /// How far the `stretch` policy has moved the schedule back since the
    /// start, ms (0 under `skip`).
    pub stretched_ms: f64,
}

impl Schedule {
    fn held(needed: f64, interval_ms: u64) -> Self {
        Self {
            needed_per_sec: needed,
            achieved_per_sec: needed,
            effective_interval_ms: interval_ms as f64,
            behind: false,
            stretched_ms: 0.0,
        }
    }
}

/// Every crawl metric at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricsSnapshot {
    /// Successful reads (observations emitted).
    pub polls_ok: u64,
    /// Failed attempts by kind (retried attempts included).
    pub errors: [(ErrorKind, u64); 7],
    /// Attempts after the first within a slot.
    pub retries: u64,
    /// Pauses of the whole target asked for by `Retry-After`.
    pub pauses: u64,
    /// Slots that produced no observation, whatever the reason (missed
    /// slots included).
    pub gaps: u64,
    /// Slots that could not start before the id's next slot.
    pub missed_slots: u64,
    /// Requests abandoned at shutdown.
    pub abandoned: u64,
    /// Successful reads per second over the last ~10 s.
    pub polls_per_sec: f64,
    /// Median lag (response time − slot time) over the last ~10 s, ms.
    pub lag_p50_ms: Option<f64>,
    /// 99th percentile lag over the last ~10 s, ms.
    pub lag_p99_ms: Option<f64>,
    /// Lag of every observation since start, µs buckets.
    pub lag_total: HistogramCounts,
    /// Sum of the lag of every observation since start, µs.
    pub lag_sum_us: u64,
    /// Whether the schedule is held.
    pub schedule: Schedule,
    /// Tracked, invalid, in flight, concurrency limit.
    pub gauges: Gauges,
}

impl MetricsSnapshot {
    /// Failed attempts of one kind.
    pub fn errors_of(&self, kind: ErrorKind) -> u64 {
        self.errors
            .iter()
            .find(|(k, _)| *k == kind)
            .map_or(0, |(_, n)| *n)
    }

    /// Prometheus text exposition (version 0.0.4) of every metric, labelled
    /// with the job name.
    pub fn to_prometheus(&self, job: &str) -> String {
        let mut out = String::with_capacity(2_048);
        let labels = [("job", job)];
        let (g, s) = (self.gauges, self.schedule);
        // Families of one sample labelled with the job only.
        let singles = |out: &mut String, families: &[(&str, Kind, &str, f64)]| {
            for &(name, kind, help, value) in families {
                family(out, name, kind, help).sample(&labels, value);
            }
        };
        singles(
            &mut out,
            &[(
                "trawler_crawl_polls_total",
                Counter,
                "Successful reads.",
                self.polls_ok as f64,
            )],
        );
        let mut errors = family(
            &mut out,
            "trawler_crawl_errors_total",
            Counter,
            "Failed attempts by kind.",
        );
        for (kind, n) in &self.errors {
            errors.sample(&[("job", job), ("kind", kind.label())], *n as f64);
        }
        singles(
            &mut out,
            &[
                (
                    "trawler_crawl_retries_total",
                    Counter,
                    "Retried attempts within a slot.",
                    self.retries as f64,
                ),
                (
                    "trawler_crawl_pauses_total",
                    Counter,
                    "Pauses of every request to the target asked for by Retry-After.",
                    self.pauses as f64,
                ),
                (
                    "trawler_crawl_gaps_total",
                    Counter,
                    "Slots without an observation.",
                    self.gaps as f64,
                ),
                (
                    "trawler_crawl_missed_slots_total",
                    Counter,
                    "Slots that could not start before the next slot of their id.",
                    self.missed_slots as f64,
                ),
                (
                    "trawler_crawl_abandoned_total",
                    Counter,
                    "Requests abandoned at shutdown.",
                    self.abandoned as f64,
                ),
                (
                    "trawler_crawl_polls_per_second",
                    Gauge,
                    "Successful reads per second, last 10 s.",
                    self.polls_per_sec,
                ),
            ],
        );
        let mut recent = family(
            &mut out,
            "trawler_crawl_recent_lag_seconds",
            Gauge,
            "Response time minus slot time, quantiles over the last 10 s.",
        );
        for (q, v) in [("0.5", self.lag_p50_ms), ("0.99", self.lag_p99_ms)] {
            if let Some(ms) = v {
                recent.sample(&[("job", job), ("quantile", q)], ms / 1e3);
            }
        }
        singles(
            &mut out,
            &[
                (
                    "trawler_crawl_needed_per_second",
                    Gauge,
                    "Slots per second the schedule needs.",
                    s.needed_per_sec,
                ),
                (
                    "trawler_crawl_achieved_per_second",
                    Gauge,
                    "Slots started per second, last 10 s.",
                    s.achieved_per_sec,
                ),
                (
                    "trawler_crawl_effective_interval_seconds",
                    Gauge,
                    "The interval every id gets at the achieved rate.",
                    s.effective_interval_ms / 1e3,
                ),
                (
                    "trawler_crawl_schedule_stretch_seconds_total",
                    Counter,
                    "How far the stretch policy has moved the schedule back.",
                    s.stretched_ms / 1e3,
                ),
                (
                    "trawler_crawl_behind_schedule",
                    Gauge,
                    "1 while more than 1 % of the needed slots are missed.",
                    f64::from(u8::from(s.behind)),
                ),
                (
                    "trawler_crawl_tracked_ids",
                    Gauge,
                    "Ids being polled.",
                    g.tracked as f64,
                ),
                (
                    "trawler_crawl_invalid_ids",
                    Gauge,
                    "Ids the target does not know.",
                    g.invalid as f64,
                ),
                (
                    "trawler_crawl_in_flight",
                    Gauge,
                    "Requests in flight.",
                    g.in_flight as f64,
                ),
                (
                    "trawler_crawl_concurrency_limit",
                    Gauge,
                    "Adaptive limit on requests in flight.",
                    g.concurrency_limit as f64,
                ),
            ],
        );
        let mut lag = family(
            &mut out,
            "trawler_crawl_lag_seconds",
            Kind::Histogram,
            "Response time minus slot time, since start.",
        );
        for le in LAG_BOUNDS_SECONDS {
            lag.sample_of(
                "_bucket",
                &[("job", job), ("le", &le.to_string())],
                self.lag_total.count_at_most((le * 1e6) as u64),
            );
        }
        let count = self.lag_total.count();
        lag.sample_of("_bucket", &[("job", job), ("le", "+Inf")], count)
            .sample_of("_sum", &labels, self.lag_sum_us as f64 / 1e6)
            .sample_of("_count", &labels, count);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_monotonic_and_tight() {
        let mut last = 0;
        for v in (0..100_000u64).chain([1 << 40, u64::MAX / 2, u64::MAX]) {
            let b = bucket_of(v);
            assert!(b >= last && b < BUCKETS, "{v}");
            last = b;
            let high = bucket_high(b);
            assert!(high >= v, "{v} > {high}");
            assert!(
                v < LINEAR || (high - v) as f64 <= v as f64 * 0.125 + 1.0,
                "{v} {high}"
            );
        }
    }

    #[test]
    fn quantiles() {
        let h = Histogram::default();
        for v in 1..=1_000u64 {
            h.record(v * 1_000);
        }
        let counts = HistogramCounts(h.counts());
        let p50 = counts.quantile(0.5).unwrap() as f64;
        let p99 = counts.quantile(0.99).unwrap() as f64;
        assert!((500_000.0..=560_000.0).contains(&p50), "{p50}");
        assert!((990_000.0..=1_100_000.0).contains(&p99), "{p99}");
        assert_eq!(HistogramCounts(vec![0; 4]).quantile(0.5), None);
    }

    #[test]
    fn prometheus_text() {
        let m = Metrics::default();
        Metrics::add(&m.polls_ok, 3);
        m.error(ErrorKind::Timeout);
        m.lag.record(2_000);
        let text = m
            .snapshot(Gauges {
                tracked: 10,
                ..Gauges::default()
            })
            .to_prometheus("influencers");
        assert!(
            text.contains("trawler_crawl_polls_total{job=\"influencers\"} 3\n"),
            "{text}"
        );
        assert!(
            text.contains("trawler_crawl_errors_total{job=\"influencers\",kind=\"timeout\"} 1\n")
        );
        assert!(text.contains(
            "trawler_crawl_recent_lag_seconds{job=\"influencers\",quantile=\"0.99\"} 0.002"
        ));
        assert!(text.contains("trawler_crawl_tracked_ids{job=\"influencers\"} 10\n"));
        assert!(text
            .lines()
            .all(|l| l.starts_with('#') || l.starts_with("trawler_crawl_")));
    }

    #[test]
    fn the_lag_histogram_is_cumulative_with_sum_and_count() {
        let m = Metrics::default();
        for us in [500, 2_000, 20_000, 2_000_000] {
            m.lag.record(us);
        }
        let text = m.snapshot(Gauges::default()).to_prometheus("j");
        let line = |le: &str| {
            let prefix = format!("trawler_crawl_lag_seconds_bucket{{job=\"j\",le=\"{le}\"}} ");
            text.lines()
                .find_map(|l| l.strip_prefix(prefix.as_str()))
                .unwrap_or_else(|| panic!("no bucket {le}:\n{text}"))
                .parse::<u64>()
                .unwrap()
        };
        assert_eq!(line("0.001"), 1);
        assert_eq!(line("0.0025"), 2);
        assert_eq!(line("0.025"), 3);
        assert_eq!(line("1"), 3);
        assert_eq!(line("2.5"), 4);
        assert_eq!(line("+Inf"), 4);
        assert!(text.contains("# TYPE trawler_crawl_lag_seconds histogram\n"));
        assert!(text.contains("trawler_crawl_lag_seconds_sum{job=\"j\"} 2.0225\n"));
        assert!(text.contains("trawler_crawl_lag_seconds_count{job=\"j\"} 4\n"));
    }
}
