//! `HookIntegrationPlugin` as a dynamic library, for hosts that load plugins at run time.
//!
//! Build it with `cargo build -p plugin-hooks --example hooks_plugin`; load
//! `target/debug/examples/libhooks_plugin.so` with `Orchestrator::load_plugin`. Hooks are then
//! registered through the `lifecycle_hooks` capability (Rust closures cannot cross the
//! library boundary).

plugin_api::export_plugin!(plugin_hooks::HookIntegrationPlugin::default);
