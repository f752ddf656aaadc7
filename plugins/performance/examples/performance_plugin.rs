//! `PerformanceMonitoringPlugin` as a dynamic library, for hosts that load plugins at run time.
//!
//! Build it with `cargo build -p plugin-performance --example performance_plugin`; load
//! `target/debug/examples/libperformance_plugin.so` with `Orchestrator::load_plugin`. Loaded
//! this way the plugin hears every operation as JSON across the stable ABI (about a
//! microsecond per operation); link it statically where that matters.

plugin_api::export_plugin!(plugin_performance::PerformanceMonitoringPlugin::default);
