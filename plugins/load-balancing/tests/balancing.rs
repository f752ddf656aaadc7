//! LoadBalancingPlugin through a real orchestrator: each strategy on crafted loads, pending
//! counts and latency observations, circuits opening, half-opening and recovering, admission
//! with refusals and a bounded queue of tickets, the host's load, rebalancing proposals,
//! agents arriving and leaving after initialization, bad input, configuration, the dynamic
//! library and the conformance kit. (Behaviour over simulated time is tested beside the core,
//! in `src/`.)
//!
//! Every orchestrator here runs on a [`ManualClock`]: the time the plugin reads (its latency
//! estimates, backoffs, refresh intervals) moves only when a test advances it, so nothing
//! depends on how fast the machine runs the test. Real time only bounds the waits for the
//! host's own asynchronous work (event delivery, tasks on an executor), generously.

use orchestrator_core::{
    AgentConfig, AgentExecutor, AgentId, AgentStatus, ExecutionContext, ExecutorError, ManualClock, Orchestrator,
    OrchestratorError, PluginOrigin,
};
use plugin_api::{IntegrationRequest, OrchestratorEvent};
use plugin_load_balancing::{LoadBalancingPlugin, NAME};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Semaphore, broadcast};

/// How long a test waits for the host's asynchronous work (an event delivered, a task run)
/// before it gives up: only reached when something is broken.
const PATIENCE: Duration = Duration::from_secs(10);

/// An orchestrator with the plugin, on a clock that stands still until the test moves it.
async fn orchestrator(config: Value) -> Orchestrator {
    orchestrator_with_clock(config).await.0
}

/// [`orchestrator`], and its clock.
async fn orchestrator_with_clock(config: Value) -> (Orchestrator, ManualClock) {
    let clock = ManualClock::new();
    let orch = Orchestrator::builder()
        .legacy_mode(false)
        .clock(clock.clone())
        .plugin(LoadBalancingPlugin::default())
        .configure(NAME, config)
        .build()
        .await
        .expect("builds");
    (orch, clock)
}

/// The answer of a call, whether it succeeded or not.
async fn answer(
    orch: &Orchestrator,
    capability: &str,
    data: Value,
) -> Result<plugin_api::IntegrationResponse, OrchestratorError> {
    orch.execute(IntegrationRequest::new(capability, data)).await
}

async fn call(orch: &Orchestrator, capability: &str, data: Value) -> Value {
    match answer(orch, capability, data.clone()).await {
        Ok(r) if r.success => r.data,
        Ok(r) => panic!("{capability} {data} answered success: false: {r:?}"),
        Err(e) => panic!("{capability} {data}: {e}"),
    }
}

/// The error text of a call that must be refused as an invalid request.
async fn refused(orch: &Orchestrator, capability: &str, data: Value) -> String {
    match answer(orch, capability, data.clone()).await {
        Ok(r) => panic!("{capability} {data} was accepted: {r:?}"),
        Err(e) => {
            let text = e.to_string();
            assert!(text.contains("invalid request"), "{capability} {data}: {text}");
            text
        }
    }
}

/// The `error` of a call answered with `success: false`.
async fn failed(orch: &Orchestrator, capability: &str, data: Value) -> String {
    match answer(orch, capability, data.clone()).await {
        Ok(r) if !r.success => r.error.unwrap_or_default(),
        other => panic!("{capability} {data} did not answer success: false: {other:?}"),
    }
}

/// Waits until `event` has gone through: the orchestrator hands each event to the plugins
/// before its subscribers, so the plugin has handled it.
async fn event_seen(events: &mut broadcast::Receiver<OrchestratorEvent>, event: &OrchestratorEvent) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Ok(seen)) if seen == *event => return,
            Ok(Ok(_)) => continue,
            Ok(Err(e)) => panic!("event stream: {e}"),
            Err(_) => panic!("no {event:?} within {PATIENCE:?}"),
        }
    }
}

/// Registers an agent and waits until the plugin has heard of it.
async fn register(orch: &Orchestrator, config: AgentConfig) {
    let mut events = orch.subscribe_events();
    let id = orch.register_agent(config).await.expect("registers");
    event_seen(
        &mut events,
        &OrchestratorEvent::AgentRegistered {
            agent_id: id.to_string(),
        },
    )
    .await;
}

async fn agent(orch: &Orchestrator, id: &str, capacity: u32) {
    register(orch, AgentConfig::new(id).with_id(id).with_capacity(capacity)).await;
}

/// Changes an agent's status and waits until the plugin has heard of it.
async fn set_status(orch: &Orchestrator, id: &str, to: AgentStatus) {
    let mut events = orch.subscribe_events();
    let from = orch.agent_status(&AgentId::from(id)).expect("registered");
    orch.set_agent_status(&AgentId::from(id), to).expect("registered");
    event_seen(
        &mut events,
        &OrchestratorEvent::AgentStatusChanged {
            agent_id: id.to_owned(),
            from,
            to,
        },
    )
    .await;
}

async fn pick(orch: &Orchestrator, data: Value) -> String {
    let answer = call(orch, "adaptive_balancing", data).await;
    answer["selected_agent"].as_str().expect("an agent").to_owned()
}

async fn picks(orch: &Orchestrator, data: Value, n: usize) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for _ in 0..n {
        *counts.entry(pick(orch, data.clone()).await).or_default() += 1;
    }
    counts
}

async fn observe(orch: &Orchestrator, id: &str, latency_ms: f64, success: bool) -> Value {
    call(
        orch,
        "adaptive_balancing",
        json!({"op": "observe", "agent_id": id, "latency_ms": latency_ms, "success": success}),
    )
    .await
}

