//! The OpenAPI 3.1 description of the API, served at `/api/openapi.json`.
//!
//! Assembled, not written: every answer's schema comes from its type in
//! [`crate::answers`] (through [`Schema`], with the job's member names), and
//! this module only lays out the paths — parameters, which schema each
//! status answers with — for the job's [`JobInfo`] (its path segment, key,
//! metrics, flag). Tests check that every route the router serves is
//! described here, and that every answer the router sends validates
//! against the schema the document gives for it.

use serde_json::{json, Map, Value};

use crate::answers::{key_schema, of, reference, Object};
use crate::{
    Entity, ErrorBody, JobInfo, KeyPage, Mover, RankedEntry, Sample, Schema, Series, Stats,
    TopAnswer, TrackOutcome,
};

fn error_response() -> Value {
    json!({"description": "error", "content": {"application/json": {"schema": reference::<ErrorBody>()}}})
}

/// A 200 with `schema`, and the errors `errors` with [`ErrorBody`].
fn ok(description: &str, schema: Value, errors: &[u16]) -> Value {
    let mut responses = Map::new();
    responses.insert(
        "200".into(),
        json!({"description": description, "content": {"application/json": {"schema": schema}}}),
    );
    for code in errors {
        responses.insert(code.to_string(), error_response());
    }
    Value::Object(responses)
}

fn key_param(info: &JobInfo) -> Value {
    json!({"name": info.key_name, "in": "path", "required": true, "schema": key_schema(info)})
}

fn query(name: &str, description: &str, schema: Value) -> Value {
    json!({"name": name, "in": "query", "required": false, "description": description, "schema": schema})
}

fn range_params() -> Vec<Value> {
    let instant =
        json!({"oneOf": [{"type": "integer"}, {"type": "string", "format": "date-time"}]});
    vec![
        query(
            "from",
            "start, unix ms or RFC 3339 (default: to − 1 h)",
            instant.clone(),
        ),
        query("to", "end, unix ms or RFC 3339 (default: now)", instant),
        query(
            "step",
            "bucket width, e.g. 5m or milliseconds; averages per bucket",
            json!({"type": "string"}),
        ),
    ]
}

/// The schemas of every answer, for the document's `components`.
fn components(info: &JobInfo) -> Map<String, Value> {
    let mut schemas = Map::new();
    let mut add = |name: &str, schema: Value| schemas.insert(name.to_owned(), schema);
    add(JobInfo::NAME, JobInfo::schema(info));
    add(Entity::NAME, Entity::schema(info));
    add(RankedEntry::NAME, RankedEntry::schema(info));
    add(Mover::NAME, Mover::schema(info));
    add(TopAnswer::NAME, TopAnswer::schema(info));
    add(Stats::NAME, Stats::schema(info));
    add(Sample::NAME, Sample::schema(info));
    add(Series::NAME, Series::schema(info));
    add(KeyPage::NAME, KeyPage::schema(info));
    add(TrackOutcome::NAME, TrackOutcome::schema(info));
    add(ErrorBody::NAME, ErrorBody::schema(info));
    schemas
}

