//! The JetStream source: a durable pull consumer, acknowledged only after
//! the events are durable in the stream's log.
//!
//! Exactly once across crashes: every batch submitted carries the stream
//! sequence of its last message as its position, logged with the events.
//! A message redelivered after a crash (applied and logged, but not yet
//! acknowledged) has a sequence at or below the logged position: it is
//! acknowledged without being applied again. Messages are fetched and
//! applied in stream order by one task, so the position only grows. The
//! consumer is recreated at start (and after a batch failed) to deliver
//! from the message after the logged position, so no message is ever
//! applied after a later one (see [`consumer_after`]).
//!
//! A message holds one event or several (NDJSON lines, or a JSON array).

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer, AckKind};
use futures_util::StreamExt;
use trawler_stream::spec::NatsSection;

use super::StreamNode;
use crate::error::Result;

/// The stream's name when the job does not give one.
pub fn stream_name(job: &str, settings: &NatsSection) -> String {
    settings
        .stream
        .clone()
        .unwrap_or_else(|| format!("TRAWLER_EVENTS_{}", job.replace('-', "_")))
}

fn failed(step: &str, e: impl std::fmt::Display) -> crate::Error {
    crate::Error::Step {
        step: step.into(),
        source: e.to_string().into(),
    }
}

/// The durable consumer, (re)created to deliver from the message after
/// `position`, the last one in the log.
///
/// A consumer kept across a crash would hold the messages it delivered but
/// that were never acknowledged until their ack wait expires, and deliver
/// later ones first: those would move the logged position past the held
/// ones, whose redelivery would then be skipped as already applied — lost.
/// The log's position is what counts, so the consumer restarts from it.
async fn consumer_after(
    stream: &jetstream::stream::Stream,
    durable: &str,
    settings: &NatsSection,
    position: u64,
) -> Result<consumer::PullConsumer> {
    match stream.delete_consumer(durable).await {
        Ok(_) => {}
        Err(e) if e.to_string().contains("not found") => {}
        Err(e) => tracing::debug!(error = %e, "deleting the old consumer"),
    }
    stream
        .create_consumer(consumer::pull::Config {
            durable_name: Some(durable.to_owned()),
            filter_subject: settings.subject.clone(),
            ack_policy: consumer::AckPolicy::Explicit,
            ack_wait: Duration::from_secs(30),
            max_ack_pending: 100_000,
            deliver_policy: if position == 0 {
                consumer::DeliverPolicy::All
            } else {
                consumer::DeliverPolicy::ByStartSequence {
                    start_sequence: position + 1,
                }
            },
            ..Default::default()
        })
        .await
        .map_err(|e| failed("creating the events' consumer", e))
}

/// Consumes until `stop` fires.
pub async fn consume(
    node: Arc<StreamNode>,
    settings: NatsSection,
    stop: trawler_common::shutdown::Shutdown,
) -> Result<()> {
    let job = node.job.name.clone();
    let client = async_nats::ConnectOptions::new()
        .retry_on_initial_connect()
        .connection_timeout(Duration::from_secs(5))
        .connect(settings.servers.as_slice())
        .await
        .map_err(|e| failed("connecting to NATS", e))?;
    let js = jetstream::new(client);
    let name = stream_name(&job, &settings);
    let stream = js
        .get_or_create_stream(jetstream::stream::Config {
            name: name.clone(),
            subjects: vec![settings.subject.clone()],
            ..Default::default()
        })
        .await
        .map_err(|e| failed("opening the events' stream", e))?;
    let durable = settings
        .consumer
        .clone()
        .unwrap_or_else(|| format!("trawler-{job}"));
    let mut consumer = consumer_after(&stream, &durable, &settings, node.position()).await?;
    tracing::info!(stream = %name, consumer = %durable, subject = %settings.subject, "consuming events from JetStream");
    let mut backoff = Duration::from_millis(200);
    let mut body = Vec::new();
    loop {
        if stop.is_triggered() {
            return Ok(());
        }
        let fetched = consumer
            .fetch()
            .max_messages(512)
            .expires(Duration::from_millis(500))
            .messages()
            .await;
        let mut batch = match fetched {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, "fetching events failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        let mut messages = Vec::new();
        while let Some(m) = batch.next().await {
            match m {
                Ok(m) => messages.push(m),
                Err(e) => {
                    tracing::warn!(error = %e, "fetching events failed");
                    break;
                }
            }
        }
        if messages.is_empty() {
            continue;
        }
        let applied = node.position();
        body.clear();
        let mut last = 0u64;
        let mut fresh = 0usize;
        for m in &messages {
            let seq = m.info().map(|i| i.stream_sequence).unwrap_or(0);
            if seq <= applied {
                continue; // redelivered after a crash: already in the log
            }
            last = last.max(seq);
            fresh += 1;
            body.extend_from_slice(&m.payload);
            if !m.payload.ends_with(b"\n") {
                body.push(b'\n');
            }
        }
        if fresh > 0 {
            let n = node.clone();
            let chunk = std::mem::take(&mut body);
            let done = tokio::task::spawn_blocking(move || {
                let r = n.submit(&chunk, last, true);
                (r, chunk)
            })
            .await
            .map_err(|e| failed("ingesting events", e))?;
            body = done.1;
            if let Err(e) = done.0 {
                tracing::warn!(error = %e, "events from JetStream not made durable; they will be redelivered");
                for m in &messages {
                    let _ = m.ack_with(AckKind::Nak(Some(backoff))).await;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                // Later messages must not be applied before these: the
                // position would pass them and their redelivery be skipped.
                match consumer_after(&stream, &durable, &settings, node.position()).await {
                    Ok(c) => consumer = c,
                    Err(e) => tracing::warn!(error = %e, "restarting the consumer failed"),
                }
                continue;
            }
        }
        backoff = Duration::from_millis(200);
        for m in &messages {
            if let Err(e) = m.ack().await {
                tracing::warn!(error = %e, "ack failed; the message will be redelivered and skipped");
            }
        }
    }
}
