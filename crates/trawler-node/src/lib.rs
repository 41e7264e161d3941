//! trawler's run-time: one job's crawl, ingest, store, live views,
//! enrichment and API wired together, as a library.
//!
//! A front end (the `trawler` binary) resolves a [`NodeConfig`] from its
//! flags and the job file ([`NodeConfig::resolve`]), starts two tokio
//! runtimes (the API's at a lower CPU priority, see
//! [`trawler_api::runtime`]) and calls [`run`]. Everything below is here so
//! that it can be tested without starting a process:
//!
//! * [`node`]: the embedded node: the ingest path (store first, then the
//!   views), the movers' references, the average's history;
//! * [`backend`]: the API's read model over a node;
//! * [`layout`]: how a job's metrics map to stored series and views;
//! * [`cluster`]: this process as one node of a cluster (NATS JetStream,
//!   VictoriaMetrics);
//! * [`config`]: the one resolved configuration;
//! * [`state`]: the small state files of the data folder.

pub mod backend;
pub mod cluster;
pub mod config;
mod embedded;
pub mod error;
pub mod layout;
pub mod node;
pub mod prom;
pub mod state;
pub mod status;
pub mod storage;
pub mod stream;

use std::future::Future;

pub use config::{ClusterFlags, ClusterSettings, Flags, NodeConfig, SimSettings, DEFAULT_JOB};
use error::Step;
pub use error::{Error, Result};

/// Unix time in milliseconds, on the shifted clock every part of a node
/// stamps and reads with ([`trawler_common::clock`]).
pub use trawler_common::clock::unix_ms as now_ms;

/// Runs the node `config` describes (embedded, or one node of a cluster)
/// until `shutdown` completes, then stops it in order: the API and the
/// crawl (requests in flight get the grace period), the ingest path, the
/// store's sync. The API is served on `api_runtime`. Prints
/// `listening on http://ADDR` on stdout once the API listens (for scripts
/// that asked for port 0); the embedded mode calls `on_status` once a
/// second with its figures.
pub async fn run(
    config: NodeConfig,
    api_runtime: tokio::runtime::Handle,
    shutdown: impl Future<Output = ()>,
    on_status: impl FnMut(&status::Snapshot),
) -> Result<()> {
    match config.cluster.clone() {
        Some(settings) => {
            let job = config.job.build_with(&config.overrides)?;
            cluster::run(&config, job, settings, api_runtime, shutdown).await
        }
        None => embedded::run(config, api_runtime, shutdown, on_status).await,
    }
}

/// Binds the API's address (std, so that the API's runtime can own it).
fn bind_api(listen: std::net::SocketAddr) -> Result<std::net::TcpListener> {
    std::net::TcpListener::bind(listen).with_step(|| format!("binding the API to {listen}"))
}
