//! The node's series as Prometheus sees them, and remote write into the
//! embedded store.
//!
//! Three sources answer PromQL through [`trawler_promql::Queryable`], and
//! [`NodeProm`] queries them as one:
//!
//! * a poll job's series ([`crawl_queryable`]): every stored or derived
//!   metric of every tracked entity as `followerCount{job="influencers",
//!   pk="1000001", username="user_1000001"}` (the job file names the key
//!   and label), and the average as `averageFollowerCount{job="…"}`. They
//!   are read through the node's storage [`Reader`](crate::storage::Reader),
//!   so they answer the same from the embedded store and from
//!   VictoriaMetrics in cluster mode;
//! * a stream job's series ([`stream_queryable`]): every stored series and
//!   formula of every group, as `ctr{job="expo", experiment="e1",
//!   variant="b"}`, stamped with their windows' starts;
//! * what was remote-written to the node ([`RemoteSeries`]), kept in the
//!   embedded store under the store job `prometheus` with the same WAL,
//!   durability and compression as the node's own series.
//!
//! A remote-written series may not take the labels of one of the node's
//! own (`job` = this job and `__name__` = one of its metrics): two series
//! with one label set would make every query over them fail.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};

use trawler_api::prom::{PromBackend, WriteError, WriteOutcome};
use trawler_api::streams::StreamBackend;
use trawler_api::{Backend, SeriesQuery};
use trawler_promql::remote::MetricMetadata;
use trawler_promql::{
    Labels, MatchOp, Matcher, Queryable, SelectLimits, Series, StorageError, METRIC_NAME,
};
use trawler_store::{SeriesId, SeriesKey, Store, Value, ValueKind};

use crate::backend::{Host, NodeBackend};

/// The store job remote-written series are kept under.
pub const REMOTE_JOB: &str = "prometheus";

/// Counts series and samples against a select's limits.
struct Budget {
    limits: SelectLimits,
    series: usize,
    samples: usize,
}

impl Budget {
    fn new(limits: SelectLimits) -> Self {
        Self {
            limits,
            series: 0,
            samples: 0,
        }
    }

    fn take(&mut self, samples: usize) -> Result<(), StorageError> {
        if self.series == self.limits.max_series {
            return Err(StorageError::TooManySeries {
                limit: self.limits.max_series,
            });
        }
        self.series += 1;
        self.samples += samples;
        if self.samples > self.limits.max_samples {
            return Err(StorageError::TooManySamples {
                limit: self.limits.max_samples,
            });
        }
        Ok(())
    }

    /// What is left for the next source of a union.
    fn rest(&self) -> SelectLimits {
        SelectLimits {
            max_series: self.limits.max_series - self.series,
            max_samples: self.limits.max_samples.saturating_sub(self.samples),
        }
    }
}

/// The matchers on label `name` (all of them must hold).
fn on<'a>(matchers: &'a [Matcher], name: &'a str) -> impl Iterator<Item = &'a Matcher> + 'a {
    matchers.iter().filter(move |m| m.name == name)
}

/// Whether every matcher on a label other than `known` matches the empty
/// string (the label is absent from the source's series).
fn others_match_empty(matchers: &[Matcher], known: &[&str]) -> bool {
    matchers
        .iter()
        .filter(|m| !known.contains(&m.name.as_str()))
        .all(Matcher::matches_empty)
}

/// The one value an `=` matcher on `name` asks for, if any.
fn equal_value<'a>(matchers: &'a [Matcher], name: &str) -> Option<&'a str> {
    matchers
        .iter()
        .find(|m| m.name == name && m.op == MatchOp::Equal)
        .map(|m| m.value.as_str())
}

/// Sorted, unique label names and values from a list of label sets.
fn names_of(all: &[Labels]) -> Vec<String> {
    let mut names: Vec<String> = all
        .iter()
        .flat_map(|l| l.iter().map(|l| l.name.clone()))
        .collect();
    names.sort();
    names.dedup();
    names
}

fn values_of(all: &[Labels], name: &str) -> Vec<String> {
    let mut values: Vec<String> = all
        .iter()
        .map(|l| l.get(name).to_owned())
        .filter(|v| !v.is_empty())
        .collect();
    values.sort();
    values.dedup();
    values
}

/// The label sets of the series matching any of `selectors` (at least
/// one) with samples in the range: how a source without an index of its
/// own answers a label lookup with `match[]`.
fn lookup(
    q: &dyn Queryable,
    selectors: &[Vec<Matcher>],
    start_ms: i64,
    end_ms: i64,
) -> Result<Vec<Labels>, StorageError> {
    let mut out = Vec::new();
    for m in selectors {
        out.extend(q.series(m, start_ms, end_ms, SelectLimits::default())?);
    }
    Ok(out)
}

