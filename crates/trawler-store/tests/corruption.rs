//! Corruption tests: flipped bytes in WAL segments and blocks, torn tails,
//! and files of an unknown format version.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use trawler_store::{
    Error, Sample, SeriesId, SeriesKey, Store, StoreConfig, Value, ValueKind, FORMAT_VERSION,
};

const MINUTE: i64 = 60_000;

fn config(dir: &Path) -> StoreConfig {
    let mut c = StoreConfig::new(dir);
    c.background = false;
    c
}

fn ids(store: &Store, n: u64) -> Vec<SeriesId> {
    (0..n)
        .map(|e| {
            store
                .series(
                    SeriesKey {
                        job: "j",
                        entity: e,
                        metric: "m",
                    },
                    ValueKind::Int,
                )
                .unwrap()
        })
        .collect()
}

fn append_steps(store: &Store, ids: &[SeriesId], steps: std::ops::Range<i64>) {
    for step in steps {
        let batch: Vec<Sample> = ids
            .iter()
            .map(|&id| Sample {
                series: id,
                ts_ms: step * MINUTE,
                value: Value::Int(id.0 as i64 * 1000 + step),
            })
            .collect();
        store.append(&batch).unwrap();
    }
}

fn files(dir: &Path, sub: &str, ext: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir.join(sub))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .collect();
    v.sort();
    v
}

fn flip(path: &Path, offset_from_end: usize) {
    let mut bytes = std::fs::read(path).unwrap();
    let i = bytes.len() - offset_from_end;
    bytes[i] ^= 0x40;
    std::fs::write(path, bytes).unwrap();
}

/// Runs `f` with log lines captured; returns them.
fn logs(f: impl FnOnce()) -> String {
    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buf = Buf::default();
    let writer = buf.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    tracing::subscriber::with_default(subscriber, f);
    let out = buf.0.lock().unwrap().clone();
    String::from_utf8(out).unwrap()
}

#[test]
fn a_torn_wal_tail_is_truncated_with_one_log_line() {
    let dir = tempfile::tempdir().unwrap();
    let store = config(dir.path()).open().unwrap();
    let ids = ids(&store, 3);
    append_steps(&store, &ids, 0..10);
    drop(store); // no flush: everything is in the WAL
    let wal = files(dir.path(), "wal", "wal").pop().unwrap();
    let len = std::fs::metadata(&wal).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(&wal).unwrap();
    f.set_len(len - 3).unwrap(); // cut the last record short
    drop(f);
    let mut store = None;
    let log = logs(|| store = Some(config(dir.path()).open().unwrap()));
    let store = store.unwrap();
    assert_eq!(log.matches("torn WAL tail").count(), 1, "{log}");
    assert!(
        log.contains(wal.file_name().unwrap().to_str().unwrap()),
        "{log}"
    );
    for &id in &ids {
        assert_eq!(
            store.range(id, 0, i64::MAX).unwrap().len(),
            9,
            "the last batch is lost, the rest kept"
        );
    }
    assert!(std::fs::metadata(&wal).unwrap().len() < len - 3);
    // Appends continue after the cut.
    append_steps(&store, &ids, 9..12);
    drop(store);
    let store = config(dir.path()).open().unwrap();
    assert_eq!(store.range(ids[0], 0, i64::MAX).unwrap().len(), 12);
}

#[test]
fn a_flipped_byte_in_the_wal_keeps_the_records_before_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = config(dir.path()).open().unwrap();
    let ids = ids(&store, 3);
    append_steps(&store, &ids, 0..10);
    drop(store);
    let wal = files(dir.path(), "wal", "wal").pop().unwrap();
    // Flip a byte inside the 8th record of 10 (records are equal-sized here).
    let len = std::fs::metadata(&wal).unwrap().len() as usize;
    let record = (len - 12) / 10;
    flip(&wal, 2 * record + record / 2);
    let store = config(dir.path()).open().unwrap();
    for &id in &ids {
        assert_eq!(store.range(id, 0, i64::MAX).unwrap().len(), 7);
    }
}

