//! The accounts behind the simulator and the two ways their values move.
//!
//! * [`Dynamics::Mockstagram`] is the original contract: every read moves the
//!   account by a normal step (σ = 10,000 followers, σ = 100 followings) with
//!   floors of 5,000 and 50. The n-th read of an account is a pure function of
//!   `(seed, pk, n)`, whatever the order in which threads read accounts.
//! * [`Dynamics::Realistic`] depends on wall-clock time only, never on how
//!   often an account is read: a slow exponential trend per account, rare
//!   jumps (a viral post ramps followers up over a few hours, a purge of fake
//!   followers drops them at once), a little per-minute jitter, and a
//!   followingCount that changes by a few units on a few days.
//!
//! Both generators are plain functions so that other crates (the store's
//! benchmark in particular) can produce the exact series the simulator serves
//! without running a server.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use crate::rng::{hash, mix, normal, normal_pair, unit};

/// How account values evolve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dynamics {
    /// Every read moves the account (the original Mockstagram behaviour).
    Mockstagram,
    /// Values follow wall-clock time; reads do not change them.
    Realistic,
}

impl std::str::FromStr for Dynamics {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "mockstagram" => Ok(Self::Mockstagram),
            "realistic" => Ok(Self::Realistic),
            other => Err(format!(
                "unknown dynamics {other:?}; expected mockstagram or realistic"
            )),
        }
    }
}

impl std::fmt::Display for Dynamics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Mockstagram => "mockstagram",
            Self::Realistic => "realistic",
        })
    }
}

/// The two counters the API exposes for an account.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    /// `followerCount`.
    pub followers: u64,
    /// `followingCount`.
    pub following: u64,
}

impl Counts {
    /// followerCount / followingCount, as the suspicious rule computes it.
    pub fn ratio(self) -> f64 {
        self.followers as f64 / self.following as f64
    }
}

/// Stream tags keep the draws of one account independent of each other.
const STREAM_INITIAL: u64 = 1;
const STREAM_STEP: u64 = 2;
const STREAM_SHAPE: u64 = 3;
const STREAM_EVENT: u64 = 4;
const STREAM_JITTER: u64 = 5;

/// Floors of the original API.
pub const MIN_FOLLOWERS: u64 = 5_000;
/// Floor of followingCount in the original API.
pub const MIN_FOLLOWING: u64 = 50;

fn floor_round(value: f64, floor: u64) -> u64 {
    let v = value.round();
    if v.is_nan() || v < floor as f64 {
        floor
    } else {
        v as u64
    }
}

/// The value of an account before its first read, under Mockstagram rules:
/// `max(round(100,000·(1+N)), 5,000)` and `max(round(1,000·(1+N)), 50)`.
pub fn mockstagram_initial(seed: u64, pk: u64) -> Counts {
    let (a, b) = normal_pair(hash(&[seed, pk, STREAM_INITIAL]));
    Counts {
        followers: floor_round(100_000.0 * (1.0 + a), MIN_FOLLOWERS),
        following: floor_round(1_000.0 * (1.0 + b), MIN_FOLLOWING),
    }
}

/// The value after read number `call` (0-based) of an account that held
/// `prev`: a normal step of σ = 10,000 / σ = 100 with the original floors.
pub fn mockstagram_step(seed: u64, pk: u64, call: u64, prev: Counts) -> Counts {
    let (a, b) = normal_pair(hash(&[seed, pk, STREAM_STEP, call]));
    Counts {
        followers: floor_round(prev.followers as f64 + 10_000.0 * a, MIN_FOLLOWERS),
        following: floor_round(prev.following as f64 + 100.0 * b, MIN_FOLLOWING),
    }
}

/// The time-driven account model. Cheap to copy; holds only its parameters.
#[derive(Debug, Clone, Copy)]
pub struct Realistic {
    seed: u64,
    epoch_ms: i64,
}

const DAY_MS: i64 = 86_400_000;
const MINUTE_MS: i64 = 60_000;
const VIRAL_RAMP_MS: f64 = 3.0 * 3_600_000.0;

