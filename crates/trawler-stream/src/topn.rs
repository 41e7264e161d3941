//! Top-N per key over a sliding window: for each key (a post), the members
//! (users) with the highest count or sum over the last `window` of event
//! time, exact, sliding by `slide`.
//!
//! Event time is cut into slides (`⌊ts / slide⌋`); the window is the last
//! `window / slide` of them, ending with the slide of the *horizon*: the
//! largest accepted event time, or — once no event has been accepted for
//! a while — that time moved on with the wall clock (so a quiet key's
//! window empties). Per event, in arrival order (one order: the
//! sequencer's, the one the log records):
//!
//! * it is **from the future** when its time is more than `max_future`
//!   ahead of the wall clock: counted and dropped;
//! * it is **late** when its time is more than `lateness` before the
//!   horizon, or its slide has already left the window: counted and
//!   dropped;
//! * otherwise it is accepted: the horizon rises to its time (expiring the
//!   slides that leave the window) and its value is added to its slide and
//!   to its (key, member) total.
//!
//! So producers whose clocks differ by less than the lateness give the same
//! answer as in-order arrival.
//!
//! Ranking: by the total over the window, highest first; ties by the
//! member's text, in byte order (so `u10` before `u9`). Deterministic.
//!
//! State is bounded by what is in the window, not by history: a slide
//! keeps one 12-byte entry per event (key id, member id, value); a
//! (key, member) pair is a map entry in its key while any of its events is
//! in the window; key and member names are interned with a reference count
//! and freed with their last entry. Expiring a slide subtracts its entries.

use std::collections::VecDeque;
use std::io;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use rustc_hash::FxHashMap;

use crate::decode::Batch;
use crate::spec::StreamJob;
use crate::wal::{get_varint, put_varint, unzigzag, zigzag, Log};
use crate::{Admitted, Counters, Processor, Replayed};

/// Names interned to dense ids with a reference count; an id is reused
/// once its name is released as often as it was acquired.
#[derive(Debug, Default)]
struct Names {
    ids: FxHashMap<Box<str>, u32>,
    names: Vec<Box<str>>,
    refs: Vec<u32>,
    free: Vec<u32>,
}

impl Names {
    fn acquire(&mut self, name: &str) -> (u32, bool) {
        if let Some(&id) = self.ids.get(name) {
            self.refs[id as usize] += 1;
            return (id, false);
        }
        let id = match self.free.pop() {
            Some(id) => {
                self.names[id as usize] = name.into();
                self.refs[id as usize] = 1;
                id
            }
            None => {
                self.names.push(name.into());
                self.refs.push(1);
                (self.names.len() - 1) as u32
            }
        };
        self.ids.insert(name.into(), id);
        (id, true)
    }

    /// Drops one reference; true when it was the last.
    fn release(&mut self, id: u32) -> bool {
        let r = &mut self.refs[id as usize];
        *r -= 1;
        *r == 0
    }

    fn remove(&mut self, id: u32) {
        let name = std::mem::take(&mut self.names[id as usize]);
        self.ids.remove(&name);
        self.free.push(id);
    }

    fn name(&self, id: u32) -> &str {
        &self.names[id as usize]
    }

    fn get(&self, name: &str) -> Option<u32> {
        self.ids.get(name).copied()
    }

    fn live(&self) -> usize {
        self.ids.len()
    }
}

/// One event in a slide.
#[derive(Debug, Clone, Copy)]
struct Entry {
    key: u32,
    member: u32,
    value: u32,
}

#[derive(Debug, Default)]
struct KeyState {
    /// Member → (sum, events) over the window.
    members: FxHashMap<u32, (u64, u32)>,
    total: u64,
    events: u64,
    latest_ts: i64,
    changed: bool,
    /// When its change was last taken (wall ms).
    taken_at: i64,
}

/// A key's top-N, as pushed to subscribers and read by the API.
#[derive(Debug, Clone, PartialEq)]
pub struct TopList {
    /// The key.
    pub key: String,
    /// Sum (or count) over the window, all members.
    pub total: u64,
    /// Events in the window.
    pub events: u64,
    /// Members in the window.
    pub members: u64,
    /// The top members and their sums, highest first.
    pub top: Vec<(String, u64)>,
    /// The latest event time applied to this key (unix ms).
    pub latest_ts: i64,
    /// The window's end (exclusive, unix ms) when computed.
    pub window_end: i64,
}

/// Accepted events in log form: what the log stores and a replay applies.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TopRecord {
    /// (time, value, key end, member end): the key is `text[prev..key
    /// end]`, the member `text[key end..member end]`.
    pub events: Vec<(i64, u32, u32, u32)>,
    /// Keys and members, back to back.
    pub text: String,
    /// The source position after these events (0: none).
    pub position: u64,
}

impl TopRecord {
    /// Empties the record, keeping its buffers.
    pub fn clear(&mut self) {
        self.events.clear();
        self.text.clear();
        self.position = 0;
    }

    /// Appends one event.
    pub fn push(&mut self, ts: i64, key: &str, member: &str, value: u32) {
        self.text.push_str(key);
        let k = self.text.len() as u32;
        self.text.push_str(member);
        self.events.push((ts, value, k, self.text.len() as u32));
    }

    /// (time, key, member, value), in order.
    pub fn iter(&self) -> impl Iterator<Item = (i64, &str, &str, u32)> {
        let mut start = 0usize;
        self.events.iter().map(move |&(ts, v, k, m)| {
            let key = &self.text[start..k as usize];
            let member = &self.text[k as usize..m as usize];
            start = m as usize;
            (ts, key, member, v)
        })
    }

