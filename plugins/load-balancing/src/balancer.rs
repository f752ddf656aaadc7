//! The balancer core: a plain, synchronous struct that holds every agent's load, latency
//! estimate and circuit, and answers picks. Time is an argument (`now_ns`, nanoseconds on any
//! monotonic clock), never read from a clock here, so tests and the simulation bench drive it
//! in simulated time; [`LoadBalancingPlugin`](crate::LoadBalancingPlugin) wraps it with the
//! host's monotonic clock.

use crate::circuit::{Circuit, CircuitState, Policy, Transition};
use crate::ewma::{PeakEwma, tau_ns};
use crate::rng::SplitMix64;
use plugin_api::{AgentInfo, AgentLoad, AgentStatus};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::fmt;
use std::sync::Arc;

/// Default half-life of the peak-EWMA latency estimate, in milliseconds.
pub const DEFAULT_HALF_LIFE_MS: u64 = 10_000;
/// Default round-trip time assumed for an agent never observed, in milliseconds.
pub const DEFAULT_RTT_MS: f64 = 30.0;
/// Default bound on queued admission tickets.
pub const DEFAULT_MAX_QUEUED: usize = 1_000;
/// Default time a ticket may wait in the admission queue, in milliseconds.
pub const DEFAULT_QUEUE_TIMEOUT_MS: u64 = 60_000;
/// Default excess of utilisation over the mean that makes an agent a source of moves.
pub const DEFAULT_REBALANCE_THRESHOLD: f64 = 0.25;
/// Default number of consecutive failures that opens an agent's circuit.
pub const DEFAULT_FAILURE_THRESHOLD: u32 = 5;
/// Default backoff of a circuit the first time it opens, in milliseconds.
pub const DEFAULT_BASE_BACKOFF_MS: u64 = 1_000;
/// Default cap on a circuit's backoff, in milliseconds.
pub const DEFAULT_MAX_BACKOFF_MS: u64 = 60_000;
/// Default age after which the plugin re-reads the host's loads, in milliseconds.
pub const DEFAULT_LOAD_REFRESH_MS: u64 = 10;
/// The largest latency accepted, in milliseconds: one day. Anything bigger is no round trip a
/// balancer can learn from (and `1e303` ms is infinite in nanoseconds, then NaN once decayed).
pub const MAX_LATENCY_MS: f64 = 86_400_000.0;
/// The longest half-life accepted for the latency estimate, in milliseconds: one day.
pub const MAX_HALF_LIFE_MS: u64 = 86_400_000;
/// How many capacity snapshots are kept for `history`.
pub const HISTORY_LEN: usize = 1_000;
/// How many settled (admitted, refused, expired, cancelled) tickets are remembered for `ticket`.
pub const SETTLED_TICKETS_KEPT: usize = 10_000;

const NS_PER_MS: f64 = 1e6;
/// Random draws P2C tries for each of its two candidates before it falls back to listing the
/// eligible ones (many agents offline or behind open circuits).
const SAMPLE_TRIES: usize = 8;
/// Undrained notices kept (the oldest go first).
const NOTICES_KEPT: usize = 4_096;

/// How a pick chooses among the candidates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// Power of two choices: two distinct random candidates, the one with the lower
    /// `rtt_estimate x (pending + 1)` wins (tower's `p2c` over `PeakEwma`).
    #[default]
    P2cPeakEwma,
    /// The lowest `load / capacity`; ties go to the lowest id.
    LeastLoaded,
    /// Smooth weighted round robin (nginx): agents take turns in proportion to their weight,
    /// spread out rather than in bursts.
    WeightedRoundRobin,
    /// Each candidate in turn.
    RoundRobin,
}

impl Strategy {
    /// Every strategy, the default first.
    pub const ALL: [Strategy; 4] = [
        Strategy::P2cPeakEwma,
        Strategy::LeastLoaded,
        Strategy::WeightedRoundRobin,
        Strategy::RoundRobin,
    ];

    /// The name used in requests and configuration: `"p2c_peak_ewma"`, `"least_loaded"`,
    /// `"weighted_round_robin"` or `"round_robin"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Strategy::P2cPeakEwma => "p2c_peak_ewma",
            Strategy::LeastLoaded => "least_loaded",
            Strategy::WeightedRoundRobin => "weighted_round_robin",
            Strategy::RoundRobin => "round_robin",
        }
    }

    /// The strategy with this name, if any.
    pub fn from_name(name: &str) -> Option<Strategy> {
        Strategy::ALL.into_iter().find(|s| s.as_str() == name)
    }
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The balancer's settings: the plugin's configuration. Every field has a default; unknown
/// keys are refused.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BalancerConfig {
    /// The strategy of a pick that names none (default `p2c_peak_ewma`).
    pub default_strategy: Strategy,
    /// Half-life of the latency estimate, in milliseconds (default 10,000; from 1 to
    /// 86,400,000, one day).
    pub half_life_ms: u64,
    /// Latency assumed for an agent never observed, in milliseconds (default 30; from 0 to
    /// 86,400,000, one day).
    pub default_rtt_ms: f64,
    /// Seed of the P2C generator: the same seed and the same calls give the same picks
    /// (default: from the clock).
    pub seed: Option<u64>,
    /// Weights for weighted round robin by agent id, for agents whose metadata has no numeric
    /// `weight` (default 1 each; each must be positive).
    pub weights: BTreeMap<String, f64>,
    /// Admission tickets queued at most (default 1,000); 0: never queue.
    pub max_queued: usize,
    /// How long a ticket may wait in the admission queue before it expires, in milliseconds
    /// (default 60,000; at least 1).
    pub queue_timeout_ms: u64,
    /// How far above the mean utilisation an agent must be to have work moved off it
    /// (default 0.25).
    pub rebalance_threshold: f64,
    /// Consecutive failures that open an agent's circuit (default 5; at least 1).
    pub failure_threshold: u32,
    /// Backoff of a circuit the first time it opens, in milliseconds (default 1,000; at least
    /// 1); it doubles each time it opens again without having closed.
    pub base_backoff_ms: u64,
    /// Cap on the backoff, in milliseconds (default 60,000; at least `base_backoff_ms`).
    pub max_backoff_ms: u64,
    /// How old the host's figures (loads, statuses, capacities, the fleet itself) may be
    /// before the plugin reads them again, in milliseconds (default 10; 0: on every call). The
    /// plugin never re-reads more often than every 10 x the duration of its last re-read, so
    /// that a big fleet is not scanned under the lock all the time: the interval in force is
    /// `max(load_refresh_ms, 10 x last re-read)`. Used by the plugin; the core is given loads
    /// explicitly.
    pub load_refresh_ms: u64,
}

impl Default for BalancerConfig {
    fn default() -> Self {
        Self {
            default_strategy: Strategy::default(),
            half_life_ms: DEFAULT_HALF_LIFE_MS,
            default_rtt_ms: DEFAULT_RTT_MS,
            seed: None,
            weights: BTreeMap::new(),
            max_queued: DEFAULT_MAX_QUEUED,
            queue_timeout_ms: DEFAULT_QUEUE_TIMEOUT_MS,
            rebalance_threshold: DEFAULT_REBALANCE_THRESHOLD,
            failure_threshold: DEFAULT_FAILURE_THRESHOLD,
            base_backoff_ms: DEFAULT_BASE_BACKOFF_MS,
            max_backoff_ms: DEFAULT_MAX_BACKOFF_MS,
            load_refresh_ms: DEFAULT_LOAD_REFRESH_MS,
        }
    }
}

impl BalancerConfig {
    /// Checks every value; the error names the key and says what is allowed.
    pub fn validate(&self) -> Result<(), String> {
        if !(1..=MAX_HALF_LIFE_MS).contains(&self.half_life_ms) {
            return Err(format!(
                "`half_life_ms` must be from 1 to {MAX_HALF_LIFE_MS} (milliseconds, one day at most; default 10000), not {}",
                self.half_life_ms
            ));
        }
        if !self.default_rtt_ms.is_finite() || !(0.0..=MAX_LATENCY_MS).contains(&self.default_rtt_ms) {
            return Err(format!(
                "`default_rtt_ms` must be a non-negative number of milliseconds, at most {MAX_LATENCY_MS} (one day), not {}",
                self.default_rtt_ms
            ));
        }
        if let Some((id, w)) = self.weights.iter().find(|(_, w)| !valid_weight(**w)) {
            return Err(format!("`weights.{id}` must be a positive number, not {w}"));
        }
        if self.queue_timeout_ms == 0 {
            return Err("`queue_timeout_ms` must be at least 1 (milliseconds; default 60000)".into());
        }
        if !self.rebalance_threshold.is_finite() || self.rebalance_threshold < 0.0 {
            return Err(format!(
                "`rebalance_threshold` must be a non-negative number (a utilisation, e.g. 0.25), not {}",
                self.rebalance_threshold
            ));
        }
        if self.failure_threshold == 0 {
            return Err("`failure_threshold` must be at least 1 (consecutive failures; default 5)".into());
        }
        if self.base_backoff_ms == 0 {
            return Err("`base_backoff_ms` must be at least 1 (milliseconds; default 1000)".into());
        }
        if self.max_backoff_ms < self.base_backoff_ms {
            return Err(format!(
                "`max_backoff_ms` ({}) must be at least `base_backoff_ms` ({})",
                self.max_backoff_ms, self.base_backoff_ms
            ));
        }
        Ok(())
    }

