//! What the audit tests share: the log's documented frame format, read and written by hand (as
//! a forger or an auditor would), an orchestrator with only the security plugin, and a seeded
//! generator.

#![allow(dead_code)]

use orchestrator_core::{Orchestrator, OrchestratorError};
use plugin_api::IntegrationRequest;
use plugin_security::SecurityIntegrationPlugin;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

pub(crate) const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The part of a record the hash covers, in the plugin's field order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Body {
    pub(crate) sequence: u64,
    pub(crate) timestamp_ms: u64,
    pub(crate) agent_id: String,
    pub(crate) action: String,
    pub(crate) resource: String,
    pub(crate) outcome: String,
    pub(crate) prev_hash: String,
}

/// A record as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Record {
    #[serde(flatten)]
    pub(crate) body: Body,
    pub(crate) hash: String,
}

/// `sha256(prev_hash + "\n" + body)`, hex.
pub(crate) fn chain_hash(body: &Body) -> String {
    let mut hasher = Sha256::new();
    hasher.update(body.prev_hash.as_bytes());
    hasher.update(b"\n");
    hasher.update(serde_json::to_vec(body).expect("json"));
    hasher.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// `[len u32 LE][crc32 u32 LE][json]`.
pub(crate) fn frame(record: &Record) -> Vec<u8> {
    let json = serde_json::to_vec(record).expect("json");
    let mut out = (json.len() as u32).to_le_bytes().to_vec();
    out.extend_from_slice(&crc32fast::hash(&json).to_le_bytes());
    out.extend_from_slice(&json);
    out
}

/// A log file read by hand.
#[derive(Debug)]
pub(crate) struct Parsed {
    pub(crate) records: Vec<Record>,
    /// Where each frame starts.
    pub(crate) starts: Vec<usize>,
    /// Where the intact frames end; beyond is a torn tail (a short header, a short frame, or a
    /// last frame whose checksum is wrong: the rules the plugin truncates by).
    pub(crate) intact_len: usize,
}

/// Reads frames by hand; panics on damage other than a torn tail (a bad checksum in the middle
/// of the file, a frame that is not a record).
pub(crate) fn parse(bytes: &[u8]) -> Parsed {
    let mut parsed = Parsed {
        records: Vec::new(),
        starts: Vec::new(),
        intact_len: 0,
    };
    let mut at = 0;
    while at < bytes.len() {
        let rest = &bytes[at..];
        if rest.len() < 8 {
            break;
        }
        let len = u32::from_le_bytes(rest[..4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(rest[4..8].try_into().expect("4 bytes"));
        if len > 1 << 20 || rest.len() < 8 + len {
            break;
        }
        let body = &rest[8..8 + len];
        if crc32fast::hash(body) != crc {
            assert_eq!(
                at + 8 + len,
                bytes.len(),
                "a bad checksum at byte {at}, not in the last frame"
            );
            break;
        }
        let record: Record = serde_json::from_slice(body).unwrap_or_else(|e| panic!("frame at byte {at}: {e}"));
        parsed.records.push(record);
        parsed.starts.push(at);
        at += 8 + len;
        parsed.intact_len = at;
    }
    parsed
}

/// What a forger who knows the format does: keeps records `..k`, lets `edit` change record
/// `k`, keeps `keep` records in all (`None`: as many as there were), and recomputes the chain from
/// `k` on, so that the result is a well-formed log.
pub(crate) fn rewrite_from(bytes: &[u8], k: usize, keep: Option<usize>, edit: impl FnOnce(&mut Body)) -> Vec<u8> {
    let parsed = parse(bytes);
    assert_eq!(parsed.intact_len, bytes.len(), "rewrite an intact log");
    let keep = keep.unwrap_or(parsed.records.len());
    assert!(k < keep && keep <= parsed.records.len());
    let mut out = bytes[..parsed.starts[k]].to_vec();
    let mut prev = if k == 0 {
        GENESIS.to_owned()
    } else {
        parsed.records[k - 1].hash.clone()
    };
    let mut edit = Some(edit);
    for record in &parsed.records[k..keep] {
        let mut body = record.body.clone();
        if let Some(edit) = edit.take() {
            edit(&mut body);
        }
        body.prev_hash = prev;
        let hash = chain_hash(&body);
        prev = hash.clone();
        out.extend_from_slice(&frame(&Record { body, hash }));
    }
    out
}

/// A fresh directory for one test.
pub(crate) fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("orch-audit-it-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// The security plugin's configuration for a log at `log`, with a head file when given.
pub(crate) fn audit_config(log: &Path, head_file: Option<&Path>) -> Value {
    match head_file {
        Some(head) => json!({"audit": {"path": log, "head_file": head}}),
        None => json!({"audit": {"path": log}}),
    }
}

/// An orchestrator with only the security plugin.
pub(crate) async fn orchestrator(config: Value) -> Result<Orchestrator, OrchestratorError> {
    Orchestrator::builder()
        .legacy_mode(false)
        .plugin(SecurityIntegrationPlugin::default())
        .configure("SecurityIntegrationPlugin", config)
        .build()
        .await
}

/// `audit_logging` with `data`; the plugin's answer, or the error.
pub(crate) async fn audit(orch: &Orchestrator, data: Value) -> Result<Value, OrchestratorError> {
    orch.execute(IntegrationRequest::new("audit_logging", data))
        .await
        .map(|r| {
            assert!(r.success, "{r:?}");
            r.data
        })
}

/// Appends one record; its answer `{"sequence", "hash"}`.
pub(crate) async fn append(orch: &Orchestrator, resource: &str) -> Value {
    audit(
        orch,
        json!({"agent_id": "agent-7", "action": "deploy", "resource": resource, "outcome": "ok"}),
    )
    .await
    .expect("appends")
}

/// `verify`, with `anchor` when given.
pub(crate) async fn verify(orch: &Orchestrator, anchor: Option<&Value>) -> Value {
    let request = match anchor {
        Some(anchor) => json!({"op": "verify", "anchor": anchor}),
        None => json!({"op": "verify"}),
    };
    audit(orch, request).await.expect("verifies")
}

/// splitmix64: a small seeded generator, so that a failing run can be replayed.
pub(crate) fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}
