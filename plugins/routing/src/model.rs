//! What the router has learned: for each agent, how likely it is to succeed at a task, from the
//! words of the task.
//!
//! # The model
//!
//! Bayesian probit regression with a diagonal Gaussian posterior, updated one outcome at a time
//! by assumed density filtering: the model behind AdPredictor (Graepel et al., "Web-scale
//! Bayesian click-through rate prediction", ICML 2010). For agent `a` and a task with features
//! `f` (its words, or its explicit topic, plus its required capabilities):
//!
//! ```text
//! P(success) = Φ( (prior(a) + b_a + Σ_f x·u_{a,f} + Σ_{c ∈ caps(a)} Σ_f x'·v_{c,f}) / β )
//! ```
//!
//! - `b_a`, the agent's bias: how good it is at everything;
//! - `u_{a,f}`: how this agent does on tasks that say `f`;
//! - `v_{c,f}`: how agents declaring capability `c` do on tasks that say `f`, shared by every
//!   agent declaring `c`, so that what one database agent teaches (that "schema" goes with
//!   `database`) routes the next "schema" task to any database agent, phrased however;
//! - `prior(a)`, a fixed offset: the task's text similarity to the agent's capabilities,
//!   `SIMILARITY_PRIOR · (similarity - 1/2)`, so that a fresh fleet is routed by what the task
//!   says; plus the learned *affinity* of the task's words to the agent's capabilities (below);
//! - `x = 1/√k` for `k` features and `x' = 1/√(k·|caps|)`, so that long tasks and agents with
//!   many capabilities carry the same prior uncertainty as short ones.
//!
//! Every weight is a Gaussian (mean, variance). Routing draws the weights from their posteriors
//! (Thompson sampling): an agent with little history is uncertain and gets tried now and then,
//! a proven one wins, and no exploration rate needs tuning. The update after an outcome moves
//! each weight in proportion to its variance, so new words learn fast and established ones
//! slowly; words that appear as often in successes as in failures (noise) stay near zero.
//!
//! # Affinity: which words go with which capabilities' successes
//!
//! The regression alone learned slowly which field a word belongs to: a word that appears as
//! noise in another field's tasks gets credit for that field's successes, and the agents that
//! would refute it are rarely tried on it. So the model also counts, per word, the successful
//! tasks that said it, overall and for the agents declaring each capability, and scores a task
//! for a capability list by the mean pointwise mutual information `ln(P(w | c) / P(w))`, with
//! `P(w | c)` smoothed towards `P(w)` by `AFFINITY_PSEUDO` pseudo-counts. Noise words go with
//! every capability's successes alike and score about zero; a field's words score high for its
//! capabilities and low for the others. In the routing simulation (five fields whose
//! vocabulary is mostly undeclared, 3,000 tasks) this took the share of tasks given to an agent
//! of the right field from 0.90 to 0.99, and success from 0.74 to 0.83 (the oracle's: 0.89).
//!
//! # Drift
//!
//! A weight's variance grows back towards its prior by `prior / forget_after` for every outcome
//! the model learns (anywhere in the fleet) since the weight was last updated: a random walk.
//! What was learned long ago counts for less, an agent that got worse is pulled down within a
//! bounded number of tasks, and one not chosen for a while becomes uncertain enough to be tried
//! again (and found better, if it is).
//!
//! # Bounded memory
//!
//! Only weights that have been updated are stored. An agent keeps at most
//! `max_features_per_agent` word weights, and the shared capability-word weights number at
//! most `max_shared_features`; past the cap, a new weight replaces the least informative of
//! eight sampled (the one whose posterior is closest to its prior).
//!
//! Features are keyed by a 64-bit FNV-1a hash of the word; the word itself is kept once for
//! profiles and snapshots.
//!
//! Identifiers are not features: a word of at least four digits and no fewer digits than
//! letters (an item number, a year, a date), or of seven or more hex digits with a decimal one
//! among them (a hash), names one task rather than a kind of task, so it could never be
//! learned from, and each one would take up weights until evicted. The pipeline bench says
//! `item <n>` in every task: skipping the numbers took it from 21.8k to 33k-41k tasks/s with the
//! nine plugins (`cargo bench --bench pipeline`), the model's lock no longer held while new
//! weights are made and old ones evicted. Words with a few digits
//! (`k8s`, `utf8`, `404`, `sha256`) stay; four-digit numbers such as ports (`8080`) go, and a
//! UUID, which the tokenizer splits at its dashes, leaves its short middle groups.

use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

/// Observation noise (β²) of the probit link.
const BETA2: f64 = 1.0;
/// Prior variance of an agent's bias.
const PRIOR_BIAS: f64 = 0.5;
/// Prior variance of an agent's word weight (its input is `1/√k`).
const PRIOR_WORD: f64 = 0.5;
/// Prior variance of a capability-word weight (its input is `1/√(k·|caps|)`).
const PRIOR_SHARED: f64 = 0.5;
/// The similarity prior's strength: the offset between the best and worst text match.
const SIMILARITY_PRIOR: f64 = 3.0;
/// How far the affinity moves an agent's latent score, per unit of mean PMI (at most
/// [`AFFINITY_MAX`] either way). Fixed, not learned: a learned weight fitted the in-field and
/// out-of-field successes of the same agents less well in the routing simulation (0.94 of tasks
/// to the right field instead of 0.99).
const AFFINITY_WEIGHT: f64 = 4.0;
/// The largest shift the affinity makes.
const AFFINITY_MAX: f64 = 3.0;
/// Pseudo-counts of the background word distribution in each capability's (Dirichlet smoothing).
const AFFINITY_PSEUDO: f64 = 10.0;
/// How fast word and capability-word weights drift, relative to an agent's bias.
const FEATURE_DRIFT: f64 = 0.1;
/// The smallest variance a weight keeps, so that nothing is ever certain.
const MIN_VAR: f64 = 1e-4;
/// At most this many features per task are used (the first distinct ones).
pub(crate) const MAX_TASK_FEATURES: usize = 32;
/// How many held weights are sampled when one must be evicted.
const EVICTION_SAMPLE: usize = 8;

/// The learning section of the plugin's configuration.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct LearningConfig {
    /// Outcomes after which an untouched weight is back to its prior (0: never forget).
    pub(crate) forget_after: u64,
    /// Word weights kept per agent.
    pub(crate) max_features_per_agent: usize,
    /// Capability-word weights kept in all.
    pub(crate) max_shared_features: usize,
    /// The `atomic_updates` log the outcomes go through, shared by every process using it.
    pub(crate) shared_log: Option<String>,
    /// How often routing reads what other processes learned, at most.
    pub(crate) sync_interval_ms: u64,
}

impl Default for LearningConfig {
    fn default() -> Self {
        Self {
            forget_after: 1_000,
            max_features_per_agent: 256,
            max_shared_features: 65_536,
            shared_log: None,
            sync_interval_ms: 100,
        }
    }
}

