//! The frontier: the input's lines in order, cut into numbered segments,
//! with duplicates and URLs finished by an earlier run taken out.
//!
//! * **Segments**: line `n` is in segment `n / segment_urls`. A segment is
//!   finished when every URL of it is committed or dead; the log then says
//!   so, and a later run skips the segment whole (its URLs only enter the
//!   duplicate set). Segments are the unit a cluster would lease.
//! * **Duplicates**: the first line with a URL wins; later lines with the
//!   same fingerprint ([`fingerprint`]) are counted and skipped. The set
//!   ([`FpSet`]) holds the 16-byte fingerprint of every URL read, about
//!   18–37 bytes a URL in memory depending on how full the table is; it is
//!   rebuilt at each start by reading the input again from its first line
//!   (about a second per few million lines), so it needs no file of its
//!   own. For billions of URLs per node it would be sharded by the
//!   fingerprint's top bits into sorted runs on disk; one node of the
//!   benchmark holds millions.
//! * **Earlier runs**: a URL whose fingerprint the log holds as committed
//!   or dead is skipped; one with failed attempts resumes with their count.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};

use crate::input::{check_url, fingerprint, InputError, Line, Lines, Target};
use crate::log::{DeadKind, Record};

/// A hasher for fingerprints, which are already uniform: their low 64 bits.
#[derive(Debug, Default, Clone, Copy)]
pub struct FpHasher(u64);

impl Hasher for FpHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u128(&mut self, n: u128) {
        self.0 = n as u64;
    }
}

/// A set of fingerprints.
pub type FpSet = HashSet<u128, BuildHasherDefault<FpHasher>>;

/// Bytes a [`FpSet`] holds in memory (hashbrown: 16 bytes and one control
/// byte a bucket, buckets a power of two above capacity · 8/7).
pub fn fp_set_bytes(set: &FpSet) -> u64 {
    let buckets = (set.capacity() * 8 / 7).next_power_of_two();
    buckets as u64 * 17
}

/// What the log says about a URL from earlier runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prior {
    /// Committed or dead: skip.
    Finished,
    /// Failed this many times.
    Failed(u16),
}

/// The state earlier runs left, from the log's records.
#[derive(Debug, Default)]
pub struct Earlier {
    /// Finished segments.
    pub segments: HashSet<u32>,
    /// URLs of unfinished segments with a state.
    pub urls: HashMap<u128, Prior, BuildHasherDefault<FpHasher>>,
}

impl Earlier {
    /// Replays records (after the checkpoint).
    pub fn replay(records: &[Record]) -> Earlier {
        let mut e = Earlier::default();
        for r in records {
            match r {
                Record::Commit { urls, .. } => {
                    for (_, fp) in urls {
                        e.urls.insert(*fp, Prior::Finished);
                    }
                }
                Record::Dead { fp, .. } => {
                    e.urls.insert(*fp, Prior::Finished);
                }
                Record::Failed { fp, attempts, .. } => {
                    let prior = e.urls.entry(*fp).or_insert(Prior::Failed(0));
                    if let Prior::Failed(a) = prior {
                        *a = (*a).max(*attempts);
                    }
                }
                Record::SegmentDone { segment } => {
                    e.segments.insert(*segment);
                }
            }
        }
        e
    }
}

/// A URL to work on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    /// Its segment.
    pub segment: u32,
    /// Its fingerprint.
    pub fp: u128,
    /// As written.
    pub url: String,
    /// Attempts made by earlier runs.
    pub attempts: u16,
    /// The checked URL, or why it is a dead letter.
    pub target: Result<Target, (DeadKind, String)>,
}

/// What the frontier hands out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admit {
    /// A URL.
    Url(Item),
    /// Every URL of the segment has been handed out.
    SegmentRead(u32),
}

/// Counts of what was skipped.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Skipped {
    /// Lines read.
    pub lines: u64,
    /// Lines repeating an earlier URL.
    pub duplicates: u64,
    /// URLs finished by an earlier run.
    pub finished_earlier: u64,
}

/// What a node does with a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Admit its URLs.
    Work,
    /// Read past it (its URLs still enter the duplicate set).
    Skip,
    /// End the pass here (cluster mode: to start again from the first line
    /// and take a segment left behind).
    Stop,
}

/// What to do with a segment; asked once per segment, when its first line
/// is read (and after the previous segment was announced read).
pub type Decide = Box<dyn FnMut(u32) -> Decision + Send>;

/// The frontier over the input.
pub struct Frontier {
    lines: Lines,
    earlier: Earlier,
    segment_urls: u64,
    seen: FpSet,
    /// The segment being read, and whether it is worked on.
    current: Option<(u32, bool)>,
    ended: bool,
    /// A line read with the segment boundary before it.
    pending: Option<Line>,
    decide: Option<Decide>,
    /// What was skipped so far.
    pub skipped: Skipped,
}

