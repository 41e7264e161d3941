//! The stream job file: `[job] kind = "stream"`, `[stream]`, `[[metric]]`,
//! `[[formula]]` — read into plain serde structs that reject unknown keys,
//! then [`StreamJobConfig::build`] checks every value into a [`StreamJob`].
//! Errors name the file and the key (`expo.toml: metric[2].aggregate: …`).
//!
//! `jobs/expo.toml` documents every key.

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use crate::formula::{self, Expr};

/// A stream job file as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamJobConfig {
    /// `[job]`: the name, and `kind = "stream"`.
    pub job: JobSection,
    /// `[stream]`: source, time, windows, groups.
    pub stream: StreamSection,
    /// `[[metric]]`: what to aggregate (a windows job).
    #[serde(default, rename = "metric")]
    pub metrics: Vec<MetricConfig>,
    /// `[[formula]]`: series computed from the others when read.
    #[serde(default, rename = "formula")]
    pub formulas: Vec<FormulaConfig>,
    /// Where the config came from, for messages.
    #[serde(skip)]
    pub source: String,
}

/// `[job]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSection {
    /// Names the job and its API (`/api/v1/streams/{name}/…`).
    pub name: String,
    /// Must be `stream`.
    pub kind: String,
}

/// `[stream]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamSection {
    /// `http` (default), `nats` or `file`.
    #[serde(default = "default_source")]
    pub source: String,
    /// JSON pointer of the event time (unix ms, or an RFC 3339 string).
    pub time_field: String,
    /// JSON pointer of the event's type, which metrics select by `types`.
    #[serde(default)]
    pub type_field: Option<String>,
    /// Tumbling window length (default `1m`).
    #[serde(default = "default_window")]
    pub window: String,
    /// How long after a window's end its events are still accepted
    /// (default `30s`), in event time.
    #[serde(default = "default_lateness")]
    pub lateness: String,
    /// How the events are grouped (a windows job).
    #[serde(default)]
    pub group: Option<GroupSection>,
    /// Top-N per key over a sliding window (a top-N job, instead of
    /// `[stream.group]` and `[[metric]]`).
    #[serde(default)]
    pub topn: Option<TopNSection>,
    /// `source = "file"`: the NDJSON file (`.gz` accepted), relative to
    /// the job file.
    #[serde(default)]
    pub file: Option<String>,
    /// `source = "nats"`: the JetStream consumer.
    #[serde(default)]
    pub nats: Option<NatsSection>,
    /// Largest request body of `POST …/events` (default `16MiB`; 413 beyond).
    #[serde(default)]
    pub max_batch_bytes: Option<usize>,
    /// The built-in event generator that `trawler run --gen RATE` feeds
    /// this job from (demos), e.g. `expo`.
    #[serde(default)]
    pub generator: Option<String>,
}

fn default_source() -> String {
    "http".into()
}
fn default_window() -> String {
    "1m".into()
}
fn default_lateness() -> String {
    "30s".into()
}

/// `[stream.group]`: every member of the object at `each` puts the event
/// in one group, named by the member's key and (string) value.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupSection {
    /// JSON pointer of the object, e.g. `/exp`.
    pub each: String,
    /// The label of a member's key, e.g. `experiment`.
    pub key_label: String,
    /// The label of a member's value, e.g. `variant`.
    pub value_label: String,
}

/// `[stream.topn]`: for each key (a post), the N members (users) with the
/// highest count or sum over the last `[stream] window`, sliding by
/// `slide`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopNSection {
    /// JSON pointer of the key (a string or an integer), e.g. `/post`.
    pub key: String,
    /// JSON pointer of the member (a string or an integer), e.g. `/user`.
    pub member: String,
    /// JSON pointer of a non-negative integer to sum (default: count events).
    #[serde(default)]
    pub value: Option<String>,
    /// How many members per key (default 10).
    #[serde(default)]
    pub n: Option<usize>,
    /// The window slides by this (default `1s`); it divides the window.
    #[serde(default)]
    pub slide: Option<String>,
    /// Event types counted (needs `stream.type_field`; default: every type).
    #[serde(default)]
    pub types: Option<Vec<String>>,
    /// The key's label in answers (default `key`).
    #[serde(default)]
    pub key_label: Option<String>,
    /// The member's label in answers (default `member`).
    #[serde(default)]
    pub member_label: Option<String>,
    /// Subscribers get at most one update per key per this (default `250ms`).
    #[serde(default)]
    pub push_interval: Option<String>,
    /// Most subscribers at once (default 20000; 503 beyond).
    #[serde(default)]
    pub max_subscribers: Option<usize>,
    /// Most keys per subscriber (default 100; 400 beyond).
    #[serde(default)]
    pub max_keys: Option<usize>,
}

