//! What the router learns from outcomes, through a real orchestrator: the best agent of a field
//! found from words no agent declared, a snapshot that routes the same after import, drift
//! followed, the memory cap under 100,000 outcomes, and bad snapshots refused.

mod support;

use orchestrator_core::{AgentConfig, Orchestrator};
use plugin_api::IntegrationRequest;
use plugin_routing::ContextAwareRoutingPlugin;
use serde_json::json;
use support::fields::{self, FieldsWorld, Task};
use support::{call, register, router};

async fn route(orch: &Orchestrator, description: &str) -> String {
    call(orch, "semantic_routing", json!({"task": {"description": description}})).await["selected_agent"]
        .as_str()
        .expect("an agent")
        .to_owned()
}

async fn learn(orch: &Orchestrator, agent: &str, description: &str, success: bool) {
    call(
        orch,
        "performance_learning",
        json!({"agent_id": agent, "task": {"description": description}, "success": success, "duration_ms": 5}),
    )
    .await;
}

/// Routes `tasks` through the plugin, telling it every outcome; per task, (right field, success).
async fn route_and_learn(orch: &Orchestrator, world: &FieldsWorld, tasks: &[Task]) -> Vec<fields::Routed> {
    let mut out = Vec::with_capacity(tasks.len());
    for task in tasks {
        let id = route(orch, &task.description).await;
        let agent = world.agent_index(&id).expect("a world agent");
        let routed = world.route(agent, task);
        learn(orch, &id, &task.description, routed.success).await;
        out.push(routed);
    }
    out
}

/// Tasks in words no agent declared only: text similarity is zero for every agent, so all the
/// routing must come from what was learned.
#[tokio::test]
async fn learning_finds_the_best_agent_of_a_field_from_words_no_agent_declared() {
    let mut world = FieldsWorld::new(2026);
    let declared: Vec<&str> = fields::VOCABULARY
        .iter()
        .flat_map(|words| words[..fields::DECLARED].iter().copied())
        .collect();
    let tasks: Vec<Task> = world
        .tasks(3_000)
        .into_iter()
        .filter(|t| !t.description.split(' ').any(|w| declared.contains(&w)))
        .take(2_000)
        .collect();
    assert_eq!(tasks.len(), 2_000);
    let orch = router(json!({"seed": 3})).await;
    register(&orch, &world.registrations()).await;
    let routed = route_and_learn(&orch, &world, &tasks).await;
    let (right_field, success) = fields::rates(&routed[1_500..]);
    let oracle = fields::rates(&world.run_policy(&tasks[1_500..], |t| world.oracle_agent(t.field))).1;
    println!("right field {right_field:.3}, success {success:.3} (oracle {oracle:.3})");
    assert!(
        right_field >= 0.85,
        "the right field for only {right_field:.3} of the last 500 tasks"
    );
    assert!(
        success >= oracle - 0.15,
        "success {success:.3} over the last 500 tasks, the oracle's {oracle:.3}"
    );
}

/// A model exported and imported into a fresh orchestrator (same seed, same agents) routes
/// exactly as the one it came from.
#[tokio::test]
async fn a_snapshot_exported_and_imported_routes_the_same() {
    let mut world = FieldsWorld::new(7);
    let agents = world.registrations();
    let original = router(json!({"seed": 11})).await;
    register(&original, &agents).await;
    // Outcomes taught directly (no routing call, so the generator is untouched).
    for (i, task) in world.tasks(600).iter().enumerate() {
        let agent = i % agents.len();
        learn(
            &original,
            &agents[agent].0,
            &task.description,
            world.success(agent, task),
        )
        .await;
    }
    let snapshot = call(&original, "performance_learning", json!({"op": "export"})).await["snapshot"].clone();
    assert!(
        snapshot["agents"].as_object().map(|a| a.len()) == Some(15),
        "{snapshot}"
    );

    let restored = router(json!({"seed": 11})).await;
    register(&restored, &agents).await;
    let imported = call(
        &restored,
        "performance_learning",
        json!({"op": "import", "snapshot": snapshot.clone()}),
    )
    .await;
    assert_eq!(imported["agents"], 15);
    assert_eq!(imported["outcomes"], 600);
    let again = call(&restored, "performance_learning", json!({"op": "export"})).await["snapshot"].clone();
    assert_eq!(again, snapshot, "the snapshot round-trips");

    let untaught = router(json!({"seed": 11})).await;
    register(&untaught, &agents).await;
    let mut differs_from_untaught = 0;
    for task in world.tasks(100) {
        let a = route(&original, &task.description).await;
        let b = route(&restored, &task.description).await;
        assert_eq!(a, b, "{}", task.description);
        if route(&untaught, &task.description).await != a {
            differs_from_untaught += 1;
        }
    }
    assert!(
        differs_from_untaught > 20,
        "the snapshot carried what was learned ({differs_from_untaught} of 100 picks differ from an untaught router)"
    );
}

