//! The durable task queue on a real `redis-server`: consumers split the work, a consumer killed
//! mid-task (a real OS process, SIGKILL) has its tasks reclaimed by another with none lost and
//! none done twice after their ack, and poison tasks end in the dead-letter stream.

mod common;

use common::RedisServer;
use plugin_shared_state::{QueueOptions, RedisStore, StoreError, TaskQueue};
use serde_json::json;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::time::{Duration, Instant};

fn queue(server: &RedisServer, namespace: &str, options: QueueOptions) -> TaskQueue {
    RedisStore::open(&server.url(), namespace)
        .expect("opens")
        .task_queue("work", options)
        .expect("queue")
}

#[tokio::test]
async fn tasks_are_taken_once_and_stay_pending_until_acknowledged() {
    let Some(server) = RedisServer::start() else { return };
    let q = queue(&server, "basic", QueueOptions::default());
    let first = q.enqueue(&json!({"n": 1})).await.expect("enqueues");
    q.enqueue(&json!({"n": 2})).await.expect("enqueues");

    let taken = q.take("c1", 1, Duration::ZERO).await.expect("takes");
    assert_eq!(taken.tasks.len(), 1);
    assert_eq!(
        (
            taken.tasks[0].id.as_str(),
            &taken.tasks[0].task,
            taken.tasks[0].deliveries
        ),
        (first.as_str(), &json!({"n": 1}), 1)
    );
    let other = q.take("c2", 10, Duration::ZERO).await.expect("takes");
    assert_eq!(
        other.tasks.len(),
        1,
        "the first task is held by c1, not handed out again"
    );
    assert_eq!(other.tasks[0].task, json!({"n": 2}));
    assert!(q.take("c3", 10, Duration::ZERO).await.expect("takes").tasks.is_empty());

    let stats = q.stats().await.expect("stats");
    assert_eq!((stats.length, stats.pending, stats.dead), (2, 2, 0));
    assert!(q.ack(&first).await.expect("acks"));
    assert!(!q.ack(&first).await.expect("acks"), "a second ack finds nothing");
    let stats = q.stats().await.expect("stats");
    assert_eq!((stats.length, stats.pending), (1, 1));
    assert!(matches!(q.ack("not-an-id").await, Err(StoreError::InvalidInput(_))));
    assert!(matches!(
        q.take("c1", 0, Duration::ZERO).await,
        Err(StoreError::InvalidInput(_))
    ));
}

#[tokio::test]
async fn take_waits_for_work_up_to_its_bound() {
    let Some(server) = RedisServer::start() else { return };
    let q = queue(&server, "wait", QueueOptions::default());
    let started = Instant::now();
    assert!(
        q.take("c", 1, Duration::from_millis(150))
            .await
            .expect("takes")
            .tasks
            .is_empty()
    );
    assert!(started.elapsed() >= Duration::from_millis(150));
    let producer = q.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(50)).await;
        producer.enqueue(&json!("late")).await.expect("enqueues");
    });
    let taken = q.take("c", 1, Duration::from_secs(5)).await.expect("takes");
    assert_eq!(taken.tasks[0].task, json!("late"));
}

#[tokio::test]
async fn poison_tasks_move_to_the_dead_letter_stream() {
    let Some(server) = RedisServer::start() else { return };
    let options = QueueOptions::default()
        .with_claim_idle(Duration::from_millis(50))
        .with_max_deliveries(3);
    let q = queue(&server, "poison", options);
    let id = q.enqueue(&json!({"job": "always crashes"})).await.expect("enqueues");
    // Delivered three times to consumers that never ack (they "crash")...
    for delivery in 1..=3 {
        let taken = q
            .take(&format!("c{delivery}"), 1, Duration::from_secs(2))
            .await
            .expect("takes");
        assert_eq!(taken.tasks.len(), 1, "delivery {delivery}");
        assert_eq!(taken.tasks[0].deliveries, delivery);
        tokio::time::sleep(Duration::from_millis(80)).await;
    }
    // ...then it goes to the dead letters instead of a fourth consumer.
    let taken = q.take("c4", 1, Duration::ZERO).await.expect("takes");
    assert!(taken.tasks.is_empty());
    assert_eq!(taken.dead_lettered, 1);
    let dead = q.dead_letters(10).await.expect("reads");
    assert_eq!(dead.len(), 1);
    assert_eq!(
        (dead[0].source_id.as_str(), &dead[0].task, dead[0].deliveries),
        (id.as_str(), &json!({"job": "always crashes"}), 3)
    );
    assert_eq!(dead[0].last_consumer, "c3");
    let stats = q.stats().await.expect("stats");
    assert_eq!((stats.length, stats.pending, stats.dead), (0, 0, 1));
}

/// How long a consumer's tasks stay its own without an ack: long beside any stall a loaded
/// machine gives a live consumer, so that only the dead one's tasks are claimed.
const CLAIM_IDLE: Duration = Duration::from_secs(2);

