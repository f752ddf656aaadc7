//! `TaskCoordinationPlugin`: hands out agents on request (queued by priority until one fits),
//! keeps the task <-> agent mapping, and reports each agent's workload, for applications that
//! embed the orchestrator (statically, or as a dynamic library built from this crate).
//!
//! # Which agent fits a request
//!
//! An agent fits when it is registered, its status is `active` or `sleeping` (not `busy` or
//! `offline`), it declares every required capability, and its *effective load* is below its
//! capacity and below `max_load` when given. The effective load is
//! `max(host load, live tasks) + reservations`: the load the host reports and the tasks mapped
//! to the agent here and not completed usually count the same work (a task mapped here is the
//! one the orchestrator runs), so the larger of the two is taken, never their sum; reservations
//! are capacity promised to requests that have no task yet, which the host never sees, so they
//! are added on top. (With capacity 2 and host load 1, one request is fulfilled on the agent and
//! a second one waits.) Among fitting agents the least effective load wins; ties go to the
//! lowest id.
//!
//! A fulfilled request holds a **reservation** (one unit of load) on its agent until it is
//! released (`release`, or `cancel`), or until `task_mapping` `assign` names it with
//! `request_id`: the reservation then becomes that task. The plugin releases a reservation on
//! its own (`status` then says `"released"` with a `reason`) in two cases:
//! - it was held for `reservation_ttl_ms` (default 5 minutes, counted from the fulfilment)
//!   without being released or turned into a task: `"reason": "reservation expired"`. A client
//!   that dies after a fulfilled request therefore holds capacity for a bounded time only;
//! - its agent deregistered (the host's `AgentDeregistered` event): `"reason": "agent
//!   deregistered"`. Nothing is announced. A queue scan that raced with the deregistration
//!   (its snapshot of the fleet taken before) does not give the agent work either. The agent's
//!   live tasks stay mapped to it (`agent_of`, `tasks_of` and `workload_analysis` still show
//!   them): the caller reassigns them elsewhere with `"reassign": true`, or completes them.
//!
//! A request no agent fits waits in the **queue**, which is served in priority order (higher
//! first, equal priorities first come, first served) whenever capacity may have appeared: on the
//! host's `AgentRegistered` and `AgentStatusChanged` (to active or sleeping) events, when a task
//! completes or is moved off an agent, when a reservation is released, and at every
//! `agent_requests` operation. A queued request that nothing fits does not hold up those behind
//! it that something does fit. Each request fulfilled from the queue is announced with a custom
//! event `agent_request_fulfilled`, `{"request_id", "agent_id", "priority", "waited_ms"}`.
//!
//! **Timeouts** are evaluated lazily, against the host's monotonic clock: at every operation of
//! every capability, at every host event and at every queue scan, requests whose deadline has
//! passed become `timed_out` (their `waited_ms` is their timeout), and reservations held past
//! `reservation_ttl_ms` are released (and the queue served, since capacity appeared). Nothing
//! sleeps or runs in the background, so an expired request or reservation is reported as such
//! the next time anyone looks, which is the only time it can matter. A `timeout_ms` of 0 asks
//! for an agent now or never.
//!
//! # Capabilities
//!
//! **`agent_requests`**: request an agent that meets requirements. `op` selects the operation
//! (`request` when absent).
//! - `{"op": "request", "requirements"?: {"capabilities"?: [string], "max_load"?: integer},
//!   "priority"?: integer (default 0, higher first), "timeout_ms"?: integer (default: the
//!   configured `default_timeout_ms`, else no limit)}` -> `{"request_id": "req-N", "status":
//!   "fulfilled" | "queued" | "timed_out", "agent_id"? (when fulfilled), "priority", "position"?
//!   (when queued: 0 is served next)}`. A request that would be queued beyond `max_queued` is
//!   refused with an "unavailable" error saying so. A fulfilled request's reservation lasts
//!   `reservation_ttl_ms` (see above) unless it is released or turned into a task before.
//! - `{"op": "status", "request_id"}` -> `{"request_id", "status": "fulfilled" | "queued" |
//!   "cancelled" | "timed_out" | "released", "agent_id"?, "priority", "requirements",
//!   "waited_ms" (time spent queued: until now, or until it left the queue), "task_id"? (the task
//!   its reservation became), "reservation_expires_in_ms"? (while it holds its reservation),
//!   "reason"? (when the plugin released the reservation on its own: "reservation expired" or
//!   "agent deregistered"), "position"?}`
//! - `{"op": "cancel", "request_id"}` -> `{"request_id", "status": "cancelled"}` for a queued
//!   request; for a fulfilled one that still holds its reservation, the reservation is released:
//!   `{"request_id", "status": "released", "agent_id"}`. Anything else (already cancelled,
//!   timed out, released, or turned into a task) is refused, saying why.
//! - `{"op": "release", "request_id"}` -> `{"request_id", "status": "released", "agent_id"}`
//! - `{"op": "queue"}` -> `{"queue": [{"request_id", "priority", "requirements", "waited_ms",
//!   "expires_in_ms"?}], "length", "max_queued"}`, in the order the requests would be served.
//!
//! **`task_mapping`**: tasks and agents, both ways. `op` selects the operation (`agent_of` when
//! absent).
//! - `{"op": "agent_of", "task_id"}` -> `{"task_id", "agent_id" (null when unmapped), "state":
//!   "assigned" | "running" | "done" | "failed" | "unmapped"}` (a completed task names the agent
//!   that ran it)
//! - `{"op": "assign", "task_id", "agent_id", "request_id"?, "reassign"?: bool}` ->
//!   `{"task_id", "agent_id", "state", "previous_agent"? (when moved), "request_id"?}`. The
//!   agent must be registered. A task mapped to another agent and not completed is refused
//!   unless `"reassign": true` (it then starts over as assigned on the new agent). With
//!   `request_id`, the request's reservation becomes the task (`agent_id` may then be left out;
//!   if given, it must be the reserved agent). Assigning a task to the agent it is already on
//!   changes nothing; a completed task may be assigned again, to run again. Assigning does not
//!   check the agent's capacity: that is what `agent_requests` is for.
//! - `{"op": "start", "task_id"}` -> `{"task_id", "agent_id", "state": "running"}`
//! - `{"op": "complete", "task_id", "success"?: bool (default true), "duration_ms"?: integer}`
//!   -> `{"task_id", "agent_id", "success", "duration_ms"}`; without `duration_ms` the duration
//!   is measured on the host's clock from the start (or, if never started, the assignment).
//!   Completing an unknown or already completed task is refused.
//! - `{"op": "tasks_of", "agent_id"}` -> `{"agent_id", "task_ids": [..]}`: the agent's tasks
//!   not completed, sorted. An agent neither registered nor known here is refused.
//!
//! A task stays mapped to its agent when the agent deregisters: moving it is the caller's call
//! (`assign` with `"reassign": true`), and until then `agent_of` and `tasks_of` still show it
//! there.
//!
//! **`workload_analysis`**: per-agent figures.
//! - request: `{"agent_id"?}` (absent: every agent)
//! - response: `{"agents": [{"agent_id", "registered", "status"?, "load"? (the host's, when
//!   registered), "assigned" (mapped, not started), "running" (started, not completed), "done",
//!   "failed", "mean_ms", "p95_ms" (over completed tasks' durations), "utilisation" ((assigned +
//!   running + reserved) / capacity), "capacity", "reserved"}], "totals": {"agents", "assigned",
//!   "running", "reserved", "done", "failed", "mean_ms", "p95_ms"}, "queued"}`. Every
//!   registered agent is listed (zeros when idle), and so is every agent with tasks or history
//!   here that has since deregistered (`registered: false`, last known capacity, its live tasks
//!   still counted as assigned or running until they are reassigned or completed). Rows are
//!   sorted by id; totals cover the rows listed. An unknown `agent_id` is refused.
//!
//! Durations are kept in an HDR histogram per agent (exact below 256 ms, within 1% above) with
//! an exact sum for the mean: bounded memory however many tasks complete. The plugin remembers
//! the last 10,000 settled requests and 100,000 completed tasks for `status` and `agent_of`
//! (counts and durations are kept for good).
//!
//! Malformed requests (data that is not an object, a missing or mistyped field, an unknown
//! field, an unknown `op`, an unknown request id) are refused with
//! `PluginError::invalid_request`, saying what was expected. `null` data reads as `{}`.
//!
//! # Configuration
//!
//! ```toml
//! [TaskCoordinationPlugin]
//! max_queued = 10000           # queued agent requests at most (default 10,000); 0: never queue
//! default_timeout_ms = 30000   # for requests that give no timeout_ms (default: wait forever)
//! reservation_ttl_ms = 300000  # how long a fulfilled request may hold its reservation without
//!                              # releasing it or turning it into a task (default 300,000: 5
//!                              # minutes; at least 1)
//! ```
//!
//! Unknown keys are refused at initialization, naming the key, and so is a `reservation_ttl_ms`
//! of 0.
//!
//! # Consistency
//!
//! All state sits behind one mutex: reservations, the queue and both directions of the
//! mapping change together (a reservation becomes a task, a completion lets a queued request
//! in), so every operation is atomic and the two directions never disagree. The lock is held for
//! in-memory work only, never across an `.await`; host snapshots are taken before it.

