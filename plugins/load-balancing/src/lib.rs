//! `LoadBalancingPlugin`: spreads work over the agent fleet by power of two choices over
//! peak-EWMA latency (or least loaded, weighted round robin, round robin), keeps agents within
//! their capacity with admission control and a bounded queue, proposes moves from hot agents to
//! cold ones, and keeps failing agents out of every pick with a circuit breaker. For
//! applications that embed the orchestrator (statically, or as a dynamic library built from
//! this crate).
//!
//! # How the plugin sees the fleet
//!
//! The plugin keeps its own table of agents (id, status, capacity, the host's load) so that a
//! pick never materialises the fleet: it is filled from the host at initialization, kept up to
//! date by the host's `AgentRegistered`, `AgentDeregistered` and `AgentStatusChanged` events,
//! and reconciled with the host's cheap `agent_loads()` when its figures are older than
//! `load_refresh_ms` (10 ms by default; the host's load changes without events). An id named in
//! a request that the table does not know yet (events are delivered asynchronously) is looked
//! up with the host.
//!
//! - **Registration is cheap.** The host delivers events on one task, so `AgentRegistered`
//!   only inserts the id (active, no load, capacity and weight not known yet) without asking
//!   the host anything. The first request after it fills the figures in before it uses them:
//!   with one `host.agent(id)` per new agent when they are few (at most 64, or at most 1/16 of
//!   the fleet), else with one read of the fleet (`agent_loads()`), which gives capacity,
//!   status and load but no metadata. An agent's metadata `weight` is then read with
//!   `host.agent(id)` only when a `weighted_round_robin` pick considers it.
//! - **Fleet snapshots apply in order.** A snapshot is read outside the lock; the table
//!   remembers when the last one it applied was taken and ignores an older one (it would bring
//!   back agents that left since).
//! - **Re-reading scales with the fleet.** A re-read walks the whole fleet under the lock, so
//!   it never happens more often than every 10 x the duration of the last one (measured on the
//!   host's clock): the interval in force is `max(load_refresh_ms, 10 x last re-read)`, which
//!   keeps re-reading under about a tenth of the time. A fleet of 1,000 agents (re-read in
//!   microseconds) is re-read every `load_refresh_ms`; a fleet of 1,000,000, whose re-read
//!   takes tens of milliseconds, every few hundred milliseconds.
//!
//! An agent's **load** is `max(host load, pending)`, where *pending* counts the slots taken
//! through this plugin (`start`, a pick with `acquire`, `admit`) and not given back (`finish`,
//! `release`): the host's load and this plugin's count usually describe the same work, so the
//! larger is taken, never their sum. Its **capacity** is the override set with `set_capacity`,
//! else the host's.
//!
//! **Candidates** of a pick are the `available_agents` given (unknown ids are skipped, an id
//! listed twice counts once), else every known agent; either way only agents that are `active`
//! or `sleeping` and whose circuit admits them. An open circuit keeps an agent out of every
//! pick and admission; a half-open one admits exactly one probe.
//!
//! **Peak EWMA** (as in Finagle, tower and linkerd): each agent has a round-trip-time estimate.
//! Between observations it decays towards zero with `tau = half_life / ln 2`, so an agent that
//! was slow once and then left alone is tried again eventually. An observation is compared
//! with the estimate as decayed to now (`cur`, what a pick sees), never the raw stored value:
//! above `cur` it replaces it at once; at or below, the estimate becomes
//! `cur x w + rtt x (1 - w)` with `w = exp(-elapsed / tau)` (`elapsed` since the last
//! observation), so a fast answer never raises it. (A 500 ms spike, read one half-life later
//! as 250 ms, followed by a 10 ms answer: 130 ms.) An agent never observed is assumed to take
//! `default_rtt_ms`. Its **cost** is `rtt_estimate_ms x (load + 1)`.
//!
//! **Circuits**: `failure_threshold` consecutive failures (from `finish`, `observe` or
//! `report` with `success: false`) open an agent's circuit for `base_backoff_ms x 2^(n - 1)`
//! (`n`: times opened since it last closed), capped at `max_backoff_ms`. After the backoff it is
//! half-open: the next pick or admission may choose it once, as a probe (a probe with no
//! outcome is given up after one more backoff). Only an outcome reported for the agent while
//! the probe is out settles it: a success closes it and resets its counters, a failure opens it
//! again with the doubled backoff. Outcomes reported while half-open with no probe out (the late
//! answer of a call started before the circuit opened, an `observe`) are ignored: the clock
//! alone never closes or reopens a circuit.
//!
//! # Capabilities
//!
//! **`adaptive_balancing`**: picks an agent, and learns from calls. `op` selects the operation
//! (`pick` when absent).
//! - `{"op"?: "pick", "available_agents"?: [id], "strategy"?: "p2c_peak_ewma" (the default,
//!   unless configured otherwise) | "least_loaded" | "weighted_round_robin" | "round_robin",
//!   "acquire"?: bool (default false: take a slot on the agent, as `start` does)}` ->
//!   `{"selected_agent", "strategy", "load", "pending", "capacity" (after the pick), "rtt_ms"
//!   (its latency estimate), "acquired", "probe" (whether it is the probe of a half-open
//!   circuit), "cost"? and "compared"? ([{"agent_id", "cost"}], winner first; P2C only)}`.
//!   - `p2c_peak_ewma`: two distinct random candidates, the lower cost wins.
//!   - `least_loaded`: the lowest `load / capacity`; ties go to the lowest id.
//!   - `weighted_round_robin`: smooth weighted round robin (nginx): each candidate gains its
//!     weight, the highest total is chosen and loses the sum of the weights. Weights: the
//!     agent's metadata `weight` (a positive number), else the configured `weights`, else 1.
//!   - `round_robin`: a rotating cursor over the candidates.
//!
//!   With no candidate left (none given, none registered, all busy, offline or behind open
//!   circuits), the answer is `success: false` with an `error` that counts each reason.
//!   A pick does not check capacity: admission (`capacity_management`) does.
//! - `{"op": "start", "agent_id"}` -> `{"agent_id", "pending", "host_load", "load",
//!   "capacity", "host_capacity"}`: one more call in flight on the agent.
//! - `{"op": "finish", "agent_id", "latency_ms": number from 0 to 86400000 (one day),
//!   "success"?: bool (default true)}` ->
//!   the same figures plus `{"rtt_ms", "circuit": "closed" | "open" | "half_open",
//!   "consecutive_failures", "admitted_tickets": [ticket]}`: one fewer in flight (refused when
//!   none is), the latency observed, the outcome fed to the circuit; the freed slot may admit
//!   queued tickets.
//! - `{"op": "observe", "agent_id", "latency_ms", "success"?}` -> as `finish`, for a call made
//!   elsewhere: the pending count does not change.
//!
//! **`capacity_management`**: capacity, admission and workload over time. `op` selects the
//! operation (`snapshot` when absent).
//! - `{"op": "snapshot"}` -> `{"agents": [{"agent_id", "status", "load", "host_load",
//!   "pending", "capacity", "utilisation", "circuit"}] (by id), "queued", "at_ms" (wall clock,
//!   ms since the Unix epoch)}`; the snapshot is also recorded (the last 1,000 are kept).
//! - `{"op": "history", "limit"?: integer (default 100)}` -> `{"snapshots": [..] (newest
//!   last), "recorded"}`.
//! - `{"op": "set_capacity", "agent_id", "capacity": integer >= 1 | null}` -> the agent's
//!   figures and `admitted_tickets`: overrides the host's capacity for admission and
//!   least-loaded picks (`null`: back to the host's). Raising it may admit queued tickets.
//! - `{"op": "admit", "agent_id"? | "available_agents"?, "queue"?: bool (default false)}`:
//!   takes a slot (pending + 1) on the given agent, or on the least-utilised candidate with room
//!   (ties: lowest id) -> `{"admitted": true, "agent_id", "load", "capacity", "probe"}`. When
//!   every candidate is full (or unavailable): `{"admitted": false, "queued": false, "reason",
//!   "candidate", "load", "capacity"}`, or with `"queue": true` and room in the queue,
//!   `{"admitted": false, "queued": true, "ticket": integer, "position", "reason", "candidate",
//!   "load", "capacity"}`. `load` and `capacity` are those of `candidate`: the agent named, else
//!   the least-utilised candidate that takes work (ties: lowest id), else the least-utilised
//!   known candidate whatever its status; all three are `null` when no candidate is known.
//! - `{"op": "release", "agent_id"}` -> the agent's figures and `admitted_tickets`: gives back
//!   a slot (refused when it holds none); the oldest queued ticket that fits the agent takes it.
//! - `{"op": "ticket", "ticket"}` -> `{"ticket", "status": "queued" | "admitted" | "refused" |
//!   "expired" | "cancelled", "position"? (queued), "agent_id"? (admitted), "reason"?
//!   (refused: its agent deregistered), "waited_ms"}`.
//! - `{"op": "cancel", "ticket"}` -> the same, `"status": "cancelled"`; only a queued ticket
//!   can be cancelled.
//!
//! Queued tickets are served oldest first whenever room may have appeared: a slot given back
//! (`release`, `finish`), a capacity raised, an agent registering or able to take work again, a
//! circuit closing, and each time the host's loads are read again. A ticket admitted that way
//! holds its slot like any admission (give it back with `release`) and is announced with a
//! custom event `ticket_admitted` `{"ticket", "agent_id", "waited_ms"}`. A ticket waits at most
//! `queue_timeout_ms`; expiry is found lazily, at the next operation that looks at the queue.
//!
//! **`resource_optimization`**: rebalancing and health. `op` selects the operation
//! (`proposals` when absent).
//! - `{"op": "proposals"}` -> `{"proposals": [{"from", "to", "tasks"}], "open_circuits":
//!   [id], "mean_utilisation", "threshold", "unplaced"}`. An agent's work is its load plus the
//!   tickets queued for it alone. Work moves off unhealthy agents (offline, or a circuit not
//!   closed: all of it) and off agents whose utilisation is above the mean by more than
//!   `rebalance_threshold` (down to the mean), onto agents below the mean that are healthy and
//!   active or sleeping (up to the mean, never over capacity): greedily, the hottest source
//!   first onto the coldest target first. The mean is all work over the capacity of the healthy
//!   agents. `unplaced` counts work that should move but found no room.
//! - `{"op": "report", "agent_id", "success": bool}` -> `{"agent_id", "state",
//!   "consecutive_failures", "times_opened", "open_until_ms"?, "retry_in_ms"?,
//!   "probe_in_flight", "open_circuits": [id]}`: feeds the circuit breaker; `open_circuits`
//!   lists every agent whose circuit is not closed, by id, after it.
//! - `{"op": "circuits"}` -> `{"circuits": [..]}`: every circuit not closed, as `report`
//!   answers, by id. `open_until_ms` is on the host's monotonic clock; `retry_in_ms` is what
//!   is left of the backoff.
//!
//! Circuits opening and closing are announced with custom events `circuit_opened`
//! `{"agent_id", "backoff_ms", "times_opened"}` and `circuit_closed` `{"agent_id"}`.
//!
//! Malformed requests (data that is not an object, a missing or mistyped field, an unknown
//! field, an unknown `op` or strategy, an agent that is not registered, finishing or releasing
//! what was not taken, an unknown ticket) are refused with `PluginError::invalid_request`,
//! saying what was expected. `null` data reads as `{}`.
//!
//! # Configuration
//!
//! ```toml
//! [LoadBalancingPlugin]
//! default_strategy = "p2c_peak_ewma" # for picks that name none
//! half_life_ms = 10000               # of the latency estimate (default 10 s)
//! default_rtt_ms = 30                # assumed for agents never observed
//! seed = 42                          # makes P2C reproducible (default: from the clock)
//! max_queued = 1000                  # admission tickets queued at most (0: never queue)
//! queue_timeout_ms = 60000           # how long a ticket may wait (default 1 minute)
//! rebalance_threshold = 0.25         # utilisation above the mean that makes a source
//! failure_threshold = 5              # consecutive failures that open a circuit
//! base_backoff_ms = 1000             # first backoff; doubles each time it reopens
//! max_backoff_ms = 60000             # cap on the backoff
//! load_refresh_ms = 10               # how old the host's loads may get (0: every call)
//!
//! [LoadBalancingPlugin.weights]      # weighted round robin, for agents without metadata `weight`
//! agent-7 = 3
//! ```
//!
//! Unknown keys are refused at initialization, naming the key; so are a half-life of 0 or above
//! one day (86,400,000 ms), a `default_rtt_ms` above one day, a zero failure threshold, base
//! backoff or queue timeout, a maximum backoff below the base, and weights, RTTs or thresholds
//! that are negative or not numbers. `latency_ms` in requests is likewise refused above one
//! day: a bigger figure is no round trip, and `1e303` would be infinite in nanoseconds and NaN
//! once decayed, a cost that wins every P2C comparison.
//!
//! # The core, without the plugin
//!
//! [`Balancer`] is the synchronous core the plugin wraps: it takes the time as an argument
//! (`now_ns`) instead of reading a clock, so it runs in simulated time (tests, the bench) as
//! well as under the host's monotonic clock. One P2C pick over 1,000 agents is O(1): two random
//! draws (re-drawn while they land on agents that cannot be picked) and two cost computations.
//!
//! # Consistency
//!
//! All state sits behind one mutex, held for in-memory work only, never across an `.await`;
//! the host is asked for figures before it is taken.

