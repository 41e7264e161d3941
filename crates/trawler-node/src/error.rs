//! What can stop a node from starting or running, typed at the crate's
//! boundary: a setting that cannot be used (naming the flag, or the file
//! and key), the job file, or a named step that failed with its cause.

/// Any error of a part the node wires together.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why a node could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A setting that cannot be used; the message names the flag, or the
    /// file and key.
    #[error("{0}")]
    Config(String),
    /// The job file.
    #[error(transparent)]
    Job(#[from] trawler_crawl::JobError),
    /// A step of starting, running or stopping the node, named, and why it
    /// failed.
    #[error("{step}: {source}")]
    Step {
        /// What the node was doing, e.g. "opening the store".
        step: String,
        /// Why it failed.
        #[source]
        source: BoxError,
    },
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Names the step a fallible call belongs to (this crate's `context`).
pub trait Step<T> {
    /// On error, an [`Error::Step`] naming `step`.
    fn step(self, step: &str) -> Result<T>;
    /// Like [`Step::step`], with the name built only on error.
    fn with_step(self, step: impl FnOnce() -> String) -> Result<T>;
}

impl<T, E: Into<BoxError>> Step<T> for std::result::Result<T, E> {
    fn step(self, step: &str) -> Result<T> {
        self.map_err(|e| Error::Step {
            step: step.to_owned(),
            source: e.into(),
        })
    }

    fn with_step(self, step: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| Error::Step {
            step: step(),
            source: e.into(),
        })
    }
}

/// An [`Error::Config`] from a format string.
macro_rules! config_error {
    ($($arg:tt)*) => { $crate::error::Error::Config(format!($($arg)*)) };
}
pub(crate) use config_error;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_step_names_what_failed_and_keeps_the_cause() {
        let io: std::result::Result<(), std::io::Error> =
            Err(std::io::Error::new(std::io::ErrorKind::NotFound, "gone"));
        let e = io.step("opening the store").unwrap_err();
        assert_eq!(e.to_string(), "opening the store: gone");
        assert!(std::error::Error::source(&e).is_some());
        assert_eq!(config_error!("--ids: {}", 7).to_string(), "--ids: 7");
    }
}
