//! `trawler store`: an operator's tools for a data folder that no trawler is
//! running on (the store's lock refuses a folder in use): figures, an
//! on-demand compaction, and a full checksum verification.
//!
//! `stats` and `verify` only look: they open the store read-only (the WAL
//! replayed in memory, nothing in the folder created, changed or removed),
//! so inspecting a stopped run's data never alters it. `stats` reads no
//! block's data, so it does not claim a number of corrupt blocks: it prints
//! `verified=false` (and `corrupt_blocks=N` only when opening already found
//! N); `verify` is the command that checks every checksum.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use trawler_store::{Stats, StoreConfig};

use crate::cli::mockstagram::parse_duration;

/// Inspect, compact or verify the store of a data folder.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Print the store's figures: samples, series, blocks, bytes. Read-only;
    /// checksums are not verified (`verified=false`): use `verify`.
    Stats(Target),
    /// Write the head to blocks and merge every day's blocks into one (what
    /// the background thread does for finished days), then apply retention.
    Compact(Target),
    /// Read every block completely and check every checksum; exits 1 when a
    /// block is corrupt, naming its file and series. Read-only.
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
    config.read_only = !matches!(command, Command::Compact(_));
    let store = config
        .open()
        .with_context(|| format!("opening {}", dir.display()))?;
    let before = store.stats();
    match command {
        Command::Stats(_) => {
            progress.finish_and_clear();
            print_stats("store", &before, false);
        }
        Command::Compact(_) => {
            progress.set_message("compacting");
            let started = Instant::now();
            store.flush().context("writing the head to blocks")?;
            store.compact().context("compacting")?;
            let after = store.stats();
            progress.finish_and_clear();
            print_stats("before", &before, false);
            print_stats("after", &after, false);
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
            let after = store.stats();
            print_stats("store", &after, true);
            let corrupt = after.corrupt_blocks;
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

/// One line of figures. Unless every block was `verified`, a count of zero
/// corrupt blocks would be a claim nobody checked: the line then says
/// `verified=false`, with the corrupt blocks found so far only when some were.
fn print_stats(label: &str, s: &Stats, verified: bool) {
    let per_sample = if s.samples > 0 {
        s.bytes_on_disk as f64 / s.samples as f64
    } else {
        0.0
    };
    let checked = match (verified, s.corrupt_blocks) {
        (true, n) => format!("verified=true corrupt_blocks={n}"),
        (false, 0) => "verified=false".to_owned(),
        (false, n) => format!("verified=false corrupt_blocks={n}"),
    };
    println!(
        "{label}: samples={} series={} blocks={} bytes_on_disk={} block_bytes={} wal_bytes={} bytes_per_sample={per_sample:.3} {checked}",
        s.samples, s.series, s.blocks, s.bytes_on_disk, s.block_bytes, s.wal_bytes
    );
}
