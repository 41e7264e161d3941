//! The batch job file: `[job] kind = "batch"`, `[input]`, `[http]`,
//! `[process]`, `[detector]`, `[output]` — plain serde structs that reject
//! unknown keys, then [`BatchJobConfig::build`] checks every value into a
//! [`BatchJob`]. Errors name the file and the key
//! (`images.toml: http.per_host_in_flight: must be at least 1`).
//!
//! `jobs/images.toml` documents every key. `trawler crawl --urls FILE`
//! builds the same config from its flags ([`BatchJobConfig::for_urls`]).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper::Uri;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use serde::Deserialize;

/// A batch job file as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchJobConfig {
    /// `[job]`: the name, and `kind = "batch"`.
    pub job: JobSection,
    /// `[input]`: the URL lists.
    #[serde(default)]
    pub input: InputSection,
    /// `[http]`: downloads and politeness.
    #[serde(default)]
    pub http: HttpSection,
    /// `[process]`: decoding and thumbnails.
    #[serde(default)]
    pub process: ProcessSection,
    /// `[detector]`: the batch enrichment (none when absent).
    #[serde(default)]
    pub detector: Option<DetectorSection>,
    /// `[output]`: the Parquet files.
    #[serde(default)]
    pub output: OutputSection,
    /// `[s3]`: the S3-compatible server of `s3://` lists and output.
    #[serde(default)]
    pub s3: S3Section,
    /// Where the config came from, for messages.
    #[serde(skip)]
    pub source: String,
    /// The folder relative input paths are resolved against.
    #[serde(skip)]
    pub base: PathBuf,
}

/// `[job]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSection {
    /// Names the job (`/api/v1/batch/{name}`, the data folder's claim).
    pub name: String,
    /// Must be `batch`.
    pub kind: String,
}

impl Default for JobSection {
    fn default() -> Self {
        Self {
            name: "batch".into(),
            kind: "batch".into(),
        }
    }
}

/// `[input]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputSection {
    /// Files or folders of URL lists, in order (folders: their files by
    /// name); relative to the job file.
    #[serde(default)]
    pub urls: Vec<String>,
    /// `auto` (a line starting with `{` is NDJSON), `text` or `ndjson`.
    #[serde(default = "default_format")]
    pub format: String,
    /// The NDJSON member holding the URL.
    #[serde(default = "default_field")]
    pub field: String,
    /// URLs per numbered segment (the unit of progress and of leases).
    #[serde(default = "default_segment")]
    pub segment_urls: u64,
}

fn default_format() -> String {
    "auto".into()
}
fn default_field() -> String {
    "url".into()
}
fn default_segment() -> u64 {
    65_536
}

impl Default for InputSection {
    fn default() -> Self {
        Self {
            urls: Vec::new(),
            format: default_format(),
            field: default_field(),
            segment_urls: default_segment(),
        }
    }
}

/// `[http]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSection {
    /// URLs between admission and their result, all hosts together.
    #[serde(default = "d_in_flight")]
    pub max_in_flight: usize,
    /// Requests in flight to one host.
    #[serde(default = "d_per_host")]
    pub per_host_in_flight: usize,
    /// Requests per second to one host (absent: no cap).
    #[serde(default)]
    pub per_host_rate: Option<f64>,
    /// Whole-request timeout (`10s`).
    #[serde(default = "d_timeout")]
    pub timeout: String,
    /// Largest body accepted, e.g. `4MiB`.
    #[serde(default = "d_max_body")]
    pub max_body: String,
    /// Redirects followed before the URL is dead.
    #[serde(default = "d_redirects")]
    pub max_redirects: u32,
    /// Attempts of a URL whose errors may pass (timeouts, 5xx, resets).
    #[serde(default = "d_attempts")]
    pub max_attempts: u32,
    /// First retry delay, doubled each attempt.
    #[serde(default = "d_backoff")]
    pub backoff: String,
    /// Connect every host to this address (`127.0.0.1:9000`), keeping the
    /// URL's host in the `Host` header (the image simulator's hosts).
    #[serde(default)]
    pub connect_to: Option<String>,
    /// A PEM file of CA certificates trusted for `https` besides the
    /// built-in (Mozilla's) roots: private hosts, test servers. Relative to
    /// the job file.
    #[serde(default)]
    pub ca_file: Option<String>,
}

