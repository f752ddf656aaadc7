//! Several orchestrators learning into one model through a shared log on a real `redis-server`:
//! outcomes learned at once in two orchestrators are all learned by both, none lost, and both
//! hold the same model afterwards.

#[path = "../../shared-state/tests/common/mod.rs"]
mod redis_server;
mod support;

use orchestrator_core::{AgentConfig, Orchestrator};
use plugin_api::IntegrationRequest;
use plugin_routing::ContextAwareRoutingPlugin;
use plugin_shared_state::SharedStatePlugin;
use redis_server::RedisServer;
use serde_json::{Value, json};
use support::fields::FieldsWorld;
use support::{call, register};

async fn orchestrator(url: &str, seed: u64) -> Orchestrator {
    Orchestrator::builder()
        .legacy_mode(false)
        .plugin(SharedStatePlugin::default())
        .configure(
            "SharedStatePlugin",
            json!({"backend": "redis", "url": url, "namespace": "routing-test"}),
        )
        .plugin(ContextAwareRoutingPlugin::new())
        .configure(
            "ContextAwareRoutingPlugin",
            json!({"seed": seed, "learning": {"shared_log": "routing/outcomes", "sync_interval_ms": 0}}),
        )
        .build()
        .await
        .expect("builds")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_orchestrators_learn_into_one_model_without_losing_an_outcome() {
    let Some(redis) = RedisServer::start() else { return };
    let url = redis.url();
    let mut world = FieldsWorld::new(31);
    let agents = world.registrations();
    let (first, second) = (orchestrator(&url, 1).await, orchestrator(&url, 2).await);
    for orch in [&first, &second] {
        register(orch, &agents).await;
    }
    let tasks = world.tasks(600);
    // Each orchestrator learns half the outcomes, both at once, from several tasks each.
    let learn_share = |orch: &Orchestrator, parity: usize| {
        let outcomes: Vec<Value> = tasks
            .iter()
            .enumerate()
            .filter(|(i, _)| i % 2 == parity)
            .map(|(i, task)| {
                let agent = i % agents.len();
                json!({"agent_id": agents[agent].0, "task": {"description": task.description}, "success": world.success(agent, task), "duration_ms": 1})
            })
            .collect();
        let orch = orch.clone();
        async move {
            let mut handles = Vec::new();
            for chunk in outcomes.chunks(75) {
                let (orch, chunk) = (orch.clone(), chunk.to_vec());
                handles.push(tokio::spawn(async move {
                    for outcome in chunk {
                        let learned = call(&orch, "performance_learning", outcome).await;
                        assert!(learned["posterior_mean"].is_number(), "{learned}");
                    }
                }));
            }
            for handle in handles {
                handle.await.expect("learns");
            }
        }
    };
    tokio::join!(learn_share(&first, 0), learn_share(&second, 1));

    // A route reads what the other learned (the interval is 0: every route reads the log).
    let mut snapshots = Vec::new();
    for orch in [&first, &second] {
        call(
            orch,
            "semantic_routing",
            json!({"task": {"description": "schema migration"}}),
        )
        .await;
        snapshots.push(call(orch, "performance_learning", json!({"op": "export"})).await["snapshot"].clone());
    }
    assert_eq!(
        snapshots[0]["tick"], 600,
        "every outcome learned once: {}",
        snapshots[0]["tick"]
    );
    let recorded: u64 = snapshots[0]["agents"]
        .as_object()
        .expect("agents")
        .values()
        .map(|a| a["successes"].as_u64().unwrap_or(0) + a["failures"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(recorded, 600);
    assert_eq!(snapshots[0], snapshots[1], "both orchestrators hold the same model");

    let profile = call(&second, "agent_profiling", json!({"agent_id": agents[0].0})).await;
    assert_eq!(profile["shared_log"]["read_up_to"], 600, "{profile}");
    assert_eq!(profile["shared_log"]["missed"], 0);

    // A third orchestrator started now learns the whole history from the log.
    let late = orchestrator(&url, 3).await;
    register(&late, &agents).await;
    call(
        &late,
        "semantic_routing",
        json!({"task": {"description": "schema migration"}}),
    )
    .await;
    let replayed = call(&late, "performance_learning", json!({"op": "export"})).await["snapshot"].clone();
    assert_eq!(replayed, snapshots[0], "a newcomer replays the log into the same model");
}

#[tokio::test]
async fn learning_without_a_reachable_log_is_an_error_that_says_so() {
    // The shared-state plugin is absent: the outcome cannot be shared, and the caller is told.
    let orch = Orchestrator::builder()
        .legacy_mode(false)
        .plugin(ContextAwareRoutingPlugin::new())
        .configure(
            "ContextAwareRoutingPlugin",
            json!({"learning": {"shared_log": "routing/outcomes"}}),
        )
        .build()
        .await
        .expect("builds");
    orch.register_agent(AgentConfig::new("a").with_id("a").with_capabilities(["x"]))
        .await
        .expect("registers");
    let err = orch
        .execute(IntegrationRequest::new(
            "performance_learning",
            json!({"agent_id": "a", "task": {"description": "x"}, "success": true}),
        ))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("shared log `routing/outcomes`"), "{err}");
    // A snapshot cannot be imported into a router whose model is the log.
    let err = orch
        .execute(IntegrationRequest::new(
            "performance_learning",
            json!({"op": "import", "snapshot": {}}),
        ))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("count the log's outcomes twice"), "{err}");
    // Routing goes on with what the process has.
    let routed = call(&orch, "semantic_routing", json!({"task": {"description": "x"}})).await;
    assert_eq!(routed["selected_agent"], "a");
}

/// Regression guard (found in review): when the log started again (a Redis that lost its
/// data), a process past the new entries' seqs read nothing more and learned nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_that_starts_again_is_read_from_its_start() {
    let Some(redis) = RedisServer::start() else { return };
    let orch = orchestrator(&redis.url(), 4).await;
    let agents = FieldsWorld::new(5).registrations();
    register(&orch, &agents).await;
    let learn = |i: usize| {
        call(
            &orch,
            "performance_learning",
            json!({"agent_id": agents[i % agents.len()].0, "task": {"description": "schema index"}, "success": i % 2 == 0}),
        )
    };
    for i in 0..10 {
        learn(i).await;
    }
    redis.command(&["FLUSHALL"]);
    for i in 0..4 {
        let learned = learn(i).await;
        assert!(learned["posterior_mean"].is_number(), "{learned}");
    }
    let profile = call(&orch, "agent_profiling", json!({"agent_id": agents[0].0})).await;
    assert_eq!(profile["shared_log"]["resets"], 1, "{profile}");
    assert_eq!(profile["outcomes_learned"], 14, "{profile}");
}
