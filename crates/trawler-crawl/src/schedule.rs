//! The schedule: when each id is due, as a timer wheel with a cursor.
//!
//! Every id has a fixed *phase* inside the interval, a hash of the id, so
//! the ids of a job are spread evenly over the interval and the request rate
//! is flat — no burst at minute boundaries. Slot `k` of id `i` is at
//! `k·interval + phase(i)` in unix milliseconds: the grid is aligned to the
//! epoch, so a restart keeps every id on the same slots, and samples of one
//! id are exactly one interval apart.
//!
//! Why a wheel and not timers: a million ids per minute is 16,700 due times
//! per second. One tokio timer or task per id would cost a heap entry and a
//! wake-up each; instead the ids sit in buckets by phase (at most 65,536
//! buckets, each sorted by `(phase, id)`, about 16 bytes per id), and one
//! *cursor* — the latest slot time already handed out — sweeps the buckets
//! as time passes. Handing out every slot whose time is in
//! `(cursor, now]` and then moving the cursor to `now` means each
//! `(id, slot)` is handed out exactly once, whatever the timing of the
//! sweeps, and adding or removing an id touches one small bucket.

/// Upper bound on buckets, so that long intervals do not cost memory.
const MAX_BUCKETS: u64 = 1 << 16;

/// The phase of `id` within an interval of `interval_ms`: a fixed function
/// of the id, so it survives restarts and does not depend on the other ids.
pub fn phase(id: u64, interval_ms: u64) -> u64 {
    mix(id) % interval_ms
}

/// splitmix64's finaliser: consecutive ids land on unrelated phases.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// One tracked id in its bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Entry {
    /// Milliseconds after the start of each interval; first so that the
    /// derived order is `(phase, id)`.
    phase: u32,
    id: u64,
}

/// A slot handed out by [`Wheel::advance`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Due {
    /// The id to poll.
    pub id: u64,
    /// The slot's scheduled time, unix ms.
    pub slot_ms: i64,
}

/// The tracked ids, bucketed by phase, and the cursor.
#[derive(Debug)]
pub struct Wheel {
    interval_ms: u64,
    /// Milliseconds of phase per bucket.
    width_ms: u64,
    buckets: Vec<Vec<Entry>>,
    len: usize,
    /// Every slot at or before this time (unix ms) has been handed out.
    cursor_ms: i64,
}

impl Wheel {
    /// An empty wheel whose cursor starts at `now_ms`: slots before the start
    /// are not due (they were not missed either, nobody was polling).
    pub fn new(interval_ms: u64, now_ms: i64) -> Self {
        assert!(
            interval_ms > 0 && interval_ms <= u32::MAX as u64,
            "interval out of range"
        );
        let buckets = interval_ms.min(MAX_BUCKETS);
        let width_ms = interval_ms.div_ceil(buckets);
        Self {
            interval_ms,
            width_ms,
            buckets: vec![Vec::new(); interval_ms.div_ceil(width_ms) as usize],
            len: 0,
            cursor_ms: now_ms,
        }
    }

    fn entry(&self, id: u64) -> (usize, Entry) {
        let phase = phase(id, self.interval_ms);
        (
            (phase / self.width_ms) as usize,
            Entry {
                phase: phase as u32,
                id,
            },
        )
    }

    /// Number of tracked ids.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no id is tracked.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Every slot at or before this time has been handed out.
    pub fn cursor_ms(&self) -> i64 {
        self.cursor_ms
    }

    /// Whether `id` is tracked.
    pub fn contains(&self, id: u64) -> bool {
        let (b, entry) = self.entry(id);
        self.buckets[b].binary_search(&entry).is_ok()
    }

    /// Tracks `id`; false if it already was. Its first slot is the next one
    /// after the cursor, so re-tracking an id never repeats a slot.
    pub fn insert(&mut self, id: u64) -> bool {
        let (b, entry) = self.entry(id);
        let bucket = &mut self.buckets[b];
        match bucket.binary_search(&entry) {
            Ok(_) => false,
            Err(at) => {
                bucket.insert(at, entry);
                self.len += 1;
                true
            }
        }
    }

    /// Tracks many ids at once; returns how many were new. Sorting first
    /// lets each bucket grow once, to its exact size.
    pub fn insert_many(&mut self, ids: impl Iterator<Item = u64>) -> usize {
        let mut new: Vec<(usize, Entry)> = ids.map(|id| self.entry(id)).collect();
        new.sort_unstable();
        new.dedup();
        let before = self.len;
        for group in new.chunk_by(|a, b| a.0 == b.0) {
            let bucket = &mut self.buckets[group[0].0];
            let old = bucket.len();
            bucket.reserve_exact(group.len());
            bucket.extend(group.iter().map(|&(_, e)| e));
            bucket.sort_unstable();
            bucket.dedup();
            self.len += bucket.len() - old;
        }
        self.len - before
    }

    /// Stops tracking `id`; false if it was not tracked.
    pub fn remove(&mut self, id: u64) -> bool {
        let (b, entry) = self.entry(id);
        let bucket = &mut self.buckets[b];
        match bucket.binary_search(&entry) {
            Ok(at) => {
                bucket.remove(at);
                self.len -= 1;
                true
            }
            Err(_) => false,
        }
    }

    /// Every tracked id, in ascending order.
    pub fn ids(&self) -> Vec<u64> {
        let mut ids: Vec<u64> = self.buckets.iter().flatten().map(|e| e.id).collect();
        ids.sort_unstable();
        ids
    }

