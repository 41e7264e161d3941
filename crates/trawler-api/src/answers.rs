//! The API's answers as types, each with its JSON schema.
//!
//! Every JSON answer is one of these types, and the OpenAPI document
//! (`/api/openapi.json`) is assembled from their [`Schema`]s. A test sends
//! every answer through the router and checks it against the document, so
//! the document cannot describe one shape while a handler sends another.
//!
//! Some member names belong to the job, not to the API: the key (`pk`), the
//! label (`username`), the metrics (`followerCount`), the flag
//! (`suspicious`, `suspiciousCheckedAt`, `suspiciousCount`,
//! `lastSuspiciousSweepProgress`) and the average (`averageFollowerCount`).
//! Answers carrying such members hold only the values ([`JobShaped`]) and
//! are written with the job's names by [`Named`]; their schemas are built
//! from the same names ([`JobInfo`]). Members with fixed names are plain
//! fields, camelCase through serde.
//!
//! Why not `schemars` or `utoipa`: both derive a schema from a type at
//! compile time, and half of these member names are only known once the
//! job file is read. A schema is a dozen lines of `json!` next to its type.
//!
//! ```
//! use trawler_api::{EntityRef, JobInfo, Mover, Named};
//!
//! let info = JobInfo {
//!     name: "influencers".into(),
//!     key_name: "pk".into(),
//!     string_keys: false,
//!     label_name: Some("username".into()),
//!     metrics: vec!["followerCount".into()],
//!     rank_metric: "followerCount".into(),
//!     average: "averageFollowerCount".into(),
//!     flag: None,
//! };
//! let mover = Mover {
//!     entity: EntityRef { key: 7.into(), label: Some("seven".into()) },
//!     gain: 12,
//! };
//! let json = serde_json::to_string(&Named::new(&info, &mover)).unwrap();
//! assert_eq!(json, r#"{"pk":7,"username":"seven","gain":12}"#);
//! ```

use serde::ser::{SerializeMap, Serializer};
use serde::Serialize;
use serde_json::{json, Map, Number, Value};

use crate::Points;

/// The JSON schema of an answer, for one job.
pub trait Schema {
    /// Its name among the document's `components/schemas`.
    const NAME: &'static str;
    /// Its schema, with the member names of the job `info`.
    fn schema(info: &JobInfo) -> Value;
}

/// An answer some of whose member names are the job's: it is written
/// through [`Named`].
pub trait JobShaped {
    /// Writes `self` with the member names of `info`.
    fn serialize_named<S: Serializer>(&self, info: &JobInfo, out: S) -> Result<S::Ok, S::Error>;
}

/// A [`JobShaped`] answer with the job's names: what a handler sends.
#[derive(Debug, Clone, Copy)]
pub struct Named<'a, T> {
    info: &'a JobInfo,
    value: &'a T,
}

impl<'a, T> Named<'a, T> {
    /// `value`, to be written with the names of `info`.
    pub fn new(info: &'a JobInfo, value: &'a T) -> Self {
        Self { info, value }
    }
}

impl<T: JobShaped> Serialize for Named<'_, T> {
    fn serialize<S: Serializer>(&self, out: S) -> Result<S::Ok, S::Error> {
        self.value.serialize_named(self.info, out)
    }
}

/// The `$ref` to `T`'s schema among the document's components.
pub fn reference<T: Schema>() -> Value {
    json!({"$ref": format!("#/components/schemas/{}", T::NAME)})
}

/// The job's names, from its job file. Written into the dashboard page and
/// the OpenAPI document, and served at `GET /api/v1/{job}` so any client can
/// learn the shape of the answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct JobInfo {
    /// The job's name: the path segment of `/api/v1/{job}/…`.
    pub name: String,
    /// What an entity's key is called in answers (`pk`); lists of keys are
    /// called by its plural (`pks`).
    pub key_name: String,
    /// Whether keys are strings (else unsigned integers).
    pub string_keys: bool,
    /// What an entity's label is called (`username`), when it has one.
    pub label_name: Option<String>,
    /// The metrics a series read may name.
    pub metrics: Vec<String>,
    /// The metric entities are ranked by (`followerCount`).
    pub rank_metric: String,
    /// The name of the average of the ranked metric (`averageFollowerCount`).
    pub average: String,
    /// The enrichment's yes/no flag (`suspicious`), when the job has one:
    /// a member of each entity and a list at `/api/v1/{job}/{flag}`.
    pub flag: Option<String>,
}

