//! The head: samples not yet in a block, per series, in arrival order.
//!
//! 16 bytes per sample plus a `Vec` per series that received data. The head
//! is flushed when its oldest data reaches `flush_interval` or its size
//! reaches `head_max_bytes`, which is what bounds the store's memory.

#[derive(Debug, Default)]
pub(crate) struct Head {
    /// Indexed by series id; empty for series without data in this head.
    pub series: Vec<Vec<(i64, u64)>>,
    pub samples: u64,
    /// Heap bytes of the sample vectors (by capacity).
    pub bytes: u64,
}

impl Head {
    pub fn push(&mut self, series: u64, ts: i64, bits: u64) {
        let i = series as usize;
        if i >= self.series.len() {
            self.series.resize_with(i + 1, Vec::new);
        }
        let v = &mut self.series[i];
        let cap = v.capacity();
        v.push((ts, bits));
        self.bytes += ((v.capacity() - cap) * 16) as u64;
        self.samples += 1;
    }

    pub fn memory_bytes(&self) -> u64 {
        self.bytes + (self.series.capacity() * 24) as u64
    }

    /// The series' points sorted by time; for equal times the last written wins.
    pub fn sorted(&self, series: u64) -> Vec<(i64, u64)> {
        self.series
            .get(series as usize)
            .map(|v| sort_dedup(v.clone()))
            .unwrap_or_default()
    }
}

/// Sorts by time (stable, so arrival order breaks ties) and keeps the last
/// sample of each timestamp.
pub(crate) fn sort_dedup(mut v: Vec<(i64, u64)>) -> Vec<(i64, u64)> {
    if !v.windows(2).all(|w| w[0].0 < w[1].0) {
        v.sort_by_key(|p| p.0);
        let mut out: Vec<(i64, u64)> = Vec::with_capacity(v.len());
        for p in v {
            match out.last_mut() {
                Some(last) if last.0 == p.0 => *last = p,
                _ => out.push(p),
            }
        }
        return out;
    }
    v
}
