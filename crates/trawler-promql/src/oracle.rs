//! The oracle: what it takes to compare trawler's PromQL with a real
//! Prometheus 2.42, shared by the compliance test (`tests/compliance.rs`,
//! engine in memory) and `trawler bench promql` (trawler's HTTP API).
//!
//! * [`dataset`]: a deterministic data set shaped like the compliance
//!   tester's demo service (counters with resets, gauges, classic
//!   histograms, series with gaps and stale markers, NaN and ±Inf), about
//!   two hundred series over three hours at 15 s;
//! * [`corpus`] and [`QueryTimes::of`]: the queries of
//!   `tests/compliance/queries.txt` and the instant time, range and step
//!   each is asked at; [`known_differences`], those the engine answers
//!   differently on purpose or for now, with the reason;
//! * [`Prometheus`]: a `prometheus` server with its remote-write receiver
//!   on a free loopback port, in a temporary folder, killed when dropped;
//!   [`write_windows`] and [`write_body`] encode what goes into it;
//! * [`Answer`] and [`agree`]: answers of the Prometheus HTTP API and the
//!   compliance tester's rules for comparing them (the same label sets,
//!   values equal within a relative 1e-5, NaN equal to NaN, order compared
//!   only for order-sensitive queries, an error only against an error).
//!
//! The data goes into Prometheus through remote write rather than
//! `promtool tsdb create-blocks-from openmetrics`, because OpenMetrics
//! text cannot carry staleness markers and staleness is part of what is
//! compared.
//!
//! Behind the `oracle` feature: it starts processes and speaks HTTP, which
//! the engine itself never does.
//!
//! ```no_run
//! use trawler_promql::oracle::{self, Prometheus};
//!
//! let prom = Prometheus::start(&oracle::find_binary("prometheus").unwrap()).unwrap();
//! for body in oracle::write_windows(&oracle::dataset()) {
//!     prom.write(&body).unwrap();
//! }
//! let times = oracle::QueryTimes::of(0);
//! let answer = prom.query(&times.instant_path("sum(demo_num_cpus)")).unwrap();
//! ```

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{remote, Labels, QueryError, Value, STALE_NAN_BITS};

/// 2024-01-01T00:00:00Z: the first sample.
pub const T0: i64 = 1_704_067_200_000;
/// Three hours of data.
pub const SPAN: i64 = 3 * 3_600_000;
/// The scrape interval of most series.
pub const SCRAPE: i64 = 15_000;
/// Times of the instant queries, taken in turn by the corpus' queries:
/// within the data, ms off the scrape grid, just after the data's end
/// (within the lookback), early in the data, and exactly one lookback
/// delta after the last sample before a gap.
const INSTANTS: [i64; 5] = [
    T0 + 9_000_000 + 3_000,
    T0 + 4_300_250,
    T0 + SPAN + 120_000,
    T0 + 2_879_999,
    T0 + 1_785_000,
];
/// Ranges of the range queries, taken in turn: within the data, over its
/// start, over its end, over gaps on the scrape grid (windows ending on
/// samples).
const RANGES: [(i64, i64); 4] = [
    (T0 + 3_600_500, T0 + 7_200_500),
    (T0 - 300_000, T0 + 1_500_000),
    (T0 + SPAN - 1_200_000, T0 + SPAN + 600_000),
    (T0 + 1_440_000, T0 + 2_400_000),
];
/// Steps of the range queries, taken in turn.
const STEPS: [i64; 6] = [10_000, 37_000, 60_000, 300_000, 1_000, 15_000];

const INSTANCES: [&str; 3] = [
    "demo.promlabs.com:10000",
    "demo.promlabs.com:10001",
    "demo.promlabs.com:10002",
];

/// The corpus, `tests/compliance/queries.txt`.
const QUERIES: &str = include_str!("../tests/compliance/queries.txt");

/// The corpus' queries the engine answers differently from Prometheus
/// on purpose or for now, each with its reason,
/// `tests/compliance/known_differences.txt`.
const KNOWN_DIFFERENCES: &str = include_str!("../tests/compliance/known_differences.txt");

/// The queries of the corpus, in file order.
pub fn corpus() -> Vec<String> {
    lines(QUERIES)
}

/// The known differences: query → reason.
pub fn known_differences() -> HashMap<String, String> {
    lines(KNOWN_DIFFERENCES)
        .into_iter()
        .map(|l| match l.split_once('\t') {
            Some((q, why)) => (q.to_owned(), why.to_owned()),
            None => (l, String::new()),
        })
        .collect()
}

