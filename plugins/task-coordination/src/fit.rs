//! The fit rule: which agents may take a request, and which one of them gets it.
//!
//! An agent fits a request when it is Active or Sleeping (a Busy or Offline agent takes no new
//! work), declares every required capability, and its *effective load* is below its capacity
//! and below the request's `max_load` when one is given. The effective load is
//! `max(host load, live tasks) + reservations`:
//!
//! - The host's load and this plugin's live tasks (mapped to the agent, not completed) count the
//!   same kind of thing, tasks running or about to run, from two sides that usually overlap (a
//!   task mapped here is typically the one the orchestrator runs), so they are combined by the
//!   larger: adding them would count most tasks twice.
//! - Reservations are capacity promised to fulfilled requests that have no task yet: the host
//!   never sees them, so they are added on top. Folding them into the maximum would under-count:
//!   with capacity 2 and host load 1, two requests would both be fulfilled on the agent (3 units
//!   on capacity 2).
//!
//! Among fitting agents the least effective load wins; ties go to the lowest id, so the choice is
//! deterministic.

use plugin_api::{AgentInfo, AgentLoad, AgentStatus};
use serde_json::{Value, json};

/// One agent as the fit rule sees it: a snapshot of the host's view.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Member {
    pub(crate) id: String,
    pub(crate) status: AgentStatus,
    /// The load the host reports.
    pub(crate) load: u32,
    pub(crate) capacity: u32,
    /// `None` when the snapshot was taken without capabilities (no request needed them): such
    /// a member fits no request that requires a capability.
    pub(crate) capabilities: Option<Vec<String>>,
}

impl From<AgentInfo> for Member {
    fn from(a: AgentInfo) -> Self {
        Self {
            id: a.id,
            status: a.status,
            load: a.load,
            capacity: a.capacity,
            capabilities: Some(a.capabilities),
        }
    }
}

impl From<AgentLoad> for Member {
    fn from(a: AgentLoad) -> Self {
        Self {
            id: a.id.to_string(),
            status: a.status,
            load: a.load,
            capacity: a.capacity,
            capabilities: None,
        }
    }
}

/// What a request asks of an agent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Requirements {
    /// Every one of these must be declared by the agent.
    pub(crate) capabilities: Vec<String>,
    /// The agent's effective load must be below this.
    pub(crate) max_load: Option<u32>,
}

impl Requirements {
    pub(crate) fn to_json(&self) -> Value {
        let mut out = json!({ "capabilities": self.capabilities });
        if let Some(max) = self.max_load {
            out["max_load"] = json!(max);
        }
        out
    }
}

/// Whether an agent in this status takes new work.
pub(crate) fn takes_work(status: AgentStatus) -> bool {
    matches!(status, AgentStatus::Active | AgentStatus::Sleeping)
}

/// What this plugin counts on one agent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Own {
    /// Tasks mapped to the agent and not completed.
    pub(crate) live: u32,
    /// Reservations held on the agent by fulfilled requests.
    pub(crate) reserved: u32,
}

/// The load the fit rule goes by: the larger of the host's figure and this plugin's live tasks,
/// plus the reservations (which the host never sees).
pub(crate) fn effective_load(host_load: u32, own: Own) -> u32 {
    host_load.max(own.live).saturating_add(own.reserved)
}

/// `Some(effective load)` when `member` fits `requirements`, given what this plugin counts on it.
pub(crate) fn fits(member: &Member, requirements: &Requirements, own: Own) -> Option<u32> {
    if !takes_work(member.status) {
        return None;
    }
    if !requirements.capabilities.is_empty() {
        let declared = member.capabilities.as_ref()?;
        if !requirements.capabilities.iter().all(|c| declared.contains(c)) {
            return None;
        }
    }
    let effective = effective_load(member.load, own);
    if effective >= member.capacity || requirements.max_load.is_some_and(|max| effective >= max) {
        return None;
    }
    Some(effective)
}

