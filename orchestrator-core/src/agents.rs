//! The agent registry: every registered agent, on a sharded concurrent map.
//!
//! Each agent lives in an `Arc<AgentEntry>` whose status and load are atomics, so reading or
//! updating one agent never locks the map for longer than a lookup, and no map guard is ever
//! held across an `.await` or a second map operation (the dashmap deadlock pitfalls). Public
//! readers get [`Agent`] snapshots, never references into the map.

use crate::AgentId;
use crate::error::AgentError;
use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use plugin_api::{AgentInfo, AgentStatus};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// How to register an agent. `AgentConfig::default()` is a valid configuration: the id and the
/// name are generated at registration.
///
/// ```
/// use orchestrator_core::AgentConfig;
/// let config = AgentConfig::new("reviewer")
///     .with_id("reviewer-1")
///     .with_capabilities(["code_review", "rust"])
///     .with_capacity(4)
///     .with_metadata("model", "small");
/// assert_eq!(config.capacity, 4);
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct AgentConfig {
    /// The id; generated (`agent-N`) when absent.
    #[serde(default)]
    pub id: Option<AgentId>,
    /// A human-readable name; the id when absent.
    #[serde(default)]
    pub name: Option<String>,
    /// What the agent can do.
    #[serde(default)]
    pub capabilities: Vec<String>,
    /// How many tasks it runs at once (at least 1; default 1).
    #[serde(default = "default_capacity")]
    pub capacity: u32,
    /// Free-form metadata.
    #[serde(default)]
    pub metadata: BTreeMap<String, Value>,
}

fn default_capacity() -> u32 {
    1
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            id: None,
            name: None,
            capabilities: Vec::new(),
            capacity: default_capacity(),
            metadata: BTreeMap::new(),
        }
    }
}

impl AgentConfig {
    /// An agent named `name`, with a generated id.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: Some(name.into()),
            ..Self::default()
        }
    }

    /// Sets an explicit id; registering a second agent with the same id is an error.
    #[must_use]
    pub fn with_id(mut self, id: impl Into<AgentId>) -> Self {
        self.id = Some(id.into());
        self
    }

    /// Sets what the agent can do.
    #[must_use]
    pub fn with_capabilities<I, S>(mut self, capabilities: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.capabilities = capabilities.into_iter().map(Into::into).collect();
        self
    }

    /// Sets how many tasks it runs at once.
    #[must_use]
    pub fn with_capacity(mut self, capacity: u32) -> Self {
        self.capacity = capacity;
        self
    }

    /// Adds one metadata entry.
    #[must_use]
    pub fn with_metadata(mut self, key: impl Into<String>, value: impl Into<Value>) -> Self {
        self.metadata.insert(key.into(), value.into());
        self
    }
}

/// A snapshot of a registered agent.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct Agent {
    /// Its id.
    pub id: AgentId,
    /// Its name.
    pub name: String,
    /// What it can do.
    pub capabilities: Vec<String>,
    /// Its status when the snapshot was taken.
    pub status: AgentStatus,
    /// Tasks it was running.
    pub load: u32,
    /// Tasks it can run at once.
    pub capacity: u32,
    /// Its metadata.
    pub metadata: BTreeMap<String, Value>,
    /// When it registered, in milliseconds since the Unix epoch.
    pub registered_at_ms: u64,
}

impl Agent {
    /// Whether the agent declared `capability`.
    pub fn has_capability(&self, capability: &str) -> bool {
        self.capabilities.iter().any(|c| c == capability)
    }
}

impl From<Agent> for AgentInfo {
    fn from(a: Agent) -> Self {
        AgentInfo {
            id: a.id.to_string(),
            name: a.name,
            capabilities: a.capabilities,
            status: a.status,
            load: a.load,
            capacity: a.capacity,
            metadata: a.metadata,
        }
    }
}

const fn status_to_u8(s: AgentStatus) -> u8 {
    match s {
        AgentStatus::Active => 0,
        AgentStatus::Busy => 1,
        AgentStatus::Sleeping => 2,
        AgentStatus::Offline => 3,
    }
}

const fn status_from_u8(v: u8) -> AgentStatus {
    match v {
        0 => AgentStatus::Active,
        1 => AgentStatus::Busy,
        2 => AgentStatus::Sleeping,
        _ => AgentStatus::Offline,
    }
}

/// One registered agent: immutable description plus atomic status and load.
#[derive(Debug)]
pub(crate) struct AgentEntry {
    pub(crate) id: AgentId,
    name: String,
    pub(crate) capabilities: Vec<String>,
    pub(crate) capacity: u32,
    metadata: BTreeMap<String, Value>,
    registered_at_ms: u64,
    status: AtomicU8,
    load: AtomicU32,
}

impl AgentEntry {
    pub(crate) fn status(&self) -> AgentStatus {
        status_from_u8(self.status.load(Ordering::Acquire))
    }

    pub(crate) fn load(&self) -> u32 {
        self.load.load(Ordering::Acquire)
    }

    pub(crate) fn has_capability(&self, capability: &str) -> bool {
        self.capabilities.iter().any(|c| c == capability)
    }

    /// Sets the status; returns the previous one.
    pub(crate) fn swap_status(&self, to: AgentStatus) -> AgentStatus {
        status_from_u8(self.status.swap(status_to_u8(to), Ordering::AcqRel))
    }