async fn report(orch: &Orchestrator, id: &str, success: bool) -> Value {
    call(
        orch,
        "resource_optimization",
        json!({"op": "report", "agent_id": id, "success": success}),
    )
    .await
}

/// Waits for the plugin's custom event `name` about `agent_id`.
async fn custom_event(events: &mut broadcast::Receiver<OrchestratorEvent>, name: &str, agent_id: &str) -> Value {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Ok(OrchestratorEvent::Custom {
                source,
                name: seen,
                data,
            })) if seen == name && data["agent_id"] == agent_id => {
                assert_eq!(source, NAME);
                return data;
            }
            Ok(Ok(_)) => continue,
            Ok(Err(e)) => panic!("event stream: {e}"),
            Err(_) => panic!("no {name} event for {agent_id} within {PATIENCE:?}"),
        }
    }
}

/// Polls `check` every 5 ms until it holds: for the host's own asynchronous work (tasks
/// running on an executor), never for the plugin's time, which is the manual clock's.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while tokio::time::Instant::now() < deadline {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("{what} did not happen within {PATIENCE:?}");
}

#[tokio::test]
async fn p2c_prefers_the_fast_idle_agent_over_slow_or_busy_ones() {
    let orch = orchestrator(json!({"seed": 7})).await;
    for id in ["busy", "fast", "slow"] {
        agent(&orch, id, 8).await;
    }
    observe(&orch, "fast", 10.0, true).await;
    observe(&orch, "slow", 400.0, true).await;
    observe(&orch, "busy", 10.0, true).await;
    for _ in 0..6 {
        let started = call(&orch, "adaptive_balancing", json!({"op": "start", "agent_id": "busy"})).await;
        assert!(started["pending"].as_u64().is_some_and(|p| p >= 1), "{started}");
    }
    // Pairs are drawn at random: fast wins both pairs it is in, busy (10 ms x 7) beats slow.
    let counts = picks(&orch, json!({}), 300).await;
    assert!(counts.get("fast").copied().unwrap_or(0) > 160, "{counts:?}");
    assert!(counts.get("busy").copied().unwrap_or(0) > 60, "{counts:?}");
    assert_eq!(counts.get("slow"), None, "{counts:?}");

    let answer = call(
        &orch,
        "adaptive_balancing",
        json!({"available_agents": ["slow", "fast"], "strategy": "p2c_peak_ewma"}),
    )
    .await;
    assert_eq!(answer["selected_agent"], "fast");
    assert_eq!(answer["strategy"], "p2c_peak_ewma");
    assert_eq!(answer["compared"][0]["agent_id"], "fast");
    assert_eq!(answer["compared"][1]["agent_id"], "slow");
    let (fast, slow) = (
        answer["compared"][0]["cost"].as_f64(),
        answer["compared"][1]["cost"].as_f64(),
    );
    assert!(fast.zip(slow).is_some_and(|(f, s)| f < 10.01 && s > 390.0), "{answer}");
    assert_eq!(answer["acquired"], false);
}

#[tokio::test]
async fn picks_and_finishes_keep_the_pending_count_and_a_spike_steers_work_away_at_once() {
    let orch = orchestrator(json!({"seed": 1})).await;
    agent(&orch, "a", 4).await;
    agent(&orch, "b", 4).await;
    observe(&orch, "a", 20.0, true).await;
    observe(&orch, "b", 20.0, true).await;
    let first = call(&orch, "adaptive_balancing", json!({"acquire": true})).await;
    assert_eq!(
        (first["acquired"].clone(), first["pending"].clone()),
        (json!(true), json!(1))
    );
    let busy = first["selected_agent"].as_str().expect("an agent").to_owned();
    let other = if busy == "a" { "b" } else { "a" };
    // The agent with a call in flight costs twice as much.
    assert_eq!(pick(&orch, json!({})).await, other);
    let finished = call(
        &orch,
        "adaptive_balancing",
        json!({"op": "finish", "agent_id": busy, "latency_ms": 25, "success": true}),
    )
    .await;
    assert_eq!(finished["pending"], 0);
    assert_eq!(finished["circuit"], "closed");
    let again = refused(
        &orch,
        "adaptive_balancing",
        json!({"op": "finish", "agent_id": busy, "latency_ms": 25}),
    )
    .await;
    assert!(again.contains("no call pending"), "{again}");
    // A spike on `other` counts at once.
    let spiked = observe(&orch, other, 2_000.0, true).await;
    assert!(spiked["rtt_ms"].as_f64().is_some_and(|ms| ms > 1_999.0), "{spiked}");
    for _ in 0..20 {
        assert_eq!(pick(&orch, json!({})).await, busy);
    }
}

