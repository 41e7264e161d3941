//! The results: Parquet files (zstd pages) in `<data>/results/`, rolled by
//! size or age, one row per URL.
//!
//! A file is written as `part-NNNNNN.parquet.tmp`, closed and fsynced, then
//! its URLs are committed in the state log (one `commit` record), then it
//! is renamed to `part-NNNNNN.parquet`. [`recover`] finishes or discards a
//! file the process left at either step, so a URL is in exactly one file
//! (see [`crate::log`]). No compaction is needed: no file ever holds a row
//! whose URL another holds.
//!
//! Written through parquet's column writers, without arrow: the schema is
//! fixed ([`SCHEMA`]).

use std::collections::HashSet;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parquet::basic::{Compression, ZstdLevel};
use parquet::data_type::{
    ByteArray, ByteArrayType, FixedLenByteArray, FixedLenByteArrayType, Int32Type, Int64Type,
};
use parquet::file::properties::WriterProperties;
use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::file::writer::SerializedFileWriter;
use parquet::record::RowAccessor;
use parquet::schema::types::Type;

use crate::process::Processed;

/// The schema of a results file.
pub const SCHEMA: &str = "message result {
  required fixed_len_byte_array(16) fp;
  required binary url (UTF8);
  required int32 segment;
  required binary format (UTF8);
  required int32 width;
  required int32 height;
  required int64 bytes;
  required int64 content_hash;
  required int64 dhash;
  required int32 face_count;
  required binary faces (UTF8);
  required binary thumbnail;
  required int64 fetched_at_ms;
}";

/// One result.
#[derive(Debug, Clone)]
pub struct ResultRow {
    /// The URL's segment.
    pub segment: u32,
    /// The URL's fingerprint (the row's key).
    pub fp: u128,
    /// The URL as written.
    pub url: String,
    /// Bytes downloaded.
    pub bytes: u64,
    /// What processing found.
    pub processed: Processed,
    /// The detector's boxes `[x, y, w, h]`.
    pub faces: Vec<[u32; 4]>,
    /// When it was downloaded (unix ms).
    pub fetched_at_ms: i64,
}

/// An error of the results files.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OutputError {
    /// A file operation failed.
    #[error("results {path}: {what}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The step.
        what: &'static str,
        /// Why.
        source: std::io::Error,
    },
    /// The Parquet encoder or decoder failed.
    #[error("results {path}: {source}")]
    Parquet {
        /// The file.
        path: PathBuf,
        /// Why.
        source: parquet::errors::ParquetError,
    },
}

fn file_name(no: u32) -> String {
    format!("part-{no:06}.parquet")
}

fn number_of(name: &str) -> Option<u32> {
    name.strip_prefix("part-")?.split('.').next()?.parse().ok()
}

/// Cluster mode's results file of `segment`: `seg-NNNNNN.parquet`, whose
/// temporary name carries the node's id so that two nodes never write the
/// same file.
pub fn segment_file(dir: &Path, segment: u32, node: &str) -> (PathBuf, PathBuf) {
    let name = format!("seg-{segment:06}.parquet");
    (dir.join(format!("{name}.{node}.tmp")), dir.join(name))
}

/// Finishes what a previous process left in `dir`: a `.tmp` file whose
/// number is in `committed` is renamed, any other `.tmp` deleted. Returns
/// the next file number.
pub fn recover(dir: &Path, committed: &HashSet<u32>) -> Result<u32, OutputError> {
    let io = |what| {
        let path = dir.to_owned();
        move |source| OutputError::Io { path, what, source }
    };
    std::fs::create_dir_all(dir).map_err(io("creating"))?;
    let mut next = 0;
    for entry in std::fs::read_dir(dir).map_err(io("listing"))? {
        let entry = entry.map_err(io("listing"))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(no) = number_of(&name) else {
            continue;
        };
        next = next.max(no + 1);
        if let Some(stem) = name.strip_suffix(".tmp") {
            if committed.contains(&no) {
                tracing::info!(file = %name, "results: finishing a committed file");
                std::fs::rename(entry.path(), dir.join(stem)).map_err(io("renaming"))?;
            } else {
                tracing::info!(file = %name, "results: dropping an uncommitted file");
                std::fs::remove_file(entry.path()).map_err(io("removing"))?;
            }
        }
    }
    crate::log::sync_dir(&dir.join("x")).map_err(io("syncing"))?;
    Ok(next)
}

/// The results file being written.
pub struct OpenFile {
    /// Its number.
    pub no: u32,
    tmp: PathBuf,
    writer: SerializedFileWriter<File>,
    /// Its URLs (segment, fingerprint), for the commit.
    pub urls: Vec<(u32, u128)>,
    pending: Vec<ResultRow>,
    /// When its first row came.
    pub opened: std::time::Instant,
}

impl std::fmt::Debug for OpenFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenFile").field("no", &self.no).finish()
    }
}

/// Rows per row group.
pub const ROW_GROUP: usize = 8_192;

