//! The public API's contracts: ids survive restarts, kinds are checked,
//! concurrent appends share fsyncs, latest values are scanned per job.

use std::sync::Arc;

use trawler_store::{Error, Sample, SeriesKey, StoreConfig, SyncPolicy, Value, ValueKind};

fn key(entity: u64, metric: &str) -> SeriesKey<'_> {
    SeriesKey {
        job: "j",
        entity,
        metric,
    }
}

#[test]
fn ids_survive_restart_and_kinds_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = StoreConfig::new(dir.path());
    c.background = false;
    let store = c.clone().open().unwrap();
    let a = store.series(key(1, "count"), ValueKind::Int).unwrap();
    let b = store.series(key(2, "ratio"), ValueKind::Float).unwrap();
    assert_ne!(a, b);
    let err = store.series(key(1, "count"), ValueKind::Float).unwrap_err();
    assert!(matches!(err, Error::KindMismatch { .. }), "{err}");
    let err = store
        .append(&[Sample {
            series: a,
            ts_ms: 1,
            value: Value::Float(1.0),
        }])
        .unwrap_err();
    assert!(err.to_string().contains("j/1/count"), "{err}");
    let err = store
        .append(&[Sample {
            series: trawler_store::SeriesId(99),
            ts_ms: 1,
            value: Value::Int(1),
        }])
        .unwrap_err();
    assert!(matches!(err, Error::UnknownSeries(99)));
    drop(store);
    let store = c.open().unwrap();
    assert_eq!(store.series(key(2, "ratio"), ValueKind::Float).unwrap(), b);
    assert_eq!(store.series(key(1, "count"), ValueKind::Int).unwrap(), a);
    let listed = store.list_series("j");
    assert_eq!(listed.len(), 2);
    assert_eq!(
        (listed[1].entity, listed[1].metric.as_str(), listed[1].kind),
        (2, "ratio", ValueKind::Float)
    );
    assert!(store.list_series("other").is_empty());
    store.close().unwrap();
}