// ------------------------------------------------------------------ poll jobs

/// A poll job's series over its read model.
pub fn crawl_queryable<H: Host>(backend: Arc<NodeBackend<H>>) -> Arc<dyn Queryable> {
    Arc::new(CrawlSeries { backend })
}

struct CrawlSeries<H: Host> {
    backend: Arc<NodeBackend<H>>,
}

impl<H: Host> CrawlSeries<H> {
    fn job(&self) -> &str {
        &self.backend.info().name
    }

    /// Labels of entity `id` (its metrics' without `__name__`).
    fn labels(&self, id: u64) -> Labels {
        let info = self.backend.info();
        let key = self.backend.names().key_text(id);
        let mut pairs = vec![("job", info.name.clone()), (info.key_name.as_str(), key)];
        if let (Some(name), Some(label)) = (&info.label_name, self.backend.names().label_for(id)) {
            pairs.push((name.as_str(), label));
        }
        Labels::new(pairs)
    }

    /// The entity metrics whose name matches, and whether the average's
    /// does.
    fn metrics(&self, matchers: &[Matcher]) -> (Vec<String>, bool) {
        let info = self.backend.info();
        let ok = |name: &str| on(matchers, METRIC_NAME).all(|m| m.matches(name));
        let metrics = info.metrics.iter().filter(|m| ok(m)).cloned().collect();
        (metrics, ok(&info.average))
    }

    /// The tracked ids a selector can match: one for `pk="…"`, else all.
    fn ids(&self, matchers: &[Matcher]) -> Result<Vec<u64>, StorageError> {
        let info = self.backend.info();
        if let Some(key) = equal_value(matchers, &info.key_name) {
            return Ok(match self.backend.key(key) {
                Ok(Some(id)) if self.backend.host().is_tracked(id) => vec![id],
                _ => Vec::new(),
            });
        }
        Ok(self.backend.host().tracked_ids().iter().collect())
    }
}

fn unavailable(e: trawler_api::ApiError) -> StorageError {
    StorageError::Unavailable(e.to_string())
}

impl<H: Host> CrawlSeries<H> {
    /// When no selector constrains an entity's key or label (only the
    /// metric name and the job), those of them that can match this job at
    /// all (`[]` when none can): a label lookup is then answered from the
    /// tracked set. An empty list of selectors selects everything. `None`
    /// when a selector names an entity.
    fn entity_free<'a>(&self, selectors: &'a [Vec<Matcher>]) -> Option<Vec<&'a [Matcher]>> {
        if selectors.is_empty() {
            return Some(vec![&[]]);
        }
        let info = self.backend.info();
        let mut out = Vec::new();
        for s in selectors {
            if s.iter().any(|m| m.name != METRIC_NAME && m.name != "job") {
                return None;
            }
            let job_ok = on(s, "job").all(|m| m.matches(&info.name));
            let name_ok = info
                .metrics
                .iter()
                .chain([&info.average])
                .any(|n| on(s, METRIC_NAME).all(|m| m.matches(n)));
            if job_ok && name_ok {
                out.push(s.as_slice());
            }
        }
        Some(out)
    }
}

impl<H: Host> CrawlSeries<H> {
    /// Whether one of `selectors` matches an entity metric (not only the
    /// average, which has no key).
    fn entities_match(&self, selectors: &[&[Matcher]]) -> bool {
        let info = self.backend.info();
        selectors.iter().any(|s| {
            info.metrics
                .iter()
                .any(|n| on(s, METRIC_NAME).all(|m| m.matches(n)))
        })
    }
}