/// A checked `[stream.topn]`.
#[derive(Debug, Clone, PartialEq)]
pub struct TopNSpec {
    /// Pointer of the key.
    pub key: String,
    /// Pointer of the member.
    pub member: String,
    /// Sum the job's field 0 (else count events).
    pub weighted: bool,
    /// Members per key.
    pub n: usize,
    /// Slide, ms (divides the window).
    pub slide_ms: i64,
    /// Whether events of types not in `types` are dropped.
    pub typed: bool,
    /// The key's label.
    pub key_label: String,
    /// The member's label.
    pub member_label: String,
    /// Coalescing interval of pushes, ms.
    pub push_interval_ms: i64,
    /// Most subscribers.
    pub max_subscribers: usize,
    /// Most keys per subscriber.
    pub max_keys: usize,
}

/// `[stream.nats]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NatsSection {
    /// NATS servers, e.g. `["nats://127.0.0.1:4222"]`.
    pub servers: Vec<String>,
    /// The subject the events are published on.
    pub subject: String,
    /// The JetStream stream (created over `subject` when missing; default
    /// `TRAWLER_EVENTS_{job}`).
    #[serde(default)]
    pub stream: Option<String>,
    /// The durable consumer's name (default `trawler-{job}`).
    #[serde(default)]
    pub consumer: Option<String>,
}

/// `[[metric]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricConfig {
    /// Names the series.
    pub name: String,
    /// `count`, `sum`, `min`, `max`, `mean`, `distinct` or `quantiles`.
    pub aggregate: String,
    /// JSON pointer of the value (all but `count`).
    #[serde(default)]
    pub field: Option<String>,
    /// Event types counted (default: every type).
    #[serde(default)]
    pub types: Option<Vec<String>>,
    /// `quantiles`: which, in (0, 1); default `[0.5, 0.9, 0.99]`.
    #[serde(default)]
    pub quantiles: Option<Vec<f64>>,
}

/// `[[formula]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FormulaConfig {
    /// Names the derived series.
    pub name: String,
    /// E.g. `purchasers / visitors`.
    pub expr: String,
}

/// Where events come from.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    /// `POST /api/v1/streams/{job}/events`.
    Http,
    /// A JetStream durable pull consumer.
    Nats(NatsSection),
    /// An NDJSON file, read once.
    File(std::path::PathBuf),
}

/// What an aggregate computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Aggregate {
    /// Events.
    Count,
    /// Sum of a number.
    Sum,
    /// Smallest number.
    Min,
    /// Largest number.
    Max,
    /// Mean of a number.
    Mean,
    /// Distinct values (HyperLogLog++, exact while small).
    Distinct,
    /// Quantiles of a number (DDSketch).
    Quantiles,
}

/// One checked metric.
#[derive(Debug, Clone, PartialEq)]
pub struct Metric {
    /// Its name.
    pub name: String,
    /// What it computes.
    pub aggregate: Aggregate,
    /// Its field's slot in a decoded event (`None` for `count`).
    pub field: Option<usize>,
    /// The type ids it counts (`None`: every event).
    pub types: Option<Vec<u16>>,
    /// `quantiles` only.
    pub quantiles: Vec<f64>,
    /// Its first series in [`StreamJob::series`].
    pub first_series: usize,
}

/// One stored series: a metric, or one quantile of one.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// Its name (`order_value_p99`).
    pub name: String,
    /// Integer (counts) or float.
    pub integer: bool,
}

