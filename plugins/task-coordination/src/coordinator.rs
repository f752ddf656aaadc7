//! The plugin's state and every operation on it, free of the host: the caller passes the time
//! (the host's monotonic clock, in nanoseconds) and a snapshot of the agents concerned, so all
//! of it is testable without an orchestrator.
//!
//! Everything (requests, the queue, reservations, the task <-> agent maps, the books) lives in
//! one `Coordinator` behind one mutex in the plugin. Reservations, mappings and the queue depend
//! on each other (a reservation becomes a task; completing a task frees a slot a queued request
//! takes), so finer locks would need an ordering and would still have to be taken together on
//! most operations; one lock makes every operation atomic and is held only for in-memory work
//! (never across an `.await`, never around a host call that could wait).

use crate::fit::{Member, Own, Requirements, effective_load, pick, takes_work};
use crate::queue::RequestQueue;
use crate::workload::{AgentBook, Durations, Row};
use plugin_api::{AgentLoad, PluginError};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

/// How many settled requests (cancelled, timed out, released, or turned into a task) are kept
/// for `status`; the oldest are forgotten first.
pub(crate) const REQUEST_HISTORY: usize = 10_000;
/// How many completed tasks are kept for `agent_of` (and to refuse a second `complete`).
pub(crate) const TASK_HISTORY: usize = 100_000;
/// The default bound on queued requests.
pub(crate) const DEFAULT_MAX_QUEUED: usize = 10_000;
/// The default time a fulfilled request may hold its reservation without turning it into a task.
pub(crate) const DEFAULT_RESERVATION_TTL_MS: u64 = 300_000;
/// How long a deregistration is remembered to tell a stale snapshot (taken before the agent left)
/// from a fresh one. A snapshot is used within the operation that took it, in memory, so this is
/// far longer than any operation lasts; it only bounds the memory kept per departed agent.
const DEPARTED_MEMORY_NS: u64 = 60_000 * NS_PER_MS;

/// The `reason` `status` gives for a reservation the plugin released because its agent
/// deregistered.
pub(crate) const REASON_DEREGISTERED: &str = "agent deregistered";
/// The `reason` `status` gives for a reservation the plugin released because it was held longer
/// than `reservation_ttl_ms` without being released or turned into a task.
pub(crate) const REASON_EXPIRED: &str = "reservation expired";

const NS_PER_MS: u64 = 1_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RequestStatus {
    Queued,
    Fulfilled,
    Cancelled,
    TimedOut,
    Released,
}

impl RequestStatus {
    fn as_str(self) -> &'static str {
        match self {
            RequestStatus::Queued => "queued",
            RequestStatus::Fulfilled => "fulfilled",
            RequestStatus::Cancelled => "cancelled",
            RequestStatus::TimedOut => "timed_out",
            RequestStatus::Released => "released",
        }
    }
}

#[derive(Debug)]
struct Request {
    priority: i64,
    requirements: Requirements,
    created_ns: u64,
    deadline_ns: Option<u64>,
    status: RequestStatus,
    agent: Option<String>,
    /// When it left the queue (fulfilled, cancelled or timed out).
    settled_ns: Option<u64>,
    /// Whether a fulfilled request still holds its reservation.
    holding: bool,
    /// When the reservation it holds expires (host monotonic clock).
    reservation_expiry_ns: Option<u64>,
    /// Why the plugin released its reservation on its own (not set when the caller did).
    reason: Option<&'static str>,
    /// The task its reservation became.
    task_id: Option<String>,
}

impl Request {
    fn waited_ms(&self, now: u64) -> u64 {
        self.settled_ns.unwrap_or(now).saturating_sub(self.created_ns) / NS_PER_MS
    }
}

/// Where a task stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TaskState {
    Assigned,
    Running,
    Done,
    Failed,
}

impl TaskState {
    fn as_str(self) -> &'static str {
        match self {
            TaskState::Assigned => "assigned",
            TaskState::Running => "running",
            TaskState::Done => "done",
            TaskState::Failed => "failed",
        }
    }

    fn is_live(self) -> bool {
        matches!(self, TaskState::Assigned | TaskState::Running)
    }
}

#[derive(Debug)]
struct TaskEntry {
    agent: String,
    state: TaskState,
    /// When it was assigned, or started once running: the origin of a measured duration.
    since_ns: u64,
    /// Which completion this is (for trimming the history).
    generation: u64,
}

/// A queued request that an agent took later: the payload of the `agent_request_fulfilled` event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Fulfilment {
    pub(crate) request_id: String,
    pub(crate) agent_id: String,
    pub(crate) priority: i64,
    pub(crate) waited_ms: u64,
}

impl Fulfilment {
    pub(crate) fn to_json(&self) -> Value {
        json!({
            "request_id": self.request_id,
            "agent_id": self.agent_id,
            "priority": self.priority,
            "waited_ms": self.waited_ms,
        })
    }
}

/// A request id as callers see it.
pub(crate) fn request_id(seq: u64) -> String {
    format!("req-{seq}")
}

/// The sequence number behind a request id, or an error naming the id.
pub(crate) fn parse_request_id(id: &str) -> Result<u64, PluginError> {
    id.strip_prefix("req-")
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| unknown_request(id))
}

fn unknown_request(id: &str) -> PluginError {
    PluginError::invalid_request(format!(
        "unknown request_id `{id}`: no such agent request (ids look like \"req-1\"; settled requests are forgotten after {REQUEST_HISTORY} newer ones)"
    ))
}

