//! `trawler bench promql`: trawler's Prometheus API beside Prometheus 2.42
//! and VictoriaMetrics (issue 18).
//!
//! Three servers on loopback ports, each in its own temporary folder and
//! killed at the end (also on error): Prometheus with its remote-write
//! receiver (`trawler_promql::oracle::Prometheus`), VictoriaMetrics
//! (`-retentionPeriod=100y -search.latencyOffset=0
//! -dedup.minScrapeInterval=1ms`) and `trawler run` (this binary, with
//! `--api-nice 0` so its API threads run at the peers' priority).
//!
//! 1. **The compliance data set** (`oracle::dataset`, about 200 series over
//!    3 h of 2024 with stale markers, NaN and ±Inf) goes into all three
//!    through the same remote-write sender, in ten-minute windows.
//! 2. **The corpus** (`tests/compliance/queries.txt` of trawler-promql), each
//!    query as an instant and as a range query at the compliance test's
//!    times, against trawler's HTTP API and Prometheus; a query matches when
//!    both answers agree by the compliance tester's rules. VictoriaMetrics
//!    speaks MetricsQL, so it is only timed on the same requests. Latency is
//!    the wall time of one HTTP/1.0 request on a fresh connection.
//! 3. **Remote-write ingest** of a synthetic load shaped like Prometheus'
//!    own remote write: `--write-series` series × `--write-samples` samples
//!    15 s apart, sent by `--senders` concurrent senders (series sharded
//!    among them, as Prometheus shards), each request carrying one sample
//!    of 2,000 series, in time order. The bodies are encoded before the
//!    clock starts. Samples/s is over wall time; samples/s per core over
//!    the CPU time (utime + stime in /proc) the receiving process used.
//! 4. **`--series` series** (default 1,000,000, five samples each, plus one
//!    counter per hundred) into trawler and VictoriaMetrics, and into
//!    Prometheus if it takes them within 15 minutes; then a few typical
//!    queries, `--repeat` times each, p50/p99 per system. trawler refuses
//!    a selector over more than `max_series` (100,000 by default) with a
//!    422, VictoriaMetrics one over more than `-search.maxUniqueTimeseries`
//!    (300,000): those count as errors and are printed.
//!
//! Ends with `promql: queries=… matched_prometheus=… p99_ms=…
//! prometheus_p99_ms=… vm_p99_ms=… write_samples_per_s_per_core=…
//! vm_write_samples_per_s_per_core=…`.

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use trawler_promql::oracle::{self, agree, order_sensitive, Answer, Prometheus, QueryTimes};
use trawler_promql::remote;

use super::child::{self, Listening, TempDir};
use super::stream::{free_port, program, Killed};

/// Options of the PromQL benchmark.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Skip VictoriaMetrics (its figures then read 0).
    #[arg(long)]
    pub no_vm: bool,
    /// Series of the large data set (default 1,000,000; 20,000 with --quick).
    #[arg(long)]
    pub series: Option<u64>,
    /// Small sizes throughout, for a run of a few minutes.
    #[arg(long)]
    pub quick: bool,
    /// Series of the remote-write load (default 10,000; 1,000 with --quick).
    #[arg(long)]
    pub write_series: Option<u64>,
    /// Samples per series of the remote-write load, 15 s apart (default
    /// 360; 60 with --quick).
    #[arg(long)]
    pub write_samples: Option<u64>,
    /// Concurrent remote-write senders.
    #[arg(long, default_value_t = 4)]
    pub senders: usize,
    /// Timed runs of each query over the large data set.
    #[arg(long, default_value_t = 20)]
    pub repeat: usize,
}

/// Samples per remote-write request, as Prometheus sends them
/// (`max_samples_per_send`).
const BATCH: usize = 2_000;
/// Samples per series of the large data set.
const LARGE_SAMPLES: i64 = 5;
const STEP_MS: i64 = 15_000;
/// How long Prometheus may take over the large data set before it is
/// skipped.
const PROMETHEUS_BUDGET: Duration = Duration::from_secs(900);

