//! The views' data, single-threaded: [`crate::Views`] wraps it in a lock.
//!
//! Entities live in *slots*: parallel columns indexed by a `u32` slot that
//! [`IdIndex`] maps ids to. Columns instead of a `Vec<struct>` so no byte is
//! lost to padding; a removed entity's slot is recycled through `free`.
//!
//! The ordered views are [`OsTree`]s of [`Key`] = (value descending, id
//! ascending): position 0 is rank 1 and ties come out by id. Every mutation
//! goes through `set_value`, `set_gain` and `set_suspicion`, which keep the
//! columns, the sums and the trees in step.

use std::cmp::Ordering;
use std::collections::BTreeSet;
use std::mem;
use std::ops::Bound;

use crate::config::Schema;
use crate::index::IdIndex;
use crate::ostree::OsTree;
use crate::{
    Average, Entity, MemoryUse, Mover, Ranked, Reference, Row, Stats, Suspicion, Update, Window,
};

/// Bits of `flags` after the metric presence bits (`1 << metric`).
const GAIN: [u16; 2] = [1 << 8, 1 << 9];
const CHECKED: u16 = 1 << 10;
const SUSPICIOUS: u16 = 1 << 11;

/// An entry of an ordered view: sorts by value descending, then id ascending.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Key {
    value: i64,
    id: u64,
}

impl Key {
    /// Sorts before every key with this value: its position is the number of
    /// entries with a strictly greater value.
    fn first_of(value: i64) -> Self {
        Key { value, id: 0 }
    }
}

impl Ord for Key {
    fn cmp(&self, other: &Self) -> Ordering {
        other.value.cmp(&self.value).then(self.id.cmp(&other.id))
    }
}

impl PartialOrd for Key {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

#[derive(Debug, Clone, Default)]
pub(crate) struct State {
    /// Metrics per entity (stride of `values`).
    width: usize,
    /// The first `ints` metrics are integers and have sums; the rest are
    /// floats kept as latest values only.
    ints: usize,
    rank_by: usize,
    index: IdIndex,
    free: Vec<u32>,
    /// Per slot: time of the latest observation, ms.
    ts: Vec<i64>,
    /// Per slot, `width` values; meaningful where the presence bit is set.
    values: Vec<i64>,
    /// Per slot: presence of each metric, gains, suspicion.
    flags: Vec<u16>,
    /// Per slot: gain of the ranked metric over [`Window::Hour`], [`Window::Day`].
    gains: Vec<[i64; 2]>,
    /// Per slot: when the suspicion was checked, ms.
    checked_at: Vec<i64>,
    /// Per metric: exact sum and count of the entities that have it.
    sums: Vec<i128>,
    counts: Vec<u64>,
    /// The ranked metric of every entity that has it.
    rank: OsTree<Key>,
    /// Gains per window.
    movers: [OsTree<Key>; 2],
    suspicious: BTreeSet<u64>,
}

impl State {
    pub(crate) fn new(schema: &Schema) -> Self {
        let width = schema.metrics().len();
        Self {
            width,
            ints: schema.ints(),
            rank_by: schema.rank_by(),
            sums: vec![0; width],
            counts: vec![0; width],
            ..Self::default()
        }
    }

