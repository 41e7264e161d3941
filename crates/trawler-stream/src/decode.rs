//! Events decoded once, into a columnar [`Batch`], without building a
//! document.
//!
//! The job's pointers (time, type, group object, the metrics' fields) are
//! compiled into a trie; each event is walked once with serde's visitor
//! API, keeping only what a pointer names: the time as milliseconds, the
//! type as a small id, the group members as ranges of one text buffer, and
//! each field as a number and/or a 64-bit hash (what a distinct count
//! needs). Nothing is allocated per event once the batch's buffers have
//! grown.
//!
//! The early filter runs inside the walk: when the type is one no metric
//! names, the walk of an NDJSON line stops right there — the rest of the
//! line is not even scanned — and the event is counted as filtered. (In a
//! JSON array the element must still be scanned to find the next one.)
//!
//! Every malformed event is counted, and the first few are kept with their
//! line and reason for the answer and the log; a malformed event never
//! fails its batch.

use std::fmt;

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};

use crate::spec::StreamJob;

/// Malformed events kept with their reason, per batch.
pub const MAX_ERRORS: usize = 5;

/// What a pointer's value is used for.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Slot {
    Time,
    Type,
    Group,
    Field(usize),
    /// A top-N job's key (0) or member (1): a string or an integer, kept
    /// as text.
    Key(usize),
}

#[derive(Debug, Clone, Default)]
struct Node {
    children: Vec<(Box<str>, Node)>,
    ends: Vec<Slot>,
}

/// A field's value in one event.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct FieldVal {
    /// The number, when the value is one.
    pub num: Option<f64>,
    /// A hash of the value (strings by their text, numbers by their
    /// value), when it is a string or a number.
    pub hash: Option<u64>,
}

/// One decoded event.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Event {
    /// Event time, unix ms.
    pub ts: i64,
    /// Type id ([`StreamJob::types`]; `other_type()` for any other).
    pub type_id: u16,
    /// Its group members: `pairs[start..end]` of the batch.
    pub pairs: (u32, u32),
}

/// Counts of what a decode saw besides accepted events.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DecodeStats {
    /// Events whose type no metric names, or without any group.
    pub filtered: u64,
    /// Events that are not JSON objects with a valid time.
    pub malformed: u64,
    /// The first [`MAX_ERRORS`] malformed events: (1-based line or
    /// element, reason).
    pub errors: Vec<(u64, String)>,
}

/// Decoded events, columnar; reused between batches.
#[derive(Debug, Default)]
pub struct Batch {
    /// The events, in arrival order.
    pub events: Vec<Event>,
    /// `fields[i * n .. (i + 1) * n]`: event `i`'s fields.
    pub fields: Vec<FieldVal>,
    /// Group members: (key start, key end, value start, value end) in `text`.
    pub pairs: Vec<[u32; 4]>,
    /// Member keys and values.
    pub text: String,
    /// Filtered and malformed events.
    pub stats: DecodeStats,
    /// The source's position after this batch (a JetStream sequence, a
    /// file's line), or 0.
    pub position: u64,
}

impl Batch {
    /// Empties the batch, keeping its buffers.
    pub fn clear(&mut self) {
        self.events.clear();
        self.fields.clear();
        self.pairs.clear();
        self.text.clear();
        self.stats = DecodeStats::default();
        self.position = 0;
    }

    /// The fields of event `i` (of a job with `n` fields).
    pub fn fields_of(&self, i: usize, n: usize) -> &[FieldVal] {
        &self.fields[i * n..(i + 1) * n]
    }

    /// The (key, value) members of `event`.
    pub fn members(&self, event: &Event) -> impl Iterator<Item = (&str, &str)> {
        self.pairs[event.pairs.0 as usize..event.pairs.1 as usize]
            .iter()
            .map(|p| {
                (
                    &self.text[p[0] as usize..p[1] as usize],
                    &self.text[p[2] as usize..p[3] as usize],
                )
            })
    }
}