impl<H: Host> Queryable for CrawlSeries<H> {
    fn select(
        &self,
        matchers: &[Matcher],
        start_ms: i64,
        end_ms: i64,
        limits: SelectLimits,
    ) -> Result<Vec<Series>, StorageError> {
        let info = self.backend.info();
        let job = self.job();
        if !on(matchers, "job").all(|m| m.matches(job)) {
            return Ok(Vec::new());
        }
        let mut known = vec![METRIC_NAME, "job", info.key_name.as_str()];
        if let Some(l) = &info.label_name {
            known.push(l.as_str());
        }
        if !others_match_empty(matchers, &known) {
            return Ok(Vec::new());
        }
        let q = SeriesQuery {
            from_ms: start_ms,
            to_ms: end_ms,
            step_ms: None,
        };
        let (metrics, average) = self.metrics(matchers);
        let mut budget = Budget::new(limits);
        let mut out = Vec::new();
        if average {
            let labels = Labels::new([(METRIC_NAME, info.average.as_str()), ("job", job)]);
            if labels.matches(matchers) {
                let points = self.backend.average_series(q).map_err(unavailable)?;
                if !points.is_empty() {
                    budget.take(points.len())?;
                    out.push(Series {
                        labels,
                        samples: points,
                    });
                }
            }
        }
        if metrics.is_empty() {
            return Ok(out);
        }
        for id in self.ids(matchers)? {
            let entity = self.labels(id);
            for metric in &metrics {
                let mut labels = entity.clone();
                labels.set(METRIC_NAME, metric);
                if !labels.matches(matchers) {
                    continue;
                }
                let Some(points) = self.backend.series(id, metric, q).map_err(unavailable)? else {
                    continue;
                };
                if points.is_empty() {
                    continue;
                }
                budget.take(points.len())?;
                out.push(Series {
                    labels,
                    samples: points,
                });
            }
        }
        Ok(out)
    }

    /// Without `match[]` (or with selectors naming only metrics and the
    /// job, as Grafana's `label_values(followerCount, pk)` sends), every
    /// tracked entity's labels whatever the time range: the entities are
    /// known without reading a million series.
    fn label_names(
        &self,
        selectors: &[Vec<Matcher>],
        start_ms: i64,
        end_ms: i64,
    ) -> Result<Vec<String>, StorageError> {
        if let Some(selectors) = self.entity_free(selectors) {
            if selectors.is_empty() {
                return Ok(Vec::new());
            }
            let info = self.backend.info();
            let mut names = vec![METRIC_NAME.to_owned(), "job".to_owned()];
            if self.entities_match(&selectors) {
                names.push(info.key_name.clone());
                names.extend(info.label_name.clone());
            }
            names.sort();
            return Ok(names);
        }
        let all = lookup(self, selectors, start_ms, end_ms)?;
        Ok(names_of(&all))
    }

    fn label_values(
        &self,
        name: &str,
        selectors: &[Vec<Matcher>],
        start_ms: i64,
        end_ms: i64,
    ) -> Result<Vec<String>, StorageError> {
        let Some(selectors) = self.entity_free(selectors) else {
            let all = lookup(self, selectors, start_ms, end_ms)?;
            return Ok(values_of(&all, name));
        };
        if selectors.is_empty() {
            return Ok(Vec::new());
        }
        let info = self.backend.info();
        let names = self.backend.names();
        let mut values: Vec<String> = if name == METRIC_NAME {
            let mut v = info.metrics.clone();
            v.push(info.average.clone());
            v.retain(|m| {
                selectors
                    .iter()
                    .any(|s| on(s, METRIC_NAME).all(|x| x.matches(m)))
            });
            v
        } else if name == "job" {
            vec![info.name.clone()]
        } else if !self.entities_match(&selectors) {
            Vec::new()
        } else if name == info.key_name {
            let ids = self.backend.host().tracked_ids();
            ids.iter().map(|id| names.key_text(id)).collect()
        } else if info.label_name.as_deref() == Some(name) {
            let ids = self.backend.host().tracked_ids();
            ids.iter().filter_map(|id| names.label_for(id)).collect()
        } else {
            Vec::new()
        };
        values.sort();
        values.dedup();
        Ok(values)
    }
}

// ------------------------------------------------------------------ stream jobs

/// A stream job's stored series and formulas over its read model.
pub fn stream_queryable<S: StreamBackend>(backend: Arc<S>) -> Arc<dyn Queryable> {
    Arc::new(StreamSeries { backend })
}

struct StreamSeries<S: StreamBackend> {
    backend: Arc<S>,
}

impl<S: StreamBackend> StreamSeries<S> {
    fn names(&self) -> Vec<String> {
        let info = self.backend.info();
        let mut names = info.series.clone();
        names.extend(info.formulas.iter().map(|f| f.name.clone()));
        names
    }

    fn labels(&self, name: &str, group: &(String, String)) -> Labels {
        let info = self.backend.info();
        Labels::new([
            (METRIC_NAME, name),
            ("job", info.name.as_str()),
            (info.key_label.as_str(), group.0.as_str()),
            (info.value_label.as_str(), group.1.as_str()),
        ])
    }

    fn all(&self) -> Vec<Labels> {
        let names = self.names();
        self.backend
            .groups()
            .iter()
            .flat_map(|g| names.iter().map(move |n| self.labels(n, g)))
            .collect()
    }
}