#[tokio::test]
async fn least_loaded_round_robin_and_weighted_round_robin_on_crafted_loads() {
    let orch = Orchestrator::builder()
        .legacy_mode(false)
        .plugin(LoadBalancingPlugin::default())
        .configure(NAME, json!({"weights": {"w2": 2}}))
        .build()
        .await
        .expect("builds");
    agent(&orch, "a", 2).await;
    agent(&orch, "b", 10).await;
    agent(&orch, "c", 4).await;
    let starts = [("a", 1), ("b", 3), ("c", 2)];
    for (id, n) in starts {
        for _ in 0..n {
            call(&orch, "adaptive_balancing", json!({"op": "start", "agent_id": id})).await;
        }
    }
    // a 1/2, b 3/10, c 2/4.
    assert_eq!(pick(&orch, json!({"strategy": "least_loaded"})).await, "b");
    assert_eq!(
        pick(
            &orch,
            json!({"strategy": "least_loaded", "available_agents": ["c", "a"]})
        )
        .await,
        "a",
        "a tie at 0.5 goes to the lowest id"
    );

    let rr = json!({"strategy": "round_robin", "available_agents": ["a", "b", "c"]});
    let mut order = Vec::new();
    for _ in 0..6 {
        order.push(pick(&orch, rr.clone()).await);
    }
    let mut first_three = order[..3].to_vec();
    first_three.sort();
    assert_eq!(first_three, ["a", "b", "c"], "{order:?}");
    assert_eq!(order[..3], order[3..], "{order:?}");

    register(&orch, AgentConfig::new("w1").with_id("w1").with_metadata("weight", 3)).await;
    agent(&orch, "w2", 1).await;
    agent(&orch, "w3", 1).await;
    let wrr = json!({"strategy": "weighted_round_robin", "available_agents": ["w1", "w2", "w3"]});
    let counts = picks(&orch, wrr.clone(), 600).await;
    assert_eq!(
        counts,
        BTreeMap::from([("w1".to_owned(), 300), ("w2".to_owned(), 200), ("w3".to_owned(), 100)]),
        "metadata weight 3, configured weight 2, default 1"
    );
    let mut run = Vec::new();
    for _ in 0..6 {
        run.push(pick(&orch, wrr.clone()).await);
    }
    assert!(
        run.windows(3).all(|w| w.iter().any(|id| id != "w1")),
        "smooth, not bursts: {run:?}"
    );
}

#[tokio::test]
async fn nothing_to_pick_answers_success_false_saying_why() {
    let orch = orchestrator(json!({})).await;
    let why = failed(&orch, "adaptive_balancing", json!({})).await;
    assert!(why.contains("no agent is registered"), "{why}");
    agent(&orch, "off", 1).await;
    set_status(&orch, "off", AgentStatus::Offline).await;
    let why = failed(
        &orch,
        "adaptive_balancing",
        json!({"available_agents": ["off", "ghost"], "strategy": "least_loaded"}),
    )
    .await;
    assert!(why.contains("1 not registered, 1 busy or offline"), "{why}");
}

#[tokio::test]
async fn a_circuit_opens_half_opens_and_recovers_or_backs_off_longer() {
    let (orch, clock) =
        orchestrator_with_clock(json!({"failure_threshold": 3, "base_backoff_ms": 150, "max_backoff_ms": 10_000}))
            .await;
    let mut events = orch.subscribe_events();
    agent(&orch, "flaky", 10).await;
    agent(&orch, "steady", 10).await;
    observe(&orch, "flaky", 1.0, true).await;
    observe(&orch, "steady", 100.0, true).await;
    report(&orch, "flaky", false).await;
    // A failure through finish counts as well.
    call(&orch, "adaptive_balancing", json!({"op": "start", "agent_id": "flaky"})).await;
    let finished = call(
        &orch,
        "adaptive_balancing",
        json!({"op": "finish", "agent_id": "flaky", "latency_ms": 1, "success": false}),
    )
    .await;
    assert_eq!(finished["consecutive_failures"], 2);
    let open = report(&orch, "flaky", false).await;
    assert_eq!(open["state"], "open", "{open}");
    assert_eq!(open["times_opened"], 1);
    assert_eq!(open["retry_in_ms"], 150, "{open}");
    assert_eq!(open["open_circuits"], json!(["flaky"]), "{open}");
    let opened = custom_event(&mut events, "circuit_opened", "flaky").await;
    assert_eq!(opened["backoff_ms"], 150.0);

    // Out of every pick and admission while open, though it is the cheapest.
    for strategy in ["p2c_peak_ewma", "least_loaded", "weighted_round_robin", "round_robin"] {
        for _ in 0..20 {
            assert_eq!(pick(&orch, json!({"strategy": strategy})).await, "steady");
        }
    }
    let admit = call(
        &orch,
        "capacity_management",
        json!({"op": "admit", "agent_id": "flaky"}),
    )
    .await;
    assert_eq!(admit["admitted"], false);
    assert!(
        admit["reason"].as_str().is_some_and(|r| r.contains("open circuit")),
        "{admit}"
    );
    let circuits = call(&orch, "resource_optimization", json!({"op": "circuits"})).await;
    assert_eq!(circuits["circuits"].as_array().map(Vec::len), Some(1));
    assert_eq!(circuits["circuits"][0]["agent_id"], "flaky");

    // Time passes, but not the whole backoff: still open.
    let only_flaky = json!({"available_agents": ["flaky"], "strategy": "round_robin"});
    clock.advance(Duration::from_millis(149));
    let why = failed(&orch, "adaptive_balancing", only_flaky.clone()).await;
    assert!(why.contains("1 behind an open circuit"), "{why}");
    // After the backoff: half-open, and exactly one probe goes through.
    clock.advance(Duration::from_millis(1));
    let c = call(&orch, "resource_optimization", json!({"op": "circuits"})).await;
    assert_eq!(c["circuits"][0]["state"], "half_open", "{c}");
    assert_eq!(c["circuits"][0]["retry_in_ms"], 0, "{c}");
    let probe = call(&orch, "adaptive_balancing", only_flaky.clone()).await;
    assert_eq!(
        (probe["selected_agent"].clone(), probe["probe"].clone()),
        (json!("flaky"), json!(true))
    );
    clock.advance(Duration::from_millis(100));
    let why = failed(&orch, "adaptive_balancing", only_flaky.clone()).await;
    assert!(why.contains("1 behind an open circuit"), "only one probe: {why}");

    // The probe fails: open again, twice as long.
    clock.advance(Duration::from_millis(10));
    let reopened = report(&orch, "flaky", false).await;
    assert_eq!(
        (reopened["state"].clone(), reopened["times_opened"].clone()),
        (json!("open"), json!(2))
    );
    assert_eq!(reopened["retry_in_ms"], 300, "{reopened}");
    clock.advance(Duration::from_millis(299));
    assert!(
        failed(&orch, "adaptive_balancing", only_flaky.clone())
            .await
            .contains("open circuit")
    );
    clock.advance(Duration::from_millis(1));
    let c = call(&orch, "resource_optimization", json!({"op": "circuits"})).await;
    assert_eq!(c["circuits"][0]["state"], "half_open", "{c}");
    // This probe succeeds: closed, and picked again.
    assert_eq!(pick(&orch, only_flaky.clone()).await, "flaky");
    clock.advance(Duration::from_millis(20));
    let closed = report(&orch, "flaky", true).await;
    assert_eq!(
        (closed["state"].clone(), closed["consecutive_failures"].clone()),
        (json!("closed"), json!(0))
    );
    assert_eq!(closed["open_circuits"], json!([]), "{closed}");
    custom_event(&mut events, "circuit_closed", "flaky").await;
    let circuits = call(&orch, "resource_optimization", json!({"op": "circuits"})).await;
    assert_eq!(circuits["circuits"], json!([]));
    assert_eq!(pick(&orch, json!({"strategy": "least_loaded"})).await, "flaky");
}