/// A checked stream job.
#[derive(Debug, Clone)]
pub struct StreamJob {
    /// The job name.
    pub name: String,
    /// Where events come from.
    pub source: Source,
    /// Pointer of the event time.
    pub time_field: String,
    /// Pointer of the event type.
    pub type_field: Option<String>,
    /// The types some metric names, by id.
    pub types: Vec<String>,
    /// Window length, ms.
    pub window_ms: i64,
    /// Allowed lateness, ms.
    pub lateness_ms: i64,
    /// The grouping (a windows job).
    pub group: Option<GroupSection>,
    /// Top-N per key (a top-N job: no group, metrics or formulas).
    pub topn: Option<TopNSpec>,
    /// Pointers of the fields metrics read, by slot.
    pub fields: Vec<String>,
    /// The metrics.
    pub metrics: Vec<Metric>,
    /// The stored series, in metric order.
    pub series: Vec<Series>,
    /// Formulas (name, expression), in dependency order.
    pub formulas: Vec<(String, Expr)>,
    /// Formulas as written (name, text), in file order.
    pub formula_texts: Vec<(String, String)>,
    /// Largest accepted request body.
    pub max_batch_bytes: usize,
    /// The built-in generator named for demos (`[stream] generator`).
    pub generator: Option<String>,
    /// For each type id (and one more for "any other type"), the metrics
    /// it feeds; empty lists are dropped by the early filter.
    pub metrics_by_type: Vec<Vec<usize>>,
}

/// A job file that cannot be used; the message names the file and key.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// The file could not be read.
    #[error("{file}: {source}")]
    Read {
        /// The file.
        file: String,
        /// Why.
        source: std::io::Error,
    },
    /// TOML syntax, a missing or an unknown key.
    #[error("{file}: {message}")]
    Syntax {
        /// The file.
        file: String,
        /// toml's message (with line and key).
        message: String,
    },
    /// A key whose value is refused.
    #[error("{file}: {key}: {message}")]
    Invalid {
        /// The file.
        file: String,
        /// The key, e.g. `metric[2].aggregate`.
        key: String,
        /// Why.
        message: String,
    },
}

impl StreamJobConfig {
    /// Parses TOML; `source` names it in errors.
    pub fn from_toml(text: &str, source: &str) -> Result<Self, SpecError> {
        let mut c: StreamJobConfig = toml::from_str(text).map_err(|e| SpecError::Syntax {
            file: source.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })?;
        c.source = source.to_owned();
        Ok(c)
    }

