//! A top-N job in cluster mode: three `trawler run --cluster` nodes over a
//! real nats-server, SSE subscribers on one node for keys of every
//! partition, `kill -9` of another node that owns some of those keys.
//!
//! Evidence: every subscribed key's latest list received equals a
//! brute-force top-N of the events published (late and out-of-order ones
//! among them, decided with the rule of docs/TOPN.md), before the kill and
//! after the dead node's partitions were rebuilt on the survivors from the
//! stream; every subscriber receives updates after the kill without
//! reconnecting; `top` and `hot` answered by the other survivor agree.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{addr_of, free_port, http, nats_server, Proc};
use serde_json::Value;

const PARTITIONS: u32 = 8;
const N: usize = 3;
const LATENESS_MS: i64 = 10_000;
const SUBJECT: &str = "comments.events";
const BASE: &str = "/api/v1/streams/comments";

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// The partition of a key: FNV-1a 64 of its bytes, modulo the partitions
/// (docs/TOPN.md, cluster mode).
fn partition_of(key: &str) -> u32 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (h % u64::from(PARTITIONS)) as u32
}

fn job(dir: &Path, port: u16) -> std::path::PathBuf {
    let text = format!(
        "[job]\nname = \"comments\"\nkind = \"stream\"\n\n[stream]\nsource = \"nats\"\ntime_field = \"/ts\"\nwindow = \"10m\"\nlateness = \"10s\"\n\n[stream.nats]\nservers = [\"nats://127.0.0.1:{port}\"]\nsubject = \"{SUBJECT}\"\n\n[stream.topn]\nkey = \"/post\"\nmember = \"/user\"\nn = {N}\nslide = \"1s\"\npush_interval = \"100ms\"\n"
    );
    let path = dir.join("comments-cluster.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn start_node(job: &Path, dir: &Path, port: u16, id: &str) -> (Proc, SocketAddr) {
    let data = dir.join(id);
    let p = Proc::start(&[
        "run",
        "--config",
        job.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
        "--cluster",
        &format!("nats://127.0.0.1:{port}"),
        "--node-id",
        id,
        "--shards",
        &PARTITIONS.to_string(),
        "--lease-ttl",
        "2s",
    ]);
    let api = addr_of(&p.wait_line("listening on ", Duration::from_secs(60)));
    (p, api)
}

/// A node's share: (live nodes it sees, partitions it serves, rebuilding).
fn share(api: SocketAddr) -> (u64, Vec<u32>, usize) {
    let c = http(api, "GET", BASE, None).json()["stats"]["cluster"].clone();
    let owned = c["owned"]
        .as_array()
        .map(|a| a.iter().map(|p| p.as_u64().unwrap() as u32).collect())
        .unwrap_or_default();
    let rebuilding = c["rebuilding"].as_array().map_or(0, Vec::len);
    (c["nodes"].as_u64().unwrap_or(0), owned, rebuilding)
}

/// Waits until the live nodes `apis` see each other, serve every partition
/// once between them and rebuild nothing; returns each one's partitions.
fn settled(apis: &[SocketAddr], timeout: Duration) -> Vec<Vec<u32>> {
    let deadline = Instant::now() + timeout;
    loop {
        let shares: Vec<_> = apis.iter().map(|&a| share(a)).collect();
        let mut all: Vec<u32> = shares.iter().flat_map(|s| s.1.clone()).collect();
        all.sort_unstable();
        if shares.iter().all(|s| s.0 == apis.len() as u64 && s.2 == 0)
            && all == (0..PARTITIONS).collect::<Vec<_>>()
        {
            return shares.into_iter().map(|s| s.1).collect();
        }
        assert!(
            Instant::now() < deadline,
            "the partitions did not settle over {} nodes: {shares:?}",
            apis.len()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Creates the job's stream (as the nodes do) and publishes `lines`, 40
/// events per message, each acknowledged by JetStream, in order.
fn publish(port: u16, lines: &[String]) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let client = async_nats::connect(format!("nats://127.0.0.1:{port}"))
            .await
            .unwrap();
        let js = async_nats::jetstream::new(client);
        js.get_or_create_stream(async_nats::jetstream::stream::Config {
            name: "TRAWLER_EVENTS_comments".into(),
            subjects: vec![SUBJECT.into()],
            ..Default::default()
        })
        .await
        .unwrap();
        for chunk in lines.chunks(40) {
            js.publish(SUBJECT, chunk.concat().into())
                .await
                .unwrap()
                .await
                .unwrap();
        }
    });
}

/// The events' generator and the brute-force model: the same admission
/// rule (late: more than the lateness behind the largest accepted time),
/// then counts per (post, user) — nothing leaves the 10-minute window in
/// this test.
struct Model {
    rng: u64,
    horizon: i64,
    counts: HashMap<String, HashMap<String, u64>>,
    late: u64,
}

impl Model {
    fn next(&mut self) -> u64 {
        self.rng = self
            .rng
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.rng >> 33
    }

    /// `n` events over `keys`, stamped 20 s behind the wall clock as they
    /// are made (so the idle rule's moves of the horizon stay behind them):
    /// every 10th 3 s earlier (out of order, accepted), every 37th 60 s
    /// earlier (late, dropped).
    fn events(&mut self, keys: &[String], n: usize) -> Vec<String> {
        let mut out = Vec::new();
        for i in 0..n {
            let key = keys[self.next() as usize % keys.len()].clone();
            let user = format!("u{}", (self.next() % 5) + (self.next() % 9));
            let mut ts = now_ms() - 20_000;
            if i % 37 == 36 {
                ts -= 60_000;
            } else if i % 10 == 9 {
                ts -= 3_000;
            }
            if self.horizon != i64::MIN && ts < self.horizon - LATENESS_MS {
                self.late += 1;
            } else {
                self.horizon = self.horizon.max(ts);
                *self
                    .counts
                    .entry(key.clone())
                    .or_default()
                    .entry(user.clone())
                    .or_default() += 1;
            }
            out.push(format!(
                "{{\"ts\":{ts},\"post\":\"{key}\",\"user\":\"{user}\"}}\n"
            ));
        }
        out
    }

    /// (total, top N by count, ties by user text) of `key`.
    fn top(&self, key: &str) -> (u64, Vec<(String, u64)>) {
        let Some(users) = self.counts.get(key) else {
            return (0, Vec::new());
        };
        let mut v: Vec<(String, u64)> = users.iter().map(|(u, c)| (u.clone(), *c)).collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        v.truncate(N);
        (users.values().sum(), v)
    }
}

fn list_of(l: &Value) -> (u64, Vec<(String, u64)>) {
    (
        l["total"].as_u64().unwrap(),
        l["top"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                (
                    m["member"].as_str().unwrap().to_owned(),
                    m["value"].as_u64().unwrap(),
                )
            })
            .collect(),
    )
}

