//! Host metrics the way node_exporter emits them: the store benchmark's
//! third data set, shaped like a real fleet rather than like Mockstagram.
//!
//! Each host exposes eight pairs of series, scraped once a minute
//! (Prometheus's default `scrape_interval`). Values are integers in the
//! unit the kernel counts in, which is what node_exporter's floats carry:
//! USER_HZ ticks (1/100 s), bytes, pages of 4,096 bytes, sectors, events.
//!
//! | pair | series (as [`SERIES`] names them) | kind | model |
//! |---|---|---|---|
//! | 0 | `node_cpu_user_ticks_total`, `node_cpu_idle_ticks_total` | counters | 6,000 ticks per core per minute split by the minute's utilisation |
//! | 1 | `node_memory_MemAvailable_bytes`, `node_memory_Cached_bytes` | gauges | random walks in whole pages; the cache grows, and is reclaimed at 40 % of memory |
//! | 2 | `node_network_receive_bytes_total`, `node_network_transmit_bytes_total` | counters | a per-host rate × the daily cycle × log-normal noise per minute |
//! | 3 | `node_disk_written_bytes_total`, `node_disk_io_time_ms_total` | counters | whole 4 KiB writes; busy time follows utilisation |
//! | 4 | `node_filesystem_avail_bytes`, `node_filesystem_files_free` | gauges | slowly used up, with a clean-up about once a day |
//! | 5 | `node_load1` (×100), `node_procs_running` | gauges | a Poisson-like run queue and its one-minute exponential average |
//! | 6 | `node_context_switches_total`, `node_intr_total` | counters | per-core rates × the daily cycle × noise |
//! | 7 | `node_memory_MemTotal_bytes`, `node_filesystem_size_bytes` | constants | as most of a real exposition is |
//!
//! A host's traits (cores from 2 to 64, memory per core, disk size, base
//! utilisation, network rate, the hour of its daily peak) are drawn once
//! from `(seed, host)`. Utilisation in minute `k` is the base × a daily
//! cycle (±50 %) × normal noise (σ 30 %), clamped to `[0, 1]`. Scrapes are
//! stamped with the scraper's clock: the minute plus the host's phase plus
//! 0–7 ms of timer jitter, so timestamps are not perfectly regular (as in
//! Prometheus).
//!
//! Everything is a pure function of `(seed, host, pair, scrape, previous
//! values)`: counters and gauges carry their previous value, the noise does
//! not depend on the order hosts are generated in.

use crate::rng::{hash, mix, normal, unit};

/// The 16 series of a host, pair by pair (see the module docs).
pub const SERIES: [[&str; 2]; 8] = [
    ["node_cpu_user_ticks_total", "node_cpu_idle_ticks_total"],
    ["node_memory_MemAvailable_bytes", "node_memory_Cached_bytes"],
    [
        "node_network_receive_bytes_total",
        "node_network_transmit_bytes_total",
    ],
    [
        "node_disk_written_bytes_total",
        "node_disk_io_time_ms_total",
    ],
    ["node_filesystem_avail_bytes", "node_filesystem_files_free"],
    ["node_load1_x100", "node_procs_running"],
    ["node_context_switches_total", "node_intr_total"],
    ["node_memory_MemTotal_bytes", "node_filesystem_size_bytes"],
];

const PAGE: f64 = 4_096.0;
const MINUTE_MS: i64 = 60_000;
const STREAM_TRAITS: u64 = 11;
const STREAM_LOAD: u64 = 12;
const STREAM_PAIR: u64 = 13;
const STREAM_JITTER: u64 = 14;

/// The fixed traits of one host.
#[derive(Debug, Clone, Copy)]
struct Host {
    cores: f64,
    mem_bytes: f64,
    disk_bytes: f64,
    base_util: f64,
    net_bytes_per_s: f64,
    tx_ratio: f64,
    peak_hour: f64,
    phase_ms: i64,
    uptime_min: f64,
}

/// The fleet model; cheap to copy.
#[derive(Debug, Clone, Copy)]
pub struct Hosts {
    seed: u64,
}

