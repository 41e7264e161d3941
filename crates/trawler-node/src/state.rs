//! Small state files of a run, kept next to the store in the data folder:
//! the tracked id set (so a restart resumes what the API changed) and the
//! ids the target reported as not found.
//!
//! Each file holds an id-set spec (`1000000..=1999999,2000005`), the same
//! syntax as `--ids`, so an operator can read and edit it. Writes go to a
//! temporary file that is fsynced and renamed over the old one, then the
//! folder is fsynced: after a crash the file is either the old or the new
//! set, never a torn mix.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use trawler_crawl::IdSet;

use crate::error::{config_error, Result, Step};

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
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let tmp = self.path.with_extension("tmp");
        let write = || -> std::io::Result<()> {
            let mut file = fs::File::create(&tmp)?;
            writeln!(file, "{set}")?;
            file.sync_all()?;
            fs::rename(&tmp, &self.path)?;
            fs::File::open(dir)?.sync_all()
        };
        write().with_step(|| format!("writing {}", self.path.display()))
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
}