    /// Encodes the record as a log payload.
    pub fn encode(&self, out: &mut Vec<u8>) {
        put_varint(out, self.position);
        put_varint(out, self.events.len() as u64);
        let mut prev = 0i64;
        for (ts, key, member, v) in self.iter() {
            put_varint(out, zigzag(ts.wrapping_sub(prev)));
            prev = ts;
            put_varint(out, u64::from(v));
            put_varint(out, key.len() as u64);
            out.extend_from_slice(key.as_bytes());
            put_varint(out, member.len() as u64);
            out.extend_from_slice(member.as_bytes());
        }
    }

    /// Decodes a payload of [`TopRecord::encode`]; `None` when it is not one.
    pub fn decode(b: &[u8]) -> Option<TopRecord> {
        let mut at = 0;
        let mut r = TopRecord {
            position: get_varint(b, &mut at)?,
            ..TopRecord::default()
        };
        let n = get_varint(b, &mut at)?;
        if n > b.len() as u64 {
            return None;
        }
        let mut ts = 0i64;
        let text = |at: &mut usize| -> Option<&str> {
            let len = usize::try_from(get_varint(b, at)?).ok()?;
            let s = std::str::from_utf8(b.get(*at..at.checked_add(len)?)?).ok()?;
            *at += len;
            Some(s)
        };
        for _ in 0..n {
            ts = ts.wrapping_add(unzigzag(get_varint(b, &mut at)?));
            let v = u32::try_from(get_varint(b, &mut at)?).ok()?;
            let key = text(&mut at)?;
            let member = text(&mut at)?;
            r.push(ts, key, member, v);
        }
        (at == b.len()).then_some(r)
    }
}

/// What admission decided for one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// In the window: log and apply it.
    Accepted,
    /// Before the horizon by more than the lateness, or out of the window.
    Late,
    /// Too far ahead of the wall clock.
    Future,
}

/// The top-N state of one job.
#[derive(Debug)]
pub struct TopN {
    n: usize,
    slide_ms: i64,
    /// Slides in the window.
    width: i64,
    lateness_ms: i64,
    keys: Names,
    members: Names,
    state: Vec<KeyState>,
    /// `slides[i]` is slide number `first + i`.
    slides: VecDeque<Vec<Entry>>,
    first: i64,
    /// The window is slides `[end - width, end)`; `i64::MIN` before any event.
    end: i64,
    /// Largest accepted event time, or moved on by [`TopN::advance`].
    horizon: i64,
    changed: Vec<u32>,
    /// Keys whose last entry expired: freed once their update is taken.
    emptied: Vec<u32>,
    pairs: usize,
    entries: usize,
}

impl TopN {
    /// An empty state for `job` (a job with `[stream.topn]`).
    pub fn new(job: &StreamJob) -> TopN {
        let t = job.topn.as_ref().expect("a top-N job");
        TopN {
            n: t.n,
            slide_ms: t.slide_ms,
            width: job.window_ms / t.slide_ms,
            lateness_ms: job.lateness_ms,
            keys: Names::default(),
            members: Names::default(),
            state: Vec::new(),
            slides: VecDeque::new(),
            first: 0,
            end: i64::MIN,
            horizon: i64::MIN,
            changed: Vec::new(),
            emptied: Vec::new(),
            pairs: 0,
            entries: 0,
        }
    }

    fn slide_of(&self, ts: i64) -> i64 {
        ts.div_euclid(self.slide_ms)
    }

    /// Decides one event in arrival order; an accepted event moves the
    /// horizon (so the decision needs only the horizon: the window ends
    /// with the horizon's slide, whether or not the event is applied yet).
    pub fn admit(&mut self, ts: i64, now_ms: i64, max_future_ms: i64) -> Verdict {
        if ts > now_ms.saturating_add(max_future_ms) {
            return Verdict::Future;
        }
        if self.horizon != i64::MIN
            && (ts < self.horizon.saturating_sub(self.lateness_ms)
                || self.slide_of(ts) <= self.slide_of(self.horizon) - self.width)
        {
            return Verdict::Late;
        }
        self.horizon = self.horizon.max(ts);
        Verdict::Accepted
    }

    /// Applies one accepted (or replayed) event: slides up to its own move
    /// the window on, then it is added when its slide is in the window (a
    /// replayed event may have expired since).
    pub fn apply(&mut self, ts: i64, key: &str, member: &str, value: u32) -> bool {
        self.horizon = self.horizon.max(ts);
        let slide = self.slide_of(ts);
        self.move_end(slide + 1);
        if slide < self.end - self.width {
            return false;
        }
        let (k, new_key) = self.keys.acquire(key);
        if new_key && self.state.len() <= k as usize {
            self.state.resize_with(k as usize + 1, KeyState::default);
        }
        let (m, _) = self.members.acquire(member);
        let ks = &mut self.state[k as usize];
        let e = ks.members.entry(m).or_insert((0, 0));
        if e.1 == 0 {
            self.pairs += 1;
        }
        e.0 += u64::from(value);
        e.1 += 1;
        ks.total += u64::from(value);
        ks.events += 1;
        ks.latest_ts = ks.latest_ts.max(ts);
        if !ks.changed {
            ks.changed = true;
            self.changed.push(k);
        }
        let at = (slide - self.first) as usize;
        if self.slides.len() <= at {
            self.slides.resize_with(at + 1, Vec::new);
        }
        self.slides[at].push(Entry {
            key: k,
            member: m,
            value,
        });
        self.entries += 1;
        true
    }

    /// Moves the horizon to `ts` (the idle rule: event time passes with the
    /// wall clock), expiring what leaves the window.
    pub fn advance(&mut self, ts: i64) {
        if self.horizon == i64::MIN || ts <= self.horizon {
            return;
        }
        self.horizon = ts;
        self.move_end(self.slide_of(ts) + 1);
    }

