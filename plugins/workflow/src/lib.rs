//! `EnhancedWorkflowPlugin`: task analysis, slash commands and quality gates for `orchestrator`.
//! For applications that embed the orchestrator (statically, or as a dynamic library built from
//! this crate).
//!
//! # Capabilities
//!
//! **`extended_thinking`**: analyses a task before it runs.
//! - request: `{"task_description": string}`
//! - response: `{"thinking_insights": [string], "complexity": 0..1, "plan": [string],
//!   "required_capabilities": [string], "domains": [string], "engine": string}`
//!
//! The analysis comes from a [`ThinkingEngine`]: [`HeuristicThinkingEngine`] by default (a
//! deterministic text analysis, documented in [`thinking`]), or yours
//! ([`EnhancedWorkflowPlugin::with_engine`]), e.g. backed by an LLM.
//!
//! **`slash_commands`**: parses `/name --flag=value "quoted arg"` (see [`command`]) and runs
//! the command, usually by calling another capability through the orchestrator.
//! - request: `{"command": "/route --capabilities=rust \"fix the build\""}`, or `{"op": "list"}`
//! - response: `{"command", "flags": {..}, "positional": [..], "dispatched_to", "result"}`;
//!   list: `{"commands": [{"name", "description", "dispatches_to"}]}`
//! - built-in commands: `/analyze TEXT` (-> `extended_thinking`), `/route TEXT
//!   [--capabilities=a,b] [--agents=x,y]` (-> `semantic_routing`), `/audit [--agent=ID]
//!   [--limit=N]` (-> `audit_logging` query), `/agents [--status=active]` (the host's agent
//!   list), `/help` (the command list)
//! - your commands: [`EnhancedWorkflowPlugin::with_command`] or the `commands` configuration
//!   table; they call their capability with `{"args": [positional...], flag: value, ...}`
//!   (flag values that read as JSON numbers or booleans are passed as such).
//! - an unknown command is refused with the list of known ones; bad quoting is refused saying
//!   where. A command whose capability fails answers `success: false` with the reason.
//!
//! **`quality_gates`**: evaluates criteria against metrics (see the `gates` module).
//! - request: `{"criteria": {metric: {"min"?, "max"?, "equals"?}}, "metrics": {metric: number},
//!   "workflow_id"?}`
//! - response: `{"passed", "gates": [{"metric", "passed", "actual", "threshold", "reason"}],
//!   "failed", "total", "workflow_id"}`
//!
//! # Configuration
//!
//! ```toml
//! [EnhancedWorkflowPlugin.commands.deploy]
//! capability = "deployment_pipeline"      # called with {"args": [...], flags...}
//! description = "Deploy a service"
//! ```
//!
//! Unknown keys are refused at initialization, naming them.

pub mod command;
mod gates;
pub mod thinking;

pub use command::{ParseError, ParsedCommand, parse_command};
pub use thinking::{Analysis, HeuristicThinkingEngine, ThinkingContext, ThinkingEngine};

use plugin_api::prelude::*;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, OnceLock, RwLock};

/// The plugin's name.
pub const NAME: &str = "EnhancedWorkflowPlugin";

/// What a slash command does.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Action {
    Analyze,
    Route,
    Audit,
    Agents,
    Help,
    /// Calls this capability with the arguments as data.
    Call(String),
}

impl Action {
    fn dispatches_to(&self) -> String {
        match self {
            Action::Analyze => "extended_thinking".into(),
            Action::Route => "semantic_routing".into(),
            Action::Audit => "audit_logging".into(),
            Action::Agents => "host: agents".into(),
            Action::Help => "workflow: command list".into(),
            Action::Call(capability) => capability.clone(),
        }
    }
}

#[derive(Debug, Clone)]
struct Command {
    description: String,
    action: Action,
}

