//! Cluster mode behind the storage seams: the JetStream publisher is the
//! durable [`Writer`] (a batch is acknowledged once the stream stored it on
//! every replica; the storage writer task drains the stream into
//! VictoriaMetrics), and VictoriaMetrics is the [`Reader`] (raw export,
//! range queries, `first_over_time`).
//!
//! The traits are blocking; these implementations run their futures with
//! the runtime handle they were built with, and are called from blocking
//! contexts only (`block_in_place` on the ingest path, `spawn_blocking` for
//! the API's series reads and the start-up restore).

use std::sync::Arc;
use std::time::Duration;

use tokio::runtime::Handle;
use trawler_api::{Points, SeriesQuery};
use trawler_cluster::stream::{self, Batch, Publisher, Row, VerdictRow, Verdicts};
use trawler_cluster::vm::{Naming, VmClient};
use trawler_crawl::{Keys, Observation};
use trawler_enrich::Verdict;

use super::{bucket_averages, Reader, StorageError, Writer};
use crate::layout::Layout;

const HOUR_MS: i64 = 3_600_000;

/// How long a batch is retried before its observations count as lost.
pub const PUBLISH_GIVE_UP: Duration = Duration::from_secs(60);

/// [`Writer`] over the JetStream publisher.
pub struct StreamWriter {
    publisher: Publisher,
    node_id: String,
    job: String,
    layout: Layout,
    runtime: Handle,
}

impl StreamWriter {
    /// Publishes `layout`'s stored fields of `job` as node `node_id`.
    pub fn new(
        publisher: Publisher,
        node_id: &str,
        job: &str,
        layout: &Layout,
        runtime: Handle,
    ) -> Self {
        Self {
            publisher,
            node_id: node_id.to_owned(),
            job: job.to_owned(),
            layout: layout.clone(),
            runtime,
        }
    }

    /// The publisher, for its counters.
    pub fn publisher(&self) -> &Publisher {
        &self.publisher
    }

    fn publish(
        &self,
        subject: String,
        payload: &impl serde::Serialize,
    ) -> Result<(), StorageError> {
        self.runtime
            .block_on(
                self.publisher
                    .publish_json(subject, payload, PUBLISH_GIVE_UP),
            )
            .map_err(|e| StorageError::Unavailable(e.to_string()))
    }
}

impl Writer for StreamWriter {
    fn append(&self, observations: &[&Observation]) -> Result<u64, StorageError> {
        let stored = &self.layout.stored;
        let rows: Vec<Row> = observations
            .iter()
            .map(|o| {
                Row(
                    o.id,
                    o.slot_ms,
                    stored
                        .iter()
                        .map(|s| Some(o.values[s.index]).filter(|v| !v.is_nan()))
                        .collect(),
                )
            })
            .collect();
        if rows.is_empty() {
            return Ok(0);
        }
        let samples = rows
            .iter()
            .map(|r| r.2.iter().flatten().count() as u64)
            .sum();
        let payload = Batch {
            node: self.node_id.clone(),
            metrics: stored.iter().map(|s| s.name.clone()).collect(),
            rows,
        };
        self.publish(stream::obs_subject(&self.job), &payload)?;
        Ok(samples)
    }

    fn append_flags(&self, verdicts: &[Verdict]) -> Result<(), StorageError> {
        let Some(flag) = &self.layout.flag else {
            return Ok(());
        };
        let payload = Verdicts {
            metric: flag.clone(),
            rows: verdicts
                .iter()
                .map(|v| VerdictRow(v.id, v.value, v.checked_at_ms))
                .collect(),
        };
        self.publish(stream::verdict_subject(&self.job), &payload)
    }

    /// Nothing to write: VictoriaMetrics computes the average's history
    /// from the stored series when it is read ([`VictoriaReader`]).
    fn append_average(&self, _ts_ms: i64, _mean: f64) -> Result<(), StorageError> {
        Ok(())
    }
}

/// [`Reader`] over VictoriaMetrics.
pub struct VictoriaReader {
    vm: VmClient,
    naming: Naming,
    keys: Arc<Keys>,
    layout: Layout,
    runtime: Handle,
}

impl VictoriaReader {
    /// Reads `layout`'s series of the job `naming` names, its keys parsed
    /// back with `keys`.
    pub fn new(
        vm: VmClient,
        naming: Naming,
        keys: Arc<Keys>,
        layout: &Layout,
        runtime: Handle,
    ) -> Self {
        Self {
            vm,
            naming,
            keys,
            layout: layout.clone(),
            runtime,
        }
    }

    /// The series labelling this reader uses (shared with the storage
    /// writer task that imports the stream).
    pub fn naming(&self) -> &Naming {
        &self.naming
    }
}

fn unavailable(e: trawler_cluster::Error) -> StorageError {
    StorageError::Unavailable(format!("series store: {e}"))
}

impl Reader for VictoriaReader {
    fn points(&self, entity: u64, stored: usize, q: SeriesQuery) -> Result<Points, StorageError> {
        let Some(metric) = self.layout.stored.get(stored) else {
            return Ok(Vec::new());
        };
        let selector = self.naming.selector(&metric.name, entity);
        let points = self
            .runtime
            .block_on(self.vm.export(&selector, q.from_ms, q.to_ms))
            .map_err(unavailable)?;
        Ok(match q.step_ms {
            Some(step) => bucket_averages(points, step),
            None => points,
        })
    }

    fn average_history(&self, q: SeriesQuery) -> Result<Points, StorageError> {
        let rank = &self.layout.views.rank_by;
        let query = format!(
            "avg({rank}{{job={}}})",
            serde_json::Value::from(self.naming.job.as_str())
        );
        let step = q.step_ms.unwrap_or(60_000).max(60_000);
        self.runtime
            .block_on(self.vm.query_range(&query, q.from_ms, q.to_ms, step))
            .map_err(unavailable)
    }

    /// One `first_over_time` instant query per clock hour: the window
    /// `(t − 1h, t]` of a query at the hour's last millisecond is the hour.
    fn hourly_firsts(
        &self,
        from_ms: i64,
        to_ms: i64,
        f: &mut dyn FnMut(u64, i64, i64),
    ) -> Result<(), StorageError> {
        let rank = &self.layout.views.rank_by;
        let query = format!(
            "first_over_time({rank}{{job={}}}[1h])",
            serde_json::Value::from(self.naming.job.as_str())
        );
        let mut start = from_ms.div_euclid(HOUR_MS) * HOUR_MS;
        while start < to_ms {
            match self
                .runtime
                .block_on(self.vm.query_at(&query, start + HOUR_MS - 1))
            {
                Ok(series) => {
                    for (labels, v) in series {
                        let id = labels
                            .get(&self.naming.key_label)
                            .and_then(|p| p.as_str())
                            .and_then(|p| self.keys.parse(p).ok().flatten());
                        if let (Some(id), true) = (id, v.is_finite()) {
                            f(id, start, v as i64);
                        }
                    }
                }
                // One hour's references missing leaves those movers out
                // until the hour is seen again; the other hours go on.
                Err(e) => {
                    tracing::warn!(error = %e, hour_ms = start, "movers' references of an hour not restored");
                }
            }
            start += HOUR_MS;
        }
        Ok(())
    }
}
