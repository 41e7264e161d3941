//! The evaluator: every node over a range of steps, as Prometheus does.
//!
//! Like Prometheus' engine, a node is evaluated once for all the steps of
//! its evaluation range (an instant query is a range of one step) and
//! answers a matrix whose points sit at the step timestamps; an operator
//! then walks the steps, gathering its inputs' points at each. Selected data
//! is loaded once per selector for the whole query (the span its steps,
//! offsets, `@`, lookback, ranges and enclosing subqueries cover), never
//! per step. Subqueries evaluate their inner expression once, over their
//! own steps aligned to absolute multiples of the subquery step.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use super::ast::{Func, Node, Sel, Ty};
use super::{is_stale_nan, EngineConfig, QueryError};
use crate::{Labels, Queryable, StorageError, METRIC_NAME};

/// Labels shared between the series of a step and the output.
pub(crate) type Lbl = Arc<Labels>;

/// A series of an evaluated node: points at step timestamps (or the raw
/// samples of a range vector).
#[derive(Debug, Clone)]
pub(crate) struct Series {
    pub labels: Lbl,
    pub points: Vec<(i64, f64)>,
}

/// What a node evaluates to.
pub(crate) enum Val {
    M(Vec<Series>),
    S(String),
}

/// An evaluation range: `start..=end` every `interval` ms.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Rng {
    pub start: i64,
    pub end: i64,
    pub interval: i64,
}

impl Rng {
    pub(crate) fn len(self) -> usize {
        if self.end < self.start {
            0
        } else {
            usize::try_from((self.end - self.start) / self.interval + 1).unwrap_or(0)
        }
    }

    pub(crate) fn steps(self) -> impl Iterator<Item = i64> {
        (0..self.len()).map(move |i| self.start + i as i64 * self.interval)
    }
}

pub(crate) const DUP_LABELSET: &str = "vector cannot contain metrics with the same labelset";

/// A range-vector argument: its series, and the `@` time, offset and
/// range of its windows.
pub(crate) type RangeArg = (Arc<Vec<Series>>, Option<i64>, i64, i64);

/// One query's evaluation state.
pub(crate) struct Ctx<'a> {
    q: &'a dyn Queryable,
    pub(crate) cfg: &'a EngineConfig,
    deadline: Instant,
    /// Per selector: the span to select, `[mint, maxt]`.
    ranges: Vec<(i64, i64)>,
    data: RefCell<Vec<Option<Arc<Vec<Series>>>>>,
    /// Points held by evaluated nodes (bounded by `max_samples`).
    samples: Cell<usize>,
    /// Step of subqueries written without one (`[5m:]`): Prometheus'
    /// default evaluation interval.
    pub(crate) default_subquery_step: i64,
}

impl<'a> Ctx<'a> {
    pub(crate) fn new(
        q: &'a dyn Queryable,
        cfg: &'a EngineConfig,
        deadline: Instant,
        root: &Node,
        selectors: usize,
        start: i64,
        end: i64,
    ) -> Self {
        let mut ranges = vec![(0, 0); selectors];
        plan(
            root,
            &mut Vec::new(),
            start,
            end,
            cfg.lookback_delta_ms,
            &mut ranges,
        );
        Self {
            q,
            cfg,
            deadline,
            ranges,
            data: RefCell::new(vec![None; selectors]),
            samples: Cell::new(0),
            default_subquery_step: 60_000,
        }
    }

    pub(crate) fn tick(&self) -> Result<(), QueryError> {
        if Instant::now() > self.deadline {
            return Err(QueryError::Timeout("expression evaluation"));
        }
        Ok(())
    }

    /// Accounts for `n` more points in memory.
    pub(crate) fn charge(&self, n: usize) -> Result<(), QueryError> {
        let total = self.samples.get().saturating_add(n);
        self.samples.set(total);
        if total > self.cfg.limits.max_samples {
            return Err(QueryError::Storage(StorageError::TooManySamples {
                limit: self.cfg.limits.max_samples,
            }));
        }
        Ok(())
    }

