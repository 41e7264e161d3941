//! How a job's metrics map onto the store and the live views.
//!
//! A job numbers its metrics: fields read from the response first, then
//! derived metrics. Only fields are stored — a derived metric such as
//! `followerRatio` costs nothing on disk and is computed at read time from
//! the stored series. Integer fields also feed the live views, which rank by
//! the first of them.

use trawler_crawl::job::{Metric, NumberKind, Op, Operand, Source};
use trawler_crawl::Job;
use trawler_store::ValueKind;
use trawler_views::{RatioConfig, ViewsConfig};

/// A stored metric.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    /// Index in an observation's values.
    pub index: usize,
    /// Its name.
    pub name: String,
    /// Integer or float.
    pub kind: ValueKind,
}

/// A derived metric readable as a series: `left op right` over stored
/// metrics (by position in [`Layout::stored`]) or constants.
#[derive(Debug, Clone, PartialEq)]
pub struct Derived {
    /// Its name.
    pub name: String,
    /// Left operand.
    pub left: Term,
    /// The operator.
    pub op: Op,
    /// Right operand.
    pub right: Term,
}

/// An operand of a [`Derived`] metric.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Term {
    /// A stored metric, by position in [`Layout::stored`].
    Stored(usize),
    /// A constant.
    Const(f64),
}

impl Derived {
    /// Evaluates the formula on two values; NaN (no value) when undefined.
    pub fn eval(&self, left: f64, right: f64) -> f64 {
        self.op.apply(left, right)
    }
}

/// The job's metrics, sorted into stored, derived and viewed ones.
#[derive(Debug, Clone)]
pub struct Layout {
    /// Stored metrics, in job order.
    pub stored: Vec<Stored>,
    /// Derived metrics computable from stored ones.
    pub derived: Vec<Derived>,
    /// Observation indexes of the metrics the views hold, in the views'
    /// schema order (integer fields, then float fields).
    pub viewed: Vec<usize>,
    /// The views' configuration.
    pub views: ViewsConfig,
    /// Position in [`Layout::stored`] of the ranked metric.
    pub rank_stored: usize,
    /// The name of the average of the ranked metric (its series and
    /// statistic), from the job file.
    pub average: String,
    /// The enrichment's name, if the job has one: the metric its answers
    /// are stored under (1 = yes) and the entity flag the views keep.
    pub flag: Option<String>,
}

impl Layout {
    /// Sorts the metrics of `job`.
    pub fn of(job: &Job) -> crate::Result<Self> {
        let metrics = job.metrics();
        let mut stored = Vec::new();
        let mut position = vec![None; metrics.len()];
        for (index, Metric { name, source }) in metrics.iter().enumerate() {
            if let Source::Field { kind, .. } = source {
                position[index] = Some(stored.len());
                let kind = match kind {
                    NumberKind::Integer => ValueKind::Int,
                    NumberKind::Float => ValueKind::Float,
                };
                stored.push(Stored {
                    index,
                    name: name.clone(),
                    kind,
                });
            }
        }
        let term = |operand: &Operand| match operand {
            Operand::Metric(i) => position[*i].map(Term::Stored),
            Operand::Const(c) => Some(Term::Const(*c)),
        };
        let mut derived = Vec::new();
        let mut ratios = Vec::new();
        for Metric { name, source } in metrics {
            if let Source::Derived { left, op, right } = source {
                if let (Some(l), Some(r)) = (term(left), term(right)) {
                    derived.push(Derived {
                        name: name.clone(),
                        left: l,
                        op: *op,
                        right: r,
                    });
                    if let (Term::Stored(a), Op::Div, Term::Stored(b)) = (l, op, r) {
                        let (a, b) = (&stored[a], &stored[b]);
                        if a.kind == ValueKind::Int && b.kind == ValueKind::Int {
                            ratios.push(RatioConfig {
                                name: name.clone(),
                                numerator: a.name.clone(),
                                denominator: b.name.clone(),
                            });
                        }
                    }
                }
            }
        }
        let ints: Vec<&Stored> = stored.iter().filter(|s| s.kind == ValueKind::Int).collect();
        let floats: Vec<&Stored> = stored
            .iter()
            .filter(|s| s.kind == ValueKind::Float)
            .collect();
        // The job checked that it ranks by an integer field.
        let rank_name = metrics[job.rank_by()].name.clone();
        let views = ViewsConfig {
            metrics: ints.iter().map(|s| s.name.clone()).collect(),
            rank_by: rank_name.clone(),
            floats: floats.iter().map(|s| s.name.clone()).collect(),
            ratios,
        };
        let viewed = ints.iter().chain(&floats).map(|s| s.index).collect();
        let rank_stored = stored.iter().position(|s| s.name == rank_name).unwrap_or(0);
        Ok(Self {
            stored,
            derived,
            viewed,
            views,
            rank_stored,
            average: job.average_name().to_owned(),
            flag: job.enrichments().first().map(|e| e.name.clone()),
        })
    }

    /// An observed number as the views hold their `slot`-th metric: an
    /// integer, or a float's bits ([`trawler_views::encode_float`]); `None`
    /// for no value (NaN).
    pub fn view_value(&self, slot: usize, v: f64) -> Option<i64> {
        if v.is_nan() {
            None
        } else if slot < self.views.metrics.len() {
            Some(v as i64)
        } else {
            Some(trawler_views::encode_float(v))
        }
    }

    /// Every metric a series read may name: stored, then derived.
    pub fn series_names(&self) -> Vec<String> {
        self.stored
            .iter()
            .map(|s| s.name.clone())
            .chain(self.derived.iter().map(|d| d.name.clone()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flagship_job_stores_two_series_and_derives_the_ratio() {
        let config =
            trawler_crawl::JobConfig::from_toml(crate::DEFAULT_JOB, "mockstagram.toml").unwrap();
        let layout = Layout::of(&config.build().unwrap()).unwrap();
        let names: Vec<_> = layout.stored.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["followerCount", "followingCount"]);
        assert_eq!(layout.derived.len(), 1);
        assert_eq!(layout.derived[0].name, "followerRatio");
        assert!(layout.derived[0].eval(10.0, 0.0).is_nan());
        assert_eq!(layout.views.rank_by, "followerCount");
        assert_eq!(layout.views.ratios.len(), 1);
        assert_eq!(layout.average, "averageFollowerCount");
        assert_eq!(layout.flag.as_deref(), Some("suspicious"));
        assert_eq!(
            layout.series_names(),
            ["followerCount", "followingCount", "followerRatio"]
        );
    }
}
