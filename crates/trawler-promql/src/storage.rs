//! The storage seam of the engine: series, labels, matchers.

use std::collections::HashMap;
use std::sync::RwLock;

/// The label holding a series' metric name.
pub const METRIC_NAME: &str = "__name__";

/// Whether `name` is a Prometheus label name (`[a-zA-Z_][a-zA-Z0-9_]*`).
pub fn is_label_name(name: &str) -> bool {
    let mut b = name.bytes();
    matches!(b.next(), Some(c) if c.is_ascii_alphabetic() || c == b'_')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_')
}

/// Whether `name` is a Prometheus metric name (`[a-zA-Z_:][a-zA-Z0-9_:]*`).
pub fn is_metric_name(name: &str) -> bool {
    let mut b = name.bytes();
    matches!(b.next(), Some(c) if c.is_ascii_alphabetic() || c == b'_' || c == b':')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b':')
}

/// One label.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Label {
    /// Its name.
    pub name: String,
    /// Its value; never empty (an empty value means the label is absent).
    pub value: String,
}

/// A series' labels, sorted by name, names unique, no empty values.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Labels(Vec<Label>);

impl Labels {
    /// Labels from pairs in any order: sorted, empty values dropped, the
    /// last of a repeated name kept.
    pub fn new<N: Into<String>, V: Into<String>>(pairs: impl IntoIterator<Item = (N, V)>) -> Self {
        let mut v: Vec<Label> = pairs
            .into_iter()
            .map(|(n, v)| Label {
                name: n.into(),
                value: v.into(),
            })
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        let mut out: Vec<Label> = Vec::with_capacity(v.len());
        for l in v {
            match out.last_mut() {
                Some(last) if last.name == l.name => *last = l,
                _ => out.push(l),
            }
        }
        out.retain(|l| !l.value.is_empty());
        Self(out)
    }

    /// The value of `name`, `""` when absent (as PromQL matching sees it).
    pub fn get(&self, name: &str) -> &str {
        match self.0.binary_search_by(|l| l.name.as_str().cmp(name)) {
            Ok(i) => &self.0[i].value,
            Err(_) => "",
        }
    }

    /// The labels, sorted by name.
    pub fn iter(&self) -> std::slice::Iter<'_, Label> {
        self.0.iter()
    }

    /// How many labels.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Sets (or, with an empty value, removes) a label.
    pub fn set(&mut self, name: &str, value: &str) {
        match self.0.binary_search_by(|l| l.name.as_str().cmp(name)) {
            Ok(i) if value.is_empty() => {
                self.0.remove(i);
            }
            Ok(i) => self.0[i].value = value.to_owned(),
            Err(_) if value.is_empty() => {}
            Err(i) => self.0.insert(
                i,
                Label {
                    name: name.to_owned(),
                    value: value.to_owned(),
                },
            ),
        }
    }

    /// Whether every matcher matches.
    pub fn matches(&self, matchers: &[Matcher]) -> bool {
        matchers.iter().all(|m| m.matches(self.get(&m.name)))
    }
}

/// As the Prometheus API writes a series' labels: an object of name → value.
impl serde::Serialize for Labels {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = s.serialize_map(Some(self.len()))?;
        for l in self.iter() {
            map.serialize_entry(&l.name, &l.value)?;
        }
        map.end()
    }
}

/// How a [`Matcher`] compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MatchOp {
    /// `=`
    Equal,
    /// `!=`
    NotEqual,
    /// `=~` (fully anchored RE2 syntax)
    Regex,
    /// `!~`
    NotRegex,
}

/// A label matcher: `name op "value"`. An absent label matches as `""`.
#[derive(Debug, Clone)]
pub struct Matcher {
    /// The label name.
    pub name: String,
    /// The comparison.
    pub op: MatchOp,
    /// The value or the pattern.
    pub value: String,
    re: Option<regex::Regex>,
}

impl PartialEq for Matcher {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name && self.op == other.op && self.value == other.value
    }
}

impl Matcher {
    /// A matcher; a regex is anchored at both ends as Prometheus does.
    pub fn new(name: &str, op: MatchOp, value: &str) -> Result<Self, regex::Error> {
        let re = match op {
            MatchOp::Regex | MatchOp::NotRegex => {
                Some(regex::Regex::new(&format!("^(?s:{value})$"))?)
            }
            _ => None,
        };
        Ok(Self {
            name: name.to_owned(),
            op,
            value: value.to_owned(),
            re,
        })
    }

