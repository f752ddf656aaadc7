//! Dynamic plugins through the public API: libraries built from this workspace, loaded through
//! the stable ABI, side by side, misbehaving, and failing to load in every documented way.

mod common;

use common::{eventually, plugin_library};
use orchestrator::prelude::*;
use orchestrator::{LoadError, LoadOutcome, OrchestratorEvent, PluginAbi, PluginOptions, PluginOrigin, inspect_plugin};
use serde_json::json;
use std::time::{Duration, Instant};

#[tokio::test]
async fn a_stable_abi_plugin_loads_and_serves() {
    let path = plugin_library("third-party-plugin");
    let orch = Orchestrator::builder().build().await.expect("builds");
    let loaded = orch.load_plugin(&path).await.expect("loads");
    assert_eq!(loaded.name, "TextToolsPlugin");
    assert_eq!(loaded.version, "0.3.0");
    assert_eq!(loaded.capabilities, ["text_stats", "keywords"]);
    assert_eq!(loaded.origin, PluginOrigin::StableAbi { path: path.clone() });
    assert_eq!(loaded.interface_version, orchestrator::plugin_api::API_VERSION);

    let resp = orch
        .execute(IntegrationRequest::new(
            "keywords",
            json!({"text": "Plugins load plugins; plugins serve. Hosts host."}),
        ))
        .await
        .expect("served");
    assert_eq!(resp.served_by, "TextToolsPlugin");
    assert_eq!(resp.data["keywords"][0], json!({"word": "plugins", "count": 3}));
    // Bad input is the plugin's `invalid_request`, carried across the boundary intact.
    let err = orch
        .execute(IntegrationRequest::new("text_stats", json!({"txt": 1})))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("expected {\"text\": string}"), "{err}");
    let catalog = serde_json::to_value(orch.catalog()).expect("serializes");
    assert_eq!(catalog["plugins"][0]["origin"]["kind"], "stable_abi");
    assert_eq!(catalog["plugins"][0]["health"]["state"], "healthy");
}

#[tokio::test]
async fn configuration_reaches_a_dynamic_plugin() {
    let path = plugin_library("third-party-plugin");
    let orch = Orchestrator::builder()
        .load_plugin(&path)
        .configure("TextToolsPlugin", json!({"top": 1}))
        .build()
        .await
        .expect("builds");
    let resp = orch
        .execute(IntegrationRequest::new(
            "keywords",
            json!({"text": "alpha beta beta gamma"}),
        ))
        .await
        .expect("served");
    assert_eq!(resp.data["keywords"], json!([{"word": "beta", "count": 2}]));

    let err = Orchestrator::builder()
        .load_plugin(&path)
        .configure("TextToolsPlugin", json!({"topp": 1}))
        .build()
        .await
        .unwrap_err();
    assert!(err.to_string().contains("unknown configuration key `topp`"), "{err}");
}

#[tokio::test]
async fn two_dynamic_plugins_load_side_by_side() {
    let orch = Orchestrator::builder().build().await.expect("builds");
    let text = orch
        .load_plugin(plugin_library("third-party-plugin"))
        .await
        .expect("loads");
    let faulty = orch.load_plugin(plugin_library("faulty-plugin")).await.expect("loads");
    assert_ne!(text.name, faulty.name, "each library has its own root module");
    let a = orch
        .execute(IntegrationRequest::new("text_stats", json!({"text": "one two"})))
        .await
        .expect("served");
    assert_eq!(
        (a.served_by.as_str(), a.data["words"].as_u64()),
        ("TextToolsPlugin", Some(2))
    );
    let b = orch
        .execute(IntegrationRequest::new("faulty_echo", json!({"x": 1})))
        .await
        .expect("served");
    assert_eq!(
        (b.served_by.as_str(), &b.data["echo"]),
        ("FaultyPlugin", &json!({"x": 1}))
    );
}

