//! What the views hold: [`ViewsConfig`] (names from the job file) is
//! validated by [`ViewsConfig::build`] into a [`Schema`] of indices, so the
//! hot path never compares strings.

use crate::Views;

/// Most integer metrics one view set holds: presence is one bit per metric
/// in a per-entity `u16` that also carries the movers and suspicion bits.
pub const MAX_METRICS: usize = 8;

/// The metrics of a job's live views, by name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ViewsConfig {
    /// Integer metrics kept per entity, in the order [`crate::Update::values`]
    /// gives them (e.g. `followerCount`, `followingCount`).
    pub metrics: Vec<String>,
    /// The metric that ranks entities, feeds the average, top N and movers.
    pub rank_by: String,
    /// Float metrics kept as each entity's latest value only (no average,
    /// rank or ratio), after the integer ones in update order; their
    /// values travel as [`encode_float`] bits.
    pub floats: Vec<String>,
    /// Metrics derived on read as `numerator / denominator`.
    pub ratios: Vec<RatioConfig>,
}

/// A derived metric: `numerator / denominator` as `f64`, computed on read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RatioConfig {
    /// Name of the derived metric (e.g. `followerRatio`).
    pub name: String,
    /// Metric divided.
    pub numerator: String,
    /// Metric divided by; a zero or missing denominator gives no value.
    pub denominator: String,
}

/// A validated [`ViewsConfig`]: names resolved to positions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schema {
    metrics: Vec<String>,
    /// Integer metrics come first; from here on, floats.
    ints: usize,
    rank_by: usize,
    ratios: Vec<(String, usize, usize)>,
}

impl Schema {
    /// Metric names, in update order.
    pub fn metrics(&self) -> &[String] {
        &self.metrics
    }

    /// Whether the metric at `m` is a float (its values are
    /// [`encode_float`] bits).
    pub fn is_float(&self, m: usize) -> bool {
        m >= self.ints
    }

    /// How many metrics are integers (the first ones).
    pub fn ints(&self) -> usize {
        self.ints
    }

    /// Position of the ranked metric in [`Self::metrics`].
    pub fn rank_by(&self) -> usize {
        self.rank_by
    }

    /// Position of a metric by name.
    pub fn metric(&self, name: &str) -> Option<usize> {
        self.metrics.iter().position(|m| m == name)
    }

    /// Derived ratios: (name, numerator position, denominator position).
    pub fn ratios(&self) -> &[(String, usize, usize)] {
        &self.ratios
    }
}

/// Why views could not be built or fed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ViewsError {
    /// The config lists no metric.
    #[error("views: `metrics` is empty; list at least the metric to rank by")]
    NoMetrics,
    /// More metrics than one entity's presence bits can hold.
    #[error("views: {count} metrics listed, at most {max} are supported")]
    TooManyMetrics {
        /// Metrics listed.
        count: usize,
        /// The limit, [`MAX_METRICS`].
        max: usize,
    },
    /// A name is used twice among metrics and ratios.
    #[error("views: `{name}` is defined twice; metric and ratio names must be unique")]
    DuplicateName {
        /// The repeated name.
        name: String,
    },
    /// A key names a metric that is not in `metrics`.
    #[error("views: `{key}` names `{name}`, which is not one of the listed metrics {known:?}")]
    UnknownMetric {
        /// The config key (`rank_by`, `ratios.numerator`, `ratios.denominator`).
        key: &'static str,
        /// The name given.
        name: String,
        /// The metrics that exist.
        known: Vec<String>,
    },
    /// An update carries a different number of values than the schema has
    /// metrics. Nothing of its batch was applied.
    #[error("views: update of id {id} has {got} values, the views have {expected} metrics")]
    Arity {
        /// Entity of the bad update.
        id: u64,
        /// Metrics in the schema.
        expected: usize,
        /// Values in the update.
        got: usize,
    },
}

