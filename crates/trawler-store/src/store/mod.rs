//! The running store: how appends, reads, flushes, compactions and
//! retention share the data. See the crate docs for the design.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::block::{Block, BlockWriter, IndexEntry};
use crate::catalog::{Catalog, SeriesMeta};
use crate::error::IoContext;
use crate::head::{sort_dedup, Head};
use crate::manifest::{block_path, sync_dir, Manifest};
use crate::types::{DAY_MS, HOUR_MS};
use crate::wal::{self, WalSample, WalWriter};
use crate::{
    agg, Aggregate, Appended, Error, Point, Resolution, Result, Sample, SeriesId, SeriesInfo,
    SeriesKey, Stats, StoreConfig, SyncPolicy, Value, ValueKind,
};

/// Level given to the single block a finished day is merged into.
const FINAL_LEVEL: u32 = 15;

/// An embedded time-series store. `Send + Sync`: share it in an `Arc`.
/// Every method is synchronous; from async code call them through
/// `spawn_blocking` or a dedicated writer thread (see the crate docs).
#[derive(Debug)]
pub struct Store {
    inner: Arc<Inner>,
    /// The sync, flush and compaction threads (see [`Workers`]).
    background: Mutex<Vec<JoinHandle<()>>>,
}

#[derive(Debug)]
struct Inner {
    config: StoreConfig,
    catalog: RwLock<Catalog>,
    /// Serialises appends: the WAL order is the order samples reach the head.
    wal: Mutex<WalWriter>,
    mem: RwLock<Mem>,
    sync: Mutex<SyncState>,
    synced: Condvar,
    /// The manifest, held only to allocate block ids and to commit a
    /// finished flush, merge or retention step: never during the work, so
    /// a long compaction does not hold up a flush (nor a flush an append).
    manifest: Mutex<Manifest>,
    /// Serialises flushes: at most one head is frozen at a time.
    flushing: Mutex<()>,
    /// Serialises compactions and retention (they choose their inputs from
    /// the block list and must not pick the same block twice).
    compacting: Mutex<()>,
    stop: Mutex<bool>,
    wake: Condvar,
    closed: AtomicBool,
    /// Set by a failed fsync, with its error: no more writes (see
    /// [`Error::Poisoned`]).
    poisoned: Mutex<Option<String>>,
    compactions: AtomicU64,
    flushes: AtomicU64,
    /// Bytes of the WAL's segments: grown by appends, recounted from the
    /// folder when a flush removes segments, so that `stats` (read every
    /// second) never lists the folder.
    wal_bytes: AtomicU64,
    corrupt: AtomicU64,
    stale: AtomicU64,
    /// Held (an exclusive `flock`) for as long as the store is open, so a
    /// second process cannot write the same folder; the kernel releases it
    /// when the process dies, even by `kill -9`.
    _lock: std::fs::File,
}

#[derive(Debug, Default)]
struct SyncState {
    /// WAL records known to be fsynced.
    synced_lsn: u64,
    /// An fsync is running; others wait for it instead of starting their own.
    leader: bool,
}

/// What readers see, swapped under a short write lock.
#[derive(Debug, Default)]
struct Mem {
    active: Head,
    /// A head being written to blocks, with the last WAL segment it covers.
    frozen: Option<(Arc<Head>, u64)>,
    blocks: Arc<Vec<Arc<Block>>>,
    /// Per series: the latest point (ts = i64::MIN when none).
    latest: Vec<(i64, u64)>,
    /// Per series: samples at or before this time are stale (already sealed
    /// into a block or a frozen head). Keeps a series' blocks disjoint in time.
    sealed: Vec<i64>,
    /// The newest timestamp stored; retention counts back from it.
    newest: i64,
    /// When the active head received its first sample.
    started: Option<Instant>,
}

impl Mem {
    fn grow(&mut self, n: usize) {
        if self.latest.len() < n {
            self.latest.resize(n, (i64::MIN, 0));
            self.sealed.resize(n, i64::MIN);
        }
    }

    /// Adds a sample unless it is stale; returns whether it was taken.
    fn insert(&mut self, s: WalSample) -> bool {
        let i = s.series as usize;
        self.grow(i + 1);
        if s.ts <= self.sealed[i] {
            return false;
        }
        self.active.push(s.series, s.ts, s.bits);
        if s.ts >= self.latest[i].0 {
            self.latest[i] = (s.ts, s.bits);
        }
        self.newest = self.newest.max(s.ts);
        true
    }

