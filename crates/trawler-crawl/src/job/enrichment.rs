//! `[[enrichment]]`: a slow question asked about every entity once per
//! period, declared in the job file (the flagship's is Mockstagram's
//! `is_suspicious`). The crawler does not run enrichments — `trawler-enrich`
//! does — but the job file is read and checked here, in one place, so a
//! mistake in an enrichment is reported with the file and the key like any
//! other.
//!
//! The request body is a JSON object built per entity from a template whose
//! values name where each member comes from:
//!
//! ```toml
//! [enrichment.body]
//! pk = "{key}"                       # the entity's key (number or string)
//! username = "{label}"               # its label, if the job has one
//! followerCount = "{followerCount}"  # its latest value of a metric
//! source = "trawler"                 # anything else: this text as is
//! ```

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use super::{duration, Metric};

/// `[[enrichment]]` as written.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrichmentSection {
    /// Names the answer: the stored series, the entity's flag in the API
    /// (`suspicious`), its list (`/api/v1/{job}/suspicious`) and count.
    pub name: String,
    /// Where to POST: a path on the target (`/api/v1/influencers/is_suspicious`,
    /// following `--target`) or an absolute `http://` URL.
    pub url: String,
    /// Each entity is asked once per period (default `24h`).
    #[serde(default = "default_period")]
    pub period: String,
    /// Per-call timeout (default `15s`).
    #[serde(default = "default_timeout")]
    pub timeout: String,
    /// Calls in flight at most: the enrichment's own budget (default 256).
    #[serde(default = "default_in_flight")]
    pub max_in_flight: usize,
    /// Retries of a failed call (default 3).
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// First wait between retries, doubled each time (default `1s`).
    #[serde(default = "default_backoff")]
    pub backoff: String,
    /// When retries are exhausted, ask again after this (default `10m`).
    #[serde(default = "default_retry_later")]
    pub retry_later: String,
    /// JSON pointer to the boolean answer (e.g. `/suspicious`).
    pub answer: String,
    /// The request body's members (see the module docs).
    #[serde(default)]
    pub body: BTreeMap<String, String>,
}

fn default_period() -> String {
    "24h".into()
}
fn default_timeout() -> String {
    "15s".into()
}
fn default_in_flight() -> usize {
    256
}
fn default_retries() -> u32 {
    3
}
fn default_backoff() -> String {
    "1s".into()
}
fn default_retry_later() -> String {
    "10m".into()
}

/// A checked `[[enrichment]]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Enrichment {
    /// See [`EnrichmentSection::name`].
    pub name: String,
    /// Absolute URL (a path in the file is resolved on the target).
    pub url: String,
    /// See [`EnrichmentSection::period`].
    pub period: Duration,
    /// See [`EnrichmentSection::timeout`].
    pub timeout: Duration,
    /// See [`EnrichmentSection::max_in_flight`].
    pub max_in_flight: usize,
    /// See [`EnrichmentSection::retries`].
    pub retries: u32,
    /// See [`EnrichmentSection::backoff`].
    pub backoff: Duration,
    /// See [`EnrichmentSection::retry_later`].
    pub retry_later: Duration,
    /// See [`EnrichmentSection::answer`].
    pub answer: String,
    /// The body's members in name order.
    pub body: Vec<(String, BodyPart)>,
}

/// Where a member of an enrichment's request body comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyPart {
    /// `{key}`: the entity's key, a number or a string.
    Key,
    /// `{label}`: the entity's label (left out when the job has none).
    Label,
    /// `{metric}`: the latest value of the metric at this position in the
    /// job's metrics; no body is sent before the entity has one.
    Metric(usize),
    /// Any other text, sent as a JSON string.
    Text(String),
}

impl EnrichmentSection {
    /// Checks the section (the `index`-th) against the job's metrics; `base`
    /// is the target's `http://host:port`. Errors are `(key, message)`.
    pub(super) fn check(
        &self,
        index: usize,
        metrics: &[Metric],
        base: &str,
    ) -> Result<Enrichment, (String, String)> {
        let key = |k: &str| format!("enrichment[{index}].{k}");
        let fail = |k: &str, m: String| (key(k), m);
        let name = self.name.trim();
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(fail(
                "name",
                format!("{name:?} must be ASCII letters, digits or '_' (it names an API path and a series)"),
            ));
        }
        if metrics.iter().any(|m| m.name == name) {
            return Err(fail("name", format!("{name:?} is already a metric")));
        }
        let url = if self.url.starts_with('/') {
            format!("{base}{}", self.url)
        } else {
            self.url.clone()
        };
        let uri: hyper::Uri = url
            .parse()
            .map_err(|e| fail("url", format!("{url:?} is not a URL: {e}")))?;
        super::check_http(&uri, &url).map_err(|m| fail("url", m))?;
        let duration = |k: &str, text: &str| {
            duration::parse(text)
                .map_err(|why| fail(k, format!("invalid duration {text:?}: {why}")))
        };
        let period = duration("period", &self.period)?;
        if period.is_zero() || period > Duration::from_secs(49 * 86_400) {
            return Err(fail("period", format!("{period:?} is outside 1ms..=49d")));
        }
        let timeout = duration("timeout", &self.timeout)?;
        if timeout.is_zero() {
            return Err(fail("timeout", "must be more than 0".into()));
        }
        if self.max_in_flight == 0 {
            return Err(fail("max_in_flight", "must be at least 1".into()));
        }
        if self.retries > 10 {
            return Err(fail("retries", format!("{} is more than 10", self.retries)));
        }
        if !self.answer.starts_with('/') {
            return Err(fail(
                "answer",
                format!("{:?} is not a JSON pointer (e.g. /suspicious)", self.answer),
            ));
        }
        let body = self
            .body
            .iter()
            .map(|(member, source)| {
                let part = match source.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                    Some("key") => BodyPart::Key,
                    Some("label") => BodyPart::Label,
                    // The body is built from the live views, which hold
                    // the integer fields.
                    Some(metric) => BodyPart::Metric(
                        metrics
                            .iter()
                            .position(|m| m.name == metric && super::is_integer_field(m))
                            .ok_or_else(|| {
                                fail(
                                    &format!("body.{member}"),
                                    format!(
                                        "{source:?} names no integer field: use {{key}}, {{label}} or one of {:?}",
                                        metrics
                                            .iter()
                                            .filter(|m| super::is_integer_field(m))
                                            .map(|m| m.name.as_str())
                                            .collect::<Vec<_>>()
                                    ),
                                )
                            })?,
                    ),
                    None => BodyPart::Text(source.clone()),
                };
                Ok((member.clone(), part))
            })
            .collect::<Result<_, (String, String)>>()?;
        Ok(Enrichment {
            name: name.to_owned(),
            url,
            period,
            timeout,
            max_in_flight: self.max_in_flight,
            retries: self.retries,
            backoff: duration("backoff", &self.backoff)?,
            retry_later: duration("retry_later", &self.retry_later)?,
            answer: self.answer.clone(),
            body,
        })
    }
}