fn builtin_commands() -> BTreeMap<String, Command> {
    let c = |description: &str, action| Command {
        description: description.into(),
        action,
    };
    BTreeMap::from([
        ("analyze".into(), c("Analyse a task: /analyze TEXT", Action::Analyze)),
        (
            "route".into(),
            c(
                "Pick an agent: /route TEXT [--capabilities=a,b] [--agents=x,y]",
                Action::Route,
            ),
        ),
        (
            "audit".into(),
            c("Read the audit log: /audit [--agent=ID] [--limit=N]", Action::Audit),
        ),
        (
            "agents".into(),
            c("List agents: /agents [--status=active]", Action::Agents),
        ),
        ("help".into(), c("List the commands: /help", Action::Help)),
    ])
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct WorkflowConfig {
    #[serde(default)]
    commands: BTreeMap<String, CommandConfig>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CommandConfig {
    capability: String,
    #[serde(default)]
    description: Option<String>,
}

/// Task analysis, slash commands and quality gates.
pub struct EnhancedWorkflowPlugin {
    engine: Arc<dyn ThinkingEngine>,
    commands: RwLock<BTreeMap<String, Command>>,
    host: OnceLock<HostHandle>,
    fleet: RwLock<Option<FleetCapabilities>>,
}

/// Every capability the fleet declares, as last read from the host: read again after an agent
/// registers or leaves (the host's events), and at least every [`FLEET_REFRESH_NS`] in case an
/// event was missed. Reading it costs a snapshot of every agent, which per task would make
/// each analysis cost as much as the fleet is large.
struct FleetCapabilities {
    capabilities: Arc<BTreeSet<String>>,
    read_at_ns: u64,
}

/// How old the fleet's capabilities may get before they are read again regardless of events.
const FLEET_REFRESH_NS: u64 = 1_000_000_000;

impl Default for EnhancedWorkflowPlugin {
    fn default() -> Self {
        Self {
            engine: Arc::new(HeuristicThinkingEngine),
            commands: RwLock::new(builtin_commands()),
            host: OnceLock::new(),
            fleet: RwLock::new(None),
        }
    }
}

impl std::fmt::Debug for EnhancedWorkflowPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnhancedWorkflowPlugin")
            .field("engine", &self.engine.name())
            .finish_non_exhaustive()
    }
}

impl EnhancedWorkflowPlugin {
    /// The plugin with the heuristic engine and the built-in commands.
    pub fn new() -> Self {
        Self::default()
    }

    /// Uses `engine` for `extended_thinking`.
    #[must_use]
    pub fn with_engine(mut self, engine: impl ThinkingEngine) -> Self {
        self.engine = Arc::new(engine);
        self
    }

    /// Adds (or replaces) the command `/name`, which calls `capability`.
    #[must_use]
    pub fn with_command(
        self,
        name: impl Into<String>,
        description: impl Into<String>,
        capability: impl Into<String>,
    ) -> Self {
        self.commands.write().unwrap_or_else(|p| p.into_inner()).insert(
            name.into(),
            Command {
                description: description.into(),
                action: Action::Call(capability.into()),
            },
        );
        self
    }

    fn host(&self) -> Result<&HostHandle, PluginError> {
        self.host
            .get()
            .ok_or_else(|| PluginError::unavailable(format!("{NAME} is not initialized")))
    }

    async fn extended_thinking(&self, data: &Value) -> Result<Value, PluginError> {
        let task = data
            .get("task_description")
            .and_then(Value::as_str)
            .ok_or_else(|| PluginError::invalid_request("expected {\"task_description\": string}"))?;
        let agent_capabilities = match self.host.get() {
            Some(host) => self.fleet_capabilities(host),
            None => Arc::default(),
        };
        let analysis = self
            .engine
            .analyse(task, &ThinkingContext::new(agent_capabilities))
            .await?;
        let mut out = serde_json::to_value(&analysis).map_err(|e| PluginError::new(e.to_string()))?;
        out["engine"] = json!(self.engine.name());
        Ok(out)
    }

