//! Peak EWMA: an agent's round-trip-time estimate, as in Finagle's `PeakEwma`, tower's
//! `balance::p2c` + `load::PeakEwma` and linkerd.
//!
//! - Every comparison and blend is made against the **current** estimate, `cur`: the stored
//!   value decayed to the time of the observation (as a read would give it), never the raw
//!   stored value, so that an answer faster than what a pick sees cannot raise the estimate.
//! - An observation **above** `cur` replaces it at once (the peak): one slow answer is enough to
//!   steer work away.
//! - An observation at or below `cur` moves it towards the observation:
//!   `cur x w + rtt x (1 - w)` with `w = exp(-elapsed / tau)`, where `elapsed` is the time since
//!   the last observation and `tau = half_life / ln 2`. The result never exceeds `cur`.
//! - Observations that are not finite non-negative numbers are ignored (the plugin refuses them
//!   before they get here): a NaN or infinite estimate would win or lose every comparison.
//! - Between observations the estimate **decays towards zero** with the same `tau` (Finagle and
//!   tower do the same on every read), so that an agent that was slow once and then left alone
//!   is eventually tried again and gets a fresh measurement, instead of being shunned forever.
//!   Unlike Finagle's, this reading does not write: the value is a pure function of the last
//!   observation and the time, so how often the balancer looks changes nothing.
//! - An agent never observed is assumed to take the configured default RTT.

/// One agent's estimate, in nanoseconds.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct PeakEwma {
    estimate_ns: f64,
    at_ns: u64,
    observed: bool,
}

impl PeakEwma {
    /// The estimate at `now_ns` (decayed since the last observation), or `default_ns` if the
    /// agent was never observed.
    #[inline]
    pub(crate) fn estimate_ns(&self, now_ns: u64, tau_ns: f64, default_ns: f64) -> f64 {
        if !self.observed {
            return default_ns;
        }
        let elapsed = now_ns.saturating_sub(self.at_ns);
        if elapsed == 0 {
            self.estimate_ns
        } else {
            self.estimate_ns * (-(elapsed as f64) / tau_ns).exp()
        }
    }

    /// Records one round trip of `rtt_ns` that ended at `now_ns`. A value that is not a finite
    /// non-negative number is ignored.
    pub(crate) fn observe(&mut self, rtt_ns: f64, now_ns: u64, tau_ns: f64) {
        if !rtt_ns.is_finite() || rtt_ns < 0.0 {
            return;
        }
        if !self.observed {
            self.estimate_ns = rtt_ns;
        } else {
            // The estimate as a read gives it now, not the raw stored value.
            let elapsed = now_ns.saturating_sub(self.at_ns) as f64;
            let w = (-elapsed / tau_ns).exp();
            let cur = self.estimate_ns * w;
            self.estimate_ns = if rtt_ns > cur {
                rtt_ns
            } else {
                cur * w + rtt_ns * (1.0 - w)
            };
        }
        self.observed = true;
        self.at_ns = self.at_ns.max(now_ns);
    }
}