    /// Hands out every slot with `cursor < slot_ms <= now_ms`, in slot order,
    /// and moves the cursor past them. Stops early, on a millisecond
    /// boundary, once `out` holds at least `max` slots; the rest are handed
    /// out by the next call.
    pub fn advance(&mut self, now_ms: i64, max: usize, out: &mut Vec<Due>) {
        let interval = self.interval_ms as i64;
        while self.cursor_ms < now_ms && out.len() < max {
            let first = self.cursor_ms + 1;
            let cycle_start = first - first.rem_euclid(interval);
            let from = (first - cycle_start) as u32;
            let to = (now_ms - cycle_start).min(interval - 1) as u32;
            // The cursor after this pass, unless `out` fills first.
            let mut reached = to;
            'sweep: for bucket in &self.buckets
                [(from as u64 / self.width_ms) as usize..=(to as u64 / self.width_ms) as usize]
            {
                let start = bucket.partition_point(|e| e.phase < from);
                for entry in &bucket[start..] {
                    if entry.phase > to {
                        break 'sweep;
                    }
                    let last_phase = out.last().map(|d| d.slot_ms - cycle_start);
                    if out.len() >= max && last_phase != Some(entry.phase as i64) {
                        reached = entry.phase - 1;
                        break 'sweep;
                    }
                    out.push(Due {
                        id: entry.id,
                        slot_ms: cycle_start + entry.phase as i64,
                    });
                }
            }
            self.cursor_ms = cycle_start + reached as i64;
        }
    }

    /// Moves the cursor forward to `to_ms` without handing out the slots in
    /// between; returns how many slots were skipped. Used when the crawler
    /// has fallen more than an interval behind (e.g. the process was
    /// suspended): walking every skipped slot would only delay recovery.
    pub fn skip_to(&mut self, to_ms: i64) -> u64 {
        if to_ms <= self.cursor_ms {
            return 0;
        }
        let interval = self.interval_ms as i64;
        let whole = (to_ms - self.cursor_ms) / interval;
        let mut skipped = whole as u64 * self.len as u64;
        let rest_from = self.cursor_ms + whole * interval;
        // The partial interval: count its slots with a sweep.
        let mut scratch = Vec::new();
        self.cursor_ms = rest_from;
        self.advance(to_ms, usize::MAX, &mut scratch);
        skipped += scratch.len() as u64;
        skipped
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    #[test]
    fn each_slot_is_handed_out_once_whatever_the_sweep_timing() {
        let interval = 1_000;
        let mut wheel = Wheel::new(interval, 10_000_017);
        assert_eq!(wheel.insert_many(1_000..1_500), 500);
        assert!(!wheel.insert(1_000));
        let mut out = Vec::new();
        let mut now = 10_000_017;
        // Uneven steps, some tiny, some longer than the interval, and a
        // batch limit that forces early stops.
        for step in [1, 3, 250, 7, 1_100, 2, 640, 999, 1, 1_000]
            .iter()
            .cycle()
            .take(40)
        {
            now += step;
            let mut batch = Vec::new();
            while wheel.cursor_ms() < now {
                wheel.advance(now, 37, &mut batch);
                out.append(&mut batch);
            }
        }
        let mut seen: HashMap<u64, Vec<i64>> = HashMap::new();
        for due in &out {
            assert_eq!(
                due.slot_ms.rem_euclid(interval as i64),
                phase(due.id, interval) as i64
            );
            seen.entry(due.id).or_default().push(due.slot_ms);
        }
        let slots_per_id = (now - 10_000_017) as usize / interval as usize;
        for (id, slots) in &seen {
            for pair in slots.windows(2) {
                assert_eq!(pair[1] - pair[0], interval as i64, "id {id}: {slots:?}");
            }
            assert!(slots.len() >= slots_per_id && slots.len() <= slots_per_id + 1);
        }
        assert_eq!(seen.len(), 500);
        // Slot order.
        assert!(out.windows(2).all(|w| w[0].slot_ms <= w[1].slot_ms));
    }

    #[test]
    fn insert_remove_and_ids() {
        let mut wheel = Wheel::new(60_000, 0);
        assert_eq!(wheel.insert_many([5, 3, 3, 9].into_iter()), 3);
        assert!(wheel.insert(7));
        assert!(wheel.remove(3));
        assert!(!wheel.remove(3));
        assert!(wheel.contains(9) && !wheel.contains(3));
        assert_eq!(wheel.ids(), [5, 7, 9]);
        assert_eq!(wheel.len(), 3);
    }

    #[test]
    fn long_intervals_bound_the_bucket_count() {
        let mut wheel = Wheel::new(86_400_000, 0);
        assert!(wheel.buckets.len() <= MAX_BUCKETS as usize);
        wheel.insert_many(0..10_000);
        let mut out = Vec::new();
        wheel.advance(86_400_000, usize::MAX, &mut out);
        assert_eq!(out.len(), 10_000);
    }

    #[test]
    fn skip_to_counts_skipped_slots() {
        let mut wheel = Wheel::new(1_000, 0);
        wheel.insert_many(0..100);
        assert_eq!(wheel.skip_to(3_000), 300);
        let mut out = Vec::new();
        wheel.advance(4_000, usize::MAX, &mut out);
        assert_eq!(out.len(), 100);
        assert!(out.iter().all(|d| d.slot_ms > 3_000));
    }

    proptest! {
        /// Phases are flat: over any set of consecutive ids, every tenth of
        /// the interval gets close to a tenth of them.
        #[test]
        fn phases_are_flat(start in 0u64..u64::MAX / 2, interval in 1_000u64..3_600_000) {
            let n = 20_000u64;
            let mut bins = [0u64; 10];
            for id in start..start + n {
                let p = phase(id, interval);
                prop_assert!(p < interval);
                bins[(p * 10 / interval) as usize] += 1;
            }
            // Expected 2,000 each with σ ≈ 42: allow 6σ.
            for count in bins {
                prop_assert!((1_750..=2_250).contains(&count), "{bins:?}");
            }
        }
    }
}