/// Three agents with the same capabilities; after 400 tasks the best gets worse and another
/// gets better. Routing follows within a bounded number of tasks.
#[tokio::test]
async fn routing_follows_an_agent_whose_skill_changes() {
    let orch = router(json!({"seed": 5})).await;
    let agents = [("ada", [0.9, 0.1]), ("bob", [0.5, 0.9]), ("cy", [0.3, 0.3])];
    for (id, _) in agents {
        orch.register_agent(AgentConfig::new(id).with_id(id).with_capabilities(["code_review"]))
            .await
            .expect("registers");
    }
    let mut draw = 0.0f64;
    let mut late_picks = std::collections::HashMap::new();
    for round in 0..1_200 {
        let phase = usize::from(round >= 400);
        let description = "review this pull request";
        let id = route(&orch, description).await;
        let rate = agents.iter().find(|(a, _)| *a == id).expect("known").1[phase];
        draw = (draw + 0.618_033_988_75) % 1.0;
        learn(&orch, &id, description, draw < rate).await;
        if round == 399 {
            let profile = call(&orch, "agent_profiling", json!({"agent_id": "ada"})).await;
            assert!(
                profile["successes"].as_u64() > Some(250),
                "ada led the first phase: {profile}"
            );
        }
        if round >= 1_000 {
            *late_picks.entry(id).or_insert(0) += 1;
        }
    }
    let bob = late_picks.get("bob").copied().unwrap_or(0);
    assert!(
        bob >= 150,
        "bob, now the best, took {bob} of the last 200 tasks: {late_picks:?}"
    );
}

/// 100,000 outcomes with random words: each agent keeps at most its cap of word weights, and
/// the shared weights stay within theirs.
#[tokio::test]
async fn the_memory_cap_holds_under_100_000_outcomes_of_random_words() {
    let orch =
        router(json!({"seed": 1, "learning": {"max_features_per_agent": 64, "max_shared_features": 2_000}})).await;
    let ids = ["p", "q", "r", "s"];
    for id in ids {
        orch.register_agent(
            AgentConfig::new(id)
                .with_id(id)
                .with_capabilities(["alpha", "beta_gamma"]),
        )
        .await
        .expect("registers");
    }
    // Words of letters: digits would make them identifiers, which are not features.
    let word = |mut n: u64| {
        let mut w = String::from("w");
        loop {
            w.push(char::from(b'a' + (n % 26) as u8));
            n /= 26;
            if n == 0 {
                return w;
            }
        }
    };
    let mut rng = fields::Rng::new(99);
    for i in 0..100_000u32 {
        let description = format!(
            "{} {} {}",
            word(rng.next_u64() % 50_000),
            word(rng.next_u64() % 50_000),
            word(rng.next_u64() % 500)
        );
        learn(&orch, ids[i as usize % 4], &description, rng.next_f64() < 0.5).await;
    }
    let mut bytes = Vec::new();
    for id in ids {
        let profile = call(&orch, "agent_profiling", json!({"agent_id": id, "top": 5})).await;
        assert_eq!(profile["learned_features"], 64, "{profile}");
        assert_eq!(profile["topics"].as_object().map(|t| t.len()), Some(5));
        bytes.push(profile["model_bytes"].as_u64().expect("bytes"));
    }
    let snapshot = call(&orch, "performance_learning", json!({"op": "export"})).await["snapshot"].clone();
    assert_eq!(snapshot["shared"].as_array().map(Vec::len), Some(2_000));
    assert_eq!(snapshot["tick"], 100_000);
    for id in ids {
        assert_eq!(snapshot["agents"][id]["words"].as_object().map(|w| w.len()), Some(64));
    }
    assert!(bytes.iter().all(|b| *b < 64 * 64), "bytes per agent {bytes:?}");
}

/// Identifiers in task text (item numbers, hashes) are not learned: 5,000 tasks that differ
/// only by one leave the model with the words they share.
#[tokio::test]
async fn identifiers_in_task_text_take_up_no_weights() {
    let orch = router(json!({"seed": 3})).await;
    orch.register_agent(AgentConfig::new("a").with_id("a").with_capabilities(["deploy"]))
        .await
        .expect("registers");
    for n in 0..5_000u64 {
        let description = format!("deploy the cluster for item {} build {n:x}{n:08}", 100_000 + n);
        learn(&orch, "a", &description, n % 3 != 0).await;
    }
    let profile = call(&orch, "agent_profiling", json!({"agent_id": "a"})).await;
    // deploy, cluster, item, build.
    assert_eq!(profile["learned_features"], 4, "{profile}");
    let snapshot = call(&orch, "performance_learning", json!({"op": "export"})).await["snapshot"].clone();
    assert_eq!(snapshot["shared"].as_array().map(Vec::len), Some(4), "{snapshot}");
}