/// A job's compiled decoder.
#[derive(Debug, Clone)]
pub struct Decoder {
    root: Node,
    fields: usize,
    types: Vec<String>,
    other_type: u16,
    /// Events of another type feed no metric.
    filter_other: bool,
    has_type: bool,
    /// A top-N job: the key's and the member's pointers (for errors), and
    /// whether field 0 is the summed value.
    topn: Option<(String, String, bool)>,
}

/// The per-event state of a walk.
struct Scratch<'b> {
    d: &'b Decoder,
    ts: Option<i64>,
    type_id: u16,
    fields: &'b mut [FieldVal],
    pairs: &'b mut Vec<[u32; 4]>,
    text: &'b mut String,
    /// A top-N job's key and member: ranges of `text`.
    top: [Option<(u32, u32)>; 2],
    /// Stop at a filtered type (NDJSON: nothing else on the line is needed).
    abort: bool,
    filtered: bool,
    problem: Option<String>,
}

const FILTERED: &str = "\u{0}filtered";

impl Decoder {
    /// Compiles `job`'s pointers.
    pub fn new(job: &StreamJob) -> Self {
        let mut d = Decoder {
            root: Node::default(),
            fields: job.fields.len(),
            types: job.types.clone(),
            other_type: job.other_type(),
            filter_other: job.filters_other_types(),
            has_type: job.type_field.is_some(),
            topn: job
                .topn
                .as_ref()
                .map(|t| (t.key.clone(), t.member.clone(), t.weighted)),
        };
        d.add(&job.time_field, Slot::Time);
        if let Some(t) = &job.type_field {
            d.add(t, Slot::Type);
        }
        if let Some(g) = &job.group {
            d.add(&g.each, Slot::Group);
        }
        if let Some(t) = &job.topn {
            d.add(&t.key, Slot::Key(0));
            d.add(&t.member, Slot::Key(1));
        }
        for (i, f) in job.fields.iter().enumerate() {
            d.add(f, Slot::Field(i));
        }
        d
    }

    fn add(&mut self, pointer: &str, slot: Slot) {
        let mut node = &mut self.root;
        for seg in pointer.split('/').skip(1) {
            let seg = seg.replace("~1", "/").replace("~0", "~");
            let at = match node.children.iter().position(|(s, _)| **s == *seg) {
                Some(at) => at,
                None => {
                    node.children.push((seg.into(), Node::default()));
                    node.children.len() - 1
                }
            };
            node = &mut node.children[at].1;
        }
        node.ends.push(slot);
    }

    /// Fields per event.
    pub fn fields(&self) -> usize {
        self.fields
    }

    /// Decodes a request or file body: a JSON array of events, or NDJSON
    /// (one event per line, blank lines skipped), appending to `batch`.
    pub fn decode(&self, body: &[u8], batch: &mut Batch) {
        let first = body.iter().position(|b| !b.is_ascii_whitespace());
        match first.map(|i| body[i]) {
            None => {}
            Some(b'[') => self.decode_array(body, batch),
            Some(_) => {
                let mut line_no = 0u64;
                for line in body.split(|&b| b == b'\n') {
                    line_no += 1;
                    let line = line.strip_suffix(b"\r").unwrap_or(line);
                    if line.iter().all(|b| b.is_ascii_whitespace()) {
                        continue;
                    }
                    self.decode_line(line, line_no, batch);
                }
            }
        }
    }

    /// Decodes one NDJSON line (`line_no` names it in errors).
    pub fn decode_line(&self, line: &[u8], line_no: u64, batch: &mut Batch) {
        let n = self.fields;
        let start = batch.fields.len();
        batch.fields.resize(start + n, FieldVal::default());
        let pairs_start = batch.pairs.len() as u32;
        let mut s = Scratch {
            d: self,
            ts: None,
            type_id: self.other_type,
            fields: &mut batch.fields[start..],
            pairs: &mut batch.pairs,
            text: &mut batch.text,
            abort: true,
            filtered: false,
            problem: None,
            top: [None; 2],
        };
        let mut de = serde_json::Deserializer::from_slice(line);
        let walked = ObjectSeed {
            node: &self.root,
            s: &mut s,
        }
        .deserialize(&mut de)
        .and_then(|()| de.end());
        let outcome = match walked {
            Err(_) if s.filtered => Err(None),
            Err(e) => Err(Some(e.to_string())),
            Ok(()) => Ok(()),
        };
        if outcome.is_ok() {
            s.end_event();
        }
        self.finish(
            outcome,
            s.ts,
            s.type_id,
            s.filtered,
            s.problem.take(),
            pairs_start,
            start,
            line_no,
            batch,
        );
    }

