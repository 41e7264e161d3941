//! The OpenAPI 3.1 description of the API, served at `/api/openapi.json`.
//!
//! Built from the job's [`JobInfo`] (its path segment, key, label, metrics,
//! flag) so that the document names exactly what a client gets and may ask
//! for. A test checks that every
//! route the router serves is described here.

use serde_json::{json, Value};

use crate::JobInfo;

fn error_responses(codes: &[u16]) -> Value {
    let mut out = serde_json::Map::new();
    for code in codes {
        out.insert(
            code.to_string(),
            json!({"description": "error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}),
        );
    }
    Value::Object(out)
}

fn ok(description: &str, schema: Value, errors: &[u16]) -> Value {
    let mut responses = error_responses(errors);
    responses.as_object_mut().expect("object").insert(
        "200".into(),
        json!({"description": description, "content": {"application/json": {"schema": schema}}}),
    );
    responses
}

fn key_schema(info: &JobInfo) -> Value {
    if info.string_keys {
        json!({"type": "string", "pattern": "^[A-Za-z0-9._~:@+!-]{1,256}$"})
    } else {
        json!({"type": "integer", "minimum": 0})
    }
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

/// The document for the job `info` describes.
pub fn document(info: &JobInfo) -> Value {
    let (job, metrics, rank_metric) = (&info.name, &info.metrics, &info.rank_metric);
    let (key, keys) = (info.key_name.as_str(), info.keys_name());
    let base = format!("/api/v1/{job}");
    let points = json!({"type": "array", "items": {"type": "array", "items": {"type": "number"}, "minItems": 2, "maxItems": 2}});
    let series_schema = json!({"type": "object", "properties": {
        key: key_schema(info), "metric": {"type": "string"}, "from": {"type": "integer"},
        "to": {"type": "integer"}, "step": {"type": ["integer", "null"]}, "points": points}});
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
    let pks_page = json!({"type": "object", "properties": {
        &keys: {"type": "array", "items": key_schema(info)}, "next": key_schema(info)}});
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
    let mut paths = serde_json::Map::new();
    paths.insert(base.clone(), json!({
        "get": {"summary": "The job: its key, label, metrics, ranked metric, average and flag names",
                "responses": ok("the job", json!({"type": "object"}), &[])}
    }));
    paths.insert(format!("{base}/{{{key}}}"), json!({
        "get": {"summary": "Latest values, rank and flag of a tracked entity",
                "parameters": [key_param(info)],
                "responses": ok("the entity", json!({"$ref": "#/components/schemas/Entity"}), &[400, 404])},
        "delete": {"summary": "Stop tracking an entity", "parameters": [key_param(info)], "security": bearer,
                   "responses": {"204": {"description": "untracked"}, "400": error_responses(&[400])["400"], "401": error_responses(&[401])["401"], "404": error_responses(&[404])["404"]}}
    }));
    paths.insert(
        format!("{base}/{{{key}}}/series"),
        json!({
            "get": {"summary": "Points of one metric of an entity", "parameters": series_params,
                    "responses": ok("the points", series_schema, &[400, 404])}
        }),
    );
    paths.insert(format!("{base}/track"), json!({
        "post": {"summary": "Start tracking entities (durable)", "security": bearer,
                 "requestBody": {"required": true, "content": {"application/json": {"schema": {"type": "object", "required": [&keys], "properties": {&keys: {"type": "array", "items": key_schema(info)}}}}}},
                 "responses": ok("what changed", json!({"type": "object", "properties": {"added": {"type": "integer"}, "alreadyTracked": {"type": "integer"}, "tracked": {"type": "integer"}}}), &[400, 401, 413])}
    }));
    paths.insert(
        format!("{base}/stats"),
        json!({
            "get": {"summary": "Job-wide figures: tracked, average, polls/s, lag, whether the schedule is held (behindSchedule, neededPerSecond, achievedPerSecond, effectiveIntervalMs), suspicious count",
                    "responses": ok("figures", json!({"type": "object"}), &[])}
        }),
    );
    paths.insert(format!("{base}/top"), json!({
        "get": {"summary": format!("Leaderboard by {rank_metric}, or top movers over 1 h / 24 h"),
                "parameters": [query("by", "order", json!({"type": "string", "enum": [rank_metric, "gain1h", "gain24h", "loss1h", "loss24h"]})),
                               query("limit", "entries", json!({"type": "integer", "minimum": 1, "maximum": 1000}))],
                "responses": ok("entries", json!({"type": "object", "properties": {"by": {"type": "string"}, "entries": {"type": "array", "items": {"type": "object"}}}}), &[400])}
    }));
    if let Some(flag) = &info.flag {
        paths.insert(format!("{base}/{flag}"), json!({
            "get": {"summary": format!("Entities whose {flag} answer is yes, in id order, paginated"), "parameters": page_params,
                    "responses": ok("a page", pks_page.clone(), &[400])}
        }));
    }
    paths.insert(
        format!("{base}/invalid"),
        json!({
            "get": {"summary": "Entities the target reported as not found", "parameters": page_params,
                    "responses": ok("a page", pks_page, &[400])}
        }),
    );
    paths.insert(format!("{base}/average/series"), json!({
        "get": {"summary": format!("History of the average {rank_metric}"), "parameters": range_params(),
                "responses": ok("the points", json!({"type": "object", "properties": {"points": points}}), &[400])}
    }));
    paths.insert("/metrics".into(), json!({
        "get": {"summary": "Prometheus text exposition", "responses": {"200": {"description": "metrics", "content": {"text/plain": {}}}}}
    }));
    paths.insert(
        "/healthz".into(),
        json!({
            "get": {"summary": "Liveness", "responses": ok("ok", json!({"type": "object"}), &[])}
        }),
    );
    paths.insert("/api/v1/events".into(), json!({
        "get": {"summary": "Live statistics as server-sent events",
                "description": "One `stats` event per sampling interval (1 s by default), starting with the latest sample; `data` is the stats object plus `t` (unix ms) and `seq`. A client that stops reading is dropped; at most a configured number of subscribers at once.",
                "responses": {
                    "200": {"description": "an endless event stream", "content": {"text/event-stream": {}}},
                    "503": {"description": "too many subscribers, or shutting down", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
                }}
    }));
    paths.insert(format!("{base}/health/history"), json!({
        "get": {"summary": "The recent samples of the live statistics (15 minutes by default), oldest first",
                "responses": ok("the samples", json!({"type": "object", "properties": {
                    "intervalMs": {"type": "integer"},
                    "samples": {"type": "array", "items": {"type": "object"}}}}), &[])}
    }));
    paths.insert("/api/openapi.json".into(), json!({
        "get": {"summary": "This document", "responses": ok("OpenAPI 3.1", json!({"type": "object"}), &[])}
    }));
    let mut entity = serde_json::Map::new();
    entity.insert(key.into(), key_schema(info));
    if let Some(label) = &info.label_name {
        entity.insert(label.clone(), json!({"type": ["string", "null"]}));
    }
    for m in metrics {
        entity.insert(m.clone(), json!({"type": ["number", "null"]}));
    }
    entity.insert("rank".into(), json!({"type": ["integer", "null"]}));
    let mut times = vec!["lastCrawledAt".to_owned()];
    if let Some(flag) = &info.flag {
        entity.insert(flag.clone(), json!({"type": ["boolean", "null"]}));
        times.push(format!("{flag}CheckedAt"));
    }
    for k in times {
        entity.insert(
            k,
            json!({"type": ["string", "null"], "format": "date-time"}),
        );
    }
    json!({
        "openapi": "3.1.0",
        "info": {"title": "trawler", "version": env!("CARGO_PKG_VERSION"),
                 "description": format!("Live views and series of the job {job:?}.")},
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Entity": {"type": "object", "properties": entity},
                "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "object", "required": ["code", "message"], "properties": {"code": {"type": "string"}, "message": {"type": "string"}}}}}
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
