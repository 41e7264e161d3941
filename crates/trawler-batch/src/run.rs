//! The pipeline of a batch job, and its start-up and shutdown order.
//!
//! ```text
//!  frontier thread ──Admit──► dispatcher ──spawn──► URL task (≤ max_in_flight)
//!  (input, segments,          (admits, segment        host permit + rate token
//!   duplicates)                accounting)            → download (retries, backoff)
//!                                                     → processing pool (threads = cores)
//!                                                     → detector batcher ──► calls (≤ in_flight)
//!                                                                              │
//!                                  state log ◄── commit ── writer thread ◄─────┘ rows
//!                                                          (Parquet, rolled by size/age)
//! ```
//!
//! Every channel is bounded, so a slow stage holds the ones before it
//! instead of queueing without end; the URL tasks' semaphore bounds the
//! URLs between admission and the detector. A URL's outcome is final when
//! its results file's commit is in the log, or its dead letter is.
//!
//! Start: the data folder is locked and claimed for the job, the input
//! checked against the one the folder was started with, the log replayed
//! (and checkpointed), unfinished results files recovered — all before any
//! request. End: when the input is read and every admitted URL has an
//! outcome, the writer commits its last file, the log is synced, and
//! `dead.ndjson` and `summary.json` are written. On shutdown the same
//! happens after at most `grace` for the URLs in flight; those without a
//! committed result are simply done again by the next run.
//!
//! Cluster mode ([`run_cluster`], `run/cluster.rs`) is the same pipeline with
//! two stages replaced: a frontier that makes passes over the input and
//! works only on the segments it leases, and a writer that commits one
//! results file per segment into the shared output; no state log.

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use tokio::sync::{mpsc, oneshot, Notify, Semaphore};
use trawler_common::shutdown::Shutdown;

mod cluster;

pub use cluster::ClusterRun;

use crate::fetch::{FetchError, Fetcher, Hosts};
use crate::frontier::{fp_set_bytes, Admit, Earlier, Frontier, Item};
use crate::input::{self, InputError, Lines, Manifest};
use crate::log::{DeadKind, LogError, Record, StateLog};
use crate::output::{self, OutputError, ResultRow};
use crate::process::Pool;
use crate::progress::hosts::HostTicket;
use crate::progress::{Progress, Status};
use crate::remote::{Remote, RemoteError};
use crate::spec::{BatchJob, DetectorSettings, Input};

