//! One named series of figures (a capability, or a task kind): counters, per-plugin counts,
//! exact Prometheus buckets, an all-time latency histogram and a sliding window of latency
//! histograms.
//!
//! A series is sharded: each thread records into the shard its thread index picks, under that
//! shard's own mutex, so concurrent observers rarely meet and one record costs one uncontended
//! lock. Readers lock the shards one at a time, and under each lock only copy its counters and
//! add its histograms' counts into a scratch of their own (one pass over each array, as long as
//! a copy of it); the percentiles are computed afterwards, with no lock held.
//!
//! Latencies are recorded in **nanoseconds** into HDR-layout histograms at 2 significant
//! figures (see [`crate::histogram`]: a value is reported within 1% of what was recorded),
//! all time and for the window's running sum with `u64` counts, per window slot with `u32`
//! counts. Values above one hour ([`MAX_TRACKED_NS`](crate::histogram::MAX_TRACKED_NS)) are
//! counted as one hour in the histograms (they stay exact in the sums). Histograms grow to the
//! largest value seen: a shard whose largest latency is 50 ms holds about 20 KB all time, 20 KB
//! for the window's sum and 10 KB per window slot in use (100 KB with the six slots), one whose
//! largest is an hour at most 36 + 36 + 6 x 18 = 180 KB; a shard no thread has used holds none.

use crate::histogram::{Latencies, Merged, Summary};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

/// Slots in the sliding window: the window is the current slot and the five before it.
pub(crate) const WINDOW_SLOTS: u64 = 6;

/// Upper bounds of the Prometheus histogram buckets, in nanoseconds (1 us to 10 s); a last
/// bucket, `+Inf`, takes the rest.
pub(crate) const BUCKET_BOUNDS_NS: [u64; 16] = [
    1_000,
    5_000,
    10_000,
    50_000,
    100_000,
    500_000,
    1_000_000,
    5_000_000,
    10_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    5_000_000_000,
    10_000_000_000,
];

/// Distinct plugins counted per capability; more are counted under [`OTHER`].
const MAX_PLUGINS: usize = 32;

/// The name under which what is over a limit is counted.
pub(crate) const OTHER: &str = "(other)";

/// The counters of a series.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Counter {
    /// Operations seen (dispatches of a capability, finished tasks of a kind).
    Calls = 0,
    /// Those that succeeded.
    Succeeded,
    /// Those that failed.
    Failed,
    /// Dispatches an interceptor vetoed.
    Vetoed,
    /// Dispatches a fallback served.
    Fallbacks,
}

/// How many [`Counter`]s there are.
pub(crate) const COUNTERS: usize = 5;

/// What one plugin did for one capability.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct PluginCounts {
    pub(crate) name: Box<str>,
    /// Dispatches it answered.
    pub(crate) served: u64,
    /// Dispatches it vetoed.
    pub(crate) vetoes: u64,
    /// Calls to it that failed with an error (the dispatch moved on).
    pub(crate) errors: u64,
    /// Calls to it that timed out.
    pub(crate) timeouts: u64,
    /// Calls to it that panicked.
    pub(crate) panics: u64,
}

impl PluginCounts {
    fn merge(&mut self, other: &PluginCounts) {
        self.served += other.served;
        self.vetoes += other.vetoes;
        self.errors += other.errors;
        self.timeouts += other.timeouts;
        self.panics += other.panics;
    }
}

/// One slot of the sliding window: what was recorded during one period of `bucket_ns`.
#[derive(Default)]
struct Slot {
    /// The period (`at_ns / bucket_ns`) plus one; 0 when the slot is empty.
    tag: u64,
    latency: Latencies<u32>,
}

/// What one shard holds.
#[derive(Default)]
pub(crate) struct Shard {
    counters: [u64; COUNTERS],
    /// All time; its sum is the Prometheus sum.
    all: Latencies<u64>,
    buckets: [u64; BUCKET_BOUNDS_NS.len() + 1],
    window: [Slot; WINDOW_SLOTS as usize],
    /// The sum of the window's slots (those not empty), kept as they are recorded into and
    /// reset, so that a reader adds one array instead of six (and takes out only the slots
    /// that left the window since this shard last recorded).
    recent: Latencies<u64>,
    plugins: Vec<PluginCounts>,
}

impl Shard {
    /// Adds one to `counter`.
    #[inline]
    pub(crate) fn count(&mut self, counter: Counter) {
        self.counters[counter as usize] += 1;
    }

