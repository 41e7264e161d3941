//! The end-to-end crawl benchmark: the crawler against an in-process
//! simulator on this machine, printing figures (never asserting them).
//!
//! The simulator runs on its own runtime whose threads are named
//! `trawler-sim`, so the crawler's CPU can be told apart from the
//! simulator's in `/proc/self/task/*/stat` even though both live in one
//! process. `trawler bench crawl` calls [`run`]; the `bench_crawl` example
//! does too.

use std::fmt;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::{ErrorKind, Event, JobConfig, Overrides};

/// What to run.
#[derive(Debug, Clone)]
pub struct BenchArgs {
    /// Accounts in the simulator, all tracked.
    pub accounts: u32,
    /// Poll interval.
    pub interval: Duration,
    /// How long to crawl.
    pub duration: Duration,
    /// Simulator worker threads.
    pub sim_threads: usize,
    /// Latency added by the simulator to every request.
    pub latency: Duration,
    /// Fraction of requests the simulator fails with 503.
    pub error_rate: f64,
    /// Most requests per second the simulator serves (0: no limit); the
    /// rest queue, as at a saturated server.
    pub max_rps: f64,
    /// Print a progress line this often (`None`: quiet).
    pub progress: Option<Duration>,
}

impl Default for BenchArgs {
    fn default() -> Self {
        Self {
            accounts: 1_000_000,
            interval: Duration::from_secs(60),
            duration: Duration::from_secs(90),
            sim_threads: 2,
            latency: Duration::ZERO,
            error_rate: 0.0,
            max_rps: 0.0,
            progress: Some(Duration::from_secs(10)),
        }
    }
}

/// A benchmark that could not run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BenchError {
    /// The simulator refused its configuration.
    #[error("simulator: {0}")]
    Sim(#[from] trawler_sim::ConfigError),
    /// The job did not build.
    #[error(transparent)]
    Job(#[from] crate::JobError),
    /// The fetcher did not build.
    #[error(transparent)]
    Fetch(#[from] crate::fetch::BuildError),
    /// Binding or runtime setup failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// The figures.
#[derive(Debug, Clone, PartialEq)]
pub struct BenchReport {
    /// Accounts tracked.
    pub accounts: u32,
    /// Interval, seconds.
    pub interval_s: f64,
    /// Wall time crawled, seconds.
    pub seconds: f64,
    /// Observations received, including those of requests that finished
    /// during shutdown.
    pub observations: u64,
    /// Successful reads per second over the crawl.
    pub polls_per_sec: f64,
    /// Schedule demand: `accounts / interval`.
    pub target_per_sec: f64,
    /// Lag median over the run, ms.
    pub lag_p50_ms: f64,
    /// Lag 99th percentile over the run, ms.
    pub lag_p99_ms: f64,
    /// Failed attempts (all kinds).
    pub errors: u64,
    /// Gaps received.
    pub gaps: u64,
    /// Missed slots.
    pub missed: u64,
    /// Reads counted by the simulator (equal to `observations` when every
    /// read was reported exactly once).
    pub sim_reads: u64,
    /// CPU seconds of the whole process.
    pub process_cpu_s: f64,
    /// CPU seconds of the simulator's threads.
    pub sim_cpu_s: f64,
    /// Crawler CPU (process minus simulator) as % of one core.
    pub crawler_cpu_pct: f64,
    /// Resident memory of the process (simulator included), MB.
    pub rss_mb: f64,
    /// Final concurrency limit.
    pub concurrency_limit: u64,
    /// The simulator's `max_rps` (0: no limit).
    pub limit_per_sec: f64,
    /// Whether the schedule was held over the last seconds, and the
    /// effective interval then (the configured one when held), seconds.
    pub behind: bool,
    /// See `behind`.
    pub effective_interval_s: f64,
    /// Samples per account over the run.
    pub samples: Spread,
}

/// How evenly the accounts were covered: samples per account.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Spread {
    /// Fewest samples of one account.
    pub min: u32,
    /// The median account's samples.
    pub median: u32,
    /// Most samples of one account.
    pub max: u32,
    /// Share of the accounts within one sample of the median, %.
    pub fair_pct: f64,
}

impl Spread {
    /// The spread of `counts` (samples per account).
    pub fn of(mut counts: Vec<u32>) -> Self {
        if counts.is_empty() {
            return Self::default();
        }
        counts.sort_unstable();
        let median = counts[counts.len() / 2];
        let fair = counts.iter().filter(|&&n| n.abs_diff(median) <= 1).count();
        Self {
            min: counts[0],
            median,
            max: counts[counts.len() - 1],
            fair_pct: 100.0 * fair as f64 / counts.len() as f64,
        }
    }
}

impl fmt::Display for BenchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "crawl: accounts={} interval_s={} seconds={:.1} observations={} polls_per_sec={:.0} target_per_sec={:.0} \
             lag_p50_ms={:.1} lag_p99_ms={:.1} errors={} gaps={} missed={} sim_reads={} \
             process_cpu_s={:.1} sim_cpu_s={:.1} crawler_cpu_pct={:.1} rss_mb={:.0} concurrency_limit={}",
            self.accounts,
            self.interval_s,
            self.seconds,
            self.observations,
            self.polls_per_sec,
            self.target_per_sec,
            self.lag_p50_ms,
            self.lag_p99_ms,
            self.errors,
            self.gaps,
            self.missed,
            self.sim_reads,
            self.process_cpu_s,
            self.sim_cpu_s,
            self.crawler_cpu_pct,
            self.rss_mb,
            self.concurrency_limit,
        )
    }
}