impl<S: StreamBackend> Queryable for StreamSeries<S> {
    fn select(
        &self,
        matchers: &[Matcher],
        start_ms: i64,
        end_ms: i64,
        limits: SelectLimits,
    ) -> Result<Vec<Series>, StorageError> {
        let info = self.backend.info();
        if info.topn.is_some() || !on(matchers, "job").all(|m| m.matches(&info.name)) {
            return Ok(Vec::new());
        }
        let known = [
            METRIC_NAME,
            "job",
            info.key_label.as_str(),
            info.value_label.as_str(),
        ];
        if !others_match_empty(matchers, &known) {
            return Ok(Vec::new());
        }
        let names: Vec<String> = self
            .names()
            .into_iter()
            .filter(|n| on(matchers, METRIC_NAME).all(|m| m.matches(n)))
            .collect();
        if names.is_empty() {
            return Ok(Vec::new());
        }
        let mut budget = Budget::new(limits);
        let mut out = Vec::new();
        for group in self.backend.groups() {
            let wanted: Vec<String> = names
                .iter()
                .filter(|n| self.labels(n, &group).matches(matchers))
                .cloned()
                .collect();
            if wanted.is_empty() {
                continue;
            }
            let Some(found) = self
                .backend
                .series((&group.0, &group.1), &wanted, start_ms, end_ms, false)
                .map_err(unavailable)?
            else {
                continue;
            };
            for np in found {
                if np.points.is_empty() {
                    continue;
                }
                budget.take(np.points.len())?;
                out.push(Series {
                    labels: self.labels(&np.name, &group),
                    samples: np.points,
                });
            }
        }
        Ok(out)
    }

    fn label_names(
        &self,
        selectors: &[Vec<Matcher>],
        start_ms: i64,
        end_ms: i64,
    ) -> Result<Vec<String>, StorageError> {
        let all = match selectors.is_empty() {
            true => self.all(),
            false => lookup(self, selectors, start_ms, end_ms)?,
        };
        Ok(names_of(&all))
    }

    fn label_values(
        &self,
        name: &str,
        selectors: &[Vec<Matcher>],
        start_ms: i64,
        end_ms: i64,
    ) -> Result<Vec<String>, StorageError> {
        let all = match selectors.is_empty() {
            true => self.all(),
            false => lookup(self, selectors, start_ms, end_ms)?,
        };
        Ok(values_of(&all, name))
    }
}

// ------------------------------------------------------------------ remote write

/// Series remote-written to this node, in the embedded store.
///
/// A series is the store series `(prometheus, 0, <its labels as a JSON
/// object>)`: the catalog keeps the labels, so the index below is rebuilt
/// from it at start-up, and the samples share the store's WAL (durable when
/// [`RemoteSeries::write`] returns), blocks and retention. The index keeps
/// every series' labels in memory (once) with a posting list per label
/// value, so a selector reads only the series its matchers can match.
pub struct RemoteSeries {
    store: Arc<Store>,
    index: RwLock<RemoteIndex>,
    metadata: Mutex<BTreeMap<String, MetricMetadata>>,
    metadata_file: PathBuf,
}

#[derive(Default)]
struct RemoteIndex {
    series: Vec<(Arc<Labels>, SeriesId)>,
    by_labels: HashMap<Arc<Labels>, u32>,
    /// label name → value → positions in `series`, ascending.
    postings: HashMap<String, HashMap<String, Vec<u32>>>,
}

impl RemoteIndex {
    fn insert(&mut self, labels: Labels, id: SeriesId) {
        let i = self.series.len() as u32;
        for l in labels.iter() {
            self.postings
                .entry(l.name.clone())
                .or_default()
                .entry(l.value.clone())
                .or_default()
                .push(i);
        }
        let labels = Arc::new(labels);
        self.by_labels.insert(labels.clone(), i);
        self.series.push((labels, id));
    }

    /// Positions of the series a selector may match, ascending: the
    /// intersection of the posting lists of its matchers that need their
    /// label (`=` a value, or a regex not matching the empty string: the
    /// union of the values it matches); every series when none does.
    fn candidates(&self, matchers: &[Matcher]) -> Vec<u32> {
        let mut lists: Vec<std::borrow::Cow<'_, [u32]>> = Vec::new();
        for m in matchers.iter().filter(|m| !m.matches_empty()) {
            let Some(values) = self.postings.get(&m.name) else {
                return Vec::new();
            };
            if m.op == MatchOp::Equal {
                match values.get(&m.value) {
                    Some(list) => lists.push(list.as_slice().into()),
                    None => return Vec::new(),
                }
            } else {
                let mut union: Vec<u32> = values
                    .iter()
                    .filter(|(v, _)| m.matches(v))
                    .flat_map(|(_, list)| list.iter().copied())
                    .collect();
                union.sort_unstable();
                lists.push(union.into());
            }
        }
        lists.sort_by_key(|l| l.len());
        let mut lists = lists.into_iter();
        let Some(first) = lists.next() else {
            return (0..self.series.len() as u32).collect();
        };
        let mut out = first.into_owned();
        for list in lists {
            out.retain(|p| list.binary_search(p).is_ok());
        }
        out
    }
}

