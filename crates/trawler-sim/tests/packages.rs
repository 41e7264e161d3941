//! The package registry, the simulator's second API, checked over real HTTP
//! on a port-0 listener the way `contract.rs` checks Mockstagram.

mod common;

use std::time::Duration;

use hyper::{Method, StatusCode};
use serde_json::Value;
use trawler_sim::packages::{package_initial, package_step};
use trawler_sim::{Faults, SimConfig};

use common::{start, Harness};

/// One account only: the packages API must not depend on `accounts`.
fn small() -> SimConfig {
    SimConfig {
        accounts: 1,
        seed: 7,
        ..SimConfig::default()
    }
}

const NO_SUCH_PACKAGE: &str = r#"{"error":"no such package"}"#;

impl Harness {
    async fn package_body(&self, name: &str) -> String {
        let (status, body) = self.get(&format!("/api/v2/packages/{name}")).await;
        assert_eq!(status, StatusCode::OK, "{name}: {body}");
        body
    }

    async fn package(&self, name: &str) -> Value {
        serde_json::from_str(&self.package_body(name).await).unwrap()
    }

    async fn stats(&self) -> Value {
        let (status, body) = self.get("/_sim/stats").await;
        assert_eq!(status, StatusCode::OK);
        serde_json::from_str(&body).unwrap()
    }
}

fn keys(v: &Value) -> Vec<&str> {
    let mut keys: Vec<_> = v.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort_unstable();
    keys
}