    /// Reads and parses a job file.
    pub fn load(path: &Path) -> Result<Self, SpecError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| SpecError::Read {
            file: file.clone(),
            source,
        })?;
        Self::from_toml(&text, &file)
    }

    /// Checks every value.
    pub fn build(&self) -> Result<StreamJob, SpecError> {
        let file = if self.source.is_empty() {
            "job"
        } else {
            &self.source
        };
        let invalid = |key: &str, message: String| SpecError::Invalid {
            file: file.to_owned(),
            key: key.to_owned(),
            message,
        };
        let name = self.job.name.trim();
        if !valid_name(name, true) {
            return Err(invalid(
                "job.name",
                format!("{name:?} must be non-empty ASCII letters, digits, '-' or '_' (it names the API path)"),
            ));
        }
        if self.job.kind != "stream" {
            return Err(invalid(
                "job.kind",
                format!(
                    "{:?}: a file with [stream] must say kind = \"stream\"",
                    self.job.kind
                ),
            ));
        }
        let s = &self.stream;
        let pointer = |key: &str, p: &str| pointer(key, p, &invalid);
        let time_field = pointer("stream.time_field", &s.time_field)?;
        let type_field = match &s.type_field {
            Some(p) => Some(pointer("stream.type_field", p)?),
            None => None,
        };
        let ms = |key: &str, text: &str, min: Duration| -> Result<i64, SpecError> {
            let d = humantime::parse_duration(text)
                .map_err(|e| invalid(key, format!("invalid duration {text:?}: {e}")))?;
            if d < min || d > Duration::from_secs(86_400) {
                return Err(invalid(
                    key,
                    format!("{text:?} must be between {min:?} and 1 day"),
                ));
            }
            Ok(d.as_millis() as i64)
        };
        let window_ms = ms("stream.window", &s.window, Duration::from_secs(1))?;
        if s.topn.is_none() && 86_400_000 % window_ms != 0 {
            return Err(invalid(
                "stream.window",
                format!(
                    "{:?} must divide a day, so that windows align to clock minutes and days",
                    s.window
                ),
            ));
        }
        let lateness_ms = ms("stream.lateness", &s.lateness, Duration::ZERO)?;
        let group = match (&s.group, &s.topn) {
            (Some(g), None) => {
                let group = GroupSection {
                    each: pointer("stream.group.each", &g.each)?,
                    key_label: label("stream.group.key_label", &g.key_label, &invalid)?,
                    value_label: label("stream.group.value_label", &g.value_label, &invalid)?,
                };
                if group.key_label == group.value_label {
                    return Err(invalid(
                        "stream.group.value_label",
                        format!("{:?} is also the key_label", group.value_label),
                    ));
                }
                Some(group)
            }
            (None, Some(_)) => None,
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "stream.topn",
                    "a job has either [stream.group] (windows) or [stream.topn], not both".into(),
                ))
            }
            (None, None) => {
                return Err(invalid(
                    "stream.group",
                    "a stream job needs [stream.group] (windows with [[metric]]) or [stream.topn]"
                        .into(),
                ))
            }
        };
        if let Some(t) = &s.topn {
            let source = source_of(s, &self.source, &invalid)?;
            let base = StreamJob {
                name: name.to_owned(),
                source,
                time_field,
                type_field,
                types: Vec::new(),
                window_ms,
                lateness_ms,
                group: None,
                topn: None,
                fields: Vec::new(),
                metrics: Vec::new(),
                series: Vec::new(),
                formulas: Vec::new(),
                formula_texts: Vec::new(),
                max_batch_bytes: s.max_batch_bytes.unwrap_or(16 << 20),
                generator: s.generator.clone(),
                metrics_by_type: Vec::new(),
            };
            return self.build_topn(t, base, &invalid);
        }
        let source = source_of(s, &self.source, &invalid)?;

        if self.metrics.is_empty() {
            return Err(invalid(
                "metric",
                "a stream job needs at least one [[metric]]".into(),
            ));
        }
        let mut types: Vec<String> = Vec::new();
        let mut fields: Vec<String> = Vec::new();
        let mut metrics = Vec::new();
        let mut series: Vec<Series> = Vec::new();
        for (i, m) in self.metrics.iter().enumerate() {
            let key = |k: &str| format!("metric[{i}].{k}");
            if !valid_name(&m.name, false) {
                return Err(invalid(
                    &key("name"),
                    format!(
                        "{:?} must be ASCII letters, digits or '_', starting with a letter",
                        m.name
                    ),
                ));
            }
            let aggregate = match m.aggregate.as_str() {
                "count" => Aggregate::Count,
                "sum" => Aggregate::Sum,
                "min" => Aggregate::Min,
                "max" => Aggregate::Max,
                "mean" => Aggregate::Mean,
                "distinct" => Aggregate::Distinct,
                "quantiles" => Aggregate::Quantiles,
                other => {
                    return Err(invalid(
                        &key("aggregate"),
                        format!(
                            "{other:?}: expected count, sum, min, max, mean, distinct or quantiles"
                        ),
                    ))
                }
            };
            let field = match (&m.field, aggregate) {
                (None, Aggregate::Count) => None,
                (Some(_), Aggregate::Count) => {
                    return Err(invalid(&key("field"), "count takes no field".into()))
                }
                (None, _) => {
                    return Err(invalid(
                        &key("field"),
                        format!("{} needs a field", m.aggregate),
                    ))
                }
                (Some(p), _) => {
                    let p = pointer(&key("field"), p)?;
                    Some(match fields.iter().position(|f| *f == p) {
                        Some(at) => at,
                        None => {
                            fields.push(p);
                            fields.len() - 1
                        }
                    })
                }
            };
            let metric_types = match &m.types {
                None => None,
                Some(list) => {
                    if type_field.is_none() {
                        return Err(invalid(
                            &key("types"),
                            "selecting types needs stream.type_field".into(),
                        ));
                    }
                    if list.is_empty() {
                        return Err(invalid(
                            &key("types"),
                            "an empty list counts nothing (omit it to count every type)".into(),
                        ));
                    }
                    let mut ids = Vec::new();
                    for t in list {
                        let id = match types.iter().position(|x| x == t) {
                            Some(at) => at,
                            None => {
                                types.push(t.clone());
                                types.len() - 1
                            }
                        };
                        ids.push(id as u16);
                    }
                    Some(ids)
                }
            };
            let quantiles = match (aggregate, &m.quantiles) {
                (Aggregate::Quantiles, None) => vec![0.5, 0.9, 0.99],
                (Aggregate::Quantiles, Some(q)) => {
                    if q.is_empty() || q.iter().any(|q| !(*q > 0.0 && *q < 1.0)) {
                        return Err(invalid(
                            &key("quantiles"),
                            format!("{q:?}: each must be in (0, 1)"),
                        ));
                    }
                    q.clone()
                }
                (_, Some(_)) => {
                    return Err(invalid(
                        &key("quantiles"),
                        "only aggregate = \"quantiles\" takes quantiles".into(),
                    ))
                }
                (_, None) => Vec::new(),
            };
            let first_series = series.len();
            if aggregate == Aggregate::Quantiles {
                for q in &quantiles {
                    series.push(Series {
                        name: format!("{}_{}", m.name, quantile_suffix(*q)),
                        integer: false,
                    });
                }
            } else {
                series.push(Series {
                    name: m.name.clone(),
                    integer: matches!(aggregate, Aggregate::Count | Aggregate::Distinct),
                });
            }
            metrics.push(Metric {
                name: m.name.clone(),
                aggregate,
                field,
                types: metric_types,
                quantiles,
                first_series,
            });
        }
        for (i, s) in series.iter().enumerate() {
            if series[..i].iter().any(|o| o.name == s.name) {
                return Err(invalid(
                    "metric",
                    format!("two series are named {:?}", s.name),
                ));
            }
        }

        let mut formulas = Vec::new();
        for (i, f) in self.formulas.iter().enumerate() {
            if !valid_name(&f.name, false) {
                return Err(invalid(
                    &format!("formula[{i}].name"),
                    format!(
                        "{:?} must be ASCII letters, digits or '_', starting with a letter",
                        f.name
                    ),
                ));
            }
            if series.iter().any(|s| s.name == f.name)
                || formulas.iter().any(|(n, _): &(String, Expr)| *n == f.name)
            {
                return Err(invalid(
                    &format!("formula[{i}].name"),
                    format!("{:?} is already a series or a formula", f.name),
                ));
            }
            let e =
                Expr::parse(&f.expr).map_err(|why| invalid(&format!("formula[{i}].expr"), why))?;
            formulas.push((f.name.clone(), e));
        }
        let names: Vec<String> = series.iter().map(|s| s.name.clone()).collect();
        let order =
            formula::resolve(&names, &formulas).map_err(|e| invalid("formula", e.to_string()))?;
        let formulas = order.into_iter().map(|i| formulas[i].clone()).collect();

        // Type ids 0..types.len(), then "another type" (or no type field).
        let mut metrics_by_type = vec![Vec::new(); types.len() + 1];
        for (m, metric) in metrics.iter().enumerate() {
            match &metric.types {
                Some(ids) => ids
                    .iter()
                    .for_each(|&t| metrics_by_type[t as usize].push(m)),
                None => metrics_by_type.iter_mut().for_each(|list| list.push(m)),
            }
        }

        Ok(StreamJob {
            name: name.to_owned(),
            source,
            time_field,
            type_field,
            types,
            window_ms,
            lateness_ms,
            group,
            topn: None,
            fields,
            metrics,
            series,
            formulas,
            formula_texts: self
                .formulas
                .iter()
                .map(|f| (f.name.clone(), f.expr.clone()))
                .collect(),
            max_batch_bytes: s.max_batch_bytes.unwrap_or(16 << 20),
            generator: s.generator.clone(),
            metrics_by_type,
        })
    }
}

