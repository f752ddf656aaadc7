//! Concurrency through the public API: registrations, deregistrations and plugin hot swaps
//! hammered from many tasks while dispatch runs. Every count adds up, nothing deadlocks (each
//! test is bounded by a timeout), and a capability being hot-swapped is never seen missing.

mod common;

use common::{Behaviour, ScriptedPlugin};
use orchestrator::PluginOptions;
use orchestrator::prelude::*;
use serde_json::json;
use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

const BOUND: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn registrations_swaps_and_dispatches_at_once_all_add_up() {
    const REGISTRARS: usize = 4;
    const AGENTS_EACH: usize = 500;
    const SWAPS: usize = 200;
    const DISPATCHERS: usize = 3;
    const CALLS_EACH: usize = 2_000;

    let orch = Orchestrator::builder()
        .legacy_mode(false)
        .plugin(ScriptedPlugin::new("Swap", &["swap_cap"], Behaviour::Echo))
        .build()
        .await
        .expect("builds");
    let done = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicUsize::new(0));

    let work = async {
        let mut tasks = tokio::task::JoinSet::new();
        // Registrars: each registers its agents, deregisters every other one, and returns
        // the ids it kept.
        for r in 0..REGISTRARS {
            let orch = orch.clone();
            tasks.spawn(async move {
                let mut kept = Vec::new();
                for i in 0..AGENTS_EACH {
                    let id = orch
                        .register_agent(AgentConfig::new("w").with_id(format!("r{r}-{i}")))
                        .await
                        .expect("registers");
                    if i % 2 == 0 {
                        orch.deregister_agent(&id).await.expect("deregisters");
                    } else {
                        kept.push(id.to_string());
                    }
                }
                kept
            });
        }
        // The swapper: hot-swaps the plugin behind `swap_cap` over and over.
        {
            let orch = orch.clone();
            tasks.spawn(async move {
                for _ in 0..SWAPS {
                    orch.register_plugin_with(
                        ScriptedPlugin::new("Swap", &["swap_cap"], Behaviour::Echo),
                        PluginOptions::new().replace(),
                    )
                    .await
                    .expect("swaps");
                    tokio::task::yield_now().await;
                }
                Vec::new()
            });
        }
        // Dispatchers: every call is served, whichever version of the plugin serves it.
        for _ in 0..DISPATCHERS {
            let orch = orch.clone();
            let served = Arc::clone(&served);
            tasks.spawn(async move {
                for _ in 0..CALLS_EACH {
                    let response = orch
                        .execute(IntegrationRequest::new("swap_cap", json!({})))
                        .await
                        .expect("served during hot swaps");
                    assert_eq!(response.served_by, "Swap");
                    served.fetch_add(1, Ordering::Relaxed);
                }
                Vec::new()
            });
        }
        // A reader: the capability never disappears while it is swapped.
        let reader = {
            let orch = orch.clone();
            let done = Arc::clone(&done);
            tokio::spawn(async move {
                let mut checks = 0u64;
                while !done.load(Ordering::Relaxed) {
                    assert!(orch.has_capability("swap_cap"), "seen missing during a swap");
                    assert_eq!(orch.plugins().len(), 1);
                    checks += 1;
                    tokio::task::yield_now().await;
                }
                checks
            })
        };
        let mut kept = HashSet::new();
        while let Some(joined) = tasks.join_next().await {
            kept.extend(joined.expect("no task panicked"));
        }
        done.store(true, Ordering::Relaxed);
        let checks = reader.await.expect("the reader did not panic");
        (kept, checks)
    };
    let (kept, checks) = tokio::time::timeout(BOUND, work).await.expect("no deadlock");
    assert!(checks > 0);

    // In == out: what was kept is exactly what is registered.
    assert_eq!(kept.len(), REGISTRARS * AGENTS_EACH / 2);
    assert_eq!(orch.agent_count(), kept.len());
    let registered: HashSet<String> = orch.agents().into_iter().map(|a| a.id.to_string()).collect();
    assert_eq!(registered, kept);
    assert_eq!(served.load(Ordering::Relaxed), DISPATCHERS * CALLS_EACH);
    // Every swapped-out copy was shut down, and the catalog counts every call.
    assert_eq!(orch.plugins()[0].name, "Swap");
}

/// Regression: a call that loaded the registry just before a hot swap found the old plugin
/// retired and failed ("unregistered while the call was under way") instead of being served by
/// the new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn calls_racing_a_hot_swap_are_served_by_the_new_plugin() {
    let orch = Orchestrator::builder()
        .legacy_mode(false)
        .plugin(ScriptedPlugin::new("Swap", &["swap_cap"], Behaviour::Echo))
        .build()
        .await
        .expect("builds");
    let swapping = Arc::new(AtomicBool::new(true));
    let mut callers = tokio::task::JoinSet::new();
    for _ in 0..3 {
        let orch = orch.clone();
        let swapping = Arc::clone(&swapping);
        callers.spawn(async move {
            let mut calls = 0u64;
            while swapping.load(Ordering::Relaxed) {
                let result = orch.execute(IntegrationRequest::new("swap_cap", json!({}))).await;
                assert!(result.is_ok(), "a call during a hot swap failed: {result:?}");
                calls += 1;
                // A call to a plugin that answers at once never yields; without this, three
                // callers would keep the swapper's wake-ups off the cores.
                tokio::task::yield_now().await;
            }
            calls
        });
    }
    let swaps = async {
        for _ in 0..1_000 {
            orch.register_plugin_with(
                ScriptedPlugin::new("Swap", &["swap_cap"], Behaviour::Echo),
                PluginOptions::new().replace(),
            )
            .await
            .expect("swaps");
        }
    };
    tokio::time::timeout(BOUND, swaps).await.expect("no deadlock");
    swapping.store(false, Ordering::Relaxed);
    let mut calls = 0;
    while let Some(joined) = callers.join_next().await {
        calls += joined.expect("no caller saw a failed call");
    }
    assert!(calls > 0);
}
