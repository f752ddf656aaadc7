//! A durable task queue on a Redis stream, for several processes splitting one stream of work.
//!
//! Producers [`enqueue`](TaskQueue::enqueue); consumers, each with a name unique to it, in one
//! consumer group, [`take`](TaskQueue::take) tasks and [`ack`](TaskQueue::ack) them when done.
//! A task taken and not acknowledged stays pending, held by its consumer; once it has been idle
//! for `claim_idle` (its consumer died, or hangs), the next `take` by any consumer claims it,
//! which counts one more delivery. A task delivered `max_deliveries` times that goes idle again
//! is poison: it moves to the dead-letter stream (`<queue>:dead`), where
//! [`dead_letters`](TaskQueue::dead_letters) reads it, instead of being delivered again.
//!
//! Claiming uses `XPENDING ... IDLE` and `XCLAIM` rather than `XAUTOCLAIM`: the pending list's
//! idle filter finds a dead consumer's tasks wherever they sit (XAUTOCLAIM scans a window from a
//! cursor, so tasks behind many busy ones wait for later calls), and it names the consumer that
//! held a poison task, which the dead letter records.
//!
//! Delivery is at least once: a consumer that was only slow, not dead, may finish a task that
//! was meanwhile claimed by another, and a `take` whose caller gave up (a timeout) may have taken
//! tasks that then return after `claim_idle`. Once a task is acknowledged it is deleted and never
//! delivered again. Each `take` is one Lua script (dead-lettering, claiming and reading new
//! entries in one atomic step), so two consumers never claim or move the same task at once.
//! Waiting for work polls with short sleeps instead of XREADGROUP BLOCK, which would stall the
//! one multiplexed connection that every call of the store shares.

use crate::redis_store::RedisShared;
use crate::store::{StoreError, check_key};
use redis::Script;
use serde::Serialize;
use serde_json::Value;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

static TAKE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local stream, dead = KEYS[1], KEYS[2]
local group, consumer = ARGV[1], ARGV[2]
local min_idle, max_deliveries, count = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local function field(fields, name)
  for i = 1, #fields, 2 do if fields[i] == name then return fields[i + 1] end end
  return 'null'
end
local dead_lettered, out = 0, {}
-- Tasks idle past min_idle in any consumer's hands, wherever they sit in the pending list:
-- poison ones (delivered max_deliveries times) to the dead letters, the rest claimed.
for _ = 1, 10 do
  local want = count - #out
  if want <= 0 then break end
  local stale = redis.call('XPENDING', stream, group, 'IDLE', min_idle, '-', '+', want + 16)
  for _, p in ipairs(stale) do
    if #out >= count then break end
    local id, holder, deliveries = p[1], p[2], p[4]
    if deliveries >= max_deliveries then
      local entry = redis.call('XRANGE', stream, id, id)
      local task = 'null'
      if entry[1] then task = field(entry[1][2], 'task') end
      redis.call('XADD', dead, '*', 'task', task, 'source_id', id, 'deliveries', deliveries, 'last_consumer', holder)
      redis.call('XACK', stream, group, id)
      redis.call('XDEL', stream, id)
      dead_lettered = dead_lettered + 1
    else
      local claimed = redis.call('XCLAIM', stream, group, consumer, min_idle, id)
      if claimed[1] then
        table.insert(out, {id, field(claimed[1][2], 'task'), deliveries + 1})
      end
    end
  end
  if #stale < want + 16 then break end
end
if #out < count then
  local fresh = redis.call('XREADGROUP', 'GROUP', group, consumer, 'COUNT', count - #out, 'STREAMS', stream, '>')
  if fresh then
    for _, e in ipairs(fresh[1][2]) do table.insert(out, {e[1], field(e[2], 'task'), 1}) end
  end
end
return {dead_lettered, out}
",
    )
});

static ACK: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local n = redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
if n == 1 then redis.call('XDEL', KEYS[1], ARGV[2]) end
return n
",
    )
});

/// How a [`TaskQueue`] treats its consumers.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct QueueOptions {
    /// The consumer group (default `"orchestrator"`); processes in one group split the work.
    pub group: String,
    /// How long a task may stay taken without an ack before another consumer claims it
    /// (default 30 s).
    pub claim_idle: Duration,
    /// Deliveries after which an unacknowledged task goes to the dead-letter stream (default 5).
    pub max_deliveries: u32,
}

impl Default for QueueOptions {
    fn default() -> Self {
        Self {
            group: "orchestrator".to_owned(),
            claim_idle: Duration::from_secs(30),
            max_deliveries: 5,
        }
    }
}

impl QueueOptions {
    /// Sets the consumer group.
    #[must_use]
    pub fn with_group(mut self, group: impl Into<String>) -> Self {
        self.group = group.into();
        self
    }

    /// Sets how long a task stays with a silent consumer before it is claimed by another.
    #[must_use]
    pub fn with_claim_idle(mut self, idle: Duration) -> Self {
        self.claim_idle = idle;
        self
    }

