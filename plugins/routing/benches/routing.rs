//! Routing quality and speed.
//!
//! 1. Simulations, printed.
//!    - **Kinds**: 20 agents, 5 kinds of task; each agent declares two kinds and has a hidden
//!      success rate for each (0.2 to 0.95). 3,000 tasks arrive, each naming its kind as a
//!      required capability; each policy picks an agent among those declaring the task's kind,
//!      the world decides success from the hidden rate, and the learning policy is told the
//!      outcome. Policies: round robin, this plugin reading the text only (never told an outcome),
//!      this plugin (learning), and the oracle (always the agent
//!      with the best hidden rate). Success rates are reported overall and over the last third.
//!    - **Vocabulary world** (`tests/support/fields.rs`, shared with the tests): 5 fields of 24
//!      words each, 15 agents (three per field, hidden rates 0.9, 0.6 and 0.3 on their own
//!      field's tasks, 0.05 elsewhere) that declare only two words of their field. Tasks carry
//!      no required capabilities: six words, four of the field (mostly undeclared) and two of
//!      other fields. 3,000 tasks; policies: round robin over all 15 agents, text only (this
//!      plugin weighing similarity alone, never told outcomes), this plugin (learning, told
//!      every outcome), and the oracle (the field's expert). Reported: the right-field and
//!      success rates over the last 1,000 tasks, success overall, and the learned model's
//!      `model_bytes` per agent (mean and max) when `agent_profiling` reports it.
//! 2. Criterion, over 1,000 agents on a plugin that has already learned 3,000 vocabulary-world
//!    outcomes spread over them:
//!    - `route_over_1000_agents`: routing one vocabulary-world task through this plugin, against
//!      the orchestrator's legacy least-loaded pick over the same agents;
//!    - `learn_one_outcome`: one `performance_learning` call through the orchestrator, against
//!      the naive way, a `HashMap<(agent id, rarest word), (successes, failures)>` counter
//!      incremented directly.
//!
//! Run it with `cargo bench -p plugin-routing`.

#[path = "../tests/support/mod.rs"]
mod support;

use criterion::{Criterion, criterion_group, criterion_main};
use orchestrator_core::{AgentConfig, AgentId, Orchestrator};
use plugin_api::IntegrationRequest;
use plugin_routing::ContextAwareRoutingPlugin;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::hint::black_box;
use support::fields::{self, FieldsWorld, Routed, Task};
use support::router;

const KINDS: [&str; 5] = ["parsing", "deployment", "database", "frontend", "security"];

/// The world's own randomness (SplitMix64), fixed seed.
struct World(u64);

impl World {
    /// A uniform draw in `[0, 1)`.
    fn next(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    }
}

struct Fleet {
    /// Per agent: the two kinds it declares, and its hidden rate for each kind.
    agents: Vec<([usize; 2], [f64; 5])>,
}

/// 20 agents, each declaring two kinds, with hidden rates drawn from `world`.
fn fleet(world: &mut World) -> Fleet {
    let agents = (0..20)
        .map(|i| {
            let kinds = [i % 5, (i / 5 + i + 1) % 5];
            let mut skill = [0.0; 5];
            for s in &mut skill {
                *s = 0.2 + 0.75 * world.next();
            }
            (kinds, skill)
        })
        .collect();
    Fleet { agents }
}

