//! Reading URL lists: files or folders (their files by name, hidden ones
//! skipped), plain text (one URL a line) or NDJSON (`{"url": …}` a line),
//! each optionally gzip (told by its first bytes, not its name). Empty lines
//! and lines starting with `#` are skipped and take no line number.
//!
//! Line numbers run across the files in order, from 0; the line number
//! fixes the URL's segment (`line / segment_urls`). The same input gives
//! the same numbering, so the data folder records the input's identity
//! ([`Manifest`]) and a restart over another input is refused.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use hyper::Uri;

use crate::log::DeadKind;
use crate::spec::InputFormat;

/// A bad input.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InputError {
    /// A file or folder could not be read.
    #[error("URL list {path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A folder holds no list.
    #[error("URL list {path}: the folder holds no file")]
    EmptyFolder {
        /// The folder.
        path: PathBuf,
    },
    /// A gzip file that does not decompress.
    #[error("URL list {path}, line {line}: {message}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The line (1-based, in that file) where reading failed.
        line: u64,
        /// Why.
        message: String,
    },
}

/// The files of the inputs, in reading order, checked to be readable.
pub fn files(inputs: &[PathBuf]) -> Result<Vec<PathBuf>, InputError> {
    let mut out = Vec::new();
    for input in inputs {
        let io = |source| InputError::Io {
            path: input.clone(),
            source,
        };
        let meta = std::fs::metadata(input).map_err(io)?;
        if meta.is_dir() {
            let mut names: Vec<PathBuf> = std::fs::read_dir(input)
                .map_err(io)?
                .filter_map(|e| e.ok())
                .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
                .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
                .map(|e| e.path())
                .collect();
            names.sort();
            if names.is_empty() {
                return Err(InputError::EmptyFolder {
                    path: input.clone(),
                });
            }
            out.extend(names);
        } else {
            File::open(input).map_err(io)?;
            out.push(input.clone());
        }
    }
    Ok(out)
}

/// What identifies an input: its files' names, sizes and a hash of their
/// first MiB. Saved as `<data>/input` at the first run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest(pub String);

impl Manifest {
    /// The manifest of these files.
    pub fn of(files: &[PathBuf]) -> Result<Manifest, InputError> {
        let mut text = String::new();
        for f in files {
            let io = |source| InputError::Io {
                path: f.clone(),
                source,
            };
            let mut file = File::open(f).map_err(io)?;
            let size = file.metadata().map_err(io)?.len();
            let mut head = Vec::new();
            (&mut file)
                .take(1 << 20)
                .read_to_end(&mut head)
                .map_err(io)?;
            let name = f.file_name().unwrap_or_default().to_string_lossy();
            text.push_str(&format!(
                "{name}\t{size}\t{:016x}\n",
                xxhash_rust::xxh3::xxh3_64(&head)
            ));
        }
        Ok(Manifest(text))
    }
}

/// A URL read from the input, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The parsed URL.
    pub uri: Uri,
    /// Its host (lower case) and port: the key of per-host limits.
    pub host: String,
}

/// Checks a URL: absolute `http://` or `https://` with a host and a valid
/// port.
pub fn check_url(url: &str) -> Result<Target, (DeadKind, String)> {
    let invalid = |why: &str| (DeadKind::InvalidUrl, format!("invalid URL: {why}"));
    let uri: Uri = url.parse().map_err(|e| invalid(&format!("{e}")))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        Some(other) => return Err(invalid(&format!("scheme {other:?}, not http or https"))),
        None => return Err(invalid("not an absolute URL")),
    }
    let authority = uri.authority().ok_or_else(|| invalid("no host"))?;
    if authority.host().is_empty() {
        return Err(invalid("no host"));
    }
    if authority.as_str().contains('@') {
        return Err(invalid("credentials in the URL"));
    }
    // `Uri` accepts any digits as a port; a port must fit 16 bits.
    if let Some(port) = authority.as_str().rsplit_once(':').map(|(_, p)| p) {
        if !authority.host().ends_with(']') && port.parse::<u16>().is_err() {
            return Err(invalid(&format!("port {port:?}")));
        }
    }
    let host = authority.as_str().to_ascii_lowercase();
    Ok(Target { uri, host })
}

/// The URL's fingerprint: xxh3-128 of the URL as written (trimmed).
///
/// 128 bits rather than 64: the set of fingerprints is what decides that a
/// URL is a duplicate, and at 2·10⁹ URLs two distinct URLs share a 64-bit
/// fingerprint with probability ≈ n²/2⁶⁵ ≈ 10 %, but a 128-bit one with
/// ≈ n²/2¹²⁹ ≈ 6·10⁻²¹ — far below the odds of an undetected disk error,
/// which is what makes the check exact in practice without keeping URLs.
pub fn fingerprint(url: &str) -> u128 {
    xxhash_rust::xxh3::xxh3_128(url.as_bytes())
}

/// One line of input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    /// Its number across all files, from 0.
    pub number: u64,
    /// The URL as written; for a line that is not one, the line itself.
    pub url: String,
    /// `Err` when no URL could be read from the line (bad NDJSON).
    pub problem: Option<String>,
}

/// Reads the lines of the input files in order.
pub struct Lines {
    files: std::vec::IntoIter<PathBuf>,
    current: Option<(PathBuf, Box<dyn BufRead + Send>, u64)>,
    format: InputFormat,
    field: String,
    number: u64,
    buf: Vec<u8>,
    /// Compressed or plain bytes read from the files, for the ETA.
    pub bytes_read: Arc<AtomicU64>,
}

