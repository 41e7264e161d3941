//! The API's own tokio runtime, below the crawl in CPU priority.
//!
//! Readers must never cost the schedule. Sharing the crawl's runtime, `wrk`
//! on `GET /{pk}` at full speed on a 2-core machine cut the crawl from
//! 16,669 to 9,300 polls/s: the workers serve whichever task is ready, and
//! a flood of API requests is as ready as the crawl. A concurrency limit
//! alone does not help (the limit is reached with the CPU already taken),
//! and shedding by measured lag acts only after slots are late. So the API
//! runs on worker threads and a blocking pool of its own, each thread at a
//! lower priority (`nice`, Linux `setpriority` on the thread): the kernel
//! gives the crawl, the ingest and the store's flush (nice 5) the CPU they
//! ask for first, and the API everything they leave, which on an idle crawl
//! is nearly all of it. Requests in flight stay bounded by
//! [`ApiConfig::max_concurrency`](crate::ApiConfig::max_concurrency).

use std::future::Future;

use tokio::runtime::{Handle, Runtime};
use tokio::task::JoinHandle;
use trawler_common::thread::lower_priority;

use crate::Api;

/// Worker threads of the API runtime by default.
pub const DEFAULT_THREADS: usize = 2;
/// How much lower than the crawl the API's threads run by default.
pub const DEFAULT_NICE: i32 = 10;

/// A runtime for the API: `threads` workers and a blocking pool of at most
/// `8 × threads`, every thread `nice` steps below the process's priority
/// (0 = the same; see [`lower_priority`]). Drop
/// it outside any async context (e.g. after `block_on` returns).
pub fn runtime(threads: usize, nice: i32) -> std::io::Result<Runtime> {
    let threads = threads.max(1);
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .max_blocking_threads(8 * threads)
        .thread_name("trawler-api")
        .on_thread_start(move || lower_priority(nice))
        .enable_all()
        .build()
}

impl Api {
    /// Serves on `listener` on the runtime of `handle` (see [`runtime`])
    /// until `shutdown` completes; the returned task ends when serving has.
    pub fn spawn_on(
        self,
        handle: &Handle,
        listener: std::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<JoinHandle<std::io::Result<()>>> {
        listener.set_nonblocking(true)?;
        // The listener registers with the reactor of the runtime it is
        // converted in.
        let listener = {
            let _inside = handle.enter();
            tokio::net::TcpListener::from_std(listener)?
        };
        Ok(handle.spawn(self.serve(listener, shutdown)))
    }
}

#[cfg(test)]
mod tests {
    use trawler_common::thread::current_nice;

    use super::*;

    #[cfg(target_os = "linux")]
    #[test]
    fn every_thread_of_the_api_runtime_runs_at_the_lower_priority() {
        let before = current_nice();
        let rt = runtime(2, 7).unwrap();
        let worker = rt.block_on(async { tokio::spawn(async { current_nice() }).await.unwrap() });
        let blocking =
            rt.block_on(async { tokio::task::spawn_blocking(current_nice).await.unwrap() });
        assert_eq!(worker, (before + 7).min(19));
        assert_eq!(blocking, (before + 7).min(19));
        // The caller's own thread keeps its priority.
        assert_eq!(current_nice(), before);
    }
}