impl Hosts {
    /// A fleet whose values are deterministic for `seed`.
    pub fn new(seed: u64) -> Self {
        Self { seed }
    }

    fn host(&self, host: u64) -> Host {
        let h = |i: u64| unit(hash(&[self.seed, host, STREAM_TRAITS, i]));
        let cores = [2.0, 4.0, 4.0, 8.0, 8.0, 16.0, 32.0, 64.0][(h(0) * 8.0) as usize];
        let gib_per_core = [2.0, 4.0, 8.0][(h(1) * 3.0) as usize];
        Host {
            cores,
            mem_bytes: cores * gib_per_core * (1u64 << 30) as f64,
            disk_bytes: [50.0, 100.0, 250.0, 500.0, 1_000.0][(h(2) * 5.0) as usize] * 1e9,
            // Most hosts are quiet, a few are busy.
            base_util: 0.03 + 0.6 * h(3) * h(3),
            net_bytes_per_s: (50_000f64.ln() + 1.5 * normal(hash(&[self.seed, host, 5]))).exp()
                * cores,
            tx_ratio: 0.2 + 1.8 * h(6),
            peak_hour: 24.0 * h(7),
            phase_ms: (h(8) * MINUTE_MS as f64) as i64,
            uptime_min: 1_440.0 * (1.0 + 90.0 * h(9)),
        }
    }

    /// The host's scrape of minute `k`: milliseconds after minute `k`
    /// starts (its phase plus timer jitter).
    pub fn offset_ms(&self, host: u64, k: u64) -> i64 {
        self.host(host).phase_ms.min(MINUTE_MS - 8)
            + (hash(&[self.seed, host, STREAM_JITTER, k]) % 8) as i64
    }

    /// Utilisation of the host in minute `k` (minutes since the epoch of
    /// the data), in `[0, 1]`.
    fn util(&self, host: &Host, id: u64, k: u64) -> f64 {
        let hour = (k % 1_440) as f64 / 60.0;
        let cycle = 1.0 + 0.5 * (std::f64::consts::TAU * (hour - host.peak_hour) / 24.0).cos();
        let noise = 1.0 + 0.3 * normal(hash(&[self.seed, id, STREAM_LOAD, k]));
        (host.base_util * cycle * noise).clamp(0.0, 1.0)
    }

