//! `trawler bench crawl`: the crawler against the in-process simulator at
//! rising load, beside `wrk`'s ceiling on the same simulator.
//!
//! Each level runs the real crawler (the flagship job file, its target, ids
//! and interval replaced) for a fixed time and reports sustained polls/s,
//! lag percentiles, the crawler's own CPU (the simulator's threads are
//! subtracted) and the process RSS. The ceiling is what wrk gets from the
//! same simulator with 64 keep-alive connections: a crawler at half of it
//! is spending as much per request as a bare load generator.
//!
//! Then the overload case: the simulator limited to `--max-rps` (requests
//! beyond it queue, as at a saturated server) and a job asking twice that.
//! Under the default `stretch` policy it prints the rate achieved against
//! the limit, the effective interval, the lag on the stretched schedule
//! and how evenly the accounts were covered (samples per account; the
//! share within one sample of the median). The last line is
//! `overload: needed_per_s=… achieved_per_s=… limit_per_s=… fair_pct=…
//! effective_interval_s=…`.

use std::time::Duration;

use anyhow::Context;
use trawler_crawl::bench::{BenchArgs, BenchReport};
use trawler_crawl::JobConfig;

use crate::cli::mockstagram::parse_duration;

/// Options of the crawl benchmark.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Load levels as ACCOUNTS@INTERVAL, comma-separated. The flagship level
    /// is 1000000@60s (16,667 polls/s).
    #[arg(
        long,
        default_value = "100000@60s,500000@60s,1000000@60s,1000000@30s,1000000@15s,1000000@10s"
    )]
    pub levels: String,
    /// How long each level runs.
    #[arg(long, default_value = "40s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Seconds of wrk against the simulator for the ceiling.
    #[arg(long, default_value_t = 10)]
    pub wrk_seconds: u64,
    /// The overload case, ACCOUNTS@INTERVAL/MAX_RPS (the simulator serves
    /// MAX_RPS requests/s), or `none`.
    #[arg(long, default_value = "100000@10s/5000")]
    pub overload: String,
    /// How long the overload case runs (a few effective intervals).
    #[arg(long, default_value = "80s", value_parser = parse_duration)]
    pub overload_duration: Duration,
    /// How long the whole `trawler run` is measured (1,000,000 accounts
    /// every 60 s, the simulator in a process of its own) after its first
    /// full interval; 0s skips it.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub full_run: Duration,
}

/// What the whole `trawler run` cost.
struct FullRun {
    polls_per_sec: f64,
    cpu_pct: f64,
    sim_cpu_pct: f64,
    cpu_us_per_poll: f64,
    rss_mb: f64,
}

/// The whole flagship run, not only the crawler: `trawler run` (crawl,
/// ingest, store, views, enrichment, API) against `trawler mockstagram` in
/// a process of its own, CPU of each from /proc over `measure`.
fn full_run(measure: Duration) -> anyhow::Result<FullRun> {
    use super::child::{self, Listening, TempDir};
    use std::process::Stdio;
    let accounts = 1_000_000u64;
    let data = TempDir::new("crawl-full-run");
    let mut sim = child::this_binary()?;
    sim.args(["mockstagram", "--listen", "127.0.0.1:0", "--accounts"])
        .arg(accounts.to_string())
        .env("RUST_LOG", "warn")
        .stderr(Stdio::null());
    let sim = Listening::start(sim, "the simulator")?;
    let ids = format!("1000000..={}", 1_000_000 + accounts - 1);
    let mut run = child::this_binary()?;
    run.args(["run", "--listen", "127.0.0.1:0", "--ids", &ids, "--target"])
        .arg(format!("http://{}", sim.addr))
        .arg("--data")
        .arg(&data.0)
        .env("RUST_LOG", "warn")
        .stderr(Stdio::null());
    let run = Listening::start(run, "trawler run")?;
    child::wait_crawled(run.addr, accounts)?;
    let polls = || -> anyhow::Result<f64> {
        Ok(
            child::get_json(run.addr, "/api/v1/influencers/stats")?["polls"]
                .as_f64()
                .unwrap_or(0.0),
        )
    };
    let started = std::time::Instant::now();
    let (p0, c0, s0) = (
        polls()?,
        child::cpu_seconds(run.pid()),
        child::cpu_seconds(sim.pid()),
    );
    std::thread::sleep(measure);
    let (p1, c1, s1) = (
        polls()?,
        child::cpu_seconds(run.pid()),
        child::cpu_seconds(sim.pid()),
    );
    let seconds = started.elapsed().as_secs_f64();
    let polled = (p1 - p0).max(1.0);
    Ok(FullRun {
        polls_per_sec: polled / seconds,
        cpu_pct: 100.0 * (c1 - c0) / seconds,
        sim_cpu_pct: 100.0 * (s1 - s0) / seconds,
        cpu_us_per_poll: (c1 - c0) * 1e6 / polled,
        rss_mb: child::rss_mb(run.pid()),
    })
}

