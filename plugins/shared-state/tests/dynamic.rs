//! The plugin loaded from its dynamic library (the `shared_state_plugin` cdylib example) on a
//! real Redis: the Redis client runs on the plugin's own I/O runtime, so a plugin with its own
//! copy of Tokio works where `tokio::spawn` from plugin code would find no reactor.

mod common;

use common::RedisServer;
use orchestrator_core::{Orchestrator, PluginOrigin};
use plugin_api::IntegrationRequest;
use serde_json::json;
use std::path::PathBuf;

fn library() -> PathBuf {
    plugin_api::testkit::example_library("plugin-shared-state", "shared_state_plugin").expect("the example library")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dynamic_library_shares_state_on_redis() {
    let Some(server) = RedisServer::start() else { return };
    let config = json!({"backend": "redis", "url": server.url(), "namespace": "dylib"});
    let dynamic = Orchestrator::builder()
        .legacy_mode(false)
        .load_plugin(library())
        .configure("SharedStatePlugin", config.clone())
        .build()
        .await
        .expect("builds");
    let catalog = dynamic.catalog();
    assert!(
        matches!(catalog.plugins[0].origin, PluginOrigin::StableAbi { .. }),
        "{catalog:?}"
    );
    let statically = Orchestrator::builder()
        .legacy_mode(false)
        .plugin(plugin_shared_state::SharedStatePlugin::default())
        .configure("SharedStatePlugin", config)
        .build()
        .await
        .expect("builds");

    let cas = |expected: u64, value: &str| {
        IntegrationRequest::new(
            "atomic_updates",
            json!({"op": "cas", "key": "leader", "expected_version": expected, "value": value}),
        )
    };
    let first = dynamic.execute(cas(0, "dynamic")).await.expect("answers");
    assert_eq!(first.data["applied"], json!(true), "{first:?}");
    let second = statically.execute(cas(0, "static")).await.expect("answers");
    assert_eq!(
        (second.data["applied"].clone(), second.data["value"].clone()),
        (json!(false), json!("dynamic"))
    );

    let enqueued = dynamic
        .execute(IntegrationRequest::new(
            "workflow_tracking",
            json!({"op": "enqueue", "queue": "q", "task": {"n": 1}}),
        ))
        .await
        .expect("answers");
    let taken = statically
        .execute(IntegrationRequest::new(
            "workflow_tracking",
            json!({"op": "take", "queue": "q", "consumer": "static", "wait_ms": 1000}),
        ))
        .await
        .expect("answers");
    assert_eq!(taken.data["tasks"][0]["id"], enqueued.data["id"]);
    assert_eq!(taken.data["tasks"][0]["task"], json!({"n": 1}));
}
