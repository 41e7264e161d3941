//! The job file: what to poll, how often, and what to keep from each answer.
//!
//! A job is written in TOML and read into a [`JobConfig`] — plain serde
//! structs that reject unknown keys — then [`JobConfig::build`] validates it
//! into a [`Job`], the runtime object the crawler uses. Every error names the
//! file (or the command-line flag) and the key, so a typo in a 40-line job
//! file is found at once:
//!
//! ```text
//! job.toml:4: unknown key `intervl` in [job] (expected one of `name`, `url`, `ids`, `interval`)
//! job.toml: job.interval: invalid duration "6o s": unknown unit (expected ms, s, m, h, d)
//! ```
//!
//! The default Mockstagram job ships as `jobs/mockstagram.toml` and
//! documents every key:
//!
//! ```
//! # use trawler_crawl::{JobConfig, Overrides};
//! let text = r#"
//! [job]
//! name = "influencers"
//! url = "http://127.0.0.1:3000/api/v1/influencers/{id}"
//! ids = "1000000..=1999999"
//! interval = "60s"
//!
//! [[field]]
//! metric = "followerCount"
//! pointer = "/followerCount"
//! type = "integer"
//!
//! [[field]]
//! metric = "followingCount"
//! pointer = "/followingCount"
//! type = "integer"
//!
//! [[derived]]
//! metric = "followerRatio"
//! formula = "followerCount / followingCount"
//! "#;
//! let config = JobConfig::from_toml(text, "job.toml").unwrap();
//! let overrides = Overrides { target: Some("http://10.0.0.7:8000".into()), ..Overrides::default() };
//! let job = config.build_with(&overrides).unwrap();
//! assert_eq!(job.url_for(1_000_001), "http://10.0.0.7:8000/api/v1/influencers/1000001");
//! assert_eq!(job.metric_names().collect::<Vec<_>>(), ["followerCount", "followingCount", "followerRatio"]);
//! ```

mod duration;
mod enrichment;
mod extract;
mod walk;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use hyper::header::{HeaderName, HeaderValue};
use serde::Deserialize;

pub use duration::parse as parse_duration;
pub use enrichment::{BodyPart, Enrichment, EnrichmentSection};
pub use extract::{ExtractError, Metric, NotFoundRule, NumberKind, Op, Operand, Source};

use std::sync::Arc;

use crate::ids::IdSet;
use crate::keys::{KeyKind, Keys};

/// Shortest accepted interval: phases are whole milliseconds.
const MIN_INTERVAL: Duration = Duration::from_millis(10);
/// Longest accepted interval: a phase must fit in 32 bits of milliseconds.
const MAX_INTERVAL: Duration = Duration::from_millis(30 * 86_400_000);

/// A job file as written: plain values, checked by [`JobConfig::build`].
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobConfig {
    /// `[job]`: what to poll and how often.
    pub job: JobSection,
    /// `[[field]]`: numbers to read from each answer, in metric order.
    #[serde(default, rename = "field")]
    pub fields: Vec<FieldConfig>,
    /// `[[derived]]`: metrics computed from earlier ones, after the fields.
    #[serde(default)]
    pub derived: Vec<DerivedConfig>,
    /// `[views]`: what the live views rank and average.
    #[serde(default)]
    pub views: ViewsSection,
    /// `[[enrichment]]`: slow questions asked about every entity.
    #[serde(default, rename = "enrichment")]
    pub enrichments: Vec<EnrichmentSection>,
    /// `[not_found]`: how the target says an id does not exist.
    #[serde(default)]
    pub not_found: NotFoundConfig,
    /// `[http]`: connection and retry settings.
    #[serde(default)]
    pub http: HttpConfig,
    /// `[cluster]`: run as one node of a cluster (NATS JetStream and
    /// VictoriaMetrics). Absent: the embedded single-node mode. Read by the
    /// binary, which validates it; the crawler itself does not use it.
    #[serde(default)]
    pub cluster: Option<ClusterSection>,
    /// Where the config came from, for error messages.
    #[serde(skip)]
    pub source: String,
}

/// `[cluster]`: the same settings as `trawler run --cluster … --store …`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSection {
    /// NATS servers, e.g. `["nats://127.0.0.1:4222"]`.
    pub servers: Vec<String>,
    /// Where series go: `victoriametrics=http://host:port`.
    pub store: String,
    /// This node's name (default: host name and process id).
    #[serde(default)]
    pub node_id: Option<String>,
    /// Shards of the id space (default 256).
    #[serde(default)]
    pub shards: Option<u32>,
    /// Lease time-to-live, e.g. `5s` (default).
    #[serde(default)]
    pub lease_ttl: Option<String>,
}

