//! The crawler over real HTTP against the real simulator, in process, on
//! loopback ports. The simulator's per-account read counter proves that each
//! account was read exactly once per observation: no duplicate, no retry of
//! a served request.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use trawler_crawl::{ErrorKind, Event, GapReason, Observation};
use trawler_sim::{Faults, SimConfig, Simulator};

const FIRST_PK: u64 = 1_000_000;

struct RunningSim {
    sim: Simulator,
    base: String,
    _stop: oneshot::Sender<()>,
}

async fn simulator(accounts: u32, faults: Faults) -> RunningSim {
    let sim = SimConfig {
        accounts,
        first_pk: FIRST_PK,
        seed: 7,
        faults,
        ..SimConfig::default()
    }
    .build()
    .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = oneshot::channel::<()>();
    let served = sim.clone();
    tokio::spawn(async move {
        served
            .serve(listener, async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
    });
    RunningSim {
        sim,
        base,
        _stop: stop,
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Runs a crawl for `seconds`, then shuts it down and returns every event
/// and the final metrics.
async fn crawl(
    job: trawler_crawl::Job,
    seconds: f64,
) -> (Vec<Event>, trawler_crawl::MetricsSnapshot) {
    let (tx, mut rx) = mpsc::channel(100_000);
    let crawl = trawler_crawl::start_http(job, tx).unwrap();
    tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
    let report = crawl.shutdown(Duration::from_secs(3)).await;
    assert_eq!(report.abandoned, 0);
    (common::drain(&mut rx), report.metrics)
}

fn observations(events: &[Event]) -> BTreeMap<u64, Vec<&Observation>> {
    let mut by_id: BTreeMap<u64, Vec<&Observation>> = BTreeMap::new();
    for event in events {
        if let Event::Observation(o) = event {
            by_id.entry(o.id).or_default().push(o);
        }
    }
    by_id
}

/// Every account got exactly as many reads as observations.
fn assert_one_read_per_observation(
    sim: &Simulator,
    by_id: &BTreeMap<u64, Vec<&Observation>>,
    ids: std::ops::Range<u64>,
) {
    let now = now_ms();
    for pk in ids {
        let calls = sim.accounts().peek(pk, now).unwrap().calls;
        let seen = by_id.get(&pk).map_or(0, Vec::len) as u64;
        assert_eq!(
            calls, seen,
            "account {pk}: {calls} reads, {seen} observations"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_account_once_per_slot_aligned_and_without_gaps() {
    let target = simulator(200, Faults::default()).await;
    // `skip` keeps the grid fixed whatever the machine's hiccups.
    let job = common::job_overload("skip", &target.base, "1000000..1000200", "1s", "");
    let (events, metrics) = crawl(job, 3.6).await;

    assert_eq!(metrics.gaps, 0, "{metrics:?}");
    assert!(events.iter().all(|e| matches!(e, Event::Observation(_))));
    let by_id = observations(&events);
    assert_eq!(by_id.len(), 200);
    for (id, obs) in &by_id {
        assert!(
            (3..=4).contains(&obs.len()),
            "id {id}: {} observations",
            obs.len()
        );
        let phase = trawler_crawl::schedule::phase(*id, 1_000) as i64;
        for pair in obs.windows(2) {
            assert_eq!(
                pair[1].slot_ms - pair[0].slot_ms,
                1_000,
                "id {id}: one slot per interval"
            );
        }
        for o in obs {
            assert_eq!(
                o.slot_ms.rem_euclid(1_000),
                phase,
                "id {id}: slot on the grid"
            );
            assert!(o.values[0] >= 5_000.0 && o.values[1] >= 50.0);
            assert!((o.values[2] - o.values[0] / o.values[1]).abs() < 1e-9);
        }
    }
    assert_one_read_per_observation(&target.sim, &by_id, FIRST_PK..FIRST_PK + 200);
    assert!(
        metrics.lag_p99_ms.unwrap() < 500.0,
        "lag {:?}",
        metrics.lag_p99_ms
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_errors_are_retried_and_never_double_read() {
    let target = simulator(
        300,
        Faults {
            error_rate: 0.2,
            ..Faults::default()
        },
    )
    .await;
    let job = common::job(
        &target.base,
        "1000000..1000300",
        "1s",
        "retries = 2\nbackoff = \"20ms\"",
    );
    let (events, metrics) = crawl(job, 3.6).await;

    let by_id = observations(&events);
    assert_one_read_per_observation(&target.sim, &by_id, FIRST_PK..FIRST_PK + 300);
    let gaps: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            Event::Gap(g) => Some(g),
            _ => None,
        })
        .collect();
    // A gap only after three 503s in a row (0.2³ = 0.8 % of slots).
    for gap in &gaps {
        assert_eq!(
            gap.reason,
            GapReason::Failed {
                kind: ErrorKind::Status5xx,
                attempts: 3
            }
        );
    }
    let slots = events.len() as f64;
    assert!(
        (gaps.len() as f64) < slots * 0.03,
        "{} gaps in {slots} slots",
        gaps.len()
    );
    assert!(
        metrics.retries > 0
            && metrics.errors_of(ErrorKind::Status5xx) == metrics.retries + gaps.len() as u64
    );
    // Every id recovers: most of its slots are observations.
    for id in FIRST_PK..FIRST_PK + 300 {
        assert!(
            by_id.get(&id).map_or(0, Vec::len) >= 2,
            "id {id} did not recover"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn added_latency_shows_as_lag() {
    let target = simulator(
        200,
        Faults {
            latency: Duration::from_millis(150),
            ..Faults::default()
        },
    )
    .await;
    let job = common::job(&target.base, "1000000..1000200", "1s", "");
    let (events, metrics) = crawl(job, 3.6).await;

    let by_id = observations(&events);
    assert_one_read_per_observation(&target.sim, &by_id, FIRST_PK..FIRST_PK + 200);
    let p50 = metrics.lag_p50_ms.unwrap();
    assert!((150.0..1_000.0).contains(&p50), "lag p50 {p50} ms");
    assert!(by_id.len() == 200 && by_id.values().all(|o| o.len() >= 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_ids_are_reported_and_not_polled_again() {
    let target = simulator(200, Faults::default()).await;
    // 1000190..1000199 exist; 1000200..1000209 do not.
    let job = common::job(&target.base, "1000190..1000210", "500ms", "");
    let (tx, mut rx) = mpsc::channel(10_000);
    let crawl = trawler_crawl::start_http(job, tx).unwrap();
    tokio::time::sleep(Duration::from_millis(2_200)).await;
    assert_eq!(
        crawl.invalid_ids(),
        (1_000_200..1_000_210).collect::<Vec<_>>()
    );
    assert_eq!(crawl.tracked_count(), 10);
    let metrics = crawl.shutdown(Duration::from_secs(2)).await.metrics;
    // Four intervals, yet one not-found answer per invalid id.
    assert_eq!(metrics.errors_of(ErrorKind::NotFound), 10);
    assert_eq!(metrics.gauges.invalid, 10);
    let events = common::drain(&mut rx);
    let invalid = events
        .iter()
        .filter(|e| matches!(e, Event::Invalid { .. }))
        .count();
    assert_eq!(invalid, 10);
    assert_eq!(metrics.gaps, 0);
}

/// A target answering `200` with a body that is not JSON.
async fn garbage_server() -> (String, Arc<AtomicU64>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let requests = Arc::new(AtomicU64::new(0));
    let counter = requests.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let counter = counter.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |_req| {
                    counter.fetch_add(1, Ordering::SeqCst);
                    let body = Bytes::from_static(br#"{"followerCount": 12, oops"#);
                    async move { Ok::<_, Infallible>(hyper::Response::new(Full::new(body))) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (base, requests)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_json_is_counted_not_retried_and_never_panics() {
    let (base, requests) = garbage_server().await;
    let job = common::job(&base, "1..=50", "500ms", "");
    let (events, metrics) = crawl(job, 1.8).await;

    let malformed = metrics.errors_of(ErrorKind::Malformed);
    assert!(malformed >= 150, "{metrics:?}");
    assert_eq!(
        malformed,
        requests.load(Ordering::SeqCst),
        "one request per slot, no retry"
    );
    assert_eq!(metrics.polls_ok, 0);
    let mut per_id: HashMap<u64, usize> = HashMap::new();
    for event in &events {
        let Event::Gap(gap) = event else {
            panic!("{event:?}")
        };
        assert_eq!(
            gap.reason,
            GapReason::Failed {
                kind: ErrorKind::Malformed,
                attempts: 1
            }
        );
        *per_id.entry(gap.id).or_default() += 1;
    }
    assert_eq!(per_id.len(), 50);
    assert_eq!(events.len() as u64, malformed);
}

/// A rate-limited target answering `429` with `Retry-After: 1` beyond
/// 50 requests/s, asked for 200/s: the whole crawl backs off for the
/// second after each `429`, so the target sees a handful of requests per
/// second, not a retry storm of hundreds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_from_a_rate_limited_target_backs_off_the_whole_crawl() {
    let target = simulator(
        200,
        Faults {
            max_rps: 50.0,
            retry_after: Some(Duration::from_secs(1)),
            ..Faults::default()
        },
    )
    .await;
    let http = "min_in_flight = 4\nmax_in_flight = 4\nretries = 3\nbackoff = \"20ms\"";
    let job = common::job(&target.base, "1000000..1000200", "1s", http);
    let (events, metrics) = crawl(job, 5.0).await;

    let counters = target.sim.counters();
    let limited = counters.rate_limited.load(Ordering::Relaxed);
    let reads = target.sim.accounts().reads();
    assert!(limited > 0, "the target rate-limited the crawl");
    assert!(metrics.pauses > 0, "{metrics:?}");
    // Per pause of a second: the requests already in flight (4) and the
    // target's burst (5) at most. Without the pause, 200 ids a second
    // retried three times would send well over a thousand.
    assert!(
        limited + reads <= 6 * (4 + 5) + 10,
        "{limited} answered 429, {reads} read in 5 s"
    );
    assert!(reads > 0 && observations(&events).len() as u64 <= reads);
}

/// Polls `check` every 100 ms until it returns `Some`, for at most
/// `deadline`.
async fn until<T>(deadline: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let end = tokio::time::Instant::now() + deadline;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < end,
            "condition not met within {deadline:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A target slower than the schedule, then recovered, over real HTTP: the
/// simulator serves 250 requests/s (the rest queue) to a job asking 1,000/s.
/// Under the default `stretch` the shortfall is announced with the
/// effective interval, every account is read in turn (all within one
/// sample of the median), and once the target recovers the announcement
/// clears and the interval is the configured one again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_target_is_announced_covered_evenly_and_cleared_on_recovery() {
    let target = simulator(
        1_000,
        Faults {
            max_rps: 250.0,
            ..Faults::default()
        },
    )
    .await;
    let job = common::job(&target.base, "1000000..1001000", "1s", "");
    let (tx, mut rx) = mpsc::channel(1_000_000);
    let crawl = trawler_crawl::start_http(job, tx).unwrap();
    let s = until(Duration::from_secs(60), || {
        let s = crawl.metrics().schedule;
        s.behind.then_some(s)
    })
    .await;
    assert_eq!(s.needed_per_sec, 1_000.0);
    assert!(s.achieved_per_sec <= 250.0 * 1.5, "{s:?}");
    assert!(
        (2_000.0..=10_000.0).contains(&s.effective_interval_ms),
        "{s:?}"
    );
    // About three effective intervals, then the coverage so far.
    tokio::time::sleep(Duration::from_secs(12)).await;
    let events = common::drain(&mut rx);
    let counts: Vec<usize> = observations(&events).values().map(Vec::len).collect();
    assert_eq!(counts.len(), 1_000, "every account read");
    common::assert_within_one_of_the_median(counts);
    assert_eq!(crawl.metrics().missed_slots, 0);

    // The target recovers.
    target.sim.set_max_rps(0.0);
    let s = until(Duration::from_secs(60), || {
        let s = crawl.metrics().schedule;
        (!s.behind).then_some(s)
    })
    .await;
    assert_eq!(s.effective_interval_ms, 1_000.0, "{s:?}");
    let report = crawl.shutdown(Duration::from_secs(3)).await;
    assert_eq!(report.metrics.missed_slots, 0);
}
