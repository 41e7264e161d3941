//! Id sets: which ids a job tracks, written as a compact spec.
//!
//! A job tracks up to millions of integer ids, usually a few contiguous
//! ranges (`1000000..=1999999`), so an [`IdSet`] is a sorted list of disjoint
//! inclusive ranges rather than a list of ids: a million-account job costs
//! one range, and membership is a binary search.
//!
//! The spec grammar, used by job files and `--ids`:
//!
//! ```text
//! spec  = item ("," item)*
//! item  = id | id ".." id | id "..=" id      (half-open or inclusive)
//! ```
//!
//! Whitespace around items and operators is allowed. Ranges may overlap or
//! touch; they are merged. An empty range (`5..5`, `9..=3`) is an error, as it
//! is almost certainly a typo.
//!
//! ```
//! use trawler_crawl::IdSet;
//! let ids: IdSet = "1000000..1000100, 1500000".parse().unwrap();
//! assert_eq!(ids.len(), 101);
//! assert!(ids.contains(1_500_000));
//! assert_eq!(ids.to_string(), "1000000..=1000099,1500000");
//! ```

use std::fmt;
use std::str::FromStr;

/// A set of ids as sorted, disjoint, non-adjacent inclusive ranges.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IdSet {
    /// `(first, last)` pairs, sorted, with a gap of at least one id between
    /// consecutive pairs: the canonical form, so equal sets compare equal.
    ranges: Vec<(u64, u64)>,
}

/// A spec that is not a valid id set.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid id set {spec:?}: item {item:?}: {reason}")]
pub struct IdSetError {
    /// The whole spec.
    pub spec: String,
    /// The offending item.
    pub item: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

impl IdSet {
    /// The empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Parses a spec such as `1000000..=1999999` or `1000000..1000100,1500000`.
    pub fn parse(spec: &str) -> Result<Self, IdSetError> {
        let fail = |item: &str, reason| IdSetError {
            spec: spec.to_owned(),
            item: item.trim().to_owned(),
            reason,
        };
        let mut ranges = Vec::new();
        for item in spec.split(',') {
            let trimmed = item.trim();
            if trimmed.is_empty() {
                return Err(fail(item, "empty item"));
            }
            let number = |s: &str| -> Result<u64, IdSetError> {
                let s = s.trim();
                if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(fail(item, "expected a non-negative integer"));
                }
                s.parse()
                    .map_err(|_| fail(item, "id does not fit in 64 bits"))
            };
            let range = if let Some((a, b)) = trimmed.split_once("..=") {
                let (a, b) = (number(a)?, number(b)?);
                if b < a {
                    return Err(fail(item, "empty range"));
                }
                (a, b)
            } else if let Some((a, b)) = trimmed.split_once("..") {
                let (a, b) = (number(a)?, number(b)?);
                if b <= a {
                    return Err(fail(item, "empty range"));
                }
                (a, b - 1)
            } else {
                let id = number(trimmed)?;
                (id, id)
            };
            ranges.push(range);
        }
        Ok(Self::from_ranges(ranges))
    }

    /// Builds a set from inclusive `(first, last)` ranges in any order;
    /// ranges with `last < first` are ignored.
    pub fn from_ranges(mut ranges: Vec<(u64, u64)>) -> Self {
        ranges.retain(|&(a, b)| a <= b);
        ranges.sort_unstable();
        let mut merged: Vec<(u64, u64)> = Vec::with_capacity(ranges.len());
        for (a, b) in ranges {
            match merged.last_mut() {
                Some(last) if a <= last.1.saturating_add(1) => last.1 = last.1.max(b),
                _ => merged.push((a, b)),
            }
        }
        merged.shrink_to_fit();
        Self { ranges: merged }
    }

    /// Number of ids (saturating at `u64::MAX` for the full 64-bit range).
    pub fn len(&self) -> u64 {
        self.ranges.iter().fold(0u64, |n, &(a, b)| {
            n.saturating_add((b - a).saturating_add(1))
        })
    }

    /// Whether the set has no id.
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// Whether `id` is in the set.
    pub fn contains(&self, id: u64) -> bool {
        let i = self.ranges.partition_point(|&(_, last)| last < id);
        self.ranges.get(i).is_some_and(|&(first, _)| first <= id)
    }

