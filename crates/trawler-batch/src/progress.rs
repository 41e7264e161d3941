//! The figures of a running batch: atomic counters updated by the
//! pipeline, read as a [`Status`] (the progress line, the JSON API, the
//! summary) or as Prometheus text (`/metrics`); per host in a bounded
//! table ([`hosts`]).
//!
//! Rates come two ways: since the start (`urls_per_s`, what the ETA is
//! computed from), and recent (`done_per_s`, `dead_per_s`,
//! `retries_per_s`: exponentially weighted with a 10 s time constant,
//! brought up to date when read, at most once a second).

pub mod hosts;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::Serialize;

use crate::log::DeadKind;
use hosts::HostTable;

/// Hosts listed in `/metrics` (the rest in one `host="other"` series), so
/// the label set stays bounded.
pub const METRICS_HOSTS: usize = 20;

/// The counters (all since the process started, except `*_earlier`).
#[derive(Debug)]
pub struct Progress {
    /// The job's name.
    pub job: String,
    started: Instant,
    /// Input lines read.
    pub lines: AtomicU64,
    /// Lines whose URL was seen before in the input.
    pub duplicates: AtomicU64,
    /// URLs finished by an earlier run (skipped).
    pub finished_earlier: AtomicU64,
    /// URLs handed to the fetchers.
    pub admitted: AtomicU64,
    /// URLs whose result is committed.
    pub done: AtomicU64,
    /// Dead letters, by [`DeadKind`] order.
    pub dead: [AtomicU64; 8],
    /// Failed attempts that will be retried.
    pub retries: AtomicU64,
    /// Body bytes downloaded.
    pub bytes: AtomicU64,
    /// Downloads in flight.
    pub downloading: AtomicU64,
    /// Detector calls made, and images in them.
    pub detector_calls: AtomicU64,
    /// See `detector_calls`.
    pub detector_images: AtomicU64,
    /// Detector calls that failed (retried).
    pub detector_errors: AtomicU64,
    /// Results files published.
    pub files: AtomicU64,
    /// Segments finished (this run).
    pub segments_done: AtomicU64,
    /// Segments this node leases now (cluster mode).
    pub segments_held: AtomicU64,
    /// Input bytes read and in all (for the ETA).
    pub input_read: AtomicU64,
    /// See `input_read`.
    pub input_total: AtomicU64,
    /// Distinct hosts.
    pub hosts: AtomicU64,
    /// Set when the input is read to its end.
    pub input_complete: AtomicU64,
    /// Bytes of the state log.
    pub log_bytes: AtomicU64,
    /// Fingerprints in the duplicate set, and its bytes.
    pub seen: AtomicU64,
    /// See `seen`.
    pub seen_bytes: AtomicU64,
    /// Per-host figures, bounded.
    pub per_host: Arc<HostTable>,
    recent: Mutex<Recent>,
    finished_at: Mutex<Option<f64>>,
}

/// The recent rates and the counters they were last brought up to date at.
#[derive(Debug)]
struct Recent {
    at: Instant,
    /// done, dead, retries at `at`.
    marks: [u64; 3],
    per_s: [f64; 3],
}

