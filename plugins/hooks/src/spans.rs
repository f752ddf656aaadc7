//! Span records for `observability`: one per dispatch, finished agent task and agent
//! registration, built in `observe` (owned strings, no JSON) and turned into JSON only when
//! asked for.

use plugin_api::{Operation, OperationKind, OperationOutcome};
use serde_json::{Map, Value, json};

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
        Self::name_of(op.kind).map(|name| Self::fill(None, name, op))
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

    /// The record of `op` (whose kind makes the span `name`), written into `recycled`'s
    /// buffers when given one: no allocation once the strings have grown to size.
    pub(crate) fn fill(recycled: Option<Self>, name: &'static str, op: &Operation<'_>) -> Self {
        let own = |s: &Option<std::borrow::Cow<'_, str>>| s.as_deref().map(str::to_owned);
        let Some(mut record) = recycled else {
            return Self {
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
            };
        };
        record.name = name;
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
        record.correlation_id.clear();
        record.correlation_id.push_str(&op.correlation_id);
        refill(&mut record.capability, op.capability.as_deref());
        refill(&mut record.agent_id, op.agent_id.as_deref());
        refill(&mut record.served_by, op.plugin.as_deref());
        refill(&mut record.task_kind, op.task_kind.as_deref());
        refill(&mut record.error, op.error.as_deref());
        record.outcome = op.outcome;
        record.fallback = op.fallback;
        record.duration_us = op.duration_ns / 1_000;
        record.at_ns = op.at_ns;
        record
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
        let recycled = SpanRecord::of(&first);
        let name = SpanRecord::name_of(second.kind).expect("a span kind");
        assert_eq!(
            SpanRecord::fill(recycled, name, &second),
            SpanRecord::of(&second).expect("a span")
        );
    }
}