mod coordinator;
mod fit;
mod input;
mod queue;
mod workload;

use coordinator::{Coordinator, DEFAULT_MAX_QUEUED, DEFAULT_RESERVATION_TTL_MS, Fulfilment};
use fit::{Member, Requirements, takes_work};
use input::Object;
use plugin_api::prelude::*;
use serde::Deserialize;
use serde_json::Value;
use std::sync::{Mutex, MutexGuard, OnceLock};

/// The plugin's name.
pub const NAME: &str = "TaskCoordinationPlugin";

/// The custom event announcing a queued request that an agent took.
const FULFILLED_EVENT: &str = "agent_request_fulfilled";

const REQUESTS_EXPECTED: &str = "{\"op\": \"request\" (default), \"requirements\"?: {\"capabilities\"?: [string], \"max_load\"?: integer}, \"priority\"?: integer, \"timeout_ms\"?: integer}, or {\"op\": \"status\" | \"cancel\" | \"release\", \"request_id\": string}, or {\"op\": \"queue\"}";
const REQUEST_EXPECTED: &str = "{\"op\": \"request\" (default), \"requirements\"?: {\"capabilities\"?: [string], \"max_load\"?: integer}, \"priority\"?: integer, \"timeout_ms\"?: integer}";
const REQUIREMENTS_EXPECTED: &str = "\"requirements\": {\"capabilities\"?: [string], \"max_load\"?: integer}";
const BY_ID_EXPECTED: &str =
    "{\"op\": \"status\" | \"cancel\" | \"release\", \"request_id\": string (as returned by op `request`)}";
