//! The movers' references, kept in memory and fed by ingest itself.
//!
//! A mover's gain over an hour is the ranked metric now minus its *first
//! value in the previous clock hour* (so `gain1h` spans one to two hours),
//! and over a day, minus its first value in the clock hour 24 hours before
//! the current one (`gain24h` spans 24 to 25 hours). Anchoring on clock
//! hours keeps one reference per entity per hour instead of a value per
//! observation, and it is what the store's hourly rollups hold, so a
//! restart restores the same references from them.
//!
//! [`HourlyFirsts`] holds, per entity, the first value seen in each of the
//! last [`HOURS`] clock hours in a ring indexed by `hour % HOURS`: 25 × 8
//! bytes plus a few for the index. Reading the references back from the
//! store instead cost two rollup reads per entity at the first observation
//! of every hour — two million reads within one interval for a million
//! entities, on the ingest path — which is what collapsed the crawl at
//! every clock hour.
//!
//! ```
//! use trawler_views::HourlyFirsts;
//!
//! const HOUR: i64 = 3_600_000;
//! let mut firsts = HourlyFirsts::default();
//! firsts.observe(7, 10 * HOUR + 60_000, Some(100));
//! firsts.observe(7, 10 * HOUR + 120_000, Some(130)); // not the first of hour 10
//! let r = firsts.observe(7, 11 * HOUR + 60_000, Some(150));
//! assert_eq!(r.hour_ago, Some(100));
//! assert_eq!(r.day_ago, None);
//! ```

use crate::index::IdIndex;
use crate::Reference;

/// Clock hours remembered per entity: the current one and the 24 before it.
pub const HOURS: usize = 25;
const HOUR_MS: i64 = 3_600_000;
/// An hour without a value in the ring.
const MISSING: i64 = i64::MIN;

/// The first value of the ranked metric in each of the last [`HOURS`]
/// clock hours, per entity. Not synchronised: the owner wraps it in a lock
/// taken once per ingest batch.
#[derive(Debug, Default)]
pub struct HourlyFirsts {
    index: IdIndex,
    /// Per slot: the newest clock hour (hours since the epoch) the ring
    /// covers; it holds hours `newest - 24 ..= newest`.
    newest: Vec<i64>,
    /// Per slot, [`HOURS`] values, hour `h` at `h % HOURS`.
    firsts: Vec<i64>,
    /// Slots of removed entities, reused first.
    free: Vec<u32>,
}

impl HourlyFirsts {
    /// Records an observation at `ts_ms` (its value is the hour's first
    /// unless one is held) and returns the references for it. A `None`
    /// value only reads the references.
    pub fn observe(&mut self, id: u64, ts_ms: i64, value: Option<i64>) -> Reference {
        let hour = ts_ms.div_euclid(HOUR_MS);
        let slot = self.slot(id);
        self.advance(slot, hour);
        if let Some(v) = value.filter(|&v| v != MISSING) {
            if let Some(cell) = self.cell(slot, hour) {
                if *cell == MISSING {
                    *cell = v;
                }
            }
        }
        Reference {
            hour_ago: self.get(slot, hour - 1),
            day_ago: self.get(slot, hour - 24),
        }
    }

    /// Sets the first value of the clock hour starting at `hour_ms`, read
    /// back from the store at start-up; it replaces what ingest recorded
    /// for that hour, since the store's value is older.
    pub fn restore(&mut self, id: u64, hour_ms: i64, value: i64) {
        if value == MISSING {
            return;
        }
        let hour = hour_ms.div_euclid(HOUR_MS);
        let slot = self.slot(id);
        self.advance(slot, hour);
        if let Some(cell) = self.cell(slot, hour) {
            *cell = value;
        }
    }

    /// Forgets an entity (untracked or invalid).
    pub fn remove(&mut self, id: u64) {
        if let Some(slot) = self.index.remove(id) {
            self.free.push(slot);
        }
    }

    /// Entities held.
    pub fn len(&self) -> usize {
        self.newest.len() - self.free.len()
    }

    /// Whether no entity is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Heap bytes in use, for `/metrics`.
    pub fn memory_bytes(&self) -> usize {
        self.index.heap_bytes()
            + self.newest.capacity() * 8
            + self.firsts.capacity() * 8
            + self.free.capacity() * 4
    }

    fn slot(&mut self, id: u64) -> usize {
        if let Some(slot) = self.index.get(id) {
            return slot as usize;
        }
        let slot = match self.free.pop() {
            Some(slot) => {
                let s = slot as usize;
                self.newest[s] = i64::MIN;
                self.firsts[s * HOURS..(s + 1) * HOURS].fill(MISSING);
                slot
            }
            None => {
                self.newest.push(i64::MIN);
                self.firsts.extend([MISSING; HOURS]);
                (self.newest.len() - 1) as u32
            }
        };
        self.index.insert(id, slot);
        slot as usize
    }

