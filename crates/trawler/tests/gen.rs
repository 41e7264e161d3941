//! `trawler gen expo`, the real binary: deterministic files (plain and
//! gzip) and every event delivered exactly once to a real HTTP listener
//! that pushes back with 503s.

mod common;

use std::convert::Infallible;
use std::io::Read;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

/// Runs `trawler gen expo ARGS`; panics with its stderr unless it succeeds.
fn gen(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_trawler"))
        .args(["gen", "expo"])
        .args(args)
        .output()
        .expect("run trawler gen");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "trawler gen failed: {stderr}");
    stderr
}

const FIXED: [&str; 6] = [
    "--start",
    "1764547200000",
    "--rate",
    "0",
    "--time-rate",
    "50000",
];

#[test]
fn files_are_deterministic_and_gzip_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_owned();
    let write = |name: &str, seed: &str| {
        let out = path(name);
        let stderr = gen(&[
            &FIXED[..],
            &["--events", "20000", "--seed", seed, "--out", &out],
        ]
        .concat());
        assert!(stderr.contains("gen: events=20000 "), "{stderr}");
        std::fs::read(out).unwrap()
    };
    let a = write("a.ndjson", "3");
    let b = write("b.ndjson", "3");
    let other = write("c.ndjson", "4");
    assert_eq!(a, b, "same seed, same bytes");
    assert_ne!(a, other);
    assert_eq!(a.iter().filter(|&&c| c == b'\n').count(), 20_000);

    let gz = write("a.ndjson.gz", "3");
    assert!(
        gz.len() < a.len() / 3,
        "gzip: {} of {} bytes",
        gz.len(),
        a.len()
    );
    let mut unzipped = Vec::new();
    flate2::read::GzDecoder::new(&gz[..])
        .read_to_end(&mut unzipped)
        .unwrap();
    assert_eq!(unzipped, a);
}

/// What the listener received.
#[derive(Default)]
struct Received {
    lines: Mutex<Vec<String>>,
    requests: AtomicUsize,
    gzipped: AtomicUsize,
}

/// A loopback listener taking NDJSON POSTs; every third request is first
/// answered `503 Retry-After: 0` (the job asking to slow down).
fn listener(runtime: &tokio::runtime::Runtime) -> (String, Arc<Received>) {
    let received = Arc::new(Received::default());
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let url = format!(
        "http://{}/api/v1/streams/expo/events",
        listener.local_addr().unwrap()
    );
    let state = received.clone();
    runtime.spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let state = state.clone();
            tokio::spawn(async move {
                let answer = service_fn(move |req: Request<hyper::body::Incoming>| {
                    let state = state.clone();
                    async move {
                        let n = state.requests.fetch_add(1, Ordering::SeqCst);
                        let gzip = req
                            .headers()
                            .get("content-encoding")
                            .is_some_and(|v| v == "gzip");
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        if n % 3 == 1 {
                            let busy = Response::builder()
                                .status(StatusCode::SERVICE_UNAVAILABLE)
                                .header("retry-after", "0")
                                .body(Full::new(Bytes::from("busy")))
                                .unwrap();
                            return Ok::<_, Infallible>(busy);
                        }
                        let text = if gzip {
                            state.gzipped.fetch_add(1, Ordering::SeqCst);
                            let mut s = String::new();
                            flate2::read::GzDecoder::new(&body[..])
                                .read_to_string(&mut s)
                                .unwrap();
                            s
                        } else {
                            String::from_utf8(body.to_vec()).unwrap()
                        };
                        state
                            .lines
                            .lock()
                            .unwrap()
                            .extend(text.lines().map(str::to_owned));
                        Ok(Response::new(Full::new(Bytes::from("{}"))))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), answer)
                    .await;
            });
        }
    });
    (url, received)
}

fn posts_every_event_exactly_once(gzip: bool) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (url, received) = listener(&runtime);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("events.ndjson");
    let common = [
        &FIXED[..],
        &["--events", "30000", "--seed", "9", "--batch", "700"],
    ]
    .concat();

    let mut args = [&common[..], &["--out", &url, "--connections", "3"]].concat();
    if gzip {
        args.push("--gzip");
    }
    let stderr = gen(&args);
    assert!(
        stderr.contains("gen: events=30000 ") && stderr.contains("http_errors=0"),
        "{stderr}"
    );
    gen(&[&common[..], &["--out", file.to_str().unwrap()]].concat());

    // The process has exited, so every answered request is in `received`.
    let mut got = std::mem::take(&mut *received.lines.lock().unwrap());
    let mut want: Vec<String> = std::fs::read_to_string(&file)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(got.len(), 30_000);
    got.sort_unstable();
    want.sort_unstable();
    assert!(
        got == want,
        "the events posted are not the events generated"
    );
    // 43 batches, each third request refused once: the retries happened.
    assert!(received.requests.load(Ordering::SeqCst) > 43);
    assert_eq!(received.gzipped.load(Ordering::SeqCst) > 0, gzip);
}

#[test]
fn posts_every_event_exactly_once_with_retries() {
    posts_every_event_exactly_once(false);
}

#[test]
fn posts_gzipped_batches() {
    posts_every_event_exactly_once(true);
}

#[test]
fn a_fixed_start_without_a_pace_is_refused() {
    let out = Command::new(env!("CARGO_BIN_EXE_trawler"))
        .args(["gen", "expo", "--start", "1764547200000", "--events", "1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--time-rate"), "{stderr}");
}
