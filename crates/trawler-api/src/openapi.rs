//! The OpenAPI 3.1 description of the API, served at `/api/openapi.json`.
//!
//! Built from the job (its path segment, its metrics) so that the document
//! names exactly the metrics a client may ask for. A test checks that every
//! route the router serves is described here.

use serde_json::{json, Value};

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

fn pk_param() -> Value {
    json!({"name": "pk", "in": "path", "required": true, "schema": {"type": "integer", "minimum": 0}})
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

/// The document for a job named `job` with series `metrics`.
pub fn document(job: &str, metrics: &[String], rank_metric: &str) -> Value {
    let base = format!("/api/v1/{job}");
    let points = json!({"type": "array", "items": {"type": "array", "items": {"type": "number"}, "minItems": 2, "maxItems": 2}});
    let series_schema = json!({"type": "object", "properties": {
        "pk": {"type": "integer"}, "metric": {"type": "string"}, "from": {"type": "integer"},
        "to": {"type": "integer"}, "step": {"type": ["integer", "null"]}, "points": points}});
    let mut series_params = vec![pk_param(), {
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
        "pks": {"type": "array", "items": {"type": "integer"}}, "next": {"type": ["integer", "null"]}}});
    let page_params = json!([
        query(
            "after",
            "return ids greater than this",
            json!({"type": "integer"})
        ),
        query(
            "limit",
            "page size",
            json!({"type": "integer", "minimum": 1, "maximum": 10000})
        )
    ]);
    let bearer = json!([{"bearer": []}]);
    let mut paths = serde_json::Map::new();
    paths.insert(format!("{base}/{{pk}}"), json!({
        "get": {"summary": "Latest values, rank and suspicious status of a tracked entity",
                "parameters": [pk_param()],
                "responses": ok("the entity", json!({"$ref": "#/components/schemas/Entity"}), &[400, 404])},
        "delete": {"summary": "Stop tracking an entity", "parameters": [pk_param()], "security": bearer,
                   "responses": {"204": {"description": "untracked"}, "400": error_responses(&[400])["400"], "401": error_responses(&[401])["401"], "404": error_responses(&[404])["404"]}}
    }));
    paths.insert(
        format!("{base}/{{pk}}/series"),
        json!({
            "get": {"summary": "Points of one metric of an entity", "parameters": series_params,
                    "responses": ok("the points", series_schema, &[400, 404])}
        }),
    );
    paths.insert(format!("{base}/track"), json!({
        "post": {"summary": "Start tracking entities (durable)", "security": bearer,
                 "requestBody": {"required": true, "content": {"application/json": {"schema": {"type": "object", "required": ["pks"], "properties": {"pks": {"type": "array", "items": {"type": "integer", "minimum": 0}}}}}}},
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
    paths.insert(format!("{base}/suspicious"), json!({
        "get": {"summary": "Suspicious entities, in id order, paginated", "parameters": page_params,
                "responses": ok("a page", pks_page.clone(), &[400])}
    }));
    paths.insert(
        format!("{base}/invalid"),
        json!({
            "get": {"summary": "Ids the target reported as not found", "parameters": page_params,
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
    entity.insert("pk".into(), json!({"type": "integer"}));
    for m in metrics {
        entity.insert(m.clone(), json!({"type": ["number", "null"]}));
    }
    for (k, t) in [("rank", "integer"), ("suspicious", "boolean")] {
        entity.insert(k.into(), json!({"type": [t, "null"]}));
    }
    for k in ["suspiciousCheckedAt", "lastCrawledAt"] {
        entity.insert(
            k.into(),
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
        let doc = document("influencers", &["followerCount".into()], "followerCount");
        let paths = doc["paths"].as_object().unwrap();
        for route in [
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
