//! `ContextManagementPlugin`: idle agents put to sleep and woken on demand, an agent's context
//! consolidated within a budget, and sessions with a time to live. For applications that embed
//! the orchestrator (statically, or as a dynamic library built from this crate).
//!
//! Everything here runs on the host's clock ([`HostHandle::now_unix_ms`]), so a test built with
//! `OrchestratorBuilder::clock(ManualClock)` moves time forward instead of sleeping.
//!
//! # Capabilities
//!
//! **`sleep_wake_cycles`**: agents idle for `idle_sleep_ms` are put to `sleeping` through the
//! host; work for a sleeping agent wakes it. Only inbound work counts as activity: a `wake` or
//! `activity` call, a session created or touched for the agent, context appended for it, the
//! agent becoming `busy` or `active` (the host wakes a sleeping agent when a task starts), or
//! tasks running on it when a sweep looks; its registration starts the count. Reading its status
//! does not. Until the host reports every task's start (the monitoring feeds), a task that runs
//! between two sweeps without changing the agent's status is not seen.
//! - `{"op": "sweep"}` -> `{"slept": [id], "checked"}`: every `active` agent with no load
//!   that has been idle long enough goes to sleep (its context consolidated on the way); an agent
//!   found running tasks counts as working. The sweep visits only agents idle long enough
//!   (`checked`), not the whole fleet. The plugin also sweeps by itself every
//!   `sweep_interval_ms` (on the host's timer).
//! - `{"op": "sleep" (default), "agent_id"}` -> `{"agent_id", "status": "sleeping", "previous",
//!   "consolidated"?: {"kept", "merged", "dropped"}}`
//! - `{"op": "wake" | "activity", "agent_id"}` -> `{"agent_id", "status", "previous", "woke"}`:
//!   records activity and wakes the agent if it sleeps (`activity` is what an executor calls when
//!   work arrives; `wake` the same, by name)
//! - `{"op": "status", "agent_id"}` -> `{"agent_id", "status", "idle_ms", "sleeps_in_ms"}`
//!
//! **`context_consolidation`**: an agent's context, kept here, consolidated within a budget (see
//! the `consolidate` module for the method: MinHash near-duplicate merging, then importance and
//! recency).
//! - `{"op": "consolidate" (default), "agent_id", "entries"?: [{"text", "importance"? (0..1,
//!   default 0.5), "timestamp"? (ms)}], "budget"?: {"entries"?, "tokens"?}}` -> `{"agent_id",
//!   "kept": [{"text", "importance", "timestamp", "merged_count"}], "merged": [{"into", "text",
//!   "similarity"}], "dropped": [{"text", "importance", "reason"}], "tokens"}`: the given entries
//!   are added to the agent's context first, and the consolidated context replaces it.
//! - `{"op": "append", "agent_id", "entries"}` -> `{"agent_id", "entries": n}` (past
//!   `max_stored_entries` the context is consolidated to the default budget)
//! - `{"op": "get", "agent_id"}` -> `{"agent_id", "entries": [..]}`; `{"op": "clear", "agent_id"}`
//!
//! **`session_management`**: sessions with an id, an agent, a TTL and key-value state, in the
//! shared-state plugin's `atomic_updates` when it is present (so that sessions on Redis outlive
//! this process and are seen by every process), in memory otherwise (see the `sessions` module).
//! - `{"op": "create" (default), "agent_id", "ttl_s"?, "state"?: {}}` -> the session: `{"session_id",
//!   "agent_id", "state", "created_at", "expires_at" (ms), "ttl_s", "store": "memory" | "shared"}`
//! - `{"op": "get", "session_id"}`, `{"op": "set", "session_id", "key", "value"}`, `{"op": "touch",
//!   "session_id", "ttl_s"?}` (expiry moved to now + TTL) -> the session; `{"op": "end",
//!   "session_id"}` -> the session as it was, with `"ended": true`. A session past its expiry is refused by all
//!   of them, whether or not a sweep has run.
//! - `{"op": "sweep"}` -> `{"removed": [session ids]}`
//!
//! Malformed requests (a missing or mistyped field, an unknown `op`, an unknown agent or session)
//! are refused with `PluginError::invalid_request`, saying what was expected.
//!
//! # Configuration
//!
//! ```toml
//! [ContextManagementPlugin]
//! idle_sleep_ms = 300000          # idle this long -> sleeping (default 5 minutes)
//! sweep_interval_ms = 10000       # the plugin's own sweep (0: only on request)
//! session_ttl_s = 3600            # default session TTL
//! max_sessions = 100000           # sessions held in memory at most
//! session_store = "auto"          # "auto" (shared when atomic_updates is served), "memory", "shared"
//! max_stored_entries = 1000       # context entries kept per agent before an automatic consolidation
//!
//! [ContextManagementPlugin.consolidation]
//! similarity_threshold = 0.8      # estimated Jaccard similarity at which entries merge
//! shingle_words = 3               # words per shingle
//! recency_weight = 0.25           # weight of recency beside importance
//! budget_entries = 50             # default budget
//! budget_tokens = 2000            # default token budget (absent: entries only)
//! ```
//!
//! Unknown keys are refused at initialization, naming the key.
//!
//! [`HostHandle::now_unix_ms`]: plugin_api::HostHandle::now_unix_ms