/// An SSE subscriber on a raw socket: its events arrive on a channel.
struct Subscriber {
    rx: mpsc::Receiver<(String, Value)>,
    /// Its id, from the `subscribed` event.
    id: String,
    latest: HashMap<String, Value>,
    events: Vec<String>,
    _stream: TcpStream,
}

fn subscribe(api: SocketAddr, keys: &[String]) -> Subscriber {
    let mut s = TcpStream::connect(api).unwrap();
    write!(
        s,
        "GET {BASE}/subscribe?keys={} HTTP/1.1\r\nHost: {api}\r\nAccept: text/event-stream\r\n\r\n",
        keys.join(",")
    )
    .unwrap();
    let mut reader = BufReader::new(s.try_clone().unwrap());
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    assert!(line.contains(" 200 "), "subscribe: {line}");
    let (tx, rx) = mpsc::channel();
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
                let v = serde_json::from_str(&std::mem::take(&mut data)).unwrap();
                if tx.send((std::mem::take(&mut event), v)).is_err() {
                    return;
                }
            }
        }
    });
    Subscriber {
        rx,
        id: String::new(),
        latest: HashMap::new(),
        events: Vec::new(),
        _stream: s,
    }
}

impl Subscriber {
    /// Takes in what arrived: the latest list of each key, event names.
    fn drain(&mut self) {
        while let Ok((event, data)) = self.rx.try_recv() {
            if let Some(id) = data["id"].as_str() {
                self.id = id.to_owned();
            }
            for l in data["lists"].as_array().into_iter().flatten() {
                self.latest
                    .insert(l["key"].as_str().unwrap().to_owned(), l.clone());
            }
            self.events.push(event);
        }
    }
}

