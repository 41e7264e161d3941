//! The observation stream: what nodes publish, how it is acknowledged, and
//! how every node follows it.
//!
//! One stream, `TRAWLER_OBS`, with subjects `trawler.obs.<job>` (batches of
//! observations) and `trawler.verdict.<job>` (batches of enrichment
//! answers). A batch is published with a message id unique to the node's
//! run and the batch, and counts as acknowledged when JetStream answers
//! with its stream sequence: then it is stored on every replica. A publish
//! that fails is retried with the same id, and the stream's duplicate window
//! drops a copy that did arrive the first time.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream::StorageType};
use bytes::Bytes;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

use crate::{ClusterConfig, Error};

/// The stream's name.
pub const STREAM: &str = "TRAWLER_OBS";

/// Subject of a job's observation batches.
pub fn obs_subject(job: &str) -> String {
    format!("trawler.obs.{job}")
}

/// Subject of a job's verdict batches.
pub fn verdict_subject(job: &str) -> String {
    format!("trawler.verdict.{job}")
}

/// Both subjects of a job.
pub fn job_filter(job: &str) -> String {
    format!("trawler.*.{job}")
}

pub(crate) fn config(c: &ClusterConfig, replicas: usize) -> jetstream::stream::Config {
    jetstream::stream::Config {
        name: STREAM.into(),
        // One wildcard, so that a job filter (`trawler.*.<job>`) is a
        // subset of it for the server (2.9 checks subsets per subject).
        subjects: vec!["trawler.>".into()],
        max_age: c.stream_max_age,
        max_bytes: c.stream_max_bytes,
        storage: StorageType::File,
        num_replicas: replicas,
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    }
}

/// One observation: id, slot time (unix ms), one value per metric of the
/// batch (`None` where the answer did not carry it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Row(pub u64, pub i64, pub Vec<Option<f64>>);

/// A batch of observations from one node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Batch {
    /// The node that polled.
    pub node: String,
    /// Metric names, in the order of each row's values.
    pub metrics: Vec<String>,
    /// The observations.
    pub rows: Vec<Row>,
}

/// One enrichment answer: id, value, when it was checked (unix ms).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct VerdictRow(pub u64, pub bool, pub i64);

/// A batch of enrichment answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Verdicts {
    /// The metric the answers are stored under (e.g. `suspicious`).
    pub metric: String,
    /// The answers.
    pub rows: Vec<VerdictRow>,
}

/// A decoded stream message.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    /// Observations.
    Observations(Batch),
    /// Enrichment answers.
    Verdicts(Verdicts),
}

/// Decodes a message by its subject; `None` for anything malformed (logged
/// by the caller: one bad message must not stop a consumer).
pub fn decode(subject: &str, payload: &[u8]) -> Option<Message> {
    if subject.starts_with("trawler.obs.") {
        serde_json::from_slice(payload)
            .ok()
            .map(Message::Observations)
    } else if subject.starts_with("trawler.verdict.") {
        serde_json::from_slice(payload).ok().map(Message::Verdicts)
    } else {
        None
    }
}

/// Publishes batches and waits for JetStream's acknowledgement.
pub struct Publisher {
    js: jetstream::Context,
    /// Unique per run of this node: `node-<start µs>`.
    run_id: String,
    seq: AtomicU64,
    /// Batches acknowledged.
    pub published: AtomicU64,
    /// Publish attempts that failed (and were retried).
    pub failures: AtomicU64,
}

impl Publisher {
    /// A publisher for this node.
    pub fn new(js: jetstream::Context, node: &str) -> Self {
        let start = trawler_common::clock::unix_us();
        Self {
            js,
            run_id: format!("{node}-{start}"),
            seq: AtomicU64::new(0),
            published: AtomicU64::new(0),
            failures: AtomicU64::new(0),
        }
    }

    /// Encodes `payload` (a [`Batch`] or [`Verdicts`]) as [`decode`] reads
    /// it and publishes it as [`Publisher::publish`] does.
    pub async fn publish_json(
        &self,
        subject: String,
        payload: &impl Serialize,
        give_up: Duration,
    ) -> Result<(), Error> {
        let bytes = serde_json::to_vec(payload)
            .map_err(|e| Error::Nats(format!("encoding a message for {subject}: {e}")))?;
        self.publish(subject, Bytes::from(bytes), give_up).await
    }

