//! The decoders of untrusted bytes (WAL segments, blocks) must return an
//! error, never panic or allocate without bound, on any input. The fuzz
//! targets in `fuzz/` explore this deeper; this keeps it covered on stable.

use proptest::prelude::*;
use std::path::Path;
use trawler_store::fuzzing::{check_block, decode_segment};
use trawler_store::{Sample, SeriesKey, StoreConfig, Value, ValueKind};

/// A real WAL segment and a real block to mutate: a quadratic series
/// (coded as values), a float series with irregular timestamps, and a
/// slow trend under noise (coded as chord residuals).
fn seeds() -> (Vec<u8>, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let mut c = StoreConfig::new(dir.path());
    c.background = false;
    let store = c.open().unwrap();
    let a = store
        .series(
            SeriesKey {
                job: "j",
                entity: 1,
                metric: "m",
            },
            ValueKind::Int,
        )
        .unwrap();
    let b = store
        .series(
            SeriesKey {
                job: "j",
                entity: 2,
                metric: "f",
            },
            ValueKind::Float,
        )
        .unwrap();
    let c = store
        .series(
            SeriesKey {
                job: "j",
                entity: 3,
                metric: "m",
            },
            ValueKind::Int,
        )
        .unwrap();
    for k in 0..50i64 {
        store
            .append(&[
                Sample {
                    series: c,
                    ts_ms: k * 60_000,
                    value: Value::Int(30_000 + k / 3 + (k * 7_919) % 13),
                },
                Sample {
                    series: a,
                    ts_ms: k * 60_000,
                    value: Value::Int(k * k),
                },
                Sample {
                    series: b,
                    ts_ms: k * k * 1000,
                    value: Value::Float(k as f64 * 0.5),
                },
            ])
            .unwrap();
    }
    let wal_dir = dir.path().join("wal");
    let wal = std::fs::read(
        std::fs::read_dir(&wal_dir)
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path(),
    )
    .unwrap();
    store.flush().unwrap();
    let blocks = dir.path().join("blocks");
    let block = std::fs::read(
        std::fs::read_dir(&blocks)
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path(),
    )
    .unwrap();
    (wal, block)
}

#[test]
fn seeds_decode() {
    let (wal, block) = seeds();
    assert_eq!(
        decode_segment(&wal, Path::new("w")).unwrap().samples.len(),
        150
    );
    assert!(check_block(&block).unwrap() >= 150);
}

proptest! {
    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..2000)) {
        let _ = decode_segment(&bytes, Path::new("w"));
        let _ = check_block(&bytes);
    }

    #[test]
    fn mutated_files_never_panic(flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8), cut in any::<prop::sample::Index>()) {
        let (wal, block) = seeds();
        for mut file in [wal, block] {
            for (i, b) in &flips {
                let i = i.index(file.len());
                file[i] ^= b;
            }
            let _ = decode_segment(&file, Path::new("w"));
            let _ = check_block(&file);
            let end = cut.index(file.len());
            let _ = decode_segment(&file[..end], Path::new("w"));
            let _ = check_block(&file[..end]);
        }
    }
}