/// A series' labels as its store metric name.
fn stored_name(labels: &Labels) -> String {
    let map: BTreeMap<&str, &str> = labels
        .iter()
        .map(|l| (l.name.as_str(), l.value.as_str()))
        .collect();
    serde_json::to_string(&map).expect("labels serialise")
}

impl RemoteSeries {
    /// The remote-written series of `store`; metadata is kept in
    /// `metadata_file` (JSON, rewritten when a sender changes it).
    pub fn open(store: Arc<Store>, metadata_file: PathBuf) -> crate::Result<Self> {
        let mut index = RemoteIndex::default();
        for info in store.list_series(REMOTE_JOB) {
            match serde_json::from_str::<BTreeMap<String, String>>(&info.metric) {
                Ok(map) => index.insert(Labels::new(map), info.id),
                Err(e) => {
                    tracing::warn!(series = info.id.0, error = %e, "a remote-written series' labels are unreadable; it is not queryable")
                }
            }
        }
        let metadata = match std::fs::read(&metadata_file) {
            Ok(bytes) => serde_json::from_slice::<Vec<(String, String, String, String)>>(&bytes)
                .map(|v| {
                    v.into_iter()
                        .map(|(family, kind, help, unit)| {
                            (
                                family.clone(),
                                MetricMetadata {
                                    kind,
                                    family,
                                    help,
                                    unit,
                                },
                            )
                        })
                        .collect()
                })
                .unwrap_or_else(|e| {
                    tracing::warn!(file = %metadata_file.display(), error = %e, "unreadable metadata file; starting without metadata");
                    BTreeMap::new()
                }),
            Err(_) => BTreeMap::new(),
        };
        tracing::info!(series = index.series.len(), "remote-written series indexed");
        Ok(Self {
            store,
            index: RwLock::new(index),
            metadata: Mutex::new(metadata),
            metadata_file,
        })
    }

    /// How many series were written.
    pub fn len(&self) -> usize {
        self.index.read().expect("remote index").series.len()
    }

