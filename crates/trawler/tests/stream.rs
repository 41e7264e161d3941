//! The stream job through the real binary and real HTTP: events in (NDJSON,
//! arrays, gzip), what is refused and why, windows out with formulas, the
//! file source, and `kill -9` during ingest.

mod common;

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{addr_of, eventually, get, http, http_with, post_bytes, Proc};

/// 2026-12-01T00:00:00Z.
const T0: i64 = 1_796_083_200_000;

fn start(config: &Path, data: &Path, extra: &[&str]) -> (Proc, SocketAddr) {
    let mut args = vec![
        "run",
        "--config",
        config.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
    ];
    args.extend_from_slice(extra);
    let p = Proc::start(&args);
    let api = p.wait_line("listening on ", Duration::from_secs(60));
    (p, addr_of(&api))
}

fn expo() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../jobs/expo.toml")
}

/// The job with some text replaced, written into `dir`.
fn job_with(dir: &Path, replace: &[(&str, &str)]) -> PathBuf {
    common::job_with(&expo(), dir, replace)
}

fn view(ts: i64, user: &str, exp: &str) -> String {
    format!("{{\"ts\":{ts},\"user\":\"{user}\",\"type\":\"page_view\",\"exp\":{exp}}}\n")
}

fn purchase(ts: i64, user: &str, amount: f64, exp: &str) -> String {
    format!("{{\"ts\":{ts},\"user\":\"{user}\",\"type\":\"purchase\",\"amount\":{amount},\"exp\":{exp}}}\n")
}

/// POSTs raw bytes with headers; (status, body).
fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

const EVENTS: &str = "/api/v1/streams/expo/events";