mod balancer;
mod capacity;
mod circuit;
mod ewma;
mod input;
mod rng;

pub use balancer::{
    AgentSpec, BalanceError, Balancer, BalancerConfig, CircuitView, DEFAULT_BASE_BACKOFF_MS, DEFAULT_FAILURE_THRESHOLD,
    DEFAULT_HALF_LIFE_MS, DEFAULT_LOAD_REFRESH_MS, DEFAULT_MAX_BACKOFF_MS, DEFAULT_MAX_QUEUED,
    DEFAULT_QUEUE_TIMEOUT_MS, DEFAULT_REBALANCE_THRESHOLD, DEFAULT_RTT_MS, HISTORY_LEN, LoadView, MAX_HALF_LIFE_MS,
    MAX_LATENCY_MS, Notice, Outcome, Pick, SETTLED_TICKETS_KEPT, Strategy,
};
pub use capacity::{
    Admission, AdmitTarget, AgentRow, Closest, Proposal, Proposals, Released, Snapshot, TicketStatus, TicketView,
};
pub use circuit::CircuitState;

use input::Object;
use plugin_api::prelude::*;
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};

/// The plugin's name.
pub const NAME: &str = "LoadBalancingPlugin";

/// How many snapshots `history` returns when no `limit` is given.
const DEFAULT_HISTORY_LIMIT: u64 = 100;

