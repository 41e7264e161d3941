//! `trawler store stats|compact|verify` on the data folder of a real run:
//! refused while the run holds the folder, then figures, an on-demand
//! compaction that keeps every sample, and a verification that names a
//! corrupted block file.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::{eventually, get, start_run, start_sim};

fn store_cmd(args: &[&str], data: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_trawler"))
        .arg("store")
        .args(args)
        .arg("--data")
        .arg(data)
        .output()
        .unwrap()
}

fn field(line: &str, key: &str) -> u64 {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("no {key} in {line}"))
        .parse()
        .unwrap()
}

#[test]
fn store_commands_refuse_a_folder_in_use_then_report_compact_and_verify() {
    let (_sim, sim) = start_sim(&["--accounts", "2000"]);
    let data = tempfile::tempdir().unwrap();
    let (mut run, api) = start_run(
        sim,
        data.path(),
        &[
            "--ids",
            "1000000..1001000",
            "--interval",
            "1s",
            "--no-suspicious",
        ],
    );
    eventually(Duration::from_secs(30), || {
        (get(api, "/api/v1/influencers/stats")["polls"].as_u64()? >= 3_000).then_some(())
    });

    let busy = store_cmd(&["stats"], data.path());
    assert!(!busy.status.success());
    let stderr = String::from_utf8_lossy(&busy.stderr);
    assert!(stderr.contains("in use by another process"), "{stderr}");

    assert!(run.terminate(Duration::from_secs(30)).success());

    let stats = store_cmd(&["stats"], data.path());
    assert!(stats.status.success(), "{stats:?}");
    let line = String::from_utf8_lossy(&stats.stdout).into_owned();
    let samples = field(&line, "samples");
    assert!(samples >= 6_000, "{line}");

    let compact = store_cmd(&["compact"], data.path());
    assert!(compact.status.success(), "{compact:?}");
    let out = String::from_utf8_lossy(&compact.stdout).into_owned();
    let after = out.lines().find(|l| l.starts_with("after:")).unwrap();
    assert_eq!(field(after, "samples"), samples, "{out}");
    assert!(field(after, "blocks") >= 1, "{out}");
    // Only the header of a fresh, empty WAL segment is left.
    assert!(
        field(after, "wal_bytes") < 64,
        "the head is in blocks: {out}"
    );

    let verify = store_cmd(&["verify"], data.path());
    assert!(verify.status.success(), "{verify:?}");
    assert!(String::from_utf8_lossy(&verify.stdout).contains("every checksum matches"));

    // Flip a byte in the middle of a block: verification names the file.
    let blocks = data.path().join("store/blocks");
    let block = std::fs::read_dir(&blocks)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "blk"))
        .expect("a block file");
    let mut bytes = std::fs::read(&block).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x5a;
    std::fs::write(&block, bytes).unwrap();
    let verify = store_cmd(&["verify"], data.path());
    assert!(!verify.status.success(), "{verify:?}");
    let stderr = String::from_utf8_lossy(&verify.stderr);
    let name = block.file_name().unwrap().to_str().unwrap();
    assert!(
        stderr.contains(name),
        "the corrupt block is not named: {stderr}"
    );
}

#[test]
fn store_commands_on_a_folder_without_a_store_say_so() {
    let empty = tempfile::tempdir().unwrap();
    let out = store_cmd(&["verify"], empty.path());
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("holds no trawler store"), "{stderr}");
}

/// A store written through the library: three series over two days in
/// blocks, and a tail that is only in the WAL (the store is dropped, not
/// closed, as a killed run leaves it). Returns the samples it holds.
fn write_store(data: &Path) -> u64 {
    use trawler_store::{Sample, SeriesKey, StoreConfig, Value, ValueKind};
    const MINUTE: i64 = 60_000;
    const EPOCH: i64 = 1_704_067_200_000;
    let mut config = StoreConfig::new(data.join("store"));
    config.background = false;
    let store = config.open().unwrap();
    let keys = [
        ("followerCount", ValueKind::Int),
        ("followingCount", ValueKind::Int),
        ("followerRatio", ValueKind::Float),
    ]
    .map(|(metric, kind)| {
        (
            SeriesKey {
                job: "cli",
                entity: 1_000_001,
                metric,
            },
            kind,
        )
    });
    let ids = store.series_batch(&keys).unwrap();
    let mut written = 0;
    for (minutes, flush) in [
        (0..1_440, true),
        (1_440..2_000, true),
        (2_000..2_100, false),
    ] {
        let mut batch = Vec::new();
        for m in minutes {
            let ts_ms = EPOCH + m * MINUTE + 17_000;
            let followers = 100_000 + (m * m) % 977;
            batch.push(Sample {
                series: ids[0],
                ts_ms,
                value: Value::Int(followers),
            });
            batch.push(Sample {
                series: ids[1],
                ts_ms,
                value: Value::Int(1_000 + m / 300),
            });
            batch.push(Sample {
                series: ids[2],
                ts_ms,
                value: Value::Float(followers as f64 / 1_000.0),
            });
        }
        written += batch.len() as u64;
        store.append(&batch).unwrap();
        if flush {
            store.flush().unwrap();
        }
    }
    drop(store);
    written
}

