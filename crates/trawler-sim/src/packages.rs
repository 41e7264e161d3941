//! The packages behind the simulator's second API, a package registry.
//!
//! It exists so that trawler can be shown to be a generic engine: its
//! answers have a different shape from Mockstagram's (string keys, nested
//! objects, floats), and nothing outside this crate names it.
//!
//! Any name of the documented shape ([`valid_name`]) exists unless it starts
//! with `missing-`; its state is created on its first read and kept in
//! memory. Like [`crate::Dynamics::Mockstagram`] accounts, and whatever the
//! configured dynamics, every read moves a package: downloads grow, stars
//! and the last day's downloads walk up and down (never below zero) and the
//! score drifts within `[0, 1]`. The n-th read of a package is a pure
//! function of `(seed, name, n)`, so two simulators with the same seed agree
//! whatever the order of requests. The functions are public so that tests
//! can replay a series without a server.
//!
//! The table is split into a few shards, each a `std` mutex held only for
//! one step, so that concurrent reads of different packages rarely wait on
//! each other. It grows with every distinct name read: fine for a crawler
//! polling a fixed list, not meant for clients inventing names forever.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use crate::rng::{fnv1a, hash, mix, normal, unit};

/// Longest package name, in bytes.
pub const MAX_NAME_BYTES: usize = 64;

/// Names with this prefix have the right shape but do not exist.
pub const MISSING_PREFIX: &str = "missing-";

/// The score is kept in ten-thousandths so that it always has exactly four
/// decimals.
pub const SCORE_SCALE: u16 = 10_000;

/// Stream tags keep the draws of one package independent of each other (and
/// of the accounts', which hash integers rather than names).
const STREAM_INITIAL: u64 = 11;
const STREAM_STEP: u64 = 12;
const STREAM_MAINTAINERS: u64 = 13;

/// Most downloads added by one read.
pub const MAX_DOWNLOADS_STEP: u64 = 50;
/// Most stars gained or lost by one read.
pub const MAX_STARS_STEP: u64 = 2;
/// Most ten-thousandths the score moves by in one read.
pub const MAX_SCORE_STEP: u16 = 20;

/// Whether `name` has the shape of a package name: 1 to 64 bytes of
/// `[a-z0-9._-]`. (Whether it exists is a separate question:
/// [`exists`].)
pub fn valid_name(name: &str) -> bool {
    (1..=MAX_NAME_BYTES).contains(&name.len())
        && name
            .bytes()
            .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'.' | b'_' | b'-'))
}

/// Whether `GET /api/v2/packages/{name}` answers a package.
pub fn exists(name: &str) -> bool {
    valid_name(name) && !name.starts_with(MISSING_PREFIX)
}

/// The values the API exposes for a package.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackageStats {
    /// `stats.downloads.total`: never decreases.
    pub downloads: u64,
    /// `stats.downloads.lastDay`.
    pub last_day: u64,
    /// `stats.stars`.
    pub stars: u64,
    /// `stats.score` in ten-thousandths, `0..=10_000`.
    pub score: u16,
}

impl PackageStats {
    /// `stats.score` as the API writes it: a float in `[0, 1]`.
    pub fn score(self) -> f64 {
        f64::from(self.score) / f64::from(SCORE_SCALE)
    }
}

fn key(seed: u64, name: &str) -> u64 {
    hash(&[seed, fnv1a(name.as_bytes())])
}

/// A package's values before its first read: downloads log-normal around
/// 100,000, the last day 0.05–1 % of them, stars around their square root
/// and a uniform score.
pub fn package_initial(seed: u64, name: &str) -> PackageStats {
    let h = hash(&[key(seed, name), STREAM_INITIAL]);
    let downloads = (100_000f64.ln() + 2.0 * normal(h)).exp().clamp(0.0, 1e12);
    let last_day = downloads * (0.0005 + 0.0095 * unit(mix(h ^ 1)));
    let stars = downloads.sqrt() * (0.1 + 1.9 * unit(mix(h ^ 2)));
    PackageStats {
        downloads: downloads.round() as u64,
        last_day: last_day.round() as u64,
        stars: stars.round() as u64,
        score: (unit(mix(h ^ 3)) * f64::from(SCORE_SCALE + 1)) as u16,
    }
}