    /// Whether none was.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Stores samples (durable when this returns, as the store's appends).
    pub fn write(&self, series: &[(Labels, Vec<(i64, f64)>)]) -> Result<WriteOutcome, WriteError> {
        let store_error = |e: trawler_store::Error| WriteError::Unavailable(format!("store: {e}"));
        let mut ids = Vec::with_capacity(series.len());
        let mut missing = Vec::new();
        {
            let index = self.index.read().expect("remote index");
            for (i, (labels, _)) in series.iter().enumerate() {
                match index.by_labels.get(labels) {
                    Some(&p) => ids.push(Some(index.series[p as usize].1)),
                    None => {
                        ids.push(None);
                        missing.push(i);
                    }
                }
            }
        }
        if !missing.is_empty() {
            let names: Vec<String> = missing.iter().map(|&i| stored_name(&series[i].0)).collect();
            let keys: Vec<(SeriesKey<'_>, ValueKind)> = names
                .iter()
                .map(|n| {
                    (
                        SeriesKey {
                            job: REMOTE_JOB,
                            entity: 0,
                            metric: n,
                        },
                        ValueKind::Float,
                    )
                })
                .collect();
            let created = self.store.series_batch(&keys).map_err(store_error)?;
            let mut index = self.index.write().expect("remote index");
            for (&i, id) in missing.iter().zip(created) {
                if !index.by_labels.contains_key(&series[i].0) {
                    index.insert(series[i].0.clone(), id);
                }
                ids[i] = Some(id);
            }
        }
        let samples: Vec<trawler_store::Sample> = series
            .iter()
            .zip(&ids)
            .flat_map(|((_, points), id)| {
                let id = id.expect("every series has an id");
                points.iter().map(move |&(t, v)| trawler_store::Sample {
                    series: id,
                    ts_ms: t,
                    value: Value::Float(v),
                })
            })
            .collect();
        let appended = self.store.append(&samples).map_err(store_error)?;
        Ok(WriteOutcome {
            samples: appended.accepted as u64,
            out_of_order: appended.stale as u64,
        })
    }

    /// Records metadata, persisting it when it changed.
    pub fn write_metadata(&self, metadata: Vec<MetricMetadata>) {
        let mut all = self.metadata.lock().expect("metadata lock");
        let mut changed = false;
        for m in metadata {
            if m.family.is_empty() {
                continue;
            }
            if all.get(&m.family) != Some(&m) {
                all.insert(m.family.clone(), m);
                changed = true;
            }
        }
        if changed {
            let rows: Vec<(&str, &str, &str, &str)> = all
                .values()
                .map(|m| {
                    (
                        m.family.as_str(),
                        m.kind.as_str(),
                        m.help.as_str(),
                        m.unit.as_str(),
                    )
                })
                .collect();
            let tmp = self.metadata_file.with_extension("tmp");
            let saved = serde_json::to_vec(&rows)
                .map_err(std::io::Error::other)
                .and_then(|bytes| std::fs::write(&tmp, bytes))
                .and_then(|()| std::fs::rename(&tmp, &self.metadata_file));
            if let Err(e) = saved {
                tracing::warn!(file = %self.metadata_file.display(), error = %e, "could not save the remote-write metadata");
            }
        }
    }

    /// Every family's metadata.
    pub fn metadata(&self) -> BTreeMap<String, Vec<MetricMetadata>> {
        self.metadata
            .lock()
            .expect("metadata lock")
            .iter()
            .map(|(k, v)| (k.clone(), vec![v.clone()]))
            .collect()
    }
}

impl Queryable for RemoteSeries {
    fn select(
        &self,
        matchers: &[Matcher],
        start_ms: i64,
        end_ms: i64,
        limits: SelectLimits,
    ) -> Result<Vec<Series>, StorageError> {
        let chosen: Vec<(Arc<Labels>, SeriesId)> = {
            let index = self.index.read().expect("remote index");
            index
                .candidates(matchers)
                .into_iter()
                .map(|i| &index.series[i as usize])
                .filter(|s| s.0.matches(matchers))
                .cloned()
                .collect()
        };
        // More matching series than the limit: refused before any is read
        // (a series without samples in the range would not count, but
        // reading them all to find out is what the limit prevents).
        if chosen.len() > limits.max_series {
            return Err(StorageError::TooManySeries {
                limit: limits.max_series,
            });
        }
        let mut budget = Budget::new(limits);
        let mut out = Vec::new();
        for (labels, id) in chosen {
            let points = self
                .store
                .range(id, start_ms, end_ms.saturating_add(1))
                .map_err(|e| StorageError::Unavailable(format!("store: {e}")))?;
            if points.is_empty() {
                continue;
            }
            budget.take(points.len())?;
            out.push(Series {
                labels: Arc::unwrap_or_clone(labels),
                samples: points.iter().map(|p| (p.ts_ms, p.value.as_f64())).collect(),
            });
        }
        Ok(out)
    }

    fn label_names(
        &self,
        selectors: &[Vec<Matcher>],
        start_ms: i64,
        end_ms: i64,
    ) -> Result<Vec<String>, StorageError> {
        if selectors.is_empty() {
            // From the postings, whatever the time range.
            let index = self.index.read().expect("remote index");
            let mut names: Vec<String> = index.postings.keys().cloned().collect();
            names.sort();
            return Ok(names);
        }
        let all = lookup(self, selectors, start_ms, end_ms)?;
        Ok(names_of(&all))
    }

