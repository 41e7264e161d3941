//! What makes an acknowledged event survive `kill -9`: the accepted events'
//! write-ahead log, the groups file and the checkpoint, in one folder.
//!
//! * `wal-NNNNNNNNNN.log`: records of [`Accepted`] events, each
//!   `[len u32][crc32 u32][payload]`, fsynced before the batch is answered.
//!   A torn or corrupt record ends the replay of its segment (it was never
//!   acknowledged: the fsync did not return).
//! * `groups.log`: `[crc32][id][key][value]` records, fsynced before the
//!   first record that uses a new group, so ids survive the log's
//!   truncation.
//! * `checkpoint`: the watermark whose windows are stored (`closed_before`,
//!   `max_ts`) and the source position, written by rename after the store
//!   synced the samples. Segments whose every event lies in a window before
//!   `closed_before` are deleted; a replay skips such events, so a crash
//!   between the store's write and the checkpoint re-writes the same
//!   samples, which the store ignores.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use crate::decode::FieldVal;
use crate::window::{Accepted, Groups};

/// A segment is closed past this size.
pub const SEGMENT_BYTES: u64 = 64 << 20;

/// The saved watermark.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Checkpoint {
    /// Windows starting before this are stored.
    pub closed_before: i64,
    /// Largest accepted event time then.
    pub max_ts: i64,
    /// The source position then.
    pub position: u64,
}

/// The segments of a log of framed records, whatever they hold: the
/// windows' [`Wal`] and the top-N job's event log share it. Each record
/// carries a key (a window start, an event time); a checkpoint deletes the
/// segments whose every key is before its `closed_before`.
pub struct Log {
    dir: PathBuf,
    current: File,
    current_no: u64,
    current_bytes: u64,
    /// Per closed segment: (number, largest key in it).
    segments: Vec<(u64, i64)>,
    current_max: i64,
    framed: Vec<u8>,
}

/// The log of one stream job.
pub struct Wal {
    log: Log,
    groups: File,
    buf: Vec<u8>,
}

/// What [`Wal::open`] found.
pub struct Opened {
    /// The log, ready to append.
    pub wal: Wal,
    /// The checkpoint (zeroes when none).
    pub checkpoint: Option<Checkpoint>,
    /// Records to replay, in order.
    pub records: Vec<Accepted>,
    /// Records dropped as torn or corrupt (only a last, unacknowledged one
    /// is expected).
    pub torn: u64,
}

fn crc(bytes: &[u8]) -> u32 {
    crc32fast::hash(bytes)
}

pub(crate) fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

pub(crate) fn get_varint(b: &[u8], at: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *b.get(*at)?;
        *at += 1;
        v |= u64::from(byte & 0x7f) << shift;
        if byte < 0x80 {
            return Some(v);
        }
    }
    None
}

pub(crate) fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

pub(crate) fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

/// Encodes a record's payload.
pub fn encode(record: &Accepted, fields: usize, out: &mut Vec<u8>) {
    put_varint(out, record.position);
    put_varint(out, record.events.len() as u64);
    let mut prev_ts = 0i64;
    let mut g0 = 0usize;
    for (i, &(ts, type_id, g1)) in record.events.iter().enumerate() {
        put_varint(out, zigzag(ts.wrapping_sub(prev_ts)));
        prev_ts = ts;
        put_varint(out, u64::from(type_id));
        let groups = &record.groups[g0..g1 as usize];
        g0 = g1 as usize;
        put_varint(out, groups.len() as u64);
        for &g in groups {
            put_varint(out, u64::from(g));
        }
        for f in &record.fields[i * fields..(i + 1) * fields] {
            let tag = u8::from(f.num.is_some()) | (u8::from(f.hash.is_some()) << 1);
            out.push(tag);
            if let Some(n) = f.num {
                out.extend_from_slice(&n.to_bits().to_le_bytes());
            }
            if let Some(h) = f.hash {
                out.extend_from_slice(&h.to_le_bytes());
            }
        }
    }
}

/// Decodes a payload written by [`encode`]; `None` when it is not one.
pub fn decode(b: &[u8], fields: usize) -> Option<Accepted> {
    let mut at = 0;
    let mut r = Accepted {
        position: get_varint(b, &mut at)?,
        ..Accepted::default()
    };
    let n = get_varint(b, &mut at)?;
    if n > b.len() as u64 {
        return None;
    }
    let mut ts = 0i64;
    let word = |at: &mut usize| -> Option<u64> {
        let w = b.get(*at..*at + 8)?;
        *at += 8;
        Some(u64::from_le_bytes(w.try_into().ok()?))
    };
    for _ in 0..n {
        ts = ts.wrapping_add(unzigzag(get_varint(b, &mut at)?));
        let type_id = u16::try_from(get_varint(b, &mut at)?).ok()?;
        let groups = get_varint(b, &mut at)?;
        if groups > b.len() as u64 {
            return None;
        }
        for _ in 0..groups {
            r.groups.push(u32::try_from(get_varint(b, &mut at)?).ok()?);
        }
        r.events.push((ts, type_id, r.groups.len() as u32));
        for _ in 0..fields {
            let tag = *b.get(at)?;
            at += 1;
            if tag > 3 {
                return None;
            }
            let num = if tag & 1 != 0 {
                Some(f64::from_bits(word(&mut at)?))
            } else {
                None
            };
            let hash = if tag & 2 != 0 {
                Some(word(&mut at)?)
            } else {
                None
            };
            r.fields.push(FieldVal { num, hash });
        }
    }
    (at == b.len()).then_some(r)
}