    /// Sets the deliveries after which a task is dead-lettered.
    #[must_use]
    pub fn with_max_deliveries(mut self, deliveries: u32) -> Self {
        self.max_deliveries = deliveries;
        self
    }
}

/// A task handed to a consumer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct QueuedTask {
    /// The stream entry id: what [`TaskQueue::ack`] takes.
    pub id: String,
    /// The task, as enqueued.
    pub task: Value,
    /// How many times it has been delivered, this time included.
    pub deliveries: u64,
}

/// What one [`TaskQueue::take`] got.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Taken {
    /// The tasks now held by the consumer (claimed from silent consumers first, then new ones).
    pub tasks: Vec<QueuedTask>,
    /// How many poison tasks this call moved to the dead-letter stream.
    pub dead_lettered: u64,
}

/// A task that was delivered too often without an ack.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeadTask {
    /// Its id in the dead-letter stream.
    pub id: String,
    /// Its id in the queue it came from.
    pub source_id: String,
    /// The task.
    pub task: Value,
    /// How many times it was delivered.
    pub deliveries: u64,
    /// The consumer that held it last.
    pub last_consumer: String,
}

/// The queue's size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct QueueStats {
    /// Tasks in the stream not yet acknowledged (waiting or taken).
    pub length: u64,
    /// Tasks taken and not yet acknowledged.
    pub pending: u64,
    /// Tasks in the dead-letter stream.
    pub dead: u64,
}

/// A durable task queue on a Redis stream. Made by [`RedisStore::task_queue`](crate::RedisStore::task_queue);
/// cheap to clone.
#[derive(Clone)]
pub struct TaskQueue {
    shared: Arc<RedisShared>,
    stream: String,
    dead: String,
    options: Arc<QueueOptions>,
}

impl std::fmt::Debug for TaskQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskQueue")
            .field("stream", &self.stream)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

fn parse_task(text: &str) -> Value {
    // Every task was enqueued as JSON text; anything else (written by another tool) is kept as
    // a string rather than lost.
    serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_owned()))
}

impl TaskQueue {
    pub(crate) fn new(shared: Arc<RedisShared>, name: &str, options: QueueOptions) -> Result<Self, StoreError> {
        check_key("queue", name)?;
        check_key("group", &options.group)?;
        if name.contains(':') {
            // Queue `x:dead` would be queue `x`'s dead letters.
            return Err(StoreError::InvalidInput(format!(
                "queue name `{name}` must not contain `:`"
            )));
        }
        if options.max_deliveries == 0 {
            return Err(StoreError::InvalidInput("`max_deliveries` must be at least 1".into()));
        }
        let stream = shared.key("queue", name);
        Ok(Self {
            dead: format!("{stream}:dead"),
            stream,
            shared,
            options: Arc::new(options),
        })
    }

    /// Adds a task; returns its id.
    pub async fn enqueue(&self, task: &Value) -> Result<String, StoreError> {
        let stream = self.stream.clone();
        let text = task.to_string();
        self.shared
            .call(move |mut c, shared| async move {
                redis::cmd("XADD")
                    .arg(&stream)
                    .arg("*")
                    .arg("task")
                    .arg(&text)
                    .query_async(&mut c)
                    .await
                    .map_err(|e| shared.error(e))
            })
            .await
    }

    /// Takes up to `count` tasks for `consumer`, waiting up to `wait` for one to arrive. Tasks
    /// idle past `claim_idle` in other consumers' hands come first.
    pub async fn take(&self, consumer: &str, count: usize, wait: Duration) -> Result<Taken, StoreError> {
        check_key("consumer", consumer)?;
        if count == 0 || count > 10_000 {
            return Err(StoreError::InvalidInput("`count` must be 1 to 10000".into()));
        }
        let deadline = Instant::now() + wait;
        let mut dead_lettered = 0;
        loop {
            let mut taken = self.take_once(consumer, count).await?;
            dead_lettered += taken.dead_lettered;
            let now = Instant::now();
            if !taken.tasks.is_empty() || now >= deadline {
                taken.dead_lettered = dead_lettered;
                return Ok(taken);
            }
            tokio_sleep(&self.shared, (deadline - now).min(Duration::from_millis(20))).await;
        }
    }

    async fn take_once(&self, consumer: &str, count: usize) -> Result<Taken, StoreError> {
        let keys = [self.stream.clone(), self.dead.clone()];
        let args = [
            self.options.group.clone(),
            consumer.to_owned(),
            self.options.claim_idle.as_millis().to_string(),
            self.options.max_deliveries.to_string(),
            count.to_string(),
        ];
        let group = self.options.group.clone();
        let (dead_lettered, tasks): (u64, Vec<(String, String, u64)>) = self
            .shared
            .call(move |mut c, shared| async move {
                let mut invocation = TAKE.prepare_invoke();
                invocation.key(&keys[0]).key(&keys[1]);
                for arg in &args {
                    invocation.arg(arg);
                }
                match invocation.invoke_async(&mut c).await {
                    Err(e) if e.to_string().contains("NOGROUP") => {
                        create_group(&mut c, &keys[0], &group)
                            .await
                            .map_err(|e| shared.error(e))?;
                        invocation.invoke_async(&mut c).await.map_err(|e| shared.error(e))
                    }
                    other => other.map_err(|e| shared.error(e)),
                }
            })
            .await?;
        Ok(Taken {
            tasks: tasks
                .into_iter()
                .map(|(id, task, deliveries)| QueuedTask {
                    id,
                    task: parse_task(&task),
                    deliveries,
                })
                .collect(),
            dead_lettered,
        })
    }

