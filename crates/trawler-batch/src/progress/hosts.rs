//! Per-host figures in bounded memory: a table of at most
//! [`TABLE_HOSTS`] hosts with exact counters, every other host folded
//! into one `other` row.
//!
//! A batch list may hold millions of hosts, so a row per host is not kept.
//! Which hosts get a row: the busiest by *volume* (URLs started). While the
//! table has room, a host gets a row at its first URL. Once it is full, a
//! host without a row is counted in `other`, and its volume is estimated by
//! a count-min sketch ([`SKETCH_ROWS`] × [`SKETCH_WIDTH`] counters, 128 KiB,
//! never an underestimate); when the estimate passes the smallest volume in
//! the table by an eighth, that row is folded into `other` and the host
//! takes its place. A row whose host has URLs in flight is never folded, so
//! every URL's figures go to one row from its start to its outcome (the
//! [`HostTicket`] it carries names the row).
//!
//! So: the sum of the rows and `other` is exactly the total of each figure;
//! a row's counters are exact since the host got its row (`complete`: since
//! its first URL; a host that got its row later has its earlier URLs in
//! `other`). Memory: the sketch plus about 200 bytes a row (the name,
//! counters, the index entry) — about 330 KiB in all, whatever the list.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::Serialize;

/// Hosts with a row of their own.
pub const TABLE_HOSTS: usize = 1_000;
/// Rows of the count-min sketch of volumes.
pub const SKETCH_ROWS: usize = 4;
/// Counters a row of the sketch.
pub const SKETCH_WIDTH: usize = 8_192;
/// Time constant of the recent rates (exponentially weighted).
pub const RATE_WINDOW: Duration = Duration::from_secs(10);
/// Rates are brought up to date at most this often.
const TICK: Duration = Duration::from_secs(1);
/// The slot of the `other` row.
const OTHER: u32 = u32::MAX;

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Counts {
    urls: u64,
    done: u64,
    dead: u64,
    retries: u64,
    bytes: u64,
    in_flight: u64,
}

impl Counts {
    fn add(&mut self, o: &Counts) {
        self.urls += o.urls;
        self.done += o.done;
        self.dead += o.dead;
        self.retries += o.retries;
        self.bytes += o.bytes;
        self.in_flight += o.in_flight;
    }

    fn finished(&self) -> u64 {
        self.done + self.dead
    }
}

/// A row: its counters and its recent rate.
#[derive(Debug, Clone)]
struct Row {
    host: Arc<str>,
    counts: Counts,
    /// What it is ranked by: URLs started (estimated before it had a row).
    volume: u64,
    complete: bool,
    rate: Rate,
}

/// Finished URLs per second, exponentially weighted.
#[derive(Debug, Clone, Copy, Default)]
struct Rate {
    /// `finished` at the last tick.
    mark: u64,
    per_s: f64,
}

impl Rate {
    fn tick(&mut self, finished: u64, dt: f64) {
        let now = finished.saturating_sub(self.mark) as f64 / dt;
        let w = 1.0 - (-dt / RATE_WINDOW.as_secs_f64()).exp();
        self.per_s += w * (now - self.per_s);
        self.mark = finished;
    }
}

#[derive(Debug)]
struct Inner {
    cap: usize,
    rows: Vec<Row>,
    index: HashMap<Arc<str>, u32>,
    other: Counts,
    other_rate: Rate,
    sketch: Vec<u32>,
    /// The row to fold first (no URL in flight, smallest volume), as of
    /// the last look; checked again before use.
    smallest: Option<(u32, u64)>,
    /// URLs counted in `other` while `smallest` was unknown.
    misses: u64,
    last_tick: Instant,
}

/// The per-host figures of a run (see the module's doc).
#[derive(Debug)]
pub struct HostTable {
    inner: Mutex<Inner>,
}

