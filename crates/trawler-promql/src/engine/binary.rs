//! Binary operators, as Prometheus 2.42 evaluates them: scalar–scalar,
//! vector–scalar (comparisons filter unless `bool`), and vector–vector with
//! its matching (`on`/`ignoring`, `group_left`/`group_right`), set
//! operators, `__name__` dropping and the errors of ambiguous matches.

use std::collections::HashMap;
use std::sync::Arc;

use super::ast::{BinOp, Card, Matching, Node, Ty};
use super::eval::{drop_name, scalar_by_step, Ctx, Lbl, Out, Rng, Series, Stepper};
use super::QueryError;
use crate::{Labels, METRIC_NAME};

/// `op` on two floats; for comparisons, whether it holds (as 1/0).
pub(crate) fn scalar_op(op: BinOp, l: f64, r: f64) -> f64 {
    let b = |x: bool| if x { 1.0 } else { 0.0 };
    match op {
        BinOp::Add => l + r,
        BinOp::Sub => l - r,
        BinOp::Mul => l * r,
        BinOp::Div => l / r,
        BinOp::Pow => l.powf(r),
        BinOp::Mod => l % r,
        BinOp::Atan2 => l.atan2(r),
        BinOp::Eq => b(l == r),
        BinOp::Ne => b(l != r),
        BinOp::Gt => b(l > r),
        BinOp::Lt => b(l < r),
        BinOp::Ge => b(l >= r),
        BinOp::Le => b(l <= r),
        BinOp::And | BinOp::Or | BinOp::Unless => f64::NAN,
    }
}

/// `vectorElemBinop`: the value, and whether the element is kept.
fn elem_op(op: BinOp, l: f64, r: f64) -> (f64, bool) {
    match op {
        BinOp::Eq => (l, l == r),
        BinOp::Ne => (l, l != r),
        BinOp::Gt => (l, l > r),
        BinOp::Lt => (l, l < r),
        BinOp::Ge => (l, l >= r),
        BinOp::Le => (l, l <= r),
        _ => (scalar_op(op, l, r), true),
    }
}

