//! trawler's multi-node mode, built on two engines that already solve the
//! distributed parts: NATS JetStream for coordination and durable
//! hand-off, VictoriaMetrics for the series.
//!
//! ```text
//!            ┌────────── NATS JetStream ───────────┐
//!  node A ──►│ KV trawler_nodes   heartbeats (TTL) │
//!  node B ──►│ KV trawler_leases  shard → node     │  fenced by revision
//!  node C ──►│ stream TRAWLER_OBS observations,    │
//!            │                    verdicts         │
//!            └──────┬───────────────────┬──────────┘
//!      ordered consumer (each node)   durable pull consumer (shared)
//!                   ▼                   ▼
//!      live views of every account   VictoriaMetrics /api/v1/import
//!      (rank, average, top)          (series reads: export, query_range)
//! ```
//!
//! * **Work** is split into shards (`id % shards`, far more shards than
//!   nodes). [`leases`] keeps each shard leased to one live node in a KV
//!   bucket whose entries expire after the lease TTL; shards are assigned by
//!   rendezvous hashing over the live nodes, so a joining node takes its
//!   fair share and a dead node's shards spread over the others. A lease is
//!   created only where no key exists and renewed only at the revision the
//!   holder last wrote, and a holder stops polling a shard before its lease
//!   can expire, so two nodes never poll a shard at once.
//! * **Observations** are published to the stream ([`stream`]) and count as
//!   acknowledged only when JetStream has stored them (on every replica
//!   when the NATS cluster has three servers). Storage writers ([`vm`])
//!   share one durable consumer, import batches into VictoriaMetrics and
//!   ack them only after VictoriaMetrics accepted them; when it is down, the
//!   stream keeps the backlog and nothing is lost.
//! * **Reads**: every node follows the stream to keep the live views of all
//!   accounts; series come from VictoriaMetrics.

pub mod leases;
pub mod segments;
pub mod stream;
pub mod vm;

use std::time::Duration;

use async_nats::jetstream;

pub use leases::{run_leases, LeaseState, ShardOwner};
pub use segments::{Claim, SegmentLeases};
pub use stream::{Batch, Publisher, Row, VerdictRow, Verdicts};
pub use vm::{VmClient, WriterMetrics};

/// Errors of the cluster mode, each saying which engine failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A configuration value is out of range.
    #[error("cluster config: {key}: {reason}")]
    Config {
        /// The offending key.
        key: &'static str,
        /// Why.
        reason: String,
    },
    /// NATS could not be reached or refused an operation.
    #[error("NATS: {0}")]
    Nats(String),
    /// VictoriaMetrics could not be reached or refused a request.
    #[error("VictoriaMetrics at {url}: {detail}")]
    Vm {
        /// The URL asked.
        url: String,
        /// What went wrong.
        detail: String,
    },
}

impl Error {
    pub(crate) fn nats(context: &str, e: impl std::fmt::Display) -> Self {
        Self::Nats(format!("{context}: {e}"))
    }
}

/// How this node joins the cluster. Validated by [`ClusterConfig::connect`].
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// NATS servers, `nats://host:port`.
    pub servers: Vec<String>,
    /// This node's name; unique among live nodes.
    pub node_id: String,
    /// Shards the id space is split into (`id % shards`).
    pub shards: u32,
    /// A lease not renewed for this long expires; a dead node's shards are
    /// taken over after at most this plus one renewal tick.
    pub lease_ttl: Duration,
    /// How long the stream keeps observations (the backlog it can buffer
    /// while VictoriaMetrics is down, and the replay window of the views).
    pub stream_max_age: Duration,
    /// Most bytes the stream keeps; the oldest go first beyond it.
    pub stream_max_bytes: i64,
}

impl ClusterConfig {
    /// Defaults for `servers` and `node_id`.
    pub fn new(servers: Vec<String>, node_id: String) -> Self {
        Self {
            servers,
            node_id,
            shards: 256,
            lease_ttl: Duration::from_secs(5),
            stream_max_age: Duration::from_secs(24 * 3600),
            stream_max_bytes: 8 << 30,
        }
    }