/// Counts bytes read through it.
struct Counting<R> {
    inner: R,
    count: Arc<AtomicU64>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

impl Lines {
    /// Reads `files` (from [`files`]).
    pub fn new(files: Vec<PathBuf>, format: InputFormat, field: &str) -> Lines {
        Lines {
            files: files.into_iter(),
            current: None,
            format,
            field: field.to_owned(),
            number: 0,
            buf: Vec::with_capacity(512),
            bytes_read: Arc::new(AtomicU64::new(0)),
        }
    }

    fn open(&self, path: &Path) -> Result<Box<dyn BufRead + Send>, InputError> {
        let io = |source| InputError::Io {
            path: path.to_owned(),
            source,
        };
        let mut file = BufReader::with_capacity(
            1 << 16,
            Counting {
                inner: File::open(path).map_err(io)?,
                count: self.bytes_read.clone(),
            },
        );
        let gzip = file.fill_buf().map_err(io)?.starts_with(&[0x1f, 0x8b]);
        Ok(if gzip {
            Box::new(BufReader::with_capacity(
                1 << 16,
                flate2::bufread::MultiGzDecoder::new(file),
            ))
        } else {
            Box::new(file)
        })
    }

    /// The next line, `None` at the end of the last file.
    pub fn next_line(&mut self) -> Result<Option<Line>, InputError> {
        loop {
            if self.current.is_none() {
                let Some(path) = self.files.next() else {
                    return Ok(None);
                };
                let reader = self.open(&path)?;
                self.current = Some((path, reader, 0));
            }
            let (path, reader, line_in_file) = self.current.as_mut().expect("just set");
            self.buf.clear();
            let n = reader
                .read_until(b'\n', &mut self.buf)
                .map_err(|e| InputError::Corrupt {
                    path: path.clone(),
                    line: *line_in_file + 1,
                    message: e.to_string(),
                })?;
            if n == 0 {
                self.current = None;
                continue;
            }
            *line_in_file += 1;
            let text = String::from_utf8_lossy(&self.buf);
            let text = text.trim();
            if text.is_empty() || text.starts_with('#') {
                continue;
            }
            let number = self.number;
            self.number += 1;
            let ndjson = match self.format {
                InputFormat::Text => false,
                InputFormat::Ndjson => true,
                InputFormat::Auto => text.starts_with('{'),
            };
            let (url, problem) = if ndjson {
                match serde_json::from_str::<serde_json::Value>(text) {
                    Ok(v) => match v.get(&self.field).and_then(|u| u.as_str()) {
                        Some(u) => (u.trim().to_owned(), None),
                        None => (
                            text.to_owned(),
                            Some(format!(
                                "{}:{}: no string member {:?}",
                                path.display(),
                                line_in_file,
                                self.field
                            )),
                        ),
                    },
                    Err(e) => (
                        text.to_owned(),
                        Some(format!(
                            "{}:{}: not JSON: {e}",
                            path.display(),
                            line_in_file
                        )),
                    ),
                }
            } else {
                (text.to_owned(), None)
            };
            return Ok(Some(Line {
                number,
                url,
                problem,
            }));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn read_all(files: Vec<PathBuf>, format: InputFormat) -> Vec<Line> {
        let mut lines = Lines::new(files, format, "url");
        let mut out = Vec::new();
        while let Some(l) = lines.next_line().unwrap() {
            out.push(l);
        }
        out
    }

    #[test]
    fn text_ndjson_and_gzip_read_alike() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.txt");
        std::fs::write(&a, "http://h/1\n\n# comment\n  http://h/2  \n").unwrap();
        let b = dir.path().join("b.ndjson.gz");
        let mut gz =
            flate2::write::GzEncoder::new(File::create(&b).unwrap(), flate2::Compression::fast());
        gz.write_all(b"{\"url\":\"http://h/3\"}\n{\"href\":1}\nnot json {\n")
            .unwrap();
        gz.finish().unwrap();
        let all = read_all(files(&[dir.path().to_owned()]).unwrap(), InputFormat::Auto);
        let urls: Vec<_> = all.iter().map(|l| l.url.as_str()).collect();
        assert_eq!(
            urls,
            [
                "http://h/1",
                "http://h/2",
                "http://h/3",
                "{\"href\":1}",
                "not json {"
            ]
        );
        assert_eq!(all[4].number, 4);
        assert!(all[3]
            .problem
            .as_ref()
            .unwrap()
            .contains("no string member \"url\""));
        assert!(
            all[4].problem.is_none(),
            "auto: not starting with {{ is text"
        );
        let strict = read_all(vec![b], InputFormat::Ndjson);
        assert!(strict[2].problem.as_ref().unwrap().contains("not JSON"));
    }

    #[test]
    fn missing_inputs_and_empty_folders_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let e = files(&[dir.path().join("nope.txt")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("nope.txt") && e.contains("No such file"), "{e}");
        let e = files(&[dir.path().to_owned()]).unwrap_err().to_string();
        assert!(e.contains("holds no file"), "{e}");
    }

    #[test]
    fn urls_are_checked() {
        assert_eq!(
            check_url("http://H1.images.test/img/1.jpg").unwrap().host,
            "h1.images.test"
        );
        assert_eq!(check_url("http://h:8080/x").unwrap().host, "h:8080");
        for bad in [
            "not a url",
            "ftp://h/x",
            "http:///x",
            "http://h:99999/x",
            "/x",
            "mailto:a@b",
        ] {
            let (kind, _) = check_url(bad).unwrap_err();
            assert_eq!(kind, DeadKind::InvalidUrl, "{bad}");
        }
        assert_eq!(check_url("https://H:8443/x").unwrap().host, "h:8443");
    }
}
