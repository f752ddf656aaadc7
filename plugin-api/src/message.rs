//! The request and response that cross the boundary, as plain serde types.
//!
//! Both are JSON-shaped on purpose: the same values travel to statically linked plugins, to
//! stable-ABI dynamic libraries and, serialized, to plugins written in C. The fields the host
//! fills in (`served_by`, `fallback`, `correlation_id`) default when absent, so a plugin may
//! leave them out.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One call of a capability.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IntegrationRequest {
    /// The capability asked for, e.g. `"semantic_routing"`.
    pub capability: String,
    /// The agent the call is made for or about, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<String>,
    /// The id that ties this call to the work it belongs to; the host generates one when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
    /// The capability's own input; each capability documents its shape.
    #[serde(default)]
    pub data: Value,
}

impl IntegrationRequest {
    /// A request for `capability` with `data` as its input.
    ///
    /// ```
    /// # use plugin_api::IntegrationRequest;
    /// let req = IntegrationRequest::new("semantic_routing", serde_json::json!({"task": {"description": "fix the build"}}))
    ///     .with_agent("agent-1")
    ///     .with_correlation_id("req-42");
    /// assert_eq!(req.correlation_id.as_deref(), Some("req-42"));
    /// ```
    pub fn new(capability: impl Into<String>, data: Value) -> Self {
        Self {
            capability: capability.into(),
            agent_id: None,
            correlation_id: None,
            data,
        }
    }

    /// Sets the agent the call is for.
    #[must_use]
    pub fn with_agent(mut self, agent_id: impl Into<String>) -> Self {
        self.agent_id = Some(agent_id.into());
        self
    }

    /// Sets the correlation id instead of letting the host generate one.
    #[must_use]
    pub fn with_correlation_id(mut self, correlation_id: impl Into<String>) -> Self {
        self.correlation_id = Some(correlation_id.into());
        self
    }
}

/// The answer to an [`IntegrationRequest`].
///
/// `success: false` with an `error` is a well-formed answer ("your input was wrong, here is
/// why"); a plugin that cannot answer at all returns a [`PluginError`](crate::PluginError)
/// instead, which lets the host try the next provider.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IntegrationResponse {
    /// Whether the capability did what was asked.
    pub success: bool,
    /// The capability's output; each capability documents its shape.
    #[serde(default)]
    pub data: Value,
    /// Why it did not succeed, when `success` is false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The plugin that answered, or `"legacy"`; filled in by the host.
    #[serde(default)]
    pub served_by: String,
    /// Whether a fallback (a lower-priority provider or the legacy path) answered; filled in by the host.
    #[serde(default)]
    pub fallback: bool,
    /// The request's correlation id; filled in by the host.
    #[serde(default)]
    pub correlation_id: String,
}

impl IntegrationResponse {
    /// A successful answer carrying `data`.
    pub fn ok(data: Value) -> Self {
        Self {
            success: true,
            data,
            error: None,
            served_by: String::new(),
            fallback: false,
            correlation_id: String::new(),
        }
    }

    /// An unsuccessful answer that says why.
    pub fn failure(message: impl Into<String>) -> Self {
        Self {
            success: false,
            data: Value::Null,
            error: Some(message.into()),
            served_by: String::new(),
            fallback: false,
            correlation_id: String::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn response_may_leave_out_host_fields() {
        let resp: IntegrationResponse =
            serde_json::from_value(json!({"success": true, "data": {"x": 1}})).expect("parses");
        assert!(resp.success);
        assert_eq!(resp.served_by, "");
        assert!(!resp.fallback);
    }

    #[test]
    fn request_round_trips() {
        let req = IntegrationRequest::new("cap", json!({"a": [1, 2]})).with_agent("a1");
        let text = serde_json::to_string(&req).expect("serializes");
        assert!(!text.contains("correlation_id"));
        let back: IntegrationRequest = serde_json::from_str(&text).expect("parses");
        assert_eq!(back, req);
    }
}
