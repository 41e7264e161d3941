//! `trawler bench topn`: the top-N job (`jobs/comments.toml`).
//!
//! 1. **The aggregate alone**, on this thread: a file of generated comments
//!    (`trawler_sim::comments`, event time spanning twice the window so
//!    slides expire) decoded, admitted and applied; events per CPU second,
//!    and the RSS the state adds per million live (post, user) pairs. The
//!    final lists of every post are compared with a brute-force count.
//! 2. **Subscribers while ingesting**: `trawler run` with the job, the
//!    generator posting at `--rate` over HTTP, and `--subscribers` SSE
//!    connections from this process with `--keys` posts each (drawn with the
//!    posts' own popularity, as readers look at popular posts); delivery
//!    latency is the receive time minus the event time of the newest event
//!    a pushed list reflects (the generator stamps events with the clock).
//! 3. **The peer**: the same windowed top-N in Redis (Debian's
//!    redis-server, sorted sets and per-slide hashes, pipelined; see
//!    `scripts/peers/topn_redis.py`) over a prefix of the same file, with its
//!    lists compared to trawler's on the same prefix. For context, Flink's
//!    published Nexmark q19 (top-N) figure is about 44,000 events/s per core.
//!
//! Ends with `topn: events_per_s_per_core=… rss_mb_per_million_pairs=…
//! subscribers=… delivery_p50_ms=… delivery_p99_ms=… redis_events_per_s=…
//! exact=true|false`.

use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use trawler_sim::comments::{Comments, CommentsConfig};
use trawler_stream::topn::{TopN, TopRecord};

use super::child::{self, get_text, TempDir};
use super::stream::{checked, field, free_port, program, repo, start_run, wait_port, Killed};

/// Options of the top-N benchmark.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Events in the file of the aggregate-only run.
    #[arg(long, default_value_t = 6_000_000)]
    pub events: u64,
    /// Events per second of event time in the file (6M at 10,000/s span
    /// 10 minutes: twice the window).
    #[arg(long, default_value_t = 10_000.0)]
    pub time_rate: f64,
    /// Seed of the generator.
    #[arg(long, default_value_t = 16)]
    pub seed: u64,
    /// SSE subscribers of the end-to-end run.
    #[arg(long, default_value_t = 10_000)]
    pub subscribers: usize,
    /// Posts per subscriber.
    #[arg(long, default_value_t = 10)]
    pub keys: usize,
    /// Events per second posted during the end-to-end run.
    #[arg(long, default_value_t = 200_000.0)]
    pub rate: f64,
    /// Seconds measured in the end-to-end run (after 5 s of warm-up).
    #[arg(long, default_value_t = 30)]
    pub seconds: u64,
    /// Events of the file Redis is given (its pace is a few ten thousand
    /// events/s); trawler's lists are compared on the same prefix.
    #[arg(long, default_value_t = 1_000_000)]
    pub peer_events: u64,
    /// Skip Redis.
    #[arg(long)]
    pub no_peer: bool,
}

/// Every post's list: (member, count), highest first.
type Lists = HashMap<String, Vec<(String, u64)>>;

fn job_text() -> anyhow::Result<String> {
    let path = repo().join("jobs/comments.toml");
    std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
}

fn job() -> anyhow::Result<Arc<trawler_stream::StreamJob>> {
    trawler_node::stream::load_if_stream(&repo().join("jobs/comments.toml"))?
        .context("jobs/comments.toml is not a stream job")
}

