//! Aggregation operators, as Prometheus 2.42's `aggregation()`: groups in
//! the order their first sample appears, `avg` by its incremental mean,
//! `stddev`/`stdvar` by Welford's method, `topk`/`bottomk` through Go's
//! binary heap (so ties resolve the same way), `count_values` with Go's
//! float formatting.

use std::collections::HashMap;
use std::sync::Arc;

use super::ast::{AggOp, Node};
use super::eval::{scalar_by_step, Ctx, Lbl, Out, Rng, Series, Stepper, Val};
use super::functions::{cmp_nan_last, desc_nan_last, quantile};
use super::QueryError;
use crate::is_label_name as valid_label_name;
use crate::{format_value, Labels, METRIC_NAME};

/// 2^63: Go's `float64(math.MaxInt64)`.
const TWO63: f64 = (1u64 << 63) as f64;

/// The grouping key of labels: what `by` keeps or `without` leaves.
fn group_key(l: &Labels, grouping: &[String], without: bool) -> Vec<u8> {
    let mut key = Vec::new();
    for lb in l.iter() {
        let inside = grouping.iter().any(|g| g == &lb.name);
        let keep = if without {
            !inside && lb.name != METRIC_NAME
        } else {
            inside
        };
        if keep {
            key.extend_from_slice(lb.name.as_bytes());
            key.push(0xff);
            key.extend_from_slice(lb.value.as_bytes());
            key.push(0xff);
        }
    }
    key
}

/// A group's output labels.
fn group_labels(l: &Labels, grouping: &[String], without: bool) -> Labels {
    let mut out = l.clone();
    let names: Vec<String> = l.iter().map(|x| x.name.clone()).collect();
    for n in names {
        let inside = grouping.iter().any(|g| g == &n);
        let keep = if without {
            !inside && n != METRIC_NAME
        } else {
            inside
        };
        if !keep {
            out.set(&n, "");
        }
    }
    out
}

/// Go's `container/heap` over `(value, series)` with Prometheus'
/// `vectorByValueHeap` (`rev` false) or `vectorByReverseValueHeap` order.
struct GoHeap {
    rev: bool,
    h: Vec<(f64, usize)>,
}

impl GoHeap {
    fn less(&self, i: usize, j: usize) -> bool {
        let (a, b) = (self.h[i].0, self.h[j].0);
        a.is_nan() || if self.rev { a > b } else { a < b }
    }

    fn up(&mut self, mut j: usize) {
        loop {
            let i = ((j as isize - 1) / 2) as usize;
            if i == j || !self.less(j, i) {
                break;
            }
            self.h.swap(i, j);
            j = i;
        }
    }

    fn down(&mut self, i0: usize, n: usize) {
        let mut i = i0;
        loop {
            let j1 = 2 * i + 1;
            if j1 >= n {
                break;
            }
            let mut j = j1;
            let j2 = j1 + 1;
            if j2 < n && self.less(j2, j1) {
                j = j2;
            }
            if !self.less(j, i) {
                break;
            }
            self.h.swap(i, j);
            i = j;
        }
    }

    fn push(&mut self, x: (f64, usize)) {
        self.h.push(x);
        let n = self.h.len() - 1;
        self.up(n);
    }

    fn pop(&mut self) {
        let n = self.h.len() - 1;
        self.h.swap(0, n);
        self.down(0, n);
        self.h.pop();
    }
}

struct Group {
    value: f64,
    mean: f64,
    count: usize,
    heap: GoHeap,
    values: Vec<f64>,
}