#[tokio::test]
async fn admission_refuses_or_queues_and_a_release_admits_the_oldest_ticket() {
    let orch = orchestrator(json!({"max_queued": 2})).await;
    let mut events = orch.subscribe_events();
    agent(&orch, "a", 2).await;
    agent(&orch, "b", 1).await;
    let mut onto = Vec::new();
    for _ in 0..3 {
        let admitted = call(&orch, "capacity_management", json!({"op": "admit"})).await;
        assert_eq!(admitted["admitted"], true, "{admitted}");
        onto.push(admitted["agent_id"].as_str().expect("an agent").to_owned());
    }
    assert_eq!(
        onto,
        ["a", "b", "a"],
        "the least utilised with room, ties to the lowest id"
    );
    let full = call(&orch, "capacity_management", json!({"op": "admit"})).await;
    assert_eq!(
        (full["admitted"].clone(), full["queued"].clone()),
        (json!(false), json!(false))
    );
    assert!(
        full["reason"].as_str().is_some_and(|r| r.contains("2 at capacity")),
        "{full}"
    );
    assert_eq!(
        (full["load"].clone(), full["capacity"].clone()),
        (json!(2), json!(2)),
        "{full}"
    );

    let t1 = call(&orch, "capacity_management", json!({"op": "admit", "queue": true})).await;
    assert_eq!((t1["queued"].clone(), t1["position"].clone()), (json!(true), json!(0)));
    let t2 = call(
        &orch,
        "capacity_management",
        json!({"op": "admit", "agent_id": "b", "queue": true}),
    )
    .await;
    assert_eq!(t2["position"], 1);
    let bounded = call(&orch, "capacity_management", json!({"op": "admit", "queue": true})).await;
    assert_eq!(bounded["queued"], false);
    assert!(
        bounded["reason"]
            .as_str()
            .is_some_and(|r| r.contains("queue is full (2 tickets)")),
        "{bounded}"
    );
    let health = orch.health().await;
    assert_eq!(health[NAME].state, plugin_api::HealthState::Degraded, "{health:?}");

    let (t1, t2) = (t1["ticket"].clone(), t2["ticket"].clone());
    let status = call(&orch, "capacity_management", json!({"op": "ticket", "ticket": t1})).await;
    assert_eq!(status["status"], "queued");
    // A slot freed on b: the oldest ticket that fits b (t1, any agent) takes it.
    let released = call(&orch, "capacity_management", json!({"op": "release", "agent_id": "b"})).await;
    assert_eq!(released["admitted_tickets"], json!([t1]));
    let status = call(&orch, "capacity_management", json!({"op": "ticket", "ticket": t1})).await;
    assert_eq!(
        (status["status"].clone(), status["agent_id"].clone()),
        (json!("admitted"), json!("b"))
    );
    let event = custom_event(&mut events, "ticket_admitted", "b").await;
    assert_eq!(event["ticket"], t1);
    // A slot on a does not fit t2 (b only); raising b's capacity does.
    let released = call(&orch, "capacity_management", json!({"op": "release", "agent_id": "a"})).await;
    assert_eq!(released["admitted_tickets"], json!([]));
    let raised = call(
        &orch,
        "capacity_management",
        json!({"op": "set_capacity", "agent_id": "b", "capacity": 2}),
    )
    .await;
    assert_eq!(raised["admitted_tickets"], json!([t2]));
    assert_eq!(
        (
            raised["load"].clone(),
            raised["capacity"].clone(),
            raised["host_capacity"].clone()
        ),
        (json!(2), json!(2), json!(1))
    );
    let cancel = refused(&orch, "capacity_management", json!({"op": "cancel", "ticket": t2})).await;
    assert!(cancel.contains("is admitted"), "{cancel}");

    // A ticket can be cancelled while queued; the snapshot shows the figures.
    let t3 = call(
        &orch,
        "capacity_management",
        json!({"op": "admit", "agent_id": "b", "queue": true}),
    )
    .await;
    let cancelled = call(
        &orch,
        "capacity_management",
        json!({"op": "cancel", "ticket": t3["ticket"]}),
    )
    .await;
    assert_eq!(cancelled["status"], "cancelled");
    let snapshot = call(&orch, "capacity_management", json!({})).await;
    let rows: Vec<(String, u64, u64, f64)> = snapshot["agents"]
        .as_array()
        .expect("rows")
        .iter()
        .map(|r| {
            (
                r["agent_id"].as_str().unwrap_or_default().to_owned(),
                r["pending"].as_u64().unwrap_or(99),
                r["capacity"].as_u64().unwrap_or(99),
                r["utilisation"].as_f64().unwrap_or(-1.0),
            )
        })
        .collect();
    assert_eq!(rows, [("a".to_owned(), 1, 2, 0.5), ("b".to_owned(), 2, 2, 1.0)]);
    assert_eq!(snapshot["queued"], 0);
    // Back to the host's capacity.
    let reset = call(
        &orch,
        "capacity_management",
        json!({"op": "set_capacity", "agent_id": "b", "capacity": null}),
    )
    .await;
    assert_eq!(reset["capacity"], 1);
}

