//! The engine's tricky semantics, each pinned by hand-computed answers:
//! `rate`'s extrapolation, staleness and the lookback delta, subquery step
//! alignment, `@` and `offset`, the errors of ambiguous vector matching,
//! and the limits that turn a too-large query into a clear error.

use std::time::Duration;

use proptest::prelude::*;
use trawler_promql::{
    Engine, EngineConfig, Labels, MemoryStorage, QueryError, SelectLimits, Value, VectorSample,
    STALE_NAN_BITS,
};

fn series(name: &str, extra: &[(&str, &str)]) -> Labels {
    let mut pairs = vec![("__name__", name)];
    pairs.extend_from_slice(extra);
    Labels::new(pairs)
}

fn vector(v: Value) -> Vec<VectorSample> {
    match v {
        Value::Vector(v) => v,
        other => panic!("expected a vector, got {other:?}"),
    }
}

fn one(e: &Engine, s: &MemoryStorage, q: &str, t: i64) -> Option<f64> {
    let v = vector(e.instant(s, q, t).unwrap_or_else(|e| panic!("{q}: {e}")));
    assert!(v.len() <= 1, "{q}: {v:?}");
    v.first().map(|s| s.value)
}

#[test]
fn rate_extrapolates_to_the_window_as_prometheus_does() {
    let s = MemoryStorage::new();
    let c = series("c", &[]);
    // A counter growing 1/s, sampled every 30 s from 30 s to 270 s.
    for i in 1..=9 {
        s.push(&c, i * 30_000, (i * 30) as f64);
    }
    let e = Engine::default();
    // The samples cover 240 s of the 300 s window; both ends are within
    // 1.1 sample intervals of the window's edges, so the result is
    // extrapolated to the whole window.
    assert_eq!(one(&e, &s, "increase(c[5m])", 300_000), Some(300.0));
    assert_eq!(one(&e, &s, "rate(c[5m])", 300_000), Some(1.0));
    // The window [60 s, 360 s]: the end is 90 s past the last sample, more
    // than 1.1 intervals, so only half an interval is added there.
    let got = one(&e, &s, "increase(c[5m])", 360_000).unwrap();
    assert!(
        (got - 210.0 * (210.0 + 0.0 + 15.0) / 210.0).abs() < 1e-9,
        "{got}"
    );
    // One sample is not enough for a rate.
    assert_eq!(one(&e, &s, "rate(c[20s])", 100_000), None);
}

#[test]
fn a_counter_reset_adds_the_value_before_it() {
    let s = MemoryStorage::new();
    let c = series("c", &[]);
    for (t, v) in [(0, 10.0), (60_000, 20.0), (120_000, 5.0), (180_000, 15.0)] {
        s.push(&c, t, v);
    }
    let e = Engine::default();
    // 10 → 20 (+10), reset to 5 (+5 counted from zero), → 15 (+10).
    assert_eq!(one(&e, &s, "increase(c[3m])", 180_000), Some(25.0));
    assert_eq!(one(&e, &s, "resets(c[3m])", 180_000), Some(1.0));
    // delta does not know counters.
    assert_eq!(one(&e, &s, "delta(c[3m])", 180_000), Some(5.0));
    assert_eq!(one(&e, &s, "irate(c[3m])", 180_000), Some(10.0 / 60.0));
}

#[test]
fn a_stale_marker_ends_a_series_and_the_lookback_is_inclusive() {
    let s = MemoryStorage::new();
    let g = series("g", &[]);
    s.push(&g, 0, 1.0);
    s.push(&g, 30_000, f64::from_bits(STALE_NAN_BITS));
    s.push(&g, 600_000, 2.0);
    let e = Engine::default();
    assert_eq!(one(&e, &s, "g", 20_000), Some(1.0));
    assert_eq!(one(&e, &s, "g", 40_000), None);
    // Range vectors drop the marker.
    assert_eq!(one(&e, &s, "count_over_time(g[1m])", 40_000), Some(1.0));
    // Prometheus 2.42 includes a sample exactly one lookback delta old.
    assert_eq!(one(&e, &s, "g", 900_000), Some(2.0));
    assert_eq!(one(&e, &s, "g", 900_001), None);
}

