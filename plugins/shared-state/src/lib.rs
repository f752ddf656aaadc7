//! `SharedStatePlugin`: task state, agent load and workflow progress that several orchestrator
//! processes share, in memory or on Redis, plus a durable task queue on Redis Streams. For
//! applications that embed the orchestrator, and for running several of them against one Redis.
//!
//! Everything goes through a [`StateStore`]: [`MemoryStore`] (the default, one process) or
//! [`RedisStore`] (every process using the same Redis and namespace). Every operation is one
//! atomic step on the backend: on Redis, one Lua script or one single command, never a read
//! followed by a write, so two processes racing for the same key cannot both win.
//!
//! # Capabilities
//!
//! **`atomic_updates`**: versioned values with compare-and-set, and shared logs.
//! - `{"op": "get" (default), "key"}` -> `{"key", "value", "version"}` (`null` and 0 when absent)
//! - `{"op": "cas", "key", "expected_version": u64, "value": any}` -> `{"key", "applied", "version",
//!   "value"}`: written only if the version is still `expected_version` (0 creates the key);
//!   on a conflict `applied` is false and `value`/`version` are what is stored now
//! - `{"op": "delete", "key", "expected_version"}` -> `{"key", "applied", "version", "value"}`:
//!   removed only if the version is still `expected_version` (the key is then absent, version 0)
//! - `{"op": "transition", "task_id", "from", "to"}` -> `{"task_id", "applied", "version", "value"}`
//!   for task states: pending -> assigned -> running -> done | failed, with assigned or running ->
//!   pending (handed back) and failed -> pending (retry). An unknown task is pending. A move the
//!   state machine forbids is refused with an error naming both states; a task that is not in
//!   `from` any more gives `applied: false` and its current state. The state is stored under the
//!   key `task/<task_id>`, so `get` reads it; `cas` and `delete` refuse `task/` keys, so that every change of
//!   a task's state keeps to the state machine.
//! - `{"op": "append", "log", "entry": any}` -> `{"log", "seq"}`: adds `entry` to the shared log
//!   `log` (named like a key). `seq` numbers a log's entries 1, 2, 3...: each append takes the
//!   next one atomically, whichever process makes it (two appends at once get distinct,
//!   consecutive seqs), and the log holds its entries in `seq` order. A log keeps its newest
//!   `max_log_entries` entries; older ones are dropped by the append that goes over.
//! - `{"op": "read_log", "log", "after"?: u64 (0), "limit"?: 1 to 1000 (100)}` -> `{"log",
//!   "entries": [{"seq", "entry"}], "first_seq", "last_seq"}`: the entries with a `seq` above
//!   `after`, oldest first, at most `limit`, read in one step with the log's bounds: `first_seq`
//!   is the oldest `seq` still kept (0 when the log is empty), `last_seq` the newest (0 when
//!   nothing was ever appended). Read on with `after` set to the last `seq` seen; when
//!   `after + 1 < first_seq`, the entries in between were dropped before they were read.
//!
//! **`real_time_balancing`**: shared per-agent load counters.
//! - `{"op": "pick" (default), "available_agents"?: [id], "acquire"?: bool}` -> `{"selected_agent",
//!   "load"}`: the least-loaded candidate (the first listed on a tie; without `available_agents`,
//!   every registered agent that is not offline, by id). With `acquire: true` the pick also takes
//!   one unit of load on it, in the same atomic step. No candidate: `success: false`.
//! - `{"op": "acquire" | "release", "agent_id"}` -> `{"agent_id", "load"}`; release never goes
//!   below zero
//! - `{"op": "loads", "available_agents"?}` -> `{"loads": {id: n}}`
//!
//! **`workflow_tracking`**: a workflow's tasks and their progress, and the task queue.
//! - `{"op": "progress" (default), "workflow_id"}` -> `{"workflow_id", "total", "done", "failed",
//!   "running", "assigned", "pending", "complete"}`
//! - `{"op": "define", "workflow_id", "tasks": [task id]}` -> the progress (all pending);
//!   redefining a workflow resets it
//! - `{"op": "update", "workflow_id", "task_id", "state"}` -> the progress plus `"previous"` and
//!   `"completed_now"`; the state machine of `transition` applies (repeating the current state is
//!   allowed). The update that completes a workflow (every task done or failed) emits the custom
//!   event `workflow_completed` `{"workflow_id", "total", "done", "failed"}`: exactly once, even
//!   with several processes updating it.
//! - The durable queue (Redis backend only; see [`TaskQueue`]):
//!   `{"op": "enqueue", "queue", "task": any}` -> `{"id"}`;
//!   `{"op": "take", "queue", "consumer", "count"? (1), "wait_ms"? (0, at most 1000)}` ->
//!   `{"tasks": [{"id", "task", "deliveries"}], "dead_lettered"}`;
//!   `{"op": "ack", "queue", "id"}` -> `{"acked"}`;
//!   `{"op": "dead_letters", "queue", "limit"? (100)}` -> `{"tasks": [{"id", "source_id", "task",
//!   "deliveries", "last_consumer"}]}`; `{"op": "queue_stats", "queue"}` -> `{"length", "pending", "dead"}`.
//!
//! Malformed requests (a missing or mistyped field, an unknown `op`, a key or log name over 512
//! bytes or with control characters, a value or log entry over `max_value_bytes`, a `limit` out of
//! range) are refused with
//! `PluginError::invalid_request`, saying what was expected. While Redis is unreachable, calls fail
//! with an error naming the URL: at once when the connection is refused, after `op_timeout_ms`
//! when the server does not answer. They succeed again when it is back. A call that timed out
//! may still have been applied (a `cas`, a `pick` with `acquire`): read the state back before
//! retrying one that is not idempotent.
//!
//! # Configuration
//!
//! ```toml
//! [SharedStatePlugin]
//! backend = "redis"                  # or "memory" (the default)
//! url = "redis://127.0.0.1:6379"     # required for redis
//! namespace = "orchestrator"         # every Redis key starts with it (default "orchestrator"; no `:`)
//! op_timeout_ms = 1000               # bound on each Redis call (default 1000)
//! max_value_bytes = 1048576          # largest value or log entry accepted, as JSON text (default 1 MiB)
//! max_log_entries = 100000           # each shared log keeps its newest N entries, older ones are
//!                                    # dropped on append (default 100000; at least 1)
//! finished_tasks_kept = 100000       # memory: the last N done or failed task states are kept
//! finished_task_ttl_s = 86400        # redis: a done or failed task state expires after this
//!                                    # (default one day; 0 never expires)
//!
//! [SharedStatePlugin.queue]
//! group = "orchestrator"             # consumer group (default "orchestrator")
//! claim_idle_ms = 30000              # a task silent this long goes to another consumer
//! max_deliveries = 5                 # then to the dead-letter stream
//! ```
//!
//! An unknown key is an error at initialization that names it.
//!
//! # Using the store directly
//!
//! ```
//! use plugin_shared_state::{MemoryStore, StateStore};
//! # plugin_api::testkit::block_on(async {
//! let store = MemoryStore::new();
//! let first = store.compare_and_set("leader", 0, &serde_json::json!("a")).await?;
//! let second = store.compare_and_set("leader", 0, &serde_json::json!("b")).await?;
//! assert!(first.applied && !second.applied);
//! assert_eq!(second.value, "a");
//! # Ok::<(), plugin_shared_state::StoreError>(()) }).unwrap();
//! ```

