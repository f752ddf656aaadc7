//! Capacity, admission control with a bounded queue of tickets, workload snapshots over time,
//! and rebalancing proposals: the rest of [`Balancer`].
//!
//! An agent has **room** when its load (`max(host load, pending)`) is below its capacity (the
//! override set with [`Balancer::set_capacity`], else the host's). Admission takes a slot
//! (pending + 1) on an agent that has room, is active or sleeping and whose circuit admits it.
//! When none does, a request may wait as a **ticket** in a FIFO queue (at most `max_queued`,
//! each for at most `queue_timeout_ms`). Queued tickets are served, oldest first, whenever room
//! may have appeared: a slot given back (`release`, `finish`), a capacity raised, an agent
//! joining or able to take work again, a circuit closing, and each time the host's figures are
//! read again (`sync`). Expiry is lazy: a ticket past its timeout is found expired the next
//! time anything looks at the queue.

use crate::balancer::{BalanceError, Balancer, LoadView, Notice, Pool, takes_work};
use crate::balancer::{HISTORY_LEN, SETTLED_TICKETS_KEPT};
use crate::circuit::CircuitState;
use plugin_api::AgentStatus;
use serde::Serialize;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

const NS_PER_MS: f64 = 1e6;

/// Where an admission may go.
#[derive(Debug, Clone, Copy)]
pub enum AdmitTarget<'a> {
    /// The least-utilised known agent with room.
    Any,
    /// This agent only.
    Agent(&'a str),
    /// The least-utilised of these with room.
    Listed(&'a [&'a str]),
}

/// The answer to an admission.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case", tag = "outcome")]
pub enum Admission {
    /// A slot was taken on the agent.
    Admitted {
        /// The agent.
        agent_id: Arc<str>,
        /// Its load after the admission.
        load: u32,
        /// Its capacity.
        capacity: u32,
        /// Whether this admission is the probe of a half-open circuit.
        probe: bool,
    },
    /// No room: the request waits in the queue as a ticket.
    Queued {
        /// The ticket, for `ticket` and `cancel`.
        ticket: u64,
        /// Tickets ahead of it.
        position: usize,
        /// Why it could not be admitted now.
        reason: String,
        /// The figures of the agent named, or of the least-utilised candidate.
        #[serde(flatten)]
        closest: Closest,
    },
    /// No room, and it was not (or could not be) queued.
    Refused {
        /// Why.
        reason: String,
        /// The figures of the agent named, or of the least-utilised candidate.
        #[serde(flatten)]
        closest: Closest,
    },
}

/// Whose load and capacity a refused or queued admission reports: the agent named, else the
/// least-utilised candidate that could take work were it not full (ties: lowest id), else the
/// least-utilised known candidate whatever its status or circuit. All `None` when no candidate
/// is known at all.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Closest {
    /// The agent.
    pub candidate: Option<Arc<str>>,
    /// Its load (`max(host load, pending)`).
    pub load: Option<u32>,
    /// Its capacity.
    pub capacity: Option<u32>,
}

/// Where a ticket stands.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case", tag = "status")]
pub enum TicketStatus {
    /// Waiting; `position` tickets are ahead of it.
    Queued {
        /// Tickets ahead of it.
        position: usize,
    },
    /// Admitted onto an agent (a slot is held there until released).
    Admitted {
        /// The agent.
        agent_id: Arc<str>,
    },
    /// Taken out of the queue without a slot.
    Refused {
        /// Why (its agent deregistered).
        reason: String,
    },
    /// It waited `queue_timeout_ms` without room appearing.
    Expired,
    /// Its holder cancelled it.
    Cancelled,
}

impl TicketStatus {
    /// `"queued"`, `"admitted"`, `"refused"`, `"expired"` or `"cancelled"`.
    pub const fn name(&self) -> &'static str {
        match self {
            TicketStatus::Queued { .. } => "queued",
            TicketStatus::Admitted { .. } => "admitted",
            TicketStatus::Refused { .. } => "refused",
            TicketStatus::Expired => "expired",
            TicketStatus::Cancelled => "cancelled",
        }
    }
}

/// A ticket and its status.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TicketView {
    /// The ticket.
    pub ticket: u64,
    /// Where it stands.
    #[serde(flatten)]
    pub status: TicketStatus,
    /// Time spent queued: until now, or until it left the queue, in milliseconds.
    pub waited_ms: f64,
}

/// What giving back a slot did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Released {
    /// The agent's figures after it.
    #[serde(flatten)]
    pub load: LoadView,
    /// Queued tickets admitted onto the agent as a result.
    pub admitted_tickets: Vec<u64>,
}

/// One agent in a snapshot.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AgentRow {
    /// The agent.
    pub agent_id: Arc<str>,
    /// Its status.
    pub status: AgentStatus,
    /// `max(host_load, pending)`.
    pub load: u32,
    /// What the host said it runs.
    pub host_load: u32,
    /// Slots taken through the balancer.
    pub pending: u32,
    /// Its capacity (the override if set, else the host's).
    pub capacity: u32,
    /// `load / capacity`.
    pub utilisation: f64,
    /// Its circuit.
    pub circuit: CircuitState,
}

