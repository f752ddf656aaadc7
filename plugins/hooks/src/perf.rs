//! Slow-operation detection for `performance_hooks`: thresholds per operation name, the most
//! specific one applying, checked in `observe` without allocating unless the operation was slow;
//! the slow operations kept, and the rate limit on the `slow_operation` events they announce.

use crate::ring::Ring;
use plugin_api::{Operation, OperationKind, OperationOutcome, is_valid_capability_name};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};

/// The most thresholds kept (names, general and specific together), so that callers cannot
/// grow the table without bound.
pub(crate) const MAX_THRESHOLDS: usize = 1_024;

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
#[derive(Debug, Default, Clone)]
pub(crate) struct Thresholds {
    dispatch: Option<u64>,
    dispatch_by_capability: HashMap<String, u64>,
    task: Option<u64>,
    task_by_kind: HashMap<String, u64>,
    agent_registration: Option<u64>,
}

impl Thresholds {
    /// How many thresholds are set.
    pub(crate) fn len(&self) -> usize {
        [self.dispatch, self.task, self.agent_registration]
            .iter()
            .filter(|t| t.is_some())
            .count()
            + self.dispatch_by_capability.len()
            + self.task_by_kind.len()
    }

    /// Whether a threshold is set for `target`.
    fn has(&self, target: &Target) -> bool {
        match target {
            Target::Dispatch(None) => self.dispatch.is_some(),
            Target::Dispatch(Some(c)) => self.dispatch_by_capability.contains_key(c),
            Target::Task(None) => self.task.is_some(),
            Target::Task(Some(k)) => self.task_by_kind.contains_key(k),
            Target::AgentRegistration => self.agent_registration.is_some(),
        }
    }

    /// Like [`set`](Self::set), refusing a new threshold beyond [`MAX_THRESHOLDS`].
    pub(crate) fn try_set(&mut self, target: &Target, ms: Option<u64>) -> Result<Option<u64>, String> {
        if ms.is_some() && !self.has(target) && self.len() >= MAX_THRESHOLDS {
            return Err(format!(
                "there are {MAX_THRESHOLDS} thresholds already, the most kept: clear one before adding {:?}",
                target.name()
            ));
        }
        Ok(self.set(target, ms))
    }

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

/// The slow operations kept, and the token bucket that limits their events.
#[derive(Debug)]
pub(crate) struct SlowLog {
    pub(crate) ring: Ring<SlowRecord>,
    /// At most this many events a second (also the burst).
    per_s: u64,
    /// Tokens, in billionths (so that a nanosecond refills `per_s` of them).
    tokens: u64,
    /// When the bucket was last refilled, on the host's monotonic clock; `None` before the
    /// first event (the bucket starts full).
    refilled_ns: Option<u64>,
    /// Events not emitted because the rate was exceeded.
    pub(crate) suppressed: u64,
}

const TOKEN: u64 = 1_000_000_000;

impl SlowLog {
    /// Keeps `capacity` slow operations; emits at most `per_s` events a second.
    pub(crate) fn new(capacity: usize, per_s: u64) -> Self {
        let per_s = per_s.max(1);
        Self {
            ring: Ring::new(capacity),
            per_s,
            tokens: per_s.saturating_mul(TOKEN),
            refilled_ns: None,
            suppressed: 0,
        }
    }

    /// Whether an event may be emitted at `now_ns`; counts it as suppressed when not.
    pub(crate) fn take_event(&mut self, now_ns: u64) -> bool {
        let full = self.per_s.saturating_mul(TOKEN);
        if let Some(last) = self.refilled_ns {
            let refill = now_ns.saturating_sub(last).saturating_mul(self.per_s);
            self.tokens = self.tokens.saturating_add(refill).min(full);
        }
        self.refilled_ns = Some(now_ns.max(self.refilled_ns.unwrap_or(0)));
        if self.tokens >= TOKEN {
            self.tokens -= TOKEN;
            true
        } else {
            self.suppressed += 1;
            false
        }
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
        let mut entry = self.event();
        entry["at_ms"] = json!(self.at_ms);
        entry
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
    fn slow_operation_events_are_limited_by_a_token_bucket() {
        let mut log = SlowLog::new(10, 3);
        let second = 1_000_000_000;
        // A burst of the rate, then nothing until time refills the bucket.
        let emitted = (0..5).filter(|_| log.take_event(10)).count();
        assert_eq!((emitted, log.suppressed), (3, 2));
        assert!(!log.take_event(10 + second / 6), "half a token is not enough");
        assert!(log.take_event(10 + second / 3 + 1), "a third of a second refills one");
        assert!(!log.take_event(10 + second / 3 + 2));
        // A long pause refills the bucket to its size only.
        let later = 100 * second;
        assert_eq!((0..5).filter(|_| log.take_event(later)).count(), 3);
        assert_eq!(log.suppressed, 2 + 1 + 1 + 2);
        // A clock read out of order takes nothing back.
        assert!(!log.take_event(later - second));
    }

    #[test]
    fn thresholds_are_capped() {
        let mut t = Thresholds::default();
        for i in 0..MAX_THRESHOLDS - 1 {
            t.try_set(&Target::Task(Some(format!("k{i}"))), Some(1))
                .expect("under the cap");
        }
        t.try_set(&Target::Dispatch(None), Some(1)).expect("the last one");
        assert_eq!(t.len(), MAX_THRESHOLDS);
        let err = t.try_set(&Target::Task(None), Some(1)).expect_err("over the cap");
        assert!(err.contains("1024"), "{err}");
        // Changing or clearing a threshold that is set is always allowed.
        assert_eq!(t.try_set(&Target::Dispatch(None), Some(5)), Ok(Some(1)));
        assert_eq!(t.try_set(&Target::Task(Some("k0".into())), None), Ok(Some(1)));
        assert_eq!(t.try_set(&Target::Task(None), Some(1)), Ok(None));
    }

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