/// A fleet re-read happens at most once every this many times its own last duration.
const SYNC_COST_FACTOR: u64 = 10;

/// Agents registered by event whose figures are filled with one `host.agent(id)` each when
/// there are at most this many (or at most 1/16 of the fleet); more take one fleet read.
const FILL_LOOKUPS: usize = 64;

const BALANCING_EXPECTED: &str = "{\"op\"?: \"pick\", \"available_agents\"?: [string], \"strategy\"?: \"p2c_peak_ewma\" | \"least_loaded\" | \"weighted_round_robin\" | \"round_robin\", \"acquire\"?: bool}, or {\"op\": \"start\", \"agent_id\"}, or {\"op\": \"finish\" | \"observe\", \"agent_id\", \"latency_ms\": number, \"success\"?: bool}";
const PICK_EXPECTED: &str = "{\"op\"?: \"pick\", \"available_agents\"?: [string], \"strategy\"?: \"p2c_peak_ewma\" | \"least_loaded\" | \"weighted_round_robin\" | \"round_robin\", \"acquire\"?: bool}";
const START_EXPECTED: &str = "{\"op\": \"start\", \"agent_id\": string}";
const FINISH_EXPECTED: &str = "{\"op\": \"finish\" | \"observe\", \"agent_id\": string, \"latency_ms\": number from 0 to 86400000 (one day), \"success\"?: bool}";
const CAPACITY_EXPECTED: &str = "{\"op\"?: \"snapshot\"}, or {\"op\": \"history\", \"limit\"?: integer}, or {\"op\": \"set_capacity\", \"agent_id\", \"capacity\": integer >= 1 | null}, or {\"op\": \"admit\", \"agent_id\"? | \"available_agents\"?, \"queue\"?: bool}, or {\"op\": \"release\", \"agent_id\"}, or {\"op\": \"ticket\" | \"cancel\", \"ticket\": integer}";
const SNAPSHOT_EXPECTED: &str = "{\"op\"?: \"snapshot\"}";
const HISTORY_EXPECTED: &str = "{\"op\": \"history\", \"limit\"?: integer}";
const SET_CAPACITY_EXPECTED: &str =
    "{\"op\": \"set_capacity\", \"agent_id\": string, \"capacity\": integer >= 1, or null for the host's}";
const ADMIT_EXPECTED: &str =
    "{\"op\": \"admit\", \"agent_id\"?: string | \"available_agents\"?: [string] (not both), \"queue\"?: bool}";
const RELEASE_EXPECTED: &str = "{\"op\": \"release\", \"agent_id\": string}";
const TICKET_EXPECTED: &str = "{\"op\": \"ticket\" | \"cancel\", \"ticket\": integer (from a queued admit)}";
const OPTIMIZATION_EXPECTED: &str =
    "{\"op\"?: \"proposals\"}, or {\"op\": \"report\", \"agent_id\", \"success\": bool}, or {\"op\": \"circuits\"}";
const PROPOSALS_EXPECTED: &str = "{\"op\"?: \"proposals\"}";
const REPORT_EXPECTED: &str = "{\"op\": \"report\", \"agent_id\": string, \"success\": bool}";
const CIRCUITS_EXPECTED: &str = "{\"op\": \"circuits\"}";

/// Load balancing, capacity and circuit breaking over the host's agents. Call `initialize`
/// (the orchestrator does, at registration) before anything else; until then it answers
/// "unavailable".
pub struct LoadBalancingPlugin {
    host: OnceLock<HostHandle>,
    state: Mutex<Balancer>,
    /// `load_refresh_ms`, in nanoseconds.
    refresh_ns: AtomicU64,
    /// When the host's loads were last read (host monotonic nanoseconds).
    synced_ns: AtomicU64,
    /// How long the last fleet re-read took (host monotonic nanoseconds).
    sync_cost_ns: AtomicU64,
    /// Whether agents registered by event may still lack their figures.
    unfilled: AtomicBool,
    /// The configured default strategy, as its index in [`Strategy::ALL`].
    default_strategy: AtomicU8,
}

