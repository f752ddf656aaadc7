//! Sessions: an id, an agent, a time to live and key-value state.
//!
//! Where they live is decided once, at the first session operation: through the
//! `atomic_updates` capability when a plugin serves it (the shared-state plugin: on Redis, every
//! orchestrator process sees the same sessions), in this plugin's memory otherwise. Config
//! `store = "memory" | "shared"` forces the choice. On the shared store every change is a
//! compare-and-set on the session's key (`session/<id>`) retried on a conflict, so two processes
//! setting keys of one session at once both land; an ended or swept session is deleted on its
//! version (`atomic_updates` `delete`), and a session past its expiry is refused by every reader
//! whether or not a sweep has run. A sweep removes the expired sessions this process knows of
//! (created, read or changed here).
//!
//! Known limit: `max_sessions` bounds only the memory store, and the expired sessions of a
//! process that died stay on the shared store until another process reads them and sweeps (or
//! ends) them: `atomic_updates` has no expiry of its own.

use plugin_api::{HostHandle, IntegrationRequest, PluginError, PluginErrorKind};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

/// One session.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Session {
    pub(crate) session_id: String,
    pub(crate) agent_id: String,
    pub(crate) state: Map<String, Value>,
    pub(crate) created_at: u64,
    pub(crate) expires_at: u64,
    pub(crate) ttl_s: u64,
}

/// Where sessions are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub(crate) enum StoreChoice {
    /// Shared when `atomic_updates` is served, memory otherwise.
    #[default]
    Auto,
    Memory,
    Shared,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Resolved {
    Memory,
    Shared,
}

pub(crate) struct Sessions {
    choice: StoreChoice,
    resolved: Mutex<Option<Resolved>>,
    memory: Mutex<HashMap<String, Session>>,
    /// Shared sessions this process created or read: what its sweep looks at.
    known: Mutex<HashSet<String>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

const RETRIES: usize = 32;

fn key(session_id: &str) -> String {
    format!("session/{session_id}")
}

fn not_found(session_id: &str) -> PluginError {
    PluginError::invalid_request(format!("no session `{session_id}` (never created, ended, or expired)"))
}

/// A session read from the shared store: `None` for an absent key (or foreign data).
fn decode(value: &Value) -> Option<Session> {
    serde_json::from_value(value.clone()).ok()
}

impl Sessions {
    pub(crate) fn new(choice: StoreChoice) -> Self {
        Self {
            choice,
            resolved: Mutex::new(match choice {
                StoreChoice::Auto => None,
                StoreChoice::Memory => Some(Resolved::Memory),
                StoreChoice::Shared => Some(Resolved::Shared),
            }),
            memory: Mutex::default(),
            known: Mutex::default(),
        }
    }

    /// Where sessions live: "memory" or "shared" ("undecided" before the first operation).
    pub(crate) fn store_name(&self) -> &'static str {
        match *lock(&self.resolved) {
            None => "undecided",
            Some(Resolved::Memory) => "memory",
            Some(Resolved::Shared) => "shared",
        }
    }

    async fn atomic(host: &HostHandle, data: Value) -> Result<Value, PluginError> {
        let response = host.call(IntegrationRequest::new("atomic_updates", data)).await?;
        if response.success {
            Ok(response.data)
        } else {
            Err(PluginError::new(format!(
                "atomic_updates failed: {}",
                response.error.unwrap_or_default()
            )))
        }
    }

    async fn resolve(&self, host: &HostHandle) -> Result<Resolved, PluginError> {
        if let Some(resolved) = *lock(&self.resolved) {
            return Ok(resolved);
        }
        let resolved = match Self::atomic(host, json!({"op": "get", "key": "session/probe"})).await {
            Ok(_) => Resolved::Shared,
            Err(e) if e.kind == PluginErrorKind::Unavailable && self.choice == StoreChoice::Auto => Resolved::Memory,
            Err(e) => return Err(e),
        };
        Ok(*lock(&self.resolved).get_or_insert(resolved))
    }

    pub(crate) async fn create(&self, host: &HostHandle, session: Session) -> Result<Session, PluginError> {
        match self.resolve(host).await? {
            Resolved::Memory => {
                lock(&self.memory).insert(session.session_id.clone(), session.clone());
            }
            Resolved::Shared => {
                let answer = Self::atomic(
                    host,
                    json!({"op": "cas", "key": key(&session.session_id), "expected_version": 0, "value": session}),
                )
                .await?;
                if answer["applied"] != json!(true) {
                    return Err(PluginError::new(format!(
                        "session id `{}` is taken",
                        session.session_id
                    )));
                }
                lock(&self.known).insert(session.session_id.clone());
            }
        }
        Ok(session)
    }