fn d_in_flight() -> usize {
    1_024
}
fn d_per_host() -> usize {
    8
}
fn d_timeout() -> String {
    "10s".into()
}
fn d_max_body() -> String {
    "4MiB".into()
}
fn d_redirects() -> u32 {
    5
}
fn d_attempts() -> u32 {
    4
}
fn d_backoff() -> String {
    "200ms".into()
}

impl Default for HttpSection {
    fn default() -> Self {
        Self {
            max_in_flight: d_in_flight(),
            per_host_in_flight: d_per_host(),
            per_host_rate: None,
            timeout: d_timeout(),
            max_body: d_max_body(),
            max_redirects: d_redirects(),
            max_attempts: d_attempts(),
            backoff: d_backoff(),
            connect_to: None,
            ca_file: None,
        }
    }
}

/// `[process]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessSection {
    /// Longest side of the thumbnail, in pixels.
    #[serde(default = "d_thumb")]
    pub thumbnail: u32,
    /// Decoding threads (0: one per core).
    #[serde(default)]
    pub workers: usize,
    /// Largest image accepted, in pixels (width × height).
    #[serde(default = "d_pixels")]
    pub max_pixels: u64,
}

fn d_thumb() -> u32 {
    64
}
fn d_pixels() -> u64 {
    50_000_000
}

impl Default for ProcessSection {
    fn default() -> Self {
        Self {
            thumbnail: d_thumb(),
            workers: 0,
            max_pixels: d_pixels(),
        }
    }
}

/// `[detector]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DetectorSection {
    /// `POST` URL of the batch detector.
    pub url: String,
    /// Images per call at most.
    #[serde(default = "d_batch")]
    pub batch: usize,
    /// Longest an image waits for its batch to fill.
    #[serde(default = "d_wait")]
    pub wait: String,
    /// Calls in flight at once.
    #[serde(default = "d_calls")]
    pub in_flight: usize,
    /// Attempts of a call before its images are dead letters.
    #[serde(default = "d_det_attempts")]
    pub max_attempts: u32,
    /// Timeout of one call.
    #[serde(default = "d_det_timeout")]
    pub timeout: String,
}

fn d_batch() -> usize {
    64
}
fn d_wait() -> String {
    "50ms".into()
}
fn d_calls() -> usize {
    8
}
fn d_det_attempts() -> u32 {
    6
}
fn d_det_timeout() -> String {
    "30s".into()
}

impl DetectorSection {
    /// The defaults with `url`.
    pub fn with_url(url: &str) -> Self {
        Self {
            url: url.into(),
            batch: d_batch(),
            wait: d_wait(),
            in_flight: d_calls(),
            max_attempts: d_det_attempts(),
            timeout: d_det_timeout(),
        }
    }
}

/// `[s3]`. Credentials and region come from the AWS environment
/// variables, never from the job file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Section {
    /// An S3-compatible server (`http://127.0.0.1:9000`; http allowed);
    /// absent: AWS (or `AWS_ENDPOINT`).
    #[serde(default)]
    pub endpoint: Option<String>,
}

/// `[output]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputSection {
    /// A results file is closed (and its URLs committed) at this size…
    #[serde(default = "d_roll_bytes")]
    pub roll_bytes: String,
    /// …or this long after its first row, whichever comes first.
    #[serde(default = "d_roll_after")]
    pub roll_after: String,
    /// `s3://bucket/prefix`: every committed results file is uploaded
    /// there (`results/…`), and the dead letters and summary at the end.
    #[serde(default)]
    pub remote: Option<String>,
}

