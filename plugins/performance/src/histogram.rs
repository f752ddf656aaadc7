//! Latency histograms: the HDR (high dynamic range) log-linear layout at 2 significant
//! figures, as `hdrhistogram` lays out `Histogram::new(2)`, kept in plain arrays.
//!
//! Values (nanoseconds) below 256 are counted exactly; above, each power of two is cut into
//! 128 equal buckets, so a bucket is at most 1/128 (0.78%) of the values it holds: every
//! value reported (the highest value of its bucket, as HDR reports) is within 1% of what was
//! recorded. Up to [`MAX_TRACKED_NS`] (one hour) that is [`LEN`] (4,608) buckets.
//!
//! Why not `hdrhistogram` itself (it is what the tests check this against): both ways were
//! built and measured (`cargo bench -p plugin-performance`, 2 cores). With `hdrhistogram`
//! (fixed bounds so that every merge takes its fast path, `u64` counts, since `add` and
//! `subtract` need one counter type) a series took 593 KB on two shards and the JSON view of 20
//! capabilities 354-398 us; with these arrays (`u32` window slots, merges and percentile passes
//! that stop at the highest bucket in use) 207 KB and 107-126 us, and `observe` 44 ns instead of
//! 56. Its auto-resizing histograms are smaller, but then shards differ in size and `add` falls
//! back to adding value by value. The layout is the same, so the figures are the same: the
//! tests check these percentiles against `hdrhistogram`'s.

/// The largest latency the histograms tell apart: one hour, in nanoseconds. Larger values are
/// counted in its bucket (their sum stays exact).
pub(crate) const MAX_TRACKED_NS: u64 = 3_600_000_000_000;

/// Buckets per power of two, as a power of two (128 buckets: 2 significant figures).
const HALF_MAGNITUDE: u32 = 7;

/// Buckets per power of two.
const HALF: usize = 1 << HALF_MAGNITUDE;

/// The bucket of `value` (at most [`MAX_TRACKED_NS`]).
#[inline]
pub(crate) const fn index(value: u64) -> usize {
    // Values below 2 x HALF have a bucket each (shift 0); above, the bucket of `value` in its
    // power of two is its HALF_MAGNITUDE + 1 top bits.
    let top_bit = 63 - (value | (2 * HALF as u64 - 1)).leading_zeros();
    let shift = top_bit - HALF_MAGNITUDE;
    ((shift as usize) << HALF_MAGNITUDE) + (value >> shift) as usize
}

/// The highest value that falls in bucket `index` (what HDR reports for it).
#[inline]
pub(crate) const fn highest(index: usize) -> u64 {
    let shift = (index >> HALF_MAGNITUDE).saturating_sub(1);
    let sub = (index - (shift << HALF_MAGNITUDE)) as u64;
    ((sub + 1) << shift) - 1
}

/// Buckets up to [`MAX_TRACKED_NS`] (to the end of its power of two).
pub(crate) const LEN: usize = (index(MAX_TRACKED_NS) | (HALF - 1)) + 1;

/// A bucket's count: `u64` for all time, `u32` for a window slot (half the memory; it
/// saturates rather than wrap, at 4 billion latencies of one bucket in one slot of one shard).
pub(crate) trait Count: Copy + Default {
    /// Adds one.
    fn bump(&mut self);
    /// The count.
    fn get(self) -> u64;
}

impl Count for u64 {
    #[inline]
    fn bump(&mut self) {
        *self += 1;
    }

    #[inline]
    fn get(self) -> u64 {
        self
    }
}

impl Count for u32 {
    #[inline]
    fn bump(&mut self) {
        *self = self.saturating_add(1);
    }

    #[inline]
    fn get(self) -> u64 {
        u64::from(self)
    }
}

/// Latencies recorded: counts by bucket, grown to the largest value seen (whole powers of two
/// at a time; none until the first), how many and their sum.
#[derive(Debug, Default)]
pub(crate) struct Latencies<C> {
    counts: Vec<C>,
    /// One past the highest bucket counted since the last reset: readers and resets go no
    /// further.
    top: usize,
    len: u64,
    sum_ns: u64,
}

impl<C: Count> Latencies<C> {
    /// Records `ns`.
    #[inline]
    pub(crate) fn record(&mut self, ns: u64) {
        self.len += 1;
        self.sum_ns = self.sum_ns.saturating_add(ns);
        let i = index(ns.min(MAX_TRACKED_NS));
        if i >= self.counts.len() {
            self.grow(i);
        }
        self.counts[i].bump();
        self.top = self.top.max(i + 1);
    }

    #[cold]
    fn grow(&mut self, i: usize) {
        // To the end of the power of two `i` is in; no spare capacity.
        let len = ((i | (HALF - 1)) + 1).min(LEN);
        self.counts.reserve_exact(len - self.counts.len());
        self.counts.resize(len, C::default());
    }

    /// Forgets every latency (keeps the memory).
    pub(crate) fn reset(&mut self) {
        self.counts[..self.top].fill(C::default());
        self.top = 0;
        self.len = 0;
        self.sum_ns = 0;
    }