/// Waits until every subscriber's latest list of each of its keys equals
/// the model's.
fn wait_lists(subs: &mut [(Subscriber, Vec<String>)], model: &Model, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut wrong = None;
        for (sub, keys) in subs.iter_mut() {
            sub.drain();
            for k in keys.iter() {
                let got = sub.latest.get(k).map(list_of);
                if got.as_ref() != Some(&model.top(k)) {
                    wrong = Some(format!("{k}: got {got:?}, want {:?}", model.top(k)));
                }
            }
        }
        let Some(wrong) = wrong else { return };
        assert!(Instant::now() < deadline, "{what}: {wrong}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_killed_nodes_keys_are_rebuilt_and_subscribers_keep_receiving() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let _nats = nats_server(dir.path(), port);
    let job = job(dir.path(), port);
    let mut nodes: Vec<(Proc, SocketAddr)> = ["n1", "n2", "n3"]
        .iter()
        .map(|id| start_node(&job, dir.path(), port, id))
        .collect();
    let apis: Vec<SocketAddr> = nodes.iter().map(|n| n.1).collect();
    let shares = settled(&apis, Duration::from_secs(40));

    // The victim holds the most partitions; subscribers go to another node.
    let victim = (0..3).max_by_key(|&i| shares[i].len()).unwrap();
    let at = (0..3).find(|&i| i != victim).unwrap();
    let other = (0..3).find(|&i| i != victim && i != at).unwrap();
    // Three posts per partition, so that every node's keys are followed.
    let mut keys: Vec<String> = Vec::new();
    for p in 0..PARTITIONS {
        keys.extend(
            (0..)
                .map(|i| format!("p{i}"))
                .filter(|k| partition_of(k) == p)
                .take(3),
        );
    }
    let victims_keys: Vec<&String> = keys
        .iter()
        .filter(|k| shares[victim].contains(&partition_of(k)))
        .collect();
    assert!(!victims_keys.is_empty());
    let mut subs: Vec<(Subscriber, Vec<String>)> = keys
        .chunks(6)
        .map(|c| (subscribe(apis[at], c), c.to_vec()))
        .collect();

    let mut model = Model {
        rng: 42,
        horizon: i64::MIN,
        counts: HashMap::new(),
        late: 0,
    };
    // Snapshots of keys with no events yet: empty lists, from every owner.
    wait_lists(&mut subs, &model, "snapshots");
    let events = model.events(&keys, 1_500);
    publish(port, &events);
    wait_lists(&mut subs, &model, "before the kill");
    assert!(model.late > 0, "some events are late");

    let before: Vec<u64> = victims_keys.iter().map(|k| model.top(k).0).collect();
    nodes[victim].0.kill9();
    let seen: Vec<usize> = subs.iter().map(|s| s.0.events.len()).collect();
    let events = model.events(&keys, 1_500);
    publish(port, &events);
    // Every key of the dead node changes: its new list must come from the
    // partition's new owner.
    for (k, total) in victims_keys.iter().zip(before) {
        assert!(model.top(k).0 > total, "{k} got no new event");
    }
    let survivors = [apis[at], apis[other]];
    let shares = settled(&survivors, Duration::from_secs(60));
    assert_eq!(
        shares.iter().map(Vec::len).sum::<usize>(),
        PARTITIONS as usize
    );
    wait_lists(&mut subs, &model, "after the kill");
    for (i, (sub, _)) in subs.iter().enumerate() {
        assert!(
            sub.events[seen[i]..].iter().any(|e| e == "update"),
            "subscriber {i} got no update after the kill: {:?}",
            &sub.events[seen[i]..]
        );
    }

    // Reads on the other survivor are routed to the owners too.
    let top = http(
        survivors[1],
        "GET",
        &format!("{BASE}/top?keys={}", keys.join(",")),
        None,
    )
    .json();
    for l in top["lists"].as_array().unwrap() {
        let k = l["key"].as_str().unwrap();
        assert_eq!(list_of(l), model.top(k), "top of {k}");
    }
    let hot = http(survivors[1], "GET", &format!("{BASE}/hot?limit=5"), None).json();
    let mut want: Vec<(u64, &String)> = keys.iter().map(|k| (model.top(k).0, k)).collect();
    want.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(b.1)));
    let got: Vec<(u64, String)> = hot["lists"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["total"].as_u64().unwrap(),
                l["key"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let want: Vec<(u64, String)> = want[..5].iter().map(|(t, k)| (*t, (*k).clone())).collect();
    assert_eq!(got, want, "hot");
    // New keys without reconnecting: their snapshots come from the node's
    // latest lists or from their owners.
    let (sub, old_keys) = &mut subs[0];
    let mut new_keys = old_keys.clone();
    new_keys.extend(keys[keys.len() - 2..].iter().cloned());
    new_keys.push("never-seen".into());
    let r = common::http_with(
        apis[at],
        "POST",
        &format!("{BASE}/subscriptions/{}", sub.id),
        Some(&serde_json::json!({ "keys": new_keys }).to_string()),
        &[("Content-Type", "application/json")],
    );
    assert_eq!(r.status, 200, "{}", r.body);
    *old_keys = new_keys;
    wait_lists(&mut subs, &model, "after a change of keys");

    let metrics = http(survivors[0], "GET", "/metrics", None).body;
    let served = format!(
        "trawler_topn_partitions_served{{job=\"comments\"}} {}",
        shares[0].len()
    );
    assert!(metrics.contains(&served), "{served} not in /metrics");
    let owned: BTreeSet<u32> = shares.into_iter().flatten().collect();
    assert_eq!(owned.len(), PARTITIONS as usize);
}
