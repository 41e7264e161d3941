//! The series catalog: `series.log`, the only place a series' identity
//! (job, entity, metric, kind) is written. Ids are dense and assigned in
//! file order: the n-th series entry is series n.
//!
//! One record per `series_batch` call: `uvar entries`, then entries of
//! `u8 tag` and `1 (job) | uvar len, name`, `2 (metric) | uvar len, name` or
//! `0 (series) | u8 kind | uvar job_no | uvar metric_no | uvar entity`, where
//! names are numbered in order of definition. About 10 bytes per series.
//!
//! Records are appended with a checksum each and never rewritten. A torn
//! tail (a crash mid-write) is truncated on open with one log line; it can
//! only hold series that no durable sample used yet, because a record is
//! written before its id is handed out and fsynced before any WAL fsync.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::codec::{self, Reader, RecordsEnd};
use crate::error::IoContext;
use crate::{Error, Result, SeriesId, SeriesInfo, SeriesKey, ValueKind};

const MAGIC: &[u8; 8] = b"TRWLSER\0";
const TAG_SERIES: u8 = 0;
const TAG_JOB: u8 = 1;
const TAG_METRIC: u8 = 2;

/// What the store keeps in memory per series: 24 bytes, so 2M series cost
/// under 50 MB plus the key map.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SeriesMeta {
    pub job: u32,
    pub metric: u32,
    pub entity: u64,
    pub kind: ValueKind,
}

impl SeriesMeta {
    /// Series of one class share a compressed column in blocks: same job,
    /// same metric, same kind, hence similar value distributions.
    pub fn class(&self) -> u64 {
        (u64::from(self.job) << 32 | u64::from(self.metric)) << 1
            | (self.kind == ValueKind::Float) as u64
    }
}

#[derive(Debug)]
pub(crate) struct Catalog {
    path: PathBuf,
    file: Arc<File>,
    jobs: Vec<String>,
    job_ids: HashMap<String, u32>,
    metrics: Vec<String>,
    metric_ids: HashMap<String, u32>,
    by_key: HashMap<(u32, u32, u64), u64>,
    pub series: Vec<SeriesMeta>,
    /// Written since the last fsync.
    pub dirty: bool,
}

fn intern(names: &mut Vec<String>, ids: &mut HashMap<String, u32>, name: &str) -> u32 {
    if let Some(&id) = ids.get(name) {
        return id;
    }
    let id = names.len() as u32;
    names.push(name.to_owned());
    ids.insert(name.to_owned(), id);
    id
}

fn kind_byte(kind: ValueKind) -> u8 {
    match kind {
        ValueKind::Int => 0,
        ValueKind::Float => 1,
    }
}

impl Catalog {
    #[deny(clippy::unwrap_used, clippy::indexing_slicing)]
    /// Opens (or, unless `read_only`, creates) the catalog. Read-only, a
    /// torn tail is skipped in memory instead of truncated.
    pub fn open(dir: &Path, read_only: bool) -> Result<Self> {
        let path = dir.join("series.log");
        let mut file = OpenOptions::new()
            .read(true)
            .append(!read_only)
            .create(!read_only)
            .open(&path)
            .io("opening", &path)?;
        let bytes = std::fs::read(&path).io("reading", &path)?;
        let mut cat = Self {
            path: path.clone(),
            file: Arc::new(file.try_clone().io("opening", &path)?),
            jobs: Vec::new(),
            job_ids: HashMap::new(),
            metrics: Vec::new(),
            metric_ids: HashMap::new(),
            by_key: HashMap::new(),
            series: Vec::new(),
            dirty: false,
        };
        if bytes.is_empty() && read_only {
            return Ok(cat);
        }
        if bytes.is_empty() {
            file.write_all(&codec::header(MAGIC)).io("writing", &path)?;
            file.sync_all().io("fsync", &path)?;
            return Ok(cat);
        }
        codec::check_header(&bytes, MAGIC, &path)?;
        let (records, valid, end) = codec::split_records(codec::after_header(&bytes));
        let records: Vec<&[u8]> = records;
        let mut valid = valid;
        for (k, payload) in records.iter().enumerate() {
            if cat.apply(payload).is_none() {
                // A checksummed record that does not decode: keep what came
                // before, as for a torn tail.
                valid = records.iter().take(k).map(|r| 8 + r.len()).sum();
                break;
            }
        }
        if (end != RecordsEnd::Clean || 12 + valid < bytes.len()) && read_only {
            tracing::warn!(
                file = %path.display(),
                kept_series = cat.series.len(),
                skipped_bytes = bytes.len() - 12 - valid,
                "a torn tail of the series catalog is skipped (read-only: the file is left as it is)"
            );
        } else if end != RecordsEnd::Clean || 12 + valid < bytes.len() {
            let keep = 12 + valid as u64;
            tracing::warn!(
                file = %path.display(),
                kept_series = cat.series.len(),
                dropped_bytes = bytes.len() as u64 - keep,
                "truncated a torn tail of the series catalog"
            );
            file.set_len(keep).io("truncating", &path)?;
            file.sync_all().io("fsync", &path)?;
        }
        Ok(cat)
    }

    fn insert(&mut self, kind: ValueKind, job: &str, entity: u64, metric: &str) -> u64 {
        let job = intern(&mut self.jobs, &mut self.job_ids, job);
        let metric = intern(&mut self.metrics, &mut self.metric_ids, metric);
        let id = self.series.len() as u64;
        self.series.push(SeriesMeta {
            job,
            metric,
            entity,
            kind,
        });
        self.by_key.insert((job, metric, entity), id);
        id
    }

