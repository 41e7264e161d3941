//! `trawler bench soak`: the default job for hours, across clock hours and
//! midnight, minute by minute.
//!
//! Benchmarks of a few minutes inside one clock hour miss what happens at a
//! head flush (every few minutes), at the clock hour (new rollup hour, the
//! movers' references) and at midnight UTC (a new day block, the finished
//! day merged). The soak runs the real `trawler run` (this binary, a child
//! process) against the simulator in a process of its own, with the job's
//! clock shifted (`--clock-offset`) so that midnight UTC comes a few minutes
//! after the start and every later clock hour follows at its normal pace.
//! Every 10 s it reads `/metrics`; every minute it prints one row: polls/s,
//! the minute's lag p50 (median of the 10-s p50s) and p99 (worst 10-s p99),
//! missed slots and gaps, the deepest ingest queue, RSS and CPU of trawler
//! and of the simulator, and the flushes and compactions that ran. The
//! summary covers the minutes after the first (start-up).

use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context;

use super::child::{self, Listening, TempDir};
use crate::cli::mockstagram::parse_duration;

/// Options of the soak benchmark.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// How long to run, in hours.
    #[arg(long, default_value_t = 2.0)]
    pub hours: f64,
    /// Accounts tracked (from pk 1000000).
    #[arg(long, default_value_t = 1_000_000)]
    pub accounts: u64,
    /// Poll interval.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub interval: Duration,
    /// Midnight UTC (in the job's shifted clock) comes this long after the start.
    #[arg(long, default_value = "6m", value_parser = parse_duration)]
    pub first_boundary: Duration,
    /// Stop trawler (SIGSTOP) this long after the start, to watch it recover.
    #[arg(long, value_parser = parse_duration)]
    pub stall_at: Option<Duration>,
    /// How long the stall lasts.
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    pub stall: Duration,
}

const SAMPLE: Duration = Duration::from_secs(10);
const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 24 * HOUR_MS;

/// One `/metrics` reading.
#[derive(Debug, Clone, Copy, Default)]
struct Reading {
    polls: f64,
    missed: f64,
    /// How far the stretch policy has moved the schedule back, seconds.
    stretch_s: f64,
    gaps: f64,
    lag_p50_s: f64,
    lag_p99_s: f64,
    queued: f64,
    flushes: f64,
    compactions: f64,
    trawler_cpu_s: f64,
    sim_cpu_s: f64,
    rss_mb: f64,
    /// Seconds since the start of the soak.
    at_s: f64,
}

fn read(run: &Listening, sim: &Listening, started: Instant) -> anyhow::Result<Reading> {
    let text = child::get_text(run.addr, "/metrics")?;
    let m = |name: &str| child::metric(&text, name).unwrap_or(0.0);
    let q = |quantile: &str| {
        child::metric_where(
            &text,
            "trawler_crawl_recent_lag_seconds",
            &format!("quantile=\"{quantile}\""),
        )
        .unwrap_or(0.0)
    };
    Ok(Reading {
        polls: m("trawler_crawl_polls_total"),
        missed: m("trawler_crawl_missed_slots_total"),
        stretch_s: m("trawler_crawl_schedule_stretch_seconds_total"),
        gaps: m("trawler_crawl_gaps_total"),
        lag_p50_s: q("0.5"),
        lag_p99_s: q("0.99"),
        queued: m("trawler_ingest_queue_events"),
        flushes: m("trawler_store_flushes_total"),
        compactions: m("trawler_store_compactions_total"),
        trawler_cpu_s: child::cpu_seconds(run.pid()),
        sim_cpu_s: child::cpu_seconds(sim.pid()),
        rss_mb: child::rss_mb(run.pid()),
        at_s: started.elapsed().as_secs_f64(),
    })
}

