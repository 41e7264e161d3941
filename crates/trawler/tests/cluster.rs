//! Cluster mode with real processes on loopback: Debian's nats-server and
//! VictoriaMetrics, the simulator, and several `trawler run --cluster`
//! nodes. `scripts/test` installs both servers (scripts/deps).
//!
//! Evidence comes from the stream itself: every observation a node
//! publishes names the node, the id and the slot, so "every account once
//! per interval, never twice" is checked on exactly what was acknowledged.
//! The tests run one at a time (each starts a whole cluster).

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{
    eventually, free_port, get, http, program, spawn, start_sim, wait_port, Proc, Server,
};
use trawler_cluster::stream::{self, Message};

const INTERVAL_MS: i64 = 5_000;

/// One cluster test at a time: each runs a dozen processes.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// One nats-server with JetStream; `routes` makes it part of a cluster.
fn nats(dir: &Path, name: &str, port: u16, cluster: Option<(u16, &[u16])>) -> Server {
    let store = dir.join(name);
    let mut args = vec![
        "-js".to_owned(),
        "-a".into(),
        "127.0.0.1".into(),
        "-p".into(),
        port.to_string(),
        "-sd".into(),
        store.display().to_string(),
        "--server_name".into(),
        name.into(),
    ];
    if let Some((cport, routes)) = cluster {
        args.extend([
            "--cluster_name".into(),
            "trawler-test".into(),
            "--cluster".into(),
            format!("nats://127.0.0.1:{cport}"),
            "--routes".into(),
            routes
                .iter()
                .map(|p| format!("nats://127.0.0.1:{p}"))
                .collect::<Vec<_>>()
                .join(","),
        ]);
    }
    let server = spawn(
        &program("nats-server"),
        &args,
        &dir.join(format!("{name}.log")),
    );
    wait_port(port, "nats-server");
    server
}

fn victoria(dir: &Path, port: u16) -> Server {
    let server = spawn(
        &program("victoria-metrics"),
        &[
            format!("-httpListenAddr=127.0.0.1:{port}"),
            format!("-storageDataPath={}", dir.join("vm").display()),
            "-dedup.minScrapeInterval=1ms".into(),
            "-search.latencyOffset=0s".into(),
            "-loggerLevel=ERROR".into(),
        ],
        &dir.join("vm.log"),
    );
    wait_port(port, "victoria-metrics");
    server
}

fn node(
    name: &str,
    nats: &[u16],
    vm: u16,
    sim: SocketAddr,
    ids: &str,
    interval: &str,
) -> (Proc, SocketAddr) {
    node_with(name, nats, vm, sim, ids, interval, &[])
}

/// [`node`] with more flags.
fn node_with(
    name: &str,
    nats: &[u16],
    vm: u16,
    sim: SocketAddr,
    ids: &str,
    interval: &str,
    extra: &[&str],
) -> (Proc, SocketAddr) {
    let servers = nats
        .iter()
        .map(|p| format!("nats://127.0.0.1:{p}"))
        .collect::<Vec<_>>()
        .join(",");
    let store = format!("victoriametrics=http://127.0.0.1:{vm}");
    let target = format!("http://{sim}");
    let mut args = vec![
        "run",
        "--cluster",
        &servers,
        "--store",
        &store,
        "--target",
        &target,
        "--ids",
        ids,
        "--interval",
        interval,
        // The tests check the fixed grid across nodes ("exactly once per
        // slot"): under `stretch` each node moves its own schedule back
        // after a hiccup of this loaded machine, and a shard's slots with
        // it.
        "--overload",
        "skip",
        "--node-id",
        name,
        "--lease-ttl",
        "3s",
        "--no-suspicious",
        "--listen",
        "127.0.0.1:0",
    ];
    args.extend_from_slice(extra);
    let run = Proc::start(&args);
    let api = run.wait_line("listening on ", Duration::from_secs(60));
    (run, common::addr_of(&api))
}

/// Runs `f` with JetStream on the server at `nats_port`.
fn with_jetstream<T, F: std::future::Future<Output = T>>(
    nats_port: u16,
    f: impl FnOnce(async_nats::jetstream::Context) -> F,
) -> T {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let client = async_nats::connect(format!("nats://127.0.0.1:{nats_port}"))
            .await
            .unwrap();
        f(async_nats::jetstream::new(client)).await
    })
}

