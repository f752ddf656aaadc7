//! SharedStatePlugin through a real orchestrator, on both backends: every capability on good
//! input, garbage refused with errors that say what was expected, the workflow completion event
//! emitted once across two orchestrators sharing one Redis, and the conformance kit.

mod common;

use common::RedisServer;
use orchestrator_core::{AgentConfig, DispatchError, Orchestrator, OrchestratorError};
use plugin_api::{IntegrationRequest, OrchestratorEvent};
use plugin_shared_state::SharedStatePlugin;
use serde_json::{Value, json};
use std::time::Duration;

async fn orchestrator(config: Value) -> Orchestrator {
    let builder = Orchestrator::builder()
        .legacy_mode(false)
        .plugin(SharedStatePlugin::default());
    let builder = if config.is_null() {
        builder
    } else {
        builder.configure("SharedStatePlugin", config)
    };
    builder.build().await.expect("builds")
}

fn redis_config(server: &RedisServer, namespace: &str) -> Value {
    json!({"backend": "redis", "url": server.url(), "namespace": namespace,
           "queue": {"claim_idle_ms": 100, "max_deliveries": 2}})
}

async fn call(orch: &Orchestrator, capability: &str, data: Value) -> Value {
    let response = orch
        .execute(IntegrationRequest::new(capability, data.clone()))
        .await
        .unwrap_or_else(|e| panic!("{capability} {data}: {e}"));
    assert!(response.success, "{response:?}");
    assert_eq!(response.served_by, "SharedStatePlugin");
    response.data
}

async fn refused(orch: &Orchestrator, capability: &str, data: Value) -> String {
    match orch.execute(IntegrationRequest::new(capability, data.clone())).await {
        Err(OrchestratorError::Dispatch(DispatchError::InvalidRequest { message, .. })) => message,
        other => panic!("{capability} {data}: expected an invalid-request error, got {other:?}"),
    }
}

async fn capabilities_work(orch: &Orchestrator) {
    let absent = call(orch, "atomic_updates", json!({"key": "config/limit"})).await;
    assert_eq!(absent, json!({"key": "config/limit", "value": null, "version": 0}));
    let set = call(
        orch,
        "atomic_updates",
        json!({"op": "cas", "key": "config/limit", "expected_version": 0, "value": 5}),
    )
    .await;
    assert_eq!(
        (set["applied"].clone(), set["version"].clone()),
        (json!(true), json!(1))
    );
    let lost = call(
        orch,
        "atomic_updates",
        json!({"op": "cas", "key": "config/limit", "expected_version": 0, "value": 9}),
    )
    .await;
    assert_eq!(
        (lost["applied"].clone(), lost["value"].clone()),
        (json!(false), json!(5))
    );

    let moved = call(
        orch,
        "atomic_updates",
        json!({"op": "transition", "task_id": "t", "from": "pending", "to": "assigned"}),
    )
    .await;
    assert_eq!(moved["applied"], json!(true));
    let message = refused(
        orch,
        "atomic_updates",
        json!({"op": "transition", "task_id": "t", "from": "assigned", "to": "done"}),
    )
    .await;
    assert!(
        message.contains("`assigned`") && message.contains("`done`"),
        "{message}"
    );

    // Without `available_agents`, the registered agents that are not offline.
    let picked = call(orch, "real_time_balancing", json!({"acquire": true})).await;
    assert_eq!(picked["selected_agent"], json!("a1"));
    let picked = call(orch, "real_time_balancing", json!({"op": "pick"})).await;
    assert_eq!(picked["selected_agent"], json!("a2"));
    let loads = call(
        orch,
        "real_time_balancing",
        json!({"op": "loads", "available_agents": ["a1", "a2"]}),
    )
    .await;
    assert_eq!(loads["loads"], json!({"a1": 1, "a2": 0}));
    let released = call(orch, "real_time_balancing", json!({"op": "release", "agent_id": "a1"})).await;
    assert_eq!(released["load"], json!(0));
    let empty = orch
        .execute(IntegrationRequest::new(
            "real_time_balancing",
            json!({"available_agents": []}),
        ))
        .await
        .expect("answers");
    assert!(!empty.success && empty.error.as_deref().is_some_and(|e| e.contains("no candidate")));

    let defined = call(
        orch,
        "workflow_tracking",
        json!({"op": "define", "workflow_id": "w", "tasks": ["a", "b"]}),
    )
    .await;
    assert_eq!(
        (defined["total"].clone(), defined["pending"].clone()),
        (json!(2), json!(2))
    );
    for state in ["assigned", "running", "done"] {
        call(
            orch,
            "workflow_tracking",
            json!({"op": "update", "workflow_id": "w", "task_id": "a", "state": state}),
        )
        .await;
    }
    let progress = call(orch, "workflow_tracking", json!({"workflow_id": "w"})).await;
    assert_eq!(
        (progress["done"].clone(), progress["complete"].clone()),
        (json!(1), json!(false))
    );
}