    /// The selected series of a selector, sorted by labels; stale markers
    /// dropped for range vectors.
    fn data(&self, sel: &Sel, range_vector: bool) -> Result<Arc<Vec<Series>>, QueryError> {
        if let Some(d) = &self.data.borrow()[sel.id] {
            return Ok(d.clone());
        }
        self.tick()?;
        let (mint, maxt) = self.ranges[sel.id];
        let selected = self.q.select(&sel.matchers, mint, maxt, self.cfg.limits)?;
        let mut out: Vec<Series> = selected
            .into_iter()
            .filter_map(|s| {
                let mut points = s.samples;
                points.retain(|&(t, _)| t >= mint && t <= maxt);
                if range_vector {
                    points.retain(|&(_, v)| !is_stale_nan(v));
                }
                (!points.is_empty()).then(|| Series {
                    labels: Arc::new(s.labels),
                    points,
                })
            })
            .collect();
        out.sort_by(|a, b| a.labels.cmp(&b.labels));
        let out = Arc::new(out);
        self.data.borrow_mut()[sel.id] = Some(out.clone());
        Ok(out)
    }

    /// Evaluates a node that is not a string.
    pub(crate) fn eval_m(&self, n: &Node, r: Rng) -> Result<Vec<Series>, QueryError> {
        match self.eval(n, r)? {
            Val::M(m) => Ok(m),
            Val::S(_) => Err(QueryError::Execution(
                "unexpected string where a vector or scalar was expected".to_owned(),
            )),
        }
    }

    /// Evaluates a node over a range. While it runs, the points its
    /// inputs and its result hold count against `max_samples`; once done,
    /// only its result's do (its inputs are dropped), as Prometheus
    /// accounts for the samples a query holds at once.
    pub(crate) fn eval(&self, n: &Node, r: Rng) -> Result<Val, QueryError> {
        self.tick()?;
        if r.len() > self.cfg.limits.max_samples {
            return Err(QueryError::Storage(StorageError::TooManySamples {
                limit: self.cfg.limits.max_samples,
            }));
        }
        let before = self.samples.get();
        let m = self.eval_node(n, r)?;
        if let Val::M(m) = &m {
            let own: usize = m.iter().map(|s| s.points.len()).sum();
            self.samples.set(before);
            self.charge(own)?;
        }
        Ok(m)
    }

    fn eval_node(&self, n: &Node, r: Rng) -> Result<Val, QueryError> {
        let m = match n {
            Node::Num(v) => {
                let points: Vec<(i64, f64)> = r.steps().map(|t| (t, *v)).collect();
                vec![Series {
                    labels: Arc::new(Labels::default()),
                    points,
                }]
            }
            Node::Str(s) => return Ok(Val::S(s.clone())),
            Node::Neg(e) => {
                let mut m = self.eval_m(e, r)?;
                for s in &mut m {
                    if !s.labels.get(METRIC_NAME).is_empty() {
                        s.labels = Arc::new(drop_name(&s.labels));
                    }
                    for p in &mut s.points {
                        p.1 = -p.1;
                    }
                }
                if e.ty() == Ty::Vector {
                    check_matrix_labelsets(&m)?;
                }
                m
            }
            Node::Selector(sel) => self.vector_selector(sel, r, false)?,
            Node::Matrix { sel, range } => {
                if r.start != r.end {
                    return Err(QueryError::Execution(
                        "cannot do range evaluation of matrix selector".to_owned(),
                    ));
                }
                let data = self.data(sel, true)?;
                let maxt = sel.at.unwrap_or(r.start) - sel.offset;
                let mint = maxt - range;
                let mut out = Vec::new();
                for s in data.iter() {
                    let lo = s.points.partition_point(|&(t, _)| t < mint);
                    let hi = s.points.partition_point(|&(t, _)| t <= maxt);
                    if lo < hi {
                        self.charge(hi - lo)?;
                        out.push(Series {
                            labels: s.labels.clone(),
                            points: s.points[lo..hi].to_vec(),
                        });
                    }
                }
                out
            }
            Node::Subquery {
                expr,
                range,
                step,
                offset,
                at,
            } => self.subquery(expr, *range, *step, *offset, *at, 0, r)?,
            Node::Call { func, args } => self.call(*func, args, r)?,
            Node::Agg {
                op,
                expr,
                param,
                grouping,
                without,
            } => self.aggregate(*op, expr, param.as_deref(), grouping, *without, r)?,
            Node::Binary {
                op,
                lhs,
                rhs,
                matching,
                return_bool,
            } => self.binary(*op, lhs, rhs, matching, *return_bool, r)?,
        };
        Ok(Val::M(m))
    }