    fn fleet_capabilities(&self, host: &HostHandle) -> Arc<BTreeSet<String>> {
        let now = host.monotonic_ns();
        if let Some(fleet) = self.fleet.read().unwrap_or_else(|p| p.into_inner()).as_ref() {
            if now.saturating_sub(fleet.read_at_ns) < FLEET_REFRESH_NS {
                return Arc::clone(&fleet.capabilities);
            }
        }
        let capabilities: Arc<BTreeSet<String>> =
            Arc::new(host.agents().into_iter().flat_map(|a| a.capabilities).collect());
        *self.fleet.write().unwrap_or_else(|p| p.into_inner()) = Some(FleetCapabilities {
            capabilities: Arc::clone(&capabilities),
            read_at_ns: now,
        });
        capabilities
    }

    fn command_list(&self) -> Value {
        let commands = self.commands.read().unwrap_or_else(|p| p.into_inner());
        let list: Vec<Value> = commands
            .iter()
            .map(|(name, c)| json!({"name": format!("/{name}"), "description": c.description, "dispatches_to": c.action.dispatches_to()}))
            .collect();
        json!({ "commands": list })
    }

    async fn slash_command(&self, data: &Value) -> Result<IntegrationResponse, PluginError> {
        const EXPECTED: &str = "expected {\"command\": \"/name --flag=value \\\"arg\\\"\"} or {\"op\": \"list\"}";
        match data.get("op") {
            None => {}
            Some(Value::String(op)) if op == "list" => return Ok(IntegrationResponse::ok(self.command_list())),
            Some(Value::String(op)) if op == "run" => {}
            Some(other) => return Err(PluginError::invalid_request(format!("unknown op {other}; {EXPECTED}"))),
        }
        let line = data
            .get("command")
            .and_then(Value::as_str)
            .ok_or_else(|| PluginError::invalid_request(EXPECTED))?;
        let parsed =
            parse_command(line).map_err(|e| PluginError::invalid_request(format!("cannot parse {line:?}: {e}")))?;
        let command = self
            .commands
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&parsed.name)
            .cloned();
        let Some(command) = command else {
            let known: Vec<String> = self
                .commands
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .keys()
                .map(|k| format!("/{k}"))
                .collect();
            return Err(PluginError::invalid_request(format!(
                "unknown command `/{}`; known commands: {}",
                parsed.name,
                known.join(", ")
            )));
        };
        let text = parsed.positional.join(" ");
        let list = |key: &str| -> Option<Vec<String>> {
            parsed.flags.get(key).map(|v| {
                v.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
        };
        let request = match &command.action {
            Action::Help => return Ok(self.command_answer(&parsed, &command, self.command_list())),
            Action::Agents => {
                let wanted = parsed.flags.get("status");
                let mut listed = self.host()?.agents();
                listed.sort_by(|a, b| a.id.cmp(&b.id));
                let agents: Vec<Value> = listed
                    .into_iter()
                    .filter(|a| wanted.is_none_or(|s| a.status.as_str() == s))
                    .map(|a| json!({"id": a.id, "name": a.name, "status": a.status, "load": a.load, "capacity": a.capacity}))
                    .collect();
                return Ok(self.command_answer(&parsed, &command, json!({ "agents": agents })));
            }
            Action::Analyze => {
                if text.is_empty() {
                    return Err(PluginError::invalid_request(
                        "/analyze needs the task to analyse: /analyze TEXT",
                    ));
                }
                json!({ "task_description": text })
            }
            Action::Route => {
                if text.is_empty() {
                    return Err(PluginError::invalid_request(
                        "/route needs the task: /route TEXT [--capabilities=a,b]",
                    ));
                }
                let mut data = json!({"task": {"description": text, "required_capabilities": list("capabilities").unwrap_or_default()}});
                if let Some(agents) = list("agents") {
                    data["available_agents"] = json!(agents);
                }
                data
            }
            Action::Audit => {
                let mut data = json!({"op": "query"});
                if let Some(agent) = parsed.flags.get("agent") {
                    data["agent_id"] = json!(agent);
                }
                if let Some(limit) = parsed.flags.get("limit") {
                    let n: u64 = limit
                        .parse()
                        .map_err(|_| PluginError::invalid_request("--limit must be a number"))?;
                    data["limit"] = json!(n);
                }
                data
            }
            Action::Call(_) => {
                let mut data = Map::new();
                data.insert("args".into(), json!(parsed.positional));
                for (k, v) in &parsed.flags {
                    let value = match serde_json::from_str::<Value>(v) {
                        Ok(n @ (Value::Number(_) | Value::Bool(_))) => n,
                        _ => Value::String(v.clone()),
                    };
                    data.insert(k.clone(), value);
                }
                Value::Object(data)
            }
        };
        let capability = command.action.dispatches_to();
        let answer = self
            .host()?
            .call(IntegrationRequest::new(capability.clone(), request))
            .await;
        Ok(match answer {
            Ok(response) if response.success => {
                let mut out = self.command_answer(&parsed, &command, response.data);
                out.data["served_by"] = json!(response.served_by);
                out
            }
            Ok(response) => IntegrationResponse::failure(format!(
                "/{} dispatched to {capability}, which answered: {}",
                parsed.name,
                response.error.unwrap_or_default()
            )),
            Err(e) => IntegrationResponse::failure(format!(
                "/{} dispatched to {capability}, which failed: {e}",
                parsed.name
            )),
        })
    }

    fn command_answer(&self, parsed: &ParsedCommand, command: &Command, result: Value) -> IntegrationResponse {
        IntegrationResponse::ok(json!({
            "command": parsed.name,
            "flags": parsed.flags,
            "positional": parsed.positional,
            "dispatched_to": command.action.dispatches_to(),
            "result": result,
        }))
    }
}

#[async_trait]
impl OrchestrationPlugin for EnhancedWorkflowPlugin {
    fn name(&self) -> &str {
        NAME
    }

