//! The running crawl: one dispatcher task sweeping the schedule, one short
//! task per slot, and the handle that changes tracking, reads metrics and
//! shuts down.
//!
//! ```text
//!  Wheel ──advance(now)──► dispatcher ──permit──► slot task ──Fetch::get──► target
//!  (ids by phase)          (one task)   (Limiter)  (attempts, retries)
//!                                                     │
//!                     Event::{Observation, Gap, Invalid} ──► bounded mpsc ──► caller
//! ```
//!
//! # The rules that keep series honest
//!
//! * **One slot, one read.** Each `(id, slot)` leaves the wheel once (see
//!   [`schedule`](crate::schedule)); at most one request per id is in flight;
//!   a slot whose previous request for the same id is still running is
//!   *missed*, never doubled.
//! * **Retry only what certainly was not served.** A connection failure
//!   before the request was written, a `5xx` or a `429` is retried with
//!   exponential backoff (jittered) while the slot lasts, i.e. until the id's
//!   next slot. An attempt always gets the full request timeout, even when
//!   it starts late in its slot: cutting it short would throw away a read
//!   the target may already have made. If it is still running at the next
//!   slot, that slot is missed. A timeout or a connection failure after the request was
//!   written is *not* retried: the target may have served it, and a second
//!   read would move the account twice (Mockstagram changes an account on
//!   every read). Such a slot becomes a gap. A malformed answer is not
//!   retried either: the read happened.
//! * **A gap is recorded, never invented.** Every slot ends in exactly one
//!   event: an [`Observation`] stamped with the *slot*
//!   time, a [`Gap`] saying why not, or
//!   [`Event::Invalid`] when the target does not
//!   know the id (which is then no longer polled).
//! * **Missed slots, bounded memory.** When the target (or the consumer of
//!   events) is slower than the schedule, the dispatcher waits for a permit
//!   and the cursor falls behind; there is no queue of due slots. A slot
//!   that cannot start before the next slot of its id is reported as
//!   [`GapReason::Missed`]. Memory is the wheel,
//!   one batch of at most 1,024 due slots, the tasks in flight (at most the
//!   concurrency limit) and the event channel.
//! * **Backpressure.** Events go through the caller's bounded channel with
//!   `send().await`: a slow consumer holds slot tasks, which hold permits,
//!   which slows dispatch, which shows up as missed slots — not as memory.
//!
//! Time: unix time is read once at start and then advanced with tokio's
//! monotonic clock, so the grid never jumps with wall-clock adjustments and
//! tests can run the whole crawl under paused time.

use std::collections::{BTreeSet, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::event::{Event, Gap, GapReason, Observation};
use crate::fetch::{Fetch, HttpFetcher, Response, TransportError};
use crate::ids::IdSet;
use crate::job::{Job, Overload};
use crate::limit::{Limiter, Permit};
use crate::metrics::{ErrorKind, Gauges, Metrics, MetricsSnapshot};
use crate::polite::Politeness;
use crate::schedule::{Due, Wheel};

/// How often the dispatcher looks for due slots when it has caught up. The
/// bound on how late a slot starts when the crawler is keeping up.
const TICK: Duration = Duration::from_millis(2);
/// Most due slots taken from the wheel at once.
const BATCH: usize = 1_024;
/// The stretch policy's slack while the schedule is behind, ms.
const OVERLOAD_SLACK_MS: i64 = 20;
/// Most newly tracked ids waiting for their first read; beyond that they
/// wait for their slot (a bulk track must not hold up the schedule).
const FRESH_MAX: usize = 10_000;
/// Most first reads taken at once, ahead of the due slots.
const FRESH_BATCH: usize = 64;

/// Where the crawl is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Running,
    /// No new slots; requests in flight may finish.
    Draining,
    /// Requests in flight stop at once.
    Abandon,
}

/// Unix time from tokio's clock.
#[derive(Debug, Clone, Copy)]
struct Clock {
    start: Instant,
    start_unix_us: i64,
}

