//! Immutable blocks: one file per (UTC day, level) holding compressed
//! columns of many series, with an index for per-series access.
//!
//! Layout of `blocks/<id>.blk` (all integers little-endian, varints LEB128):
//!
//! ```text
//! header   "TRWLBLK\0" | format version u32
//! groups   per group: group header (pco chunk metas), then per series of
//!          the group its pages: values | timestamps?
//!          (version 1: rollup fields | rollup counts | values | timestamps?)
//! index    pages of up to 64 entries, sorted by series id, each followed
//!          by the crc32 of the page
//! footer   block facts, the group table (offset, len, crc of each group
//!          header) and the fence table (first series, offset, len of each
//!          index page)
//! tail     footer len u32 | footer crc32 u32 | "TRWLEND\0"
//! ```
//!
//! A *group* gathers series of one class (same job, metric and kind) so they
//! share pco's chunk metadata (the bins, a few hundred bytes) while each
//! series keeps its own pages, readable alone. An index entry gives a
//! series' data offset, the lengths of its four pages and their crc32, its
//! sample count, first and last timestamp, and its last value (so the
//! latest-value scan at open never decodes a page).
//!
//! Timestamps of a regular series (constant step, the crawler's case) are
//! not stored at all: the entry's first timestamp and step give them. Only
//! irregular series get a timestamp page (pco with delta coding).
//!
//! # Versions
//!
//! * **2** (written now): no stored rollups. A block's hourly rollups are
//!   computed from its values when read: a day of one series is 1,440
//!   points, decoded in microseconds, so a 30-day hourly read costs about
//!   what a 30-day raw read costs, and the 0.16 B/sample that version 1
//!   spent on rollup pages (a tenth of a random walk's bytes) is gone. The
//!   index entry keeps its four page lengths; the two rollup pages are
//!   empty.
//!
//!   Integer series are coded one of two ways, chosen per series by an
//!   estimate of the bits each needs (the sum of the bit lengths of what
//!   pco would code), and series coded alike share a group: *values*
//!   (`TAG_VALUES`, pco choosing its delta order: a random walk's steps) or
//!   *chord residuals* (`TAG_CHORD`, see [`chord`]): a series that grows
//!   slowly under noise, as real follower counts do, costs the entropy of
//!   its noise rather than of its steps, which is √2 wider (half a bit per
//!   sample less).
//! * **1**: every series also had an hourly rollup page (the five fields
//!   rewritten as small differences, see `agg`) and a rollup count page.
//!   Still read (its stored rollups are used as they are); compaction
//!   rewrites such blocks as version 2.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use pco::wrapped::{ChunkCompressor, FileCompressor, FileDecompressor};
use pco::{ChunkConfig, DeltaSpec, PagingSpec};

use crate::agg;
use crate::codec::{self, Reader};
use crate::error::IoContext;
use crate::types::HOUR_MS;
use crate::{Aggregate, Error, Result, ValueKind};

pub(crate) const MAGIC: &[u8; 8] = b"TRWLBLK\0";
const TAIL_MAGIC: &[u8; 8] = b"TRWLEND\0";
const TAIL_LEN: usize = 16;
/// A group is written once it holds this many samples: enough for pco's
/// metadata to be negligible, small enough to bound the writer's memory.
const GROUP_TARGET: usize = 1 << 20;
/// At most this many classes are buffered at once; beyond it the fullest
/// group is written early.
const MAX_OPEN_GROUPS: usize = 256;
const INDEX_PAGE: usize = 64;
/// pco's limit on numbers per chunk; also our cap on untrusted counts.
const MAX_N: u64 = 1 << 24;

/// Chunk tags of a group header. Rollup fields and counts: version 1 only.
const TAG_ROLLUP: u8 = 0;
const TAG_COUNT: u8 = 1;
/// Values as they are, pco choosing its delta order.
const TAG_VALUES: u8 = 2;
const TAG_TS: u8 = 3;
/// Integer values as residuals from their chord (version 2; see [`chord`]).
const TAG_CHORD: u8 = 4;

/// One index entry: where a series' pages are and what they hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct IndexEntry {
    pub series: u64,
    pub group: u32,
    pub off: u64,
    /// Bytes of the rollup-field, rollup-count, value and timestamp pages.
    pub lens: [u32; 4],
    pub crc: u32,
    pub n: u32,
    pub min_ts: i64,
    pub max_ts: i64,
    /// Constant timestamp step, or 0 when a timestamp page is stored.
    pub step: i64,
    pub last_bits: u64,
}

impl IndexEntry {
    fn n_hours(&self) -> usize {
        (self.max_ts.div_euclid(HOUR_MS) - self.min_ts.div_euclid(HOUR_MS) + 1) as usize
    }
}

/// Facts about a block, kept in its footer and in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BlockMeta {
    pub level: u32,
    pub day: i64,
    pub min_ts: i64,
    pub max_ts: i64,
    pub samples: u64,
    pub series: u64,
}

#[derive(Debug, Clone, Copy)]
struct Span {
    off: u64,
    len: u64,
    crc: u32,
}

#[derive(Debug, Clone, Copy)]
struct Fence {
    first: u64,
    off: u64,
    len: u64,
}

// ---------------------------------------------------------------- writing

#[derive(Debug)]
struct Pending {
    id: u64,
    n: usize,
    min_ts: i64,
    max_ts: i64,
    step: i64,
    last_bits: u64,
}

#[derive(Debug, Default)]
struct GroupBuf {
    float: bool,
    /// `ints` hold chord residuals (see [`chord`]), not values.
    chord: bool,
    series: Vec<Pending>,
    ints: Vec<i64>,
    floats: Vec<f64>,
    ts: Vec<i64>,
    ts_pages: Vec<usize>,
}

