//! `trawler gen`: workload generators for the stream jobs, and URL lists
//! for batch jobs (`trawler gen urls`, in [`urls`]).
//!
//! `trawler gen expo` writes the events of the A/B-test workload
//! (`trawler_sim::expo`, format in `docs/STREAMS.md`), `trawler gen
//! comments` those of the top-N workload (`trawler_sim::comments`), to
//! stdout, a file
//! (gzip with a `.gz` name), a stream job's HTTP endpoint or a NATS
//! JetStream subject, at a target rate.
//!
//! One producer (this thread) draws batches of `--batch` events and hands
//! each to a [`Sink`] when it is due: batch `k` starting at event `i` is due
//! `i / rate` seconds after the start, and the producer sleeps until then,
//! so the rate holds without busy-waiting and a slow sink shows as falling
//! behind rather than as a burst later. The network sinks send on a tokio
//! runtime of their own, a bounded number of batches in flight.

mod http;
mod nats;
mod sink;
pub mod subscribers;
pub mod urls;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use clap::Subcommand;
use trawler_sim::comments::{Comments, CommentsConfig};
use trawler_sim::expo::{Expo, ExpoConfig};

use crate::cli::mockstagram::parse_duration;

/// Which workload to generate.
#[derive(Debug, Subcommand)]
pub enum Gen {
    /// Events of users in A/B tests (the `expo` stream job's input), as NDJSON.
    Expo(ExpoArgs),
    /// Comments under posts (the `comments` top-N job's input), as NDJSON.
    Comments(CommentsArgs),
    /// Readers of a top-N job: SSE subscriptions, delivery latency.
    Subscribers(subscribers::SubscribersArgs),
    /// A list of image URLs for a batch job (`trawler crawl`), served by `trawler sim images`.
    Urls(urls::UrlsArgs),
}

/// Generate the events of the `expo` workload: users in A/B tests viewing,
/// clicking, adding to carts and buying (docs/STREAMS.md).
///
/// Same seed and flags, same events. Event time: with `--start now` (the
/// default) it follows the wall clock (event i at start + i/rate, or the
/// clock itself with `--rate 0`); with a fixed `--start` it advances by
/// 1/time-rate per event (`--time-rate`, default `--rate`), whatever the
/// pace, so a file of historic events can be written as fast as possible
/// with `--rate 0 --time-rate 50000`.
///
/// Ends after `--events` or `--duration`, whichever comes first, and prints
/// `gen: events=… seconds=… events_per_s=…` on stderr (events delivered:
/// written, answered 2xx, or acknowledged), with `http_errors=…` or
/// `publish_errors=…` for the network outputs.
#[derive(Debug, clap::Args)]
pub struct ExpoArgs {
    #[command(flatten)]
    pub output: OutputArgs,
    /// Number of experiments (`e1`…).
    #[arg(long, default_value_t = 20)]
    pub experiments: u32,
    /// Variants per experiment (`control`, `A`, `B`; with more than 3:
    /// `control`, `v1`…).
    #[arg(long, default_value_t = 3)]
    pub variants: u32,
    /// Each user is in 1 to this many experiments.
    #[arg(long, default_value_t = 4)]
    pub experiments_per_user: u32,
    /// Number of users (`u1`…, Zipf-like popularity).
    #[arg(long, default_value_t = 1_000_000)]
    pub users: u64,
    /// Exponent of the users' popularity.
    #[arg(long, default_value_t = 1.1)]
    pub zipf_s: f64,
    /// Share of events of a type no metric uses (heartbeat, scroll, impression).
    #[arg(long, default_value_t = 0.3)]
    pub useless_share: f64,
    /// Share of events whose time is moved back by up to 20 s (within the
    /// job's 30 s lateness).
    #[arg(long, default_value_t = 0.01)]
    pub late_share: f64,
    /// Share of events moved back by 2 to 5 minutes (beyond the lateness:
    /// the job drops them).
    #[arg(long, default_value_t = 0.0)]
    pub too_late_share: f64,
}

