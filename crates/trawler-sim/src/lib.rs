//! A fast, faithful stand-in for the Mockstagram API, so that trawler runs
//! and is tested on one machine, and a second API of another shape (a
//! package registry) so that trawler can show it is a generic engine.
//!
//! The contract (see `BRIEF.md`): `GET /api/v1/influencers/{pk}` answers an
//! account and moves it; any pk outside the range, or not an integer, answers
//! `500 {"error":{"name":"InfluencerNotFoundError"}}`;
//! `POST /api/v1/influencers/is_suspicious` answers `{"pk","suspicious"}`
//! after a delay of N(1 s, 1 s) clamped to [0, 10 s]. Unknown paths get 404.
//!
//! The image hosts and batch detector of batch jobs ([`images`], served by
//! `trawler sim images`), and the URL lists pointing at them.
//!
//! The `expo` workload ([`expo`]) generates the events of A/B tests for
//! the stream job (`docs/STREAMS.md`).
//!
//! The package registry ([`packages`]), which only this crate knows of:
//! `GET /api/v2/packages/{name}` answers
//!
//! ```json
//! {"package":{"name":"serde","registry":"sim"},
//!  "stats":{"downloads":{"total":123456,"lastDay":789},"stars":345,"score":0.8734},
//!  "maintainers":["maintainer-17","maintainer-4242"]}
//! ```
//!
//! and moves the package: `total` grows by 0 to 50 per read, `lastDay` and
//! `stars` walk up and down by small steps without going below zero, and
//! `score`, a float in `[0, 1]` with four decimals, drifts by at most 0.002.
//! A name is 1 to 64 bytes of `[a-z0-9._-]`; every such name exists except
//! those starting with `missing-`, which, like names of any other shape,
//! answer `404 {"error":"no such package"}`. Initial values derive from
//! `(seed, name)`, so simulators with the same seed answer alike; the API
//! does not depend on `accounts` or `dynamics`.
//!
//! Beyond the contract the simulator offers realistic time-driven dynamics
//! ([`model::Dynamics::Realistic`]), fault knobs ([`Faults`], applied to both
//! APIs) and a non-mutating inspection API (`GET /_sim/stats`,
//! `GET /_sim/accounts/{pk}`, `GET /_sim/packages/{name}`) that tests use to
//! check, for instance, that an account was read exactly once per interval.
//! [`hosts`] generates node_exporter-shaped host metrics for the store
//! benchmark (no server involved).
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use trawler_sim::SimConfig;
//! let sim = SimConfig { accounts: 1_000, ..SimConfig::default() }.build()?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! println!("serving on {}", listener.local_addr()?);
//! sim.serve(listener, std::future::pending()).await?;
//! # Ok(()) }
//! ```

pub mod comments;
pub mod expo;
pub mod hosts;
pub mod images;
pub mod model;
pub mod packages;
pub mod rng;
mod server;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

pub use model::{Counts, Dynamics, Realistic};
pub use server::{suspicious_delay, Counters, MAX_BODY_BYTES};

/// Fault injection, for testing how a crawler copes with a bad target.
#[derive(Debug, Clone, PartialEq)]
pub struct Faults {
    /// Fraction of API requests (0.0–1.0), of either API, answered `503`
    /// without touching the account or package.
    pub error_rate: f64,
    /// Latency added to every API request before it is answered.
    pub latency: Duration,
    /// Multiplies the `is_suspicious` delay (1.0 = the contract, 0.0 = none).
    pub suspicious_delay_scale: f64,
    /// Most API requests served per second (0 = no limit): a target slower
    /// than the schedule. Requests beyond it wait their turn, the way a
    /// saturated server's queue makes them wait, unless `retry_after` is
    /// set.
    pub max_rps: f64,
    /// With `max_rps`: requests beyond the rate are answered `429` with
    /// this `Retry-After` (whole seconds) at once, as rate-limited APIs do,
    /// instead of waiting.
    pub retry_after: Option<Duration>,
}

impl Default for Faults {
    fn default() -> Self {
        Self {
            error_rate: 0.0,
            latency: Duration::ZERO,
            suspicious_delay_scale: 1.0,
            max_rps: 0.0,
            retry_after: None,
        }
    }
}

/// How to build a simulator. Validated by [`SimConfig::build`].
#[derive(Debug, Clone, PartialEq)]
pub struct SimConfig {
    /// Number of accounts.
    pub accounts: u32,
    /// The first pk; accounts are `first_pk..first_pk + accounts`.
    pub first_pk: u64,
    /// Seed of every generated value.
    pub seed: u64,
    /// How values move.
    pub dynamics: Dynamics,
    /// Start of day 0 for realistic dynamics (unix ms); `None` = today 00:00 UTC.
    pub epoch_ms: Option<i64>,
    /// Fault injection.
    pub faults: Faults,
    /// Connections served at once.
    pub max_connections: usize,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            accounts: 1_000_000,
            first_pk: 1_000_000,
            seed: 0,
            dynamics: Dynamics::Mockstagram,
            epoch_ms: None,
            faults: Faults::default(),
            max_connections: 4_096,
        }
    }
}

