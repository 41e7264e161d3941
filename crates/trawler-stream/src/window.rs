//! Tumbling windows, the watermark, and the groups.
//!
//! The [`Engine`] is single-threaded by design: one sequencer owns it, so
//! arrival order — which decides what is late — is one order, the same one
//! the write-ahead log records. Per event, in arrival order:
//!
//! * its window is `[⌊ts / w⌋·w, +w)`;
//! * it is **late** when its window is closed: `end + lateness <= max_ts`
//!   (the largest event time among the events accepted before it), or the
//!   window was closed by the idle rule or at the end of a file; late
//!   events are counted and dropped;
//! * it is **from the future** when its time is more than `max_future`
//!   ahead of the wall clock (one such event would otherwise close every
//!   window): counted and dropped;
//! * otherwise it is accepted: `max_ts` rises to its time, and every group
//!   it belongs to gets its metrics updated in that window.
//!
//! [`Engine::admit`] makes these decisions and returns the accepted events
//! as an [`Accepted`] record — exactly what the write-ahead log stores and
//! what [`Engine::apply`] aggregates — so a replay after a crash aggregates
//! the same events without deciding anything again. Closed windows leave
//! through [`Engine::close`] as samples.

use std::collections::BTreeMap;
use std::sync::Arc;

use rustc_hash::FxHashMap;

use crate::agg::{Agg, Num};
use crate::decode::{Batch, FieldVal};
use crate::spec::StreamJob;

/// Accepted events, ready to log and to apply.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Accepted {
    /// (time, type id, end of its groups in `groups`).
    pub events: Vec<(i64, u16, u32)>,
    /// Group ids, event after event.
    pub groups: Vec<u32>,
    /// `fields[i * n .. (i + 1) * n]`: event `i`'s fields.
    pub fields: Vec<FieldVal>,
    /// The source position after these events (0: none).
    pub position: u64,
}

impl Accepted {
    /// Empties the record, keeping its buffers.
    pub fn clear(&mut self) {
        self.events.clear();
        self.groups.clear();
        self.fields.clear();
        self.position = 0;
    }

    /// Events in the record.
    pub fn len(&self) -> usize {
        self.events.len()
    }

    /// No events.
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }
}

/// What [`Engine::admit`] did with a batch.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Admitted {
    /// Events accepted.
    pub accepted: u64,
    /// Events of closed windows.
    pub late: u64,
    /// Events too far ahead of the wall clock.
    pub future: u64,
    /// Groups seen for the first time (their ids), to persist before the
    /// record that uses them.
    pub new_groups: Vec<u32>,
}

/// One sample of a closed window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// The window's start, unix ms.
    pub ts: i64,
    /// The group id.
    pub group: u32,
    /// The series index ([`StreamJob::series`]).
    pub series: u16,
    /// The value.
    pub value: Num,
}

/// The groups: (key, value) pairs interned to dense ids.
#[derive(Debug, Default, Clone)]
pub struct Groups {
    ids: FxHashMap<Box<str>, u32>,
    names: Vec<(String, String)>,
    scratch: String,
}

impl Groups {
    fn join(out: &mut String, key: &str, value: &str) {
        use std::fmt::Write;
        out.clear();
        let _ = write!(out, "{}:", key.len());
        out.push_str(key);
        out.push_str(value);
    }

    /// The id of (key, value), and whether it is new.
    pub fn intern(&mut self, key: &str, value: &str) -> (u32, bool) {
        Self::join(&mut self.scratch, key, value);
        if let Some(&id) = self.ids.get(self.scratch.as_str()) {
            return (id, false);
        }
        let id = self.names.len() as u32;
        self.ids.insert(self.scratch.as_str().into(), id);
        self.names.push((key.to_owned(), value.to_owned()));
        (id, true)
    }

    /// Restores a group read back from disk; ids must come in order.
    pub fn restore(&mut self, id: u32, key: &str, value: &str) -> Result<(), String> {
        if id as usize != self.names.len() {
            return Err(format!(
                "group {id} follows group {}",
                self.names.len() as i64 - 1
            ));
        }
        self.intern(key, value);
        Ok(())
    }

