//! Shared helpers of the binary's integration tests: run the real `trawler`
//! binary as a child process and talk to it over real HTTP.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A child process killed (SIGKILL) when dropped.
pub struct Proc {
    pub child: Child,
    /// Lines the child printed on stdout, as they come.
    pub stdout: mpsc::Receiver<String>,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proc {
    /// Starts `trawler ARGS`, with stderr going to the test's stderr.
    pub fn start(args: &[&str]) -> Proc {
        let mut child = Command::new(env!("CARGO_BIN_EXE_trawler"))
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start trawler");
        let out = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Proc { child, stdout: rx }
    }

    /// Waits for a stdout line starting with `prefix` and returns the rest.
    pub fn wait_line(&self, prefix: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stdout.recv_timeout(left) {
                Ok(line) => {
                    if let Some(rest) = line.strip_prefix(prefix) {
                        return rest.trim().to_owned();
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    panic!("the process exited before printing a line starting with {prefix:?}")
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    panic!("no line starting with {prefix:?} within {timeout:?}")
                }
            }
        }
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "no exit within {timeout:?} of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL: no chance to flush anything.
    pub fn kill9(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

/// Parses `http://host:port` into a socket address.
pub fn addr_of(url: &str) -> SocketAddr {
    url.trim_start_matches("http://")
        .trim_end_matches('/')
        .parse()
        .expect("address")
}

/// A response: status and body.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub body: String,
}

impl Response {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

/// One HTTP/1.1 request over a fresh connection (`Connection: close`).
pub fn http(addr: SocketAddr, method: &str, path: &str, body: Option<&str>) -> Response {
    http_with(addr, method, path, body, &[])
}

/// Like [`http`], with extra headers.
pub fn http_with(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
    headers: &[(&str, &str)],
) -> Response {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let body = body.unwrap_or("");
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if !body.is_empty() {
        request.push_str("Content-Type: application/json\r\n");
    }
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).unwrap();
    stream.write_all(body.as_bytes()).unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).expect("read response");
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, rest) = text.split_once("\r\n\r\n").expect("HTTP head");
    let status = head
        .split_whitespace()
        .nth(1)
        .expect("status")
        .parse()
        .expect("status code");
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    let body = if chunked {
        dechunk(rest)
    } else {
        rest.to_owned()
    };
    Response { status, body }
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        s = &rest[n + 2..];
    }
    out
}

/// Polls `check` every 100 ms until it returns `Some` or `timeout` passes.
pub fn eventually<T>(timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "condition not met within {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Starts the simulator binary on a free loopback port.
pub fn start_sim(extra: &[&str]) -> (Proc, SocketAddr) {
    let mut args = vec!["mockstagram", "--listen", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    let sim = Proc::start(&args);
    let url = sim.wait_line("listening on ", Duration::from_secs(30));
    (sim, addr_of(&url))
}

/// Size of every file under `dir`, recursively.
pub fn dir_size(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| {
                    let p = e.path();
                    if p.is_dir() {
                        dir_size(&p)
                    } else {
                        e.metadata().map(|m| m.len()).unwrap_or(0)
                    }
                })
                .sum()
        })
        .unwrap_or(0)
}

/// Starts `trawler run --target sim --data DATA --listen 127.0.0.1:0 EXTRA…`
/// and waits for its API.
pub fn start_run(sim: SocketAddr, data: &Path, extra: &[&str]) -> (Proc, SocketAddr) {
    start_run_on("127.0.0.1:0", sim, data, extra)
}

/// Like [`start_run`], the API on `listen` (a fixed port survives a restart).
pub fn start_run_on(
    listen: &str,
    sim: SocketAddr,
    data: &Path,
    extra: &[&str],
) -> (Proc, SocketAddr) {
    let target = format!("http://{sim}");
    let mut args = vec![
        "run",
        "--target",
        &target,
        "--data",
        data.to_str().unwrap(),
        "--listen",
        listen,
    ];
    args.extend_from_slice(extra);
    let run = Proc::start(&args);
    let api = run.wait_line("listening on ", Duration::from_secs(60));
    (run, addr_of(&api))
}

/// `GET path`, asserting a 200, as JSON.
pub fn get(api: SocketAddr, path: &str) -> serde_json::Value {
    let r = http(api, "GET", path, None);
    assert_eq!(r.status, 200, "GET {path}: {}", r.body);
    r.json()
}

