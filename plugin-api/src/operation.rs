//! Operation feeds: what a plugin hears *while* the host works, not after the fact.
//!
//! Lifecycle events ([`OrchestratorEvent`](crate::OrchestratorEvent)) reach every plugin
//! asynchronously, from one delivery task: right for "an agent joined", too slow and too late
//! for monitoring every dispatch or refusing an operation before it happens. Two feeds cover
//! that, and a plugin opts into each, per [`OperationKind`], through its [`Interests`]:
//!
//! - **observe**: after each operation of a kind it asked for, the host calls
//!   [`OrchestrationPlugin::observe`](crate::OrchestrationPlugin::observe) inline, on the
//!   caller's thread, with an [`Operation`] that borrows the host's data (no allocation) and
//!   carries its timing and outcome. The call must be quick and must never block: count,
//!   record into a histogram, push onto a bounded queue.
//! - **intercept**: before each operation of a kind it asked for, the host awaits
//!   [`OrchestrationPlugin::intercept`](crate::OrchestrationPlugin::intercept), which may
//!   refuse it with a [`Verdict::Veto`] and a reason the caller sees in the error. Interceptors
//!   run in priority order and the first veto wins. An interceptor that fails, panics or
//!   outlasts the call timeout does not refuse anything: the host reports it and goes on
//!   (fail-open), because a broken monitoring hook must not stop the fleet. A policy that must
//!   fail closed decides so itself and answers `Veto`.
//!
//! Interests are read once at registration ([`OrchestrationPlugin::interests`](crate::OrchestrationPlugin::interests)) and can change
//! at any time through [`HostHandle::set_interests`](crate::HostHandle::set_interests): a hook
//! plugin with no pre-hook drops `intercept`, and the host stops awaiting it. A plugin that asks
//! for nothing costs nothing: the host keeps the lists of interested plugins in its registry
//! snapshot and skips the feeds (and the clock reads that time them) when they are empty.
//!
//! Across the stable ABI an operation travels as JSON (the `Serialize` form of [`Operation`]),
//! which costs about a microsecond per call; a dynamic plugin that observes every dispatch
//! makes each dispatch that much slower.

use crate::AgentStatus;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::borrow::Cow;
use std::fmt;

/// What kind of operation an [`Operation`] describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum OperationKind {
    /// `register_agent`. Intercepted before the agent is inserted (a veto leaves no agent
    /// behind; `agent_id` is set only when the configuration names one); observed after, with
    /// the agent's id.
    AgentRegistration,
    /// An agent's status changed. Observed only (status changes happen inside other
    /// operations and cannot wait for an interceptor).
    AgentStatusChange,
    /// `execute`: one capability call. Intercepted before any provider is tried (`details`
    /// is the request's data); observed after, with `plugin` (who served it: a plugin's name
    /// or `"legacy"`), `fallback`, the outcome and the duration.
    Dispatch,
    /// A provider of a capability failed and the call moved on (observed only): `plugin` is
    /// the provider, `outcome` says how it failed, `error` says why.
    ProviderFailure,
    /// An agent's task is about to start (intercepted: a veto refuses the task before the
    /// agent's load is counted) or has started (observed). `details` is the task's data.
    TaskStart,
    /// An agent's task finished (observed only), with its outcome and duration.
    TaskFinish,
}

impl OperationKind {
    /// Every kind, in declaration order.
    pub const ALL: [OperationKind; 6] = [
        OperationKind::AgentRegistration,
        OperationKind::AgentStatusChange,
        OperationKind::Dispatch,
        OperationKind::ProviderFailure,
        OperationKind::TaskStart,
        OperationKind::TaskFinish,
    ];

    /// The snake-case name, as in JSON: `"dispatch"`, `"task_finish"`, ...
    pub const fn as_str(self) -> &'static str {
        match self {
            OperationKind::AgentRegistration => "agent_registration",
            OperationKind::AgentStatusChange => "agent_status_change",
            OperationKind::Dispatch => "dispatch",
            OperationKind::ProviderFailure => "provider_failure",
            OperationKind::TaskStart => "task_start",
            OperationKind::TaskFinish => "task_finish",
        }
    }

    /// Reads a snake-case name; `None` when it is none of [`ALL`](Self::ALL).
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == name)
    }

    const fn bit(self) -> u32 {
        1 << self as u32
    }
}

