//! `trawler run`: the main job. Turns a job file into running tasks joined
//! by channels:
//!
//! ```text
//! simulator (when no --target) ◄── HTTP ── crawl ──events──► ingest ──► store (WAL, blocks)
//!                                                                  └──► views ◄── API ── clients
//!                               ◄── HTTP ── enrichment ──verdicts──► ingest
//! ```
//!
//! Start-up order matters: the store opens (replaying its WAL), the views
//! are rebuilt from the store's latest values, and only then does the crawl
//! start, so no observation can be overwritten by the rebuild. Shutdown runs
//! the other way: stop the API and the crawl (requests in flight get a grace
//! period), drain the ingest path, sync the store, exit 0.

mod backend;
mod cluster;
mod layout;
mod node;
pub mod state;
mod status;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::sync::{mpsc, watch};
use trawler_crawl::{IdSet, JobConfig, Overrides};
use trawler_store::{StoreConfig, SyncPolicy};

use crate::cli::mockstagram::{parse_duration, shutdown_signal};
use layout::Layout;
use node::Node;
use state::IdSetFile;

/// The default job: every Mockstagram influencer, every minute.
pub const DEFAULT_JOB: &str = include_str!("../../../../jobs/mockstagram.toml");

/// Run a job: poll, store, keep live views, serve the API.
///
/// With no arguments: starts the built-in Mockstagram simulator with
/// 1,000,000 accounts on a loopback port, tracks all of them every 60 s,
/// stores into ./trawler-data and serves the API on 127.0.0.1:8080.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Job file (TOML). Default: the built-in Mockstagram job (jobs/mockstagram.toml).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Base URL of a Mockstagram-compatible API (http://host:port). When
    /// given, no simulator starts.
    #[arg(long)]
    pub target: Option<String>,
    /// Ids to track, e.g. `1000000..=1999999` or `1000000..1000100,1500000`.
    /// Replaces the tracked set saved in the data folder.
    #[arg(long)]
    pub ids: Option<String>,
    /// Poll interval, e.g. `60s`.
    #[arg(long)]
    pub interval: Option<String>,
    /// When the target cannot keep up: `stretch` (every id read in turn,
    /// less often) or `skip` (the grid stays, slots are missed). Replaces
    /// the job file's `overload`.
    #[arg(long)]
    pub overload: Option<String>,
    /// Data folder (store, tracked set).
    #[arg(long, default_value = "trawler-data")]
    pub data: PathBuf,
    /// API address. Anything but loopback requires --api-token.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Bearer token required by state-changing endpoints.
    #[arg(long, env = "TRAWLER_API_TOKEN", hide_env_values = true)]
    pub api_token: Option<String>,
    /// How much lower than the crawl the API's threads run (Linux nice,
    /// 0–19): readers get the CPU the crawl leaves. 0 = equal priority.
    #[arg(long, default_value_t = trawler_api::runtime::DEFAULT_NICE,
          value_parser = clap::value_parser!(i32).range(0..=19))]
    pub api_nice: i32,
    /// Check every account's suspicious status once per this period.
    #[arg(long, default_value = "24h", value_parser = parse_duration)]
    pub suspicious_period: Duration,
    /// Do not run the suspicious-status enrichment.
    #[arg(long)]
    pub no_suspicious: bool,
    /// Dynamics of the built-in simulator: mockstagram or realistic.
    #[arg(long, default_value = "mockstagram")]
    pub sim_dynamics: trawler_sim::Dynamics,
    /// Seed of the built-in simulator.
    #[arg(long, default_value_t = 0)]
    pub sim_seed: u64,
    /// Scale of the built-in simulator's is_suspicious delay (1 = N(1 s, 1 s)).
    #[arg(long, default_value_t = 1.0)]
    pub sim_suspicious_delay_scale: f64,
    /// How long requests in flight may finish at shutdown.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub grace: Duration,
    /// Keep stored samples this long; older day blocks are dropped whole.
    #[arg(long, default_value = "30d", value_parser = parse_duration)]
    pub retention: Duration,
    /// The durability window against power loss: the write-ahead log is
    /// fsynced at least this often (a stored batch survives a crash of the
    /// process as soon as it is written). `0s` fsyncs every batch before it
    /// is acknowledged.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub fsync_interval: Duration,
    /// Run as one node of a cluster: NATS servers, comma-separated
    /// (`nats://127.0.0.1:4222,nats://…`). Needs --store and --target.
    #[arg(long, help_heading = "Cluster mode")]
    pub cluster: Option<String>,
    /// Where a cluster stores series: `victoriametrics=http://HOST:PORT`.
    #[arg(long, help_heading = "Cluster mode")]
    pub store: Option<String>,
    /// This node's name in the cluster (default: host name and pid).
    #[arg(long, help_heading = "Cluster mode")]
    pub node_id: Option<String>,
    /// Shards the ids are split into (default 256; the same on every node).
    #[arg(long, help_heading = "Cluster mode")]
    pub shards: Option<u32>,
    /// A dead node's shards are taken over after about this (default 5s).
    #[arg(long, value_parser = parse_duration, help_heading = "Cluster mode")]
    pub lease_ttl: Option<Duration>,
    /// Shift trawler's clock, e.g. `+55m` or `-2h`, for soak tests that must
    /// cross a clock hour or midnight soon after they start. Samples are
    /// stamped with the shifted time.
    #[arg(long, value_parser = parse_offset, allow_hyphen_values = true, help_heading = "Testing")]
    pub clock_offset: Option<i64>,
}

