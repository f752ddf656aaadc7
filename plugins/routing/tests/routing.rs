//! ContextAwareRoutingPlugin through a real orchestrator: similarity, hard filters, learning
//! that finds the best of three similar agents, profiles, bad input.

mod support;

use orchestrator_core::{AgentConfig, AgentId, AgentStatus, Orchestrator, Task};
use plugin_api::IntegrationRequest;
use plugin_routing::ContextAwareRoutingPlugin;
use serde_json::{Value, json};
use support::call;

async fn orchestrator(seed: u64) -> Orchestrator {
    support::router(json!({"seed": seed})).await
}

#[tokio::test]
async fn a_fresh_fleet_is_routed_by_what_the_task_says() {
    let orch = orchestrator(1).await;
    for (id, caps) in [
        ("rustacean", ["rust_development", "code_review"]),
        ("pythonista", ["python_development", "data_analysis"]),
        ("scribe", ["technical_writing", "documentation"]),
    ] {
        orch.register_agent(AgentConfig::new(id).with_id(id).with_capabilities(caps))
            .await
            .expect("registers");
    }
    let mut wins = std::collections::HashMap::new();
    for (task, expected) in [
        ("Fix the Rust development build and review the code", "rustacean"),
        ("Run a data analysis of the Python notebooks", "pythonista"),
        ("Write the documentation for the new API", "scribe"),
    ] {
        for _ in 0..20 {
            let picked = orch.select_agent_for_task(&Task::new(task), &[]).await.expect("routes");
            if picked.as_str() == expected {
                *wins.entry(expected).or_insert(0) += 1;
            }
        }
    }
    for agent in ["rustacean", "pythonista", "scribe"] {
        assert!(
            wins.get(agent).copied().unwrap_or(0) >= 15,
            "{agent} won {:?} of 20",
            wins.get(agent)
        );
    }
    let answer = call(
        &orch,
        "semantic_routing",
        json!({"task": {"description": "review rust code"}}),
    )
    .await;
    assert_eq!(answer["ranking"].as_array().map(Vec::len), Some(3));
    assert_eq!(answer["ranking"][0]["similarity"], 1.0, "the best match is scaled to 1");
}

#[tokio::test]
async fn hard_filters_come_first() {
    let orch = orchestrator(2).await;
    orch.register_agent(AgentConfig::default().with_id("a").with_capabilities(["deploy"]))
        .await
        .expect("a");
    orch.register_agent(AgentConfig::default().with_id("b").with_capabilities(["deploy", "gpu"]))
        .await
        .expect("b");
    let off = orch
        .register_agent(AgentConfig::default().with_id("c").with_capabilities(["deploy", "gpu"]))
        .await
        .expect("c");
    orch.set_agent_status(&off, AgentStatus::Offline).expect("known");
    for _ in 0..10 {
        let task = Task::new("deploy the model").with_required_capabilities(["gpu"]);
        assert_eq!(
            orch.select_agent_for_task(&task, &[]).await.expect("routes"),
            AgentId::from("b")
        );
    }
    let only_a = [AgentId::from("a")];
    let err = orch
        .select_agent_for_task(&Task::new("x").with_required_capabilities(["gpu"]), &only_a)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no eligible agent"), "{err}");
}

