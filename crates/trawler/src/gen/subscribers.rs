//! `trawler gen subscribers`: the readers of a top-N job — K server-sent
//! event connections with M keys each — measuring delivery latency.
//!
//! Keys are drawn with the posts' own popularity (`trawler_sim::comments`:
//! readers look at popular posts). The latency of a pushed list is its
//! receive time minus the event time of the newest event it reflects
//! (`latest_ts`); with a generator stamping events with the clock, that is
//! event → client. Only `update`s count, not the initial snapshots.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use trawler_sim::comments::{Comments, CommentsConfig};

use crate::cli::mockstagram::parse_duration;

/// Open K subscriptions of M posts each to a top-N job and measure how
/// soon pushed lists arrive.
///
/// Prints `subscribers: connected=… updates=… lists=… delivery_p50_ms=…
/// delivery_p99_ms=… closed=…` after `--duration` (the first `--warmup`
/// not measured).
#[derive(Debug, clap::Args)]
pub struct SubscribersArgs {
    /// The job's API.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub api: String,
    /// The job's name.
    #[arg(long, default_value = "comments")]
    pub job: String,
    /// Subscriptions (one connection each).
    #[arg(long, default_value_t = 1_000)]
    pub connections: usize,
    /// Keys per subscription.
    #[arg(long, default_value_t = 10)]
    pub keys: usize,
    /// Seed of the keys drawn.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Posts to draw from (`p1`…, as `trawler gen comments --posts`).
    #[arg(long, default_value_t = 100_000)]
    pub posts: u64,
    /// How long to measure.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Not measured at the start.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub warmup: Duration,
}

/// Latencies (ms) and counts from the subscribers.
#[derive(Default)]
struct Delivery {
    latencies: Mutex<Vec<f64>>,
    updates: AtomicU64,
    lists: AtomicU64,
    connected: AtomicU64,
    closed: AtomicU64,
    refused: AtomicU64,
    measuring: AtomicBool,
}

/// What a load measured.
#[derive(Debug, Clone)]
pub struct Summary {
    /// Subscriptions that got their stream.
    pub connected: u64,
    /// Update messages received while measuring.
    pub updates: u64,
    /// Lists in them.
    pub lists: u64,
    /// Delivery latency, ms.
    pub p50_ms: f64,
    /// p99.
    pub p99_ms: f64,
    /// Streams the server ended.
    pub closed: u64,
}

/// Subscribers running on a runtime of their own.
pub struct Load {
    d: Arc<Delivery>,
    rt: tokio::runtime::Runtime,
}

fn now_ms() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64() * 1000.0)
        .unwrap_or(0.0)
}

/// `n` key lists of `m` distinct posts, drawn as the comments are.
pub fn key_sets(seed: u64, posts: u64, n: usize, m: usize) -> anyhow::Result<Vec<String>> {
    let mut model = Comments::new(CommentsConfig {
        seed,
        posts,
        ..CommentsConfig::default()
    })
    .context("invalid --posts")?;
    let m = m.min(posts as usize);
    let mut line = Vec::new();
    let mut sets = Vec::with_capacity(n);
    for _ in 0..n {
        let mut keys: Vec<String> = Vec::new();
        while keys.len() < m {
            line.clear();
            model.write_event(0, &mut line);
            let e: serde_json::Value = serde_json::from_slice(&line)?;
            let p = e["post"].as_str().unwrap_or_default().to_owned();
            if !keys.contains(&p) {
                keys.push(p);
            }
        }
        sets.push(keys.join(","));
    }
    Ok(sets)
}

