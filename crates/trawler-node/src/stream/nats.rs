//! The JetStream source: a durable pull consumer, acknowledged only after
//! the events are durable in the stream's log.
//!
//! Exactly once across crashes: every batch submitted carries the stream
//! sequence of its last message as its position, logged with the events.
//! A message redelivered after a crash (applied and logged, but not yet
//! acknowledged) has a sequence at or below the logged position: it is
//! acknowledged without being applied again. Messages are fetched and
//! applied in stream order by one task, so the position only grows.
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
    let consumer: consumer::PullConsumer = stream
        .get_or_create_consumer(
            &durable,
            consumer::pull::Config {
                durable_name: Some(durable.clone()),
                filter_subject: settings.subject.clone(),
                ack_policy: consumer::AckPolicy::Explicit,
                ack_wait: Duration::from_secs(30),
                max_ack_pending: 100_000,
                deliver_policy: consumer::DeliverPolicy::All,
                ..Default::default()
            },
        )
        .await
        .map_err(|e| failed("creating the events' consumer", e))?;
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
