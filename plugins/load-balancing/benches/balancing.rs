//! Balancing quality, on the pure core ([`Balancer`]) in simulated time, and the cost of a pick,
//! through the plugin and on the core.
//!
//! 1. A simulation after tower's `balance` demo, printed as a table (it is a quality figure,
//!    deterministic, not a timing): 50 agents, each running at most 8 calls at once (more wait
//!    in the agent's own FIFO queue, as a real worker's would):
//!    - 40 fast agents, typical latency 1 to 50 ms (log-spaced),
//!    - 5 medium ones, 100 to 500 ms,
//!    - 3 slow ones, 1 s,
//!    - 2 broken ones that answer every call with an error after about 2 ms,
//!
//!    with each call's latency drawn uniformly between 0.5x and 1.5x the agent's typical one,
//!    and the roles shuffled over the ids (so that ids say nothing about speed). 20,000 requests
//!    arrive one every 100 us (10,000/s, hundreds in flight); each is picked onto an agent with
//!    `acquire`, and when it ends the balancer is told (`finish`, with the latency the caller saw,
//!    queueing at the agent included, and whether it succeeded). A failed call is retried on a
//!    new pick, 3 attempts at most. Reported per strategy: p50, p99 and p99.9 of the end-to-end
//!    latency (arrival to last answer, retries included), the makespan (until the last answer),
//!    failed requests and retries. Weighted round robin is given the weights an operator would
//!    set from the agents' advertised speed (fast and broken 8, medium 2, slow 1).
//!
//!    The bench **fails** (panics) unless P2C's p99 is at least 5x better than round robin's.
//! 2. Criterion group `pick_over_1000_agents`, timings:
//!    - `plugin_process_request_p2c`: what a caller pays for one pick: a JSON request
//!      (`{"strategy": "p2c_peak_ewma"}`) through `LoadBalancingPlugin::process_request`, over
//!      1,000 agents registered with a minimal `plugin_api::Host` (real monotonic clock, so the
//!      host's loads are re-read every 10 ms, as in production; the read's cost is included,
//!      amortised). Input parsing, the lock, the pick and the JSON answer included; the
//!      orchestrator's dispatch is not.
//!    - `core_p2c_peak_ewma`: the same pick on the core alone ([`Balancer::pick`]).
//!    - `naive_full_scan_min_cost`: a baseline, a full scan for the lowest cost over the same
//!      agents.
//!
//! Run it with `cargo bench -p plugin-load-balancing`.

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use plugin_api::prelude::*;
use plugin_api::{BoxFuture, Host};
use plugin_load_balancing::{AgentSpec, Balancer, BalancerConfig, LoadBalancingPlugin, NAME, Strategy};
use serde_json::{Value, json};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, VecDeque};
use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const MS: u64 = 1_000_000;
const AGENTS: usize = 50;
const SLOTS: u32 = 8;
const REQUESTS: u32 = 20_000;
const INTERVAL_NS: u64 = 100_000;
const MAX_ATTEMPTS: u8 = 3;
const WARM_AFTER_NS: u64 = 1_000 * MS;

/// The world's own randomness (SplitMix64), fixed seed: every strategy faces the same world.
struct World(u64);