/// The members named after the job's flag (see [`JobInfo::flag_names`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlagNames {
    /// The entity's answer (`suspicious`).
    pub flag: String,
    /// When the entity was last checked (`suspiciousCheckedAt`).
    pub checked_at: String,
    /// How many entities are flagged, in the stats (`suspiciousCount`).
    pub count: String,
    /// How far the current sweep is, in the stats
    /// (`lastSuspiciousSweepProgress`).
    pub sweep_progress: String,
}

impl JobInfo {
    /// The name of a list of keys: the key's name with an `s` (`pks`).
    pub fn keys_name(&self) -> String {
        format!("{}s", self.key_name)
    }

    /// The members named after the flag, when the job has one.
    pub fn flag_names(&self) -> Option<FlagNames> {
        let flag = self.flag.as_deref()?;
        let mut chars = flag.chars();
        let capital: String = chars
            .next()
            .map(|c| c.to_uppercase().chain(chars).collect())
            .unwrap_or_default();
        Some(FlagNames {
            flag: flag.to_owned(),
            checked_at: format!("{flag}CheckedAt"),
            count: format!("{flag}Count"),
            sweep_progress: format!("last{capital}SweepProgress"),
        })
    }
}

impl Schema for JobInfo {
    const NAME: &'static str = "JobInfo";
    fn schema(_: &JobInfo) -> Value {
        Object::default()
            .required("name", of("string"))
            .required("keyName", of("string"))
            .required("stringKeys", of("boolean"))
            .required("labelName", nullable("string"))
            .required("metrics", array(of("string")))
            .required("rankMetric", of("string"))
            .required("average", of("string"))
            .required("flag", nullable("string"))
            .into()
    }
}

/// Who an answer is about: the entity's key and label, the first members
/// of every answer naming an entity (`{"pk":…,"username":…}`).
#[derive(Debug, Clone, PartialEq)]
pub struct EntityRef {
    /// Its key: a number, or a string when the job's keys are strings.
    /// Written as the job's key name.
    pub key: Value,
    /// Its label, if known. Written as the job's label name (null when not
    /// known), and not at all when the job has no label.
    pub label: Option<String>,
}

impl EntityRef {
    fn serialize_into<M: SerializeMap>(&self, info: &JobInfo, map: &mut M) -> Result<(), M::Error> {
        map.serialize_entry(&info.key_name, &self.key)?;
        if let Some(label) = &info.label_name {
            map.serialize_entry(label, &self.label)?;
        }
        Ok(())
    }

    fn schema(info: &JobInfo) -> Object {
        let object = Object::default().required(&info.key_name, key_schema(info));
        match &info.label_name {
            Some(label) => object.required(label, nullable("string")),
            None => object,
        }
    }
}

/// `GET /api/v1/{job}/{key}`: the latest view of a tracked entity (nulls
/// until its first observation).
#[derive(Debug, Clone, PartialEq)]
pub struct Entity {
    /// Its key and label.
    pub entity: EntityRef,
    /// The latest value of each metric the live views hold, by name: the
    /// job's fields and the ratios of two integer fields (other derived
    /// metrics are series only). `None` (null) without a value.
    pub values: Vec<(String, Option<Number>)>,
    /// Its rank by the ranked metric (1 = largest).
    pub rank: Option<u64>,
    /// The flag's latest answer; written as the flag's name when the job
    /// has one.
    pub flag: Option<bool>,
    /// When that answer was given, RFC 3339; written as `{flag}CheckedAt`.
    pub flag_checked_at: Option<String>,
    /// The time of its latest observation, RFC 3339.
    pub last_crawled_at: Option<String>,
}

