//! `orchestrator`: the command-line tool. It builds the orchestrator an application would embed
//! (the nine default plugins, plus an `orchestrator.toml` when given), shows what it hosts,
//! runs tasks through its pipeline, simulates a fleet under load, and looks at plugin libraries
//! before you trust them to a running host.
//!
//! ```text
//! orchestrator [--config FILE] catalog [--json]       plugins (version, origin, capabilities, health)
//!                                                     and the capabilities with their providers
//! orchestrator [--config FILE] health [--json]        every plugin's health check; exit 2 unless all
//!                                                     are healthy
//! orchestrator [--config FILE] submit TEXT [--agents FILE] [--capabilities A,B] [--priority N] [--json]
//!                                                     one task through the pipeline (dry-run executor);
//!                                                     the report and its per-step trace
//! orchestrator [--config FILE] demo [--agents N] [--tasks M] [--concurrency C] [--seed S]
//!                                   [--failure-rate F] [--json]
//!                                                     a simulated fleet under load: throughput,
//!                                                     latency percentiles, attempts, routing success
//! orchestrator plugin inspect PATH [--verbose] [--json]
//!                                                     which ABI, interface version, name, version,
//!                                                     capabilities; exit 1 if this host cannot load it
//! orchestrator plugin check PATH|DIR [--config JSON]  the conformance kit, on one library or on every
//!                                                     library in a directory; exit 1 if any fails
//! ```
//!
//! `--config FILE` is an `orchestrator.toml`: the host's `[orchestrator]` table plus one table
//! per plugin, read by `OrchestratorBuilder::config_file`. It may be given before the command or
//! after it. (`plugin check --config` is something else: the JSON handed to the checked
//! plugin's `initialize`.)
//!
//! # Exit codes
//!
//! | code | meaning |
//! | ---- | ------- |
//! | 0    | done: the task succeeded, every plugin is healthy, every library conforms |
//! | 1    | failure: a task failed or was refused, a library failed, a file or the configuration could not be used (the message on stderr names it) |
//! | 2    | usage error (clap's code: an unknown option, a missing or malformed argument), and `health` when any plugin is degraded or unhealthy |
//!
//! Build and run it with `cargo run --features cli --bin orchestrator -- --help`.

mod demo;
mod plugin;
mod show;
mod submit;
mod table;

