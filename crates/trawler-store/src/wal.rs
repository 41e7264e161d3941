//! The write-ahead log: `wal/<seq>.wal` segments of checksummed records, one
//! record per appended batch.
//!
//! A segment is started at every head flush, so "the head" is always exactly
//! the segments after the manifest's `wal_through`. Once the flushed blocks
//! are in the manifest, those segments are deleted.
//!
//! Record payload: `uvar n`, then n samples of
//! `ivar Δseries | ivar Δts | ivar value_bits`, deltas against the previous
//! sample of the record (a batch of one minute of one job is a run of
//! consecutive ids at one timestamp: about 5 bytes per sample).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::codec::{self, Reader, RecordsEnd};
use crate::error::IoContext;
use crate::Result;

pub(crate) const MAGIC: &[u8; 8] = b"TRWLWAL\0";

/// One sample as the WAL carries it: the value is raw bits, interpreted with
/// the series' kind from the catalog.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalSample {
    /// Series id.
    pub series: u64,
    /// Unix ms.
    pub ts: i64,
    /// Value bits (i64 or f64 bits).
    pub bits: u64,
}

pub(crate) fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join("wal").join(format!("{seq:020}.wal"))
}

/// Lists segment sequence numbers in order.
pub(crate) fn list_segments(dir: &Path) -> Result<Vec<u64>> {
    let wal_dir = dir.join("wal");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&wal_dir).io("listing", &wal_dir)? {
        let entry = entry.io("listing", &wal_dir)?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if let Some(seq) = name.strip_suffix(".wal").and_then(|s| s.parse().ok()) {
            out.push(seq);
        }
    }
    out.sort_unstable();
    Ok(out)
}

/// Encodes one batch as a WAL record at the end of `out`.
pub(crate) fn encode_batch(out: &mut Vec<u8>, samples: impl ExactSizeIterator<Item = WalSample>) {
    codec::put_record_with(out, |b| {
        codec::put_uvar(b, samples.len() as u64);
        let (mut ps, mut pt) = (0u64, 0i64);
        for s in samples {
            codec::put_ivar(b, s.series.wrapping_sub(ps) as i64);
            codec::put_ivar(b, s.ts.wrapping_sub(pt));
            codec::put_ivar(b, s.bits as i64);
            (ps, pt) = (s.series, s.ts);
        }
    });
}

#[deny(clippy::unwrap_used, clippy::indexing_slicing)]
fn decode_payload(payload: &[u8], out: &mut Vec<WalSample>) -> Option<()> {
    let mut r = Reader::new(payload);
    let n = r.uvar()?;
    // Each sample takes at least 3 bytes: refuse counts the payload cannot hold.
    if n > payload.len() as u64 / 3 {
        return None;
    }
    let (mut series, mut ts) = (0u64, 0i64);
    for _ in 0..n {
        series = series.wrapping_add(r.ivar()? as u64);
        ts = ts.wrapping_add(r.ivar()?);
        let bits = r.ivar()? as u64;
        out.push(WalSample { series, ts, bits });
    }
    r.is_empty().then_some(())
}

/// What decoding a segment found.
#[derive(Debug)]
pub struct Decoded {
    /// Samples of the valid records, in order.
    pub samples: Vec<WalSample>,
    /// Bytes of the file (header included) that hold whole valid records.
    pub valid_len: usize,
    /// Whether the file ended cleanly, torn, or at a bad record.
    pub clean: bool,
}

/// Decodes a whole segment file. Never panics on any input (fuzzed).
#[deny(clippy::unwrap_used, clippy::indexing_slicing)]
pub fn decode_segment(bytes: &[u8], path: &Path) -> Result<Decoded> {
    codec::check_header(bytes, MAGIC, path)?;
    let (records, valid, end) = codec::split_records(codec::after_header(bytes));
    let mut samples = Vec::new();
    let mut valid_len = 12;
    let mut clean = end == RecordsEnd::Clean;
    for payload in records {
        let before = samples.len();
        if decode_payload(payload, &mut samples).is_none() {
            // A record with a good checksum but bad contents: only a bug or
            // a checksum collision does this; stop as at a bad checksum.
            samples.truncate(before);
            clean = false;
            break;
        }
        valid_len += 8 + payload.len();
    }
    debug_assert!(valid_len <= 12 + valid);
    Ok(Decoded {
        samples,
        valid_len,
        clean,
    })
}

/// The open segment appends go to.
#[derive(Debug)]
pub(crate) struct WalWriter {
    dir: PathBuf,
    pub seq: u64,
    path: PathBuf,
    pub file: Arc<File>,
    pub buf: Vec<u8>,
    /// Records written since open (the log sequence number).
    pub lsn: u64,
}

impl WalWriter {
    pub fn create(dir: &Path, seq: u64) -> Result<Self> {
        let path = segment_path(dir, seq);
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .io("creating", &path)?;
        file.write_all(&codec::header(MAGIC)).io("writing", &path)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            seq,
            path,
            file: Arc::new(file),
            buf: Vec::new(),
            lsn: 0,
        })
    }

    /// Continues the last segment after a restart: a segment boundary must
    /// mean "the head was frozen here", which a restart is not.
    pub fn reopen(dir: &Path, seq: u64) -> Result<Self> {
        let path = segment_path(dir, seq);
        let file = OpenOptions::new()
            .append(true)
            .open(&path)
            .io("opening", &path)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            seq,
            path,
            file: Arc::new(file),
            buf: Vec::new(),
            lsn: 0,
        })
    }

    /// Writes the record(s) in `buf` to the file: after this the batch
    /// survives a crash of the process.
    pub fn write_buf(&mut self) -> Result<()> {
        let res = (&*self.file).write_all(&self.buf).io("writing", &self.path);
        self.buf.clear();
        res?;
        self.lsn += 1;
        Ok(())
    }

    /// Starts the next segment; the finished one is fsynced first so that
    /// "segments before the open one are on disk" holds for the flush.
    pub fn rotate(&mut self) -> Result<u64> {
        self.file.sync_data().io("fsync", &self.path)?;
        let finished = self.seq;
        let next = Self::create(&self.dir, self.seq + 1)?;
        let lsn = self.lsn;
        *self = next;
        self.lsn = lsn;
        Ok(finished)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_round_trip() {
        let samples = vec![
            WalSample {
                series: 5,
                ts: 60_000,
                bits: 42,
            },
            WalSample {
                series: 6,
                ts: 60_000,
                bits: (-7i64) as u64,
            },
            WalSample {
                series: 1,
                ts: -5,
                bits: f64::to_bits(1.5),
            },
        ];
        let mut file = codec::header(MAGIC).to_vec();
        encode_batch(&mut file, samples.iter().copied());
        encode_batch(&mut file, samples[..1].iter().copied());
        let d = decode_segment(&file, Path::new("x")).unwrap();
        assert!(d.clean);
        assert_eq!(d.valid_len, file.len());
        assert_eq!(d.samples.len(), 4);
        assert_eq!(&d.samples[..3], &samples[..]);
        let d = decode_segment(&file[..file.len() - 2], Path::new("x")).unwrap();
        assert!(!d.clean);
        assert_eq!(d.samples, samples);
    }
}
