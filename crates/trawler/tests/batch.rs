//! `trawler crawl` end to end: the real binary against the real image
//! simulator (`trawler sim images`) on loopback sockets.

mod common;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{addr_of, eventually, free_port, get, http, nats_server, Proc};

const MINUTE: Duration = Duration::from_secs(60);

fn trawler(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_trawler"))
        .args(args)
        .output()
        .expect("run trawler")
}

fn start_sim(slow: &str) -> (Proc, SocketAddr) {
    let sim = Proc::start(&[
        "sim",
        "images",
        "--listen",
        "127.0.0.1:0",
        "--pool",
        "4",
        "--slow-latency",
        slow,
    ]);
    let addr = addr_of(&sim.wait_line("listening on ", MINUTE));
    (sim, addr)
}

fn gen(path: &Path, count: u64, extra: &[&str]) -> Vec<String> {
    let p = path.display().to_string();
    let mut args = vec!["gen", "urls", "--out", &p];
    let count = count.to_string();
    args.extend(["--count", &count]);
    args.extend(extra);
    let out = trawler(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut text = String::new();
    std::io::Read::read_to_string(
        &mut flate2::read::MultiGzDecoder::new(std::fs::File::open(path).unwrap()),
        &mut text,
    )
    .unwrap();
    text.lines().map(str::to_owned).collect()
}

/// What each distinct line should become: `done` or a dead kind.
fn expected(lines: &[String], max_attempts: u32, flaky_failures: u32) -> HashMap<String, String> {
    let mut out = HashMap::new();
    for line in lines {
        let kind = if !line.starts_with("http://h")
            && !line.starts_with("http://slow")
            && !line.starts_with("http://down")
            || line.contains(":99999")
        {
            "invalid_url"
        } else if line.contains("://down") {
            "gave_up"
        } else {
            match line.split('/').nth(3).unwrap() {
                "img" | "moved" => "done",
                "flaky" if flaky_failures < max_attempts => "done",
                "flaky" | "error" => "gave_up",
                "broken" | "text" => "not_an_image",
                "missing" => "client_error",
                "loop" => "too_many_redirects",
                "huge" => "too_large",
                other => panic!("unexpected path kind {other}"),
            }
        };
        out.insert(line.clone(), kind.to_owned());
    }
    out
}

fn crawl_args<'a>(list: &'a str, data: &'a str, sim: &'a str, detector: &'a str) -> Vec<&'a str> {
    vec![
        "crawl",
        "--urls",
        list,
        "--data",
        data,
        "--connect-to",
        sim,
        "--detector",
        detector,
        "--listen",
        "127.0.0.1:0",
        "--per-host",
        "2",
        "--max-attempts",
        "3",
        "--backoff",
        "10ms",
        "--roll-after",
        "300ms",
        "--segment-urls",
        "500",
    ]
}

/// The results' URLs, asserting none is there twice.
fn results(data: &Path) -> HashSet<String> {
    let keys = trawler_batch::output::read_keys(&data.join("results")).unwrap();
    let mut urls = HashSet::new();
    for (fp, url) in keys {
        assert_eq!(fp, trawler_batch::input::fingerprint(&url));
        assert!(urls.insert(url.clone()), "{url} twice in the results");
    }
    urls
}

fn dead_letters(data: &Path) -> HashMap<String, String> {
    std::fs::read_to_string(data.join("dead.ndjson"))
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                v["url"].as_str().unwrap().to_owned(),
                v["kind"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn check_outcomes(data: &Path, expect: &HashMap<String, String>) {
    check_against(results(data), dead_letters(data), expect);
}

fn check_against(
    done: HashSet<String>,
    dead: HashMap<String, String>,
    expect: &HashMap<String, String>,
) {
    for (url, kind) in expect {
        if kind == "done" {
            assert!(done.contains(url), "{url} missing from the results");
            assert!(!dead.contains_key(url), "{url} both done and dead");
        } else {
            assert_eq!(dead.get(url), Some(kind), "{url}");
            assert!(!done.contains(url), "{url} dead yet in the results");
        }
    }
    assert_eq!(
        done.len() + dead.len(),
        expect.len(),
        "an outcome for a URL not in the input"
    );
}

#[test]
fn every_url_once_with_duplicates_faults_and_per_host_limits() {
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("urls.txt.gz");
    let lines = gen(
        &list,
        3_000,
        &[
            "--hosts",
            "20",
            "--slow-hosts",
            "2",
            "--down-hosts",
            "1",
            "--duplicates",
            "0.1",
            "--bad",
            "0.02",
            "--faults",
            "0.08",
        ],
    );
    let expect = expected(&lines, 3, 2);
    let (_sim, sim) = start_sim("50ms");
    let data = dir.path().join("data");
    let (l, d, s, det) = (
        list.display().to_string(),
        data.display().to_string(),
        sim.to_string(),
        format!("http://{sim}/detect"),
    );
    let crawl = Proc::start(&crawl_args(&l, &d, &s, &det));
    let api = addr_of(&crawl.wait_line("listening on ", MINUTE));
    // The API and /metrics answer while it runs (or it already finished).
    let r = http(api, "GET", "/api/v1/batch/batch", None);
    if r.status == 200 {
        assert_eq!(r.json()["job"], "batch");
        let m = http(api, "GET", "/metrics", None);
        assert!(m.body.contains("trawler_batch_done_total"), "{}", m.body);
    }
    let summary = crawl.wait_line("batch: ", 3 * MINUTE);
    assert!(summary.starts_with("state=finished"), "{summary}");
    let duplicates = lines.len() - expect.len();
    assert!(
        summary.contains(&format!(" duplicates={duplicates} ")),
        "{summary}"
    );
    check_outcomes(&data, &expect);
    // Every kind of fault showed up.
    let kinds: HashSet<_> = expect.values().collect();
    for k in [
        "invalid_url",
        "gave_up",
        "not_an_image",
        "client_error",
        "too_many_redirects",
        "too_large",
    ] {
        assert!(kinds.contains(&k.to_owned()), "the list has no {k}");
    }
    // Per-host limits, measured at the simulator.
    let stats = get(sim, "/_sim/images/stats");
    let hosts = stats["hosts"].as_object().unwrap();
    assert!(hosts.len() >= 20);
    for (host, h) in hosts {
        assert!(h["peak_in_flight"].as_u64().unwrap() <= 2, "{host}: {h}");
    }
    assert!(stats["detector"]["images"].as_u64().unwrap() >= results(&data).len() as u64);
    // A second run over the same list and folder does nothing again.
    let again = Proc::start(&crawl_args(&l, &d, &s, &det));
    let summary = again.wait_line("batch: ", MINUTE);
    assert!(summary.contains(" done=0 dead=0 "), "{summary}");
    check_outcomes(&data, &expect);
}

/// A file of `tests/fixtures/tls` (made by its `make.sh`).
fn tls_fixture(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/tls")
        .join(name)
        .display()
        .to_string()
}

#[test]
fn https_urls_are_done_once_with_the_ca_file_and_tls_dead_letters_without() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, ca) = (
        tls_fixture("server.pem"),
        tls_fixture("server-key.pem"),
        tls_fixture("ca.pem"),
    );
    let sim = Proc::start(&[
        "sim",
        "images",
        "--listen",
        "127.0.0.1:0",
        "--pool",
        "4",
        "--tls-cert",
        &cert,
        "--tls-key",
        &key,
    ]);
    let sim = addr_of(&sim.wait_line("listening on ", MINUTE));
    // https over 8 hosts in three formats, a redirect (relative, so it stays
    // https), duplicates, and plain http on the same simulator port.
    let mut lines: Vec<String> = (0..240)
        .map(|i| {
            let ext = ["jpg", "png", "webp"][i % 3];
            format!("https://h{}.images.test/img/{i}.{ext}", i % 8)
        })
        .collect();
    lines.push("https://h3.images.test/moved/7.jpg".into());
    lines.push(lines[5].clone());
    lines.push(lines[17].clone());
    lines.push("http://h2.images.test/img/1000.jpg".into());
    let list = dir.path().join("urls.txt");
    std::fs::write(&list, lines.join("\n") + "\n").unwrap();
    let (l, s, det) = (
        list.display().to_string(),
        sim.to_string(),
        format!("http://{sim}/detect"),
    );

    let data = dir.path().join("trusted");
    let d = data.display().to_string();
    let mut args = crawl_args(&l, &d, &s, &det);
    args.extend(["--ca-file", &ca]);
    let out = trawler(&args);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains(" duplicates=2 "), "{stdout}");
    let expect: HashMap<String, String> =
        lines.iter().map(|l| (l.clone(), "done".into())).collect();
    check_outcomes(&data, &expect);

    // Without the CA the certificate is not trusted: every https URL is a
    // dead letter of kind tls after one attempt, the http one is done.
    let data = dir.path().join("untrusted");
    let d = data.display().to_string();
    let out = trawler(&crawl_args(&l, &d, &s, &det));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let expect: HashMap<String, String> = lines
        .iter()
        .map(|l| {
            let kind = if l.starts_with("https://") {
                "tls"
            } else {
                "done"
            };
            (l.clone(), kind.into())
        })
        .collect();
    check_outcomes(&data, &expect);
    let text = std::fs::read_to_string(data.join("dead.ndjson")).unwrap();
    let first: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(first["attempts"], 1, "{first}");
    let error = first["error"].as_str().unwrap();
    assert!(error.contains("certificate"), "{error}");
}

