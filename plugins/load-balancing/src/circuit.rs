//! A circuit breaker per agent.
//!
//! - **Closed**: outcomes are counted; `failure_threshold` consecutive failures open it.
//! - **Open**: the agent is out of every pick for a backoff of `base_backoff_ms x 2^(n - 1)`
//!   (`n`: how many times it opened since it last closed), capped at `max_backoff_ms`. Outcomes
//!   of calls that were in flight when it opened change nothing.
//! - **Half-open**, once the backoff is over: the next pick (or admission) may choose the agent
//!   once, as a probe. Only an outcome reported for the agent while that probe is out settles
//!   the circuit: a success closes it and resets its counters; a failure opens it again with the
//!   doubled backoff. Outcomes reported while half-open with no probe out (a late answer of a
//!   call started before the circuit opened, an observation of a call made elsewhere) change
//!   nothing: the clock alone never closes or reopens a circuit. A probe whose outcome never
//!   comes is given up after one more backoff, and another probe is let through.

use serde::Serialize;

/// Where a circuit stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CircuitState {
    /// The agent takes work.
    Closed,
    /// The agent is out of every pick until its backoff is over.
    Open,
    /// The backoff is over: one probe may go through.
    HalfOpen,
}

impl CircuitState {
    /// `"closed"`, `"open"` or `"half_open"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            CircuitState::Closed => "closed",
            CircuitState::Open => "open",
            CircuitState::HalfOpen => "half_open",
        }
    }
}

/// The breaker's settings, in nanoseconds.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Policy {
    pub(crate) failure_threshold: u32,
    pub(crate) base_backoff_ns: u64,
    pub(crate) max_backoff_ns: u64,
}

impl Policy {
    /// The backoff after the circuit opened for the `opened`-th time (1-based).
    pub(crate) fn backoff_ns(&self, opened: u32) -> u64 {
        let doublings = opened.saturating_sub(1).min(63);
        self.base_backoff_ns
            .saturating_mul(1u64 << doublings)
            .min(self.max_backoff_ns)
    }
}

/// What an outcome did to a circuit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transition {
    None,
    Opened { backoff_ns: u64 },
    Closed,
}

#[derive(Debug, Clone, Default)]
pub(crate) struct Circuit {
    /// Consecutive failures since the last success (kept counting while open).
    pub(crate) failures: u32,
    /// Times opened since it last closed.
    pub(crate) times_opened: u32,
    open: bool,
    pub(crate) open_until_ns: u64,
    /// While half-open: a probe went out and is awaited until then.
    probe_until_ns: Option<u64>,
}

impl Circuit {
    pub(crate) fn state(&self, now_ns: u64) -> CircuitState {
        if !self.open {
            CircuitState::Closed
        } else if now_ns < self.open_until_ns {
            CircuitState::Open
        } else {
            CircuitState::HalfOpen
        }
    }

    pub(crate) fn is_closed(&self) -> bool {
        !self.open
    }

    /// Whether a pick may choose the agent now.
    #[inline]
    pub(crate) fn admits(&self, now_ns: u64) -> bool {
        !self.open || (now_ns >= self.open_until_ns && self.probe_until_ns.is_none_or(|until| now_ns >= until))
    }

    /// Whether a probe is out and awaited.
    pub(crate) fn probe_in_flight(&self, now_ns: u64) -> bool {
        self.open && now_ns >= self.open_until_ns && self.probe_until_ns.is_some_and(|until| now_ns < until)
    }

    /// The agent was picked: if half-open, that pick is the probe. Returns whether it was.
    pub(crate) fn on_pick(&mut self, now_ns: u64, policy: &Policy) -> bool {
        if self.open && now_ns >= self.open_until_ns {
            let wait = policy.backoff_ns(self.times_opened.max(1));
            self.probe_until_ns = Some(now_ns.saturating_add(wait));
            true
        } else {
            false
        }
    }

    /// Records one outcome. While half-open, only an outcome reported while the probe is out
    /// counts (it settles the circuit); any other is ignored.
    pub(crate) fn record(&mut self, success: bool, now_ns: u64, policy: &Policy) -> Transition {
        let state = self.state(now_ns);
        if state == CircuitState::HalfOpen && !self.probe_in_flight(now_ns) {
            return Transition::None;
        }
        if !success {
            self.failures = self.failures.saturating_add(1);
        }
        match state {
            CircuitState::Closed if success => {
                self.failures = 0;
                Transition::None
            }
            CircuitState::Closed if self.failures >= policy.failure_threshold => self.trip(now_ns, policy),
            CircuitState::Closed | CircuitState::Open => Transition::None,
            CircuitState::HalfOpen if success => {
                *self = Circuit::default();
                Transition::Closed
            }
            CircuitState::HalfOpen => self.trip(now_ns, policy),
        }
    }

