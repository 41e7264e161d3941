//! PromQL's functions, as Prometheus 2.42's `promql/functions.go` computes
//! them: the same float operations in the same order (Kahan sums where it
//! has them, its extrapolation of `rate`/`increase`/`delta`, its
//! histogram bucket fixes), so results agree to the last bits where
//! possible.

use std::collections::HashMap;
use std::sync::Arc;

use super::ast::{Func, Node, Ty};
use super::eval::{
    at_shift, check_matrix_labelsets, drop_name, scalar_by_step, Ctx, Lbl, Out, Rng, Series,
    Stepper, Val,
};
use super::QueryError;
use crate::{is_label_name as valid_label_name, Labels, MatchOp, METRIC_NAME};

/// The labels `absent()` and `absent_over_time()` answer: those of the
/// selector's equality matchers (a name matched twice, or otherwise, is
/// left out).
fn absent_labels(n: &Node) -> Labels {
    let sel = match n {
        Node::Selector(s) => s,
        Node::Matrix { sel, .. } => sel,
        _ => return Labels::default(),
    };
    let mut l = Labels::default();
    let mut has: Vec<&str> = Vec::new();
    for m in &sel.matchers {
        if m.name == METRIC_NAME {
            continue;
        }
        if m.op == MatchOp::Equal && !has.contains(&m.name.as_str()) {
            l.set(&m.name, &m.value);
            has.push(&m.name);
        } else {
            l.set(&m.name, "");
        }
    }
    l
}

/// Kahan summation step, as Prometheus' `kahanSumInc`.
pub(crate) fn kahan_inc(inc: f64, sum: f64, c: f64) -> (f64, f64) {
    let t = sum + inc;
    let c = if sum.abs() >= inc.abs() {
        c + ((sum - t) + inc)
    } else {
        c + ((inc - t) + sum)
    };
    (t, c)
}

/// Sorts values ascending with NaN first (Prometheus' `vectorByValueHeap`
/// order).
fn sort_nan_first(v: &mut [f64]) {
    v.sort_by(|a, b| match (a.is_nan(), b.is_nan()) {
        (true, true) => std::cmp::Ordering::Equal,
        (true, false) => std::cmp::Ordering::Less,
        (false, true) => std::cmp::Ordering::Greater,
        _ => a.partial_cmp(b).expect("not NaN"),
    });
}

/// The φ-quantile of values, as Prometheus' `quantile`.
pub(crate) fn quantile(q: f64, values: &mut [f64]) -> f64 {
    if values.is_empty() || q.is_nan() {
        return f64::NAN;
    }
    if q < 0.0 {
        return f64::NEG_INFINITY;
    }
    if q > 1.0 {
        return f64::INFINITY;
    }
    sort_nan_first(values);
    let n = values.len() as f64;
    let rank = q * (n - 1.0);
    let lower = rank.floor().max(0.0);
    let upper = (n - 1.0).min(lower + 1.0);
    let weight = rank - rank.floor();
    values[lower as usize] * (1.0 - weight) + values[upper as usize] * weight
}

/// A classic histogram's quantile, as Prometheus 2.42's `bucketQuantile`
/// (buckets coalesced by bound and made monotonic).
fn bucket_quantile(q: f64, buckets: &mut [(f64, f64)]) -> f64 {
    if q.is_nan() {
        return f64::NAN;
    }
    if q < 0.0 {
        return f64::NEG_INFINITY;
    }
    if q > 1.0 {
        return f64::INFINITY;
    }
    buckets.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap_or(std::cmp::Ordering::Equal));
    if buckets.last().map(|b| b.0) != Some(f64::INFINITY) {
        return f64::NAN;
    }
    // coalesceBuckets
    let mut merged: Vec<(f64, f64)> = Vec::with_capacity(buckets.len());
    for &b in buckets.iter() {
        match merged.last_mut() {
            Some(last) if last.0 == b.0 => last.1 += b.1,
            _ => merged.push(b),
        }
    }
    // ensureMonotonic
    let mut max = merged[0].1;
    for b in merged.iter_mut().skip(1) {
        if b.1 > max {
            max = b.1;
        } else if b.1 < max {
            b.1 = max;
        }
    }
    let buckets = merged;
    if buckets.len() < 2 {
        return f64::NAN;
    }
    let observations = buckets[buckets.len() - 1].1;
    if observations == 0.0 {
        return f64::NAN;
    }
    let mut rank = q * observations;
    // sort.Search over len-1 buckets: first with count >= rank.
    let b = buckets[..buckets.len() - 1].partition_point(|x| x.1 < rank || x.1.is_nan());
    if b == buckets.len() - 1 {
        return buckets[buckets.len() - 2].0;
    }
    if b == 0 && buckets[0].0 <= 0.0 {
        return buckets[0].0;
    }
    let mut bucket_start = 0.0;
    let bucket_end = buckets[b].0;
    let mut count = buckets[b].1;
    if b > 0 {
        bucket_start = buckets[b - 1].0;
        count -= buckets[b - 1].1;
        rank -= buckets[b - 1].1;
    }
    bucket_start + (bucket_end - bucket_start) * (rank / count)
}

