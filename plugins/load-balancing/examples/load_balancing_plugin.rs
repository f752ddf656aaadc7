//! `LoadBalancingPlugin` as a dynamic library, for hosts that load plugins at run time.
//!
//! Build it with `cargo build -p plugin-load-balancing --example load_balancing_plugin`; load
//! `target/debug/examples/libload_balancing_plugin.so` with `Orchestrator::load_plugin`.

plugin_api::export_plugin!(plugin_load_balancing::LoadBalancingPlugin::default);