impl JobShaped for Entity {
    fn serialize_named<S: Serializer>(&self, info: &JobInfo, out: S) -> Result<S::Ok, S::Error> {
        let mut map = out.serialize_map(None)?;
        self.entity.serialize_into(info, &mut map)?;
        for (name, value) in &self.values {
            map.serialize_entry(name, value)?;
        }
        map.serialize_entry("rank", &self.rank)?;
        if let Some(names) = info.flag_names() {
            map.serialize_entry(&names.flag, &self.flag)?;
            map.serialize_entry(&names.checked_at, &self.flag_checked_at)?;
        }
        map.serialize_entry("lastCrawledAt", &self.last_crawled_at)?;
        map.end()
    }
}

impl Schema for Entity {
    const NAME: &'static str = "Entity";
    fn schema(info: &JobInfo) -> Value {
        let mut object = EntityRef::schema(info);
        // Not required: a derived metric other than a ratio of two integer
        // fields is a series only.
        for metric in &info.metrics {
            object = object.optional(metric, nullable("number"));
        }
        object = object.required("rank", nullable("integer"));
        if let Some(names) = info.flag_names() {
            object = object
                .required(&names.flag, nullable("boolean"))
                .required(&names.checked_at, time_or_null());
        }
        object.required("lastCrawledAt", time_or_null()).into()
    }
}

/// An entry of the leaderboard: an entity, its value of the ranked metric
/// (written as the metric's name) and its rank.
#[derive(Debug, Clone, PartialEq)]
pub struct RankedEntry {
    /// Its key and label.
    pub entity: EntityRef,
    /// Its value of the ranked metric.
    pub value: i64,
    /// Its rank (1 = largest); equal values share a rank.
    pub rank: u64,
}

impl JobShaped for RankedEntry {
    fn serialize_named<S: Serializer>(&self, info: &JobInfo, out: S) -> Result<S::Ok, S::Error> {
        let mut map = out.serialize_map(None)?;
        self.entity.serialize_into(info, &mut map)?;
        map.serialize_entry(&info.rank_metric, &self.value)?;
        map.serialize_entry("rank", &self.rank)?;
        map.end()
    }
}

impl Schema for RankedEntry {
    const NAME: &'static str = "RankedEntry";
    fn schema(info: &JobInfo) -> Value {
        EntityRef::schema(info)
            .required(&info.rank_metric, of("integer"))
            .required("rank", of("integer"))
            .into()
    }
}

/// An entry of the top movers: an entity and its gain of the ranked metric
/// over the window (negative for a loss).
#[derive(Debug, Clone, PartialEq)]
pub struct Mover {
    /// Its key and label.
    pub entity: EntityRef,
    /// Latest value minus the first value of the window's clock hour.
    pub gain: i64,
}

impl JobShaped for Mover {
    fn serialize_named<S: Serializer>(&self, info: &JobInfo, out: S) -> Result<S::Ok, S::Error> {
        let mut map = out.serialize_map(None)?;
        self.entity.serialize_into(info, &mut map)?;
        map.serialize_entry("gain", &self.gain)?;
        map.end()
    }
}

impl Schema for Mover {
    const NAME: &'static str = "Mover";
    fn schema(info: &JobInfo) -> Value {
        EntityRef::schema(info)
            .required("gain", of("integer"))
            .into()
    }
}

/// The entries of a top list: the leaderboard or the movers.
#[derive(Debug, Clone, PartialEq)]
pub enum TopEntries {
    /// By the ranked metric, largest first.
    Ranked(Vec<RankedEntry>),
    /// By gain or loss over a window, largest first.
    Movers(Vec<Mover>),
}

impl JobShaped for TopEntries {
    fn serialize_named<S: Serializer>(&self, info: &JobInfo, out: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Ranked(entries) => out.collect_seq(entries.iter().map(|e| Named::new(info, e))),
            Self::Movers(entries) => out.collect_seq(entries.iter().map(|e| Named::new(info, e))),
        }
    }
}

/// `GET /api/v1/{job}/top`: what the list is ordered by and its entries.
#[derive(Debug, Clone, PartialEq)]
pub struct TopAnswer {
    /// The order asked for: the ranked metric's name, or `gain1h`,
    /// `gain24h`, `loss1h`, `loss24h`.
    pub by: String,
    /// The entries, first first.
    pub entries: TopEntries,
}

