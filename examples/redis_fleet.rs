//! Two processes sharing state and one stream of tasks on Redis. The example starts a
//! `redis-server` of its own on a free loopback port (unless `REDIS_URL` names one), enqueues 200
//! tasks on the durable queue `tasks` (`workflow_tracking`, op `enqueue`), then runs its own
//! executable twice more as workers. Each worker builds an orchestrator with the default plugins,
//! `SharedStatePlugin` configured for Redis, and agents of its own, and loops `take` ->
//! `submit_task` -> `ack` until the queue is empty. Its executor counts every run of a task in
//! Redis (`atomic_updates` compare-and-set on `runs/<task id>`). When both have exited, the
//! parent checks on Redis that every task is `done` (`task/<id>`, which the pipeline moves
//! `pending -> assigned -> running -> done`), that each ran exactly once, and that the queue is
//! empty with nothing dead-lettered; it prints the totals per worker, and exits with 1 if any
//! check fails. A redis-server it started is shut down at the end.
//!
//! Run it with `cargo run --example redis_fleet` (needs `redis-server` on the PATH, e.g.
//! `sudo apt-get install redis-server` or `brew install redis`), or against a server of yours
//! with `REDIS_URL=redis://127.0.0.1:6379 cargo run --example redis_fleet` (every key it writes
//! is under a namespace of its own, `fleet-<pid>-<time>`).

use orchestrator::prelude::*;
use orchestrator::{SharedStatePlugin, TaskError, plugin_api::async_trait};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const TASKS: usize = 200;
const WORKERS: u32 = 2;
const QUEUE: &str = "tasks";

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// An orchestrator whose `SharedStatePlugin` keeps its state on the Redis at `url`, under
/// `namespace`. A task held by a worker that goes silent for 5 s is claimed by the other.
async fn connect(url: &str, namespace: &str, builder: OrchestratorBuilder) -> Result<Orchestrator, BoxError> {
    Ok(builder
        .configure(
            "SharedStatePlugin",
            json!({
                "backend": "redis",
                "url": url,
                "namespace": namespace,
                "queue": {"claim_idle_ms": 5000, "max_deliveries": 5},
            }),
        )
        .build()
        .await?)
}

async fn call(orchestrator: &Orchestrator, capability: &str, data: Value) -> Result<Value, BoxError> {
    let response = orchestrator.execute(IntegrationRequest::new(capability, data)).await?;
    if !response.success {
        return Err(format!("{capability} failed: {}", response.error.unwrap_or_default()).into());
    }
    Ok(response.data)
}

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("--worker") => worker(&args).await,
        _ => parent().await,
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("redis_fleet: {e}");
            ExitCode::FAILURE
        }
    }
}

// ----- the parent -----------------------------------------------------------------------------