    /// Whether a label value (`""` when absent) matches.
    pub fn matches(&self, v: &str) -> bool {
        match self.op {
            MatchOp::Equal => v == self.value,
            MatchOp::NotEqual => v != self.value,
            MatchOp::Regex => self.re.as_ref().is_some_and(|r| r.is_match(v)),
            MatchOp::NotRegex => !self.re.as_ref().is_some_and(|r| r.is_match(v)),
        }
    }

    /// Whether the matcher matches the empty string, i.e. also series
    /// without the label.
    pub fn matches_empty(&self) -> bool {
        self.matches("")
    }
}

/// A series and its samples in the range asked for.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// Its labels, `__name__` included.
    pub labels: Labels,
    /// `(unix ms, value)` sorted by time, no two at one time. Stale
    /// markers (Prometheus' StaleNaN bit pattern) are kept as written.
    pub samples: Vec<(i64, f64)>,
}

/// Bounds a [`Queryable::select`] must enforce before it materialises
/// more: a store returns [`StorageError::TooManySeries`] or
/// [`StorageError::TooManySamples`] as soon as it knows a limit is passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SelectLimits {
    /// Most series one select may return.
    pub max_series: usize,
    /// Most samples one select may return, over all its series.
    pub max_samples: usize,
}

impl Default for SelectLimits {
    fn default() -> Self {
        Self {
            max_series: 100_000,
            max_samples: 50_000_000,
        }
    }
}

/// Why a store could not answer.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum StorageError {
    /// More series match than the limit allows.
    #[error("the query selects more than {limit} series (limit max_series); narrow the selector")]
    TooManySeries {
        /// The limit.
        limit: usize,
    },
    /// More samples than the limit allows.
    #[error("the query loads more than {limit} samples (limit max_samples); shorten the range or raise the step")]
    TooManySamples {
        /// The limit.
        limit: usize,
    },
    /// The store failed; a later call may succeed.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
}

/// What the engine reads. Implementations block (they run on blocking
/// threads) and must be cheap to call many times per query.
pub trait Queryable: Send + Sync {
    /// Every series whose labels match all `matchers` (at least one of which
    /// does not match the empty string) and that has at least one sample
    /// in `[start_ms, end_ms]` (both inclusive), with those samples.
    fn select(
        &self,
        matchers: &[Matcher],
        start_ms: i64,
        end_ms: i64,
        limits: SelectLimits,
    ) -> Result<Vec<Series>, StorageError>;

    /// The labels of the series matching `matchers` with samples in the
    /// range, without their samples (`/api/v1/series`). By default a
    /// select that drops the samples.
    fn series(
        &self,
        matchers: &[Matcher],
        start_ms: i64,
        end_ms: i64,
        limits: SelectLimits,
    ) -> Result<Vec<Labels>, StorageError> {
        Ok(self
            .select(matchers, start_ms, end_ms, limits)?
            .into_iter()
            .map(|s| s.labels)
            .collect())
    }

    /// The sorted, unique label names of the series matching any of
    /// `selectors` (all series when empty) with samples in the range.
    fn label_names(
        &self,
        selectors: &[Vec<Matcher>],
        start_ms: i64,
        end_ms: i64,
    ) -> Result<Vec<String>, StorageError>;

    /// The sorted, unique values of label `name` over the series matching
    /// any of `selectors` (all series when empty) with samples in the range.
    fn label_values(
        &self,
        name: &str,
        selectors: &[Vec<Matcher>],
        start_ms: i64,
        end_ms: i64,
    ) -> Result<Vec<String>, StorageError>;
}

/// Series in memory: the engine's tests and the compliance corpus' loader.
#[derive(Debug, Default)]
pub struct MemoryStorage {
    series: RwLock<Vec<Series>>,
    /// Position of each series in `series` by its labels.
    index: RwLock<HashMap<Labels, usize>>,
}

impl MemoryStorage {
    /// An empty storage.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a sample to the series with these labels (created when
    /// new). Samples of a series must come in time order; a sample at the
    /// time of the last one replaces it.
    pub fn push(&self, labels: &Labels, ts_ms: i64, value: f64) {
        let mut all = self.series.write().expect("memory storage lock");
        let mut index = self.index.write().expect("memory storage lock");
        let i = *index.entry(labels.clone()).or_insert_with(|| {
            all.push(Series {
                labels: labels.clone(),
                samples: Vec::new(),
            });
            all.len() - 1
        });
        let s = &mut all[i];
        match s.samples.last_mut() {
            Some(last) if last.0 == ts_ms => last.1 = value,
            _ => s.samples.push((ts_ms, value)),
        }
    }

