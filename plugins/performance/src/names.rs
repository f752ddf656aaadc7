//! Series by name: a copy-on-write map, read without a lock.
//!
//! Observers look a name up on every operation and almost never add one (capabilities and
//! task kinds are few and long-lived), so the map is an immutable `HashMap` behind an
//! [`ArcSwap`]: a lookup loads the current map (no lock, and no write to memory shared with
//! other threads in the common case) and a new name copies the map under a mutex that only
//! writers take. A `RwLock` would make every reader write the lock's counter, one cache line
//! bouncing between cores on every operation.
//!
//! Names are bounded: past `max_series` names, or for a name longer than
//! [`MAX_NAME_LEN`] bytes, figures are counted under [`OTHER`], so that callers naming
//! endless capabilities or task kinds cannot grow the map without bound. Dispatches nothing
//! served never make a series ([`Names::with_existing_or`] counts them under
//! [`UNSERVED`] unless their name has one), so junk names cannot use up the `max_series`
//! names before the real capabilities are first called.

use crate::metrics::UNSERVED;
use crate::series::{OTHER, Series};
use arc_swap::ArcSwap;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// The longest name kept as it is; longer ones are counted under [`OTHER`].
pub(crate) const MAX_NAME_LEN: usize = 128;

/// On foldhash (seeded per process): a lookup per operation, where SipHash cost about 20 ns.
type Map = HashMap<Box<str>, Arc<Series>, foldhash::fast::RandomState>;

/// Series by name.
pub(crate) struct Names {
    map: ArcSwap<Map>,
    writer: Mutex<()>,
    shards: usize,
}

impl std::fmt::Debug for Names {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Names")
            .field("len", &self.map.load().len())
            .finish_non_exhaustive()
    }
}

impl Names {
    /// An empty map whose series have `shards` shards.
    pub(crate) fn new(shards: usize) -> Self {
        Self {
            map: ArcSwap::from_pointee(Map::default()),
            writer: Mutex::new(()),
            shards,
        }
    }

    /// Runs `f` on the series of `name`, made if need be (under [`OTHER`] past `max_series`
    /// names).
    #[inline]
    pub(crate) fn with<R>(&self, name: &str, max_series: usize, f: impl FnOnce(&Series) -> R) -> R {
        {
            let map = self.map.load();
            if let Some(series) = map.get(name) {
                return f(series);
            }
        }
        let series = self.insert(name, max_series);
        f(&series)
    }

    /// Runs `f` on the series of `name` if there is one, else on that of `fallback` (made if
    /// need be, whatever `max_series`): a name that must not take up a series of its own.
    #[inline]
    pub(crate) fn with_existing_or<R>(&self, name: &str, fallback: &str, f: impl FnOnce(&Series) -> R) -> R {
        {
            let map = self.map.load();
            if let Some(series) = map.get(name) {
                return f(series);
            }
        }
        self.with(fallback, usize::MAX, f)
    }

    #[cold]
    fn insert(&self, name: &str, max_series: usize) -> Arc<Series> {
        let _writer = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let current = self.map.load_full();
        if let Some(series) = current.get(name) {
            return Arc::clone(series);
        }
        // The fixed names (what is over the limit, what nothing served) take up no slot.
        let fixed = [OTHER, UNSERVED].iter().filter(|n| current.contains_key(**n)).count();
        let name = if current.len() - fixed >= max_series || name.len() > MAX_NAME_LEN {
            OTHER
        } else {
            name
        };
        if let Some(series) = current.get(name) {
            return Arc::clone(series);
        }
        let series = Arc::new(Series::new(self.shards));
        let mut next = Map::clone(&current);
        next.insert(name.into(), Arc::clone(&series));
        self.map.store(Arc::new(next));
        series
    }

    /// Every series, by name.
    pub(crate) fn sorted(&self) -> Vec<(Box<str>, Arc<Series>)> {
        let map = self.map.load_full();
        let mut all: Vec<_> = map.iter().map(|(k, v)| (k.clone(), Arc::clone(v))).collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// The series of `name`, if there is one.
    pub(crate) fn get(&self, name: &str) -> Option<Arc<Series>> {
        self.map.load().get(name).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::series::Counter;

    #[test]
    fn names_past_the_limit_share_one_series() {
        let names = Names::new(2);
        for i in 0..10 {
            names.with(&format!("cap{i}"), 4, |s| s.update(|sh| sh.count(Counter::Calls)));
        }
        names.with(&"x".repeat(MAX_NAME_LEN + 1), 100, |s| {
            s.update(|sh| sh.count(Counter::Calls))
        });
        names.with("cap0", 4, |s| s.update(|sh| sh.count(Counter::Calls)));
        let all = names.sorted();
        let listed: Vec<&str> = all.iter().map(|(n, _)| &**n).collect();
        assert_eq!(listed, ["(other)", "cap0", "cap1", "cap2", "cap3"]);
        let calls = |name: &str| names.get(name).map(|s| s.view(None, 0).get(Counter::Calls));
        assert_eq!(calls("(other)"), Some(7), "cap4..cap9 and the long name");
        assert_eq!(calls("cap0"), Some(2));
        assert_eq!(calls("cap9"), None);
    }

    #[test]
    fn unserved_names_make_no_series_and_fixed_names_take_up_no_slot() {
        let names = Names::new(2);
        for i in 0..10 {
            names.with_existing_or(&format!("junk{i}"), UNSERVED, |s| {
                s.update(|sh| sh.count(Counter::Calls))
            });
        }
        names.with("cap0", 2, |s| s.update(|sh| sh.count(Counter::Calls)));
        names.with("cap1", 2, |s| s.update(|sh| sh.count(Counter::Calls)));
        names.with("cap2", 2, |s| s.update(|sh| sh.count(Counter::Calls)));
        // A name with a series is counted there.
        names.with_existing_or("cap0", UNSERVED, |s| s.update(|sh| sh.count(Counter::Calls)));
        let all = names.sorted();
        let listed: Vec<&str> = all.iter().map(|(n, _)| &**n).collect();
        assert_eq!(listed, ["(other)", "(unserved)", "cap0", "cap1"]);
        let calls = |name: &str| names.get(name).map(|s| s.view(None, 0).get(Counter::Calls));
        assert_eq!(calls(UNSERVED), Some(10));
        assert_eq!(calls("cap0"), Some(2));
        assert_eq!(calls(OTHER), Some(1));
    }
}