/// The fleet's load at one moment.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Snapshot {
    /// When, in milliseconds (wall clock, for the plugin).
    pub at_ms: u64,
    /// Every agent, by id.
    pub agents: Vec<AgentRow>,
    /// Tickets waiting for room.
    pub queued: usize,
}

/// Move `tasks` units of work from one agent to another.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Proposal {
    /// The hot (or unhealthy) agent.
    pub from: Arc<str>,
    /// The cold agent.
    pub to: Arc<str>,
    /// How many.
    pub tasks: u32,
}

/// Rebalancing proposals and the figures behind them.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Proposals {
    /// The moves, biggest sources first.
    pub proposals: Vec<Proposal>,
    /// Agents whose circuit is open or half-open, by id.
    pub open_circuits: Vec<Arc<str>>,
    /// All work over the capacity of the healthy agents.
    pub mean_utilisation: f64,
    /// The configured `rebalance_threshold`.
    pub threshold: f64,
    /// Work that should move but found no target with room.
    pub unplaced: u64,
}

#[derive(Debug, Clone)]
enum Target {
    Any,
    Agent(Arc<str>),
    Listed(Box<[Arc<str>]>),
}

impl Target {
    fn fits(&self, id: &str) -> bool {
        match self {
            Target::Any => true,
            Target::Agent(agent) => &**agent == id,
            Target::Listed(ids) => ids.iter().any(|c| &**c == id),
        }
    }
}

#[derive(Debug, Clone)]
struct Queued {
    ticket: u64,
    target: Target,
    enqueued_ns: u64,
}

#[derive(Debug, Clone)]
struct Settled {
    status: TicketStatus,
    waited_ns: u64,
}

/// The admission queue, settled tickets and the snapshot history.
#[derive(Debug, Default)]
pub(crate) struct Admissions {
    queue: VecDeque<Queued>,
    settled: HashMap<u64, Settled>,
    settled_order: VecDeque<u64>,
    next_ticket: u64,
    history: VecDeque<Arc<Snapshot>>,
}

impl Balancer {
    fn queue_timeout_ns(&self) -> u64 {
        self.config.queue_timeout_ms.saturating_mul(1_000_000)
    }

    /// Tickets past their timeout leave the queue as expired. (Every ticket has the same
    /// timeout, so they expire in queue order.)
    pub(crate) fn expire(&mut self, now_ns: u64) {
        let timeout = self.queue_timeout_ns();
        while let Some(front) = self.admission.queue.front() {
            if now_ns.saturating_sub(front.enqueued_ns) < timeout {
                break;
            }
            let ticket = front.ticket;
            self.admission.queue.pop_front();
            self.settle(ticket, TicketStatus::Expired, timeout);
        }
    }

    fn settle(&mut self, ticket: u64, status: TicketStatus, waited_ns: u64) {
        let a = &mut self.admission;
        a.settled.insert(ticket, Settled { status, waited_ns });
        a.settled_order.push_back(ticket);
        if a.settled_order.len() > SETTLED_TICKETS_KEPT {
            if let Some(old) = a.settled_order.pop_front() {
                a.settled.remove(&old);
            }
        }
    }

    fn admit_ticket(&mut self, queued: Queued, i: usize, now_ns: u64) {
        self.take(i, true, now_ns);
        let agent_id = Arc::clone(&self.agents[i].id);
        let waited_ns = now_ns.saturating_sub(queued.enqueued_ns);
        self.settle(
            queued.ticket,
            TicketStatus::Admitted {
                agent_id: Arc::clone(&agent_id),
            },
            waited_ns,
        );
        self.notify(Notice::TicketAdmitted {
            ticket: queued.ticket,
            agent_id,
            waited_ms: waited_ns as f64 / NS_PER_MS,
        });
    }

    fn can_admit(&self, i: usize, now_ns: u64) -> bool {
        self.eligible(i, now_ns) && self.agents[i].has_room()
    }

    /// Agent `i` may have room: the oldest queued tickets it fits are admitted onto it.
    pub(crate) fn serve_agent(&mut self, i: usize, now_ns: u64) -> Vec<u64> {
        let mut admitted = Vec::new();
        if self.admission.queue.is_empty() {
            return admitted;
        }
        self.expire(now_ns);
        while self.can_admit(i, now_ns) {
            let id = &self.agents[i].id;
            let Some(position) = self.admission.queue.iter().position(|q| q.target.fits(id)) else {
                break;
            };
            let Some(queued) = self.admission.queue.remove(position) else {
                break;
            };
            admitted.push(queued.ticket);
            self.admit_ticket(queued, i, now_ns);
        }
        admitted
    }

