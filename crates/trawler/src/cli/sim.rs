//! `trawler sim`: simulators of the targets of the other job kinds.
//! (`trawler mockstagram` serves the flagship job's API.)

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Subcommand;
use trawler_sim::images::ImagesConfig;

use crate::cli::mockstagram::{parse_duration, shutdown_signal};

/// Which simulator.
#[derive(Debug, Subcommand)]
pub enum Sim {
    /// Image hosts and a batch face detector, for batch jobs (`trawler crawl`).
    Images(ImagesArgs),
}

/// Serve generated images at the URLs of many hosts (virtual hosts by the
/// `Host` header: `h17.images.test`, `slow3.images.test`, `down1.images.test`)
/// and a batch face detector at `POST /detect`.
///
/// Paths: `/img/N.jpg|png|webp` (an image), `/broken/N.jpg`, `/text/N.html`,
/// `/missing/N.jpg` (404), `/moved/N.jpg` (301), `/loop/N.jpg` (302 to
/// itself), `/flaky/N.jpg` (fails, then serves), `/error/N.jpg` (500),
/// `/huge/N.jpg` (a large body). `GET /_sim/images/stats`: requests and peak
/// concurrency per host, detector calls. Crawl it with
/// `trawler crawl --urls LIST --connect-to ADDR --detector http://ADDR/detect`.
#[derive(Debug, clap::Args)]
pub struct ImagesArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:3100")]
    pub listen: SocketAddr,
    /// Seed of the pictures.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Width and height of the images.
    #[arg(long, default_value_t = 256)]
    pub size: u32,
    /// Images per format, encoded once at start.
    #[arg(long, default_value_t = 32)]
    pub pool: usize,
    /// Latency of every answer of a `slow…` host.
    #[arg(long, default_value = "200ms", value_parser = parse_duration)]
    pub slow_latency: Duration,
    /// Failed answers of a `/flaky/` URL before it serves.
    #[arg(long, default_value_t = 2)]
    pub flaky_failures: u32,
    /// Body size of `/huge/` URLs, in bytes.
    #[arg(long, default_value_t = 8 << 20)]
    pub huge_bytes: usize,
    /// Latency of every detector call.
    #[arg(long, default_value = "20ms", value_parser = parse_duration)]
    pub detector_latency: Duration,
    /// Connections served at once.
    #[arg(long, default_value_t = 8_192)]
    pub max_connections: usize,
    /// A PEM certificate (chain) to serve `https://` too, on the same port
    /// (with --tls-key).
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
}

impl ImagesArgs {
    /// The simulator these flags describe.
    pub fn config(&self) -> ImagesConfig {
        ImagesConfig {
            seed: self.seed,
            size: self.size,
            pool: self.pool,
            slow_latency: self.slow_latency,
            flaky_failures: self.flaky_failures,
            huge_bytes: self.huge_bytes,
            detector_latency: self.detector_latency,
            max_connections: self.max_connections,
            tls: self.tls_cert.clone().zip(self.tls_key.clone()),
        }
    }
}

/// Runs the chosen simulator until Ctrl-C or SIGTERM.
pub fn run(sim: Sim) -> anyhow::Result<()> {
    let Sim::Images(args) = sim;
    let sim = args
        .config()
        .build()
        .context("invalid simulator settings")?;
    let runtime = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("binding {}", args.listen))?;
        let addr = listener.local_addr()?;
        tracing::info!(%addr, size = args.size, pool = args.pool, "image simulator listening");
        println!("listening on http://{addr}");
        sim.serve(listener, shutdown_signal())
            .await
            .context("serving")?;
        Ok(())
    })
}