#[test]
fn events_in_windows_and_formulas_out() {
    let dir = tempfile::tempdir().unwrap();
    let (mut run, api) = start(&expo(), &dir.path().join("data"), &[]);

    // Minute T0: e1/A has 4 visitors (one twice), 1 purchaser with two
    // purchases; e1/B 2 visitors and no purchase; e2/A via the same events.
    let both = r#"{"e1":"A","e2":"A"}"#;
    let mut body = String::new();
    for (i, u) in ["a", "b", "c", "d", "a"].iter().enumerate() {
        body += &view(T0 + i as i64 * 1000, u, both);
    }
    body += &view(T0 + 6000, "x", r#"{"e1":"B"}"#);
    body += &view(T0 + 7000, "y", r#"{"e1":"B"}"#);
    body += &purchase(T0 + 8000, "a", 10.5, both);
    body += &purchase(T0 + 9000, "a", 20.25, both);
    body += "{\"ts\":1,\"type\":\"heartbeat\",\"exp\":{\"e1\":\"A\"}}\n";
    body += "this is not json\n";
    body += "{\"user\":\"q\",\"type\":\"page_view\",\"exp\":{\"e1\":\"A\"}}\n";
    let r = http_with(
        api,
        "POST",
        EVENTS,
        Some(&body),
        &[("Content-Type", "application/x-ndjson")],
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let a = r.json();
    assert_eq!(
        (
            a["accepted"].as_u64(),
            a["filtered"].as_u64(),
            a["malformed"].as_u64()
        ),
        (Some(9), Some(1), Some(2)),
        "{a}"
    );
    let lines: Vec<u64> = a["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["line"].as_u64().unwrap())
        .collect();
    assert_eq!(lines, [11, 12]);

    // The same kind of events as a gzipped JSON array, for minute T0+1m,
    // whose times close minute T0 (past its end + 30 s of lateness).
    let array = format!(
        "[{},{}]",
        view(T0 + 60_000, "z", both).trim_end(),
        view(T0 + 95_000, "z", both).trim_end()
    );
    let (status, text) = post_bytes(
        api,
        EVENTS,
        &gzip(array.as_bytes()),
        &[("Content-Encoding", "gzip")],
    );
    assert_eq!(status, 200, "{text}");
    // A late event for minute T0: counted and dropped.
    let r = http(api, "POST", EVENTS, Some(&view(T0 + 1000, "late", both)));
    assert_eq!(r.json()["late"], 1, "{}", r.body);

    eventually(Duration::from_secs(30), || {
        (get(api, "/api/v1/streams/expo")["stats"]["windows_closed"].as_u64() >= Some(1))
            .then_some(())
    });
    let series = get(
        api,
        "/api/v1/streams/expo/series?experiment=e1&variant=A&metrics=views,visitors,purchases,purchasers,revenue,order_mean,conversion,revenue_per_purchaser",
    );
    let value = |name: &str| -> Vec<(i64, f64)> {
        series["series"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == name)
            .unwrap()["points"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| (p[0].as_i64().unwrap(), p[1].as_f64().unwrap()))
            .collect()
    };
    assert_eq!(value("views"), [(T0, 5.0)]);
    assert_eq!(value("visitors"), [(T0, 4.0)]);
    assert_eq!(value("purchases"), [(T0, 2.0)]);
    assert_eq!(value("purchasers"), [(T0, 1.0)]);
    assert_eq!(value("revenue"), [(T0, 30.75)]);
    assert_eq!(value("order_mean"), [(T0, 15.375)]);
    assert_eq!(value("conversion"), [(T0, 0.25)]);
    // A formula of formulas: (revenue / visitors) / (purchasers / visitors).
    assert_eq!(value("revenue_per_purchaser"), [(T0, 30.75)]);
    // e1/B: visitors and no purchase: conversion 0 (a count absent is 0).
    let b = get(api, "/api/v1/streams/expo/series?experiment=e1&variant=B&metrics=visitors,conversion,order_mean");
    assert_eq!(b["series"][0]["points"][0][1], 2.0);
    assert_eq!(b["series"][1]["points"][0][1], 0.0);
    assert!(
        b["series"][2]["points"].as_array().unwrap().is_empty(),
        "no purchase, no mean: {b}"
    );

    // The same values through the Prometheus API, labelled by the group.
    let q = get(
        api,
        &format!(
            "/api/v1/query?query=conversion%7Bexperiment%3D%22e1%22%7D&time={}",
            (T0 + 60_000) / 1000
        ),
    );
    let result = &q["data"]["result"];
    assert_eq!(result.as_array().map(Vec::len), Some(2), "{q}");
    assert_eq!(
        result[0]["metric"],
        serde_json::json!({"__name__": "conversion", "job": "expo", "experiment": "e1", "variant": "A"}),
        "{q}"
    );
    assert_eq!(result[0]["value"][1], "0.25", "{q}");

    // The export has the same values, and the live read the open minute.
    let csv = http(api, "GET", "/api/v1/streams/expo/windows?format=csv", None).body;
    assert!(
        csv.starts_with("window_start_ms,experiment,variant,metric,value\n"),
        "{csv}"
    );
    assert!(
        csv.contains(&format!("{T0},e1,A,conversion,0.25\n")),
        "{csv}"
    );
    let live = get(
        api,
        "/api/v1/streams/expo/series?experiment=e1&variant=A&metrics=views&live=true",
    );
    assert_eq!(
        live["series"][0]["open"][0],
        serde_json::json!([T0 + 60_000, 2.0]),
        "{live}"
    );

    // Bad requests: 4xx with a JSON error, never a 500.
    for (path, status, code) in [
        (
            "/api/v1/streams/expo/series?experiment=e1",
            400,
            "missing_label",
        ),
        (
            "/api/v1/streams/expo/series?experiment=e1&variant=A&metrics=nope",
            400,
            "unknown_metric",
        ),
        (
            "/api/v1/streams/expo/series?experiment=zz&variant=A",
            404,
            "unknown_group",
        ),
        ("/api/v1/streams/expo/windows?from=abc", 400, "bad_time"),
    ] {
        let r = http(api, "GET", path, None);
        assert_eq!(r.status, status, "{path}: {}", r.body);
        assert_eq!(r.json()["error"]["code"], code, "{path}: {}", r.body);
    }
    let (status, text) = post_bytes(
        api,
        EVENTS,
        b"\x1f\x8bnot gzip",
        &[("Content-Encoding", "gzip")],
    );
    assert_eq!((status, text.contains("bad_gzip")), (400, true), "{text}");
    let (status, _) = post_bytes(api, EVENTS, b"{}", &[("Content-Encoding", "br")]);
    assert_eq!(status, 400);
    let groups = get(api, "/api/v1/streams/expo/groups");
    assert_eq!(groups["groups"].as_array().unwrap().len(), 3, "{groups}");
    let metrics = http(api, "GET", "/metrics", None).body;
    assert!(
        metrics.contains("trawler_stream_events_total{job=\"expo\",outcome=\"late\"} 1"),
        "{metrics}"
    );
    run.terminate(Duration::from_secs(20));
}

#[test]
fn oversized_bodies_get_413_and_exposed_apis_need_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let job = job_with(
        dir.path(),
        &[("max_batch_bytes = 16777216", "max_batch_bytes = 2000")],
    );
    let (mut run, api) = start(&job, &dir.path().join("data"), &["--api-token", "s3cret"]);
    let line = view(T0, "u", r#"{"e1":"A"}"#);
    let big = line.repeat(3000 / line.len() + 1);
    let auth = [("Authorization", "Bearer s3cret")];
    let (status, text) = post_bytes(api, EVENTS, big.as_bytes(), &auth);
    assert_eq!(status, 413, "{text}");
    // Compressed small, expanding past the limit.
    let (status, text) = post_bytes(
        api,
        EVENTS,
        &gzip(big.repeat(10).as_bytes()),
        &[auth[0], ("Content-Encoding", "gzip")],
    );
    assert_eq!(status, 413, "{text}");
    let (status, _) = post_bytes(api, EVENTS, line.as_bytes(), &[]);
    assert_eq!(status, 401);
    let (status, text) = post_bytes(api, EVENTS, line.as_bytes(), &auth);
    assert_eq!(status, 200, "{text}");
    // Reads need no token.
    assert_eq!(get(api, "/api/v1/streams/expo")["stats"]["accepted"], 1);
    run.terminate(Duration::from_secs(20));
}

#[test]
fn gen_feeds_the_job_from_its_built_in_generator_with_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let listen = format!("127.0.0.1:{}", common::free_port());
    let mut run = Proc::start(&[
        "run",
        "--config",
        expo().to_str().unwrap(),
        "--data",
        dir.path().join("data").to_str().unwrap(),
        "--listen",
        &listen,
        "--api-token",
        "s3cret",
        "--gen",
        "5000",
    ]);
    let api = addr_of(&run.wait_line("listening on ", Duration::from_secs(60)));
    // Accepted events only count what the token let in; the generator's
    // experiments (e1…) show up as groups.
    let stats = eventually(Duration::from_secs(120), || {
        let job = get(api, "/api/v1/streams/expo");
        (job["stats"]["accepted"].as_u64()? >= 5_000).then_some(job)
    });
    assert!(stats["stats"]["filtered"].as_u64().unwrap() > 0, "{stats}");
    let groups = get(api, "/api/v1/streams/expo/groups");
    assert!(groups.to_string().contains("\"e1\""), "{groups}");
    run.terminate(Duration::from_secs(20));

    // A job without a generator, or fed otherwise, is refused by name.
    let job = job_with(dir.path(), &[("generator = \"expo\"\n", "")]);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_trawler"))
        .args(["run", "--config", job.to_str().unwrap(), "--gen", "10"])
        .args(["--listen", &listen, "--data"])
        .arg(dir.path().join("d"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("job.toml names no generator"), "{err}");
}

#[test]
fn a_bad_stream_job_names_the_file_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let job = job_with(
        dir.path(),
        &[
            (
                "expr = \"purchasers / visitors\"",
                "expr = \"purchasers / ctr\"",
            ),
            (
                "expr = \"clicks / views\"",
                "expr = \"clicks / conversion\"",
            ),
        ],
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_trawler"))
        .args(["run", "--config", job.to_str().unwrap(), "--data"])
        .arg(dir.path().join("d"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("job.toml: formula: formulas form a cycle: conversion -> ctr -> conversion"),
        "{err}"
    );
}

#[test]
fn a_file_source_backfills_and_resumes_without_counting_twice() {
    let dir = tempfile::tempdir().unwrap();
    let mut body = String::new();
    for i in 0..3_000i64 {
        body += &view(T0 + i * 100, &format!("u{}", i % 50), r#"{"e1":"A"}"#);
    }
    std::fs::write(dir.path().join("events.ndjson.gz"), gzip(body.as_bytes())).unwrap();
    let job = job_with(
        dir.path(),
        &[(
            "source = \"http\"",
            "source = \"file\"\nfile = \"events.ndjson.gz\"",
        )],
    );
    let data = dir.path().join("data");
    for _ in 0..2 {
        // The second run resumes after the last durable line: nothing new.
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_trawler"))
            .args([
                "run",
                "--exit-when-done",
                "--listen",
                "127.0.0.1:0",
                "--config",
                job.to_str().unwrap(),
                "--data",
                data.to_str().unwrap(),
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let (mut run, api) = start(&job, &data, &[]);
    let rows = http(api, "GET", "/api/v1/streams/expo/windows?format=csv", None).body;
    let views: f64 = rows
        .lines()
        .filter(|l| l.contains(",views,"))
        .map(|l| l.rsplit(',').next().unwrap().parse::<f64>().unwrap())
        .sum();
    assert_eq!(views, 3_000.0, "{rows}");
    run.terminate(Duration::from_secs(20));
}

/// Every acknowledged event is counted once after a `kill -9`: one client
/// posts numbered batches; the node is killed mid-stream and restarted;
/// then one event far ahead closes every window.
#[test]
fn kill_9_during_ingest_loses_no_acknowledged_event_and_counts_none_twice() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (mut run, api) = start(&expo(), &data, &[]);
    let per_batch = 200;
    let poster = std::thread::spawn(move || {
        let mut acked = 0u64;
        let mut in_flight = 0u64;
        for b in 0..10_000i64 {
            let mut body = String::new();
            for i in 0..per_batch {
                // Event time crawls: every batch stays in the first minutes.
                body += &view(T0 + b * 10 + i, &format!("u{b}-{i}"), r#"{"e1":"A"}"#);
            }
            in_flight = per_batch as u64;
            let (status, _) = post_bytes(api, EVENTS, body.as_bytes(), &[]);
            if status != 200 {
                break;
            }
            acked += per_batch as u64;
            in_flight = 0;
        }
        (acked, in_flight)
    });
    eventually(Duration::from_secs(60), || {
        (get(api, "/api/v1/streams/expo")["stats"]["accepted"].as_u64() >= Some(20_000))
            .then_some(())
    });
    run.kill9();
    let (acked, in_flight) = poster.join().unwrap();
    assert!(acked >= 20_000, "{acked}");

    let (mut run, api) = start(&expo(), &data, &[]);
    let far = T0 + 3_600_000;
    let r = http(
        api,
        "POST",
        EVENTS,
        Some(&view(far, "closer", r#"{"e9":"Z"}"#)),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let total = eventually(Duration::from_secs(30), || {
        let series = get(
            api,
            "/api/v1/streams/expo/series?experiment=e1&variant=A&metrics=views",
        );
        let points = series["series"][0]["points"].as_array().unwrap().clone();
        let open = get(api, "/api/v1/streams/expo")["stats"]["open_windows"]
            .as_u64()
            .unwrap();
        // Only the closer's window stays open.
        (open == 1).then(|| points.iter().map(|p| p[1].as_f64().unwrap()).sum::<f64>() as u64)
    });
    assert!(
        total >= acked && total <= acked + in_flight,
        "stored {total} views; acknowledged {acked}, in flight at the kill {in_flight}"
    );
    run.terminate(Duration::from_secs(20));
}