#[tokio::test]
async fn a_panic_inside_a_dynamic_plugin_leaves_the_host_serving() {
    let orch = Orchestrator::builder()
        .legacy_mode(false)
        .build()
        .await
        .expect("builds");
    orch.load_plugin(plugin_library("faulty-plugin")).await.expect("loads");
    for _ in 0..3 {
        let err = orch
            .execute(IntegrationRequest::new("faulty_panic", json!({})))
            .await
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("plugin panicked: faulty plugin panics on purpose"),
            "{err}"
        );
    }
    // Its other capabilities still work.
    let ok = orch
        .execute(IntegrationRequest::new("faulty_echo", json!(1)))
        .await
        .expect("served");
    assert_eq!(ok.data["echo"], 1);
    assert_eq!(
        orch.plugins()[0].errors,
        3,
        "contained on the plugin side: an error, not a host panic"
    );
}

#[tokio::test]
async fn a_hanging_dynamic_plugin_is_cut_off_by_the_call_timeout() {
    let orch = Orchestrator::builder()
        .legacy_mode(false)
        .call_timeout(Duration::from_millis(100))
        .build()
        .await
        .expect("builds");
    orch.load_plugin(plugin_library("faulty-plugin")).await.expect("loads");
    let start = Instant::now();
    let err = orch
        .execute(IntegrationRequest::new("faulty_hang", json!({})))
        .await
        .unwrap_err();
    assert!(start.elapsed() < Duration::from_secs(5));
    assert!(err.to_string().contains("timed out after 100 ms"), "{err}");
    assert_eq!(orch.plugins()[0].timeouts, 1);
}

/// Regression guard for the tokio-in-a-cdylib pitfall: a dynamic plugin that sleeps and spawns
/// does it on the host's runtime, through the host vtable, and does not panic with
/// "no reactor running".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dynamic_plugin_sleeps_and_spawns_on_the_host_runtime() {
    let orch = Orchestrator::builder()
        .legacy_mode(false)
        .build()
        .await
        .expect("builds");
    let mut events = orch.subscribe_events();
    orch.load_plugin(plugin_library("faulty-plugin")).await.expect("loads");
    orch.register_agent(AgentConfig::default().with_id("dyn-1"))
        .await
        .expect("registers");
    let resp = orch
        .execute(IntegrationRequest::new("faulty_background", json!({"ms": 20})))
        .await
        .expect("served");
    assert_eq!(resp.data["spawned"], true);
    let done = loop {
        let event = tokio::time::timeout(Duration::from_secs(5), events.recv())
            .await
            .expect("in time")
            .expect("event");
        if let OrchestratorEvent::Custom { source, name, data } = event {
            assert_eq!(source, "FaultyPlugin");
            assert_eq!(name, "background_done");
            break data;
        }
    };
    assert!(done["slept_ms"].as_u64().is_some_and(|ms| ms >= 20), "{done}");
    let agents = orch
        .execute(IntegrationRequest::new("faulty_agents", json!({})))
        .await
        .expect("served");
    assert_eq!(
        agents.data["agents"],
        json!(["dyn-1"]),
        "host services reach across the boundary"
    );
}

#[tokio::test]
async fn hot_swap_of_a_dynamic_plugin_keeps_serving() {
    let path = plugin_library("third-party-plugin");
    let orch = Orchestrator::builder()
        .legacy_mode(false)
        .build()
        .await
        .expect("builds");
    orch.load_plugin(&path).await.expect("loads");
    let err = orch.load_plugin(&path).await.unwrap_err();
    assert!(err.to_string().contains("already registered"), "{err}");
    orch.load_plugin_with(&path, PluginOptions::new().replace())
        .await
        .expect("replaces");
    let resp = orch
        .execute(IntegrationRequest::new("text_stats", json!({"text": "a b c"})))
        .await
        .expect("served");
    assert_eq!(resp.data["words"], 3);
    orch.unregister_plugin("TextToolsPlugin").await.expect("unregisters");
    assert!(!orch.has_capability("text_stats"));
}

