//! What a plugin says about its own health.

use serde::{Deserialize, Serialize};
use std::fmt;

/// The three levels of health.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthState {
    /// Serving normally.
    Healthy,
    /// Serving, with reduced quality or capacity.
    Degraded,
    /// Not able to serve.
    Unhealthy,
}

/// A plugin's answer to a health check: a level and, unless healthy, the reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthStatus {
    /// The level.
    pub state: HealthState,
    /// Why it is not healthy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl HealthStatus {
    /// All is well.
    pub fn healthy() -> Self {
        Self {
            state: HealthState::Healthy,
            reason: None,
        }
    }

    /// Serving, but not fully; say why.
    pub fn degraded(reason: impl Into<String>) -> Self {
        Self {
            state: HealthState::Degraded,
            reason: Some(reason.into()),
        }
    }

    /// Not serving; say why.
    pub fn unhealthy(reason: impl Into<String>) -> Self {
        Self {
            state: HealthState::Unhealthy,
            reason: Some(reason.into()),
        }
    }

    /// Whether the state is [`HealthState::Healthy`].
    pub fn is_healthy(&self) -> bool {
        self.state == HealthState::Healthy
    }
}

impl fmt::Display for HealthStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let level = match self.state {
            HealthState::Healthy => "healthy",
            HealthState::Degraded => "degraded",
            HealthState::Unhealthy => "unhealthy",
        };
        match &self.reason {
            Some(reason) => write!(f, "{level}: {reason}"),
            None => f.write_str(level),
        }
    }
}