/// The matching signature of labels.
fn signature(l: &Labels, m: &Matching) -> Vec<u8> {
    let mut key = Vec::new();
    for lb in l.iter() {
        let listed = m.labels.iter().any(|n| n == &lb.name);
        let keep = if m.on {
            listed
        } else {
            !listed && lb.name != METRIC_NAME
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

/// Labels as Go's `labels.Labels.String()` writes them.
fn labels_string(l: &Labels) -> String {
    let parts: Vec<String> = l
        .iter()
        .map(|x| format!("{}={:?}", x.name, x.value))
        .collect();
    format!("{{{}}}", parts.join(", "))
}

/// `resultMetric`: the labels of a vector–vector result element.
fn result_metric(lhs: &Labels, rhs: &Labels, op: BinOp, m: &Matching) -> Labels {
    let mut out = lhs.clone();
    if op.drops_name() {
        out.set(METRIC_NAME, "");
    }
    if m.card == Card::OneToOne {
        let names: Vec<String> = out.iter().map(|x| x.name.clone()).collect();
        for n in names {
            let listed = m.labels.iter().any(|x| x == &n);
            if listed != m.on {
                out.set(&n, "");
            }
        }
    }
    for ln in &m.include {
        out.set(ln, rhs.get(ln));
    }
    out
}

impl Ctx<'_> {
    pub(crate) fn binary(
        &self,
        op: BinOp,
        lhs: &Node,
        rhs: &Node,
        matching: &Matching,
        return_bool: bool,
        r: Rng,
    ) -> Result<Vec<Series>, QueryError> {
        let (lt, rt) = (lhs.ty(), rhs.ty());
        let l = self.eval_m(lhs, r)?;
        let rr = self.eval_m(rhs, r)?;
        match (lt, rt) {
            (Ty::Scalar, Ty::Scalar) => {
                let (a, b) = (scalar_by_step(&l, r), scalar_by_step(&rr, r));
                let points = r
                    .steps()
                    .enumerate()
                    .map(|(i, t)| (t, scalar_op(op, a[i], b[i])))
                    .collect();
                Ok(vec![Series {
                    labels: Arc::new(Labels::default()),
                    points,
                }])
            }
            (Ty::Vector, Ty::Scalar) => {
                self.vector_scalar(op, &l, &scalar_by_step(&rr, r), false, return_bool, r)
            }
            (Ty::Scalar, Ty::Vector) => {
                self.vector_scalar(op, &rr, &scalar_by_step(&l, r), true, return_bool, r)
            }
            _ => self.vector_vector(op, &l, &rr, matching, return_bool, r),
        }
    }

    fn vector_scalar(
        &self,
        op: BinOp,
        vecs: &[Series],
        scalar: &[f64],
        swap: bool,
        return_bool: bool,
        r: Rng,
    ) -> Result<Vec<Series>, QueryError> {
        let drop = op.drops_name() || return_bool;
        let labels: Vec<Lbl> = vecs
            .iter()
            .map(|s| {
                if drop && !s.labels.get(METRIC_NAME).is_empty() {
                    Arc::new(drop_name(&s.labels))
                } else {
                    s.labels.clone()
                }
            })
            .collect();
        let mut out = Out::new(self);
        let mut st = Stepper::new(vec![vecs]);
        let mut vec = Vec::new();
        for (step, ts) in r.steps().enumerate() {
            if step % 64 == 0 {
                self.tick()?;
            }
            st.at(0, ts, &mut vec);
            let s = scalar[step];
            for &(si, v) in &vec {
                let (lv, rv) = if swap { (s, v) } else { (v, s) };
                let (mut value, mut keep) = elem_op(op, lv, rv);
                if op.is_comparison() && swap {
                    value = rv;
                }
                if return_bool {
                    value = if keep { 1.0 } else { 0.0 };
                    keep = true;
                }
                if keep {
                    out.push_keyed(ts, si, &labels[si], value)?;
                }
            }
        }
        Ok(out.finish())
    }

    fn vector_vector(
        &self,
        op: BinOp,
        l: &[Series],
        r_: &[Series],
        m: &Matching,
        return_bool: bool,
        r: Rng,
    ) -> Result<Vec<Series>, QueryError> {
        // Signatures as small ids, shared by both sides.
        let mut ids: HashMap<Vec<u8>, usize> = HashMap::new();
        let mut sig = |s: &Series| {
            let n = ids.len();
            *ids.entry(signature(&s.labels, m)).or_insert(n)
        };
        let lsig: Vec<usize> = l.iter().map(&mut sig).collect();
        let rsig: Vec<usize> = r_.iter().map(&mut sig).collect();
        let nsig = ids.len();
        let mut out = Out::new(self);
        let mut st = Stepper::new(vec![l, r_]);
        let (mut lv, mut rv) = (Vec::new(), Vec::new());
        // Per signature: the step it was last seen at, and the sample.
        let mut seen: Vec<(usize, usize)> = vec![(usize::MAX, 0); nsig];
        let mut rval: Vec<f64> = vec![0.0; nsig];
        let mut matched: Vec<usize> = vec![usize::MAX; nsig];
        let mut inserted: HashMap<usize, Vec<Lbl>> = HashMap::new();
        let mut metric_cache: HashMap<(usize, usize), (usize, Lbl)> = HashMap::new();
        for (step, ts) in r.steps().enumerate() {
            if step % 64 == 0 {
                self.tick()?;
            }
            st.at(0, ts, &mut lv);
            st.at(1, ts, &mut rv);
            match op {
                BinOp::And => {
                    if lv.is_empty() || rv.is_empty() {
                        continue;
                    }
                    for &(si, _) in &rv {
                        seen[rsig[si]].0 = step;
                    }
                    for &(si, v) in &lv {
                        if seen[lsig[si]].0 == step {
                            out.push_keyed(ts, si, &l[si].labels, v)?;
                        }
                    }
                }
                BinOp::Or => {
                    for &(si, v) in &lv {
                        seen[lsig[si]].0 = step;
                        out.push_keyed(ts, si, &l[si].labels, v)?;
                    }
                    for &(si, v) in &rv {
                        if lv.is_empty() || seen[rsig[si]].0 != step {
                            out.push_keyed(ts, l.len() + si, &r_[si].labels, v)?;
                        }
                    }
                }
                BinOp::Unless => {
                    if !rv.is_empty() {
                        for &(si, _) in &rv {
                            seen[rsig[si]].0 = step;
                        }
                    }
                    for &(si, v) in &lv {
                        if rv.is_empty() || seen[lsig[si]].0 != step {
                            out.push_keyed(ts, si, &l[si].labels, v)?;
                        }
                    }
                }
                _ => {
                    if lv.is_empty() || rv.is_empty() {
                        continue;
                    }
                    // The "one" side goes to the right.
                    let swapped = m.card == Card::OneToMany;
                    let (ls, rs, lsg, rsg, lvec, rvec) = if swapped {
                        (r_, l, &rsig, &lsig, &rv, &lv)
                    } else {
                        (l, r_, &lsig, &rsig, &lv, &rv)
                    };
                    for &(si, v) in rvec.iter() {
                        let g = rsg[si];
                        if seen[g].0 == step {
                            let other = seen[g].1;
                            let side = if swapped { "left" } else { "right" };
                            let mut ml = (*rs[si].labels).clone();
                            let names: Vec<String> = ml.iter().map(|x| x.name.clone()).collect();
                            for n in names {
                                let listed = m.labels.iter().any(|x| x == &n);
                                let keep = if m.on {
                                    listed
                                } else {
                                    !listed && n != METRIC_NAME
                                };
                                if !keep {
                                    ml.set(&n, "");
                                }
                            }
                            return Err(QueryError::Execution(format!(
                                "found duplicate series for the match group {} on the {side} hand-side of the operation: [{}, {}];many-to-many matching not allowed: matching labels must be unique on one side",
                                labels_string(&ml),
                                labels_string(&rs[si].labels),
                                labels_string(&rs[other].labels),
                            )));
                        }
                        seen[g] = (step, si);
                        rval[g] = v;
                    }
                    inserted.clear();
                    for &(si, v) in lvec.iter() {
                        let g = lsg[si];
                        if seen[g].0 != step {
                            continue;
                        }
                        let ri = seen[g].1;
                        let mut vl = v;
                        let mut vr = rval[g];
                        if swapped {
                            std::mem::swap(&mut vl, &mut vr);
                        }
                        let (mut value, keep) = elem_op(op, vl, vr);
                        if return_bool {
                            value = if keep { 1.0 } else { 0.0 };
                        } else if !keep {
                            continue;
                        }
                        let n = metric_cache.len();
                        let (key, metric) = metric_cache
                            .entry((si, ri))
                            .or_insert_with(|| {
                                let mut ml = result_metric(&ls[si].labels, &rs[ri].labels, op, m);
                                if return_bool {
                                    ml.set(METRIC_NAME, "");
                                }
                                (n, Arc::new(ml))
                            })
                            .clone();
                        if m.card == Card::OneToOne {
                            if matched[g] == step {
                                return Err(QueryError::Execution(
                                    "multiple matches for labels: many-to-one matching must be explicit (group_left/group_right)".to_owned(),
                                ));
                            }
                            matched[g] = step;
                        } else {
                            let set = inserted.entry(g).or_default();
                            if set.iter().any(|x| **x == *metric) {
                                return Err(QueryError::Execution(
                                    "multiple matches for labels: grouping labels must ensure unique matches".to_owned(),
                                ));
                            }
                            set.push(metric.clone());
                        }
                        out.push_keyed(ts, key, &metric, value)?;
                    }
                }
            }
        }
        Ok(out.finish())
    }
}
