//! Shard leases: which node polls which shard.
//!
//! Two KV buckets, both with entries that expire after the lease TTL:
//! `trawler_nodes` holds one heartbeat per live node, `trawler_leases` one
//! key per leased shard whose value is the holder's id.
//!
//! Every tick (a fifth of the TTL) each node:
//!
//! 1. writes its heartbeat and reads the live nodes;
//! 2. computes the owner every shard *should* have: the live node with the
//!    highest hash of (shard, node) — rendezvous hashing, so every node
//!    agrees without talking, shards spread evenly, and a join or a death
//!    moves only the shards it must;
//! 3. for each shard it holds: if another live node should own it, stops
//!    polling it and deletes the lease (at the revision it wrote, so it
//!    can never delete someone else's); otherwise renews it with an update
//!    *expecting its last revision* — if anyone else wrote the key, or it
//!    expired, the update fails and the node stops polling at once;
//! 4. for each shard it should own but does not hold: creates the lease,
//!    which succeeds only when no live lease exists.
//!
//! **Fencing.** A node polls a shard only while its lease is surely alive
//! by its own clock: until the time it *sent* its last successful renewal
//! plus three quarters of the TTL. The server keeps the key until a full
//! TTL after it *received* that write, so the holder has stopped before any
//! other node can create the key. A node cut off from NATS therefore stops
//! polling on its own. Slots are stamped on one global grid, and a node
//! that gains a shard starts at the next slot after it gained it, while
//! the former holder stopped before it released: no account is read twice
//! for one slot.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use tokio::time::Instant;

use crate::{Cluster, Error};

/// Bucket of node heartbeats.
pub const NODES_BUCKET: &str = "trawler_nodes";
/// Bucket of shard leases.
pub const LEASES_BUCKET: &str = "trawler_leases";

/// What a node does when it gains or loses a shard. Both must act at once:
/// `lost` is called when the lease may be gone.
pub trait ShardOwner: Send + Sync + 'static {
    /// Start polling the ids of `shard` (from their next slot).
    fn gained(&self, shard: u32);
    /// Stop polling the ids of `shard`.
    fn lost(&self, shard: u32);
}

/// What the lease loop knows now, for `/metrics` and the stats endpoint.
#[derive(Debug, Clone, Default)]
pub struct LeaseState {
    /// Shards this node holds.
    pub held: usize,
    /// Live nodes, with their last heartbeat payload.
    pub nodes: BTreeMap<String, Bytes>,
    /// Leases gained since start.
    pub gained: u64,
    /// Leases given up for rebalancing since start.
    pub released: u64,
    /// Leases lost (renewal failed or too late) since start.
    pub lost: u64,
}

/// The rendezvous weight of `node` for `shard`.
fn weight(shard: u32, node: &str) -> u64 {
    // FNV-1a over the node id, then a splitmix finaliser with the shard.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in node.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    let mut z = h ^ (u64::from(shard).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The node that should own `shard` among `nodes`.
pub fn owner_of<'a>(shard: u32, nodes: impl IntoIterator<Item = &'a String>) -> Option<&'a String> {
    nodes
        .into_iter()
        .max_by_key(|n| (weight(shard, n), n.as_str()))
}

fn shard_key(shard: u32) -> String {
    format!("shard.{shard}")
}

pub(crate) struct Held {
    pub(crate) revision: u64,
    /// Poll no longer than this without a successful renewal.
    pub(crate) valid_until: Instant,
}

impl Held {
    /// A lease written at `revision` by a request sent at `sent_at`: safe
    /// to poll for three quarters of the TTL from the sending.
    pub(crate) fn new(revision: u64, sent_at: Instant, ttl: std::time::Duration) -> Self {
        Self {
            revision,
            valid_until: sent_at + ttl * 3 / 4,
        }
    }
}

/// Runs `op` on every shard, 64 at a time, each bounded by `timeout`; the
/// result per shard, `None` where it failed or timed out.
pub(crate) async fn each_shard<A, T, E, F, Fut>(
    items: Vec<(u32, A)>,
    timeout: std::time::Duration,
    op: F,
) -> Vec<(u32, Option<T>)>
where
    F: Fn(u32, A) -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    futures_util::stream::iter(items)
        .map(|(shard, a)| {
            let call = op(shard, a);
            async move {
                let result = tokio::time::timeout(timeout, call).await;
                (shard, result.ok().and_then(Result::ok))
            }
        })
        .buffer_unordered(64)
        .collect()
        .await
}

