//! `ContextAwareRoutingPlugin`: picks the agent for a task by what the task says, what each
//! agent has shown it does well, and how busy each agent is. For applications that embed the
//! orchestrator (statically, or as a dynamic library built from this crate).
//!
//! # How an agent is chosen
//!
//! 1. **Hard filters**: the agent is registered, not offline, and has every
//!    `required_capabilities` entry.
//! 2. **Score** = `similarity·w_s + learned·w_l + free·w_f` (defaults 0.3, 0.5, 0.2), where
//!    - *similarity* is BM25 between the task's words and the agent's capability names (whole and
//!      split at `_`), scaled so the best candidate has 1. An agent's history enters through
//!      *learned*, per topic, not through similarity: indexing the words of the tasks an agent
//!      completed turned similarity into a popularity signal that locked routing onto whichever
//!      agent succeeded first (the learning test caught it);
//!    - *learned* is a draw from the agent's posterior success rate for the task's *topic*,
//!      Beta(successes + 1 + 4·similarity, failures + 1 + 4·(1 - similarity)): Thompson sampling
//!      with a prior worth four observations that leans on similarity. A fresh fleet is routed
//!      mostly by what the task says; an agent with little history is still tried now and then
//!      (exploration), and a strong one hidden among similar agents is found, with no fixed
//!      exploration rate to tune;
//!    - *free* is `1 - load / capacity`.
//!
//! The **topic** of a task is its `topic` field when given, else its required capabilities
//! (sorted, joined with `+`), else its rarest word that some agent's document contains, else
//! `general`.
//!
//! # Capabilities
//!
//! **`semantic_routing`**
//! - request: `{"task": {"description": string, "required_capabilities"?: [string], "topic"?: string},
//!   "available_agents"?: [id], "ranking_len"?: 1..=10}` (absent: every registered agent; the
//!   ranking's length, default 10: a caller that reads only the best few saves building the rest)
//! - response: `{"selected_agent", "score", "topic", "ranking": [{"agent_id", "score",
//!   "similarity", "learned", "free"}]}` (best first, at most `ranking_len`); `success: false` with the
//!   reason when no candidate passes the filters.
//!
//! **`performance_learning`**
//! - request: `{"agent_id", "task": {"description", "topic"?, "required_capabilities"?},
//!   "success": bool, "duration_ms"?: number}`
//! - response: `{"agent_id", "topic", "successes", "failures", "posterior_mean", "mean_duration_ms"}`
//!
//! **`agent_profiling`**
//! - request: `{"agent_id"}`
//! - response: `{"agent_id", "capabilities", "status", "load", "capacity", "topics": {topic:
//!   {"successes", "failures", "posterior_mean"}}, "mean_duration_ms", "tasks_recorded"}`
//!
//! # Configuration
//!
//! `{"weights": {"similarity", "learning", "load"}, "seed": u64}` (the seed makes the sampling
//! reproducible). Unknown keys are refused.

mod index;
mod sampling;

use index::{TextIndex, capability_terms, tokenize};
use plugin_api::prelude::*;
use sampling::Rng;
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, OnceLock, RwLock};

/// The plugin's name.
pub const NAME: &str = "ContextAwareRoutingPlugin";
const RANKING_LEN: usize = 10;
/// How many pseudo-observations the similarity-based prior is worth.
const PRIOR_WEIGHT: f64 = 4.0;
/// At most this many candidates get a Thompson draw per routing (the rest cannot win, or are
/// indistinguishable from those that do).
const MAX_SAMPLED: usize = 64;

/// Agents' capabilities, with equal lists shared.
#[derive(Debug, Default)]
struct CapabilityCache {
    by_agent: HashMap<String, Arc<[String]>>,
    interned: HashMap<Vec<String>, Arc<[String]>>,
}

/// One eligible agent while a task is routed.
struct Candidate<'a> {
    agent: &'a AgentLoad,
    sim: f64,
    free: f64,
    /// The posterior's parameters for the task's topic, and three standard deviations.
    a: f64,
    b: f64,
    spread: f64,
    /// A draw from the posterior, or its mean when not drawn.
    learned: f64,
    score: f64,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
struct Weights {
    similarity: f64,
    learning: f64,
    load: f64,
}

