//! What the crawler reports: one event per slot.
//!
//! Values travel as a short array in the job's metric order
//! ([`Job::metric_names`](crate::Job::metric_names)): the names are sent
//! once, in the job, and a sample costs its id, its slot time and a few
//! `f64`s.

use crate::metrics::ErrorKind;

/// One successful read.
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    /// The id read.
    pub id: u64,
    /// The *scheduled* slot time, unix ms (not the response time, so a
    /// regular series stays regular; the difference is the lag metric).
    pub slot_ms: i64,
    /// Metric values in the job's metric order. Integer fields are exact up
    /// to 2^53; a derived metric that is undefined (division by zero) is NaN.
    pub values: Box<[f64]>,
}

/// Why a slot produced no observation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GapReason {
    /// The slot could not start before the id's next slot: the target, the
    /// crawler or the event consumer is slower than the schedule, or the
    /// previous request for this id was still in flight.
    Missed,
    /// The last attempt failed with `kind` and no further attempt was safe
    /// or possible (retries exhausted, slot over, or a failure that may have
    /// been served).
    Failed {
        /// The last attempt's failure.
        kind: ErrorKind,
        /// Attempts made in the slot.
        attempts: u32,
    },
}

/// A slot without an observation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gap {
    /// The id.
    pub id: u64,
    /// The slot time, unix ms.
    pub slot_ms: i64,
    /// Why.
    pub reason: GapReason,
}

/// What the crawler sends for each slot.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A successful read.
    Observation(Observation),
    /// A slot without a read.
    Gap(Gap),
    /// The target does not know this id; it is no longer polled (until
    /// tracked again).
    Invalid {
        /// The id.
        id: u64,
    },
}
