//! Live views of a job's entities, in memory, updated at ingest and read by
//! the API: the latest values, the rank by one metric, its exact average,
//! the top N, the top movers over an hour and a day, and the set of entities
//! an enrichment flagged as suspicious.
//!
//! This crate knows nothing of HTTP, the crawler or the store's format. The
//! binary feeds it:
//!
//! * **at ingest**, [`Views::apply`] with a batch of [`Update`]s: the values
//!   of an observation plus the ranked metric's values an hour and a day ago
//!   ([`Reference`], kept in memory by [`HourlyFirsts`], fed by ingest);
//! * **from the enrichment**, [`Views::apply_suspicion`];
//! * **when tracking stops**, [`Views::remove`];
//! * **at start-up**, [`Views::rebuild`] with one [`Row`] per entity from the
//!   store's latest values — a million rows build in a fraction of a second,
//!   because every ordered view is built from sorted keys in one pass.
//!
//! ```
//! use trawler_views::{Reference, Update, ViewsConfig, Window};
//!
//! let views = ViewsConfig::influencers().build()?;
//! let at = 1_700_000_000_000;
//! views.apply(&[
//!     Update { id: 7, ts_ms: at, values: &[Some(5_000), Some(100)], reference: Reference::default() },
//!     Update { id: 8, ts_ms: at, values: &[Some(9_000), Some(50)], reference: Reference { hour_ago: Some(8_000), day_ago: None } },
//! ])?;
//! assert_eq!(views.rank(7), Some(2));
//! assert_eq!(views.entity(8).unwrap().ratios, vec![Some(180.0)]);
//! assert_eq!(views.stats().averages[0].mean(), Some(7_000.0));
//! assert_eq!(views.top_gainers(Window::Hour, 10)[0].gain, 1_000);
//! # Ok::<(), trawler_views::ViewsError>(())
//! ```
//!
//! # Design
//!
//! * **Latest table** — parallel columns indexed by a dense `u32` slot (the
//!   `state` module); ids map to slots through a direct table while they are
//!   dense and a hash map when they are not (the `index` module).
//! * **Rank, top N, movers** — counted B+trees (`ostree`) of
//!   `(value descending, id ascending)`: rank = 1 + the number of keys with a
//!   strictly greater value, one descent; top N is an in-order walk from the
//!   first key. Gains and losses share one tree per window: gainers are read
//!   from the front, losers from the back one group of equal gains at a
//!   time, so ties always come out by id ascending.
//! * **Average** — an exact `i128` sum and a count per metric, adjusted by
//!   the difference on every update and removal.
//! * **Suspicious set** — a `BTreeSet<u64>` of ids: pages in id order cost
//!   O(log n + page).
//!
//! # Concurrency
//!
//! One [`std::sync::RwLock`] around the whole state. Every view must agree
//! with the others (a rank and the top N of the same instant), so sharding
//! would need a global step anyway; and the critical sections are short: a
//! read holds the lock for one or two B+tree descents (about a microsecond
//! at a million entities, most of it cache misses), and [`Views::apply`]
//! holds it for at most [`LOCK_BATCH`] updates (~0.3 ms), then yields so the
//! readers woken by the unlock get in before the next chunk. std's lock is
//! futex-based and queues new readers behind a waiting writer, so the one
//! ingest thread is not starved either. [`Views::rebuild`] builds the new
//! state outside the lock and swaps it in. `parking_lot` was not needed: the
//! figures of `examples/views_bench.rs` under a concurrent ingest are within
//! the budget with std's lock.
//!
//! # Cost
//!
//! Measured at 1M entities (see the example): ~4.5 µs per update (six
//! B+tree descents: rank, and two movers trees, each a remove and an
//! insert), ~1 µs per `entity`/`rank` read, 0.2 µs for a top 100; about 130
//! bytes per entity of which the three trees are ~75; a rebuild of 1M rows
//! in ~0.2 s.
//!
//! A panic while the lock is held cannot leave a view half-updated by a bad
//! input (inputs are validated before the lock is taken), so a poisoned lock
//! is entered anyway rather than turning every later read into a panic.

mod config;
mod hourly;
mod index;
mod ostree;
mod state;

