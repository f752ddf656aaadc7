//! The Redis backend: shared state for every process that points at one Redis and namespace.
//!
//! Every operation that reads and writes is one Lua script, run with EVALSHA (the `redis`
//! crate's `Script` sends the body again when the server's script cache was emptied, by a
//! restart or `SCRIPT FLUSH`). Nothing reads a value into this process and writes it back, and
//! nothing uses WATCH/MULTI, which would be unsound on the one multiplexed connection that every
//! call shares. The connection is a [`ConnectionManager`]: when Redis goes away, calls fail
//! fast with an error naming the URL, and the manager reconnects on the next call once Redis is
//! back, without restarting anything.
//!
//! Keys, all under the namespace `ns`:
//!
//! | key | type | holds |
//! | --- | --- | --- |
//! | `ns:kv:<key>` | hash `v`, `d` | a versioned value: version and JSON text |
//! | `ns:kv:task/<id>` | the same | a task's state, as a JSON string |
//! | `ns:load` | hash | agent id -> load |
//! | `ns:wf:<id>` | hash | task id -> state, one per workflow |
//! | `ns:queue:<name>`, `ns:queue:<name>:dead` | streams | the task queue and its dead letters |
//! | `ns:log:<name>` | list | a shared log's newest entries, oldest first, each `<seq> <JSON>` |
//! | `ns:logseq:<name>` | string | the last `seq` handed out in that log |

use crate::io::IoRuntime;
use crate::queue::{QueueOptions, TaskQueue};
use crate::store::{
    CasOutcome, LogEntry, LogPage, StateStore, StoreError, TaskState, Versioned, WorkflowProgress, WorkflowUpdate,
};
use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{FromRedisValue, RedisError, Script};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

/// How long one Redis call may take before it fails as unavailable, by default: well inside the
/// host's default call timeout (2 s), so that the caller sees this error, which names the URL,
/// rather than the host's generic timeout.
pub const DEFAULT_OP_TIMEOUT: Duration = Duration::from_secs(1);

static CAS: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local cur = redis.call('HMGET', KEYS[1], 'v', 'd')
local v = tonumber(cur[1]) or 0
if v ~= tonumber(ARGV[1]) then
  return {0, v, cur[2] or 'null'}
end
v = v + 1
redis.call('HSET', KEYS[1], 'v', v, 'd', ARGV[2])
return {1, v, ARGV[2]}
",
    )
});

static DELETE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local cur = redis.call('HMGET', KEYS[1], 'v', 'd')
local v = tonumber(cur[1]) or 0
if v ~= tonumber(ARGV[1]) then
  return {0, v, cur[2] or 'null'}
end
redis.call('DEL', KEYS[1])
return {1, 0, 'null'}
",
    )
});

static TRANSITION: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local cur = redis.call('HMGET', KEYS[1], 'v', 'd')
local v = tonumber(cur[1]) or 0
local d = cur[2]
if (not d and ARGV[3] == '1') or d == ARGV[1] then
  v = v + 1
  redis.call('HSET', KEYS[1], 'v', v, 'd', ARGV[2])
  if ARGV[4] ~= '0' and (ARGV[2] == '"done"' or ARGV[2] == '"failed"') then
    redis.call('PEXPIRE', KEYS[1], ARGV[4])
  else
    redis.call('PERSIST', KEYS[1])
  end
  return {1, v, ARGV[2]}
end
return {0, v, d or 'null'}
"#,
    )
});

static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local n = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
if n <= 0 then return 0 end
return redis.call('HINCRBY', KEYS[1], ARGV[1], -1)
",
    )
});

static PICK: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local best, best_load = nil, nil
for i = 2, #ARGV do
  local n = tonumber(redis.call('HGET', KEYS[1], ARGV[i]) or '0')
  if best_load == nil or n < best_load then best, best_load = ARGV[i], n end
