//! Quarantine: a circuit breaker per plugin, so that a plugin that keeps failing stops being
//! called (and stops costing every call its timeout) until it has had time to recover.
//!
//! - **Closed** (normal): every call goes to the plugin. Each failure (an error other than
//!   invalid input, a panic, a timeout) adds to a count of consecutive failures; a success
//!   resets it. At [`QuarantinePolicy::failures`] in a row the circuit **opens**.
//! - **Open**: the plugin is skipped as if it were absent (the call moves on to the next
//!   provider or the legacy path, and the failed attempts say it is quarantined) until its
//!   backoff has passed: [`QuarantinePolicy::backoff`] the first time, doubled each time it
//!   opens again, at most [`QuarantinePolicy::max_backoff`].
//! - **Half-open**: once the backoff has passed, one call is let through as a probe (the
//!   others still skip it). A probe that succeeds closes the circuit, and the backoff starts
//!   over; one that fails opens it again, with the backoff doubled.
//!
//! A quarantined plugin is reported `unhealthy` by [`Orchestrator::health`] and in the
//! catalog ([`PluginInfo::circuit`]), and the orchestrator announces each change with a custom
//! event (`plugin_quarantined`, `plugin_recovered`; source `orchestrator`). Time is the
//! orchestrator's clock, so a test on a `ManualClock` moves through the backoff by hand.
//!
//! The closed path costs one atomic load per call, and one more store after a failure.
//!
//! [`Orchestrator::health`]: crate::Orchestrator::health
//! [`PluginInfo::circuit`]: crate::PluginInfo::circuit

use serde::Serialize;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

/// When a failing plugin is quarantined, and for how long. Set with
/// [`OrchestratorBuilder::quarantine`](crate::OrchestratorBuilder::quarantine).
///
/// ```
/// use orchestrator_core::QuarantinePolicy;
/// use std::time::Duration;
/// let policy = QuarantinePolicy::default().failures(3).backoff(Duration::from_millis(500));
/// assert_eq!(policy.max_backoff, Duration::from_secs(60));
/// assert!(QuarantinePolicy::disabled().failures == 0);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct QuarantinePolicy {
    /// Consecutive failures that open the circuit (default 5; 0 never quarantines).
    pub failures: u32,
    /// How long the circuit stays open the first time (default 1 s).
    pub backoff: Duration,
    /// The longest it stays open, however often it reopens (default 60 s).
    pub max_backoff: Duration,
}

impl Default for QuarantinePolicy {
    fn default() -> Self {
        Self {
            failures: 5,
            backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
        }
    }
}

impl QuarantinePolicy {
    /// Never quarantines: every call goes to every provider in turn, however often it fails.
    pub fn disabled() -> Self {
        Self {
            failures: 0,
            ..Self::default()
        }
    }

    /// Sets [`failures`](Self::failures).
    #[must_use]
    pub fn failures(mut self, n: u32) -> Self {
        self.failures = n;
        self
    }

    /// Sets [`backoff`](Self::backoff).
    #[must_use]
    pub fn backoff(mut self, backoff: Duration) -> Self {
        self.backoff = backoff;
        self
    }

    /// Sets [`max_backoff`](Self::max_backoff).
    #[must_use]
    pub fn max_backoff(mut self, max: Duration) -> Self {
        self.max_backoff = max;
        self
    }
}

/// A plugin's circuit, as the catalog shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum CircuitState {
    /// Called normally.
    Closed,
    /// Quarantined: skipped until its backoff has passed.
    Open,
    /// Its backoff has passed: the next call is a probe.
    HalfOpen,
}

/// A plugin's circuit breaker, as [`PluginInfo::circuit`](crate::PluginInfo::circuit) reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct CircuitInfo {
    /// Its state.
    pub state: CircuitState,
    /// Failures in a row, now.
    pub consecutive_failures: u32,
    /// How many times it has been quarantined.
    pub times_opened: u32,
    /// While open: how long until a probe may go through, in milliseconds.
    pub retry_in_ms: Option<u64>,
}

/// What a breaker says about one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admission {
    /// Call it.
    Call,
    /// Call it: it is the probe of a half-open circuit.
    Probe,
    /// Skip it: quarantined for this much longer.
    Skip { retry_in_ns: u64 },
}

/// What a call's outcome did to the circuit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transition {
    None,
    Opened { failures: u32, backoff: Duration },
    Closed,
}

/// One plugin's breaker. All atomics: a call reads one of them when the circuit is closed.
#[derive(Debug, Default)]
pub(crate) struct Breaker {
    consecutive: AtomicU32,
    /// While open: when a probe may go through (monotonic ns); 0 when closed.
    open_until_ns: AtomicU64,
    /// The backoff of the last opening (ns); doubles on each reopening.
    backoff_ns: AtomicU64,
    times_opened: AtomicU32,
    /// A probe is in flight.
    probing: AtomicBool,
}