/// An executor whose tasks run until the test lets one finish, so that an agent carries load
/// on the host for as long as the test needs.
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hosts_load_counts_for_admission_and_snapshots() {
    let gate = Arc::new(Semaphore::new(0));
    // The plugin's clock stands still: `load_refresh_ms: 0` alone makes it read the host's
    // loads on every call. (Only the host's tasks run on real time, and are waited for.)
    let orch = Orchestrator::builder()
        .legacy_mode(false)
        .clock(ManualClock::new())
        .plugin(LoadBalancingPlugin::default())
        .configure(NAME, json!({"load_refresh_ms": 0}))
        .executor(Gate(Arc::clone(&gate)))
        .build()
        .await
        .expect("builds");
    agent(&orch, "g", 2).await;
    let tasks: Vec<_> = (0..2)
        .map(|_| {
            let running = orch.clone();
            tokio::spawn(async move { running.execute_agent_task(&AgentId::from("g"), json!({})).await })
        })
        .collect();
    eventually("host load 2", || async {
        orch.agent(&AgentId::from("g")).map(|a| a.load) == Some(2)
    })
    .await;
    // The host runs two tasks on g (its capacity), so it is busy: nothing is admitted onto it.
    let snapshot = call(&orch, "capacity_management", json!({"op": "snapshot"})).await;
    let row = &snapshot["agents"][0];
    assert_eq!(
        (
            row["host_load"].clone(),
            row["pending"].clone(),
            row["load"].clone(),
            row["status"].clone()
        ),
        (json!(2), json!(0), json!(2), json!("busy")),
        "{snapshot}"
    );
    let queued = call(
        &orch,
        "capacity_management",
        json!({"op": "admit", "agent_id": "g", "queue": true}),
    )
    .await;
    assert_eq!(queued["queued"], true, "{queued}");
    // One of the host's tasks ends: g is active again with room for one, and the ticket gets it.
    gate.add_permits(1);
    let ticket = queued["ticket"].clone();
    eventually("the ticket admitted", || async {
        let status = call(&orch, "capacity_management", json!({"op": "ticket", "ticket": ticket})).await;
        status["status"] == "admitted"
    })
    .await;
    let snapshot = call(&orch, "capacity_management", json!({"op": "snapshot"})).await;
    let row = &snapshot["agents"][0];
    assert_eq!(
        (row["host_load"].clone(), row["pending"].clone(), row["load"].clone()),
        (json!(1), json!(1), json!(1)),
        "max(host load, pending): the same work is not counted twice: {snapshot}"
    );
    gate.add_permits(1);
    for task in tasks {
        task.await.expect("joins").expect("runs");
    }
    let history = call(&orch, "capacity_management", json!({"op": "history", "limit": 1})).await;
    assert_eq!(history["recorded"], 1);
    assert_eq!(history["snapshots"][0], snapshot);
    let history = call(&orch, "capacity_management", json!({"op": "history"})).await;
    assert_eq!(history["recorded"], 2);
    assert!(
        history["snapshots"][1]["at_ms"]
            .as_u64()
            .is_some_and(|ms| ms > 1_600_000_000_000)
    );
}

#[tokio::test]
async fn proposals_move_work_from_hot_and_broken_agents_to_cold_ones() {
    let orch = orchestrator(json!({})).await;
    for id in ["cold", "hot", "warm"] {
        agent(&orch, id, 4).await;
    }
    for (id, n) in [("hot", 4), ("warm", 2)] {
        for _ in 0..n {
            let admitted = call(&orch, "capacity_management", json!({"op": "admit", "agent_id": id})).await;
            assert_eq!(admitted["admitted"], true);
        }
    }
    // 6 units on 12 slots: mean 0.5. hot (1.0) is 0.5 above it: 2 of its 4 move to cold.
    let p = call(&orch, "resource_optimization", json!({})).await;
    assert_eq!(
        p["proposals"],
        json!([{"from": "hot", "to": "cold", "tasks": 2}]),
        "{p}"
    );
    assert_eq!(p["mean_utilisation"], 0.5);
    assert_eq!(p["threshold"], 0.25);
    assert_eq!(p["open_circuits"], json!([]));
    // hot breaks: all of its work should go, over the 8 healthy slots (mean 0.75).
    for _ in 0..5 {
        report(&orch, "hot", false).await;
    }
    let p = call(&orch, "resource_optimization", json!({"op": "proposals"})).await;
    assert_eq!(
        p["proposals"],
        json!([{"from": "hot", "to": "cold", "tasks": 3}, {"from": "hot", "to": "warm", "tasks": 1}]),
        "{p}"
    );
    assert_eq!(p["open_circuits"], json!(["hot"]));
    assert_eq!(p["unplaced"], 0);
}

