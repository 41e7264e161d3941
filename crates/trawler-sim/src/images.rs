//! The image simulator of batch jobs (`trawler sim images`): generated
//! images at the URLs of many hosts, a batch face detector, and the URL
//! lists that point at them (`trawler gen urls`).
//!
//! **Virtual hosts by the `Host` header.** One loopback listener serves
//! every host; the host of a request is its `Host` header without the port
//! (`h17.images.test`). A crawler reaches them by connecting every host to
//! the simulator's address (`trawler crawl --connect-to ADDR`, or the
//! built-in simulator), the way `curl --connect-to` does, so URLs look like
//! real ones and per-host limits are keyed by the real host name. `.test`
//! is a reserved top-level domain: these names never resolve anywhere else.
//!
//! **What a URL answers** is a pure function of the host's name, the path
//! and the seed (and, for `flaky`, of how often that URL was asked):
//!
//! | host | behaviour |
//! |---|---|
//! | `h{n}.images.test` | normal |
//! | `slow{n}.images.test` | every answer after `slow_latency` (200 ms) |
//! | `down{n}.images.test` | every request's connection is closed without an answer (a reset) |
//!
//! | path | answer |
//! |---|---|
//! | `/img/{n}.jpg`, `.png`, `.webp` | `200`, an image of that format from the pool (256×256 by default) |
//! | `/broken/{n}.jpg` | `200 image/jpeg`, bytes that are not an image |
//! | `/text/{n}.html` | `200 text/html`, a page |
//! | `/missing/{n}.jpg` | `404` |
//! | `/moved/{n}.jpg` | `301` to `/img/{n}.jpg` on the same host |
//! | `/loop/{n}.jpg` | `302` to itself |
//! | `/flaky/{n}.jpg` | the first `flaky_failures` (2) requests of the URL fail (`503`, then a reset, alternately), then the image |
//! | `/error/{n}.jpg` | `500`, always |
//! | `/huge/{n}.jpg` | `200`, `huge_bytes` (8 MiB) with a `Content-Length` |
//!
//! `POST /detect` is the batch detector: the body is the images, each as a
//! little-endian `u32` length then its bytes; after `detector_latency` it
//! answers `{"results":[{"faces":[[x,y,w,h],…]},…]}`, one entry per image
//! in order, the faces a function of the image's bytes (0–3 boxes).
//!
//! **TLS** (`--tls-cert`, `--tls-key`): the same hosts and paths over
//! `https://`, on the same port (a connection that opens with a TLS
//! handshake gets TLS, any other plain HTTP), so one `--connect-to` serves
//! both schemes. Tests use the certificate of
//! `crates/trawler/tests/fixtures/tls` (`*.images.test`).
//!
//! `GET /_sim/images/stats` answers what tests check: requests, peak
//! concurrent requests and answers per host, and the detector's calls.
//!
//! Serving is cheap: the images are encoded once at start into a small pool
//! ([`ImagesConfig::pool`] per format) and a URL picks one by its hash.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::future::Future;
use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE, HOST, LOCATION};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

use crate::rng::{fnv1a, hash, mix, unit};

/// The domain of every simulated host.
pub const DOMAIN: &str = "images.test";

/// Largest `POST /detect` body.
pub const MAX_DETECT_BYTES: usize = 64 << 20;

/// How to build an image simulator; validated by [`ImagesConfig::build`].
#[derive(Debug, Clone, PartialEq)]
pub struct ImagesConfig {
    /// Seed of the pool's pictures.
    pub seed: u64,
    /// Width and height of the pool's images.
    pub size: u32,
    /// Images per format in the pool.
    pub pool: usize,
    /// Latency of every answer of a `slow{n}` host.
    pub slow_latency: Duration,
    /// Failed answers of a `/flaky/` URL before it serves its image.
    pub flaky_failures: u32,
    /// Body size of a `/huge/` URL.
    pub huge_bytes: usize,
    /// Latency of every detector call, whatever the batch size (a GPU
    /// does a batch in about the time of one image).
    pub detector_latency: Duration,
    /// Connections served at once.
    pub max_connections: usize,
    /// A PEM certificate chain and its private key: the simulator then also
    /// answers TLS (`https://` URLs) on the same port, told apart from
    /// plain HTTP by the first byte a client sends.
    pub tls: Option<(PathBuf, PathBuf)>,
}