fn segment_path(dir: &Path, no: u64) -> PathBuf {
    dir.join(format!("wal-{no:010}.log"))
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

impl Wal {
    /// Opens (or creates) the log in `dir`, reads the groups into `groups`
    /// and the records to replay.
    pub fn open(
        dir: &Path,
        fields: usize,
        window_ms: i64,
        groups: &mut Groups,
    ) -> io::Result<Opened> {
        fs::create_dir_all(dir)?;
        let checkpoint = read_checkpoint(dir)?;

        // Groups: stop at the first torn record (it was never used).
        let gpath = dir.join("groups.log");
        let mut bytes = Vec::new();
        if let Ok(mut f) = File::open(&gpath) {
            f.read_to_end(&mut bytes)?;
        }
        let mut at = 0;
        let mut valid = 0;
        while let Some((payload, next)) = frame(&bytes, at) {
            let mut p = 0;
            let parsed = (|| {
                let id = get_varint(payload, &mut p)? as u32;
                let kl = get_varint(payload, &mut p)? as usize;
                let k = std::str::from_utf8(payload.get(p..p + kl)?).ok()?;
                p += kl;
                let vl = get_varint(payload, &mut p)? as usize;
                let v = std::str::from_utf8(payload.get(p..p + vl)?).ok()?;
                Some((id, k, v))
            })();
            let Some((id, k, v)) = parsed else { break };
            groups.restore(id, k, v).map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{}: {e}", gpath.display()),
                )
            })?;
            at = next;
            valid = next;
        }
        let groups_file = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(false)
            .open(&gpath)?;
        groups_file.set_len(valid as u64)?;
        let mut groups_file = groups_file;
        use std::io::Seek;
        groups_file.seek(io::SeekFrom::End(0))?;

        let (log, records, torn) = Log::open(dir, |p| {
            let r = decode(p, fields)?;
            let max = r.events.iter().map(|e| e.0).max().unwrap_or(i64::MIN);
            Some((r, window_start(max, window_ms)))
        })?;
        Ok(Opened {
            wal: Wal {
                log,
                groups: groups_file,
                buf: Vec::new(),
            },
            checkpoint,
            records,
            torn,
        })
    }

    /// Makes new groups durable (before the record that uses them).
    pub fn append_groups(&mut self, groups: &Groups, ids: &[u32]) -> io::Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut out = Vec::new();
        for &id in ids {
            let (k, v) = groups.name(id).expect("an interned group");
            let mut p = Vec::new();
            put_varint(&mut p, u64::from(id));
            put_varint(&mut p, k.len() as u64);
            p.extend_from_slice(k.as_bytes());
            put_varint(&mut p, v.len() as u64);
            p.extend_from_slice(v.as_bytes());
            put_frame(&mut out, &p);
        }
        self.groups.write_all(&out)?;
        self.groups.sync_data()
    }

    /// Appends `record` and fsyncs: when this returns `Ok`, the events
    /// survive a crash.
    pub fn append(&mut self, record: &Accepted, fields: usize, window_ms: i64) -> io::Result<()> {
        if record.is_empty() && record.position == 0 {
            return Ok(());
        }
        let mut payload = std::mem::take(&mut self.buf);
        payload.clear();
        encode(record, fields, &mut payload);
        let max = record.events.iter().map(|e| e.0).max().unwrap_or(i64::MIN);
        let appended = self.log.append(&payload, window_start(max, window_ms));
        self.buf = payload;
        appended
    }

    /// Saves `checkpoint` (the store has synced every sample before it),
    /// then deletes the segments it makes unnecessary.
    pub fn checkpoint(&mut self, checkpoint: Checkpoint) -> io::Result<()> {
        self.log.checkpoint(checkpoint)
    }

    /// Log segments on disk (for metrics and tests).
    pub fn segments(&self) -> usize {
        self.log.segments()
    }
}

fn window_start(ts: i64, window_ms: i64) -> i64 {
    if ts == i64::MIN {
        i64::MIN
    } else {
        ts.div_euclid(window_ms) * window_ms
    }
}