async fn garbage_is_refused(orch: &Orchestrator) {
    let cases = [
        ("atomic_updates", json!({"op": "cas", "key": "k", "value": 1})),
        (
            "atomic_updates",
            json!({"op": "cas", "key": "k", "expected_version": -1, "value": 1}),
        ),
        (
            "atomic_updates",
            json!({"op": "cas", "key": "k", "expected_version": 0}),
        ),
        ("atomic_updates", json!({"op": "get", "key": 42})),
        ("atomic_updates", json!({"op": "get", "key": ""})),
        ("atomic_updates", json!({"op": "get", "key": "x".repeat(600)})),
        ("atomic_updates", json!({"op": "get", "key": "a\u{0}b"})),
        (
            "atomic_updates",
            json!({"op": "cas", "key": "big", "expected_version": 0, "value": "x".repeat(2 << 20)}),
        ),
        (
            "atomic_updates",
            json!({"op": "transition", "task_id": "t", "from": "pending", "to": "flying"}),
        ),
        ("atomic_updates", json!({"op": 7})),
        ("atomic_updates", json!({"op": "explode"})),
        ("atomic_updates", json!({"op": "delete", "key": "k"})),
        (
            "atomic_updates",
            json!({"op": "delete", "key": "task/t", "expected_version": 1}),
        ),
        ("real_time_balancing", json!({"op": "acquire"})),
        ("real_time_balancing", json!({"available_agents": "a1"})),
        ("real_time_balancing", json!({"available_agents": [1, 2]})),
        ("real_time_balancing", json!({"acquire": "yes"})),
        (
            "workflow_tracking",
            json!({"op": "define", "workflow_id": "w", "tasks": []}),
        ),
        (
            "workflow_tracking",
            json!({"op": "define", "workflow_id": "w", "tasks": ["a", "a"]}),
        ),
        (
            "workflow_tracking",
            json!({"op": "update", "workflow_id": "nope", "task_id": "a", "state": "done"}),
        ),
        ("workflow_tracking", json!({"op": "progress", "workflow_id": "nope"})),
        ("workflow_tracking", json!({"op": "take", "queue": "q"})),
        ("workflow_tracking", json!([1, 2])),
    ];
    for (capability, data) in cases {
        let message = refused(orch, capability, data.clone()).await;
        assert!(!message.is_empty(), "{capability} {data}");
    }
}

async fn agents(orch: &Orchestrator) {
    for id in ["a1", "a2"] {
        orch.register_agent(AgentConfig::new(id).with_id(id))
            .await
            .expect("registers");
    }
}

#[tokio::test]
async fn capabilities_work_in_memory() {
    let orch = orchestrator(Value::Null).await;
    agents(&orch).await;
    capabilities_work(&orch).await;
    garbage_is_refused(&orch).await;
    let queue = refused(
        &orch,
        "workflow_tracking",
        json!({"op": "enqueue", "queue": "q", "task": 1}),
    )
    .await;
    assert!(queue.contains("Redis backend"), "{queue}");
}

#[tokio::test]
async fn capabilities_work_on_redis() {
    let Some(server) = RedisServer::start() else { return };
    let orch = orchestrator(redis_config(&server, "plugin")).await;
    agents(&orch).await;
    capabilities_work(&orch).await;
    garbage_is_refused(&orch).await;
    assert!(
        orch.catalog()
            .plugins
            .iter()
            .all(|p| p.health.as_ref().is_none_or(|h| h.is_healthy()))
    );
}

