//! Agents through the public API: registration, status, concurrency, and a model-based check
//! of register/deregister.

use orchestrator::prelude::*;
use orchestrator::{AgentError, OrchestratorEvent};
use proptest::prelude::*;
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

#[tokio::test]
async fn default_config_generates_id_and_name() {
    let orch = Orchestrator::builder().build().await.expect("builds");
    let a = orch.register_agent(AgentConfig::default()).await.expect("registers");
    let b = orch.register_agent(AgentConfig::default()).await.expect("registers");
    assert_ne!(a, b);
    let agent = orch.agent(&a).expect("registered");
    assert_eq!(agent.name, a.to_string());
    assert_eq!(agent.capacity, 1);
    assert_eq!(agent.status, AgentStatus::Active);
}

#[tokio::test]
async fn duplicate_explicit_id_is_refused_and_nothing_is_lost() {
    let orch = Orchestrator::builder().build().await.expect("builds");
    let id = orch
        .register_agent(AgentConfig::new("first").with_id("w1").with_capabilities(["rust"]))
        .await
        .expect("registers");
    let err = orch
        .register_agent(AgentConfig::new("second").with_id("w1"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, OrchestratorError::Agent(AgentError::DuplicateId { .. })),
        "{err}"
    );
    assert!(err.to_string().contains("`w1` is already registered"), "{err}");
    let kept = orch.agent(&id).expect("still registered");
    assert_eq!(kept.name, "first");
    assert_eq!(kept.capabilities, ["rust"]);
    assert_eq!(orch.agent_count(), 1);
}

#[tokio::test]
async fn fifty_five_agents_are_all_active() {
    let orch = Orchestrator::builder().build().await.expect("builds");
    let mut ids = Vec::new();
    for i in 0..55 {
        ids.push(
            orch.register_agent(AgentConfig::new(format!("agent {i}")))
                .await
                .expect("registers"),
        );
    }
    assert_eq!(orch.agent_count(), 55);
    for id in &ids {
        assert_eq!(orch.agent_status(id).map(|s| s.to_string()).as_deref(), Some("active"));
    }
}