impl GroupBuf {
    fn samples(&self) -> usize {
        self.ints.len() + self.floats.len()
    }
}

/// Series share a group by class, volatility scale, and coding (chord
/// residuals or not).
type GroupKey = (u64, u8, bool);

/// Writes one block from series given in any order (each series once, its
/// points sorted by time without duplicates).
pub(crate) struct BlockWriter {
    path: PathBuf,
    tmp: PathBuf,
    out: BufWriter<File>,
    pos: u64,
    open: HashMap<GroupKey, GroupBuf>,
    groups: Vec<Span>,
    entries: Vec<IndexEntry>,
    meta: BlockMeta,
    pco_header: Vec<u8>,
    scratch: Vec<u8>,
}

fn pco_err(path: &Path, e: pco::errors::PcoError) -> Error {
    Error::Compress {
        path: path.to_path_buf(),
        detail: e.to_string(),
    }
}

impl BlockWriter {
    pub fn create(path: PathBuf, level: u32, day: i64) -> Result<Self> {
        let tmp = path.with_extension("tmp");
        let file = File::create(&tmp).io("creating", &tmp)?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        let header = codec::header(MAGIC);
        out.write_all(&header).io("writing", &tmp)?;
        let pco_header = FileCompressor::default()
            .write_header(Vec::new())
            .map_err(|e| pco_err(&path, e))?;
        Ok(Self {
            path,
            tmp,
            out,
            pos: header.len() as u64,
            open: HashMap::new(),
            groups: Vec::new(),
            entries: Vec::new(),
            meta: BlockMeta {
                level,
                day,
                min_ts: i64::MAX,
                max_ts: i64::MIN,
                samples: 0,
                series: 0,
            },
            pco_header,
            scratch: Vec::new(),
        })
    }

    /// The path the finished block will have.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Adds one series. `class` decides which series share a group.
    pub fn add(
        &mut self,
        id: u64,
        kind: ValueKind,
        class: u64,
        points: &[(i64, u64)],
    ) -> Result<()> {
        let (Some(&(min_ts, _)), Some(&(max_ts, last_bits))) = (points.first(), points.last())
        else {
            return Ok(());
        };
        // Integer series are coded as values or as chord residuals,
        // whichever the estimate says is smaller.
        let residuals = match kind {
            ValueKind::Int => {
                // Estimated without allocating: this runs for every series
                // of every flush and compaction.
                let value = |i: usize| points[i].1 as i64;
                let steps: u64 = points
                    .windows(2)
                    .map(|w| chord::bits((w[1].1 as i64).wrapping_sub(w[0].1 as i64)))
                    .sum();
                let chord_bits: u64 = chord::residuals(points.len(), value)
                    .skip(1)
                    .map(chord::bits)
                    .sum();
                (chord_bits < steps)
                    .then(|| chord::residuals(points.len(), value).collect::<Vec<i64>>())
            }
            ValueKind::Float => None,
        };
        // Series of a class are grouped further by volatility (log2 of the
        // mean absolute step, or residual), so a chunk's pco bins fit series
        // of one scale instead of a mixture of quiet and jumpy ones.
        let mut steps = 0f64;
        match &residuals {
            Some(r) => {
                for &x in r.iter().skip(1).take(r.len().saturating_sub(2)) {
                    steps += x.unsigned_abs() as f64;
                }
            }
            None => {
                for w in points.windows(2) {
                    steps += match kind {
                        ValueKind::Int => {
                            (w[1].1 as i64).wrapping_sub(w[0].1 as i64).unsigned_abs() as f64
                        }
                        ValueKind::Float => (f64::from_bits(w[1].1) - f64::from_bits(w[0].1)).abs(),
                    };
                }
            }
        }
        let mean = steps / points.len().max(2) as f64;
        let scale = if mean >= 1.0 && mean.is_finite() {
            1 + mean.log2().min(62.0) as u8
        } else {
            0
        };
        let key = (class, scale, residuals.is_some());
        let g = self.open.entry(key).or_default();
        g.float = kind == ValueKind::Float;
        g.chord = residuals.is_some();
        let step = if points.len() == 1 {
            1
        } else {
            let step = points[1].0 - points[0].0;
            if points.windows(2).all(|w| w[1].0 - w[0].0 == step) {
                step
            } else {
                0
            }
        };
        if step == 0 {
            g.ts.extend(points.iter().map(|p| p.0));
            g.ts_pages.push(points.len());
        }
        match (kind, residuals) {
            (_, Some(r)) => g.ints.extend(r),
            (ValueKind::Int, None) => g.ints.extend(points.iter().map(|p| p.1 as i64)),
            (ValueKind::Float, None) => g.floats.extend(points.iter().map(|p| f64::from_bits(p.1))),
        }
        g.series.push(Pending {
            id,
            n: points.len(),
            min_ts,
            max_ts,
            step,
            last_bits,
        });
        self.meta.min_ts = self.meta.min_ts.min(min_ts);
        self.meta.max_ts = self.meta.max_ts.max(max_ts);
        self.meta.samples += points.len() as u64;
        self.meta.series += 1;
        let full = g.samples() >= GROUP_TARGET;
        if full {
            self.write_group(key)?;
        } else if self.open.len() > MAX_OPEN_GROUPS {
            let fullest = *self
                .open
                .iter()
                .max_by_key(|(_, g)| g.samples())
                .expect("open groups")
                .0;
            self.write_group(fullest)?;
        }
        Ok(())
    }