    /// Moves from `from` to `to` only if the status is still `from`.
    pub(crate) fn transition(&self, from: AgentStatus, to: AgentStatus) -> bool {
        self.status
            .compare_exchange(
                status_to_u8(from),
                status_to_u8(to),
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_ok()
    }

    /// One more task running; returns the new load.
    pub(crate) fn begin_task(&self) -> u32 {
        self.load.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// Takes a slot if one is free (load below capacity), atomically: two callers can never both
    /// take the last one.
    pub(crate) fn try_begin_task(&self) -> bool {
        self.load
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |l| {
                (l < self.capacity).then_some(l + 1)
            })
            .is_ok()
    }

    /// One task fewer running; returns the new load.
    pub(crate) fn end_task(&self) -> u32 {
        let prev = self
            .load
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |l| Some(l.saturating_sub(1)))
            .unwrap_or(0);
        prev.saturating_sub(1)
    }

    pub(crate) fn snapshot(&self) -> Agent {
        Agent {
            id: self.id.clone(),
            name: self.name.clone(),
            capabilities: self.capabilities.clone(),
            status: self.status(),
            load: self.load(),
            capacity: self.capacity,
            metadata: self.metadata.clone(),
            registered_at_ms: self.registered_at_ms,
        }
    }
}

/// Every registered agent.
#[derive(Debug, Default)]
pub(crate) struct AgentRegistry {
    map: DashMap<AgentId, Arc<AgentEntry>>,
    next_generated: AtomicU64,
}

impl AgentRegistry {
    pub(crate) fn register(&self, config: AgentConfig) -> Result<Arc<AgentEntry>, AgentError> {
        if config.capacity == 0 {
            return Err(AgentError::InvalidConfig {
                reason: "capacity must be at least 1".into(),
            });
        }
        if let Some(id) = &config.id {
            if id.as_str().is_empty() || id.as_str().len() > 256 {
                return Err(AgentError::InvalidConfig {
                    reason: format!("agent id {id:?} must be 1 to 256 bytes long"),
                });
            }
        }
        let registered_at_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let AgentConfig {
            id,
            name,
            capabilities,
            capacity,
            metadata,
        } = config;
        let make = |id: AgentId, name: Option<String>| {
            Arc::new(AgentEntry {
                name: name.unwrap_or_else(|| id.to_string()),
                id,
                capabilities,
                capacity,
                metadata,
                registered_at_ms,
                status: AtomicU8::new(status_to_u8(AgentStatus::Active)),
                load: AtomicU32::new(0),
            })
        };
        match id {
            Some(id) => match self.map.entry(id) {
                Entry::Occupied(o) => Err(AgentError::DuplicateId { id: o.key().clone() }),
                Entry::Vacant(v) => {
                    let entry = make(v.key().clone(), name);
                    v.insert(entry.clone());
                    Ok(entry)
                }
            },
            None => loop {
                // Generated ids skip any that an explicit registration already took.
                let n = self.next_generated.fetch_add(1, Ordering::Relaxed) + 1;
                let id = AgentId::from(format!("agent-{n}"));
                if let Entry::Vacant(v) = self.map.entry(id) {
                    let entry = make(v.key().clone(), name);
                    v.insert(entry.clone());
                    break Ok(entry);
                }
            },
        }
    }

    pub(crate) fn remove(&self, id: &str) -> Option<Arc<AgentEntry>> {
        self.map.remove(id).map(|(_, e)| e)
    }

    pub(crate) fn get(&self, id: &str) -> Option<Arc<AgentEntry>> {
        self.map.get(id).map(|r| Arc::clone(r.value()))
    }

    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    /// Every entry, in no particular order: for hot paths that order the result themselves.
    pub(crate) fn entries_unordered(&self) -> Vec<Arc<AgentEntry>> {
        self.map.iter().map(|r| Arc::clone(r.value())).collect()
    }

    /// Visits every entry as its `Arc` (the caller holds no map guard of its own).
    pub(crate) fn for_each_arc(&self, mut f: impl FnMut(&Arc<AgentEntry>)) {
        for r in self.map.iter() {
            f(r.value());
        }
    }

    /// Visits every entry (the caller holds no map guard of its own).
    pub(crate) fn for_each(&self, mut f: impl FnMut(&AgentEntry)) {
        for r in self.map.iter() {
            f(r.value());
        }
    }

    /// Every entry, sorted by id so that listings are stable.
    pub(crate) fn entries(&self) -> Vec<Arc<AgentEntry>> {
        let mut all: Vec<Arc<AgentEntry>> = self.map.iter().map(|r| Arc::clone(r.value())).collect();
        all.sort_unstable_by(|a, b| a.id.cmp(&b.id));
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_skip_taken_ones() {
        let reg = AgentRegistry::default();
        reg.register(AgentConfig::default().with_id("agent-1"))
            .expect("explicit");
        let generated = reg.register(AgentConfig::default()).expect("generated");
        assert_eq!(generated.id.as_str(), "agent-2");
        assert_eq!(reg.len(), 2);
    }

    #[test]
    fn zero_capacity_is_refused() {
        let reg = AgentRegistry::default();
        let err = reg.register(AgentConfig::default().with_capacity(0)).unwrap_err();
        assert!(err.to_string().contains("capacity must be at least 1"));
    }

    #[test]
    fn load_never_underflows() {
        let reg = AgentRegistry::default();
        let e = reg.register(AgentConfig::default()).expect("registers");
        assert_eq!(e.end_task(), 0);
        assert_eq!(e.begin_task(), 1);
        assert_eq!(e.end_task(), 0);
    }

    #[test]
    fn transition_only_from_expected_status() {
        let reg = AgentRegistry::default();
        let e = reg.register(AgentConfig::default()).expect("registers");
        assert!(!e.transition(AgentStatus::Busy, AgentStatus::Active));
        assert!(e.transition(AgentStatus::Active, AgentStatus::Busy));
        assert_eq!(e.status(), AgentStatus::Busy);
    }
}