    /// Evaluates a subquery's inner expression over its own steps. `shift`
    /// moves the end of an `@` subquery (Prometheus 2.42 does so for the
    /// arguments of functions that depend on the step time).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn subquery(
        &self,
        expr: &Node,
        range: i64,
        step: Option<i64>,
        offset: i64,
        at: Option<i64>,
        shift: i64,
        r: Rng,
    ) -> Result<Vec<Series>, QueryError> {
        let interval = step.unwrap_or(self.default_subquery_step);
        let (base_start, base_end) = match at {
            Some(t) => (t - offset - range, t - offset + shift),
            None => (r.start - offset - range, r.end - offset),
        };
        let mut start = interval * (base_start / interval);
        if start < base_start {
            start += interval;
        }
        self.eval_m(
            expr,
            Rng {
                start,
                end: base_end,
                interval,
            },
        )
    }

    /// An instant vector selector at every step: the latest sample within
    /// the lookback delta, none after a stale marker. With `timestamps`, the
    /// value is the sample's time in seconds (the `timestamp()` function),
    /// and `@` takes no offset (as Prometheus 2.42 does there).
    pub(crate) fn vector_selector(
        &self,
        sel: &Sel,
        r: Rng,
        timestamps: bool,
    ) -> Result<Vec<Series>, QueryError> {
        let data = self.data(sel, false)?;
        let lookback = self.cfg.lookback_delta_ms;
        let mut out = Vec::new();
        for (i, s) in data.iter().enumerate() {
            if i % 256 == 0 {
                self.tick()?;
            }
            let mut points = Vec::new();
            let mut j = 0;
            for ts in r.steps() {
                let reft = match (sel.at, timestamps) {
                    (Some(t), true) => t,
                    (Some(t), false) => t - sel.offset,
                    (None, _) => ts - sel.offset,
                };
                while j < s.points.len() && s.points[j].0 <= reft {
                    j += 1;
                }
                if j == 0 {
                    continue;
                }
                let (t, v) = s.points[j - 1];
                if t < reft - lookback || is_stale_nan(v) {
                    continue;
                }
                points.push((ts, if timestamps { t as f64 / 1000.0 } else { v }));
            }
            if !points.is_empty() {
                self.charge(points.len())?;
                out.push(Series {
                    labels: s.labels.clone(),
                    points,
                });
            }
        }
        Ok(out)
    }

    /// The raw series of a range-vector argument, with the `@` time, offset
    /// and range of its windows.
    pub(crate) fn range_arg(&self, n: &Node, shift: i64, r: Rng) -> Result<RangeArg, QueryError> {
        match n {
            Node::Matrix { sel, range } => Ok((self.data(sel, true)?, sel.at, sel.offset, *range)),
            Node::Subquery {
                expr,
                range,
                step,
                offset,
                at,
            } => {
                let mut m = self.subquery(expr, *range, *step, *offset, *at, shift, r)?;
                for s in &mut m {
                    s.points.retain(|&(_, v)| !is_stale_nan(v));
                }
                Ok((Arc::new(m), *at, *offset, *range))
            }
            _ => Err(QueryError::Execution(
                "expected a range vector argument".to_owned(),
            )),
        }
    }
}

