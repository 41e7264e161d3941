//! Operating a running trawler: `/metrics` is valid Prometheus text whose
//! counters move, the event stream of a real `trawler run` carries moving
//! numbers, and `--log-format json` writes one JSON object per line.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{eventually, get, http, start_run, start_sim};

/// One scrape: every sample by `name{labels}`, and the declared type of
/// every family.
#[derive(Debug)]
struct Scrape {
    samples: BTreeMap<String, f64>,
    types: BTreeMap<String, String>,
}

impl Scrape {
    fn value(&self, series: &str) -> f64 {
        *self
            .samples
            .get(series)
            .unwrap_or_else(|| panic!("no series {series}"))
    }
}

/// Parses Prometheus text format 0.0.4 strictly: names and labels by the
/// grammar, `# TYPE` at most once per family and before its samples, no
/// duplicate series, counters named `_total`, histograms cumulative with
/// `+Inf` equal to `_count`.
fn parse_prometheus(text: &str) -> Scrape {
    let name_ok = |n: &str| {
        let mut chars = n.chars();
        chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    };
    let mut types: BTreeMap<String, String> = BTreeMap::new();
    let mut sampled: BTreeSet<String> = BTreeSet::new();
    let mut samples = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        let at = || format!("line {}: {line:?}", i + 1);
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let keyword = parts.next().unwrap();
            let name = parts.next().unwrap_or_else(|| panic!("{}", at()));
            assert!(name_ok(name), "bad metric name, {}", at());
            match keyword {
                "HELP" => {}
                "TYPE" => {
                    let kind = parts.next().unwrap_or_else(|| panic!("{}", at()));
                    assert!(
                        ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                        "bad type, {}",
                        at()
                    );
                    assert!(!sampled.contains(name), "TYPE after samples, {}", at());
                    assert!(
                        types.insert(name.to_owned(), kind.to_owned()).is_none(),
                        "TYPE given twice, {}",
                        at()
                    );
                }
                _ => {}
            }
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("{}", at()));
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("bad value, {}", at())),
        };
        let (name, labels) = match series.split_once('{') {
            Some((n, l)) => (
                n,
                Some(l.strip_suffix('}').unwrap_or_else(|| panic!("{}", at()))),
            ),
            None => (series, None),
        };
        assert!(name_ok(name), "bad metric name, {}", at());
        if let Some(labels) = labels {
            // k="v" pairs; values may hold escaped quotes.
            let mut rest = labels;
            while !rest.is_empty() {
                let (key, after) = rest.split_once("=\"").unwrap_or_else(|| panic!("{}", at()));
                assert!(name_ok(key), "bad label name, {}", at());
                let mut end = None;
                let mut escaped = false;
                for (j, c) in after.char_indices() {
                    match (escaped, c) {
                        (true, _) => escaped = false,
                        (false, '\\') => escaped = true,
                        (false, '"') => {
                            end = Some(j);
                            break;
                        }
                        _ => {}
                    }
                }
                let end = end.unwrap_or_else(|| panic!("unterminated label, {}", at()));
                rest = after[end + 1..]
                    .strip_prefix(',')
                    .unwrap_or(&after[end + 1..]);
            }
        }
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| {
                name.strip_suffix(s)
                    .filter(|base| types.get(*base).is_some_and(|t| t == "histogram"))
            })
            .unwrap_or(name);
        let kind = types
            .get(family)
            .unwrap_or_else(|| panic!("sample without a TYPE, {}", at()));
        if kind == "counter" {
            assert!(
                family.ends_with("_total"),
                "counter not named _total, {}",
                at()
            );
            assert!(value >= 0.0, "negative counter, {}", at());
        }
        sampled.insert(family.to_owned());
        assert!(
            samples.insert(series.to_owned(), value).is_none(),
            "duplicate series, {}",
            at()
        );
    }
    // Histograms: cumulative buckets, +Inf equal to the count.
    for (family, kind) in &types {
        if kind != "histogram" {
            continue;
        }
        let mut groups: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
        for (series, value) in &samples {
            let Some(labels) = series.strip_prefix(&format!("{family}_bucket{{")) else {
                continue;
            };
            let (le_at, _) = labels.split_once("le=\"").expect("le label");
            let le = labels[le_at.len() + 4..].split('"').next().unwrap();
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().unwrap()
            };
            groups
                .entry(le_at.trim_end_matches(',').to_owned())
                .or_default()
                .push((le, *value));
        }
        assert!(!groups.is_empty(), "histogram {family} has no buckets");
        for (labels, mut buckets) in groups {
            buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
            assert!(
                buckets.windows(2).all(|w| w[0].1 <= w[1].1),
                "{family} buckets not cumulative: {buckets:?}"
            );
            let count = samples[&format!("{family}_count{{{labels}}}")];
            assert_eq!(buckets.last().unwrap(), &(f64::INFINITY, count), "{family}");
        }
    }
    Scrape { samples, types }
}

fn scrape(api: SocketAddr) -> Scrape {
    let r = http(api, "GET", "/metrics", None);
    assert_eq!(r.status, 200);
    parse_prometheus(&r.body)
}