/// A draw in `-max..=max`.
fn symmetric(h: u64, max: u64) -> i64 {
    (h % (2 * max + 1)) as i64 - max as i64
}

/// The values after read number `call` (0-based) of a package that held
/// `prev`: up to 50 more downloads, the last day's downloads gaining those
/// and losing up to 50 old ones, stars ±2 and the score ±0.002, with floors
/// at zero and the score capped at 1.
pub fn package_step(seed: u64, name: &str, call: u64, prev: PackageStats) -> PackageStats {
    let h = hash(&[key(seed, name), STREAM_STEP, call]);
    let added = mix(h) % (MAX_DOWNLOADS_STEP + 1);
    let aged = mix(h ^ 1) % (MAX_DOWNLOADS_STEP + 1);
    let stars = symmetric(mix(h ^ 2), MAX_STARS_STEP);
    let score = symmetric(mix(h ^ 3), u64::from(MAX_SCORE_STEP));
    PackageStats {
        downloads: prev.downloads.saturating_add(added),
        last_day: prev.last_day.saturating_add(added).saturating_sub(aged),
        stars: prev.stars.saturating_add_signed(stars),
        score: (i64::from(prev.score) + score).clamp(0, i64::from(SCORE_SCALE)) as u16,
    }
}

/// A package's maintainers: one to three string ids, fixed for a name.
pub fn maintainers(seed: u64, name: &str) -> Vec<String> {
    let h = hash(&[key(seed, name), STREAM_MAINTAINERS]);
    let n = 1 + mix(h) % 3;
    (0..n)
        .map(|i| format!("maintainer-{}", mix(h ^ (i + 1)) % 10_000))
        .collect()
}

/// What the simulator keeps per package.
#[derive(Debug, Clone, Copy)]
struct PackageState {
    stats: PackageStats,
    reads: u64,
}

/// A read-only view of one package, for tests and the `/_sim` endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackageView {
    /// The values after the last read.
    pub stats: PackageStats,
    /// Successful reads so far.
    pub reads: u64,
}

const SHARDS: usize = 16;

/// One shard of the table.
type Shard = Mutex<HashMap<Box<str>, PackageState>>;

/// The package table: every package read so far, by name.
#[derive(Debug)]
pub struct Packages {
    seed: u64,
    shards: Box<[Shard]>,
    reads: AtomicU64,
    distinct: AtomicU64,
}

impl Packages {
    /// An empty table whose values derive from `seed`.
    pub fn new(seed: u64) -> Self {
        Self {
            seed,
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            reads: AtomicU64::new(0),
            distinct: AtomicU64::new(0),
        }
    }

