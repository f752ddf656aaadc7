//! `catalog` and `health`: what the orchestrator hosts, and how its plugins are.

use crate::table::Table;
use crate::{EXIT_USAGE_OR_UNHEALTHY, Outcome, build, builder};
use orchestrator::{HealthStatus, PluginOrigin};
use std::path::Path;
use std::process::ExitCode;

/// `catalog [--json]`: the plugins, then the capabilities with their providers.
pub(crate) async fn catalog(config: Option<&Path>, json: bool) -> Outcome {
    let orchestrator = build(builder(config), config).await?;
    let catalog = orchestrator.catalog();
    if json {
        println!("{}", serde_json::to_string_pretty(&catalog)?);
        return Ok(ExitCode::SUCCESS);
    }
    let mut plugins = Table::new(["plugin", "version", "origin", "capabilities", "health"]);
    for plugin in &catalog.plugins {
        plugins.row([
            plugin.name.clone(),
            plugin.version.clone(),
            origin(&plugin.origin),
            plugin.capabilities.join(", "),
            plugin
                .health
                .as_ref()
                .map_or_else(|| "not checked".to_owned(), HealthStatus::to_string),
        ]);
    }
    print!("{plugins}");
    println!();
    let mut capabilities = Table::new(["capability", "providers", "enabled", "legacy fallback"]);
    for capability in &catalog.capabilities {
        capabilities.row([
            capability.name.clone(),
            if capability.providers.is_empty() {
                "(none)".to_owned()
            } else {
                capability.providers.join(", ")
            },
            yes_no(capability.enabled),
            yes_no(capability.legacy_fallback),
        ]);
    }
    print!("{capabilities}");
    println!();
    println!(
        "{} plugins, {} capabilities; legacy mode {}",
        catalog.plugins.len(),
        catalog.capabilities.len(),
        if catalog.legacy_mode { "on" } else { "off" }
    );
    Ok(ExitCode::SUCCESS)
}

/// `health [--json]`: every plugin's health check; exit 2 unless all are healthy.
pub(crate) async fn health(config: Option<&Path>, json: bool) -> Outcome {
    let orchestrator = build(builder(config), config).await?;
    let report = orchestrator.health().await;
    let all_healthy = report.values().all(HealthStatus::is_healthy);
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        let width = report.keys().map(|name| name.chars().count()).max().unwrap_or(0);
        for (plugin, status) in &report {
            println!("{plugin:<width$}  {status}");
        }
        let unwell = report.values().filter(|s| !s.is_healthy()).count();
        if all_healthy {
            println!("all {} plugins healthy", report.len());
        } else {
            println!("{unwell} of {} plugins not healthy", report.len());
        }
    }
    Ok(if all_healthy {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_USAGE_OR_UNHEALTHY)
    })
}

/// How a plugin came in, in a few words.
fn origin(origin: &PluginOrigin) -> String {
    match origin {
        PluginOrigin::Static => "static".to_owned(),
        PluginOrigin::StableAbi { path } => format!("stable ABI {}", path.display()),
        PluginOrigin::CAbi { path } => format!("C ABI {}", path.display()),
        _ => "other".to_owned(),
    }
}

/// `yes` or `no`.
fn yes_no(value: bool) -> String {
    if value { "yes" } else { "no" }.to_owned()
}
