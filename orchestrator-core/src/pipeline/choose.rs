//! Who takes a task: the eligible agents, the router's ranking and the balancer's pick among the
//! best, a slot taken with a compare-and-swap, or a place in the queue.

use super::Run;
use super::queue::{Waiter, release_slot};
use crate::agents::AgentEntry;
use crate::error::TaskError;
use crate::orchestrator::Inner;
use crate::task::{PipelineStep, StepOutcome, Task};
use crate::{AgentId, AgentStatus};
use serde_json::json;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::oneshot;

/// The agents that could take the task (registered, not offline, every required capability,
/// none of `avoid` unless nothing else is left), split by whether they have a free slot.
pub(super) fn eligible(inner: &Inner, task: &Task, avoid: &[AgentId]) -> (Vec<Arc<AgentEntry>>, usize) {
    let mut with_room = Vec::new();
    let mut eligible = 0;
    let mut avoided = Vec::new();
    inner.agents.for_each_arc(|entry| {
        if entry.status() == AgentStatus::Offline || !task.required_capabilities.iter().all(|c| entry.has_capability(c))
        {
            return;
        }
        if avoid.contains(&entry.id) {
            avoided.push(Arc::clone(entry));
            return;
        }
        eligible += 1;
        if entry.load() < entry.capacity {
            with_room.push(Arc::clone(entry));
        }
    });
    if eligible == 0 && !avoided.is_empty() {
        // Every agent that fits failed before: better one of them than none.
        eligible = avoided.len();
        with_room = avoided.into_iter().filter(|e| e.load() < e.capacity).collect();
    }
    with_room.sort_unstable_by(|a, b| a.id.cmp(&b.id));
    (with_room, eligible)
}

/// Routes, balances and takes a slot; waits in the queue when every eligible agent is full.
pub(super) async fn choose_agent(run: &mut Run<'_>, avoid: &[AgentId]) -> Result<Arc<AgentEntry>, TaskError> {
    let inner = run.inner;
    let task = run.task;
    for _ in 0..8 {
        let (mut with_room, eligible_count) = eligible(inner, task, avoid);
        if eligible_count == 0 {
            return Err(no_eligible_agent(inner, task));
        }
        if with_room.is_empty() {
            return wait_for_slot(run, avoid).await;
        }
        let picked = pick(run, &with_room).await;
        // The pick, else the others in order: someone may have taken its last slot meanwhile.
        if let Some(i) = with_room.iter().position(|e| e.id == picked) {
            with_room.swap(0, i);
        }
        if let Some(entry) = with_room.into_iter().find(|e| e.try_begin_task()) {
            return Ok(entry);
        }
    }
    wait_for_slot(run, avoid).await
}

pub(super) fn no_eligible_agent(inner: &Inner, task: &Task) -> TaskError {
    let mut capable = 0;
    inner
        .agents
        .for_each_arc(|e| capable += usize::from(task.required_capabilities.iter().all(|c| e.has_capability(c))));
    let reason = if inner.agents.len() == 0 {
        "no agent is registered; register one first".to_owned()
    } else if capable == 0 {
        format!(
            "no registered agent has every required capability ({}); register one that does",
            task.required_capabilities.join(", ")
        )
    } else {
        format!("the {capable} agent(s) that have the required capabilities are all offline")
    };
    TaskError::NoEligibleAgent {
        task: task.id.clone(),
        reason,
    }
}

