//! CPU priority of a thread: the work that can wait runs at a higher nice
//! value, so on a small machine the crawl gets the cores first.
//!
//! Two crates lower their own threads: the store its flush and compaction
//! threads, the API every thread of its runtime (see `trawler-api`'s
//! `runtime`). They must do it the same way — on the calling thread only,
//! best effort, never failing the caller — so there is one function.
//!
//! On Linux a thread id is a valid `setpriority` target and the call
//! affects that thread alone; `rustix` makes it a safe call, so the
//! workspace's `unsafe_code = "deny"` holds. On other systems it does
//! nothing.
//!
//! ```
//! std::thread::spawn(|| {
//!     trawler_common::thread::lower_priority(5);
//!     // … maintenance work …
//! })
//! .join()
//! .unwrap();
//! ```

/// Runs the calling thread `nice` steps below the process (the nice value
/// of its main thread plus `nice`, at most 19; 0 leaves the thread as it
/// is).
///
/// Relative to the process, because an absolute value goes wrong in a
/// process started with `nice -n 10`: a thread set to 5 would run *above*
/// the crawl (where the process may raise priority, e.g. as root). Not
/// relative to the calling thread, because a thread inherits the nice
/// value of the thread that spawns it: tokio starts blocking threads from
/// workers that are already lowered, and those must not sink further.
///
/// Best effort: a failure only means the thread competes with the others
/// as an equal, so it is logged at debug level and otherwise ignored.
pub fn lower_priority(nice: i32) {
    if nice == 0 {
        return;
    }
    #[cfg(target_os = "linux")]
    if let Err(e) =
        rustix::process::getpriority_process(Some(rustix::process::getpid())).and_then(|process| {
            rustix::process::setpriority_process(
                Some(rustix::thread::gettid()),
                (process + nice).min(19),
            )
        })
    {
        let thread = std::thread::current();
        tracing::debug!(
            error = %e,
            nice,
            thread = thread.name().unwrap_or("unnamed"),
            "could not lower a thread's priority"
        );
    }
}

/// The calling thread's nice value (Linux), for tests.
#[cfg(target_os = "linux")]
pub fn current_nice() -> i32 {
    rustix::process::getpriority_process(Some(rustix::thread::gettid())).unwrap_or(0)
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn only_the_calling_thread_is_lowered_relative_to_where_it_was() {
        let before = current_nice();
        let lowered = std::thread::spawn(move || {
            lower_priority(3);
            current_nice()
        })
        .join()
        .unwrap();
        assert_eq!(lowered, (before + 3).min(19));
        assert_eq!(current_nice(), before);
    }

    #[test]
    fn a_thread_spawned_by_a_lowered_thread_does_not_sink_further() {
        let before = current_nice();
        let lowered = std::thread::spawn(|| {
            lower_priority(3);
            std::thread::spawn(|| {
                lower_priority(3);
                current_nice()
            })
            .join()
            .unwrap()
        })
        .join()
        .unwrap();
        assert_eq!(lowered, (before + 3).min(19));
    }

    #[test]
    fn zero_leaves_the_priority_alone() {
        let before = current_nice();
        std::thread::spawn(move || {
            lower_priority(0);
            assert_eq!(current_nice(), before);
        })
        .join()
        .unwrap();
    }
}
