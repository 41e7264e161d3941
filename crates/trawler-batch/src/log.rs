//! The state log: what became of each URL, durable in `<data>/batch.log`.
//!
//! # On-disk format
//!
//! ```text
//! file    = magic "TRWLBLG1" , record*
//! record  = len: u32 LE , crc32(payload): u32 LE , payload (len bytes)
//! payload = 1 commit  file: u32 , n: u32 , n × (segment: u32 , fp: u128)   every URL of a results file
//!         | 2 failed  segment: u32 , fp: u128 , attempts: u16             an attempt failed, may pass
//!         | 3 dead    segment: u32 , fp: u128 , attempts: u16 , kind: u8 ,
//!                     url_len: u32 , url , msg_len: u32 , msg             a dead letter
//!         | 4 segment segment: u32                                       every URL of it is committed or dead
//! ```
//!
//! All integers little-endian; `fp` is the URL's fingerprint
//! ([`crate::fingerprint`]). Invariants:
//!
//! * A `commit` is appended (and the log fsynced) only after its results
//!   file is complete and fsynced under its temporary name, and the file is
//!   renamed to its final name only after that; a URL is done exactly when
//!   its `commit` is in the log. At open, a temporary results file whose
//!   commit is in the log is renamed, any other is deleted: a URL is in
//!   exactly one results file.
//! * A record is valid when its length fits and its CRC matches. Replay
//!   stops at the first invalid record and the file is truncated there: a
//!   torn append by `kill -9` or a power loss loses only records not yet
//!   fsynced, whose URLs are then simply done again.
//! * Checkpoint: at open, when some segment is finished, the log is
//!   rewritten (to a temporary file, fsynced, renamed) without the per-URL
//!   records of finished segments, keeping their `segment` records and every
//!   `dead` record (the dead-letter export needs them). Finished segments
//!   are skipped as a whole by the frontier, so their URLs need no state.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};

/// First bytes of the file.
pub const MAGIC: &[u8; 8] = b"TRWLBLG1";

/// Why a URL is a dead letter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DeadKind {
    /// Not a valid http(s) URL.
    InvalidUrl,
    /// A scheme the fetcher did not speak: `https` before it had TLS. No
    /// longer given; kept so that logs of earlier builds still read.
    Unsupported,
    /// A 4xx answer.
    ClientError,
    /// 5xx, timeouts or resets, `max_attempts` times.
    GaveUp,
    /// More redirects than `max_redirects`.
    TooManyRedirects,
    /// A body beyond `max_body`.
    TooLarge,
    /// Not a JPEG, PNG or WebP, or one that does not decode.
    NotAnImage,
    /// The detector failed `max_attempts` times.
    Detector,
    /// The TLS handshake of an `https` URL failed: a certificate not
    /// trusted (add its CA with `http.ca_file`), expired or for another
    /// name, or a server that does not speak TLS. Not retried: it would
    /// fail the same way.
    Tls,
}

impl DeadKind {
    /// Every kind, in code order.
    /// New kinds go at the end: the position is the code in the log.
    pub const ALL: [DeadKind; 9] = [
        DeadKind::InvalidUrl,
        DeadKind::Unsupported,
        DeadKind::ClientError,
        DeadKind::GaveUp,
        DeadKind::TooManyRedirects,
        DeadKind::TooLarge,
        DeadKind::NotAnImage,
        DeadKind::Detector,
        DeadKind::Tls,
    ];

    /// The name in exports, metrics and the summary.
    pub fn name(self) -> &'static str {
        match self {
            DeadKind::InvalidUrl => "invalid_url",
            DeadKind::Unsupported => "unsupported",
            DeadKind::ClientError => "client_error",
            DeadKind::GaveUp => "gave_up",
            DeadKind::TooManyRedirects => "too_many_redirects",
            DeadKind::TooLarge => "too_large",
            DeadKind::NotAnImage => "not_an_image",
            DeadKind::Detector => "detector",
            DeadKind::Tls => "tls",
        }
    }

    fn code(self) -> u8 {
        Self::ALL.iter().position(|k| *k == self).unwrap_or(0) as u8
    }

    fn from_code(c: u8) -> Option<Self> {
        Self::ALL.get(c as usize).copied()
    }
}

/// One record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// Every URL of results file `file` (segment, fingerprint).
    Commit {
        /// The results file's number.
        file: u32,
        /// Its URLs.
        urls: Vec<(u32, u128)>,
    },
    /// An attempt of a URL failed with an error that may pass.
    Failed {
        /// Its segment.
        segment: u32,
        /// Its fingerprint.
        fp: u128,
        /// Attempts so far.
        attempts: u16,
    },
    /// A dead letter.
    Dead {
        /// Its segment.
        segment: u32,
        /// Its fingerprint.
        fp: u128,
        /// Attempts made.
        attempts: u16,
        /// Why.
        kind: DeadKind,
        /// The URL as written in the input.
        url: String,
        /// The last error.
        message: String,
    },
    /// Every URL of the segment is committed or dead.
    SegmentDone {
        /// The segment.
        segment: u32,
    },
}