impl LearningConfig {
    pub(crate) fn check(&self) -> Result<(), String> {
        if self.shared_log.as_deref().is_some_and(str::is_empty) {
            return Err("learning.shared_log must be a log name, or absent".into());
        }
        if self.sync_interval_ms > 60_000 {
            return Err("learning.sync_interval_ms must be at most 60000".into());
        }
        if self.max_features_per_agent == 0 || self.max_features_per_agent > 1 << 16 {
            return Err("learning.max_features_per_agent must be from 1 to 65536".into());
        }
        if self.max_shared_features == 0 || self.max_shared_features > 1 << 22 {
            return Err("learning.max_shared_features must be from 1 to 4194304".into());
        }
        Ok(())
    }
}

/// FNV-1a, 64 bits: the key of a feature.
pub(crate) fn feature_hash(word: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in word.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The key of a capability-word weight.
fn shared_key(capability: u64, word: u64) -> u64 {
    (capability ^ word.rotate_left(29)).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// A fast hasher for the router's own maps: keys that are hashes already (u64 features), agent
/// ids and pointers. Not resistant to crafted collisions (SipHash, the standard one, is), which
/// these keys do not need: feature keys are hashes, and agent ids are the host's to choose.
/// Eight bytes a round, with SplitMix64's finalizer.
#[derive(Default)]
pub(crate) struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn write(&mut self, bytes: &[u8]) {
        let mut h = self.0;
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            h = (h ^ u64::from_le_bytes(word))
                .wrapping_mul(0x9E37_79B9_7F4A_7C15)
                .rotate_left(29);
        }
        for b in chunks.remainder() {
            h = (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
        self.0 = h;
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0 ^ n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }
    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }
}

pub(crate) type KeyMap<K, V> = HashMap<K, V, BuildHasherDefault<KeyHasher>>;

/// A task as the model sees it: its features, hashed, with their text.
#[derive(Debug, Clone, Default)]
pub(crate) struct TaskFeatures {
    pub(crate) words: Vec<(u64, Arc<str>)>,
}

impl TaskFeatures {
    /// Features from their names (as [`TaskFeatures::names`] gives them): for outcomes read
    /// back from a shared log.
    pub(crate) fn from_names(names: &[String]) -> Self {
        let mut out: Vec<(u64, Arc<str>)> = Vec::new();
        for name in names.iter().take(MAX_TASK_FEATURES) {
            let h = feature_hash(name);
            if !out.iter().any(|(k, _)| *k == h) {
                out.push((h, name.as_str().into()));
            }
        }
        Self { words: out }
    }

    /// The features' names.
    pub(crate) fn names(&self) -> Vec<&str> {
        self.words.iter().map(|(_, w)| &**w).collect()
    }

    /// The features of a task: `topic:<topic>` alone when the caller named a topic (the caller
    /// said which tasks are alike), else its distinct words; plus `cap:<c>` for each required
    /// capability. At most [`MAX_TASK_FEATURES`].
    pub(crate) fn new(words: &[String], topic: Option<&str>, required: &[String]) -> Self {
        let mut out: Vec<(u64, Arc<str>)> = Vec::new();
        let mut push = |word: String| {
            if out.len() < MAX_TASK_FEATURES {
                let h = feature_hash(&word);
                if !out.iter().any(|(k, _)| *k == h) {
                    out.push((h, word.into()));
                }
            }
        };
        match topic {
            Some(topic) => push(format!("topic:{topic}")),
            None => words.iter().filter(|w| !is_identifier(w)).for_each(|w| push(w.clone())),
        }
        required.iter().for_each(|c| push(format!("cap:{c}")));
        Self { words: out }
    }
}

/// Whether a word names one thing rather than a kind of thing (see the module docs): at least
/// four digits and no fewer digits than letters, or seven or more hex digits with at least one
/// decimal digit among them (a hash).
fn is_identifier(word: &str) -> bool {
    let digits = word.chars().filter(char::is_ascii_digit).count();
    let numeric = digits >= 4 && digits >= word.chars().count() - digits;
    let hash = digits >= 1 && word.len() >= 7 && word.chars().all(|c| c.is_ascii_hexdigit());
    numeric || hash
}

/// One weight's posterior, and what it has seen.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Cell {
    mean: f32,
    var: f32,
    /// The model's tick when last updated.
    last: u64,
    successes: u32,
    failures: u32,
}

impl Cell {
    fn prior(var: f64, tick: u64) -> Self {
        Self {
            mean: 0.0,
            var: var as f32,
            last: tick,
            successes: 0,
            failures: 0,
        }
    }

    /// The variance now: grown back towards the prior since the last update.
    fn var_at(&self, tick: u64, prior: Prior) -> f64 {
        (f64::from(self.var) + prior.drift * prior.var * tick.saturating_sub(self.last) as f64).min(prior.var)
    }

    /// How far the posterior is from its prior: what evicting it would lose.
    fn information(&self, tick: u64, prior: Prior) -> f64 {
        f64::from(self.mean).powi(2) / prior.var + (1.0 - self.var_at(tick, prior) / prior.var)
    }
}

/// A kind of weight's prior variance, and the share of it that comes back per outcome learned
/// elsewhere (drift).
#[derive(Debug, Clone, Copy)]
struct Prior {
    var: f64,
    drift: f64,
}

/// What the model keeps for one agent.
#[derive(Debug, Clone)]
struct AgentModel {
    id: Arc<str>,
    bias: Cell,
    /// The word features it holds a weight for (keys into `Model::words`).
    held: Vec<u64>,
    successes: u64,
    failures: u64,
    duration_sum_ms: f64,
    timed: u64,
}

impl AgentModel {
    /// An agent nothing has been learned about: its bias at the prior.
    fn fresh(id: Arc<str>, bias_var: f64, tick: u64) -> Self {
        Self {
            id,
            bias: Cell::prior(bias_var, tick),
            held: Vec::new(),
            successes: 0,
            failures: 0,
            duration_sum_ms: 0.0,
            timed: 0,
        }
    }
}

/// A capability-word weight.
#[derive(Debug, Clone)]
struct SharedCell {
    cell: Cell,
    capability: Arc<str>,
    word: Arc<str>,
    /// Its position in `Model::shared_keys`.
    index: usize,
}

/// The learned model of the whole fleet.
#[derive(Debug)]
pub(crate) struct Model {
    config: LearningConfig,
    /// The priors of the three kinds of weight, with their drift.
    bias_prior: Prior,
    word_prior: Prior,
    shared_prior: Prior,
    /// Outcomes learned.
    tick: u64,
    slots: Vec<Option<AgentModel>>,
    free_slots: Vec<u32>,
    by_id: HashMap<Arc<str>, u32>,
    /// Word feature -> (its text, per-agent weights by slot).
    words: KeyMap<u64, (Arc<str>, KeyMap<u32, Cell>)>,
    shared: KeyMap<u64, SharedCell>,
    shared_keys: Vec<u64>,
    /// Successful tasks that said each word (at most `max_shared_features` words counted).
    word_successes: KeyMap<u64, (Arc<str>, u32)>,
    /// Word occurrences in the successful tasks of agents declaring each capability.
    capability_successes: KeyMap<u64, (Arc<str>, u64)>,
    /// Word occurrences in all successful tasks.
    total_successes: u64,
}

