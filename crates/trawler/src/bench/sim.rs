//! `trawler bench sim`: how fast the simulator answers, measured with `wrk`.
//!
//! The simulator runs in this process on a loopback port; `wrk` (from
//! Debian's package, installed by `scripts/deps` when missing) loads it from a
//! second process with keep-alive connections. Two loads are measured: GETs
//! of random pks (the crawl's pattern) and GETs of a single pk (every request
//! contends on one account's lock). With `--reference-node`, the same loads
//! hit a minimal Node.js server implementing the same contract — the shape of
//! the original single-threaded Express server — so the figures come with a
//! reference measured in the same run on the same machine.

use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context};

/// Options of the simulator benchmark.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Accounts in the simulator.
    #[arg(long, default_value_t = 1_000_000)]
    pub accounts: u32,
    /// Seconds per load.
    #[arg(long, default_value_t = 10)]
    pub duration: u64,
    /// Keep-alive connections wrk opens.
    #[arg(long, default_value_t = 64)]
    pub connections: u32,
    /// wrk threads.
    #[arg(long, default_value_t = 1)]
    pub wrk_threads: u32,
    /// Simulator worker threads (default: one per core).
    #[arg(long)]
    pub workers: Option<usize>,
    /// Also measure a minimal Node.js server with the same contract.
    #[arg(long)]
    pub reference_node: bool,
}

/// Figures parsed from wrk's report.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct WrkReport {
    /// Requests per second.
    pub requests_per_sec: f64,
    /// Median latency, ms.
    pub p50_ms: f64,
    /// 90th percentile latency, ms.
    pub p90_ms: f64,
    /// 99th percentile latency, ms.
    pub p99_ms: f64,
    /// Answers that were not 2xx/3xx.
    pub non_2xx: u64,
    /// Connect, read, write and timeout errors.
    pub socket_errors: u64,
}

const FIRST_PK: u64 = 1_000_000;

/// Makes sure wrk is installed (through scripts/deps when missing).
pub fn ensure_wrk() -> anyhow::Result<()> {
    if which("wrk").is_some() {
        return Ok(());
    }
    let status = Command::new("scripts/deps").arg("wrk").status();
    if !matches!(status, Ok(s) if s.success()) || which("wrk").is_none() {
        bail!("wrk is not installed and scripts/deps could not install it (run from the repository root, as root)");
    }
    Ok(())
}

/// The simulator's GET ceiling for random pks, measured with wrk against an
/// in-process simulator of `accounts` accounts: the reference a crawl rate is
/// compared to.
pub fn ceiling(accounts: u32, seconds: u64) -> anyhow::Result<WrkReport> {
    ensure_wrk()?;
    let args = Args {
        accounts,
        duration: seconds,
        connections: 64,
        wrk_threads: 1,
        workers: None,
        reference_node: false,
    };
    let runtime = tokio::runtime::Runtime::new()?;
    let sim = trawler_sim::SimConfig {
        accounts,
        ..Default::default()
    }
    .build()?;
    let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
    let addr = listener.local_addr()?;
    runtime.spawn(async move { sim.serve(listener, std::future::pending()).await });
    let dir = tempfile_dir()?;
    let script = random_pk_script(&dir, accounts)?;
    let report = wrk(
        &args,
        &format!("http://{addr}/api/v1/influencers/1000000"),
        Some(&script),
    );
    let _ = std::fs::remove_dir_all(&dir);
    report
}

fn random_pk_script(dir: &Path, accounts: u32) -> anyhow::Result<std::path::PathBuf> {
    let script = dir.join("random-pk.lua");
    std::fs::write(
        &script,
        format!(
            "math.randomseed(42)\nrequest = function()\n  return wrk.format(\"GET\", \"/api/v1/influencers/\" .. math.random({FIRST_PK}, {}))\nend\n",
            FIRST_PK + accounts as u64 - 1
        ),
    )?;
    Ok(script)
}