/// The fixed traits of one account under realistic dynamics.
struct Shape {
    base_followers: f64,
    base_following: f64,
    growth_per_day: f64,
    jitter_sigma: f64,
}

impl Realistic {
    /// A model whose day 0 starts at `epoch_ms` (unix milliseconds). Values
    /// are deterministic for a given `(seed, epoch_ms)`.
    pub fn new(seed: u64, epoch_ms: i64) -> Self {
        Self { seed, epoch_ms }
    }

    /// The instant day 0 starts.
    pub fn epoch_ms(&self) -> i64 {
        self.epoch_ms
    }

    fn shape(&self, pk: u64) -> Shape {
        let (a, b) = normal_pair(hash(&[self.seed, pk, STREAM_SHAPE]));
        let c = normal(hash(&[self.seed, pk, STREAM_SHAPE, 1]));
        // Follower counts are heavy-tailed: log-normal around 30k.
        let base_followers = (30_000f64.ln() + 1.4 * a).exp().clamp(200.0, 300_000_000.0);
        Shape {
            base_followers,
            base_following: (400f64.ln() + 0.9 * b).exp().clamp(5.0, 7_500.0),
            // Most accounts grow slowly; about a third decline.
            growth_per_day: 0.001 + 0.0025 * c,
            jitter_sigma: (base_followers.sqrt() / 40.0).max(0.3),
        }
    }

    /// The account's values at unix time `t_ms`.
    pub fn at(&self, pk: u64, t_ms: i64) -> Counts {
        let shape = self.shape(pk);
        let since = t_ms - self.epoch_ms;
        let days = since as f64 / DAY_MS as f64;
        let mut followers = shape.base_followers * (shape.growth_per_day * days).exp();
        let mut following = shape.base_following.round();

        // Events happen at most once per account per day, at a random moment
        // of that day; only days that have started can contribute.
        let last_day = since.div_euclid(DAY_MS);
        for day in 0..=last_day {
            let h = hash(&[self.seed, pk, STREAM_EVENT, day as u64]);
            let at = day * DAY_MS + (unit(mix(h ^ 1)) * DAY_MS as f64) as i64;
            if at > since {
                continue;
            }
            let kind = unit(h);
            let size = unit(mix(h ^ 2));
            if kind < 0.01 {
                // A viral post: +5 % to +40 %, ramping in over three hours.
                let ramp = ((since - at) as f64 / VIRAL_RAMP_MS).min(1.0);
                followers *= 1.0 + (0.05 + 0.35 * size) * ramp;
            } else if kind < 0.013 {
                // A purge of fake followers: −5 % to −25 %, at once.
                followers *= 1.0 - (0.05 + 0.20 * size);
            }
            if unit(mix(h ^ 3)) < 0.15 {
                // Following a few more accounts, or unfollowing a few.
                following += (unit(mix(h ^ 4)) * 14.0).floor() - 5.0;
            }
        }

        let minute = t_ms.div_euclid(MINUTE_MS) as u64;
        followers += shape.jitter_sigma * normal(hash(&[self.seed, pk, STREAM_JITTER, minute]));
        Counts {
            followers: floor_round(followers, 0),
            following: floor_round(following, 0),
        }
    }
}

/// What the simulator keeps per account: its current counters and how many
/// times it was read. 16 bytes behind a futex-based mutex (20 bytes in all),
/// so that concurrent reads of one pk serialise instead of losing steps.
#[derive(Debug, Clone, Copy)]
struct AccountState {
    followers: u32,
    following: u32,
    calls: u64,
}

/// A read-only view of one account, for tests and the `/_sim` endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AccountView {
    /// The counters an unmutating read would see now.
    pub counts: Counts,
    /// Successful reads so far.
    pub calls: u64,
}

/// The account table: a contiguous range of pks, each with its state.
#[derive(Debug)]
pub struct Accounts {
    first_pk: u64,
    seed: u64,
    dynamics: Dynamics,
    realistic: Realistic,
    states: Box<[Mutex<AccountState>]>,
    threshold: f64,
    reads: AtomicU64,
}