    /// The counts of plugin `name` (created on first use; past [`MAX_PLUGINS`] names, the
    /// counts of [`OTHER`]).
    #[inline]
    pub(crate) fn plugin(&mut self, name: &str) -> &mut PluginCounts {
        let index = match self.plugins.iter().position(|p| &*p.name == name) {
            Some(i) => i,
            None => {
                let name = if self.plugins.len() < MAX_PLUGINS { name } else { OTHER };
                match self.plugins.iter().position(|p| &*p.name == name) {
                    Some(i) => i,
                    None => {
                        self.plugins.push(PluginCounts {
                            name: name.into(),
                            ..PluginCounts::default()
                        });
                        self.plugins.len() - 1
                    }
                }
            }
        };
        &mut self.plugins[index]
    }

    /// Records a latency of `ns` that ended at `at_ns`, with windows of `bucket_ns` per slot.
    #[inline]
    pub(crate) fn record(&mut self, ns: u64, at_ns: u64, bucket_ns: u64) {
        let bucket = BUCKET_BOUNDS_NS.partition_point(|bound| *bound < ns);
        self.buckets[bucket] += 1;
        self.all.record(ns);
        let period = at_ns / bucket_ns.max(1);
        let slot = &mut self.window[(period % WINDOW_SLOTS) as usize];
        let tag = period + 1;
        if slot.tag < tag {
            // A slot last used a full turn ago (or never): start it afresh.
            if slot.tag != 0 {
                self.recent.subtract(&slot.latency);
            }
            slot.tag = tag;
            slot.latency.reset();
        }
        if slot.tag == tag {
            slot.latency.record(ns);
            self.recent.record(ns);
        }
        // Otherwise the operation is older than the slot's period, a turn or more behind:
        // it is out of the window already, and counts for all time only.
    }

    fn clear_window(&mut self) {
        for slot in &mut self.window {
            slot.tag = 0;
            slot.latency.reset();
        }
        self.recent.reset();
    }
}

/// Pads what it holds to its own cache lines, so that two shards never share one.
#[repr(align(128))]
struct Padded<T>(T);

/// The thread index of the calling thread, given out in order of first use.
fn thread_index() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static INDEX: usize = NEXT.fetch_add(1, Ordering::Relaxed);
    }
    INDEX.with(|i| *i)
}

/// The most shards a series has.
///
/// Shards are for threads recording the same series at the same moment; each holds its
/// histograms (tens of KB, see the module docs), and a reader goes through every one. A
/// record holds its shard's lock for a few tens of nanoseconds, so two threads on one shard
/// meet only when both record that same capability (or task kind) within those nanoseconds;
/// more than four threads doing so at once, steadily, is rare, and even then they share four
/// uncontended-most-of-the-time mutexes. Past four, shards would cost memory (per series, up to
/// `max_series` of each scope) and read time, and buy next to nothing.
pub(crate) const MAX_SHARDS: usize = 4;

/// How many shards a series has: the machine's parallelism rounded up to a power of two,
/// from 2 to [`MAX_SHARDS`].
pub(crate) fn shard_count() -> usize {
    std::thread::available_parallelism()
        .map_or(MAX_SHARDS, std::num::NonZeroUsize::get)
        .next_power_of_two()
        .clamp(2, MAX_SHARDS)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One named series, sharded.
pub(crate) struct Series {
    shards: Box<[Padded<Mutex<Shard>>]>,
}

impl std::fmt::Debug for Series {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Series")
            .field("shards", &self.shards.len())
            .finish_non_exhaustive()
    }
}

/// A series merged over its shards.
#[derive(Debug, Clone)]
pub(crate) struct SeriesView {
    pub(crate) counters: [u64; COUNTERS],
    pub(crate) sum_ns: u64,
    /// Per bucket (not cumulative), the last one `+Inf`.
    pub(crate) buckets: [u64; BUCKET_BOUNDS_NS.len() + 1],
    /// Plugins by name.
    pub(crate) plugins: Vec<PluginCounts>,
    /// The latencies of all time (when histograms were asked for, and there were some).
    pub(crate) all: Option<Summary>,
    /// The latencies of the window (when histograms were asked for, and there were some).
    pub(crate) window: Option<Summary>,
}

/// A reader's scratch for merging histograms, used for one series after another.
#[derive(Default)]
pub(crate) struct Scratch {
    all: Merged,
    window: Merged,
}

impl SeriesView {
    pub(crate) fn get(&self, counter: Counter) -> u64 {
        self.counters[counter as usize]
    }
}

