//! Prometheus remote write 1.0: the `WriteRequest` protobuf (prompb), with
//! its snappy block compression.
//!
//! Written by hand rather than generated with prost: the message has four
//! small types, the decoder is the only code that reads untrusted bytes on
//! the write path, and a hand-written one can enforce the request's limits
//! while it reads (series count, label sizes) instead of after it has
//! allocated everything. Fields remote write 1.0 does not use (exemplars,
//! native histograms) are skipped by their wire type, as protobuf requires
//! of unknown fields. The encoder is here for the tests, the compliance
//! oracle and the benchmark's sender.
//!
//! ```text
//! WriteRequest   { 1: repeated TimeSeries, 3: repeated MetricMetadata }
//! TimeSeries     { 1: repeated Label, 2: repeated Sample }
//! Label          { 1: string name, 2: string value }
//! Sample         { 1: double value, 2: int64 timestamp (ms) }
//! MetricMetadata { 1: enum type, 2: string family, 4: string help, 5: string unit }
//! ```

/// One series of a write: its labels as sent (not yet checked) and its
/// samples.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TimeSeries {
    /// `(name, value)` pairs in the order sent.
    pub labels: Vec<(String, String)>,
    /// `(unix ms, value)` in the order sent.
    pub samples: Vec<(i64, f64)>,
}

/// The metadata of one metric family.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MetricMetadata {
    /// `counter`, `gauge`, `histogram`, `gaugehistogram`, `summary`,
    /// `info`, `stateset` or `unknown`.
    pub kind: String,
    /// The family's name.
    pub family: String,
    /// Its help text.
    pub help: String,
    /// Its unit.
    pub unit: String,
}

/// A decoded `WriteRequest`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WriteRequest {
    /// The series.
    pub timeseries: Vec<TimeSeries>,
    /// The metadata.
    pub metadata: Vec<MetricMetadata>,
}

impl WriteRequest {
    /// How many samples, over every series.
    pub fn samples(&self) -> usize {
        self.timeseries.iter().map(|s| s.samples.len()).sum()
    }
}

/// Bounds on one request, enforced while decoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteLimits {
    /// Largest body after snappy decompression.
    pub max_decoded_bytes: usize,
    /// Most series in one request.
    pub max_series: usize,
    /// Most labels on one series.
    pub max_labels: usize,
    /// Longest label name or value, in bytes.
    pub max_label_bytes: usize,
}

impl Default for WriteLimits {
    fn default() -> Self {
        Self {
            max_decoded_bytes: 32 << 20,
            max_series: 100_000,
            max_labels: 64,
            max_label_bytes: 4_096,
        }
    }
}