#[test]
fn a_flipped_byte_in_a_block_costs_one_series_of_one_block() {
    let dir = tempfile::tempdir().unwrap();
    let store = config(dir.path()).open().unwrap();
    let ids = ids(&store, 20);
    // Noisy values, so that series pages are most of a block's bytes.
    let noisy = |steps: std::ops::Range<i64>| {
        for step in steps {
            let batch: Vec<Sample> = ids
                .iter()
                .map(|&id| Sample {
                    series: id,
                    ts_ms: step * MINUTE,
                    value: Value::Int((id.0 as i64 * 7_919 + step * step * 104_729) % 65_521),
                })
                .collect();
            store.append(&batch).unwrap();
        }
    };
    noisy(0..100);
    store.flush().unwrap();
    noisy(100..200);
    store.flush().unwrap();
    drop(store);
    let blocks = files(dir.path(), "blocks", "blk");
    assert_eq!(blocks.len(), 2);
    // The middle of the first block: series data.
    let len = std::fs::metadata(&blocks[0]).unwrap().len() as usize;
    flip(&blocks[0], len / 2);
    let store = config(dir.path()).open().unwrap();
    let mut short = 0;
    for &id in &ids {
        let n = store.range(id, 0, i64::MAX).unwrap().len();
        assert!(n == 200 || n == 100, "{n}");
        short += usize::from(n == 100);
    }
    assert_eq!(short, 1, "the flip lands in one series' pages");
    let errors = store.verify();
    {
        assert_eq!(errors.len(), 1);
        let msg = errors[0].to_string();
        assert!(msg.contains(blocks[0].to_str().unwrap()), "{msg}");
        assert!(store.stats().corrupt_blocks >= 1);
    }
}

#[test]
fn flipped_bytes_anywhere_in_a_block_never_lose_other_blocks() {
    let dir = tempfile::tempdir().unwrap();
    let store = config(dir.path()).open().unwrap();
    let ids = ids(&store, 5);
    append_steps(&store, &ids, 0..60);
    store.flush().unwrap();
    append_steps(&store, &ids, 60..120);
    store.flush().unwrap();
    drop(store);
    let blocks = files(dir.path(), "blocks", "blk");
    let pristine = std::fs::read(&blocks[1]).unwrap();
    // Every byte after the header (the version field is tested separately).
    for i in (12..pristine.len()).step_by(7) {
        let mut bytes = pristine.clone();
        bytes[i] ^= 0x10;
        std::fs::write(&blocks[1], &bytes).unwrap();
        let store = config(dir.path()).open().unwrap();
        for &id in &ids {
            let points = store.range(id, 0, i64::MAX).unwrap();
            assert!(
                points.len() >= 60,
                "byte {i}: the first block must stay readable"
            );
            for p in &points {
                assert_eq!(
                    p.value,
                    Value::Int(id.0 as i64 * 1000 + p.ts_ms / MINUTE),
                    "byte {i}: wrong data returned"
                );
            }
        }
        drop(store);
        std::fs::write(&blocks[1], &pristine).unwrap();
    }
}

#[test]
fn unknown_format_versions_are_refused_by_file_name() {
    let dir = tempfile::tempdir().unwrap();
    let store = config(dir.path()).open().unwrap();
    let ids = ids(&store, 2);
    append_steps(&store, &ids, 0..5);
    store.flush().unwrap();
    append_steps(&store, &ids, 5..8);
    drop(store);
    let block = files(dir.path(), "blocks", "blk").pop().unwrap();
    let wal = files(dir.path(), "wal", "wal").pop().unwrap();
    let catalog = dir.path().join("series.log");
    for file in [block, wal, catalog] {
        let pristine = std::fs::read(&file).unwrap();
        let mut bytes = pristine.clone();
        bytes[8..12].copy_from_slice(&(FORMAT_VERSION + 1).to_le_bytes());
        std::fs::write(&file, &bytes).unwrap();
        let err = config(dir.path()).open().unwrap_err();
        assert!(
            matches!(
                err,
                Error::UnsupportedVersion {
                    found,
                    supported: FORMAT_VERSION,
                    ..
                } if found == FORMAT_VERSION + 1
            ),
            "{err}"
        );
        let msg = err.to_string();
        assert!(
            msg.contains(file.to_str().unwrap())
                && msg.contains(&format!("version {}", FORMAT_VERSION + 1)),
            "{msg}"
        );
        std::fs::write(&file, &pristine).unwrap();
    }
    let store = config(dir.path()).open().unwrap();
    assert_eq!(store.range(ids[0], 0, i64::MAX).unwrap().len(), 8);
}

#[test]
fn a_torn_catalog_tail_is_truncated() {
    let dir = tempfile::tempdir().unwrap();
    let store = config(dir.path()).open().unwrap();
    let ids = ids(&store, 3);
    append_steps(&store, &ids, 0..3);
    store.flush().unwrap();
    drop(store);
    let catalog = dir.path().join("series.log");
    let mut bytes = std::fs::read(&catalog).unwrap();
    bytes.extend_from_slice(&[9, 0, 0, 0, 1, 2]);
    std::fs::write(&catalog, &bytes).unwrap();
    let mut store = None;
    let log = logs(|| store = Some(config(dir.path()).open().unwrap()));
    assert_eq!(
        log.matches("torn tail of the series catalog").count(),
        1,
        "{log}"
    );
    let store = store.unwrap();
    assert_eq!(ids, self::ids(&store, 3));
    assert_eq!(store.range(ids[2], 0, i64::MAX).unwrap().len(), 3);
}