/// One host's figures, as served at `/api/v1/batch/{job}/hosts`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct HostFigures {
    /// `host` or `host:port` as in the URLs (`other`: the rest).
    pub host: String,
    /// URLs started (admitted to a download).
    pub urls: u64,
    /// URLs with a committed result.
    pub done: u64,
    /// Dead letters.
    pub dead: u64,
    /// Failed attempts that were retried.
    pub retries: u64,
    /// Body bytes downloaded.
    pub bytes: u64,
    /// URLs started and without an outcome yet.
    pub in_flight: u64,
    /// URLs finished (done or dead) per second, recently (10 s time
    /// constant).
    pub per_s: f64,
    /// The counters hold every URL of the host (it had its row from its
    /// first URL on); else its earlier URLs are counted in `other`.
    pub complete: bool,
}

/// The busiest hosts, and the rest in one row.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct HostsAnswer {
    /// The job.
    pub job: String,
    /// Rows with exact counters now (at most `capacity`).
    pub tracked: usize,
    /// The table's bound.
    pub capacity: usize,
    /// The `limit` busiest hosts by URLs started.
    pub hosts: Vec<HostFigures>,
    /// Everything not in `hosts`: the table's other rows and every host
    /// without one (`host` = `"other"`).
    pub rest: HostFigures,
}

impl Default for HostTable {
    fn default() -> Self {
        Self::with_capacity(TABLE_HOSTS)
    }
}

