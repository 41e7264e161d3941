//! `trawler crawl`: a batch job (`trawler_batch`) from flags or a job file,
//! with its progress on stderr, `/metrics`, the JSON API and the dashboard
//! page:
//!
//! * `GET /api/v1/batch` — the job this process runs;
//! * `GET /api/v1/batch/{job}` — its figures (`trawler_batch::Status`);
//! * `GET /api/v1/batch/{job}/hosts?limit=N` — the `N` busiest hosts
//!   (default 20, at most the table's bound) and the rest in one row
//!   (`trawler_batch::progress::hosts::HostsAnswer`);
//! * `/` — the dashboard page (`trawler_api::batch_dashboard`), which reads
//!   the two above every second.
//!
//! Without `--urls` or a job file's list, and with `--sim`, the built-in
//! image simulator starts on a loopback port and the job crawls it: every
//! host is connected to it and its detector is the enrichment. Without any
//! list, a demo list (`--demo-urls`, default 100,000 lines) is generated
//! into the data folder first — one command for a new user.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use std::collections::HashMap;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use trawler_api::ApiError;
use trawler_batch::progress::hosts::TABLE_HOSTS;
use trawler_batch::spec::DetectorSection;
use trawler_batch::{BatchJobConfig, Progress};
use trawler_sim::images::{ImagesConfig, UrlMix};

use crate::cli::mockstagram::{parse_duration, shutdown_signal};

/// Crawl a list of image URLs: download, decode, thumbnail, perceptual
/// hash, batched face detection, Parquet results — each URL exactly once,
/// resumable after a crash (run the same command again).
///
/// Writes into `--data`: `results/part-*.parquet`, `dead.ndjson` (dead
/// letters with their last error), `summary.json`, and its state
/// (`batch.log`, `input`, `job`). Ends with a `batch: …` summary line on
/// stdout.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// URL lists: files, folders or `s3://bucket/prefix` (every object
    /// under it, in key order), plain text or NDJSON, gzip or not.
    #[arg(long)]
    pub urls: Vec<PathBuf>,
    /// A batch job file (`[job] kind = "batch"`, see jobs/images.toml);
    /// flags override its keys.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Data folder of the job (state and results).
    #[arg(long, default_value = "batch-data")]
    pub data: PathBuf,
    /// Start the built-in image simulator and crawl it (implied when no
    /// list is given).
    #[arg(long)]
    pub sim: bool,
    /// Lines of the demo list generated when no list is given.
    #[arg(long, default_value_t = 100_000)]
    pub demo_urls: u64,
    /// Connect every host to this address (the `Host` header keeps the
    /// URL's host), e.g. a `trawler sim images` on 127.0.0.1:3100.
    #[arg(long)]
    pub connect_to: Option<SocketAddr>,
    /// A PEM file of CA certificates trusted for `https://` URLs besides
    /// the built-in roots (private hosts, a test server).
    #[arg(long)]
    pub ca_file: Option<PathBuf>,
    /// The batch detector's URL (`http://127.0.0.1:3100/detect`).
    #[arg(long, conflicts_with = "no_detector")]
    pub detector: Option<String>,
    /// No detector, even the simulator's or the job file's.
    #[arg(long)]
    pub no_detector: bool,
    /// Requests in flight per host.
    #[arg(long)]
    pub per_host: Option<usize>,
    /// Requests per second per host.
    #[arg(long)]
    pub per_host_rate: Option<f64>,
    /// URLs in flight in all.
    #[arg(long)]
    pub max_in_flight: Option<usize>,
    /// Attempts of a URL whose errors may pass.
    #[arg(long)]
    pub max_attempts: Option<u32>,
    /// First retry delay, doubled at each attempt (e.g. `200ms`).
    #[arg(long)]
    pub backoff: Option<String>,
    /// URLs per segment.
    #[arg(long)]
    pub segment_urls: Option<u64>,
    /// A results file is committed after this long (e.g. `5s`).
    #[arg(long)]
    pub roll_after: Option<String>,
    /// Address of `/metrics` and `/api/v1/batch/{job}` (port 0: any).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// At Ctrl-C/SIGTERM, how long URLs in flight may finish.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub grace: Duration,
    /// Latency of the built-in simulator's slow hosts.
    #[arg(long, default_value = "200ms", value_parser = parse_duration)]
    pub sim_slow_latency: Duration,
    /// Latency of the built-in simulator's detector.
    #[arg(long, default_value = "20ms", value_parser = parse_duration)]
    pub sim_detector_latency: Duration,
    /// Run as one node of a cluster: NATS servers, comma-separated
    /// (`nats://127.0.0.1:4222,nats://…`). Every node reads the same list
    /// and leases segments of it; needs --output.
    #[arg(long, help_heading = "Cluster mode", requires = "output")]
    pub cluster: Option<String>,
    /// Where results go besides --data: `s3://bucket/prefix` (each
    /// committed results file uploaded to `results/`, then `dead.ndjson`
    /// and `summary.json`). In cluster mode: the folder or `s3://` prefix
    /// every node shares (`results/seg-*.parquet`, `dead/seg-*.ndjson`);
    /// --data keeps only this node's lock, summary and temporary files.
    #[arg(long)]
    pub output: Option<String>,
    /// The S3-compatible server of `s3://` lists and output (e.g.
    /// `http://127.0.0.1:9000`; http is allowed). Credentials and region:
    /// the AWS environment variables.
    #[arg(long)]
    pub s3_endpoint: Option<String>,
    /// This node's name in the cluster (default: host name and pid).
    #[arg(long, help_heading = "Cluster mode", requires = "cluster")]
    pub node_id: Option<String>,
    /// A dead node's segment is taken over after about this (default 5s).
    #[arg(long, value_parser = parse_duration, help_heading = "Cluster mode", requires = "cluster")]
    pub lease_ttl: Option<Duration>,
}

