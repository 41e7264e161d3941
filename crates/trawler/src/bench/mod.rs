//! Benchmarks: programs that print figures, never timed assertions.
//!
//! Each benchmark measures trawler against a reference run on the same
//! machine in the same invocation (wrk against the same target, VictoriaMetrics
//! on the same data), and ends with one machine-readable summary line.

pub mod api;
mod child;
pub mod crawl;
pub mod crawl_batch;
pub mod promql;
pub mod sim;
pub mod soak;
pub mod store;
pub mod stream;
pub mod topn;

use clap::Subcommand;

/// Which benchmark to run.
#[derive(Debug, Subcommand)]
pub enum Bench {
    /// The query API under wrk while the flagship job crawls; crawl rate with enrichment on and off.
    Api(api::Args),
    /// The crawler at rising load against the in-process simulator, beside wrk's ceiling.
    Crawl(crawl::Args),
    /// A URL list through `trawler crawl` against the image simulator end to end, beside Scrapy.
    CrawlBatch(crawl_batch::Args),
    /// The Prometheus API: the PromQL corpus against Prometheus 2.42, query latency, remote-write ingest per core and a million series, beside VictoriaMetrics.
    Promql(promql::Args),
    /// GET throughput and latency of the Mockstagram simulator, measured with wrk.
    Sim(sim::Args),
    /// The default job for hours across clock hours and midnight, minute by minute (simulator in its own process).
    Soak(soak::Args),
    /// Bytes per sample, ingest rate and 30-day read latency of the store, beside VictoriaMetrics.
    Store(store::Args),
    /// The expo stream job: aggregation per core, HTTP and JetStream end to end, beside DuckDB and bytewax.
    Stream(stream::Args),
    /// The comments top-N job: aggregation per core, RSS per pair, SSE subscribers while ingesting, beside Redis.
    Topn(topn::Args),
}

/// Runs the chosen benchmark.
pub fn run(bench: Bench) -> anyhow::Result<()> {
    match bench {
        Bench::Api(args) => api::run(args),
        Bench::Crawl(args) => crawl::run(args),
        Bench::CrawlBatch(args) => crawl_batch::run(args),
        Bench::Promql(args) => promql::run(args),
        Bench::Sim(args) => sim::run(args),
        Bench::Soak(args) => soak::run(args),
        Bench::Store(args) => store::run(args),
        Bench::Stream(args) => stream::run(args),
        Bench::Topn(args) => topn::run(args),
    }
}
