//! Shared-state costs: compare-and-set in memory and on Redis over loopback, beside the Redis
//! round trip (PING, the floor: through the store, and on a plain client without the store's
//! hand-off to its I/O thread) and the naive read-then-write it replaces (two round trips, and
//! racy); then the durable queue's throughput (enqueue + take + ack) with one and with
//! two consumer processes.
//!
//! `cargo bench -p plugin-shared-state` (needs `redis-server` on the PATH; the bench starts its
//! own on a free loopback port).

#[path = "../tests/common/mod.rs"]
mod common;

use criterion::{Criterion, Throughput, criterion_group};
use plugin_shared_state::{MemoryStore, QueueOptions, RedisStore, StateStore};
use serde_json::json;
use std::hint::black_box;
use std::process::{Child, Command};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// CAS on a key whose version this loop owns: every call applies.
async fn cas_loop(store: &dyn StateStore, iters: u64) -> Duration {
    let start = Instant::now();
    let mut version = store.get("bench").await.expect("get").version;
    for i in 0..iters {
        let outcome = store.compare_and_set("bench", version, &json!(i)).await.expect("cas");
        debug_assert!(outcome.applied);
        version = outcome.version;
    }
    start.elapsed()
}

fn cas(c: &mut Criterion) {
    let rt = runtime();
    let Some(server) = common::RedisServer::start() else {
        return;
    };
    let memory = MemoryStore::new();
    let redis = RedisStore::open(&server.url(), "bench").expect("opens");
    let mut group = c.benchmark_group("cas");
    group.bench_function("memory", |b| {
        b.to_async(&rt).iter_custom(|iters| cas_loop(&memory, iters))
    });
    group.bench_function("redis_ping_floor", |b| {
        b.to_async(&rt).iter(|| async { redis.ping().await.expect("pong") })
    });
    group.bench_function("redis_cas_script", |b| {
        b.to_async(&rt).iter_custom(|iters| cas_loop(&redis, iters))
    });
    // The naive way, with a plain `redis` client on the bench's runtime (so without the store's
    // hand-off to its I/O thread): read, then write blindly what was read plus one. Two round
    // trips, and a lost update whenever another writer comes in between (see tests/contract.rs).
    let raw = rt.block_on(async {
        redis::Client::open(server.url())
            .expect("url")
            .get_multiplexed_async_connection()
            .await
            .expect("connects")
    });
    group.bench_function("redis_ping_raw_client", |b| {
        b.to_async(&rt).iter(|| {
            let mut raw = raw.clone();
            async move {
                let pong: String = redis::cmd("PING").query_async(&mut raw).await.expect("pong");
                black_box(pong)
            }
        })
    });
    group.bench_function("redis_read_then_blind_write_naive", |b| {
        b.to_async(&rt).iter(|| {
            let mut raw = raw.clone();
            async move {
                let current: Option<u64> = redis::cmd("HGET")
                    .arg("bench:naive")
                    .arg("d")
                    .query_async(&mut raw)
                    .await
                    .expect("get");
                let next = current.unwrap_or(0) + 1;
                let _: u64 = redis::cmd("HSET")
                    .arg("bench:naive")
                    .arg("d")
                    .arg(next)
                    .query_async(&mut raw)
                    .await
                    .expect("set");
                black_box(next)
            }
        })
    });
    group.finish();
}

/// The consumer side, run as a child process: takes and acks until killed.
fn consume_forever(url: &str, name: &str) -> ! {
    let rt = runtime();
    rt.block_on(async {
        let store = RedisStore::open(url, "bench").expect("opens");
        let queue = store.task_queue("work", QueueOptions::default()).expect("queue");
        loop {
            let taken = queue.take(name, 32, Duration::from_millis(50)).await.expect("takes");
            for task in taken.tasks {
                queue.ack(&task.id).await.expect("acks");
            }
        }
    })
}

fn consumers(url: &str, n: usize) -> Vec<Child> {
    (0..n)
        .map(|i| {
            Command::new(std::env::current_exe().expect("bench binary"))
                .env("ORCH_BENCH_CONSUMER", format!("{url} consumer{i}"))
                .spawn()
                .expect("spawns a consumer")
        })
        .collect()
}

fn queue(c: &mut Criterion) {
    let rt = runtime();
    let Some(server) = common::RedisServer::start() else {
        return;
    };
    let store = RedisStore::open(&server.url(), "bench").expect("opens");
    let queue = Arc::new(store.task_queue("work", QueueOptions::default()).expect("queue"));
    let mut group = c.benchmark_group("queue_enqueue_take_ack");
    group.throughput(Throughput::Elements(1));
    group.sample_size(10);
    for n in [1, 2] {
        let mut children = consumers(&server.url(), n);
        group.bench_function(format!("{n}_consumer_processes"), |b| {
            b.to_async(&rt).iter_custom(|iters| {
                let queue = Arc::clone(&queue);
                async move {
                    let start = Instant::now();
                    // Producers: 8 tasks enqueueing at once, while the consumers drain.
                    let per = iters.div_ceil(8);
                    let producers: Vec<_> = (0..8)
                        .map(|p| {
                            let queue = Arc::clone(&queue);
                            tokio::spawn(async move {
                                for i in 0..per.min(iters.saturating_sub(p * per)) {
                                    queue.enqueue(&json!({"p": p, "i": i})).await.expect("enqueues");
                                }
                            })
                        })
                        .collect();
                    for p in producers {
                        p.await.expect("joins");
                    }
                    loop {
                        let stats = queue.stats().await.expect("stats");
                        if stats.length == 0 {
                            break;
                        }
                        tokio::time::sleep(Duration::from_micros(500)).await;
                    }
                    start.elapsed()
                }
            })
        });
        for child in &mut children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
    group.finish();
}

criterion_group!(benches, cas, queue);

/// `criterion_main!`, with a first look at the environment: the bench binary is also the
/// consumer process that the queue bench spawns.
fn main() {
    if let Ok(spec) = std::env::var("ORCH_BENCH_CONSUMER") {
        let (url, name) = spec.split_once(' ').expect("url and name");
        consume_forever(url, name);
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
