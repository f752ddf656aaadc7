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
//!      split at `_`), scaled so the best candidate has 1;
//!    - *learned* is a draw from the agent's posterior probability of success on this task
//!      (Thompson sampling), from a model that learns from outcomes which words go with which
//!      agents' successes (below);
//!    - *free* is `1 - load / capacity`.
//!
//! # What is learned
//!
//! Each outcome (`performance_learning`) teaches a Bayesian probit regression over the task's
//! *features*: its words, less identifiers such as item numbers and hashes (or its explicit
//! `topic`, which then stands alone: the caller said which tasks are alike) and its required
//! capabilities. It learns, per agent, a bias (how good it is overall) and a weight per word,
//! and, shared by all agents that declare a capability, a weight per capability and word: one
//! database agent's success on a "schema" task raises every
//! database agent for the next task that says "schema", phrased however, including in words no
//! agent declared. Beside it, the words of each capability's successful tasks are counted, and
//! a task's words are scored for each capability by how much more often they appear in that
//! capability's successes than in all (their affinity): noise words from other fields count
//! for nothing, a field's own words for much. A fresh fleet is routed by what the task says
//! (the text similarity is the model's prior); what agents then do soon outweighs it. Routing samples the weights from
//! their posteriors, so an agent with little history is still tried now and then, with no
//! exploration rate to tune.
//!
//! Drift: a weight's certainty fades as the rest of the fleet learns (back to its prior after
//! `learning.forget_after` outcomes for an agent's overall skill, default 1,000, and ten times
//! as many for word weights), so routing follows an agent that gets better
//! or worse. Memory is bounded: at most `learning.max_features_per_agent` (256) word weights per
//! agent and `learning.max_shared_features` (65,536) capability-word weights in all, the least
//! informative replaced first; `agent_profiling` reports each agent's `model_bytes`.
//!
//! The model is state users keep: `performance_learning` with `"op": "export"` returns it as a
//! JSON snapshot, and `"op": "import"` restores it (after a restart, or into another process).
//!
//! # Capabilities
//!
//! **`semantic_routing`**
//! - request: `{"task": {"description": string, "required_capabilities"?: [string], "topic"?: string},
//!   "available_agents"?: [id], "ranking_len"?: 1..=10}` (absent: every registered agent; the
//!   ranking's length, default 10: a caller that reads only the best few saves building the rest)
//! - response: `{"selected_agent", "score", "topic", "ranking": [{"agent_id", "score",
//!   "similarity", "learned", "free"}]}` (best first, at most `ranking_len`; `topic` is the task's
//!   explicit topic, else its required capabilities joined by `+`, else null); `success: false`
//!   with the reason when no candidate passes the filters.
//!
//! **`performance_learning`**
//! - `{"op"?: "learn" (default), "agent_id", "task": {"description", "topic"?,
//!   "required_capabilities"?}, "success": bool, "duration_ms"?: number}` -> `{"agent_id", "topic",
//!   "features", "predicted_before", "posterior_mean", "successes", "failures",
//!   "mean_duration_ms"}`: the predicted success of this agent on this task before and after the
//!   outcome, and the agent's totals
//! - `{"op": "export"}` -> `{"snapshot": {...}}`: everything learned (agents, their weights with
//!   the words they belong to, the shared weights)
//! - `{"op": "import", "snapshot": {...}}` -> `{"agents", "weights", "outcomes"}`: replaces what is
//!   learned with the snapshot; a malformed or incompatible snapshot is refused and nothing changes
//!
//! **`agent_profiling`**
//! - request: `{"agent_id", "top"?: 1..=100 (default 20)}`
//! - response: `{"agent_id", "capabilities", "status", "load", "capacity", "successes",
//!   "failures", "bias": {...}, "topics": {feature: {"mean", "sd", "successes", "failures",
//!   "posterior_mean"}}, "learned_features", "model_bytes", "mean_duration_ms",
//!   "tasks_recorded"}`: the `top` features that most move this agent's success, either way (its
//!   words, `topic:<t>`, `cap:<c>`, and `<capability>×<word>` for the shared weights), each with
//!   its weight's posterior and the predicted success of a task that says only that
//!
//! # Configuration
//!
//! `{"weights": {"similarity", "learning", "load"}, "seed": u64, "learning": {"forget_after",
//! "max_features_per_agent", "max_shared_features"}}` (the seed makes the sampling
//! reproducible). Unknown keys are refused.

