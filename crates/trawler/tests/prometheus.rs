//! The Prometheus HTTP API with real clients: Debian's `promtool` queries
//! the series trawler crawls, and a real Prometheus 2.42 scrapes trawler's
//! `/metrics` and remote-writes what it scrapes back into trawler, which
//! must keep it through `kill -9`. Error envelopes and limits are checked
//! over real sockets.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{eventually, free_port, get, http, program, spawn, start_sim, Proc};
use serde_json::Value;
use trawler_promql::oracle::urlencode;

const MINUTE: Duration = Duration::from_secs(60);

/// `GET /api/v1/query?query=…` (URL-encoded here), the `data` object.
fn query(api: SocketAddr, q: &str, extra: &str) -> Value {
    let r = http(
        api,
        "GET",
        &format!("/api/v1/query?query={}{extra}", urlencode(q)),
        None,
    );
    assert_eq!(r.status, 200, "{q}: {}", r.body);
    let v = r.json();
    assert_eq!(v["status"], "success", "{v}");
    v["data"].clone()
}

/// The single value of an instant query, if there is exactly one.
fn scalar_of(data: &Value) -> Option<f64> {
    let r = data["result"].as_array()?;
    (r.len() == 1).then(|| r[0]["value"][1].as_str()?.parse().ok())?
}

