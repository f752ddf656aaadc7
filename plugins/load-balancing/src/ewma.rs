//! Peak EWMA: an agent's round-trip-time estimate, as in Finagle's `PeakEwma`, tower's
//! `balance::p2c` + `load::PeakEwma` and linkerd.
//!
//! - An observation **above** the estimate replaces it at once (the peak): one slow answer is
//!   enough to steer work away.
//! - An observation at or below it moves the estimate towards it with weight
//!   `w = exp(-elapsed / tau)` on the old value, where `elapsed` is the time since the last
//!   observation and `tau = half_life / ln 2`: after one half-life the old value and the new
//!   observation count half each.
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

    /// Records one round trip of `rtt_ns` that ended at `now_ns`.
    pub(crate) fn observe(&mut self, rtt_ns: f64, now_ns: u64, tau_ns: f64) {
        if !self.observed || rtt_ns > self.estimate_ns {
            self.estimate_ns = rtt_ns;
        } else {
            let elapsed = now_ns.saturating_sub(self.at_ns) as f64;
            let w = (-elapsed / tau_ns).exp();
            self.estimate_ns = self.estimate_ns * w + rtt_ns * (1.0 - w);
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
        // An observation below it one half-life later counts half.
        e.observe(10.0 * MS as f64, 11_000 * MS, tau);
        assert!(close(e.estimate_ns(11_000 * MS, tau, 0.0), 255.0 * MS as f64));
        // Two more half-lives of fast answers: close to the fast latency again.
        e.observe(10.0 * MS as f64, 21_000 * MS, tau);
        e.observe(10.0 * MS as f64, 31_000 * MS, tau);
        let now = e.estimate_ns(31_000 * MS, tau, 0.0);
        assert!(close(now, (255.0 / 4.0 + 10.0 * 0.75) * MS as f64), "{now}");
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
