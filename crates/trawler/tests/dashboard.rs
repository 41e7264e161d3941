//! The dashboard in a real browser, for the Mockstagram job and the
//! packages job (`trawler run` against its built-in simulator,
//! `tests/browser/dashboard.mjs`) and for the stream job `expo` (fed by
//! `trawler gen expo`, `tests/browser/stream.mjs`): Debian's Chromium
//! driven headless by playwright-core. Checks that the health numbers are
//! real, that a live number changes without a reload, that searching a pk
//! shows its charts, that a stream job's variants are shown side by side,
//! and that the pages fit a phone. Screenshots are kept under
//! `target/test-artifacts/`.
//!
//! `scripts/test` installs what this needs (`chromium`, `nodejs`, and
//! `npm ci` in `tests/browser`); run alone, the test says what is missing.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::Proc;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn chromium() -> PathBuf {
    let path = std::env::var_os("CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    assert!(
        path.exists(),
        "{} is missing: run scripts/deps (installs Debian's chromium) or set CHROMIUM",
        path.display()
    );
    path
}

#[test]
fn the_dashboard_shows_live_health_leaderboard_and_an_account_in_a_real_browser() {
    let data = tempfile::tempdir().unwrap();
    let run = Proc::start(&[
        "run",
        "--ids",
        "1000000..1005000",
        "--interval",
        "5s",
        "--suspicious-period",
        "30s",
        "--data",
        data.path().to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
    ]);
    let api = run.wait_line("listening on ", Duration::from_secs(60));

    let seen = browse(&api, "1000042", "dashboard");
    assert_eq!(seen["tracked"], 5000, "{seen}");
    let polls = seen["polls"].as_array().unwrap();
    assert!(polls[0].as_f64().unwrap() > 0.0, "{seen}");
    assert!(
        polls[1].as_f64().unwrap() > polls[0].as_f64().unwrap(),
        "{seen}"
    );
    assert_eq!(seen["leaderboardRows"], 20, "{seen}");
    drop(run);
}

/// The same page for another job (`jobs/packages.toml`, string keys, a
/// float field, no enrichment) against the built-in simulator, as the
/// README's demo runs it: the page takes every name from the job.
#[test]
fn the_dashboard_shows_the_packages_job_in_a_real_browser() {
    let data = tempfile::tempdir().unwrap();
    let job = repo_root().join("jobs/packages.toml");
    let run = Proc::start(&[
        "run",
        "--config",
        job.to_str().unwrap(),
        "--interval",
        "2s",
        "--data",
        data.path().to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
    ]);
    let api = run.wait_line("listening on ", Duration::from_secs(60));
    let seen = browse(&api, "tokio-http", "dashboard-packages");
    assert_eq!(seen["job"], "packages", "{seen}");
    // 1,000 listed; the 2 the registry does not know leave once read.
    let tracked = seen["tracked"].as_u64().unwrap();
    assert!((998..=1000).contains(&tracked), "{seen}");
    assert_eq!(seen["leaderboardRows"], 20, "{seen}");
    drop(run);
}

/// Drives `tests/browser/dashboard.mjs` against the API at `api`, opening
/// the entity `key`; returns what the browser saw. Screenshots go to
/// `target/test-artifacts/{prefix}*.png` and must be there afterwards.
fn browse(api: &str, key: &str, prefix: &str) -> serde_json::Value {
    run_script(
        "dashboard.mjs",
        &[api, key, prefix],
        &[
            format!("{prefix}.png"),
            format!("{prefix}-account.png"),
            format!("{prefix}-phone.png"),
        ],
    )
}

