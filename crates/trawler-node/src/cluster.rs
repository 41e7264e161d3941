//! `trawler run --cluster nats://… --store victoriametrics=http://…`: this
//! process as one node of a cluster (see the `trawler-cluster` crate).
//!
//! The node crawls only the shards it leases, publishes what it reads to
//! the stream (an observation counts once JetStream stored it), drains the
//! stream into VictoriaMetrics together with the other nodes, follows the
//! stream to keep live views of *every* account, and serves the same API
//! as the embedded mode: latest values, rank, average and top from the
//! views; series and the average's history from VictoriaMetrics. The
//! movers are the views', as in the embedded mode: their references (the
//! first value of each of the last 25 clock hours per entity) are fed by
//! the followed stream and restored from VictoriaMetrics at start-up.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use serde_json::{json, Value as Json};
use tokio::sync::mpsc;
use trawler_api::{ApiError, Figures, TrackOutcome};
use trawler_cluster::stream::{self, Message};
use trawler_cluster::{Cluster, LeaseState, Publisher, ShardOwner, VmClient, WriterMetrics};
use trawler_common::shutdown::Shutdown;
use trawler_crawl::{CrawlHandle, Event, IdSet, Job};
use trawler_enrich::{EnrichHandle, Verdict};
use trawler_views::{HourlyFirsts, Suspicion, Views};

use crate::backend::{invalid_page, write_metrics, Host, NodeBackend};
use crate::config::{ClusterSettings, NodeConfig};
use crate::error::{Result, Step};
use crate::layout::Layout;
use crate::now_ms;
use crate::storage::victoria::{StreamWriter, VictoriaReader};
use crate::storage::Writer;

/// Everything a cluster node shares between its tasks and the API.
pub struct ClusterNode {
    job: Job,
    /// The durable writer: the stream.
    writer: Arc<StreamWriter>,
    /// Series reads: VictoriaMetrics.
    reader: Arc<VictoriaReader>,
    /// Every id of the job (the cluster's tracked set).
    all_ids: IdSet,
    layout: Layout,
    views: Views,
    crawl: CrawlHandle,
    enrich: OnceLock<EnrichHandle>,
    cluster: Cluster,
    shard_ids: Vec<Vec<u64>>,
    leases: Arc<Mutex<LeaseState>>,
    /// The VictoriaMetrics writer task's counters.
    vm_writer: Arc<WriterMetrics>,
    /// Movers' references by entity, fed by the followed stream.
    references: Mutex<HourlyFirsts>,
    /// Observations the stream acknowledged (stored on every replica).
    acknowledged: AtomicU64,
    /// Observations dropped because the stream did not acknowledge them.
    dropped: AtomicU64,
    /// Stream messages applied to the views.
    followed: AtomicU64,
    /// The latest slot time applied from the stream, where a broken
    /// follow resumes.
    followed_until_ms: std::sync::atomic::AtomicI64,
}

impl ShardOwner for ClusterNode {
    fn gained(&self, shard: u32) {
        let ids = &self.shard_ids[shard as usize];
        self.crawl.track_in_turn(ids.iter().copied());
        if let Some(enrich) = self.enrich.get() {
            enrich.track(ids.clone());
        }
    }

    fn lost(&self, shard: u32) {
        for &id in &self.shard_ids[shard as usize] {
            self.crawl.untrack(id);
            if let Some(enrich) = self.enrich.get() {
                enrich.untrack(id);
            }
        }
    }
}

impl ClusterNode {
    fn heartbeat(&self) -> Bytes {
        let m = self.crawl.metrics();
        let beat = json!({
            "pollsPerSecond": m.polls_per_sec,
            "lagP50Ms": m.lag_p50_ms,
            "lagP99Ms": m.lag_p99_ms,
            "polls": m.polls_ok,
            "errors": m.errors.iter().map(|(_, n)| n).sum::<u64>(),
            "gaps": m.gaps,
            "missedSlots": m.missed_slots,
            "behindSchedule": m.schedule.behind,
            "neededPerSecond": m.schedule.needed_per_sec,
            "achievedPerSecond": m.schedule.achieved_per_sec,
            "tracked": m.gauges.tracked,
            "invalid": m.gauges.invalid,
            "vmSamples": self.vm_writer.samples.load(Ordering::Relaxed),
        });
        Bytes::from(beat.to_string())
    }

