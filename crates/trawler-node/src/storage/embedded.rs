//! The embedded store behind the storage seams: one WAL append per batch
//! (durable against `kill -9` when it returns), series created on first
//! sight in one catalog batch, reads from blocks, heads and rollups.
//!
//! Series are keyed `(job, entity, metric)`: the job's stored fields and
//! its enrichment's answers under the job's name, the average's history
//! under [`aggregates_job`] with entity 0, so it never collides with an
//! entity's series.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use trawler_api::{Points, SeriesQuery};
use trawler_crawl::Observation;
use trawler_enrich::Verdict;
use trawler_store::{
    Aggregate, Point, Resolution, Sample, SeriesId, SeriesKey, Store, Value, ValueKind,
};

use super::{Reader, StorageError, Writer};
use crate::layout::Layout;

/// The job-level series (the average's history) live under this job name.
pub fn aggregates_job(job: &str) -> String {
    format!("{job}:aggregates")
}

/// Series ids of each entity, in [`Layout::stored`] order, created on first
/// sight. A flat vector indexed through a map keeps it to ~24 bytes per
/// entity plus 8 per series.
#[derive(Debug, Default)]
struct SeriesTable {
    offsets: HashMap<u64, u32>,
    ids: Vec<SeriesId>,
    per_entity: usize,
}

impl SeriesTable {
    fn new(per_entity: usize) -> Self {
        Self {
            per_entity,
            ..Self::default()
        }
    }

    fn get(&self, entity: u64) -> Option<&[SeriesId]> {
        let at = *self.offsets.get(&entity)? as usize * self.per_entity;
        self.ids.get(at..at + self.per_entity)
    }

    fn insert(&mut self, entity: u64, series: &[SeriesId]) {
        let offset = (self.ids.len() / self.per_entity.max(1)) as u32;
        self.offsets.insert(entity, offset);
        self.ids.extend_from_slice(series);
    }
}

/// [`Writer`] and [`Reader`] over a [`Store`].
pub struct EmbeddedStorage {
    job: String,
    layout: Layout,
    store: Arc<Store>,
    series: RwLock<SeriesTable>,
    flags: Mutex<HashMap<u64, SeriesId>>,
}

