//! Crash test: a writer process is killed with SIGKILL mid-stream, again and
//! again; after each kill every sample it acknowledged must be readable.
//!
//! The writer is this test binary itself, re-run with `TRAWLER_CRASH_DIR`
//! set so that `writer_child` writes instead of returning at once. It
//! flushes and compacts often, so kills also land inside flushes and
//! compactions.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use trawler_store::{Sample, SeriesKey, Store, StoreConfig, SyncPolicy, Value, ValueKind};

const SERIES: u64 = 40;
const MINUTE: i64 = 60_000;

fn value(entity: u64, step: i64) -> i64 {
    (entity as i64 * 1_000_003) ^ (step * 7919)
}

fn config(dir: &str, background: bool, always: bool) -> StoreConfig {
    let mut c = StoreConfig::new(dir);
    c.background = background;
    c.flush_interval = Duration::from_millis(150);
    c.compaction_fanin = 2;
    if always {
        c.sync = SyncPolicy::Always;
    }
    c
}

fn ids(store: &Store) -> Vec<trawler_store::SeriesId> {
    let keys: Vec<_> = (0..SERIES)
        .map(|e| {
            (
                SeriesKey {
                    job: "crash",
                    entity: e,
                    metric: "m",
                },
                ValueKind::Int,
            )
        })
        .collect();
    store.series_batch(&keys).unwrap()
}

/// The writer: appends one step for every series per batch, from
/// `TRAWLER_CRASH_START`, printing `acked N` after step N returned.
#[test]
fn writer_child() {
    let Ok(dir) = std::env::var("TRAWLER_CRASH_DIR") else {
        return;
    };
    let start: i64 = std::env::var("TRAWLER_CRASH_START")
        .unwrap()
        .parse()
        .unwrap();
    let always = std::env::var("TRAWLER_CRASH_ALWAYS").is_ok();
    let store = config(&dir, true, always).open().unwrap();
    let ids = ids(&store);
    for step in start.. {
        // Minutes advance fast: one simulated day every 1,440 steps, so
        // flushes cut days and compactions merge them while we are killed.
        let batch: Vec<Sample> = ids
            .iter()
            .enumerate()
            .map(|(e, &id)| Sample {
                series: id,
                ts_ms: step * MINUTE * 20,
                value: Value::Int(value(e as u64, step)),
            })
            .collect();
        let got = store.append(&batch).unwrap();
        assert_eq!(got.accepted, batch.len());
        println!("acked {step}");
    }
}

fn verify(dir: &str, acked: i64) -> i64 {
    let store = config(dir, false, false).open().unwrap();
    let ids = ids(&store);
    let mut next = i64::MAX;
    for (e, &id) in ids.iter().enumerate() {
        let points = store.range(id, i64::MIN, i64::MAX).unwrap();
        for step in 0..=acked {
            let p = points.get(step as usize).unwrap_or_else(|| {
                panic!(
                    "series {e}: acknowledged step {step} lost ({} points, acked {acked})",
                    points.len()
                )
            });
            assert_eq!(
                (p.ts_ms, p.value),
                (step * MINUTE * 20, Value::Int(value(e as u64, step))),
                "series {e} step {step}"
            );
        }
        // Unacknowledged steps may or may not be there (a batch is one WAL
        // record: all of its series or none); resume after them.
        let len = points.len() as i64;
        assert!(
            next == i64::MAX || next == len,
            "series disagree on the last batch"
        );
        next = len;
    }
    assert_eq!(store.stats().corrupt_blocks, 0);
    next
}

#[test]
fn kill_9_keeps_every_acknowledged_sample() {
    let dir = tempfile::tempdir().unwrap();
    let dir_s = dir.path().to_str().unwrap().to_owned();
    let exe = std::env::current_exe().unwrap();
    let mut start = 0i64;
    let mut acked_total = -1i64;
    for round in 0..8u64 {
        let mut child = Command::new(&exe)
            .args(["writer_child", "--exact", "--nocapture", "--test-threads=1"])
            .env("TRAWLER_CRASH_DIR", &dir_s)
            .env("TRAWLER_CRASH_START", start.to_string())
            .envs((round % 3 == 2).then_some(("TRAWLER_CRASH_ALWAYS", "1")))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            let mut last = None;
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(n) = line.strip_prefix("acked ") {
                    last = n.trim().parse::<i64>().ok();
                }
            }
            last
        });
        // Kill after a varying time: at least one flush interval, so some
        // rounds die inside a flush or a compaction.
        let wait = Duration::from_millis(250 + (round * 137) % 400);
        let t = Instant::now();
        while t.elapsed() < wait {
            std::thread::sleep(Duration::from_millis(10));
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let acked = reader.join().unwrap();
        if let Some(a) = acked {
            acked_total = acked_total.max(a);
        }
        assert!(
            acked_total >= 0,
            "the writer acknowledged nothing in round {round}"
        );
        start = verify(&dir_s, acked_total);
    }
}