    /// Applies one stream message to the views.
    fn apply(&self, message: Message) {
        self.followed.fetch_add(1, Ordering::Relaxed);
        match message {
            Message::Observations(batch) => {
                if let Some(latest) = batch.rows.iter().map(|r| r.1).max() {
                    self.followed_until_ms.fetch_max(latest, Ordering::Relaxed);
                }
                // The batch's columns of the views' metrics, by name.
                let columns: Vec<Option<usize>> = self
                    .views
                    .schema()
                    .metrics()
                    .iter()
                    .map(|m| batch.metrics.iter().position(|b| b == m))
                    .collect();
                let rows: Vec<(u64, i64)> = batch.rows.iter().map(|r| (r.0, r.1)).collect();
                if let Err(e) = crate::node::apply_to_views(
                    &self.views,
                    &self.layout,
                    &self.references,
                    &rows,
                    |n, slot| columns[slot].and_then(|c| batch.rows[n].2.get(c).copied().flatten()),
                ) {
                    tracing::error!(error = %e, "views rejected a batch from the stream");
                }
            }
            Message::Verdicts(v) => {
                let checks: Vec<(u64, Suspicion)> = v
                    .rows
                    .iter()
                    .map(|r| {
                        (
                            r.0,
                            Suspicion {
                                suspicious: r.1,
                                checked_at_ms: r.2,
                            },
                        )
                    })
                    .collect();
                self.views.apply_suspicion(&checks);
            }
        }
    }
}

/// Publishes crawl events in batches through the durable writer; an
/// observation is acknowledged when the stream stored its batch.
async fn publish_events(node: Arc<ClusterNode>, mut events: mpsc::Receiver<Event>) {
    let mut batch = Vec::with_capacity(1_024);
    while events.recv_many(&mut batch, 1_024).await > 0 {
        let observations: Vec<&trawler_crawl::Observation> = batch
            .iter()
            .filter_map(|e| match e {
                Event::Observation(o) => Some(o),
                _ => None,
            })
            .collect();
        let n = observations.len() as u64;
        if n > 0 {
            // The writer waits for the stream's acknowledgement.
            match tokio::task::block_in_place(|| node.writer.append(&observations)) {
                Ok(_) => {
                    node.acknowledged.fetch_add(n, Ordering::Relaxed);
                }
                Err(e) => {
                    node.dropped.fetch_add(n, Ordering::Relaxed);
                    tracing::error!(error = %e, observations = n, "the stream did not take a batch; its observations are lost");
                }
            }
        }
        batch.clear();
    }
}

/// Publishes enrichment answers through the durable writer.
async fn publish_verdicts(node: Arc<ClusterNode>, mut verdicts: mpsc::Receiver<Verdict>) {
    let mut batch = Vec::with_capacity(1_024);
    while verdicts.recv_many(&mut batch, 1_024).await > 0 {
        if let Err(e) = tokio::task::block_in_place(|| node.writer.append_flags(&batch)) {
            tracing::error!(error = %e, "the stream did not take a batch of verdicts");
        }
        batch.clear();
    }
}