/// All the plugin's state.
#[derive(Debug)]
pub(crate) struct Coordinator {
    max_queued: usize,
    default_timeout_ms: Option<u64>,
    reservation_ttl_ms: u64,
    next_seq: u64,
    requests: HashMap<u64, Request>,
    queue: RequestQueue,
    /// Queued requests that require some capability (they need snapshots with capabilities).
    queued_with_capabilities: usize,
    /// Every reservation held, by `(expiry, sequence number)`: expired ones are found without a
    /// scan, and an agent's are found by a scan of reservations only.
    reservations: BTreeSet<(u64, u64)>,
    /// Agents that deregistered, with when the plugin heard of it: a snapshot taken before then
    /// may still list them, and must not give them work.
    departed: HashMap<String, u64>,
    settled_requests: VecDeque<u64>,
    tasks: HashMap<String, TaskEntry>,
    settled_tasks: VecDeque<(String, u64)>,
    next_generation: u64,
    books: BTreeMap<String, AgentBook>,
}

impl Default for Coordinator {
    fn default() -> Self {
        Self {
            max_queued: DEFAULT_MAX_QUEUED,
            default_timeout_ms: None,
            reservation_ttl_ms: DEFAULT_RESERVATION_TTL_MS,
            next_seq: 1,
            requests: HashMap::new(),
            queue: RequestQueue::default(),
            queued_with_capabilities: 0,
            reservations: BTreeSet::new(),
            departed: HashMap::new(),
            settled_requests: VecDeque::new(),
            tasks: HashMap::new(),
            settled_tasks: VecDeque::new(),
            next_generation: 1,
            books: BTreeMap::new(),
        }
    }
}

impl Coordinator {
    pub(crate) fn configure(&mut self, max_queued: usize, default_timeout_ms: Option<u64>, reservation_ttl_ms: u64) {
        self.max_queued = max_queued;
        self.default_timeout_ms = default_timeout_ms;
        self.reservation_ttl_ms = reservation_ttl_ms;
    }

    pub(crate) fn has_queued(&self) -> bool {
        !self.queue.is_empty()
    }

    /// Whether the queue is at `max_queued`.
    pub(crate) fn queue_full(&self) -> Option<usize> {
        (self.queue.len() >= self.max_queued).then_some(self.max_queued)
    }

    /// Whether a queue scan needs agents' capabilities.
    pub(crate) fn needs_capabilities(&self) -> bool {
        self.queued_with_capabilities > 0
    }

    fn own(&self, agent: &str) -> Own {
        self.books.get(agent).map_or(Own::default(), AgentBook::own)
    }

