//! The views against a naive model: every read of [`Views`] equals the same
//! read computed by sorting and scanning a `BTreeMap` of entities.

use std::collections::BTreeMap;

use proptest::prelude::*;
use trawler_views::{
    Average, Entity, Mover, Ranked, Reference, Row, Stats, Suspicion, Update, Views, ViewsConfig,
    Window,
};

/// Every public read, for the ids asked.
#[derive(Debug, PartialEq)]
struct Snapshot {
    entities: Vec<Option<Entity>>,
    ranks: Vec<Option<u64>>,
    top_all: Vec<Ranked>,
    top_5: Vec<Ranked>,
    gainers: [Vec<Mover>; 2],
    gainers_3: [Vec<Mover>; 2],
    losers: [Vec<Mover>; 2],
    losers_3: [Vec<Mover>; 2],
    suspicious: Vec<u64>,
    stats: Stats,
}

const WINDOWS: [Window; 2] = [Window::Hour, Window::Day];

fn snapshot(views: &Views, ids: &[u64]) -> Snapshot {
    // Pages of 3 must join up into the full list.
    let mut suspicious = Vec::new();
    loop {
        let page = views.suspicious(suspicious.last().copied(), 3);
        assert!(page.len() <= 3);
        if page.is_empty() {
            break;
        }
        suspicious.extend(page);
    }
    assert_eq!(suspicious, views.suspicious(None, usize::MAX));
    Snapshot {
        entities: ids.iter().map(|&id| views.entity(id)).collect(),
        ranks: ids.iter().map(|&id| views.rank(id)).collect(),
        top_all: views.top(usize::MAX),
        top_5: views.top(5),
        gainers: WINDOWS.map(|w| views.top_gainers(w, usize::MAX)),
        gainers_3: WINDOWS.map(|w| views.top_gainers(w, 3)),
        losers: WINDOWS.map(|w| views.top_losers(w, usize::MAX)),
        losers_3: WINDOWS.map(|w| views.top_losers(w, 3)),
        suspicious,
        stats: views.stats(),
    }
}

#[derive(Debug, Clone, Default)]
struct ModelEntity {
    ts: i64,
    values: [Option<i64>; 2],
    gains: [Option<i64>; 2],
    suspicion: Option<Suspicion>,
}

#[derive(Debug, Default)]
struct Model(BTreeMap<u64, ModelEntity>);

impl Model {
    fn apply(&mut self, id: u64, ts: i64, values: [Option<i64>; 2], reference: Reference) {
        if self.0.get(&id).is_some_and(|e| ts < e.ts) {
            return;
        }
        let e = self.0.entry(id).or_default();
        e.ts = ts;
        for (held, new) in e.values.iter_mut().zip(values) {
            *held = new.or(*held);
        }
        let gain = |then: Option<i64>| Some(e.values[0]?.saturating_sub(then?));
        e.gains = [gain(reference.hour_ago), gain(reference.day_ago)];
    }

    fn suspicion(&mut self, id: u64, s: Suspicion) {
        if let Some(e) = self.0.get_mut(&id) {
            if e.suspicion
                .is_none_or(|old| s.checked_at_ms >= old.checked_at_ms)
            {
                e.suspicion = Some(s);
            }
        }
    }

    fn rank(&self, v: i64) -> u64 {
        1 + self
            .0
            .values()
            .filter(|e| e.values[0].is_some_and(|x| x > v))
            .count() as u64
    }

    fn movers(&self, w: usize, sign: i64, limit: usize) -> Vec<Mover> {
        let mut out: Vec<Mover> = self
            .0
            .iter()
            .filter_map(|(&id, e)| {
                Some(Mover {
                    id,
                    gain: e.gains[w]?,
                })
            })
            .filter(|m| m.gain.signum() == sign)
            .collect();
        out.sort_by_key(|m| {
            (
                if sign > 0 {
                    -i128::from(m.gain)
                } else {
                    i128::from(m.gain)
                },
                m.id,
            )
        });
        out.truncate(limit);
        out
    }