impl Record {
    /// Appends the payload (without length and CRC).
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Record::Commit { file, urls } => {
                out.push(1);
                out.extend(file.to_le_bytes());
                out.extend((urls.len() as u32).to_le_bytes());
                for (s, fp) in urls {
                    out.extend(s.to_le_bytes());
                    out.extend(fp.to_le_bytes());
                }
            }
            Record::Failed {
                segment,
                fp,
                attempts,
            } => {
                out.push(2);
                out.extend(segment.to_le_bytes());
                out.extend(fp.to_le_bytes());
                out.extend(attempts.to_le_bytes());
            }
            Record::Dead {
                segment,
                fp,
                attempts,
                kind,
                url,
                message,
            } => {
                out.push(3);
                out.extend(segment.to_le_bytes());
                out.extend(fp.to_le_bytes());
                out.extend(attempts.to_le_bytes());
                out.push(kind.code());
                for s in [url, message] {
                    out.extend((s.len() as u32).to_le_bytes());
                    out.extend(s.as_bytes());
                }
            }
            Record::SegmentDone { segment } => {
                out.push(4);
                out.extend(segment.to_le_bytes());
            }
        }
    }

    /// Decodes a payload; `None` when it is not one this version writes.
    pub fn decode(mut p: &[u8]) -> Option<Record> {
        fn take<'a>(p: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
            let (head, rest) = (p.get(..n)?, p.get(n..)?);
            *p = rest;
            Some(head)
        }
        fn u32_(p: &mut &[u8]) -> Option<u32> {
            Some(u32::from_le_bytes(take(p, 4)?.try_into().ok()?))
        }
        fn u128_(p: &mut &[u8]) -> Option<u128> {
            Some(u128::from_le_bytes(take(p, 16)?.try_into().ok()?))
        }
        fn u16_(p: &mut &[u8]) -> Option<u16> {
            Some(u16::from_le_bytes(take(p, 2)?.try_into().ok()?))
        }
        fn string(p: &mut &[u8]) -> Option<String> {
            let n = u32_(p)? as usize;
            String::from_utf8(take(p, n)?.to_vec()).ok()
        }
        let tag = take(&mut p, 1)?[0];
        let record = match tag {
            1 => {
                let file = u32_(&mut p)?;
                let n = u32_(&mut p)? as usize;
                if p.len() != n.checked_mul(20)? {
                    return None;
                }
                let mut urls = Vec::with_capacity(n);
                for _ in 0..n {
                    urls.push((u32_(&mut p)?, u128_(&mut p)?));
                }
                Record::Commit { file, urls }
            }
            2 => Record::Failed {
                segment: u32_(&mut p)?,
                fp: u128_(&mut p)?,
                attempts: u16_(&mut p)?,
            },
            3 => Record::Dead {
                segment: u32_(&mut p)?,
                fp: u128_(&mut p)?,
                attempts: u16_(&mut p)?,
                kind: DeadKind::from_code(take(&mut p, 1)?[0])?,
                url: string(&mut p)?,
                message: string(&mut p)?,
            },
            4 => Record::SegmentDone {
                segment: u32_(&mut p)?,
            },
            _ => return None,
        };
        p.is_empty().then_some(record)
    }

    /// Appends the framed record (length, CRC, payload).
    pub fn frame(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend([0u8; 8]);
        self.encode(out);
        let payload = &out[start + 8..];
        let len = (payload.len() as u32).to_le_bytes();
        let crc = crc32fast::hash(payload).to_le_bytes();
        out[start..start + 4].copy_from_slice(&len);
        out[start + 4..start + 8].copy_from_slice(&crc);
    }
}

