//! Writing a plugin of your own and hosting it beside the default plugins: `SentimentPlugin`,
//! defined in this file, serves the capability `sentiment_analysis` (a lexicon scorer: word lists,
//! negation and intensifiers). It is linked statically and registered with
//! `Orchestrator::builder().with_default_plugins().plugin(...)`, called through `execute`, shown
//! in the catalog, sent a malformed request (refused with an error that says what was expected,
//! and no fallback), then switched off with `set_capability_enabled`, so that the call fails with
//! an error that says why and how to switch it back on.
//!
//! Run it with `cargo run --example custom_plugin`.

use orchestrator::plugin_api::async_trait;
use orchestrator::prelude::*;
use serde_json::{Value, json};

/// Words that carry a positive or a negative weight.
const POSITIVE: &[(&str, f64)] = &[
    ("good", 1.0),
    ("great", 2.0),
    ("excellent", 3.0),
    ("love", 2.0),
    ("like", 1.0),
    ("fast", 1.0),
    ("clean", 1.0),
    ("happy", 2.0),
    ("helpful", 1.5),
    ("reliable", 1.5),
    ("easy", 1.0),
    ("works", 1.0),
    ("fixed", 1.0),
    ("thanks", 1.0),
];
const NEGATIVE: &[(&str, f64)] = &[
    ("bad", 1.0),
    ("terrible", 3.0),
    ("awful", 3.0),
    ("hate", 2.0),
    ("slow", 1.0),
    ("broken", 2.0),
    ("bug", 1.0),
    ("bugs", 1.0),
    ("crash", 2.0),
    ("crashes", 2.0),
    ("confusing", 1.5),
    ("flaky", 1.5),
    ("fails", 1.5),
    ("annoying", 1.5),
];
/// Words that turn the next sentiment word around ("not good").
const NEGATIONS: &[&str] = &[
    "not", "no", "never", "hardly", "isn't", "doesn't", "don't", "wasn't", "can't",
];
/// Words that strengthen the next sentiment word ("very slow").
const INTENSIFIERS: &[(&str, f64)] = &[("very", 1.5), ("really", 1.5), ("extremely", 2.0), ("so", 1.3)];

fn weight(list: &[(&str, f64)], word: &str) -> Option<f64> {
    list.iter().find(|(w, _)| *w == word).map(|(_, weight)| *weight)
}

/// Scores `text`: the sum of the weights of its sentiment words, each turned around (and
/// halved) by a negation and strengthened by an intensifier within the two words before it,
/// squashed into -1..=1 as VADER does (`sum / sqrt(sum^2 + 15)`), so that one mild word scores
/// low and many strong ones approach 1.
fn score(text: &str, neutral_band: f64) -> Value {
    let words: Vec<String> = text
        .split(|c: char| !(c.is_alphanumeric() || c == '\''))
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect();
    let mut total = 0.0_f64;
    let mut hits = Vec::new();
    for (i, word) in words.iter().enumerate() {
        let base = match (weight(POSITIVE, word), weight(NEGATIVE, word)) {
            (Some(w), _) => w,
            (None, Some(w)) => -w,
            (None, None) => continue,
        };
        let before = &words[i.saturating_sub(2)..i];
        let negated = before.iter().any(|w| NEGATIONS.contains(&w.as_str()));
        let boost = before
            .iter()
            .filter_map(|w| weight(INTENSIFIERS, w))
            .fold(1.0, f64::max);
        let value = base * boost * if negated { -0.5 } else { 1.0 };
        total += value;
        hits.push(json!({"word": word, "weight": value, "negated": negated}));
    }
    let normalised = total / (total * total + 15.0).sqrt();
    let label = if normalised > neutral_band {
        "positive"
    } else if normalised < -neutral_band {
        "negative"
    } else {
        "neutral"
    };
    json!({
        "score": (normalised * 1000.0).round() / 1000.0,
        "label": label,
        "words": words.len(),
        "matched": hits,
    })
}

/// Serves `sentiment_analysis`: `{"text": string, "neutral_band"?: number in 0..1}` ->
/// `{"score", "label", "words", "matched"}`.
struct SentimentPlugin;

#[async_trait]
impl OrchestrationPlugin for SentimentPlugin {
    fn name(&self) -> &str {
        "SentimentPlugin"
    }

    fn version(&self) -> &str {
        "1.0.0"
    }

    fn capabilities(&self) -> Vec<String> {
        vec!["sentiment_analysis".into()]
    }

    async fn initialize(&self, _host: HostHandle) -> Result<(), PluginError> {
        Ok(())
    }

