//! `trawler store stats|compact|verify` on the data folder of a real run:
//! refused while the run holds the folder, then figures, an on-demand
//! compaction that keeps every sample, and a verification that names a
//! corrupted block file.

mod common;

use std::path::Path;
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
