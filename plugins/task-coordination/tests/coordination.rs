//! TaskCoordinationPlugin through a real orchestrator: requests fulfilled at once and from the
//! queue (by priority, on completions, releases, cancellations and host events), timeouts on the
//! host clock, the mapping both ways, consistency under concurrency, workload figures, bad input
//! and the conformance kit.

use orchestrator_core::{
    AgentConfig, AgentExecutor, AgentId, AgentStatus, ExecutionContext, ExecutorError, Orchestrator, OrchestratorError,
};
use plugin_api::{HealthState, IntegrationRequest, OrchestratorEvent};
use plugin_task_coordination::{NAME, TaskCoordinationPlugin};
use serde_json::{Value, json};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Semaphore, broadcast};

async fn orchestrator(config: Value) -> Orchestrator {
    Orchestrator::builder()
        .legacy_mode(false)
        .plugin(TaskCoordinationPlugin::default())
        .configure(NAME, config)
        .build()
        .await
        .expect("builds")
}

async fn try_call(orch: &Orchestrator, capability: &str, data: Value) -> Result<Value, OrchestratorError> {
    orch.execute(IntegrationRequest::new(capability, data)).await.map(|r| {
        assert!(r.success, "{r:?}");
        r.data
    })
}

async fn call(orch: &Orchestrator, capability: &str, data: Value) -> Value {
    match try_call(orch, capability, data.clone()).await {
        Ok(answer) => answer,
        Err(e) => panic!("{capability} {data}: {e}"),
    }
}

/// The error text of a call that must be refused as an invalid request.
async fn refused(orch: &Orchestrator, capability: &str, data: Value) -> String {
    match try_call(orch, capability, data.clone()).await {
        Ok(answer) => panic!("{capability} {data} was accepted: {answer}"),
        Err(e) => {
            let text = e.to_string();
            assert!(text.contains("invalid request"), "{capability} {data}: {text}");
            text
        }
    }
}

async fn agent(orch: &Orchestrator, id: &str, capacity: u32, capabilities: &[&str]) {
    orch.register_agent(
        AgentConfig::new(id)
            .with_id(id)
            .with_capacity(capacity)
            .with_capabilities(capabilities.iter().copied()),
    )
    .await
    .expect("registers");
}

async fn request(orch: &Orchestrator, data: Value) -> (String, Value) {
    let answer = call(orch, "agent_requests", data).await;
    let id = answer["request_id"].as_str().expect("a request id").to_owned();
    (id, answer)
}

async fn status(orch: &Orchestrator, id: &str) -> Value {
    call(orch, "agent_requests", json!({"op": "status", "request_id": id})).await
}

/// Waits (at most 2 s) for the `agent_request_fulfilled` event of `request_id`.
async fn fulfilled_event(events: &mut broadcast::Receiver<OrchestratorEvent>, request_id: &str) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    loop {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Ok(OrchestratorEvent::Custom { source, name, data, .. }))
                if name == "agent_request_fulfilled" && data["request_id"] == request_id =>
            {
                assert_eq!(source, NAME);
                return data;
            }
            Ok(Ok(_)) => continue,
            Ok(Err(e)) => panic!("event stream: {e}"),
            Err(_) => panic!("no agent_request_fulfilled event for {request_id} within 2 s"),
        }
    }
}

/// Polls `status` every 10 ms (at most 2 s) until the request reaches `wanted`.
async fn wait_for_status(orch: &Orchestrator, id: &str, wanted: &str) -> Value {
    for _ in 0..200 {
        let answer = status(orch, id).await;
        if answer["status"] == wanted {
            return answer;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{id} never became {wanted}: {}", status(orch, id).await);
}

/// Waits (at most 2 s) until `event` has gone through: the orchestrator hands each event to the
/// plugins before its subscribers, so the plugin has handled it (and everything before it).
async fn event_seen(events: &mut broadcast::Receiver<OrchestratorEvent>, event: &OrchestratorEvent) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    loop {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Ok(seen)) if seen == *event => return,
            Ok(Ok(_)) => continue,
            Ok(Err(e)) => panic!("event stream: {e}"),
            Err(_) => panic!("no {event:?} within 2 s"),
        }
    }
}

/// An executor whose tasks run until the test lets one finish (one permit each), so that an
/// agent carries load on the host for as long as the test needs.
struct Gate(Arc<Semaphore>);

#[async_trait::async_trait]
impl AgentExecutor for Gate {
    async fn execute(&self, _context: ExecutionContext) -> Result<Value, ExecutorError> {
        let permit = self
            .0
            .acquire()
            .await
            .map_err(|e| ExecutorError::new(format!("the gate closed: {e}")))?;
        permit.forget();
        Ok(json!({"ran": true}))
    }
}

