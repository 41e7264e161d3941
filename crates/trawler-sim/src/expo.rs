//! The `expo` workload: events of users in A/B tests, the input of the
//! stream job in `docs/STREAMS.md` and of its benchmark.
//!
//! One event is one NDJSON line:
//!
//! ```json
//! {"ts":1764578400123,"user":"u48213","type":"purchase","amount":23.50,"exp":{"e3":"A","e11":"control"}}
//! ```
//!
//! Everything is a pure function of the seed and the event's index, so the
//! same seed writes the same bytes, whatever the caller does between
//! events. What a user is (its experiments and variants) is a function of
//! `(seed, user)` alone, as a real assignment service makes it: a user sees
//! the same variant of an experiment in every event.
//!
//! * Users are `u1..=uN`; `u1` is the most active. Popularity is Zipf-like
//!   (`P(k) ∝ ∫ x^-s` over `[k, k+1)`), drawn by inverting the continuous
//!   CDF: one `powf` per event, no table.
//! * Each user is in 1 to `max_experiments_per_user` of the experiments
//!   `e1..=eE`, written in increasing order; the variant of each is
//!   uniform among `control`, `A`, `B` (or `control`, `v1`… with more than
//!   three variants).
//! * A share of events has a type no metric uses (`heartbeat`, `scroll`,
//!   `impression`); the rest is 70 % `page_view`, 18 % `click`,
//!   8 % `add_to_cart`, 4 % `purchase`. Purchases carry an amount,
//!   log-normal around 30, in cents from 1.00 to 999.99.
//! * A share of events arrives late: its event time is moved back by up
//!   to 20 s (inside the job's 30 s lateness), and another share by 2 to
//!   5 minutes (beyond it: the engine drops them).
//!
//! ```
//! use trawler_sim::expo::{Expo, ExpoConfig};
//! let mut expo = Expo::new(ExpoConfig { seed: 7, ..ExpoConfig::default() }).unwrap();
//! let mut out = Vec::new();
//! expo.write_event(1_764_547_200_000, &mut out);
//! assert!(out.starts_with(b"{\"ts\":") && out.ends_with(b"}\n"));
//! ```

use crate::rng::{hash, mix, normal, unit};

/// What the generator draws. Validated by [`Expo::new`].
#[derive(Debug, Clone, PartialEq)]
pub struct ExpoConfig {
    /// Seed of every drawn value.
    pub seed: u64,
    /// Number of experiments, `e1..=eN`.
    pub experiments: u32,
    /// Variants per experiment, the first being `control`.
    pub variants: u32,
    /// Each user is in 1 to this many experiments (at most `experiments`).
    pub max_experiments_per_user: u32,
    /// Number of users, `u1..=uN`.
    pub users: u64,
    /// Exponent of the users' Zipf-like popularity (> 0).
    pub zipf_s: f64,
    /// Share of events of a type no metric uses.
    pub useless_share: f64,
    /// Share of events moved back by up to 20 s.
    pub late_share: f64,
    /// Share of events moved back by 2 to 5 minutes.
    pub too_late_share: f64,
}

impl Default for ExpoConfig {
    fn default() -> Self {
        Self {
            seed: 0,
            experiments: 20,
            variants: 3,
            max_experiments_per_user: 4,
            users: 1_000_000,
            zipf_s: 1.1,
            useless_share: 0.3,
            late_share: 0.01,
            too_late_share: 0.0,
        }
    }
}

/// A configuration the generator refuses; names the knob.
#[derive(Debug, thiserror::Error, PartialEq)]
#[non_exhaustive]
pub enum ExpoError {
    /// A knob outside its range.
    #[error("{knob} must be {expected}, got {value}")]
    Bad {
        /// Which knob.
        knob: &'static str,
        /// What it accepts.
        expected: &'static str,
        /// What it got.
        value: f64,
    },
}

/// The event types no metric uses.
pub const USELESS_TYPES: [&str; 3] = ["heartbeat", "scroll", "impression"];
/// The event types the metrics use, with their share among useful events.
pub const USEFUL_TYPES: [(&str, f64); 4] = [
    ("page_view", 0.70),
    ("click", 0.18),
    ("add_to_cart", 0.08),
    ("purchase", 0.04),
];
/// The most a late event is moved back (ms), inside the job's lateness.
pub const LATE_MAX_MS: i64 = 20_000;
/// The range a too-late event is moved back by (ms), beyond the lateness.
pub const TOO_LATE_MS: (i64, i64) = (120_000, 300_000);

// Streams of the counter-based rng, so that no two draws share a key.
const S_USER: u64 = 1;
const S_TYPE: u64 = 2;
const S_LATE: u64 = 3;
const S_AMOUNT: u64 = 4;
const S_MEMBERSHIP: u64 = 5;