mod index;
mod model;
mod sampling;
mod shared;

use index::{TextIndex, capability_terms, tokenize};
use model::{Estimate, KeyMap, Learned, LearningConfig, Model, TaskFeatures, norm_cdf_fast, sampled_success};
use plugin_api::prelude::*;
use sampling::Rng;
use serde::Deserialize;
use serde_json::{Value, json};
use shared::{LogPosition, SharedLog};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, RwLock};

/// The plugin's name.
pub const NAME: &str = "ContextAwareRoutingPlugin";
const RANKING_LEN: usize = 10;
/// At most this many candidates get a Thompson draw per routing (the rest cannot win, or are
/// indistinguishable from those that do).
const MAX_SAMPLED: usize = 64;
/// Features listed per profile unless asked otherwise.
const PROFILE_TOP: usize = 20;

/// An agent as routing needs it: its capabilities (equal lists shared) and its slot in the model.
#[derive(Debug, Clone)]
struct KnownAgent {
    capabilities: Arc<[String]>,
    slot: u32,
}

/// Agents' capabilities and model slots, with equal capability lists shared.
///
/// Found by id text, and (on the routing path) by the address of the host's shared id: the
/// host hands out the same `Arc<str>` for an agent on every listing, so the address finds it
/// without hashing or comparing the text. The entry keeps a clone of that `Arc`, so the address
/// cannot be reused for another id while the entry exists.
#[derive(Debug, Default)]
struct CapabilityCache {
    by_agent: KeyMap<String, (KnownAgent, Option<usize>)>,
    by_address: KeyMap<usize, (Arc<str>, KnownAgent)>,
    interned: HashMap<Vec<String>, Arc<[String]>>,
}

/// The address of a shared id, as a key.
fn address(id: &Arc<str>) -> usize {
    Arc::as_ptr(id).cast::<u8>() as usize
}

impl CapabilityCache {
    /// The agent behind `id`, and whether it was found by address.
    fn find(&self, id: &Arc<str>) -> Option<(&KnownAgent, bool)> {
        if let Some((_, known)) = self.by_address.get(&address(id)) {
            return Some((known, true));
        }
        self.by_agent.get(&**id).map(|(known, _)| (known, false))
    }

    /// Lets `id`'s address find the agent its text finds.
    fn index_address(&mut self, id: &Arc<str>) {
        let key = address(id);
        let Some((known, old)) = self.by_agent.get_mut(&**id) else {
            return;
        };
        if let Some(old) = old.replace(key) {
            if old != key {
                self.by_address.remove(&old);
            }
        }
        let known = known.clone();
        self.by_address.insert(key, (Arc::clone(id), known));
    }

    fn forget(&mut self, id: &str) {
        if let Some((_, Some(key))) = self.by_agent.remove(id) {
            self.by_address.remove(&key);
        }
    }

    fn clear(&mut self) {
        self.by_agent.clear();
        self.by_address.clear();
    }
}

/// One eligible agent while a task is routed.
struct Candidate<'a> {
    agent: &'a AgentLoad,
    sim: f64,
    free: f64,
    /// The latent score's posterior (mean, standard deviation).
    mean: f64,
    sd: f64,
    /// The learned success if drawn at the pessimistic and optimistic ends (3 sd).
    low: f64,
    high: f64,
    /// A draw of the learned success, or its posterior mean when not drawn.
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
    #[serde(default)]
    learning: Option<LearningConfig>,
}

#[derive(Debug)]
struct State {
    index: TextIndex,
    model: Model,
    /// Where this process is in the shared log, when there is one.
    log: LogPosition,
}

impl Default for State {
    fn default() -> Self {
        Self {
            index: TextIndex::default(),
            model: Model::new(LearningConfig::default()),
            log: LogPosition::default(),
        }
    }
}

/// An outcome to learn, with what learning needs.
struct Outcome {
    agent: String,
    capabilities: Arc<[String]>,
    features: TaskFeatures,
    topic: Option<String>,
    similarity: f64,
    success: bool,
    duration_ms: Option<f64>,
}

impl Outcome {
    /// The `performance_learning` answer.
    fn answer(&self, learned: &Learned) -> Value {
        json!({
            "agent_id": self.agent,
            "topic": self.topic,
            "features": self.features.words.len(),
            "predicted_before": learned.before,
            "posterior_mean": learned.after,
            "successes": learned.successes,
            "failures": learned.failures,
            "mean_duration_ms": learned.mean_duration_ms,
        })
    }
}

