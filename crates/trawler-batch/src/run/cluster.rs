//! Cluster mode: the same pipeline on every node, each node working only on
//! the segments it leases ([`trawler_cluster::SegmentLeases`]), each
//! segment committed once into a shared output folder.
//!
//! ```text
//!  frontier (every node reads the whole input: the duplicate set is the
//!  │          input's, first line wins)
//!  ├─ at each segment: done? held elsewhere? else claim its lease (≤ 2 at once)
//!  ▼
//!  URL tasks … ──► writer: per held segment, its rows (a Parquet file under a
//!                  temporary name) and its dead letters, until every URL
//!                  admitted under the claim has an outcome; then
//!                  fsync both, check the lease, rename
//!                    dead/seg-N.ndjson, results/seg-N.parquet,
//!                  mark seg.N done in KV, give the lease back
//! ```
//!
//! * **Idempotent commits**: a segment's files are named after it, hold
//!   every outcome of its URLs, and are renamed over whatever is there; a
//!   segment committed twice (a node that died between renaming and
//!   marking it done, redone by another) replaces the same URLs. The union
//!   of `results/seg-*.parquet` never holds a URL twice.
//! * **Take-over**: a node killed mid-segment leaves a temporary file (with
//!   its id in the name; ignored, removed by that node's next start) and a
//!   lease that expires. Each node looks, once a TTL at a segment
//!   boundary, for a segment behind it that is neither done nor held; it
//!   then ends its pass and reads the input again from the first line,
//!   claiming that segment and redoing it from its first URL. A node that
//!   reached the end of the input waits until every segment is done, and
//!   makes another pass in the same way when one is left.
//! * A claim found with its results file already there (committed, not
//!   marked) is marked done without redoing it.
//! * **On S3** (`ClusterRun::remote`): the temporary files stay in the
//!   node's folder; the commit is one `PUT` of the dead letters, then one
//!   of the results (atomic per object, like a rename); "already there"
//!   is a `HEAD`.
//! * Failed attempts are not kept: a segment redone elsewhere starts its
//!   URLs' attempts again.

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::sync::{mpsc, oneshot};
use trawler_cluster::{Claim, ClusterConfig, SegmentLeases};

use super::{dead_lines, read_pass, BatchError, Ctx, Pass, ToWriter};
use crate::frontier::{Admit, Decide, Decision, Earlier, FpSet, Frontier};
use crate::input::Lines;
use crate::log::Record;
use crate::output::{self, OpenFile, OutputError};
use crate::progress::hosts::HostTicket;
use crate::remote::Remote;

/// The key of a segment's results under an S3 output.
fn remote_results(segment: u32) -> String {
    format!("results/seg-{segment:06}.parquet")
}

/// Segments a node works on at once: the next one starts while the last
/// URLs of the one before (slow hosts, retries) finish.
const HELD: usize = 2;

/// How a node joins a cluster run.
#[derive(Debug, Clone)]
pub struct ClusterRun {
    /// NATS servers, node id and lease TTL (the flagship's config; its
    /// shard and stream settings are not used).
    pub config: ClusterConfig,
    /// The output folder every node shares: `results/seg-*.parquet`,
    /// `dead/seg-*.ndjson`. With `remote`, this node's folder of
    /// temporary files instead.
    pub output: PathBuf,
    /// `s3://bucket/prefix`: the shared output is there, each segment's
    /// two files written with one `PUT` each.
    pub remote: Option<String>,
}

impl ClusterRun {
    /// Checks the settings: `servers` are `nats://host:port` URLs,
    /// `node_id` unique among live nodes, `lease_ttl` at least 1 s
    /// (default 5 s).
    pub fn new(
        servers: Vec<String>,
        node_id: String,
        lease_ttl: Option<Duration>,
        output: PathBuf,
    ) -> Result<ClusterRun, trawler_cluster::Error> {
        if let Some(s) = servers.iter().find(|s| !s.starts_with("nats://")) {
            return Err(trawler_cluster::Error::Config {
                key: "servers",
                reason: format!("{s:?} is not a nats://host:port URL"),
            });
        }
        let mut config = ClusterConfig::new(servers, node_id);
        if let Some(ttl) = lease_ttl {
            config.lease_ttl = ttl;
        }
        config.validate()?;
        Ok(ClusterRun {
            config,
            output,
            remote: None,
        })
    }
}