impl Default for LoadBalancingPlugin {
    fn default() -> Self {
        Self {
            host: OnceLock::new(),
            state: Mutex::new(Balancer::default()),
            refresh_ns: AtomicU64::new(DEFAULT_LOAD_REFRESH_MS * 1_000_000),
            synced_ns: AtomicU64::new(0),
            sync_cost_ns: AtomicU64::new(0),
            unfilled: AtomicBool::new(false),
            default_strategy: AtomicU8::new(0),
        }
    }
}

impl std::fmt::Debug for LoadBalancingPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadBalancingPlugin").finish_non_exhaustive()
    }
}

fn refuse(e: BalanceError) -> PluginError {
    PluginError::invalid_request(e.to_string())
}

/// A custom event for each notice.
fn announce(host: &HostHandle, notices: Vec<Notice>) {
    for notice in notices {
        match notice {
            Notice::TicketAdmitted {
                ticket,
                agent_id,
                waited_ms,
            } => host.emit(
                "ticket_admitted",
                json!({"ticket": ticket, "agent_id": &*agent_id, "waited_ms": waited_ms}),
            ),
            Notice::CircuitOpened {
                agent_id,
                backoff_ms,
                times_opened,
            } => host.emit(
                "circuit_opened",
                json!({"agent_id": &*agent_id, "backoff_ms": backoff_ms, "times_opened": times_opened}),
            ),
            Notice::CircuitClosed { agent_id } => host.emit("circuit_closed", json!({"agent_id": &*agent_id})),
        }
    }
}

fn to_json<T: serde::Serialize>(value: &T) -> Result<Value, PluginError> {
    serde_json::to_value(value).map_err(|e| PluginError::new(format!("{NAME}: could not encode the answer: {e}")))
}

impl LoadBalancingPlugin {
    /// A plugin with the default configuration (the orchestrator hands it its own at
    /// initialization).
    pub fn new() -> Self {
        Self::default()
    }

    fn host(&self) -> Result<&HostHandle, PluginError> {
        self.host
            .get()
            .ok_or_else(|| PluginError::unavailable(format!("{NAME} is not initialized")))
    }

    fn lock(&self) -> MutexGuard<'_, Balancer> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` on the balancer, then announces what happened.
    fn with<T>(&self, host: &HostHandle, f: impl FnOnce(&mut Balancer) -> T) -> T {
        let (answer, notices) = {
            let mut state = self.lock();
            let answer = f(&mut state);
            let notices = if state.has_notices() {
                state.take_notices()
            } else {
                Vec::new()
            };
            (answer, notices)
        };
        announce(host, notices);
        answer
    }

    /// The interval between two fleet re-reads now in force:
    /// `max(load_refresh_ms, 10 x the last re-read's duration)`.
    fn refresh_interval_ns(&self) -> u64 {
        self.refresh_ns.load(Ordering::Relaxed).max(
            self.sync_cost_ns
                .load(Ordering::Relaxed)
                .saturating_mul(SYNC_COST_FACTOR),
        )
    }