/// `+55m`, `-2h`, `30s`: a signed duration in milliseconds.
fn parse_offset(s: &str) -> Result<i64, String> {
    let (sign, rest) = match s.strip_prefix('-') {
        Some(rest) => (-1, rest),
        None => (1, s.strip_prefix('+').unwrap_or(s)),
    };
    let d = parse_duration(rest)?;
    Ok(sign * d.as_millis() as i64)
}

/// Runs the job until Ctrl-C or SIGTERM.
pub fn run(args: Args) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    // The API on threads of its own, below the crawl in priority: readers
    // take what the crawl leaves (see trawler_api::runtime).
    let api_runtime =
        trawler_api::runtime::runtime(trawler_api::runtime::DEFAULT_THREADS, args.api_nice)
            .context("starting the API's tokio runtime")?;
    let result = runtime.block_on(run_async(args, api_runtime.handle().clone()));
    api_runtime.shutdown_timeout(Duration::from_secs(1));
    result
}

/// Binds the API's address (std, so that the API's runtime can own it).
fn bind_api(listen: std::net::SocketAddr) -> anyhow::Result<std::net::TcpListener> {
    std::net::TcpListener::bind(listen).with_context(|| format!("binding the API to {listen}"))
}

/// Unix time in milliseconds (with `--clock-offset`).
pub fn now_ms() -> i64 {
    trawler_crawl::clock::unix_ms()
}

/// Largest id range the built-in simulator is started for.
const MAX_SIM_ACCOUNTS: u64 = 20_000_000;