end
if best == nil then return false end
if ARGV[1] == '1' then best_load = redis.call('HINCRBY', KEYS[1], best, 1) end
return {best, best_load}
",
    )
});

static DEFINE_WORKFLOW: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
redis.call('DEL', KEYS[1])
for i = 1, #ARGV do redis.call('HSET', KEYS[1], ARGV[i], 'pending') end
return #ARGV
",
    )
});

static UPDATE_WORKFLOW: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if not cur then
  if redis.call('EXISTS', KEYS[1]) == 0 then return {'no_workflow'} end
  return {'no_task'}
end
local allowed = (cur == ARGV[2])
for i = 3, #ARGV do if ARGV[i] == cur then allowed = true end end
if not allowed then return {'illegal', cur} end
local function complete()
  for _, s in ipairs(redis.call('HVALS', KEYS[1])) do
    if s ~= 'done' and s ~= 'failed' then return false end
  end
  return true
end
local before = complete() and '1' or '0'
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
local out = {'ok', cur, before}
for _, s in ipairs(redis.call('HVALS', KEYS[1])) do table.insert(out, s) end
return out
",
    )
});

/// Appends to a shared log: KEYS[1] the list, KEYS[2] its counter; ARGV[1] the entry's JSON,
/// ARGV[2] the negated number of entries to keep (the LTRIM start). `%d`: a plain concatenation
/// would write large numbers as `1e+15`.
static APPEND_LOG: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local seq = redis.call('INCR', KEYS[2])
redis.call('RPUSH', KEYS[1], string.format('%d', seq) .. ' ' .. ARGV[1])
redis.call('LTRIM', KEYS[1], ARGV[2], -1)
return seq
",
    )
});

/// Reads a shared log: KEYS as for `APPEND_LOG`; ARGV[1] `after`, ARGV[2] `limit`. The list
/// holds the consecutive seqs `last - len + 1 ..= last`, so the entry after `after` is at index
/// `after + 1 - first`. Returns `{first, last, {entry...}}`.
static READ_LOG: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local last = tonumber(redis.call('GET', KEYS[2]) or '0')
if not last then return redis.error_reply('the sequence counter of a shared log is not a number') end
local len = redis.call('LLEN', KEYS[1])
local first = 0
if len > 0 then first = last - len + 1 end
local start = tonumber(ARGV[1]) + 1 - first
if start < 0 then start = 0 end
local limit = tonumber(ARGV[2])
local out = {}
if len > 0 and limit > 0 and start < len then
  local stop = start + limit - 1
  if stop >= len then stop = len - 1 end
  out = redis.call('LRANGE', KEYS[1], start, stop)
end
return {first, last, out}
",
    )
});

/// The URL with any password replaced by `***`, for messages.
pub(crate) fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme + 3 => format!("{}***{}", &url[..scheme + 3], &url[at..]),
        _ => url.to_owned(),
    }
}

/// What the store's calls share: the runtime, the connection, the names.
pub(crate) struct RedisShared {
    /// How long a finished task's state is kept (milliseconds; 0: for ever).
    pub(crate) finished_task_ttl_ms: u64,
    pub(crate) io: IoRuntime,
    pub(crate) connection: ConnectionManager,
    pub(crate) url: String,
    pub(crate) namespace: String,
    pub(crate) op_timeout: Duration,
}

impl RedisShared {
    pub(crate) fn key(&self, kind: &str, name: &str) -> String {
        format!("{}:{kind}:{name}", self.namespace)
    }

    pub(crate) fn load_key(&self) -> String {
        format!("{}:load", self.namespace)
    }

    pub(crate) fn error(&self, e: RedisError) -> StoreError {
        classify(&self.url, e)
    }