    fn move_end(&mut self, end: i64) {
        if end <= self.end {
            return;
        }
        if self.end == i64::MIN {
            // The deque covers the whole window: a late event's slide is
            // never before `first`.
            self.first = end - self.width;
        }
        self.end = end;
        let keep_from = end - self.width;
        while self.first < keep_from {
            match self.slides.pop_front() {
                Some(entries) => self.expire(entries),
                None => {
                    self.first = keep_from;
                    break;
                }
            }
            self.first += 1;
        }
    }

    fn expire(&mut self, entries: Vec<Entry>) {
        self.entries -= entries.len();
        for e in entries {
            let ks = &mut self.state[e.key as usize];
            let gone = match ks.members.get_mut(&e.member) {
                Some(m) => {
                    m.0 -= u64::from(e.value);
                    m.1 -= 1;
                    m.1 == 0
                }
                None => unreachable!("an entry's member is in its key"),
            };
            if gone {
                ks.members.remove(&e.member);
                self.pairs -= 1;
            }
            ks.total -= u64::from(e.value);
            ks.events -= 1;
            if !ks.changed {
                ks.changed = true;
                self.changed.push(e.key);
            }
            if self.members.release(e.member) {
                self.members.remove(e.member);
            }
            if self.keys.release(e.key) {
                self.emptied.push(e.key);
            }
        }
    }

    /// An empty state whose horizon is `horizon`: admits as a state that
    /// has seen the stream up to a point where its horizon was that (a
    /// cluster node's replay from a mark).
    pub fn with_horizon(job: &StreamJob, horizon: i64) -> TopN {
        let mut t = TopN::new(job);
        t.horizon = horizon;
        t
    }

    /// Moves the window's end to the horizon's slide. Needed where accepted
    /// events are not all applied (a cluster node applies only its keys'):
    /// the window must slide with every accepted event, applied or not.
    pub fn catch_up(&mut self) {
        if self.horizon != i64::MIN {
            self.move_end(self.slide_of(self.horizon) + 1);
        }
    }

    /// Forgets every key `drop` names: their entries, pairs and names are
    /// freed at once and no change of theirs is reported any more (a
    /// cluster node that lost their partition).
    pub fn drop_keys(&mut self, drop: impl Fn(&str) -> bool) -> usize {
        let gone: Vec<u32> = self
            .keys
            .ids
            .iter()
            .filter(|(name, _)| drop(name))
            .map(|(_, &k)| k)
            .collect();
        if gone.is_empty() {
            return 0;
        }
        let mut is_gone = vec![false; self.state.len()];
        for &k in &gone {
            is_gone[k as usize] = true;
        }
        for slide in &mut self.slides {
            let before = slide.len();
            slide.retain(|e| {
                if !is_gone[e.key as usize] {
                    return true;
                }
                if self.members.release(e.member) {
                    self.members.remove(e.member);
                }
                false
            });
            self.entries -= before - slide.len();
        }
        for &k in &gone {
            self.pairs -= self.state[k as usize].members.len();
            self.state[k as usize] = KeyState::default();
            self.keys.refs[k as usize] = 0;
            self.keys.remove(k);
        }
        let is_gone = |k: &u32| is_gone.get(*k as usize).copied().unwrap_or(false);
        self.changed.retain(|k| !is_gone(k));
        self.emptied.retain(|k| !is_gone(k));
        gone.len()
    }

    /// The horizon (unix ms; `i64::MIN` before any event).
    pub fn horizon(&self) -> i64 {
        self.horizon
    }

    /// The window's end, exclusive (unix ms; `i64::MIN` before any event).
    pub fn window_end(&self) -> i64 {
        if self.end == i64::MIN {
            i64::MIN
        } else {
            self.end * self.slide_ms
        }
    }

    /// The ranked members of key `k`, at most `n`.
    fn rank(&self, k: u32) -> Vec<(u32, u64)> {
        let ks = &self.state[k as usize];
        let mut v: Vec<(u32, u64)> = ks.members.iter().map(|(&m, &(s, _))| (m, s)).collect();
        let cmp = |a: &(u32, u64), b: &(u32, u64)| {
            b.1.cmp(&a.1)
                .then_with(|| self.members.name(a.0).cmp(self.members.name(b.0)))
        };
        if v.len() > self.n {
            v.select_nth_unstable_by(self.n - 1, cmp);
            v.truncate(self.n);
        }
        v.sort_unstable_by(cmp);
        v
    }

    fn list(&self, k: u32) -> TopList {
        let ks = &self.state[k as usize];
        TopList {
            key: self.keys.name(k).to_owned(),
            total: ks.total,
            events: ks.events,
            members: ks.members.len() as u64,
            top: self
                .rank(k)
                .into_iter()
                .map(|(m, s)| (self.members.name(m).to_owned(), s))
                .collect(),
            latest_ts: ks.latest_ts,
            window_end: self.window_end(),
        }
    }

    /// The top-N of `key` (empty when it has nothing in the window).
    pub fn top(&self, key: &str) -> TopList {
        match self.keys.get(key) {
            Some(k) => self.list(k),
            None => TopList {
                key: key.to_owned(),
                total: 0,
                events: 0,
                members: 0,
                top: Vec::new(),
                latest_ts: 0,
                window_end: self.window_end(),
            },
        }
    }

    /// The keys changed since they were last taken that `wanted` names,
    /// with their top-N — at most one per key per `interval_ms`: a key taken
    /// less than that before `now_ms` stays changed for a later call (so a
    /// quiet key's first change goes out at once, a hot key's are
    /// coalesced). Then frees the keys left empty.
    pub fn take_changed(
        &mut self,
        now_ms: i64,
        interval_ms: i64,
        wanted: impl Fn(&str) -> bool,
    ) -> Vec<TopList> {
        let mut out = Vec::new();
        let mut later = Vec::new();
        for k in std::mem::take(&mut self.changed) {
            let ks = &mut self.state[k as usize];
            if ks.taken_at > now_ms - interval_ms && ks.events > 0 {
                later.push(k);
                continue;
            }
            ks.changed = false;
            if wanted(self.keys.name(k)) {
                self.state[k as usize].taken_at = now_ms;
                out.push(self.list(k));
            }
        }
        self.changed = later;
        let mut emptied = std::mem::take(&mut self.emptied);
        emptied.sort_unstable();
        emptied.dedup();
        for k in emptied {
            // Re-acquired since it emptied: still live.
            if self.keys.refs[k as usize] == 0 {
                self.keys.remove(k);
                self.state[k as usize] = KeyState::default();
            }
        }
        out
    }