    /// The live session `session_id` (refused when absent, ended or past `now_ms`).
    pub(crate) async fn get(&self, host: &HostHandle, session_id: &str, now_ms: u64) -> Result<Session, PluginError> {
        let session = match self.resolve(host).await? {
            Resolved::Memory => lock(&self.memory).get(session_id).cloned(),
            Resolved::Shared => {
                let answer = Self::atomic(host, json!({"op": "get", "key": key(session_id)})).await?;
                let session = decode(&answer["value"]);
                if session.is_some() {
                    lock(&self.known).insert(session_id.to_owned());
                }
                session
            }
        };
        match session {
            Some(s) if s.expires_at > now_ms => Ok(s),
            _ => Err(not_found(session_id)),
        }
    }

    /// Applies `change` to the live session, atomically.
    pub(crate) async fn update(
        &self,
        host: &HostHandle,
        session_id: &str,
        now_ms: u64,
        change: impl Fn(&mut Session),
    ) -> Result<Session, PluginError> {
        match self.resolve(host).await? {
            Resolved::Memory => {
                let mut sessions = lock(&self.memory);
                match sessions.get_mut(session_id) {
                    Some(s) if s.expires_at > now_ms => {
                        change(s);
                        Ok(s.clone())
                    }
                    _ => Err(not_found(session_id)),
                }
            }
            Resolved::Shared => {
                for _ in 0..RETRIES {
                    let current = Self::atomic(host, json!({"op": "get", "key": key(session_id)})).await?;
                    let mut session = match decode(&current["value"]) {
                        Some(s) if s.expires_at > now_ms => s,
                        _ => return Err(not_found(session_id)),
                    };
                    change(&mut session);
                    let answer = Self::atomic(
                        host,
                        json!({"op": "cas", "key": key(session_id), "expected_version": current["version"], "value": session}),
                    )
                    .await?;
                    if answer["applied"] == json!(true) {
                        lock(&self.known).insert(session_id.to_owned());
                        return Ok(session);
                    }
                }
                Err(PluginError::unavailable(format!(
                    "session `{session_id}` changed under {RETRIES} attempts in a row; try again"
                )))
            }
        }
    }

    /// Ends a session (refused when it is not live).
    pub(crate) async fn end(&self, host: &HostHandle, session_id: &str, now_ms: u64) -> Result<Session, PluginError> {
        match self.resolve(host).await? {
            Resolved::Memory => match lock(&self.memory).remove(session_id) {
                Some(s) if s.expires_at > now_ms => Ok(s),
                _ => Err(not_found(session_id)),
            },
            Resolved::Shared => {
                let session = self.get(host, session_id, now_ms).await?;
                if self
                    .delete_shared(host, session_id, |s| s.is_some_and(|s| s.expires_at > now_ms))
                    .await?
                {
                    Ok(session)
                } else {
                    Err(not_found(session_id))
                }
            }
        }
    }

    /// Deletes a session on the shared store, if `still` holds for what is stored when it is
    /// deleted (a sweep passes "still expired", so that a session touched by another process in
    /// between is left alone). `Ok(false)` when `still` no longer held.
    async fn delete_shared(
        &self,
        host: &HostHandle,
        session_id: &str,
        still: impl Fn(Option<&Session>) -> bool,
    ) -> Result<bool, PluginError> {
        for _ in 0..RETRIES {
            let current = Self::atomic(host, json!({"op": "get", "key": key(session_id)})).await?;
            if current["version"] == json!(0) {
                lock(&self.known).remove(session_id); // already gone
                return Ok(true);
            }
            if !still(decode(&current["value"]).as_ref()) {
                return Ok(false);
            }
            let answer = Self::atomic(
                host,
                json!({"op": "delete", "key": key(session_id), "expected_version": current["version"]}),
            )
            .await?;
            if answer["applied"] == json!(true) {
                lock(&self.known).remove(session_id);
                return Ok(true);
            }
        }
        Err(PluginError::unavailable(format!(
            "session `{session_id}` changed under {RETRIES} attempts to end it; try again"
        )))
    }

    /// Removes the sessions past `now_ms`; returns their ids.
    pub(crate) async fn sweep(&self, host: &HostHandle, now_ms: u64) -> Result<Vec<String>, PluginError> {
        let mut removed = Vec::new();
        match self.resolve(host).await? {
            Resolved::Memory => lock(&self.memory).retain(|id, s| {
                let live = s.expires_at > now_ms;
                if !live {
                    removed.push(id.clone());
                }
                live
            }),
            Resolved::Shared => {
                let known: Vec<String> = lock(&self.known).iter().cloned().collect();
                for id in known {
                    let current = Self::atomic(host, json!({"op": "get", "key": key(&id)})).await?;
                    match decode(&current["value"]) {
                        Some(s) if s.expires_at > now_ms => {}
                        _ => {
                            if self
                                .delete_shared(host, &id, |s| s.is_none_or(|s| s.expires_at <= now_ms))
                                .await?
                            {
                                removed.push(id);
                            }
                        }
                    }
                }
            }
        }
        removed.sort_unstable();
        Ok(removed)
    }

    /// Live sessions held in memory (0 on the shared store, which is not counted).
    pub(crate) fn in_memory(&self) -> usize {
        lock(&self.memory).len()
    }
}
