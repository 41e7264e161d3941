//! Downloads: one pooled hyper client for every host, per-host limits,
//! redirects, a body cap, and the sorting of failures into those that may
//! pass (retried) and those that will not (dead letters).
//!
//! * **Per host** ([`Hosts`]): a semaphore of `per_host_in_flight` and the
//!   crawl's [`Politeness`] (a token bucket of `per_host_rate`, and the
//!   host-wide pause a `Retry-After` asks for). A URL takes its host's
//!   permit for the whole download, redirects included (a redirect to
//!   another host is counted against the first one).
//! * **Connect-to**: with `connect_to`, every connection goes to that
//!   address while the request keeps its URL's host in `Host` — how the
//!   image simulator's virtual hosts are reached.
//! * **https** ([`ConnectTo`]): rustls (ring) over the same TCP
//!   connections, trusting Mozilla's roots (`webpki-roots`) and the CA
//!   certificates of `http.ca_file`; the handshake names the URL's host,
//!   also under connect-to.
//! * **What may pass**: a timeout (the handshake's too), a connection
//!   refused or reset, a `5xx`, `408` or `429`. **What will not**: any other
//!   `4xx`, too many redirects, a body over `max_body` (told by
//!   `Content-Length` before reading, or while reading), a TLS handshake
//!   that rustls refused (an untrusted, expired or misnamed certificate, a
//!   peer that does not speak TLS).

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::header::{CONTENT_LENGTH, LOCATION, RETRY_AFTER, USER_AGENT};
use hyper::{Request, StatusCode, Uri};
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio_rustls::TlsConnector;
use trawler_crawl::polite::{retry_after, Politeness};

use crate::log::DeadKind;
use crate::spec::HttpSettings;

/// A connector for `http` and `https` that sends every connection to one
/// address when set. For `https` the TLS handshake names the URL's host
/// (SNI and the certificate check), wherever the connection goes.
#[derive(Clone)]
pub struct ConnectTo {
    inner: HttpConnector,
    to: Option<Uri>,
    tls: TlsConnector,
}

impl std::fmt::Debug for ConnectTo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectTo").field("to", &self.to).finish()
    }
}

/// A TLS handshake that failed for a reason that will not pass by
/// retrying (a certificate not trusted, expired or for another name, a
/// peer that does not speak TLS): a dead letter [`DeadKind::Tls`]. A
/// handshake cut by a reset or a timeout is not one of these.
#[derive(Debug, thiserror::Error)]
#[error("TLS handshake with {host}: {error}")]
pub struct TlsFailed {
    /// The URL's host.
    pub host: String,
    /// rustls's reason.
    pub error: rustls::Error,
}

/// A connection: plain TCP or TLS over it.
#[derive(Debug)]
pub enum Conn {
    /// `http`.
    Plain(TokioIo<TcpStream>),
    /// `https`.
    Tls(Box<TokioIo<tokio_rustls::client::TlsStream<TcpStream>>>),
}

impl hyper::rt::Read for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl hyper::rt::Write for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_flush(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

impl Connection for Conn {
    fn connected(&self) -> Connected {
        match self {
            Conn::Plain(s) => s.inner().connected(),
            Conn::Tls(s) => s.inner().get_ref().0.connected(),
        }
    }
}

type Connecting =
    Pin<Box<dyn Future<Output = Result<Conn, Box<dyn std::error::Error + Send + Sync>>> + Send>>;

impl tower::Service<Uri> for ConnectTo {
    type Response = Conn;
    type Error = Box<dyn std::error::Error + Send + Sync>;
    type Future = Connecting;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let https = uri.scheme_str() == Some("https");
        let host = uri.host().unwrap_or_default().to_owned();
        let connecting = self.inner.call(self.to.clone().unwrap_or(uri));
        let tls = self.tls.clone();
        Box::pin(async move {
            let tcp = connecting.await?.into_inner();
            if !https {
                return Ok(Conn::Plain(TokioIo::new(tcp)));
            }
            // An IPv6 literal is bracketed in the URL, not in a name.
            let name = ServerName::try_from(host.trim_start_matches('[').trim_end_matches(']'))
                .map_err(|e| format!("{host:?} is not a TLS server name: {e}"))?
                .to_owned();
            match tls.connect(name, tcp).await {
                Ok(stream) => Ok(Conn::Tls(Box::new(TokioIo::new(stream)))),
                Err(e) => {
                    let failed = e
                        .get_ref()
                        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
                        .cloned();
                    match failed {
                        Some(error) => Err(Box::new(TlsFailed { host, error }) as _),
                        None => Err(e.into()),
                    }
                }
            }
        })
    }
}