/// The model's estimate of an agent's latent score for one task: a Gaussian, offset included.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Estimate {
    pub(crate) mean: f64,
    pub(crate) var: f64,
}

impl Estimate {
    /// Predicted probability of success (the posterior predictive).
    pub(crate) fn success(&self) -> f64 {
        norm_cdf(self.mean / (BETA2 + self.var).sqrt())
    }
}

/// Per-task sums gathered once for a routing call: for each slot, the word weights' mean and
/// variance sums and how many of the task's words the agent has a weight for.
pub(crate) struct Prepared<'a> {
    model: &'a Model,
    features: &'a TaskFeatures,
    x: f64,
    sums: Vec<(f64, f64, u32)>,
}

/// A learned feature, for profiles.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct FeatureView {
    pub(crate) feature: String,
    pub(crate) mean: f64,
    pub(crate) sd: f64,
    pub(crate) successes: u32,
    pub(crate) failures: u32,
    /// Predicted success of a task that says only this.
    pub(crate) posterior_mean: f64,
}

/// What the model holds for one agent, for profiles.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct AgentView {
    pub(crate) successes: u64,
    pub(crate) failures: u64,
    pub(crate) bias: FeatureView,
    pub(crate) features: Vec<FeatureView>,
    pub(crate) learned_features: usize,
    pub(crate) model_bytes: usize,
    pub(crate) mean_duration_ms: Option<f64>,
    pub(crate) tasks_recorded: u64,
}

/// The result of learning one outcome.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Learned {
    pub(crate) before: f64,
    pub(crate) after: f64,
    pub(crate) successes: u64,
    pub(crate) failures: u64,
    pub(crate) mean_duration_ms: Option<f64>,
}

/// The similarity prior's offset for a similarity in [0, 1].
pub(crate) fn similarity_offset(similarity: f64) -> f64 {
    SIMILARITY_PRIOR * (similarity.clamp(0.0, 1.0) - 0.5)
}

impl Model {
    pub(crate) fn new(config: LearningConfig) -> Self {
        // An agent's overall skill (its bias) is what drifts; what words mean drifts ten times
        // more slowly, so that agents long out of a field are not tried there again and again.
        let drift = if config.forget_after == 0 {
            0.0
        } else {
            1.0 / config.forget_after as f64
        };
        Self {
            bias_prior: Prior { var: PRIOR_BIAS, drift },
            word_prior: Prior {
                var: PRIOR_WORD,
                drift: drift * FEATURE_DRIFT,
            },
            shared_prior: Prior {
                var: PRIOR_SHARED,
                drift: drift * FEATURE_DRIFT,
            },
            config,
            tick: 0,
            slots: Vec::new(),
            free_slots: Vec::new(),
            by_id: HashMap::new(),
            words: KeyMap::default(),
            shared: KeyMap::default(),
            shared_keys: Vec::new(),
            word_successes: KeyMap::default(),
            capability_successes: KeyMap::default(),
            total_successes: 0,
        }
    }

    pub(crate) fn config(&self) -> &LearningConfig {
        &self.config
    }

    /// Outcomes learned so far.
    pub(crate) fn tick(&self) -> u64 {
        self.tick
    }

    /// The agent's slot, given one if it has none.
    pub(crate) fn slot_for(&mut self, id: &str) -> u32 {
        if let Some(slot) = self.by_id.get(id) {
            return *slot;
        }
        let id: Arc<str> = id.into();
        let agent = AgentModel::fresh(Arc::clone(&id), self.bias_prior.var, self.tick);
        let slot = match self.free_slots.pop() {
            Some(slot) => {
                self.slots[slot as usize] = Some(agent);
                slot
            }
            None => {
                self.slots.push(Some(agent));
                (self.slots.len() - 1) as u32
            }
        };
        self.by_id.insert(id, slot);
        slot
    }

    pub(crate) fn slot_of(&self, id: &str) -> Option<u32> {
        self.by_id.get(id).copied()
    }

    /// Forgets an agent (deregistered): its slot is reused.
    pub(crate) fn remove_agent(&mut self, id: &str) {
        let Some(slot) = self.by_id.remove(id) else { return };
        if let Some(agent) = self.slots[slot as usize].take() {
            for key in agent.held {
                self.drop_word_cell(key, slot);
            }
        }
        self.free_slots.push(slot);
    }

    fn drop_word_cell(&mut self, key: u64, slot: u32) {
        if let Some((_, cells)) = self.words.get_mut(&key) {
            cells.remove(&slot);
            if cells.is_empty() {
                self.words.remove(&key);
            }
        }
    }

    fn agent(&self, slot: u32) -> Option<&AgentModel> {
        self.slots.get(slot as usize).and_then(Option::as_ref)
    }

    /// Gathers the task's word weights for every agent, once per routing call.
    pub(crate) fn prepare<'a>(&'a self, features: &'a TaskFeatures) -> Prepared<'a> {
        let mut sums = vec![(0.0, 0.0, 0u32); self.slots.len()];
        for (key, _) in &features.words {
            if let Some((_, cells)) = self.words.get(key) {
                for (slot, cell) in cells {
                    let entry = &mut sums[*slot as usize];
                    entry.0 += f64::from(cell.mean);
                    entry.1 += cell.var_at(self.tick, self.word_prior);
                    entry.2 += 1;
                }
            }
        }
        Prepared {
            model: self,
            x: input_weight(features.words.len()),
            features,
            sums,
        }
    }

    /// The capability-word part of the estimate for an agent with these capabilities (the same
    /// for every agent with the same list, so callers compute it once per distinct list).
    pub(crate) fn shared_part(&self, features: &TaskFeatures, capabilities: &[String]) -> Estimate {
        let k = features.words.len();
        if k == 0 || capabilities.is_empty() {
            return Estimate { mean: 0.0, var: 0.0 };
        }
        let x = input_weight(k * capabilities.len());
        let mut mean = 0.0;
        let mut var = 0.0;
        for capability in capabilities {
            let c = feature_hash(capability);
            for (w, _) in &features.words {
                match self.shared.get(&shared_key(c, *w)) {
                    Some(s) => {
                        mean += x * f64::from(s.cell.mean);
                        var += x * x * s.cell.var_at(self.tick, self.shared_prior);
                    }
                    None => var += x * x * self.shared_prior.var,
                }
            }
        }
        Estimate { mean, var }
    }
}

