//! Live updates over server-sent events (`GET /api/v1/events`) and the
//! short health history behind them (`GET /api/v1/{job}/health/history`).
//!
//! One task samples the backend's statistics every `events_interval`,
//! appends the sample to a ring buffer and broadcasts it. A thousand open
//! dashboards therefore cost one `stats()` call per interval, not a thousand,
//! and a sample is serialised once, not once per subscriber.
//!
//! Nobody waits for a slow subscriber. Each subscriber gets a small forwarder
//! task that copies samples from the broadcast channel into a bounded queue
//! the connection drains; when that queue is full (the client stopped
//! reading and the socket buffers are full too), the forwarder gives up on
//! it: the subscriber is counted as dropped, its slot is freed, and its
//! stream ends after what was already queued. The producer never blocks, so
//! every other subscriber keeps getting every sample.
//!
//! Subscribers are capped (`max_subscribers`, 503 beyond) and every stream
//! ends when the server shuts down, so a graceful shutdown never waits on an
//! open dashboard.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;
use tokio::sync::{broadcast, mpsc};

use crate::{ApiError, Backend, HttpMetrics};

/// One sample as JSON text ([`crate::Sample`]: `{"t":ms,"seq":n,…stats}`),
/// serialised once for every subscriber and the history.
type SampleText = Arc<str>;

/// The producer's shared state: the history and the channel subscribers
/// join. `sender` is `None` once the server is shutting down.
pub(crate) struct Hub {
    sender: Mutex<Option<broadcast::Sender<SampleText>>>,
    history: Mutex<VecDeque<SampleText>>,
    history_len: usize,
    interval: Duration,
    max_subscribers: usize,
    queue: usize,
    metrics: Arc<HttpMetrics>,
}

/// Frees a subscriber slot when the forwarder ends, however it ends.
struct Slot(Arc<HttpMetrics>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.subscribers.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Hub {
    pub(crate) fn new(
        interval: Duration,
        history_len: usize,
        max_subscribers: usize,
        queue: usize,
        metrics: Arc<HttpMetrics>,
    ) -> Self {
        // The broadcast buffer only has to absorb scheduling hiccups of the
        // forwarders, which do nothing but copy; the per-subscriber queue is
        // where a slow client is detected.
        let (sender, _) = broadcast::channel(64);
        Self {
            sender: Mutex::new(Some(sender)),
            history: Mutex::new(VecDeque::with_capacity(history_len)),
            history_len,
            interval,
            max_subscribers,
            queue,
            metrics,
        }
    }

    /// Samples `backend` every interval until `stop` fires, then closes
    /// the channel so that every stream ends.
    pub(crate) async fn run<B: Backend>(
        self: Arc<Self>,
        backend: Arc<B>,
        mut stop: trawler_common::shutdown::Shutdown,
    ) {
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut seq: u64 = 0;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.wait() => break,
            }
            seq += 1;
            let sample = self.sample(backend.as_ref(), seq);
            {
                let mut history = lock(&self.history);
                if history.len() == self.history_len {
                    history.pop_front();
                }
                history.push_back(sample.clone());
            }
            if let Some(sender) = lock(&self.sender).as_ref() {
                // An error only means nobody is subscribed.
                let _ = sender.send(sample);
            }
        }
        lock(&self.sender).take();
    }

    fn sample<B: Backend>(&self, backend: &B, seq: u64) -> SampleText {
        let sample = crate::Sample {
            t: backend.now_ms(),
            seq,
            stats: backend.stats(),
        };
        // Numbers and strings only: writing them to a string cannot fail.
        serde_json::to_string(&crate::Named::new(backend.info(), &sample))
            .unwrap_or_default()
            .into()
    }

    /// The history as a JSON document, oldest sample first.
    pub(crate) fn history_json(&self) -> String {
        let history = lock(&self.history);
        let mut out =
            String::with_capacity(64 + history.iter().map(|s| s.len() + 1).sum::<usize>());
        out.push_str(&format!(
            "{{\"intervalMs\":{},\"samples\":[",
            self.interval.as_millis()
        ));
        for (i, s) in history.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(s);
        }
        out.push_str("]}");
        out
    }

    /// Takes a subscriber slot and starts its forwarder. The stream starts
    /// with the latest sample, so a new page has numbers at once.
    pub(crate) fn subscribe(
        &self,
    ) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
        let Some(receiver) = lock(&self.sender).as_ref().map(|s| s.subscribe()) else {
            return Err(ApiError::Unavailable("the server is shutting down".into()));
        };
        let taken =
            self.metrics
                .subscribers
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                    (n < self.max_subscribers as u64).then_some(n + 1)
                });
        if taken.is_err() {
            return Err(ApiError::TooManySubscribers {
                limit: self.max_subscribers,
            });
        }
        let slot = Slot(self.metrics.clone());
        let (tx, rx) = mpsc::channel(self.queue);
        if let Some(latest) = lock(&self.history).back() {
            let _ = tx.try_send(latest.clone());
        }
        tokio::spawn(forward(receiver, tx, slot));
        let stream = futures_util::stream::unfold(rx, |mut rx| async move {
            let sample = rx.recv().await?;
            let event = Event::default().event("stats").data(&*sample);
            Some((Ok(event), rx))
        });
        Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
    }
}

/// Copies samples to one subscriber's queue; drops the subscriber when the
/// queue is full rather than waiting for it.
async fn forward(
    mut receiver: broadcast::Receiver<SampleText>,
    queue: mpsc::Sender<SampleText>,
    slot: Slot,
) {
    loop {
        match receiver.recv().await {
            Ok(sample) => match queue.try_send(sample) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => {
                    slot.0.subscribers_lagged.fetch_add(1, Ordering::Relaxed);
                    tracing::info!("event subscriber dropped: it stopped reading");
                    break;
                }
                // The client went away.
                Err(mpsc::error::TrySendError::Closed(_)) => break,
            },
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                slot.0.subscribers_lagged.fetch_add(1, Ordering::Relaxed);
                tracing::info!(missed, "event subscriber dropped: it fell behind");
                break;
            }
            Err(broadcast::error::RecvError::Closed) => break,
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
