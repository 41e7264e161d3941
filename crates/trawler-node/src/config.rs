//! One resolved configuration of a node, built from the command line, the
//! job file and the environment in one place ([`NodeConfig::resolve`]), so
//! that nothing further down reads a flag or a file key again.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use trawler_cluster::ClusterConfig;
use trawler_crawl::{JobConfig, Overrides};

use crate::error::{config_error, Result};

/// The default job: every Mockstagram influencer, every minute.
pub const DEFAULT_JOB: &str = include_str!("../../../jobs/mockstagram.toml");

/// Where [`DEFAULT_JOB`] comes from, in messages.
pub const DEFAULT_JOB_SOURCE: &str = "jobs/mockstagram.toml (built in)";

/// What the command line (or another front end) asks for, before it is
/// resolved against the job file. Every field is optional where the job
/// file or a default can say it instead.
#[derive(Debug, Clone, Default)]
pub struct Flags {
    /// The job file; `None`: [`DEFAULT_JOB`].
    pub config: Option<PathBuf>,
    /// `--target`, `--ids`, `--interval`, `--overload`.
    pub overrides: Overrides,
    /// Cluster mode's flags.
    pub cluster: ClusterFlags,
}

/// Cluster mode's flags; each replaces the job file's `[cluster]` key.
#[derive(Debug, Clone, Default)]
pub struct ClusterFlags {
    /// NATS servers, comma-separated.
    pub servers: Option<String>,
    /// `victoriametrics=http://HOST:PORT`.
    pub store: Option<String>,
    /// This node's name.
    pub node_id: Option<String>,
    /// Shards the ids are split into.
    pub shards: Option<u32>,
    /// How long a dead node's leases last.
    pub lease_ttl: Option<Duration>,
}

/// How to join a cluster.
#[derive(Debug, Clone)]
pub struct ClusterSettings {
    /// NATS servers, node id, shards, lease TTL.
    pub config: ClusterConfig,
    /// The VictoriaMetrics base URL.
    pub vm_url: String,
}

/// The built-in simulator's settings (used when no target is given).
#[derive(Debug, Clone)]
pub struct SimSettings {
    /// How values move.
    pub dynamics: trawler_sim::Dynamics,
    /// Seed of every generated value.
    pub seed: u64,
    /// Multiplier of the `is_suspicious` delay.
    pub suspicious_delay_scale: f64,
}

impl Default for SimSettings {
    fn default() -> Self {
        Self {
            dynamics: trawler_sim::Dynamics::Mockstagram,
            seed: 0,
            suspicious_delay_scale: 1.0,
        }
    }
}

/// Everything a node runs with.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// The job file as parsed (built once the tracked set and the target
    /// are known).
    pub job: JobConfig,
    /// `--target`, `--ids`, `--interval`, `--overload` over the job file.
    pub overrides: Overrides,
    /// Whether the job file is the built-in one.
    pub builtin_job: bool,
    /// Data folder (store, tracked set) of the embedded mode.
    pub data: PathBuf,
    /// API address.
    pub listen: SocketAddr,
    /// Bearer token of state-changing endpoints.
    pub api_token: Option<String>,
    /// Whether the job's enrichment runs (`--no-enrichment` turns it off).
    pub enrichment: bool,
    /// Replaces the period of the job file's enrichment.
    pub enrichment_period: Option<Duration>,
    /// The built-in simulator, when there is no target.
    pub simulator: SimSettings,
    /// How long requests in flight may finish at shutdown.
    pub grace: Duration,
    /// How long stored samples are kept.
    pub retention: Duration,
    /// How often the WAL is fsynced at least (zero: every batch).
    pub fsync_interval: Duration,
    /// Cluster mode; `None`: embedded.
    pub cluster: Option<ClusterSettings>,
    /// Limits of the Prometheus API (queries, remote write).
    pub prometheus: trawler_api::prom::PromSettings,
}