impl Default for ImagesConfig {
    fn default() -> Self {
        Self {
            seed: 0,
            size: 256,
            pool: 32,
            slow_latency: Duration::from_millis(200),
            flaky_failures: 2,
            huge_bytes: 8 << 20,
            detector_latency: Duration::from_millis(20),
            max_connections: 8_192,
            tls: None,
        }
    }
}

/// A setting [`ImagesConfig::build`] refuses.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid image simulator setting {key}: {message}")]
pub struct ImagesConfigError {
    /// The setting.
    pub key: &'static str,
    /// Why.
    pub message: String,
}

impl ImagesConfig {
    /// Checks the settings and encodes the pool of images.
    pub fn build(self) -> Result<ImageSim, ImagesConfigError> {
        let bad = |key, message: &str| ImagesConfigError {
            key,
            message: message.to_owned(),
        };
        if !(16..=4096).contains(&self.size) {
            return Err(bad("size", "must be 16 to 4096 pixels"));
        }
        if !(1..=1024).contains(&self.pool) {
            return Err(bad("pool", "must be 1 to 1024 images per format"));
        }
        if self.max_connections == 0 {
            return Err(bad("max_connections", "must be at least 1"));
        }
        let tls = match &self.tls {
            None => None,
            Some((cert, key)) => Some(tls_acceptor(cert, key).map_err(|m| ImagesConfigError {
                key: "tls",
                message: m,
            })?),
        };
        let pool = Pool::generate(self.seed, self.size, self.pool);
        let huge = Bytes::from(vec![0xA5; self.huge_bytes]);
        Ok(ImageSim {
            shared: Arc::new(Shared {
                config: self,
                pool,
                huge,
                hosts: Mutex::new(HashMap::new()),
                flaky: Mutex::new(HashMap::new()),
                detector_calls: AtomicU64::new(0),
                detector_images: AtomicU64::new(0),
                detector_peak_batch: AtomicU64::new(0),
                requests: AtomicU64::new(0),
                tls,
            }),
        })
    }
}

/// The pre-encoded images.
#[derive(Debug)]
struct Pool {
    jpeg: Vec<Bytes>,
    png: Vec<Bytes>,
    webp: Vec<Bytes>,
}

impl Pool {
    fn generate(seed: u64, size: u32, n: usize) -> Pool {
        let picture = |i: usize| -> image::RgbImage {
            let h = hash(&[seed, i as u64]);
            // A gradient, a disc and noise: compresses like a photo would,
            // and differs from one pool image to the next.
            let (cx, cy) = ((h % size as u64) as f32, ((h >> 16) % size as u64) as f32);
            let r = (size / 4 + ((h >> 32) % (size as u64 / 4)) as u32) as f32;
            image::RgbImage::from_fn(size, size, |x, y| {
                let (fx, fy) = (x as f32, y as f32);
                let inside = (fx - cx).powi(2) + (fy - cy).powi(2) < r * r;
                let noise = (mix(h ^ ((y as u64) << 32 | x as u64)) & 15) as u8;
                let base = [
                    (x * 255 / size) as u8,
                    (y * 255 / size) as u8,
                    (h >> 40) as u8,
                ];
                let px = if inside {
                    [255 - base[0], base[2], base[1]]
                } else {
                    base
                };
                image::Rgb(px.map(|c| c.saturating_add(noise)))
            })
        };
        let encode = |i: usize, format: image::ImageFormat| -> Bytes {
            let mut out = Cursor::new(Vec::new());
            let img = picture(i);
            match format {
                image::ImageFormat::Jpeg => {
                    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 85)
                        .encode_image(&img)
                        .expect("encoding into memory cannot fail");
                }
                other => img
                    .write_to(&mut out, other)
                    .expect("encoding into memory cannot fail"),
            }
            Bytes::from(out.into_inner())
        };
        Pool {
            jpeg: (0..n)
                .map(|i| encode(i, image::ImageFormat::Jpeg))
                .collect(),
            png: (0..n)
                .map(|i| encode(n + i, image::ImageFormat::Png))
                .collect(),
            webp: (0..n)
                .map(|i| encode(2 * n + i, image::ImageFormat::WebP))
                .collect(),
        }
    }
}

