//! One named series of figures (a capability, or a task kind): counters, per-plugin counts,
//! exact Prometheus buckets, an all-time HDR histogram and a sliding window of HDR histograms.
//!
//! A series is sharded: each thread records into the shard its thread index picks, under that
//! shard's own mutex, so concurrent observers rarely meet and one record costs one uncontended
//! lock. Readers lock the shards one at a time and merge them.
//!
//! Latencies are recorded in **nanoseconds**. The all-time histogram keeps 3 significant
//! figures (a value is reported within 0.1% of what was recorded); the window's histograms 2
//! (within 1%). Values above [`MAX_TRACKED_NS`] (one hour) are recorded as one hour in the
//! histograms (they stay exact in the Prometheus sum). Histograms auto-resize, so their memory
//! follows the largest value seen (about 100 KB for the all-time histogram of a shard whose
//! largest latency is a millisecond, about 7 KB per window slot), and a shard no thread has used
//! allocates none.

use hdrhistogram::Histogram;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

/// The largest latency the histograms tell apart: one hour, in nanoseconds.
pub(crate) const MAX_TRACKED_NS: u64 = 3_600_000_000_000;

/// Significant figures of the all-time histograms.
const SIGFIG: u8 = 3;

/// Significant figures of the window's histograms.
const WINDOW_SIGFIG: u8 = 2;

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
    latency: Option<Histogram<u32>>,
}

/// What one shard holds.
#[derive(Default)]
pub(crate) struct Shard {
    counters: [u64; COUNTERS],
    all: Option<Histogram<u64>>,
    sum_ns: u64,
    buckets: [u64; BUCKET_BOUNDS_NS.len() + 1],
    window: [Slot; WINDOW_SLOTS as usize],
    plugins: Vec<PluginCounts>,
}

/// A new auto-resizing histogram. (`Histogram::new` fails only for more than 5 significant
/// figures, so this is always `Some`.)
fn new_histogram<T: hdrhistogram::Counter>(sigfig: u8) -> Option<Histogram<T>> {
    Histogram::new(sigfig).ok()
}

