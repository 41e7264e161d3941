//! `trawler bench api`: the query API under load while the flagship job
//! crawls, and the crawl rate with the suspicious enrichment on and off.
//!
//! Runs the real `trawler run` (this binary, as a child process) with the
//! built-in simulator and 1,000,000 accounts every minute, waits until every
//! account has been crawled once, then points `wrk` at
//! `GET /api/v1/influencers/{random pk}` and at `/stats`, reading the crawl
//! rate from the API while the load runs. A second child without the
//! enrichment gives the crawl rate to compare.

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::{Duration, Instant};

use super::child::{self, get_json, Listening, TempDir};
use super::sim::{ensure_wrk, wrk, WrkReport};

/// Options of the API benchmark.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Accounts tracked (from pk 1000000).
    #[arg(long, default_value_t = 1_000_000)]
    pub accounts: u64,
    /// Seconds of wrk per endpoint.
    #[arg(long, default_value_t = 20)]
    pub wrk_seconds: u64,
    /// Seconds over which each crawl rate is measured.
    #[arg(long, default_value_t = 30)]
    pub measure_seconds: u64,
    /// wrk connections.
    #[arg(long, default_value_t = 32)]
    pub connections: u32,
    /// The API threads' nice value in the child (`trawler run --api-nice`);
    /// 0 gives the API the crawl's priority, for comparison.
    #[arg(long, default_value_t = trawler_api::runtime::DEFAULT_NICE)]
    pub api_nice: i32,
}

struct Run {
    process: Listening,
    api: SocketAddr,
    _data: TempDir,
}

fn start(args: &Args, enrich: bool, tag: &str) -> anyhow::Result<Run> {
    let data = TempDir::new(&format!("api-{tag}"));
    let ids = format!("1000000..={}", 1_000_000 + args.accounts - 1);
    let mut cmd = child::this_binary()?;
    cmd.args(["run", "--listen", "127.0.0.1:0", "--ids", &ids, "--data"])
        .arg(&data.0)
        .args(["--api-nice", &args.api_nice.to_string()])
        .env("RUST_LOG", "warn")
        .stderr(Stdio::null());
    if !enrich {
        cmd.arg("--no-suspicious");
    }
    let process = Listening::start(cmd, "trawler run")?;
    Ok(Run {
        api: process.addr,
        process,
        _data: data,
    })
}

/// Polls/s and process CPU over `seconds`.
fn crawl_rate(run: &Run, seconds: u64) -> anyhow::Result<(f64, f64)> {
    let polls = |api| -> anyhow::Result<f64> {
        Ok(get_json(api, "/api/v1/influencers/stats")?["polls"]
            .as_f64()
            .unwrap_or(0.0))
    };
    let cpu = || child::cpu_seconds(run.process.pid());
    let (p0, c0, t0) = (polls(run.api)?, cpu(), Instant::now());
    std::thread::sleep(Duration::from_secs(seconds));
    let (p1, c1, dt) = (polls(run.api)?, cpu(), t0.elapsed().as_secs_f64());
    Ok(((p1 - p0) / dt, 100.0 * (c1 - c0) / dt))
}

fn load(
    args: &Args,
    run: &Run,
    path: &str,
    script: Option<&std::path::Path>,
) -> anyhow::Result<(WrkReport, f64)> {
    let wrk_args = super::sim::Args {
        accounts: 0,
        duration: args.wrk_seconds,
        connections: args.connections,
        wrk_threads: 1,
        workers: None,
        reference_node: false,
    };
    let before = get_json(run.api, "/api/v1/influencers/stats")?["polls"]
        .as_f64()
        .unwrap_or(0.0);
    let t0 = Instant::now();
    let report = wrk(&wrk_args, &format!("http://{}{path}", run.api), script)?;
    let after = get_json(run.api, "/api/v1/influencers/stats")?["polls"]
        .as_f64()
        .unwrap_or(0.0);
    Ok((report, (after - before) / t0.elapsed().as_secs_f64()))
}

/// Runs the benchmark and prints its figures.
pub fn run(args: Args) -> anyhow::Result<()> {
    ensure_wrk()?;
    println!(
        "API benchmark: trawler run with {} accounts every 60 s, built-in simulator, API threads at nice {}",
        args.accounts, args.api_nice
    );
    let schedule = args.accounts as f64 / 60.0;
    let run = start(&args, true, "on")?;
    child::wait_crawled(run.api, args.accounts)?;
    let (idle_rate, idle_cpu) = crawl_rate(&run, args.measure_seconds)?;
    println!("crawl with enrichment on, no API load: {idle_rate:.0} polls/s, process CPU {idle_cpu:.0} %");

    let script = std::env::temp_dir().join(format!("trawler-bench-api-{}.lua", std::process::id()));
    std::fs::write(
        &script,
        format!(
            "math.randomseed(7)\nrequest = function()\n  return wrk.format(\"GET\", \"/api/v1/influencers/\" .. math.random(1000000, {}))\nend\n",
            1_000_000 + args.accounts - 1
        ),
    )?;
    let (entity, entity_crawl) = load(&args, &run, "/api/v1/influencers/1000000", Some(&script))?;
    let (stats, stats_crawl) = load(&args, &run, "/api/v1/influencers/stats", None)?;
    let _ = std::fs::remove_file(&script);
    for (name, r, crawl) in [
        ("GET /{random pk}", &entity, entity_crawl),
        ("GET /stats", &stats, stats_crawl),
    ] {
        println!(
            "{name:>17}: {:>8.0} req/s  p50 {:.2} ms  p99 {:.2} ms  non-2xx {}  | crawl during load {crawl:.0} polls/s ({:.1} % of the schedule)",
            r.requests_per_sec, r.p50_ms, r.p99_ms, r.non_2xx, 100.0 * crawl / schedule
        );
    }
    drop(run);

    let run = start(&args, false, "off")?;
    child::wait_crawled(run.api, args.accounts)?;
    let (off_rate, off_cpu) = crawl_rate(&run, args.measure_seconds)?;
    drop(run);
    println!(
        "crawl with enrichment off, no API load: {off_rate:.0} polls/s, process CPU {off_cpu:.0} %"
    );
    println!(
        "enrichment on vs off: {:+.2} % polls/s",
        100.0 * (idle_rate - off_rate) / off_rate
    );
    println!(
        "api: entity_rps={:.0} entity_p99_ms={:.2} stats_rps={:.0} stats_p99_ms={:.2} crawl_during_load={:.0} crawl_during_load_pct={:.1} crawl_enrich_on={idle_rate:.0} crawl_enrich_off={off_rate:.0} api_nice={}",
        entity.requests_per_sec, entity.p99_ms, stats.requests_per_sec, stats.p99_ms, entity_crawl.min(stats_crawl),
        100.0 * entity_crawl.min(stats_crawl) / schedule, args.api_nice
    );
    Ok(())
}
