//! The Mockstagram contract, checked over real HTTP on a port-0 listener.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, StatusCode};
use serde_json::Value;
use trawler_sim::model::{mockstagram_initial, mockstagram_step, Counts};
use trawler_sim::{Dynamics, Faults, SimConfig};

use common::{start, Harness};

fn small() -> SimConfig {
    SimConfig {
        accounts: 1_000,
        seed: 7,
        ..SimConfig::default()
    }
}

impl Harness {
    async fn influencer(&self, pk: u64) -> Value {
        let (status, body) = self.get(&format!("/api/v1/influencers/{pk}")).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        serde_json::from_str(&body).unwrap()
    }

    async fn suspicious(&self, body: &str) -> (StatusCode, Value) {
        let (status, body) = self
            .call(Method::POST, "/api/v1/influencers/is_suspicious", body)
            .await;
        (status, serde_json::from_str(&body).unwrap())
    }
}

const NOT_FOUND: &str = r#"{"error":{"name":"InfluencerNotFoundError"}}"#;

#[tokio::test]
async fn get_answers_the_exact_shape() {
    let h = start(small()).await;
    let v = h.influencer(1_000_123).await;
    let object = v.as_object().unwrap();
    let mut keys: Vec<_> = object.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["followerCount", "followingCount", "pk", "username"]);
    assert_eq!(v["pk"], 1_000_123);
    assert_eq!(v["username"], "influencer-1000123");
    assert!(v["followerCount"].as_u64().unwrap() >= 5_000);
    assert!(v["followingCount"].as_u64().unwrap() >= 50);
}

#[tokio::test]
async fn every_get_moves_the_account_by_the_contract_step() {
    let h = start(small()).await;
    let pk = 1_000_500;
    let mut expected = mockstagram_initial(7, pk);
    for call in 0..20 {
        expected = mockstagram_step(7, pk, call, expected);
        let v = h.influencer(pk).await;
        assert_eq!(v["followerCount"], expected.followers);
        assert_eq!(v["followingCount"], expected.following);
    }
    let (_, body) = h.get(&format!("/_sim/accounts/{pk}")).await;
    let view: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(view["calls"], 20);
    // Peeking does not move the account.
    assert_eq!(view["followerCount"], expected.followers);
    let (_, again) = h.get(&format!("/_sim/accounts/{pk}")).await;
    assert_eq!(body, again);
}

#[tokio::test]
async fn pks_outside_the_range_or_not_integers_are_not_found() {
    let h = start(small()).await;
    for pk in [
        "999999",
        "1001000",
        "0",
        "abc",
        "1e6",
        "-1000001",
        "1000001.0",
        "%20",
        "is_suspicious",
    ] {
        let (status, body) = h.get(&format!("/api/v1/influencers/{pk}")).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "pk {pk}");
        assert_eq!(body, NOT_FOUND, "pk {pk}");
    }
    // The edges of the range exist.
    h.influencer(1_000_000).await;
    h.influencer(1_000_999).await;
}