/// Runs the browser script `script` (in `tests/browser`) with the base URL,
/// the artifact directory and `args`... as arguments (the artifact directory
/// second); returns the JSON line it printed. `shots` are the screenshots it
/// must leave in `target/test-artifacts/`.
fn run_script(script: &str, args: &[&str], shots: &[String]) -> serde_json::Value {
    let chromium = chromium();
    let browser_dir = repo_root().join("tests/browser");
    assert!(
        browser_dir.join("node_modules/playwright-core").exists(),
        "playwright-core is not installed: run scripts/test, or `npm ci --prefix tests/browser`"
    );
    let artifacts = Path::new(env!("CARGO_TARGET_TMPDIR")).join("../test-artifacts");
    for shot in shots {
        let _ = std::fs::remove_file(artifacts.join(shot));
    }
    let (base, rest) = args.split_first().expect("a base URL");
    let mut node = Command::new("node")
        .current_dir(&browser_dir)
        .arg(script)
        .arg(base)
        .arg(&artifacts)
        .args(rest)
        .env("CHROMIUM", &chromium)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("node is missing: run scripts/deps (installs Debian's nodejs)");
    let deadline = Instant::now() + Duration::from_secs(180);
    let status = loop {
        if let Some(status) = node.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = node.kill();
            panic!("the browser test {script} did not finish within 3 minutes");
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let output = node.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        status.success(),
        "the browser test {script} failed:\n{stderr}\n{stdout}"
    );
    let seen: serde_json::Value = serde_json::from_str(stdout.trim().lines().last().unwrap())
        .unwrap_or_else(|e| panic!("unexpected output ({e}): {stdout}"));
    eprintln!("the browser saw {seen}");
    for shot in shots {
        let len = std::fs::metadata(artifacts.join(shot))
            .map(|m| m.len())
            .unwrap_or(0);
        assert!(len > 10_000, "screenshot {shot} missing or empty");
    }
    seen
}

/// The stream job's page (`jobs/expo.toml`), fed by the real generator:
/// two minutes of event time (2025-12-01T08:40Z on), so the first window
/// closes and is stored. The browser checks the health strip, the
/// experiment selector, one chart line per variant and the table of the
/// latest closed window.
#[test]
fn the_stream_dashboard_shows_health_and_variants_side_by_side_in_a_real_browser() {
    let data = tempfile::tempdir().unwrap();
    let job = repo_root().join("jobs/expo.toml");
    let run = Proc::start(&[
        "run",
        "--config",
        job.to_str().unwrap(),
        "--data",
        data.path().to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
    ]);
    let api = run.wait_line("listening on ", Duration::from_secs(60));
    let addr = common::addr_of(&api);

    let out = format!("{api}/api/v1/streams/expo/events");
    let mut gen = Proc::start(&[
        "gen",
        "expo",
        "--events",
        "60000",
        "--rate",
        "0",
        "--start",
        "1764578400000",
        "--time-rate",
        "500",
        "--out",
        &out,
    ]);
    let status = common::eventually(Duration::from_secs(120), || gen.child.try_wait().unwrap());
    assert!(status.success(), "trawler gen expo failed: {status}");

    let stats = common::eventually(Duration::from_secs(60), || {
        let job = common::get(addr, "/api/v1/streams/expo");
        (job["stats"]["windows_closed"].as_u64() >= Some(1)).then_some(job["stats"].clone())
    });
    assert!(stats["accepted"].as_u64() > Some(0), "{stats}");
    assert!(stats["filtered"].as_u64() > Some(0), "{stats}");

    let seen = run_script(
        "stream.mjs",
        &[&api, "stream"],
        &["stream.png".to_owned(), "stream-phone.png".to_owned()],
    );
    assert_eq!(seen["job"], "expo", "{seen}");
    assert!(seen["accepted"].as_u64() > Some(0), "{seen}");
    assert!(seen["filtered"].as_u64() > Some(0), "{seen}");
    assert_eq!(seen["keys"], 20, "{seen}");
    assert_eq!(seen["metric"], "conversion", "{seen}");
    assert_eq!(seen["chartSeries"].as_array().unwrap().len(), 3, "{seen}");
    assert!(
        !seen["conversion"].as_object().unwrap().is_empty(),
        "{seen}"
    );
    drop(run);
}