    /// Moves the active head out; its samples become the series' floor.
    fn freeze(&mut self) -> Head {
        let head = std::mem::take(&mut self.active);
        for (i, v) in head.series.iter().enumerate() {
            if let Some(max) = v.iter().map(|p| p.0).max() {
                self.sealed[i] = self.sealed[i].max(max);
            }
        }
        self.started = None;
        head
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
fn read<T>(m: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    m.read().unwrap_or_else(|e| e.into_inner())
}
fn write<T>(m: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    m.write().unwrap_or_else(|e| e.into_inner())
}

/// The latest point of one series, as [`Store::for_each_latest`] yields it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LatestEntry<'a> {
    /// The series.
    pub id: SeriesId,
    /// Its entity.
    pub entity: u64,
    /// Its metric.
    pub metric: &'a str,
    /// The latest point.
    pub point: Point,
}

impl Store {
    pub(crate) fn open(config: StoreConfig) -> Result<Self> {
        let dir = config.dir.clone();
        for d in [dir.clone(), dir.join("wal"), dir.join("blocks")] {
            std::fs::create_dir_all(&d).io("creating", &d)?;
        }
        let lock = lock_dir(&dir)?;
        let catalog = Catalog::open(&dir)?;
        let manifest = match Manifest::load(&dir)? {
            Some(m) => m,
            None => {
                if std::fs::read_dir(dir.join("blocks"))
                    .io("listing", &dir)?
                    .next()
                    .is_some()
                {
                    return Err(Error::Corrupt {
                        path: Manifest::path(&dir),
                        detail: "missing while blocks/ holds files; restore it from a backup"
                            .into(),
                    });
                }
                let m = Manifest {
                    wal_through: 0,
                    next_block: 1,
                    blocks: Vec::new(),
                };
                m.save(&dir)?;
                m
            }
        };
        remove_strays(&dir, &manifest)?;

        let mut mem = Mem {
            newest: i64::MIN,
            ..Mem::default()
        };
        mem.grow(catalog.series.len());
        let corrupt = AtomicU64::new(0);
        let mut blocks = Vec::new();
        for &id in &manifest.blocks {
            let path = block_path(&dir, id);
            match Block::open(path, id) {
                Ok(b) => blocks.push(Arc::new(b)),
                Err(
                    e @ (Error::UnsupportedVersion { .. }
                    | Error::BadMagic { .. }
                    | Error::Io { .. }),
                ) => return Err(e),
                Err(e) => {
                    tracing::error!(error = %e, "skipping a corrupt block; the rest of the store stays readable");
                    corrupt.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        for b in &blocks {
            mem.newest = mem.newest.max(b.meta.max_ts);
            for page in 0..b.index_pages() {
                let entries = match b.index_page(page) {
                    Ok(e) => e,
                    Err(e) => {
                        if b.report(&e) {
                            corrupt.fetch_add(1, Ordering::Relaxed);
                        }
                        continue;
                    }
                };
                for e in entries {
                    let i = e.series as usize;
                    mem.grow(i + 1);
                    mem.sealed[i] = mem.sealed[i].max(e.max_ts);
                    if e.max_ts >= mem.latest[i].0 {
                        mem.latest[i] = (e.max_ts, e.last_bits);
                    }
                }
            }
        }
        mem.blocks = Arc::new(blocks);

        // Replay the WAL segments not yet in blocks. Each segment boundary
        // was a freeze, so seal between segments exactly as the run did.
        let segments = wal::list_segments(&dir)?;
        let live: Vec<u64> = segments
            .iter()
            .copied()
            .filter(|&s| s > manifest.wal_through)
            .collect();
        for &seq in segments.iter().filter(|&&s| s <= manifest.wal_through) {
            let p = wal::segment_path(&dir, seq);
            std::fs::remove_file(&p).io("removing", &p)?;
        }
        let mut unknown = 0u64;
        for (k, &seq) in live.iter().enumerate() {
            let path = wal::segment_path(&dir, seq);
            let bytes = std::fs::read(&path).io("reading", &path)?;
            let decoded = wal::decode_segment(&bytes, &path)?;
            if !decoded.clean {
                if k + 1 == live.len() {
                    tracing::warn!(
                        file = %path.display(),
                        kept_bytes = decoded.valid_len,
                        dropped_bytes = bytes.len() - decoded.valid_len,
                        "truncated a torn WAL tail"
                    );
                    let f = std::fs::OpenOptions::new()
                        .write(true)
                        .open(&path)
                        .io("opening", &path)?;
                    f.set_len(decoded.valid_len as u64)
                        .io("truncating", &path)?;
                    f.sync_all().io("fsync", &path)?;
                } else {
                    tracing::error!(
                        file = %path.display(),
                        kept_bytes = decoded.valid_len,
                        lost_bytes = bytes.len() - decoded.valid_len,
                        "corrupt record inside a WAL segment; the records after it in this segment are lost"
                    );
                }
            }
            for s in decoded.samples {
                if s.series >= catalog.series.len() as u64 {
                    unknown += 1;
                    continue;
                }
                mem.insert(s);
            }
            if k + 1 < live.len() {
                let head = mem.freeze();
                mem.active = head;
                mem.started = None;
            }
        }
        if unknown > 0 {
            tracing::warn!(samples = unknown, "WAL samples of series missing from the catalog were skipped (lost catalog tail after a power loss)");
        }
        if mem.active.samples > 0 {
            mem.started = Some(Instant::now());
        }
        let writer = match live.last() {
            Some(&seq) => WalWriter::reopen(&dir, seq)?,
            None => WalWriter::create(
                &dir,
                segments
                    .last()
                    .copied()
                    .unwrap_or(0)
                    .max(manifest.wal_through)
                    + 1,
            )?,
        };
        sync_dir(&dir.join("wal"))?;

        let inner = Arc::new(Inner {
            config,
            catalog: RwLock::new(catalog),
            wal: Mutex::new(writer),
            mem: RwLock::new(mem),
            sync: Mutex::new(SyncState::default()),
            synced: Condvar::new(),
            manifest: Mutex::new(manifest),
            flushing: Mutex::new(()),
            compacting: Mutex::new(()),
            stop: Mutex::new(false),
            wake: Condvar::new(),
            closed: AtomicBool::new(false),
            poisoned: Mutex::new(None),
            compactions: AtomicU64::new(0),
            flushes: AtomicU64::new(0),
            wal_bytes: AtomicU64::new(dir_bytes(&dir.join("wal"))),
            corrupt,
            stale: AtomicU64::new(0),
            _lock: lock,
        });
        let background = if inner.config.background {
            Workers::spawn(&inner, &dir)?
        } else {
            Vec::new()
        };
        Ok(Self {
            inner,
            background: Mutex::new(background),
        })
    }

    /// The data folder.
    pub fn dir(&self) -> &Path {
        &self.inner.config.dir
    }

    /// Gets or creates a series. New series are written to the catalog
    /// before the id is returned, so ids survive restarts.
    pub fn series(&self, key: SeriesKey<'_>, kind: ValueKind) -> Result<SeriesId> {
        if let Some(id) = read(&self.inner.catalog).lookup(&key, kind)? {
            return Ok(id);
        }
        Ok(self.series_batch(&[(key, kind)])?[0])
    }

    /// Gets or creates many series with one catalog write (what a job does
    /// at start-up for its million entities).
    pub fn series_batch(&self, keys: &[(SeriesKey<'_>, ValueKind)]) -> Result<Vec<SeriesId>> {
        self.inner.check_poisoned()?;
        let ids = write(&self.inner.catalog).get_or_create(keys)?;
        let n = read(&self.inner.catalog).series.len();
        write(&self.inner.mem).grow(n);
        Ok(ids)
    }

    /// Appends a batch. Returns once the batch is durable under the
    /// configured [`SyncPolicy`]: written to the WAL (survives `kill -9`),
    /// and with [`SyncPolicy::Always`] also fsynced, sharing the fsync with
    /// concurrent callers. The whole batch is refused, and nothing written,
    /// if a sample names an unknown series or has the wrong value kind.
    pub fn append(&self, samples: &[Sample]) -> Result<Appended> {
        let inner = &self.inner;
        if inner.closed.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        inner.check_poisoned()?;
        {
            let cat = read(&inner.catalog);
            for s in samples {
                let meta = cat
                    .series
                    .get(s.series.0 as usize)
                    .ok_or(Error::UnknownSeries(s.series.0))?;
                if meta.kind != s.value.kind() {
                    let info = cat.info(s.series.0);
                    return Err(Error::KindMismatch {
                        job: cat.job_name(meta.job).to_owned(),
                        entity: info.entity,
                        metric: info.metric,
                        existing: meta.kind,
                        requested: s.value.kind(),
                    });
                }
            }
        }
        let lsn;
        let mut accepted = 0;
        {
            let mut wal = lock(&inner.wal);
            let mut mem = write(&inner.mem);
            let max_id = samples
                .iter()
                .map(|s| s.series.0 as usize + 1)
                .max()
                .unwrap_or(0);
            mem.grow(max_id);
            // Samples older than the retention window would be dropped with
            // their block; refusing them keeps restarts deterministic (a
            // dropped block's seal is not remembered).
            let cutoff = mem
                .newest
                .saturating_sub(inner.config.retention.as_millis() as i64);
            let fresh: Vec<WalSample> = samples
                .iter()
                .filter(|s| s.ts_ms > mem.sealed[s.series.0 as usize] && s.ts_ms >= cutoff)
                .map(|s| WalSample {
                    series: s.series.0,
                    ts: s.ts_ms,
                    bits: s.value.to_bits(),
                })
                .collect();
            if !fresh.is_empty() {
                let mut buf = std::mem::take(&mut wal.buf);
                wal::encode_batch(&mut buf, fresh.iter().copied());
                let written = buf.len() as u64;
                wal.buf = buf;
                wal.write_buf()?;
                inner.wal_bytes.fetch_add(written, Ordering::Relaxed);
                for s in fresh {
                    accepted += usize::from(mem.insert(s));
                }
                mem.started.get_or_insert_with(Instant::now);
            }
            lsn = wal.lsn;
        }
        // Ingest never waits on maintenance: past half its limit the head is
        // frozen and written by the flush thread while appends go on into a
        // fresh head. Only when a whole new head fills before the previous
        // one is written (or without background threads) does the appender
        // wait: that backpressure is what bounds memory.
        let bytes = read(&inner.mem).active.memory_bytes();
        if bytes >= inner.config.head_max_bytes as u64 {
            let flushing = lock(&inner.flushing);
            if read(&inner.mem).active.memory_bytes() >= inner.config.head_max_bytes as u64 {
                inner.flush_head(&flushing)?;
            }
        } else if bytes >= inner.flush_threshold() {
            inner.wake.notify_all();
        }
        let stale = samples.len() - accepted;
        if stale > 0 {
            inner.stale.fetch_add(stale as u64, Ordering::Relaxed);
        }
        if inner.config.sync == SyncPolicy::Always && accepted > 0 {
            inner.sync_to(lsn)?;
        }
        Ok(Appended { accepted, stale })
    }

    /// Fsyncs the WAL (and catalog) now.
    pub fn sync(&self) -> Result<()> {
        let lsn = lock(&self.inner.wal).lsn;
        self.inner.sync_to(lsn)
    }

    /// Writes the head to blocks now, then runs the compactions that are
    /// due and retention: what the background thread does on its schedule.
    pub fn flush(&self) -> Result<()> {
        {
            let flushing = lock(&self.inner.flushing);
            self.inner.flush_head(&flushing)?;
        }
        self.inner.maintain(false)
    }

    /// Merges every day's blocks into one block per day, then runs
    /// retention (finished days are merged anyway; this also merges the
    /// current day, e.g. before measuring bytes on disk).
    pub fn compact(&self) -> Result<()> {
        self.inner.maintain(true)
    }

    /// Flushes the head, fsyncs, and stops the background thread. Appends
    /// after `close` fail with [`Error::Closed`].
    pub fn close(self) -> Result<()> {
        self.stop_background();
        self.inner.closed.store(true, Ordering::Release);
        self.flush()?;
        self.sync()
    }

    fn stop_background(&self) {
        *lock(&self.inner.stop) = true;
        self.inner.wake.notify_all();
        for h in std::mem::take(&mut *lock(&self.background)) {
            let _ = h.join();
        }
    }

    fn kind(&self, id: SeriesId) -> Result<ValueKind> {
        read(&self.inner.catalog)
            .series
            .get(id.0 as usize)
            .map(|m| m.kind)
            .ok_or(Error::UnknownSeries(id.0))
    }

    /// Raw points of one series with `from_ms <= ts < to_ms`, in time order.
    ///
    /// A block part that fails its checksum is logged with the file name,
    /// counted in [`Stats::corrupt_blocks`], and left out; the rest is returned.
    pub fn range(&self, id: SeriesId, from_ms: i64, to_ms: i64) -> Result<Vec<Point>> {
        let kind = self.kind(id)?;
        Ok(self
            .inner
            .points(id.0, kind, from_ms, to_ms)?
            .into_iter()
            .map(|(ts_ms, bits)| Point {
                ts_ms,
                value: Value::from_bits(kind, bits),
            })
            .collect())
    }

    /// The points of `[from_ms, to_ms)` aggregated into buckets of `step_ms`
    /// aligned to the epoch. When the step is whole hours and the range is
    /// hour-aligned, the answer comes from the hourly rollups without
    /// reading raw points.
    pub fn downsample(
        &self,
        id: SeriesId,
        from_ms: i64,
        to_ms: i64,
        step_ms: i64,
    ) -> Result<Vec<Aggregate>> {
        if step_ms <= 0 {
            return Err(Error::Config {
                key: "step_ms",
                reason: format!("must be positive, got {step_ms}"),
            });
        }
        let kind = self.kind(id)?;
        let mut out = Vec::new();
        if step_ms % HOUR_MS == 0 && from_ms % HOUR_MS == 0 && to_ms % HOUR_MS == 0 {
            for mut a in self.inner.hourly(id.0, kind, from_ms, to_ms)? {
                a.start_ms = a.start_ms.div_euclid(step_ms) * step_ms;
                agg::push_merged(&mut out, a);
            }
        } else {
            agg::aggregate(
                kind,
                &self.inner.points(id.0, kind, from_ms, to_ms)?,
                step_ms,
                &mut out,
            );
        }
        Ok(out)
    }

    /// Stored rollups of the buckets starting in `[from_ms, to_ms)` (`from_ms`
    /// rounded down to the bucket). Daily rollups are merged from hourly
    /// ones: 24 small records per day, never raw points.
    pub fn rollups(
        &self,
        id: SeriesId,
        from_ms: i64,
        to_ms: i64,
        resolution: Resolution,
    ) -> Result<Vec<Aggregate>> {
        let kind = self.kind(id)?;
        let size = resolution.millis();
        let from = from_ms.div_euclid(size) * size;
        let hours = self.inner.hourly(id.0, kind, from, to_ms)?;
        if resolution == Resolution::Hour {
            return Ok(hours);
        }
        let mut out = Vec::new();
        for mut a in hours {
            a.start_ms = a.start_ms.div_euclid(DAY_MS) * DAY_MS;
            agg::push_merged(&mut out, a);
        }
        Ok(out)
    }

    /// The latest point of a series (from memory).
    pub fn latest(&self, id: SeriesId) -> Result<Option<Point>> {
        let kind = self.kind(id)?;
        let mem = read(&self.inner.mem);
        Ok(mem
            .latest
            .get(id.0 as usize)
            .filter(|l| l.0 != i64::MIN)
            .map(|&(ts_ms, bits)| Point {
                ts_ms,
                value: Value::from_bits(kind, bits),
            }))
    }

    /// Calls `f` with the latest point of every series of `job` that has
    /// one, in series-id order: a walk over two in-memory tables, made for
    /// rebuilding live views at start-up.
    pub fn for_each_latest(&self, job: &str, mut f: impl FnMut(LatestEntry<'_>)) -> Result<()> {
        let cat = read(&self.inner.catalog);
        let Some(job_id) = cat.job_id(job) else {
            return Ok(());
        };
        let mem = read(&self.inner.mem);
        for (i, meta) in cat.series.iter().enumerate() {
            if meta.job != job_id {
                continue;
            }
            let Some(&(ts_ms, bits)) = mem.latest.get(i).filter(|l| l.0 != i64::MIN) else {
                continue;
            };
            f(LatestEntry {
                id: SeriesId(i as u64),
                entity: meta.entity,
                metric: cat.metric_name(meta.metric),
                point: Point {
                    ts_ms,
                    value: Value::from_bits(meta.kind, bits),
                },
            });
        }
        Ok(())
    }

    /// Every series of `job`, in id order.
    pub fn list_series(&self, job: &str) -> Vec<SeriesInfo> {
        let cat = read(&self.inner.catalog);
        let Some(job_id) = cat.job_id(job) else {
            return Vec::new();
        };
        (0..cat.series.len() as u64)
            .filter(|&i| cat.series[i as usize].job == job_id)
            .map(|i| cat.info(i))
            .collect()
    }

    /// Why the store refuses writes, once an fsync has failed (see
    /// [`Error::Poisoned`]); `None` while it takes them.
    pub fn poisoned(&self) -> Option<String> {
        lock(&self.inner.poisoned).clone()
    }

    /// Figures for `/metrics`.
    pub fn stats(&self) -> Stats {
        let inner = &self.inner;
        let (cat_bytes, cat_mem, series) = {
            let c = read(&inner.catalog);
            (c.file_len(), c.memory_bytes(), c.series.len() as u64)
        };
        let mem = read(&inner.mem);
        let block_bytes: u64 = mem.blocks.iter().map(|b| b.bytes).sum();
        let block_samples: u64 = mem.blocks.iter().map(|b| b.meta.samples).sum();
        let frozen = mem.frozen.as_ref().map(|f| &f.0);
        let head_samples = mem.active.samples + frozen.map_or(0, |f| f.samples);
        let memory_bytes = mem.active.memory_bytes()
            + frozen.map_or(0, |f| f.memory_bytes())
            + (mem.latest.capacity() * 16 + mem.sealed.capacity() * 8) as u64
            + cat_mem;
        let blocks = mem.blocks.len() as u64;
        drop(mem);
        let wal_bytes = inner.wal_bytes.load(Ordering::Relaxed);
        let manifest_bytes =
            std::fs::metadata(Manifest::path(&inner.config.dir)).map_or(0, |m| m.len());
        Stats {
            bytes_on_disk: block_bytes + wal_bytes + cat_bytes + manifest_bytes,
            block_bytes,
            samples: block_samples + head_samples,
            head_samples,
            series,
            memory_bytes,
            wal_bytes,
            compactions: inner.compactions.load(Ordering::Relaxed),
            flushes: inner.flushes.load(Ordering::Relaxed),
            blocks,
            corrupt_blocks: inner.corrupt.load(Ordering::Relaxed),
            stale_samples: inner.stale.load(Ordering::Relaxed),
        }
    }

    /// Reads every block completely and returns the corruptions found
    /// (each names its file), for an operator's `verify` command.
    pub fn verify(&self) -> Vec<Error> {
        let blocks = read(&self.inner.mem).blocks.clone();
        let kinds: Vec<ValueKind> = read(&self.inner.catalog)
            .series
            .iter()
            .map(|m| m.kind)
            .collect();
        let mut errors = Vec::new();
        for b in blocks.iter() {
            let res = (|| {
                for page in 0..b.index_pages() {
                    for e in b.index_page(page)? {
                        let kind = kinds
                            .get(e.series as usize)
                            .copied()
                            .unwrap_or(ValueKind::Int);
                        b.read_points(&e, kind, i64::MIN, i64::MAX, &mut Vec::new())?;
                        b.read_rollups(&e, kind, &mut Vec::new())?;
                    }
                }
                Ok(())
            })();
            if let Err(e) = res {
                if b.report(&e) {
                    self.inner.corrupt.fetch_add(1, Ordering::Relaxed);
                }
                errors.push(e);
            }
        }
        errors
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        self.stop_background();
        if !self.inner.closed.load(Ordering::Acquire) {
            let _ = self.sync();
        }
    }
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// Takes the folder's lock file, or says which folder is in use.
fn lock_dir(dir: &Path) -> Result<std::fs::File> {
    let path = dir.join("LOCK");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .io("opening", &path)?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(Error::Locked { path: dir.into() }),
        Err(std::fs::TryLockError::Error(e)) => Err(e).io("locking", &path),
    }
}

/// Deletes block files the manifest does not list (a crashed flush or
/// compaction) and temporary files.
fn remove_strays(dir: &Path, manifest: &Manifest) -> Result<()> {
    let blocks = dir.join("blocks");
    for entry in std::fs::read_dir(&blocks).io("listing", &blocks)? {
        let path = entry.io("listing", &blocks)?.path();
        let listed = path
            .file_stem()
            .and_then(|s| s.to_str())
            .and_then(|s| s.parse::<u64>().ok())
            .is_some_and(|id| {
                manifest.blocks.contains(&id) && path.extension().is_some_and(|e| e == "blk")
            });
        if !listed {
            tracing::info!(file = %path.display(), "removing a block file left by an interrupted flush or compaction");
            std::fs::remove_file(&path).io("removing", &path)?;
        }
    }
    Ok(())
}

/// A background thread: name, nice value, tick, and its work.
type Worker = (&'static str, i32, Duration, fn(&Inner));

/// The store's background threads. Each waits on `Inner::wake` (or its
/// tick) and does one kind of work, so none holds up another: the WAL's
/// fsync keeps its interval while a day of blocks is being merged, and a
/// flush never waits for a compaction. Flushing and compaction run at a
/// lower CPU priority (`nice`), so on a small machine the crawl and the
/// API get the cores first and maintenance uses what is left.
struct Workers;

impl Workers {
    /// Nice value of the flush thread.
    const FLUSH_NICE: i32 = 5;
    /// Nice value of the compaction thread: the longest and least urgent.
    const COMPACT_NICE: i32 = 10;

    fn spawn(inner: &Arc<Inner>, dir: &Path) -> Result<Vec<JoinHandle<()>>> {
        let sync_tick = match inner.config.sync {
            SyncPolicy::Interval(d) => (d / 2).min(Duration::from_millis(200)),
            SyncPolicy::Always => Duration::from_millis(200),
        };
        let workers: [Worker; 3] = [
            ("trawler-store-sync", 0, sync_tick, Inner::sync_due),
            (
                "trawler-store-flush",
                Self::FLUSH_NICE,
                Duration::from_millis(200),
                Inner::flush_due,
            ),
            (
                "trawler-store-compact",
                Self::COMPACT_NICE,
                Duration::from_secs(1),
                Inner::compact_due,
            ),
        ];
        let mut handles = Vec::new();
        for (name, nice, tick, work) in workers {
            let weak = Arc::downgrade(inner);
            let handle = std::thread::Builder::new()
                .name(name.into())
                .spawn(move || {
                    lower_priority(nice);
                    Self::run(weak, tick, work)
                })
                .io("spawning a background thread of", dir)?;
            handles.push(handle);
        }
        Ok(handles)
    }

    fn run(inner: Weak<Inner>, tick: Duration, work: fn(&Inner)) {
        loop {
            let Some(i) = inner.upgrade() else { return };
            {
                let stop = lock(&i.stop);
                if *stop {
                    return;
                }
                let (stop, _) = i
                    .wake
                    .wait_timeout(stop, tick)
                    .unwrap_or_else(|e| e.into_inner());
                if *stop {
                    return;
                }
            }
            work(&i);
        }
    }
}

/// Lowers the calling thread's CPU priority (Linux: `setpriority` on the
/// thread id affects that thread only). Best effort: a failure only means
/// maintenance competes with ingest as an equal.
fn lower_priority(nice: i32) {
    if nice == 0 {
        return;
    }
    #[cfg(target_os = "linux")]
    if let Err(e) = rustix::process::setpriority_process(Some(rustix::thread::gettid()), nice) {
        tracing::debug!(error = %e, nice, "could not lower a store thread's priority");
    }
}

impl Inner {
    fn dir(&self) -> &Path {
        &self.config.dir
    }

    /// The head size at which the flush thread freezes and writes it: half
    /// the limit, so a whole second head can fill while the first is
    /// written before the appender has to wait.
    fn flush_threshold(&self) -> u64 {
        self.config.head_max_bytes as u64 / 2
    }

    fn stopping(&self) -> bool {
        *lock(&self.stop)
    }

    /// Fails once an fsync has failed.
    fn check_poisoned(&self) -> Result<()> {
        match &*lock(&self.poisoned) {
            Some(detail) => Err(Error::Poisoned {
                detail: detail.clone(),
            }),
            None => Ok(()),
        }
    }

    /// The sync thread's work: fsync what was written since the last one.
    fn sync_due(&self) {
        if lock(&self.poisoned).is_some() {
            return;
        }
        let lsn = lock(&self.wal).lsn;
        if lsn > lock(&self.sync).synced_lsn {
            // A failure is logged and poisons the store inside `sync_to`.
            let _ = self.sync_to(lsn);
        }
    }

    /// The flush thread's work: write the head once it is old or big
    /// enough, then let the compaction thread look at the new block.
    fn flush_due(&self) {
        let due = {
            let mem = read(&self.mem);
            mem.started
                .is_some_and(|t| t.elapsed() >= self.config.flush_interval)
                || mem.active.memory_bytes() >= self.flush_threshold()
        };
        if !due {
            return;
        }
        let flushing = lock(&self.flushing);
        let started = Instant::now();
        match self.flush_head(&flushing) {
            Ok(()) => {
                tracing::debug!(ms = started.elapsed().as_millis() as u64, "head flushed");
                self.wake.notify_all();
            }
            Err(e) => tracing::error!(error = %e, "background flush failed; will retry"),
        }
    }

    /// The compaction thread's work: merges that are due, then retention.
    fn compact_due(&self) {
        if let Err(e) = self.maintain(false) {
            tracing::error!(error = %e, "background compaction or retention failed; will retry");
        }
    }

    /// Compaction (every day's blocks merged when `all`), then retention.
    fn maintain(&self, all: bool) -> Result<()> {
        let _compacting = lock(&self.compacting);
        self.compact_locked(all)?;
        self.retain_locked()
    }

    /// Waits until WAL record `lsn` is fsynced, fsyncing as the leader of a
    /// group when no fsync is running.
    fn sync_to(&self, lsn: u64) -> Result<()> {
        let mut s = lock(&self.sync);
        loop {
            self.check_poisoned()?;
            if s.synced_lsn >= lsn {
                return Ok(());
            }
            if s.leader {
                s = self.synced.wait(s).unwrap_or_else(|e| e.into_inner());
                continue;
            }
            s.leader = true;
            drop(s);
            let res = self.fsync_now();
            if let Err(e) = &res {
                // Never retried: a later fsync could succeed while the pages
                // of this one were dropped.
                lock(&self.poisoned).get_or_insert_with(|| e.to_string());
                tracing::error!(error = %e, "fsync failed; the store refuses writes until it is reopened");
            }
            s = lock(&self.sync);
            s.leader = false;
            if let Ok(done) = res {
                s.synced_lsn = s.synced_lsn.max(done);
            }
            self.synced.notify_all();
            res?;
        }
    }

    /// Fsyncs the catalog, then the WAL; returns the lsn now durable.
    fn fsync_now(&self) -> Result<u64> {
        let (wal_file, wal_path, lsn) = {
            let w = lock(&self.wal);
            (w.file.clone(), w.path().to_path_buf(), w.lsn)
        };
        let catalog = {
            let mut c = write(&self.catalog);
            let dirty = std::mem::take(&mut c.dirty);
            dirty.then(|| {
                let (f, p) = c.file();
                (f, p.to_path_buf())
            })
        };
        if let Some(hook) = &self.config.hooks.fsync {
            hook().io("fsync", &wal_path)?;
        }
        if let Some((f, p)) = catalog {
            f.sync_data().io("fsync", &p)?;
        }
        wal_file.sync_data().io("fsync", &wal_path)?;
        Ok(lsn)
    }

    fn metas(&self) -> Vec<SeriesMeta> {
        read(&self.catalog).series.clone()
    }

    fn points(&self, id: u64, kind: ValueKind, from: i64, to: i64) -> Result<Vec<(i64, u64)>> {
        let (blocks, frozen, active) = {
            let mem = read(&self.mem);
            (
                mem.blocks.clone(),
                mem.frozen.as_ref().map(|f| f.0.clone()),
                mem.active.sorted(id),
            )
        };
        let mut parts: Vec<(i64, Vec<(i64, u64)>)> = Vec::new();
        for b in blocks
            .iter()
            .filter(|b| b.meta.min_ts < to && b.meta.max_ts >= from)
        {
            let res = b.find(id).and_then(|e| match e {
                Some(e) if e.min_ts < to && e.max_ts >= from => {
                    let mut out = Vec::new();
                    b.read_points(&e, kind, from, to, &mut out)?;
                    Ok(Some((e.min_ts, out)))
                }
                _ => Ok(None),
            });
            match res {
                Ok(Some(p)) => parts.push(p),
                Ok(None) => {}
                Err(e) => self.corrupt_or(b, e)?,
            }
        }
        parts.sort_by_key(|p| p.0);
        let mut all: Vec<(i64, u64)> = parts.into_iter().flat_map(|p| p.1).collect();
        for head in [frozen.map(|f| f.sorted(id)), Some(active)]
            .into_iter()
            .flatten()
        {
            all.extend(head.into_iter().filter(|p| (from..to).contains(&p.0)));
        }
        Ok(sort_dedup(all))
    }

    fn hourly(&self, id: u64, kind: ValueKind, from: i64, to: i64) -> Result<Vec<Aggregate>> {
        let (blocks, frozen, active) = {
            let mem = read(&self.mem);
            (
                mem.blocks.clone(),
                mem.frozen.as_ref().map(|f| f.0.clone()),
                mem.active.sorted(id),
            )
        };
        let mut parts: Vec<(i64, Vec<Aggregate>)> = Vec::new();
        for b in blocks
            .iter()
            .filter(|b| b.meta.min_ts < to && b.meta.max_ts >= from)
        {
            let res = b.find(id).and_then(|e| match e {
                Some(e) if e.min_ts < to && e.max_ts >= from => {
                    let mut out = Vec::new();
                    b.read_rollups(&e, kind, &mut out)?;
                    Ok(Some((e.min_ts, out)))
                }
                _ => Ok(None),
            });
            match res {
                Ok(Some(p)) => parts.push(p),
                Ok(None) => {}
                Err(e) => self.corrupt_or(b, e)?,
            }
        }
        parts.sort_by_key(|p| p.0);
        for head in [frozen.map(|f| f.sorted(id)), Some(active)]
            .into_iter()
            .flatten()
        {
            if let Some(&(first, _)) = head.first() {
                let mut aggs = Vec::new();
                agg::aggregate(kind, &head, HOUR_MS, &mut aggs);
                parts.push((first, aggs));
            }
        }
        let mut out = Vec::new();
        for a in parts.into_iter().flat_map(|p| p.1) {
            if a.start_ms >= from && a.start_ms < to {
                agg::push_merged(&mut out, a);
            }
        }
        Ok(out)
    }

    /// Corruption is reported and skipped; other errors are returned.
    fn corrupt_or(&self, b: &Block, e: Error) -> Result<()> {
        if !matches!(e, Error::Corrupt { .. }) {
            return Err(e);
        }
        if b.report(&e) {
            self.corrupt.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Freezes the active head and writes it to blocks. The caller holds
    /// `flushing`; appends go on into a fresh head meanwhile.
    fn flush_head(&self, _flushing: &MutexGuard<'_, ()>) -> Result<()> {
        // A head frozen by a flush that failed is written first.
        let pending = read(&self.mem).frozen.clone();
        if let Some((head, through)) = pending {
            self.write_frozen(&head, through)?;
        }
        let frozen = {
            let mut wal = lock(&self.wal);
            let mut mem = write(&self.mem);
            if mem.active.samples == 0 {
                None
            } else {
                let through = wal.rotate()?;
                let head = Arc::new(mem.freeze());
                mem.frozen = Some((head.clone(), through));
                Some((head, through))
            }
        };
        if let Some((head, through)) = frozen {
            if let Some(hook) = &self.config.hooks.flush {
                hook();
            }
            self.write_frozen(&head, through)?;
        }
        Ok(())
    }

    /// A fresh block id (block files are never reused).
    fn next_block_id(&self) -> u64 {
        let mut man = lock(&self.manifest);
        let id = man.next_block;
        man.next_block += 1;
        id
    }

    /// Saves the manifest with `change` applied; the in-memory manifest
    /// changes only once the new one is durable.
    fn commit(&self, change: impl FnOnce(&mut Manifest)) -> Result<()> {
        let mut man = lock(&self.manifest);
        let mut next = man.clone();
        change(&mut next);
        next.save(self.dir())?;
        *man = next;
        Ok(())
    }

    fn write_frozen(&self, head: &Head, through: u64) -> Result<()> {
        let metas = self.metas();
        let mut writers: BTreeMap<i64, BlockWriter> = BTreeMap::new();
        for (id, v) in head.series.iter().enumerate() {
            if v.is_empty() {
                continue;
            }
            let meta = metas[id];
            let points = sort_dedup(v.clone());
            for run in points.chunk_by(|a, b| a.0.div_euclid(DAY_MS) == b.0.div_euclid(DAY_MS)) {
                let day = run[0].0.div_euclid(DAY_MS);
                let w = match writers.entry(day) {
                    std::collections::btree_map::Entry::Occupied(o) => o.into_mut(),
                    std::collections::btree_map::Entry::Vacant(v) => v.insert(BlockWriter::create(
                        block_path(self.dir(), self.next_block_id()),
                        0,
                        day,
                    )?),
                };
                w.add(id as u64, meta.kind, meta.class(), run)?;
            }
        }
        let mut opened = Vec::new();
        for (_, w) in writers {
            let path = w.path().to_path_buf();
            if w.finish()?.is_some() {
                let id = block_id(&path);
                opened.push(Arc::new(Block::open(path, id)?));
            }
        }
        self.commit(|next| {
            next.blocks.extend(opened.iter().map(|b| b.id));
            next.wal_through = through;
        })?;
        {
            let mut mem = write(&self.mem);
            let mut blocks = (*mem.blocks).clone();
            blocks.extend(opened);
            mem.blocks = Arc::new(blocks);
            mem.frozen = None;
        }
        for seq in wal::list_segments(self.dir())?
            .into_iter()
            .filter(|&s| s <= through)
        {
            let p = wal::segment_path(self.dir(), seq);
            std::fs::remove_file(&p).io("removing", &p)?;
        }
        self.wal_bytes
            .store(dir_bytes(&self.dir().join("wal")), Ordering::Relaxed);
        self.flushes.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Merges blocks of one day: any level with `fanin` blocks goes up one
    /// level; a finished day (or every day, when `all`) becomes one block.
    /// The caller holds `compacting`.
    fn compact_locked(&self, all: bool) -> Result<()> {
        loop {
            let (blocks, newest) = {
                let mem = read(&self.mem);
                (mem.blocks.clone(), mem.newest)
            };
            let mut days: BTreeMap<i64, Vec<&Arc<Block>>> = BTreeMap::new();
            for b in blocks.iter().filter(|b| !b.is_reported()) {
                days.entry(b.meta.day).or_default().push(b);
            }
            let mut job = None;
            for (&day, bs) in &days {
                let finished = all
                    || (day + 1) * DAY_MS + self.config.flush_interval.as_millis() as i64 <= newest;
                if finished && bs.len() > 1 {
                    job = Some((day, FINAL_LEVEL, bs.clone()));
                    break;
                }
                let mut by_level: BTreeMap<u32, Vec<&Arc<Block>>> = BTreeMap::new();
                for b in bs {
                    by_level.entry(b.meta.level).or_default().push(b);
                }
                if let Some((&level, inputs)) = by_level
                    .iter()
                    .find(|(l, v)| **l < FINAL_LEVEL - 1 && v.len() >= self.config.compaction_fanin)
                {
                    job = Some((day, level + 1, inputs.clone()));
                    break;
                }
            }
            let Some((day, level, inputs)) = job else {
                return Ok(());
            };
            let inputs: Vec<Arc<Block>> = inputs.into_iter().cloned().collect();
            if !self.merge(day, level, &inputs)? {
                return Ok(());
            }
        }
    }

    /// Merges `inputs` into one block of `level`; false when it stopped
    /// early because the store is closing (the partial file is removed).
    fn merge(&self, day: i64, level: u32, inputs: &[Arc<Block>]) -> Result<bool> {
        let metas = self.metas();
        let id = self.next_block_id();
        let path = block_path(self.dir(), id);
        let mut w = BlockWriter::create(path.clone(), level, day)?;
        // A k-way merge over the inputs' indexes, one page at a time each.
        let mut cursors: Vec<Cursor> = inputs
            .iter()
            .map(|_| (0, Vec::new().into_iter(), None))
            .collect();
        let advance = |b: &Block, c: &mut Cursor| -> Result<()> {
            loop {
                if let Some(e) = c.1.next() {
                    c.2 = Some(e);
                    return Ok(());
                }
                if c.0 >= b.index_pages() {
                    c.2 = None;
                    return Ok(());
                }
                c.1 = b.index_page(c.0)?.into_iter();
                c.0 += 1;
            }
        };
        let abort = |b: &Block, e: Error| -> Result<bool> {
            if matches!(e, Error::Corrupt { .. }) {
                if b.report(&e) {
                    self.corrupt.fetch_add(1, Ordering::Relaxed);
                }
                // The corrupt block is left out of compaction from now on.
                return Ok(true);
            }
            Err(e)
        };
        for (b, c) in inputs.iter().zip(cursors.iter_mut()) {
            if let Err(e) = advance(b, c) {
                return abort(b, e);
            }
        }
        let mut merged = 0u64;
        while let Some(series) = cursors.iter().filter_map(|c| c.2.map(|e| e.series)).min() {
            merged += 1;
            if merged.is_multiple_of(4_096) && self.stopping() {
                drop(w);
                let _ = std::fs::remove_file(&path);
                return Ok(false);
            }
            let Some(meta) = metas.get(series as usize).copied() else {
                return abort(
                    &inputs[0],
                    Error::Corrupt {
                        path: inputs[0].path.clone(),
                        detail: format!("series {series} is not in the catalog"),
                    },
                );
            };
            let mut points = Vec::new();
            for (b, c) in inputs.iter().zip(cursors.iter_mut()) {
                if let Some(e) = c.2.filter(|e| e.series == series) {
                    if let Err(err) = b.read_points(&e, meta.kind, i64::MIN, i64::MAX, &mut points)
                    {
                        return abort(b, err);
                    }
                    if let Err(err) = advance(b, c) {
                        return abort(b, err);
                    }
                }
            }
            w.add(series, meta.kind, meta.class(), &sort_dedup(points))?;
        }
        let ids: Vec<u64> = inputs.iter().map(|b| b.id).collect();
        let block = match w.finish()? {
            Some(_) => Some(Arc::new(Block::open(path, id)?)),
            None => None,
        };
        self.commit(|next| {
            next.blocks.retain(|b| !ids.contains(b));
            next.blocks.extend(block.iter().map(|b| b.id));
        })?;
        {
            let mut mem = write(&self.mem);
            let mut blocks: Vec<Arc<Block>> = mem
                .blocks
                .iter()
                .filter(|b| !ids.contains(&b.id))
                .cloned()
                .collect();
            blocks.extend(block);
            mem.blocks = Arc::new(blocks);
        }
        for b in inputs {
            std::fs::remove_file(&b.path).io("removing", &b.path)?;
        }
        self.compactions.fetch_add(1, Ordering::Relaxed);
        Ok(true)
    }

    /// Drops blocks whose newest sample is older than the retention window.
    /// The caller holds `compacting`.
    fn retain_locked(&self) -> Result<()> {
        let (blocks, newest) = {
            let mem = read(&self.mem);
            (mem.blocks.clone(), mem.newest)
        };
        let cutoff = newest.saturating_sub(self.config.retention.as_millis() as i64);
        let old: Vec<u64> = blocks
            .iter()
            .filter(|b| b.meta.max_ts < cutoff)
            .map(|b| b.id)
            .collect();
        if old.is_empty() {
            return Ok(());
        }
        self.commit(|next| next.blocks.retain(|b| !old.contains(b)))?;
        {
            let mut mem = write(&self.mem);
            let kept: Vec<Arc<Block>> = mem
                .blocks
                .iter()
                .filter(|b| !old.contains(&b.id))
                .cloned()
                .collect();
            mem.blocks = Arc::new(kept);
        }
        for b in blocks.iter().filter(|b| old.contains(&b.id)) {
            tracing::info!(file = %b.path.display(), max_ts = b.meta.max_ts, "retention: dropping block");
            std::fs::remove_file(&b.path).io("removing", &b.path)?;
        }
        Ok(())
    }
}

/// A merge cursor: next index page, entries left of the current page, and
/// the current entry.
type Cursor = (usize, std::vec::IntoIter<IndexEntry>, Option<IndexEntry>);

fn block_id(path: &Path) -> u64 {
    path.file_stem()
        .and_then(|s| s.to_str())
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn store_is_send_and_sync() {
        fn is<T: Send + Sync>() {}
        is::<super::Store>();
    }
}
