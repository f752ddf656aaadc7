//! `extended_thinking`: analysing a task before it is run.
//!
//! The analysis is behind the [`ThinkingEngine`] trait so that an embedder can put an LLM there.
//! The built-in [`HeuristicThinkingEngine`] is a deterministic text analysis, documented here in
//! full so its answers can be predicted:
//!
//! - **plan**: the description split into steps at sentence ends, semicolons, line breaks,
//!   list markers (`1.`, `-`, `*`) and sequencing words starting a clause (`then`, `next`,
//!   `finally`, `after that`, `afterwards`).
//! - **domains**: words matched against a fixed lexicon (testing, deployment, data, security,
//!   performance, frontend, api, documentation, infrastructure).
//! - **risk** words (production, migrate, delete, drop, security, credentials, concurrency,
//!   payment) and **ambiguity** words (maybe, somehow, etc, something, probably, tbd).
//! - **complexity** = `1 - exp(-x)` with `x = 0.25·(steps-1) + 0.3·(domains-1)⁺ + 0.25·risks +
//!   words/120 + 0.1·conditionals`: 0 for an empty task, rising towards 1, higher for longer,
//!   multi-step, multi-domain and risky tasks.
//! - **required_capabilities**: the registered agents' capabilities the text names (the whole
//!   name, or every `_`-separated part of it), then the domains' usual capability names
//!   (`testing` -> `testing`, ...) that some agent has.
//! - **thinking_insights**: one sentence per finding above.

use async_trait::async_trait;
use plugin_api::PluginError;
use serde::Serialize;
use std::collections::BTreeSet;
use std::sync::Arc;

/// What the engine is given besides the task text.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct ThinkingContext {
    /// Every capability the registered agents declare (shared: the plugin keeps one copy per
    /// fleet, not one per task).
    pub agent_capabilities: Arc<BTreeSet<String>>,
}

impl ThinkingContext {
    /// A context with these agent capabilities.
    pub fn new(agent_capabilities: impl Into<Arc<BTreeSet<String>>>) -> Self {
        Self {
            agent_capabilities: agent_capabilities.into(),
        }
    }
}

/// An engine's analysis of one task.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Analysis {
    /// Findings, one sentence each.
    pub thinking_insights: Vec<String>,
    /// 0 (trivial) to 1 (very complex).
    pub complexity: f64,
    /// Ordered steps.
    pub plan: Vec<String>,
    /// Capabilities an agent will need.
    pub required_capabilities: Vec<String>,
    /// The domains the task touches.
    pub domains: Vec<String>,
}

/// Analyses tasks. Implement it to put a model behind `extended_thinking`.
#[async_trait]
pub trait ThinkingEngine: Send + Sync + 'static {
    /// The engine's name, reported with each analysis.
    fn name(&self) -> &str {
        "custom"
    }

    /// Analyses `task`.
    async fn analyse(&self, task: &str, context: &ThinkingContext) -> Result<Analysis, PluginError>;
}

/// The built-in engine: a deterministic text analysis (see the module docs).
#[derive(Debug, Clone, Copy, Default)]
pub struct HeuristicThinkingEngine;

const DOMAINS: [(&str, &[&str]); 9] = [
    (
        "testing",
        &[
            "test",
            "tests",
            "testing",
            "coverage",
            "fuzz",
            "regression",
            "assert",
            "qa",
        ],
    ),
    (
        "deployment",
        &[
            "deploy",
            "deployment",
            "release",
            "rollout",
            "ship",
            "rollback",
            "canary",
        ],
    ),
    (
        "data",
        &[
            "database",
            "schema",
            "migrate",
            "migration",
            "sql",
            "table",
            "index",
            "query",
            "data",
        ],
    ),
    (
        "security",
        &[
            "security",
            "auth",
            "authentication",
            "token",
            "credentials",
            "permission",
            "encrypt",
            "vulnerability",
        ],
    ),
    (
        "performance",
        &[
            "performance",
            "latency",
            "throughput",
            "optimize",
            "benchmark",
            "profile",
            "slow",
            "cache",
        ],
    ),
    (
        "frontend",
        &[
            "ui",
            "frontend",
            "css",
            "page",
            "button",
            "layout",
            "react",
            "component",
        ],
    ),
    ("api", &["api", "endpoint", "rest", "grpc", "http", "request", "client"]),
    (
        "documentation",
        &["docs", "document", "documentation", "readme", "guide", "changelog"],
    ),
    (
        "infrastructure",
        &[
            "server",
            "cluster",
            "kubernetes",
            "docker",
            "network",
            "infrastructure",
            "terraform",
            "dns",
        ],
    ),
];
const RISKS: [&str; 10] = [
    "production",
    "migrate",
    "migration",
    "delete",
    "drop",
    "security",
    "credentials",
    "concurrency",
    "concurrent",
    "payment",
];
const AMBIGUITY: [&str; 6] = ["maybe", "somehow", "etc", "something", "probably", "tbd"];
const CONDITIONALS: [&str; 4] = ["if", "unless", "when", "otherwise"];
const SEQUENCERS: [&str; 4] = ["then", "next", "finally", "afterwards"];