/// Cluster mode's settings from the flags, checked.
fn cluster_run(args: &Args) -> anyhow::Result<Option<trawler_batch::ClusterRun>> {
    let (Some(servers), Some(output)) = (&args.cluster, &args.output) else {
        return Ok(None);
    };
    let servers = servers
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    let node_id = args.node_id.clone().unwrap_or_else(|| {
        let host = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
        let host: String = host
            .trim()
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
            .collect();
        format!(
            "{}-{}",
            if host.is_empty() { "node" } else { &host },
            std::process::id()
        )
    });
    // On S3 the shared output is the bucket; the segments' temporary
    // files stay in this node's data folder.
    let s3 = trawler_batch::remote::is_s3(output);
    let folder = if s3 {
        args.data.join("segments")
    } else {
        PathBuf::from(output)
    };
    let mut run = trawler_batch::ClusterRun::new(servers, node_id, args.lease_ttl, folder)
        .map_err(|e| anyhow::anyhow!("--cluster: {e}"))?;
    if s3 {
        run.remote = Some(output.clone());
    }
    Ok(Some(run))
}

/// The job config from the file and the flags (no simulator yet).
fn resolve(args: &Args) -> anyhow::Result<(BatchJobConfig, bool)> {
    let mut config = match &args.config {
        Some(path) => {
            let c = BatchJobConfig::load(path)?;
            if !args.urls.is_empty() {
                BatchJobConfig {
                    input: trawler_batch::spec::InputSection {
                        urls: args.urls.iter().map(|p| p.display().to_string()).collect(),
                        ..c.input.clone()
                    },
                    base: PathBuf::from("."),
                    ..c
                }
            } else {
                c
            }
        }
        None => BatchJobConfig::for_urls(&args.urls),
    };
    let demo = config.input.urls.is_empty();
    let sim = args.sim || demo;
    if demo {
        config.input.urls = vec![args.data.join("demo-urls.txt.gz").display().to_string()];
        config.base = PathBuf::from(".");
    }
    let h = &mut config.http;
    if let Some(v) = args.per_host {
        h.per_host_in_flight = v;
    }
    if args.per_host_rate.is_some() {
        h.per_host_rate = args.per_host_rate;
    }
    if let Some(v) = args.max_in_flight {
        h.max_in_flight = v;
    }
    if let Some(v) = args.max_attempts {
        h.max_attempts = v;
    }
    if let Some(v) = &args.backoff {
        h.backoff = v.clone();
    }
    if let Some(a) = args.connect_to {
        h.connect_to = Some(a.to_string());
    }
    if let Some(f) = &args.ca_file {
        // Relative to the working directory, not to a job file.
        let f = std::path::absolute(f).with_context(|| format!("--ca-file {}", f.display()))?;
        h.ca_file = Some(f.display().to_string());
    }
    if let Some(v) = args.segment_urls {
        config.input.segment_urls = v;
    }
    if let Some(v) = &args.roll_after {
        config.output.roll_after = v.clone();
    }
    if let Some(e) = &args.s3_endpoint {
        config.s3.endpoint = Some(e.clone());
    }
    match (&args.output, &args.cluster) {
        (Some(o), None) if trawler_batch::remote::is_s3(o) => {
            config.output.remote = Some(o.clone())
        }
        (Some(o), None) => bail!(
            "--output {o}: a folder output is for --cluster; one node writes its results into --data (or give --output s3://bucket/prefix)"
        ),
        _ => {}
    }
    if let Some(d) = &args.detector {
        config.detector = Some(match config.detector.take() {
            Some(mut s) => {
                s.url = d.clone();
                s
            }
            None => DetectorSection::with_url(d),
        });
    }
    if args.no_detector {
        config.detector = None;
    }
    if sim && (args.connect_to.is_some() || config.http.connect_to.is_some()) {
        bail!("--sim starts its own simulator: leave out --connect-to and [http] connect_to");
    }
    if sim && config.detector.is_none() && !args.no_detector {
        // A placeholder, replaced by the simulator's address once bound.
        config.detector = Some(DetectorSection::with_url("http://127.0.0.1:1/detect"));
    }
    if sim {
        config.http.connect_to = Some("127.0.0.1:1".into());
    }
    // Validate everything before starting anything.
    config.build()?;
    Ok((config, sim))
}

