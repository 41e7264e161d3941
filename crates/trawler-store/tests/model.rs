//! Property test: random appends, flushes, compactions, reopenings and
//! retention against a plain in-memory model of what the store promises.

use std::collections::BTreeMap;
use std::time::Duration;

use proptest::prelude::*;
use trawler_store::{
    Aggregate, Point, Resolution, Sample, SeriesId, SeriesKey, Store, StoreConfig, Value, ValueKind,
};

const MINUTE: i64 = 60_000;
const HOUR: i64 = 3_600_000;
const DAY: i64 = 86_400_000;
const RETENTION_DAYS: i64 = 2;

#[derive(Debug, Clone)]
enum Op {
    /// (series index, minute, value)
    Append(Vec<(usize, i64, i64)>),
    Flush,
    Compact,
    /// Clean close and reopen.
    Reopen,
    /// Drop without close (the WAL is replayed on open).
    Crash,
}

fn op() -> impl Strategy<Value = Op> {
    // Minutes span about eight days so retention (two days) drops blocks.
    let sample = (0usize..3, 0i64..8 * 1440, -1000i64..1000);
    prop_oneof![
        6 => prop::collection::vec(sample, 1..40).prop_map(Op::Append),
        2 => Just(Op::Flush),
        1 => Just(Op::Compact),
        1 => Just(Op::Reopen),
        1 => Just(Op::Crash),
    ]
}

fn config(dir: &std::path::Path) -> StoreConfig {
    let mut c = StoreConfig::new(dir);
    c.background = false;
    c.compaction_fanin = 2;
    c.retention = Duration::from_millis((RETENTION_DAYS * DAY) as u64);
    c
}

fn kind(i: usize) -> ValueKind {
    if i == 2 {
        ValueKind::Float
    } else {
        ValueKind::Int
    }
}

fn value(i: usize, v: i64) -> Value {
    match kind(i) {
        ValueKind::Int => Value::Int(v * 997),
        ValueKind::Float => Value::Float(v as f64 / 8.0),
    }
}

fn ids(store: &Store) -> Vec<SeriesId> {
    (0..3)
        .map(|i| {
            let key = SeriesKey {
                job: "job",
                entity: i as u64,
                metric: if i == 2 { "ratio" } else { "count" },
            };
            store.series(key, kind(i)).unwrap()
        })
        .collect()
}

#[derive(Default)]
struct Model {
    points: Vec<BTreeMap<i64, Value>>,
    /// Samples at or before this are stale, per series.
    sealed: Vec<i64>,
    /// Everything before this may have been dropped by retention.
    cutoff: i64,
    newest: i64,
}

impl Model {
    fn seal(&mut self) {
        for (i, p) in self.points.iter().enumerate() {
            if let Some((&t, _)) = p.last_key_value() {
                self.sealed[i] = self.sealed[i].max(t);
            }
        }
    }
}

fn expected_aggs(points: &[Point], bucket: i64) -> Vec<Aggregate> {
    let mut out: Vec<Aggregate> = Vec::new();
    for p in points {
        let start = p.ts_ms.div_euclid(bucket) * bucket;
        let v = p.value;
        match out.last_mut() {
            Some(a) if a.start_ms == start => {
                a.count += 1;
                a.last = v;
                match (&mut a.min, &mut a.max, &mut a.sum, v) {
                    (Value::Int(mn), Value::Int(mx), Value::Int(s), Value::Int(x)) => {
                        *mn = (*mn).min(x);
                        *mx = (*mx).max(x);
                        *s += x;
                    }
                    (Value::Float(mn), Value::Float(mx), Value::Float(s), Value::Float(x)) => {
                        *mn = mn.min(x);
                        *mx = mx.max(x);
                        *s += x;
                    }
                    _ => unreachable!(),
                }
            }
            _ => out.push(Aggregate {
                start_ms: start,
                count: 1,
                min: v,
                max: v,
                sum: v,
                first: v,
                last: v,
            }),
        }
    }
    out
}