    /// Checks every value (done again by [`ClusterConfig::connect`]).
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |key, reason: &str| {
            Err(Error::Config {
                key,
                reason: reason.into(),
            })
        };
        if self.servers.is_empty() {
            return bad("servers", "at least one nats://host:port is needed");
        }
        if self.node_id.is_empty()
            || !self
                .node_id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return bad("node_id", "letters, digits, '-' and '_' only, not empty");
        }
        if self.shards == 0 || self.shards > 65_536 {
            return bad("shards", "must be 1..=65536");
        }
        if self.lease_ttl < Duration::from_secs(1) {
            return bad("lease_ttl", "must be at least 1s");
        }
        Ok(())
    }

    /// Connects for leases only, in buckets of their own:
    /// `<prefix>_nodes` and `<prefix>_leases` (a top-N job's partitions,
    /// which must not mix with the crawl's shards). No observation stream.
    pub async fn connect_leases(self, prefix: &str) -> Result<Cluster, Error> {
        self.validate()?;
        let client = self.connect_client().await?;
        let js = jetstream::new(client.clone());
        let (nodes_bucket, leases_bucket) = (format!("{prefix}_nodes"), format!("{prefix}_leases"));
        let nodes = open_replicated(&js, &nodes_bucket, self.lease_ttl).await?;
        // An existing bucket keeps the replicas it was made with.
        let replicas = match nodes.status().await {
            Ok(status) => status.info.config.num_replicas,
            Err(_) => 1,
        };
        let leases = open_bucket(&js, &leases_bucket, self.lease_ttl, replicas).await?;
        tracing::info!(
            node = %self.node_id,
            servers = ?self.servers,
            replicas,
            shards = self.shards,
            lease_ttl = ?self.lease_ttl,
            bucket = %leases_bucket,
            "joined the cluster's leases"
        );
        Ok(Cluster {
            client,
            js,
            nodes,
            leases,
            replicas,
            config: self,
        })
    }

    /// Connects to one of the NATS servers (retrying for up to 30 s).
    pub(crate) async fn connect_client(&self) -> Result<async_nats::Client, Error> {
        let options = async_nats::ConnectOptions::new()
            .name(format!("trawler-{}", self.node_id))
            .retry_on_initial_connect()
            .connection_timeout(Duration::from_secs(5))
            .request_timeout(Some(Duration::from_secs(5)));
        tokio::time::timeout(
            Duration::from_secs(30),
            options.connect(self.servers.as_slice()),
        )
        .await
        .map_err(|_| {
            Error::Nats(format!(
                "no NATS server answered at {:?} within 30 s",
                self.servers
            ))
        })?
        .map_err(|e| Error::nats("connecting", e))
    }

    /// Validates, connects to NATS, and makes sure the buckets and the
    /// stream exist (replicated over three servers when the NATS cluster
    /// can, else on one).
    pub async fn connect(self) -> Result<Cluster, Error> {
        self.validate()?;
        let client = self.connect_client().await?;
        let js = jetstream::new(client.clone());

        let stream = replicated(|want| {
            let js = &js;
            let config = stream::config(&self, want);
            async move {
                js.get_or_create_stream(config).await.map_err(|e| {
                    Error::Nats(format!("creating the stream {}: {e}", stream::STREAM))
                })
            }
        })
        .await?;
        let replicas = stream.cached_info().config.num_replicas;
        let nodes = open_bucket(&js, leases::NODES_BUCKET, self.lease_ttl, replicas).await?;
        let leases = open_bucket(&js, leases::LEASES_BUCKET, self.lease_ttl, replicas).await?;
        tracing::info!(
            node = %self.node_id,
            servers = ?self.servers,
            replicas,
            shards = self.shards,
            lease_ttl = ?self.lease_ttl,
            "joined the cluster"
        );
        Ok(Cluster {
            client,
            js,
            nodes,
            leases,
            replicas,
            config: self,
        })
    }
}

