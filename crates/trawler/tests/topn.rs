//! The top-N job through the real binary and real sockets: lists against
//! a brute-force count, subscriptions (snapshot, updates, coalescing, key
//! changes, a slow subscriber dropped, the caps), and `kill -9`.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{addr_of, eventually, get, http, http_with, Proc};
use serde_json::Value;

const EVENTS: &str = "/api/v1/streams/comments/events";
const BASE: &str = "/api/v1/streams/comments";

fn comments_job() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../jobs/comments.toml")
}

/// The job with some text replaced, written into `dir`.
fn job_with(dir: &Path, replace: &[(&str, &str)]) -> PathBuf {
    common::job_with(&comments_job(), dir, replace)
}

fn start(job: &Path, data: &Path) -> (Proc, SocketAddr) {
    let p = Proc::start(&[
        "run",
        "--config",
        job.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
    ]);
    let api = addr_of(&p.wait_line("listening on ", Duration::from_secs(60)));
    (p, api)
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn comment(ts: i64, post: &str, user: &str) -> String {
    format!("{{\"ts\":{ts},\"post\":\"{post}\",\"user\":\"{user}\",\"words\":3}}\n")
}

fn post(api: SocketAddr, body: &str) -> Value {
    let r = http_with(
        api,
        "POST",
        EVENTS,
        Some(body),
        &[("Content-Type", "application/x-ndjson")],
    );
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()
}

/// `[(user, count)]` of one list in an answer.
fn members(list: &Value) -> Vec<(String, u64)> {
    list["top"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["member"].as_str().unwrap().to_owned(),
                m["value"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// The brute-force answer: counts per user, highest first, ties by text.
fn brute(events: &[(String, String)], post: &str, n: usize) -> Vec<(String, u64)> {
    let mut counts: HashMap<&str, u64> = HashMap::new();
    for (p, u) in events {
        if p == post {
            *counts.entry(u).or_default() += 1;
        }
    }
    let mut v: Vec<(String, u64)> = counts.into_iter().map(|(u, c)| (u.to_owned(), c)).collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    v.truncate(n);
    v
}

/// One server-sent event as received.
#[derive(Debug, Clone)]
struct Sse {
    event: String,
    data: Value,
}

/// A subscriber on a raw socket; events arrive on a channel. With
/// `read = false` it never reads after the headers (a stalled client).
struct Subscriber {
    rx: mpsc::Receiver<Sse>,
    status: u16,
    _stream: TcpStream,
}

fn subscribe(api: SocketAddr, keys: &str, read: bool) -> Subscriber {
    let mut s = TcpStream::connect(api).unwrap();
    write!(
        s,
        "GET {BASE}/subscribe?keys={keys} HTTP/1.1\r\nHost: {api}\r\nAccept: text/event-stream\r\n\r\n"
    )
    .unwrap();
    let mut reader = BufReader::new(s.try_clone().unwrap());
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    let status: u16 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    loop {
        line.clear();
        reader.read_line(&mut line).unwrap();
        if line == "\r\n" || line.is_empty() {
            break;
        }
    }
    let (tx, rx) = mpsc::channel();
    if read && status == 200 {
        std::thread::spawn(move || {
            let (mut event, mut data) = (String::new(), String::new());
            let mut line = String::new();
            loop {
                line.clear();
                match reader.read_line(&mut line) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
                let l = line.trim_end_matches(['\r', '\n']);
                if let Some(e) = l.strip_prefix("event: ") {
                    event = e.to_owned();
                } else if let Some(d) = l.strip_prefix("data: ") {
                    data.push_str(d);
                } else if l.is_empty() && !data.is_empty() {
                    let sse = Sse {
                        event: std::mem::take(&mut event),
                        data: serde_json::from_str(&std::mem::take(&mut data)).unwrap(),
                    };
                    if tx.send(sse).is_err() {
                        return;
                    }
                }
            }
        });
    }
    Subscriber {
        rx,
        status,
        _stream: s,
    }
}

impl Subscriber {
    /// The next event, waiting up to a generous deadline.
    fn next(&self) -> Sse {
        self.rx
            .recv_timeout(Duration::from_secs(30))
            .expect("an event within 30 s")
    }

    /// Events until one whose lists hold `key` with `pred`.
    fn until(&self, key: &str, pred: impl Fn(&Value) -> bool) -> Vec<Sse> {
        let mut seen = Vec::new();
        loop {
            let e = self.next();
            let hit = e.data["lists"]
                .as_array()
                .is_some_and(|l| l.iter().any(|l| l["key"] == key && pred(l)));
            seen.push(e);
            if hit {
                return seen;
            }
        }
    }
}

#[test]
fn lists_match_a_brute_force_count_and_subscribers_get_snapshots_and_coalesced_updates() {
    let dir = tempfile::tempdir().unwrap();
    let job = job_with(dir.path(), &[("n = 10", "n = 3")]);
    let (mut run, api) = start(&job, &dir.path().join("data"));
    let t = now_ms();

    // Ties break by user text: u10 before u9.
    let mut events = Vec::new();
    let mut body = String::new();
    for (p, u, times) in [
        ("p1", "u9", 3),
        ("p1", "u10", 3),
        ("p1", "u2", 5),
        ("p1", "u3", 1),
        ("p2", "u2", 2),
    ] {
        for _ in 0..times {
            body += &comment(t, p, u);
            events.push((p.to_owned(), u.to_owned()));
        }
    }
    body += "{\"ts\":1,\"post\":\"p1\"}\n";
    let a = post(api, &body);
    assert_eq!(
        (a["accepted"].as_u64(), a["malformed"].as_u64()),
        (Some(14), Some(1)),
        "{a}"
    );
    assert!(
        a["errors"][0]["error"].as_str().unwrap().contains("/user"),
        "{a}"
    );

    let top = get(api, &format!("{BASE}/top?keys=p1,p2,nobody"));
    let lists = top["lists"].as_array().unwrap();
    let by_key = |k: &str| lists.iter().find(|l| l["key"] == k).unwrap().clone();
    assert_eq!(members(&by_key("p1")), brute(&events, "p1", 3));
    assert_eq!(
        members(&by_key("p1"))[1..],
        [("u10".to_owned(), 3), ("u9".to_owned(), 3)]
    );
    assert_eq!(by_key("p1")["total"], 12);
    assert_eq!(members(&by_key("p2")), brute(&events, "p2", 3));
    assert_eq!(by_key("nobody")["total"], 0);
    let hot = get(api, &format!("{BASE}/hot?limit=1"));
    assert_eq!(hot["lists"][0]["key"], "p1", "{hot}");

    // A subscriber: its id and keys, then a snapshot of every key.
    let sub = subscribe(api, "p1,p3", true);
    assert_eq!(sub.status, 200);
    let hello = sub.next();
    assert_eq!(hello.event, "subscribed");
    let id = hello.data["id"].as_str().unwrap().to_owned();
    assert_eq!(id.len(), 32);
    let snap = sub.next();
    assert_eq!(snap.event, "snapshot");
    assert_eq!(snap.data["lists"].as_array().unwrap().len(), 2);

    // A new user overtakes on p1: an update with the new list.
    let mut more = String::new();
    for _ in 0..7 {
        more += &comment(t + 10, "p1", "u7");
        events.push(("p1".into(), "u7".into()));
    }
    post(api, &more);
    let seen = sub.until("p1", |l| l["top"][0]["member"] == "u7");
    let last = seen.last().unwrap();
    assert_eq!(last.event, "update");
    let p1 = last.data["lists"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["key"] == "p1")
        .unwrap();
    assert_eq!(members(p1), brute(&events, "p1", 3));

    // Coalescing: 60 single-comment batches as fast as they go give at
    // most one update per 250 ms (plus the edges).
    let started = Instant::now();
    for i in 0..60 {
        post(api, &comment(t + 20, "p1", &format!("x{i}")));
        events.push(("p1".into(), format!("x{i}")));
    }
    let want_total = events.iter().filter(|(p, _)| p == "p1").count() as u64;
    let updates = sub.until("p1", |l| l["total"] == want_total);
    let elapsed = started.elapsed();
    let bound = (elapsed.as_millis() / 250) as usize + 2;
    assert!(
        updates.len() <= bound,
        "{} updates in {elapsed:?} (at most {bound})",
        updates.len()
    );

    // New keys without reconnecting: a snapshot of the added key follows.
    let r = http_with(
        api,
        "POST",
        &format!("{BASE}/subscriptions/{id}"),
        Some(r#"{"keys":["p2"]}"#),
        &[("Content-Type", "application/json")],
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let seen = sub.until("p2", |l| l["total"] == 2);
    assert_eq!(seen.last().unwrap().event, "snapshot");
    post(api, &comment(t + 30, "p2", "u5"));
    sub.until("p2", |l| l["total"] == 3);
    let r = http_with(
        api,
        "POST",
        &format!("{BASE}/subscriptions/ffff"),
        Some(r#"{"keys":["p2"]}"#),
        &[("Content-Type", "application/json")],
    );
    assert_eq!(r.status, 404, "{}", r.body);

    // Bad requests: JSON errors, never a 500.
    assert_eq!(http(api, "GET", &format!("{BASE}/top"), None).status, 400);
    let many: Vec<String> = (0..101).map(|i| format!("k{i}")).collect();
    let r = http(
        api,
        "GET",
        &format!("{BASE}/top?keys={}", many.join(",")),
        None,
    );
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["code"], "too_many_keys");
    assert_eq!(
        http(api, "GET", &format!("{BASE}/windows"), None).status,
        404
    );
    run.terminate(Duration::from_secs(20));
}

#[test]
fn a_stalled_subscriber_is_dropped_without_slowing_the_others_and_the_cap_holds() {
    let dir = tempfile::tempdir().unwrap();
    let job = job_with(
        dir.path(),
        &[
            ("n = 10", "n = 1000"),
            ("push_interval = \"250ms\"", "push_interval = \"10ms\""),
            ("max_subscribers = 20000", "max_subscribers = 2"),
        ],
    );
    let (mut run, api) = start(&job, &dir.path().join("data"));
    let keys: Vec<String> = (0..20).map(|k| format!("p{k}")).collect();
    let t = now_ms();
    // Long lists: 1000 users per post, so every message is large and the
    // socket buffers of a client that does not read fill quickly.
    let mut body = String::new();
    for k in &keys {
        for u in 0..1000 {
            body += &comment(t, k, &format!("user-with-a-long-name-{u}"));
        }
    }
    post(api, &body);
    let stalled = subscribe(api, &keys.join(","), false);
    let reader = subscribe(api, &keys.join(","), true);
    assert_eq!((stalled.status, reader.status), (200, 200));
    // The cap: a third subscriber is refused with a JSON 503.
    let refused = http(api, "GET", &format!("{BASE}/subscribe?keys=p1"), None);
    assert_eq!(refused.status, 503);
    assert_eq!(refused.json()["error"]["code"], "too_many_subscribers");

    let metric = |name: &str| -> u64 {
        let text = http(api, "GET", "/metrics", None).body;
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or(0)
    };
    let mut round = 0;
    eventually(Duration::from_secs(120), || {
        round += 1;
        let mut body = String::new();
        for k in &keys {
            body += &comment(t + round, k, &format!("r{round}"));
        }
        post(api, &body);
        (metric("trawler_topn_subscribers_dropped_total") >= 1).then_some(())
    });
    // The reader still gets every change.
    post(api, &comment(t + 100_000, "p0", "last-word"));
    reader.until("p0", |l| {
        l["top"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["member"] == "last-word")
    });
    // The dropped one freed its slot.
    let again = subscribe(api, "p1", true);
    assert_eq!(again.status, 200);
    run.terminate(Duration::from_secs(20));
}

#[test]
fn kill_9_then_restart_gives_the_same_lists() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (mut run, api) = start(&comments_job(), &data);
    let t = now_ms();
    let mut events = Vec::new();
    for batch in 0..20 {
        let mut body = String::new();
        for i in 0..50 {
            let (p, u) = (format!("p{}", i % 3), format!("u{}", (i * 7 + batch) % 11));
            body += &comment(t + batch, &p, &u);
            events.push((p, u));
        }
        post(api, &body);
    }
    let before = get(api, &format!("{BASE}/top?keys=p0,p1,p2"));
    run.kill9();
    let (mut run, api) = start(&comments_job(), &data);
    let after = get(api, &format!("{BASE}/top?keys=p0,p1,p2"));
    for k in 0..3 {
        let key = format!("p{k}");
        assert_eq!(
            members(&after["lists"][k]),
            brute(&events, &key, 10),
            "{key}"
        );
        assert_eq!(after["lists"][k]["total"], before["lists"][k]["total"]);
    }
    run.terminate(Duration::from_secs(20));
}

#[test]
fn gen_feeds_the_job_and_gen_subscribers_measures_delivery() {
    let dir = tempfile::tempdir().unwrap();
    let listen = format!("127.0.0.1:{}", common::free_port());
    let mut run = Proc::start(&[
        "run",
        "--config",
        comments_job().to_str().unwrap(),
        "--data",
        dir.path().join("data").to_str().unwrap(),
        "--listen",
        &listen,
        "--gen",
        "3000",
    ]);
    let api = addr_of(&run.wait_line("listening on ", Duration::from_secs(60)));
    eventually(Duration::from_secs(60), || {
        (get(api, BASE)["stats"]["accepted"].as_u64()? > 1_000).then_some(())
    });
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_trawler"))
        .args(["gen", "subscribers", "--api", &listen, "--connections", "5"])
        .args([
            "--keys",
            "3",
            "--posts",
            "10",
            "--duration",
            "3s",
            "--warmup",
            "1s",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let line = err
        .lines()
        .find(|l| l.starts_with("subscribers: connected="))
        .unwrap_or_else(|| panic!("no summary:\n{err}"));
    let field = |k: &str| -> f64 {
        line.split(' ')
            .find_map(|kv| kv.strip_prefix(&format!("{k}=")))
            .unwrap()
            .parse()
            .unwrap()
    };
    assert_eq!(field("connected"), 5.0, "{line}");
    assert!(field("updates") > 0.0, "{line}");
    assert!(field("delivery_p99_ms").is_finite(), "{line}");
    run.terminate(Duration::from_secs(20));
}