/// `[job]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSection {
    /// Names the job and its API path (`influencers` → `/api/v1/influencers/…`).
    pub name: String,
    /// URL template with one `{id}`, e.g. `http://127.0.0.1:3000/api/v1/influencers/{id}`.
    pub url: String,
    /// `poll` (the default; a `stream` job is another file format, read by
    /// `trawler_stream`).
    #[serde(default)]
    pub kind: Option<String>,
    /// `integer` (default) or `string` keys (see [`crate::keys`]).
    #[serde(default)]
    pub key_type: KeyKind,
    /// What the API and the stored series' labels call an entity's key
    /// (default `id`; Mockstagram's is `pk`).
    #[serde(default)]
    pub key_name: Option<String>,
    /// Integer keys: an id set spec, e.g. `1000000..=1999999` (see
    /// [`IdSet`]). String keys: a comma-separated list, or `@file` with one
    /// key per line (relative to the job file; `#` starts a comment).
    pub ids: String,
    /// Poll interval, e.g. `60s`.
    pub interval: String,
    /// Display name of an id, with `{id}` replaced (e.g. `influencer-{id}`):
    /// the API shows it as `username` and enrichments send it. Optional.
    #[serde(default)]
    pub label: Option<String>,
    /// What the API calls the label (default `label`; Mockstagram's is
    /// `username`).
    #[serde(default)]
    pub label_name: Option<String>,
    /// What the schedule does when the target cannot keep up with it
    /// (default `stretch`; see [`Overload`]).
    #[serde(default)]
    pub overload: Overload,
}

/// The policy when the target serves fewer requests than the schedule needs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Overload {
    /// A slot that cannot start before its id's next slot is recorded as
    /// missed; the grid never moves.
    Skip,
    /// The default. The schedule slows down to what the target serves:
    /// every id is polled in turn, once per stretched interval, evenly
    /// spaced, and no slot is missed; samples are stamped with their
    /// stretched slot time. Back at the configured interval when the target
    /// recovers (the schedule stays moved back by the stretch).
    #[default]
    Stretch,
}

/// `[views]`: what the live views rank and average.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ViewsSection {
    /// The integer field entities are ranked by (top N, movers, the
    /// average). Default: the first integer field.
    #[serde(default)]
    pub rank_by: Option<String>,
    /// Name of the average's series and statistic. Default: `average` and
    /// the ranked metric capitalised (`averageFollowerCount`).
    #[serde(default)]
    pub average: Option<String>,
}

/// `[[field]]`: one number read from the JSON answer.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldConfig {
    /// Metric name.
    pub metric: String,
    /// JSON pointer (RFC 6901), e.g. `/followerCount`.
    pub pointer: String,
    /// `integer` or `float` (default).
    #[serde(default, rename = "type")]
    pub kind: NumberKind,
}

/// `[[derived]]`: a metric computed from earlier ones.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DerivedConfig {
    /// Metric name.
    pub metric: String,
    /// `a op b`, operands earlier metric names or numbers, op one of `+ - * /`.
    pub formula: String,
}

/// `[not_found]`: by default a `404` answer, whatever its body.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NotFoundConfig {
    /// Status of the answer.
    pub status: u16,
    /// JSON pointer to a string in its body; empty: the status alone says
    /// it.
    pub pointer: String,
    /// The string that means "no such id".
    pub equals: String,
}

impl Default for NotFoundConfig {
    fn default() -> Self {
        Self {
            status: 404,
            pointer: String::new(),
            equals: String::new(),
        }
    }
}

/// `[http]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Limit on establishing a TCP connection.
    pub connect_timeout: String,
    /// Limit on one request, from sending to the end of the body.
    pub request_timeout: String,
    /// Idle keep-alive connections kept open between requests.
    pub max_connections: usize,
    /// Ceiling of the adaptive concurrency limit (requests in flight). With
    /// HTTP/1.1 each request in flight holds one connection.
    pub max_in_flight: usize,
    /// Concurrency limit at start, before the limiter has measured the target.
    pub initial_in_flight: usize,
    /// Floor of the adaptive limit (set it to `max_in_flight` for a fixed limit).
    pub min_in_flight: usize,
    /// Further attempts after a failure that is safe to retry, within the slot.
    pub retries: u32,
    /// Wait before the first retry; doubles for each further one.
    pub backoff: String,
    /// Extra request headers.
    pub headers: BTreeMap<String, String>,
    /// At most this many requests per second to the target, retries
    /// included (none by default). A `429`/`503` with `Retry-After` pauses
    /// every request to the target whatever this is.
    pub max_rate: Option<f64>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            connect_timeout: "2s".into(),
            request_timeout: "10s".into(),
            max_connections: 1_024,
            max_in_flight: 2_048,
            initial_in_flight: 32,
            min_in_flight: 16,
            retries: 2,
            backoff: "200ms".into(),
            headers: BTreeMap::new(),
            max_rate: None,
        }
    }
}

/// Command-line overrides of the common keys (`--target`, `--ids`,
/// `--interval`). Errors in them name the flag.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Overrides {
    /// Base URL whose scheme, host and port replace the template's.
    pub target: Option<String>,
    /// Id set spec (or key list) replacing `job.ids`.
    pub ids: Option<String>,
    /// Interval replacing `job.interval`.
    pub interval: Option<String>,
    /// Overload policy (`stretch` or `skip`) replacing `job.overload`.
    pub overload: Option<String>,
}