    /// Room may have appeared anywhere: queued tickets are admitted, oldest first, each onto
    /// the least-utilised agent with room among its candidates.
    pub(crate) fn serve_all(&mut self, now_ns: u64) -> Vec<u64> {
        let mut admitted = Vec::new();
        if self.admission.queue.is_empty() {
            return admitted;
        }
        self.expire(now_ns);
        let mut has_room = vec![false; self.agents.len()];
        let mut rooms: Vec<usize> = Vec::new();
        for (i, flag) in has_room.iter_mut().enumerate() {
            if self.can_admit(i, now_ns) {
                *flag = true;
                rooms.push(i);
            }
        }
        let mut k = 0;
        while k < self.admission.queue.len() && !rooms.is_empty() {
            let best = |candidates: &mut dyn Iterator<Item = usize>| {
                candidates.reduce(|b, i| if self.less_loaded(i, b) { i } else { b })
            };
            let choice = match &self.admission.queue[k].target {
                Target::Any => best(&mut rooms.iter().copied()),
                Target::Agent(id) => self.index.get(id).copied().filter(|&i| has_room[i]),
                Target::Listed(ids) => best(
                    &mut ids
                        .iter()
                        .filter_map(|id| self.index.get(id).copied())
                        .filter(|&i| has_room[i]),
                ),
            };
            let Some(i) = choice else {
                k += 1;
                continue;
            };
            let Some(queued) = self.admission.queue.remove(k) else {
                break;
            };
            admitted.push(queued.ticket);
            self.admit_ticket(queued, i, now_ns);
            if !self.can_admit(i, now_ns) {
                has_room[i] = false;
                rooms.retain(|&r| r != i);
            }
        }
        admitted
    }

    /// Tickets queued for `id` alone are refused (it deregistered).
    pub(crate) fn refuse_pinned(&mut self, id: &str, now_ns: u64) {
        let queue = std::mem::take(&mut self.admission.queue);
        let (pinned, kept): (VecDeque<Queued>, VecDeque<Queued>) = queue
            .into_iter()
            .partition(|q| matches!(&q.target, Target::Agent(agent) if &**agent == id));
        self.admission.queue = kept;
        for q in pinned {
            self.settle(
                q.ticket,
                TicketStatus::Refused {
                    reason: format!("agent `{id}` deregistered"),
                },
                now_ns.saturating_sub(q.enqueued_ns),
            );
        }
    }

    /// Overrides an agent's capacity for admission and least-loaded picks (`None`: back to the
    /// host's). Queued tickets that now fit are admitted.
    pub fn set_capacity(&mut self, id: &str, capacity: Option<u32>, now_ns: u64) -> Result<Released, BalanceError> {
        if capacity == Some(0) {
            return Err(BalanceError::Invalid(
                "`capacity` must be at least 1 (to take an agent out of rotation, set its status to offline), or null to go back to the host's".into(),
            ));
        }
        let i = self.slot_index(id)?;
        self.agents[i].capacity_override = capacity;
        let admitted_tickets = self.serve_agent(i, now_ns);
        Ok(Released {
            load: self.agents[i].view(),
            admitted_tickets,
        })
    }

    /// The figures a refused or queued admission carries (see [`Closest`]).
    fn closest(&self, target: AdmitTarget<'_>, now_ns: u64) -> Closest {
        let found = match target {
            AdmitTarget::Agent(id) => self.index.get(id).copied(),
            AdmitTarget::Any | AdmitTarget::Listed(_) => {
                let pool = match target {
                    AdmitTarget::Listed(ids) => Pool::Listed(ids),
                    _ => Pool::All,
                };
                let least =
                    |it: &mut dyn Iterator<Item = usize>| it.reduce(|b, i| if self.less_loaded(i, b) { i } else { b });
                least(&mut self.eligible_in(pool, now_ns).into_iter()).or_else(|| match pool {
                    Pool::All => least(&mut (0..self.agents.len())),
                    Pool::Listed(ids) => least(&mut ids.iter().filter_map(|id| self.index.get(*id).copied())),
                })
            }
        };
        found.map_or_else(Closest::default, |i| {
            let slot = &self.agents[i];
            Closest {
                candidate: Some(Arc::clone(&slot.id)),
                load: Some(slot.load()),
                capacity: Some(slot.capacity()),
            }
        })
    }