/// Writes results files in one folder.
pub struct Writer {
    dir: PathBuf,
    next: u32,
    schema: Arc<Type>,
    props: Arc<WriterProperties>,
}

impl Writer {
    /// Writes into `dir`, numbering from `next` (see [`recover`]).
    pub fn new(dir: &Path, next: u32) -> Writer {
        let schema = Arc::new(
            parquet::schema::parser::parse_message_type(SCHEMA).expect("the schema parses"),
        );
        let mut props = WriterProperties::builder()
            .set_compression(Compression::ZSTD(ZstdLevel::default()))
            .set_max_row_group_row_count(Some(ROW_GROUP));
        for col in [
            "fp",
            "url",
            "thumbnail",
            "content_hash",
            "dhash",
            "fetched_at_ms",
        ] {
            props = props.set_column_dictionary_enabled(col.into(), false);
        }
        Writer {
            dir: dir.to_owned(),
            next,
            schema,
            props: Arc::new(props.build()),
        }
    }

    /// Opens the next file.
    pub fn open(&mut self) -> Result<OpenFile, OutputError> {
        let no = self.next;
        self.next += 1;
        let tmp = self.dir.join(format!("{}.tmp", file_name(no)));
        self.open_at(no, tmp)
    }

    /// Opens a file under the temporary name `tmp` (cluster mode: one per
    /// segment, see [`segment_file`]).
    pub fn open_at(&self, no: u32, tmp: PathBuf) -> Result<OpenFile, OutputError> {
        let file = File::create(&tmp).map_err(|source| OutputError::Io {
            path: tmp.clone(),
            what: "creating",
            source,
        })?;
        let writer = SerializedFileWriter::new(file, self.schema.clone(), self.props.clone())
            .map_err(|source| OutputError::Parquet {
                path: tmp.clone(),
                source,
            })?;
        Ok(OpenFile {
            no,
            tmp,
            writer,
            urls: Vec::new(),
            pending: Vec::new(),
            opened: std::time::Instant::now(),
        })
    }
}

impl OpenFile {
    /// Its temporary name.
    pub fn tmp(&self) -> &Path {
        &self.tmp
    }

    /// Adds a row (written with its row group).
    pub fn push(&mut self, row: ResultRow) -> Result<(), OutputError> {
        self.urls.push((row.segment, row.fp));
        self.pending.push(row);
        if self.pending.len() >= ROW_GROUP {
            self.flush_group()?;
        }
        Ok(())
    }

    /// Bytes written so far (row groups written).
    pub fn bytes(&self) -> u64 {
        self.writer.bytes_written() as u64
    }

    fn flush_group(&mut self) -> Result<(), OutputError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let rows = std::mem::take(&mut self.pending);
        let path = self.tmp.clone();
        let pq = |source| OutputError::Parquet {
            path: path.clone(),
            source,
        };
        let mut group = self.writer.next_row_group().map_err(pq)?;
        let mut col = 0;
        while let Some(mut c) = group.next_column().map_err(pq)? {
            match col {
                0 => {
                    let v: Vec<FixedLenByteArray> = rows
                        .iter()
                        .map(|r| FixedLenByteArray::from(r.fp.to_be_bytes().to_vec()))
                        .collect();
                    c.typed::<FixedLenByteArrayType>()
                        .write_batch(&v, None, None)
                        .map_err(pq)?;
                }
                1 | 3 | 10 | 11 => {
                    let v: Vec<ByteArray> = rows
                        .iter()
                        .map(|r| match col {
                            1 => ByteArray::from(r.url.as_str()),
                            3 => ByteArray::from(r.processed.format),
                            10 => ByteArray::from(faces_json(&r.faces).as_str()),
                            _ => ByteArray::from(r.processed.thumbnail.clone()),
                        })
                        .collect();
                    c.typed::<ByteArrayType>()
                        .write_batch(&v, None, None)
                        .map_err(pq)?;
                }
                2 | 4 | 5 | 9 => {
                    let v: Vec<i32> = rows
                        .iter()
                        .map(|r| match col {
                            2 => r.segment as i32,
                            4 => r.processed.width as i32,
                            5 => r.processed.height as i32,
                            _ => r.faces.len() as i32,
                        })
                        .collect();
                    c.typed::<Int32Type>()
                        .write_batch(&v, None, None)
                        .map_err(pq)?;
                }
                _ => {
                    let v: Vec<i64> = rows
                        .iter()
                        .map(|r| match col {
                            6 => r.bytes as i64,
                            7 => r.processed.content_hash as i64,
                            8 => r.processed.dhash as i64,
                            _ => r.fetched_at_ms,
                        })
                        .collect();
                    c.typed::<Int64Type>()
                        .write_batch(&v, None, None)
                        .map_err(pq)?;
                }
            }
            c.close().map_err(pq)?;
            col += 1;
        }
        group.close().map_err(pq)?;
        Ok(())
    }

    /// Writes what is buffered, closes and fsyncs the temporary file;
    /// returns what [`OpenFile::publish`] needs once the commit is durable.
    pub fn finish(mut self) -> Result<Finished, OutputError> {
        self.flush_group()?;
        let path = self.tmp.clone();
        let file = self
            .writer
            .into_inner()
            .map_err(|source| OutputError::Parquet {
                path: path.clone(),
                source,
            })?;
        file.sync_all().map_err(|source| OutputError::Io {
            path: path.clone(),
            what: "syncing",
            source,
        })?;
        Ok(Finished {
            no: self.no,
            tmp: self.tmp,
            urls: self.urls,
        })
    }
}

