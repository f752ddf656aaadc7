//! The queue of agent requests waiting for an agent: served by priority (higher first), ties
//! first come, first served; with an index of deadlines so that expired requests are found
//! without a scan.

use std::cmp::Reverse;
use std::collections::BTreeSet;

/// Queued requests, by sequence number. Sequence numbers grow with arrival, so ordering by
/// `(priority descending, sequence)` gives FIFO among equal priorities.
#[derive(Debug, Default)]
pub(crate) struct RequestQueue {
    order: BTreeSet<(Reverse<i64>, u64)>,
    deadlines: BTreeSet<(u64, u64)>,
}

impl RequestQueue {
    pub(crate) fn push(&mut self, seq: u64, priority: i64, deadline: Option<u64>) {
        self.order.insert((Reverse(priority), seq));
        if let Some(at) = deadline {
            self.deadlines.insert((at, seq));
        }
    }

    /// Removes a request (given the priority and deadline it was queued with); `false` when it
    /// was not queued.
    pub(crate) fn remove(&mut self, seq: u64, priority: i64, deadline: Option<u64>) -> bool {
        if let Some(at) = deadline {
            self.deadlines.remove(&(at, seq));
        }
        self.order.remove(&(Reverse(priority), seq))
    }

    pub(crate) fn len(&self) -> usize {
        self.order.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// Sequence numbers in the order they are served.
    pub(crate) fn in_order(&self) -> impl Iterator<Item = u64> + '_ {
        self.order.iter().map(|(_, seq)| *seq)
    }

    /// Where a queued request stands (0: served next).
    pub(crate) fn position(&self, seq: u64) -> Option<usize> {
        self.in_order().position(|s| s == seq)
    }

    /// Queued requests whose deadline is at or before `now`, earliest deadline first, with
    /// their deadlines.
    pub(crate) fn due(&self, now: u64) -> Vec<(u64, u64)> {
        self.deadlines
            .iter()
            .take_while(|(at, _)| *at <= now)
            .map(|(at, seq)| (*seq, *at))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn higher_priority_first_ties_first_come_first_served() {
        let mut q = RequestQueue::default();
        q.push(1, 0, None);
        q.push(2, 5, None);
        q.push(3, -3, None);
        q.push(4, 5, None);
        q.push(5, 0, None);
        assert_eq!(q.in_order().collect::<Vec<_>>(), [2, 4, 1, 5, 3]);
        assert_eq!(q.position(1), Some(2));
        assert_eq!(q.position(9), None);
        assert!(q.remove(4, 5, None));
        assert!(!q.remove(4, 5, None), "already gone");
        assert!(!q.remove(1, 7, None), "wrong priority: not found");
        assert_eq!(q.in_order().collect::<Vec<_>>(), [2, 1, 5, 3]);
        assert_eq!(q.len(), 4);
    }

    #[test]
    fn extreme_priorities_order_correctly() {
        let mut q = RequestQueue::default();
        q.push(1, i64::MIN, None);
        q.push(2, i64::MAX, None);
        q.push(3, 0, None);
        assert_eq!(q.in_order().collect::<Vec<_>>(), [2, 3, 1]);
    }

    #[test]
    fn due_requests_come_earliest_first_and_leave_with_removal() {
        let mut q = RequestQueue::default();
        q.push(1, 0, Some(300));
        q.push(2, 9, Some(100));
        q.push(3, 0, None);
        q.push(4, 0, Some(200));
        assert_eq!(q.due(50), []);
        assert_eq!(q.due(200), [(2, 100), (4, 200)]);
        assert!(q.remove(2, 9, Some(100)));
        assert_eq!(q.due(u64::MAX), [(4, 200), (1, 300)]);
        assert!(!q.is_empty());
    }
}
