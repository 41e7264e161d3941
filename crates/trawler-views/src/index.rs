//! Entity id → slot: a direct table while the ids are dense, a hash map when
//! they are not.
//!
//! Ids are `u64` and usually a dense range (Mockstagram's pks are
//! 1,000,000..=1,999,999). A table indexed by `id - base` costs 4 bytes per
//! id in the range and one load per lookup, against ~20–36 bytes and a hash
//! per lookup for a `HashMap`. Ids may still be anything, so the index turns
//! itself into a hash map when the range grows much wider than the number of
//! ids in it, and back when the ids become dense again.

use std::collections::HashMap;
use std::mem;

/// Marks an id of the dense range that has no slot.
const VACANT: u32 = u32::MAX;

/// The dense table may cover up to this many times the live ids (plus a
/// little for small sets) before a hash map becomes cheaper.
const MAX_SPREAD: u64 = 4;
const SMALL_RANGE: u64 = 4096;

#[derive(Debug, Clone)]
pub(crate) enum IdIndex {
    Dense {
        /// Id of `slots[0]`.
        base: u64,
        /// Slot of `base + i`, or `VACANT`.
        slots: Vec<u32>,
        /// Ids present.
        live: usize,
    },
    Sparse {
        map: HashMap<u64, u32>,
        /// Smallest and largest id ever present since the index became
        /// sparse: a cheap, conservative bound to decide when to go dense.
        min: u64,
        max: u64,
    },
}

impl Default for IdIndex {
    fn default() -> Self {
        IdIndex::Dense {
            base: 0,
            slots: Vec::new(),
            live: 0,
        }
    }
}

/// Number of ids in `lo..=hi`, saturated.
fn span(lo: u64, hi: u64) -> u64 {
    (hi - lo).saturating_add(1)
}

/// Whether a table spanning `span` ids is worth it for `live` ids.
fn dense_fits(span: u64, live: usize) -> bool {
    span <= MAX_SPREAD
        .saturating_mul(live as u64)
        .saturating_add(SMALL_RANGE)
}

impl IdIndex {
    /// An empty index shaped for ids in `min..=max`, `count` of them.
    pub(crate) fn for_range(min: u64, max: u64, count: usize) -> Self {
        if count == 0 {
            return Self::default();
        }
        if dense_fits(span(min, max), count) {
            IdIndex::Dense {
                base: min,
                slots: vec![VACANT; span(min, max) as usize],
                live: 0,
            }
        } else {
            IdIndex::Sparse {
                map: HashMap::with_capacity(count),
                min,
                max,
            }
        }
    }

    pub(crate) fn get(&self, id: u64) -> Option<u32> {
        match self {
            IdIndex::Dense { base, slots, .. } => {
                let i = usize::try_from(id.checked_sub(*base)?).ok()?;
                slots.get(i).copied().filter(|&s| s != VACANT)
            }
            IdIndex::Sparse { map, .. } => map.get(&id).copied(),
        }
    }

    /// Maps a new `id` (not present) to `slot`.
    pub(crate) fn insert(&mut self, id: u64, slot: u32) {
        match self {
            IdIndex::Dense { base, slots, live } => {
                if slots.is_empty() {
                    *base = id;
                }
                let last = match slots.len() {
                    0 => id,
                    n => *base + (n as u64 - 1),
                };
                // Density only gets worse when the table has to grow.
                let (lo, hi) = (id.min(*base), id.max(last));
                if (lo, hi) != (*base, last) && !dense_fits(span(lo, hi), *live + 1) {
                    self.make_sparse();
                    return self.insert(id, slot);
                }
                if id < *base {
                    let grow = (*base - id) as usize;
                    slots.splice(0..0, std::iter::repeat_n(VACANT, grow));
                    *base = id;
                }
                let i = (id - *base) as usize;
                if i >= slots.len() {
                    slots.resize(i + 1, VACANT);
                }
                debug_assert_eq!(slots[i], VACANT, "id inserted twice");
                slots[i] = slot;
                *live += 1;
            }
            IdIndex::Sparse { map, min, max } => {
                map.insert(id, slot);
                *min = (*min).min(id);
                *max = (*max).max(id);
                // Hysteresis: go dense only well inside the limit, so an index
                // at the boundary does not flip back and forth.
                if dense_fits(span(*min, *max).saturating_mul(2), map.len()) {
                    let mut slots = vec![VACANT; span(*min, *max) as usize];
                    for (&id, &slot) in map.iter() {
                        slots[(id - *min) as usize] = slot;
                    }
                    *self = IdIndex::Dense {
                        base: *min,
                        slots,
                        live: map.len(),
                    };
                }
            }
        }
    }