/// Every file and folder under `dir`: relative path, modification time, and
/// bytes (none for folders).
fn snapshot(dir: &Path) -> Vec<(PathBuf, std::time::SystemTime, Option<Vec<u8>>)> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let path = e.unwrap().path();
            let meta = std::fs::metadata(&path).unwrap();
            let rel = path.strip_prefix(dir).unwrap().to_path_buf();
            if meta.is_dir() {
                todo.push(path.clone());
                out.push((rel, meta.modified().unwrap(), None));
            } else {
                out.push((
                    rel,
                    meta.modified().unwrap(),
                    Some(std::fs::read(&path).unwrap()),
                ));
            }
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

#[test]
fn stats_and_verify_leave_the_folder_byte_identical() {
    let data = tempfile::tempdir().unwrap();
    let written = write_store(data.path());
    let wal = data.path().join("store/wal");
    assert!(
        std::fs::read_dir(&wal)
            .unwrap()
            .any(|e| e.unwrap().metadata().unwrap().len() > 12),
        "the test needs samples that are only in the WAL"
    );
    let before = snapshot(data.path());

    let stats = store_cmd(&["stats"], data.path());
    assert!(stats.status.success(), "{stats:?}");
    let out = String::from_utf8_lossy(&stats.stdout).into_owned();
    assert_eq!(
        field(&out, "samples"),
        written,
        "the WAL's samples count: {out}"
    );
    assert!(out.contains("verified=false"), "{out}");
    assert!(
        !out.contains("corrupt_blocks"),
        "stats did not verify: {out}"
    );

    let verify = store_cmd(&["verify"], data.path());
    assert!(verify.status.success(), "{verify:?}");

    let after = snapshot(data.path());
    let names = |s: &[(PathBuf, _, _)]| s.iter().map(|f| f.0.clone()).collect::<Vec<_>>();
    assert_eq!(
        names(&before),
        names(&after),
        "files were created or removed"
    );
    for (b, a) in before.iter().zip(&after) {
        assert!(b.2 == a.2, "{} changed", b.0.display());
        assert_eq!(b.1, a.1, "{} was modified", b.0.display());
    }
}

#[test]
fn a_flipped_block_byte_is_named_by_verify_and_not_hidden_by_stats() {
    let data = tempfile::tempdir().unwrap();
    write_store(data.path());
    // The biggest block is almost all series data: its middle byte is in
    // one series' pages.
    let block = std::fs::read_dir(data.path().join("store/blocks"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .expect("a block file");
    let mut bytes = std::fs::read(&block).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x5a;
    std::fs::write(&block, bytes).unwrap();

    let stats = store_cmd(&["stats"], data.path());
    assert!(stats.status.success(), "{stats:?}");
    let out = String::from_utf8_lossy(&stats.stdout).into_owned();
    assert!(
        !out.contains("corrupt_blocks=0"),
        "stats claims no corruption: {out}"
    );
    assert!(out.contains("verified=false"), "{out}");

    let verify = store_cmd(&["verify"], data.path());
    assert!(!verify.status.success(), "{verify:?}");
    let stderr = String::from_utf8_lossy(&verify.stderr);
    let name = block.file_name().unwrap().to_str().unwrap();
    assert!(
        stderr.contains(name),
        "the corrupt block is not named: {stderr}"
    );
    assert!(
        stderr.contains("series cli/1000001/follow"),
        "the corrupt series is not named: {stderr}"
    );
}
