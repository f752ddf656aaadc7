//! Identifiers: agent ids and correlation ids.
//!
//! Correlation ids are 32 lower-case hex digits, the shape of a W3C trace id, so they can be
//! handed to any tracing backend as they are: a random 64-bit prefix drawn once per process
//! followed by a 64-bit counter. That makes them unique within a process without a system call
//! per id (generating one costs a counter increment and a format), and unlikely to collide
//! across processes.

use serde::{Deserialize, Serialize};
use std::borrow::Borrow;
use std::collections::hash_map::RandomState;
use std::fmt;
use std::hash::BuildHasher;
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

/// The id of a registered agent. Cheap to clone (a shared string).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct AgentId(Arc<str>);

impl AgentId {
    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The shared string inside (a reference count, not a copy).
    pub(crate) fn shared(&self) -> Arc<str> {
        Arc::clone(&self.0)
    }
}

impl fmt::Debug for AgentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for AgentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for AgentId {
    fn from(s: &str) -> Self {
        AgentId(Arc::from(s))
    }
}

impl From<String> for AgentId {
    fn from(s: String) -> Self {
        AgentId(Arc::from(s))
    }
}

impl From<&AgentId> for AgentId {
    fn from(id: &AgentId) -> Self {
        id.clone()
    }
}

impl Borrow<str> for AgentId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for AgentId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

fn process_seed() -> u64 {
    static SEED: OnceLock<u64> = OnceLock::new();
    // RandomState is seeded from the OS once per process: a random u64 without a crate.
    *SEED.get_or_init(|| RandomState::new().hash_one(std::process::id()))
}

/// A new correlation id: 32 lower-case hex digits, unique within this process.
///
/// Each thread takes its counter values in blocks of [`ID_BLOCK`] from the process-wide
/// counter, so that an id costs no atomic read-modify-write on a line every core shares.
pub(crate) fn new_correlation_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(1);
    thread_local! {
        /// The next value of this thread's block, and the end of the block.
        static BLOCK: std::cell::Cell<(u64, u64)> = const { std::cell::Cell::new((0, 0)) };
    }
    let n = BLOCK.with(|block| {
        let (mut next, mut end) = block.get();
        if next == end {
            next = COUNTER.fetch_add(ID_BLOCK, Ordering::Relaxed);
            end = next + ID_BLOCK;
        }
        block.set((next + 1, end));
        next
    });
    hex32(process_seed(), n)
}

/// How many correlation ids a thread takes from the process-wide counter at a time.
const ID_BLOCK: u64 = 1024;

/// Two words as 32 lower-case hex digits. Hand-written because `format!("{:016x}{:016x}")`
/// costs about as much as the rest of a dispatch (measured in `benches/dispatch.rs`); two
/// digits per byte into a buffer, then one allocation.
fn hex32(high: u64, low: u64) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 32];
    let bytes = high.to_be_bytes().into_iter().chain(low.to_be_bytes());
    for (pair, byte) in out.chunks_exact_mut(2).zip(bytes) {
        pair[0] = DIGITS[usize::from(byte >> 4)];
        pair[1] = DIGITS[usize::from(byte & 0xf)];
    }
    // Hex digits are ASCII, so this cannot fail.
    String::from_utf8(out.to_vec()).unwrap_or_default()
}

/// A new task id, `task-<8 hex digits of the process seed>-<n>`: unique within this process,
/// and unlikely to collide with another process's (tasks of processes sharing state on Redis are
/// kept under their ids, so `task-1` from two processes would be one task).
pub(crate) fn new_task_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(1);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("task-{:08x}-{n}", process_seed() >> 32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn correlation_ids_are_unique_and_trace_shaped() {
        let ids: HashSet<String> = (0..10_000).map(|_| new_correlation_id()).collect();
        assert_eq!(ids.len(), 10_000);
        for id in ids.iter().take(10) {
            assert_eq!(id.len(), 32);
            assert!(id.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        }
    }

    /// Threads take blocks of the counter: ids made on several threads at once never repeat.
    #[test]
    fn correlation_ids_from_many_threads_never_repeat() {
        let threads: Vec<_> = (0..4)
            .map(|_| std::thread::spawn(|| (0..3 * ID_BLOCK).map(|_| new_correlation_id()).collect::<Vec<_>>()))
            .collect();
        let mut all = HashSet::new();
        for thread in threads {
            for id in thread.join().expect("joins") {
                assert!(all.insert(id), "an id repeated");
            }
        }
        assert_eq!(all.len(), 4 * 3 * ID_BLOCK as usize);
    }

    #[test]
    fn hex32_matches_format() {
        for (a, b) in [(0, 0), (u64::MAX, 1), (0x0123_4567_89ab_cdef, 42)] {
            assert_eq!(hex32(a, b), format!("{a:016x}{b:016x}"));
        }
    }

    #[test]
    fn agent_id_borrows_as_str() {
        let mut set = HashSet::new();
        set.insert(AgentId::from("a-1"));
        assert!(set.contains("a-1"));
        assert_eq!(AgentId::from(String::from("x")).to_string(), "x");
    }
}