/// `rate`, `increase` and `delta`: Prometheus' `extrapolatedRate`.
fn extrapolated_rate(
    points: &[(i64, f64)],
    range_end: i64,
    range: i64,
    is_counter: bool,
    is_rate: bool,
) -> Option<f64> {
    if points.len() < 2 {
        return None;
    }
    let range_start = range_end - range;
    let (first, last) = (points[0], points[points.len() - 1]);
    let mut result = last.1 - first.1;
    if is_counter {
        let mut prev = first.1;
        for &(_, v) in &points[1..] {
            if v < prev {
                result += prev;
            }
            prev = v;
        }
    }
    let mut duration_to_start = (first.0 - range_start) as f64 / 1000.0;
    let duration_to_end = (range_end - last.0) as f64 / 1000.0;
    let sampled_interval = (last.0 - first.0) as f64 / 1000.0;
    let average_between = sampled_interval / (points.len() - 1) as f64;
    if is_counter && result > 0.0 && first.1 >= 0.0 {
        let duration_to_zero = sampled_interval * (first.1 / result);
        if duration_to_zero < duration_to_start {
            duration_to_start = duration_to_zero;
        }
    }
    let threshold = average_between * 1.1;
    let mut extrapolate_to = sampled_interval;
    extrapolate_to += if duration_to_start < threshold {
        duration_to_start
    } else {
        average_between / 2.0
    };
    extrapolate_to += if duration_to_end < threshold {
        duration_to_end
    } else {
        average_between / 2.0
    };
    let mut factor = extrapolate_to / sampled_interval;
    if is_rate {
        factor /= range as f64 / 1000.0;
    }
    Some(result * factor)
}

/// `irate` and `idelta`.
fn instant_value(points: &[(i64, f64)], is_rate: bool) -> Option<f64> {
    if points.len() < 2 {
        return None;
    }
    let last = points[points.len() - 1];
    let prev = points[points.len() - 2];
    let mut result = if is_rate && last.1 < prev.1 {
        last.1
    } else {
        last.1 - prev.1
    };
    let interval = last.0 - prev.0;
    if interval == 0 {
        return None;
    }
    if is_rate {
        result /= interval as f64 / 1000.0;
    }
    Some(result)
}

/// Least squares, as Prometheus' `linearRegression`.
fn linear_regression(points: &[(i64, f64)], intercept_time: i64) -> (f64, f64) {
    let (mut n, mut sum_x, mut c_x, mut sum_y, mut c_y) = (0.0, 0.0, 0.0, 0.0, 0.0);
    let (mut sum_xy, mut c_xy, mut sum_x2, mut c_x2) = (0.0, 0.0, 0.0, 0.0);
    let init_y = points[0].1;
    let mut const_y = true;
    for (i, &(t, v)) in points.iter().enumerate() {
        if const_y && i > 0 && v != init_y {
            const_y = false;
        }
        n += 1.0;
        let x = (t - intercept_time) as f64 / 1e3;
        (sum_x, c_x) = kahan_inc(x, sum_x, c_x);
        (sum_y, c_y) = kahan_inc(v, sum_y, c_y);
        (sum_xy, c_xy) = kahan_inc(x * v, sum_xy, c_xy);
        (sum_x2, c_x2) = kahan_inc(x * x, sum_x2, c_x2);
    }
    if const_y {
        if init_y.is_infinite() {
            return (f64::NAN, f64::NAN);
        }
        return (0.0, init_y);
    }
    let sum_x = sum_x + c_x;
    let sum_y = sum_y + c_y;
    let sum_xy = sum_xy + c_xy;
    let sum_x2 = sum_x2 + c_x2;
    let cov_xy = sum_xy - sum_x * sum_y / n;
    let var_x = sum_x2 - sum_x * sum_x / n;
    let slope = cov_xy / var_x;
    let intercept = sum_y / n - slope * sum_x / n;
    (slope, intercept)
}