    /// Admits a unit of work onto an agent with room (see [`AdmitTarget`]), taking a slot; or,
    /// when there is none and `queue` is set, queues a ticket if the queue has room; or refuses.
    /// A refusal or a ticket carries the load and capacity of the agent named, or of the
    /// least-utilised candidate ([`Closest`]).
    pub fn admit(&mut self, target: AdmitTarget<'_>, queue: bool, now_ns: u64) -> Result<Admission, BalanceError> {
        self.expire(now_ns);
        let (choice, reason) = match target {
            AdmitTarget::Agent(id) => {
                let i = self.slot_index(id)?;
                let slot = &self.agents[i];
                if !takes_work(slot.status) {
                    (None, format!("agent `{id}` is {}: it takes no work", slot.status))
                } else if !slot.circuit.admits(now_ns) {
                    (
                        None,
                        format!(
                            "agent `{id}` is behind an open circuit ({} consecutive failures)",
                            slot.circuit.failures
                        ),
                    )
                } else if !slot.has_room() {
                    (
                        None,
                        format!("agent `{id}` is at capacity ({}/{})", slot.load(), slot.capacity()),
                    )
                } else {
                    (Some(i), String::new())
                }
            }
            AdmitTarget::Any | AdmitTarget::Listed(_) => {
                let pool = match target {
                    AdmitTarget::Listed(ids) => Pool::Listed(ids),
                    _ => Pool::All,
                };
                let best = self
                    .eligible_in(pool, now_ns)
                    .into_iter()
                    .filter(|&i| self.agents[i].has_room())
                    .reduce(|b, i| if self.less_loaded(i, b) { i } else { b });
                match best {
                    Some(i) => (Some(i), String::new()),
                    None => (None, self.why_full(pool, now_ns)),
                }
            }
        };
        if let Some(i) = choice {
            let probe = self.take(i, true, now_ns);
            let slot = &self.agents[i];
            return Ok(Admission::Admitted {
                agent_id: Arc::clone(&slot.id),
                load: slot.load(),
                capacity: slot.capacity(),
                probe,
            });
        }
        let closest = self.closest(target, now_ns);
        if !queue {
            return Ok(Admission::Refused { reason, closest });
        }
        let max = self.config.max_queued;
        if self.admission.queue.len() >= max {
            return Ok(Admission::Refused {
                reason: format!("{reason}; the admission queue is full ({max} tickets)"),
                closest,
            });
        }
        let target = match target {
            AdmitTarget::Any => Target::Any,
            AdmitTarget::Agent(id) => Target::Agent(id.into()),
            AdmitTarget::Listed(ids) => Target::Listed(ids.iter().map(|id| Arc::from(*id)).collect()),
        };
        self.admission.next_ticket += 1;
        let ticket = self.admission.next_ticket;
        self.admission.queue.push_back(Queued {
            ticket,
            target,
            enqueued_ns: now_ns,
        });
        Ok(Admission::Queued {
            ticket,
            position: self.admission.queue.len() - 1,
            reason,
            closest,
        })
    }

    /// Why no agent of the pool can admit anything.
    fn why_full(&self, pool: Pool<'_>, now_ns: u64) -> String {
        let candidates: Vec<Option<usize>> = match pool {
            Pool::All => (0..self.agents.len()).map(Some).collect(),
            Pool::Listed(ids) => ids.iter().map(|id| self.index.get(*id).copied()).collect(),
        };
        if candidates.is_empty() {
            return match pool {
                Pool::All => "no agent is registered".to_owned(),
                Pool::Listed(_) => "`available_agents` is empty".to_owned(),
            };
        }
        let (mut unknown, mut unavailable, mut open, mut full) = (0, 0, 0, 0);
        for c in &candidates {
            match c {
                None => unknown += 1,
                Some(i) if !takes_work(self.agents[*i].status) => unavailable += 1,
                Some(i) if !self.agents[*i].circuit.admits(now_ns) => open += 1,
                Some(_) => full += 1,
            }
        }
        format!(
            "no candidate has room: of {}, {full} at capacity, {unavailable} busy or offline, {open} behind an open circuit, {unknown} not registered",
            candidates.len()
        )
    }

    /// Gives back a slot taken by [`admit`](Self::admit) (or `start`, or a pick with
    /// `acquire`): the oldest queued ticket that fits the agent takes it.
    pub fn release(&mut self, id: &str, now_ns: u64) -> Result<Released, BalanceError> {
        let i = self.slot_index(id)?;
        if self.agents[i].pending == 0 {
            return Err(BalanceError::Invalid(format!(
                "agent `{id}` holds no slot here: release only what `admit`, `start` or a pick with `acquire` took"
            )));
        }
        self.agents[i].pending -= 1;
        let admitted_tickets = self.serve_agent(i, now_ns);
        Ok(Released {
            load: self.agents[i].view(),
            admitted_tickets,
        })
    }