    fn compressor<T: pco::data_types::Number>(
        &self,
        nums: &[T],
        pages: Vec<usize>,
        delta: DeltaSpec,
    ) -> Result<ChunkCompressor> {
        let config = ChunkConfig::default()
            .with_delta_spec(delta)
            .with_paging_spec(PagingSpec::Exact(pages));
        FileCompressor::default()
            .chunk_compressor(nums, &config)
            .map_err(|e| pco_err(&self.path, e))
    }

    fn write_group(&mut self, key: GroupKey) -> Result<()> {
        let Some(g) = self.open.remove(&key) else {
            return Ok(());
        };
        if g.series.is_empty() {
            return Ok(());
        }
        let value_pages: Vec<usize> = g.series.iter().map(|s| s.n).collect();
        let (values_tag, values) = if g.float {
            (
                TAG_VALUES,
                self.compressor(&g.floats, value_pages, DeltaSpec::Auto)?,
            )
        } else if g.chord {
            // Residuals are centred noise: no delta helps them.
            (
                TAG_CHORD,
                self.compressor(&g.ints, value_pages, DeltaSpec::None)?,
            )
        } else {
            (
                TAG_VALUES,
                self.compressor(&g.ints, value_pages, DeltaSpec::Auto)?,
            )
        };
        let ts = if g.ts.is_empty() {
            None
        } else {
            Some(self.compressor(&g.ts, g.ts_pages.clone(), DeltaSpec::Auto)?)
        };
        let mut header = Vec::new();
        let mut chunks: Vec<(u8, &ChunkCompressor)> = vec![(values_tag, &values)];
        if let Some(ts) = &ts {
            chunks.push((TAG_TS, ts));
        }
        codec::put_uvar(&mut header, chunks.len() as u64);
        for (tag, cc) in &chunks {
            let meta = cc
                .write_chunk_meta(Vec::new())
                .map_err(|e| pco_err(&self.path, e))?;
            header.push(*tag);
            codec::put_uvar(&mut header, meta.len() as u64);
            header.extend_from_slice(&meta);
        }
        let group = self.groups.len() as u32;
        self.groups.push(Span {
            off: self.pos,
            len: header.len() as u64,
            crc: crc32fast::hash(&header),
        });
        self.write(&header)?;
        let mut ts_page = 0;
        for (i, s) in g.series.iter().enumerate() {
            let mut buf = std::mem::take(&mut self.scratch);
            buf.clear();
            // Version 2: the rollup pages (slots 0 and 1) are empty.
            let mut lens = [0u32; 4];
            buf = values
                .write_page(i, buf)
                .map_err(|e| pco_err(&self.path, e))?;
            lens[2] = buf.len() as u32;
            if s.step == 0 {
                let before = buf.len();
                buf = ts
                    .as_ref()
                    .expect("irregular series have a ts chunk")
                    .write_page(ts_page, buf)
                    .map_err(|e| pco_err(&self.path, e))?;
                lens[3] = (buf.len() - before) as u32;
                ts_page += 1;
            }
            self.entries.push(IndexEntry {
                series: s.id,
                group,
                off: self.pos,
                lens,
                crc: crc32fast::hash(&buf),
                n: s.n as u32,
                min_ts: s.min_ts,
                max_ts: s.max_ts,
                step: s.step,
                last_bits: s.last_bits,
            });
            self.write(&buf)?;
            self.scratch = buf;
        }
        Ok(())
    }

    fn write(&mut self, bytes: &[u8]) -> Result<()> {
        self.out.write_all(bytes).io("writing", &self.tmp)?;
        self.pos += bytes.len() as u64;
        Ok(())
    }

    /// Writes the index and footer, fsyncs, and renames the file into place.
    /// Returns `None` (and leaves no file) when no series was added.
    pub fn finish(mut self) -> Result<Option<BlockMeta>> {
        let classes: Vec<GroupKey> = self.open.keys().copied().collect();
        for class in classes {
            self.write_group(class)?;
        }
        if self.entries.is_empty() {
            drop(self.out);
            let _ = std::fs::remove_file(&self.tmp);
            return Ok(None);
        }
        self.entries.sort_unstable_by_key(|e| e.series);
        let mut fences = Vec::new();
        let entries = std::mem::take(&mut self.entries);
        for page in entries.chunks(INDEX_PAGE) {
            let mut buf = Vec::new();
            encode_index_page(&mut buf, page, self.meta.min_ts);
            let crc = crc32fast::hash(&buf);
            buf.extend_from_slice(&crc.to_le_bytes());
            fences.push(Fence {
                first: page[0].series,
                off: self.pos,
                len: buf.len() as u64,
            });
            self.write(&buf)?;
        }
        let m = self.meta;
        let mut footer = Vec::new();
        codec::put_uvar(&mut footer, u64::from(m.level));
        codec::put_ivar(&mut footer, m.day);
        codec::put_ivar(&mut footer, m.min_ts);
        codec::put_ivar(&mut footer, m.max_ts);
        codec::put_uvar(&mut footer, m.samples);
        codec::put_uvar(&mut footer, m.series);
        codec::put_uvar(&mut footer, self.pco_header.len() as u64);
        footer.extend_from_slice(&self.pco_header);
        codec::put_uvar(&mut footer, self.groups.len() as u64);
        for g in &self.groups {
            codec::put_uvar(&mut footer, g.off);
            codec::put_uvar(&mut footer, g.len);
            footer.extend_from_slice(&g.crc.to_le_bytes());
        }
        codec::put_uvar(&mut footer, fences.len() as u64);
        for f in &fences {
            codec::put_uvar(&mut footer, f.first);
            codec::put_uvar(&mut footer, f.off);
            codec::put_uvar(&mut footer, f.len);
        }
        let mut tail = Vec::with_capacity(TAIL_LEN);
        tail.extend_from_slice(&(footer.len() as u32).to_le_bytes());
        tail.extend_from_slice(&crc32fast::hash(&footer).to_le_bytes());
        tail.extend_from_slice(TAIL_MAGIC);
        self.write(&footer)?;
        self.write(&tail)?;
        let file = self.out.into_inner().map_err(|e| Error::Io {
            op: "writing",
            path: self.tmp.clone(),
            source: e.into_error(),
        })?;
        file.sync_all().io("fsync", &self.tmp)?;
        std::fs::rename(&self.tmp, &self.path).io("renaming", &self.tmp)?;
        Ok(Some(m))
    }
}