#[test]
fn kill_9_mid_crawl_then_restart_gives_each_url_once() {
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("urls.txt.gz");
    // Slow hosts keep the crawl going long enough to be killed mid-way.
    let lines = gen(
        &list,
        4_000,
        &[
            "--hosts",
            "10",
            "--slow-hosts",
            "20",
            "--duplicates",
            "0.05",
            "--faults",
            "0.02",
        ],
    );
    let expect = expected(&lines, 3, 2);
    let (_sim, sim) = start_sim("200ms");
    let data = dir.path().join("data");
    let (l, d, s, det) = (
        list.display().to_string(),
        data.display().to_string(),
        sim.to_string(),
        format!("http://{sim}/detect"),
    );
    let mut first = Proc::start(&crawl_args(&l, &d, &s, &det));
    let api = addr_of(&first.wait_line("listening on ", MINUTE));
    eventually(2 * MINUTE, || {
        let s = get(api, "/api/v1/batch/batch");
        (s["done"].as_u64().unwrap() >= 800).then_some(())
    });
    first.kill9();
    let after_kill = results(&data);
    assert!(!after_kill.is_empty() && after_kill.len() < expect.len());
    let second = Proc::start(&crawl_args(&l, &d, &s, &det));
    let summary = second.wait_line("batch: ", 3 * MINUTE);
    assert!(summary.starts_with("state=finished"), "{summary}");
    let earlier: u64 = summary
        .split(" finished_earlier=")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap();
    assert!(earlier >= after_kill.len() as u64, "{summary}");
    check_outcomes(&data, &expect);
    assert!(results(&data).is_superset(&after_kill));
}