mod io;
mod memory;
mod queue;
mod redis_store;
mod store;

pub use memory::{DEFAULT_FINISHED_TASKS_KEPT, MemoryStore};
pub use queue::{DeadTask, QueueOptions, QueueStats, QueuedTask, Taken, TaskQueue};
pub use redis_store::{DEFAULT_FINISHED_TASK_TTL, DEFAULT_OP_TIMEOUT, RedisStore};
pub use store::{
    CasOutcome, DEFAULT_MAX_LOG_ENTRIES, DEFAULT_MAX_VALUE_BYTES, LogEntry, LogPage, MAX_KEY_BYTES, MAX_LOG_READ,
    StateStore, StoreError, TaskState, Versioned, WorkflowProgress, WorkflowUpdate,
};

use plugin_api::fields::{self, Object};
use plugin_api::prelude::*;
use serde::Deserialize;
use serde_json::{Value, json};
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// The plugin's name.
pub const NAME: &str = "SharedStatePlugin";

#[derive(Debug, Default, Deserialize, PartialEq, Eq, Clone, Copy)]
#[serde(rename_all = "snake_case")]
enum BackendKind {
    #[default]
    Memory,
    Redis,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct QueueConfig {
    group: Option<String>,
    claim_idle_ms: Option<u64>,
    max_deliveries: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SharedStateConfig {
    #[serde(default)]
    backend: BackendKind,
    url: Option<String>,
    namespace: Option<String>,
    op_timeout_ms: Option<u64>,
    max_value_bytes: Option<usize>,
    max_log_entries: Option<usize>,
    finished_tasks_kept: Option<usize>,
    finished_task_ttl_s: Option<u64>,
    #[serde(default)]
    queue: QueueConfig,
}

struct Shared {
    store: Arc<dyn StateStore>,
    redis: Option<RedisStore>,
    host: HostHandle,
    max_value_bytes: usize,
    max_log_entries: usize,
    queue: QueueOptions,
}

/// Shared task state, load counters, workflow progress and the task queue. Memory by default;
/// configure `backend = "redis"` to share them between processes.
#[derive(Default)]
pub struct SharedStatePlugin {
    preset: Option<Arc<dyn StateStore>>,
    state: RwLock<Option<Arc<Shared>>>,
}

impl std::fmt::Debug for SharedStatePlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedStatePlugin").finish_non_exhaustive()
    }
}

