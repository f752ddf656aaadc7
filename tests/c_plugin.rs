//! The legacy C ABI through the public API: a plugin written in C, compiled here with the
//! system C compiler, loaded and called like any other.

mod common;

use orchestrator::prelude::*;
use orchestrator::{CircuitState, LoadError, PluginAbi, PluginOrigin, QuarantinePolicy, inspect_plugin};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Compiles `examples/c-plugin/plugin.c` into `dir` with extra `defines`.
fn compile_c_plugin(dir: &Path, file: &str, defines: &[&str]) -> PathBuf {
    compile_c_source(dir, file, "examples/c-plugin/plugin.c", defines)
}

/// Compiles a C source of this repository into a shared library in `dir`.
fn compile_c_source(dir: &Path, file: &str, source: &str, defines: &[&str]) -> PathBuf {
    std::fs::create_dir_all(dir).expect("temp dir");
    let out = dir.join(file);
    let compiler = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let status = Command::new(&compiler)
        .args(["-shared", "-fPIC", "-O2", "-Wall", "-Werror", "-o"])
        .arg(&out)
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join(source))
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

/// Fault injection through the C ABI: garbage, NULL, an enormous answer and calls that outlast
/// the timeout, 1,000 calls in all. Each ends in a clear error (or its answer) within the call
/// timeout, the host keeps serving, and threads and memory stay bounded. Then a plugin that
/// fails every call is quarantined.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_misbehaving_c_plugin_is_contained_call_after_call() {
    let dir = temp_dir("faults");
    let path = compile_c_source(&dir, "libc_fault_plugin.so", "tests/fixtures/c-faults/plugin.c", &[]);
    let timeout = std::time::Duration::from_millis(100);
    let orch = Orchestrator::builder()
        .legacy_mode(false)
        .call_timeout(timeout)
        .quarantine(QuarantinePolicy::disabled())
        .build()
        .await
        .expect("builds");
    orch.load_plugin(&path).await.expect("loads");
    let call = |mode: &str| orch.execute(IntegrationRequest::new("c_fault", json!({ "mode": mode })));
    assert!(call("ok").await.expect("served").success);
    let before = common::threads_and_rss_kb();

    let mut slowest = std::time::Duration::ZERO;
    for i in 0..1_000 {
        let mode = match i % 50 {
            0 => "huge",
            n if n % 10 == 5 => "slow",
            n if n % 3 == 0 => "garbage",
            n if n % 3 == 1 => "null",
            _ => "ok",
        };
        let started = std::time::Instant::now();
        let outcome = call(mode).await;
        slowest = slowest.max(started.elapsed());
        match mode {
            "ok" => assert!(outcome.expect("served").success),
            "garbage" => assert!(
                outcome
                    .unwrap_err()
                    .to_string()
                    .contains("invalid IntegrationResponse JSON"),
                "{mode}"
            ),
            "null" => assert!(outcome.unwrap_err().to_string().contains("returned NULL"), "{mode}"),
            "huge" => assert!(
                outcome.unwrap_err().to_string().contains("over the host's limit"),
                "{mode}"
            ),
            _ => {
                // Cut off at the timeout, or refused while 16 earlier slow calls still run.
                let err = outcome.unwrap_err().to_string();
                assert!(
                    err.contains("timed out after 100 ms") || err.contains("still running"),
                    "{err}"
                );
            }
        }
    }
    // Every call ended within the timeout, give or take scheduling (a huge answer is built and
    // measured by the plugin before it is refused).
    assert!(slowest < std::time::Duration::from_secs(2), "slowest call: {slowest:?}");
    assert!(call("ok").await.expect("still serving").success);
    if let (Some((threads_before, rss_before)), Some((threads_after, rss_after))) =
        (before, common::threads_and_rss_kb())
    {
        // At most 16 abandoned calls run on at once, each on one blocking thread.
        assert!(
            threads_after <= threads_before + 16 + 4,
            "threads {threads_before} -> {threads_after}"
        );
        assert!(
            rss_after < rss_before + 200 * 1024,
            "resident memory {rss_before} kB -> {rss_after} kB"
        );
    }
    let info = orch
        .plugins()
        .into_iter()
        .find(|p| p.name == "CFaultPlugin")
        .expect("listed");
    assert!(info.errors >= 600 && info.timeouts >= 1, "{info:?}");

    // With quarantine on, a plugin failing every call is skipped after five failures.
    let orch = Orchestrator::builder()
        .legacy_mode(false)
        .call_timeout(timeout)
        .quarantine(QuarantinePolicy::default().failures(5))
        .build()
        .await
        .expect("builds");
    orch.load_plugin(&path).await.expect("loads");
    for _ in 0..8 {
        let _ = orch
            .execute(IntegrationRequest::new("c_fault", json!({"mode": "null"})))
            .await;
    }
    let info = orch
        .plugins()
        .into_iter()
        .find(|p| p.name == "CFaultPlugin")
        .expect("listed");
    assert_eq!(info.circuit.state, CircuitState::Open);
    assert_eq!(info.calls, 5, "quarantined after five failures");
    assert!(!orch.health().await["CFaultPlugin"].is_healthy());
    std::fs::remove_dir_all(&dir).ok();
}
