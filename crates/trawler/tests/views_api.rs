//! Live views, the suspicious status and the query API, through the real
//! binary against the real simulator.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{eventually, get, http, start_run, start_sim};
use serde_json::Value;

const SECOND: Duration = Duration::from_secs(1);

#[test]
fn leaderboard_ranks_suspicious_pages_and_average_agree_with_the_entities() {
    let (mut sim_proc, sim) = start_sim(&["--accounts", "300", "--suspicious-delay-scale", "0.01"]);
    let data = tempfile::tempdir().unwrap();
    let (mut run, api) = start_run(
        sim,
        data.path(),
        &[
            "--ids",
            "1000000..=1000199",
            "--interval",
            "1s",
            "--suspicious-period",
            "2s",
        ],
    );
    // One full suspicious period plus the slowest answer; then stop the
    // target so that values and statuses hold still while they are compared.
    std::thread::sleep(4 * SECOND);
    sim_proc.kill9();
    std::thread::sleep(SECOND);

    let top = get(api, "/api/v1/influencers/top?limit=20");
    let entries = top["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 20);
    for pair in entries.windows(2) {
        let (a, b) = (&pair[0], &pair[1]);
        assert!(a["followerCount"].as_i64() >= b["followerCount"].as_i64());
        assert!(a["rank"].as_u64() <= b["rank"].as_u64());
        if a["followerCount"] == b["followerCount"] {
            assert_eq!(a["rank"], b["rank"], "equal values share a rank");
        }
    }
    assert_eq!(entries[0]["rank"], 1);
    assert!(entries[0]["username"]
        .as_str()
        .unwrap()
        .starts_with("influencer-"));

    let stats = get(api, "/api/v1/influencers/stats");
    assert_eq!(stats["trackedAccounts"], 200);
    assert_eq!(stats["averageCovers"], 200);
    let average = stats["averageFollowerCount"].as_f64().unwrap();
    assert!(average > 5_000.0, "{stats}");

    // Every account was checked; the suspicious list is exactly the
    // accounts whose latest status is suspicious, in id order.
    let mut pks = Vec::new();
    let mut after: Option<u64> = None;
    loop {
        let path = match after {
            Some(a) => format!("/api/v1/influencers/suspicious?limit=7&after={a}"),
            None => "/api/v1/influencers/suspicious?limit=7".to_owned(),
        };
        let page = get(api, &path);
        pks.extend(
            page["pks"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap()),
        );
        match page["next"].as_u64() {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    assert!(
        pks.windows(2).all(|w| w[0] < w[1]),
        "pages are in id order without repeats"
    );
    assert!(!pks.is_empty(), "about a tenth of accounts are suspicious");
    for pk in &pks {
        let e = get(api, &format!("/api/v1/influencers/{pk}"));
        assert_eq!(e["suspicious"], true, "{e}");
        assert!(e["suspiciousCheckedAt"].is_string());
    }
    let stats = get(api, "/api/v1/influencers/stats");
    assert_eq!(
        stats["suspiciousCount"].as_u64().unwrap() as usize,
        pks.len()
    );
    let checked = (1_000_000..1_000_200u64)
        .filter(|pk| get(api, &format!("/api/v1/influencers/{pk}"))["suspicious"].is_boolean())
        .count();
    assert_eq!(checked, 200, "every account checked within one period");

    // The average's history is a series like any other.
    let history = eventually(5 * SECOND, || {
        let h = get(api, "/api/v1/influencers/average/series?from=0");
        (h["points"].as_array().unwrap().len() >= 2).then_some(h)
    });
    assert!(history["points"][0][1].as_f64().unwrap() > 5_000.0);

    // Movers need an hour of history; until then the lists are empty, not errors.
    assert_eq!(
        get(api, "/api/v1/influencers/top?by=gain1h")["entries"],
        serde_json::json!([])
    );
    let r = http(api, "GET", "/api/v1/influencers/top?by=likes", None);
    assert_eq!(
        (r.status, r.json()["error"]["code"].clone()),
        (400, "bad_by".into())
    );
    let r = http(api, "GET", "/api/v1/influencers/top?limit=5000", None);
    assert_eq!(
        (r.status, r.json()["error"]["code"].clone()),
        (400, "bad_limit".into())
    );

    let doc = get(api, "/api/openapi.json");
    assert_eq!(doc["openapi"], "3.1.0");
    assert!(doc["paths"]["/api/v1/influencers/{pk}/series"]["get"].is_object());
    assert!(run.terminate(30 * SECOND).success());
}

#[test]
fn a_restart_rebuilds_identical_views() {
    let (mut sim_proc, sim) = start_sim(&["--accounts", "300", "--suspicious-delay-scale", "0"]);
    let data = tempfile::tempdir().unwrap();
    let (mut run, api) = start_run(
        sim,
        data.path(),
        &[
            "--ids",
            "1000000..=1000149",
            "--interval",
            "1s",
            "--suspicious-period",
            "1s",
        ],
    );
    std::thread::sleep(3 * SECOND);
    // Stop the target: polls now fail, so the views hold still.
    sim_proc.kill9();
    std::thread::sleep(2 * SECOND);
    let snapshot = |api: SocketAddr| {
        let top = get(api, "/api/v1/influencers/top?limit=150");
        let mut stats = get(api, "/api/v1/influencers/stats");
        let entities: Vec<Value> = [1_000_000u64, 1_000_077, 1_000_149]
            .iter()
            .map(|pk| get(api, &format!("/api/v1/influencers/{pk}")))
            .collect();
        let suspicious = get(api, "/api/v1/influencers/suspicious?limit=1000");
        let keep = [
            "averageFollowerCount",
            "averageCovers",
            "suspiciousCount",
            "trackedAccounts",
            "crawledAccounts",
        ];
        stats
            .as_object_mut()
            .unwrap()
            .retain(|k, _| keep.contains(&k.as_str()));
        (top, stats, entities, suspicious)
    };
    let before = snapshot(api);
    assert!(run.terminate(30 * SECOND).success());

    let (mut run, api) = start_run(sim, data.path(), &["--interval", "1s", "--no-suspicious"]);
    let after = snapshot(api);
    assert_eq!(before.0, after.0, "leaderboard");
    assert_eq!(before.1, after.1, "stats");
    assert_eq!(before.2, after.2, "entities");
    assert_eq!(before.3, after.3, "suspicious list");
    assert!(run.terminate(30 * SECOND).success());
}