    /// Where a ticket stands.
    pub fn ticket(&mut self, ticket: u64, now_ns: u64) -> Result<TicketView, BalanceError> {
        self.expire(now_ns);
        if let Some((position, q)) = self
            .admission
            .queue
            .iter()
            .enumerate()
            .find(|(_, q)| q.ticket == ticket)
        {
            return Ok(TicketView {
                ticket,
                status: TicketStatus::Queued { position },
                waited_ms: now_ns.saturating_sub(q.enqueued_ns) as f64 / NS_PER_MS,
            });
        }
        match self.admission.settled.get(&ticket) {
            Some(settled) => Ok(TicketView {
                ticket,
                status: settled.status.clone(),
                waited_ms: settled.waited_ns as f64 / NS_PER_MS,
            }),
            None if ticket >= 1 && ticket <= self.admission.next_ticket => Err(BalanceError::Invalid(format!(
                "ticket {ticket} is forgotten: only the last {SETTLED_TICKETS_KEPT} settled tickets are kept"
            ))),
            None => Err(BalanceError::Invalid(format!(
                "no ticket {ticket}: tickets are numbers returned by a queued `admit`"
            ))),
        }
    }

    /// Takes a queued ticket out of the queue.
    pub fn cancel_ticket(&mut self, ticket: u64, now_ns: u64) -> Result<TicketView, BalanceError> {
        self.expire(now_ns);
        match self.admission.queue.iter().position(|q| q.ticket == ticket) {
            Some(position) => {
                let waited_ns = self
                    .admission
                    .queue
                    .remove(position)
                    .map_or(0, |q| now_ns.saturating_sub(q.enqueued_ns));
                self.settle(ticket, TicketStatus::Cancelled, waited_ns);
                self.ticket(ticket, now_ns)
            }
            None => {
                let view = self.ticket(ticket, now_ns)?;
                Err(BalanceError::Invalid(format!(
                    "ticket {ticket} is {}: only a queued ticket can be cancelled",
                    view.status.name()
                )))
            }
        }
    }

    /// Tickets waiting now.
    pub fn queued(&self) -> usize {
        self.admission.queue.len()
    }

    /// Whether the admission queue is full.
    pub fn queue_full(&self) -> bool {
        self.admission.queue.len() >= self.config.max_queued
    }

    /// Every agent's load now, by id; also recorded for [`history`](Self::history) (the last
    /// 1,000 are kept). `at_ms` is the time to stamp it with.
    pub fn snapshot(&mut self, now_ns: u64, at_ms: u64) -> Arc<Snapshot> {
        self.expire(now_ns);
        let mut agents: Vec<AgentRow> = self
            .agents
            .iter()
            .map(|s| AgentRow {
                agent_id: Arc::clone(&s.id),
                status: s.status,
                load: s.load(),
                host_load: s.host_load,
                pending: s.pending,
                capacity: s.capacity(),
                utilisation: s.utilisation(),
                circuit: s.circuit.state(now_ns),
            })
            .collect();
        agents.sort_by(|a, b| a.agent_id.cmp(&b.agent_id));
        let snapshot = Arc::new(Snapshot {
            at_ms,
            agents,
            queued: self.admission.queue.len(),
        });
        let history = &mut self.admission.history;
        if history.len() == HISTORY_LEN {
            history.pop_front();
        }
        history.push_back(Arc::clone(&snapshot));
        snapshot
    }

    /// The last `limit` recorded snapshots, newest last.
    pub fn history(&self, limit: usize) -> Vec<Arc<Snapshot>> {
        let history = &self.admission.history;
        history
            .iter()
            .skip(history.len().saturating_sub(limit))
            .cloned()
            .collect()
    }

