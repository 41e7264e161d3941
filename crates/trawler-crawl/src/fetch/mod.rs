//! Fetching one id: the seam between the scheduler and the network.
//!
//! The crawler core (scheduling, retries, classification, metrics) talks to
//! the target through the [`Fetch`] trait: one call is one attempt, returning
//! the raw status and body, or a transport error that says whether the
//! request could have reached the target. [`HttpFetcher`] is the real one;
//! tests plug in a deterministic in-memory fetcher and run the same core
//! under paused time. Timeouts are applied by the core around
//! [`Fetch::get`], so every fetcher gets the same timeout semantics.

mod http;

use std::future::Future;

use bytes::Bytes;

pub use http::{BuildError, HttpFetcher};

/// An answer from the target, not yet interpreted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// HTTP status.
    pub status: u16,
    /// The whole body.
    pub body: Bytes,
    /// The `Retry-After` header, parsed (see [`crate::polite`]).
    pub retry_after: Option<std::time::Duration>,
}

/// A failed attempt without an answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct TransportError {
    /// Whether the request may have been written. If it may, the target may
    /// have served it and the attempt must not be repeated in this slot.
    pub maybe_sent: bool,
    /// What happened, for logs.
    pub message: String,
}

/// One attempt at reading one id.
///
/// Implementations must not retry on their own, except where the request
/// certainly was not written (hyper's retry of a request that met a closed
/// pooled connection before writing is fine): the core decides retries.
pub trait Fetch: Send + Sync + 'static {
    /// Requests `id` once.
    fn get(&self, id: u64) -> impl Future<Output = Result<Response, TransportError>> + Send;
}