/// Polls (every 10 ms, at most 2 s) until the host reports `load` on `agent`.
async fn wait_for_host_load(orch: &Orchestrator, agent: &str, load: u32) {
    for _ in 0..200 {
        if orch.agent(&AgentId::from(agent)).map(|a| a.load) == Some(load) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{agent} never reached host load {load}");
}

fn queue_order(answer: &Value) -> Vec<String> {
    answer["queue"]
        .as_array()
        .expect("a queue")
        .iter()
        .map(|e| e["request_id"].as_str().unwrap_or_default().to_owned())
        .collect()
}

#[tokio::test]
async fn a_request_is_fulfilled_at_once_by_the_least_loaded_fitting_agent() {
    let orch = orchestrator(json!({})).await;
    agent(&orch, "alpha", 2, &["rust", "review"]).await;
    agent(&orch, "beta", 1, &["python"]).await;
    agent(&orch, "gamma", 3, &["rust"]).await;

    let (first, answer) = request(&orch, json!({"requirements": {"capabilities": ["rust"]}})).await;
    assert_eq!(answer["status"], "fulfilled");
    assert_eq!(answer["agent_id"], "alpha", "tie between alpha and gamma: lowest id");
    let (_, answer) = request(
        &orch,
        json!({"op": "request", "requirements": {"capabilities": ["rust"]}}),
    )
    .await;
    assert_eq!(answer["agent_id"], "gamma", "alpha holds a reservation now");
    let (_, answer) = request(&orch, json!({})).await;
    assert_eq!(answer["agent_id"], "beta", "the only agent with nothing reserved");
    let (_, answer) = request(&orch, json!({"requirements": {"capabilities": ["rust", "review"]}})).await;
    assert_eq!(answer["agent_id"], "alpha", "the only one with both capabilities");

    // alpha 2/2, beta 1/1, gamma 1/3: python fits nobody, max_load 1 fits nobody.
    let (_, answer) = request(&orch, json!({"requirements": {"capabilities": ["python"]}})).await;
    assert_eq!(answer["status"], "queued");
    assert_eq!(answer["position"], 0);
    let (_, answer) = request(&orch, json!({"requirements": {"max_load": 1}})).await;
    assert_eq!(answer["status"], "queued");

    // A busy or offline agent takes nothing, whatever its load.
    orch.set_agent_status(&AgentId::from("gamma"), AgentStatus::Offline)
        .expect("gamma exists");
    let (_, answer) = request(&orch, json!({"requirements": {"capabilities": ["rust"]}})).await;
    assert_eq!(answer["status"], "queued");

    let first = status(&orch, &first).await;
    assert_eq!(first["status"], "fulfilled");
    assert_eq!(first["agent_id"], "alpha");
    assert_eq!(first["priority"], 0);
    assert_eq!(first["waited_ms"], 0);
    assert_eq!(first["requirements"]["capabilities"], json!(["rust"]));
}

#[tokio::test]
async fn queued_requests_are_served_in_priority_order_as_capacity_frees_up() {
    let orch = orchestrator(json!({})).await;
    let mut events = orch.subscribe_events();
    agent(&orch, "solo", 1, &[]).await;

    let (r0, answer) = request(&orch, json!({})).await;
    assert_eq!(answer["agent_id"], "solo");
    // The reservation becomes the task; the agent comes from the request.
    let assigned = call(
        &orch,
        "task_mapping",
        json!({"op": "assign", "task_id": "t1", "request_id": r0}),
    )
    .await;
    assert_eq!(assigned["agent_id"], "solo");
    assert_eq!(status(&orch, &r0).await["task_id"], "t1");

    let (r1, _) = request(&orch, json!({"priority": 1})).await;
    let (r2, _) = request(&orch, json!({"priority": 5})).await;
    let (r3, answer) = request(&orch, json!({"priority": 5})).await;
    assert_eq!(answer["status"], "queued");
    assert_eq!(answer["position"], 1, "behind the earlier priority-5 request");
    let queue = call(&orch, "agent_requests", json!({"op": "queue"})).await;
    assert_eq!(queue_order(&queue), [r2.clone(), r3.clone(), r1.clone()]);
    assert_eq!(queue["length"], 3);

    // A task completes: the highest priority, first come, is served.
    call(&orch, "task_mapping", json!({"op": "complete", "task_id": "t1"})).await;
    let served = status(&orch, &r2).await;
    assert_eq!(served["status"], "fulfilled");
    assert_eq!(served["agent_id"], "solo");
    let event = fulfilled_event(&mut events, &r2).await;
    assert_eq!(event["agent_id"], "solo");
    assert_eq!(event["priority"], 5);
    assert_eq!(status(&orch, &r3).await["status"], "queued");

    // A reservation is released: the next one.
    let released = call(&orch, "agent_requests", json!({"op": "release", "request_id": r2})).await;
    assert_eq!(released["status"], "released");
    assert_eq!(status(&orch, &r3).await["status"], "fulfilled");
    fulfilled_event(&mut events, &r3).await;

    // Cancelling a fulfilled request releases its reservation: the last one.
    let cancelled = call(&orch, "agent_requests", json!({"op": "cancel", "request_id": r3})).await;
    assert_eq!(cancelled["status"], "released");
    assert_eq!(status(&orch, &r1).await["status"], "fulfilled");
    fulfilled_event(&mut events, &r1).await;

    assert_eq!(status(&orch, &r2).await["status"], "released");
    assert_eq!(status(&orch, &r3).await["status"], "released");
    let queue = call(&orch, "agent_requests", json!({"op": "queue"})).await;
    assert_eq!(queue["length"], 0);
}

#[tokio::test]
async fn an_agent_registering_or_waking_up_serves_the_queue() {
    let orch = orchestrator(json!({})).await;
    let mut events = orch.subscribe_events();
    let (low, _) = request(&orch, json!({"requirements": {"capabilities": ["gpu"]}, "priority": 1})).await;
    let (high, answer) = request(&orch, json!({"requirements": {"capabilities": ["gpu"]}, "priority": 9})).await;
    assert_eq!(answer["status"], "queued");
    assert_eq!(answer["position"], 0);

    // Only the plugin's on_event can serve these: nothing calls it in between.
    agent(&orch, "g", 1, &["gpu"]).await;
    let event = fulfilled_event(&mut events, &high).await;
    assert_eq!(event["agent_id"], "g");
    assert_eq!(status(&orch, &high).await["agent_id"], "g");
    assert_eq!(status(&orch, &low).await["status"], "queued", "g has room for one");

    agent(&orch, "o", 1, &["ops"]).await;
    orch.set_agent_status(&AgentId::from("o"), AgentStatus::Offline)
        .expect("o exists");
    let (ops, answer) = request(&orch, json!({"requirements": {"capabilities": ["ops"]}})).await;
    assert_eq!(answer["status"], "queued", "o is offline");
    orch.set_agent_status(&AgentId::from("o"), AgentStatus::Active)
        .expect("o exists");
    let event = fulfilled_event(&mut events, &ops).await;
    assert_eq!(event["agent_id"], "o");
}

#[tokio::test]
async fn requests_can_be_cancelled_once() {
    let orch = orchestrator(json!({})).await;
    let (id, answer) = request(&orch, json!({"priority": -4})).await;
    assert_eq!(answer["status"], "queued");
    let cancelled = call(&orch, "agent_requests", json!({"op": "cancel", "request_id": id})).await;
    assert_eq!(cancelled["status"], "cancelled");
    assert_eq!(status(&orch, &id).await["status"], "cancelled");
    let again = refused(&orch, "agent_requests", json!({"op": "cancel", "request_id": id})).await;
    assert!(
        again.contains("cannot be cancelled") && again.contains("cancelled"),
        "{again}"
    );
    let unknown = refused(
        &orch,
        "agent_requests",
        json!({"op": "cancel", "request_id": "req-424242"}),
    )
    .await;
    assert!(unknown.contains("req-424242"), "{unknown}");
    let (queued, _) = request(&orch, json!({})).await;
    let release = refused(&orch, "agent_requests", json!({"op": "release", "request_id": queued})).await;
    assert!(release.contains("it is queued"), "{release}");
    let queue = call(&orch, "agent_requests", json!({"op": "queue"})).await;
    assert_eq!(queue_order(&queue), [queued]);
}

#[tokio::test]
async fn requests_time_out_on_the_host_clock() {
    let orch = orchestrator(json!({"default_timeout_ms": 100})).await;
    let (short, answer) = request(&orch, json!({"timeout_ms": 50})).await;
    assert_eq!(answer["status"], "queued");
    let (default, _) = request(&orch, json!({})).await;
    let (long, _) = request(&orch, json!({"timeout_ms": 60_000})).await;
    let (_, answer) = request(&orch, json!({"timeout_ms": 0})).await;
    assert_eq!(answer["status"], "timed_out", "a zero timeout never waits");

    let timed_out = wait_for_status(&orch, &short, "timed_out").await;
    assert_eq!(timed_out["waited_ms"], 50, "it waited exactly its timeout");
    let timed_out = wait_for_status(&orch, &default, "timed_out").await;
    assert_eq!(timed_out["waited_ms"], 100, "the configured default");
    assert_eq!(status(&orch, &long).await["status"], "queued");
    let queue = call(&orch, "agent_requests", json!({"op": "queue"})).await;
    assert_eq!(queue_order(&queue), [long.as_str()]);
    assert!(
        queue["queue"][0]["expires_in_ms"]
            .as_u64()
            .is_some_and(|ms| ms > 50_000)
    );

    // A timed-out request can no longer be served or cancelled.
    agent(&orch, "late", 4, &[]).await;
    let refusal = refused(&orch, "agent_requests", json!({"op": "cancel", "request_id": short})).await;
    assert!(refusal.contains("timed_out"), "{refusal}");
    assert_eq!(wait_for_status(&orch, &long, "fulfilled").await["agent_id"], "late");
}

#[tokio::test]
async fn the_queue_is_bounded() {
    let orch = orchestrator(json!({"max_queued": 2})).await;
    request(&orch, json!({})).await;
    request(&orch, json!({})).await;
    let err = try_call(&orch, "agent_requests", json!({})).await.unwrap_err();
    assert!(err.to_string().contains("queue is full"), "{err}");
    let health = orch.health().await;
    assert_eq!(health[NAME].state, HealthState::Degraded, "{health:?}");
}

#[tokio::test]
async fn unknown_configuration_keys_are_refused() {
    let err = Orchestrator::builder()
        .legacy_mode(false)
        .plugin(TaskCoordinationPlugin::default())
        .configure(NAME, json!({"max_queue": 3}))
        .build()
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(text.contains("max_queue") && text.contains(NAME), "{text}");
}

#[tokio::test]
async fn reservations_add_to_the_host_load_so_an_agent_is_never_overbooked() {
    let gate = Arc::new(Semaphore::new(0));
    let orch = Orchestrator::builder()
        .legacy_mode(false)
        .plugin(TaskCoordinationPlugin::default())
        .executor(Gate(Arc::clone(&gate)))
        .build()
        .await
        .expect("builds");
    agent(&orch, "a", 2, &[]).await;
    // The host runs a task on a (load 1 of 2) that the plugin knows nothing of.
    let running = tokio::spawn(orch.execute_agent_task(&AgentId::from("a"), json!({"job": 1})));
    wait_for_host_load(&orch, "a", 1).await;

    let (r1, answer) = request(&orch, json!({})).await;
    assert_eq!(answer["status"], "fulfilled");
    assert_eq!(answer["agent_id"], "a");
    let (r2, answer) = request(&orch, json!({})).await;
    assert_eq!(
        answer["status"], "queued",
        "1 running on the host + 1 reserved = capacity 2: a third unit would overbook a"
    );
    let (_, answer) = request(&orch, json!({"timeout_ms": 0})).await;
    assert_eq!(answer["status"], "timed_out", "nothing fits now");

    // The reservation becomes a task, which the host may be the one running: it is counted
    // once (max(host 1, live 1) = 1), so r2 now fits.
    call(
        &orch,
        "task_mapping",
        json!({"op": "assign", "task_id": "t1", "request_id": r1}),
    )
    .await;
    assert_eq!(wait_for_status(&orch, &r2, "fulfilled").await["agent_id"], "a");
    let (r3, answer) = request(&orch, json!({})).await;
    assert_eq!(answer["status"], "queued", "max(1, 1) + 1 reserved = 2");

    // The host's task ends: t1 and r2 still fill a.
    gate.add_permits(1);
    running.await.expect("joins").expect("the task ran");
    wait_for_host_load(&orch, "a", 0).await;
    assert_eq!(status(&orch, &r3).await["status"], "queued", "max(0, 1) + 1 = 2");
    call(&orch, "task_mapping", json!({"op": "complete", "task_id": "t1"})).await;
    assert_eq!(status(&orch, &r3).await["status"], "fulfilled");
    let workload = call(&orch, "workload_analysis", json!({"agent_id": "a"})).await;
    assert_eq!(workload["agents"][0]["reserved"], 2);
}

#[tokio::test]
async fn a_deregistered_agent_loses_its_reservations_and_keeps_its_tasks() {
    let orch = orchestrator(json!({})).await;
    let mut events = orch.subscribe_events();
    agent(&orch, "gone", 4, &["gpu"]).await;
    agent(&orch, "stay", 4, &[]).await;
    let (r1, answer) = request(&orch, json!({"requirements": {"capabilities": ["gpu"]}})).await;
    assert_eq!(answer["agent_id"], "gone");
    let (r2, _) = request(&orch, json!({"requirements": {"capabilities": ["gpu"]}})).await;
    let (kept, answer) = request(&orch, json!({})).await;
    assert_eq!(answer["agent_id"], "stay");
    for task in ["t1", "t2"] {
        call(
            &orch,
            "task_mapping",
            json!({"op": "assign", "task_id": task, "agent_id": "gone"}),
        )
        .await;
    }
    call(&orch, "task_mapping", json!({"op": "start", "task_id": "t2"})).await;

    orch.deregister_agent(&AgentId::from("gone"))
        .await
        .expect("deregisters");
    let left = OrchestratorEvent::AgentDeregistered {
        agent_id: "gone".into(),
    };
    event_seen(&mut events, &left).await;

    for id in [&r1, &r2] {
        let answer = status(&orch, id).await;
        assert_eq!(answer["status"], "released", "{answer}");
        assert_eq!(answer["reason"], "agent deregistered", "{answer}");
        assert_eq!(answer["agent_id"], "gone", "{answer}");
        assert!(answer.get("reservation_expires_in_ms").is_none(), "{answer}");
    }
    let kept = status(&orch, &kept).await;
    assert_eq!(kept["status"], "fulfilled", "another agent's reservation is untouched");
    assert!(kept.get("reason").is_none());
    let refusal = refused(&orch, "agent_requests", json!({"op": "release", "request_id": r1})).await;
    assert!(refusal.contains("released (agent deregistered)"), "{refusal}");
    let refusal = refused(
        &orch,
        "task_mapping",
        json!({"op": "assign", "task_id": "t9", "request_id": r2}),
    )
    .await;
    assert!(refusal.contains("agent deregistered"), "{refusal}");

    // Its live tasks stay mapped to it, and still count there, until the caller moves them.
    let tasks = call(&orch, "task_mapping", json!({"op": "tasks_of", "agent_id": "gone"})).await;
    assert_eq!(tasks["task_ids"], json!(["t1", "t2"]));
    let of = call(&orch, "task_mapping", json!({"task_id": "t2"})).await;
    assert_eq!(
        (of["agent_id"].as_str(), of["state"].as_str()),
        (Some("gone"), Some("running"))
    );
    let workload = call(&orch, "workload_analysis", json!({})).await;
    let row = &workload["agents"][0];
    assert_eq!(row["agent_id"], "gone");
    assert_eq!(row["registered"], false);
    assert_eq!((row["assigned"].as_u64(), row["running"].as_u64()), (Some(1), Some(1)));
    assert_eq!(row["reserved"], 0);
    assert_eq!(row["capacity"], 4, "the last capacity seen");
    assert_eq!(workload["totals"]["reserved"], 1, "only stay's");
    assert_eq!(workload["totals"]["assigned"], 1);
    assert_eq!(workload["totals"]["running"], 1);

    let moved = call(
        &orch,
        "task_mapping",
        json!({"op": "assign", "task_id": "t2", "agent_id": "stay", "reassign": true}),
    )
    .await;
    assert_eq!(moved["previous_agent"], "gone");
    let workload = call(&orch, "workload_analysis", json!({"agent_id": "gone"})).await;
    assert_eq!(workload["agents"][0]["running"], 0);
    assert_eq!(workload["agents"][0]["assigned"], 1);
    let (_, answer) = request(&orch, json!({"requirements": {"capabilities": ["gpu"]}})).await;
    assert_eq!(answer["status"], "queued", "no gpu agent is left");

    // Nothing was announced: every event up to a later marker is the host's own.
    agent(&orch, "marker", 1, &[]).await;
    let marker = OrchestratorEvent::AgentRegistered {
        agent_id: "marker".into(),
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    loop {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Ok(event)) if event == marker => break,
            Ok(Ok(OrchestratorEvent::Custom { source, name, data, .. })) if source == NAME => {
                panic!("{name} {data} announced after the deregistration")
            }
            Ok(Ok(_)) => continue,
            Ok(Err(e)) => panic!("event stream: {e}"),
            Err(_) => panic!("no marker event within 2 s"),
        }
    }
}