const QUEUE_EXPECTED: &str = "{\"op\": \"queue\"}";
const MAPPING_EXPECTED: &str = "{\"op\": \"agent_of\" (default) | \"start\", \"task_id\"}, or {\"op\": \"assign\", \"task_id\", \"agent_id\", \"request_id\"?, \"reassign\"?: bool}, or {\"op\": \"complete\", \"task_id\", \"success\"?: bool, \"duration_ms\"?: integer}, or {\"op\": \"tasks_of\", \"agent_id\"}";
const TASK_EXPECTED: &str = "{\"op\": \"agent_of\" (default) | \"start\", \"task_id\": string}";
const ASSIGN_EXPECTED: &str = "{\"op\": \"assign\", \"task_id\": string, \"agent_id\": string (may be left out with request_id), \"request_id\"?: string, \"reassign\"?: bool}";
const COMPLETE_EXPECTED: &str =
    "{\"op\": \"complete\", \"task_id\": string, \"success\"?: bool (default true), \"duration_ms\"?: integer}";
const TASKS_OF_EXPECTED: &str = "{\"op\": \"tasks_of\", \"agent_id\": string}";
const WORKLOAD_EXPECTED: &str = "{\"agent_id\"?: string} (absent: every agent)";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct CoordinationConfig {
    max_queued: usize,
    default_timeout_ms: Option<u64>,
    reservation_ttl_ms: u64,
}

impl Default for CoordinationConfig {
    fn default() -> Self {
        Self {
            max_queued: DEFAULT_MAX_QUEUED,
            default_timeout_ms: None,
            reservation_ttl_ms: DEFAULT_RESERVATION_TTL_MS,
        }
    }
}

/// Agent requests, the task <-> agent mapping and workload figures. Call `initialize` (the
/// orchestrator does, at registration) before anything else; until then it answers
/// "unavailable".
#[derive(Default)]
pub struct TaskCoordinationPlugin {
    host: OnceLock<HostHandle>,
    state: Mutex<Coordinator>,
}

