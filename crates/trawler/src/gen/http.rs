//! The HTTP sink: POST NDJSON batches to a stream job's endpoint over a few
//! keep-alive connections.
//!
//! At most `--connections` requests are in flight, so the pool holds that
//! many connections and the producer waits when all are busy. A `503` or
//! `429` is the job asking to slow down: the batch is sent again after its
//! `Retry-After` (or a backoff from 100 ms to 5 s), however long that takes.
//! Any other answer but 2xx loses the batch and is counted and reported
//! with the error the body gives; so is a batch whose connection failed
//! five times in a row.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{
    HeaderMap, HeaderValue, AUTHORIZATION, CONTENT_ENCODING, CONTENT_TYPE, RETRY_AFTER,
};
use hyper::{Request, StatusCode, Uri};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use tokio::sync::Semaphore;
use trawler_common::http::ClientSettings;

use super::sink::{Options, Report, Sink};

/// Errors printed in full; later ones are only counted.
const ERRORS_SHOWN: u64 = 10;
/// Connection failures in a row before a batch is given up.
const CONNECT_ATTEMPTS: u32 = 5;

/// Counters shared by the request tasks.
#[derive(Debug, Default)]
struct Counts {
    delivered: AtomicU64,
    errors: AtomicU64,
}

/// Posts batches; see the module docs.
pub struct HttpSink {
    runtime: tokio::runtime::Runtime,
    client: Client<HttpConnector, Full<Bytes>>,
    uri: Uri,
    gzip: bool,
    authorization: Option<HeaderValue>,
    /// One permit per request in flight.
    slots: Arc<Semaphore>,
    connections: usize,
    counts: Arc<Counts>,
    generated: u64,
}

impl HttpSink {
    /// A sink posting to `url`.
    pub fn new(url: &str, options: &Options) -> anyhow::Result<Self> {
        let uri: Uri = url.parse().with_context(|| format!("--out {url:?}"))?;
        let authorization = options
            .token
            .as_deref()
            .map(|t| {
                let mut v = HeaderValue::from_str(&format!("Bearer {t}"))
                    .context("--token: not a valid header value")?;
                v.set_sensitive(true);
                anyhow::Ok(v)
            })
            .transpose()?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .context("starting the tokio runtime")?;
        let client = {
            let _inside = runtime.enter();
            ClientSettings {
                max_idle_per_host: options.connections,
                ..ClientSettings::new(Duration::from_secs(5))
            }
            .build()
        };
        Ok(Self {
            runtime,
            client,
            uri,
            gzip: options.gzip,
            authorization,
            slots: Arc::new(Semaphore::new(options.connections)),
            connections: options.connections,
            counts: Arc::new(Counts::default()),
            generated: 0,
        })
    }
}

impl Sink for HttpSink {
    fn send(&mut self, batch: Vec<u8>, events: usize) -> anyhow::Result<()> {
        let slot = self
            .runtime
            .block_on(self.slots.clone().acquire_owned())
            .context("the request slots closed")?;
        self.generated += events as u64;
        let post = Post {
            client: self.client.clone(),
            uri: self.uri.clone(),
            gzip: self.gzip,
            authorization: self.authorization.clone(),
            counts: self.counts.clone(),
        };
        self.runtime.spawn(async move {
            post.send(batch, events as u64).await;
            drop(slot);
        });
        Ok(())
    }

    fn finish(self: Box<Self>) -> anyhow::Result<Report> {
        // Every request has finished once every slot is free again.
        let all = self.connections as u32;
        self.runtime
            .block_on(self.slots.acquire_many(all))
            .context("the request slots closed")?
            .forget();
        Ok(Report {
            generated: self.generated,
            delivered: self.counts.delivered.load(Ordering::Relaxed),
            errors: Some(("http_errors", self.counts.errors.load(Ordering::Relaxed))),
        })
    }
}

