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
//!
//! Operation feeds (see [`plugin_api::operation`]) ride on the same snapshot: when a plugin
//! intercepts dispatches, it is asked before any provider; when one observes them, it hears
//! the outcome and the duration after. With no such plugin, neither the clock nor an
//! [`Operation`] is touched.
//!
//! The span follows OpenTelemetry's GenAI conventions where they fit: a capability call is a
//! tool call, so the span is `execute_tool` with `gen_ai.operation.name`, `gen_ai.tool.name`
//! (the capability) and `gen_ai.agent.id` (when the request names an agent), beside the
//! `correlation_id`.

use crate::circuit::{Admission, Breaker, Transition};
use crate::error::{DispatchError, FailedAttempt, OrchestratorError, ProviderFailure};
use crate::feeds;
use crate::guard::{bounded, made};
use crate::ids::new_correlation_id;
use crate::legacy;
use crate::orchestrator::Inner;
use crate::registry::{Feeds, Route};
use plugin_api::{
    IntegrationRequest, IntegrationResponse, Operation, OperationKind, OperationOutcome, OrchestratorEvent,
};
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use tracing::Instrument;

/// How many times one call re-reads the registry after finding a provider retired under it.
const MAX_RELOADS: u32 = 8;

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
        "execute_tool",
        gen_ai.operation.name = "execute_tool",
        gen_ai.tool.name = %request.capability,
        gen_ai.agent.id = request.agent_id.as_deref(),
        capability = %request.capability,
        correlation_id = %correlation_id,
    );
    let fed = |feeds: &Feeds| {
        feeds.observes(OperationKind::Dispatch)
            || feeds.intercepts(OperationKind::Dispatch)
            || feeds.observes(OperationKind::ProviderFailure)
    };
    let (route, enabled, unrouted_feeds) = {
        let snapshot = inner.registry.snapshot();
        let route = snapshot.routes.get(&request.capability).cloned();
        // A routed call finds the feeds in its route; only a call with no route (legacy,
        // unknown) takes them from the snapshot.
        let unrouted_feeds = (route.is_none() && fed(&snapshot.feeds)).then(|| Arc::clone(&snapshot.feeds));
        (route, snapshot.is_enabled(&request.capability), unrouted_feeds)
    };
    let feeds = match &route {
        Some(route) => fed(&route.feeds).then_some(&route.feeds),
        None => unrouted_feeds.as_ref(),
    };
    match feeds {
        None => {
            let mut correlation_id = correlation_id;
            dispatch(inner, request, &mut correlation_id, route.as_ref(), enabled, None)
                .instrument(span)
                .await
        }
        // Boxed: the interceptors' futures would otherwise enlarge every `execute` future,
        // intercepted or not, and every move of it.
        Some(feeds) if feeds.intercepts(OperationKind::Dispatch) => {
            Box::pin(dispatch_fed(
                inner,
                request,
                correlation_id,
                route.as_ref(),
                enabled,
                feeds,
            ))
            .instrument(span)
            .await
        }
        Some(feeds) => {
            let started = inner.clock.monotonic_ns();
            dispatch_observed(inner, request, correlation_id, route.as_ref(), enabled, feeds, started)
                .instrument(span)
                .await
        }
    }
}

/// [`dispatch`] with the operation feeds: interceptors before, observers after.
async fn dispatch_fed(
    inner: &Inner,
    request: IntegrationRequest,
    correlation_id: String,
    route: Option<&Arc<Route>>,
    enabled: bool,
    feeds: &Feeds,
) -> Result<IntegrationResponse, OrchestratorError> {
    let started = inner.clock.monotonic_ns();
    let observe = feeds.observes(OperationKind::Dispatch);
    {
        let mut asked = Operation::new(OperationKind::Dispatch, correlation_id.as_str())
            .with_capability(request.capability.as_str())
            .with_details(&request.data)
            .with_at_ns(started);
        if let Some(agent) = &request.agent_id {
            asked = asked.with_agent(agent.as_str());
        }
        if let Err(veto) = feeds::intercept(feeds, inner.call_timeout, &asked).await {
            tracing::info!(plugin = %veto.plugin, reason = %veto.reason, "call vetoed");
            if observe {
                let now = inner.clock.monotonic_ns();
                let mut op = asked
                    .with_outcome(OperationOutcome::Vetoed)
                    .with_plugin(veto.plugin.as_str())
                    .with_error(veto.reason.as_str())
                    .with_duration_ns(now.saturating_sub(started))
                    .with_at_ns(now);
                op.details = None;
                feeds::observe(feeds, &op);
            }
            return Err(DispatchError::Vetoed {
                capability: request.capability,
                plugin: veto.plugin,
                reason: veto.reason,
            }
            .into());
        }
    }
    dispatch_observed(inner, request, correlation_id, route, enabled, feeds, started).await
}