impl Log {
    /// Opens (or creates) the segments in `dir` and decodes their records
    /// with `decode` (a record and its key, or `None` when damaged):
    /// the log, the records in order, and how many were torn or corrupt
    /// (a damaged record ends its segment's replay: it was never
    /// acknowledged, the fsync did not return). Appends go to a fresh
    /// segment, so a torn tail stays behind, ignored.
    pub fn open<R>(
        dir: &Path,
        mut decode: impl FnMut(&[u8]) -> Option<(R, i64)>,
    ) -> io::Result<(Log, Vec<R>, u64)> {
        fs::create_dir_all(dir)?;
        let mut numbers: Vec<u64> = fs::read_dir(dir)?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                name.strip_prefix("wal-")?
                    .strip_suffix(".log")?
                    .parse()
                    .ok()
            })
            .collect();
        numbers.sort_unstable();
        let mut records = Vec::new();
        let mut segments = Vec::new();
        let mut torn = 0;
        for &no in &numbers {
            let bytes = fs::read(segment_path(dir, no))?;
            let mut at = 0;
            let mut max = i64::MIN;
            while at < bytes.len() {
                match frame(&bytes, at).and_then(|(p, next)| Some((decode(p)?, next))) {
                    Some(((r, key), next)) => {
                        max = max.max(key);
                        records.push(r);
                        at = next;
                    }
                    None => {
                        torn += 1;
                        break;
                    }
                }
            }
            segments.push((no, max));
        }
        let current_no = numbers.last().map_or(1, |n| n + 1);
        let current = OpenOptions::new()
            .create(true)
            .append(true)
            .open(segment_path(dir, current_no))?;
        sync_dir(dir)?;
        let log = Log {
            dir: dir.to_owned(),
            current,
            current_no,
            current_bytes: 0,
            segments,
            current_max: i64::MIN,
            framed: Vec::new(),
        };
        Ok((log, records, torn))
    }

    /// Appends one record whose key is `key` and fsyncs: when this returns
    /// `Ok`, the record survives a crash.
    pub fn append(&mut self, payload: &[u8], key: i64) -> io::Result<()> {
        if self.current_bytes >= SEGMENT_BYTES {
            self.rotate()?;
        }
        self.framed.clear();
        put_frame(&mut self.framed, payload);
        self.current.write_all(&self.framed)?;
        self.current.sync_data()?;
        self.current_bytes += self.framed.len() as u64;
        self.current_max = self.current_max.max(key);
        Ok(())
    }

    fn rotate(&mut self) -> io::Result<()> {
        self.segments.push((self.current_no, self.current_max));
        self.current_no += 1;
        self.current = OpenOptions::new()
            .create(true)
            .append(true)
            .open(segment_path(&self.dir, self.current_no))?;
        self.current_bytes = 0;
        self.current_max = i64::MIN;
        sync_dir(&self.dir)
    }

    /// Saves `checkpoint` atomically, then deletes the segments whose keys
    /// are all before its `closed_before`.
    pub fn checkpoint(&mut self, checkpoint: Checkpoint) -> io::Result<()> {
        let text = format!(
            "{} {} {}",
            checkpoint.closed_before, checkpoint.max_ts, checkpoint.position
        );
        let body = format!("{text} {:08x}\n", crc(text.as_bytes()));
        let tmp = self.dir.join("checkpoint.tmp");
        {
            let mut f = File::create(&tmp)?;
            f.write_all(body.as_bytes())?;
            f.sync_all()?;
        }
        fs::rename(&tmp, self.dir.join("checkpoint"))?;
        sync_dir(&self.dir)?;
        // The current segment rotates once everything in it is done, so
        // an idle job keeps no log behind.
        if self.current_bytes > 0 && self.current_max < checkpoint.closed_before {
            self.rotate()?;
        }
        let mut kept = Vec::new();
        for (no, max) in std::mem::take(&mut self.segments) {
            if max < checkpoint.closed_before {
                fs::remove_file(segment_path(&self.dir, no))?;
            } else {
                kept.push((no, max));
            }
        }
        self.segments = kept;
        Ok(())
    }

    /// Segments on disk (for metrics and tests).
    pub fn segments(&self) -> usize {
        self.segments.len() + 1
    }
}

fn put_frame(out: &mut Vec<u8>, payload: &[u8]) {
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc(payload).to_le_bytes());
    out.extend_from_slice(payload);
}

/// The payload of the frame at `at` and where the next begins, if whole
/// and intact.
fn frame(bytes: &[u8], at: usize) -> Option<(&[u8], usize)> {
    let len = u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?) as usize;
    let sum = u32::from_le_bytes(bytes.get(at + 4..at + 8)?.try_into().ok()?);
    let payload = bytes.get(at + 8..at + 8 + len)?;
    (crc(payload) == sum).then_some((payload, at + 8 + len))
}