/// Counters of one host.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct HostStats {
    /// Requests received.
    pub requests: u64,
    /// Requests being answered now.
    pub in_flight: u64,
    /// Most requests answered at once.
    pub peak_in_flight: u64,
}

#[derive(Debug)]
struct Shared {
    config: ImagesConfig,
    pool: Pool,
    huge: Bytes,
    hosts: Mutex<HashMap<String, HostStats>>,
    /// Requests seen per `/flaky/` URL.
    flaky: Mutex<HashMap<String, u32>>,
    detector_calls: AtomicU64,
    detector_images: AtomicU64,
    detector_peak_batch: AtomicU64,
    requests: AtomicU64,
    /// TLS for connections that open with a handshake.
    tls: Option<Tls>,
}

/// The TLS acceptor (rustls's has no `Debug`).
#[derive(Clone)]
struct Tls(TlsAcceptor);

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tls")
    }
}

/// The server side of TLS from a PEM chain and key (TLS 1.2 and 1.3, ring).
fn tls_acceptor(cert: &Path, key: &Path) -> Result<Tls, String> {
    let read = |p: &Path| std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()));
    let chain = CertificateDer::pem_slice_iter(&read(cert)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: not PEM certificates: {e}", cert.display()))?;
    let key = PrivateKeyDer::from_pem_slice(&read(key)?)
        .map_err(|e| format!("{}: not a PEM private key: {e}", key.display()))?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .map_err(|e| format!("{}: {e}", cert.display()))?;
    Ok(Tls(TlsAcceptor::from(Arc::new(config))))
}

/// A running image simulator (cheap to clone).
#[derive(Debug, Clone)]
pub struct ImageSim {
    shared: Arc<Shared>,
}

/// The connection is closed without an answer.
#[derive(Debug)]
struct Reset;

impl std::fmt::Display for Reset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("simulated reset")
    }
}

impl std::error::Error for Reset {}

type Body = Full<Bytes>;

fn answer(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Body> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

fn redirect(status: StatusCode, to: &str) -> Response<Body> {
    let mut response = answer(status, "text/plain", "");
    if let Ok(v) = HeaderValue::from_str(to) {
        response.headers_mut().insert(LOCATION, v);
    }
    response
}

/// Decrements a host's in-flight count when the answer is ready.
struct InFlight<'a> {
    shared: &'a Shared,
    host: String,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let mut hosts = self.shared.hosts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(h) = hosts.get_mut(&self.host) {
            h.in_flight -= 1;
        }
    }
}

impl ImageSim {
    /// Requests, concurrency peaks and detector calls so far.
    pub fn stats(&self) -> ImagesStats {
        let s = &self.shared;
        ImagesStats {
            requests: s.requests.load(Ordering::Relaxed),
            hosts: s.hosts.lock().unwrap_or_else(|e| e.into_inner()).clone(),
            detector_calls: s.detector_calls.load(Ordering::Relaxed),
            detector_images: s.detector_images.load(Ordering::Relaxed),
            detector_peak_batch: s.detector_peak_batch.load(Ordering::Relaxed),
        }
    }