/// Why a batch could not start or go on.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BatchError {
    /// The input.
    #[error(transparent)]
    Input(#[from] InputError),
    /// The state log.
    #[error(transparent)]
    Log(#[from] LogError),
    /// The results files.
    #[error(transparent)]
    Output(#[from] OutputError),
    /// NATS, in cluster mode.
    #[error(transparent)]
    Cluster(#[from] trawler_cluster::Error),
    /// S3 input or output.
    #[error(transparent)]
    Remote(#[from] RemoteError),
    /// The data folder is not usable for this job.
    #[error("data folder {path}: {message}")]
    Data {
        /// The folder or file.
        path: PathBuf,
        /// Why, and what to do.
        message: String,
    },
}

/// What a finished (or interrupted) run leaves.
#[derive(Debug, Clone)]
pub struct Summary {
    /// The last figures.
    pub status: Status,
    /// Whether it stopped before the end of the input.
    pub interrupted: bool,
    /// The results folder.
    pub results: PathBuf,
    /// The dead-letter export.
    pub dead_letters: PathBuf,
}

/// The state an outcome changes, behind one lock.
struct Tracker {
    log: StateLog,
    /// Per unfinished segment: URLs admitted and not finished, and whether
    /// the frontier is past it.
    segments: HashMap<u32, (u64, bool)>,
    /// Dead letters (earlier runs' and this one's), for the export.
    dead: HashMap<u128, Record>,
}

impl Tracker {
    fn settle(&mut self, segment: u32, progress: &Progress) -> Result<(), LogError> {
        if let Some(&(0, true)) = self.segments.get(&segment) {
            self.segments.remove(&segment);
            self.log.append(&Record::SegmentDone { segment })?;
            progress.segments_done.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    fn finish_one(&mut self, segment: u32, progress: &Progress) -> Result<(), LogError> {
        if let Some(s) = self.segments.get_mut(&segment) {
            s.0 = s.0.saturating_sub(1);
        }
        self.settle(segment, progress)
    }
}

/// What every task shares.
struct Ctx {
    job: BatchJob,
    progress: Arc<Progress>,
    /// The state log and segment accounting (single-node mode).
    tracker: Option<Mutex<Tracker>>,
    /// The segment leases and shared output (cluster mode).
    cluster: Option<cluster::Shared>,
    hosts: Hosts,
    fetcher: Fetcher,
    pool: Pool,
    /// The first fatal error; set once, then the run stops.
    fatal: Mutex<Option<BatchError>>,
    failed: Notify,
}

impl Ctx {
    fn fail(&self, e: impl Into<BatchError>) {
        let mut fatal = self.fatal.lock().unwrap_or_else(|e| e.into_inner());
        if fatal.is_none() {
            let e = e.into();
            tracing::error!(error = %e, "batch: stopping");
            *fatal = Some(e);
        }
        self.failed.notify_one();
    }

    fn tracker(&self) -> std::sync::MutexGuard<'_, Tracker> {
        self.tracker
            .as_ref()
            .expect("the tracker of the single-node mode")
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    async fn dead(
        &self,
        item: &Item,
        attempts: u16,
        kind: DeadKind,
        message: String,
        writer_tx: &mpsc::Sender<ToWriter>,
        ticket: Option<HostTicket>,
    ) {
        tracing::debug!(url = %item.url, kind = kind.name(), %message, "dead letter");
        let record = Record::Dead {
            segment: item.segment,
            fp: item.fp,
            attempts,
            kind,
            url: item.url.clone(),
            message,
        };
        if self.cluster.is_some() {
            // Counted and exported with its segment's commit.
            let _ = writer_tx.send(ToWriter::Dead(record, ticket)).await;
            return;
        }
        let mut t = self.tracker();
        let r = t
            .log
            .append(&record)
            .and_then(|_| t.finish_one(item.segment, &self.progress));
        t.dead.insert(item.fp, record);
        self.progress
            .log_bytes
            .store(t.log.bytes(), Ordering::Relaxed);
        drop(t);
        self.progress.dead_one(kind);
        if let Some(t) = ticket {
            t.dead();
        }
        if let Err(e) = r {
            self.fail(e);
        }
    }

    fn failed_attempt(&self, item: &Item, attempts: u16, ticket: &HostTicket) {
        self.progress.retries.fetch_add(1, Ordering::Relaxed);
        ticket.retry();
        if self.cluster.is_some() {
            // A segment is redone whole by whoever takes it over: its
            // attempts start again there.
            return;
        }
        let r = self.tracker().log.append(&Record::Failed {
            segment: item.segment,
            fp: item.fp,
            attempts,
        });
        if let Err(e) = r {
            self.fail(e);
        }
    }
}

/// An image waiting for the detector.
struct Pending {
    row: ResultRow,
    image: Bytes,
    ticket: HostTicket,
}

/// What the writer gets. A row or dead letter carries its URL's place in
/// the per-host table, counted at its commit.
enum ToWriter {
    Row(ResultRow, HostTicket),
    /// A dead letter (cluster mode; the single-node mode logs it at once).
    Dead(Record, Option<HostTicket>),
    /// Every URL of `segment` under `claim` was admitted: `urls` of them
    /// (cluster mode).
    Read {
        segment: u32,
        urls: u64,
        claim: u64,
    },
    Tick,
    Close(oneshot::Sender<()>),
}

/// Runs the job over the data folder until the input is done or
/// `shutdown` fires (then in-flight URLs get `grace`).
pub async fn run(
    job: BatchJob,
    data: &Path,
    progress: Arc<Progress>,
    shutdown: Shutdown,
    grace: Duration,
) -> Result<Summary, BatchError> {
    run_with(job, data, None, progress, shutdown, grace).await
}

/// Runs the job as one node of a cluster (see `run/cluster.rs`): the
/// segments this node leases, committed into the shared output; `data`
/// holds only this node's lock and summary. Ends when every segment of
/// the input is done, by any node.
pub async fn run_cluster(
    job: BatchJob,
    data: &Path,
    cluster: cluster::ClusterRun,
    progress: Arc<Progress>,
    shutdown: Shutdown,
    grace: Duration,
) -> Result<Summary, BatchError> {
    run_with(job, data, Some(cluster), progress, shutdown, grace).await
}

async fn run_with(
    job: BatchJob,
    data: &Path,
    cluster: Option<cluster::ClusterRun>,
    progress: Arc<Progress>,
    mut shutdown: Shutdown,
    grace: Duration,
) -> Result<Summary, BatchError> {
    // Everything checked and opened before the first request.
    let files = input::files(&local_inputs(&job, data).await?)?;
    let remote = match &job.output.remote {
        Some(url) => Some(Remote::new(url, job.s3_endpoint.as_deref())?),
        None => None,
    };
    let _lock = claim(data, &job, &files)?;
    let total: u64 = files
        .iter()
        .filter_map(|f| std::fs::metadata(f).ok())
        .map(|m| m.len())
        .sum();
    progress.input_total.store(total, Ordering::Relaxed);
    let mut earlier = Earlier::default();
    let (tracker, shared, results_dir, next_file) = match cluster {
        None => {
            let (log, records, committed) = StateLog::open(&data.join("batch.log"))?;
            progress.log_bytes.store(log.bytes(), Ordering::Relaxed);
            let results_dir = data.join("results");
            let next_file = output::recover(&results_dir, &committed)?;
            if let Some(r) = &remote {
                upload_missing(r, &results_dir).await?;
            }
            earlier = Earlier::replay(&records);
            let dead: HashMap<u128, Record> = records
                .into_iter()
                .filter_map(|r| match &r {
                    Record::Dead { fp, .. } => Some((*fp, r)),
                    _ => None,
                })
                .collect();
            let tracker = Tracker {
                log,
                segments: HashMap::new(),
                dead,
            };
            (Some(Mutex::new(tracker)), None, results_dir, next_file)
        }
        Some(c) => {
            let identity = format!(
                "{}segment_urls {}\n",
                Manifest::of(&files)?.0,
                job.segment_urls
            );
            let shared = cluster::Shared::join(
                c,
                &job.name,
                &identity,
                files.clone(),
                job.s3_endpoint.as_deref(),
            )
            .await?;
            let results_dir = shared.results.clone();
            (None, Some(shared), results_dir, 0)
        }
    };
    tracing::info!(
        job = %job.name,
        files = files.len(),
        finished_segments = earlier.segments.len(),
        known_urls = earlier.urls.len(),
        cluster = shared.is_some(),
        "batch: starting"
    );
    let ctx = Arc::new(Ctx {
        hosts: Hosts::new(job.http.per_host_in_flight, job.http.per_host_rate),
        fetcher: Fetcher::new(&job.http),
        pool: Pool::start(
            job.process.workers,
            job.process.thumbnail,
            job.process.max_pixels,
        ),
        tracker,
        cluster: shared,
        progress: progress.clone(),
        fatal: Mutex::new(None),
        failed: Notify::new(),
        job,
    });
    // Cluster mode: the leases are renewed until the writer is closed, then
    // given back.
    let (keep_trigger, keep_stop) = trawler_common::shutdown::channel();
    let keeper = ctx
        .cluster
        .as_ref()
        .map(|c| tokio::spawn(c.leases.clone().keep(keep_stop)));

    // The writer thread and its clock.
    let (writer_tx, writer_rx) = mpsc::channel::<ToWriter>(4_096);
    let writer = {
        let ctx = ctx.clone();
        let remote_w = remote.clone();
        let w = output::Writer::new(&results_dir, next_file);
        let runtime = tokio::runtime::Handle::current();
        std::thread::Builder::new()
            .name("batch-writer".into())
            .spawn(move || match &ctx.cluster {
                None => writer_thread(&ctx, w, writer_rx, remote_w.as_ref(), &runtime),
                Some(c) => cluster::writer_thread(&ctx, c, w, writer_rx, &runtime),
            })
            .expect("spawning the writer")
    };
    let ticker = {
        let tx = writer_tx.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(200));
            loop {
                tick.tick().await;
                if tx.send(ToWriter::Tick).await.is_err() {
                    return;
                }
            }
        })
    };

    // The detector's batcher.
    let (detect_tx, batcher) = match ctx.job.detector.clone() {
        Some(d) => {
            let (tx, rx) = mpsc::channel::<Pending>(d.batch * d.in_flight * 2);
            let handle = tokio::spawn(batcher(ctx.clone(), d, rx, writer_tx.clone()));
            (Some(tx), Some(handle))
        }
        None => (None, None),
    };

    // The frontier thread.
    let stop = Arc::new(AtomicBool::new(false));
    let (admit_tx, mut admit_rx) = mpsc::channel::<Admit>(4_096);
    let frontier = {
        let mut frontier = Frontier::new(
            Lines::new(files, ctx.job.format, &ctx.job.field),
            earlier,
            ctx.job.segment_urls,
        );
        let stop = stop.clone();
        let ctx = ctx.clone();
        let runtime = tokio::runtime::Handle::current();
        std::thread::Builder::new()
            .name("batch-frontier".into())
            .spawn(move || match &ctx.cluster {
                None => {
                    if read_pass(&mut frontier, &admit_tx, &ctx.progress, &stop) == Pass::Ended {
                        ctx.progress.input_complete.store(1, Ordering::Relaxed);
                    }
                }
                Some(c) => cluster::frontier_thread(&ctx, c, admit_tx, &stop, &runtime),
            })
            .expect("spawning the frontier")
    };

    // The dispatcher.
    let max = ctx.job.http.max_in_flight;
    let slots = Arc::new(Semaphore::new(max));
    let mut interrupted = false;
    // Cluster mode: per segment, the claim its URLs were admitted under
    // (`None` once it was lost) and how many.
    let mut claimed: HashMap<u32, (Option<u64>, u64)> = HashMap::new();
    loop {
        let admit = tokio::select! {
            biased;
            _ = shutdown.wait() => { interrupted = true; break; }
            _ = ctx.failed.notified() => break,
            a = admit_rx.recv() => a,
        };
        match admit {
            Some(Admit::Url(item)) => {
                if let Some(c) = &ctx.cluster {
                    let now = c.leases.claim_of(item.segment);
                    let entry = claimed.entry(item.segment).or_insert((now, 0));
                    if entry.0.is_none() || entry.0 != now {
                        // Lost: the URLs left are another node's now.
                        entry.0 = None;
                        continue;
                    }
                    entry.1 += 1;
                } else {
                    ctx.tracker().segments.entry(item.segment).or_default().0 += 1;
                }
                progress.admitted.fetch_add(1, Ordering::Relaxed);
                let permit = tokio::select! {
                    biased;
                    _ = shutdown.wait() => { interrupted = true; break; }
                    p = slots.clone().acquire_owned() => p.expect("never closed"),
                };
                let ctx = ctx.clone();
                let (detect_tx, writer_tx) = (detect_tx.clone(), writer_tx.clone());
                tokio::spawn(async move {
                    url_task(&ctx, item, detect_tx, writer_tx).await;
                    drop(permit);
                });
            }
            Some(Admit::SegmentRead(segment)) if ctx.cluster.is_some() => {
                let c = ctx.cluster.as_ref().expect("cluster mode");
                let (claim, urls) = claimed
                    .remove(&segment)
                    .unwrap_or((c.leases.claim_of(segment), 0));
                if let Some(claim) = claim {
                    let _ = writer_tx
                        .send(ToWriter::Read {
                            segment,
                            urls,
                            claim,
                        })
                        .await;
                }
            }
            Some(Admit::SegmentRead(segment)) => {
                let mut t = ctx.tracker();
                t.segments.entry(segment).or_default().1 = true;
                if let Err(e) = t.settle(segment, &progress) {
                    drop(t);
                    ctx.fail(e);
                }
            }
            None => break,
        }
    }
    stop.store(true, Ordering::Relaxed);
    drop(admit_rx);

    // Every URL task ends: at once, or within the grace on shutdown.
    let all = slots.acquire_many(max as u32);
    if interrupted {
        let _ = tokio::time::timeout(grace, all).await;
    } else {
        tokio::select! {
            _ = all => {}
            _ = shutdown.wait() => {
                interrupted = true;
                let _ = tokio::time::timeout(grace, slots.acquire_many(max as u32)).await;
            }
            _ = ctx.failed.notified() => {}
        }
    }
    drop(detect_tx);
    if let Some(b) = batcher {
        if interrupted {
            let _ = tokio::time::timeout(grace, b).await;
        } else {
            let _ = b.await;
        }
    }
    let (closed_tx, closed) = oneshot::channel();
    let _ = writer_tx.send(ToWriter::Close(closed_tx)).await;
    let _ = closed.await;
    ticker.abort();
    let _ = tokio::task::spawn_blocking(move || {
        let _ = writer.join();
        let _ = frontier.join();
    })
    .await;
    keep_trigger.trigger();
    if let Some(k) = keeper {
        let _ = k.await;
    }
    if let Some(e) = ctx.fatal.lock().unwrap_or_else(|e| e.into_inner()).take() {
        return Err(e);
    }
    let dead_letters = match &ctx.cluster {
        Some(c) => c.dead.clone(),
        None => data.join("dead.ndjson"),
    };
    if ctx.tracker.is_some() {
        let mut t = ctx.tracker();
        t.log.sync()?;
        progress.log_bytes.store(t.log.bytes(), Ordering::Relaxed);
        export_dead(&dead_letters, &t.dead).map_err(|e| BatchError::Data {
            path: dead_letters.clone(),
            message: format!("writing the dead letters: {e}"),
        })?;
    }
    if let Some(r) = &remote {
        r.put_file("dead.ndjson", &dead_letters).await?;
    }
    if !interrupted && progress.input_complete.load(Ordering::Relaxed) == 0 {
        interrupted = true;
    }
    progress.finish();
    let status = progress.status();
    let summary = Summary {
        status,
        interrupted,
        results: results_dir,
        dead_letters,
    };
    let json = serde_json::json!({
        "interrupted": interrupted,
        "status": summary.status,
        "hosts": progress.per_host.top(&progress.job, SUMMARY_HOSTS),
    });
    let _ = std::fs::write(data.join("summary.json"), format!("{json:#}\n"));
    if let Some(r) = &remote {
        r.put("summary.json", format!("{json:#}\n").into_bytes())
            .await?;
    }
    Ok(summary)
}

/// The busiest hosts written into `summary.json` (the rest in one row).
const SUMMARY_HOSTS: usize = 100;

/// The job's inputs as local files and folders: an `s3://` prefix is
/// copied into `<data>/s3-input/<n>/` first (see [`crate::remote`]).
async fn local_inputs(job: &BatchJob, data: &Path) -> Result<Vec<PathBuf>, BatchError> {
    let mut out = Vec::new();
    for (i, input) in job.inputs.iter().enumerate() {
        match input {
            Input::Local(p) => out.push(p.clone()),
            Input::S3(url) => {
                let dir = data.join("s3-input").join(i.to_string());
                let remote = Remote::new(url, job.s3_endpoint.as_deref())?;
                let n = remote.download_all(&dir).await?;
                tracing::info!(%url, objects = n, folder = %dir.display(), "batch: S3 input ready");
                out.push(dir);
            }
        }
    }
    Ok(out)
}

/// Uploads the published results files that the remote output lacks (a
/// run that stopped between a commit and its upload).
async fn upload_missing(remote: &Remote, results: &Path) -> Result<(), BatchError> {
    let there: std::collections::HashSet<String> = remote
        .list("results")
        .await?
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    for path in output::result_files(results)? {
        let name = format!(
            "results/{}",
            path.file_name().unwrap_or_default().to_string_lossy()
        );
        if !there.contains(&name) {
            tracing::info!(object = %remote.url(&name), "batch: uploading a results file an earlier run committed");
            remote.put_file(&name, &path).await?;
        }
    }
    Ok(())
}

/// Locks the data folder (released when the process dies) and checks that
/// it belongs to this job and this input.
fn claim(data: &Path, job: &BatchJob, files: &[PathBuf]) -> Result<File, BatchError> {
    let bad = |path: PathBuf, message: String| BatchError::Data { path, message };
    std::fs::create_dir_all(data).map_err(|e| bad(data.to_owned(), e.to_string()))?;
    let lock_path = data.join("LOCK");
    let lock = File::create(&lock_path).map_err(|e| bad(lock_path.clone(), e.to_string()))?;
    if lock.try_lock().is_err() {
        return Err(bad(
            data.to_owned(),
            "in use by another trawler process; stop it or choose another --data".into(),
        ));
    }
    let job_path = data.join("job");
    match std::fs::read_to_string(&job_path) {
        Ok(name) if name.trim() != job.name => {
            return Err(bad(
                data.to_owned(),
                format!(
                    "holds the job {:?}, not {:?}; choose another --data",
                    name.trim(),
                    job.name
                ),
            ))
        }
        Ok(_) => {}
        Err(_) => write_atomic(&job_path, format!("{}\n", job.name).as_bytes())
            .map_err(|e| bad(job_path.clone(), e.to_string()))?,
    }
    let manifest = Manifest::of(files)?;
    let input_path = data.join("input");
    match std::fs::read_to_string(&input_path) {
        Ok(saved) if saved != manifest.0 => {
            return Err(bad(
                data.to_owned(),
                format!(
                    "was started over another input (saved in {}); the segments would not match. \
                     Use another --data for a new list, or the same list to resume",
                    input_path.display()
                ),
            ))
        }
        Ok(_) => {}
        Err(_) => write_atomic(&input_path, manifest.0.as_bytes())
            .map_err(|e| bad(input_path.clone(), e.to_string()))?,
    }
    Ok(lock)
}

fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    crate::log::sync_dir(path)
}

fn export_dead(path: &Path, dead: &HashMap<u128, Record>) -> std::io::Result<()> {
    write_atomic(path, &dead_lines(dead.values()))
}

/// Dead letters as NDJSON lines (`url`, `kind`, `error`, `attempts`,
/// `segment`), by segment and URL.
fn dead_lines<'a>(dead: impl Iterator<Item = &'a Record>) -> Vec<u8> {
    let mut rows: Vec<_> = dead
        .filter_map(|r| match r {
            Record::Dead {
                segment,
                attempts,
                kind,
                url,
                message,
                ..
            } => Some((
                *segment,
                url,
                serde_json::json!({
                    "url": url,
                    "kind": kind.name(),
                    "error": message,
                    "attempts": attempts,
                    "segment": segment,
                }),
            )),
            _ => None,
        })
        .collect();
    rows.sort_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
    let mut out = Vec::new();
    for (_, _, v) in rows {
        out.extend(v.to_string().as_bytes());
        out.push(b'\n');
    }
    out
}

/// How a pass over the input ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pass {
    /// Every line was read.
    Ended,
    /// Stopping, or the dispatcher is gone.
    Stopped,
    /// The input could not be read to its end.
    Failed,
}