/// The task part of a request.
struct TaskSpec {
    words: Vec<String>,
    required: Vec<String>,
    topic: Option<String>,
}

impl TaskSpec {
    fn features(&self) -> TaskFeatures {
        TaskFeatures::new(&self.words, self.topic.as_deref(), &self.required)
    }

    /// The explicit topic, else the required capabilities joined by `+`.
    fn topic(&self) -> Option<String> {
        if let Some(topic) = &self.topic {
            return Some(topic.clone());
        }
        if self.required.is_empty() {
            return None;
        }
        let mut caps = self.required.clone();
        caps.sort();
        caps.dedup();
        Some(caps.join("+"))
    }
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

/// The similarity the model's prior uses, from a raw BM25 score: `1 - e^-bm25`, in [0, 1). The
/// same in routing and in learning (a score relative to the best candidate would need the
/// candidates, which learning does not have).
fn prior_similarity(bm25: f64) -> f64 {
    1.0 - (-bm25.max(0.0)).exp()
}

/// Context-aware routing with learning.
pub struct ContextAwareRoutingPlugin {
    state: RwLock<State>,
    capabilities: RwLock<CapabilityCache>,
    rng: Mutex<Rng>,
    weights: RwLock<Weights>,
    host: OnceLock<HostHandle>,
    /// The shared log outcomes go through, when configured.
    shared: OnceLock<SharedLog>,
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
            shared: OnceLock::new(),
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

    fn cache(&self) -> std::sync::RwLockReadGuard<'_, CapabilityCache> {
        self.capabilities.read().unwrap_or_else(|p| p.into_inner())
    }