impl World {
    fn next(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[derive(Debug, Clone)]
struct Model {
    id: Arc<str>,
    latency_ms: f64,
    broken: bool,
    weight: f64,
}

fn fleet() -> Vec<Model> {
    let mut roles: Vec<(f64, bool, f64)> = Vec::new();
    for i in 0..40 {
        roles.push((50f64.powf(f64::from(i) / 39.0), false, 8.0));
    }
    for ms in [100.0, 200.0, 300.0, 400.0, 500.0] {
        roles.push((ms, false, 2.0));
    }
    roles.extend([(1_000.0, false, 1.0); 3]);
    roles.extend([(2.0, true, 8.0); 2]);
    // Fisher-Yates with the world's generator.
    let mut world = World(99);
    for i in (1..roles.len()).rev() {
        let j = (world.next() * (i + 1) as f64) as usize;
        roles.swap(i, j.min(i));
    }
    roles
        .into_iter()
        .enumerate()
        .map(|(i, (latency_ms, broken, weight))| Model {
            id: format!("agent-{i:02}").into(),
            latency_ms,
            broken,
            weight,
        })
        .collect()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    Arrive(u32),
    Done { agent: usize, request: u32 },
}

#[derive(Debug, Clone, Copy, Default)]
struct Request {
    arrived: u64,
    attempt_started: u64,
    attempts: u8,
}

#[derive(Debug, Default)]
struct Outcome {
    latencies: Vec<u64>,
    /// Latencies of the requests that arrived after the first second (every agent observed).
    warm: Vec<u64>,
    makespan: u64,
    failed: u32,
    retries: u32,
    peak_in_flight: u32,
}

fn percentile(sorted: &[u64], q: f64) -> u64 {
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn simulate(strategy: Strategy, models: &[Model]) -> Outcome {
    let weights = models.iter().map(|m| (m.id.to_string(), m.weight)).collect();
    let mut lb = Balancer::new(BalancerConfig {
        seed: Some(1),
        weights,
        ..BalancerConfig::default()
    })
    .expect("valid configuration");
    let mut by_id: HashMap<Arc<str>, usize> = HashMap::new();
    for (i, m) in models.iter().enumerate() {
        lb.upsert_agent(AgentSpec::new(Arc::clone(&m.id)).with_capacity(SLOTS), 0);
        by_id.insert(Arc::clone(&m.id), i);
    }
    let mut world = World(2026);
    let mut events: BinaryHeap<Reverse<(u64, u64, Event)>> = BinaryHeap::new();
    let mut seq = 0u64;
    let mut schedule = |events: &mut BinaryHeap<Reverse<(u64, u64, Event)>>, at: u64, event: Event| {
        seq += 1;
        events.push(Reverse((at, seq, event)));
    };
    for r in 0..REQUESTS {
        schedule(&mut events, u64::from(r) * INTERVAL_NS, Event::Arrive(r));
    }
    let mut requests = vec![Request::default(); REQUESTS as usize];
    let mut busy = vec![0u32; models.len()];
    let mut waiting: Vec<VecDeque<u32>> = vec![VecDeque::new(); models.len()];
    let mut out = Outcome {
        latencies: Vec::with_capacity(REQUESTS as usize),
        ..Outcome::default()
    };
    let mut in_flight = 0u32;
    let service = |world: &mut World, m: &Model| ((m.latency_ms * (0.5 + world.next())) * MS as f64) as u64;

    while let Some(Reverse((now, _, event))) = events.pop() {
        let dispatch = match event {
            Event::Arrive(r) => {
                requests[r as usize].arrived = now;
                in_flight += 1;
                out.peak_in_flight = out.peak_in_flight.max(in_flight);
                Some(r)
            }
            Event::Done { agent, request } => {
                let m = &models[agent];
                let req = requests[request as usize];
                let seen_ms = (now - req.attempt_started) as f64 / MS as f64;
                lb.finish(&m.id, seen_ms, !m.broken, now).expect("a call was pending");
                busy[agent] -= 1;
                if let Some(next) = waiting[agent].pop_front() {
                    busy[agent] += 1;
                    let at = now + service(&mut world, m);
                    schedule(&mut events, at, Event::Done { agent, request: next });
                }
                if m.broken && req.attempts < MAX_ATTEMPTS {
                    out.retries += 1;
                    Some(request)
                } else {
                    if m.broken {
                        out.failed += 1;
                    }
                    out.latencies.push(now - req.arrived);
                    if req.arrived >= WARM_AFTER_NS {
                        out.warm.push(now - req.arrived);
                    }
                    out.makespan = now;
                    in_flight -= 1;
                    None
                }
            }
        };
        let Some(r) = dispatch else { continue };
        match lb.pick(strategy, None, true, now) {
            Ok(pick) => {
                let agent = by_id[&pick.agent_id];
                let req = &mut requests[r as usize];
                req.attempts += 1;
                req.attempt_started = now;
                if busy[agent] < SLOTS {
                    busy[agent] += 1;
                    let at = now + service(&mut world, &models[agent]);
                    schedule(&mut events, at, Event::Done { agent, request: r });
                } else {
                    waiting[agent].push_back(r);
                }
            }
            Err(_) => {
                // Nothing to pick (every circuit open): the request fails now.
                out.failed += 1;
                out.latencies.push(now - requests[r as usize].arrived);
                in_flight -= 1;
            }
        }
    }
    out.latencies.sort_unstable();
    out.warm.sort_unstable();
    out
}

fn ms(ns: u64) -> String {
    let ms = ns as f64 / MS as f64;
    if ms >= 1_000.0 {
        format!("{:.2} s", ms / 1_000.0)
    } else {
        format!("{ms:.1} ms")
    }
}

/// Prints the table; returns each strategy's p99.
fn report(models: &[Model]) -> BTreeMap<&'static str, u64> {
    println!(
        "balancing simulation: {AGENTS} agents x {SLOTS} slots (40 fast 1-50 ms, 5 at 100-500 ms, 3 at 1 s, 2 broken), \
         {REQUESTS} requests at one per {} us, up to {MAX_ATTEMPTS} attempts",
        INTERVAL_NS / 1_000
    );
    println!(
        "{:>22} {:>10} {:>10} {:>10} {:>10} {:>7} {:>8} {:>10} {:>14}",
        "strategy", "p50", "p99", "p99.9", "makespan", "failed", "retries", "in flight", "p99 after 1 s"
    );
    let mut p99 = BTreeMap::new();
    for strategy in Strategy::ALL {
        let out = simulate(strategy, models);
        let l = &out.latencies;
        println!(
            "{:>22} {:>10} {:>10} {:>10} {:>10} {:>7} {:>8} {:>10} {:>14}",
            strategy.as_str(),
            ms(percentile(l, 0.50)),
            ms(percentile(l, 0.99)),
            ms(percentile(l, 0.999)),
            ms(out.makespan),
            out.failed,
            out.retries,
            out.peak_in_flight,
            ms(percentile(&out.warm, 0.99)),
        );
        p99.insert(strategy.as_str(), percentile(l, 0.99));
    }
    let p2c = p99[Strategy::P2cPeakEwma.as_str()] as f64;
    for other in [
        Strategy::RoundRobin,
        Strategy::WeightedRoundRobin,
        Strategy::LeastLoaded,
    ] {
        println!(
            "p99 of {} over p99 of p2c_peak_ewma: {:.2}x (target against round_robin: at least 5x)",
            other.as_str(),
            p99[other.as_str()] as f64 / p2c,
        );
    }
    p99
}

/// The quality target: P2C's p99 at least 5x better than round robin's.
fn assert_target(p99: &BTreeMap<&'static str, u64>) {
    let p2c = p99[Strategy::P2cPeakEwma.as_str()];
    let rr = p99[Strategy::RoundRobin.as_str()];
    assert!(
        rr >= p2c.saturating_mul(5),
        "target lost: p99 of p2c_peak_ewma ({}) must be at least 5x better than round_robin's ({}), is {:.2}x",
        ms(p2c),
        ms(rr),
        rr as f64 / p2c.max(1) as f64,
    );
}

/// A minimal host: a fixed fleet, the real monotonic clock, nothing else.
struct BenchHost {
    config: Value,
    agents: Vec<AgentInfo>,
    origin: Instant,
}

impl Host for BenchHost {
    fn plugin_config(&self, _plugin: &str) -> Value {
        self.config.clone()
    }
    fn agents(&self) -> Vec<AgentInfo> {
        self.agents.clone()
    }
    fn agent(&self, id: &str) -> Option<AgentInfo> {
        self.agents.iter().find(|a| a.id == id).cloned()
    }
    fn agent_loads(&self) -> Vec<AgentLoad> {
        self.agents
            .iter()
            .map(|a| AgentLoad {
                id: a.id.as_str().into(),
                status: a.status,
                load: a.load,
                capacity: a.capacity,
            })
            .collect()
    }
    fn set_agent_status(&self, _id: &str, _status: AgentStatus) -> Result<(), PluginError> {
        Ok(())
    }
    fn call(
        &self,
        _caller: &str,
        _request: IntegrationRequest,
    ) -> BoxFuture<'static, Result<IntegrationResponse, PluginError>> {
        Box::pin(std::future::ready(Err(PluginError::unavailable(
            "the bench host serves nothing",
        ))))
    }
    fn emit(&self, _event: OrchestratorEvent) {}
    fn now_unix_ms(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }
    fn monotonic_ns(&self) -> u64 {
        self.origin.elapsed().as_nanos() as u64
    }
    fn spawn(&self, _task: BoxFuture<'static, ()>) {}
    fn sleep(&self, _duration: Duration) -> BoxFuture<'static, ()> {
        Box::pin(std::future::ready(()))
    }
}

/// Runs a future that never waits (the plugin's never do) to completion.
fn run<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    match future.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(out) => out,
        Poll::Pending => panic!("the plugin waited"),
    }
}