    async fn process_request(&self, request: IntegrationRequest) -> Result<IntegrationResponse, PluginError> {
        const EXPECTED: &str = "expected {\"text\": string, \"neutral_band\"?: number between 0 and 1}";
        let text = match request.data.get("text") {
            Some(Value::String(text)) => text,
            Some(other) => {
                return Err(PluginError::invalid_request(format!(
                    "`text` must be a string, not {other}; {EXPECTED}"
                )));
            }
            None => return Err(PluginError::invalid_request(format!("missing `text`; {EXPECTED}"))),
        };
        let neutral_band = match request.data.get("neutral_band") {
            None | Some(Value::Null) => 0.2,
            Some(v) => v
                .as_f64()
                .filter(|b| (0.0..1.0).contains(b))
                .ok_or_else(|| PluginError::invalid_request(format!("`neutral_band` is {v}; {EXPECTED}")))?,
        };
        Ok(IntegrationResponse::ok(score(text, neutral_band)))
    }

    async fn health_check(&self) -> HealthStatus {
        HealthStatus::healthy()
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let orchestrator = Orchestrator::builder()
        .with_default_plugins()
        .plugin(SentimentPlugin)
        .build()
        .await?;
    println!(
        "1. built: {} plugins, {} capabilities",
        orchestrator.plugins().len(),
        orchestrator.capabilities().len()
    );

    println!("2. calls through execute:");
    for text in [
        "I love the new scheduler, it is really fast and reliable. Thanks!",
        "The build is broken again and the tests are very flaky.",
        "Not bad, but the docs are confusing.",
        "The meeting is at three.",
    ] {
        let answer = orchestrator
            .execute(IntegrationRequest::new("sentiment_analysis", json!({ "text": text })))
            .await?;
        let matched: Vec<String> = answer.data["matched"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|m| {
                format!(
                    "{} {:+.2}",
                    m["word"].as_str().unwrap_or("?"),
                    m["weight"].as_f64().unwrap_or_default()
                )
            })
            .collect();
        println!(
            "   {:<8} {:+.3}  [{}]  {text:?}  (served by {})",
            answer.data["label"].as_str().unwrap_or("?"),
            answer.data["score"].as_f64().unwrap_or_default(),
            matched.join(", "),
            answer.served_by
        );
    }

    // The catalog lists the plugin beside the defaults, with its health and call counters.
    let catalog = orchestrator.catalog();
    if let Some(plugin) = catalog.plugins.iter().find(|p| p.name == "SentimentPlugin") {
        println!(
            "3. catalog: {} {} ({:?}), capabilities {:?}, health {}, calls {}, errors {}",
            plugin.name,
            plugin.version,
            plugin.origin,
            plugin.capabilities,
            plugin
                .health
                .as_ref()
                .map_or("unknown".into(), |h| json!(h.state).to_string()),
            plugin.calls,
            plugin.errors
        );
    }
    if let Some(capability) = catalog.capabilities.iter().find(|c| c.name == "sentiment_analysis") {
        println!(
            "   sentiment_analysis: providers {:?}, enabled {}, legacy fallback {}",
            capability.providers, capability.enabled, capability.legacy_fallback
        );
    }

    // A malformed request is the caller's fault: refused at once, with what was expected.
    for bad in [
        json!({"txt": "typo in the field name"}),
        json!({"text": 42}),
        json!({"text": "ok", "neutral_band": 3}),
    ] {
        match orchestrator
            .execute(IntegrationRequest::new("sentiment_analysis", bad.clone()))
            .await
        {
            Ok(answer) => println!("4. UNEXPECTED: {bad} was accepted: {}", answer.data),
            Err(e) => println!("4. {bad} refused: {e}"),
        }
    }

    // Switched off: no plugin serves it and the legacy path has no handler for it.
    orchestrator.set_capability_enabled("sentiment_analysis", false)?;
    println!(
        "5. disabled: is_capability_enabled = {}",
        orchestrator.is_capability_enabled("sentiment_analysis")
    );
    match orchestrator
        .execute(IntegrationRequest::new("sentiment_analysis", json!({"text": "great"})))
        .await
    {
        Ok(answer) => println!("   UNEXPECTED: answered while disabled: {}", answer.data),
        Err(e) => println!("   call while disabled: {e}"),
    }

    orchestrator.set_capability_enabled("sentiment_analysis", true)?;
    let again = orchestrator
        .execute(IntegrationRequest::new(
            "sentiment_analysis",
            json!({"text": "great, it works"}),
        ))
        .await?;
    println!(
        "6. enabled again: {} {} (served by {})",
        again.data["label"], again.data["score"], again.served_by
    );
    Ok(())
}
