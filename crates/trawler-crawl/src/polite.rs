//! Politeness towards the target: a cap on the request rate, and a pause of
//! the whole target when it asks for one.
//!
//! * **`[http] max_rate`** (requests per second, every attempt counted,
//!   retries included) is a token bucket holding a tenth of a second of
//!   requests: the dispatcher takes a token before it takes a concurrency
//!   permit, so a slot waiting for its turn holds no permit, and a retry
//!   takes one before its attempt.
//! * **`Retry-After`** on a `429` or `503` pauses *every* request to the
//!   target, not only the id that got it: a server that says "come back in
//!   30 s" is overloaded as a whole, and answering that with the other
//!   999,999 ids would only hurt it. A pause never shortens one already
//!   running, and is capped at [`MAX_PAUSE`] so a bad header cannot stop a
//!   crawl for a day.
//!
//! ```
//! use std::time::Duration;
//! use trawler_crawl::polite::retry_after;
//!
//! assert_eq!(retry_after("120", std::time::SystemTime::UNIX_EPOCH), Some(Duration::from_secs(120)));
//! assert_eq!(retry_after("soon", std::time::SystemTime::UNIX_EPOCH), None);
//! ```

use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

/// Longest pause a `Retry-After` can ask for.
pub const MAX_PAUSE: Duration = Duration::from_secs(300);

/// The parsed value of a `Retry-After` header (delay-seconds or an
/// HTTP-date, relative to `now`); `None` when it is neither.
pub fn retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

#[derive(Debug)]
struct Bucket {
    /// Tokens per second.
    rate: f64,
    /// Most tokens held.
    burst: f64,
    tokens: f64,
    last: Instant,
}

/// The rate cap and the target-wide pause, shared by the dispatcher and
/// the slot tasks.
#[derive(Debug)]
pub struct Politeness {
    bucket: Option<Mutex<Bucket>>,
    paused_until: Mutex<Option<Instant>>,
}

impl Politeness {
    /// At most `max_rate` requests per second (`None`: no cap).
    pub fn new(max_rate: Option<f64>) -> Self {
        Self {
            bucket: max_rate.map(|rate| {
                let burst = (rate / 10.0).max(1.0);
                Mutex::new(Bucket {
                    rate,
                    burst,
                    tokens: burst,
                    last: Instant::now(),
                })
            }),
            paused_until: Mutex::new(None),
        }
    }

    /// The cap, if any.
    pub fn max_rate(&self) -> Option<f64> {
        self.bucket
            .as_ref()
            .map(|b| b.lock().unwrap_or_else(|e| e.into_inner()).rate)
    }

    /// Pauses every request until `now + how_long` (capped at
    /// [`MAX_PAUSE`]); returns whether this extended the pause.
    pub fn pause_for(&self, how_long: Duration) -> bool {
        let until = Instant::now() + how_long.min(MAX_PAUSE);
        let mut paused = self.paused_until.lock().unwrap_or_else(|e| e.into_inner());
        if paused.is_some_and(|p| p >= until) {
            return false;
        }
        *paused = Some(until);
        true
    }

    /// Whether a pause is running.
    pub fn paused(&self) -> bool {
        self.paused_until
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some_and(|p| p > Instant::now())
    }

    /// Waits until a request may be sent: after any pause, and with a
    /// token of the rate cap.
    pub async fn turn(&self) {
        self.turn_before(None).await;
    }

    /// Like [`Politeness::turn`], but gives up at once, taking nothing,
    /// when the turn would come after `deadline`: a slot that would start
    /// too late must not use a token another slot can use in time.
    pub async fn turn_before(&self, deadline: Option<Instant>) -> bool {
        let late = |at: Instant| deadline.is_some_and(|d| at > d);
        loop {
            let now = Instant::now();
            let paused = *self.paused_until.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(until) = paused.filter(|p| *p > now) {
                if late(until) {
                    return false;
                }
                tokio::time::sleep_until(until).await;
                continue;
            }
            let Some(bucket) = &self.bucket else {
                return true;
            };
            let wait = {
                let mut b = bucket.lock().unwrap_or_else(|e| e.into_inner());
                let refill = now.duration_since(b.last).as_secs_f64() * b.rate;
                b.tokens = (b.tokens + refill).min(b.burst);
                b.last = now;
                // A hair under one token counts (float rounding would
                // otherwise ask for a zero-length sleep and spin).
                if b.tokens >= 1.0 - 1e-9 {
                    b.tokens = (b.tokens - 1.0).max(0.0);
                    return true;
                }
                // tokio's timers have millisecond resolution.
                Duration::from_secs_f64((1.0 - b.tokens) / b.rate).max(Duration::from_millis(1))
            };
            if late(now + wait) {
                return false;
            }
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_takes_seconds_and_http_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(retry_after(" 7 ", now), Some(Duration::from_secs(7)));
        let later = httpdate::fmt_http_date(now + Duration::from_secs(90));
        assert_eq!(retry_after(&later, now), Some(Duration::from_secs(90)));
        let earlier = httpdate::fmt_http_date(now - Duration::from_secs(90));
        assert_eq!(retry_after(&earlier, now), Some(Duration::ZERO));
        assert_eq!(retry_after("-1", now), None);
        assert_eq!(retry_after("", now), None);
    }

    #[tokio::test(start_paused = true)]
    async fn the_rate_is_capped_after_a_small_burst() {
        let p = Politeness::new(Some(50.0));
        let start = Instant::now();
        for _ in 0..105 {
            p.turn().await;
        }
        // A burst of 5, then 100 more at 50/s.
        let took = start.elapsed().as_secs_f64();
        assert!((1.9..=2.1).contains(&took), "{took}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_pause_holds_every_turn_and_is_never_shortened() {
        let p = Politeness::new(None);
        assert!(p.pause_for(Duration::from_secs(10)));
        assert!(
            !p.pause_for(Duration::from_secs(3)),
            "a shorter pause does not shorten it"
        );
        assert!(p.paused());
        let start = Instant::now();
        p.turn().await;
        assert_eq!(start.elapsed(), Duration::from_secs(10));
        assert!(!p.paused());
        assert!(p.pause_for(Duration::from_secs(3_600)));
        let start = Instant::now();
        p.turn().await;
        assert_eq!(start.elapsed(), MAX_PAUSE, "capped");
    }
}