    fn snapshot(&self, ids: &[u64]) -> Snapshot {
        let entity = |id: u64| {
            let e = self.0.get(&id)?;
            let ratio = match e.values {
                [Some(n), Some(d)] if d != 0 => Some(n as f64 / d as f64),
                _ => None,
            };
            Some(Entity {
                id,
                ts_ms: e.ts,
                values: e.values.to_vec(),
                ratios: vec![ratio],
                rank: e.values[0].map(|v| self.rank(v)),
                gain_1h: e.gains[0],
                gain_24h: e.gains[1],
                suspicion: e.suspicion,
            })
        };
        let mut top: Vec<Ranked> = self
            .0
            .iter()
            .filter_map(|(&id, e)| {
                e.values[0].map(|value| Ranked {
                    id,
                    value,
                    rank: self.rank(value),
                })
            })
            .collect();
        top.sort_by_key(|r| (std::cmp::Reverse(r.value), r.id));
        let average = |m: usize| {
            let values: Vec<i64> = self.0.values().filter_map(|e| e.values[m]).collect();
            Average {
                sum: values.iter().map(|&v| i128::from(v)).sum(),
                count: values.len() as u64,
            }
        };
        let suspicious: Vec<u64> = self
            .0
            .iter()
            .filter(|(_, e)| e.suspicion.is_some_and(|s| s.suspicious))
            .map(|(&id, _)| id)
            .collect();
        Snapshot {
            entities: ids.iter().map(|&id| entity(id)).collect(),
            ranks: ids
                .iter()
                .map(|&id| entity(id).and_then(|e| e.rank))
                .collect(),
            top_5: top.iter().take(5).copied().collect(),
            top_all: top,
            gainers: [0, 1].map(|w| self.movers(w, 1, usize::MAX)),
            gainers_3: [0, 1].map(|w| self.movers(w, 1, 3)),
            losers: [0, 1].map(|w| self.movers(w, -1, usize::MAX)),
            losers_3: [0, 1].map(|w| self.movers(w, -1, 3)),
            stats: Stats {
                tracked: self.0.len(),
                suspicious: suspicious.len(),
                averages: vec![average(0), average(1)],
            },
            suspicious,
        }
    }
}

#[derive(Debug, Clone)]
enum Op {
    Update {
        id: u64,
        ts: i64,
        values: [Option<i64>; 2],
        reference: Reference,
    },
    Suspicion {
        id: u64,
        s: Suspicion,
    },
    Remove(u64),
}

/// Values from a small range so ties are common, plus extremes that would
/// overflow an `i64` sum or a gain.
fn value() -> impl Strategy<Value = i64> {
    prop_oneof![
        8 => -5i64..25,
        1 => Just(i64::MAX),
        1 => Just(i64::MIN),
        1 => any::<i64>(),
    ]
}

fn ops(ids: u64, len: usize) -> impl Strategy<Value = Vec<Op>> {
    let op = prop_oneof![
        10 => (0..ids, 0i64..40, [proptest::option::weighted(0.9, value()), proptest::option::of(value())],
               proptest::option::of(value()), proptest::option::of(value()))
            .prop_map(|(id, ts, values, hour_ago, day_ago)| Op::Update {
                id, ts, values, reference: Reference { hour_ago, day_ago },
            }),
        2 => (0..ids, any::<bool>(), 0i64..40)
            .prop_map(|(id, suspicious, checked_at_ms)| Op::Suspicion { id, s: Suspicion { suspicious, checked_at_ms } }),
        2 => (0..ids).prop_map(Op::Remove),
    ];
    proptest::collection::vec(op, 0..len)
}

fn run(views: &Views, model: &mut Model, ops: &[Op], step: usize) {
    for (i, op) in ops.iter().enumerate() {
        // Time moves forward with the ops, with some observations late.
        match *op {
            Op::Update {
                id,
                ts,
                values,
                reference,
            } => {
                let ts = (i * step) as i64 - ts;
                views
                    .apply(&[Update {
                        id,
                        ts_ms: ts,
                        values: &values,
                        reference,
                    }])
                    .unwrap();
                model.apply(id, ts, values, reference);
            }
            Op::Suspicion { id, s } => {
                let s = Suspicion {
                    checked_at_ms: (i * step) as i64 - s.checked_at_ms,
                    ..s
                };
                views.apply_suspicion(&[(id, s)]);
                model.suspicion(id, s);
            }
            Op::Remove(id) => {
                assert_eq!(views.remove(&[id]) == 1, model.0.remove(&id).is_some());
            }
        }
    }
}

/// A stored entity: ts, values, reference values, suspicion check.
type Stored = (
    i64,
    [Option<i64>; 2],
    Option<i64>,
    Option<i64>,
    Option<(bool, i64)>,
);

fn to_row((id, (ts, values, hour_ago, day_ago, suspicion)): &(u64, Stored)) -> Row<'_> {
    Row {
        update: Update {
            id: *id,
            ts_ms: *ts,
            values,
            reference: Reference {
                hour_ago: *hour_ago,
                day_ago: *day_ago,
            },
        },
        suspicion: suspicion.map(|(suspicious, checked_at_ms)| Suspicion {
            suspicious,
            checked_at_ms,
        }),
    }
}

