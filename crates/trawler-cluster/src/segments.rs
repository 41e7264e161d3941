//! Segment leases: which node works on which segment of a batch job.
//!
//! A batch job's input is cut into numbered segments that are *finished*
//! once, unlike the flagship's shards that are polled for ever, so the
//! assignment is a work queue rather than rendezvous hashing: a node
//! claims the next segment nobody holds, works on it, marks it done and
//! claims another. Two KV buckets per job (named after it, so that jobs
//! and the flagship's `trawler_leases` never collide):
//!
//! * `trawler_batch_<job>_leases`: one key `seg.N` per segment being
//!   worked on, value the holder's id, expiring after the lease TTL;
//! * `trawler_batch_<job>_done`: `seg.N` for every finished segment (no
//!   expiry), and `job`, the job's identity (input and segment size), so
//!   that nodes started over different inputs refuse to share the job.
//!
//! **Fencing**, the flagship's rule ([`crate::leases`]): a lease is created
//! only where no key exists, renewed every fifth of the TTL only at the
//! revision its holder last wrote, and counts as held only until the time
//! its last successful write was *sent* plus three quarters of the TTL; the
//! server keeps it a full TTL after it *received* the write. A node that
//! stops renewing (dead, paused, cut off) has let go before anyone can
//! claim the segment. Every claim gets a number of its own
//! ([`SegmentLeases::claim_of`]), so work done under an earlier claim of
//! the same segment is never mistaken for the current one's.
//!
//! ```no_run
//! # async fn demo() -> Result<(), trawler_cluster::Error> {
//! use trawler_cluster::{ClusterConfig, Claim, SegmentLeases};
//! let config = ClusterConfig::new(vec!["nats://127.0.0.1:4222".into()], "node-1".into());
//! let leases = SegmentLeases::join(config, "images", "input identity").await?;
//! if leases.claim(7).await? == Claim::Mine {
//!     // … work on segment 7, commit its results while leases.valid(7, claim) …
//!     let claim = leases.claim_of(7).unwrap();
//!     leases.finish(7, claim).await?;
//! }
//! # Ok(()) }
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use futures_util::TryStreamExt;
use tokio::time::Instant;

use crate::leases::{each_shard, Held};
use crate::{open_replicated, ClusterConfig, Error};

/// What [`SegmentLeases::claim`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// This node holds the segment now.
    Mine,
    /// Some node finished it.
    Done,
    /// Another node holds it (or NATS did not answer).
    Taken,
}

struct Segment {
    lease: Held,
    /// This claim's number (unique in the process).
    claim: u64,
}

/// This node's segment leases of one batch job.
pub struct SegmentLeases {
    me: String,
    me_bytes: Bytes,
    ttl: Duration,
    leases: kv::Store,
    done: kv::Store,
    held: Mutex<BTreeMap<u32, Segment>>,
    claims: AtomicU64,
}

fn key(segment: u32) -> String {
    format!("seg.{segment}")
}

