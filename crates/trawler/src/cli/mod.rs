//! The command line: one subcommand per job a user runs.

pub mod mockstagram;
pub mod sim;
pub mod store;

use clap::{Parser, Subcommand};

use crate::logging::LogFormat;

/// trawler keeps the time series of millions of things up to date: it polls
/// JSON HTTP APIs on a schedule, stores what it sees compactly, keeps live
/// rankings and aggregates, and serves it all over HTTP.
#[derive(Debug, Parser)]
#[command(name = "trawler", version, about, long_about = None)]
pub struct Cli {
    /// Log line format.
    #[arg(long, global = true, value_enum, default_value = "text")]
    pub log_format: LogFormat,

    #[command(subcommand)]
    pub command: Command,
}

/// What to run.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a job: poll, store, keep live views, serve the API (the main job).
    Run(Box<crate::run::Args>),
    /// Crawl a huge list of image URLs, each exactly once (a batch job).
    Crawl(Box<crate::crawl::Args>),
    /// Serve the built-in Mockstagram simulator (the API trawler is measured against).
    Mockstagram(mockstagram::Args),
    /// Serve a simulator of another job kind's target (`sim images`: image hosts and a detector).
    #[command(subcommand)]
    Sim(sim::Sim),
    /// Inspect, compact or verify the store of a data folder not in use.
    #[command(subcommand)]
    Store(store::Command),
    /// Generate a workload: events for a stream job, URL lists for a batch job.
    #[command(subcommand)]
    Gen(crate::gen::Gen),
    /// Run a benchmark and print its figures.
    #[command(subcommand)]
    Bench(crate::bench::Bench),
}