    /// The `limit` keys with the highest totals (ties by key text).
    pub fn hottest(&self, limit: usize) -> Vec<(String, u64)> {
        let mut v: Vec<(u32, u64)> = self
            .keys
            .ids
            .values()
            .map(|&k| (k, self.state[k as usize].total))
            .collect();
        let cmp = |a: &(u32, u64), b: &(u32, u64)| {
            b.1.cmp(&a.1)
                .then_with(|| self.keys.name(a.0).cmp(self.keys.name(b.0)))
        };
        if limit == 0 {
            return Vec::new();
        }
        if v.len() > limit {
            v.select_nth_unstable_by(limit - 1, cmp);
            v.truncate(limit);
        }
        v.sort_unstable_by(cmp);
        v.into_iter()
            .map(|(k, t)| (self.keys.name(k).to_owned(), t))
            .collect()
    }

    /// Sizes: (keys, members, (key, member) pairs, slide entries) alive.
    pub fn sizes(&self) -> (usize, usize, usize, usize) {
        (
            self.keys.live(),
            self.members.live(),
            self.pairs,
            self.entries,
        )
    }

    /// Admits `batch` (in order), recording what is accepted in `out`: the
    /// record to log, then to apply. Returns (accepted, late, future).
    pub fn admit_batch(
        &mut self,
        batch: &Batch,
        weighted: bool,
        now_ms: i64,
        max_future_ms: i64,
        out: &mut TopRecord,
    ) -> (u64, u64, u64) {
        self.admit_batch_where(batch, weighted, now_ms, max_future_ms, out, &|_| true)
    }

    /// [`TopN::admit_batch`], recording only the accepted events whose key
    /// `keep` names (a cluster node's partitions). Every event is admitted
    /// — the horizon is the whole stream's, so every node decides every
    /// event as one node would — and counted.
    pub fn admit_batch_where(
        &mut self,
        batch: &Batch,
        weighted: bool,
        now_ms: i64,
        max_future_ms: i64,
        out: &mut TopRecord,
        keep: &dyn Fn(&str) -> bool,
    ) -> (u64, u64, u64) {
        let n = usize::from(weighted);
        let (mut accepted, mut late, mut future) = (0, 0, 0);
        for (i, ev) in batch.events.iter().enumerate() {
            match self.admit(ev.ts, now_ms, max_future_ms) {
                Verdict::Future => future += 1,
                Verdict::Late => late += 1,
                Verdict::Accepted => {
                    let value = if weighted {
                        batch.fields_of(i, n)[0].num.unwrap_or(0.0) as u32
                    } else {
                        1
                    };
                    if let Some((key, member)) = batch.members(ev).next() {
                        if keep(key) {
                            out.push(ev.ts, key, member, value);
                        }
                        accepted += 1;
                    }
                }
            }
        }
        out.position = out.position.max(batch.position);
        (accepted, late, future)
    }
}

impl TopN {
    /// Applies a logged record; returns the events still in the window.
    pub fn apply_record(&mut self, record: &TopRecord) -> u64 {
        let mut applied = 0;
        for (ts, key, member, value) in record.iter() {
            applied += u64::from(self.apply(ts, key, member, value));
        }
        applied
    }
}

/// Where a cluster node's replay starts. Every event accepted at or before
/// stream sequence `from` has left the window (the horizon then was before
/// the window's start), so replaying the messages after it — admitted by a
/// [`TopN::with_horizon`] at `horizon`, raised to each floor's horizon once
/// its sequence is passed (the idle rule's moves) — up to
/// [`Processor::position`] decides every event as the node did.
#[derive(Debug, Clone)]
pub struct ReplayPlan {
    /// The last sequence not to replay.
    pub from: u64,
    /// The horizon after it.
    pub horizon: i64,
    /// (sequence, horizon after it), later marks.
    pub floors: Vec<(u64, i64)>,
}

/// Rebuilds a cluster node's keys from the stream: re-admits the messages
/// after a [`TopPipeline::replay_plan`] start, one message at a time in
/// stream order, as the node admitted them, keeping the accepted events of
/// the keys asked for.
pub struct Replay {
    sim: TopN,
    floors: VecDeque<(u64, i64)>,
    weighted: bool,
    max_future_ms: i64,
    /// The accepted events of the keys asked for, to apply.
    pub record: TopRecord,
}

impl Replay {
    /// A replay of `job` from `plan`.
    pub fn new(job: &StreamJob, plan: ReplayPlan) -> Replay {
        Replay {
            sim: TopN::with_horizon(job, plan.horizon),
            floors: plan.floors.into(),
            weighted: job.topn.as_ref().is_some_and(|t| t.weighted),
            max_future_ms: 10 * 60_000,
            record: TopRecord::default(),
        }
    }

    /// Admits the events of message `seq` (decoded into `batch`).
    pub fn feed(&mut self, seq: u64, batch: &Batch, now_ms: i64, keep: &dyn Fn(&str) -> bool) {
        while let Some(&(at, horizon)) = self.floors.front() {
            if at >= seq {
                break;
            }
            self.sim.advance(horizon);
            self.floors.pop_front();
        }
        self.sim.admit_batch_where(
            batch,
            self.weighted,
            now_ms,
            self.max_future_ms,
            &mut self.record,
            keep,
        );
    }
}

