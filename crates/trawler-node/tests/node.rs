//! The ingest path and the read model as a library, without a process:
//! a node over a store in a temporary folder, observations handed to
//! `Node::ingest` as the crawl would, and reads through the API's
//! `Backend` implementation.

use std::sync::Arc;

use serde_json::Value;
use tokio::sync::mpsc;
use trawler_api::{Backend, JobShaped, Named, SeriesQuery, TopBy};
use trawler_crawl::{Event, JobConfig, Observation, Overrides};
use trawler_node::backend::NodeBackend;
use trawler_node::layout::Layout;
use trawler_node::node::Node;
use trawler_node::state::StateFiles;

struct Fixture {
    node: Arc<Node>,
    backend: NodeBackend<Node>,
    _dir: tempfile::TempDir,
}

impl Fixture {
    /// An answer as the API writes it: JSON, with the job's member names.
    fn json<T: JobShaped>(&self, answer: &T) -> Value {
        serde_json::to_value(Named::new(self.backend.info(), answer)).unwrap()
    }
}

/// A node for the built-in job's ids 1..=3 over a fresh store. Its crawl
/// has no consumer (the receiver is dropped), so it stops at once: every
/// observation here is handed in by the test.
fn fixture() -> Fixture {
    fixture_with(|_| {})
}

/// [`fixture`] with the store's configuration changed by `store`.
fn fixture_with(store: impl FnOnce(&mut trawler_store::StoreConfig)) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let mut store_config = trawler_store::StoreConfig::new(dir.path().join("store"));
    store(&mut store_config);
    let job = JobConfig::from_toml(trawler_node::DEFAULT_JOB, "mockstagram.toml")
        .unwrap()
        .build_with(&Overrides {
            target: Some("http://127.0.0.1:9".into()),
            ids: Some("1..=3".into()),
            ..Overrides::default()
        })
        .unwrap();
    let layout = Layout::of(&job).unwrap();
    let store = Arc::new(store_config.open().unwrap());
    let views = layout.views.build().unwrap();
    let (tx, rx) = mpsc::channel(16);
    drop(rx);
    let crawl = trawler_crawl::start_http(job.clone(), tx).unwrap();
    let node = Arc::new(Node::new(
        job.name().to_owned(),
        layout,
        store,
        views,
        crawl,
        StateFiles::in_folder(dir.path()),
    ));
    Fixture {
        backend: NodeBackend::new(node.clone(), &job, node.storage.clone()),
        node,
        _dir: dir,
    }
}

fn observation(id: u64, slot_ms: i64, followers: f64, following: f64) -> Event {
    Event::Observation(Observation {
        id,
        slot_ms,
        values: vec![followers, following, followers / following].into_boxed_slice(),
    })
}