/// `ACCOUNTS@INTERVAL/MAX_RPS`, or `none`.
fn parse_overload(spec: &str) -> anyhow::Result<Option<(u32, Duration, f64)>> {
    if spec == "none" {
        return Ok(None);
    }
    let (level, rps) = spec
        .split_once('/')
        .with_context(|| format!("overload {spec:?}: expected ACCOUNTS@INTERVAL/MAX_RPS"))?;
    let (accounts, interval) = parse_levels(level)?
        .pop()
        .with_context(|| format!("overload {spec:?}: no level"))?;
    let rps: f64 = rps
        .parse()
        .ok()
        .filter(|r: &f64| *r > 0.0)
        .with_context(|| format!("overload {spec:?}: MAX_RPS must be a positive number"))?;
    Ok(Some((accounts, interval, rps)))
}

fn parse_levels(spec: &str) -> anyhow::Result<Vec<(u32, Duration)>> {
    spec.split(',')
        .map(|item| {
            let (accounts, interval) = item
                .trim()
                .split_once('@')
                .with_context(|| format!("level {item:?}: expected ACCOUNTS@INTERVAL"))?;
            let accounts = accounts
                .parse()
                .with_context(|| format!("level {item:?}: accounts"))?;
            let interval = parse_duration(interval).map_err(anyhow::Error::msg)?;
            Ok((accounts, interval))
        })
        .collect()
}