#[tokio::test]
async fn agents_arriving_or_leaving_after_initialize_are_followed_through_events() {
    // The plugin's clock stands still (and reading the host's whole fleet again is put off for
    // an hour besides): only the events, and the figures of the agents they name, can do it.
    let orch = orchestrator(json!({"load_refresh_ms": 3_600_000})).await;
    let why = failed(&orch, "adaptive_balancing", json!({})).await;
    assert!(why.contains("no agent is registered"), "{why}");
    agent(&orch, "late", 1).await;
    assert_eq!(
        pick(&orch, json!({})).await,
        "late",
        "picked right after its registration"
    );
    set_status(&orch, "late", AgentStatus::Offline).await;
    let why = failed(&orch, "adaptive_balancing", json!({})).await;
    assert!(why.contains("1 busy or offline"), "offline agent left out: {why}");
    set_status(&orch, "late", AgentStatus::Active).await;
    agent(&orch, "later", 1).await;
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..2 {
        seen.insert(pick(&orch, json!({"strategy": "round_robin"})).await);
    }
    assert_eq!(seen.len(), 2, "both picked: {seen:?}");
    let mut events = orch.subscribe_events();
    orch.deregister_agent(&AgentId::from("late"))
        .await
        .expect("deregisters");
    event_seen(
        &mut events,
        &OrchestratorEvent::AgentDeregistered {
            agent_id: "late".into(),
        },
    )
    .await;
    let snapshot = call(&orch, "capacity_management", json!({})).await;
    assert_eq!(snapshot["agents"].as_array().map(Vec::len), Some(1), "{snapshot}");
    for _ in 0..10 {
        assert_eq!(pick(&orch, json!({"strategy": "round_robin"})).await, "later");
    }
    // An id named in a request is looked up with the host at once, event or not.
    orch.register_agent(AgentConfig::new("named").with_id("named"))
        .await
        .expect("registers");
    assert_eq!(pick(&orch, json!({"available_agents": ["named"]})).await, "named");
}

#[tokio::test]
async fn duplicate_available_agents_do_not_bias_picks() {
    let orch = orchestrator(json!({"seed": 5})).await;
    agent(&orch, "a", 4).await;
    agent(&orch, "b", 4).await;
    // Round robin: a listed three times still gets one turn in two.
    let rr = json!({"strategy": "round_robin", "available_agents": ["a", "a", "a", "b"]});
    let mut order = Vec::new();
    for _ in 0..6 {
        order.push(pick(&orch, rr.clone()).await);
    }
    assert!(order.windows(2).all(|w| w[0] != w[1]), "alternates: {order:?}");
    // P2C between equal costs: each wins about half, not 8 in 9.
    let mut listed = vec!["a"; 8];
    listed.push("b");
    let counts = picks(&orch, json!({"available_agents": listed}), 400).await;
    let b = counts.get("b").copied().unwrap_or(0);
    assert!((140..=260).contains(&b), "{counts:?}");
    // Admission between listed candidates is unaffected, and so is the ticket's target.
    let admitted = call(
        &orch,
        "capacity_management",
        json!({"op": "admit", "available_agents": ["b", "b", "a"]}),
    )
    .await;
    assert_eq!(admitted["agent_id"], "a", "the least utilised, ties to the lowest id");
}

#[tokio::test]
async fn admit_refusals_and_tickets_carry_load_and_capacity() {
    let orch = orchestrator(json!({})).await;
    agent(&orch, "a", 1).await;
    agent(&orch, "b", 2).await;
    for id in ["a", "b", "b"] {
        let admitted = call(&orch, "capacity_management", json!({"op": "admit", "agent_id": id})).await;
        assert_eq!(admitted["admitted"], true, "{admitted}");
    }
    // Every candidate full: the least utilised (both 1.0, ties to the lowest id).
    let refused = call(&orch, "capacity_management", json!({"op": "admit"})).await;
    assert_eq!(
        (
            refused["admitted"].clone(),
            refused["queued"].clone(),
            refused["candidate"].clone(),
            refused["load"].clone(),
            refused["capacity"].clone()
        ),
        (json!(false), json!(false), json!("a"), json!(1), json!(1)),
        "{refused}"
    );
    // The agent named.
    let queued = call(
        &orch,
        "capacity_management",
        json!({"op": "admit", "agent_id": "b", "queue": true}),
    )
    .await;
    assert_eq!(
        (
            queued["queued"].clone(),
            queued["candidate"].clone(),
            queued["load"].clone(),
            queued["capacity"].clone()
        ),
        (json!(true), json!("b"), json!(2), json!(2)),
        "{queued}"
    );
    // No candidate known: the fields are there, null.
    let nobody = call(
        &orch,
        "capacity_management",
        json!({"op": "admit", "available_agents": ["ghost"]}),
    )
    .await;
    assert_eq!(
        (
            nobody["candidate"].clone(),
            nobody["load"].clone(),
            nobody["capacity"].clone()
        ),
        (Value::Null, Value::Null, Value::Null),
        "{nobody}"
    );
    assert!(
        nobody
            .as_object()
            .is_some_and(|o| o.contains_key("load") && o.contains_key("capacity"))
    );
}