#[test]
fn subquery_steps_are_aligned_to_absolute_multiples_of_the_step() {
    let s = MemoryStorage::new();
    let g = series("g", &[]);
    for i in 0..20 {
        s.push(&g, i * 10_000, i as f64);
    }
    let e = Engine::default();
    let Value::Matrix(m) = e.instant(&s, "g[1m:20s]", 70_000).unwrap() else {
        panic!("a subquery answers a matrix")
    };
    let times: Vec<i64> = m[0].points.iter().map(|p| p.0).collect();
    assert_eq!(times, [20_000, 40_000, 60_000]);
    // The step of a subquery without one is the default evaluation
    // interval, one minute.
    let Value::Matrix(m) = e.instant(&s, "g[3m:]", 190_000).unwrap() else {
        panic!()
    };
    let times: Vec<i64> = m[0].points.iter().map(|p| p.0).collect();
    assert_eq!(times, [60_000, 120_000, 180_000]);
}

#[test]
fn at_and_offset_pin_the_time_a_selector_reads() {
    let s = MemoryStorage::new();
    let g = series("g", &[]);
    for i in 0..100 {
        s.push(&g, i * 10_000, i as f64);
    }
    let e = Engine::default();
    assert_eq!(one(&e, &s, "g @ 100", 500_000), Some(10.0));
    assert_eq!(one(&e, &s, "g @ 100 offset 30s", 500_000), Some(7.0));
    assert_eq!(one(&e, &s, "g offset -30s", 500_000), Some(53.0));
    assert_eq!(one(&e, &s, "g @ start()", 500_000), Some(50.0));
    let Value::Matrix(m) = e.range(&s, "g @ end()", 100_000, 200_000, 50_000).unwrap() else {
        panic!()
    };
    assert_eq!(
        m[0].points,
        [(100_000, 20.0), (150_000, 20.0), (200_000, 20.0)]
    );
}

#[test]
fn ambiguous_vector_matching_is_an_execution_error() {
    let s = MemoryStorage::new();
    for (i, inst) in ["a", "b"].iter().enumerate() {
        s.push(
            &series("x", &[("job", "j"), ("instance", inst)]),
            0,
            i as f64,
        );
        s.push(&series("y", &[("job", "j"), ("instance", inst)]), 0, 1.0);
    }
    s.push(&series("z", &[("job", "j")]), 0, 1.0);
    let e = Engine::default();
    for (q, needle) in [
        ("x + on(job) y", "many-to-many matching not allowed"),
        (
            "x + on(job) group_left y",
            "many-to-many matching not allowed",
        ),
        ("x + on(job) z", "many-to-one matching must be explicit"),
        ("abs({__name__=~\"x|y\"})", "same labelset"),
    ] {
        let err = e.instant(&s, q, 1_000).unwrap_err();
        assert_eq!((err.error_type(), err.status()), ("execution", 422), "{q}");
        assert!(err.to_string().contains(needle), "{q}: {err}");
    }
    // One-to-many made explicit works, and keeps the "many" side's labels.
    let v = vector(e.instant(&s, "x + on(job) group_left z", 1_000).unwrap());
    assert_eq!(v.len(), 2);
    assert_eq!(v[0].labels.get("instance"), "a");
    assert_eq!(v[0].labels.get("__name__"), "");
}