/// Every post's list from a brute-force count of the events the
/// admission rule accepts that are in the final window.
fn brute_force(bytes: &[u8], job: &trawler_stream::StreamJob) -> Lists {
    let t = job.topn.as_ref().expect("a top-N job");
    let (slide, width, late) = (t.slide_ms, job.window_ms / t.slide_ms, job.lateness_ms);
    let mut horizon = i64::MIN;
    let mut kept: Vec<(i64, String, String)> = Vec::new();
    for line in bytes.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        let e: serde_json::Value = serde_json::from_slice(line).expect("generated JSON");
        let ts = e["ts"].as_i64().unwrap_or_default();
        if horizon != i64::MIN
            && (ts < horizon - late || ts.div_euclid(slide) <= horizon.div_euclid(slide) - width)
        {
            continue;
        }
        horizon = horizon.max(ts);
        let s = |k: &str| e[k].as_str().unwrap_or_default().to_owned();
        kept.push((ts, s("post"), s("user")));
    }
    let end = horizon.div_euclid(slide) + 1;
    let mut counts: HashMap<String, HashMap<String, u64>> = HashMap::new();
    for (ts, p, u) in kept {
        if ts.div_euclid(slide) >= end - width {
            *counts.entry(p).or_default().entry(u).or_default() += 1;
        }
    }
    counts
        .into_iter()
        .map(|(p, users)| {
            let mut v: Vec<(String, u64)> = users.into_iter().collect();
            v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
            v.truncate(t.n);
            (p, v)
        })
        .collect()
}

/// What the aggregate alone did.
struct Agg {
    events: u64,
    cpu_s: f64,
    wall_s: f64,
    pairs: usize,
    rss_added_mb: f64,
    lists: Lists,
}

/// Decodes, admits and applies `bytes` on this thread.
fn aggregate(bytes: &[u8], job: &trawler_stream::StreamJob) -> Agg {
    let mut chunks = Vec::new();
    let (mut from, mut lines) = (0, 0);
    for (i, b) in bytes.iter().enumerate() {
        if *b == b'\n' {
            lines += 1;
            if lines == 8_192 {
                chunks.push(&bytes[from..=i]);
                (from, lines) = (i + 1, 0);
            }
        }
    }
    if from < bytes.len() {
        chunks.push(&bytes[from..]);
    }
    let decoder = trawler_stream::Decoder::new(job);
    let mut engine = TopN::new(job);
    let mut batch = trawler_stream::Batch::default();
    let mut record = TopRecord::default();
    let weighted = job.topn.as_ref().is_some_and(|t| t.weighted);
    let pid = std::process::id();
    let rss_before = child::rss_mb(pid);
    let cpu_before = child::cpu_seconds(pid);
    let started = Instant::now();
    let mut events = 0;
    for chunk in chunks {
        batch.clear();
        decoder.decode(chunk, &mut batch);
        record.clear();
        let (accepted, _, _) = engine.admit_batch(&batch, weighted, i64::MAX / 2, 0, &mut record);
        engine.apply_record(&record);
        events += accepted;
        // What the sequencer does between batches: hand the changes out.
        let _ = engine.take_changed(0, 0, |_| false);
    }
    let wall_s = started.elapsed().as_secs_f64();
    let cpu_s = child::cpu_seconds(pid) - cpu_before;
    let rss_added_mb = child::rss_mb(pid) - rss_before;
    let (_, _, pairs, _) = engine.sizes();
    let mut lists = HashMap::new();
    for (post, _) in engine.hottest(usize::MAX >> 1) {
        let l = engine.top(&post);
        lists.insert(post, l.top);
    }
    Agg {
        events,
        cpu_s,
        wall_s,
        pairs,
        rss_added_mb,
        lists,
    }
}

/// Events of the comments workload, spaced `1 / time_rate` in event time.
fn generate(seed: u64, events: u64, time_rate: f64) -> Vec<u8> {
    let mut model = Comments::new(CommentsConfig {
        seed,
        ..CommentsConfig::default()
    })
    .expect("default knobs");
    let start = 1_764_547_200_000f64;
    let mut out = Vec::with_capacity(events as usize * 64);
    for i in 0..events {
        model.write_event((start + i as f64 * 1000.0 / time_rate) as i64, &mut out);
    }
    out
}

/// What the end-to-end run measured.
struct EndToEnd {
    connected: u64,
    p50: f64,
    p99: f64,
    events_per_s: f64,
    server_cores: f64,
    updates: u64,
    lists: u64,
    dropped: f64,
}