/// A float metric's value as the `i64` an [`crate::Update`] carries.
pub fn encode_float(v: f64) -> i64 {
    v.to_bits() as i64
}

/// The float an [`encode_float`] value holds.
pub fn decode_float(v: i64) -> f64 {
    f64::from_bits(v as u64)
}

impl ViewsConfig {
    /// The flagship job's views: follower and following counts, ranked by
    /// followers, with `followerRatio`.
    pub fn influencers() -> Self {
        Self {
            metrics: vec!["followerCount".into(), "followingCount".into()],
            rank_by: "followerCount".into(),
            floats: Vec::new(),
            ratios: vec![RatioConfig {
                name: "followerRatio".into(),
                numerator: "followerCount".into(),
                denominator: "followingCount".into(),
            }],
        }
    }

    /// Validates the names and returns empty views.
    pub fn build(&self) -> Result<Views, ViewsError> {
        Ok(Views::new(self.schema()?))
    }

    fn schema(&self) -> Result<Schema, ViewsError> {
        if self.metrics.is_empty() {
            return Err(ViewsError::NoMetrics);
        }
        if self.metrics.len() + self.floats.len() > MAX_METRICS {
            return Err(ViewsError::TooManyMetrics {
                count: self.metrics.len() + self.floats.len(),
                max: MAX_METRICS,
            });
        }
        let names = self
            .metrics
            .iter()
            .chain(&self.floats)
            .chain(self.ratios.iter().map(|r| &r.name));
        let mut seen = std::collections::HashSet::new();
        for name in names {
            if !seen.insert(name) {
                return Err(ViewsError::DuplicateName { name: name.clone() });
            }
        }
        let position = |key: &'static str, name: &str| {
            self.metrics
                .iter()
                .position(|m| m == name)
                .ok_or_else(|| ViewsError::UnknownMetric {
                    key,
                    name: name.to_owned(),
                    known: self.metrics.clone(),
                })
        };
        let rank_by = position("rank_by", &self.rank_by)?;
        let ratios = self
            .ratios
            .iter()
            .map(|r| {
                Ok((
                    r.name.clone(),
                    position("ratios.numerator", &r.numerator)?,
                    position("ratios.denominator", &r.denominator)?,
                ))
            })
            .collect::<Result<_, ViewsError>>()?;
        Ok(Schema {
            metrics: self.metrics.iter().chain(&self.floats).cloned().collect(),
            ints: self.metrics.len(),
            rank_by,
            ratios,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_bad_configs_naming_the_key() {
        let mut config = ViewsConfig::influencers();
        config.rank_by = "followers".into();
        let err = config.build().unwrap_err();
        assert!(
            matches!(&err, ViewsError::UnknownMetric { key: "rank_by", .. }),
            "{err}"
        );
        assert!(err.to_string().contains("followerCount"), "{err}");

        let mut config = ViewsConfig::influencers();
        config.ratios[0].name = "followingCount".into();
        assert!(matches!(
            config.build().unwrap_err(),
            ViewsError::DuplicateName { .. }
        ));

        let config = ViewsConfig {
            metrics: vec![],
            rank_by: "x".into(),
            floats: vec![],
            ratios: vec![],
        };
        assert_eq!(config.build().unwrap_err(), ViewsError::NoMetrics);

        let config = ViewsConfig {
            metrics: (0..9).map(|i| format!("m{i}")).collect(),
            rank_by: "m0".into(),
            floats: vec![],
            ratios: vec![],
        };
        assert!(matches!(
            config.build().unwrap_err(),
            ViewsError::TooManyMetrics { count: 9, .. }
        ));
    }

    #[test]
    fn influencers_schema() {
        let views = ViewsConfig::influencers().build().unwrap();
        let schema = views.schema();
        assert_eq!(schema.rank_by(), 0);
        assert_eq!(schema.metric("followingCount"), Some(1));
        assert_eq!(schema.ratios(), &[("followerRatio".to_owned(), 0, 1)]);
    }
}