    /// The inclusive ranges, sorted and disjoint.
    pub fn ranges(&self) -> &[(u64, u64)] {
        &self.ranges
    }

    /// Every id, in ascending order.
    pub fn iter(&self) -> impl Iterator<Item = u64> + '_ {
        self.ranges.iter().flat_map(|&(a, b)| a..=b)
    }
}

impl FromIterator<u64> for IdSet {
    fn from_iter<T: IntoIterator<Item = u64>>(iter: T) -> Self {
        Self::from_ranges(iter.into_iter().map(|id| (id, id)).collect())
    }
}

impl FromStr for IdSet {
    type Err = IdSetError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// The canonical spec: ranges as `first..=last`, single ids alone, joined
/// by commas. Parsing it gives the same set back.
impl fmt::Display for IdSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, &(a, b)) in self.ranges.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            if a == b {
                write!(f, "{a}")?;
            } else {
                write!(f, "{a}..={b}")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    #[test]
    fn parses_the_documented_forms() {
        let ids = IdSet::parse("1000000..=1999999").unwrap();
        assert_eq!(ids.len(), 1_000_000);
        assert_eq!(ids.ranges(), &[(1_000_000, 1_999_999)]);
        let ids = IdSet::parse(" 1000000..1000100 , 1500000").unwrap();
        assert_eq!(
            ids.ranges(),
            &[(1_000_000, 1_000_099), (1_500_000, 1_500_000)]
        );
        // Touching and overlapping ranges merge.
        let ids = IdSet::parse("1..3,3..=5,6,10..=12,11").unwrap();
        assert_eq!(ids.ranges(), &[(1, 6), (10, 12)]);
        assert_eq!(IdSet::parse("18446744073709551615").unwrap().len(), 1);
        assert_eq!(
            IdSet::parse("0..=18446744073709551615").unwrap().len(),
            u64::MAX
        );
    }

    #[test]
    fn rejects_bad_specs_naming_the_item() {
        for (spec, item) in [
            ("", ""),
            ("1,,2", ""),
            ("5..5", "5..5"),
            ("9..=3", "9..=3"),
            ("1..x", "1..x"),
            ("-1", "-1"),
            ("1...3", "1...3"),
            ("99999999999999999999", "99999999999999999999"),
        ] {
            let e = IdSet::parse(spec).unwrap_err();
            assert_eq!(e.item, item, "{spec}: {e}");
        }
        assert_eq!(
            IdSet::parse("1,2..1").unwrap_err().to_string(),
            r#"invalid id set "1,2..1": item "2..1": empty range"#
        );
    }

    fn naive(spec_ranges: &[(u64, u64, bool)]) -> BTreeSet<u64> {
        let mut set = BTreeSet::new();
        // Every generated item names `a..=a + len`, whatever its form.
        for &(a, len, _) in spec_ranges {
            set.extend(a..=a + len);
        }
        set
    }

    proptest! {
        /// Any spec made of ranges and singletons parses to exactly the ids
        /// it names, and the canonical form round-trips.
        #[test]
        fn spec_matches_naive_set(items in proptest::collection::vec((0u64..500, 0u64..20, any::<bool>()), 1..12)) {
            let spec: Vec<String> = items
                .iter()
                .map(|&(a, len, inclusive)| match (len, inclusive) {
                    (0, true) => format!("{a}"),
                    (_, true) => format!("{a}..={}", a + len),
                    (_, false) => format!("{a}..{}", a + len + 1),
                })
                .collect();
            let spec = spec.join(",");
            let ids = IdSet::parse(&spec).unwrap();
            let expected = naive(&items);
            prop_assert_eq!(ids.len(), expected.len() as u64);
            prop_assert_eq!(ids.iter().collect::<Vec<_>>(), expected.iter().copied().collect::<Vec<_>>());
            for probe in 0..540 {
                prop_assert_eq!(ids.contains(probe), expected.contains(&probe));
            }
            prop_assert_eq!(IdSet::parse(&ids.to_string()).unwrap(), ids.clone());
            prop_assert_eq!(ids.iter().collect::<IdSet>(), ids);
        }

        /// The parser never panics, whatever it is fed.
        #[test]
        fn never_panics(spec in "[0-9., =a-]{0,24}") {
            let _ = IdSet::parse(&spec);
        }
    }
}