/// Runs `trawler crawl`.
pub fn run(args: Args) -> anyhow::Result<()> {
    let (mut config, sim) = resolve(&args)?;
    let cluster = cluster_run(&args)?;
    let demo_list = args.data.join("demo-urls.txt.gz");
    if config.input.urls == [demo_list.display().to_string()] && !demo_list.exists() {
        std::fs::create_dir_all(&args.data)
            .with_context(|| format!("creating {}", args.data.display()))?;
        let mix = UrlMix {
            count: args.demo_urls,
            hosts: 200,
            slow_hosts: 2,
            ..UrlMix::default()
        };
        let tmp = args.data.join("demo-urls.tmp.gz");
        crate::gen::urls::write(&mix, &tmp.display().to_string())?;
        std::fs::rename(&tmp, &demo_list)?;
        eprintln!(
            "crawl: generated {} demo URLs in {}",
            args.demo_urls,
            demo_list.display()
        );
    }
    let runtime = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
    runtime.block_on(async move {
        let (trigger, shutdown) = trawler_common::shutdown::channel();
        // The API first: a bad --listen fails before any request.
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("binding --listen {}", args.listen))?;
        let sim_task = if sim {
            let images = ImagesConfig {
                slow_latency: args.sim_slow_latency,
                detector_latency: args.sim_detector_latency,
                ..ImagesConfig::default()
            }
            .build()?;
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            let addr = l.local_addr()?;
            config.http.connect_to = Some(addr.to_string());
            if let Some(d) = &mut config.detector {
                if d.url == "http://127.0.0.1:1/detect" {
                    d.url = format!("http://{addr}/detect");
                }
            }
            eprintln!("crawl: built-in image simulator on http://{addr}");
            let mut stop = shutdown.clone();
            Some(tokio::spawn(async move {
                let _ = images.serve(l, async move { stop.wait().await }).await;
            }))
        } else {
            None
        };
        let job = config.build()?;
        let progress = Arc::new(Progress::new(&job.name));
        let addr = listener.local_addr()?;
        let app = Router::new()
            .route("/metrics", get(metrics))
            .route("/api/v1/batch", get(list))
            .route("/api/v1/batch/{job}", get(status))
            .route("/api/v1/batch/{job}/hosts", get(hosts))
            .fallback(|| async { ApiError::not_found("no_route", "no such route") })
            .with_state(progress.clone())
            .merge(trawler_api::batch_dashboard(&job.name));
        let mut api_stop = shutdown.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move { api_stop.wait().await })
                .await;
        });
        println!("listening on http://{addr}");
        let ticker = tokio::spawn(show_progress(progress.clone()));
        let batch = tokio::spawn({
            let data = args.data.clone();
            let progress = progress.clone();
            let grace = args.grace;
            async move {
                match cluster {
                    Some(c) => {
                        trawler_batch::run_cluster(job, &data, c, progress, shutdown, grace).await
                    }
                    None => trawler_batch::run(job, &data, progress, shutdown, grace).await,
                }
            }
        });
        let signal = tokio::spawn(async move {
            shutdown_signal().await;
            tracing::info!("stopping: finishing URLs in flight");
            trigger.trigger();
        });
        let summary = batch.await.context("the batch task panicked")??;
        ticker.abort();
        signal.abort();
        if let Some(s) = sim_task {
            s.abort();
        }
        if std::io::stderr().is_terminal() {
            eprintln!();
        }
        let s = &summary.status;
        let dead: Vec<String> = s
            .dead_by_kind
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(k, n)| format!("{k}:{n}"))
            .collect();
        eprintln!(
            "crawl: {} in {:.1}s · {} done, {} dead ({}), {} duplicates, {} finished earlier, {:.1} MB, {:.0} URLs/s · results in {}, dead letters in {}",
            if summary.interrupted { "interrupted" } else { "finished" },
            s.elapsed_s,
            s.done,
            s.dead,
            dead.join(" "),
            s.duplicates,
            s.finished_earlier,
            s.bytes as f64 / 1e6,
            s.urls_per_s,
            summary.results.display(),
            summary.dead_letters.display(),
        );
        println!(
            "batch: state={} lines={} done={} dead={} duplicates={} finished_earlier={} retries={} bytes={} seconds={:.3} urls_per_s={:.0} segments={}",
            if summary.interrupted { "interrupted" } else { "finished" },
            s.lines,
            s.done,
            s.dead,
            s.duplicates,
            s.finished_earlier,
            s.retries,
            s.bytes,
            s.elapsed_s,
            s.urls_per_s,
            s.segments_done,
        );
        Ok(())
    })
}

