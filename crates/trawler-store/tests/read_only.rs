//! A store opened read-only (an operator's inspection) replays its WAL in
//! memory and changes nothing in the folder: not a torn WAL tail, not a
//! stray file, not a covered segment; writes are refused, a writer is kept
//! out while it is open, and other inspections are not.

use std::path::{Path, PathBuf};

use trawler_store::{Error, Sample, SeriesKey, StoreConfig, Value, ValueKind};

const MINUTE: i64 = 60_000;

/// Every file under `dir` with its bytes, sorted by path.
fn files(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                todo.push(p);
            } else {
                out.push((p.clone(), std::fs::read(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn a_read_only_store_reads_everything_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = StoreConfig::new(dir.path());
    c.background = false;
    let store = c.clone().open().unwrap();
    let id = store
        .series(
            SeriesKey {
                job: "j",
                entity: 1,
                metric: "m",
            },
            ValueKind::Int,
        )
        .unwrap();
    let batch = |from: i64, to: i64| -> Vec<Sample> {
        (from..to)
            .map(|k| Sample {
                series: id,
                ts_ms: k * MINUTE,
                value: Value::Int(k * 3),
            })
            .collect()
    };
    store.append(&batch(0, 100)).unwrap();
    store.flush().unwrap();
    store.append(&batch(100, 150)).unwrap();
    drop(store);
    // A torn record at the end of the WAL, as a crash mid-write leaves it.
    let wal = std::fs::read_dir(dir.path().join("wal"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .max()
        .unwrap();
    let mut bytes = std::fs::read(&wal).unwrap();
    bytes.extend_from_slice(&[9, 0, 0, 0, 1, 2]);
    std::fs::write(&wal, bytes).unwrap();
    let before = files(dir.path());

    let mut ro = c.clone();
    ro.read_only = true;
    let store = ro.clone().open().unwrap();
    let points = store.range(id, 0, i64::MAX).unwrap();
    assert_eq!(points.len(), 150, "blocks and the WAL's samples");
    assert_eq!(store.stats().samples, 150);
    assert!(store.verify().is_empty());

    // Other inspections may run beside it; a writer may not.
    let second = ro.clone().open().unwrap();
    assert!(matches!(c.clone().open(), Err(Error::Locked { .. })));
    drop(second);

    assert!(matches!(
        store.append(&batch(150, 151)),
        Err(Error::ReadOnly { .. })
    ));
    assert!(matches!(store.flush(), Err(Error::ReadOnly { .. })));
    assert!(matches!(store.compact(), Err(Error::ReadOnly { .. })));
    let key = SeriesKey {
        job: "j",
        entity: 2,
        metric: "m",
    };
    assert!(matches!(
        store.series(key, ValueKind::Int),
        Err(Error::ReadOnly { .. })
    ));
    store.close().unwrap();
    assert_eq!(files(dir.path()), before, "the folder changed");

    // Opened for writing again, it still holds everything.
    let store = c.open().unwrap();
    assert_eq!(store.range(id, 0, i64::MAX).unwrap().len(), 150);
}

#[test]
fn a_folder_without_a_store_is_not_created_read_only() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = StoreConfig::new(dir.path().join("store"));
    c.read_only = true;
    assert!(c.open().is_err());
    assert!(!dir.path().join("store").exists());
}