#[test]
fn concurrent_appends_with_sync_always_are_all_durable() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = StoreConfig::new(dir.path());
    c.sync = SyncPolicy::Always;
    let store = Arc::new(c.clone().open().unwrap());
    let threads: Vec<_> = (0..8u64)
        .map(|t| {
            let store = store.clone();
            std::thread::spawn(move || {
                let id = store.series(key(t, "m"), ValueKind::Int).unwrap();
                for k in 0..50i64 {
                    let got = store
                        .append(&[Sample {
                            series: id,
                            ts_ms: k * 60_000,
                            value: Value::Int(k),
                        }])
                        .unwrap();
                    assert_eq!(got.accepted, 1);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let store = Arc::into_inner(store).unwrap();
    drop(store); // no flush: the WAL alone must hold everything
    let store = c.open().unwrap();
    let mut seen = 0;
    store
        .for_each_latest("j", |e| {
            assert_eq!(e.point.value, Value::Int(49));
            assert_eq!(e.metric, "m");
            seen += 1;
        })
        .unwrap();
    assert_eq!(seen, 8);
    assert_eq!(store.stats().samples, 400);
}

#[test]
fn closed_stores_refuse_appends_and_invalid_configs_name_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = StoreConfig::new(dir.path());
    c.compaction_fanin = 1;
    let err = c.open().unwrap_err();
    assert!(err.to_string().contains("compaction_fanin"), "{err}");
    let store = StoreConfig::new(dir.path()).open().unwrap();
    let id = store.series(key(1, "m"), ValueKind::Int).unwrap();
    store
        .append(&[Sample {
            series: id,
            ts_ms: 0,
            value: Value::Int(5),
        }])
        .unwrap();
    let stats = store.stats();
    assert_eq!((stats.series, stats.samples, stats.head_samples), (1, 1, 1));
    assert!(stats.memory_bytes > 0 && stats.wal_bytes > 0);
    store.close().unwrap();
    let store = StoreConfig::new(dir.path()).open().unwrap();
    let stats = store.stats();
    assert_eq!((stats.blocks, stats.head_samples, stats.samples), (1, 0, 1));
    assert_eq!(store.latest(id).unwrap().unwrap().value, Value::Int(5));
}

#[test]
fn a_head_over_its_limit_is_flushed_by_the_appender() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = StoreConfig::new(dir.path());
    c.background = false;
    c.head_max_bytes = 64 << 10;
    let store = c.open().unwrap();
    let ids: Vec<_> = (0..100)
        .map(|e| store.series(key(e, "m"), ValueKind::Int).unwrap())
        .collect();
    for k in 0..200i64 {
        let batch: Vec<Sample> = ids
            .iter()
            .map(|&id| Sample {
                series: id,
                ts_ms: k * 60_000,
                value: Value::Int(k),
            })
            .collect();
        store.append(&batch).unwrap();
        let s = store.stats();
        assert!(
            s.memory_bytes < (64 << 10) + (64 << 10),
            "head grew to {} bytes",
            s.memory_bytes
        );
    }
    let s = store.stats();
    assert!(s.flushes > 0 && s.blocks > 0);
    assert_eq!(s.samples, 20_000);
    assert_eq!(store.range(ids[7], 0, i64::MAX).unwrap().len(), 200);
}

#[test]
fn a_second_open_of_the_same_folder_is_refused_until_the_first_closes() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = StoreConfig::new(dir.path());
    c.background = false;
    let first = c.clone().open().unwrap();
    let err = c.clone().open().unwrap_err();
    assert!(matches!(err, Error::Locked { .. }), "{err}");
    assert!(
        err.to_string().contains("in use by another process"),
        "{err}"
    );
    first.close().unwrap();
    let again = c.open().unwrap();
    again.close().unwrap();
}

/// Waits for `cond` with a generous deadline (CI is a loaded 2-core box).
fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !cond() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// Regression test for the flagship's stalls: the head used to be written
/// by the appender itself at its size limit, so ingest stopped for the
/// whole flush (10–14 s at a million accounts). Now the flush thread takes
/// the head at half the limit and appends go on while it is written.
#[test]
fn appends_go_on_while_a_background_flush_is_held() {
    let dir = tempfile::tempdir().unwrap();
    let (entered_tx, entered_rx) = std::sync::mpsc::channel::<Option<String>>();
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let release_rx = std::sync::Mutex::new(release_rx);
    let entered_tx = std::sync::Mutex::new(entered_tx);
    let mut c = StoreConfig::new(dir.path());
    c.head_max_bytes = 256 << 10;
    c.flush_interval = std::time::Duration::from_secs(3_600);
    c.hooks.flush = Some(Arc::new(move || {
        let thread = std::thread::current().name().map(str::to_owned);
        let _ = entered_tx.lock().unwrap().send(thread);
        // Held until the test releases it (or gives up).
        let _ = release_rx
            .lock()
            .unwrap()
            .recv_timeout(std::time::Duration::from_secs(120));
    }));
    let store = Arc::new(c.open().unwrap());
    let ids: Vec<_> = (0..100)
        .map(|e| store.series(key(e, "m"), ValueKind::Int).unwrap())
        .collect();
    let batch = |k: i64| -> Vec<Sample> {
        ids.iter()
            .map(|&id| Sample {
                series: id,
                ts_ms: k * 60_000,
                value: Value::Int(k),
            })
            .collect()
    };
    // Fill the head past half its limit: the flush thread freezes it and
    // stops in the hook.
    let mut k = 0i64;
    loop {
        store.append(&batch(k)).unwrap();
        k += 1;
        if let Ok(thread) = entered_rx.try_recv() {
            assert_eq!(
                thread.as_deref(),
                Some("trawler-store-flush"),
                "the head was flushed by the appender"
            );
            break;
        }
        assert!(k < 100_000, "the flush thread never took the head");
        if store.stats().memory_bytes > (128 << 10) {
            // Past the threshold: give the flush thread (at nice 5) time to
            // take the head before the next append. A bare yield was not
            // enough on a loaded machine: the appender filled the whole
            // head first and flushed it itself, failing the check above.
            if let Ok(thread) = entered_rx.recv_timeout(std::time::Duration::from_millis(200)) {
                assert_eq!(
                    thread.as_deref(),
                    Some("trawler-store-flush"),
                    "the head was flushed by the appender"
                );
                break;
            }
        }
    }
    let frozen_at = k;
    // The flush is held. Appends of a new head still return at once (on
    // another thread, so a regression fails the test instead of hanging it).
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let more: Vec<Vec<Sample>> = (frozen_at..frozen_at + 20).map(batch).collect();
    let writer = {
        let store = store.clone();
        std::thread::spawn(move || {
            for b in &more {
                store.append(b).unwrap();
            }
            done_tx.send(()).unwrap();
        })
    };
    done_rx
        .recv_timeout(std::time::Duration::from_secs(60))
        .expect("appends waited for a flush that was running in the background");
    writer.join().unwrap();
    assert_eq!(store.stats().flushes, 0, "the flush is still held");
    release_tx.send(()).unwrap();
    wait_for("the held flush to finish", || store.stats().flushes >= 1);
    let total = frozen_at + 20;
    assert_eq!(store.stats().samples, total as u64 * 100);
    let points = store.range(ids[42], 0, i64::MAX).unwrap();
    assert_eq!(points.len(), total as usize);
}

/// After a failed fsync the kernel may have dropped the pages it could not
/// write, and a later fsync can succeed without them. So the store never
/// retries: it refuses every write until it is reopened, and the reopened
/// store holds what reached the disk.
#[test]
fn a_failed_fsync_stops_writes_until_the_store_is_reopened() {
    let dir = tempfile::tempdir().unwrap();
    let fail = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut c = StoreConfig::new(dir.path());
    c.background = false;
    c.sync = SyncPolicy::Always;
    {
        let fail = fail.clone();
        c.hooks.fsync = Some(Arc::new(move || {
            if fail.load(std::sync::atomic::Ordering::SeqCst) {
                Err(std::io::Error::other("injected EIO"))
            } else {
                Ok(())
            }
        }));
    }
    let store = c.clone().open().unwrap();
    let id = store.series(key(1, "m"), ValueKind::Int).unwrap();
    let sample = |ts_ms: i64| Sample {
        series: id,
        ts_ms,
        value: Value::Int(ts_ms),
    };
    store.append(&[sample(1)]).unwrap();
    fail.store(true, std::sync::atomic::Ordering::SeqCst);
    let err = store.append(&[sample(2)]).unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err}");
    // The fsync would succeed now, but the store does not try again.
    fail.store(false, std::sync::atomic::Ordering::SeqCst);
    for attempt in [store.append(&[sample(3)]), store.append(&[sample(4)])] {
        let err = attempt.unwrap_err();
        assert!(matches!(err, Error::Poisoned { .. }), "{err}");
        assert!(err.to_string().contains("injected EIO"), "{err}");
    }
    assert!(matches!(store.sync().unwrap_err(), Error::Poisoned { .. }));
    assert!(matches!(
        store.series(key(2, "m"), ValueKind::Int).unwrap_err(),
        Error::Poisoned { .. }
    ));
    drop(store);
    // Reopened: writes work again; what was acknowledged is there.
    let store = c.open().unwrap();
    let points = store.range(id, 0, i64::MAX).unwrap();
    assert_eq!(points.first().map(|p| p.ts_ms), Some(1), "{points:?}");
    store.append(&[sample(5)]).unwrap();
}

