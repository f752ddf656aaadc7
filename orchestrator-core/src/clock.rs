//! The clock plugins read through the host: real time by default, a hand-driven one for tests.
//!
//! Plugins that act on time (idle agents put to sleep, sessions that expire, requests that time
//! out, circuits that half-open) read it through [`HostHandle::now_unix_ms`] and
//! [`HostHandle::monotonic_ns`](plugin_api::HostHandle::monotonic_ns), which the host answers
//! from its [`Clock`]. Give the builder a [`ManualClock`] and a test moves time forward with
//! [`ManualClock::advance`] instead of sleeping. Only what plugins see is affected: the
//! orchestrator's own timers (`call_timeout`, drains) always run on real time, so a test cannot
//! hang a call by stopping the clock.
//!
//! [`HostHandle::now_unix_ms`]: plugin_api::HostHandle::now_unix_ms

use std::fmt;
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A source of time for plugins.
pub trait Clock: Send + Sync + 'static {
    /// Wall-clock milliseconds since the Unix epoch.
    fn now_unix_ms(&self) -> u64;
    /// Monotonic nanoseconds from an origin fixed when the clock was made.
    fn monotonic_ns(&self) -> u64;
}

/// Real time: the system clock, and a monotonic clock from when it was made. The default.
///
/// The monotonic clock reads the CPU's time-stamp counter where it is invariant (through
/// [`quanta`], calibrated once per process against the OS clock), and the OS clock elsewhere:
/// every observed dispatch reads it twice, and on virtual machines the OS clock costs about
/// 30 ns a read against a few for the counter. The price: the first clock made in a process
/// calibrates (about 0.6 ms on a 2-core VM, at most 200 ms), and the counter's rate is
/// measured once, so over long spans it may differ from the OS clock by some parts per
/// million (the OS clock is slewed by NTP; the counter is not). For timing operations and
/// expiring state that is well inside what matters; a plugin that needs the OS clock's exact
/// rate over hours should read it itself.
#[derive(Debug, Clone, Copy)]
pub struct SystemClock {
    origin_ns: u64,
}

impl SystemClock {
    /// A clock whose monotonic origin is now.
    pub fn new() -> Self {
        Self {
            origin_ns: real_now_ns(),
        }
    }
}

/// Wall-clock milliseconds since the Unix epoch, from the OS (no calibration).
pub(crate) fn system_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The process's counter clock, calibrated on first use.
fn real_clock() -> &'static quanta::Clock {
    static CLOCK: OnceLock<quanta::Clock> = OnceLock::new();
    CLOCK.get_or_init(quanta::Clock::new)
}

/// Real monotonic nanoseconds from an arbitrary origin fixed for the process: cheap enough for
/// the host's own timing on the dispatch path (the call timeout's first poll, see `guard`).
pub(crate) fn real_now_ns() -> u64 {
    let clock = real_clock();
    clock.delta_as_nanos(0, clock.raw())
}

impl Default for SystemClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for SystemClock {
    fn now_unix_ms(&self) -> u64 {
        system_unix_ms()
    }

    fn monotonic_ns(&self) -> u64 {
        real_now_ns().saturating_sub(self.origin_ns)
    }
}

/// A clock that moves only when told: for tests of time-driven plugins. Clones share the time.
///
/// ```
/// use orchestrator_core::{Clock, ManualClock};
/// use std::time::Duration;
/// let clock = ManualClock::starting_at_unix_ms(1_700_000_000_000);
/// clock.advance(Duration::from_secs(90));
/// assert_eq!(clock.now_unix_ms(), 1_700_000_090_000);
/// assert_eq!(clock.monotonic_ns(), 90_000_000_000);
/// ```
#[derive(Clone, Default)]
pub struct ManualClock {
    start_unix_ms: u64,
    elapsed_ns: Arc<AtomicU64>,
}

impl fmt::Debug for ManualClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ManualClock")
            .field("now_unix_ms", &self.now_unix_ms())
            .finish()
    }
}

impl ManualClock {
    /// A clock standing at the real time now; it moves only with [`advance`](Self::advance).
    pub fn new() -> Self {
        Self::starting_at_unix_ms(system_unix_ms())
    }

    /// A clock standing at `unix_ms`.
    pub fn starting_at_unix_ms(unix_ms: u64) -> Self {
        Self {
            start_unix_ms: unix_ms,
            elapsed_ns: Arc::default(),
        }
    }

    /// Moves time forward by `by` (for every clone).
    pub fn advance(&self, by: Duration) {
        let ns = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        // Saturating: time never wraps around to go backwards.
        let _ = self
            .elapsed_ns
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |t| Some(t.saturating_add(ns)));
    }
}

impl Clock for ManualClock {
    fn now_unix_ms(&self) -> u64 {
        self.start_unix_ms
            .saturating_add(self.elapsed_ns.load(Ordering::Acquire) / 1_000_000)
    }

    fn monotonic_ns(&self) -> u64 {
        self.elapsed_ns.load(Ordering::Acquire)
    }
}

impl<C: Clock> Clock for Arc<C> {
    fn now_unix_ms(&self) -> u64 {
        (**self).now_unix_ms()
    }

    fn monotonic_ns(&self) -> u64 {
        (**self).monotonic_ns()
    }
}