impl NodeConfig {
    /// Reads the job file of `flags` (or the built-in one) and resolves the
    /// cluster settings; every other field starts at its default, for the
    /// caller to set from its own flags.
    pub fn resolve(flags: &Flags) -> Result<Self> {
        let (job, builtin_job) = match &flags.config {
            Some(path) => (JobConfig::load(path)?, false),
            None => (JobConfig::from_toml(DEFAULT_JOB, DEFAULT_JOB_SOURCE)?, true),
        };
        let cluster = ClusterSettings::resolve(&flags.cluster, &job)?;
        if cluster.is_some() && flags.overrides.target.is_none() && builtin_job {
            return Err(config_error!(
                "cluster mode needs --target http://HOST:PORT (or a job file whose url names the target): every node must poll the same API"
            ));
        }
        Ok(Self {
            job,
            overrides: flags.overrides.clone(),
            builtin_job,
            data: PathBuf::from("trawler-data"),
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            api_token: None,
            enrichment: true,
            enrichment_period: None,
            simulator: SimSettings::default(),
            grace: Duration::from_secs(5),
            retention: Duration::from_secs(30 * 86_400),
            fsync_interval: Duration::from_secs(1),
            cluster,
            prometheus: trawler_api::prom::PromSettings::default(),
        })
    }
}

impl ClusterSettings {
    /// The settings `flags` and the job file's `[cluster]` ask for (the
    /// flags win), or `None` for the embedded mode. Errors name the flag,
    /// or the file and key.
    pub fn resolve(flags: &ClusterFlags, config: &JobConfig) -> Result<Option<Self>> {
        let file = config.cluster.as_ref();
        let in_file = |key: &str| format!("{}: [cluster] {key}", config.source);
        let servers: Vec<String> = match (&flags.servers, file) {
            (Some(flag), _) => flag
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect(),
            (None, Some(f)) => f.servers.clone(),
            (None, None) => {
                if flags.store.is_some() {
                    return Err(config_error!(
                        "--store needs --cluster: the embedded mode stores into --data"
                    ));
                }
                return Ok(None);
            }
        };
        for s in &servers {
            if !s.starts_with("nats://") {
                return Err(config_error!(
                    "--cluster: {s:?} is not a nats://host:port URL"
                ));
            }
        }
        let store = match (&flags.store, file) {
            (Some(s), _) => s.clone(),
            (None, Some(f)) => f.store.clone(),
            (None, None) => return Err(config_error!(
                "--cluster needs --store victoriametrics=http://HOST:PORT: in cluster mode series live in VictoriaMetrics"
            )),
        };
        let Some(vm_url) = store.strip_prefix("victoriametrics=") else {
            return Err(config_error!(
                "--store {store:?}: expected victoriametrics=http://HOST:PORT"
            ));
        };
        let node_id = flags
            .node_id
            .clone()
            .or_else(|| file.and_then(|f| f.node_id.clone()))
            .unwrap_or_else(default_node_id);
        let mut cluster = ClusterConfig::new(servers, node_id);
        if let Some(shards) = flags.shards.or_else(|| file.and_then(|f| f.shards)) {
            cluster.shards = shards;
        }
        match (flags.lease_ttl, file.and_then(|f| f.lease_ttl.as_deref())) {
            (Some(ttl), _) => cluster.lease_ttl = ttl,
            (None, Some(text)) => {
                cluster.lease_ttl = trawler_crawl::job::parse_duration(text).map_err(|e| {
                    config_error!("{}: invalid duration {text:?}: {e}", in_file("lease_ttl"))
                })?
            }
            (None, None) => {}
        }
        Ok(Some(Self {
            config: cluster,
            vm_url: vm_url.to_owned(),
        }))
    }
}