/// The kinds simulation, printed: 3,000 tasks under three policies.
fn simulate(rt: &tokio::runtime::Runtime) {
    let mut world = World(2026);
    let fleet = fleet(&mut world);
    let tasks: Vec<usize> = (0..3000).map(|_| (world.next() * 5.0) as usize % 5).collect();
    let outcomes: Vec<f64> = (0..3000).map(|_| world.next()).collect();
    let eligible = |kind: usize| -> Vec<usize> {
        (0..fleet.agents.len())
            .filter(|a| fleet.agents[*a].0.contains(&kind))
            .collect()
    };

    let mut results: Vec<(&str, Vec<bool>)> = Vec::new();
    // Round robin among the agents that declare the kind.
    let mut next = [0usize; 5];
    let rr = tasks
        .iter()
        .zip(&outcomes)
        .map(|(&kind, &u)| {
            let candidates = eligible(kind);
            let agent = candidates[next[kind] % candidates.len()];
            next[kind] += 1;
            u < fleet.agents[agent].1[kind]
        })
        .collect();
    results.push(("round robin", rr));
    // The oracle.
    let oracle = tasks
        .iter()
        .zip(&outcomes)
        .map(|(&kind, &u)| {
            let best = eligible(kind)
                .into_iter()
                .map(|a| fleet.agents[a].1[kind])
                .fold(0.0, f64::max);
            u < best
        })
        .collect();
    results.push(("oracle", oracle));
    // This plugin: reading the text only (similarity alone, never told an outcome), and
    // learning from every outcome.
    let run_plugin = |config: Value, learn: bool| {
        rt.block_on(async {
            let orch = router(config).await;
            for (i, (kinds, _)) in fleet.agents.iter().enumerate() {
                let caps = kinds.map(|k| KINDS[k]);
                orch.register_agent(
                    AgentConfig::new(format!("agent-{i}"))
                        .with_id(format!("a{i}"))
                        .with_capabilities(caps),
                )
                .await
                .expect("registers");
            }
            let mut out = Vec::with_capacity(tasks.len());
            for (&kind, &u) in tasks.iter().zip(&outcomes) {
                let task =
                    json!({"description": format!("a {} task", KINDS[kind]), "required_capabilities": [KINDS[kind]]});
                let answer = orch
                    .execute(IntegrationRequest::new("semantic_routing", json!({ "task": task })))
                    .await
                    .expect("routes");
                let id = answer.data["selected_agent"].as_str().unwrap_or_default().to_owned();
                let agent: usize = id.trim_start_matches('a').parse().expect("an agent id");
                let success = u < fleet.agents[agent].1[kind];
                if learn {
                    orch.execute(IntegrationRequest::new(
                        "performance_learning",
                        json!({"agent_id": id, "task": task, "success": success, "duration_ms": 10}),
                    ))
                    .await
                    .expect("learns");
                }
                out.push(success);
            }
            out
        })
    };
    let text_only = run_plugin(
        json!({"seed": 7, "weights": {"similarity": 1.0, "learning": 0.0, "load": 0.0}}),
        false,
    );
    results.push(("text only", text_only));
    let learned = run_plugin(json!({"seed": 7}), true);
    results.push(("this plugin (learning)", learned));

    let rate = |v: &[bool]| v.iter().filter(|s| **s).count() as f64 / v.len() as f64;
    let rr_late = rate(&results[0].1[2000..]);
    for (name, v) in &results {
        println!(
            "routing simulation {name:>24}: success {:.3} overall, {:.3} over the last 1,000 ({:+.0}% vs round robin)",
            rate(v),
            rate(&v[2000..]),
            (rate(&v[2000..]) / rr_late - 1.0) * 100.0
        );
    }
}

/// Registers the vocabulary world's agents on a fresh orchestrator with this plugin, configured
/// with `config`.
async fn vocabulary_fleet(world: &FieldsWorld, config: Value) -> Orchestrator {
    let orch = router(config).await;
    for (id, capabilities) in world.registrations() {
        orch.register_agent(
            AgentConfig::new(format!("agent-{id}"))
                .with_id(id)
                .with_capabilities(capabilities),
        )
        .await
        .expect("registers");
    }
    orch
}

/// Routes `task` through the plugin and returns the chosen agent's index in `world`.
async fn route_in(orch: &Orchestrator, world: &FieldsWorld, task: &Task) -> usize {
    let answer = orch
        .execute(IntegrationRequest::new(
            "semantic_routing",
            json!({"task": {"description": task.description}}),
        ))
        .await
        .expect("routes");
    let id = answer.data["selected_agent"].as_str().unwrap_or_default();
    world.agent_index(id).expect("one of the world's agents")
}

