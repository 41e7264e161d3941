//! Figures of the live views at the flagship's size: build 1M entities, apply
//! 1M random updates, run 1M of each read, then reads under a concurrent
//! ingest. Prints ns/op and bytes per entity.
//!
//! ```text
//! cargo run --release -p trawler-views --example views_bench [-- entities]
//! ```

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use trawler_views::{Reference, Row, Suspicion, Update, Views, ViewsConfig, Window, LOCK_BATCH};

const FIRST_ID: u64 = 1_000_000;

/// What the store would hand back per entity at start-up.
type Stored = (u64, [Option<i64>; 2], Reference, Option<Suspicion>);

/// xorshift64*: fast, deterministic, good enough for a benchmark.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    /// A standard normal (Box–Muller).
    fn normal(&mut self) -> f64 {
        let u = (self.next() >> 11) as f64 / (1u64 << 53) as f64 + f64::EPSILON;
        let v = (self.next() >> 11) as f64 / (1u64 << 53) as f64;
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }
}

/// Mockstagram's initial values and steps.
fn followers(rng: &mut Rng) -> i64 {
    ((100_000.0 * (1.0 + rng.normal())).round() as i64).max(5_000)
}
fn following(rng: &mut Rng) -> i64 {
    ((1_000.0 * (1.0 + rng.normal())).round() as i64).max(50)
}
fn step(rng: &mut Rng, v: i64) -> i64 {
    (v + (10_000.0 * rng.normal()).round() as i64).max(5_000)
}

/// Percentiles of nanosecond samples.
fn summary(name: &str, mut ns: Vec<u64>) {
    ns.sort_unstable();
    let at = |q: f64| ns[((ns.len() - 1) as f64 * q) as usize];
    println!(
        "  {name:<28} p50 {:>7} ns   p99 {:>7} ns   p99.9 {:>7} ns   max {:>8} ns   ({} samples)",
        at(0.5),
        at(0.99),
        at(0.999),
        ns[ns.len() - 1],
        ns.len()
    );
}

/// Runs `f` `n` times, timing each call.
fn time_each(n: usize, mut f: impl FnMut(usize)) -> Vec<u64> {
    (0..n)
        .map(|i| {
            let t = Instant::now();
            f(i);
            t.elapsed().as_nanos() as u64
        })
        .collect()
}

fn rss_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

fn main() {
    let n: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let views = ViewsConfig::influencers().build().expect("valid config");
    println!("trawler-views bench: {n} entities, LOCK_BATCH = {LOCK_BATCH}");

    // Start-up rebuild from "stored" rows.
    let stored: Vec<Stored> = (0..n)
        .map(|i| {
            let f = followers(&mut rng);
            let reference = Reference {
                hour_ago: Some(step(&mut rng, f)),
                day_ago: Some(step(&mut rng, f)),
            };
            let suspicion = Some(Suspicion {
                suspicious: rng.below(10) == 0,
                checked_at_ms: 0,
            });
            (
                FIRST_ID + i,
                [Some(f), Some(following(&mut rng))],
                reference,
                suspicion,
            )
        })
        .collect();
    let rss_before = rss_bytes();
    let t = Instant::now();
    let loaded = views
        .rebuild(stored.iter().map(|(id, values, reference, suspicion)| Row {
            update: Update {
                id: *id,
                ts_ms: 0,
                values,
                reference: *reference,
            },
            suspicion: *suspicion,
        }))
        .expect("rows match the schema");
    let build = t.elapsed();
    let rss_after = rss_bytes();
    drop(stored);
    println!(
        "\nrebuild: {loaded} entities in {:.0} ms ({:.0} ns/entity)",
        build.as_secs_f64() * 1e3,
        build.as_nanos() as f64 / n as f64
    );
    let report_memory = |when: &str| {
        let m = views.memory();
        let per = |bytes: usize| bytes as f64 / n as f64;
        println!(
            "memory {when}: {:.1} MB heap = {:.1} bytes/entity: table {:.1}, index {:.1}, rank {:.1}, movers {:.1}, suspicious {:.1}",
            m.total() as f64 / 1e6,
            per(m.total()),
            per(m.table),
            per(m.index),
            per(m.rank),
            per(m.movers),
            per(m.suspicious)
        );
    };
    report_memory("after rebuild");
    if let (Some(a), Some(b)) = (rss_before, rss_after) {
        println!(
            "  RSS grew by {:.1} MB during rebuild (includes the build's temporary key vectors)",
            (b.saturating_sub(a)) as f64 / 1e6
        );
    }

    // 1M random updates in ingest batches.
    let mut current: Vec<i64> = (0..n)
        .map(|i| views.entity(FIRST_ID + i).unwrap().values[0].unwrap())
        .collect();
    let updates = 1_000_000usize;
    let mut batch_ns = Vec::new();
    let mut values: Vec<[Option<i64>; 2]> = Vec::with_capacity(LOCK_BATCH);
    let mut ids: Vec<u64> = Vec::with_capacity(LOCK_BATCH);
    let mut refs: Vec<Reference> = Vec::with_capacity(LOCK_BATCH);
    let t_all = Instant::now();
    for b in 0..updates / LOCK_BATCH {
        values.clear();
        ids.clear();
        refs.clear();
        for _ in 0..LOCK_BATCH {
            let i = rng.below(n) as usize;
            let before = current[i];
            current[i] = step(&mut rng, before);
            ids.push(FIRST_ID + i as u64);
            values.push([Some(current[i]), Some(following(&mut rng))]);
            refs.push(Reference {
                hour_ago: Some(before),
                day_ago: Some(step(&mut rng, before)),
            });
        }
        let batch: Vec<Update> = (0..LOCK_BATCH)
            .map(|k| Update {
                id: ids[k],
                ts_ms: 1 + b as i64,
                values: &values[k],
                reference: refs[k],
            })
            .collect();
        let t = Instant::now();
        views.apply(&batch).expect("valid batch");
        batch_ns.push(t.elapsed().as_nanos() as u64);
    }
    let total = t_all.elapsed();
    println!(
        "\nupdates: {} in batches of {LOCK_BATCH} ({:.0} updates/s including generation)",
        updates / LOCK_BATCH * LOCK_BATCH,
        (updates / LOCK_BATCH * LOCK_BATCH) as f64 / total.as_secs_f64()
    );
    let per_update: Vec<u64> = batch_ns.iter().map(|ns| ns / LOCK_BATCH as u64).collect();
    summary("apply, per update", per_update);
    summary("apply, write lock per batch", batch_ns);
    report_memory("after updates");

    // 1M of each read, each call timed.
    println!("\nreads (single thread, each call timed; includes ~20 ns of timer):");
    let q = 1_000_000;
    let random_ids: Vec<u64> = (0..q).map(|_| FIRST_ID + rng.below(n)).collect();
    summary(
        "rank(id)",
        time_each(q, |i| {
            std::hint::black_box(views.rank(random_ids[i]));
        }),
    );
    summary(
        "entity(id) (latest+rank)",
        time_each(q, |i| {
            std::hint::black_box(views.entity(random_ids[i]));
        }),
    );
    summary(
        "stats()",
        time_each(q, |_| {
            std::hint::black_box(views.stats());
        }),
    );
    summary(
        "top(10)",
        time_each(q, |_| {
            std::hint::black_box(views.top(10));
        }),
    );
    summary(
        "top(100)",
        time_each(q / 10, |_| {
            std::hint::black_box(views.top(100));
        }),
    );
    summary(
        "top(1000)",
        time_each(q / 100, |_| {
            std::hint::black_box(views.top(1000));
        }),
    );
    summary(
        "top_gainers(1h, 100)",
        time_each(q / 10, |_| {
            std::hint::black_box(views.top_gainers(Window::Hour, 100));
        }),
    );
    summary(
        "top_losers(24h, 100)",
        time_each(q / 10, |_| {
            std::hint::black_box(views.top_losers(Window::Day, 100));
        }),
    );
    summary(
        "suspicious(after, 100)",
        time_each(q / 10, |i| {
            std::hint::black_box(views.suspicious(Some(random_ids[i]), 100));
        }),
    );

    concurrent(
        &views,
        n,
        "ingest at 16,700 updates/s in batches of 256",
        256,
        Some(16_700),
    );
    concurrent(&views, n, "ingest flat out in batches of 4096", 4096, None);
}