#[tokio::test]
async fn configuration_errors_name_the_key() {
    for (config, expected) in [
        (json!({"backend": "redis"}), "url"),
        (json!({"backend": "memory", "url": "redis://x"}), "url"),
        (json!({"backend": "etcd"}), "etcd"),
        (json!({"colour": "blue"}), "colour"),
        (json!({"backend": "redis", "url": "http://nope"}), "not a Redis URL"),
        (json!({"queue": {"max_deliveries": 0}}), "max_deliveries"),
    ] {
        let err = Orchestrator::builder()
            .plugin(SharedStatePlugin::default())
            .configure("SharedStatePlugin", config.clone())
            .build()
            .await
            .expect_err("refused");
        assert!(err.to_string().contains(expected), "{config}: {err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workflow_shared_by_two_orchestrators_completes_once() {
    let Some(server) = RedisServer::start() else { return };
    let first = orchestrator(redis_config(&server, "shared-wf")).await;
    let second = orchestrator(redis_config(&server, "shared-wf")).await;
    let mut events = [first.subscribe_events(), second.subscribe_events()];
    let tasks: Vec<String> = (0..40).map(|i| format!("t{i}")).collect();
    call(
        &first,
        "workflow_tracking",
        json!({"op": "define", "workflow_id": "release", "tasks": tasks}),
    )
    .await;

    let mut handles = Vec::new();
    for (i, task) in tasks.iter().enumerate() {
        let orch = if i % 2 == 0 { first.clone() } else { second.clone() };
        let task = task.clone();
        handles.push(tokio::spawn(async move {
            for state in ["assigned", "running", if i % 5 == 0 { "failed" } else { "done" }] {
                call(
                    &orch,
                    "workflow_tracking",
                    json!({"op": "update", "workflow_id": "release", "task_id": task, "state": state}),
                )
                .await;
            }
        }));
    }
    for h in handles {
        h.await.expect("joins");
    }
    let progress = call(&second, "workflow_tracking", json!({"workflow_id": "release"})).await;
    assert_eq!(
        (
            progress["total"].clone(),
            progress["done"].clone(),
            progress["failed"].clone(),
            progress["complete"].clone()
        ),
        (json!(40), json!(32), json!(8), json!(true))
    );
    // Events are delivered asynchronously: wait for the first announcement, then long enough
    // for a second one to show up if there were one.
    let mut completions = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut grace_until = None;
    loop {
        for receiver in &mut events {
            while let Ok(event) = receiver.try_recv() {
                if let OrchestratorEvent::Custom { name, data, .. } = event {
                    if name == "workflow_completed" {
                        assert_eq!(data["workflow_id"], json!("release"));
                        completions += 1;
                        grace_until.get_or_insert(tokio::time::Instant::now() + Duration::from_millis(500));
                    }
                }
            }
        }
        let now = tokio::time::Instant::now();
        if grace_until.is_some_and(|g| now >= g) || now >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        completions, 1,
        "exactly one of the two orchestrators announced the completion"
    );
}

#[tokio::test]
async fn redis_down_is_an_error_naming_the_url_and_unhealthy() {
    let Some(mut server) = RedisServer::start() else { return };
    let orch = orchestrator(json!({"backend": "redis", "url": server.url(), "op_timeout_ms": 300})).await;
    call(&orch, "atomic_updates", json!({"key": "k"})).await;
    assert!(orch.health().await["SharedStatePlugin"].is_healthy());
    server.stop();
    let err = orch
        .execute(IntegrationRequest::new("atomic_updates", json!({"key": "k"})))
        .await
        .expect_err("Redis is down");
    assert!(err.to_string().contains(&server.url()), "{err}");
    let health = &orch.health().await["SharedStatePlugin"];
    assert!(!health.is_healthy(), "{health:?}");
    assert!(health.to_string().contains(&server.url()), "{health}");
}

#[tokio::test]
async fn the_plugin_passes_the_conformance_kit() {
    use plugin_api::testkit::{CheckOptions, check_plugin};
    check_plugin(&SharedStatePlugin::default(), CheckOptions::default())
        .await
        .assert_conformant();
    if let Some(server) = RedisServer::start() {
        check_plugin(
            &SharedStatePlugin::default(),
            CheckOptions::default().with_config(redis_config(&server, "kit")),
        )
        .await
        .assert_conformant();
    }
}