fn store_error(e: StoreError) -> PluginError {
    match e {
        e if e.is_caller_error() => PluginError::invalid_request(e.to_string()),
        e @ StoreError::Unavailable { .. } => PluginError::unavailable(e.to_string()),
        e => PluginError::new(e.to_string()),
    }
}

fn key_field<'a>(data: &'a Object, field: &str, expected: &str) -> Result<&'a str, PluginError> {
    let value = fields::string(data, field, expected)?;
    store::check_key(field, value).map_err(store_error)?;
    Ok(value)
}

fn state_field(data: &Object, field: &str, expected: &str) -> Result<TaskState, PluginError> {
    fields::string(data, field, expected)?.parse().map_err(store_error)
}

fn string_list(data: &Object, field: &str, expected: &str) -> Result<Option<Vec<String>>, PluginError> {
    match data.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| {
                let text = item.as_str().ok_or_else(|| {
                    PluginError::invalid_request(format!("`{field}` must hold strings; expected {expected}"))
                })?;
                store::check_key(field, text).map_err(store_error)?;
                Ok(text.to_owned())
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some),
        Some(_) => Err(PluginError::invalid_request(format!(
            "`{field}` must be a list of strings; expected {expected}"
        ))),
    }
}

/// Refuses `value` (the request's `field`) when its JSON text is over `max_value_bytes`.
fn check_size(field: &str, value: &Value, max_value_bytes: usize) -> Result<(), PluginError> {
    let size = value.to_string().len();
    if size > max_value_bytes {
        return Err(PluginError::invalid_request(format!(
            "`{field}` is {size} bytes of JSON, over the limit of {max_value_bytes} (max_value_bytes)"
        )));
    }
    Ok(())
}

fn to_json<T: serde::Serialize>(value: &T) -> Value {
    serde_json::to_value(value).unwrap_or_else(|e| json!({"error": format!("cannot encode the answer: {e}")}))
}

/// For the `match` over an op that [`fields::op`] has already checked against its list.
fn unknown_op(op: &str, expected: &str) -> PluginError {
    PluginError::invalid_request(format!("unknown op `{op}`; expected {expected}"))
}

impl SharedStatePlugin {
    /// A plugin on a store of your own, used whatever the configuration says about backends:
    /// for sharing one store between a plugin and your own code, or a backend of your own.
    pub fn with_store(store: Arc<dyn StateStore>) -> Self {
        Self {
            preset: Some(store),
            state: RwLock::default(),
        }
    }

    fn shared(&self) -> Result<Arc<Shared>, PluginError> {
        self.state
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(|| PluginError::unavailable("SharedStatePlugin is not initialized"))
    }