/// One batch's request, retried as the module docs say.
struct Post {
    client: Client<HttpConnector, Full<Bytes>>,
    uri: Uri,
    gzip: bool,
    authorization: Option<HeaderValue>,
    counts: Arc<Counts>,
}

impl Post {
    async fn send(self, batch: Vec<u8>, events: u64) {
        let body = if self.gzip {
            match gzip(&batch) {
                Ok(b) => Bytes::from(b),
                Err(e) => return self.error(format!("gzip: {e}")),
            }
        } else {
            Bytes::from(batch)
        };
        let mut backoff = Duration::from_millis(100);
        let mut failed_connects = 0;
        loop {
            let mut request =
                Request::post(self.uri.clone()).header(CONTENT_TYPE, "application/x-ndjson");
            if self.gzip {
                request = request.header(CONTENT_ENCODING, "gzip");
            }
            if let Some(a) = &self.authorization {
                request = request.header(AUTHORIZATION, a.clone());
            }
            let request = request
                .body(Full::new(body.clone()))
                .expect("a request from a parsed URI");
            let wait = match self.client.request(request).await {
                Ok(response) if response.status().is_success() => {
                    // Read the body so the connection goes back to the pool.
                    let _ = response.into_body().collect().await;
                    self.counts.delivered.fetch_add(events, Ordering::Relaxed);
                    return;
                }
                Ok(response)
                    if response.status() == StatusCode::SERVICE_UNAVAILABLE
                        || response.status() == StatusCode::TOO_MANY_REQUESTS =>
                {
                    let wait = retry_after(response.headers()).unwrap_or(backoff);
                    let _ = response.into_body().collect().await;
                    failed_connects = 0;
                    wait
                }
                Ok(response) => {
                    let status = response.status();
                    let body = match response.into_body().collect().await {
                        Ok(b) => b.to_bytes(),
                        Err(_) => Bytes::new(),
                    };
                    return self.error(format!("{status}: {}", error_message(&body)));
                }
                Err(e) => {
                    failed_connects += 1;
                    if failed_connects >= CONNECT_ATTEMPTS {
                        return self.error(format!("{}: {e:#}", self.uri));
                    }
                    backoff
                }
            };
            tokio::time::sleep(wait).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }

    fn error(&self, what: String) {
        let n = self.counts.errors.fetch_add(1, Ordering::Relaxed);
        if n < ERRORS_SHOWN {
            eprintln!("gen: batch lost: {what}");
        } else if n == ERRORS_SHOWN {
            eprintln!("gen: more batches lost; counting them only");
        }
    }
}

fn gzip(bytes: &[u8]) -> std::io::Result<Vec<u8>> {
    use std::io::Write;
    let mut gz = flate2::write::GzEncoder::new(
        Vec::with_capacity(bytes.len() / 4),
        flate2::Compression::fast(),
    );
    gz.write_all(bytes)?;
    gz.finish()
}

/// `Retry-After` as seconds or an HTTP date.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(
        at.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

/// The message of trawler's `{"error":{"code","message"}}` (or of
/// `{"error":"…"}`), else the body itself, shortened.
fn error_message(body: &[u8]) -> String {
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) {
        let e = &v["error"];
        if let Some(m) = e["message"].as_str().or(e.as_str()) {
            return m.to_owned();
        }
    }
    let text = String::from_utf8_lossy(body);
    text.chars().take(200).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        let mut h = HeaderMap::new();
        assert_eq!(retry_after(&h), None);
        h.insert(RETRY_AFTER, "3".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(3)));
        h.insert(
            RETRY_AFTER,
            "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap(),
        );
        assert_eq!(retry_after(&h), Some(Duration::ZERO));
    }

    #[test]
    fn error_messages_come_from_the_body() {
        assert_eq!(
            error_message(br#"{"error":{"code":"bad_event","message":"line 3: no ts"}}"#),
            "line 3: no ts"
        );
        assert_eq!(error_message(br#"{"error":"nope"}"#), "nope");
        assert_eq!(error_message(b"plain"), "plain");
    }
}