/// `tau` in nanoseconds for a half-life in milliseconds.
pub(crate) fn tau_ns(half_life_ms: u64) -> f64 {
    half_life_ms as f64 * 1e6 / std::f64::consts::LN_2
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-6 * b.abs().max(1.0)
    }

    #[test]
    fn a_spike_counts_at_once_and_decays_with_the_half_life() {
        let tau = tau_ns(10_000);
        let mut e = PeakEwma::default();
        assert_eq!(e.estimate_ns(0, tau, 30.0 * MS as f64), 30.0 * MS as f64, "default");
        e.observe(10.0 * MS as f64, 0, tau);
        assert!(close(e.estimate_ns(0, tau, 0.0), 10.0 * MS as f64));
        // The spike replaces the estimate at once.
        e.observe(500.0 * MS as f64, 1_000 * MS, tau);
        assert!(close(e.estimate_ns(1_000 * MS, tau, 0.0), 500.0 * MS as f64));
        // Left alone for one half-life: half of it.
        assert!(close(e.estimate_ns(11_000 * MS, tau, 0.0), 250.0 * MS as f64));
        // An observation below the decayed 250 one half-life later counts half against it.
        e.observe(10.0 * MS as f64, 11_000 * MS, tau);
        assert!(close(e.estimate_ns(11_000 * MS, tau, 0.0), 130.0 * MS as f64));
        // Two more half-lives of fast answers: 130 decays to 65, blends to 37.5; that decays to
        // 18.75 and blends to 14.375: close to the fast latency again.
        e.observe(10.0 * MS as f64, 21_000 * MS, tau);
        assert!(close(e.estimate_ns(21_000 * MS, tau, 0.0), 37.5 * MS as f64));
        e.observe(10.0 * MS as f64, 31_000 * MS, tau);
        let now = e.estimate_ns(31_000 * MS, tau, 0.0);
        assert!(close(now, 14.375 * MS as f64), "{now}");
    }

    #[test]
    fn a_fast_answer_never_raises_the_decayed_estimate() {
        let tau = tau_ns(10_000);
        let mut e = PeakEwma::default();
        e.observe(500.0 * MS as f64, 1_000 * MS, tau);
        let before = e.estimate_ns(11_000 * MS, tau, 0.0);
        assert!(close(before, 250.0 * MS as f64), "{before}");
        e.observe(10.0 * MS as f64, 11_000 * MS, tau);
        let after = e.estimate_ns(11_000 * MS, tau, 0.0);
        assert!(
            after <= before,
            "a 10 ms answer raised the estimate from {before} to {after}"
        );
        assert!(close(after, 130.0 * MS as f64), "{after}");
        // Whatever the elapsed time, an answer at or below what a read gives cannot raise it.
        for (rtt_ms, elapsed_ms) in [(0.0, 1), (100.0, 500), (129.0, 5_000), (1.0, 60_000)] {
            let mut e2 = e;
            let at = 11_000 * MS + elapsed_ms * MS;
            let cur = e2.estimate_ns(at, tau, 0.0);
            let rtt = (rtt_ms * MS as f64).min(cur);
            e2.observe(rtt, at, tau);
            assert!(e2.estimate_ns(at, tau, 0.0) <= cur, "{rtt_ms} ms after {elapsed_ms} ms");
        }
        // An answer above what a read gives is the new peak, even below the stored value.
        let mut e3 = e;
        e3.observe(100.0 * MS as f64, 21_000 * MS, tau);
        assert!(close(e3.estimate_ns(21_000 * MS, tau, 0.0), 100.0 * MS as f64));
    }

    #[test]
    fn non_finite_or_negative_observations_are_ignored() {
        let tau = tau_ns(1_000);
        let mut e = PeakEwma::default();
        e.observe(f64::INFINITY, 0, tau);
        e.observe(f64::NAN, 0, tau);
        e.observe(-1.0, 0, tau);
        assert_eq!(e.estimate_ns(0, tau, 7.0), 7.0, "still never observed");
        e.observe(20.0, 0, tau);
        e.observe(f64::INFINITY, MS, tau);
        e.observe(f64::NAN, 2 * MS, tau);
        let now = e.estimate_ns(10 * MS, tau, 0.0);
        assert!(now.is_finite() && now > 0.0 && now <= 20.0, "{now}");
    }

    #[test]
    fn reading_does_not_change_the_estimate() {
        let tau = tau_ns(1_000);
        let mut a = PeakEwma::default();
        a.observe(100.0, 0, tau);
        let b = a;
        for t in 0..100 {
            let _ = a.estimate_ns(t * MS, tau, 0.0);
        }
        a.observe(50.0, 500 * MS, tau);
        let mut b2 = b;
        b2.observe(50.0, 500 * MS, tau);
        assert_eq!(a.estimate_ns(600 * MS, tau, 0.0), b2.estimate_ns(600 * MS, tau, 0.0));
    }
}