/// One printed minute.
#[derive(Debug, Clone, Copy)]
struct Minute {
    polls_per_s: f64,
    lag_p50_ms: f64,
    lag_p99_ms: f64,
    missed: f64,
    stretch_ms: f64,
    gaps: f64,
    flushes: f64,
    compactions: f64,
    rss_mb: f64,
    boundary: bool,
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

fn hhmm(unix_ms: i64) -> String {
    let minutes = unix_ms.rem_euclid(DAY_MS) / 60_000;
    format!("{:02}:{:02}", minutes / 60, minutes % 60)
}

/// Runs the soak and prints its figures.
pub fn run(args: Args) -> anyhow::Result<()> {
    let total = Duration::from_secs_f64(args.hours * 3_600.0);
    let data = TempDir::new("soak");
    let mut sim = child::this_binary()?;
    sim.args(["mockstagram", "--listen", "127.0.0.1:0", "--accounts"])
        .arg(args.accounts.to_string())
        .env("RUST_LOG", "warn")
        .stderr(Stdio::null());
    let sim = Listening::start(sim, "the simulator")?;

    // Shift the job's clock so that midnight UTC comes `first_boundary`
    // after the start.
    let now = trawler_crawl::clock::unix_ms();
    let midnight = (now.div_euclid(DAY_MS) + 1) * DAY_MS;
    let offset_ms = midnight - args.first_boundary.as_millis() as i64 - now;
    let ids = format!("1000000..={}", 1_000_000 + args.accounts - 1);
    let mut run = child::this_binary()?;
    run.args(["run", "--listen", "127.0.0.1:0", "--ids", &ids, "--target"])
        .arg(format!("http://{}", sim.addr))
        .arg("--interval")
        .arg(format!("{}ms", args.interval.as_millis()))
        .arg(format!("--clock-offset=+{offset_ms}ms"))
        .arg("--data")
        .arg(&data.0)
        .env("RUST_LOG", "warn")
        .stderr(Stdio::inherit());
    let run = Listening::start(run, "trawler run")?;
    println!(
        "soak: {} accounts every {:?} for {:.2} h; simulator pid {} and trawler pid {} in their own processes; \
         the job's clock is shifted by {:+.1} min so midnight UTC comes {:?} after the start",
        args.accounts,
        args.interval,
        args.hours,
        sim.pid(),
        run.pid(),
        offset_ms as f64 / 60_000.0,
        args.first_boundary
    );
    println!(
        "{:>4} {:>5} {:>9} {:>9} {:>9} {:>7} {:>9} {:>7} {:>8} {:>7} {:>7} {:>7} {:>5} {:>5}",
        "min",
        "clock",
        "polls/s",
        "lag p50",
        "lag p99",
        "missed",
        "stretch",
        "gaps",
        "queued",
        "rss MB",
        "cpu %",
        "sim %",
        "flush",
        "comp"
    );

    let started = Instant::now();
    let mut stalled = false;
    let mut last = read(&run, &sim, started)?;
    let mut minutes: Vec<Minute> = Vec::new();
    let mut window: Vec<Reading> = Vec::new();
    let mut minute_start = last;
    let mut next = started + SAMPLE;
    while started.elapsed() < total {
        let wait = next.saturating_duration_since(Instant::now());
        std::thread::sleep(wait);
        next += SAMPLE;
        if let (Some(at), false) = (args.stall_at, stalled) {
            if started.elapsed() >= at {
                stalled = true;
                stall(run.pid(), args.stall)?;
            }
        }
        let r = read(&run, &sim, started).context("reading trawler's /metrics")?;
        window.push(r);
        last = r;
        if window.len() < (60 / SAMPLE.as_secs()) as usize {
            continue;
        }
        let dt = (r.at_s - minute_start.at_s).max(1.0);
        let mut p50: Vec<f64> = window.iter().map(|w| w.lag_p50_s * 1e3).collect();
        let p99 = window.iter().map(|w| w.lag_p99_s * 1e3).fold(0.0, f64::max);
        let queued = window.iter().map(|w| w.queued).fold(0.0, f64::max);
        let clock_end = trawler_crawl::clock::unix_ms() + offset_ms;
        let boundary = clock_end.div_euclid(HOUR_MS) != (clock_end - 60_000).div_euclid(HOUR_MS);
        let m = Minute {
            polls_per_s: (r.polls - minute_start.polls) / dt,
            lag_p50_ms: median(&mut p50),
            lag_p99_ms: p99,
            missed: r.missed - minute_start.missed,
            stretch_ms: (r.stretch_s - minute_start.stretch_s) * 1e3,
            gaps: r.gaps - minute_start.gaps,
            flushes: r.flushes - minute_start.flushes,
            compactions: r.compactions - minute_start.compactions,
            rss_mb: window.iter().map(|w| w.rss_mb).fold(0.0, f64::max),
            boundary,
        };
        println!(
            "{:>4} {:>5} {:>9.0} {:>7.1}ms {:>7.1}ms {:>7} {:>7.0}ms {:>7} {:>8} {:>7.0} {:>7.0} {:>7.0} {:>5} {:>5}{}",
            minutes.len() + 1,
            hhmm(clock_end),
            m.polls_per_s,
            m.lag_p50_ms,
            m.lag_p99_ms,
            m.missed,
            m.stretch_ms,
            m.gaps,
            queued,
            m.rss_mb,
            100.0 * (r.trawler_cpu_s - minute_start.trawler_cpu_s) / dt,
            100.0 * (r.sim_cpu_s - minute_start.sim_cpu_s) / dt,
            m.flushes,
            m.compactions,
            if boundary { "  ← clock hour" } else { "" }
        );
        minutes.push(m);
        minute_start = r;
        window.clear();
    }
    let store = child::get_json(run.addr, "/api/v1/influencers/stats")?;
    drop(run);
    drop(sim);

    // The first minute is start-up (the first interval's slots begin at
    // their phases after the start); the summary covers the rest.
    let measured = minutes.get(1..).unwrap_or_default();
    let sum = |f: fn(&Minute) -> f64| measured.iter().map(f).sum::<f64>();
    let worst_p99 = measured.iter().map(|m| m.lag_p99_ms).fold(0.0, f64::max);
    let min_polls = measured
        .iter()
        .map(|m| m.polls_per_s)
        .fold(f64::INFINITY, f64::min);
    let rss_max = minutes.iter().map(|m| m.rss_mb).fold(0.0, f64::max);
    println!(
        "store at the end: {} samples, {} bytes on disk, {} B/sample; totals since start: {} polls, {} missed slots, {} gaps",
        store["samplesStored"],
        store["bytesOnDisk"],
        store["bytesPerSample"],
        last.polls,
        last.missed,
        last.gaps
    );
    println!(
        "soak: minutes={} hour_boundaries={} flushes={} worst_minute_lag_p99_ms={:.1} min_minute_polls_per_s={:.0} missed_slots={} stretch_ms={:.0} gaps={} rss_mb_max={:.0}",
        measured.len(),
        measured.iter().filter(|m| m.boundary).count(),
        sum(|m| m.flushes),
        worst_p99,
        if min_polls.is_finite() { min_polls } else { 0.0 },
        sum(|m| m.missed),
        sum(|m| m.stretch_ms),
        sum(|m| m.gaps),
        rss_max
    );
    Ok(())
}

/// Stops the process for `how_long`, then lets it go on.
fn stall(pid: u32, how_long: Duration) -> anyhow::Result<()> {
    let signal = |sig: &str| -> anyhow::Result<()> {
        let status = std::process::Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .context("running kill")?;
        anyhow::ensure!(status.success(), "kill {sig} {pid} failed");
        Ok(())
    };
    println!("     stalling trawler (SIGSTOP) for {how_long:?}");
    signal("-STOP")?;
    std::thread::sleep(how_long);
    signal("-CONT")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_labels_and_medians() {
        assert_eq!(hhmm(DAY_MS * 3 + HOUR_MS * 23 + 59 * 60_000), "23:59");
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut []), 0.0);
    }
}