/// Computes the span each selector loads, as Prometheus'
/// `getTimeRangesForSelector` does. `path` holds the enclosing subqueries'
/// `(offset, range, @)`.
fn plan(
    n: &Node,
    path: &mut Vec<(i64, i64, Option<i64>)>,
    start: i64,
    end: i64,
    lookback: i64,
    out: &mut [(i64, i64)],
) {
    let span = |sel: &Sel, eval_range: i64, path: &[(i64, i64, Option<i64>)]| {
        let (mut so, mut sr, mut sts) = (0i64, 0i64, None);
        for &(o, r, at) in path {
            so += o;
            sr += r;
            if let Some(t) = at {
                so = o;
                sr = r;
                sts = Some(t);
            }
        }
        let (mut s, mut e) = match sts {
            Some(t) => (t, t),
            None => (start, end),
        };
        match sel.at {
            Some(t) => {
                s = t;
                e = t;
            }
            None => {
                s -= so + sr;
                e -= so;
            }
        }
        s -= if eval_range == 0 {
            lookback
        } else {
            eval_range
        };
        (s - sel.offset, e - sel.offset)
    };
    match n {
        Node::Num(_) | Node::Str(_) => {}
        Node::Neg(e) => plan(e, path, start, end, lookback, out),
        Node::Selector(sel) => out[sel.id] = span(sel, 0, path),
        Node::Matrix { sel, range } => out[sel.id] = span(sel, *range, path),
        Node::Subquery {
            expr,
            range,
            offset,
            at,
            ..
        } => {
            path.push((*offset, *range, *at));
            plan(expr, path, start, end, lookback, out);
            path.pop();
        }
        Node::Call { args, .. } => {
            for a in args {
                plan(a, path, start, end, lookback, out);
            }
        }
        Node::Agg { expr, param, .. } => {
            if let Some(p) = param {
                plan(p, path, start, end, lookback, out);
            }
            plan(expr, path, start, end, lookback, out);
        }
        Node::Binary { lhs, rhs, .. } => {
            plan(lhs, path, start, end, lookback, out);
            plan(rhs, path, start, end, lookback, out);
        }
    }
}

/// Labels without `__name__`.
pub(crate) fn drop_name(l: &Labels) -> Labels {
    let mut l = l.clone();
    l.set(METRIC_NAME, "");
    l
}

/// Prometheus' `Matrix.ContainsSameLabelset`: two series of one result
/// with equal labels (whether or not their points overlap) are an error.
pub(crate) fn check_matrix_labelsets(m: &[Series]) -> Result<(), QueryError> {
    if m.len() < 2 {
        return Ok(());
    }
    let mut seen = std::collections::HashSet::with_capacity(m.len());
    for s in m {
        if !seen.insert(&*s.labels) {
            return Err(QueryError::Execution(DUP_LABELSET.to_owned()));
        }
    }
    Ok(())
}

/// Walks the steps of evaluated inputs: at each step, which series of an
/// input have a point and its value.
pub(crate) struct Stepper<'m> {
    mats: Vec<&'m [Series]>,
    cursors: Vec<Vec<usize>>,
}

impl<'m> Stepper<'m> {
    pub(crate) fn new(mats: Vec<&'m [Series]>) -> Self {
        let cursors = mats.iter().map(|m| vec![0; m.len()]).collect();
        Self { mats, cursors }
    }

    /// Fills `out` with `(series index, value)` of input `i` at `ts`.
    pub(crate) fn at(&mut self, i: usize, ts: i64, out: &mut Vec<(usize, f64)>) {
        out.clear();
        let cur = &mut self.cursors[i];
        for (si, s) in self.mats[i].iter().enumerate() {
            let c = &mut cur[si];
            if let Some(&(t, v)) = s.points.get(*c) {
                if t == ts {
                    out.push((si, v));
                    *c += 1;
                }
            }
        }
    }
}