/// Where a top-N job's changes go: the subscribers' hub. It takes the
/// changed keys it has subscribers for from the engine (one lock of its
/// own state for the whole batch of changes).
pub trait Publish: Send {
    /// Takes and delivers the changes due at `now_ms` (see
    /// [`TopN::take_changed`]).
    fn publish(&mut self, engine: &mut TopN, now_ms: i64, interval_ms: i64);
}

/// Which keys a cluster node applies (those of the partitions it holds).
pub type KeyFilter = Box<dyn Fn(&str) -> bool + Send>;

/// How a top-N pipeline keeps its state.
enum Durability {
    /// One node: the write-ahead log is the state.
    Log(Log),
    /// A cluster node: the JetStream stream is the log. Only the keys the
    /// filter names are applied; `marks` are (stream sequence, horizon
    /// after it) — one per slide the horizon entered — from which a
    /// partition gained later is rebuilt (see [`TopPipeline::replay_plan`]).
    Stream {
        keep: KeyFilter,
        marks: VecDeque<(u64, i64)>,
    },
}

/// The sequencer's state of a top-N job: the engine, its log and the hub.
pub struct TopPipeline {
    job: Arc<StreamJob>,
    engine: TopN,
    durability: Durability,
    publish: Box<dyn Publish>,
    counters: Arc<Counters>,
    record: TopRecord,
    payload: Vec<u8>,
    position: u64,
    last_accept_ms: i64,
    /// The horizon as of the last accepted event.
    accepted_max: i64,
    next_tick_ms: i64,
    /// The window start at the last checkpoint.
    checkpointed: i64,
    /// How far ahead of the wall clock an event may be.
    pub max_future_ms: i64,
    /// Without accepted events for this long, event time is taken to pass
    /// at the wall clock's pace (a quiet window empties).
    pub idle_ms: i64,
}

impl TopPipeline {
    /// Opens the job's log in `dir` and replays it: the log holds every
    /// accepted event still in the window, so the replay is the state.
    pub fn open(
        job: Arc<StreamJob>,
        dir: &Path,
        publish: Box<dyn Publish>,
        counters: Arc<Counters>,
    ) -> io::Result<(TopPipeline, Replayed)> {
        let checkpoint = crate::wal::read_checkpoint(dir)?;
        let (log, records, torn) = Log::open(dir, |p| {
            let r = TopRecord::decode(p)?;
            let max = r.events.iter().map(|e| e.0).max().unwrap_or(i64::MIN);
            Some((r, max))
        })?;
        let mut engine = TopN::new(&job);
        let mut replayed = Replayed {
            records: records.len(),
            torn,
            ..Replayed::default()
        };
        let mut position = 0;
        for r in &records {
            replayed.events += engine.apply_record(r);
            position = position.max(r.position);
        }
        if let Some(cp) = checkpoint {
            engine.advance(cp.max_ts);
            position = position.max(cp.position);
        }
        let _ = engine.take_changed(0, 0, |_| false);
        let lateness = job.lateness_ms.max(1_000);
        let p = TopPipeline {
            accepted_max: engine.horizon(),
            checkpointed: i64::MIN,
            engine,
            durability: Durability::Log(log),
            publish,
            counters,
            record: TopRecord::default(),
            payload: Vec::new(),
            position,
            last_accept_ms: trawler_common::clock::unix_ms(),
            next_tick_ms: 0,
            max_future_ms: 10 * 60_000,
            idle_ms: lateness,
            job,
        };
        p.publish_counters();
        Ok((p, replayed))
    }

    /// A cluster node's pipeline: no log (the JetStream stream is one),
    /// every event admitted, only the keys `keep` names applied. It starts
    /// empty, at the stream's beginning.
    pub fn partitioned(
        job: Arc<StreamJob>,
        keep: KeyFilter,
        publish: Box<dyn Publish>,
        counters: Arc<Counters>,
    ) -> TopPipeline {
        let lateness = job.lateness_ms.max(1_000);
        TopPipeline {
            engine: TopN::new(&job),
            durability: Durability::Stream {
                keep,
                marks: VecDeque::from([(0, i64::MIN)]),
            },
            publish,
            counters,
            record: TopRecord::default(),
            payload: Vec::new(),
            position: 0,
            last_accept_ms: trawler_common::clock::unix_ms(),
            accepted_max: i64::MIN,
            next_tick_ms: 0,
            checkpointed: i64::MIN,
            max_future_ms: 10 * 60_000,
            idle_ms: lateness,
            job,
        }
    }

    /// The engine, for reads.
    pub fn engine(&self) -> &TopN {
        &self.engine
    }

    /// Where a replay that rebuilds keys must start, for a cluster node
    /// (`None` for a one-node pipeline).
    pub fn replay_plan(&self) -> Option<ReplayPlan> {
        let Durability::Stream { marks, .. } = &self.durability else {
            return None;
        };
        let (from, horizon) = marks[0];
        Some(ReplayPlan {
            from,
            horizon,
            floors: marks.iter().skip(1).copied().collect(),
        })
    }

    /// Applies a replay's record (events of keys just gained), then slides
    /// the window to where it is.
    pub fn apply_replayed(&mut self, record: &TopRecord) -> u64 {
        let applied = self.engine.apply_record(record);
        self.engine.catch_up();
        self.publish_counters();
        applied
    }

    /// Forgets the keys `drop` names (a partition lost).
    pub fn drop_keys(&mut self, drop: impl Fn(&str) -> bool) -> usize {
        let n = self.engine.drop_keys(drop);
        self.publish_counters();
        n
    }