/// The document for the job `info` describes.
pub fn document(info: &JobInfo) -> Value {
    let (job, metrics, rank_metric) = (&info.name, &info.metrics, &info.rank_metric);
    let (key, keys) = (info.key_name.as_str(), info.keys_name());
    let base = format!("/api/v1/{job}");
    let mut series_params = vec![key_param(info), {
        let mut m = query(
            "metric",
            "the series",
            json!({"type": "string", "enum": metrics}),
        );
        m["required"] = json!(true);
        m
    }];
    series_params.extend(range_params());
    let page_params = json!([
        query(
            "after",
            "return the entities after this one (ids in the order keys were first seen)",
            key_schema(info)
        ),
        query(
            "limit",
            "page size",
            json!({"type": "integer", "minimum": 1, "maximum": 10000})
        )
    ]);
    let bearer = json!([{"bearer": []}]);
    let mut paths = Map::new();
    paths.insert(base.clone(), json!({
        "get": {"summary": "The job: its key, label, metrics, ranked metric, average and flag names",
                "responses": ok("the job", reference::<JobInfo>(), &[])}
    }));
    paths.insert(format!("{base}/{{{key}}}"), json!({
        "get": {"summary": "Latest values, rank and flag of a tracked entity",
                "parameters": [key_param(info)],
                "responses": ok("the entity", reference::<Entity>(), &[400, 404])},
        "delete": {"summary": "Stop tracking an entity", "parameters": [key_param(info)], "security": bearer,
                   "responses": {"204": {"description": "untracked"}, "400": error_response(), "401": error_response(), "404": error_response()}}
    }));
    paths.insert(
        format!("{base}/{{{key}}}/series"),
        json!({
            "get": {"summary": "Points of one metric of an entity", "parameters": series_params,
                    "responses": ok("the points", reference::<Series>(), &[400, 404])}
        }),
    );
    let track_body =
        Object::default().required(&keys, json!({"type": "array", "items": key_schema(info)}));
    paths.insert(format!("{base}/track"), json!({
        "post": {"summary": "Start tracking entities (durable)", "security": bearer,
                 "requestBody": {"required": true, "content": {"application/json": {"schema": Value::from(track_body)}}},
                 "responses": ok("what changed", reference::<TrackOutcome>(), &[400, 401, 413])}
    }));
    paths.insert(
        format!("{base}/stats"),
        json!({
            "get": {"summary": "Job-wide figures: tracked, average, polls/s, lag, whether the schedule is held (behindSchedule, neededPerSecond, achievedPerSecond, effectiveIntervalMs), the flag's count",
                    "responses": ok("figures", reference::<Stats>(), &[])}
        }),
    );
    paths.insert(format!("{base}/top"), json!({
        "get": {"summary": format!("Leaderboard by {rank_metric}, or top movers over 1 h / 24 h"),
                "parameters": [query("by", "order", json!({"type": "string", "enum": [rank_metric, "gain1h", "gain24h", "loss1h", "loss24h"]})),
                               query("limit", "entries", json!({"type": "integer", "minimum": 1, "maximum": 1000}))],
                "responses": ok("entries", reference::<TopAnswer>(), &[400])}
    }));
    if let Some(flag) = &info.flag {
        paths.insert(format!("{base}/{flag}"), json!({
            "get": {"summary": format!("Entities whose {flag} answer is yes, in id order, paginated"), "parameters": page_params,
                    "responses": ok("a page", reference::<KeyPage>(), &[400])}
        }));
    }
    paths.insert(
        format!("{base}/invalid"),
        json!({
            "get": {"summary": "Entities the target reported as not found", "parameters": page_params,
                    "responses": ok("a page", reference::<KeyPage>(), &[400])}
        }),
    );
    paths.insert(format!("{base}/average/series"), json!({
        "get": {"summary": format!("History of the average {rank_metric}"), "parameters": range_params(),
                "responses": ok("the points", reference::<Series>(), &[400])}
    }));
    paths.insert("/metrics".into(), json!({
        "get": {"summary": "Prometheus text exposition", "responses": {"200": {"description": "metrics", "content": {"text/plain": {}}}}}
    }));
    let health = Object::default().required("status", of("string"));
    paths.insert(
        "/healthz".into(),
        json!({
            "get": {"summary": "Liveness", "responses": ok("ok", health.into(), &[])}
        }),
    );
    paths.insert("/api/v1/events".into(), json!({
        "get": {"summary": "Live statistics as server-sent events",
                "description": "One `stats` event per sampling interval (1 s by default), starting with the latest sample; `data` is a `Sample`: the stats plus `t` (unix ms) and `seq`. A client that stops reading is dropped; at most a configured number of subscribers at once.",
                "responses": {
                    "200": {"description": "an endless event stream", "content": {"text/event-stream": {}}},
                    "503": {"description": "too many subscribers, or shutting down", "content": {"application/json": {"schema": reference::<ErrorBody>()}}}
                }}
    }));
    let history = Object::default()
        .required("intervalMs", of("integer"))
        .required(
            "samples",
            json!({"type": "array", "items": reference::<Sample>()}),
        );
    paths.insert(format!("{base}/health/history"), json!({
        "get": {"summary": "The recent samples of the live statistics (15 minutes by default), oldest first",
                "responses": ok("the samples", history.into(), &[])}
    }));
    paths.insert(
        "/api/openapi.json".into(),
        json!({
            "get": {"summary": "This document", "responses": ok("OpenAPI 3.1", of("object"), &[])}
        }),
    );
    json!({
        "openapi": "3.1.0",
        "info": {"title": "trawler", "version": env!("CARGO_PKG_VERSION"),
                 "description": format!("Live views and series of the job {job:?}.")},
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": components(info)
        }
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use axum::body::Body;
    use axum::http::Request;
    use serde_json::{json, Number, Value};
    use tower::ServiceExt;

    use super::*;
    use crate::{
        ApiError, Backend, EntityRef, Figures, Named, Points, SeriesQuery, TopBy, TopEntries,
    };

    #[test]
    fn every_route_is_described() {
        let doc = document(&crate::tests::influencers());
        let paths = doc["paths"].as_object().unwrap();
        for route in [
            "/api/v1/influencers",
            "/api/v1/influencers/{pk}",
            "/api/v1/influencers/{pk}/series",
            "/api/v1/influencers/track",
            "/api/v1/influencers/stats",
            "/api/v1/influencers/top",
            "/api/v1/influencers/suspicious",
            "/api/v1/influencers/invalid",
            "/api/v1/influencers/average/series",
            "/api/v1/influencers/health/history",
            "/api/v1/events",
            "/metrics",
            "/healthz",
            "/api/openapi.json",
        ] {
            assert!(paths.contains_key(route), "{route} is not in the document");
        }
        let source = include_str!("routes.rs");
        let routed = source.matches(".route(").count();
        assert_eq!(
            routed,
            paths.len(),
            "a route was added without documenting it"
        );
    }

    /// A job of the other shape: string keys, no label, no flag, a float.
    fn packages() -> JobInfo {
        JobInfo {
            name: "packages".into(),
            key_name: "name".into(),
            string_keys: true,
            label_name: None,
            metrics: vec![
                "downloads".into(),
                "score".into(),
                "downloadsPerStar".into(),
            ],
            rank_metric: "downloads".into(),
            average: "averageDownloads".into(),
            flag: None,
        }
    }

    /// A read model answering fixed sample values for ids 1..=3 (1 is
    /// tracked), every optional member filled in for a job with a flag and
    /// left out for one without.
    struct Fixed {
        info: JobInfo,
    }

    impl Fixed {
        fn entity_ref(&self, id: u64) -> EntityRef {
            EntityRef {
                key: self.key_json(id),
                label: (id == 1).then(|| format!("entity-{id}")),
            }
        }

        fn full(&self) -> bool {
            self.info.flag.is_some()
        }

        fn points() -> Points {
            vec![(1_000, 1.5), (2_000, 2.0)]
        }
    }

    impl Backend for Fixed {
        fn info(&self) -> &JobInfo {
            &self.info
        }
        fn key(&self, text: &str) -> Result<Option<u64>, ApiError> {
            if self.info.string_keys {
                return Ok(text.strip_prefix('k').and_then(|n| n.parse().ok()));
            }
            text.parse()
                .map(|id| (id <= 3).then_some(id))
                .map_err(|_| ApiError::bad_request("bad_key", "not a number"))
        }
        fn key_json(&self, id: u64) -> Value {
            if self.info.string_keys {
                format!("k{id}").into()
            } else {
                id.into()
            }
        }
        fn entity(&self, id: u64) -> Result<Option<Entity>, ApiError> {
            if id != 1 {
                return Ok(None);
            }
            let values = self.info.metrics.iter().enumerate().map(|(i, m)| {
                let value = match i {
                    0 => Some(Number::from(10_400)),
                    1 => Number::from_f64(0.25),
                    _ => None,
                };
                (m.clone(), value)
            });
            Ok(Some(Entity {
                entity: self.entity_ref(id),
                values: values.collect(),
                rank: Some(2),
                flag: self.full().then_some(false),
                flag_checked_at: self.full().then(|| "2026-11-22T07:00:00.000Z".into()),
                last_crawled_at: Some("2026-11-22T07:00:00.000Z".into()),
            }))
        }
        fn series(&self, id: u64, _: &str, _: SeriesQuery) -> Result<Option<Points>, ApiError> {
            Ok((id == 1).then(Self::points))
        }
        fn track(&self, keys: &[String]) -> Result<TrackOutcome, ApiError> {
            Ok(TrackOutcome {
                added: keys.len() as u64,
                already_tracked: 0,
                tracked: 3,
            })
        }
        fn untrack(&self, id: u64) -> Result<bool, ApiError> {
            Ok(id == 1)
        }
        fn stats(&self) -> Stats {
            let full = self.full();
            Stats {
                figures: Figures {
                    tracked_accounts: 3,
                    crawled_accounts: 2,
                    average_covers: Some(2),
                    polls_per_second: 10.5,
                    lag_p50_ms: Some(3.5),
                    lag_p99_ms: full.then_some(40.0),
                    polls: 100,
                    interval_ms: 10_000,
                    needed_per_second: 0.3,
                    achieved_per_second: 0.3,
                    effective_interval_ms: 10_000.0,
                    bytes_on_disk: full.then_some(4_096),
                    bytes_per_sample: full.then_some(1.5),
                    nodes: full.then_some(2),
                    shards_held: full.then_some(128),
                    ..Figures::default()
                },
                average: Some(30_200.0),
                flagged: 1,
                sweep_progress: full.then_some(0.5),
            }
        }
        fn invalid(&self, after: Option<u64>, limit: usize) -> Vec<u64> {
            (1..=3)
                .filter(|id| after.is_none_or(|a| *id > a))
                .take(limit)
                .collect()
        }
        fn render_metrics(&self, _: &mut String) {}
        fn top(&self, by: TopBy, _: usize) -> TopEntries {
            match by {
                TopBy::Ranked => TopEntries::Ranked(vec![RankedEntry {
                    entity: self.entity_ref(2),
                    value: 50_000,
                    rank: 1,
                }]),
                _ => TopEntries::Movers(vec![Mover {
                    entity: self.entity_ref(1),
                    gain: -12,
                }]),
            }
        }
        fn flagged(&self, after: Option<u64>, limit: usize) -> Vec<u64> {
            self.invalid(after, limit)
        }
        fn average_series(&self, _: SeriesQuery) -> Result<Points, ApiError> {
            Ok(Self::points())
        }
    }

    /// Checks `value` against `schema` as far as the document uses JSON
    /// Schema: `$ref`, `oneOf`, `type`, `enum`, `required`, `properties`,
    /// `items`. Stricter than JSON Schema in one way: a member an object
    /// schema does not declare is an error, so an answer cannot grow a
    /// member the document does not describe.
    fn check(doc: &Value, schema: &Value, value: &Value, at: &str) -> Result<(), String> {
        if let Some(target) = schema.get("$ref").and_then(Value::as_str) {
            let name = target.trim_start_matches("#/components/schemas/");
            let resolved = &doc["components"]["schemas"][name];
            if resolved.is_null() {
                return Err(format!("{at}: {target} is not in the document"));
            }
            return check(doc, resolved, value, at);
        }
        if let Some(options) = schema.get("oneOf").and_then(Value::as_array) {
            let fits = options
                .iter()
                .filter(|o| check(doc, o, value, at).is_ok())
                .count();
            if fits != 1 {
                return Err(format!("{at}: {value} fits {fits} of {options:?}"));
            }
        }
        if let Some(ty) = schema.get("type") {
            let types: Vec<&str> = match ty {
                Value::Array(types) => types.iter().filter_map(Value::as_str).collect(),
                other => other.as_str().into_iter().collect(),
            };
            let is = |t: &str| match t {
                "integer" => value.is_i64() || value.is_u64(),
                "number" => value.is_number(),
                "string" => value.is_string(),
                "boolean" => value.is_boolean(),
                "null" => value.is_null(),
                "object" => value.is_object(),
                "array" => value.is_array(),
                _ => false,
            };
            if !types.iter().any(|t| is(t)) {
                return Err(format!("{at}: {value} is not of type {ty}"));
            }
        }
        if let Some(allowed) = schema.get("enum").and_then(Value::as_array) {
            if !allowed.contains(value) {
                return Err(format!("{at}: {value} is not one of {allowed:?}"));
            }
        }
        if let Value::Object(members) = value {
            for name in schema["required"].as_array().into_iter().flatten() {
                let name = name.as_str().unwrap_or_default();
                if !members.contains_key(name) {
                    return Err(format!("{at}: the required member {name:?} is missing"));
                }
            }
            if let Some(properties) = schema.get("properties").and_then(Value::as_object) {
                for (name, member) in members {
                    let Some(property) = properties.get(name) else {
                        return Err(format!("{at}: the member {name:?} is not described"));
                    };
                    check(doc, property, member, &format!("{at}.{name}"))?;
                }
            }
        }
        if let (Value::Array(items), Some(item)) = (value, schema.get("items")) {
            for (i, v) in items.iter().enumerate() {
                check(doc, item, v, &format!("{at}[{i}]"))?;
            }
        }
        Ok(())
    }

    /// Sends every route a request through the real router and checks each
    /// answer against the schema the document gives for its path, method
    /// and status.
    async fn answers_match_the_document(info: JobInfo) {
        let doc = document(&info);
        let api = crate::ApiConfig::default()
            .build(Arc::new(Fixed { info: info.clone() }))
            .unwrap();
        let base = format!("/api/v1/{}", info.name);
        let key_path = format!("{base}/{{{}}}", info.key_name);
        let (known, unknown, malformed) = if info.string_keys {
            ("k1", "k9", None)
        } else {
            ("1", "9", Some("abc"))
        };
        let track = format!(r#"{{"{}":[{}]}}"#, info.keys_name(), json!(known));
        let metric = &info.metrics[0];
        let mut cases: Vec<(&str, String, String, &str, u16)> = vec![
            ("get", base.clone(), base.clone(), "", 200),
            ("get", key_path.clone(), format!("{base}/{known}"), "", 200),
            (
                "get",
                key_path.clone(),
                format!("{base}/{unknown}"),
                "",
                404,
            ),
            (
                "get",
                format!("{key_path}/series"),
                format!("{base}/{known}/series?metric={metric}&step=1s"),
                "",
                200,
            ),
            (
                "get",
                format!("{key_path}/series"),
                format!("{base}/{known}/series"),
                "",
                400,
            ),
            (
                "post",
                format!("{base}/track"),
                format!("{base}/track"),
                &track,
                200,
            ),
            (
                "post",
                format!("{base}/track"),
                format!("{base}/track"),
                "[]",
                400,
            ),
            (
                "delete",
                key_path.clone(),
                format!("{base}/{known}"),
                "",
                204,
            ),
            (
                "get",
                format!("{base}/stats"),
                format!("{base}/stats"),
                "",
                200,
            ),
            ("get", format!("{base}/top"), format!("{base}/top"), "", 200),
            (
                "get",
                format!("{base}/top"),
                format!("{base}/top?by=loss24h"),
                "",
                200,
            ),
            (
                "get",
                format!("{base}/top"),
                format!("{base}/top?by=size"),
                "",
                400,
            ),
            (
                "get",
                format!("{base}/invalid"),
                format!("{base}/invalid?limit=2"),
                "",
                200,
            ),
            (
                "get",
                format!("{base}/invalid"),
                format!("{base}/invalid"),
                "",
                200,
            ),
            (
                "get",
                format!("{base}/average/series"),
                format!("{base}/average/series"),
                "",
                200,
            ),
            (
                "get",
                format!("{base}/health/history"),
                format!("{base}/health/history"),
                "",
                200,
            ),
            ("get", "/healthz".into(), "/healthz".into(), "", 200),
            (
                "get",
                "/api/openapi.json".into(),
                "/api/openapi.json".into(),
                "",
                200,
            ),
        ];
        if let Some(flag) = &info.flag {
            let path = format!("{base}/{flag}");
            cases.push(("get", path.clone(), format!("{path}?limit=1"), "", 200));
        }
        if let Some(malformed) = malformed {
            cases.push((
                "get",
                key_path.clone(),
                format!("{base}/{malformed}"),
                "",
                400,
            ));
        }
        for (method, template, uri, body, status) in cases {
            let request = Request::builder()
                .method(method.to_uppercase().as_str())
                .uri(&uri)
                .body(Body::from(body.to_owned()))
                .unwrap();
            let answer = api.router.clone().oneshot(request).await.unwrap();
            assert_eq!(answer.status().as_u16(), status, "{method} {uri}");
            let described = &doc["paths"][&template][method]["responses"][status.to_string()];
            assert!(
                described.is_object(),
                "{method} {template} {status} is not described"
            );
            let bytes = axum::body::to_bytes(answer.into_body(), usize::MAX)
                .await
                .unwrap();
            let schema = &described["content"]["application/json"]["schema"];
            if schema.is_null() {
                assert!(bytes.is_empty(), "{method} {uri} answered a body");
                continue;
            }
            let value: Value = serde_json::from_slice(&bytes).unwrap();
            check(&doc, schema, &value, &format!("{method} {uri}")).unwrap();
        }
        // The health history is empty until the sampler runs: check a
        // sample on its own.
        let sample = crate::Sample {
            t: 1_700_000_000_000,
            seq: 1,
            stats: Fixed { info: info.clone() }.stats(),
        };
        let value = serde_json::to_value(Named::new(&info, &sample)).unwrap();
        check(&doc, &reference::<Sample>(), &value, "sample").unwrap();
    }

    #[tokio::test]
    async fn the_flagship_jobs_answers_match_the_document() {
        answers_match_the_document(crate::tests::influencers()).await;
    }

    #[tokio::test]
    async fn a_job_with_string_keys_and_no_flag_matches_the_document() {
        answers_match_the_document(packages()).await;
    }

    /// The member names are the job's, exactly as before the answers were
    /// typed: a client written against the old answers reads the new ones.
    #[test]
    fn job_named_members_keep_their_names() {
        let info = crate::tests::influencers();
        let fixed = Fixed { info: info.clone() };
        let entity = serde_json::to_value(Named::new(&info, &fixed.entity(1).unwrap().unwrap()));
        assert_eq!(
            entity.unwrap(),
            json!({"pk": 1, "username": "entity-1", "followerCount": 10_400, "rank": 2,
                   "suspicious": false, "suspiciousCheckedAt": "2026-11-22T07:00:00.000Z",
                   "lastCrawledAt": "2026-11-22T07:00:00.000Z"})
        );
        let stats = serde_json::to_value(Named::new(&info, &fixed.stats())).unwrap();
        assert_eq!(stats["averageFollowerCount"], 30_200.0);
        assert_eq!(stats["suspiciousCount"], 1);
        assert_eq!(stats["lastSuspiciousSweepProgress"], 0.5);
        let packages = packages();
        let stats = Fixed {
            info: packages.clone(),
        }
        .stats();
        let stats = serde_json::to_value(Named::new(&packages, &stats)).unwrap();
        assert!(stats.get("nodes").is_none(), "{stats}");
        assert!(stats["bytesOnDisk"].is_null(), "{stats}");
    }
}