impl JobShaped for TopAnswer {
    fn serialize_named<S: Serializer>(&self, info: &JobInfo, out: S) -> Result<S::Ok, S::Error> {
        let mut map = out.serialize_map(Some(2))?;
        map.serialize_entry("by", &self.by)?;
        map.serialize_entry("entries", &Named::new(info, &self.entries))?;
        map.end()
    }
}

impl Schema for TopAnswer {
    const NAME: &'static str = "Top";
    fn schema(info: &JobInfo) -> Value {
        let by = json!({"type": "string",
            "enum": [&info.rank_metric, "gain1h", "gain24h", "loss1h", "loss24h"]});
        let entry = json!({"oneOf": [reference::<RankedEntry>(), reference::<Mover>()]});
        Object::default()
            .required("by", by)
            .required("entries", array(entry))
            .into()
    }
}

/// `GET /api/v1/{job}/stats`: job-wide figures.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Stats {
    /// The figures whose names are fixed.
    pub figures: Figures,
    /// The average of the ranked metric over the entities that have a
    /// value; written as the average's name (`averageFollowerCount`).
    pub average: Option<f64>,
    /// Entities whose flag is yes; written as `{flag}Count` when the job
    /// has a flag.
    pub flagged: u64,
    /// How far the enrichment's current sweep is (0 to 1), null when it is
    /// not running; written as `last{Flag}SweepProgress`.
    pub sweep_progress: Option<f64>,
}

/// The stats' members with fixed names. The embedded node and a cluster
/// node fill them from their own sources (crawl, store, heartbeats).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Figures {
    /// Entities tracked.
    pub tracked_accounts: u64,
    /// Entities with at least one observation in the live views.
    pub crawled_accounts: u64,
    /// Entities the average is over.
    pub average_covers: Option<u64>,
    /// Entities the target reported as not found.
    pub invalid_accounts: u64,
    /// Successful polls per second, recently.
    pub polls_per_second: f64,
    /// Median lag of a poll behind its slot, milliseconds.
    pub lag_p50_ms: Option<f64>,
    /// 99th percentile of that lag.
    pub lag_p99_ms: Option<f64>,
    /// Successful polls.
    pub polls: u64,
    /// Failed polls, every kind.
    pub errors: u64,
    /// Slots that ended without a value.
    pub gaps: u64,
    /// Slots not polled at all.
    pub missed_slots: u64,
    /// Whether the crawl falls behind its schedule.
    pub behind_schedule: bool,
    /// The job's interval, milliseconds.
    pub interval_ms: u64,
    /// Polls per second the schedule needs.
    pub needed_per_second: f64,
    /// Polls per second achieved.
    pub achieved_per_second: f64,
    /// The interval each entity actually gets, milliseconds.
    pub effective_interval_ms: f64,
    /// Samples in storage.
    pub samples_stored: u64,
    /// Bytes on disk; null where storage is not local (cluster mode).
    pub bytes_on_disk: Option<u64>,
    /// Bytes per stored sample; null without samples or local storage.
    pub bytes_per_sample: Option<f64>,
    /// Live nodes of the cluster; absent in the embedded mode.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nodes: Option<u64>,
    /// Shards this node holds; absent in the embedded mode.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shards_held: Option<u64>,
}

impl JobShaped for Stats {
    fn serialize_named<S: Serializer>(&self, info: &JobInfo, out: S) -> Result<S::Ok, S::Error> {
        let mut named = vec![(info.average.clone(), json!(self.average))];
        if let Some(names) = info.flag_names() {
            named.push((names.count, json!(self.flagged)));
            named.push((names.sweep_progress, json!(self.sweep_progress)));
        }
        #[derive(Serialize)]
        struct Wire<'a> {
            #[serde(flatten)]
            figures: &'a Figures,
            #[serde(flatten)]
            named: Members,
        }
        Wire {
            figures: &self.figures,
            named: Members(named),
        }
        .serialize(out)
    }
}

