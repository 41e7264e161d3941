//! `trawler bench stream`: the `expo` stream job (docs/STREAMS.md) on one
//! file of generated events, end to end and beside its peers.
//!
//! 1. `trawler gen expo` writes the events (fixed seed and start, event
//!    time spanning about ten minutes, the default shares: 30 % of types no
//!    metric uses, 1 % late within the lateness).
//! 2. Aggregation alone: the file decoded, filtered and aggregated on this
//!    thread with `trawler_stream` (Decoder, then Engine admit/apply/close,
//!    no write-ahead log, no store) — the engine's ceiling per core.
//! 3. HTTP: `trawler run` (this binary) with the job, and `trawler gen
//!    expo` posting the same events at full speed over a few connections;
//!    events/s from the generator's summary and from the server's
//!    counters, the server's CPU per million events, its peak RSS, and the
//!    window close latency once the idle rule has closed every window.
//! 4. JetStream: nats-server with `-js` on a free port, a job with a nats
//!    source, the generator publishing the same events while the job
//!    consumes them; events/s until every event is counted.
//! 5. Peers (scripts/peers): DuckDB and bytewax on the same file (bytewax
//!    on a prefix when the whole file would take it more than about two
//!    minutes), and compare.py between DuckDB and trawler's HTTP run.
//!
//! Figures only, never a timed assertion. The last line is the summary.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use super::child::{self, get_json, get_text, Listening, TempDir};

/// Options of the stream benchmark.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Events in the file.
    #[arg(long, default_value_t = 3_000_000)]
    pub events: u64,
    /// Seed of the generator.
    #[arg(long, default_value_t = 15)]
    pub seed: u64,
    /// Event time of the first event, unix ms (2025-12-01T00:00:00Z).
    #[arg(long, default_value_t = 1_764_547_200_000)]
    pub start: i64,
    /// Minutes of event time the file spans.
    #[arg(long, default_value_t = 10.0)]
    pub minutes: f64,
    /// Events per HTTP request.
    #[arg(long, default_value_t = 5_000)]
    pub batch: usize,
    /// HTTP connections of the generator.
    #[arg(long, default_value_t = 4)]
    pub connections: usize,
    /// Events per NATS message (JetStream's default limit is 1 MB a message).
    #[arg(long, default_value_t = 2_000)]
    pub nats_batch: usize,
    /// Seconds bytewax may take, about: it runs on a prefix of the file
    /// when its measured pace says the whole file would take longer.
    #[arg(long, default_value_t = 120.0)]
    pub bytewax_seconds: f64,
    /// Skip the peers (DuckDB, bytewax, the comparison).
    #[arg(long)]
    pub no_peers: bool,
}

/// The repository (scripts/peers, jobs/expo.toml).
pub(super) fn repo() -> PathBuf {
    let built = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    if built.join("scripts/peers").is_dir() {
        return built.canonicalize().unwrap_or(built);
    }
    std::env::current_dir().unwrap_or_default()
}

/// The expo job of the repository with another source.
fn job_file(dir: &Path, name: &str, source: &str, extra: &str) -> anyhow::Result<PathBuf> {
    let text =
        std::fs::read_to_string(repo().join("jobs/expo.toml")).context("reading jobs/expo.toml")?;
    let replaced = text.replacen("source = \"http\"", &format!("source = \"{source}\""), 1);
    if replaced == text && source != "http" {
        bail!("jobs/expo.toml has no `source = \"http\"` line to replace");
    }
    let path = dir.join(name);
    std::fs::write(&path, format!("{replaced}\n{extra}"))?;
    Ok(path)
}

/// `trawler gen expo` with the benchmark's workload and `extra` flags.
fn gen_command(args: &Args, out: &str) -> anyhow::Result<Command> {
    let mut cmd = child::this_binary()?;
    cmd.args(["gen", "expo", "--out", out, "--rate", "0"])
        .args(["--events", &args.events.to_string()])
        .args(["--seed", &args.seed.to_string()])
        .args(["--start", &args.start.to_string()])
        .args(["--time-rate", &format!("{}", time_rate(args))])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null());
    Ok(cmd)
}