impl StreamJob {
    /// The id of "a type no metric names".
    pub fn other_type(&self) -> u16 {
        self.types.len() as u16
    }

    /// Whether events of a type the job does not name are dropped by the
    /// early filter.
    pub fn filters_other_types(&self) -> bool {
        match &self.topn {
            Some(t) => t.typed,
            None => self.metrics_by_type[self.other_type() as usize].is_empty(),
        }
    }

    /// The start of the window holding `ts`.
    pub fn window_of(&self, ts: i64) -> i64 {
        ts.saturating_sub(ts.rem_euclid(self.window_ms))
    }

    /// A series or formula by name: `Ok(series index)` or `Err(formula index)`.
    pub fn lookup(&self, name: &str) -> Option<Result<usize, usize>> {
        if let Some(i) = self.series.iter().position(|s| s.name == name) {
            return Some(Ok(i));
        }
        self.formulas.iter().position(|(n, _)| n == name).map(Err)
    }
}

impl StreamJobConfig {
    /// The rest of a top-N job, on the `[stream]` keys checked in `job`.
    fn build_topn(
        &self,
        t: &TopNSection,
        mut job: StreamJob,
        invalid: &impl Fn(&str, String) -> SpecError,
    ) -> Result<StreamJob, SpecError> {
        if !self.metrics.is_empty() || !self.formulas.is_empty() {
            return Err(invalid(
                "metric",
                "a top-N job ([stream.topn]) has no [[metric]] or [[formula]]".into(),
            ));
        }
        let pointer = |key: &str, p: &str| pointer(key, p, invalid);
        let key = pointer("stream.topn.key", &t.key)?;
        let member = pointer("stream.topn.member", &t.member)?;
        if key == member || key == job.time_field || member == job.time_field {
            return Err(invalid(
                "stream.topn.member",
                "the key, the member and the time must be three different fields".into(),
            ));
        }
        if let Some(v) = &t.value {
            job.fields.push(pointer("stream.topn.value", v)?);
        }
        let n = t.n.unwrap_or(10);
        if !(1..=1000).contains(&n) {
            return Err(invalid("stream.topn.n", format!("{n} must be 1 to 1000")));
        }
        let dur = |key: &str, text: &str| -> Result<i64, SpecError> {
            humantime::parse_duration(text)
                .map_err(|e| invalid(key, format!("invalid duration {text:?}: {e}")))
                .map(|d| d.as_millis() as i64)
        };
        let slide_ms = dur("stream.topn.slide", t.slide.as_deref().unwrap_or("1s"))?;
        if slide_ms < 10 || job.window_ms % slide_ms != 0 || job.window_ms / slide_ms > 100_000 {
            return Err(invalid(
                "stream.topn.slide",
                format!(
                    "{:?} must divide stream.window into at most 100000 slides of at least 10ms",
                    t.slide.as_deref().unwrap_or("1s")
                ),
            ));
        }
        let push_interval_ms = dur(
            "stream.topn.push_interval",
            t.push_interval.as_deref().unwrap_or("250ms"),
        )?;
        if !(10..=60_000).contains(&push_interval_ms) {
            return Err(invalid(
                "stream.topn.push_interval",
                "must be between 10ms and 1m".into(),
            ));
        }
        let typed = match &t.types {
            None => false,
            Some(list) => {
                if job.type_field.is_none() {
                    return Err(invalid(
                        "stream.topn.types",
                        "selecting types needs stream.type_field".into(),
                    ));
                }
                if list.is_empty() {
                    return Err(invalid(
                        "stream.topn.types",
                        "an empty list counts nothing (omit it to count every type)".into(),
                    ));
                }
                job.types = list.clone();
                true
            }
        };
        let key_label = label(
            "stream.topn.key_label",
            t.key_label.as_deref().unwrap_or("key"),
            invalid,
        )?;
        let member_label = label(
            "stream.topn.member_label",
            t.member_label.as_deref().unwrap_or("member"),
            invalid,
        )?;
        let positive = |key: &str, v: Option<usize>, default: usize| {
            let v = v.unwrap_or(default);
            if v == 0 {
                Err(invalid(key, "must be at least 1".into()))
            } else {
                Ok(v)
            }
        };
        job.topn = Some(TopNSpec {
            key,
            member,
            weighted: t.value.is_some(),
            n,
            slide_ms,
            typed,
            key_label,
            member_label,
            push_interval_ms,
            max_subscribers: positive("stream.topn.max_subscribers", t.max_subscribers, 20_000)?,
            max_keys: positive("stream.topn.max_keys", t.max_keys, 100)?,
        });
        Ok(job)
    }
}

