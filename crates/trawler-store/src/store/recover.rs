//! Opening a store folder: everything between `StoreConfig::open` and the
//! first append, turning what is on disk into the in-memory state.
//!
//! It runs once, on one thread, before `Inner` exists, so it works on plain
//! values and needs none of the store's locks. The order is what makes a
//! crash at any point recoverable: take the folder's lock before touching
//! anything; load the manifest (the only list of live blocks) and delete
//! the block files it does not list, which a crashed flush or compaction
//! left; open the listed blocks and seal every series at its newest block
//! sample; then replay the WAL segments the manifest does not cover,
//! sealing between segments exactly as the run that wrote them did, so
//! that what was stale before the crash is stale after it.
//!
//! Opened read-only (an operator's inspection), the same steps run without
//! touching the folder: a shared lock on an existing `LOCK`, nothing
//! created, no stray removed, no WAL segment deleted or truncated, and no
//! segment opened for appends; the WAL is replayed into memory only.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use super::Mem;
use crate::block::Block;
use crate::catalog::Catalog;
use crate::error::IoContext;
use crate::manifest::{block_path, sync_dir, Manifest};
use crate::wal::{self, WalWriter};
use crate::{Error, Result};

/// The state a store folder holds, ready to be shared as `Inner`.
pub(super) struct Recovered {
    /// The folder's `LOCK`, held for as long as the store is open (`None`
    /// read-only when the folder has no `LOCK`: no writer ever opened it).
    pub lock: Option<std::fs::File>,
    pub catalog: Catalog,
    pub manifest: Manifest,
    /// Blocks, latest points, seals and the replayed head.
    pub mem: Mem,
    /// Blocks (or parts of them) found corrupt while opening.
    pub corrupt: u64,
    /// The WAL segment appends go on in (`None` read-only).
    pub writer: Option<WalWriter>,
}

/// Opens `dir` (creating it when new, unless `read_only`) and recovers its
/// state.
pub(super) fn recover(dir: &Path, read_only: bool) -> Result<Recovered> {
    if read_only {
        if !dir.join("MANIFEST").exists() {
            return Err(Error::Corrupt {
                path: Manifest::path(dir),
                detail: "missing: no store to open read-only here".into(),
            });
        }
    } else {
        for d in [dir.to_path_buf(), dir.join("wal"), dir.join("blocks")] {
            std::fs::create_dir_all(&d).io("creating", &d)?;
        }
    }
    let lock = lock_dir(dir, read_only)?;
    let catalog = Catalog::open(dir, read_only)?;
    let manifest = load_manifest(dir, read_only)?;
    if !read_only {
        remove_strays(dir, &manifest)?;
    }

    let mut mem = Mem {
        newest: i64::MIN,
        ..Mem::default()
    };
    mem.grow(catalog.series.len());
    let corrupt = open_blocks(dir, &manifest, &mut mem)?;
    let writer = replay_wal(dir, &manifest, &catalog, &mut mem, read_only)?;
    Ok(Recovered {
        lock,
        catalog,
        manifest,
        mem,
        corrupt,
        writer,
    })
}

/// Takes the folder's lock file, or says which folder is in use. Read-only,
/// the lock is shared (inspections may run side by side, never beside a
/// writer) and a missing `LOCK` is not created.
fn lock_dir(dir: &Path, read_only: bool) -> Result<Option<std::fs::File>> {
    let path = dir.join("LOCK");
    if read_only && !path.exists() {
        return Ok(None);
    }
    let file = std::fs::OpenOptions::new()
        .create(!read_only)
        .truncate(false)
        .read(read_only)
        .write(!read_only)
        .open(&path)
        .io("opening", &path)?;
    let locked = if read_only {
        file.try_lock_shared()
    } else {
        file.try_lock()
    };
    match locked {
        Ok(()) => Ok(Some(file)),
        Err(std::fs::TryLockError::WouldBlock) => Err(Error::Locked { path: dir.into() }),
        Err(std::fs::TryLockError::Error(e)) => Err(e).io("locking", &path),
    }
}

/// The manifest, or an empty one for a new store. A missing manifest
/// beside block files is refused: starting empty would delete them.
/// Read-only, an empty manifest is not saved.
fn load_manifest(dir: &Path, read_only: bool) -> Result<Manifest> {
    Ok(match Manifest::load(dir)? {
        Some(m) => m,
        None => {
            if std::fs::read_dir(dir.join("blocks"))
                .io("listing", dir)?
                .next()
                .is_some()
            {
                return Err(Error::Corrupt {
                    path: Manifest::path(dir),
                    detail: "missing while blocks/ holds files; restore it from a backup".into(),
                });
            }
            let m = Manifest {
                wal_through: 0,
                next_block: 1,
                blocks: Vec::new(),
            };
            if !read_only {
                m.save(dir)?;
            }
            m
        }
    })
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

/// Opens the manifest's blocks into `mem` and seals every series at its
/// newest block sample; returns how many corrupt blocks (or index pages)
/// were skipped. A block of another version or an I/O error stops the open.
fn open_blocks(dir: &Path, manifest: &Manifest, mem: &mut Mem) -> Result<u64> {
    let mut corrupt = 0;
    let mut blocks = Vec::new();
    for &id in &manifest.blocks {
        let path = block_path(dir, id);
        match Block::open(path, id) {
            Ok(b) => blocks.push(Arc::new(b)),
            Err(
                e @ (Error::UnsupportedVersion { .. } | Error::BadMagic { .. } | Error::Io { .. }),
            ) => return Err(e),
            Err(e) => {
                tracing::error!(error = %e, "skipping a corrupt block; the rest of the store stays readable");
                corrupt += 1;
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
                        corrupt += 1;
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
    Ok(corrupt)
}

/// Replays the WAL segments not yet in blocks into `mem` and returns the
/// writer appends continue with (none read-only). Each segment boundary was
/// a freeze, so seal between segments exactly as the run did.
fn replay_wal(
    dir: &Path,
    manifest: &Manifest,
    catalog: &Catalog,
    mem: &mut Mem,
    read_only: bool,
) -> Result<Option<WalWriter>> {
    let segments = wal::list_segments(dir)?;
    let live: Vec<u64> = segments
        .iter()
        .copied()
        .filter(|&s| s > manifest.wal_through)
        .collect();
    for &seq in segments
        .iter()
        .filter(|&&s| s <= manifest.wal_through && !read_only)
    {
        let p = wal::segment_path(dir, seq);
        std::fs::remove_file(&p).io("removing", &p)?;
    }
    let mut unknown = 0u64;
    for (k, &seq) in live.iter().enumerate() {
        let path = wal::segment_path(dir, seq);
        let bytes = std::fs::read(&path).io("reading", &path)?;
        let decoded = wal::decode_segment(&bytes, &path)?;
        if !decoded.clean {
            if read_only {
                tracing::warn!(
                    file = %path.display(),
                    kept_bytes = decoded.valid_len,
                    skipped_bytes = bytes.len() - decoded.valid_len,
                    "a torn or corrupt WAL tail is skipped (read-only: the file is left as it is)"
                );
            } else if k + 1 == live.len() {
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
    if read_only {
        return Ok(None);
    }
    let writer = match live.last() {
        Some(&seq) => WalWriter::reopen(dir, seq)?,
        None => WalWriter::create(
            dir,
            segments
                .last()
                .copied()
                .unwrap_or(0)
                .max(manifest.wal_through)
                + 1,
        )?,
    };
    sync_dir(&dir.join("wal"))?;
    Ok(Some(writer))
}