    async fn atomic_updates(shared: &Shared, data: &Value) -> Result<Value, PluginError> {
        const EXPECTED: &str = "{\"op\": \"get\", \"key\"} or {\"op\": \"cas\", \"key\", \"expected_version\", \"value\"} or {\"op\": \"delete\", \"key\", \"expected_version\"} or {\"op\": \"transition\", \"task_id\", \"from\", \"to\"} or {\"op\": \"append\", \"log\", \"entry\"} or {\"op\": \"read_log\", \"log\", \"after\"?: u64, \"limit\"?: 1 to 1000}";
        let empty = Object::new();
        let data = fields::object(data, &empty, EXPECTED)?;
        let ops = ["get", "cas", "delete", "transition", "append", "read_log"];
        match fields::op(data, &ops, EXPECTED)? {
            "get" => {
                let key = key_field(data, "key", EXPECTED)?;
                let current = shared.store.get(key).await.map_err(store_error)?;
                Ok(json!({"key": key, "value": current.value, "version": current.version}))
            }
            "cas" => {
                let key = key_field(data, "key", EXPECTED)?;
                if key.starts_with("task/") {
                    return Err(PluginError::invalid_request(format!(
                        "`{key}` holds a task state: change it with {{\"op\": \"transition\"}}, which keeps to the state machine"
                    )));
                }
                let expected_version = fields::opt_u64(data, "expected_version", EXPECTED)?.ok_or_else(|| {
                    PluginError::invalid_request(format!(
                        "missing `expected_version` (0 creates the key); expected {EXPECTED}"
                    ))
                })?;
                let value = data
                    .get("value")
                    .ok_or_else(|| PluginError::invalid_request(format!("missing `value`; expected {EXPECTED}")))?;
                check_size("value", value, shared.max_value_bytes)?;
                let outcome = shared
                    .store
                    .compare_and_set(key, expected_version, value)
                    .await
                    .map_err(store_error)?;
                Ok(json!({"key": key, "applied": outcome.applied, "version": outcome.version, "value": outcome.value}))
            }
            "delete" => {
                let key = key_field(data, "key", EXPECTED)?;
                if key.starts_with("task/") {
                    return Err(PluginError::invalid_request(format!(
                        "`{key}` holds a task state: it moves only with {{\"op\": \"transition\"}} (a deleted state would read as pending)"
                    )));
                }
                let expected_version = fields::opt_u64(data, "expected_version", EXPECTED)?.ok_or_else(|| {
                    PluginError::invalid_request(format!("missing `expected_version`; expected {EXPECTED}"))
                })?;
                let outcome = shared.store.delete(key, expected_version).await.map_err(store_error)?;
                Ok(json!({"key": key, "applied": outcome.applied, "version": outcome.version, "value": outcome.value}))
            }
            "transition" => {
                let task_id = key_field(data, "task_id", EXPECTED)?;
                let from = state_field(data, "from", EXPECTED)?;
                let to = state_field(data, "to", EXPECTED)?;
                if !from.can_become(to) {
                    return Err(store_error(StoreError::IllegalTransition { from, to }));
                }
                let outcome = shared.store.transition(task_id, from, to).await.map_err(store_error)?;
                Ok(
                    json!({"task_id": task_id, "applied": outcome.applied, "version": outcome.version, "value": outcome.value}),
                )
            }
            "append" => {
                let log = key_field(data, "log", EXPECTED)?;
                let entry = data
                    .get("entry")
                    .ok_or_else(|| PluginError::invalid_request(format!("missing `entry`; expected {EXPECTED}")))?;
                check_size("entry", entry, shared.max_value_bytes)?;
                let seq = shared
                    .store
                    .append_log(log, entry, shared.max_log_entries)
                    .await
                    .map_err(store_error)?;
                Ok(json!({"log": log, "seq": seq}))
            }
            "read_log" => {
                let log = key_field(data, "log", EXPECTED)?;
                let after = fields::opt_u64(data, "after", EXPECTED)?.unwrap_or(0);
                let limit = fields::opt_u64(data, "limit", EXPECTED)?.unwrap_or(100);
                let limit = usize::try_from(limit)
                    .ok()
                    .filter(|n| (1..=MAX_LOG_READ).contains(n))
                    .ok_or_else(|| {
                        PluginError::invalid_request(format!(
                            "`limit` must be 1 to {MAX_LOG_READ}, not {limit}; expected {EXPECTED}"
                        ))
                    })?;
                let page = shared.store.read_log(log, after, limit).await.map_err(store_error)?;
                Ok(json!({"log": log, "entries": page.entries, "first_seq": page.first_seq, "last_seq": page.last_seq}))
            }
            other => Err(unknown_op(other, EXPECTED)),
        }
    }