/// What the tasks of a cluster run share.
pub(super) struct Shared {
    pub(super) leases: Arc<SegmentLeases>,
    /// `<output>/results`.
    pub(super) results: PathBuf,
    /// `<output>/dead`.
    pub(super) dead: PathBuf,
    /// The input files, read again by each pass.
    files: Vec<PathBuf>,
    /// The shared output on S3 (`results`, `dead` then hold only this
    /// node's temporary files).
    remote: Option<Remote>,
}

impl Shared {
    /// Joins the job's buckets and prepares the output folder, removing
    /// this node's temporary files of an earlier run.
    pub(super) async fn join(
        run: ClusterRun,
        job: &str,
        identity: &str,
        files: Vec<PathBuf>,
        s3_endpoint: Option<&str>,
    ) -> Result<Shared, BatchError> {
        let remote = match &run.remote {
            Some(url) => Some(Remote::new(url, s3_endpoint)?),
            None => None,
        };
        let results = run.output.join("results");
        let dead = run.output.join("dead");
        let suffix = format!(".{}.tmp", run.config.node_id);
        for dir in [&results, &dead] {
            let io = |what| {
                let path = dir.clone();
                move |source| OutputError::Io { path, what, source }
            };
            std::fs::create_dir_all(dir).map_err(io("creating"))?;
            for entry in std::fs::read_dir(dir).map_err(io("listing"))? {
                let entry = entry.map_err(io("listing"))?;
                if entry.file_name().to_string_lossy().ends_with(&suffix) {
                    tracing::info!(file = %entry.path().display(), "results: dropping this node's uncommitted file");
                    std::fs::remove_file(entry.path()).map_err(io("removing"))?;
                }
            }
        }
        let leases = SegmentLeases::join(run.config, job, identity).await?;
        Ok(Shared {
            leases: Arc::new(leases),
            results,
            dead,
            files,
            remote,
        })
    }

    /// What the frontier needs to tell a committed segment.
    fn clone_view(&self) -> CommitView {
        CommitView {
            results: self.results.clone(),
            remote: self.remote.clone(),
            node: self.leases.node_id().to_owned(),
        }
    }

    fn dead_file(&self, segment: u32) -> (PathBuf, PathBuf) {
        let name = format!("seg-{segment:06}.ndjson");
        (
            self.dead
                .join(format!("{name}.{}.tmp", self.leases.node_id())),
            self.dead.join(name),
        )
    }
}

/// Where a segment's committed results file would be.
struct CommitView {
    results: PathBuf,
    remote: Option<Remote>,
    node: String,
}

impl CommitView {
    /// Whether `segment`'s results file is committed in the shared output.
    fn committed(&self, segment: u32, runtime: &Handle) -> Result<bool, BatchError> {
        match &self.remote {
            Some(r) => Ok(runtime.block_on(r.exists(&remote_results(segment)))?),
            None => {
                let (_, committed) = output::segment_file(&self.results, segment, &self.node);
                Ok(committed.exists())
            }
        }
    }
}

