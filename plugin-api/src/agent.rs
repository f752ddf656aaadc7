//! How a plugin sees an agent: a plain snapshot, not the engine's own type.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

/// Where an agent stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AgentStatus {
    /// Ready for work.
    Active,
    /// At capacity.
    Busy,
    /// Idle and parked; wakes on demand.
    Sleeping,
    /// Not taking work.
    Offline,
}

impl AgentStatus {
    /// The lower-case name: `"active"`, `"busy"`, `"sleeping"` or `"offline"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            AgentStatus::Active => "active",
            AgentStatus::Busy => "busy",
            AgentStatus::Sleeping => "sleeping",
            AgentStatus::Offline => "offline",
        }
    }
}

impl fmt::Display for AgentStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The text was none of `active`, `busy`, `sleeping`, `offline`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown agent status {0:?}: expected one of active, busy, sleeping, offline")]
pub struct ParseAgentStatusError(pub String);

impl FromStr for AgentStatus {
    type Err = ParseAgentStatusError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "active" => Ok(AgentStatus::Active),
            "busy" => Ok(AgentStatus::Busy),
            "sleeping" => Ok(AgentStatus::Sleeping),
            "offline" => Ok(AgentStatus::Offline),
            other => Err(ParseAgentStatusError(other.to_owned())),
        }
    }
}

/// A snapshot of one registered agent, as the host gives it to plugins.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentInfo {
    /// The agent's unique id.
    pub id: String,
    /// A human-readable name.
    pub name: String,
    /// What the agent can do, as capability or skill names.
    pub capabilities: Vec<String>,
    /// Its status when the snapshot was taken.
    pub status: AgentStatus,
    /// Tasks it is running now.
    pub load: u32,
    /// Tasks it can run at once.
    pub capacity: u32,
    /// Free-form metadata given at registration.
    #[serde(default)]
    pub metadata: BTreeMap<String, serde_json::Value>,
}

/// An agent's id, status and load: what load-aware plugins read on every call, without the
/// rest of [`AgentInfo`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentLoad {
    /// The agent's id (shared: cloning it, or making it from the host's own id, allocates nothing).
    pub id: std::sync::Arc<str>,
    /// Its status.
    pub status: AgentStatus,
    /// Tasks it is running now.
    pub load: u32,
    /// Tasks it can run at once.
    pub capacity: u32,
}

impl From<AgentInfo> for AgentLoad {
    fn from(a: AgentInfo) -> Self {
        Self {
            id: a.id.into(),
            status: a.status,
            load: a.load,
            capacity: a.capacity,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_text_round_trips() {
        for s in [
            AgentStatus::Active,
            AgentStatus::Busy,
            AgentStatus::Sleeping,
            AgentStatus::Offline,
        ] {
            assert_eq!(s.to_string().parse::<AgentStatus>(), Ok(s));
            assert_eq!(
                serde_json::to_value(s).expect("serializes"),
                serde_json::json!(s.as_str())
            );
        }
        assert!("Active".parse::<AgentStatus>().is_err());
    }
}
