//! Old-format fixtures: each folder of `tests/fixtures` is a small store
//! written by one build (blocks of two days, a compacted block, and
//! unflushed samples in the WAL), named by its format version:
//!
//! * `v1`: written by the first version-1 build;
//! * `v1-last`: written by the last version-1 build (blocks grouped by
//!   volatility), just before format version 2;
//! * `v2`: written by version 2 (no stored rollups; chord-coded series).
//!
//! Every later build must read each back exactly, and rewrite it in the
//! current format when compacting; if this test fails, the format changed
//! without a version bump or an old version stopped being read.
//!
//! Write a fixture only when deliberately creating one for a new format
//! version: `TRAWLER_WRITE_FIXTURE=v3 cargo test -p trawler-store --test
//! fixture` writes `tests/fixtures/v3` with this build.

use std::path::{Path, PathBuf};

use trawler_store::{
    Point, Resolution, Sample, SeriesKey, Store, StoreConfig, Value, ValueKind, FORMAT_VERSION,
};

const MINUTE: i64 = 60_000;
const DAY: i64 = 86_400_000;
/// 2024-01-01T00:00:00Z.
const EPOCH: i64 = 1_704_067_200_000;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn keys() -> Vec<(SeriesKey<'static>, ValueKind)> {
    vec![
        (
            SeriesKey {
                job: "fixture",
                entity: 1,
                metric: "followerCount",
            },
            ValueKind::Int,
        ),
        (
            SeriesKey {
                job: "fixture",
                entity: 2,
                metric: "followerCount",
            },
            ValueKind::Int,
        ),
        (
            SeriesKey {
                job: "fixture",
                entity: 1,
                metric: "ratio",
            },
            ValueKind::Float,
        ),
    ]
}

/// The expected points of series `i` (flushed part, then WAL part).
fn points(i: usize) -> Vec<Point> {
    let regular = |k: i64| EPOCH - DAY / 2 + k * MINUTE + 17_000;
    match i {
        0 => (0..1000)
            .map(|k| Point {
                ts_ms: regular(k),
                value: Value::Int(100_000 + (k * k) % 977 - 400),
            })
            .collect(),
        1 => (0..300)
            .map(|k| Point {
                ts_ms: EPOCH - DAY / 2 + k * k * 1_003,
                value: Value::Int(-k * 31),
            })
            .collect(),
        _ => (0..1000)
            .map(|k| Point {
                ts_ms: regular(k),
                value: Value::Float(k as f64 / 3.0),
            })
            .collect(),
    }
}

fn write(dir: &Path) {
    let mut c = StoreConfig::new(dir);
    c.background = false;
    let store = c.open().unwrap();
    let ids = store.series_batch(&keys()).unwrap();
    let all: Vec<Vec<Point>> = (0..3).map(points).collect();
    let append = |range: std::ops::Range<usize>| {
        for (i, pts) in all.iter().enumerate() {
            let n = pts.len();
            let batch: Vec<Sample> = pts[range.start * n / 10..range.end * n / 10]
                .iter()
                .map(|p| Sample {
                    series: ids[i],
                    ts_ms: p.ts_ms,
                    value: p.value,
                })
                .collect();
            store.append(&batch).unwrap();
        }
    };
    append(0..4);
    store.flush().unwrap();
    append(4..6);
    store.flush().unwrap();
    store.compact().unwrap();
    append(6..8);
    store.flush().unwrap();
    append(8..10);
    drop(store); // the last fifth stays in the WAL
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

fn check(store: &Store) {
    let ids = store.series_batch(&keys()).unwrap();
    assert_eq!(ids.iter().map(|i| i.0).collect::<Vec<_>>(), vec![0, 1, 2]);
    for (i, &id) in ids.iter().enumerate() {
        let want = points(i);
        assert_eq!(
            store.range(id, i64::MIN, i64::MAX).unwrap(),
            want,
            "series {i}"
        );
        assert_eq!(store.latest(id).unwrap(), want.last().copied());
        let days = store
            .rollups(id, i64::MIN / 2, i64::MAX / 2, Resolution::Day)
            .unwrap();
        assert_eq!(days.iter().map(|d| d.count).sum::<u64>(), want.len() as u64);
        assert_eq!(days[0].first, want[0].value);
    }
    assert_eq!(store.list_series("fixture").len(), 3);
}

/// The format version in a file's header.
fn version(path: &Path) -> u32 {
    let bytes = std::fs::read(path).unwrap();
    u32::from_le_bytes(bytes[8..12].try_into().unwrap())
}

/// Reads fixture `name` back, compacts it, and reads it again.
fn reads_back_exactly(name: &str) {
    if std::env::var("TRAWLER_WRITE_FIXTURE").is_ok_and(|f| f == name) {
        let _ = std::fs::remove_dir_all(fixture(name));
        write(&fixture(name));
    }
    let tmp = tempfile::tempdir().unwrap();
    copy_dir(&fixture(name), tmp.path());
    let mut c = StoreConfig::new(tmp.path());
    c.background = false;
    let store = c.open().unwrap();
    check(&store);
    // It also survives being rewritten by this build, in this build's format.
    store.flush().unwrap();
    store.compact().unwrap();
    check(&store);
    assert!(store.stats().blocks >= 2);
    for e in std::fs::read_dir(tmp.path().join("blocks")).unwrap() {
        let path = e.unwrap().path();
        assert_eq!(
            version(&path),
            FORMAT_VERSION,
            "{} not rewritten",
            path.display()
        );
    }
}

#[test]
fn version_1_fixture_reads_back_exactly() {
    reads_back_exactly("v1");
}

#[test]
fn last_version_1_fixture_reads_back_exactly() {
    reads_back_exactly("v1-last");
}

#[test]
fn version_2_fixture_reads_back_exactly() {
    reads_back_exactly("v2");
}