/// Asks the router to rank the candidates and the balancer to choose among the best; the
/// chosen agent's id (the first candidate when neither can answer).
pub(super) async fn pick(run: &mut Run<'_>, with_room: &[Arc<AgentEntry>]) -> AgentId {
    let task = run.task;
    let candidates: Vec<&str> = with_room.iter().map(|e| e.id.as_str()).collect();
    let fallback = with_room[0].id.clone();
    if candidates.len() == 1 {
        run.skipped(PipelineStep::Route, "one candidate has room");
        run.skipped(PipelineStep::Balance, "one candidate has room");
        return fallback;
    }
    let routed = run
        .step(
            PipelineStep::Route,
            "semantic_routing",
            json!({
                "task": {"id": task.id, "description": task.description, "required_capabilities": task.required_capabilities},
                "available_agents": candidates,
                // Only the picks the balancer may choose among are read.
                "ranking_len": run.inner.pipeline.balance_among.clamp(1, 10),
            }),
        )
        .await;
    let Some(routed) = routed else {
        run.skipped(PipelineStep::Balance, "no ranking to balance");
        return fallback;
    };
    let in_room = |id: &str| with_room.iter().find(|e| e.id.as_str() == id).map(|e| e.id.clone());
    let routed_pick = routed["selected_agent"].as_str().and_then(in_room);
    let ranking: Vec<(&str, f64)> = routed["ranking"]
        .as_array()
        .map(|r| {
            r.iter()
                .filter_map(|e| Some((e["agent_id"].as_str()?, e["score"].as_f64().unwrap_or(0.0))))
                .filter(|(id, _)| in_room(id).is_some())
                .collect()
        })
        .unwrap_or_default();
    let best = ranking
        .iter()
        .map(|(_, score)| *score)
        .fold(f64::NEG_INFINITY, f64::max);
    let margin = run.inner.pipeline.balance_within;
    let mut top: Vec<&str> = ranking
        .iter()
        .filter(|(_, score)| *score >= best - margin)
        .map(|(id, _)| *id)
        .collect();
    top.truncate(run.inner.pipeline.balance_among);
    if top.len() < 2 {
        run.skipped(PipelineStep::Balance, "one pick stands out in the ranking");
        return routed_pick.unwrap_or(fallback);
    }
    let balanced = if run.served("adaptive_balancing") {
        run.step(
            PipelineStep::Balance,
            "adaptive_balancing",
            json!({"op": "pick", "available_agents": top}),
        )
        .await
    } else {
        run.step(
            PipelineStep::Balance,
            "real_time_balancing",
            json!({"op": "pick", "available_agents": top}),
        )
        .await
    };
    balanced
        .and_then(|b| b["selected_agent"].as_str().and_then(in_room))
        .or(routed_pick)
        .unwrap_or(fallback)
}

/// Waits in the queue for a slot on an eligible agent.
pub(super) async fn wait_for_slot(run: &mut Run<'_>, avoid: &[AgentId]) -> Result<Arc<AgentEntry>, TaskError> {
    let inner = run.inner;
    let task = run.task;
    let since = Instant::now();
    let queue = &inner.waiting;
    let (tx, mut rx) = oneshot::channel();
    let waiter = Waiter {
        required: task.required_capabilities.clone(),
        avoid: avoid.to_vec(),
        slot: tx,
    };
    let place = queue
        .join(task.priority, waiter, inner.pipeline.max_queued)
        .map_err(|queued| TaskError::QueueFull {
            task: task.id.clone(),
            queued,
        })?;
    // A slot may have been freed between the look and the queueing: look again.
    let (with_room, eligible_count) = eligible(inner, task, avoid);
    if eligible_count == 0 {
        return Err(no_eligible_agent(inner, task));
    }
    if let Some(entry) = with_room.into_iter().find(|e| e.try_begin_task()) {
        if place.leave() {
            run.trace(
                PipelineStep::Queue,
                "host",
                since,
                StepOutcome::Done,
                Some("a slot freed as the task queued".into()),
            );
            return Ok(entry);
        }
        // A slot was sent to us meanwhile: keep that one, give this one back.
        release_slot(inner, &entry);
    }
    let received = match run.remaining() {
        Some(left) => match tokio::time::timeout(left, &mut rx).await {
            Ok(received) => received.ok(),
            Err(_elapsed) => {
                if place.leave() {
                    run.trace(
                        PipelineStep::Queue,
                        "host",
                        since,
                        StepOutcome::Failed,
                        Some("deadline".into()),
                    );
                    return Err(run.deadline_passed("waiting for a free agent"));
                }
                rx.try_recv().ok()
            }
        },
        None => (&mut rx).await.ok(),
    };
    drop(place);
    let Some(entry) = received else {
        // The queue dropped us without a slot: cannot happen while we hold our place.
        return Err(run.deadline_passed("waiting for a free agent"));
    };
    run.trace(
        PipelineStep::Queue,
        "host",
        since,
        StepOutcome::Done,
        Some(format!("waited for a slot on `{}`", entry.id)),
    );
    run.skipped(PipelineStep::Route, "the first agent freed took the task");
    run.skipped(PipelineStep::Balance, "the first agent freed took the task");
    Ok(entry)
}
