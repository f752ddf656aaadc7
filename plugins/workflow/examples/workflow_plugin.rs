//! `EnhancedWorkflowPlugin` as a dynamic library, for hosts that load plugins at run time.
//!
//! Build it with `cargo build -p plugin-workflow --example workflow_plugin`; load
//! `target/debug/examples/libworkflow_plugin.so` with `Orchestrator::load_plugin`.

plugin_api::export_plugin!(plugin_workflow::EnhancedWorkflowPlugin::default);