#[tokio::test]
async fn unclaimed_reservations_expire_after_the_ttl_and_let_the_queue_in() {
    let orch = orchestrator(json!({"reservation_ttl_ms": 300})).await;
    let mut events = orch.subscribe_events();
    agent(&orch, "a", 2, &[]).await;
    let (claimed, _) = request(&orch, json!({})).await;
    call(
        &orch,
        "task_mapping",
        json!({"op": "assign", "task_id": "t", "request_id": claimed}),
    )
    .await;
    let (unclaimed, answer) = request(&orch, json!({})).await;
    assert_eq!(answer["status"], "fulfilled");
    let held = status(&orch, &unclaimed).await;
    assert!(
        held["reservation_expires_in_ms"].as_u64().is_some_and(|ms| ms <= 300),
        "{held}"
    );
    let (waiting, answer) = request(&orch, json!({})).await;
    assert_eq!(answer["status"], "queued", "t and the unclaimed reservation fill a");

    let expired = wait_for_status(&orch, &unclaimed, "released").await;
    assert_eq!(expired["reason"], "reservation expired");
    assert_eq!(expired["agent_id"], "a");
    let event = fulfilled_event(&mut events, &waiting).await;
    assert_eq!(event["agent_id"], "a", "the queue is served from the freed slot");
    assert_eq!(status(&orch, &waiting).await["status"], "fulfilled");
    let claimed = status(&orch, &claimed).await;
    assert_eq!(
        claimed["status"], "fulfilled",
        "a reservation turned into a task never expires"
    );
    assert_eq!(claimed["task_id"], "t");
    assert!(claimed.get("reason").is_none());
    let refusal = refused(
        &orch,
        "agent_requests",
        json!({"op": "release", "request_id": unclaimed}),
    )
    .await;
    assert!(refusal.contains("released (reservation expired)"), "{refusal}");
    let refusal = refused(
        &orch,
        "task_mapping",
        json!({"op": "assign", "task_id": "late", "request_id": unclaimed}),
    )
    .await;
    assert!(refusal.contains("reservation expired"), "{refusal}");

    // Expiry is lazy on every capability: workload_analysis sees the last one go too.
    let mut reserved = Value::Null;
    for _ in 0..200 {
        let workload = call(&orch, "workload_analysis", json!({"agent_id": "a"})).await;
        reserved = workload["agents"][0]["reserved"].clone();
        if reserved == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(reserved, 0, "the waiting request's reservation expired too");
    assert_eq!(status(&orch, &waiting).await["reason"], "reservation expired");
}

#[tokio::test]
async fn a_zero_reservation_ttl_is_refused() {
    let err = Orchestrator::builder()
        .legacy_mode(false)
        .plugin(TaskCoordinationPlugin::default())
        .configure(NAME, json!({"reservation_ttl_ms": 0}))
        .build()
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("reservation_ttl_ms") && text.contains("at least 1"),
        "{text}"
    );
}