impl Model {
    /// How much more often the task's words appear in the successes of agents declaring these
    /// capabilities than in successes overall: the mean over words of the best capability's
    /// `ln(P(w | c succeeded) / P(w | success))`, with `P(w | c)` smoothed towards `P(w)`. Words
    /// that go with every capability's successes alike (noise) score about zero; words a
    /// capability has succeeded on far more than others score high; a capability with many
    /// successes and none on the word scores low. Returned as a shift of the latent score:
    /// times [`AFFINITY_WEIGHT`], within ±[`AFFINITY_MAX`].
    pub(crate) fn affinity(&self, features: &TaskFeatures, capabilities: &[String]) -> f64 {
        if capabilities.is_empty() || features.words.is_empty() || self.total_successes == 0 {
            return 0.0;
        }
        let vocabulary = self.word_successes.len().max(1) as f64;
        let total = self.total_successes as f64;
        let alpha = AFFINITY_PSEUDO;
        let caps: Vec<(u64, f64)> = capabilities
            .iter()
            .map(|c| {
                let key = feature_hash(c);
                (key, self.capability_successes.get(&key).map_or(0.0, |(_, n)| *n as f64))
            })
            .collect();
        let mut sum = 0.0;
        let mut n = 0u32;
        for (w, _) in &features.words {
            let Some((_, g)) = self.word_successes.get(w) else {
                continue;
            };
            let background = (f64::from(*g) + 1.0) / (total + vocabulary);
            // The agent's best capability for the word: its other capabilities say nothing
            // about this word, and averaging them in would rank agents by what else they do.
            let best = caps
                .iter()
                .map(|(c, successes)| {
                    let s = self
                        .shared
                        .get(&shared_key(*c, *w))
                        .map_or(0.0, |cell| f64::from(cell.cell.successes));
                    ((s + alpha * background) / (successes + alpha) / background).ln()
                })
                .fold(f64::NEG_INFINITY, f64::max);
            sum += best;
            n += 1;
        }
        if n == 0 {
            return 0.0;
        }
        (AFFINITY_WEIGHT * sum / f64::from(n)).clamp(-AFFINITY_MAX, AFFINITY_MAX)
    }

    /// Counts a success's words towards the affinity.
    fn count_success(&mut self, features: &TaskFeatures, capabilities: &[String]) {
        let k = features.words.len() as u64;
        for (w, word) in &features.words {
            if let Some((_, n)) = self.word_successes.get_mut(w) {
                *n = n.saturating_add(1);
            } else if self.word_successes.len() < self.config.max_shared_features {
                self.word_successes.insert(*w, (Arc::clone(word), 1));
            }
        }
        self.total_successes = self.total_successes.saturating_add(k);
        for c in capabilities {
            let entry = self
                .capability_successes
                .entry(feature_hash(c))
                .or_insert_with(|| (c.as_str().into(), 0));
            entry.1 = entry.1.saturating_add(k);
        }
    }
}

impl Prepared<'_> {
    /// The estimate for the agent in `slot` (None: an agent the model has not seen), given the
    /// shared part for its capabilities and its text similarity.
    pub(crate) fn estimate(&self, slot: Option<u32>, shared: Estimate, similarity: f64) -> Estimate {
        let model = self.model;
        let k = self.features.words.len();
        let x2 = self.x * self.x;
        let (bias_mean, bias_var, word_mean, word_var, known) = match slot.and_then(|s| model.agent(s).map(|a| (s, a)))
        {
            Some((slot, agent)) => {
                let (m, v, n) = self.sums[slot as usize];
                (
                    f64::from(agent.bias.mean),
                    agent.bias.var_at(model.tick, model.bias_prior),
                    m,
                    v,
                    n as usize,
                )
            }
            None => (0.0, model.bias_prior.var, 0.0, 0.0, 0),
        };
        Estimate {
            mean: similarity_offset(similarity) + bias_mean + self.x * word_mean + shared.mean,
            var: bias_var + x2 * (word_var + (k - known) as f64 * model.word_prior.var) + shared.var,
        }
    }
}

/// The input weight of each of `n` features: `1/√n` (1 for none, unused).
fn input_weight(n: usize) -> f64 {
    if n == 0 { 1.0 } else { 1.0 / (n as f64).sqrt() }
}

/// Which weight an active cell of an update is.
#[derive(Clone, Copy)]
enum Target {
    Bias,
    Word(u64),
    Shared(u64),
}

impl Model {
    /// Learns one outcome of `agent` (with `capabilities`) on a task, whose text similarity to
    /// the agent was `similarity`.
    pub(crate) fn learn(
        &mut self,
        agent: &str,
        capabilities: &[String],
        features: &TaskFeatures,
        similarity: f64,
        success: bool,
        duration_ms: Option<f64>,
    ) -> Learned {
        self.tick = self.tick.saturating_add(1);
        let tick = self.tick;
        let slot = self.slot_for(agent);
        let k = features.words.len();
        let x_word = input_weight(k);
        let x_shared = input_weight(k * capabilities.len().max(1));

        // The active weights, created at their prior when new (within the caps).
        let mut active: Vec<(Target, f64)> = Vec::with_capacity(1 + k * (1 + capabilities.len()));
        active.push((Target::Bias, 1.0));
        for (key, word) in &features.words {
            self.ensure_word_cell(slot, *key, word, &features.words);
            active.push((Target::Word(*key), x_word));
        }
        let shared: Vec<(u64, &String, &Arc<str>)> = capabilities
            .iter()
            .flat_map(|capability| {
                let c = feature_hash(capability);
                features
                    .words
                    .iter()
                    .map(move |(key, word)| (shared_key(c, *key), capability, word))
            })
            .collect();
        let shared_keys: Vec<u64> = shared.iter().map(|(key, _, _)| *key).collect();
        for (key, capability, word) in shared {
            self.ensure_shared_cell(key, capability, word, &shared_keys);
            active.push((Target::Shared(key), x_shared));
        }

        // The current posterior of the latent score.
        let offset = similarity_offset(similarity) + self.affinity(features, capabilities);
        let mut mean = offset;
        let mut var_sum = 0.0;
        let mut vars: Vec<f64> = Vec::with_capacity(active.len());
        for (target, x) in &active {
            let (cell, prior) = self.cell(slot, *target);
            let v = cell.var_at(tick, prior);
            mean += x * f64::from(cell.mean);
            var_sum += x * x * v;
            vars.push(v);
        }
        let before = Estimate { mean, var: var_sum }.success();

        // Assumed density filtering for the probit likelihood.
        let y = if success { 1.0 } else { -1.0 };
        let total = BETA2 + var_sum;
        let sd = total.sqrt();
        let t = y * mean / sd;
        let v = truncated_mean(t);
        let w = (v * (v + t)).clamp(0.0, 1.0);
        let mut after_mean = offset;
        let mut after_var = 0.0;
        for ((target, x), var) in active.iter().zip(vars) {
            let cell = self.cell_mut(slot, *target);
            let new_mean = f64::from(cell.mean) + y * x * var / sd * v;
            let new_var = (var * (1.0 - x * x * var / total * w)).max(MIN_VAR);
            cell.mean = new_mean as f32;
            cell.var = new_var as f32;
            cell.last = tick;
            if success {
                cell.successes = cell.successes.saturating_add(1);
            } else {
                cell.failures = cell.failures.saturating_add(1);
            }
            after_mean += x * new_mean;
            after_var += x * x * new_var;
        }
        if success {
            self.count_success(features, capabilities);
        }
        let agent = self.slots[slot as usize].as_mut().expect("the slot was just made");
        if success {
            agent.successes = agent.successes.saturating_add(1);
        } else {
            agent.failures = agent.failures.saturating_add(1);
        }
        if let Some(d) = duration_ms {
            agent.duration_sum_ms += d;
            agent.timed = agent.timed.saturating_add(1);
        }
        Learned {
            before,
            after: Estimate {
                mean: after_mean,
                var: after_var,
            }
            .success(),
            successes: agent.successes,
            failures: agent.failures,
            mean_duration_ms: (agent.timed > 0).then(|| agent.duration_sum_ms / agent.timed as f64),
        }
    }