/// The lines of a corpus-style file: trimmed, without blank lines and
/// `#` comments.
pub fn lines(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect()
}

/// When the `i`-th query of the corpus is asked: each takes the next
/// instant, range and step in turn, so the corpus covers them all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueryTimes {
    /// Time of the instant query (unix ms).
    pub instant: i64,
    /// Start of the range query (unix ms).
    pub start: i64,
    /// End of the range query (unix ms).
    pub end: i64,
    /// Step of the range query (ms).
    pub step: i64,
}

impl QueryTimes {
    /// The times of the corpus' `i`-th query.
    pub fn of(i: usize) -> Self {
        let (start, end) = RANGES[i % RANGES.len()];
        Self {
            instant: INSTANTS[i % INSTANTS.len()],
            start,
            end,
            step: STEPS[i % STEPS.len()],
        }
    }

    /// The API path of `query` as an instant query.
    pub fn instant_path(&self, query: &str) -> String {
        format!(
            "/api/v1/query?query={}&time={}",
            urlencode(query),
            self.instant as f64 / 1000.0
        )
    }

    /// The API path of `query` as a range query.
    pub fn range_path(&self, query: &str) -> String {
        format!(
            "/api/v1/query_range?query={}&start={}&end={}&step={}",
            urlencode(query),
            self.start as f64 / 1000.0,
            self.end as f64 / 1000.0,
            self.step as f64 / 1000.0
        )
    }
}

/// xorshift64*: deterministic noise.
struct Noise(u64);