#[test]
fn bad_inputs_and_settings_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data").display().to_string();
    let missing = dir.path().join("nope.txt").display().to_string();
    let out = trawler(&[
        "crawl",
        "--urls",
        &missing,
        "--data",
        &data,
        "--listen",
        "127.0.0.1:0",
        "--connect-to",
        "127.0.0.1:9",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("nope.txt") && err.contains("No such file"),
        "{err}"
    );

    let job = dir.path().join("job.toml");
    std::fs::write(&job, "[job]\nname = \"x\"\nkind = \"batch\"\n[input]\nurls = [\"u.txt\"]\n[http]\nper_host_in_flight = 0\n").unwrap();
    let out = trawler(&[
        "crawl",
        "--config",
        &job.display().to_string(),
        "--data",
        &data,
        "--listen",
        "127.0.0.1:0",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("job.toml: http.per_host_in_flight: must be at least 1"),
        "{err}"
    );

    // A folder started over one list refuses another.
    let a = dir.path().join("a.txt");
    let b = dir.path().join("b.txt");
    std::fs::write(&a, "not a url\n").unwrap();
    std::fs::write(&b, "also not a url\n").unwrap();
    let run = |list: &Path| {
        trawler(&[
            "crawl",
            "--urls",
            &list.display().to_string(),
            "--data",
            &data,
            "--listen",
            "127.0.0.1:0",
            "--connect-to",
            "127.0.0.1:9",
            "--no-detector",
        ])
    };
    let out = run(&a);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dead = dead_letters(Path::new(&data));
    assert_eq!(
        dead.get("not a url").map(String::as_str),
        Some("invalid_url")
    );
    let out = run(&b);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("another input"), "{err}");
}

