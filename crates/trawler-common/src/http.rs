//! The pooled HTTP/1.1 client every outgoing connection of trawler uses:
//! the crawl's fetcher, the enrichment and the VictoriaMetrics client.
//!
//! Each of them wants hyper-util's legacy `Client` over an `HttpConnector`
//! with keep-alive connections reused across requests (a TCP handshake per
//! request costs the far side more than the request), `TCP_NODELAY` (a
//! request is one small write; Nagle's algorithm would hold it back waiting
//! for an ACK), a connect timeout, and an idle timeout enforced by a timer.
//! What differs between them is only the figures, so those are a
//! [`ClientSettings`] and the construction is [`ClientSettings::build`].
//!
//! ```
//! use std::time::Duration;
//! use http_body_util::Empty;
//! use hyper_util::client::legacy::{connect::HttpConnector, Client};
//! use trawler_common::http::ClientSettings;
//!
//! # let rt = tokio::runtime::Runtime::new().unwrap();
//! # let _inside = rt.enter();
//! let client: Client<HttpConnector, Empty<bytes::Bytes>> = ClientSettings {
//!     max_idle_per_host: 64,
//!     ..ClientSettings::new(Duration::from_secs(2))
//! }
//! .build();
//! ```

use std::time::Duration;

use hyper::body::Body;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

/// How a [`Client`] connects and pools. Fields not set keep hyper-util's
/// defaults (see [`ClientSettings::new`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientSettings {
    /// Longest a TCP connect may take before the request fails.
    pub connect_timeout: Duration,
    /// TCP keepalive probes on a connection idle this long (`None`: off),
    /// so a peer that vanished is noticed before the pool hands the
    /// connection out again.
    pub tcp_keepalive: Option<Duration>,
    /// Idle connections kept per host; what is kept beyond it is closed.
    pub max_idle_per_host: usize,
    /// An idle connection is closed after this long.
    pub idle_timeout: Duration,
}

impl ClientSettings {
    /// `connect_timeout`, no TCP keepalive, no cap on idle connections per
    /// host, idle connections closed after 90 s (hyper-util's defaults).
    pub fn new(connect_timeout: Duration) -> Self {
        Self {
            connect_timeout,
            tcp_keepalive: None,
            max_idle_per_host: usize::MAX,
            idle_timeout: Duration::from_secs(90),
        }
    }

    /// The pooled client. Must be called inside a tokio runtime: the pool
    /// spawns its connection and idle-reaping tasks there.
    pub fn build<B>(&self) -> Client<HttpConnector, B>
    where
        B: Body + Send,
        B::Data: Send,
    {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(self.connect_timeout));
        connector.set_keepalive(self.tcp_keepalive);
        Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(self.max_idle_per_host)
            .pool_idle_timeout(self.idle_timeout)
            // hyper-util enforces the idle timeout only with a timer.
            .pool_timer(TokioTimer::new())
            .build(connector)
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use bytes::Bytes;
    use http_body_util::{BodyExt, Empty, Full};
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;

    use super::*;

    /// A loopback server answering `ok` to everything; counts connections.
    async fn server() -> (String, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        let connections = Arc::new(AtomicUsize::new(0));
        let counted = connections.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                counted.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let answer = service_fn(|_| async {
                        Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from("ok"))))
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), answer)
                        .await;
                });
            }
        });
        (url, connections)
    }

    #[tokio::test]
    async fn requests_reuse_one_pooled_connection() {
        let (url, connections) = server().await;
        let client: Client<HttpConnector, Empty<Bytes>> =
            ClientSettings::new(Duration::from_secs(2)).build();
        for _ in 0..3 {
            let response = client.get(url.parse().unwrap()).await.unwrap();
            let body = response.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(body, "ok");
        }
        assert_eq!(connections.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_refused_connect_is_a_connect_error() {
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let client: Client<HttpConnector, Full<Bytes>> =
            ClientSettings::new(Duration::from_secs(2)).build();
        let request = hyper::Request::post(format!("http://127.0.0.1:{port}/"))
            .body(Full::new(Bytes::from("x")))
            .unwrap();
        let error = client.request(request).await.unwrap_err();
        assert!(error.is_connect(), "{error}");
    }
}
