//! Benchmarks: programs that print figures, never timed assertions.
//!
//! Each benchmark measures trawler against a reference run on the same
//! machine in the same invocation (wrk against the same target, VictoriaMetrics
//! on the same data), and ends with one machine-readable summary line.

pub mod sim;

use clap::Subcommand;

/// Which benchmark to run.
#[derive(Debug, Subcommand)]
pub enum Bench {
    /// GET throughput and latency of the Mockstagram simulator, measured with wrk.
    Sim(sim::Args),
}

/// Runs the chosen benchmark.
pub fn run(bench: Bench) -> anyhow::Result<()> {
    match bench {
        Bench::Sim(args) => sim::run(args),
    }
}