/// Generate the comments of the `comments` top-N workload: users
/// commenting under posts, a few posts viral (docs/TOPN.md).
///
/// Same seed and flags, same events; event time as for `trawler gen expo`.
#[derive(Debug, clap::Args)]
pub struct CommentsArgs {
    #[command(flatten)]
    pub output: OutputArgs,
    /// Number of posts (`p1`…, Zipf-like popularity).
    #[arg(long, default_value_t = 100_000)]
    pub posts: u64,
    /// Number of users (`u1`…, Zipf-like activity).
    #[arg(long, default_value_t = 5_000_000)]
    pub users: u64,
    /// Exponent of the posts' popularity.
    #[arg(long, default_value_t = 1.2)]
    pub post_s: f64,
    /// Exponent of the users' activity.
    #[arg(long, default_value_t = 1.0)]
    pub user_s: f64,
    /// Share of events moved back by up to 5 s (within the job's 10 s
    /// lateness).
    #[arg(long, default_value_t = 0.02)]
    pub late_share: f64,
    /// Share of events moved back by 20 to 60 s (beyond the lateness).
    #[arg(long, default_value_t = 0.0)]
    pub too_late_share: f64,
}

/// Where the events go and how fast: the flags every generator shares.
#[derive(Debug, clap::Args)]
pub struct OutputArgs {
    /// Where the events go: `-` (stdout), a file (`.gz`: gzip),
    /// `http://HOST:PORT/api/v1/streams/{job}/events` (POST NDJSON batches)
    /// or `nats://HOST:PORT/SUBJECT` (JetStream, one batch per message,
    /// acknowledged).
    #[arg(long, default_value = "-")]
    pub out: String,
    /// Seed of every drawn value.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Events per second (0 = as fast as the output takes them).
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// Stop after this many events.
    #[arg(long)]
    pub events: Option<u64>,
    /// Stop after this long, e.g. `30s`, `5m`.
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Event time of the first event: `now`, unix milliseconds, or RFC 3339
    /// (`2025-12-01T00:00:00Z`).
    #[arg(long, default_value = "now")]
    pub start: String,
    /// Events per second of event time (default: `--rate`); required with a
    /// fixed `--start` and `--rate 0`.
    #[arg(long)]
    pub time_rate: Option<f64>,
    /// Events per batch: per HTTP request, per NATS message, per write.
    #[arg(long, default_value_t = 2_000)]
    pub batch: usize,
    /// HTTP: requests in flight at once, each on its own keep-alive
    /// connection.
    #[arg(long, default_value_t = 4)]
    pub connections: usize,
    /// NATS: most messages published and not yet acknowledged.
    #[arg(long, default_value_t = 256)]
    pub pending: usize,
    /// HTTP: gzip each request body (`Content-Encoding: gzip`).
    #[arg(long)]
    pub gzip: bool,
    /// HTTP: the job's API token (`trawler run --api-token`).
    #[arg(long, env = "TRAWLER_API_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

/// Runs the chosen generator.
pub fn run(gen: Gen) -> anyhow::Result<()> {
    match gen {
        Gen::Expo(args) => expo(args),
        Gen::Comments(args) => comments(args),
        Gen::Subscribers(args) => subscribers::run(args),
        Gen::Urls(args) => urls::run(args),
    }
}

/// The generators a stream job can name in `[stream] generator`.
pub const GENERATORS: &[&str] = &["expo", "comments"];

/// Feeds a running stream job from its built-in generator (`trawler run
/// --gen RATE`): the generator's defaults, event time following the clock,
/// posted to `url` until the process ends. Blocks; run it on a thread.
pub fn feed(generator: &str, rate: f64, url: &str, token: Option<String>) -> anyhow::Result<()> {
    /// The generator's own command line, so the demo gets exactly the
    /// defaults `trawler gen` documents.
    #[derive(clap::Parser)]
    struct Line {
        #[command(subcommand)]
        gen: Gen,
    }
    let rate = rate.to_string();
    let line =
        <Line as clap::Parser>::try_parse_from(["gen", generator, "--rate", &rate, "--out", url])
            .map_err(|e| anyhow::anyhow!("the built-in generator {generator:?}: {e}"))?;
    match line.gen {
        Gen::Expo(mut args) => {
            args.output.token = token;
            expo(args)
        }
        Gen::Comments(mut args) => {
            args.output.token = token;
            comments(args)
        }
        Gen::Subscribers(_) | Gen::Urls(_) => bail!("{generator:?} generates no events"),
    }
}

/// How event time advances.
#[derive(Debug, Clone, Copy, PartialEq)]
enum EventTime {
    /// Event `i` at `start_ms + i * 1000 / per_s`.
    Spaced { start_ms: f64, per_s: f64 },
    /// The wall clock when the batch is drawn.
    Clock,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Parses `--start`: `None` for `now`, else unix milliseconds.
fn parse_start(s: &str) -> anyhow::Result<Option<i64>> {
    if s == "now" {
        return Ok(None);
    }
    if let Ok(ms) = s.parse::<i64>() {
        return Ok(Some(ms));
    }
    let t = humantime::parse_rfc3339_weak(s).with_context(|| {
        format!(
            "--start {s:?}: expected `now`, unix milliseconds or RFC 3339 (2025-12-01T00:00:00Z)"
        )
    })?;
    let ms = t
        .duration_since(UNIX_EPOCH)
        .context("--start before 1970")?
        .as_millis();
    Ok(Some(ms as i64))
}

fn event_time(start: Option<i64>, rate: f64, time_rate: Option<f64>) -> anyhow::Result<EventTime> {
    let per_s = time_rate.unwrap_or(rate);
    if !(per_s >= 0.0 && per_s.is_finite()) {
        bail!("--time-rate must be a number of events per second, got {per_s}");
    }
    Ok(match (start, per_s > 0.0) {
        (_, true) => EventTime::Spaced {
            start_ms: start.unwrap_or_else(now_ms) as f64,
            per_s,
        },
        (None, false) => EventTime::Clock,
        (Some(_), false) => bail!(
            "a fixed --start needs a pace of event time: give --rate N or --time-rate N (events per second of event time)"
        ),
    })
}

fn expo(args: ExpoArgs) -> anyhow::Result<()> {
    // Validate everything, then start anything.
    let model = Expo::new(ExpoConfig {
        seed: args.output.seed,
        experiments: args.experiments,
        variants: args.variants,
        max_experiments_per_user: args.experiments_per_user,
        users: args.users,
        zipf_s: args.zipf_s,
        useless_share: args.useless_share,
        late_share: args.late_share,
        too_late_share: args.too_late_share,
    })
    .context("invalid workload settings")?;
    generate(model, &args.output)
}

fn comments(args: CommentsArgs) -> anyhow::Result<()> {
    let model = Comments::new(CommentsConfig {
        seed: args.output.seed,
        posts: args.posts,
        users: args.users,
        post_s: args.post_s,
        user_s: args.user_s,
        late_share: args.late_share,
        too_late_share: args.too_late_share,
    })
    .context("invalid workload settings")?;
    generate(model, &args.output)
}

/// A workload model: writes event after event.
trait Model {
    fn write_event(&mut self, ts_ms: i64, out: &mut Vec<u8>);
}

impl Model for Expo {
    fn write_event(&mut self, ts_ms: i64, out: &mut Vec<u8>) {
        Expo::write_event(self, ts_ms, out)
    }
}

impl Model for Comments {
    fn write_event(&mut self, ts_ms: i64, out: &mut Vec<u8>) {
        Comments::write_event(self, ts_ms, out)
    }
}

/// Runs `model` to `args`'s output and prints the summary line.
fn generate(model: impl Model, args: &OutputArgs) -> anyhow::Result<()> {
    if !(args.rate >= 0.0 && args.rate.is_finite()) {
        bail!(
            "--rate must be a number of events per second (0 = no limit), got {}",
            args.rate
        );
    }
    if args.batch == 0 {
        bail!("--batch must be at least 1");
    }
    if args.connections == 0 || args.pending == 0 {
        bail!("--connections and --pending must be at least 1");
    }
    let time = event_time(parse_start(&args.start)?, args.rate, args.time_rate)?;
    let target = sink::Target::parse(&args.out)?;
    if args.events.is_none() && args.duration.is_none() && !matches!(target, sink::Target::Stdout) {
        tracing::info!("no --events or --duration: generating until interrupted");
    }
    let sink = target.open(&sink::Options {
        connections: args.connections,
        pending: args.pending,
        gzip: args.gzip,
        token: args.token.clone(),
    })?;
    let plan = Plan {
        rate: args.rate,
        events: args.events,
        duration: args.duration,
        batch: args.batch,
        time,
    };
    let started = Instant::now();
    let report = produce(model, &plan, sink)?;
    let seconds = started.elapsed().as_secs_f64();
    eprintln!(
        "gen: events={} seconds={seconds:.3} events_per_s={:.0}{}",
        report.delivered,
        report.delivered as f64 / seconds.max(1e-9),
        report
            .errors
            .map(|(name, n)| format!(" {name}={n}"))
            .unwrap_or_default()
    );
    if report.delivered < report.generated {
        bail!(
            "{} of {} events were not delivered (see the errors above)",
            report.generated - report.delivered,
            report.generated
        );
    }
    Ok(())
}

/// What to produce and how fast.
#[derive(Debug, Clone)]
struct Plan {
    rate: f64,
    events: Option<u64>,
    duration: Option<Duration>,
    batch: usize,
    time: EventTime,
}

/// Draws batches on schedule and hands them to `sink`; returns its report.
fn produce(
    mut model: impl Model,
    plan: &Plan,
    mut sink: Box<dyn sink::Sink>,
) -> anyhow::Result<sink::Report> {
    let started = Instant::now();
    // With a rate, the duration is a number of events: the run ends on
    // schedule even when the last batch is early.
    let mut limit = plan.events.unwrap_or(u64::MAX);
    if let (Some(d), true) = (plan.duration, plan.rate > 0.0) {
        limit = limit.min((d.as_secs_f64() * plan.rate).ceil() as u64);
    }
    let mut i = 0u64;
    while i < limit {
        if plan.rate > 0.0 {
            let due = started + Duration::from_secs_f64(i as f64 / plan.rate);
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
        }
        if plan.duration.is_some_and(|d| started.elapsed() >= d) {
            break;
        }
        let n = (limit - i).min(plan.batch as u64) as usize;
        let mut out = Vec::with_capacity(n * 140);
        match plan.time {
            EventTime::Spaced { start_ms, per_s } => {
                for k in 0..n as u64 {
                    let ts = start_ms + (i + k) as f64 * 1000.0 / per_s;
                    model.write_event(ts as i64, &mut out);
                }
            }
            EventTime::Clock => {
                let ts = now_ms();
                for _ in 0..n {
                    model.write_event(ts, &mut out);
                }
            }
        }
        sink.send(out, n)?;
        i += n as u64;
    }
    sink.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_parses_now_ms_and_rfc3339() {
        assert_eq!(parse_start("now").unwrap(), None);
        assert_eq!(
            parse_start("1764547200000").unwrap(),
            Some(1_764_547_200_000)
        );
        assert_eq!(
            parse_start("2025-12-01T00:00:00Z").unwrap(),
            Some(1_764_547_200_000)
        );
        assert!(parse_start("yesterday").is_err());
    }

    #[test]
    fn a_fixed_start_needs_a_pace() {
        assert!(event_time(Some(0), 0.0, None).is_err());
        assert_eq!(
            event_time(Some(5), 0.0, Some(10.0)).unwrap(),
            EventTime::Spaced {
                start_ms: 5.0,
                per_s: 10.0
            }
        );
        assert_eq!(event_time(None, 0.0, None).unwrap(), EventTime::Clock);
    }
}
