//! The `comments` workload: comment activity under posts, the input of
//! the top-N job (`jobs/comments.toml`) and of its benchmark.
//!
//! One event is one NDJSON line:
//!
//! ```json
//! {"ts":1764578400123,"post":"p17","user":"u48213","words":12}
//! ```
//!
//! Everything is a pure function of the seed and the event's index, as in
//! [`crate::expo`].
//!
//! * Posts are `p1..=pP`, Zipf-like with exponent `post_s` (default 1.2):
//!   a few viral posts take a large share of the comments.
//! * Users are `u1..=uU`, Zipf-like with exponent `user_s` (default 1.0):
//!   some users comment far more than others.
//! * `words` is 1 to 40.
//! * A share of events arrives late: moved back by up to 5 s (inside the
//!   job's 10 s lateness), and another share by 20 to 60 s (beyond it).

use crate::expo::{write_i64, write_u64, zipf, zipf_span};
use crate::rng::{hash, mix, unit};

/// What the generator draws. Validated by [`Comments::new`].
#[derive(Debug, Clone, PartialEq)]
pub struct CommentsConfig {
    /// Seed of every drawn value.
    pub seed: u64,
    /// Number of posts, `p1..=pN`.
    pub posts: u64,
    /// Number of users, `u1..=uN`.
    pub users: u64,
    /// Exponent of the posts' popularity (> 0).
    pub post_s: f64,
    /// Exponent of the users' activity (> 0).
    pub user_s: f64,
    /// Share of events moved back by up to [`LATE_MAX_MS`].
    pub late_share: f64,
    /// Share of events moved back by [`TOO_LATE_MS`].
    pub too_late_share: f64,
}

impl Default for CommentsConfig {
    fn default() -> Self {
        Self {
            seed: 0,
            posts: 100_000,
            users: 5_000_000,
            post_s: 1.2,
            user_s: 1.0,
            late_share: 0.02,
            too_late_share: 0.0,
        }
    }
}

/// The most a late event is moved back (ms), inside the job's lateness.
pub const LATE_MAX_MS: i64 = 5_000;
/// The range a too-late event is moved back by (ms), beyond the lateness.
pub const TOO_LATE_MS: (i64, i64) = (20_000, 60_000);

const S_POST: u64 = 11;
const S_USER: u64 = 12;
const S_WORDS: u64 = 13;
const S_LATE: u64 = 14;

/// A knob outside its range.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("{knob} must be {expected}, got {value}")]
pub struct CommentsError {
    /// Which knob.
    pub knob: &'static str,
    /// What it accepts.
    pub expected: &'static str,
    /// What it got.
    pub value: f64,
}

/// The event generator: call [`Comments::write_event`] once per event.
#[derive(Debug, Clone)]
pub struct Comments {
    cfg: CommentsConfig,
    index: u64,
    post_span: f64,
    user_span: f64,
}

