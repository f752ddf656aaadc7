//! Event delivery: one background task delivers every event to every plugin, in order.
//!
//! Emitting an event is a push onto an unbounded channel, so the operation that caused it
//! (registering an agent, say) never waits for a subscriber. The delivery task calls each
//! plugin's `on_event` in turn, each call bounded by the call timeout and contained against
//! panics, then forwards the event to the embedder's subscribers
//! ([`Orchestrator::subscribe_events`](crate::Orchestrator::subscribe_events)).

use crate::guard::guarded;
use crate::registry::CapabilityRegistry;
use plugin_api::OrchestratorEvent;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{broadcast, mpsc};

/// How many events a slow embedder subscriber may fall behind before it misses some.
const SUBSCRIBER_BUFFER: usize = 4096;

pub(crate) struct EventBus {
    tx: mpsc::UnboundedSender<OrchestratorEvent>,
    subscribers: broadcast::Sender<OrchestratorEvent>,
}

impl EventBus {
    /// Starts the delivery task on `runtime`.
    pub(crate) fn start(
        registry: Arc<CapabilityRegistry>,
        runtime: &tokio::runtime::Handle,
        timeout: Duration,
    ) -> Self {
        let (tx, mut rx) = mpsc::unbounded_channel::<OrchestratorEvent>();
        let (subscribers, _) = broadcast::channel(SUBSCRIBER_BUFFER);
        let forward = subscribers.clone();
        runtime.spawn(async move {
            while let Some(event) = rx.recv().await {
                let snapshot = registry.snapshot_arc();
                for slot in snapshot.plugins.values() {
                    // A plugin does not hear its own custom events (no feedback loops), and a
                    // retired one hears nothing.
                    if matches!(&event, OrchestratorEvent::Custom { source, .. } if **source == *slot.name) {
                        continue;
                    }
                    let Some(_in_flight) = slot.enter() else { continue };
                    if let Err(failure) = guarded(timeout, || slot.plugin.on_event(&event)).await {
                        tracing::warn!(plugin = %slot.name, %failure, "on_event failed");
                    }
                }
                // No subscriber is not an error.
                let _ = forward.send(event);
            }
        });
        Self { tx, subscribers }
    }

    pub(crate) fn emit(&self, event: OrchestratorEvent) {
        // Fails only once the delivery task is gone (runtime shut down): nothing to deliver to.
        let _ = self.tx.send(event);
    }

    pub(crate) fn subscribe(&self) -> broadcast::Receiver<OrchestratorEvent> {
        self.subscribers.subscribe()
    }
}
