//! `demo`: a simulated fleet through the pipeline under load.
//!
//! N agents in four specialties (database, frontend, security, infra; each with its
//! capabilities, which are what routing reads) take M tasks described in the words of a
//! specialty, at most C in flight. The executor is simulated: it sleeps 0–2 ms and fails
//! (retryably) with probability F when the agent's specialty is the task's, and with
//! `F + (1 - F) / 2` when it is not, so routing that reads the task well shows up as fewer
//! retries. Every draw comes from a seeded generator; which agent takes which task also depends
//! on timing, so figures vary a little between runs of one seed.

use crate::{ConfigArg, Outcome, build, builder};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use orchestrator::plugin_api::async_trait;
use orchestrator::prelude::*;
use orchestrator::{OrchestratorError, TaskStatus};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::{Duration, Instant};
use tokio::task::JoinSet;

/// `demo`'s arguments.
#[derive(Debug, Args)]
pub(crate) struct DemoArgs {
    /// How many agents (spread over the four specialties).
    #[arg(long, value_name = "N", default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    agents: u32,
    /// How many tasks to submit.
    #[arg(long, value_name = "M", default_value_t = 1_000, value_parser = clap::value_parser!(u32).range(1..))]
    tasks: u32,
    /// At most this many tasks in flight at once.
    #[arg(long, value_name = "C", default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
    concurrency: u32,
    /// The seed of every random draw (fleet, tasks, sleeps, failures).
    #[arg(long, value_name = "S", default_value_t = 42)]
    seed: u64,
    /// The chance that an attempt fails on an agent of the task's specialty, 0 to 1 (off its
    /// specialty: halfway from it to 1).
    #[arg(long, value_name = "F", default_value_t = 0.05, value_parser = probability)]
    failure_rate: f64,
    /// Print the figures as JSON.
    #[arg(long)]
    json: bool,
    /// The configuration file.
    #[command(flatten)]
    pub(crate) config: ConfigArg,
}

/// Parses a probability (0 to 1).
fn probability(text: &str) -> Result<f64, String> {
    let value: f64 = text.parse().map_err(|e| format!("{e}"))?;
    if (0.0..=1.0).contains(&value) {
        Ok(value)
    } else {
        Err(format!("{value} is not between 0 and 1"))
    }
}

/// A specialty: what its agents can do, and how its tasks are described.
#[derive(Debug)]
struct Specialty {
    /// Its name (also the agents' first capability, and the tasks' kind).
    name: &'static str,
    /// Its agents' capabilities: the words routing matches tasks against.
    capabilities: &'static [&'static str],
    /// Its tasks' descriptions.
    tasks: &'static [&'static str],
}

/// The simulated fleet's specialties.
const SPECIALTIES: [Specialty; 4] = [
    Specialty {
        name: "database",
        capabilities: &["database", "sql", "postgres", "migrations"],
        tasks: &[
            "migrate the orders table in postgres",
            "tune the slow sql query behind the sales report",
            "add an index to the invoices database table",
            "write the migrations for the new customer schema in sql",
            "back up the postgres database before the upgrade",
        ],
    },
    Specialty {
        name: "frontend",
        capabilities: &["frontend", "css", "react", "ui"],
        tasks: &[
            "fix the css layout of the checkout page",
            "build a react component for the settings ui",
            "make the frontend signup form accessible",
            "restyle the ui buttons with the new css palette",
            "move the dashboard frontend to react hooks",
        ],
    },
    Specialty {
        name: "security",
        capabilities: &["security", "vulnerability", "audit", "secrets"],
        tasks: &[
            "audit the login flow for a security vulnerability",
            "rotate the secrets after the security review",
            "scan the dependencies for a known vulnerability",
            "write the audit report of the admin permissions",
            "check the session cookies for security flags",
        ],
    },
    Specialty {
        name: "infra",
        capabilities: &["infra", "kubernetes", "terraform", "deploy"],
        tasks: &[
            "deploy the api to the kubernetes cluster",
            "write terraform for the staging infra",
            "scale the kubernetes workers before the sale",
            "deploy the canary release and watch it",
            "move the infra state to the new terraform backend",
        ],
    },
];

