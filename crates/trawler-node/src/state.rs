//! Small state files of a run, kept next to the store in the data folder:
//! the tracked id set (so a restart resumes what the API changed) and the
//! ids the target reported as not found.
//!
//! A job with string keys also keeps its key table here (`keys.txt`, see
//! [`KeysFile`]): the n-th line is the key of id n, so the ids in the store,
//! the tracked set and the views mean the same keys after a restart.
//!
//! Each id-set file holds an id-set spec (`1000000..=1999999,2000005`), the same
//! syntax as `--ids`, so an operator can read and edit it. Writes go to a
//! temporary file that is fsynced and renamed over the old one, then the
//! folder is fsynced: after a crash the file is either the old or the new
//! set, never a torn mix.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use trawler_crawl::IdSet;

use crate::error::{config_error, Result, Step};

/// The state files of one data folder.
#[derive(Debug, Clone)]
pub struct StateFiles {
    /// The tracked set (`tracked.ids`).
    pub tracked: IdSetFile,
    /// Ids the target reported as not found (`invalid.ids`).
    pub invalid: IdSetFile,
    /// The key table of a job with string keys (`keys.txt`).
    pub keys: KeysFile,
}

impl StateFiles {
    /// The files of the data folder `dir`.
    pub fn in_folder(dir: &Path) -> Self {
        Self {
            tracked: IdSetFile::new(dir.join("tracked.ids")),
            invalid: IdSetFile::new(dir.join("invalid.ids")),
            keys: KeysFile::new(dir.join("keys.txt")),
        }
    }
}

/// Claims the data folder `dir` for the job `name` (a file `job` holding
/// the name): the state files and ids of one job mean nothing to another,
/// so a folder that holds another job is refused, naming both.
pub fn claim_folder(dir: &Path, name: &str) -> Result<()> {
    let path = dir.join("job");
    match fs::read_to_string(&path) {
        Ok(held) if held.trim() == name => Ok(()),
        Ok(held) => Err(config_error!(
            "{}: this data folder holds the job {:?}; give the job {name:?} its own folder (--data)",
            dir.display(),
            held.trim()
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            replace(&path, format!("{name}\n").as_bytes())
        }
        Err(e) => Err(e).with_step(|| format!("reading {}", path.display())),
    }
}

/// An id set persisted in one file.
#[derive(Debug, Clone)]
pub struct IdSetFile {
    path: PathBuf,
}

impl IdSetFile {
    /// The file at `path` (which need not exist yet).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the set, or `None` if the file does not exist.
    pub fn load(&self) -> Result<Option<IdSet>> {
        match fs::read_to_string(&self.path) {
            Ok(text) if text.trim().is_empty() => Ok(Some(IdSet::new())),
            Ok(text) => {
                let set = text.trim().parse::<IdSet>().map_err(|e| {
                    config_error!("{}: not a valid id set: {e}", self.path.display())
                })?;
                Ok(Some(set))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_step(|| format!("reading {}", self.path.display())),
        }
    }

    /// Replaces the file's content with `set`, atomically and durably.
    pub fn save(&self, set: &IdSet) -> Result<()> {
        replace(&self.path, format!("{set}\n").as_bytes())
    }
}

/// Writes `bytes` to a temporary file, fsyncs it, renames it over `path`
/// and fsyncs the folder: after a crash the file is the old or the new
/// content, never a torn mix.
fn replace(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = path.with_extension("tmp");
    let write = || -> std::io::Result<()> {
        let mut file = fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&tmp, path)?;
        fs::File::open(dir)?.sync_all()
    };
    write().with_step(|| format!("writing {}", path.display()))
}

/// The key table of a job with string keys: a header line with the count
/// and a CRC-32 of the keys, then one key per line in id order. A file
/// whose checksum does not match is refused (a flipped byte would silently
/// give a series to another key).
#[derive(Debug, Clone)]
pub struct KeysFile {
    path: PathBuf,
}

const KEYS_HEADER: &str = "# trawler keys v1";

impl KeysFile {
    /// The file at `path` (which need not exist yet).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The keys in id order; empty when the file does not exist.
    pub fn load(&self) -> Result<Vec<String>> {
        let text = match fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e).with_step(|| format!("reading {}", self.path.display())),
        };
        let bad = |why: &str| config_error!("{}: {why}", self.path.display());
        let (header, body) = text.split_once('\n').ok_or_else(|| bad("no header line"))?;
        let fields: Vec<&str> = header.split(' ').collect();
        let (Some(count), Some(crc)) = (
            fields.iter().find_map(|f| f.strip_prefix("count=")),
            fields.iter().find_map(|f| f.strip_prefix("crc32=")),
        ) else {
            return Err(bad("the header lacks count= and crc32="));
        };
        if !header.starts_with(KEYS_HEADER) {
            return Err(bad("not a trawler key table"));
        }
        if format!("{:08x}", crc32fast::hash(body.as_bytes())) != crc {
            return Err(bad(
                "checksum mismatch: the key table is damaged (restore it from a backup; ids would otherwise name the wrong keys)",
            ));
        }
        let keys: Vec<String> = body.lines().map(str::to_owned).collect();
        if count.parse::<usize>().ok() != Some(keys.len()) {
            return Err(bad("the key count does not match the header"));
        }
        Ok(keys)
    }

    /// Replaces the table with `keys`, atomically and durably.
    pub fn save<S: AsRef<str>>(&self, keys: &[S]) -> Result<()> {
        let mut body = String::with_capacity(keys.len() * 16);
        for key in keys {
            body.push_str(key.as_ref());
            body.push('\n');
        }
        let header = format!(
            "{KEYS_HEADER} count={} crc32={:08x}\n",
            keys.len(),
            crc32fast::hash(body.as_bytes())
        );
        replace(&self.path, (header + &body).as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_reports_bad_files() {
        let dir = tempfile::tempdir().unwrap();
        let file = IdSetFile::new(dir.path().join("tracked.ids"));
        assert!(file.load().unwrap().is_none());
        file.save(&IdSet::new()).unwrap();
        assert_eq!(file.load().unwrap(), Some(IdSet::new()));
        let set: IdSet = "1000000..=1000099,1500000".parse().unwrap();
        file.save(&set).unwrap();
        assert_eq!(file.load().unwrap().unwrap(), set);
        fs::write(file.path(), "1000..oops").unwrap();
        let err = file.load().unwrap_err().to_string();
        assert!(err.contains("tracked.ids"), "{err}");
    }

    #[test]
    fn a_data_folder_holds_one_job() {
        let dir = tempfile::tempdir().unwrap();
        claim_folder(dir.path(), "influencers").unwrap();
        claim_folder(dir.path(), "influencers").unwrap();
        let err = claim_folder(dir.path(), "packages")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("\"influencers\"") && err.contains("--data"),
            "{err}"
        );
    }

    #[test]
    fn the_key_table_round_trips_and_a_damaged_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = KeysFile::new(dir.path().join("keys.txt"));
        assert!(file.load().unwrap().is_empty());
        file.save(&["serde", "tokio", "hyper"]).unwrap();
        assert_eq!(file.load().unwrap(), ["serde", "tokio", "hyper"]);
        let text = fs::read_to_string(file.path()).unwrap();
        fs::write(file.path(), text.replace("tokio", "tokia")).unwrap();
        let err = file.load().unwrap_err().to_string();
        assert!(
            err.contains("keys.txt") && err.contains("checksum"),
            "{err}"
        );
        fs::write(file.path(), "serde\ntokio\n").unwrap();
        assert!(
            file.load().is_err(),
            "a table without its header is refused"
        );
    }
}
