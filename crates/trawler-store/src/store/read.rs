//! Reading: raw ranges, downsampled buckets, hourly rollups and latest
//! points of one series, and listings of a job's series.
//!
//! A series' data lives in up to three kinds of places at once: blocks on
//! disk, the frozen head a flush is writing, and the active head. A read
//! takes a snapshot of all three under a short read lock (the block list is
//! an `Arc`, the frozen head too), then reads without any lock, so a read
//! never holds up an append; blocks are immutable and held open, so a
//! compaction or retention step that replaces them does not disturb a read
//! under way. Because stale samples are dropped on append, a
//! series' blocks are disjoint in time and older than its heads: results
//! are put together by concatenation in time order, not by resolving
//! conflicts. A corrupt block part costs only that part: it is reported
//! once, counted, and left out of the answer.
//!
//! Latest points and listings come from memory (the catalog and
//! `Mem::latest`) and never touch a block.

use std::sync::atomic::Ordering;

use super::{read, Inner, Store};
use crate::block::{Block, IndexEntry};
use crate::head::sort_dedup;
use crate::types::{DAY_MS, HOUR_MS};
use crate::{
    agg, Aggregate, Error, Point, Resolution, Result, SeriesId, SeriesInfo, Value, ValueKind,
};

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
    /// counted in [`Stats::corrupt_blocks`](crate::Stats::corrupt_blocks),
    /// and left out; the rest is returned.
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

    /// Rollups of the buckets starting in `[from_ms, to_ms)` (`from_ms`
    /// rounded down to the bucket). Hourly rollups of a block are computed
    /// from its values (version 2; version-1 blocks stored them); daily ones
    /// are merged from hourly ones.
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
}

/// What a read of one series over `[from, to)` has to put together,
/// snapshotted at one instant and oldest first.
struct Sources<T> {
    /// What the block reader gave for each block holding the series in the
    /// range, concatenated in time order (a series' blocks are disjoint in
    /// time, so ordering them by their first sample orders their data).
    blocks: Vec<T>,
    /// The series' points in the frozen head (while a flush writes it), then
    /// in the active head: each sorted by time with the last write of a
    /// timestamp winning, and not cut to the range.
    heads: Vec<Vec<(i64, u64)>>,
}

impl Inner {
    /// The one walk over a series' data behind every block read (`points`
    /// and `hourly`), so that which blocks are read, in which order, and
    /// how a corrupt one is handled are decided in one place.
    ///
    /// Takes the block list and the heads under one short read lock, then
    /// calls `read_block` for each block whose series entry overlaps
    /// `[from, to)`, with a fresh vector, so a read that fails halfway
    /// leaves nothing behind. A corrupt block part is reported once and
    /// left out (see [`Inner::corrupt_or`]); any other error ends the read.
    fn sources<T>(
        &self,
        id: u64,
        from: i64,
        to: i64,
        read_block: impl Fn(&Block, &IndexEntry, &mut Vec<T>) -> Result<()>,
    ) -> Result<Sources<T>> {
        let (blocks, frozen, active) = {
            let mem = read(&self.mem);
            (
                mem.blocks.clone(),
                mem.frozen.as_ref().map(|f| f.0.clone()),
                mem.active.sorted(id),
            )
        };
        let mut parts: Vec<(i64, Vec<T>)> = Vec::new();
        for b in blocks
            .iter()
            .filter(|b| b.meta.min_ts < to && b.meta.max_ts >= from)
        {
            let res = b.find(id).and_then(|e| match e {
                Some(e) if e.min_ts < to && e.max_ts >= from => {
                    let mut out = Vec::new();
                    read_block(b, &e, &mut out)?;
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
        Ok(Sources {
            blocks: parts.into_iter().flat_map(|p| p.1).collect(),
            heads: [frozen.map(|f| f.sorted(id)), Some(active)]
                .into_iter()
                .flatten()
                .collect(),
        })
    }

    /// Raw points in `[from, to)`, time order; for a timestamp in more than
    /// one source, the newest source wins (the active head over the frozen
    /// one over blocks).
    fn points(&self, id: u64, kind: ValueKind, from: i64, to: i64) -> Result<Vec<(i64, u64)>> {
        let Sources { blocks, heads } = self.sources(id, from, to, |b, e, out| {
            b.read_points(e, kind, from, to, out)
        })?;
        let mut all = blocks;
        for head in heads {
            all.extend(head.into_iter().filter(|p| (from..to).contains(&p.0)));
        }
        Ok(sort_dedup(all))
    }

    /// Hourly rollups of the hours starting in `[from, to)`: the blocks'
    /// (see `Block::read_rollups`), then the heads' computed from their points, an hour
    /// split across sources merged into one.
    fn hourly(&self, id: u64, kind: ValueKind, from: i64, to: i64) -> Result<Vec<Aggregate>> {
        let Sources { blocks, heads } =
            self.sources(id, from, to, |b, e, out| b.read_rollups(e, kind, out))?;
        let mut parts = vec![blocks];
        for head in heads {
            let mut aggs = Vec::new();
            agg::aggregate(kind, &head, HOUR_MS, &mut aggs);
            parts.push(aggs);
        }
        let mut out = Vec::new();
        for a in parts.into_iter().flatten() {
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
}