impl Default for Weights {
    fn default() -> Self {
        Self {
            similarity: 0.3,
            learning: 0.5,
            load: 0.2,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RoutingConfig {
    #[serde(default)]
    weights: Option<Weights>,
    #[serde(default)]
    seed: Option<u64>,
}

#[derive(Debug, Default, Clone)]
struct Profile {
    topics: BTreeMap<String, (u32, u32)>,
    duration_sum_ms: f64,
    tasks: u64,
}

#[derive(Debug, Default)]
struct State {
    index: TextIndex,
    profiles: HashMap<String, Profile>,
}

/// The task part of a request.
struct TaskSpec {
    words: Vec<String>,
    required: Vec<String>,
    topic: Option<String>,
}

fn parse_task(data: &Value, expected: &str) -> Result<TaskSpec, PluginError> {
    let task = data
        .get("task")
        .filter(|t| t.is_object())
        .ok_or_else(|| PluginError::invalid_request(expected.to_owned()))?;
    let description = task
        .get("description")
        .and_then(Value::as_str)
        .ok_or_else(|| PluginError::invalid_request(format!("`task.description` must be a string; {expected}")))?;
    let required = string_list(task.get("required_capabilities"), "task.required_capabilities")?.unwrap_or_default();
    let topic = match task.get("topic") {
        None | Some(Value::Null) => None,
        Some(Value::String(t)) if !t.is_empty() => Some(t.clone()),
        Some(_) => return Err(PluginError::invalid_request("`task.topic` must be a non-empty string")),
    };
    Ok(TaskSpec {
        words: tokenize(description),
        required,
        topic,
    })
}

fn string_list(value: Option<&Value>, field: &str) -> Result<Option<Vec<String>>, PluginError> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| v.as_str().map(str::to_owned))
            .collect::<Option<Vec<_>>>()
            .map(Some)
            .ok_or_else(|| PluginError::invalid_request(format!("`{field}` must hold strings only"))),
        Some(_) => Err(PluginError::invalid_request(format!(
            "`{field}` must be a list of strings"
        ))),
    }
}

/// Context-aware routing with learning.
pub struct ContextAwareRoutingPlugin {
    state: RwLock<State>,
    capabilities: RwLock<CapabilityCache>,
    rng: Mutex<Rng>,
    weights: RwLock<Weights>,
    host: OnceLock<HostHandle>,
}

impl Default for ContextAwareRoutingPlugin {
    fn default() -> Self {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0x5EED);
        Self {
            state: RwLock::new(State::default()),
            capabilities: RwLock::new(CapabilityCache::default()),
            rng: Mutex::new(Rng::new(seed)),
            weights: RwLock::new(Weights::default()),
            host: OnceLock::new(),
        }
    }
}

impl std::fmt::Debug for ContextAwareRoutingPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContextAwareRoutingPlugin").finish_non_exhaustive()
    }
}

impl ContextAwareRoutingPlugin {
    /// A router with the default weights and a clock-seeded generator.
    pub fn new() -> Self {
        Self::default()
    }

    fn host(&self) -> Result<&HostHandle, PluginError> {
        self.host
            .get()
            .ok_or_else(|| PluginError::unavailable(format!("{NAME} is not initialized")))
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }

    fn topic_of(index: &TextIndex, task: &TaskSpec) -> String {
        if let Some(topic) = &task.topic {
            return topic.clone();
        }
        if !task.required.is_empty() {
            let mut caps = task.required.clone();
            caps.sort();
            caps.dedup();
            return caps.join("+");
        }
        task.words
            .iter()
            .filter_map(|w| index.idf(w).map(|idf| (w, idf)))
            .max_by(|a, b| a.1.total_cmp(&b.1).then_with(|| b.0.cmp(a.0)))
            .map(|(w, _)| w.clone())
            .unwrap_or_else(|| "general".to_owned())
    }

    /// An agent's capabilities, from the cache or (first sight) from the host, which also
    /// indexes them. Capabilities are fixed at registration; the cache entry goes when the
    /// agent is deregistered (see `on_event`). Equal capability lists share one allocation, so
    /// that a routing call computes similarity once per distinct list.
    fn capabilities_of(&self, host: &HostHandle, id: &str) -> Option<Arc<[String]>> {
        if let Some(caps) = self
            .capabilities
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .by_agent
            .get(id)
        {
            return Some(Arc::clone(caps));
        }
        let info = host.agent(id)?;
        let mut state = self.write();
        if !state.index.contains(id) {
            state
                .index
                .add(id, info.capabilities.iter().flat_map(|c| capability_terms(c)));
        }
        drop(state);
        let mut cache = self.capabilities.write().unwrap_or_else(|p| p.into_inner());
        let caps = match cache.interned.get(&info.capabilities) {
            Some(shared) => Arc::clone(shared),
            None => {
                let shared: Arc<[String]> = info.capabilities.clone().into();
                cache.interned.insert(info.capabilities, Arc::clone(&shared));
                shared
            }
        };
        cache.by_agent.insert(id.to_owned(), Arc::clone(&caps));
        Some(caps)
    }