/// Bad snapshots and ops are refused as invalid requests, and a refused import changes nothing.
#[tokio::test]
async fn bad_snapshots_and_ops_are_refused_and_change_nothing() {
    let orch = router(json!({"seed": 2, "learning": {"max_features_per_agent": 4}})).await;
    orch.register_agent(AgentConfig::new("a").with_id("a").with_capabilities(["x"]))
        .await
        .expect("registers");
    learn(&orch, "a", "one two three", true).await;
    let before = call(&orch, "performance_learning", json!({"op": "export"})).await["snapshot"].clone();
    let mut negative_variance = before.clone();
    negative_variance["agents"]["a"]["bias"][1] = json!(-0.5);
    let mut wrong_version = before.clone();
    wrong_version["version"] = json!(99);
    let mut too_many = before.clone();
    // Over the cap and over one task's 32 features (what a cap below that lets an agent hold).
    too_many["agents"]["a"]["words"] = (0..33)
        .map(|i| (format!("w{i}"), json!([0.0, 0.1, 0, 0, 0])))
        .collect::<serde_json::Map<_, _>>()
        .into();
    let mut from_the_future = before.clone();
    from_the_future["agents"]["a"]["bias"][2] = json!(1_000_000);
    let mut extra_field = before.clone();
    extra_field["surprise"] = json!(true);
    for (data, expected) in [
        (json!({"op": "import"}), "snapshot"),
        (json!({"op": "import", "snapshot": "not json"}), "malformed"),
        (json!({"op": "import", "snapshot": {}}), "malformed"),
        (json!({"op": "import", "snapshot": negative_variance}), "variance"),
        (json!({"op": "import", "snapshot": wrong_version}), "version 99"),
        (
            json!({"op": "import", "snapshot": too_many}),
            "max_features_per_agent is 4",
        ),
        (
            json!({"op": "import", "snapshot": from_the_future}),
            "after the snapshot's tick",
        ),
        (json!({"op": "import", "snapshot": extra_field}), "surprise"),
        (json!({"op": "forget"}), "`op` must be"),
        (json!({"op": 3}), "`op` must be"),
    ] {
        let err = orch
            .execute(IntegrationRequest::new("performance_learning", data.clone()))
            .await
            .unwrap_err();
        let message = err.to_string();
        assert!(
            message.contains("invalid request") && message.contains(expected),
            "{data}: {message}"
        );
    }
    for data in [json!({"agent_id": "a", "top": 0}), json!({"agent_id": "a", "top": "5"})] {
        let err = orch
            .execute(IntegrationRequest::new("agent_profiling", data.clone()))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("`top` must be"), "{data}: {err}");
    }
    let after = call(&orch, "performance_learning", json!({"op": "export"})).await["snapshot"].clone();
    assert_eq!(after, before, "refused imports change nothing");
    let err = Orchestrator::builder()
        .plugin(ContextAwareRoutingPlugin::new())
        .configure(
            "ContextAwareRoutingPlugin",
            json!({"learning": {"max_features_per_agent": 0}}),
        )
        .build()
        .await
        .unwrap_err();
    assert!(err.to_string().contains("max_features_per_agent"), "{err}");
}

/// The same seed and the same calls give the same picks, from the first call on: routing
/// starting at once after the registrations (whose events reach the plugin at their own pace)
/// must not depend on when they arrive. Regression guard: a registration event that cleared
/// the router's cache entry made a route racing it leave that agent out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_seed_and_calls_give_the_same_picks() {
    let mut world = FieldsWorld::new(17);
    let tasks = world.tasks(300);
    let mut runs = Vec::new();
    for _ in 0..2 {
        let orch = router(json!({"seed": 23})).await;
        register(&orch, &world.registrations()).await;
        let mut picks = Vec::with_capacity(tasks.len());
        for task in &tasks {
            let id = route(&orch, &task.description).await;
            let agent = world.agent_index(&id).expect("a world agent");
            learn(&orch, &id, &task.description, world.success(agent, task)).await;
            picks.push(id);
        }
        runs.push(picks);
    }
    assert_eq!(runs[0], runs[1]);
}
