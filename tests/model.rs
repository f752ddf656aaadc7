//! Model-based tests: random sequences of operations on the agent registry and the capability
//! registry (register, deregister, status changes; register, replace, unregister, enable,
//! disable plugins; dispatch), applied both to a real orchestrator and to a plain model of
//! what each should do. After every step the two must agree: on whether the operation was
//! accepted, on who serves a dispatch, and on the whole visible state.

mod common;

use common::{Behaviour, ScriptedPlugin};
use orchestrator::prelude::*;
use orchestrator::{DispatchError, PluginOptions};
use proptest::prelude::*;
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};

const PLUGINS: [&str; 4] = ["P0", "P1", "P2", "P3"];
const CAPABILITIES: [&str; 3] = ["cap_a", "cap_b", "cap_c"];
const STATUSES: [AgentStatus; 4] = [
    AgentStatus::Active,
    AgentStatus::Busy,
    AgentStatus::Sleeping,
    AgentStatus::Offline,
];

#[derive(Debug, Clone)]
enum Op {
    /// `Some(n)`: the explicit id `xn`; `None`: a generated id.
    RegisterAgent(Option<u8>),
    /// The n-th id known to the model (modulo), or an unknown one when there is none.
    DeregisterAgent(u8),
    SetStatus(u8, usize),
    RegisterPlugin {
        plugin: usize,
        capabilities: Vec<usize>,
        priority: Option<i32>,
        replace: bool,
    },
    UnregisterPlugin(usize),
    SetEnabled(usize, bool),
    Dispatch(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        proptest::option::of(0u8..6).prop_map(Op::RegisterAgent),
        any::<u8>().prop_map(Op::DeregisterAgent),
        (any::<u8>(), 0..STATUSES.len()).prop_map(|(a, s)| Op::SetStatus(a, s)),
        (
            0..PLUGINS.len(),
            proptest::sample::subsequence((0..CAPABILITIES.len()).collect::<Vec<_>>(), 1..=CAPABILITIES.len()),
            proptest::option::of(-2i32..3),
            any::<bool>()
        )
            .prop_map(|(plugin, capabilities, priority, replace)| Op::RegisterPlugin {
                plugin,
                capabilities,
                priority,
                replace
            }),
        (0..PLUGINS.len()).prop_map(Op::UnregisterPlugin),
        (0..CAPABILITIES.len(), any::<bool>()).prop_map(|(c, on)| Op::SetEnabled(c, on)),
        (0..CAPABILITIES.len()).prop_map(Op::Dispatch),
    ]
}

/// What the orchestrator should hold.
#[derive(Default, Debug)]
struct Model {
    agents: BTreeMap<String, AgentStatus>,
    /// Plugin name -> (capabilities, explicit priority).
    plugins: BTreeMap<String, (Vec<String>, Option<i32>)>,
    disabled: BTreeSet<String>,
}

impl Model {
    fn known_agent(&self, n: u8) -> String {
        let ids: Vec<&String> = self.agents.keys().collect();
        if ids.is_empty() {
            "nobody".to_owned()
        } else {
            ids[n as usize % ids.len()].clone()
        }
    }

    /// Whether registering would be accepted: a same-named plugin needs `replace`, and every
    /// other provider of a shared capability needs a distinct explicit priority.
    fn accepts(&self, name: &str, capabilities: &[String], priority: Option<i32>, replace: bool) -> bool {
        if !replace && self.plugins.contains_key(name) {
            return false;
        }
        self.plugins
            .iter()
            .filter(|(other, _)| other.as_str() != name)
            .all(|(_, (theirs, their_priority))| {
                let shared = capabilities.iter().any(|c| theirs.contains(c));
                !shared || priority.is_some_and(|p| p != their_priority.unwrap_or(0))
            })
    }

    fn provides(&self, capability: &str) -> bool {
        self.plugins
            .values()
            .any(|(caps, _)| caps.iter().any(|c| c == capability))
    }

    /// The provider that serves `capability` first: highest priority, then name.
    fn first_provider(&self, capability: &str) -> Option<&str> {
        self.plugins
            .iter()
            .filter(|(_, (caps, _))| caps.iter().any(|c| c == capability))
            .max_by(|(a_name, (_, a)), (b_name, (_, b))| {
                a.unwrap_or(0).cmp(&b.unwrap_or(0)).then_with(|| b_name.cmp(a_name))
            })
            .map(|(name, _)| name.as_str())
    }
}

async fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let orch = Orchestrator::builder()
        .legacy_mode(false)
        .build()
        .await
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    let mut model = Model::default();
    for (step, op) in ops.into_iter().enumerate() {
        let context = format!("step {step}: {op:?}");
        match op {
            Op::RegisterAgent(explicit) => {
                let mut config = AgentConfig::new("w");
                if let Some(n) = explicit {
                    config = config.with_id(format!("x{n}"));
                }
                let result = orch.register_agent(config).await;
                match explicit.map(|n| format!("x{n}")) {
                    Some(id) if model.agents.contains_key(&id) => {
                        prop_assert!(result.is_err(), "{context}: a duplicate id was accepted")
                    }
                    _ => {
                        let id = result.map_err(|e| TestCaseError::fail(format!("{context}: {e}")))?;
                        prop_assert!(
                            model.agents.insert(id.to_string(), AgentStatus::Active).is_none(),
                            "{context}: a generated id {id} was already registered"
                        );
                    }
                }
            }
            Op::DeregisterAgent(n) => {
                let id = model.known_agent(n);
                let result = orch.deregister_agent(&AgentId::from(id.as_str())).await;
                prop_assert_eq!(result.is_ok(), model.agents.remove(&id).is_some(), "{}", context);
            }
            Op::SetStatus(n, s) => {
                let id = model.known_agent(n);
                let result = orch.set_agent_status(&AgentId::from(id.as_str()), STATUSES[s]);
                match model.agents.get_mut(&id) {
                    Some(status) => {
                        prop_assert!(result.is_ok(), "{context}");
                        *status = STATUSES[s];
                    }
                    None => prop_assert!(result.is_err(), "{context}"),
                }
            }
            Op::RegisterPlugin {
                plugin,
                capabilities,
                priority,
                replace,
            } => {
                let name = PLUGINS[plugin];
                let caps: Vec<String> = capabilities.iter().map(|c| CAPABILITIES[*c].to_owned()).collect();
                let cap_refs: Vec<&str> = caps.iter().map(String::as_str).collect();
                let mut options = PluginOptions::new();
                if let Some(p) = priority {
                    options = options.priority(p);
                }
                if replace {
                    options = options.replace();
                }
                let accepted = model.accepts(name, &caps, priority, replace);
                let result = orch
                    .register_plugin_with(ScriptedPlugin::new(name, &cap_refs, Behaviour::Echo), options)
                    .await;
                prop_assert_eq!(result.is_ok(), accepted, "{}: {:?}", context, result.err());
                if accepted {
                    model.plugins.insert(name.to_owned(), (caps, priority));
                }
            }
            Op::UnregisterPlugin(plugin) => {
                let name = PLUGINS[plugin];
                let result = orch.unregister_plugin(name).await;
                prop_assert_eq!(result.is_ok(), model.plugins.remove(name).is_some(), "{}", context);
            }
            Op::SetEnabled(c, on) => {
                let capability = CAPABILITIES[c];
                let result = orch.set_capability_enabled(capability, on);
                if model.provides(capability) {
                    prop_assert!(result.is_ok(), "{context}");
                    if on {
                        model.disabled.remove(capability);
                    } else {
                        model.disabled.insert(capability.to_owned());
                    }
                } else {
                    prop_assert!(result.is_err(), "{context}: an unknown capability was switched");
                }
            }
            Op::Dispatch(c) => {
                let capability = CAPABILITIES[c];
                let result = orch.execute(IntegrationRequest::new(capability, json!({}))).await;
                match (model.first_provider(capability), model.disabled.contains(capability)) {
                    (Some(first), false) => {
                        let response = result.map_err(|e| TestCaseError::fail(format!("{context}: {e}")))?;
                        prop_assert_eq!(response.served_by.as_str(), first, "{}", context);
                    }
                    (Some(_), true) => prop_assert!(
                        matches!(
                            result,
                            Err(OrchestratorError::Dispatch(DispatchError::CapabilityDisabled { .. }))
                        ),
                        "{context}: {result:?}"
                    ),
                    (None, _) => prop_assert!(
                        matches!(
                            result,
                            Err(OrchestratorError::Dispatch(DispatchError::UnknownCapability { .. }))
                        ),
                        "{context}: {result:?}"
                    ),
                }
            }
        }

        // The whole visible state agrees after every step.
        prop_assert_eq!(orch.agent_count(), model.agents.len(), "{}", context);
        for (id, status) in &model.agents {
            prop_assert_eq!(
                orch.agent_status(&AgentId::from(id.as_str())),
                Some(*status),
                "{}",
                context
            );
        }
        let plugins: BTreeSet<String> = orch.plugins().into_iter().map(|p| p.name).collect();
        let expected: BTreeSet<String> = model.plugins.keys().cloned().collect();
        prop_assert_eq!(plugins, expected, "{}", context);
        let capabilities: BTreeSet<String> = orch.capabilities().into_iter().collect();
        let provided: BTreeSet<String> = model.plugins.values().flat_map(|(c, _)| c.clone()).collect();
        prop_assert_eq!(capabilities, provided, "{}", context);
        for capability in CAPABILITIES {
            prop_assert_eq!(
                orch.is_capability_enabled(capability),
                !model.disabled.contains(capability),
                "{}",
                context
            );
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    #[test]
    fn the_registries_agree_with_a_plain_model(ops in proptest::collection::vec(op(), 1..50)) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(run(ops))?;
    }
}