/// Keeps this node's share of the leases until `stop` fires, then
/// gives every lease back so that others take over at once.
/// `heartbeat` is the payload of this node's heartbeat (its figures).
pub async fn run_leases(
    cluster: Cluster,
    owner: Arc<dyn ShardOwner>,
    state: Arc<Mutex<LeaseState>>,
    heartbeat: impl Fn() -> Bytes + Send + 'static,
    mut stop: trawler_common::shutdown::Shutdown,
) {
    let ttl = cluster.config.lease_ttl;
    let tick = ttl / 5;
    let op_timeout = ttl / 5;
    let me = cluster.config.node_id.clone();
    let mut held: BTreeMap<u32, Held> = BTreeMap::new();
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            _ = stop.wait() => break,
        }
        // Fence first: whatever happens below, nothing is polled past its
        // lease's safe end.
        let now = Instant::now();
        let expired: Vec<u32> = held
            .iter()
            .filter(|(_, h)| h.valid_until <= now)
            .map(|(s, _)| *s)
            .collect();
        for shard in expired {
            held.remove(&shard);
            owner.lost(shard);
            lock(&state).lost += 1;
            tracing::warn!(
                shard,
                "lease not renewed in time; stopped polling the shard"
            );
        }

        let beat = heartbeat();
        let put = tokio::time::timeout(op_timeout, cluster.nodes.put(&me, beat.clone())).await;
        if !matches!(put, Ok(Ok(_))) {
            tracing::warn!("could not write the heartbeat to NATS");
            continue;
        }
        let nodes = match tokio::time::timeout(op_timeout, live_nodes(&cluster)).await {
            Ok(Ok(mut nodes)) => {
                nodes.insert(me.clone(), beat);
                nodes
            }
            _ => {
                tracing::warn!("could not read the live nodes from NATS");
                continue;
            }
        };
        let names: BTreeSet<String> = nodes.keys().cloned().collect();

        // Release what others should own, renew the rest, concurrently.
        let sent_at = Instant::now();
        let mut renewals = Vec::new();
        let mut releases = Vec::new();
        for (&shard, h) in &held {
            if owner_of(shard, &names) != Some(&me) {
                releases.push((shard, h.revision));
            } else {
                renewals.push((shard, h.revision));
            }
        }
        for &(shard, _) in &releases {
            held.remove(&shard);
            owner.lost(shard);
        }
        let leases = &cluster.leases;
        lock(&state).released += releases.len() as u64;
        each_shard(releases, op_timeout, |shard, revision| async move {
            leases
                .delete_expect_revision(shard_key(shard), Some(revision))
                .await
        })
        .await;
        let me_bytes = Bytes::from(me.clone().into_bytes());
        let renewed = each_shard(renewals, op_timeout, |shard, revision| {
            let value = me_bytes.clone();
            async move { leases.update(shard_key(shard), value, revision).await }
        })
        .await;
        for (shard, revision) in renewed {
            match revision {
                Some(revision) => {
                    held.insert(shard, Held::new(revision, sent_at, ttl));
                }
                None => {
                    // Another node wrote the key, or it expired: stop now.
                    if held.remove(&shard).is_some() {
                        owner.lost(shard);
                        lock(&state).lost += 1;
                        tracing::warn!(shard, "lease lost");
                    }
                }
            }
        }

        // Take what this node should own and nobody holds.
        let wanted: Vec<(u32, ())> = (0..cluster.config.shards)
            .filter(|s| !held.contains_key(s) && owner_of(*s, &names) == Some(&me))
            .map(|s| (s, ()))
            .collect();
        let sent_at = Instant::now();
        let created = each_shard(wanted, op_timeout, |shard, ()| {
            let value = me_bytes.clone();
            async move { leases.create(shard_key(shard), value).await }
        })
        .await;
        let mut gained = 0;
        for (shard, revision) in created {
            if let Some(revision) = revision {
                held.insert(shard, Held::new(revision, sent_at, ttl));
                owner.gained(shard);
                gained += 1;
            }
        }
        let mut s = lock(&state);
        s.gained += gained;
        s.held = held.len();
        s.nodes = nodes;
    }

    // Give everything back so that the others take over without waiting
    // for the TTL.
    let releases: Vec<(u32, u64)> = std::mem::take(&mut held)
        .into_iter()
        .map(|(shard, h)| {
            owner.lost(shard);
            (shard, h.revision)
        })
        .collect();
    let leases = &cluster.leases;
    each_shard(releases, op_timeout, |shard, revision| async move {
        leases
            .delete_expect_revision(shard_key(shard), Some(revision))
            .await
    })
    .await;
    let _ = tokio::time::timeout(op_timeout, cluster.nodes.delete(&me)).await;
    lock(&state).held = 0;
    tracing::info!(node = %me, "left the cluster; leases given back");
}

async fn live_nodes(cluster: &Cluster) -> Result<BTreeMap<String, Bytes>, Error> {
    let keys: Vec<String> = cluster
        .nodes
        .keys()
        .await
        .map_err(|e| Error::nats("listing nodes", e))?
        .try_collect()
        .await
        .map_err(|e| Error::nats("listing nodes", e))?;
    let mut out = BTreeMap::new();
    for key in keys {
        if let Ok(Some(value)) = cluster.nodes.get(&key).await {
            out.insert(key, value);
        }
    }
    Ok(out)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn shards_spread_evenly_and_a_join_moves_only_its_share() {
        let three = nodes(&["node-1", "node-2", "node-3"]);
        let mut count: BTreeMap<&String, usize> = BTreeMap::new();
        for s in 0..256 {
            *count.entry(owner_of(s, &three).unwrap()).or_default() += 1;
        }
        for (node, n) in &count {
            assert!((60..=110).contains(n), "{node} owns {n} of 256");
        }
        let four = nodes(&["node-1", "node-2", "node-3", "node-4"]);
        let mut moved = 0;
        for s in 0..256 {
            let before = owner_of(s, &three).unwrap();
            let after = owner_of(s, &four).unwrap();
            if before != after {
                assert_eq!(after, "node-4", "a shard moved between old nodes");
                moved += 1;
            }
        }
        assert!(
            (40..=90).contains(&moved),
            "{moved} shards moved to the new node"
        );
    }

    #[test]
    fn a_death_moves_only_the_dead_nodes_shards() {
        let three = nodes(&["a", "b", "c"]);
        let two = nodes(&["a", "c"]);
        for s in 0..1000 {
            let before = owner_of(s, &three).unwrap();
            if before != "b" {
                assert_eq!(owner_of(s, &two).unwrap(), before);
            }
        }
    }
}