    fn label_values(
        &self,
        name: &str,
        selectors: &[Vec<Matcher>],
        start_ms: i64,
        end_ms: i64,
    ) -> Result<Vec<String>, StorageError> {
        if selectors.is_empty() {
            let index = self.index.read().expect("remote index");
            let mut values: Vec<String> = index
                .postings
                .get(name)
                .map(|v| v.keys().cloned().collect())
                .unwrap_or_default();
            values.sort();
            return Ok(values);
        }
        let all = lookup(self, selectors, start_ms, end_ms)?;
        Ok(values_of(&all, name))
    }
}

// ------------------------------------------------------------------ the node's API

/// What the node answers the Prometheus API with: its job's series and
/// what was remote-written to it, queried as one.
pub struct NodeProm {
    sources: Vec<Arc<dyn Queryable>>,
    remote: Option<Arc<RemoteSeries>>,
    /// `(job, metric names)` of the node's own series.
    own: Vec<(String, Vec<String>)>,
}

impl NodeProm {
    /// Queries `job_series` (the job's, named `job` with `metrics`) and,
    /// when given, the remote-written series, which remote write then
    /// extends.
    pub fn new(
        job_series: Arc<dyn Queryable>,
        job: &str,
        metrics: Vec<String>,
        remote: Option<Arc<RemoteSeries>>,
    ) -> Self {
        let mut sources = vec![job_series];
        if let Some(r) = &remote {
            sources.push(r.clone() as Arc<dyn Queryable>);
        }
        Self {
            sources,
            remote,
            own: vec![(job.to_owned(), metrics)],
        }
    }
}

impl NodeProm {
    /// The Prometheus API of a poll job's node: its series, and `remote`.
    pub fn of_poll_job<H: Host>(
        backend: Arc<NodeBackend<H>>,
        remote: Option<Arc<RemoteSeries>>,
    ) -> Self {
        let info = backend.info().clone();
        let metrics = info
            .metrics
            .iter()
            .chain([&info.average])
            .cloned()
            .collect();
        Self::new(crawl_queryable(backend), &info.name, metrics, remote)
    }
}

impl Queryable for NodeProm {
    fn select(
        &self,
        matchers: &[Matcher],
        start_ms: i64,
        end_ms: i64,
        limits: SelectLimits,
    ) -> Result<Vec<Series>, StorageError> {
        let mut budget = Budget::new(limits);
        let mut out = Vec::new();
        for s in &self.sources {
            let found = s.select(matchers, start_ms, end_ms, budget.rest())?;
            for f in &found {
                budget.take(f.samples.len())?;
            }
            out.extend(found);
        }
        Ok(out)
    }

    fn label_names(
        &self,
        selectors: &[Vec<Matcher>],
        start_ms: i64,
        end_ms: i64,
    ) -> Result<Vec<String>, StorageError> {
        let mut names = Vec::new();
        for s in &self.sources {
            names.extend(s.label_names(selectors, start_ms, end_ms)?);
        }
        names.sort();
        names.dedup();
        Ok(names)
    }

    fn label_values(
        &self,
        name: &str,
        selectors: &[Vec<Matcher>],
        start_ms: i64,
        end_ms: i64,
    ) -> Result<Vec<String>, StorageError> {
        let mut values = Vec::new();
        for s in &self.sources {
            values.extend(s.label_values(name, selectors, start_ms, end_ms)?);
        }
        values.sort();
        values.dedup();
        Ok(values)
    }
}

impl PromBackend for NodeProm {
    fn queryable(&self) -> &dyn Queryable {
        self
    }

    fn write(&self, series: Vec<(Labels, Vec<(i64, f64)>)>) -> Result<WriteOutcome, WriteError> {
        let Some(remote) = &self.remote else {
            return Err(WriteError::Invalid(
                "this node stores no remote-written series: send remote write to a poll job's node in embedded mode, or in cluster mode to VictoriaMetrics' /api/v1/write"
                    .to_owned(),
            ));
        };
        for (labels, _) in &series {
            let (job, name) = (labels.get("job"), labels.get(METRIC_NAME));
            if let Some((own, _)) = self
                .own
                .iter()
                .find(|(j, metrics)| j == job && metrics.iter().any(|m| m == name))
            {
                return Err(WriteError::Invalid(format!(
                    "the series {name}{{job={own:?}}} is trawler's own (job {own:?} crawls it); relabel remote-written series to another job"
                )));
            }
        }
        remote.write(&series)
    }

    fn write_metadata(&self, metadata: Vec<MetricMetadata>) {
        if let Some(r) = &self.remote {
            r.write_metadata(metadata);
        }
    }