fn holt_winters(points: &[(i64, f64)], sf: f64, tf: f64) -> Result<Option<f64>, QueryError> {
    if sf <= 0.0 || sf >= 1.0 {
        return Err(QueryError::Execution(format!(
            "invalid smoothing factor. Expected: 0 < sf < 1, got: {sf:.6}"
        )));
    }
    if tf <= 0.0 || tf >= 1.0 {
        return Err(QueryError::Execution(format!(
            "invalid trend factor. Expected: 0 < tf < 1, got: {tf:.6}"
        )));
    }
    let l = points.len();
    if l < 2 {
        return Ok(None);
    }
    let (mut s0, mut s1) = (0.0, points[0].1);
    let mut b = points[1].1 - points[0].1;
    for (i, &(_, v)) in points.iter().enumerate().skip(1) {
        let x = sf * v;
        // calcTrendValue(i-1, tf, s0, s1, b)
        b = if i - 1 == 0 {
            b
        } else {
            tf * (s1 - s0) + (1.0 - tf) * b
        };
        let y = (1.0 - sf) * (s1 + b);
        s0 = s1;
        s1 = x + y;
    }
    Ok(Some(s1))
}

/// A range-vector function over one window of one series.
#[allow(clippy::too_many_arguments)]
fn over_window(
    func: Func,
    w: &[(i64, f64)],
    ts: i64,
    range_end: i64,
    range: i64,
    p0: f64,
    p1: f64,
) -> Result<Option<f64>, QueryError> {
    Ok(match func {
        Func::Rate => extrapolated_rate(w, range_end, range, true, true),
        Func::Increase => extrapolated_rate(w, range_end, range, true, false),
        Func::Delta => extrapolated_rate(w, range_end, range, false, false),
        Func::Irate => instant_value(w, true),
        Func::Idelta => instant_value(w, false),
        Func::AvgOverTime => {
            let (mut mean, mut count, mut c) = (0.0f64, 0.0f64, 0.0f64);
            for &(_, v) in w {
                count += 1.0;
                if mean.is_infinite() {
                    if v.is_infinite() && (mean > 0.0) == (v > 0.0) {
                        continue;
                    }
                    if !v.is_infinite() && !v.is_nan() {
                        continue;
                    }
                }
                (mean, c) = kahan_inc(v / count - mean / count, mean, c);
            }
            Some(if mean.is_infinite() { mean } else { mean + c })
        }
        Func::CountOverTime => Some(w.len() as f64),
        Func::LastOverTime => Some(w[w.len() - 1].1),
        Func::MaxOverTime => {
            let mut max = w[0].1;
            for &(_, v) in w {
                if v > max || max.is_nan() {
                    max = v;
                }
            }
            Some(max)
        }
        Func::MinOverTime => {
            let mut min = w[0].1;
            for &(_, v) in w {
                if v < min || min.is_nan() {
                    min = v;
                }
            }
            Some(min)
        }
        Func::SumOverTime => {
            let (mut sum, mut c) = (0.0, 0.0);
            for &(_, v) in w {
                (sum, c) = kahan_inc(v, sum, c);
            }
            Some(if sum.is_infinite() { sum } else { sum + c })
        }
        Func::QuantileOverTime => {
            let mut values: Vec<f64> = w.iter().map(|p| p.1).collect();
            Some(quantile(p0, &mut values))
        }
        Func::StddevOverTime | Func::StdvarOverTime => {
            let (mut count, mut mean, mut c_mean, mut aux, mut c_aux) = (0.0, 0.0, 0.0, 0.0, 0.0);
            for &(_, v) in w {
                count += 1.0;
                let delta = v - (mean + c_mean);
                (mean, c_mean) = kahan_inc(delta / count, mean, c_mean);
                (aux, c_aux) = kahan_inc(delta * (v - (mean + c_mean)), aux, c_aux);
            }
            let var = (aux + c_aux) / count;
            Some(if func == Func::StddevOverTime {
                var.sqrt()
            } else {
                var
            })
        }
        Func::AbsentOverTime | Func::PresentOverTime => Some(1.0),
        Func::Resets => {
            let mut resets = 0;
            let mut prev = w[0].1;
            for &(_, v) in &w[1..] {
                if v < prev {
                    resets += 1;
                }
                prev = v;
            }
            Some(resets as f64)
        }
        Func::Changes => {
            let mut changes = 0;
            let mut prev = w[0].1;
            for &(_, v) in &w[1..] {
                if v != prev && !(v.is_nan() && prev.is_nan()) {
                    changes += 1;
                }
                prev = v;
            }
            Some(changes as f64)
        }
        Func::Deriv => {
            if w.len() < 2 {
                None
            } else {
                Some(linear_regression(w, w[0].0).0)
            }
        }
        Func::PredictLinear => {
            if w.len() < 2 {
                None
            } else {
                let (slope, intercept) = linear_regression(w, ts);
                Some(slope * p0 + intercept)
            }
        }
        Func::HoltWinters => holt_winters(w, p0, p1)?,
        _ => {
            return Err(QueryError::Execution(format!(
                "{func:?} does not take a range vector"
            )))
        }
    })
}

