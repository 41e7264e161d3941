//! Counter-based randomness: every random number is a pure function of a key.
//!
//! The simulator must be deterministic for a given seed even though requests
//! arrive in any order on any thread. A shared stateful generator would make
//! the n-th value of an account depend on what other accounts did before it,
//! so instead each draw hashes `(seed, pk, call index, stream)` with
//! SplitMix64's finaliser. That costs a few nanoseconds, needs no locking and
//! makes the series of an account reproducible on its own.

/// SplitMix64's output function: a fast, well-mixed bijection on `u64`.
#[inline]
pub fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Hashes a tuple of keys into one well-mixed `u64`.
#[inline]
pub fn hash(keys: &[u64]) -> u64 {
    keys.iter()
        .fold(0x6A09_E667_F3BC_C909, |acc, &k| mix(acc ^ k))
}

/// FNV-1a (64-bit) of a byte string: turns a string key, such as a package
/// name, into a `u64` for [`hash`]. Fixed, unlike std's randomised hasher,
/// so that two simulators with the same seed agree.
#[inline]
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xCBF2_9CE4_8422_2325, |acc, &b| {
        (acc ^ b as u64).wrapping_mul(0x0000_0100_0000_01B3)
    })
}

/// A uniform `f64` in `[0, 1)` from 53 random bits.
#[inline]
pub fn unit(h: u64) -> f64 {
    (h >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// Two independent standard normal variates (Box–Muller) from one key.
#[inline]
pub fn normal_pair(h: u64) -> (f64, f64) {
    // 1 - unit() lies in (0, 1], so the logarithm is finite.
    let u1 = 1.0 - unit(mix(h));
    let u2 = unit(mix(h ^ 0xD1B5_4A32_D192_ED03));
    let r = (-2.0 * u1.ln()).sqrt();
    let theta = std::f64::consts::TAU * u2;
    (r * theta.cos(), r * theta.sin())
}

/// One standard normal variate from one key.
#[inline]
pub fn normal(h: u64) -> f64 {
    normal_pair(h).0
}

/// A process-wide source of non-reproducible randomness for things that
/// need not be deterministic (injected faults, the suspicious delay).
#[derive(Debug)]
pub struct Entropy {
    counter: std::sync::atomic::AtomicU64,
}

impl Entropy {
    /// Seeds the source.
    pub fn new(seed: u64) -> Self {
        Self {
            counter: std::sync::atomic::AtomicU64::new(mix(seed)),
        }
    }

    /// The next random `u64`.
    pub fn next_u64(&self) -> u64 {
        let n = self
            .counter
            .fetch_add(0x9E37_79B9_7F4A_7C15, std::sync::atomic::Ordering::Relaxed);
        mix(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normals_have_unit_moments() {
        let n = 200_000u64;
        let (mut sum, mut sum_sq) = (0.0, 0.0);
        for i in 0..n {
            let (a, b) = normal_pair(hash(&[42, i]));
            sum += a + b;
            sum_sq += a * a + b * b;
        }
        let mean = sum / (2 * n) as f64;
        let var = sum_sq / (2 * n) as f64 - mean * mean;
        assert!(mean.abs() < 0.01, "mean {mean}");
        assert!((var - 1.0).abs() < 0.01, "variance {var}");
    }

    #[test]
    fn fnv1a_matches_the_reference_vectors() {
        assert_eq!(fnv1a(b""), 0xCBF2_9CE4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xAF63_DC4C_8601_EC8C);
        assert_eq!(fnv1a(b"foobar"), 0x8594_4171_F739_67E8);
    }

    #[test]
    fn unit_stays_in_range() {
        for i in 0..10_000u64 {
            let u = unit(mix(i));
            assert!((0.0..1.0).contains(&u));
        }
        assert_eq!(unit(u64::MAX), 1.0 - 1.0 / (1u64 << 53) as f64);
    }
}