    fn policy(&self) -> Policy {
        Policy {
            failure_threshold: self.failure_threshold,
            base_backoff_ns: self.base_backoff_ms.saturating_mul(1_000_000),
            max_backoff_ns: self.max_backoff_ms.saturating_mul(1_000_000),
        }
    }
}

fn valid_weight(w: f64) -> bool {
    w.is_finite() && w > 0.0
}

/// Whether an agent with this status may be picked: active or sleeping (a sleeping agent is
/// woken by the work), not busy or offline.
pub(crate) fn takes_work(status: AgentStatus) -> bool {
    matches!(status, AgentStatus::Active | AgentStatus::Sleeping)
}

/// What the balancer is told about an agent when it joins (or when the host's figures for it
/// change).
#[derive(Debug, Clone, PartialEq)]
pub struct AgentSpec {
    /// Its id.
    pub id: Arc<str>,
    /// Its status.
    pub status: AgentStatus,
    /// Tasks it can run at once, as the host says (at least 1 is assumed).
    pub capacity: u32,
    /// Tasks the host says it runs now.
    pub load: u32,
    /// Its weight for weighted round robin, if it declares one (metadata `weight`).
    pub weight: Option<f64>,
}

impl AgentSpec {
    /// An active agent with capacity 1, no load and no weight of its own.
    pub fn new(id: impl Into<Arc<str>>) -> Self {
        Self {
            id: id.into(),
            status: AgentStatus::Active,
            capacity: 1,
            load: 0,
            weight: None,
        }
    }

    /// Sets the capacity.
    #[must_use]
    pub fn with_capacity(mut self, capacity: u32) -> Self {
        self.capacity = capacity;
        self
    }

    /// Sets the status.
    #[must_use]
    pub fn with_status(mut self, status: AgentStatus) -> Self {
        self.status = status;
        self
    }

    /// Sets the host's load.
    #[must_use]
    pub fn with_load(mut self, load: u32) -> Self {
        self.load = load;
        self
    }

    /// Sets the weight (ignored unless positive and finite).
    #[must_use]
    pub fn with_weight(mut self, weight: f64) -> Self {
        self.weight = Some(weight);
        self
    }
}

impl From<&AgentInfo> for AgentSpec {
    /// The weight comes from metadata `weight` when it is a positive number.
    fn from(a: &AgentInfo) -> Self {
        Self {
            id: a.id.as_str().into(),
            status: a.status,
            capacity: a.capacity,
            load: a.load,
            weight: a.metadata.get("weight").and_then(serde_json::Value::as_f64),
        }
    }
}

/// An error from the balancer: the caller's mistake, or nothing to pick.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum BalanceError {
    /// The agent is not known to the balancer.
    UnknownAgent(String),
    /// The request cannot be served as asked (nothing pending to finish, a bad value, an
    /// unknown ticket): the message says why.
    Invalid(String),
    /// No candidate could be chosen: the message says why (none given, none registered, all
    /// offline, busy or behind an open circuit).
    NoCandidate(String),
}

impl BalanceError {
    /// Whether this is the caller's mistake (as opposed to nothing being available).
    pub fn is_invalid(&self) -> bool {
        !matches!(self, BalanceError::NoCandidate(_))
    }
}

impl fmt::Display for BalanceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BalanceError::UnknownAgent(id) => write!(f, "agent `{id}` is not registered"),
            BalanceError::Invalid(message) | BalanceError::NoCandidate(message) => f.write_str(message),
        }
    }
}

impl std::error::Error for BalanceError {}

/// The answer to a pick.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Pick {
    /// The agent chosen.
    pub agent_id: Arc<str>,
    /// How it was chosen.
    pub strategy: Strategy,
    /// P2C only: the winner's cost, `rtt_ms x (load + 1)` before the pick.
    pub cost: Option<f64>,
    /// The winner's latency estimate now, in milliseconds.
    pub rtt_ms: f64,
    /// Its load after the pick (`max(host load, pending)`).
    pub load: u32,
    /// Slots taken through this balancer, after the pick.
    pub pending: u32,
    /// Its capacity (the override if one was set, else the host's).
    pub capacity: u32,
    /// Whether the pick took a slot (`acquire`).
    pub acquired: bool,
    /// Whether this pick is the probe of a half-open circuit.
    pub probe: bool,
    /// P2C only: the other candidate and its cost, when two were compared.
    pub compared: Option<(Arc<str>, f64)>,
}

/// An agent's load figures.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LoadView {
    /// The agent.
    pub agent_id: Arc<str>,
    /// Slots taken through this balancer.
    pub pending: u32,
    /// What the host last said it runs.
    pub host_load: u32,
    /// `max(host_load, pending)`: what picks and admission count.
    pub load: u32,
    /// The capacity admission counts (the override if set, else the host's).
    pub capacity: u32,
    /// The host's own capacity.
    pub host_capacity: u32,
}

/// What a finished call or an observation left behind.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Outcome {
    /// The agent's load figures after it.
    #[serde(flatten)]
    pub load: LoadView,
    /// The latency estimate now, in milliseconds.
    pub rtt_ms: f64,
    /// The circuit's state after it.
    pub circuit: CircuitState,
    /// Consecutive failures since the last success.
    pub consecutive_failures: u32,
    /// Queued tickets admitted onto the agent because a slot was freed.
    pub admitted_tickets: Vec<u64>,
}

/// One agent's circuit, as reported.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CircuitView {
    /// The agent.
    pub agent_id: Arc<str>,
    /// Closed, open or half-open.
    pub state: CircuitState,
    /// Consecutive failures since the last success.
    pub consecutive_failures: u32,
    /// Times it opened since it last closed.
    pub times_opened: u32,
    /// When the backoff ends, in milliseconds on the clock the balancer is driven by (the
    /// host's monotonic clock, for the plugin); absent while closed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub open_until_ms: Option<u64>,
    /// Milliseconds left until it half-opens (0 once half-open); absent while closed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_in_ms: Option<u64>,
    /// Whether a half-open probe is out and awaited.
    pub probe_in_flight: bool,
}

/// Something worth announcing that happened inside the balancer.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Notice {
    /// A queued ticket was admitted onto an agent.
    TicketAdmitted {
        /// The ticket.
        ticket: u64,
        /// The agent it was admitted onto.
        agent_id: Arc<str>,
        /// How long it waited, in milliseconds.
        waited_ms: f64,
    },
    /// An agent's circuit opened.
    CircuitOpened {
        /// The agent.
        agent_id: Arc<str>,
        /// How long it stays open, in milliseconds.
        backoff_ms: f64,
        /// Times opened since it last closed.
        times_opened: u32,
    },
    /// An agent's circuit closed (a probe succeeded).
    CircuitClosed {
        /// The agent.
        agent_id: Arc<str>,
    },
}

#[derive(Debug)]
pub(crate) struct Slot {
    pub(crate) id: Arc<str>,
    pub(crate) status: AgentStatus,
    pub(crate) host_capacity: u32,
    pub(crate) capacity_override: Option<u32>,
    pub(crate) host_load: u32,
    pub(crate) pending: u32,
    /// Whether `host_capacity` came from the host (an agent known only from its registration
    /// event has capacity 1 until the next fill).
    capacity_known: bool,
    /// Whether `own_weight` was read from the agent's metadata (not for an agent known only
    /// from its registration event, or from a fleet snapshot).
    weight_known: bool,
    /// The agent's own weight (metadata), if valid.
    own_weight: Option<f64>,
    /// The weight in use: own, else configured, else 1.
    weight: f64,
    wrr_current: f64,
    ewma: PeakEwma,
    pub(crate) circuit: Circuit,
    added_ns: u64,
    seen: u64,
}

impl Slot {
    #[inline]
    pub(crate) fn load(&self) -> u32 {
        self.host_load.max(self.pending)
    }

    #[inline]
    pub(crate) fn capacity(&self) -> u32 {
        self.capacity_override.unwrap_or(self.host_capacity).max(1)
    }

    pub(crate) fn utilisation(&self) -> f64 {
        f64::from(self.load()) / f64::from(self.capacity())
    }

    /// Whether admission may take a slot on it: its capacity is known and above its load.
    pub(crate) fn has_room(&self) -> bool {
        self.capacity_known && self.load() < self.capacity()
    }

