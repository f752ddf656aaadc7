//! A bounded buffer that forgets its oldest entry when full: hook history, span records and
//! slow operations are all kept in one.

use std::collections::VecDeque;

/// At most `capacity` entries, oldest first.
#[derive(Debug)]
pub(crate) struct Ring<T> {
    capacity: usize,
    entries: VecDeque<T>,
}

impl<T> Ring<T> {
    /// An empty ring holding up to `capacity` entries (at least one).
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            entries: VecDeque::new(),
        }
    }

    /// How many entries it holds at most.
    pub(crate) fn capacity(&self) -> usize {
        self.capacity
    }

    /// Changes the capacity, forgetting the oldest entries beyond it.
    pub(crate) fn set_capacity(&mut self, capacity: usize) {
        self.capacity = capacity.max(1);
        while self.entries.len() > self.capacity {
            self.entries.pop_front();
        }
    }

    /// Adds `entry`, forgetting the oldest one when full. Grows the storage lazily, so that a
    /// large capacity costs nothing until it is used.
    pub(crate) fn push(&mut self, entry: T) {
        if self.entries.len() == self.capacity {
            self.entries.pop_front();
        }
        self.entries.push_back(entry);
    }

    /// Pushes the entry `make` builds, handing it the entry about to be forgotten (when the
    /// buffer is full) so that its allocations can be reused: a full buffer then records
    /// without allocating.
    pub(crate) fn push_reusing(&mut self, make: impl FnOnce(Option<T>) -> T) {
        let recycled = if self.entries.len() >= self.capacity {
            self.entries.pop_front()
        } else {
            None
        };
        self.entries.push_back(make(recycled));
    }

    /// The entries, newest first.
    pub(crate) fn newest_first(&self) -> impl Iterator<Item = &T> {
        self.entries.iter().rev()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_newest_entries_up_to_its_capacity() {
        let mut ring = Ring::new(3);
        for i in 0..5 {
            ring.push(i);
        }
        assert_eq!(ring.newest_first().copied().collect::<Vec<_>>(), [4, 3, 2]);
        ring.set_capacity(2);
        assert_eq!(ring.newest_first().copied().collect::<Vec<_>>(), [4, 3]);
        ring.set_capacity(0);
        assert_eq!(ring.capacity(), 1);
        assert_eq!(ring.newest_first().copied().collect::<Vec<_>>(), [4]);
    }
}
