//! The second job, end to end: `jobs/packages.toml` against the
//! simulator's package registry — string keys, nested JSON, a float field,
//! no enrichment — through the real binary and its API. Nothing in
//! trawler's code names this job; if one of these checks needs a code
//! change naming "packages", the engine is not generic.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{get, http, start_run, start_sim, Proc};

const SECOND: Duration = Duration::from_secs(1);

fn job_file() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../jobs/packages.toml")
}

/// Keys in the job's list, in file order (comments and blanks skipped).
fn listed() -> Vec<String> {
    std::fs::read_to_string(job_file().with_file_name("packages.txt"))
        .unwrap()
        .lines()
        .map(|l| l.split('#').next().unwrap().trim().to_owned())
        .filter(|l| !l.is_empty())
        .collect()
}

fn stats(api: std::net::SocketAddr) -> serde_json::Value {
    get(api, "/api/v1/packages/stats")
}

fn start(sim: std::net::SocketAddr, data: &Path) -> (Proc, std::net::SocketAddr) {
    start_run(
        sim,
        data,
        &["--config", job_file().to_str().unwrap(), "--interval", "1s"],
    )
}

#[test]
fn the_packages_job_runs_end_to_end_with_string_keys_nested_json_and_floats() {
    let (_sim, sim) = start_sim(&[]);
    let data = tempfile::tempdir().unwrap();
    let (mut run, api) = start(sim, data.path());
    let keys = listed();
    assert_eq!(
        keys.len(),
        1000,
        "the job lists 998 packages and 2 missing ones"
    );

    // The job's names, as any client (and the dashboard) learns them.
    let info = get(api, "/api/v1/packages");
    assert_eq!(info["keyName"], "name", "{info}");
    assert_eq!(info["stringKeys"], true, "{info}");
    assert_eq!(info["rankMetric"], "downloads", "{info}");
    assert_eq!(info["average"], "averageDownloads", "{info}");
    assert_eq!(
        info["flag"],
        serde_json::Value::Null,
        "no enrichment: {info}"
    );
    assert_eq!(
        info["metrics"],
        serde_json::json!(["downloads", "stars", "score", "downloadsPerStar"])
    );

    // Every package is read; the two the registry does not know are listed
    // by name and no longer polled.
    let s = common::eventually(60 * SECOND, || {
        let s = stats(api);
        (s["crawledAccounts"].as_u64()? >= 998 && s["invalidAccounts"].as_u64()? == 2).then_some(s)
    });
    assert_eq!(s["trackedAccounts"], 998, "{s}");
    assert!(s["averageDownloads"].as_f64().unwrap() > 0.0, "{s}");
    let invalid = get(api, "/api/v1/packages/invalid");
    assert_eq!(
        invalid["names"],
        serde_json::json!(["missing-left-pad", "missing-is-odd"]),
        "{invalid}"
    );
    let gone = http(api, "GET", "/api/v1/packages/missing-is-odd", None);
    assert_eq!(gone.status, 404, "{}", gone.body);

    // An entity by its string key: integers, the float, the derived ratio.
    let name = &keys[0];
    let e = get(api, &format!("/api/v1/packages/{name}"));
    assert_eq!(e["name"], name.as_str(), "{e}");
    assert!(e["downloads"].is_u64(), "{e}");
    assert!(e["stars"].is_u64(), "{e}");
    let score = e["score"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&score) && !e["score"].is_u64(), "{e}");
    assert!(e["rank"].as_u64().unwrap() >= 1, "{e}");
    assert!(e.get("suspicious").is_none(), "no enrichment, no flag: {e}");
    assert!(e.get("label").is_none(), "no label: {e}");

    // Series of the float and of the derived metric.
    let series = common::eventually(30 * SECOND, || {
        let r = get(api, &format!("/api/v1/packages/{name}/series?metric=score"));
        (r["points"].as_array()?.len() >= 2).then_some(r)
    });
    assert_eq!(series["name"], name.as_str());
    for p in series["points"].as_array().unwrap() {
        assert!((0.0..=1.0).contains(&p[1].as_f64().unwrap()), "{series}");
    }
    let ratio = get(
        api,
        &format!("/api/v1/packages/{name}/series?metric=downloadsPerStar"),
    );
    assert!(!ratio["points"].as_array().unwrap().is_empty(), "{ratio}");

    // The leaderboard names packages, largest downloads first.
    let top = get(api, "/api/v1/packages/top?limit=5");
    let entries = top["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 5, "{top}");
    assert!(entries[0]["name"].is_string(), "{top}");
    let downloads: Vec<u64> = entries
        .iter()
        .map(|e| e["downloads"].as_u64().unwrap())
        .collect();
    assert!(downloads.windows(2).all(|w| w[0] >= w[1]), "{top}");

    // Malformed keys are 400s naming the key, unknown ones 404s.
    let bad = http(api, "GET", "/api/v1/packages/a%20b", None);
    assert_eq!(bad.status, 400, "{}", bad.body);
    assert_eq!(bad.json()["error"]["code"], "bad_name", "{}", bad.body);
    let unknown = http(api, "GET", "/api/v1/packages/never-heard-of", None);
    assert_eq!(unknown.status, 404, "{}", unknown.body);

    // A new package tracked through the API gets the next id, is read, and
    // keeps its id (and its data) across a restart.
    let tracked = http(
        api,
        "POST",
        "/api/v1/packages/track",
        Some(r#"{"names":["brand-new-crate"]}"#),
    );
    assert_eq!(tracked.status, 200, "{}", tracked.body);
    assert_eq!(tracked.json()["added"], 1, "{}", tracked.body);
    let before = common::eventually(30 * SECOND, || {
        let r = get(
            api,
            "/api/v1/packages/brand-new-crate/series?metric=downloads",
        );
        let n = r["points"].as_array()?.len();
        (n >= 2).then_some(n)
    });
    let refused = http(
        api,
        "POST",
        "/api/v1/packages/track",
        Some(r#"{"names":["no/slashes"]}"#),
    );
    assert_eq!(refused.status, 400, "{}", refused.body);
    assert!(run.terminate(30 * SECOND).success());

    let table = std::fs::read_to_string(data.path().join("keys.txt")).unwrap();
    assert!(table.lines().any(|l| l == "brand-new-crate"), "{table}");
    let (mut run, api) = start(sim, data.path());
    let after = get(
        api,
        "/api/v1/packages/brand-new-crate/series?metric=downloads",
    );
    assert!(
        after["points"].as_array().unwrap().len() >= before,
        "the new package's points survive the restart under the same key: {after}"
    );
    let e = get(api, &format!("/api/v1/packages/{name}"));
    assert_eq!(e["name"], name.as_str(), "{e}");
    assert!(run.terminate(30 * SECOND).success());
}

/// A data folder holds one job: the ids in its state files mean nothing to
/// another job, so starting another job there is refused, naming both.
#[test]
fn a_data_folder_of_one_job_is_refused_to_another() {
    let data = tempfile::tempdir().unwrap();
    std::fs::write(data.path().join("job"), "influencers\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_trawler"))
        .args(["run", "--config", job_file().to_str().unwrap(), "--data"])
        .arg(data.path())
        .args(["--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("\"influencers\"") && stderr.contains("\"packages\""),
        "{stderr}"
    );
}