    fn route(&self, data: &Value) -> Result<IntegrationResponse, PluginError> {
        const EXPECTED: &str = "expected {\"task\": {\"description\": string, \"required_capabilities\"?: [string]}, \"available_agents\"?: [string]}";
        let task = parse_task(data, EXPECTED)?;
        let wanted = string_list(data.get("available_agents"), "available_agents")?;
        let ranking_len = match data.get("ranking_len") {
            None | Some(Value::Null) => RANKING_LEN,
            Some(n) => match n.as_u64() {
                Some(n @ 1..=10) => n as usize,
                _ => {
                    return Err(PluginError::invalid_request(
                        "`ranking_len` must be an integer from 1 to 10 (default 10)",
                    ));
                }
            },
        };
        let host = self.host()?;
        // A few candidates in a large fleet are looked up one by one; otherwise one read of
        // every agent's load is cheaper than a full snapshot of each candidate. (The fleet's
        // size is known well enough from the agents this plugin has seen.)
        let fleet_seen = self
            .capabilities
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .by_agent
            .len();
        let loads: Vec<AgentLoad> = match &wanted {
            Some(ids) if ids.len() <= 32 && fleet_seen > 8 * ids.len() => ids
                .iter()
                .filter_map(|id| host.agent(id))
                .map(AgentLoad::from)
                .collect(),
            Some(ids) => {
                let wanted: std::collections::HashSet<&str> = ids.iter().map(String::as_str).collect();
                host.agent_loads()
                    .into_iter()
                    .filter(|a| wanted.contains(&*a.id))
                    .collect()
            }
            None => host.agent_loads(),
        };
        // Capabilities for every candidate: one lock for the cached ones, the host for the rest.
        let mut caps: Vec<Option<Arc<[String]>>> = {
            let cache = self.capabilities.read().unwrap_or_else(|p| p.into_inner());
            loads.iter().map(|a| cache.by_agent.get(&*a.id).cloned()).collect()
        };
        for (slot, agent) in caps.iter_mut().zip(&loads) {
            if slot.is_none() {
                *slot = self.capabilities_of(host, &agent.id);
            }
        }
        let eligible: Vec<(&AgentLoad, Arc<[String]>)> = loads
            .iter()
            .zip(caps)
            .filter_map(|(agent, caps)| Some((agent, caps?)))
            .filter(|(agent, caps)| {
                agent.status != AgentStatus::Offline && task.required.iter().all(|c| caps.contains(c))
            })
            .collect();
        if eligible.is_empty() {
            let considered = wanted.as_ref().map_or(loads.len(), Vec::len);
            return Ok(IntegrationResponse::failure(format!(
                "no eligible agent among {considered} candidate(s): each is unregistered, offline or lacks [{}]",
                task.required.join(", ")
            )));
        }

        let weights = *self.weights.read().unwrap_or_else(|p| p.into_inner());
        let state = self.read();
        let topic = Self::topic_of(&state.index, &task);
        let query = state.index.weigh(&task.words);
        // Documents are made of capability names only, so equal lists score alike.
        let mut memo: HashMap<usize, f64> = HashMap::new();
        let similarity: Vec<f64> = eligible
            .iter()
            .map(|(agent, caps)| {
                let key = Arc::as_ptr(caps).cast::<u8>() as usize;
                *memo.entry(key).or_insert_with(|| state.index.score(&agent.id, &query))
            })
            .collect();
        let best_similarity = similarity.iter().copied().fold(0.0, f64::max);
        let mut candidates: Vec<Candidate<'_>> = eligible
            .iter()
            .zip(similarity)
            .map(|((agent, _), sim)| {
                let sim = if best_similarity > 0.0 {
                    sim / best_similarity
                } else {
                    0.0
                };
                let (s, f) = state
                    .profiles
                    .get(&*agent.id)
                    .and_then(|p| p.topics.get(&topic))
                    .copied()
                    .unwrap_or((0, 0));
                // The prior leans on similarity, so a fresh fleet is routed by what the task
                // says, while what agents then do soon outweighs it.
                let a = f64::from(s) + 1.0 + PRIOR_WEIGHT * sim;
                let b = f64::from(f) + 1.0 + PRIOR_WEIGHT * (1.0 - sim);
                let free = 1.0 - (f64::from(agent.load) / f64::from(agent.capacity.max(1))).min(1.0);
                let spread = 3.0 * (a * b / ((a + b).powi(2) * (a + b + 1.0))).sqrt();
                Candidate {
                    agent,
                    sim,
                    free,
                    a,
                    b,
                    spread,
                    learned: a / (a + b),
                    score: 0.0,
                }
            })
            .collect();
        drop(state);

        // Thompson sampling, drawn only where it can matter: a candidate whose optimistic score
        // (posterior mean + 3 sd) is below the best pessimistic one cannot win, and keeps its
        // mean. Ties are broken at random so that exploration is spread over equals.
        let fixed = |c: &Candidate<'_>| weights.similarity * c.sim + weights.load * c.free;
        let threshold = candidates
            .iter()
            .map(|c| fixed(c) + weights.learning * (c.learned - c.spread).max(0.0))
            .fold(f64::MIN, f64::max);
        let mut rng = self.rng.lock().unwrap_or_else(|p| p.into_inner());
        let mut contenders: Vec<(f64, usize)> = candidates
            .iter()
            .enumerate()
            .map(|(i, c)| (fixed(c) + weights.learning * (c.learned + c.spread).min(1.0), i))
            .filter(|(optimistic, _)| *optimistic >= threshold)
            .map(|(optimistic, i)| (optimistic + 1e-9 * rng.uniform(), i))
            .collect();
        if contenders.len() > MAX_SAMPLED {
            contenders.select_nth_unstable_by(MAX_SAMPLED - 1, |x, y| y.0.total_cmp(&x.0));
            contenders.truncate(MAX_SAMPLED);
        }
        for &(_, i) in &contenders {
            let c = &mut candidates[i];
            c.learned = rng.beta(c.a, c.b);
        }
        drop(rng);
        for c in &mut candidates {
            c.score = fixed(c) + weights.learning * c.learned;
        }
        let order = |x: &Candidate<'_>, y: &Candidate<'_>| {
            y.score.total_cmp(&x.score).then_with(|| x.agent.id.cmp(&y.agent.id))
        };
        if candidates.len() > ranking_len {
            candidates.select_nth_unstable_by(ranking_len - 1, order);
            candidates.truncate(ranking_len);
        }
        candidates.sort_by(order);
        let top: Vec<Value> = candidates
            .iter()
            .map(|c| json!({"agent_id": &*c.agent.id, "score": c.score, "similarity": c.sim, "learned": c.learned, "free": c.free}))
            .collect();
        // The ranking moves into the answer (`json!` would copy it value by value).
        let mut answer = json!({
            "selected_agent": &*candidates[0].agent.id,
            "score": candidates[0].score,
            "topic": topic,
        });
        answer["ranking"] = Value::Array(top);
        Ok(IntegrationResponse::ok(answer))
    }