/// Hands the frontier's admissions to the dispatcher until the input ends.
fn read_pass(
    frontier: &mut Frontier,
    tx: &mpsc::Sender<Admit>,
    progress: &Progress,
    stop: &AtomicBool,
) -> Pass {
    let mut n = 0u64;
    loop {
        if stop.load(Ordering::Relaxed) {
            return Pass::Stopped;
        }
        let next = frontier.next_admit();
        n += 1;
        if n.is_multiple_of(1024) {
            publish(frontier, progress);
        }
        match next {
            Ok(Some(admit)) => {
                if tx.blocking_send(admit).is_err() {
                    return Pass::Stopped;
                }
            }
            Ok(None) => {
                publish(frontier, progress);
                return Pass::Ended;
            }
            Err(e) => {
                // A file that fails mid-way (a corrupt gzip) stops the
                // admissions; what was admitted finishes and is committed.
                tracing::error!(error = %e, "batch: reading the input failed");
                publish(frontier, progress);
                return Pass::Failed;
            }
        }
    }
}

fn publish(frontier: &Frontier, progress: &Progress) {
    let s = frontier.skipped;
    progress.lines.store(s.lines, Ordering::Relaxed);
    progress.duplicates.store(s.duplicates, Ordering::Relaxed);
    progress
        .finished_earlier
        .store(s.finished_earlier, Ordering::Relaxed);
    progress.input_read.store(
        frontier.bytes_read().load(Ordering::Relaxed),
        Ordering::Relaxed,
    );
    progress
        .seen
        .store(frontier.seen().len() as u64, Ordering::Relaxed);
    progress
        .seen_bytes
        .store(fp_set_bytes(frontier.seen()), Ordering::Relaxed);
}