#[tokio::test]
async fn every_kind_of_bad_file_has_its_own_clear_error() {
    let dir = std::env::temp_dir().join(format!("orch-bad-plugins-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let orch = Orchestrator::builder().build().await.expect("builds");

    let missing = dir.join("missing.so");
    let err = orch.load_plugin(&missing).await.unwrap_err();
    assert!(
        matches!(err, OrchestratorError::Load(LoadError::NotFound { .. })),
        "{err}"
    );
    assert!(err.to_string().contains(&*missing.to_string_lossy()), "{err}");

    let garbage = dir.join("garbage.so");
    std::fs::write(&garbage, b"\x7fELF this is not really a library").expect("write");
    let err = orch.load_plugin(&garbage).await.unwrap_err();
    assert!(
        matches!(err, OrchestratorError::Load(LoadError::NotALibrary { .. })),
        "{err}"
    );
    assert!(err.to_string().contains(&*garbage.to_string_lossy()), "{err}");

    let libm = [
        "/lib/x86_64-linux-gnu/libm.so.6",
        "/usr/lib/x86_64-linux-gnu/libm.so.6",
        "/lib64/libm.so.6",
        "/usr/lib/libm.so.6",
    ]
    .into_iter()
    .map(std::path::PathBuf::from)
    .find(|p| p.is_file())
    .expect("libm is on the machine");
    let err = orch.load_plugin(&libm).await.unwrap_err();
    assert!(
        matches!(err, OrchestratorError::Load(LoadError::NoPluginExports { .. })),
        "{err}"
    );
    assert!(err.to_string().contains("exports no orchestrator plugin"), "{err}");

    let old = plugin_library("old-api-plugin");
    let err = orch.load_plugin(&old).await.unwrap_err();
    let OrchestratorError::Load(LoadError::IncompatibleVersion { expected, found, .. }) = &err else {
        panic!("unexpected error: {err}");
    };
    assert_eq!(found, "plugin-api 0.0.1");
    assert_eq!(
        expected,
        &format!("plugin-api {}", orchestrator::plugin_api::API_VERSION)
    );
    assert!(err.to_string().lines().count() == 1, "one line: {err}");
    assert!(err.to_string().contains("rebuild the plugin"), "{err}");

    let mismatch = plugin_library("layout-mismatch-plugin");
    let err = orch.load_plugin(&mismatch).await.unwrap_err();
    let OrchestratorError::Load(LoadError::IncompatibleLayout { summary, details, .. }) = &err else {
        panic!("unexpected error: {err}");
    };
    assert_eq!(err.to_string().lines().count(), 1, "one line: {err}");
    assert!(err.to_string().contains(&*mismatch.to_string_lossy()), "{err}");
    assert_eq!(
        *summary,
        format!(
            "expected PluginModule from plugin-api {}, found OldPluginModule from layout-mismatch-plugin 0.1.0",
            env!("CARGO_PKG_VERSION")
        )
    );
    assert!(details.lines().count() > 5, "the full report is kept: {details}");

    assert!(orch.plugins().is_empty(), "nothing half-registered");
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test]
async fn a_plugin_directory_loads_what_it_can_and_reports_every_file() {
    let dir = std::env::temp_dir().join(format!("orch-plugin-dir-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let ext = orchestrator::LIBRARY_EXTENSION;
    std::fs::copy(plugin_library("third-party-plugin"), dir.join(format!("a_text.{ext}"))).expect("copy");
    std::fs::copy(plugin_library("faulty-plugin"), dir.join(format!("b_faulty.{ext}"))).expect("copy");
    std::fs::write(dir.join(format!("c_broken.{ext}")), b"not a library").expect("write");
    std::fs::write(dir.join("README.txt"), b"notes").expect("write");

    let orch = Orchestrator::builder().build().await.expect("builds");
    let report = orch.load_plugin_dir(&dir).await;
    assert_eq!(report.error, None);
    assert_eq!(report.entries.len(), 4, "{report:?}");
    let names: Vec<&str> = report.loaded().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["TextToolsPlugin", "FaultyPlugin"]);
    let failures: Vec<_> = report.failures().collect();
    assert_eq!(failures.len(), 1);
    assert!(failures[0].0.ends_with(format!("c_broken.{ext}")));
    let readme = report
        .entries
        .iter()
        .find(|e| e.path.ends_with("README.txt"))
        .expect("reported");
    assert!(matches!(readme.outcome, LoadOutcome::Skipped(_)), "{readme:?}");
    assert!(serde_json::to_string(&report).is_ok());

    let missing = orch.load_plugin_dir(dir.join("nope")).await;
    assert!(
        missing
            .error
            .as_deref()
            .is_some_and(|e| e.contains("cannot read plugin directory"))
    );

    // At build, a broken library fails the build.
    let err = Orchestrator::builder().plugin_dir(&dir).build().await.unwrap_err();
    assert!(err.to_string().contains("c_broken"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn inspect_reports_what_a_library_exports() {
    let path = plugin_library("third-party-plugin");
    let inspection = inspect_plugin(&path).expect("inspects");
    assert_eq!(inspection.abi, PluginAbi::StableAbi);
    assert_eq!(inspection.manifest.name, "TextToolsPlugin");
    assert_eq!(inspection.manifest.capabilities, ["text_stats", "keywords"]);
    assert_eq!(inspection.interface_version, orchestrator::plugin_api::API_VERSION);
}

#[tokio::test]
async fn a_failing_load_leaves_event_delivery_and_other_plugins_untouched() {
    let orch = Orchestrator::builder().build().await.expect("builds");
    orch.load_plugin(plugin_library("faulty-plugin")).await.expect("loads");
    assert!(orch.load_plugin(plugin_library("old-api-plugin")).await.is_err());
    let id = orch.register_agent(AgentConfig::default()).await.expect("registers");
    assert!(eventually(|| orch.agent_status(&id) == Some(AgentStatus::Active)).await);
    let resp = orch
        .execute(IntegrationRequest::new("faulty_echo", json!("still here")))
        .await
        .expect("served");
    assert_eq!(resp.data["echo"], "still here");
}

/// Regression guard: the dynamic loader returns the library it already has for a path it has
/// seen; a new build put in place of the old (renamed over it) must still be what is loaded.
#[tokio::test]
async fn a_new_build_at_a_loaded_path_is_what_gets_loaded() {
    let dir = std::env::temp_dir().join(format!("orch-same-path-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join(format!("plugin.{}", orchestrator::LIBRARY_EXTENSION));
    std::fs::copy(plugin_library("third-party-plugin"), &path).expect("copy");
    let orch = Orchestrator::builder().build().await.expect("builds");
    assert_eq!(orch.load_plugin(&path).await.expect("loads").name, "TextToolsPlugin");

    let staged = dir.join("staged.tmp");
    std::fs::copy(plugin_library("faulty-plugin"), &staged).expect("copy");
    std::fs::rename(&staged, &path).expect("rename over");
    let second = orch.load_plugin(&path).await.expect("loads the new file");
    assert_eq!(second.name, "FaultyPlugin");
    assert_eq!(
        second.origin,
        PluginOrigin::StableAbi { path: path.clone() },
        "the user's path is reported"
    );
    // Regression guard: each reload's copy used to stay in the temporary directory for good
    // (18 GB of them filled a CI machine's disk); once mapped, the copy is deleted.
    let copies = std::env::temp_dir().join(format!("orchestrator-plugins-{}", std::process::id()));
    // Other tests in this process load other files; this test's copies end in `-plugin.so`.
    let ours = format!("-plugin.{}", orchestrator::LIBRARY_EXTENSION);
    let left: Vec<std::path::PathBuf> = std::fs::read_dir(&copies)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.to_string_lossy().ends_with(&ours))
                .collect()
        })
        .unwrap_or_default();
    assert!(left.is_empty(), "copies left on disk: {left:?}");
    std::fs::remove_dir_all(&dir).ok();
}

/// Fault injection through the stable ABI: 1,000 calls to a dynamic plugin that panics, hangs,
/// answers 20 MiB, is slow only sometimes or fails, mixed with good calls. Each ends in its
/// answer or a clear error within the call timeout, the host keeps serving, and threads and
/// memory stay bounded; a plugin that fails every call is quarantined.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_misbehaving_dynamic_plugin_is_contained_call_after_call() {
    let orch = Orchestrator::builder()
        .legacy_mode(false)
        .call_timeout(Duration::from_millis(100))
        .quarantine(orchestrator::QuarantinePolicy::disabled())
        .build()
        .await
        .expect("builds");
    orch.load_plugin(plugin_library("faulty-plugin")).await.expect("loads");
    let call = |capability: &str| orch.execute(IntegrationRequest::new(capability, json!({"n": 1})));
    assert!(call("faulty_echo").await.expect("served").success);
    // Two rounds of 500 calls: what the first round leaves resident (the allocator keeps freed
    // memory for reuse, the 20 MiB answers included) must not grow in the second: no call leaks.
    let mut slowest = Duration::ZERO;
    let mut after_round = Vec::new();
    for i in 0..1_000 {
        if i == 500 {
            after_round.push(common::threads_and_rss_kb());
        }
        let capability = match i % 100 {
            0 => "faulty_huge",
            // Few panics: a dynamic plugin's own panic hook prints each one to stderr.
            3 | 53 => "faulty_panic",
            n if n % 25 == 7 => "faulty_hang",
            n if n % 5 == 2 => "faulty_fail",
            n if n % 5 == 3 => "faulty_flaky",
            _ => "faulty_echo",
        };
        let started = Instant::now();
        let outcome = call(capability).await;
        slowest = slowest.max(started.elapsed());
        match (capability, outcome) {
            ("faulty_echo", outcome) => assert!(outcome.expect("served").success),
            ("faulty_flaky", Ok(answer)) => assert!(answer.success),
            ("faulty_flaky" | "faulty_hang", Err(e)) => {
                assert!(e.to_string().contains("timed out after 100 ms"), "{e}")
            }
            ("faulty_huge", Err(e)) => assert!(e.to_string().contains("over the host's limit"), "{e}"),
            ("faulty_panic", Err(e)) => assert!(e.to_string().contains("panicked"), "{e}"),
            ("faulty_fail", Err(e)) => assert!(e.to_string().contains("fails every call"), "{e}"),
            (capability, outcome) => panic!("{capability}: {outcome:?}"),
        }
    }
    after_round.push(common::threads_and_rss_kb());
    assert!(slowest < Duration::from_secs(2), "slowest call: {slowest:?}");
    assert!(call("faulty_echo").await.expect("still serving").success);
    if let [Some((threads_first, rss_first)), Some((threads_second, rss_second))] = after_round[..] {
        assert!(
            threads_second <= threads_first,
            "threads {threads_first} -> {threads_second}"
        );
        assert!(
            rss_second < rss_first + 64 * 1024,
            "resident memory after 500 calls {rss_first} kB, after 1,000 {rss_second} kB"
        );
    }
    let info = orch
        .plugins()
        .into_iter()
        .find(|p| p.name == "FaultyPlugin")
        .expect("listed");
    // A panic inside a dynamic plugin is caught on its side of the ABI and comes back as an
    // error saying so: it counts among the errors.
    assert!(info.timeouts >= 40 && info.errors >= 190, "{info:?}");

    // With quarantine on, a plugin failing every call is skipped after five failures.
    let orch = Orchestrator::builder()
        .legacy_mode(false)
        .call_timeout(Duration::from_millis(100))
        .build()
        .await
        .expect("builds");
    orch.load_plugin(plugin_library("faulty-plugin")).await.expect("loads");
    for _ in 0..10 {
        let _ = orch.execute(IntegrationRequest::new("faulty_fail", json!({}))).await;
    }
    let info = orch
        .plugins()
        .into_iter()
        .find(|p| p.name == "FaultyPlugin")
        .expect("listed");
    assert_eq!(info.circuit.state, orchestrator::CircuitState::Open);
    assert_eq!(info.calls, 5, "quarantined after five failures");
    let err = orch
        .execute(IntegrationRequest::new("faulty_echo", json!({})))
        .await
        .expect_err("the whole plugin is quarantined");
    assert!(err.to_string().contains("quarantined"), "{err}");
}
