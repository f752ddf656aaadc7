//! Routing quality and speed.
//!
//! 1. A simulation, printed: 20 agents, 5 kinds of task; each agent declares two kinds and has
//!    a hidden success rate for each (0.2 to 0.95). 3,000 tasks arrive; each policy picks an agent
//!    among those declaring the task's kind, the world decides success from the hidden rate, and
//!    the learning policy is told the outcome. Policies: round robin, this plugin (learning), and
//!    the oracle (always the agent with the best hidden rate). Success rates are reported
//!    overall and over the last third.
//! 2. Criterion: routing one task over 1,000 agents through this plugin, against the
//!    orchestrator's legacy least-loaded pick over the same agents, in one group.
//!
//! Run it with `cargo bench -p plugin-routing`.

use criterion::{Criterion, criterion_group, criterion_main};
use orchestrator_core::{AgentConfig, Orchestrator};
use plugin_api::IntegrationRequest;
use plugin_routing::ContextAwareRoutingPlugin;
use serde_json::json;
use std::hint::black_box;

const KINDS: [&str; 5] = ["parsing", "deployment", "database", "frontend", "security"];

/// The world's own randomness (SplitMix64), fixed seed.
struct World(u64);

impl World {
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
    // This plugin, learning from every outcome.
    let learned = rt.block_on(async {
        let orch = Orchestrator::builder()
            .legacy_mode(false)
            .plugin(ContextAwareRoutingPlugin::new())
            .configure("ContextAwareRoutingPlugin", json!({"seed": 7}))
            .build()
            .await
            .expect("builds");
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
            orch.execute(IntegrationRequest::new(
                "performance_learning",
                json!({"agent_id": id, "task": task, "success": success, "duration_ms": 10}),
            ))
            .await
            .expect("learns");
            out.push(success);
        }
        out
    });
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

fn bench_routing(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    simulate(&rt);

    let build = |with_plugin: bool| {
        rt.block_on(async {
            let mut builder = Orchestrator::builder();
            if with_plugin {
                builder = builder.plugin(ContextAwareRoutingPlugin::new());
            }
            let orch = builder.build().await.expect("builds");
            for i in 0..1000 {
                let caps = [KINDS[i % 5], KINDS[(i / 5) % 5]];
                orch.register_agent(AgentConfig::default().with_capabilities(caps))
                    .await
                    .expect("registers");
            }
            orch
        })
    };
    let plugin = build(true);
    let legacy = build(false);
    let request = IntegrationRequest::new(
        "semantic_routing",
        json!({"task": {"description": "migrate the database schema safely", "required_capabilities": ["database"]}}),
    );
    let mut group = c.benchmark_group("route_over_1000_agents");
    group.bench_function("legacy_least_loaded", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(legacy.execute(request.clone()).await.expect("routes")) });
    });
    group.bench_function("context_aware_plugin", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(plugin.execute(request.clone()).await.expect("routes")) });
    });
    group.finish();
}

criterion_group!(benches, bench_routing);
criterion_main!(benches);