impl Ctx<'_> {
    pub(crate) fn aggregate(
        &self,
        op: AggOp,
        expr: &Node,
        param: Option<&Node>,
        grouping: &[String],
        without: bool,
        r: Rng,
    ) -> Result<Vec<Series>, QueryError> {
        let mut value_label: Option<String> = None;
        let mut params: Option<Vec<f64>> = None;
        if let Some(p) = param {
            match self.eval(p, r)? {
                Val::S(s) => value_label = Some(s),
                Val::M(m) => params = Some(scalar_by_step(&m, r)),
            }
        }
        let input = self.eval_m(expr, r)?;
        let mut out = Out::new(self);
        if op == AggOp::CountValues {
            let label = value_label.unwrap_or_default();
            return self.count_values(&input, &label, grouping, without, r, out);
        }
        // Each series' group, once.
        let mut ids: HashMap<Vec<u8>, usize> = HashMap::new();
        let mut glabels: Vec<Lbl> = Vec::new();
        let sgroup: Vec<usize> = input
            .iter()
            .map(|s| {
                let key = group_key(&s.labels, grouping, without);
                let n = ids.len();
                *ids.entry(key).or_insert_with(|| {
                    glabels.push(Arc::new(group_labels(&s.labels, grouping, without)));
                    n
                })
            })
            .collect();
        let mut groups: Vec<Option<Group>> = (0..glabels.len()).map(|_| None).collect();
        let mut order: Vec<usize> = Vec::new();
        let mut st = Stepper::new(vec![&input]);
        let mut vec = Vec::new();
        for (step, ts) in r.steps().enumerate() {
            if step % 64 == 0 {
                self.tick()?;
            }
            st.at(0, ts, &mut vec);
            let p = params.as_ref().map_or(f64::NAN, |p| p[step]);
            let mut k: i64 = 0;
            if matches!(op, AggOp::Topk | AggOp::Bottomk) {
                if !(-TWO63..=TWO63).contains(&p) {
                    return Err(QueryError::Execution(format!(
                        "Scalar value {} overflows int64",
                        format_value(p)
                    )));
                }
                k = p as i64;
                if k < 1 {
                    continue;
                }
            }
            order.clear();
            for &(si, v) in &vec {
                let gid = sgroup[si];
                let Some(g) = &mut groups[gid] else {
                    let rev = op == AggOp::Bottomk;
                    let mut g = Group {
                        value: v,
                        mean: v,
                        count: 1,
                        heap: GoHeap { rev, h: Vec::new() },
                        values: Vec::new(),
                    };
                    match op {
                        AggOp::Stddev | AggOp::Stdvar => g.value = 0.0,
                        AggOp::Topk | AggOp::Bottomk => g.heap.h.push((v, si)),
                        AggOp::Quantile => g.values.push(v),
                        AggOp::Group => g.value = 1.0,
                        _ => {}
                    }
                    groups[gid] = Some(g);
                    order.push(gid);
                    continue;
                };
                match op {
                    AggOp::Sum => g.value += v,
                    AggOp::Avg => {
                        g.count += 1;
                        if g.mean.is_infinite() {
                            if v.is_infinite() && (g.mean > 0.0) == (v > 0.0) {
                                continue;
                            }
                            if !v.is_infinite() && !v.is_nan() {
                                continue;
                            }
                        }
                        let c = g.count as f64;
                        g.mean += v / c - g.mean / c;
                    }
                    AggOp::Group => {}
                    AggOp::Max => {
                        if g.value < v || g.value.is_nan() {
                            g.value = v;
                        }
                    }
                    AggOp::Min => {
                        if g.value > v || g.value.is_nan() {
                            g.value = v;
                        }
                    }
                    AggOp::Count | AggOp::CountValues => g.count += 1,
                    AggOp::Stddev | AggOp::Stdvar => {
                        g.count += 1;
                        let delta = v - g.mean;
                        g.mean += delta / g.count as f64;
                        g.value += delta * (v - g.mean);
                    }
                    AggOp::Topk | AggOp::Bottomk => {
                        let top = g.heap.h[0].0;
                        let better = if op == AggOp::Topk { top < v } else { top > v };
                        if (g.heap.h.len() as i64) < k || better || top.is_nan() {
                            if g.heap.h.len() as i64 == k {
                                if k == 1 {
                                    g.heap.h[0] = (v, si);
                                    continue;
                                }
                                g.heap.pop();
                            }
                            g.heap.push((v, si));
                        }
                    }
                    AggOp::Quantile => g.values.push(v),
                }
            }
            for &gid in &order {
                let mut g = groups[gid].take().expect("group of this step");
                let v = match op {
                    AggOp::Avg => g.mean,
                    AggOp::Count => g.count as f64,
                    AggOp::Stdvar => g.value / g.count as f64,
                    AggOp::Stddev => (g.value / g.count as f64).sqrt(),
                    AggOp::Topk | AggOp::Bottomk => {
                        let mut h = g.heap.h;
                        if h.len() > 1 {
                            if op == AggOp::Topk {
                                // Descending, NaN last.
                                h.sort_by(|a, b| desc_nan_last(a.0, b.0));
                            } else {
                                h.sort_by(|a, b| cmp_nan_last(a.0, b.0));
                            }
                        }
                        for (v, si) in h {
                            out.push_keyed(ts, si, &input[si].labels, v)?;
                        }
                        continue;
                    }
                    AggOp::Quantile => quantile(p, &mut g.values),
                    _ => g.value,
                };
                out.push_keyed(ts, gid, &glabels[gid], v)?;
            }
        }
        Ok(out.finish())
    }

    fn count_values(
        &self,
        input: &[Series],
        label: &str,
        grouping: &[String],
        without: bool,
        r: Rng,
        mut out: Out<'_, '_>,
    ) -> Result<Vec<Series>, QueryError> {
        let mut grouping = grouping.to_vec();
        if !without {
            grouping.push(label.to_owned());
            grouping.sort();
        }
        let mut st = Stepper::new(vec![input]);
        let mut vec = Vec::new();
        let mut label_cache: HashMap<Labels, Lbl> = HashMap::new();
        for (step, ts) in r.steps().enumerate() {
            if step % 64 == 0 {
                self.tick()?;
            }
            if !valid_label_name(label) {
                return Err(QueryError::Execution(format!(
                    "invalid label name {label:?}"
                )));
            }
            st.at(0, ts, &mut vec);
            let mut ids: HashMap<Vec<u8>, usize> = HashMap::new();
            let mut groups: Vec<(Labels, usize)> = Vec::new();
            for &(si, v) in &vec {
                let mut metric = (*input[si].labels).clone();
                metric.set(label, &format_value(v));
                let key = group_key(&metric, &grouping, without);
                match ids.get(&key) {
                    Some(&g) => groups[g].1 += 1,
                    None => {
                        ids.insert(key, groups.len());
                        groups.push((group_labels(&metric, &grouping, without), 1));
                    }
                }
            }
            for (l, n) in groups {
                let l = label_cache
                    .entry(l)
                    .or_insert_with_key(|l| Arc::new(l.clone()))
                    .clone();
                out.push(ts, &l, n as f64)?;
            }
        }
        Ok(out.finish())
    }
}