    /// The host's clock now, after re-reading the host's figures if they are older than the
    /// refresh interval, or filling in those of agents registered since the last request.
    fn refresh(&self, host: &HostHandle) -> u64 {
        let now = host.monotonic_ns();
        let last = self.synced_ns.load(Ordering::Acquire);
        if now.saturating_sub(last) >= self.refresh_interval_ns()
            && self
                .synced_ns
                .compare_exchange(last, now, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        {
            self.sync_fleet(host, now);
        } else if self.unfilled.load(Ordering::Acquire) {
            self.fill(host, now);
        }
        now
    }

    /// Reads the host's fleet (outside the lock) and applies it, unless a newer snapshot was
    /// applied meanwhile; records how long it took.
    fn sync_fleet(&self, host: &HostHandle, taken_ns: u64) {
        // Agents registered from here on are not in the snapshot: they raise the flag again.
        self.unfilled.store(false, Ordering::Release);
        let fleet = host.agent_loads();
        self.with(host, |state| state.sync(&fleet, taken_ns));
        let cost = host.monotonic_ns().saturating_sub(taken_ns);
        self.sync_cost_ns.store(cost, Ordering::Relaxed);
    }

    /// Fills in the figures of agents known only from their registration event.
    fn fill(&self, host: &HostHandle, now: u64) {
        if !self.unfilled.swap(false, Ordering::AcqRel) {
            return;
        }
        let (ids, fleet) = {
            let mut state = self.lock();
            (state.take_unfilled(), state.len())
        };
        if ids.is_empty() {
            return;
        }
        if ids.len() <= FILL_LOOKUPS || ids.len().saturating_mul(16) <= fleet {
            let specs: Vec<AgentSpec> = ids
                .iter()
                .filter_map(|id| host.agent(id))
                .map(|info| AgentSpec::from(&info))
                .collect();
            self.with(host, |state| {
                for spec in &specs {
                    state.fill(spec, now);
                }
            });
        } else {
            self.synced_ns.fetch_max(now, Ordering::AcqRel);
            self.sync_fleet(host, now);
        }
    }

    /// Reads the metadata weight of the candidates a weighted round robin is about to consider
    /// whose weight was never read (agents known from an event or a fleet snapshot).
    fn learn_weights(&self, host: &HostHandle, candidates: Option<&[&str]>, now: u64) {
        let unweighted = self.lock().unweighted(candidates, now);
        if unweighted.is_empty() {
            return;
        }
        let weights: Vec<(Arc<str>, Option<f64>)> = unweighted
            .into_iter()
            .map(|id| {
                let weight = host.agent(&id).and_then(|info| AgentSpec::from(&info).weight);
                (id, weight)
            })
            .collect();
        let mut state = self.lock();
        for (id, weight) in weights {
            let _ = state.set_weight(&id, weight);
        }
    }

    fn default_strategy(&self) -> Strategy {
        Strategy::ALL[usize::from(self.default_strategy.load(Ordering::Relaxed)) % Strategy::ALL.len()]
    }

    /// Makes sure the balancer knows every listed id the host knows (events are asynchronous:
    /// an agent registered a moment ago may not have reached `on_event` yet).
    fn learn(&self, host: &HostHandle, ids: &[&str], now: u64) {
        let unknown: Vec<&str> = {
            let state = self.lock();
            ids.iter().copied().filter(|id| !state.contains(id)).collect()
        };
        if unknown.is_empty() {
            return;
        }
        let found: Vec<AgentInfo> = unknown.iter().filter_map(|id| host.agent(id)).collect();
        if !found.is_empty() {
            self.with(host, |state| {
                for info in &found {
                    state.upsert_agent(AgentSpec::from(info), now);
                }
            });
        }
    }

    /// Like [`learn`](Self::learn) for one agent that must be registered.
    fn known(&self, host: &HostHandle, id: &str, now: u64) -> Result<(), PluginError> {
        self.learn(host, &[id], now);
        if self.lock().contains(id) {
            Ok(())
        } else {
            Err(PluginError::invalid_request(format!("agent `{id}` is not registered")))
        }
    }

    fn adaptive_balancing(&self, host: &HostHandle, data: &Value) -> Result<IntegrationResponse, PluginError> {
        let empty = Object::new();
        let obj = input::object(data, &empty, BALANCING_EXPECTED)?;
        let op = input::op(obj, &["pick", "start", "finish", "observe"], BALANCING_EXPECTED)?;
        match op {
            "pick" => {
                input::only(
                    obj,
                    &["op", "available_agents", "strategy", "acquire"],
                    "op `pick`",
                    PICK_EXPECTED,
                )?;
                let candidates = input::opt_ids(obj, "available_agents", PICK_EXPECTED)?;
                let strategy = match input::opt_string(obj, "strategy", PICK_EXPECTED)? {
                    None => None,
                    Some(name) => Some(Strategy::from_name(name).ok_or_else(|| {
                        PluginError::invalid_request(format!(
                            "unknown strategy `{name}`: expected one of p2c_peak_ewma, least_loaded, weighted_round_robin, round_robin"
                        ))
                    })?),
                };
                let acquire = input::opt_bool(obj, "acquire", PICK_EXPECTED)?.unwrap_or(false);
                let strategy = strategy.unwrap_or_else(|| self.default_strategy());
                let now = self.refresh(host);
                if let Some(ids) = &candidates {
                    self.learn(host, ids, now);
                }
                if strategy == Strategy::WeightedRoundRobin {
                    self.learn_weights(host, candidates.as_deref(), now);
                }
                let picked = self.with(host, |state| state.pick(strategy, candidates.as_deref(), acquire, now));
                match picked {
                    Ok(pick) => Ok(IntegrationResponse::ok(pick_json(&pick))),
                    Err(BalanceError::NoCandidate(why)) => Ok(IntegrationResponse::failure(why)),
                    Err(other) => Err(refuse(other)),
                }
            }
            "start" => {
                input::only(obj, &["op", "agent_id"], "op `start`", START_EXPECTED)?;
                let agent = input::string(obj, "agent_id", START_EXPECTED)?;
                let now = self.refresh(host);
                self.known(host, agent, now)?;
                let view = self.with(host, |state| state.start(agent, now)).map_err(refuse)?;
                Ok(IntegrationResponse::ok(to_json(&view)?))
            }
            _ => {
                let context = if op == "finish" { "op `finish`" } else { "op `observe`" };
                input::only(
                    obj,
                    &["op", "agent_id", "latency_ms", "success"],
                    context,
                    FINISH_EXPECTED,
                )?;
                let agent = input::string(obj, "agent_id", FINISH_EXPECTED)?;
                let latency_ms = input::millis(obj, "latency_ms", FINISH_EXPECTED)?;
                let success = input::opt_bool(obj, "success", FINISH_EXPECTED)?.unwrap_or(true);
                let now = self.refresh(host);
                self.known(host, agent, now)?;
                let outcome = self
                    .with(host, |state| {
                        if op == "finish" {
                            state.finish(agent, latency_ms, success, now)
                        } else {
                            state.observe(agent, latency_ms, success, now)
                        }
                    })
                    .map_err(refuse)?;
                Ok(IntegrationResponse::ok(to_json(&outcome)?))
            }
        }
    }

    fn capacity_management(&self, host: &HostHandle, data: &Value) -> Result<Value, PluginError> {
        let empty = Object::new();
        let obj = input::object(data, &empty, CAPACITY_EXPECTED)?;
        let op = input::op(
            obj,
            &[
                "snapshot",
                "history",
                "set_capacity",
                "admit",
                "release",
                "ticket",
                "cancel",
            ],
            CAPACITY_EXPECTED,
        )?;
        match op {
            "snapshot" => {
                input::only(obj, &["op"], "op `snapshot`", SNAPSHOT_EXPECTED)?;
                let now = self.refresh(host);
                let at_ms = host.now_unix_ms();
                let snapshot = self.with(host, |state| state.snapshot(now, at_ms));
                to_json(&*snapshot)
            }
            "history" => {
                input::only(obj, &["op", "limit"], "op `history`", HISTORY_EXPECTED)?;
                let limit = input::opt_u64(obj, "limit", HISTORY_EXPECTED)?.unwrap_or(DEFAULT_HISTORY_LIMIT);
                let limit = usize::try_from(limit).unwrap_or(usize::MAX);
                let snapshots = self.lock().history(limit);
                let recorded = snapshots.len();
                let snapshots: Vec<&Snapshot> = snapshots.iter().map(|s| &**s).collect();
                Ok(json!({"snapshots": to_json(&snapshots)?, "recorded": recorded}))
            }
            "set_capacity" => {
                input::only(
                    obj,
                    &["op", "agent_id", "capacity"],
                    "op `set_capacity`",
                    SET_CAPACITY_EXPECTED,
                )?;
                let agent = input::string(obj, "agent_id", SET_CAPACITY_EXPECTED)?;
                let capacity = match obj.get("capacity") {
                    None => {
                        return Err(PluginError::invalid_request(format!(
                            "missing `capacity`; expected {SET_CAPACITY_EXPECTED}"
                        )));
                    }
                    Some(Value::Null) => None,
                    Some(v) => Some(
                        v.as_u64()
                            .and_then(|n| u32::try_from(n).ok())
                            .filter(|n| *n >= 1)
                            .ok_or_else(|| {
                                input::mistyped("capacity", "an integer from 1 to 2^32 - 1", v, SET_CAPACITY_EXPECTED)
                            })?,
                    ),
                };
                let now = self.refresh(host);
                self.known(host, agent, now)?;
                let released = self
                    .with(host, |state| state.set_capacity(agent, capacity, now))
                    .map_err(refuse)?;
                to_json(&released)
            }
            "admit" => {
                input::only(
                    obj,
                    &["op", "agent_id", "available_agents", "queue"],
                    "op `admit`",
                    ADMIT_EXPECTED,
                )?;
                let agent = input::opt_string(obj, "agent_id", ADMIT_EXPECTED)?;
                let candidates = input::opt_ids(obj, "available_agents", ADMIT_EXPECTED)?;
                let queue = input::opt_bool(obj, "queue", ADMIT_EXPECTED)?.unwrap_or(false);
                let now = self.refresh(host);
                let target = match (agent, &candidates) {
                    (Some(_), Some(_)) => {
                        return Err(PluginError::invalid_request(format!(
                            "give `agent_id` or `available_agents`, not both; expected {ADMIT_EXPECTED}"
                        )));
                    }
                    (Some(agent), None) => {
                        self.known(host, agent, now)?;
                        AdmitTarget::Agent(agent)
                    }
                    (None, Some(ids)) => {
                        self.learn(host, ids, now);
                        AdmitTarget::Listed(ids)
                    }
                    (None, None) => AdmitTarget::Any,
                };
                let admission = self
                    .with(host, |state| state.admit(target, queue, now))
                    .map_err(refuse)?;
                Ok(match admission {
                    Admission::Admitted {
                        agent_id,
                        load,
                        capacity,
                        probe,
                    } => json!({
                        "admitted": true, "agent_id": &*agent_id, "load": load, "capacity": capacity, "probe": probe,
                    }),
                    Admission::Queued {
                        ticket,
                        position,
                        reason,
                        closest,
                    } => json!({
                        "admitted": false, "queued": true, "ticket": ticket, "position": position, "reason": reason,
                        "candidate": closest.candidate.as_deref(), "load": closest.load, "capacity": closest.capacity,
                    }),
                    Admission::Refused { reason, closest } => json!({
                        "admitted": false, "queued": false, "reason": reason,
                        "candidate": closest.candidate.as_deref(), "load": closest.load, "capacity": closest.capacity,
                    }),
                })
            }
            "release" => {
                input::only(obj, &["op", "agent_id"], "op `release`", RELEASE_EXPECTED)?;
                let agent = input::string(obj, "agent_id", RELEASE_EXPECTED)?;
                let now = self.refresh(host);
                self.known(host, agent, now)?;
                let released = self.with(host, |state| state.release(agent, now)).map_err(refuse)?;
                to_json(&released)
            }
            _ => {
                let context = if op == "ticket" { "op `ticket`" } else { "op `cancel`" };
                input::only(obj, &["op", "ticket"], context, TICKET_EXPECTED)?;
                let ticket = input::opt_u64(obj, "ticket", TICKET_EXPECTED)?.ok_or_else(|| {
                    PluginError::invalid_request(format!("missing `ticket` (an integer); expected {TICKET_EXPECTED}"))
                })?;
                let now = self.refresh(host);
                let view = self
                    .with(host, |state| {
                        if op == "ticket" {
                            state.ticket(ticket, now)
                        } else {
                            state.cancel_ticket(ticket, now)
                        }
                    })
                    .map_err(refuse)?;
                to_json(&view)
            }
        }
    }

    fn resource_optimization(&self, host: &HostHandle, data: &Value) -> Result<Value, PluginError> {
        let empty = Object::new();
        let obj = input::object(data, &empty, OPTIMIZATION_EXPECTED)?;
        let op = input::op(obj, &["proposals", "report", "circuits"], OPTIMIZATION_EXPECTED)?;
        match op {
            "proposals" => {
                input::only(obj, &["op"], "op `proposals`", PROPOSALS_EXPECTED)?;
                let now = self.refresh(host);
                let proposals = self.with(host, |state| state.proposals(now));
                to_json(&proposals)
            }
            "report" => {
                input::only(obj, &["op", "agent_id", "success"], "op `report`", REPORT_EXPECTED)?;
                let agent = input::string(obj, "agent_id", REPORT_EXPECTED)?;
                let success = input::bool(obj, "success", REPORT_EXPECTED)?;
                let now = self.refresh(host);
                self.known(host, agent, now)?;
                let (view, open) = self
                    .with(host, |state| {
                        state
                            .report(agent, success, now)
                            .map(|view| (view, state.open_circuits()))
                    })
                    .map_err(refuse)?;
                let mut answer = to_json(&view)?;
                let open: Vec<&str> = open.iter().map(|id| &**id).collect();
                answer["open_circuits"] = json!(open);
                Ok(answer)
            }
            _ => {
                input::only(obj, &["op"], "op `circuits`", CIRCUITS_EXPECTED)?;
                let now = self.refresh(host);
                let circuits = self.lock().circuits(now);
                Ok(json!({"circuits": to_json(&circuits)?}))
            }
        }
    }
}

fn pick_json(pick: &Pick) -> Value {
    let mut answer = json!({
        "selected_agent": &*pick.agent_id,
        "strategy": pick.strategy.as_str(),
        "load": pick.load,
        "pending": pick.pending,
        "capacity": pick.capacity,
        "rtt_ms": pick.rtt_ms,
        "acquired": pick.acquired,
        "probe": pick.probe,
    });
    if let Some(cost) = pick.cost {
        answer["cost"] = json!(cost);
        let mut compared = vec![json!({"agent_id": &*pick.agent_id, "cost": cost})];
        if let Some((other, other_cost)) = &pick.compared {
            compared.push(json!({"agent_id": &**other, "cost": other_cost}));
        }
        answer["compared"] = Value::Array(compared);
    }
    answer
}

#[async_trait]
impl OrchestrationPlugin for LoadBalancingPlugin {
    fn name(&self) -> &str {
        NAME
    }