/// The plugin over 1,000 agents (varied host loads, a few offline), each observed once.
fn big_plugin() -> LoadBalancingPlugin {
    let mut world = World(7);
    let agents: Vec<AgentInfo> = (0..1_000)
        .map(|i| AgentInfo {
            id: format!("agent-{i:04}"),
            name: format!("agent {i}"),
            capabilities: vec!["work".into()],
            status: if i % 97 == 3 {
                AgentStatus::Offline
            } else {
                AgentStatus::Active
            },
            load: (world.next() * 6.0) as u32,
            capacity: 8,
            metadata: BTreeMap::new(),
        })
        .collect();
    let ids: Vec<String> = agents.iter().map(|a| a.id.clone()).collect();
    let host = BenchHost {
        config: json!({"seed": 42}),
        agents,
        origin: Instant::now(),
    };
    let plugin = LoadBalancingPlugin::new();
    run(plugin.initialize(HostHandle::new(NAME, Arc::new(host)))).expect("initializes");
    for id in ids {
        let observe = json!({"op": "observe", "agent_id": id, "latency_ms": 1.0 + world.next() * 200.0});
        let answer =
            run(plugin.process_request(IntegrationRequest::new("adaptive_balancing", observe))).expect("observes");
        assert!(answer.success);
    }
    plugin
}