    /// Builds the views of `rows` at once: columns first, then each tree
    /// from sorted keys, which is several times faster than inserting.
    /// Rows must have been checked for arity. One row per id is expected; a
    /// later row for the same id replaces an earlier one unless it is older.
    pub(crate) fn build<'a>(schema: &Schema, rows: impl IntoIterator<Item = Row<'a>>) -> Self {
        let mut st = Self::new(schema);
        let mut ids = Vec::new();
        for row in rows {
            let u = row.update;
            let slot = ids.len();
            ids.push(u.id);
            st.push_slot();
            st.ts[slot] = u.ts_ms;
            for (m, v) in u.values.iter().enumerate() {
                if let Some(v) = *v {
                    st.values[slot * st.width + m] = v;
                    st.flags[slot] |= 1 << m;
                }
            }
            let gains = gains(st.value(slot, st.rank_by), u.reference);
            for (w, gain) in gains.into_iter().enumerate() {
                if let Some(gain) = gain {
                    st.gains[slot][w] = gain;
                    st.flags[slot] |= GAIN[w];
                }
            }
            if let Some(s) = row.suspicion {
                st.checked_at[slot] = s.checked_at_ms;
                st.flags[slot] |= CHECKED | if s.suspicious { SUSPICIOUS } else { 0 };
            }
        }
        let (min, max) = ids
            .iter()
            .fold((u64::MAX, 0), |(lo, hi), &id| (lo.min(id), hi.max(id)));
        st.index = IdIndex::for_range(min, max, ids.len());
        let mut live = vec![true; ids.len()];
        for (slot, &id) in ids.iter().enumerate() {
            let slot = slot as u32;
            let dead = match st.index.get(id) {
                None => None,
                Some(prev) if st.ts[slot as usize] >= st.ts[prev as usize] => {
                    st.index.remove(id);
                    Some(prev)
                }
                Some(_) => Some(slot),
            };
            if dead != Some(slot) {
                st.index.insert(id, slot);
            }
            if let Some(dead) = dead {
                live[dead as usize] = false;
                st.flags[dead as usize] = 0;
                st.free.push(dead);
            }
        }
        let mut rank = Vec::new();
        let mut movers = [Vec::new(), Vec::new()];
        for (slot, &id) in ids.iter().enumerate().filter(|(slot, _)| live[*slot]) {
            for m in 0..st.ints {
                if let Some(v) = st.value(slot, m) {
                    st.sums[m] += i128::from(v);
                    st.counts[m] += 1;
                }
            }
            if let Some(value) = st.value(slot, st.rank_by) {
                rank.push(Key { value, id });
            }
            for (w, keys) in movers.iter_mut().enumerate() {
                if let Some(value) = st.gain(slot, w) {
                    keys.push(Key { value, id });
                }
            }
        }
        st.rank = sorted_tree(rank);
        st.movers = movers.map(sorted_tree);
        st.suspicious = ids
            .iter()
            .enumerate()
            .filter(|&(slot, _)| live[slot] && st.flags[slot] & SUSPICIOUS != 0)
            .map(|(_, &id)| id)
            .collect();
        st
    }

    /// Applies one observation; `false` if it is older than the one held.
    pub(crate) fn apply(&mut self, u: &Update<'_>) -> bool {
        let slot = match self.index.get(u.id) {
            Some(slot) if u.ts_ms < self.ts[slot as usize] => return false,
            Some(slot) => slot as usize,
            None => self.allocate(u.id),
        };
        self.ts[slot] = u.ts_ms;
        let before = self.value(slot, self.rank_by);
        for (m, v) in u.values.iter().enumerate() {
            if let Some(v) = *v {
                self.set_value(slot, m, v);
            }
        }
        let after = self.value(slot, self.rank_by);
        if before != after {
            if let Some(value) = before {
                self.rank.remove(&Key { value, id: u.id });
            }
            if let Some(value) = after {
                self.rank.insert(Key { value, id: u.id });
            }
        }
        for (w, gain) in gains(after, u.reference).into_iter().enumerate() {
            self.set_gain(slot, u.id, w, gain);
        }
        true
    }

    /// Records a suspicion check; `false` if the id is not tracked or the
    /// check is older than the one held.
    pub(crate) fn set_suspicion(&mut self, id: u64, s: Suspicion) -> bool {
        let Some(slot) = self.index.get(id).map(|s| s as usize) else {
            return false;
        };
        if self.flags[slot] & CHECKED != 0 && s.checked_at_ms < self.checked_at[slot] {
            return false;
        }
        self.checked_at[slot] = s.checked_at_ms;
        self.flags[slot] |= CHECKED;
        if s.suspicious {
            self.flags[slot] |= SUSPICIOUS;
            self.suspicious.insert(id);
        } else {
            self.flags[slot] &= !SUSPICIOUS;
            self.suspicious.remove(&id);
        }
        true
    }