/// Passes over the input until every segment is done: each claims what
/// nobody holds.
pub(super) fn frontier_thread(
    ctx: &Arc<Ctx>,
    c: &Shared,
    tx: mpsc::Sender<Admit>,
    stop: &Arc<AtomicBool>,
    runtime: &Handle,
) {
    let ttl = c.leases.ttl();
    let tick = ttl / 5;
    loop {
        let restart = Arc::new(AtomicBool::new(false));
        let decide: Decide = {
            let (leases, stop, runtime) = (c.leases.clone(), stop.clone(), runtime.clone());
            let shared = c.clone_view();
            let restart = restart.clone();
            let mut checked = std::time::Instant::now();
            Box::new(move |segment| {
                // Once a TTL: has a segment behind this one been left by
                // its node? Then start again from the first line to take
                // it, rather than at the end of the input.
                if checked.elapsed() >= ttl {
                    checked = std::time::Instant::now();
                    if let Ok(Left::Free(left)) = runtime.block_on(self::left(&leases, segment)) {
                        tracing::info!(segment = left, "batch: a segment nobody holds is left behind; reading the input again to take it");
                        restart.store(true, Ordering::Relaxed);
                        return Decision::Stop;
                    }
                }
                if claim(&leases, &runtime, &stop, &shared, segment) {
                    Decision::Work
                } else {
                    Decision::Skip
                }
            })
        };
        let mut frontier = Frontier::new(
            Lines::new(c.files.clone(), ctx.job.format, &ctx.job.field),
            Earlier::default(),
            ctx.job.segment_urls,
        )
        .deciding(decide);
        if read_pass(&mut frontier, &tx, &ctx.progress, stop) != Pass::Ended {
            return;
        }
        if restart.load(Ordering::Relaxed) {
            continue;
        }
        let segments = u32::try_from(frontier.skipped.lines.div_ceil(ctx.job.segment_urls))
            .unwrap_or(u32::MAX);
        // Wait until every segment is done, or one is left that nobody
        // holds (its node died or gave it back): then read again.
        loop {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            match runtime.block_on(left(&c.leases, segments)) {
                Ok(Left::Nothing) => {
                    ctx.progress.input_complete.store(1, Ordering::Relaxed);
                    return;
                }
                Ok(Left::Free(segment)) => {
                    tracing::info!(
                        segment,
                        "batch: a segment nobody holds is left; reading the input again to take it"
                    );
                    break;
                }
                Ok(Left::Held) => {}
                Err(e) => tracing::warn!(error = %e, "batch: could not read the segments' state"),
            }
            std::thread::sleep(tick);
        }
    }
}

enum Left {
    Nothing,
    Free(u32),
    Held,
}

async fn left(leases: &SegmentLeases, segments: u32) -> Result<Left, trawler_cluster::Error> {
    let done = leases.done_set().await?;
    let mut any = false;
    for segment in (0..segments).filter(|s| !done.contains(s)) {
        any = true;
        if leases.claim_of(segment).is_none() && leases.is_free(segment).await? {
            return Ok(Left::Free(segment));
        }
    }
    Ok(if any { Left::Held } else { Left::Nothing })
}