    /// How many latencies.
    #[cfg(test)]
    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    /// Their sum, in nanoseconds (saturating; values above [`MAX_TRACKED_NS`] count whole).
    pub(crate) fn sum_ns(&self) -> u64 {
        self.sum_ns
    }

    /// Heap bytes held.
    #[cfg(test)]
    pub(crate) fn heap_bytes(&self) -> usize {
        self.counts.capacity() * size_of::<C>()
    }
}

impl Latencies<u64> {
    /// Takes out `part`, latencies that were recorded here too (a window slot, from the sum
    /// of the slots).
    pub(crate) fn subtract<P: Count>(&mut self, part: &Latencies<P>) {
        subtract(&mut self.counts, &part.counts[..part.top]);
        self.len = self.len.saturating_sub(part.len);
        self.sum_ns = self.sum_ns.saturating_sub(part.sum_ns);
    }
}

/// `totals[i] -= part[i]`, for a part whose latencies were all counted in `totals` (so each of
/// its counts is at most the total's; saturating all the same).
fn subtract<P: Count>(totals: &mut [u64], part: &[P]) {
    for (total, n) in totals.iter_mut().zip(part) {
        *total = total.saturating_sub(n.get());
    }
}

/// Latencies merged from several [`Latencies`]: a reader's scratch, used for one series after
/// another (one allocation of [`LEN`] counts, whatever the number of series).
pub(crate) struct Merged {
    counts: Box<[u64]>,
    /// One past the highest bucket any addition touched: `clear` goes no further.
    top: usize,
    len: u64,
    sum_ns: u64,
}

/// The percentiles of [`QUANTILES`].
pub(crate) const QUANTILES: [f64; 4] = [0.5, 0.9, 0.99, 0.999];

/// What a reader reports of a set of latencies that is not empty, in nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Summary {
    /// How many.
    pub(crate) len: u64,
    /// At [`QUANTILES`], as `hdrhistogram`'s `value_at_quantile` gives them: the highest value
    /// of the bucket where the count reaches `ceil(q x len)` (at least 1).
    pub(crate) quantiles: [u64; 4],
    /// The highest value of the highest bucket counted.
    pub(crate) max: u64,
    /// The exact mean (the sum over the count; not clamped to an hour).
    pub(crate) mean: f64,
}

impl Default for Merged {
    fn default() -> Self {
        Self {
            counts: vec![0; LEN].into_boxed_slice(),
            top: 0,
            len: 0,
            sum_ns: 0,
        }
    }
}

impl Merged {
    /// Adds `latencies` in: one pass of additions over its counts, up to its highest bucket.
    #[inline]
    pub(crate) fn add<C: Count>(&mut self, latencies: &Latencies<C>) {
        let top = latencies.top;
        for (total, n) in self.counts[..top].iter_mut().zip(&latencies.counts[..top]) {
            *total += n.get();
        }
        self.top = self.top.max(top);
        self.len += latencies.len;
        self.sum_ns = self.sum_ns.saturating_add(latencies.sum_ns);
    }

    /// Takes out `part`, latencies added here before (a window slot no longer in the window,
    /// from the sum of the slots of a shard).
    #[inline]
    pub(crate) fn subtract<C: Count>(&mut self, part: &Latencies<C>) {
        subtract(&mut self.counts, &part.counts[..part.top]);
        self.len = self.len.saturating_sub(part.len);
        self.sum_ns = self.sum_ns.saturating_sub(part.sum_ns);
    }