/// A server under test.
struct Target {
    name: &'static str,
    addr: SocketAddr,
    /// Whose CPU time is measured.
    pid: u32,
    /// The path that makes written samples visible to queries, if they
    /// are not once the write is answered (VictoriaMetrics buffers them for
    /// up to a second).
    flush: Option<&'static str>,
    /// How long it may take over the large data set before it is skipped.
    large_budget: Duration,
}

impl Target {
    fn settle(&self) -> anyhow::Result<()> {
        if let Some(path) = self.flush {
            oracle::http(self.addr, "GET", path, &[], b"")?;
        }
        Ok(())
    }
}

/// One timed request: status, body, milliseconds.
fn timed_get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, Vec<u8>, f64)> {
    let t = Instant::now();
    let (status, body) = oracle::http(addr, "GET", path, &[], b"")
        .with_context(|| format!("GET {path} at {addr}"))?;
    Ok((status, body, t.elapsed().as_secs_f64() * 1e3))
}

/// The nearest-rank percentile `p` (0..=1) of sorted values.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// p50 and p99 of unsorted values.
fn p50_p99(mut v: Vec<f64>) -> (f64, f64) {
    v.sort_by(f64::total_cmp);
    (percentile(&v, 0.5), percentile(&v, 0.99))
}

/// Runs the benchmark and prints its figures.
pub fn run(args: Args) -> anyhow::Result<()> {
    let series = args
        .series
        .unwrap_or(if args.quick { 20_000 } else { 1_000_000 });
    let write_series = args
        .write_series
        .unwrap_or(if args.quick { 1_000 } else { 10_000 });
    let write_samples = args
        .write_samples
        .unwrap_or(if args.quick { 60 } else { 360 });
    let repeat = if args.quick {
        args.repeat.min(5)
    } else {
        args.repeat
    }
    .max(1);
    let senders = args.senders.max(1);
    let prometheus_bin = program("prometheus")?;
    let vm_bin = if args.no_vm {
        None
    } else {
        Some(program("victoria-metrics")?)
    };
    println!(
        "promql benchmark: {} cores; corpus of {} queries; remote write of {write_series} series × {write_samples} samples by {} senders; {series} series for the large queries",
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        oracle::corpus().len(),
        senders,
    );

    // Every server lives until the end of this function, whatever fails.
    let prometheus = Prometheus::start(&prometheus_bin)?;
    let vm_dir = TempDir::new("promql-vm");
    let vm = match &vm_bin {
        Some(bin) => Some(start_vm(bin, &vm_dir)?),
        None => None,
    };
    let trawler_dir = TempDir::new("promql-trawler");
    let trawler = start_trawler(&trawler_dir)?;

    let trawler_t = Target {
        name: "trawler",
        addr: trawler.addr,
        pid: trawler.pid(),
        flush: None,
        large_budget: Duration::MAX,
    };
    let prometheus_t = Target {
        name: "prometheus",
        addr: prometheus.addr(),
        pid: prometheus.pid(),
        flush: None,
        large_budget: PROMETHEUS_BUDGET,
    };
    let vm_t = vm.as_ref().map(|(vm, addr)| Target {
        name: "victoria-metrics",
        addr: *addr,
        pid: vm.0.id(),
        flush: Some("/internal/force_flush"),
        large_budget: Duration::MAX,
    });
    let targets: Vec<&Target> = [Some(&trawler_t), Some(&prometheus_t), vm_t.as_ref()]
        .into_iter()
        .flatten()
        .collect();

    println!("\n1. the compliance data set through remote write");
    let data = oracle::dataset();
    let bodies = oracle::write_windows(&data);
    let samples: usize = data.iter().map(|(_, pts)| pts.len()).sum();
    for t in &targets {
        let r = send(t, std::slice::from_ref(&bodies))?;
        println!(
            "  {:<16} {} series, {samples} samples in {} requests: {:.2} s, {:.2} CPU s",
            t.name,
            data.len(),
            bodies.len(),
            r.wall_s,
            r.cpu_s
        );
    }

    println!("\n2. the corpus against trawler's API and Prometheus (instant and range queries)");
    let corpus = run_corpus(&trawler_t, &prometheus_t)?;
    let vm_latency = match &vm_t {
        Some(t) => Some(corpus_latency(t)?),
        None => None,
    };
    let (p50, p99) = p50_p99(corpus.trawler_ms.clone());
    let (prom_p50, prom_p99) = p50_p99(corpus.prometheus_ms.clone());
    let (vm_p50, vm_p99) = vm_latency.clone().map_or((0.0, 0.0), p50_p99);
    println!(
        "  matched Prometheus: {} of {} queries ({} differ, {} of them listed in known_differences.txt as the engine's own)",
        corpus.matched,
        corpus.queries,
        corpus.queries - corpus.matched,
        corpus.known
    );
    for d in corpus.differing.iter().take(20) {
        print!("{d}");
    }
    if corpus.differing.len() > 20 {
        println!("  … and {} more", corpus.differing.len() - 20);
    }
    println!(
        "  latency of {} requests each, ms:   p50      p99",
        corpus.trawler_ms.len()
    );
    println!("    trawler            {p50:>8.2} {p99:>8.2}");
    println!("    prometheus         {prom_p50:>8.2} {prom_p99:>8.2}");
    if vm_latency.is_some() {
        println!("    victoria-metrics   {vm_p50:>8.2} {vm_p99:>8.2}   (MetricsQL: answers not compared)");
    }

    println!(
        "\n3. remote-write ingest: {write_series} series × {write_samples} samples, {BATCH} samples per request, {} senders",
        senders
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as i64;
    let now = now - now.rem_euclid(STEP_MS);
    let write_start = now - 3 * 3_600_000;
    let load = write_load(write_series, write_samples, write_start, senders);
    let load_samples = write_series * write_samples;
    let mut per_core = std::collections::HashMap::new();
    for t in &targets {
        let r = send(t, &load)?;
        println!(
            "  {:<16} {:>10.0} samples/s, {:>10.0} samples/s per core ({:.1} s, {:.1} CPU s)",
            t.name,
            load_samples as f64 / r.wall_s,
            load_samples as f64 / r.cpu_s.max(0.01),
            r.wall_s,
            r.cpu_s
        );
        per_core.insert(t.name, load_samples as f64 / r.cpu_s.max(0.01));
    }
    drop(load);

    println!(
        "\n4. {series} series × {LARGE_SAMPLES} samples (+ {} counters), typical queries {repeat} times each",
        series.div_ceil(100)
    );
    large(&targets, series, now, repeat, senders)?;

    println!(
        "promql: queries={} matched_prometheus={} p99_ms={p99:.2} prometheus_p99_ms={prom_p99:.2} vm_p99_ms={vm_p99:.2} write_samples_per_s_per_core={:.0} vm_write_samples_per_s_per_core={:.0}",
        corpus.queries,
        corpus.matched,
        per_core.get("trawler").copied().unwrap_or(0.0),
        per_core.get("victoria-metrics").copied().unwrap_or(0.0),
    );
    drop(trawler);
    drop(vm);
    drop(prometheus);
    Ok(())
}

// ------------------------------------------------------------------ servers

fn start_trawler(dir: &TempDir) -> anyhow::Result<Listening> {
    std::fs::create_dir_all(&dir.0)?;
    let mut cmd = child::this_binary()?;
    cmd.args([
        "run",
        "--listen",
        "127.0.0.1:0",
        "--ids",
        "1000000..1000010",
    ])
    .args(["--api-nice", "0", "--retention", "36500d", "--data"])
    .arg(dir.0.join("data"))
    .env("RUST_LOG", "warn")
    .stdin(Stdio::null())
    .stderr(std::fs::File::create(dir.0.join("trawler.log"))?);
    Listening::start(cmd, "trawler run")
}

fn start_vm(bin: &std::path::Path, dir: &TempDir) -> anyhow::Result<(Killed, SocketAddr)> {
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    let child = Command::new(bin)
        .arg(format!("-storageDataPath={}", dir.0.display()))
        .arg(format!("-httpListenAddr={addr}"))
        .args([
            "-retentionPeriod=100y",
            "-search.latencyOffset=0",
            "-dedup.minScrapeInterval=1ms",
            "-loggerLevel=ERROR",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting victoria-metrics")?;
    let vm = Killed(child);
    let started = Instant::now();
    while !oracle::http(addr, "GET", "/health", &[], b"").is_ok_and(|(s, _)| s == 200) {
        if started.elapsed() > Duration::from_secs(30) {
            bail!("victoria-metrics did not answer /health on {addr} within 30 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok((vm, addr))
}

// ------------------------------------------------------------ remote write

/// What sending took.
struct Sent {
    wall_s: f64,
    cpu_s: f64,
}

/// Sends each sender's bodies in order, the senders concurrently, and
/// measures the receiver until the samples are visible.
fn send(t: &Target, senders: &[Vec<Vec<u8>>]) -> anyhow::Result<Sent> {
    send_within(t, senders, Duration::MAX)?.context("no time budget to exceed")
}

/// [`send`], giving up (`None`) once `budget` has passed.
fn send_within(
    t: &Target,
    senders: &[Vec<Vec<u8>>],
    budget: Duration,
) -> anyhow::Result<Option<Sent>> {
    let cpu = child::cpu_seconds(t.pid);
    let wall = Instant::now();
    let over = AtomicBool::new(false);
    std::thread::scope(|s| {
        let handles: Vec<_> = senders
            .iter()
            .map(|bodies| {
                let over = &over;
                s.spawn(move || -> anyhow::Result<()> {
                    for body in bodies {
                        if wall.elapsed() > budget {
                            over.store(true, Ordering::Relaxed);
                            return Ok(());
                        }
                        oracle::remote_write(t.addr, body)
                            .with_context(|| format!("remote write to {}", t.name))?;
                    }
                    Ok(())
                })
            })
            .collect();
        handles
            .into_iter()
            .try_for_each(|h| h.join().expect("sender thread"))
    })?;
    if over.load(Ordering::Relaxed) {
        return Ok(None);
    }
    t.settle()?;
    Ok(Some(Sent {
        wall_s: wall.elapsed().as_secs_f64(),
        cpu_s: child::cpu_seconds(t.pid) - cpu,
    }))
}

/// The remote-write load: for each sender, its requests in time order
/// (sender `s` owns the series `n` with `n % senders == s`).
fn write_load(series: u64, samples: u64, start: i64, senders: usize) -> Vec<Vec<Vec<u8>>> {
    let labels: Vec<Vec<(String, String)>> = (0..series)
        .map(|n| {
            vec![
                ("__name__".to_owned(), "bench_write".to_owned()),
                ("instance".to_owned(), format!("host-{}:9100", n / 10)),
                ("job".to_owned(), "write".to_owned()),
                ("cpu".to_owned(), (n % 10).to_string()),
            ]
        })
        .collect();
    (0..senders)
        .map(|s| {
            let mine: Vec<u64> = (s as u64..series).step_by(senders).collect();
            let mut bodies = Vec::new();
            for k in 0..samples as i64 {
                let ts = start + k * STEP_MS;
                for chunk in mine.chunks(BATCH) {
                    let req = remote::WriteRequest {
                        timeseries: chunk
                            .iter()
                            .map(|&n| remote::TimeSeries {
                                labels: labels[n as usize].clone(),
                                samples: vec![(ts, ((n as i64 * 7 + k) % 1_000) as f64)],
                            })
                            .collect(),
                        metadata: Vec::new(),
                    };
                    bodies.push(remote::compress(&remote::encode(&req)));
                }
            }
            bodies
        })
        .collect()
}

// ------------------------------------------------------------------ corpus

/// What the corpus run found.
struct Corpus {
    queries: usize,
    matched: usize,
    /// Differing queries listed in known_differences.txt.
    known: usize,
    /// Reports of the differing queries, known ones last.
    differing: Vec<String>,
    trawler_ms: Vec<f64>,
    prometheus_ms: Vec<f64>,
}

/// trawler's answer to `path`, or why it is not one.
fn trawler_answer(addr: SocketAddr, path: &str) -> anyhow::Result<(Answer, f64)> {
    let (status, body, ms) = timed_get(addr, path)?;
    let answer = match Answer::from_api(path, &body) {
        Ok(Answer::Error(e)) if status == 200 => {
            Answer::Error(format!("HTTP 200 with an error: {e}"))
        }
        Ok(a) => a,
        // Not the API's JSON: a mismatch whatever Prometheus said.
        Err(e) => Answer::Str(f64::NAN, format!("HTTP {status}: {e}")),
    };
    Ok((answer, ms))
}

fn run_corpus(trawler: &Target, prometheus: &Target) -> anyhow::Result<Corpus> {
    let queries = oracle::corpus();
    let known = oracle::known_differences();
    let mut c = Corpus {
        queries: queries.len(),
        matched: 0,
        known: 0,
        differing: Vec::new(),
        trawler_ms: Vec::with_capacity(2 * queries.len()),
        prometheus_ms: Vec::with_capacity(2 * queries.len()),
    };
    let mut known_reports = Vec::new();
    let progress = crate::progress::spinner("the corpus");
    for (i, q) in queries.iter().enumerate() {
        progress.set_message(format!("the corpus: query {} of {}", i + 1, queries.len()));
        let times = QueryTimes::of(i);
        let mut ask = |path: &str| -> anyhow::Result<(Answer, Answer)> {
            let (_, p, ms) = timed_get(prometheus.addr, path)?;
            c.prometheus_ms.push(ms);
            let p = Answer::from_api(path, &p)?;
            let (t, ms) = trawler_answer(trawler.addr, path)?;
            c.trawler_ms.push(ms);
            Ok((p, t))
        };
        let (p_inst, t_inst) = ask(&times.instant_path(q))?;
        let (p_range, t_range) = ask(&times.range_path(q))?;
        let ok_inst = agree(&p_inst, &t_inst, order_sensitive(q));
        let ok_range = agree(&p_range, &t_range, false);
        if ok_inst && ok_range {
            c.matched += 1;
            continue;
        }
        let mut d = format!("  differs: {q}\n");
        if !ok_inst {
            d.push_str(&format!(
                "    instant @{}:\n      prometheus: {}\n      trawler:    {}\n",
                times.instant,
                p_inst.short(),
                t_inst.short()
            ));
        }
        if !ok_range {
            d.push_str(&format!(
                "    range {}..{} step {}:\n      prometheus: {}\n      trawler:    {}\n",
                times.start,
                times.end,
                times.step,
                p_range.short(),
                t_range.short()
            ));
        }
        if let Some(why) = known.get(q) {
            c.known += 1;
            known_reports.push(format!("{d}    (known difference: {why})\n"));
        } else {
            c.differing.push(d);
        }
    }
    progress.finish_and_clear();
    c.differing.extend(known_reports);
    Ok(c)
}

/// The corpus' requests against `t`, timed (answers not compared).
fn corpus_latency(t: &Target) -> anyhow::Result<Vec<f64>> {
    let queries = oracle::corpus();
    let mut ms = Vec::with_capacity(2 * queries.len());
    let progress = crate::progress::spinner("the corpus");
    for (i, q) in queries.iter().enumerate() {
        progress.set_message(format!(
            "the corpus on {}: query {} of {}",
            t.name,
            i + 1,
            queries.len()
        ));
        let times = QueryTimes::of(i);
        for path in [times.instant_path(q), times.range_path(q)] {
            ms.push(timed_get(t.addr, &path)?.2);
        }
    }
    progress.finish_and_clear();
    Ok(ms)
}

// ------------------------------------------------------------- large set

/// The large data set as remote-write bodies of about [`BATCH`] samples,
/// in `senders` interleaved shares: `bench_gauge` (`instance` = n / 1000,
/// `shard` = n % 1000) and one `bench_requests_total` per hundred series,
/// [`LARGE_SAMPLES`] samples each ending at `end`.
fn large_load(series: u64, end: i64, senders: usize) -> Vec<Vec<Vec<u8>>> {
    let per_request = (BATCH as i64 / LARGE_SAMPLES) as u64;
    let mut out = vec![Vec::new(); senders];
    let times: Vec<i64> = (0..LARGE_SAMPLES)
        .map(|k| end - (LARGE_SAMPLES - 1 - k) * STEP_MS)
        .collect();
    let mut n = 0;
    let mut request = 0;
    while n < series {
        let hi = (n + per_request).min(series);
        let mut timeseries = Vec::with_capacity((hi - n) as usize + 4);
        for m in n..hi {
            let (instance, shard) = (format!("i{}", m / 1_000), (m % 1_000).to_string());
            timeseries.push(remote::TimeSeries {
                labels: vec![
                    ("__name__".to_owned(), "bench_gauge".to_owned()),
                    ("instance".to_owned(), instance.clone()),
                    ("job".to_owned(), "bench".to_owned()),
                    ("shard".to_owned(), shard.clone()),
                ],
                samples: times
                    .iter()
                    .enumerate()
                    .map(|(k, &t)| (t, ((m * 31 + k as u64 * 7) % 1_000) as f64))
                    .collect(),
            });
            if m % 100 == 0 {
                timeseries.push(remote::TimeSeries {
                    labels: vec![
                        ("__name__".to_owned(), "bench_requests_total".to_owned()),
                        ("instance".to_owned(), instance),
                        ("job".to_owned(), "bench".to_owned()),
                        ("shard".to_owned(), shard),
                    ],
                    samples: times
                        .iter()
                        .enumerate()
                        .map(|(k, &t)| (t, (m + 1 + k as u64 * (m % 7 + 1) * 15) as f64))
                        .collect(),
                });
            }
        }
        let req = remote::WriteRequest {
            timeseries,
            metadata: Vec::new(),
        };
        out[request % senders].push(remote::compress(&remote::encode(&req)));
        request += 1;
        n = hi;
    }
    out
}

/// The queries over the large data set, with whether they are range
/// queries.
const LARGE_QUERIES: [(&str, bool); 8] = [
    ("sum(bench_gauge)", false),
    ("count by (instance) (bench_gauge)", false),
    ("topk(5, bench_gauge)", false),
    ("bench_gauge{shard=\"7\"}", false),
    ("avg(bench_gauge{instance=\"i0\"})", false),
    ("count(bench_gauge{shard=~\"1.\"})", false),
    ("sum by (instance) (rate(bench_requests_total[1m]))", false),
    ("sum(rate(bench_requests_total[1m]))", true),
];

fn large(
    targets: &[&Target],
    series: u64,
    now: i64,
    repeat: usize,
    senders: usize,
) -> anyhow::Result<()> {
    // Ends a step before `now`: the remote-write load ended hours before.
    let end = now - STEP_MS;
    let samples = series * LARGE_SAMPLES as u64 + series.div_ceil(100) * LARGE_SAMPLES as u64;
    let load = large_load(series, end, senders);
    let requests: usize = load.iter().map(Vec::len).sum();
    let mut loaded = Vec::new();
    for t in targets {
        let started = Instant::now();
        let r = send_within(t, &load, t.large_budget);
        match r {
            Ok(Some(r)) => {
                println!(
                    "  {:<16} loaded {samples} samples in {requests} requests: {:.1} s, {:.1} CPU s, RSS {:.0} MB",
                    t.name,
                    r.wall_s,
                    r.cpu_s,
                    child::rss_mb(t.pid)
                );
                loaded.push(t);
            }
            Ok(None) => println!(
                "  {:<16} skipped: loading took more than {} s",
                t.name,
                t.large_budget.as_secs()
            ),
            Err(e) => println!(
                "  {:<16} skipped: loading failed after {:.1} s: {e:#}",
                t.name,
                started.elapsed().as_secs_f64()
            ),
        }
    }
    drop(load);
    let time_s = (end + 1_000) as f64 / 1e3;
    println!(
        "  {:<60} {:<16} {:>8} {:>8} {:>7} {:>7}",
        "query", "system", "p50_ms", "p99_ms", "errors", "result"
    );
    for (q, range) in LARGE_QUERIES {
        let path = if range {
            format!(
                "/api/v1/query_range?query={}&start={}&end={time_s}&step=15",
                oracle::urlencode(q),
                time_s - 60.0
            )
        } else {
            format!("/api/v1/query?query={}&time={time_s}", oracle::urlencode(q))
        };
        for t in &loaded {
            let mut ms = Vec::with_capacity(repeat);
            let mut errors = Vec::new();
            let mut size = "-".to_owned();
            for _ in 0..repeat {
                let (status, body, took) = timed_get(t.addr, &path)?;
                ms.push(took);
                match Answer::from_api(&path, &body) {
                    Ok(Answer::Error(e)) => errors.push(format!("HTTP {status}: {e}")),
                    Ok(a) => size = result_size(&a),
                    Err(e) => errors.push(format!("HTTP {status}: {e}")),
                }
            }
            let (p50, p99) = p50_p99(ms);
            let query = if range {
                format!("{q} (range 60 s, step 15 s)")
            } else {
                q.to_owned()
            };
            println!(
                "  {query:<60} {:<16} {p50:>8.2} {p99:>8.2} {:>7} {size:>7}",
                t.name,
                errors.len()
            );
            if let Some(e) = errors.first() {
                let cut = e.char_indices().nth(200).map_or(e.len(), |(i, _)| i);
                println!("      error: {}", &e[..cut]);
            }
        }
    }
    Ok(())
}

/// How many series an answer holds, e.g. `5 s`.
fn result_size(a: &Answer) -> String {
    match a {
        Answer::Vector(v) => format!("{} s", v.len()),
        Answer::Matrix(m) => format!("{} s", m.len()),
        Answer::Scalar(..) => "scalar".to_owned(),
        Answer::Str(..) => "string".to_owned(),
        Answer::Error(_) => "error".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decoded(body: &[u8]) -> remote::WriteRequest {
        remote::decode_body(body, remote::WriteLimits::default()).expect("a valid body")
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.5), 50.0);
        assert_eq!(percentile(&v, 0.99), 99.0);
        assert_eq!(percentile(&v[..1], 0.99), 1.0);
        assert_eq!(percentile(&[], 0.5), 0.0);
    }

    #[test]
    fn the_write_load_sends_every_sample_once_in_time_order_per_series() {
        let load = write_load(5_000, 3, 1_000, 2);
        let mut last: std::collections::HashMap<Vec<(String, String)>, i64> = Default::default();
        let mut samples = 0;
        for sender in &load {
            for body in sender {
                let req = decoded(body);
                assert!(req.samples() <= BATCH);
                for s in req.timeseries {
                    for (t, _) in s.samples {
                        samples += 1;
                        let prev = last.insert(s.labels.clone(), t);
                        assert!(prev.is_none_or(|p| p < t));
                    }
                }
            }
        }
        assert_eq!(samples, 15_000);
        assert_eq!(last.len(), 5_000);
    }

    #[test]
    fn the_large_set_has_a_counter_per_hundred_series() {
        let load = large_load(1_000, 100_000, 3);
        let reqs: Vec<_> = load.iter().flatten().map(|b| decoded(b)).collect();
        let series: usize = reqs.iter().map(|r| r.timeseries.len()).sum();
        let samples: usize = reqs.iter().map(remote::WriteRequest::samples).sum();
        assert_eq!(series, 1_010);
        assert_eq!(samples, 1_010 * LARGE_SAMPLES as usize);
        assert!(reqs
            .iter()
            .all(|r| r.samples() <= BATCH + 4 * LARGE_SAMPLES as usize));
    }
}