impl std::fmt::Debug for TaskCoordinationPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskCoordinationPlugin").finish_non_exhaustive()
    }
}

/// A snapshot of every agent, with capabilities only when needed (they cost a copy each).
fn fleet(host: &HostHandle, with_capabilities: bool) -> Vec<Member> {
    if with_capabilities {
        host.agents().into_iter().map(Member::from).collect()
    } else {
        host.agent_loads().into_iter().map(Member::from).collect()
    }
}

fn announce(host: &HostHandle, served: Vec<Fulfilment>) {
    for fulfilment in served {
        host.emit(FULFILLED_EVENT, fulfilment.to_json());
    }
}

fn parse_requirements(obj: &Object) -> Result<Requirements, PluginError> {
    let empty = Object::new();
    let requirements = match obj.get("requirements") {
        None | Some(Value::Null) => &empty,
        Some(Value::Object(map)) => map,
        Some(other) => {
            return Err(PluginError::invalid_request(format!(
                "`requirements` must be an object, not {}; expected {REQUIREMENTS_EXPECTED}",
                input::kind(other)
            )));
        }
    };
    input::only(
        requirements,
        &["capabilities", "max_load"],
        "`requirements`",
        REQUIREMENTS_EXPECTED,
    )?;
    Ok(Requirements {
        capabilities: input::opt_strings(requirements, "capabilities", REQUIREMENTS_EXPECTED)?.unwrap_or_default(),
        max_load: input::opt_u32(requirements, "max_load", REQUIREMENTS_EXPECTED)?,
    })
}

impl TaskCoordinationPlugin {
    fn host(&self) -> Result<&HostHandle, PluginError> {
        self.host
            .get()
            .ok_or_else(|| PluginError::unavailable(format!("{NAME} is not initialized")))
    }

    fn lock(&self) -> MutexGuard<'_, Coordinator> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Serves the queue from the whole fleet.
    fn serve_fleet(&self, host: &HostHandle, now: u64) {
        let with_capabilities = {
            let state = self.lock();
            if !state.has_queued() {
                return;
            }
            state.needs_capabilities()
        };
        let fleet = fleet(host, with_capabilities);
        let served = self.lock().serve(&fleet, now);
        announce(host, served);
    }

    /// Expires what is due and serves the queue from the whole fleet.
    fn refresh(&self, host: &HostHandle, now: u64) {
        self.lock().expire(now);
        self.serve_fleet(host, now);
    }

    /// After an expiry pass that released reservations (`freed`), serves the queue from the
    /// whole fleet: the released slots may be on any agent.
    fn serve_freed(&self, host: &HostHandle, freed: bool, now: u64) {
        if freed {
            self.serve_fleet(host, now);
        }
    }

    /// Serves the queue from one agent, whose capacity may have grown.
    fn serve_agent(&self, host: &HostHandle, agent: &str, now: u64) {
        if !self.lock().has_queued() {
            return;
        }
        let Some(info) = host.agent(agent) else { return };
        let served = self.lock().serve(&[Member::from(info)], now);
        announce(host, served);
    }

    fn agent_requests(&self, host: &HostHandle, data: &Value) -> Result<Value, PluginError> {
        let empty = Object::new();
        let obj = input::object(data, &empty, REQUESTS_EXPECTED)?;
        let op = input::op(
            obj,
            &["request", "status", "cancel", "release", "queue"],
            REQUESTS_EXPECTED,
        )?;
        let now = host.monotonic_ns();
        match op {
            "request" => {
                input::only(
                    obj,
                    &["op", "requirements", "priority", "timeout_ms"],
                    "op `request`",
                    REQUEST_EXPECTED,
                )?;
                let requirements = parse_requirements(obj)?;
                let priority = input::opt_i64(obj, "priority", REQUEST_EXPECTED)?.unwrap_or(0);
                let timeout_ms = input::opt_u64(obj, "timeout_ms", REQUEST_EXPECTED)?;
                let with_capabilities = !requirements.capabilities.is_empty() || self.lock().needs_capabilities();
                let fleet = fleet(host, with_capabilities);
                let (answer, served) = self.lock().request(requirements, priority, timeout_ms, &fleet, now)?;
                announce(host, served);
                Ok(answer)
            }
            "queue" => {
                input::only(obj, &["op"], "op `queue`", QUEUE_EXPECTED)?;
                self.refresh(host, now);
                Ok(self.lock().queue_report(now))
            }
            _ => {
                input::only(obj, &["op", "request_id"], &format!("op `{op}`"), BY_ID_EXPECTED)?;
                let id = input::string(obj, "request_id", BY_ID_EXPECTED)?;
                self.refresh(host, now);
                match op {
                    "status" => self.lock().status(id, now),
                    "cancel" => {
                        let (answer, freed) = self.lock().cancel(id, now)?;
                        if let Some(agent) = freed {
                            self.serve_agent(host, &agent, now);
                        }
                        Ok(answer)
                    }
                    _ => {
                        let (answer, freed) = self.lock().release(id)?;
                        self.serve_agent(host, &freed, now);
                        Ok(answer)
                    }
                }
            }
        }
    }