    /// The figures of what was added (`None`: nothing was), in one pass over the counts (a
    /// power of two at a time, summed, and bucket by bucket only where a quantile falls).
    pub(crate) fn summary(&self) -> Option<Summary> {
        if self.len == 0 {
            return None;
        }
        let counts = &self.counts[..self.top];
        let max_index = counts.iter().rposition(|n| *n != 0)?;
        let targets = QUANTILES.map(|q| ((q * self.len as f64).ceil() as u64).max(1));
        // Should the counts fall short of `len` (a window slot's count saturated), what is not
        // reached is the max.
        let mut quantiles = [max_index; 4];
        let (mut next, mut seen) = (0, 0u64);
        'blocks: for (b, block) in counts.chunks(HALF).enumerate() {
            let in_block: u64 = block.iter().sum();
            if seen + in_block < targets[next] {
                seen += in_block;
                continue;
            }
            for (i, n) in block.iter().enumerate() {
                seen += n;
                while seen >= targets[next] {
                    quantiles[next] = b * HALF + i;
                    next += 1;
                    if next == targets.len() {
                        break 'blocks;
                    }
                }
            }
        }
        Some(Summary {
            len: self.len,
            quantiles: quantiles.map(highest),
            max: highest(max_index),
            mean: self.sum_ns as f64 / self.len as f64,
        })
    }

    /// Empties it, for the next series.
    pub(crate) fn clear(&mut self) {
        self.counts[..self.top].fill(0);
        self.top = 0;
        self.len = 0;
        self.sum_ns = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hdrhistogram::Histogram;

    /// The same values, here and in `hdrhistogram` at 2 significant figures.
    fn both(values: &[u64]) -> (Option<Summary>, Histogram<u64>) {
        let mut latencies = Latencies::<u64>::default();
        let mut reference = Histogram::<u64>::new(2).expect("valid");
        for v in values {
            latencies.record(*v);
            reference.record((*v).min(MAX_TRACKED_NS)).expect("records");
        }
        let mut merged = Merged::default();
        merged.add(&latencies);
        (merged.summary(), reference)
    }

    #[test]
    fn the_layout_is_hdrs_at_two_significant_figures() {
        let reference = Histogram::<u64>::new_with_max(MAX_TRACKED_NS, 2).expect("valid");
        assert_eq!(reference.distinct_values(), LEN);
        let mut values: Vec<u64> = (0..4_096).collect();
        for shift in 0..42 {
            for k in [0u64, 1, 127, 128, 129, 255] {
                values.push((k + 128) << shift);
                values.push(((k + 129) << shift) - 1);
            }
        }
        values.push(MAX_TRACKED_NS);
        values.sort_unstable();
        let mut previous = 0;
        for v in values.into_iter().filter(|v| *v <= MAX_TRACKED_NS) {
            let i = index(v);
            assert!(i < LEN, "{v}");
            assert_eq!(highest(i), reference.highest_equivalent(v), "{v}");
            assert!(
                v <= highest(i) && highest(i) as f64 <= v as f64 * 1.01,
                "{v}: within 1%"
            );
            if v > 0 {
                assert!(i <= index(v - 1) + 1, "{v}: no bucket skipped");
            }
            assert!(i >= previous, "{v}: buckets in order");
            previous = i;
        }
    }

    #[test]
    fn quantiles_agree_with_hdrhistogram() {
        for values in [
            vec![7u64],
            vec![0, 0, 0],
            vec![1, 1, 1, 5_000_000],
            (1..=10_000u64).map(|v| v * v).collect(),
            (1..=1_000u64).map(|v| v * 1_000_003).collect(),
            vec![2 * MAX_TRACKED_NS, 10, 1_000],
        ] {
            let (summary, reference) = both(&values);
            let summary = summary.expect("not empty");
            assert_eq!(summary.len, reference.len(), "{values:?}");
            assert_eq!(
                summary.quantiles,
                QUANTILES.map(|q| reference.value_at_quantile(q)),
                "{values:?}"
            );
            assert_eq!(summary.max, reference.max(), "{values:?}");
            let exact = values.iter().map(|v| *v as f64).sum::<f64>() / values.len() as f64;
            assert!((summary.mean - exact).abs() <= exact * 1e-9, "{values:?}");
        }
        assert_eq!(Merged::default().summary(), None);
    }

    #[test]
    fn merging_adds_and_clearing_forgets() {
        let mut a = Latencies::<u64>::default();
        let mut b = Latencies::<u32>::default();
        for v in 1..=1_000u64 {
            a.record(v * 1_000);
            b.record(v * 1_000_000);
        }
        assert_eq!(a.heap_bytes(), 8 * (index(1_000_000) | 127) + 8, "to its power of two");
        let mut merged = Merged::default();
        merged.add(&a);
        merged.add(&b);
        let s = merged.summary().expect("not empty");
        assert_eq!(s.len, 2_000);
        assert_eq!(s.quantiles[0], highest(index(1_000_000)));
        assert_eq!(s.max, highest(index(1_000_000_000)));
        merged.clear();
        assert_eq!(merged.summary(), None);
        merged.add(&a);
        assert_eq!(merged.summary().map(|s| s.max), Some(highest(index(1_000_000))));
        let bytes = b.heap_bytes();
        b.reset();
        assert_eq!((b.len(), b.sum_ns(), b.heap_bytes()), (0, 0, bytes), "keeps its memory");
        b.record(5);
        merged.clear();
        merged.add(&b);
        assert_eq!(merged.summary().map(|s| (s.len, s.max)), Some((1, 5)));
    }

    #[test]
    fn a_part_subtracts_out() {
        let (mut total, mut part) = (Latencies::<u64>::default(), Latencies::<u32>::default());
        for v in [5, 1_000, 2_000_000] {
            total.record(v);
            part.record(v);
        }
        total.record(7_000);
        let mut merged = Merged::default();
        merged.add(&total);
        merged.subtract(&part);
        let only = |m: &Merged| m.summary().map(|s| (s.len, s.quantiles[0], s.max, s.mean));
        let seven = Some((1, highest(index(7_000)), highest(index(7_000)), 7_000.0));
        assert_eq!(only(&merged), seven);
        total.subtract(&part);
        merged.clear();
        merged.add(&total);
        assert_eq!(only(&merged), seven);
        total.subtract(&part);
        assert_eq!(total.len(), 0, "saturates");
    }
}
