//! `TaskCoordinationPlugin` as a dynamic library, for hosts that load plugins at run time.
//!
//! Build it with `cargo build -p plugin-task-coordination --example task_coordination_plugin`; load
//! `target/debug/examples/libtask_coordination_plugin.so` with `Orchestrator::load_plugin`.

plugin_api::export_plugin!(plugin_task_coordination::TaskCoordinationPlugin::default);