fn d_roll_bytes() -> String {
    "64MiB".into()
}
fn d_roll_after() -> String {
    "5s".into()
}

impl Default for OutputSection {
    fn default() -> Self {
        Self {
            roll_bytes: d_roll_bytes(),
            roll_after: d_roll_after(),
            remote: None,
        }
    }
}

/// A config that does not build.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
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
        /// The file (or `command line`).
        file: String,
        /// The key, e.g. `http.max_body`.
        key: String,
        /// Why, and what to write instead.
        message: String,
    },
}

/// The validated job.
#[derive(Debug, Clone)]
pub struct BatchJob {
    /// The job's name.
    pub name: String,
    /// Input files, folders and S3 prefixes, resolved.
    pub inputs: Vec<Input>,
    /// The endpoint of `s3://` locations (see [`S3Section::endpoint`]).
    pub s3_endpoint: Option<String>,
    /// How lines are read.
    pub format: InputFormat,
    /// The NDJSON member holding the URL.
    pub field: String,
    /// URLs per segment.
    pub segment_urls: u64,
    /// Downloads.
    pub http: HttpSettings,
    /// Processing.
    pub process: ProcessSettings,
    /// The batch enrichment.
    pub detector: Option<DetectorSettings>,
    /// Output files.
    pub output: OutputSettings,
}

/// One entry of `[input] urls`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// A file or folder.
    Local(PathBuf),
    /// `s3://bucket/prefix`: the objects under it, in key order.
    S3(String),
}

/// How a line of input is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputFormat {
    /// NDJSON when the line starts with `{`, else the line is the URL.
    Auto,
    /// The line is the URL.
    Text,
    /// Every line is a JSON object with the URL in `field`.
    Ndjson,
}

/// `[http]`, checked.
#[derive(Debug, Clone)]
pub struct HttpSettings {
    /// See [`HttpSection::max_in_flight`].
    pub max_in_flight: usize,
    /// See [`HttpSection::per_host_in_flight`].
    pub per_host_in_flight: usize,
    /// See [`HttpSection::per_host_rate`].
    pub per_host_rate: Option<f64>,
    /// See [`HttpSection::timeout`].
    pub timeout: Duration,
    /// See [`HttpSection::max_body`].
    pub max_body: u64,
    /// See [`HttpSection::max_redirects`].
    pub max_redirects: u32,
    /// See [`HttpSection::max_attempts`].
    pub max_attempts: u32,
    /// See [`HttpSection::backoff`].
    pub backoff: Duration,
    /// See [`HttpSection::connect_to`].
    pub connect_to: Option<SocketAddr>,
    /// The certificates of [`HttpSection::ca_file`], read and checked.
    pub extra_roots: Vec<CertificateDer<'static>>,
}

/// `[process]`, checked.
#[derive(Debug, Clone)]
pub struct ProcessSettings {
    /// See [`ProcessSection::thumbnail`].
    pub thumbnail: u32,
    /// Decoding threads (resolved: at least 1).
    pub workers: usize,
    /// See [`ProcessSection::max_pixels`].
    pub max_pixels: u64,
}

/// `[detector]`, checked.
#[derive(Debug, Clone)]
pub struct DetectorSettings {
    /// Where to `POST`.
    pub url: Uri,
    /// See [`DetectorSection::batch`].
    pub batch: usize,
    /// See [`DetectorSection::wait`].
    pub wait: Duration,
    /// See [`DetectorSection::in_flight`].
    pub in_flight: usize,
    /// See [`DetectorSection::max_attempts`].
    pub max_attempts: u32,
    /// See [`DetectorSection::timeout`].
    pub timeout: Duration,
}

/// `[output]`, checked.
#[derive(Debug, Clone)]
pub struct OutputSettings {
    /// See [`OutputSection::roll_bytes`].
    pub roll_bytes: u64,
    /// See [`OutputSection::roll_after`].
    pub roll_after: Duration,
    /// See [`OutputSection::remote`].
    pub remote: Option<String>,
}