/// A job file that cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JobError {
    /// The file could not be read.
    #[error("{file}: cannot read: {source}")]
    Read {
        /// The file.
        file: String,
        /// Why.
        source: std::io::Error,
    },
    /// Not valid TOML, an unknown or missing key, or a value of the wrong type.
    #[error("{file}:{line}: {message}")]
    Syntax {
        /// The file.
        file: String,
        /// 1-based line of the problem.
        line: usize,
        /// What is wrong, naming the key and its table.
        message: String,
    },
    /// A value of the right type that is not acceptable.
    #[error("{file}: {key}: {message}")]
    Invalid {
        /// The file, or `command line` for an override.
        file: String,
        /// The key (`http.retries`) or flag (`--ids`).
        key: String,
        /// What is wrong and what is accepted.
        message: String,
    },
}

/// HTTP settings of a validated job.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpSettings {
    /// See [`HttpConfig::connect_timeout`].
    pub connect_timeout: Duration,
    /// See [`HttpConfig::request_timeout`].
    pub request_timeout: Duration,
    /// See [`HttpConfig::max_connections`].
    pub max_connections: usize,
    /// See [`HttpConfig::max_in_flight`].
    pub max_in_flight: usize,
    /// See [`HttpConfig::initial_in_flight`].
    pub initial_in_flight: usize,
    /// See [`HttpConfig::min_in_flight`].
    pub min_in_flight: usize,
    /// See [`HttpConfig::retries`].
    pub retries: u32,
    /// See [`HttpConfig::backoff`].
    pub backoff: Duration,
    /// Extra request headers, validated.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// See [`HttpConfig::max_rate`].
    pub max_rate: Option<f64>,
}

/// A validated job: the runtime object the crawler and fetcher use.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    name: String,
    /// The URL template split around `{id}`, so a URL is two copies and a number.
    url_prefix: String,
    url_suffix: String,
    ids: IdSet,
    keys: Arc<Keys>,
    key_name: String,
    interval: Duration,
    metrics: Vec<Metric>,
    /// The fields' pointers, compiled once: a body is walked in one pass.
    paths: walk::Paths,
    not_found: NotFoundRule,
    http: HttpSettings,
    label: Option<String>,
    label_name: String,
    rank_by: usize,
    average: String,
    enrichments: Vec<Enrichment>,
    overload: Overload,
}

impl JobConfig {
    /// Parses TOML text; `source` names it in errors (e.g. the file name).
    pub fn from_toml(text: &str, source: &str) -> Result<Self, JobError> {
        let mut config: JobConfig =
            toml::from_str(text).map_err(|e| syntax_error(source, text, &e))?;
        config.source = source.to_owned();
        Ok(config)
    }