/// One URL: download (with retries), process, then to the detector or the
/// writer.
async fn url_task(
    ctx: &Ctx,
    item: Item,
    detect_tx: Option<mpsc::Sender<Pending>>,
    writer_tx: mpsc::Sender<ToWriter>,
) {
    let target = match &item.target {
        Ok(t) => t.clone(),
        Err((kind, message)) => {
            return ctx
                .dead(
                    &item,
                    item.attempts,
                    *kind,
                    message.clone(),
                    &writer_tx,
                    None,
                )
                .await
        }
    };
    let (host, new) = ctx.hosts.get(&target.host);
    if new {
        ctx.progress.hosts.fetch_add(1, Ordering::Relaxed);
    }
    let ticket = ctx.progress.per_host.start(&target.host);
    let http = &ctx.job.http;
    let max = http.max_attempts.min(u32::from(u16::MAX)) as u16;
    let mut attempts = item.attempts;
    let downloaded = loop {
        if attempts >= max {
            return ctx
                .dead(
                    &item,
                    attempts,
                    DeadKind::GaveUp,
                    format!("{attempts} attempts made by earlier runs"),
                    &writer_tx,
                    Some(ticket),
                )
                .await;
        }
        attempts += 1;
        let result = {
            let _permit = host.permits.acquire().await.expect("never closed");
            host.polite.turn().await;
            ctx.progress.downloading.fetch_add(1, Ordering::Relaxed);
            let r = ctx.fetcher.get(&target.uri).await;
            ctx.progress.downloading.fetch_sub(1, Ordering::Relaxed);
            r
        };
        match result {
            Ok(d) => break d,
            Err(FetchError::Dead(kind, message)) => {
                return ctx
                    .dead(&item, attempts, kind, message, &writer_tx, Some(ticket))
                    .await
            }
            Err(FetchError::Retry { message, after }) => {
                if attempts >= max {
                    return ctx
                        .dead(
                            &item,
                            attempts,
                            DeadKind::GaveUp,
                            format!("{attempts} attempts, the last: {message}"),
                            &writer_tx,
                            Some(ticket),
                        )
                        .await;
                }
                if let Some(after) = after {
                    host.polite.pause_for(after);
                }
                ctx.failed_attempt(&item, attempts, &ticket);
                // Exponential, with a jitter from the fingerprint so that
                // URLs failing together do not come back together.
                let base = http.backoff.saturating_mul(1 << (attempts - 1).min(10));
                let jitter = 0.5 + (item.fp as u64 % 1000) as f64 / 1000.0;
                let wait = after
                    .unwrap_or(base.mul_f64(jitter))
                    .min(Duration::from_secs(60));
                tokio::time::sleep(wait).await;
            }
        }
    };
    ctx.progress
        .bytes
        .fetch_add(downloaded.body.len() as u64, Ordering::Relaxed);
    ticket.bytes(downloaded.body.len() as u64);
    let processed = match ctx.pool.process(downloaded.body.clone()).await {
        Ok(p) => p,
        Err(message) => {
            return ctx
                .dead(
                    &item,
                    attempts,
                    DeadKind::NotAnImage,
                    message,
                    &writer_tx,
                    Some(ticket),
                )
                .await
        }
    };
    let row = ResultRow {
        segment: item.segment,
        fp: item.fp,
        url: item.url,
        bytes: downloaded.body.len() as u64,
        processed,
        faces: Vec::new(),
        fetched_at_ms: trawler_common::clock::unix_ms(),
    };
    // A closed channel means the run is stopping: the URL has no outcome
    // and is done again next time.
    match detect_tx {
        Some(tx) => {
            let _ = tx
                .send(Pending {
                    row,
                    image: downloaded.body,
                    ticket,
                })
                .await;
        }
        None => {
            let _ = writer_tx.send(ToWriter::Row(row, ticket)).await;
        }
    }
}