/// Days since 1970-01-01 → (year, month 1..=12, day 1..=31).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn is_leap(y: i64) -> bool {
    y % 4 == 0 && (y % 100 != 0 || y % 400 == 0)
}

/// A calendar field of a unix time in seconds (UTC).
fn date_field(func: Func, secs: i64) -> f64 {
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    match func {
        Func::Minute => ((sod / 60) % 60) as f64,
        Func::Hour => (sod / 3600) as f64,
        Func::DayOfMonth => d as f64,
        Func::DayOfWeek => (days + 4).rem_euclid(7) as f64,
        Func::DayOfYear => {
            const CUM: [u32; 12] = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334];
            let mut doy = CUM[(m - 1) as usize] + d;
            if m > 2 && is_leap(y) {
                doy += 1;
            }
            doy as f64
        }
        Func::DaysInMonth => match m {
            2 if is_leap(y) => 29.0,
            2 => 28.0,
            4 | 6 | 9 | 11 => 30.0,
            _ => 31.0,
        },
        Func::Month => m as f64,
        Func::Year => y as f64,
        _ => f64::NAN,
    }
}

/// Go's `int64(f)` on amd64: truncation, and the minimum for what does not
/// fit (NaN included).
fn go_int64(v: f64) -> i64 {
    let two63 = (1u64 << 63) as f64;
    if !(-two63..two63).contains(&v) {
        i64::MIN
    } else {
        v as i64
    }
}

fn simple(func: Func, v: f64) -> f64 {
    match func {
        Func::Abs => v.abs(),
        Func::Ceil => v.ceil(),
        Func::Floor => v.floor(),
        Func::Exp => v.exp(),
        Func::Sqrt => v.sqrt(),
        Func::Ln => v.ln(),
        Func::Log2 => v.log2(),
        Func::Log10 => v.log10(),
        Func::Sin => v.sin(),
        Func::Cos => v.cos(),
        Func::Tan => v.tan(),
        Func::Asin => v.asin(),
        Func::Acos => v.acos(),
        Func::Atan => v.atan(),
        Func::Sinh => v.sinh(),
        Func::Cosh => v.cosh(),
        Func::Tanh => v.tanh(),
        Func::Asinh => v.asinh(),
        Func::Acosh => v.acosh(),
        Func::Atanh => v.atanh(),
        Func::Rad => v * std::f64::consts::PI / 180.0,
        Func::Deg => v * 180.0 / std::f64::consts::PI,
        Func::Sgn => {
            if v < 0.0 {
                -1.0
            } else if v > 0.0 {
                1.0
            } else {
                v
            }
        }
        _ => f64::NAN,
    }
}

