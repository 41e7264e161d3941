//! `trawler run`: the main job. Resolves the flags and the job file into
//! one [`NodeConfig`], starts the runtimes and hands over to
//! [`trawler_node::run`]; shows the status line until a signal.

mod status;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use trawler_crawl::Overrides;
use trawler_node::{ClusterFlags, Flags, NodeConfig, SimSettings};

use crate::cli::mockstagram::{parse_duration, shutdown_signal};

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
    /// Ask the job's enrichment about every entity once per this period
    /// (replaces the job file's `period`; Mockstagram's suspicious check).
    #[arg(long, alias = "suspicious-period", value_parser = parse_duration)]
    pub enrichment_period: Option<Duration>,
    /// Do not run the job's enrichment.
    #[arg(long, alias = "no-suspicious")]
    pub no_enrichment: bool,
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
    /// PromQL: most series one selector may load (a query above gets a
    /// 422 naming the limit).
    #[arg(long, default_value_t = 100_000, help_heading = "Prometheus API")]
    pub promql_max_series: usize,
    /// PromQL: most samples one selector may load.
    #[arg(long, default_value_t = 50_000_000, help_heading = "Prometheus API")]
    pub promql_max_samples: usize,
    /// PromQL: the longest a query may run (503 `timeout` beyond; a
    /// request's `timeout` may lower it).
    #[arg(long, default_value = "2m", value_parser = parse_duration, help_heading = "Prometheus API")]
    pub promql_timeout: Duration,
    /// Remote write: most series in one request (400 beyond).
    #[arg(long, default_value_t = 100_000, help_heading = "Prometheus API")]
    pub remote_write_max_series: usize,
    /// Run as one node of a cluster: NATS servers, comma-separated
    /// (`nats://127.0.0.1:4222,nats://…`). Needs --store and --target; a
    /// top-N stream job needs neither (its keys are sharded over the nodes,
    /// docs/TOPN.md).
    #[arg(long, help_heading = "Cluster mode")]
    pub cluster: Option<String>,
    /// Where a cluster stores series: `victoriametrics=http://HOST:PORT`.
    #[arg(long, help_heading = "Cluster mode")]
    pub store: Option<String>,
    /// This node's name in the cluster (default: host name and pid).
    #[arg(long, help_heading = "Cluster mode")]
    pub node_id: Option<String>,
    /// Shards the ids (or a top-N job's keys) are split into (default 256;
    /// the same on every node).
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
    /// A stream job reading a file stops once the file is done (default:
    /// it keeps serving the API).
    #[arg(long)]
    pub exit_when_done: bool,
    /// A stream job fed over HTTP: also run the job's built-in generator
    /// (`[stream] generator`, e.g. `expo`) at this many events/s against
    /// the job's own endpoint. The one-command demo.
    #[arg(long, value_name = "EVENTS_PER_S")]
    pub gen: Option<f64>,
}

