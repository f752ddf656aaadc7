//! What can be set about the pipeline: [`PipelineOptions`] in code, `[orchestrator.pipeline]` in
//! a configuration file.

use serde::Deserialize;
use std::time::Duration;

/// Which submitted tasks get an `audit_logging` record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum AuditPolicy {
    /// Tasks submitted with a token (there is a subject to hold to account), and every task
    /// refused for its token. The default: an audit append is `fsync`ed, which would otherwise
    /// bound the whole pipeline's throughput by the disk's.
    #[default]
    Authenticated,
    /// Every task.
    Always,
    /// None.
    Never,
}

/// How the pipeline behind [`Orchestrator::submit_task`](crate::Orchestrator::submit_task)
/// waits, retries and balances. Set with
/// [`OrchestratorBuilder::pipeline`](crate::OrchestratorBuilder::pipeline), or in the
/// `[orchestrator.pipeline]` table of the configuration file.
///
/// ```
/// use orchestrator_core::PipelineOptions;
/// use std::time::Duration;
/// let options = PipelineOptions::default()
///     .max_attempts(5)
///     .retry_backoff(Duration::from_millis(10))
///     .task_timeout(Duration::from_secs(120));
/// assert_eq!(options.max_queued, 10_000);
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct PipelineOptions {
    /// Tasks that may wait for a free agent at once (default 10,000); past it, a task is
    /// refused with [`TaskError::QueueFull`](crate::TaskError::QueueFull).
    pub max_queued: usize,
    /// Executor runs that may fail (retryably) before a task is given up (default 3, at least
    /// 1). Re-runs after a failed quality gate do not count here (see
    /// [`max_quality_retries`](Self::max_quality_retries)).
    pub max_attempts: u32,
    /// The wait before the first retry, doubled for each further one, at most a second
    /// (default 50 ms).
    pub retry_backoff: Duration,
    /// Attempts on one agent before a retry moves to another (default 2).
    pub same_agent_attempts: u32,
    /// Re-runs after a failed quality gate (default 2).
    pub max_quality_retries: u32,
    /// The bound on one executor run (default 30 s); a run that outlasts it is a retryable
    /// failure.
    pub task_timeout: Duration,
    /// How many of the router's best picks the load balancer chooses among (default 3; 1
    /// leaves the choice to the router).
    pub balance_among: usize,
    /// Only picks whose routing score is within this much of the best one's are handed to the
    /// balancer (default 0.1, on scores from 0 to 1): the balancer spreads load among agents
    /// the router finds about as good, never from a specialist to an agent that merely has room.
    pub balance_within: f64,
    /// Which tasks are audited.
    pub audit: AuditPolicy,
    /// Whether each finished task is announced on the event bus as a custom event
    /// `task_completed` (source `orchestrator`; `{"task_id", "status", "agent_id", "attempts",
    /// "correlation_id", "duration_ms"}`), to every plugin's `on_event` and every
    /// [`subscribe_events`](crate::Orchestrator::subscribe_events) receiver. Off by default:
    /// delivering one event to nine plugins costs more than the rest of the pipeline's
    /// bookkeeping (about 25 us a task, measured by `cargo bench --bench pipeline`), and plugins
    /// that follow tasks have the `task_finish` operation feed, which costs nothing for those
    /// that do not ask for it.
    pub task_events: bool,
}

impl Default for PipelineOptions {
    fn default() -> Self {
        Self {
            max_queued: 10_000,
            max_attempts: 3,
            retry_backoff: Duration::from_millis(50),
            same_agent_attempts: 2,
            max_quality_retries: 2,
            task_timeout: Duration::from_secs(30),
            balance_among: 3,
            balance_within: 0.1,
            audit: AuditPolicy::Authenticated,
            task_events: false,
        }
    }
}

impl PipelineOptions {
    /// Sets [`max_queued`](Self::max_queued).
    #[must_use]
    pub fn max_queued(mut self, n: usize) -> Self {
        self.max_queued = n;
        self
    }
    /// Sets [`max_attempts`](Self::max_attempts) (at least 1).
    #[must_use]
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = n.max(1);
        self
    }
    /// Sets [`retry_backoff`](Self::retry_backoff).
    #[must_use]
    pub fn retry_backoff(mut self, backoff: Duration) -> Self {
        self.retry_backoff = backoff;
        self
    }
    /// Sets [`same_agent_attempts`](Self::same_agent_attempts) (at least 1).
    #[must_use]
    pub fn same_agent_attempts(mut self, n: u32) -> Self {
        self.same_agent_attempts = n.max(1);
        self
    }
    /// Sets [`max_quality_retries`](Self::max_quality_retries).
    #[must_use]
    pub fn max_quality_retries(mut self, n: u32) -> Self {
        self.max_quality_retries = n;
        self
    }
    /// Sets [`task_timeout`](Self::task_timeout).
    #[must_use]
    pub fn task_timeout(mut self, timeout: Duration) -> Self {
        self.task_timeout = timeout;
        self
    }
    /// Sets [`balance_among`](Self::balance_among) (at least 1).
    #[must_use]
    pub fn balance_among(mut self, n: usize) -> Self {
        self.balance_among = n.max(1);
        self
    }
    /// Sets [`balance_within`](Self::balance_within) (negative or NaN reads as 0).
    #[must_use]
    pub fn balance_within(mut self, margin: f64) -> Self {
        self.balance_within = if margin.is_nan() { 0.0 } else { margin.max(0.0) };
        self
    }
    /// Sets [`task_events`](Self::task_events).
    #[must_use]
    pub fn task_events(mut self, on: bool) -> Self {
        self.task_events = on;
        self
    }
    /// Sets [`audit`](Self::audit).
    #[must_use]
    pub fn audit(mut self, policy: AuditPolicy) -> Self {
        self.audit = policy;
        self
    }
}

/// The `[orchestrator.pipeline]` table of a configuration file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PipelineTable {
    max_queued: Option<usize>,
    max_attempts: Option<u32>,
    retry_backoff_ms: Option<u64>,
    same_agent_attempts: Option<u32>,
    max_quality_retries: Option<u32>,
    task_timeout_ms: Option<u64>,
    balance_among: Option<usize>,
    balance_within: Option<f64>,
    audit: Option<AuditPolicy>,
    task_events: Option<bool>,
}

impl PipelineTable {
    pub(crate) fn apply(self, mut options: PipelineOptions) -> PipelineOptions {
        if let Some(n) = self.max_queued {
            options = options.max_queued(n);
        }
        if let Some(n) = self.max_attempts {
            options = options.max_attempts(n);
        }
        if let Some(ms) = self.retry_backoff_ms {
            options = options.retry_backoff(Duration::from_millis(ms));
        }
        if let Some(n) = self.same_agent_attempts {
            options = options.same_agent_attempts(n);
        }
        if let Some(n) = self.max_quality_retries {
            options = options.max_quality_retries(n);
        }
        if let Some(ms) = self.task_timeout_ms {
            options = options.task_timeout(Duration::from_millis(ms));
        }
        if let Some(n) = self.balance_among {
            options = options.balance_among(n);
        }
        if let Some(margin) = self.balance_within {
            options = options.balance_within(margin);
        }
        if let Some(policy) = self.audit {
            options = options.audit(policy);
        }
        if let Some(on) = self.task_events {
            options = options.task_events(on);
        }
        options
    }
}