/// Caches each input series' labels without `__name__`.
struct NameDropper {
    cache: Vec<Option<Lbl>>,
}

impl NameDropper {
    fn new(n: usize) -> Self {
        Self {
            cache: vec![None; n],
        }
    }

    fn get(&mut self, i: usize, l: &Lbl) -> Lbl {
        self.cache[i]
            .get_or_insert_with(|| {
                if l.get(METRIC_NAME).is_empty() {
                    l.clone()
                } else {
                    Arc::new(drop_name(l))
                }
            })
            .clone()
    }
}

fn string_arg(n: &Node) -> Result<&str, QueryError> {
    match n {
        Node::Str(s) => Ok(s),
        _ => Err(QueryError::Execution(
            "expected a string argument".to_owned(),
        )),
    }
}

impl Ctx<'_> {
    /// A function call.
    pub(crate) fn call(
        &self,
        func: Func,
        args: &[Node],
        r: Rng,
    ) -> Result<Vec<Series>, QueryError> {
        if func == Func::Timestamp {
            if let Some(Node::Selector(sel)) = args.first() {
                let m = self.vector_selector(sel, r, true)?;
                let mut out = Out::new(self);
                let mut drop = NameDropper::new(m.len());
                let labels: Vec<Lbl> = m
                    .iter()
                    .enumerate()
                    .map(|(i, s)| drop.get(i, &s.labels))
                    .collect();
                let mut st = Stepper::new(vec![&m]);
                let mut vec = Vec::new();
                for ts in r.steps() {
                    st.at(0, ts, &mut vec);
                    for &(si, v) in &vec {
                        out.push_keyed(ts, si, &labels[si], v)?;
                    }
                }
                return Ok(out.finish());
            }
        }
        if let Some(mi) = args
            .iter()
            .position(|a| matches!(a, Node::Matrix { .. } | Node::Subquery { .. }))
        {
            return self.matrix_call(func, args, mi, r);
        }
        // Every argument evaluated once for all steps.
        let mut vals: Vec<Option<Vec<Series>>> = Vec::with_capacity(args.len());
        for a in args {
            vals.push(match self.eval(a, r)? {
                Val::M(m) => Some(m),
                Val::S(_) => None,
            });
        }
        let empty: Vec<Series> = Vec::new();
        let scalars: Vec<Option<Vec<f64>>> = args
            .iter()
            .zip(&vals)
            .map(|(a, v)| match (a.ty(), v) {
                (Ty::Scalar, Some(m)) => Some(scalar_by_step(m, r)),
                _ => None,
            })
            .collect();
        // The vector argument (the first one of vector type).
        let vi = args.iter().position(|a| a.ty() == Ty::Vector);
        let input: &[Series] = match vi {
            Some(i) => vals[i].as_deref().unwrap_or(&empty),
            None => &empty,
        };
        let mut st = Stepper::new(vec![input]);
        let mut vec: Vec<(usize, f64)> = Vec::new();
        let mut out = Out::new(self);
        let mut drop = NameDropper::new(input.len());
        let empty_labels: Lbl = Arc::new(Labels::default());
        let absent_lbl: Lbl = Arc::new(match vi {
            Some(i) => absent_labels(&args[i]),
            None => Labels::default(),
        });
        let sarg = |i: usize, step: usize| -> f64 {
            scalars
                .get(i)
                .and_then(|s| s.as_ref())
                .map_or(f64::NAN, |s| s[step])
        };
        // label_replace / label_join state.
        let mut relabel_cache: Vec<Option<Lbl>> = vec![None; input.len()];
        let mut replace_re: Option<regex::Regex> = None;
        // histogram_quantile: per series its group and bound.
        let mut hq_groups: Option<HistogramGroups> = None;
        for (step, ts) in r.steps().enumerate() {
            if step % 64 == 0 {
                self.tick()?;
            }
            if vi.is_some() {
                st.at(0, ts, &mut vec);
            }
            match func {
                Func::Time => out.push(ts, &empty_labels, ts as f64 / 1000.0)?,
                Func::Pi => out.push(ts, &empty_labels, std::f64::consts::PI)?,
                Func::Vector => out.push(ts, &empty_labels, sarg(0, step))?,
                Func::Scalar => {
                    let v = if vec.len() == 1 { vec[0].1 } else { f64::NAN };
                    out.push(ts, &empty_labels, v)?;
                }
                Func::Absent => {
                    if vec.is_empty() {
                        out.push(ts, &absent_lbl, 1.0)?;
                    }
                }
                Func::Timestamp => {
                    for &(si, _) in &vec {
                        let l = drop.get(si, &input[si].labels);
                        out.push_keyed(ts, si, &l, ts as f64 / 1000.0)?;
                    }
                }
                Func::Sort | Func::SortDesc => {
                    let mut v = vec.clone();
                    if func == Func::Sort {
                        // Ascending, NaN last.
                        v.sort_by(|a, b| cmp_nan_last(a.1, b.1));
                    } else {
                        // Descending, NaN last.
                        v.sort_by(|a, b| desc_nan_last(a.1, b.1));
                    }
                    for (si, x) in v {
                        out.push_keyed(ts, si, &input[si].labels, x)?;
                    }
                }
                Func::Clamp => {
                    let (min, max) = (sarg(1, step), sarg(2, step));
                    if max >= min || max.is_nan() || min.is_nan() {
                        for &(si, v) in &vec {
                            let l = drop.get(si, &input[si].labels);
                            out.push_keyed(ts, si, &l, go_max(min, go_min(max, v)))?;
                        }
                    }
                }
                Func::ClampMax => {
                    let max = sarg(1, step);
                    for &(si, v) in &vec {
                        let l = drop.get(si, &input[si].labels);
                        out.push_keyed(ts, si, &l, go_min(max, v))?;
                    }
                }
                Func::ClampMin => {
                    let min = sarg(1, step);
                    for &(si, v) in &vec {
                        let l = drop.get(si, &input[si].labels);
                        out.push_keyed(ts, si, &l, go_max(min, v))?;
                    }
                }
                Func::Round => {
                    let to_nearest = if args.len() >= 2 { sarg(1, step) } else { 1.0 };
                    let inv = 1.0 / to_nearest;
                    for &(si, v) in &vec {
                        let l = drop.get(si, &input[si].labels);
                        out.push_keyed(ts, si, &l, (v * inv + 0.5).floor() / inv)?;
                    }
                }
                Func::DaysInMonth
                | Func::DayOfMonth
                | Func::DayOfWeek
                | Func::DayOfYear
                | Func::Hour
                | Func::Minute
                | Func::Month
                | Func::Year => {
                    if args.is_empty() {
                        out.push(ts, &empty_labels, date_field(func, ts.div_euclid(1000)))?;
                    } else {
                        for &(si, v) in &vec {
                            let l = drop.get(si, &input[si].labels);
                            out.push_keyed(ts, si, &l, date_field(func, go_int64(v)))?;
                        }
                    }
                }
                Func::HistogramCount | Func::HistogramSum | Func::HistogramFraction => {
                    // Native histograms only; trawler stores floats.
                }
                Func::HistogramQuantile => {
                    let q = sarg(0, step);
                    let (groups, group_labels) =
                        hq_groups.get_or_insert_with(|| histogram_groups(input));
                    let mut buckets: HashMap<usize, Vec<(f64, f64)>> = HashMap::new();
                    let mut order: Vec<usize> = Vec::new();
                    for &(si, v) in &vec {
                        if let Some((g, le)) = groups[si] {
                            buckets
                                .entry(g)
                                .or_insert_with(|| {
                                    order.push(g);
                                    Vec::new()
                                })
                                .push((le, v));
                        }
                    }
                    for g in order {
                        let b = buckets.get_mut(&g).expect("group");
                        let v = bucket_quantile(q, b);
                        out.push(ts, &group_labels[g], v)?;
                    }
                }
                Func::LabelReplace => {
                    let dst = string_arg(&args[1])?;
                    let repl = string_arg(&args[2])?;
                    let src = string_arg(&args[3])?;
                    let re_str = string_arg(&args[4])?;
                    if replace_re.is_none() {
                        let re = regex::Regex::new(&format!("^(?:{re_str})$")).map_err(|_| {
                            QueryError::Execution(format!(
                                "invalid regular expression in label_replace(): {re_str}"
                            ))
                        })?;
                        if !valid_label_name(dst) {
                            return Err(QueryError::Execution(format!(
                                "invalid destination label name in label_replace(): {dst}"
                            )));
                        }
                        replace_re = Some(re);
                    }
                    let re = replace_re.as_ref().expect("compiled");
                    for &(si, v) in &vec {
                        let l = relabel_cache[si]
                            .get_or_insert_with(|| {
                                let lbls = &input[si].labels;
                                match re.captures(lbls.get(src)) {
                                    None => lbls.clone(),
                                    Some(caps) => {
                                        let mut res = String::new();
                                        caps.expand(repl, &mut res);
                                        let mut n = (**lbls).clone();
                                        n.set(dst, &res);
                                        Arc::new(n)
                                    }
                                }
                            })
                            .clone();
                        out.push_keyed(ts, si, &l, v)?;
                    }
                }
                Func::LabelJoin => {
                    let dst = string_arg(&args[1])?;
                    let sep = string_arg(&args[2])?;
                    let mut srcs = Vec::new();
                    for a in &args[3..] {
                        let s = string_arg(a)?;
                        if !valid_label_name(s) {
                            return Err(QueryError::Execution(format!(
                                "invalid source label name in label_join(): {s}"
                            )));
                        }
                        srcs.push(s);
                    }
                    if !valid_label_name(dst) {
                        return Err(QueryError::Execution(format!(
                            "invalid destination label name in label_join(): {dst}"
                        )));
                    }
                    for &(si, v) in &vec {
                        let l = relabel_cache[si]
                            .get_or_insert_with(|| {
                                let lbls = &input[si].labels;
                                let joined: Vec<&str> = srcs.iter().map(|s| lbls.get(s)).collect();
                                let mut n = (**lbls).clone();
                                n.set(dst, &joined.join(sep));
                                Arc::new(n)
                            })
                            .clone();
                        out.push_keyed(ts, si, &l, v)?;
                    }
                }
                f => {
                    for &(si, v) in &vec {
                        let l = drop.get(si, &input[si].labels);
                        out.push_keyed(ts, si, &l, simple(f, v))?;
                    }
                }
            }
        }
        Ok(out.finish())
    }

    /// A function of a range vector: its windows per series and step.
    fn matrix_call(
        &self,
        func: Func,
        args: &[Node],
        mi: usize,
        r: Rng,
    ) -> Result<Vec<Series>, QueryError> {
        // The scalar arguments by step.
        let mut params: Vec<Vec<f64>> = Vec::new();
        for (i, a) in args.iter().enumerate() {
            if i != mi {
                let m = self.eval_m(a, r)?;
                params.push(scalar_by_step(&m, r));
            }
        }
        let p = |k: usize, step: usize| params.get(k).map_or(f64::NAN, |v| v[step]);
        let shift_end = at_shift(func, r.end, r);
        let (data, at, offset, range) = self.range_arg(&args[mi], shift_end, r)?;
        let mut mat: Vec<Series> = Vec::new();
        for (i, s) in data.iter().enumerate() {
            if i % 64 == 0 {
                self.tick()?;
            }
            let labels = if func == Func::LastOverTime || s.labels.get(METRIC_NAME).is_empty() {
                s.labels.clone()
            } else {
                Arc::new(drop_name(&s.labels))
            };
            let pts = &s.points;
            let (mut lo, mut hi) = (0usize, 0usize);
            let mut out = Vec::new();
            for (step, ts) in r.steps().enumerate() {
                let range_end = match at {
                    Some(t) => t - offset + at_shift(func, ts, r),
                    None => ts - offset,
                };
                let mint = range_end - range;
                if range_end < pts.get(hi.saturating_sub(1)).map_or(i64::MIN, |p| p.0) {
                    // Windows only move forward, except for the odd
                    // negative shift; start over then.
                    lo = 0;
                    hi = 0;
                }
                while hi < pts.len() && pts[hi].0 <= range_end {
                    hi += 1;
                }
                while lo < hi && pts[lo].0 < mint {
                    lo += 1;
                }
                if lo >= hi {
                    continue;
                }
                if let Some(v) = over_window(
                    func,
                    &pts[lo..hi],
                    ts,
                    range_end,
                    range,
                    p(0, step),
                    p(1, step),
                )? {
                    out.push((ts, v));
                }
            }
            if !out.is_empty() {
                self.charge(out.len())?;
                mat.push(Series {
                    labels,
                    points: out,
                });
            }
        }
        if func == Func::AbsentOverTime {
            let steps = r.len();
            if mat.iter().any(|s| s.points.len() == steps) {
                return Ok(Vec::new());
            }
            let found: std::collections::HashSet<i64> = mat
                .iter()
                .flat_map(|s| s.points.iter().map(|p| p.0))
                .collect();
            if found.len() == steps {
                return Ok(Vec::new());
            }
            let points: Vec<(i64, f64)> = r
                .steps()
                .filter(|t| !found.contains(t))
                .map(|t| (t, 1.0))
                .collect();
            return Ok(vec![Series {
                labels: Arc::new(absent_labels(&args[mi])),
                points,
            }]);
        }
        check_matrix_labelsets(&mat)?;
        Ok(mat)
    }
}

