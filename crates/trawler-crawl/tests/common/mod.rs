//! Helpers shared by the integration tests.

#![allow(dead_code)]

use tokio::sync::mpsc;
use trawler_crawl::{Event, Job, JobConfig};

/// A Mockstagram-shaped job for `ids` at `interval` against `base`, with
/// extra lines for `[http]`.
pub fn job(base: &str, ids: &str, interval: &str, http: &str) -> Job {
    JobConfig::from_toml(&job_text(base, ids, interval, http), "test.toml")
        .unwrap()
        .build()
        .unwrap()
}

/// The job file [`job`] builds.
pub fn job_text(base: &str, ids: &str, interval: &str, http: &str) -> String {
    format!(
        r#"
[job]
name = "influencers"
url = "{base}/api/v1/influencers/{{id}}"
ids = "{ids}"
interval = "{interval}"

[[field]]
metric = "followerCount"
pointer = "/followerCount"
type = "integer"

[[field]]
metric = "followingCount"
pointer = "/followingCount"
type = "integer"

[[derived]]
metric = "followerRatio"
formula = "followerCount / followingCount"

[not_found]
status = 500
pointer = "/error/name"
equals = "InfluencerNotFoundError"

[http]
{http}
"#
    )
}

/// [`job`] with `[job] overload = "{policy}"` (`skip` for the tests of
/// the fixed grid: `stretch`, the default, moves it back after a hiccup
/// of a loaded machine).
pub fn job_overload(policy: &str, base: &str, ids: &str, interval: &str, http: &str) -> Job {
    let line = format!("interval = \"{interval}\"\n");
    let text = job_text(base, ids, interval, http).replacen(
        &line,
        &format!("{line}overload = \"{policy}\"\n"),
        1,
    );
    assert!(text.contains(&format!("overload = \"{policy}\"")));
    JobConfig::from_toml(&text, "test.toml")
        .unwrap()
        .build()
        .unwrap()
}

/// Takes every event currently in the channel.
pub fn drain(events: &mut mpsc::Receiver<Event>) -> Vec<Event> {
    let mut out = Vec::new();
    while let Ok(event) = events.try_recv() {
        out.push(event);
    }
    out
}

/// Fair coverage: every id's count within one of the median (`counts` has
/// one entry per id).
pub fn assert_within_one_of_the_median(mut counts: Vec<usize>) {
    counts.sort();
    let median = counts[counts.len() / 2];
    assert!(
        counts[0] + 1 >= median && counts[counts.len() - 1] <= median + 1,
        "uneven coverage: {:?} … {:?}",
        &counts[..5.min(counts.len())],
        &counts[counts.len().saturating_sub(5)..]
    );
}