    /// Runs `call` with a clone of the connection on the I/O runtime, mapping Redis errors.
    pub(crate) async fn call<T, F, Fut>(self: &Arc<Self>, call: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(ConnectionManager, Arc<RedisShared>) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<T, StoreError>> + Send + 'static,
    {
        let shared = Arc::clone(self);
        let connection = self.connection.clone();
        self.io
            .run(self.op_timeout, || self.url.clone(), call(connection, shared))
            .await
    }
}

pub(crate) fn classify(url: &str, e: RedisError) -> StoreError {
    if e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() || e.is_timeout() {
        StoreError::Unavailable {
            url: url.to_owned(),
            message: e.to_string(),
        }
    } else {
        StoreError::Backend(format!("{url}: {e}"))
    }
}

/// A state read back from Redis that is not one: someone else's data, not the caller's fault.
fn stored_state(text: &str) -> Result<TaskState, StoreError> {
    text.parse().map_err(|_| {
        StoreError::Backend(format!(
            "a stored task state is `{text}`, not one of pending, assigned, running, done, failed"
        ))
    })
}

/// Progress from states read back from Redis (a state that is not one is a backend error).
fn stored_progress<'a>(
    workflow_id: &str,
    states: impl IntoIterator<Item = &'a str> + Clone,
) -> Result<WorkflowProgress, StoreError> {
    for state in states.clone() {
        stored_state(state)?;
    }
    WorkflowProgress::from_states(workflow_id, states)
}

fn parse_json(text: &str) -> Result<Value, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Backend(format!("a stored value is not JSON ({e})")))
}

/// One stored log entry, `<seq> <JSON>`.
fn stored_log_entry(text: &str) -> Result<LogEntry, StoreError> {
    let (seq, entry) = text
        .split_once(' ')
        .and_then(|(seq, entry)| Some((seq.parse().ok()?, entry)))
        .ok_or_else(|| StoreError::Backend("a stored log entry is not `<seq> <JSON>`".to_owned()))?;
    Ok(LogEntry {
        seq,
        entry: parse_json(entry)?,
    })
}

fn cas_outcome((applied, version, value): (i64, u64, String)) -> Result<CasOutcome, StoreError> {
    Ok(CasOutcome {
        applied: applied == 1,
        version,
        value: parse_json(&value)?,
    })
}

/// Shared state on a Redis server, under a namespace.
///
/// ```no_run
/// # async fn demo() -> Result<(), plugin_shared_state::StoreError> {
/// use plugin_shared_state::{RedisStore, StateStore};
/// let store = RedisStore::open("redis://127.0.0.1:6379", "orchestrator")?;
/// let outcome = store.compare_and_set("leader", 0, &serde_json::json!("node-a")).await?;
/// println!("node-a leads: {}", outcome.applied);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisStore {
    shared: Arc<RedisShared>,
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("url", &self.shared.url)
            .field("namespace", &self.shared.namespace)
            .finish_non_exhaustive()
    }
}

/// How long the Redis backend keeps a finished (`done` or `failed`) task's state by default:
/// one day. A task handed back to `pending` is kept until it finishes again.
pub const DEFAULT_FINISHED_TASK_TTL: Duration = Duration::from_secs(86_400);