#[test]
fn limits_give_a_clear_error_naming_them() {
    let s = MemoryStorage::new();
    for i in 0..10 {
        let l = series("m", &[("i", &*i.to_string())]);
        for t in 0..100 {
            s.push(&l, t * 15_000, t as f64);
        }
    }
    let e = Engine::new(EngineConfig {
        limits: SelectLimits {
            max_series: 5,
            max_samples: 1_000_000,
        },
        ..EngineConfig::default()
    });
    let err = e.instant(&s, "sum(m)", 1_000_000).unwrap_err();
    assert_eq!(err.status(), 422);
    assert!(err.to_string().contains("max_series"), "{err}");
    let e = Engine::new(EngineConfig {
        limits: SelectLimits {
            max_series: 100,
            max_samples: 500,
        },
        ..EngineConfig::default()
    });
    let err = e.range(&s, "m", 0, 1_500_000, 1_000).unwrap_err();
    assert_eq!(err.status(), 422);
    assert!(err.to_string().contains("max_samples"), "{err}");
    // A subquery of absurdly many steps is refused, not allocated.
    let err = Engine::default()
        .instant(&s, "max_over_time(m[100y:1ms])", 1_000_000)
        .unwrap_err();
    assert_eq!(err.status(), 422);
    assert!(err.to_string().contains("max_samples"), "{err}");
    // Too many steps is the caller's error, before anything is loaded.
    let err = Engine::default()
        .range(&s, "m", 0, 20_000_000, 1)
        .unwrap_err();
    assert_eq!((err.error_type(), err.status()), ("bad_data", 400));
    // A query past its time.
    let e = Engine::new(EngineConfig {
        timeout: Duration::ZERO,
        ..EngineConfig::default()
    });
    let err = e.instant(&s, "m", 1_000).unwrap_err();
    assert!(matches!(err, QueryError::Timeout(_)), "{err:?}");
    assert_eq!((err.error_type(), err.status()), ("timeout", 503));
}

#[test]
fn results_serialize_as_prometheus_writes_them() {
    let s = MemoryStorage::new();
    s.push(&series("g", &[("a", "1")]), 0, 0.5);
    let e = Engine::default();
    let json = |v: Value| serde_json::to_string(&v).unwrap();
    assert_eq!(
        json(e.instant(&s, "g", 1_500).unwrap()),
        r#"{"resultType":"vector","result":[{"metric":{"__name__":"g","a":"1"},"value":[1.5,"0.5"]}]}"#
    );
    assert_eq!(
        json(e.instant(&s, "-g * 2", 1_500).unwrap()),
        r#"{"resultType":"vector","result":[{"metric":{"a":"1"},"value":[1.5,"-1"]}]}"#
    );
    assert_eq!(
        json(e.instant(&s, "1 / 0", 1_000).unwrap()),
        r#"{"resultType":"scalar","result":[1,"+Inf"]}"#
    );
    assert_eq!(
        json(e.instant(&s, "\"hi\"", 1_000).unwrap()),
        r#"{"resultType":"string","result":[1,"hi"]}"#
    );
    assert_eq!(
        json(e.range(&s, "time()", 0, 2_000, 1_000).unwrap()),
        r#"{"resultType":"matrix","result":[{"metric":{},"values":[[0,"0"],[1,"1"],[2,"2"]]}]}"#
    );
    let err = e.range(&s, "g[1m]", 0, 1_000, 1_000).unwrap_err();
    assert_eq!(err.status(), 400);
    let err = e
        .instant(&s, "holt_winters(g[1m], 2, 0.5)", 1_000)
        .unwrap_err();
    assert_eq!(err.status(), 422);
    // Durations as 2.42 writes them: a unit always, and only where a
    // duration goes.
    for q in ["g[300]", "g offset 60", "g[5m:30]", "1m + 1"] {
        assert_eq!(e.instant(&s, q, 1_000).unwrap_err().status(), 400, "{q}");
    }
    for q in [
        "g[5m:30s]",
        "g offset -1m30s",
        "count_over_time(g[1h30m])",
        "g > .5e-3",
    ] {
        assert!(e.instant(&s, q, 1_000).is_ok(), "{q}");
    }
    // Functions after 2.42 are unknown, as they are to Prometheus 2.42.
    let err = e.instant(&s, "sort_by_label(g)", 1_000).unwrap_err();
    assert_eq!(err.status(), 400);
}