/// The event generator: call [`Expo::write_event`] once per event.
#[derive(Debug, Clone)]
pub struct Expo {
    cfg: ExpoConfig,
    /// Index of the next event: the key of its draws.
    index: u64,
    /// `(users + 1)^(1 - s) - 1`, the span of the inverted CDF.
    zipf_span: f64,
    /// `e1`…, as written.
    experiment_names: Vec<String>,
    /// `control`, `A`…, as written.
    variant_names: Vec<String>,
    /// Scratch: a user's experiments (indices), reused across events.
    members: Vec<u32>,
}

impl Expo {
    /// Checks the configuration and prepares the generator.
    pub fn new(cfg: ExpoConfig) -> Result<Self, ExpoError> {
        let bad = |knob, expected, value: f64| {
            Err(ExpoError::Bad {
                knob,
                expected,
                value,
            })
        };
        if cfg.experiments == 0 {
            return bad("experiments", "at least 1", 0.0);
        }
        if cfg.variants < 2 {
            return bad("variants", "at least 2", cfg.variants as f64);
        }
        if cfg.max_experiments_per_user == 0 || cfg.max_experiments_per_user > cfg.experiments {
            return bad(
                "experiments per user",
                "between 1 and the number of experiments",
                cfg.max_experiments_per_user as f64,
            );
        }
        if cfg.users == 0 {
            return bad("users", "at least 1", 0.0);
        }
        if !(cfg.zipf_s > 0.0 && cfg.zipf_s <= 10.0) {
            return bad("zipf s", "in (0, 10]", cfg.zipf_s);
        }
        for (knob, v) in [
            ("useless share", cfg.useless_share),
            ("late share", cfg.late_share),
            ("too-late share", cfg.too_late_share),
        ] {
            if !(0.0..=1.0).contains(&v) {
                return bad(knob, "between 0 and 1", v);
            }
        }
        if cfg.late_share + cfg.too_late_share > 1.0 {
            return bad(
                "late share + too-late share",
                "at most 1",
                cfg.late_share + cfg.too_late_share,
            );
        }
        let variant_names = (0..cfg.variants)
            .map(|v| match (v, cfg.variants) {
                (0, _) => "control".to_owned(),
                (v, 3) => ["A", "B"][v as usize - 1].to_owned(),
                (v, _) => format!("v{v}"),
            })
            .collect();
        Ok(Self {
            zipf_span: zipf_span(cfg.users, cfg.zipf_s),
            experiment_names: (1..=cfg.experiments).map(|e| format!("e{e}")).collect(),
            variant_names,
            members: Vec::with_capacity(cfg.max_experiments_per_user as usize),
            index: 0,
            cfg,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &ExpoConfig {
        &self.cfg
    }

    /// Events written so far.
    pub fn events(&self) -> u64 {
        self.index
    }

    /// The user (1-based) of popularity drawn from `h`.
    fn user(&self, h: u64) -> u64 {
        zipf(unit(h), self.cfg.users, self.cfg.zipf_s, self.zipf_span)
    }

    /// The experiments `user` is in, in increasing order, into `members`;
    /// the variant of each is [`Expo::variant`].
    fn memberships(&mut self, user: u64) {
        let seed = self.cfg.seed;
        let e = self.cfg.experiments as u64;
        let n = 1 + hash(&[seed, S_MEMBERSHIP, user]) % self.cfg.max_experiments_per_user as u64;
        self.members.clear();
        let mut draw = 0u64;
        while (self.members.len() as u64) < n {
            let x = (hash(&[seed, S_MEMBERSHIP, user, 1 + draw]) % e) as u32;
            draw += 1;
            if !self.members.contains(&x) {
                self.members.push(x);
            }
        }
        self.members.sort_unstable();
    }

    /// The variant of experiment `exp` that `user` sees.
    fn variant(&self, user: u64, exp: u32) -> usize {
        let h = hash(&[self.cfg.seed, S_MEMBERSHIP, user, u64::MAX - exp as u64]);
        (h % self.cfg.variants as u64) as usize
    }

    /// Appends the next event, at event time `ts_ms` (or earlier if it is
    /// drawn late), as one NDJSON line ending in `\n`.
    pub fn write_event(&mut self, ts_ms: i64, out: &mut Vec<u8>) {
        let seed = self.cfg.seed;
        let i = self.index;
        self.index += 1;
        let user = self.user(hash(&[seed, S_USER, i]));

        let t = unit(hash(&[seed, S_TYPE, i]));
        let (kind, purchase) = if t < self.cfg.useless_share {
            let pick = ((t / self.cfg.useless_share) * 3.0) as usize;
            (USELESS_TYPES[pick.min(2)], false)
        } else {
            // Rescale what is left of the draw to [0, 1) among useful types.
            let mut u = (t - self.cfg.useless_share) / (1.0 - self.cfg.useless_share);
            let mut kind = USEFUL_TYPES[3].0;
            for (name, share) in USEFUL_TYPES {
                if u < share {
                    kind = name;
                    break;
                }
                u -= share;
            }
            (kind, kind == "purchase")
        };

        let hl = hash(&[seed, S_LATE, i]);
        let l = unit(hl);
        let ts = if l < self.cfg.late_share {
            ts_ms - 1 - (mix(hl) % LATE_MAX_MS as u64) as i64
        } else if l < self.cfg.late_share + self.cfg.too_late_share {
            let (lo, hi) = TOO_LATE_MS;
            ts_ms - lo - (mix(hl) % (hi - lo + 1) as u64) as i64
        } else {
            ts_ms
        };

        out.extend_from_slice(b"{\"ts\":");
        write_i64(out, ts);
        out.extend_from_slice(b",\"user\":\"u");
        write_u64(out, user);
        out.extend_from_slice(b"\",\"type\":\"");
        out.extend_from_slice(kind.as_bytes());
        out.push(b'"');
        if purchase {
            // Log-normal: median 30, most orders between 5 and 200.
            let x = (30f64.ln() + 1.0 * normal(hash(&[seed, S_AMOUNT, i]))).exp();
            let cents = ((x * 100.0).round() as u64).clamp(100, 99_999);
            out.extend_from_slice(b",\"amount\":");
            write_u64(out, cents / 100);
            out.push(b'.');
            out.push(b'0' + (cents / 10 % 10) as u8);
            out.push(b'0' + (cents % 10) as u8);
        }
        out.extend_from_slice(b",\"exp\":{");
        self.memberships(user);
        for (n, &e) in self.members.iter().enumerate() {
            if n > 0 {
                out.push(b',');
            }
            out.push(b'"');
            out.extend_from_slice(self.experiment_names[e as usize].as_bytes());
            out.extend_from_slice(b"\":\"");
            out.extend_from_slice(self.variant_names[self.variant(user, e)].as_bytes());
            out.push(b'"');
        }
        out.extend_from_slice(b"}}\n");
    }
}

/// `(n + 1)^(1 - s) - 1`: the span of [`zipf`]'s inverted CDF.
pub(crate) fn zipf_span(n: u64, s: f64) -> f64 {
    ((n + 1) as f64).powf(1.0 - s) - 1.0
}

/// Rank 1..=n of Zipf-like popularity (`P(k) ∝ ∫ x^-s` over `[k, k+1)`)
/// for a uniform draw `u`, by inverting the continuous CDF.
pub(crate) fn zipf(u: f64, n: u64, s: f64, span: f64) -> u64 {
    let x = if (s - 1.0).abs() < 1e-9 {
        ((n + 1) as f64).powf(u)
    } else {
        (1.0 + u * span).powf(1.0 / (1.0 - s))
    };
    (x as u64).clamp(1, n)
}

pub(crate) fn write_u64(out: &mut Vec<u8>, mut v: u64) {
    let mut buf = [0u8; 20];
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[at..]);
}

pub(crate) fn write_i64(out: &mut Vec<u8>, v: i64) {
    if v < 0 {
        out.push(b'-');
    }
    write_u64(out, v.unsigned_abs());
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use proptest::prelude::*;

    use super::*;

    const T0: i64 = 1_764_547_200_000;

    fn lines(cfg: ExpoConfig, n: usize) -> Vec<u8> {
        let mut expo = Expo::new(cfg).unwrap();
        let mut out = Vec::new();
        for i in 0..n {
            expo.write_event(T0 + i as i64, &mut out);
        }
        out
    }

    #[test]
    fn same_seed_same_bytes_other_seed_other_bytes() {
        let cfg = ExpoConfig::default();
        assert_eq!(lines(cfg.clone(), 5_000), lines(cfg.clone(), 5_000));
        let other = ExpoConfig {
            seed: 1,
            ..cfg.clone()
        };
        assert_ne!(lines(cfg, 5_000), lines(other, 5_000));
    }

    #[test]
    fn a_user_keeps_its_experiments_and_variants() {
        let out = lines(ExpoConfig::default(), 50_000);
        let mut seen: HashMap<String, serde_json::Value> = HashMap::new();
        for line in out.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            let v: serde_json::Value = serde_json::from_slice(line).unwrap();
            let user = v["user"].as_str().unwrap().to_owned();
            let exp = v["exp"].clone();
            let n = exp.as_object().unwrap().len();
            assert!((1..=4).contains(&n), "{n} experiments");
            if let Some(before) = seen.insert(user, exp.clone()) {
                assert_eq!(before, exp);
            }
        }
    }

    #[test]
    fn popularity_is_skewed() {
        let expo = Expo::new(ExpoConfig::default()).unwrap();
        let n = 200_000u64;
        let top = (0..n).filter(|&i| expo.user(mix(i)) <= 10).count() as f64 / n as f64;
        let tail = (0..n).filter(|&i| expo.user(mix(i)) > 500_000).count() as f64 / n as f64;
        // With s = 1.1 over a million users, the top 10 get 28.5 % of
        // events and the upper half of ids 2.4 % (the continuous CDF).
        assert!((top - 0.285).abs() < 0.01, "top 10 share {top}");
        assert!((tail - 0.024).abs() < 0.003, "tail share {tail}");
        for i in 0..10_000 {
            assert!((1..=1_000_000).contains(&expo.user(mix(i))));
        }
    }

    #[test]
    fn variant_names() {
        let three = Expo::new(ExpoConfig::default()).unwrap();
        assert_eq!(three.variant_names, ["control", "A", "B"]);
        let four = Expo::new(ExpoConfig {
            variants: 4,
            ..ExpoConfig::default()
        })
        .unwrap();
        assert_eq!(four.variant_names, ["control", "v1", "v2", "v3"]);
    }

    #[test]
    fn bad_knobs_are_refused() {
        let bad = |f: fn(&mut ExpoConfig)| {
            let mut c = ExpoConfig::default();
            f(&mut c);
            Expo::new(c).unwrap_err()
        };
        bad(|c| c.experiments = 0);
        bad(|c| c.variants = 1);
        bad(|c| c.max_experiments_per_user = 21);
        bad(|c| c.users = 0);
        bad(|c| c.useless_share = 1.5);
        bad(|c| c.zipf_s = f64::NAN);
        bad(|c| {
            c.late_share = 0.6;
            c.too_late_share = 0.6
        });
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(16))]