impl HostTable {
    /// A table of at most `cap` rows (tests use small ones).
    pub fn with_capacity(cap: usize) -> Self {
        Self {
            inner: Mutex::new(Inner {
                cap: cap.max(1),
                rows: Vec::new(),
                index: HashMap::new(),
                other: Counts::default(),
                other_rate: Rate::default(),
                sketch: vec![0; SKETCH_ROWS * SKETCH_WIDTH],
                smallest: None,
                misses: 0,
                last_tick: Instant::now(),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A URL of `host` starts: counted, and its figures go to the row the
    /// ticket names until its outcome (or until the ticket is dropped).
    pub fn start(self: &Arc<Self>, host: &str) -> HostTicket {
        let slot = self.lock().start(host);
        HostTicket {
            table: self.clone(),
            slot,
            open: true,
        }
    }

    /// The `limit` busiest hosts and the rest.
    pub fn top(&self, job: &str, limit: usize) -> HostsAnswer {
        let mut inner = self.lock();
        inner.tick(Instant::now());
        let mut order: Vec<&Row> = inner.rows.iter().collect();
        order.sort_by(|a, b| b.volume.cmp(&a.volume).then(a.host.cmp(&b.host)));
        let figures = |host: &str, c: &Counts, per_s: f64, complete: bool| HostFigures {
            host: host.to_owned(),
            urls: c.urls,
            done: c.done,
            dead: c.dead,
            retries: c.retries,
            bytes: c.bytes,
            in_flight: c.in_flight,
            per_s,
            complete,
        };
        let hosts = order
            .iter()
            .take(limit)
            .map(|r| figures(&r.host, &r.counts, r.rate.per_s, r.complete))
            .collect();
        let mut rest = inner.other;
        let mut rest_rate = inner.other_rate.per_s;
        for r in order.iter().skip(limit) {
            rest.add(&r.counts);
            rest_rate += r.rate.per_s;
        }
        HostsAnswer {
            job: job.to_owned(),
            tracked: inner.rows.len(),
            capacity: inner.cap,
            hosts,
            rest: figures("other", &rest, rest_rate, false),
        }
    }

    fn with(&self, slot: u32, f: impl FnOnce(&mut Counts)) {
        let mut inner = self.lock();
        match inner.rows.get_mut(slot as usize) {
            Some(r) => f(&mut r.counts),
            None => f(&mut inner.other),
        }
    }
}

impl Inner {
    fn start(&mut self, host: &str) -> u32 {
        let now = Instant::now();
        if now.duration_since(self.last_tick) >= TICK {
            self.tick(now);
        }
        let bump = |c: &mut Counts| {
            c.urls += 1;
            c.in_flight += 1;
        };
        if let Some(&slot) = self.index.get(host) {
            let r = &mut self.rows[slot as usize];
            bump(&mut r.counts);
            r.volume += 1;
            return slot;
        }
        let volume = self.sketch_add(host);
        let row = |host: &str| Row {
            host: Arc::from(host),
            counts: Counts {
                urls: 1,
                in_flight: 1,
                ..Counts::default()
            },
            volume,
            // An estimate of 1 is exact: this is the host's first URL.
            complete: volume == 1,
            rate: Rate::default(),
        };
        if self.rows.len() < self.cap {
            let slot = self.rows.len() as u32;
            let r = row(host);
            self.index.insert(r.host.clone(), slot);
            self.rows.push(r);
            return slot;
        }
        if self.smallest.is_none() {
            // Every row had URLs in flight at the last look: look again
            // now and then, not at every URL.
            self.misses += 1;
            if self.misses.is_multiple_of(64) {
                self.find_smallest();
            }
        }
        if let Some((slot, smallest)) = self.smallest {
            if volume > smallest + smallest / 8 {
                if self.rows[slot as usize].counts.in_flight == 0 {
                    let old = std::mem::replace(&mut self.rows[slot as usize], row(host));
                    self.index.remove(&old.host);
                    self.index
                        .insert(self.rows[slot as usize].host.clone(), slot);
                    self.other.add(&old.counts);
                    // Its finished URLs are history: not a jump in the rate.
                    self.other_rate.mark += old.rate.mark;
                    self.other_rate.per_s += old.rate.per_s;
                    self.find_smallest();
                    return slot;
                }
                self.find_smallest();
            }
        }
        bump(&mut self.other);
        OTHER
    }

    /// Adds one to `host`'s volume; its estimate (never below the truth).
    /// Conservative update: only the counters at the minimum grow, which
    /// keeps the overestimate small.
    fn sketch_add(&mut self, host: &str) -> u64 {
        let h = xxhash_rust::xxh3::xxh3_64(host.as_bytes());
        let cells: [usize; SKETCH_ROWS] = std::array::from_fn(|row| {
            row * SKETCH_WIDTH + (h.rotate_left(16 * row as u32) as usize) % SKETCH_WIDTH
        });
        let estimate = cells
            .iter()
            .map(|&i| self.sketch[i])
            .min()
            .unwrap_or(0)
            .saturating_add(1);
        for i in cells {
            self.sketch[i] = self.sketch[i].max(estimate);
        }
        u64::from(estimate)
    }

    fn find_smallest(&mut self) {
        self.smallest = self
            .rows
            .iter()
            .enumerate()
            .filter(|(_, r)| r.counts.in_flight == 0)
            .min_by_key(|(_, r)| r.volume)
            .map(|(i, r)| (i as u32, r.volume));
    }

    fn tick(&mut self, now: Instant) {
        let dt = now.duration_since(self.last_tick).as_secs_f64();
        if dt <= 0.0 {
            return;
        }
        for r in &mut self.rows {
            r.rate.tick(r.counts.finished(), dt);
        }
        self.other_rate.tick(self.other.finished(), dt);
        self.last_tick = now;
        if self.rows.len() >= self.cap {
            self.find_smallest();
        }
    }
}

/// A URL's place in the [`HostTable`], from its start to its outcome.
/// Dropped without an outcome (the run stopped, a cluster claim was lost,
/// a second outcome of the same URL), it only leaves the in-flight count.
#[derive(Debug)]
pub struct HostTicket {
    table: Arc<HostTable>,
    slot: u32,
    open: bool,
}

impl HostTicket {
    /// A failed attempt, retried.
    pub fn retry(&self) {
        self.table.with(self.slot, |c| c.retries += 1);
    }

    /// Body bytes downloaded.
    pub fn bytes(&self, n: u64) {
        self.table.with(self.slot, |c| c.bytes += n);
    }

    /// The URL's result is committed.
    pub fn done(mut self) {
        self.open = false;
        self.table.with(self.slot, |c| {
            c.done += 1;
            c.in_flight = c.in_flight.saturating_sub(1);
        });
    }

    /// The URL is a dead letter.
    pub fn dead(mut self) {
        self.open = false;
        self.table.with(self.slot, |c| {
            c.dead += 1;
            c.in_flight = c.in_flight.saturating_sub(1);
        });
    }
}

impl Drop for HostTicket {
    fn drop(&mut self) {
        if self.open {
            self.table
                .with(self.slot, |c| c.in_flight = c.in_flight.saturating_sub(1));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(a: &HostsAnswer) -> Counts {
        let mut c = Counts::default();
        for h in a.hosts.iter().chain([&a.rest]) {
            c.add(&Counts {
                urls: h.urls,
                done: h.done,
                dead: h.dead,
                retries: h.retries,
                bytes: h.bytes,
                in_flight: h.in_flight,
            });
        }
        c
    }

    #[test]
    fn few_hosts_are_exact_and_ranked_by_volume() {
        let t = Arc::new(HostTable::with_capacity(10));
        for (host, n) in [("a", 3), ("b", 5), ("c", 1)] {
            for i in 0..n {
                let ticket = t.start(host);
                ticket.bytes(10);
                if i == 0 {
                    ticket.retry();
                    ticket.dead();
                } else {
                    ticket.done();
                }
            }
        }
        let held = t.start("c");
        let a = t.top("j", 10);
        let names: Vec<_> = a.hosts.iter().map(|h| h.host.as_str()).collect();
        assert_eq!(names, ["b", "a", "c"]);
        let b = &a.hosts[0];
        assert_eq!(
            (b.urls, b.done, b.dead, b.retries, b.bytes),
            (5, 4, 1, 1, 50)
        );
        assert!(b.complete);
        assert_eq!(a.hosts[2].in_flight, 1);
        drop(held);
        let a = t.top("j", 1);
        assert_eq!(a.hosts.len(), 1);
        assert_eq!(a.rest.urls, 5);
        assert_eq!(a.rest.in_flight, 0);
        assert_eq!(sum(&a).urls, 10);
    }

    #[test]
    fn many_hosts_stay_bounded_and_add_up() {
        let t = Arc::new(HostTable::with_capacity(50));
        let mut urls = 0;
        // 5,000 hosts with one URL each, then a busy host arriving late.
        for i in 0..5_000 {
            t.start(&format!("h{i}")).done();
            urls += 1;
        }
        for _ in 0..200 {
            t.start("late").done();
            urls += 1;
        }
        let a = t.top("j", 1_000);
        assert!(a.tracked <= 50 && a.hosts.len() <= 50, "{}", a.tracked);
        let total = sum(&a);
        assert_eq!((total.urls, total.done, total.in_flight), (urls, urls, 0));
        let late = &a.hosts[0];
        assert_eq!(late.host, "late", "the busiest host has a row");
        assert!(!late.complete);
        assert!(late.urls > 150, "{late:?}");
    }

    #[test]
    fn a_row_with_urls_in_flight_is_never_folded() {
        let t = Arc::new(HostTable::with_capacity(1));
        let held = t.start("first");
        for _ in 0..100 {
            t.start("second").done();
        }
        let a = t.top("j", 10);
        assert_eq!(a.hosts[0].host, "first");
        held.done();
        for _ in 0..100 {
            t.start("second").done();
        }
        let a = t.top("j", 10);
        assert_eq!(a.hosts[0].host, "second");
        assert_eq!(sum(&a).done, 201);
        assert_eq!(sum(&a).in_flight, 0);
    }
}