    /// The members of a snapshot taken at or after `now` that may be given work: not those that
    /// the plugin heard deregister at or after `now` (the snapshot may predate their leaving; one
    /// that re-registered since shows up in later snapshots).
    fn present<'a>(&'a self, fleet: &'a [Member], now: u64) -> impl Iterator<Item = &'a Member> + 'a {
        fleet
            .iter()
            .filter(move |m| self.departed.get(&m.id).is_none_or(|&left| left < now))
    }

    fn book(&mut self, agent: &str) -> &mut AgentBook {
        self.books.entry(agent.to_owned()).or_default()
    }

    fn settle_request(&mut self, seq: u64) {
        self.settled_requests.push_back(seq);
        while self.settled_requests.len() > REQUEST_HISTORY {
            if let Some(old) = self.settled_requests.pop_front() {
                self.requests.remove(&old);
            }
        }
    }

    /// Takes a request out of the queue (it must be there).
    fn unqueue(&mut self, seq: u64) {
        let Some(r) = self.requests.get(&seq) else { return };
        if self.queue.remove(seq, r.priority, r.deadline_ns) && !r.requirements.capabilities.is_empty() {
            self.queued_with_capabilities -= 1;
        }
    }

    /// Gives a request (not queued) its agent and a reservation on it.
    fn grant(&mut self, seq: u64, agent: String, now: u64) -> Option<Fulfilment> {
        let r = self.requests.get_mut(&seq)?;
        r.status = RequestStatus::Fulfilled;
        r.agent = Some(agent.clone());
        r.settled_ns = Some(now);
        r.holding = true;
        let expiry = now.saturating_add(self.reservation_ttl_ms.saturating_mul(NS_PER_MS));
        r.reservation_expiry_ns = Some(expiry);
        let fulfilment = Fulfilment {
            request_id: request_id(seq),
            agent_id: agent.clone(),
            priority: r.priority,
            waited_ms: r.waited_ms(now),
        };
        self.book(&agent).reserved += 1;
        self.reservations.insert((expiry, seq));
        Some(fulfilment)
    }

    /// Gives back the reservation a fulfilled request holds (it must hold one): the request
    /// keeps its status (the caller sets it). Returns the agent it was held on.
    fn drop_reservation(&mut self, seq: u64) -> Option<String> {
        let r = self.requests.get_mut(&seq)?;
        if !r.holding {
            return None;
        }
        r.holding = false;
        if let Some(expiry) = r.reservation_expiry_ns.take() {
            self.reservations.remove(&(expiry, seq));
        }
        let agent = r.agent.clone()?;
        let book = self.book(&agent);
        book.reserved = book.reserved.saturating_sub(1);
        Some(agent)
    }

    /// Releases a held reservation on the plugin's own initiative, saying why.
    fn release_for(&mut self, seq: u64, reason: &'static str) {
        if self.drop_reservation(seq).is_none() {
            return;
        }
        if let Some(r) = self.requests.get_mut(&seq) {
            r.status = RequestStatus::Released;
            r.reason = Some(reason);
        }
        self.settle_request(seq);
    }

    /// Times out every queued request whose deadline has passed, and releases every reservation
    /// held past the reservation TTL. Returns whether a reservation was released (capacity
    /// appeared: the caller serves the queue).
    pub(crate) fn expire(&mut self, now: u64) -> bool {
        for (seq, deadline) in self.queue.due(now) {
            self.unqueue(seq);
            if let Some(r) = self.requests.get_mut(&seq) {
                r.status = RequestStatus::TimedOut;
                r.settled_ns = Some(deadline);
            }
            self.settle_request(seq);
        }
        let due: Vec<u64> = self
            .reservations
            .iter()
            .take_while(|(expiry, _)| *expiry <= now)
            .map(|(_, seq)| *seq)
            .collect();
        for &seq in &due {
            self.release_for(seq, REASON_EXPIRED);
        }
        let horizon = now.saturating_sub(DEPARTED_MEMORY_NS);
        self.departed.retain(|_, left| *left >= horizon);
        !due.is_empty()
    }

    /// The host says `agent` deregistered (the plugin heard it at `now`): its reservations are
    /// released (reason "agent deregistered"), and snapshots taken before `now` will not give it
    /// work. Its live tasks stay mapped to it, for the caller to reassign; its book stays too.
    pub(crate) fn depart(&mut self, agent: &str, now: u64) {
        self.departed.insert(agent.to_owned(), now);
        let held: Vec<u64> = self
            .reservations
            .iter()
            .map(|(_, seq)| *seq)
            .filter(|seq| {
                self.requests
                    .get(seq)
                    .is_some_and(|r| r.agent.as_deref() == Some(agent))
            })
            .collect();
        for seq in held {
            self.release_for(seq, REASON_DEREGISTERED);
        }
    }

    /// Serves the queue in order from `fleet` (a snapshot of some or all agents): each queued
    /// request that some member fits gets the best of them. A request nothing fits does not hold
    /// up those behind it. Returns the requests fulfilled.
    pub(crate) fn serve(&mut self, fleet: &[Member], now: u64) -> Vec<Fulfilment> {
        let mut served = Vec::new();
        if self.queue.is_empty() || fleet.is_empty() {
            return served;
        }
        // An upper bound on how many requests the fleet can take: once it is used up, nothing
        // behind can fit and the scan stops.
        let mut free: u64 = self
            .present(fleet, now)
            .filter(|m| takes_work(m.status))
            .map(|m| u64::from(m.capacity.saturating_sub(effective_load(m.load, self.own(&m.id)))))
            .sum();
        let order: Vec<u64> = self.queue.in_order().collect();
        for seq in order {
            if free == 0 {
                break;
            }
            let Some(request) = self.requests.get(&seq) else {
                continue;
            };
            let Some(agent) =
                pick(self.present(fleet, now), &request.requirements, |id| self.own(id)).map(|m| m.id.clone())
            else {
                continue;
            };
            self.unqueue(seq);
            served.extend(self.grant(seq, agent, now));
            free -= 1;
        }
        served
    }

    /// `agent_requests` `request`: serves the queue first (so that a new request never takes a
    /// slot an earlier one fits), then fulfils the new request at once or queues it.
    pub(crate) fn request(
        &mut self,
        requirements: Requirements,
        priority: i64,
        timeout_ms: Option<u64>,
        fleet: &[Member],
        now: u64,
    ) -> Result<(Value, Vec<Fulfilment>), PluginError> {
        self.expire(now);
        let served = self.serve(fleet, now);
        let chosen = pick(self.present(fleet, now), &requirements, |id| self.own(id)).map(|m| m.id.clone());
        let timeout_ms = timeout_ms.or(self.default_timeout_ms);
        let deadline = timeout_ms.map(|t| now.saturating_add(t.saturating_mul(NS_PER_MS)));
        let expired = chosen.is_none() && deadline.is_some_and(|d| d <= now);
        if chosen.is_none() && !expired && self.queue.len() >= self.max_queued {
            return Err(PluginError::unavailable(format!(
                "the agent request queue is full ({} queued, max_queued = {}): no agent fits now; retry later, cancel queued requests, or raise `max_queued` in the TaskCoordinationPlugin configuration",
                self.queue.len(),
                self.max_queued
            )));
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        let has_capabilities = !requirements.capabilities.is_empty();
        self.requests.insert(
            seq,
            Request {
                priority,
                requirements,
                created_ns: now,
                deadline_ns: deadline,
                status: RequestStatus::Queued,
                agent: None,
                settled_ns: None,
                holding: false,
                reservation_expiry_ns: None,
                reason: None,
                task_id: None,
            },
        );
        let mut answer = json!({ "request_id": request_id(seq), "priority": priority });
        if let Some(agent) = chosen {
            self.grant(seq, agent.clone(), now);
            answer["status"] = json!("fulfilled");
            answer["agent_id"] = json!(agent);
        } else if expired {
            if let Some(r) = self.requests.get_mut(&seq) {
                r.status = RequestStatus::TimedOut;
                r.settled_ns = Some(now);
            }
            self.settle_request(seq);
            answer["status"] = json!("timed_out");
        } else {
            self.queue.push(seq, priority, deadline);
            if has_capabilities {
                self.queued_with_capabilities += 1;
            }
            answer["status"] = json!("queued");
            answer["position"] = json!(self.queue.position(seq));
        }
        Ok((answer, served))
    }

    fn get(&self, id: &str) -> Result<(u64, &Request), PluginError> {
        let seq = parse_request_id(id)?;
        self.requests
            .get(&seq)
            .map(|r| (seq, r))
            .ok_or_else(|| unknown_request(id))
    }

    /// `agent_requests` `status`.
    pub(crate) fn status(&self, id: &str, now: u64) -> Result<Value, PluginError> {
        let (seq, r) = self.get(id)?;
        let mut answer = json!({
            "request_id": request_id(seq),
            "status": r.status.as_str(),
            "priority": r.priority,
            "requirements": r.requirements.to_json(),
            "waited_ms": r.waited_ms(now),
        });
        if let Some(agent) = &r.agent {
            answer["agent_id"] = json!(agent);
        }
        if let Some(task) = &r.task_id {
            answer["task_id"] = json!(task);
        }
        if let Some(reason) = r.reason {
            answer["reason"] = json!(reason);
        }
        if let (true, Some(expiry)) = (r.holding, r.reservation_expiry_ns) {
            answer["reservation_expires_in_ms"] = json!(expiry.saturating_sub(now) / NS_PER_MS);
        }
        if r.status == RequestStatus::Queued {
            answer["position"] = json!(self.queue.position(seq));
        }
        Ok(answer)
    }

    /// The agent a fulfilled request reserved: `None` when it was never fulfilled, an error
    /// saying why when it no longer holds its reservation (released, expired, its agent gone,
    /// or already turned into a task).
    pub(crate) fn reserved_agent(&self, id: &str) -> Result<Option<String>, PluginError> {
        let (_, r) = self.get(id)?;
        match &r.agent {
            Some(_) if !r.holding => Err(self.not_holding(id, "assigned a task")),
            agent => Ok(agent.clone()),
        }
    }

    /// `agent_requests` `cancel`: a queued request is cancelled, a fulfilled one gives back its
    /// reservation. Returns the answer and the agent freed, if any.
    pub(crate) fn cancel(&mut self, id: &str, now: u64) -> Result<(Value, Option<String>), PluginError> {
        let (seq, r) = self.get(id)?;
        match r.status {
            RequestStatus::Queued => {
                self.unqueue(seq);
                if let Some(r) = self.requests.get_mut(&seq) {
                    r.status = RequestStatus::Cancelled;
                    r.settled_ns = Some(now);
                }
                self.settle_request(seq);
                Ok((json!({ "request_id": request_id(seq), "status": "cancelled" }), None))
            }
            RequestStatus::Fulfilled if r.holding => self.release(id).map(|(answer, agent)| (answer, Some(agent))),
            _ => Err(self.not_holding(id, "cancelled")),
        }
    }

    /// `agent_requests` `release`: a fulfilled request gives back its reservation. Returns the
    /// answer and the agent freed.
    pub(crate) fn release(&mut self, id: &str) -> Result<(Value, String), PluginError> {
        let (seq, r) = self.get(id)?;
        let agent = match (&r.agent, r.status, r.holding) {
            (Some(agent), RequestStatus::Fulfilled, true) => agent.clone(),
            _ => return Err(self.not_holding(id, "released")),
        };
        self.drop_reservation(seq);
        if let Some(r) = self.requests.get_mut(&seq) {
            r.status = RequestStatus::Released;
        }
        self.settle_request(seq);
        Ok((
            json!({ "request_id": request_id(seq), "status": "released", "agent_id": agent }),
            agent,
        ))
    }

    fn not_holding(&self, id: &str, verb: &str) -> PluginError {
        let detail = match self.get(id) {
            Ok((_, r)) => match &r.task_id {
                Some(task) => {
                    format!("it was fulfilled and its reservation became task `{task}` (complete the task instead)")
                }
                None => match r.reason {
                    Some(reason) => format!("it is {} ({reason})", r.status.as_str()),
                    None => format!("it is {}", r.status.as_str()),
                },
            },
            Err(e) => e.message,
        };
        PluginError::invalid_request(format!(
            "request `{id}` cannot be {verb}: {detail}; only a queued request can be cancelled and only a fulfilled one that holds its reservation released"
        ))
    }

    /// `agent_requests` `queue`: queued requests in the order they would be served.
    pub(crate) fn queue_report(&self, now: u64) -> Value {
        let queue: Vec<Value> = self
            .queue
            .in_order()
            .filter_map(|seq| {
                let r = self.requests.get(&seq)?;
                let mut entry = json!({
                    "request_id": request_id(seq),
                    "priority": r.priority,
                    "requirements": r.requirements.to_json(),
                    "waited_ms": r.waited_ms(now),
                });
                if let Some(deadline) = r.deadline_ns {
                    entry["expires_in_ms"] = json!(deadline.saturating_sub(now) / NS_PER_MS);
                }
                Some(entry)
            })
            .collect();
        json!({ "length": queue.len(), "max_queued": self.max_queued, "queue": queue })
    }

    /// `task_mapping` `assign`. `capacity` is the agent's, as the host reports it (the caller
    /// has checked that the agent is registered). Returns the answer and the agent a reassigned
    /// task left, whose slot is now free.
    pub(crate) fn assign(
        &mut self,
        task: &str,
        agent: &str,
        request: Option<&str>,
        reassign: bool,
        capacity: u32,
        now: u64,
    ) -> Result<(Value, Option<String>), PluginError> {
        // Check everything before changing anything.
        let request = match request {
            None => None,
            Some(id) => {
                let (seq, r) = self.get(id)?;
                if !(r.status == RequestStatus::Fulfilled && r.holding) {
                    return Err(self.not_holding(id, "assigned a task"));
                }
                if r.agent.as_deref() != Some(agent) {
                    return Err(PluginError::invalid_request(format!(
                        "request `{id}` reserved agent `{}`, not `{agent}`: assign the task to `{0}`, or leave `agent_id` out",
                        r.agent.as_deref().unwrap_or_default()
                    )));
                }
                Some(seq)
            }
        };
        let existing = self.tasks.get(task).filter(|e| e.state.is_live());
        let previous = match existing {
            Some(e) if e.agent != agent => {
                if !reassign {
                    return Err(PluginError::invalid_request(format!(
                        "task `{task}` is already mapped to agent `{}` ({}); pass \"reassign\": true to move it to `{agent}`",
                        e.agent,
                        e.state.as_str()
                    )));
                }
                Some((e.agent.clone(), e.state))
            }
            _ => None,
        };
        let unchanged = existing.is_some() && previous.is_none();

        if let Some((old_agent, old_state)) = &previous {
            let book = self.book(old_agent);
            book.tasks.remove(task);
            if *old_state == TaskState::Running {
                book.running = book.running.saturating_sub(1);
            }
        }
        if !unchanged {
            self.tasks.insert(
                task.to_owned(),
                TaskEntry {
                    agent: agent.to_owned(),
                    state: TaskState::Assigned,
                    since_ns: now,
                    generation: 0,
                },
            );
            self.book(agent).tasks.insert(task.to_owned());
        }
        self.book(agent).capacity = Some(capacity);
        let state = self.tasks.get(task).map_or(TaskState::Assigned, |e| e.state);
        let mut answer = json!({ "task_id": task, "agent_id": agent, "state": state.as_str() });
        if let Some(seq) = request {
            self.drop_reservation(seq);
            if let Some(r) = self.requests.get_mut(&seq) {
                r.task_id = Some(task.to_owned());
            }
            self.settle_request(seq);
            answer["request_id"] = json!(request_id(seq));
        }
        if let Some((old_agent, _)) = &previous {
            answer["previous_agent"] = json!(old_agent);
        }
        Ok((answer, previous.map(|(a, _)| a)))
    }

    fn live_task(&self, task: &str) -> Result<&TaskEntry, PluginError> {
        match self.tasks.get(task) {
            Some(e) if e.state.is_live() => Ok(e),
            Some(e) => Err(PluginError::invalid_request(format!(
                "task `{task}` is already completed ({} on agent `{}`); assign it again to run it again",
                e.state.as_str(),
                e.agent
            ))),
            None => Err(PluginError::invalid_request(format!(
                "unknown task_id `{task}`: no agent has it; assign it first with {{\"op\": \"assign\", \"task_id\", \"agent_id\"}}"
            ))),
        }
    }

    /// `task_mapping` `start`.
    pub(crate) fn start(&mut self, task: &str, now: u64) -> Result<Value, PluginError> {
        let entry = self.live_task(task)?;
        let agent = entry.agent.clone();
        if entry.state == TaskState::Assigned {
            if let Some(e) = self.tasks.get_mut(task) {
                e.state = TaskState::Running;
                e.since_ns = now;
            }
            self.book(&agent).running += 1;
        }
        Ok(json!({ "task_id": task, "agent_id": agent, "state": "running" }))
    }

    /// `task_mapping` `complete`. Returns the answer and the agent whose slot is now free.
    pub(crate) fn complete(
        &mut self,
        task: &str,
        success: bool,
        duration_ms: Option<u64>,
        now: u64,
    ) -> Result<(Value, String), PluginError> {
        let entry = self.live_task(task)?;
        let agent = entry.agent.clone();
        let was_running = entry.state == TaskState::Running;
        let duration_ms = duration_ms.unwrap_or_else(|| now.saturating_sub(entry.since_ns) / NS_PER_MS);
        let generation = self.next_generation;
        self.next_generation += 1;
        if let Some(e) = self.tasks.get_mut(task) {
            e.state = if success { TaskState::Done } else { TaskState::Failed };
            e.generation = generation;
        }
        let book = self.book(&agent);
        book.tasks.remove(task);
        if was_running {
            book.running = book.running.saturating_sub(1);
        }
        if success {
            book.done += 1;
        } else {
            book.failed += 1;
        }
        book.durations.record(duration_ms);
        self.settled_tasks.push_back((task.to_owned(), generation));
        while self.settled_tasks.len() > TASK_HISTORY {
            let Some((old, generation)) = self.settled_tasks.pop_front() else {
                break;
            };
            // Forget it only if it was not assigned again since.
            if self
                .tasks
                .get(&old)
                .is_some_and(|e| !e.state.is_live() && e.generation == generation)
            {
                self.tasks.remove(&old);
            }
        }
        Ok((
            json!({ "task_id": task, "agent_id": agent, "success": success, "duration_ms": duration_ms }),
            agent,
        ))
    }

    /// `task_mapping` `agent_of`.
    pub(crate) fn agent_of(&self, task: &str) -> Value {
        match self.tasks.get(task) {
            Some(e) => json!({ "task_id": task, "agent_id": e.agent, "state": e.state.as_str() }),
            None => json!({ "task_id": task, "agent_id": null, "state": "unmapped" }),
        }
    }

    /// `task_mapping` `tasks_of`: an agent's live tasks, sorted. An agent that is neither
    /// registered nor known here is an error.
    pub(crate) fn tasks_of(&self, agent: &str, registered: bool) -> Result<Value, PluginError> {
        let tasks: Vec<&String> = match self.books.get(agent) {
            Some(book) => book.tasks.iter().collect(),
            None if registered => Vec::new(),
            None => return Err(unknown_agent(agent)),
        };
        Ok(json!({ "agent_id": agent, "task_ids": tasks }))
    }

    /// `workload_analysis`: every agent in `fleet` (the registered ones) and every agent with
    /// a book here, or only `filter`.
    pub(crate) fn workload(&self, filter: Option<&str>, fleet: &[AgentLoad]) -> Result<Value, PluginError> {
        let registered: BTreeMap<&str, &AgentLoad> = fleet.iter().map(|a| (&*a.id, a)).collect();
        let mut ids: BTreeSet<&str> = registered.keys().copied().collect();
        ids.extend(self.books.keys().map(String::as_str));
        if let Some(only) = filter {
            if !ids.contains(only) {
                return Err(unknown_agent(only));
            }
            ids = BTreeSet::from([only]);
        }
        let mut rows = Vec::with_capacity(ids.len());
        let mut durations = Durations::default();
        let (mut assigned, mut running, mut reserved, mut done, mut failed) = (0u64, 0u64, 0u64, 0u64, 0u64);
        for id in &ids {
            let host = registered.get(id);
            let book = self.books.get(*id);
            if let Some(b) = book {
                assigned += b.assigned();
                running += u64::from(b.running);
                reserved += u64::from(b.reserved);
                done += b.done;
                failed += b.failed;
                durations.merge(&b.durations);
            }
            rows.push(
                Row {
                    agent_id: id,
                    registered: host.is_some(),
                    host: host.map(|a| (a.status.as_str(), a.load)),
                    capacity: host
                        .map(|a| a.capacity)
                        .or_else(|| book.and_then(|b| b.capacity))
                        .unwrap_or(0),
                    book,
                }
                .to_json(),
            );
        }
        Ok(json!({
            "agents": rows,
            "totals": {
                "agents": ids.len(),
                "assigned": assigned,
                "running": running,
                "reserved": reserved,
                "done": done,
                "failed": failed,
                "mean_ms": durations.mean_ms(),
                "p95_ms": durations.p95_ms(),
            },
            "queued": self.queue.len(),
        }))
    }
}

