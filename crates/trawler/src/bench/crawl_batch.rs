//! `trawler bench crawl-batch`: a generated list of image URLs through
//! `trawler crawl` against `trawler sim images` on this machine, end to end
//! (download, decode, thumbnail, dHash, batched detector calls, Parquet),
//! then the same list through Scrapy with a Pillow pipeline.
//!
//! 1. `trawler gen urls --count N` (5 % duplicates, 0.1 % bad lines, 0.2 %
//!    fault paths, 1,000 hosts), gzip.
//! 2. `trawler sim images` in its own process (256×256 JPEG mostly).
//! 3. `trawler crawl` in its own process; its CPU time and peak RSS are read
//!    from `/proc` while it runs; its state bytes (log on disk + duplicate
//!    set in memory) from its `summary.json`.
//! 4. The results are checked against the list: rows whose URL appears
//!    twice (`duplicates`) and distinct URLs with neither a row nor a dead
//!    letter (`lost`).
//! 5. Scrapy (scripts/peers/batch_scrapy.py) on the first `--scrapy-urls`
//!    lines of the same list, against the same simulator.
//!
//! Ends with `batch: urls=… urls_per_s=… cpu_ms_per_url=…
//! state_bytes_per_url=… scrapy_urls_per_s=… duplicates=… lost=…`.

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use super::child::{self, Listening, TempDir};

/// Flags of `trawler bench crawl-batch`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Lines of the URL list.
    #[arg(long, default_value_t = 1_000_000)]
    pub urls: u64,
    /// Lines of the list Scrapy gets (it is far slower; its rate is per
    /// URL either way).
    #[arg(long, default_value_t = 20_000)]
    pub scrapy_urls: u64,
    /// Skip Scrapy.
    #[arg(long)]
    pub no_scrapy: bool,
    /// Latency of each detector call of the simulator.
    #[arg(long, default_value = "20ms", value_parser = crate::cli::mockstagram::parse_duration)]
    pub detector_latency: Duration,
}

fn repo() -> PathBuf {
    let built = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    if built.join("scripts/peers").is_dir() {
        return built.canonicalize().unwrap_or(built);
    }
    std::env::current_dir().unwrap_or_default()
}

/// `key=value` of a summary line.
fn field(line: &str, key: &str) -> Option<f64> {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
        .and_then(|v| v.parse().ok())
}