/// A snapshot, as served at `/api/v1/batch/{job}`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Status {
    /// The job.
    pub job: String,
    /// `running` or `finished`.
    pub state: &'static str,
    /// Seconds since the start.
    pub elapsed_s: f64,
    /// Input lines read.
    pub lines: u64,
    /// Duplicate lines skipped.
    pub duplicates: u64,
    /// URLs finished by an earlier run.
    pub finished_earlier: u64,
    /// URLs with a committed result.
    pub done: u64,
    /// Dead letters in all.
    pub dead: u64,
    /// Dead letters by kind.
    pub dead_by_kind: std::collections::BTreeMap<&'static str, u64>,
    /// Retried attempts.
    pub retries: u64,
    /// URLs admitted and not finished.
    pub in_flight: u64,
    /// Downloads in flight.
    pub downloading: u64,
    /// Bytes downloaded.
    pub bytes: u64,
    /// (done + dead) per second since the start.
    pub urls_per_s: f64,
    /// URLs committed per second, recently (10 s time constant).
    pub done_per_s: f64,
    /// Dead letters per second, recently.
    pub dead_per_s: f64,
    /// Failed attempts (retried) per second, recently.
    pub retries_per_s: f64,
    /// Estimated seconds left (`null` until it can be told).
    pub eta_s: Option<f64>,
    /// Share of this run's URLs with an outcome (0–1): done and dead over
    /// those plus the URLs in flight and the unread input's estimated
    /// share (the same estimate as the ETA's).
    pub fraction_done: f64,
    /// Share of the input read (0–1).
    pub input_fraction: f64,
    /// Distinct hosts.
    pub hosts: u64,
    /// Detector calls and images.
    pub detector_calls: u64,
    /// See `detector_calls`.
    pub detector_images: u64,
    /// Failed detector calls.
    pub detector_errors: u64,
    /// Results files published.
    pub files: u64,
    /// Segments finished this run.
    pub segments_done: u64,
    /// Segments this node leases now (cluster mode).
    pub segments_held: u64,
    /// State bytes: the log on disk, and the duplicate set in memory.
    pub log_bytes: u64,
    /// See `log_bytes`.
    pub seen_set_bytes: u64,
}

impl Progress {
    /// Counters at zero.
    pub fn new(job: &str) -> Self {
        Self {
            job: job.to_owned(),
            started: Instant::now(),
            lines: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            finished_earlier: AtomicU64::new(0),
            admitted: AtomicU64::new(0),
            done: AtomicU64::new(0),
            dead: Default::default(),
            retries: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            downloading: AtomicU64::new(0),
            detector_calls: AtomicU64::new(0),
            detector_images: AtomicU64::new(0),
            detector_errors: AtomicU64::new(0),
            files: AtomicU64::new(0),
            segments_done: AtomicU64::new(0),
            segments_held: AtomicU64::new(0),
            input_read: AtomicU64::new(0),
            input_total: AtomicU64::new(0),
            hosts: AtomicU64::new(0),
            input_complete: AtomicU64::new(0),
            log_bytes: AtomicU64::new(0),
            seen: AtomicU64::new(0),
            seen_bytes: AtomicU64::new(0),
            per_host: Arc::default(),
            recent: Mutex::new(Recent {
                at: Instant::now(),
                marks: [0; 3],
                per_s: [0.0; 3],
            }),
            finished_at: Mutex::new(None),
        }
    }

