//! Small binary helpers shared by every file format of the store: LEB128
//! varints, zigzag, and checksummed records (`len u32 | crc32 u32 | payload`).

// Decoders of untrusted bytes: no panics by construction.
#![deny(clippy::unwrap_used, clippy::indexing_slicing)]

/// Appends `v` as an unsigned LEB128 varint.
pub(crate) fn put_uvar(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Appends `v` zigzag-encoded, so small negative numbers stay short.
pub(crate) fn put_ivar(out: &mut Vec<u8>, v: i64) {
    put_uvar(out, zigzag(v));
}

pub(crate) fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

pub(crate) fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

/// A cursor over untrusted bytes: every read is bounds-checked and returns
/// `None` instead of panicking, which is what the fuzz targets exercise.
#[derive(Debug, Clone)]
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.pos >= self.buf.len()
    }

    pub(crate) fn uvar(&mut self) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = *self.buf.get(self.pos)?;
            self.pos += 1;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    }

    pub(crate) fn ivar(&mut self) -> Option<i64> {
        self.uvar().map(unzigzag)
    }

    pub(crate) fn bytes(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(n)?;
        let s = self.buf.get(self.pos..end)?;
        self.pos = end;
        Some(s)
    }

    pub(crate) fn u8(&mut self) -> Option<u8> {
        self.bytes(1)?.first().copied()
    }

    pub(crate) fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.bytes(4)?.try_into().ok()?))
    }

    /// A varint length followed by that many bytes, as UTF-8.
    pub(crate) fn str(&mut self) -> Option<&'a str> {
        let n = usize::try_from(self.uvar()?).ok()?;
        std::str::from_utf8(self.bytes(n)?).ok()
    }
}

/// Records larger than this are treated as garbage: no legitimate batch is
/// this big, and trusting a corrupt length would allocate gigabytes.
pub(crate) const MAX_RECORD: usize = 256 << 20;

/// Appends one checksummed record.
pub(crate) fn put_record(out: &mut Vec<u8>, payload: &[u8]) {
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    out.extend_from_slice(payload);
}

/// Frames a record whose payload is produced by `f` directly into `out`
/// (no intermediate buffer on the hot append path).
pub(crate) fn put_record_with(out: &mut Vec<u8>, f: impl FnOnce(&mut Vec<u8>)) {
    let start = out.len();
    out.extend_from_slice(&[0; 8]);
    f(out);
    let len = (out.len() - start - 8) as u32;
    // `start + 8 <= out.len()`: the 8 bytes were pushed above.
    if let Some((head, payload)) = out
        .get_mut(start..)
        .and_then(|r| r.split_first_chunk_mut::<8>())
    {
        let crc = crc32fast::hash(payload);
        let (l, c) = head.split_at_mut(4);
        l.copy_from_slice(&len.to_le_bytes());
        c.copy_from_slice(&crc.to_le_bytes());
    }
}

/// Why a sequence of records stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RecordsEnd {
    /// Every byte belonged to a whole, valid record.
    Clean,
    /// The bytes from `valid_len` on are a partial record (a torn write).
    Torn,
    /// A whole record failed its checksum at `valid_len`.
    BadChecksum,
}

/// Splits `buf` into checksummed records. Returns the payloads, how many
/// leading bytes are valid, and why it stopped.
pub(crate) fn split_records(buf: &[u8]) -> (Vec<&[u8]>, usize, RecordsEnd) {
    let mut out = Vec::new();
    let mut pos = 0;
    loop {
        if pos == buf.len() {
            return (out, pos, RecordsEnd::Clean);
        }
        let Some((len, crc)) = buf
            .get(pos..)
            .and_then(|rest| rest.first_chunk::<8>())
            .and_then(|head| Some((head.first_chunk::<4>()?, head.last_chunk::<4>()?)))
        else {
            return (out, pos, RecordsEnd::Torn);
        };
        let len = u32::from_le_bytes(*len) as usize;
        let crc = u32::from_le_bytes(*crc);
        if len > MAX_RECORD {
            return (out, pos, RecordsEnd::BadChecksum);
        }
        let Some(payload) = buf.get(pos + 8..pos + 8 + len) else {
            return (out, pos, RecordsEnd::Torn);
        };
        if crc32fast::hash(payload) != crc {
            return (out, pos, RecordsEnd::BadChecksum);
        }
        out.push(payload);
        pos += 8 + len;
    }
}

/// Writes a file's fixed header: 8 magic bytes and the format version.
pub(crate) fn header(magic: &[u8; 8]) -> [u8; 12] {
    let mut h = [0; 12];
    h[..8].copy_from_slice(magic);
    h[8..].copy_from_slice(&crate::FORMAT_VERSION.to_le_bytes());
    h
}

/// The bytes after a file's fixed header (checked by [`check_header`]).
pub(crate) fn after_header(buf: &[u8]) -> &[u8] {
    buf.get(12..).unwrap_or_default()
}

/// Checks a file's fixed header and returns its version; versions this
/// build does not read are refused by name.
pub(crate) fn check_header(
    buf: &[u8],
    magic: &[u8; 8],
    path: &std::path::Path,
) -> crate::Result<u32> {
    let (Some(found), Some(true)) = (
        buf.get(8..12).and_then(|v| v.first_chunk::<4>()),
        buf.get(..8).map(|m| m == magic),
    ) else {
        return Err(crate::Error::BadMagic {
            path: path.to_path_buf(),
        });
    };
    let found = u32::from_le_bytes(*found);
    if !(crate::OLDEST_FORMAT_VERSION..=crate::FORMAT_VERSION).contains(&found) {
        return Err(crate::Error::UnsupportedVersion {
            path: path.to_path_buf(),
            found,
            supported: crate::FORMAT_VERSION,
        });
    }
    Ok(found)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn varints_round_trip() {
        let mut buf = Vec::new();
        let values = [0i64, 1, -1, 63, -64, 1 << 40, i64::MIN, i64::MAX];
        for v in values {
            put_ivar(&mut buf, v);
        }
        let mut r = Reader::new(&buf);
        for v in values {
            assert_eq!(r.ivar(), Some(v));
        }
        assert!(r.is_empty());
        assert_eq!(Reader::new(&[0x80; 11]).uvar(), None);
    }

    #[test]
    fn records_detect_torn_and_corrupt_tails() {
        let mut buf = Vec::new();
        put_record(&mut buf, b"hello");
        put_record_with(&mut buf, |b| b.extend_from_slice(b"world"));
        let (recs, len, end) = split_records(&buf);
        assert_eq!(recs, vec![&b"hello"[..], &b"world"[..]]);
        assert_eq!((len, end), (buf.len(), RecordsEnd::Clean));
        let (recs, len, end) = split_records(&buf[..buf.len() - 1]);
        assert_eq!((recs.len(), len, end), (1, 13, RecordsEnd::Torn));
        let mut bad = buf.clone();
        *bad.last_mut().unwrap() ^= 1;
        let (recs, len, end) = split_records(&bad);
        assert_eq!((recs.len(), len, end), (1, 13, RecordsEnd::BadChecksum));
    }
}