use clap::{Args, Parser, Subcommand};
use orchestrator::prelude::*;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Exit code of a usage error (clap's), and of `health` when a plugin is not healthy.
const EXIT_USAGE_OR_UNHEALTHY: u8 = 2;

/// `--help`'s closing text: examples and the exit codes.
const AFTER_HELP: &str = "\
Examples:
  orchestrator catalog
  orchestrator --config orchestrator.toml health
  orchestrator submit \"migrate the orders table\" --capabilities database
  orchestrator submit \"fix the checkout css\" --agents agents.json --priority 5 --json
  orchestrator demo --agents 8 --tasks 2000 --concurrency 64 --seed 7
  orchestrator plugin inspect target/debug/libthird_party_plugin.so
  orchestrator plugin check target/debug/

An agents file is a JSON array of agents:
  [{\"id\": \"db-1\", \"capabilities\": [\"database\"], \"capacity\": 2}]

Exit codes:
  0  done: the task succeeded, every plugin is healthy, every library conforms
  1  failure: a task failed or was refused, a library failed, a file or the
     configuration could not be used (the message on stderr names it)
  2  usage error (an unknown option, a missing or malformed argument), and
     `health` when any plugin is degraded or unhealthy";

/// Hosts capability plugins and orchestrates agents: shows what the orchestrator hosts, runs
/// tasks through its pipeline, simulates a fleet, and inspects and checks plugin libraries.
#[derive(Debug, Parser)]
#[command(name = "orchestrator", version, after_help = AFTER_HELP)]
struct Cli {
    /// The orchestrator's configuration (orchestrator.toml: `[orchestrator]` plus a table per plugin).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// What to do.
    #[command(subcommand)]
    command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
enum Command {
    /// List the plugins (version, origin, capabilities, health) and the capabilities with their providers.
    Catalog {
        /// The configuration file.
        #[command(flatten)]
        config: ConfigArg,
        /// Print the catalog as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Run every plugin's health check (exit 2 if any plugin is degraded or unhealthy).
    Health {
        /// The configuration file.
        #[command(flatten)]
        config: ConfigArg,
        /// Print the results as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Submit one task through the pipeline and print its report (exit 1 unless it succeeded).
    Submit(submit::SubmitArgs),
    /// Run a simulated fleet of agents through the pipeline under load and print the figures.
    Demo(demo::DemoArgs),
    /// Work with plugin libraries.
    #[command(subcommand)]
    Plugin(plugin::PluginCommand),
}

/// `--config FILE` given after a command (it may also come before it).
#[derive(Debug, Clone, Default, Args)]
struct ConfigArg {
    /// The orchestrator's configuration (orchestrator.toml); may also be given before the command.
    #[arg(long = "config", value_name = "FILE")]
    file: Option<PathBuf>,
}

/// Why a command could not do its work: the message printed on stderr (exit 1).
#[derive(Debug)]
struct Failure(String);

impl<E: std::fmt::Display> From<E> for Failure {
    fn from(error: E) -> Self {
        Self(error.to_string())
    }
}

/// What a command comes to: an exit code, or a failure to report.
type Outcome = Result<ExitCode, Failure>;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let global = cli.config;
    // The file given after the command wins over the one given before it.
    let config = |arg: ConfigArg| arg.file.or_else(|| global.clone());
    let outcome = match cli.command {
        Command::Catalog { config: arg, json } => {
            let file = config(arg);
            on_runtime(async move { show::catalog(file.as_deref(), json).await })
        }
        Command::Health { config: arg, json } => {
            let file = config(arg);
            on_runtime(async move { show::health(file.as_deref(), json).await })
        }
        Command::Submit(mut args) => {
            args.config.file = config(std::mem::take(&mut args.config));
            on_runtime(submit::run(args))
        }
        Command::Demo(mut args) => {
            args.config.file = config(std::mem::take(&mut args.config));
            on_runtime(demo::run(args))
        }
        Command::Plugin(command) => plugin::run(command),
    };
    match outcome {
        Ok(code) => code,
        Err(Failure(message)) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

/// Runs a command on a multi-thread Tokio runtime (the orchestrator needs one, with timers).
fn on_runtime(command: impl Future<Output = Outcome>) -> Outcome {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure(format!("cannot start the async runtime: {e}")))?;
    runtime.block_on(command)
}

/// The builder every command starts from: the default plugins, and the configuration file when
/// one is given. (The executor is the dry run unless the command sets another.)
fn builder(config: Option<&Path>) -> OrchestratorBuilder {
    let builder = Orchestrator::builder().with_default_plugins();
    match config {
        Some(file) => builder.config_file(file),
        None => builder,
    }
}

/// Builds the orchestrator; a failure names the configuration file when one was given.
async fn build(builder: OrchestratorBuilder, config: Option<&Path>) -> Result<Orchestrator, Failure> {
    builder.build().await.map_err(|error| match config {
        // Not every configuration error names the file it came from (an unknown key in the
        // `[orchestrator]` table, a plugin refusing its table): say which file it was.
        Some(file) if !error.to_string().contains(&file.display().to_string()) => Failure(format!(
            "cannot build the orchestrator with the configuration file {}: {error}",
            file.display()
        )),
        _ => Failure(format!("cannot build the orchestrator: {error}")),
    })
}

/// The snake_case name a value serialized to (a `PipelineStep`, a `StepOutcome`, a
/// `TaskStatus`): `serialized_name(serde_json::to_value(step))`.
fn serialized_name(value: serde_json::Result<serde_json::Value>) -> String {
    match value {
        Ok(serde_json::Value::String(name)) => name,
        Ok(other) => other.to_string(),
        Err(_) => String::from("?"),
    }
}

/// A duration given in microseconds, in the unit that reads best.
fn micros(us: u64) -> String {
    if us < 1_000 {
        format!("{us} µs")
    } else if us < 1_000_000 {
        format!("{:.2} ms", us as f64 / 1_000.0)
    } else {
        format!("{:.2} s", us as f64 / 1_000_000.0)
    }
}