#[tokio::test]
async fn a_late_outcome_after_the_backoff_does_not_settle_a_half_open_circuit() {
    let (orch, clock) = orchestrator_with_clock(json!({"failure_threshold": 1, "base_backoff_ms": 1_000})).await;
    agent(&orch, "a", 4).await;
    agent(&orch, "b", 4).await;
    // A call starts on a; a then fails elsewhere and its circuit opens.
    call(&orch, "adaptive_balancing", json!({"op": "start", "agent_id": "a"})).await;
    let open = report(&orch, "a", false).await;
    assert_eq!(open["state"], "open");
    assert_eq!(open["open_circuits"], json!(["a"]));
    clock.advance(Duration::from_millis(1_500));
    // The call started before the circuit opened answers late, fine; an observation and a
    // report come in too. No probe is out: none of them closes the circuit.
    let late = call(
        &orch,
        "adaptive_balancing",
        json!({"op": "finish", "agent_id": "a", "latency_ms": 3, "success": true}),
    )
    .await;
    assert_eq!(late["circuit"], "half_open", "{late}");
    observe(&orch, "a", 3.0, true).await;
    let still = report(&orch, "a", true).await;
    assert_eq!(
        (
            still["state"].clone(),
            still["probe_in_flight"].clone(),
            still["open_circuits"].clone()
        ),
        (json!("half_open"), json!(false), json!(["a"])),
        "{still}"
    );
    // Nor does a late failure reopen it.
    let still = report(&orch, "a", false).await;
    assert_eq!(
        (still["state"].clone(), still["times_opened"].clone()),
        (json!("half_open"), json!(1))
    );
    // The probe goes out (a pick), and its outcome settles it.
    let probe = call(
        &orch,
        "adaptive_balancing",
        json!({"available_agents": ["a"], "acquire": true}),
    )
    .await;
    assert_eq!(probe["probe"], true, "{probe}");
    let closed = call(
        &orch,
        "adaptive_balancing",
        json!({"op": "finish", "agent_id": "a", "latency_ms": 3, "success": true}),
    )
    .await;
    assert_eq!(closed["circuit"], "closed", "{closed}");
}

#[tokio::test]
async fn garbage_is_refused_as_invalid_request() {
    let orch = orchestrator(json!({})).await;
    agent(&orch, "a", 1).await;
    let cases = [
        ("adaptive_balancing", json!([1]), "must be a JSON object"),
        ("adaptive_balancing", json!("pick"), "must be a JSON object"),
        ("adaptive_balancing", json!({"op": "explode"}), "unknown op `explode`"),
        ("adaptive_balancing", json!({"op": 3}), "`op` must be a string"),
        (
            "adaptive_balancing",
            json!({"strategy": "fastest"}),
            "unknown strategy `fastest`",
        ),
        (
            "adaptive_balancing",
            json!({"strategy": 5}),
            "`strategy` must be a string",
        ),
        (
            "adaptive_balancing",
            json!({"available_agents": "a"}),
            "`available_agents` must be a list",
        ),
        (
            "adaptive_balancing",
            json!({"available_agents": [1]}),
            "non-empty strings",
        ),
        (
            "adaptive_balancing",
            json!({"acquire": "yes"}),
            "`acquire` must be true or false",
        ),
        (
            "adaptive_balancing",
            json!({"stratgy": "round_robin"}),
            "unexpected field `stratgy`",
        ),
        ("adaptive_balancing", json!({"op": "start"}), "missing `agent_id`"),
        (
            "adaptive_balancing",
            json!({"op": "start", "agent_id": "ghost"}),
            "`ghost` is not registered",
        ),
        (
            "adaptive_balancing",
            json!({"op": "finish", "agent_id": "a"}),
            "missing `latency_ms`",
        ),
        (
            "adaptive_balancing",
            json!({"op": "finish", "agent_id": "a", "latency_ms": -1}),
            "`latency_ms` must be a non-negative number",
        ),
        (
            "adaptive_balancing",
            json!({"op": "observe", "agent_id": "a", "latency_ms": "fast"}),
            "`latency_ms` must be",
        ),
        (
            "adaptive_balancing",
            json!({"op": "observe", "agent_id": "a", "latency_ms": 1e303}),
            "at most 86400000 (one day)",
        ),
        (
            "adaptive_balancing",
            json!({"op": "observe", "agent_id": "a", "latency_ms": 86_400_001}),
            "at most 86400000 (one day)",
        ),
        (
            "adaptive_balancing",
            json!({"op": "observe", "agent_id": "a", "latency_ms": 1, "success": "no"}),
            "`success` must be true or false",
        ),
        (
            "adaptive_balancing",
            json!({"op": "finish", "agent_id": "a", "latency_ms": 1}),
            "no call pending",
        ),
        ("capacity_management", json!(42), "must be a JSON object"),
        ("capacity_management", json!({"op": "grow"}), "unknown op `grow`"),
        (
            "capacity_management",
            json!({"op": "snapshot", "extra": 1}),
            "unexpected field `extra`",
        ),
        (
            "capacity_management",
            json!({"op": "history", "limit": -1}),
            "`limit` must be a non-negative integer",
        ),
        (
            "capacity_management",
            json!({"op": "set_capacity", "agent_id": "a"}),
            "missing `capacity`",
        ),
        (
            "capacity_management",
            json!({"op": "set_capacity", "agent_id": "a", "capacity": 0}),
            "`capacity` must be an integer from 1",
        ),
        (
            "capacity_management",
            json!({"op": "set_capacity", "agent_id": "a", "capacity": "big"}),
            "`capacity` must be",
        ),
        (
            "capacity_management",
            json!({"op": "set_capacity", "agent_id": "ghost", "capacity": 2}),
            "`ghost` is not registered",
        ),
        (
            "capacity_management",
            json!({"op": "admit", "agent_id": "a", "available_agents": ["a"]}),
            "not both",
        ),
        (
            "capacity_management",
            json!({"op": "admit", "queue": 1}),
            "`queue` must be true or false",
        ),
        (
            "capacity_management",
            json!({"op": "admit", "agent_id": "ghost"}),
            "`ghost` is not registered",
        ),
        (
            "capacity_management",
            json!({"op": "release", "agent_id": "a"}),
            "holds no slot",
        ),
        ("capacity_management", json!({"op": "release"}), "missing `agent_id`"),
        ("capacity_management", json!({"op": "ticket"}), "missing `ticket`"),
        (
            "capacity_management",
            json!({"op": "ticket", "ticket": "t-1"}),
            "`ticket` must be a non-negative integer",
        ),
        (
            "capacity_management",
            json!({"op": "ticket", "ticket": 12345}),
            "no ticket 12345",
        ),
        (
            "capacity_management",
            json!({"op": "cancel", "ticket": 12345}),
            "no ticket 12345",
        ),
        ("resource_optimization", json!(true), "must be a JSON object"),
        ("resource_optimization", json!({"op": "heal"}), "unknown op `heal`"),
        (
            "resource_optimization",
            json!({"op": "report", "agent_id": "a"}),
            "missing `success`",
        ),
        (
            "resource_optimization",
            json!({"op": "report", "agent_id": "a", "success": "yes"}),
            "`success` must be true or false",
        ),
        (
            "resource_optimization",
            json!({"op": "report", "agent_id": "ghost", "success": true}),
            "`ghost` is not registered",
        ),
        (
            "resource_optimization",
            json!({"op": "circuits", "all": true}),
            "unexpected field `all`",
        ),
        (
            "resource_optimization",
            json!({"op": "proposals", "dry_run": true}),
            "unexpected field `dry_run`",
        ),
    ];
    for (capability, data, expected) in cases {
        let text = refused(&orch, capability, data.clone()).await;
        assert!(text.contains(expected), "{capability} {data}: {text}");
    }
    // Nothing above changed the state.
    let snapshot = call(&orch, "capacity_management", json!(null)).await;
    assert_eq!(snapshot["agents"][0]["pending"], 0);
    let circuits = call(&orch, "resource_optimization", json!({"op": "circuits"})).await;
    assert_eq!(circuits["circuits"], json!([]));
}