    /// Reads and parses a job file.
    pub fn load(path: &Path) -> Result<Self, JobError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| JobError::Read {
            file: file.clone(),
            source,
        })?;
        Self::from_toml(&text, &file)
    }

    /// Validates the config into a [`Job`].
    pub fn build(&self) -> Result<Job, JobError> {
        self.build_with(&Overrides::default())
    }

    /// Validates the config with command-line overrides applied.
    pub fn build_with(&self, overrides: &Overrides) -> Result<Job, JobError> {
        let file = if self.source.is_empty() {
            "job"
        } else {
            self.source.as_str()
        };
        let invalid = |key: &str, message: String| JobError::Invalid {
            file: file.to_owned(),
            key: key.to_owned(),
            message,
        };
        let flag = |key: &str, message: String| JobError::Invalid {
            file: "command line".to_owned(),
            key: key.to_owned(),
            message,
        };
        let duration = |key: &str, text: &str| {
            duration::parse(text)
                .map_err(|why| invalid(key, format!("invalid duration {text:?}: {why}")))
        };

        let name = self.job.name.trim();
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(invalid(
                "job.name",
                format!("{name:?} must be non-empty ASCII letters, digits, '-' or '_' (it names the API path)"),
            ));
        }
        if let Some(why) = trawler_common::reserved_job_name(name) {
            return Err(invalid("job.name", why));
        }

        if let Some(kind) = self.job.kind.as_deref().filter(|k| *k != "poll") {
            return Err(invalid(
                "job.kind",
                format!("{kind:?}: a job file with [[field]]s polls (kind = \"poll\"); kind = \"stream\" needs a [stream] section"),
            ));
        }
        let (url_prefix, url_suffix) =
            split_template(&self.job.url).map_err(|why| invalid("job.url", why))?;
        let (url_prefix, url_suffix) = match &overrides.target {
            Some(target) => {
                let base = base_url(target).map_err(|why| flag("--target", why))?;
                let path_start = url_prefix["http://".len()..]
                    .find('/')
                    .map_or(url_prefix.len(), |i| i + "http://".len());
                (format!("{base}{}", &url_prefix[path_start..]), url_suffix)
            }
            None => (url_prefix, url_suffix),
        };

        let (ids, keys) = match (self.job.key_type, &overrides.ids) {
            (KeyKind::Integer, Some(spec)) => (
                IdSet::parse(spec).map_err(|e| flag("--ids", e.to_string()))?,
                Keys::integers(),
            ),
            (KeyKind::Integer, None) => (
                IdSet::parse(&self.job.ids).map_err(|e| invalid("job.ids", e.to_string()))?,
                Keys::integers(),
            ),
            (KeyKind::String, Some(spec)) => {
                string_keys(spec, Path::new(".")).map_err(|why| flag("--ids", why))?
            }
            (KeyKind::String, None) => {
                let dir = Path::new(&self.source)
                    .parent()
                    .filter(|_| !self.source.is_empty())
                    .unwrap_or(Path::new("."));
                string_keys(&self.job.ids, dir).map_err(|why| invalid("job.ids", why))?
            }
        };
        let name_key = |key: &str, name: &Option<String>, default: &str| {
            let name = name.as_deref().unwrap_or(default).trim();
            if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                return Err(invalid(
                    key,
                    format!("{name:?} must be ASCII letters, digits or '_' (it names a member of API answers)"),
                ));
            }
            Ok(name.to_owned())
        };
        let key_name = name_key("job.key_name", &self.job.key_name, "id")?;
        let label_name = name_key("job.label_name", &self.job.label_name, "label")?;
        if key_name == label_name {
            return Err(invalid(
                "job.label_name",
                format!("{label_name:?} is also the key's name"),
            ));
        }

        let interval = match &overrides.interval {
            Some(text) => duration::parse(text)
                .map_err(|why| flag("--interval", format!("invalid duration {text:?}: {why}")))?,
            None => duration("job.interval", &self.job.interval)?,
        };
        if !(MIN_INTERVAL..=MAX_INTERVAL).contains(&interval) {
            let key = if overrides.interval.is_some() {
                "--interval"
            } else {
                "job.interval"
            };
            let message = format!("{interval:?} is outside 10ms..=30d");
            return Err(if overrides.interval.is_some() {
                flag(key, message)
            } else {
                invalid(key, message)
            });
        }

        let metrics = self.metrics().map_err(|(key, why)| invalid(&key, why))?;
        let rank_by = match &self.views.rank_by {
            Some(name) => metrics
                .iter()
                .position(|m| m.name == *name)
                .filter(|&i| is_integer_field(&metrics[i]))
                .ok_or_else(|| {
                    invalid(
                        "views.rank_by",
                        format!("{name:?} is not an integer field (type = \"integer\")"),
                    )
                })?,
            None => metrics.iter().position(is_integer_field).ok_or_else(|| {
                invalid(
                    "field",
                    "the live views rank by an integer field: declare one with type = \"integer\""
                        .into(),
                )
            })?,
        };
        let average = match &self.views.average {
            Some(name) => name_key("views.average", &Some(name.clone()), "")?,
            None => {
                let rank = &metrics[rank_by].name;
                let mut name = String::from("average");
                let mut chars = rank.chars();
                if let Some(c) = chars.next() {
                    name.extend(c.to_uppercase());
                    name.push_str(chars.as_str());
                }
                name
            }
        };
        if metrics.iter().any(|m| m.name == average) {
            return Err(invalid(
                "views.average",
                format!("{average:?} is already a metric"),
            ));
        }
        let base = {
            let after_scheme = "http://".len();
            let end = url_prefix[after_scheme..]
                .find('/')
                .map_or(url_prefix.len(), |i| i + after_scheme);
            url_prefix[..end].to_owned()
        };
        let enrichments = self
            .enrichments
            .iter()
            .enumerate()
            .map(|(i, e)| e.check(i, &metrics, &base))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|(key, why)| invalid(&key, why))?;
        if enrichments.len() > 1 {
            return Err(invalid(
                "enrichment",
                format!(
                    "{} enrichments declared: the live views keep one flag per entity, so a job has at most one [[enrichment]] for now",
                    enrichments.len()
                ),
            ));
        }

        let not_found = NotFoundRule {
            status: self.not_found.status,
            pointer: self.not_found.pointer.clone(),
            equals: self.not_found.equals.clone(),
        };
        if !(100..=599).contains(&not_found.status) {
            return Err(invalid(
                "not_found.status",
                format!("{} is not an HTTP status", not_found.status),
            ));
        }
        if !(not_found.pointer.is_empty() || not_found.pointer.starts_with('/')) {
            return Err(invalid(
                "not_found.pointer",
                "a JSON pointer starts with '/'".into(),
            ));
        }

        let h = &self.http;
        let http = HttpSettings {
            connect_timeout: duration("http.connect_timeout", &h.connect_timeout)?,
            request_timeout: duration("http.request_timeout", &h.request_timeout)?,
            max_connections: h.max_connections,
            max_in_flight: h.max_in_flight,
            initial_in_flight: h.initial_in_flight.min(h.max_in_flight),
            min_in_flight: h.min_in_flight.min(h.max_in_flight),
            retries: h.retries,
            backoff: duration("http.backoff", &h.backoff)?,
            headers: h
                .headers
                .iter()
                .map(|(k, v)| {
                    let key = format!("http.headers.{k}");
                    let name = HeaderName::try_from(k.as_str())
                        .map_err(|_| invalid(&key, "not a valid header name".into()))?;
                    let value = HeaderValue::try_from(v.as_str())
                        .map_err(|_| invalid(&key, "not a valid header value".into()))?;
                    Ok((name, value))
                })
                .collect::<Result<_, JobError>>()?,
            max_rate: h.max_rate,
        };
        if let Some(rate) = http.max_rate {
            if !(rate.is_finite() && rate > 0.0) {
                return Err(invalid(
                    "http.max_rate",
                    format!("{rate} is not a positive number of requests per second"),
                ));
            }
        }
        for (key, value) in [
            ("http.connect_timeout", http.connect_timeout),
            ("http.request_timeout", http.request_timeout),
        ] {
            if value.is_zero() {
                return Err(invalid(key, "must be more than 0".into()));
            }
        }
        for (key, value) in [
            ("http.max_connections", http.max_connections),
            ("http.max_in_flight", http.max_in_flight),
            ("http.initial_in_flight", h.initial_in_flight),
            ("http.min_in_flight", h.min_in_flight),
        ] {
            if value == 0 {
                return Err(invalid(key, "must be at least 1".into()));
            }
        }
        if http.retries > 10 {
            return Err(invalid(
                "http.retries",
                format!("{} is more than 10", http.retries),
            ));
        }

        if let Some(label) = &self.job.label {
            if label.matches("{id}").count() != 1 {
                return Err(invalid(
                    "job.label",
                    format!("{label:?} must contain {{id}} exactly once"),
                ));
            }
        }
        Ok(Job {
            name: name.to_owned(),
            url_prefix,
            url_suffix,
            ids,
            keys: Arc::new(keys),
            key_name,
            interval,
            paths: extract::paths(&metrics),
            metrics,
            not_found,
            http,
            label: self.job.label.clone(),
            label_name,
            rank_by,
            average,
            enrichments,
            overload: match overrides.overload.as_deref() {
                None => self.job.overload,
                Some("stretch") => Overload::Stretch,
                Some("skip") => Overload::Skip,
                Some(other) => {
                    return Err(flag(
                        "--overload",
                        format!("{other:?} is not a policy: use \"stretch\" or \"skip\""),
                    ))
                }
            },
        })
    }

    fn metrics(&self) -> Result<Vec<Metric>, (String, String)> {
        let mut metrics: Vec<Metric> = Vec::new();
        let check_name = |metrics: &[Metric], key: &str, name: &str| {
            if name.is_empty()
                || name.contains(char::is_whitespace)
                || "+-*/".chars().any(|c| name.contains(c))
            {
                return Err((
                    key.to_owned(),
                    format!("{name:?} is not a metric name (no spaces or + - * /)"),
                ));
            }
            if metrics.iter().any(|m| m.name == name) {
                return Err((key.to_owned(), format!("metric {name:?} is defined twice")));
            }
            Ok(())
        };
        for (i, field) in self.fields.iter().enumerate() {
            check_name(&metrics, &format!("field[{i}].metric"), &field.metric)?;
            if !field.pointer.starts_with('/') {
                return Err((
                    format!("field[{i}].pointer"),
                    format!(
                        "{:?} is not a JSON pointer (e.g. /followerCount)",
                        field.pointer
                    ),
                ));
            }
            metrics.push(Metric {
                name: field.metric.clone(),
                source: Source::Field {
                    pointer: field.pointer.clone(),
                    kind: field.kind,
                },
            });
        }
        for (i, derived) in self.derived.iter().enumerate() {
            check_name(&metrics, &format!("derived[{i}].metric"), &derived.metric)?;
            let source = extract::parse_formula(&derived.formula, &metrics)
                .map_err(|why| (format!("derived[{i}].formula"), why))?;
            metrics.push(Metric {
                name: derived.metric.clone(),
                source,
            });
        }
        if metrics.is_empty() {
            return Err(("field".into(), "a job needs at least one [[field]]".into()));
        }
        if metrics.len() > u16::MAX as usize {
            return Err(("field".into(), "too many metrics".into()));
        }
        Ok(metrics)
    }
}