impl Args {
    /// The Prometheus API's limits from the flags.
    fn prometheus(&self) -> trawler_api::prom::PromSettings {
        let mut p = trawler_api::prom::PromSettings::default();
        p.engine.limits.max_series = self.promql_max_series.max(1);
        p.engine.limits.max_samples = self.promql_max_samples.max(1);
        p.engine.timeout = self.promql_timeout;
        p.write.max_series = self.remote_write_max_series.max(1);
        p
    }
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

impl Args {
    /// The one resolved configuration: these flags over the job file.
    pub fn resolve(&self) -> anyhow::Result<NodeConfig> {
        let flags = Flags {
            config: self.config.clone(),
            overrides: Overrides {
                target: self.target.clone(),
                ids: self.ids.clone(),
                interval: self.interval.clone(),
                overload: self.overload.clone(),
            },
            cluster: ClusterFlags {
                servers: self.cluster.clone(),
                store: self.store.clone(),
                node_id: self.node_id.clone(),
                shards: self.shards,
                lease_ttl: self.lease_ttl,
            },
        };
        let mut config = NodeConfig::resolve(&flags)?;
        config.data = self.data.clone();
        config.listen = self.listen;
        config.api_token = self.api_token.clone();
        config.enrichment = !self.no_enrichment;
        config.enrichment_period = self.enrichment_period;
        config.simulator = SimSettings {
            dynamics: self.sim_dynamics,
            seed: self.sim_seed,
            suspicious_delay_scale: self.sim_suspicious_delay_scale,
        };
        config.grace = self.grace;
        config.retention = self.retention;
        config.fsync_interval = self.fsync_interval;
        config.prometheus = self.prometheus();
        Ok(config)
    }
}

/// Runs the job until Ctrl-C or SIGTERM.
pub fn run(args: Args) -> anyhow::Result<()> {
    if let Some(offset) = args.clock_offset {
        trawler_crawl::clock::set_offset_ms(offset);
        tracing::warn!(
            offset_ms = offset,
            "the clock is shifted (--clock-offset): samples carry the shifted time"
        );
    }
    if let Some(path) = args.config.as_deref() {
        let kind = std::fs::read_to_string(path)
            .ok()
            .and_then(|t| toml::from_str::<toml::Value>(&t).ok())
            .and_then(|v| v.get("job")?.get("kind")?.as_str().map(str::to_owned));
        if kind.as_deref() == Some("batch") {
            anyhow::bail!(
                "{}: [job] kind = \"batch\": a batch job ends when its list is done; run it with `trawler crawl --config {}`",
                path.display(),
                path.display()
            );
        }
    }
    if let Some(job) = args
        .config
        .as_deref()
        .map(trawler_node::stream::load_if_stream)
        .transpose()?
        .flatten()
    {
        return run_stream(&args, job);
    }
    let config = args.resolve()?;
    let (runtime, api_runtime) = runtimes(args.api_nice)?;
    let mut display = status::Display::new();
    let result = runtime.block_on(trawler_node::run(
        config,
        api_runtime.handle().clone(),
        shutdown_signal(),
        |snapshot| display.update(snapshot),
    ));
    display.finish();
    api_runtime.shutdown_timeout(Duration::from_secs(1));
    Ok(result?)
}

/// `--gen RATE`: checks that the job can be fed (HTTP source, a known
/// generator), then feeds it on a thread of its own once its API answers.
/// The thread ends with the process.
fn start_generator(args: &Args, job: &trawler_stream::StreamJob, rate: f64) -> anyhow::Result<()> {
    let file = args
        .config
        .as_deref()
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    if !(rate > 0.0 && rate.is_finite()) {
        anyhow::bail!("--gen {rate}: expected a number of events per second above 0");
    }
    if !matches!(job.source, trawler_stream::Source::Http) {
        anyhow::bail!("--gen needs a job fed over HTTP; {file}: [stream] source is not \"http\"");
    }
    let generator = match job.generator.as_deref() {
        Some(g) if crate::gen::GENERATORS.contains(&g) => g.to_owned(),
        Some(g) => anyhow::bail!(
            "{file}: [stream] generator = {g:?}: no such generator (known: {})",
            crate::gen::GENERATORS.join(", ")
        ),
        None => anyhow::bail!(
            "--gen: {file} names no generator; add e.g. generator = \"expo\" to its [stream] section"
        ),
    };
    if args.listen.port() == 0 {
        anyhow::bail!("--gen needs a fixed --listen port to post to, not port 0");
    }
    // Post to loopback when the API listens on every address.
    let mut addr = args.listen;
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let url = format!("http://{addr}/api/v1/streams/{}/events", job.name);
    let token = args.api_token.clone();
    std::thread::Builder::new()
        .name("gen".into())
        .spawn(move || {
            // The node opens its log and store before it listens.
            let deadline = std::time::Instant::now() + Duration::from_secs(120);
            while std::net::TcpStream::connect(addr).is_err() {
                if std::time::Instant::now() > deadline {
                    tracing::error!(%addr, "--gen: the API never answered; no events generated");
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            tracing::info!(%generator, rate, %url, "feeding the job from its built-in generator");
            if let Err(e) = crate::gen::feed(&generator, rate, &url, token) {
                tracing::error!(error = %format!("{e:#}"), "--gen: the generator stopped");
            }
        })
        .context("starting the generator's thread")?;
    Ok(())
}

/// The node's runtime, and the API's on threads of its own, below the
/// node's work in priority: readers take what the crawl or the stream
/// leaves (see trawler_api::runtime).
fn runtimes(api_nice: i32) -> anyhow::Result<(tokio::runtime::Runtime, tokio::runtime::Runtime)> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    let api_runtime =
        trawler_api::runtime::runtime(trawler_api::runtime::DEFAULT_THREADS, api_nice)
            .context("starting the API's tokio runtime")?;
    Ok((runtime, api_runtime))
}

/// Runs a stream job (`[job] kind = "stream"`) until Ctrl-C or SIGTERM, or
/// until its file is read.
fn run_stream(args: &Args, job: std::sync::Arc<trawler_stream::StreamJob>) -> anyhow::Result<()> {
    let api = trawler_api::ApiConfig {
        listen: args.listen,
        token: args.api_token.clone(),
        prometheus: args.prometheus(),
        ..trawler_api::ApiConfig::default()
    };
    let cluster = trawler_node::config::ClusterFlags {
        servers: args.cluster.clone(),
        store: args.store.clone(),
        node_id: args.node_id.clone(),
        shards: args.shards,
        lease_ttl: args.lease_ttl,
    }
    .for_stream()?;
    if let Some(rate) = args.gen {
        start_generator(args, &job, rate)?;
    }
    let config = trawler_node::stream::StreamConfig {
        job,
        data: args.data.clone(),
        api,
        retention: args.retention,
        serve_after_file: !args.exit_when_done,
        cluster,
    };
    let (runtime, api_runtime) = runtimes(args.api_nice)?;
    let result = runtime.block_on(trawler_node::stream::run(
        config,
        api_runtime.handle().clone(),
        shutdown_signal(),
    ));
    api_runtime.shutdown_timeout(Duration::from_secs(1));
    Ok(result?)
}