fn promtool(args: &[&str]) -> String {
    let out = Command::new(program("promtool"))
        .args(args)
        .output()
        .expect("run promtool");
    assert!(
        out.status.success(),
        "promtool {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `trawler run` against `sim` on port 0 (see [`start_on`]).
fn start_run(sim: SocketAddr, data: &Path, extra: &[&str]) -> (Proc, SocketAddr) {
    start_on("127.0.0.1:0", sim, data, extra)
}

/// `trawler run` polling ten accounts every second, its API on `listen`.
fn start_on(listen: &str, sim: SocketAddr, data: &Path, extra: &[&str]) -> (Proc, SocketAddr) {
    let mut args = vec!["--interval", "1s", "--ids", "1000000..=1000009"];
    args.extend_from_slice(extra);
    common::start_run_on(listen, sim, data, &args)
}

#[test]
fn promtool_reads_the_crawled_series() {
    let (_sim, sim) = start_sim(&["--accounts", "10"]);
    let dir = tempfile::tempdir().unwrap();
    let (_run, api) = start_run(sim, dir.path(), &["--promql-max-series", "10"]);
    let server = format!("http://{api}");
    eventually(MINUTE, || {
        (scalar_of(&query(api, "count(followerCount)", "")) == Some(10.0)).then_some(())
    });

    // An instant query names the entity with the job's key and label.
    let out = promtool(&["query", "instant", &server, "followerCount{pk=\"1000003\"}"]);
    assert!(
        out.starts_with("followerCount{job=\"influencers\", pk=\"1000003\", username=\"influencer-1000003\"} => "),
        "{out}"
    );
    // Its value is the one the JSON API reports (the poll may move it in
    // between: compare with the series' points instead of the latest).
    let value: f64 = out
        .split("=> ")
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let points = get(
        api,
        "/api/v1/influencers/1000003/series?metric=followerCount&from=0",
    );
    assert!(
        points["points"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p[1].as_f64() == Some(value)),
        "{value} not among {points}"
    );

    // A range query (once an entity has a few points), a series lookup
    // and label values.
    eventually(MINUTE, || {
        let n = scalar_of(&query(
            api,
            "count_over_time(followerCount{pk=\"1000000\"}[1m])",
            "",
        ));
        n.filter(|n| *n >= 6.0)
    });
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let (start, end) = ((now - 20).to_string(), now.to_string());
    let out = promtool(&[
        "query",
        "range",
        "--start",
        &start,
        "--end",
        &end,
        "--step",
        "2s",
        &server,
        "sum by (job) (followerCount)",
    ]);
    assert!(out.starts_with("{job=\"influencers\"} =>"), "{out}");
    assert!(
        out.lines().filter(|l| l.contains(" @[")).count() >= 3,
        "{out}"
    );
    let out = promtool(&[
        "query",
        "series",
        "--match",
        "followerCount{pk=~\"100000[0-4]\"}",
        &server,
    ]);
    assert_eq!(out.lines().count(), 5, "{out}");
    assert!(out.contains("pk=\"1000004\""), "{out}");
    let out = promtool(&["query", "labels", &server, "pk"]);
    let pks: Vec<&str> = out.lines().collect();
    assert_eq!(pks.len(), 10, "{out}");
    assert_eq!(pks[0], "1000000");
    let out = promtool(&["query", "labels", &server, "__name__"]);
    assert!(out.lines().any(|l| l == "averageFollowerCount"), "{out}");
    // Grafana's `label_values(followerCount, pk)`: from the tracked set.
    let out = promtool(&["query", "labels", "--match", "followerCount", &server, "pk"]);
    assert_eq!(out.lines().count(), 10, "{out}");
    let out = promtool(&[
        "query",
        "labels",
        "--match",
        "averageFollowerCount",
        &server,
        "pk",
    ]);
    assert_eq!(out.trim(), "", "the average has no pk: {out}");
    let names = get(api, "/api/v1/labels?match[]=averageFollowerCount");
    assert_eq!(
        names["data"],
        serde_json::json!(["__name__", "job"]),
        "{names}"
    );

    // The same query as a form POST, as Grafana sends long queries.
    let (status, body) = common::post_bytes(
        api,
        "/api/v1/query",
        b"query=count%28followerCount%29",
        &[("Content-Type", "application/x-www-form-urlencoded")],
    );
    assert_eq!(status, 200, "{body}");
    let answer: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(scalar_of(&answer["data"]), Some(10.0), "{body}");

    // Errors in Prometheus' envelope: a parse error is 400 bad_data, a
    // query over more series than the limit 422 naming the limit.
    let r = http(api, "GET", "/api/v1/query?query=rate%28x%5B5m", None);
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(r.json()["status"], "error");
    assert_eq!(r.json()["errorType"], "bad_data");
    let r = http(
        api,
        "GET",
        &format!("/api/v1/query?query={}", urlencode("{job=\"influencers\"}")),
        None,
    );
    assert_eq!(r.status, 422, "{}", r.body);
    assert_eq!(r.json()["errorType"], "execution");
    assert!(r.body.contains("max_series"), "{}", r.body);
    let r = http(
        api,
        "GET",
        "/api/v1/query_range?query=up&start=10&end=5&step=1",
        None,
    );
    assert_eq!(r.status, 400, "{}", r.body);
    let r = http(api, "GET", "/api/v1/series", None);
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(
        r.body.contains("no match[] parameter provided"),
        "{}",
        r.body
    );
    let r = http(api, "GET", "/api/v1/label/bad-name/values", None);
    assert_eq!(r.status, 400, "{}", r.body);
    let info = get(api, "/api/v1/status/buildinfo");
    assert_eq!(info["data"]["version"], "2.42.0");

    // Remote write refuses what is not remote write, with a reason.
    let r = http(api, "POST", "/api/v1/write", Some("not snappy"));
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("snappy"), "{}", r.body);
}

#[test]
fn remote_write_limits_and_the_token() {
    use trawler_promql::remote::{compress, encode, TimeSeries, WriteRequest};
    let (_sim, sim) = start_sim(&["--accounts", "10"]);
    let dir = tempfile::tempdir().unwrap();
    let (_run, api) = start_run(
        sim,
        dir.path(),
        &["--remote-write-max-series", "2", "--api-token", "s3cret"],
    );
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
        / 1000
        * 1000;
    let series = |name: &str, job: &str| TimeSeries {
        labels: vec![("__name__".into(), name.into()), ("job".into(), job.into())],
        samples: vec![(t, 1.0)],
    };
    let body = |s: Vec<TimeSeries>| {
        compress(&encode(&WriteRequest {
            timeseries: s,
            metadata: vec![],
        }))
    };
    let post = |bytes: &[u8], token: bool| {
        let mut headers = vec![("Content-Encoding", "snappy")];
        if token {
            headers.push(("Authorization", "Bearer s3cret"));
        }
        common::post_bytes(api, "/api/v1/write", bytes, &headers)
    };
    let ok = body(vec![series("a", "x")]);
    assert_eq!(post(&ok, false).0, 401);
    assert_eq!(post(&ok, true).0, 204);
    let (status, text) = post(
        &body(vec![series("a", "x"), series("b", "x"), series("c", "x")]),
        true,
    );
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("max_series"), "{text}");
    // The node's own series cannot be written over.
    let (status, text) = post(&body(vec![series("followerCount", "influencers")]), true);
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("trawler's own"), "{text}");
    // (Within the store's retention, which counts back from the newest
    // sample: the crawl's, now.)
    let data = query(api, "a", &format!("&time={}", t / 1000));
    // A sample older than the retention (30 days before the newest) is
    // dropped and said so, as Prometheus answers out-of-bounds samples.
    let mut old = series("a", "x");
    old.samples = vec![(t - 400 * 86_400_000, 1.0)];
    let (status, text) = post(&body(vec![old, series("d", "x")]), true);
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("1 of 2 samples were dropped"), "{text}");
    assert_eq!(
        scalar_of(&query(api, "d", &format!("&time={}", t / 1000))),
        Some(1.0)
    );
    assert_eq!(scalar_of(&data), Some(1.0), "{data}");
}

