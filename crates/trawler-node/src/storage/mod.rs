//! The two storage seams of a node: a durable [`Writer`] and a [`Reader`].
//!
//! A node writes three things — the job's stored fields of every
//! observation, the enrichment's answers, the average's history — and reads
//! back what the API and start-up need: an entity's points (raw or per
//! bucket), the average's history, and the first value of the ranked
//! metric per clock hour (the movers' references). Everything else (latest
//! values, rank, top, movers) is answered from the live views in memory.
//!
//! Two implementations exist:
//!
//! * [`embedded::EmbeddedStorage`]: the embedded store (`trawler-store`),
//!   one WAL append per batch, durable when `append` returns.
//! * [`victoria`]: cluster mode. The durable writer is the JetStream
//!   publisher (an observation is acknowledged once the stream stored it on
//!   every replica; a separate task drains the stream into
//!   VictoriaMetrics); the reader asks VictoriaMetrics (raw export, range
//!   queries, `first_over_time`).
//!
//! Both traits are blocking on purpose: the embedded store blocks on the
//! disk, and the ingest path and the API's series reads already run on
//! blocking threads (`block_in_place`, `spawn_blocking`), where an async
//! implementation simply `block_on`s its futures. One [`Backend`] serves the
//! API over any [`Reader`].
//!
//! Adding a third store (say, Prometheus remote write) is one module
//! implementing both traits, and one arm where the node picks its storage
//! (`embedded.rs` or `cluster.rs`, from `--store`).
//!
//! [`Backend`]: crate::backend::NodeBackend

pub mod embedded;
pub mod victoria;

use trawler_api::{Points, SeriesQuery};
use trawler_crawl::Observation;
use trawler_enrich::Verdict;

/// Why a storage call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// The storage did not answer or failed this call; a later call may
    /// succeed.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// The storage refuses every write from now on (a failed fsync): the
    /// node must stop rather than lose what it crawls.
    #[error("storage refuses writes: {0}")]
    Refused(String),
}

/// Where a node's data goes. Every method returns once the data is durable
/// (or failed): an observation counts as acknowledged only when
/// [`Writer::append`] returned `Ok`.
pub trait Writer: Send + Sync + 'static {
    /// Makes the stored fields of `observations` durable; returns how many
    /// samples were accepted (a replayed older sample may be refused).
    fn append(&self, observations: &[&Observation]) -> Result<u64, StorageError>;
    /// Makes the enrichment's answers durable (1 = yes, one point per check).
    fn append_flags(&self, verdicts: &[Verdict]) -> Result<(), StorageError>;
    /// Appends a point to the average's history.
    fn append_average(&self, ts_ms: i64, mean: f64) -> Result<(), StorageError>;
    /// Why the writer refuses every write from now on, once it does.
    fn refused(&self) -> Option<String> {
        None
    }
}

/// What a node reads back.
pub trait Reader: Send + Sync + 'static {
    /// Points of the stored metric at position `stored` (in
    /// [`crate::layout::Layout::stored`]) of `entity`: raw points in
    /// `[from, to]`, or with a step the average of each bucket (aligned to
    /// the epoch, stamped with its start). Empty when there are none.
    fn points(&self, entity: u64, stored: usize, q: SeriesQuery) -> Result<Points, StorageError>;
    /// The average's history, like [`Reader::points`].
    fn average_history(&self, q: SeriesQuery) -> Result<Points, StorageError>;
    /// For every entity with data, the first value of the ranked metric in
    /// each clock hour starting in `[from_ms, to_ms)`, as
    /// `f(entity, hour_start_ms, value)`: the movers' references.
    fn hourly_firsts(
        &self,
        from_ms: i64,
        to_ms: i64,
        f: &mut dyn FnMut(u64, i64, i64),
    ) -> Result<(), StorageError>;
}

/// Averages raw points into buckets of `step` ms aligned to the epoch, each
/// stamped with its start: how a store without rollups downsamples.
pub fn bucket_averages(points: Points, step: i64) -> Points {
    let mut out: Points = Vec::new();
    let mut acc: Option<(i64, f64, u32)> = None;
    for (t, v) in points {
        let start = t - t.rem_euclid(step);
        match &mut acc {
            Some((s, sum, n)) if *s == start => {
                *sum += v;
                *n += 1;
            }
            _ => {
                if let Some((s, sum, n)) = acc.take() {
                    out.push((s, sum / f64::from(n)));
                }
                acc = Some((start, v, 1));
            }
        }
    }
    if let Some((s, sum, n)) = acc {
        out.push((s, sum / f64::from(n)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_averages_are_epoch_aligned() {
        let points = vec![(0, 1.0), (30_000, 3.0), (60_000, 10.0), (179_999, 20.0)];
        assert_eq!(
            bucket_averages(points, 60_000),
            vec![(0, 2.0), (60_000, 10.0), (120_000, 20.0)]
        );
        assert!(bucket_averages(Vec::new(), 1_000).is_empty());
    }
}