    /// Records a mark when the horizon entered a new slide, and forgets
    /// the marks a replay no longer needs (it starts from the last one
    /// whose horizon is before the window's start).
    fn mark(&mut self) {
        let Durability::Stream { marks, .. } = &mut self.durability else {
            return;
        };
        let (horizon, slide) = (self.engine.horizon(), self.engine.slide_ms);
        let last = marks.back().map_or(i64::MIN, |m| m.1);
        if horizon != i64::MIN
            && (last == i64::MIN || horizon.div_euclid(slide) > last.div_euclid(slide))
        {
            marks.push_back((self.position, horizon));
        }
        let end = self.engine.window_end();
        if end != i64::MIN {
            let start = end - self.job.window_ms;
            while marks.len() >= 2 && marks[1].1 < start {
                marks.pop_front();
            }
        }
    }

    fn publish_counters(&self) {
        let c = &self.counters;
        let (keys, members, pairs, entries) = self.engine.sizes();
        c.max_ts.store(self.engine.horizon(), Ordering::Relaxed);
        c.groups.store(keys as u64, Ordering::Relaxed);
        c.members.store(members as u64, Ordering::Relaxed);
        c.pairs.store(pairs as u64, Ordering::Relaxed);
        c.open_windows.store(entries as u64, Ordering::Relaxed);
    }

    fn checkpoint(&mut self) -> io::Result<()> {
        let end = self.engine.window_end();
        if end == i64::MIN {
            return Ok(());
        }
        let start = end - self.job.window_ms;
        // Once a second at most: it only lets whole segments go.
        if start < self.checkpointed + 1_000 {
            return Ok(());
        }
        let Durability::Log(log) = &mut self.durability else {
            return Ok(());
        };
        log.checkpoint(crate::wal::Checkpoint {
            closed_before: start,
            max_ts: self.engine.horizon(),
            position: self.position,
        })?;
        self.checkpointed = start;
        Ok(())
    }
}

impl Processor for TopPipeline {
    fn ingest(&mut self, batch: &Batch, now_ms: i64) -> io::Result<Admitted> {
        self.record.clear();
        let weighted = self.job.topn.as_ref().is_some_and(|t| t.weighted);
        let keep: &dyn Fn(&str) -> bool = match &self.durability {
            Durability::Log(_) => &|_| true,
            Durability::Stream { keep, .. } => keep,
        };
        let (accepted, late, future) = self.engine.admit_batch_where(
            batch,
            weighted,
            now_ms,
            self.max_future_ms,
            &mut self.record,
            keep,
        );
        self.record.position = batch.position.max(self.position);
        if let Durability::Log(log) = &mut self.durability {
            if !self.record.events.is_empty() || self.record.position > self.position {
                self.payload.clear();
                self.record.encode(&mut self.payload);
                let max = self.record.events.iter().map(|e| e.0).max();
                log.append(&self.payload, max.unwrap_or(self.engine.horizon()))?;
            }
        }
        self.position = self.record.position;
        self.engine.apply_record(&self.record);
        self.engine.catch_up();
        self.mark();
        if accepted > 0 {
            self.last_accept_ms = now_ms;
            self.accepted_max = self.engine.horizon();
        }
        let c = &self.counters;
        c.accepted.fetch_add(accepted, Ordering::Relaxed);
        c.late.fetch_add(late, Ordering::Relaxed);
        c.future.fetch_add(future, Ordering::Relaxed);
        self.publish_counters();
        Ok(Admitted {
            accepted,
            late,
            future,
            new_groups: Vec::new(),
        })
    }

    fn should_tick(&self, now_ms: i64) -> bool {
        now_ms >= self.next_tick_ms
    }

    fn tick(&mut self, now_ms: i64) -> Result<usize, String> {
        let interval_ms = self
            .job
            .topn
            .as_ref()
            .expect("a top-N job")
            .push_interval_ms;
        // Pushes go out at a tenth of the coalescing interval: a quiet
        // key's change waits at most that.
        self.next_tick_ms = now_ms + (interval_ms / 10).clamp(5, 50);
        let quiet = now_ms - self.last_accept_ms;
        if self.accepted_max != i64::MIN && quiet >= self.idle_ms {
            self.engine.advance(self.accepted_max.saturating_add(quiet));
            self.mark();
        }
        self.publish.publish(&mut self.engine, now_ms, interval_ms);
        self.checkpoint().map_err(|e| format!("checkpoint: {e}"))?;
        self.publish_counters();
        Ok(0)
    }

    fn finish(&mut self, now_ms: i64) -> Result<usize, String> {
        self.tick(now_ms)
    }

    fn position(&self) -> u64 {
        self.position
    }

