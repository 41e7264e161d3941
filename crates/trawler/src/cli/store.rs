//! `trawler store`: an operator's tools for a data folder that no trawler is
//! running on (the store's lock refuses a folder in use): figures, an
//! on-demand compaction, and a full checksum verification.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use trawler_store::{Stats, StoreConfig};

use crate::cli::mockstagram::parse_duration;

/// Inspect, compact or verify the store of a data folder.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Print the store's figures: samples, series, blocks, bytes.
    Stats(Target),
    /// Write the head to blocks and merge every day's blocks into one (what
    /// the background thread does for finished days), then apply retention.
    Compact(Target),
    /// Read every block completely and check every checksum; exits 1 when a
    /// block is corrupt, naming its file.
    Verify(Target),
}

/// Which store, and how it is kept.
#[derive(Debug, clap::Args)]
pub struct Target {
    /// The data folder of `trawler run` (the store is its `store/` folder).
    #[arg(long, default_value = "trawler-data")]
    pub data: PathBuf,
    /// Retention applied by `compact`: blocks wholly older than this are
    /// dropped. Give the value `trawler run` uses.
    #[arg(long, default_value = "30d", value_parser = parse_duration)]
    pub retention: Duration,
}

/// Runs one `trawler store` command.
pub fn run(command: Command) -> anyhow::Result<()> {
    let (Command::Stats(target) | Command::Compact(target) | Command::Verify(target)) = &command;
    let dir = target.data.join("store");
    if !dir.join("MANIFEST").exists() {
        bail!(
            "{} holds no trawler store (no MANIFEST); is --data the folder `trawler run` used?",
            dir.display()
        );
    }
    let progress = crate::progress::spinner("opening the store");
    let mut config = StoreConfig::new(&dir);
    config.background = false;
    config.retention = target.retention;
    let store = config
        .open()
        .with_context(|| format!("opening {}", dir.display()))?;
    let before = store.stats();
    match command {
        Command::Stats(_) => {
            progress.finish_and_clear();
            print_stats("store", &before);
        }
        Command::Compact(_) => {
            progress.set_message("compacting");
            let started = Instant::now();
            store.flush().context("writing the head to blocks")?;
            store.compact().context("compacting")?;
            let after = store.stats();
            progress.finish_and_clear();
            print_stats("before", &before);
            print_stats("after", &after);
            println!(
                "compacted in {:.1} s: {} → {} bytes on disk, {} → {} blocks",
                started.elapsed().as_secs_f64(),
                before.bytes_on_disk,
                after.bytes_on_disk,
                before.blocks,
                after.blocks
            );
        }
        Command::Verify(_) => {
            progress.set_message("verifying every block");
            for e in store.verify() {
                eprintln!("corrupt: {e}");
            }
            progress.finish_and_clear();
            // Blocks found corrupt when the store opened were reported then
            // (a log line each) and count here too.
            let corrupt = store.stats().corrupt_blocks;
            if corrupt > 0 {
                bail!("{corrupt} block(s) failed verification; the others stay readable");
            }
            println!(
                "verified {} blocks, {} samples: every checksum matches",
                before.blocks, before.samples
            );
        }
    }
    store.close().context("closing the store")?;
    Ok(())
}

fn print_stats(label: &str, s: &Stats) {
    let per_sample = if s.samples > 0 {
        s.bytes_on_disk as f64 / s.samples as f64
    } else {
        0.0
    };
    println!(
        "{label}: samples={} series={} blocks={} bytes_on_disk={} block_bytes={} wal_bytes={} bytes_per_sample={per_sample:.3} corrupt_blocks={}",
        s.samples, s.series, s.blocks, s.bytes_on_disk, s.block_bytes, s.wal_bytes, s.corrupt_blocks
    );
}