use std::sync::{PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

pub use config::{
    decode_float, encode_float, RatioConfig, Schema, ViewsConfig, ViewsError, MAX_METRICS,
};
pub use hourly::{HourlyFirsts, HOURS};
use state::State;

/// Updates applied per write-lock acquisition by [`Views::apply`]: bounds
/// how long a reader can wait behind the ingest path (~0.3 ms at 1M
/// entities, where an update costs ~4.5 µs).
pub const LOCK_BATCH: usize = 64;

/// Most entries one read returns ([`Views::top`], movers, suspicious pages),
/// whatever limit is asked: no read walks the whole data set.
pub const MAX_LIMIT: usize = 10_000;

/// One observation of an entity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Update<'a> {
    /// The entity.
    pub id: u64,
    /// Time of the observation (the scheduled slot), unix ms. An update
    /// older than the one held is ignored; an equal one is applied.
    pub ts_ms: i64,
    /// One value per metric of the [`Schema`], in its order. `None` keeps
    /// the value held (the observation did not carry the metric).
    pub values: &'a [Option<i64>],
    /// The ranked metric's earlier values, for the movers.
    pub reference: Reference,
}

/// The ranked metric's values at the start of the movers' windows (see
/// [`HourlyFirsts`]). `None` takes the entity out of that window's movers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reference {
    /// First value of the clock hour before the update's.
    pub hour_ago: Option<i64>,
    /// First value of the clock hour 24 hours before the update's.
    pub day_ago: Option<i64>,
}

/// The answer of the suspicion enrichment for one entity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Suspicion {
    /// Whether the entity was found suspicious.
    pub suspicious: bool,
    /// When it was checked, unix ms. An older check than the one held is
    /// ignored.
    pub checked_at_ms: i64,
}

/// One entity as stored, for [`Views::rebuild`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Row<'a> {
    /// Its latest observation and reference values.
    pub update: Update<'a>,
    /// Its latest suspicion check, if any.
    pub suspicion: Option<Suspicion>,
}

/// A movers window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Window {
    /// The last hour.
    Hour = 0,
    /// The last 24 hours.
    Day = 1,
}

/// Everything the views hold on one entity.
#[derive(Debug, Clone, PartialEq)]
pub struct Entity {
    /// The entity.
    pub id: u64,
    /// Time of its latest observation, unix ms.
    pub ts_ms: i64,
    /// Latest value of each metric, in [`Schema::metrics`] order.
    pub values: Vec<Option<i64>>,
    /// Each ratio of [`Schema::ratios`]; `None` without both values or with
    /// a zero denominator.
    pub ratios: Vec<Option<f64>>,
    /// Rank by the ranked metric (1 = largest), if it has a value.
    pub rank: Option<u64>,
    /// Gain of the ranked metric over the last hour.
    pub gain_1h: Option<i64>,
    /// Gain of the ranked metric over the last 24 hours.
    pub gain_24h: Option<i64>,
    /// Latest suspicion check.
    pub suspicion: Option<Suspicion>,
}

/// An entry of [`Views::top`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ranked {
    /// The entity.
    pub id: u64,
    /// Its value of the ranked metric.
    pub value: i64,
    /// Its rank; equal values share a rank.
    pub rank: u64,
}

/// An entry of [`Views::top_gainers`] or [`Views::top_losers`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mover {
    /// The entity.
    pub id: u64,
    /// Its gain over the window (negative for a loss), saturated to `i64`.
    pub gain: i64,
}

/// An exact average: the sum and the count of the entities with a value.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Average {
    /// Exact sum of the values.
    pub sum: i128,
    /// Entities with a value.
    pub count: u64,
}

impl Average {
    /// `sum / count`, `None` when no entity has a value.
    pub fn mean(&self) -> Option<f64> {
        (self.count > 0).then(|| self.sum as f64 / self.count as f64)
    }
}

/// View-wide figures, O(metrics) to read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stats {
    /// Entities in the views.
    pub tracked: usize,
    /// Entities whose latest check found them suspicious.
    pub suspicious: usize,
    /// Per metric, in [`Schema::metrics`] order.
    pub averages: Vec<Average>,
}

/// Heap bytes held by each part of the views, from allocated capacities.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemoryUse {
    /// The latest table: timestamps, values, flags, gains, check times.
    pub table: usize,
    /// Id → slot.
    pub index: usize,
    /// The rank tree (also serves the top N).
    pub rank: usize,
    /// The two movers trees.
    pub movers: usize,
    /// The suspicious set (estimated from its length).
    pub suspicious: usize,
}

impl MemoryUse {
    /// All parts together.
    pub fn total(&self) -> usize {
        self.table + self.index + self.rank + self.movers + self.suspicious
    }
}

/// What [`Views::apply`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Applied {
    /// Updates applied.
    pub applied: usize,
    /// Updates ignored because the views hold a newer observation.
    pub stale: usize,
}

/// The live views of one job; share it in an `Arc`.
#[derive(Debug)]
pub struct Views {
    schema: Schema,
    state: RwLock<State>,
}

impl Views {
    fn new(schema: Schema) -> Self {
        let state = RwLock::new(State::new(&schema));
        Self { schema, state }
    }

    /// The metrics and ratios, by position.
    pub fn schema(&self) -> &Schema {
        &self.schema
    }

