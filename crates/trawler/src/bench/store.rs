//! `trawler bench store`: bytes per sample, ingest rate and read latency of
//! trawler's store, side by side with VictoriaMetrics on the same data.
//!
//! Three data sets, each of N entities × two series, one point per series
//! per minute:
//!
//! * `mockstagram` and `realistic`: the flagship data (followerCount and
//!   followingCount of N accounts, at a fixed phase per account, stamped
//!   with the slot time), from the simulator's own generators for each
//!   dynamics;
//! * `node`: host metrics shaped like node_exporter's (N/8 hosts × 8 pairs
//!   of counters and gauges, timestamps with scrape jitter), from the
//!   documented model in `trawler_sim::hosts`, which nobody tuned the store
//!   for.
//!
//! Each is written to a fresh store (appends of 10,000 samples from
//! one writer thread, background flushes and compactions on), compacted,
//! and measured on disk. The same series are imported into a
//! VictoriaMetrics started here on a loopback port (`/api/v1/import`, then
//! `/internal/force_flush` and `/internal/force_merge`), whose data folder is
//! measured once its merges are done.
//!
//! * The entropy bound is the empirical entropy of the first differences of
//!   each metric (one histogram per metric over all entities), averaged over
//!   the metrics, plus that of the timestamps' first differences (zero for
//!   the regular simulator data). For mockstagram dynamics the series are
//!   random walks, so this is their true entropy rate (σ = 10,000 → 15.3
//!   bits, σ = 100 → 8.7 bits). For realistic dynamics and host metrics it
//!   bounds coders that see one step at a time, and a coder that models the
//!   trend (chord residuals) can go below it. For wide counters (network
//!   bytes, context switches) the histogram's estimate is biased low (it
//!   cannot exceed log2 of the samples of one metric), so there the bound
//!   is optimistic.
//! * Ingest is measured in CPU time, not wall time: the process's CPU time
//!   minus the generator thread's, so it covers appends, WAL writes, head
//!   flushes and compactions, on however many cores they ran.
//! * The 30-day read uses a second store holding a few accounts over 30
//!   days (43,200 points per series), compacted into day blocks; reads go
//!   through the same index path as in a store of a million series (a fence
//!   lookup in memory, one index page, one data read per block).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use trawler_sim::hosts::{Hosts, SERIES};
use trawler_sim::model::{mockstagram_initial, mockstagram_step, Dynamics, Realistic};
use trawler_store::{Resolution, Sample, SeriesId, SeriesKey, StoreConfig, Value, ValueKind};

/// Options of the store benchmark.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Accounts, or host series pairs of the node data set (two series each).
    #[arg(long, default_value_t = 100_000)]
    pub accounts: u64,
    /// Hours of one-minute data.
    #[arg(long, default_value_t = 24)]
    pub hours: u64,
    /// Which data sets: mockstagram, realistic, node, both (the two
    /// simulator dynamics) or all.
    #[arg(long, default_value = "all")]
    pub dynamics: String,
    /// Accounts in the 30-day read store.
    #[arg(long, default_value_t = 4)]
    pub read_accounts: u64,
    /// Timed 30-day reads.
    #[arg(long, default_value_t = 2_000)]
    pub reads: usize,
    /// Skip VictoriaMetrics (its column then reads 0).
    #[arg(long)]
    pub no_vm: bool,
    /// Seed of the generators.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
}

const FIRST_PK: u64 = 1_000_000;
const MINUTE_MS: i64 = 60_000;
const BATCH: usize = 10_000;
const METRICS: [&str; 2] = ["followerCount", "followingCount"];

/// One data set of the benchmark.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DataSet {
    /// Mockstagram accounts under one of the simulator's dynamics.
    Accounts(Dynamics),
    /// node_exporter-shaped host metrics (`trawler_sim::hosts`).
    Node,
}

