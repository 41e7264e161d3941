//! `trawler mockstagram`: serve the built-in Mockstagram simulator.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use trawler_sim::{Dynamics, Faults, SimConfig};

/// Serve a fast, faithful simulator of the Mockstagram API (and of a
/// package registry, the second job's API).
///
/// `GET /api/v1/influencers/{pk}` answers and moves an account;
/// `POST /api/v1/influencers/is_suspicious` answers after N(1 s, 1 s).
/// `GET /api/v2/packages/{name}` answers and moves a package (nested JSON,
/// string keys; `missing-…` names are 404s).
/// `GET /_sim/stats`, `GET /_sim/accounts/{pk}` and `GET /_sim/packages/{name}`
/// inspect without moving.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:3000")]
    pub listen: SocketAddr,
    /// Number of accounts.
    #[arg(long, default_value_t = 1_000_000)]
    pub accounts: u32,
    /// The first pk; accounts are first-pk ..= first-pk + accounts - 1.
    #[arg(long, default_value_t = 1_000_000)]
    pub first_pk: u64,
    /// Seed of all generated values (same seed, same series).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// How values move: `mockstagram` (every read moves the account, the
    /// original contract) or `realistic` (slow growth driven by the clock).
    #[arg(long, default_value = "mockstagram")]
    pub dynamics: Dynamics,
    /// Start of day 0 for realistic dynamics, in unix milliseconds
    /// (default: today 00:00 UTC).
    #[arg(long)]
    pub epoch_ms: Option<i64>,
    /// Fraction of API requests answered 503 without touching the account.
    #[arg(long, default_value_t = 0.0)]
    pub error_rate: f64,
    /// Latency added to every API request, e.g. `20ms`.
    #[arg(long, default_value = "0ms", value_parser = parse_duration)]
    pub latency: Duration,
    /// Multiplier of the is_suspicious delay (0 = answer at once).
    #[arg(long, default_value_t = 1.0)]
    pub suspicious_delay_scale: f64,
    /// Most API requests served per second (0 = no limit); the rest wait
    /// their turn, as in a saturated server's queue.
    #[arg(long, default_value_t = 0.0)]
    pub max_rps: f64,
    /// With --max-rps: answer requests beyond the rate with 429 and this
    /// Retry-After (e.g. `2s`, whole seconds) instead of making them wait.
    #[arg(long, value_parser = parse_duration)]
    pub retry_after: Option<Duration>,
    /// Connections served at once.
    #[arg(long, default_value_t = 4_096)]
    pub max_connections: usize,
}

impl Args {
    /// The simulator configuration these flags describe.
    pub fn config(&self) -> SimConfig {
        SimConfig {
            accounts: self.accounts,
            first_pk: self.first_pk,
            seed: self.seed,
            dynamics: self.dynamics,
            epoch_ms: self.epoch_ms,
            faults: Faults {
                error_rate: self.error_rate,
                latency: self.latency,
                suspicious_delay_scale: self.suspicious_delay_scale,
                max_rps: self.max_rps,
                retry_after: self.retry_after,
            },
            max_connections: self.max_connections,
        }
    }
}

/// Parses a duration flag the way job files are parsed: `250ms`, `2s`,
/// `1m`, `1h30m`, `1d`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    trawler_crawl::job::parse_duration(s)
        .map_err(|reason| format!("invalid duration {s:?}: {reason}"))
}

/// Runs the simulator until Ctrl-C or SIGTERM.
pub fn run(args: Args) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
    runtime.block_on(async {
        let started = std::time::Instant::now();
        let sim = args.config().build().context("invalid simulator settings")?;
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("binding {}", args.listen))?;
        let addr = listener.local_addr()?;
        tracing::info!(
            accounts = args.accounts,
            first_pk = args.first_pk,
            seed = args.seed,
            dynamics = %args.dynamics,
            ready_ms = started.elapsed().as_millis() as u64,
            "accounts ready"
        );
        tracing::info!(
            threshold = sim.accounts().threshold(),
            "suspicious when followerCount/followingCount <= threshold (10th percentile of initial ratios)"
        );
        tracing::info!(%addr, "mockstagram simulator listening");
        // One machine-readable line on stdout, for scripts and tests that
        // asked for port 0.
        println!("listening on http://{addr}");
        sim.serve(listener, shutdown_signal()).await.context("serving")?;
        tracing::info!("simulator stopped");
        Ok(())
    })
}

/// Completes on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5_400)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("ms").is_err());
    }
}
