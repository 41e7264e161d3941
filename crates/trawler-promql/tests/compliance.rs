//! The oracle test: trawler's engine against a real Prometheus 2.42.
//!
//! A deterministic data set shaped like the compliance tester's demo
//! service (counters with resets, gauges, classic histograms, series with
//! gaps and stale markers, NaN and ±Inf) goes into a `prometheus` server
//! started here and into [`MemoryStorage`]; every query of
//! `tests/compliance/queries.txt` then runs as an instant query and as a
//! range query (at one of several steps) on both, and the answers are
//! compared with the rules of the Prometheus compliance tester: the same
//! label sets, values equal within a relative 1e-5 (NaN equals NaN),
//! order compared only for order-sensitive queries, an error only against
//! an error.
//!
//! The data set, the corpus, the Prometheus server and the comparison rules
//! are `trawler_promql::oracle`'s, shared with `trawler bench promql`.
//!
//! Queries that cannot (yet) agree are listed with a reason in
//! `tests/compliance/known_differences.txt`; the test fails on any other
//! difference, and on a listed query that starts to agree.

use std::time::Instant;

use trawler_promql::oracle::{self, agree, order_sensitive, Answer, Prometheus, QueryTimes};
use trawler_promql::{Engine, EngineConfig, MemoryStorage};

#[test]
fn the_corpus_answers_as_prometheus_does() {
    let data = oracle::dataset();
    let bin = oracle::find_binary("prometheus").expect(
        "the compliance test needs Prometheus 2.42 (`prometheus` on PATH): run scripts/deps",
    );
    let prom = Prometheus::start(&bin).unwrap_or_else(|e| panic!("{e}"));
    for body in oracle::write_windows(&data) {
        prom.write(&body).unwrap_or_else(|e| panic!("{e}"));
    }
    let mem = MemoryStorage::new();
    for (l, pts) in &data {
        for &(t, v) in pts {
            mem.push(l, t, v);
        }
    }
    let engine = Engine::new(EngineConfig::default());
    let queries = oracle::corpus();
    assert!(
        queries.len() >= 500,
        "the corpus has {} queries",
        queries.len()
    );
    let known = oracle::known_differences();

    let started = Instant::now();
    let mut differing = Vec::new();
    let mut fixed = Vec::new();
    let mut matched = 0;
    let mut errors = 0;
    let mut empty = 0;
    for (i, q) in queries.iter().enumerate() {
        let times = QueryTimes::of(i);
        let (t_instant, range_start, range_end, step) =
            (times.instant, times.start, times.end, times.step);
        let prometheus_answer = |path: &str| prom.query(path).unwrap_or_else(|e| panic!("{e}"));
        let p_inst = prometheus_answer(&times.instant_path(q));
        let t_inst = Answer::from_engine(engine.instant(&mem, q, t_instant));
        let p_range = prometheus_answer(&times.range_path(q));
        let t_range = Answer::from_engine(engine.range(&mem, q, range_start, range_end, step));
        let ok_inst = agree(&p_inst, &t_inst, order_sensitive(q));
        let ok_range = agree(&p_range, &t_range, false);
        let ok = ok_inst && ok_range;
        match &p_range {
            Answer::Error(_) => errors += 1,
            Answer::Matrix(m) if m.is_empty() => empty += 1,
            _ => {}
        }
        if ok {
            matched += 1;
        }
        match (ok, known.contains_key(q)) {
            (true, true) => fixed.push(q.clone()),
            (false, false) => {
                let mut d = format!("{q}\n");
                if !ok_inst {
                    d.push_str(&format!(
                        "  instant @{t_instant}:\n    prometheus: {}\n    trawler:    {}\n",
                        p_inst.short(),
                        t_inst.short()
                    ));
                }
                if !ok_range {
                    d.push_str(&format!(
                        "  range {range_start}..{range_end} step {step}:\n    prometheus: {}\n    trawler:    {}\n",
                        p_range.short(),
                        t_range.short()
                    ));
                }
                differing.push(d);
            }
            _ => {}
        }
    }
    eprintln!(
        "compliance: {matched}/{} queries equal to Prometheus ({errors} of them errors on both, {empty} empty ranges; {} known differences) in {:.1} s",
        queries.len(),
        known.len(),
        started.elapsed().as_secs_f64()
    );
    let mut failures = String::new();
    if !differing.is_empty() {
        failures.push_str(&format!(
            "{} queries answer differently from Prometheus:\n\n{}\n",
            differing.len(),
            differing.join("\n")
        ));
    }
    if !fixed.is_empty() {
        failures.push_str(&format!(
            "these queries of known_differences.txt now agree; remove them from it:\n{}\n",
            fixed.join("\n")
        ));
    }
    assert!(failures.is_empty(), "{failures}");
}
