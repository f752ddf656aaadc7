//! Running the operation feeds (see [`plugin_api::operation`]): observers after an operation,
//! interceptors before it.
//!
//! Both are plugin code on the host's path, so both are contained: an observer's panic is
//! caught and counted; an interceptor runs under the call timeout and `catch_unwind`, and one
//! that panics or hangs lets the operation go ahead (fail-open) and is counted and traced. Only
//! an explicit [`Verdict::Veto`] refuses an operation.
//!
//! Callers check [`Feeds::observes`] / [`Feeds::intercepts`] first, so that with no interested
//! plugin an operation builds no [`Operation`] and reads no clock.

use crate::guard::{guarded, panic_message};
use crate::registry::Feeds;
use plugin_api::{Operation, Verdict};
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::time::Duration;

/// Passes `operation` to every plugin observing its kind, highest priority first.
pub(crate) fn observe(feeds: &Feeds, operation: &Operation<'_>) {
    for (kinds, slot) in &feeds.observers {
        // A plugin unregistered since the snapshot was taken hears no more (the check is a
        // plain load: an observation that started just before the retirement may still
        // overlap the drain, which observers tolerate by the trait's contract).
        if !kinds.contains(operation.kind) || slot.is_retired() {
            continue;
        }
        let plugin = &slot.plugin;
        if let Err(payload) = panic::catch_unwind(AssertUnwindSafe(|| plugin.observe(operation))) {
            slot.stats.feed_failures.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                plugin = %slot.name,
                kind = %operation.kind,
                panic = %panic_message(payload.as_ref()),
                "an observer panicked; the operation was not affected"
            );
        }
    }
}

/// A veto: which plugin refused, and why.
pub(crate) struct Vetoed {
    pub(crate) plugin: String,
    pub(crate) reason: String,
}

/// Asks every plugin intercepting `operation`'s kind, highest priority first; the first veto
/// wins and the rest are not asked.
pub(crate) async fn intercept(feeds: &Feeds, timeout: Duration, operation: &Operation<'_>) -> Result<(), Vetoed> {
    for (kinds, slot) in &feeds.interceptors {
        if !kinds.contains(operation.kind) {
            continue;
        }
        // A plugin retired since the snapshot was taken is not asked.
        let Some(_in_flight) = slot.enter() else { continue };
        match guarded(timeout, || slot.plugin.intercept(operation)).await {
            Ok(Verdict::Allow) => {}
            Ok(Verdict::Veto(reason)) => {
                return Err(Vetoed {
                    plugin: slot.name.to_string(),
                    reason,
                });
            }
            Err(failure) => {
                slot.stats.feed_failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    plugin = %slot.name,
                    kind = %operation.kind,
                    %failure,
                    "an interceptor failed; the operation goes ahead"
                );
            }
        }
    }
    Ok(())
}