    /// An agent's capabilities and model slot, from the cache or (first sight) from the host,
    /// which also indexes them. Capabilities are fixed at registration; the cache entry goes
    /// when the agent is deregistered (see `on_event`). Equal capability lists share one
    /// allocation, so that a routing call computes similarity once per distinct list.
    fn known_agent(&self, host: &HostHandle, id: &str) -> Option<KnownAgent> {
        if let Some((known, _)) = self.cache().by_agent.get(id) {
            return Some(known.clone());
        }
        // The host is asked under the state lock, which `on_event` takes too: a deregistration
        // cannot come between the answer and the entry made from it.
        let mut state = self.write();
        let info = host.agent(id)?;
        // The cache is filled under the state lock, so that an import (which keeps slots)
        // cannot come between the slot and its entry.
        let mut cache = self.capabilities.write().unwrap_or_else(|p| p.into_inner());
        if let Some((known, _)) = cache.by_agent.get(id) {
            // Another caller made it meanwhile (with its address, perhaps): keep that one.
            return Some(known.clone());
        }
        // The agent's document is made afresh: it may have registered again with other
        // capabilities.
        state.index.remove(id);
        state
            .index
            .add(id, info.capabilities.iter().flat_map(|c| capability_terms(c)));
        let slot = state.model.slot_for(id);
        let caps = match cache.interned.get(&info.capabilities) {
            Some(shared) => Arc::clone(shared),
            None => {
                let shared: Arc<[String]> = info.capabilities.clone().into();
                cache.interned.insert(info.capabilities, Arc::clone(&shared));
                shared
            }
        };
        let known = KnownAgent {
            capabilities: caps,
            slot,
        };
        cache.by_agent.insert(id.to_owned(), (known.clone(), None));
        Some(known)
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
        let fleet_seen = self.cache().by_agent.len();
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
        // Capabilities for every candidate: the cache for those seen before, the host for the
        // rest (which fills the cache).
        let (missing, unaddressed): (Vec<usize>, Vec<usize>) = {
            let cache = self.cache();
            let mut missing = Vec::new();
            let mut unaddressed = Vec::new();
            for (i, agent) in loads.iter().enumerate() {
                match cache.find(&agent.id) {
                    Some((_, true)) => {}
                    Some((_, false)) => unaddressed.push(i),
                    None => missing.push(i),
                }
            }
            (missing, unaddressed)
        };
        for &i in &missing {
            self.known_agent(host, &loads[i].id);
        }
        if !missing.is_empty() || !unaddressed.is_empty() {
            let mut cache = self.capabilities.write().unwrap_or_else(|p| p.into_inner());
            for i in missing.into_iter().chain(unaddressed) {
                cache.index_address(&loads[i].id);
            }
        }

        let weights = *self.weights.read().unwrap_or_else(|p| p.into_inner());
        let features = task.features();
        // The state, then the cache: the order every writer takes them in.
        let state = self.read();
        let cache = self.cache();
        let eligible: Vec<(&AgentLoad, &KnownAgent)> = loads
            .iter()
            .filter_map(|agent| Some((agent, cache.find(&agent.id)?.0)))
            .filter(|(agent, known)| {
                agent.status != AgentStatus::Offline && task.required.iter().all(|c| known.capabilities.contains(c))
            })
            .collect();
        if eligible.is_empty() {
            let considered = wanted.as_ref().map_or(loads.len(), Vec::len);
            return Ok(IntegrationResponse::failure(format!(
                "no eligible agent among {considered} candidate(s): each is unregistered, offline or lacks [{}]",
                task.required.join(", ")
            )));
        }
        let query = state.index.weigh(&task.words);
        let prepared = state.model.prepare(&features);
        // Documents are made of capability names only, so equal lists score alike, and the
        // shared capability-word weights are the same for them too: both once per list.
        let mut memo: KeyMap<usize, (f64, Estimate)> = KeyMap::default();
        let per_list: Vec<(f64, Estimate)> = eligible
            .iter()
            .map(|(agent, known)| {
                let key = Arc::as_ptr(&known.capabilities).cast::<u8>() as usize;
                *memo.entry(key).or_insert_with(|| {
                    let mut shared = state.model.shared_part(&features, &known.capabilities);
                    shared.mean += state.model.affinity(&features, &known.capabilities);
                    (state.index.score(&agent.id, &query), shared)
                })
            })
            .collect();
        let best_similarity = per_list.iter().map(|(bm25, _)| *bm25).fold(0.0, f64::max);
        let mut candidates: Vec<Candidate<'_>> = eligible
            .iter()
            .zip(per_list)
            .map(|((agent, known), (bm25, shared))| {
                let sim = if best_similarity > 0.0 {
                    bm25 / best_similarity
                } else {
                    0.0
                };
                let estimate = prepared.estimate(Some(known.slot), shared, prior_similarity(bm25));
                let sd = estimate.var.sqrt();
                let free = 1.0 - (f64::from(agent.load) / f64::from(agent.capacity.max(1))).min(1.0);
                Candidate {
                    agent,
                    sim,
                    free,
                    mean: estimate.mean,
                    sd,
                    low: sampled_success(estimate.mean - 3.0 * sd),
                    high: sampled_success(estimate.mean + 3.0 * sd),
                    learned: norm_cdf_fast(estimate.mean / (1.0 + estimate.var).sqrt()),
                    score: 0.0,
                }
            })
            .collect();
        drop(prepared);
        drop(cache);
        drop(state);

        // Thompson sampling, drawn only where it can matter: a candidate whose optimistic score
        // (a draw 3 sd above the mean) is below the best pessimistic one cannot win, and keeps
        // its posterior mean. Ties are broken at random so that exploration is spread over equals.
        let fixed = |c: &Candidate<'_>| weights.similarity * c.sim + weights.load * c.free;
        let threshold = candidates
            .iter()
            .map(|c| fixed(c) + weights.learning * c.low)
            .fold(f64::MIN, f64::max);
        // The draws do not depend on the order the host lists agents in (which differs between
        // processes): contenders are cut by a salted hash of their id on ties, and drawn for in
        // id order, so that the same seed, model and calls give the same picks.
        let mut rng = self.rng.lock().unwrap_or_else(|p| p.into_inner());
        let salt = rng.next_u64();
        let mut contenders: Vec<(f64, usize)> = candidates
            .iter()
            .enumerate()
            .map(|(i, c)| (fixed(c) + weights.learning * c.high, i))
            .filter(|(optimistic, _)| *optimistic >= threshold)
            .collect();
        if contenders.len() > MAX_SAMPLED {
            let tie = |i: usize| model::feature_hash(&candidates[i].agent.id) ^ salt;
            contenders.select_nth_unstable_by(MAX_SAMPLED - 1, |x, y| {
                y.0.total_cmp(&x.0).then_with(|| tie(x.1).cmp(&tie(y.1)))
            });
            contenders.truncate(MAX_SAMPLED);
        }
        contenders.sort_unstable_by(|x, y| candidates[x.1].agent.id.cmp(&candidates[y.1].agent.id));
        for &(_, i) in &contenders {
            let c = &mut candidates[i];
            c.learned = sampled_success(c.mean + c.sd * rng.normal());
        }
        drop(rng);
        for c in &mut candidates {
            c.score = fixed(c) + weights.learning * c.learned;
        }
        let order = |x: &Candidate<'_>, y: &Candidate<'_>| {
            y.score.total_cmp(&x.score).then_with(|| x.agent.id.cmp(&y.agent.id))
        };
        if candidates.len() > ranking_len {
            // The best `ranking_len` by score alone (many undrawn candidates tie exactly, and
            // comparing their ids costs more than the rest of the ranking); then their order,
            // ties by id. The pick itself is a drawn candidate, whose score does not tie.
            candidates.select_nth_unstable_by(ranking_len - 1, |x, y| y.score.total_cmp(&x.score));
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
            "topic": task.topic(),
        });
        answer["ranking"] = Value::Array(top);
        Ok(IntegrationResponse::ok(answer))
    }

    async fn learning_op(&self, data: &Value) -> Result<Value, PluginError> {
        let op = match data.get("op") {
            None | Some(Value::Null) => "learn",
            Some(Value::String(op)) => op.as_str(),
            Some(_) => "",
        };
        match op {
            "learn" => match self.shared.get() {
                Some(log) => self.learn_shared(log, data).await,
                None => self.learn(data),
            },
            "export" => {
                let snapshot = self.read().model.export();
                serde_json::to_value(snapshot)
                    .map(|snapshot| json!({ "snapshot": snapshot }))
                    .map_err(|e| PluginError::new(format!("{NAME}: the model did not serialize: {e}")))
            }
            "import" => self.import(data),
            _ => Err(PluginError::invalid_request(format!(
                "`op` must be \"learn\" (the default), \"export\" or \"import\", found {}",
                data["op"]
            ))),
        }
    }

    fn import(&self, data: &Value) -> Result<Value, PluginError> {
        if let Some(log) = self.shared.get() {
            return Err(PluginError::invalid_request(format!(
                "this router learns through the shared log `{}`, which is its model: an imported snapshot would count the log's outcomes twice; import into a router without `learning.shared_log`",
                log.name()
            )));
        }
        let snapshot = data.get("snapshot").ok_or_else(|| {
            PluginError::invalid_request(
                "expected {\"op\": \"import\", \"snapshot\": {...}} (a snapshot from \"op\": \"export\")",
            )
        })?;
        let snapshot = serde_json::from_value(snapshot.clone())
            .map_err(|e| PluginError::invalid_request(format!("the snapshot is malformed: {e}")))?;
        let mut state = self.write();
        let (agents, weights) = state.model.import(snapshot).map_err(PluginError::invalid_request)?;
        Ok(json!({"agents": agents, "weights": weights, "outcomes": state.model.tick()}))
    }

    /// Reads an outcome from a `performance_learning` request, with what learning it needs:
    /// the agent's capabilities and the task's features and similarity to them.
    fn outcome(&self, data: &Value) -> Result<Outcome, PluginError> {
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
        let duration_ms = match data.get("duration_ms") {
            None | Some(Value::Null) => None,
            Some(v) => Some(v.as_f64().filter(|d| (0.0..=1e12).contains(d)).ok_or_else(|| {
                PluginError::invalid_request(format!("`duration_ms` must be a number from 0 to 1e12; {EXPECTED}"))
            })?),
        };
        let Some(known) = self.known_agent(self.host()?, agent) else {
            return Err(PluginError::invalid_request(format!(
                "no agent `{agent}` is registered"
            )));
        };
        let bm25 = {
            let state = self.read();
            let query = state.index.weigh(&task.words);
            state.index.score(agent, &query)
        };
        Ok(Outcome {
            agent: agent.to_owned(),
            capabilities: known.capabilities,
            features: task.features(),
            topic: task.topic(),
            similarity: prior_similarity(bm25),
            success,
            duration_ms,
        })
    }

    /// Learns an outcome in this process alone.
    fn learn(&self, data: &Value) -> Result<Value, PluginError> {
        let outcome = self.outcome(data)?;
        let learned = self.write().model.learn(
            &outcome.agent,
            &outcome.capabilities,
            &outcome.features,
            outcome.similarity,
            outcome.success,
            outcome.duration_ms,
        );
        Ok(outcome.answer(&learned))
    }

    fn profile(&self, data: &Value) -> Result<Value, PluginError> {
        const EXPECTED: &str = "expected {\"agent_id\": string, \"top\"?: 1..=100}";
        let agent = data
            .get("agent_id")
            .and_then(Value::as_str)
            .ok_or_else(|| PluginError::invalid_request(EXPECTED))?;
        let top = match data.get("top") {
            None | Some(Value::Null) => PROFILE_TOP,
            Some(n) => match n.as_u64() {
                Some(n @ 1..=100) => n as usize,
                _ => {
                    return Err(PluginError::invalid_request(format!(
                        "`top` must be an integer from 1 to 100; {EXPECTED}"
                    )));
                }
            },
        };
        let info = self
            .host()?
            .agent(agent)
            .ok_or_else(|| PluginError::invalid_request(format!("no agent `{agent}` is registered")))?;
        let state = self.read();
        let view = state.model.view(agent, &info.capabilities, top);
        let shared_log = self.shared.get().map(|log| {
            json!({
                "log": log.name(),
                "read_up_to": state.log.read_up_to,
                "missed": state.log.missed,
                "malformed": state.log.malformed,
                "resets": state.log.resets,
            })
        });
        let outcomes_learned = state.model.tick();
        drop(state);
        let topics: serde_json::Map<String, Value> = view
            .features
            .iter()
            .map(|f| {
                (
                    f.feature.clone(),
                    json!({"mean": f.mean, "sd": f.sd, "successes": f.successes, "failures": f.failures, "posterior_mean": f.posterior_mean}),
                )
            })
            .collect();
        Ok(json!({
            "agent_id": agent,
            "capabilities": info.capabilities,
            "status": info.status,
            "load": info.load,
            "capacity": info.capacity,
            "successes": view.successes,
            "failures": view.failures,
            "bias": {"mean": view.bias.mean, "sd": view.bias.sd, "posterior_mean": view.bias.posterior_mean},
            "topics": topics,
            "learned_features": view.learned_features,
            "model_bytes": view.model_bytes,
            "mean_duration_ms": view.mean_duration_ms,
            "tasks_recorded": view.tasks_recorded,
            "outcomes_learned": outcomes_learned,
            "shared_log": shared_log,
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
            let all = [
                ("similarity", weights.similarity),
                ("learning", weights.learning),
                ("load", weights.load),
            ];
            if let Some((key, w)) = all.iter().find(|(_, w)| !w.is_finite() || *w < 0.0) {
                return Err(PluginError::new(format!(
                    "{NAME} configuration: weights.{key} is {w}; weights must be non-negative and not all zero"
                )));
            }
            if all.iter().map(|(_, w)| w).sum::<f64>() <= 0.0 {
                return Err(PluginError::new(format!(
                    "{NAME} configuration: weights.similarity, weights.learning and weights.load are all zero; weights must be non-negative and not all zero"
                )));
            }
            *self.weights.write().unwrap_or_else(|p| p.into_inner()) = weights;
        }
        if let Some(seed) = config.seed {
            *self.rng.lock().unwrap_or_else(|p| p.into_inner()) = Rng::new(seed);
        }
        if let Some(learning) = config.learning {
            learning
                .check()
                .map_err(|e| PluginError::new(format!("{NAME} configuration: {e}")))?;
            if let Some(name) = &learning.shared_log {
                let _ = self.shared.set(SharedLog::new(name, learning.sync_interval_ms));
            }
            let mut state = self.write();
            if *state.model.config() != learning {
                state.model = Model::new(learning);
                state.log = LogPosition::default();
                // Slots start again with the new model: the cache goes with it, under the
                // state lock.
                self.capabilities.write().unwrap_or_else(|p| p.into_inner()).clear();
            }
        }
        let _ = self.host.set(host);
        Ok(())
    }

    async fn process_request(&self, request: IntegrationRequest) -> Result<IntegrationResponse, PluginError> {
        match request.capability.as_str() {
            "semantic_routing" => {
                if let Some(log) = self.shared.get() {
                    self.sync_if_due(log).await;
                }
                self.route(&request.data)
            }
            "performance_learning" => self.learning_op(&request.data).await.map(IntegrationResponse::ok),
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
            state.model.remove_agent(agent_id);
            // Under the state lock, so that the slot and the cache entry go together.
            self.capabilities
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .forget(agent_id);
        }
    }
}