proptest! {
    /// Aggregations agree with a plain computation over any vector, and
    /// topk answers the k largest of each group.
    #[test]
    fn aggregations_agree_with_a_naive_computation(
        values in proptest::collection::vec((0u8..3, -1e6f64..1e6), 1..30),
        k in 1usize..5,
    ) {
        let s = MemoryStorage::new();
        for (i, (g, v)) in values.iter().enumerate() {
            let l = series("m", &[("g", &*g.to_string()), ("i", &*i.to_string())]);
            s.push(&l, 0, *v);
        }
        let e = Engine::default();
        for g in 0u8..3 {
            let mine: Vec<f64> = values.iter().filter(|x| x.0 == g).map(|x| x.1).collect();
            let get = |q: &str| -> Option<f64> {
                vector(e.instant(&s, q, 1_000).unwrap())
                    .into_iter()
                    .find(|x| x.labels.get("g") == g.to_string())
                    .map(|x| x.value)
            };
            if mine.is_empty() {
                prop_assert_eq!(get("count by(g) (m)"), None);
                continue;
            }
            let sum: f64 = mine.iter().sum();
            let max = mine.iter().cloned().fold(f64::MIN, f64::max);
            let min = mine.iter().cloned().fold(f64::MAX, f64::min);
            prop_assert_eq!(get("count by(g) (m)"), Some(mine.len() as f64));
            prop_assert!((get("sum by(g) (m)").unwrap() - sum).abs() <= 1e-6 * sum.abs().max(1.0));
            prop_assert_eq!(get("max by(g) (m)"), Some(max));
            prop_assert_eq!(get("min by(g) (m)"), Some(min));
            let avg = get("avg by(g) (m)").unwrap();
            prop_assert!(avg <= max + 1e-6 && avg >= min - 1e-6);
            let top = vector(e.instant(&s, &format!("topk by(g) ({k}, m)"), 1_000).unwrap());
            let top: Vec<f64> = top.iter().filter(|x| x.labels.get("g") == g.to_string()).map(|x| x.value).collect();
            let mut sorted = mine.clone();
            sorted.sort_by(|a, b| b.partial_cmp(a).unwrap());
            sorted.truncate(k);
            prop_assert_eq!(top, sorted);
        }
        // Every series matches itself one to one; `unless` itself is empty.
        prop_assert_eq!(vector(e.instant(&s, "m / m", 1_000).unwrap()).len(), values.len());
        prop_assert!(vector(e.instant(&s, "m unless m", 1_000).unwrap()).is_empty());
    }
}

/// A store that counts its selects.
struct Counting {
    inner: MemoryStorage,
    selects: std::sync::atomic::AtomicUsize,
}

impl trawler_promql::Queryable for Counting {
    fn select(
        &self,
        matchers: &[trawler_promql::Matcher],
        start_ms: i64,
        end_ms: i64,
        limits: SelectLimits,
    ) -> Result<Vec<trawler_promql::Series>, trawler_promql::StorageError> {
        self.selects
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.inner.select(matchers, start_ms, end_ms, limits)
    }

    fn label_names(
        &self,
        selectors: &[Vec<trawler_promql::Matcher>],
        start_ms: i64,
        end_ms: i64,
    ) -> Result<Vec<String>, trawler_promql::StorageError> {
        self.inner.label_names(selectors, start_ms, end_ms)
    }

    fn label_values(
        &self,
        name: &str,
        selectors: &[Vec<trawler_promql::Matcher>],
        start_ms: i64,
        end_ms: i64,
    ) -> Result<Vec<String>, trawler_promql::StorageError> {
        self.inner.label_values(name, selectors, start_ms, end_ms)
    }
}

#[test]
fn a_range_query_selects_each_selector_once_not_per_step() {
    let c = Counting {
        inner: MemoryStorage::new(),
        selects: Default::default(),
    };
    for i in 0..20 {
        let l = series("m", &[("i", &*i.to_string()), ("g", &*(i % 3).to_string())]);
        for t in 0..400 {
            c.inner.push(&l, t * 15_000, t as f64);
        }
    }
    let e = Engine::default();
    let q = "sum by(g) (rate(m[5m])) / on(g) count by(g) (m) * on() group_left max_over_time(sum(m)[10m:1m])";
    let Value::Matrix(m) = e.range(&c, q, 600_000, 6_000_000, 15_000).unwrap() else {
        panic!()
    };
    assert_eq!(m.len(), 3);
    assert_eq!(m[0].points.len(), 361);
    // Three selectors, 361 steps: three selects.
    assert_eq!(c.selects.load(std::sync::atomic::Ordering::Relaxed), 3);
}