/// The words of an already lower-cased text (one allocation for the whole text, not one per
/// word: this runs for every task).
fn tokenize(lower: &str) -> Vec<&str> {
    lower
        .split(|c: char| !c.is_alphanumeric() && c != '_')
        .filter(|w| !w.is_empty())
        .collect()
}

/// Splits a description into steps (see the module docs).
pub fn split_plan(text: &str) -> Vec<String> {
    let mut steps = Vec::new();
    for line in text.split(['\n', ';']) {
        // A list marker at the start of a line.
        let line = line.trim_start();
        let line = line
            .strip_prefix(['-', '*', '•'])
            .or_else(|| {
                let digits = line.chars().take_while(char::is_ascii_digit).count();
                (digits > 0)
                    .then(|| &line[digits..])
                    .and_then(|rest| rest.strip_prefix(['.', ')']))
            })
            .unwrap_or(line);
        for sentence in line.split_inclusive(['.', '!', '?']) {
            let mut current: Vec<&str> = Vec::new();
            let mut words = sentence.split_whitespace().peekable();
            while let Some(word) = words.next() {
                let bare = word.trim_matches(|c: char| !c.is_alphanumeric()).to_lowercase();
                let starts_clause = current.is_empty()
                    || current.last().is_some_and(|w| w.ends_with(','))
                    || current.last().is_some_and(|w| w.eq_ignore_ascii_case("and"));
                let after_that = bare == "after"
                    && words.peek().is_some_and(|n| {
                        n.trim_matches(|c: char| !c.is_alphanumeric())
                            .eq_ignore_ascii_case("that")
                    });
                // A sequencing word opening a clause ends the step before it, and is dropped.
                if (SEQUENCERS.contains(&bare.as_str()) || after_that) && starts_clause {
                    if current.last().is_some_and(|w| w.eq_ignore_ascii_case("and")) {
                        current.pop();
                    }
                    push_step(&mut steps, &current);
                    current.clear();
                    if after_that {
                        words.next();
                    }
                    continue;
                }
                current.push(word);
            }
            push_step(&mut steps, &current);
        }
    }
    steps
}

fn push_step(steps: &mut Vec<String>, words: &[&str]) {
    let step = words.join(" ");
    let step = step.trim_matches(|c: char| c == ',' || c == '.' || c.is_whitespace());
    if !step.is_empty() {
        let mut chars = step.chars();
        let capitalised: String = chars
            .next()
            .map(|c| c.to_uppercase().chain(chars).collect())
            .unwrap_or_default();
        steps.push(capitalised);
    }
}

#[async_trait]
impl ThinkingEngine for HeuristicThinkingEngine {
    fn name(&self) -> &str {
        "heuristic"
    }

    async fn analyse(&self, task: &str, context: &ThinkingContext) -> Result<Analysis, PluginError> {
        Ok(analyse_text(task, context))
    }
}