/// The WAL's bytes in `stats` (read every second by `/metrics` and the
/// status line) are kept in memory, and match the folder after appends,
/// after a flush that removes segments, and after a reopen.
#[test]
fn wal_bytes_in_stats_match_the_folder_without_listing_it() {
    fn folder(dir: &std::path::Path) -> u64 {
        std::fs::read_dir(dir.join("wal"))
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap().len())
            .sum()
    }
    let dir = tempfile::tempdir().unwrap();
    let mut c = StoreConfig::new(dir.path());
    c.background = false;
    let store = c.clone().open().unwrap();
    let id = store.series(key(1, "m"), ValueKind::Int).unwrap();
    assert_eq!(store.stats().wal_bytes, folder(dir.path()));
    for ts in 0..100 {
        store
            .append(&[Sample {
                series: id,
                ts_ms: ts * 1_000,
                value: Value::Int(ts),
            }])
            .unwrap();
        assert_eq!(store.stats().wal_bytes, folder(dir.path()), "after {ts}");
    }
    store.flush().unwrap();
    assert_eq!(store.stats().wal_bytes, folder(dir.path()), "after a flush");
    store.close().unwrap();
    let store = c.open().unwrap();
    assert_eq!(
        store.stats().wal_bytes,
        folder(dir.path()),
        "after a reopen"
    );
}