impl Noise {
    fn next(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Series with their samples, sorted by labels.
pub type Data = Vec<(Labels, Vec<(i64, f64)>)>;

/// A series' value at its k-th sample.
type Shape = fn(usize) -> f64;

/// A metric's labels as the API writes them.
pub type Metric = BTreeMap<String, String>;

fn stale() -> f64 {
    f64::from_bits(STALE_NAN_BITS)
}

fn times(step: i64) -> impl Iterator<Item = i64> {
    (0..=SPAN / step).map(move |i| T0 + i * step)
}

fn labels(name: &str, instance: &str, extra: &[(&str, &str)]) -> Labels {
    let mut pairs = vec![("__name__", name), ("instance", instance), ("job", "demo")];
    pairs.extend_from_slice(extra);
    Labels::new(pairs)
}

/// The data set: about two hundred series over three hours from [`T0`],
/// sorted by labels; the same on every call.
pub fn dataset() -> Data {
    let mut n = Noise(0x9e37_79b9_7f4a_7c15);
    let mut out: Data = Vec::new();
    for (ii, inst) in INSTANCES.iter().enumerate() {
        // Counters with resets.
        for (mi, mode) in ["idle", "iowait", "system", "user"].iter().enumerate() {
            let mut v = 100.0 * (mi + 1) as f64;
            let mut pts = Vec::new();
            for (k, t) in times(SCRAPE).enumerate() {
                v += n.next() * (mi + 1) as f64 * 0.7;
                if ii == 1 && *mode == "user" && (k == 200 || k == 520) {
                    v = n.next() * 3.0;
                }
                if ii == 2 && *mode == "idle" && k == 333 {
                    v = 0.0;
                }
                pts.push((t, v));
            }
            out.push((
                labels("demo_cpu_usage_seconds_total", inst, &[("mode", mode)]),
                pts,
            ));
        }
        // Gauges.
        for (ti, ty) in ["buffers", "cached", "free", "used"].iter().enumerate() {
            let base = 1e9 * (ti + 1) as f64 + 1e8 * ii as f64;
            let pts = times(SCRAPE)
                .enumerate()
                .map(|(k, t)| {
                    let wave = (k as f64 / 40.0).sin() * 2e8;
                    (t, (base + wave + n.next() * 1e7).round())
                })
                .collect();
            out.push((
                labels("demo_memory_usage_bytes", inst, &[("type", ty)]),
                pts,
            ));
        }
        let cpus = [4.0, 8.0, 2.0][ii];
        out.push((
            labels("demo_num_cpus", inst, &[]),
            times(SCRAPE).map(|t| (t, cpus)).collect(),
        ));
        let pts = times(SCRAPE)
            .enumerate()
            .map(|(k, t)| {
                (
                    t,
                    5e9 + k as f64 * 1234.5 * (ii + 1) as f64 + n.next() * 5e4,
                )
            })
            .collect();
        out.push((labels("demo_disk_usage_bytes", inst, &[]), pts));
        // A timestamp that moves every five minutes or so.
        let mut last = (T0 / 1000 - 3_600) as f64;
        let pts = times(SCRAPE)
            .enumerate()
            .map(|(k, t)| {
                if k % (17 + ii * 3) == 0 {
                    last = (t / 1000) as f64 - 7.0;
                }
                (t, last)
            })
            .collect();
        out.push((
            labels("demo_batch_last_success_timestamp_seconds", inst, &[]),
            pts,
        ));
        // Classic histograms.
        let bounds = [
            "0.0025", "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1", "+Inf",
        ];
        for method in ["GET", "POST"] {
            for path in ["/api/bar", "/api/foo"] {
                let mut counts = [0.0f64; 10];
                let mut sum = 0.0;
                let mut series: Vec<Vec<(i64, f64)>> = vec![Vec::new(); 12];
                for (k, t) in times(SCRAPE).enumerate() {
                    if ii == 0 && method == "POST" && path == "/api/foo" && k == 400 {
                        counts = [0.0; 10];
                        sum = 0.0;
                    }
                    let obs = (n.next() * 20.0) as usize;
                    for _ in 0..obs {
                        let x = n.next().powi(3) * 1.2;
                        sum += x;
                        for (bi, b) in bounds.iter().enumerate() {
                            let ub: f64 = if *b == "+Inf" {
                                f64::INFINITY
                            } else {
                                b.parse().unwrap()
                            };
                            if x <= ub {
                                counts[bi] += 1.0;
                            }
                        }
                    }
                    for bi in 0..10 {
                        let mut c = counts[bi];
                        // Non-monotonic buckets on one instance (the fix of
                        // histogram_quantile).
                        if ii == 2 && bi == 5 {
                            c -= 3.0_f64.min(c);
                        }
                        series[bi].push((t, c));
                    }
                    series[10].push((t, sum));
                    series[11].push((t, counts[9]));
                }
                for (bi, b) in bounds.iter().enumerate() {
                    out.push((
                        labels(
                            "demo_api_request_duration_seconds_bucket",
                            inst,
                            &[("method", method), ("path", path), ("le", b)],
                        ),
                        std::mem::take(&mut series[bi]),
                    ));
                }
                out.push((
                    labels(
                        "demo_api_request_duration_seconds_sum",
                        inst,
                        &[("method", method), ("path", path)],
                    ),
                    std::mem::take(&mut series[10]),
                ));
                out.push((
                    labels(
                        "demo_api_request_duration_seconds_count",
                        inst,
                        &[("method", method), ("path", path)],
                    ),
                    std::mem::take(&mut series[11]),
                ));
            }
        }
        // Present for a while, then a stale marker, then absent.
        let mut pts = Vec::new();
        let cycle = 40 + 8 * ii;
        for (k, t) in times(SCRAPE).enumerate() {
            let phase = k % cycle;
            if phase < 28 {
                pts.push((t, (k as f64 * 0.5).floor() + ii as f64));
            } else if phase == 28 {
                pts.push((t, stale()));
            }
        }
        out.push((labels("demo_intermittent_metric", inst, &[]), pts));
        // Gaps longer and shorter than the lookback delta, no markers.
        let pts = times(SCRAPE)
            .enumerate()
            .filter(|(k, _)| {
                !((100..132).contains(k) || (300..308).contains(k) || (600..650).contains(k))
            })
            .map(|(k, t)| (t, k as f64 + ii as f64 * 100.0))
            .collect();
        out.push((labels("demo_gappy_metric", inst, &[]), pts));
        // Counters scraped every 30 s at ms offsets, with resets.
        for shard in ["a", "b"] {
            let mut v = 0.0;
            let mut pts = Vec::new();
            for (k, t) in times(30_000).enumerate() {
                let jitter = (n.next() * 999.0) as i64;
                v += (n.next() * 10.0).floor();
                if shard == "b" && k % 97 == 96 {
                    v = 1.0;
                }
                pts.push((t + jitter, v));
            }
            out.push((labels("demo_items_total", inst, &[("shard", shard)]), pts));
        }
        // Gauges crossing zero.
        for (si, sensor) in ["cpu", "gpu"].iter().enumerate() {
            let pts = times(SCRAPE)
                .enumerate()
                .map(|(k, t)| {
                    let v = (k as f64 / (25.0 + si as f64 * 10.0)).sin() * 30.0 - 5.0 + ii as f64;
                    (t, (v * 100.0).round() / 100.0)
                })
                .collect();
            out.push((
                labels("demo_temperature_celsius", inst, &[("sensor", sensor)]),
                pts,
            ));
        }
        out.push((
            labels(
                "demo_label_variants",
                inst,
                &[
                    ("src", &format!("source-value-{}", ii + 10)),
                    ("dst", "original-destination-value"),
                ],
            ),
            times(SCRAPE).map(|t| (t, ii as f64 + 1.0)).collect(),
        ));
    }
    // NaN and ±Inf.
    let special: [(&str, Shape); 5] = [
        ("inf", |_| f64::INFINITY),
        ("mixed", |k| {
            [1.0, f64::NAN, f64::INFINITY, f64::NEG_INFINITY, -1.0, 0.0][k % 6]
        }),
        ("nan", |_| f64::NAN),
        ("neginf", |_| f64::NEG_INFINITY),
        ("zero", |_| 0.0),
    ];
    for (kind, f) in special {
        out.push((
            labels("demo_special_values", INSTANCES[0], &[("kind", kind)]),
            times(SCRAPE).enumerate().map(|(k, t)| (t, f(k))).collect(),
        ));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

// ---------------------------------------------------------------- remote write

/// The headers of a remote-write 1.0 request.
pub const WRITE_HEADERS: [(&str, &str); 3] = [
    ("Content-Type", "application/x-protobuf"),
    ("Content-Encoding", "snappy"),
    ("X-Prometheus-Remote-Write-Version", "0.1.0"),
];

/// A remote-write 1.0 `WriteRequest`, snappy-compressed.
pub fn write_body(series: &[(&Labels, &[(i64, f64)])]) -> Vec<u8> {
    let req = remote::WriteRequest {
        timeseries: series
            .iter()
            .map(|(labels, samples)| remote::TimeSeries {
                labels: labels
                    .iter()
                    .map(|l| (l.name.clone(), l.value.clone()))
                    .collect(),
                samples: samples.to_vec(),
            })
            .collect(),
        metadata: Vec::new(),
    };
    remote::compress(&remote::encode(&req))
}

/// The data set as remote-write bodies of ten-minute windows, in time
/// order, every series in each (so Prometheus creates the series in label
/// order, as they are sorted on disk).
pub fn write_windows(data: &Data) -> Vec<Vec<u8>> {
    let window = 600_000;
    let mut out = Vec::new();
    let mut start = T0;
    while start <= T0 + SPAN {
        let end = start + window;
        let batch: Vec<(&Labels, &[(i64, f64)])> = data
            .iter()
            .map(|(l, pts)| {
                let lo = pts.partition_point(|p| p.0 < start);
                let hi = pts.partition_point(|p| p.0 < end);
                (l, &pts[lo..hi])
            })
            .filter(|(_, s)| !s.is_empty())
            .collect();
        out.push(write_body(&batch));
        start = end;
    }
    out
}

// ---------------------------------------------------------------- HTTP

/// One HTTP/1.0 exchange on a fresh connection (HTTP/1.0, so answers are
/// never chunked): status and body.
pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<(u16, Vec<u8>)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(300)))?;
    let mut head = format!(
        "{method} {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes())?;
    s.write_all(body)?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp)?;
    let split = resp
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("no header end"))?;
    let status_line = String::from_utf8_lossy(&resp[..split]);
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other("no status"))?;
    Ok((status, resp[split + 4..].to_vec()))
}

