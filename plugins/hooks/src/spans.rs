//! Span records for `observability`: one per dispatch, finished agent task and agent
//! registration, built in `observe` (owned strings, no JSON) and turned into JSON only when
//! asked for.

use crate::ring::Ring;
use plugin_api::{Operation, OperationKind, OperationOutcome};
use serde_json::{Map, Value, json};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

/// One operation, as a span.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SpanRecord {
    /// `execute_tool`, `invoke_agent` or `register_agent`.
    pub(crate) name: &'static str,
    pub(crate) correlation_id: String,
    pub(crate) capability: Option<String>,
    pub(crate) agent_id: Option<String>,
    pub(crate) served_by: Option<String>,
    pub(crate) task_kind: Option<String>,
    pub(crate) outcome: OperationOutcome,
    pub(crate) fallback: bool,
    pub(crate) error: Option<String>,
    pub(crate) duration_us: u64,
    pub(crate) at_ns: u64,
}

impl SpanRecord {
    /// The span of `op`, for the kinds that have one.
    #[cfg(test)]
    pub(crate) fn of(op: &Operation<'_>) -> Option<Self> {
        Self::name_of(op.kind).map(|name| Self::new(name, op))
    }

    /// The span name of an operation kind, `None` for kinds that make no span.
    pub(crate) fn name_of(kind: OperationKind) -> Option<&'static str> {
        match kind {
            OperationKind::Dispatch => Some("execute_tool"),
            OperationKind::TaskFinish => Some("invoke_agent"),
            OperationKind::AgentRegistration => Some("register_agent"),
            _ => None,
        }
    }

    /// The record of `op`, whose kind makes the span `name`.
    pub(crate) fn new(name: &'static str, op: &Operation<'_>) -> Self {
        let own = |s: &Option<std::borrow::Cow<'_, str>>| s.as_deref().map(str::to_owned);
        Self {
            name,
            correlation_id: op.correlation_id.to_string(),
            capability: own(&op.capability),
            agent_id: own(&op.agent_id),
            served_by: own(&op.plugin),
            task_kind: own(&op.task_kind),
            outcome: op.outcome,
            fallback: op.fallback,
            error: own(&op.error),
            duration_us: op.duration_ns / 1_000,
            at_ns: op.at_ns,
        }
    }

    /// Rewrites this record, in place, as the record of `op`, reusing its buffers: no
    /// allocation once they have grown to size.
    pub(crate) fn refill(&mut self, name: &'static str, op: &Operation<'_>) {
        fn refill(slot: &mut Option<String>, value: Option<&str>) {
            match (slot.as_mut(), value) {
                (Some(buffer), Some(value)) => {
                    buffer.clear();
                    buffer.push_str(value);
                }
                (None, Some(value)) => *slot = Some(value.to_owned()),
                (_, None) => *slot = None,
            }
        }
        self.name = name;
        self.correlation_id.clear();
        self.correlation_id.push_str(&op.correlation_id);
        refill(&mut self.capability, op.capability.as_deref());
        refill(&mut self.agent_id, op.agent_id.as_deref());
        refill(&mut self.served_by, op.plugin.as_deref());
        refill(&mut self.task_kind, op.task_kind.as_deref());
        refill(&mut self.error, op.error.as_deref());
        self.outcome = op.outcome;
        self.fallback = op.fallback;
        self.duration_us = op.duration_ns / 1_000;
        self.at_ns = op.at_ns;
    }

    /// Whether it belongs to `correlation_id` (any, when `None`).
    pub(crate) fn matches(&self, correlation_id: Option<&str>) -> bool {
        correlation_id.is_none_or(|id| self.correlation_id == id)
    }

    /// The JSON form `observability` answers with. The fields follow OpenTelemetry's GenAI
    /// conventions where they fit, as the host's own `tracing` spans do.
    pub(crate) fn to_json(&self) -> Value {
        let mut fields = Map::new();
        fields.insert("gen_ai.operation.name".into(), json!(self.name));
        if let Some(capability) = &self.capability {
            fields.insert("gen_ai.tool.name".into(), json!(capability));
        }
        if let Some(agent) = &self.agent_id {
            fields.insert("gen_ai.agent.id".into(), json!(agent));
        }
        if let Some(plugin) = &self.served_by {
            // For a refused call the host names the plugin that refused it, not a server.
            let key = if self.outcome == OperationOutcome::Vetoed {
                "vetoed_by"
            } else {
                "served_by"
            };
            fields.insert(key.into(), json!(plugin));
        }
        if let Some(kind) = &self.task_kind {
            fields.insert("task.kind".into(), json!(kind));
        }
        fields.insert("outcome".into(), json!(self.outcome.as_str()));
        fields.insert("fallback".into(), json!(self.fallback));
        if let Some(error) = &self.error {
            fields.insert("error".into(), json!(error));
        }
        json!({
            "name": self.name,
            "correlation_id": self.correlation_id,
            "fields": fields,
            "duration_us": self.duration_us,
            "at_ns": self.at_ns,
        })
    }
}

/// The span records, in a few shards so that threads recording at the same moment rarely wait
/// for each other (every dispatch records one): a thread records into the shard its thread index
/// picks, and a reader merges the shards newest first. Each shard holds `span_buffer / shards`
/// records (rounded up), so the buffer keeps the last `span_buffer` records or so: a little
/// fewer from a thread busier than the others.
pub(crate) struct SpanBuffer {
    shards: Box<[Mutex<Ring<SpanRecord>>]>,
}

