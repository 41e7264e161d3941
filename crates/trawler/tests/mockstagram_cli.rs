//! `trawler mockstagram` as a user runs it: a real process on a real port.

mod common;

use std::time::Duration;

use common::{http, start_sim};

#[test]
fn serves_the_contract_and_stops_cleanly_on_sigterm() {
    let (mut sim, addr) = start_sim(&["--accounts", "1000", "--seed", "5"]);
    let first = http(addr, "GET", "/api/v1/influencers/1000999", None);
    assert_eq!(first.status, 200);
    assert_eq!(first.json()["username"], "influencer-1000999");
    assert_eq!(
        http(addr, "GET", "/api/v1/influencers/1001000", None).status,
        500
    );
    let stats = http(addr, "GET", "/_sim/stats", None).json();
    assert_eq!(stats["accounts"], 1000);
    assert_eq!(stats["reads"], 1);
    assert!(sim.terminate(Duration::from_secs(10)).success());
}

#[test]
fn bad_flags_are_refused_with_the_reason() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_trawler"))
        .args([
            "mockstagram",
            "--error-rate",
            "2",
            "--listen",
            "127.0.0.1:0",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("error rate must be between 0 and 1"),
        "{stderr}"
    );
}

#[test]
fn logs_to_a_pipe_are_plain_text_without_colour_codes() {
    use std::io::{BufRead, BufReader, Read};
    use std::process::{Command, Stdio};
    let mut child = Command::new(env!("CARGO_BIN_EXE_trawler"))
        .args(["mockstagram", "--accounts", "10", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    assert!(line.contains("listening"), "{line}");
    child.kill().unwrap();
    child.wait().unwrap();
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(stderr.contains("INFO"), "no log line on stderr: {stderr:?}");
    assert!(
        !stderr.contains('\u{1b}'),
        "colour codes in piped logs: {stderr:?}"
    );
}
