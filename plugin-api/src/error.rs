//! The one error a plugin returns.
//!
//! Its [`PluginErrorKind`] tells the host what to do next: an [`InvalidRequest`] is the caller's
//! fault and goes back to the caller as is (another provider would not do better), anything
//! else lets the host move on to the next provider or the legacy path.
//!
//! [`InvalidRequest`]: PluginErrorKind::InvalidRequest

use serde::{Deserialize, Serialize};

/// What kind of failure a [`PluginError`] reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum PluginErrorKind {
    /// The plugin failed: a bug, a missing dependency, a backend down. The host falls back.
    Internal,
    /// The request was malformed or asked for something that does not exist: the caller's fault.
    InvalidRequest,
    /// The plugin cannot serve now (overloaded, shutting down, not initialized). The host falls back.
    Unavailable,
}

/// A plugin's failure, with a message that says what went wrong and what to do about it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[error("{message}")]
pub struct PluginError {
    /// What kind of failure this is.
    pub kind: PluginErrorKind,
    /// What went wrong, for a person.
    pub message: String,
}

impl PluginError {
    /// An internal failure of the plugin.
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            kind: PluginErrorKind::Internal,
            message: message.into(),
        }
    }

    /// Bad input from the caller: say what was expected.
    ///
    /// ```
    /// let err = plugin_api::PluginError::invalid_request("expected `task_description` (string)");
    /// assert!(err.is_invalid_request());
    /// ```
    pub fn invalid_request(message: impl Into<String>) -> Self {
        Self {
            kind: PluginErrorKind::InvalidRequest,
            message: message.into(),
        }
    }

    /// The plugin cannot serve right now.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self {
            kind: PluginErrorKind::Unavailable,
            message: message.into(),
        }
    }

    /// Whether this error is the caller's fault.
    pub fn is_invalid_request(&self) -> bool {
        self.kind == PluginErrorKind::InvalidRequest
    }
}