    fn matching<'a>(
        all: &'a [Series],
        selectors: &'a [Vec<Matcher>],
        start_ms: i64,
        end_ms: i64,
    ) -> impl Iterator<Item = &'a Series> + 'a {
        all.iter().filter(move |s| {
            (selectors.is_empty() || selectors.iter().any(|m| s.labels.matches(m)))
                && s.samples.iter().any(|&(t, _)| t >= start_ms && t <= end_ms)
        })
    }
}

impl Queryable for MemoryStorage {
    fn select(
        &self,
        matchers: &[Matcher],
        start_ms: i64,
        end_ms: i64,
        limits: SelectLimits,
    ) -> Result<Vec<Series>, StorageError> {
        let all = self.series.read().expect("memory storage lock");
        let mut out = Vec::new();
        let mut samples = 0usize;
        for s in all.iter().filter(|s| s.labels.matches(matchers)) {
            let lo = s.samples.partition_point(|&(t, _)| t < start_ms);
            let hi = s.samples.partition_point(|&(t, _)| t <= end_ms);
            if lo == hi {
                continue;
            }
            if out.len() == limits.max_series {
                return Err(StorageError::TooManySeries {
                    limit: limits.max_series,
                });
            }
            samples += hi - lo;
            if samples > limits.max_samples {
                return Err(StorageError::TooManySamples {
                    limit: limits.max_samples,
                });
            }
            out.push(Series {
                labels: s.labels.clone(),
                samples: s.samples[lo..hi].to_vec(),
            });
        }
        Ok(out)
    }

    fn label_names(
        &self,
        selectors: &[Vec<Matcher>],
        start_ms: i64,
        end_ms: i64,
    ) -> Result<Vec<String>, StorageError> {
        let all = self.series.read().expect("memory storage lock");
        let mut names: Vec<String> = Self::matching(&all, selectors, start_ms, end_ms)
            .flat_map(|s| s.labels.iter().map(|l| l.name.clone()))
            .collect();
        names.sort();
        names.dedup();
        Ok(names)
    }

    fn label_values(
        &self,
        name: &str,
        selectors: &[Vec<Matcher>],
        start_ms: i64,
        end_ms: i64,
    ) -> Result<Vec<String>, StorageError> {
        let all = self.series.read().expect("memory storage lock");
        let mut values: Vec<String> = Self::matching(&all, selectors, start_ms, end_ms)
            .map(|s| s.labels.get(name).to_owned())
            .filter(|v| !v.is_empty())
            .collect();
        values.sort();
        values.dedup();
        Ok(values)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_sorted_unique_and_absent_when_empty() {
        let l = Labels::new([("b", "2"), ("a", "1"), ("c", ""), ("a", "3")]);
        let names: Vec<&str> = l.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(l.get("a"), "3");
        assert_eq!(l.get("c"), "");
    }

    #[test]
    fn regex_matchers_are_anchored_and_match_absent_as_empty() {
        let m = Matcher::new("job", MatchOp::Regex, "api|web").unwrap();
        assert!(m.matches("api") && !m.matches("apis") && !m.matches(""));
        let m = Matcher::new("job", MatchOp::Regex, ".*").unwrap();
        assert!(m.matches_empty());
        let m = Matcher::new("job", MatchOp::NotEqual, "x").unwrap();
        assert!(m.matches(""));
    }

    #[test]
    fn memory_select_enforces_its_limits() {
        let s = MemoryStorage::new();
        for i in 0..3 {
            s.push(
                &Labels::new([("__name__", "m"), ("i", &*i.to_string())]),
                1_000,
                1.0,
            );
        }
        let m = [Matcher::new(METRIC_NAME, MatchOp::Equal, "m").unwrap()];
        let limits = SelectLimits {
            max_series: 2,
            max_samples: 10,
        };
        assert_eq!(
            s.select(&m, 0, 2_000, limits),
            Err(StorageError::TooManySeries { limit: 2 })
        );
        assert_eq!(s.select(&m, 2_000, 3_000, limits).unwrap().len(), 0);
    }
}
