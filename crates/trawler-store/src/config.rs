//! How a store is configured: a plain struct whose `open()` validates it and
//! returns the running [`Store`](crate::Store).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::{Error, Result, Store};

/// When the WAL reaches the disk, and so when an append returns.
///
/// Both policies make an acknowledged append survive `kill -9` of the
/// process: the batch is in the kernel's page cache when `append` returns.
/// They differ on a power loss or kernel crash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncPolicy {
    /// `append` returns once its batch is fsynced. Appends that arrive while
    /// an fsync runs share the next one (group commit), so many concurrent
    /// callers cost one fsync per round, not one each.
    Always,
    /// `append` returns once its batch is written to the WAL file; a
    /// background fsync runs at least every `interval`, which bounds what a
    /// power loss can take. The default, with one second.
    Interval(Duration),
}

/// Settings of a store. Build with [`StoreConfig::new`] and adjust fields.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// The data folder (created if missing). One store per folder.
    pub dir: PathBuf,
    /// WAL durability (default: fsync at least every second).
    pub sync: SyncPolicy,
    /// Blocks whose newest sample is older than the newest sample in the
    /// store by more than this are deleted (default 30 days).
    pub retention: Duration,
    /// The head is flushed to a block when its oldest data is this old
    /// (default 10 minutes, so 2M series stay under the default
    /// `head_max_bytes`): longer means fewer small blocks to compact but
    /// more memory and a longer WAL replay after a crash.
    pub flush_interval: Duration,
    /// Bounds the head's memory (default 512 MiB). At half of it the flush
    /// thread freezes the head and writes it while appends go on into a
    /// fresh one; only an append that finds the fresh head at the full limit
    /// (the flush fell behind, or there is no background thread) waits for
    /// the flush, or flushes itself. Peak head memory is about 1.5 times
    /// this (a head being written plus a new one filling).
    pub head_max_bytes: usize,
    /// Blocks of one day and one level are merged when there are this many
    /// (default 4); a finished day is merged into a single block.
    pub compaction_fanin: usize,
    /// Run the background threads that fsync, flush and compact (default
    /// true). Tests turn it off to control every step.
    pub background: bool,
    /// Open for inspection only (`trawler store stats|verify`): nothing in
    /// the folder is created, changed, renamed or removed. The WAL is
    /// replayed into memory and left as it is (a torn tail is skipped, not
    /// truncated), no background thread runs, a shared lock keeps a writer
    /// out meanwhile, and every call that would write (new series, appends,
    /// flush, compaction) fails with [`Error::ReadOnly`](crate::Error::ReadOnly).
    pub read_only: bool,
    /// Points where a test can hold or fail the store's work.
    #[doc(hidden)]
    pub hooks: TestHooks,
}

/// Test hooks: a test holds a flush in the middle (to show appends go on)
/// or fails an fsync (to show the store stops taking writes).
#[doc(hidden)]
#[derive(Clone, Default)]
pub struct TestHooks {
    /// Runs in a flush after the head is frozen, before it is written.
    pub flush: Option<Arc<dyn Fn() + Send + Sync>>,
    /// Runs before each fsync of the WAL; an error stands for the fsync's.
    pub fsync: Option<Arc<dyn Fn() -> std::io::Result<()> + Send + Sync>>,
}

impl std::fmt::Debug for TestHooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestHooks")
            .field("flush", &self.flush.is_some())
            .field("fsync", &self.fsync.is_some())
            .finish()
    }
}

impl StoreConfig {
    /// Defaults for a store in `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            sync: SyncPolicy::Interval(Duration::from_secs(1)),
            retention: Duration::from_secs(30 * 86_400),
            flush_interval: Duration::from_secs(10 * 60),
            head_max_bytes: 512 << 20,
            compaction_fanin: 4,
            background: true,
            read_only: false,
            hooks: TestHooks::default(),
        }
    }

    /// Validates the settings, opens (or creates) the store and replays its WAL.
    pub fn open(self) -> Result<Store> {
        if self.compaction_fanin < 2 {
            return Err(Error::Config {
                key: "compaction_fanin",
                reason: format!("must be at least 2, got {}", self.compaction_fanin),
            });
        }
        if self.retention < Duration::from_secs(3_600) {
            return Err(Error::Config {
                key: "retention",
                reason: format!("must be at least one hour, got {:?}", self.retention),
            });
        }
        if let SyncPolicy::Interval(d) = self.sync {
            if d.is_zero() {
                return Err(Error::Config {
                    key: "sync",
                    reason: "an fsync interval of zero; use SyncPolicy::Always".into(),
                });
            }
        }
        Store::open(self)
    }
}