/// The heuristic analysis itself, synchronous.
pub fn analyse_text(task: &str, context: &ThinkingContext) -> Analysis {
    let lower = task.to_lowercase();
    let words = tokenize(&lower);
    let vocabulary: BTreeSet<&str> = words.iter().copied().collect();
    let plan = split_plan(task);
    let domains: Vec<String> = DOMAINS
        .iter()
        .filter(|(_, keys)| keys.iter().any(|k| vocabulary.contains(k)))
        .map(|(d, _)| (*d).to_owned())
        .collect();
    let risks: Vec<&str> = RISKS.iter().copied().filter(|r| vocabulary.contains(r)).collect();
    let vague: Vec<&str> = AMBIGUITY.iter().copied().filter(|a| vocabulary.contains(a)).collect();
    let conditionals = words.iter().filter(|w| CONDITIONALS.contains(w)).count();

    let named = |cap: &str| {
        vocabulary.contains(cap) || (cap.contains('_') && cap.split('_').all(|part| vocabulary.contains(part)))
    };
    let mut required: Vec<String> = context
        .agent_capabilities
        .iter()
        .filter(|c| named(c))
        .cloned()
        .collect();
    for domain in &domains {
        if context.agent_capabilities.contains(domain) && !required.contains(domain) {
            required.push(domain.clone());
        }
    }

    let x = 0.25 * plan.len().saturating_sub(1) as f64
        + 0.3 * domains.len().saturating_sub(1) as f64
        + 0.25 * risks.len() as f64
        + words.len() as f64 / 120.0
        + 0.1 * conditionals as f64;
    let complexity = if words.is_empty() { 0.0 } else { 1.0 - (-x).exp() };

    let mut insights = vec![format!("{} step(s) in {} word(s)", plan.len(), words.len())];
    if !domains.is_empty() {
        insights.push(format!(
            "touches {}: {}",
            if domains.len() == 1 {
                "one domain"
            } else {
                "several domains"
            },
            domains.join(", ")
        ));
    }
    if !risks.is_empty() {
        insights.push(format!(
            "risky: mentions {}; plan a rollback and a review",
            risks.join(", ")
        ));
    }
    if !vague.is_empty() {
        insights.push(format!(
            "ambiguous: \"{}\"; clarify before starting",
            vague.join("\", \"")
        ));
    }
    if conditionals > 0 {
        insights.push(format!("{conditionals} condition(s): the plan branches"));
    }
    if !required.is_empty() {
        insights.push(format!("needs agents with: {}", required.join(", ")));
    }
    if complexity >= 0.7 {
        insights.push("complex: consider splitting it into separate tasks".into());
    }
    Analysis {
        thinking_insights: insights,
        complexity,
        plan,
        required_capabilities: required,
        domains,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_follow_sentences_lists_and_sequencers() {
        assert_eq!(
            split_plan("Write the migration, then run it on staging. After that deploy\n- monitor errors\n2. report"),
            [
                "Write the migration",
                "Run it on staging",
                "Deploy",
                "Monitor errors",
                "Report"
            ]
        );
        assert_eq!(split_plan("  "), Vec::<String>::new());
    }

    #[test]
    fn complexity_orders_tasks_sensibly() {
        let ctx = ThinkingContext::default();
        let trivial = analyse_text("fix typo", &ctx).complexity;
        let medium = analyse_text("Add a test for the parser, then update the docs.", &ctx).complexity;
        let hard = analyse_text(
            "Migrate the production database schema, then deploy the new API to the cluster; if latency rises, roll back and rotate the credentials.",
            &ctx,
        )
        .complexity;
        assert!(
            0.0 < trivial && trivial < medium && medium < hard && hard < 1.0,
            "{trivial} {medium} {hard}"
        );
        assert_eq!(analyse_text("", &ctx).complexity, 0.0);
    }

    #[test]
    fn required_capabilities_come_from_the_fleet() {
        let ctx = ThinkingContext::new(
            ["code_review", "deployment", "testing", "gpu"]
                .map(String::from)
                .into_iter()
                .collect::<BTreeSet<String>>(),
        );
        let a = analyse_text("Review the code and deploy the release; maybe add tests", &ctx);
        assert_eq!(a.required_capabilities, ["code_review", "testing", "deployment"]);
        assert!(
            a.thinking_insights.iter().any(|i| i.starts_with("ambiguous")),
            "{:?}",
            a.thinking_insights
        );
        assert_eq!(a.domains, ["testing", "deployment"]);
    }
}