/// [`dispatch`], then the observers of dispatches (when there are any) hear how it went.
async fn dispatch_observed(
    inner: &Inner,
    request: IntegrationRequest,
    correlation_id: String,
    route: Option<&Arc<Route>>,
    enabled: bool,
    feeds: &Feeds,
    started: u64,
) -> Result<IntegrationResponse, OrchestratorError> {
    let mut correlation_id = correlation_id;
    if !feeds.observes(OperationKind::Dispatch) {
        return dispatch(inner, request, &mut correlation_id, route, enabled, Some(feeds)).await;
    }
    // What the observers need once the request has moved into the call: the capability's
    // name is the route's when there is one (no copy), and the correlation id stays here when
    // the call fails (a success carries it in the response).
    let unrouted_capability = route.is_none().then(|| request.capability.clone());
    let agent = request.agent_id.clone();
    let result = dispatch(inner, request, &mut correlation_id, route, enabled, Some(feeds)).await;
    let now = inner.clock.monotonic_ns();
    let capability = match (&route, &unrouted_capability) {
        (Some(route), _) => &*route.capability,
        (None, Some(name)) => name.as_str(),
        (None, None) => "",
    };
    let mut op = match &result {
        Ok(response) => Operation::new(OperationKind::Dispatch, response.correlation_id.as_str())
            .with_plugin(response.served_by.as_str())
            .with_fallback(response.fallback)
            .with_outcome(OperationOutcome::Succeeded),
        Err(error) => Operation::new(OperationKind::Dispatch, correlation_id.as_str())
            .with_outcome(OperationOutcome::Failed)
            .with_error(error.to_string()),
    }
    .with_capability(capability)
    .with_duration_ns(now.saturating_sub(started))
    .with_at_ns(now);
    op.agent_id = agent.as_deref().map(Into::into);
    feeds::observe(feeds, &op);
    result
}