    fn version(&self) -> &str {
        env!("CARGO_PKG_VERSION")
    }

    fn capabilities(&self) -> Vec<String> {
        vec![
            "extended_thinking".into(),
            "slash_commands".into(),
            "quality_gates".into(),
        ]
    }

    async fn initialize(&self, host: HostHandle) -> Result<(), PluginError> {
        let config: WorkflowConfig = host.config_as()?;
        {
            let mut commands = self.commands.write().unwrap_or_else(|p| p.into_inner());
            for (name, c) in config.commands {
                if parse_command(&format!("/{name}")).is_err() {
                    return Err(PluginError::new(format!(
                        "{NAME} configuration: `{name}` is not a command name"
                    )));
                }
                let description = c.description.unwrap_or_else(|| format!("Calls {}", c.capability));
                commands.insert(
                    name,
                    Command {
                        description,
                        action: Action::Call(c.capability),
                    },
                );
            }
        }
        // A second initialize (re-registration of the same value) keeps the first host.
        let _ = self.host.set(host);
        Ok(())
    }

    async fn process_request(&self, request: IntegrationRequest) -> Result<IntegrationResponse, PluginError> {
        let data = &request.data;
        match request.capability.as_str() {
            "extended_thinking" => self.extended_thinking(data).await.map(IntegrationResponse::ok),
            "slash_commands" => self.slash_command(data).await,
            "quality_gates" => gates::evaluate(data)
                .map(IntegrationResponse::ok)
                .map_err(PluginError::invalid_request),
            other => Err(PluginError::invalid_request(format!(
                "{NAME} does not serve `{other}` (it serves extended_thinking, slash_commands, quality_gates)"
            ))),
        }
    }

    async fn on_event(&self, event: &OrchestratorEvent) {
        if matches!(
            event,
            OrchestratorEvent::AgentRegistered { .. } | OrchestratorEvent::AgentDeregistered { .. }
        ) {
            *self.fleet.write().unwrap_or_else(|p| p.into_inner()) = None;
        }
    }

    async fn health_check(&self) -> HealthStatus {
        if self.host.get().is_some() {
            HealthStatus::healthy()
        } else {
            HealthStatus::unhealthy("not initialized")
        }
    }
}