/// The checkpoint saved in `dir`, if any; a damaged one is an error.
pub fn read_checkpoint(dir: &Path) -> io::Result<Option<Checkpoint>> {
    let path = dir.join("checkpoint");
    let text = match fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let bad = || {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: damaged checkpoint {text:?}", path.display()),
        )
    };
    let (body, sum) = text.trim_end().rsplit_once(' ').ok_or_else(bad)?;
    if format!("{:08x}", crc(body.as_bytes())) != sum {
        return Err(bad());
    }
    let parts: Vec<&str> = body.split(' ').collect();
    let [a, b, c] = parts[..] else {
        return Err(bad());
    };
    Ok(Some(Checkpoint {
        closed_before: a.parse().map_err(|_| bad())?,
        max_ts: b.parse().map_err(|_| bad())?,
        position: c.parse().map_err(|_| bad())?,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn record() -> impl Strategy<Value = Accepted> {
        let event = (
            any::<i64>(),
            0u16..10,
            proptest::collection::vec(0u32..1000, 0..4),
            proptest::collection::vec((any::<Option<f64>>(), any::<Option<u64>>()), 2),
        );
        (proptest::collection::vec(event, 0..20), any::<u64>()).prop_map(|(events, position)| {
            let mut r = Accepted {
                position,
                ..Accepted::default()
            };
            for (ts, t, groups, fields) in events {
                r.groups.extend(groups);
                r.events.push((ts, t, r.groups.len() as u32));
                r.fields
                    .extend(fields.into_iter().map(|(num, hash)| FieldVal { num, hash }));
            }
            r
        })
    }

    proptest! {
        #[test]
        fn records_round_trip(r in record()) {
            let mut out = Vec::new();
            encode(&r, 2, &mut out);
            let back = decode(&out, 2).unwrap();
            // NaN != NaN: compare bits.
            prop_assert_eq!(format!("{:?}", back.events), format!("{:?}", r.events));
            prop_assert_eq!(&back.groups, &r.groups);
            prop_assert_eq!(back.position, r.position);
            for (a, b) in back.fields.iter().zip(&r.fields) {
                prop_assert_eq!(a.num.map(f64::to_bits), b.num.map(f64::to_bits));
                prop_assert_eq!(a.hash, b.hash);
            }
        }

        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode(&bytes, 2);
        }
    }

    #[test]
    fn a_torn_tail_is_dropped_and_the_rest_replayed() {
        let dir = tempfile::tempdir().unwrap();
        let mut groups = Groups::default();
        let mut opened = Wal::open(dir.path(), 0, 60_000, &mut groups).unwrap();
        groups.intern("e1", "A");
        opened.wal.append_groups(&groups, &[0]).unwrap();
        let r = Accepted {
            events: vec![(1_000, 0, 1)],
            groups: vec![0],
            fields: vec![],
            position: 7,
        };
        opened.wal.append(&r, 0, 60_000).unwrap();
        opened.wal.append(&r, 0, 60_000).unwrap();
        drop(opened);
        // Tear the second record.
        let seg = segment_path(dir.path(), 1);
        let len = fs::metadata(&seg).unwrap().len();
        OpenOptions::new()
            .write(true)
            .open(&seg)
            .unwrap()
            .set_len(len - 3)
            .unwrap();
        let mut groups = Groups::default();
        let opened = Wal::open(dir.path(), 0, 60_000, &mut groups).unwrap();
        assert_eq!(opened.records, vec![r]);
        assert_eq!(opened.torn, 1);
        assert_eq!(groups.name(0), Some(("e1", "A")));
    }

    #[test]
    fn a_checkpoint_deletes_stored_segments_and_is_checked() {
        let dir = tempfile::tempdir().unwrap();
        let mut groups = Groups::default();
        let mut wal = Wal::open(dir.path(), 0, 60_000, &mut groups).unwrap().wal;
        let r = Accepted {
            events: vec![(61_000, 0, 0)],
            groups: vec![],
            fields: vec![],
            position: 0,
        };
        wal.append(&r, 0, 60_000).unwrap();
        let cp = Checkpoint {
            closed_before: 120_000,
            max_ts: 200_000,
            position: 3,
        };
        wal.checkpoint(cp).unwrap();
        drop(wal);
        let opened = Wal::open(dir.path(), 0, 60_000, &mut Groups::default()).unwrap();
        assert_eq!(opened.checkpoint, Some(cp));
        assert!(opened.records.is_empty());
        fs::write(dir.path().join("checkpoint"), "120000 200000 3 deadbeef\n").unwrap();
        assert!(Wal::open(dir.path(), 0, 60_000, &mut Groups::default()).is_err());
    }
}