#[tokio::test]
async fn a_package_answers_the_nested_shape_with_its_types() {
    let h = start(small()).await;
    let body = h.package_body("serde").await;
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(keys(&v), ["maintainers", "package", "stats"]);
    assert_eq!(keys(&v["package"]), ["name", "registry"]);
    assert_eq!(v["package"]["name"], "serde");
    assert_eq!(v["package"]["registry"], "sim");
    assert_eq!(keys(&v["stats"]), ["downloads", "score", "stars"]);
    assert_eq!(keys(&v["stats"]["downloads"]), ["lastDay", "total"]);
    for integer in [
        &v["stats"]["downloads"]["total"],
        &v["stats"]["downloads"]["lastDay"],
        &v["stats"]["stars"],
    ] {
        assert!(integer.is_u64(), "{integer} in {body}");
    }
    let score = &v["stats"]["score"];
    assert!(score.is_f64(), "{body}");
    assert!((0.0..=1.0).contains(&score.as_f64().unwrap()), "{body}");
    // Four decimals, always written as a float.
    let written = body.split(r#""score":"#).nth(1).unwrap();
    let written = &written[..written.find('}').unwrap()];
    assert!(
        written.len() == 6 && written.as_bytes()[1] == b'.',
        "{written}"
    );
    let maintainers = v["maintainers"].as_array().unwrap();
    assert!((1..=3).contains(&maintainers.len()), "{body}");
    assert!(maintainers.iter().all(Value::is_string), "{body}");
}

#[tokio::test]
async fn reads_move_the_package_and_are_counted_exactly() {
    let h = start(small()).await;
    let name = "tokio-util";
    let (status, _) = h.get(&format!("/_sim/packages/{name}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "never read yet");

    let mut expected = package_initial(7, name);
    let mut totals = Vec::new();
    for call in 0..20 {
        expected = package_step(7, name, call, expected);
        let v = h.package(name).await;
        assert_eq!(v["stats"]["downloads"]["total"], expected.downloads);
        assert_eq!(v["stats"]["downloads"]["lastDay"], expected.last_day);
        assert_eq!(v["stats"]["stars"], expected.stars);
        assert_eq!(v["stats"]["score"], expected.score());
        totals.push(v["stats"]["downloads"]["total"].as_u64().unwrap());
    }
    assert!(totals.windows(2).all(|w| w[0] <= w[1]), "{totals:?}");
    assert!(totals[19] > totals[0], "{totals:?}");

    let (status, body) = h.get(&format!("/_sim/packages/{name}")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let view: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        keys(&view),
        ["downloads", "lastDay", "name", "reads", "score", "stars"]
    );
    assert_eq!(view["name"], name);
    assert_eq!(view["reads"], 20);
    assert_eq!(view["downloads"], expected.downloads);
    assert_eq!(view["stars"], expected.stars);
    assert_eq!(view["score"], expected.score());
    // Peeking does not move the package.
    let (_, again) = h.get(&format!("/_sim/packages/{name}")).await;
    assert_eq!(body, again);
}

#[tokio::test]
async fn the_same_seed_gives_the_same_answers_and_names_differ() {
    let names: Vec<String> = (0..20).map(|i| format!("pkg-{i}")).collect();
    async fn first_answers(seed: u64, names: &[String]) -> Vec<String> {
        let h = start(SimConfig { seed, ..small() }).await;
        let mut out = Vec::new();
        for name in names {
            out.push(h.package_body(name).await);
        }
        out
    }
    let a = first_answers(3, &names).await;
    assert_eq!(a, first_answers(3, &names).await);
    assert_ne!(a, first_answers(4, &names).await);

    let stats: Vec<Value> = a
        .iter()
        .map(|body| serde_json::from_str::<Value>(body).unwrap()["stats"].clone())
        .collect();
    let mut totals: Vec<_> = stats
        .iter()
        .map(|s| s["downloads"]["total"].as_u64().unwrap())
        .collect();
    totals.sort_unstable();
    totals.dedup();
    assert!(totals.len() >= 18, "{totals:?}");
    let mut scores: Vec<_> = stats.iter().map(|s| s["score"].to_string()).collect();
    scores.sort_unstable();
    scores.dedup();
    assert!(scores.len() >= 15, "{scores:?}");
}

#[tokio::test]
async fn missing_and_malformed_names_are_404_and_extra_segments_no_route() {
    let h = start(small()).await;
    let long = "a".repeat(65);
    for name in [
        "missing-x",
        "missing-",
        "A",
        "Serde",
        "a%20b",
        "a+b",
        &long,
        "",
    ] {
        let (status, body) = h.get(&format!("/api/v2/packages/{name}")).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{name:?}");
        assert_eq!(body, NO_SUCH_PACKAGE, "{name:?}");
    }
    // 64 bytes is still a name.
    h.package(&long[1..]).await;

    for (method, path) in [
        (Method::GET, "/api/v2/packages/serde/extra"),
        (Method::GET, "/api/v2/packages/serde/"),
        (Method::GET, "/api/v2/packages"),
        (Method::POST, "/api/v2/packages/serde"),
        (Method::DELETE, "/api/v2/packages/serde"),
        (Method::GET, "/api/v1/packages/serde"),
    ] {
        let (status, body) = h.call(method.clone(), path, "").await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{method} {path}: {body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["error"]["name"], "NotFound", "{method} {path}");
    }
    let (status, _) = h.get("/_sim/packages/missing-x").await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Nothing but the one real package was read or kept.
    let stats = h.stats().await;
    assert_eq!(stats["packageReads"], 1);
    assert_eq!(stats["packages"], 1);
    assert_eq!(stats["packageNotFound"], 8);
    assert_eq!(h.sim.packages().len(), 1);
}

#[tokio::test]
async fn sim_stats_counts_package_reads_and_distinct_packages() {
    let h = start(small()).await;
    for name in ["a", "b", "a", "c", "a"] {
        h.package(name).await;
    }
    let stats = h.stats().await;
    assert_eq!(stats["packageReads"], 5);
    assert_eq!(stats["packages"], 3);
    // The Mockstagram fields are all still there, untouched.
    for field in [
        "accounts",
        "firstPk",
        "dynamics",
        "suspiciousThreshold",
        "reads",
        "notFound",
        "injectedErrors",
        "suspiciousCalls",
        "rateLimited",
    ] {
        assert!(stats.get(field).is_some(), "{field} missing from {stats}");
    }
    assert_eq!(stats["reads"], 0);
    assert_eq!(stats["notFound"], 0);
}

#[tokio::test]
async fn concurrent_readers_of_one_package_lose_no_step() {
    let h = std::sync::Arc::new(start(small()).await);
    let (tasks, per_task) = (16u64, 25u64);
    let handles: Vec<_> = (0..tasks)
        .map(|_| {
            let h = h.clone();
            tokio::spawn(async move {
                for _ in 0..per_task {
                    h.package("hot").await;
                }
            })
        })
        .collect();
    for handle in handles {
        handle.await.unwrap();
    }
    let mut expected = package_initial(7, "hot");
    for call in 0..tasks * per_task {
        expected = package_step(7, "hot", call, expected);
    }
    let view = h.sim.packages().peek("hot").unwrap();
    assert_eq!(view.reads, tasks * per_task);
    assert_eq!(view.stats, expected);
}

#[tokio::test]
async fn faults_apply_to_the_packages_api_too() {
    let h = start(SimConfig {
        faults: Faults {
            error_rate: 1.0,
            ..Faults::default()
        },
        ..small()
    })
    .await;
    for _ in 0..5 {
        let (status, body) = h.get("/api/v2/packages/serde").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    }
    let stats = h.stats().await;
    assert_eq!(stats["injectedErrors"], 5);
    assert_eq!(stats["packageReads"], 0);
    assert!(h.sim.packages().peek("serde").is_none());

    let h = start(SimConfig {
        faults: Faults {
            max_rps: 5.0,
            retry_after: Some(Duration::from_secs(2)),
            ..Faults::default()
        },
        ..small()
    })
    .await;
    let mut limited = 0;
    for i in 0..20 {
        let (status, _) = h.get(&format!("/api/v2/packages/p{i}")).await;
        if status == StatusCode::TOO_MANY_REQUESTS {
            limited += 1;
        } else {
            assert_eq!(status, StatusCode::OK);
        }
    }
    assert!(limited >= 10, "only {limited} of 20 rate limited");
    let stats = h.stats().await;
    assert_eq!(stats["rateLimited"], limited);
    assert_eq!(stats["packageReads"], 20 - limited);
}
