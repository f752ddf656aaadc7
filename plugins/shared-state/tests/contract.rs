//! The `StateStore` contract, run against both backends (memory, and a real `redis-server` on a
//! loopback port), and what only Redis can show: several OS processes racing for the same keys,
//! the read-then-write race the scripts exist to prevent, and Redis going away and coming back.

mod common;

use common::RedisServer;
use plugin_shared_state::{MemoryStore, RedisStore, StateStore, StoreError, TaskState};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

static NEXT_NAMESPACE: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

fn namespace() -> String {
    let n = NEXT_NAMESPACE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("test{}-{n}", std::process::id())
}

/// Everything both backends must do alike.
async fn contract(store: Arc<dyn StateStore>) {
    // Versioned values.
    let absent = store.get("k").await.expect("get");
    assert_eq!((absent.value, absent.version), (Value::Null, 0));
    let first = store
        .compare_and_set("k", 0, &json!({"owner": "a"}))
        .await
        .expect("cas");
    assert!(first.applied);
    assert_eq!(first.version, 1);
    let conflict = store
        .compare_and_set("k", 0, &json!({"owner": "b"}))
        .await
        .expect("cas");
    assert!(!conflict.applied, "{conflict:?}");
    assert_eq!((conflict.version, conflict.value.clone()), (1, json!({"owner": "a"})));
    let second = store.compare_and_set("k", 1, &json!([1, 2, 3])).await.expect("cas");
    assert!(second.applied);
    assert_eq!(second.version, 2);
    assert_eq!(store.get("k").await.expect("get").value, json!([1, 2, 3]));
    let stale = store.compare_and_set("k", 7, &json!(null)).await.expect("cas");
    assert!(!stale.applied);
    assert_eq!(stale.version, 2);

    // Delete on a version, like compare-and-set.
    assert!(
        store
            .compare_and_set("gone", 0, &json!("x"))
            .await
            .expect("cas")
            .applied
    );
    let refused = store.delete("gone", 7).await.expect("delete");
    assert!(!refused.applied);
    assert_eq!((refused.version, refused.value), (1, json!("x")));
    let deleted = store.delete("gone", 1).await.expect("delete");
    assert!(deleted.applied);
    let after = store.get("gone").await.expect("get");
    assert_eq!((after.value, after.version), (Value::Null, 0));
    assert!(
        store.delete("never", 0).await.expect("delete").applied,
        "an absent key is at version 0"
    );
    assert!(!store.delete("never", 1).await.expect("delete").applied);

    // Task transitions: an unknown task is pending.
    let t = store
        .transition("t1", TaskState::Pending, TaskState::Assigned)
        .await
        .expect("transition");
    assert!(t.applied);
    assert_eq!(t.value, json!("assigned"));
    assert!(
        store
            .transition("t1", TaskState::Assigned, TaskState::Running)
            .await
            .expect("transition")
            .applied
    );
    let late = store
        .transition("t1", TaskState::Pending, TaskState::Assigned)
        .await
        .expect("transition");
    assert!(!late.applied);
    assert_eq!((late.value, late.version), (json!("running"), 2));
    assert_eq!(store.get("task/t1").await.expect("get").value, json!("running"));
    let unknown = store
        .transition("t2", TaskState::Running, TaskState::Done)
        .await
        .expect("transition");
    assert!(!unknown.applied, "an unknown task is pending, not running");

    // Load counters, never below zero.
    assert_eq!(store.acquire("a").await.expect("acquire"), 1);
    assert_eq!(store.acquire("a").await.expect("acquire"), 2);
    assert_eq!(store.acquire("b").await.expect("acquire"), 1);
    assert_eq!(store.release("b").await.expect("release"), 0);
    assert_eq!(store.release("b").await.expect("release"), 0);
    assert_eq!(store.release("never").await.expect("release"), 0);
    let loads = store
        .loads(Some(&["a".into(), "b".into(), "c".into()]))
        .await
        .expect("loads");
    assert_eq!(
        loads,
        BTreeMap::from([("a".into(), 2), ("b".into(), 0), ("c".into(), 0)])
    );
    assert_eq!(store.loads(None).await.expect("loads").get("a"), Some(&2));

    // Least-loaded pick: ties go to the first listed; acquire takes a unit in the same step.
    let candidates: Vec<String> = ["a", "c", "b"].map(String::from).to_vec();
    assert_eq!(
        store.pick_least_loaded(&candidates, false).await.expect("pick"),
        Some(("c".into(), 0))
    );
    assert!(
        !store.loads(None).await.expect("loads").contains_key("c"),
        "a pick without acquire writes nothing (both backends list the same agents)"
    );
    assert_eq!(
        store.pick_least_loaded(&candidates, true).await.expect("pick"),
        Some(("c".into(), 1))
    );
    assert_eq!(
        store.pick_least_loaded(&candidates, true).await.expect("pick"),
        Some(("b".into(), 1))
    );
    assert_eq!(store.pick_least_loaded(&[], true).await.expect("pick"), None);

    // Workflows.
    let tasks: Vec<String> = ["x", "y"].map(String::from).to_vec();
    let defined = store.define_workflow("w", &tasks).await.expect("define");
    assert_eq!((defined.total, defined.pending, defined.complete), (2, 2, false));
    let illegal = store.update_workflow("w", "x", TaskState::Done).await;
    assert!(
        matches!(
            illegal,
            Err(StoreError::IllegalTransition {
                from: TaskState::Pending,
                to: TaskState::Done
            })
        ),
        "{illegal:?}"
    );
    for state in [TaskState::Assigned, TaskState::Running, TaskState::Done] {
        let update = store.update_workflow("w", "x", state).await.expect("update");
        assert!(!update.completed_now);
    }
    let again = store
        .update_workflow("w", "x", TaskState::Done)
        .await
        .expect("repeating a state is allowed");
    assert_eq!(again.previous, TaskState::Done);
    for state in [TaskState::Assigned, TaskState::Running] {
        store.update_workflow("w", "y", state).await.expect("update");
    }
    let last = store
        .update_workflow("w", "y", TaskState::Failed)
        .await
        .expect("update");
    assert!(last.completed_now && last.progress.complete);
    assert_eq!((last.progress.done, last.progress.failed), (1, 1));
    let repeat = store
        .update_workflow("w", "y", TaskState::Failed)
        .await
        .expect("update");
    assert!(!repeat.completed_now, "completion is reported once");
    assert!(matches!(
        store.update_workflow("w", "zz", TaskState::Assigned).await,
        Err(StoreError::NotFound(_))
    ));
    assert!(matches!(
        store.update_workflow("nope", "x", TaskState::Assigned).await,
        Err(StoreError::NotFound(_))
    ));
    assert!(matches!(
        store.workflow_progress("nope").await,
        Err(StoreError::NotFound(_))
    ));
    assert!(store.workflow_progress("w").await.expect("progress").complete);

    // No lost update: 16 tasks increment one counter by compare-and-set with retries.
    let mut handles = Vec::new();
    for _ in 0..16 {
        let store = Arc::clone(&store);
        handles.push(tokio::spawn(async move {
            for _ in 0..50 {
                loop {
                    let current = store.get("counter").await.expect("get");
                    let next = current.value.as_u64().unwrap_or(0) + 1;
                    if store
                        .compare_and_set("counter", current.version, &json!(next))
                        .await
                        .expect("cas")
                        .applied
                    {
                        break;
                    }
                }
            }
        }));
    }
    for h in handles {
        h.await.expect("joins");
    }
    let counter = store.get("counter").await.expect("get");
    assert_eq!((counter.value, counter.version), (json!(800), 800));

    // Load counters exact under concurrent acquire and release.
    let mut handles = Vec::new();
    for i in 0..16 {
        let store = Arc::clone(&store);
        handles.push(tokio::spawn(async move {
            let agent = format!("busy{}", i % 4);
            for _ in 0..50 {
                store.acquire(&agent).await.expect("acquire");
            }
            for _ in 0..30 {
                store.release(&agent).await.expect("release");
            }
        }));
    }
    for h in handles {
        h.await.expect("joins");
    }
    let agents: Vec<String> = (0..4).map(|i| format!("busy{i}")).collect();
    let loads = store.loads(Some(&agents)).await.expect("loads");
    assert!(loads.values().all(|&n| n == 4 * 20), "{loads:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_memory_backend_keeps_the_contract() {
    contract(Arc::new(MemoryStore::new())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_redis_backend_keeps_the_contract() {
    let Some(server) = RedisServer::start() else { return };
    let store = RedisStore::open(&server.url(), &namespace()).expect("opens");
    contract(Arc::new(store)).await;
}

#[tokio::test]
async fn the_redis_backend_reloads_its_scripts_after_a_script_flush() {
    let Some(server) = RedisServer::start() else { return };
    let store = RedisStore::open(&server.url(), &namespace()).expect("opens");
    assert!(store.compare_and_set("k", 0, &json!(1)).await.expect("cas").applied);
    assert!(server.command(&["SCRIPT", "FLUSH"]).starts_with("+OK"));
    assert!(
        store
            .compare_and_set("k", 1, &json!(2))
            .await
            .expect("cas after flush")
            .applied
    );
}

#[tokio::test]
async fn namespaces_keep_stores_apart() {
    let Some(server) = RedisServer::start() else { return };
    let a = RedisStore::open(&server.url(), "alpha").expect("opens");
    let b = RedisStore::open(&server.url(), "beta").expect("opens");
    assert!(a.compare_and_set("k", 0, &json!("a")).await.expect("cas").applied);
    assert!(b.compare_and_set("k", 0, &json!("b")).await.expect("cas").applied);
    assert_eq!(a.get("k").await.expect("get").value, json!("a"));
    assert!(server.command(&["EXISTS", "alpha:kv:k"]).starts_with(":1"));
}

/// The child side of the multi-process race: claims every key it can, prints what it got.
#[tokio::test]
async fn claim_worker() {
    let Ok(url) = std::env::var("ORCH_CLAIM_URL") else {
        return;
    };
    let ns = std::env::var("ORCH_CLAIM_NS").expect("namespace");
    let me = std::env::var("ORCH_CLAIM_NAME").expect("name");
    let keys: usize = std::env::var("ORCH_CLAIM_KEYS")
        .expect("keys")
        .parse()
        .expect("a number");
    let offset: usize = std::env::var("ORCH_CLAIM_OFFSET")
        .expect("offset")
        .parse()
        .expect("a number");
    let naive = std::env::var("ORCH_CLAIM_MODE").is_ok_and(|m| m == "naive");
    let store = RedisStore::open(&url, &ns).expect("opens");
    let mut raw = common::RawConnection::open(common::port_of(&url));
    // Wait for the start signal so that every process races at once.
    while store.get("start").await.expect("get").version == 0 {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let mut claimed = Vec::new();
    for i in 0..keys {
        let key = format!("claim/{}", (i + offset) % keys);
        if naive {
            // Read, then write blindly if it looked free: the claim the scripts replace.
            if store.get(&key).await.expect("get").version == 0 {
                let reply = raw.simple(&["HSET", &format!("{ns}:kv:{key}"), "v", "1", "d", &json!(me).to_string()]);
                assert!(reply.starts_with(':'), "{reply}");
                claimed.push(key);
            }
        } else if store.compare_and_set(&key, 0, &json!(me)).await.expect("cas").applied {
            claimed.push(key);
        }
    }
    println!("CLAIMED {}", serde_json::to_string(&claimed).expect("encodes"));
}

const RACE_KEYS: usize = 2_000;

/// Runs four claim workers at once against `server`; returns each one's claimed keys.
async fn race(server: &RedisServer, ns: &str, naive: bool) -> Vec<Vec<String>> {
    const PROCESSES: usize = 4;
    let exe = std::env::current_exe().expect("test binary");
    let children: Vec<_> = (0..PROCESSES)
        .map(|p| {
            let child = std::process::Command::new(&exe)
                .args(["claim_worker", "--exact", "--nocapture", "--test-threads=1"])
                .env("ORCH_CLAIM_URL", server.url())
                .env("ORCH_CLAIM_NS", ns)
                .env("ORCH_CLAIM_NAME", format!("p{p}"))
                .env("ORCH_CLAIM_KEYS", RACE_KEYS.to_string())
                .env("ORCH_CLAIM_MODE", if naive { "naive" } else { "cas" })
                // Overlapping orders: the processes contend for the same keys all the way.
                .env("ORCH_CLAIM_OFFSET", (p * 7).to_string())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .expect("spawns a worker");
            common::ChildGuard(child)
        })
        .collect();
    let store = RedisStore::open(&server.url(), ns).expect("opens");
    // Every worker polls for the start key; give them time to be up (a late one only loses
    // keys, which the assertions allow).
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        store
            .compare_and_set("start", 0, &json!(true))
            .await
            .expect("cas")
            .applied
    );

    let mut claims = Vec::new();
    for (p, mut guard) in children.into_iter().enumerate() {
        let stdout = guard.0.stdout.take().expect("stdout");
        let output = tokio::task::spawn_blocking(move || std::io::read_to_string(stdout))
            .await
            .expect("joins")
            .expect("reads");
        let status = guard.0.wait().expect("worker ends");
        assert!(status.success(), "worker {p} failed: {output}");
        let line = output
            .lines()
            .find_map(|l| l.split_once("CLAIMED ").map(|(_, claims)| claims))
            .unwrap_or_else(|| panic!("worker {p} printed no claims: {output}"));
        claims.push(serde_json::from_str(line).expect("claims parse"));
    }
    claims
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_racing_for_the_same_keys_each_claim_a_key_exactly_once() {
    let Some(server) = RedisServer::start() else { return };
    let ns = namespace();
    let claims = race(&server, &ns, false).await;
    let mut owners: BTreeMap<String, String> = BTreeMap::new();
    for (p, claimed) in claims.into_iter().enumerate() {
        for key in claimed {
            if let Some(other) = owners.insert(key.clone(), format!("p{p}")) {
                panic!("{key} claimed by both {other} and p{p}");
            }
        }
    }
    assert_eq!(owners.len(), RACE_KEYS, "every key claimed");
    let store = RedisStore::open(&server.url(), &ns).expect("opens");
    for (key, owner) in &owners {
        let stored = store.get(key).await.expect("get");
        assert_eq!((stored.value, stored.version), (json!(owner), 1), "{key}");
    }
}

/// The control, across processes: the same race with read-then-write claims hands some keys to
/// two processes (a statistical check: with four processes walking the same keys at once, a
/// run without a single double claim has not been seen; the deterministic version is below).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_racing_with_read_then_write_claim_some_keys_twice() {
    let Some(server) = RedisServer::start() else { return };
    let claims = race(&server, &namespace(), true).await;
    let total: usize = claims.iter().map(Vec::len).sum();
    let distinct: HashSet<&String> = claims.iter().flatten().collect();
    assert_eq!(distinct.len(), RACE_KEYS, "every key claimed by someone");
    assert!(
        total > RACE_KEYS,
        "read-then-write: {} keys claimed twice or more",
        total - RACE_KEYS
    );
    eprintln!(
        "read-then-write: {} of {RACE_KEYS} keys claimed more than once",
        total - RACE_KEYS
    );
}

/// The control, in one process with the interleaving forced: both claimants read "free", then
/// both write; each believes it won and one of the claims is silently lost. Compare-and-set on
/// the version read, under the same interleaving, lets exactly one win.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_then_write_loses_a_claim_where_compare_and_set_does_not() {
    let Some(server) = RedisServer::start() else { return };
    let ns = namespace();
    let store = Arc::new(RedisStore::open(&server.url(), &ns).expect("opens"));
    let barrier = Arc::new(tokio::sync::Barrier::new(2));

    let mut handles = Vec::new();
    for me in ["a", "b"] {
        let (store, barrier, port, ns) = (Arc::clone(&store), Arc::clone(&barrier), server.port, ns.clone());
        handles.push(tokio::spawn(async move {
            let seen = store.get("rtw").await.expect("get");
            barrier.wait().await;
            if seen.version == 0 {
                let key = format!("{ns}:kv:rtw");
                let value = json!(me).to_string();
                tokio::task::spawn_blocking(move || {
                    common::RawConnection::open(port).simple(&["HSET", &key, "v", "1", "d", &value])
                })
                .await
                .expect("writes");
                return Some(me);
            }
            None
        }));
    }
    let mut believers = Vec::new();
    for h in handles {
        believers.extend(h.await.expect("joins"));
    }
    let stored = store.get("rtw").await.expect("get").value;
    assert_eq!(believers.len(), 2, "read-then-write: both claimants believe they won");
    let losers: Vec<_> = believers.iter().filter(|b| json!(b) != stored).collect();
    assert_eq!(losers.len(), 1, "one believer's claim was overwritten: stored {stored}");

    let mut handles = Vec::new();
    for me in ["a", "b"] {
        let (store, barrier) = (Arc::clone(&store), Arc::clone(&barrier));
        handles.push(tokio::spawn(async move {
            let seen = store.get("cas").await.expect("get");
            barrier.wait().await;
            store
                .compare_and_set("cas", seen.version, &json!(me))
                .await
                .expect("cas")
                .applied
        }));
    }
    let mut winners = 0;
    for h in handles {
        winners += usize::from(h.await.expect("joins"));
    }
    assert_eq!(winners, 1, "compare-and-set: exactly one claimant wins");
}

/// The child side of the shared-counter test: waits for the start signal, then acquires and
/// releases load on one agent that every process shares.
#[tokio::test]
async fn load_worker() {
    let Ok(url) = std::env::var("ORCH_LOAD_URL") else {
        return;
    };
    let ns = std::env::var("ORCH_LOAD_NS").expect("namespace");
    let store = RedisStore::open(&url, &ns).expect("opens");
    while store.get("start").await.expect("get").version == 0 {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    for i in 0..400 {
        store.acquire("shared").await.expect("acquire");
        if i % 2 == 1 {
            store.release("shared").await.expect("release");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_counters_shared_by_processes_stay_exact() {
    let Some(server) = RedisServer::start() else { return };
    let ns = namespace();
    let workers: Vec<_> = (0..4)
        .map(|_| {
            common::ChildGuard(
                std::process::Command::new(std::env::current_exe().expect("test binary"))
                    .args(["load_worker", "--exact", "--test-threads=1"])
                    .env("ORCH_LOAD_URL", server.url())
                    .env("ORCH_LOAD_NS", &ns)
                    .stdout(std::process::Stdio::null())
                    .spawn()
                    .expect("spawns a worker"),
            )
        })
        .collect();
    let store = RedisStore::open(&server.url(), &ns).expect("opens");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        store
            .compare_and_set("start", 0, &json!(true))
            .await
            .expect("cas")
            .applied
    );
    for mut worker in workers {
        let status = tokio::task::spawn_blocking(move || worker.0.wait())
            .await
            .expect("joins");
        assert!(status.expect("worker ends").success());
    }
    // 4 processes x (400 acquires - 200 releases).
    assert_eq!(
        store.loads(Some(&["shared".into()])).await.expect("loads")["shared"],
        800
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_fail_fast_while_redis_is_down_and_succeed_once_it_is_back() {
    let Some(mut server) = RedisServer::start_durable() else {
        return;
    };
    let url = server.url();
    let store = Arc::new(RedisStore::open_with_timeout(&url, &namespace(), Duration::from_millis(500)).expect("opens"));

    // A writer increments a counter by compare-and-set all through the outage, counting what
    // was acknowledged and what failed in a way that leaves it unknown (the reply was lost).
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (store, stop) = (Arc::clone(&store), Arc::clone(&stop));
        tokio::spawn(async move {
            let (mut acknowledged, mut unknown, mut refused) = (0u64, 0u64, 0u64);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let Ok(current) = store.get("counter").await else {
                    refused += 1;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                };
                let next = current.value.as_u64().unwrap_or(0) + 1;
                match store.compare_and_set("counter", current.version, &json!(next)).await {
                    Ok(outcome) if outcome.applied => acknowledged += 1,
                    Ok(_) => panic!("nobody else writes the counter"),
                    Err(_) => unknown += 1,
                }
            }
            (acknowledged, unknown, refused)
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;

    server.stop();
    let started = Instant::now();
    let err = store.get("k").await.expect_err("Redis is down");
    assert!(matches!(err, StoreError::Unavailable { .. }), "{err:?}");
    assert!(err.to_string().contains(&url), "the error names the URL: {err}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "failed fast: {:?}",
        started.elapsed()
    );
    tokio::time::sleep(Duration::from_millis(300)).await;

    server.restart();
    let deadline = Instant::now() + Duration::from_secs(10);
    while let Err(e) = store.acquire("probe").await {
        assert!(
            Instant::now() < deadline,
            "still failing 10 s after Redis came back: {e}"
        );
        assert!(matches!(e, StoreError::Unavailable { .. }), "{e:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (acknowledged, unknown, refused) = writer.await.expect("writer ends");
    assert!(refused + unknown > 0, "the writer saw the outage");

    // Every acknowledged increment survived the SIGKILL (appendfsync always); the only slack is
    // a write whose reply was lost in the crash.
    let counter = store
        .get("counter")
        .await
        .expect("get")
        .value
        .as_u64()
        .expect("a number");
    eprintln!("counter {counter}: acknowledged {acknowledged}, unknown {unknown}, refused {refused}");
    assert!(
        acknowledged <= counter && counter <= acknowledged + unknown,
        "counter {counter}, acknowledged {acknowledged}, unknown {unknown}"
    );
    assert!(acknowledged > 0);
}

#[tokio::test]
async fn foreign_data_under_the_namespace_gives_errors_not_panics() {
    let Some(server) = RedisServer::start() else { return };
    let store = RedisStore::open(&server.url(), "foreign").expect("opens");
    // Another tool wrote a plain string where a versioned hash belongs, a hash whose value is
    // not JSON, a list where the load counters belong, and a non-number as a load.
    assert!(
        server
            .command(&["SET", "foreign:kv:string", "hello"])
            .starts_with("+OK")
    );
    assert!(
        server
            .command(&["HSET", "foreign:kv:notjson", "v", "3", "d", "{oops"])
            .starts_with(':')
    );
    assert!(
        server
            .command(&["HSET", "foreign:wf:w", "a", "sideways"])
            .starts_with(':')
    );
    for result in [
        store.get("string").await.map(drop),
        store.compare_and_set("string", 0, &json!(1)).await.map(drop),
        store.get("notjson").await.map(drop),
        store.workflow_progress("w").await.map(drop),
        store.update_workflow("w", "a", TaskState::Assigned).await.map(drop),
    ] {
        let err = result.expect_err("refused");
        assert!(
            matches!(err, StoreError::Backend(_) | StoreError::InvalidInput(_)),
            "{err:?}"
        );
    }
    assert!(server.command(&["HSET", "foreign:load", "a", "many"]).starts_with(':'));
    assert!(store.acquire("a").await.is_err());
    assert!(store.pick_least_loaded(&["a".into()], true).await.is_err());
    // The store still works for everything else.
    assert!(store.compare_and_set("fine", 0, &json!(1)).await.expect("cas").applied);
}

#[tokio::test]
async fn the_memory_backend_forgets_the_oldest_finished_tasks_beyond_its_limit() {
    let store = MemoryStore::with_finished_tasks_kept(3);
    for i in 0..5 {
        let id = format!("t{i}");
        for (from, to) in [
            (TaskState::Pending, TaskState::Assigned),
            (TaskState::Assigned, TaskState::Running),
            (
                TaskState::Running,
                if i % 2 == 0 { TaskState::Done } else { TaskState::Failed },
            ),
        ] {
            assert!(store.transition(&id, from, to).await.expect("moves").applied);
        }
    }
    // A task still running is never forgotten, however many finish after it.
    assert!(
        store
            .transition("busy", TaskState::Pending, TaskState::Assigned)
            .await
            .expect("moves")
            .applied
    );
    let state = |id: &'static str| {
        let store = &store;
        async move { store.get(&format!("task/{id}")).await.expect("reads").value }
    };
    assert_eq!(state("t0").await, Value::Null, "forgotten");
    assert_eq!(state("t1").await, Value::Null, "forgotten");
    assert_eq!(state("t2").await, json!("done"));
    assert_eq!(state("t3").await, json!("failed"));
    assert_eq!(state("t4").await, json!("done"));
    for i in 5..10 {
        let id = format!("t{i}");
        store
            .transition(&id, TaskState::Pending, TaskState::Assigned)
            .await
            .expect("moves");
        store
            .transition(&id, TaskState::Assigned, TaskState::Running)
            .await
            .expect("moves");
        store
            .transition(&id, TaskState::Running, TaskState::Done)
            .await
            .expect("moves");
    }
    assert_eq!(state("busy").await, json!("assigned"));
    // The newest finished tasks stay.
    assert_eq!(state("t9").await, json!("done"));
}

#[tokio::test]
async fn the_redis_backend_expires_finished_tasks_and_keeps_running_ones() {
    let Some(server) = RedisServer::start() else { return };
    let ns = namespace();
    let store = RedisStore::open(&server.url(), &ns)
        .expect("opens")
        .with_finished_task_ttl(Some(Duration::from_secs(100)));
    for (from, to) in [
        (TaskState::Pending, TaskState::Assigned),
        (TaskState::Assigned, TaskState::Running),
        (TaskState::Running, TaskState::Failed),
    ] {
        assert!(store.transition("t", from, to).await.expect("moves").applied);
    }
    let ttl = |server: &RedisServer| server.command(&["PTTL", &format!("{ns}:kv:task/t")]);
    let expiring: i64 = ttl(&server).trim_start_matches(':').trim().parse().expect("a number");
    assert!(
        (1..=100_000).contains(&expiring),
        "failed: expires ({expiring} ms left)"
    );
    // Handed back to pending for a retry: kept until it finishes again.
    assert!(
        store
            .transition("t", TaskState::Failed, TaskState::Pending)
            .await
            .expect("moves")
            .applied
    );
    assert!(ttl(&server).starts_with(":-1"), "pending again: no expiry");
    // No TTL at all when configured so.
    let forever = RedisStore::open(&server.url(), &ns)
        .expect("opens")
        .with_finished_task_ttl(None);
    for (from, to) in [
        (TaskState::Pending, TaskState::Assigned),
        (TaskState::Assigned, TaskState::Running),
        (TaskState::Running, TaskState::Done),
    ] {
        assert!(forever.transition("u", from, to).await.expect("moves").applied);
    }
    assert!(server.command(&["PTTL", &format!("{ns}:kv:task/u")]).starts_with(":-1"));
}

/// The child side of the kill test: appends its own counter value under `cas` one step at a
/// time, printing each value once Redis has acknowledged it, until it is killed.
#[tokio::test]
async fn acknowledged_writer() {
    let Ok(url) = std::env::var("ORCH_WRITER_URL") else {
        return;
    };
    let ns = std::env::var("ORCH_WRITER_NS").expect("namespace");
    let key = std::env::var("ORCH_WRITER_KEY").expect("key");
    let store = RedisStore::open(&url, &ns).expect("opens");
    let mut version = store.get(&key).await.expect("get").version;
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    loop {
        let outcome = store
            .compare_and_set(&key, version, &json!(version + 1))
            .await
            .expect("cas");
        assert!(outcome.applied, "the only writer of its key");
        version = outcome.version;
        writeln!(out, "ACK {version}").expect("writes");
        out.flush().expect("flushes");
    }
}

/// Writer processes killed with SIGKILL at random moments, 20 times over: every update Redis
/// acknowledged is there afterwards (the value is at least the last acknowledged one, and at
/// most one further: the write in flight when the process died may or may not have landed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn updates_acknowledged_before_a_writer_is_killed_are_all_present() {
    let Some(server) = RedisServer::start() else { return };
    let ns = namespace();
    let exe = std::env::current_exe().expect("test binary");
    let store = RedisStore::open(&server.url(), &ns).expect("opens");
    let mut seed = 0x2545_F491_4F6C_DD1D_u64;
    let mut last_value = 0_u64;
    for run in 0..20 {
        let key = "counter";
        let mut child = std::process::Command::new(&exe)
            .args(["acknowledged_writer", "--exact", "--nocapture", "--test-threads=1"])
            .env("ORCH_WRITER_URL", server.url())
            .env("ORCH_WRITER_NS", &ns)
            .env("ORCH_WRITER_KEY", key)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("spawns a writer");
        let stdout = child.stdout.take().expect("stdout");
        // Kill it after a random number of acknowledged writes (1 to 200), read as they come.
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let kill_after = last_value + 1 + seed % 200;
        let reader = std::thread::spawn(move || {
            use std::io::BufRead;
            // Every line up to the end of the output counts: the writer runs ahead of this
            // reader, so acknowledgements printed before the kill landed are still in the pipe.
            let mut acknowledged = 0_u64;
            let mut child = child;
            let mut killed = false;
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(n) = line.strip_prefix("ACK ") {
                    acknowledged = n.trim().parse().expect("a number");
                    if !killed && acknowledged >= kill_after {
                        child.kill().expect("SIGKILL");
                        killed = true;
                    }
                }
            }
            let _ = child.wait();
            acknowledged
        });
        let acknowledged = tokio::task::spawn_blocking(move || reader.join().expect("reader"))
            .await
            .expect("joins");
        let stored = store.get(key).await.expect("reads");
        let value = stored.value.as_u64().expect("a number");
        assert!(
            value >= acknowledged && value <= acknowledged + 1,
            "run {run}: acknowledged {acknowledged}, stored {value}"
        );
        assert!(value >= last_value, "run {run}: went back from {last_value} to {value}");
        last_value = value;
    }
}
