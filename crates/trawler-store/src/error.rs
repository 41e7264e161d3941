//! The store's error type: every variant names the file it concerns and what
//! the user can do about it.

use std::path::PathBuf;

/// Errors of the store. Non-exhaustive: new failure modes may appear in later
/// format versions.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An operating-system call on a file failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What the store was doing ("writing", "fsync", ...).
        op: &'static str,
        /// The file or folder concerned.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A file was written by a format version this build does not read.
    #[error(
        "{path}: on-disk format version {found} is not supported (this build reads versions 1 to {supported}); \
         open the data folder with the trawler version that wrote it"
    )]
    UnsupportedVersion {
        /// The file.
        path: PathBuf,
        /// The version found in the file.
        found: u32,
        /// The version this build writes (it reads every version from 1).
        supported: u32,
    },
    /// A file does not look like a trawler store file at all.
    #[error("{path}: not a trawler store file (bad magic); is the data folder the right one?")]
    BadMagic {
        /// The file.
        path: PathBuf,
    },
    /// A checksum or structural check failed.
    #[error("{path}: corrupt ({detail})")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        detail: String,
    },
    /// The caller used a series id this store never handed out.
    #[error("unknown series id {0}")]
    UnknownSeries(u64),
    /// A series was asked for with a different value kind than it was created with.
    #[error("series {job}/{entity}/{metric} holds {existing:?} values, not {requested:?}")]
    KindMismatch {
        /// Job of the series.
        job: String,
        /// Entity of the series.
        entity: u64,
        /// Metric of the series.
        metric: String,
        /// The kind the series was created with.
        existing: crate::ValueKind,
        /// The kind asked for.
        requested: crate::ValueKind,
    },
    /// A configuration value is out of range.
    #[error("invalid store config: {key}: {reason}")]
    Config {
        /// The offending key.
        key: &'static str,
        /// Why it is invalid.
        reason: String,
    },
    /// pco failed to compress (only on invalid input, which is a bug).
    #[error("compressing a block for {path}: {detail}")]
    Compress {
        /// The block being written.
        path: PathBuf,
        /// pco's message.
        detail: String,
    },
    /// Another process has the store open.
    #[error(
        "{path} is in use by another process (is a trawler already running on this data folder?)"
    )]
    Locked {
        /// The store folder.
        path: PathBuf,
    },
    /// A write was asked of a store opened read-only for inspection.
    #[error("{path} was opened read-only (for inspection); nothing was written. Open it without `read_only` to change it")]
    ReadOnly {
        /// The store folder.
        path: PathBuf,
    },
    /// The store was closed.
    #[error("the store is closed")]
    Closed,
    /// An fsync failed: the kernel may have dropped pages that were
    /// written, so a later fsync that succeeds proves nothing about them.
    /// The store takes no more writes until it is reopened, which replays
    /// the WAL from what really reached the disk ("fsyncgate"; fjall's
    /// `Poisoned`).
    #[error("an fsync failed earlier ({detail}); the store refuses writes until it is reopened (the WAL is then replayed from what reached the disk)")]
    Poisoned {
        /// The fsync's error.
        detail: String,
    },
}

/// Result alias of the store.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Attaches the operation and file to an `io::Error`.
pub(crate) trait IoContext<T> {
    fn io(self, op: &'static str, path: &std::path::Path) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn io(self, op: &'static str, path: &std::path::Path) -> Result<T> {
        self.map_err(|source| Error::Io {
            op,
            path: path.to_path_buf(),
            source,
        })
    }
}
