//! The `orchestrator` command-line tool, run as a user would run it.

mod common;

use std::process::Command;

fn orchestrator(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_orchestrator"))
        .args(args)
        .output()
        .expect("runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn inspect_describes_a_loadable_plugin() {
    let path = common::plugin_library("third-party-plugin");
    let (code, stdout, _) = orchestrator(&["plugin", "inspect", path.to_str().expect("utf-8 path")]);
    assert_eq!(code, 0, "{stdout}");
    let abi = format!("stable ABI (abi_stable), plugin-api {}", env!("CARGO_PKG_VERSION"));
    assert!(stdout.contains(&abi), "{stdout}");
    assert!(stdout.contains("TextToolsPlugin 0.3.0"), "{stdout}");
    assert!(stdout.contains("capabilities:  text_stats, keywords"), "{stdout}");

    let (code, stdout, _) = orchestrator(&["plugin", "inspect", "--json", path.to_str().expect("utf-8 path")]);
    assert_eq!(code, 0);
    let value: serde_json::Value = serde_json::from_str(&stdout).expect("JSON");
    assert_eq!(value["loadable"], true);
    assert_eq!(value["plugin"]["abi"], "stable_abi");
}

#[test]
fn inspect_fails_with_a_clear_message_when_the_host_cannot_load_it() {
    let old = common::plugin_library("old-api-plugin");
    let (code, _, stderr) = orchestrator(&["plugin", "inspect", old.to_str().expect("utf-8 path")]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains(&format!(
            "built against plugin-api 0.0.1, this host needs plugin-api {}",
            env!("CARGO_PKG_VERSION")
        )),
        "{stderr}"
    );
    let (code, _, stderr) = orchestrator(&["plugin", "inspect", "/no/such/plugin.so"]);
    assert_eq!(code, 1);
    assert!(stderr.contains("/no/such/plugin.so"), "{stderr}");
    let mismatch = common::plugin_library("layout-mismatch-plugin");
    let (code, _, short) = orchestrator(&["plugin", "inspect", mismatch.to_str().expect("utf-8 path")]);
    assert_eq!(code, 1);
    assert!(short.contains("--verbose"), "{short}");
    let (_, _, long) = orchestrator(&["plugin", "inspect", "--verbose", mismatch.to_str().expect("utf-8 path")]);
    assert!(long.lines().count() > short.lines().count() + 5, "{long}");
    let (code, _, _) = orchestrator(&["plugin", "inspect"]);
    assert_eq!(code, 2, "usage error");
}

#[test]
fn check_runs_the_conformance_kit() {
    let path = common::plugin_library("third-party-plugin");
    let (code, stdout, _) = orchestrator(&["plugin", "check", path.to_str().expect("utf-8 path")]);
    assert_eq!(code, 0, "{stdout}");
    assert!(stdout.ends_with("conformant: yes\n"), "{stdout}");
    let (code, stdout, _) = orchestrator(&[
        "plugin",
        "check",
        path.to_str().expect("utf-8 path"),
        "--config",
        r#"{"top": "many"}"#,
    ]);
    assert_eq!(code, 1);
    assert!(stdout.contains("FAIL initialize"), "{stdout}");
    let (code, _, stderr) = orchestrator(&["plugin", "check", path.to_str().expect("utf-8 path"), "--config", "{"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("--config is not valid JSON"), "{stderr}");
}

/// A fresh, empty directory under the system's temporary directory, for one test.
fn temp_dir(name: &str) -> TempDir {
    let dir = std::env::temp_dir().join(format!("orchestrator-cli-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    TempDir(dir)
}

/// A temporary directory, removed when dropped (each run used to leave its directories, one
/// with a copy of a plugin library, in the system's temporary directory).
struct TempDir(std::path::PathBuf);

impl std::ops::Deref for TempDir {
    type Target = std::path::Path;
    fn deref(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Writes `text` to `name` in a fresh temporary directory; returns the directory (keep it
/// while the file is used) and the file's path as text.
fn temp_file(test: &str, name: &str, text: &str) -> (TempDir, String) {
    let dir = temp_dir(test);
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write temp file");
    let path = path.to_str().expect("utf-8 path").to_owned();
    (dir, path)
}

#[test]
fn help_lists_every_command_with_examples_and_exit_codes() {
    let (code, stdout, _) = orchestrator(&["--help"]);
    assert_eq!(code, 0);
    for command in ["catalog", "health", "submit", "demo", "plugin", "--config"] {
        assert!(stdout.contains(command), "--help does not mention {command}: {stdout}");
    }
    assert!(stdout.contains("Examples:"), "{stdout}");
    assert!(stdout.contains("Exit codes:"), "{stdout}");
    let (code, stdout, _) = orchestrator(&["plugin", "--help"]);
    assert_eq!(code, 0);
    assert!(stdout.contains("inspect") && stdout.contains("check"), "{stdout}");
}

#[test]
fn catalog_lists_the_default_plugins() {
    let (code, stdout, stderr) = orchestrator(&["catalog", "--json"]);
    assert_eq!(code, 0, "{stderr}");
    let catalog: serde_json::Value = serde_json::from_str(&stdout).expect("JSON");
    assert_eq!(catalog["plugins"].as_array().map(Vec::len), Some(9), "{stdout}");
    assert_eq!(catalog["capabilities"].as_array().map(Vec::len), Some(27), "{stdout}");
    let capabilities: usize = catalog["plugins"]
        .as_array()
        .expect("plugins")
        .iter()
        .map(|p| p["capabilities"].as_array().map_or(0, Vec::len))
        .sum();
    assert_eq!(capabilities, 27);

    let (code, stdout, _) = orchestrator(&["catalog"]);
    assert_eq!(code, 0);
    assert!(stdout.contains("ContextAwareRoutingPlugin"), "{stdout}");
    assert!(stdout.contains("semantic_routing"), "{stdout}");
    assert!(stdout.contains("9 plugins, 27 capabilities"), "{stdout}");
}

#[test]
fn health_exits_0_when_every_plugin_is_healthy() {
    let (code, stdout, stderr) = orchestrator(&["health"]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert_eq!(
        stdout.lines().filter(|l| l.ends_with("  healthy")).count(),
        9,
        "{stdout}"
    );
    let (code, stdout, _) = orchestrator(&["health", "--json"]);
    assert_eq!(code, 0);
    let health: serde_json::Value = serde_json::from_str(&stdout).expect("JSON");
    assert_eq!(health["SharedStatePlugin"]["state"], "healthy", "{stdout}");
}

#[test]
fn submit_runs_a_task_through_the_pipeline() {
    let (_dir, agents) = temp_file(
        "submit",
        "agents.json",
        r#"[{"id": "db-1", "capabilities": ["database"], "capacity": 2},
            {"id": "web-1", "capabilities": ["frontend"], "capacity": 2}]"#,
    );
    let (code, stdout, stderr) = orchestrator(&[
        "submit",
        "migrate the orders table",
        "--capabilities",
        "database",
        "--agents",
        &agents,
        "--json",
    ]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).expect("JSON");
    assert_eq!(report["status"], "succeeded", "{stdout}");
    assert_eq!(report["agent"], "db-1", "{stdout}");
    assert_eq!(report["attempts"], 1, "{stdout}");
    let steps: Vec<&str> = report["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .filter_map(|s| s["step"].as_str())
        .collect();
    assert!(steps.contains(&"route") || steps.contains(&"queue"), "{steps:?}");
    assert!(steps.contains(&"execute"), "{steps:?}");

    // As text, with the built-in fleet: the outcome, the dry run said, and the trace.
    let (code, stdout, _) = orchestrator(&["submit", "migrate the orders table", "--priority", "-1"]);
    assert_eq!(code, 0, "{stdout}");
    assert!(stdout.contains("status:    succeeded"), "{stdout}");
    assert!(stdout.contains("dry run"), "{stdout}");
    assert!(stdout.contains("execute") && stdout.contains("executor"), "{stdout}");

    // A task no agent can take is refused: exit 1, the reason on stderr.
    let (code, _, stderr) = orchestrator(&["submit", "teleport me", "--capabilities", "teleport"]);
    assert_eq!(code, 1);
    assert!(stderr.contains("teleport"), "{stderr}");
}

#[test]
fn submit_names_a_missing_or_malformed_agents_file() {
    let missing = std::env::temp_dir().join("orchestrator-cli-no-such-agents.json");
    let missing = missing.to_str().expect("utf-8 path");
    let (code, stdout, stderr) = orchestrator(&["submit", "anything", "--agents", missing]);
    assert_eq!(code, 1, "{stdout}");
    assert!(stderr.contains(missing), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");

    let (_malformed_dir, malformed) = temp_file("malformed-agents", "agents.json", r#"{"id": "db-1"}"#);
    let (code, _, stderr) = orchestrator(&["submit", "anything", "--agents", &malformed]);
    assert_eq!(code, 1);
    assert!(stderr.contains(&malformed) && stderr.contains("JSON array"), "{stderr}");
}

#[test]
fn demo_accounts_for_every_task() {
    let (code, stdout, stderr) = orchestrator(&["demo", "--agents", "8", "--tasks", "200", "--json"]);
    assert_eq!(code, 0, "{stderr}");
    let figures: serde_json::Value = serde_json::from_str(&stdout).expect("JSON");
    let count = |key: &str| figures[key].as_u64().unwrap_or_else(|| panic!("{key} in {stdout}"));
    assert_eq!(count("tasks"), 200);
    assert_eq!(count("succeeded") + count("failed"), 200, "{stdout}");
    let rate = figures["routing_success_rate"].as_f64().expect("routing_success_rate");
    assert!((0.0..=1.0).contains(&rate), "{stdout}");
    assert!(
        figures["mean_attempts"].as_f64().expect("mean_attempts") >= 1.0,
        "{stdout}"
    );
    let p50 = figures["latency_ms"]["p50"].as_f64().expect("p50");
    let p99 = figures["latency_ms"]["p99"].as_f64().expect("p99");
    assert!(p50 <= p99, "{stdout}");

    let (code, stdout, _) = orchestrator(&["demo", "--agents", "4", "--tasks", "20", "--concurrency", "4"]);
    assert_eq!(code, 0);
    for figure in [
        "tasks/s",
        "succeeded",
        "p50",
        "p90",
        "p99",
        "mean attempts",
        "routing success",
    ] {
        assert!(stdout.contains(figure), "no {figure}: {stdout}");
    }
    let (code, _, _) = orchestrator(&["demo", "--failure-rate", "1.5"]);
    assert_eq!(code, 2, "usage error");
}

#[test]
fn a_bad_config_file_is_named_with_its_key() {
    let (_dir, config) = temp_file(
        "bad-config",
        "orchestrator.toml",
        "[orchestrator]\nno_such_setting = 1\n",
    );
    for args in [
        vec!["--config", config.as_str(), "catalog"],
        vec!["health", "--config", config.as_str()],
    ] {
        let (code, stdout, stderr) = orchestrator(&args);
        assert_eq!(code, 1, "{args:?}: {stdout}");
        assert!(stderr.contains("no_such_setting"), "{stderr}");
        assert!(stderr.contains(&config), "{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    let missing = std::env::temp_dir().join("orchestrator-cli-no-such-config.toml");
    let missing = missing.to_str().expect("utf-8 path");
    let (code, _, stderr) = orchestrator(&["--config", missing, "catalog"]);
    assert_eq!(code, 1);
    assert!(stderr.contains(missing), "{stderr}");
}

#[test]
fn check_dir_checks_every_library_in_it() {
    let dir = temp_dir("check-dir");
    let good = common::plugin_library("third-party-plugin");
    let good_copy = dir.join(good.file_name().expect("file name"));
    std::fs::copy(&good, &good_copy).expect("copy the plugin");
    let junk = dir.join(format!("junk.{}", orchestrator::LIBRARY_EXTENSION));
    std::fs::write(&junk, b"not a library").expect("write junk");
    std::fs::write(dir.join("README.txt"), b"not checked").expect("write readme");

    let (code, stdout, stderr) = orchestrator(&["plugin", "check", dir.to_str().expect("utf-8 path")]);
    assert_eq!(code, 1, "{stdout}{stderr}");
    let ok = stdout
        .lines()
        .find(|l| l.starts_with("ok"))
        .unwrap_or_else(|| panic!("no ok line: {stdout}"));
    assert!(ok.contains("TextToolsPlugin 0.3.0"), "{stdout}");
    assert!(ok.contains(good_copy.to_str().expect("utf-8 path")), "{stdout}");
    let fail = stdout
        .lines()
        .find(|l| l.starts_with("FAIL"))
        .unwrap_or_else(|| panic!("no FAIL line: {stdout}"));
    assert!(fail.contains(junk.to_str().expect("utf-8 path")), "{stdout}");
    assert!(!stdout.contains("README"), "{stdout}");
    assert!(stdout.contains("1 of 2 libraries conformant"), "{stdout}");
}