impl Comments {
    /// Checks the configuration and prepares the generator.
    pub fn new(cfg: CommentsConfig) -> Result<Self, CommentsError> {
        let bad = |knob, expected, value: f64| {
            Err(CommentsError {
                knob,
                expected,
                value,
            })
        };
        if cfg.posts == 0 {
            return bad("posts", "at least 1", 0.0);
        }
        if cfg.users == 0 {
            return bad("users", "at least 1", 0.0);
        }
        for (knob, v) in [("post s", cfg.post_s), ("user s", cfg.user_s)] {
            if !(v > 0.0 && v <= 10.0) {
                return bad(knob, "in (0, 10]", v);
            }
        }
        for (knob, v) in [
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
        Ok(Comments {
            post_span: zipf_span(cfg.posts, cfg.post_s),
            user_span: zipf_span(cfg.users, cfg.user_s),
            index: 0,
            cfg,
        })
    }

    /// Events written so far.
    pub fn events(&self) -> u64 {
        self.index
    }

    /// Appends the next event, at event time `ts_ms` (or earlier if it is
    /// drawn late), as one NDJSON line ending in `\n`.
    pub fn write_event(&mut self, ts_ms: i64, out: &mut Vec<u8>) {
        let (seed, i) = (self.cfg.seed, self.index);
        self.index += 1;
        let c = &self.cfg;
        let post = zipf(
            unit(hash(&[seed, S_POST, i])),
            c.posts,
            c.post_s,
            self.post_span,
        );
        let user = zipf(
            unit(hash(&[seed, S_USER, i])),
            c.users,
            c.user_s,
            self.user_span,
        );
        let words = 1 + hash(&[seed, S_WORDS, i]) % 40;
        let hl = hash(&[seed, S_LATE, i]);
        let l = unit(hl);
        let ts = if l < c.late_share {
            ts_ms - 1 - (mix(hl) % LATE_MAX_MS as u64) as i64
        } else if l < c.late_share + c.too_late_share {
            let (lo, hi) = TOO_LATE_MS;
            ts_ms - lo - (mix(hl) % (hi - lo + 1) as u64) as i64
        } else {
            ts_ms
        };
        out.extend_from_slice(b"{\"ts\":");
        write_i64(out, ts);
        out.extend_from_slice(b",\"post\":\"p");
        write_u64(out, post);
        out.extend_from_slice(b"\",\"user\":\"u");
        write_u64(out, user);
        out.extend_from_slice(b"\",\"words\":");
        write_u64(out, words);
        out.extend_from_slice(b"}\n");
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    const T0: i64 = 1_764_547_200_000;

    fn lines(cfg: CommentsConfig, n: usize) -> Vec<serde_json::Value> {
        let mut c = Comments::new(cfg).unwrap();
        let mut out = Vec::new();
        for k in 0..n {
            c.write_event(T0 + k as i64, &mut out);
        }
        out.split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice(l).unwrap())
            .collect()
    }

    #[test]
    fn same_seed_same_events_and_popular_posts_dominate() {
        let a = lines(CommentsConfig::default(), 20_000);
        assert_eq!(a, lines(CommentsConfig::default(), 20_000));
        let other = lines(
            CommentsConfig {
                seed: 1,
                ..CommentsConfig::default()
            },
            100,
        );
        assert_ne!(a[..100], other[..]);
        let mut per_post: HashMap<&str, usize> = HashMap::new();
        for e in &a {
            *per_post.entry(e["post"].as_str().unwrap()).or_default() += 1;
            let w = e["words"].as_u64().unwrap();
            assert!((1..=40).contains(&w));
        }
        // p1 is viral: far above the mean post.
        assert!(per_post["p1"] > 20_000 / 20, "{}", per_post["p1"]);
    }

    #[test]
    fn late_events_stay_within_their_bounds() {
        let cfg = CommentsConfig {
            late_share: 0.5,
            too_late_share: 0.2,
            ..CommentsConfig::default()
        };
        let mut late = 0;
        let mut too_late = 0;
        for (k, e) in lines(cfg, 5_000).iter().enumerate() {
            let behind = T0 + k as i64 - e["ts"].as_i64().unwrap();
            match behind {
                0 => {}
                1..=LATE_MAX_MS => late += 1,
                b if (TOO_LATE_MS.0..=TOO_LATE_MS.1).contains(&b) => too_late += 1,
                b => panic!("moved back by {b} ms"),
            }
        }
        assert!((2_200..2_800).contains(&late), "{late}");
        assert!((800..1_200).contains(&too_late), "{too_late}");
    }

    #[test]
    fn bad_knobs_are_refused() {
        let e = Comments::new(CommentsConfig {
            posts: 0,
            ..CommentsConfig::default()
        })
        .unwrap_err();
        assert_eq!(e.knob, "posts");
        assert!(Comments::new(CommentsConfig {
            late_share: 0.7,
            too_late_share: 0.7,
            ..CommentsConfig::default()
        })
        .is_err());
    }
}