impl RedisStore {
    /// Sets how long a finished task's state is kept (`None`: for ever). Must be called before
    /// the store is shared (it is a builder step).
    #[must_use]
    pub fn with_finished_task_ttl(mut self, ttl: Option<Duration>) -> Self {
        let ms = ttl.map_or(0, |t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX).max(1));
        if let Some(shared) = Arc::get_mut(&mut self.shared) {
            shared.finished_task_ttl_ms = ms;
        }
        self
    }

    /// A store on the Redis at `url` (`redis://host:port[/db]`), with every key under
    /// `namespace`. Connects on first use; a malformed URL is an error now.
    pub fn open(url: &str, namespace: &str) -> Result<Self, StoreError> {
        Self::open_with_timeout(url, namespace, DEFAULT_OP_TIMEOUT)
    }

    /// Like [`open`](Self::open), with the bound on each call (connecting included).
    pub fn open_with_timeout(url: &str, namespace: &str, op_timeout: Duration) -> Result<Self, StoreError> {
        let shown = redact(url);
        // `:` separates the namespace from the rest of a key: allowing it would let namespace
        // `a:kv` and key `x` meet namespace `a` and key `kv:x`.
        if namespace.is_empty()
            || namespace
                .chars()
                .any(|c| c.is_control() || c.is_whitespace() || c == ':')
        {
            return Err(StoreError::InvalidInput(format!(
                "namespace {namespace:?} must be non-empty, without spaces, `:` or control characters"
            )));
        }
        let client = redis::Client::open(url).map_err(|e| {
            StoreError::InvalidInput(format!("not a Redis URL: {shown} ({e}); expected redis://host:port"))
        })?;
        let io = IoRuntime::new()?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(op_timeout))
            .set_response_timeout(Some(op_timeout))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(10))
            .set_max_delay(Duration::from_millis(100));
        let connection = {
            let _runtime = io.handle().enter();
            ConnectionManager::new_lazy_with_config(client, config).map_err(|e| classify(&shown, e))?
        };
        Ok(Self {
            shared: Arc::new(RedisShared {
                finished_task_ttl_ms: u64::try_from(DEFAULT_FINISHED_TASK_TTL.as_millis()).unwrap_or(u64::MAX),
                io,
                connection,
                url: shown,
                namespace: namespace.to_owned(),
                op_timeout,
            }),
        })
    }

    /// A durable task queue on a Redis stream named `name`, sharing this store's connection.
    pub fn task_queue(&self, name: &str, options: QueueOptions) -> Result<TaskQueue, StoreError> {
        TaskQueue::new(Arc::clone(&self.shared), name, options)
    }

    /// The round trip to the server (`PING`), for health checks and as the floor in benches.
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.shared
            .call(|mut c, shared| async move {
                redis::cmd("PING")
                    .query_async::<String>(&mut c)
                    .await
                    .map(drop)
                    .map_err(|e| shared.error(e))
            })
            .await
    }

    async fn script<T: FromRedisValue + Send + 'static>(
        &self,
        script: &'static LazyLock<Script>,
        keys: Vec<String>,
        args: Vec<String>,
    ) -> Result<T, StoreError> {
        self.shared
            .call(move |mut c, shared| async move {
                let mut invocation = script.prepare_invoke();
                for key in &keys {
                    invocation.key(key);
                }
                for arg in &args {
                    invocation.arg(arg);
                }
                invocation.invoke_async(&mut c).await.map_err(|e| shared.error(e))
            })
            .await
    }
}

#[async_trait]
impl StateStore for RedisStore {
    fn describe(&self) -> String {
        format!("redis {} (namespace {})", self.shared.url, self.shared.namespace)
    }

    async fn get(&self, key: &str) -> Result<Versioned, StoreError> {
        let key = self.shared.key("kv", key);
        let (version, value): (Option<u64>, Option<String>) = self
            .shared
            .call(move |mut c, shared| async move {
                redis::cmd("HMGET")
                    .arg(&key)
                    .arg("v")
                    .arg("d")
                    .query_async(&mut c)
                    .await
                    .map_err(|e| shared.error(e))
            })
            .await?;
        Ok(Versioned {
            value: value.as_deref().map(parse_json).transpose()?.unwrap_or(Value::Null),
            version: version.unwrap_or(0),
        })
    }

    async fn compare_and_set(&self, key: &str, expected_version: u64, value: &Value) -> Result<CasOutcome, StoreError> {
        let reply = self
            .script(
                &CAS,
                vec![self.shared.key("kv", key)],
                vec![expected_version.to_string(), value.to_string()],
            )
            .await?;
        cas_outcome(reply)
    }