        /// Every line is the documented JSON, and the shares of useless,
        /// late and too-late events are the configured ones.
        #[test]
        fn lines_parse_with_the_documented_fields_and_shares(
            seed in any::<u64>(),
            useless in 0.0..0.6f64,
            late in 0.0..0.2f64,
            too_late in 0.0..0.2f64,
        ) {
            let cfg = ExpoConfig {
                seed,
                useless_share: useless,
                late_share: late,
                too_late_share: too_late,
                users: 10_000,
                ..ExpoConfig::default()
            };
            let n = 20_000usize;
            let out = lines(cfg, n);
            let (mut useless_n, mut late_n, mut too_late_n, mut purchases) = (0, 0, 0, 0);
            for (i, line) in out.split(|&b| b == b'\n').filter(|l| !l.is_empty()).enumerate() {
                let v: serde_json::Value = serde_json::from_slice(line).unwrap();
                let o = v.as_object().unwrap();
                let ts = o["ts"].as_i64().unwrap();
                let sent = T0 + i as i64;
                let back = sent - ts;
                prop_assert!(back >= 0);
                if back > 0 && back <= LATE_MAX_MS {
                    late_n += 1;
                } else if back >= TOO_LATE_MS.0 {
                    prop_assert!(back <= TOO_LATE_MS.1);
                    too_late_n += 1;
                }
                let user = o["user"].as_str().unwrap();
                prop_assert!(user.starts_with('u') && user[1..].parse::<u64>().is_ok());
                let kind = o["type"].as_str().unwrap();
                if USELESS_TYPES.contains(&kind) {
                    useless_n += 1;
                } else {
                    prop_assert!(USEFUL_TYPES.iter().any(|(t, _)| *t == kind));
                }
                if kind == "purchase" {
                    purchases += 1;
                    let a = o["amount"].as_f64().unwrap();
                    prop_assert!((1.0..=999.99).contains(&a));
                    prop_assert!(((a * 100.0).round() - a * 100.0).abs() < 1e-6);
                } else {
                    prop_assert!(!o.contains_key("amount"));
                }
                let exp = o["exp"].as_object().unwrap();
                prop_assert!(!exp.is_empty() && exp.len() <= 4);
                for (e, var) in exp {
                    prop_assert!(e.starts_with('e'));
                    prop_assert!(["control", "A", "B"].contains(&var.as_str().unwrap()));
                }
                prop_assert_eq!(o.len(), 4 + usize::from(kind == "purchase"));
            }
            // Binomial: 5 standard deviations of 20,000 draws is < 0.018.
            let tol = 0.018;
            let share = |k: i32| k as f64 / n as f64;
            prop_assert!((share(useless_n) - useless).abs() < tol);
            prop_assert!((share(late_n) - late).abs() < tol);
            prop_assert!((share(too_late_n) - too_late).abs() < tol);
            let useful = 1.0 - useless;
            prop_assert!((share(purchases) - 0.04 * useful).abs() < tol);
        }
    }
}
