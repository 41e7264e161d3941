//! The API's own figures for `/metrics`: requests by route and status, and
//! the event-stream subscribers.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use trawler_common::prom::{family, Kind};

/// Requests answered, by matched route template and status code, and the
/// state of the live-update streams.
#[derive(Debug, Default)]
pub struct HttpMetrics {
    counts: Mutex<BTreeMap<(String, u16), u64>>,
    /// Event-stream subscribers connected now.
    pub(crate) subscribers: AtomicU64,
    /// Subscribers dropped for falling behind the event stream.
    pub(crate) subscribers_lagged: AtomicU64,
    /// Samples stored through remote write.
    remote_write_samples: AtomicU64,
    /// Remote-written samples dropped as out of order.
    remote_write_out_of_order: AtomicU64,
}

impl HttpMetrics {
    /// Event-stream subscribers connected now.
    pub fn subscribers(&self) -> u64 {
        self.subscribers.load(Ordering::Relaxed)
    }

    /// Event-stream subscribers dropped so far for not reading.
    pub fn subscribers_dropped(&self) -> u64 {
        self.subscribers_lagged.load(Ordering::Relaxed)
    }

    /// Counts one answered request.
    pub fn record(&self, route: &str, status: u16) {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        match counts.get_mut(&(route.to_owned(), status)) {
            Some(n) => *n += 1,
            None => {
                counts.insert((route.to_owned(), status), 1);
            }
        }
    }

    /// Counts one remote write: samples stored and dropped out of order.
    pub fn record_remote_write(&self, stored: u64, out_of_order: u64) {
        self.remote_write_samples
            .fetch_add(stored, Ordering::Relaxed);
        self.remote_write_out_of_order
            .fetch_add(out_of_order, Ordering::Relaxed);
    }

    /// Appends every API metric in Prometheus text format.
    pub fn render(&self, out: &mut String) {
        let counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let mut requests = family(
            out,
            "trawler_api_requests_total",
            Kind::Counter,
            "API requests answered, by route and status.",
        );
        for ((route, status), n) in counts.iter() {
            requests.sample(&[("route", route), ("status", &status.to_string())], *n);
        }
        for (name, help, kind, value) in [
            (
                "trawler_api_event_subscribers",
                "Clients subscribed to the event stream.",
                Kind::Gauge,
                &self.subscribers,
            ),
            (
                "trawler_api_event_subscribers_lagged_total",
                "Event-stream subscribers dropped for not reading.",
                Kind::Counter,
                &self.subscribers_lagged,
            ),
            (
                "trawler_remote_write_samples_total",
                "Samples stored through Prometheus remote write.",
                Kind::Counter,
                &self.remote_write_samples,
            ),
            (
                "trawler_remote_write_out_of_order_samples_total",
                "Remote-written samples dropped: their series had newer data on disk.",
                Kind::Counter,
                &self.remote_write_out_of_order,
            ),
        ] {
            family(out, name, kind, help).sample(&[], value.load(Ordering::Relaxed));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_per_route_and_status() {
        let m = HttpMetrics::default();
        m.record("/a", 200);
        m.record("/a", 200);
        m.record("/a", 404);
        let mut out = String::new();
        m.render(&mut out);
        assert!(out.contains("trawler_api_requests_total{route=\"/a\",status=\"200\"} 2\n"));
        assert!(out.contains("trawler_api_requests_total{route=\"/a\",status=\"404\"} 1\n"));
    }
}
