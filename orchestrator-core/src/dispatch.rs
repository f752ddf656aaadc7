//! Dispatch: how one [`IntegrationRequest`] finds its answer.
//!
//! Order: the capability's feature flag, then its providers from the highest priority down,
//! then the legacy handler (when legacy mode is on and the legacy path serves the capability).
//! Each provider call runs under the call timeout and `catch_unwind`; an error, a panic or a
//! timeout moves on to the next option and is recorded three ways: a `warn` trace in the
//! dispatch span, the plugin's failure counters in the catalog, and a `CapabilityFallback`
//! event. An `invalid_request` error is the caller's fault: it goes back to the caller at once.
//!
//! The hot path takes one lock-free registry snapshot, clones the request only when another
//! option remains after the current one, and allocates nothing else of its own beyond the
//! correlation id when the caller gave none.

use crate::error::{DispatchError, FailedAttempt, OrchestratorError, ProviderFailure};
use crate::guard::guarded;
use crate::ids::new_correlation_id;
use crate::legacy;
use crate::orchestrator::Inner;
use plugin_api::{IntegrationRequest, IntegrationResponse, OrchestratorEvent};
use std::sync::atomic::Ordering;
use tracing::Instrument;

/// The name that `served_by` carries when the legacy path answered.
pub const LEGACY: &str = "legacy";

pub(crate) async fn execute(
    inner: &Inner,
    mut request: IntegrationRequest,
) -> Result<IntegrationResponse, OrchestratorError> {
    let correlation_id = match request.correlation_id.as_deref() {
        Some(id) if !id.is_empty() => id.to_owned(),
        _ => {
            let id = new_correlation_id();
            request.correlation_id = Some(id.clone());
            id
        }
    };
    let span = tracing::info_span!(
        "dispatch",
        capability = %request.capability,
        correlation_id = %correlation_id,
    );
    dispatch(inner, request, correlation_id).instrument(span).await
}

async fn dispatch(
    inner: &Inner,
    request: IntegrationRequest,
    correlation_id: String,
) -> Result<IntegrationResponse, OrchestratorError> {
    let (route, enabled) = {
        let snapshot = inner.registry.snapshot();
        (
            snapshot.routes.get(&request.capability).cloned(),
            snapshot.is_enabled(&request.capability),
        )
    };
    let legacy_available = inner.legacy_mode && legacy::serves(&request.capability);
    let route = match route {
        Some(route) if enabled => route,
        Some(_) if !legacy_available => {
            return Err(DispatchError::CapabilityDisabled {
                capability: request.capability,
            }
            .into());
        }
        None if !legacy_available => {
            return Err(DispatchError::UnknownCapability {
                known: inner.known_capabilities(),
                capability: request.capability,
            }
            .into());
        }
        _ => {
            tracing::debug!(enabled, "served by the legacy path");
            return Ok(serve_legacy(inner, &request, correlation_id));
        }
    };

    let providers = &route.providers;
    let mut attempts = Vec::new();
    let mut pending = Some(request);
    for (index, slot) in providers.iter().enumerate() {
        let is_last_option = index + 1 == providers.len() && !legacy_available;
        let request = if is_last_option {
            pending.take()
        } else {
            pending.clone()
        };
        let Some(request) = request else { break };

        // A provider retired since the snapshot was taken (unregistered or replaced while an
        // earlier provider was tried) is shut down or shutting down: skip it.
        let Some(_in_flight) = slot.enter() else {
            if is_last_option {
                pending = Some(request);
            }
            attempts.push(FailedAttempt {
                plugin: slot.name.to_string(),
                failure: ProviderFailure::Error {
                    message: "unregistered while the call was under way; not called".into(),
                },
            });
            continue;
        };
        slot.stats.calls.fetch_add(1, Ordering::Relaxed);
        let outcome = guarded(inner.call_timeout, || slot.plugin.process_request(request)).await;
        let failure = match outcome {
            Ok(Ok(mut response)) => {
                response.served_by = slot.name.to_string();
                response.fallback = index > 0;
                response.correlation_id = correlation_id;
                return Ok(response);
            }
            Ok(Err(error)) if error.is_invalid_request() => {
                return Err(DispatchError::InvalidRequest {
                    capability: route.capability.to_string(),
                    plugin: slot.name.to_string(),
                    message: error.message,
                }
                .into());
            }
            Ok(Err(error)) => {
                slot.stats.errors.fetch_add(1, Ordering::Relaxed);
                ProviderFailure::Error { message: error.message }
            }
            Err(failure) => {
                let counter = match failure {
                    ProviderFailure::Timeout { .. } => &slot.stats.timeouts,
                    _ => &slot.stats.panics,
                };
                counter.fetch_add(1, Ordering::Relaxed);
                failure
            }
        };
        tracing::warn!(plugin = %slot.name, %failure, "provider failed; falling back");
        inner.events.emit(OrchestratorEvent::CapabilityFallback {
            capability: route.capability.to_string(),
            plugin: slot.name.to_string(),
            reason: failure.to_string(),
            correlation_id: correlation_id.clone(),
        });
        attempts.push(FailedAttempt {
            plugin: slot.name.to_string(),
            failure,
        });
    }

    match pending {
        Some(request) if legacy_available => Ok(serve_legacy(inner, &request, correlation_id)),
        _ => Err(DispatchError::AllProvidersFailed {
            capability: route.capability.to_string(),
            attempts,
        }
        .into()),
    }
}

fn serve_legacy(inner: &Inner, request: &IntegrationRequest, correlation_id: String) -> IntegrationResponse {
    let result = legacy::handle(&request.capability, &request.data, &inner.agents, &inner.round_robin);
    let mut response = match result {
        Ok(data) => IntegrationResponse::ok(data),
        Err(message) => IntegrationResponse::failure(message),
    };
    response.served_by = LEGACY.to_owned();
    response.fallback = true;
    response.correlation_id = correlation_id;
    response
}