/// An hour, ms.
pub const HOUR_MS: i64 = 3_600_000;

/// followerCount points of `pk`: (slot ms, value).
pub fn points(api: SocketAddr, pk: u64) -> Vec<(i64, i64)> {
    get(
        api,
        &format!("/api/v1/influencers/{pk}/series?metric=followerCount&from=0"),
    )["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p[0].as_i64().unwrap(), p[1].as_f64().unwrap() as i64))
        .collect()
}

/// Every top gainer over the hour has gain = a value it had in the current
/// clock hour − its first value in the previous clock hour (the movers'
/// definition, in both modes). Returns how many entries were checked, or
/// what did not hold.
pub fn try_gainers(api: SocketAddr, boundary_ms: i64) -> Result<usize, String> {
    let top = get(api, "/api/v1/influencers/top?by=gain1h&limit=20");
    let entries = top["entries"].as_array().unwrap();
    for e in entries {
        let pk = e["pk"].as_u64().unwrap();
        let gain = e["gain"].as_i64().unwrap();
        let points = points(api, pk);
        let first_previous = points
            .iter()
            .find(|p| (boundary_ms - HOUR_MS..boundary_ms).contains(&p.0))
            .ok_or_else(|| format!("pk {pk}: no point in the previous hour: {points:?}"))?
            .1;
        if !points
            .iter()
            .any(|p| p.0 >= boundary_ms && p.1 - first_previous == gain)
        {
            return Err(format!("pk {pk}: gain {gain} is not a current value minus the previous hour's first ({first_previous}): {points:?}"));
        }
    }
    Ok(entries.len())
}

/// [`try_gainers`], failing the test on the first entry that does not hold.
pub fn check_gainers(api: SocketAddr, boundary_ms: i64) -> usize {
    try_gainers(api, boundary_ms).unwrap_or_else(|e| panic!("{e}"))
}

// Servers the tests start themselves (nats-server, VictoriaMetrics).

/// A free loopback port.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A program on the PATH or in the sbin folders (Debian puts nats-server
/// in /usr/sbin).
pub fn program(name: &str) -> PathBuf {
    for dir in std::env::var("PATH").unwrap_or_default().split(':').chain([
        "/usr/sbin",
        "/usr/bin",
        "/sbin",
    ]) {
        let p = Path::new(dir).join(name);
        if p.exists() {
            return p;
        }
    }
    panic!("{name} is not installed: run scripts/deps (Debian package {name})");
}

/// Waits until something listens on loopback `port`.
pub fn wait_port(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "{what} did not listen on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A lone nats-server with JetStream on loopback `port`, its store and log
/// under `dir`; returns once it listens.
pub fn nats_server(dir: &Path, port: u16) -> Server {
    let store = dir.join("nats").display().to_string();
    let args = [
        "-js",
        "-a",
        "127.0.0.1",
        "-p",
        &port.to_string(),
        "-sd",
        &store,
    ]
    .map(str::to_owned);
    let server = spawn(&program("nats-server"), &args, &dir.join("nats.log"));
    wait_port(port, "nats-server");
    server
}

/// A server process killed when dropped.
pub struct Server {
    pub child: Child,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn terminate(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }
}

/// Starts `program` with `args`, both outputs into `log`.
pub fn spawn(program: &Path, args: &[String], log: &Path) -> Server {
    let log = std::fs::File::create(log).unwrap();
    let child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("starting {}: {e}", program.display()));
    Server { child }
}

/// The job file `job` with some text replaced (each must be there), written
/// as `dir/job.toml`.
pub fn job_with(job: &Path, dir: &Path, replace: &[(&str, &str)]) -> PathBuf {
    let mut text = std::fs::read_to_string(job).unwrap();
    for (a, b) in replace {
        assert!(text.contains(a), "{a} not in the job");
        text = text.replacen(a, b, 1);
    }
    let path = dir.join("job.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// A POST of raw bytes with headers: status and body (a server may answer
/// before reading the whole body).
pub fn post_bytes(
    api: SocketAddr,
    path: &str,
    body: &[u8],
    headers: &[(&str, &str)],
) -> (u16, String) {
    let mut s = TcpStream::connect(api).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut head = format!(
        "POST {path} HTTP/1.1\r\nHost: {api}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).unwrap();
    // A server may answer (413) before reading everything.
    let _ = s.write_all(body);
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, rest) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, rest.to_owned())
}