impl fmt::Display for OperationKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A set of [`OperationKind`]s; serialized as a list of names.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct OperationSet(u32);

impl OperationSet {
    /// No kind.
    pub const EMPTY: OperationSet = OperationSet(0);

    /// Every kind.
    pub const ALL: OperationSet = {
        let mut bits = 0;
        let mut i = 0;
        while i < OperationKind::ALL.len() {
            bits |= OperationKind::ALL[i].bit();
            i += 1;
        }
        OperationSet(bits)
    };

    /// This set with `kind` added.
    #[must_use]
    pub const fn with(self, kind: OperationKind) -> Self {
        OperationSet(self.0 | kind.bit())
    }

    /// This set without `kind`.
    #[must_use]
    pub const fn without(self, kind: OperationKind) -> Self {
        OperationSet(self.0 & !kind.bit())
    }

    /// Whether `kind` is in the set.
    pub const fn contains(self, kind: OperationKind) -> bool {
        self.0 & kind.bit() != 0
    }

    /// Whether the set is empty.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The kinds in the set, in declaration order.
    pub fn iter(self) -> impl Iterator<Item = OperationKind> {
        OperationKind::ALL.into_iter().filter(move |k| self.contains(*k))
    }
}

impl FromIterator<OperationKind> for OperationSet {
    fn from_iter<I: IntoIterator<Item = OperationKind>>(iter: I) -> Self {
        iter.into_iter().fold(OperationSet::EMPTY, OperationSet::with)
    }
}

impl fmt::Debug for OperationSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.iter()).finish()
    }
}

impl Serialize for OperationSet {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.iter())
    }
}

impl<'de> Deserialize<'de> for OperationSet {
    /// Unknown names (from a newer host or plugin) are skipped, so that the two can differ.
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let names = Vec::<String>::deserialize(deserializer)?;
        Ok(names.iter().filter_map(|n| OperationKind::parse(n)).collect())
    }
}

/// Which feeds a plugin wants, per kind of operation. The default asks for nothing.
///
/// ```
/// use plugin_api::{Interests, OperationKind, OperationSet};
/// let interests = Interests::observing(OperationSet::ALL)
///     .and_intercepting(OperationSet::EMPTY.with(OperationKind::Dispatch));
/// assert!(interests.observe.contains(OperationKind::TaskFinish));
/// assert!(interests.intercept.contains(OperationKind::Dispatch));
/// assert!(!interests.intercept.contains(OperationKind::AgentRegistration));
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Interests {
    /// Kinds whose completed operations are passed to
    /// [`observe`](crate::OrchestrationPlugin::observe).
    pub observe: OperationSet,
    /// Kinds whose operations are passed to
    /// [`intercept`](crate::OrchestrationPlugin::intercept) before they happen.
    pub intercept: OperationSet,
}

impl Interests {
    /// Nothing: the default.
    pub const NONE: Interests = Interests {
        observe: OperationSet::EMPTY,
        intercept: OperationSet::EMPTY,
    };

    /// Observing the kinds in `kinds`, intercepting none.
    pub const fn observing(kinds: OperationSet) -> Self {
        Interests {
            observe: kinds,
            intercept: OperationSet::EMPTY,
        }
    }

    /// These interests, intercepting the kinds in `kinds` as well.
    #[must_use]
    pub const fn and_intercepting(mut self, kinds: OperationSet) -> Self {
        self.intercept = kinds;
        self
    }

    /// Whether nothing is asked for.
    pub const fn is_empty(&self) -> bool {
        self.observe.is_empty() && self.intercept.is_empty()
    }
}

/// How an operation went (or, for an interceptor, that it is about to start).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum OperationOutcome {
    /// Not finished: what interceptors and `TaskStart` observers see.
    Started,
    /// It succeeded.
    Succeeded,
    /// It failed with an error (the `error` field says which).
    Failed,
    /// It ran out of time.
    TimedOut,
    /// The code doing it panicked (the panic was contained).
    Panicked,
    /// An interceptor refused it.
    Vetoed,
}

impl OperationOutcome {
    /// The snake-case name: `"succeeded"`, `"timed_out"`, ...
    pub const fn as_str(self) -> &'static str {
        match self {
            OperationOutcome::Started => "started",
            OperationOutcome::Succeeded => "succeeded",
            OperationOutcome::Failed => "failed",
            OperationOutcome::TimedOut => "timed_out",
            OperationOutcome::Panicked => "panicked",
            OperationOutcome::Vetoed => "vetoed",
        }
    }
}