/// Runs the benchmark and prints its figures.
pub fn run(args: Args) -> anyhow::Result<()> {
    ensure_wrk()?;
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    if let Some(workers) = args.workers {
        builder.worker_threads(workers);
    }
    let runtime = builder.build()?;
    let sim = trawler_sim::SimConfig {
        accounts: args.accounts,
        ..Default::default()
    }
    .build()?;
    let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
    let addr = listener.local_addr()?;
    let server = sim.clone();
    runtime.spawn(async move { server.serve(listener, std::future::pending()).await });

    let dir = tempfile_dir()?;
    let script = random_pk_script(&dir, args.accounts)?;

    println!(
        "simulator: {} accounts, {} s per load, wrk {} thread(s) × {} connections, {} cores",
        args.accounts,
        args.duration,
        args.wrk_threads,
        args.connections,
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    );
    let base = format!("http://{addr}");
    let mut summary = Vec::new();
    for (name, path, lua) in [
        (
            "random pk",
            "/api/v1/influencers/1000000",
            Some(script.as_path()),
        ),
        ("one pk", "/api/v1/influencers/1000000", None),
    ] {
        let report = wrk(&args, &format!("{base}{path}"), lua)?;
        print_report("trawler-sim", name, &report);
        summary.push(report);
    }
    let reads = sim.accounts().reads();
    println!("simulator answered {reads} successful GETs in all");

    let mut reference = None;
    if args.reference_node {
        let (child, port) = start_node_reference(&dir, args.accounts)?;
        let mut guard = KillOnDrop(child);
        let url = format!("http://127.0.0.1:{port}/api/v1/influencers/1000000");
        let report = wrk(&args, &url, Some(&script))?;
        print_report("node reference", "random pk", &report);
        reference = Some(report);
        let _ = guard.0.kill();
    }

    let random = &summary[0];
    let mut line = format!(
        "sim: get_per_s={:.0} p50_ms={:.3} p99_ms={:.3} one_pk_get_per_s={:.0}",
        random.requests_per_sec, random.p50_ms, random.p99_ms, summary[1].requests_per_sec
    );
    if let Some(r) = reference {
        line.push_str(&format!(" node_get_per_s={:.0}", r.requests_per_sec));
    }
    println!("{line}");
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

fn print_report(target: &str, load: &str, r: &WrkReport) {
    println!(
        "{target:>15} {load:>9}: {:>9.0} req/s   p50 {:.3} ms   p90 {:.3} ms   p99 {:.3} ms   non-2xx {}   socket errors {}",
        r.requests_per_sec, r.p50_ms, r.p90_ms, r.p99_ms, r.non_2xx, r.socket_errors
    );
}

pub fn wrk(args: &Args, url: &str, script: Option<&Path>) -> anyhow::Result<WrkReport> {
    let mut cmd = Command::new("wrk");
    cmd.arg("--latency")
        .arg(format!("-t{}", args.wrk_threads))
        .arg(format!("-c{}", args.connections))
        .arg(format!("-d{}s", args.duration));
    if let Some(script) = script {
        cmd.arg("-s").arg(script);
    }
    let output = cmd.arg(url).output().context("running wrk")?;
    let text = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!(
            "wrk failed: {}{}",
            text,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    parse_wrk(&text).with_context(|| format!("unexpected wrk output:\n{text}"))
}

/// Parses the parts of wrk's `--latency` report the benchmark prints.
fn parse_wrk(text: &str) -> anyhow::Result<WrkReport> {
    let mut report = WrkReport::default();
    for line in text.lines().map(str::trim) {
        let mut words = line.split_whitespace();
        match (words.next(), words.next()) {
            (Some("Requests/sec:"), Some(v)) => report.requests_per_sec = v.parse()?,
            (Some("50%"), Some(v)) => report.p50_ms = parse_latency(v)?,
            (Some("90%"), Some(v)) => report.p90_ms = parse_latency(v)?,
            (Some("99%"), Some(v)) => report.p99_ms = parse_latency(v)?,
            (Some("Non-2xx"), _) => {
                report.non_2xx = line.rsplit(' ').next().unwrap_or("0").parse()?;
            }
            (Some("Socket"), _) => {
                report.socket_errors = line
                    .split(',')
                    .filter_map(|part| part.split_whitespace().last()?.parse::<u64>().ok())
                    .sum();
            }
            _ => {}
        }
    }
    if report.requests_per_sec == 0.0 {
        bail!("no Requests/sec line");
    }
    Ok(report)
}

/// wrk prints latencies as `812.00us`, `1.23ms` or `2.01s`.
fn parse_latency(v: &str) -> anyhow::Result<f64> {
    let (number, scale) = if let Some(n) = v.strip_suffix("us") {
        (n, 0.001)
    } else if let Some(n) = v.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = v.strip_suffix('s') {
        (n, 1_000.0)
    } else {
        bail!("latency {v:?} has no unit");
    };
    Ok(number.parse::<f64>()? * scale)
}

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The original server's shape: one Node.js process, values in memory, a
/// normal step per GET. Plain `http` (no Express) so it needs no npm install;
/// Express would only be slower.
const NODE_REFERENCE: &str = r#"
const http = require('http');
const n = +process.argv[2], first = 1000000;
const gauss = () => { let u = 1 - Math.random(), v = Math.random();
  return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * v); };
const fol = new Float64Array(n), ing = new Float64Array(n);
for (let i = 0; i < n; i++) { fol[i] = Math.max(Math.round(1e5 * (1 + gauss())), 5000);
  ing[i] = Math.max(Math.round(1e3 * (1 + gauss())), 50); }
const server = http.createServer((req, res) => {
  const m = /^\/api\/v1\/influencers\/(\d+)$/.exec(req.url);
  const i = m ? +m[1] - first : -1;
  if (req.method !== 'GET' || i < 0 || i >= n) { res.writeHead(500, {'content-type': 'application/json'});
    return res.end('{"error":{"name":"InfluencerNotFoundError"}}'); }
  fol[i] = Math.max(Math.round(fol[i] + 1e4 * gauss()), 5000);
  ing[i] = Math.max(Math.round(ing[i] + 100 * gauss()), 50);
  res.writeHead(200, {'content-type': 'application/json'});
  res.end(JSON.stringify({pk: i + first, username: 'influencer-' + (i + first), followerCount: fol[i], followingCount: ing[i]}));
});
server.listen(0, '127.0.0.1', () => console.log(server.address().port));
"#;

fn start_node_reference(dir: &Path, accounts: u32) -> anyhow::Result<(std::process::Child, u16)> {
    let path = dir.join("reference.js");
    std::fs::File::create(&path)?.write_all(NODE_REFERENCE.as_bytes())?;
    let mut child = Command::new("node")
        .arg(&path)
        .arg(accounts.to_string())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("starting node (the reference needs Node.js on PATH)")?;
    let stdout = child.stdout.take().context("node stdout")?;
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line)?;
    let port = line
        .trim()
        .parse()
        .with_context(|| format!("node printed {line:?}"))?;
    std::thread::sleep(Duration::from_millis(200));
    Ok((child, port))
}

fn tempfile_dir() -> anyhow::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("trawler-bench-sim-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

fn which(program: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(program))
        .find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_wrk_report() {
        let text = "Running 2s test @ http://127.0.0.1:1/\n  1 threads and 8 connections\n  Thread Stats   Avg      Stdev     Max   +/- Stdev\n    Latency   101.55us   40.00us   1.20ms   90.00%\n  Latency Distribution\n     50%   95.00us\n     75%  110.00us\n     90%    1.25ms\n     99%    2.01s\n  200000 requests in 2.00s, 30.00MB read\n  Socket errors: connect 0, read 2, write 0, timeout 1\n  Non-2xx or 3xx responses: 7\nRequests/sec: 100000.50\nTransfer/sec:     15.00MB\n";
        let r = parse_wrk(text).unwrap();
        assert_eq!(r.requests_per_sec, 100000.5);
        assert!((r.p50_ms - 0.095).abs() < 1e-9);
        assert!((r.p90_ms - 1.25).abs() < 1e-9);
        assert!((r.p99_ms - 2010.0).abs() < 1e-9);
        assert_eq!(r.non_2xx, 7);
        assert_eq!(r.socket_errors, 3);
        assert!(parse_wrk("garbage").is_err());
    }
}