    /// Applies observations in order, taking the write lock once per
    /// [`LOCK_BATCH`]. If any update has the wrong number of values, nothing
    /// is applied.
    pub fn apply(&self, updates: &[Update<'_>]) -> Result<Applied, ViewsError> {
        self.check_arity(updates)?;
        let mut outcome = Applied::default();
        for (i, chunk) in updates.chunks(LOCK_BATCH).enumerate() {
            if i > 0 {
                // Let the readers woken by the last unlock take the lock
                // before this thread takes it again.
                std::thread::yield_now();
            }
            let mut state = self.write();
            for u in chunk {
                if state.apply(u) {
                    outcome.applied += 1;
                } else {
                    outcome.stale += 1;
                }
            }
        }
        Ok(outcome)
    }

    /// Records suspicion checks; returns how many were applied (untracked
    /// ids and checks older than the one held are ignored).
    pub fn apply_suspicion(&self, checks: &[(u64, Suspicion)]) -> usize {
        let mut applied = 0;
        for chunk in checks.chunks(LOCK_BATCH) {
            let mut state = self.write();
            applied += chunk
                .iter()
                .filter(|&&(id, s)| state.set_suspicion(id, s))
                .count();
        }
        applied
    }

    /// Takes entities out of every view; returns how many were there.
    pub fn remove(&self, ids: &[u64]) -> usize {
        let mut removed = 0;
        for chunk in ids.chunks(LOCK_BATCH) {
            let mut state = self.write();
            removed += chunk.iter().filter(|&&id| state.remove(id)).count();
        }
        removed
    }

    /// Replaces the whole content with `rows` (one per entity; for a repeated
    /// id the newest row wins). Built outside the lock: readers see the old
    /// views until the new ones are complete. Returns the entities loaded.
    pub fn rebuild<'a>(
        &self,
        rows: impl IntoIterator<Item = Row<'a>>,
    ) -> Result<usize, ViewsError> {
        let expected = self.schema.metrics().len();
        let mut bad = None;
        let rows = rows.into_iter().map_while(|row| {
            if row.update.values.len() == expected {
                Some(row)
            } else {
                bad = Some(ViewsError::Arity {
                    id: row.update.id,
                    expected,
                    got: row.update.values.len(),
                });
                None
            }
        });
        let built = State::build(&self.schema, rows);
        if let Some(err) = bad {
            return Err(err);
        }
        let tracked = built.stats().tracked;
        *self.write() = built;
        Ok(tracked)
    }

    /// Everything held on one entity, `None` if it is not in the views.
    pub fn entity(&self, id: u64) -> Option<Entity> {
        self.read().entity(&self.schema, id)
    }

    /// Rank of an entity by the ranked metric: 1 + the number of entities
    /// with a strictly greater value. `None` if it has no value.
    pub fn rank(&self, id: u64) -> Option<u64> {
        self.read().rank(id)
    }

    /// The `limit` (at most [`MAX_LIMIT`]) entities with the largest value,
    /// descending, ties by id ascending.
    pub fn top(&self, limit: usize) -> Vec<Ranked> {
        self.read().top(limit.min(MAX_LIMIT))
    }

    /// The largest positive gains over `window`, descending, ties by id.
    pub fn top_gainers(&self, window: Window, limit: usize) -> Vec<Mover> {
        self.read().top_gainers(window, limit.min(MAX_LIMIT))
    }

    /// The largest losses (negative gains) over `window`, most negative
    /// first, ties by id.
    pub fn top_losers(&self, window: Window, limit: usize) -> Vec<Mover> {
        self.read().top_losers(window, limit.min(MAX_LIMIT))
    }

    /// Suspicious entities in id order, after `after`, at most `limit`
    /// (capped at [`MAX_LIMIT`]). The count is [`Stats::suspicious`].
    pub fn suspicious(&self, after: Option<u64>, limit: usize) -> Vec<u64> {
        self.read().suspicious(after, limit.min(MAX_LIMIT))
    }

    /// Tracked and suspicious counts, and the exact average of each metric.
    pub fn stats(&self) -> Stats {
        self.read().stats()
    }

    /// Heap bytes the views hold (allocated capacity), for `/metrics`.
    pub fn memory(&self) -> MemoryUse {
        self.read().memory()
    }

    fn check_arity(&self, updates: &[Update<'_>]) -> Result<(), ViewsError> {
        let expected = self.schema.metrics().len();
        match updates.iter().find(|u| u.values.len() != expected) {
            Some(u) => Err(ViewsError::Arity {
                id: u.id,
                expected,
                got: u.values.len(),
            }),
            None => Ok(()),
        }
    }

    fn read(&self) -> RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(PoisonError::into_inner)
    }
}