fn time_rate(args: &Args) -> f64 {
    (args.events as f64 / (args.minutes * 60.0)).max(1.0)
}

/// A `key=value` field of a summary line.
pub(super) fn field(text: &str, key: &str) -> Option<f64> {
    let pat = format!("{key}=");
    text.split_whitespace()
        .find_map(|w| w.strip_prefix(&pat))
        .and_then(|v| v.parse().ok())
}

/// The line of `text` starting with `prefix`.
fn line<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    text.lines().find(|l| l.starts_with(prefix))
}

pub(super) fn checked(out: Output, what: &str) -> anyhow::Result<String> {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    let text = format!("{}{err}", String::from_utf8_lossy(&out.stdout));
    if !out.status.success() {
        bail!("{what} failed ({}):\n{text}", out.status);
    }
    Ok(text)
}

pub(super) fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

pub(super) fn wait_port(port: u16, what: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            bail!("{what} did not listen on {port}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// A program on the PATH or in the sbin folders (Debian puts nats-server
/// in /usr/sbin); installed with scripts/deps when missing.
pub(super) fn program(name: &str) -> anyhow::Result<PathBuf> {
    let find = || {
        std::env::var("PATH")
            .unwrap_or_default()
            .split(':')
            .chain(["/usr/sbin", "/usr/bin", "/sbin"])
            .map(|d| Path::new(d).join(name))
            .find(|p| p.exists())
    };
    if let Some(p) = find() {
        return Ok(p);
    }
    let _ = Command::new(repo().join("scripts/deps")).arg(name).status();
    find().with_context(|| format!("{name} is not installed: run scripts/deps {name}"))
}

/// A process killed when dropped.
pub(super) struct Killed(pub(super) Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The stats of the job at `api`.
fn stats(api: SocketAddr) -> anyhow::Result<serde_json::Value> {
    Ok(get_json(api, "/api/v1/streams/expo")?["stats"].clone())
}

fn stat(s: &serde_json::Value, name: &str) -> u64 {
    s[name].as_u64().unwrap_or(0)
}

/// Events the job has counted, whatever became of them (the events/s
/// figures count every event in, as the peers do; the accepted share is
/// printed beside).
fn processed(s: &serde_json::Value) -> u64 {
    ["accepted", "filtered", "late", "future", "malformed"]
        .iter()
        .map(|n| stat(s, n))
        .sum()
}

/// Starts `trawler run` with `config` on a fresh data folder.
pub(super) fn start_run(config: &Path, data: &Path, log: &Path) -> anyhow::Result<Listening> {
    let mut cmd = child::this_binary()?;
    cmd.args(["run", "--listen", "127.0.0.1:0", "--config"])
        .arg(config)
        .arg("--data")
        .arg(data)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stderr(std::fs::File::create(log)?);
    Listening::start(cmd, "trawler run")
}

/// What the aggregation alone did.
struct AggOnly {
    seconds: f64,
    accepted: u64,
    filtered: u64,
    late: u64,
    samples: usize,
}

/// Decodes, filters and aggregates `file` on this thread, in batches of
/// `batch` lines, closing windows as the watermark passes them.
fn agg_only(file: &Path, batch: usize) -> anyhow::Result<AggOnly> {
    let job = trawler_node::stream::load_if_stream(&job_path_http()?)?
        .context("jobs/expo.toml is not a stream job")?;
    let bytes = std::fs::read(file)?;
    // Batches of whole lines, cut before the clock starts.
    let mut chunks = Vec::new();
    let (mut from, mut lines) = (0, 0);
    for (i, b) in bytes.iter().enumerate() {
        if *b == b'\n' {
            lines += 1;
            if lines == batch {
                chunks.push(&bytes[from..=i]);
                (from, lines) = (i + 1, 0);
            }
        }
    }
    if from < bytes.len() {
        chunks.push(&bytes[from..]);
    }
    let decoder = trawler_stream::Decoder::new(&job);
    let mut engine = trawler_stream::Engine::new(Arc::clone(&job));
    let mut b = trawler_stream::Batch::default();
    let mut record = trawler_stream::Accepted::default();
    let mut samples = Vec::new();
    let now = trawler_common::clock::unix_ms();
    let (mut accepted, mut filtered, mut late, mut stored) = (0, 0, 0, 0);
    let started = Instant::now();
    for chunk in chunks {
        b.clear();
        decoder.decode(chunk, &mut b);
        filtered += b.stats.filtered;
        record.clear();
        let admitted = engine.admit(&b, now, 10 * 60_000, &mut record);
        accepted += admitted.accepted;
        late += admitted.late;
        engine.apply(&record);
        if let Some(max) = engine.max_ts() {
            engine.close(max, &mut samples);
            stored += samples.len();
            samples.clear();
        }
    }
    engine.close_all(&mut samples);
    stored += samples.len();
    Ok(AggOnly {
        seconds: started.elapsed().as_secs_f64(),
        accepted,
        filtered,
        late,
        samples: stored,
    })
}

fn job_path_http() -> anyhow::Result<PathBuf> {
    Ok(repo().join("jobs/expo.toml"))
}

/// What the HTTP run measured.
struct HttpRun {
    gen_events_per_s: f64,
    server_events_per_s: f64,
    accepted: u64,
    filtered: u64,
    late: u64,
    cpu_s_per_million: f64,
    rss_mb: f64,
    close_p50_ms: f64,
    close_p99_ms: f64,
    windows_closed: u64,
    csv: PathBuf,
}

fn http_run(args: &Args, dir: &Path) -> anyhow::Result<HttpRun> {
    let config = job_file(dir, "expo-http.toml", "http", "")?;
    let server = start_run(&config, &dir.join("data-http"), &dir.join("run-http.log"))?;
    let api = server.addr;
    let cpu0 = child::cpu_seconds(server.pid());
    let url = format!("http://{api}/api/v1/streams/expo/events");
    let mut gen = gen_command(args, &url)?;
    gen.args(["--batch", &args.batch.to_string()])
        .args(["--connections", &args.connections.to_string()]);
    let t0 = Instant::now();
    let out = checked(gen.output()?, "trawler gen expo (HTTP)")?;
    let mut done = stats(api)?;
    // Every request is answered once durable, so the counters are final;
    // wait for them all the same.
    while processed(&done) < args.events && t0.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(20));
        done = stats(api)?;
    }
    let seconds = t0.elapsed().as_secs_f64();
    let cpu = child::cpu_seconds(server.pid()) - cpu0;
    let summary = line(&out, "gen:").unwrap_or_default().to_owned();
    println!("  generator: {summary}");
    let gen_rate = field(&summary, "events_per_s").unwrap_or(0.0);
    let server_rate = processed(&done) as f64 / seconds;
    // The last windows close by the idle rule (lateness of quiet).
    let progress = crate::progress::spinner("waiting for the idle rule to close the last windows");
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut closed = stats(api)?;
    while stat(&closed, "open_windows") > 0 {
        if Instant::now() > deadline {
            bail!("windows still open 3 minutes after the last event: {closed}");
        }
        std::thread::sleep(Duration::from_millis(250));
        closed = stats(api)?;
    }
    progress.finish_and_clear();
    let csv = dir.join("trawler.csv");
    std::fs::write(
        &csv,
        get_text(api, "/api/v1/streams/expo/windows?format=csv")?,
    )?;
    let header = std::fs::read_to_string(&csv)?
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned();
    if header != "window_start_ms,experiment,variant,metric,value" {
        bail!("the windows export's header is {header:?}, not what compare.py reads");
    }
    Ok(HttpRun {
        gen_events_per_s: gen_rate,
        server_events_per_s: server_rate,
        accepted: stat(&done, "accepted"),
        filtered: stat(&done, "filtered"),
        late: stat(&done, "late"),
        cpu_s_per_million: cpu / (args.events as f64 / 1e6),
        rss_mb: child::peak_rss_mb(server.pid()),
        close_p50_ms: closed["close_latency_p50_ms"].as_f64().unwrap_or(f64::NAN),
        close_p99_ms: closed["close_latency_p99_ms"].as_f64().unwrap_or(f64::NAN),
        windows_closed: stat(&closed, "windows_closed"),
        csv,
    })
}

/// Creates the job's stream over `subject` (the configuration the node
/// uses), so the publisher can start before the node has connected.
fn create_stream(port: u16, subject: &str) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let client = async_nats::connect(format!("nats://127.0.0.1:{port}")).await?;
        let js = async_nats::jetstream::new(client);
        js.get_or_create_stream(async_nats::jetstream::stream::Config {
            name: "TRAWLER_EVENTS_expo".into(),
            subjects: vec![subject.into()],
            ..Default::default()
        })
        .await
        .map_err(|e| anyhow::anyhow!("creating the stream: {e}"))?;
        Ok(())
    })
}