impl std::fmt::Display for DataSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Accounts(d) => d.fmt(f),
            Self::Node => f.write_str("node"),
        }
    }
}

impl DataSet {
    fn parse(s: &str) -> anyhow::Result<Vec<Self>> {
        let sim = [Dynamics::Mockstagram, Dynamics::Realistic].map(Self::Accounts);
        Ok(match s {
            "all" => vec![sim[0], sim[1], Self::Node],
            "both" => sim.to_vec(),
            "node" => vec![Self::Node],
            d => vec![Self::Accounts(
                d.parse()
                    .map_err(|e| anyhow::anyhow!("{e}, node, both or all"))?,
            )],
        })
    }

    fn job(self) -> &'static str {
        match self {
            Self::Accounts(_) => "influencers",
            Self::Node => "node",
        }
    }

    /// Kinds of series (one entropy histogram each).
    fn kinds(self) -> usize {
        match self {
            Self::Accounts(_) => 2,
            Self::Node => 2 * SERIES.len(),
        }
    }

    /// The name of series kind `k`.
    fn metric(self, k: usize) -> &'static str {
        match self {
            Self::Accounts(_) => METRICS[k],
            Self::Node => SERIES[k / 2][k % 2],
        }
    }

    /// The kinds of the two series of entity slot `i`.
    fn kinds_of(self, i: u64) -> [usize; 2] {
        match self {
            Self::Accounts(_) => [0, 1],
            Self::Node => {
                let pair = (i % SERIES.len() as u64) as usize;
                [2 * pair, 2 * pair + 1]
            }
        }
    }

    /// The store's entity and the VictoriaMetrics label of slot `i`.
    fn entity(self, i: u64) -> (u64, String) {
        match self {
            Self::Accounts(_) => (FIRST_PK + i, format!("\"pk\":\"{}\"", FIRST_PK + i)),
            Self::Node => {
                let host = i / SERIES.len() as u64;
                (host, format!("\"instance\":\"host-{host}:9100\""))
            }
        }
    }
}

/// The two series keys of every entity slot, in slot order.
fn keys(data: DataSet, slots: u64) -> Vec<(SeriesKey<'static>, ValueKind)> {
    (0..slots)
        .flat_map(|i| {
            data.kinds_of(i).map(|k| {
                (
                    SeriesKey {
                        job: data.job(),
                        entity: data.entity(i).0,
                        metric: data.metric(k),
                    },
                    ValueKind::Int,
                )
            })
        })
        .collect()
}

/// Figures of one dynamics.
#[derive(Debug, Default)]
struct Figures {
    samples: u64,
    bytes: u64,
    block_bytes: u64,
    blocks: u64,
    vm_bytes: u64,
    vm_rows: u64,
    /// Entropy of the first differences of each kind of series, then of
    /// the timestamps.
    entropy_bits: Vec<f64>,
    /// Names of the kinds.
    kinds: Vec<&'static str>,
    store_cpu_s: f64,
    compact_cpu_s: f64,
    wall_s: f64,
    peak_memory: u64,
    read_p50_ms: f64,
    read_p99_ms: f64,
    rollup_p50_ms: f64,
    rollup_p99_ms: f64,
}