    fn cell(&self, slot: u32, target: Target) -> (Cell, Prior) {
        match target {
            Target::Bias => (
                self.agent(slot)
                    .map_or(Cell::prior(self.bias_prior.var, self.tick), |a| a.bias),
                self.bias_prior,
            ),
            Target::Word(key) => (
                self.words
                    .get(&key)
                    .and_then(|(_, cells)| cells.get(&slot))
                    .copied()
                    .unwrap_or(Cell::prior(self.word_prior.var, self.tick)),
                self.word_prior,
            ),
            Target::Shared(key) => (
                self.shared
                    .get(&key)
                    .map_or(Cell::prior(self.shared_prior.var, self.tick), |s| s.cell),
                self.shared_prior,
            ),
        }
    }

    fn cell_mut(&mut self, slot: u32, target: Target) -> &mut Cell {
        match target {
            Target::Bias => &mut self.slots[slot as usize].as_mut().expect("a live slot").bias,
            Target::Word(key) => self
                .words
                .get_mut(&key)
                .and_then(|(_, cells)| cells.get_mut(&slot))
                .expect("made by ensure_word_cell"),
            Target::Shared(key) => &mut self.shared.get_mut(&key).expect("made by ensure_shared_cell").cell,
        }
    }

    /// Makes sure the agent holds a weight for `key`, evicting its least informative sampled
    /// weight (never one of `keep`) when it is at its cap.
    fn ensure_word_cell(&mut self, slot: u32, key: u64, word: &Arc<str>, keep: &[(u64, Arc<str>)]) {
        let tick = self.tick;
        let prior = self.word_prior.var;
        let entry = self
            .words
            .entry(key)
            .or_insert_with(|| (Arc::clone(word), KeyMap::default()));
        if entry.1.contains_key(&slot) {
            return;
        }
        entry.1.insert(slot, Cell::prior(prior, tick));
        let cap = self.config.max_features_per_agent;
        let held = {
            let agent = self.slots[slot as usize].as_mut().expect("a live slot");
            agent.held.push(key);
            agent.held.len()
        };
        if held > cap {
            let victim = {
                let agent = self.slots[slot as usize].as_ref().expect("a live slot");
                self.least_informative(tick, agent.held.len(), |i| {
                    let k = agent.held[i];
                    if keep.iter().any(|(kk, _)| *kk == k) {
                        return None;
                    }
                    self.words
                        .get(&k)
                        .and_then(|(_, cells)| cells.get(&slot))
                        .map(|c| c.information(tick, self.word_prior))
                })
            };
            if let Some(i) = victim {
                let agent = self.slots[slot as usize].as_mut().expect("a live slot");
                let k = agent.held.swap_remove(i);
                self.drop_word_cell(k, slot);
            }
        }
    }

    /// Makes sure the shared weight `key` exists, evicting the least informative sampled one
    /// (never one of `keep`) when the table is at its cap.
    fn ensure_shared_cell(&mut self, key: u64, capability: &str, word: &Arc<str>, keep: &[u64]) {
        if self.shared.contains_key(&key) {
            return;
        }
        let tick = self.tick;
        if self.shared.len() >= self.config.max_shared_features {
            let victim = self.least_informative(tick, self.shared_keys.len(), |i| {
                let k = self.shared_keys[i];
                if keep.contains(&k) {
                    return None;
                }
                self.shared.get(&k).map(|s| s.cell.information(tick, self.shared_prior))
            });
            if let Some(i) = victim {
                self.remove_shared_at(i);
            }
        }
        self.shared_keys.push(key);
        self.shared.insert(
            key,
            SharedCell {
                cell: Cell::prior(self.shared_prior.var, tick),
                capability: capability.into(),
                word: Arc::clone(word),
                index: self.shared_keys.len() - 1,
            },
        );
    }

    fn remove_shared_at(&mut self, i: usize) {
        let key = self.shared_keys.swap_remove(i);
        self.shared.remove(&key);
        if let Some(moved) = self.shared_keys.get(i).copied() {
            if let Some(s) = self.shared.get_mut(&moved) {
                s.index = i;
            }
        }
    }

    /// Of up to [`EVICTION_SAMPLE`] positions in `0..len` (spread by the tick), the one whose
    /// weight `information` rates lowest (`None` from it: not to be evicted).
    fn least_informative(&self, tick: u64, len: usize, information: impl Fn(usize) -> Option<f64>) -> Option<usize> {
        if len == 0 {
            return None;
        }
        let mut h = tick.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        (0..EVICTION_SAMPLE.min(len))
            .filter_map(|_| {
                h ^= h >> 29;
                h = h.wrapping_mul(0xBF58_476D_1CE4_E5B9);
                let i = (h % len as u64) as usize;
                information(i).map(|score| (i, score))
            })
            .min_by(|a, b| a.1.total_cmp(&b.1))
            .map(|(i, _)| i)
            // Every sampled position was one not to evict: the first that may be, so that the
            // cap holds.
            .or_else(|| (0..len).find(|i| information(*i).is_some()))
    }

    /// What the model holds for an agent: its bias, its strongest features (by how far they
    /// move its success, either way) and the shared weights of its capabilities.
    pub(crate) fn view(&self, id: &str, capabilities: &[String], top: usize) -> AgentView {
        let tick = self.tick;
        let agent = self.slot_of(id).and_then(|s| self.agent(s).map(|a| (s, a)));
        let bias = agent.map_or(Cell::prior(self.bias_prior.var, tick), |(_, a)| a.bias);
        let bias_var = bias.var_at(tick, self.bias_prior);
        let view = |feature: String, cell: &Cell, prior: Prior| {
            let var = cell.var_at(tick, prior);
            FeatureView {
                feature,
                mean: f64::from(cell.mean),
                sd: var.sqrt(),
                successes: cell.successes,
                failures: cell.failures,
                posterior_mean: Estimate {
                    mean: f64::from(bias.mean) + f64::from(cell.mean),
                    var: bias_var + var,
                }
                .success(),
            }
        };
        let mut features: Vec<FeatureView> = Vec::new();
        if let Some((slot, a)) = agent {
            for key in &a.held {
                if let Some((word, cells)) = self.words.get(key) {
                    if let Some(cell) = cells.get(&slot) {
                        features.push(view(word.to_string(), cell, self.word_prior));
                    }
                }
            }
        }
        let capability_keys: Vec<&str> = capabilities.iter().map(String::as_str).collect();
        for s in self.shared.values() {
            if capability_keys.contains(&&*s.capability) {
                features.push(view(format!("{}×{}", s.capability, s.word), &s.cell, self.shared_prior));
            }
        }
        let learned_features = agent.map_or(0, |(_, a)| a.held.len());
        features.sort_by(|a, b| {
            b.mean
                .abs()
                .total_cmp(&a.mean.abs())
                .then_with(|| a.feature.cmp(&b.feature))
        });
        features.truncate(top);
        let (successes, failures, mean_duration_ms, tasks_recorded) = agent.map_or((0, 0, None, 0), |(_, a)| {
            (
                a.successes,
                a.failures,
                (a.timed > 0).then(|| a.duration_sum_ms / a.timed as f64),
                a.timed,
            )
        });
        AgentView {
            successes,
            failures,
            bias: view("bias".into(), &bias, self.bias_prior),
            features,
            learned_features,
            model_bytes: agent.map_or(0, |(_, a)| Self::agent_bytes(a)),
            mean_duration_ms,
            tasks_recorded,
        }
    }

