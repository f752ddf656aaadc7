//! Dispatch through each way a plugin can be linked, in one criterion group: the same small
//! `text_stats` request to the example plugin called directly (the baseline), through
//! `execute` when linked statically, through `execute` when loaded as a stable-ABI dynamic
//! library (and that library's plugin called directly, to separate the ABI's cost from
//! dispatch's), and to the C plugin of `examples/c-plugin` (comparable work: it counts the
//! words of the same text) through the legacy C ABI, both called directly (its manifest
//! promises `nonblocking`) and through the blocking pool (built without that promise).
//!
//! Run it with `cargo bench --bench plugin_abi` (needs a C compiler, `cc`).

use criterion::{Criterion, criterion_group, criterion_main};
use orchestrator::open_plugin;
use orchestrator::prelude::*;
use serde_json::json;
use std::hint::black_box;
use std::path::{Path, PathBuf};
use third_party_plugin::TextToolsPlugin;

/// The example plugin's library, built by `cargo bench` beside this bench binary.
fn plugin_library() -> PathBuf {
    let file = format!(
        "{}third_party_plugin{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    );
    let exe = std::env::current_exe().expect("bench binary path");
    let deps = exe.parent().expect("deps dir");
    [deps.join(&file), deps.parent().unwrap_or(deps).join(&file)]
        .into_iter()
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{file} not found beside {}: run through `cargo bench`", exe.display()))
}

/// Compiles the C example plugin with `cc -O2` and `defines` into a temporary file.
fn c_plugin(name: &str, defines: &[&str]) -> PathBuf {
    let out = std::env::temp_dir().join(format!("orch-bench-{name}-{}.so", std::process::id()));
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/c-plugin/plugin.c");
    let status = std::process::Command::new(std::env::var("CC").unwrap_or_else(|_| "cc".into()))
        .args(["-shared", "-fPIC", "-O2", "-o"])
        .arg(&out)
        .arg(&source)
        .args(defines)
        .status()
        .expect("a C compiler (cc) runs");
    assert!(status.success(), "compiling {} failed", source.display());
    out
}

fn bench_abi(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let text = json!({"text": "the quick brown fox jumps over the lazy dog"});
    let request = IntegrationRequest::new("text_stats", text.clone());
    let c_request = IntegrationRequest::new("c_text_stats", text);

    let direct = TextToolsPlugin::default();
    let static_orch = rt
        .block_on(Orchestrator::builder().plugin(TextToolsPlugin::default()).build())
        .expect("builds");
    let dylib = plugin_library();
    let dynamic_orch = rt
        .block_on(Orchestrator::builder().load_plugin(&dylib).build())
        .expect("loads the dylib");
    let opened = open_plugin(&dylib).expect("opens the dylib");
    let c_path = c_plugin("c-plugin", &[]);
    let c_blocking_path = c_plugin("c-plugin-blocking", &["-DORCH_BLOCKING_CALLS"]);
    let c_orch = rt
        .block_on(Orchestrator::builder().load_plugin(&c_path).build())
        .expect("loads the C plugin");
    let c_blocking_orch = rt
        .block_on(Orchestrator::builder().load_plugin(&c_blocking_path).build())
        .expect("loads the C plugin");

    let mut group = c.benchmark_group("dispatch_abi");
    group.bench_function("static_direct_call", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(direct.process_request(request.clone()).await.expect("ok")) });
    });
    group.bench_function("static_execute", |b| {
        b.to_async(&rt).iter(|| static_orch.execute(request.clone()));
    });
    group.bench_function("stable_abi_direct_call", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(opened.plugin().process_request(request.clone()).await.expect("ok")) });
    });
    group.bench_function("stable_abi_execute", |b| {
        b.to_async(&rt).iter(|| dynamic_orch.execute(request.clone()));
    });
    group.bench_function("c_abi_execute", |b| {
        b.to_async(&rt).iter(|| c_orch.execute(c_request.clone()));
    });
    group.bench_function("c_abi_execute_blocking_pool", |b| {
        b.to_async(&rt).iter(|| c_blocking_orch.execute(c_request.clone()));
    });
    group.finish();
    std::fs::remove_file(&c_path).ok();
    std::fs::remove_file(&c_blocking_path).ok();
}

criterion_group!(benches, bench_abi);
criterion_main!(benches);
