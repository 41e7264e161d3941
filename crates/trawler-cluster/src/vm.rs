//! VictoriaMetrics: the storage writer that drains the stream into it, and
//! the reads the API needs (raw export, range queries, instant queries).
//!
//! Series are named `<metric>{job="<job>",<key>="<key>"}` ([`Naming`]: the
//! job file names the key label, e.g. Mockstagram's `pk`). Writers share one
//! durable pull consumer, so each batch goes to one writer; a batch is
//! acked only after VictoriaMetrics answered its import with 2xx. When the
//! import fails, the batch is negatively acked with a delay and comes back;
//! the stream holds the backlog meanwhile. A batch imported twice (a writer
//! died between the import and the ack) writes the same points twice, which
//! VictoriaMetrics keeps once when started with `-dedup.minScrapeInterval`
//! (the scripts and tests start it with `1ms`).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer, AckKind};
use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use trawler_common::http::ClientSettings;

use crate::stream::{self, Message};
use crate::{Cluster, Error};

/// A VictoriaMetrics server.
#[derive(Clone)]
pub struct VmClient {
    base: String,
    client: Client<HttpConnector, Full<Bytes>>,
}

/// One series of an instant query: its labels and value.
pub type Labelled = (serde_json::Map<String, serde_json::Value>, f64);

impl VmClient {
    /// A client of the server at `url` (`http://host:port`).
    pub fn new(url: &str) -> Result<Self, Error> {
        let base = url.trim_end_matches('/').to_owned();
        if !base.starts_with("http://") || base.len() <= "http://".len() {
            return Err(Error::Config {
                key: "store",
                reason: format!("victoriametrics={url}: expected http://host:port"),
            });
        }
        let client = ClientSettings {
            idle_timeout: Duration::from_secs(30),
            ..ClientSettings::new(Duration::from_secs(2))
        }
        .build();
        Ok(Self { base, client })
    }

    /// The server's base URL.
    pub fn url(&self) -> &str {
        &self.base
    }

    fn err(&self, detail: impl std::fmt::Display) -> Error {
        Error::Vm {
            url: self.base.clone(),
            detail: detail.to_string(),
        }
    }

    async fn call(&self, method: hyper::Method, path: &str, body: Bytes) -> Result<Bytes, Error> {
        let request = hyper::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .body(Full::new(body))
            .map_err(|e| self.err(e))?;
        let response = tokio::time::timeout(Duration::from_secs(30), async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| self.err(e))?;
            let status = response.status();
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|e| self.err(e))?
                .to_bytes();
            Ok::<_, Error>((status, body))
        })
        .await
        .map_err(|_| self.err("no answer within 30 s"))??;
        let (status, body) = response;
        if !status.is_success() {
            return Err(self.err(format!(
                "{status}: {}",
                String::from_utf8_lossy(&body[..body.len().min(300)])
            )));
        }
        Ok(body)
    }

    async fn get(&self, path: &str) -> Result<Bytes, Error> {
        self.call(hyper::Method::GET, path, Bytes::new()).await
    }

    /// A GET whose answer is one JSON document; `what` names it in errors.
    async fn get_json(&self, path: &str, what: &str) -> Result<serde_json::Value, Error> {
        let body = self.get(path).await?;
        serde_json::from_slice(&body).map_err(|e| self.err(format!("{what}: {e}")))
    }

    /// Imports JSON lines (`/api/v1/import` format).
    pub async fn import(&self, lines: Bytes) -> Result<(), Error> {
        self.call(hyper::Method::POST, "/api/v1/import", lines)
            .await
            .map(|_| ())
    }

    /// Raw points of the series matching `selector` in `[from_ms, to_ms]`,
    /// merged and sorted by time.
    pub async fn export(
        &self,
        selector: &str,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<(i64, f64)>, Error> {
        let path = format!(
            "/api/v1/export?match[]={}&start={}&end={}",
            encode(selector),
            seconds(from_ms),
            seconds(to_ms)
        );
        let body = self.get(&path).await?;
        let mut points = Vec::new();
        for line in body.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            let series: serde_json::Value =
                serde_json::from_slice(line).map_err(|e| self.err(format!("export: {e}")))?;
            let (Some(values), Some(ts)) =
                (series["values"].as_array(), series["timestamps"].as_array())
            else {
                continue;
            };
            for (v, t) in values.iter().zip(ts) {
                if let (Some(v), Some(t)) = (v.as_f64(), t.as_i64()) {
                    if (from_ms..=to_ms).contains(&t) {
                        points.push((t, v));
                    }
                }
            }
        }
        points.sort_by_key(|p| p.0);
        points.dedup_by_key(|p| p.0);
        Ok(points)
    }

    /// The first series of a range query, as `(unix ms, value)` points.
    pub async fn query_range(
        &self,
        query: &str,
        from_ms: i64,
        to_ms: i64,
        step_ms: i64,
    ) -> Result<Vec<(i64, f64)>, Error> {
        let path = format!(
            "/api/v1/query_range?query={}&start={}&end={}&step={}ms",
            encode(query),
            seconds(from_ms),
            seconds(to_ms),
            step_ms.max(1)
        );
        let doc = self.get_json(&path, "query_range").await?;
        let mut points = Vec::new();
        if let Some(values) = doc["data"]["result"][0]["values"].as_array() {
            for pair in values {
                let t = pair[0].as_f64().unwrap_or(0.0);
                if let Some(v) = pair[1].as_str().and_then(|v| v.parse::<f64>().ok()) {
                    if v.is_finite() {
                        points.push(((t * 1e3).round() as i64, v));
                    }
                }
            }
        }
        Ok(points)
    }

    /// An instant query's series, now.
    pub async fn query(&self, query: &str) -> Result<Vec<Labelled>, Error> {
        self.instant(format!("/api/v1/query?query={}", encode(query)))
            .await
    }

    /// An instant query's series at `at_ms` (unix ms).
    pub async fn query_at(&self, query: &str, at_ms: i64) -> Result<Vec<Labelled>, Error> {
        self.instant(format!(
            "/api/v1/query?query={}&time={}",
            encode(query),
            seconds(at_ms)
        ))
        .await
    }

    async fn instant(&self, path: String) -> Result<Vec<Labelled>, Error> {
        let doc = self.get_json(&path, "query").await?;
        let mut out = Vec::new();
        if let Some(result) = doc["data"]["result"].as_array() {
            for series in result {
                let labels = series["metric"].as_object().cloned().unwrap_or_default();
                if let Some(v) = series["value"][1].as_str().and_then(|v| v.parse().ok()) {
                    out.push((labels, v));
                }
            }
        }
        Ok(out)
    }
}