    fn tick_every(&self) -> std::time::Duration {
        std::time::Duration::from_millis(10)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::StreamJobConfig;
    use proptest::prelude::*;
    use std::collections::HashMap;

    pub(crate) fn job(window: &str, slide: &str, lateness: &str, n: usize) -> StreamJob {
        let text = format!(
            "[job]\nname = \"c\"\nkind = \"stream\"\n[stream]\ntime_field = \"/ts\"\nwindow = \"{window}\"\nlateness = \"{lateness}\"\n[stream.topn]\nkey = \"/post\"\nmember = \"/user\"\nvalue = \"/words\"\nn = {n}\nslide = \"{slide}\"\n"
        );
        StreamJobConfig::from_toml(&text, "c.toml")
            .unwrap()
            .build()
            .unwrap()
    }

    /// The brute-force model: the same admission rule, then every key's
    /// ranking recomputed from the accepted events still in the window.
    struct Model {
        slide: i64,
        width: i64,
        lateness: i64,
        horizon: i64,
        end: i64,
        accepted: Vec<(i64, String, String, u32)>,
    }

    impl Model {
        fn admit(&mut self, ts: i64, key: &str, member: &str, v: u32) -> bool {
            if self.horizon != i64::MIN
                && (ts < self.horizon - self.lateness
                    || ts.div_euclid(self.slide) < self.end - self.width)
            {
                return false;
            }
            self.horizon = self.horizon.max(ts);
            self.end = self.end.max(ts.div_euclid(self.slide) + 1);
            self.accepted.push((ts, key.into(), member.into(), v));
            true
        }

        fn advance(&mut self, ts: i64) {
            if self.horizon != i64::MIN && ts > self.horizon {
                self.horizon = ts;
                self.end = self.end.max(ts.div_euclid(self.slide) + 1);
            }
        }

        fn answer(&self, n: usize) -> HashMap<String, (u64, Vec<(String, u64)>)> {
            let mut sums: HashMap<String, HashMap<String, u64>> = HashMap::new();
            for (ts, k, m, v) in &self.accepted {
                if ts.div_euclid(self.slide) >= self.end - self.width {
                    *sums
                        .entry(k.clone())
                        .or_default()
                        .entry(m.clone())
                        .or_default() += u64::from(*v);
                }
            }
            sums.into_iter()
                .map(|(k, members)| {
                    let total = members.values().sum();
                    let mut v: Vec<(String, u64)> = members.into_iter().collect();
                    v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
                    v.truncate(n);
                    (k, (total, v))
                })
                .collect()
        }
    }

    #[derive(Debug, Clone)]
    enum Step {
        Event {
            dt: i64,
            key: u8,
            member: u8,
            value: u32,
        },
        Idle(i64),
    }

    fn step() -> impl Strategy<Value = Step> {
        let dt = prop_oneof![8 => -3_000i64..2_000, 1 => -14_000i64..0];
        prop_oneof![
            8 => (dt, 0u8..4, 0u8..12, 0u32..5).prop_map(|(dt, key, member, value)| Step::Event { dt, key, member, value }),
            1 => (0i64..12_000).prop_map(Step::Idle),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]
        #[test]
        fn the_engine_equals_the_brute_force_model(
            steps in proptest::collection::vec(step(), 1..300),
            n in 1usize..5,
            lateness in prop_oneof![Just(2_000i64), Just(15_000)],
        ) {
            // A lateness longer than the window: the window's own edge decides.
            let job = job("10s", "1s", &format!("{lateness}ms"), n);
            let mut e = TopN::new(&job);
            let mut m = Model { slide: 1_000, width: 10, lateness, horizon: i64::MIN, end: i64::MIN, accepted: Vec::new() };
            let mut clock = 1_000_000i64;
            for s in &steps {
                match *s {
                    Step::Event { dt, key, member, value } => {
                        clock += dt.max(0);
                        let ts = clock + dt.min(0);
                        let (key, member) = (format!("p{key}"), format!("u{member}"));
                        let verdict = e.admit(ts, i64::MAX / 2, 0);
                        let accepted = m.admit(ts, &key, &member, value);
                        prop_assert_eq!(verdict == Verdict::Accepted, accepted);
                        if accepted {
                            e.apply(ts, &key, &member, value);
                        }
                    }
                    Step::Idle(d) => {
                        clock += d;
                        e.advance(clock);
                        m.advance(clock);
                    }
                }
                let _ = e.take_changed(0, 0, |_| true);
            }
            let want = m.answer(n);
            for k in 0..4 {
                let key = format!("p{k}");
                let got = e.top(&key);
                let (total, top) = want.get(&key).cloned().unwrap_or_default();
                prop_assert_eq!(got.total, total, "key {}", key);
                prop_assert_eq!(got.top, top, "key {}", key);
            }
            // Everything leaves: state is what the window holds, nothing more.
            e.advance(clock + 60_000);
            let _ = e.take_changed(0, 0, |_| true);
            prop_assert_eq!(e.sizes(), (0, 0, 0, 0));
        }

        #[test]
        fn records_round_trip(events in proptest::collection::vec((any::<i64>(), "[a-z0-9é]{0,8}", "[a-z0-9]{0,8}", any::<u32>()), 0..20), position in any::<u64>()) {
            let mut r = TopRecord { position, ..TopRecord::default() };
            for (ts, k, m, v) in &events {
                r.push(*ts, k, m, *v);
            }
            let mut out = Vec::new();
            r.encode(&mut out);
            prop_assert_eq!(TopRecord::decode(&out), Some(r));
        }

        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = TopRecord::decode(&bytes);
        }
    }

    struct Discard;