fn all() -> SeriesQuery {
    SeriesQuery {
        from_ms: 0,
        to_ms: i64::MAX / 2,
        step_ms: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ingested_observation_is_stored_and_shown_at_once() {
    let f = fixture();
    let t = trawler_node::now_ms() - 60_000;
    // Not crawled yet: tracked, no values, an empty series.
    assert_eq!(
        f.backend.series(1, "followerCount", all()).unwrap(),
        Some(vec![])
    );
    f.node.ingest(&[
        observation(1, t, 10_000.0, 100.0),
        observation(2, t + 5, 50_000.0, 200.0),
        Event::Invalid { id: 3 },
    ]);
    f.node
        .ingest(&[observation(1, t + 60_000, 10_400.0, 100.0)]);

    // The series, stored fields and derived ones alike.
    assert_eq!(
        f.backend
            .series(1, "followerCount", all())
            .unwrap()
            .unwrap(),
        vec![(t, 10_000.0), (t + 60_000, 10_400.0)]
    );
    assert_eq!(
        f.backend
            .series(1, "followerRatio", all())
            .unwrap()
            .unwrap(),
        vec![(t, 100.0), (t + 60_000, 104.0)]
    );
    // The latest view, the rank and the stats.
    let e = f.json(&f.backend.entity(1).unwrap().unwrap());
    assert_eq!(e["followerCount"], 10_400, "{e:?}");
    assert_eq!(e["rank"], 2, "{e:?}");
    assert!(e["lastCrawledAt"].is_string(), "{e:?}");
    let top = f.json(&f.backend.top(TopBy::Ranked, 10));
    let order: Vec<u64> = top
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["pk"].as_u64().unwrap())
        .collect();
    assert_eq!(order, [2, 1]);
    let stats = f.json(&f.backend.stats());
    assert_eq!(stats["crawledAccounts"], 2, "{stats:?}");
    assert_eq!(stats["averageFollowerCount"], 30_200.0, "{stats:?}");
    // Not tracked: no entity, no series.
    assert_eq!(f.backend.entity(99).unwrap(), None);
    assert_eq!(f.backend.series(99, "followerCount", all()).unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sample_at_or_before_the_latest_stored_one_does_not_move_the_view() {
    let f = fixture();
    let t = trawler_node::now_ms() - 60_000;
    f.node.ingest(&[observation(1, t, 10_000.0, 100.0)]);
    // A replay of an older slot (e.g. after a restart) is not the latest.
    f.node.ingest(&[observation(1, t - 60_000, 9_000.0, 100.0)]);
    let e = f.json(&f.backend.entity(1).unwrap().unwrap());
    assert_eq!(e["followerCount"], 10_000, "{e:?}");
}

/// The enrichment (URL on the target, body from the job file's template)
/// and the average are named by the job file, not by the code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_enrichment_and_the_average_are_named_from_the_job() {
    let f = fixture();
    let job = f.node.crawl.job();
    assert_eq!(
        job.enrichments()[0].url,
        "http://127.0.0.1:9/api/v1/influencers/is_suspicious"
    );
    assert!(trawler_node::node::job_enrichment(job, None)
        .unwrap()
        .is_some());
    // No body before the first observation: the template names metrics.
    assert!(trawler_node::node::enrichment_body(job, &f.node.views, 1).is_none());
    let t = trawler_node::now_ms() - 60_000;
    f.node.ingest(&[observation(1, t, 10_000.0, 100.0)]);
    let body: serde_json::Value = serde_json::from_slice(
        &trawler_node::node::enrichment_body(job, &f.node.views, 1).unwrap(),
    )
    .unwrap();
    assert_eq!(
        body,
        serde_json::json!({"pk": 1, "username": "influencer-1", "followerCount": 10_000, "followingCount": 100})
    );
    assert_eq!(f.node.layout.average, "averageFollowerCount");
    let stats = f.json(&f.backend.stats());
    assert!(stats.get("averageFollowerCount").is_some(), "{stats:?}");
    assert!(stats.get("suspiciousCount").is_some(), "{stats:?}");
    assert_eq!(f.backend.info().flag.as_deref(), Some("suspicious"));
    assert_eq!(f.backend.info().key_name, "pk");
}

/// A failed fsync: the store refuses every write from then on, so the node
/// says it cannot go on (the embedded run stops and exits with the reason)
/// instead of crawling into a store that loses everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_refuses_writes_stops_the_node() {
    let fail = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let f = {
        let fail = fail.clone();
        fixture_with(move |c| {
            c.background = false;
            c.sync = trawler_store::SyncPolicy::Always;
            c.hooks.fsync = Some(Arc::new(move || {
                if fail.load(std::sync::atomic::Ordering::SeqCst) {
                    Err(std::io::Error::other("injected EIO"))
                } else {
                    Ok(())
                }
            }));
        })
    };
    let t = trawler_node::now_ms() - 60_000;
    f.node.ingest(&[observation(1, t, 10_000.0, 100.0)]);
    assert_eq!(*f.node.failure().borrow(), None);
    fail.store(true, std::sync::atomic::Ordering::SeqCst);
    f.node
        .ingest(&[observation(1, t + 60_000, 10_100.0, 100.0)]);
    let why = f.node.failure().borrow().clone();
    assert!(
        why.is_some_and(|w| w.contains("injected EIO")),
        "{:?}",
        f.node.failure().borrow()
    );
    // The refused batch is not shown as the latest either.
    assert_eq!(
        f.json(&f.backend.entity(1).unwrap().unwrap())["followerCount"],
        10_000
    );
}

/// The movers' references come from ingest itself (no store read on the
/// way in): an entity's first value of the previous clock hour is its 1 h
/// reference, so the gain is the latest value minus that one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn movers_are_fed_by_ingest_with_the_previous_hours_first_value() {
    const HOUR: i64 = 3_600_000;
    let f = fixture();
    let now = trawler_node::now_ms();
    let previous = now.div_euclid(HOUR) * HOUR - HOUR;
    f.node.ingest(&[
        observation(1, previous + 60_000, 100.0, 10.0),
        observation(2, previous + 60_000, 500.0, 10.0),
    ]);
    // Later in the same hour: not the hour's first value.
    f.node.ingest(&[
        observation(1, previous + 120_000, 150.0, 10.0),
        observation(2, previous + 120_000, 550.0, 10.0),
    ]);
    f.node.ingest(&[
        observation(1, now - 1, 1_000.0, 10.0),
        observation(2, now - 1, 400.0, 10.0),
    ]);
    let gainers = f.node.views.top_gainers(trawler_views::Window::Hour, 10);
    let losers = f.node.views.top_losers(trawler_views::Window::Hour, 10);
    assert_eq!(
        gainers.iter().map(|m| (m.id, m.gain)).collect::<Vec<_>>(),
        [(1, 900)]
    );
    assert_eq!(
        losers.iter().map(|m| (m.id, m.gain)).collect::<Vec<_>>(),
        [(2, -100)]
    );
}

