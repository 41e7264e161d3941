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
use serde_json::{json, Map, Value as Json};
use tokio::sync::{mpsc, watch};
use trawler_api::{ApiError, Backend, Points, SeriesQuery, TopBy, TrackOutcome};
use trawler_cluster::stream::{self, Message};
use trawler_cluster::{
    Batch, Cluster, LeaseState, Publisher, Row, ShardOwner, VerdictRow, Verdicts, VmClient,
    WriterMetrics,
};
use trawler_crawl::{CrawlHandle, Event, IdSet, Job};
use trawler_enrich::{EnrichHandle, Verdict};
use trawler_views::{HourlyFirsts, Reference, Suspicion, Update, Views, HOURS};

use crate::backend::{
    entity_json, flag_stats, invalid_page, metric_points, top_json, write_metrics, Names,
};
use crate::config::{ClusterSettings, NodeConfig};
use crate::error::{Result, Step};
use crate::layout::Layout;
use crate::now_ms;

const HOUR_MS: i64 = 3_600_000;

/// How long a batch is retried before its observations count as dropped.
const PUBLISH_GIVE_UP: Duration = Duration::from_secs(60);

/// Everything a cluster node shares between its tasks and the API.
pub struct ClusterNode {
    job: Job,
    /// How the API names entities.
    names: Names,
    /// How series are labelled in VictoriaMetrics.
    naming: trawler_cluster::vm::Naming,
    /// Every id of the job (the cluster's tracked set).
    all_ids: IdSet,
    layout: Layout,
    views: Views,
    crawl: CrawlHandle,
    enrich: OnceLock<EnrichHandle>,
    cluster: Cluster,
    vm: VmClient,
    shard_ids: Vec<Vec<u64>>,
    leases: Arc<Mutex<LeaseState>>,
    publisher: Publisher,
    writer: Arc<WriterMetrics>,
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
            "vmSamples": self.writer.samples.load(Ordering::Relaxed),
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
                let schema = self.views.schema();
                let columns: Vec<Option<usize>> = schema
                    .metrics()
                    .iter()
                    .map(|m| batch.metrics.iter().position(|b| b == m))
                    .collect();
                let rank_name = &schema.metrics()[schema.rank_by()];
                let rank = batch.metrics.iter().position(|b| b == rank_name);
                let references: Vec<Reference> = {
                    let mut firsts = self.references.lock().unwrap_or_else(|e| e.into_inner());
                    batch
                        .rows
                        .iter()
                        .map(|row| {
                            let value = rank
                                .and_then(|c| row.2.get(c).copied().flatten())
                                .filter(|v| v.is_finite())
                                .map(|v| v as i64);
                            firsts.observe(row.0, row.1, value)
                        })
                        .collect()
                };
                let width = columns.len();
                let mut values = Vec::with_capacity(batch.rows.len() * width);
                for row in &batch.rows {
                    values.extend(columns.iter().enumerate().map(|(slot, c)| {
                        c.and_then(|c| row.2.get(c).copied().flatten())
                            .filter(|v| v.is_finite())
                            .and_then(|v| self.layout.view_value(slot, v))
                    }));
                }
                let updates: Vec<Update> = batch
                    .rows
                    .iter()
                    .enumerate()
                    .map(|(n, row)| Update {
                        id: row.0,
                        ts_ms: row.1,
                        values: &values[n * width..(n + 1) * width],
                        reference: references[n],
                    })
                    .collect();
                if let Err(e) = self.views.apply(&updates) {
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

/// Publishes crawl events in batches; an observation is acknowledged when
/// the stream stored its batch.
async fn publish_events(node: Arc<ClusterNode>, mut events: mpsc::Receiver<Event>) {
    let subject = stream::obs_subject(node.job.name());
    let stored: Vec<usize> = node.layout.stored.iter().map(|s| s.index).collect();
    let names: Vec<String> = node.layout.stored.iter().map(|s| s.name.clone()).collect();
    let mut batch = Vec::with_capacity(1_024);
    while events.recv_many(&mut batch, 1_024).await > 0 {
        let rows: Vec<Row> = batch
            .iter()
            .filter_map(|e| match e {
                Event::Observation(o) => Some(Row(
                    o.id,
                    o.slot_ms,
                    stored
                        .iter()
                        .map(|&i| Some(o.values[i]).filter(|v| !v.is_nan()))
                        .collect(),
                )),
                _ => None,
            })
            .collect();
        batch.clear();
        if rows.is_empty() {
            continue;
        }
        let n = rows.len();
        let payload = Batch {
            node: node.cluster.config.node_id.clone(),
            metrics: names.clone(),
            rows,
        };
        match node
            .publisher
            .publish_json(subject.clone(), &payload, PUBLISH_GIVE_UP)
            .await
        {
            Ok(()) => {
                node.acknowledged.fetch_add(n as u64, Ordering::Relaxed);
            }
            Err(e) => {
                node.dropped.fetch_add(n as u64, Ordering::Relaxed);
                tracing::error!(error = %e, observations = n, "the stream did not take a batch; its observations are lost");
            }
        }
    }
}

/// Publishes enrichment answers.
async fn publish_verdicts(node: Arc<ClusterNode>, mut verdicts: mpsc::Receiver<Verdict>) {
    let subject = stream::verdict_subject(node.job.name());
    let mut batch = Vec::with_capacity(1_024);
    while verdicts.recv_many(&mut batch, 1_024).await > 0 {
        let payload = Verdicts {
            // Only a job with an enrichment sends answers.
            metric: node.layout.flag.clone().unwrap_or_default(),
            rows: batch
                .iter()
                .map(|v| VerdictRow(v.id, v.value, v.checked_at_ms))
                .collect(),
        };
        batch.clear();
        if let Err(e) = node
            .publisher
            .publish_json(subject.clone(), &payload, PUBLISH_GIVE_UP)
            .await
        {
            tracing::error!(error = %e, "the stream did not take a batch of verdicts");
        }
    }
}

/// Keeps the views following the stream; reconnects from where it was.
async fn follow_stream(node: Arc<ClusterNode>, mut stop: watch::Receiver<bool>) {
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
            _ = stop.wait_for(|s| *s) => return,
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

/// Restores the movers' references from VictoriaMetrics once at start-up:
/// the first value of the ranked metric in each of the last [`HOURS`]
/// clock hours (MetricsQL's `first_over_time` over the hour), the same
/// references the embedded mode reads from its store's hourly rollups. The
/// stream fills the hours it sees meanwhile; VictoriaMetrics' first value of
/// an hour (older) replaces the stream's. Returns the entities restored.
async fn restore_references(node: &ClusterNode) -> usize {
    let rank = node.layout.views.rank_by.clone();
    let key_label = node.job.key_name().to_owned();
    let job = node.job.name().to_owned();
    let hour = now_ms().div_euclid(HOUR_MS) * HOUR_MS;
    let mut restored = std::collections::HashSet::new();
    for back in (0..HOURS as i64).rev() {
        let start = hour - back * HOUR_MS;
        // The window (t − 1h, t] of an instant query at the hour's last
        // millisecond is the clock hour.
        let query = format!("first_over_time({rank}{{job=\"{job}\"}}[1h])");
        match node.vm.query_at(&query, start + HOUR_MS - 1).await {
            Ok(series) => {
                let mut firsts = node.references.lock().unwrap_or_else(|e| e.into_inner());
                for (labels, v) in series {
                    let Some(id) = labels
                        .get(&key_label)
                        .and_then(|p| p.as_str())
                        .and_then(|p| node.job.keys().parse(p).ok().flatten())
                    else {
                        continue;
                    };
                    if v.is_finite() {
                        firsts.restore(id, start, v as i64);
                        restored.insert(id);
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, hour_ms = start, "movers' references of an hour not restored");
            }
        }
    }
    restored.len()
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

    let (stop_tx, stop_rx) = watch::channel(false);
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
    let node = Arc::new(ClusterNode {
        publisher: Publisher::new(cluster.js.clone(), &cluster.config.node_id),
        names: Names::new(&job, &layout),
        naming,
        job: job.clone(),
        all_ids,
        layout,
        views,
        crawl,
        enrich: OnceLock::new(),
        cluster: cluster.clone(),
        vm: vm.clone(),
        shard_ids,
        leases: Arc::new(Mutex::new(LeaseState::default())),
        writer: Arc::new(WriterMetrics::default()),
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
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            let restored = restore_references(&node).await;
            tracing::info!(
                entities = restored,
                ms = started.elapsed().as_millis() as u64,
                "movers' references restored from VictoriaMetrics"
            );
        });
    }
    let (writer_stop_tx, writer_stop_rx) = watch::channel(false);
    let writer_task = {
        let (cluster, vm, naming, metrics, stop) = (
            cluster.clone(),
            vm.clone(),
            node.naming.clone(),
            node.writer.clone(),
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

    // The API.
    let api = trawler_api::ApiConfig {
        listen: node_config.listen,
        token: node_config.api_token.clone(),
        ..Default::default()
    }
    .build(Arc::new(ClusterBackend { node: node.clone() }))
    .step("the API")?;
    let listener = crate::bind_api(node_config.listen)?;
    let api_addr = listener.local_addr().step("binding the API")?;
    tracing::info!(addr = %api_addr, job = job.name(), node = %cluster.config.node_id, vm = %vm.url(), "API listening (cluster mode)");
    println!("listening on http://{api_addr}");
    let api_stop = {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
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
                    published = node.publisher.published.load(Ordering::Relaxed),
                    imported = node.writer.samples.load(Ordering::Relaxed),
                    backlog = node.writer.backlog.load(Ordering::Relaxed),
                    "status"
                );
            }
        }
    }

    tracing::info!("shutting down: giving the leases back");
    let _ = stop_tx.send(true);
    let _ = leases_task.await;
    let report = node.crawl.shutdown(node_config.grace).await;
    // The crawl's sender is gone once it stopped: the publisher drains.
    let _ = tokio::time::timeout(Duration::from_secs(30), publish_task).await;
    if let Some(task) = verdicts_task {
        task.abort();
    }
    // The writer finishes what was published, within the grace period.
    let _ = writer_stop_tx.send(true);
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

/// [`Backend`] of a cluster node.
pub struct ClusterBackend {
    node: Arc<ClusterNode>,
}

fn vm_error(e: trawler_cluster::Error) -> ApiError {
    ApiError::Unavailable(format!("series store: {e}"))
}

/// Averages raw points into buckets of `step` (aligned to the epoch), so a
/// derived metric's operands share bucket starts.
fn downsample(points: Points, step: i64) -> Points {
    let mut out: Points = Vec::new();
    let mut acc: Option<(i64, f64, u32)> = None;
    for (t, v) in points {
        let start = t - t.rem_euclid(step);
        match &mut acc {
            Some((s, sum, n)) if *s == start => {
                *sum += v;
                *n += 1;
            }
            _ => {
                if let Some((s, sum, n)) = acc.take() {
                    out.push((s, sum / f64::from(n)));
                }
                acc = Some((start, v, 1));
            }
        }
    }
    if let Some((s, sum, n)) = acc {
        out.push((s, sum / f64::from(n)));
    }
    out
}

impl ClusterBackend {
    fn block_on<T>(&self, f: impl std::future::Future<Output = T>) -> T {
        // Series reads run on the API's blocking pool (spawn_blocking).
        tokio::runtime::Handle::current().block_on(f)
    }
}

impl Backend for ClusterBackend {
    fn info(&self) -> &trawler_api::JobInfo {
        self.node.names.info()
    }

    fn key(&self, text: &str) -> Result<Option<u64>, ApiError> {
        self.node.names.key(text)
    }

    fn key_json(&self, id: u64) -> Json {
        self.node.names.key_json(id)
    }

    fn entity(&self, id: u64) -> Result<Option<Map<String, Json>>, ApiError> {
        if !self.node.all_ids.contains(id) {
            return Ok(None);
        }
        Ok(Some(entity_json(&self.node.views, &self.node.names, id)))
    }

    fn series(&self, id: u64, metric: &str, q: SeriesQuery) -> Result<Option<Points>, ApiError> {
        let node = &self.node;
        if !node.all_ids.contains(id) {
            return Ok(None);
        }
        metric_points(&node.layout, metric, |pos| {
            let name = &node.layout.stored[pos].name;
            let points = self
                .block_on(
                    node.vm
                        .export(&node.naming.selector(name, id), q.from_ms, q.to_ms),
                )
                .map_err(vm_error)?;
            Ok(match q.step_ms {
                Some(step) => downsample(points, step),
                None => points,
            })
        })
        .map(Some)
    }

    fn track(&self, _keys: &[String]) -> Result<TrackOutcome, ApiError> {
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

    fn stats(&self) -> Map<String, Json> {
        let node = &self.node;
        let views = node.views.stats();
        let rank_by = node.views.schema().rank_by();
        let average = views.averages.get(rank_by);
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
        let mut out = Map::new();
        out.insert("trackedAccounts".into(), json!(node.all_ids.len()));
        out.insert("crawledAccounts".into(), json!(views.tracked));
        out.insert(
            node.layout.average.clone(),
            average
                .and_then(|a| a.mean())
                .map(Json::from)
                .unwrap_or(Json::Null),
        );
        out.insert("averageCovers".into(), json!(average.map(|a| a.count)));
        out.insert("invalidAccounts".into(), json!(sum("invalid") as u64));
        out.insert("pollsPerSecond".into(), json!(sum("pollsPerSecond")));
        out.insert("lagP50Ms".into(), json!(max("lagP50Ms")));
        out.insert("lagP99Ms".into(), json!(max("lagP99Ms")));
        out.insert("polls".into(), json!(sum("polls") as u64));
        out.insert("errors".into(), json!(sum("errors") as u64));
        out.insert("gaps".into(), json!(sum("gaps") as u64));
        out.insert("missedSlots".into(), json!(sum("missedSlots") as u64));
        // The cluster's schedule: every node's shards together. Behind when
        // any node is; the effective interval is what the whole set gets.
        let interval_ms = node.crawl.job().interval().as_millis() as f64;
        let needed = sum("neededPerSecond");
        let achieved = sum("achievedPerSecond");
        let behind = beats.iter().any(|b| b["behindSchedule"] == true);
        out.insert("behindSchedule".into(), json!(behind));
        out.insert("intervalMs".into(), json!(interval_ms as u64));
        out.insert("neededPerSecond".into(), json!(needed));
        out.insert("achievedPerSecond".into(), json!(achieved));
        out.insert(
            "effectiveIntervalMs".into(),
            json!(if behind && achieved > 0.0 {
                interval_ms * needed / achieved
            } else {
                interval_ms
            }),
        );
        flag_stats(&mut out, &node.names, views.suspicious, node.enrich.get());
        out.insert("samplesStored".into(), json!(sum("vmSamples") as u64));
        out.insert("bytesOnDisk".into(), Json::Null);
        out.insert("bytesPerSample".into(), Json::Null);
        out.insert("nodes".into(), json!(leases.nodes.len()));
        out.insert("shardsHeld".into(), json!(leases.held));
        out
    }

    fn invalid(&self, after: Option<u64>, limit: usize) -> Vec<u64> {
        invalid_page(&self.node.crawl, after, limit)
    }

    fn render_metrics(&self, out: &mut String) {
        let node = &self.node;
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
                    node.publisher.published.load(Ordering::Relaxed),
                ),
                (
                    "trawler_cluster_publish_failures_total",
                    "Publish attempts that failed and were retried.",
                    "counter",
                    node.publisher.failures.load(Ordering::Relaxed),
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
                    node.writer.samples.load(Ordering::Relaxed),
                ),
                (
                    "trawler_vm_import_failures_total",
                    "Imports that failed (their batches come back).",
                    "counter",
                    node.writer.failures.load(Ordering::Relaxed),
                ),
                (
                    "trawler_vm_backlog_messages",
                    "Stream messages not yet imported.",
                    "gauge",
                    node.writer.backlog.load(Ordering::Relaxed),
                ),
                (
                    "trawler_views_memory_bytes",
                    "Memory the live views hold.",
                    "gauge",
                    node.views.memory().total() as u64,
                ),
            ],
        );
    }

    fn top(&self, by: TopBy, limit: usize) -> Vec<Map<String, Json>> {
        top_json(&self.node.views, &self.node.names, by, limit)
    }

    fn flagged(&self, after: Option<u64>, limit: usize) -> Vec<u64> {
        self.node.views.suspicious(after, limit)
    }

    fn now_ms(&self) -> i64 {
        super::now_ms()
    }

    fn average_series(&self, q: SeriesQuery) -> Result<Points, ApiError> {
        let node = &self.node;
        let rank = &node.layout.stored[node.layout.rank_stored].name;
        let query = format!("avg({rank}{{job=\"{}\"}})", node.job.name());
        let step = q.step_ms.unwrap_or(60_000).max(60_000);
        self.block_on(node.vm.query_range(&query, q.from_ms, q.to_ms, step))
            .map_err(vm_error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn downsampling_averages_epoch_aligned_buckets() {
        let points = vec![(0, 1.0), (30_000, 3.0), (60_000, 10.0), (179_999, 20.0)];
        assert_eq!(
            downsample(points, 60_000),
            vec![(0, 2.0), (60_000, 10.0), (120_000, 20.0)]
        );
        assert!(downsample(Vec::new(), 1_000).is_empty());
    }
}