    fn decode_array(&self, body: &[u8], batch: &mut Batch) {
        let mut de = serde_json::Deserializer::from_slice(body);
        let r = de::Deserializer::deserialize_seq(&mut de, ArrayVisitor { d: self, batch })
            .and_then(|()| de.end());
        if let Err(e) = r {
            // The array itself is broken: what follows cannot be found.
            batch.stats.malformed += 1;
            if batch.stats.errors.len() < MAX_ERRORS {
                batch
                    .stats
                    .errors
                    .push((0, format!("the body is not a JSON array of events: {e}")));
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn finish(
        &self,
        walked: Result<(), Option<String>>,
        ts: Option<i64>,
        type_id: u16,
        filtered: bool,
        problem: Option<String>,
        pairs_start: u32,
        fields_start: usize,
        line_no: u64,
        batch: &mut Batch,
    ) {
        let why = match (walked, filtered) {
            (_, true) => None,
            (Err(Some(e)), _) => Some(e),
            (Err(None), _) => None,
            (Ok(()), false) => match (problem, ts) {
                (Some(p), _) => Some(p),
                (None, None) => Some("no event time (stream.time_field)".to_owned()),
                (None, Some(_)) => None,
            },
        };
        let grouped = batch.pairs.len() as u32 > pairs_start;
        match (why, filtered || !grouped) {
            (Some(why), _) if !filtered => {
                batch.stats.malformed += 1;
                if batch.stats.errors.len() < MAX_ERRORS {
                    batch.stats.errors.push((line_no, why));
                }
            }
            (_, true) => batch.stats.filtered += 1,
            (_, false) => {
                batch.events.push(Event {
                    ts: ts.unwrap_or_default(),
                    type_id,
                    pairs: (pairs_start, batch.pairs.len() as u32),
                });
                return;
            }
        }
        batch.fields.truncate(fields_start);
        batch.pairs.truncate(pairs_start as usize);
    }
}

struct ArrayVisitor<'a> {
    d: &'a Decoder,
    batch: &'a mut Batch,
}

impl<'de> Visitor<'de> for ArrayVisitor<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an array of events")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let (d, batch) = (self.d, self.batch);
        let mut element = 0u64;
        loop {
            element += 1;
            let n = d.fields;
            let start = batch.fields.len();
            batch.fields.resize(start + n, FieldVal::default());
            let pairs_start = batch.pairs.len() as u32;
            let mut s = Scratch {
                d,
                ts: None,
                type_id: d.other_type,
                fields: &mut batch.fields[start..],
                pairs: &mut batch.pairs,
                text: &mut batch.text,
                abort: false,
                filtered: false,
                problem: None,
                top: [None; 2],
            };
            let got = seq.next_element_seed(ElementSeed { s: &mut s })?;
            if got == Some(true) {
                s.end_event();
            }
            let (ts, type_id, filtered, problem) = (s.ts, s.type_id, s.filtered, s.problem.take());
            match got {
                None => {
                    batch.fields.truncate(start);
                    return Ok(());
                }
                Some(ok) => {
                    let walked = if ok {
                        Ok(())
                    } else {
                        Err(Some("an event is not a JSON object".to_owned()))
                    };
                    d.finish(
                        walked,
                        ts,
                        type_id,
                        filtered,
                        problem,
                        pairs_start,
                        start,
                        element,
                        batch,
                    );
                }
            }
        }
    }
}

/// One element of an array: an object is walked, anything else is
/// skipped and reported (`false`).
struct ElementSeed<'s, 'b> {
    s: &'s mut Scratch<'b>,
}