    /// The id of an existing series, checking its kind.
    pub fn lookup(&self, key: &SeriesKey<'_>, kind: ValueKind) -> Result<Option<SeriesId>> {
        let (Some(&job), Some(&metric)) =
            (self.job_ids.get(key.job), self.metric_ids.get(key.metric))
        else {
            return Ok(None);
        };
        let Some(&id) = self.by_key.get(&(job, metric, key.entity)) else {
            return Ok(None);
        };
        let existing = self.series[id as usize].kind;
        if existing != kind {
            return Err(Error::KindMismatch {
                job: key.job.to_owned(),
                entity: key.entity,
                metric: key.metric.to_owned(),
                existing,
                requested: kind,
            });
        }
        Ok(Some(SeriesId(id)))
    }

    /// Gets or creates each series; new ones are written as one record.
    pub fn get_or_create(&mut self, keys: &[(SeriesKey<'_>, ValueKind)]) -> Result<Vec<SeriesId>> {
        let mut out = Vec::with_capacity(keys.len());
        let mut payload = Vec::new();
        let mut entries = 0u64;
        for (key, kind) in keys {
            if let Some(id) = self.lookup(key, *kind)? {
                out.push(id);
                continue;
            }
            for (tag, name, names) in [
                (TAG_JOB, key.job, &self.job_ids),
                (TAG_METRIC, key.metric, &self.metric_ids),
            ] {
                if !names.contains_key(name) {
                    payload.push(tag);
                    codec::put_uvar(&mut payload, name.len() as u64);
                    payload.extend_from_slice(name.as_bytes());
                    entries += 1;
                }
            }
            let id = self.insert(*kind, key.job, key.entity, key.metric);
            let meta = self.series[id as usize];
            payload.push(TAG_SERIES);
            payload.push(kind_byte(*kind));
            codec::put_uvar(&mut payload, u64::from(meta.job));
            codec::put_uvar(&mut payload, u64::from(meta.metric));
            codec::put_uvar(&mut payload, key.entity);
            entries += 1;
            out.push(SeriesId(id));
        }
        if entries > 0 {
            let mut record = Vec::new();
            codec::put_record_with(&mut record, |b| {
                codec::put_uvar(b, entries);
                b.extend_from_slice(&payload);
            });
            (&*self.file).write_all(&record).io("writing", &self.path)?;
            self.dirty = true;
        }
        Ok(out)
    }

    pub fn file(&self) -> (Arc<File>, &Path) {
        (self.file.clone(), &self.path)
    }

    pub fn job_id(&self, job: &str) -> Option<u32> {
        self.job_ids.get(job).copied()
    }

    pub fn job_name(&self, id: u32) -> &str {
        &self.jobs[id as usize]
    }

    pub fn metric_name(&self, id: u32) -> &str {
        &self.metrics[id as usize]
    }

    pub fn info(&self, id: u64) -> SeriesInfo {
        let m = self.series[id as usize];
        SeriesInfo {
            id: SeriesId(id),
            entity: m.entity,
            metric: self.metrics[m.metric as usize].clone(),
            kind: m.kind,
        }
    }

    /// `job/entity/metric` of a series, for messages; `id N (not in the
    /// catalog)` for an id it does not hold.
    pub fn name(&self, id: u64) -> String {
        match self.series.get(id as usize) {
            Some(m) => format!(
                "{}/{}/{}",
                self.job_name(m.job),
                m.entity,
                self.metric_name(m.metric)
            ),
            None => format!("id {id} (not in the catalog)"),
        }
    }

    pub fn file_len(&self) -> u64 {
        self.file.metadata().map(|m| m.len()).unwrap_or(0)
    }

    /// Heap bytes of the catalog's tables, roughly.
    pub fn memory_bytes(&self) -> u64 {
        (self.series.capacity() * std::mem::size_of::<SeriesMeta>() + self.by_key.capacity() * 32)
            as u64
    }
}

impl Catalog {
    /// Applies one record; `None` (and nothing applied) if it is malformed.
    fn apply(&mut self, payload: &[u8]) -> Option<()> {
        let mut r = Reader::new(payload);
        let n = r.uvar()?;
        let (jobs, metrics, series) = (self.jobs.len(), self.metrics.len(), self.series.len());
        let ok = (|| {
            for _ in 0..n {
                match r.u8()? {
                    TAG_JOB => {
                        let name = r.str()?;
                        intern(&mut self.jobs, &mut self.job_ids, name);
                    }
                    TAG_METRIC => {
                        let name = r.str()?;
                        intern(&mut self.metrics, &mut self.metric_ids, name);
                    }
                    TAG_SERIES => {
                        let kind = match r.u8()? {
                            0 => ValueKind::Int,
                            1 => ValueKind::Float,
                            _ => return None,
                        };
                        let job = u32::try_from(r.uvar()?).ok()?;
                        let metric = u32::try_from(r.uvar()?).ok()?;
                        let entity = r.uvar()?;
                        let (job, metric) = (
                            self.jobs.get(job as usize)?.clone(),
                            self.metrics.get(metric as usize)?.clone(),
                        );
                        self.insert(kind, &job, entity, &metric);
                    }
                    _ => return None,
                }
            }
            r.is_empty().then_some(())
        })();
        if ok.is_none() {
            for name in self.jobs.drain(jobs..) {
                self.job_ids.remove(&name);
            }
            for name in self.metrics.drain(metrics..) {
                self.metric_ids.remove(&name);
            }
            for m in self.series.drain(series..) {
                self.by_key.remove(&(m.job, m.metric, m.entity));
            }
        }
        ok
    }
}