#[tokio::test]
async fn bad_configuration_is_refused_naming_the_key() {
    for (config, expected) in [
        (json!({"half_life": 3}), "half_life"),
        (json!({"failure_threshold": 0}), "failure_threshold"),
        (json!({"base_backoff_ms": 500, "max_backoff_ms": 100}), "max_backoff_ms"),
        (json!({"default_strategy": "random"}), "random"),
        (json!({"weights": {"a": -1}}), "weights.a"),
        (json!({"half_life_ms": 0}), "half_life_ms"),
        (json!({"half_life_ms": 86_400_001}), "half_life_ms"),
        (json!({"default_rtt_ms": 1e303}), "default_rtt_ms"),
    ] {
        let err = Orchestrator::builder()
            .legacy_mode(false)
            .plugin(LoadBalancingPlugin::default())
            .configure(NAME, config.clone())
            .build()
            .await
            .unwrap_err();
        let text = err.to_string();
        assert!(text.contains(expected) && text.contains(NAME), "{config}: {text}");
    }
}

fn library() -> PathBuf {
    plugin_api::testkit::example_library("plugin-load-balancing", "load_balancing_plugin").expect("the example library")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dynamic_library_balances_on_the_hosts_clock_and_events() {
    let orch = Orchestrator::builder()
        .legacy_mode(false)
        .clock(ManualClock::new())
        .load_plugin(library())
        .configure(
            NAME,
            json!({"seed": 3, "failure_threshold": 1, "base_backoff_ms": 60_000}),
        )
        .build()
        .await
        .expect("builds");
    let catalog = orch.catalog();
    assert!(
        matches!(catalog.plugins[0].origin, PluginOrigin::StableAbi { .. }),
        "{catalog:?}"
    );
    agent(&orch, "x", 2).await;
    agent(&orch, "y", 2).await;
    eventually("both agents known", || async {
        let snapshot = call(&orch, "capacity_management", json!({})).await;
        snapshot["agents"].as_array().map(Vec::len) == Some(2)
    })
    .await;
    let open = report(&orch, "x", false).await;
    assert_eq!(open["state"], "open");
    assert_eq!(open["retry_in_ms"], 60_000, "the host's (manual) clock: {open}");
    for _ in 0..10 {
        assert_eq!(pick(&orch, json!({})).await, "y");
    }
    let refusal = refused(&orch, "adaptive_balancing", json!({"strategy": "nope"})).await;
    assert!(refusal.contains("unknown strategy"), "{refusal}");
}

#[tokio::test]
async fn passes_the_conformance_kit() {
    use plugin_api::testkit::{CheckOptions, check_plugin};
    let report = check_plugin(
        &LoadBalancingPlugin::default(),
        CheckOptions::default().with_config(json!({"seed": 1, "max_queued": 10, "half_life_ms": 500})),
    )
    .await;
    report.assert_conformant();
    let report = check_plugin(&LoadBalancingPlugin::default(), CheckOptions::default()).await;
    report.assert_conformant();
}