fn end_to_end(args: &Args, dir: &Path) -> anyhow::Result<EndToEnd> {
    let text = job_text()?.replace(
        "max_subscribers = 20000",
        &format!("max_subscribers = {}", args.subscribers.max(1) + 100),
    );
    let config = dir.join("comments.toml");
    std::fs::write(&config, text)?;
    let run = start_run(&config, &dir.join("data"), &dir.join("run.log"))?;
    let api = run.addr;
    // Readers look at popular posts: keys drawn as the comments are.
    let sets =
        crate::gen::subscribers::key_sets(args.seed + 1, 100_000, args.subscribers, args.keys)?;
    let load = crate::gen::subscribers::Load::start(api, "comments", sets)?;
    let connected = load.connected();
    println!(
        "  {connected} of {} subscribers connected ({} posts each)",
        args.subscribers, args.keys
    );
    let mut gen = child::this_binary()?;
    gen.args(["gen", "comments", "--rate", &args.rate.to_string()])
        .args(["--seed", &args.seed.to_string(), "--batch", "2000"])
        // Events stamped with the clock when drawn: delivery latency is
        // measured from the event's creation, even if the generator falls
        // behind its schedule.
        .args(["--time-rate", "0"])
        .args(["--duration", &format!("{}s", args.seconds + 10)])
        .args([
            "--out",
            &format!("http://{api}/api/v1/streams/comments/events"),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let _gen = Killed(gen.spawn().context("starting trawler gen comments")?);
    std::thread::sleep(Duration::from_secs(5));
    let accepted = |api| -> anyhow::Result<f64> {
        let t = get_text(api, "/metrics")?;
        Ok(t.lines()
            .find(|l| l.starts_with("trawler_stream_events_total") && l.contains("accepted"))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or(0.0))
    };
    let (a0, c0) = (accepted(api)?, child::cpu_seconds(run.pid()));
    let t0 = Instant::now();
    let m = load.measure(Duration::from_secs(args.seconds));
    let secs = t0.elapsed().as_secs_f64();
    let (a1, c1) = (accepted(api)?, child::cpu_seconds(run.pid()));
    let metrics = get_text(api, "/metrics")?;
    let dropped = child::metric(&metrics, "trawler_topn_subscribers_dropped_total").unwrap_or(0.0);
    load.stop();
    Ok(EndToEnd {
        connected,
        p50: m.p50_ms,
        p99: m.p99_ms,
        events_per_s: (a1 - a0) / secs,
        server_cores: (c1 - c0) / secs,
        updates: m.updates,
        lists: m.lists,
        dropped,
    })
}

/// Runs Redis over `file`; (events/s, every post's list).
fn redis_peer(
    dir: &Path,
    file: &Path,
    job: &trawler_stream::StreamJob,
) -> anyhow::Result<(f64, Lists)> {
    let server = program("redis-server")?;
    let status = Command::new(repo().join("scripts/peers/setup"))
        .status()
        .context("running scripts/peers/setup")?;
    if !status.success() {
        bail!("scripts/peers/setup failed");
    }
    let port = free_port()?;
    // A cache as people run it for this: no persistence.
    let _redis = Killed(
        Command::new(server)
            .args([
                "--port",
                &port.to_string(),
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .args(["--dir"])
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting redis-server")?,
    );
    wait_port(port, "redis-server")?;
    let t = job.topn.as_ref().expect("a top-N job");
    let out = dir.join("redis.json");
    let run = Command::new(repo().join("target/peers-venv/bin/python"))
        .arg(repo().join("scripts/peers/topn_redis.py"))
        .arg("--file")
        .arg(file)
        .args(["--port", &port.to_string()])
        .args(["--window-ms", &job.window_ms.to_string()])
        .args(["--slide-ms", &t.slide_ms.to_string()])
        .args(["--lateness-ms", &job.lateness_ms.to_string()])
        .args(["--n", &t.n.to_string()])
        .arg("--out")
        .arg(&out)
        .stdin(Stdio::null())
        .output()
        .context("running topn_redis.py")?;
    let text = checked(run, "topn_redis.py")?;
    let rate = text
        .lines()
        .find(|l| l.starts_with("redis:"))
        .and_then(|l| field(l, "events_per_s"))
        .with_context(|| format!("topn_redis.py printed no summary:\n{text}"))?;
    let lists: Lists = serde_json::from_slice(&std::fs::read(&out)?).context("redis.json")?;
    Ok((rate, lists))
}

/// Lists that differ between `a` and `b` (posts with an empty list count
/// as absent).
fn differing(a: &Lists, b: &Lists) -> usize {
    let keys: std::collections::BTreeSet<&String> = a
        .iter()
        .chain(b.iter())
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, _)| k)
        .collect();
    keys.into_iter()
        .filter(|k| {
            a.get(*k).cloned().unwrap_or_default() != b.get(*k).cloned().unwrap_or_default()
        })
        .count()
}

/// Runs the benchmark.
pub fn run(args: Args) -> anyhow::Result<()> {
    let job = job()?;
    let dir = TempDir::new("topn");
    std::fs::create_dir_all(&dir.0)?;
    println!(
        "topn: {} events ({} of event time at {:.0}/s), window {} s, slide {} ms",
        args.events,
        humantime::format_duration(Duration::from_secs_f64(args.events as f64 / args.time_rate)),
        args.time_rate,
        job.window_ms / 1000,
        job.topn.as_ref().map_or(0, |t| t.slide_ms)
    );
    let bytes = generate(args.seed, args.events, args.time_rate);
    let agg = aggregate(&bytes, &job);
    let per_core = agg.events as f64 / agg.cpu_s.max(1e-9);
    let rss_per_million = agg.rss_added_mb / (agg.pairs as f64 / 1e6).max(1e-9);
    let brute = brute_force(&bytes, &job);
    let wrong = differing(&agg.lists, &brute);
    println!(
        "  aggregate alone: {} events in {:.2} s ({:.2} CPU s): {per_core:.0} events/s per core; {} live pairs, +{:.0} MB RSS ({rss_per_million:.0} MB per million pairs); lists differing from a brute-force count: {wrong} of {}",
        agg.events, agg.wall_s, agg.cpu_s, agg.pairs, agg.rss_added_mb, brute.len()
    );
    println!(
        "  (Flink's published Nexmark q19 top-N: about 44,000 events/s per core, for context)"
    );
    let mut exact = wrong == 0;

    let mut redis_rate = f64::NAN;
    if !args.no_peer {
        let n = args.peer_events.min(args.events) as usize;
        let cut = bytes
            .split_inclusive(|&b| b == b'\n')
            .take(n)
            .map(<[u8]>::len)
            .sum::<usize>();
        let prefix = &bytes[..cut];
        let file = dir.0.join("events.ndjson");
        std::fs::write(&file, prefix)?;
        let ours = aggregate(prefix, &job).lists;
        let (rate, theirs) = redis_peer(&dir.0, &file, &job)?;
        let wrong = differing(&ours, &theirs);
        let truth = differing(&ours, &brute_force(prefix, &job));
        println!(
            "  redis (sorted sets + per-slide hashes, pipelined, one client): {rate:.0} events/s on {n} events; lists differing from trawler's: {wrong} (trawler vs brute force: {truth})"
        );
        redis_rate = rate;
        exact &= wrong == 0 && truth == 0;
    }
    drop(bytes);

    let e = end_to_end(&args, &dir.0)?;
    println!(
        "  end to end: {:.0} events/s accepted (asked {:.0}/s), {} subscribers, {} updates with {} lists, delivery p50 {:.1} ms p99 {:.1} ms, server {:.2} cores, {} subscribers dropped",
        e.events_per_s, args.rate, e.connected, e.updates, e.lists, e.p50, e.p99, e.server_cores, e.dropped
    );
    println!(
        "topn: events_per_s_per_core={per_core:.0} rss_mb_per_million_pairs={rss_per_million:.0} subscribers={} delivery_p50_ms={:.1} delivery_p99_ms={:.1} redis_events_per_s={redis_rate:.0} exact={exact}",
        e.connected, e.p50, e.p99
    );
    Ok(())
}