mod consolidate;
mod idle;
mod sessions;

use consolidate::{Budget, Entry, Policy};
use idle::IdleIndex;
use plugin_api::fields::{self, Object};
use plugin_api::prelude::*;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use sessions::{Session, Sessions, StoreChoice};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, Weak};
use std::time::Duration;

/// The plugin's name.
pub const NAME: &str = "ContextManagementPlugin";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct ConsolidationConfig {
    similarity_threshold: f64,
    shingle_words: usize,
    recency_weight: f64,
    budget_entries: usize,
    budget_tokens: Option<usize>,
}

impl Default for ConsolidationConfig {
    fn default() -> Self {
        Self {
            similarity_threshold: 0.8,
            shingle_words: 3,
            recency_weight: 0.25,
            budget_entries: 50,
            budget_tokens: None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct ContextConfig {
    idle_sleep_ms: u64,
    sweep_interval_ms: u64,
    session_ttl_s: u64,
    max_sessions: usize,
    session_store: StoreChoice,
    max_stored_entries: usize,
    consolidation: ConsolidationConfig,
}

impl Default for ContextConfig {
    fn default() -> Self {
        Self {
            idle_sleep_ms: 300_000,
            sweep_interval_ms: 10_000,
            session_ttl_s: 3_600,
            max_sessions: 100_000,
            session_store: StoreChoice::Auto,
            max_stored_entries: 1_000,
            consolidation: ConsolidationConfig::default(),
        }
    }
}

struct State {
    host: HostHandle,
    config: ContextConfig,
    policy: Policy,
    /// Last inbound work per agent (host ms).
    activity: Mutex<IdleIndex>,
    /// Each agent's context behind its own lock, so that consolidating one agent's context
    /// never holds up another's.
    contexts: Mutex<HashMap<String, Arc<Mutex<Vec<Entry>>>>>,
    sessions: Sessions,
    next_session: AtomicU64,
    stopped: AtomicBool,
    started_at: u64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Sleep and wake, context consolidation and sessions. Configure it before `initialize`.
#[derive(Default)]
pub struct ContextManagementPlugin {
    state: RwLock<Option<Arc<State>>>,
}

impl std::fmt::Debug for ContextManagementPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContextManagementPlugin").finish_non_exhaustive()
    }
}

/// For the `match` over an op that [`fields::op`] has already checked against its list.
fn unknown_op(op: &str, expected: &str) -> PluginError {
    PluginError::invalid_request(format!("unknown op `{op}`; expected {expected}"))
}

impl State {
    fn now(&self) -> u64 {
        self.host.now_unix_ms()
    }

    fn registered(&self, agent_id: &str) -> Result<AgentInfo, PluginError> {
        self.host
            .agent(agent_id)
            .ok_or_else(|| PluginError::invalid_request(format!("no agent `{agent_id}` is registered")))
    }

    fn record_activity(&self, agent_id: &str) {
        let now = self.now();
        lock(&self.activity).touch(agent_id, now);
    }

    /// When the agent last had work: its last activity, else when this plugin heard of it,
    /// else when the plugin started. Reading never counts as activity.
    fn last_activity(&self, agent_id: &str) -> u64 {
        lock(&self.activity).last(agent_id).unwrap_or(self.started_at)
    }

    fn default_budget(&self) -> Budget {
        Budget {
            entries: self.config.consolidation.budget_entries,
            tokens: self.config.consolidation.budget_tokens,
        }
    }

    /// Consolidates the agent's stored context to `budget`, replacing it.
    fn context(&self, agent_id: &str) -> Arc<Mutex<Vec<Entry>>> {
        Arc::clone(lock(&self.contexts).entry(agent_id.to_owned()).or_default())
    }

    fn consolidate_stored(&self, agent_id: &str, extra: Vec<Entry>, budget: Budget) -> consolidate::Outcome {
        let context = self.context(agent_id);
        let mut stored = lock(&context);
        let mut entries = std::mem::take(&mut *stored);
        entries.extend(extra);
        let outcome = consolidate::consolidate(entries, budget, &self.policy);
        stored.clone_from(&outcome.kept);
        outcome
    }

    /// Puts an agent to sleep, consolidating its context on the way.
    fn put_to_sleep(&self, agent: &AgentInfo) -> Result<Value, PluginError> {
        self.host.set_agent_status(&agent.id, AgentStatus::Sleeping)?;
        let context = lock(&self.contexts).get(&agent.id).cloned();
        let consolidated = context.filter(|c| !lock(c).is_empty()).map(|_| {
            let outcome = self.consolidate_stored(&agent.id, Vec::new(), self.default_budget());
            json!({"kept": outcome.kept.len(), "merged": outcome.merged.len(), "dropped": outcome.dropped.len()})
        });
        let mut answer = json!({"agent_id": agent.id, "status": "sleeping", "previous": agent.status});
        if let Some(c) = consolidated {
            answer["consolidated"] = c;
        }
        Ok(answer)
    }

    /// Puts to sleep every active agent without load whose last work is `idle_sleep_ms` old,
    /// visiting only those (see the `idle` module).
    fn sweep_agents(&self) -> Value {
        let now = self.now();
        let cutoff = now.saturating_sub(self.config.idle_sleep_ms);
        let candidates = lock(&self.activity).idle_since(cutoff);
        let mut slept = Vec::new();
        for id in &candidates {
            match self.host.agent(id) {
                Some(info) if info.status == AgentStatus::Active && info.load == 0 => {
                    let stamp = lock(&self.activity).last(id);
                    if stamp.is_none_or(|t| t > cutoff) {
                        continue; // work arrived since the candidates were listed
                    }
                    if self.put_to_sleep(&info).is_err() {
                        continue;
                    }
                    let mut activity = lock(&self.activity);
                    if activity.last(id) == stamp {
                        activity.remove(id);
                        slept.push(info.id);
                    } else {
                        // Work arrived while it was going to sleep: it stays awake.
                        drop(activity);
                        let _ = self.host.set_agent_status(id, AgentStatus::Active);
                    }
                }
                // Running tasks is work.
                Some(info) if info.status == AgentStatus::Active || info.status == AgentStatus::Busy => {
                    self.record_activity(id);
                }
                // Gone, asleep or offline: out of the index until work brings it back.
                _ => lock(&self.activity).remove(id),
            }
        }
        slept.sort_unstable();
        json!({"slept": slept, "checked": candidates.len()})
    }

    fn wake(&self, agent_id: &str) -> Result<Value, PluginError> {
        let agent = self.registered(agent_id)?;
        self.record_activity(agent_id);
        let woke = agent.status == AgentStatus::Sleeping;
        if woke {
            self.host.set_agent_status(agent_id, AgentStatus::Active)?;
        }
        let status = if woke { AgentStatus::Active } else { agent.status };
        Ok(json!({"agent_id": agent_id, "status": status, "previous": agent.status, "woke": woke}))
    }

    fn sleep_wake_cycles(&self, data: &Value) -> Result<Value, PluginError> {
        const EXPECTED: &str =
            "{\"op\": \"sleep\" | \"wake\" | \"activity\" | \"status\", \"agent_id\"} or {\"op\": \"sweep\"}";
        let empty = Object::new();
        let data = fields::object(data, &empty, EXPECTED)?;
        match fields::op(data, &["sleep", "wake", "activity", "status", "sweep"], EXPECTED)? {
            "sweep" => Ok(self.sweep_agents()),
            "sleep" => {
                let agent = self.registered(fields::string(data, "agent_id", EXPECTED)?)?;
                if agent.status == AgentStatus::Offline {
                    return Err(PluginError::invalid_request(format!(
                        "agent `{}` is offline: only an active or busy agent can be put to sleep",
                        agent.id
                    )));
                }
                self.put_to_sleep(&agent)
            }
            "wake" | "activity" => self.wake(fields::string(data, "agent_id", EXPECTED)?),
            "status" => {
                let agent = self.registered(fields::string(data, "agent_id", EXPECTED)?)?;
                let idle = self.now().saturating_sub(self.last_activity(&agent.id));
                Ok(json!({
                    "agent_id": agent.id,
                    "status": agent.status,
                    "idle_ms": idle,
                    "sleeps_in_ms": self.config.idle_sleep_ms.saturating_sub(idle),
                }))
            }
            other => Err(unknown_op(other, EXPECTED)),
        }
    }

    fn entries(&self, data: &Object, expected: &str) -> Result<Vec<Entry>, PluginError> {
        let now = self.now();
        match data.get("entries") {
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(Value::Array(items)) if items.len() > self.config.max_stored_entries => {
                Err(PluginError::invalid_request(format!(
                    "{} entries in one request, over max_stored_entries ({}): send them in parts",
                    items.len(),
                    self.config.max_stored_entries
                )))
            }
            Some(Value::Array(items)) => items
                .iter()
                .map(|item| {
                    let mut entry: Entry = serde_json::from_value(item.clone()).map_err(|e| {
                        PluginError::invalid_request(format!("bad entry {item}: {e}; expected {expected}"))
                    })?;
                    if !(0.0..=1.0).contains(&entry.importance) {
                        return Err(PluginError::invalid_request(format!(
                            "`importance` must be within 0..1 (got {})",
                            entry.importance
                        )));
                    }
                    entry.timestamp.get_or_insert(now);
                    entry.merged_count = 1;
                    Ok(entry)
                })
                .collect(),
            Some(_) => Err(PluginError::invalid_request(format!(
                "`entries` must be a list; expected {expected}"
            ))),
        }
    }

    fn context_consolidation(&self, data: &Value) -> Result<Value, PluginError> {
        const EXPECTED: &str = "{\"op\": \"consolidate\", \"agent_id\", \"entries\"?: [{\"text\", \"importance\"?, \"timestamp\"?}], \"budget\"?: {\"entries\"?, \"tokens\"?}} or {\"op\": \"append\" | \"get\" | \"clear\", \"agent_id\"}";
        let empty = Object::new();
        let data = fields::object(data, &empty, EXPECTED)?;
        let op = fields::op(data, &["consolidate", "append", "get", "clear"], EXPECTED)?;
        let agent_id = fields::string(data, "agent_id", EXPECTED)?;
        if op != "get" && op != "clear" {
            self.registered(agent_id)?;
        }
        match op {
            "consolidate" => {
                let entries = self.entries(data, EXPECTED)?;
                let mut budget = self.default_budget();
                match data.get("budget") {
                    None | Some(Value::Null) => {}
                    Some(Value::Number(n)) => {
                        let n = n.as_u64().ok_or_else(|| {
                            PluginError::invalid_request(format!(
                                "`budget` must be a positive integer (entries) or an object; expected {EXPECTED}"
                            ))
                        })?;
                        budget.entries = usize::try_from(n).unwrap_or(usize::MAX);
                    }
                    Some(Value::Object(b)) => {
                        if let Some(n) = fields::opt_u64(b, "entries", EXPECTED)? {
                            budget.entries = usize::try_from(n).unwrap_or(usize::MAX);
                        }
                        if let Some(n) = fields::opt_u64(b, "tokens", EXPECTED)? {
                            budget.tokens = Some(usize::try_from(n).unwrap_or(usize::MAX));
                        }
                    }
                    Some(_) => {
                        return Err(PluginError::invalid_request(format!(
                            "`budget` must be an object; expected {EXPECTED}"
                        )));
                    }
                }
                if budget.entries == 0 || budget.tokens == Some(0) {
                    return Err(PluginError::invalid_request(
                        "a budget of 0 would drop the whole context: give at least 1 entry and 1 token (`clear` empties it)",
                    ));
                }
                if !entries.is_empty() {
                    self.record_activity(agent_id);
                }
                let outcome = self.consolidate_stored(agent_id, entries, budget);
                let mut answer = serde_json::to_value(&outcome).unwrap_or_default();
                answer["agent_id"] = json!(agent_id);
                Ok(answer)
            }
            "append" => {
                let entries = self.entries(data, EXPECTED)?;
                if entries.is_empty() {
                    return Err(PluginError::invalid_request(format!(
                        "`entries` must not be empty; expected {EXPECTED}"
                    )));
                }
                self.record_activity(agent_id);
                let stored = {
                    let context = self.context(agent_id);
                    let mut stored = lock(&context);
                    stored.extend(entries);
                    stored.len()
                };
                let stored = if stored > self.config.max_stored_entries {
                    self.consolidate_stored(agent_id, Vec::new(), self.default_budget())
                        .kept
                        .len()
                } else {
                    stored
                };
                Ok(json!({"agent_id": agent_id, "entries": stored}))
            }
            "get" => Ok(
                json!({"agent_id": agent_id, "entries": lock(&self.contexts).get(agent_id).map(|c| lock(c).clone()).unwrap_or_default()}),
            ),
            "clear" => {
                let removed = lock(&self.contexts).remove(agent_id).map_or(0, |c| lock(&c).len());
                Ok(json!({"agent_id": agent_id, "cleared": removed}))
            }
            other => Err(unknown_op(other, EXPECTED)),
        }
    }

    fn new_session_id(&self) -> String {
        // Unique, not secret: a session id names a session, it does not authorize anything.
        let n = self.next_session.fetch_add(1, Ordering::Relaxed);
        let seed = self.host.monotonic_ns() ^ (self as *const Self as u64).rotate_left(32) ^ self.host.now_unix_ms();
        format!("sess-{:016x}{:08x}", splitmix(seed ^ n), n)
    }

    async fn session_management(&self, data: &Value) -> Result<Value, PluginError> {
        const EXPECTED: &str = "{\"op\": \"create\", \"agent_id\", \"ttl_s\"?, \"state\"?} or {\"op\": \"get\" | \"touch\" | \"end\", \"session_id\"} or {\"op\": \"set\", \"session_id\", \"key\", \"value\"} or {\"op\": \"sweep\"}";
        let host = &self.host;
        let now = self.now();
        let to_json = |s: Session| {
            let mut answer = serde_json::to_value(s).unwrap_or_default();
            answer["store"] = json!(self.sessions.store_name());
            answer
        };
        let empty = Object::new();
        let data = fields::object(data, &empty, EXPECTED)?;
        match fields::op(data, &["create", "get", "set", "touch", "end", "sweep"], EXPECTED)? {
            "create" => {
                let agent = self.registered(fields::string(data, "agent_id", EXPECTED)?)?;
                let ttl_s = fields::opt_u64(data, "ttl_s", EXPECTED)?.unwrap_or(self.config.session_ttl_s);
                if ttl_s == 0 {
                    return Err(PluginError::invalid_request("`ttl_s` must be at least 1"));
                }
                let state = match data.get("state") {
                    None | Some(Value::Null) => Map::new(),
                    Some(Value::Object(m)) => m.clone(),
                    Some(_) => {
                        return Err(PluginError::invalid_request(format!(
                            "`state` must be an object; expected {EXPECTED}"
                        )));
                    }
                };
                if self.sessions.in_memory() >= self.config.max_sessions {
                    self.sessions.sweep(host, now).await?;
                    if self.sessions.in_memory() >= self.config.max_sessions {
                        return Err(PluginError::unavailable(format!(
                            "{} sessions are open (max_sessions); end some or raise the limit",
                            self.config.max_sessions
                        )));
                    }
                }
                self.record_activity(&agent.id);
                let session = Session {
                    session_id: self.new_session_id(),
                    agent_id: agent.id,
                    state,
                    created_at: now,
                    expires_at: now.saturating_add(ttl_s.saturating_mul(1000)),
                    ttl_s,
                };
                Ok(to_json(self.sessions.create(host, session).await?))
            }
            "get" => Ok(to_json(
                self.sessions
                    .get(host, fields::string(data, "session_id", EXPECTED)?, now)
                    .await?,
            )),
            "set" => {
                let id = fields::string(data, "session_id", EXPECTED)?;
                let key = fields::string(data, "key", EXPECTED)?.to_owned();
                let value = data
                    .get("value")
                    .cloned()
                    .ok_or_else(|| PluginError::invalid_request(format!("missing `value`; expected {EXPECTED}")))?;
                let session = self
                    .sessions
                    .update(host, id, now, |s| {
                        s.state.insert(key.clone(), value.clone());
                    })
                    .await?;
                Ok(to_json(session))
            }
            "touch" => {
                let id = fields::string(data, "session_id", EXPECTED)?;
                let ttl = fields::opt_u64(data, "ttl_s", EXPECTED)?;
                if ttl == Some(0) {
                    return Err(PluginError::invalid_request("`ttl_s` must be at least 1"));
                }
                let session = self
                    .sessions
                    .update(host, id, now, |s| {
                        s.ttl_s = ttl.unwrap_or(s.ttl_s);
                        s.expires_at = now.saturating_add(s.ttl_s.saturating_mul(1000));
                    })
                    .await?;
                self.record_activity(&session.agent_id);
                Ok(to_json(session))
            }
            "end" => {
                let id = fields::string(data, "session_id", EXPECTED)?;
                let mut answer = to_json(self.sessions.end(host, id, now).await?);
                answer["ended"] = json!(true);
                Ok(answer)
            }
            "sweep" => Ok(json!({"removed": self.sessions.sweep(host, now).await?})),
            other => Err(unknown_op(other, EXPECTED)),
        }
    }
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// The plugin's own sweep, every `interval` on the host's timer, until the plugin shuts down or
/// is dropped.
fn start_sweeping(state: &Arc<State>, interval: Duration) {
    let weak: Weak<State> = Arc::downgrade(state);
    let host = state.host.clone();
    state.host.spawn(async move {
        loop {
            host.sleep(interval).await;
            match weak.upgrade() {
                Some(state) if !state.stopped.load(Ordering::Acquire) => {
                    state.sweep_agents();
                    let now = state.now();
                    let _ = state.sessions.sweep(&state.host, now).await;
                }
                _ => break,
            }
        }
    });
}

impl ContextManagementPlugin {
    fn state(&self) -> Result<Arc<State>, PluginError> {
        self.state
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(|| PluginError::unavailable("ContextManagementPlugin is not initialized"))
    }
}

#[async_trait]
impl OrchestrationPlugin for ContextManagementPlugin {
    fn name(&self) -> &str {
        NAME
    }

    fn version(&self) -> &str {
        env!("CARGO_PKG_VERSION")
    }

    fn capabilities(&self) -> Vec<String> {
        vec![
            "sleep_wake_cycles".into(),
            "context_consolidation".into(),
            "session_management".into(),
        ]
    }

    async fn initialize(&self, host: HostHandle) -> Result<(), PluginError> {
        let config: ContextConfig = host.config_as()?;
        let c = &config.consolidation;
        let problem = if !(0.0..=1.0).contains(&c.similarity_threshold) || c.similarity_threshold == 0.0 {
            Some("`consolidation.similarity_threshold` must be within (0, 1]")
        } else if c.shingle_words == 0 || c.shingle_words > 16 {
            Some("`consolidation.shingle_words` must be 1 to 16")
        } else if !(0.0..=10.0).contains(&c.recency_weight) {
            Some("`consolidation.recency_weight` must be within 0..10")
        } else if c.budget_entries == 0 {
            Some("`consolidation.budget_entries` must be at least 1")
        } else if config.session_ttl_s == 0 {
            Some("`session_ttl_s` must be at least 1")
        } else {
            None
        };
        if let Some(problem) = problem {
            return Err(PluginError::new(format!("{NAME} configuration: {problem}")));
        }
        let policy = Policy {
            similarity_threshold: c.similarity_threshold,
            shingle_words: c.shingle_words,
            recency_weight: c.recency_weight,
        };
        let now = host.now_unix_ms();
        let mut activity = IdleIndex::default();
        for agent in host.agent_loads() {
            activity.touch(&agent.id, now);
        }
        let state = Arc::new(State {
            sessions: Sessions::new(config.session_store),
            host,
            policy,
            activity: Mutex::new(activity),
            contexts: Mutex::default(),
            next_session: AtomicU64::new(0),
            stopped: AtomicBool::new(false),
            started_at: now,
            config,
        });
        if state.config.sweep_interval_ms > 0 {
            start_sweeping(&state, Duration::from_millis(state.config.sweep_interval_ms));
        }
        let previous = self.state.write().unwrap_or_else(|p| p.into_inner()).replace(state);
        if let Some(previous) = previous {
            previous.stopped.store(true, Ordering::Release);
        }
        Ok(())
    }

    async fn process_request(&self, request: IntegrationRequest) -> Result<IntegrationResponse, PluginError> {
        let state = self.state()?;
        let data = &request.data;
        let answer = match request.capability.as_str() {
            "sleep_wake_cycles" => state.sleep_wake_cycles(data)?,
            "context_consolidation" => state.context_consolidation(data)?,
            "session_management" => state.session_management(data).await?,
            other => {
                return Err(PluginError::invalid_request(format!(
                    "{NAME} does not serve `{other}` (it serves sleep_wake_cycles, context_consolidation, session_management)"
                )));
            }
        };
        Ok(IntegrationResponse::ok(answer))
    }

    async fn on_event(&self, event: &OrchestratorEvent) {
        let Ok(state) = self.state() else { return };
        match event {
            OrchestratorEvent::AgentRegistered { agent_id } => state.record_activity(agent_id),
            OrchestratorEvent::AgentDeregistered { agent_id } => {
                lock(&state.activity).remove(agent_id);
                lock(&state.contexts).remove(agent_id);
            }
            // Woken for a task (the host wakes a sleeping agent when a task starts) or working.
            OrchestratorEvent::AgentStatusChanged {
                agent_id,
                to: AgentStatus::Busy | AgentStatus::Active,
                ..
            } => state.record_activity(agent_id),
            _ => {}
        }
    }

    async fn health_check(&self) -> HealthStatus {
        match self.state() {
            Err(e) => HealthStatus::unhealthy(e.message),
            Ok(_) => HealthStatus::healthy(),
        }
    }

    async fn shutdown(&self) {
        if let Ok(state) = self.state() {
            state.stopped.store(true, Ordering::Release);
        }
    }
}
