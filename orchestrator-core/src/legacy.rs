//! The legacy fallback path: built-in base behaviour for the two capabilities the orchestrator
//! itself depends on, used when their plugins are absent, disabled, failing or too slow.
//!
//! - `semantic_routing`: least-loaded selection (load over capacity, awake agents first), ties
//!   broken round robin. Same request and response shape as the routing plugin.
//! - `extended_thinking`: a plain text analysis: the description split into steps at sentence
//!   ends and sequencing words, complexity from the number of steps and the length, and the
//!   registered agents' capabilities that the text names. Same shape as the workflow plugin.
//!
//! Both are deliberately simple and deterministic: they keep the system working, they do not
//! compete with the plugins.

use crate::agents::{AgentEntry, AgentRegistry};
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The capabilities the legacy path serves.
pub(crate) const LEGACY_CAPABILITIES: [&str; 2] = ["extended_thinking", "semantic_routing"];

/// Whether the legacy path serves `capability`.
pub(crate) fn serves(capability: &str) -> bool {
    LEGACY_CAPABILITIES.contains(&capability)
}

/// Serves `capability` on the legacy path. `Err` is a message for bad input.
pub(crate) fn handle(
    capability: &str,
    data: &Value,
    agents: &AgentRegistry,
    round_robin: &AtomicUsize,
) -> Result<Value, String> {
    match capability {
        "semantic_routing" => route_least_loaded(data, agents, round_robin),
        "extended_thinking" => analyse_task(data, agents),
        other => Err(format!("the legacy path does not serve `{other}`")),
    }
}

/// How many entries of the ranking are returned.
const RANKING_LEN: usize = 10;

fn route_least_loaded(data: &Value, agents: &AgentRegistry, round_robin: &AtomicUsize) -> Result<Value, String> {
    const EXPECTED: &str = "expected {\"task\": {\"description\": string, \"required_capabilities\"?: [string]}, \"available_agents\"?: [string]}";
    let task = data
        .get("task")
        .filter(|t| t.is_object())
        .ok_or_else(|| format!("missing `task`; {EXPECTED}"))?;
    let required = string_list(
        task.get("required_capabilities"),
        "task.required_capabilities",
        EXPECTED,
    )?;
    let mut unknown = Vec::new();
    let candidates: Vec<Arc<AgentEntry>> = match data.get("available_agents") {
        None | Some(Value::Null) => agents.entries_unordered(),
        Some(_) => string_list(data.get("available_agents"), "available_agents", EXPECTED)?
            .into_iter()
            .filter_map(|id| {
                let found = agents.get(&id);
                if found.is_none() {
                    unknown.push(id);
                }
                found
            })
            .collect(),
    };

    let (mut offline, mut lacking) = (0usize, 0usize);
    let mut scored: Vec<(f64, &Arc<AgentEntry>)> = Vec::with_capacity(candidates.len());
    for agent in &candidates {
        if agent.status() == plugin_api::AgentStatus::Offline {
            offline += 1;
        } else if !required.iter().all(|c| agent.has_capability(c)) {
            lacking += 1;
        } else {
            scored.push((least_loaded_score(agent), agent));
        }
    }
    if scored.is_empty() {
        let mut reasons = Vec::new();
        if candidates.is_empty() && unknown.is_empty() {
            reasons.push("no agents are registered".to_owned());
        }
        if !unknown.is_empty() {
            reasons.push(format!("not registered: {}", unknown.join(", ")));
        }
        if offline > 0 {
            reasons.push(format!("{offline} offline"));
        }
        if lacking > 0 {
            reasons.push(format!("{lacking} lacking [{}]", required.join(", ")));
        }
        return Err(format!("no eligible agent ({})", reasons.join("; ")));
    }
    scored.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| a.1.id.cmp(&b.1.id)));
    let best = scored[0].0;
    let ties = scored.iter().take_while(|(s, _)| *s == best).count();
    let pick = round_robin.fetch_add(1, Ordering::Relaxed) % ties;
    let selected = scored[pick].1;
    let ranking: Vec<Value> = scored
        .iter()
        .take(RANKING_LEN)
        .map(|(score, a)| json!({"agent_id": a.id, "score": score}))
        .collect();
    Ok(json!({
        "selected_agent": selected.id,
        "score": best,
        "ranking": ranking,
        "strategy": "least_loaded",
    }))
}

/// 1 for an idle agent, 0 for one at capacity; sleeping agents rank below awake ones.
fn least_loaded_score(agent: &AgentEntry) -> f64 {
    let free = 1.0 - (f64::from(agent.load()) / f64::from(agent.capacity.max(1))).min(1.0);
    if agent.status() == plugin_api::AgentStatus::Sleeping {
        free - 1.0
    } else {
        free
    }
}

fn string_list(value: Option<&Value>, field: &str, expected: &str) -> Result<Vec<String>, String> {
    match value {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| format!("`{field}` must hold strings only; {expected}"))
            })
            .collect(),
        Some(_) => Err(format!("`{field}` must be a list of strings; {expected}")),
    }
}

/// Words that start a new step when they begin a clause.
const SEQUENCE_WORDS: [&str; 5] = ["then", "after", "afterwards", "finally", "next"];