impl Load {
    /// Opens one subscription per key list (in waves, so the server's
    /// accept queue keeps up) and waits up to a minute for them.
    pub fn start(api: SocketAddr, job: &str, key_sets: Vec<String>) -> anyhow::Result<Load> {
        let d = Arc::new(Delivery::default());
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        let want = key_sets.len() as u64;
        for (i, keys) in key_sets.into_iter().enumerate() {
            let (d, job) = (d.clone(), job.to_owned());
            rt.spawn(async move {
                if let Err(e) = subscriber(api, &job, keys, &d).await {
                    d.refused.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(error = %e, "subscriber failed");
                }
            });
            if i % 500 == 499 {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        while d.connected.load(Ordering::Relaxed) + d.refused.load(Ordering::Relaxed) < want
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(Load { d, rt })
    }

    /// Subscriptions connected so far.
    pub fn connected(&self) -> u64 {
        self.d.connected.load(Ordering::Relaxed)
    }

    /// Measures for `period`.
    pub fn measure(&self, period: Duration) -> Summary {
        let d = &self.d;
        d.latencies.lock().expect("latencies").clear();
        let (u0, l0) = (
            d.updates.load(Ordering::Relaxed),
            d.lists.load(Ordering::Relaxed),
        );
        d.measuring.store(true, Ordering::Relaxed);
        std::thread::sleep(period);
        d.measuring.store(false, Ordering::Relaxed);
        let mut lat = std::mem::take(&mut *d.latencies.lock().expect("latencies"));
        lat.sort_by(f64::total_cmp);
        let q = |q: f64| {
            if lat.is_empty() {
                f64::NAN
            } else {
                lat[((lat.len() - 1) as f64 * q).round() as usize]
            }
        };
        Summary {
            connected: self.connected(),
            updates: d.updates.load(Ordering::Relaxed) - u0,
            lists: d.lists.load(Ordering::Relaxed) - l0,
            p50_ms: q(0.5),
            p99_ms: q(0.99),
            closed: d.closed.load(Ordering::Relaxed),
        }
    }

    /// Closes every subscription.
    pub fn stop(self) {
        self.rt.shutdown_timeout(Duration::from_secs(1));
    }
}

/// One subscription: reads events, records the latency of every list in
/// every `update` while measuring.
async fn subscriber(api: SocketAddr, job: &str, keys: String, d: &Delivery) -> anyhow::Result<()> {
    let mut s = tokio::net::TcpStream::connect(api).await?;
    let req = format!(
        "GET /api/v1/streams/{job}/subscribe?keys={keys} HTTP/1.1\r\nHost: {api}\r\nAccept: text/event-stream\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await?;
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line).await?;
    if !line.contains(" 200 ") {
        bail!("subscribe answered {}", line.trim());
    }
    d.connected.fetch_add(1, Ordering::Relaxed);
    let mut update = false;
    let mut mine = Vec::new();
    loop {
        line.clear();
        if r.read_line(&mut line).await? == 0 {
            d.closed.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        if let Some(e) = line.strip_prefix("event: ") {
            update = e.trim() == "update";
        } else if let Some(data) = line.strip_prefix("data: ") {
            if !update || !d.measuring.load(Ordering::Relaxed) {
                continue;
            }
            let now = now_ms();
            d.updates.fetch_add(1, Ordering::Relaxed);
            for part in data.split("\"latest_ts\":").skip(1) {
                let end = part
                    .find(|c: char| !c.is_ascii_digit())
                    .unwrap_or(part.len());
                if let Ok(ts) = part[..end].parse::<f64>() {
                    mine.push(now - ts);
                    d.lists.fetch_add(1, Ordering::Relaxed);
                }
            }
            d.latencies.lock().expect("latencies").append(&mut mine);
        }
    }
}

/// `trawler gen subscribers`.
pub fn run(args: SubscribersArgs) -> anyhow::Result<()> {
    let api: SocketAddr = args
        .api
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .parse()
        .with_context(|| format!("--api {:?}: expected HOST:PORT", args.api))?;
    if args.connections == 0 || args.keys == 0 {
        bail!("--connections and --keys must be at least 1");
    }
    let sets = key_sets(args.seed, args.posts, args.connections, args.keys)?;
    let load = Load::start(api, &args.job, sets)?;
    eprintln!(
        "subscribers: {} of {} connected",
        load.connected(),
        args.connections
    );
    std::thread::sleep(args.warmup);
    let s = load.measure(args.duration);
    eprintln!(
        "subscribers: connected={} updates={} lists={} delivery_p50_ms={:.1} delivery_p99_ms={:.1} closed={}",
        s.connected, s.updates, s.lists, s.p50_ms, s.p99_ms, s.closed
    );
    load.stop();
    Ok(())
}