/// 1,000 agents with varied latencies and loads, a few offline and a few behind open circuits.
fn big_fleet() -> Balancer {
    let mut lb = Balancer::new(BalancerConfig {
        seed: Some(42),
        failure_threshold: 1,
        ..BalancerConfig::default()
    })
    .expect("valid configuration");
    let mut world = World(7);
    for i in 0..1_000 {
        let id = format!("agent-{i:04}");
        let status = if i % 97 == 3 {
            plugin_api::AgentStatus::Offline
        } else {
            plugin_api::AgentStatus::Active
        };
        let spec = AgentSpec::new(id.as_str())
            .with_capacity(8)
            .with_load((world.next() * 6.0) as u32)
            .with_status(status);
        lb.upsert_agent(spec, 0);
        lb.observe(&id, 1.0 + world.next() * 200.0, i % 89 != 5, 0)
            .expect("known");
    }
    lb
}

fn bench_balancing(c: &mut Criterion) {
    let models = fleet();
    let p99 = report(&models);
    assert_target(&p99);

    let plugin = big_plugin();
    let request = IntegrationRequest::new("adaptive_balancing", json!({"strategy": "p2c_peak_ewma"}));
    let answer = run(plugin.process_request(request.clone())).expect("picks");
    assert!(
        answer.success && answer.data["selected_agent"].is_string(),
        "{answer:?}"
    );
    let mut lb = big_fleet();
    let now = 10 * MS;
    assert_eq!(lb.len(), 1_000);
    let mut group = c.benchmark_group("pick_over_1000_agents");
    group.bench_function("plugin_process_request_p2c", |b| {
        b.iter_batched(
            || request.clone(),
            |request| black_box(run(plugin.process_request(request)).expect("picks")),
            BatchSize::SmallInput,
        );
    });
    group.bench_function("core_p2c_peak_ewma", |b| {
        b.iter(|| black_box(lb.pick(Strategy::P2cPeakEwma, None, false, now).expect("picks")));
    });
    group.bench_function("naive_full_scan_min_cost", |b| {
        b.iter(|| {
            black_box(
                lb.eligible_costs(now)
                    .min_by(|x, y| x.1.total_cmp(&y.1))
                    .expect("an agent"),
            )
        });
    });
    group.finish();
}

criterion_group!(benches, bench_balancing);
criterion_main!(benches);