impl Job {
    /// The job name (names its API path).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The ids tracked at start.
    pub fn ids(&self) -> &IdSet {
        &self.ids
    }

    /// The same job, tracking `ids` at start instead (the multi-node mode
    /// starts with none and tracks the shards it leases).
    pub fn with_ids(&self, ids: IdSet) -> Job {
        Job {
            ids,
            ..self.clone()
        }
    }

    /// The poll interval.
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// What the schedule does when the target cannot keep up.
    pub fn overload(&self) -> Overload {
        self.overload
    }

    /// The metrics, in the order of an observation's values.
    pub fn metrics(&self) -> &[Metric] {
        &self.metrics
    }

    /// The metric names, in the order of an observation's values.
    pub fn metric_names(&self) -> impl Iterator<Item = &str> {
        self.metrics.iter().map(|m| m.name.as_str())
    }

    /// The not-found rule.
    pub fn not_found(&self) -> &NotFoundRule {
        &self.not_found
    }

    /// HTTP settings.
    pub fn http(&self) -> &HttpSettings {
        &self.http
    }

    /// The URL of one id.
    pub fn url_for(&self, id: u64) -> String {
        let mut url = String::with_capacity(self.url_prefix.len() + 20 + self.url_suffix.len());
        url.push_str(&self.url_prefix);
        self.keys.write(id, &mut url);
        url.push_str(&self.url_suffix);
        url
    }