fn unknown_agent(agent: &str) -> PluginError {
    PluginError::invalid_request(format!(
        "unknown agent_id `{agent}`: it is not registered and has no tasks or history here"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use plugin_api::AgentStatus;

    const MS: u64 = NS_PER_MS;

    fn member(id: &str, capacity: u32, caps: &[&str]) -> Member {
        Member {
            id: id.into(),
            status: AgentStatus::Active,
            load: 0,
            capacity,
            capabilities: Some(caps.iter().map(|c| (*c).to_owned()).collect()),
        }
    }

    fn any() -> Requirements {
        Requirements::default()
    }

    fn needs(cap: &str) -> Requirements {
        Requirements {
            capabilities: vec![cap.to_owned()],
            max_load: None,
        }
    }

    fn status(c: &Coordinator, id: &str) -> String {
        c.status(id, 0).expect("known")["status"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    fn loaded(id: &str, load: u32, capacity: u32) -> Member {
        Member {
            load,
            ..member(id, capacity, &[])
        }
    }

    #[test]
    fn queued_requests_are_served_by_priority_then_arrival() {
        let mut c = Coordinator::default();
        let none: [Member; 0] = [];
        for priority in [1, 5, 5, -2] {
            let (answer, _) = c.request(any(), priority, None, &none, 0).expect("queues");
            assert_eq!(answer["status"], "queued");
        }
        let order: Vec<String> = c.queue_report(0)["queue"]
            .as_array()
            .expect("list")
            .iter()
            .map(|e| e["request_id"].as_str().unwrap_or_default().to_owned())
            .collect();
        assert_eq!(order, ["req-2", "req-3", "req-1", "req-4"]);
        let served = c.serve(&[member("a", 2, &[])], 10 * MS);
        let ids: Vec<&str> = served.iter().map(|f| f.request_id.as_str()).collect();
        assert_eq!(
            ids,
            ["req-2", "req-3"],
            "two slots, the two priority-5 requests in arrival order"
        );
        assert_eq!(served[0].waited_ms, 10);
        assert_eq!(status(&c, "req-1"), "queued");
        assert_eq!(c.own("a"), Own { live: 0, reserved: 2 });
    }

    #[test]
    fn a_request_nothing_fits_does_not_block_those_behind_it() {
        let mut c = Coordinator::default();
        let none: [Member; 0] = [];
        c.request(needs("gpu"), 9, None, &none, 0).expect("queues");
        c.request(any(), 0, None, &none, 0).expect("queues");
        assert!(c.needs_capabilities());
        let served = c.serve(&[member("cpu", 1, &["cpu"])], 0);
        assert_eq!(served.len(), 1);
        assert_eq!(served[0].request_id, "req-2");
        assert_eq!(status(&c, "req-1"), "queued");
    }

    #[test]
    fn a_new_request_waits_behind_queued_ones_that_fit() {
        let mut c = Coordinator::default();
        c.request(any(), 0, None, &[], 0).expect("queues");
        let fleet = [member("a", 1, &[])];
        let (answer, served) = c.request(any(), 100, None, &fleet, 0).expect("answers");
        assert_eq!(served.len(), 1, "the earlier request is served first");
        assert_eq!(served[0].request_id, "req-1");
        assert_eq!(answer["status"], "queued");
    }

    #[test]
    fn timeouts_are_evaluated_against_the_given_clock() {
        let mut c = Coordinator::default();
        c.configure(10, Some(100), DEFAULT_RESERVATION_TTL_MS);
        c.request(any(), 0, Some(20), &[], 0).expect("queues");
        c.request(any(), 0, None, &[], 0)
            .expect("queues with the default timeout");
        let (answer, _) = c.request(any(), 0, Some(0), &[], 0).expect("answers");
        assert_eq!(answer["status"], "timed_out", "a zero timeout never waits");
        c.expire(19 * MS);
        assert_eq!(status(&c, "req-1"), "queued");
        c.expire(20 * MS);
        assert_eq!(status(&c, "req-1"), "timed_out");
        assert_eq!(c.status("req-1", 500 * MS).expect("known")["waited_ms"], 20);
        c.expire(100 * MS);
        assert_eq!(status(&c, "req-2"), "timed_out");
        assert!(!c.has_queued());
    }

    #[test]
    fn the_queue_is_bounded() {
        let mut c = Coordinator::default();
        c.configure(2, None, DEFAULT_RESERVATION_TTL_MS);
        c.request(any(), 0, None, &[], 0).expect("queues");
        c.request(any(), 0, None, &[], 0).expect("queues");
        assert_eq!(c.queue_full(), Some(2));
        let err = c.request(any(), 0, None, &[], 0).unwrap_err();
        assert!(err.message.contains("queue is full"), "{err}");
        // One that an agent takes at once is not queued, so it is not refused.
        let (answer, _) = c.request(any(), 0, None, &[member("a", 5, &[])], 0).expect("answers");
        assert_eq!(answer["status"], "fulfilled");
    }

    #[test]
    fn reservations_count_until_released_or_turned_into_a_task() {
        let mut c = Coordinator::default();
        let fleet = [member("a", 2, &[])];
        c.request(any(), 0, None, &fleet, 0).expect("fulfils");
        c.request(any(), 0, None, &fleet, 0).expect("fulfils");
        assert_eq!(
            c.request(any(), 0, None, &fleet, 0).expect("queues").0["status"],
            "queued"
        );
        let (_, freed) = c.release("req-1").expect("releases");
        assert_eq!(freed, "a");
        assert!(c.release("req-1").is_err(), "released twice");
        assert_eq!(c.serve(&fleet, 0).len(), 1, "req-3 takes the freed slot");
        c.assign("t", "a", Some("req-2"), false, 2, 0).expect("assigns");
        assert_eq!(
            c.own("a"),
            Own { live: 1, reserved: 1 },
            "the reservation became the task"
        );
        assert_eq!(c.status("req-2", 0).expect("known")["task_id"], "t");
        let err = c.cancel("req-2", 0).unwrap_err();
        assert!(err.message.contains("became task `t`"), "{err}");
        assert!(
            c.assign("u", "b", Some("req-3"), false, 1, 0).is_err(),
            "req-3 reserved a"
        );
    }

    #[test]
    fn reassigning_moves_the_task_and_completion_settles_the_counts() {
        let mut c = Coordinator::default();
        c.assign("t", "a", None, false, 1, 0).expect("assigns");
        c.start("t", 5 * MS).expect("starts");
        let err = c.assign("t", "b", None, false, 1, 0).unwrap_err();
        assert!(err.message.contains("reassign"), "{err}");
        let (answer, freed) = c.assign("t", "b", None, true, 1, 10 * MS).expect("reassigns");
        assert_eq!(answer["previous_agent"], "a");
        assert_eq!(freed.as_deref(), Some("a"));
        assert_eq!(c.own("a"), Own::default());
        assert_eq!(c.books["a"].running, 0);
        let (answer, _) = c.complete("t", false, None, 40 * MS).expect("completes");
        assert_eq!(answer["duration_ms"], 30, "measured from the reassignment");
        assert!(c.complete("t", true, None, 0).is_err());
        assert_eq!(c.agent_of("t")["state"], "failed");
        assert_eq!(c.books["b"].failed, 1);
        // A completed task may run again.
        c.assign("t", "a", None, false, 1, 0).expect("assigns again");
        assert_eq!(c.agent_of("t")["state"], "assigned");
    }

    #[test]
    fn histories_are_bounded() {
        let mut c = Coordinator::default();
        for i in 0..TASK_HISTORY + 10 {
            let task = format!("t{i}");
            c.assign(&task, "a", None, false, 1, 0).expect("assigns");
            c.complete(&task, true, Some(1), 0).expect("completes");
        }
        assert_eq!(c.tasks.len(), TASK_HISTORY);
        assert_eq!(c.agent_of("t0")["state"], "unmapped");
        assert_eq!(c.books["a"].done, (TASK_HISTORY + 10) as u64, "counts are kept");
        for _ in 0..REQUEST_HISTORY + 5 {
            c.request(any(), 0, Some(0), &[], 0).expect("times out at once");
        }
        assert_eq!(c.requests.len(), REQUEST_HISTORY);
        assert!(c.status("req-1", 0).is_err());
    }

    #[test]
    fn reservations_add_to_the_host_load_so_an_agent_is_never_overbooked() {
        let mut c = Coordinator::default();
        // Capacity 2, one task running on the host that the plugin does not know of.
        let fleet = [loaded("a", 1, 2)];
        let (answer, _) = c.request(any(), 0, None, &fleet, 0).expect("answers");
        assert_eq!(answer["status"], "fulfilled");
        let (answer, _) = c.request(any(), 0, None, &fleet, 0).expect("answers");
        assert_eq!(answer["status"], "queued", "1 running + 1 reserved fill capacity 2");
        assert!(c.serve(&fleet, 0).is_empty(), "a queue scan does not overbook either");
        // The host's task ends: the queued request takes its slot.
        assert_eq!(c.serve(&[loaded("a", 0, 2)], 0).len(), 1);
        // A task mapped here that the host runs is counted once: host load 1, one live task.
        let mut c = Coordinator::default();
        c.assign("t", "b", None, false, 3, 0).expect("assigns");
        let fleet = [loaded("b", 1, 3)];
        for expected in ["fulfilled", "fulfilled", "queued"] {
            let (answer, _) = c.request(any(), 0, None, &fleet, 0).expect("answers");
            assert_eq!(answer["status"], expected, "max(1, 1) + 2 reservations fill capacity 3");
        }
    }

    #[test]
    fn reservations_expire_after_the_ttl_unless_released_or_turned_into_a_task() {
        let mut c = Coordinator::default();
        c.configure(10, None, 100);
        let fleet = [member("a", 3, &[])];
        c.request(any(), 0, None, &fleet, 0).expect("fulfils");
        c.request(any(), 0, None, &fleet, 10 * MS).expect("fulfils");
        c.request(any(), 0, None, &fleet, 20 * MS).expect("fulfils");
        c.assign("t", "a", Some("req-1"), false, 3, 50 * MS).expect("assigns");
        c.release("req-3").expect("releases");
        assert_eq!(
            c.status("req-2", 60 * MS).expect("known")["reservation_expires_in_ms"],
            50
        );
        let (answer, _) = c.request(any(), 0, None, &fleet, 60 * MS).expect("answers");
        assert_eq!(answer["status"], "fulfilled", "req-4");
        let (answer, _) = c.request(any(), 0, None, &fleet, 60 * MS).expect("answers");
        assert_eq!(answer["status"], "queued", "req-5: a holds t, req-2 and req-4");
        assert!(!c.expire(109 * MS), "nothing due yet");
        assert!(c.expire(110 * MS), "req-2 is due");
        let expired = c.status("req-2", 110 * MS).expect("known");
        assert_eq!(expired["status"], "released");
        assert_eq!(expired["reason"], REASON_EXPIRED);
        assert!(expired.get("reservation_expires_in_ms").is_none());
        assert_eq!(
            c.status("req-1", 110 * MS).expect("known")["status"],
            "fulfilled",
            "became t"
        );
        assert!(c.status("req-3", 110 * MS).expect("known").get("reason").is_none());
        let err = c.release("req-2").unwrap_err();
        assert!(err.message.contains("released (reservation expired)"), "{err}");
        assert_eq!(c.own("a"), Own { live: 1, reserved: 1 });
        let served = c.serve(&fleet, 110 * MS);
        assert_eq!(served.len(), 1, "req-5 takes the expired slot");
        assert!(c.expire(160 * MS), "req-4, 100 ms after its fulfilment");
        assert_eq!(status(&c, "req-4"), "released");
        assert_eq!(status(&c, "req-5"), "fulfilled", "its own TTL runs from 110 ms");
        assert!(c.expire(210 * MS));
        assert_eq!(c.own("a"), Own { live: 1, reserved: 0 });
        assert!(c.reservations.is_empty());
    }

    #[test]
    fn a_deregistered_agent_loses_its_reservations_and_keeps_its_tasks() {
        let mut c = Coordinator::default();
        let fleet = [member("a", 3, &[]), member("b", 1, &[])];
        c.request(any(), 0, None, &fleet[..1], 0).expect("fulfils on a");
        c.request(any(), 0, None, &fleet[..1], 0).expect("fulfils on a");
        c.request(any(), 0, None, &fleet, 0).expect("fulfils on b");
        assert_eq!(c.status("req-3", 0).expect("known")["agent_id"], "b");
        c.assign("t", "a", None, false, 3, 0).expect("assigns");
        c.depart("a", 5 * MS);
        for id in ["req-1", "req-2"] {
            let answer = c.status(id, 5 * MS).expect("known");
            assert_eq!(answer["status"], "released", "{id}");
            assert_eq!(answer["reason"], REASON_DEREGISTERED, "{id}");
        }
        assert_eq!(status(&c, "req-3"), "fulfilled", "b is untouched");
        assert_eq!(c.own("a"), Own { live: 1, reserved: 0 });
        assert_eq!(c.agent_of("t")["agent_id"], "a");
        assert_eq!(c.tasks_of("a", false).expect("known here")["task_ids"], json!(["t"]));
        let workload = c.workload(Some("a"), &[]).expect("known here");
        assert_eq!(workload["agents"][0]["registered"], false);
        assert_eq!(workload["agents"][0]["assigned"], 1);
        assert_eq!(workload["totals"]["reserved"], 0);
        // A snapshot taken before the plugin heard of it gives it no work; a later one (the agent
        // registered again) does.
        let (answer, _) = c.request(any(), 0, None, &fleet[..1], 5 * MS).expect("answers");
        assert_eq!(answer["status"], "queued");
        assert!(c.serve(&fleet[..1], 4 * MS).is_empty());
        assert_eq!(c.serve(&fleet[..1], 6 * MS).len(), 1);
        c.expire(5 * MS + DEPARTED_MEMORY_NS + 1);
        assert!(c.departed.is_empty(), "forgotten after a while");
    }
}