    fn version(&self) -> &str {
        env!("CARGO_PKG_VERSION")
    }

    fn capabilities(&self) -> Vec<String> {
        vec![
            "adaptive_balancing".into(),
            "capacity_management".into(),
            "resource_optimization".into(),
        ]
    }

    async fn initialize(&self, host: HostHandle) -> Result<(), PluginError> {
        let config: BalancerConfig = host.config_as()?;
        let refresh_ns = config.load_refresh_ms.saturating_mul(1_000_000);
        let default_strategy = Strategy::ALL
            .iter()
            .position(|s| *s == config.default_strategy)
            .and_then(|i| u8::try_from(i).ok())
            .unwrap_or(0);
        let mut balancer = Balancer::new(config).map_err(|e| PluginError::new(format!("{NAME} configuration: {e}")))?;
        let now = host.monotonic_ns();
        for info in host.agents() {
            balancer.upsert_agent(AgentSpec::from(&info), now);
        }
        *self.lock() = balancer;
        self.refresh_ns.store(refresh_ns, Ordering::Relaxed);
        self.default_strategy.store(default_strategy, Ordering::Relaxed);
        self.synced_ns.store(now, Ordering::Release);
        let _ = self.host.set(host);
        Ok(())
    }

    async fn process_request(&self, request: IntegrationRequest) -> Result<IntegrationResponse, PluginError> {
        let host = self.host()?;
        let data = &request.data;
        match request.capability.as_str() {
            "adaptive_balancing" => self.adaptive_balancing(host, data),
            "capacity_management" => self.capacity_management(host, data).map(IntegrationResponse::ok),
            "resource_optimization" => self.resource_optimization(host, data).map(IntegrationResponse::ok),
            other => Err(PluginError::invalid_request(format!(
                "{NAME} does not serve `{other}` (it serves adaptive_balancing, capacity_management, resource_optimization)"
            ))),
        }
    }