    pub(crate) fn view(&self) -> LoadView {
        LoadView {
            agent_id: Arc::clone(&self.id),
            pending: self.pending,
            host_load: self.host_load,
            load: self.load(),
            capacity: self.capacity(),
            host_capacity: self.host_capacity,
        }
    }
}

/// A pick's winner, its cost (P2C) and the candidate it beat with that one's cost (P2C).
type Chosen = (usize, Option<f64>, Option<(usize, f64)>);

/// How long a deregistration is remembered against host snapshots taken before it (a snapshot
/// is applied microseconds after it is taken; this is ample).
const DEPARTED_KEPT_NS: u64 = 1_000_000_000;

/// The candidates of one pick: every known agent, or a list of ids.
#[derive(Clone, Copy)]
pub(crate) enum Pool<'a> {
    All,
    Listed(&'a [&'a str]),
}

/// The balancer: agents and their figures, picks, admission, circuits. See the crate docs for
/// what each operation does; every method that depends on time takes `now_ns`.
///
/// ```
/// use plugin_load_balancing::{AgentSpec, Balancer, BalancerConfig, Strategy};
///
/// let mut lb = Balancer::new(BalancerConfig { seed: Some(7), ..BalancerConfig::default() })?;
/// lb.upsert_agent(AgentSpec::new("fast").with_capacity(4), 0);
/// lb.upsert_agent(AgentSpec::new("slow").with_capacity(4), 0);
/// lb.observe("fast", 5.0, true, 0)?;
/// lb.observe("slow", 800.0, true, 0)?;
/// let pick = lb.pick(Strategy::P2cPeakEwma, None, true, 1_000_000)?;
/// assert_eq!(&*pick.agent_id, "fast");
/// lb.finish("fast", 6.0, true, 7_000_000)?;
/// # Ok::<(), plugin_load_balancing::BalanceError>(())
/// ```
#[derive(Debug)]
pub struct Balancer {
    pub(crate) config: BalancerConfig,
    pub(crate) policy: Policy,
    tau_ns: f64,
    default_rtt_ns: f64,
    pub(crate) agents: Vec<Slot>,
    pub(crate) index: HashMap<Arc<str>, usize>,
    rng: SplitMix64,
    rr_cursor: usize,
    /// Deregistered agents and when, so that a host snapshot taken before does not bring them back.
    departed: HashMap<Arc<str>, u64>,
    sync_generation: u64,
    /// When the last fleet snapshot applied was taken: an older one is ignored.
    last_sync_ns: Option<u64>,
    /// Agents added with [`register`](Balancer::register) whose capacity is not known yet (may
    /// hold ids filled or removed since).
    unfilled: Vec<Arc<str>>,
    /// Agents whose circuit is not closed.
    open: BTreeSet<Arc<str>>,
    /// Agents whose own weight was never read.
    unweighted_count: usize,
    notices: VecDeque<Notice>,
    pub(crate) admission: crate::capacity::Admissions,
}

impl Default for Balancer {
    fn default() -> Self {
        Self::build(BalancerConfig::default())
    }
}

impl Balancer {
    /// A balancer with this configuration, or an error naming the bad key.
    pub fn new(config: BalancerConfig) -> Result<Self, BalanceError> {
        config.validate().map_err(BalanceError::Invalid)?;
        Ok(Self::build(config))
    }

    fn build(config: BalancerConfig) -> Self {
        let rng = config.seed.map_or_else(SplitMix64::from_clock, SplitMix64::new);
        Self {
            policy: config.policy(),
            tau_ns: tau_ns(config.half_life_ms.max(1)),
            default_rtt_ns: config.default_rtt_ms * NS_PER_MS,
            agents: Vec::new(),
            index: HashMap::new(),
            rng,
            rr_cursor: 0,
            departed: HashMap::new(),
            sync_generation: 0,
            last_sync_ns: None,
            unfilled: Vec::new(),
            open: BTreeSet::new(),
            unweighted_count: 0,
            notices: VecDeque::new(),
            admission: crate::capacity::Admissions::default(),
            config,
        }
    }

    /// The configuration in force.
    pub fn config(&self) -> &BalancerConfig {
        &self.config
    }

    /// How many agents the balancer knows.
    pub fn len(&self) -> usize {
        self.agents.len()
    }

    /// Whether it knows no agent.
    pub fn is_empty(&self) -> bool {
        self.agents.is_empty()
    }

    /// Whether it knows `id`.
    pub fn contains(&self, id: &str) -> bool {
        self.index.contains_key(id)
    }

    pub(crate) fn slot_index(&self, id: &str) -> Result<usize, BalanceError> {
        self.index
            .get(id)
            .copied()
            .ok_or_else(|| BalanceError::UnknownAgent(id.to_owned()))
    }

    /// Adds an agent, or updates the host's figures for one already known (its own pending
    /// count, latency estimate and circuit are kept). Returns whether it was new. Queued
    /// tickets it can take are admitted.
    pub fn upsert_agent(&mut self, spec: AgentSpec, now_ns: u64) -> bool {
        let own_weight = spec.weight.filter(|w| valid_weight(*w));
        self.departed.remove(&spec.id);
        let (i, inserted) = match self.index.get(&spec.id) {
            Some(&i) => {
                self.apply_spec(i, &spec, own_weight);
                (i, false)
            }
            None => {
                let i = self.insert(spec.id, spec.status, spec.capacity, spec.load, own_weight, now_ns);
                self.weight_learnt(i);
                (i, true)
            }
        };
        self.serve_agent(i, now_ns);
        inserted
    }

    fn apply_spec(&mut self, i: usize, spec: &AgentSpec, own_weight: Option<f64>) {
        let slot = &mut self.agents[i];
        slot.status = spec.status;
        slot.host_capacity = spec.capacity;
        slot.host_load = spec.load;
        slot.capacity_known = true;
        if own_weight.is_some() || !slot.weight_known {
            slot.own_weight = own_weight;
        }
        slot.weight = weight_of(&self.config, &slot.id, slot.own_weight);
        self.weight_learnt(i);
    }

    /// Agent `i`'s own weight is known from now on.
    fn weight_learnt(&mut self, i: usize) {
        let slot = &mut self.agents[i];
        if !slot.weight_known {
            slot.weight_known = true;
            self.unweighted_count -= 1;
        }
    }

    /// Adds an agent known only by its id (from a registration event, without asking the host
    /// for its details): `status`, no load, capacity 1 until its figures are filled (by
    /// [`fill`](Self::fill), [`upsert_agent`](Self::upsert_agent) or a [`sync`](Self::sync)),
    /// weight unknown until set (see [`unweighted`](Self::unweighted)). An agent already
    /// known is left as it is. Returns whether it was new. O(1).
    pub fn register(&mut self, id: &str, status: AgentStatus, now_ns: u64) -> bool {
        if self.index.contains_key(id) {
            return false;
        }
        let id: Arc<str> = Arc::from(id);
        self.departed.remove(&id);
        let i = self.insert(Arc::clone(&id), status, 1, 0, None, now_ns);
        self.agents[i].capacity_known = false;
        self.unfilled.push(id);
        true
    }

    /// Updates an agent the balancer knows with the host's figures (status, capacity, load,
    /// weight); an agent it does not know (it left in the meantime) is not added back. Returns
    /// whether it was known. Queued tickets it can take are admitted.
    pub fn fill(&mut self, spec: &AgentSpec, now_ns: u64) -> bool {
        let Some(&i) = self.index.get(&spec.id) else {
            return false;
        };
        let own_weight = spec.weight.filter(|w| valid_weight(*w));
        self.apply_spec(i, spec, own_weight);
        self.serve_agent(i, now_ns);
        true
    }

    /// Agents added with [`register`](Self::register) whose capacity is still unknown; the list
    /// is emptied (an agent filled or removed since is left out).
    pub fn take_unfilled(&mut self) -> Vec<Arc<str>> {
        let mut ids = std::mem::take(&mut self.unfilled);
        ids.retain(|id| self.index.get(id).is_some_and(|&i| !self.agents[i].capacity_known));
        ids
    }

    /// Whether some agent's capacity is not known yet (see [`register`](Self::register)).
    pub fn has_unfilled(&self) -> bool {
        !self.unfilled.is_empty()
    }

    /// The eligible candidates (`None`: every known agent) whose own weight was never read
    /// (agents known from a registration event or a fleet snapshot): a weighted round robin
    /// over them should learn their weights first ([`set_weight`](Self::set_weight)).
    pub fn unweighted(&self, candidates: Option<&[&str]>, now_ns: u64) -> Vec<Arc<str>> {
        if self.unweighted_count == 0 {
            return Vec::new();
        }
        let pool = candidates.map_or(Pool::All, Pool::Listed);
        self.eligible_in(pool, now_ns)
            .into_iter()
            .filter(|&i| !self.agents[i].weight_known)
            .map(|i| Arc::clone(&self.agents[i].id))
            .collect()
    }