    fn trip(&mut self, now_ns: u64, policy: &Policy) -> Transition {
        self.times_opened = self.times_opened.saturating_add(1);
        let backoff_ns = policy.backoff_ns(self.times_opened);
        self.open = true;
        self.open_until_ns = now_ns.saturating_add(backoff_ns);
        self.probe_until_ns = None;
        Transition::Opened { backoff_ns }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;
    const POLICY: Policy = Policy {
        failure_threshold: 3,
        base_backoff_ns: 100 * MS,
        max_backoff_ns: 350 * MS,
    };

    #[test]
    fn opens_half_opens_recovers_and_backs_off_longer() {
        let mut c = Circuit::default();
        assert_eq!(c.record(false, 0, &POLICY), Transition::None);
        assert_eq!(
            c.record(true, 0, &POLICY),
            Transition::None,
            "a success resets the count"
        );
        assert_eq!(c.failures, 0);
        c.record(false, 0, &POLICY);
        c.record(false, 0, &POLICY);
        assert_eq!(
            c.record(false, 10 * MS, &POLICY),
            Transition::Opened { backoff_ns: 100 * MS }
        );
        assert_eq!(c.state(50 * MS), CircuitState::Open);
        assert!(!c.admits(109 * MS));
        // Late outcomes of calls in flight change nothing while open.
        assert_eq!(c.record(true, 20 * MS, &POLICY), Transition::None);
        assert_eq!(c.state(20 * MS), CircuitState::Open);
        // Half-open: one probe.
        assert_eq!(c.state(110 * MS), CircuitState::HalfOpen);
        assert!(c.admits(110 * MS));
        assert!(c.on_pick(110 * MS, &POLICY));
        assert!(!c.admits(111 * MS), "only one probe");
        assert!(c.probe_in_flight(111 * MS));
        // The probe fails: open again, twice as long.
        assert_eq!(
            c.record(false, 120 * MS, &POLICY),
            Transition::Opened { backoff_ns: 200 * MS }
        );
        assert!(!c.admits(319 * MS));
        assert!(c.admits(320 * MS));
        c.on_pick(320 * MS, &POLICY);
        // Third time: capped.
        assert_eq!(
            c.record(false, 330 * MS, &POLICY),
            Transition::Opened { backoff_ns: 350 * MS }
        );
        // A probe that never answers is given up after one more backoff.
        assert!(c.on_pick(680 * MS, &POLICY));
        assert!(!c.admits(1_000 * MS));
        assert!(c.admits(1_030 * MS));
        // A successful probe closes it and resets everything.
        c.on_pick(1_030 * MS, &POLICY);
        assert_eq!(c.record(true, 1_040 * MS, &POLICY), Transition::Closed);
        assert_eq!((c.failures, c.times_opened), (0, 0));
        assert!(c.admits(1_040 * MS));
        for _ in 0..3 {
            c.record(false, 2_000 * MS, &POLICY);
        }
        assert_eq!(c.open_until_ns, 2_100 * MS, "the base backoff again after closing");
    }

    #[test]
    fn half_open_is_settled_only_by_the_outcome_of_a_probe() {
        let mut c = Circuit::default();
        for _ in 0..3 {
            c.record(false, 0, &POLICY);
        }
        assert_eq!(c.state(100 * MS), CircuitState::HalfOpen);
        // Outcomes after the backoff with no probe out (a late answer of a call started before
        // the circuit opened, an observation): ignored, whatever they say.
        assert_eq!(c.record(true, 100 * MS, &POLICY), Transition::None);
        assert_eq!(c.state(100 * MS), CircuitState::HalfOpen, "not closed without a probe");
        assert_eq!(c.record(false, 101 * MS, &POLICY), Transition::None);
        assert_eq!(
            (c.state(101 * MS), c.times_opened, c.failures),
            (CircuitState::HalfOpen, 1, 3),
            "not reopened without a probe, nothing counted"
        );
        assert!(c.admits(101 * MS), "the probe is still to go");
        // The probe's outcome settles it.
        assert!(c.on_pick(102 * MS, &POLICY));
        assert_eq!(c.record(true, 103 * MS, &POLICY), Transition::Closed);
        // Same for a failure: only with the probe out does it reopen the circuit.
        for _ in 0..3 {
            c.record(false, 200 * MS, &POLICY);
        }
        assert_eq!(c.record(false, 300 * MS, &POLICY), Transition::None);
        assert!(c.on_pick(300 * MS, &POLICY));
        assert_eq!(
            c.record(false, 301 * MS, &POLICY),
            Transition::Opened { backoff_ns: 200 * MS }
        );
        // A probe given up (no outcome within one more backoff): late outcomes are ignored again.
        assert!(c.on_pick(501 * MS, &POLICY));
        assert_eq!(c.record(true, 702 * MS, &POLICY), Transition::None);
        assert_eq!(c.state(702 * MS), CircuitState::HalfOpen);
    }
}