    async fn delete(&self, key: &str, expected_version: u64) -> Result<CasOutcome, StoreError> {
        let reply = self
            .script(
                &DELETE,
                vec![self.shared.key("kv", key)],
                vec![expected_version.to_string()],
            )
            .await?;
        cas_outcome(reply)
    }

    async fn transition(&self, task_id: &str, from: TaskState, to: TaskState) -> Result<CasOutcome, StoreError> {
        let absent_is_from = if from == TaskState::Pending { "1" } else { "0" };
        let reply = self
            .script(
                &TRANSITION,
                vec![self.shared.key("kv", &format!("task/{task_id}"))],
                vec![
                    Value::from(from.as_str()).to_string(),
                    Value::from(to.as_str()).to_string(),
                    absent_is_from.to_owned(),
                    self.shared.finished_task_ttl_ms.to_string(),
                ],
            )
            .await?;
        cas_outcome(reply)
    }

    async fn acquire(&self, agent: &str) -> Result<u64, StoreError> {
        let key = self.shared.load_key();
        let agent = agent.to_owned();
        self.shared
            .call(move |mut c, shared| async move {
                redis::cmd("HINCRBY")
                    .arg(&key)
                    .arg(&agent)
                    .arg(1)
                    .query_async(&mut c)
                    .await
                    .map_err(|e| shared.error(e))
            })
            .await
    }

    async fn release(&self, agent: &str) -> Result<u64, StoreError> {
        self.script(&RELEASE, vec![self.shared.load_key()], vec![agent.to_owned()])
            .await
    }

    async fn loads(&self, agents: Option<&[String]>) -> Result<BTreeMap<String, u64>, StoreError> {
        let key = self.shared.load_key();
        match agents {
            Some([]) => Ok(BTreeMap::new()),
            Some(agents) => {
                let agents = agents.to_vec();
                self.shared
                    .call(move |mut c, shared| async move {
                        let loads: Vec<Option<u64>> = redis::cmd("HMGET")
                            .arg(&key)
                            .arg(&agents)
                            .query_async(&mut c)
                            .await
                            .map_err(|e| shared.error(e))?;
                        Ok(agents
                            .into_iter()
                            .zip(loads)
                            .map(|(a, n)| (a, n.unwrap_or(0)))
                            .collect())
                    })
                    .await
            }
            None => {
                let loads: HashMap<String, u64> = self
                    .shared
                    .call(move |mut c, shared| async move {
                        redis::cmd("HGETALL")
                            .arg(&key)
                            .query_async(&mut c)
                            .await
                            .map_err(|e| shared.error(e))
                    })
                    .await?;
                Ok(loads.into_iter().collect())
            }
        }
    }

    async fn pick_least_loaded(
        &self,
        candidates: &[String],
        acquire: bool,
    ) -> Result<Option<(String, u64)>, StoreError> {
        if candidates.is_empty() {
            return Ok(None);
        }
        let mut args = Vec::with_capacity(candidates.len() + 1);
        args.push(if acquire { "1" } else { "0" }.to_owned());
        args.extend(candidates.iter().cloned());
        self.script(&PICK, vec![self.shared.load_key()], args).await
    }

    async fn define_workflow(&self, workflow_id: &str, tasks: &[String]) -> Result<WorkflowProgress, StoreError> {
        let _: u64 = self
            .script(
                &DEFINE_WORKFLOW,
                vec![self.shared.key("wf", workflow_id)],
                tasks.to_vec(),
            )
            .await?;
        WorkflowProgress::from_states(workflow_id, tasks.iter().map(|_| "pending"))
    }