fn seconds(ms: i64) -> String {
    format!("{}.{:03}", ms.div_euclid(1000), ms.rem_euclid(1000))
}

/// Percent-encodes a query-string value.
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// Writes an entity's key (the text of id `u64`) into a buffer.
pub type KeyWriter = Arc<dyn Fn(u64, &mut String) + Send + Sync>;

/// How a job's series are labelled: `job`, and the key under the job's
/// key name with the key's text (a number, or an interned string's text,
/// so a Grafana user sees the entity's real key).
#[derive(Clone)]
pub struct Naming {
    /// The job's name (`job` label).
    pub job: String,
    /// The key's label name (`pk`).
    pub key_label: String,
    /// The key's text.
    pub key: KeyWriter,
}

impl Naming {
    /// Integer keys under `key_label`.
    pub fn integers(job: &str, key_label: &str) -> Self {
        Self {
            job: job.to_owned(),
            key_label: key_label.to_owned(),
            key: Arc::new(|id, out| {
                let _ = write!(out, "{id}");
            }),
        }
    }

    /// The selector of one entity's metric.
    pub fn selector(&self, metric: &str, id: u64) -> String {
        let mut key = String::new();
        (self.key)(id, &mut key);
        format!(
            "{metric}{{job={},{}={}}}",
            serde_json::Value::from(self.job.as_str()),
            self.key_label,
            serde_json::Value::from(key)
        )
    }
}

/// Appends the import lines of one stream message.
fn import_lines(naming: &Naming, message: &Message, out: &mut String) -> usize {
    let mut n = 0;
    let job = serde_json::Value::from(naming.job.as_str());
    let label = serde_json::Value::from(naming.key_label.as_str());
    let mut key = String::new();
    let mut line = |metric: &str, id: u64, ts: i64, v: f64| {
        key.clear();
        (naming.key)(id, &mut key);
        let _ = writeln!(
            out,
            "{{\"metric\":{{\"__name__\":{},\"job\":{job},{label}:{}}},\"values\":[{v}],\"timestamps\":[{ts}]}}",
            serde_json::Value::from(metric),
            serde_json::Value::from(key.as_str()),
        );
        n += 1;
    };
    match message {
        Message::Observations(batch) => {
            for row in &batch.rows {
                for (metric, v) in batch.metrics.iter().zip(&row.2) {
                    if let Some(v) = v.filter(|v| v.is_finite()) {
                        line(metric, row.0, row.1, v);
                    }
                }
            }
        }
        Message::Verdicts(verdicts) => {
            for row in &verdicts.rows {
                line(
                    &verdicts.metric,
                    row.0,
                    row.2,
                    if row.1 { 1.0 } else { 0.0 },
                );
            }
        }
    }
    n
}

/// Counters of a storage writer.
#[derive(Debug, Default)]
pub struct WriterMetrics {
    /// Samples imported into VictoriaMetrics.
    pub samples: AtomicU64,
    /// Stream messages acked after their import.
    pub messages: AtomicU64,
    /// Imports that failed (their messages come back later).
    pub failures: AtomicU64,
    /// Messages still to import, as last seen on the consumer.
    pub backlog: AtomicU64,
}