impl Series {
    /// A series of `shards` shards (a power of two).
    pub(crate) fn new(shards: usize) -> Self {
        debug_assert!(shards.is_power_of_two());
        Self {
            shards: (0..shards).map(|_| Padded(Mutex::default())).collect(),
        }
    }

    /// Runs `f` on the calling thread's shard, under its lock.
    #[inline]
    pub(crate) fn update<R>(&self, f: impl FnOnce(&mut Shard) -> R) -> R {
        let shard = &self.shards[thread_index() & (self.shards.len() - 1)].0;
        f(&mut lock(shard))
    }

    /// Empties every slot of the window (the window's length changed).
    pub(crate) fn clear_window(&self) {
        for shard in self.shards.iter() {
            lock(&shard.0).clear_window();
        }
    }

    /// The newest period any window slot holds, plus one (0: none).
    pub(crate) fn newest_tag(&self) -> u64 {
        self.shards
            .iter()
            .map(|s| lock(&s.0).window.iter().map(|slot| slot.tag).max().unwrap_or(0))
            .max()
            .unwrap_or(0)
    }

    /// The series merged over its shards. With `histograms` (a scratch to merge them in), the
    /// latencies of all time and of the window as it stands at period `now_period` (the slots
    /// of that period and the [`WINDOW_SLOTS`]` - 1` before it) are summed up too.
    pub(crate) fn view(&self, mut histograms: Option<&mut Scratch>, now_period: u64) -> SeriesView {
        let mut view = SeriesView {
            counters: [0; COUNTERS],
            sum_ns: 0,
            buckets: [0; BUCKET_BOUNDS_NS.len() + 1],
            plugins: Vec::new(),
            all: None,
            window: None,
        };
        let now_tag = now_period + 1;
        for shard in self.shards.iter() {
            // Held for copies and additions only: one pass over each array.
            let shard = lock(&shard.0);
            for (total, n) in view.counters.iter_mut().zip(shard.counters) {
                *total += n;
            }
            view.sum_ns = view.sum_ns.saturating_add(shard.all.sum_ns());
            for (total, n) in view.buckets.iter_mut().zip(shard.buckets) {
                *total += n;
            }
            for p in &shard.plugins {
                match view.plugins.iter_mut().find(|v| v.name == p.name) {
                    Some(v) => v.merge(p),
                    None => view.plugins.push(p.clone()),
                }
            }
            if let Some(scratch) = histograms.as_deref_mut() {
                scratch.all.add(&shard.all);
                scratch.window.add(&shard.recent);
                for slot in &shard.window {
                    // In the window: tags from now_tag - (WINDOW_SLOTS - 1) to now_tag (and
                    // any newer, should an operation carry a time ahead of the reader's).
                    // `recent` holds every slot not empty: take out those no longer in it.
                    if slot.tag != 0 && slot.tag + WINDOW_SLOTS <= now_tag {
                        scratch.window.subtract(&slot.latency);
                    }
                }
            }
        }
        view.plugins.sort_by(|a, b| a.name.cmp(&b.name));
        if let Some(scratch) = histograms {
            view.all = scratch.all.summary();
            view.window = scratch.window.summary();
            scratch.all.clear();
            scratch.window.clear();
        }
        view
    }

