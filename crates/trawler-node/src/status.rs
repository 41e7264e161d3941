//! What a running node reports about itself once a second: the figures of
//! the status line (`trawler run` draws them on a terminal or logs them).

/// What the status line shows; filled by the run loop once a second.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    /// Ids being polled.
    pub tracked: u64,
    /// Successful polls per second over the last few seconds.
    pub polls_per_s: f64,
    /// Schedule lag percentiles (response time − slot time), milliseconds.
    pub lag_p50_ms: f64,
    /// 99th percentile of the lag.
    pub lag_p99_ms: f64,
    /// Failed attempts so far (all kinds).
    pub errors: u64,
    /// Slots that ended without a sample.
    pub gaps: u64,
    /// Ids the target reported as not found.
    pub invalid: u64,
    /// Samples made durable.
    pub samples: u64,
    /// Bytes the store holds on disk.
    pub bytes_on_disk: u64,
}

impl Snapshot {
    /// One line, the same for the terminal and the log.
    pub fn line(&self) -> String {
        format!(
            "tracked {}  polls/s {:.0}  lag p50 {:.0} ms p99 {:.0} ms  errors {}  gaps {}  invalid {}  samples {}  disk {}",
            self.tracked,
            self.polls_per_s,
            self.lag_p50_ms,
            self.lag_p99_ms,
            self.errors,
            self.gaps,
            self.invalid,
            self.samples,
            human_bytes(self.bytes_on_disk),
        )
    }
}

/// Formats a byte count with a binary unit.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// Reads the figures of a running node.
pub fn snapshot(node: &crate::node::Node) -> Snapshot {
    let crawl = node.crawl.metrics();
    let store = node.storage.store().stats();
    Snapshot {
        tracked: crawl.gauges.tracked,
        polls_per_s: crawl.polls_per_sec,
        lag_p50_ms: crawl.lag_p50_ms.unwrap_or(0.0),
        lag_p99_ms: crawl.lag_p99_ms.unwrap_or(0.0),
        errors: crawl.errors.iter().map(|(_, n)| n).sum(),
        gaps: crawl.gaps,
        invalid: crawl.gauges.invalid,
        samples: store.samples,
        bytes_on_disk: store.bytes_on_disk,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_are_humane() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(3 * 1024 * 1024 * 1024), "3.0 GiB");
    }

    #[test]
    fn the_line_names_every_figure() {
        let line = Snapshot {
            tracked: 7,
            polls_per_s: 16_700.4,
            gaps: 2,
            ..Snapshot::default()
        }
        .line();
        assert!(
            line.contains("tracked 7") && line.contains("polls/s 16700") && line.contains("gaps 2")
        );
    }
}