impl<'de> DeserializeSeed<'de> for ElementSeed<'_, '_> {
    type Value = bool;
    fn deserialize<D: de::Deserializer<'de>>(self, de: D) -> Result<bool, D::Error> {
        de.deserialize_any(ElementVisitor { s: self.s })
    }
}

struct ElementVisitor<'s, 'b> {
    s: &'s mut Scratch<'b>,
}

impl<'de> Visitor<'de> for ElementVisitor<'_, '_> {
    type Value = bool;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an event")
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<bool, A::Error> {
        let root = &self.s.d.root;
        ObjectVisitor {
            node: root,
            s: self.s,
        }
        .visit_map(map)?;
        Ok(true)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<bool, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(false)
    }
    fn visit_str<E>(self, _: &str) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_f64<E>(self, _: f64) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_i64<E>(self, _: i64) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_u64<E>(self, _: u64) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_bool<E>(self, _: bool) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_unit<E>(self) -> Result<bool, E> {
        Ok(false)
    }
}

/// An object at `node` (the root: the event itself).
struct ObjectSeed<'n, 's, 'b> {
    node: &'n Node,
    s: &'s mut Scratch<'b>,
}

impl<'de> DeserializeSeed<'de> for ObjectSeed<'_, '_, '_> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, de: D) -> Result<(), D::Error> {
        de.deserialize_any(ObjectVisitor {
            node: self.node,
            s: self.s,
        })
    }
}

struct ObjectVisitor<'n, 's, 'b> {
    node: &'n Node,
    s: &'s mut Scratch<'b>,
}

impl<'de> Visitor<'de> for ObjectVisitor<'_, '_, '_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(child) = map.next_key_seed(KeySeed(self.node))? {
            match child {
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
                Some(i) => {
                    let node = &self.node.children[i].1;
                    if node.ends.is_empty() {
                        map.next_value_seed(ObjectSeed { node, s: self.s })?;
                    } else {
                        map.next_value_seed(LeafSeed {
                            slots: &node.ends,
                            s: self.s,
                        })?;
                        if self.s.filtered && self.s.abort {
                            return Err(de::Error::custom(FILTERED));
                        }
                    }
                }
            }
        }
        Ok(())
    }
    // Anything but an object on a pointer's path: the pointer matches
    // nothing (at the root: the event is malformed).
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        self.not_object();
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        self.not_object();
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        self.not_object();
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        self.not_object();
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        self.not_object();
        Ok(())
    }
    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        self.not_object();
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        self.not_object();
        Ok(())
    }
}

impl ObjectVisitor<'_, '_, '_> {
    fn not_object(self) {
        if std::ptr::eq(self.node, &self.s.d.root) && self.s.problem.is_none() {
            self.s.problem = Some("an event is not a JSON object".to_owned());
        }
    }
}

/// A member's key: the index of the trie child it names, if any.
struct KeySeed<'n>(&'n Node);

impl<'de> DeserializeSeed<'de> for KeySeed<'_> {
    type Value = Option<usize>;
    fn deserialize<D: de::Deserializer<'de>>(self, de: D) -> Result<Option<usize>, D::Error> {
        de.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed<'_> {
    type Value = Option<usize>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a key")
    }
    fn visit_str<E>(self, key: &str) -> Result<Option<usize>, E> {
        Ok(self.0.children.iter().position(|(k, _)| **k == *key))
    }
}

/// A value where one or more pointers end.
struct LeafSeed<'n, 's, 'b> {
    slots: &'n [Slot],
    s: &'s mut Scratch<'b>,
}

impl<'de> DeserializeSeed<'de> for LeafSeed<'_, '_, '_> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, de: D) -> Result<(), D::Error> {
        de.deserialize_any(self)
    }
}

fn hash_bytes(b: &[u8]) -> u64 {
    wyhash::wyhash(b, 0x0074_7261_776c_6572)
}

