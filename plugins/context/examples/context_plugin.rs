//! `ContextManagementPlugin` as a dynamic library, for hosts that load plugins at run time.
//!
//! Build it with `cargo build -p plugin-context --example context_plugin`; load
//! `target/debug/examples/libcontext_plugin.so` with `Orchestrator::load_plugin`.

plugin_api::export_plugin!(plugin_context::ContextManagementPlugin::default);