impl Clock {
    fn new() -> Self {
        Self {
            start: Instant::now(),
            start_unix_us: crate::clock::unix_us(),
        }
    }

    fn unix_us(&self, at: Instant) -> i64 {
        self.start_unix_us + at.duration_since(self.start).as_micros() as i64
    }

    fn unix_ms(&self, at: Instant) -> i64 {
        self.unix_us(at).div_euclid(1_000)
    }

    fn instant_of_ms(&self, unix_ms: i64) -> Instant {
        let offset_us = unix_ms * 1_000 - self.start_unix_us;
        if offset_us >= 0 {
            self.start + Duration::from_micros(offset_us as u64)
        } else {
            self.start
                .checked_sub(Duration::from_micros(offset_us.unsigned_abs()))
                .unwrap_or(self.start)
        }
    }
}

/// At most a few warnings per second per crawl: a target that answers
/// garbage to every request must not flood the log; the counters have
/// every occurrence.
#[derive(Debug, Default)]
struct LogBudget {
    second: AtomicU64,
    used: AtomicU64,
}

impl LogBudget {
    const PER_SECOND: u64 = 10;

    fn allow(&self, now_ms: i64) -> bool {
        let second = (now_ms / 1_000) as u64;
        if self.second.swap(second, Ordering::Relaxed) != second {
            self.used.store(0, Ordering::Relaxed);
        }
        self.used.fetch_add(1, Ordering::Relaxed) < Self::PER_SECOND
    }
}

