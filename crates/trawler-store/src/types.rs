//! The values the store's API speaks in.

/// Identifies one series inside one store. Dense (0, 1, 2, ... in order of
/// creation) and persisted in the series catalog, so ids survive restarts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SeriesId(pub u64);

/// What a series holds. Fixed at creation: a block column is compressed as
/// integers or as floats, never a mix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ValueKind {
    /// Signed 64-bit integers (counters such as followerCount).
    Int,
    /// 64-bit floats.
    Float,
}

/// One value. Integers stay exact end to end.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value {
    /// An integer value.
    Int(i64),
    /// A float value.
    Float(f64),
}

impl Value {
    /// The kind of this value.
    pub fn kind(self) -> ValueKind {
        match self {
            Value::Int(_) => ValueKind::Int,
            Value::Float(_) => ValueKind::Float,
        }
    }

    /// The value as a float (integers above 2^53 lose precision).
    pub fn as_f64(self) -> f64 {
        match self {
            Value::Int(v) => v as f64,
            Value::Float(v) => v,
        }
    }

    /// The 64 bits the head and the WAL keep, given the series' kind.
    pub(crate) fn to_bits(self) -> u64 {
        match self {
            Value::Int(v) => v as u64,
            Value::Float(v) => v.to_bits(),
        }
    }

    pub(crate) fn from_bits(kind: ValueKind, bits: u64) -> Self {
        match kind {
            ValueKind::Int => Value::Int(bits as i64),
            ValueKind::Float => Value::Float(f64::from_bits(bits)),
        }
    }
}

/// The identity of a series: which job wrote it, about which entity (an
/// account pk, an experiment id, ...), and which metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SeriesKey<'a> {
    /// The job name.
    pub job: &'a str,
    /// The entity id within the job.
    pub entity: u64,
    /// The metric name, e.g. `followerCount`.
    pub metric: &'a str,
}

/// A series as listed by [`Store::list_series`](crate::Store::list_series).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeriesInfo {
    /// Its id.
    pub id: SeriesId,
    /// The entity id.
    pub entity: u64,
    /// The metric name.
    pub metric: String,
    /// The value kind.
    pub kind: ValueKind,
}

/// One sample to append.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// The series, from [`Store::series`](crate::Store::series).
    pub series: SeriesId,
    /// Unix milliseconds. Stamp scheduled slot times, not response times: a
    /// regular series then costs nothing for its timestamps.
    pub ts_ms: i64,
    /// The value; its kind must match the series'.
    pub value: Value,
}

/// One stored point.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    /// Unix milliseconds.
    pub ts_ms: i64,
    /// The value.
    pub value: Value,
}

/// Aggregates of the points of one series in one time bucket: what hourly and
/// daily rollups store and what downsampled reads return.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Aggregate {
    /// Start of the bucket (unix ms, aligned to the bucket size).
    pub start_ms: i64,
    /// Points in the bucket (always at least 1 in results).
    pub count: u64,
    /// Smallest value.
    pub min: Value,
    /// Largest value.
    pub max: Value,
    /// Sum of the values (integer sums are exact while |sum| < 2^62).
    pub sum: Value,
    /// Value of the earliest point.
    pub first: Value,
    /// Value of the latest point.
    pub last: Value,
}

impl Aggregate {
    /// The mean of the bucket.
    pub fn avg(&self) -> f64 {
        self.sum.as_f64() / self.count as f64
    }
}

/// The bucket size of rollups.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolution {
    /// One aggregate per UTC hour.
    Hour,
    /// One aggregate per UTC day (merged from the hourly rollups).
    Day,
}

impl Resolution {
    /// The bucket length in milliseconds.
    pub fn millis(self) -> i64 {
        match self {
            Resolution::Hour => HOUR_MS,
            Resolution::Day => DAY_MS,
        }
    }
}

/// What [`Store::append`](crate::Store::append) did with a batch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Appended {
    /// Samples written (durable when the call returns).
    pub accepted: usize,
    /// Samples dropped because their series already had a sample at or
    /// after that time when the head was last frozen, or because they are
    /// older than the retention window (see "Stale samples" in the crate docs).
    pub stale: usize,
}

/// Figures for `/metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Bytes of all store files (blocks, WAL, catalog, manifest).
    pub bytes_on_disk: u64,
    /// Bytes of block files alone.
    pub block_bytes: u64,
    /// Samples in blocks and in the head.
    pub samples: u64,
    /// Samples in the head (not yet in a block).
    pub head_samples: u64,
    /// Series in the catalog.
    pub series: u64,
    /// Estimated heap bytes of the head (active and being flushed) and the
    /// per-series tables.
    pub memory_bytes: u64,
    /// Bytes of WAL segments.
    pub wal_bytes: u64,
    /// Compactions run since open.
    pub compactions: u64,
    /// Head flushes run since open.
    pub flushes: u64,
    /// Blocks live.
    pub blocks: u64,
    /// Blocks (or parts of blocks) found corrupt since open.
    pub corrupt_blocks: u64,
    /// Samples dropped as stale since open.
    pub stale_samples: u64,
}

pub(crate) const HOUR_MS: i64 = 3_600_000;
pub(crate) const DAY_MS: i64 = 86_400_000;