impl Schema for Stats {
    const NAME: &'static str = "Stats";
    fn schema(info: &JobInfo) -> Value {
        Stats::object(info).into()
    }
}

impl Stats {
    fn object(info: &JobInfo) -> Object {
        let mut object = Object::default();
        for name in [
            "trackedAccounts",
            "crawledAccounts",
            "invalidAccounts",
            "polls",
            "errors",
            "gaps",
            "missedSlots",
            "intervalMs",
            "samplesStored",
        ] {
            object = object.required(name, of("integer"));
        }
        for name in [
            "pollsPerSecond",
            "neededPerSecond",
            "achievedPerSecond",
            "effectiveIntervalMs",
        ] {
            object = object.required(name, of("number"));
        }
        object = object
            .required("averageCovers", nullable("integer"))
            .required("lagP50Ms", nullable("number"))
            .required("lagP99Ms", nullable("number"))
            .required("behindSchedule", of("boolean"))
            .required("bytesOnDisk", nullable("integer"))
            .required("bytesPerSample", nullable("number"))
            .optional("nodes", of("integer"))
            .optional("shardsHeld", of("integer"))
            .required(&info.average, nullable("number"));
        if let Some(names) = info.flag_names() {
            object = object
                .required(&names.count, of("integer"))
                .required(&names.sweep_progress, nullable("number"));
        }
        object
    }
}

/// One sample of the live statistics: the stats, their time and their
/// sequence number. The `data` of each event of `GET /api/v1/events`, and
/// an entry of `GET /api/v1/{job}/health/history`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// When it was taken, unix ms.
    pub t: i64,
    /// 1 for the first sample of the process, one more for each next one.
    pub seq: u64,
    /// The stats.
    pub stats: Stats,
}

impl JobShaped for Sample {
    fn serialize_named<S: Serializer>(&self, info: &JobInfo, out: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Wire<'a> {
            t: i64,
            seq: u64,
            #[serde(flatten)]
            stats: Named<'a, Stats>,
        }
        Wire {
            t: self.t,
            seq: self.seq,
            stats: Named::new(info, &self.stats),
        }
        .serialize(out)
    }
}

impl Schema for Sample {
    const NAME: &'static str = "Sample";
    fn schema(info: &JobInfo) -> Value {
        Stats::object(info)
            .required("t", of("integer"))
            .required("seq", of("integer"))
            .into()
    }
}

/// `GET /api/v1/{job}/{key}/series` and `GET /api/v1/{job}/average/series`:
/// points of one series over a range.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// The entity's key (written as the key's name); `None` for the
    /// average, which is no entity's.
    pub key: Option<Value>,
    /// The metric, or the average's name.
    pub metric: String,
    /// Start of the range, unix ms.
    pub from: i64,
    /// End of the range, unix ms.
    pub to: i64,
    /// Bucket width, ms; `None` for raw points.
    pub step: Option<i64>,
    /// `[[unix_ms, value], …]`, oldest first.
    pub points: Points,
}

impl JobShaped for Series {
    fn serialize_named<S: Serializer>(&self, info: &JobInfo, out: S) -> Result<S::Ok, S::Error> {
        let mut map = out.serialize_map(None)?;
        if let Some(key) = &self.key {
            map.serialize_entry(&info.key_name, key)?;
        }
        map.serialize_entry("metric", &self.metric)?;
        map.serialize_entry("from", &self.from)?;
        map.serialize_entry("to", &self.to)?;
        map.serialize_entry("step", &self.step)?;
        map.serialize_entry("points", &self.points)?;
        map.end()
    }
}

impl Schema for Series {
    const NAME: &'static str = "Series";
    fn schema(info: &JobInfo) -> Value {
        let point =
            json!({"type": "array", "items": {"type": "number"}, "minItems": 2, "maxItems": 2});
        Object::default()
            .optional(&info.key_name, key_schema(info))
            .required("metric", of("string"))
            .required("from", of("integer"))
            .required("to", of("integer"))
            .required("step", nullable("integer"))
            .required("points", array(point))
            .into()
    }
}

