//! A bounded buffer that forgets its oldest entry when full: hook history, span records and
//! slow operations are all kept in one.

/// At most `capacity` entries. Storage is a plain vector written round: once full, the
/// oldest entry is overwritten where it lies (nothing moves), and its buffers can be reused.
#[derive(Debug)]
pub(crate) struct Ring<T> {
    capacity: usize,
    entries: Vec<T>,
    /// Once full: where the oldest entry is, and so where the next one goes.
    next: usize,
}

impl<T> Ring<T> {
    /// An empty ring holding up to `capacity` entries (at least one).
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            entries: Vec::new(),
            next: 0,
        }
    }

    /// How many entries it holds at most.
    pub(crate) fn capacity(&self) -> usize {
        self.capacity
    }

    /// Changes the capacity, forgetting the oldest entries beyond it.
    pub(crate) fn set_capacity(&mut self, capacity: usize) {
        let capacity = capacity.max(1);
        // Oldest first, then keep the newest `capacity`.
        self.entries.rotate_left(self.next);
        if self.entries.len() > capacity {
            self.entries.drain(..self.entries.len() - capacity);
        }
        self.next = 0;
        self.capacity = capacity;
    }

    /// Adds `entry`, forgetting the oldest one when full. Grows the storage lazily, so that a
    /// large capacity costs nothing until it is used.
    pub(crate) fn push(&mut self, entry: T) {
        if self.entries.len() < self.capacity {
            self.entries.push(entry);
        } else {
            self.entries[self.next] = entry;
            self.next = (self.next + 1) % self.entries.len();
        }
    }

    /// Adds an entry: built by `new` while the ring is not full, else written over the oldest
    /// entry in place by `refill`, which can reuse its buffers (a full ring then records
    /// without allocating or moving anything).
    pub(crate) fn push_with(&mut self, new: impl FnOnce() -> T, refill: impl FnOnce(&mut T)) {
        if self.entries.len() < self.capacity {
            self.entries.push(new());
        } else {
            refill(&mut self.entries[self.next]);
            self.next = (self.next + 1) % self.entries.len();
        }
    }

    /// The entries, newest first.
    pub(crate) fn newest_first(&self) -> impl Iterator<Item = &T> {
        let len = self.entries.len();
        let newest = (self.next + len).wrapping_sub(1);
        (0..len).map(move |k| &self.entries[(newest - k) % len])
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
        ring.set_capacity(4);
        for i in 5..7 {
            ring.push(i);
        }
        assert_eq!(ring.newest_first().copied().collect::<Vec<_>>(), [6, 5, 4]);
    }

    #[test]
    fn a_full_ring_is_refilled_in_place_oldest_first() {
        let mut ring: Ring<Vec<u32>> = Ring::new(2);
        for i in 0..5_u32 {
            ring.push_with(
                || vec![i],
                |slot| {
                    slot.clear();
                    slot.push(i);
                },
            );
        }
        assert_eq!(ring.newest_first().cloned().collect::<Vec<_>>(), [vec![4], vec![3]]);
    }
}