fn encode_index_page(buf: &mut Vec<u8>, page: &[IndexEntry], block_min: i64) {
    codec::put_uvar(buf, page.len() as u64);
    let mut prev = 0u64;
    for e in page {
        codec::put_uvar(buf, e.series - prev);
        prev = e.series;
        codec::put_uvar(buf, u64::from(e.group));
        codec::put_uvar(buf, e.off);
        for l in e.lens {
            codec::put_uvar(buf, u64::from(l));
        }
        buf.extend_from_slice(&e.crc.to_le_bytes());
        codec::put_uvar(buf, u64::from(e.n));
        codec::put_ivar(buf, e.min_ts.wrapping_sub(block_min));
        codec::put_uvar(buf, e.step as u64);
        if e.step == 0 {
            codec::put_ivar(buf, e.max_ts.wrapping_sub(e.min_ts));
        }
        codec::put_ivar(buf, e.last_bits as i64);
    }
}

#[deny(clippy::unwrap_used, clippy::indexing_slicing)]
fn decode_index_page(bytes: &[u8], block_min: i64) -> Option<Vec<IndexEntry>> {
    let mut r = Reader::new(bytes);
    let count = r.uvar()?;
    if count > INDEX_PAGE as u64 {
        return None;
    }
    let mut out = Vec::with_capacity(count as usize);
    let mut series = 0u64;
    for i in 0..count {
        let delta = r.uvar()?;
        if i > 0 && delta == 0 {
            return None;
        }
        series = series.checked_add(delta)?;
        let group = u32::try_from(r.uvar()?).ok()?;
        let off = r.uvar()?;
        let mut lens = [0u32; 4];
        for l in &mut lens {
            *l = u32::try_from(r.uvar()?).ok()?;
        }
        let crc = r.u32()?;
        let n = r.uvar()?;
        if n == 0 || n > MAX_N {
            return None;
        }
        let min_ts = block_min.wrapping_add(r.ivar()?);
        let step = i64::try_from(r.uvar()?).ok()?;
        let max_ts = if step == 0 {
            min_ts.checked_add(r.ivar()?)?
        } else {
            min_ts.checked_add(step.checked_mul(n as i64 - 1)?)?
        };
        if max_ts < min_ts || (max_ts / HOUR_MS - min_ts / HOUR_MS) as u64 >= MAX_N / 5 {
            return None;
        }
        let last_bits = r.ivar()? as u64;
        out.push(IndexEntry {
            series,
            group,
            off,
            lens,
            crc,
            n: n as u32,
            min_ts,
            max_ts,
            step,
            last_bits,
        });
    }
    r.is_empty().then_some(out)
}

// ---------------------------------------------------------------- reading

/// Where a block's bytes come from: its file, or memory (fuzzing, tests).
#[derive(Debug)]
enum Source {
    File(File),
    Mem(Arc<[u8]>),
}

impl Source {
    fn read(&self, off: u64, len: u64) -> std::io::Result<Vec<u8>> {
        let too_big = || {
            std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "range past the end of the block",
            )
        };
        let len = usize::try_from(len).map_err(|_| too_big())?;
        match self {
            Source::File(f) => {
                let size = f.metadata()?.len();
                if off.checked_add(len as u64).is_none_or(|end| end > size) {
                    return Err(too_big());
                }
                let mut buf = vec![0; len];
                f.read_exact_at(&mut buf, off)?;
                Ok(buf)
            }
            Source::Mem(m) => {
                let start = usize::try_from(off).map_err(|_| too_big())?;
                m.get(start..start.checked_add(len).ok_or_else(too_big)?)
                    .map(<[u8]>::to_vec)
                    .ok_or_else(too_big)
            }
        }
    }

    fn len(&self) -> std::io::Result<u64> {
        match self {
            Source::File(f) => Ok(f.metadata()?.len()),
            Source::Mem(m) => Ok(m.len() as u64),
        }
    }
}

/// An open block: footer facts, group and fence tables in memory (about
/// 16 bytes per 64 series), everything else read on demand.
#[derive(Debug)]
pub(crate) struct Block {
    pub id: u64,
    pub path: PathBuf,
    pub meta: BlockMeta,
    pub bytes: u64,
    /// The format version it was written in (1 or 2; see the module docs).
    pub version: u32,
    source: Source,
    pco_header: Vec<u8>,
    groups: Vec<Span>,
    fences: Vec<Fence>,
    /// Set once a checksum failure was reported, so it is counted once.
    reported: AtomicBool,
}

/// A series' checked pages with what decodes them.
struct Loaded {
    fd: FileDecompressor,
    /// Chunk metadata of the series' group, by chunk tag.
    metas: HashMap<u8, Vec<u8>>,
    data: Vec<u8>,
}

/// What a corrupt part of a block looks like to callers.
fn corrupt(path: &Path, detail: impl Into<String>) -> Error {
    Error::Corrupt {
        path: path.to_path_buf(),
        detail: detail.into(),
    }
}

