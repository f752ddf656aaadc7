//! Slow-operation detection for `performance_hooks`: thresholds per operation name, the most
//! specific one applying, checked in `observe` without allocating unless the operation was slow.

use plugin_api::{Operation, OperationKind, OperationOutcome, is_valid_capability_name};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};

/// What a threshold applies to, read from its name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Target {
    /// `"dispatch"` (any capability) or `"dispatch:<capability>"`.
    Dispatch(Option<String>),
    /// `"task"` (any kind) or `"task:<kind>"` (the task data's `kind`).
    Task(Option<String>),
    /// `"agent_registration"`.
    AgentRegistration,
}

/// What the names of thresholds look like, for messages.
pub(crate) const NAMES: &str =
    "\"dispatch\", \"dispatch:<capability>\", \"task\", \"task:<kind>\" or \"agent_registration\"";

impl Target {
    /// Reads a threshold's name.
    pub(crate) fn parse(name: &str) -> Result<Self, String> {
        let bad = || format!("{name:?} is not an operation name: expected {NAMES}");
        match name.split_once(':') {
            None => match name {
                "dispatch" => Ok(Target::Dispatch(None)),
                "task" => Ok(Target::Task(None)),
                "agent_registration" => Ok(Target::AgentRegistration),
                _ => Err(bad()),
            },
            Some(("dispatch", capability)) if is_valid_capability_name(capability) => {
                Ok(Target::Dispatch(Some(capability.to_owned())))
            }
            Some(("task", kind))
                if !kind.is_empty() && kind.chars().count() <= 128 && !kind.chars().any(char::is_control) =>
            {
                Ok(Target::Task(Some(kind.to_owned())))
            }
            _ => Err(bad()),
        }
    }

    /// Its name.
    pub(crate) fn name(&self) -> String {
        match self {
            Target::Dispatch(None) => "dispatch".to_owned(),
            Target::Dispatch(Some(c)) => format!("dispatch:{c}"),
            Target::Task(None) => "task".to_owned(),
            Target::Task(Some(k)) => format!("task:{k}"),
            Target::AgentRegistration => "agent_registration".to_owned(),
        }
    }
}

/// The thresholds, in milliseconds, kept so that looking one up for an operation borrows its
/// strings instead of formatting a name.
#[derive(Debug, Default)]
pub(crate) struct Thresholds {
    dispatch: Option<u64>,
    dispatch_by_capability: HashMap<String, u64>,
    task: Option<u64>,
    task_by_kind: HashMap<String, u64>,
    agent_registration: Option<u64>,
}

impl Thresholds {
    /// Sets (`Some`) or removes (`None`) the threshold for `target`; returns the previous one.
    pub(crate) fn set(&mut self, target: &Target, ms: Option<u64>) -> Option<u64> {
        fn put(slot: &mut Option<u64>, ms: Option<u64>) -> Option<u64> {
            std::mem::replace(slot, ms)
        }
        fn put_in(map: &mut HashMap<String, u64>, key: &str, ms: Option<u64>) -> Option<u64> {
            match ms {
                Some(ms) => map.insert(key.to_owned(), ms),
                None => map.remove(key),
            }
        }
        match target {
            Target::Dispatch(None) => put(&mut self.dispatch, ms),
            Target::Dispatch(Some(c)) => put_in(&mut self.dispatch_by_capability, c, ms),
            Target::Task(None) => put(&mut self.task, ms),
            Target::Task(Some(k)) => put_in(&mut self.task_by_kind, k, ms),
            Target::AgentRegistration => put(&mut self.agent_registration, ms),
        }
    }

    /// Every threshold, by name.
    pub(crate) fn to_map(&self) -> BTreeMap<String, u64> {
        let mut map = BTreeMap::new();
        let mut add = |target: Target, ms: u64| {
            map.insert(target.name(), ms);
        };
        if let Some(ms) = self.dispatch {
            add(Target::Dispatch(None), ms);
        }
        for (c, ms) in &self.dispatch_by_capability {
            add(Target::Dispatch(Some(c.clone())), *ms);
        }
        if let Some(ms) = self.task {
            add(Target::Task(None), ms);
        }
        for (k, ms) in &self.task_by_kind {
            add(Target::Task(Some(k.clone())), *ms);
        }
        if let Some(ms) = self.agent_registration {
            add(Target::AgentRegistration, ms);
        }
        map
    }

    /// The threshold that applies to `op` (the most specific one), and whether it is the
    /// specific one (`dispatch:<capability>`, `task:<kind>`) rather than the general one.
    fn applying(&self, op: &Operation<'_>) -> Option<(u64, bool)> {
        let specific = |map: &HashMap<String, u64>, key: Option<&str>| key.and_then(|k| map.get(k).copied());
        match op.kind {
            OperationKind::Dispatch => specific(&self.dispatch_by_capability, op.capability.as_deref())
                .map(|ms| (ms, true))
                .or(self.dispatch.map(|ms| (ms, false))),
            OperationKind::TaskFinish => specific(&self.task_by_kind, op.task_kind.as_deref())
                .map(|ms| (ms, true))
                .or(self.task.map(|ms| (ms, false))),
            OperationKind::AgentRegistration => self.agent_registration.map(|ms| (ms, false)),
            _ => None,
        }
    }

