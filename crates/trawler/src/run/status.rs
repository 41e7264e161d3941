//! The live status of `trawler run`: a redrawn line on a terminal, plain
//! periodic log lines otherwise (a log file must not fill with redraws).

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use trawler_node::status::Snapshot;

/// Where the status goes.
pub enum Display {
    /// A spinner line redrawn in place on stderr.
    Terminal(ProgressBar),
    /// An `info` log line every `every`.
    Log {
        /// How often to log.
        every: Duration,
        /// When the last line was logged.
        last: Option<std::time::Instant>,
    },
}

impl Display {
    /// A redrawn line when stderr is a terminal, log lines otherwise.
    pub fn new() -> Self {
        if std::io::stderr().is_terminal() {
            let bar = ProgressBar::new_spinner();
            bar.set_style(
                ProgressStyle::with_template("{spinner} {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            bar.enable_steady_tick(Duration::from_millis(250));
            Display::Terminal(bar)
        } else {
            Display::Log {
                every: Duration::from_secs(10),
                last: None,
            }
        }
    }

    /// Shows a new snapshot.
    pub fn update(&mut self, snapshot: &Snapshot) {
        match self {
            Display::Terminal(bar) => bar.set_message(snapshot.line()),
            Display::Log { every, last } => {
                if last.is_none_or(|t| t.elapsed() >= *every) {
                    *last = Some(std::time::Instant::now());
                    tracing::info!(
                        tracked = snapshot.tracked,
                        polls_per_s = snapshot.polls_per_s.round(),
                        lag_p50_ms = snapshot.lag_p50_ms.round(),
                        lag_p99_ms = snapshot.lag_p99_ms.round(),
                        errors = snapshot.errors,
                        gaps = snapshot.gaps,
                        invalid = snapshot.invalid,
                        samples = snapshot.samples,
                        bytes_on_disk = snapshot.bytes_on_disk,
                        "status"
                    );
                }
            }
        }
    }

    /// Leaves the last line on screen.
    pub fn finish(&self) {
        if let Display::Terminal(bar) = self {
            bar.abandon();
        }
    }
}
