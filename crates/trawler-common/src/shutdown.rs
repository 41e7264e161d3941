//! One way to say "stop" to a task.
//!
//! Every long-running task (the crawl's dispatcher, the enrichment, the
//! lease loop, the stream follower, the VictoriaMetrics writer, the API's
//! sampler) must end when the run ends. They used to take a bare
//! `watch::Receiver<bool>`, and each read it its own way: `changed()` (which
//! misses a value already set before the call), `wait_for`, or
//! `*borrow()`; a dropped sender meant "stop" to some and "go on" to others.
//! [`Shutdown`] is that receiver with the one meaning every task needs:
//! stopped once the [`Trigger`] fired **or was dropped** (whoever could
//! stop the task is gone), and [`Shutdown::wait`] returns at once if that
//! already happened.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let (trigger, mut shutdown) = trawler_common::shutdown::channel();
//! let task = tokio::spawn(async move {
//!     shutdown.wait().await;
//!     "stopped"
//! });
//! trigger.trigger();
//! assert_eq!(task.await.unwrap(), "stopped");
//! # }
//! ```

use tokio::sync::watch;

/// The side that stops: [`Trigger::trigger`], or dropping it.
#[derive(Debug)]
pub struct Trigger {
    tx: watch::Sender<bool>,
}

/// The side that is stopped; cheap to clone, one per task.
#[derive(Debug, Clone)]
pub struct Shutdown {
    rx: watch::Receiver<bool>,
}

/// A new trigger and the shutdown it controls.
pub fn channel() -> (Trigger, Shutdown) {
    let (tx, rx) = watch::channel(false);
    (Trigger { tx }, Shutdown { rx })
}

impl Trigger {
    /// Stops every [`Shutdown`] of this trigger (idempotent).
    pub fn trigger(&self) {
        self.tx.send_replace(true);
    }

    /// Another shutdown of this trigger.
    pub fn subscribe(&self) -> Shutdown {
        Shutdown {
            rx: self.tx.subscribe(),
        }
    }
}

impl Shutdown {
    /// Whether the trigger fired or is gone.
    pub fn is_triggered(&self) -> bool {
        *self.rx.borrow() || self.rx.has_changed().is_err()
    }

    /// Returns once the trigger fired or was dropped (at once if it already
    /// was).
    pub async fn wait(&mut self) {
        // An error means the trigger is gone: that stops too.
        let _ = self.rx.wait_for(|stopped| *stopped).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_fired_or_dropped_trigger_stops_every_shutdown_even_later_ones() {
        let (trigger, mut first) = channel();
        let mut second = trigger.subscribe();
        assert!(!first.is_triggered());
        trigger.trigger();
        // Already fired: wait returns at once, for every copy.
        first.wait().await;
        second.wait().await;
        assert!(first.is_triggered() && second.clone().is_triggered());

        let (trigger, mut dropped) = channel();
        drop(trigger);
        assert!(dropped.is_triggered());
        dropped.wait().await;
    }
}