/// Whether to work on a segment: claim it when this node holds fewer than
/// [`HELD`] segments and nobody else has it.
fn claim(
    leases: &SegmentLeases,
    runtime: &Handle,
    stop: &AtomicBool,
    shared: &CommitView,
    segment: u32,
) -> bool {
    while leases.held() >= HELD {
        if stop.load(Ordering::Relaxed) {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    match runtime.block_on(leases.claim(segment)) {
        Ok(Claim::Mine) => {
            let committed = shared.committed(segment, runtime).unwrap_or_else(|e| {
                tracing::warn!(segment, error = %e, "batch: could not check the shared output; redoing the segment");
                false
            });
            if committed {
                // Committed by a node that died before marking it done.
                if let Some(claim) = leases.claim_of(segment) {
                    if let Err(e) = runtime.block_on(leases.finish(segment, claim)) {
                        tracing::warn!(segment, error = %e, "batch: could not mark a committed segment done");
                    }
                }
                return false;
            }
            true
        }
        Ok(Claim::Done | Claim::Taken) => false,
        Err(e) => {
            tracing::warn!(segment, error = %e, "batch: could not claim a segment; left for a later pass");
            false
        }
    }
}

/// A held segment's outcomes so far.
struct Open {
    claim: u64,
    file: Option<OpenFile>,
    dead: Vec<Record>,
    /// The places of its URLs with an outcome in the per-host table
    /// (counted at the commit; released when the segment is dropped).
    rows: Vec<HostTicket>,
    dead_hosts: Vec<HostTicket>,
    /// URLs with an outcome (a late outcome of an earlier claim counts
    /// once, like the current claim's).
    outcomes: FpSet,
    /// URLs admitted, once the segment was read.
    expected: Option<u64>,
}

impl Open {
    fn discard(self) {
        if let Some(f) = self.file {
            let tmp = f.tmp().to_owned();
            drop(f);
            let _ = std::fs::remove_file(tmp);
        }
    }
}

/// The writer of a cluster node: one results file per held segment,
/// committed when the segment is complete.
pub(super) fn writer_thread(
    ctx: &Ctx,
    c: &Shared,
    writer: output::Writer,
    mut rx: mpsc::Receiver<ToWriter>,
    runtime: &Handle,
) {
    let mut open: HashMap<u32, Open> = HashMap::new();
    let mut close: Option<oneshot::Sender<()>> = None;
    while let Some(msg) = rx.blocking_recv() {
        match step(ctx, c, &writer, &mut open, msg, runtime) {
            Ok(None) => {}
            Ok(Some(reply)) => {
                close = Some(reply);
                break;
            }
            Err(e) => {
                ctx.fail(e);
                // Keep draining so senders never block, committing nothing.
                while let Some(msg) = rx.blocking_recv() {
                    if let ToWriter::Close(reply) = msg {
                        close = Some(reply);
                        break;
                    }
                }
                break;
            }
        }
    }
    // What is not committed is another node's (or the next run's) to do.
    for (_, o) in open.drain() {
        o.discard();
    }
    ctx.progress.segments_held.store(0, Ordering::Relaxed);
    if let Some(reply) = close {
        let _ = reply.send(());
    }
}

/// The state of `segment` under its current claim; `None` when not held.
fn current<'a>(
    leases: &SegmentLeases,
    open: &'a mut HashMap<u32, Open>,
    segment: u32,
) -> Option<&'a mut Open> {
    let Some(claim) = leases.claim_of(segment) else {
        if let Some(o) = open.remove(&segment) {
            o.discard();
        }
        return None;
    };
    if open.get(&segment).is_some_and(|o| o.claim != claim) {
        open.remove(&segment).expect("there").discard();
    }
    Some(open.entry(segment).or_insert_with(|| Open {
        claim,
        file: None,
        dead: Vec::new(),
        rows: Vec::new(),
        dead_hosts: Vec::new(),
        outcomes: FpSet::default(),
        expected: None,
    }))
}

fn step(
    ctx: &Ctx,
    c: &Shared,
    writer: &output::Writer,
    open: &mut HashMap<u32, Open>,
    msg: ToWriter,
    runtime: &Handle,
) -> Result<Option<oneshot::Sender<()>>, BatchError> {
    let leases = &c.leases;
    let segment = match msg {
        ToWriter::Row(row, ticket) => {
            let segment = row.segment;
            if let Some(o) = current(leases, open, segment) {
                if o.outcomes.insert(row.fp) {
                    if o.file.is_none() {
                        let (tmp, _) = output::segment_file(&c.results, segment, leases.node_id());
                        o.file = Some(writer.open_at(segment, tmp)?);
                    }
                    o.file.as_mut().expect("just opened").push(row)?;
                    o.rows.push(ticket);
                }
            }
            segment
        }
        ToWriter::Dead(record, ticket) => {
            let Record::Dead { segment, fp, .. } = record else {
                return Ok(None);
            };
            if let Some(o) = current(leases, open, segment) {
                if o.outcomes.insert(fp) {
                    o.dead.push(record);
                    o.dead_hosts.extend(ticket);
                }
            }
            segment
        }
        ToWriter::Read {
            segment,
            urls,
            claim,
        } => {
            match current(leases, open, segment) {
                Some(o) if o.claim == claim => o.expected = Some(urls),
                _ => {
                    if let Some(o) = open.remove(&segment) {
                        o.discard();
                    }
                }
            }
            segment
        }
        ToWriter::Tick => {
            let lost: Vec<u32> = open
                .iter()
                .filter(|(s, o)| leases.claim_of(**s) != Some(o.claim))
                .map(|(s, _)| *s)
                .collect();
            for s in lost {
                tracing::warn!(
                    segment = s,
                    "batch: segment lease lost; its work so far dropped"
                );
                open.remove(&s).expect("there").discard();
            }
            ctx.progress
                .segments_held
                .store(leases.held() as u64, Ordering::Relaxed);
            return Ok(None);
        }
        ToWriter::Close(reply) => return Ok(Some(reply)),
    };
    let complete = open
        .get(&segment)
        .is_some_and(|o| o.expected == Some(o.outcomes.len() as u64));
    if complete {
        let o = open.remove(&segment).expect("there");
        commit(ctx, c, writer, segment, o, runtime)?;
    }
    Ok(None)
}

