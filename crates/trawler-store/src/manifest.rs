//! The manifest: which blocks are live and which WAL segments they cover.
//!
//! Every change to the set of blocks (a flush, a compaction, retention) is
//! one atomic replacement of `MANIFEST` (write `MANIFEST.tmp`, fsync,
//! rename, fsync the folder). A crash at any point leaves either the old or
//! the new set; block files not listed are leftovers and are deleted on open.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::codec::{self, Reader, RecordsEnd};
use crate::error::IoContext;
use crate::{Error, Result};

const MAGIC: &[u8; 8] = b"TRWLMAN\0";

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Manifest {
    /// WAL segments with a sequence number up to this one are in blocks.
    pub wal_through: u64,
    /// The id the next block file gets.
    pub next_block: u64,
    /// Live block ids, ascending.
    pub blocks: Vec<u64>,
}

pub(crate) fn block_path(dir: &Path, id: u64) -> PathBuf {
    dir.join("blocks").join(format!("{id:010}.blk"))
}

impl Manifest {
    pub fn path(dir: &Path) -> PathBuf {
        dir.join("MANIFEST")
    }

    /// Reads the manifest; `None` when the store is new.
    #[deny(clippy::unwrap_used, clippy::indexing_slicing)]
    pub fn load(dir: &Path) -> Result<Option<Self>> {
        let path = Self::path(dir);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).io("reading", &path),
        };
        codec::check_header(&bytes, MAGIC, &path)?;
        let (records, _, end) = codec::split_records(codec::after_header(&bytes));
        let bad = || Error::Corrupt {
            path: path.clone(),
            detail: "manifest record damaged; restore it from a backup".into(),
        };
        if end != RecordsEnd::Clean || records.len() != 1 {
            return Err(bad());
        }
        let mut r = Reader::new(records.first().copied().ok_or_else(bad)?);
        let parse = |r: &mut Reader<'_>| -> Option<Self> {
            let wal_through = r.uvar()?;
            let next_block = r.uvar()?;
            let n = r.uvar()?;
            let mut blocks = Vec::new();
            for _ in 0..n {
                blocks.push(r.uvar()?);
            }
            r.is_empty().then_some(Self {
                wal_through,
                next_block,
                blocks,
            })
        };
        parse(&mut r).map(Some).ok_or_else(bad)
    }

    pub fn save(&self, dir: &Path) -> Result<()> {
        let mut payload = Vec::new();
        codec::put_uvar(&mut payload, self.wal_through);
        codec::put_uvar(&mut payload, self.next_block);
        codec::put_uvar(&mut payload, self.blocks.len() as u64);
        for b in &self.blocks {
            codec::put_uvar(&mut payload, *b);
        }
        let mut bytes = codec::header(MAGIC).to_vec();
        codec::put_record(&mut bytes, &payload);
        let path = Self::path(dir);
        let tmp = dir.join("MANIFEST.tmp");
        let mut f = File::create(&tmp).io("creating", &tmp)?;
        f.write_all(&bytes).io("writing", &tmp)?;
        f.sync_all().io("fsync", &tmp)?;
        std::fs::rename(&tmp, &path).io("renaming", &tmp)?;
        sync_dir(dir)?;
        sync_dir(&dir.join("blocks"))
    }
}

/// Makes renames and creations in `dir` durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).io("fsync", dir)
}
