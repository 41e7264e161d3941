//! The embedded mode: one process polls, stores into its data folder,
//! keeps the live views and serves the API.
//!
//! ```text
//! simulator (when no target) ◄── HTTP ── crawl ──events──► ingest ──► store (WAL, blocks)
//!                                                                └──► views ◄── API ── clients
//!                             ◄── HTTP ── enrichment ──verdicts──► ingest
//! ```
//!
//! Start-up order matters: the store opens (replaying its WAL), the views
//! are rebuilt from the store's latest values, and only then does the crawl
//! start, so no observation can be overwritten by the rebuild. Shutdown runs
//! the other way: stop the API and the crawl (requests in flight get a grace
//! period), drain the ingest path, sync the store.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use trawler_crawl::IdSet;
use trawler_store::{StoreConfig, SyncPolicy};

use crate::backend::NodeBackend;
use crate::config::NodeConfig;
use crate::error::{config_error, Result, Step};
use crate::layout::Layout;
use crate::node::{self, Node};
use crate::state::StateFiles;
use crate::status::Snapshot;

/// Largest id range the built-in simulator is started for.
const MAX_SIM_ACCOUNTS: u64 = 20_000_000;

/// Runs the embedded node until `shutdown` completes; see [`crate::run`].
pub(crate) async fn run(
    config: NodeConfig,
    api_runtime: tokio::runtime::Handle,
    shutdown: impl Future<Output = ()>,
    mut on_status: impl FnMut(&Snapshot),
) -> Result<()> {
    let data = &config.data;
    std::fs::create_dir_all(data)
        .with_step(|| format!("creating the data folder {}", data.display()))?;
    crate::state::claim_folder(data, config.job.job.name.trim())?;
    let files = StateFiles::in_folder(data);
    let (tracked_file, invalid_file, keys_file) = (&files.tracked, &files.invalid, &files.keys);

    // The tracked set: --ids, else the set saved by the last run (minus ids
    // the target said do not exist), else the job's.
    let string_keys = config.job.job.key_type == trawler_crawl::KeyKind::String;
    let mut overrides = config.overrides.clone();
    let mut resumed = None;
    if overrides.ids.is_none() {
        if let Some(saved) = tracked_file.load()? {
            let invalid = invalid_file.load()?.unwrap_or_default();
            let set: IdSet = saved.iter().filter(|id| !invalid.contains(*id)).collect();
            tracing::info!(ids = set.len(), file = %tracked_file.path().display(), "resuming the saved tracked set");
            if !string_keys {
                overrides.ids = Some(set.to_string());
            }
            resumed = Some(set);
        }
    }
    let mut job = config.job.build_with(&overrides)?;

    let (stop_tx, stop_rx) = trawler_common::shutdown::channel();
    let stopped = || {
        let mut rx = stop_rx.clone();
        async move { rx.wait().await }
    };

    // The built-in simulator, when no target is given.
    let mut sim_task = None;
    if overrides.target.is_none() {
        // The simulator's Mockstagram accounts cover the integer ids; a job
        // with string keys polls its other API, which needs no accounts.
        let (first, last) = match (job.ids().ranges().first(), job.ids().ranges().last()) {
            (Some(f), Some(l)) if !string_keys => (f.0, l.1),
            _ => (1_000_000, 1_000_000),
        };
        let accounts = last - first + 1;
        if accounts > MAX_SIM_ACCOUNTS {
            return Err(config_error!("the ids span {accounts} accounts, more than the built-in simulator serves ({MAX_SIM_ACCOUNTS}); use --target"));
        }
        let sim = trawler_sim::SimConfig {
            accounts: accounts as u32,
            first_pk: first,
            seed: config.simulator.seed,
            dynamics: config.simulator.dynamics,
            faults: trawler_sim::Faults {
                suspicious_delay_scale: config.simulator.suspicious_delay_scale,
                ..Default::default()
            },
            ..Default::default()
        }
        .build()
        .step("the built-in simulator")?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .step("binding the built-in simulator")?;
        let addr = listener
            .local_addr()
            .step("binding the built-in simulator")?;
        tracing::info!(%addr, accounts, first_pk = first, threshold = sim.accounts().threshold(), "built-in simulator started");
        let stop = stopped();
        sim_task = Some(tokio::spawn(async move { sim.serve(listener, stop).await }));
        overrides.target = Some(format!("http://{addr}"));
        job = config.job.build_with(&overrides)?;
    }
    if string_keys {
        // Ids number the keys as the data folder's table does, so stored
        // series keep their keys; the job's new keys get the next ids.
        let saved = keys_file.load()?;
        job = job
            .with_saved_keys(&saved)
            .map_err(|e| config_error!("{}: {e}", keys_file.path().display()))?;
        if let Some(set) = resumed {
            let known = job.keys().len() as u64;
            job = job.with_ids(set.iter().filter(|id| *id < known).collect());
        }
        keys_file.save(&job.keys().names())?;
    }
    let target = overrides.target.clone().unwrap_or_default();

    // Store, then views from the store, then the crawl.
    let layout = Layout::of(&job)?;
    tracing::info!(dir = %data.join("store").display(), "opening the store");
    let mut store_config = StoreConfig::new(data.join("store"));
    store_config.retention = config.retention;
    store_config.sync = if config.fsync_interval.is_zero() {
        SyncPolicy::Always
    } else {
        SyncPolicy::Interval(config.fsync_interval)
    };
    let store = tokio::task::spawn_blocking(move || store_config.open())
        .await
        .step("opening the store")?
        .step("opening the store")?;
    let store = Arc::new(store);
    let views = layout.views.build().step("the live views")?;
    let started = std::time::Instant::now();
    let (rebuilt, views) = {
        let (store, layout, ids, name) = (
            store.clone(),
            layout.clone(),
            job.ids().clone(),
            job.name().to_owned(),
        );
        tokio::task::spawn_blocking(move || {
            node::rebuild_views(&store, &views, &layout, &name, &ids).map(|n| (n, views))
        })
        .await
        .step("rebuilding the live views")??
    };
    tracing::info!(
        entities = rebuilt,
        ms = started.elapsed().as_millis() as u64,
        "live views rebuilt"
    );

    // Crawl and ingest are decoupled by a buffer of about 30 s of the
    // job's observations: when ingest is briefly slow they queue here
    // instead of holding slot tasks (which would stop dispatch and miss
    // slots). Its depth is in /metrics.
    let per_second = job.ids().len() as f64 / job.interval().as_secs_f64().max(0.001);
    let buffer = ((per_second * 30.0) as usize).clamp(65_536, 4_000_000);
    let (events_tx, events_rx) = mpsc::channel(buffer);
    let crawl = trawler_crawl::start_http(job.clone(), events_tx).step("the HTTP client")?;
    let node = Arc::new(Node::new(
        job.name().to_owned(),
        layout,
        store.clone(),
        views,
        crawl,
        files.clone(),
    ));
    node.save_state()?;
    {
        let node = node.clone();
        tokio::task::spawn_blocking(move || {
            let started = std::time::Instant::now();
            let restored = node.restore_references(crate::now_ms());
            tracing::info!(
                entities = restored,
                ms = started.elapsed().as_millis() as u64,
                "movers' references restored from the store"
            );
        });
    }
    let ingest = tokio::spawn(node::ingest_events(node.clone(), events_rx));
    let averages = tokio::spawn(node::record_averages(
        node.clone(),
        job.interval().min(Duration::from_secs(60)),
    ));

    // The job's enrichment, with its own pool and budget.
    let mut verdicts_task = None;
    let enrichment = match config.enrichment {
        true => crate::node::job_enrichment(&job, config.enrichment_period)?,
        false => None,
    };
    if let Some(enrichment) = enrichment {
        let (verdicts_tx, verdicts_rx) = mpsc::channel(4_096);
        let (handle, _task) = enrichment.spawn(
            job.ids().iter(),
            Arc::new(node::EnrichmentInputs::new(node.clone())),
            verdicts_tx,
            stop_rx.clone(),
        );
        node.set_enrich(handle);
        verdicts_task = Some(tokio::spawn(node::ingest_verdicts(
            node.clone(),
            verdicts_rx,
        )));
    }

    // The API, with the Prometheus API over the job's series and what is
    // remote-written into the same store.
    let backend = Arc::new(NodeBackend::new(node.clone(), &job, node.storage.clone()));
    let remote = {
        let (store, file) = (store.clone(), data.join("prometheus-metadata.json"));
        tokio::task::spawn_blocking(move || crate::prom::RemoteSeries::open(store, file))
            .await
            .step("indexing the remote-written series")??
    };
    let prom = crate::prom::NodeProm::of_poll_job(backend.clone(), Some(Arc::new(remote)));
    let api = trawler_api::ApiConfig {
        listen: config.listen,
        token: config.api_token.clone(),
        prometheus: config.prometheus,
        ..Default::default()
    }
    .build(backend)
    .step("the API")?
    .with_prometheus(Arc::new(prom));
    let listener = crate::bind_api(config.listen)?;
    let api_addr = listener.local_addr().step("binding the API")?;
    tracing::info!(addr = %api_addr, job = job.name(), target, "API listening");
    // Machine-readable, for scripts and tests that asked for port 0.
    println!("listening on http://{api_addr}");
    let api_task = api
        .spawn_on(&api_runtime, listener, stopped())
        .step("starting the API")?;

    // Status until told to stop, or until the node cannot go on.
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut failure = node.failure();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = failure.wait_for(Option::is_some) => break,
            _ = tick.tick() => on_status(&crate::status::snapshot(&node)),
        }
    }

    tracing::info!("shutting down");
    stop_tx.trigger();
    let report = node.crawl.shutdown(config.grace).await;
    let _ = ingest.await;
    averages.abort();
    if let Some(task) = verdicts_task {
        task.abort();
    }
    // Event streams end at shutdown; a client that stopped reading could
    // still hold its connection, so the API gets the grace period and no more.
    if tokio::time::timeout(config.grace, api_task).await.is_err() {
        tracing::warn!(grace = ?config.grace, "API connections still open after the grace period; closing them");
    }
    if let Some(task) = sim_task {
        let _ = task.await;
    }
    node.save_state()?;
    if let Some(why) = node.failure().borrow().clone() {
        return Err(crate::Error::Step {
            step: "storing observations".into(),
            source: why.into(),
        });
    }
    let store_stats = store.stats();
    tokio::task::spawn_blocking(move || store.sync())
        .await
        .step("syncing the store")?
        .step("syncing the store")?;
    tracing::info!(
        polls = report.metrics.polls_ok,
        abandoned = report.abandoned,
        samples = store_stats.samples,
        "stopped; everything acknowledged is durable"
    );
    Ok(())
}