fn check(store: &Store, ids: &[SeriesId], model: &mut Model) {
    // Retention may drop whole blocks older than newest - retention.
    model.cutoff = model
        .cutoff
        .max(model.newest.saturating_sub(RETENTION_DAYS * DAY));
    for (i, &id) in ids.iter().enumerate() {
        let got = store.range(id, i64::MIN, i64::MAX).unwrap();
        let m = &mut model.points[i];
        for p in &got {
            assert_eq!(
                m.get(&p.ts_ms),
                Some(&p.value),
                "series {i}: store has {p:?} the model lacks"
            );
        }
        let have: std::collections::HashSet<i64> = got.iter().map(|p| p.ts_ms).collect();
        for (&t, v) in m.iter() {
            assert!(
                t < model.cutoff || have.contains(&t),
                "series {i}: lost ({t}, {v:?}); cutoff {}",
                model.cutoff
            );
        }
        // What retention dropped is gone from the model too.
        m.retain(|t, _| have.contains(t));
        let expected: Vec<Point> = m
            .iter()
            .map(|(&ts_ms, &value)| Point { ts_ms, value })
            .collect();
        assert_eq!(got, expected);

        // A sub-range, raw and downsampled.
        if let (Some(first), Some(last)) = (expected.first(), expected.last()) {
            let (from, to) = (first.ts_ms + (last.ts_ms - first.ts_ms) / 3, last.ts_ms);
            let sub: Vec<Point> = expected
                .iter()
                .filter(|p| p.ts_ms >= from && p.ts_ms < to)
                .copied()
                .collect();
            assert_eq!(store.range(id, from, to).unwrap(), sub);
            assert_eq!(
                store.downsample(id, from, to, 7 * MINUTE).unwrap(),
                expected_aggs(&sub, 7 * MINUTE)
            );
            let latest = store.latest(id).unwrap().unwrap();
            assert_eq!(latest, *last);
        }
        let hourly = store
            .rollups(id, i64::MIN / 2, i64::MAX / 2, Resolution::Hour)
            .unwrap();
        let want = expected_aggs(&expected, HOUR);
        assert_eq!(hourly.len(), want.len());
        for (a, b) in hourly.iter().zip(&want) {
            assert_eq!(
                (a.start_ms, a.count, a.first, a.last, a.min, a.max),
                (b.start_ms, b.count, b.first, b.last, b.min, b.max)
            );
            assert!(
                (a.sum.as_f64() - b.sum.as_f64()).abs() < 1e-6,
                "{a:?} vs {b:?}"
            );
        }
        let daily = store
            .rollups(id, i64::MIN / 2, i64::MAX / 2, Resolution::Day)
            .unwrap();
        let want = expected_aggs(&expected, DAY);
        assert_eq!(
            daily
                .iter()
                .map(|a| (a.start_ms, a.count, a.first, a.last))
                .collect::<Vec<_>>(),
            want.iter()
                .map(|a| (a.start_ms, a.count, a.first, a.last))
                .collect::<Vec<_>>()
        );
        // Whole hours: answered from rollups.
        assert_eq!(
            store
                .downsample(id, 0, 10 * DAY, 6 * HOUR)
                .unwrap()
                .iter()
                .map(|a| a.count)
                .sum::<u64>(),
            expected
                .iter()
                .filter(|p| p.ts_ms >= 0 && p.ts_ms < 10 * DAY)
                .count() as u64
        );
    }
    let stats = store.stats();
    let total: usize = model.points.iter().map(|m| m.len()).sum();
    assert!(
        stats.samples >= total as u64,
        "stats {} < model {total}",
        stats.samples
    );
}

fn run(ops: Vec<Op>) {
    let dir = tempfile::tempdir().unwrap();
    let mut store = config(dir.path()).open().unwrap();
    let mut ids = ids(&store);
    let mut model = Model {
        points: vec![BTreeMap::new(); 3],
        sealed: vec![i64::MIN; 3],
        cutoff: i64::MIN,
        newest: i64::MIN,
    };
    for op in ops {
        match op {
            Op::Append(batch) => {
                let samples: Vec<Sample> = batch
                    .iter()
                    .map(|&(i, minute, v)| Sample {
                        series: ids[i],
                        ts_ms: minute * MINUTE + 7_000,
                        value: value(i, v),
                    })
                    .collect();
                let mut accepted = 0;
                let cutoff = model.newest.saturating_sub(RETENTION_DAYS * DAY);
                for s in &samples {
                    let i = ids.iter().position(|&id| id == s.series).unwrap();
                    if s.ts_ms > model.sealed[i] && s.ts_ms >= cutoff {
                        model.points[i].insert(s.ts_ms, s.value);
                        model.newest = model.newest.max(s.ts_ms);
                        accepted += 1;
                    }
                }
                let got = store.append(&samples).unwrap();
                assert_eq!(got.accepted, accepted);
            }
            Op::Flush => {
                store.flush().unwrap();
                model.seal();
            }
            Op::Compact => {
                store.flush().unwrap();
                model.seal();
                store.compact().unwrap();
            }
            Op::Reopen => {
                store.close().unwrap();
                model.seal();
                store = config(dir.path()).open().unwrap();
                ids = self::ids(&store);
            }
            Op::Crash => {
                drop(store);
                store = config(dir.path()).open().unwrap();
                ids = self::ids(&store);
            }
        }
        check(&store, &ids, &mut model);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn store_matches_model(ops in prop::collection::vec(op(), 1..40)) {
        run(ops);
    }
}

#[test]
fn a_stale_sample_after_flush_is_dropped_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let store = config(dir.path()).open().unwrap();
    let ids = ids(&store);
    let s = |ts| Sample {
        series: ids[0],
        ts_ms: ts,
        value: Value::Int(1),
    };
    assert_eq!(
        store.append(&[s(MINUTE), s(3 * MINUTE)]).unwrap().accepted,
        2
    );
    store.flush().unwrap();
    let got = store
        .append(&[s(2 * MINUTE), s(3 * MINUTE), s(4 * MINUTE)])
        .unwrap();
    assert_eq!((got.accepted, got.stale), (1, 2));
    assert_eq!(store.stats().stale_samples, 2);
}