#[tokio::test]
async fn tasks_map_to_agents_both_ways() {
    let orch = orchestrator(json!({})).await;
    agent(&orch, "a", 4, &[]).await;
    agent(&orch, "b", 4, &[]).await;
    for (task, agent) in [("t2", "a"), ("t1", "a"), ("t3", "b")] {
        let answer = call(
            &orch,
            "task_mapping",
            json!({"op": "assign", "task_id": task, "agent_id": agent}),
        )
        .await;
        assert_eq!(answer, json!({"task_id": task, "agent_id": agent, "state": "assigned"}));
    }
    let tasks = call(&orch, "task_mapping", json!({"op": "tasks_of", "agent_id": "a"})).await;
    assert_eq!(tasks, json!({"agent_id": "a", "task_ids": ["t1", "t2"]}));
    let of = call(&orch, "task_mapping", json!({"task_id": "t3"})).await;
    assert_eq!(of, json!({"task_id": "t3", "agent_id": "b", "state": "assigned"}));
    let unmapped = call(&orch, "task_mapping", json!({"op": "agent_of", "task_id": "nope"})).await;
    assert_eq!(unmapped["agent_id"], Value::Null);
    assert_eq!(unmapped["state"], "unmapped");

    let started = call(&orch, "task_mapping", json!({"op": "start", "task_id": "t1"})).await;
    assert_eq!(started["state"], "running");
    let done = call(
        &orch,
        "task_mapping",
        json!({"op": "complete", "task_id": "t1", "success": true, "duration_ms": 30}),
    )
    .await;
    assert_eq!(
        done,
        json!({"task_id": "t1", "agent_id": "a", "success": true, "duration_ms": 30})
    );
    let of = call(&orch, "task_mapping", json!({"op": "agent_of", "task_id": "t1"})).await;
    assert_eq!(of["state"], "done");
    assert_eq!(of["agent_id"], "a", "a completed task names the agent that ran it");
    let tasks = call(&orch, "task_mapping", json!({"op": "tasks_of", "agent_id": "a"})).await;
    assert_eq!(tasks["task_ids"], json!(["t2"]));

    let twice = refused(&orch, "task_mapping", json!({"op": "complete", "task_id": "t1"})).await;
    assert!(twice.contains("already completed"), "{twice}");
    let unknown = refused(&orch, "task_mapping", json!({"op": "complete", "task_id": "ghost"})).await;
    assert!(unknown.contains("ghost"), "{unknown}");
    let unknown = refused(&orch, "task_mapping", json!({"op": "start", "task_id": "ghost"})).await;
    assert!(unknown.contains("ghost"), "{unknown}");
    let nobody = refused(
        &orch,
        "task_mapping",
        json!({"op": "assign", "task_id": "t9", "agent_id": "nobody"}),
    )
    .await;
    assert!(nobody.contains("`nobody` is not registered"), "{nobody}");
    let nobody = refused(&orch, "task_mapping", json!({"op": "tasks_of", "agent_id": "nobody"})).await;
    assert!(nobody.contains("nobody"), "{nobody}");

    // Without duration_ms the duration is measured on the host's clock.
    call(
        &orch,
        "task_mapping",
        json!({"op": "assign", "task_id": "timed", "agent_id": "b"}),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(25)).await;
    let done = call(
        &orch,
        "task_mapping",
        json!({"op": "complete", "task_id": "timed", "success": false}),
    )
    .await;
    assert!(done["duration_ms"].as_u64().is_some_and(|ms| ms >= 25), "{done}");
    assert_eq!(done["success"], false);
    let of = call(&orch, "task_mapping", json!({"task_id": "timed"})).await;
    assert_eq!(of["state"], "failed");
}

