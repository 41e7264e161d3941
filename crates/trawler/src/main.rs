//! `trawler`: keeps the time series of millions of things up to date.
//!
//! This binary is a thin shell over the library crates: it parses the
//! command line, sets up logging, and hands each subcommand to its module.
//! Only the binary uses `anyhow`; the libraries return typed errors.

mod bench;
mod cli;
mod crawl;
mod gen;
mod logging;
mod progress;
mod run;

use clap::Parser;

fn main() -> anyhow::Result<()> {
    let args = cli::Cli::parse();
    logging::init(args.log_format);
    match args.command {
        cli::Command::Run(a) => run::run(*a),
        cli::Command::Mockstagram(a) => cli::mockstagram::run(a),
        cli::Command::Crawl(a) => crawl::run(*a),
        cli::Command::Sim(s) => cli::sim::run(s),
        cli::Command::Store(c) => cli::store::run(c),
        cli::Command::Bench(b) => bench::run(b),
        cli::Command::Gen(g) => gen::run(g),
    }
}