type HistogramGroups = (Vec<Option<(usize, f64)>>, Vec<Lbl>);

/// For each series of `histogram_quantile`'s input: its group (labels but
/// `le`) and bucket bound, or none without a parsable `le`; and each
/// group's output labels (without `__name__` and `le`).
fn histogram_groups(input: &[Series]) -> HistogramGroups {
    let mut ids: HashMap<Labels, usize> = HashMap::new();
    let mut labels: Vec<Lbl> = Vec::new();
    let groups = input
        .iter()
        .map(|s| {
            let le: f64 = parse_go_float(s.labels.get("le"))?;
            let mut key = (*s.labels).clone();
            key.set("le", "");
            let n = ids.len();
            let g = *ids.entry(key.clone()).or_insert_with(|| {
                key.set(METRIC_NAME, "");
                labels.push(Arc::new(key));
                n
            });
            Some((g, le))
        })
        .collect();
    (groups, labels)
}

/// Go's `strconv.ParseFloat` for the forms label values take.
pub(crate) fn parse_go_float(s: &str) -> Option<f64> {
    if s.is_empty() {
        return None;
    }
    let lower = s.to_ascii_lowercase();
    let body = lower.trim_start_matches(['+', '-']);
    if body.starts_with("0x") {
        return None;
    }
    s.parse::<f64>().ok()
}