/// Commits a complete segment: both files fsynced under their temporary
/// names, the lease checked, renamed (dead letters first: the results
/// file's presence means the segment is committed), marked done.
fn commit(
    ctx: &Ctx,
    c: &Shared,
    writer: &output::Writer,
    segment: u32,
    o: Open,
    runtime: &Handle,
) -> Result<(), BatchError> {
    let leases = &c.leases;
    let (tmp, path) = output::segment_file(&c.results, segment, leases.node_id());
    let file = match o.file {
        Some(f) => f,
        None => writer.open_at(segment, tmp)?,
    };
    let finished = file.finish()?;
    let (dead_tmp, dead_path) = c.dead_file(segment);
    let io = |what| {
        let path = dead_tmp.clone();
        move |source| OutputError::Io { path, what, source }
    };
    {
        let mut f = std::fs::File::create(&dead_tmp).map_err(io("creating"))?;
        f.write_all(&dead_lines(o.dead.iter()))
            .map_err(io("writing"))?;
        f.sync_all().map_err(io("syncing"))?;
    }
    // Fenced: only while the lease is surely alive for a while yet.
    if !leases.valid(segment, o.claim, leases.ttl() / 10) {
        tracing::warn!(
            segment,
            "batch: segment lease lost before its commit; dropped"
        );
        let _ = std::fs::remove_file(finished.tmp());
        let _ = std::fs::remove_file(&dead_tmp);
        return Ok(());
    }
    match &c.remote {
        Some(r) => {
            // One PUT each, dead letters first: the results object's
            // presence means the segment is committed.
            let dead_name = format!("dead/seg-{segment:06}.ndjson");
            let uploaded = runtime
                .block_on(r.put_file(&dead_name, &dead_tmp))
                .and_then(|_| {
                    runtime.block_on(r.put_file(&remote_results(segment), finished.tmp()))
                });
            let _ = std::fs::remove_file(finished.tmp());
            let _ = std::fs::remove_file(&dead_tmp);
            uploaded?;
        }
        None => {
            std::fs::rename(&dead_tmp, &dead_path)
                .and_then(|_| crate::log::sync_dir(&dead_path))
                .map_err(io("publishing"))?;
            finished.publish_as(path)?;
        }
    }
    if let Err(e) = runtime.block_on(leases.finish(segment, o.claim)) {
        // The file stands and the lease is given back: a later pass
        // claims the segment, sees the file and marks it done.
        tracing::warn!(segment, error = %e, "batch: could not mark a committed segment done");
    }
    let p = &ctx.progress;
    p.done
        .fetch_add(finished.urls.len() as u64, Ordering::Relaxed);
    for r in &o.dead {
        if let Record::Dead { kind, .. } = r {
            p.dead_one(*kind);
        }
    }
    for t in o.rows {
        t.done();
    }
    for t in o.dead_hosts {
        t.dead();
    }
    p.files.fetch_add(1, Ordering::Relaxed);
    p.segments_done.fetch_add(1, Ordering::Relaxed);
    p.segments_held
        .store(leases.held() as u64, Ordering::Relaxed);
    tracing::debug!(
        segment,
        urls = finished.urls.len(),
        dead = o.dead.len(),
        "batch: segment committed"
    );
    Ok(())
}