/// The vocabulary world, printed: 3,000 tasks under four policies.
fn simulate_vocabulary(rt: &tokio::runtime::Runtime) {
    let mut world = FieldsWorld::new(2026);
    let tasks = world.tasks(3000);
    let world = world;

    let mut results: Vec<(&str, Vec<Routed>)> = Vec::new();
    let mut next = 0;
    let round_robin = world.run_policy(&tasks, |_| {
        next += 1;
        (next - 1) % fields::AGENTS
    });
    results.push(("round robin", round_robin));
    // This plugin reading the text only: similarity alone, never told an outcome.
    let text_only = rt.block_on(async {
        let config = json!({"seed": 7, "weights": {"similarity": 1.0, "learning": 0.0, "load": 0.0}});
        let orch = vocabulary_fleet(&world, config).await;
        world
            .run_policy_async(&tasks, async |task: &Task| route_in(&orch, &world, task).await)
            .await
    });
    results.push(("text only", text_only));
    // This plugin, learning from every outcome; then what its model holds per agent.
    let (learned, model_bytes) = rt.block_on(async {
        let orch = vocabulary_fleet(&world, json!({"seed": 7})).await;
        let learned = world
            .run_policy_async(&tasks, async |task: &Task| {
                let agent = route_in(&orch, &world, task).await;
                let request = json!({
                    "agent_id": world.agents()[agent].id,
                    "task": {"description": task.description},
                    "success": world.success(agent, task),
                    "duration_ms": 10,
                });
                orch.execute(IntegrationRequest::new("performance_learning", request))
                    .await
                    .expect("learns");
                agent
            })
            .await;
        let mut model_bytes = Vec::new();
        for agent in world.agents() {
            let profile = orch
                .execute(IntegrationRequest::new(
                    "agent_profiling",
                    json!({"agent_id": agent.id}),
                ))
                .await
                .expect("profiles");
            if let Some(bytes) = profile.data.get("model_bytes").and_then(Value::as_f64) {
                model_bytes.push(bytes);
            }
        }
        (learned, model_bytes)
    });
    results.push(("this plugin (learning)", learned));
    let oracle = world.run_policy(&tasks, |task| world.oracle_agent(task.field));
    results.push(("oracle", oracle));

    for (name, routed) in &results {
        let (right_late, success_late) = fields::rates(&routed[2000..]);
        let (_, success) = fields::rates(routed);
        println!(
            "vocabulary world {name:>24}: right field {right_late:.3} and success {success_late:.3} over the last 1,000, success {success:.3} overall"
        );
    }
    if !model_bytes.is_empty() {
        let mean = model_bytes.iter().sum::<f64>() / model_bytes.len() as f64;
        let max = model_bytes.iter().copied().fold(0.0, f64::max);
        println!(
            "vocabulary world {:>24}: model_bytes per agent: mean {mean:.0}, max {max:.0} (over {} agents)",
            "this plugin (learning)",
            model_bytes.len()
        );
    }
}

/// One learned outcome: the agent's index among the 1,000, the task's description, success.
type Outcome = (usize, String, bool);

/// 3,000 vocabulary-world outcomes spread at random over 1,000 agents; agent k fares like the
/// world's agent k mod 15.
fn learned_outcomes(world: &mut FieldsWorld) -> Vec<Outcome> {
    let mut spread = fields::Rng::new(99);
    world
        .tasks(3000)
        .into_iter()
        .map(|task| {
            let agent = spread.below(1000);
            let success = world.success(agent % fields::AGENTS, &task);
            (agent, task.description, success)
        })
        .collect()
}

/// The naive learner the plugin is measured against: outcome counts per (agent id, rarest
/// word), a word's rarity being how many learned descriptions contain it.
#[derive(Default)]
struct NaiveCounters {
    frequency: HashMap<String, u32>,
    counts: HashMap<(String, String), (u32, u32)>,
}

impl NaiveCounters {
    /// Counters that have counted `outcomes` (by agent id) already.
    fn learned(ids: &[AgentId], outcomes: &[Outcome]) -> Self {
        let mut naive = Self::default();
        for (_, description, _) in outcomes {
            let mut words: Vec<&str> = description.split_whitespace().collect();
            words.sort_unstable();
            words.dedup();
            for word in words {
                *naive.frequency.entry(word.to_owned()).or_default() += 1;
            }
        }
        for (agent, description, success) in outcomes {
            naive.learn(ids[*agent].as_str(), description, *success);
        }
        naive
    }

