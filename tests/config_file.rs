//! The repository's `orchestrator.toml`: it loads with all nine default plugins, and a misspelt
//! key in any of its tables (each plugin's, `[orchestrator]`, `[orchestrator.pipeline]`) or a
//! table for a plugin that is not registered fails the build with a message naming the key and
//! the table's owner.

use orchestrator::prelude::*;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

/// The file under test, as the repository ships it.
const CONFIG: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/orchestrator.toml");

/// The audit log the security plugin would create, on first use, in the working directory
/// (which `cargo test` sets to the package root): loading the file must not create it.
const DEFAULT_AUDIT_LOG: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/orchestrator-audit.log");

fn repository_config() -> String {
    std::fs::read_to_string(CONFIG).unwrap_or_else(|e| panic!("cannot read {CONFIG}: {e}"))
}

/// A copy of a configuration in the system's temporary directory, under a name no other test
/// (or test process) uses; removed when dropped.
struct TempConfig {
    path: PathBuf,
}

impl TempConfig {
    fn new(label: &str, text: &str) -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "orchestrator-config-file-test-{}-{}-{label}.toml",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
        Self { path }
    }
}

impl Drop for TempConfig {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// `text` with `line` inserted right after the table header `header`, which must be a line of
/// its own, exactly once in the file (so the key lands in that table and nowhere else).
fn with_line_after(text: &str, header: &str, line: &str) -> String {
    let count = text.lines().filter(|l| l.trim_end() == header).count();
    assert_eq!(
        count, 1,
        "the header line `{header}` must appear exactly once in {CONFIG}, found {count}"
    );
    let mut out = String::with_capacity(text.len() + line.len() + 1);
    for l in text.split_inclusive('\n') {
        out.push_str(l);
        if l.trim_end() == header {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

async fn build_from(path: &Path) -> Result<Orchestrator, OrchestratorError> {
    Orchestrator::builder()
        .with_default_plugins()
        .config_file(path)
        .build()
        .await
}

/// Builds from a copy of the file with `key = value` added right after `header`, and checks the
/// build fails with a message naming `key` and `owner`.
async fn assert_misspelt_key_refused(header: &str, key: &str, value: &str, owner: &str) {
    let text = with_line_after(&repository_config(), header, &format!("{key} = {value}"));
    let copy = TempConfig::new(key, &text);
    match build_from(&copy.path).await {
        Ok(_) => panic!("`{key}` in `{header}` was accepted; an unknown key must fail the build"),
        Err(e) => {
            let message = e.to_string();
            assert!(
                message.contains(key) && message.contains(owner),
                "the error for the misspelt `{key}` in `{header}` must name `{key}` and `{owner}`: {message}"
            );
        }
    }
}

#[tokio::test]
async fn the_repository_file_loads_with_all_nine_default_plugins() {
    let audit_log_existed = Path::new(DEFAULT_AUDIT_LOG).exists();
    let orch = match build_from(Path::new(CONFIG)).await {
        Ok(orch) => orch,
        Err(e) => panic!("{CONFIG} does not load with the default plugins: {e}"),
    };
    assert_eq!(orch.capabilities().len(), 27, "{:?}", orch.capabilities());
    assert_eq!(orch.catalog().plugins.len(), 9);

    // The file's rbac example is in force: an operator may submit tasks, a viewer may not.
    // (No audit record is written, so no audit log is created in the repository.)
    for (role, allowed) in [("operator", true), ("viewer", false)] {
        let answer = orch
            .execute(IntegrationRequest::new(
                "rbac_enforcement",
                json!({"roles": [role], "resource": "tasks", "action": "submit"}),
            ))
            .await
            .expect("rbac_enforcement answers");
        assert_eq!(answer.served_by, "SecurityIntegrationPlugin");
        assert_eq!(answer.data["allowed"], allowed, "{role}: {}", answer.data);
    }

    if !audit_log_existed {
        assert!(
            !Path::new(DEFAULT_AUDIT_LOG).exists(),
            "loading the configuration created {DEFAULT_AUDIT_LOG}"
        );
    }
}

#[tokio::test]
async fn a_misspelt_key_of_the_workflow_plugin_is_refused() {
    assert_misspelt_key_refused("[EnhancedWorkflowPlugin]", "comands", "{}", "EnhancedWorkflowPlugin").await;
}

#[tokio::test]
async fn a_misspelt_key_of_the_routing_plugin_is_refused() {
    assert_misspelt_key_refused("[ContextAwareRoutingPlugin]", "sead", "42", "ContextAwareRoutingPlugin").await;
    assert_misspelt_key_refused(
        "[ContextAwareRoutingPlugin.learning]",
        "forget_afer",
        "10",
        "ContextAwareRoutingPlugin",
    )
    .await;
}

#[tokio::test]
async fn a_misspelt_key_of_the_security_plugin_is_refused() {
    assert_misspelt_key_refused(
        "[SecurityIntegrationPlugin]",
        "jwt_leeway_s",
        "30",
        "SecurityIntegrationPlugin",
    )
    .await;
}

#[tokio::test]
async fn a_misspelt_key_of_the_shared_state_plugin_is_refused() {
    assert_misspelt_key_refused("[SharedStatePlugin]", "backnd", "\"memory\"", "SharedStatePlugin").await;
}

#[tokio::test]
async fn a_misspelt_key_of_the_task_coordination_plugin_is_refused() {
    assert_misspelt_key_refused("[TaskCoordinationPlugin]", "max_queud", "10", "TaskCoordinationPlugin").await;
}

#[tokio::test]
async fn a_misspelt_key_of_the_context_plugin_is_refused() {
    assert_misspelt_key_refused(
        "[ContextManagementPlugin]",
        "idle_sleep_msx",
        "5",
        "ContextManagementPlugin",
    )
    .await;
}

#[tokio::test]
async fn a_misspelt_key_of_the_load_balancing_plugin_is_refused() {
    assert_misspelt_key_refused(
        "[LoadBalancingPlugin]",
        "default_stratgy",
        "\"round_robin\"",
        "LoadBalancingPlugin",
    )
    .await;
}

#[tokio::test]
async fn a_misspelt_key_of_the_performance_plugin_is_refused() {
    assert_misspelt_key_refused(
        "[PerformanceMonitoringPlugin]",
        "window_secs",
        "60",
        "PerformanceMonitoringPlugin",
    )
    .await;
}

#[tokio::test]
async fn a_misspelt_key_of_the_hooks_plugin_is_refused() {
    assert_misspelt_key_refused(
        "[HookIntegrationPlugin]",
        "hook_timout_ms",
        "250",
        "HookIntegrationPlugin",
    )
    .await;
}

#[tokio::test]
async fn a_misspelt_key_of_the_host_table_is_refused() {
    assert_misspelt_key_refused("[orchestrator]", "call_timout_ms", "2000", "orchestrator").await;
}

#[tokio::test]
async fn a_misspelt_key_of_the_pipeline_table_is_refused() {
    assert_misspelt_key_refused("[orchestrator.pipeline]", "max_atempts", "3", "orchestrator").await;
}

#[tokio::test]
async fn a_table_for_a_plugin_that_is_not_registered_is_refused_naming_it() {
    let text = format!("{}\n[ContextManagmentPlugin]\nidle_sleep_ms = 5\n", repository_config());
    let copy = TempConfig::new("unregistered", &text);
    match build_from(&copy.path).await {
        Ok(_) => panic!("a table for the unregistered `ContextManagmentPlugin` was accepted"),
        Err(e) => {
            let message = e.to_string();
            assert!(
                matches!(
                    &e,
                    OrchestratorError::Config(orchestrator::ConfigError::UnknownPlugin { plugin, .. })
                        if plugin == "ContextManagmentPlugin"
                ),
                "expected ConfigError::UnknownPlugin for `ContextManagmentPlugin`: {message}"
            );
            assert!(message.contains("ContextManagmentPlugin"), "{message}");
        }
    }
}
