//! The conformance kit run against a real plugin in both its forms: linked statically, and
//! loaded from its dynamic library through the stable ABI. Both must pass the same checks with
//! the same results.

mod common;

use orchestrator::open_plugin;
use orchestrator::plugin_api::testkit::{CheckOptions, check_plugin};
use serde_json::json;
use third_party_plugin::TextToolsPlugin;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_static_and_dynamic_forms_of_a_real_plugin_conform_alike() {
    let static_report = check_plugin(&TextToolsPlugin::default(), CheckOptions::default()).await;
    static_report.assert_conformant();

    let library = open_plugin(&common::plugin_library("third-party-plugin")).expect("opens");
    let dynamic_report = check_plugin(library.plugin(), CheckOptions::default()).await;
    dynamic_report.assert_conformant();

    assert_eq!(
        static_report, dynamic_report,
        "the ABI changes nothing a host can observe"
    );
    assert!(static_report.checks.len() >= 16, "{static_report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configuration_is_checked_through_the_kit_too() {
    let library = open_plugin(&common::plugin_library("third-party-plugin")).expect("opens");
    let report = check_plugin(
        library.plugin(),
        CheckOptions::default().with_config(json!({"colour": "blue"})),
    )
    .await;
    let init = report.checks.iter().find(|c| c.name == "initialize").expect("checked");
    assert!(!init.passed);
    assert!(init.detail.contains("unknown configuration key `colour`"), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_misbehaving_fixture_fails_the_kit_without_taking_the_test_down() {
    let library = open_plugin(&common::plugin_library("faulty-plugin")).expect("opens");
    let options = CheckOptions::default().with_timeout(std::time::Duration::from_millis(200));
    let report = check_plugin(library.plugin(), options).await;
    assert!(!report.is_conformant());
    // `faulty_echo` accepts anything: the kit says so.
    assert!(
        report.failures().any(|c| c.name == "`faulty_echo` refuses data 42"),
        "{report}"
    );
    // `faulty_panic` panics inside the library: contained there, reported as an error here.
    let panic = report
        .checks
        .iter()
        .find(|c| c.name == "`faulty_panic` refuses data 42")
        .expect("checked");
    assert!(panic.detail.contains("plugin panicked"), "{report}");
    // `faulty_hang` is cut off by the kit's timeout.
    assert!(
        report
            .failures()
            .any(|c| c.name.starts_with("`faulty_hang`") && c.detail.contains("within 200 ms")),
        "{report}"
    );
}
