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
    let file = format!(
        "{}shared_state_plugin{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    );
    let exe = std::env::current_exe().expect("test binary path");
    let profile_dir = exe.parent().and_then(|d| d.parent()).expect("profile dir");
    let candidate = profile_dir.join("examples").join(&file);
    if candidate.is_file() {
        return candidate; // `cargo test` builds the examples beside the tests
    }
    // Run some other way: build it into a target directory of its own, so that this cargo does
    // not wait on the lock of the one running the test.
    let target = profile_dir.parent().expect("target dir").join("plugin-libs");
    let status = std::process::Command::new(env!("CARGO"))
        .args([
            "build",
            "--quiet",
            "-p",
            "plugin-shared-state",
            "--example",
            "shared_state_plugin",
            "--target-dir",
        ])
        .arg(&target)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .expect("cargo runs");
    assert!(status.success(), "building the shared_state_plugin example failed");
    let built = target.join("debug").join("examples").join(&file);
    assert!(built.is_file(), "{} was not built", built.display());
    built
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