    /// The bytes `/img/{n}.{ext}` of `host` serves (for tests).
    pub fn image_of(&self, host: &str, n: u64, ext: &str) -> Option<Bytes> {
        let pool = match ext {
            "jpg" | "jpeg" => &self.shared.pool.jpeg,
            "png" => &self.shared.pool.png,
            "webp" => &self.shared.pool.webp,
            _ => return None,
        };
        let i = hash(&[fnv1a(host.as_bytes()), n]) as usize % pool.len();
        Some(pool[i].clone())
    }

    /// Serves until `shutdown` completes.
    pub async fn serve(
        &self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> std::io::Result<()> {
        let limit = Arc::new(Semaphore::new(self.shared.config.max_connections));
        tokio::pin!(shutdown);
        loop {
            let permit = tokio::select! {
                _ = &mut shutdown => return Ok(()),
                permit = limit.clone().acquire_owned() => permit.expect("semaphore never closed"),
            };
            let (stream, _) = tokio::select! {
                _ = &mut shutdown => return Ok(()),
                accepted = listener.accept() => match accepted {
                    Ok(pair) => pair,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let _ = stream.set_nodelay(true);
            let sim = self.clone();
            tokio::spawn(async move {
                // A TLS connection opens with a handshake record (0x16); an
                // HTTP request with a method's letter.
                let mut first = [0u8; 1];
                let tls = match &sim.shared.tls {
                    Some(acceptor) => {
                        let peeked =
                            tokio::time::timeout(Duration::from_secs(30), stream.peek(&mut first))
                                .await;
                        if !matches!(peeked, Ok(Ok(1))) {
                            return;
                        }
                        (first[0] == 0x16).then(|| acceptor.clone())
                    }
                    None => None,
                };
                match tls {
                    Some(acceptor) => {
                        let accepting = tokio::time::timeout(
                            Duration::from_secs(30),
                            acceptor.0.accept(stream),
                        );
                        if let Ok(Ok(stream)) = accepting.await {
                            sim.serve_connection(TokioIo::new(stream)).await;
                        }
                    }
                    None => sim.serve_connection(TokioIo::new(stream)).await,
                }
                drop(permit);
            });
        }
    }

    async fn serve_connection<I>(&self, io: I)
    where
        I: hyper::rt::Read + hyper::rt::Write + Unpin,
    {
        let sim = self.clone();
        let service = hyper::service::service_fn(move |req| {
            let sim = sim.clone();
            async move { sim.handle(req).await }
        });
        let _ = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(Duration::from_secs(30))
            .serve_connection(io, service)
            .await;
    }

    async fn handle(&self, req: Request<Incoming>) -> Result<Response<Body>, Reset> {
        let s = &*self.shared;
        s.requests.fetch_add(1, Ordering::Relaxed);
        let path = req.uri().path().to_owned();
        if req.method() == Method::POST && path == "/detect" {
            return Ok(self.detect(req).await);
        }
        if path == "/_sim/images/stats" {
            return Ok(answer(
                StatusCode::OK,
                "application/json",
                self.stats().to_json(),
            ));
        }
        let host = req
            .headers()
            .get(HOST)
            .and_then(|h| h.to_str().ok())
            .map(|h| h.rsplit_once(':').map_or(h, |(name, _)| name))
            .unwrap_or("")
            .to_ascii_lowercase();
        let _in_flight = {
            let mut hosts = s.hosts.lock().unwrap_or_else(|e| e.into_inner());
            let h = hosts.entry(host.clone()).or_default();
            h.requests += 1;
            h.in_flight += 1;
            h.peak_in_flight = h.peak_in_flight.max(h.in_flight);
            InFlight {
                shared: s,
                host: host.clone(),
            }
        };
        let Some(name) = host.strip_suffix(DOMAIN).and_then(|n| n.strip_suffix('.')) else {
            return Ok(answer(StatusCode::NOT_FOUND, "text/plain", "unknown host"));
        };
        if name.starts_with("down") {
            return Err(Reset);
        }
        if name.starts_with("slow") {
            tokio::time::sleep(s.config.slow_latency).await;
        }
        self.resource(&host, &path)
    }

    fn resource(&self, host: &str, path: &str) -> Result<Response<Body>, Reset> {
        let s = &*self.shared;
        let not_found = || answer(StatusCode::NOT_FOUND, "text/plain", "not found");
        let Some((kind, file)) = path.strip_prefix('/').and_then(|p| p.split_once('/')) else {
            return Ok(not_found());
        };
        let Some((n, ext)) = file.split_once('.') else {
            return Ok(not_found());
        };
        let Ok(n) = n.parse::<u64>() else {
            return Ok(not_found());
        };
        let image = |ext: &str| match self.image_of(host, n, ext) {
            Some(bytes) => {
                let ct = match ext {
                    "png" => "image/png",
                    "webp" => "image/webp",
                    _ => "image/jpeg",
                };
                answer(StatusCode::OK, ct, bytes)
            }
            None => not_found(),
        };
        Ok(match kind {
            "img" => image(ext),
            "broken" => {
                // A JPEG's first bytes, then noise: sniffed as JPEG, fails
                // to decode.
                let mut body = vec![0xFF, 0xD8, 0xFF, 0xE0];
                body.extend((0..2048u64).map(|i| mix(n ^ i) as u8));
                answer(StatusCode::OK, "image/jpeg", body)
            }
            "text" => answer(
                StatusCode::OK,
                "text/html",
                format!("<html><body>page {n}</body></html>"),
            ),
            "missing" => not_found(),
            "moved" => redirect(StatusCode::MOVED_PERMANENTLY, &format!("/img/{n}.{ext}")),
            "loop" => redirect(StatusCode::FOUND, path),
            "error" => answer(StatusCode::INTERNAL_SERVER_ERROR, "text/plain", "error"),
            "huge" => answer(StatusCode::OK, "image/jpeg", s.huge.clone()),
            "flaky" => {
                let seen = {
                    let mut flaky = s.flaky.lock().unwrap_or_else(|e| e.into_inner());
                    let count = flaky.entry(format!("{host}{path}")).or_insert(0);
                    *count += 1;
                    *count
                };
                if seen > s.config.flaky_failures {
                    image(ext)
                } else if seen % 2 == 1 {
                    answer(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "busy")
                } else {
                    return Err(Reset);
                }
            }
            _ => not_found(),
        })
    }

    async fn detect(&self, req: Request<Incoming>) -> Response<Body> {
        let s = &*self.shared;
        let body = match Limited::new(req.into_body(), MAX_DETECT_BYTES)
            .collect()
            .await
        {
            Ok(b) => b.to_bytes(),
            Err(_) => return answer(StatusCode::PAYLOAD_TOO_LARGE, "text/plain", "too large"),
        };
        let Some(images) = split_frames(&body) else {
            return answer(StatusCode::BAD_REQUEST, "text/plain", "bad framing");
        };
        s.detector_calls.fetch_add(1, Ordering::Relaxed);
        s.detector_images
            .fetch_add(images.len() as u64, Ordering::Relaxed);
        s.detector_peak_batch
            .fetch_max(images.len() as u64, Ordering::Relaxed);
        tokio::time::sleep(s.config.detector_latency).await;
        let mut out = String::with_capacity(32 + images.len() * 48);
        out.push_str("{\"results\":[");
        for (i, img) in images.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str("{\"faces\":[");
            for (j, [x, y, w, h]) in faces_of(img).into_iter().enumerate() {
                if j > 0 {
                    out.push(',');
                }
                let _ = write!(out, "[{x},{y},{w},{h}]");
            }
            out.push_str("]}");
        }
        out.push_str("]}");
        answer(StatusCode::OK, "application/json", out)
    }
}

/// The images of a detector request body (`u32` LE length, bytes, …);
/// `None` when the framing is broken.
pub fn split_frames(mut body: &[u8]) -> Option<Vec<&[u8]>> {
    let mut out = Vec::new();
    while !body.is_empty() {
        let len = u32::from_le_bytes(body.get(..4)?.try_into().ok()?) as usize;
        out.push(body.get(4..4 + len)?);
        body = &body[4 + len..];
    }
    Some(out)
}

/// The faces the detector finds in an image: 0 to 3 boxes `[x, y, w, h]`,
/// a function of the bytes.
pub fn faces_of(image: &[u8]) -> Vec<[u32; 4]> {
    let h = fnv1a(image);
    (0..h % 4)
        .map(|i| {
            let b = mix(h ^ i);
            let (w, hh) = (16 + (b % 64) as u32, 16 + ((b >> 8) % 64) as u32);
            [((b >> 16) % 180) as u32, ((b >> 24) % 180) as u32, w, hh]
        })
        .collect()
}

/// What the simulator saw (`GET /_sim/images/stats`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImagesStats {
    /// Every request received.
    pub requests: u64,
    /// Per host (the `Host` header without port).
    pub hosts: HashMap<String, HostStats>,
    /// `POST /detect` calls answered.
    pub detector_calls: u64,
    /// Images in those calls.
    pub detector_images: u64,
    /// The largest batch.
    pub detector_peak_batch: u64,
}

impl ImagesStats {
    /// As JSON: `{"requests","detector":{"calls","images","peak_batch"},
    /// "hosts":{"h1.images.test":{"requests","in_flight","peak_in_flight"}}}`.
    pub fn to_json(&self) -> String {
        let hosts: serde_json::Map<String, serde_json::Value> = self
            .hosts
            .iter()
            .map(|(name, h)| {
                (
                    name.clone(),
                    serde_json::json!({
                        "requests": h.requests,
                        "in_flight": h.in_flight,
                        "peak_in_flight": h.peak_in_flight,
                    }),
                )
            })
            .collect();
        serde_json::json!({
            "requests": self.requests,
            "detector": {
                "calls": self.detector_calls,
                "images": self.detector_images,
                "peak_batch": self.detector_peak_batch,
            },
            "hosts": hosts,
        })
        .to_string()
    }
}

/// What share of a generated URL list is what (`trawler gen urls`).
#[derive(Debug, Clone, PartialEq)]
pub struct UrlMix {
    /// Seed of every draw.
    pub seed: u64,
    /// Lines to write, duplicates and bad URLs included.
    pub count: u64,
    /// Normal hosts (`h0` …).
    pub hosts: u32,
    /// Slow hosts (`slow0` …), drawn as often as one normal host each.
    pub slow_hosts: u32,
    /// Hosts that reset every connection (`down0` …), likewise.
    pub down_hosts: u32,
    /// Share of lines that repeat an earlier URL.
    pub duplicates: f64,
    /// Share of lines that are not valid http(s) URLs.
    pub bad: f64,
    /// Share of URLs with a fault path (`broken`, `text`, `missing`,
    /// `moved`, `loop`, `flaky`, `error`, `huge`, in equal parts).
    pub faults: f64,
    /// Share of images served as PNG, and as WebP (the rest are JPEG).
    pub png: f64,
    /// See `png`.
    pub webp: f64,
}

impl Default for UrlMix {
    fn default() -> Self {
        Self {
            seed: 0,
            count: 10_000,
            hosts: 1_000,
            slow_hosts: 0,
            down_hosts: 0,
            duplicates: 0.05,
            bad: 0.001,
            faults: 0.01,
            png: 0.05,
            webp: 0.05,
        }
    }
}

/// The fault paths, in the order [`UrlMix::faults`] spreads them.
pub const FAULT_KINDS: [&str; 8] = [
    "broken", "text", "missing", "moved", "loop", "flaky", "error", "huge",
];

const BAD_URLS: [&str; 5] = [
    "not a url",
    "ftp://h1.images.test/img/1.jpg",
    "http:///img/1.jpg",
    "http://h1.images.test:99999/img/1.jpg",
    "mailto:someone@images.test",
];

impl UrlMix {
    /// The lines of the list, in order; `write` gets each line without its
    /// newline. Line `i` is a function of `(seed, i)` and the lines before.
    pub fn generate(
        &self,
        mut write: impl FnMut(&str) -> std::io::Result<()>,
    ) -> std::io::Result<()> {
        let all_hosts = u64::from(self.hosts + self.slow_hosts + self.down_hosts).max(1);
        let mut fresh = 0u64;
        let mut line = String::new();
        for i in 0..self.count {
            let h = hash(&[self.seed, i]);
            let u = unit(h);
            line.clear();
            if u < self.bad {
                line.push_str(BAD_URLS[(mix(h) % BAD_URLS.len() as u64) as usize]);
                line.push_str(&format!("#{i}"));
            } else if u < self.bad + self.duplicates && fresh > 0 {
                self.url(mix(h) % fresh, all_hosts, &mut line);
            } else {
                self.url(fresh, all_hosts, &mut line);
                fresh += 1;
            }
            write(&line)?;
        }
        Ok(())
    }

