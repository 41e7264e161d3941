//! Deterministic tests of the scheduling logic: the real dispatcher, slot
//! tasks and limiter, a scripted in-memory target, and paused tokio time.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::time::Instant;
use trawler_crawl::{ErrorKind, Event, Fetch, GapReason, Response, TransportError};

/// What the scripted target does with one call.
#[derive(Debug, Clone, Copy)]
enum Behave {
    /// Reads the account, then answers after the latency.
    Ok(Duration),
    /// Answers 503 at once, without reading.
    Unavailable,
    /// Fails to connect.
    Refused,
    /// Reads the account but never answers in time.
    Hang,
    /// Answers Mockstagram's not-found.
    NotFound,
    /// Answers 429 with `Retry-After`, without reading.
    TooMany(Duration),
}

type Script = dyn Fn(u64, usize) -> Behave + Send + Sync;

/// Per id: (time of call since start, whether it read the account).
type Calls = HashMap<u64, Vec<(Duration, bool)>>;

/// An in-memory target that records every call and every read.
#[derive(Clone)]
struct Target {
    start: Instant,
    calls: Arc<Mutex<Calls>>,
    in_flight: Arc<AtomicUsize>,
    max_in_flight: Arc<AtomicUsize>,
    script: Arc<Script>,
}

impl Target {
    fn new(script: impl Fn(u64, usize) -> Behave + Send + Sync + 'static) -> Self {
        Self {
            start: Instant::now(),
            calls: Arc::default(),
            in_flight: Arc::default(),
            max_in_flight: Arc::default(),
            script: Arc::new(script),
        }
    }

    fn calls(&self) -> Calls {
        self.calls.lock().unwrap().clone()
    }

    /// When every call started, all ids together, in order.
    fn call_times(&self) -> Vec<Duration> {
        let mut times: Vec<Duration> = self
            .calls()
            .values()
            .flat_map(|c| c.iter().map(|(at, _)| *at))
            .collect();
        times.sort();
        times
    }
}