    /// The memory an agent's own weights take: its record, and for each held weight the cell,
    /// its key in the word's table (with the table's control byte) and its entry in `held`.
    fn agent_bytes(agent: &AgentModel) -> usize {
        std::mem::size_of::<AgentModel>()
            + agent.id.len()
            + agent.held.capacity() * std::mem::size_of::<u64>()
            + agent.held.len() * (std::mem::size_of::<u32>() + std::mem::size_of::<Cell>() + 1)
    }
}

/// `φ(t) / Φ(t)`: the mean shift of a truncated Gaussian, stable far in the tail.
fn truncated_mean(t: f64) -> f64 {
    if t < -30.0 {
        return -t;
    }
    let cdf = norm_cdf(t);
    if cdf <= f64::MIN_POSITIVE {
        -t
    } else {
        norm_pdf(t) / cdf
    }
}

fn norm_pdf(t: f64) -> f64 {
    (-0.5 * t * t).exp() / (2.0 * std::f64::consts::PI).sqrt()
}

/// Φ, the standard normal CDF, through erfc.
pub(crate) fn norm_cdf(t: f64) -> f64 {
    0.5 * erfc(-t / std::f64::consts::SQRT_2)
}

/// erfc, with fractional error under 1.2e-7 everywhere (Numerical Recipes' `erfcc`, a Chebyshev
/// fit): relative, so that tail probabilities stay accurate.
fn erfc(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let poly = -z * z - 1.265_512_23
        + t * (1.000_023_68
            + t * (0.374_091_96
                + t * (0.096_784_18
                    + t * (-0.186_288_06
                        + t * (0.278_868_07
                            + t * (-1.135_203_98 + t * (1.488_515_87 + t * (-0.822_152_23 + t * 0.170_872_77))))))));
    let r = t * poly.exp();
    if x >= 0.0 { r } else { 2.0 - r }
}

/// Φ from a table (linear interpolation over [-8, 8], error under 1e-5): for the many
/// comparisons of a routing call.
pub(crate) fn norm_cdf_fast(t: f64) -> f64 {
    const N: usize = 2048;
    const SPAN: f64 = 8.0;
    static TABLE: std::sync::OnceLock<Vec<f64>> = std::sync::OnceLock::new();
    let table = TABLE.get_or_init(|| {
        (0..=N)
            .map(|i| norm_cdf(-SPAN + 2.0 * SPAN * i as f64 / N as f64))
            .collect()
    });
    if t.is_nan() {
        return 0.5;
    }
    if t <= -SPAN {
        return 0.0;
    }
    if t >= SPAN {
        return 1.0;
    }
    let pos = (t + SPAN) / (2.0 * SPAN) * N as f64;
    let i = pos as usize;
    let frac = pos - i as f64;
    table[i] + (table[(i + 1).min(N)] - table[i]) * frac
}

/// The latent-score scale of a sampled weight sum: `Φ(t / β)`.
pub(crate) fn sampled_success(t: f64) -> f64 {
    norm_cdf_fast(t / BETA2.sqrt())
}

// ---------------------------------------------------------------------------------------------
// Snapshots

/// The format tag of a snapshot.
pub(crate) const SNAPSHOT_FORMAT: &str = "orchestrator-routing-model";
/// The snapshot version this build writes and reads.
pub(crate) const SNAPSHOT_VERSION: u32 = 1;

/// The largest weight mean a snapshot may hold: the latent scale is a few units, so anything
/// near this is a damaged or forged snapshot (and beyond f32's range would poison the model).
const MAX_MEAN: f64 = 1e6;
/// The largest outcome count a snapshot may hold, so that counting on from it cannot overflow.
const MAX_TICK: u64 = 1 << 53;

/// A weight in a snapshot: `[mean, variance, last tick, successes, failures]`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct CellRecord(f64, f64, u64, u32, u32);

impl CellRecord {
    fn of(cell: &Cell) -> Self {
        Self(
            f64::from(cell.mean),
            f64::from(cell.var),
            cell.last,
            cell.successes,
            cell.failures,
        )
    }

    fn cell(self, prior: f64, tick: u64, what: &str) -> Result<Cell, String> {
        let Self(mean, var, last, successes, failures) = self;
        if !mean.is_finite() || mean.abs() > MAX_MEAN || !var.is_finite() || var <= 0.0 || var > prior * 1.000_001 {
            return Err(format!(
                "{what}: mean must be within ±{MAX_MEAN} and variance in (0, {prior}], found [{mean}, {var}]"
            ));
        }
        if last > tick {
            return Err(format!("{what}: last tick {last} is after the snapshot's tick {tick}"));
        }
        Ok(Cell {
            mean: mean as f32,
            var: var.max(MIN_VAR) as f32,
            last,
            successes,
            failures,
        })
    }
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct AgentRecord {
    bias: CellRecord,
    words: std::collections::BTreeMap<String, CellRecord>,
    successes: u64,
    failures: u64,
    duration_sum_ms: f64,
    timed: u64,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SharedRecord {
    capability: String,
    word: String,
    cell: CellRecord,
}

/// Everything the model has learned, as JSON.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Snapshot {
    format: String,
    version: u32,
    tick: u64,
    agents: std::collections::BTreeMap<String, AgentRecord>,
    shared: Vec<SharedRecord>,
    /// The affinity's counts: successful tasks per word, word occurrences in successes per
    /// capability, and in all successes.
    word_successes: std::collections::BTreeMap<String, u32>,
    capability_successes: std::collections::BTreeMap<String, u64>,
    total_successes: u64,
}

impl Model {
    pub(crate) fn export(&self) -> Snapshot {
        let agents = self
            .slots
            .iter()
            .flatten()
            .map(|a| {
                let slot = self.by_id[&a.id];
                let words = a
                    .held
                    .iter()
                    .filter_map(|key| {
                        let (word, cells) = self.words.get(key)?;
                        Some((word.to_string(), CellRecord::of(cells.get(&slot)?)))
                    })
                    .collect();
                let record = AgentRecord {
                    bias: CellRecord::of(&a.bias),
                    words,
                    successes: a.successes,
                    failures: a.failures,
                    duration_sum_ms: a.duration_sum_ms,
                    timed: a.timed,
                };
                (a.id.to_string(), record)
            })
            .collect();
        let mut shared: Vec<SharedRecord> = self
            .shared
            .values()
            .map(|s| SharedRecord {
                capability: s.capability.to_string(),
                word: s.word.to_string(),
                cell: CellRecord::of(&s.cell),
            })
            .collect();
        shared.sort_by(|a, b| (&a.capability, &a.word).cmp(&(&b.capability, &b.word)));
        Snapshot {
            format: SNAPSHOT_FORMAT.into(),
            version: SNAPSHOT_VERSION,
            tick: self.tick,
            agents,
            shared,
            word_successes: self
                .word_successes
                .values()
                .map(|(word, n)| (word.to_string(), *n))
                .collect(),
            capability_successes: self
                .capability_successes
                .values()
                .map(|(capability, n)| (capability.to_string(), *n))
                .collect(),
            total_successes: self.total_successes,
        }
    }