    fn task_mapping(&self, host: &HostHandle, data: &Value) -> Result<Value, PluginError> {
        let empty = Object::new();
        let obj = input::object(data, &empty, MAPPING_EXPECTED)?;
        let op = input::op(
            obj,
            &["agent_of", "assign", "start", "complete", "tasks_of"],
            MAPPING_EXPECTED,
        )?;
        let now = host.monotonic_ns();
        match op {
            "agent_of" | "start" => {
                input::only(obj, &["op", "task_id"], &format!("op `{op}`"), TASK_EXPECTED)?;
                let task = input::string(obj, "task_id", TASK_EXPECTED)?;
                let (answer, freed) = {
                    let mut state = self.lock();
                    let freed = state.expire(now);
                    let answer = if op == "start" {
                        state.start(task, now)
                    } else {
                        Ok(state.agent_of(task))
                    };
                    (answer, freed)
                };
                self.serve_freed(host, freed, now);
                answer
            }
            "assign" => {
                input::only(
                    obj,
                    &["op", "task_id", "agent_id", "request_id", "reassign"],
                    "op `assign`",
                    ASSIGN_EXPECTED,
                )?;
                let task = input::string(obj, "task_id", ASSIGN_EXPECTED)?;
                let request = input::opt_string(obj, "request_id", ASSIGN_EXPECTED)?;
                let reassign = input::opt_bool(obj, "reassign", ASSIGN_EXPECTED)?.unwrap_or(false);
                let agent = match (input::opt_string(obj, "agent_id", ASSIGN_EXPECTED)?, request) {
                    (Some(agent), _) => agent.to_owned(),
                    (None, Some(request)) => self.lock().reserved_agent(request)?.ok_or_else(|| {
                        PluginError::invalid_request(format!(
                            "request `{request}` has no agent (it was never fulfilled): give `agent_id`, or wait until `status` says fulfilled"
                        ))
                    })?,
                    (None, None) => {
                        return Err(PluginError::invalid_request(format!(
                            "missing `agent_id` (a string; may be left out only with `request_id`); expected {ASSIGN_EXPECTED}"
                        )));
                    }
                };
                let info = host.agent(&agent).ok_or_else(|| {
                    PluginError::invalid_request(format!(
                        "agent `{agent}` is not registered: tasks can be assigned to registered agents only"
                    ))
                })?;
                let (answer, expired) = {
                    let mut state = self.lock();
                    let expired = state.expire(now);
                    (
                        state.assign(task, &agent, request, reassign, info.capacity, now),
                        expired,
                    )
                };
                if expired {
                    self.serve_fleet(host, now);
                } else if let Ok((_, Some(previous))) = &answer {
                    self.serve_agent(host, previous, now);
                }
                answer.map(|(answer, _)| answer)
            }
            "complete" => {
                input::only(
                    obj,
                    &["op", "task_id", "success", "duration_ms"],
                    "op `complete`",
                    COMPLETE_EXPECTED,
                )?;
                let task = input::string(obj, "task_id", COMPLETE_EXPECTED)?;
                let success = input::opt_bool(obj, "success", COMPLETE_EXPECTED)?.unwrap_or(true);
                let duration_ms = input::opt_u64(obj, "duration_ms", COMPLETE_EXPECTED)?;
                let (answer, expired) = {
                    let mut state = self.lock();
                    let expired = state.expire(now);
                    (state.complete(task, success, duration_ms, now), expired)
                };
                if expired {
                    self.serve_fleet(host, now);
                } else if let Ok((_, agent)) = &answer {
                    self.serve_agent(host, agent, now);
                }
                answer.map(|(answer, _)| answer)
            }
            _ => {
                input::only(obj, &["op", "agent_id"], "op `tasks_of`", TASKS_OF_EXPECTED)?;
                let agent = input::string(obj, "agent_id", TASKS_OF_EXPECTED)?;
                let registered = host.agent(agent).is_some();
                let (answer, freed) = {
                    let mut state = self.lock();
                    let freed = state.expire(now);
                    (state.tasks_of(agent, registered), freed)
                };
                self.serve_freed(host, freed, now);
                answer
            }
        }
    }