    /// Moves the ring forward to `hour`, clearing the hours it passes.
    fn advance(&mut self, slot: usize, hour: i64) {
        let newest = self.newest[slot];
        if hour <= newest {
            return;
        }
        let ring = &mut self.firsts[slot * HOURS..(slot + 1) * HOURS];
        if newest == i64::MIN || hour - newest >= HOURS as i64 {
            ring.fill(MISSING);
        } else {
            for h in newest + 1..=hour {
                ring[h.rem_euclid(HOURS as i64) as usize] = MISSING;
            }
        }
        self.newest[slot] = hour;
    }

    fn cell(&mut self, slot: usize, hour: i64) -> Option<&mut i64> {
        let newest = self.newest[slot];
        (hour <= newest && hour > newest - HOURS as i64)
            .then(|| &mut self.firsts[slot * HOURS + hour.rem_euclid(HOURS as i64) as usize])
    }

    fn get(&self, slot: usize, hour: i64) -> Option<i64> {
        let newest = self.newest[slot];
        if hour > newest || hour <= newest - HOURS as i64 {
            return None;
        }
        let v = self.firsts[slot * HOURS + hour.rem_euclid(HOURS as i64) as usize];
        (v != MISSING).then_some(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_first_value_of_each_hour_is_the_reference() {
        let mut f = HourlyFirsts::default();
        let at = |h: i64, m: i64| h * HOUR_MS + m * 60_000;
        for h in 100..130 {
            for m in 0..60 {
                let r = f.observe(1, at(h, m), Some(h * 1_000 + m));
                let expect_hour = (h > 100).then_some((h - 1) * 1_000);
                let expect_day = (h >= 124).then_some((h - 24) * 1_000);
                assert_eq!(r.hour_ago, expect_hour, "hour {h} minute {m}");
                assert_eq!(r.day_ago, expect_day, "hour {h} minute {m}");
            }
        }
    }

    #[test]
    fn a_silent_hour_is_missing_not_stale() {
        let mut f = HourlyFirsts::default();
        f.observe(1, 10 * HOUR_MS, Some(5));
        // Hour 11 had no observation: at hour 12 there is no hour-ago value.
        let r = f.observe(1, 12 * HOUR_MS, Some(7));
        assert_eq!(r.hour_ago, None);
        // A ring that wrapped completely forgets everything.
        let r = f.observe(1, 60 * HOUR_MS, Some(9));
        assert_eq!(r, Reference::default());
    }

    #[test]
    fn restore_overrides_the_hour_and_removal_frees_the_slot() {
        let mut f = HourlyFirsts::default();
        f.observe(1, 10 * HOUR_MS + 5, Some(50));
        f.restore(1, 10 * HOUR_MS, 40);
        f.restore(1, (11 - 24) * HOUR_MS, 1);
        let r = f.observe(1, 11 * HOUR_MS, Some(60));
        assert_eq!(r.hour_ago, Some(40));
        assert_eq!(r.day_ago, Some(1));
        f.remove(1);
        assert!(f.is_empty());
        let r = f.observe(2, 11 * HOUR_MS, Some(3));
        assert_eq!(r, Reference::default(), "a reused slot starts empty");
        assert_eq!(f.len(), 1);
    }

    proptest! {
        /// Against a model that remembers every observation, in any order
        /// of arrival (late observations included).
        #[test]
        fn matches_a_model(obs in proptest::collection::vec((0u64..4, 0i64..40 * 60, -5i64..5), 1..300)) {
            let mut f = HourlyFirsts::default();
            let mut seen: Vec<(u64, i64, i64)> = Vec::new();
            let mut newest: std::collections::HashMap<u64, i64> = Default::default();
            for (id, minute, value) in obs {
                let ts = minute * 60_000;
                let hour = ts.div_euclid(HOUR_MS);
                let top = newest.entry(id).or_insert(hour);
                *top = (*top).max(hour);
                let top = *top;
                seen.push((id, ts, value));
                // The first value of hour `h`: the first observation at
                // `h` made while `h` was within the 25 hours up to the
                // newest hour seen so far, if `h` still is.
                let first = |h: i64| -> Option<i64> {
                    if h <= top - HOURS as i64 {
                        return None;
                    }
                    let mut newest_then = i64::MIN;
                    for &(i, t, v) in &seen {
                        if i != id {
                            continue;
                        }
                        let th = t.div_euclid(HOUR_MS);
                        newest_then = newest_then.max(th);
                        if th == h && h > newest_then - HOURS as i64 {
                            return Some(v);
                        }
                    }
                    None
                };
                let r = f.observe(id, ts, Some(value));
                prop_assert_eq!(r.hour_ago, first(hour - 1));
                prop_assert_eq!(r.day_ago, first(hour - 24));
            }
        }
    }
}
