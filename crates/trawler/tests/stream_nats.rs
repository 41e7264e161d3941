//! A stream job with a JetStream source, against Debian's nats-server
//! (`scripts/deps` installs it): events published by `trawler gen expo`
//! are counted exactly once, also when the node is killed with SIGKILL in
//! the middle of a publication and started again on the same data.
//!
//! Evidence: the windows export. With `--useless-share 0 --late-share 0`
//! every event is accepted, so the four count metrics (views, clicks,
//! carts, purchases) summed over every window and group equal the group
//! memberships of the events published — read back from the same events
//! written to a file with the same flags.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{addr_of, free_port, http, nats_server, Proc};

const START: i64 = 1_764_547_200_000;
/// Events per second of event time.
const TIME_RATE: f64 = 2_000.0;

/// Creates the job's stream (the node's configuration), so events can be
/// published before the node runs.
fn create_stream(port: u16) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let client = async_nats::connect(format!("nats://127.0.0.1:{port}"))
            .await
            .unwrap();
        async_nats::jetstream::new(client)
            .get_or_create_stream(async_nats::jetstream::stream::Config {
                name: "TRAWLER_EVENTS_expo".into(),
                subjects: vec!["expo.events".into()],
                ..Default::default()
            })
            .await
            .unwrap();
    });
}

/// The expo job with a nats source, 10 s windows and 5 s of lateness.
fn job(dir: &Path, port: u16) -> PathBuf {
    let text = include_str!("../../../jobs/expo.toml")
        .replacen("source = \"http\"", "source = \"nats\"", 1)
        .replacen("window = \"1m\"", "window = \"10s\"", 1)
        .replacen("lateness = \"30s\"", "lateness = \"5s\"", 1);
    let path = dir.join("expo-nats.toml");
    std::fs::write(
        &path,
        format!("{text}\n[stream.nats]\nservers = [\"nats://127.0.0.1:{port}\"]\nsubject = \"expo.events\"\n"),
    )
    .unwrap();
    path
}

