//! Where generated batches go: the `--out` targets and the [`Sink`] seam
//! the producer hands batches to.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;

use anyhow::{bail, Context};
use flate2::write::GzEncoder;
use flate2::Compression;

/// A parsed `--out`.
#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    /// `-`.
    Stdout,
    /// A file path; gzip when it ends in `.gz`.
    File(PathBuf),
    /// A stream job's HTTP endpoint.
    Http(String),
    /// `nats://HOST:PORT/SUBJECT`: server and subject.
    Nats {
        /// `HOST:PORT`.
        server: String,
        /// The subject published to.
        subject: String,
    },
}

/// Settings of the network sinks.
#[derive(Debug, Clone)]
pub struct Options {
    /// HTTP requests in flight.
    pub connections: usize,
    /// NATS publishes awaiting their ack.
    pub pending: usize,
    /// Gzip HTTP bodies.
    pub gzip: bool,
    /// HTTP: the API token, sent as `Authorization: Bearer …`.
    pub token: Option<String>,
}

/// What a sink delivered, for the summary line.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Report {
    /// Events handed to the sink.
    pub generated: u64,
    /// Events written, answered 2xx, or acknowledged.
    pub delivered: u64,
    /// The sink's error counter, named (`http_errors`, `publish_errors`).
    pub errors: Option<(&'static str, u64)>,
}

/// Takes batches of NDJSON lines; may block to push back on the producer.
pub trait Sink {
    /// Sends one batch of `events` lines.
    fn send(&mut self, batch: Vec<u8>, events: usize) -> anyhow::Result<()>;
    /// Waits for everything sent to be delivered or to fail.
    fn finish(self: Box<Self>) -> anyhow::Result<Report>;
}

impl Target {
    /// Parses `--out`.
    pub fn parse(out: &str) -> anyhow::Result<Target> {
        if out == "-" {
            return Ok(Target::Stdout);
        }
        if out.starts_with("http://") {
            let uri: hyper::Uri = out
                .parse()
                .with_context(|| format!("--out {out:?}: not a URL"))?;
            if uri.port_u16().is_none() && uri.host().is_none() {
                bail!("--out {out:?}: expected http://HOST:PORT/api/v1/streams/JOB/events");
            }
            return Ok(Target::Http(out.to_owned()));
        }
        if let Some(rest) = out.strip_prefix("nats://") {
            return match rest.split_once('/') {
                Some((server, subject)) if !server.is_empty() && !subject.is_empty() => {
                    Ok(Target::Nats {
                        server: server.to_owned(),
                        subject: subject.to_owned(),
                    })
                }
                _ => bail!("--out {out:?}: expected nats://HOST:PORT/SUBJECT"),
            };
        }
        if out.contains("://") {
            bail!("--out {out:?}: only http:// and nats:// URLs, `-` or a file path");
        }
        Ok(Target::File(PathBuf::from(out)))
    }

    /// Opens the sink: creates the file, connects to NATS.
    pub fn open(&self, options: &Options) -> anyhow::Result<Box<dyn Sink>> {
        Ok(match self {
            Target::Stdout => Box::new(Writer::new(Output::Plain(Box::new(BufWriter::new(
                std::io::stdout().lock(),
            ))))),
            Target::File(path) => {
                let file =
                    File::create(path).with_context(|| format!("creating {}", path.display()))?;
                let file = BufWriter::with_capacity(1 << 20, file);
                let gz = path.extension().is_some_and(|e| e == "gz");
                Box::new(Writer::new(if gz {
                    Output::Gzip(GzEncoder::new(file, Compression::fast()))
                } else {
                    Output::Plain(Box::new(file))
                }))
            }
            Target::Http(url) => Box::new(super::http::HttpSink::new(url, options)?),
            Target::Nats { server, subject } => Box::new(super::nats::NatsSink::new(
                server,
                subject,
                options.pending,
            )?),
        })
    }
}

enum Output {
    Plain(Box<dyn Write>),
    Gzip(GzEncoder<BufWriter<File>>),
}

/// stdout or a file.
struct Writer {
    out: Output,
    written: u64,
}

impl Writer {
    fn new(out: Output) -> Self {
        Self { out, written: 0 }
    }
}

impl Sink for Writer {
    fn send(&mut self, batch: Vec<u8>, events: usize) -> anyhow::Result<()> {
        match &mut self.out {
            Output::Plain(w) => w.write_all(&batch),
            Output::Gzip(w) => w.write_all(&batch),
        }
        .context("writing events")?;
        self.written += events as u64;
        Ok(())
    }

    fn finish(self: Box<Self>) -> anyhow::Result<Report> {
        match self.out {
            Output::Plain(mut w) => w.flush(),
            Output::Gzip(w) => w.finish().and_then(|mut f| f.flush()),
        }
        .context("writing events")?;
        Ok(Report {
            generated: self.written,
            delivered: self.written,
            errors: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse() {
        assert_eq!(Target::parse("-").unwrap(), Target::Stdout);
        assert_eq!(
            Target::parse("e.ndjson.gz").unwrap(),
            Target::File("e.ndjson.gz".into())
        );
        assert_eq!(
            Target::parse("nats://127.0.0.1:4222/expo.events").unwrap(),
            Target::Nats {
                server: "127.0.0.1:4222".into(),
                subject: "expo.events".into()
            }
        );
        assert!(Target::parse("nats://127.0.0.1:4222").is_err());
        assert!(Target::parse("https://x/y").is_err());
        assert!(matches!(
            Target::parse("http://127.0.0.1:8080/api/v1/streams/expo/events").unwrap(),
            Target::Http(_)
        ));
    }
}