fn influencers() -> Views {
    ViewsConfig::influencers().build().unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Rank, top N, count, movers, averages and the suspicious set, after
    /// random updates, ties, late observations and removals.
    #[test]
    fn every_read_matches_the_model(ops in ops(300, 1500)) {
        let views = influencers();
        let mut model = Model::default();
        let ids: Vec<u64> = (0..301).collect();
        run(&views, &mut model, &ops[..ops.len() / 2], 10);
        prop_assert_eq!(snapshot(&views, &ids), model.snapshot(&ids));
        run(&views, &mut model, &ops[ops.len() / 2..], 10);
        prop_assert_eq!(snapshot(&views, &ids), model.snapshot(&ids));
    }

    /// Few ids, many updates: long runs of ties and repeated moves of one
    /// key through the rank and movers trees.
    #[test]
    fn crowded_ids_match_the_model(ops in ops(12, 400)) {
        let views = influencers();
        let mut model = Model::default();
        let ids: Vec<u64> = (0..13).collect();
        for chunk in ops.chunks(25) {
            run(&views, &mut model, chunk, 3);
            prop_assert_eq!(snapshot(&views, &ids), model.snapshot(&ids));
        }
    }

    /// The average stays exact (an i128 sum) under updates and removals,
    /// with values at the ends of the i64 range.
    #[test]
    fn average_is_exact(ops in proptest::collection::vec((0u64..50, any::<i64>(), any::<bool>()), 0..600)) {
        let views = influencers();
        let mut naive: BTreeMap<u64, i64> = BTreeMap::new();
        for (ts, (id, v, remove)) in ops.into_iter().enumerate() {
            if remove {
                views.remove(&[id]);
                naive.remove(&id);
            } else {
                views.apply(&[Update { id, ts_ms: ts as i64, values: &[Some(v), None], reference: Reference::default() }]).unwrap();
                naive.insert(id, v);
            }
            let average = views.stats().averages[0];
            prop_assert_eq!(average.sum, naive.values().map(|&v| i128::from(v)).sum::<i128>());
            prop_assert_eq!(average.count, naive.len() as u64);
        }
    }

    /// Loading rows at start-up gives the same views as applying them one
    /// by one, and the loaded views keep matching under further updates.
    #[test]
    fn bulk_load_equals_incremental(
        rows in proptest::collection::btree_map(
            any::<u64>().prop_map(|id| id % 4 * (u64::MAX / 4) + id % 700),
            (any::<i64>(), [proptest::option::of(value()), proptest::option::of(value())],
             proptest::option::of(value()), proptest::option::of(value()),
             proptest::option::of((any::<bool>(), any::<i64>()))),
            0..1500),
        later in ops(700, 300),
    ) {
        let rows: Vec<(u64, _)> = rows.into_iter().collect();
        let loaded = influencers();
        prop_assert_eq!(loaded.rebuild(rows.iter().map(to_row)).unwrap(), rows.len());
        let incremental = influencers();
        let mut model = Model::default();
        for row in rows.iter().map(to_row) {
            incremental.apply(&[row.update]).unwrap();
            model.apply(row.update.id, row.update.ts_ms, [row.update.values[0], row.update.values[1]], row.update.reference);
            if let Some(s) = row.suspicion {
                incremental.apply_suspicion(&[(row.update.id, s)]);
                model.suspicion(row.update.id, s);
            }
        }
        let mut ids: Vec<u64> = rows.iter().map(|r| r.0).collect();
        ids.extend([0, 1, u64::MAX]);
        let expect = model.snapshot(&ids);
        prop_assert_eq!(&snapshot(&loaded, &ids), &expect);
        prop_assert_eq!(&snapshot(&incremental, &ids), &expect);

        // Later ops in a dense range (ids 0..700): applied to both, the
        // loaded trees split and merge like incrementally built ones.
        let mut model_too = Model(model.0.clone());
        run(&loaded, &mut model, &later, 1);
        run(&incremental, &mut model_too, &later, 1);
        ids.extend(0..700);
        prop_assert_eq!(snapshot(&loaded, &ids), model.snapshot(&ids));
        prop_assert_eq!(snapshot(&incremental, &ids), model.snapshot(&ids));
    }
}