/// What the JetStream run measured.
struct NatsRun {
    events_per_s: f64,
    publish_events_per_s: f64,
    accepted: u64,
    cpu_s_per_million: f64,
}

fn nats_run(args: &Args, dir: &Path) -> anyhow::Result<NatsRun> {
    let port = free_port()?;
    let server = Command::new(program("nats-server")?)
        .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
        .arg(dir.join("nats"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("nats.log"))?)
        .spawn()
        .context("starting nats-server")?;
    let _server = Killed(server);
    wait_port(port, "nats-server")?;
    let subject = "expo.events";
    create_stream(port, subject)?;
    let config = job_file(
        dir,
        "expo-nats.toml",
        "nats",
        &format!(
            "[stream.nats]\nservers = [\"nats://127.0.0.1:{port}\"]\nsubject = \"{subject}\"\n"
        ),
    )?;
    let node = start_run(&config, &dir.join("data-nats"), &dir.join("run-nats.log"))?;
    let cpu0 = child::cpu_seconds(node.pid());
    let mut gen = gen_command(args, &format!("nats://127.0.0.1:{port}/{subject}"))?;
    gen.args(["--batch", &args.nats_batch.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let t0 = Instant::now();
    let publisher = gen.spawn().context("starting trawler gen expo (NATS)")?;
    let progress = crate::progress::spinner("JetStream: publishing and consuming");
    let mut last = (0, Instant::now());
    let s = loop {
        let s = stats(node.addr)?;
        let n = processed(&s);
        progress.set_message(format!("JetStream: {n} of {} events counted", args.events));
        if n >= args.events {
            break s;
        }
        if n > last.0 {
            last = (n, Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(60) {
            bail!(
                "JetStream: stuck at {n} of {} events for a minute",
                args.events
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let seconds = t0.elapsed().as_secs_f64();
    progress.finish_and_clear();
    let cpu = child::cpu_seconds(node.pid()) - cpu0;
    let out = checked(publisher.wait_with_output()?, "trawler gen expo (NATS)")?;
    let summary = line(&out, "gen:").unwrap_or_default().to_owned();
    println!("  publisher: {summary}");
    Ok(NatsRun {
        events_per_s: args.events as f64 / seconds,
        publish_events_per_s: field(&summary, "events_per_s").unwrap_or(0.0),
        accepted: stat(&s, "accepted"),
        cpu_s_per_million: cpu / (args.events as f64 / 1e6),
    })
}

/// A peer's `NAME: events=… seconds=… events_per_s=…` line.
fn peer(python: &Path, script: &str, file: &Path, out: &Path) -> anyhow::Result<(u64, f64)> {
    let run = Command::new(python)
        .arg(repo().join("scripts/peers").join(script))
        .arg(file)
        .arg("--out")
        .arg(out)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {script}"))?;
    let text = checked(run, script)?;
    let l = text
        .lines()
        .find(|l| l.contains("events_per_s="))
        .with_context(|| format!("{script} printed no summary:\n{text}"))?;
    Ok((
        field(l, "events").unwrap_or(0.0) as u64,
        field(l, "events_per_s").unwrap_or(0.0),
    ))
}

/// The first `n` lines of `file` into `out`.
fn prefix(file: &Path, out: &Path, n: u64) -> anyhow::Result<()> {
    let mut r = BufReader::new(std::fs::File::open(file)?);
    let mut w = std::io::BufWriter::new(std::fs::File::create(out)?);
    let mut line = Vec::new();
    for _ in 0..n {
        line.clear();
        if r.read_until(b'\n', &mut line)? == 0 {
            break;
        }
        w.write_all(&line)?;
    }
    w.flush()?;
    Ok(())
}

/// What the peers measured.
struct Peers {
    duckdb_events_per_s: f64,
    bytewax_events: u64,
    bytewax_events_per_s: f64,
    duckdb_match: bool,
    compare: String,
}

fn peers(args: &Args, dir: &Path, file: &Path, trawler_csv: &Path) -> anyhow::Result<Peers> {
    let status = Command::new(repo().join("scripts/peers/setup"))
        .status()
        .context("running scripts/peers/setup")?;
    if !status.success() {
        bail!("scripts/peers/setup failed");
    }
    let python = repo().join("target/peers-venv/bin/python");
    let duck_csv = dir.join("duckdb.csv");
    let (duck_events, duck_rate) = peer(&python, "expo_duckdb.py", file, &duck_csv)?;
    println!("  duckdb: {duck_events} events, {duck_rate:.0} events/s (one query, all cores)");

    // bytewax: measure its pace on a small prefix, then run it on as much
    // of the file as fits in --bytewax-seconds.
    let probe_n = args.events.min(100_000);
    let probe = dir.join("bytewax-probe.ndjson");
    prefix(file, &probe, probe_n)?;
    let (_, probe_rate) = peer(
        &python,
        "expo_bytewax.py",
        &probe,
        &dir.join("bw-probe.csv"),
    )?;
    let fits = (probe_rate * args.bytewax_seconds) as u64;
    let (bw_file, bw_n) = if fits >= args.events {
        (file.to_path_buf(), args.events)
    } else {
        let n = fits.max(probe_n);
        let p = dir.join("bytewax-prefix.ndjson");
        prefix(file, &p, n)?;
        (p, n)
    };
    let bw_csv = dir.join("bytewax.csv");
    let (bw_events, bw_rate) = peer(&python, "expo_bytewax.py", &bw_file, &bw_csv)?;
    if bw_n < args.events {
        println!(
            "  bytewax: the first {bw_events} of {} events (the whole file would take it ~{:.0} s), {bw_rate:.0} events/s (one worker)",
            args.events,
            args.events as f64 / probe_rate
        );
    } else {
        println!("  bytewax: {bw_events} events, {bw_rate:.0} events/s (one worker)");
    }

    let compare = |a: &Path, b: &Path| -> anyhow::Result<(bool, String)> {
        let out = Command::new(&python)
            .arg(repo().join("scripts/peers/compare.py"))
            .arg(a)
            .arg(b)
            .args(["--distinct-tol", "0.05", "--quantile-tol", "0.02"])
            .output()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        Ok((text.contains("match=true"), text))
    };
    if bw_n == args.events {
        let (_, text) = compare(&duck_csv, &bw_csv)?;
        println!(
            "  duckdb vs bytewax: {}",
            text.lines().last().unwrap_or_default()
        );
    }
    let (duckdb_match, text) = compare(&duck_csv, trawler_csv)?;
    Ok(Peers {
        duckdb_events_per_s: duck_rate,
        bytewax_events: bw_events,
        bytewax_events_per_s: bw_rate,
        duckdb_match,
        compare: text,
    })
}

/// Runs the benchmark and prints its figures.
pub fn run(args: Args) -> anyhow::Result<()> {
    if args.events == 0 || args.minutes <= 0.0 {
        bail!("--events and --minutes must be positive");
    }
    let dir = TempDir::new("stream");
    std::fs::create_dir_all(&dir.0)?;
    let file = dir.0.join("events.ndjson");
    println!(
        "stream benchmark: the expo job on {} events (seed {}, {:.1} min of event time from {}, {:.0} events/s of event time, default shares)",
        args.events, args.seed, args.minutes, args.start, time_rate(&args)
    );

    let t0 = Instant::now();
    let out = checked(
        gen_command(&args, &file.display().to_string())?.output()?,
        "trawler gen expo (file)",
    )?;
    let size = std::fs::metadata(&file)?.len();
    println!(
        "generate: {:.1} s, {:.0} MB ({})",
        t0.elapsed().as_secs_f64(),
        size as f64 / 1e6,
        line(&out, "gen:").unwrap_or_default()
    );

    let agg = agg_only(&file, args.batch)?;
    let agg_rate = args.events as f64 / agg.seconds;
    println!(
        "agg only (one thread: decode, filter, admit, aggregate, close; no log, no store): {agg_rate:.0} events/s, {:.2} s; accepted {} filtered {} late {}, {} samples",
        agg.seconds, agg.accepted, agg.filtered, agg.late, agg.samples
    );

    println!(
        "HTTP: trawler run, generator posting batches of {} over {} connections",
        args.batch, args.connections
    );
    let http = http_run(&args, &dir.0)?;
    let http_accepted_rate = http.server_events_per_s * http.accepted as f64
        / (http.accepted + http.filtered + http.late).max(1) as f64;
    println!(
        "  server: {:.0} events/s counted, of which {http_accepted_rate:.0}/s accepted (accepted {} filtered {} late {}), {:.2} CPU s per million events, peak RSS {:.0} MB",
        http.server_events_per_s, http.accepted, http.filtered, http.late, http.cpu_s_per_million, http.rss_mb
    );
    println!(
        "  windows: {} closed, close latency p50 {:.1} ms p99 {:.1} ms",
        http.windows_closed, http.close_p50_ms, http.close_p99_ms
    );
    if http.accepted != agg.accepted {
        println!(
            "  note: the HTTP run accepted {} events, the in-process run {}",
            http.accepted, agg.accepted
        );
    }

    println!(
        "JetStream: nats-server -js, a nats-source job, the generator publishing concurrently"
    );
    let nats = nats_run(&args, &dir.0)?;
    println!(
        "  consumed: {:.0} events/s until every event was counted (accepted {}), {:.2} CPU s per million events",
        nats.events_per_s, nats.accepted, nats.cpu_s_per_million
    );

    let peers = if args.no_peers {
        None
    } else {
        println!("peers (scripts/peers) on the same file:");
        let p = peers(&args, &dir.0, &file, &http.csv)?;
        println!("  duckdb vs trawler (HTTP run's windows export):");
        for l in p.compare.lines() {
            println!("    {l}");
        }
        Some(p)
    };
    let (bw_rate, bw_events, duck_rate, duck_match) =
        peers
            .as_ref()
            .map_or((f64::NAN, 0, f64::NAN, "skipped".to_owned()), |p| {
                (
                    p.bytewax_events_per_s,
                    p.bytewax_events,
                    p.duckdb_events_per_s,
                    p.duckdb_match.to_string(),
                )
            });
    println!(
        "stream: events_per_s_http={:.0} events_per_s_jetstream={:.0} agg_events_per_s_per_core={agg_rate:.0} window_close_p99_ms={:.1} bytewax_events_per_s={bw_rate:.0} duckdb_match={duck_match} events={} http_gen_events_per_s={:.0} jetstream_publish_events_per_s={:.0} cpu_s_per_million={:.2} jetstream_cpu_s_per_million={:.2} rss_mb={:.0} duckdb_events_per_s={duck_rate:.0} bytewax_events={bw_events} http_accepted_per_s={http_accepted_rate:.0}",
        http.server_events_per_s, nats.events_per_s, http.close_p99_ms, args.events,
        http.gen_events_per_s, nats.publish_events_per_s, http.cpu_s_per_million,
        nats.cpu_s_per_million, http.rss_mb
    );
    Ok(())
}