    /// Rebalancing proposals: work (load plus tickets queued for that agent alone) moves off
    /// agents that are unhealthy (offline, or with a circuit not closed: all of their work)
    /// or hot (utilisation above the mean by more than `rebalance_threshold`: down to the
    /// mean), onto healthy agents below the mean that can take work (up to the mean, never
    /// over capacity). The mean is all work over the capacity of the healthy agents: the
    /// utilisation they would have with everything spread over them. Greedy: the hottest
    /// source first, onto the coldest target first.
    pub fn proposals(&mut self, now_ns: u64) -> Proposals {
        self.expire(now_ns);
        let mut queued_for: HashMap<&str, u32> = HashMap::new();
        for q in &self.admission.queue {
            if let Target::Agent(id) = &q.target {
                *queued_for.entry(&**id).or_default() += 1;
            }
        }
        let work = |i: usize| {
            let s = &self.agents[i];
            u64::from(s.load()) + u64::from(queued_for.get(&*s.id).copied().unwrap_or(0))
        };
        let healthy = |i: usize| {
            let s = &self.agents[i];
            s.status != AgentStatus::Offline && s.circuit.is_closed()
        };
        let n = self.agents.len();
        let total_work: u64 = (0..n).map(work).sum();
        let healthy_capacity: u64 = (0..n)
            .filter(|&i| healthy(i))
            .map(|i| u64::from(self.agents[i].capacity()))
            .sum();
        let mean = if healthy_capacity == 0 {
            0.0
        } else {
            total_work as f64 / healthy_capacity as f64
        };
        let threshold = self.config.rebalance_threshold;

        // (index, units to move, rank) for sources; (index, room) for targets.
        let mut sources: Vec<(usize, u64, f64)> = Vec::new();
        let mut targets: Vec<(usize, u64, f64)> = Vec::new();
        for i in 0..n {
            let s = &self.agents[i];
            let w = work(i);
            let capacity = u64::from(s.capacity());
            let utilisation = w as f64 / capacity as f64;
            let level = (mean * capacity as f64).ceil() as u64;
            if !healthy(i) {
                if w > 0 {
                    sources.push((i, w, f64::INFINITY));
                }
            } else if utilisation > mean + threshold {
                if w > level {
                    sources.push((i, w - level, utilisation));
                }
            } else if utilisation < mean && takes_work(s.status) {
                let room = level.min(capacity).saturating_sub(w);
                if room > 0 {
                    targets.push((i, room, utilisation));
                }
            }
        }
        let by_id = |a: usize, b: usize| self.agents[a].id.cmp(&self.agents[b].id);
        sources.sort_by(|a, b| b.2.total_cmp(&a.2).then_with(|| by_id(a.0, b.0)));
        targets.sort_by(|a, b| a.2.total_cmp(&b.2).then_with(|| by_id(a.0, b.0)));

        let mut proposals = Vec::new();
        let mut unplaced = 0u64;
        let mut t = 0;
        for (from, mut excess, _) in sources {
            while excess > 0 && t < targets.len() {
                let (to, room, _) = &mut targets[t];
                let moved = excess.min(*room);
                proposals.push(Proposal {
                    from: Arc::clone(&self.agents[from].id),
                    to: Arc::clone(&self.agents[*to].id),
                    tasks: u32::try_from(moved).unwrap_or(u32::MAX),
                });
                excess -= moved;
                *room -= moved;
                if *room == 0 {
                    t += 1;
                }
            }
            unplaced += excess;
        }
        let open_circuits = self.open_circuits();
        Proposals {
            proposals,
            open_circuits,
            mean_utilisation: mean,
            threshold,
            unplaced,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balancer::{AgentSpec, BalancerConfig};

    const MS: u64 = 1_000_000;

    fn balancer(config: BalancerConfig) -> Balancer {
        Balancer::new(BalancerConfig {
            seed: Some(3),
            ..config
        })
        .expect("valid")
    }

    fn admitted_onto(a: &Admission) -> &str {
        match a {
            Admission::Admitted { agent_id, .. } => agent_id,
            other => panic!("not admitted: {other:?}"),
        }
    }

    #[test]
    fn admission_fills_the_least_utilised_then_refuses_or_queues() {
        let mut lb = balancer(BalancerConfig {
            max_queued: 2,
            ..BalancerConfig::default()
        });
        lb.upsert_agent(AgentSpec::new("a").with_capacity(2), 0);
        lb.upsert_agent(AgentSpec::new("b").with_capacity(1), 0);
        let order: Vec<String> = (0..3)
            .map(|_| admitted_onto(&lb.admit(AdmitTarget::Any, false, 0).expect("ok")).to_owned())
            .collect();
        assert_eq!(
            order,
            ["a", "b", "a"],
            "0/2 = 0/1 (lowest id), then 0/1 < 1/2, then 1/2 < 1/1"
        );
        let Admission::Refused { reason, .. } = lb.admit(AdmitTarget::Any, false, 0).expect("ok") else {
            panic!("full");
        };
        assert!(reason.contains("2 at capacity"), "{reason}");
        let Admission::Refused { reason, .. } = lb.admit(AdmitTarget::Agent("b"), false, 0).expect("ok") else {
            panic!("full");
        };
        assert!(reason.contains("at capacity (1/1)"), "{reason}");
        assert!(lb.admit(AdmitTarget::Agent("ghost"), false, 0).is_err());

        // Queued, up to the bound.
        let q1 = lb.admit(AdmitTarget::Any, true, MS).expect("ok");
        let q2 = lb.admit(AdmitTarget::Agent("b"), true, 2 * MS).expect("ok");
        assert!(
            matches!(
                q1,
                Admission::Queued {
                    ticket: 1,
                    position: 0,
                    ..
                }
            ),
            "{q1:?}"
        );
        assert!(
            matches!(
                q2,
                Admission::Queued {
                    ticket: 2,
                    position: 1,
                    ..
                }
            ),
            "{q2:?}"
        );
        let Admission::Refused { reason, .. } = lb.admit(AdmitTarget::Any, true, 0).expect("ok") else {
            panic!("queue full");
        };
        assert!(reason.contains("queue is full (2 tickets)"), "{reason}");

        // A slot on b goes to the oldest ticket that fits b: ticket 1 (any agent).
        let released = lb.release("b", 5 * MS).expect("held");
        assert_eq!(released.admitted_tickets, [1]);
        let view = lb.ticket(1, 6 * MS).expect("known");
        assert_eq!(view.status, TicketStatus::Admitted { agent_id: "b".into() });
        assert_eq!(view.waited_ms, 4.0);
        assert_eq!(
            lb.ticket(2, 6 * MS).expect("known").status,
            TicketStatus::Queued { position: 0 }
        );
        // A slot on a does not fit ticket 2 (b only).
        assert!(lb.release("a", 7 * MS).expect("held").admitted_tickets.is_empty());
        // Raising b's capacity does.
        let raised = lb.set_capacity("b", Some(2), 8 * MS).expect("known");
        assert_eq!(raised.admitted_tickets, [2]);
        assert_eq!((raised.load.load, raised.load.capacity), (2, 2));
        assert!(matches!(
            lb.take_notices()[..],
            [
                Notice::TicketAdmitted { ticket: 1, .. },
                Notice::TicketAdmitted { ticket: 2, .. }
            ]
        ));
        assert!(lb.release("b", 0).is_ok() && lb.release("b", 0).is_ok());
        assert!(lb.release("b", 0).unwrap_err().to_string().contains("holds no slot"));
        assert!(lb.set_capacity("b", Some(0), 0).is_err());
    }

    #[test]
    fn refused_and_queued_admissions_carry_load_and_capacity() {
        let mut lb = balancer(BalancerConfig::default());
        lb.upsert_agent(AgentSpec::new("a").with_capacity(2).with_load(2), 0);
        lb.upsert_agent(AgentSpec::new("b").with_capacity(4).with_load(4), 0);
        lb.upsert_agent(
            AgentSpec::new("c").with_capacity(1).with_status(AgentStatus::Offline),
            0,
        );
        let figures = |a: &Admission| match a {
            Admission::Refused { closest, .. } | Admission::Queued { closest, .. } => closest.clone(),
            Admission::Admitted { .. } => panic!("admitted: {a:?}"),
        };
        let some = |id: &str, load: u32, capacity: u32| Closest {
            candidate: Some(id.into()),
            load: Some(load),
            capacity: Some(capacity),
        };
        // The least-utilised candidate that takes work (a and b are both full: the lowest id),
        // not the idle offline one.
        let refused = lb.admit(AdmitTarget::Any, false, 0).expect("ok");
        assert_eq!(figures(&refused), some("a", 2, 2));
        let encoded = serde_json::to_value(&refused).expect("encodes");
        assert_eq!(
            (
                &encoded["outcome"],
                &encoded["candidate"],
                &encoded["load"],
                &encoded["capacity"]
            ),
            (
                &serde_json::json!("refused"),
                &serde_json::json!("a"),
                &serde_json::json!(2),
                &serde_json::json!(2)
            ),
            "{encoded}"
        );
        let queued = lb.admit(AdmitTarget::Listed(&["b", "c"]), true, 0).expect("ok");
        assert_eq!(figures(&queued), some("b", 4, 4));
        // The agent named, whatever its state.
        let named = lb.admit(AdmitTarget::Agent("c"), false, 0).expect("ok");
        assert_eq!(figures(&named), some("c", 0, 1));
        // Only unavailable candidates: the least utilised of them.
        assert_eq!(
            figures(&lb.admit(AdmitTarget::Listed(&["c", "ghost"]), false, 0).expect("ok")),
            some("c", 0, 1)
        );
        // No candidate known at all.
        assert_eq!(
            figures(&lb.admit(AdmitTarget::Listed(&["ghost"]), false, 0).expect("ok")),
            Closest::default()
        );
    }

    #[test]
    fn tickets_expire_can_be_cancelled_and_are_refused_when_their_agent_leaves() {
        let mut lb = balancer(BalancerConfig {
            queue_timeout_ms: 100,
            ..BalancerConfig::default()
        });
        lb.upsert_agent(AgentSpec::new("a").with_capacity(1).with_load(1), 0);
        let t1 = lb.admit(AdmitTarget::Any, true, 0).expect("ok");
        let t2 = lb
            .admit(AdmitTarget::Listed(&["a", "later"]), true, 50 * MS)
            .expect("ok");
        let t3 = lb.admit(AdmitTarget::Agent("a"), true, 60 * MS).expect("ok");
        assert!(matches!(t1, Admission::Queued { ticket: 1, .. }));
        assert!(matches!(t2, Admission::Queued { ticket: 2, .. }));
        assert!(matches!(t3, Admission::Queued { ticket: 3, .. }));
        let view = lb.ticket(1, 100 * MS).expect("known");
        assert_eq!((view.status, view.waited_ms), (TicketStatus::Expired, 100.0));
        let cancelled = lb.cancel_ticket(3, 100 * MS).expect("queued");
        assert_eq!(cancelled.status, TicketStatus::Cancelled);
        assert!(
            lb.cancel_ticket(3, 100 * MS)
                .unwrap_err()
                .to_string()
                .contains("is cancelled")
        );
        // An agent that joins and fits a queued ticket takes it.
        lb.upsert_agent(AgentSpec::new("later").with_capacity(1), 120 * MS);
        assert_eq!(
            lb.ticket(2, 120 * MS).expect("known").status,
            TicketStatus::Admitted {
                agent_id: "later".into()
            }
        );
        let t4 = lb.admit(AdmitTarget::Agent("a"), true, 130 * MS).expect("ok");
        assert!(matches!(t4, Admission::Queued { ticket: 4, .. }));
        lb.remove_agent("a", 140 * MS);
        assert!(matches!(
            lb.ticket(4, 140 * MS).expect("known").status,
            TicketStatus::Refused { .. }
        ));
        assert!(lb.ticket(99, 0).unwrap_err().to_string().contains("no ticket 99"));
    }

    #[test]
    fn host_load_counts_and_a_sync_that_frees_room_serves_the_queue() {
        let mut lb = balancer(BalancerConfig::default());
        lb.upsert_agent(AgentSpec::new("a").with_capacity(2).with_load(2), 0);
        let queued = lb.admit(AdmitTarget::Any, true, 0).expect("ok");
        assert!(matches!(queued, Admission::Queued { .. }));
        let fleet = [plugin_api::AgentLoad {
            id: "a".into(),
            status: AgentStatus::Active,
            load: 1,
            capacity: 2,
        }];
        lb.sync(&fleet, MS);
        assert_eq!(
            lb.ticket(1, MS).expect("known").status,
            TicketStatus::Admitted { agent_id: "a".into() }
        );
        let a = lb.load("a").expect("known");
        assert_eq!((a.host_load, a.pending, a.load), (1, 1, 1));
    }

    #[test]
    fn snapshots_are_recorded_in_a_bounded_ring() {
        let mut lb = balancer(BalancerConfig::default());
        lb.upsert_agent(AgentSpec::new("b").with_capacity(4).with_load(1), 0);
        lb.upsert_agent(AgentSpec::new("a").with_capacity(2), 0);
        lb.start("a", 0).expect("known");
        let snap = lb.snapshot(0, 1_000);
        let rows: Vec<(&str, u32, f64)> = snap
            .agents
            .iter()
            .map(|r| (&*r.agent_id, r.load, r.utilisation))
            .collect();
        assert_eq!(rows, [("a", 1, 0.5), ("b", 1, 0.25)]);
        for t in 1..=(HISTORY_LEN as u64 + 5) {
            lb.snapshot(0, 1_000 + t);
        }
        let history = lb.history(usize::MAX);
        assert_eq!(history.len(), HISTORY_LEN);
        assert_eq!(history.last().map(|s| s.at_ms), Some(1_000 + HISTORY_LEN as u64 + 5));
        assert_eq!(
            lb.history(2).iter().map(|s| s.at_ms).collect::<Vec<_>>(),
            [2_004, 2_005]
        );
    }

    #[test]
    fn proposals_move_work_from_hot_and_unhealthy_agents_to_cold_ones() {
        let mut lb = balancer(BalancerConfig {
            failure_threshold: 1,
            ..BalancerConfig::default()
        });
        lb.upsert_agent(AgentSpec::new("hot").with_capacity(10).with_load(10), 0);
        lb.upsert_agent(AgentSpec::new("warm").with_capacity(10).with_load(5), 0);
        lb.upsert_agent(AgentSpec::new("cold").with_capacity(10).with_load(0), 0);
        lb.upsert_agent(AgentSpec::new("idle").with_capacity(2), 0);
        let p = lb.proposals(0);
        // 15 units over 32 slots: mean 0.47; hot (1.0) keeps ceil(4.7) = 5 and gives 5; cold
        // takes up to 5, idle up to ceil(0.94) = 1.
        assert!((p.mean_utilisation - 15.0 / 32.0).abs() < 1e-9);
        assert_eq!(
            p.proposals,
            [Proposal {
                from: "hot".into(),
                to: "cold".into(),
                tasks: 5
            }]
        );
        assert_eq!(p.unplaced, 0);
        // A broken agent's work all goes, and it is listed.
        lb.upsert_agent(AgentSpec::new("broken").with_capacity(4).with_load(3), 0);
        lb.report("broken", false, 0).expect("known");
        let p = lb.proposals(MS);
        assert_eq!(p.open_circuits, [Arc::from("broken")]);
        assert_eq!(p.proposals[0].from, Arc::from("broken"));
        let moved_from_broken: u32 = p
            .proposals
            .iter()
            .filter(|m| &*m.from == "broken")
            .map(|m| m.tasks)
            .sum();
        assert_eq!(moved_from_broken, 3);
        for m in &p.proposals {
            assert!(["cold", "idle"].contains(&&*m.to), "{m:?}");
        }
        // Balanced: nothing to do.
        let mut lb = balancer(BalancerConfig::default());
        lb.upsert_agent(AgentSpec::new("x").with_capacity(4).with_load(2), 0);
        lb.upsert_agent(AgentSpec::new("y").with_capacity(4).with_load(1), 0);
        assert!(lb.proposals(0).proposals.is_empty());
    }
}