    /// The values of pair `pair` (0..8) of `host` at scrape `k`, given the
    /// values at scrape `k - 1` (`None` for the first scrape).
    pub fn next(&self, host: u64, pair: usize, k: u64, prev: Option<[u64; 2]>) -> [u64; 2] {
        let t = self.host(host);
        let u = self.util(&t, host, k);
        let r = |i: u64| hash(&[self.seed, host, STREAM_PAIR, pair as u64, k, i]);
        let n = |i: u64| normal(r(i));
        let lognormal = |i: u64, sigma: f64| (sigma * n(i)).exp();
        let cycle = 0.5 + u / t.base_util.max(1e-3) * 0.5;
        let round = |x: f64| x.max(0.0).round() as u64;
        let pages = |x: f64| (x.max(0.0) / PAGE).round() as u64 * PAGE as u64;
        let uptime = t.uptime_min + k as f64;
        match pair {
            0 => {
                let total = 6_000.0 * t.cores;
                let user = round(total * u * 0.7 + (total * u).sqrt() * n(0));
                let system = round(total * u * 0.3);
                let idle = (total as u64).saturating_sub(user + system);
                let [pu, pi] = prev.unwrap_or([
                    round(uptime * total * t.base_util * 0.7),
                    round(uptime * total * (1.0 - t.base_util)),
                ]);
                [pu + user, pi + idle]
            }
            1 => {
                let [avail, cached] = prev.unwrap_or([
                    pages(t.mem_bytes * (0.7 - 0.4 * t.base_util)),
                    pages(t.mem_bytes * 0.2),
                ]);
                let avail = (avail as f64 + PAGE * (200.0 * n(0)).round())
                    .clamp(0.05 * t.mem_bytes, 0.95 * t.mem_bytes);
                let mut cached = cached as f64 + PAGE * (50.0 * n(1).abs()).round();
                if cached > 0.4 * t.mem_bytes {
                    cached *= 0.6;
                }
                [pages(avail), pages(cached)]
            }
            2 => {
                let rx = t.net_bytes_per_s * 60.0 * cycle * lognormal(0, 0.5);
                let tx = rx * t.tx_ratio * lognormal(1, 0.3);
                let [prx, ptx] = prev.unwrap_or([
                    round(uptime * 60.0 * t.net_bytes_per_s),
                    round(uptime * 60.0 * t.net_bytes_per_s * t.tx_ratio),
                ]);
                [prx + round(rx), ptx + round(tx)]
            }
            3 => {
                // Some minutes write nothing at all.
                let idle = unit(r(2)) < 0.1 * (1.0 - u);
                let written = if idle {
                    0
                } else {
                    pages(t.cores * 200_000.0 * 60.0 * u * lognormal(0, 0.8))
                };
                let busy = round((60_000.0 * u * 0.3 * lognormal(1, 0.4)).min(60_000.0));
                let [pw, pb] = prev.unwrap_or([
                    round(uptime * t.cores * 1e7 * t.base_util),
                    round(uptime * 18_000.0 * t.base_util),
                ]);
                [pw + written, pb + busy]
            }
            4 => {
                let [avail, files] = prev.unwrap_or([
                    pages(t.disk_bytes * (0.3 + 0.5 * unit(mix(r(9))))),
                    round(t.disk_bytes / 16_384.0 * 0.8),
                ]);
                if unit(r(2)) < 1.0 / 1_440.0 {
                    // A clean-up: old logs and caches deleted.
                    let freed = t.disk_bytes * 0.05 * unit(r(3));
                    [
                        pages((avail as f64 + freed).min(t.disk_bytes)),
                        files + round(freed / 65_536.0),
                    ]
                } else {
                    let used = pages(t.cores * 20_000.0 * u * n(0).abs());
                    [
                        avail.saturating_sub(used),
                        files.saturating_sub(round(3.0 * n(1).abs())),
                    ]
                }
            }
            5 => {
                let mean = u * t.cores;
                let running = round(mean + (mean + 0.1).sqrt() * n(0)) + 1;
                let [load, _] = prev.unwrap_or([round(100.0 * mean), 0]);
                // Linux's one-minute average, sampled once a minute.
                let decay = (-1.0f64).exp();
                [
                    round(load as f64 * decay + 100.0 * running as f64 * (1.0 - decay)),
                    running,
                ]
            }
            6 => {
                let ctxt = t.cores * 1_500.0 * 60.0 * cycle * (0.5 + u) * lognormal(0, 0.2);
                let intr = ctxt * 0.8 * lognormal(1, 0.1);
                let [pc, pi] = prev.unwrap_or([
                    round(uptime * t.cores * 90_000.0),
                    round(uptime * t.cores * 72_000.0),
                ]);
                [pc + round(ctxt), pi + round(intr)]
            }
            _ => [round(t.mem_bytes), round(t.disk_bytes)],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_are_deterministic_and_counters_only_grow() {
        let a = Hosts::new(7);
        let b = Hosts::new(7);
        for host in 0..20 {
            for pair in 0..SERIES.len() {
                let (mut pa, mut pb) = (None, None);
                for k in 0..300 {
                    let va = a.next(host, pair, k, pa);
                    let vb = b.next(host, pair, k, pb);
                    assert_eq!(va, vb);
                    if let (Some(p), true) = (pa, [0, 2, 3, 6].contains(&pair)) {
                        assert!(
                            va[0] >= p[0] && va[1] >= p[1],
                            "pair {pair}: {p:?} → {va:?}"
                        );
                    }
                    if pair == 1 {
                        assert_eq!(va[0] % 4_096, 0);
                    }
                    (pa, pb) = (Some(va), Some(vb));
                }
                let off = a.offset_ms(host, 5);
                assert!((0..MINUTE_MS).contains(&off));
            }
        }
    }
}