fn unavailable(e: trawler_store::Error) -> StorageError {
    StorageError::Unavailable(e.to_string())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl EmbeddedStorage {
    /// The job's series in `store`, found in its catalog.
    pub fn new(job: &str, layout: &Layout, store: Arc<Store>) -> Self {
        let width = layout.stored.len();
        let mut table = SeriesTable::new(width);
        let mut flags = HashMap::new();
        let mut partial: HashMap<u64, Vec<Option<SeriesId>>> = HashMap::new();
        for info in store.list_series(job) {
            if layout.flag.as_deref() == Some(info.metric.as_str()) {
                flags.insert(info.entity, info.id);
            } else if let Some(pos) = layout.stored.iter().position(|s| s.name == info.metric) {
                if let Some(slot) = partial
                    .entry(info.entity)
                    .or_insert_with(|| vec![None; width])
                    .get_mut(pos)
                {
                    *slot = Some(info.id);
                }
            }
        }
        for (entity, ids) in partial {
            if let Some(ids) = ids.into_iter().collect::<Option<Vec<_>>>() {
                table.insert(entity, &ids);
            }
        }
        Self {
            job: job.to_owned(),
            layout: layout.clone(),
            store,
            series: RwLock::new(table),
            flags: Mutex::new(flags),
        }
    }

    /// The store (for its statistics, the start-up scan, and the checks
    /// that it still accepts writes).
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    fn table(&self) -> std::sync::RwLockReadGuard<'_, SeriesTable> {
        self.series.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Creates the series of entities seen for the first time, in one
    /// catalog batch.
    fn ensure_series(&self, entities: impl Iterator<Item = u64>) -> Result<(), StorageError> {
        let missing: Vec<u64> = {
            let table = self.table();
            entities.filter(|id| table.get(*id).is_none()).collect()
        };
        if missing.is_empty() {
            return Ok(());
        }
        let keys: Vec<(SeriesKey, ValueKind)> = missing
            .iter()
            .flat_map(|&entity| {
                self.layout.stored.iter().map(move |s| {
                    (
                        SeriesKey {
                            job: &self.job,
                            entity,
                            metric: &s.name,
                        },
                        s.kind,
                    )
                })
            })
            .collect();
        let ids = self.store.series_batch(&keys).map_err(unavailable)?;
        let mut table = self.series.write().unwrap_or_else(|e| e.into_inner());
        for (entity, chunk) in missing
            .iter()
            .zip(ids.chunks(self.layout.stored.len().max(1)))
        {
            if table.get(*entity).is_none() {
                table.insert(*entity, chunk);
            }
        }
        Ok(())
    }

    fn stored_points(&self, series: SeriesId, q: SeriesQuery) -> Result<Points, StorageError> {
        let store = &self.store;
        Ok(match q.step_ms {
            None => store
                .range(series, q.from_ms, q.to_ms)
                .map_err(unavailable)?
                .into_iter()
                .map(|Point { ts_ms, value }| (ts_ms, value.as_f64()))
                .collect(),
            Some(step) => store
                .downsample(series, q.from_ms, q.to_ms, step)
                .map_err(unavailable)?
                .into_iter()
                .map(|a: Aggregate| (a.start_ms, a.avg()))
                .collect(),
        })
    }
}

impl Writer for EmbeddedStorage {
    fn append(&self, observations: &[&Observation]) -> Result<u64, StorageError> {
        self.ensure_series(observations.iter().map(|o| o.id))?;
        let stored = &self.layout.stored;
        let mut samples = Vec::with_capacity(observations.len() * stored.len());
        {
            let table = self.table();
            for o in observations {
                let Some(ids) = table.get(o.id) else { continue };
                for (s, series) in stored.iter().zip(ids) {
                    let v = o.values[s.index];
                    if v.is_nan() {
                        continue;
                    }
                    let value = match s.kind {
                        ValueKind::Int => Value::Int(v as i64),
                        ValueKind::Float => Value::Float(v),
                    };
                    samples.push(Sample {
                        series: *series,
                        ts_ms: o.slot_ms,
                        value,
                    });
                }
            }
        }
        if samples.is_empty() {
            return Ok(0);
        }
        let appended = self.store.append(&samples).map_err(unavailable)?;
        Ok(appended.accepted as u64)
    }

    fn append_flags(&self, verdicts: &[Verdict]) -> Result<(), StorageError> {
        let Some(flag) = self.layout.flag.as_deref() else {
            return Ok(());
        };
        let mut samples = Vec::with_capacity(verdicts.len());
        {
            let mut series = lock(&self.flags);
            for v in verdicts {
                let id = match series.get(&v.id) {
                    Some(id) => *id,
                    None => {
                        let key = SeriesKey {
                            job: &self.job,
                            entity: v.id,
                            metric: flag,
                        };
                        let id = self
                            .store
                            .series(key, ValueKind::Int)
                            .map_err(unavailable)?;
                        *series.entry(v.id).or_insert(id)
                    }
                };
                samples.push(Sample {
                    series: id,
                    ts_ms: v.checked_at_ms,
                    value: Value::Int(i64::from(v.value)),
                });
            }
        }
        if !samples.is_empty() {
            self.store.append(&samples).map_err(unavailable)?;
        }
        Ok(())
    }

    fn append_average(&self, ts_ms: i64, mean: f64) -> Result<(), StorageError> {
        let job = aggregates_job(&self.job);
        let key = SeriesKey {
            job: &job,
            entity: 0,
            metric: &self.layout.average,
        };
        let series = self
            .store
            .series(key, ValueKind::Float)
            .map_err(unavailable)?;
        self.store
            .append(&[Sample {
                series,
                ts_ms,
                value: Value::Float(mean),
            }])
            .map_err(unavailable)?;
        Ok(())
    }

    fn refused(&self) -> Option<String> {
        self.store.poisoned()
    }
}

impl Reader for EmbeddedStorage {
    fn points(&self, entity: u64, stored: usize, q: SeriesQuery) -> Result<Points, StorageError> {
        let series = self
            .table()
            .get(entity)
            .and_then(|ids| ids.get(stored).copied());
        match series {
            Some(series) => self.stored_points(series, q),
            None => Ok(Vec::new()),
        }
    }

    fn average_history(&self, q: SeriesQuery) -> Result<Points, StorageError> {
        let job = aggregates_job(&self.job);
        let series = self
            .store
            .list_series(&job)
            .into_iter()
            .find(|s| s.metric == self.layout.average && s.entity == 0);
        match series {
            Some(s) => self.stored_points(s.id, q),
            None => Ok(Vec::new()),
        }
    }

    fn hourly_firsts(
        &self,
        from_ms: i64,
        to_ms: i64,
        f: &mut dyn FnMut(u64, i64, i64),
    ) -> Result<(), StorageError> {
        let rank = self.layout.rank_stored;
        let entities: Vec<(u64, SeriesId)> = {
            let table = self.table();
            table
                .offsets
                .keys()
                .filter_map(|&e| table.get(e).and_then(|ids| ids.get(rank)).map(|s| (e, *s)))
                .collect()
        };
        for (entity, series) in entities {
            // An unreadable series (a corrupt block, reported by the store)
            // leaves that entity without references; the rest go on.
            let Ok(rollups) = self.store.rollups(series, from_ms, to_ms, Resolution::Hour) else {
                continue;
            };
            for r in rollups {
                let v = match r.first {
                    Value::Int(v) => v,
                    Value::Float(v) => v as i64,
                };
                f(entity, r.start_ms, v);
            }
        }
        Ok(())
    }
}