/// Tries the providers, then the legacy path. A response takes the correlation id out of
/// `correlation_id`; on an error it is left there for the caller.
async fn dispatch(
    inner: &Inner,
    request: IntegrationRequest,
    correlation_id: &mut String,
    route: Option<&Arc<Route>>,
    enabled: bool,
    feeds: Option<&Feeds>,
) -> Result<IntegrationResponse, OrchestratorError> {
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
            return Ok(serve_legacy(inner, &request, std::mem::take(correlation_id)));
        }
    };

    // The route of a reload, when a hot swap raced this call (see below); else the caller's,
    // borrowed rather than cloned (a clone is two atomic read-modify-writes on a shared line).
    let first_route = route;
    let mut reloaded: Option<Arc<Route>> = None;
    let mut attempts = Vec::new();
    let mut pending = Some(request);
    let mut reloads = 0;
    loop {
        let route = reloaded.as_ref().unwrap_or(first_route);
        let mut skipped_retired = false;
        let providers = &route.providers;
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
                skipped_retired = true;
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
            // A quarantined plugin is skipped like a retired one, and the call moves on.
            let probe = match slot.breaker.admit(|| inner.clock.monotonic_ns()) {
                Admission::Call => None,
                Admission::Probe => Some(ProbeGuard(&slot.breaker)),
                Admission::Skip { retry_in_ns } => {
                    if is_last_option {
                        pending = Some(request);
                    }
                    attempts.push(FailedAttempt {
                        plugin: slot.name.to_string(),
                        failure: ProviderFailure::Quarantined {
                            retry_in_ms: retry_in_ns.div_ceil(1_000_000),
                        },
                    });
                    continue;
                }
            };
            slot.stats.calls.fetch_add(1, Ordering::Relaxed);
            // Made before the await, so that the request is not kept in this state machine.
            let call = made(|| slot.plugin.process_request(request));
            let outcome = bounded(inner.call_timeout, call).await;
            let answered = matches!(&outcome, Ok(Ok(_))) || matches!(&outcome, Ok(Err(e)) if e.is_invalid_request());
            let probing = probe.is_some();
            if let Some(probe) = probe {
                std::mem::forget(probe); // the verdict below ends the probe
            }
            if answered {
                if slot.breaker.succeeded(probing) == Transition::Closed {
                    circuit_changed(inner, "plugin_recovered", json!({"plugin": &*slot.name}));
                }
            } else if let Transition::Opened { failures, backoff } =
                slot.breaker
                    .failed(probing, inner.clock.monotonic_ns(), &inner.quarantine)
            {
                tracing::warn!(plugin = %slot.name, failures, ?backoff, "plugin quarantined");
                circuit_changed(
                    inner,
                    "plugin_quarantined",
                    json!({
                        "plugin": &*slot.name,
                        "consecutive_failures": failures,
                        "backoff_ms": u64::try_from(backoff.as_millis()).unwrap_or(u64::MAX),
                    }),
                );
            }
            let failure = match outcome {
                Ok(Ok(mut response)) => {
                    response.served_by = slot.name.to_string();
                    response.fallback = index > 0;
                    response.correlation_id = std::mem::take(correlation_id);
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
            if let Some(feeds) = feeds.filter(|f| f.observes(OperationKind::ProviderFailure)) {
                let outcome = match &failure {
                    ProviderFailure::Timeout { .. } => OperationOutcome::TimedOut,
                    ProviderFailure::Panic { .. } => OperationOutcome::Panicked,
                    _ => OperationOutcome::Failed,
                };
                let reason = failure.to_string();
                let op = Operation::new(OperationKind::ProviderFailure, correlation_id.as_str())
                    .with_capability(&*route.capability)
                    .with_plugin(&*slot.name)
                    .with_outcome(outcome)
                    .with_error(reason.as_str())
                    .with_at_ns(inner.clock.monotonic_ns());
                feeds::observe(feeds, &op);
            }
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
        // A provider was retired between the snapshot and the call: a hot swap or an unregister
        // raced this call. Try the providers of the registry as it is now (a swap inserts the
        // new plugin before it retires the old one, so the registry then holds it), so that a
        // call made during a hot swap is served by the new plugin instead of failing; a few
        // times, in case swaps follow each other faster than this call.
        if skipped_retired && reloads < MAX_RELOADS && pending.is_some() {
            let fresh = inner.registry.snapshot().routes.get(&*route.capability).cloned();
            if let Some(fresh) = fresh.filter(|fresh| !Arc::ptr_eq(fresh, route)) {
                reloaded = Some(fresh);
                reloads += 1;
                continue;
            }
        }
        break;
    }
    let route = reloaded.as_ref().unwrap_or(first_route);

    match pending {
        Some(request) if legacy_available => Ok(serve_legacy(inner, &request, std::mem::take(correlation_id))),
        _ => Err(DispatchError::AllProvidersFailed {
            capability: route.capability.to_string(),
            attempts,
        }
        .into()),
    }
}

/// A half-open circuit's probe in flight: if the call is dropped before its verdict (the
/// caller stopped waiting), another call may probe.
struct ProbeGuard<'a>(&'a Breaker);

impl Drop for ProbeGuard<'_> {
    fn drop(&mut self) {
        self.0.probe_abandoned();
    }
}

/// Announces a quarantine or a recovery.
fn circuit_changed(inner: &Inner, name: &str, data: Value) {
    inner.events.emit(OrchestratorEvent::Custom {
        source: "orchestrator".into(),
        name: name.into(),
        data,
    });
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