    fn learn(&self, data: &Value) -> Result<Value, PluginError> {
        const EXPECTED: &str = "expected {\"agent_id\": string, \"task\": {\"description\": string}, \"success\": bool, \"duration_ms\"?: number}";
        let agent = data
            .get("agent_id")
            .and_then(Value::as_str)
            .ok_or_else(|| PluginError::invalid_request(EXPECTED))?;
        let task = parse_task(data, EXPECTED)?;
        let success = data
            .get("success")
            .and_then(Value::as_bool)
            .ok_or_else(|| PluginError::invalid_request(EXPECTED))?;
        let duration = match data.get("duration_ms") {
            None | Some(Value::Null) => None,
            Some(v) => Some(v.as_f64().filter(|d| *d >= 0.0).ok_or_else(|| {
                PluginError::invalid_request(format!("`duration_ms` must be a non-negative number; {EXPECTED}"))
            })?),
        };
        if self.capabilities_of(self.host()?, agent).is_none() {
            return Err(PluginError::invalid_request(format!(
                "no agent `{agent}` is registered"
            )));
        }
        let mut state = self.write();
        let topic = Self::topic_of(&state.index, &task);
        let profile = state.profiles.entry(agent.to_owned()).or_default();
        let counts = profile.topics.entry(topic.clone()).or_insert((0, 0));
        if success {
            counts.0 += 1;
        } else {
            counts.1 += 1;
        }
        let (s, f) = *counts;
        if let Some(d) = duration {
            profile.duration_sum_ms += d;
            profile.tasks += 1;
        }
        let mean_duration = (profile.tasks > 0).then(|| profile.duration_sum_ms / profile.tasks as f64);
        Ok(json!({
            "agent_id": agent,
            "topic": topic,
            "successes": s,
            "failures": f,
            "posterior_mean": (f64::from(s) + 1.0) / (f64::from(s + f) + 2.0),
            "mean_duration_ms": mean_duration,
        }))
    }