/// The histogram in `slot`, made on first use.
#[inline]
fn histogram<T: hdrhistogram::Counter>(slot: &mut Option<Histogram<T>>, sigfig: u8) -> Option<&mut Histogram<T>> {
    if slot.is_none() {
        *slot = new_histogram(sigfig);
    }
    slot.as_mut()
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
        self.sum_ns = self.sum_ns.saturating_add(ns);
        let bucket = BUCKET_BOUNDS_NS.partition_point(|bound| *bound < ns);
        self.buckets[bucket] += 1;
        let tracked = ns.min(MAX_TRACKED_NS);
        // `record` resizes the histogram as needed (`saturating_record` would clamp to its
        // current range instead); it fails only if the counts outgrew `usize`, which a value
        // of at most an hour cannot make them do on a 64-bit target.
        if let Some(all) = histogram(&mut self.all, SIGFIG) {
            let _ = all.record(tracked);
        }
        let period = at_ns / bucket_ns.max(1);
        let slot = &mut self.window[(period % WINDOW_SLOTS) as usize];
        let tag = period + 1;
        if slot.tag < tag {
            // A slot last used a full turn ago (or never): start it afresh.
            slot.tag = tag;
            if let Some(h) = slot.latency.as_mut() {
                h.reset();
            }
        }
        if slot.tag == tag {
            if let Some(h) = histogram(&mut slot.latency, WINDOW_SIGFIG) {
                let _ = h.record(tracked);
            }
        }
        // Otherwise the operation is older than the slot's period, a turn or more behind:
        // it is out of the window already, and counts for all time only.
    }

    fn clear_window(&mut self) {
        for slot in &mut self.window {
            slot.tag = 0;
            if let Some(h) = slot.latency.as_mut() {
                h.reset();
            }
        }
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

/// How many shards a series has: the machine's parallelism rounded up to a power of two,
/// from 2 to 16.
pub(crate) fn shard_count() -> usize {
    std::thread::available_parallelism()
        .map_or(4, std::num::NonZeroUsize::get)
        .next_power_of_two()
        .clamp(2, 16)
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
    /// All time (when histograms were asked for).
    pub(crate) all: Option<Histogram<u64>>,
    /// The window (when histograms were asked for).
    pub(crate) window: Option<Histogram<u64>>,
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

    /// The series merged over its shards. With `histograms`, the all-time histogram and the
    /// window as it stands at period `now_period` (the slots of that period and the
    /// [`WINDOW_SLOTS`]` - 1` before it) are merged too.
    pub(crate) fn view(&self, histograms: bool, now_period: u64) -> SeriesView {
        let mut view = SeriesView {
            counters: [0; COUNTERS],
            sum_ns: 0,
            buckets: [0; BUCKET_BOUNDS_NS.len() + 1],
            plugins: Vec::new(),
            all: histograms.then(|| new_histogram(SIGFIG)).flatten(),
            window: histograms.then(|| new_histogram(WINDOW_SIGFIG)).flatten(),
        };
        let now_tag = now_period + 1;
        for shard in self.shards.iter() {
            let shard = lock(&shard.0);
            for (total, n) in view.counters.iter_mut().zip(shard.counters) {
                *total += n;
            }
            view.sum_ns = view.sum_ns.saturating_add(shard.sum_ns);
            for (total, n) in view.buckets.iter_mut().zip(shard.buckets) {
                *total += n;
            }
            for p in &shard.plugins {
                match view.plugins.iter_mut().find(|v| v.name == p.name) {
                    Some(v) => v.merge(p),
                    None => view.plugins.push(p.clone()),
                }
            }
            if let (Some(all), Some(recorded)) = (view.all.as_mut(), shard.all.as_ref()) {
                // Both auto-resize: adding cannot fail.
                let _ = all.add(recorded);
            }
            if let Some(window) = view.window.as_mut() {
                for slot in &shard.window {
                    // In the window: tags from now_tag - (WINDOW_SLOTS - 1) to now_tag (and
                    // any newer, should an operation carry a time ahead of the reader's).
                    let live = slot.tag != 0 && slot.tag + WINDOW_SLOTS > now_tag;
                    if let (true, Some(h)) = (live, slot.latency.as_ref()) {
                        for v in h.iter_recorded() {
                            let _ = window.record_n(v.value_iterated_to(), u64::from(v.count_at_value()));
                        }
                    }
                }
            }
        }
        view.plugins.sort_by(|a, b| a.name.cmp(&b.name));
        view
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn buckets_count_each_latency_once_at_its_upper_bound() {
        let series = Series::new(2);
        for ns in [0, 1_000, 1_001, 10 * S, 10 * S + 1] {
            series.update(|s| s.record(ns, 0, 10 * S));
        }
        let view = series.view(false, 0);
        assert_eq!(view.buckets[0], 2, "0 and 1000 ns are <= 1 us");
        assert_eq!(view.buckets[1], 1, "1001 ns is <= 5 us");
        assert_eq!(view.buckets[BUCKET_BOUNDS_NS.len() - 1], 1, "10 s is <= 10 s");
        assert_eq!(view.buckets[BUCKET_BOUNDS_NS.len()], 1, "above 10 s: +Inf");
        assert_eq!(view.buckets.iter().sum::<u64>(), 5);
        assert_eq!(view.sum_ns, 1_000 + 1_001 + 10 * S + 10 * S + 1);
        assert!(view.all.is_none(), "histograms only when asked for");
        // The histograms grow to fit (up to an hour) and keep their precision.
        let view = series.view(true, 0);
        let all = view.all.expect("asked for");
        assert_eq!(all.len(), 5);
        assert!(all.equivalent(all.max(), 10 * S + 1), "{}", all.max());
        series.update(|s| s.record(2 * MAX_TRACKED_NS, 0, 10 * S));
        let all = series.view(true, 0).all.expect("asked for");
        assert!(
            all.equivalent(all.max(), MAX_TRACKED_NS),
            "clamped to an hour: {}",
            all.max()
        );
        let window = series.view(true, 0).window.expect("asked for");
        assert_eq!(window.len(), 6);
        assert!(
            window.equivalent(window.value_at_quantile(0.5), 1_000),
            "{}",
            window.value_at_quantile(0.5)
        );
    }

    #[test]
    fn the_window_keeps_six_periods_and_forgets_older_ones() {
        let series = Series::new(2);
        let period = 10 * S;
        series.update(|s| s.record(5, 0, period)); // period 0
        series.update(|s| s.record(7, 15 * S, period)); // period 1
        let window = |now: u64| {
            let view = series.view(true, now);
            let all = view.all.map(|h| h.len());
            (view.window.map(|h| h.len()), all)
        };
        assert_eq!(window(1), (Some(2), Some(2)));
        assert_eq!(window(5), (Some(2), Some(2)), "periods 0..=5 are the window at 5");
        assert_eq!(window(6), (Some(1), Some(2)), "period 0 left the window at 6");
        assert_eq!(window(7), (Some(0), Some(2)));
        // Reusing slot 0 a turn later drops what it held.
        series.update(|s| s.record(9, 60 * S, period)); // period 6, slot 0
        assert_eq!(window(6), (Some(2), Some(3)));
        // An operation a full turn late is out of the window but counts for all time.
        series.update(|s| s.record(9, 1, period));
        assert_eq!(window(6), (Some(2), Some(4)));
        assert_eq!(series.newest_tag(), 7);
        series.clear_window();
        assert_eq!(window(6), (Some(0), Some(4)));
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
        let view = series.view(false, 0);
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
        let view = series.view(true, 0);
        assert_eq!(view.get(Counter::Calls), 8_000);
        assert_eq!(view.all.map(|h| h.len()), Some(8_000));
        assert_eq!(view.window.map(|h| h.len()), Some(8_000));
        assert_eq!(view.sum_ns, (0..8_000u64).sum::<u64>());
    }
}