    fn candidates(shared: &Shared, data: &Object, expected: &str) -> Result<Vec<String>, PluginError> {
        Ok(match string_list(data, "available_agents", expected)? {
            Some(agents) => agents,
            None => {
                let mut ids: Vec<String> = shared
                    .host
                    .agent_loads()
                    .into_iter()
                    .filter(|a| a.status != AgentStatus::Offline)
                    .map(|a| a.id.to_string())
                    .collect();
                ids.sort_unstable();
                ids
            }
        })
    }

    async fn real_time_balancing(shared: &Shared, data: &Value) -> Result<IntegrationResponse, PluginError> {
        const EXPECTED: &str = "{\"op\": \"pick\", \"available_agents\"?, \"acquire\"?} or {\"op\": \"acquire\" | \"release\", \"agent_id\"} or {\"op\": \"loads\", \"available_agents\"?}";
        let empty = Object::new();
        let data = fields::object(data, &empty, EXPECTED)?;
        let answer = match fields::op(data, &["pick", "acquire", "release", "loads"], EXPECTED)? {
            "pick" => {
                let acquire = fields::opt_bool(data, "acquire", EXPECTED)?.unwrap_or(false);
                let candidates = Self::candidates(shared, data, EXPECTED)?;
                match shared
                    .store
                    .pick_least_loaded(&candidates, acquire)
                    .await
                    .map_err(store_error)?
                {
                    Some((agent, load)) => json!({"selected_agent": agent, "load": load, "acquired": acquire}),
                    None => {
                        return Ok(IntegrationResponse::failure(
                            "no candidate agent: give `available_agents` or register an agent that is not offline",
                        ));
                    }
                }
            }
            "acquire" => {
                let agent = key_field(data, "agent_id", EXPECTED)?;
                json!({"agent_id": agent, "load": shared.store.acquire(agent).await.map_err(store_error)?})
            }
            "release" => {
                let agent = key_field(data, "agent_id", EXPECTED)?;
                json!({"agent_id": agent, "load": shared.store.release(agent).await.map_err(store_error)?})
            }
            "loads" => {
                let agents = string_list(data, "available_agents", EXPECTED)?;
                json!({"loads": shared.store.loads(agents.as_deref()).await.map_err(store_error)?})
            }
            other => return Err(unknown_op(other, EXPECTED)),
        };
        Ok(IntegrationResponse::ok(answer))
    }

    fn queue(shared: &Shared, data: &Object, expected: &str) -> Result<TaskQueue, PluginError> {
        let name = key_field(data, "queue", expected)?;
        let redis = shared.redis.as_ref().ok_or_else(|| {
            PluginError::invalid_request(
                "the durable task queue needs the Redis backend: configure SharedStatePlugin with backend = \"redis\" and a url",
            )
        })?;
        redis.task_queue(name, shared.queue.clone()).map_err(store_error)
    }