async fn parent() -> Result<ExitCode, BoxError> {
    // Our own redis-server unless REDIS_URL names one; dropped (and so stopped) at the end.
    let (url, _server) = match std::env::var("REDIS_URL") {
        Ok(url) if !url.is_empty() => (url, None),
        _ => match RedisServer::start()? {
            Some(server) => (server.url(), Some(server)),
            None => {
                println!(
                    "redis_fleet needs Redis and found no `redis-server` on the PATH.\n\
                     Install it (`sudo apt-get install redis-server`, `brew install redis`) or point the example \
                     at a running server: REDIS_URL=redis://127.0.0.1:6379 cargo run --example redis_fleet"
                );
                return Ok(ExitCode::SUCCESS);
            }
        },
    };
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let namespace = format!("fleet-{}-{secs}", std::process::id());
    println!("redis at {url}, namespace {namespace}");

    let orchestrator = connect(&url, &namespace, Orchestrator::builder().with_default_plugins()).await?;
    let mut ids = Vec::with_capacity(TASKS);
    for n in 0..TASKS {
        let start = 27 + 1000 * n as u64;
        let task = Task::new(format!("count the Collatz steps from {start}"))
            .with_id(format!("job-{n:03}"))
            .with_kind("collatz")
            .with_required_capabilities(["compute"])
            .with_data(json!({ "start": start }));
        ids.push(task.id.clone());
        // A `Task` serializes to JSON and back: the queue carries it as it is.
        call(
            &orchestrator,
            "workflow_tracking",
            json!({"op": "enqueue", "queue": QUEUE, "task": serde_json::to_value(&task)?}),
        )
        .await?;
    }
    let stats = call(
        &orchestrator,
        "workflow_tracking",
        json!({"op": "queue_stats", "queue": QUEUE}),
    )
    .await?;
    println!("enqueued {TASKS} tasks on `{QUEUE}`: {stats}");

    let exe = std::env::current_exe()?;
    let mut workers: Vec<(u32, Child)> = Vec::new();
    for n in 1..=WORKERS {
        let child = Command::new(&exe)
            .args(["--worker", &n.to_string(), "--redis", &url, "--namespace", &namespace])
            .stdin(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start worker {n} ({}): {e}", exe.display()))?;
        workers.push((n, child));
    }
    let mut problems = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    for (n, child) in &mut workers {
        loop {
            if let Some(status) = child.try_wait()? {
                if !status.success() {
                    problems.push(format!("worker {n} exited with {status}"));
                }
                break;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                problems.push(format!("worker {n} was still running after 120 s and was killed"));
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    // The check, on Redis: every task done, run exactly once, and the queue empty.
    let mut per_worker: BTreeMap<String, usize> = BTreeMap::new();
    for id in &ids {
        let state = call(
            &orchestrator,
            "atomic_updates",
            json!({"op": "get", "key": format!("task/{id}")}),
        )
        .await?;
        if state["value"] != "done" {
            problems.push(format!("{id} is {} instead of done", state["value"]));
        }
        let runs = call(
            &orchestrator,
            "atomic_updates",
            json!({"op": "get", "key": format!("runs/{id}")}),
        )
        .await?;
        let by: Vec<String> = runs["value"]["by"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|w| w.as_str().unwrap_or("?").to_owned())
            .collect();
        if by.len() != 1 {
            problems.push(format!("{id} ran {} time(s) ({})", by.len(), by.join(", ")));
        }
        for worker in by {
            *per_worker.entry(worker).or_default() += 1;
        }
    }
    let stats = call(
        &orchestrator,
        "workflow_tracking",
        json!({"op": "queue_stats", "queue": QUEUE}),
    )
    .await?;
    if stats["length"] != 0 || stats["pending"] != 0 || stats["dead"] != 0 {
        problems.push(format!("the queue is not empty: {stats}"));
    }

    let total: usize = per_worker.values().sum();
    let split: Vec<String> = per_worker.iter().map(|(w, n)| format!("{w}: {n}")).collect();
    println!(
        "runs recorded on Redis: {total} ({}); queue now {stats}",
        split.join(", ")
    );
    if problems.is_empty() {
        println!("every task ran exactly once");
        Ok(ExitCode::SUCCESS)
    } else {
        for problem in problems.iter().take(20) {
            println!("PROBLEM: {problem}");
        }
        if problems.len() > 20 {
            println!("... and {} more", problems.len() - 20);
        }
        Ok(ExitCode::FAILURE)
    }
}

// ----- a worker -------------------------------------------------------------------------------

/// Runs a task: the Collatz steps from `data.start`, after 2 ms of (pretend) I/O. Before the
/// work, the run is counted in Redis under `runs/<task id>`, with a compare-and-set, through an
/// orchestrator of its own (a ledger holding only `SharedStatePlugin`).
struct CollatzExecutor {
    worker: String,
    ledger: Orchestrator,
}

impl CollatzExecutor {
    async fn count_run(&self, task_id: &str) -> Result<(), BoxError> {
        let key = format!("runs/{task_id}");
        loop {
            let current = call(&self.ledger, "atomic_updates", json!({"op": "get", "key": key})).await?;
            let mut by = current["value"]["by"].as_array().cloned().unwrap_or_default();
            by.push(json!(self.worker));
            let written = call(
                &self.ledger,
                "atomic_updates",
                json!({"op": "cas", "key": key, "expected_version": current["version"], "value": {"by": by}}),
            )
            .await?;
            if written["applied"] == true {
                return Ok(());
            }
        }
    }
}

#[async_trait]
impl AgentExecutor for CollatzExecutor {
    async fn execute(&self, context: ExecutionContext) -> Result<Value, ExecutorError> {
        let task_id = context
            .task_id
            .as_deref()
            .ok_or_else(|| ExecutorError::new("this executor runs pipeline tasks only"))?;
        let start = context.data["start"].as_u64().filter(|s| *s > 0).ok_or_else(|| {
            ExecutorError::new(format!(
                "`start` must be a positive integer, not {}",
                context.data["start"]
            ))
        })?;
        self.count_run(task_id)
            .await
            .map_err(|e| ExecutorError::retryable(format!("cannot count the run on Redis: {e}")))?;
        tokio::time::sleep(Duration::from_millis(2)).await;
        let (mut n, mut steps, mut peak) = (start, 0_u64, start);
        while n != 1 {
            n = if n % 2 == 0 { n / 2 } else { 3 * n + 1 };
            peak = peak.max(n);
            steps += 1;
        }
        Ok(json!({"start": start, "steps": steps, "peak": peak, "worker": self.worker, "agent": context.agent.id}))
    }
}

fn arg<'a>(args: &'a [String], name: &str) -> Result<&'a str, BoxError> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
        .ok_or_else(|| {
            format!("missing {name} VALUE (usage: redis_fleet --worker N --redis URL --namespace NS)").into()
        })
}

async fn worker(args: &[String]) -> Result<ExitCode, BoxError> {
    let n = arg(args, "--worker")?;
    let (url, namespace) = (arg(args, "--redis")?, arg(args, "--namespace")?);
    let me = format!("worker-{n}");
    let ledger = connect(
        url,
        namespace,
        Orchestrator::builder().plugin(SharedStatePlugin::default()),
    )
    .await?;
    let executor = CollatzExecutor {
        worker: me.clone(),
        ledger,
    };
    let orchestrator = connect(
        url,
        namespace,
        Orchestrator::builder().with_default_plugins().executor(executor),
    )
    .await?;
    for agent in ["a", "b"] {
        orchestrator
            .register_agent(
                AgentConfig::new(format!("{me}-{agent}"))
                    .with_id(format!("w{n}-{agent}"))
                    .with_capabilities(["compute"])
                    .with_capacity(2),
            )
            .await?;
    }

    let (mut ran, mut failed, mut duplicates, mut refused) = (0_usize, 0_usize, 0_usize, 0_usize);
    let mut per_agent: BTreeMap<String, usize> = BTreeMap::new();
    let started = Instant::now();
    loop {
        // Up to 4 tasks at a time: the capacity of this worker's two agents.
        let taken = call(
            &orchestrator,
            "workflow_tracking",
            json!({"op": "take", "queue": QUEUE, "consumer": me, "count": 4, "wait_ms": 200}),
        )
        .await?;
        let entries = taken["tasks"].as_array().cloned().unwrap_or_default();
        if entries.is_empty() {
            // Nothing new. Done when nothing is left unacknowledged either: a task another
            // worker holds comes back to us if that worker dies before acknowledging it.
            let stats = call(
                &orchestrator,
                "workflow_tracking",
                json!({"op": "queue_stats", "queue": QUEUE}),
            )
            .await?;
            if stats["length"] == 0 {
                break;
            }
            continue;
        }
        let runs: Vec<_> = entries
            .into_iter()
            .map(|entry| {
                let orchestrator = orchestrator.clone();
                tokio::spawn(async move {
                    let id = entry["id"].as_str().unwrap_or_default().to_owned();
                    let outcome = match serde_json::from_value::<Task>(entry["task"].clone()) {
                        Ok(task) => Ok(orchestrator.submit_task(task).await),
                        Err(e) => Err(format!("not a task: {e}")),
                    };
                    (id, outcome)
                })
            })
            .collect();
        for run in runs {
            let (id, outcome) = run.await?;
            let ack = match outcome {
                Ok(Ok(report)) => {
                    if report.status == TaskStatus::Succeeded {
                        ran += 1;
                        if let Some(agent) = &report.agent {
                            *per_agent.entry(agent.to_string()).or_default() += 1;
                        }
                    } else {
                        failed += 1;
                        println!("[{me}] {} failed: {}", report.task_id, report.error.unwrap_or_default());
                    }
                    true
                }
                // Delivered again (at least once), and already run: nothing to do but ack it.
                Ok(Err(OrchestratorError::Task(TaskError::AlreadySubmitted { task, state }))) => {
                    println!("[{me}] {task} delivered again, already {state}: acknowledged, not run");
                    duplicates += 1;
                    true
                }
                // Left unacknowledged: it will be delivered again, and dead-lettered after
                // max_deliveries.
                Ok(Err(e)) => {
                    refused += 1;
                    println!("[{me}] refused {id}: {e}");
                    false
                }
                Err(malformed) => {
                    refused += 1;
                    println!("[{me}] refused {id}: {malformed}");
                    false
                }
            };
            if ack {
                call(
                    &orchestrator,
                    "workflow_tracking",
                    json!({"op": "ack", "queue": QUEUE, "id": id}),
                )
                .await?;
            }
        }
    }
    let agents: Vec<String> = per_agent.iter().map(|(a, n)| format!("{a}: {n}")).collect();
    println!(
        "[{me}] ran {ran} tasks in {} ms ({}); {failed} failed, {duplicates} duplicate deliveries refused, {refused} refused",
        started.elapsed().as_millis(),
        agents.join(", ")
    );
    Ok(if failed + refused == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

// ----- a redis-server of our own ----------------------------------------------------------------

/// A `redis-server` on a free loopback port, keeping nothing on disk; stopped when dropped.
struct RedisServer {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl RedisServer {
    /// Starts one, or `None` when there is no `redis-server` on the PATH.
    fn start() -> Result<Option<Self>, BoxError> {
        let Some(binary) = std::env::var_os("PATH").and_then(|path| {
            std::env::split_paths(&path)
                .map(|dir| dir.join("redis-server"))
                .find(|candidate| candidate.is_file())
        }) else {
            return Ok(None);
        };
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let dir = std::env::temp_dir().join(format!("redis-fleet-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let child = Command::new(&binary)
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(&dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", binary.display()))?;
        let mut server = Self { child, port, dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !server.answers_ping() {
            if let Some(status) = server.child.try_wait()? {
                return Err(format!("{} exited at once ({status})", binary.display()).into());
            }
            if Instant::now() > deadline {
                return Err(format!("{} did not answer PING on port {port} within 10 s", binary.display()).into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        println!(
            "started {} on port {port} (pid {})",
            binary.display(),
            server.child.id()
        );
        Ok(Some(server))
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn answers_ping(&self) -> bool {
        use std::io::{Read, Write};
        let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
        let mut reply = [0_u8; 7];
        stream.write_all(b"PING\r\n").is_ok() && stream.read_exact(&mut reply).is_ok() && &reply == b"+PONG\r\n"
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
        println!("stopped the redis-server on port {}", self.port);
    }
}