/// Runs the benchmark.
pub fn run(args: Args) -> anyhow::Result<()> {
    let dir = TempDir::new("crawl-batch");
    std::fs::create_dir_all(&dir.0)?;
    let list = dir.0.join("urls.txt.gz");
    let started = Instant::now();
    let gen = child::this_binary()?
        .args(["gen", "urls", "--count", &args.urls.to_string()])
        .args(["--hosts", "1000", "--faults", "0.002", "--bad", "0.001"])
        .args(["--duplicates", "0.05", "--out"])
        .arg(&list)
        .status()?;
    if !gen.success() {
        bail!("trawler gen urls failed");
    }
    println!(
        "list: {} lines in {:.1}s ({})",
        args.urls,
        started.elapsed().as_secs_f64(),
        list.display()
    );
    let sim = Listening::start(
        {
            let mut c = child::this_binary()?;
            c.args(["sim", "images", "--listen", "127.0.0.1:0"])
                .args([
                    "--detector-latency",
                    &format!("{}ms", args.detector_latency.as_millis()),
                ])
                .args(["--huge-bytes", "5000000"]);
            c
        },
        "trawler sim images",
    )?;
    let sim_addr = sim.addr;
    println!("simulator: http://{sim_addr}");

    // trawler crawl, in its own process, its stdout into a file.
    let data = dir.0.join("data");
    let out_path = dir.0.join("crawl.out");
    let sim_cpu0 = child::cpu_seconds(sim.pid());
    let t0 = Instant::now();
    let mut crawl = child::this_binary()?
        .args(["crawl", "--urls"])
        .arg(&list)
        .arg("--data")
        .arg(&data)
        .args(["--connect-to", &sim_addr.to_string()])
        .args(["--detector", &format!("http://{sim_addr}/detect")])
        .args(["--listen", "127.0.0.1:0"])
        .stdout(std::fs::File::create(&out_path)?)
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting trawler crawl")?;
    let pid = crawl.id();
    let (mut cpu, mut peak) = (0.0f64, 0.0f64);
    let status = loop {
        if let Some(s) = crawl.try_wait()? {
            break s;
        }
        cpu = cpu.max(child::cpu_seconds(pid));
        peak = peak.max(child::peak_rss_mb(pid));
        std::thread::sleep(Duration::from_millis(100));
    };
    let wall = t0.elapsed().as_secs_f64();
    let sim_cpu = child::cpu_seconds(sim.pid()) - sim_cpu0;
    if !status.success() {
        bail!("trawler crawl failed ({status})");
    }
    let out = std::fs::read_to_string(&out_path)?;
    let summary = out
        .lines()
        .find_map(|l| l.strip_prefix("batch: "))
        .context("trawler crawl printed no summary")?
        .to_owned();
    println!("crawl: {summary}");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(data.join("summary.json"))?)?;
    let st = &json["status"];
    let n = |k: &str| st[k].as_u64().unwrap_or(0);
    let lines = n("lines").max(1);
    let urls_per_s = lines as f64 / wall;
    let cpu_ms = cpu * 1000.0 / lines as f64;
    let state_disk = n("log_bytes") as f64 / lines as f64;
    let state_mem = n("seen_set_bytes") as f64 / lines as f64;
    println!(
        "  {lines} lines in {wall:.1}s: {urls_per_s:.0} URLs/s; done {} dead {} duplicates {}; {:.0} MB downloaded",
        n("done"),
        n("dead"),
        n("duplicates"),
        n("bytes") as f64 / 1e6
    );
    println!(
        "  crawler CPU {cpu:.1}s ({cpu_ms:.3} ms/URL), peak RSS {peak:.0} MB; simulator CPU {sim_cpu:.1}s; detector calls {} for {} images",
        n("detector_calls"),
        n("detector_images")
    );
    println!(
        "  state per URL: {state_disk:.1} B on disk (log), {state_mem:.1} B in memory (duplicate set)"
    );

    // Duplicates and lost, from the results against the list.
    let keys = trawler_batch::output::read_keys(&data.join("results"))?;
    let mut rows = HashSet::with_capacity(keys.len());
    let mut duplicates = 0u64;
    for (fp, _) in &keys {
        if !rows.insert(*fp) {
            duplicates += 1;
        }
    }
    let dead: HashSet<u128> = std::fs::read_to_string(data.join("dead.ndjson"))?
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["url"].as_str().map(trawler_batch::input::fingerprint))
        .collect();
    let mut lost = 0u64;
    let mut distinct = HashSet::new();
    let reader = BufReader::new(flate2::read::MultiGzDecoder::new(std::fs::File::open(
        &list,
    )?));
    for line in reader.lines() {
        let line = line?;
        let url = line.trim();
        if url.is_empty() {
            continue;
        }
        let fp = trawler_batch::input::fingerprint(url);
        if distinct.insert(fp) && !rows.contains(&fp) && !dead.contains(&fp) {
            lost += 1;
        }
    }
    println!(
        "  results: {} rows, {} distinct URLs in the list, duplicates={duplicates} lost={lost}",
        keys.len(),
        distinct.len()
    );

    let scrapy = if args.no_scrapy {
        None
    } else {
        Some(scrapy(&args, &dir.0, &list, &sim_addr.to_string())?)
    };
    let scrapy_rate = scrapy.map_or(0.0, |s| s.0);
    if let Some((rate, cpu)) = scrapy {
        println!(
            "scrapy: {rate:.0} URLs/s, {cpu:.3} ms CPU/URL; trawler/scrapy = {:.1}× the rate, {:.1}× less CPU per URL",
            urls_per_s / rate.max(1e-9),
            cpu / cpu_ms.max(1e-9)
        );
    }
    // 2·10⁹ URLs in 7 days is 3,307 URLs/s; with 2 cores per node at the
    // measured CPU per URL (crawler only; real images are larger: the
    // decode cost grows with pixels).
    let per_node = 2000.0 / cpu_ms.max(1e-9);
    println!(
        "nodes for 2e9 URLs in 7 days (3,307 URLs/s) at {cpu_ms:.3} ms CPU/URL on 2-core nodes: {:.1}",
        3307.0 / per_node
    );
    println!(
        "batch: urls={lines} urls_per_s={urls_per_s:.0} cpu_ms_per_url={cpu_ms:.3} state_bytes_per_url={:.1} scrapy_urls_per_s={scrapy_rate:.0} duplicates={duplicates} lost={lost}",
        state_disk + state_mem
    );
    drop(sim);
    Ok(())
}

/// Scrapy's URLs/s and CPU ms per URL.
fn scrapy(args: &Args, dir: &Path, list: &Path, sim: &str) -> anyhow::Result<(f64, f64)> {
    let status = Command::new(repo().join("scripts/peers/setup"))
        .status()
        .context("running scripts/peers/setup")?;
    if !status.success() {
        bail!("scripts/peers/setup failed");
    }
    let python = repo().join("target/peers-venv/bin/python");
    let run = Command::new(python)
        .arg(repo().join("scripts/peers/batch_scrapy.py"))
        .arg(list)
        .args(["--sim", sim, "--limit", &args.scrapy_urls.to_string()])
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .context("running batch_scrapy.py")?;
    let text = String::from_utf8_lossy(&run.stderr).into_owned();
    if !run.status.success() {
        bail!("batch_scrapy.py failed:\n{text}");
    }
    let line = text
        .lines()
        .find(|l| l.starts_with("scrapy:"))
        .with_context(|| format!("batch_scrapy.py printed no summary:\n{text}"))?;
    println!("{line}");
    Ok((
        field(line, "urls_per_s").unwrap_or(0.0),
        field(line, "cpu_ms_per_url").unwrap_or(0.0),
    ))
}