impl SpanBuffer {
    pub(crate) fn new(capacity: usize) -> Self {
        let shards = std::thread::available_parallelism()
            .map_or(2, usize::from)
            .next_power_of_two()
            .clamp(2, 4);
        Self {
            shards: (0..shards)
                .map(|_| Mutex::new(Ring::new(capacity.div_ceil(shards))))
                .collect(),
        }
    }

    /// How many records it keeps at most.
    pub(crate) fn capacity(&self) -> usize {
        self.shards.iter().map(|s| lock(s).capacity()).sum()
    }

    pub(crate) fn set_capacity(&self, capacity: usize) {
        let per_shard = capacity.div_ceil(self.shards.len());
        for shard in self.shards.iter() {
            lock(shard).set_capacity(per_shard);
        }
    }

    /// Records `op` as the span `name`, in place of the shard's oldest record once it is full.
    pub(crate) fn record(&self, name: &'static str, op: &Operation<'_>) {
        let shard = &self.shards[thread_index() & (self.shards.len() - 1)];
        lock(shard).push_with(|| SpanRecord::new(name, op), |slot| slot.refill(name, op));
    }

    /// The newest `limit` records that `keep` accepts, newest first.
    pub(crate) fn newest(&self, limit: usize, keep: impl Fn(&SpanRecord) -> bool) -> Vec<SpanRecord> {
        let mut found: Vec<SpanRecord> = Vec::new();
        for shard in self.shards.iter() {
            found.extend(lock(shard).newest_first().filter(|s| keep(s)).take(limit).cloned());
        }
        found.sort_by_key(|s| std::cmp::Reverse(s.at_ns));
        found.truncate(limit);
        found
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A small number that stays the same for each thread.
fn thread_index() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static INDEX: usize = NEXT.fetch_add(1, Ordering::Relaxed);
    }
    INDEX.with(|i| *i)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dispatch_becomes_an_execute_tool_span_with_the_genai_fields() {
        let op = Operation::new(OperationKind::Dispatch, "c-1")
            .with_capability("semantic_routing")
            .with_agent("a1")
            .with_plugin("ContextAwareRoutingPlugin")
            .with_fallback(true)
            .with_outcome(OperationOutcome::Succeeded)
            .with_duration_ns(12_345)
            .with_at_ns(99);
        let span = SpanRecord::of(&op).expect("a span");
        assert!(span.matches(Some("c-1")) && span.matches(None) && !span.matches(Some("c-2")));
        assert_eq!(
            span.to_json(),
            json!({
                "name": "execute_tool",
                "correlation_id": "c-1",
                "fields": {
                    "gen_ai.operation.name": "execute_tool",
                    "gen_ai.tool.name": "semantic_routing",
                    "gen_ai.agent.id": "a1",
                    "served_by": "ContextAwareRoutingPlugin",
                    "outcome": "succeeded",
                    "fallback": true,
                },
                "duration_us": 12,
                "at_ns": 99,
            })
        );
    }

    #[test]
    fn tasks_and_registrations_have_spans_and_other_kinds_none() {
        let task = Operation::new(OperationKind::TaskFinish, "c")
            .with_agent("a1")
            .with_task_kind("build")
            .with_outcome(OperationOutcome::Failed)
            .with_error("boom");
        let span = SpanRecord::of(&task).expect("a span").to_json();
        assert_eq!(span["name"], "invoke_agent");
        assert_eq!(span["fields"]["task.kind"], "build");
        assert_eq!(span["fields"]["error"], "boom");
        assert!(span["fields"].get("gen_ai.tool.name").is_none());
        let registration = Operation::new(OperationKind::AgentRegistration, "").with_agent("a2");
        assert_eq!(SpanRecord::of(&registration).expect("a span").name, "register_agent");
        assert!(SpanRecord::of(&Operation::new(OperationKind::TaskStart, "c")).is_none());
        let vetoed = Operation::new(OperationKind::Dispatch, "c")
            .with_capability("echo")
            .with_plugin("HookIntegrationPlugin")
            .with_outcome(OperationOutcome::Vetoed);
        let fields = &SpanRecord::of(&vetoed).expect("a span").to_json()["fields"];
        assert_eq!(fields["vetoed_by"], "HookIntegrationPlugin");
        assert!(fields.get("served_by").is_none());
        assert!(SpanRecord::of(&Operation::new(OperationKind::AgentStatusChange, "")).is_none());
    }

    #[test]
    fn a_recycled_record_is_rewritten_whole() {
        let first = Operation::new(OperationKind::Dispatch, "c-1")
            .with_capability("a_long_capability_name")
            .with_agent("a1")
            .with_plugin("P")
            .with_error("boom")
            .with_outcome(OperationOutcome::Failed);
        let second = Operation::new(OperationKind::TaskFinish, "c-2")
            .with_task_kind("build")
            .with_outcome(OperationOutcome::Succeeded)
            .with_duration_ns(5_000);
        let mut recycled = SpanRecord::of(&first).expect("a span");
        let name = SpanRecord::name_of(second.kind).expect("a span kind");
        recycled.refill(name, &second);
        assert_eq!(recycled, SpanRecord::of(&second).expect("a span"));
    }
}