#[test]
fn suspicious_pages_in_id_order() {
    let views = influencers();
    let ids: Vec<u64> = (1_000_000..1_000_100).collect();
    let updates: Vec<Update> = ids
        .iter()
        .map(|&id| Update {
            id,
            ts_ms: 1,
            values: &[Some(10), Some(1)],
            reference: Reference::default(),
        })
        .collect();
    views.apply(&updates).unwrap();
    let checks: Vec<(u64, Suspicion)> = ids
        .iter()
        .rev()
        .map(|&id| {
            (
                id,
                Suspicion {
                    suspicious: id % 3 == 0,
                    checked_at_ms: 5,
                },
            )
        })
        .collect();
    assert_eq!(views.apply_suspicion(&checks), 100);
    let expected: Vec<u64> = ids.iter().copied().filter(|id| id % 3 == 0).collect();
    assert_eq!(views.stats().suspicious, expected.len());
    assert_eq!(views.suspicious(None, 10), expected[..10]);
    assert_eq!(views.suspicious(Some(expected[9]), 10), expected[10..20]);
    // `after` need not be suspicious, nor tracked.
    assert_eq!(views.suspicious(Some(expected[9] + 1), 2), expected[10..12]);
    assert_eq!(views.suspicious(Some(0), 1), expected[..1]);
    assert_eq!(views.suspicious(Some(u64::MAX), 10), Vec::<u64>::new());
    assert_eq!(views.suspicious(None, 0), Vec::<u64>::new());

    // An older check is ignored; a newer one clears the flag; an untracked
    // id is not added; a removed id leaves the set.
    let first = expected[0];
    assert_eq!(
        views.apply_suspicion(&[(
            first,
            Suspicion {
                suspicious: false,
                checked_at_ms: 4
            }
        )]),
        0
    );
    assert_eq!(
        views.apply_suspicion(&[(
            first,
            Suspicion {
                suspicious: false,
                checked_at_ms: 6
            }
        )]),
        1
    );
    assert_eq!(
        views.apply_suspicion(&[(
            7,
            Suspicion {
                suspicious: true,
                checked_at_ms: 6
            }
        )]),
        0
    );
    views.remove(&[expected[1]]);
    assert_eq!(views.suspicious(None, 2), expected[2..4]);
    assert_eq!(views.stats().suspicious, expected.len() - 2);
    assert_eq!(
        views.entity(first).unwrap().suspicion,
        Some(Suspicion {
            suspicious: false,
            checked_at_ms: 6
        })
    );
}

#[test]
fn late_observations_are_counted_and_ignored() {
    let views = influencers();
    let values = [
        [Some(100), Some(2)],
        [Some(50), Some(2)],
        [Some(70), Some(2)],
        [Some(80), Some(2)],
    ];
    let at = |ts_ms, i: usize| Update {
        id: 1,
        ts_ms,
        values: &values[i],
        reference: Reference::default(),
    };
    let applied = views
        .apply(&[at(10, 0), at(9, 1), at(10, 2), at(11, 3)])
        .unwrap();
    assert_eq!((applied.applied, applied.stale), (3, 1));
    let e = views.entity(1).unwrap();
    assert_eq!(
        (e.ts_ms, e.values[0], e.ratios[0]),
        (11, Some(80), Some(40.0))
    );
}

#[test]
fn a_bad_batch_changes_nothing() {
    let views = influencers();
    let good = Update {
        id: 1,
        ts_ms: 1,
        values: &[Some(1), Some(1)],
        reference: Reference::default(),
    };
    let bad = Update {
        id: 2,
        values: &[Some(1)],
        ..good
    };
    let err = views.apply(&[good, bad]).unwrap_err();
    assert!(err.to_string().contains("id 2"), "{err}");
    assert_eq!(views.stats().tracked, 0);

    views.apply(&[good]).unwrap();
    let rows = [
        Row {
            update: good,
            suspicion: None,
        },
        Row {
            update: bad,
            suspicion: None,
        },
    ];
    assert!(views.rebuild(rows).is_err());
    assert_eq!(
        views.stats().tracked,
        1,
        "a failed rebuild keeps the old views"
    );
}

#[test]
fn ratio_needs_both_values_and_a_nonzero_denominator() {
    let views = influencers();
    let r = Reference::default();
    views
        .apply(&[
            Update {
                id: 1,
                ts_ms: 1,
                values: &[Some(10), None],
                reference: r,
            },
            Update {
                id: 2,
                ts_ms: 1,
                values: &[Some(10), Some(0)],
                reference: r,
            },
            Update {
                id: 3,
                ts_ms: 1,
                values: &[None, Some(4)],
                reference: r,
            },
        ])
        .unwrap();
    assert_eq!(views.entity(1).unwrap().ratios, vec![None]);
    assert_eq!(views.entity(2).unwrap().ratios, vec![None]);
    let e3 = views.entity(3).unwrap();
    assert_eq!((e3.ratios[0], e3.rank), (None, None));
    assert_eq!(views.stats().averages[0], Average { sum: 20, count: 2 });
}