/// The CA certificates of a PEM file, each checked to be usable as a
/// trust anchor.
fn read_ca_file(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: not PEM certificates: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{}: no CERTIFICATE block (a PEM file like ca.pem is expected)",
            path.display()
        ));
    }
    let mut store = rustls::RootCertStore::empty();
    for cert in &certs {
        store.add(cert.clone()).map_err(|e| {
            format!(
                "{}: a certificate is not usable as a CA: {e}",
                path.display()
            )
        })?;
    }
    Ok(certs)
}

/// Parses `4MiB`, `512KiB`, `64MB`, `1GiB` or a plain number of bytes.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let digits = t.bytes().take_while(u8::is_ascii_digit).count();
    let (n, unit) = t.split_at(digits);
    let n: u64 = n
        .parse()
        .map_err(|_| format!("{text:?} is not a size like 4MiB or 65536"))?;
    let mult = match unit.trim() {
        "" | "B" => 1,
        "KB" | "kB" => 1_000,
        "KiB" => 1 << 10,
        "MB" => 1_000_000,
        "MiB" => 1 << 20,
        "GB" => 1_000_000_000,
        "GiB" => 1 << 30,
        other => {
            return Err(format!(
                "unknown unit {other:?} (B, KiB, MiB, GiB, KB, MB, GB)"
            ))
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("{text:?} is too large"))
}

impl BatchJobConfig {
    /// Parses TOML; `source` names it in errors, `base` resolves relative
    /// input paths.
    pub fn parse(text: &str, source: &str, base: &Path) -> Result<Self, SpecError> {
        let mut config: BatchJobConfig = toml::from_str(text).map_err(|e| SpecError::Syntax {
            file: source.to_owned(),
            message: e.to_string().trim_end().replace('\n', " "),
        })?;
        config.source = source.to_owned();
        config.base = base.to_owned();
        Ok(config)
    }