/// Values of a scalar input by step (NaN where it has none).
pub(crate) fn scalar_by_step(m: &[Series], r: Rng) -> Vec<f64> {
    let mut out = vec![f64::NAN; r.len()];
    if let Some(s) = m.first() {
        for &(t, v) in &s.points {
            let i = (t - r.start) / r.interval;
            if let Some(slot) = usize::try_from(i).ok().and_then(|i| out.get_mut(i)) {
                *slot = v;
            }
        }
    }
    out
}

/// Gathers the vectors an operator answers at each step into series, in
/// the order labels first appear, refusing a step with two equal label
/// sets.
pub(crate) struct Out<'c, 'a> {
    ctx: &'c Ctx<'a>,
    series: Vec<Series>,
    by_ptr: HashMap<usize, usize>,
    by_val: HashMap<Lbl, usize>,
    /// Keeps the labels whose address is a key of `by_ptr` alive.
    held: Vec<Lbl>,
    /// Output series by a caller's key (see [`Out::push_keyed`]).
    by_key: Vec<usize>,
    points: usize,
}

impl<'c, 'a> Out<'c, 'a> {
    pub(crate) fn new(ctx: &'c Ctx<'a>) -> Self {
        Self {
            ctx,
            series: Vec::new(),
            by_ptr: HashMap::new(),
            by_val: HashMap::new(),
            held: Vec::new(),
            by_key: Vec::new(),
            points: 0,
        }
    }

    /// Like [`Out::push`], for a caller whose labels are always the same
    /// for the same `key` (an input series' index, a group's): after the
    /// first point, no hashing.
    pub(crate) fn push_keyed(
        &mut self,
        ts: i64,
        key: usize,
        labels: &Lbl,
        v: f64,
    ) -> Result<(), QueryError> {
        if key >= self.by_key.len() {
            self.by_key.resize(key + 1, usize::MAX);
        }
        let idx = match self.by_key[key] {
            usize::MAX => {
                let i = self.index_of(labels);
                self.by_key[key] = i;
                i
            }
            i => i,
        };
        self.add(idx, ts, v)
    }

    pub(crate) fn push(&mut self, ts: i64, labels: &Lbl, v: f64) -> Result<(), QueryError> {
        let idx = self.index_of(labels);
        self.add(idx, ts, v)
    }

    fn index_of(&mut self, labels: &Lbl) -> usize {
        let ptr = Arc::as_ptr(labels) as usize;
        match self.by_ptr.get(&ptr) {
            Some(&i) => i,
            None => {
                let i = match self.by_val.get(labels) {
                    Some(&i) => i,
                    None => {
                        self.series.push(Series {
                            labels: labels.clone(),
                            points: Vec::new(),
                        });
                        self.by_val.insert(labels.clone(), self.series.len() - 1);
                        self.series.len() - 1
                    }
                };
                self.by_ptr.insert(ptr, i);
                self.held.push(labels.clone());
                i
            }
        }
    }

    fn add(&mut self, idx: usize, ts: i64, v: f64) -> Result<(), QueryError> {
        let s = &mut self.series[idx];
        if s.points.last().is_some_and(|p| p.0 == ts) {
            return Err(QueryError::Execution(DUP_LABELSET.to_owned()));
        }
        s.points.push((ts, v));
        self.points += 1;
        if self.points.is_multiple_of(4096) {
            self.ctx.charge(4096)?;
        }
        Ok(())
    }

    pub(crate) fn finish(self) -> Vec<Series> {
        self.series
    }
}

/// Whether a function's result depends on the step time, so that its
/// `@` arguments are not evaluated once (Prometheus'
/// `AtModifierUnsafeFunctions`, of which only `predict_linear` takes a
/// range vector).
pub(crate) fn at_shift(func: Func, ts: i64, r: Rng) -> i64 {
    if func == Func::PredictLinear {
        ts - r.start
    } else {
        0
    }
}
