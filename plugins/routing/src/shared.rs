//! One model for several processes: outcomes go through a shared log.
//!
//! With `learning.shared_log` set, `performance_learning` does not update the model directly:
//! it appends the outcome (agent, capabilities, features, similarity, success) to that log
//! through `atomic_updates` (the shared-state plugin, on Redis for several processes), then
//! reads the log from where this process left off and learns every entry in `seq` order, its
//! own among them. Every process folds the same entries in the same order, so all of them hold
//! the same model, and no outcome is lost to a race: the append is one atomic step on the
//! backend, and nothing is ever read, changed and written back. Routing reads what the others
//! learned at most every `learning.sync_interval_ms` (default 100 ms), so a route never waits
//! for more than one read of the log per interval.
//!
//! A process started later replays the log (its newest `max_log_entries`, a shared-state
//! setting); a process that falls further behind than that skips what was dropped and counts
//! it (`missed` in `agent_profiling`). Entries it cannot read (written by something else) are
//! skipped and counted too, and a log found to have started again (a backend that lost its
//! data) is read from its start (`resets`). A snapshot cannot be imported into a router that
//! learns through a log: the log is its model. A deregistration forgets the agent in this
//! process only; the other processes forget it when they see their own.

use crate::model::{Learned, TaskFeatures};
use crate::{ContextAwareRoutingPlugin, NAME};
use plugin_api::prelude::*;
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};

/// Entries read per call to `read_log` (the shared-state plugin's most).
const PAGE: u64 = 1_000;
/// The results of this many of the last entries learned are kept for the callers that
/// appended them.
const RECENT: usize = 1_024;

/// The shared log's name, and when it was last read.
#[derive(Debug)]
pub(crate) struct SharedLog {
    name: String,
    interval_ns: u64,
    last_read_ns: AtomicU64,
}

impl SharedLog {
    pub(crate) fn new(name: &str, interval_ms: u64) -> Self {
        Self {
            name: name.to_owned(),
            interval_ns: interval_ms * 1_000_000,
            last_read_ns: AtomicU64::new(0),
        }
    }

    pub(crate) fn name(&self) -> &str {
        &self.name
    }
}

/// Where a process is in the shared log.
#[derive(Debug, Default)]
pub(crate) struct LogPosition {
    /// The last `seq` learned.
    pub(crate) read_up_to: u64,
    /// Entries dropped from the log before this process read them.
    pub(crate) missed: u64,
    /// Entries skipped because they were not outcomes.
    pub(crate) malformed: u64,
    /// Times the log was found to have started again (its newest seq below the last learned).
    pub(crate) resets: u64,
    /// What the last entries learned did, by `seq`.
    recent: VecDeque<(u64, Learned)>,
}

/// An outcome as the log holds it.
#[derive(Debug, Deserialize)]
struct Entry {
    agent: String,
    capabilities: Vec<String>,
    features: Vec<String>,
    similarity: f64,
    success: bool,
    duration_ms: Option<f64>,
}

impl ContextAwareRoutingPlugin {
    /// Appends the outcome to the shared log, then learns the log up to it.
    pub(crate) async fn learn_shared(&self, log: &SharedLog, data: &Value) -> Result<Value, PluginError> {
        let outcome = self.outcome(data)?;
        let entry = json!({
            "agent": outcome.agent,
            "capabilities": &*outcome.capabilities,
            "features": outcome.features.names(),
            "similarity": outcome.similarity,
            "success": outcome.success,
            "duration_ms": outcome.duration_ms,
        });
        let appended = self
            .log_call(json!({"op": "append", "log": log.name, "entry": entry}), &log.name)
            .await?;
        let seq = appended["seq"].as_u64().ok_or_else(|| {
            PluginError::new(format!(
                "{NAME}: `atomic_updates` append answered without a seq: {appended}"
            ))
        })?;
        self.read_log(log).await.map_err(|e| {
            PluginError::unavailable(format!(
                "{NAME}: the outcome is recorded in the shared log `{}` as seq {seq} (do not send it again), but the log could not be read back: {}",
                log.name, e.message
            ))
        })?;
        let state = self.read();
        match state.log.recent.iter().find(|(s, _)| *s == seq) {
            Some((_, learned)) => Ok(outcome.answer(learned)),
            None => Err(PluginError::unavailable(format!(
                "{NAME}: the outcome is in the shared log `{}` as seq {seq}, but was not read back (read up to {}); it will be learned on the next read",
                log.name, state.log.read_up_to
            ))),
        }
    }