#[test]
fn metrics_parse_as_prometheus_text_and_their_counters_move() {
    let (_sim, sim) = start_sim(&["--accounts", "5000"]);
    let data = tempfile::tempdir().unwrap();
    let (_run, api) = start_run(
        sim,
        data.path(),
        &[
            "--ids",
            "1000000..1002000",
            "--interval",
            "2s",
            "--suspicious-period",
            "10s",
        ],
    );
    eventually(Duration::from_secs(30), || {
        (get(api, "/api/v1/influencers/stats")["polls"].as_u64()? > 0).then_some(())
    });
    let first = scrape(api);
    for (family, kind) in [
        ("trawler_crawl_polls_total", "counter"),
        ("trawler_crawl_errors_total", "counter"),
        ("trawler_crawl_gaps_total", "counter"),
        ("trawler_crawl_lag_seconds", "histogram"),
        ("trawler_crawl_recent_lag_seconds", "gauge"),
        ("trawler_crawl_in_flight", "gauge"),
        ("trawler_crawl_invalid_ids", "gauge"),
        ("trawler_enrich_calls_total", "counter"),
        ("trawler_enrich_in_flight", "gauge"),
        ("trawler_enrich_put_off", "gauge"),
        ("trawler_store_bytes_on_disk", "gauge"),
        ("trawler_store_samples", "gauge"),
        ("trawler_store_wal_bytes", "gauge"),
        ("trawler_store_flushes_total", "counter"),
        ("trawler_store_compactions_total", "counter"),
        ("trawler_api_requests_total", "counter"),
        ("trawler_api_event_subscribers", "gauge"),
        ("trawler_api_event_subscribers_lagged_total", "counter"),
    ] {
        assert_eq!(
            first.types.get(family).map(String::as_str),
            Some(kind),
            "{family}"
        );
    }
    let stats_route =
        "trawler_api_requests_total{route=\"/api/v1/influencers/stats\",status=\"200\"}";
    let polls = "trawler_crawl_polls_total{job=\"influencers\"}";
    let lag_count = "trawler_crawl_lag_seconds_count{job=\"influencers\"}";
    let samples = "trawler_store_samples{job=\"influencers\"}";
    let enrich_calls = "trawler_enrich_calls_total{job=\"influencers\"}";

    std::thread::sleep(Duration::from_secs(3));
    get(api, "/api/v1/influencers/stats");
    let second = scrape(api);
    for series in [polls, lag_count, samples, stats_route] {
        assert!(
            second.value(series) > first.value(series),
            "{series} did not move: {} → {}",
            first.value(series),
            second.value(series)
        );
    }
    assert!(second.value(enrich_calls) >= first.value(enrich_calls));
    // Every poll has a lag; the two counters are read a moment apart while
    // the crawl runs, so they may differ by the polls of that moment.
    let (p, l) = (second.value(polls), second.value(lag_count));
    assert!((p - l).abs() <= 500.0, "polls {p}, lag observations {l}");
}

#[test]
fn the_event_stream_of_a_running_trawler_carries_moving_numbers() {
    let (_sim, sim) = start_sim(&["--accounts", "3000"]);
    let data = tempfile::tempdir().unwrap();
    let (_run, api) = start_run(
        sim,
        data.path(),
        &[
            "--ids",
            "1000000..1002000",
            "--interval",
            "2s",
            "--no-suspicious",
        ],
    );
    let mut stream = TcpStream::connect(api).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    stream
        .write_all(b"GET /api/v1/events HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let mut lines = BufReader::new(stream).lines();
    let status = lines.next().unwrap().unwrap();
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    let mut polls = Vec::new();
    for line in lines {
        let line = line.expect("an event within 20 s");
        if let Some(data) = line.strip_prefix("data: ") {
            let sample: serde_json::Value = serde_json::from_str(data).unwrap();
            assert_eq!(sample["trackedAccounts"], 2000, "{sample}");
            polls.push(sample["polls"].as_u64().unwrap());
            if polls.len() >= 2 && polls.last() > polls.first() {
                break;
            }
            assert!(
                polls.len() < 15,
                "polls did not move in the stream: {polls:?}"
            );
        }
    }
}

#[test]
fn log_format_json_writes_one_json_object_per_line() {
    let data = tempfile::tempdir().unwrap();
    let (_sim, sim) = start_sim(&["--accounts", "100"]);
    let mut child = Command::new(env!("CARGO_BIN_EXE_trawler"))
        .args([
            "--log-format",
            "json",
            "run",
            "--target",
            &format!("http://{sim}"),
            "--ids",
            "1000000..1000010",
            "--interval",
            "1s",
            "--no-suspicious",
            "--listen",
            "127.0.0.1:0",
            "--data",
            data.path().to_str().unwrap(),
        ])
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    let mut seen = 0;
    while seen < 3 {
        let line = lines.next().expect("log lines").unwrap();
        let entry: serde_json::Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
        assert!(entry["level"].is_string(), "{line}");
        assert!(entry["fields"].is_object(), "{line}");
        seen += 1;
    }
    let _ = child.kill();
    let _ = child.wait();
}
