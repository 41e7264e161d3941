//! Unix time as trawler sees it: the system clock plus an offset that is
//! zero unless a soak test moves it (`trawler run --clock-offset`).
//!
//! What happens at a clock hour or at midnight UTC (a new rollup hour, the
//! movers' references, a new day block) only shows in a run that crosses
//! one. Shifting the whole process's notion of now lets a benchmark reach
//! the next hour a few minutes after it starts while every line of the code
//! under test stays the real one: the schedule's slots, the samples'
//! timestamps and the store's day boundaries all follow this clock.
//!
//! It lives here, not in the crawler, because every part that stamps or
//! reads a time must agree on it: the crawl's slots, the enrichment's
//! verdicts, the node's hour boundaries, the API's default end of a range.
//! A second "now" anywhere makes a shifted run disagree with itself. The
//! simulator (`trawler-sim`) does not use it on purpose: it stands for the
//! outside world, whose clock a soak test does not move.
//!
//! ```
//! let before = trawler_common::clock::unix_ms();
//! assert!(before > 1_600_000_000_000);
//! ```

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

static OFFSET_MS: AtomicI64 = AtomicI64::new(0);

/// Shifts every later reading of this clock by `offset_ms` (may be
/// negative). Set once at start-up, before anything reads the clock.
pub fn set_offset_ms(offset_ms: i64) {
    OFFSET_MS.store(offset_ms, Ordering::Relaxed);
}

/// The offset set by [`set_offset_ms`].
pub fn offset_ms() -> i64 {
    OFFSET_MS.load(Ordering::Relaxed)
}

/// Unix time in microseconds, offset.
pub fn unix_us() -> i64 {
    let us = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0);
    us + offset_ms() * 1_000
}

/// Unix time in milliseconds, offset.
pub fn unix_ms() -> i64 {
    unix_us().div_euclid(1_000)
}

#[cfg(test)]
mod tests {
    #[test]
    fn microseconds_and_milliseconds_agree() {
        let ms = super::unix_ms();
        let us = super::unix_us();
        assert!((us / 1_000 - ms).abs() < 1_000);
    }
}
