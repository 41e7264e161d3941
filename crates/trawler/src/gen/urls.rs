//! `trawler gen urls`: a URL list pointing at the image simulator, with a
//! chosen share of duplicates, bad URLs and fault paths
//! (`trawler_sim::images::UrlMix`).

use std::io::Write;
use std::path::PathBuf;

use anyhow::{bail, Context};
use trawler_sim::images::UrlMix;

/// Write a list of image URLs for `trawler crawl` (one a line; gzip with a
/// `.gz` name). Hosts are `hN.images.test` (and `slowN`, `downN`), served by
/// `trawler sim images`. Same seed and flags, same list.
#[derive(Debug, clap::Args)]
pub struct UrlsArgs {
    /// Where to write (`-`: stdout; a `.gz` name: gzip).
    #[arg(long, default_value = "-")]
    pub out: String,
    /// Lines to write, duplicates and bad URLs included.
    #[arg(long, default_value_t = 10_000)]
    pub count: u64,
    /// Seed of every draw.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Normal hosts.
    #[arg(long, default_value_t = 1_000)]
    pub hosts: u32,
    /// Slow hosts (each drawn as often as a normal one).
    #[arg(long, default_value_t = 0)]
    pub slow_hosts: u32,
    /// Hosts that reset every connection.
    #[arg(long, default_value_t = 0)]
    pub down_hosts: u32,
    /// Share of lines repeating an earlier URL.
    #[arg(long, default_value_t = 0.05)]
    pub duplicates: f64,
    /// Share of lines that are not valid http URLs.
    #[arg(long, default_value_t = 0.001)]
    pub bad: f64,
    /// Share of URLs with a fault path (broken, text, missing, moved, loop,
    /// flaky, error, huge).
    #[arg(long, default_value_t = 0.01)]
    pub faults: f64,
    /// Share of PNG images.
    #[arg(long, default_value_t = 0.05)]
    pub png: f64,
    /// Share of WebP images.
    #[arg(long, default_value_t = 0.05)]
    pub webp: f64,
}

impl UrlsArgs {
    /// The mix, checked.
    pub fn mix(&self) -> anyhow::Result<UrlMix> {
        for (name, v) in [
            ("--duplicates", self.duplicates),
            ("--bad", self.bad),
            ("--faults", self.faults),
            ("--png", self.png),
            ("--webp", self.webp),
        ] {
            if !(0.0..=1.0).contains(&v) {
                bail!("{name} is a share between 0 and 1, got {v}");
            }
        }
        if self.bad + self.duplicates > 1.0 || self.png + self.webp > 1.0 {
            bail!("--bad + --duplicates and --png + --webp must each be at most 1");
        }
        if self.hosts + self.slow_hosts + self.down_hosts == 0 {
            bail!("--hosts, --slow-hosts and --down-hosts: at least one host");
        }
        Ok(UrlMix {
            seed: self.seed,
            count: self.count,
            hosts: self.hosts,
            slow_hosts: self.slow_hosts,
            down_hosts: self.down_hosts,
            duplicates: self.duplicates,
            bad: self.bad,
            faults: self.faults,
            png: self.png,
            webp: self.webp,
        })
    }
}

/// Writes `mix`'s list to `out` (`-`, a file, `.gz`).
pub fn write(mix: &UrlMix, out: &str) -> anyhow::Result<()> {
    let sink: Box<dyn Write> = if out == "-" {
        Box::new(std::io::stdout().lock())
    } else {
        let path = PathBuf::from(out);
        let file = std::fs::File::create(&path).with_context(|| format!("creating {out}"))?;
        if out.ends_with(".gz") {
            Box::new(flate2::write::GzEncoder::new(
                file,
                flate2::Compression::fast(),
            ))
        } else {
            Box::new(file)
        }
    };
    let mut sink = std::io::BufWriter::with_capacity(1 << 16, sink);
    mix.generate(|line| {
        sink.write_all(line.as_bytes())?;
        sink.write_all(b"\n")
    })
    .with_context(|| format!("writing {out}"))?;
    let inner = sink.into_inner().map_err(|e| e.into_error())?;
    drop(inner);
    Ok(())
}

/// Runs `trawler gen urls`.
pub fn run(args: UrlsArgs) -> anyhow::Result<()> {
    let mix = args.mix()?;
    write(&mix, &args.out)?;
    if args.out != "-" {
        eprintln!("gen: urls={} out={}", args.count, args.out);
    }
    Ok(())
}