#[test]
fn a_real_prometheus_scrapes_trawler_and_remote_writes_into_it_and_kill_9_loses_nothing() {
    let (_sim, sim) = start_sim(&["--accounts", "10"]);
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let data = dir.path().join("data");
    let (mut run, api) = start_on(&listen, sim, &data, &[]);

    let prom_port = free_port();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n\
             scrape_configs:\n  - job_name: trawler-self\n    static_configs:\n      - targets: ['{listen}']\n\
             remote_write:\n  - url: http://{listen}/api/v1/write\n    queue_config:\n      batch_send_deadline: 1s\n      min_backoff: 100ms\n      max_backoff: 1s\n    metadata_config:\n      send_interval: 1s\n"
        ),
    )
    .unwrap();
    let _prometheus = spawn(
        &program("prometheus"),
        &[
            format!("--config.file={}", config.display()),
            format!("--storage.tsdb.path={}", dir.path().join("tsdb").display()),
            format!("--web.listen-address=127.0.0.1:{prom_port}"),
        ],
        &dir.path().join("prometheus.log"),
    );
    let log = || std::fs::read_to_string(dir.path().join("prometheus.log")).unwrap_or_default();

    // What Prometheus scraped from trawler arrives in trawler.
    let scraped = |api: SocketAddr| {
        scalar_of(&query(
            api,
            "count_over_time(up{job=\"trawler-self\"}[1h])",
            "",
        ))
    };
    let n = eventually(Duration::from_secs(90), || {
        scraped(api).filter(|n| *n >= 3.0)
    });
    assert!(n >= 3.0, "{}", log());
    let requests = query(
        api,
        "sum(trawler_api_requests_total{job=\"trawler-self\",route=\"/metrics\"})",
        "",
    );
    assert!(scalar_of(&requests).unwrap_or(0.0) >= 1.0, "{requests}");
    // The metadata Prometheus sends along.
    eventually(MINUTE, || {
        let m = get(api, "/api/v1/metadata?metric=trawler_api_requests_total");
        (m["data"]["trawler_api_requests_total"][0]["type"] == "counter").then_some(())
    });

    // kill -9: every sample a query saw (so the write was answered 204)
    // is there after the restart.
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let at = format!("&time={:.3}", t as f64 / 1000.0);
    let q = "count_over_time(up{job=\"trawler-self\"}[1h])";
    let before = scalar_of(&query(api, q, &at)).expect("samples before the kill");
    run.kill9();
    let (_run, api) = start_on(&listen, sim, &data, &[]);
    let after = scalar_of(&query(api, q, &at)).expect("samples after the restart");
    assert_eq!(before, after, "remote-written samples lost in kill -9");
    // And Prometheus goes on writing into the restarted node.
    eventually(Duration::from_secs(90), || {
        scalar_of(&query(api, q, "")).filter(|n| *n > before)
    });
}

/// The compliance corpus through trawler itself: the oracle's data set
/// remote-written into a running node (its store, its WAL, its blocks) and
/// into Prometheus 2.42, every query asked over HTTP of both, instant and
/// range. The crate's compliance test compares the engine over memory;
/// this one adds the store, remote write and the HTTP layer.
#[test]
fn the_compliance_corpus_through_trawlers_api_and_store_answers_as_prometheus() {
    use trawler_promql::oracle::{self, agree, order_sensitive, Answer, Prometheus, QueryTimes};
    let bin = oracle::find_binary("prometheus").expect("prometheus: run scripts/deps");
    let prom = Prometheus::start(&bin).unwrap_or_else(|e| panic!("{e}"));
    let (_sim, sim) = start_sim(&["--accounts", "10"]);
    let dir = tempfile::tempdir().unwrap();
    // The data set is of 2024: a retention that counts back past it from
    // the crawl's samples of today.
    let (_run, api) = start_run(sim, dir.path(), &["--retention", "36500d"]);
    let data = oracle::dataset();
    for body in oracle::write_windows(&data) {
        prom.write(&body).unwrap_or_else(|e| panic!("{e}"));
        oracle::remote_write(api, &body).unwrap_or_else(|e| panic!("{e}"));
    }
    let known = oracle::known_differences();
    let mut differing = Vec::new();
    let mut with_data = 0;
    let queries = oracle::corpus();
    for (i, q) in queries.iter().enumerate() {
        let times = QueryTimes::of(i);
        for (path, ordered) in [
            (times.instant_path(q), order_sensitive(q)),
            (times.range_path(q), false),
        ] {
            let expected = prom.query(&path).unwrap_or_else(|e| panic!("{e}"));
            let (_, body) = oracle::http(api, "GET", &path, &[], b"").expect("query trawler");
            let got = Answer::from_api(&path, &body).unwrap_or_else(|e| panic!("{e}"));
            if matches!(&got, Answer::Vector(v) if !v.is_empty())
                || matches!(&got, Answer::Matrix(m) if !m.is_empty())
            {
                with_data += 1;
            }
            if !agree(&expected, &got, ordered) && !known.contains_key(q) {
                differing.push(format!(
                    "{path}\n  prometheus: {}\n  trawler:    {}",
                    expected.short(),
                    got.short()
                ));
            }
        }
    }
    // The data went through: most answers hold series.
    assert!(
        with_data > queries.len(),
        "only {with_data} answers with data"
    );
    assert!(
        differing.is_empty(),
        "{} of {} queries differ through trawler's API and store:\n{}",
        differing.len(),
        queries.len() * 2,
        differing
            .iter()
            .take(20)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}