/// Every observation row in the stream: (node, id, slot). Retries from the
/// start while a JetStream cluster that just lost a server re-elects its
/// leaders.
fn observations(nats_port: u16) -> Vec<(String, u64, i64)> {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        match read_stream(nats_port) {
            Ok(rows) => return rows,
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "could not read the whole stream: {e}"
                );
                eprintln!("reading the stream: {e}; retrying");
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    }
}

fn read_stream(nats_port: u16) -> Result<Vec<(String, u64, i64)>, String> {
    with_jetstream(nats_port, |js| async move {
        let last = js
            .get_stream(stream::STREAM)
            .await
            .map_err(|e| e.to_string())?
            .info()
            .await
            .map_err(|e| e.to_string())?
            .state
            .messages;
        let rows = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (r, s) = (rows.clone(), seen.clone());
        let follow = stream::follow(&js, "influencers", 0, move |m| {
            s.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if let Message::Observations(b) = m {
                let mut r = r.lock().unwrap();
                for row in b.rows {
                    r.push((b.node.clone(), row.0, row.1));
                }
            }
        });
        // The stream's message count includes the verdict batches, which
        // these tests do not make (--no-suspicious).
        let outcome = tokio::time::timeout(Duration::from_secs(60), async {
            tokio::select! {
                r = follow => r.map_err(|e| e.to_string()).and(Err("the follow ended".to_owned())),
                _ = async {
                    while seen.load(std::sync::atomic::Ordering::Relaxed) < last {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                } => Ok(()),
            }
        })
        .await
        .map_err(|_| "no end of stream within 60 s".to_owned())?;
        outcome?;
        let out = rows.lock().unwrap().clone();
        Ok(out)
    })
}

/// Replicas of the observation stream.
fn stream_replicas(nats_port: u16) -> usize {
    with_jetstream(nats_port, |js| async move {
        let mut stream = js.get_stream(stream::STREAM).await.unwrap();
        stream.info().await.unwrap().config.num_replicas
    })
}

/// No (id, slot) observed twice, whoever observed it.
fn assert_no_double_reads(rows: &[(String, u64, i64)]) {
    let mut seen: HashMap<(u64, i64), &str> = HashMap::new();
    for (node, id, slot) in rows {
        if let Some(other) = seen.insert((*id, *slot), node) {
            panic!("account {id} was read twice for slot {slot}: by {other} and {node}");
        }
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn shards_held(api: SocketAddr) -> (u64, u64) {
    let s = get(api, "/api/v1/influencers/stats");
    (
        s["shardsHeld"].as_u64().unwrap(),
        s["nodes"].as_u64().unwrap(),
    )
}

fn wait_balanced(apis: &[SocketAddr]) {
    eventually(Duration::from_secs(60), || {
        let held: Vec<(u64, u64)> = apis.iter().map(|a| shards_held(*a)).collect();
        let total: u64 = held.iter().map(|h| h.0).sum();
        (total == 256 && held.iter().all(|h| h.1 == apis.len() as u64 && h.0 > 0)).then_some(())
    });
}

#[test]
fn three_nodes_share_the_accounts_survive_a_kill_9_and_rebalance_on_a_join() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let nats_port = free_port();
    let _nats = nats(dir.path(), "n1", nats_port, None);
    let vm_port = free_port();
    let _vm = victoria(dir.path(), vm_port);
    let (_sim, sim) = start_sim(&["--accounts", "30000"]);
    let ids = "1000000..1030000";
    let mut nodes: Vec<(Proc, SocketAddr)> = ["node-1", "node-2", "node-3"]
        .iter()
        .map(|n| node(n, &[nats_port], vm_port, sim, ids, "5s"))
        .collect();
    let apis: Vec<SocketAddr> = nodes.iter().map(|n| n.1).collect();
    wait_balanced(&apis);

    // Steady state: three whole intervals after the shards settled.
    let from = now_ms().div_euclid(INTERVAL_MS) * INTERVAL_MS + 2 * INTERVAL_MS;
    let to = from + 3 * INTERVAL_MS;
    std::thread::sleep(Duration::from_millis((to - now_ms() + 2_000).max(0) as u64));
    let rows = observations(nats_port);
    assert_no_double_reads(&rows);
    let mut per_id: HashMap<u64, Vec<i64>> = HashMap::new();
    let mut by_node: BTreeMap<&str, usize> = BTreeMap::new();
    for (node, id, slot) in &rows {
        if (from..to).contains(slot) {
            per_id.entry(*id).or_default().push(*slot);
            *by_node.entry(node.as_str()).or_default() += 1;
        }
    }
    assert_eq!(per_id.len(), 30_000, "accounts observed in the window");
    for (id, slots) in &per_id {
        assert_eq!(
            slots.len(),
            3,
            "account {id}: slots {slots:?} in 3 intervals"
        );
    }
    eprintln!("observations per node in 3 intervals: {by_node:?}");
    for n in by_node.values() {
        assert!((20_000..=40_000).contains(n), "unbalanced: {by_node:?}");
    }
    // Every node answers for every account, and series come from VictoriaMetrics.
    for api in &apis {
        let stats = get(*api, "/api/v1/influencers/stats");
        assert_eq!(stats["crawledAccounts"], 30_000, "{stats}");
        // The whole cluster's schedule: 30,000 accounts every 5 s.
        assert_eq!(stats["intervalMs"], 5_000, "{stats}");
        let needed = stats["neededPerSecond"].as_f64().unwrap();
        assert!((needed - 6_000.0).abs() < 0.01, "{stats}");
        assert!(
            stats["effectiveIntervalMs"].as_f64().unwrap() >= 5_000.0,
            "{stats}"
        );
    }
    let series = get(
        apis[0],
        &format!("/api/v1/influencers/1000007/series?metric=followerRatio&from={from}&to={to}"),
    );
    assert_eq!(series["points"].as_array().unwrap().len(), 3, "{series}");
    // The Prometheus API answers from VictoriaMetrics the same points, on
    // every node, derived metrics included (a range selector returns the
    // raw samples of `[from, to]`).
    let expected: Vec<(i64, String)> = series["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p[0].as_i64().unwrap(),
                trawler_promql::format_value(p[1].as_f64().unwrap()),
            )
        })
        .collect();
    for api in &apis {
        let q = get(
            *api,
            &format!(
                "/api/v1/query?query=followerRatio%7Bpk%3D%221000007%22%7D%5B{}ms%5D&time={:.3}",
                to - from,
                to as f64 / 1000.0
            ),
        );
        let got: Vec<(i64, String)> = q["data"]["result"][0]["values"]
            .as_array()
            .unwrap_or_else(|| panic!("{q}"))
            .iter()
            .map(|p| {
                (
                    (p[0].as_f64().unwrap() * 1000.0).round() as i64,
                    p[1].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        assert_eq!(got, expected, "{q}");
    }

    // kill -9 one node: its shards move to the others.
    let killed_at = now_ms();
    nodes[2].0.kill9();
    let survivors = [apis[0], apis[1]];
    wait_balanced(&survivors);
    std::thread::sleep(Duration::from_millis(3 * INTERVAL_MS as u64));
    let rows = observations(nats_port);
    assert_no_double_reads(&rows);
    let mut last_by_dead: HashMap<u64, i64> = HashMap::new();
    let mut first_after: HashMap<u64, i64> = HashMap::new();
    for (node, id, slot) in &rows {
        if node == "node-3" {
            let e = last_by_dead.entry(*id).or_insert(*slot);
            *e = (*e).max(*slot);
        }
    }
    for (node, id, slot) in &rows {
        if node != "node-3" && last_by_dead.contains_key(id) && *slot > killed_at - INTERVAL_MS {
            let e = first_after.entry(*id).or_insert(*slot);
            *e = (*e).min(*slot);
        }
    }
    assert!(!last_by_dead.is_empty());
    let mut longest_gap = 0;
    let mut slowest_takeover = 0;
    for (id, last) in &last_by_dead {
        let first = *first_after
            .get(id)
            .unwrap_or_else(|| panic!("account {id} of the killed node was never polled again"));
        longest_gap = longest_gap.max(first - last);
        slowest_takeover = slowest_takeover.max(first - killed_at);
    }
    eprintln!(
        "kill -9: longest gap between samples of an account {longest_gap} ms, taken over at most {slowest_takeover} ms after the kill"
    );
    assert!(
        slowest_takeover <= 2 * INTERVAL_MS,
        "the killed node's accounts were polled again only {slowest_takeover} ms after the kill"
    );

    // A node joins: shards rebalance, nobody reads an account twice.
    let joined = node("node-4", &[nats_port], vm_port, sim, ids, "5s");
    let apis = [apis[0], apis[1], joined.1];
    wait_balanced(&apis);
    std::thread::sleep(Duration::from_millis(2 * INTERVAL_MS as u64));
    let rows = observations(nats_port);
    assert_no_double_reads(&rows);
    let joined_rows = rows.iter().filter(|r| r.0 == "node-4").count();
    assert!(
        joined_rows > 5_000,
        "the new node polled only {joined_rows}"
    );
    nodes.push(joined);
}

#[test]
fn cluster_movers_follow_the_embedded_definition_across_a_clock_hour() {
    // Movers mean the same in both modes: gain over the hour = a current
    // value − the first value of the previous clock hour, from references
    // fed by the followed stream (and restored from VictoriaMetrics at
    // start-up). The job's clock is shifted so that a clock hour begins
    // 20 s after the start, as in clock_edges.rs for the embedded mode.
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let (nats_port, vm_port) = (free_port(), free_port());
    let _nats = nats(dir.path(), "n1", nats_port, None);
    let _vm = victoria(dir.path(), vm_port);
    let (_sim, sim) = start_sim(&["--accounts", "3000", "--seed", "11"]);
    let real = now_ms();
    let boundary = (real.div_euclid(common::HOUR_MS) + 1) * common::HOUR_MS;
    let offset_ms = boundary - 20_000 - real;
    let offset = format!("--clock-offset=+{offset_ms}ms");
    let (mut run, api) = node_with(
        "node-1",
        &[nats_port],
        vm_port,
        sim,
        "1000000..1003000",
        "2s",
        &[&offset],
    );
    let job_now = || now_ms() + offset_ms;
    // A few intervals into the new hour, then the gains must hold against
    // the series in VictoriaMetrics (retried while its import catches up
    // with the views).
    eventually(Duration::from_secs(120), || {
        (job_now() > boundary + 10_000).then_some(())
    });
    let checked = eventually(Duration::from_secs(60), || {
        common::try_gainers(api, boundary)
            .map_err(|e| eprintln!("not yet: {e}"))
            .ok()
            .filter(|&n| n > 0)
    });
    eprintln!("{checked} gainers checked");
    assert!(run.terminate(Duration::from_secs(30)).success());
}

#[test]
fn killing_one_of_three_nats_servers_loses_no_acknowledged_sample() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let routes: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let mut servers: Vec<Server> = (0..3)
        .map(|i| {
            nats(
                dir.path(),
                &format!("n{}", i + 1),
                ports[i],
                Some((routes[i], &routes)),
            )
        })
        .collect();
    let vm_port = free_port();
    let _vm = victoria(dir.path(), vm_port);
    let (_sim, sim) = start_sim(&["--accounts", "6000"]);
    let ids = "1000000..1006000";
    // Nodes know every server; the replicated stream needs the JetStream
    // cluster to have elected its leaders, which the nodes wait for.
    let mut nodes: Vec<(Proc, SocketAddr)> = ["node-1", "node-2"]
        .iter()
        .map(|n| node(n, &ports, vm_port, sim, ids, "2s"))
        .collect();
    let apis: Vec<SocketAddr> = nodes.iter().map(|n| n.1).collect();
    wait_balanced(&apis);
    std::thread::sleep(Duration::from_secs(4));

    assert_eq!(stream_replicas(ports[1]), 3, "the stream is replicated");
    servers[0].kill9();
    std::thread::sleep(Duration::from_secs(10));
    let mut acknowledged: HashMap<String, u64> = HashMap::new();
    for (i, (proc_, _)) in nodes.iter_mut().enumerate() {
        assert!(proc_.terminate(Duration::from_secs(60)).success());
        let n: u64 = proc_
            .wait_line("acknowledged observations ", Duration::from_secs(5))
            .parse()
            .unwrap();
        acknowledged.insert(format!("node-{}", i + 1), n);
    }
    let rows = observations(ports[1]);
    assert_no_double_reads(&rows);
    for (node, n) in &acknowledged {
        let in_stream = rows.iter().filter(|r| &r.0 == node).count() as u64;
        eprintln!("{node}: acknowledged {n}, in the replicated stream {in_stream}");
        assert!(*n > 0);
        assert!(
            in_stream >= *n,
            "{node} acknowledged {n} observations, the stream holds {in_stream}"
        );
    }
}

/// `(id, slot)` of every followerCount sample VictoriaMetrics holds.
fn vm_samples(vm_port: u16) -> HashSet<(u64, i64)> {
    let vm = SocketAddr::from(([127, 0, 0, 1], vm_port));
    let r = http(
        vm,
        "GET",
        "/api/v1/export?match[]=followerCount%7Bjob%3D%22influencers%22%7D&start=0",
        None,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let mut out = HashSet::new();
    for line in r.body.lines().filter(|l| !l.is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let id: u64 = v["metric"]["pk"].as_str().unwrap().parse().unwrap();
        for t in v["timestamps"].as_array().unwrap() {
            out.insert((id, t.as_i64().unwrap()));
        }
    }
    out
}

#[test]
fn victoriametrics_down_for_30_s_loses_nothing_and_the_backlog_drains() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let nats_port = free_port();
    let _nats = nats(dir.path(), "n1", nats_port, None);
    let vm_port = free_port();
    let mut vm = victoria(dir.path(), vm_port);
    let (_sim, sim) = start_sim(&["--accounts", "3000"]);
    let (mut run, api) = node(
        "node-1",
        &[nats_port],
        vm_port,
        sim,
        "1000000..1003000",
        "2s",
    );
    eventually(Duration::from_secs(30), || {
        (get(api, "/api/v1/influencers/stats")["samplesStored"].as_u64()? > 0).then_some(())
    });

    vm.terminate();
    std::thread::sleep(Duration::from_secs(30));
    let vm = victoria(dir.path(), vm_port);
    // The backlog drains: the writer's import failures are behind it.
    eventually(Duration::from_secs(60), || {
        let metrics = http(api, "GET", "/metrics", None).body;
        let value = |name: &str| -> Option<f64> {
            metrics
                .lines()
                .find(|l| l.starts_with(name))?
                .rsplit(' ')
                .next()?
                .parse()
                .ok()
        };
        (value("trawler_vm_import_failures_total")? > 0.0
            && value("trawler_vm_backlog_messages")? == 0.0
            && value("trawler_cluster_acknowledged_observations_total")? > 0.0)
            .then_some(())
    });
    assert!(run.terminate(Duration::from_secs(60)).success());
    let acknowledged: usize = run
        .wait_line("acknowledged observations ", Duration::from_secs(5))
        .parse()
        .unwrap();

    let in_stream: HashSet<(u64, i64)> = observations(nats_port)
        .into_iter()
        .map(|(_, id, slot)| (id, slot))
        .collect();
    assert!(
        in_stream.len() >= acknowledged,
        "{acknowledged} observations acknowledged, {} in the stream",
        in_stream.len()
    );
    // Everything the stream holds reaches VictoriaMetrics.
    let mut missing = usize::MAX;
    eventually(Duration::from_secs(60), || {
        let stored = vm_samples(vm_port);
        missing = in_stream.difference(&stored).count();
        (missing == 0).then_some(())
    });
    eprintln!(
        "{acknowledged} observations acknowledged, all in VictoriaMetrics after a 30 s outage"
    );
    drop(vm);
}

/// `trawler run ARGS` that must fail; its stderr.
fn run_fails(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_trawler"))
        .arg("run")
        .args(args)
        .output()
        .unwrap();
    assert!(!out.status.success(), "{args:?} succeeded");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn cluster_settings_are_validated_on_the_command_line_and_in_the_job_file() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let vm = "victoriametrics=http://127.0.0.1:1";
    for (args, expected) in [
        (
            vec!["--store", vm, "--data", data],
            "--store needs --cluster",
        ),
        (
            vec![
                "--cluster",
                "nats://127.0.0.1:1",
                "--target",
                "http://127.0.0.1:2",
            ],
            "--cluster needs --store",
        ),
        (
            vec!["--cluster", "127.0.0.1:4222", "--store", vm],
            "not a nats://",
        ),
        (
            vec![
                "--cluster",
                "nats://127.0.0.1:1",
                "--store",
                "vm=http://127.0.0.1:1",
            ],
            "expected victoriametrics=",
        ),
    ] {
        let stderr = run_fails(&args);
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }

    let job = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../jobs/mockstagram.toml"
    ))
    .unwrap();
    let path = dir.path().join("cluster-job.toml");
    std::fs::write(
        &path,
        format!("{job}\n[cluster]\nservers = [\"nats://127.0.0.1:1\"]\nstore = \"victoriametrics=http://127.0.0.1:1\"\nlease_tll = \"5s\"\n"),
    )
    .unwrap();
    let stderr = run_fails(&["--config", path.to_str().unwrap()]);
    assert!(
        stderr.contains("cluster-job.toml") && stderr.contains("lease_tll"),
        "{stderr}"
    );
    std::fs::write(
        &path,
        format!("{job}\n[cluster]\nservers = [\"nats://127.0.0.1:1\"]\nstore = \"victoriametrics=http://127.0.0.1:1\"\nlease_ttl = \"soon\"\n"),
    )
    .unwrap();
    let stderr = run_fails(&["--config", path.to_str().unwrap()]);
    assert!(
        stderr.contains("cluster-job.toml") && stderr.contains("lease_ttl"),
        "{stderr}"
    );
}