    /// The display name of `id` (`job.label` with `{id}` replaced by its
    /// key), if the job has one.
    pub fn label_for(&self, id: u64) -> Option<String> {
        let label = self.label.as_ref()?;
        let mut key = String::new();
        self.keys.write(id, &mut key);
        Some(label.replace("{id}", &key))
    }

    /// The job's keys: how ids are written and read as keys.
    pub fn keys(&self) -> &Arc<Keys> {
        &self.keys
    }

    /// What answers call an entity's key (`pk`).
    pub fn key_name(&self) -> &str {
        &self.key_name
    }

    /// What answers call an entity's label (`username`), if it has one.
    pub fn label_name(&self) -> &str {
        &self.label_name
    }

    /// Whether the job gives its entities a label.
    pub fn has_label(&self) -> bool {
        self.label.is_some()
    }

    /// Position in [`Self::metrics`] of the integer field the views rank by.
    pub fn rank_by(&self) -> usize {
        self.rank_by
    }

    /// Name of the average of the ranked metric (`averageFollowerCount`).
    pub fn average_name(&self) -> &str {
        &self.average
    }

    /// The job's enrichments (at most one for now).
    pub fn enrichments(&self) -> &[Enrichment] {
        &self.enrichments
    }

    /// The same job with its string keys numbered as in `saved` (the data
    /// folder's table): saved keys keep their ids, the job's own keys that
    /// are new get the next ones, and the ids to track are recomputed. An
    /// integer job is returned as it is.
    pub fn with_saved_keys<S: AsRef<str>>(
        &self,
        saved: &[S],
    ) -> Result<Job, crate::keys::KeyError> {
        if self.keys.kind() == KeyKind::Integer {
            return Ok(self.clone());
        }
        let keys = Keys::strings(saved)?;
        let mut ranges = Vec::new();
        for id in self.ids.iter() {
            if let Some(name) = self.keys.name(id) {
                let id = keys.intern(&name)?;
                ranges.push((id, id));
            }
        }
        Ok(Job {
            ids: IdSet::from_ranges(ranges),
            keys: Arc::new(keys),
            ..self.clone()
        })
    }

    /// Reads the job's metrics from a response body, in metric order.
    pub fn extract(&self, body: &[u8]) -> Result<Box<[f64]>, ExtractError> {
        extract::extract(&self.metrics, &self.paths, body)
    }
}

fn is_integer_field(metric: &Metric) -> bool {
    matches!(
        metric.source,
        Source::Field {
            kind: NumberKind::Integer,
            ..
        }
    )
}

/// String keys from a spec: `a, b, c` or `@file` (one per line, `#`
/// comments; relative paths from `dir`). Returns the ids (`0..n`) and the
/// interned keys.
fn string_keys(spec: &str, dir: &Path) -> Result<(IdSet, Keys), String> {
    let text;
    let names: Vec<&str> = match spec.trim().strip_prefix('@') {
        Some(file) => {
            let path = dir.join(file.trim());
            text = std::fs::read_to_string(&path)
                .map_err(|e| format!("cannot read the key list {}: {e}", path.display()))?;
            text.lines()
                .map(|l| l.split('#').next().unwrap_or("").trim())
                .filter(|l| !l.is_empty())
                .collect()
        }
        None => spec
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect(),
    };
    if names.is_empty() {
        return Err(format!("{spec:?} lists no key"));
    }
    let keys = Keys::strings(&names).map_err(|e| e.to_string())?;
    let ids = IdSet::from_ranges(vec![(0, keys.len() as u64 - 1)]);
    Ok((ids, keys))
}