/// The progress line: redrawn every second on a terminal, a log line every
/// 10 s otherwise.
async fn show_progress(progress: Arc<Progress>) {
    let terminal = std::io::stderr().is_terminal();
    let period = Duration::from_secs(if terminal { 1 } else { 10 });
    let mut tick = tokio::time::interval(period);
    tick.tick().await;
    loop {
        tick.tick().await;
        let line = progress.status().line();
        if terminal {
            eprint!("\r\x1b[2K{line}");
        } else {
            tracing::info!("{line}");
        }
    }
}

async fn metrics(State(p): State<Arc<Progress>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        p.prometheus(),
    )
        .into_response()
}

async fn list(State(p): State<Arc<Progress>>) -> Response {
    axum::Json(serde_json::json!({ "jobs": [p.job] })).into_response()
}

fn known(p: &Progress, job: &str) -> Result<(), ApiError> {
    if job != p.job {
        return Err(ApiError::not_found(
            "not_found",
            format!("no batch job {job:?}; this process runs {:?}", p.job),
        ));
    }
    Ok(())
}

async fn status(
    State(p): State<Arc<Progress>>,
    UrlPath(job): UrlPath<String>,
) -> Result<Response, ApiError> {
    known(&p, &job)?;
    Ok(axum::Json(p.status()).into_response())
}

/// Hosts listed when no `limit` is given.
const DEFAULT_HOSTS: usize = 20;

async fn hosts(
    State(p): State<Arc<Progress>>,
    UrlPath(job): UrlPath<String>,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Response, ApiError> {
    known(&p, &job)?;
    let Query(query) =
        query.map_err(|e| ApiError::bad_request("bad_query", format!("malformed query: {e}")))?;
    if let Some(other) = query.keys().find(|k| *k != "limit") {
        return Err(ApiError::bad_request(
            "bad_query",
            format!("unknown parameter {other:?}: the only one is limit"),
        ));
    }
    let limit = match query.get("limit") {
        None => DEFAULT_HOSTS,
        Some(v) => match v.parse::<usize>() {
            Ok(n) if (1..=TABLE_HOSTS).contains(&n) => n,
            _ => {
                return Err(ApiError::bad_request(
                    "bad_limit",
                    format!("limit={v:?}: a whole number from 1 to {TABLE_HOSTS}"),
                ))
            }
        },
    };
    Ok(axum::Json(p.per_host.top(&p.job, limit)).into_response())
}