/// `trawler gen expo` of `events` events from `start`, every one useful
/// and in order.
fn gen(out: &str, seed: u64, start: i64, events: u64, rate: f64, batch: usize) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_trawler"));
    cmd.args(["gen", "expo", "--out", out])
        .args(["--seed", &seed.to_string()])
        .args(["--start", &start.to_string()])
        .args(["--events", &events.to_string()])
        .args(["--rate", &rate.to_string()])
        .args(["--time-rate", &TIME_RATE.to_string()])
        .args(["--batch", &batch.to_string()])
        .args(["--useless-share", "0", "--late-share", "0"])
        .args(["--users", "5000"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .env("RUST_LOG", "warn");
    cmd
}

/// Group memberships by type of the events `gen` draws (written to a file).
fn memberships(dir: &Path, seed: u64, start: i64, events: u64) -> HashMap<String, u64> {
    let file = dir.join(format!("events-{seed}.ndjson"));
    let status = gen(&file.display().to_string(), seed, start, events, 0.0, 1000)
        .status()
        .unwrap();
    assert!(status.success());
    let mut by_type = HashMap::new();
    for line in std::fs::read_to_string(&file).unwrap().lines() {
        let e: serde_json::Value = serde_json::from_str(line).unwrap();
        let members = e["exp"].as_object().map_or(0, |m| m.len()) as u64;
        *by_type
            .entry(e["type"].as_str().unwrap().to_owned())
            .or_insert(0) += members;
    }
    by_type
}

fn publish(port: u16, seed: u64, start: i64, events: u64, rate: f64) -> Child {
    gen(
        &format!("nats://127.0.0.1:{port}/expo.events"),
        seed,
        start,
        events,
        rate,
        250,
    )
    .stderr(Stdio::inherit())
    .spawn()
    .unwrap()
}

fn start_node(config: &Path, data: &Path) -> (Proc, SocketAddr) {
    let node = Proc::start(&[
        "run",
        "--listen",
        "127.0.0.1:0",
        "--config",
        config.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
    ]);
    let addr = addr_of(&node.wait_line("listening on", Duration::from_secs(30)));
    (node, addr)
}

fn stats(api: SocketAddr) -> serde_json::Value {
    http(api, "GET", "/api/v1/streams/expo", None).json()["stats"].clone()
}

fn wait_for(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !ok() {
        assert!(Instant::now() < deadline, "{what}: not within {timeout:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Sums of each count metric over every stored window and group whose
/// window starts before `to`.
fn stored_counts(api: SocketAddr, to: i64) -> HashMap<String, f64> {
    let path = format!("/api/v1/streams/expo/windows?format=csv&to={to}");
    let csv = http(api, "GET", &path, None).body;
    let mut lines = csv.lines();
    assert_eq!(
        lines.next(),
        Some("window_start_ms,experiment,variant,metric,value")
    );
    let mut sums = HashMap::new();
    for l in lines {
        let f: Vec<&str> = l.split(',').collect();
        if ["views", "clicks", "carts", "purchases"].contains(&f[3]) {
            *sums.entry(f[3].to_owned()).or_insert(0.0) += f[4].parse::<f64>().unwrap();
        }
    }
    sums
}

#[test]
fn jetstream_events_count_exactly_once_across_a_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let _nats = nats_server(dir.path(), port);
    create_stream(port);
    let config = job(dir.path(), port);
    let data = dir.path().join("data");

    // First run: 20,000 events in 80 messages, published before the node
    // starts; all of them accepted.
    let (n1, n2) = (20_000u64, 60_000u64);
    let start2 = START + (n1 as f64 * 1000.0 / TIME_RATE) as i64;
    let flush_ts = start2 + (n2 as f64 * 1000.0 / TIME_RATE) as i64 + 60_000;
    let p = publish(port, 1, START, n1, 0.0).wait_with_output().unwrap();
    assert!(p.status.success());
    let (mut node, api) = start_node(&config, &data);
    wait_for(
        "the first publication accepted",
        Duration::from_secs(60),
        || stats(api)["accepted"].as_u64() == Some(n1),
    );
    let s = stats(api);
    assert_eq!(s["late"], 0, "{s}");
    assert_eq!(s["filtered"], 0, "{s}");

    // Second publication, 60,000 events in 240 messages over ~3 s; the
    // node is killed with SIGKILL in the middle of it.
    let publisher = publish(port, 2, start2, n2, 20_000.0);
    wait_for(
        "the second publication under way",
        Duration::from_secs(60),
        || stats(api)["accepted"].as_u64().unwrap_or(0) >= n1 + n2 / 4,
    );
    node.kill9();
    let out = publisher.wait_with_output().unwrap();
    assert!(out.status.success(), "the publisher failed");

    // Restart on the same data; then one more event, a minute after the
    // rest, which closes every earlier window.
    let (_node, api) = start_node(&config, &data);
    let p = publish(port, 3, flush_ts, 1, 0.0)
        .wait_with_output()
        .unwrap();
    assert!(p.status.success());
    wait_for(
        "the last event accepted and the windows before it stored",
        Duration::from_secs(90),
        || {
            let s = stats(api);
            s["watermark_ms"].as_i64() == Some(flush_ts)
                && s["open_windows"].as_u64().is_some_and(|n| n <= 1)
        },
    );

    let mut expected = memberships(dir.path(), 1, START, n1);
    for (t, n) in memberships(dir.path(), 2, start2, n2) {
        *expected.entry(t).or_insert(0) += n;
    }
    // The last event's window (which the idle rule may close) is left out.
    let stored = stored_counts(api, flush_ts - 30_000);
    for (metric, ty) in [
        ("views", "page_view"),
        ("clicks", "click"),
        ("carts", "add_to_cart"),
        ("purchases", "purchase"),
    ] {
        let want = expected.get(ty).copied().unwrap_or(0) as f64;
        let got = stored.get(metric).copied().unwrap_or(0.0);
        assert_eq!(
            got, want,
            "{metric}: stored {got}, published {want} group memberships of {ty}"
        );
    }
    assert_eq!(stats(api)["late"], 0);
}