    /// Reads and parses a job file.
    pub fn load(path: &Path) -> Result<Self, SpecError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| SpecError::Read {
            file: file.clone(),
            source,
        })?;
        let base = path.parent().unwrap_or(Path::new(".")).to_owned();
        Self::parse(&text, &file, &base)
    }

    /// The defaults over the given URL lists (`trawler crawl --urls`).
    pub fn for_urls(urls: &[PathBuf]) -> Self {
        Self {
            input: InputSection {
                urls: urls.iter().map(|p| p.display().to_string()).collect(),
                ..InputSection::default()
            },
            source: "command line".into(),
            base: PathBuf::from("."),
            ..Self::default()
        }
    }

    /// A path of the job file, relative to its folder.
    fn resolve(&self, path: &str) -> PathBuf {
        let p = Path::new(path);
        if p.is_absolute() {
            p.to_owned()
        } else {
            self.base.join(p)
        }
    }

    /// Checks every value.
    pub fn build(&self) -> Result<BatchJob, SpecError> {
        let bad = |key: &str, message: String| SpecError::Invalid {
            file: self.source.clone(),
            key: key.to_owned(),
            message,
        };
        let duration = |key: &str, text: &str| {
            trawler_crawl::job::parse_duration(text).map_err(|m| bad(key, format!("{text:?}: {m}")))
        };
        if self.job.kind != "batch" {
            return Err(bad(
                "job.kind",
                format!(
                    "{:?}: a batch job file says kind = \"batch\"",
                    self.job.kind
                ),
            ));
        }
        let name = &self.job.name;
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(bad(
                "job.name",
                format!("{name:?}: use letters, digits, - and _"),
            ));
        }
        if self.input.urls.is_empty() {
            return Err(bad(
                "input.urls",
                "no URL list: give files or folders (or --urls on the command line)".into(),
            ));
        }
        let s3_endpoint = self.s3.endpoint.clone();
        let s3 = |key: &str, url: &str| {
            crate::remote::Remote::new(url, s3_endpoint.as_deref())
                .map(|_| ())
                .map_err(|e| bad(key, e.to_string()))
        };
        let mut inputs = Vec::new();
        for u in &self.input.urls {
            if crate::remote::is_s3(u) {
                s3("input.urls", u)?;
                inputs.push(Input::S3(u.clone()));
            } else {
                inputs.push(Input::Local(self.resolve(u)));
            }
        }
        if let Some(r) = &self.output.remote {
            if !crate::remote::is_s3(r) {
                return Err(bad(
                    "output.remote",
                    format!("{r:?}: an s3://bucket/prefix URL"),
                ));
            }
            s3("output.remote", r)?;
        }
        let format = match self.input.format.as_str() {
            "auto" => InputFormat::Auto,
            "text" => InputFormat::Text,
            "ndjson" => InputFormat::Ndjson,
            other => {
                return Err(bad(
                    "input.format",
                    format!("{other:?}: one of auto, text, ndjson"),
                ))
            }
        };
        if self.input.segment_urls == 0 {
            return Err(bad("input.segment_urls", "must be at least 1".into()));
        }
        let h = &self.http;
        if h.max_in_flight == 0 {
            return Err(bad("http.max_in_flight", "must be at least 1".into()));
        }
        if h.per_host_in_flight == 0 {
            return Err(bad("http.per_host_in_flight", "must be at least 1".into()));
        }
        if let Some(r) = h.per_host_rate {
            if !(r.is_finite() && r > 0.0) {
                return Err(bad(
                    "http.per_host_rate",
                    format!("{r}: requests per second above 0 (leave it out for no cap)"),
                ));
            }
        }
        if h.max_attempts == 0 {
            return Err(bad("http.max_attempts", "must be at least 1".into()));
        }
        let connect_to = match &h.connect_to {
            None => None,
            Some(a) => Some(a.parse::<SocketAddr>().map_err(|_| {
                bad(
                    "http.connect_to",
                    format!("{a:?}: an address like 127.0.0.1:9000"),
                )
            })?),
        };
        let extra_roots = match &h.ca_file {
            None => Vec::new(),
            Some(f) => read_ca_file(&self.resolve(f)).map_err(|m| bad("http.ca_file", m))?,
        };
        let http = HttpSettings {
            max_in_flight: h.max_in_flight,
            per_host_in_flight: h.per_host_in_flight,
            per_host_rate: h.per_host_rate,
            timeout: duration("http.timeout", &h.timeout)?,
            max_body: parse_size(&h.max_body).map_err(|m| bad("http.max_body", m))?,
            max_redirects: h.max_redirects,
            max_attempts: h.max_attempts,
            backoff: duration("http.backoff", &h.backoff)?,
            connect_to,
            extra_roots,
        };
        let p = &self.process;
        if !(8..=1024).contains(&p.thumbnail) {
            return Err(bad("process.thumbnail", "8 to 1024 pixels".into()));
        }
        let workers = if p.workers == 0 {
            std::thread::available_parallelism().map_or(2, |n| n.get())
        } else {
            p.workers
        };
        let detector = match &self.detector {
            None => None,
            Some(d) => {
                let url: Uri = d
                    .url
                    .parse()
                    .map_err(|_| bad("detector.url", format!("{:?}: an http:// URL", d.url)))?;
                if url.scheme_str() != Some("http") || url.host().is_none() {
                    return Err(bad(
                        "detector.url",
                        format!("{:?}: an http:// URL with a host", d.url),
                    ));
                }
                if d.batch == 0 || d.in_flight == 0 || d.max_attempts == 0 {
                    return Err(bad(
                        "detector",
                        "batch, in_flight and max_attempts must be at least 1".into(),
                    ));
                }
                Some(DetectorSettings {
                    url,
                    batch: d.batch,
                    wait: duration("detector.wait", &d.wait)?,
                    in_flight: d.in_flight,
                    max_attempts: d.max_attempts,
                    timeout: duration("detector.timeout", &d.timeout)?,
                })
            }
        };
        let output = OutputSettings {
            roll_bytes: parse_size(&self.output.roll_bytes)
                .map_err(|m| bad("output.roll_bytes", m))?,
            roll_after: duration("output.roll_after", &self.output.roll_after)?,
            remote: self.output.remote.clone(),
        };
        Ok(BatchJob {
            name: name.clone(),
            inputs,
            s3_endpoint,
            format,
            field: self.input.field.clone(),
            segment_urls: self.input.segment_urls,
            http,
            process: ProcessSettings {
                thumbnail: p.thumbnail,
                workers,
                max_pixels: p.max_pixels,
            },
            detector,
            output,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(text: &str) -> Result<BatchJob, SpecError> {
        BatchJobConfig::parse(text, "t.toml", Path::new("/jobs"))?.build()
    }

    #[test]
    fn a_minimal_job_builds_with_defaults() {
        let job = build("[job]\nname = \"img\"\nkind = \"batch\"\n[input]\nurls = [\"u.txt\"]\n")
            .unwrap();
        assert_eq!(job.inputs, vec![Input::Local(PathBuf::from("/jobs/u.txt"))]);
        assert_eq!(job.http.max_body, 4 << 20);
        assert_eq!(job.http.per_host_in_flight, 8);
        assert!(job.detector.is_none());
    }

    #[test]
    fn errors_name_file_and_key() {
        let e = build("[job]\nname = \"x\"\nkind = \"batch\"\n[input]\nurls = [\"u\"]\n[http]\nper_host_in_flight = 0\n")
            .unwrap_err()
            .to_string();
        assert_eq!(e, "t.toml: http.per_host_in_flight: must be at least 1");
        let e = build("[job]\nname = \"x\"\nkind = \"batch\"\n[input]\nurls = [\"u\"]\n[http]\nmax_body = \"4 parsecs\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("t.toml: http.max_body: unknown unit"), "{e}");
        let e = build("[job]\nname = \"x\"\nkind = \"stream\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("job.kind"), "{e}");
        let e = build("[job]\nname = \"x\"\nkind = \"batch\"\n[inptu]\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("t.toml:") && e.contains("inptu"), "{e}");
    }

    #[test]
    fn a_ca_file_must_hold_certificates() {
        let dir = tempfile::tempdir().unwrap();
        let job = |ca: &str| {
            let text = format!("[job]\nname = \"x\"\nkind = \"batch\"\n[input]\nurls = [\"u\"]\n[http]\nca_file = \"{ca}\"\n");
            BatchJobConfig::parse(&text, "t.toml", dir.path())
                .unwrap()
                .build()
        };
        let e = job("nope.pem").unwrap_err().to_string();
        assert!(
            e.starts_with("t.toml: http.ca_file: ") && e.contains("nope.pem"),
            "{e}"
        );
        std::fs::write(dir.path().join("empty.pem"), "not pem\n").unwrap();
        let e = job("empty.pem").unwrap_err().to_string();
        assert!(e.contains("no CERTIFICATE block"), "{e}");
        let ca = Path::new(env!("CARGO_MANIFEST_DIR")).join("../trawler/tests/fixtures/tls/ca.pem");
        let built = job(&ca.display().to_string()).unwrap();
        assert_eq!(built.http.extra_roots.len(), 1);
    }

    #[test]
    fn the_shipped_job_file_builds() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../jobs/images.toml");
        let job = BatchJobConfig::load(&path).unwrap().build().unwrap();
        assert_eq!(job.name, "images");
        assert!(matches!(&job.inputs[0], Input::Local(p) if p.ends_with("urls.txt.gz")));
        assert_eq!(job.detector.unwrap().batch, 64);
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("4MiB"), Ok(4 << 20));
        assert_eq!(parse_size("65536"), Ok(65_536));
        assert_eq!(parse_size("2 GB"), Ok(2_000_000_000));
        assert!(parse_size("MiB").is_err());
    }
}