/// A page of keys (`GET /api/v1/{job}/invalid`, `…/{flag}`):
/// `{"pks": […], "next": …}`, with the job's key name in the plural.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyPage {
    /// The keys, in id order.
    pub keys: Vec<Value>,
    /// The `after` of the next page when this one is full, else `None`.
    pub next: Option<Value>,
}

impl JobShaped for KeyPage {
    fn serialize_named<S: Serializer>(&self, info: &JobInfo, out: S) -> Result<S::Ok, S::Error> {
        let mut map = out.serialize_map(Some(2))?;
        map.serialize_entry(&info.keys_name(), &self.keys)?;
        map.serialize_entry("next", &self.next)?;
        map.end()
    }
}

impl Schema for KeyPage {
    const NAME: &'static str = "KeyPage";
    fn schema(info: &JobInfo) -> Value {
        let mut next = key_schema(info);
        next["type"] = json!([next["type"], "null"]);
        Object::default()
            .required(&info.keys_name(), array(key_schema(info)))
            .required("next", next)
            .into()
    }
}

/// `POST /api/v1/{job}/track`: what a tracking change did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TrackOutcome {
    /// Ids newly tracked.
    pub added: u64,
    /// Ids that were tracked already.
    pub already_tracked: u64,
    /// Ids tracked after the change.
    pub tracked: u64,
}

impl Schema for TrackOutcome {
    const NAME: &'static str = "TrackOutcome";
    fn schema(_: &JobInfo) -> Value {
        Object::default()
            .required("added", of("integer"))
            .required("alreadyTracked", of("integer"))
            .required("tracked", of("integer"))
            .into()
    }
}

/// Every error: `{"error":{"code":"…","message":"…"}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: ErrorDetail,
}

/// The inside of an [`ErrorBody`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ErrorDetail {
    /// Stable machine-readable code, e.g. `bad_pk`.
    pub code: String,
    /// What was wrong and what the client can do.
    pub message: String,
}

impl ErrorBody {
    /// An error with `code` and `message`.
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            error: ErrorDetail {
                code: code.into(),
                message: message.into(),
            },
        }
    }
}

impl Schema for ErrorBody {
    const NAME: &'static str = "Error";
    fn schema(_: &JobInfo) -> Value {
        let detail = Object::default()
            .required("code", of("string"))
            .required("message", of("string"));
        Object::default().required("error", detail.into()).into()
    }
}

/// The schema of a key: an unsigned integer, or a string of the characters
/// a key may hold.
pub(crate) fn key_schema(info: &JobInfo) -> Value {
    if info.string_keys {
        json!({"type": "string", "pattern": "^[A-Za-z0-9._~:@+!-]{1,256}$"})
    } else {
        json!({"type": "integer", "minimum": 0})
    }
}

/// Members named at run time, written in order into a map.
struct Members(Vec<(String, Value)>);

impl Serialize for Members {
    fn serialize<S: Serializer>(&self, out: S) -> Result<S::Ok, S::Error> {
        out.collect_map(self.0.iter().map(|(k, v)| (k, v)))
    }
}

/// An object schema under construction: its properties, in order, and
/// which of them every answer has.
#[derive(Default)]
pub(crate) struct Object {
    properties: Map<String, Value>,
    required: Vec<String>,
}

impl Object {
    /// A member every answer has.
    pub(crate) fn required(mut self, name: &str, schema: Value) -> Self {
        self.required.push(name.to_owned());
        self.optional(name, schema)
    }

    /// A member some answers have.
    pub(crate) fn optional(mut self, name: &str, schema: Value) -> Self {
        self.properties.insert(name.to_owned(), schema);
        self
    }
}

impl From<Object> for Value {
    fn from(o: Object) -> Value {
        json!({"type": "object", "required": o.required, "properties": o.properties})
    }
}

pub(crate) fn of(ty: &str) -> Value {
    json!({ "type": ty })
}

fn nullable(ty: &str) -> Value {
    json!({ "type": [ty, "null"] })
}

fn time_or_null() -> Value {
    json!({"type": ["string", "null"], "format": "date-time"})
}

fn array(items: Value) -> Value {
    json!({"type": "array", "items": items})
}
