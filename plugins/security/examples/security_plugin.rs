//! `SecurityIntegrationPlugin` as a dynamic library, for hosts that load plugins at run time.
//!
//! Build it with `cargo build -p plugin-security --example security_plugin`; load
//! `target/debug/examples/libsecurity_plugin.so` with `Orchestrator::load_plugin`.

plugin_api::export_plugin!(plugin_security::SecurityIntegrationPlugin::default);