/// The child side: takes tasks in batches, records each one done in a Redis list, then acks it.
/// With `ORCH_QUEUE_HANG_AFTER=n` it stops (and waits to be killed) in the middle of its
/// n-th task, holding the rest of its batch.
#[tokio::test]
async fn queue_consumer() {
    let Ok(url) = std::env::var("ORCH_QUEUE_URL") else {
        return;
    };
    let ns = std::env::var("ORCH_QUEUE_NS").expect("namespace");
    let me = std::env::var("ORCH_QUEUE_CONSUMER").expect("consumer");
    let hang_after: Option<usize> = std::env::var("ORCH_QUEUE_HANG_AFTER").ok().and_then(|v| v.parse().ok());
    let store = RedisStore::open(&url, &ns).expect("opens");
    let q = store
        .task_queue("work", QueueOptions::default().with_claim_idle(CLAIM_IDLE))
        .expect("queue");
    let mut done = 0;
    let mut idle_rounds = 0;
    // Leave only after more than CLAIM_IDLE without work, so that what a dead consumer held has
    // become claimable and been claimed.
    while idle_rounds < 2 * CLAIM_IDLE.as_millis() / 100 {
        let taken = q.take(&me, 8, Duration::from_millis(100)).await.expect("takes");
        if taken.tasks.is_empty() {
            idle_rounds += 1;
            continue;
        }
        idle_rounds = 0;
        for task in taken.tasks {
            if hang_after == Some(done) {
                println!("HANGING");
                loop {
                    std::thread::sleep(Duration::from_secs(60));
                }
            }
            // "Doing" the task: record it, then ack.
            store_done(&url, &ns, &task.task.to_string());
            assert!(q.ack(&task.id).await.expect("acks"), "acked once");
            done += 1;
        }
    }
    println!("DONE {done}");
}

/// Appends to the list of finished tasks with a raw RESP command (the store has no list API).
fn store_done(url: &str, ns: &str, task: &str) {
    use std::io::{Read, Write};
    let addr = url.trim_start_matches("redis://");
    let mut stream = std::net::TcpStream::connect(addr).expect("connects");
    let key = format!("{ns}:done");
    let request = format!(
        "*3\r\n$5\r\nRPUSH\r\n${}\r\n{key}\r\n${}\r\n{task}\r\n",
        key.len(),
        task.len()
    );
    stream.write_all(request.as_bytes()).expect("writes");
    let mut reply = [0u8; 64];
    let n = stream.read(&mut reply).expect("reads");
    assert!(
        reply[..n].starts_with(b":"),
        "RPUSH answered {:?}",
        String::from_utf8_lossy(&reply[..n])
    );
}

fn consumer(server: &RedisServer, ns: &str, name: &str, hang_after: Option<usize>) -> common::ChildGuard {
    let mut command = std::process::Command::new(std::env::current_exe().expect("test binary"));
    command
        .args(["queue_consumer", "--exact", "--nocapture", "--test-threads=1"])
        .env("ORCH_QUEUE_URL", server.url())
        .env("ORCH_QUEUE_NS", ns)
        .env("ORCH_QUEUE_CONSUMER", name)
        .stdout(std::process::Stdio::piped());
    if let Some(n) = hang_after {
        command.env("ORCH_QUEUE_HANG_AFTER", n.to_string());
    }
    common::ChildGuard(command.spawn().expect("spawns a consumer"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_killed_mid_task_loses_nothing_and_nothing_is_done_twice() {
    const TASKS: usize = 300;
    let Some(server) = RedisServer::start() else { return };
    let ns = "killed";
    let q = queue(&server, ns, QueueOptions::default());
    for n in 0..TASKS {
        q.enqueue(&json!({"n": n})).await.expect("enqueues");
    }

    // The first consumer dies in the middle of its 20th task, holding the rest of its batch.
    let mut doomed = consumer(&server, ns, "doomed", Some(20));
    let stdout = doomed.0.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let hung = tokio::task::spawn_blocking(move || lines.any(|l| l.is_ok_and(|l| l.contains("HANGING"))))
        .await
        .expect("reads");
    assert!(hung, "the doomed consumer reached its hang point");
    drop(doomed); // SIGKILL
    let held = q.stats().await.expect("stats").pending;
    assert!(held > 0, "the dead consumer held tasks when it died");

    // Two survivors share the rest, claiming what the dead one held once it has been idle.
    let survivors = [consumer(&server, ns, "s1", None), consumer(&server, ns, "s2", None)];
    let mut finished_by_survivors = 0;
    for mut child in survivors {
        let stdout = child.0.stdout.take().expect("stdout");
        let output = tokio::task::spawn_blocking(move || std::io::read_to_string(stdout))
            .await
            .expect("joins")
            .expect("reads");
        assert!(child.0.wait().expect("ends").success(), "{output}");
        let done: usize = output
            .lines()
            .find_map(|l| l.split_once("DONE ").map(|(_, n)| n.trim()))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no DONE line: {output}"));
        finished_by_survivors += done;
    }
    assert_eq!(finished_by_survivors, TASKS - 20);

    let list = server.command(&["LRANGE", &format!("{ns}:done"), "0", "-1"]);
    let mut counts: BTreeMap<u64, usize> = BTreeMap::new();
    for line in list.lines().filter(|l| l.starts_with('{')) {
        let task: serde_json::Value = serde_json::from_str(line).expect("a task");
        *counts.entry(task["n"].as_u64().expect("n")).or_default() += 1;
    }
    assert_eq!(counts.len(), TASKS, "every task was done");
    assert!(counts.values().all(|&c| c == 1), "no task done twice: {counts:?}");
    let stats = q.stats().await.expect("stats");
    assert_eq!((stats.length, stats.pending, stats.dead), (0, 0, 0));
}
