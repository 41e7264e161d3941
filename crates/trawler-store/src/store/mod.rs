//! The running store: the state that appends, reads, flushes, compactions
//! and retention share, and the locks that let them run side by side. See
//! the crate docs for the design.
//!
//! This file holds what every part touches: [`Store`] and its shared
//! `Inner`, the in-memory view readers see (`Mem`), the lock helpers,
//! and the wiring of [`Store::open`] and shutdown. The work itself lives
//! in one file per concern, so each can be read (and reviewed) without
//! the others, and the locking discipline of each stays in view:
//!
//! * `recover`: turning a folder on disk into the in-memory state (lock,
//!   manifest, blocks, WAL replay), before any thread runs;
//! * `write`: new series, appends, the WAL's group commit, and writing a
//!   head to blocks under a durable manifest;
//! * `read`: ranges, rollups and latest points, merged from blocks and heads;
//! * `maintain`: the background threads, compaction, retention, and the
//!   figures and checks an operator asks for.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::thread::JoinHandle;
use std::time::Instant;

use crate::block::Block;
use crate::catalog::{Catalog, SeriesMeta};
use crate::head::Head;
use crate::manifest::Manifest;
use crate::wal::{WalSample, WalWriter};
use crate::{Error, Result, StoreConfig};

mod maintain;
mod read;
mod recover;
mod write;

pub use read::LatestEntry;

use maintain::Workers;

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
    /// `None` when the store was opened read-only.
    wal: Mutex<Option<WalWriter>>,
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
    /// when the process dies, even by `kill -9`. Read-only, a shared lock
    /// (see `recover`).
    _lock: Option<std::fs::File>,
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

impl Store {
    pub(crate) fn open(config: StoreConfig) -> Result<Self> {
        let dir = config.dir.clone();
        let recovered = recover::recover(&dir, config.read_only)?;
        let inner = Arc::new(Inner {
            config,
            catalog: RwLock::new(recovered.catalog),
            wal: Mutex::new(recovered.writer),
            mem: RwLock::new(recovered.mem),
            sync: Mutex::new(SyncState::default()),
            synced: Condvar::new(),
            manifest: Mutex::new(recovered.manifest),
            flushing: Mutex::new(()),
            compacting: Mutex::new(()),
            stop: Mutex::new(false),
            wake: Condvar::new(),
            closed: AtomicBool::new(false),
            poisoned: Mutex::new(None),
            compactions: AtomicU64::new(0),
            flushes: AtomicU64::new(0),
            wal_bytes: AtomicU64::new(dir_bytes(&dir.join("wal"))),
            corrupt: AtomicU64::new(recovered.corrupt),
            stale: AtomicU64::new(0),
            _lock: recovered.lock,
        });
        let background = if inner.config.background && !inner.config.read_only {
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

    /// Flushes the head, fsyncs, and stops the background thread. Appends
    /// after `close` fail with [`Error::Closed`]. A read-only store just
    /// closes: its head stays in the WAL it came from.
    pub fn close(self) -> Result<()> {
        self.stop_background();
        self.inner.closed.store(true, Ordering::Release);
        if self.inner.config.read_only {
            return Ok(());
        }
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

    /// Why the store refuses writes, once an fsync has failed (see
    /// [`Error::Poisoned`]); `None` while it takes them.
    pub fn poisoned(&self) -> Option<String> {
        lock(&self.inner.poisoned).clone()
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

    /// Fails when the store was opened read-only.
    fn check_writable(&self) -> Result<()> {
        if self.config.read_only {
            return Err(Error::ReadOnly {
                path: self.config.dir.clone(),
            });
        }
        Ok(())
    }

    /// The WAL's writer, or [`Error::ReadOnly`].
    fn wal_writer<'a>(
        &self,
        wal: &'a mut MutexGuard<'_, Option<WalWriter>>,
    ) -> Result<&'a mut WalWriter> {
        wal.as_mut().ok_or_else(|| Error::ReadOnly {
            path: self.config.dir.clone(),
        })
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

    fn metas(&self) -> Vec<SeriesMeta> {
        read(&self.catalog).series.clone()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn store_is_send_and_sync() {
        fn is<T: Send + Sync>() {}
        is::<super::Store>();
    }
}
