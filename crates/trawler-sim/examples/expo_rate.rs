//! Prints how many `expo` events per second one core draws and formats
//! (into memory, no I/O): `cargo run --release -p trawler-sim --example expo_rate`.

use std::time::Instant;

use trawler_sim::expo::{Expo, ExpoConfig};

fn main() {
    let mut expo = Expo::new(ExpoConfig::default()).expect("default config");
    let n = 5_000_000u64;
    let mut out = Vec::with_capacity(1 << 20);
    let (mut bytes, started) = (0usize, Instant::now());
    for i in 0..n {
        expo.write_event(1_764_547_200_000 + i as i64 / 50, &mut out);
        if out.len() > 1 << 20 {
            bytes += out.len();
            out.clear();
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    bytes += out.len();
    println!(
        "expo: events={n} seconds={seconds:.3} events_per_s={:.0} bytes_per_event={:.1}",
        n as f64 / seconds,
        bytes as f64 / n as f64
    );
}