impl Frontier {
    /// The frontier over `lines`, skipping what `earlier` finished.
    pub fn new(lines: Lines, earlier: Earlier, segment_urls: u64) -> Frontier {
        Frontier {
            lines,
            earlier,
            segment_urls,
            seen: FpSet::default(),
            current: None,
            ended: false,
            pending: None,
            decide: None,
            skipped: Skipped::default(),
        }
    }

    /// Works only on the segments `decide` accepts (cluster mode: those
    /// whose lease this node gets), instead of those `earlier` did not
    /// finish. Every line still enters the duplicate set.
    pub fn deciding(mut self, decide: Decide) -> Frontier {
        self.decide = Some(decide);
        self
    }

    /// The duplicate set (for its size).
    pub fn seen(&self) -> &FpSet {
        &self.seen
    }

    /// The input's byte counter.
    pub fn bytes_read(&self) -> &std::sync::Arc<std::sync::atomic::AtomicU64> {
        &self.lines.bytes_read
    }

    /// Ends the current segment: `SegmentRead` when it was worked on.
    fn close_segment(&mut self) -> Option<Admit> {
        match self.current.take() {
            Some((segment, true)) => Some(Admit::SegmentRead(segment)),
            _ => None,
        }
    }

    /// The next thing to do; `None` at the end of the input.
    pub fn next_admit(&mut self) -> Result<Option<Admit>, InputError> {
        loop {
            if self.ended {
                return Ok(None);
            }
            let line = match self.pending.take() {
                Some(line) => line,
                None => match self.lines.next_line()? {
                    Some(line) => line,
                    None => {
                        self.ended = true;
                        return Ok(self.close_segment());
                    }
                },
            };
            let segment = u32::try_from(line.number / self.segment_urls).unwrap_or(u32::MAX);
            let working = match self.current {
                Some((s, working)) if s == segment => working,
                Some(_) => {
                    // The boundary first; the line waits one call, so that
                    // the segment before is announced before the next one
                    // is decided on.
                    let read = self.close_segment();
                    self.pending = Some(line);
                    match read {
                        Some(r) => return Ok(Some(r)),
                        None => continue,
                    }
                }
                None => {
                    let working = match &mut self.decide {
                        Some(decide) => match decide(segment) {
                            Decision::Work => true,
                            Decision::Skip => false,
                            Decision::Stop => {
                                self.ended = true;
                                return Ok(None);
                            }
                        },
                        None => !self.earlier.segments.contains(&segment),
                    };
                    self.current = Some((segment, working));
                    working
                }
            };
            self.skipped.lines += 1;
            let fp = fingerprint(&line.url);
            let first = self.seen.insert(fp);
            if !first {
                self.skipped.duplicates += 1;
                continue;
            }
            if !working {
                self.skipped.finished_earlier += 1;
                continue;
            }
            let attempts = match self.earlier.urls.get(&fp) {
                Some(Prior::Finished) => {
                    self.skipped.finished_earlier += 1;
                    continue;
                }
                Some(Prior::Failed(a)) => *a,
                None => 0,
            };
            let target = match line.problem {
                Some(p) => Err((DeadKind::InvalidUrl, p)),
                None => check_url(&line.url),
            };
            return Ok(Some(Admit::Url(Item {
                segment,
                fp,
                url: line.url,
                attempts,
                target,
            })));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::InputFormat;
    use proptest::prelude::*;

    fn frontier(urls: &[String], earlier: Earlier, per: u64) -> (Vec<Admit>, Skipped) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("u.txt");
        std::fs::write(&path, urls.join("\n")).unwrap();
        let mut f = Frontier::new(
            Lines::new(vec![path], InputFormat::Text, "url"),
            earlier,
            per,
        );
        let mut out = Vec::new();
        while let Some(a) = f.next_admit().unwrap() {
            out.push(a);
        }
        (out, f.skipped)
    }

    proptest! {
        #[test]
        fn every_distinct_url_once_in_first_order(
            picks in proptest::collection::vec(0u32..50, 1..300),
            per in 1u64..40,
            finished in proptest::collection::hash_set(0u32..50, 0..10),
        ) {
            let urls: Vec<String> = picks.iter().map(|p| format!("http://h{}.test/{p}", p % 7)).collect();
            let mut earlier = Earlier::default();
            for f in &finished {
                earlier.urls.insert(fingerprint(&format!("http://h{}.test/{f}", f % 7)), Prior::Finished);
            }
            let (admits, skipped) = frontier(&urls, earlier, per);
            let mut expected = Vec::new();
            let mut seen = HashSet::new();
            for (i, p) in picks.iter().enumerate() {
                if seen.insert(*p) && !finished.contains(p) {
                    expected.push((i as u64 / per) as u32);
                    expected.push(*p);
                }
            }
            let mut got = Vec::new();
            let mut read = HashSet::new();
            for a in &admits {
                match a {
                    Admit::Url(item) => {
                        prop_assert!(!read.contains(&item.segment), "an item after its segment was read");
                        got.push(item.segment);
                        got.push(item.url.rsplit('/').next().unwrap().parse().unwrap());
                    }
                    Admit::SegmentRead(s) => prop_assert!(read.insert(*s)),
                }
            }
            prop_assert_eq!(got, expected);
            // Every segment is announced as read, in order.
            let last = ((picks.len() as u64 - 1) / per) as u32;
            prop_assert_eq!(read.len() as u32, last + 1);
            prop_assert_eq!(skipped.lines, picks.len() as u64);
            prop_assert_eq!(skipped.duplicates, (picks.len() - seen.len()) as u64);
        }
    }

    #[test]
    fn a_node_admits_only_the_segments_it_claims_with_the_inputs_duplicates() {
        // Segments of 3: [0 1 2] [3 0 4] [5 3 6]; this node claims 1 and 2.
        let urls: Vec<String> = [0, 1, 2, 3, 0, 4, 5, 3, 6]
            .iter()
            .map(|i| format!("http://h.test/{i}"))
            .collect();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("u.txt");
        std::fs::write(&path, urls.join("\n")).unwrap();
        let asked = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = asked.clone();
        let mut f = Frontier::new(
            Lines::new(vec![path], InputFormat::Text, "url"),
            Earlier::default(),
            3,
        )
        .deciding(Box::new(move |s| {
            log.lock().unwrap().push(s);
            if s == 0 {
                Decision::Skip
            } else {
                Decision::Work
            }
        }));
        let mut out = Vec::new();
        while let Some(a) = f.next_admit().unwrap() {
            out.push(match a {
                Admit::Url(i) => format!("{}:{}", i.segment, i.url.rsplit('/').next().unwrap()),
                Admit::SegmentRead(s) => format!("read {s}"),
            });
            // A segment is announced read before the next one is decided.
            if let Some(last) = asked.lock().unwrap().last() {
                if out.last().unwrap() == "read 1" {
                    assert_eq!(*last, 1);
                }
            }
        }
        // The duplicates of 0 and 3 are skipped even though segment 0 is
        // another node's: the first line wins, whoever works on it.
        assert_eq!(out, ["1:3", "1:4", "read 1", "2:5", "2:6", "read 2"]);
        assert_eq!(*asked.lock().unwrap(), [0, 1, 2]);
        assert_eq!(f.skipped.duplicates, 2);
        assert_eq!(f.skipped.finished_earlier, 3);

        // A pass ended at a segment boundary (to start again): the segment
        // before is complete, nothing of the next is admitted.
        let mut f = Frontier::new(
            Lines::new(vec![dir.path().join("u.txt")], InputFormat::Text, "url"),
            Earlier::default(),
            3,
        )
        .deciding(Box::new(|s| {
            if s == 2 {
                Decision::Stop
            } else {
                Decision::Work
            }
        }));
        let mut admits = Vec::new();
        while let Some(a) = f.next_admit().unwrap() {
            admits.push(a);
        }
        assert_eq!(admits.len(), 3 + 1 + 2 + 1);
        assert_eq!(admits.last(), Some(&Admit::SegmentRead(1)));
        assert_eq!(f.next_admit().unwrap(), None);
    }

    #[test]
    fn finished_segments_are_skipped_whole_and_failures_resume() {
        let urls: Vec<String> = (0..10).map(|i| format!("http://h.test/{i}")).collect();
        let mut earlier = Earlier::default();
        earlier.segments.insert(0);
        earlier.urls.insert(fingerprint(&urls[7]), Prior::Failed(2));
        let mut with_dup = urls.clone();
        with_dup.push(urls[1].clone());
        let (admits, skipped) = frontier(&with_dup, earlier, 5);
        let items: Vec<_> = admits
            .iter()
            .filter_map(|a| match a {
                Admit::Url(i) => Some((i.url.clone(), i.attempts)),
                _ => None,
            })
            .collect();
        assert_eq!(items.len(), 5);
        assert_eq!(items[2], (urls[7].clone(), 2));
        assert_eq!(skipped.finished_earlier, 5);
        assert_eq!(
            skipped.duplicates, 1,
            "a duplicate of a finished segment's URL is still one"
        );
        assert!(!admits.contains(&Admit::SegmentRead(0)));
        assert!(admits.contains(&Admit::SegmentRead(2)));
    }
}