    /// Replaces everything learned with `snapshot`, keeping the slots of agents already known
    /// (agents known but absent from the snapshot start again from the prior). Nothing changes
    /// when the snapshot is refused.
    pub(crate) fn import(&mut self, snapshot: Snapshot) -> Result<(usize, usize), String> {
        if snapshot.format != SNAPSHOT_FORMAT || snapshot.version != SNAPSHOT_VERSION {
            return Err(format!(
                "not a routing model snapshot this version reads: expected format `{SNAPSHOT_FORMAT}` version {SNAPSHOT_VERSION}, found `{}` version {}",
                snapshot.format, snapshot.version
            ));
        }
        let tick = snapshot.tick;
        if tick > MAX_TICK || snapshot.total_successes > MAX_TICK {
            return Err(format!(
                "tick and total_successes must be at most 2^53, found {tick} and {}",
                snapshot.total_successes
            ));
        }
        let mut fresh = Model::new(self.config.clone());
        fresh.tick = tick;
        // Known agents keep their slots: routing caches them.
        fresh.slots = vec![None; self.slots.len()];
        for (id, slot) in &self.by_id {
            fresh.by_id.insert(Arc::clone(id), *slot);
            fresh.slots[*slot as usize] = Some(AgentModel::fresh(Arc::clone(id), fresh.bias_prior.var, tick));
        }
        fresh.free_slots = (0..fresh.slots.len() as u32)
            .filter(|s| fresh.slots[*s as usize].is_none())
            .collect();
        let mut weights = 0;
        for (id, record) in snapshot.agents {
            // An agent holds at most its cap, or one task's features when the cap is smaller
            // (the weights of the task being learned are never evicted).
            let most = self.config.max_features_per_agent.max(MAX_TASK_FEATURES);
            if record.words.len() > most {
                return Err(format!(
                    "agent `{id}` has {} word weights; learning.max_features_per_agent is {}",
                    record.words.len(),
                    self.config.max_features_per_agent
                ));
            }
            if record.successes > MAX_TICK || record.failures > MAX_TICK || record.timed > MAX_TICK {
                return Err(format!(
                    "agent `{id}`: successes, failures and timed must be at most 2^53"
                ));
            }
            if !record.duration_sum_ms.is_finite() || record.duration_sum_ms < 0.0 {
                return Err(format!("agent `{id}`: duration_sum_ms must be a non-negative number"));
            }
            let slot = fresh.slot_for(&id);
            let bias = record
                .bias
                .cell(fresh.bias_prior.var, tick, &format!("agent `{id}` bias"))?;
            for (word, cell) in record.words {
                let cell = cell.cell(fresh.word_prior.var, tick, &format!("agent `{id}` word `{word}`"))?;
                let key = feature_hash(&word);
                fresh
                    .words
                    .entry(key)
                    .or_insert_with(|| (word.as_str().into(), KeyMap::default()))
                    .1
                    .insert(slot, cell);
                fresh.slots[slot as usize].as_mut().expect("live").held.push(key);
                weights += 1;
            }
            let agent = fresh.slots[slot as usize].as_mut().expect("live");
            agent.bias = bias;
            agent.successes = record.successes;
            agent.failures = record.failures;
            agent.duration_sum_ms = record.duration_sum_ms;
            agent.timed = record.timed;
        }
        if snapshot.shared.len() > self.config.max_shared_features {
            return Err(format!(
                "{} shared weights; learning.max_shared_features is {}",
                snapshot.shared.len(),
                self.config.max_shared_features
            ));
        }
        for record in snapshot.shared {
            let what = format!("shared weight `{}`×`{}`", record.capability, record.word);
            let cell = record.cell.cell(fresh.shared_prior.var, tick, &what)?;
            let key = shared_key(feature_hash(&record.capability), feature_hash(&record.word));
            if fresh.shared.contains_key(&key) {
                return Err(format!("{what} appears twice"));
            }
            fresh.shared_keys.push(key);
            fresh.shared.insert(
                key,
                SharedCell {
                    cell,
                    capability: record.capability.into(),
                    word: record.word.into(),
                    index: fresh.shared_keys.len() - 1,
                },
            );
            weights += 1;
        }
        if snapshot.word_successes.len() > self.config.max_shared_features {
            return Err(format!(
                "{} counted words; learning.max_shared_features is {}",
                snapshot.word_successes.len(),
                self.config.max_shared_features
            ));
        }
        for (word, n) in snapshot.word_successes {
            fresh.word_successes.insert(feature_hash(&word), (word.into(), n));
        }
        if let Some((capability, _)) = snapshot.capability_successes.iter().find(|(_, n)| **n > MAX_TICK) {
            return Err(format!("capability_successes of `{capability}` must be at most 2^53"));
        }
        for (capability, n) in snapshot.capability_successes {
            fresh
                .capability_successes
                .insert(feature_hash(&capability), (capability.into(), n));
        }
        fresh.total_successes = snapshot.total_successes;
        let agents = fresh.by_id.len();
        *self = fresh;
        Ok((agents, weights))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_not_features_and_words_with_a_few_digits_are() {
        let text = "migrate item 12345 a3f9c2e1 2026 k8s utf8 404 sha256 ipv6 550e8400 deadbeef12 facade base64";
        let w: Vec<String> = text.split(' ').map(str::to_owned).collect();
        let features = TaskFeatures::new(&w, None, &["work".to_owned()]);
        assert_eq!(
            features.names(),
            [
                "migrate", "item", "k8s", "utf8", "404", "sha256", "ipv6", "facade", "base64", "cap:work"
            ]
        );
    }

    fn words(text: &str) -> TaskFeatures {
        let w: Vec<String> = text.split(' ').map(str::to_owned).collect();
        TaskFeatures::new(&w, None, &[])
    }

    fn success_of(model: &Model, agent: &str, caps: &[String], task: &TaskFeatures) -> f64 {
        let prepared = model.prepare(task);
        prepared
            .estimate(model.slot_of(agent), model.shared_part(task, caps), 0.0)
            .success()
    }

    #[test]
    fn the_normal_cdf_is_accurate_and_the_table_agrees() {
        for (t, want) in [
            (0.0, 0.5),
            (1.0, 0.841_344_746),
            (-1.96, 0.024_997_895),
            (-6.0, 9.865_876e-10),
        ] {
            let got = norm_cdf(t);
            assert!(
                (got - want).abs() <= 1e-7 * want.max(1e-3),
                "Φ({t}) = {got}, want {want}"
            );
        }
        for i in -900..900 {
            let t = f64::from(i) / 100.0;
            assert!((norm_cdf_fast(t) - norm_cdf(t)).abs() < 1e-5, "{t}");
        }
        assert_eq!(norm_cdf_fast(f64::NAN), 0.5);
        assert!(truncated_mean(-40.0) > 39.0 && truncated_mean(40.0) < 1e-10);
    }

    #[test]
    fn successes_raise_and_failures_lower_the_prediction() {
        let mut model = Model::new(LearningConfig::default());
        let task = words("migrate schema");
        let caps = vec!["database".to_owned()];
        let start = success_of(&model, "a", &caps, &task);
        for _ in 0..20 {
            model.learn("a", &caps, &task, 0.0, true, Some(10.0));
            model.learn("b", &caps, &task, 0.0, false, None);
        }
        let a = success_of(&model, "a", &caps, &task);
        let b = success_of(&model, "b", &caps, &task);
        assert!(a > 0.8 && b < 0.2 && b < start && start < a, "{start} {a} {b}");
    }

    #[test]
    fn the_per_agent_cap_holds_under_many_random_words() {
        let config = LearningConfig {
            max_features_per_agent: 32,
            max_shared_features: 100,
            ..LearningConfig::default()
        };
        let mut model = Model::new(config);
        let caps = vec!["x".to_owned(), "y".to_owned()];
        for i in 0..5_000u64 {
            let task = words(&format!("w{} w{} w{}", i, i * 7 + 1, i % 13));
            model.learn(if i % 2 == 0 { "a" } else { "b" }, &caps, &task, 0.5, i % 3 == 0, None);
        }
        for id in ["a", "b"] {
            let held = model.agent(model.slot_of(id).expect("known")).expect("live").held.len();
            assert_eq!(held, 32, "{id}");
        }
        assert_eq!(model.shared.len(), 100);
        assert_eq!(model.shared_keys.len(), 100);
        for (i, key) in model.shared_keys.iter().enumerate() {
            assert_eq!(model.shared[key].index, i, "the index follows swap_remove");
        }
        let cells: usize = model.words.values().map(|(_, c)| c.len()).sum();
        assert_eq!(cells, 64, "no word cell outlives its agent's list");
    }

    /// Regression guard (found in review): when every sampled weight belonged to the task
    /// being learned, none was evicted and the cap grew; then the model's own export could not
    /// be imported.
    #[test]
    fn a_small_cap_holds_and_the_export_imports() {
        let config = LearningConfig {
            max_features_per_agent: 2,
            ..LearningConfig::default()
        };
        let mut model = Model::new(config.clone());
        for i in 0..200u32 {
            model.learn(
                "a",
                &[],
                &words(&format!("w{} w{}", i % 7, i % 11 + 20)),
                0.0,
                i % 2 == 0,
                None,
            );
        }
        let held = model.agent(model.slot_of("a").expect("a")).expect("live").held.len();
        assert_eq!(held, 2);
        let mut restored = Model::new(config);
        restored.import(model.export()).expect("its own export imports");
    }

    #[test]
    fn a_snapshot_with_absurd_numbers_is_refused() {
        let mut model = Model::new(LearningConfig::default());
        model.learn("a", &[], &words("one"), 0.0, true, Some(1.0));
        let good = serde_json::to_value(model.export()).expect("serializes");
        let mut huge_mean = good.clone();
        huge_mean["agents"]["a"]["bias"][0] = serde_json::json!(1e39);
        let mut huge_tick = good.clone();
        huge_tick["tick"] = serde_json::json!(u64::MAX);
        let mut huge_count = good.clone();
        huge_count["agents"]["a"]["successes"] = serde_json::json!(u64::MAX);
        for (bad, expected) in [(huge_mean, "within"), (huge_tick, "2^53"), (huge_count, "2^53")] {
            let err = model.import(serde_json::from_value(bad).expect("parses")).unwrap_err();
            assert!(err.contains(expected), "{err}");
        }
    }

    #[test]
    fn removing_an_agent_frees_its_cells_and_slot() {
        let mut model = Model::new(LearningConfig::default());
        model.learn("a", &[], &words("alpha beta"), 0.0, true, None);
        model.learn("b", &[], &words("beta"), 0.0, true, None);
        let slot = model.slot_of("a").expect("a");
        model.remove_agent("a");
        assert!(model.slot_of("a").is_none());
        assert!(!model.words.contains_key(&feature_hash("alpha")));
        assert_eq!(model.words[&feature_hash("beta")].1.len(), 1);
        assert_eq!(model.slot_for("c"), slot, "the slot is reused");
    }

    #[test]
    fn a_snapshot_restores_the_same_predictions() {
        let mut model = Model::new(LearningConfig::default());
        let caps = vec!["database".to_owned()];
        for i in 0..200u32 {
            let task = words(if i % 2 == 0 { "schema index" } else { "vacuum replica" });
            model.learn(
                if i % 3 == 0 { "a" } else { "b" },
                &caps,
                &task,
                0.2,
                i % 5 != 0,
                Some(3.0),
            );
        }
        let json = serde_json::to_value(model.export()).expect("serializes");
        let mut restored = Model::new(LearningConfig::default());
        restored.slot_for("b");
        let (agents, _) = restored
            .import(serde_json::from_value(json.clone()).expect("parses"))
            .expect("imports");
        assert_eq!(agents, 2);
        for task in [words("schema"), words("vacuum replica index")] {
            for id in ["a", "b"] {
                let want = success_of(&model, id, &caps, &task);
                let got = success_of(&restored, id, &caps, &task);
                assert!((want - got).abs() < 1e-6, "{id}: {want} vs {got}");
            }
        }
        assert_eq!(serde_json::to_value(restored.export()).expect("serializes"), json);

        let mut bad = json.clone();
        bad["agents"]["a"]["bias"][1] = serde_json::json!(-1.0);
        let before = serde_json::to_value(restored.export()).expect("serializes");
        let err = restored
            .import(serde_json::from_value(bad).expect("parses"))
            .unwrap_err();
        assert!(err.contains("variance"), "{err}");
        assert_eq!(
            serde_json::to_value(restored.export()).expect("serializes"),
            before,
            "nothing changed"
        );
    }
}