#[tokio::test]
async fn moving_a_task_to_another_agent_needs_reassign() {
    let orch = orchestrator(json!({})).await;
    agent(&orch, "a", 2, &[]).await;
    agent(&orch, "b", 2, &[]).await;
    call(
        &orch,
        "task_mapping",
        json!({"op": "assign", "task_id": "t", "agent_id": "a"}),
    )
    .await;
    call(&orch, "task_mapping", json!({"op": "start", "task_id": "t"})).await;
    let refusal = refused(
        &orch,
        "task_mapping",
        json!({"op": "assign", "task_id": "t", "agent_id": "b"}),
    )
    .await;
    assert!(
        refusal.contains("already mapped to agent `a`") && refusal.contains("reassign"),
        "{refusal}"
    );
    let same = call(
        &orch,
        "task_mapping",
        json!({"op": "assign", "task_id": "t", "agent_id": "a"}),
    )
    .await;
    assert_eq!(same["state"], "running", "assigning to the same agent changes nothing");
    let moved = call(
        &orch,
        "task_mapping",
        json!({"op": "assign", "task_id": "t", "agent_id": "b", "reassign": true}),
    )
    .await;
    assert_eq!(moved["previous_agent"], "a");
    assert_eq!(moved["state"], "assigned");
    let a = call(&orch, "task_mapping", json!({"op": "tasks_of", "agent_id": "a"})).await;
    assert_eq!(a["task_ids"], json!([]));
    let b = call(&orch, "task_mapping", json!({"op": "tasks_of", "agent_id": "b"})).await;
    assert_eq!(b["task_ids"], json!(["t"]));
    let of = call(&orch, "task_mapping", json!({"op": "agent_of", "task_id": "t"})).await;
    assert_eq!(of["agent_id"], "b");
    let workload = call(&orch, "workload_analysis", json!({})).await;
    assert_eq!(workload["totals"]["running"], 0);
    assert_eq!(workload["totals"]["assigned"], 1);
}

