//! Batch jobs (`[job] kind = "batch"`, `trawler crawl --urls FILE`): a huge
//! list of image URLs taken through download → process → enrich → save,
//! each URL exactly once, resumable after `kill -9`.
//!
//! The parts, in pipeline order (wired in [`run`]):
//!
//! * [`spec`]: the job file → [`BatchJob`], errors naming file and key;
//! * [`input`]: URL lists (text or NDJSON, gzip or not, files or folders),
//!   URL checks and fingerprints;
//! * [`frontier`]: numbered segments, the duplicate set, what earlier runs
//!   finished;
//! * [`fetch`]: the pooled client, per-host limits, redirects, body cap,
//!   retryable vs dead errors;
//! * [`process`]: decode, thumbnail, perceptual hash on a thread pool;
//! * the detector batcher (in [`run`]): batches by size and time, its own
//!   concurrency and retries;
//! * [`output`]: Parquet results files, committed through
//! * [`log`]: the state log (CRC-framed records, checkpoint) that makes
//!   every outcome durable exactly once;
//! * [`progress`]: counters, the status served by the API, `/metrics`;
//! * [`remote`]: `s3://` lists and results on S3-compatible storage.
//!
//! Cluster mode ([`run_cluster`]): several nodes share the list, each
//! working on the segments it leases through NATS JetStream KV
//! (`trawler-cluster`'s `SegmentLeases`), each segment committed once,
//! idempotently, into a shared output folder (docs/BATCH.md).
//!
//! Knows nothing of the API server or the CLI; the binary serves
//! [`Progress`] and prints the [`Summary`].
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use trawler_batch::{BatchJobConfig, Progress};
//! let job = BatchJobConfig::for_urls(&["urls.txt.gz".into()]).build()?;
//! let progress = Arc::new(Progress::new(&job.name));
//! let (_trigger, shutdown) = trawler_common::shutdown::channel();
//! let summary = trawler_batch::run(job, "batch-data".as_ref(), progress, shutdown,
//!                                  std::time::Duration::from_secs(5)).await?;
//! println!("{} done, {} dead", summary.status.done, summary.status.dead);
//! # Ok(()) }
//! ```

pub mod fetch;
pub mod frontier;
pub mod input;
pub mod log;
pub mod output;
pub mod process;
pub mod progress;
pub mod remote;
mod run;
pub mod spec;

pub use progress::{Progress, Status};
pub use run::{parse_faces, run, run_cluster, BatchError, ClusterRun, Summary};
pub use spec::{BatchJob, BatchJobConfig, SpecError};