/// One operation, as observers and interceptors see it. Fields that do not apply to the kind
/// are `None` (or zero). It borrows the host's data: clone it with
/// [`into_owned`](Self::into_owned) to keep it.
///
/// ```
/// use plugin_api::{Operation, OperationKind, OperationOutcome};
/// let op = Operation::new(OperationKind::Dispatch, "4bf92f35")
///     .with_capability("semantic_routing")
///     .with_plugin("ContextAwareRoutingPlugin")
///     .with_outcome(OperationOutcome::Succeeded)
///     .with_duration_ns(1_500);
/// assert_eq!(op.capability.as_deref(), Some("semantic_routing"));
/// let json = serde_json::to_value(&op).unwrap();
/// assert_eq!(json["kind"], "dispatch");
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Operation<'a> {
    /// What kind of operation.
    pub kind: OperationKind,
    /// The correlation id of the call (empty for agent registrations and status changes,
    /// which have none).
    #[serde(default)]
    pub correlation_id: Cow<'a, str>,
    /// The agent concerned, when one is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<Cow<'a, str>>,
    /// The capability called (dispatches and provider failures).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capability: Option<Cow<'a, str>>,
    /// The plugin that served the call (`"legacy"` for the legacy path), or the provider
    /// that failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plugin: Option<Cow<'a, str>>,
    /// The task's kind (its data's `kind` string), for task operations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_kind: Option<Cow<'a, str>>,
    /// The status before and after, for status changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<(AgentStatus, AgentStatus)>,
    /// How it went.
    pub outcome: OperationOutcome,
    /// Whether a fallback served it (a provider after the first, or the legacy path).
    #[serde(default)]
    pub fallback: bool,
    /// How long it took, in nanoseconds (0 before it ran).
    #[serde(default)]
    pub duration_ns: u64,
    /// When it ended (or, before it runs, now), on the host's monotonic clock
    /// ([`HostHandle::monotonic_ns`](crate::HostHandle::monotonic_ns)).
    #[serde(default)]
    pub at_ns: u64,
    /// What the operation works on, for interceptors: the request's data for a dispatch,
    /// the agent's configuration for a registration, the task's data for a task start.
    /// `None` for observers, which get the summary fields above.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<Cow<'a, Value>>,
    /// What went wrong, when it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<Cow<'a, str>>,
}

impl<'a> Operation<'a> {
    /// An operation of `kind` with `correlation_id`, outcome [`Started`](OperationOutcome::Started)
    /// and every optional field empty.
    pub fn new(kind: OperationKind, correlation_id: impl Into<Cow<'a, str>>) -> Self {
        Self {
            kind,
            correlation_id: correlation_id.into(),
            agent_id: None,
            capability: None,
            plugin: None,
            task_kind: None,
            status: None,
            outcome: OperationOutcome::Started,
            fallback: false,
            duration_ns: 0,
            at_ns: 0,
            details: None,
            error: None,
        }
    }

    /// Sets [`agent_id`](Self::agent_id).
    #[must_use]
    pub fn with_agent(mut self, agent_id: impl Into<Cow<'a, str>>) -> Self {
        self.agent_id = Some(agent_id.into());
        self
    }

    /// Sets [`capability`](Self::capability).
    #[must_use]
    pub fn with_capability(mut self, capability: impl Into<Cow<'a, str>>) -> Self {
        self.capability = Some(capability.into());
        self
    }

    /// Sets [`plugin`](Self::plugin).
    #[must_use]
    pub fn with_plugin(mut self, plugin: impl Into<Cow<'a, str>>) -> Self {
        self.plugin = Some(plugin.into());
        self
    }

    /// Sets [`task_kind`](Self::task_kind).
    #[must_use]
    pub fn with_task_kind(mut self, kind: impl Into<Cow<'a, str>>) -> Self {
        self.task_kind = Some(kind.into());
        self
    }

    /// Sets [`status`](Self::status) to `(from, to)`.
    #[must_use]
    pub fn with_status(mut self, from: AgentStatus, to: AgentStatus) -> Self {
        self.status = Some((from, to));
        self
    }

