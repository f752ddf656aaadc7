//! The randomness behind power-of-two-choices: SplitMix64. Written here rather than taken from
//! the `rand` crate because P2C needs nothing but two uniform indices per pick: ten lines keep
//! the plugin's dependencies to `plugin-api`, and a fixed seed (configuration `seed`) makes
//! picks reproducible in tests and in the simulation bench. Not for cryptography.

/// SplitMix64 (Steele, Lea and Flood): one add and three xor-shift-multiplies per draw.
#[derive(Debug, Clone)]
pub(crate) struct SplitMix64(u64);

impl SplitMix64 {
    pub(crate) fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// A generator seeded from the wall clock (for when no seed is configured).
    pub(crate) fn from_clock() -> Self {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0x5EED);
        Self(seed)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`), by Lemire's multiply-and-shift: no division, and a bias
    /// below n / 2^64, far under anything a balancer could notice.
    pub(crate) fn below(&mut self, n: usize) -> usize {
        ((u128::from(self.next_u64()) * n as u128) >> 64) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indices_are_uniform_and_in_range() {
        let mut rng = SplitMix64::new(42);
        let mut counts = [0u32; 7];
        for _ in 0..70_000 {
            counts[rng.below(7)] += 1;
        }
        for c in counts {
            assert!((9_500..10_500).contains(&c), "{counts:?}");
        }
        let mut same = SplitMix64::new(42);
        let mut again = SplitMix64::new(42);
        assert_eq!(same.next_u64(), again.next_u64(), "a seed fixes the sequence");
    }
}