/// Why a request was refused; every variant is the client's fault (400),
/// except [`DecodeError::TooLarge`] (413).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The body is not snappy block format.
    #[error("the body is not snappy-compressed (block format): {0}")]
    Snappy(String),
    /// The decompressed body would be larger than allowed.
    #[error("the decompressed body is {size} bytes, more than max_decoded_bytes ({limit})")]
    TooLarge {
        /// Its size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The bytes are not a `WriteRequest`.
    #[error("malformed WriteRequest protobuf: {0}")]
    Protobuf(&'static str),
    /// A label name or value is not UTF-8.
    #[error("a label name or value is not valid UTF-8")]
    Utf8,
    /// More series than allowed.
    #[error("the request holds more than {0} series (limit max_series)")]
    TooManySeries(usize),
    /// A series with more labels than allowed.
    #[error("a series has more than {0} labels (limit max_labels)")]
    TooManyLabels(usize),
    /// A label name or value longer than allowed.
    #[error("a label name or value is longer than {0} bytes (limit max_label_bytes)")]
    LabelTooLong(usize),
}

/// Decompresses a snappy (block format) body within `limit` bytes.
pub fn decompress(body: &[u8], limit: usize) -> Result<Vec<u8>, DecodeError> {
    let size = snap::raw::decompress_len(body).map_err(|e| DecodeError::Snappy(e.to_string()))?;
    if size > limit {
        return Err(DecodeError::TooLarge { size, limit });
    }
    snap::raw::Decoder::new()
        .decompress_vec(body)
        .map_err(|e| DecodeError::Snappy(e.to_string()))
}

/// Compresses an encoded request as remote write sends it.
pub fn compress(bytes: &[u8]) -> Vec<u8> {
    snap::raw::Encoder::new()
        .compress_vec(bytes)
        .expect("snappy compresses any input below 4 GiB")
}

/// Decodes a snappy-compressed `WriteRequest` (an HTTP body).
pub fn decode_body(body: &[u8], limits: WriteLimits) -> Result<WriteRequest, DecodeError> {
    decode(&decompress(body, limits.max_decoded_bytes)?, limits)
}

/// Decodes an uncompressed `WriteRequest`.
pub fn decode(bytes: &[u8], limits: WriteLimits) -> Result<WriteRequest, DecodeError> {
    let mut req = WriteRequest::default();
    let mut r = Reader(bytes);
    while let Some((field, wire)) = r.key()? {
        match (field, wire) {
            (1, LEN) => {
                if req.timeseries.len() == limits.max_series {
                    return Err(DecodeError::TooManySeries(limits.max_series));
                }
                req.timeseries.push(series(r.bytes()?, limits)?);
            }
            (3, LEN) => req.metadata.push(metadata(r.bytes()?, limits)?),
            _ => r.skip(wire)?,
        }
    }
    Ok(req)
}

/// Encodes a `WriteRequest` (uncompressed).
pub fn encode(req: &WriteRequest) -> Vec<u8> {
    let mut out = Vec::new();
    let mut ts = Vec::new();
    let mut inner = Vec::new();
    for s in &req.timeseries {
        ts.clear();
        for (name, value) in &s.labels {
            inner.clear();
            put_bytes(&mut inner, 1, name.as_bytes());
            put_bytes(&mut inner, 2, value.as_bytes());
            put_bytes(&mut ts, 1, &inner);
        }
        for &(t, v) in &s.samples {
            inner.clear();
            inner.push(1 << 3 | I64);
            inner.extend_from_slice(&v.to_bits().to_le_bytes());
            inner.push(2 << 3);
            put_varint(&mut inner, t as u64);
            put_bytes(&mut ts, 2, &inner);
        }
        put_bytes(&mut out, 1, &ts);
    }
    for m in &req.metadata {
        inner.clear();
        let kind = METADATA_TYPES
            .iter()
            .position(|k| *k == m.kind)
            .unwrap_or(0);
        inner.push(1 << 3);
        put_varint(&mut inner, kind as u64);
        put_bytes(&mut inner, 2, m.family.as_bytes());
        put_bytes(&mut inner, 4, m.help.as_bytes());
        put_bytes(&mut inner, 5, m.unit.as_bytes());
        put_bytes(&mut out, 3, &inner);
    }
    out
}

/// prompb's `MetricMetadata.MetricType`, by number.
const METADATA_TYPES: [&str; 8] = [
    "unknown",
    "counter",
    "gauge",
    "histogram",
    "gaugehistogram",
    "summary",
    "info",
    "stateset",
];

const VARINT: u8 = 0;
const I64: u8 = 1;
const LEN: u8 = 2;
const I32: u8 = 5;

fn series(bytes: &[u8], limits: WriteLimits) -> Result<TimeSeries, DecodeError> {
    let mut s = TimeSeries::default();
    let mut r = Reader(bytes);
    while let Some((field, wire)) = r.key()? {
        match (field, wire) {
            (1, LEN) => {
                if s.labels.len() == limits.max_labels {
                    return Err(DecodeError::TooManyLabels(limits.max_labels));
                }
                s.labels.push(label(r.bytes()?, limits)?);
            }
            (2, LEN) => s.samples.push(sample(r.bytes()?)?),
            _ => r.skip(wire)?,
        }
    }
    Ok(s)
}

fn label(bytes: &[u8], limits: WriteLimits) -> Result<(String, String), DecodeError> {
    let (mut name, mut value) = (String::new(), String::new());
    let mut r = Reader(bytes);
    while let Some((field, wire)) = r.key()? {
        match (field, wire) {
            (1, LEN) => name = text(r.bytes()?, limits)?,
            (2, LEN) => value = text(r.bytes()?, limits)?,
            _ => r.skip(wire)?,
        }
    }
    Ok((name, value))
}

fn sample(bytes: &[u8]) -> Result<(i64, f64), DecodeError> {
    let (mut t, mut v) = (0i64, 0f64);
    let mut r = Reader(bytes);
    while let Some((field, wire)) = r.key()? {
        match (field, wire) {
            (1, I64) => v = f64::from_bits(r.fixed64()?),
            (2, VARINT) => t = r.varint()? as i64,
            _ => r.skip(wire)?,
        }
    }
    Ok((t, v))
}

fn metadata(bytes: &[u8], limits: WriteLimits) -> Result<MetricMetadata, DecodeError> {
    let mut m = MetricMetadata {
        kind: METADATA_TYPES[0].to_owned(),
        ..Default::default()
    };
    let mut r = Reader(bytes);
    while let Some((field, wire)) = r.key()? {
        match (field, wire) {
            (1, VARINT) => {
                let k = r.varint()?;
                m.kind = METADATA_TYPES
                    .get(k as usize)
                    .unwrap_or(&METADATA_TYPES[0])
                    .to_string();
            }
            (2, LEN) => m.family = text(r.bytes()?, limits)?,
            // Help texts may be long; they are bounded by the body.
            (4, LEN) => {
                m.help = String::from_utf8(r.bytes()?.to_vec()).map_err(|_| DecodeError::Utf8)?
            }
            (5, LEN) => m.unit = text(r.bytes()?, limits)?,
            _ => r.skip(wire)?,
        }
    }
    Ok(m)
}

fn text(bytes: &[u8], limits: WriteLimits) -> Result<String, DecodeError> {
    if bytes.len() > limits.max_label_bytes {
        return Err(DecodeError::LabelTooLong(limits.max_label_bytes));
    }
    std::str::from_utf8(bytes)
        .map(str::to_owned)
        .map_err(|_| DecodeError::Utf8)
}

/// A cursor over protobuf bytes.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    /// The next field's number and wire type, `None` at the end.
    fn key(&mut self) -> Result<Option<(u64, u8)>, DecodeError> {
        if self.0.is_empty() {
            return Ok(None);
        }
        let k = self.varint()?;
        let field = k >> 3;
        if field == 0 {
            return Err(DecodeError::Protobuf("field number 0"));
        }
        Ok(Some((field, (k & 7) as u8)))
    }

    fn varint(&mut self) -> Result<u64, DecodeError> {
        let mut v = 0u64;
        for i in 0..10 {
            let Some((&b, rest)) = self.0.split_first() else {
                return Err(DecodeError::Protobuf("truncated varint"));
            };
            self.0 = rest;
            v |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(DecodeError::Protobuf("varint longer than 10 bytes"))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if n > self.0.len() {
            return Err(DecodeError::Protobuf("field runs past the end"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn bytes(&mut self) -> Result<&'a [u8], DecodeError> {
        let n = self.varint()?;
        self.take(usize::try_from(n).map_err(|_| DecodeError::Protobuf("length overflows"))?)
    }

    fn fixed64(&mut self) -> Result<u64, DecodeError> {
        let b = self.take(8)?;
        Ok(u64::from_le_bytes(b.try_into().expect("8 bytes")))
    }

    fn skip(&mut self, wire: u8) -> Result<(), DecodeError> {
        match wire {
            VARINT => self.varint().map(drop),
            I64 => self.take(8).map(drop),
            LEN => self.bytes().map(drop),
            I32 => self.take(4).map(drop),
            _ => Err(DecodeError::Protobuf("unsupported wire type (groups)")),
        }
    }
}

fn put_varint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

fn put_bytes(buf: &mut Vec<u8>, field: u8, bytes: &[u8]) {
    buf.push(field << 3 | LEN);
    put_varint(buf, bytes.len() as u64);
    buf.extend_from_slice(bytes);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn request() -> impl Strategy<Value = WriteRequest> {
        let series = (
            prop::collection::vec(("[a-z_]{1,8}", "\\PC{0,12}"), 0..6),
            prop::collection::vec((any::<i64>(), any::<f64>()), 0..8),
        )
            .prop_map(|(labels, samples)| TimeSeries { labels, samples });
        let meta = (0usize..8, "[a-z_]{0,8}", "\\PC{0,20}", "[a-z]{0,4}").prop_map(
            |(k, family, help, unit)| MetricMetadata {
                kind: METADATA_TYPES[k].to_owned(),
                family,
                help,
                unit,
            },
        );
        (
            prop::collection::vec(series, 0..5),
            prop::collection::vec(meta, 0..3),
        )
            .prop_map(|(timeseries, metadata)| WriteRequest {
                timeseries,
                metadata,
            })
    }

    /// A series with its values as bits (NaN payloads compare by bits).
    type Bits = (Vec<(String, String)>, Vec<(i64, u64)>);

    fn same(a: &WriteRequest, b: &WriteRequest) -> bool {
        let bits = |r: &WriteRequest| -> Vec<Bits> {
            r.timeseries
                .iter()
                .map(|s| {
                    (
                        s.labels.clone(),
                        s.samples.iter().map(|&(t, v)| (t, v.to_bits())).collect(),
                    )
                })
                .collect()
        };
        bits(a) == bits(b) && a.metadata == b.metadata
    }

    proptest! {
        #[test]
        fn encode_then_decode_gives_the_request_back(req in request()) {
            let body = compress(&encode(&req));
            let back = decode_body(&body, WriteLimits::default()).unwrap();
            prop_assert!(same(&req, &back), "{req:?} != {back:?}");
        }

        #[test]
        fn arbitrary_bytes_give_a_request_or_an_error_never_a_panic(
            bytes in prop::collection::vec(any::<u8>(), 0..256)
        ) {
            let _ = decode(&bytes, WriteLimits::default());
            let _ = decode_body(&bytes, WriteLimits::default());
        }

        #[test]
        fn a_truncated_request_is_an_error_or_a_prefix(req in request(), cut in 0usize..400) {
            let bytes = encode(&req);
            let cut = cut.min(bytes.len());
            if let Ok(part) = decode(&bytes[..cut], WriteLimits::default()) {
                prop_assert!(part.timeseries.len() <= req.timeseries.len());
            }
        }
    }

    #[test]
    fn limits_are_enforced_while_decoding() {
        let req = WriteRequest {
            timeseries: vec![
                TimeSeries {
                    labels: vec![("__name__".into(), "a".into())],
                    samples: vec![(1, 1.0)],
                };
                3
            ],
            metadata: vec![],
        };
        let limits = WriteLimits {
            max_series: 2,
            ..Default::default()
        };
        assert_eq!(
            decode(&encode(&req), limits),
            Err(DecodeError::TooManySeries(2))
        );
        let limits = WriteLimits {
            max_decoded_bytes: 4,
            ..Default::default()
        };
        assert!(matches!(
            decode_body(&compress(&encode(&req)), limits),
            Err(DecodeError::TooLarge { limit: 4, .. })
        ));
        assert!(matches!(
            decode_body(b"not snappy at all", WriteLimits::default()),
            Err(DecodeError::Snappy(_) | DecodeError::Protobuf(_))
        ));
        let long = WriteRequest {
            timeseries: vec![TimeSeries {
                labels: vec![("a".into(), "x".repeat(5_000))],
                samples: vec![],
            }],
            metadata: vec![],
        };
        assert_eq!(
            decode(&encode(&long), WriteLimits::default()),
            Err(DecodeError::LabelTooLong(4_096))
        );
    }

    #[test]
    fn unknown_fields_are_skipped() {
        // An exemplar (field 3 of TimeSeries) and an unknown varint field.
        let mut ts = Vec::new();
        put_bytes(&mut ts, 3, b"\x0a\x00");
        ts.push(9 << 3);
        put_varint(&mut ts, 300);
        let mut out = Vec::new();
        put_bytes(&mut out, 1, &ts);
        let req = decode(&out, WriteLimits::default()).unwrap();
        assert_eq!(req.timeseries.len(), 1);
        assert!(req.timeseries[0].labels.is_empty());
    }
}
