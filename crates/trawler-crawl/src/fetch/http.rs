//! The real fetcher: hyper-util's pooled HTTP/1.1 client.
//!
//! One client per crawl, keep-alive connections reused across requests (a
//! new TCP connection per request would cost the target more than the
//! request), `TCP_NODELAY`, a connect timeout, and a cap on the body size so
//! a misbehaving target cannot make the crawler buffer without bound.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::header::{HeaderName, HeaderValue};
use hyper::Request;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use trawler_common::http::ClientSettings;

use super::{Fetch, Response, TransportError};
use crate::job::Job;

/// Largest body read; larger answers fail as a transport error.
const MAX_BODY: usize = 1 << 20;

/// A fetcher that could not be built from a job.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// The job's URL does not make a valid request URI.
    #[error("URL {url:?} is not a valid request URI: {reason}")]
    Url {
        /// The URL for a sample id.
        url: String,
        /// Why.
        reason: String,
    },
}

/// Fetches ids over HTTP/1.1 with a pooled keep-alive client.
#[derive(Debug, Clone)]
pub struct HttpFetcher {
    client: Client<HttpConnector, Empty<Bytes>>,
    job: Job,
    headers: Vec<(HeaderName, HeaderValue)>,
}

impl HttpFetcher {
    /// A fetcher for `job`'s URL template and HTTP settings. Must be called
    /// inside a tokio runtime (the pool spawns its connection tasks there).
    pub fn new(job: &Job) -> Result<Self, BuildError> {
        let sample = job.url_for(0);
        sample.parse::<hyper::Uri>().map_err(|e| BuildError::Url {
            url: sample.clone(),
            reason: e.to_string(),
        })?;
        let http = job.http();
        let client = ClientSettings {
            tcp_keepalive: Some(Duration::from_secs(60)),
            max_idle_per_host: http.max_connections,
            ..ClientSettings::new(http.connect_timeout)
        }
        .build();
        Ok(Self {
            client,
            job: job.clone(),
            headers: http.headers.clone(),
        })
    }
}

impl Fetch for HttpFetcher {
    async fn get(&self, id: u64) -> Result<Response, TransportError> {
        let mut request = Request::new(Empty::new());
        // Checked for a sample id in `new`; an id only changes digits.
        *request.uri_mut() = self.job.url_for(id).parse().map_err(|e| TransportError {
            maybe_sent: false,
            message: format!("bad URL for id {id}: {e}"),
        })?;
        let headers = request.headers_mut();
        for (name, value) in &self.headers {
            headers.insert(name.clone(), value.clone());
        }
        let response = self.client.request(request).await.map_err(|e| {
            let message = match std::error::Error::source(&e) {
                Some(source) => format!("{e}: {source}"),
                None => e.to_string(),
            };
            TransportError {
                maybe_sent: !e.is_connect(),
                message,
            }
        })?;
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(hyper::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| crate::polite::retry_after(v, std::time::SystemTime::now()));
        let body = Limited::new(response.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|e| TransportError {
                maybe_sent: true,
                message: format!("reading body: {e}"),
            })?
            .to_bytes();
        Ok(Response {
            status,
            body,
            retry_after,
        })
    }
}
