//! The task pipeline (`Orchestrator::submit_task`) through the public API, with the nine
//! default plugins: authentication before any agent sees a task, routing to the right
//! specialist, quality gates and retries, waking, capacity and waiting, the per-step trace, and
//! many concurrent tasks each run exactly once.

use async_trait::async_trait;
use jsonwebtoken::{EncodingKey, Header, encode};
use orchestrator::prelude::*;
use orchestrator::{PipelineOptions, StepOutcome, TaskError};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const SECRET: &str = "pipeline tests' shared secret";

/// An executor that records what it ran and behaves as each task's data asks:
/// `{"sleep_ms"?, "fail_attempts"?: n (retryable failures before success), "fail_on_attempts"?:
///   [runs that fail retryably], "fatal"?: true,
///   "metrics"?: {...} (returned; `"metrics_by_attempt": [{...}, ...]` per attempt)}`.
#[derive(Clone, Default)]
struct RecordingExecutor {
    runs: Arc<Mutex<Vec<(String, String, u32)>>>,
    running: Arc<Mutex<HashMap<String, u32>>>,
    max_seen: Arc<Mutex<HashMap<String, u32>>>,
}

impl RecordingExecutor {
    fn runs(&self) -> Vec<(String, String, u32)> {
        self.runs.lock().expect("lock").clone()
    }
    fn max_running(&self, agent: &str) -> u32 {
        self.max_seen.lock().expect("lock").get(agent).copied().unwrap_or(0)
    }
}

#[async_trait]
impl AgentExecutor for RecordingExecutor {
    async fn execute(&self, context: ExecutionContext) -> Result<Value, ExecutorError> {
        let agent = context.agent.id.to_string();
        let task = context.task_id.clone().unwrap_or_default();
        self.runs
            .lock()
            .expect("lock")
            .push((task, agent.clone(), context.attempt));
        {
            let mut running = self.running.lock().expect("lock");
            let now = running.entry(agent.clone()).or_insert(0);
            *now += 1;
            let mut max = self.max_seen.lock().expect("lock");
            let seen = max.entry(agent.clone()).or_insert(0);
            *seen = (*seen).max(*now);
        }
        let data = &context.data;
        if let Some(ms) = data["sleep_ms"].as_u64() {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        } else {
            tokio::task::yield_now().await;
        }
        *self.running.lock().expect("lock").get_mut(&agent).expect("counted") -= 1;
        if data["fatal"] == json!(true) {
            return Err(ExecutorError::new("the input cannot be processed"));
        }
        let fails_now = data["fail_on_attempts"]
            .as_array()
            .is_some_and(|runs| runs.contains(&json!(context.attempt)));
        if fails_now || u64::from(context.attempt) <= data["fail_attempts"].as_u64().unwrap_or(0) {
            return Err(ExecutorError::retryable(format!(
                "rate limited on attempt {}",
                context.attempt
            )));
        }
        let metrics = match data["metrics_by_attempt"].as_array() {
            Some(list) => list
                .get(context.attempt as usize - 1)
                .or(list.last())
                .cloned()
                .unwrap_or(Value::Null),
            None => data["metrics"].clone(),
        };
        Ok(json!({"agent": agent, "attempt": context.attempt, "metrics": metrics}))
    }
}

fn now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs()
}

fn token(subject: &str, secret: &str) -> String {
    let claims = json!({"sub": subject, "exp": now_s() + 600});
    encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("encodes")
}

/// A temporary directory of its own for the audit log (removed when dropped).
struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("orchestrator-pipeline-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn nine_plugins(executor: RecordingExecutor, audit_dir: &TempDir, options: PipelineOptions) -> Orchestrator {
    Orchestrator::builder()
        .with_default_plugins()
        .configure(
            "SecurityIntegrationPlugin",
            json!({
                "jwt": {"hs256_secret": SECRET},
                "audit": {"path": audit_dir.0.join("audit.log")},
                "rbac": {
                    "roles": {"submitter": {"allow": ["tasks:submit"]}, "viewer": {"allow": ["agents:read"]}},
                    "subjects": {"alice": ["submitter"], "bob": ["viewer"]},
                },
            }),
        )
        .configure("ContextAwareRoutingPlugin", json!({"seed": 7}))
        .executor(executor)
        .pipeline(options)
        .build()
        .await
        .expect("builds")
}

