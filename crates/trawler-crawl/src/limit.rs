//! Adaptive concurrency: how many requests may be in flight at once.
//!
//! The crawler must find what the target can take without overloading it:
//! a fixed limit is either too low for a slow-but-wide target (100 ms per
//! answer needs 1,700 requests in flight for 16,700/s) or too high for a
//! narrow one (queueing inside the target only adds latency). The limit
//! follows the *gradient* of latency, after Netflix's concurrency-limits
//! (Gradient2), with a BBR-like probe:
//!
//! * Each completed attempt reports its latency and whether it was an
//!   overload signal (timeout, connection failure, `429`). Answers with
//!   other errors (a `503` injected at random, a `500`) are *not* overload:
//!   shrinking on them would starve a flaky but idle target.
//! * Every window (≥ 100 ms, ≥ 2 round trips and ≥ 20 samples) compares
//!   the window's mean latency (`short`) with the target's own latency
//!   (`base`). While `short ≤ 1.5 × base + 2 ms` the target is not queueing; if the
//!   limit was actually reached in the window, it grows — ×1.5 per window
//!   until the first sign of congestion (slow start), then by √limit.
//! * When latency rises, the limit scales by `(1.5 × base + 2 ms) / short` (never
//!   below half), so it settles near 1.5× the knee of the target's latency
//!   curve; when more than 1 % of the window's attempts are overload
//!   signals, it is cut to 3/4.
//! * `base` follows the measured latency while the limit is not reached
//!   (nothing queued, so it is the target's own). While saturated it can
//!   only fall, and every 10 s the limit is halved for one window to
//!   measure it afresh, as BBR does: otherwise our own queue would slowly
//!   pass for the target's latency and the limit would creep up.
//! * It never grows when the limit was not reached: a crawl that needs 20
//!   requests in flight keeps a limit near 20, not `max_in_flight`.
//!
//! Only the dispatcher acquires permits, so a permit is an increment of an
//! atomic and the single waiter is woken through a [`Notify`].

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

const WINDOW: Duration = Duration::from_millis(100);
const MIN_SAMPLES: u32 = 20;
/// Latency may rise this much over the target's own before the limit shrinks.
const TOLERANCE: f64 = 1.5;
/// Plus this much, seconds: on a fast target a rise from 0.3 ms to 1 ms is
/// scheduling noise, not a queue, and costs the crawl nothing.
const SLACK: f64 = 0.002;
/// How often a saturated limiter halves its limit for one window to
/// re-measure the target's own latency.
const PROBE_EVERY: Duration = Duration::from_secs(10);

/// The limit and the permits handed out against it.
#[derive(Debug)]
pub struct Limiter {
    limit: AtomicUsize,
    in_flight: AtomicUsize,
    min: usize,
    max: usize,
    /// Set when the dispatcher waited for a permit in the current window:
    /// the limit, not the schedule, was what held requests back.
    saturated: AtomicBool,
    released: Notify,
    window: Mutex<Window>,
}

#[derive(Debug)]
struct Window {
    started: Instant,
    samples: u32,
    overloads: u32,
    latency_sum: Duration,
    /// The target's own latency, seconds, free of queueing; `None` until
    /// the first window.
    base: Option<f64>,
    /// Growing ×1.5 per window until the first sign of congestion.
    slow_start: bool,
    /// When running at half the limit to re-measure `base`: the limit to
    /// restore afterwards.
    probe: Option<usize>,
    next_probe: Instant,
}

/// One request's claim on the limit; released on drop, so an aborted or
/// panicking request never leaks a permit.
#[derive(Debug)]
pub struct Permit {
    limiter: Arc<Limiter>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.limiter.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.limiter.released.notify_one();
    }
}

impl Limiter {
    /// A limiter starting at `initial`, kept within `min..=max`.
    pub fn new(initial: usize, min: usize, max: usize) -> Arc<Self> {
        let max = max.max(1);
        let min = min.clamp(1, max);
        Arc::new(Self {
            limit: AtomicUsize::new(initial.clamp(min, max)),
            in_flight: AtomicUsize::new(0),
            min,
            max,
            saturated: AtomicBool::new(false),
            released: Notify::new(),
            window: Mutex::new(Window {
                started: Instant::now(),
                samples: 0,
                overloads: 0,
                latency_sum: Duration::ZERO,
                base: None,
                slow_start: true,
                probe: None,
                next_probe: Instant::now() + PROBE_EVERY,
            }),
        })
    }

    /// The current limit.
    pub fn limit(&self) -> usize {
        self.limit.load(Ordering::Relaxed)
    }

