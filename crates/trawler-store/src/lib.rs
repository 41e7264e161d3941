//! trawler's embedded time-series store: compact, crash-safe, fast to read.
//!
//! Series are identified by `(job, entity, metric)` and hold integer or
//! float values with millisecond timestamps. The flagship job writes two
//! series per account for a million accounts every minute; everything here
//! is shaped by that load: many series, one point per series per minute,
//! regular timestamps, values that move a little at each step.
//!
//! ```
//! use trawler_store::{Sample, SeriesKey, StoreConfig, Value, ValueKind, Resolution};
//! # let dir = tempfile::tempdir().unwrap();
//! let store = StoreConfig::new(dir.path()).open()?;
//! let id = store.series(SeriesKey { job: "influencers", entity: 1_000_001, metric: "followerCount" }, ValueKind::Int)?;
//! store.append(&[Sample { series: id, ts_ms: 60_000, value: Value::Int(104_821) }])?;
//! store.flush()?; // normally the background thread does this
//! assert_eq!(store.range(id, 0, 120_000)?.len(), 1);
//! let day = store.rollups(id, 0, 86_400_000, Resolution::Day)?;
//! assert_eq!(day[0].count, 1);
//! store.close()?;
//! # Ok::<(), trawler_store::Error>(())
//! ```
//!
//! # How writes flow
//!
//! 1. [`Store::append`] validates the batch, then under the WAL lock drops
//!    *stale* samples (see below), writes the rest as one checksummed WAL
//!    record and inserts them into the in-memory **head**. When the `write`
//!    returns, the batch survives `kill -9`. With [`SyncPolicy::Always`] the
//!    caller then waits for an fsync: the first waiter becomes the leader and
//!    fsyncs for everyone who wrote before it (group commit). With the default
//!    [`SyncPolicy::Interval`] a background thread fsyncs at least every
//!    interval, bounding what a power loss can take.
//! 2. When the head is `flush_interval` old or half of `head_max_bytes` big,
//!    the flush thread (or, at the full limit, the appender itself:
//!    backpressure) takes it: it is
//!    **frozen** (the WAL moves to a new segment; readers still see the frozen
//!    head) and written as one level-0 **block** per UTC day it covers. The
//!    manifest then records the blocks and the last WAL segment they cover,
//!    and those segments are deleted.
//! 3. **Compaction** merges the blocks of a day: `compaction_fanin` blocks of
//!    one level become one block of the next level, and a finished day
//!    becomes a single block (so a 30-day read touches about 30 blocks, and
//!    each series' pages in a day block hold 1,440 points: pco's per-page
//!    cost becomes negligible).
//! 4. **Retention** drops whole blocks whose newest sample is older than the
//!    store's newest sample minus `retention`. Counting from the newest
//!    sample rather than the wall clock keeps a backfill of old data from
//!    being deleted as it is written, and makes retention deterministic.
//!
//! ## Stale samples
//!
//! A sample whose timestamp is at or before the newest timestamp its series
//! had when the head was last frozen is *stale* and dropped (counted in
//! [`Appended::stale`] and [`Stats::stale_samples`]). Within the head, late
//! and duplicate samples are fine (the last write of a timestamp wins). This
//! keeps the invariant that a series' data in distinct blocks never overlaps
//! in time, so reads and merges concatenate instead of resolving conflicts,
//! and hourly rollups split across two blocks merge exactly. The crawler
//! stamps samples with their slot time, so only a retry arriving after a
//! flush is ever stale, and that retry is a duplicate.
//!
//! # On-disk format, version 2
//!
//! Version 2 changed only blocks (no stored rollups: see the `block`
//! module); the catalog, WAL and manifest are the same in versions 1 and 2.
//! Every file of either version is read, new files are written as version
//! 2, and compaction rewrites version-1 blocks as version 2 (`trawler store
//! compact` rewrites them all at once).
//!
//! ```text
//! <dir>/series.log       the series catalog (see `catalog`)
//! <dir>/MANIFEST         live blocks and the WAL segments they cover
//! <dir>/wal/<seq>.wal    write-ahead log segments, one per head
//! <dir>/blocks/<id>.blk  immutable compressed blocks
//! <dir>/LOCK             empty; an exclusive flock held while the store is open
//! ```
//!
//! Every file but `LOCK` starts with 8 magic bytes and the format version (`u32` LE,
//! [`FORMAT_VERSION`] when written); a file of a version outside
//! [`OLDEST_FORMAT_VERSION`]`..=`[`FORMAT_VERSION`] is refused with
//! [`Error::UnsupportedVersion`], naming the file. Integers are
//! little-endian; varints are LEB128, signed ones zigzag-encoded.
//!
//! * **Records** (catalog, WAL, manifest): `len u32 | crc32 u32 | payload`.
//!   A record that is cut short at the end of the last WAL segment or of the
//!   catalog is a torn write: it is truncated with one log line, everything
//!   before it is kept. A bad record inside an older WAL segment is logged as
//!   an error and the rest of that segment is lost.
//! * **Catalog record** (one per `series_batch`): `uvar n`, then n entries,
//!   each `u8 tag` then `uvar len, job name` (tag 1), `uvar len, metric
//!   name` (tag 2) or `u8 kind (0 int, 1 float) | uvar job_no | uvar
//!   metric_no | uvar entity` (tag 0, a series). Names are numbered in order
//!   of definition, series ids are dense in order of definition.
//! * **WAL record** (one appended batch): `uvar n`, then n times
//!   `ivar Δseries | ivar Δts | ivar value_bits` (deltas from the previous
//!   sample of the record; value bits are the i64 or the f64 bits).
//! * **Manifest**: one record `uvar wal_through | uvar next_block_id | uvar n
//!   | n × uvar block_id`, replaced atomically (tmp, fsync, rename, fsync dir).
//! * **Block**: see the `block` module: groups of series of one
//!   (job, metric, kind) sharing pco chunk metadata, per-series pages (values,
//!   and timestamps only when irregular; hourly rollups are computed from
//!   the values when read), an index in checksummed pages of 64 entries sorted by
//!   series id, and a checksummed footer with the group and fence tables.
//!   Each series' pages carry their own crc32 in the index, so a corrupt
//!   byte costs one series in one block: reads log the file name, count it
//!   in [`Stats::corrupt_blocks`] and return everything else.
//!
//! ## Invariants
//!
//! * A block file is complete (written, fsynced, renamed) before the manifest
//!   lists it; files the manifest does not list are deleted on open.
//! * WAL segments up to `wal_through` are in blocks; later ones are replayed
//!   on open, sealing series between segments exactly as the run did.
//! * Every block holds one UTC day; per series, blocks are disjoint in time.
//!
//! # Memory
//!
//! Per series: 24 bytes of catalog metadata plus its key in a hash map,
//! 24 bytes of latest point and seal time. Per head sample: 16 bytes (so a
//! 10-minute head of 2M series is about 0.5 GB with `Vec` slack;
//! `head_max_bytes` caps it, and a flush briefly holds a second head).
//! Per open block: its fence table, 24 bytes per 64 series. Reported as
//! [`Stats::memory_bytes`].
//!
//! # From async code
//!
//! The store is synchronous, `Send + Sync` and shared in an `Arc`. An
//! append blocks for a `write` (and, with `SyncPolicy::Always`, an fsync),
//! so call it from `tokio::task::spawn_blocking`, or better from one writer
//! thread fed by a channel that gathers observations into batches of a few
//! thousand samples: batches amortise the WAL record and lock.

mod agg;
mod block;
mod catalog;
mod codec;
mod config;
mod error;
mod head;
mod manifest;
mod store;
mod types;
mod wal;

pub use config::{StoreConfig, SyncPolicy, TestHooks};
pub use error::{Error, Result};
pub use store::{LatestEntry, Store};
pub use types::{
    Aggregate, Appended, Point, Resolution, Sample, SeriesId, SeriesInfo, SeriesKey, Stats, Value,
    ValueKind,
};

/// The on-disk format version this build writes (see "On-disk format").
pub const FORMAT_VERSION: u32 = 2;

/// The oldest on-disk format version this build still reads.
pub const OLDEST_FORMAT_VERSION: u32 = 1;

/// Decoders of untrusted bytes, exposed for the fuzz targets and the
/// random-bytes property tests. Not part of the stable API.
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::block::check_bytes as check_block;
    pub use crate::wal::{decode_segment, Decoded, WalSample};
}