    /// The id of (key, value), if known.
    pub fn get(&self, key: &str, value: &str) -> Option<u32> {
        let mut s = String::new();
        Self::join(&mut s, key, value);
        self.ids.get(s.as_str()).copied()
    }

    /// The (key, value) of `id`.
    pub fn name(&self, id: u32) -> Option<(&str, &str)> {
        self.names
            .get(id as usize)
            .map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// Groups known.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// No groups yet.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

type Cell = Box<[Agg]>;

/// The open windows of one job.
pub struct Engine {
    job: Arc<StreamJob>,
    groups: Groups,
    /// Open windows by start: a cell per group id.
    windows: BTreeMap<i64, Vec<Option<Cell>>>,
    /// Largest accepted event time (`i64::MIN`: none yet).
    max_ts: i64,
    /// Windows starting before this are closed.
    closed_before: i64,
    /// Events a metric could not use (its field missing or of another kind).
    missing_fields: u64,
    values: Vec<Option<Num>>,
}

impl Engine {
    /// An engine with no state.
    pub fn new(job: Arc<StreamJob>) -> Self {
        Engine {
            job,
            groups: Groups::default(),
            windows: BTreeMap::new(),
            max_ts: i64::MIN,
            closed_before: i64::MIN,
            missing_fields: 0,
            values: Vec::new(),
        }
    }

    /// The job.
    pub fn job(&self) -> &Arc<StreamJob> {
        &self.job
    }

    /// The groups.
    pub fn groups(&self) -> &Groups {
        &self.groups
    }

    /// The groups, to restore them at start-up.
    pub fn groups_mut(&mut self) -> &mut Groups {
        &mut self.groups
    }

    /// Largest accepted event time, if any.
    pub fn max_ts(&self) -> Option<i64> {
        (self.max_ts != i64::MIN).then_some(self.max_ts)
    }

    /// Windows starting before this are closed.
    pub fn closed_before(&self) -> i64 {
        self.closed_before
    }

    /// The start of the oldest open window.
    pub fn first_open(&self) -> Option<i64> {
        self.windows.keys().next().copied()
    }

    /// Open windows.
    pub fn open_windows(&self) -> usize {
        self.windows.len()
    }

    /// Metric updates skipped for a missing or mistyped field.
    pub fn missing_fields(&self) -> u64 {
        self.missing_fields
    }

    /// Restores the watermark saved by a checkpoint.
    pub fn restore(&mut self, closed_before: i64, max_ts: i64) {
        self.closed_before = self.closed_before.max(closed_before);
        self.max_ts = self.max_ts.max(max_ts);
    }

    fn is_late(&self, ts: i64) -> bool {
        let start = self.job.window_of(ts);
        start < self.closed_before
            || start.saturating_add(self.job.window_ms + self.job.lateness_ms) <= self.max_ts
    }

    /// Decides, in arrival order, which events of `batch` are accepted
    /// (see the module docs), interning their groups; the accepted ones
    /// are appended to `out`. `now_ms` is the wall clock and `max_future_ms`
    /// how far ahead of it an event may be.
    pub fn admit(
        &mut self,
        batch: &Batch,
        now_ms: i64,
        max_future_ms: i64,
        out: &mut Accepted,
    ) -> Admitted {
        let n = self.job.fields.len();
        let mut result = Admitted::default();
        let horizon = now_ms.saturating_add(max_future_ms);
        for (i, ev) in batch.events.iter().enumerate() {
            if ev.ts > horizon {
                result.future += 1;
                continue;
            }
            if self.is_late(ev.ts) {
                result.late += 1;
                continue;
            }
            self.max_ts = self.max_ts.max(ev.ts);
            for (k, v) in batch.members(ev) {
                let (id, new) = self.groups.intern(k, v);
                if new {
                    result.new_groups.push(id);
                }
                out.groups.push(id);
            }
            out.events
                .push((ev.ts, ev.type_id, out.groups.len() as u32));
            out.fields.extend_from_slice(batch.fields_of(i, n));
            result.accepted += 1;
        }
        out.position = out.position.max(batch.position);
        result
    }

    /// Aggregates `record`'s events; events of windows already closed (a
    /// replay of events whose windows were written) are skipped. Returns
    /// the events applied.
    pub fn apply(&mut self, record: &Accepted) -> u64 {
        let n = self.job.fields.len();
        let job = Arc::clone(&self.job);
        let mut applied = 0;
        let mut group_start = 0usize;
        for (i, &(ts, type_id, group_end)) in record.events.iter().enumerate() {
            let groups = &record.groups[group_start..group_end as usize];
            group_start = group_end as usize;
            let start = job.window_of(ts);
            if start < self.closed_before {
                continue;
            }
            self.max_ts = self.max_ts.max(ts);
            let metrics = &job.metrics_by_type[(type_id as usize).min(job.types.len())];
            if metrics.is_empty() {
                continue;
            }
            let fields = &record.fields[i * n..(i + 1) * n];
            let cells = self.windows.entry(start).or_default();
            for &g in groups {
                let g = g as usize;
                if cells.len() <= g {
                    cells.resize_with(g + 1, || None);
                }
                let cell =
                    cells[g].get_or_insert_with(|| job.metrics.iter().map(Agg::new).collect());
                for &m in metrics {
                    let metric = &job.metrics[m];
                    if !cell[m].add(metric.field.map(|f| &fields[f])) {
                        self.missing_fields += 1;
                    }
                }
            }
            applied += 1;
        }
        applied
    }

    /// Closes every window whose end plus the lateness is at or before
    /// `watermark` (normally [`Engine::max_ts`]; later when the idle rule
    /// or the end of a file moves it), appending their samples to `out`.
    /// Returns the windows closed.
    pub fn close(&mut self, watermark: i64, out: &mut Vec<Sample>) -> usize {
        let mut closed = 0;
        let span = self.job.window_ms + self.job.lateness_ms;
        while let Some((&start, _)) = self.windows.first_key_value() {
            if start.saturating_add(span) > watermark {
                break;
            }
            let (start, cells) = self.windows.pop_first().expect("a first window");
            self.emit(start, &cells, out);
            closed += 1;
        }
        // Everything up to the watermark is closed now, with or without
        // data: a later event there is late.
        if watermark.saturating_sub(span) > i64::MIN + self.job.window_ms {
            let boundary = self.job.window_of(watermark - span) + self.job.window_ms;
            self.closed_before = self.closed_before.max(boundary);
        }
        closed
    }

    /// Closes every open window (the end of a file, or a shutdown of a
    /// backfill).
    pub fn close_all(&mut self, out: &mut Vec<Sample>) -> usize {
        let Some((&last, _)) = self.windows.last_key_value() else {
            return 0;
        };
        self.close(last + self.job.window_ms + self.job.lateness_ms, out)
    }

    fn emit(&mut self, start: i64, cells: &[Option<Cell>], out: &mut Vec<Sample>) {
        for (g, cell) in cells.iter().enumerate() {
            let Some(cell) = cell else { continue };
            self.values.clear();
            for (m, agg) in cell.iter().enumerate() {
                agg.values(&self.job.metrics[m], &mut self.values);
            }
            for (s, v) in self.values.iter().enumerate() {
                if let Some(value) = v {
                    out.push(Sample {
                        ts: start,
                        group: g as u32,
                        series: s as u16,
                        value: *value,
                    });
                }
            }
        }
    }

    /// The current values of the open windows for `group`: (window
    /// start, one value per series). For live reads of the partial minute.
    pub fn open_values(&self, group: u32) -> Vec<(i64, Vec<Option<Num>>)> {
        let mut out = Vec::new();
        for (&start, cells) in &self.windows {
            if let Some(Some(cell)) = cells.get(group as usize) {
                let mut values = Vec::new();
                for (m, agg) in cell.iter().enumerate() {
                    agg.values(&self.job.metrics[m], &mut values);
                }
                out.push((start, values));
            }
        }
        out
    }
}
