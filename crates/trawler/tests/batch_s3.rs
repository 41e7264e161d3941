//! `trawler crawl` with its URL list on S3 and its results written there:
//! a real S3-compatible server (moto's, from PyPI, installed by
//! `scripts/peers/setup s3`), the real image simulator, the real binary.
//!
//! One test in its own binary: it sets the AWS environment variables of
//! its own process (for the client that prepares and reads the bucket)
//! before any thread starts.

mod common;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{addr_of, free_port, http, nats_server, spawn, wait_port, Proc};
use trawler_batch::remote::Remote;

const MINUTE: Duration = Duration::from_secs(60);

/// Made-up credentials: moto accepts any, and with them set the client
/// never looks for others (no instance metadata request).
const ENV: [(&str, &str); 3] = [
    ("AWS_ACCESS_KEY_ID", "trawler-test"),
    ("AWS_SECRET_ACCESS_KEY", "trawler-test-secret"),
    ("AWS_REGION", "us-east-1"),
];

fn repo() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

#[test]
fn an_s3_list_crawled_into_s3_gives_each_url_once() {
    for (k, v) in ENV {
        // Before any thread of this test binary starts.
        std::env::set_var(k, v);
    }
    let status = Command::new(repo().join("scripts/peers/setup"))
        .arg("s3")
        .status()
        .expect("running scripts/peers/setup s3");
    assert!(status.success(), "scripts/peers/setup s3 failed");
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let _moto = spawn(
        &repo().join("target/peers-venv/bin/python"),
        &[
            "-m".into(),
            "moto.server".into(),
            "-H".into(),
            "127.0.0.1".into(),
            "-p".into(),
            port.to_string(),
        ],
        &dir.path().join("moto.log"),
    );
    wait_port(port, "moto");
    let endpoint = format!("http://127.0.0.1:{port}");
    let s3 = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let created = http(s3, "PUT", "/images", None);
    assert_eq!(created.status, 200, "{}", created.body);

    // The list: a gzip object and a plain one, read in key order.
    let list = dir.path().join("urls.txt.gz");
    let out = Command::new(env!("CARGO_BIN_EXE_trawler"))
        .args(["gen", "urls", "--count", "600", "--hosts", "6"])
        .args(["--duplicates", "0.1", "--faults", "0", "--bad", "0"])
        .args(["--slow-hosts", "0", "--down-hosts", "0"])
        .arg("--out")
        .arg(&list)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut text = String::new();
    std::io::Read::read_to_string(
        &mut flate2::read::MultiGzDecoder::new(std::fs::File::open(&list).unwrap()),
        &mut text,
    )
    .unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    let extra: Vec<String> = (0..5)
        .map(|i| format!("http://h1.images.test/img/{}.png", 90_000 + i))
        .collect();
    lines.extend(extra.iter().cloned());
    let distinct: HashSet<String> = lines.iter().cloned().collect();

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let bucket =
        |prefix: &str| Remote::new(&format!("s3://images/{prefix}"), Some(&endpoint)).unwrap();
    runtime.block_on(async {
        let lists = bucket("lists");
        lists
            .put("a/urls.txt.gz", std::fs::read(&list).unwrap())
            .await
            .unwrap();
        lists
            .put("b.txt", (extra.join("\n") + "\n").into_bytes())
            .await
            .unwrap();
    });

    let sim = Proc::start(&["sim", "images", "--listen", "127.0.0.1:0", "--pool", "4"]);
    let sim = addr_of(&sim.wait_line("listening on ", MINUTE));
    let data = dir.path().join("data");
    let out = Command::new(env!("CARGO_BIN_EXE_trawler"))
        .args([
            "crawl",
            "--urls",
            "s3://images/lists",
            "--output",
            "s3://images/out",
        ])
        .args(["--s3-endpoint", &endpoint])
        .arg("--data")
        .arg(&data)
        .args(["--connect-to", &sim.to_string()])
        .args(["--detector", &format!("http://{sim}/detect")])
        .args([
            "--listen",
            "127.0.0.1:0",
            "--roll-after",
            "200ms",
            "--segment-urls",
            "100",
        ])
        .envs(ENV)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("state=finished"), "{stdout}");
    assert!(
        !stderr.contains("trawler-test-secret"),
        "the secret key was printed: {stderr}"
    );

    // Read every results object back from S3.
    let read_back = |prefix: &str| -> HashSet<String> {
        let back = dir.path().join("back").join(prefix);
        std::fs::create_dir_all(back.join("results")).unwrap();
        runtime.block_on(async {
            let out = bucket(prefix);
            let objects = out.list("results").await.unwrap();
            assert!(objects.len() >= 2, "{objects:?}");
            for (name, _) in &objects {
                let bytes = out.get(name).await.unwrap();
                std::fs::write(back.join(name), &bytes).unwrap();
            }
        });
        let mut done: HashMap<String, usize> = HashMap::new();
        for (fp, url) in trawler_batch::output::read_keys(&back.join("results")).unwrap() {
            assert_eq!(fp, trawler_batch::input::fingerprint(&url));
            *done.entry(url).or_default() += 1;
        }
        let twice: Vec<_> = done.iter().filter(|(_, n)| **n > 1).collect();
        assert!(twice.is_empty(), "in the results more than once: {twice:?}");
        done.into_keys().collect()
    };
    assert_eq!(
        read_back("out"),
        distinct,
        "the results are not the distinct URLs of the list"
    );
    assert!(lines.len() > distinct.len(), "the list has duplicates");
    let dead = runtime.block_on(async {
        let out = bucket("out");
        assert!(out.exists("summary.json").await.unwrap());
        out.get("dead.ndjson").await.unwrap()
    });
    assert!(dead.is_empty(), "{}", String::from_utf8_lossy(&dead));

    // Cluster mode: two nodes share the same S3 list through NATS; each
    // segment is committed with one PUT per file into the bucket.
    let nats_port = free_port();
    let _nats = nats_server(dir.path(), nats_port);
    let nats = format!("nats://127.0.0.1:{nats_port}");
    let node = |n: usize| {
        Command::new(env!("CARGO_BIN_EXE_trawler"))
            .args([
                "crawl",
                "--urls",
                "s3://images/lists",
                "--output",
                "s3://images/cluster",
            ])
            .args(["--s3-endpoint", &endpoint, "--cluster", &nats])
            .args(["--node-id", &format!("node-{n}"), "--lease-ttl", "2s"])
            .arg("--data")
            .arg(dir.path().join(format!("node-{n}")))
            .args(["--connect-to", &sim.to_string()])
            .args(["--detector", &format!("http://{sim}/detect")])
            .args([
                "--listen",
                "127.0.0.1:0",
                "--roll-after",
                "200ms",
                "--segment-urls",
                "100",
            ])
            .envs(ENV)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let nodes = [node(1), node(2)];
    for child in nodes {
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{stderr}");
        assert!(!stderr.contains("trawler-test-secret"), "{stderr}");
    }
    assert_eq!(read_back("cluster"), distinct);
}