    /// Counts one outcome under the description's rarest word (ties: alphabetical first).
    fn learn(&mut self, agent: &str, description: &str, success: bool) {
        let rarest = description
            .split_whitespace()
            .min_by_key(|word| (self.frequency.get(*word).copied().unwrap_or(0), *word))
            .unwrap_or("general");
        let counts = self.counts.entry((agent.to_owned(), rarest.to_owned())).or_default();
        if success {
            counts.0 += 1;
        } else {
            counts.1 += 1;
        }
    }
}

/// An orchestrator with 1,000 agents (two of [`KINDS`] each), with this plugin or without (the
/// legacy least-loaded pick); the plugin is told `outcomes` first. Returns the agents' ids too.
async fn thousand_agents(with_plugin: bool, outcomes: &[Outcome]) -> (Orchestrator, Vec<AgentId>) {
    let mut builder = Orchestrator::builder();
    if with_plugin {
        builder = builder.plugin(ContextAwareRoutingPlugin::new());
    }
    let orch = builder.build().await.expect("builds");
    let mut ids = Vec::with_capacity(1000);
    for i in 0..1000 {
        let caps = [KINDS[i % 5], KINDS[(i / 5) % 5]];
        let id = orch
            .register_agent(AgentConfig::default().with_capabilities(caps))
            .await
            .expect("registers");
        ids.push(id);
    }
    if with_plugin {
        for (agent, description, success) in outcomes {
            let request = json!({
                "agent_id": ids[*agent].as_str(),
                "task": {"description": description},
                "success": success,
                "duration_ms": 10,
            });
            orch.execute(IntegrationRequest::new("performance_learning", request))
                .await
                .expect("learns");
        }
    }
    (orch, ids)
}

/// The printed simulations, then the criterion groups.
fn bench_routing(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    simulate(&rt);
    simulate_vocabulary(&rt);

    let mut world = FieldsWorld::new(11);
    let outcomes = learned_outcomes(&mut world);
    let probe = world.tasks(1).remove(0);
    let (plugin, ids) = rt.block_on(thousand_agents(true, &outcomes));
    let (legacy, _) = rt.block_on(thousand_agents(false, &[]));

    let request = IntegrationRequest::new("semantic_routing", json!({"task": {"description": probe.description}}));
    let mut group = c.benchmark_group("route_over_1000_agents");
    group.bench_function("legacy_least_loaded", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(legacy.execute(request.clone()).await.expect("routes")) });
    });
    group.bench_function("context_aware_plugin", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(plugin.execute(request.clone()).await.expect("routes")) });
    });
    // The same task requiring `database`: the earlier figures' case (about 400 eligible agents).
    let filtered = IntegrationRequest::new(
        "semantic_routing",
        json!({"task": {"description": probe.description, "required_capabilities": ["database"]}}),
    );
    group.bench_function("legacy_least_loaded_database_only", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(legacy.execute(filtered.clone()).await.expect("routes")) });
    });
    group.bench_function("context_aware_plugin_database_only", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(plugin.execute(filtered.clone()).await.expect("routes")) });
    });
    group.finish();

    // Last, as it adds to what the plugin has learned.
    let agent = ids[0].as_str();
    let request = IntegrationRequest::new(
        "performance_learning",
        json!({"agent_id": agent, "task": {"description": probe.description}, "success": true, "duration_ms": 10}),
    );
    let mut naive = NaiveCounters::learned(&ids, &outcomes);
    let mut group = c.benchmark_group("learn_one_outcome");
    group.bench_function("naive_counter_map", |b| {
        b.iter(|| naive.learn(black_box(agent), black_box(&probe.description), black_box(true)));
    });
    group.bench_function("context_aware_plugin", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(plugin.execute(request.clone()).await.expect("learns")) });
    });
    group.finish();
}

criterion_group!(benches, bench_routing);
criterion_main!(benches);