/// Go's `math.Max`: NaN wins, +Inf wins.
pub(crate) fn go_max(a: f64, b: f64) -> f64 {
    if a.is_infinite() && a > 0.0 || b.is_infinite() && b > 0.0 {
        return f64::INFINITY;
    }
    if a.is_nan() || b.is_nan() {
        return f64::NAN;
    }
    if a == 0.0 && b == 0.0 {
        return if a.is_sign_negative() { b } else { a };
    }
    if a > b {
        a
    } else {
        b
    }
}

/// Go's `math.Min`: NaN wins, -Inf wins.
pub(crate) fn go_min(a: f64, b: f64) -> f64 {
    if a.is_infinite() && a < 0.0 || b.is_infinite() && b < 0.0 {
        return f64::NEG_INFINITY;
    }
    if a.is_nan() || b.is_nan() {
        return f64::NAN;
    }
    if a == 0.0 && b == 0.0 {
        return if a.is_sign_negative() { a } else { b };
    }
    if a < b {
        a
    } else {
        b
    }
}

/// Ascending order with NaN last (`sort`, `bottomk`).
pub(super) fn cmp_nan_last(a: f64, b: f64) -> std::cmp::Ordering {
    nan_last(a, b, a.partial_cmp(&b))
}

/// Descending order with NaN last (`sort_desc`, `topk`).
pub(super) fn desc_nan_last(a: f64, b: f64) -> std::cmp::Ordering {
    nan_last(a, b, b.partial_cmp(&a))
}

/// `ordered` for two numbers; a NaN after every number.
fn nan_last(a: f64, b: f64, ordered: Option<std::cmp::Ordering>) -> std::cmp::Ordering {
    use std::cmp::Ordering::*;
    match (a.is_nan(), b.is_nan()) {
        (true, true) => Equal,
        (true, false) => Greater,
        (false, true) => Less,
        _ => ordered.expect("not NaN"),
    }
}