    /// The slow-operation record of `op` when it took longer than its threshold.
    pub(crate) fn check(&self, op: &Operation<'_>) -> Option<SlowRecord> {
        let (threshold_ms, specific) = self.applying(op)?;
        if op.duration_ns <= threshold_ms.saturating_mul(1_000_000) {
            return None;
        }
        let (operation, threshold) = match op.kind {
            OperationKind::Dispatch => {
                let capability = op.capability.as_deref().unwrap_or_default();
                let operation = format!("dispatch:{capability}");
                let threshold = if specific {
                    operation.clone()
                } else {
                    "dispatch".to_owned()
                };
                (operation, threshold)
            }
            OperationKind::TaskFinish => {
                let operation = op
                    .task_kind
                    .as_deref()
                    .map_or_else(|| "task".to_owned(), |k| format!("task:{k}"));
                let threshold = if specific { operation.clone() } else { "task".to_owned() };
                (operation, threshold)
            }
            _ => ("agent_registration".to_owned(), "agent_registration".to_owned()),
        };
        Some(SlowRecord {
            operation,
            threshold,
            duration_ns: op.duration_ns,
            threshold_ms,
            correlation_id: op.correlation_id.to_string(),
            agent_id: op.agent_id.as_deref().map(str::to_owned),
            capability: op.capability.as_deref().map(str::to_owned),
            outcome: op.outcome,
            at_ms: 0,
        })
    }
}

/// One operation slower than its threshold.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SlowRecord {
    /// `dispatch:<capability>`, `task`, `task:<kind>` or `agent_registration`.
    pub(crate) operation: String,
    /// The name of the threshold that applied.
    pub(crate) threshold: String,
    pub(crate) duration_ns: u64,
    pub(crate) threshold_ms: u64,
    pub(crate) correlation_id: String,
    pub(crate) agent_id: Option<String>,
    pub(crate) capability: Option<String>,
    pub(crate) outcome: OperationOutcome,
    /// Wall-clock milliseconds when it was seen.
    pub(crate) at_ms: u64,
}

impl SlowRecord {
    /// Milliseconds, to the microsecond.
    fn duration_ms(&self) -> f64 {
        (self.duration_ns / 1_000) as f64 / 1_000.0
    }

    /// The JSON form of the `slow` list.
    pub(crate) fn to_json(&self) -> Value {
        json!({
            "operation": self.operation,
            "threshold": self.threshold,
            "duration_ms": self.duration_ms(),
            "threshold_ms": self.threshold_ms,
            "correlation_id": self.correlation_id,
            "agent_id": self.agent_id,
            "capability": self.capability,
            "outcome": self.outcome.as_str(),
            "at_ms": self.at_ms,
        })
    }

    /// The data of the `slow_operation` event.
    pub(crate) fn event(&self) -> Value {
        json!({
            "operation": self.operation,
            "threshold": self.threshold,
            "duration_ms": self.duration_ms(),
            "threshold_ms": self.threshold_ms,
            "correlation_id": self.correlation_id,
            "agent_id": self.agent_id,
            "capability": self.capability,
            "outcome": self.outcome.as_str(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_read_and_written_back() {
        for name in [
            "dispatch",
            "dispatch:semantic_routing",
            "task",
            "task:build",
            "agent_registration",
        ] {
            assert_eq!(Target::parse(name).map(|t| t.name()).as_deref(), Ok(name));
        }
        for bad in [
            "",
            "dispatches",
            "dispatch:",
            "dispatch:Bad Cap",
            "task:",
            "agent_registration:x",
            "x:y",
        ] {
            let err = Target::parse(bad).expect_err(bad);
            assert!(err.contains("dispatch:<capability>"), "{err}");
        }
    }

    fn dispatch(capability: &str, ms: u64) -> Operation<'static> {
        Operation::new(OperationKind::Dispatch, "c")
            .with_capability(capability.to_owned())
            .with_duration_ns(ms * 1_000_000)
    }

    #[test]
    fn the_most_specific_threshold_applies() {
        let mut t = Thresholds::default();
        assert!(t.check(&dispatch("a", 1_000)).is_none(), "no threshold, never slow");
        t.set(&Target::Dispatch(None), Some(100));
        t.set(&Target::Dispatch(Some("a".into())), Some(10));
        let slow = t.check(&dispatch("a", 11)).expect("over the specific threshold");
        assert_eq!(
            (slow.operation.as_str(), slow.threshold.as_str(), slow.threshold_ms),
            ("dispatch:a", "dispatch:a", 10)
        );
        assert!(
            t.check(&dispatch("b", 11)).is_none(),
            "b falls under the general 100 ms"
        );
        let slow = t.check(&dispatch("b", 101)).expect("over the general threshold");
        assert_eq!(
            (slow.operation.as_str(), slow.threshold.as_str()),
            ("dispatch:b", "dispatch")
        );
        assert!(
            t.check(&dispatch("a", 10)).is_none(),
            "exactly the threshold is not slower"
        );

        let task = |kind: Option<&str>, ms: u64| {
            let mut op = Operation::new(OperationKind::TaskFinish, "c").with_duration_ns(ms * 1_000_000);
            op.task_kind = kind.map(|k| k.to_owned().into());
            op
        };
        t.set(&Target::Task(Some("build".into())), Some(5));
        assert_eq!(
            t.check(&task(Some("build"), 6)).map(|s| s.operation).as_deref(),
            Some("task:build")
        );
        assert!(t.check(&task(None, 6)).is_none());
        t.set(&Target::Task(None), Some(1));
        assert_eq!(t.check(&task(None, 6)).map(|s| s.threshold).as_deref(), Some("task"));
        t.set(&Target::AgentRegistration, Some(1));
        let registration = Operation::new(OperationKind::AgentRegistration, "").with_duration_ns(2_000_000);
        assert!(t.check(&registration).is_some());

        assert_eq!(t.set(&Target::Dispatch(Some("a".into())), None), Some(10));
        assert_eq!(
            t.to_map(),
            BTreeMap::from([
                ("agent_registration".to_owned(), 1),
                ("dispatch".to_owned(), 100),
                ("task".to_owned(), 1),
                ("task:build".to_owned(), 5),
            ])
        );
    }
}
