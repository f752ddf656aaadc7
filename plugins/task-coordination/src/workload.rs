//! Per-agent books: live tasks, reservations, and the durations of completed tasks.
//!
//! Durations go into an HDR histogram per agent (two significant figures: exact below 256 ms,
//! within 1% above) plus an exact sum for the mean, so memory per agent stays bounded (a few
//! kilobytes, growing only with the longest duration seen, at most about 17 KB) however many tasks it
//! completes.

use crate::fit::Own;
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use std::collections::BTreeSet;

/// Significant figures kept by the duration histograms.
const SIGFIG: u8 = 2;
/// The longest duration the histograms tell apart (about 35 years): it bounds their memory.
const MAX_TRACKED_MS: u64 = 1 << 40;

/// What this plugin knows about one agent.
#[derive(Debug, Default)]
pub(crate) struct AgentBook {
    /// Tasks mapped to the agent and not completed (assigned or running).
    pub(crate) tasks: BTreeSet<String>,
    /// How many of `tasks` are running.
    pub(crate) running: u32,
    /// Reservations held by fulfilled agent requests.
    pub(crate) reserved: u32,
    pub(crate) done: u64,
    pub(crate) failed: u64,
    pub(crate) durations: Durations,
    /// The capacity last seen from the host (kept for agents that deregistered).
    pub(crate) capacity: Option<u32>,
}

impl AgentBook {
    /// What this plugin counts on the agent: live tasks and reservations.
    pub(crate) fn own(&self) -> Own {
        Own {
            live: u32::try_from(self.tasks.len()).unwrap_or(u32::MAX),
            reserved: self.reserved,
        }
    }

    /// Live tasks not started yet.
    pub(crate) fn assigned(&self) -> u64 {
        (self.tasks.len() as u64).saturating_sub(u64::from(self.running))
    }
}

/// Completed tasks' durations: count, exact sum, and a histogram for percentiles.
#[derive(Debug, Default)]
pub(crate) struct Durations {
    count: u64,
    sum_ms: u128,
    histogram: Option<Histogram<u32>>,
}

impl Durations {
    pub(crate) fn record(&mut self, ms: u64) {
        self.count += 1;
        self.sum_ms += u128::from(ms);
        if self.histogram.is_none() {
            // Fails only for a bad precision, which SIGFIG is not; without it p95 reads 0.
            self.histogram = Histogram::new(SIGFIG).ok();
        }
        if let Some(h) = &mut self.histogram {
            // `record` grows the histogram to the value (`saturating_record` would clamp it to
            // the current range instead). Past MAX_TRACKED_MS the percentile is clamped.
            let _ = h.record(ms.min(MAX_TRACKED_MS));
        }
    }

    /// Adds `other`'s figures to these.
    pub(crate) fn merge(&mut self, other: &Durations) {
        self.count += other.count;
        self.sum_ms += other.sum_ms;
        let Some(theirs) = &other.histogram else { return };
        match &mut self.histogram {
            // Auto-resizing histograms (these are) accept any other's range.
            Some(mine) => {
                let _ = mine.add(theirs);
            }
            None => self.histogram = Some(theirs.clone()),
        }
    }

    pub(crate) fn mean_ms(&self) -> f64 {
        if self.count == 0 {
            0.0
        } else {
            self.sum_ms as f64 / self.count as f64
        }
    }

    /// The 95th percentile (nearest rank), 0 when nothing was recorded.
    pub(crate) fn p95_ms(&self) -> u64 {
        match &self.histogram {
            Some(h) if self.count > 0 => h.value_at_quantile(0.95),
            _ => 0,
        }
    }
}

/// One agent's row of `workload_analysis`.
pub(crate) struct Row<'a> {
    pub(crate) agent_id: &'a str,
    pub(crate) registered: bool,
    /// The host's status and load, when registered.
    pub(crate) host: Option<(&'static str, u32)>,
    pub(crate) capacity: u32,
    pub(crate) book: Option<&'a AgentBook>,
}

impl Row<'_> {
    pub(crate) fn to_json(&self) -> Value {
        let empty = AgentBook::default();
        let book = self.book.unwrap_or(&empty);
        let busy = book.assigned() + u64::from(book.running) + u64::from(book.reserved);
        let utilisation = if self.capacity == 0 {
            0.0
        } else {
            busy as f64 / f64::from(self.capacity)
        };
        let mut row = json!({
            "agent_id": self.agent_id,
            "registered": self.registered,
            "assigned": book.assigned(),
            "running": book.running,
            "done": book.done,
            "failed": book.failed,
            "mean_ms": book.durations.mean_ms(),
            "p95_ms": book.durations.p95_ms(),
            "utilisation": utilisation,
            "capacity": self.capacity,
            "reserved": book.reserved,
        });
        if let Some((status, load)) = self.host {
            row["status"] = json!(status);
            row["load"] = json!(load);
        }
        row
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_is_exact_and_p95_is_the_nearest_rank() {
        let mut d = Durations::default();
        assert_eq!((d.mean_ms(), d.p95_ms()), (0.0, 0));
        for ms in 1..=100 {
            d.record(ms);
        }
        assert_eq!(d.mean_ms(), 50.5);
        assert_eq!(d.p95_ms(), 95);
        let mut slow = Durations::default();
        for _ in 0..5 {
            slow.record(10_000);
        }
        let p95 = slow.p95_ms();
        assert!((9_900..=10_100).contains(&p95), "within 1%: {p95}");
        d.merge(&slow);
        assert_eq!(d.count, 105);
        assert_eq!(d.p95_ms(), 100, "ceil(0.95 * 105) = 100th smallest");
        let mut empty = Durations::default();
        empty.merge(&slow);
        assert_eq!(empty.p95_ms(), p95);
    }

    #[test]
    fn zero_and_huge_durations_are_recorded() {
        let mut d = Durations::default();
        d.record(0);
        d.record(u64::MAX);
        assert_eq!(d.count, 2);
        assert!(d.p95_ms() > 0);
    }

    #[test]
    fn utilisation_counts_assigned_running_and_reserved() {
        let mut book = AgentBook::default();
        book.tasks.extend(["a".to_owned(), "b".to_owned(), "c".to_owned()]);
        book.running = 1;
        book.reserved = 1;
        assert_eq!(book.own(), Own { live: 3, reserved: 1 });
        let row = Row {
            agent_id: "x",
            registered: true,
            host: Some(("active", 0)),
            capacity: 8,
            book: Some(&book),
        }
        .to_json();
        assert_eq!(row["assigned"], 2);
        assert_eq!(row["running"], 1);
        assert_eq!(row["utilisation"], 0.5);
        let idle = Row {
            agent_id: "y",
            registered: false,
            host: None,
            capacity: 0,
            book: None,
        }
        .to_json();
        assert_eq!(idle["utilisation"], 0.0);
        assert!(idle.get("status").is_none());
    }
}