/// Runs the benchmark and prints its figures.
pub fn run(args: Args) -> anyhow::Result<()> {
    let dynamics = DataSet::parse(&args.dynamics)?;
    if !args.no_vm {
        let _ = Command::new("scripts/deps")
            .arg("victoria-metrics")
            .status();
        if which("victoria-metrics").is_none() {
            bail!("victoria-metrics is not installed and scripts/deps could not install it (run from the repository root as root, or pass --no-vm)");
        }
    }
    let work = std::env::temp_dir().join(format!("trawler-bench-store-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let minutes = args.hours * 60;
    println!(
        "store benchmark: {} accounts (or host series pairs) × {} h × 2 metrics = {} samples per data set, {} cores",
        args.accounts,
        args.hours,
        args.accounts * minutes * 2,
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    // The data ends at the last UTC midnight (VictoriaMetrics refuses
    // samples far in the past), so whole days land in whole day blocks, as
    // they do in a store that has been running for a while.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as i64;
    let epoch = now.div_euclid(86_400_000) * 86_400_000 - minutes as i64 * MINUTE_MS;
    let mut lines = Vec::new();
    for d in dynamics {
        println!("\ndynamics={d}");
        let gen = Generator {
            data: d,
            seed: args.seed,
            epoch,
            accounts: args.accounts,
            minutes,
        };
        let mut f = ingest(&gen, &work.join(format!("{d}")))?;
        if !args.no_vm {
            let (bytes, rows) = victoria_metrics(&gen, &work.join(format!("vm-{d}")))?;
            f.vm_bytes = bytes;
            f.vm_rows = rows;
        }
        read_latency(&args, d, &work.join(format!("read-{d}")), &mut f)?;
        print_figures(&f, args.accounts);
        lines.push(format!(
            "store: dynamics={d} bytes_per_sample={:.3} vm_bytes_per_sample={:.3} entropy_bound={:.3} ingest_per_core={:.0} read30d_p99_ms={:.3}",
            f.bytes as f64 / f.samples as f64,
            f.vm_bytes as f64 / f.samples as f64,
            entropy_bytes(&f),
            f.samples as f64 / (f.store_cpu_s + f.compact_cpu_s),
            f.read_p99_ms
        ));
    }
    println!();
    for l in lines {
        println!("{l}");
    }
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}

/// Bytes per sample: the mean over the kinds of series (each holds as many
/// samples) of their values' entropy, plus the timestamps'.
fn entropy_bytes(f: &Figures) -> f64 {
    let Some((ts, kinds)) = f.entropy_bits.split_last() else {
        return 0.0;
    };
    (kinds.iter().sum::<f64>() / kinds.len() as f64 + ts) / 8.0
}

fn print_figures(f: &Figures, accounts: u64) {
    let bps = f.bytes as f64 / f.samples as f64;
    println!(
        "  trawler:          {bps:.3} B/sample on disk after compaction ({:.1} MB in {} blocks + WAL/catalog {:.1} MB)",
        f.block_bytes as f64 / 1e6,
        f.blocks,
        (f.bytes - f.block_bytes) as f64 / 1e6
    );
    if f.vm_bytes > 0 {
        let vm = f.vm_bytes as f64 / f.samples as f64;
        println!(
            "  VictoriaMetrics:  {vm:.3} B/sample ({:.1} MB data folder, {} rows stored) → trawler/VM = {:.2}×",
            f.vm_bytes as f64 / 1e6,
            f.vm_rows,
            bps / vm
        );
    }
    let parts: Vec<String> = f
        .kinds
        .iter()
        .chain(&["timestamps"])
        .zip(&f.entropy_bits)
        .map(|(k, b)| format!("{k} {b:.2} bits"))
        .collect();
    println!(
        "  entropy bound:    {:.3} B/sample (first differences: {}) → trawler/bound = {:.2}×",
        entropy_bytes(f),
        parts.join(", "),
        bps / entropy_bytes(f)
    );
    println!(
        "  ingest:           {:.0} samples/s per core ({} samples; CPU {:.1} s appends+flushes, {:.1} s final compaction; wall {:.1} s); {:.0} samples/s per core without compaction",
        f.samples as f64 / (f.store_cpu_s + f.compact_cpu_s),
        f.samples,
        f.store_cpu_s,
        f.compact_cpu_s,
        f.wall_s,
        f.samples as f64 / f.store_cpu_s
    );
    println!(
        "  memory:           peak {:.0} MB reported by the store at {accounts} accounts (the head fills to head_max_bytes, 512 MiB, before each flush; the per-series tables add about 100 B per series)",
        f.peak_memory as f64 / 1e6,
    );
    println!(
        "  read 30 days:     raw 43,200 points p50 {:.3} ms p99 {:.3} ms; hourly rollups (720) p50 {:.3} ms p99 {:.3} ms",
        f.read_p50_ms, f.read_p99_ms, f.rollup_p50_ms, f.rollup_p99_ms
    );
}

/// The data of one data set, regenerated identically on demand. Entity
/// slot `i` (0-based) is an account, or a pair of series of a host.
struct Generator {
    data: DataSet,
    seed: u64,
    epoch: i64,
    accounts: u64,
    minutes: u64,
}

impl Generator {
    /// Each account is polled at a fixed phase within the minute; a host is
    /// scraped at its phase plus timer jitter.
    fn ts(&self, i: u64, minute: u64) -> i64 {
        let base = self.epoch + minute as i64 * MINUTE_MS;
        match self.data {
            DataSet::Accounts(_) => {
                let pk = FIRST_PK + i;
                base + (pk.wrapping_mul(7_919) % 60_000) as i64
            }
            DataSet::Node => {
                base + Hosts::new(self.seed).offset_ms(i / SERIES.len() as u64, minute)
            }
        }
    }

    /// Slot `i`'s two values at minute `m`, given its values at `m - 1`.
    fn next(&self, i: u64, minute: u64, prev: Option<[u64; 2]>) -> [u64; 2] {
        let pk = FIRST_PK + i;
        let pair = |c: trawler_sim::Counts| [c.followers, c.following];
        match self.data {
            DataSet::Accounts(Dynamics::Mockstagram) => {
                let prev = prev.map_or_else(
                    || mockstagram_initial(self.seed, pk),
                    |[followers, following]| trawler_sim::Counts {
                        followers,
                        following,
                    },
                );
                pair(mockstagram_step(self.seed, pk, minute, prev))
            }
            DataSet::Accounts(Dynamics::Realistic) => {
                pair(Realistic::new(self.seed, self.epoch).at(pk, self.ts(i, minute)))
            }
            DataSet::Node => {
                let n = SERIES.len() as u64;
                Hosts::new(self.seed).next(i / n, (i % n) as usize, minute, prev)
            }
        }
    }
}

/// Histogram of first differences; small ones in a flat array.
struct Histogram {
    flat: Vec<u64>,
    other: std::collections::HashMap<i64, u64>,
}

const FLAT: i64 = 1 << 18;

impl Histogram {
    fn new() -> Self {
        Self {
            flat: vec![0; 2 * FLAT as usize],
            other: Default::default(),
        }
    }
    fn add(&mut self, d: i64) {
        if d.abs() < FLAT {
            self.flat[(d + FLAT) as usize] += 1;
        } else {
            *self.other.entry(d).or_default() += 1;
        }
    }
    fn entropy_bits(&self) -> f64 {
        let counts = self
            .flat
            .iter()
            .chain(self.other.values())
            .copied()
            .filter(|&c| c > 0);
        let total: u64 = counts.clone().sum();
        -counts
            .map(|c| c as f64 / total as f64)
            .map(|p| p * p.log2())
            .sum::<f64>()
    }
}

fn cpu_seconds(stat: &str) -> anyhow::Result<f64> {
    let text = std::fs::read_to_string(stat).with_context(|| format!("reading {stat}"))?;
    let fields: Vec<&str> = text[text.rfind(')').context("stat format")? + 2..]
        .split_whitespace()
        .collect();
    // utime and stime, in clock ticks of 1/100 s on Linux.
    Ok((fields[11].parse::<u64>()? + fields[12].parse::<u64>()?) as f64 / 100.0)
}

fn ingest(gen: &Generator, dir: &Path) -> anyhow::Result<Figures> {
    let _ = std::fs::remove_dir_all(dir);
    let mut config = StoreConfig::new(dir);
    // Flushes come from head_max_bytes here: the data arrives far faster
    // than in real time.
    config.flush_interval = Duration::from_secs(3_600);
    let store = config.open()?;
    let ids = store.series_batch(&keys(gen.data, gen.accounts))?;

    let (tx, rx) = mpsc::sync_channel::<Vec<Sample>>(8);
    let cpu_before = cpu_seconds("/proc/self/stat")?;
    let wall = Instant::now();
    let generator = std::thread::scope(|scope| -> anyhow::Result<(f64, Vec<f64>)> {
        let producer = scope.spawn(|| -> anyhow::Result<(f64, Vec<f64>)> {
            // One histogram per kind of series, then one of the timestamps.
            let mut hist: Vec<Histogram> =
                (0..=gen.data.kinds()).map(|_| Histogram::new()).collect();
            let mut state: Vec<Option<([u64; 2], i64)>> = vec![None; gen.accounts as usize];
            let mut batch = Vec::with_capacity(BATCH);
            for minute in 0..gen.minutes {
                for (i, slot) in state.iter_mut().enumerate() {
                    let c = gen.next(i as u64, minute, slot.map(|s| s.0));
                    let ts_ms = gen.ts(i as u64, minute);
                    if let Some((p, pts)) = *slot {
                        for (m, k) in gen.data.kinds_of(i as u64).into_iter().enumerate() {
                            hist[k].add(c[m] as i64 - p[m] as i64);
                        }
                        // Both series of a slot carry the timestamp.
                        hist[gen.data.kinds()].add(ts_ms - pts);
                        hist[gen.data.kinds()].add(ts_ms - pts);
                    }
                    *slot = Some((c, ts_ms));
                    for (m, &v) in c.iter().enumerate() {
                        batch.push(Sample {
                            series: ids[2 * i + m],
                            ts_ms,
                            value: Value::Int(v as i64),
                        });
                    }
                    if batch.len() >= BATCH
                        && tx
                            .send(std::mem::replace(&mut batch, Vec::with_capacity(BATCH)))
                            .is_err()
                    {
                        bail!("the writer stopped");
                    }
                }
            }
            if !batch.is_empty() {
                let _ = tx.send(batch);
            }
            drop(tx);
            Ok((
                cpu_seconds("/proc/thread-self/stat")?,
                hist.iter().map(Histogram::entropy_bits).collect(),
            ))
        });
        let mut peak = 0u64;
        for (n, batch) in rx.iter().enumerate() {
            store.append(&batch)?;
            if n % 100 == 0 {
                peak = peak.max(store.stats().memory_bytes);
            }
        }
        PEAK.with(|p| p.set(peak));
        producer.join().expect("generator thread")
    });
    let (gen_cpu, entropy_bits) = generator?;
    store.flush()?;
    let store_cpu_s = cpu_seconds("/proc/self/stat")? - cpu_before - gen_cpu;
    let wall_s = wall.elapsed().as_secs_f64();
    let before = cpu_seconds("/proc/self/stat")?;
    store.compact()?;
    let compact_cpu_s = cpu_seconds("/proc/self/stat")? - before;
    let stats = store.stats();
    if stats.samples != gen.accounts * gen.minutes * 2 {
        bail!(
            "the store holds {} samples, expected {}",
            stats.samples,
            gen.accounts * gen.minutes * 2
        );
    }
    store.close()?;
    // Measure the folder as a user would, after close.
    let bytes = dir_size(dir);
    Ok(Figures {
        samples: stats.samples,
        bytes,
        block_bytes: stats.block_bytes,
        blocks: stats.blocks,
        entropy_bits,
        kinds: (0..gen.data.kinds()).map(|k| gen.data.metric(k)).collect(),
        store_cpu_s,
        compact_cpu_s,
        wall_s,
        peak_memory: PEAK.with(|p| p.get()),
        ..Figures::default()
    })
}

thread_local! {
    static PEAK: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

fn dir_size(dir: &Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    rd.flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_size(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

fn read_latency(args: &Args, data: DataSet, dir: &Path, f: &mut Figures) -> anyhow::Result<()> {
    let _ = std::fs::remove_dir_all(dir);
    let days = 30;
    let minutes = days * 1_440;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as i64;
    let epoch = (now - minutes as i64 * MINUTE_MS).div_euclid(86_400_000) * 86_400_000;
    let gen = Generator {
        data,
        seed: args.seed,
        epoch,
        accounts: args.read_accounts,
        minutes,
    };
    let mut config = StoreConfig::new(dir);
    config.background = false;
    let store = config.open()?;
    let ids = store.series_batch(&keys(gen.data, gen.accounts))?;
    let mut state = vec![None; gen.accounts as usize];
    for day in 0..days {
        let mut batch = Vec::new();
        for minute in day * 1_440..(day + 1) * 1_440 {
            for (i, slot) in state.iter_mut().enumerate() {
                let c = gen.next(i as u64, minute, *slot);
                *slot = Some(c);
                let ts_ms = gen.ts(i as u64, minute);
                for (m, &v) in c.iter().enumerate() {
                    batch.push(Sample {
                        series: ids[2 * i + m],
                        ts_ms,
                        value: Value::Int(v as i64),
                    });
                }
            }
        }
        store.append(&batch)?;
        store.flush()?;
    }
    store.compact()?;
    let (from, to) = (epoch, epoch + minutes as i64 * MINUTE_MS);
    let time = |f: &dyn Fn(SeriesId) -> anyhow::Result<usize>,
                expect: usize|
     -> anyhow::Result<(f64, f64)> {
        let mut lat = Vec::with_capacity(args.reads);
        for n in 0..args.reads + 10 {
            let id = ids[n % ids.len()];
            let t = Instant::now();
            let got = f(id)?;
            let ms = t.elapsed().as_secs_f64() * 1e3;
            if got != expect {
                bail!("a 30-day read returned {got} items, expected {expect}");
            }
            if n >= 10 {
                lat.push(ms); // the first reads warm the page cache
            }
        }
        lat.sort_by(f64::total_cmp);
        Ok((lat[lat.len() / 2], lat[lat.len() * 99 / 100]))
    };
    (f.read_p50_ms, f.read_p99_ms) =
        time(&|id| Ok(store.range(id, from, to)?.len()), minutes as usize)?;
    (f.rollup_p50_ms, f.rollup_p99_ms) = time(
        &|id| Ok(store.rollups(id, from, to, Resolution::Hour)?.len()),
        days as usize * 24,
    )?;
    store.close()?;
    let _ = std::fs::remove_dir_all(dir);
    Ok(())
}

// ------------------------------------------------------------ VictoriaMetrics

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One HTTP/1.1 request on a fresh connection; returns status and body.
fn http(addr: &str, method: &str, path: &str, body: &[u8]) -> anyhow::Result<(u16, String)> {
    let mut s = TcpStream::connect(addr)
        .with_context(|| format!("connecting to VictoriaMetrics at {addr}"))?;
    write!(s, "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len())?;
    s.write_all(body)?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    let status = resp
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

fn vm_metric(addr: &str, name: &str) -> anyhow::Result<f64> {
    let (_, body) = http(addr, "GET", "/metrics", b"")?;
    Ok(body
        .lines()
        .filter(|l| {
            // A name ending inside a label value ("vm_rows{type=\"storage/")
            // matches by prefix; a metric name must end at its label set.
            l.starts_with(name)
                && (!name.ends_with(char::is_alphanumeric)
                    || matches!(l.as_bytes().get(name.len()), Some(b' ' | b'{')))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum())
}

fn victoria_metrics(gen: &Generator, dir: &Path) -> anyhow::Result<(u64, u64)> {
    let _ = std::fs::remove_dir_all(dir);
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let addr = format!("127.0.0.1:{port}");
    let child = Command::new("victoria-metrics")
        .arg(format!("-storageDataPath={}", dir.display()))
        .arg(format!("-httpListenAddr={addr}"))
        .arg("-retentionPeriod=100y")
        .arg("-loggerLevel=ERROR")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting victoria-metrics")?;
    let mut vm = KillOnDrop(child);
    let stderr = vm.0.stderr.take();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr?).lines().map_while(Result::ok) {
            eprintln!("victoria-metrics: {line}");
        }
        Some(())
    });
    let started = Instant::now();
    while http(&addr, "GET", "/health", b"")
        .map(|r| r.1.trim() != "OK")
        .unwrap_or(true)
    {
        if started.elapsed() > Duration::from_secs(30) {
            bail!("victoria-metrics did not answer /health on {addr} within 30 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let wall = Instant::now();
    let mut body = Vec::with_capacity(16 << 20);
    let send = |body: &mut Vec<u8>| -> anyhow::Result<()> {
        let (status, text) = http(&addr, "POST", "/api/v1/import", body)?;
        if status / 100 != 2 {
            bail!("VictoriaMetrics import answered {status}: {text}");
        }
        body.clear();
        Ok(())
    };
    let mut values = [Vec::new(), Vec::new()];
    let mut stamps = Vec::new();
    let job = gen.data.job();
    for i in 0..gen.accounts {
        let mut prev = None;
        values[0].clear();
        values[1].clear();
        stamps.clear();
        for minute in 0..gen.minutes {
            let c = gen.next(i, minute, prev);
            prev = Some(c);
            values[0].push(c[0]);
            values[1].push(c[1]);
            stamps.push(gen.ts(i, minute));
        }
        let label = gen.data.entity(i).1;
        for (m, k) in gen.data.kinds_of(i).into_iter().enumerate() {
            let metric = gen.data.metric(k);
            write!(
                body,
                "{{\"metric\":{{\"__name__\":\"{metric}\",\"job\":\"{job}\",{label}}},\"values\":["
            )?;
            for (k, v) in values[m].iter().enumerate() {
                write!(body, "{}{v}", if k > 0 { "," } else { "" })?;
            }
            body.extend_from_slice(b"],\"timestamps\":[");
            for (k, t) in stamps.iter().enumerate() {
                write!(body, "{}{t}", if k > 0 { "," } else { "" })?;
            }
            body.extend_from_slice(b"]}\n");
        }
        if body.len() > 8 << 20 {
            send(&mut body)?;
        }
    }
    if !body.is_empty() {
        send(&mut body)?;
    }
    let expected = gen.accounts * gen.minutes * 2;
    // Wait until every row is in storage, then flush and merge.
    let mut rows = 0.0;
    let wait = Instant::now();
    while wait.elapsed() < Duration::from_secs(600) {
        http(&addr, "GET", "/internal/force_flush", b"")?;
        rows = vm_metric(&addr, "vm_rows{type=\"storage/")?;
        if rows as u64 >= expected {
            break;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    http(&addr, "GET", "/internal/force_merge", b"")?;
    let (mut last, mut stable) = (0, 0);
    while stable < 5 && wait.elapsed() < Duration::from_secs(1_800) {
        std::thread::sleep(Duration::from_secs(2));
        let size = dir_size(dir);
        let merging = vm_metric(&addr, "vm_active_merges")? > 0.0;
        stable = if size == last && !merging {
            stable + 1
        } else {
            0
        };
        last = size;
    }
    println!(
        "  (VictoriaMetrics import, flush and merge took {:.0} s; {:.0} rows)",
        wall.elapsed().as_secs_f64(),
        rows
    );
    drop(vm);
    let size = dir_size(dir);
    let _ = std::fs::remove_dir_all(dir);
    Ok((size, rows as u64))
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(program))
        .find(|p| p.is_file())
}