/// SplitMix64: a tiny, seedable generator (enough for a simulation; not for cryptography).
#[derive(Debug, Clone)]
struct SplitMix64(u64);

impl SplitMix64 {
    /// The next 64 random bits.
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n` > 0; the slight modulo bias is of no matter here).
    fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// A number in `[0, 1)`.
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// FNV-1a of some text: mixes a task's id and an agent's into a seed.
fn fnv1a(text: &str) -> u64 {
    text.bytes().fold(0xCBF2_9CE4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01B3)
    })
}

/// The simulated executor: sleeps 0–2 ms, then succeeds, or fails retryably, with a chance that
/// depends on whether the agent's specialty is the task's.
#[derive(Debug)]
struct SimulatedExecutor {
    /// The run's seed.
    seed: u64,
    /// The chance of failure on the task's specialty.
    failure_rate: f64,
}

impl SimulatedExecutor {
    /// The chance of failure off the task's specialty: halfway from the base rate to 1.
    fn off_specialty_rate(&self) -> f64 {
        self.failure_rate + (1.0 - self.failure_rate) / 2.0
    }
}

#[async_trait]
impl AgentExecutor for SimulatedExecutor {
    async fn execute(&self, context: ExecutionContext) -> Result<Value, ExecutorError> {
        // One draw sequence per (task, attempt, agent): the same seed gives the same dice.
        let task_id = context.task_id.as_deref().unwrap_or(&context.correlation_id);
        let mut rng = SplitMix64(
            self.seed ^ fnv1a(task_id) ^ fnv1a(context.agent.id.as_str()).rotate_left(17) ^ u64::from(context.attempt),
        );
        let sleep_us = rng.below(2_001);
        tokio::time::sleep(Duration::from_micros(sleep_us)).await;
        let wanted = context.data.get("specialty").and_then(Value::as_str);
        let has = context.agent.metadata.get("specialty").and_then(Value::as_str);
        let matched = wanted.is_some() && wanted == has;
        let chance = if matched {
            self.failure_rate
        } else {
            self.off_specialty_rate()
        };
        if rng.unit() < chance {
            return Err(ExecutorError::retryable(format!(
                "{} could not finish the {} task (simulated failure)",
                context.agent.id,
                wanted.unwrap_or("general")
            )));
        }
        Ok(json!({
            "metrics": {
                "duration_ms": sleep_us as f64 / 1_000.0,
                "specialty_match": if matched { 1.0 } else { 0.0 },
                "attempt": context.attempt,
            }
        }))
    }
}

/// What became of one task.
#[derive(Debug)]
struct Finished {
    /// The task's specialty (an index into [`SPECIALTIES`]).
    specialty: usize,
    /// From submission to the report (or the refusal).
    latency: Duration,
    /// The report, or why the task was refused.
    result: Result<TaskReport, OrchestratorError>,
}

/// The figures of a run.
#[derive(Debug, Default)]
struct Figures {
    /// Tasks that succeeded.
    succeeded: u64,
    /// Tasks that ran and failed.
    failed_ran: u64,
    /// Tasks refused before they ran.
    refused: u64,
    /// Every task's latency, in microseconds.
    latencies_us: Vec<u64>,
    /// Executor runs, over the tasks that ran.
    attempts: u64,
    /// Tasks that ran (have a report).
    reported: u64,
    /// Tasks whose final agent has the task's specialty.
    routed_well: u64,
    /// Tasks that ended on an agent.
    routed: u64,
    /// The chance a task lands on its specialty when the agent is picked at random, summed.
    chance_sum: f64,
    /// The first refusal's message.
    first_refusal: Option<String>,
}

/// Runs `demo`.
pub(crate) async fn run(args: DemoArgs) -> Outcome {
    let executor = SimulatedExecutor {
        seed: args.seed,
        failure_rate: args.failure_rate,
    };
    let off_rate = executor.off_specialty_rate();
    let config = args.config.file.as_deref();
    let orchestrator = build(builder(config).executor(executor), config).await?;

    // The fleet: specialties in turn, capacity 2 to 4.
    let mut rng = SplitMix64(args.seed);
    let mut specialty_of: BTreeMap<String, usize> = BTreeMap::new();
    let mut per_specialty = [0u32; SPECIALTIES.len()];
    for i in 0..args.agents as usize {
        let s = i % SPECIALTIES.len();
        let specialty = &SPECIALTIES[s];
        let id = format!("{}-{}", specialty.name, i / SPECIALTIES.len() + 1);
        let capacity = 2 + rng.below(3) as u32;
        let config = AgentConfig::new(id.as_str())
            .with_id(id.as_str())
            .with_capabilities(specialty.capabilities.iter().copied())
            .with_capacity(capacity)
            .with_metadata("specialty", specialty.name);
        orchestrator.register_agent(config).await?;
        specialty_of.insert(id, s);
        per_specialty[s] += 1;
    }

    let total = u64::from(args.tasks);
    let bar = ProgressBar::new(total);
    if let Ok(style) = ProgressStyle::with_template("{bar:40} {pos}/{len} tasks  {per_sec}  {elapsed}") {
        bar.set_style(style);
    }

    let started = Instant::now();
    let mut in_flight: JoinSet<Finished> = JoinSet::new();
    let mut figures = Figures::default();
    let record = |figures: &mut Figures, finished: Finished| {
        tally(figures, finished, &specialty_of, &per_specialty, args.agents);
    };
    for i in 0..args.tasks {
        while in_flight.len() >= args.concurrency as usize {
            if let Some(joined) = in_flight.join_next().await {
                record(&mut figures, joined?);
                bar.inc(1);
            }
        }
        let s = rng.below(SPECIALTIES.len() as u64) as usize;
        let specialty = &SPECIALTIES[s];
        let text = specialty.tasks[rng.below(specialty.tasks.len() as u64) as usize];
        let task = Task::new(text)
            .with_id(format!("demo-{i}"))
            .with_kind(specialty.name)
            .with_data(json!({ "specialty": specialty.name }));
        let submitted = orchestrator.submit_task(task);
        in_flight.spawn(async move {
            let at = Instant::now();
            let result = submitted.await;
            Finished {
                specialty: s,
                latency: at.elapsed(),
                result,
            }
        });
    }
    while let Some(joined) = in_flight.join_next().await {
        record(&mut figures, joined?);
        bar.inc(1);
    }
    let elapsed = started.elapsed();
    bar.finish_and_clear();

    let summary = summarise(&args, &figures, elapsed, off_rate, &per_specialty);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        print_summary(&summary);
        if let Some(refusal) = &figures.first_refusal {
            println!("first refusal:    {refusal}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Counts one finished task into the figures.
fn tally(
    figures: &mut Figures,
    finished: Finished,
    specialty_of: &BTreeMap<String, usize>,
    per_specialty: &[u32; SPECIALTIES.len()],
    agents: u32,
) {
    let latency_us = u64::try_from(finished.latency.as_micros()).unwrap_or(u64::MAX);
    match finished.result {
        Ok(report) => {
            figures.latencies_us.push(report.duration_us.max(latency_us));
            figures.reported += 1;
            figures.attempts += u64::from(report.attempts);
            if report.status == TaskStatus::Succeeded {
                figures.succeeded += 1;
            } else {
                figures.failed_ran += 1;
            }
            if let Some(agent) = &report.agent {
                figures.routed += 1;
                figures.chance_sum += f64::from(per_specialty[finished.specialty]) / f64::from(agents);
                if specialty_of.get(agent.as_str()) == Some(&finished.specialty) {
                    figures.routed_well += 1;
                }
            }
        }
        Err(error) => {
            figures.latencies_us.push(latency_us);
            figures.refused += 1;
            figures.first_refusal.get_or_insert_with(|| error.to_string());
        }
    }
}

/// The value at quantile `q` of sorted values (nearest rank); 0 when there are none.
fn percentile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// A share, or 0 of nothing.
fn share(part: f64, whole: f64) -> f64 {
    if whole > 0.0 { part / whole } else { 0.0 }
}

/// Rounds to `digits` decimals, for readable JSON.
fn round(value: f64, digits: i32) -> f64 {
    let scale = 10f64.powi(digits);
    (value * scale).round() / scale
}

/// The figures of a run as JSON (what `--json` prints and the text is made from).
fn summarise(
    args: &DemoArgs,
    figures: &Figures,
    elapsed: Duration,
    off_rate: f64,
    per_specialty: &[u32; SPECIALTIES.len()],
) -> Value {
    let mut latencies = figures.latencies_us.clone();
    latencies.sort_unstable();
    let ms = |us: u64| round(us as f64 / 1_000.0, 3);
    let fleet: BTreeMap<&str, u32> = SPECIALTIES
        .iter()
        .zip(per_specialty)
        .map(|(s, n)| (s.name, *n))
        .collect();
    json!({
        "agents": args.agents,
        "fleet": fleet,
        "tasks": args.tasks,
        "concurrency": args.concurrency,
        "seed": args.seed,
        "failure_rate": args.failure_rate,
        "failure_rate_off_specialty": round(off_rate, 4),
        "executor": "simulated",
        "elapsed_s": round(elapsed.as_secs_f64(), 4),
        "tasks_per_s": round(share(f64::from(args.tasks), elapsed.as_secs_f64()), 1),
        "succeeded": figures.succeeded,
        "failed": figures.failed_ran + figures.refused,
        "refused": figures.refused,
        "latency_ms": {
            "p50": ms(percentile(&latencies, 0.50)),
            "p90": ms(percentile(&latencies, 0.90)),
            "p99": ms(percentile(&latencies, 0.99)),
            "max": ms(latencies.last().copied().unwrap_or(0)),
        },
        "mean_attempts": round(share(figures.attempts as f64, figures.reported as f64), 3),
        "routing_success_rate": round(share(figures.routed_well as f64, figures.routed as f64), 4),
        "routing_by_chance": round(share(figures.chance_sum, figures.routed as f64), 4),
    })
}

/// The figures as text.
fn print_summary(summary: &Value) {
    let get = |key: &str| summary.get(key).cloned().unwrap_or(Value::Null);
    let latency = |key: &str| summary["latency_ms"].get(key).cloned().unwrap_or(Value::Null);
    let percent = |key: &str| {
        get(key)
            .as_f64()
            .map_or_else(|| "-".to_owned(), |v| format!("{:.1}%", v * 100.0))
    };
    let fleet = summary["fleet"]
        .as_object()
        .map(|m| m.iter().map(|(k, v)| format!("{k} {v}")).collect::<Vec<_>>().join(", "))
        .unwrap_or_default();
    println!(
        "demo: {} agents ({fleet}), {} tasks, at most {} in flight, seed {}",
        get("agents"),
        get("tasks"),
        get("concurrency"),
        get("seed")
    );
    println!(
        "executor: simulated (sleeps 0-2 ms; fails retryably {} of the time on the task's specialty, {} off it)",
        percent("failure_rate"),
        percent("failure_rate_off_specialty")
    );
    println!();
    println!("elapsed:          {} s", get("elapsed_s"));
    println!("tasks/s:          {}", get("tasks_per_s"));
    println!("succeeded:        {}", get("succeeded"));
    println!(
        "failed:           {} (refused before running: {})",
        get("failed"),
        get("refused")
    );
    println!(
        "latency:          p50 {} ms, p90 {} ms, p99 {} ms, max {} ms",
        latency("p50"),
        latency("p90"),
        latency("p99"),
        latency("max")
    );
    println!("mean attempts:    {}", get("mean_attempts"));
    println!(
        "routing success:  {} (final agent of the task's specialty; {} by chance)",
        percent("routing_success_rate"),
        percent("routing_by_chance")
    );
}