    pub(crate) fn remove(&mut self, id: u64) -> Option<u32> {
        match self {
            IdIndex::Dense { base, slots, live } => {
                let i = usize::try_from(id.checked_sub(*base)?).ok()?;
                let slot = mem::replace(slots.get_mut(i)?, VACANT);
                if slot == VACANT {
                    return None;
                }
                *live -= 1;
                if *live == 0 {
                    // Empty: let the next id place the table anew.
                    *self = Self::default();
                }
                Some(slot)
            }
            IdIndex::Sparse { map, .. } => map.remove(&id),
        }
    }

    pub(crate) fn heap_bytes(&self) -> usize {
        match self {
            IdIndex::Dense { slots, .. } => slots.capacity() * mem::size_of::<u32>(),
            // hashbrown: one (key, value) pair and one control byte per bucket.
            IdIndex::Sparse { map, .. } => map.capacity() * (mem::size_of::<(u64, u32)>() + 1),
        }
    }

    fn make_sparse(&mut self) {
        let IdIndex::Dense { base, slots, .. } = mem::take(self) else {
            return;
        };
        let map: HashMap<u64, u32> = slots
            .iter()
            .enumerate()
            .filter(|(_, &s)| s != VACANT)
            .map(|(i, &s)| (base + i as u64, s))
            .collect();
        let min = map.keys().copied().min().unwrap_or(base);
        let max = map.keys().copied().max().unwrap_or(base);
        *self = IdIndex::Sparse { map, min, max };
    }

    #[cfg(test)]
    fn is_dense(&self) -> bool {
        matches!(self, IdIndex::Dense { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn dense_range_stays_dense_and_sparse_ids_go_to_a_map() {
        let mut index = IdIndex::default();
        for (slot, id) in (1_000_000..1_010_000u64).rev().enumerate() {
            index.insert(id, slot as u32);
        }
        assert!(index.is_dense());
        assert_eq!(index.get(1_000_000), Some(9_999));
        assert_eq!(index.get(999_999), None);
        assert_eq!(index.get(u64::MAX), None);
        index.insert(u64::MAX, 10_000);
        assert!(!index.is_dense());
        assert_eq!(index.get(u64::MAX), Some(10_000));
        assert_eq!(index.get(1_000_000), Some(9_999));
        assert_eq!(index.remove(u64::MAX), Some(10_000));
        // The conservative bounds still include u64::MAX: stays sparse.
        index.insert(1_010_000, 10_000);
        assert!(!index.is_dense());
        assert_eq!(index.get(1_010_000), Some(10_000));
    }

    #[test]
    fn goes_dense_again_when_ids_fill_in() {
        let mut index = IdIndex::default();
        index.insert(0, 0);
        index.insert(100_000, 1);
        assert!(!index.is_dense());
        for id in 1..50_000u64 {
            index.insert(id, id as u32 + 1);
        }
        assert!(index.is_dense());
        assert_eq!(index.get(100_000), Some(1));
        assert_eq!(index.get(49_999), Some(50_000));
    }

    proptest! {
        #[test]
        fn behaves_like_a_map(ops in proptest::collection::vec((any::<bool>(), 0u64..5, any::<u16>()), 0..400)) {
            let mut index = IdIndex::default();
            let mut model = std::collections::HashMap::new();
            for (slot, (insert, region, low)) in ops.into_iter().enumerate() {
                // Ids clustered in a few far-apart regions.
                let id = region * (u64::MAX / 5) + u64::from(low % 64);
                if insert && !model.contains_key(&id) {
                    index.insert(id, slot as u32);
                    model.insert(id, slot as u32);
                } else if !insert {
                    prop_assert_eq!(index.remove(id), model.remove(&id));
                }
                prop_assert_eq!(index.get(id), model.get(&id).copied());
            }
            for (&id, &slot) in &model {
                prop_assert_eq!(index.get(id), Some(slot));
            }
        }
    }
}