    async fn workflow_tracking(shared: &Shared, data: &Value) -> Result<Value, PluginError> {
        const EXPECTED: &str = "{\"op\": \"progress\", \"workflow_id\"} or {\"op\": \"define\", \"workflow_id\", \"tasks\"} or {\"op\": \"update\", \"workflow_id\", \"task_id\", \"state\"} or a queue op (enqueue, take, ack, dead_letters, queue_stats) with \"queue\"";
        let empty = Object::new();
        let data = fields::object(data, &empty, EXPECTED)?;
        let ops = [
            "progress",
            "define",
            "update",
            "enqueue",
            "take",
            "ack",
            "dead_letters",
            "queue_stats",
        ];
        match fields::op(data, &ops, EXPECTED)? {
            "progress" => {
                let workflow = key_field(data, "workflow_id", EXPECTED)?;
                Ok(to_json(
                    &shared.store.workflow_progress(workflow).await.map_err(store_error)?,
                ))
            }
            "define" => {
                let workflow = key_field(data, "workflow_id", EXPECTED)?;
                let tasks = string_list(data, "tasks", EXPECTED)?
                    .filter(|t| !t.is_empty())
                    .ok_or_else(|| {
                        PluginError::invalid_request(format!(
                            "`tasks` must be a non-empty list of task ids; expected {EXPECTED}"
                        ))
                    })?;
                let mut unique = tasks.clone();
                unique.sort_unstable();
                unique.dedup();
                if unique.len() != tasks.len() {
                    return Err(PluginError::invalid_request("`tasks` lists a task id twice"));
                }
                Ok(to_json(
                    &shared
                        .store
                        .define_workflow(workflow, &tasks)
                        .await
                        .map_err(store_error)?,
                ))
            }
            "update" => {
                let workflow = key_field(data, "workflow_id", EXPECTED)?;
                let task = key_field(data, "task_id", EXPECTED)?;
                let state = state_field(data, "state", EXPECTED)?;
                let update = shared
                    .store
                    .update_workflow(workflow, task, state)
                    .await
                    .map_err(store_error)?;
                if update.completed_now {
                    let p = &update.progress;
                    shared.host.emit(
                        "workflow_completed",
                        json!({"workflow_id": workflow, "total": p.total, "done": p.done, "failed": p.failed}),
                    );
                }
                let mut answer = to_json(&update.progress);
                answer["previous"] = json!(update.previous);
                answer["completed_now"] = json!(update.completed_now);
                Ok(answer)
            }
            "enqueue" => {
                let queue = Self::queue(shared, data, EXPECTED)?;
                let task = data
                    .get("task")
                    .ok_or_else(|| PluginError::invalid_request(format!("missing `task`; expected {EXPECTED}")))?;
                if task.to_string().len() > shared.max_value_bytes {
                    return Err(PluginError::invalid_request("`task` is over max_value_bytes"));
                }
                Ok(json!({"id": queue.enqueue(task).await.map_err(store_error)?}))
            }
            "take" => {
                let queue = Self::queue(shared, data, EXPECTED)?;
                let consumer = key_field(data, "consumer", EXPECTED)?;
                let count = fields::opt_u64(data, "count", EXPECTED)?.unwrap_or(1);
                // Well inside the host's call timeout: a take the host gave up on may still have
                // taken tasks, which would then wait out `claim_idle`.
                let wait_ms = fields::opt_u64(data, "wait_ms", EXPECTED)?.unwrap_or(0).min(1_000);
                let taken = queue
                    .take(
                        consumer,
                        usize::try_from(count).unwrap_or(usize::MAX),
                        Duration::from_millis(wait_ms),
                    )
                    .await
                    .map_err(store_error)?;
                Ok(to_json(&taken))
            }
            "ack" => {
                let queue = Self::queue(shared, data, EXPECTED)?;
                let id = key_field(data, "id", EXPECTED)?;
                Ok(json!({"id": id, "acked": queue.ack(id).await.map_err(store_error)?}))
            }
            "dead_letters" => {
                let queue = Self::queue(shared, data, EXPECTED)?;
                let limit = fields::opt_u64(data, "limit", EXPECTED)?.unwrap_or(100).min(10_000) as usize;
                Ok(json!({"tasks": queue.dead_letters(limit).await.map_err(store_error)?}))
            }
            "queue_stats" => {
                let queue = Self::queue(shared, data, EXPECTED)?;
                Ok(to_json(&queue.stats().await.map_err(store_error)?))
            }
            other => Err(unknown_op(other, EXPECTED)),
        }
    }
}

#[async_trait]
impl OrchestrationPlugin for SharedStatePlugin {
    fn name(&self) -> &str {
        NAME
    }

    fn version(&self) -> &str {
        env!("CARGO_PKG_VERSION")
    }

    fn capabilities(&self) -> Vec<String> {
        vec![
            "atomic_updates".into(),
            "real_time_balancing".into(),
            "workflow_tracking".into(),
        ]
    }

