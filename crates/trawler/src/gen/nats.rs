//! The NATS sink: publish each batch as one JetStream message (NDJSON
//! lines) and count its acknowledgement.
//!
//! Publishing does not wait for the ack; up to `--pending` acks are
//! awaited later, oldest first, so the server's round trip does not set
//! the rate and the producer still cannot run ahead of what JetStream
//! stores. A subject no stream captures fails every publish ("no
//! responders"): start the stream job, which creates its stream, first.

use std::collections::VecDeque;
use std::time::Duration;

use anyhow::Context;
use async_nats::jetstream::{self, context::PublishAckFuture};
use bytes::Bytes;

use super::sink::{Report, Sink};

/// Errors printed in full; later ones are only counted.
const ERRORS_SHOWN: u64 = 10;

/// Publishes batches; see the module docs.
pub struct NatsSink {
    runtime: tokio::runtime::Runtime,
    js: jetstream::Context,
    subject: String,
    pending: VecDeque<(PublishAckFuture, u64)>,
    window: usize,
    generated: u64,
    delivered: u64,
    errors: u64,
}

impl NatsSink {
    /// Connects to `server` (`HOST:PORT`).
    pub fn new(server: &str, subject: &str, window: usize) -> anyhow::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .context("starting the tokio runtime")?;
        let client = runtime
            .block_on(
                async_nats::ConnectOptions::new()
                    .connection_timeout(Duration::from_secs(5))
                    .connect(server),
            )
            .with_context(|| format!("connecting to NATS at {server}"))?;
        Ok(Self {
            runtime,
            js: jetstream::new(client),
            subject: subject.to_owned(),
            pending: VecDeque::with_capacity(window),
            window,
            generated: 0,
            delivered: 0,
            errors: 0,
        })
    }

    fn count(&mut self, outcome: Result<u64, String>) {
        match outcome {
            Ok(events) => self.delivered += events,
            Err(why) => {
                self.errors += 1;
                if self.errors <= ERRORS_SHOWN {
                    eprintln!("gen: batch lost on {}: {why}", self.subject);
                }
            }
        }
    }

    /// Awaits the oldest pending ack.
    fn settle_one(&mut self) {
        if let Some((ack, events)) = self.pending.pop_front() {
            let outcome = self
                .runtime
                .block_on(std::future::IntoFuture::into_future(ack));
            self.count(outcome.map(|_| events).map_err(|e| e.to_string()));
        }
    }
}

impl Sink for NatsSink {
    fn send(&mut self, batch: Vec<u8>, events: usize) -> anyhow::Result<()> {
        while self.pending.len() >= self.window {
            self.settle_one();
        }
        self.generated += events as u64;
        let published = self
            .runtime
            .block_on(self.js.publish(self.subject.clone(), Bytes::from(batch)));
        match published {
            Ok(ack) => self.pending.push_back((ack, events as u64)),
            Err(e) => self.count(Err(e.to_string())),
        }
        Ok(())
    }

    fn finish(mut self: Box<Self>) -> anyhow::Result<Report> {
        while !self.pending.is_empty() {
            self.settle_one();
        }
        Ok(Report {
            generated: self.generated,
            delivered: self.delivered,
            errors: Some(("publish_errors", self.errors)),
        })
    }
}