    /// Reads the log when the last read is older than the interval. A failed read leaves the
    /// model as it is: routing goes on with what it has.
    pub(crate) async fn sync_if_due(&self, log: &SharedLog) {
        let Some(host) = self.host.get() else { return };
        let now = host.monotonic_ns();
        let last = log.last_read_ns.load(Ordering::Relaxed);
        // One route per interval reads, whether the read then succeeds or not: the others go
        // on with what the model has, and a backend that is down is not asked by every route.
        if now.saturating_sub(last) >= log.interval_ns
            && log
                .last_read_ns
                .compare_exchange(last, now, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        {
            let _ = self.read_log(log).await;
        }
    }

    /// Learns every entry of the log after the last one learned, in `seq` order. Concurrent
    /// readers in one process are safe: each entry is learned under the state lock, once, by
    /// whichever reader reaches it first.
    async fn read_log(&self, log: &SharedLog) -> Result<(), PluginError> {
        let host = self.host()?;
        // Bounded, so that a log that keeps growing as fast as it is read cannot hold a caller.
        for _ in 0..1_000 {
            let after = self.read().log.read_up_to;
            let page = self
                .log_call(
                    json!({"op": "read_log", "log": log.name, "after": after, "limit": PAGE}),
                    &log.name,
                )
                .await?;
            let first = page["first_seq"].as_u64().unwrap_or(0);
            let last = page["last_seq"].as_u64().unwrap_or(0);
            let entries = page["entries"].as_array().map(Vec::as_slice).unwrap_or_default();
            let mut state = self.write();
            let state = &mut *state;
            // A log only grows, so a page whose newest seq is below the cursor it was asked
            // with (not merely below where a concurrent reader has got to since) means the log
            // started again (a backend that lost its data): read it from its start.
            if last < after && state.log.read_up_to >= after {
                state.log.resets += 1;
                state.log.read_up_to = first.saturating_sub(1);
                state.log.recent.clear();
                // This page was asked from the old cursor: ask again from the new one.
                continue;
            }
            if first > state.log.read_up_to + 1 {
                state.log.missed += first - 1 - state.log.read_up_to;
                state.log.read_up_to = first - 1;
            }
            for item in entries {
                let Some(seq) = item["seq"].as_u64() else { continue };
                if seq <= state.log.read_up_to {
                    continue;
                }
                if seq != state.log.read_up_to + 1 {
                    break;
                }
                match Entry::deserialize(&item["entry"]) {
                    Ok(entry)
                        if entry.similarity.is_finite()
                            && entry.duration_ms.is_none_or(|d| (0.0..=1e12).contains(&d)) =>
                    {
                        let learned = state.model.learn(
                            &entry.agent,
                            &entry.capabilities,
                            &TaskFeatures::from_names(&entry.features),
                            entry.similarity,
                            entry.success,
                            entry.duration_ms,
                        );
                        if state.log.recent.len() == RECENT {
                            state.log.recent.pop_front();
                        }
                        state.log.recent.push_back((seq, learned));
                    }
                    _ => state.log.malformed += 1,
                }
                state.log.read_up_to = seq;
            }
            if state.log.read_up_to >= last || entries.is_empty() {
                log.last_read_ns.store(host.monotonic_ns(), Ordering::Relaxed);
                return Ok(());
            }
        }
        Err(PluginError::unavailable(format!(
            "{NAME}: the shared log `{}` grew faster than it could be read",
            log.name
        )))
    }

    async fn log_call(&self, data: Value, log: &str) -> Result<Value, PluginError> {
        let answer = self
            .host()?
            .call(IntegrationRequest::new("atomic_updates", data))
            .await
            .map_err(|e| {
                PluginError::unavailable(format!(
                    "{NAME}: the shared log `{log}` is unreachable ({e}); is the shared-state plugin registered?"
                ))
            })?;
        if !answer.success {
            return Err(PluginError::unavailable(format!(
                "{NAME}: the shared log `{log}` refused: {}",
                answer.error.unwrap_or_default()
            )));
        }
        Ok(answer.data)
    }
}