/// The seed's check: average registration time over 10 under 100 ms. (Speed proper is
/// measured by `benches/registration.rs`; this only guards against a gross regression.)
#[tokio::test]
async fn registration_averages_under_100ms() {
    let orch = Orchestrator::builder().build().await.expect("builds");
    let start = Instant::now();
    for _ in 0..10 {
        orch.register_agent(AgentConfig::default()).await.expect("registers");
    }
    assert!(start.elapsed() / 10 < Duration::from_millis(100));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_concurrent_registrations_none_lost_or_duplicated() {
    let orch = Orchestrator::builder().build().await.expect("builds");
    let mut handles = Vec::with_capacity(10_000);
    for i in 0..10_000 {
        let orch = orch.clone();
        // Half with explicit ids, half generated: both paths race.
        let config = if i % 2 == 0 {
            AgentConfig::new(format!("n{i}")).with_id(format!("explicit-{i}"))
        } else {
            AgentConfig::new(format!("n{i}"))
        };
        handles.push(tokio::spawn(orch.register_agent(config)));
    }
    let mut ids = HashSet::new();
    for h in handles {
        let id = h.await.expect("task ran").expect("registers");
        assert!(ids.insert(id), "an id was handed out twice");
    }
    assert_eq!(ids.len(), 10_000);
    assert_eq!(orch.agent_count(), 10_000);
    let listed: HashSet<AgentId> = orch.agents().into_iter().map(|a| a.id).collect();
    assert_eq!(listed, ids);
}

#[tokio::test]
async fn deregister_removes_and_unknown_id_is_an_error() {
    let orch = Orchestrator::builder().build().await.expect("builds");
    let id = orch.register_agent(AgentConfig::default()).await.expect("registers");
    orch.deregister_agent(&id).await.expect("deregisters");
    assert_eq!(orch.agent_status(&id), None);
    let err = orch.deregister_agent(&id).await.unwrap_err();
    assert!(
        matches!(err, OrchestratorError::Agent(AgentError::NotFound { .. })),
        "{err}"
    );
}

#[tokio::test]
async fn status_changes_are_announced_in_order() {
    let orch = Orchestrator::builder().build().await.expect("builds");
    let mut events = orch.subscribe_events();
    let id = orch
        .register_agent(AgentConfig::default().with_id("s1"))
        .await
        .expect("registers");
    orch.set_agent_status(&id, AgentStatus::Sleeping).expect("known agent");
    orch.set_agent_status(&id, AgentStatus::Sleeping)
        .expect("no change, no event");
    orch.set_agent_status(&id, AgentStatus::Offline).expect("known agent");
    orch.deregister_agent(&id).await.expect("deregisters");
    let mut seen = Vec::new();
    for _ in 0..4 {
        seen.push(
            tokio::time::timeout(Duration::from_secs(5), events.recv())
                .await
                .expect("in time")
                .expect("event"),
        );
    }
    assert_eq!(
        seen,
        vec![
            OrchestratorEvent::AgentRegistered { agent_id: "s1".into() },
            OrchestratorEvent::AgentStatusChanged {
                agent_id: "s1".into(),
                from: AgentStatus::Active,
                to: AgentStatus::Sleeping
            },
            OrchestratorEvent::AgentStatusChanged {
                agent_id: "s1".into(),
                from: AgentStatus::Sleeping,
                to: AgentStatus::Offline
            },
            OrchestratorEvent::AgentDeregistered { agent_id: "s1".into() },
        ]
    );
    assert!(
        orch.set_agent_status(&AgentId::from("ghost"), AgentStatus::Active)
            .is_err()
    );
}

#[derive(Debug, Clone)]
enum Op {
    Register(Option<u8>),
    Deregister(u8),
    SetStatus(u8, u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        prop::option::of(0u8..8).prop_map(Op::Register),
        (0u8..8).prop_map(Op::Deregister),
        (0u8..8, 0u8..4).prop_map(|(i, s)| Op::SetStatus(i, s)),
    ]
}

const STATUSES: [AgentStatus; 4] = [
    AgentStatus::Active,
    AgentStatus::Busy,
    AgentStatus::Sleeping,
    AgentStatus::Offline,
];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Register, deregister and status changes agree with a `HashMap` model at every step.
    #[test]
    fn registry_matches_a_hashmap_model(ops in prop::collection::vec(op(), 1..60)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        rt.block_on(async {
            let orch = Orchestrator::builder().build().await.expect("builds");
            let mut model: HashMap<AgentId, AgentStatus> = HashMap::new();
            let mut generated: Vec<AgentId> = Vec::new();
            for op in ops {
                match op {
                    Op::Register(Some(n)) => {
                        let id = AgentId::from(format!("fixed-{n}"));
                        let result = orch.register_agent(AgentConfig::default().with_id(id.clone())).await;
                        match model.entry(id.clone()) {
                            std::collections::hash_map::Entry::Occupied(_) => prop_assert!(result.is_err()),
                            std::collections::hash_map::Entry::Vacant(slot) => {
                                prop_assert_eq!(result.expect("fresh id registers"), id);
                                slot.insert(AgentStatus::Active);
                            }
                        }
                    }
                    Op::Register(None) => {
                        let id = orch.register_agent(AgentConfig::default()).await.expect("generated id registers");
                        prop_assert!(!model.contains_key(&id));
                        model.insert(id.clone(), AgentStatus::Active);
                        generated.push(id);
                    }
                    Op::Deregister(n) => {
                        let id = pick(n, &generated);
                        let result = orch.deregister_agent(&id).await;
                        prop_assert_eq!(result.is_ok(), model.remove(&id).is_some());
                    }
                    Op::SetStatus(n, s) => {
                        let id = pick(n, &generated);
                        let status = STATUSES[usize::from(s)];
                        let result = orch.set_agent_status(&id, status);
                        match model.get_mut(&id) {
                            Some(st) => { prop_assert!(result.is_ok()); *st = status; }
                            None => prop_assert!(result.is_err()),
                        }
                    }
                }
                prop_assert_eq!(orch.agent_count(), model.len());
                for (id, status) in &model {
                    prop_assert_eq!(orch.agent_status(id), Some(*status));
                }
            }
            Ok(())
        })?;
    }
}

/// Even numbers name a fixed id, odd ones a generated id (when there is one).
fn pick(n: u8, generated: &[AgentId]) -> AgentId {
    if n % 2 == 1 && !generated.is_empty() {
        generated[usize::from(n) % generated.len()].clone()
    } else {
        AgentId::from(format!("fixed-{n}"))
    }
}