    fn workload_analysis(&self, host: &HostHandle, data: &Value) -> Result<Value, PluginError> {
        let empty = Object::new();
        let obj = input::object(data, &empty, WORKLOAD_EXPECTED)?;
        input::only(obj, &["agent_id"], "workload_analysis", WORKLOAD_EXPECTED)?;
        let agent = input::opt_string(obj, "agent_id", WORKLOAD_EXPECTED)?;
        let now = host.monotonic_ns();
        let fleet = host.agent_loads();
        let (answer, freed) = {
            let mut state = self.lock();
            let freed = state.expire(now);
            (state.workload(agent, &fleet), freed)
        };
        self.serve_freed(host, freed, now);
        answer
    }
}

#[async_trait]
impl OrchestrationPlugin for TaskCoordinationPlugin {
    fn name(&self) -> &str {
        NAME
    }

    fn version(&self) -> &str {
        env!("CARGO_PKG_VERSION")
    }

    fn capabilities(&self) -> Vec<String> {
        vec![
            "agent_requests".into(),
            "task_mapping".into(),
            "workload_analysis".into(),
        ]
    }

    async fn initialize(&self, host: HostHandle) -> Result<(), PluginError> {
        let config: CoordinationConfig = host.config_as()?;
        if config.reservation_ttl_ms == 0 {
            return Err(PluginError::new(format!(
                "{NAME} configuration: `reservation_ttl_ms` must be at least 1 (the milliseconds a fulfilled request may hold its agent without turning it into a task; default {DEFAULT_RESERVATION_TTL_MS})"
            )));
        }
        self.lock()
            .configure(config.max_queued, config.default_timeout_ms, config.reservation_ttl_ms);
        let _ = self.host.set(host);
        Ok(())
    }

    async fn process_request(&self, request: IntegrationRequest) -> Result<IntegrationResponse, PluginError> {
        let host = self.host()?;
        let data = &request.data;
        let answer = match request.capability.as_str() {
            "agent_requests" => self.agent_requests(host, data)?,
            "task_mapping" => self.task_mapping(host, data)?,
            "workload_analysis" => self.workload_analysis(host, data)?,
            other => {
                return Err(PluginError::invalid_request(format!(
                    "{NAME} does not serve `{other}` (it serves agent_requests, task_mapping, workload_analysis)"
                )));
            }
        };
        Ok(IntegrationResponse::ok(answer))
    }

    async fn health_check(&self) -> HealthStatus {
        if self.host.get().is_none() {
            return HealthStatus::unhealthy("not initialized");
        }
        match self.lock().queue_full() {
            Some(max) => HealthStatus::degraded(format!(
                "the agent request queue is full ({max} queued): new requests that no agent fits are refused"
            )),
            None => HealthStatus::healthy(),
        }
    }

    async fn on_event(&self, event: &OrchestratorEvent) {
        let Some(host) = self.host.get() else { return };
        let now = host.monotonic_ns();
        let (expired, woken) = match event {
            OrchestratorEvent::AgentDeregistered { agent_id } => {
                // Its reservations go (the capacity they held left with it, so the queue gains
                // nothing); its live tasks stay mapped for the caller to reassign.
                let mut state = self.lock();
                let expired = state.expire(now);
                state.depart(agent_id, now);
                (expired, None)
            }
            OrchestratorEvent::AgentRegistered { agent_id } => (self.lock().expire(now), Some(agent_id)),
            OrchestratorEvent::AgentStatusChanged { agent_id, to, .. } if takes_work(*to) => {
                (self.lock().expire(now), Some(agent_id))
            }
            _ => (self.lock().expire(now), None),
        };
        if expired {
            self.serve_fleet(host, now);
        } else if let Some(agent) = woken {
            self.serve_agent(host, agent, now);
        }
    }
}
