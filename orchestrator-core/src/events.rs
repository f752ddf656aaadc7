//! Event delivery: every plugin hears every event in order, from a bounded queue of its own, so
//! that a slow or stalled plugin delays and costs only itself.
//!
//! Emitting an event never waits: it is a `try_send` onto a bounded central queue (a full one
//! drops the event and counts it, [`Catalog::events_dropped`](crate::Catalog::events_dropped)).
//! One fan-out task takes events off that queue and offers each to every plugin's own queue
//! (capacity [`OrchestratorBuilder::event_queue_capacity`](crate::OrchestratorBuilder::event_queue_capacity),
//! default [`DEFAULT_EVENT_QUEUE_CAPACITY`]). Each plugin has a delivery task of its own that
//! calls its `on_event`, bounded by the call timeout and contained against panics.
//!
//! **Overflow policy: drop the newest, per plugin, and count it.** When a plugin's queue is
//! full the event is not queued for that plugin (the others still get it); the loss is counted
//! in its [`PluginInfo::events_dropped`](crate::PluginInfo::events_dropped), and the next
//! [`Orchestrator::health`](crate::Orchestrator::health) reports the plugin degraded, saying how
//! many it missed. Dropping the newest keeps what the plugin already queued consistent (it
//! sees a prefix of the stream, then a gap, never a reordering); memory stays bounded by the
//! queue capacities whatever a plugin does.
//!
//! The embedder's subscribers ([`Orchestrator::subscribe_events`](crate::Orchestrator::subscribe_events))
//! hear events in emission order, each once every plugin has handled it (or dropped it), or
//! once the call timeout has passed since it was emitted, whichever comes first: a test can
//! wait for an event on a subscription to know the plugins have seen it, and a stalled plugin
//! delays subscribers by at most the call timeout.

use crate::guard::guarded;
use crate::registry::{CapabilityRegistry, PluginSlot};
use plugin_api::OrchestratorEvent;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::sync::{Notify, broadcast, mpsc};
use tokio::time::Instant;

/// How many events a plugin's queue holds by default before it starts dropping.
pub const DEFAULT_EVENT_QUEUE_CAPACITY: usize = 1024;

/// The largest per-plugin event queue (1,048,576 events): larger settings are taken as this
/// (the queue's semaphore cannot count more, and no plugin needs more).
pub(crate) const MAX_EVENT_QUEUE_CAPACITY: usize = 1 << 20;

/// How many events may wait for the fan-out task (it never waits on plugins, so this fills
/// only when emitters outrun a whole core).
const CENTRAL_QUEUE: usize = 65_536;

/// How many events a slow embedder subscriber may fall behind before it misses some.
const SUBSCRIBER_BUFFER: usize = 4096;

/// One event on its way to the plugins; `remaining` counts the plugins still to handle it.
pub(crate) struct Delivery {
    event: OrchestratorEvent,
    remaining: AtomicUsize,
}

/// A plugin's end of the event stream: the sender of its queue.
pub(crate) type PluginQueue = mpsc::Sender<Arc<Delivery>>;

pub(crate) struct EventBus {
    tx: mpsc::Sender<OrchestratorEvent>,
    subscribers: broadcast::Sender<OrchestratorEvent>,
    dropped: Arc<AtomicU64>,
    progress: Arc<Notify>,
    queue_capacity: usize,
    timeout: Duration,
    runtime: tokio::runtime::Handle,
}

impl EventBus {
    /// Starts the fan-out task on `runtime`.
    pub(crate) fn start(
        registry: Arc<CapabilityRegistry>,
        runtime: &tokio::runtime::Handle,
        timeout: Duration,
        queue_capacity: usize,
    ) -> Self {
        let (tx, rx) = mpsc::channel::<OrchestratorEvent>(CENTRAL_QUEUE);
        let (subscribers, _) = broadcast::channel(SUBSCRIBER_BUFFER);
        let progress = Arc::new(Notify::new());
        runtime.spawn(fan_out(
            registry,
            rx,
            subscribers.clone(),
            Arc::clone(&progress),
            timeout,
        ));
        Self {
            tx,
            subscribers,
            dropped: Arc::default(),
            progress,
            queue_capacity: queue_capacity.max(1),
            timeout,
            runtime: runtime.clone(),
        }
    }

    /// Queues `event` for delivery; never waits.
    pub(crate) fn emit(&self, event: OrchestratorEvent) {
        match self.tx.try_send(event) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
            // The fan-out task is gone (runtime shut down): nothing to deliver to.
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }

    pub(crate) fn subscribe(&self) -> broadcast::Receiver<OrchestratorEvent> {
        self.subscribers.subscribe()
    }

    /// Events dropped because the fan-out task fell behind.
    pub(crate) fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Gives `slot` its queue and delivery task. The task ends once the slot is gone (it holds
    /// only a weak reference, and the slot holds the queue's sender).
    pub(crate) fn attach(&self, slot: &Arc<PluginSlot>) -> PluginQueue {
        let (tx, rx) = mpsc::channel(self.queue_capacity);
        self.runtime.spawn(deliver(
            Arc::downgrade(slot),
            rx,
            self.timeout,
            Arc::clone(&self.progress),
        ));
        tx
    }
}

/// Offers each event to every plugin's queue, then forwards it to the embedder's subscribers
/// in emission order once the plugins are done with it (or the timeout has passed).
async fn fan_out(
    registry: Arc<CapabilityRegistry>,
    mut rx: mpsc::Receiver<OrchestratorEvent>,
    subscribers: broadcast::Sender<OrchestratorEvent>,
    progress: Arc<Notify>,
    timeout: Duration,
) {
    let mut pending: VecDeque<(Arc<Delivery>, Instant)> = VecDeque::new();
    let mut open = true;
    loop {
        let now = Instant::now();
        while let Some((delivery, deadline)) = pending.front() {
            if delivery.remaining.load(Ordering::Acquire) > 0 && now < *deadline {
                break;
            }
            // No subscriber is not an error.
            let _ = subscribers.send(delivery.event.clone());
            pending.pop_front();
        }
        if !open && pending.is_empty() {
            return;
        }
        let next_deadline = pending.front().map(|(_, deadline)| *deadline);
        tokio::select! {
            biased;
            received = rx.recv(), if open && pending.len() < CENTRAL_QUEUE => match received {
                Some(event) => {
                    let delivery = offer(&registry, event);
                    pending.push_back((delivery, Instant::now() + timeout));
                }
                None => open = false,
            },
            () = progress.notified(), if !pending.is_empty() => {}
            () = sleep_until(next_deadline), if next_deadline.is_some() => {}
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    if let Some(deadline) = deadline {
        tokio::time::sleep_until(deadline).await;
    }
}

/// Puts `event` on the queue of every plugin that should hear it; a full queue drops it for
/// that plugin and counts the loss.
fn offer(registry: &CapabilityRegistry, event: OrchestratorEvent) -> Arc<Delivery> {
    // One count held while offering, so that a fast plugin cannot bring it to zero early.
    let delivery = Arc::new(Delivery {
        event,
        remaining: AtomicUsize::new(1),
    });
    let snapshot = registry.snapshot();
    for slot in snapshot.plugins.values() {
        // A plugin does not hear its own custom events (no feedback loops).
        if matches!(&delivery.event, OrchestratorEvent::Custom { source, .. } if **source == *slot.name) {
            continue;
        }
        let Some(queue) = slot.events.get() else { continue };
        delivery.remaining.fetch_add(1, Ordering::AcqRel);
        match queue.try_send(Arc::clone(&delivery)) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                slot.stats.events_dropped.fetch_add(1, Ordering::Relaxed);
                delivery.remaining.fetch_sub(1, Ordering::AcqRel);
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                delivery.remaining.fetch_sub(1, Ordering::AcqRel);
            }
        }
    }
    delivery.remaining.fetch_sub(1, Ordering::AcqRel);
    delivery
}

/// One plugin's delivery task: its events, in order, one `on_event` at a time.
async fn deliver(
    slot: Weak<PluginSlot>,
    mut rx: mpsc::Receiver<Arc<Delivery>>,
    timeout: Duration,
    progress: Arc<Notify>,
) {
    while let Some(delivery) = rx.recv().await {
        if let Some(slot) = slot.upgrade() {
            // A retired plugin hears nothing more.
            if let Some(_in_flight) = slot.enter() {
                if let Err(failure) = guarded(timeout, || slot.plugin.on_event(&delivery.event)).await {
                    tracing::warn!(plugin = %slot.name, %failure, "on_event failed");
                }
                slot.stats.events_delivered.fetch_add(1, Ordering::Relaxed);
            }
        }
        if delivery.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
            progress.notify_one();
        }
    }
}