    async fn update_workflow(
        &self,
        workflow_id: &str,
        task_id: &str,
        state: TaskState,
    ) -> Result<WorkflowUpdate, StoreError> {
        let mut args = vec![task_id.to_owned(), state.as_str().to_owned()];
        args.extend(TaskState::predecessors(state).map(|s| s.as_str().to_owned()));
        let reply: Vec<String> = self
            .script(&UPDATE_WORKFLOW, vec![self.shared.key("wf", workflow_id)], args)
            .await?;
        match reply.first().map(String::as_str) {
            Some("ok") if reply.len() >= 3 => {
                let previous = stored_state(&reply[1])?;
                let progress = stored_progress(workflow_id, reply[3..].iter().map(String::as_str))?;
                Ok(WorkflowUpdate {
                    previous,
                    completed_now: progress.complete && reply[2] == "0",
                    progress,
                })
            }
            Some("illegal") if reply.len() == 2 => Err(StoreError::IllegalTransition {
                from: stored_state(&reply[1])?,
                to: state,
            }),
            Some("no_workflow") => Err(StoreError::NotFound(format!(
                "no workflow `{workflow_id}`: define it first"
            ))),
            Some("no_task") => Err(StoreError::NotFound(format!(
                "workflow `{workflow_id}` has no task `{task_id}`"
            ))),
            _ => Err(StoreError::Backend(format!(
                "unexpected reply to a workflow update: {reply:?}"
            ))),
        }
    }

    async fn workflow_progress(&self, workflow_id: &str) -> Result<WorkflowProgress, StoreError> {
        let key = self.shared.key("wf", workflow_id);
        let states: Vec<String> = self
            .shared
            .call(move |mut c, shared| async move {
                redis::cmd("HVALS")
                    .arg(&key)
                    .query_async(&mut c)
                    .await
                    .map_err(|e| shared.error(e))
            })
            .await?;
        if states.is_empty() {
            return Err(StoreError::NotFound(format!(
                "no workflow `{workflow_id}`: define it first"
            )));
        }
        stored_progress(workflow_id, states.iter().map(String::as_str))
    }

    async fn append_log(&self, log: &str, entry: &Value, keep: usize) -> Result<u64, StoreError> {
        // LTRIM takes a signed 64-bit index.
        let keep = u64::try_from(keep)
            .unwrap_or(u64::MAX)
            .clamp(1, i64::MAX.unsigned_abs());
        self.script(
            &APPEND_LOG,
            vec![self.shared.key("log", log), self.shared.key("logseq", log)],
            vec![entry.to_string(), format!("-{keep}")],
        )
        .await
    }

    async fn read_log(&self, log: &str, after: u64, limit: usize) -> Result<LogPage, StoreError> {
        let (first_seq, last_seq, stored): (u64, u64, Vec<String>) = self
            .script(
                &READ_LOG,
                vec![self.shared.key("log", log), self.shared.key("logseq", log)],
                vec![after.to_string(), limit.to_string()],
            )
            .await?;
        let entries = stored
            .iter()
            .map(|text| stored_log_entry(text))
            .collect::<Result<Vec<_>, _>>()?;
        // Entries numbered out of line (a list or counter written by someone else) would break
        // the promise to readers: consecutive seqs after `after`, within the bounds.
        let mut expected = after.max(first_seq.saturating_sub(1));
        for entry in &entries {
            expected += 1;
            if entry.seq != expected || entry.seq > last_seq {
                return Err(StoreError::Backend(format!(
                    "shared log `{log}` is inconsistent: entry {} where {expected} was expected (last {last_seq})",
                    entry.seq
                )));
            }
        }
        Ok(LogPage {
            entries,
            first_seq,
            last_seq,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(redact("redis://user:secret@host:6379/0"), "redis://***@host:6379/0");
        assert_eq!(redact("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
    }

    #[test]
    fn bad_urls_and_namespaces_are_refused() {
        assert!(matches!(
            RedisStore::open("http://x", "ns"),
            Err(StoreError::InvalidInput(_))
        ));
        for namespace in ["has space", "a:kv", ""] {
            assert!(
                matches!(
                    RedisStore::open("redis://127.0.0.1:1", namespace),
                    Err(StoreError::InvalidInput(_))
                ),
                "{namespace:?}"
            );
        }
    }
}
