//! Counters of API requests by route and status, for `/metrics`.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;

/// Requests answered, by matched route template and status code.
#[derive(Debug, Default)]
pub struct HttpMetrics {
    counts: Mutex<BTreeMap<(String, u16), u64>>,
}

impl HttpMetrics {
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

    /// Appends `trawler_api_requests_total` in Prometheus text format.
    pub fn render(&self, out: &mut String) {
        let counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        out.push_str(
            "# HELP trawler_api_requests_total API requests answered, by route and status.\n",
        );
        out.push_str("# TYPE trawler_api_requests_total counter\n");
        for ((route, status), n) in counts.iter() {
            let _ = writeln!(
                out,
                "trawler_api_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}"
            );
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