impl Block {
    /// Opens a block file: checks its header, then its footer's checksum.
    #[deny(clippy::unwrap_used, clippy::indexing_slicing)]
    pub fn open(path: PathBuf, id: u64) -> Result<Self> {
        let file = File::open(&path).io("opening", &path)?;
        Self::from_source(Source::File(file), path, id)
    }

    /// A block held in memory (for fuzzing and tests).
    pub fn from_bytes(bytes: Arc<[u8]>) -> Result<Self> {
        Self::from_source(Source::Mem(bytes), PathBuf::from("<memory>"), 0)
    }

    fn from_source(source: Source, path: PathBuf, id: u64) -> Result<Self> {
        let size = source.len().io("reading", &path)?;
        let head = source.read(0, 12.min(size)).io("reading", &path)?;
        let version = codec::check_header(&head, MAGIC, &path)?;
        if size < (12 + TAIL_LEN) as u64 {
            return Err(corrupt(&path, "shorter than header and tail"));
        }
        let tail = source
            .read(size - TAIL_LEN as u64, TAIL_LEN as u64)
            .io("reading", &path)?;
        if &tail[8..] != TAIL_MAGIC {
            return Err(corrupt(&path, "no end marker (incomplete write?)"));
        }
        let footer_len = u64::from(u32::from_le_bytes(tail[..4].try_into().expect("4")));
        let footer_crc = u32::from_le_bytes(tail[4..8].try_into().expect("4"));
        if footer_len > size - (12 + TAIL_LEN) as u64 {
            return Err(corrupt(&path, "footer length past the start"));
        }
        let footer = source
            .read(size - TAIL_LEN as u64 - footer_len, footer_len)
            .io("reading", &path)?;
        if crc32fast::hash(&footer) != footer_crc {
            return Err(corrupt(&path, "footer checksum mismatch"));
        }
        let parsed = (|| {
            let mut r = Reader::new(&footer);
            let meta = BlockMeta {
                level: u32::try_from(r.uvar()?).ok()?,
                day: r.ivar()?,
                min_ts: r.ivar()?,
                max_ts: r.ivar()?,
                samples: r.uvar()?,
                series: r.uvar()?,
            };
            let hlen = usize::try_from(r.uvar()?).ok()?;
            let pco_header = r.bytes(hlen)?.to_vec();
            let n_groups = r.uvar()?;
            let mut groups = Vec::new();
            for _ in 0..n_groups {
                groups.push(Span {
                    off: r.uvar()?,
                    len: r.uvar()?,
                    crc: r.u32()?,
                });
            }
            let n_fences = r.uvar()?;
            let mut fences: Vec<Fence> = Vec::new();
            for _ in 0..n_fences {
                let f = Fence {
                    first: r.uvar()?,
                    off: r.uvar()?,
                    len: r.uvar()?,
                };
                if fences.last().is_some_and(|p| p.first >= f.first) {
                    return None;
                }
                fences.push(f);
            }
            r.is_empty().then_some((meta, pco_header, groups, fences))
        })();
        let Some((meta, pco_header, groups, fences)) = parsed else {
            return Err(corrupt(&path, "undecodable footer"));
        };
        Ok(Self {
            id,
            path,
            meta,
            bytes: size,
            version,
            source,
            pco_header,
            groups,
            fences,
            reported: AtomicBool::new(false),
        })
    }

    /// Logs a corruption once per block; returns true the first time.
    pub fn report(&self, err: &Error) -> bool {
        let first = !self.reported.swap(true, Ordering::Relaxed);
        if first {
            tracing::error!(file = %self.path.display(), error = %err, "corrupt block; its other series stay readable");
        }
        first
    }

    /// Whether a corruption was found in this block (it is then kept out of
    /// compaction so that no data is silently dropped by a rewrite).
    pub fn is_reported(&self) -> bool {
        self.reported.load(Ordering::Relaxed)
    }

    pub fn index_pages(&self) -> usize {
        self.fences.len()
    }

    /// The entries of index page `i`, checksum verified.
    pub fn index_page(&self, i: usize) -> Result<Vec<IndexEntry>> {
        let f = self.fences[i];
        let mut buf = self.source.read(f.off, f.len).io("reading", &self.path)?;
        if buf.len() < 4 {
            return Err(corrupt(&self.path, format!("index page {i} too short")));
        }
        let crc = u32::from_le_bytes(buf[buf.len() - 4..].try_into().expect("4"));
        buf.truncate(buf.len() - 4);
        if crc32fast::hash(&buf) != crc {
            return Err(corrupt(
                &self.path,
                format!("index page {i} checksum mismatch"),
            ));
        }
        decode_index_page(&buf, self.meta.min_ts)
            .filter(|p| p.first().map(|e| e.series) == Some(f.first))
            .ok_or_else(|| corrupt(&self.path, format!("index page {i} undecodable")))
    }

    /// The index entry of `series`, if the block holds it.
    pub fn find(&self, series: u64) -> Result<Option<IndexEntry>> {
        let i = self.fences.partition_point(|f| f.first <= series);
        if i == 0 {
            return Ok(None);
        }
        Ok(self
            .index_page(i - 1)?
            .into_iter()
            .find(|e| e.series == series))
    }

