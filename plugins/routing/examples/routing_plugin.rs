//! `ContextAwareRoutingPlugin` as a dynamic library, for hosts that load plugins at run time.
//!
//! Build it with `cargo build -p plugin-routing --example routing_plugin`; load
//! `target/debug/examples/librouting_plugin.so` with `Orchestrator::load_plugin`.

plugin_api::export_plugin!(plugin_routing::ContextAwareRoutingPlugin::default);