/// Splits a log's bytes (after the magic) into records; returns them and
/// the length of the valid prefix.
pub fn parse(bytes: &[u8]) -> (Vec<Record>, usize) {
    let mut records = Vec::new();
    let mut at = 0;
    while let Some(head) = bytes.get(at..at + 8) {
        let len = u32::from_le_bytes(head[..4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(head[4..].try_into().expect("4 bytes"));
        let Some(payload) = bytes.get(at + 8..at + 8 + len) else {
            break;
        };
        if crc32fast::hash(payload) != crc {
            break;
        }
        let Some(record) = Record::decode(payload) else {
            break;
        };
        records.push(record);
        at += 8 + len;
    }
    (records, at)
}

/// An error of the state log.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LogError {
    /// Reading, writing or syncing failed.
    #[error("state log {path}: {what}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The step.
        what: &'static str,
        /// Why.
        source: std::io::Error,
    },
    /// Not a state log of this version.
    #[error("{path} is not a trawler batch state log (bad magic); move it away or use another --data folder")]
    BadMagic {
        /// The file.
        path: PathBuf,
    },
    /// An earlier fsync failed: what the kernel held may be gone, so the
    /// log refuses every write until the process restarts and replays.
    #[error("state log {path}: an earlier fsync failed; restart to replay from disk")]
    Poisoned {
        /// The file.
        path: PathBuf,
    },
}

/// The open log, appending.
#[derive(Debug)]
pub struct StateLog {
    path: PathBuf,
    file: BufWriter<File>,
    buf: Vec<u8>,
    poisoned: bool,
    bytes: u64,
}

impl StateLog {
    /// Opens (creating) the log at `path`, returns it with the records
    /// replayed and the numbers of every results file ever committed.
    /// Truncates a torn tail; rewrites the log without the per-URL records
    /// of finished segments (the checkpoint, see the module docs).
    pub fn open(path: &Path) -> Result<(StateLog, Vec<Record>, HashSet<u32>), LogError> {
        let io = |what: &'static str| {
            let path = path.to_owned();
            move |source| LogError::Io { path, what, source }
        };
        let mut bytes = Vec::new();
        match File::open(path) {
            Ok(mut f) => {
                f.read_to_end(&mut bytes).map_err(io("reading"))?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io("opening")(e)),
        }
        let records = if bytes.is_empty() {
            Vec::new()
        } else {
            if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
                return Err(LogError::BadMagic {
                    path: path.to_owned(),
                });
            }
            let (records, valid) = parse(&bytes[MAGIC.len()..]);
            if MAGIC.len() + valid < bytes.len() {
                tracing::warn!(
                    path = %path.display(),
                    kept = MAGIC.len() + valid,
                    dropped = bytes.len() - MAGIC.len() - valid,
                    "state log: torn tail dropped"
                );
            }
            records
        };
        let committed = records
            .iter()
            .filter_map(|r| match r {
                Record::Commit { file, .. } => Some(*file),
                _ => None,
            })
            .collect();
        let records = checkpoint(records);
        // Rewrite always: it drops a torn tail and finished segments' URLs
        // in one atomic step.
        let tmp = path.with_extension("log.tmp");
        let mut out = MAGIC.to_vec();
        for r in &records {
            r.frame(&mut out);
        }
        {
            let mut f = File::create(&tmp).map_err(io("creating the checkpoint"))?;
            f.write_all(&out).map_err(io("writing the checkpoint"))?;
            f.sync_all().map_err(io("syncing the checkpoint"))?;
        }
        std::fs::rename(&tmp, path).map_err(io("renaming the checkpoint"))?;
        sync_dir(path).map_err(io("syncing the folder"))?;
        let file = OpenOptions::new()
            .append(true)
            .open(path)
            .map_err(io("opening for append"))?;
        Ok((
            StateLog {
                path: path.to_owned(),
                file: BufWriter::with_capacity(1 << 16, file),
                buf: Vec::with_capacity(1 << 12),
                poisoned: false,
                bytes: out.len() as u64,
            },
            records,
            committed,
        ))
    }

    /// Appends a record to the buffer (written by [`StateLog::sync`] or
    /// when the buffer fills).
    pub fn append(&mut self, record: &Record) -> Result<(), LogError> {
        if self.poisoned {
            return Err(LogError::Poisoned {
                path: self.path.clone(),
            });
        }
        self.buf.clear();
        record.frame(&mut self.buf);
        self.bytes += self.buf.len() as u64;
        self.file
            .write_all(&self.buf)
            .map_err(|source| LogError::Io {
                path: self.path.clone(),
                what: "appending",
                source,
            })
    }

    /// Writes the buffer and fsyncs; after a failure the log is poisoned.
    pub fn sync(&mut self) -> Result<(), LogError> {
        if self.poisoned {
            return Err(LogError::Poisoned {
                path: self.path.clone(),
            });
        }
        let r = self
            .file
            .flush()
            .and_then(|_| self.file.get_ref().sync_data());
        r.map_err(|source| {
            self.poisoned = true;
            LogError::Io {
                path: self.path.clone(),
                what: "syncing",
                source,
            }
        })
    }

    /// Bytes in the file (written or buffered).
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

