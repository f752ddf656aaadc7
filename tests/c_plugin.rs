//! The legacy C ABI through the public API: a plugin written in C, compiled here with the
//! system C compiler, loaded and called like any other.

mod common;

use orchestrator::prelude::*;
use orchestrator::{LoadError, PluginAbi, PluginOrigin, inspect_plugin};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Compiles `examples/c-plugin/plugin.c` into `dir` with extra `defines`.
fn compile_c_plugin(dir: &Path, file: &str, defines: &[&str]) -> PathBuf {
    std::fs::create_dir_all(dir).expect("temp dir");
    let out = dir.join(file);
    let compiler = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let status = Command::new(&compiler)
        .args(["-shared", "-fPIC", "-O2", "-Wall", "-Werror", "-o"])
        .arg(&out)
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/c-plugin/plugin.c"))
        .args(defines)
        .status()
        .unwrap_or_else(|e| panic!("cannot run the C compiler `{compiler}`: {e}"));
    assert!(status.success(), "compiling the C plugin failed");
    out
}

fn temp_dir(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("orch-c-plugin-{name}-{}", std::process::id()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_c_plugin_loads_and_its_answers_round_trip() {
    let dir = temp_dir("ok");
    let path = compile_c_plugin(&dir, "libc_text_plugin.so", &[]);
    let orch = Orchestrator::builder()
        .legacy_mode(false)
        .build()
        .await
        .expect("builds");
    let loaded = orch.load_plugin(&path).await.expect("loads");
    assert_eq!(loaded.name, "CTextPlugin");
    assert_eq!(loaded.version, "1.0.0");
    assert_eq!(loaded.origin, PluginOrigin::CAbi { path: path.clone() });
    assert_eq!(loaded.interface_version, "1");

    let resp = orch
        .execute(
            IntegrationRequest::new("c_text_stats", json!({"text": "two words\nand \"three\" more\n"}))
                .with_correlation_id("c-42"),
        )
        .await
        .expect("served");
    assert!(resp.success);
    assert_eq!(resp.data, json!({"words": 5, "lines": 2, "bytes": 27}));
    assert_eq!(resp.served_by, "CTextPlugin", "filled in by the host");
    assert_eq!(resp.correlation_id, "c-42");

    // The C plugin's own refusal comes back as a well-formed failure.
    let bad = orch
        .execute(IntegrationRequest::new("c_text_stats", json!({"txt": 1})))
        .await
        .expect("answered");
    assert!(!bad.success);
    assert_eq!(bad.error.as_deref(), Some("expected {\"text\": string}"));

    // Many calls at once, each on the blocking pool.
    let calls: Vec<_> = (0..32)
        .map(|i| tokio::spawn(orch.execute(IntegrationRequest::new("c_text_stats", json!({"text": "x ".repeat(i)})))))
        .collect();
    for (i, call) in calls.into_iter().enumerate() {
        assert_eq!(call.await.expect("ran").expect("served").data["words"], i);
    }

    let inspection = inspect_plugin(&path).expect("inspects");
    assert_eq!(inspection.abi, PluginAbi::CAbi);
    assert!(inspection.manifest.nonblocking, "the example promises not to block");
    assert_eq!(inspection.manifest.capabilities, ["c_text_stats"]);
    std::fs::remove_dir_all(&dir).ok();
}

/// Without the `nonblocking` promise, calls go through the blocking pool, where a call that
/// takes too long is abandoned at the call timeout while the host keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocking_c_plugin_is_cut_off_by_the_call_timeout() {
    let dir = temp_dir("slow");
    let path = compile_c_plugin(
        &dir,
        "libc_slow_plugin.so",
        &["-DORCH_BLOCKING_CALLS", "-DORCH_SLOW_MS=1500"],
    );
    let orch = Orchestrator::builder()
        .legacy_mode(false)
        .call_timeout(std::time::Duration::from_millis(100))
        .build()
        .await
        .expect("builds");
    orch.load_plugin(&path).await.expect("loads");
    assert!(!inspect_plugin(&path).expect("inspects").manifest.nonblocking);
    let start = std::time::Instant::now();
    let err = orch
        .execute(IntegrationRequest::new("c_text_stats", json!({"text": "slow"})))
        .await
        .unwrap_err();
    assert!(
        start.elapsed() < std::time::Duration::from_millis(1000),
        "abandoned, not waited for"
    );
    assert!(err.to_string().contains("timed out after 100 ms"), "{err}");
    let ok = orch
        .execute(IntegrationRequest::new(
            "c_text_stats",
            json!({"text": "still serving"}),
        ))
        .await;
    assert_eq!(ok.expect("served").data["words"], 2);
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test]
async fn a_c_plugin_for_another_abi_version_is_refused() {
    let dir = temp_dir("v2");
    let path = compile_c_plugin(&dir, "libc_text_plugin_v2.so", &["-DORCH_ABI_VERSION=2"]);
    let orch = Orchestrator::builder().build().await.expect("builds");
    let err = orch.load_plugin(&path).await.unwrap_err();
    assert!(
        matches!(err, OrchestratorError::Load(LoadError::IncompatibleVersion { .. })),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains("built against C ABI 2, this host needs C ABI 1"),
        "{err}"
    );
    assert!(orch.plugins().is_empty());
    std::fs::remove_dir_all(&dir).ok();
}