/// Drains a job's subjects into VictoriaMetrics. When `stop` fires it
/// finishes what is pending (until a fetch comes back empty) and returns.
/// Every node may run one; they share the durable consumer `vm-<job>`.
pub async fn run_writer(
    cluster: Cluster,
    vm: VmClient,
    naming: Naming,
    metrics: Arc<WriterMetrics>,
    stop: trawler_common::shutdown::Shutdown,
) -> Result<(), Error> {
    let stream = cluster
        .js
        .get_stream(stream::STREAM)
        .await
        .map_err(|e| Error::nats("opening the stream", e))?;
    let job = naming.job.clone();
    let name = format!("vm-{job}");
    let consumer: consumer::PullConsumer = stream
        .get_or_create_consumer(
            &name,
            consumer::pull::Config {
                durable_name: Some(name.clone()),
                filter_subject: stream::job_filter(&job),
                ack_policy: consumer::AckPolicy::Explicit,
                ack_wait: Duration::from_secs(30),
                max_ack_pending: 20_000,
                deliver_policy: consumer::DeliverPolicy::All,
                ..Default::default()
            },
        )
        .await
        .map_err(|e| Error::nats("creating the writers' consumer", e))?;
    let mut backoff = Duration::from_millis(200);
    loop {
        let messages = match fetch(&consumer).await {
            Ok(m) => m,
            Err(e) => {
                if stop.is_triggered() {
                    return Ok(());
                }
                tracing::warn!(error = %e, "fetching from the stream failed");
                tokio::time::sleep(backoff).await;
                continue;
            }
        };
        if messages.is_empty() {
            // Asked to stop: leave once what was published is written.
            if stop.is_triggered() {
                return Ok(());
            }
            if let Ok(info) = consumer.clone().info().await {
                metrics.backlog.store(
                    info.num_pending + info.num_ack_pending as u64,
                    Ordering::Relaxed,
                );
            }
            continue;
        }
        let mut body = String::with_capacity(messages.len() * 4_096);
        let mut samples = 0;
        for m in &messages {
            match stream::decode(m.subject.as_str(), &m.payload) {
                Some(decoded) => samples += import_lines(&naming, &decoded, &mut body),
                None => tracing::warn!(subject = %m.subject, "malformed stream message skipped"),
            }
        }
        match vm.import(Bytes::from(body)).await {
            Ok(()) => {
                for m in &messages {
                    if let Err(e) = m.ack().await {
                        tracing::warn!(error = %e, "ack failed; the batch will be imported again");
                    }
                }
                metrics.samples.fetch_add(samples as u64, Ordering::Relaxed);
                metrics
                    .messages
                    .fetch_add(messages.len() as u64, Ordering::Relaxed);
                backoff = Duration::from_millis(200);
            }
            Err(e) => {
                metrics.failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, messages = messages.len(), "import failed; the stream keeps the batch");
                for m in &messages {
                    let _ = m.ack_with(AckKind::Nak(Some(backoff))).await;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

async fn fetch(consumer: &consumer::PullConsumer) -> Result<Vec<jetstream::Message>, Error> {
    let mut batch = consumer
        .fetch()
        .max_messages(256)
        .expires(Duration::from_secs(1))
        .messages()
        .await
        .map_err(|e| Error::nats("fetching", e))?;
    let mut out = Vec::new();
    while let Some(m) = batch.next().await {
        out.push(m.map_err(|e| Error::nats("fetching", e))?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stream::{Batch, Row, VerdictRow, Verdicts};

    #[test]
    fn import_lines_name_every_sample() {
        let mut out = String::new();
        let naming = Naming::integers("influencers", "pk");
        let n = import_lines(
            &naming,
            &Message::Observations(Batch {
                node: "a".into(),
                metrics: vec!["followerCount".into(), "followingCount".into()],
                rows: vec![Row(7, 60_000, vec![Some(10.0), None])],
            }),
            &mut out,
        );
        let n2 = import_lines(
            &naming,
            &Message::Verdicts(Verdicts {
                metric: "suspicious".into(),
                rows: vec![VerdictRow(7, true, 61_000)],
            }),
            &mut out,
        );
        assert_eq!((n, n2), (1, 1));
        let lines: Vec<serde_json::Value> = out
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines[0]["metric"]["__name__"], "followerCount");
        assert_eq!(lines[0]["metric"]["pk"], "7");
        assert_eq!(lines[0]["timestamps"][0], 60_000);
        assert_eq!(lines[1]["values"][0], 1.0);
    }

    #[test]
    fn query_values_are_percent_encoded() {
        assert_eq!(encode("a{b=\"c\"} d"), "a%7Bb%3D%22c%22%7D%20d");
        assert_eq!(seconds(1_234), "1.234");
    }
}