/// State shared by the dispatcher, the slot tasks and the handle.
#[derive(Debug)]
struct Shared {
    job: Job,
    interval_ms: i64,
    clock: Clock,
    wheel: Mutex<Wheel>,
    /// Ids with a request in flight: the "at most one per id" rule.
    in_flight: Mutex<HashSet<u64>>,
    invalid: Mutex<BTreeSet<u64>>,
    limiter: Arc<Limiter>,
    /// `max_rate` and the target-wide pause of `Retry-After`.
    polite: Politeness,
    metrics: Metrics,
    log_budget: LogBudget,
    /// When the crawl last said the schedule cannot be held; `None` while
    /// it is held.
    announced: Mutex<Option<Instant>>,
    /// Whether the schedule was behind at the last announcement check.
    behind: AtomicBool,
    /// Ids tracked through [`CrawlHandle::track`] waiting for their first
    /// read, which goes before the due slots; at most [`FRESH_MAX`].
    fresh: Mutex<VecDeque<u64>>,
    fresh_waiting: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves consistent data (each
    // critical section is a single insert/remove), so poisoning is ignored.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    /// The schedule's own time at `now`: behind the clock by the stretch so
    /// far.
    fn schedule_ms(&self, now: Instant) -> i64 {
        self.clock.unix_ms(now) - self.metrics.stretch_ms.load(Ordering::Relaxed)
    }

    /// Moves up to [`FRESH_BATCH`] newly tracked ids into `out` as their
    /// first reads, stamped with the schedule's time now (the read time,
    /// on the stretched schedule): the wheel hands out their next slots as
    /// usual, so the first two samples of a new id may be less than an
    /// interval apart, never more.
    fn take_fresh(&self, schedule_ms: i64, out: &mut Vec<Due>) {
        let ids: Vec<u64> = {
            let mut fresh = lock(&self.fresh);
            let n = fresh.len().min(FRESH_BATCH);
            let ids = fresh.drain(..n).collect();
            self.fresh_waiting
                .store(!fresh.is_empty(), Ordering::Relaxed);
            ids
        };
        let wheel = lock(&self.wheel);
        out.extend(
            ids.into_iter()
                .filter(|&id| wheel.contains(id))
                .map(|id| Due {
                    id,
                    slot_ms: schedule_ms,
                }),
        );
    }

    /// Tracks `ids`; the new ones are read at once when `first`.
    fn track(&self, ids: impl IntoIterator<Item = u64>, first: bool) -> usize {
        let mut ids: Vec<u64> = ids.into_iter().collect();
        {
            let mut invalid = lock(&self.invalid);
            if !invalid.is_empty() {
                for id in &ids {
                    invalid.remove(id);
                }
            }
        }
        let mut wheel = lock(&self.wheel);
        ids.retain(|&id| !wheel.contains(id));
        ids.sort_unstable();
        ids.dedup();
        let added = wheel.insert_many(ids.iter().copied());
        drop(wheel);
        if first && !ids.is_empty() {
            let mut fresh = lock(&self.fresh);
            let room = FRESH_MAX.saturating_sub(fresh.len());
            fresh.extend(ids.iter().take(room));
            self.fresh_waiting.store(true, Ordering::Relaxed);
        }
        tracing::debug!(job = self.job.name(), added, first, "tracked");
        added
    }

    fn gauges(&self) -> Gauges {
        Gauges {
            tracked: lock(&self.wheel).len() as u64,
            invalid: lock(&self.invalid).len() as u64,
            in_flight: self.limiter.in_flight() as u64,
            concurrency_limit: self.limiter.limit() as u64,
            interval_ms: self.interval_ms as u64,
        }
    }

    /// Says in the log when the schedule stops being held (then once a
    /// minute while it lasts) and when it is held again. Called about
    /// once a second by the dispatcher.
    fn announce(&self, now: Instant) {
        let tracked = lock(&self.wheel).len() as u64;
        let s = self.metrics.schedule(tracked, self.interval_ms as u64);
        self.behind.store(s.behind, Ordering::Relaxed);
        let mut last = lock(&self.announced);
        match (*last, s.behind) {
            (None, true) => {}
            (Some(at), true) if now.duration_since(at) >= Duration::from_secs(60) => {}
            (Some(_), false) => {
                tracing::info!(
                    job = self.job.name(),
                    needed_per_s = s.needed_per_sec.round(),
                    achieved_per_s = s.achieved_per_sec.round(),
                    "the schedule is held again"
                );
                *last = None;
                return;
            }
            _ => return,
        }
        let consequence = match self.job.overload() {
            Overload::Skip => "slots are missed",
            Overload::Stretch => "the schedule is stretched: every id is read in turn, less often",
        };
        tracing::warn!(
            job = self.job.name(),
            needed_per_s = s.needed_per_sec.round(),
            achieved_per_s = s.achieved_per_sec.round(),
            effective_interval_s = (s.effective_interval_ms / 1e3 * 10.0).round() / 10.0,
            interval_s = self.interval_ms as f64 / 1e3,
            "the schedule cannot be held: the target (or max_rate) allows fewer polls than the interval needs; {consequence}"
        );
        *last = Some(now);
    }
}

struct Context<F> {
    shared: Arc<Shared>,
    fetcher: F,
    events: mpsc::Sender<Event>,
}

/// A slot's claim: its permit and its id's place in the in-flight set,
/// released together when the slot task ends, however it ends.
struct Claim {
    shared: Arc<Shared>,
    id: u64,
    _permit: Permit,
}

impl Drop for Claim {
    fn drop(&mut self) {
        lock(&self.shared.in_flight).remove(&self.id);
    }
}

/// What a shutdown did.
#[derive(Debug, Clone, PartialEq)]
pub struct ShutdownReport {
    /// Requests in flight when scheduling stopped.
    pub in_flight: u64,
    /// Of those, requests abandoned when the grace period ended.
    pub abandoned: u64,
    /// The final metrics.
    pub metrics: MetricsSnapshot,
}

/// A running crawl: change tracking, read metrics, shut down.
///
/// Dropping the handle without [`CrawlHandle::shutdown`] abandons the crawl
/// at once.
#[derive(Debug)]
pub struct CrawlHandle {
    shared: Arc<Shared>,
    stage: watch::Sender<Stage>,
    /// Taken by the first [`CrawlHandle::shutdown`].
    dispatcher: Mutex<Option<JoinHandle<()>>>,
}

/// Starts crawling `job` with the real HTTP fetcher; see [`start`].
pub fn start_http(
    job: Job,
    events: mpsc::Sender<Event>,
) -> Result<CrawlHandle, crate::fetch::BuildError> {
    let fetcher = HttpFetcher::new(&job)?;
    Ok(start(job, fetcher, events))
}

/// Starts crawling `job`'s ids through `fetcher`, sending every slot's
/// outcome to `events`. Must be called inside a tokio runtime.
///
/// The first slot of each id is its first phase after now. The channel's
/// capacity is the consumer's slack: when it is full the crawl slows down
/// (see the module docs), so give it a few seconds' worth of events.
pub fn start<F: Fetch>(job: Job, fetcher: F, events: mpsc::Sender<Event>) -> CrawlHandle {
    let clock = Clock::new();
    let interval_ms = job.interval().as_millis() as i64;
    let mut wheel = Wheel::new(interval_ms as u64, clock.unix_ms(clock.start));
    wheel.insert_many(job.ids().iter());
    let http = job.http();
    let shared = Arc::new(Shared {
        limiter: Limiter::new(
            http.initial_in_flight,
            http.min_in_flight,
            http.max_in_flight,
        ),
        polite: Politeness::new(http.max_rate),
        interval_ms,
        clock,
        wheel: Mutex::new(wheel),
        in_flight: Mutex::new(HashSet::new()),
        invalid: Mutex::new(BTreeSet::new()),
        metrics: Metrics::default(),
        log_budget: LogBudget::default(),
        announced: Mutex::new(None),
        behind: AtomicBool::new(false),
        fresh: Mutex::default(),
        fresh_waiting: AtomicBool::new(false),
        job,
    });
    tracing::info!(
        job = shared.job.name(),
        ids = lock(&shared.wheel).len(),
        interval_ms,
        "crawl started"
    );
    let (stage, stage_rx) = watch::channel(Stage::Running);
    let context = Arc::new(Context {
        shared: shared.clone(),
        fetcher,
        events,
    });
    let dispatcher = tokio::spawn(dispatch(context, stage_rx));
    CrawlHandle {
        shared,
        stage,
        dispatcher: Mutex::new(Some(dispatcher)),
    }
}

impl CrawlHandle {
    /// The job being crawled.
    pub fn job(&self) -> &Job {
        &self.shared.job
    }