/// Checks a URL template and splits it around its one `{id}`.
fn split_template(template: &str) -> Result<(String, String), String> {
    let mut parts = template.split("{id}");
    let (Some(prefix), Some(suffix), None) = (parts.next(), parts.next(), parts.next()) else {
        return Err(format!("{template:?} must contain `{{id}}` exactly once"));
    };
    let example = format!("{prefix}1{suffix}");
    let uri: hyper::Uri = example
        .parse()
        .map_err(|e| format!("{template:?} is not a valid URL: {e}"))?;
    check_http(&uri, template)?;
    if !prefix[uri.scheme_str().map_or(0, str::len) + 3..].contains('/') {
        return Err(format!("{template:?}: `{{id}}` must be in the path"));
    }
    Ok((prefix.to_owned(), suffix.to_owned()))
}

fn check_http(uri: &hyper::Uri, text: &str) -> Result<(), String> {
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => {
            return Err(format!(
                "{text:?}: https is not supported yet (trawler-crawl speaks plain HTTP/1.1)"
            ))
        }
        _ => return Err(format!("{text:?} must start with http://")),
    }
    if uri.authority().is_none() {
        return Err(format!("{text:?} has no host"));
    }
    Ok(())
}

/// `http://host:port` from a `--target`, which may end with `/` but carry no path.
fn base_url(target: &str) -> Result<String, String> {
    let uri: hyper::Uri = target
        .parse()
        .map_err(|e| format!("{target:?} is not a URL: {e}"))?;
    check_http(&uri, target)?;
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(format!(
            "{target:?} must be a base URL like http://host:port, without a path"
        ));
    }
    Ok(target.trim_end_matches('/').to_owned())
}