#[test]
fn the_top_n_dashboard_shows_the_hottest_lists_and_pushed_changes_in_a_real_browser() {
    let data = tempfile::tempdir().unwrap();
    let job = repo_root().join("jobs/comments.toml");
    let run = Proc::start(&[
        "run",
        "--config",
        job.to_str().unwrap(),
        "--data",
        data.path().to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
    ]);
    let api = run.wait_line("listening on ", Duration::from_secs(60));
    let addr = common::addr_of(&api);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    let mut body = String::new();
    for i in 0..600 {
        body += &format!(
            "{{\"ts\":{now},\"post\":\"p{}\",\"user\":\"u{}\",\"words\":2}}\n",
            i % 5,
            i % 17
        );
    }
    let r = common::http(addr, "POST", "/api/v1/streams/comments/events", Some(&body));
    assert_eq!(r.status, 200, "{}", r.body);

    let seen = run_script("topn.mjs", &[&api], &["topn.png".to_owned()]);
    assert_eq!(seen["job"], "comments", "{seen}");
    assert_eq!(seen["keys"].as_array().unwrap().len(), 5, "{seen}");
    assert_eq!(seen["pushed"], true, "{seen}");
    drop(run);
}

/// The batch job's page (`trawler crawl` over the image simulator, slow
/// hosts one request at a time, so it runs for a minute): the browser
/// checks that the figures are the API's, that done, the bar and the rate
/// move without a reload, the busiest hosts and the dead-letter kinds.
#[test]
fn the_batch_dashboard_shows_progress_rates_and_hosts_in_a_real_browser() {
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("urls.txt.gz");
    let out = Command::new(env!("CARGO_BIN_EXE_trawler"))
        .args(["gen", "urls", "--count", "3000", "--hosts", "2"])
        .args(["--slow-hosts", "10", "--faults", "0.05", "--bad", "0.01"])
        .arg("--out")
        .arg(&list)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sim = Proc::start(&["sim", "images", "--listen", "127.0.0.1:0"]);
    let sim = common::addr_of(&sim.wait_line("listening on ", Duration::from_secs(60)));
    let (sim_addr, detector) = (sim.to_string(), format!("http://{sim}/detect"));
    let data = dir.path().join("data");
    let crawl = Proc::start(&[
        "crawl",
        "--urls",
        list.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--connect-to",
        &sim_addr,
        "--detector",
        &detector,
        "--per-host",
        "1",
        "--backoff",
        "100ms",
        "--roll-after",
        "500ms",
        "--listen",
        "127.0.0.1:0",
    ]);
    let api = crawl.wait_line("listening on ", Duration::from_secs(60));
    let seen = run_script(
        "batch.mjs",
        &[&api, "batch"],
        &["batch.png".to_owned(), "batch-phone.png".to_owned()],
    );
    assert_eq!(seen["job"], "batch", "{seen}");
    assert!(seen["moved"].as_u64() > seen["done"].as_u64(), "{seen}");
    assert!(seen["donePerS"].as_f64() > Some(0.0), "{seen}");
    assert!(seen["hosts"].as_u64() >= Some(2), "{seen}");
    assert!(!seen["deadKinds"].as_array().unwrap().is_empty(), "{seen}");
    drop(crawl);
}

/// Playwright's `waitForFunction` takes the Promise an async predicate
/// returns as true at once, so such a wait never waits: it once let the
/// dashboard check open an account before it had a stored point (an empty
/// chart, seen as a flake under load). Browser scripts wait in a loop of
/// `page.evaluate` instead.
#[test]
fn browser_scripts_never_wait_on_an_async_predicate() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/browser");
    let mut checked = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "mjs") {
            let text = std::fs::read_to_string(&path).unwrap();
            let compact: String = text.split_whitespace().collect();
            assert!(
                !compact.contains("waitForFunction(async"),
                "{}: waitForFunction with an async predicate does not wait",
                path.display()
            );
            checked += 1;
        }
    }
    assert!(checked > 0, "no browser script found in {dir}");
}