/// Three agents with the same capabilities and hidden success rates; learning must find the
/// best (regression guard for the bandit: a running average would lock onto the first lucky one).
#[tokio::test]
async fn learning_finds_the_best_of_three_similar_agents() {
    let orch = orchestrator(3).await;
    let hidden = [("ada", 0.9), ("bob", 0.55), ("cy", 0.3)];
    for (id, _) in hidden {
        orch.register_agent(AgentConfig::new(id).with_id(id).with_capabilities(["code_review"]))
            .await
            .expect("registers");
    }
    // A deterministic stand-in for the world: outcome i of agent k succeeds when its
    // low-discrepancy draw falls under the hidden rate.
    let mut draws = [0.0f64; 3];
    let mut best_picks_late = 0;
    for round in 0..300 {
        let task = json!({"task": {"description": "review this pull request", "topic": "review"}});
        let picked = call(&orch, "semantic_routing", task).await["selected_agent"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let k = hidden.iter().position(|(id, _)| *id == picked).expect("a known agent");
        draws[k] = (draws[k] + 0.618_033_988_75) % 1.0;
        let success = draws[k] < hidden[k].1;
        call(
            &orch,
            "performance_learning",
            json!({"agent_id": picked, "task": {"description": "review this pull request", "topic": "review"}, "success": success, "duration_ms": 100 + round}),
        )
        .await;
        if round >= 200 && picked == "ada" {
            best_picks_late += 1;
        }
    }
    assert!(
        best_picks_late >= 75,
        "the best agent took only {best_picks_late} of the last 100 tasks"
    );
    let profile = call(&orch, "agent_profiling", json!({"agent_id": "ada"})).await;
    let review = &profile["topics"]["topic:review"];
    assert!(review["posterior_mean"].as_f64() > Some(0.8), "{profile}");
    assert!(profile["tasks_recorded"].as_u64() > Some(100), "{profile}");
    assert_eq!(profile["capabilities"], json!(["code_review"]));
}

#[tokio::test]
async fn learning_reports_the_prediction_before_and_after() {
    let orch = orchestrator(4).await;
    orch.register_agent(
        AgentConfig::default()
            .with_id("w")
            .with_capabilities(["database_migration"]),
    )
    .await
    .expect("w");
    let first = call(&orch, "performance_learning", json!({"agent_id": "w", "task": {"description": "run the database migration"}, "success": true, "duration_ms": 40})).await;
    assert_eq!(
        first["topic"],
        Value::Null,
        "no explicit topic, no required capabilities"
    );
    assert_eq!(first["features"], 3, "run, database, migration");
    assert!(
        first["posterior_mean"].as_f64() > first["predicted_before"].as_f64(),
        "a success raises the prediction: {first}"
    );
    assert_eq!(
        (first["successes"].as_u64(), first["failures"].as_u64()),
        (Some(1), Some(0))
    );
    let second = call(&orch, "performance_learning", json!({"agent_id": "w", "task": {"description": "x", "required_capabilities": ["database_migration"]}, "success": false, "duration_ms": 60})).await;
    assert_eq!(second["topic"], "database_migration");
    assert!(
        second["posterior_mean"].as_f64() < second["predicted_before"].as_f64(),
        "a failure lowers it: {second}"
    );
    assert_eq!(second["mean_duration_ms"], 50.0);
    assert_eq!(
        (second["successes"].as_u64(), second["failures"].as_u64()),
        (Some(1), Some(1))
    );
}

#[tokio::test]
async fn bad_input_is_refused_as_invalid_request() {
    let orch = orchestrator(5).await;
    orch.register_agent(AgentConfig::default().with_id("w"))
        .await
        .expect("w");
    for (capability, data) in [
        ("semantic_routing", json!({})),
        ("semantic_routing", json!({"task": {"description": 3}})),
        (
            "semantic_routing",
            json!({"task": {"description": "x"}, "available_agents": "w"}),
        ),
        (
            "semantic_routing",
            json!({"task": {"description": "x", "required_capabilities": [1]}}),
        ),
        (
            "performance_learning",
            json!({"agent_id": "w", "task": {"description": "x"}}),
        ),
        (
            "performance_learning",
            json!({"agent_id": "ghost", "task": {"description": "x"}, "success": true}),
        ),
        (
            "performance_learning",
            json!({"agent_id": "w", "task": {"description": "x"}, "success": true, "duration_ms": -1}),
        ),
        (
            "performance_learning",
            json!({"agent_id": "w", "task": {"description": "x"}, "success": true, "duration_ms": 1e300}),
        ),
        ("agent_profiling", json!({"agent_id": "ghost"})),
        ("agent_profiling", json!(42)),
        (
            "semantic_routing",
            json!({"task": {"description": "x"}, "ranking_len": 0}),
        ),
        (
            "semantic_routing",
            json!({"task": {"description": "x"}, "ranking_len": "3"}),
        ),
    ] {
        let err = orch
            .execute(IntegrationRequest::new(capability, data.clone()))
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("invalid request"),
            "{capability} {data}: {err}"
        );
    }
    let err = Orchestrator::builder()
        .plugin(ContextAwareRoutingPlugin::new())
        .configure(
            "ContextAwareRoutingPlugin",
            json!({"weights": {"similarity": 1, "learning": 1, "load": -1}}),
        )
        .build()
        .await
        .unwrap_err();
    assert!(err.to_string().contains("weights must be non-negative"), "{err}");
}