/// Turns a toml error into one naming the line, the key and its table.
fn syntax_error(file: &str, text: &str, e: &toml::de::Error) -> JobError {
    let message = e.message().trim().to_owned();
    let Some(span) = e.span() else {
        return JobError::Syntax {
            file: file.to_owned(),
            line: 1,
            message,
        };
    };
    let start = span.start.min(text.len());
    let line = text[..start].matches('\n').count() + 1;
    let line_text = text.lines().nth(line - 1).unwrap_or("").trim();
    // The table the error is in: the last header above (or on) its line.
    let header_of = |l: &str| {
        let l = l.trim();
        l.starts_with('[')
            .then(|| l.trim_matches(|c| c == '[' || c == ']').trim().to_owned())
    };
    let mut table = text
        .lines()
        .take(line)
        .filter_map(header_of)
        .last()
        .unwrap_or_default();
    if header_of(line_text).is_some() && message.starts_with("unknown field") {
        // The unknown key is a table header: it belongs to the parent table.
        table = table
            .rsplit_once('.')
            .map(|(parent, _)| parent.to_owned())
            .unwrap_or_default();
    }
    let where_ = if table.is_empty() {
        "at the top level".to_owned()
    } else {
        format!("in [{table}]")
    };
    let message = if let Some(rest) = message.strip_prefix("unknown field ") {
        match rest.split_once(", expected ") {
            Some((key, expected)) => format!("unknown key {key} {where_} (expected {expected})"),
            None => format!("unknown key {rest} {where_}"),
        }
    } else if let Some(rest) = message.strip_prefix("missing field ") {
        format!("missing key {rest} {where_}")
    } else if let Some((key, _)) = line_text
        .split_once('=')
        .filter(|_| header_of(line_text).is_none())
    {
        let key = key.trim();
        let path = if table.is_empty() {
            key.to_owned()
        } else {
            format!("{table}.{key}")
        };
        format!("{path}: {message}")
    } else {
        message
    };
    JobError::Syntax {
        file: file.to_owned(),
        line,
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOCKSTAGRAM: &str = include_str!("../../../../jobs/mockstagram.toml");

    fn config(text: &str) -> Result<JobConfig, JobError> {
        JobConfig::from_toml(text, "job.toml")
    }

    #[test]
    fn the_shipped_mockstagram_job_builds() {
        let job = config(MOCKSTAGRAM).unwrap().build().unwrap();
        assert_eq!(job.name(), "influencers");
        assert_eq!(job.ids().len(), 1_000_000);
        assert_eq!(job.interval(), Duration::from_secs(60));
        assert_eq!(
            job.metric_names().collect::<Vec<_>>(),
            ["followerCount", "followingCount", "followerRatio"]
        );
        assert_eq!(
            job.url_for(1_000_000),
            "http://127.0.0.1:3000/api/v1/influencers/1000000"
        );
        assert_eq!(job.not_found().equals, "InfluencerNotFoundError");
        assert_eq!(job.http().retries, 2);
    }

    fn syntax(text: &str) -> String {
        config(text).unwrap_err().to_string()
    }

    #[test]
    fn unknown_keys_are_named_with_file_line_and_table() {
        let text = MOCKSTAGRAM.replacen("interval =", "intervl =", 1);
        let e = syntax(&text);
        assert!(e.starts_with("job.toml:"), "{e}");
        assert!(
            e.contains("unknown key `intervl` in [job] (expected one of"),
            "{e}"
        );
        let e = syntax(&format!("{MOCKSTAGRAM}\n[http2]\nx = 1\n"));
        assert!(e.contains("unknown key `http2` at the top level"), "{e}");
        let e = syntax(&format!(
            "{MOCKSTAGRAM}\n[[field]]\nmetric = \"a\"\npointr = \"/a\"\n"
        ));
        assert!(e.contains("unknown key `pointr` in [field]"), "{e}");
        let e = syntax("[job]\nname = \"x\"\n");
        assert!(e.contains("missing key `url` in [job]"), "{e}");
        let e = syntax(&MOCKSTAGRAM.replacen("retries = 2", "retries = \"two\"", 1));
        assert!(e.contains(": http.retries: invalid type"), "{e}");
    }

    fn invalid(edit: impl Fn(&mut JobConfig)) -> String {
        let mut c = config(MOCKSTAGRAM).unwrap();
        edit(&mut c);
        c.build().unwrap_err().to_string()
    }

    #[test]
    fn bad_values_name_the_key() {
        assert_eq!(
            invalid(|c| c.job.interval = "6o s".into()),
            r#"job.toml: job.interval: invalid duration "6o s": unknown unit (expected ms, s, m, h, d)"#
        );
        assert!(invalid(|c| c.job.interval = "1ms".into()).starts_with("job.toml: job.interval:"));
        assert!(
            invalid(|c| c.job.ids = "1..0".into()).starts_with("job.toml: job.ids: invalid id set")
        );
        assert!(invalid(|c| c.job.url = "http://h/x".into()).contains("exactly once"));
        assert!(invalid(|c| c.job.url = "https://h/{id}".into()).contains("https is not supported"));
        assert!(invalid(|c| c.job.url = "http://h{id}".into()).starts_with("job.toml: job.url:"));
        assert!(invalid(|c| c.job.name = "a b".into()).starts_with("job.toml: job.name:"));
        let reserved = invalid(|c| c.job.name = "query".into());
        assert!(
            reserved.starts_with("job.toml: job.name:") && reserved.contains("reserved"),
            "{reserved}"
        );
        assert!(invalid(|c| c.http.backoff = "soon".into()).starts_with("job.toml: http.backoff:"));
        assert!(invalid(|c| c.http.max_in_flight = 0).starts_with("job.toml: http.max_in_flight:"));
        assert!(invalid(|c| c.http.request_timeout = "0s".into())
            .starts_with("job.toml: http.request_timeout:"));
        assert!(invalid(|c| {
            c.http.headers.insert("bad header".into(), "x".into());
        })
        .starts_with("job.toml: http.headers.bad header:"));
        assert!(
            invalid(|c| c.derived[0].formula = "followerCount / likes".into())
                .starts_with("job.toml: derived[0].formula:")
        );
        assert!(invalid(|c| c.fields[1].metric = "followerCount".into()).contains("defined twice"));
        assert!(invalid(|c| c.fields[0].pointer = "followerCount".into())
            .starts_with("job.toml: field[0].pointer:"));
        assert!(invalid(|c| c.not_found.status = 42).starts_with("job.toml: not_found.status:"));
    }

    #[test]
    fn overrides_replace_keys_and_errors_name_the_flag() {
        let c = config(MOCKSTAGRAM).unwrap();
        let job = c
            .build_with(&Overrides {
                target: Some("http://192.168.1.9:8000/".into()),
                ids: Some("1000000..1000100,1500000".into()),
                interval: Some("500ms".into()),
                overload: Some("skip".into()),
            })
            .unwrap();
        assert_eq!(job.overload(), Overload::Skip);
        assert_eq!(c.build().unwrap().overload(), Overload::Stretch);
        assert_eq!(
            job.url_for(7),
            "http://192.168.1.9:8000/api/v1/influencers/7"
        );
        assert_eq!(job.ids().len(), 101);
        assert_eq!(job.interval(), Duration::from_millis(500));

        let err = |o: Overrides| c.build_with(&o).unwrap_err().to_string();
        assert!(err(Overrides {
            ids: Some("x".into()),
            ..Overrides::default()
        })
        .starts_with("command line: --ids: invalid id set"));
        assert!(err(Overrides {
            interval: Some("1 minute".into()),
            ..Overrides::default()
        })
        .starts_with("command line: --interval: invalid duration"));
        assert!(err(Overrides {
            overload: Some("drop".into()),
            ..Overrides::default()
        })
        .starts_with("command line: --overload: \"drop\" is not a policy"));
        assert!(err(Overrides {
            target: Some("http://h:1/api".into()),
            ..Overrides::default()
        })
        .contains("without a path"));
        assert!(err(Overrides {
            target: Some("localhost:3000".into()),
            ..Overrides::default()
        })
        .starts_with("command line: --target:"));
    }

    #[test]
    fn load_names_a_missing_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nope.toml");
        let e = JobConfig::load(&path).unwrap_err().to_string();
        assert!(e.contains("nope.toml: cannot read"), "{e}");
        std::fs::write(&path, MOCKSTAGRAM).unwrap();
        assert!(JobConfig::load(&path)
            .unwrap()
            .source
            .ends_with("nope.toml"));
    }
}