    /// Sets [`outcome`](Self::outcome).
    #[must_use]
    pub fn with_outcome(mut self, outcome: OperationOutcome) -> Self {
        self.outcome = outcome;
        self
    }

    /// Sets [`fallback`](Self::fallback).
    #[must_use]
    pub fn with_fallback(mut self, fallback: bool) -> Self {
        self.fallback = fallback;
        self
    }

    /// Sets [`duration_ns`](Self::duration_ns).
    #[must_use]
    pub fn with_duration_ns(mut self, duration_ns: u64) -> Self {
        self.duration_ns = duration_ns;
        self
    }

    /// Sets [`at_ns`](Self::at_ns).
    #[must_use]
    pub fn with_at_ns(mut self, at_ns: u64) -> Self {
        self.at_ns = at_ns;
        self
    }

    /// Sets [`details`](Self::details), borrowed.
    #[must_use]
    pub fn with_details(mut self, details: &'a Value) -> Self {
        self.details = Some(Cow::Borrowed(details));
        self
    }

    /// Sets [`details`](Self::details), owned.
    #[must_use]
    pub fn with_owned_details(mut self, details: Value) -> Self {
        self.details = Some(Cow::Owned(details));
        self
    }

    /// Sets [`error`](Self::error).
    #[must_use]
    pub fn with_error(mut self, error: impl Into<Cow<'a, str>>) -> Self {
        self.error = Some(error.into());
        self
    }

    /// An owned copy, to keep beyond the call.
    pub fn into_owned(self) -> Operation<'static> {
        fn own(s: Option<Cow<'_, str>>) -> Option<Cow<'static, str>> {
            s.map(|s| Cow::Owned(s.into_owned()))
        }
        Operation {
            kind: self.kind,
            correlation_id: Cow::Owned(self.correlation_id.into_owned()),
            agent_id: own(self.agent_id),
            capability: own(self.capability),
            plugin: own(self.plugin),
            task_kind: own(self.task_kind),
            status: self.status,
            outcome: self.outcome,
            fallback: self.fallback,
            duration_ns: self.duration_ns,
            at_ns: self.at_ns,
            details: self.details.map(|d| Cow::Owned(d.into_owned())),
            error: own(self.error),
        }
    }
}

/// An interceptor's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "verdict", content = "reason", rename_all = "snake_case")]
pub enum Verdict {
    /// Let the operation go ahead.
    Allow,
    /// Refuse it; the reason reaches the caller in the error.
    Veto(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operation_sets_hold_what_was_added_and_serialize_as_names() {
        let set = OperationSet::EMPTY
            .with(OperationKind::Dispatch)
            .with(OperationKind::TaskFinish);
        assert!(set.contains(OperationKind::Dispatch) && set.contains(OperationKind::TaskFinish));
        assert!(!set.contains(OperationKind::TaskStart));
        assert!(!set.without(OperationKind::Dispatch).contains(OperationKind::Dispatch));
        let json = serde_json::to_string(&set).unwrap();
        assert_eq!(json, r#"["dispatch","task_finish"]"#);
        let back: OperationSet = serde_json::from_str(r#"["dispatch","from_the_future","task_finish"]"#).unwrap();
        assert_eq!(back, set);
        assert_eq!(OperationSet::ALL.iter().count(), OperationKind::ALL.len());
    }

    #[test]
    fn operations_round_trip_through_json_owned() {
        let details = serde_json::json!({"text": "x"});
        let op = Operation::new(OperationKind::TaskStart, "c1")
            .with_agent("a1")
            .with_task_kind("build")
            .with_details(&details)
            .with_status(AgentStatus::Active, AgentStatus::Busy);
        let json = serde_json::to_string(&op).unwrap();
        let back: Operation<'static> = serde_json::from_str(&json).unwrap();
        assert_eq!(back, op.clone().into_owned());
        assert_eq!(back.details.as_deref(), Some(&details));
    }

    #[test]
    fn verdicts_serialize_with_their_reason() {
        let veto = Verdict::Veto("no".into());
        assert_eq!(
            serde_json::to_value(&veto).unwrap(),
            serde_json::json!({"verdict": "veto", "reason": "no"})
        );
        let allow: Verdict = serde_json::from_value(serde_json::json!({"verdict": "allow"})).unwrap();
        assert_eq!(allow, Verdict::Allow);
    }
}