    fn insert(
        &mut self,
        id: Arc<str>,
        status: AgentStatus,
        capacity: u32,
        load: u32,
        own_weight: Option<f64>,
        now_ns: u64,
    ) -> usize {
        let i = self.agents.len();
        self.agents.push(Slot {
            weight: weight_of(&self.config, &id, own_weight),
            id: Arc::clone(&id),
            status,
            host_capacity: capacity,
            capacity_override: None,
            host_load: load,
            pending: 0,
            capacity_known: true,
            weight_known: false,
            own_weight,
            wrr_current: 0.0,
            ewma: PeakEwma::default(),
            circuit: Circuit::default(),
            added_ns: now_ns,
            seen: self.sync_generation,
        });
        self.index.insert(id, i);
        self.unweighted_count += 1;
        i
    }

    /// Forgets an agent (it deregistered): its pending count, estimate and circuit go, and
    /// tickets queued for it alone are refused. Returns whether it was known.
    pub fn remove_agent(&mut self, id: &str, now_ns: u64) -> bool {
        let Some(&i) = self.index.get(id) else {
            return false;
        };
        let id = Arc::clone(&self.agents[i].id);
        self.remove_at(i);
        if self.departed.len() >= 1_024 {
            self.departed
                .retain(|_, at| now_ns.saturating_sub(*at) < DEPARTED_KEPT_NS);
        }
        self.departed.insert(Arc::clone(&id), now_ns);
        self.refuse_pinned(&id, now_ns);
        true
    }

    fn remove_at(&mut self, i: usize) {
        let slot = self.agents.swap_remove(i);
        self.index.remove(&slot.id);
        if !slot.weight_known {
            self.unweighted_count -= 1;
        }
        if !slot.circuit.is_closed() {
            self.open.remove(&slot.id);
        }
        if let Some(moved) = self.agents.get(i) {
            self.index.insert(Arc::clone(&moved.id), i);
        }
    }

    /// Sets an agent's status; an agent that can take work again may admit queued tickets.
    pub fn set_status(&mut self, id: &str, status: AgentStatus, now_ns: u64) -> Result<(), BalanceError> {
        let i = self.slot_index(id)?;
        self.agents[i].status = status;
        if takes_work(status) {
            self.serve_agent(i, now_ns);
        }
        Ok(())
    }

    /// Brings the table in line with a snapshot of the host's fleet taken at `taken_ns`:
    /// statuses, capacities and loads are updated, agents the balancer did not know are added
    /// (returned; their weights are unknown until set, see [`unweighted`](Self::unweighted)),
    /// and agents missing from the snapshot are forgotten, unless they were added after it was
    /// taken. An agent removed after the snapshot was taken is not brought back. A snapshot
    /// taken before the last one applied is ignored (snapshots are read outside any lock and
    /// may arrive out of order: an older one would bring back agents that left since); it
    /// returns nothing. Queued tickets that now fit are admitted.
    pub fn sync(&mut self, fleet: &[AgentLoad], taken_ns: u64) -> Vec<Arc<str>> {
        if self.last_sync_ns.is_some_and(|last| taken_ns < last) {
            return Vec::new();
        }
        self.last_sync_ns = Some(taken_ns);
        self.sync_generation += 1;
        let generation = self.sync_generation;
        let mut added = Vec::new();
        for agent in fleet {
            if self.departed.get(&agent.id).is_some_and(|&at| at >= taken_ns) {
                continue;
            }
            match self.index.get(&agent.id) {
                Some(&i) => {
                    let slot = &mut self.agents[i];
                    slot.status = agent.status;
                    slot.host_capacity = agent.capacity;
                    slot.host_load = agent.load;
                    slot.capacity_known = true;
                    slot.seen = generation;
                }
                None => {
                    self.insert(
                        Arc::clone(&agent.id),
                        agent.status,
                        agent.capacity,
                        agent.load,
                        None,
                        taken_ns,
                    );
                    added.push(Arc::clone(&agent.id));
                }
            }
        }
        let mut i = self.agents.len();
        while i > 0 {
            i -= 1;
            let slot = &self.agents[i];
            if slot.seen != generation && slot.added_ns < taken_ns {
                let id = Arc::clone(&slot.id);
                self.remove_at(i);
                self.refuse_pinned(&id, taken_ns);
            }
        }
        self.departed.retain(|_, at| *at >= taken_ns);
        if !self.unfilled.is_empty() {
            let unfilled = self.take_unfilled();
            self.unfilled = unfilled;
        }
        self.serve_all(taken_ns);
        added
    }

    /// When the last fleet snapshot applied by [`sync`](Self::sync) was taken.
    pub fn last_sync_ns(&self) -> Option<u64> {
        self.last_sync_ns
    }

    /// Sets an agent's own weight (for weighted round robin), e.g. from its metadata.
    pub fn set_weight(&mut self, id: &str, weight: Option<f64>) -> Result<(), BalanceError> {
        let i = self.slot_index(id)?;
        let slot = &mut self.agents[i];
        slot.own_weight = weight.filter(|w| valid_weight(*w));
        slot.weight = weight_of(&self.config, &slot.id, slot.own_weight);
        self.weight_learnt(i);
        Ok(())
    }

    #[inline]
    pub(crate) fn eligible(&self, i: usize, now_ns: u64) -> bool {
        let slot = &self.agents[i];
        takes_work(slot.status) && slot.circuit.admits(now_ns)
    }

    /// The latency estimate and the cost of agent `i`, in milliseconds.
    #[inline]
    fn cost_at(&self, i: usize, now_ns: u64) -> (f64, f64) {
        let slot = &self.agents[i];
        let rtt_ms = slot.ewma.estimate_ns(now_ns, self.tau_ns, self.default_rtt_ns) / NS_PER_MS;
        (rtt_ms * (f64::from(slot.load()) + 1.0), rtt_ms)
    }

    #[inline]
    fn resolve(&self, pool: Pool<'_>, position: usize) -> Option<usize> {
        match pool {
            Pool::All => Some(position),
            Pool::Listed(ids) => self.index.get(ids[position]).copied(),
        }
    }

    fn pool_len(&self, pool: Pool<'_>) -> usize {
        match pool {
            Pool::All => self.agents.len(),
            Pool::Listed(ids) => ids.len(),
        }
    }

    /// The distinct eligible agents of the pool, in table order.
    pub(crate) fn eligible_in(&self, pool: Pool<'_>, now_ns: u64) -> Vec<usize> {
        match pool {
            Pool::All => (0..self.agents.len()).filter(|&i| self.eligible(i, now_ns)).collect(),
            Pool::Listed(ids) => {
                let mut found: Vec<usize> = ids
                    .iter()
                    .filter_map(|id| self.index.get(*id).copied())
                    .filter(|&i| self.eligible(i, now_ns))
                    .collect();
                found.sort_unstable();
                found.dedup();
                found
            }
        }
    }

    /// Why nothing in the pool can be picked.
    pub(crate) fn why_none(&self, pool: Pool<'_>, now_ns: u64) -> String {
        let (mut unknown, mut unavailable, mut open) = (0usize, 0usize, 0usize);
        let total = self.pool_len(pool);
        for position in 0..total {
            match self.resolve(pool, position) {
                None => unknown += 1,
                Some(i) if !takes_work(self.agents[i].status) => unavailable += 1,
                Some(i) if !self.agents[i].circuit.admits(now_ns) => open += 1,
                Some(_) => {}
            }
        }
        if total == 0 {
            return match pool {
                Pool::All => "no agent is registered".to_owned(),
                Pool::Listed(_) => "`available_agents` is empty".to_owned(),
            };
        }
        let what = match pool {
            Pool::All => "registered agent(s)",
            Pool::Listed(_) => "candidate(s)",
        };
        format!(
            "no agent can be picked among {total} {what}: {unknown} not registered, {unavailable} busy or offline, {open} behind an open circuit"
        )
    }

    /// Picks an agent among `candidates` (`None`: every known agent) with `strategy`.
    /// Candidates must be active or sleeping and their circuit must admit them (a half-open
    /// circuit admits one probe); unknown ids are skipped. With `acquire`, the pick takes a
    /// slot on the agent (as [`start`](Self::start) does), to be given back with
    /// [`finish`](Self::finish) or [`release`](Self::release). An id listed twice gets two
    /// chances in P2C draws and round-robin turns: pass distinct ids (the plugin drops
    /// duplicates from `available_agents`).
    pub fn pick(
        &mut self,
        strategy: Strategy,
        candidates: Option<&[&str]>,
        acquire: bool,
        now_ns: u64,
    ) -> Result<Pick, BalanceError> {
        let pool = candidates.map_or(Pool::All, Pool::Listed);
        let (i, cost, compared) = match strategy {
            Strategy::P2cPeakEwma => self.pick_p2c(pool, now_ns)?,
            Strategy::LeastLoaded => (self.pick_least_loaded(pool, now_ns)?, None, None),
            Strategy::WeightedRoundRobin => (self.pick_weighted(pool, now_ns)?, None, None),
            Strategy::RoundRobin => (self.pick_round_robin(pool, now_ns)?, None, None),
        };
        let probe = self.take(i, acquire, now_ns);
        let (_, rtt_ms) = self.cost_at(i, now_ns);
        let slot = &self.agents[i];
        Ok(Pick {
            agent_id: Arc::clone(&slot.id),
            strategy,
            cost,
            rtt_ms,
            load: slot.load(),
            pending: slot.pending,
            capacity: slot.capacity(),
            acquired: acquire,
            probe,
            compared: compared.map(|(j, c)| (Arc::clone(&self.agents[j].id), c)),
        })
    }