struct InFlight(Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Fetch for Target {
    async fn get(&self, id: u64) -> Result<Response, TransportError> {
        let n = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_in_flight.fetch_max(n, Ordering::SeqCst);
        let _guard = InFlight(self.in_flight.clone());
        let call = {
            let mut calls = self.calls.lock().unwrap();
            calls.entry(id).or_default().len()
        };
        let behave = (self.script)(id, call);
        let reads = matches!(behave, Behave::Ok(_) | Behave::Hang);
        self.calls
            .lock()
            .unwrap()
            .entry(id)
            .or_default()
            .push((self.start.elapsed(), reads));
        match behave {
            Behave::Ok(latency) => {
                tokio::time::sleep(latency).await;
                let body = format!(
                    r#"{{"pk":{id},"followerCount":{},"followingCount":100}}"#,
                    1_000 + call
                );
                Ok(Response {
                    status: 200,
                    body: Bytes::from(body),
                    retry_after: None,
                })
            }
            Behave::Unavailable => Ok(Response {
                status: 503,
                body: Bytes::from_static(b"{}"),
                retry_after: None,
            }),
            Behave::Refused => Err(TransportError {
                maybe_sent: false,
                message: "refused".into(),
            }),
            Behave::Hang => {
                tokio::time::sleep(Duration::from_secs(3_600)).await;
                unreachable!("the crawler times out first")
            }
            Behave::NotFound => Ok(Response {
                status: 500,
                body: Bytes::from_static(br#"{"error":{"name":"InfluencerNotFoundError"}}"#),
                retry_after: None,
            }),
            Behave::TooMany(after) => Ok(Response {
                status: 429,
                body: Bytes::from_static(b"{}"),
                retry_after: Some(after),
            }),
        }
    }
}

const HTTP: &str = r#"
min_in_flight = 1000
max_in_flight = 1000
request_timeout = "300ms"
retries = 2
backoff = "50ms"
"#;

fn job(ids: &str, interval: &str, http: &str) -> trawler_crawl::Job {
    common::job("http://127.0.0.1:9", ids, interval, http)
}

#[tokio::test(start_paused = true)]
async fn flat_phases_and_exactly_one_poll_per_id_per_interval() {
    let target = Target::new(|_, _| Behave::Ok(Duration::from_millis(5)));
    let (tx, mut rx) = mpsc::channel(100_000);
    let crawl = trawler_crawl::start(job("1..=2000", "1s", HTTP), target.clone(), tx);
    tokio::time::sleep(Duration::from_millis(5_500)).await;
    let metrics = crawl.metrics();
    crawl.shutdown(Duration::from_secs(1)).await;
    let events = common::drain(&mut rx);

    let calls = target.calls();
    assert_eq!(calls.len(), 2_000, "every id polled");
    let mut per_window = [0u32; 10];
    for (id, calls) in &calls {
        assert!((5..=6).contains(&calls.len()), "id {id}: {calls:?}");
        for pair in calls.windows(2) {
            let gap = pair[1].0 - pair[0].0;
            // Slots are one interval apart; the dispatcher ticks every 2 ms.
            assert!(
                gap.abs_diff(Duration::from_secs(1)) <= Duration::from_millis(3),
                "id {id}: {calls:?}"
            );
        }
        // Calls per tenth of the interval, over whole intervals 1..5.
        for (at, _) in calls {
            if (Duration::from_secs(1)..Duration::from_secs(5)).contains(at) {
                per_window[(at.as_millis() % 1_000 / 100) as usize] += 1;
            }
        }
    }
    // 2,000 ids × 4 intervals / 10 windows = 800 per window (σ ≈ 27).
    for n in per_window {
        assert!((650..=950).contains(&n), "not flat: {per_window:?}");
    }

    let mut slots = HashSet::new();
    for event in &events {
        let Event::Observation(o) = event else {
            panic!("unexpected {event:?}")
        };
        assert!(
            slots.insert((o.id, o.slot_ms)),
            "two observations for one slot"
        );
        let phase = trawler_crawl::schedule::phase(o.id, 1_000) as i64;
        assert_eq!(
            o.slot_ms.rem_euclid(1_000),
            phase,
            "slot time on the id's grid"
        );
        assert_eq!(o.values.len(), 3);
    }
    assert_eq!(events.len(), calls.values().map(Vec::len).sum::<usize>());
    assert_eq!(metrics.gaps, 0);
    assert!(
        metrics.lag_p99_ms.unwrap() <= 10.0,
        "lag {:?}",
        metrics.lag_p99_ms
    );
}

#[tokio::test(start_paused = true)]
async fn retries_only_what_was_not_served() {
    // id % 3 == 0: a 503 on the first call of each slot, then fine.
    // id % 3 == 1: the target reads, then never answers (timeout).
    // id % 3 == 2: connection refused, always.
    let target = Target::new(|id, call| match id % 3 {
        0 if call % 2 == 0 => Behave::Unavailable,
        0 => Behave::Ok(Duration::from_millis(1)),
        1 => Behave::Hang,
        _ => Behave::Refused,
    });
    let (tx, mut rx) = mpsc::channel(100_000);
    let crawl = trawler_crawl::start(job("1..=300", "1s", HTTP), target.clone(), tx);
    tokio::time::sleep(Duration::from_millis(4_500)).await;
    let metrics = crawl.shutdown(Duration::from_secs(1)).await.metrics;
    let events = common::drain(&mut rx);

    let mut outcomes: HashMap<u64, Vec<&Event>> = HashMap::new();
    let mut slots = HashSet::new();
    for event in &events {
        let (id, slot) = match event {
            Event::Observation(o) => (o.id, o.slot_ms),
            Event::Gap(g) => (g.id, g.slot_ms),
            Event::Invalid { .. } => panic!("no invalid ids here"),
        };
        assert!(slots.insert((id, slot)), "one event per slot");
        outcomes.entry(id).or_default().push(event);
    }
    for (id, calls) in target.calls() {
        let reads: Vec<Duration> = calls.iter().filter(|c| c.1).map(|c| c.0).collect();
        // No slot is read twice: reads of one id are an interval apart.
        for pair in reads.windows(2) {
            assert!(
                pair[1] - pair[0] >= Duration::from_millis(800),
                "id {id} read twice in a slot: {calls:?}"
            );
        }
        let events = &outcomes[&id];
        match id % 3 {
            0 => {
                assert_eq!(calls.len(), 2 * events.len(), "one retry per slot");
                assert!(events.iter().all(|e| matches!(e, Event::Observation(_))));
                assert_eq!(reads.len(), events.len());
            }
            1 => {
                assert_eq!(calls.len(), events.len(), "a timeout is never retried");
                assert!(events.iter().all(|e| matches!(
                    e,
                    Event::Gap(g) if g.reason == GapReason::Failed { kind: ErrorKind::Timeout, attempts: 1 }
                )));
            }
            _ => {
                assert_eq!(calls.len(), 3 * events.len(), "two retries, then a gap");
                assert!(events.iter().all(|e| matches!(
                    e,
                    Event::Gap(g) if g.reason == GapReason::Failed { kind: ErrorKind::Connect, attempts: 3 }
                )));
                assert_eq!(reads.len(), 0);
            }
        }
    }
    assert_eq!(
        metrics.errors_of(ErrorKind::Timeout),
        metrics.gaps - metrics.errors_of(ErrorKind::Connect) / 3
    );
    assert_eq!(
        metrics.retries,
        metrics.errors_of(ErrorKind::Status5xx) + 2 * metrics.errors_of(ErrorKind::Connect) / 3
    );
}

#[tokio::test(start_paused = true)]
async fn a_slow_target_means_missed_slots_not_a_queue() {
    // 200 ids per second but only 4 requests of 100 ms at once: 40/s.
    let target = Target::new(|_, _| Behave::Ok(Duration::from_millis(100)));
    let http = "max_in_flight = 4\ninitial_in_flight = 4\nrequest_timeout = \"5s\"";
    let (tx, mut rx) = mpsc::channel(100_000);
    let crawl = trawler_crawl::start(
        job_overload("skip", "1..=200", "1s", http),
        target.clone(),
        tx,
    );
    tokio::time::sleep(Duration::from_millis(5_000)).await;
    let metrics = crawl.metrics();
    crawl.shutdown(Duration::from_secs(1)).await;
    let events = common::drain(&mut rx);

    assert_eq!(target.max_in_flight.load(Ordering::SeqCst), 4);
    let observations = events
        .iter()
        .filter(|e| matches!(e, Event::Observation(_)))
        .count();
    let missed = events
        .iter()
        .filter(|e| matches!(e, Event::Gap(g) if g.reason == GapReason::Missed))
        .count();
    assert_eq!(observations + missed, events.len());
    // 5 s at 40/s, plus what finished during shutdown.
    assert!((196..=204).contains(&observations), "{observations}");
    // Slots handed out lag the schedule by at most an interval: ~4–5 s worth.
    assert!(
        (600..=1_000).contains(&(observations + missed)),
        "{observations} + {missed}"
    );
    assert_eq!(metrics.missed_slots as usize, missed);
    let unique: HashSet<(u64, i64)> = events
        .iter()
        .map(|e| match e {
            Event::Observation(o) => (o.id, o.slot_ms),
            Event::Gap(g) => (g.id, g.slot_ms),
            Event::Invalid { id } => (*id, 0),
        })
        .collect();
    assert_eq!(unique.len(), events.len(), "one event per slot");
}

#[tokio::test(start_paused = true)]
async fn track_and_untrack_take_effect_without_restart() {
    let target = Target::new(|_, _| Behave::Ok(Duration::from_millis(1)));
    let (tx, mut rx) = mpsc::channel(100_000);
    let crawl = trawler_crawl::start(job("1..=100", "1s", HTTP), target.clone(), tx);
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    for id in 1..=50 {
        assert!(crawl.untrack(id));
    }
    assert!(!crawl.untrack(1));
    assert_eq!(crawl.track(1_000..1_050), 50);
    assert_eq!(crawl.track([1_000, 60]), 0, "already tracked");
    assert_eq!(crawl.tracked_count(), 100);
    assert_eq!(crawl.tracked_ids().to_string(), "51..=100,1000..=1049");
    let changed = target.start.elapsed();
    tokio::time::sleep(Duration::from_millis(3_000)).await;
    crawl.shutdown(Duration::from_secs(1)).await;
    let _ = common::drain(&mut rx);

    let calls = target.calls();
    for id in 1..=50 {
        let after = calls[&id].iter().filter(|c| c.0 > changed).count();
        assert_eq!(after, 0, "untracked id {id} still polled");
    }
    for id in 51..=100 {
        assert!(
            (4..=5).contains(&calls[&id].len()),
            "id {id}: {:?}",
            calls[&id]
        );
    }
    for id in 1_000..1_050 {
        // Read at once, then once per interval.
        let n = calls[&id].len();
        assert!(
            (3..=4).contains(&n),
            "new id {id} polled once per interval: {:?}",
            calls[&id]
        );
        // "At once" with room for a loaded machine: a quarter interval.
        // Waiting for their phases instead, the 50 new ids' first reads
        // would spread over the whole second (all 50 inside the first
        // quarter by chance: 0.25^50).
        assert!(
            calls[&id][0].0 - changed <= Duration::from_millis(250),
            "new id {id} read at once: {:?}",
            calls[&id]
        );
        // Not polled before it was tracked (a first slot may fall in the
        // very millisecond of the change: the grid follows the wall clock).
        assert!(
            calls[&id].iter().all(|c| c.0 >= changed),
            "{:?}",
            calls[&id]
        );
    }
}

#[tokio::test(start_paused = true)]
async fn invalid_ids_are_reported_and_dropped() {
    let target = Target::new(|id, _| {
        if id > 10 {
            Behave::NotFound
        } else {
            Behave::Ok(Duration::from_millis(1))
        }
    });
    let (tx, mut rx) = mpsc::channel(100_000);
    let crawl = trawler_crawl::start(job("1..=15", "1s", HTTP), target.clone(), tx);
    tokio::time::sleep(Duration::from_millis(3_500)).await;
    assert_eq!(crawl.invalid_ids(), [11, 12, 13, 14, 15]);
    assert_eq!(crawl.tracked_count(), 10);
    let metrics = crawl.metrics();
    assert_eq!(metrics.gauges.invalid, 5);
    assert_eq!(metrics.errors_of(ErrorKind::NotFound), 5);
    crawl.shutdown(Duration::from_secs(1)).await;
    let events = common::drain(&mut rx);
    let invalid: Vec<u64> = events
        .iter()
        .filter_map(|e| match e {
            Event::Invalid { id } => Some(*id),
            _ => None,
        })
        .collect();
    assert_eq!(invalid.len(), 5);
    for id in 11..=15 {
        assert_eq!(target.calls()[&id].len(), 1, "invalid id {id} polled again");
    }
}

#[tokio::test(start_paused = true)]
async fn shutdown_finishes_or_abandons_within_the_grace() {
    // Requests of 300–500 ms: about 400 in flight at any time.
    let target = Target::new(|id, _| Behave::Ok(Duration::from_millis(300 + id % 200)));
    let http = "request_timeout = \"5s\"\nmin_in_flight = 1000\nmax_in_flight = 1000";
    let (tx, _rx) = mpsc::channel(100_000);
    let crawl = trawler_crawl::start(job("1..=1000", "1s", http), target.clone(), tx);
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    let stopped = Instant::now();
    let report = crawl.shutdown(Duration::from_millis(100)).await;
    assert!(stopped.elapsed() <= Duration::from_millis(110));
    assert!(
        report.in_flight > 200 && report.abandoned > 100,
        "{report:?}"
    );
    assert!(report.abandoned < report.in_flight);
    assert_eq!(report.metrics.abandoned, report.abandoned);
    assert_eq!(
        target.in_flight.load(Ordering::SeqCst),
        0,
        "abandoned requests are dropped"
    );

    let (tx, _rx) = mpsc::channel(100_000);
    let crawl = trawler_crawl::start(job("1..=1000", "1s", http), target.clone(), tx);
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    let report = crawl.shutdown(Duration::from_secs(1)).await;
    assert!(
        report.in_flight > 200 && report.abandoned == 0,
        "{report:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn max_rate_caps_every_attempt_retries_included() {
    // Every tenth call answers 503 (retried): retries count against the cap.
    let target = Target::new(|_, call| {
        if call % 10 == 9 {
            Behave::Unavailable
        } else {
            Behave::Ok(Duration::from_millis(2))
        }
    });
    let (tx, mut rx) = mpsc::channel(100_000);
    // 1,000 ids every second want 1,000 requests/s; the cap is 200.
    let http = format!("{HTTP}max_rate = 200\n");
    let crawl = trawler_crawl::start(job("1..=1000", "1s", &http), target.clone(), tx);
    tokio::time::sleep(Duration::from_millis(5_000)).await;
    let metrics = crawl.shutdown(Duration::from_secs(1)).await.metrics;
    common::drain(&mut rx);
    let times = target.call_times();
    // In any one second: at most the rate plus the bucket's burst (a tenth).
    for (i, start) in times.iter().enumerate() {
        let within = times[i..]
            .iter()
            .take_while(|t| **t < *start + Duration::from_secs(1))
            .count();
        assert!(
            within <= 220,
            "{within} calls in the second after {start:?}"
        );
    }
    assert!(
        times.len() >= 900,
        "the cap is used: {} calls in 5 s; {metrics:?}",
        times.len()
    );
}

#[tokio::test(start_paused = true)]
async fn retry_after_pauses_every_id_not_only_the_one_answered() {
    // The first call the target sees answers 429 with Retry-After: 3 s;
    // after that it answers normally.
    let seen = Arc::new(AtomicUsize::new(0));
    let target = {
        let seen = seen.clone();
        Target::new(move |_, _| {
            if seen.fetch_add(1, Ordering::SeqCst) == 0 {
                Behave::TooMany(Duration::from_secs(3))
            } else {
                Behave::Ok(Duration::from_millis(1))
            }
        })
    };
    let (tx, mut rx) = mpsc::channel(100_000);
    let crawl = trawler_crawl::start(job("1..=500", "2s", HTTP), target.clone(), tx);
    tokio::time::sleep(Duration::from_millis(6_000)).await;
    let metrics = crawl.shutdown(Duration::from_secs(1)).await.metrics;
    common::drain(&mut rx);
    let times = target.call_times();
    // Calls dispatched in the same instant as the first were already on
    // their way; none may start after it within the pause.
    let first = times[0];
    let inside: Vec<Duration> = times
        .iter()
        .filter(|t| **t > first && **t < first + Duration::from_secs(3))
        .map(|t| *t - first)
        .collect();
    assert!(
        inside.is_empty(),
        "calls inside the Retry-After pause: {inside:?}"
    );
    assert_eq!(metrics.pauses, 1);
    assert!(times.len() > 500, "polling resumed: {} calls", times.len());
}

/// Ten requests in flight at most, a fixed limit.
const TEN_IN_FLIGHT: &str = "min_in_flight = 10\nmax_in_flight = 10\nrequest_timeout = \"1s\"\n";

/// A target answering in 100 ms while the flag is set, in 1 ms after.
fn slow_then_fast() -> (Target, Arc<std::sync::atomic::AtomicBool>) {
    let slow = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let flag = slow.clone();
    let target = Target::new(move |_, _| {
        if flag.load(Ordering::SeqCst) {
            Behave::Ok(Duration::from_millis(100))
        } else {
            Behave::Ok(Duration::from_millis(1))
        }
    });
    (target, slow)
}

#[tokio::test(start_paused = true)]
async fn a_schedule_that_cannot_be_held_is_announced_and_cleared_on_recovery() {
    // Ten requests in flight at most: at 100 ms a call the target serves
    // 100/s, a tenth of what 1,000 ids every second need; at 1 ms, plenty.
    let (target, slow) = slow_then_fast();
    let http = TEN_IN_FLIGHT;
    let (tx, mut rx) = mpsc::channel(1_000_000);
    let crawl = trawler_crawl::start(
        job_overload("skip", "1..=1000", "1s", http),
        target.clone(),
        tx,
    );
    tokio::time::sleep(Duration::from_secs(15)).await;
    let s = crawl.metrics().schedule;
    assert!(s.behind, "{s:?}");
    assert_eq!(s.needed_per_sec, 1_000.0);
    assert!((80.0..=120.0).contains(&s.achieved_per_sec), "{s:?}");
    assert!(
        (8_000.0..=12_500.0).contains(&s.effective_interval_ms),
        "{s:?}"
    );
    slow.store(false, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(15)).await;
    let s = crawl.metrics().schedule;
    assert!(!s.behind, "recovered: {s:?}");
    assert_eq!(s.effective_interval_ms, 1_000.0);
    crawl.shutdown(Duration::from_secs(1)).await;
    common::drain(&mut rx);
}

/// The job of [`job`] with `[job] overload = "{policy}"`.
fn job_overload(policy: &str, ids: &str, interval: &str, http: &str) -> trawler_crawl::Job {
    common::job_overload(policy, "http://127.0.0.1:9", ids, interval, http)
}

#[tokio::test(start_paused = true)]
async fn stretch_covers_every_id_evenly_at_the_rate_the_target_allows_and_recovers() {
    // At most 10 in flight at 100 ms a call: 100 polls/s for 500 ids every
    // second (500/s needed), so each id is polled about every 5 s.
    let (target, slow) = slow_then_fast();
    let http = TEN_IN_FLIGHT;
    let (tx, mut rx) = mpsc::channel(1_000_000);
    // The crawl's clock: unix time read at its start, then paused time.
    let start_unix_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let crawl = trawler_crawl::start(
        job_overload("stretch", "1..=500", "1s", http),
        target.clone(),
        tx,
    );
    tokio::time::sleep(Duration::from_secs(40)).await;
    let s = crawl.metrics().schedule;
    assert!(s.behind, "{s:?}");
    assert!(
        (4_000.0..=6_500.0).contains(&s.effective_interval_ms),
        "{s:?}"
    );
    let slow_calls = target.calls();
    // Fair: every id within one poll of the median, evenly spaced.
    let counts: Vec<usize> = slow_calls.values().map(Vec::len).collect();
    assert_eq!(counts.len(), 500, "every id polled");
    common::assert_within_one_of_the_median(counts);
    for (id, calls) in &slow_calls {
        for pair in calls.windows(2).skip(1) {
            let gap = pair[1].0 - pair[0].0;
            assert!(
                (Duration::from_millis(3_500)..=Duration::from_millis(7_000)).contains(&gap),
                "id {id}: polls {gap:?} apart: {calls:?}"
            );
        }
    }
    // Recovery: the configured interval again, no slot missed on the way.
    slow.store(false, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(20)).await;
    let metrics = crawl.shutdown(Duration::from_secs(1)).await.metrics;
    assert!(!metrics.schedule.behind, "{:?}", metrics.schedule);
    assert_eq!(metrics.missed_slots, 0);
    assert_eq!(metrics.gaps, 0);
    for (id, calls) in target.calls() {
        let last = &calls[calls.len() - 3..];
        for pair in last.windows(2) {
            let gap = pair[1].0 - pair[0].0;
            assert!(
                gap.abs_diff(Duration::from_secs(1)) <= Duration::from_millis(30),
                "id {id}: after recovery polls {gap:?} apart"
            );
        }
    }
    // One observation per slot, stamped on increasing, distinct times, and
    // never after the read (a slot of a batch taken before a stretch waits
    // until it is due on the stretched schedule).
    let calls = target.calls();
    let mut nth: HashMap<u64, usize> = HashMap::new();
    let mut last: HashMap<u64, i64> = HashMap::new();
    for event in common::drain(&mut rx) {
        let Event::Observation(o) = event else {
            panic!("unexpected {event:?}")
        };
        let n = nth.entry(o.id).or_default();
        let read_ms = start_unix_ms + calls[&o.id][*n].0.as_millis() as i64;
        *n += 1;
        assert!(
            o.slot_ms <= read_ms + 5,
            "id {}: stamped {} ms after its read",
            o.id,
            o.slot_ms - read_ms
        );
        if let Some(before) = last.insert(o.id, o.slot_ms) {
            assert!(
                o.slot_ms > before,
                "id {}: {} after {before}",
                o.id,
                o.slot_ms
            );
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_newly_tracked_id_is_read_within_an_interval_even_under_overload() {
    // 1,000 ids every second against a target serving 100/s: the stretched
    // interval is about ten seconds.
    let (target, _slow) = slow_then_fast();
    let (tx, mut rx) = mpsc::channel(1_000_000);
    let crawl = trawler_crawl::start(job("1..=1000", "1s", TEN_IN_FLIGHT), target.clone(), tx);
    tokio::time::sleep(Duration::from_secs(12)).await;
    assert!(crawl.metrics().schedule.behind);
    let tracked_at = target.start.elapsed();
    assert_eq!(crawl.track([5_000, 5_001]), 2);
    tokio::time::sleep(Duration::from_secs(30)).await;
    crawl.shutdown(Duration::from_secs(1)).await;
    let events = common::drain(&mut rx);
    let calls = target.calls();
    for id in [5_000, 5_001] {
        let first = calls[&id][0].0;
        assert!(
            first >= tracked_at && first - tracked_at < Duration::from_secs(1),
            "id {id} first read {:?} after it was tracked",
            first - tracked_at
        );
        // Then in the fair rotation, about once per stretched interval.
        assert!((3..=6).contains(&calls[&id].len()), "{:?}", calls[&id]);
        let slots: Vec<i64> = events
            .iter()
            .filter_map(|e| match e {
                Event::Observation(o) if o.id == id => Some(o.slot_ms),
                _ => None,
            })
            .collect();
        // The first stamped when read, the next on the stretched grid.
        assert!(slots.windows(2).all(|w| w[1] > w[0]), "id {id}: {slots:?}");
        assert!(
            slots[1..].windows(2).all(|w| w[1] - w[0] >= 1_000),
            "id {id}: {slots:?}"
        );
    }
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, Event::Gap(g) if g.reason == GapReason::Missed)),
        "stretch misses no slot"
    );
}