impl LeafSeed<'_, '_, '_> {
    fn number(self, v: f64) {
        for slot in self.slots {
            match *slot {
                Slot::Time => {
                    if v.is_finite() && v.abs() < 1e16 {
                        self.s.ts = Some(v as i64);
                    } else {
                        self.s.problem = Some(format!("event time {v} is out of range"));
                    }
                }
                Slot::Type => self.s.set_type(None),
                Slot::Group => self.s.problem = Some("the group field is not an object".into()),
                // Integers are written by visit_i64/visit_u64 exactly.
                Slot::Key(k) if self.s.top[k].is_none() => {
                    if v.fract() == 0.0 && v.abs() < 9e15 {
                        self.s.key_text(k, format_args!("{}", v as i64));
                    } else {
                        self.s.problem = Some(format!("{v} is not a string or an integer key"));
                    }
                }
                Slot::Key(_) => {}
                Slot::Field(i) => {
                    // Integral numbers hash as their integer, so `7` and
                    // `7.0` are one distinct value.
                    let bits = if v.fract() == 0.0 && v.abs() < 9e15 {
                        (v as i64).to_le_bytes()
                    } else {
                        v.to_bits().to_le_bytes()
                    };
                    self.s.fields[i] = FieldVal {
                        num: Some(v),
                        hash: Some(hash_bytes(&bits)),
                    };
                }
            }
        }
    }
}

impl Scratch<'_> {
    /// Keeps a top-N key (0) or member (1) as text.
    fn key_text(&mut self, k: usize, text: fmt::Arguments) {
        use std::fmt::Write;
        let start = self.text.len() as u32;
        let _ = self.text.write_fmt(text);
        self.top[k] = Some((start, self.text.len() as u32));
    }

    /// A top-N event is whole: its (key, member) becomes its one pair; a
    /// missing one, or a value that is not a count, makes it malformed.
    fn end_event(&mut self) {
        let Some((key, member, weighted)) = &self.d.topn else {
            return;
        };
        if self.filtered || self.problem.is_some() {
            return;
        }
        match self.top {
            [Some(k), Some(m)] => self.pairs.push([k.0, k.1, m.0, m.1]),
            [None, _] => self.problem = Some(format!("no key at {key}")),
            [_, None] => self.problem = Some(format!("no member at {member}")),
        }
        if *weighted && self.problem.is_none() {
            match self.fields[0].num {
                Some(v) if v >= 0.0 && v.fract() == 0.0 && v <= f64::from(u32::MAX) => {}
                Some(v) => {
                    self.problem = Some(format!(
                        "value {v} is not a whole number from 0 to {}",
                        u32::MAX
                    ))
                }
                None => self.problem = Some("no value (stream.topn.value)".into()),
            }
        }
    }

    fn set_type(&mut self, name: Option<&str>) {
        let d = self.d;
        self.type_id = name
            .and_then(|n| d.types.iter().position(|t| t == n))
            .map_or(d.other_type, |i| i as u16);
        if d.has_type && d.filter_other && self.type_id == d.other_type {
            self.filtered = true;
        }
    }
}