    /// Agent `i` was chosen: the probe of a half-open circuit is taken, and with `acquire` a slot.
    pub(crate) fn take(&mut self, i: usize, acquire: bool, now_ns: u64) -> bool {
        let policy = self.policy;
        let slot = &mut self.agents[i];
        if acquire {
            slot.pending = slot.pending.saturating_add(1);
        }
        slot.circuit.on_pick(now_ns, &policy)
    }

    /// Two distinct eligible candidates drawn at random (by rejection, so O(1) expected when
    /// most candidates are eligible; a listing of the eligible ones otherwise).
    fn pick_p2c(&mut self, pool: Pool<'_>, now_ns: u64) -> Result<Chosen, BalanceError> {
        let n = self.pool_len(pool);
        let mut pair = None;
        if n >= 2 {
            let first = (0..SAMPLE_TRIES).find_map(|_| {
                let position = self.rng.below(n);
                self.resolve(pool, position).filter(|&i| self.eligible(i, now_ns))
            });
            if let Some(a) = first {
                let second = (0..SAMPLE_TRIES).find_map(|_| {
                    let position = self.rng.below(n);
                    self.resolve(pool, position)
                        .filter(|&i| i != a && self.eligible(i, now_ns))
                });
                pair = second.map(|b| (a, b));
            }
        }
        let (a, b) = match pair {
            Some(pair) => pair,
            None => {
                let eligible = self.eligible_in(pool, now_ns);
                match eligible.len() {
                    0 => return Err(BalanceError::NoCandidate(self.why_none(pool, now_ns))),
                    1 => {
                        let (cost, _) = self.cost_at(eligible[0], now_ns);
                        return Ok((eligible[0], Some(cost), None));
                    }
                    len => {
                        let x = self.rng.below(len);
                        let mut y = self.rng.below(len - 1);
                        if y >= x {
                            y += 1;
                        }
                        (eligible[x], eligible[y])
                    }
                }
            }
        };
        let (cost_a, _) = self.cost_at(a, now_ns);
        let (cost_b, _) = self.cost_at(b, now_ns);
        // Ties go to the first draw, itself random: no bias towards any id.
        Ok(if cost_b < cost_a {
            (b, Some(cost_b), Some((a, cost_a)))
        } else {
            (a, Some(cost_a), Some((b, cost_b)))
        })
    }

    fn pick_least_loaded(&self, pool: Pool<'_>, now_ns: u64) -> Result<usize, BalanceError> {
        let mut best: Option<usize> = None;
        let mut consider = |i: usize| {
            if !self.eligible(i, now_ns) {
                return;
            }
            best = match best {
                Some(b) if !self.less_loaded(i, b) => Some(b),
                _ => Some(i),
            };
        };
        match pool {
            Pool::All => (0..self.agents.len()).for_each(&mut consider),
            Pool::Listed(ids) => ids
                .iter()
                .filter_map(|id| self.index.get(*id).copied())
                .for_each(&mut consider),
        }
        best.ok_or_else(|| BalanceError::NoCandidate(self.why_none(pool, now_ns)))
    }

    /// Whether agent `a` has a lower `load / capacity` than `b` (ties: the lower id).
    pub(crate) fn less_loaded(&self, a: usize, b: usize) -> bool {
        let (x, y) = (&self.agents[a], &self.agents[b]);
        let lhs = u64::from(x.load()) * u64::from(y.capacity());
        let rhs = u64::from(y.load()) * u64::from(x.capacity());
        lhs < rhs || (lhs == rhs && x.id < y.id)
    }

    fn pick_weighted(&mut self, pool: Pool<'_>, now_ns: u64) -> Result<usize, BalanceError> {
        let eligible = self.eligible_in(pool, now_ns);
        let mut total = 0.0;
        let mut best: Option<usize> = None;
        for &i in &eligible {
            let slot = &mut self.agents[i];
            slot.wrr_current += slot.weight;
            total += slot.weight;
            best = match best {
                Some(b) => {
                    let (current, other) = (&self.agents[i], &self.agents[b]);
                    if current.wrr_current > other.wrr_current
                        || (current.wrr_current == other.wrr_current && current.id < other.id)
                    {
                        Some(i)
                    } else {
                        Some(b)
                    }
                }
                None => Some(i),
            };
        }
        let chosen = best.ok_or_else(|| BalanceError::NoCandidate(self.why_none(pool, now_ns)))?;
        self.agents[chosen].wrr_current -= total;
        Ok(chosen)
    }

    fn pick_round_robin(&mut self, pool: Pool<'_>, now_ns: u64) -> Result<usize, BalanceError> {
        let n = self.pool_len(pool);
        for step in 0..n {
            let position = (self.rr_cursor.wrapping_add(step)) % n;
            if let Some(i) = self.resolve(pool, position).filter(|&i| self.eligible(i, now_ns)) {
                self.rr_cursor = position.wrapping_add(1);
                return Ok(i);
            }
        }
        Err(BalanceError::NoCandidate(self.why_none(pool, now_ns)))
    }

    /// Takes a slot on the agent: one more call in flight.
    pub fn start(&mut self, id: &str, _now_ns: u64) -> Result<LoadView, BalanceError> {
        let i = self.slot_index(id)?;
        let slot = &mut self.agents[i];
        slot.pending = slot.pending.saturating_add(1);
        Ok(slot.view())
    }

    /// A call taken with [`start`](Self::start) (or a pick with `acquire`, or an admission)
    /// ended after `latency_ms`: the slot is given back (a queued ticket may take it), the
    /// latency is observed and the outcome feeds the circuit.
    pub fn finish(&mut self, id: &str, latency_ms: f64, success: bool, now_ns: u64) -> Result<Outcome, BalanceError> {
        let i = self.slot_index(id)?;
        if self.agents[i].pending == 0 {
            return Err(BalanceError::Invalid(format!(
                "agent `{id}` has no call pending here: `finish` gives back what `start`, a pick with `acquire` or `admit` took (use `observe` for calls made elsewhere)"
            )));
        }
        // A refused latency gives nothing back.
        check_latency(latency_ms)?;
        self.agents[i].pending -= 1;
        self.record(i, latency_ms, success, now_ns)
    }

    /// An observation of a call made elsewhere: the latency and the outcome count, the
    /// pending count does not change.
    pub fn observe(&mut self, id: &str, latency_ms: f64, success: bool, now_ns: u64) -> Result<Outcome, BalanceError> {
        let i = self.slot_index(id)?;
        self.record(i, latency_ms, success, now_ns)
    }

    fn record(&mut self, i: usize, latency_ms: f64, success: bool, now_ns: u64) -> Result<Outcome, BalanceError> {
        check_latency(latency_ms)?;
        let tau = self.tau_ns;
        self.agents[i].ewma.observe(latency_ms * NS_PER_MS, now_ns, tau);
        self.record_outcome(i, success, now_ns);
        let admitted_tickets = self.serve_agent(i, now_ns);
        let (_, rtt_ms) = self.cost_at(i, now_ns);
        let slot = &self.agents[i];
        Ok(Outcome {
            load: slot.view(),
            rtt_ms,
            circuit: slot.circuit.state(now_ns),
            consecutive_failures: slot.circuit.failures,
            admitted_tickets,
        })
    }

    fn record_outcome(&mut self, i: usize, success: bool, now_ns: u64) {
        let policy = self.policy;
        let slot = &mut self.agents[i];
        let notice = match slot.circuit.record(success, now_ns, &policy) {
            Transition::None => None,
            Transition::Opened { backoff_ns } => {
                self.open.insert(Arc::clone(&slot.id));
                Some(Notice::CircuitOpened {
                    agent_id: Arc::clone(&slot.id),
                    backoff_ms: backoff_ns as f64 / NS_PER_MS,
                    times_opened: slot.circuit.times_opened,
                })
            }
            Transition::Closed => {
                self.open.remove(&slot.id);
                Some(Notice::CircuitClosed {
                    agent_id: Arc::clone(&slot.id),
                })
            }
        };
        if let Some(notice) = notice {
            self.notify(notice);
        }
    }

    /// Feeds the circuit breaker with one outcome (no latency).
    pub fn report(&mut self, id: &str, success: bool, now_ns: u64) -> Result<CircuitView, BalanceError> {
        let i = self.slot_index(id)?;
        self.record_outcome(i, success, now_ns);
        self.serve_agent(i, now_ns);
        Ok(self.circuit_view(i, now_ns))
    }

