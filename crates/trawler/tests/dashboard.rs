//! The dashboard in a real browser, for the Mockstagram job and for the
//! packages job: `trawler run` against its built-in simulator, Debian's Chromium driven headless by `tests/browser/dashboard.mjs`
//! (playwright-core). Checks that the health numbers are real, that a live
//! number changes without a reload, that searching a pk shows its charts,
//! and that the page fits a phone. Screenshots are kept under
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
    let chromium = chromium();
    let browser_dir = repo_root().join("tests/browser");
    assert!(
        browser_dir.join("node_modules/playwright-core").exists(),
        "playwright-core is not installed: run scripts/test, or `npm ci --prefix tests/browser`"
    );
    let artifacts = Path::new(env!("CARGO_TARGET_TMPDIR")).join("../test-artifacts");
    let shots = [
        format!("{prefix}.png"),
        format!("{prefix}-account.png"),
        format!("{prefix}-phone.png"),
    ];
    for shot in &shots {
        let _ = std::fs::remove_file(artifacts.join(shot));
    }
    let mut node = Command::new("node")
        .current_dir(&browser_dir)
        .arg("dashboard.mjs")
        .arg(api)
        .arg(&artifacts)
        .arg(key)
        .arg(prefix)
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
            panic!("the browser test did not finish within 3 minutes");
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let output = node.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        status.success(),
        "the browser test failed:\n{stderr}\n{stdout}"
    );
    let seen: serde_json::Value = serde_json::from_str(stdout.trim().lines().last().unwrap())
        .unwrap_or_else(|e| panic!("unexpected output ({e}): {stdout}"));
    eprintln!("the browser saw {seen}");
    for shot in &shots {
        let len = std::fs::metadata(artifacts.join(shot))
            .map(|m| m.len())
            .unwrap_or(0);
        assert!(len > 10_000, "screenshot {shot} missing or empty");
    }
    seen
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
