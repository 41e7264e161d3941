//! Bucket aggregates: computing them from points, merging adjacent ones, and
//! the transform that makes stored hourly rollups cheap.
//!
//! Format version 1 stored hourly rollups in every block (version 2
//! computes them from the values when read); their decoders stay here.
//! Stored integer rollups were not written as raw min/max/sum/first/last:
//! each field is rewritten as a small difference that pco codes in few bits
//! (first − previous last is one step of the series, last − first one hour of
//! steps, max − max(first, last) and min(first, last) − min are ≥ 0 and
//! small, and 2·sum − count·(first + last) is the area between the series
//! and its chord). Float rollups are stored as they are.

use crate::{Aggregate, Value, ValueKind};

fn min_v(a: Value, b: Value) -> Value {
    match (a, b) {
        (Value::Int(x), Value::Int(y)) => Value::Int(x.min(y)),
        (x, y) => Value::Float(x.as_f64().min(y.as_f64())),
    }
}

fn max_v(a: Value, b: Value) -> Value {
    match (a, b) {
        (Value::Int(x), Value::Int(y)) => Value::Int(x.max(y)),
        (x, y) => Value::Float(x.as_f64().max(y.as_f64())),
    }
}

fn add_v(a: Value, b: Value) -> Value {
    match (a, b) {
        (Value::Int(x), Value::Int(y)) => Value::Int(x.wrapping_add(y)),
        (x, y) => Value::Float(x.as_f64() + y.as_f64()),
    }
}

/// Merges `later` (a bucket whose points all come after `acc`'s) into `acc`.
pub(crate) fn merge(acc: &mut Aggregate, later: &Aggregate) {
    acc.count += later.count;
    acc.min = min_v(acc.min, later.min);
    acc.max = max_v(acc.max, later.max);
    acc.sum = add_v(acc.sum, later.sum);
    acc.last = later.last;
}

/// Appends `agg` to `out`, merging it into the last bucket when they share a
/// start (a bucket split across two blocks).
pub(crate) fn push_merged(out: &mut Vec<Aggregate>, agg: Aggregate) {
    match out.last_mut() {
        Some(last) if last.start_ms == agg.start_ms => merge(last, &agg),
        _ => out.push(agg),
    }
}

/// Aggregates time-sorted points into buckets of `bucket_ms` aligned to the
/// epoch, appending to `out`. Each bucket's run of points is folded in its
/// native type (hourly rollups of blocks are computed here on every read).
/// The points must be sorted by time.
pub(crate) fn aggregate(
    kind: ValueKind,
    points: &[(i64, u64)],
    bucket_ms: i64,
    out: &mut Vec<Aggregate>,
) {
    let mut rest = points;
    while let Some(&(ts, _)) = rest.first() {
        // One division per bucket, not per point: the points are sorted, so
        // the bucket's run ends at the first point past its end.
        let start = ts.div_euclid(bucket_ms) * bucket_ms;
        let end = start.saturating_add(bucket_ms);
        let (run, tail) = rest.split_at(rest.partition_point(|p| p.0 < end).max(1));
        rest = tail;
        let (Some(&(_, first)), Some(&(_, last))) = (run.first(), run.last()) else {
            continue;
        };
        let v = |bits| Value::from_bits(kind, bits);
        let (min, max, sum) = match kind {
            ValueKind::Int => {
                let (mut min, mut max, mut sum) = (i64::MAX, i64::MIN, 0i64);
                for &(_, b) in run {
                    let x = b as i64;
                    min = min.min(x);
                    max = max.max(x);
                    sum = sum.wrapping_add(x);
                }
                (Value::Int(min), Value::Int(max), Value::Int(sum))
            }
            ValueKind::Float => {
                let mut it = run.iter().map(|&(_, b)| f64::from_bits(b));
                let x0 = it.next().unwrap_or_default();
                let (mut min, mut max, mut sum) = (x0, x0, x0);
                for x in it {
                    min = min.min(x);
                    max = max.max(x);
                    sum += x;
                }
                (Value::Float(min), Value::Float(max), Value::Float(sum))
            }
        };
        push_merged(
            out,
            Aggregate {
                start_ms: start,
                count: run.len() as u64,
                min,
                max,
                sum,
                first: v(first),
                last: v(last),
            },
        );
    }
}

/// Rewrites hourly aggregates (one per hour from the series' first hour in
/// the block, empty hours with count 0) as pco input: the counts, and the
/// five fields laid out field-major.
#[cfg(test)] // written by format version 1 only; the tests' encoder
pub(crate) fn encode_int_rollups(
    hours: &[Option<Aggregate>],
    fields: &mut Vec<i64>,
    counts: &mut Vec<i64>,
) {
    let int = |v: Value| match v {
        Value::Int(x) => x,
        Value::Float(_) => unreachable!("int rollup holds a float"),
    };
    let base = fields.len();
    fields.resize(base + 5 * hours.len(), 0);
    let n = hours.len();
    let mut prev_last = 0i64;
    for (h, agg) in hours.iter().enumerate() {
        let Some(a) = agg else {
            counts.push(0);
            continue;
        };
        counts.push(a.count as i64);
        let (first, last, min, max, sum) = (
            int(a.first),
            int(a.last),
            int(a.min),
            int(a.max),
            int(a.sum),
        );
        fields[base + h] = first.wrapping_sub(prev_last);
        fields[base + n + h] = last.wrapping_sub(first);
        fields[base + 2 * n + h] = max.wrapping_sub(first.max(last));
        fields[base + 3 * n + h] = first.min(last).wrapping_sub(min);
        fields[base + 4 * n + h] = sum
            .wrapping_mul(2)
            .wrapping_sub((a.count as i64).wrapping_mul(first.wrapping_add(last)));
        prev_last = last;
    }
}