/// Percent-encoding of a query parameter's value.
pub fn urlencode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A program on the `PATH`.
pub fn find_binary(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

// ---------------------------------------------------------------- prometheus

/// Why the oracle could not do its part.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OracleError {
    /// A file, folder, socket or process could not be made.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The cause.
        source: std::io::Error,
    },
    /// Prometheus exited or did not answer `/-/ready` in time.
    #[error("prometheus did not become ready within 60 s (exit: {exit}); its log ends (newest first):\n{log_tail}")]
    NotReady {
        /// How it exited, if it did.
        exit: String,
        /// The last lines of its log, newest first.
        log_tail: String,
    },
    /// A remote write was refused.
    #[error("remote write answered {status}: {body}")]
    Refused {
        /// The HTTP status.
        status: u16,
        /// The answer's body.
        body: String,
    },
    /// An answer was not the API's JSON.
    #[error("the answer to {path} is not JSON ({source}): {body}")]
    NotJson {
        /// The request's path.
        path: String,
        /// The parser's complaint.
        source: serde_json::Error,
        /// The start of the body.
        body: String,
    },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> OracleError {
    let what = what.into();
    move |source| OracleError::Io { what, source }
}

/// A Prometheus server with its remote-write receiver on a free loopback
/// port, storing into a temporary folder (its log is `prometheus.log`
/// there); killed and removed when dropped.
pub struct Prometheus {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    /// Starts `bin` (Prometheus 2.42) and waits, at most 60 s, until it is
    /// ready.
    pub fn start(bin: &Path) -> Result<Self, OracleError> {
        let dir = tempfile::tempdir().map_err(io("creating a temporary folder"))?;
        let config = dir.path().join("prometheus.yml");
        std::fs::write(&config, "global:\n  scrape_interval: 15s\n")
            .map_err(io(format!("writing {}", config.display())))?;
        let addr = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(io("finding a free port"))?;
        let log_path = dir.path().join("prometheus.log");
        let log = std::fs::File::create(&log_path)
            .map_err(io(format!("creating {}", log_path.display())))?;
        let child = Command::new(bin)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--web.enable-remote-write-receiver")
            .arg("--storage.tsdb.retention.time=100y")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(io(format!("starting {}", bin.display())))?;
        let mut p = Self {
            child,
            addr,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok((200, _)) = http(addr, "GET", "/-/ready", &[], b"") {
                return Ok(p);
            }
            let exited = p.child.try_wait().ok().flatten();
            if exited.is_some() || Instant::now() >= deadline {
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(20).collect();
                return Err(OracleError::NotReady {
                    exit: format!("{exited:?}"),
                    log_tail: tail.join("\n"),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Its HTTP address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its process id (for its CPU time).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends one remote-write body ([`write_body`]).
    pub fn write(&self, body: &[u8]) -> Result<(), OracleError> {
        remote_write(self.addr, body)
    }

    /// Its answer to an API path ([`QueryTimes::instant_path`] or
    /// [`QueryTimes::range_path`]).
    pub fn query(&self, path: &str) -> Result<Answer, OracleError> {
        let (_, body) = http(self.addr, "GET", path, &[], b"")
            .map_err(io(format!("querying prometheus at {}", self.addr)))?;
        Answer::from_api(path, &body)
    }
}

/// Sends one remote-write body to `addr`'s `/api/v1/write`.
pub fn remote_write(addr: SocketAddr, body: &[u8]) -> Result<(), OracleError> {
    let (status, resp) = http(addr, "POST", "/api/v1/write", &WRITE_HEADERS, body)
        .map_err(io(format!("remote write to {addr}")))?;
    if status / 100 != 2 {
        return Err(OracleError::Refused {
            status,
            body: String::from_utf8_lossy(&resp).into_owned(),
        });
    }
    Ok(())
}

// ---------------------------------------------------------------- comparing

/// An answer of a PromQL query, as the API would write it.
#[derive(Debug)]
pub enum Answer {
    /// `errorType: error`.
    Error(String),
    /// Time (s) and value.
    Scalar(f64, f64),
    /// Time (s) and string.
    Str(f64, String),
    /// Labels, time (s) and value of each sample.
    Vector(Vec<(Metric, f64, f64)>),
    /// Labels and (time (s), value) points of each series.
    Matrix(Vec<(Metric, Vec<(f64, f64)>)>),
}

fn value_of(v: &serde_json::Value) -> f64 {
    match v.as_str().unwrap_or("") {
        "NaN" => f64::NAN,
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        s => s.parse().unwrap_or(f64::NAN),
    }
}

fn metric_of(v: &serde_json::Value) -> BTreeMap<String, String> {
    v.as_object()
        .map(|o| {
            o.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_owned()))
                .collect()
        })
        .unwrap_or_default()
}

impl Answer {
    /// The answer in an API's `data` object.
    pub fn from_data(data: &serde_json::Value) -> Self {
        let result = &data["result"];
        match data["resultType"].as_str().unwrap_or("") {
            "scalar" => Self::Scalar(result[0].as_f64().unwrap_or(0.0), value_of(&result[1])),
            "string" => Self::Str(
                result[0].as_f64().unwrap_or(0.0),
                result[1].as_str().unwrap_or("").to_owned(),
            ),
            "vector" => Self::Vector(
                result
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .map(|s| {
                                (
                                    metric_of(&s["metric"]),
                                    s["value"][0].as_f64().unwrap_or(0.0),
                                    value_of(&s["value"][1]),
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
            ),
            "matrix" => Self::Matrix(
                result
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .map(|s| {
                                let pts = s["values"]
                                    .as_array()
                                    .map(|p| {
                                        p.iter()
                                            .map(|x| {
                                                (x[0].as_f64().unwrap_or(0.0), value_of(&x[1]))
                                            })
                                            .collect()
                                    })
                                    .unwrap_or_default();
                                (metric_of(&s["metric"]), pts)
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
            ),
            other => Self::Error(format!("unknown result type {other:?}")),
        }
    }

    /// The answer in the body of an API response to `path`: its data, or
    /// its error.
    pub fn from_api(path: &str, body: &[u8]) -> Result<Self, OracleError> {
        let v: serde_json::Value =
            serde_json::from_slice(body).map_err(|source| OracleError::NotJson {
                path: path.to_owned(),
                source,
                body: String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned(),
            })?;
        Ok(if v["status"] == "success" {
            Self::from_data(&v["data"])
        } else {
            Self::Error(format!(
                "{}: {}",
                v["errorType"].as_str().unwrap_or(""),
                v["error"].as_str().unwrap_or("")
            ))
        })
    }

    /// The answer of the engine, serialized as the API serializes it.
    pub fn from_engine(r: Result<Value, QueryError>) -> Self {
        match r {
            Ok(v) => match serde_json::to_value(&v) {
                Ok(data) => Self::from_data(&data),
                Err(e) => Self::Error(format!("serializing: {e}")),
            },
            Err(e) => Self::Error(format!("{}: {e}", e.error_type())),
        }
    }

    /// At most 700 characters of its debug form, for reports.
    pub fn short(&self) -> String {
        let s = format!("{self:?}");
        if s.len() > 700 {
            let cut = (0..=700)
                .rev()
                .find(|&i| s.is_char_boundary(i))
                .unwrap_or(0);
            format!("{}… ({} chars)", &s[..cut], s.len())
        } else {
            s
        }
    }
}

/// The compliance tester's float comparison: relative 1e-5, NaN equal to
/// NaN (plus an absolute 1e-12 for results that should be zero).
pub fn close(a: f64, b: f64) -> bool {
    if a.is_nan() || b.is_nan() {
        return a.is_nan() && b.is_nan();
    }
    if a == b {
        return true;
    }
    let d = (a - b).abs();
    d <= 1e-12 || d <= 1e-5 * a.abs().min(b.abs())
}

/// Whether the answers agree; `ordered` for queries whose vector order is
/// part of the answer ([`order_sensitive`]).
pub fn agree(a: &Answer, b: &Answer, ordered: bool) -> bool {
    match (a, b) {
        (Answer::Error(_), Answer::Error(_)) => true,
        (Answer::Scalar(t1, v1), Answer::Scalar(t2, v2)) => t1 == t2 && close(*v1, *v2),
        (Answer::Str(t1, s1), Answer::Str(t2, s2)) => t1 == t2 && s1 == s2,
        (Answer::Vector(x), Answer::Vector(y)) => {
            if x.len() != y.len() {
                return false;
            }
            if ordered && !x.iter().zip(y).all(|(p, q)| close(p.2, q.2)) {
                return false;
            }
            let mut x: Vec<_> = x.iter().collect();
            let mut y: Vec<_> = y.iter().collect();
            x.sort_by(|p, q| p.0.cmp(&q.0));
            y.sort_by(|p, q| p.0.cmp(&q.0));
            x.iter()
                .zip(&y)
                .all(|(p, q)| p.0 == q.0 && p.1 == q.1 && close(p.2, q.2))
        }
        (Answer::Matrix(x), Answer::Matrix(y)) => {
            if x.len() != y.len() {
                return false;
            }
            let mut x: Vec<_> = x.iter().collect();
            let mut y: Vec<_> = y.iter().collect();
            x.sort_by(|p, q| p.0.cmp(&q.0));
            y.sort_by(|p, q| p.0.cmp(&q.0));
            x.iter().zip(&y).all(|(p, q)| {
                p.0 == q.0
                    && p.1.len() == q.1.len()
                    && p.1
                        .iter()
                        .zip(&q.1)
                        .all(|(s, t)| s.0 == t.0 && close(s.1, t.1))
            })
        }
        _ => false,
    }
}

/// Whether the order of a query's vector is part of its answer.
pub fn order_sensitive(q: &str) -> bool {
    let q = q.trim_start();
    ["sort(", "sort_desc(", "topk", "bottomk"]
        .iter()
        .any(|p| q.starts_with(p))
}