impl SegmentLeases {
    /// Connects to NATS and opens (creating) the job's buckets; refuses a
    /// job whose buckets were started with another `identity`.
    pub async fn join(
        config: ClusterConfig,
        job: &str,
        identity: &str,
    ) -> Result<SegmentLeases, Error> {
        config.validate()?;
        if job.is_empty()
            || !job
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(Error::Config {
                key: "job",
                reason: format!("{job:?}: letters, digits, '-' and '_' only"),
            });
        }
        let client = config.connect_client().await?;
        let js = jetstream::new(client);
        let ttl = config.lease_ttl;
        let leases = open_replicated(&js, &format!("trawler_batch_{job}_leases"), ttl).await?;
        let done =
            open_replicated(&js, &format!("trawler_batch_{job}_done"), Duration::ZERO).await?;
        let identity = Bytes::from(identity.to_owned());
        if done.create("job", identity.clone()).await.is_err() {
            let saved = done
                .get("job")
                .await
                .map_err(|e| Error::nats("reading the job's identity", e))?;
            if saved.as_ref() != Some(&identity) {
                return Err(Error::Config {
                    key: "job",
                    reason: format!(
                        "the batch job {job:?} in NATS was started over another input or \
                         segment size ({}); give this run another job name, or the same \
                         input and settings as the other nodes",
                        String::from_utf8_lossy(saved.as_deref().unwrap_or(b"nothing"))
                            .trim()
                            .replace('\n', "; ")
                            .replace('\t', " ")
                    ),
                });
            }
        }
        tracing::info!(node = %config.node_id, job, lease_ttl = ?ttl, "joined the batch job");
        Ok(SegmentLeases {
            me_bytes: Bytes::from(config.node_id.clone().into_bytes()),
            me: config.node_id,
            ttl,
            leases,
            done,
            held: Mutex::new(BTreeMap::new()),
            claims: AtomicU64::new(0),
        })
    }

    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.me
    }

    /// The lease TTL.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Tries to take `segment`: `Done` when finished, `Taken` when another
    /// node holds it.
    pub async fn claim(&self, segment: u32) -> Result<Claim, Error> {
        if self.is_done(segment).await? {
            return Ok(Claim::Done);
        }
        let sent_at = Instant::now();
        let Ok(revision) = self
            .leases
            .create(key(segment), self.me_bytes.clone())
            .await
        else {
            return Ok(Claim::Taken);
        };
        // It may have been finished and released between the two calls.
        if self.is_done(segment).await? {
            let _ = self
                .leases
                .delete_expect_revision(key(segment), Some(revision))
                .await;
            return Ok(Claim::Done);
        }
        let claim = self.claims.fetch_add(1, Ordering::Relaxed) + 1;
        lock(&self.held).insert(
            segment,
            Segment {
                lease: Held::new(revision, sent_at, self.ttl),
                claim,
            },
        );
        tracing::debug!(segment, claim, "segment claimed");
        Ok(Claim::Mine)
    }

    /// The number of this node's current claim of `segment`, while its
    /// lease is surely alive.
    pub fn claim_of(&self, segment: u32) -> Option<u64> {
        let now = Instant::now();
        lock(&self.held)
            .get(&segment)
            .filter(|s| s.lease.valid_until > now)
            .map(|s| s.claim)
    }

    /// Whether `claim` of `segment` is alive for at least `margin` more:
    /// the check before a commit.
    pub fn valid(&self, segment: u32, claim: u64, margin: Duration) -> bool {
        let now = Instant::now();
        lock(&self.held)
            .get(&segment)
            .is_some_and(|s| s.claim == claim && s.lease.valid_until > now + margin)
    }

    /// Segments this node holds.
    pub fn held(&self) -> usize {
        lock(&self.held).len()
    }

    /// Whether `segment` is finished.
    pub async fn is_done(&self, segment: u32) -> Result<bool, Error> {
        self.done
            .get(key(segment))
            .await
            .map(|v| v.is_some())
            .map_err(|e| Error::nats("reading a done marker", e))
    }

    /// Marks `segment` done (after its results are committed) and gives
    /// its lease back — also when the marker could not be written, so that
    /// a later claim finds the committed results and marks it then.
    pub async fn finish(&self, segment: u32, claim: u64) -> Result<(), Error> {
        let marked = self
            .done
            .put(key(segment), self.me_bytes.clone())
            .await
            .map(|_| ())
            .map_err(|e| Error::nats("writing a done marker", e));
        self.release(segment, claim).await;
        marked
    }

    /// Gives `claim` of `segment` back (if still held), so that another
    /// node may take it at once.
    pub async fn release(&self, segment: u32, claim: u64) {
        let revision = {
            let mut held = lock(&self.held);
            match held.get(&segment) {
                Some(s) if s.claim == claim => held.remove(&segment).map(|s| s.lease.revision),
                _ => None,
            }
        };
        if let Some(revision) = revision {
            let _ = tokio::time::timeout(
                self.ttl / 5,
                self.leases
                    .delete_expect_revision(key(segment), Some(revision)),
            )
            .await;
        }
    }

    /// The finished segments.
    pub async fn done_set(&self) -> Result<BTreeSet<u32>, Error> {
        let keys: Vec<String> = self
            .done
            .keys()
            .await
            .map_err(|e| Error::nats("listing done markers", e))?
            .try_collect()
            .await
            .map_err(|e| Error::nats("listing done markers", e))?;
        Ok(keys
            .iter()
            .filter_map(|k| k.strip_prefix("seg.")?.parse().ok())
            .collect())
    }

    /// Whether nobody holds `segment`.
    pub async fn is_free(&self, segment: u32) -> Result<bool, Error> {
        self.leases
            .get(key(segment))
            .await
            .map(|v| v.is_none())
            .map_err(|e| Error::nats("reading a lease", e))
    }

    /// Renews the held leases every fifth of the TTL until `stop` fires,
    /// dropping (and logging) those not renewed in time; then gives every
    /// lease back.
    pub async fn keep(self: Arc<Self>, mut stop: trawler_common::shutdown::Shutdown) {
        let op_timeout = self.ttl / 5;
        let mut interval = tokio::time::interval(self.ttl / 5);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = interval.tick() => {}
                _ = stop.wait() => break,
            }
            // Fence first.
            let now = Instant::now();
            let renew: Vec<(u32, (u64, u64))> = {
                let mut held = lock(&self.held);
                held.retain(|segment, s| {
                    let alive = s.lease.valid_until > now;
                    if !alive {
                        tracing::warn!(segment, "segment lease not renewed in time; dropped");
                    }
                    alive
                });
                held.iter()
                    .map(|(g, s)| (*g, (s.claim, s.lease.revision)))
                    .collect()
            };
            let sent_at = Instant::now();
            let leases = &self.leases;
            let renewed = each_shard(renew, op_timeout, |segment, (claim, revision)| {
                let value = self.me_bytes.clone();
                async move {
                    leases
                        .update(key(segment), value, revision)
                        .await
                        .map(|r| (claim, r))
                }
            })
            .await;
            let mut held = lock(&self.held);
            for (segment, result) in renewed {
                match result {
                    Some((claim, revision)) => {
                        if let Some(s) = held.get_mut(&segment).filter(|s| s.claim == claim) {
                            s.lease = Held::new(revision, sent_at, self.ttl);
                        }
                    }
                    None => {
                        // Written by another node, expired, or finished
                        // and released meanwhile: not ours any more.
                        if held.remove(&segment).is_some() {
                            tracing::warn!(segment, "segment lease lost");
                        }
                    }
                }
            }
        }
        let all: Vec<(u32, u64)> = std::mem::take(&mut *lock(&self.held))
            .into_iter()
            .map(|(segment, s)| (segment, s.lease.revision))
            .collect();
        let leases = &self.leases;
        each_shard(all, op_timeout, |segment, revision| async move {
            leases
                .delete_expect_revision(key(segment), Some(revision))
                .await
        })
        .await;
        tracing::info!(node = %self.me, "segment leases given back");
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