fn fast_retries() -> PipelineOptions {
    PipelineOptions::default().retry_backoff(Duration::from_millis(1))
}

async fn specialists(orchestrator: &Orchestrator) {
    for (id, caps) in [
        ("db-1", vec!["database", "sql", "migrations"]),
        ("web-1", vec!["frontend", "css", "react"]),
        ("sec-1", vec!["security", "audit", "tls"]),
        ("ops-1", vec!["infrastructure", "deploy", "kubernetes"]),
    ] {
        orchestrator
            .register_agent(
                AgentConfig::new(id)
                    .with_id(id)
                    .with_capabilities(caps)
                    .with_capacity(4),
            )
            .await
            .expect("registers");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_with_a_valid_token_runs_and_a_bad_token_is_refused_before_any_agent_sees_it() {
    let executor = RecordingExecutor::default();
    let audit = TempDir::new("tokens");
    let orchestrator = nine_plugins(executor.clone(), &audit, fast_retries()).await;
    specialists(&orchestrator).await;

    let report = orchestrator
        .submit_task(Task::new("add an index to the orders table").with_token(token("alice", SECRET)))
        .await
        .expect("alice may submit");
    assert_eq!(report.status, TaskStatus::Succeeded, "{report:#?}");
    assert_eq!(report.subject.as_deref(), Some("alice"));
    let auth = report.step(PipelineStep::Authenticate).next().expect("authenticated");
    assert_eq!(auth.plugin, "SecurityIntegrationPlugin");
    assert_eq!(auth.outcome, StepOutcome::Done);
    let audited = report.step(PipelineStep::Audit).next().expect("audited");
    assert_eq!(audited.outcome, StepOutcome::Done, "{audited:?}");
    assert_eq!(executor.runs().len(), 1);

    // Signed with another key, garbage, and a subject without the permission.
    for (bad, expected) in [
        (token("alice", "some other secret entirely"), "not accepted"),
        ("not.a.jwt".to_owned(), "not accepted"),
    ] {
        let err = orchestrator
            .submit_task(Task::new("drop the orders table").with_token(bad))
            .await
            .expect_err("refused");
        assert!(
            matches!(err, OrchestratorError::Task(TaskError::Unauthenticated { .. })),
            "{err}"
        );
        assert!(err.to_string().contains(expected), "{err}");
    }
    let err = orchestrator
        .submit_task(Task::new("drop the orders table").with_token(token("bob", SECRET)))
        .await
        .expect_err("bob may only read");
    assert!(
        matches!(err, OrchestratorError::Task(TaskError::Forbidden { .. })),
        "{err}"
    );
    assert!(err.to_string().contains("`bob` may not submit tasks"), "{err}");
    assert_eq!(executor.runs().len(), 1, "no agent saw a refused task");

    // The refusals are in the audit log, with the accepted task.
    let records = orchestrator
        .execute(IntegrationRequest::new("audit_logging", json!({"op": "query"})))
        .await
        .expect("queries");
    let actions: Vec<&str> = records.data["records"]
        .as_array()
        .expect("records")
        .iter()
        .filter_map(|r| r["action"].as_str())
        .collect();
    assert_eq!(
        actions.iter().filter(|a| **a == "task_refused").count(),
        3,
        "{actions:?}"
    );
    assert_eq!(
        actions.iter().filter(|a| **a == "task_submit").count(),
        1,
        "{actions:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_is_refused_when_nothing_can_verify_it() {
    // No security plugin at all: a task that carries a token is never run unverified.
    let executor = RecordingExecutor::default();
    let orchestrator = Orchestrator::builder()
        .executor(executor.clone())
        .build()
        .await
        .expect("builds");
    orchestrator
        .register_agent(AgentConfig::new("a"))
        .await
        .expect("registers");
    let err = orchestrator
        .submit_task(Task::new("anything").with_token("whatever"))
        .await
        .expect_err("refused");
    assert!(err.to_string().contains("`oauth_auth` is not served"), "{err}");
    assert!(executor.runs().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_task_reaches_the_database_agent_among_specialists() {
    let executor = RecordingExecutor::default();
    let audit = TempDir::new("specialists");
    let orchestrator = nine_plugins(executor.clone(), &audit, fast_retries()).await;
    specialists(&orchestrator).await;
    for text in [
        "write the sql migrations for the database schema",
        "the database needs a migrations script",
    ] {
        let report = orchestrator.submit_task(Task::new(text)).await.expect("runs");
        assert_eq!(report.status, TaskStatus::Succeeded);
        assert_eq!(report.agent.as_ref().map(AgentId::as_str), Some("db-1"), "{report:#?}");
        let route = report.step(PipelineStep::Route).next().expect("routed");
        assert_eq!(route.plugin, "ContextAwareRoutingPlugin", "{route:?}");
    }
    // A required capability is a hard filter.
    let report = orchestrator
        .submit_task(Task::new("rotate the certificates").with_required_capabilities(["tls"]))
        .await
        .expect("runs");
    assert_eq!(report.agent.as_ref().map(AgentId::as_str), Some("sec-1"));
    let err = orchestrator
        .submit_task(Task::new("fly to the moon").with_required_capabilities(["rocketry"]))
        .await
        .expect_err("nobody can");
    assert!(
        matches!(err, OrchestratorError::Task(TaskError::NoEligibleAgent { .. })),
        "{err}"
    );
    assert!(err.to_string().contains("rocketry"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_step_appears_in_the_report_with_the_plugin_that_served_it() {
    let executor = RecordingExecutor::default();
    let audit = TempDir::new("steps");
    // Every agent in the router's top three goes to the balancer, however they scored.
    let orchestrator = nine_plugins(executor, &audit, fast_retries().balance_within(1.0)).await;
    specialists(&orchestrator).await;
    orchestrator
        .execute(IntegrationRequest::new(
            "workflow_tracking",
            json!({"op": "define", "workflow_id": "release", "tasks": ["t-steps"]}),
        ))
        .await
        .expect("defines");
    let report = orchestrator
        .submit_task(
            Task::new("deploy the kubernetes infrastructure")
                .with_id("t-steps")
                .with_kind("deploy")
                .with_workflow("release")
                .with_token(token("alice", SECRET))
                .with_quality_criteria(json!({"coverage": {"min": 0.5}}))
                .with_data(json!({"metrics": {"coverage": 0.9}})),
        )
        .await
        .expect("runs");
    assert_eq!(report.status, TaskStatus::Succeeded, "{report:#?}");
    let served_by = |step: PipelineStep| -> Vec<String> { report.step(step).map(|s| s.plugin.clone()).collect() };
    assert_eq!(served_by(PipelineStep::Authenticate), ["SecurityIntegrationPlugin"]);
    assert_eq!(served_by(PipelineStep::Authorize), ["SecurityIntegrationPlugin"]);
    assert_eq!(served_by(PipelineStep::Analyse), ["EnhancedWorkflowPlugin"]);
    assert_eq!(served_by(PipelineStep::Route), ["ContextAwareRoutingPlugin"]);
    assert_eq!(served_by(PipelineStep::Balance), ["LoadBalancingPlugin"]);
    let assign = served_by(PipelineStep::Assign).join(",");
    assert!(
        assign.contains("SharedStatePlugin") && assign.contains("TaskCoordinationPlugin") && assign.contains("host"),
        "{assign}"
    );
    assert_eq!(served_by(PipelineStep::Execute), ["executor"]);
    assert_eq!(served_by(PipelineStep::QualityGate), ["EnhancedWorkflowPlugin"]);
    let record = served_by(PipelineStep::Record).join(",");
    assert!(
        record.contains("LoadBalancingPlugin")
            && record.contains("ContextAwareRoutingPlugin")
            && record.contains("SharedStatePlugin"),
        "{record}"
    );
    assert!(
        served_by(PipelineStep::Track).iter().all(|p| p == "SharedStatePlugin"),
        "{report:#?}"
    );
    assert_eq!(served_by(PipelineStep::Audit), ["SecurityIntegrationPlugin"]);
    // Nothing failed, and the trace is serializable as the report promises.
    assert!(
        report.steps.iter().all(|s| s.outcome != StepOutcome::Failed),
        "{report:#?}"
    );
    let json = serde_json::to_value(&report).expect("serializes");
    assert_eq!(json["status"], "succeeded");
    assert!(json.get("token").is_none());

    // The shared state and the mapping agree with the report.
    let state = orchestrator
        .execute(IntegrationRequest::new(
            "atomic_updates",
            json!({"op": "get", "key": "task/t-steps"}),
        ))
        .await
        .expect("reads");
    assert_eq!(state.data["value"], "done");
    let mapped = orchestrator
        .execute(IntegrationRequest::new(
            "task_mapping",
            json!({"op": "agent_of", "task_id": "t-steps"}),
        ))
        .await
        .expect("reads");
    assert_eq!(mapped.data["agent_id"], json!(report.agent));
    assert_eq!(mapped.data["state"], "done");
    let progress = orchestrator
        .execute(IntegrationRequest::new(
            "workflow_tracking",
            json!({"op": "progress", "workflow_id": "release"}),
        ))
        .await
        .expect("reads");
    assert_eq!(progress.data["complete"], true, "{}", progress.data);
    assert_eq!(progress.data["done"], 1);
    // The same id again is refused: a task runs once.
    let err = orchestrator
        .submit_task(Task::new("deploy it again").with_id("t-steps"))
        .await
        .expect_err("already done");
    assert!(
        matches!(err, OrchestratorError::Task(TaskError::AlreadySubmitted { .. })),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_quality_gate_retries_then_reports() {
    let executor = RecordingExecutor::default();
    let audit = TempDir::new("gates");
    let orchestrator = nine_plugins(executor.clone(), &audit, fast_retries().max_quality_retries(2)).await;
    specialists(&orchestrator).await;
    let criteria = json!({"coverage": {"min": 0.8}, "lint_errors": {"max": 0}});

    // Poor on the first run, good on the second.
    let report = orchestrator
        .submit_task(
            Task::new("refactor the react components")
                .with_quality_criteria(criteria.clone())
                .with_data(json!({"metrics_by_attempt": [
                    {"coverage": 0.5, "lint_errors": 3},
                    {"coverage": 0.9, "lint_errors": 0},
                ]})),
        )
        .await
        .expect("runs");
    assert_eq!(report.status, TaskStatus::Succeeded, "{report:#?}");
    assert_eq!(report.attempts, 2);
    let gates: Vec<StepOutcome> = report.step(PipelineStep::QualityGate).map(|s| s.outcome).collect();
    assert_eq!(gates, [StepOutcome::Failed, StepOutcome::Done]);
    let failed_gate = report.step(PipelineStep::QualityGate).next().expect("first gate");
    assert!(
        failed_gate
            .detail
            .as_deref()
            .is_some_and(|d| d.contains("coverage") && d.contains("lint_errors")),
        "{failed_gate:?}"
    );
    assert_eq!(report.quality.as_ref().map(|q| q["passed"].clone()), Some(json!(true)));

    // Poor every time: three runs (one plus two retries), then a failed report saying why.
    let report = orchestrator
        .submit_task(
            Task::new("refactor the css")
                .with_quality_criteria(criteria)
                .with_data(json!({"metrics": {"coverage": 0.2, "lint_errors": 9}})),
        )
        .await
        .expect("runs and reports");
    assert_eq!(report.status, TaskStatus::Failed);
    assert_eq!(report.attempts, 3);
    assert_eq!(report.step(PipelineStep::QualityGate).count(), 3);
    assert!(
        report
            .error
            .as_deref()
            .is_some_and(|e| e.contains("2 quality gate(s) failed after 3 run(s)")),
        "{report:#?}"
    );
    let quality = report.quality.expect("the last gate report");
    assert_eq!(quality["passed"], false);
    assert_eq!(quality["failed"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retryable_failures_retry_with_backoff_and_move_to_another_agent() {
    let executor = RecordingExecutor::default();
    let audit = TempDir::new("retries");
    let options = fast_retries().max_attempts(4).same_agent_attempts(2);
    let orchestrator = nine_plugins(executor.clone(), &audit, options).await;
    for id in ["w-1", "w-2"] {
        orchestrator
            .register_agent(AgentConfig::new(id).with_id(id).with_capabilities(["build"]))
            .await
            .expect("registers");
    }
    let report = orchestrator
        .submit_task(
            Task::new("build the crate")
                .with_id("t-retry")
                .with_required_capabilities(["build"])
                .with_data(json!({"fail_attempts": 2})),
        )
        .await
        .expect("runs");
    assert_eq!(report.status, TaskStatus::Succeeded, "{report:#?}");
    assert_eq!(report.attempts, 3);
    let agents: Vec<String> = executor.runs().into_iter().map(|(_, agent, _)| agent).collect();
    assert_eq!(agents[0], agents[1], "two attempts on the first agent");
    assert_ne!(agents[1], agents[2], "then another agent: {agents:?}");
    let executes: Vec<StepOutcome> = report.step(PipelineStep::Execute).map(|s| s.outcome).collect();
    assert_eq!(executes, [StepOutcome::Failed, StepOutcome::Failed, StepOutcome::Done]);

    // A failure that is not retryable ends the task at once.
    let report = orchestrator
        .submit_task(
            Task::new("build the broken crate")
                .with_required_capabilities(["build"])
                .with_data(json!({"fatal": true})),
        )
        .await
        .expect("reports");
    assert_eq!(report.status, TaskStatus::Failed);
    assert_eq!(report.attempts, 1);
    assert_eq!(report.error.as_deref(), Some("the input cannot be processed"));
    // Both agents are free again.
    for agent in orchestrator.agents() {
        assert_eq!(agent.load, 0, "{agent:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sleeping_agent_is_woken() {
    let executor = RecordingExecutor::default();
    let audit = TempDir::new("sleep");
    let orchestrator = nine_plugins(executor, &audit, fast_retries()).await;
    let id = orchestrator
        .register_agent(AgentConfig::new("night-owl").with_capabilities(["batch"]))
        .await
        .expect("registers");
    orchestrator
        .execute(IntegrationRequest::new(
            "sleep_wake_cycles",
            json!({"op": "sleep", "agent_id": id}),
        ))
        .await
        .expect("sleeps");
    assert_eq!(orchestrator.agent_status(&id), Some(AgentStatus::Sleeping));
    let report = orchestrator
        .submit_task(Task::new("run the nightly batch").with_required_capabilities(["batch"]))
        .await
        .expect("runs");
    assert_eq!(report.status, TaskStatus::Succeeded);
    let wake = report.step(PipelineStep::Wake).next().expect("a wake step");
    assert_eq!(wake.plugin, "ContextManagementPlugin", "{wake:?}");
    assert_eq!(wake.outcome, StepOutcome::Done);
    assert_eq!(orchestrator.agent_status(&id), Some(AgentStatus::Active));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_agent_never_gets_a_second_task_and_tasks_beyond_capacity_wait_then_complete() {
    let executor = RecordingExecutor::default();
    let audit = TempDir::new("capacity");
    let orchestrator = nine_plugins(executor.clone(), &audit, fast_retries()).await;
    for id in ["solo-1", "solo-2"] {
        orchestrator
            .register_agent(AgentConfig::new(id).with_id(id).with_capabilities(["render"]))
            .await
            .expect("registers");
    }
    let mut handles = Vec::new();
    for i in 0..12 {
        let orchestrator = orchestrator.clone();
        handles.push(tokio::spawn(async move {
            orchestrator
                .submit_task(
                    Task::new(format!("render frame {i}"))
                        .with_required_capabilities(["render"])
                        .with_data(json!({"sleep_ms": 20})),
                )
                .await
        }));
    }
    let mut queued = 0;
    for handle in handles {
        let report = handle.await.expect("joins").expect("completes");
        assert_eq!(report.status, TaskStatus::Succeeded);
        queued += usize::from(report.step(PipelineStep::Queue).next().is_some());
    }
    assert!(queued >= 10, "12 tasks on 2 slots: at least 10 waited ({queued})");
    assert_eq!(executor.max_running("solo-1"), 1);
    assert_eq!(executor.max_running("solo-2"), 1);
    assert_eq!(executor.runs().len(), 12);
    assert_eq!(orchestrator.queued_tasks(), 0);
    for agent in orchestrator.agents() {
        assert_eq!(agent.load, 0);
        assert_eq!(agent.status, AgentStatus::Active);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_tasks_run_by_priority_and_a_full_queue_or_a_passed_deadline_says_which() {
    let executor = RecordingExecutor::default();
    let audit = TempDir::new("queue");
    let orchestrator = nine_plugins(executor.clone(), &audit, fast_retries().max_queued(3)).await;
    orchestrator
        .register_agent(AgentConfig::new("one").with_id("one").with_capabilities(["render"]))
        .await
        .expect("registers");
    // Occupy the only slot, then queue three tasks of rising priority.
    let blocker = {
        let orchestrator = orchestrator.clone();
        tokio::spawn(async move {
            orchestrator
                .submit_task(
                    Task::new("long render")
                        .with_id("blocker")
                        .with_data(json!({"sleep_ms": 300})),
                )
                .await
        })
    };
    assert!(eventually(|| executor.runs().len() == 1).await);
    let mut waiting = Vec::new();
    for (id, priority) in [("low", 0), ("mid", 5), ("high", 9)] {
        let submitter = orchestrator.clone();
        waiting.push(tokio::spawn(async move {
            submitter
                .submit_task(Task::new("render").with_id(id).with_priority(priority))
                .await
        }));
        let expected = waiting.len();
        assert!(eventually(|| orchestrator.queued_tasks() == expected).await);
    }
    // The queue holds three: a fourth is refused, saying so.
    let err = orchestrator
        .submit_task(Task::new("render").with_id("overflow"))
        .await
        .expect_err("queue full");
    assert!(
        matches!(err, OrchestratorError::Task(TaskError::QueueFull { queued: 3, .. })),
        "{err}"
    );
    // A deadline shorter than the wait.
    let err = orchestrator
        .submit_task(
            Task::new("render")
                .with_id("hurried")
                .with_deadline(Duration::from_millis(1)),
        )
        .await;
    assert!(err.is_err());

    blocker.await.expect("joins").expect("runs");
    for handle in waiting {
        handle.await.expect("joins").expect("runs");
    }
    let order: Vec<String> = executor.runs().into_iter().map(|(task, _, _)| task).collect();
    assert_eq!(order, ["blocker", "high", "mid", "low"]);

    // A deadline passing in the queue.
    let blocker = {
        let orchestrator = orchestrator.clone();
        tokio::spawn(async move {
            orchestrator
                .submit_task(Task::new("long render").with_data(json!({"sleep_ms": 300})))
                .await
        })
    };
    assert!(eventually(|| executor.runs().len() == 5).await);
    let err = orchestrator
        .submit_task(Task::new("render").with_deadline(Duration::from_millis(30)))
        .await
        .expect_err("deadline");
    assert!(
        matches!(err, OrchestratorError::Task(TaskError::DeadlinePassed { .. })),
        "{err}"
    );
    assert!(err.to_string().contains("waiting for a free agent"), "{err}");
    blocker.await.expect("joins").expect("runs");
    assert_eq!(orchestrator.queued_tasks(), 0);
}

async fn eventually(mut pred: impl FnMut() -> bool) -> bool {
    for _ in 0..400 {
        if pred() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_registered_while_tasks_wait_takes_them() {
    let executor = RecordingExecutor::default();
    let orchestrator = Orchestrator::builder()
        .executor(executor.clone())
        .build()
        .await
        .expect("builds");
    orchestrator
        .register_agent(AgentConfig::new("busy").with_id("busy").with_capabilities(["gpu"]))
        .await
        .expect("registers");
    let first = {
        let orchestrator = orchestrator.clone();
        tokio::spawn(async move {
            orchestrator
                .submit_task(
                    Task::new("train")
                        .with_required_capabilities(["gpu"])
                        .with_data(json!({"sleep_ms": 500})),
                )
                .await
        })
    };
    assert!(eventually(|| executor.runs().len() == 1).await);
    let second = {
        let orchestrator = orchestrator.clone();
        tokio::spawn(async move {
            orchestrator
                .submit_task(Task::new("infer").with_required_capabilities(["gpu"]))
                .await
        })
    };
    assert!(eventually(|| orchestrator.queued_tasks() == 1).await);
    orchestrator
        .register_agent(AgentConfig::new("fresh").with_id("fresh").with_capabilities(["gpu"]))
        .await
        .expect("registers");
    let report = tokio::time::timeout(Duration::from_millis(400), second)
        .await
        .expect("served before the first task ends")
        .expect("joins")
        .expect("runs");
    assert_eq!(report.agent.as_ref().map(AgentId::as_str), Some("fresh"));
    first.await.expect("joins").expect("runs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slash_command_is_run_by_the_command_not_by_an_agent() {
    let executor = RecordingExecutor::default();
    let audit = TempDir::new("command");
    let orchestrator = nine_plugins(executor.clone(), &audit, fast_retries()).await;
    specialists(&orchestrator).await;
    let report = orchestrator
        .submit_task(Task::new("/analyze write the parser, then fuzz it"))
        .await
        .expect("runs");
    assert_eq!(report.status, TaskStatus::Succeeded, "{report:#?}");
    assert!(report.agent.is_none());
    let command = report.step(PipelineStep::Command).next().expect("a command step");
    assert_eq!(command.plugin, "EnhancedWorkflowPlugin");
    assert_eq!(
        report.output.as_ref().map(|o| o["dispatched_to"].clone()),
        Some(json!("extended_thinking"))
    );
    assert!(executor.runs().is_empty());
    let report = orchestrator
        .submit_task(Task::new("/no-such-command"))
        .await
        .expect("reports");
    assert_eq!(report.status, TaskStatus::Failed);
    assert!(report.error.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_tasks_are_refused_with_what_is_wrong() {
    let orchestrator = Orchestrator::builder().build().await.expect("builds");
    orchestrator
        .register_agent(AgentConfig::new("a"))
        .await
        .expect("registers");
    let err = orchestrator.submit_task(Task::new("   ")).await.expect_err("empty");
    assert!(err.to_string().contains("description is empty"), "{err}");
    let err = orchestrator
        .submit_task(Task::new("x").with_quality_criteria(json!([1, 2])))
        .await
        .expect_err("criteria");
    assert!(
        err.to_string().contains("`quality_criteria` must be an object"),
        "{err}"
    );
    // Deserialized from JSON: the id is generated when absent, unknown shapes are errors.
    let task: Task = serde_json::from_value(json!({"description": "from json", "priority": 3})).expect("parses");
    assert!(task.id.starts_with("task-"));
    assert!(serde_json::from_value::<Task>(json!({"priority": 3})).is_err());
    assert!(format!("{:?}", Task::new("x").with_token("secret-token")).contains("(hidden)"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_thousand_concurrent_tasks_all_complete_exactly_once() {
    let executor = RecordingExecutor::default();
    let audit = TempDir::new("many");
    let orchestrator = nine_plugins(executor.clone(), &audit, fast_retries().max_queued(20_000)).await;
    for i in 0..8 {
        orchestrator
            .register_agent(
                AgentConfig::new(format!("w{i}"))
                    .with_capabilities(["work"])
                    .with_capacity(16),
            )
            .await
            .expect("registers");
    }
    const TASKS: usize = 20_000;
    let completed = Arc::new(AtomicUsize::new(0));
    let attempts = Arc::new(AtomicU32::new(0));
    let mut handles = Vec::with_capacity(TASKS);
    for i in 0..TASKS {
        let orchestrator = orchestrator.clone();
        let completed = Arc::clone(&completed);
        let attempts = Arc::clone(&attempts);
        handles.push(tokio::spawn(async move {
            let report = orchestrator
                .submit_task(
                    Task::new(format!("work item {i}"))
                        .with_id(format!("many-{i}"))
                        .with_required_capabilities(["work"]),
                )
                .await
                .expect("completes");
            assert_eq!(report.status, TaskStatus::Succeeded);
            attempts.fetch_add(report.attempts, Ordering::Relaxed);
            completed.fetch_add(1, Ordering::Relaxed);
        }));
    }
    for handle in handles {
        handle.await.expect("joins");
    }
    assert_eq!(completed.load(Ordering::Relaxed), TASKS);
    assert_eq!(attempts.load(Ordering::Relaxed) as usize, TASKS);
    let runs = executor.runs();
    assert_eq!(runs.len(), TASKS, "each task ran once");
    let mut ids: Vec<&str> = runs.iter().map(|(task, _, _)| task.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), TASKS, "no task ran twice");
    for agent in orchestrator.agents() {
        assert_eq!(agent.load, 0, "{agent:?}");
        assert!(executor.max_running(agent.id.as_str()) <= 16);
    }
    assert_eq!(orchestrator.queued_tasks(), 0);
    // The shared state agrees: every task is done.
    for i in (0..TASKS).step_by(997) {
        let state = orchestrator
            .execute(IntegrationRequest::new(
                "atomic_updates",
                json!({"op": "get", "key": format!("task/many-{i}")}),
            ))
            .await
            .expect("reads");
        assert_eq!(state.data["value"], "done");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quality_reruns_do_not_use_up_the_retry_budget() {
    // Regression: gate re-runs were counted against `max_attempts`, so a retryable failure
    // after two failed gates ended the task without a retry.
    let executor = RecordingExecutor::default();
    let audit = TempDir::new("budgets");
    let orchestrator = nine_plugins(
        executor.clone(),
        &audit,
        fast_retries().max_attempts(2).max_quality_retries(3),
    )
    .await;
    specialists(&orchestrator).await;
    // Runs 1 and 2 fail the gate, run 3 fails retryably, run 4 passes.
    let report = orchestrator
        .submit_task(
            Task::new("tune the database query planner")
                .with_quality_criteria(json!({"coverage": {"min": 0.8}}))
                .with_data(json!({
                    "fail_on_attempts": [3],
                    "metrics_by_attempt": [{"coverage": 0.1}, {"coverage": 0.2}, {}, {"coverage": 0.9}],
                })),
        )
        .await
        .expect("runs");
    assert_eq!(report.status, TaskStatus::Succeeded, "{report:#?}");
    assert_eq!(report.attempts, 4);
    assert_eq!(report.quality.as_ref().map(|q| q["passed"].clone()), Some(json!(true)));
    assert!(report.error.is_none());
}
