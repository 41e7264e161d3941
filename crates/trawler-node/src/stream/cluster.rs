//! Cluster mode of a top-N job: keys sharded over nodes, any node serves
//! any subscription, a dead node's keys rebuilt from JetStream.
//!
//! ```text
//!                  JetStream stream of events (every node reads all of it)
//!                        │ ordered consumer, stream order
//!     ┌──────────────────┼──────────────────┐
//!   node A             node B             node C     admit every event (one
//!   partitions 0,3,5   1,4,7              2,6        horizon), apply own keys
//!     │ changed lists    │                  │
//!     └──► core NATS  trawler.topn.<job>.lists ◄──┘  every node follows all
//!                        │                            lists, keeps the latest
//!                 each node's hub ──► its SSE subscribers   of followed keys
//! ```
//!
//! * **Partitions.** A key's partition is FNV-1a 64 of its bytes modulo
//!   the partitions (`--shards`). Partitions are leased with the flagship's
//!   lease machinery ([`trawler_cluster::run_leases`]: rendezvous hashing,
//!   revision fencing, a holder stops at its sent renewal plus ¾ TTL) in
//!   buckets of the job's own, `trawler_topn_<job>_nodes` / `_leases`.
//! * **Events.** Every node reads the whole stream from its first message
//!   and admits every event, so its horizon — and every late or accepted
//!   verdict — is the one a single node would have; it applies only the
//!   events of partitions it holds. The stream is the log: no local WAL.
//! * **Gaining a partition** marks it pending; the consumer task, between
//!   two batches, rebuilds it: it replays the stream on a second ordered
//!   consumer from the pipeline's last mark whose horizon precedes the
//!   window ([`TopPipeline::replay_plan`]) up to the position already
//!   applied, re-admitting as the node did, then applies the partition's
//!   accepted events and serves it. It then announces the partition on
//!   `trawler.topn.<job>.owner`.
//! * **Losing a partition** (lease released, expired by the holder's own
//!   clock, or taken) frees its keys' state at once; no list of it is
//!   published any more.
//! * **Routing.** Owners publish every changed list (coalesced per
//!   `push_interval`) on `trawler.topn.<job>.lists`. Every node follows
//!   that subject and keeps the latest list of each key some local
//!   subscriber follows; a new subscription's snapshot comes from there or
//!   is asked of the owners on `trawler.topn.<job>.get` (every node
//!   answers for the keys it serves). When a partition is announced, the
//!   nodes ask its new owner for their followed keys of it and push them
//!   as updates: subscribers never reconnect.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer};
use bytes::Bytes;
use futures_util::{FutureExt, StreamExt};
use serde::{Deserialize, Serialize};
use trawler_api::streams::{TopAnswer, TopClusterStats};
use trawler_api::ApiError;
use trawler_cluster::{ClusterConfig, LeaseState, ShardOwner};
use trawler_stream::spec::NatsSection;
use trawler_stream::{Batch, Processor, Publish, Replay, TopN, TopPipeline, TopRecord};

use super::hub::{list_json, Hub};
use super::StreamNode;
use crate::error::{Result, Step};

const FREE: u8 = 0;
const PENDING: u8 = 1;
const OWNED: u8 = 2;

/// How long a node waits for the owners' answers.
const ASK_TIMEOUT: Duration = Duration::from_millis(1_500);
/// Largest NATS message of lists (NATS's default limit is 1 MB).
const CHUNK: usize = 256 * 1024;
/// Batches of changed lists waiting for NATS.
const OUTBOX: usize = 1_024;

/// The partition of `key` among `partitions`: FNV-1a 64 of its bytes,
/// modulo. Stable across nodes and versions (it decides ownership).
pub fn partition_of(key: &str, partitions: u32) -> u32 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (h % u64::from(partitions)) as u32
}

/// Which partitions this node holds, and in what state.
pub struct Ownership {
    partitions: u32,
    state: Vec<AtomicU8>,
}