/// The answers keep the members (and null-or-absent) they had as JSON
/// maps before they were typed: clients of the old answers read these.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_answers_keep_their_members() {
    let f = fixture();
    let t = trawler_node::now_ms() - 60_000;
    f.node.ingest(&[observation(1, t, 10_000.0, 100.0)]);
    let members = |v: &Value| -> Vec<String> {
        let mut names: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
        names.sort();
        names
    };
    let e = f.json(&f.backend.entity(1).unwrap().unwrap());
    assert_eq!(
        members(&e),
        [
            "followerCount",
            "followerRatio",
            "followingCount",
            "lastCrawledAt",
            "pk",
            "rank",
            "suspicious",
            "suspiciousCheckedAt",
            "username"
        ]
    );
    assert_eq!(e["followerRatio"], 100.0, "{e}");
    assert!(e["suspicious"].is_null(), "{e}");
    // Tracked, never crawled: every member, null.
    let e = f.json(&f.backend.entity(2).unwrap().unwrap());
    assert_eq!(members(&e).len(), 9, "{e}");
    assert!(e["lastCrawledAt"].is_null() && e["rank"].is_null(), "{e}");
    let stats = f.json(&f.backend.stats());
    assert_eq!(
        members(&stats),
        [
            "achievedPerSecond",
            "averageCovers",
            "averageFollowerCount",
            "behindSchedule",
            "bytesOnDisk",
            "bytesPerSample",
            "crawledAccounts",
            "effectiveIntervalMs",
            "errors",
            "gaps",
            "intervalMs",
            "invalidAccounts",
            "lagP50Ms",
            "lagP99Ms",
            "lastSuspiciousSweepProgress",
            "missedSlots",
            "neededPerSecond",
            "polls",
            "pollsPerSecond",
            "samplesStored",
            "suspiciousCount",
            "trackedAccounts"
        ]
    );
    let top = f.json(&f.backend.top(TopBy::Ranked, 10));
    assert_eq!(
        top[0],
        serde_json::json!({"pk": 1, "username": "influencer-1", "followerCount": 10_000, "rank": 1})
    );
    let movers = f.json(&f.backend.top(TopBy::Gain1h, 10));
    assert!(movers.is_array(), "{movers}");
}