    /// The `k`-th distinct URL.
    fn url(&self, k: u64, all_hosts: u64, out: &mut String) {
        let h = hash(&[self.seed, 0x55AA, k]);
        let host = mix(h) % all_hosts;
        let (prefix, n) = if host < u64::from(self.hosts) {
            ("h", host)
        } else if host < u64::from(self.hosts + self.slow_hosts) {
            ("slow", host - u64::from(self.hosts))
        } else {
            ("down", host - u64::from(self.hosts + self.slow_hosts))
        };
        let u = unit(mix(h ^ 1));
        let kind = if u < self.faults {
            FAULT_KINDS[(mix(h ^ 2) % FAULT_KINDS.len() as u64) as usize]
        } else {
            "img"
        };
        let f = unit(mix(h ^ 3));
        let ext = if kind == "text" {
            "html"
        } else if kind == "img" && f < self.png {
            "png"
        } else if kind == "img" && f < self.png + self.webp {
            "webp"
        } else {
            "jpg"
        };
        let _ = write!(out, "http://{prefix}{n}.{DOMAIN}/{kind}/{k}.{ext}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip() {
        let mut body = Vec::new();
        for img in [&b"abc"[..], b"", b"xyz12"] {
            body.extend((img.len() as u32).to_le_bytes());
            body.extend(img);
        }
        assert_eq!(
            split_frames(&body).unwrap(),
            vec![&b"abc"[..], b"", b"xyz12"]
        );
        assert!(split_frames(&body[..body.len() - 1]).is_none());
    }

    #[test]
    fn pool_images_decode() {
        let sim = ImagesConfig {
            pool: 2,
            size: 64,
            ..ImagesConfig::default()
        }
        .build()
        .unwrap();
        for ext in ["jpg", "png", "webp"] {
            let bytes = sim.image_of("h1.images.test", 7, ext).unwrap();
            let img = image::load_from_memory(&bytes).unwrap();
            assert_eq!((img.width(), img.height()), (64, 64), "{ext}");
        }
    }

    #[test]
    fn generated_lists_hold_duplicates_and_bad_lines() {
        let mix = UrlMix {
            count: 5_000,
            duplicates: 0.1,
            bad: 0.02,
            ..UrlMix::default()
        };
        let mut lines = Vec::new();
        mix.generate(|l| {
            lines.push(l.to_owned());
            Ok(())
        })
        .unwrap();
        let distinct: std::collections::HashSet<_> = lines.iter().collect();
        let bad = lines.iter().filter(|l| !l.starts_with("http://h")).count();
        assert!((300..700).contains(&(lines.len() - distinct.len())));
        assert!((50..150).contains(&bad), "{bad}");
        let mut again = Vec::new();
        mix.generate(|l| {
            again.push(l.to_owned());
            Ok(())
        })
        .unwrap();
        assert_eq!(lines, again);
    }
}