/// Gathers images into batches of `batch`, or fewer after `wait`, and
/// calls the detector with at most `in_flight` calls at once.
async fn batcher(
    ctx: Arc<Ctx>,
    settings: DetectorSettings,
    mut rx: mpsc::Receiver<Pending>,
    writer_tx: mpsc::Sender<ToWriter>,
) {
    let client: Client<HttpConnector, Full<Bytes>> = trawler_common::http::ClientSettings {
        max_idle_per_host: settings.in_flight,
        ..trawler_common::http::ClientSettings::new(Duration::from_secs(5))
    }
    .build();
    let calls = Arc::new(Semaphore::new(settings.in_flight));
    let settings = Arc::new(settings);
    let mut batch: Vec<Pending> = Vec::with_capacity(settings.batch);
    let mut deadline: Option<tokio::time::Instant> = None;
    loop {
        let next = match deadline {
            Some(d) => tokio::time::timeout_at(d, rx.recv()).await.ok(),
            None => Some(rx.recv().await),
        };
        let closed = matches!(next, Some(None));
        if let Some(Some(p)) = next {
            if batch.is_empty() {
                deadline = Some(tokio::time::Instant::now() + settings.wait);
            }
            batch.push(p);
            if batch.len() < settings.batch {
                continue;
            }
        }
        if !batch.is_empty() {
            deadline = None;
            let permit = calls.clone().acquire_owned().await.expect("never closed");
            let todo = std::mem::replace(&mut batch, Vec::with_capacity(settings.batch));
            let (ctx, client, settings, writer_tx) = (
                ctx.clone(),
                client.clone(),
                settings.clone(),
                writer_tx.clone(),
            );
            tokio::spawn(async move {
                detect(&ctx, &client, &settings, todo, &writer_tx).await;
                drop(permit);
            });
        }
        if closed {
            break;
        }
    }
    let _ = calls.acquire_many(settings.in_flight as u32).await;
}

