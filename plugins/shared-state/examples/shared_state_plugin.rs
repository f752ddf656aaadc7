//! `SharedStatePlugin` as a dynamic library, for hosts that load plugins at run time.
//!
//! Build it with `cargo build -p plugin-shared-state --example shared_state_plugin`; load
//! `target/debug/examples/libshared_state_plugin.so` with `Orchestrator::load_plugin`.

plugin_api::export_plugin!(plugin_shared_state::SharedStatePlugin::default);
