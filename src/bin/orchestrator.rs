//! `orchestrator`: the command-line tool. Today it looks at plugin libraries before you trust
//! them to a running host.
//!
//! ```text
//! orchestrator plugin inspect PATH [--verbose] [--json]   which ABI, interface version, name, version,
//!                                                          capabilities; exit 1 if this host cannot load it
//! orchestrator plugin check PATH [--config JSON]          run the conformance kit; exit 1 if it fails
//! ```
//!
//! Build and run it with `cargo run --features cli --bin orchestrator -- plugin inspect PATH`.

use clap::{Parser, Subcommand};
use orchestrator::plugin_api::testkit::{CheckOptions, block_on, check_plugin};
use orchestrator::{LoadError, PluginAbi, inspect_plugin, open_plugin};
use std::path::PathBuf;
use std::process::ExitCode;

/// Hosts capability plugins and orchestrates agents; this tool inspects and checks plugins.
#[derive(Debug, Parser)]
#[command(name = "orchestrator", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Work with plugin libraries.
    #[command(subcommand)]
    Plugin(PluginCommand),
}

#[derive(Debug, Subcommand)]
enum PluginCommand {
    /// Say what a library exports and whether this host can load it (exit 1 if it cannot).
    Inspect {
        /// The shared library (`.so`, `.dylib`, `.dll`).
        path: PathBuf,
        /// On an incompatible layout, print abi_stable's full report.
        #[arg(long)]
        verbose: bool,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Run the conformance kit against a library's plugin (exit 1 if any check fails).
    Check {
        /// The shared library.
        path: PathBuf,
        /// Configuration handed to the plugin's `initialize`, as JSON.
        #[arg(long, value_name = "JSON")]
        config: Option<String>,
    },
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Plugin(PluginCommand::Inspect { path, verbose, json }) => inspect(path, verbose, json),
        Command::Plugin(PluginCommand::Check { path, config }) => check(path, config),
    }
}

fn inspect(path: PathBuf, verbose: bool, json: bool) -> ExitCode {
    match inspect_plugin(&path) {
        Ok(inspection) => {
            if json {
                let value = serde_json::json!({ "loadable": true, "plugin": inspection });
                println!("{value:#}");
            } else {
                let abi = match inspection.abi {
                    PluginAbi::StableAbi => "stable ABI (abi_stable), plugin-api",
                    PluginAbi::CAbi => "legacy C ABI, version",
                    _ => "unknown ABI",
                };
                println!("file:          {}", inspection.path.display());
                println!("interface:     {abi} {}", inspection.interface_version);
                println!(
                    "plugin:        {} {}",
                    inspection.manifest.name, inspection.manifest.version
                );
                println!("capabilities:  {}", inspection.manifest.capabilities.join(", "));
                println!("loadable:      yes");
            }
            ExitCode::SUCCESS
        }
        Err(error) => {
            if json {
                let value = serde_json::json!({ "loadable": false, "error": error.to_string() });
                println!("{value:#}");
            } else {
                eprintln!("loadable: no\n{error}");
                match &error {
                    LoadError::IncompatibleLayout { details, .. } if verbose => eprintln!("\n{details}"),
                    LoadError::IncompatibleLayout { .. } => {
                        eprintln!("(run with --verbose for the full layout report)")
                    }
                    _ => {}
                }
            }
            ExitCode::FAILURE
        }
    }
}

fn check(path: PathBuf, config: Option<String>) -> ExitCode {
    let config = match config.as_deref().map(serde_json::from_str).transpose() {
        Ok(config) => config.unwrap_or(serde_json::Value::Null),
        Err(e) => {
            eprintln!("--config is not valid JSON: {e}");
            return ExitCode::from(2);
        }
    };
    let library = match open_plugin(&path) {
        Ok(library) => library,
        Err(error) => {
            eprintln!("{error}");
            return ExitCode::FAILURE;
        }
    };
    let report = block_on(check_plugin(
        library.plugin(),
        CheckOptions::default().with_config(config),
    ));
    print!("{report}");
    if report.is_conformant() {
        println!("conformant: yes");
        ExitCode::SUCCESS
    } else {
        println!("conformant: no ({} check(s) failed)", report.failures().count());
        ExitCode::FAILURE
    }
}