    /// Requests in flight.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    fn try_acquire(self: &Arc<Self>) -> Option<Permit> {
        let limit = self.limit.load(Ordering::Relaxed);
        self.in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < limit).then_some(n + 1)
            })
            .ok()
            .map(|_| Permit {
                limiter: self.clone(),
            })
    }

    /// Waits for a permit. Meant for one caller at a time (the dispatcher).
    pub async fn acquire(self: &Arc<Self>) -> Permit {
        loop {
            if let Some(permit) = self.try_acquire() {
                return permit;
            }
            self.saturated.store(true, Ordering::Relaxed);
            let released = self.released.notified();
            // A permit may have been released between the check and here.
            if let Some(permit) = self.try_acquire() {
                return permit;
            }
            released.await;
        }
    }

    /// Waits until nothing is in flight.
    pub async fn idle(&self) {
        while self.in_flight() > 0 {
            let released = self.released.notified();
            if self.in_flight() == 0 {
                return;
            }
            released.await;
        }
    }

    /// Reports a finished attempt and, at the end of a window, adapts the limit.
    pub fn record(&self, latency: Duration, overload: bool) {
        let mut w = self.window.lock().unwrap_or_else(|e| e.into_inner());
        w.samples += 1;
        w.overloads += u32::from(overload);
        w.latency_sum += latency;
        let now = Instant::now();
        // A window spans at least two round trips, so that it is made of
        // requests sent under the limit it judges.
        let span = WINDOW.max(Duration::from_secs_f64(2.0 * w.base.unwrap_or(0.0)));
        if w.samples < MIN_SAMPLES || now.duration_since(w.started) < span {
            return;
        }
        let short = w.latency_sum.as_secs_f64() / f64::from(w.samples);
        let overloaded = f64::from(w.overloads) > 0.01 * f64::from(w.samples);
        let saturated = self.saturated.swap(false, Ordering::Relaxed);
        let limit = self.limit() as f64;
        let new = if let Some(restore) = w.probe.take() {
            // The window ran at half the limit: its latency is the target's
            // own, free of the queue this crawler may have built.
            w.base = Some(short);
            w.next_probe = now + PROBE_EVERY;
            restore as f64
        } else {
            let base = match w.base {
                None => short,
                // Not limited by permits: nothing queued, so this latency
                // is the target's own; follow it (it may have changed).
                Some(base) if !saturated => base + 0.2 * (short - base),
                Some(base) => base.min(short),
            };
            w.base = Some(base);
            let mut new = if overloaded {
                w.slow_start = false;
                limit * 0.75
            } else {
                let gradient = ((TOLERANCE * base + SLACK) / short.max(1e-9)).clamp(0.5, 1.0);
                if gradient < 1.0 {
                    w.slow_start = false;
                    limit * gradient
                } else if saturated && w.slow_start {
                    limit * 1.5
                } else if saturated {
                    limit + limit.sqrt()
                } else {
                    limit
                }
            };
            if saturated && !overloaded && now >= w.next_probe {
                w.probe = Some(new.round() as usize);
                new /= 2.0;
            }
            new
        };
        let new = (new.round() as usize).clamp(self.min, self.max);
        if new != self.limit() {
            tracing::debug!(
                from = self.limit(),
                to = new,
                short_ms = short * 1e3,
                base_ms = w.base.unwrap_or(0.0) * 1e3,
                overloaded,
                saturated,
                "concurrency limit"
            );
        }
        self.limit.store(new, Ordering::Relaxed);
        w.started = now;
        w.samples = 0;
        w.overloads = 0;
        w.latency_sum = Duration::ZERO;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Drives windows of synthetic samples: `latency(limit)` models the target.
    async fn drive(
        limiter: &Arc<Limiter>,
        windows: usize,
        latency: impl Fn(usize) -> (Duration, bool),
    ) {
        for _ in 0..windows {
            // Saturate, as a dispatcher with more work than permits would.
            let mut permits = Vec::new();
            while let Some(p) = limiter.try_acquire() {
                permits.push(p);
            }
            limiter.saturated.store(true, Ordering::Relaxed);
            tokio::time::advance(WINDOW).await;
            let (l, overload) = latency(limiter.limit());
            for _ in 0..MIN_SAMPLES {
                limiter.record(l, overload);
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn grows_to_the_ceiling_when_latency_does_not_rise() {
        let limiter = Limiter::new(32, 4, 2_048);
        drive(&limiter, 30, |_| (Duration::from_millis(100), false)).await;
        assert_eq!(limiter.limit(), 2_048);
    }

    #[tokio::test(start_paused = true)]
    async fn settles_near_the_capacity_of_a_queueing_target() {
        // A target that serves 200 at once in 1 ms; beyond, requests queue.
        // The limit settles where latency is 1.5 × 1 ms + 2 ms: about 700.
        let limiter = Limiter::new(32, 4, 10_000);
        let queueing = |limit: usize| {
            let ms = 1.0f64.max(limit as f64 / 200.0);
            (Duration::from_secs_f64(ms / 1e3), false)
        };
        drive(&limiter, 200, queueing).await;
        let limit = limiter.limit();
        assert!((450..=1_000).contains(&limit), "limit {limit}");
    }

    #[tokio::test(start_paused = true)]
    async fn shrinks_on_timeouts_but_not_on_plain_errors() {
        let limiter = Limiter::new(512, 4, 1_024);
        drive(&limiter, 20, |_| (Duration::from_millis(5), true)).await;
        assert_eq!(limiter.limit(), 4);
        let limiter = Limiter::new(512, 4, 1_024);
        drive(&limiter, 5, |_| (Duration::from_millis(5), false)).await;
        assert!(limiter.limit() > 512);
    }

    #[tokio::test(start_paused = true)]
    async fn does_not_grow_when_not_saturated() {
        let limiter = Limiter::new(32, 4, 1_024);
        for _ in 0..10 {
            tokio::time::advance(WINDOW).await;
            for _ in 0..MIN_SAMPLES {
                limiter.record(Duration::from_millis(1), false);
            }
        }
        assert_eq!(limiter.limit(), 32);
    }

    #[tokio::test(start_paused = true)]
    async fn permits_are_bounded_and_released_on_drop() {
        let limiter = Limiter::new(4, 4, 4);
        let permits: Vec<Permit> = futures_take(&limiter, 4).await;
        assert!(limiter.try_acquire().is_none());
        let waiter = tokio::spawn({
            let limiter = limiter.clone();
            async move { limiter.acquire().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        drop(permits);
        let _p = waiter.await.unwrap();
        assert_eq!(limiter.in_flight(), 1);
    }

    async fn futures_take(limiter: &Arc<Limiter>, n: usize) -> Vec<Permit> {
        let mut v = Vec::new();
        for _ in 0..n {
            v.push(limiter.acquire().await);
        }
        v
    }
}