async fn detect(
    ctx: &Ctx,
    client: &Client<HttpConnector, Full<Bytes>>,
    settings: &DetectorSettings,
    batch: Vec<Pending>,
    writer_tx: &mpsc::Sender<ToWriter>,
) {
    let mut body = Vec::with_capacity(batch.iter().map(|p| p.image.len() + 4).sum());
    for p in &batch {
        body.extend((p.image.len() as u32).to_le_bytes());
        body.extend_from_slice(&p.image);
    }
    let body = Bytes::from(body);
    let mut last = String::new();
    for attempt in 1..=settings.max_attempts {
        ctx.progress.detector_calls.fetch_add(1, Ordering::Relaxed);
        let call = async {
            let request = Request::post(settings.url.clone())
                .header(hyper::header::CONTENT_TYPE, "application/octet-stream")
                .body(Full::new(body.clone()))
                .map_err(|e| e.to_string())?;
            let response = client.request(request).await.map_err(|e| e.to_string())?;
            let status = response.status();
            let bytes = response
                .into_body()
                .collect()
                .await
                .map_err(|e| e.to_string())?
                .to_bytes();
            if !status.is_success() {
                return Err(format!("HTTP {}", status.as_u16()));
            }
            parse_faces(&bytes, batch.len())
        };
        match tokio::time::timeout(settings.timeout, call).await {
            Ok(Ok(faces)) => {
                ctx.progress
                    .detector_images
                    .fetch_add(batch.len() as u64, Ordering::Relaxed);
                for (p, faces) in batch.into_iter().zip(faces) {
                    let mut row = p.row;
                    row.faces = faces;
                    if writer_tx.send(ToWriter::Row(row, p.ticket)).await.is_err() {
                        return;
                    }
                }
                return;
            }
            Ok(Err(e)) => last = e,
            Err(_) => last = format!("timed out after {:?}", settings.timeout),
        }
        ctx.progress.detector_errors.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(attempt, error = %last, "detector call failed");
        if attempt < settings.max_attempts {
            let wait = Duration::from_millis(100).saturating_mul(1 << attempt.min(7));
            tokio::time::sleep(wait).await;
        }
    }
    for p in batch {
        let item = Item {
            segment: p.row.segment,
            fp: p.row.fp,
            url: p.row.url,
            attempts: 0,
            target: Err((DeadKind::Detector, String::new())),
        };
        ctx.dead(
            &item,
            0,
            DeadKind::Detector,
            format!(
                "detector: {} calls failed, the last: {last}",
                settings.max_attempts
            ),
            writer_tx,
            Some(p.ticket),
        )
        .await;
    }
}