    /// Takes `id` out of every view; `false` if it was not there.
    pub(crate) fn remove(&mut self, id: u64) -> bool {
        let Some(slot) = self.index.remove(id).map(|s| s as usize) else {
            return false;
        };
        for m in 0..self.ints {
            if let Some(v) = self.value(slot, m) {
                self.sums[m] -= i128::from(v);
                self.counts[m] -= 1;
            }
        }
        if let Some(value) = self.value(slot, self.rank_by) {
            self.rank.remove(&Key { value, id });
        }
        for w in 0..2 {
            self.set_gain(slot, id, w, None);
        }
        self.suspicious.remove(&id);
        self.flags[slot] = 0;
        self.free.push(slot as u32);
        true
    }

    pub(crate) fn entity(&self, schema: &Schema, id: u64) -> Option<Entity> {
        let slot = self.index.get(id)? as usize;
        let values: Vec<Option<i64>> = (0..self.width).map(|m| self.value(slot, m)).collect();
        let ratios = schema
            .ratios()
            .iter()
            .map(|&(_, num, den)| match (values[num], values[den]) {
                (Some(n), Some(d)) if d != 0 => Some(n as f64 / d as f64),
                _ => None,
            })
            .collect();
        let rank = values[self.rank_by].map(|v| self.rank_of(v));
        let flags = self.flags[slot];
        Some(Entity {
            id,
            ts_ms: self.ts[slot],
            values,
            ratios,
            rank,
            gain_1h: self.gain(slot, 0),
            gain_24h: self.gain(slot, 1),
            suspicion: (flags & CHECKED != 0).then(|| Suspicion {
                suspicious: flags & SUSPICIOUS != 0,
                checked_at_ms: self.checked_at[slot],
            }),
        })
    }

    pub(crate) fn rank(&self, id: u64) -> Option<u64> {
        let slot = self.index.get(id)? as usize;
        self.value(slot, self.rank_by).map(|v| self.rank_of(v))
    }

    pub(crate) fn top(&self, limit: usize) -> Vec<Ranked> {
        let mut out: Vec<Ranked> = Vec::with_capacity(limit.min(self.rank.len()));
        if limit == 0 {
            return out;
        }
        self.rank.walk_from(0, |k| {
            // Equal values share the rank of the first of them.
            let rank = match out.last() {
                Some(prev) if prev.value == k.value => prev.rank,
                _ => out.len() as u64 + 1,
            };
            out.push(Ranked {
                id: k.id,
                value: k.value,
                rank,
            });
            out.len() < limit
        });
        out
    }

    pub(crate) fn top_gainers(&self, window: Window, limit: usize) -> Vec<Mover> {
        let mut out = Vec::with_capacity(limit.min(64));
        if limit == 0 {
            return out;
        }
        self.movers[window as usize].walk_from(0, |k| {
            if k.value <= 0 {
                return false;
            }
            out.push(Mover {
                id: k.id,
                gain: k.value,
            });
            out.len() < limit
        });
        out
    }

    /// Losses sit at the end of the tree, but ties must come out by id
    /// ascending: walk back collecting one group of equal gains at a time and
    /// append each group reversed. A group too large for what is left of
    /// `limit` is read forwards from its first key instead, so a huge tie
    /// costs no more than the entries returned.
    pub(crate) fn top_losers(&self, window: Window, limit: usize) -> Vec<Mover> {
        let tree = &self.movers[window as usize];
        let mut out = Vec::with_capacity(limit.min(64));
        let mut group: Vec<Mover> = Vec::new();
        tree.walk_back(|k| {
            if k.value >= 0 {
                return false;
            }
            if group.last().is_some_and(|g| g.gain != k.value) {
                out.extend(group.drain(..).rev());
            }
            group.push(Mover {
                id: k.id,
                gain: k.value,
            });
            out.len() + group.len() <= limit
        });
        let need = limit.saturating_sub(out.len());
        if group.len() <= need {
            out.extend(group.into_iter().rev());
        } else if need > 0 {
            let start = tree.count_less(&Key::first_of(group[0].gain));
            tree.walk_from(start, |k| {
                out.push(Mover {
                    id: k.id,
                    gain: k.value,
                });
                out.len() < limit
            });
        }
        out
    }