    /// Acknowledges a task: it is done and deleted. `false` when it was not pending (already
    /// acknowledged, dead-lettered, or never taken).
    pub async fn ack(&self, id: &str) -> Result<bool, StoreError> {
        check_key("id", id)?;
        let (stream, group, id) = (self.stream.clone(), self.options.group.clone(), id.to_owned());
        let acked: u64 = self
            .shared
            .call(move |mut c, shared| async move {
                ACK.key(&stream)
                    .arg(&group)
                    .arg(&id)
                    .invoke_async(&mut c)
                    .await
                    .map_err(|e| {
                        if e.to_string().contains("Invalid stream ID") {
                            StoreError::InvalidInput(format!("`{id}` is not a task id (expected what take returned)"))
                        } else {
                            shared.error(e)
                        }
                    })
            })
            .await?;
        Ok(acked == 1)
    }

    /// The dead-letter stream, oldest first, at most `limit` tasks.
    pub async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadTask>, StoreError> {
        let dead = self.dead.clone();
        let entries: Vec<(String, Vec<(String, String)>)> = self
            .shared
            .call(move |mut c, shared| async move {
                let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
                    .arg(&dead)
                    .arg("-")
                    .arg("+")
                    .arg("COUNT")
                    .arg(limit)
                    .query_async(&mut c)
                    .await
                    .map_err(|e| shared.error(e))?;
                Ok(reply
                    .ids
                    .into_iter()
                    .map(|entry| {
                        let fields = entry
                            .map
                            .iter()
                            .filter_map(|(k, v)| redis::from_redis_value_ref::<String>(v).ok().map(|v| (k.clone(), v)))
                            .collect();
                        (entry.id, fields)
                    })
                    .collect())
            })
            .await?;
        Ok(entries
            .into_iter()
            .map(|(id, fields)| {
                let get = |name: &str| {
                    fields
                        .iter()
                        .find(|(k, _)| k == name)
                        .map(|(_, v)| v.clone())
                        .unwrap_or_default()
                };
                DeadTask {
                    id,
                    source_id: get("source_id"),
                    task: parse_task(&get("task")),
                    deliveries: get("deliveries").parse().unwrap_or(0),
                    last_consumer: get("last_consumer"),
                }
            })
            .collect())
    }

    /// How many tasks are queued, taken and dead.
    pub async fn stats(&self) -> Result<QueueStats, StoreError> {
        let (stream, dead, group) = (self.stream.clone(), self.dead.clone(), self.options.group.clone());
        self.shared
            .call(move |mut c, shared| async move {
                let (length, dead): (u64, u64) = redis::pipe()
                    .cmd("XLEN")
                    .arg(&stream)
                    .cmd("XLEN")
                    .arg(&dead)
                    .query_async(&mut c)
                    .await
                    .map_err(|e| shared.error(e))?;
                let pending: redis::Value = redis::cmd("XPENDING")
                    .arg(&stream)
                    .arg(&group)
                    .query_async(&mut c)
                    .await
                    .or_else(|e| {
                        if e.to_string().contains("NOGROUP") {
                            Ok(redis::Value::Nil)
                        } else {
                            Err(e)
                        }
                    })
                    .map_err(|e| shared.error(e))?;
                let pending = match pending {
                    redis::Value::Array(items) => {
                        items.first().and_then(|v| redis::from_redis_value_ref::<u64>(v).ok())
                    }
                    _ => None,
                }
                .unwrap_or(0);
                Ok(QueueStats { length, pending, dead })
            })
            .await
    }
}

async fn create_group(c: &mut redis::aio::ConnectionManager, stream: &str, group: &str) -> redis::RedisResult<()> {
    let created: redis::RedisResult<String> = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(stream)
        .arg(group)
        .arg("0")
        .arg("MKSTREAM")
        .query_async(c)
        .await;
    match created {
        Err(e) if !e.to_string().contains("BUSYGROUP") => Err(e),
        _ => Ok(()),
    }
}

async fn tokio_sleep(shared: &Arc<RedisShared>, duration: Duration) {
    // Sleep on the store's own runtime: the caller may be a dynamic plugin without a reactor.
    let _ = shared
        .call(move |_, _| async move {
            tokio::time::sleep(duration).await;
            Ok(())
        })
        .await;
}