    async fn health_check(&self) -> HealthStatus {
        if self.host.get().is_none() {
            return HealthStatus::unhealthy("not initialized");
        }
        let state = self.lock();
        if state.queue_full() && state.config().max_queued > 0 {
            return HealthStatus::degraded(format!(
                "the admission queue is full ({} tickets): admissions that find no room are refused",
                state.config().max_queued
            ));
        }
        let open = state.open_circuit_count();
        if open > 0 && open == state.len() {
            return HealthStatus::degraded(format!(
                "every agent ({open}) is behind an open circuit: picks fail until one recovers"
            ));
        }
        HealthStatus::healthy()
    }

    async fn on_event(&self, event: &OrchestratorEvent) {
        let Some(host) = self.host.get() else { return };
        let now = host.monotonic_ns();
        // Cheap: no `host.agent(id)` here (the host delivers events on one task); the first
        // request after a registration fills the agent's figures in (see the crate docs).
        let added = match event {
            OrchestratorEvent::AgentRegistered { agent_id } => {
                self.with(host, |state| state.register(agent_id, AgentStatus::Active, now))
            }
            OrchestratorEvent::AgentDeregistered { agent_id } => {
                self.with(host, |state| state.remove_agent(agent_id, now));
                false
            }
            OrchestratorEvent::AgentStatusChanged { agent_id, to, .. } => self.with(host, |state| {
                state.set_status(agent_id, *to, now).is_err() && state.register(agent_id, *to, now)
            }),
            _ => false,
        };
        if added {
            self.unfilled.store(true, Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use plugin_api::{BoxFuture, Host};
    use std::collections::BTreeMap;
    use std::future::Future;
    use std::pin::pin;
    use std::sync::atomic::AtomicUsize;
    use std::task::{Context, Poll, Waker};
    use std::time::Duration;

    const MS: u64 = 1_000_000;

    /// A host whose clock moves only when told, and which counts what it is asked.
    #[derive(Default)]
    struct FakeHost {
        config: Value,
        agents: Mutex<BTreeMap<String, AgentInfo>>,
        clock_ns: AtomicU64,
        /// How far the clock moves during one `agent_loads()` (a slow fleet read).
        read_cost_ns: AtomicU64,
        agent_calls: AtomicUsize,
        load_calls: AtomicUsize,
    }

    impl FakeHost {
        fn add(&self, id: &str, capacity: u32, weight: Option<f64>) {
            let mut metadata = BTreeMap::new();
            if let Some(w) = weight {
                metadata.insert("weight".to_owned(), json!(w));
            }
            let info = AgentInfo {
                id: id.to_owned(),
                name: id.to_owned(),
                capabilities: Vec::new(),
                status: AgentStatus::Active,
                load: 0,
                capacity,
                metadata,
            };
            self.agents
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(id.to_owned(), info);
        }

        fn advance(&self, ns: u64) {
            self.clock_ns.fetch_add(ns, Ordering::SeqCst);
        }

        fn calls(&self) -> (usize, usize) {
            (
                self.agent_calls.load(Ordering::SeqCst),
                self.load_calls.load(Ordering::SeqCst),
            )
        }
    }

    impl Host for FakeHost {
        fn plugin_config(&self, _plugin: &str) -> Value {
            self.config.clone()
        }
        fn agents(&self) -> Vec<AgentInfo> {
            self.agents
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .values()
                .cloned()
                .collect()
        }
        fn agent(&self, id: &str) -> Option<AgentInfo> {
            self.agent_calls.fetch_add(1, Ordering::SeqCst);
            self.agents.lock().unwrap_or_else(|p| p.into_inner()).get(id).cloned()
        }
        fn agent_loads(&self) -> Vec<AgentLoad> {
            self.load_calls.fetch_add(1, Ordering::SeqCst);
            self.advance(self.read_cost_ns.load(Ordering::SeqCst));
            self.agents
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .values()
                .cloned()
                .map(AgentLoad::from)
                .collect()
        }
        fn set_agent_status(&self, _id: &str, _status: AgentStatus) -> Result<(), PluginError> {
            Ok(())
        }
        fn call(
            &self,
            _caller: &str,
            _request: IntegrationRequest,
        ) -> BoxFuture<'static, Result<IntegrationResponse, PluginError>> {
            Box::pin(std::future::ready(Err(PluginError::unavailable(
                "no other capabilities",
            ))))
        }
        fn emit(&self, _event: OrchestratorEvent) {}
        fn now_unix_ms(&self) -> u64 {
            1_700_000_000_000 + self.clock_ns.load(Ordering::SeqCst) / MS
        }
        fn monotonic_ns(&self) -> u64 {
            self.clock_ns.load(Ordering::SeqCst)
        }
        fn spawn(&self, _task: BoxFuture<'static, ()>) {}
        fn sleep(&self, _duration: Duration) -> BoxFuture<'static, ()> {
            Box::pin(std::future::ready(()))
        }
    }

    /// Runs a future that never waits (the plugin's never do).
    fn run<F: Future>(future: F) -> F::Output {
        let mut future = pin!(future);
        match future.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(out) => out,
            Poll::Pending => panic!("the plugin waited"),
        }
    }

    fn plugin(host: &Arc<FakeHost>) -> LoadBalancingPlugin {
        let plugin = LoadBalancingPlugin::new();
        let handle = HostHandle::new(NAME, Arc::clone(host) as Arc<dyn Host>);
        run(plugin.initialize(handle)).expect("initializes");
        plugin
    }

    fn ask(plugin: &LoadBalancingPlugin, capability: &str, data: Value) -> Value {
        let answer = run(plugin.process_request(IntegrationRequest::new(capability, data.clone())))
            .unwrap_or_else(|e| panic!("{capability} {data}: {e}"));
        assert!(answer.success, "{capability} {data}: {answer:?}");
        answer.data
    }

    fn registered(plugin: &LoadBalancingPlugin, id: &str) {
        run(plugin.on_event(&OrchestratorEvent::AgentRegistered {
            agent_id: id.to_owned(),
        }));
    }

    #[test]
    fn registration_events_do_not_ask_the_host_and_figures_are_filled_before_use() {
        let host = Arc::new(FakeHost {
            config: json!({"seed": 1}),
            ..FakeHost::default()
        });
        let lb = plugin(&host);
        host.add("a", 2, None);
        host.add("b", 1, None);
        host.add("w", 1, Some(3.0));
        for id in ["a", "b", "w"] {
            registered(&lb, id);
        }
        assert_eq!(host.calls(), (0, 0), "a registration asks the host nothing");

        // The first request fills the three in (one lookup each: they are few), before use.
        let mut onto = Vec::new();
        for _ in 0..3 {
            let admitted = ask(
                &lb,
                "capacity_management",
                json!({"op": "admit", "available_agents": ["a", "b"]}),
            );
            assert_eq!(admitted["admitted"], true, "{admitted}");
            onto.push(admitted["agent_id"].as_str().unwrap_or_default().to_owned());
        }
        assert_eq!(
            onto,
            ["a", "b", "a"],
            "capacities 2 and 1, known before the first admission"
        );
        assert_eq!(host.calls(), (3, 0));
        // The lookups gave the weights too: weighted round robin asks nothing more.
        let mut counts = BTreeMap::<String, usize>::new();
        for _ in 0..5 {
            let pick = ask(
                &lb,
                "adaptive_balancing",
                json!({"strategy": "weighted_round_robin", "available_agents": ["a", "b", "w"]}),
            );
            *counts
                .entry(pick["selected_agent"].as_str().unwrap_or_default().to_owned())
                .or_default() += 1;
        }
        assert_eq!(
            counts,
            BTreeMap::from([("a".into(), 1), ("b".into(), 1), ("w".into(), 3)])
        );
        assert_eq!(host.calls(), (3, 0));

        // An agent first seen in a fleet read: its weight is read when a weighted round robin
        // considers it, once.
        host.add("s", 1, Some(2.0));
        host.advance(20 * MS);
        ask(&lb, "adaptive_balancing", json!({"strategy": "round_robin"}));
        assert_eq!(host.calls(), (3, 1));
        ask(&lb, "adaptive_balancing", json!({"strategy": "weighted_round_robin"}));
        assert_eq!(host.calls(), (4, 1));
        ask(&lb, "adaptive_balancing", json!({"strategy": "weighted_round_robin"}));
        assert_eq!(host.calls(), (4, 1));

        // A flood of registrations: one fleet read fills them all, no lookup.
        for i in 0..200 {
            let id = format!("f{i:03}");
            host.add(&id, 5, None);
            registered(&lb, &id);
        }
        run(lb.on_event(&OrchestratorEvent::AgentStatusChanged {
            agent_id: "unseen".into(),
            from: AgentStatus::Active,
            to: AgentStatus::Sleeping,
        }));
        assert_eq!(host.calls(), (4, 1));
        host.advance(MS);
        let snapshot = ask(&lb, "capacity_management", json!({}));
        assert_eq!(host.calls(), (4, 2));
        let rows = snapshot["agents"].as_array().cloned().unwrap_or_default();
        assert_eq!(rows.len(), 204, "`unseen` is not on the host: the fleet read drops it");
        assert!(
            rows.iter()
                .filter(|r| r["agent_id"].as_str().is_some_and(|id| id.starts_with('f')))
                .all(|r| r["capacity"] == 5)
        );
    }

    #[test]
    fn the_refresh_interval_grows_with_the_cost_of_a_fleet_read() {
        let host = Arc::new(FakeHost {
            config: json!({"seed": 1, "load_refresh_ms": 10}),
            ..FakeHost::default()
        });
        for id in ["a", "b", "c"] {
            host.add(id, 4, None);
        }
        let lb = plugin(&host);
        let pick = json!({"strategy": "round_robin"});
        ask(&lb, "adaptive_balancing", pick.clone());
        assert_eq!(host.calls().1, 0, "initialize read the fleet at 0");
        // A read that takes 5 ms: the next is put off for 50 ms, not 10.
        host.read_cost_ns.store(5 * MS, Ordering::SeqCst);
        host.advance(10 * MS);
        ask(&lb, "adaptive_balancing", pick.clone());
        assert_eq!(host.calls().1, 1);
        assert_eq!(lb.refresh_interval_ns(), 50 * MS);
        host.advance(30 * MS); // 35 ms after the read began
        ask(&lb, "adaptive_balancing", pick.clone());
        assert_eq!(host.calls().1, 1, "not re-read 10 ms after the last read");
        host.advance(15 * MS); // 50 ms after
        host.read_cost_ns.store(0, Ordering::SeqCst);
        ask(&lb, "adaptive_balancing", pick.clone());
        assert_eq!(host.calls().1, 2);
        // A cheap read again: back to load_refresh_ms.
        assert_eq!(lb.refresh_interval_ns(), 10 * MS);
        host.advance(10 * MS);
        ask(&lb, "adaptive_balancing", pick);
        assert_eq!(host.calls().1, 3);
    }
}