/// The records without the per-URL records of finished segments (dead
/// letters kept), commits of one file kept together.
pub fn checkpoint(records: Vec<Record>) -> Vec<Record> {
    let done: HashSet<u32> = records
        .iter()
        .filter_map(|r| match r {
            Record::SegmentDone { segment } => Some(*segment),
            _ => None,
        })
        .collect();
    if done.is_empty() {
        return records;
    }
    records
        .into_iter()
        .filter_map(|r| match r {
            Record::Commit { file, urls } => {
                let urls: Vec<_> = urls
                    .into_iter()
                    .filter(|(s, _)| !done.contains(s))
                    .collect();
                (!urls.is_empty()).then_some(Record::Commit { file, urls })
            }
            Record::Failed { segment, .. } if done.contains(&segment) => None,
            other => Some(other),
        })
        .collect()
}

/// fsyncs the folder holding `path`, so a rename in it is durable.
pub fn sync_dir(path: &Path) -> std::io::Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty());
    File::open(dir.unwrap_or(Path::new(".")))?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn record() -> impl Strategy<Value = Record> {
        prop_oneof![
            (
                any::<u32>(),
                proptest::collection::vec((any::<u32>(), any::<u128>()), 0..20)
            )
                .prop_map(|(file, urls)| Record::Commit { file, urls }),
            (any::<u32>(), any::<u128>(), any::<u16>()).prop_map(|(segment, fp, attempts)| {
                Record::Failed {
                    segment,
                    fp,
                    attempts,
                }
            }),
            (
                any::<u32>(),
                any::<u128>(),
                any::<u16>(),
                0..DeadKind::ALL.len(),
                ".{0,40}",
                ".{0,40}"
            )
                .prop_map(|(segment, fp, attempts, k, url, message)| Record::Dead {
                    segment,
                    fp,
                    attempts,
                    kind: DeadKind::ALL[k],
                    url,
                    message,
                }),
            any::<u32>().prop_map(|segment| Record::SegmentDone { segment }),
        ]
    }

    proptest! {
        #[test]
        fn records_round_trip(records in proptest::collection::vec(record(), 0..30)) {
            let mut bytes = Vec::new();
            for r in &records {
                r.frame(&mut bytes);
            }
            let (back, valid) = parse(&bytes);
            prop_assert_eq!(valid, bytes.len());
            prop_assert_eq!(back, records);
        }

        #[test]
        fn a_torn_or_flipped_tail_keeps_the_prefix(
            records in proptest::collection::vec(record(), 1..20),
            cut in any::<prop::sample::Index>(),
            flip in any::<bool>(),
        ) {
            let mut bytes = Vec::new();
            let mut ends = Vec::new();
            for r in &records {
                r.frame(&mut bytes);
                ends.push(bytes.len());
            }
            let at = cut.index(bytes.len());
            if flip {
                bytes[at] ^= 0x40;
            } else {
                bytes.truncate(at);
            }
            let (back, valid) = parse(&bytes);
            // Every record that ends before the damage survives, nothing
            // after it does.
            let intact = ends.iter().filter(|&&e| e <= at).count();
            prop_assert_eq!(back.len(), intact);
            prop_assert_eq!(&back[..], &records[..intact]);
            prop_assert_eq!(valid, if intact == 0 { 0 } else { ends[intact - 1] });
        }
    }

    #[test]
    fn reopen_replays_and_checkpoints() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("batch.log");
        let dead = Record::Dead {
            segment: 0,
            fp: 9,
            attempts: 1,
            kind: DeadKind::ClientError,
            url: "http://x/y".into(),
            message: "404".into(),
        };
        {
            let (mut log, replayed, _) = StateLog::open(&path).unwrap();
            assert!(replayed.is_empty());
            for r in [
                Record::Commit {
                    file: 0,
                    urls: vec![(0, 1), (1, 2)],
                },
                Record::Failed {
                    segment: 0,
                    fp: 3,
                    attempts: 1,
                },
                dead.clone(),
                Record::SegmentDone { segment: 0 },
            ] {
                log.append(&r).unwrap();
            }
            log.sync().unwrap();
        }
        // A torn record at the end.
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&[50, 0, 0, 0, 1, 2]).unwrap();
        drop(f);
        let (_, replayed, committed) = StateLog::open(&path).unwrap();
        assert_eq!(committed, HashSet::from([0]));
        assert_eq!(
            replayed,
            vec![
                Record::Commit {
                    file: 0,
                    urls: vec![(1, 2)]
                },
                dead,
                Record::SegmentDone { segment: 0 },
            ]
        );
        std::fs::write(&path, b"something else").unwrap();
        assert!(matches!(
            StateLog::open(&path),
            Err(LogError::BadMagic { .. })
        ));
    }
}
