//! Runs the crawl benchmark: `cargo run --release -p trawler-crawl
//! --features bench --example bench_crawl -- [accounts] [interval_s]
//! [duration_s] [latency_ms] [error_rate]`.

use std::time::Duration;

use trawler_crawl::bench::{run, BenchArgs};
use trawler_crawl::JobConfig;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<f64> = std::env::args()
        .skip(1)
        .map(|a| a.parse::<f64>().map_err(|e| format!("{a:?}: {e}")))
        .collect::<Result<_, _>>()?;
    let arg = |i: usize, default: f64| args.get(i).copied().unwrap_or(default);
    let bench = BenchArgs {
        accounts: arg(0, 1_000_000.0) as u32,
        interval: Duration::from_secs_f64(arg(1, 60.0)),
        duration: Duration::from_secs_f64(arg(2, 90.0)),
        latency: Duration::from_secs_f64(arg(3, 0.0) / 1e3),
        error_rate: arg(4, 0.0),
        ..BenchArgs::default()
    };
    let job = JobConfig::from_toml(
        include_str!("../../../jobs/mockstagram.toml"),
        "jobs/mockstagram.toml",
    )?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("trawler-crawl")
        .enable_all()
        .build()?;
    let report = runtime.block_on(run(&job, &bench))?;
    println!("{report}");
    Ok(())
}