fn analyse_task(data: &Value, agents: &AgentRegistry) -> Result<Value, String> {
    let text = data
        .get("task_description")
        .and_then(Value::as_str)
        .ok_or("expected {\"task_description\": string}")?;
    let plan = split_steps(text);
    let words: Vec<String> = text
        .split(|c: char| !c.is_alphanumeric() && c != '_')
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect();
    let vocabulary: BTreeSet<&str> = words.iter().map(String::as_str).collect();
    let mut known_capabilities = BTreeSet::new();
    agents.for_each(|agent| known_capabilities.extend(agent.capabilities.iter().cloned()));
    let required: Vec<String> = known_capabilities
        .into_iter()
        .filter(|cap| {
            vocabulary.contains(cap.to_lowercase().as_str())
                || cap
                    .split('_')
                    .all(|part| vocabulary.contains(part.to_lowercase().as_str()))
        })
        .collect();
    let steps = plan.len().max(1);
    let complexity =
        (0.15 * (steps - 1) as f64 + words.len() as f64 / 150.0 + 0.05 * required.len() as f64).clamp(0.0, 1.0);
    let mut insights = vec![format!("{} step(s) identified in {} word(s)", plan.len(), words.len())];
    if !required.is_empty() {
        insights.push(format!("names agent capabilities: {}", required.join(", ")));
    }
    if complexity >= 0.6 {
        insights.push("complex task: consider splitting it".to_owned());
    }
    Ok(json!({
        "thinking_insights": insights,
        "complexity": complexity,
        "plan": plan,
        "required_capabilities": required,
        "engine": "legacy",
    }))
}

/// Splits text into steps at sentence ends, semicolons, line breaks and sequencing words.
fn split_steps(text: &str) -> Vec<String> {
    let mut steps = Vec::new();
    for sentence in text.split(['.', ';', '\n', '!', '?']) {
        let mut current: Vec<&str> = Vec::new();
        for word in sentence.split_whitespace() {
            let bare = word.trim_matches(|c: char| !c.is_alphanumeric()).to_lowercase();
            if SEQUENCE_WORDS.contains(&bare.as_str()) && !current.is_empty() {
                let last = current.last().copied().unwrap_or_default();
                if last.eq_ignore_ascii_case("and") || last.ends_with(',') {
                    if last.eq_ignore_ascii_case("and") {
                        current.pop();
                    }
                    push_step(&mut steps, &current);
                    current.clear();
                    continue;
                }
            }
            current.push(word);
        }
        push_step(&mut steps, &current);
    }
    steps
}

fn push_step(steps: &mut Vec<String>, words: &[&str]) {
    let step = words.join(" ");
    let step = step.trim_matches(|c: char| c == ',' || c.is_whitespace());
    if !step.is_empty() {
        steps.push(step.to_owned());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::AgentConfig;

    #[test]
    fn steps_split_at_sentences_and_sequencing_words() {
        assert_eq!(
            split_steps("Fetch the logs, then parse them and then report. Archive"),
            vec!["Fetch the logs", "parse them", "report", "Archive"]
        );
        assert!(split_steps("  . ;").is_empty());
    }

    #[test]
    fn complexity_grows_with_steps() {
        let agents = AgentRegistry::default();
        let simple = analyse_task(&json!({"task_description": "fix typo"}), &agents).expect("ok");
        let hard = analyse_task(
            &json!({"task_description": "Design the schema. Then migrate the data, then test it; finally deploy to three regions and monitor."}),
            &agents,
        )
        .expect("ok");
        assert!(hard["complexity"].as_f64() > simple["complexity"].as_f64());
        assert_eq!(
            hard["plan"],
            json!([
                "Design the schema",
                "Then migrate the data",
                "test it",
                "finally deploy to three regions and monitor"
            ])
        );
    }

    #[test]
    fn names_capabilities_agents_have() {
        let agents = AgentRegistry::default();
        agents
            .register(AgentConfig::default().with_capabilities(["code_review", "deploy"]))
            .expect("registers");
        let out = analyse_task(&json!({"task_description": "Please review the code"}), &agents).expect("ok");
        assert_eq!(out["required_capabilities"], json!(["code_review"]));
    }

    #[test]
    fn routing_prefers_least_loaded_then_rotates() {
        let agents = AgentRegistry::default();
        let a = agents
            .register(AgentConfig::default().with_id("a").with_capacity(2))
            .expect("a");
        agents
            .register(AgentConfig::default().with_id("b").with_capacity(2))
            .expect("b");
        agents
            .register(AgentConfig::default().with_id("c").with_capacity(2))
            .expect("c");
        a.begin_task();
        let rr = AtomicUsize::new(0);
        let req = json!({"task": {"description": "x"}});
        let picks: Vec<String> = (0..4)
            .map(|_| {
                route_least_loaded(&req, &agents, &rr).expect("routes")["selected_agent"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned()
            })
            .collect();
        assert_eq!(picks, ["b", "c", "b", "c"]);
    }

    #[test]
    fn routing_explains_why_nobody_fits() {
        let agents = AgentRegistry::default();
        agents.register(AgentConfig::default().with_id("a")).expect("a");
        let err = route_least_loaded(
            &json!({"task": {"description": "x", "required_capabilities": ["rust"]}, "available_agents": ["a", "ghost"]}),
            &agents,
            &AtomicUsize::new(0),
        )
        .unwrap_err();
        assert_eq!(err, "no eligible agent (not registered: ghost; 1 lacking [rust])");
        let err = route_least_loaded(&json!({"task": 3}), &agents, &AtomicUsize::new(0)).unwrap_err();
        assert!(err.starts_with("missing `task`"), "{err}");
    }
}