impl ClusterFlags {
    /// A top-N stream job's cluster settings from the flags alone (a
    /// stream job's file has no `[cluster]`), or `None` without
    /// `--cluster`. Errors name the flag.
    pub fn for_stream(&self) -> Result<Option<ClusterConfig>> {
        let Some(servers) = &self.servers else {
            if self.store.is_some() || self.node_id.is_some() || self.shards.is_some() {
                return Err(config_error!(
                    "--store, --node-id and --shards need --cluster NATS_URLS"
                ));
            }
            return Ok(None);
        };
        if self.store.is_some() {
            return Err(config_error!(
                "--store: a top-N job in cluster mode keeps its lists in memory, rebuilt from its JetStream stream; drop --store"
            ));
        }
        let servers: Vec<String> = servers
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        if let Some(s) = servers.iter().find(|s| !s.starts_with("nats://")) {
            return Err(config_error!(
                "--cluster: {s:?} is not a nats://host:port URL"
            ));
        }
        let mut cluster = ClusterConfig::new(
            servers,
            self.node_id.clone().unwrap_or_else(default_node_id),
        );
        if let Some(shards) = self.shards {
            cluster.shards = shards;
        }
        if let Some(ttl) = self.lease_ttl {
            cluster.lease_ttl = ttl;
        }
        Ok(Some(cluster))
    }
}

fn default_node_id() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "node".into());
    let host: String = host
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    format!("{host}-{}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_mode_needs_no_cluster_flag_and_store_needs_cluster() {
        let c = NodeConfig::resolve(&Flags::default()).unwrap();
        assert!(c.builtin_job && c.cluster.is_none());
        assert_eq!(c.job.job.name, "influencers");
        let flags = Flags {
            cluster: ClusterFlags {
                store: Some("victoriametrics=http://127.0.0.1:8428".into()),
                ..ClusterFlags::default()
            },
            ..Flags::default()
        };
        let e = NodeConfig::resolve(&flags).unwrap_err().to_string();
        assert!(e.starts_with("--store needs --cluster"), "{e}");
    }

    #[test]
    fn a_stream_jobs_cluster_flags_are_checked() {
        assert!(ClusterFlags::default().for_stream().unwrap().is_none());
        let flags = ClusterFlags {
            servers: Some("nats://a:4222, nats://b:4222".into()),
            node_id: Some("n1".into()),
            shards: Some(8),
            ..ClusterFlags::default()
        };
        let c = flags.for_stream().unwrap().unwrap();
        assert_eq!(
            (c.servers.len(), c.node_id.as_str(), c.shards),
            (2, "n1", 8)
        );
        let e = ClusterFlags {
            store: Some("victoriametrics=http://x".into()),
            ..flags.clone()
        }
        .for_stream()
        .unwrap_err()
        .to_string();
        assert!(e.contains("--store"), "{e}");
        let e = ClusterFlags {
            shards: Some(8),
            ..ClusterFlags::default()
        }
        .for_stream()
        .unwrap_err()
        .to_string();
        assert!(e.contains("need --cluster"), "{e}");
    }

    #[test]
    fn cluster_flags_are_checked_and_named() {
        let mut flags = Flags {
            cluster: ClusterFlags {
                servers: Some("nats://127.0.0.1:4222".into()),
                store: Some("victoriametrics=http://127.0.0.1:8428".into()),
                node_id: Some("n1".into()),
                shards: Some(16),
                lease_ttl: Some(Duration::from_secs(3)),
            },
            ..Flags::default()
        };
        // The built-in job names no real target.
        let e = NodeConfig::resolve(&flags).unwrap_err().to_string();
        assert!(e.starts_with("cluster mode needs --target"), "{e}");
        flags.overrides.target = Some("http://127.0.0.1:3000".into());
        let c = NodeConfig::resolve(&flags).unwrap();
        let s = c.cluster.unwrap();
        assert_eq!(s.vm_url, "http://127.0.0.1:8428");
        assert_eq!((s.config.node_id.as_str(), s.config.shards), ("n1", 16));
        flags.cluster.store = Some("prometheus=http://x".into());
        let e = NodeConfig::resolve(&flags).unwrap_err().to_string();
        assert!(e.starts_with("--store \"prometheus=http://x\""), "{e}");
        flags.cluster.servers = Some("tcp://x".into());
        let e = NodeConfig::resolve(&flags).unwrap_err().to_string();
        assert!(e.contains("is not a nats://host:port URL"), "{e}");
    }
}
