//! Small helpers that several trawler crates need in exactly the same form.
//!
//! Each of these was once written in every crate that needed it, each copy
//! a little different. A difference there is a bug waiting (a sample
//! stamped on a clock the API does not read from), so there is one of each
//! here, and the crates that use them say only what is theirs:
//!
//! * [`clock`] — unix time as trawler sees it, shifted by `--clock-offset`.
//! * `http` (feature `http`) — the pooled HTTP/1.1 client.
//! * [`prom`] — Prometheus text exposition for `/metrics`.
//! * [`shutdown`] — one way to tell a task to stop.
//! * [`thread`] — a thread's CPU priority, for work that can wait.
//!
//! This crate knows nothing of jobs, the store or the crawl; it sits below
//! every other trawler crate.

pub mod clock;
#[cfg(feature = "http")]
pub mod http;
pub mod prom;
pub mod shutdown;
pub mod thread;

/// Names no job may take: the Prometheus HTTP API and trawler's own
/// routes live under `/api/v1/` next to the jobs' `/api/v1/{job}`, so a job
/// named `query` or `label` would hide (or clash with) one of them.
pub const RESERVED_JOB_NAMES: &[&str] = &[
    "query",
    "query_range",
    "query_exemplars",
    "series",
    "labels",
    "label",
    "metadata",
    "status",
    "write",
    "read",
    "rules",
    "alerts",
    "targets",
    "events",
    "streams",
];

/// The error message for a reserved job name, or `None` when `name` is
/// free.
pub fn reserved_job_name(name: &str) -> Option<String> {
    RESERVED_JOB_NAMES.contains(&name).then(|| {
        format!(
            "{name:?} is reserved: the Prometheus API and trawler's own routes use /api/v1/{name}; choose another job name"
        )
    })
}
