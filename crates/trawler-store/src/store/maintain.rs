//! Maintenance: the background threads, compaction, retention, and the
//! figures and checks an operator asks for.
//!
//! None of this is on the path of an append or a read. Each background
//! thread does one kind of work (fsync, flush, compaction and retention),
//! so a day merge never delays the WAL's fsync nor a flush, and flush and
//! compaction run at a lower CPU priority so the crawl and the API get the
//! cores first. Compaction and retention choose their inputs from the
//! block list, so they are serialised by `compacting`; each commits its
//! result to the manifest before the in-memory list changes and before
//! any input file is deleted, so after a crash at any point the manifest
//! lists only complete blocks and no sample is in two listed blocks (files
//! it does not list are removed on the next open).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use trawler_common::thread::lower_priority;

use super::{lock, read, write, Inner, Store};
use crate::block::{Block, BlockWriter, IndexEntry};
use crate::error::IoContext;
use crate::head::sort_dedup;
use crate::manifest::{block_path, Manifest};
use crate::types::DAY_MS;
use crate::{Error, Result, Stats, SyncPolicy, ValueKind};

/// Level given to the single block a finished day is merged into.
const FINAL_LEVEL: u32 = 15;

/// A background thread: name, nice value, tick, and its work.
type Worker = (&'static str, i32, Duration, fn(&Inner));

/// The store's background threads. Each waits on `Inner::wake` (or its
/// tick) and does one kind of work, so none holds up another: the WAL's
/// fsync keeps its interval while a day of blocks is being merged, and a
/// flush never waits for a compaction. Flushing and compaction run at a
/// lower CPU priority (`nice`), so on a small machine the crawl and the
/// API get the cores first and maintenance uses what is left.
pub(super) struct Workers;

impl Workers {
    /// Nice value of the flush thread.
    const FLUSH_NICE: i32 = 5;
    /// Nice value of the compaction thread: the longest and least urgent.
    const COMPACT_NICE: i32 = 10;

    pub(super) fn spawn(inner: &Arc<Inner>, dir: &Path) -> Result<Vec<JoinHandle<()>>> {
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

impl Store {
    /// Merges every day's blocks into one block per day, then runs
    /// retention (finished days are merged anyway; this also merges the
    /// current day, e.g. before measuring bytes on disk).
    pub fn compact(&self) -> Result<()> {
        self.inner.check_writable()?;
        self.inner.maintain(true)
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
    /// (each names its file, and the series when one series' data is bad),
    /// for an operator's `verify` command.
    pub fn verify(&self) -> Vec<Error> {
        let blocks = read(&self.inner.mem).blocks.clone();
        let cat = read(&self.inner.catalog);
        let mut errors = Vec::new();
        for b in blocks.iter() {
            let res = (|| {
                for page in 0..b.index_pages() {
                    for e in b.index_page(page)? {
                        let kind = cat
                            .series
                            .get(e.series as usize)
                            .map_or(ValueKind::Int, |m| m.kind);
                        let name = |err: Error| match err {
                            Error::Corrupt { path, detail } => Error::Corrupt {
                                path,
                                detail: format!("series {}: {detail}", cat.name(e.series)),
                            },
                            other => other,
                        };
                        b.read_points(&e, kind, i64::MIN, i64::MAX, &mut Vec::new())
                            .map_err(name)?;
                        b.read_rollups(&e, kind, &mut Vec::new()).map_err(name)?;
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

impl Inner {
    fn stopping(&self) -> bool {
        *lock(&self.stop)
    }

    /// The sync thread's work: fsync what was written since the last one.
    fn sync_due(&self) {
        if lock(&self.poisoned).is_some() {
            return;
        }
        let Some(lsn) = lock(&self.wal).as_ref().map(|w| w.lsn) else {
            return;
        };
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
    pub(super) fn maintain(&self, all: bool) -> Result<()> {
        let _compacting = lock(&self.compacting);
        self.compact_locked(all)?;
        self.retain_locked()
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
                // A finished day becomes one block, and a block of an older
                // format version is rewritten in the current one.
                let old_format = bs.iter().any(|b| b.version < crate::FORMAT_VERSION);
                if finished && (bs.len() > 1 || old_format) {
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