async fn run_async(args: Args, api_runtime: tokio::runtime::Handle) -> anyhow::Result<()> {
    if let Some(offset) = args.clock_offset {
        trawler_crawl::clock::set_offset_ms(offset);
        tracing::warn!(
            offset_ms = offset,
            "the clock is shifted (--clock-offset): samples carry the shifted time"
        );
    }
    let config = match &args.config {
        Some(path) => JobConfig::load(path)?,
        None => JobConfig::from_toml(DEFAULT_JOB, "jobs/mockstagram.toml (built in)")?,
    };
    if let Some(settings) = cluster::settings(&args, &config)? {
        // Every node must poll the same target; the tracked set is the
        // job's (or --ids), identical on every node.
        let target = args.target.clone();
        if target.is_none() && args.config.is_none() {
            bail!("cluster mode needs --target http://HOST:PORT (or a job file whose url names the target): every node must poll the same API");
        }
        let overrides = Overrides {
            target,
            ids: args.ids.clone(),
            interval: args.interval.clone(),
            overload: args.overload.clone(),
        };
        let job = config.build_with(&overrides)?;
        return cluster::run(args, job, settings, api_runtime).await;
    }
    std::fs::create_dir_all(&args.data)
        .with_context(|| format!("creating the data folder {}", args.data.display()))?;
    let tracked_file = IdSetFile::new(args.data.join("tracked.ids"));
    let invalid_file = IdSetFile::new(args.data.join("invalid.ids"));

    // The tracked set: --ids, else the set saved by the last run (minus ids
    // the target said do not exist), else the job's.
    let mut overrides = Overrides {
        target: args.target.clone(),
        ids: args.ids.clone(),
        interval: args.interval.clone(),
        overload: args.overload.clone(),
    };
    if overrides.ids.is_none() {
        if let Some(saved) = tracked_file.load()? {
            let invalid = invalid_file.load()?.unwrap_or_default();
            let resumed: IdSet = saved.iter().filter(|id| !invalid.contains(*id)).collect();
            tracing::info!(ids = resumed.len(), file = %tracked_file.path().display(), "resuming the saved tracked set");
            overrides.ids = Some(resumed.to_string());
        }
    }
    let mut job = config.build_with(&overrides)?;

    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };

    // The built-in simulator, when no target is given.
    let mut sim_task = None;
    if args.target.is_none() {
        let (first, last) = match (job.ids().ranges().first(), job.ids().ranges().last()) {
            (Some(f), Some(l)) => (f.0, l.1),
            _ => (1_000_000, 1_000_000),
        };
        let accounts = last - first + 1;
        if accounts > MAX_SIM_ACCOUNTS {
            bail!("the ids span {accounts} accounts, more than the built-in simulator serves ({MAX_SIM_ACCOUNTS}); use --target");
        }
        let sim = trawler_sim::SimConfig {
            accounts: accounts as u32,
            first_pk: first,
            seed: args.sim_seed,
            dynamics: args.sim_dynamics,
            faults: trawler_sim::Faults {
                suspicious_delay_scale: args.sim_suspicious_delay_scale,
                ..Default::default()
            },
            ..Default::default()
        }
        .build()?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        tracing::info!(%addr, accounts, first_pk = first, threshold = sim.accounts().threshold(), "built-in simulator started");
        let stop = stopped();
        sim_task = Some(tokio::spawn(async move { sim.serve(listener, stop).await }));
        overrides.target = Some(format!("http://{addr}"));
        job = config.build_with(&overrides)?;
    }
    let target = overrides.target.clone().unwrap_or_default();

    // Store, then views from the store, then the crawl.
    let layout = Layout::of(&job)?;
    let store_dir = args.data.join("store");
    let progress = crate::progress::spinner("opening the store");
    let mut store_config = StoreConfig::new(store_dir);
    store_config.retention = args.retention;
    store_config.sync = if args.fsync_interval.is_zero() {
        SyncPolicy::Always
    } else {
        SyncPolicy::Interval(args.fsync_interval)
    };
    let store = tokio::task::spawn_blocking(move || store_config.open())
        .await?
        .context("opening the store")?;
    let store = Arc::new(store);
    progress.set_message("rebuilding the live views");
    let views = layout.views.build()?;
    let started = std::time::Instant::now();
    let rebuilt = {
        let (store, views, layout, ids, name) = (
            store.clone(),
            views,
            layout.clone(),
            job.ids().clone(),
            job.name().to_owned(),
        );
        tokio::task::spawn_blocking(move || {
            node::rebuild_views(&store, &views, &layout, &name, &ids).map(|n| (n, views))
        })
        .await??
    };
    let (rebuilt, views) = rebuilt;
    progress.finish_and_clear();
    tracing::info!(
        entities = rebuilt,
        ms = started.elapsed().as_millis() as u64,
        "live views rebuilt"
    );

    // Crawl and ingest are decoupled by a buffer of about 30 s of the
    // job's observations: when ingest is briefly slow they queue here
    // instead of holding slot tasks (which would stop dispatch and miss
    // slots). Its depth is in /metrics.
    let per_second = job.ids().len() as f64 / job.interval().as_secs_f64().max(0.001);
    let buffer = ((per_second * 30.0) as usize).clamp(65_536, 4_000_000);
    let (events_tx, events_rx) = mpsc::channel(buffer);
    let crawl = trawler_crawl::start_http(job.clone(), events_tx)?;
    let node = Arc::new(Node::new(
        job.name().to_owned(),
        layout,
        store.clone(),
        views,
        crawl,
        tracked_file,
        invalid_file,
    ));
    node.save_state()?;
    {
        let node = node.clone();
        tokio::task::spawn_blocking(move || {
            let started = std::time::Instant::now();
            let restored = node.restore_references(now_ms());
            tracing::info!(
                entities = restored,
                ms = started.elapsed().as_millis() as u64,
                "movers' references restored from the store"
            );
        });
    }
    let ingest = tokio::spawn(node::ingest_events(node.clone(), events_rx));
    let averages = tokio::spawn(node::record_averages(
        node.clone(),
        job.interval().min(Duration::from_secs(60)),
    ));

    // The suspicious-status enrichment, with its own pool and budget.
    let mut verdicts_task = None;
    if !args.no_suspicious {
        let enrichment = trawler_enrich::EnrichConfig {
            url: format!(
                "{}/api/v1/{}/is_suspicious",
                target.trim_end_matches('/'),
                job.name()
            ),
            period: args.suspicious_period,
            ..Default::default()
        }
        .build()?;
        let (verdicts_tx, verdicts_rx) = mpsc::channel(4_096);
        let (handle, _task) = enrichment.spawn(
            job.ids().iter(),
            Arc::new(node::SuspiciousInputs::new(node.clone())),
            verdicts_tx,
            stop_rx.clone(),
        );
        node.set_enrich(handle);
        verdicts_task = Some(tokio::spawn(node::ingest_verdicts(
            node.clone(),
            verdicts_rx,
        )));
    }

    // The API.
    let api = trawler_api::ApiConfig {
        listen: args.listen,
        token: args.api_token.clone(),
        ..Default::default()
    }
    .build(Arc::new(backend::NodeBackend::new(node.clone())))?;
    let listener = bind_api(args.listen)?;
    let api_addr = listener.local_addr()?;
    tracing::info!(addr = %api_addr, job = job.name(), target, "API listening");
    // Machine-readable, for scripts and tests that asked for port 0.
    println!("listening on http://{api_addr}");
    let api_task = api.spawn_on(&api_runtime, listener, stopped())?;

    // Status until a signal.
    let mut display = status::Display::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let signal = shutdown_signal();
    tokio::pin!(signal);
    loop {
        tokio::select! {
            _ = &mut signal => break,
            _ = tick.tick() => display.update(&status::snapshot(&node)),
        }
    }
    display.finish();

    tracing::info!("shutting down");
    let _ = stop_tx.send(true);
    let report = node.crawl.shutdown(args.grace).await;
    let _ = ingest.await;
    averages.abort();
    if let Some(task) = verdicts_task {
        task.abort();
    }
    // Event streams end at shutdown; a client that stopped reading could
    // still hold its connection, so the API gets the grace period and no more.
    if tokio::time::timeout(args.grace, api_task).await.is_err() {
        tracing::warn!(grace = ?args.grace, "API connections still open after the grace period; closing them");
    }
    if let Some(task) = sim_task {
        let _ = task.await;
    }
    node.save_state()?;
    let store_stats = store.stats();
    tokio::task::spawn_blocking(move || store.sync())
        .await?
        .context("syncing the store")?;
    tracing::info!(
        polls = report.metrics.polls_ok,
        abandoned = report.abandoned,
        samples = store_stats.samples,
        "stopped; everything acknowledged is durable"
    );
    Ok(())
}