/// `[stream] source` and its section.
fn source_of(
    s: &StreamSection,
    file: &str,
    invalid: &impl Fn(&str, String) -> SpecError,
) -> Result<Source, SpecError> {
    let base = Path::new(file)
        .parent()
        .filter(|_| !file.is_empty())
        .unwrap_or(Path::new("."));
    Ok(match (s.source.as_str(), &s.file, &s.nats) {
        ("http", None, None) => Source::Http,
        ("file", Some(f), None) => Source::File(base.join(f)),
        ("file", None, _) => {
            return Err(invalid(
                "stream.file",
                "source = \"file\" needs file = \"PATH\"".into(),
            ))
        }
        ("nats", None, Some(n)) => {
            if n.servers.is_empty() || n.servers.iter().any(|s| !s.starts_with("nats://")) {
                return Err(invalid(
                    "stream.nats.servers",
                    format!("{:?}: expected nats://HOST:PORT URLs", n.servers),
                ));
            }
            if n.subject.is_empty() || n.subject.contains(' ') {
                return Err(invalid(
                    "stream.nats.subject",
                    format!("{:?} is not a subject", n.subject),
                ));
            }
            Source::Nats(n.clone())
        }
        ("nats", _, None) => {
            return Err(invalid(
                "stream.nats",
                "source = \"nats\" needs a [stream.nats] section with servers and subject".into(),
            ))
        }
        ("http" | "file" | "nats", _, _) => {
            return Err(invalid(
                "stream.source",
                format!(
                    "{:?} takes no {}",
                    s.source,
                    if s.file.is_some() {
                        "file"
                    } else {
                        "[stream.nats]"
                    }
                ),
            ))
        }
        (other, _, _) => {
            return Err(invalid(
                "stream.source",
                format!("{other:?}: expected http, nats or file"),
            ))
        }
    })
}