    async fn initialize(&self, host: HostHandle) -> Result<(), PluginError> {
        let config: SharedStateConfig = host.config_as()?;
        let configuration = |message: String| PluginError::new(format!("{NAME} configuration: {message}"));
        let op_timeout = config.op_timeout_ms.map_or(DEFAULT_OP_TIMEOUT, Duration::from_millis);
        let (store, redis): (Arc<dyn StateStore>, Option<RedisStore>) = match (&self.preset, config.backend) {
            (Some(store), _) => (Arc::clone(store), None),
            (None, BackendKind::Memory) => {
                if config.url.is_some() {
                    return Err(configuration("`url` is only used with backend = \"redis\"".into()));
                }
                if config.finished_task_ttl_s.is_some() {
                    return Err(configuration(
                        "`finished_task_ttl_s` is only used with backend = \"redis\" (the memory backend keeps `finished_tasks_kept`)".into(),
                    ));
                }
                let kept = config.finished_tasks_kept.unwrap_or(DEFAULT_FINISHED_TASKS_KEPT);
                (Arc::new(MemoryStore::with_finished_tasks_kept(kept)), None)
            }
            (None, BackendKind::Redis) => {
                let url = config
                    .url
                    .as_deref()
                    .ok_or_else(|| configuration("backend = \"redis\" needs `url` (redis://host:port)".into()))?;
                let namespace = config.namespace.as_deref().unwrap_or("orchestrator");
                if config.finished_tasks_kept.is_some() {
                    return Err(configuration(
                        "`finished_tasks_kept` is only used with backend = \"memory\" (Redis expires finished tasks after `finished_task_ttl_s`)".into(),
                    ));
                }
                let ttl = match config.finished_task_ttl_s {
                    Some(0) => None,
                    Some(s) => Some(Duration::from_secs(s)),
                    None => Some(DEFAULT_FINISHED_TASK_TTL),
                };
                let redis = RedisStore::open_with_timeout(url, namespace, op_timeout)
                    .map_err(|e| configuration(e.to_string()))?
                    .with_finished_task_ttl(ttl);
                (Arc::new(redis.clone()), Some(redis))
            }
        };
        let defaults = QueueOptions::default();
        let queue = QueueOptions {
            group: config.queue.group.unwrap_or(defaults.group),
            claim_idle: config
                .queue
                .claim_idle_ms
                .map_or(defaults.claim_idle, Duration::from_millis),
            max_deliveries: config.queue.max_deliveries.unwrap_or(defaults.max_deliveries),
        };
        if queue.max_deliveries == 0 {
            return Err(configuration("`queue.max_deliveries` must be at least 1".into()));
        }
        let max_log_entries = config.max_log_entries.unwrap_or(DEFAULT_MAX_LOG_ENTRIES);
        if max_log_entries == 0 {
            return Err(configuration(
                "`max_log_entries` must be at least 1 (each shared log keeps its newest N entries)".into(),
            ));
        }
        let shared = Shared {
            store,
            redis,
            host,
            max_value_bytes: config.max_value_bytes.unwrap_or(DEFAULT_MAX_VALUE_BYTES),
            max_log_entries,
            queue,
        };
        *self.state.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(shared));
        Ok(())
    }

    async fn process_request(&self, request: IntegrationRequest) -> Result<IntegrationResponse, PluginError> {
        let shared = self.shared()?;
        let data = &request.data;
        match request.capability.as_str() {
            "atomic_updates" => Self::atomic_updates(&shared, data).await.map(IntegrationResponse::ok),
            "real_time_balancing" => Self::real_time_balancing(&shared, data).await,
            "workflow_tracking" => Self::workflow_tracking(&shared, data)
                .await
                .map(IntegrationResponse::ok),
            other => Err(PluginError::invalid_request(format!(
                "{NAME} does not serve `{other}` (it serves atomic_updates, real_time_balancing, workflow_tracking)"
            ))),
        }
    }

    async fn health_check(&self) -> HealthStatus {
        match self.shared() {
            Err(e) => HealthStatus::unhealthy(e.message),
            Ok(shared) => match &shared.redis {
                None => HealthStatus::healthy(),
                Some(redis) => match redis.ping().await {
                    Ok(()) => HealthStatus::healthy(),
                    Err(e) => HealthStatus::unhealthy(e.to_string()),
                },
            },
        }
    }
}
