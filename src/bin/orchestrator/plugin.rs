//! `plugin inspect` and `plugin check`: plugin libraries looked at before a host loads them.

use crate::{EXIT_USAGE_OR_UNHEALTHY, Failure, Outcome};
use clap::Subcommand;
use orchestrator::plugin_api::testkit::{CheckOptions, ConformanceReport, block_on, check_plugin};
use orchestrator::{LIBRARY_EXTENSION, LoadError, PluginAbi, inspect_plugin, open_plugin};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// The `plugin` commands.
#[derive(Debug, Subcommand)]
pub(crate) enum PluginCommand {
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
    /// Run the conformance kit against a library's plugin, or against every library in a
    /// directory, one line each (exit 1 if any check fails).
    Check {
        /// The shared library, or a directory of them.
        path: PathBuf,
        /// Configuration handed to the plugin's `initialize`, as JSON (not the orchestrator's
        /// configuration file).
        #[arg(long, value_name = "JSON")]
        config: Option<String>,
    },
}

/// Runs a `plugin` command (no async runtime: the conformance kit brings its own executor).
pub(crate) fn run(command: PluginCommand) -> Outcome {
    match command {
        PluginCommand::Inspect { path, verbose, json } => Ok(inspect(&path, verbose, json)),
        PluginCommand::Check { path, config } => {
            let config = match config.as_deref().map(serde_json::from_str::<Value>).transpose() {
                Ok(config) => config.unwrap_or(Value::Null),
                Err(e) => {
                    eprintln!("--config is not valid JSON: {e}");
                    return Ok(ExitCode::from(EXIT_USAGE_OR_UNHEALTHY));
                }
            };
            if path.is_dir() {
                check_dir(&path, config)
            } else {
                Ok(check_file(&path, config))
            }
        }
    }
}

/// `plugin inspect`.
fn inspect(path: &Path, verbose: bool, json: bool) -> ExitCode {
    match inspect_plugin(path) {
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

/// `plugin check FILE`: the conformance kit's full report.
fn check_file(path: &Path, config: Value) -> ExitCode {
    let library = match open_plugin(path) {
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

/// `plugin check DIR`: every library in the directory (by extension), one line each.
fn check_dir(dir: &Path, config: Value) -> Outcome {
    let entries =
        std::fs::read_dir(dir).map_err(|e| Failure(format!("cannot read directory {}: {e}", dir.display())))?;
    let mut libraries: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| path.is_file() && path.extension().is_some_and(|ext| ext == LIBRARY_EXTENSION))
        .collect();
    libraries.sort();
    if libraries.is_empty() {
        return Err(Failure(format!(
            "no plugin libraries (*.{LIBRARY_EXTENSION}) in {}",
            dir.display()
        )));
    }
    let mut failed = 0;
    for path in &libraries {
        match open_plugin(path) {
            Ok(library) => {
                let report = block_on(check_plugin(
                    library.plugin(),
                    CheckOptions::default().with_config(config.clone()),
                ));
                let manifest = &library.inspection().manifest;
                if report.is_conformant() {
                    println!("ok    {} {}  {}", manifest.name, manifest.version, path.display());
                } else {
                    failed += 1;
                    println!("FAIL  {}: {}", path.display(), failures(&report));
                }
            }
            Err(error) => {
                failed += 1;
                println!("FAIL  {}: {}", path.display(), one_line(&error.to_string()));
            }
        }
    }
    println!(
        "{} of {} libraries conformant",
        libraries.len() - failed,
        libraries.len()
    );
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The failed checks of a report, on one line.
fn failures(report: &ConformanceReport) -> String {
    let failed: Vec<String> = report
        .failures()
        .map(|check| format!("{} ({})", check.name, one_line(&check.detail)))
        .collect();
    format!("{} check(s) failed: {}", failed.len(), failed.join("; "))
}

/// A message on one line.
fn one_line(message: &str) -> String {
    message.split_whitespace().collect::<Vec<_>>().join(" ")
}