    /// Publishes `payload` on `subject`, retrying with backoff until it is
    /// acknowledged or `give_up` passes. `Ok` means stored.
    pub async fn publish(
        &self,
        subject: String,
        payload: Bytes,
        give_up: Duration,
    ) -> Result<(), Error> {
        let id = format!(
            "{}-{}",
            self.run_id,
            self.seq.fetch_add(1, Ordering::Relaxed)
        );
        let deadline = tokio::time::Instant::now() + give_up;
        let mut backoff = Duration::from_millis(50);
        loop {
            let publish = jetstream::context::Publish::build()
                .payload(payload.clone())
                .message_id(&id);
            let attempt = async {
                self.js
                    .send_publish(subject.clone(), publish)
                    .await
                    .map_err(|e| e.to_string())?
                    .await
                    .map_err(|e| e.to_string())
            };
            let why = match tokio::time::timeout(Duration::from_secs(5), attempt).await {
                Ok(Ok(_ack)) => {
                    self.published.fetch_add(1, Ordering::Relaxed);
                    return Ok(());
                }
                Ok(Err(e)) => e,
                Err(_) => "no acknowledgement within 5 s".to_owned(),
            };
            self.failures.fetch_add(1, Ordering::Relaxed);
            if tokio::time::Instant::now() + backoff > deadline {
                return Err(Error::Nats(format!("publishing on {subject}: {why}")));
            }
            tracing::warn!(subject, error = %why, "publish failed; retrying");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }
}

/// Follows a job's subjects from `since` (unix ms) on an ordered consumer
/// (no acks, no server state to clean up), calling `apply` for each
/// message in stream order, until the stream of messages ends.
pub async fn follow(
    js: &jetstream::Context,
    job: &str,
    since_ms: i64,
    mut apply: impl FnMut(Message),
) -> Result<(), Error> {
    let stream = js
        .get_stream(STREAM)
        .await
        .map_err(|e| Error::nats("opening the stream", e))?;
    let start = time_of_ms(since_ms);
    let consumer = stream
        .create_consumer(consumer::pull::OrderedConfig {
            filter_subject: job_filter(job),
            deliver_policy: consumer::DeliverPolicy::ByStartTime { start_time: start },
            ..Default::default()
        })
        .await
        .map_err(|e| Error::nats("creating the views' consumer", e))?;
    let mut messages = consumer
        .messages()
        .await
        .map_err(|e| Error::nats("following the stream", e))?;
    while let Some(message) = messages.next().await {
        let message = message.map_err(|e| Error::nats("following the stream", e))?;
        match decode(message.subject.as_str(), &message.payload) {
            Some(m) => apply(m),
            None => tracing::warn!(subject = %message.subject, "malformed stream message skipped"),
        }
    }
    Ok(())
}

fn time_of_ms(ms: i64) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Stream messages are untrusted bytes: any payload decodes to a
        /// message or to `None`, never a panic.
        #[test]
        fn any_payload_decodes_or_is_refused(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode("trawler.obs.influencers", &bytes);
            let _ = decode("trawler.verdict.influencers", &bytes);
        }

        /// Whatever a node publishes, every node reads back the same.
        #[test]
        fn batches_round_trip(
            rows in proptest::collection::vec(
                (any::<u64>(), any::<i64>(), proptest::collection::vec(proptest::option::of(-1e15f64..1e15), 2)),
                0..50,
            )
        ) {
            let batch = Batch {
                node: "node-1".into(),
                metrics: vec!["a".into(), "b".into()],
                rows: rows.into_iter().map(|(id, ts, v)| Row(id, ts, v)).collect(),
            };
            let bytes = serde_json::to_vec(&batch).unwrap();
            prop_assert_eq!(decode("trawler.obs.j", &bytes), Some(Message::Observations(batch)));
        }
    }

    #[test]
    fn batches_round_trip_and_garbage_is_refused() {
        let batch = Batch {
            node: "a".into(),
            metrics: vec!["followerCount".into(), "followingCount".into()],
            rows: vec![Row(7, 1_000, vec![Some(5.0), None])],
        };
        let bytes = serde_json::to_vec(&batch).unwrap();
        assert_eq!(
            decode("trawler.obs.influencers", &bytes),
            Some(Message::Observations(batch))
        );
        let verdicts = Verdicts {
            metric: "suspicious".into(),
            rows: vec![VerdictRow(7, true, 9)],
        };
        let bytes = serde_json::to_vec(&verdicts).unwrap();
        assert_eq!(
            decode("trawler.verdict.influencers", &bytes),
            Some(Message::Verdicts(verdicts))
        );
        assert_eq!(decode("trawler.obs.influencers", b"{not json"), None);
        assert_eq!(decode("elsewhere", b"{}"), None);
    }
}