    /// The seed the values derive from.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    fn shard(&self, name: &str) -> &Shard {
        &self.shards[(mix(fnv1a(name.as_bytes())) % SHARDS as u64) as usize]
    }

    /// Total successful reads.
    pub fn reads(&self) -> u64 {
        self.reads.load(Ordering::Relaxed)
    }

    /// Distinct packages read so far.
    pub fn len(&self) -> usize {
        self.distinct.load(Ordering::Relaxed) as usize
    }

    /// Whether no package was read yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Reads a package as `GET /api/v2/packages/{name}` does: the returned
    /// values are the package's *after* this read's step. `None` if the
    /// package does not exist ([`exists`]); then nothing is recorded.
    pub fn read(&self, name: &str) -> Option<PackageStats> {
        if !exists(name) {
            return None;
        }
        self.reads.fetch_add(1, Ordering::Relaxed);
        // State is assigned whole, so a poisoned lock is safe to reuse.
        let mut shard = self.shard(name).lock().unwrap_or_else(|e| e.into_inner());
        let state = match shard.get_mut(name) {
            Some(state) => state,
            None => {
                self.distinct.fetch_add(1, Ordering::Relaxed);
                shard.entry(name.into()).or_insert(PackageState {
                    stats: package_initial(self.seed, name),
                    reads: 0,
                })
            }
        };
        let next = package_step(self.seed, name, state.reads, state.stats);
        state.stats = next;
        state.reads += 1;
        Some(next)
    }

    /// Looks at a package without reading it; `None` if it was never read.
    pub fn peek(&self, name: &str) -> Option<PackageView> {
        let shard = self.shard(name).lock().unwrap_or_else(|e| e.into_inner());
        shard.get(name).map(|state| PackageView {
            stats: state.stats,
            reads: state.reads,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn names_are_checked_by_shape() {
        for good in ["serde", "a", "tokio-util", "x.y_z-1", "missing-x", ".."] {
            assert!(valid_name(good), "{good:?}");
        }
        let long = "a".repeat(MAX_NAME_BYTES + 1);
        for bad in ["", "A", "Serde", "a b", "a%20b", "a/b", "é", long.as_str()] {
            assert!(!valid_name(bad), "{bad:?}");
        }
        assert!(valid_name(&long[1..]));
        assert!(!exists("missing-x") && exists("missing") && exists("x-missing-"));
    }

    proptest! {
        #[test]
        fn every_name_of_the_documented_shape_is_valid(name in "[a-z0-9._-]{1,64}") {
            prop_assert!(valid_name(&name));
        }

        #[test]
        fn any_other_byte_makes_a_name_invalid(
            prefix in "[a-z0-9._-]{0,20}",
            bad in any::<char>().prop_filter("outside the alphabet", |c| {
                !matches!(c, 'a'..='z' | '0'..='9' | '.' | '_' | '-')
            }),
            suffix in "[a-z0-9._-]{0,20}",
        ) {
            let name = format!("{prefix}{bad}{suffix}");
            prop_assert!(!valid_name(&name), "{:?}", name);
        }

        #[test]
        fn steps_keep_their_bounds(
            seed in any::<u64>(),
            name in "[a-z0-9._-]{1,64}",
            calls in 1u64..200,
        ) {
            let mut prev = package_initial(seed, &name);
            prop_assert!(prev.score <= SCORE_SCALE);
            for call in 0..calls {
                let next = package_step(seed, &name, call, prev);
                prop_assert!(next.downloads >= prev.downloads);
                prop_assert!(next.downloads - prev.downloads <= MAX_DOWNLOADS_STEP);
                prop_assert!(next.stars.abs_diff(prev.stars) <= MAX_STARS_STEP);
                prop_assert!(next.score <= SCORE_SCALE);
                prop_assert!(next.score.abs_diff(prev.score) <= MAX_SCORE_STEP);
                prev = next;
            }
        }
    }

    #[test]
    fn reads_replay_the_steps_and_count() {
        let packages = Packages::new(5);
        let mut expected = package_initial(5, "serde");
        for call in 0..30 {
            expected = package_step(5, "serde", call, expected);
            assert_eq!(packages.read("serde"), Some(expected));
        }
        assert_eq!(packages.read("missing-serde"), None);
        assert_eq!(packages.read("Serde"), None);
        packages.read("tokio");
        assert_eq!(packages.reads(), 31);
        assert_eq!(packages.len(), 2);
        let view = packages.peek("serde").unwrap();
        assert_eq!((view.stats, view.reads), (expected, 30));
        assert_eq!(packages.peek("missing-serde"), None);
        assert_eq!(packages.peek("never-read"), None);
    }

    #[test]
    fn stars_and_last_day_walk_both_ways() {
        let (mut ups, mut downs) = (0, 0);
        let mut prev = package_initial(1, "walker");
        for call in 0..1_000 {
            let next = package_step(1, "walker", call, prev);
            ups += usize::from(next.stars > prev.stars);
            downs += usize::from(next.stars < prev.stars);
            prev = next;
        }
        assert!(ups > 200 && downs > 200, "{ups} up, {downs} down");
        // From zero, the floors hold (a step never underflows) and the score
        // only moves up by one step.
        let zero = PackageStats {
            downloads: 0,
            last_day: 0,
            stars: 0,
            score: 0,
        };
        for call in 0..1_000 {
            let next = package_step(1, "floor", call, zero);
            assert!(next.score <= MAX_SCORE_STEP);
        }
    }
}