    /// Reads and checks a series' pages and its group's chunk metadata.
    #[deny(clippy::unwrap_used, clippy::indexing_slicing)]
    fn load(&self, e: &IndexEntry) -> Result<Loaded> {
        let g = *self.groups.get(e.group as usize).ok_or_else(|| {
            corrupt(
                &self.path,
                format!("series {} points at missing group {}", e.series, e.group),
            )
        })?;
        let header = self.source.read(g.off, g.len).io("reading", &self.path)?;
        if crc32fast::hash(&header) != g.crc {
            return Err(corrupt(
                &self.path,
                format!("group {} header checksum mismatch", e.group),
            ));
        }
        let metas = (|| {
            let mut r = Reader::new(&header);
            let n = r.uvar()?;
            let mut metas = HashMap::new();
            for _ in 0..n.min(8) {
                let tag = r.u8()?;
                let len = usize::try_from(r.uvar()?).ok()?;
                metas.insert(tag, r.bytes(len)?.to_vec());
            }
            r.is_empty().then_some(metas)
        })()
        .ok_or_else(|| corrupt(&self.path, format!("group {} header undecodable", e.group)))?;
        let total: u64 = e.lens.iter().map(|&l| u64::from(l)).sum();
        let data = self.source.read(e.off, total).io("reading", &self.path)?;
        if crc32fast::hash(&data) != e.crc {
            return Err(corrupt(
                &self.path,
                format!("data of series {} checksum mismatch", e.series),
            ));
        }
        let (fd, _) = FileDecompressor::new(&self.pco_header[..])
            .map_err(|err| corrupt(&self.path, format!("pco header: {err}")))?;
        Ok(Loaded { fd, metas, data })
    }

    fn page<T: pco::data_types::Number + Default>(
        &self,
        fd: &FileDecompressor,
        metas: &HashMap<u8, Vec<u8>>,
        tag: u8,
        page: &[u8],
        n: usize,
    ) -> Result<Vec<T>> {
        let what = |err: pco::errors::PcoError| corrupt(&self.path, format!("page {tag}: {err}"));
        let meta = metas
            .get(&tag)
            .ok_or_else(|| corrupt(&self.path, format!("group lacks chunk {tag}")))?;
        let (cd, _) = fd.chunk_decompressor::<T, _>(&meta[..]).map_err(what)?;
        let mut pd = cd.page_decompressor(page, n).map_err(what)?;
        let mut out = vec![T::default(); n];
        let progress = pd.decompress(&mut out).map_err(what)?;
        if !progress.finished || progress.n_processed != n {
            return Err(corrupt(&self.path, format!("page {tag} ended early")));
        }
        Ok(out)
    }

    fn slices<'a>(e: &IndexEntry, data: &'a [u8]) -> [&'a [u8]; 4] {
        let mut off = 0;
        e.lens.map(|l| {
            let s = &data[off..off + l as usize];
            off += l as usize;
            s
        })
    }

    /// Appends the series' points with `from <= ts < to` to `out`.
    #[deny(clippy::unwrap_used, clippy::indexing_slicing)]
    pub fn read_points(
        &self,
        e: &IndexEntry,
        kind: ValueKind,
        from: i64,
        to: i64,
        out: &mut Vec<(i64, u64)>,
    ) -> Result<()> {
        let Loaded { fd, metas, data } = self.load(e)?;
        let [_, _, values, ts] = Self::slices(e, &data);
        let n = e.n as usize;
        let bits: Vec<u64> = match kind {
            ValueKind::Int if metas.contains_key(&TAG_CHORD) => {
                let mut r = self.page::<i64>(&fd, &metas, TAG_CHORD, values, n)?;
                chord::restore(&mut r);
                r.into_iter().map(|v| v as u64).collect()
            }
            ValueKind::Int => self
                .page::<i64>(&fd, &metas, TAG_VALUES, values, n)?
                .into_iter()
                .map(|v| v as u64)
                .collect(),
            ValueKind::Float => self
                .page::<f64>(&fd, &metas, TAG_VALUES, values, n)?
                .into_iter()
                .map(f64::to_bits)
                .collect(),
        };
        if e.step == 0 {
            let ts = self.page::<i64>(&fd, &metas, TAG_TS, ts, n)?;
            out.extend(
                ts.into_iter()
                    .zip(bits)
                    .filter(|(t, _)| (from..to).contains(t)),
            );
        } else {
            out.extend(
                bits.into_iter()
                    .enumerate()
                    .map(|(i, b)| (e.min_ts + i as i64 * e.step, b))
                    .filter(|(t, _)| (from..to).contains(t)),
            );
        }
        Ok(())
    }

    /// The series' hourly rollups in this block, in time order: computed
    /// from its values (version 2), or the stored ones (version 1).
    #[deny(clippy::unwrap_used, clippy::indexing_slicing)]
    pub fn read_rollups(
        &self,
        e: &IndexEntry,
        kind: ValueKind,
        out: &mut Vec<Aggregate>,
    ) -> Result<()> {
        if self.version >= 2 {
            let mut points = Vec::with_capacity(e.n as usize);
            self.read_points(e, kind, i64::MIN, i64::MAX, &mut points)?;
            agg::aggregate(kind, &points, HOUR_MS, out);
            return Ok(());
        }
        let Loaded { fd, metas, data } = self.load(e)?;
        let [fields, counts, _, _] = Self::slices(e, &data);
        let hours = e.n_hours();
        let counts = self.page::<i64>(&fd, &metas, TAG_COUNT, counts, hours)?;
        let first_hour = e.min_ts.div_euclid(HOUR_MS) * HOUR_MS;
        let ok = match kind {
            ValueKind::Int => {
                let f = self.page::<i64>(&fd, &metas, TAG_ROLLUP, fields, 5 * hours)?;
                agg::decode_int_rollups(first_hour, &f, &counts, out)
            }
            ValueKind::Float => {
                let f = self.page::<f64>(&fd, &metas, TAG_ROLLUP, fields, 5 * hours)?;
                agg::decode_float_rollups(first_hour, &f, &counts, out)
            }
        };
        ok.ok_or_else(|| {
            corrupt(
                &self.path,
                format!("rollups of series {} undecodable", e.series),
            )
        })
    }
}