    fn metadata(&self) -> BTreeMap<String, Vec<MetricMetadata>> {
        self.remote
            .as_ref()
            .map(|r| r.metadata())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use trawler_promql::STALE_NAN_BITS;

    fn remote(dir: &std::path::Path) -> (Arc<Store>, RemoteSeries) {
        let store = Arc::new(
            trawler_store::StoreConfig::new(dir.join("store"))
                .open()
                .unwrap(),
        );
        let r = RemoteSeries::open(store.clone(), dir.join("metadata.json")).unwrap();
        (store, r)
    }

    #[test]
    fn remote_series_come_back_with_their_labels_and_stale_markers_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let up = Labels::new([("__name__", "up"), ("job", "api"), ("instance", "a:1")]);
        let other = Labels::new([("__name__", "rps"), ("job", "api")]);
        let stale = f64::from_bits(STALE_NAN_BITS);
        {
            let (store, r) = remote(dir.path());
            let out = r
                .write(&[
                    (up.clone(), vec![(1_000, 1.0), (2_000, stale)]),
                    (other.clone(), vec![(1_000, 5.5)]),
                ])
                .unwrap();
            assert_eq!(out.samples, 3);
            r.write_metadata(vec![MetricMetadata {
                kind: "gauge".into(),
                family: "up".into(),
                help: "Up.".into(),
                unit: String::new(),
            }]);
            drop(r);
            Arc::try_unwrap(store).ok().unwrap().close().unwrap();
        }
        let (_store, r) = remote(dir.path());
        assert_eq!(r.len(), 2);
        let m = [Matcher::new(METRIC_NAME, MatchOp::Equal, "up").unwrap()];
        let got = r.select(&m, 0, 10_000, SelectLimits::default()).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].labels, up);
        assert_eq!(got[0].samples[0], (1_000, 1.0));
        assert_eq!(got[0].samples[1].1.to_bits(), STALE_NAN_BITS);
        let m = [Matcher::new("job", MatchOp::Regex, "a.*").unwrap()];
        assert_eq!(
            r.select(&m, 0, 10_000, SelectLimits::default())
                .unwrap()
                .len(),
            2
        );
        let tight = SelectLimits {
            max_series: 1,
            max_samples: 100,
        };
        assert_eq!(
            r.select(&m, 0, 10_000, tight),
            Err(StorageError::TooManySeries { limit: 1 })
        );
        assert_eq!(r.metadata()["up"][0].kind, "gauge");
        assert_eq!(
            r.label_values("instance", &[], 0, 10_000).unwrap(),
            vec!["a:1".to_owned()]
        );
    }

    proptest::proptest! {
        /// The postings choose exactly the series a brute-force match does.
        #[test]
        fn the_index_selects_what_matching_every_series_selects(
            series in proptest::collection::vec(
                (0u8..3, proptest::option::of(0u8..4), proptest::option::of(0u8..2)),
                0..40,
            ),
            matchers in proptest::collection::vec((0u8..3, 0u8..4, 0u8..4), 1..4),
        ) {
            let mut index = RemoteIndex::default();
            let mut all = Vec::new();
            for (i, (name, a, b)) in series.into_iter().enumerate() {
                let mut pairs = vec![("__name__".to_owned(), format!("m{name}")), ("i".to_owned(), i.to_string())];
                pairs.extend(a.map(|a| ("a".to_owned(), format!("v{a}"))));
                pairs.extend(b.map(|b| ("b".to_owned(), format!("v{b}"))));
                let labels = Labels::new(pairs);
                if index.by_labels.contains_key(&labels) {
                    continue;
                }
                index.insert(labels.clone(), SeriesId(i as u64));
                all.push(labels);
            }
            let ms: Vec<Matcher> = matchers
                .into_iter()
                .map(|(label, op, v)| {
                    let name = ["__name__", "a", "b"][label as usize];
                    let value = if label == 0 { format!("m{v}") } else { format!("v{v}") };
                    let (op, value) = match op {
                        0 => (MatchOp::Equal, value),
                        1 => (MatchOp::NotEqual, value),
                        2 => (MatchOp::Regex, format!("{value}|v1|")),
                        _ => (MatchOp::NotRegex, value),
                    };
                    Matcher::new(name, op, &value).unwrap()
                })
                .collect();
            let chosen: Vec<&Labels> = index
                .candidates(&ms)
                .into_iter()
                .map(|i| &*index.series[i as usize].0)
                .filter(|l| l.matches(&ms))
                .collect();
            let expected: Vec<&Labels> = all.iter().filter(|l| l.matches(&ms)).collect();
            proptest::prop_assert_eq!(chosen, expected);
        }
    }

    #[test]
    fn a_remote_series_may_not_take_the_labels_of_the_nodes_own() {
        let dir = tempfile::tempdir().unwrap();
        let (_store, r) = remote(dir.path());
        let r = Arc::new(r);
        let prom = NodeProm::new(
            r.clone(),
            "influencers",
            vec!["followerCount".into()],
            Some(r.clone()),
        );
        let own = Labels::new([("__name__", "followerCount"), ("job", "influencers")]);
        assert!(matches!(
            prom.write(vec![(own, vec![(1, 1.0)])]),
            Err(WriteError::Invalid(m)) if m.contains("trawler's own")
        ));
        let fine = Labels::new([("__name__", "followerCount"), ("job", "elsewhere")]);
        assert_eq!(prom.write(vec![(fine, vec![(1, 1.0)])]).unwrap().samples, 1);
    }
}