    fn circuit_view(&self, i: usize, now_ns: u64) -> CircuitView {
        let slot = &self.agents[i];
        let c = &slot.circuit;
        let state = c.state(now_ns);
        let (open_until_ms, retry_in_ms) = if state == CircuitState::Closed {
            (None, None)
        } else {
            (
                Some(c.open_until_ns.div_ceil(1_000_000)),
                Some(c.open_until_ns.saturating_sub(now_ns).div_ceil(1_000_000)),
            )
        };
        CircuitView {
            agent_id: Arc::clone(&slot.id),
            state,
            consecutive_failures: c.failures,
            times_opened: c.times_opened,
            open_until_ms,
            retry_in_ms,
            probe_in_flight: c.probe_in_flight(now_ns),
        }
    }

    /// One agent's circuit.
    pub fn circuit(&self, id: &str, now_ns: u64) -> Option<CircuitView> {
        self.index.get(id).map(|&i| self.circuit_view(i, now_ns))
    }

    /// Every circuit that is not closed, by agent id.
    pub fn circuits(&self, now_ns: u64) -> Vec<CircuitView> {
        self.open
            .iter()
            .filter_map(|id| self.index.get(id))
            .map(|&i| self.circuit_view(i, now_ns))
            .collect()
    }

    /// The agents whose circuit is not closed (open or half-open), by id.
    pub fn open_circuits(&self) -> Vec<Arc<str>> {
        self.open.iter().cloned().collect()
    }

    /// How many circuits are not closed.
    pub fn open_circuit_count(&self) -> usize {
        self.open.len()
    }

    /// An agent's load figures.
    pub fn load(&self, id: &str) -> Option<LoadView> {
        self.index.get(id).map(|&i| self.agents[i].view())
    }

    /// An agent's latency estimate at `now_ns`, in milliseconds.
    pub fn rtt_estimate_ms(&self, id: &str, now_ns: u64) -> Option<f64> {
        self.index.get(id).map(|&i| self.cost_at(i, now_ns).1)
    }

    /// An agent's P2C cost at `now_ns`: `rtt_estimate_ms x (load + 1)`.
    pub fn cost(&self, id: &str, now_ns: u64) -> Option<f64> {
        self.index.get(id).map(|&i| self.cost_at(i, now_ns).0)
    }

    /// Every agent a pick may choose now, with its P2C cost (for a full scan, e.g. a baseline).
    pub fn eligible_costs(&self, now_ns: u64) -> impl Iterator<Item = (&str, f64)> + '_ {
        (0..self.agents.len())
            .filter(move |&i| self.eligible(i, now_ns))
            .map(move |i| (&*self.agents[i].id, self.cost_at(i, now_ns).0))
    }

    pub(crate) fn notify(&mut self, notice: Notice) {
        if self.notices.len() == NOTICES_KEPT {
            self.notices.pop_front();
        }
        self.notices.push_back(notice);
    }

    /// Takes what happened since the last call (tickets admitted from the queue, circuits
    /// opened or closed), oldest first. At most 4,096 are kept between calls.
    pub fn take_notices(&mut self) -> Vec<Notice> {
        self.notices.drain(..).collect()
    }

    /// Whether anything waits in [`take_notices`](Self::take_notices).
    pub fn has_notices(&self) -> bool {
        !self.notices.is_empty()
    }
}

/// A latency the estimate can learn from: finite, from 0 to [`MAX_LATENCY_MS`].
fn check_latency(latency_ms: f64) -> Result<(), BalanceError> {
    if latency_ms.is_finite() && (0.0..=MAX_LATENCY_MS).contains(&latency_ms) {
        Ok(())
    } else {
        Err(BalanceError::Invalid(format!(
            "`latency_ms` must be a non-negative number of milliseconds, at most {MAX_LATENCY_MS} (one day), not {latency_ms}"
        )))
    }
}