/// Keeps the views following the stream; reconnects from where it was.
async fn follow_stream(node: Arc<ClusterNode>, mut stop: Shutdown) {
    let replay = node.job.interval() * 2 + Duration::from_secs(30);
    // The stream's start time is the server's clock: undo the job clock's
    // offset (`--clock-offset`), which slot times carry.
    let offset = trawler_crawl::clock::offset_ms();
    let mut since = now_ms() - offset - replay.as_millis() as i64;
    loop {
        let js = node.cluster.js.clone();
        let name = node.job.name().to_owned();
        let applier = node.clone();
        let followed = stream::follow(&js, &name, since, move |m| applier.apply(m));
        tokio::select! {
            result = followed => {
                if let Err(e) = result {
                    tracing::warn!(error = %e, "following the stream failed; resuming");
                }
            }
            _ = stop.wait() => return,
        }
        // Resume an interval before the last slot applied (views ignore
        // older updates); from the same point if nothing was applied yet.
        let until = node.followed_until_ms.load(Ordering::Relaxed);
        if until > 0 {
            since = until - offset - node.job.interval().as_millis() as i64;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Runs this process as a cluster node until `shutdown` completes.
pub(crate) async fn run(
    node_config: &NodeConfig,
    job: Job,
    settings: ClusterSettings,
    api_runtime: tokio::runtime::Handle,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<()> {
    let ClusterSettings { config, vm_url } = settings;
    let vm = VmClient::new(&vm_url).step("the VictoriaMetrics client")?;
    let cluster = config.connect().await.step("joining the cluster")?;
    let layout = Layout::of(&job)?;
    let views = layout.views.build().step("the live views")?;
    let all_ids = job.ids().clone();
    let mut shard_ids = vec![Vec::new(); cluster.config.shards as usize];
    for id in all_ids.iter() {
        shard_ids[cluster.shard_of(id) as usize].push(id);
    }

    let (stop_tx, stop_rx) = trawler_common::shutdown::channel();
    let (events_tx, events_rx) = mpsc::channel(65_536);
    // No ids at start: the node polls the shards it leases.
    let crawl = trawler_crawl::start_http(job.with_ids(IdSet::default()), events_tx)
        .step("the HTTP client")?;
    let keys = job.keys().clone();
    let naming = trawler_cluster::vm::Naming {
        job: job.name().to_owned(),
        key_label: job.key_name().to_owned(),
        key: Arc::new(move |id, out| keys.write(id, out)),
    };
    let runtime = tokio::runtime::Handle::current();
    let writer = Arc::new(StreamWriter::new(
        Publisher::new(cluster.js.clone(), &cluster.config.node_id),
        &cluster.config.node_id,
        job.name(),
        &layout,
        runtime.clone(),
    ));
    let reader = Arc::new(VictoriaReader::new(
        vm.clone(),
        naming,
        job.keys().clone(),
        &layout,
        runtime,
    ));
    let node = Arc::new(ClusterNode {
        writer,
        reader,
        job: job.clone(),
        all_ids,
        layout,
        views,
        crawl,
        enrich: OnceLock::new(),
        cluster: cluster.clone(),
        shard_ids,
        leases: Arc::new(Mutex::new(LeaseState::default())),
        vm_writer: Arc::new(WriterMetrics::default()),
        references: Mutex::new(HourlyFirsts::default()),
        acknowledged: AtomicU64::new(0),
        dropped: AtomicU64::new(0),
        followed: AtomicU64::new(0),
        followed_until_ms: std::sync::atomic::AtomicI64::new(0),
    });

    let publish_task = tokio::spawn(publish_events(node.clone(), events_rx));
    let follow_task = tokio::spawn(follow_stream(node.clone(), stop_rx.clone()));
    {
        let node = node.clone();
        tokio::task::spawn_blocking(move || {
            let started = std::time::Instant::now();
            let restored =
                crate::node::restore_references(&*node.reader, &node.references, now_ms(), |id| {
                    node.all_ids.contains(id)
                });
            tracing::info!(
                entities = restored,
                ms = started.elapsed().as_millis() as u64,
                "movers' references restored from VictoriaMetrics"
            );
        });
    }
    let (writer_stop_tx, writer_stop_rx) = trawler_common::shutdown::channel();
    let writer_task = {
        let (cluster, vm, naming, metrics, stop) = (
            cluster.clone(),
            vm.clone(),
            node.reader.naming().clone(),
            node.vm_writer.clone(),
            writer_stop_rx,
        );
        tokio::spawn(async move {
            if let Err(e) =
                trawler_cluster::vm::run_writer(cluster, vm, naming, metrics, stop).await
            {
                tracing::error!(error = %e, "the VictoriaMetrics writer stopped");
            }
        })
    };

    let mut verdicts_task = None;
    let enrichment = match node_config.enrichment {
        true => crate::node::job_enrichment(&job, node_config.enrichment_period)?,
        false => None,
    };
    if let Some(enrichment) = enrichment {
        let (verdicts_tx, verdicts_rx) = mpsc::channel(4_096);
        let (handle, _task) = enrichment.spawn(
            std::iter::empty(),
            Arc::new(ClusterInputs { node: node.clone() }),
            verdicts_tx,
            stop_rx.clone(),
        );
        let _ = node.enrich.set(handle);
        verdicts_task = Some(tokio::spawn(publish_verdicts(node.clone(), verdicts_rx)));
    }

    let leases_task = {
        let beat = node.clone();
        tokio::spawn(trawler_cluster::run_leases(
            cluster.clone(),
            node.clone() as Arc<dyn ShardOwner>,
            node.leases.clone(),
            move || beat.heartbeat(),
            stop_rx.clone(),
        ))
    };

    // The API, with the Prometheus API over the series in VictoriaMetrics
    // (read through the same Reader; remote write goes to VictoriaMetrics
    // itself in this mode).
    let backend = Arc::new(NodeBackend::new(node.clone(), &job, node.reader.clone()));
    let prom = crate::prom::NodeProm::of_poll_job(backend.clone(), None);
    let api = trawler_api::ApiConfig {
        listen: node_config.listen,
        token: node_config.api_token.clone(),
        prometheus: node_config.prometheus,
        ..Default::default()
    }
    .build(backend)
    .step("the API")?
    .with_prometheus(Arc::new(prom));
    let listener = crate::bind_api(node_config.listen)?;
    let api_addr = listener.local_addr().step("binding the API")?;
    tracing::info!(addr = %api_addr, job = job.name(), node = %cluster.config.node_id, vm = %vm.url(), "API listening (cluster mode)");
    println!("listening on http://{api_addr}");
    let api_stop = {
        let mut rx = stop_rx.clone();
        async move { rx.wait().await }
    };
    let api_task = api
        .spawn_on(&api_runtime, listener, api_stop)
        .step("starting the API")?;

    let mut tick = tokio::time::interval(Duration::from_secs(10));
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = tick.tick() => {
                let m = node.crawl.metrics();
                let leases = node.leases.lock().unwrap_or_else(|e| e.into_inner()).clone();
                tracing::info!(
                    node = %cluster.config.node_id,
                    nodes = leases.nodes.len(),
                    shards = leases.held,
                    tracked = m.gauges.tracked,
                    polls_per_s = m.polls_per_sec.round(),
                    lag_p99_ms = m.lag_p99_ms.unwrap_or(0.0),
                    gaps = m.gaps,
                    published = node.writer.publisher().published.load(Ordering::Relaxed),
                    imported = node.vm_writer.samples.load(Ordering::Relaxed),
                    backlog = node.vm_writer.backlog.load(Ordering::Relaxed),
                    "status"
                );
            }
        }
    }

    tracing::info!("shutting down: giving the leases back");
    stop_tx.trigger();
    let _ = leases_task.await;
    let report = node.crawl.shutdown(node_config.grace).await;
    // The crawl's sender is gone once it stopped: the publisher drains.
    let _ = tokio::time::timeout(Duration::from_secs(30), publish_task).await;
    if let Some(task) = verdicts_task {
        task.abort();
    }
    // The writer finishes what was published, within the grace period.
    writer_stop_tx.trigger();
    let _ = tokio::time::timeout(node_config.grace, writer_task).await;
    follow_task.abort();
    let _ = tokio::time::timeout(node_config.grace, api_task).await;
    tracing::info!(
        polls = report.metrics.polls_ok,
        acknowledged = node.acknowledged.load(Ordering::Relaxed),
        dropped = node.dropped.load(Ordering::Relaxed),
        "stopped; everything acknowledged is in the stream"
    );
    // Machine-readable, for scripts and tests.
    println!(
        "acknowledged observations {}",
        node.acknowledged.load(Ordering::Relaxed)
    );
    Ok(())
}

/// The enrichment's bodies from the views (which follow every node).
struct ClusterInputs {
    node: Arc<ClusterNode>,
}

impl trawler_enrich::Inputs for ClusterInputs {
    fn body(&self, id: u64) -> Option<Vec<u8>> {
        super::node::enrichment_body(&self.node.job, &self.node.views, id)
    }
}

impl Host for ClusterNode {
    fn views(&self) -> &Views {
        &self.views
    }

    fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The cluster tracks every id of the job file, whichever node polls it.
    fn is_tracked(&self, id: u64) -> bool {
        self.all_ids.contains(id)
    }

    fn tracked_ids(&self) -> IdSet {
        self.all_ids.clone()
    }

    fn track(&self, _ids: &[u64]) -> Result<TrackOutcome, ApiError> {
        Err(ApiError::bad_request(
            "cluster_mode",
            "in cluster mode the tracked set is the job file's ids; change it there",
        ))
    }

    fn untrack(&self, _id: u64) -> Result<bool, ApiError> {
        Err(ApiError::bad_request(
            "cluster_mode",
            "in cluster mode the tracked set is the job file's ids; change it there",
        ))
    }

    fn invalid(&self, after: Option<u64>, limit: usize) -> Vec<u64> {
        invalid_page(&self.crawl, after, limit)
    }

    fn enrich(&self) -> Option<&EnrichHandle> {
        self.enrich.get()
    }

    /// The cluster's figures: every node's heartbeat summed (or the worst
    /// of them), so any node answers for the whole cluster.
    fn stats(&self, out: &mut Figures) {
        let node = self;
        let leases = node
            .leases
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let beats: Vec<Json> = leases
            .nodes
            .values()
            .filter_map(|b| serde_json::from_slice(b).ok())
            .collect();
        let sum = |key: &str| beats.iter().filter_map(|b| b[key].as_f64()).sum::<f64>();
        let max = |key: &str| {
            beats
                .iter()
                .filter_map(|b| b[key].as_f64())
                .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v))))
        };
        out.tracked_accounts = node.all_ids.len();
        out.invalid_accounts = sum("invalid") as u64;
        out.polls_per_second = sum("pollsPerSecond");
        out.lag_p50_ms = max("lagP50Ms");
        out.lag_p99_ms = max("lagP99Ms");
        out.polls = sum("polls") as u64;
        out.errors = sum("errors") as u64;
        out.gaps = sum("gaps") as u64;
        out.missed_slots = sum("missedSlots") as u64;
        // The cluster's schedule: every node's shards together. Behind when
        // any node is; the effective interval is what the whole set gets.
        let interval_ms = node.crawl.job().interval().as_millis() as f64;
        let needed = sum("neededPerSecond");
        let achieved = sum("achievedPerSecond");
        let behind = beats.iter().any(|b| b["behindSchedule"] == true);
        out.behind_schedule = behind;
        out.interval_ms = interval_ms as u64;
        out.needed_per_second = needed;
        out.achieved_per_second = achieved;
        out.effective_interval_ms = if behind && achieved > 0.0 {
            interval_ms * needed / achieved
        } else {
            interval_ms
        };
        out.samples_stored = sum("vmSamples") as u64;
        // VictoriaMetrics' disk is not this node's to measure.
        out.bytes_on_disk = None;
        out.bytes_per_sample = None;
        out.nodes = Some(leases.nodes.len() as u64);
        out.shards_held = Some(leases.held as u64);
    }

    fn render_metrics(&self, out: &mut String) {
        let node = self;
        let job = node.job.name();
        out.push_str(&node.crawl.metrics().to_prometheus(job));
        let leases = node
            .leases
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        write_metrics(
            out,
            job,
            &[
                (
                    "trawler_cluster_shards_held",
                    "Shards this node leases.",
                    "gauge",
                    leases.held as u64,
                ),
                (
                    "trawler_cluster_nodes",
                    "Live nodes.",
                    "gauge",
                    leases.nodes.len() as u64,
                ),
                (
                    "trawler_cluster_leases_gained_total",
                    "Leases gained.",
                    "counter",
                    leases.gained,
                ),
                (
                    "trawler_cluster_leases_released_total",
                    "Leases given up for rebalancing.",
                    "counter",
                    leases.released,
                ),
                (
                    "trawler_cluster_leases_lost_total",
                    "Leases lost (not renewed in time).",
                    "counter",
                    leases.lost,
                ),
                (
                    "trawler_cluster_published_batches_total",
                    "Batches the stream acknowledged.",
                    "counter",
                    node.writer.publisher().published.load(Ordering::Relaxed),
                ),
                (
                    "trawler_cluster_publish_failures_total",
                    "Publish attempts that failed and were retried.",
                    "counter",
                    node.writer.publisher().failures.load(Ordering::Relaxed),
                ),
                (
                    "trawler_cluster_acknowledged_observations_total",
                    "Observations the stream acknowledged.",
                    "counter",
                    node.acknowledged.load(Ordering::Relaxed),
                ),
                (
                    "trawler_cluster_dropped_observations_total",
                    "Observations the stream never acknowledged.",
                    "counter",
                    node.dropped.load(Ordering::Relaxed),
                ),
                (
                    "trawler_cluster_followed_messages_total",
                    "Stream messages applied to the views.",
                    "counter",
                    node.followed.load(Ordering::Relaxed),
                ),
                (
                    "trawler_vm_imported_samples_total",
                    "Samples this node imported into VictoriaMetrics.",
                    "counter",
                    node.vm_writer.samples.load(Ordering::Relaxed),
                ),
                (
                    "trawler_vm_import_failures_total",
                    "Imports that failed (their batches come back).",
                    "counter",
                    node.vm_writer.failures.load(Ordering::Relaxed),
                ),
                (
                    "trawler_vm_backlog_messages",
                    "Stream messages not yet imported.",
                    "gauge",
                    node.vm_writer.backlog.load(Ordering::Relaxed),
                ),
            ],
        );
    }
}
