//! What happens at a clock hour and after a stall, with the real binary
//! against the real simulator. The job's clock is shifted (`--clock-offset`)
//! so that a clock hour comes a few seconds after the start; the code under
//! test is the real one.
//!
//! The flagship once lost 40 % of an interval at every clock hour: at the
//! first observation of each account in a new hour, ingest read the movers'
//! references back from the store, and the crawl stalled behind it.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{check_gainers, eventually, get, http, points, start_run, start_sim, Proc, HOUR_MS};

const SECOND: Duration = Duration::from_secs(1);

fn real_now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

#[test]
fn a_clock_hour_misses_no_slot_and_the_movers_are_right_before_and_after_a_restart() {
    // 1,000 polls/s: within what debug builds of trawler and the simulator
    // sustain on a loaded 2-core CI machine beside the other test.
    let accounts = 12_000u64;
    let (_sim, sim) = start_sim(&["--accounts", &accounts.to_string(), "--seed", "5"]);
    let data = tempfile::tempdir().unwrap();
    // The job's clock starts 15 s before a clock hour: every account has
    // one slot (12 s apart) in the previous hour.
    let now = real_now_ms();
    let boundary = (now.div_euclid(HOUR_MS) + 1) * HOUR_MS;
    let offset_ms = boundary - 15_000 - now;
    let offset = format!("--clock-offset=+{offset_ms}ms");
    let ids = format!("1000000..={}", 1_000_000 + accounts - 1);
    let args = [
        "--ids",
        &ids,
        "--interval",
        "12s",
        "--no-suspicious",
        &offset,
    ];
    let (mut run, api) = start_run(sim, data.path(), &args);

    // Until two intervals past the hour, in the job's clock.
    let job_now = || real_now_ms() + offset_ms;
    eventually(Duration::from_secs(120), || {
        (job_now() > boundary + 24_000).then_some(())
    });
    let stats = get(api, "/api/v1/influencers/stats");
    assert_eq!(stats["missedSlots"], 0, "{stats}");
    assert_eq!(stats["gaps"], 0, "{stats}");
    assert!(stats["polls"].as_u64().unwrap() >= 3 * accounts, "{stats}");
    assert!(check_gainers(api, boundary) > 0, "no gainers over the hour");
    assert!(run.terminate(60 * SECOND).success());

    // A restart in the same clock hour restores the references from the
    // store: the movers are the same function of the stored series.
    let (mut run, api) = start_run(sim, data.path(), &args);
    let restarted = job_now();
    eventually(Duration::from_secs(120), || {
        (job_now() > restarted + 14_000).then_some(())
    });
    assert!(
        check_gainers(api, boundary) > 0,
        "no gainers after the restart"
    );
    assert!(run.terminate(60 * SECOND).success());
}

/// The simulator's read count of `pk`.
fn sim_calls(sim: SocketAddr, pk: u64) -> u64 {
    http(sim, "GET", &format!("/_sim/accounts/{pk}"), None).json()["calls"]
        .as_u64()
        .unwrap()
}

fn signal(proc: &Proc, sig: &str) {
    let status = std::process::Command::new("kill")
        .args([sig, &proc.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

#[test]
fn after_a_15_s_stall_the_crawl_catches_up_within_three_intervals_reading_no_slot_twice() {
    let accounts = 20_000u64;
    let interval_ms = 20_000i64;
    let (_sim, sim) = start_sim(&["--accounts", &accounts.to_string(), "--seed", "9"]);
    let data = tempfile::tempdir().unwrap();
    let ids = format!("1000000..={}", 1_000_000 + accounts - 1);
    let (mut run, api) = start_run(
        sim,
        data.path(),
        // `skip`: the grid stays and the crawl catches up; `stretch` (the
        // default) would move the schedule back by the stall instead.
        &[
            "--ids",
            &ids,
            "--interval",
            "20s",
            "--no-suspicious",
            "--overload",
            "skip",
        ],
    );
    let started = Instant::now();
    // Steady state first: every account polled once.
    eventually(Duration::from_secs(120), || {
        let s = get(api, "/api/v1/influencers/stats");
        (s["crawledAccounts"].as_u64() == Some(accounts)).then_some(())
    });
    let before = get(api, "/api/v1/influencers/stats");

    // The whole process stops for 15 s (as a long GC pause, a VM migration
    // or a disk that hangs would stop it), then goes on.
    signal(&run, "-STOP");
    std::thread::sleep(15 * SECOND);
    signal(&run, "-CONT");
    let resumed = Instant::now();
    let behind = eventually(Duration::from_secs(30), || {
        let s = get(api, "/api/v1/influencers/stats");
        (s["lagP99Ms"].as_f64()? > 1_000.0).then_some(s)
    });
    // Back under a second of lag within three intervals.
    let caught_up = eventually(Duration::from_millis(3 * interval_ms as u64), || {
        let s = get(api, "/api/v1/influencers/stats");
        (s["lagP99Ms"].as_f64()? < 1_000.0 && s["polls"].as_u64()? > behind["polls"].as_u64()?)
            .then_some(s)
    });
    eprintln!(
        "caught up {:.1} s after the stall: {caught_up}",
        resumed.elapsed().as_secs_f64()
    );
    assert_eq!(
        caught_up["missedSlots"], before["missedSlots"],
        "a stall shorter than the interval misses no slot"
    );

    // No slot read twice: each account's samples sit on distinct slots of
    // its phase, and the simulator saw at most one read per sample plus the
    // reads that ended as gaps (a timeout that fired during the stall).
    let mut samples = Vec::new();
    for pk in (1_000_000..1_000_000 + accounts).step_by(997) {
        let points = points(api, pk);
        for w in points.windows(2) {
            let step = w[1].0 - w[0].0;
            assert!(
                step > 0 && step % interval_ms == 0,
                "pk {pk}: samples off their slots: {points:?}"
            );
        }
        samples.push((pk, points.len() as u64, sim_calls(sim, pk)));
    }
    let gaps = get(api, "/api/v1/influencers/stats")["gaps"]
        .as_u64()
        .unwrap();
    let elapsed_slots = started.elapsed().as_millis() as u64 / interval_ms as u64 + 2;
    let mut unexplained = 0;
    for (pk, n, calls) in samples {
        // Read right after the series: one poll may land in between.
        assert!(calls >= n, "pk {pk}: {calls} reads for {n} samples");
        assert!(
            calls <= elapsed_slots,
            "pk {pk}: {calls} reads in {elapsed_slots} slots"
        );
        unexplained += calls.saturating_sub(n + 1);
    }
    assert!(
        unexplained <= gaps,
        "{unexplained} reads without a sample but only {gaps} gaps"
    );
    assert!(run.terminate(60 * SECOND).success());
}