    fn profile(&self, data: &Value) -> Result<Value, PluginError> {
        let agent = data
            .get("agent_id")
            .and_then(Value::as_str)
            .ok_or_else(|| PluginError::invalid_request("expected {\"agent_id\": string}"))?;
        let info = self
            .host()?
            .agent(agent)
            .ok_or_else(|| PluginError::invalid_request(format!("no agent `{agent}` is registered")))?;
        let profile = self.read().profiles.get(agent).cloned().unwrap_or_default();
        let topics: serde_json::Map<String, Value> = profile
            .topics
            .iter()
            .map(|(topic, (s, f))| {
                let mean = (f64::from(*s) + 1.0) / (f64::from(s + f) + 2.0);
                (
                    topic.clone(),
                    json!({"successes": s, "failures": f, "posterior_mean": mean}),
                )
            })
            .collect();
        Ok(json!({
            "agent_id": agent,
            "capabilities": info.capabilities,
            "status": info.status,
            "load": info.load,
            "capacity": info.capacity,
            "topics": topics,
            "mean_duration_ms": (profile.tasks > 0).then(|| profile.duration_sum_ms / profile.tasks as f64),
            "tasks_recorded": profile.tasks,
        }))
    }
}

#[async_trait]
impl OrchestrationPlugin for ContextAwareRoutingPlugin {
    fn name(&self) -> &str {
        NAME
    }

    fn version(&self) -> &str {
        env!("CARGO_PKG_VERSION")
    }

    fn capabilities(&self) -> Vec<String> {
        vec![
            "semantic_routing".into(),
            "agent_profiling".into(),
            "performance_learning".into(),
        ]
    }

    async fn initialize(&self, host: HostHandle) -> Result<(), PluginError> {
        let config: RoutingConfig = host.config_as()?;
        if let Some(weights) = config.weights {
            let all = [weights.similarity, weights.learning, weights.load];
            if all.iter().any(|w| !w.is_finite() || *w < 0.0) || all.iter().sum::<f64>() <= 0.0 {
                return Err(PluginError::new(format!(
                    "{NAME} configuration: weights must be non-negative and not all zero"
                )));
            }
            *self.weights.write().unwrap_or_else(|p| p.into_inner()) = weights;
        }
        if let Some(seed) = config.seed {
            *self.rng.lock().unwrap_or_else(|p| p.into_inner()) = Rng::new(seed);
        }
        let _ = self.host.set(host);
        Ok(())
    }

    async fn process_request(&self, request: IntegrationRequest) -> Result<IntegrationResponse, PluginError> {
        match request.capability.as_str() {
            "semantic_routing" => self.route(&request.data),
            "performance_learning" => self.learn(&request.data).map(IntegrationResponse::ok),
            "agent_profiling" => self.profile(&request.data).map(IntegrationResponse::ok),
            other => Err(PluginError::invalid_request(format!(
                "{NAME} does not serve `{other}` (it serves semantic_routing, agent_profiling, performance_learning)"
            ))),
        }
    }

    async fn health_check(&self) -> HealthStatus {
        if self.host.get().is_some() {
            HealthStatus::healthy()
        } else {
            HealthStatus::unhealthy("not initialized")
        }
    }

    async fn on_event(&self, event: &OrchestratorEvent) {
        if let OrchestratorEvent::AgentDeregistered { agent_id } = event {
            let mut state = self.write();
            state.index.remove(agent_id);
            state.profiles.remove(agent_id);
            drop(state);
            self.capabilities
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .by_agent
                .remove(agent_id);
        }
    }
}