/// Chord residuals: a series minus the straight line from its first to its
/// last value. Stored as `first | residuals of points 1..n-1 | last −
/// first`, so a page decodes alone. All arithmetic wraps and the line is
/// computed identically on both sides, so any `i64` series round-trips.
pub(crate) mod chord {
    /// The chord's values at points 1, 2, … of `n`: `first + trunc(span ·
    /// i / (n − 1))`, stepped without a division per point (an i128
    /// division per point made the writer's estimate cost more CPU than the
    /// compression it steers). With `q, r = span / d, span % d`, the offset
    /// is `q·i + trunc(r·i / d)` (both terms share the sign of `span`), and
    /// the second term is carried as a quotient and remainder.
    pub(crate) struct Line {
        first: i64,
        q: i64,
        r: i64,
        d: i64,
        /// `q · i`.
        base: i64,
        /// `trunc(r · i / d)` and `r · i − t · d` (`|rem| < d`).
        t: i64,
        rem: i64,
    }

    impl Line {
        pub(crate) fn new(first: i64, span: i64, n: usize) -> Self {
            let d = (n as i64 - 1).max(1);
            Self {
                first,
                q: span / d,
                r: span % d,
                d,
                base: 0,
                t: 0,
                rem: 0,
            }
        }

        /// The value at the next point (1 on the first call).
        pub(crate) fn next(&mut self) -> i64 {
            self.base = self.base.wrapping_add(self.q);
            self.rem += self.r;
            if self.r > 0 && self.rem >= self.d {
                self.rem -= self.d;
                self.t += 1;
            } else if self.r < 0 && self.rem <= -self.d {
                self.rem += self.d;
                self.t -= 1;
            }
            self.first.wrapping_add(self.base.wrapping_add(self.t))
        }
    }

    /// The residuals of the `n` values `value(0..n)`, in stored order.
    pub(crate) fn residuals(n: usize, value: impl Fn(usize) -> i64) -> impl Iterator<Item = i64> {
        let (first, last) = if n == 0 {
            (0, 0)
        } else {
            (value(0), value(n - 1))
        };
        let span = last.wrapping_sub(first);
        let mut line = Line::new(first, span, n);
        (0..n).map(move |i| match i {
            0 => first,
            i if i + 1 == n => span,
            i => value(i).wrapping_sub(line.next()),
        })
    }

    /// Turns residuals back into values, in place. Any input is accepted.
    pub(crate) fn restore(r: &mut [i64]) {
        let n = r.len();
        let (Some(&first), Some(&span)) = (r.first(), r.last()) else {
            return;
        };
        if n < 2 {
            return;
        }
        let mut line = Line::new(first, span, n);
        for v in r.iter_mut().take(n - 1).skip(1) {
            *v = line.next().wrapping_add(*v);
        }
        if let Some(last) = r.last_mut() {
            *last = first.wrapping_add(span);
        }
    }

    /// Bits of `x` zigzag-coded: the estimate of what coding it costs.
    pub(crate) fn bits(x: i64) -> u64 {
        u64::from(64 - crate::codec::zigzag(x).leading_zeros())
    }
}