/// A configuration the simulator refuses.
#[derive(Debug, thiserror::Error, PartialEq)]
#[non_exhaustive]
pub enum ConfigError {
    /// `accounts` was zero.
    #[error("accounts must be at least 1")]
    NoAccounts,
    /// The pk range does not fit in 64 bits.
    #[error("first pk {first_pk} + {accounts} accounts overflows a 64-bit pk")]
    PkOverflow {
        /// The configured first pk.
        first_pk: u64,
        /// The configured number of accounts.
        accounts: u32,
    },
    /// A fault knob outside its range.
    #[error("{knob} must be {expected}, got {value}")]
    BadFault {
        /// Which knob.
        knob: &'static str,
        /// What it accepts.
        expected: &'static str,
        /// What it got.
        value: f64,
    },
    /// `max_connections` was zero.
    #[error("max_connections must be at least 1")]
    NoConnections,
}

impl SimConfig {
    /// Validates the configuration and creates every account (about 50 ms
    /// per million accounts).
    pub fn build(&self) -> Result<Simulator, ConfigError> {
        if self.accounts == 0 {
            return Err(ConfigError::NoAccounts);
        }
        if self.first_pk.checked_add(self.accounts as u64).is_none() {
            return Err(ConfigError::PkOverflow {
                first_pk: self.first_pk,
                accounts: self.accounts,
            });
        }
        let f = &self.faults;
        if !(0.0..=1.0).contains(&f.error_rate) {
            return Err(ConfigError::BadFault {
                knob: "error rate",
                expected: "between 0 and 1",
                value: f.error_rate,
            });
        }
        if !(f.suspicious_delay_scale >= 0.0 && f.suspicious_delay_scale <= 1_000.0) {
            return Err(ConfigError::BadFault {
                knob: "suspicious delay scale",
                expected: "between 0 and 1000",
                value: f.suspicious_delay_scale,
            });
        }
        if !(f.max_rps >= 0.0 && f.max_rps <= 1e9) {
            return Err(ConfigError::BadFault {
                knob: "max rps",
                expected: "between 0 (no limit) and 1e9",
                value: f.max_rps,
            });
        }
        if self.max_connections == 0 {
            return Err(ConfigError::NoConnections);
        }
        let epoch_ms = self.epoch_ms.unwrap_or_else(today_utc_ms);
        let accounts = model::Accounts::new(
            self.first_pk,
            self.accounts,
            self.seed,
            self.dynamics,
            epoch_ms,
        );
        Ok(Simulator {
            shared: Arc::new(server::Shared {
                accounts,
                packages: packages::Packages::new(self.seed),
                faults: self.faults.clone(),
                entropy: rng::Entropy::new(self.seed ^ 0x5EED),
                counters: server::Counters::default(),
                pacer: server::Pacer::new(self.faults.max_rps),
                max_connections: self.max_connections,
            }),
        })
    }
}

fn today_utc_ms() -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    now - now.rem_euclid(86_400_000)
}

/// A ready simulator: accounts created, threshold computed.
#[derive(Debug, Clone)]
pub struct Simulator {
    shared: Arc<server::Shared>,
}

impl Simulator {
    /// The account table, for in-process inspection.
    pub fn accounts(&self) -> &model::Accounts {
        &self.shared.accounts
    }

    /// The package registry's table, for in-process inspection.
    pub fn packages(&self) -> &packages::Packages {
        &self.shared.packages
    }

    /// Changes `Faults::max_rps` while serving (0 = no limit): a target
    /// that slows down and recovers, for tests.
    pub fn set_max_rps(&self, max_rps: f64) {
        self.shared.pacer.set_rate(max_rps.max(0.0));
    }

    /// What the simulator answered besides reads (as in `/_sim/stats`).
    pub fn counters(&self) -> &server::Counters {
        &self.shared.counters
    }

    /// Serves the API on `listener` until `shutdown` completes.
    pub async fn serve(
        &self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> std::io::Result<()> {
        server::serve(self.shared.clone(), listener, shutdown).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_rejects_bad_knobs() {
        let bad = |f: fn(&mut SimConfig)| {
            let mut c = SimConfig {
                accounts: 10,
                ..SimConfig::default()
            };
            f(&mut c);
            c.build().unwrap_err()
        };
        assert_eq!(bad(|c| c.accounts = 0), ConfigError::NoAccounts);
        assert!(matches!(
            bad(|c| c.first_pk = u64::MAX),
            ConfigError::PkOverflow { .. }
        ));
        assert!(matches!(
            bad(|c| c.faults.error_rate = 1.5),
            ConfigError::BadFault { .. }
        ));
        assert!(matches!(
            bad(|c| c.faults.suspicious_delay_scale = f64::NAN),
            ConfigError::BadFault { .. }
        ));
        assert_eq!(bad(|c| c.max_connections = 0), ConfigError::NoConnections);
    }
}