    /// Heap bytes held by the histograms of its shards.
    #[cfg(test)]
    pub(crate) fn histogram_bytes(&self) -> usize {
        self.shards
            .iter()
            .map(|s| {
                let shard = lock(&s.0);
                shard.all.heap_bytes()
                    + shard.recent.heap_bytes()
                    + shard.window.iter().map(|w| w.latency.heap_bytes()).sum::<usize>()
            })
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::histogram::{MAX_TRACKED_NS, highest, index};

    const S: u64 = 1_000_000_000;

    #[test]
    fn buckets_count_each_latency_once_at_its_upper_bound() {
        let series = Series::new(2);
        for ns in [0, 1_000, 1_001, 10 * S, 10 * S + 1] {
            series.update(|s| s.record(ns, 0, 10 * S));
        }
        let view = series.view(None, 0);
        assert_eq!(view.buckets[0], 2, "0 and 1000 ns are <= 1 us");
        assert_eq!(view.buckets[1], 1, "1001 ns is <= 5 us");
        assert_eq!(view.buckets[BUCKET_BOUNDS_NS.len() - 1], 1, "10 s is <= 10 s");
        assert_eq!(view.buckets[BUCKET_BOUNDS_NS.len()], 1, "above 10 s: +Inf");
        assert_eq!(view.buckets.iter().sum::<u64>(), 5);
        assert_eq!(view.sum_ns, 1_000 + 1_001 + 10 * S + 10 * S + 1);
        assert!(view.all.is_none(), "histograms only when asked for");
        // The histograms grow to fit (up to an hour) and keep their precision.
        let mut scratch = Scratch::default();
        let all = series.view(Some(&mut scratch), 0).all.expect("asked for");
        assert_eq!(all.len, 5);
        assert_eq!(all.max, highest(index(10 * S + 1)));
        assert_eq!(all.mean, view.sum_ns as f64 / 5.0, "exact");
        series.update(|s| s.record(2 * MAX_TRACKED_NS, 0, 10 * S));
        let all = series.view(Some(&mut scratch), 0).all.expect("asked for");
        assert_eq!(all.max, highest(index(MAX_TRACKED_NS)), "clamped to an hour");
        let window = series.view(Some(&mut scratch), 0).window.expect("asked for");
        assert_eq!(window.len, 6);
        assert_eq!(window.quantiles[0], highest(index(1_000)));
    }

    #[test]
    fn the_window_keeps_six_periods_and_forgets_older_ones() {
        let series = Series::new(2);
        let period = 10 * S;
        series.update(|s| s.record(5, 0, period)); // period 0
        series.update(|s| s.record(7, 15 * S, period)); // period 1
        let mut scratch = Scratch::default();
        let mut window = |now: u64| {
            let view = series.view(Some(&mut scratch), now);
            let len = |s: Option<Summary>| s.map_or(0, |s| s.len);
            (len(view.window), len(view.all))
        };
        assert_eq!(window(1), (2, 2));
        assert_eq!(window(5), (2, 2), "periods 0..=5 are the window at 5");
        assert_eq!(window(6), (1, 2), "period 0 left the window at 6");
        assert_eq!(window(7), (0, 2));
        // Reusing slot 0 a turn later drops what it held.
        series.update(|s| s.record(9, 60 * S, period)); // period 6, slot 0
        assert_eq!(window(6), (2, 3));
        // An operation a full turn late is out of the window but counts for all time.
        series.update(|s| s.record(9, 1, period));
        assert_eq!(window(6), (2, 4));
        assert_eq!(series.newest_tag(), 7);
        series.clear_window();
        assert_eq!(window(6), (0, 4));
        assert_eq!(series.newest_tag(), 0);
    }

    #[test]
    fn plugins_past_the_limit_are_counted_together() {
        let series = Series::new(2);
        series.update(|s| {
            for i in 0..MAX_PLUGINS + 5 {
                s.plugin(&format!("p{i}")).served += 1;
            }
            s.plugin("p0").served += 1;
        });
        let view = series.view(None, 0);
        assert_eq!(view.plugins.len(), MAX_PLUGINS + 1);
        let other = view.plugins.iter().find(|p| &*p.name == OTHER).map(|p| p.served);
        assert_eq!(other, Some(5));
        let p0 = view.plugins.iter().find(|p| &*p.name == "p0").map(|p| p.served);
        assert_eq!(p0, Some(2));
    }

    #[test]
    fn shards_merge_what_every_thread_recorded() {
        let series = std::sync::Arc::new(Series::new(4));
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let series = std::sync::Arc::clone(&series);
                std::thread::spawn(move || {
                    for i in 0..1_000u64 {
                        series.update(|s| {
                            s.count(Counter::Calls);
                            s.record(t * 1_000 + i, 0, S);
                        });
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("joins");
        }
        let view = series.view(Some(&mut Scratch::default()), 0);
        assert_eq!(view.get(Counter::Calls), 8_000);
        assert_eq!(view.all.map(|s| s.len), Some(8_000));
        assert_eq!(view.window.map(|s| s.len), Some(8_000));
        assert_eq!(view.sum_ns, (0..8_000u64).sum::<u64>());
    }

    #[test]
    fn a_shard_holds_tens_of_kilobytes() {
        assert!((2..=MAX_SHARDS).contains(&shard_count()));
        let series = Series::new(MAX_SHARDS);
        assert_eq!(series.histogram_bytes(), 0, "nothing until used");
        // Latencies of 10 us to 50 ms, over every slot of the window, from one thread.
        for i in 0..6_000u64 {
            series.update(|s| s.record(10_000 + i * 8_333, i * 10 * S / 1_000, 10 * S));
        }
        let bytes = series.histogram_bytes();
        let all = 8 * ((index(50_000_000) | 127) + 1); // to the end of its power of two
        assert_eq!(all, 20_480);
        assert!(bytes > 2 * all && bytes <= 2 * all + 6 * all / 2, "{bytes}");
    }
}