fn saturate_u32(v: u64) -> u32 {
    v.min(u32::MAX as u64) as u32
}

impl Accounts {
    /// Creates `count` accounts with pks `first_pk..first_pk+count`, with
    /// their initial values and the suspicious threshold (the 10th percentile
    /// of the initial followerCount/followingCount ratios).
    pub fn new(
        first_pk: u64,
        count: u32,
        seed: u64,
        dynamics: Dynamics,
        realistic_epoch_ms: i64,
    ) -> Self {
        let realistic = Realistic::new(seed, realistic_epoch_ms);
        let initial = |pk: u64| match dynamics {
            Dynamics::Mockstagram => mockstagram_initial(seed, pk),
            Dynamics::Realistic => realistic.at(pk, realistic_epoch_ms),
        };
        let mut ratios = Vec::with_capacity(count as usize);
        let states: Box<[Mutex<AccountState>]> = (0..count as u64)
            .map(|i| {
                let c = initial(first_pk + i);
                ratios.push(c.ratio());
                Mutex::new(AccountState {
                    followers: saturate_u32(c.followers),
                    following: saturate_u32(c.following),
                    calls: 0,
                })
            })
            .collect();
        let threshold = tenth_percentile(&mut ratios);
        Self {
            first_pk,
            seed,
            dynamics,
            realistic,
            states,
            threshold,
            reads: AtomicU64::new(0),
        }
    }

    fn slot(&self, pk: u64) -> Option<&Mutex<AccountState>> {
        let index = pk.checked_sub(self.first_pk)?;
        self.states.get(usize::try_from(index).ok()?)
    }

    /// Whether `pk` names an account.
    pub fn contains(&self, pk: u64) -> bool {
        self.slot(pk).is_some()
    }

    /// Number of accounts.
    pub fn len(&self) -> usize {
        self.states.len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.states.is_empty()
    }

    /// The first pk.
    pub fn first_pk(&self) -> u64 {
        self.first_pk
    }

    /// The dynamics in force.
    pub fn dynamics(&self) -> Dynamics {
        self.dynamics
    }

    /// The suspicious threshold: ratios at or below it are suspicious.
    pub fn threshold(&self) -> f64 {
        self.threshold
    }

    /// Total successful reads.
    pub fn reads(&self) -> u64 {
        self.reads.load(Ordering::Relaxed)
    }

    /// Reads an account as `GET /api/v1/influencers/{pk}` does: the returned
    /// value is the account's state *after* this read's step (Mockstagram
    /// dynamics) or its value at `now_ms` (realistic dynamics).
    pub fn read(&self, pk: u64, now_ms: i64) -> Option<Counts> {
        let slot = self.slot(pk)?;
        self.reads.fetch_add(1, Ordering::Relaxed);
        // A panic while holding the lock cannot leave the state half-written
        // (it is assigned whole), so a poisoned lock is safe to reuse.
        let mut state = slot.lock().unwrap_or_else(|e| e.into_inner());
        let call = state.calls;
        state.calls += 1;
        Some(match self.dynamics {
            Dynamics::Mockstagram => {
                let prev = Counts {
                    followers: state.followers as u64,
                    following: state.following as u64,
                };
                let next = mockstagram_step(self.seed, pk, call, prev);
                state.followers = saturate_u32(next.followers);
                state.following = saturate_u32(next.following);
                next
            }
            Dynamics::Realistic => {
                drop(state);
                self.realistic.at(pk, now_ms)
            }
        })
    }

    /// Looks at an account without reading it (no step, no call counted).
    pub fn peek(&self, pk: u64, now_ms: i64) -> Option<AccountView> {
        let state = *self.slot(pk)?.lock().unwrap_or_else(|e| e.into_inner());
        let counts = match self.dynamics {
            Dynamics::Mockstagram => Counts {
                followers: state.followers as u64,
                following: state.following as u64,
            },
            Dynamics::Realistic => self.realistic.at(pk, now_ms),
        };
        Some(AccountView {
            counts,
            calls: state.calls,
        })
    }