/// A closed, fsynced, not yet published results file.
#[derive(Debug)]
pub struct Finished {
    /// Its number.
    pub no: u32,
    tmp: PathBuf,
    /// Its URLs.
    pub urls: Vec<(u32, u128)>,
}

impl Finished {
    /// Its temporary name.
    pub fn tmp(&self) -> &Path {
        &self.tmp
    }

    /// Renames it to its final name (after its commit is durable).
    pub fn publish(&self) -> Result<PathBuf, OutputError> {
        self.publish_as(self.tmp.with_extension(""))
    }

    /// Renames it to `path`, replacing a file there (cluster mode: a
    /// segment committed again holds the same URLs).
    pub fn publish_as(&self, path: PathBuf) -> Result<PathBuf, OutputError> {
        std::fs::rename(&self.tmp, &path)
            .and_then(|_| crate::log::sync_dir(&path))
            .map_err(|source| OutputError::Io {
                path: path.clone(),
                what: "publishing",
                source,
            })?;
        Ok(path)
    }
}

fn faces_json(faces: &[[u32; 4]]) -> String {
    let mut s = String::from("[");
    for (i, [x, y, w, h]) in faces.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        s.push_str(&format!("[{x},{y},{w},{h}]"));
    }
    s.push(']');
    s
}

/// The published results files of a data folder, by number.
pub fn result_files(dir: &Path) -> Result<Vec<PathBuf>, OutputError> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|source| OutputError::Io {
            path: dir.to_owned(),
            what: "listing",
            source,
        })?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "parquet"))
        .collect();
    files.sort();
    Ok(files)
}

/// The `(fp, url)` of every row of the published results (for checks and
/// the benchmark).
pub fn read_keys(dir: &Path) -> Result<Vec<(u128, String)>, OutputError> {
    let mut out = Vec::new();
    for path in result_files(dir)? {
        let pq = |source| OutputError::Parquet {
            path: path.clone(),
            source,
        };
        let file = File::open(&path).map_err(|source| OutputError::Io {
            path: path.clone(),
            what: "opening",
            source,
        })?;
        let reader = SerializedFileReader::new(file).map_err(pq)?;
        let projection = parquet::schema::parser::parse_message_type(
            "message result { required fixed_len_byte_array(16) fp; required binary url (UTF8); }",
        )
        .expect("the projection parses");
        for row in reader.get_row_iter(Some(projection)).map_err(pq)? {
            let row = row.map_err(pq)?;
            let fp = row.get_bytes(0).map_err(pq)?;
            let fp = u128::from_be_bytes(fp.data().try_into().unwrap_or([0; 16]));
            out.push((fp, row.get_string(1).map_err(pq)?.clone()));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(fp: u128) -> ResultRow {
        ResultRow {
            segment: 0,
            fp,
            url: format!("http://h/{fp}"),
            bytes: 10,
            processed: Processed {
                width: 1,
                height: 2,
                format: "jpeg",
                content_hash: 3,
                dhash: u64::MAX,
                thumbnail: vec![1, 2, 3],
            },
            faces: vec![[1, 2, 3, 4]],
            fetched_at_ms: 5,
        }
    }

    #[test]
    fn rows_round_trip_and_recovery_keeps_only_committed_files() {
        let dir = tempfile::tempdir().unwrap();
        let mut writer = Writer::new(dir.path(), recover(dir.path(), &HashSet::new()).unwrap());
        let mut f = writer.open().unwrap();
        for fp in 0..10_000u128 {
            f.push(row(fp << 100 | fp)).unwrap();
        }
        let done = f.finish().unwrap();
        done.publish().unwrap();
        let keys = read_keys(dir.path()).unwrap();
        assert_eq!(keys.len(), 10_000);
        assert_eq!(
            keys[7],
            (
                7 << 100 | 7,
                "http://h/".to_owned() + &(7u128 << 100 | 7).to_string()
            )
        );
        // Two files left unpublished: number 1 committed, number 2 not.
        for _ in 0..2 {
            let mut f = writer.open().unwrap();
            f.push(row(1)).unwrap();
            f.finish().unwrap();
        }
        assert_eq!(recover(dir.path(), &HashSet::from([1])).unwrap(), 3);
        assert_eq!(result_files(dir.path()).unwrap().len(), 2);
        assert_eq!(read_keys(dir.path()).unwrap().len(), 10_001);
    }
}