/// Runs every level, then the ceiling, and prints the figures.
pub fn run(args: Args) -> anyhow::Result<()> {
    let levels = parse_levels(&args.levels)?;
    let job = JobConfig::from_toml(
        trawler_node::DEFAULT_JOB,
        "jobs/mockstagram.toml (built in)",
    )?;
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    println!(
        "crawl benchmark: {} levels × {:?}, simulator in-process, {cores} cores",
        levels.len(),
        args.duration
    );
    println!(
        "{:>9} {:>8} {:>10} {:>10} {:>9} {:>9} {:>8} {:>7} {:>8} {:>8} {:>12}",
        "accounts",
        "interval",
        "target/s",
        "polls/s",
        "lag p50",
        "lag p99",
        "gaps",
        "missed",
        "cpu %",
        "rss MB",
        "B/account"
    );
    let runtime = tokio::runtime::Runtime::new()?;
    let mut reports: Vec<BenchReport> = Vec::new();
    for (accounts, interval) in levels {
        let bench = BenchArgs {
            accounts,
            interval,
            duration: args.duration,
            progress: None,
            ..BenchArgs::default()
        };
        let progress = crate::progress::spinner(&format!("{accounts} accounts every {interval:?}"));
        let r = runtime.block_on(trawler_crawl::bench::run(&job, &bench))?;
        progress.finish_and_clear();
        println!(
            "{:>9} {:>7}s {:>10.0} {:>10.0} {:>7.1}ms {:>7.1}ms {:>8} {:>7} {:>8.1} {:>8.0} {:>12.0}",
            r.accounts,
            r.interval_s,
            r.target_per_sec,
            r.polls_per_sec,
            r.lag_p50_ms,
            r.lag_p99_ms,
            r.gaps,
            r.missed,
            r.crawler_cpu_pct,
            r.rss_mb,
            r.rss_mb * 1e6 / r.accounts as f64
        );
        reports.push(r);
    }
    let overload = match parse_overload(&args.overload)? {
        Some((accounts, interval, max_rps)) => {
            let bench = BenchArgs {
                accounts,
                interval,
                duration: args.overload_duration,
                max_rps,
                progress: None,
                ..BenchArgs::default()
            };
            let progress = crate::progress::spinner(&format!(
                "overload: {accounts} accounts every {interval:?} against {max_rps} requests/s"
            ));
            let r = runtime.block_on(trawler_crawl::bench::run(&job, &bench))?;
            progress.finish_and_clear();
            Some(r)
        }
        None => None,
    };
    drop(runtime);
    let full = if args.full_run.is_zero() {
        None
    } else {
        let progress = crate::progress::spinner(
            "the whole trawler run: 1,000,000 accounts every 60 s, simulator in its own process",
        );
        let full = full_run(args.full_run)?;
        progress.finish_and_clear();
        println!(
            "whole trawler run (crawl, ingest, store, views, enrichment, API), 1M accounts / 60 s, simulator in its own process: \
             {:.0} polls/s, {:.1} % of a core = {:.1} µs CPU per poll, RSS {:.0} MB (simulator {:.1} % of a core)",
            full.polls_per_sec, full.cpu_pct, full.cpu_us_per_poll, full.rss_mb, full.sim_cpu_pct
        );
        Some(full)
    };
    let ceiling = super::sim::ceiling(1_000_000, args.wrk_seconds)?;
    let best = reports.iter().map(|r| r.polls_per_sec).fold(0.0, f64::max);
    println!(
        "wrk ceiling (random pks, 64 connections): {:.0} GET/s, p99 {:.2} ms",
        ceiling.requests_per_sec, ceiling.p99_ms
    );
    println!(
        "max sustained crawl: {best:.0} polls/s = {:.0} % of the wrk ceiling",
        100.0 * best / ceiling.requests_per_sec
    );
    // The summary line is the flagship level when it ran, else the busiest.
    let flagship = reports
        .iter()
        .find(|r| r.accounts == 1_000_000 && r.interval_s == 60.0)
        .or_else(|| {
            reports
                .iter()
                .max_by(|a, b| a.polls_per_sec.total_cmp(&b.polls_per_sec))
        });
    if let Some(r) = flagship {
        println!(
            "crawl: accounts={} interval_s={} polls_per_sec={:.0} wrk_ceiling={:.0} lag_p99_ms={:.1} crawler_cpu_pct={:.1} rss_mb={:.0} max_polls_per_sec={best:.0} run_cpu_us_per_poll={}",
            r.accounts, r.interval_s, r.polls_per_sec, ceiling.requests_per_sec, r.lag_p99_ms, r.crawler_cpu_pct, r.rss_mb,
            full.as_ref().map_or("n/a".to_owned(), |f| format!("{:.1}", f.cpu_us_per_poll))
        );
    }
    if let Some(r) = overload {
        let s = r.samples;
        println!(
            "overload case: {} accounts every {} s need {:.0} polls/s; the simulator serves {:.0}/s",
            r.accounts, r.interval_s, r.target_per_sec, r.limit_per_sec
        );
        println!(
            "  achieved {:.0} polls/s ({:.1} % of the limit) over {:.0} s; schedule {}; effective interval {:.1} s; \
             lag p50 {:.1} ms p99 {:.1} ms (on the stretched schedule); missed {} gaps {}",
            r.polls_per_sec,
            100.0 * r.polls_per_sec / r.limit_per_sec,
            r.seconds,
            if r.behind { "stretched" } else { "held" },
            r.effective_interval_s,
            r.lag_p50_ms,
            r.lag_p99_ms,
            r.missed,
            r.gaps
        );
        println!(
            "  samples per account: min {} median {} max {}; {:.2} % within one of the median",
            s.min, s.median, s.max, s.fair_pct
        );
        println!(
            "overload: needed_per_s={:.0} achieved_per_s={:.0} limit_per_s={:.0} fair_pct={:.2} effective_interval_s={:.1} lag_p99_ms={:.1} samples_min={} samples_median={} samples_max={}",
            r.target_per_sec, r.polls_per_sec, r.limit_per_sec, s.fair_pct, r.effective_interval_s, r.lag_p99_ms, s.min, s.median, s.max
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_parse() {
        let levels = parse_levels("1000@60s, 20@500ms").unwrap();
        assert_eq!(
            levels,
            vec![
                (1_000, Duration::from_secs(60)),
                (20, Duration::from_millis(500))
            ]
        );
        assert!(parse_levels("1000").is_err());
        assert!(parse_levels("x@1s").is_err());
        assert_eq!(
            parse_overload("100000@10s/5000").unwrap(),
            Some((100_000, Duration::from_secs(10), 5_000.0))
        );
        assert_eq!(parse_overload("none").unwrap(), None);
        assert!(parse_overload("100000@10s").is_err());
        assert!(parse_overload("100000@10s/0").is_err());
    }
}