impl Breaker {
    /// Whether a call may go to the plugin. `now_ns` is read only when the circuit is open.
    pub(crate) fn admit(&self, now_ns: impl FnOnce() -> u64) -> Admission {
        let until = self.open_until_ns.load(Ordering::Acquire);
        if until == 0 {
            return Admission::Call;
        }
        let now_ns = now_ns();
        if now_ns < until {
            return Admission::Skip {
                retry_in_ns: until - now_ns,
            };
        }
        match self
            .probing
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => Admission::Probe,
            // Someone else's probe is out: wait for its verdict.
            Err(_) => Admission::Skip { retry_in_ns: 0 },
        }
    }

    pub(crate) fn succeeded(&self, probe: bool) -> Transition {
        if self.consecutive.load(Ordering::Relaxed) != 0 {
            self.consecutive.store(0, Ordering::Relaxed);
        }
        if probe {
            self.open_until_ns.store(0, Ordering::Release);
            self.backoff_ns.store(0, Ordering::Relaxed);
            self.probing.store(false, Ordering::Release);
            return Transition::Closed;
        }
        Transition::None
    }

    pub(crate) fn failed(&self, probe: bool, now_ns: u64, policy: &QuarantinePolicy) -> Transition {
        let failures = self.consecutive.fetch_add(1, Ordering::Relaxed).saturating_add(1);
        if policy.failures == 0 {
            return Transition::None;
        }
        let already_open = self.open_until_ns.load(Ordering::Acquire) != 0;
        if !probe && (already_open || failures < policy.failures) {
            return Transition::None;
        }
        let base = u64::try_from(policy.backoff.as_nanos()).unwrap_or(u64::MAX).max(1);
        let max = u64::try_from(policy.max_backoff.as_nanos())
            .unwrap_or(u64::MAX)
            .max(base);
        let previous = self.backoff_ns.load(Ordering::Relaxed);
        let backoff = if probe && previous > 0 {
            previous.saturating_mul(2).min(max)
        } else {
            base
        };
        self.backoff_ns.store(backoff, Ordering::Relaxed);
        self.open_until_ns
            .store(now_ns.saturating_add(backoff).max(1), Ordering::Release);
        self.times_opened.fetch_add(1, Ordering::Relaxed);
        if probe {
            self.probing.store(false, Ordering::Release);
        }
        Transition::Opened {
            failures,
            backoff: Duration::from_nanos(backoff),
        }
    }

    /// A probe that ended without a verdict (the call was invalid input, or it was dropped):
    /// lets another call probe.
    pub(crate) fn probe_abandoned(&self) {
        self.probing.store(false, Ordering::Release);
    }

    pub(crate) fn info(&self, now_ns: u64) -> CircuitInfo {
        let until = self.open_until_ns.load(Ordering::Acquire);
        let (state, retry_in_ms) = if until == 0 {
            (CircuitState::Closed, None)
        } else if now_ns < until {
            (CircuitState::Open, Some((until - now_ns).div_ceil(1_000_000)))
        } else {
            (CircuitState::HalfOpen, Some(0))
        };
        CircuitInfo {
            state,
            consecutive_failures: self.consecutive.load(Ordering::Relaxed),
            times_opened: self.times_opened.load(Ordering::Relaxed),
            retry_in_ms,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    fn policy() -> QuarantinePolicy {
        QuarantinePolicy::default()
            .failures(3)
            .backoff(Duration::from_millis(100))
            .max_backoff(Duration::from_millis(350))
    }

    #[test]
    fn opens_after_consecutive_failures_and_probes_after_the_backoff() {
        let breaker = Breaker::default();
        let p = policy();
        assert_eq!(breaker.failed(false, 0, &p), Transition::None);
        assert_eq!(breaker.succeeded(false), Transition::None); // resets the count
        assert_eq!(breaker.failed(false, 0, &p), Transition::None);
        assert_eq!(breaker.failed(false, 0, &p), Transition::None);
        assert!(matches!(
            breaker.failed(false, 10 * MS, &p),
            Transition::Opened { failures: 3, .. }
        ));
        assert_eq!(breaker.admit(|| 50 * MS), Admission::Skip { retry_in_ns: 60 * MS });
        assert_eq!(breaker.info(50 * MS).state, CircuitState::Open);
        // After the backoff: one probe, the others wait for its verdict.
        assert_eq!(breaker.info(110 * MS).state, CircuitState::HalfOpen);
        assert_eq!(breaker.admit(|| 110 * MS), Admission::Probe);
        assert_eq!(breaker.admit(|| 110 * MS), Admission::Skip { retry_in_ns: 0 });
        // The probe fails: open again, for twice as long, then capped.
        assert!(matches!(
            breaker.failed(true, 110 * MS, &p),
            Transition::Opened { backoff, .. } if backoff == Duration::from_millis(200)
        ));
        assert_eq!(breaker.admit(|| 309 * MS), Admission::Skip { retry_in_ns: MS });
        assert_eq!(breaker.admit(|| 310 * MS), Admission::Probe);
        assert!(matches!(
            breaker.failed(true, 310 * MS, &p),
            Transition::Opened { backoff, .. } if backoff == Duration::from_millis(350)
        ));
        // A probe that succeeds closes it; the next opening starts from the base backoff.
        assert_eq!(breaker.admit(|| 660 * MS), Admission::Probe);
        assert_eq!(breaker.succeeded(true), Transition::Closed);
        assert_eq!(breaker.admit(|| 660 * MS), Admission::Call);
        assert_eq!(breaker.info(660 * MS).times_opened, 3);
        for _ in 0..2 {
            breaker.failed(false, 700 * MS, &p);
        }
        assert!(matches!(
            breaker.failed(false, 700 * MS, &p),
            Transition::Opened { backoff, .. } if backoff == Duration::from_millis(100)
        ));
    }

    #[test]
    fn a_disabled_policy_never_opens() {
        let breaker = Breaker::default();
        for _ in 0..100 {
            assert_eq!(
                breaker.failed(false, 0, &QuarantinePolicy::disabled()),
                Transition::None
            );
        }
        assert_eq!(breaker.admit(|| 0), Admission::Call);
    }

    #[test]
    fn an_abandoned_probe_lets_another_call_probe() {
        let breaker = Breaker::default();
        let p = policy().failures(1);
        breaker.failed(false, 0, &p);
        assert_eq!(breaker.admit(|| 200 * MS), Admission::Probe);
        breaker.probe_abandoned();
        assert_eq!(breaker.admit(|| 200 * MS), Admission::Probe);
    }
}