/// Tasks in the concurrency test, and the workers that share them.
const TASKS: usize = 2_000;
const WORKERS: usize = 16;
const AGENTS: usize = 3;
/// A worker takes task `i - LAG` over after assigning task `i`: another worker assigned it
/// (`LAG` is not a multiple of `WORKERS`), maybe a moment ago, maybe not yet.
const LAG: usize = 37;

/// Starts, moves (`"reassign": true`) and completes task `t`, which another worker assigns.
/// `None` when that worker has not assigned it yet (the one refusal the interleaving produces
/// here); otherwise the agent it completed on and whether it succeeded.
async fn take_over(orch: &Orchestrator, t: usize) -> Option<(String, bool)> {
    let task = format!("t{t}");
    let started = match try_call(orch, "task_mapping", json!({"op": "start", "task_id": task})).await {
        Ok(answer) => answer,
        Err(e) => {
            let text = e.to_string();
            assert!(text.contains(&format!("unknown task_id `{task}`")), "{text}");
            return None;
        }
    };
    assert_eq!(started["state"], "running", "{started}");
    let from = started["agent_id"].as_str().expect("an agent").to_owned();
    let from_index: usize = from
        .strip_prefix('w')
        .and_then(|n| n.parse().ok())
        .expect("an agent wN");
    let to = format!("w{}", (from_index + 1 + t % 2) % AGENTS);
    let moved = call(
        orch,
        "task_mapping",
        json!({"op": "assign", "task_id": task, "agent_id": to, "reassign": true}),
    )
    .await;
    assert_eq!(moved["previous_agent"], from.as_str(), "{moved}");
    assert_eq!(moved["state"], "assigned", "{moved}");
    if t % 3 == 0 {
        call(orch, "task_mapping", json!({"op": "start", "task_id": task})).await;
    }
    let success = t % 4 != 0;
    let done = call(
        orch,
        "task_mapping",
        json!({"op": "complete", "task_id": task, "success": success, "duration_ms": t % 50}),
    )
    .await;
    assert_eq!(done["agent_id"], to.as_str(), "{done}");
    Some((to, success))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn interleaved_assign_start_reassign_and_complete_keep_every_count() {
    let orch = orchestrator(json!({})).await;
    for a in 0..AGENTS {
        agent(&orch, &format!("w{a}"), 1_000, &[]).await;
    }
    let barrier = Arc::new(tokio::sync::Barrier::new(WORKERS));
    let mut handles = Vec::new();
    for worker in 0..WORKERS {
        let orch = orch.clone();
        let barrier = Arc::clone(&barrier);
        handles.push(tokio::spawn(async move {
            barrier.wait().await;
            let mut finished = Vec::new();
            let mut pending = VecDeque::new();
            // Worker w assigns tasks w, w + 16, ... and takes over tasks i - LAG, which other
            // workers assign: assignment, starts, moves and completions of the same and of
            // different tasks interleave from every worker throughout.
            for i in (worker..TASKS + LAG).step_by(WORKERS) {
                if i < TASKS {
                    let data =
                        json!({"op": "assign", "task_id": format!("t{i}"), "agent_id": format!("w{}", i % AGENTS)});
                    let answer = call(&orch, "task_mapping", data).await;
                    assert_eq!(answer["state"], "assigned", "{answer}");
                }
                // Start a task assigned two rounds ago, which the worker taking it over may be
                // moving or completing right now: once completed, a start is refused.
                if let Some(earlier) = i.checked_sub(2 * WORKERS).filter(|t| *t < TASKS) {
                    let data = json!({"op": "start", "task_id": format!("t{earlier}")});
                    if let Err(e) = try_call(&orch, "task_mapping", data).await {
                        assert!(e.to_string().contains("already completed"), "{e}");
                    }
                }
                if let Some(t) = i.checked_sub(LAG) {
                    pending.push_back(t);
                }
                for _ in 0..pending.len() {
                    let Some(t) = pending.pop_front() else { break };
                    match take_over(&orch, t).await {
                        Some((agent, success)) => finished.push((t, agent, success)),
                        None => pending.push_back(t),
                    }
                }
            }
            // The last ones wait for workers still assigning (bounded: fail, never hang).
            let mut retries = 0;
            while let Some(t) = pending.pop_front() {
                match take_over(&orch, t).await {
                    Some((agent, success)) => finished.push((t, agent, success)),
                    None => {
                        retries += 1;
                        assert!(retries < 10_000, "task t{t} was never assigned");
                        pending.push_back(t);
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                }
            }
            finished
        }));
    }
    let mut finished: HashMap<usize, (String, bool)> = HashMap::new();
    for handle in handles {
        for (t, agent, success) in handle.await.expect("worker") {
            assert!(finished.insert(t, (agent, success)).is_none(), "t{t} completed twice");
        }
    }
    assert_eq!(finished.len(), TASKS, "every task completed exactly once");

    // Per agent, what the workers saw.
    let mut expected: HashMap<String, (u64, u64)> = HashMap::new();
    for (agent, success) in finished.values() {
        let counts = expected.entry(agent.clone()).or_default();
        if *success {
            counts.0 += 1;
        } else {
            counts.1 += 1;
        }
    }

    let workload = call(&orch, "workload_analysis", json!({})).await;
    let totals = &workload["totals"];
    assert_eq!(totals["done"], 1_500);
    assert_eq!(totals["failed"], 500);
    assert_eq!(totals["assigned"], 0);
    assert_eq!(totals["running"], 0);
    assert_eq!(totals["reserved"], 0);
    let rows = workload["agents"].as_array().expect("rows");
    assert_eq!(rows.len(), AGENTS);
    let mut sums: HashMap<&str, u64> = HashMap::new();
    for row in rows {
        let agent = row["agent_id"].as_str().expect("an id");
        let field = |f: &str| row[f].as_u64().unwrap_or_else(|| panic!("{f} in {row}"));
        let (done, failed) = expected.get(agent).copied().unwrap_or_default();
        assert_eq!((field("done"), field("failed")), (done, failed), "{row}");
        for f in ["done", "failed", "assigned", "running", "reserved"] {
            *sums.entry(f).or_default() += field(f);
        }
    }
    for (f, sum) in sums {
        assert_eq!(totals[f].as_u64(), Some(sum), "totals.{f} is the sum of the rows");
    }

    // Both directions of the mapping agree: no task on two agents, and every task's agent_of
    // names the agent whose tasks_of lists it exactly when it is live.
    let mut listed: HashMap<String, String> = HashMap::new();
    for a in 0..AGENTS {
        let agent = format!("w{a}");
        let tasks = call(&orch, "task_mapping", json!({"op": "tasks_of", "agent_id": agent})).await;
        for task in tasks["task_ids"].as_array().expect("a list") {
            let task = task.as_str().expect("a task id").to_owned();
            if let Some(other) = listed.insert(task.clone(), agent.clone()) {
                panic!("{task} is listed by both {other} and {agent}");
            }
        }
    }
    assert!(listed.is_empty(), "every task completed, none live: {listed:?}");
    for t in 0..TASKS {
        let task = format!("t{t}");
        let of = call(&orch, "task_mapping", json!({"op": "agent_of", "task_id": task})).await;
        let (agent, success) = &finished[&t];
        assert_eq!(of["agent_id"], agent.as_str(), "{of}");
        assert_eq!(of["state"], if *success { "done" } else { "failed" }, "{of}");
        assert_eq!(listed.get(&task), None, "a completed task is in no tasks_of");
    }
}

#[tokio::test]
async fn workload_figures_add_up() {
    let orch = orchestrator(json!({})).await;
    agent(&orch, "a", 4, &[]).await;
    agent(&orch, "b", 4, &[]).await;
    agent(&orch, "c", 2, &[]).await;
    agent(&orch, "d", 1, &[]).await;
    let run = |task: String, agent: &'static str, success: bool, ms: u64| {
        let orch = orch.clone();
        async move {
            call(
                &orch,
                "task_mapping",
                json!({"op": "assign", "task_id": task, "agent_id": agent}),
            )
            .await;
            call(
                &orch,
                "task_mapping",
                json!({"op": "complete", "task_id": task, "success": success, "duration_ms": ms}),
            )
            .await;
        }
    };
    for ms in 1..=100 {
        run(format!("a{ms}"), "a", true, ms).await;
    }
    for i in 0..5 {
        run(format!("b{i}"), "b", i != 0, 1_000).await;
    }
    for task in ["x1", "x2", "x3"] {
        call(
            &orch,
            "task_mapping",
            json!({"op": "assign", "task_id": task, "agent_id": "b"}),
        )
        .await;
    }
    call(&orch, "task_mapping", json!({"op": "start", "task_id": "x3"})).await;
    run("d1".into(), "d", true, 7).await;
    orch.deregister_agent(&AgentId::from("d")).await.expect("deregisters");
    // a and c are idle: a (lowest id) is reserved.
    let (_, answer) = request(&orch, json!({"requirements": {"max_load": 1}})).await;
    assert_eq!(answer["agent_id"], "a");

    let workload = call(&orch, "workload_analysis", json!({})).await;
    let rows = workload["agents"].as_array().expect("rows");
    let ids: Vec<&str> = rows.iter().filter_map(|r| r["agent_id"].as_str()).collect();
    assert_eq!(ids, ["a", "b", "c", "d"]);
    let (a, b, c, d) = (&rows[0], &rows[1], &rows[2], &rows[3]);

    assert_eq!((a["done"].as_u64(), a["failed"].as_u64()), (Some(100), Some(0)));
    assert_eq!(a["mean_ms"], 50.5);
    assert_eq!(a["p95_ms"], 95, "nearest rank of 1..=100");
    assert_eq!(a["reserved"], 1);
    assert_eq!(a["utilisation"], 0.25);
    assert_eq!(a["capacity"], 4);

    assert_eq!((b["done"].as_u64(), b["failed"].as_u64()), (Some(4), Some(1)));
    assert_eq!((b["assigned"].as_u64(), b["running"].as_u64()), (Some(2), Some(1)));
    assert_eq!(b["mean_ms"], 1_000.0);
    let p95 = b["p95_ms"].as_u64().expect("p95");
    assert!((990..=1_010).contains(&p95), "within 1%: {p95}");
    assert_eq!(b["utilisation"], 0.75);

    assert_eq!(
        (c["done"].as_u64(), c["assigned"].as_u64(), c["utilisation"].as_f64()),
        (Some(0), Some(0), Some(0.0))
    );
    assert_eq!(c["registered"], true);
    assert_eq!(c["capacity"], 2);

    assert_eq!(d["registered"], false, "history outlives registration");
    assert_eq!(d["done"], 1);
    assert_eq!(d["p95_ms"], 7);
    assert_eq!(d["capacity"], 1, "the last capacity seen");

    let totals = &workload["totals"];
    assert_eq!(totals["agents"], 4);
    assert_eq!(totals["done"], 105);
    assert_eq!(totals["failed"], 1);
    assert_eq!(totals["assigned"], 2);
    assert_eq!(totals["running"], 1);
    assert_eq!(totals["reserved"], 1);
    let mean = totals["mean_ms"].as_f64().expect("mean");
    assert!((mean - 10_057.0 / 106.0).abs() < 1e-9, "{mean}");
    assert_eq!(totals["p95_ms"], 100, "101st smallest of 106");

    let only_b = call(&orch, "workload_analysis", json!({"agent_id": "b"})).await;
    assert_eq!(only_b["agents"].as_array().map(Vec::len), Some(1));
    assert_eq!(only_b["totals"]["done"], 4);
    assert_eq!(only_b["totals"]["agents"], 1);
    let only_d = call(&orch, "workload_analysis", json!({"agent_id": "d"})).await;
    assert_eq!(only_d["agents"][0]["mean_ms"], 7.0);
    let unknown = refused(&orch, "workload_analysis", json!({"agent_id": "zz"})).await;
    assert!(unknown.contains("`zz`"), "{unknown}");
}

#[tokio::test]
async fn garbage_is_refused_as_invalid_request() {
    let orch = orchestrator(json!({})).await;
    agent(&orch, "a", 1, &[]).await;
    let cases = [
        ("agent_requests", json!({"op": "explode"}), "unknown op `explode`"),
        ("agent_requests", json!({"op": 3}), "`op` must be a string"),
        (
            "agent_requests",
            json!({"priority": "high"}),
            "`priority` must be an integer",
        ),
        (
            "agent_requests",
            json!({"priority": 1.5}),
            "`priority` must be an integer",
        ),
        (
            "agent_requests",
            json!({"requirements": ["rust"]}),
            "`requirements` must be an object",
        ),
        (
            "agent_requests",
            json!({"requirements": {"capabilities": "rust"}}),
            "`capabilities` must be a list",
        ),
        (
            "agent_requests",
            json!({"requirements": {"max_load": -1}}),
            "`max_load`",
        ),
        (
            "agent_requests",
            json!({"requirements": {"caps": ["x"]}}),
            "unexpected field `caps`",
        ),
        ("agent_requests", json!({"timeout_ms": -5}), "`timeout_ms`"),
        ("agent_requests", json!({"timeout": 5}), "unexpected field `timeout`"),
        ("agent_requests", json!({"op": "status"}), "missing `request_id`"),
        (
            "agent_requests",
            json!({"op": "status", "request_id": 7}),
            "must be a string",
        ),
        (
            "agent_requests",
            json!({"op": "status", "request_id": "req-999"}),
            "req-999",
        ),
        (
            "agent_requests",
            json!({"op": "release", "request_id": "nonsense"}),
            "nonsense",
        ),
        ("agent_requests", json!("text"), "must be a JSON object"),
        ("agent_requests", json!([1]), "must be a JSON object"),
        ("task_mapping", json!({}), "missing `task_id`"),
        (
            "task_mapping",
            json!({"op": "assign", "task_id": "t"}),
            "missing `agent_id`",
        ),
        (
            "task_mapping",
            json!({"op": "assign", "task_id": 5, "agent_id": "a"}),
            "`task_id` must be a string",
        ),
        (
            "task_mapping",
            json!({"op": "assign", "task_id": "t", "agent_id": "a", "reassign": "yes"}),
            "`reassign` must be true or false",
        ),
        (
            "task_mapping",
            json!({"op": "assign", "task_id": "t", "request_id": "req-77"}),
            "req-77",
        ),
        (
            "task_mapping",
            json!({"op": "complete", "task_id": "t", "success": 1}),
            "`success`",
        ),
        (
            "task_mapping",
            json!({"op": "complete", "task_id": "t", "duration_ms": "fast"}),
            "`duration_ms`",
        ),
        (
            "task_mapping",
            json!({"op": "unassign", "task_id": "t"}),
            "unknown op `unassign`",
        ),
        ("task_mapping", json!({"op": "tasks_of"}), "missing `agent_id`"),
        (
            "task_mapping",
            json!({"task_id": "t", "agent": "a"}),
            "unexpected field `agent`",
        ),
        ("task_mapping", json!({"task_id": ""}), "must not be empty"),
        ("task_mapping", json!(42), "must be a JSON object"),
        (
            "workload_analysis",
            json!({"agent_id": 3}),
            "`agent_id` must be a string",
        ),
        ("workload_analysis", json!({"agent_id": "nobody"}), "nobody"),
        ("workload_analysis", json!({"op": "all"}), "unexpected field `op`"),
        ("workload_analysis", json!(true), "must be a JSON object"),
    ];
    for (capability, data, needle) in cases {
        let text = refused(&orch, capability, data.clone()).await;
        assert!(text.contains(needle), "{capability} {data}: {text}");
    }
    // Refusals say what was expected.
    let text = refused(&orch, "agent_requests", json!({"op": "explode"})).await;
    assert!(
        text.contains("expected one of `request`, `status`, `cancel`, `release`, `queue`"),
        "{text}"
    );
    // Null data reads as an empty object.
    let answer = call(&orch, "workload_analysis", Value::Null).await;
    assert_eq!(answer["totals"]["agents"], 1);
}

#[tokio::test]
async fn the_plugin_passes_the_conformance_kit() {
    use plugin_api::testkit::{CheckOptions, check_plugin};
    let report = check_plugin(
        &TaskCoordinationPlugin::default(),
        CheckOptions::default().with_config(json!({"max_queued": 100, "default_timeout_ms": 1000})),
    )
    .await;
    report.assert_conformant();
    let report = check_plugin(&TaskCoordinationPlugin::default(), CheckOptions::default()).await;
    report.assert_conformant();
}