impl<'de> Visitor<'de> for LeafSeed<'_, '_, '_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a value")
    }
    fn visit_i64<E>(mut self, v: i64) -> Result<(), E> {
        if self.slots.contains(&Slot::Time) && self.slots.len() == 1 {
            self.s.ts = Some(v);
            return Ok(());
        }
        self.integer_keys(format_args!("{v}"));
        self.number(v as f64);
        Ok(())
    }
    fn visit_u64<E>(mut self, v: u64) -> Result<(), E> {
        if self.slots.contains(&Slot::Time) && self.slots.len() == 1 && v <= i64::MAX as u64 {
            self.s.ts = Some(v as i64);
            return Ok(());
        }
        self.integer_keys(format_args!("{v}"));
        self.number(v as f64);
        Ok(())
    }
    fn visit_f64<E>(self, v: f64) -> Result<(), E> {
        self.number(v);
        Ok(())
    }
    fn visit_str<E>(self, v: &str) -> Result<(), E> {
        for slot in self.slots {
            match *slot {
                Slot::Time => match humantime::parse_rfc3339_weak(v) {
                    Ok(t) => {
                        self.s.ts = Some(match t.duration_since(std::time::UNIX_EPOCH) {
                            Ok(d) => d.as_millis() as i64,
                            Err(e) => -(e.duration().as_millis() as i64),
                        })
                    }
                    Err(_) => {
                        self.s.problem = Some(format!(
                            "event time {v:?} is neither unix milliseconds nor RFC 3339"
                        ))
                    }
                },
                Slot::Type => self.s.set_type(Some(v)),
                Slot::Group => self.s.problem = Some("the group field is not an object".into()),
                Slot::Key(k) => self.s.key_text(k, format_args!("{v}")),
                Slot::Field(i) => {
                    self.s.fields[i] = FieldVal {
                        num: None,
                        hash: Some(hash_bytes(v.as_bytes())),
                    }
                }
            }
        }
        Ok(())
    }
    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        self.other();
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        self.other();
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        self.other();
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        if !self.slots.contains(&Slot::Group) {
            while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
            self.other();
            return Ok(());
        }
        while let Some(key_len) = map.next_key_seed(TextSeed { text: self.s.text })? {
            let key_end = self.s.text.len() as u32;
            let key_start = key_end - key_len;
            match map.next_value_seed(MemberValue { text: self.s.text })? {
                Some(len) => {
                    let end = self.s.text.len() as u32;
                    self.s.pairs.push([key_start, key_end, end - len, end]);
                }
                None => {
                    self.s.text.truncate(key_start as usize);
                    self.s.problem = Some("a group member's value is not a string".into());
                }
            }
        }
        Ok(())
    }
}

impl LeafSeed<'_, '_, '_> {
    /// A value that is neither a number nor a string.
    fn other(self) {
        for slot in self.slots {
            match *slot {
                Slot::Time => {
                    self.s.problem = Some("event time is not a number or a string".into())
                }
                Slot::Type => self.s.set_type(None),
                Slot::Group => self.s.problem = Some("the group field is not an object".into()),
                Slot::Key(_) => self.s.problem = Some("a key is not a string or an integer".into()),
                Slot::Field(_) => {}
            }
        }
    }

    /// An integer at a top-N key or member: its exact text.
    fn integer_keys(&mut self, text: fmt::Arguments) {
        for slot in self.slots {
            if let Slot::Key(k) = *slot {
                self.s.key_text(k, text);
            }
        }
    }
}

/// Appends a key to the text buffer.
struct TextSeed<'t> {
    text: &'t mut String,
}

impl<'de> DeserializeSeed<'de> for TextSeed<'_> {
    type Value = u32;
    fn deserialize<D: de::Deserializer<'de>>(self, de: D) -> Result<u32, D::Error> {
        de.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for TextSeed<'_> {
    type Value = u32;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string")
    }
    fn visit_str<E>(self, v: &str) -> Result<u32, E> {
        self.text.push_str(v);
        Ok(v.len() as u32)
    }
}

/// A group member's value: a string is appended (its length); anything else
/// is skipped (`None`).
struct MemberValue<'t> {
    text: &'t mut String,
}

impl<'de> DeserializeSeed<'de> for MemberValue<'_> {
    type Value = Option<u32>;
    fn deserialize<D: de::Deserializer<'de>>(self, de: D) -> Result<Option<u32>, D::Error> {
        de.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for MemberValue<'_> {
    type Value = Option<u32>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a variant")
    }
    fn visit_str<E>(self, v: &str) -> Result<Option<u32>, E> {
        self.text.push_str(v);
        Ok(Some(v.len() as u32))
    }
    fn visit_i64<E>(self, _: i64) -> Result<Option<u32>, E> {
        Ok(None)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Option<u32>, E> {
        Ok(None)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Option<u32>, E> {
        Ok(None)
    }
    fn visit_bool<E>(self, _: bool) -> Result<Option<u32>, E> {
        Ok(None)
    }
    fn visit_unit<E>(self) -> Result<Option<u32>, E> {
        Ok(None)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Option<u32>, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(None)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Option<u32>, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(None)
    }
}