impl Ownership {
    fn new(partitions: u32) -> Ownership {
        Ownership {
            partitions,
            state: (0..partitions).map(|_| AtomicU8::new(FREE)).collect(),
        }
    }

    fn of(&self, key: &str) -> u32 {
        partition_of(key, self.partitions)
    }

    /// Whether this node serves `key` (its partition is held and rebuilt).
    pub fn serves(&self, key: &str) -> bool {
        self.state[self.of(key) as usize].load(Ordering::Acquire) == OWNED
    }

    fn in_state(&self, want: u8) -> Vec<u32> {
        (0..self.partitions)
            .filter(|&p| self.state[p as usize].load(Ordering::Acquire) == want)
            .collect()
    }
}

/// The NATS subjects of one job's cluster.
struct Subjects {
    lists: String,
    owner: String,
    get: String,
}

/// Letters, digits, `_` and `-` of a job's name (subjects and buckets).
fn token(job: &str) -> String {
    job.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The prefix of a job's lease buckets.
pub fn bucket_prefix(job: &str) -> String {
    format!("trawler_topn_{}", token(job))
}

/// A request to the owners.
#[derive(Serialize, Deserialize)]
struct Ask {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    keys: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    hot: Option<usize>,
}

#[derive(Deserialize)]
struct KeyOnly {
    key: String,
}

/// A top-N job's cluster side on one node.
pub struct TopCluster {
    node_id: String,
    own: Arc<Ownership>,
    pipeline: OnceLock<Arc<Mutex<TopPipeline>>>,
    hub: OnceLock<Arc<Hub>>,
    client: async_nats::Client,
    subjects: Subjects,
    /// Set when a partition is gained: the consumer rebuilds it.
    wake: tokio::sync::Notify,
    leases: Arc<Mutex<LeaseState>>,
    rebuilds: AtomicU64,
    /// Runs the NATS work of the API's synchronous calls.
    runtime: tokio::runtime::Handle,
}

impl ShardOwner for TopCluster {
    fn gained(&self, shard: u32) {
        self.own.state[shard as usize].store(PENDING, Ordering::Release);
        self.wake.notify_one();
    }

    fn lost(&self, shard: u32) {
        // Not served from now on; then its state goes, under the pipeline's
        // lock (after the batch being applied, if any).
        self.own.state[shard as usize].store(FREE, Ordering::Release);
        if let Some(p) = self.pipeline.get() {
            let own = &self.own;
            let n = lock(p).drop_keys(|k| own.of(k) == shard);
            tracing::info!(
                partition = shard,
                keys = n,
                "partition lost; its keys dropped"
            );
        }
    }
}

impl TopCluster {
    fn pipeline(&self) -> &Arc<Mutex<TopPipeline>> {
        self.pipeline
            .get()
            .expect("the pipeline is opened at start")
    }

    fn hub(&self) -> &Arc<Hub> {
        self.hub.get().expect("the hub is opened at start")
    }

    /// The key filter of this node's pipeline.
    pub fn filter(&self) -> trawler_stream::KeyFilter {
        let own = self.own.clone();
        Box::new(move |k: &str| own.serves(k))
    }

    /// This node's share, for the stats.
    pub fn stats(&self) -> TopClusterStats {
        TopClusterStats {
            node: self.node_id.clone(),
            nodes: lock(&self.leases).nodes.len(),
            partitions: self.own.partitions,
            owned: self.own.in_state(OWNED),
            rebuilding: self.own.in_state(PENDING),
            rebuilds: self.rebuilds.load(Ordering::Relaxed),
        }
    }

    /// Asks the owners for `ask`; the lists answered (as JSON), waiting
    /// until `enough` says so or [`ASK_TIMEOUT`].
    async fn ask(&self, ask: &Ask, enough: impl Fn(usize, usize) -> bool) -> Vec<Arc<str>> {
        let mut out = Vec::new();
        let inbox = self.client.new_inbox();
        let Ok(mut replies) = self.client.subscribe(inbox.clone()).await else {
            return out;
        };
        let payload = serde_json::to_vec(ask).expect("a request serializes");
        if self
            .client
            .publish_with_reply(self.subjects.get.clone(), inbox, payload.into())
            .await
            .is_err()
        {
            return out;
        }
        let deadline = tokio::time::Instant::now() + ASK_TIMEOUT;
        let mut answers = 0;
        while !enough(answers, out.len()) {
            match tokio::time::timeout_at(deadline, replies.next()).await {
                Ok(Some(m)) => {
                    answers += 1;
                    out.extend(
                        String::from_utf8_lossy(&m.payload)
                            .lines()
                            .filter(|l| !l.is_empty())
                            .map(Arc::from),
                    );
                }
                _ => break,
            }
        }
        out
    }

    /// The owners' lists of `keys`, by key (the keys nobody serves now are
    /// missing).
    async fn lists_of(&self, keys: &[String]) -> HashMap<String, Arc<str>> {
        let ask = Ask {
            keys: keys.to_vec(),
            hot: None,
        };
        self.ask(&ask, |_, lists| lists >= keys.len())
            .await
            .into_iter()
            .filter_map(|json| Some((serde_json::from_str::<KeyOnly>(&json).ok()?.key, json)))
            .collect()
    }

    /// `GET …/top` in cluster mode: 503 while a key's owner is replaced.
    pub fn top(&self, keys: &[String]) -> std::result::Result<Vec<TopAnswer>, ApiError> {
        let got = self.block_on(self.lists_of(keys));
        keys.iter()
            .map(|k| {
                let json = got.get(k).ok_or_else(|| {
                    ApiError::Unavailable(format!(
                        "the owner of key {k:?} is being replaced; retry shortly"
                    ))
                })?;
                serde_json::from_str(json).map_err(|e| ApiError::Unavailable(e.to_string()))
            })
            .collect()
    }

    /// `GET …/hot` in cluster mode: every node's hottest, merged.
    pub fn hottest(&self, limit: usize) -> Vec<TopAnswer> {
        let nodes = lock(&self.leases).nodes.len().max(1);
        let ask = Ask {
            keys: Vec::new(),
            hot: Some(limit),
        };
        let got = self.block_on(self.ask(&ask, |answers, _| answers >= nodes));
        let mut lists: Vec<TopAnswer> = got
            .iter()
            .filter_map(|j| serde_json::from_str(j).ok())
            .collect();
        lists.sort_by(|a, b| b.total.cmp(&a.total).then_with(|| a.key.cmp(&b.key)));
        lists.truncate(limit);
        lists
    }

    /// Sends subscriber `public` its snapshot of `keys` once the owners of
    /// the keys with no latest list answered.
    pub fn snapshot(self: &Arc<Self>, public: String, keys: Vec<String>) {
        let me = self.clone();
        self.runtime.spawn(async move {
            let hub = me.hub();
            let missing = hub.missing(&keys);
            let answered = if missing.is_empty() {
                HashMap::new()
            } else {
                me.lists_of(&missing).await
            };
            hub.complete(&public, &keys, &answered);
        });
    }

    /// Runs `f` to its end from a synchronous API call (the API's runtime
    /// has several threads; this one leaves it meanwhile).
    fn block_on<T>(&self, f: impl std::future::Future<Output = T>) -> T {
        tokio::task::block_in_place(|| self.runtime.block_on(f))
    }
}

/// The pipeline's [`Publish`] in cluster mode: every changed list, to NATS
/// (through a bounded outbox; a full one drops the batch, counted).
pub struct ClusterPublisher {
    tx: tokio::sync::mpsc::Sender<Vec<String>>,
    dropped: Arc<AtomicU64>,
}

impl Publish for ClusterPublisher {
    fn publish(&mut self, engine: &mut TopN, now_ms: i64, interval_ms: i64) {
        let lists = engine.take_changed(now_ms, interval_ms, |_| true);
        if lists.is_empty() {
            return;
        }
        let json = lists.iter().map(list_json).collect();
        if self.tx.try_send(json).is_err() {
            let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            tracing::warn!(
                dropped = n,
                "NATS is not taking the lists as fast as they change; a batch of changes was dropped"
            );
        }
    }
}

/// Publishes the outbox's lists, NDJSON, in messages of at most [`CHUNK`].
async fn publish_lists(
    client: async_nats::Client,
    subject: String,
    mut rx: tokio::sync::mpsc::Receiver<Vec<String>>,
) {
    let mut buf = Vec::with_capacity(CHUNK);
    while let Some(lists) = rx.recv().await {
        for l in lists {
            if !buf.is_empty() && buf.len() + l.len() > CHUNK {
                let payload = Bytes::from(std::mem::take(&mut buf));
                if let Err(e) = client.publish(subject.clone(), payload).await {
                    tracing::warn!(error = %e, "publishing lists failed");
                }
            }
            buf.extend_from_slice(l.as_bytes());
            buf.push(b'\n');
        }
        if !buf.is_empty() {
            let payload = Bytes::from(std::mem::take(&mut buf));
            if let Err(e) = client.publish(subject.clone(), payload).await {
                tracing::warn!(error = %e, "publishing lists failed");
            }
        }
    }
}

/// Follows every owner's lists into the hub, and refreshes the followed
/// keys of a partition whose owner announced itself.
async fn follow_lists(
    cluster: Arc<TopCluster>,
    mut stop: trawler_common::shutdown::Shutdown,
) -> Result<()> {
    let client = &cluster.client;
    let mut lists = client
        .subscribe(cluster.subjects.lists.clone())
        .await
        .step("following the top-N lists on NATS")?;
    let mut owners = client
        .subscribe(cluster.subjects.owner.clone())
        .await
        .step("following the top-N owners on NATS")?;
    loop {
        tokio::select! {
            _ = stop.wait() => return Ok(()),
            m = lists.next() => {
                let Some(m) = m else { return Ok(()) };
                let text = String::from_utf8_lossy(&m.payload);
                let got: Vec<(String, Arc<str>)> = text
                    .lines()
                    .filter_map(|l| Some((serde_json::from_str::<KeyOnly>(l).ok()?.key, Arc::from(l))))
                    .collect();
                cluster.hub().deliver(&got);
            }
            m = owners.next() => {
                let Some(m) = m else { return Ok(()) };
                let Some(p) = std::str::from_utf8(&m.payload).ok().and_then(|s| s.parse::<u32>().ok()) else { continue };
                let own = &cluster.own;
                let keys = cluster.hub().followed(|k| own.of(k) == p);
                if keys.is_empty() {
                    continue;
                }
                let me = cluster.clone();
                tokio::spawn(async move {
                    let got: Vec<(String, Arc<str>)> = me.lists_of(&keys).await.into_iter().collect();
                    me.hub().deliver(&got);
                });
            }
        }
    }
}

/// Answers the other nodes' requests for the lists this node serves.
async fn answer_asks(
    cluster: Arc<TopCluster>,
    mut stop: trawler_common::shutdown::Shutdown,
) -> Result<()> {
    let client = &cluster.client;
    let mut asks = client
        .subscribe(cluster.subjects.get.clone())
        .await
        .step("answering top-N requests on NATS")?;
    loop {
        let m = tokio::select! {
            _ = stop.wait() => return Ok(()),
            m = asks.next() => match m { Some(m) => m, None => return Ok(()) },
        };
        let (Some(reply), Ok(ask)) = (m.reply, serde_json::from_slice::<Ask>(&m.payload)) else {
            continue;
        };
        let mut out = String::new();
        {
            let p = lock(cluster.pipeline());
            let e = p.engine();
            let lists: Vec<_> = match ask.hot {
                Some(limit) => e.hottest(limit).iter().map(|(k, _)| e.top(k)).collect(),
                None => ask
                    .keys
                    .iter()
                    .filter(|k| cluster.own.serves(k))
                    .map(|k| e.top(k))
                    .collect(),
            };
            for l in &lists {
                out.push_str(&list_json(l));
                out.push('\n');
            }
        }
        // A keys request with none of ours needs no answer.
        if out.is_empty() && ask.hot.is_none() {
            continue;
        }
        if let Err(e) = client.publish(reply, out.into()).await {
            tracing::debug!(error = %e, "answering a top-N request failed");
        }
    }
}

/// The job's stream (created with the single-node source's settings when
/// missing).
async fn open_stream(job: &str, settings: &NatsSection) -> Result<jetstream::stream::Stream> {
    let client = async_nats::ConnectOptions::new()
        .retry_on_initial_connect()
        .connection_timeout(Duration::from_secs(5))
        .connect(settings.servers.as_slice())
        .await
        .step("connecting to NATS for the events")?;
    jetstream::new(client)
        .get_or_create_stream(jetstream::stream::Config {
            name: super::nats::stream_name(job, settings),
            subjects: vec![settings.subject.clone()],
            ..Default::default()
        })
        .await
        .step("opening the events' stream")
}

/// An ordered consumer of `settings.subject` from `start` (a sequence; 0:
/// the first message).
async fn ordered(
    stream: &jetstream::stream::Stream,
    settings: &NatsSection,
    start: u64,
) -> Result<consumer::pull::Ordered> {
    stream
        .create_consumer(consumer::pull::OrderedConfig {
            filter_subject: settings.subject.clone(),
            deliver_policy: if start <= 1 {
                consumer::DeliverPolicy::All
            } else {
                consumer::DeliverPolicy::ByStartSequence {
                    start_sequence: start,
                }
            },
            ..Default::default()
        })
        .await
        .step("creating an ordered consumer of the events")?
        .messages()
        .await
        .step("reading the events")
}

/// Reads the whole stream in order into the node, and rebuilds each
/// gained partition between two batches, until `stop`.
async fn consume(
    node: Arc<StreamNode>,
    cluster: Arc<TopCluster>,
    settings: NatsSection,
    mut stop: trawler_common::shutdown::Shutdown,
) -> Result<()> {
    let stream = open_stream(&node.job.name, &settings).await?;
    let mut messages = ordered(&stream, &settings, node.position() + 1).await?;
    tracing::info!(subject = %settings.subject, "following every event of the stream");
    let mut body = Vec::new();
    loop {
        let pending = cluster.own.in_state(PENDING);
        if !pending.is_empty() {
            if let Err(e) = rebuild(&node, &cluster, &stream, &settings, &pending).await {
                tracing::warn!(error = %e, partitions = ?pending, "rebuilding partitions failed; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            continue;
        }
        let first = tokio::select! {
            _ = stop.wait() => return Ok(()),
            _ = cluster.wake.notified() => continue,
            m = messages.next() => m,
        };
        let mut batch = match first {
            Some(Ok(m)) => vec![m],
            Some(Err(e)) => {
                tracing::warn!(error = %e, "reading the events failed");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
            None => {
                tracing::warn!("the events' consumer ended; recreating it");
                messages = ordered(&stream, &settings, node.position() + 1).await?;
                continue;
            }
        };
        while batch.len() < 512 {
            match messages.next().now_or_never() {
                Some(Some(Ok(m))) => batch.push(m),
                _ => break,
            }
        }
        body.clear();
        let mut last = 0;
        for m in &batch {
            last = m.info().map(|i| i.stream_sequence).unwrap_or(last);
            body.extend_from_slice(&m.payload);
            if !m.payload.ends_with(b"\n") {
                body.push(b'\n');
            }
        }
        let n = node.clone();
        let chunk = std::mem::take(&mut body);
        let done = tokio::task::spawn_blocking(move || {
            let r = n.submit(&chunk, last, true);
            (r, chunk)
        })
        .await
        .step("ingesting events")?;
        body = done.1;
        done.0.map_err(|e| crate::Error::Step {
            step: "ingesting events".into(),
            source: e.to_string().into(),
        })?;
    }
}

/// Rebuilds `parts` (pending) from the stream, then serves them.
async fn rebuild(
    node: &StreamNode,
    cluster: &TopCluster,
    stream: &jetstream::stream::Stream,
    settings: &NatsSection,
    parts: &[u32],
) -> Result<()> {
    let started = Instant::now();
    let (plan, upto) = {
        let p = lock(cluster.pipeline());
        (
            p.replay_plan().expect("a partitioned pipeline"),
            p.position(),
        )
    };
    let from = plan.from;
    let own = &cluster.own;
    let mut wanted = vec![false; own.partitions as usize];
    for &p in parts {
        wanted[p as usize] = true;
    }
    let keep = |k: &str| wanted[own.of(k) as usize];
    let mut replay = Replay::new(&node.job, plan);
    let mut read = 0u64;
    // Messages the stream no longer holds (its retention) are not waited
    // for: with none left up to `upto`, there is nothing to replay.
    let first = stream
        .get_info()
        .await
        .step("reading the events' stream state")?
        .state
        .first_sequence;
    if upto > from && first <= upto {
        let mut messages = ordered(stream, settings, from + 1).await?;
        loop {
            let m = match tokio::time::timeout(Duration::from_secs(10), messages.next()).await {
                Ok(Some(Ok(m))) => m,
                Ok(Some(Err(e))) => {
                    return Err(crate::Error::Step {
                        step: "replaying the events".into(),
                        source: e.to_string().into(),
                    })
                }
                _ => {
                    return Err(crate::Error::Step {
                        step: "replaying the events".into(),
                        source: format!(
                            "no message after sequence {from} within 10 s; wanted up to {upto}"
                        )
                        .into(),
                    })
                }
            };
            let seq = m.info().map(|i| i.stream_sequence).unwrap_or(0);
            if seq > upto {
                break;
            }
            let mut batch = Batch::default();
            node.decoder.decode(&m.payload, &mut batch);
            replay.feed(seq, &batch, trawler_common::clock::unix_ms(), &keep);
            read += 1;
            if seq >= upto {
                break;
            }
        }
    }
    let record = replay.record;
    let pipeline = cluster.pipeline().clone();
    let own2 = cluster.own.clone();
    let parts2 = parts.to_vec();
    let (won, applied) = tokio::task::spawn_blocking(move || {
        let mut p = lock(&pipeline);
        // Only what is still pending: a partition lost meanwhile stays lost.
        let won: Vec<u32> = parts2
            .into_iter()
            .filter(|&q| {
                own2.state[q as usize]
                    .compare_exchange(PENDING, OWNED, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
            })
            .collect();
        let mut mine = TopRecord::default();
        for (ts, key, member, value) in record.iter() {
            if won.contains(&own2.of(key)) {
                mine.push(ts, key, member, value);
            }
        }
        let applied = p.apply_replayed(&mine);
        (won, applied)
    })
    .await
    .step("applying the replay")?;
    cluster.rebuilds.fetch_add(1, Ordering::Relaxed);
    for p in &won {
        if let Err(e) = cluster
            .client
            .publish(cluster.subjects.owner.clone(), p.to_string().into())
            .await
        {
            tracing::warn!(error = %e, "announcing a partition failed");
        }
    }
    tracing::info!(
        partitions = ?won,
        from_sequence = from + 1,
        to_sequence = upto,
        messages = read,
        events = applied,
        seconds = started.elapsed().as_secs_f64(),
        "partitions rebuilt from the stream; serving them"
    );
    Ok(())
}

/// Runs a top-N job as one node of a cluster until `shutdown`.
pub async fn run(
    config: super::StreamConfig,
    cluster_config: ClusterConfig,
    api_runtime: tokio::runtime::Handle,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<()> {
    let job = config.job.clone();
    let trawler_stream::Source::Nats(settings) = &job.source else {
        return Err(crate::Error::Config(format!(
            "--cluster: the top-N job {} must read a JetStream stream ([stream] source = \"nats\"): every node reads every event",
            job.name
        )));
    };
    let settings = settings.clone();
    let t = token(&job.name);
    let cluster_conn = cluster_config
        .connect_leases(&bucket_prefix(&job.name))
        .await
        .step("joining the cluster")?;
    let leases = Arc::new(Mutex::new(LeaseState::default()));
    let cluster = Arc::new(TopCluster {
        node_id: cluster_conn.config.node_id.clone(),
        own: Arc::new(Ownership::new(cluster_conn.config.shards)),
        pipeline: OnceLock::new(),
        hub: OnceLock::new(),
        client: cluster_conn.client.clone(),
        subjects: Subjects {
            lists: format!("trawler.topn.{t}.lists"),
            owner: format!("trawler.topn.{t}.owner"),
            get: format!("trawler.topn.{t}.get"),
        },
        wake: tokio::sync::Notify::new(),
        leases: leases.clone(),
        rebuilds: AtomicU64::new(0),
        runtime: tokio::runtime::Handle::current(),
    });
    let (out_tx, out_rx) = tokio::sync::mpsc::channel(OUTBOX);
    let publisher = ClusterPublisher {
        tx: out_tx,
        dropped: Arc::default(),
    };
    let node = StreamNode::open_partitioned(job.clone(), cluster.clone(), Box::new(publisher))?;
    let (stop_tx, stop_rx) = trawler_common::shutdown::channel();
    let api_task = super::start_api(&node, &config, &api_runtime, stop_rx.clone())?;

    let publish_task = tokio::spawn(publish_lists(
        cluster.client.clone(),
        cluster.subjects.lists.clone(),
        out_rx,
    ));
    let follow_task = tokio::spawn(follow_lists(cluster.clone(), stop_rx.clone()));
    let answer_task = tokio::spawn(answer_asks(cluster.clone(), stop_rx.clone()));
    let leases_task = tokio::spawn(trawler_cluster::run_leases(
        cluster_conn,
        cluster.clone() as Arc<dyn ShardOwner>,
        leases,
        || Bytes::from_static(b"{}"),
        stop_rx.clone(),
    ));
    let mut consume_task = tokio::spawn(consume(
        node.clone(),
        cluster.clone(),
        settings,
        stop_rx.clone(),
    ));

    tokio::pin!(shutdown);
    let failed = tokio::select! {
        _ = &mut shutdown => None,
        r = &mut consume_task => Some(match r {
            Ok(Ok(())) => crate::Error::Step { step: "the stream's source".into(), source: "it ended".into() },
            Ok(Err(e)) => e,
            Err(e) => crate::Error::Step { step: "the stream's source".into(), source: e.to_string().into() },
        }),
    };
    tracing::info!("shutting down: giving the partitions back");
    stop_tx.trigger();
    let _ = leases_task.await;
    cluster.hub().close_all();
    let _ = tokio::time::timeout(Duration::from_secs(5), api_task).await;
    publish_task.abort();
    follow_task.abort();
    answer_task.abort();
    consume_task.abort();
    match failed {
        Some(e) => Err(e),
        None => {
            tracing::info!("stopped");
            Ok(())
        }
    }
}

impl TopCluster {
    /// Sets the pipeline and hub once the node has opened them.
    pub fn attach(&self, pipeline: Arc<Mutex<TopPipeline>>, hub: Arc<Hub>) {
        let _ = self.pipeline.set(pipeline);
        let _ = self.hub.set(hub);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_are_fnv1a_of_the_key_and_spread() {
        // The formula is part of the protocol between nodes (and the
        // cluster test's oracle): FNV-1a 64 of "a" is 0xaf63dc4c8601ec8c.
        assert_eq!(
            partition_of("a", u32::MAX),
            (0xaf63_dc4c_8601_ec8c_u64 % u64::from(u32::MAX)) as u32
        );
        let mut count = [0; 8];
        for i in 0..8_000 {
            count[partition_of(&format!("p{i}"), 8) as usize] += 1;
        }
        assert!(
            count.iter().all(|&c| (800..1_200).contains(&c)),
            "{count:?}"
        );
        assert_eq!(bucket_prefix("my.job"), "trawler_topn_my_job");
    }
}