/// CPU seconds used by the process, and by its threads named `trawler-sim`.
fn cpu_seconds() -> (f64, f64) {
    // utime and stime are fields 14 and 15 of stat, in clock ticks; Linux
    // reports them at USER_HZ = 100 on every architecture it runs on.
    fn ticks(stat: &str) -> Option<(String, f64)> {
        let open = stat.find('(')?;
        let close = stat.rfind(')')?;
        let comm = stat[open + 1..close].to_owned();
        let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        let utime: f64 = fields.get(11)?.parse().ok()?;
        let stime: f64 = fields.get(12)?.parse().ok()?;
        Some((comm, (utime + stime) / 100.0))
    }
    let process = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| ticks(&s))
        .map_or(0.0, |(_, t)| t);
    let mut sim = 0.0;
    if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
        for task in tasks.flatten() {
            if let Some((comm, t)) = std::fs::read_to_string(task.path().join("stat"))
                .ok()
                .and_then(|s| ticks(&s))
            {
                if comm.starts_with("trawler-sim") {
                    sim += t;
                }
            }
        }
    }
    (process, sim)
}

fn rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|kb| kb.parse::<f64>().ok())
            })
        })
        .map_or(0.0, |kb| kb / 1_024.0)
}

/// Runs the crawler for `job` (its target, ids and interval replaced) against
/// an in-process simulator and returns the figures. Call it from a
/// multi-threaded tokio runtime; the simulator gets a runtime of its own.
pub async fn run(job: &JobConfig, args: &BenchArgs) -> Result<BenchReport, BenchError> {
    let first_pk = 1_000_000u64;
    let sim = trawler_sim::SimConfig {
        accounts: args.accounts,
        first_pk,
        faults: trawler_sim::Faults {
            latency: args.latency,
            error_rate: args.error_rate,
            max_rps: args.max_rps,
            ..trawler_sim::Faults::default()
        },
        ..trawler_sim::SimConfig::default()
    }
    .build()?;
    let sim_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.sim_threads.max(1))
        .thread_name("trawler-sim")
        .enable_all()
        .build()?;
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    listener.set_nonblocking(true)?;
    let address = listener.local_addr()?;
    let (stop_sim, sim_stopped) = tokio::sync::oneshot::channel::<()>();
    let served = sim.clone();
    sim_runtime.spawn(async move {
        match tokio::net::TcpListener::from_std(listener) {
            Ok(listener) => {
                if let Err(e) = served
                    .serve(listener, async {
                        let _ = sim_stopped.await;
                    })
                    .await
                {
                    tracing::error!(error = %e, "simulator failed");
                }
            }
            Err(e) => tracing::error!(error = %e, "simulator listener"),
        }
    });

    let job = job.build_with(&Overrides {
        target: Some(format!("http://{address}")),
        ids: Some(format!(
            "{first_pk}..{}",
            first_pk + u64::from(args.accounts)
        )),
        interval: Some(format!("{}ms", args.interval.as_millis())),
        overload: None,
    })?;
    let (events_tx, mut events) = mpsc::channel(65_536);
    let accounts = args.accounts as usize;
    let consumer = tokio::spawn(async move {
        let (mut polls, mut gaps) = (0u64, 0u64);
        let mut per_account = vec![0u32; accounts];
        let mut batch = Vec::with_capacity(1_024);
        while events.recv_many(&mut batch, 1_024).await > 0 {
            for event in batch.drain(..) {
                match event {
                    Event::Observation(o) => {
                        polls += 1;
                        if let Some(n) = per_account.get_mut((o.id - first_pk) as usize) {
                            *n += 1;
                        }
                    }
                    Event::Gap(_) => gaps += 1,
                    Event::Invalid { .. } => {}
                }
            }
        }
        (polls, gaps, per_account)
    });

    let (cpu0, sim_cpu0) = cpu_seconds();
    let started = Instant::now();
    let crawl = crate::start_http(job, events_tx)?;
    let mut last = (started, cpu0, sim_cpu0);
    loop {
        let left = args.duration.saturating_sub(started.elapsed());
        if left.is_zero() {
            break;
        }
        tokio::time::sleep(args.progress.map_or(left, |p| p.min(left))).await;
        if args.progress.is_some() {
            let m = crawl.metrics();
            let (cpu, sim_cpu) = cpu_seconds();
            let wall = last.0.elapsed().as_secs_f64();
            println!(
                "t={:>4.0}s polls/s={:>6.0} lag_p50_ms={:>6.1} lag_p99_ms={:>6.1} in_flight={} limit={} gaps={} missed={} crawler_cpu={:.0}% sim_cpu={:.0}%",
                started.elapsed().as_secs_f64(),
                m.polls_per_sec,
                m.lag_p50_ms.unwrap_or(0.0),
                m.lag_p99_ms.unwrap_or(0.0),
                m.gauges.in_flight,
                m.gauges.concurrency_limit,
                m.gaps,
                m.missed_slots,
                ((cpu - last.1) - (sim_cpu - last.2)) / wall * 100.0,
                (sim_cpu - last.2) / wall * 100.0,
            );
            last = (Instant::now(), cpu, sim_cpu);
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let (cpu1, sim_cpu1) = cpu_seconds();
    let rss = rss_mb();
    let metrics = crawl.metrics();
    crawl.shutdown(Duration::from_secs(5)).await;
    let (observations, gaps, per_account) = consumer.await.unwrap_or_default();
    let _ = stop_sim.send(());
    let sim_reads = sim.accounts().reads();
    sim_runtime.shutdown_background();

    let ms = |q| {
        metrics
            .lag_total
            .quantile(q)
            .map_or(0.0, |us| us as f64 / 1e3)
    };
    let (process_cpu_s, sim_cpu_s) = (cpu1 - cpu0, sim_cpu1 - sim_cpu0);
    Ok(BenchReport {
        accounts: args.accounts,
        interval_s: args.interval.as_secs_f64(),
        seconds,
        observations,
        polls_per_sec: metrics.polls_ok as f64 / seconds,
        target_per_sec: f64::from(args.accounts) / args.interval.as_secs_f64(),
        lag_p50_ms: ms(0.5),
        lag_p99_ms: ms(0.99),
        errors: ErrorKind::ALL.iter().map(|&k| metrics.errors_of(k)).sum(),
        gaps,
        missed: metrics.missed_slots,
        sim_reads,
        process_cpu_s,
        sim_cpu_s,
        crawler_cpu_pct: (process_cpu_s - sim_cpu_s) / seconds * 100.0,
        rss_mb: rss,
        concurrency_limit: metrics.gauges.concurrency_limit,
        limit_per_sec: args.max_rps,
        behind: metrics.schedule.behind,
        effective_interval_s: metrics.schedule.effective_interval_ms / 1e3,
        samples: Spread::of(per_account),
    })
}

#[cfg(test)]
mod tests {
    use super::Spread;

    #[test]
    fn spread_counts_accounts_within_one_of_the_median() {
        let s = Spread::of(vec![3, 4, 4, 4, 5, 7, 0, 4]);
        assert_eq!((s.min, s.median, s.max), (0, 4, 7));
        assert_eq!(s.fair_pct, 75.0);
        assert_eq!(Spread::of(Vec::new()), Spread::default());
    }
}