    pub(crate) fn dead_one(&self, kind: DeadKind) {
        let i = DeadKind::ALL.iter().position(|k| *k == kind).unwrap_or(0);
        self.dead[i].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn finish(&self) {
        *self.finished_at.lock().unwrap_or_else(|e| e.into_inner()) =
            Some(self.started.elapsed().as_secs_f64());
    }

    /// The figures now.
    pub fn status(&self) -> Status {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let finished = *self.finished_at.lock().unwrap_or_else(|e| e.into_inner());
        let elapsed = finished.unwrap_or_else(|| self.started.elapsed().as_secs_f64());
        let dead_by_kind: std::collections::BTreeMap<_, _> = DeadKind::ALL
            .iter()
            .zip(&self.dead)
            .map(|(k, n)| (k.name(), get(n)))
            .collect();
        let dead: u64 = dead_by_kind.values().sum();
        let done = get(&self.done);
        let admitted = get(&self.admitted);
        let finished_now = done + dead;
        let rate = if elapsed > 0.0 {
            finished_now as f64 / elapsed
        } else {
            0.0
        };
        let (read, total) = (get(&self.input_read), get(&self.input_total));
        let fraction = if get(&self.input_complete) == 1 || total == 0 {
            1.0
        } else {
            (read as f64 / total as f64).min(1.0)
        };
        // URLs still to come: those admitted and not finished, plus the
        // unread input's share of what the read part admitted.
        let in_flight = admitted.saturating_sub(finished_now);
        let [done_per_s, dead_per_s, retries_per_s] =
            self.recent([done, dead, get(&self.retries)], finished.is_some());
        let to_come = if fraction > 0.0 {
            admitted as f64 * (1.0 - fraction) / fraction
        } else {
            0.0
        };
        let eta = if finished.is_some() {
            Some(0.0)
        } else if rate > 0.0 && fraction > 0.0 {
            Some((in_flight as f64 + to_come) / rate)
        } else {
            None
        };
        let left = finished_now as f64 + in_flight as f64 + to_come;
        let fraction_done = if finished.is_some() {
            1.0
        } else if left > 0.0 {
            (finished_now as f64 / left).min(1.0)
        } else {
            0.0
        };
        Status {
            job: self.job.clone(),
            state: if finished.is_some() {
                "finished"
            } else {
                "running"
            },
            elapsed_s: elapsed,
            lines: get(&self.lines),
            duplicates: get(&self.duplicates),
            finished_earlier: get(&self.finished_earlier),
            done,
            dead,
            dead_by_kind,
            retries: get(&self.retries),
            in_flight,
            downloading: get(&self.downloading),
            bytes: get(&self.bytes),
            urls_per_s: rate,
            done_per_s,
            dead_per_s,
            retries_per_s,
            eta_s: eta,
            fraction_done,
            input_fraction: fraction,
            hosts: get(&self.hosts),
            detector_calls: get(&self.detector_calls),
            detector_images: get(&self.detector_images),
            detector_errors: get(&self.detector_errors),
            files: get(&self.files),
            segments_done: get(&self.segments_done),
            segments_held: get(&self.segments_held),
            log_bytes: get(&self.log_bytes),
            seen_set_bytes: get(&self.seen_bytes),
        }
    }

    /// The recent rates of `counts` (done, dead, retries); zero once
    /// the run is over.
    fn recent(&self, counts: [u64; 3], over: bool) -> [f64; 3] {
        let mut r = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        if over {
            return [0.0; 3];
        }
        let now = Instant::now();
        let dt = now.duration_since(r.at).as_secs_f64();
        if dt >= 1.0 {
            let w = 1.0 - (-dt / hosts::RATE_WINDOW.as_secs_f64()).exp();
            let r = &mut *r;
            for ((count, mark), per_s) in counts.iter().zip(&r.marks).zip(&mut r.per_s) {
                let now_per_s = count.saturating_sub(*mark) as f64 / dt;
                *per_s += w * (now_per_s - *per_s);
            }
            r.marks = counts;
            r.at = now;
        }
        r.per_s
    }

    /// The figures in Prometheus text format.
    pub fn prometheus(&self) -> String {
        use trawler_common::prom::{family, Kind};
        let s = self.status();
        let job = [("job", s.job.as_str())];
        let mut out = String::new();
        let figures: [(&str, Kind, &str, f64); 18] = [
            (
                "trawler_batch_lines_total",
                Kind::Counter,
                "Input lines read.",
                s.lines as f64,
            ),
            (
                "trawler_batch_duplicates_total",
                Kind::Counter,
                "Input lines whose URL came earlier.",
                s.duplicates as f64,
            ),
            (
                "trawler_batch_done_total",
                Kind::Counter,
                "URLs with a committed result.",
                s.done as f64,
            ),
            (
                "trawler_batch_retries_total",
                Kind::Counter,
                "Failed attempts retried.",
                s.retries as f64,
            ),
            (
                "trawler_batch_bytes_total",
                Kind::Counter,
                "Body bytes downloaded.",
                s.bytes as f64,
            ),
            (
                "trawler_batch_in_flight",
                Kind::Gauge,
                "URLs admitted and not finished.",
                s.in_flight as f64,
            ),
            (
                "trawler_batch_downloading",
                Kind::Gauge,
                "Downloads in flight.",
                s.downloading as f64,
            ),
            (
                "trawler_batch_urls_per_second",
                Kind::Gauge,
                "URLs finished per second since the start.",
                s.urls_per_s,
            ),
            (
                "trawler_batch_done_per_second",
                Kind::Gauge,
                "URLs committed per second, recently (10 s time constant).",
                s.done_per_s,
            ),
            (
                "trawler_batch_dead_per_second",
                Kind::Gauge,
                "Dead letters per second, recently (10 s time constant).",
                s.dead_per_s,
            ),
            (
                "trawler_batch_retries_per_second",
                Kind::Gauge,
                "Failed attempts retried per second, recently (10 s time constant).",
                s.retries_per_s,
            ),
            (
                "trawler_batch_eta_seconds",
                Kind::Gauge,
                "Estimated seconds left (-1: unknown).",
                s.eta_s.unwrap_or(-1.0),
            ),
            (
                "trawler_batch_hosts",
                Kind::Gauge,
                "Distinct hosts.",
                s.hosts as f64,
            ),
            (
                "trawler_batch_detector_calls_total",
                Kind::Counter,
                "Detector calls.",
                s.detector_calls as f64,
            ),
            (
                "trawler_batch_detector_errors_total",
                Kind::Counter,
                "Detector calls that failed.",
                s.detector_errors as f64,
            ),
            (
                "trawler_batch_files_total",
                Kind::Counter,
                "Results files published.",
                s.files as f64,
            ),
            (
                "trawler_batch_state_log_bytes",
                Kind::Gauge,
                "Bytes of the state log.",
                s.log_bytes as f64,
            ),
            (
                "trawler_batch_seen_set_bytes",
                Kind::Gauge,
                "Bytes of the duplicate set in memory.",
                s.seen_set_bytes as f64,
            ),
        ];
        for (name, kind, help, value) in figures {
            family(&mut out, name, kind, help).sample(&job, value);
        }
        let mut dead = family(
            &mut out,
            "trawler_batch_dead_total",
            Kind::Counter,
            "Dead letters by kind.",
        );
        for (kind, n) in &s.dead_by_kind {
            dead.sample(&[("job", s.job.as_str()), ("kind", kind)], *n);
        }
        // Per host: the busiest METRICS_HOSTS, and the rest as "other".
        let top = self.per_host.top(&s.job, METRICS_HOSTS);
        type Figure = fn(&hosts::HostFigures) -> f64;
        let per_host: [(&str, Kind, &str, Figure); 7] = [
            (
                "trawler_batch_host_urls_total",
                Kind::Counter,
                "URLs started, per host (the busiest; the rest as host=\"other\").",
                |h| h.urls as f64,
            ),
            (
                "trawler_batch_host_done_total",
                Kind::Counter,
                "URLs committed, per host.",
                |h| h.done as f64,
            ),
            (
                "trawler_batch_host_dead_total",
                Kind::Counter,
                "Dead letters, per host.",
                |h| h.dead as f64,
            ),
            (
                "trawler_batch_host_retries_total",
                Kind::Counter,
                "Failed attempts retried, per host.",
                |h| h.retries as f64,
            ),
            (
                "trawler_batch_host_bytes_total",
                Kind::Counter,
                "Body bytes downloaded, per host.",
                |h| h.bytes as f64,
            ),
            (
                "trawler_batch_host_in_flight",
                Kind::Gauge,
                "URLs started without an outcome yet, per host.",
                |h| h.in_flight as f64,
            ),
            (
                "trawler_batch_host_urls_per_second",
                Kind::Gauge,
                "URLs finished per second, recently, per host.",
                |h| h.per_s,
            ),
        ];
        for (name, kind, help, value) in per_host {
            let mut f = family(&mut out, name, kind, help);
            for h in top.hosts.iter().chain([&top.rest]) {
                f.sample(&[("job", s.job.as_str()), ("host", &h.host)], value(h));
            }
        }
        out
    }
}

impl Status {
    /// The one-line progress figure: `[#####·····] 50% done 12345 dead 12 … · 3400 URLs/s · … ETA 1m12s`.
    pub fn line(&self) -> String {
        const WIDTH: usize = 20;
        let filled = ((self.fraction_done * WIDTH as f64).round() as usize).min(WIDTH);
        let bar = format!(
            "[{}{}] {:>3.0}% ",
            "#".repeat(filled),
            "·".repeat(WIDTH - filled),
            self.fraction_done * 100.0
        );
        let eta = match self.eta_s {
            Some(s) if s.is_finite() => {
                let s = s.round() as u64;
                format!("{}m{:02}s", s / 60, s % 60)
            }
            _ => "?".into(),
        };
        format!(
            "{bar}done {} dead {} dup {} retries {} in flight {} · {:.0} URLs/s · {:.1} MB · input {:.0}% · ETA {eta}",
            self.done,
            self.dead,
            self.duplicates,
            self.retries,
            self.in_flight,
            self.urls_per_s,
            self.bytes as f64 / 1e6,
            self.input_fraction * 100.0,
        )
    }
}