#[tokio::test]
async fn unknown_paths_and_methods_are_404() {
    let h = start(small()).await;
    for (method, path) in [
        (Method::GET, "/"),
        (Method::GET, "/api/v1/influencers"),
        (Method::GET, "/api/v1/influencers/1000000/extra"),
        (Method::POST, "/api/v1/influencers/1000000"),
        (Method::DELETE, "/api/v1/influencers/1000000"),
        (Method::GET, "/_sim/accounts/5"),
    ] {
        let (status, body) = h.call(method.clone(), path, "").await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{method} {path}: {body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        assert!(v["error"]["name"].is_string());
    }
}

#[tokio::test]
async fn suspicious_rule_holds_on_both_sides_of_the_threshold() {
    let h = start(SimConfig {
        faults: Faults {
            suspicious_delay_scale: 0.0,
            ..Faults::default()
        },
        ..small()
    })
    .await;
    let threshold = h.sim.accounts().threshold();
    let following = 1_000.0;
    let at = (threshold * following).floor();
    let cases = [
        (at, true),
        (at - 1.0, true),
        ((threshold * following).ceil() + 1.0, false),
        (threshold * following * 10.0, false),
    ];
    for (followers, expected) in cases {
        let body = format!(
            r#"{{"pk":1000001,"username":"influencer-1000001","followerCount":{followers},"followingCount":{following}}}"#
        );
        let (status, v) = h.suspicious(&body).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            v,
            serde_json::json!({"pk": 1000001, "suspicious": expected}),
            "{body}"
        );
    }
    // Missing fields are never suspicious; the pk is echoed (null if absent).
    let (_, v) = h.suspicious(r#"{"pk":5,"followerCount":1}"#).await;
    assert_eq!(v, serde_json::json!({"pk": 5, "suspicious": false}));
    let (_, v) = h.suspicious("{}").await;
    assert_eq!(v, serde_json::json!({"pk": null, "suspicious": false}));
    // A pure function of the body: the same body, the same answer.
    let body = format!(r#"{{"pk":9,"followerCount":{at},"followingCount":1000}}"#);
    for _ in 0..3 {
        assert_eq!(h.suspicious(&body).await.1["suspicious"], true);
    }
}

#[tokio::test]
async fn suspicious_rejects_malformed_and_oversized_bodies() {
    let h = start(SimConfig {
        faults: Faults {
            suspicious_delay_scale: 0.0,
            ..Faults::default()
        },
        ..small()
    })
    .await;
    let (status, v) = h.suspicious(r#"{"pk":1,"followerCount":"#).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(v["error"]["name"], "BadRequestError");
    let huge = format!(r#"{{"pk":"{}"}}"#, "x".repeat(trawler_sim::MAX_BODY_BYTES));
    let (status, v) = h.suspicious(&huge).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(v["error"]["name"], "PayloadTooLargeError");
}

#[tokio::test]
async fn suspicious_delay_stays_within_its_bounds() {
    // Scaled by 0.05, the contract's [0, 10 s] becomes [0, 500 ms].
    let h = start(SimConfig {
        faults: Faults {
            suspicious_delay_scale: 0.05,
            ..Faults::default()
        },
        ..small()
    })
    .await;
    let h = std::sync::Arc::new(h);
    let tasks: Vec<_> = (0..40)
        .map(|i| {
            let h = h.clone();
            tokio::spawn(async move {
                let started = Instant::now();
                let (status, _) = h.suspicious(&format!(r#"{{"pk":{i}}}"#)).await;
                assert_eq!(status, StatusCode::OK);
                started.elapsed()
            })
        })
        .collect();
    let mut delays = Vec::new();
    for t in tasks {
        delays.push(t.await.unwrap());
    }
    assert!(
        delays.iter().all(|d| *d < Duration::from_millis(800)),
        "{delays:?}"
    );
    // N(1, 1) is positive 84 % of the time: most calls were held back.
    let held = delays
        .iter()
        .filter(|d| **d >= Duration::from_millis(5))
        .count();
    assert!(
        held >= 20,
        "only {held} of 40 calls were delayed: {delays:?}"
    );
}

#[tokio::test]
async fn concurrent_readers_of_one_pk_lose_no_step() {
    let h = std::sync::Arc::new(start(small()).await);
    let pk = 1_000_042;
    let (tasks, per_task) = (32u64, 40u64);
    let handles: Vec<_> = (0..tasks)
        .map(|_| {
            let h = h.clone();
            tokio::spawn(async move {
                for _ in 0..per_task {
                    h.influencer(pk).await;
                }
            })
        })
        .collect();
    for handle in handles {
        handle.await.unwrap();
    }
    // Replaying every step in order must land exactly on the server's state.
    let mut expected = mockstagram_initial(7, pk);
    for call in 0..tasks * per_task {
        expected = mockstagram_step(7, pk, call, expected);
    }
    let view = h.sim.accounts().peek(pk, 0).unwrap();
    assert_eq!(view.calls, tasks * per_task);
    assert_eq!(view.counts, expected);
}

#[tokio::test]
async fn output_is_deterministic_for_a_seed() {
    async fn series(seed: u64) -> Vec<Value> {
        let h = start(SimConfig { seed, ..small() }).await;
        let mut out = Vec::new();
        for pk in [1_000_000, 1_000_777] {
            for _ in 0..5 {
                out.push(h.influencer(pk).await);
            }
        }
        out
    }
    assert_eq!(series(3).await, series(3).await);
    assert_ne!(series(3).await, series(4).await);
}

#[tokio::test]
async fn injected_errors_do_not_touch_accounts() {
    let h = start(SimConfig {
        faults: Faults {
            error_rate: 1.0,
            ..Faults::default()
        },
        ..small()
    })
    .await;
    for _ in 0..10 {
        let (status, body) = h.get("/api/v1/influencers/1000001").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    }
    assert_eq!(h.sim.accounts().peek(1_000_001, 0).unwrap().calls, 0);
    let (_, stats) = h.get("/_sim/stats").await;
    let stats: Value = serde_json::from_str(&stats).unwrap();
    assert_eq!(stats["injectedErrors"], 10);
    assert_eq!(stats["reads"], 0);
}

#[tokio::test]
async fn added_latency_holds_answers_back() {
    let h = start(SimConfig {
        faults: Faults {
            latency: Duration::from_millis(150),
            ..Faults::default()
        },
        ..small()
    })
    .await;
    let started = Instant::now();
    h.influencer(1_000_001).await;
    assert!(started.elapsed() >= Duration::from_millis(150));
}

#[tokio::test]
async fn realistic_values_follow_the_clock_not_the_reads() {
    let h = start(SimConfig {
        dynamics: Dynamics::Realistic,
        ..small()
    })
    .await;
    let read = |v: Value| Counts {
        followers: v["followerCount"].as_u64().unwrap(),
        following: v["followingCount"].as_u64().unwrap(),
    };
    let minute = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            / 60
    };
    // Jitter changes at minute boundaries: retry if a boundary fell inside.
    for _attempt in 0..3 {
        let start_minute = minute();
        let first = read(h.influencer(1_000_010).await);
        let mut reads = Vec::new();
        for _ in 0..20 {
            reads.push(read(h.influencer(1_000_010).await));
        }
        if minute() != start_minute {
            continue;
        }
        for next in reads {
            // Within a few milliseconds only the continuous trend can move, by
            // far less than one follower (rounding may flip the last unit).
            assert!(
                next.followers.abs_diff(first.followers) <= 1,
                "{first:?} {next:?}"
            );
            assert_eq!(next.following, first.following);
        }
        return;
    }
    panic!("could not read within one minute three times");
}

#[tokio::test]
async fn max_rps_makes_requests_wait_their_turn() {
    let h = start(SimConfig {
        faults: Faults {
            max_rps: 50.0,
            ..Faults::default()
        },
        ..small()
    })
    .await;
    let started = Instant::now();
    let answers = get_concurrently(&h, 40).await;
    assert!(answers.iter().all(|(status, _)| *status == StatusCode::OK));
    // 40 requests at 50/s, a burst of a tenth of a second allowed: at
    // least 34 / 50 s. (Only a lower bound: the machine may be slower.)
    assert!(
        started.elapsed() >= Duration::from_millis(680),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn max_rps_with_retry_after_answers_429_without_touching_accounts() {
    let h = start(SimConfig {
        faults: Faults {
            max_rps: 5.0,
            retry_after: Some(Duration::from_secs(2)),
            ..Faults::default()
        },
        ..small()
    })
    .await;
    let answers = get_concurrently(&h, 20).await;
    let limited: Vec<_> = answers
        .iter()
        .filter(|(status, _)| *status == StatusCode::TOO_MANY_REQUESTS)
        .collect();
    assert!(limited.len() >= 10, "{answers:?}");
    assert!(limited
        .iter()
        .all(|(_, retry)| retry.as_deref() == Some("2")));
    let (_, stats) = h.get("/_sim/stats").await;
    let stats: Value = serde_json::from_str(&stats).unwrap();
    assert_eq!(stats["rateLimited"], limited.len());
    assert_eq!(stats["reads"], 20 - limited.len());
}

/// `n` concurrent GETs of different accounts: each answer's status and
/// `Retry-After`.
async fn get_concurrently(h: &Harness, n: u64) -> Vec<(StatusCode, Option<String>)> {
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        let client = h.client.clone();
        let uri = format!("http://{}/api/v1/influencers/{}", h.addr, 1_000_000 + i);
        tasks.spawn(async move {
            let request = Request::builder()
                .uri(uri)
                .body(Full::new(Bytes::new()))
                .unwrap();
            let response = client.request(request).await.expect("request");
            let retry = response
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_owned());
            (response.status(), retry)
        });
    }
    tasks.join_all().await
}