/// Runs `create` with three replicas, or with one when the NATS server is
/// not clustered (or cannot hold three); retries for up to 60 s while a
/// JetStream cluster is still electing its leaders ("temporarily
/// unavailable"). The one place that decides how many copies the cluster's
/// streams and buckets get.
pub(crate) async fn replicated<T, F, Fut>(mut create: F) -> Result<T, Error>
where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = Result<T, Error>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut replicas = 3;
    loop {
        match create(replicas).await {
            Ok(made) => return Ok(made),
            Err(e) => {
                let text = e.to_string();
                if replicas > 1
                    && (text.contains("non-clustered") || text.contains("insufficient resources"))
                {
                    replicas = 1;
                    continue;
                }
                if tokio::time::Instant::now() > deadline {
                    return Err(e);
                }
                tracing::info!(error = %text, "JetStream not ready; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

/// Opens (creating) a bucket with three replicas when the NATS cluster can
/// hold them, else one (see [`replicated`]).
pub(crate) async fn open_replicated(
    js: &jetstream::Context,
    bucket: &str,
    ttl: Duration,
) -> Result<jetstream::kv::Store, Error> {
    replicated(|replicas| open_bucket(js, bucket, ttl, replicas)).await
}

/// Opens a key-value bucket whose entries expire after `ttl`, creating it
/// when missing. The bucket's stream is created here with the key-value
/// conventions (`KV_<bucket>`, `$KV.<bucket>.>`, one message per subject,
/// rollups allowed, direct gets) rather than through the client's
/// `create_key_value`, which first asks for account details in a form
/// Debian's nats-server 2.9 does not answer.
pub(crate) async fn open_bucket(
    js: &jetstream::Context,
    bucket: &str,
    ttl: Duration,
    replicas: usize,
) -> Result<jetstream::kv::Store, Error> {
    if let Ok(kv) = js.get_key_value(bucket).await {
        return Ok(kv);
    }
    js.get_or_create_stream(jetstream::stream::Config {
        name: format!("KV_{bucket}"),
        subjects: vec![format!("$KV.{bucket}.>")],
        max_messages_per_subject: 1,
        max_age: ttl,
        storage: jetstream::stream::StorageType::File,
        num_replicas: replicas,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        discard: jetstream::stream::DiscardPolicy::New,
        ..Default::default()
    })
    .await
    .map_err(|e| Error::nats(&format!("creating the bucket {bucket}"), e))?;
    js.get_key_value(bucket)
        .await
        .map_err(|e| Error::nats(&format!("opening the bucket {bucket}"), e))
}

/// A connection to the cluster's NATS, with its buckets.
#[derive(Clone)]
pub struct Cluster {
    /// The NATS connection.
    pub client: async_nats::Client,
    /// JetStream on it.
    pub js: jetstream::Context,
    /// Node heartbeats.
    pub(crate) nodes: jetstream::kv::Store,
    /// Shard leases.
    pub(crate) leases: jetstream::kv::Store,
    /// Replicas of the stream and buckets.
    pub replicas: usize,
    /// The configuration it was joined with.
    pub config: ClusterConfig,
}

impl Cluster {
    /// The shard an id belongs to.
    pub fn shard_of(&self, id: u64) -> u32 {
        (id % u64::from(self.config.shards)) as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_configs_name_the_key() {
        let ok = ClusterConfig::new(vec!["nats://127.0.0.1:4222".into()], "a-1".into());
        assert!(ok.validate().is_ok());
        for (config, key) in [
            (
                ClusterConfig {
                    servers: vec![],
                    ..ok.clone()
                },
                "servers",
            ),
            (
                ClusterConfig {
                    node_id: "a b".into(),
                    ..ok.clone()
                },
                "node_id",
            ),
            (
                ClusterConfig {
                    shards: 0,
                    ..ok.clone()
                },
                "shards",
            ),
            (
                ClusterConfig {
                    lease_ttl: Duration::from_millis(10),
                    ..ok.clone()
                },
                "lease_ttl",
            ),
        ] {
            let err = config.validate().unwrap_err();
            assert!(
                matches!(err, Error::Config { key: k, .. } if k == key),
                "{err}"
            );
        }
    }
}