fn weight_of(config: &BalancerConfig, id: &str, own: Option<f64>) -> f64 {
    own.or_else(|| config.weights.get(id).copied()).unwrap_or(1.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capacity::{Admission, AdmitTarget};

    const MS: u64 = 1_000_000;

    fn balancer(config: BalancerConfig) -> Balancer {
        Balancer::new(BalancerConfig {
            seed: Some(config.seed.unwrap_or(11)),
            ..config
        })
        .expect("valid")
    }

    fn with_agents(ids: &[&str], capacity: u32) -> Balancer {
        let mut lb = balancer(BalancerConfig::default());
        for id in ids {
            lb.upsert_agent(AgentSpec::new(*id).with_capacity(capacity), 0);
        }
        lb
    }

    fn count(lb: &mut Balancer, strategy: Strategy, picks: usize, now: u64) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for _ in 0..picks {
            let pick = lb.pick(strategy, None, false, now).expect("picks");
            *counts.entry(pick.agent_id.to_string()).or_default() += 1;
        }
        counts
    }

    #[test]
    fn p2c_prefers_the_fast_idle_agent_over_slow_or_busy_ones() {
        let mut lb = with_agents(&["busy", "fast", "slow"], 8);
        lb.observe("fast", 10.0, true, 0).expect("known");
        lb.observe("slow", 400.0, true, 0).expect("known");
        lb.observe("busy", 10.0, true, 0).expect("known");
        for _ in 0..6 {
            lb.start("busy", 0).expect("known");
        }
        let counts = count(&mut lb, Strategy::P2cPeakEwma, 3_000, MS);
        // fast wins every comparison it is in (2 of 3 pairs); busy (cost 70) beats slow (400).
        let fast = counts.get("fast").copied().unwrap_or(0);
        let busy = counts.get("busy").copied().unwrap_or(0);
        assert!(fast > 1_800 && busy > 800, "{counts:?}");
        assert_eq!(counts.get("slow"), None, "slow loses every comparison: {counts:?}");
        let pick = lb
            .pick(Strategy::P2cPeakEwma, Some(&["slow", "fast"]), false, 0)
            .expect("picks");
        assert_eq!(&*pick.agent_id, "fast");
        assert_eq!(pick.cost, Some(10.0));
        assert_eq!(pick.compared, Some((Arc::from("slow"), 400.0)));
    }

    #[test]
    fn p2c_counts_pending_calls_and_a_latency_spike_at_once() {
        let mut lb = with_agents(&["a", "b"], 100);
        lb.observe("a", 10.0, true, 0).expect("known");
        lb.observe("b", 12.0, true, 0).expect("known");
        // a has 10 x 1 = 10 < b 12 x 1: a. Then a carries pending calls: 10 x 2 > 12.
        let first = lb.pick(Strategy::P2cPeakEwma, None, true, 0).expect("picks");
        assert_eq!(&*first.agent_id, "a");
        assert_eq!(first.pending, 1);
        let second = lb.pick(Strategy::P2cPeakEwma, None, true, 0).expect("picks");
        assert_eq!(&*second.agent_id, "b", "a costs 20 with one call pending, b 12");
        // A spike on b counts at once.
        lb.finish("b", 900.0, true, MS).expect("pending");
        assert_eq!(lb.rtt_estimate_ms("b", MS), Some(900.0));
        assert_eq!(
            &*lb.pick(Strategy::P2cPeakEwma, None, false, MS).expect("picks").agent_id,
            "a"
        );
        // ... and halves each half-life (10 s by default).
        let later = MS + 10_000 * MS;
        let rtt = lb.rtt_estimate_ms("b", later).expect("known");
        assert!((rtt - 450.0).abs() < 1e-6, "{rtt}");
        let rtt = lb.rtt_estimate_ms("b", MS + 20_000 * MS).expect("known");
        assert!((rtt - 225.0).abs() < 1e-6, "{rtt}");
    }

    #[test]
    fn never_observed_agents_cost_the_default_rtt() {
        let mut lb = with_agents(&["new"], 1);
        assert_eq!(lb.cost("new", 0), Some(DEFAULT_RTT_MS));
        lb.start("new", 0).expect("known");
        assert_eq!(lb.cost("new", 0), Some(2.0 * DEFAULT_RTT_MS));
        let mut lb = balancer(BalancerConfig {
            default_rtt_ms: 5.0,
            ..BalancerConfig::default()
        });
        lb.upsert_agent(AgentSpec::new("x").with_load(3), 0);
        assert_eq!(lb.cost("x", 0), Some(20.0), "the host's load counts: 5 x (3 + 1)");
    }

    #[test]
    fn least_loaded_takes_the_lowest_utilisation_then_the_lowest_id() {
        let mut lb = balancer(BalancerConfig::default());
        lb.upsert_agent(AgentSpec::new("c").with_capacity(4).with_load(2), 0);
        lb.upsert_agent(AgentSpec::new("b").with_capacity(10).with_load(3), 0);
        lb.upsert_agent(AgentSpec::new("a").with_capacity(2).with_load(1), 0);
        let pick = lb.pick(Strategy::LeastLoaded, None, true, 0).expect("picks");
        assert_eq!(&*pick.agent_id, "b", "0.3 < 0.5 = 0.5");
        assert_eq!(
            pick.load, 3,
            "max(host 3, pending 1): the host's load already counts the work"
        );
        let b = lb.load("b").expect("known");
        assert_eq!((b.host_load, b.pending), (3, 1));
        let pick = lb
            .pick(Strategy::LeastLoaded, Some(&["a", "c"]), false, 0)
            .expect("picks");
        assert_eq!(&*pick.agent_id, "a", "a tie at 0.5: the lowest id");
    }

    #[test]
    fn weighted_round_robin_is_smooth_and_proportional() {
        let mut config = BalancerConfig::default();
        config.weights.insert("b".into(), 2.0);
        let mut lb = balancer(config);
        lb.upsert_agent(AgentSpec::new("a").with_weight(5.0), 0);
        lb.upsert_agent(AgentSpec::new("b"), 0);
        lb.upsert_agent(AgentSpec::new("c"), 0);
        // Weights 5 (metadata), 2 (configuration), 1 (default): interleaved, not in bursts.
        let order: Vec<String> = (0..8)
            .map(|_| {
                lb.pick(Strategy::WeightedRoundRobin, None, false, 0)
                    .expect("picks")
                    .agent_id
                    .to_string()
            })
            .collect();
        assert_eq!(order, ["a", "b", "a", "a", "c", "a", "b", "a"]);
        let counts = count(&mut lb, Strategy::WeightedRoundRobin, 8_000, 0);
        assert_eq!(counts["a"], 5_000);
        assert_eq!(counts["b"], 2_000);
        assert_eq!(counts["c"], 1_000);
    }

    #[test]
    fn round_robin_rotates_and_skips_what_cannot_be_picked() {
        let mut lb = with_agents(&["a", "b", "c"], 1);
        let order: Vec<String> = (0..4)
            .map(|_| {
                lb.pick(Strategy::RoundRobin, None, false, 0)
                    .expect("picks")
                    .agent_id
                    .to_string()
            })
            .collect();
        assert_eq!(order, ["a", "b", "c", "a"]);
        lb.set_status("c", AgentStatus::Offline, 0).expect("known");
        let order: Vec<String> = (0..4)
            .map(|_| {
                lb.pick(Strategy::RoundRobin, None, false, 0)
                    .expect("picks")
                    .agent_id
                    .to_string()
            })
            .collect();
        assert_eq!(order, ["b", "a", "b", "a"]);
    }

    #[test]
    fn nothing_to_pick_says_why() {
        let mut lb = balancer(BalancerConfig::default());
        let err = lb.pick(Strategy::P2cPeakEwma, None, false, 0).unwrap_err();
        assert_eq!(err, BalanceError::NoCandidate("no agent is registered".into()));
        lb.upsert_agent(AgentSpec::new("a").with_status(AgentStatus::Busy), 0);
        for strategy in Strategy::ALL {
            let err = lb.pick(strategy, Some(&["a", "ghost"]), false, 0).unwrap_err();
            assert!(!err.is_invalid());
            assert!(err.to_string().contains("1 not registered, 1 busy or offline"), "{err}");
        }
        let err = lb.pick(Strategy::RoundRobin, Some(&[]), false, 0).unwrap_err();
        assert!(err.to_string().contains("empty"), "{err}");
    }

    #[test]
    fn an_open_circuit_keeps_the_agent_out_until_a_probe_succeeds() {
        let mut lb = balancer(BalancerConfig {
            failure_threshold: 3,
            base_backoff_ms: 100,
            ..BalancerConfig::default()
        });
        lb.upsert_agent(AgentSpec::new("flaky").with_capacity(10), 0);
        lb.upsert_agent(AgentSpec::new("steady").with_capacity(10), 0);
        lb.observe("flaky", 1.0, true, 0).expect("known");
        lb.observe("steady", 50.0, true, 0).expect("known");
        for t in 0..3 {
            lb.observe("flaky", 1.0, false, t * MS).expect("known");
        }
        let open = lb.circuit("flaky", 5 * MS).expect("known");
        assert_eq!(open.state, CircuitState::Open);
        assert_eq!(open.open_until_ms, Some(102));
        assert_eq!(open.retry_in_ms, Some(97));
        assert!(matches!(
            lb.take_notices()[..],
            [Notice::CircuitOpened { times_opened: 1, .. }]
        ));
        // Never picked while open, by any strategy, though it is the cheapest.
        for strategy in Strategy::ALL {
            for _ in 0..200 {
                let pick = lb.pick(strategy, None, false, 50 * MS).expect("picks");
                assert_eq!(&*pick.agent_id, "steady");
            }
        }
        // Half-open after the backoff: exactly one probe.
        let probe = lb.pick(Strategy::LeastLoaded, None, true, 102 * MS).expect("picks");
        assert_eq!((&*probe.agent_id, probe.probe), ("flaky", true));
        for _ in 0..50 {
            let pick = lb.pick(Strategy::LeastLoaded, None, false, 103 * MS).expect("picks");
            assert_eq!(&*pick.agent_id, "steady", "only one probe goes out");
        }
        assert!(lb.circuit("flaky", 103 * MS).expect("known").probe_in_flight);
        // The probe fails: open again, for twice as long.
        lb.finish("flaky", 1.0, false, 110 * MS).expect("pending");
        let reopened = lb.circuit("flaky", 110 * MS).expect("known");
        assert_eq!((reopened.state, reopened.times_opened), (CircuitState::Open, 2));
        assert_eq!(reopened.open_until_ms, Some(310));
        assert!(
            lb.pick(Strategy::RoundRobin, Some(&["flaky"]), false, 309 * MS)
                .is_err()
        );
        // The next probe succeeds: closed, counters reset.
        let probe = lb
            .pick(Strategy::RoundRobin, Some(&["flaky"]), true, 310 * MS)
            .expect("picks");
        assert!(probe.probe);
        let outcome = lb.finish("flaky", 1.0, true, 311 * MS).expect("pending");
        assert_eq!(
            (outcome.circuit, outcome.consecutive_failures),
            (CircuitState::Closed, 0)
        );
        assert!(lb.circuits(311 * MS).is_empty());
        assert!(matches!(
            lb.take_notices()[..],
            [
                Notice::CircuitOpened { times_opened: 2, .. },
                Notice::CircuitClosed { .. }
            ]
        ));
    }

    #[test]
    fn finish_needs_something_pending_and_unknown_agents_are_refused() {
        let mut lb = with_agents(&["a"], 1);
        let err = lb.finish("a", 1.0, true, 0).unwrap_err();
        assert!(err.is_invalid() && err.to_string().contains("no call pending"), "{err}");
        assert_eq!(
            lb.observe("ghost", 1.0, true, 0).unwrap_err(),
            BalanceError::UnknownAgent("ghost".into())
        );
        assert!(lb.observe("a", f64::NAN, true, 0).is_err());
    }

    #[test]
    fn sync_follows_the_fleet_without_undoing_newer_events() {
        let mut lb = with_agents(&["a", "b"], 1);
        lb.start("a", 0).expect("known");
        let fleet = |ids: &[(&str, u32)]| -> Vec<AgentLoad> {
            ids.iter()
                .map(|(id, load)| AgentLoad {
                    id: Arc::from(*id),
                    status: AgentStatus::Active,
                    load: *load,
                    capacity: 4,
                })
                .collect()
        };
        let added = lb.sync(&fleet(&[("a", 2), ("c", 0)]), 10);
        assert_eq!(added, [Arc::from("c")]);
        assert!(!lb.contains("b"), "gone from the host");
        let a = lb.load("a").expect("kept");
        assert_eq!((a.pending, a.host_load, a.load, a.capacity), (1, 2, 2, 4));
        // An agent registered (by event) after the snapshot was taken stays; one removed
        // after it does not come back.
        lb.upsert_agent(AgentSpec::new("d"), 20);
        lb.remove_agent("c", 20);
        lb.sync(&fleet(&[("a", 0), ("c", 0)]), 15);
        assert!(lb.contains("d") && !lb.contains("c"));
        assert_eq!(lb.load("a").expect("kept").load, 1, "own pending 1 > host 0");
    }

    #[test]
    fn an_older_fleet_snapshot_is_ignored() {
        let mut lb = with_agents(&["a"], 1);
        let snapshot = |ids: &[(&str, u32)]| -> Vec<AgentLoad> {
            ids.iter()
                .map(|(id, load)| AgentLoad {
                    id: Arc::from(*id),
                    status: AgentStatus::Active,
                    load: *load,
                    capacity: 4,
                })
                .collect()
        };
        // Taken at 10 (b still there), applied after one taken at 30 (b gone, its event
        // handled at 20, and its departure forgotten once the newer snapshot is applied).
        let old = snapshot(&[("a", 3), ("b", 0)]);
        lb.upsert_agent(AgentSpec::new("b"), 5);
        lb.remove_agent("b", 20);
        lb.sync(&snapshot(&[("a", 1)]), 30);
        assert_eq!(lb.last_sync_ns(), Some(30));
        assert!(lb.sync(&old, 10).is_empty(), "nothing added from the older snapshot");
        assert!(!lb.contains("b"), "the departed agent is not brought back");
        assert_eq!(
            lb.load("a").expect("kept").host_load,
            1,
            "the older load is not applied"
        );
        assert_eq!(lb.last_sync_ns(), Some(30));
        // A snapshot taken at the same time as the last one still applies (a stopped clock).
        lb.sync(&snapshot(&[("a", 2)]), 30);
        assert_eq!(lb.load("a").expect("kept").host_load, 2);
    }

    #[test]
    fn an_absurd_latency_cannot_poison_p2c_with_nan() {
        let mut lb = with_agents(&["a", "b"], 4);
        lb.observe("a", 10.0, true, 0).expect("known");
        lb.observe("b", 20.0, true, 0).expect("known");
        for latency in [1e303, f64::INFINITY, f64::NAN, MAX_LATENCY_MS + 1.0, -1.0] {
            let err = lb.observe("b", latency, true, MS).unwrap_err();
            assert!(err.is_invalid(), "{latency}: {err}");
            assert!(lb.start("b", MS).is_ok());
            assert!(lb.finish("b", latency, true, MS).is_err(), "{latency}");
            lb.release("b", MS).expect("held");
        }
        // One day is accepted and stays finite however it decays.
        lb.observe("b", MAX_LATENCY_MS, true, MS).expect("one day is a latency");
        for t in [MS, 10_000 * MS, u64::MAX / 2] {
            let cost = lb.cost("b", t).expect("known");
            assert!(cost.is_finite() && cost >= 0.0, "{cost} at {t}");
        }
        // b is a day slow: it loses every comparison instead of winning them all.
        let counts = count(&mut lb, Strategy::P2cPeakEwma, 200, 2 * MS);
        assert_eq!(counts.get("b"), None, "{counts:?}");
    }

    #[test]
    fn a_late_outcome_after_the_backoff_does_not_settle_a_half_open_circuit() {
        let mut lb = balancer(BalancerConfig {
            failure_threshold: 1,
            base_backoff_ms: 100,
            ..BalancerConfig::default()
        });
        lb.upsert_agent(AgentSpec::new("a").with_capacity(4), 0);
        lb.upsert_agent(AgentSpec::new("b").with_capacity(4), 0);
        // A call starts on a, then a fails elsewhere and its circuit opens.
        lb.start("a", 0).expect("known");
        lb.report("a", false, MS).expect("known");
        let _ = lb.take_notices();
        // After the backoff, with no probe out: the late answer of the call started before the
        // circuit opened, an observation and a report change nothing.
        let late = lb.finish("a", 5.0, true, 200 * MS).expect("pending");
        assert_eq!(late.circuit, CircuitState::HalfOpen);
        lb.observe("a", 5.0, false, 201 * MS).expect("known");
        let view = lb.report("a", true, 202 * MS).expect("known");
        assert_eq!((view.state, view.times_opened), (CircuitState::HalfOpen, 1));
        assert!(lb.take_notices().is_empty(), "no circuit closed or reopened");
        assert_eq!(lb.open_circuits(), [Arc::from("a")]);
        // The probe goes out; its outcome settles it.
        let probe = lb
            .pick(Strategy::RoundRobin, Some(&["a"]), true, 203 * MS)
            .expect("picks");
        assert!(probe.probe);
        let outcome = lb.finish("a", 5.0, true, 204 * MS).expect("pending");
        assert_eq!(outcome.circuit, CircuitState::Closed);
        assert!(lb.open_circuits().is_empty());
    }

    #[test]
    fn registered_agents_have_no_room_until_filled_and_weights_are_learnt_lazily() {
        let mut lb = balancer(BalancerConfig::default());
        assert!(lb.register("a", AgentStatus::Active, 0));
        assert!(!lb.register("a", AgentStatus::Active, 0), "already known");
        assert!(lb.has_unfilled());
        // P2C may pick it at once; admission waits for its capacity.
        assert_eq!(
            &*lb.pick(Strategy::P2cPeakEwma, None, false, 0).expect("picks").agent_id,
            "a"
        );
        assert!(matches!(
            lb.admit(AdmitTarget::Any, false, 0),
            Ok(Admission::Refused { .. })
        ));
        assert_eq!(lb.unweighted(None, 0), [Arc::from("a")]);
        assert_eq!(lb.take_unfilled(), [Arc::from("a")]);
        assert!(!lb.has_unfilled());
        assert!(lb.fill(&AgentSpec::new("a").with_capacity(3).with_weight(2.0), 0));
        assert!(
            !lb.fill(&AgentSpec::new("gone"), 0),
            "an agent that left is not added back"
        );
        assert!(!lb.contains("gone"));
        assert_eq!(lb.load("a").expect("known").capacity, 3);
        assert!(lb.unweighted(None, 0).is_empty(), "the fill gave the weight");
        assert!(matches!(
            lb.admit(AdmitTarget::Any, false, 0),
            Ok(Admission::Admitted { .. })
        ));
        // An agent first seen in a fleet snapshot has its capacity but not its weight.
        let fleet = [
            AgentLoad {
                id: Arc::from("a"),
                status: AgentStatus::Active,
                load: 0,
                capacity: 3,
            },
            AgentLoad {
                id: Arc::from("s"),
                status: AgentStatus::Active,
                load: 0,
                capacity: 2,
            },
        ];
        lb.sync(&fleet, 1);
        assert_eq!(lb.unweighted(None, 1), [Arc::from("s")]);
        lb.set_weight("s", None).expect("known");
        assert!(lb.unweighted(None, 1).is_empty());
        assert_eq!(lb.load("a").expect("known").capacity, 3, "the sync kept a's figures");
    }

    #[test]
    fn configuration_bounds_the_half_life_and_the_default_rtt() {
        for value in [
            serde_json::json!({"half_life_ms": 0}),
            serde_json::json!({"half_life_ms": MAX_HALF_LIFE_MS + 1}),
            serde_json::json!({"half_life_ms": u64::MAX}),
            serde_json::json!({"default_rtt_ms": 1e303}),
            serde_json::json!({"default_rtt_ms": MAX_LATENCY_MS + 1.0}),
        ] {
            let config: BalancerConfig = serde_json::from_value(value.clone()).expect("parses");
            let err = Balancer::new(config).unwrap_err().to_string();
            assert!(err.contains("one day"), "{value}: {err}");
        }
        let config: BalancerConfig = serde_json::from_value(
            serde_json::json!({"half_life_ms": MAX_HALF_LIFE_MS, "default_rtt_ms": MAX_LATENCY_MS, "seed": 1}),
        )
        .expect("parses");
        let mut lb = Balancer::new(config).expect("the bounds themselves are accepted");
        lb.upsert_agent(AgentSpec::new("a"), 0);
        assert_eq!(lb.cost("a", 0), Some(MAX_LATENCY_MS));
    }

    #[test]
    fn a_pick_over_a_mostly_unavailable_fleet_still_finds_the_few() {
        let mut lb = balancer(BalancerConfig::default());
        for i in 0..1_000 {
            let status = if i % 250 == 7 {
                AgentStatus::Active
            } else {
                AgentStatus::Offline
            };
            lb.upsert_agent(AgentSpec::new(format!("a{i:04}")).with_status(status), 0);
        }
        let counts = count(&mut lb, Strategy::P2cPeakEwma, 400, 0);
        assert_eq!(counts.len(), 4, "{counts:?}");
        assert!(
            counts
                .keys()
                .all(|id| ["a0007", "a0257", "a0507", "a0757"].contains(&id.as_str()))
        );
    }

    #[test]
    fn configuration_is_checked() {
        let bad = [
            serde_json::json!({"half_life_ms": 0}),
            serde_json::json!({"default_rtt_ms": -1.0}),
            serde_json::json!({"weights": {"a": 0.0}}),
            serde_json::json!({"failure_threshold": 0}),
            serde_json::json!({"base_backoff_ms": 10, "max_backoff_ms": 5}),
            serde_json::json!({"queue_timeout_ms": 0}),
            serde_json::json!({"rebalance_threshold": -0.5}),
        ];
        for value in bad {
            let config: BalancerConfig = serde_json::from_value(value.clone()).expect("parses");
            assert!(Balancer::new(config).is_err(), "{value}");
        }
        assert!(serde_json::from_value::<BalancerConfig>(serde_json::json!({"half_life": 3})).is_err());
        let config: BalancerConfig =
            serde_json::from_value(serde_json::json!({"default_strategy": "round_robin"})).expect("parses");
        assert_eq!(config.default_strategy, Strategy::RoundRobin);
    }
}
