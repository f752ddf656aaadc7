//! Loading a third-party plugin from a shared library at run time: the plugin in
//! `examples/third-party-plugin` is built as a `cdylib`, opened through the stable ABI, checked
//! (plugin-api version and type layout) before any of its code runs, registered, and called
//! like any other plugin.
//!
//! Run it with:
//!
//! ```text
//! cargo build -p third-party-plugin
//! cargo run --example load_plugin                      # loads target/debug/libthird_party_plugin.so
//! cargo run --example load_plugin -- path/to/libplugin.so
//! ```

use orchestrator::prelude::*;
use serde_json::json;
use std::path::PathBuf;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args_os().nth(1).map(PathBuf::from).unwrap_or_else(|| {
        // Cargo's target directory: `CARGO_TARGET_DIR` when set, else `target/` here.
        std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"))
            .join("debug")
            .join(format!(
                "{}third_party_plugin{}",
                std::env::consts::DLL_PREFIX,
                std::env::consts::DLL_SUFFIX
            ))
    });
    if !path.is_file() {
        eprintln!(
            "{} does not exist: build the example plugin first with `cargo build -p third-party-plugin`",
            path.display()
        );
        std::process::exit(1);
    }

    let orchestrator = Orchestrator::builder()
        .configure("TextToolsPlugin", json!({"top": 3}))
        .load_plugin(&path)
        .build()
        .await?;
    let catalog = orchestrator.catalog();
    let plugin = &catalog.plugins[0];
    println!("loaded {} {} from {}", plugin.name, plugin.version, path.display());
    println!("capabilities: {}", orchestrator.capabilities().join(", "));

    let text = "Plugins extend hosts. Hosts load plugins, and plugins serve capabilities to hosts.";
    let keywords = orchestrator
        .execute(IntegrationRequest::new("keywords", json!({ "text": text })))
        .await?;
    println!(
        "keywords (served by {}): {}",
        keywords.served_by, keywords.data["keywords"]
    );
    let stats = orchestrator
        .execute(IntegrationRequest::new("text_stats", json!({ "text": text })))
        .await?;
    println!("text_stats: {}", stats.data);
    Ok(())
}