#[test]
fn a_cluster_of_three_with_one_killed_gives_each_url_once() {
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("urls.txt.gz");
    let lines = gen(
        &list,
        1_500,
        &[
            "--hosts",
            "6",
            "--slow-hosts",
            "10",
            "--duplicates",
            "0.1",
            "--bad",
            "0.02",
            "--faults",
            "0.04",
        ],
    );
    let expect = expected(&lines, 3, 2);
    let nats_port = free_port();
    let _nats = nats_server(dir.path(), nats_port);
    let (_sim, sim) = start_sim("100ms");
    let shared = dir.path().join("shared");
    let (l, s, det, o, nats) = (
        list.display().to_string(),
        sim.to_string(),
        format!("http://{sim}/detect"),
        shared.display().to_string(),
        format!("nats://127.0.0.1:{nats_port}"),
    );
    let node = |n: usize| {
        let data = dir.path().join(format!("node-{n}")).display().to_string();
        let id = format!("node-{n}");
        let mut args: Vec<String> = crawl_args(&l, &data, &s, &det)
            .into_iter()
            .map(str::to_owned)
            .collect();
        let at = args.iter().position(|a| a == "--segment-urls").unwrap();
        args[at + 1] = "60".into();
        args.extend(
            [
                "--cluster",
                &nats,
                "--node-id",
                &id,
                "--lease-ttl",
                "2s",
                "--output",
                &o,
            ]
            .map(str::to_owned),
        );
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let p = Proc::start(&args);
        let api = addr_of(&p.wait_line("listening on ", MINUTE));
        (p, api)
    };
    let (mut victim, victim_api) = node(1);
    let (second, _) = node(2);
    let (third, _) = node(3);
    // Killed once it has committed a segment and holds an unfinished one.
    eventually(2 * MINUTE, || {
        let st = get(victim_api, "/api/v1/batch/batch");
        (st["segments_done"].as_u64().unwrap() >= 1 && st["segments_held"].as_u64().unwrap() >= 1)
            .then_some(())
    });
    victim.kill9();
    let mut total = 0;
    for p in [second, third] {
        let summary = p.wait_line("batch: ", 3 * MINUTE);
        assert!(summary.starts_with("state=finished"), "{summary}");
        let duplicates = lines.len() - expect.len();
        assert!(
            summary.contains(&format!(" duplicates={duplicates} ")),
            "{summary}"
        );
        total += 1;
    }
    assert_eq!(total, 2);
    // The union of the committed files: every URL once, none lost.
    let done = results(&shared);
    let mut dead = HashMap::new();
    for entry in std::fs::read_dir(shared.join("dead")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "ndjson") {
            for l in std::fs::read_to_string(&path).unwrap().lines() {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                let url = v["url"].as_str().unwrap().to_owned();
                let kind = v["kind"].as_str().unwrap().to_owned();
                assert!(dead.insert(url.clone(), kind).is_none(), "{url} dead twice");
            }
        }
    }
    check_against(done, dead, &expect);
    // Every segment committed; the killed node's half-done segment (its
    // temporary file is left) committed by another; no survivor's
    // temporary file left.
    let mut committed = 0;
    for entry in std::fs::read_dir(shared.join("results")).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        if let Some(seg) = name.strip_suffix(".node-1.tmp") {
            assert!(
                shared.join("results").join(seg).exists(),
                "{seg} not redone"
            );
        } else if name.ends_with(".tmp") {
            panic!("{name} left by a node that finished");
        } else {
            committed += 1;
        }
    }
    assert_eq!(committed, lines.len().div_ceil(60));
}