/// `p` when it is a JSON pointer, else an error naming `key`.
fn pointer(
    key: &str,
    p: &str,
    invalid: &impl Fn(&str, String) -> SpecError,
) -> Result<String, SpecError> {
    if p.starts_with('/') {
        Ok(p.to_owned())
    } else {
        Err(invalid(
            key,
            format!("{p:?} is not a JSON pointer (it starts with '/')"),
        ))
    }
}

fn valid_name(name: &str, dash: bool) -> bool {
    !name.is_empty()
        && (dash || name.as_bytes()[0].is_ascii_alphabetic())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || (dash && b == b'-'))
}

fn label(
    key: &str,
    text: &str,
    invalid: &impl Fn(&str, String) -> SpecError,
) -> Result<String, SpecError> {
    if valid_name(text, false) {
        Ok(text.to_owned())
    } else {
        Err(invalid(
            key,
            format!("{text:?} must be ASCII letters, digits or '_' (a label name)"),
        ))
    }
}

/// `0.5` → `p50`, `0.999` → `p99_9`.
pub fn quantile_suffix(q: f64) -> String {
    let pct = format!("{}", (q * 100_000.0).round() / 1000.0);
    format!("p{}", pct.replace('.', "_"))
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) const EXPO: &str = include_str!("../../../jobs/expo.toml");

    #[test]
    fn the_shipped_job_builds() {
        let job = StreamJobConfig::from_toml(EXPO, "expo.toml")
            .unwrap()
            .build()
            .unwrap();
        assert_eq!(job.name, "expo");
        assert_eq!(job.window_ms, 60_000);
        assert!(job.series.iter().any(|s| s.name == "order_value_p99"));
        assert!(job.lookup("conversion").unwrap().is_err());
        // The early filter: types no metric names feed nothing.
        assert!(job.metrics_by_type[job.other_type() as usize].is_empty());
    }

    #[test]
    fn quantile_names() {
        assert_eq!(quantile_suffix(0.5), "p50");
        assert_eq!(quantile_suffix(0.99), "p99");
        assert_eq!(quantile_suffix(0.999), "p99_9");
    }

    fn err(text: &str) -> String {
        match StreamJobConfig::from_toml(text, "t.toml").and_then(|c| c.build()) {
            Ok(_) => panic!("accepted:\n{text}"),
            Err(e) => e.to_string(),
        }
    }

    const HEAD: &str = "[job]\nname = \"x\"\nkind = \"stream\"\n[stream]\ntime_field = \"/ts\"\ntype_field = \"/type\"\n[stream.group]\neach = \"/exp\"\nkey_label = \"experiment\"\nvalue_label = \"variant\"\n";

    #[test]
    fn the_shipped_top_n_job_builds_and_its_mistakes_are_named() {
        let text = include_str!("../../../jobs/comments.toml");
        let job = StreamJobConfig::from_toml(text, "comments.toml")
            .unwrap()
            .build()
            .unwrap();
        let t = job.topn.as_ref().unwrap();
        assert_eq!((t.n, t.slide_ms, job.window_ms), (10, 1_000, 300_000));
        assert!(job.group.is_none() && !t.weighted && !job.filters_other_types());
        let bad = |from: &str, to: &str| err(&text.replacen(from, to, 1));
        assert!(bad("slide = \"1s\"", "slide = \"7s\"").contains("t.toml: stream.topn.slide"));
        assert!(bad("n = 10", "n = 0").contains("stream.topn.n"));
        assert!(bad("member = \"/user\"", "member = \"/post\"").contains("stream.topn.member"));
        assert!(bad("key = \"/post\"", "key = \"post\"")
            .contains("stream.topn.key: \"post\" is not a JSON pointer"));
        assert!(bad(
            "\n[stream.topn]\n",
            "\n[stream.group]\neach = \"/x\"\nkey_label = \"a\"\nvalue_label = \"b\"\n[stream.topn]\n"
        )
        .contains("not both"));
        let with_metric = format!("{text}[[metric]]\nname = \"v\"\naggregate = \"count\"\n");
        assert!(err(&with_metric)
            .contains("t.toml: metric: a top-N job ([stream.topn]) has no [[metric]]"));
        assert!(err(&HEAD.replace("[stream.group]\neach = \"/exp\"\nkey_label = \"experiment\"\nvalue_label = \"variant\"\n", ""))
            .contains("needs [stream.group]"));
    }

    #[test]
    fn errors_name_file_and_key() {
        let m = "[[metric]]\nname = \"v\"\naggregate = \"count\"\n";
        assert!(err(&format!("{HEAD}{m}[[formula]]\nname = \"a\"\nexpr = \"b / v\"\n[[formula]]\nname = \"b\"\nexpr = \"a * 2\"\n"))
            .contains("t.toml: formula: formulas form a cycle: a -> b -> a"));
        assert!(err(&format!(
            "{HEAD}{m}[[formula]]\nname = \"a\"\nexpr = \"v / nope\"\n"
        ))
        .contains("`nope` in formula `a`"));
        assert!(err(&format!(
            "{HEAD}[[metric]]\nname = \"v\"\naggregate = \"avg\"\nfield = \"/a\"\n"
        ))
        .starts_with("t.toml: metric[0].aggregate: \"avg\""));
        assert!(err(&format!(
            "{HEAD}[[metric]]\nname = \"v\"\naggregate = \"sum\"\n"
        ))
        .contains("metric[0].field"));
        assert!(
            err(&HEAD.replace("time_field", "tiem_field")).contains("unknown field `tiem_field`")
        );
        assert!(err(&format!(
            "{}{m}",
            HEAD.replace("[stream]", "[stream]\nwindow = \"7s\"")
        ))
        .contains("stream.window"));
        assert!(err(&format!(
            "{}{m}",
            HEAD.replace("[stream]", "[stream]\nsource = \"kafka\"")
        ))
        .contains("stream.source: \"kafka\""));
    }
}