    /// The suspicious rule: ratio at or below the threshold. Pure function of
    /// its inputs; a zero followingCount gives an infinite ratio (not
    /// suspicious) and 0/0 is not suspicious either.
    pub fn is_suspicious(&self, followers: f64, following: f64) -> bool {
        let ratio = followers / following;
        ratio <= self.threshold
    }
}

/// The nearest-rank 10th percentile. NaN ratios (impossible with the floors)
/// sort last so they never become the threshold.
fn tenth_percentile(values: &mut [f64]) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let rank = (values.len() as f64 * 0.1).ceil().max(1.0) as usize - 1;
    let (_, nth, _) = values.select_nth_unstable_by(rank, |a, b| a.total_cmp(b));
    *nth
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mockstagram_initial_values_follow_the_contract() {
        let n = 100_000u64;
        let mut followers = Vec::new();
        for pk in 0..n {
            let c = mockstagram_initial(7, 1_000_000 + pk);
            assert!(c.followers >= MIN_FOLLOWERS && c.following >= MIN_FOLLOWING);
            followers.push(c.followers as f64);
        }
        // Median of max(100k·(1+N), 5k) is 100k.
        followers.sort_by(f64::total_cmp);
        let median = followers[followers.len() / 2];
        assert!((median - 100_000.0).abs() < 2_000.0, "median {median}");
    }

    #[test]
    fn mockstagram_steps_have_the_contract_sigma() {
        // Far from the floors, steps are N(0, 10_000) and N(0, 100).
        let start = Counts {
            followers: 10_000_000,
            following: 1_000_000,
        };
        let n = 50_000u64;
        let (mut sf, mut sg) = (0.0, 0.0);
        for call in 0..n {
            let next = mockstagram_step(1, 5, call, start);
            sf += (next.followers as f64 - start.followers as f64).powi(2);
            sg += (next.following as f64 - start.following as f64).powi(2);
        }
        let (sigma_f, sigma_g) = ((sf / n as f64).sqrt(), (sg / n as f64).sqrt());
        assert!((sigma_f - 10_000.0).abs() < 200.0, "{sigma_f}");
        assert!((sigma_g - 100.0).abs() < 2.0, "{sigma_g}");
    }

    #[test]
    fn threshold_is_near_the_documented_value() {
        let accounts = Accounts::new(1_000_000, 200_000, 3, Dynamics::Mockstagram, 0);
        let t = accounts.threshold();
        assert!((5.0..6.3).contains(&t), "threshold {t}");
    }

    #[test]
    fn realistic_values_do_not_depend_on_reads() {
        let model = Realistic::new(9, 0);
        let accounts = Accounts::new(1, 10, 9, Dynamics::Realistic, 0);
        let t = 5 * DAY_MS + 1234;
        let before = model.at(3, t);
        for _ in 0..100 {
            assert_eq!(accounts.read(3, t), Some(before));
        }
        assert_eq!(accounts.peek(3, t).unwrap().calls, 100);
    }

    #[test]
    fn realistic_series_move_slowly() {
        let model = Realistic::new(11, 0);
        let mut big_moves = 0;
        for pk in 0..200u64 {
            let mut prev = model.at(pk, 0);
            for minute in 1..1440 {
                let c = model.at(pk, minute * MINUTE_MS);
                let rel = (c.followers as f64 - prev.followers as f64).abs()
                    / prev.followers.max(1) as f64;
                if rel > 0.01 {
                    big_moves += 1;
                }
                prev = c;
            }
        }
        // Jitter is small; only rare viral ramps or purges move >1 %/minute.
        assert!(
            big_moves < 200 * 1440 / 100,
            "{big_moves} large one-minute moves"
        );
    }

    #[test]
    fn tenth_percentile_uses_nearest_rank() {
        let mut v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(tenth_percentile(&mut v), 10.0);
        let mut one = vec![4.0];
        assert_eq!(tenth_percentile(&mut one), 4.0);
    }
}