#[test]
fn a_cluster_node_over_another_input_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let nats_port = free_port();
    let _nats = nats_server(dir.path(), nats_port);
    let nats = format!("nats://127.0.0.1:{nats_port}");
    let output = dir.path().join("shared").display().to_string();
    let run = |list: &str, node: &str| {
        let path = dir.path().join(list);
        std::fs::write(&path, format!("not a url from {list}\n")).unwrap();
        let data = dir.path().join(node).display().to_string();
        trawler(&[
            "crawl",
            "--urls",
            &path.display().to_string(),
            "--data",
            &data,
            "--listen",
            "127.0.0.1:0",
            "--connect-to",
            "127.0.0.1:9",
            "--no-detector",
            "--cluster",
            &nats,
            "--node-id",
            node,
            "--output",
            &output,
        ])
    };
    let out = run("a.txt", "a");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dead = std::fs::read_to_string(dir.path().join("shared/dead/seg-000000.ndjson")).unwrap();
    assert!(dead.contains("invalid_url"), "{dead}");
    let out = run("b.txt", "b");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("another input"), "{err}");
}

/// The host of a URL of the generated lists (`http://HOST/…`).
fn host_of(url: &str) -> &str {
    url.split('/').nth(2).unwrap_or("")
}

/// Per-host figures: more hosts (1,500) than the table's bound (1,000),
/// checked while the crawl runs (the API, its 4xx answers, `/metrics`)
/// and at its end (`summary.json`) against the results, the dead letters
/// and the requests the simulator saw.
#[test]
fn per_host_figures_match_the_results_and_the_simulator_within_the_bound() {
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("urls.txt.gz");
    let lines = gen(
        &list,
        3_000,
        &[
            "--hosts",
            "1500",
            "--down-hosts",
            "3",
            "--duplicates",
            "0.05",
            "--bad",
            "0.01",
            "--faults",
            "0.08",
        ],
    );
    let expect = expected(&lines, 3, 2);
    let (_sim, sim) = start_sim("50ms");
    let data = dir.path().join("data");
    let (l, d, s, det) = (
        list.display().to_string(),
        data.display().to_string(),
        sim.to_string(),
        format!("http://{sim}/detect"),
    );
    let mut args = crawl_args(&l, &d, &s, &det);
    // Retries of the down hosts 5 s apart: the crawl lasts long enough for
    // the checks below while it runs.
    let at = args.iter().position(|a| *a == "--backoff").unwrap();
    args[at + 1] = "5s";
    let crawl = Proc::start(&args);
    let api = addr_of(&crawl.wait_line("listening on ", MINUTE));

    let hosts = get(api, "/api/v1/batch/batch/hosts?limit=1000");
    assert!(hosts["tracked"].as_u64().unwrap() <= 1000, "{hosts}");
    assert_eq!(hosts["capacity"], 1000, "{hosts}");
    assert!(hosts["hosts"].as_array().unwrap().len() <= 1000);
    let default = get(api, "/api/v1/batch/batch/hosts");
    assert!(
        default["hosts"].as_array().unwrap().len() <= 20,
        "{default}"
    );
    assert_eq!(default["rest"]["host"], "other", "{default}");
    for (path, status, code) in [
        ("/api/v1/batch/batch/hosts?limit=0", 400, "bad_limit"),
        ("/api/v1/batch/batch/hosts?limit=1001", 400, "bad_limit"),
        ("/api/v1/batch/batch/hosts?limit=many", 400, "bad_limit"),
        ("/api/v1/batch/batch/hosts?top=3", 400, "bad_query"),
        ("/api/v1/batch/nope/hosts", 404, "not_found"),
        ("/api/v1/batch/batch/nope", 404, "no_route"),
    ] {
        let r = http(api, "GET", path, None);
        assert_eq!(r.status, status, "{path}: {}", r.body);
        assert_eq!(r.json()["error"]["code"], code, "{path}: {}", r.body);
    }
    let st = get(api, "/api/v1/batch/batch");
    for figure in ["done_per_s", "dead_per_s", "retries_per_s", "fraction_done"] {
        assert!(st[figure].is_number(), "{figure}: {st}");
    }
    let metrics = http(api, "GET", "/metrics", None).body;
    let host_lines: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("trawler_batch_host_urls_total{"))
        .collect();
    assert!(
        !host_lines.is_empty() && host_lines.len() <= 21,
        "{host_lines:?}"
    );
    assert!(
        host_lines.iter().any(|l| l.contains("host=\"other\"")),
        "{host_lines:?}"
    );
    for name in [
        "trawler_batch_done_per_second",
        "trawler_batch_host_done_total{",
        "trawler_batch_host_in_flight{",
        "trawler_batch_host_urls_per_second{",
    ] {
        assert!(metrics.contains(name), "{name} missing from /metrics");
    }

    let summary = crawl.wait_line("batch: ", 3 * MINUTE);
    assert!(summary.starts_with("state=finished"), "{summary}");
    check_outcomes(&data, &expect);

    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(data.join("summary.json")).unwrap()).unwrap();
    let (status, hosts) = (&json["status"], &json["hosts"]);
    assert!(hosts["tracked"].as_u64().unwrap() <= 1000, "{hosts}");
    // Rows and the rest add up to the totals.
    let rows: Vec<&serde_json::Value> = hosts["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .chain([&hosts["rest"]])
        .collect();
    let total = |k: &str| rows.iter().map(|h| h[k].as_u64().unwrap()).sum::<u64>();
    let invalid = expect.values().filter(|k| *k == "invalid_url").count() as u64;
    assert_eq!(total("done"), status["done"].as_u64().unwrap());
    assert_eq!(total("dead"), status["dead"].as_u64().unwrap() - invalid);
    assert_eq!(total("retries"), status["retries"].as_u64().unwrap());
    assert_eq!(total("bytes"), status["bytes"].as_u64().unwrap());
    assert_eq!(total("in_flight"), 0);
    assert_eq!(total("urls"), total("done") + total("dead"));

    // Each host counted from its first URL: as many done as it has rows in
    // the results, dead as in the dead letters, and as many requests as the
    // simulator answered it (one per attempt, one more per redirect).
    let done = results(&data);
    let mut done_of: HashMap<&str, u64> = HashMap::new();
    for url in &done {
        *done_of.entry(host_of(url)).or_default() += 1;
    }
    let dead = dead_letters(&data);
    let mut dead_of: HashMap<&str, u64> = HashMap::new();
    for (url, kind) in &dead {
        if kind != "invalid_url" {
            *dead_of.entry(host_of(url)).or_default() += 1;
        }
    }
    let (mut moved_of, mut looped): (HashMap<&str, u64>, HashSet<&str>) = Default::default();
    for url in expect.keys() {
        match url.split('/').nth(3) {
            Some("moved") => *moved_of.entry(host_of(url)).or_default() += 1,
            Some("loop") => {
                looped.insert(host_of(url));
            }
            _ => {}
        }
    }
    let served = get(sim, "/_sim/images/stats");
    let mut compared = 0;
    for h in hosts["hosts"].as_array().unwrap() {
        if h["complete"] != true {
            continue;
        }
        let name = h["host"].as_str().unwrap();
        let n = |k: &str| h[k].as_u64().unwrap();
        assert_eq!(n("done"), done_of.get(name).copied().unwrap_or(0), "{h}");
        assert_eq!(n("dead"), dead_of.get(name).copied().unwrap_or(0), "{h}");
        if !looped.contains(name) {
            let requests = served["hosts"][name]["requests"].as_u64().unwrap();
            let moved = moved_of.get(name).copied().unwrap_or(0);
            assert_eq!(requests, n("urls") + n("retries") + moved, "{name}: {h}");
        }
        compared += 1;
    }
    assert!(
        compared >= 50,
        "only {compared} hosts with every URL counted"
    );
}