#[tokio::test]
async fn the_plugin_passes_the_conformance_kit() {
    use plugin_api::testkit::{CheckOptions, check_plugin};
    check_plugin(&ContextAwareRoutingPlugin::new(), CheckOptions::default())
        .await
        .assert_conformant();
}

#[tokio::test]
async fn the_ranking_is_as_long_as_asked() {
    let orch = orchestrator(6).await;
    for i in 0..6 {
        orch.register_agent(
            AgentConfig::default()
                .with_id(format!("a{i}"))
                .with_capabilities(["work"]),
        )
        .await
        .expect("registers");
    }
    let full = call(&orch, "semantic_routing", json!({"task": {"description": "work"}})).await;
    assert_eq!(full["ranking"].as_array().map(Vec::len), Some(6));
    let short = call(
        &orch,
        "semantic_routing",
        json!({"task": {"description": "work"}, "ranking_len": 2}),
    )
    .await;
    let ranking = short["ranking"].as_array().expect("ranking");
    assert_eq!(ranking.len(), 2);
    assert_eq!(ranking[0]["agent_id"], short["selected_agent"]);
    assert!(ranking[0]["score"].as_f64() >= ranking[1]["score"].as_f64());
}

/// Regression guard (found by the configuration property test): a negative weight was refused
/// without saying which weight.
#[tokio::test]
async fn a_bad_weight_is_refused_naming_it() {
    for (weights, named) in [
        (
            json!({"similarity": -1, "learning": 0.5, "load": 0.2}),
            "weights.similarity is -1",
        ),
        (
            json!({"similarity": 0.3, "learning": 0.5, "load": -0.5}),
            "weights.load is -0.5",
        ),
        (json!({"similarity": 0, "learning": 0, "load": 0}), "all zero"),
    ] {
        let err = Orchestrator::builder()
            .plugin(ContextAwareRoutingPlugin::new())
            .configure("ContextAwareRoutingPlugin", json!({ "weights": weights }))
            .build()
            .await
            .unwrap_err();
        assert!(err.to_string().contains(named), "{err}");
    }
}

/// An agent deregistered and registered again under the same id with other capabilities is
/// routed by its new capabilities (the router's cache finds agents by the address of the
/// host's id; the old entry must not outlive the old registration).
#[tokio::test]
async fn an_agent_registered_again_is_routed_by_its_new_capabilities() {
    let orch = orchestrator(9).await;
    orch.register_agent(AgentConfig::default().with_id("a").with_capabilities(["x"]))
        .await
        .expect("registers");
    orch.register_agent(AgentConfig::default().with_id("b").with_capabilities(["z"]))
        .await
        .expect("registers");
    let needs = |cap: &str| json!({"task": {"description": "work", "required_capabilities": [cap]}});
    assert_eq!(call(&orch, "semantic_routing", needs("x")).await["selected_agent"], "a");
    orch.deregister_agent(&AgentId::from("a")).await.expect("deregisters");
    orch.register_agent(AgentConfig::default().with_id("a").with_capabilities(["y"]))
        .await
        .expect("registers again");
    let mut routed = Value::Null;
    for _ in 0..200 {
        let answer = orch
            .execute(IntegrationRequest::new("semantic_routing", needs("y")))
            .await
            .expect("answers");
        if answer.success {
            routed = answer.data["selected_agent"].clone();
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(routed, "a", "routed by the new capabilities");
    let old = orch
        .execute(IntegrationRequest::new("semantic_routing", needs("x")))
        .await
        .expect("answers");
    assert!(!old.success, "nobody has `x` any more: {old:?}");
}