/// Two readers time `entity` calls while one writer applies batches of
/// updates, paced to `rate` updates/s or as fast as it can.
fn concurrent(views: &Views, n: u64, name: &str, batch: usize, rate: Option<u64>) {
    let seconds = 3;
    let stop = AtomicBool::new(false);
    println!("\nreads under {name}, 2 reader threads + 1 writer, {seconds} s (2 shared cores):");
    std::thread::scope(|s| {
        let writer = s.spawn(|| {
            let mut rng = Rng(7);
            let start = Instant::now();
            let mut applied = 0u64;
            let values: Vec<[Option<i64>; 2]> = (0..batch)
                .map(|_| [Some(followers(&mut rng)), Some(following(&mut rng))])
                .collect();
            let mut b = 0;
            while start.elapsed() < Duration::from_secs(seconds) {
                if let Some(rate) = rate {
                    let due = Duration::from_secs_f64(applied as f64 / rate as f64);
                    if let Some(wait) = due.checked_sub(start.elapsed()) {
                        std::thread::sleep(wait);
                    }
                }
                b += 1;
                let batch: Vec<Update> = values
                    .iter()
                    .map(|v| Update {
                        id: FIRST_ID + rng.below(n),
                        ts_ms: 1_000_000 + b,
                        values: v,
                        reference: Reference {
                            hour_ago: v[0].map(|f| f - 1000),
                            day_ago: None,
                        },
                    })
                    .collect();
                views.apply(&batch).expect("valid batch");
                applied += batch.len() as u64;
            }
            stop.store(true, Ordering::Relaxed);
            applied as f64 / start.elapsed().as_secs_f64()
        });
        let readers: Vec<_> = (0..2)
            .map(|r| {
                let stop = &stop;
                s.spawn(move || {
                    let mut rng = Rng(100 + r);
                    let mut ns = Vec::new();
                    while !stop.load(Ordering::Relaxed) {
                        let id = FIRST_ID + rng.below(n);
                        let t = Instant::now();
                        std::hint::black_box(views.entity(id));
                        ns.push(t.elapsed().as_nanos() as u64);
                    }
                    ns
                })
            })
            .collect();
        let rate = writer.join().expect("writer");
        let ns: Vec<u64> = readers
            .into_iter()
            .flat_map(|r| r.join().expect("reader"))
            .collect();
        println!(
            "  writer: {rate:.0} updates/s; readers: {:.0} entity reads/s",
            ns.len() as f64 / seconds as f64
        );
        summary("entity(id) under ingest", ns);
    });
}