/// Inverse of [`encode_int_rollups`]: `first_hour` is the start of hour 0.
pub(crate) fn decode_int_rollups(
    first_hour_ms: i64,
    fields: &[i64],
    counts: &[i64],
    out: &mut Vec<Aggregate>,
) -> Option<()> {
    let n = counts.len();
    if fields.len() != 5 * n {
        return None;
    }
    let mut prev_last = 0i64;
    for (h, &count) in counts.iter().enumerate() {
        if count <= 0 {
            continue;
        }
        let first = fields[h].wrapping_add(prev_last);
        let last = fields[n + h].wrapping_add(first);
        let max = fields[2 * n + h].wrapping_add(first.max(last));
        let min = first.min(last).wrapping_sub(fields[3 * n + h]);
        // 2·sum is known modulo 2^64, so sum is known modulo 2^63: exact
        // while |sum| < 2^62, which the docs promise as "wraps beyond".
        let twice = fields[4 * n + h].wrapping_add(count.wrapping_mul(first.wrapping_add(last)));
        let sum = twice >> 1;
        prev_last = last;
        out.push(Aggregate {
            start_ms: first_hour_ms + h as i64 * crate::types::HOUR_MS,
            count: count as u64,
            min: Value::Int(min),
            max: Value::Int(max),
            sum: Value::Int(sum),
            first: Value::Int(first),
            last: Value::Int(last),
        });
    }
    Some(())
}

/// Float rollups (version 1): the five fields as they were, field-major.
pub(crate) fn decode_float_rollups(
    first_hour_ms: i64,
    fields: &[f64],
    counts: &[i64],
    out: &mut Vec<Aggregate>,
) -> Option<()> {
    let n = counts.len();
    if fields.len() != 5 * n {
        return None;
    }
    for (h, &count) in counts.iter().enumerate() {
        if count <= 0 {
            continue;
        }
        let f = |i: usize| Value::Float(fields[i * n + h]);
        out.push(Aggregate {
            start_ms: first_hour_ms + h as i64 * crate::types::HOUR_MS,
            count: count as u64,
            first: f(0),
            last: f(1),
            min: f(2),
            max: f(3),
            sum: f(4),
        });
    }
    Some(())
}

/// Hourly aggregates of time-sorted points as a dense run of hours from the
/// first point's hour to the last's.
#[cfg(test)] // written by format version 1 only; the tests' encoder
pub(crate) fn hourly(kind: ValueKind, points: &[(i64, u64)]) -> Vec<Option<Aggregate>> {
    let mut aggs = Vec::new();
    aggregate(kind, points, crate::types::HOUR_MS, &mut aggs);
    let (Some(first), Some(last)) = (aggs.first(), aggs.last()) else {
        return Vec::new();
    };
    let first_hour = first.start_ms;
    let n = ((last.start_ms - first_hour) / crate::types::HOUR_MS + 1) as usize;
    let mut dense = vec![None; n];
    for a in aggs {
        dense[((a.start_ms - first_hour) / crate::types::HOUR_MS) as usize] = Some(a);
    }
    dense
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::HOUR_MS;

    #[test]
    fn buckets_match_a_point_by_point_fold_at_the_edges() {
        let points: Vec<(i64, u64)> = [
            (-HOUR_MS - 1, -7i64),
            (-1, i64::MAX),
            (0, i64::MAX),
            (HOUR_MS - 1, 2),
            (HOUR_MS, -2),
            (i64::MAX - 1, 5),
            (i64::MAX, 6),
        ]
        .iter()
        .map(|&(t, v)| (t, v as u64))
        .collect();
        let mut got = Vec::new();
        aggregate(ValueKind::Int, &points, HOUR_MS, &mut got);
        let mut want = Vec::new();
        for &(ts, bits) in &points {
            let v = Value::from_bits(ValueKind::Int, bits);
            push_merged(
                &mut want,
                Aggregate {
                    start_ms: ts.div_euclid(HOUR_MS) * HOUR_MS,
                    count: 1,
                    min: v,
                    max: v,
                    sum: v,
                    first: v,
                    last: v,
                },
            );
        }
        assert_eq!(got, want);
        assert_eq!(got.len(), 5);
    }

    #[test]
    fn int_rollups_round_trip_through_the_transform() {
        let points: Vec<(i64, u64)> = [
            (0, 5i64),
            (60_000, -3),
            (HOUR_MS * 2 + 1, 10),
            (HOUR_MS * 2 + 9, i64::MAX),
        ]
        .iter()
        .map(|&(t, v)| (t, v as u64))
        .collect();
        let hours = hourly(ValueKind::Int, &points);
        assert_eq!(hours.len(), 3);
        let (mut fields, mut counts) = (Vec::new(), Vec::new());
        encode_int_rollups(&hours, &mut fields, &mut counts);
        let mut out = Vec::new();
        decode_int_rollups(0, &fields, &counts, &mut out).unwrap();
        assert_eq!(
            out,
            hours
                .iter()
                .flatten()
                .copied()
                .collect::<Vec<_>>()
                .iter()
                .map(|a| {
                    // i64::MAX + 10 wraps: the documented limit of integer sums.
                    let mut a = *a;
                    if let Value::Int(s) = a.sum {
                        a.sum = Value::Int((s.wrapping_mul(2)) >> 1)
                    }
                    a
                })
                .collect::<Vec<_>>()
        );
        assert_eq!(out[0].sum, Value::Int(2));
        assert_eq!(out[0].min, Value::Int(-3));
        assert_eq!(out[1].start_ms, 2 * HOUR_MS);
    }
}
