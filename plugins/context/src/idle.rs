//! When each agent last had work, ordered by time, so that a sweep visits only the agents that
//! have been idle long enough instead of the whole fleet.
//!
//! A sweep walks the oldest entries while they are older than the idle limit. Each one it visits
//! either goes to sleep (and leaves the index until work brings it back) or turns out to be
//! working (load above zero: that is activity, so it is stamped now and moves to the back), or is
//! gone or not active (it leaves the index). So a sweep costs the number of agents it acts on,
//! never the size of the fleet, and a fleet of a million agents does not stall the runtime every
//! few seconds.

use std::collections::{BTreeSet, HashMap};

#[derive(Debug, Default)]
pub(crate) struct IdleIndex {
    last: HashMap<String, u64>,
    by_time: BTreeSet<(u64, String)>,
}

impl IdleIndex {
    /// Work for `agent` at `now`.
    pub(crate) fn touch(&mut self, agent: &str, now: u64) {
        if let Some(old) = self.last.insert(agent.to_owned(), now) {
            self.by_time.remove(&(old, agent.to_owned()));
        }
        self.by_time.insert((now, agent.to_owned()));
    }

    /// Forgets `agent` (deregistered, or asleep until work comes).
    pub(crate) fn remove(&mut self, agent: &str) {
        if let Some(old) = self.last.remove(agent) {
            self.by_time.remove(&(old, agent.to_owned()));
        }
    }

    pub(crate) fn last(&self, agent: &str) -> Option<u64> {
        self.last.get(agent).copied()
    }

    /// The agents whose last work was at or before `cutoff`, oldest first.
    pub(crate) fn idle_since(&self, cutoff: u64) -> Vec<String> {
        self.by_time
            .iter()
            .take_while(|(at, _)| *at <= cutoff)
            .map(|(_, agent)| agent.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sweeps_see_only_the_idle_in_time_order() {
        let mut index = IdleIndex::default();
        index.touch("a", 10);
        index.touch("b", 20);
        index.touch("c", 30);
        index.touch("a", 40);
        assert_eq!(index.idle_since(25), vec!["b".to_owned()]);
        assert_eq!(
            index.idle_since(100),
            vec!["b".to_owned(), "c".to_owned(), "a".to_owned()]
        );
        index.remove("b");
        assert_eq!(index.idle_since(35), vec!["c".to_owned()]);
        assert_eq!((index.last("a"), index.last("b")), (Some(40), None));
    }
}