    pub(crate) fn suspicious(&self, after: Option<u64>, limit: usize) -> Vec<u64> {
        let from = after.map_or(Bound::Unbounded, Bound::Excluded);
        self.suspicious
            .range((from, Bound::Unbounded))
            .take(limit)
            .copied()
            .collect()
    }

    pub(crate) fn stats(&self) -> Stats {
        Stats {
            tracked: self.ts.len() - self.free.len(),
            suspicious: self.suspicious.len(),
            averages: self
                .sums
                .iter()
                .zip(&self.counts)
                .map(|(&sum, &count)| Average { sum, count })
                .collect(),
        }
    }

    /// Heap bytes held, from allocated capacities.
    pub(crate) fn memory(&self) -> MemoryUse {
        fn vec<T>(v: &Vec<T>) -> usize {
            v.capacity() * mem::size_of::<T>()
        }
        MemoryUse {
            table: vec(&self.free)
                + vec(&self.ts)
                + vec(&self.values)
                + vec(&self.flags)
                + vec(&self.gains)
                + vec(&self.checked_at),
            index: self.index.heap_bytes(),
            rank: self.rank.heap_bytes(),
            movers: self.movers.iter().map(OsTree::heap_bytes).sum(),
            // std's BTreeSet<u64>: nodes of up to 11 keys, about 2/3 full.
            suspicious: self.suspicious.len() * 18,
        }
    }

    fn rank_of(&self, value: i64) -> u64 {
        self.rank.count_less(&Key::first_of(value)) as u64 + 1
    }

    fn value(&self, slot: usize, metric: usize) -> Option<i64> {
        (self.flags[slot] & (1 << metric) != 0).then(|| self.values[slot * self.width + metric])
    }

    fn gain(&self, slot: usize, window: usize) -> Option<i64> {
        (self.flags[slot] & GAIN[window] != 0).then(|| self.gains[slot][window])
    }

    fn set_value(&mut self, slot: usize, metric: usize, v: i64) {
        if metric >= self.ints {
            // A float: its latest value only, no average.
            self.values[slot * self.width + metric] = v;
            self.flags[slot] |= 1 << metric;
            return;
        }
        match self.value(slot, metric) {
            Some(old) => self.sums[metric] += i128::from(v) - i128::from(old),
            None => {
                self.sums[metric] += i128::from(v);
                self.counts[metric] += 1;
            }
        }
        self.values[slot * self.width + metric] = v;
        self.flags[slot] |= 1 << metric;
    }

    fn set_gain(&mut self, slot: usize, id: u64, window: usize, gain: Option<i64>) {
        let old = self.gain(slot, window);
        if old == gain {
            return;
        }
        let tree = &mut self.movers[window];
        if let Some(value) = old {
            tree.remove(&Key { value, id });
        }
        match gain {
            Some(value) => {
                tree.insert(Key { value, id });
                self.gains[slot][window] = value;
                self.flags[slot] |= GAIN[window];
            }
            None => self.flags[slot] &= !GAIN[window],
        }
    }

    fn push_slot(&mut self) {
        self.ts.push(0);
        self.values.resize(self.values.len() + self.width, 0);
        self.flags.push(0);
        self.gains.push([0; 2]);
        self.checked_at.push(0);
    }

    fn allocate(&mut self, id: u64) -> usize {
        let slot = match self.free.pop() {
            Some(slot) => slot,
            None => {
                self.push_slot();
                u32::try_from(self.ts.len() - 1).expect("fewer than 2^32 entities")
            }
        };
        self.flags[slot as usize] = 0;
        self.index.insert(id, slot);
        slot as usize
    }
}

fn sorted_tree(mut keys: Vec<Key>) -> OsTree<Key> {
    keys.sort_unstable();
    OsTree::from_sorted(keys)
}

/// Gains of the ranked metric `now` over the reference values.
fn gains(now: Option<i64>, reference: Reference) -> [Option<i64>; 2] {
    let gain = |then: Option<i64>| Some(now?.saturating_sub(then?));
    [gain(reference.hour_ago), gain(reference.day_ago)]
}