/// The client side of TLS: Mozilla's roots and `extra` (`http.ca_file`),
/// TLS 1.2 and 1.3 with ring, HTTP/1.1 only.
pub fn tls_config(extra: &[CertificateDer<'static>]) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    // Checked by the spec already: a certificate refused here is skipped.
    let (_added, _refused) = roots.add_parsable_certificates(extra.iter().cloned());
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("ring supports the default protocol versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

/// The limits of one host.
#[derive(Debug)]
pub struct Host {
    /// Requests in flight to it.
    pub permits: Semaphore,
    /// Its rate cap and pause.
    pub polite: Politeness,
}

/// The hosts seen so far.
#[derive(Debug)]
pub struct Hosts {
    per_host: usize,
    rate: Option<f64>,
    map: Mutex<HashMap<String, Arc<Host>>>,
}

impl Hosts {
    /// Hosts limited to `per_host` requests in flight and `rate` per
    /// second each.
    pub fn new(per_host: usize, rate: Option<f64>) -> Self {
        Self {
            per_host,
            rate,
            map: Mutex::new(HashMap::new()),
        }
    }

    /// The limits of `host`, and whether it is new.
    pub fn get(&self, host: &str) -> (Arc<Host>, bool) {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(h) = map.get(host) {
            return (h.clone(), false);
        }
        let h = Arc::new(Host {
            permits: Semaphore::new(self.per_host),
            polite: Politeness::new(self.rate),
        });
        map.insert(host.to_owned(), h.clone());
        (h, true)
    }

    /// Hosts seen.
    pub fn len(&self) -> usize {
        self.map.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Whether no host was seen.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Why a download failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchError {
    /// May pass: try again later (after `after` when the host said so).
    Retry {
        /// What happened.
        message: String,
        /// The host's `Retry-After`.
        after: Option<Duration>,
    },
    /// Will not pass.
    Dead(DeadKind, String),
}

/// A downloaded body.
#[derive(Debug, Clone)]
pub struct Downloaded {
    /// The body.
    pub body: Bytes,
    /// Redirects followed.
    pub redirects: u32,
}

/// The pooled client and the download rules.
#[derive(Debug, Clone)]
pub struct Fetcher {
    client: Client<ConnectTo, Empty<Bytes>>,
    settings: HttpSettings,
}

impl Fetcher {
    /// A client for these settings (must be called inside a runtime).
    pub fn new(settings: &HttpSettings) -> Self {
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        // https URLs too: the TLS is ours, over the TCP stream it makes.
        http.enforce_http(false);
        http.set_connect_timeout(Some(settings.timeout.min(Duration::from_secs(5))));
        let to = settings.connect_to.map(|a: SocketAddr| {
            format!("http://{a}")
                .parse::<Uri>()
                .expect("an address is a valid authority")
        });
        let client = Client::builder(TokioExecutor::new())
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(settings.per_host_in_flight)
            .build(ConnectTo {
                inner: http,
                to,
                tls: TlsConnector::from(tls_config(&settings.extra_roots)),
            });
        Self {
            client,
            settings: settings.clone(),
        }
    }

    /// Downloads `uri`, following redirects, within the timeout.
    pub async fn get(&self, uri: &Uri) -> Result<Downloaded, FetchError> {
        match tokio::time::timeout(self.settings.timeout, self.follow(uri.clone())).await {
            Ok(r) => r,
            Err(_) => Err(FetchError::Retry {
                message: format!("timed out after {:?}", self.settings.timeout),
                after: None,
            }),
        }
    }

    async fn follow(&self, mut uri: Uri) -> Result<Downloaded, FetchError> {
        let mut redirects = 0;
        loop {
            let request = Request::get(uri.clone())
                .header(USER_AGENT, concat!("trawler/", env!("CARGO_PKG_VERSION")))
                .body(Empty::new())
                .map_err(|e| FetchError::Dead(DeadKind::InvalidUrl, e.to_string()))?;
            let response =
                self.client
                    .request(request)
                    .await
                    .map_err(|e| match tls_failure(&e) {
                        Some(tls) => FetchError::Dead(DeadKind::Tls, tls.to_string()),
                        None => FetchError::Retry {
                            message: transport_message(&e),
                            after: None,
                        },
                    })?;
            let status = response.status();
            if status.is_redirection() {
                let location = response
                    .headers()
                    .get(LOCATION)
                    .and_then(|l| l.to_str().ok())
                    .map(str::to_owned);
                let Some(location) = location else {
                    return Err(FetchError::Dead(
                        DeadKind::ClientError,
                        format!("{status} without Location"),
                    ));
                };
                redirects += 1;
                if redirects > self.settings.max_redirects {
                    return Err(FetchError::Dead(
                        DeadKind::TooManyRedirects,
                        format!(
                            "more than {} redirects (last to {location})",
                            self.settings.max_redirects
                        ),
                    ));
                }
                uri = resolve(&uri, &location).ok_or_else(|| {
                    FetchError::Dead(
                        DeadKind::InvalidUrl,
                        format!("redirect to an invalid URL {location:?}"),
                    )
                })?;
                continue;
            }
            if !status.is_success() {
                let after = response
                    .headers()
                    .get(RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| retry_after(v, std::time::SystemTime::now()));
                return Err(classify(status, after));
            }
            let max = self.settings.max_body;
            let length = response
                .headers()
                .get(CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            if let Some(length) = length.filter(|&l| l > max) {
                return Err(FetchError::Dead(
                    DeadKind::TooLarge,
                    format!("Content-Length {length} > max_body {max}"),
                ));
            }
            let body = Limited::new(response.into_body(), max as usize)
                .collect()
                .await
                .map_err(|e| {
                    if e.downcast_ref::<http_body_util::LengthLimitError>()
                        .is_some()
                    {
                        FetchError::Dead(DeadKind::TooLarge, format!("body > max_body {max}"))
                    } else {
                        FetchError::Retry {
                            message: format!("reading the body: {e}"),
                            after: None,
                        }
                    }
                })?
                .to_bytes();
            return Ok(Downloaded { body, redirects });
        }
    }
}

/// Sorts an error status.
pub fn classify(status: StatusCode, after: Option<Duration>) -> FetchError {
    let code = status.as_u16();
    if status.is_server_error() || code == 408 || code == 429 {
        FetchError::Retry {
            message: format!("HTTP {code}"),
            after,
        }
    } else {
        FetchError::Dead(DeadKind::ClientError, format!("HTTP {code}"))
    }
}

/// The failed handshake behind a client error, if that is what it is.
fn tls_failure(e: &hyper_util::client::legacy::Error) -> Option<&TlsFailed> {
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(tls) = s.downcast_ref::<TlsFailed>() {
            return Some(tls);
        }
        source = s.source();
    }
    None
}

fn transport_message(e: &hyper_util::client::legacy::Error) -> String {
    let mut message = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        message.push_str(": ");
        message.push_str(&s.to_string());
        source = s.source();
    }
    message
}

/// The URL a `Location` points to from `base`: absolute, or a path on the
/// same host.
pub fn resolve(base: &Uri, location: &str) -> Option<Uri> {
    if location.starts_with("http://") || location.starts_with("https://") {
        return location.parse().ok();
    }
    let authority = base.authority()?;
    let scheme = base.scheme_str()?;
    let path = if location.starts_with('/') {
        location.to_owned()
    } else {
        let dir = base.path().rsplit_once('/').map_or("", |(d, _)| d);
        format!("{dir}/{location}")
    };
    format!("{scheme}://{authority}{path}").parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_sorted() {
        for code in [500, 502, 503, 408, 429] {
            assert!(matches!(
                classify(StatusCode::from_u16(code).unwrap(), None),
                FetchError::Retry { .. }
            ));
        }
        for code in [400, 403, 404, 410] {
            assert!(matches!(
                classify(StatusCode::from_u16(code).unwrap(), None),
                FetchError::Dead(DeadKind::ClientError, _)
            ));
        }
    }

    #[test]
    fn redirects_resolve() {
        let base: Uri = "http://h1.test/a/b.jpg".parse().unwrap();
        assert_eq!(resolve(&base, "/c.jpg").unwrap(), "http://h1.test/c.jpg");
        assert_eq!(resolve(&base, "c.jpg").unwrap(), "http://h1.test/a/c.jpg");
        assert_eq!(
            resolve(&base, "http://h2.test/x").unwrap(),
            "http://h2.test/x"
        );
    }
}
