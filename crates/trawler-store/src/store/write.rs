//! Writing: new series, appends, the WAL's group commit, and turning a
//! head into blocks.
//!
//! Everything here keeps one promise: once a call returns, what it wrote
//! survives a crash to the degree the crate docs state. So the catalog is
//! written before a series id is handed out; an append is in the WAL
//! before it is in the head, under the WAL lock, so the WAL's order is the
//! head's; one fsync serves every appender waiting for it (group commit),
//! and a failed fsync poisons the store rather than being retried; and a
//! flush writes and fsyncs its blocks before the manifest lists them, and
//! removes WAL segments only once the manifest says they are covered. The
//! manifest lock is held just to hand out block ids and to commit, never
//! during the work, so a flush and a compaction do not wait for each other.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, MutexGuard};
use std::time::Instant;

use super::{dir_bytes, lock, read, write, Inner, Store};
use crate::block::{Block, BlockWriter};
use crate::error::IoContext;
use crate::head::{sort_dedup, Head};
use crate::manifest::{block_path, Manifest};
use crate::types::DAY_MS;
use crate::wal::{self, WalSample};
use crate::{Appended, Error, Result, Sample, SeriesId, SeriesKey, SyncPolicy, ValueKind};

impl Store {
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
        self.inner.check_writable()?;
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
        inner.check_writable()?;
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
            let mut guard = lock(&inner.wal);
            let wal = inner.wal_writer(&mut guard)?;
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

    /// Fsyncs the WAL (and catalog) now; nothing to do read-only.
    pub fn sync(&self) -> Result<()> {
        let Some(lsn) = lock(&self.inner.wal).as_ref().map(|w| w.lsn) else {
            return Ok(());
        };
        self.inner.sync_to(lsn)
    }

    /// Writes the head to blocks now, then runs the compactions that are
    /// due and retention: what the background thread does on its schedule.
    pub fn flush(&self) -> Result<()> {
        self.inner.check_writable()?;
        {
            let flushing = lock(&self.inner.flushing);
            self.inner.flush_head(&flushing)?;
        }
        self.inner.maintain(false)
    }
}

impl Inner {
    /// Waits until WAL record `lsn` is fsynced, fsyncing as the leader of a
    /// group when no fsync is running.
    pub(super) fn sync_to(&self, lsn: u64) -> Result<()> {
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
            let mut guard = lock(&self.wal);
            let w = self.wal_writer(&mut guard)?;
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

    /// Freezes the active head and writes it to blocks. The caller holds
    /// `flushing`; appends go on into a fresh head meanwhile.
    pub(super) fn flush_head(&self, _flushing: &MutexGuard<'_, ()>) -> Result<()> {
        // A head frozen by a flush that failed is written first.
        let pending = read(&self.mem).frozen.clone();
        if let Some((head, through)) = pending {
            self.write_frozen(&head, through)?;
        }
        let frozen = {
            let mut guard = lock(&self.wal);
            let wal = self.wal_writer(&mut guard)?;
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
    pub(super) fn next_block_id(&self) -> u64 {
        let mut man = lock(&self.manifest);
        let id = man.next_block;
        man.next_block += 1;
        id
    }

    /// Saves the manifest with `change` applied; the in-memory manifest
    /// changes only once the new one is durable.
    pub(super) fn commit(&self, change: impl FnOnce(&mut Manifest)) -> Result<()> {
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
}

fn block_id(path: &Path) -> u64 {
    path.file_stem()
        .and_then(|s| s.to_str())
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}