/// Decodes everything a block holds, as the store would, and reports the
/// first error. Used by the fuzz target and the random-bytes proptest: it
/// must return an error, never panic, on any input.
pub fn check_bytes(bytes: &[u8]) -> Result<u64> {
    let block = Block::from_bytes(Arc::from(bytes))?;
    let mut points = 0u64;
    for i in 0..block.index_pages() {
        for e in block.index_page(i)? {
            for kind in [ValueKind::Int, ValueKind::Float] {
                let mut out = Vec::new();
                if block
                    .read_points(&e, kind, i64::MIN, i64::MAX, &mut out)
                    .is_ok()
                {
                    points += out.len() as u64;
                }
                let _ = block.read_rollups(&e, kind, &mut Vec::new());
            }
        }
    }
    Ok(points)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Where the bytes of a day block of random walks go (run with
    /// `--ignored --nocapture` when tuning the format).
    #[test]
    #[ignore]
    fn byte_breakdown_of_a_day_of_random_walks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("1.blk");
        let mut w = BlockWriter::create(path.clone(), 0, 0).unwrap();
        let mut state = 0x9e3779b97f4a7c15u64;
        let mut normal = || {
            let mut u = || {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 11) as f64 / (1u64 << 53) as f64
            };
            let (a, b) = (1.0 - u(), u());
            (-2.0 * a.ln()).sqrt() * (std::f64::consts::TAU * b).cos()
        };
        let series = 2000u64;
        for id in 0..series {
            let sigma = if id % 2 == 0 { 10_000.0 } else { 100.0 };
            let mut v = 100_000.0f64;
            let pts: Vec<(i64, u64)> = (0..1440)
                .map(|m| {
                    v = (v + sigma * normal()).round();
                    (m * 60_000 + (id as i64 * 7919) % 60_000, v as i64 as u64)
                })
                .collect();
            w.add(id, ValueKind::Int, id % 2, &pts).unwrap();
        }
        w.finish().unwrap();
        let b = Block::open(path, 1).unwrap();
        let mut sums = [0u64; 4];
        for i in 0..b.index_pages() {
            for e in b.index_page(i).unwrap() {
                for (s, l) in sums.iter_mut().zip(e.lens) {
                    *s += u64::from(l);
                }
            }
        }
        let n = (series * 1440) as f64;
        println!(
            "total {:.3} B/sample: values {:.3}, ts {:.3}, rest (index, metas, footer) {:.3}",
            b.bytes as f64 / n,
            sums[2] as f64 / n,
            sums[3] as f64 / n,
            (b.bytes - sums.iter().sum::<u64>()) as f64 / n
        );
    }

    /// The chunk tags of the group holding `series`.
    fn tags(b: &Block, series: u64) -> Vec<u8> {
        let e = b.find(series).unwrap().unwrap();
        let mut tags: Vec<u8> = b.load(&e).unwrap().metas.into_keys().collect();
        tags.sort_unstable();
        tags
    }

    #[test]
    fn a_slow_trend_under_noise_is_coded_as_chord_residuals_and_a_walk_as_values() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("1.blk");
        let mut w = BlockWriter::create(path.clone(), 0, 0).unwrap();
        let mut state = 7u64;
        let mut noise = || {
            state = crate::codec::zigzag(state as i64).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x1234;
            (state >> 58) as i64 - 32
        };
        let mut walk = 1_000_000i64;
        let (mut trend, mut walks) = (Vec::new(), Vec::new());
        for m in 0..1_440i64 {
            trend.push((m * 60_000, (50_000 + m / 20 + noise() / 4) as u64));
            walk += noise() * 300;
            walks.push((m * 60_000, walk as u64));
        }
        w.add(1, ValueKind::Int, 1, &trend).unwrap();
        w.add(2, ValueKind::Int, 1, &walks).unwrap();
        w.finish().unwrap();
        let b = Block::open(path, 1).unwrap();
        assert_eq!(tags(&b, 1), vec![TAG_CHORD]);
        assert_eq!(tags(&b, 2), vec![TAG_VALUES]);
        for (id, pts) in [(1, &trend), (2, &walks)] {
            let mut out = Vec::new();
            b.read_points(
                &b.find(id).unwrap().unwrap(),
                ValueKind::Int,
                i64::MIN,
                i64::MAX,
                &mut out,
            )
            .unwrap();
            assert_eq!(&out, pts);
        }
    }

    proptest! {
        #[test]
        fn chord_residuals_restore_any_series(values in prop::collection::vec(any::<i64>(), 0..50)) {
            let mut r: Vec<i64> = chord::residuals(values.len(), |i| values[i]).collect();
            chord::restore(&mut r);
            prop_assert_eq!(r, values);
        }

        #[test]
        fn the_stepped_chord_is_the_exact_one(first in any::<i64>(), span in any::<i64>(), n in 2usize..5_000) {
            // The definition, as format version 2 states it.
            let exact = |i: usize| {
                first.wrapping_add((i128::from(span) * i as i128 / (n as i128 - 1)) as i64)
            };
            let mut line = chord::Line::new(first, span, n);
            for i in 1..n {
                prop_assert_eq!(line.next(), exact(i), "point {} of {}", i, n);
            }
        }

        #[test]
        fn any_integer_series_round_trips_through_a_block(
            start in any::<i64>(),
            steps in prop::collection::vec(any::<i64>().prop_map(|s| s >> 40), 1..300),
            trend in 0i64..1_000,
            extreme in any::<bool>(),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("1.blk");
            let mut w = BlockWriter::create(path.clone(), 0, 0).unwrap();
            let mut v = start;
            let pts: Vec<(i64, u64)> = steps
                .iter()
                .enumerate()
                .map(|(i, &s)| {
                    v = if extreme && i % 7 == 3 { i64::MIN } else { v.wrapping_add(trend).wrapping_add(s) };
                    (i as i64 * 60_000, v as u64)
                })
                .collect();
            w.add(9, ValueKind::Int, 1, &pts).unwrap();
            w.finish().unwrap();
            let b = Block::open(path, 1).unwrap();
            let mut out = Vec::new();
            b.read_points(&b.find(9).unwrap().unwrap(), ValueKind::Int, i64::MIN, i64::MAX, &mut out)
                .unwrap();
            prop_assert_eq!(out, pts);
        }
    }

    #[test]
    fn blocks_round_trip_regular_irregular_and_float_series() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("1.blk");
        let mut w = BlockWriter::create(path.clone(), 0, 0).unwrap();
        let regular: Vec<(i64, u64)> = (0..500)
            .map(|i| (7_000 + i * 60_000, (100_000 + i * i) as u64))
            .collect();
        let irregular: Vec<(i64, u64)> = (0..300).map(|i| (i * i * 17, (-i) as u64)).collect();
        let floats: Vec<(i64, u64)> = (0..10)
            .map(|i| (i * 1000, (i as f64 * 0.25).to_bits()))
            .collect();
        w.add(3, ValueKind::Int, 1, &regular).unwrap();
        w.add(1, ValueKind::Int, 1, &irregular).unwrap();
        w.add(2, ValueKind::Float, 2, &floats).unwrap();
        let meta = w.finish().unwrap().unwrap();
        assert_eq!(meta.samples, 810);
        let b = Block::open(path, 1).unwrap();
        for (id, kind, pts) in [
            (3, ValueKind::Int, &regular),
            (1, ValueKind::Int, &irregular),
            (2, ValueKind::Float, &floats),
        ] {
            let e = b.find(id).unwrap().unwrap();
            let mut out = Vec::new();
            b.read_points(&e, kind, i64::MIN, i64::MAX, &mut out)
                .unwrap();
            assert_eq!(&out, pts);
            let mut rollups = Vec::new();
            b.read_rollups(&e, kind, &mut rollups).unwrap();
            let mut expected = Vec::new();
            agg::aggregate(kind, pts, HOUR_MS, &mut expected);
            assert_eq!(rollups, expected);
        }
        assert!(b.find(0).unwrap().is_none());
        assert!(b.find(4).unwrap().is_none());
        assert!(check_bytes(&std::fs::read(&b.path).unwrap()).unwrap() > 0);
    }
}
