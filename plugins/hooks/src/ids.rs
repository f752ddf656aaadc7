//! Unguessable ids, and the hook callbacks in flight.
//!
//! A hook registered through the host is run by calling the capability it names. That call is
//! an operation too, and must not run hooks itself (a pre-hook's callback would intercept
//! itself, a post-hook's callback would set off the post-hook again, forever). The call is
//! recognized by its **context**, not by the capability's name (which any caller can name):
//! each callback request gets a fresh random correlation id, kept in [`Callbacks`] while the
//! call is in flight, and an operation carrying one of those ids is exempt from hooks.

use crate::state::lock;
use std::collections::HashSet;
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

/// A source of 128-bit random ids: SipHash under a key std draws from the operating system's
/// randomness (`RandomState`), over a counter, the clock and an address. Without the key the
/// ids cannot be predicted from earlier ones.
pub(crate) struct IdSource {
    key: RandomState,
    counter: AtomicU64,
}

impl Default for IdSource {
    fn default() -> Self {
        Self {
            key: RandomState::new(),
            counter: AtomicU64::new(0),
        }
    }
}

impl IdSource {
    /// A fresh id: 32 lower-case hex digits (like the host's correlation ids).
    pub(crate) fn next(&self) -> String {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let here = 0u8;
        let address = std::ptr::from_ref(&here) as usize as u64;
        let word = |lane: u64| self.key.hash_one((lane, n, now, address));
        hex32(word(0), word(1))
    }
}

fn hex32(high: u64, low: u64) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(32);
    for word in [high, low] {
        for nibble in (0..16).rev() {
            out.push(char::from(DIGITS[((word >> (nibble * 4)) & 0xf) as usize]));
        }
    }
    out
}

/// Whether two secrets are equal, in time that does not depend on where they differ.
pub(crate) fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The correlation ids of the hook callbacks in flight.
#[derive(Default)]
pub(crate) struct Callbacks {
    /// How many ids `ids` holds: checked first, so that while no callback is in flight (always,
    /// when no hook was registered through the host) the operation feeds take no lock here.
    in_flight: AtomicUsize,
    ids: Mutex<HashSet<String>>,
    source: IdSource,
}

impl Callbacks {
    /// Starts a callback: a fresh id, in flight until the returned guard is dropped.
    pub(crate) fn begin(self: &Arc<Self>) -> Callback {
        let id = self.source.next();
        {
            let mut ids = lock(&self.ids);
            ids.insert(id.clone());
            self.in_flight.fetch_add(1, Ordering::Release);
        }
        Callback {
            callbacks: Arc::clone(self),
            id,
        }
    }

    /// Whether `correlation_id` is that of a hook callback in flight.
    pub(crate) fn is_callback(&self, correlation_id: &str) -> bool {
        self.in_flight.load(Ordering::Acquire) != 0
            && !correlation_id.is_empty()
            && lock(&self.ids).contains(correlation_id)
    }
}

/// A hook callback in flight: its id is exempt from hooks until this is dropped (when the call
/// answered, or was abandoned).
pub(crate) struct Callback {
    callbacks: Arc<Callbacks>,
    id: String,
}

impl Callback {
    /// The callback's correlation id.
    pub(crate) fn id(&self) -> &str {
        &self.id
    }
}

impl Drop for Callback {
    fn drop(&mut self) {
        let mut ids = lock(&self.callbacks.ids);
        if ids.remove(&self.id) {
            self.callbacks.in_flight.fetch_sub(1, Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_128_bit_hex_and_do_not_repeat() {
        let source = IdSource::default();
        let ids: HashSet<String> = (0..1_000).map(|_| source.next()).collect();
        assert_eq!(ids.len(), 1_000);
        assert!(
            ids.iter()
                .all(|id| id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()))
        );
        assert!(same_secret("abc", "abc") && !same_secret("abc", "abd") && !same_secret("abc", "ab"));
    }

    #[test]
    fn a_callback_is_in_flight_until_dropped() {
        let callbacks = Arc::new(Callbacks::default());
        assert!(!callbacks.is_callback(""));
        let first = callbacks.begin();
        let second = callbacks.begin();
        assert_ne!(first.id(), second.id());
        let id = first.id().to_owned();
        assert!(callbacks.is_callback(&id) && callbacks.is_callback(second.id()));
        assert!(!callbacks.is_callback("some-other-id"));
        drop(first);
        assert!(!callbacks.is_callback(&id));
        drop(second);
        assert_eq!(callbacks.in_flight.load(Ordering::Acquire), 0);
    }
}
