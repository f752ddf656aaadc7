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
    assert!(stdout.contains("stable ABI (abi_stable), plugin-api 0.1.1"), "{stdout}");
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
        stderr.contains("built against plugin-api 0.0.1, this host needs plugin-api 0.1.1"),
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