    impl Publish for Discard {
        fn publish(&mut self, engine: &mut TopN, now_ms: i64, interval_ms: i64) {
            let _ = engine.take_changed(now_ms, interval_ms, |_| false);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(100))]
        /// Two cluster nodes over one stream: one holds the even keys from
        /// the start, the other gains the odd keys part-way and rebuilds
        /// them by a replay from its marks. Each equals one node that saw
        /// everything, for its keys; then the first loses its keys.
        #[test]
        fn partitioned_pipelines_and_a_replay_equal_one_node(
            steps in proptest::collection::vec((-3_000i64..2_000, 0u8..6, 0u8..8, 0u8..10), 1..200),
            gain_at in 0usize..200,
        ) {
            use std::sync::atomic::AtomicBool;
            let job = Arc::new(job("10s", "1s", "2s", 3));
            let decoder = crate::Decoder::new(&job);
            let even = |k: &str| k.as_bytes()[1].is_multiple_of(2);
            let odd_owned = Arc::new(AtomicBool::new(false));
            let mut one = TopN::new(&job);
            let mut a = TopPipeline::partitioned(job.clone(), Box::new(move |k: &str| even(k)), Box::new(Discard), Arc::default());
            let owned = odd_owned.clone();
            let mut b = TopPipeline::partitioned(job.clone(), Box::new(move |k: &str| !even(k) && owned.load(Ordering::Relaxed)), Box::new(Discard), Arc::default());
            let now = i64::MAX / 4;
            let mut clock = 1_000_000i64;
            let mut messages = Vec::new();
            for (i, &(dt, key, member, idle)) in steps.iter().enumerate() {
                clock += dt.max(0);
                let ts = clock + dt.min(0);
                let line = format!("{{\"ts\":{ts},\"post\":\"p{key}\",\"user\":\"u{member}\",\"words\":{}}}\n", member % 3);
                let mut batch = Batch::default();
                decoder.decode(line.as_bytes(), &mut batch);
                batch.position = i as u64 + 1;
                let mut r = TopRecord::default();
                one.admit_batch(&batch, true, now, 0, &mut r);
                one.apply_record(&r);
                a.ingest(&batch, now).unwrap();
                b.ingest(&batch, now).unwrap();
                messages.push(line);
                if idle == 0 {
                    // The idle rule: event time passes with the clock.
                    clock += 4_000;
                    for p in [&mut a, &mut b] {
                        p.engine.advance(clock);
                        p.mark();
                    }
                    one.advance(clock);
                }
                if i == gain_at {
                    let plan = b.replay_plan().unwrap();
                    let from = plan.from;
                    let mut replay = Replay::new(&job, plan);
                    for (seq, line) in messages.iter().enumerate().map(|(i, l)| (i as u64 + 1, l)) {
                        if seq > from && seq <= b.position() {
                            let mut batch = Batch::default();
                            decoder.decode(line.as_bytes(), &mut batch);
                            replay.feed(seq, &batch, now, &|k| !even(k));
                        }
                    }
                    odd_owned.store(true, Ordering::Relaxed);
                    b.apply_replayed(&replay.record);
                }
            }
            let _ = one.take_changed(0, 0, |_| true);
            for k in 0..6 {
                let key = format!("p{k}");
                let p = if even(&key) { &a } else { &b };
                if !even(&key) && !odd_owned.load(Ordering::Relaxed) {
                    prop_assert_eq!(p.engine().top(&key).total, 0);
                    continue;
                }
                let (want, got) = (one.top(&key), p.engine().top(&key));
                prop_assert_eq!((got.total, got.events, &got.top), (want.total, want.events, &want.top), "key {}", key);
            }
            // Losing the keys frees their state at once.
            a.drop_keys(|_| true);
            let _ = a.engine.take_changed(0, 0, |_| true);
            prop_assert_eq!(a.engine().sizes(), (0, 0, 0, 0));
        }
    }

    #[test]
    fn the_decoder_keeps_keys_as_text_and_checks_values() {
        let job = job("5m", "1s", "10s", 3);
        let d = crate::Decoder::new(&job);
        let mut b = Batch::default();
        d.decode(
            b"{\"ts\":1,\"post\":17,\"user\":\"a\",\"words\":3}\n\
              {\"ts\":1,\"post\":123456789012345678,\"user\":\"b\",\"words\":0}\n\
              {\"ts\":1,\"post\":\"p\",\"user\":\"a\",\"words\":-1}\n\
              {\"ts\":1,\"post\":\"p\",\"user\":\"a\"}\n\
              {\"ts\":1,\"post\":\"p\",\"words\":2}\n\
              {\"ts\":1,\"post\":1.5,\"user\":\"a\",\"words\":2}\n",
            &mut b,
        );
        let pairs: Vec<(&str, &str)> = b.events.iter().flat_map(|e| b.members(e)).collect();
        assert_eq!(pairs, [("17", "a"), ("123456789012345678", "b")]);
        assert_eq!(b.fields_of(0, 1)[0].num, Some(3.0));
        assert_eq!(b.stats.malformed, 4);
        let why: Vec<&str> = b.stats.errors.iter().map(|(_, e)| e.as_str()).collect();
        assert!(why[0].contains("not a whole number"), "{why:?}");
        assert!(why[1].contains("no value"), "{why:?}");
        assert!(why[2].contains("no member at /user"), "{why:?}");
        assert!(
            why[3].contains("1.5 is not a string or an integer key"),
            "{why:?}"
        );
    }

    #[test]
    fn ties_break_by_member_text_and_changes_are_reported_once() {
        let job = job("5m", "1s", "10s", 2);
        let mut e = TopN::new(&job);
        for (m, v) in [("u9", 3), ("u10", 3), ("a", 1), ("u9", 0)] {
            assert_eq!(e.admit(1_000, 2_000, 0), Verdict::Accepted);
            e.apply(1_000, "p1", m, v);
        }
        let changed = e.take_changed(0, 0, |k| k == "p1");
        assert_eq!(changed.len(), 1);
        assert_eq!(
            changed[0].top,
            [("u10".to_owned(), 3), ("u9".to_owned(), 3)]
        );
        assert_eq!(
            (changed[0].total, changed[0].events, changed[0].members),
            (7, 4, 3)
        );
        assert!(e.take_changed(0, 0, |_| true).is_empty());
        assert_eq!(e.hottest(5), [("p1".to_owned(), 7)]);
    }

    #[test]
    fn expiry_frees_names_and_reports_the_emptied_key() {
        let job = job("2s", "1s", "10s", 3);
        let mut e = TopN::new(&job);
        e.apply(1_000, "p1", "u1", 1);
        e.apply(1_500, "p2", "u2", 1);
        let _ = e.take_changed(0, 0, |_| true);
        assert_eq!(e.sizes(), (2, 2, 2, 2));
        // Slide 1 leaves the window once slide 3 is in it.
        e.apply(3_000, "p2", "u3", 1);
        let changed = e.take_changed(0, 0, |_| true);
        let p1 = changed.iter().find(|t| t.key == "p1").unwrap();
        assert_eq!((p1.total, p1.top.len()), (0, 0));
        assert_eq!(e.sizes(), (1, 1, 1, 1));
        // The freed ids are reused for new names.
        e.apply(3_100, "p3", "u4", 2);
        assert_eq!(e.top("p3").top, [("u4".to_owned(), 2)]);
        assert_eq!(e.top("p2").top, [("u3".to_owned(), 1)]);
    }
}