/// The detector's answer: one list of boxes per image, in order.
pub fn parse_faces(body: &[u8], n: usize) -> Result<Vec<Vec<[u32; 4]>>, String> {
    #[derive(serde::Deserialize)]
    struct Answer {
        results: Vec<One>,
    }
    #[derive(serde::Deserialize)]
    struct One {
        faces: Vec<[u32; 4]>,
    }
    let a: Answer = serde_json::from_slice(body).map_err(|e| format!("detector answer: {e}"))?;
    if a.results.len() != n {
        return Err(format!(
            "detector answered {} results for {n} images",
            a.results.len()
        ));
    }
    Ok(a.results.into_iter().map(|o| o.faces).collect())
}

fn writer_thread(
    ctx: &Ctx,
    mut writer: output::Writer,
    mut rx: mpsc::Receiver<ToWriter>,
    remote: Option<&Remote>,
    runtime: &tokio::runtime::Handle,
) {
    let roll_bytes = ctx.job.output.roll_bytes;
    let roll_after = ctx.job.output.roll_after;
    // The open file and its URLs' places in the per-host table.
    type Open = Option<(output::OpenFile, Vec<HostTicket>)>;
    let mut open: Open = None;
    let commit = |(file, tickets): (output::OpenFile, Vec<HostTicket>)| -> Result<(), BatchError> {
        let finished = file.finish()?;
        {
            let mut t = ctx.tracker();
            t.log.append(&Record::Commit {
                file: finished.no,
                urls: finished.urls.clone(),
            })?;
            t.log.sync()?;
        }
        let published = finished.publish()?;
        if let Some(r) = remote {
            // After the commit: a crash before the upload is made good by
            // the next start (`upload_missing`).
            let name = format!(
                "results/{}",
                published.file_name().unwrap_or_default().to_string_lossy()
            );
            runtime.block_on(r.put_file(&name, &published))?;
        }
        let mut t = ctx.tracker();
        for (segment, _) in &finished.urls {
            t.finish_one(*segment, &ctx.progress)?;
        }
        ctx.progress
            .log_bytes
            .store(t.log.bytes(), Ordering::Relaxed);
        drop(t);
        ctx.progress
            .done
            .fetch_add(finished.urls.len() as u64, Ordering::Relaxed);
        ctx.progress.files.fetch_add(1, Ordering::Relaxed);
        for t in tickets {
            t.done();
        }
        Ok(())
    };
    let mut step = |msg: ToWriter, open: &mut Open| -> Result<bool, BatchError> {
        match msg {
            ToWriter::Row(row, ticket) => {
                if open.is_none() {
                    *open = Some((writer.open()?, Vec::new()));
                }
                let (file, tickets) = open.as_mut().expect("just opened");
                file.push(row)?;
                tickets.push(ticket);
                if file.bytes() >= roll_bytes {
                    commit(open.take().expect("open"))?;
                }
            }
            // Only the cluster mode's writer gets these.
            ToWriter::Dead(..) | ToWriter::Read { .. } => {}
            ToWriter::Tick => {
                if open
                    .as_ref()
                    .is_some_and(|(f, _)| f.opened.elapsed() >= roll_after)
                {
                    commit(open.take().expect("open"))?;
                }
            }
            ToWriter::Close(reply) => {
                if let Some(f) = open.take() {
                    commit(f)?;
                }
                let _ = reply.send(());
                return Ok(false);
            }
        }
        Ok(true)
    };
    let started = Instant::now();
    while let Some(msg) = rx.blocking_recv() {
        match step(msg, &mut open) {
            Ok(true) => {}
            Ok(false) => return,
            Err(e) => {
                ctx.fail(e);
                // Keep draining so senders never block, committing nothing.
                while let Some(msg) = rx.blocking_recv() {
                    if let ToWriter::Close(reply) = msg {
                        let _ = reply.send(());
                        return;
                    }
                }
                return;
            }
        }
    }
    tracing::debug!(seconds = started.elapsed().as_secs_f64(), "writer ended");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detector_answers_parse() {
        let a = parse_faces(br#"{"results":[{"faces":[]},{"faces":[[1,2,3,4]]}]}"#, 2).unwrap();
        assert_eq!(a, vec![vec![], vec![[1, 2, 3, 4]]]);
        assert!(parse_faces(br#"{"results":[]}"#, 1).is_err());
        assert!(parse_faces(b"nope", 1).is_err());
    }
}