    /// Starts polling `ids`; returns how many were not tracked before. The
    /// new ones are read at once, ahead of the due slots even when the
    /// schedule cannot be held (at most 10,000 waiting; the rest from their
    /// next slot), then in turn. An id once reported invalid is tried
    /// again.
    pub fn track(&self, ids: impl IntoIterator<Item = u64>) -> usize {
        self.shared.track(ids, true)
    }

    /// Starts polling `ids` from their next slot, without a first read out
    /// of turn: for ids taken over from another node, which may have read
    /// their latest slot.
    pub fn track_in_turn(&self, ids: impl IntoIterator<Item = u64>) -> usize {
        self.shared.track(ids, false)
    }

    /// Stops polling `id` (a request in flight still completes and reports);
    /// false if it was not tracked.
    pub fn untrack(&self, id: u64) -> bool {
        lock(&self.shared.wheel).remove(id)
    }

    /// Whether `id` is polled.
    pub fn is_tracked(&self, id: u64) -> bool {
        lock(&self.shared.wheel).contains(id)
    }

    /// Number of ids polled.
    pub fn tracked_count(&self) -> usize {
        lock(&self.shared.wheel).len()
    }

    /// Every id polled, e.g. to persist the tracked set.
    pub fn tracked_ids(&self) -> IdSet {
        let ids = lock(&self.shared.wheel).ids();
        ids.into_iter().collect()
    }