/// The fitting member with the least effective load (ties: the lowest id), if any fits.
pub(crate) fn pick<'a>(
    members: impl IntoIterator<Item = &'a Member>,
    requirements: &Requirements,
    own: impl Fn(&str) -> Own,
) -> Option<&'a Member> {
    members
        .into_iter()
        .filter_map(|m| fits(m, requirements, own(&m.id)).map(|load| (load, m)))
        .min_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.id.cmp(&b.1.id)))
        .map(|(_, m)| m)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: &str, status: AgentStatus, load: u32, capacity: u32, caps: &[&str]) -> Member {
        Member {
            id: id.into(),
            status,
            load,
            capacity,
            capabilities: Some(caps.iter().map(|c| (*c).to_owned()).collect()),
        }
    }

    const IDLE: Own = Own { live: 0, reserved: 0 };

    fn live(n: u32) -> Own {
        Own { live: n, reserved: 0 }
    }

    fn reserved(n: u32) -> Own {
        Own { live: 0, reserved: n }
    }

    fn needs(caps: &[&str], max_load: Option<u32>) -> Requirements {
        Requirements {
            capabilities: caps.iter().map(|c| (*c).to_owned()).collect(),
            max_load,
        }
    }

    #[test]
    fn only_active_and_sleeping_agents_take_work() {
        let any = Requirements::default();
        for (status, expected) in [
            (AgentStatus::Active, Some(0)),
            (AgentStatus::Sleeping, Some(0)),
            (AgentStatus::Busy, None),
            (AgentStatus::Offline, None),
        ] {
            assert_eq!(fits(&member("a", status, 0, 2, &[]), &any, IDLE), expected, "{status}");
        }
    }

    #[test]
    fn every_required_capability_must_be_declared() {
        let m = member("a", AgentStatus::Active, 0, 2, &["rust", "review"]);
        assert!(fits(&m, &needs(&["rust"], None), IDLE).is_some());
        assert!(fits(&m, &needs(&["review", "rust"], None), IDLE).is_some());
        assert!(fits(&m, &needs(&["rust", "gpu"], None), IDLE).is_none());
        let unknown = Member {
            capabilities: None,
            ..m.clone()
        };
        assert!(fits(&unknown, &needs(&["rust"], None), IDLE).is_none());
        assert!(fits(&unknown, &needs(&[], None), IDLE).is_some());
    }

    #[test]
    fn effective_load_is_the_larger_of_host_load_and_live_tasks_and_must_stay_below_capacity_and_max_load() {
        let m = member("a", AgentStatus::Active, 1, 3, &[]);
        assert_eq!(fits(&m, &needs(&[], None), IDLE), Some(1), "host's figure");
        assert_eq!(
            fits(&m, &needs(&[], None), live(1)),
            Some(1),
            "the same task seen from both sides"
        );
        assert_eq!(fits(&m, &needs(&[], None), live(2)), Some(2), "own count");
        assert_eq!(fits(&m, &needs(&[], None), live(3)), None, "at capacity");
        assert_eq!(fits(&m, &needs(&[], Some(2)), live(1)), Some(1));
        assert_eq!(fits(&m, &needs(&[], Some(1)), live(1)), None, "max_load is exclusive");
        assert_eq!(fits(&m, &needs(&[], Some(0)), IDLE), None);
    }

    #[test]
    fn reservations_add_to_the_host_load_so_an_agent_is_never_overbooked() {
        // Capacity 2, one task the host runs (and that the plugin may or may not know of): one
        // reservation fills the agent, a second must not fit.
        let m = member("a", AgentStatus::Active, 1, 2, &[]);
        assert_eq!(fits(&m, &needs(&[], None), IDLE), Some(1));
        assert_eq!(
            fits(&m, &needs(&[], None), reserved(1)),
            None,
            "1 running + 1 reserved = 2"
        );
        assert_eq!(fits(&m, &needs(&[], None), Own { live: 1, reserved: 1 }), None);
        let roomy = member("b", AgentStatus::Active, 2, 5, &[]);
        assert_eq!(effective_load(2, reserved(2)), 4);
        assert_eq!(effective_load(2, Own { live: 3, reserved: 1 }), 4, "max(2, 3) + 1");
        assert_eq!(fits(&roomy, &needs(&[], None), reserved(2)), Some(4));
        assert_eq!(fits(&roomy, &needs(&[], None), reserved(3)), None);
        assert_eq!(
            fits(&roomy, &needs(&[], Some(4)), reserved(2)),
            None,
            "max_load sees reservations too"
        );
        assert_eq!(effective_load(u32::MAX, reserved(1)), u32::MAX, "saturates");
        // One unit of host load plus one reservation is more than one live task.
        let members = [
            member("a", AgentStatus::Active, 1, 3, &[]),
            member("z", AgentStatus::Active, 0, 3, &[]),
        ];
        let own = |id: &str| if id == "a" { reserved(1) } else { live(1) };
        assert_eq!(pick(&members, &needs(&[], None), own).map(|m| m.id.as_str()), Some("z"));
    }

    #[test]
    fn the_least_loaded_fitting_agent_wins_ties_to_the_lowest_id() {
        let members = vec![
            member("c", AgentStatus::Active, 0, 4, &["x"]),
            member("b", AgentStatus::Active, 0, 4, &["x"]),
            member("a", AgentStatus::Busy, 0, 4, &["x"]),
            member("d", AgentStatus::Active, 0, 4, &[]),
        ];
        let none = |_: &str| IDLE;
        assert_eq!(
            pick(&members, &needs(&["x"], None), none).map(|m| m.id.as_str()),
            Some("b")
        );
        let b_has_one = |id: &str| live(u32::from(id == "b"));
        assert_eq!(
            pick(&members, &needs(&["x"], None), b_has_one).map(|m| m.id.as_str()),
            Some("c")
        );
        assert_eq!(
            pick(&members, &needs(&[], None), b_has_one).map(|m| m.id.as_str()),
            Some("c")
        );
        assert_eq!(pick(&members, &needs(&["gpu"], None), none), None);
    }
}