    /// Ids the target answered "not found" for, ascending; they are no
    /// longer polled.
    pub fn invalid_ids(&self) -> Vec<u64> {
        lock(&self.shared.invalid).iter().copied().collect()
    }

    /// Every metric now.
    pub fn metrics(&self) -> MetricsSnapshot {
        self.shared.metrics.snapshot(self.shared.gauges())
    }

    /// Stops scheduling, lets requests in flight finish for up to `grace`,
    /// then abandons the rest (their slots get no event: the read may or may
    /// not have happened; they are counted as `abandoned`). Takes `&self` so
    /// that a handle shared with readers (an API) can stop the crawl; a
    /// second call only waits for requests in flight.
    pub async fn shutdown(&self, grace: Duration) -> ShutdownReport {
        self.stage.send_replace(Stage::Draining);
        // The dispatcher only stops between awaits; it holds no request.
        let dispatcher = lock(&self.dispatcher).take();
        if let Some(dispatcher) = dispatcher {
            let _ = dispatcher.await;
        }
        let in_flight = self.shared.limiter.in_flight() as u64;
        let before = self.shared.metrics.abandoned.load(Ordering::Relaxed);
        if tokio::time::timeout(grace, self.shared.limiter.idle())
            .await
            .is_err()
        {
            self.stage.send_replace(Stage::Abandon);
            self.shared.limiter.idle().await;
        }
        let abandoned = self.shared.metrics.abandoned.load(Ordering::Relaxed) - before;
        tracing::info!(
            job = self.shared.job.name(),
            in_flight,
            abandoned,
            "crawl stopped"
        );
        ShutdownReport {
            in_flight,
            abandoned,
            metrics: self.metrics(),
        }
    }
}

impl Drop for CrawlHandle {
    fn drop(&mut self) {
        self.stage.send_replace(Stage::Abandon);
    }
}

/// Completes when the crawl must stop what it is doing: `Abandon` for slot
/// tasks, anything but `Running` for the dispatcher.
async fn stage_leaves(stage: &mut watch::Receiver<Stage>, keep: fn(Stage) -> bool) {
    // An Err means the handle is gone: stop.
    let _ = stage.wait_for(|s| !keep(*s)).await;
}

fn running(s: Stage) -> bool {
    s == Stage::Running
}

fn not_abandoned(s: Stage) -> bool {
    s != Stage::Abandon
}

async fn dispatch<F: Fetch>(ctx: Arc<Context<F>>, mut stage: watch::Receiver<Stage>) {
    let shared = &ctx.shared;
    let interval = shared.interval_ms;
    let stretch = shared.job.overload() == Overload::Stretch;
    // Due slots in reverse slot order (popped from the end), and newly
    // tracked ids' first reads, which go before them.
    let mut batch: Vec<Due> = Vec::with_capacity(BATCH);
    let mut fresh: Vec<Due> = Vec::new();
    loop {
        if batch.is_empty() {
            if !running(*stage.borrow()) || ctx.events.is_closed() {
                return;
            }
            let now = Instant::now();
            if shared.metrics.tick(now) {
                shared.announce(now);
            }
            let now_ms = shared.clock.unix_ms(now);
            {
                let mut wheel = lock(&shared.wheel);
                if !stretch && now_ms - wheel.cursor_ms() > 2 * interval {
                    // More than two intervals behind (the process was stopped,
                    // or the consumer blocked for that long): jump, counting the
                    // skipped slots, rather than walk them one by one.
                    let skipped = wheel.skip_to(now_ms - interval);
                    Metrics::add(&shared.metrics.missed, skipped);
                    Metrics::add(&shared.metrics.gaps, skipped);
                    tracing::warn!(
                        job = shared.job.name(),
                        skipped,
                        "crawl fell more than two intervals behind; skipped slots"
                    );
                }
                wheel.advance(shared.schedule_ms(now), BATCH, &mut batch);
            }
            batch.reverse();
            if batch.is_empty() && !shared.fresh_waiting.load(Ordering::Relaxed) {
                tokio::select! {
                    _ = tokio::time::sleep(TICK) => {}
                    _ = stage_leaves(&mut stage, running) => return,
                }
                continue;
            }
        }
        if shared.fresh_waiting.load(Ordering::Relaxed) {
            shared.take_fresh(shared.schedule_ms(Instant::now()), &mut fresh);
        }
        let next = match fresh.pop() {
            Some(due) => Some((due, true)),
            None => batch.pop().map(|due| (due, false)),
        };
        if let Some((due, first)) = next {
            if !start_slot(&ctx, due, first, &mut stage).await {
                return;
            }
        }
    }
}

/// Starts one slot's request, or records it as missed; false when the crawl
/// stops. `first` marks a newly tracked id's first read, which neither
/// stretches the schedule nor counts in the lag.
async fn start_slot<F: Fetch>(
    ctx: &Arc<Context<F>>,
    due: Due,
    first: bool,
    stage: &mut watch::Receiver<Stage>,
) -> bool {
    let shared = &ctx.shared;
    let interval = shared.interval_ms;
    let stretch = shared.job.overload() == Overload::Stretch;
    // How late a slot may start before the stretch policy moves the whole
    // schedule back by the excess: a second, or a tenth of a short
    // interval, so that a hiccup of the machine does not move it; once the
    // schedule is behind (a lasting shortfall), a few milliseconds, so that
    // lag keeps measuring the target's answer, not the slack.
    let slack = if shared.behind.load(Ordering::Relaxed) {
        (interval / 10).min(OVERLOAD_SLACK_MS)
    } else {
        (interval / 10).min(1_000)
    };
    if stretch && !first {
        // Slots of one batch were due on the schedule as it stood; after a
        // stretch, the later ones may not be due yet: wait, so that no
        // sample is stamped in the future and spacing stays even.
        let due_at = due.slot_ms + shared.metrics.stretch_ms.load(Ordering::Relaxed);
        if due_at > shared.clock.unix_ms(Instant::now()) {
            tokio::select! {
                _ = tokio::time::sleep_until(shared.clock.instant_of_ms(due_at)) => {}
                _ = stage_leaves(stage, running) => return false,
            }
        }
    }
    // The rate cap and any pause first, so that a slot waiting for its turn
    // holds no concurrency permit; under `skip`, a slot whose turn would
    // come after its id's next slot began takes none and is missed. Under
    // `stretch` every slot waits its turn.
    let expires = (!stretch).then(|| {
        shared.clock.instant_of_ms(
            due.slot_ms + shared.metrics.stretch_ms.load(Ordering::Relaxed) + interval,
        )
    });
    let turn = tokio::select! {
        turn = shared.polite.turn_before(expires) => turn,
        _ = stage_leaves(stage, running) => return false,
    };
    let permit = if turn {
        Some(tokio::select! {
            permit = shared.limiter.acquire() => permit,
            _ = stage_leaves(stage, running) => return false,
        })
    } else {
        None
    };
    let now_ms = shared.clock.unix_ms(Instant::now());
    // The slot's time on the (possibly stretched) schedule. Under `stretch`,
    // a slot starting more than `slack` late moves the schedule back by the
    // excess, for good: every id keeps its turn in the phase ring, samples
    // stay evenly spaced, and nothing is polled twice to catch up.
    let mut offset = shared.metrics.stretch_ms.load(Ordering::Relaxed);
    if stretch && !first && permit.is_some() {
        let late = now_ms - (due.slot_ms + offset) - slack;
        if late > 0 {
            offset += late;
            shared.metrics.stretch_ms.store(offset, Ordering::Relaxed);
        }
    }
    let due = Due {
        slot_ms: due.slot_ms + offset,
        ..due
    };
    let claimed = permit.is_some()
        && now_ms < due.slot_ms + interval
        && lock(&shared.in_flight).insert(due.id);
    let Some(permit) = permit.filter(|_| claimed) else {
        Metrics::add(&shared.metrics.missed, 1);
        let gap = Event::Gap(Gap {
            id: due.id,
            slot_ms: due.slot_ms,
            reason: GapReason::Missed,
        });
        Metrics::add(&shared.metrics.gaps, 1);
        return tokio::select! {
            _ = ctx.events.send(gap) => true,
            _ = stage_leaves(stage, running) => false,
        };
    };
    Metrics::add(&shared.metrics.started, 1);
    let claim = Claim {
        shared: shared.clone(),
        id: due.id,
        _permit: permit,
    };
    tokio::spawn(run_slot(ctx.clone(), due, first, claim, stage.clone()));
    true
}

/// What one attempt came to.
enum Outcome {
    Read(Box<[f64]>),
    NotFound,
    Failed {
        kind: ErrorKind,
        overload: bool,
        detail: String,
        /// The target's `Retry-After` on a `429` or `503`.
        retry_after: Option<Duration>,
    },
}

fn classify(
    job: &Job,
    result: Result<Result<Response, TransportError>, tokio::time::error::Elapsed>,
) -> Outcome {
    match result {
        Err(_) => Outcome::Failed {
            kind: ErrorKind::Timeout,
            overload: true,
            detail: "timed out".into(),
            retry_after: None,
        },
        Ok(Err(e)) => Outcome::Failed {
            kind: if e.maybe_sent {
                ErrorKind::Transport
            } else {
                ErrorKind::Connect
            },
            overload: !e.maybe_sent,
            detail: e.message,
            retry_after: None,
        },
        Ok(Ok(response)) => {
            let status = response.status;
            if job.not_found().matches(status, &response.body) {
                Outcome::NotFound
            } else if (200..300).contains(&status) {
                match job.extract(&response.body) {
                    Ok(values) => Outcome::Read(values),
                    Err(e) => Outcome::Failed {
                        kind: ErrorKind::Malformed,
                        overload: false,
                        detail: e.to_string(),
                        retry_after: None,
                    },
                }
            } else if status >= 500 || status == 429 {
                Outcome::Failed {
                    kind: ErrorKind::Status5xx,
                    overload: status == 429,
                    detail: format!("status {status}"),
                    retry_after: response
                        .retry_after
                        .filter(|_| status == 429 || status == 503),
                }
            } else {
                Outcome::Failed {
                    kind: ErrorKind::Status,
                    overload: false,
                    detail: format!("status {status}"),
                    retry_after: None,
                }
            }
        }
    }
}

/// Jittered exponential backoff: `base · 2^attempt · [0.5, 1.5)`, the jitter
/// a hash of id and attempt so that retries of many ids do not align.
fn backoff(base: Duration, attempt: u32, id: u64) -> Duration {
    let jitter = 0.5
        + (crate::schedule::phase(id ^ (u64::from(attempt) << 56), 1 << 20) as f64)
            / f64::from(1 << 20);
    base.mul_f64(f64::from(1u32 << attempt.min(16)) * jitter)
}

async fn run_slot<F: Fetch>(
    ctx: Arc<Context<F>>,
    due: Due,
    first: bool,
    claim: Claim,
    mut stage: watch::Receiver<Stage>,
) {
    let shared = &ctx.shared;
    let job = &shared.job;
    let metrics = &shared.metrics;
    let deadline = shared.clock.instant_of_ms(due.slot_ms + shared.interval_ms);
    let mut attempt = 0u32;
    let event = loop {
        let started = Instant::now();
        let result = tokio::select! {
            result = tokio::time::timeout(job.http().request_timeout, ctx.fetcher.get(due.id)) => result,
            _ = stage_leaves(&mut stage, not_abandoned) => {
                Metrics::add(&metrics.abandoned, 1);
                return;
            }
        };
        let finished = Instant::now();
        let outcome = classify(job, result);
        let overload = matches!(outcome, Outcome::Failed { overload: true, .. });
        shared.limiter.record(finished - started, overload);
        match outcome {
            Outcome::Read(values) => {
                Metrics::add(&metrics.polls_ok, 1);
                if !first {
                    let lag_us = shared.clock.unix_us(finished) - due.slot_ms * 1_000;
                    metrics.lag.record(lag_us.max(0) as u64);
                }
                break Event::Observation(Observation {
                    id: due.id,
                    slot_ms: due.slot_ms,
                    values,
                });
            }
            Outcome::NotFound => {
                metrics.error(ErrorKind::NotFound);
                lock(&shared.wheel).remove(due.id);
                lock(&shared.invalid).insert(due.id);
                tracing::info!(
                    job = job.name(),
                    id = due.id,
                    "id not found by the target; no longer polled"
                );
                break Event::Invalid { id: due.id };
            }
            Outcome::Failed {
                kind,
                detail,
                retry_after,
                ..
            } => {
                metrics.error(kind);
                let attempts = attempt + 1;
                let mut wait = backoff(job.http().backoff, attempt, due.id);
                if let Some(pause) = retry_after {
                    // The whole target backs off, not only this id.
                    if shared.polite.pause_for(pause) {
                        Metrics::add(&metrics.pauses, 1);
                        tracing::warn!(
                            job = job.name(),
                            pause_ms = pause.min(crate::polite::MAX_PAUSE).as_millis() as u64,
                            "the target asked to back off (Retry-After); every request waits"
                        );
                    }
                    wait = wait.max(pause);
                }
                let retry = kind.retryable()
                    && attempt < job.http().retries
                    && Instant::now() + wait < deadline;
                if shared.log_budget.allow(shared.clock.unix_ms(finished)) {
                    let level_warn = kind == ErrorKind::Malformed || !retry;
                    if level_warn {
                        tracing::warn!(job = job.name(), id = due.id, slot_ms = due.slot_ms, kind = kind.label(), attempts, retry, error = %detail, "poll failed");
                    } else {
                        tracing::debug!(job = job.name(), id = due.id, slot_ms = due.slot_ms, kind = kind.label(), attempts, retry, error = %detail, "poll failed");
                    }
                }
                // A retry waits for its backoff, then for its turn (the rate
                // cap or a pause may start it only after the slot: a gap).
                let retry = retry
                    && tokio::select! {
                        turn = async {
                            tokio::time::sleep(wait).await;
                            shared.polite.turn_before(Some(deadline)).await
                        } => turn,
                        _ = stage_leaves(&mut stage, not_abandoned) => {
                            Metrics::add(&metrics.abandoned, 1);
                            return;
                        }
                    };
                if !retry {
                    Metrics::add(&metrics.gaps, 1);
                    break Event::Gap(Gap {
                        id: due.id,
                        slot_ms: due.slot_ms,
                        reason: GapReason::Failed { kind, attempts },
                    });
                }
                Metrics::add(&metrics.retries, 1);
                attempt += 1;
            }
        }
    };
    // The claim is released only after the event is handed over, so that a
    // consumer that falls behind slows the crawl instead of growing memory.
    tokio::select! {
        _ = ctx.events.send(event) => {}
        _ = stage_leaves(&mut stage, not_abandoned) => {}
    }
    drop(claim);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter() {
        let base = Duration::from_millis(100);
        for id in 0..1_000 {
            for attempt in 0..4 {
                let wait = backoff(base, attempt, id).as_secs_f64();
                let nominal = 0.1 * f64::from(1u32 << attempt);
                assert!(
                    wait >= nominal * 0.5 && wait < nominal * 1.5,
                    "{id} {attempt} {wait}"
                );
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn clock_round_trips() {
        let clock = Clock::new();
        let later = clock.start + Duration::from_millis(1_500);
        assert_eq!(
            clock.instant_of_ms(clock.unix_ms(later)),
            later - Duration::from_micros((clock.start_unix_us % 1_000) as u64)
        );
    }
}
