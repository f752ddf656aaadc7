//! `audit_logging`: an append-only, hash-chained audit log in one file.
//!
//! Each record is framed as `[length: u32 LE][crc32 of the body: u32 LE][body]`, the body being
//! the record as JSON. Records are chained: `hash = sha256(prev_hash + "\n" + body without
//! hash)`, starting from 64 zeros. An append is written whole and `sync_data`'d before it is
//! acknowledged. On open, a torn last record (a short frame, or a bad checksum on the very last
//! frame: a write interrupted by a crash) is truncated away and reported; damage anywhere else
//! is left in place for `verify` to find.
//!
//! `verify` reads the file back and checks every frame, every checksum, the sequence numbers
//! (0, 1, 2, ...), every link of the chain and every hash, and that the file still ends with
//! the last record this process appended: an edited, deleted, reordered or inserted record, or
//! a cut-off end, is found and located. (A forger who rewrites the whole chain from the edit
//! onward defeats any hash chain that is kept in the same file; anchoring the head hash
//! elsewhere, e.g. in the events this plugin could emit, is the remedy, and not done here.)
//!
//! File I/O is synchronous (it is short, and `sync_data` must complete before the answer);
//! appends are serialized by a mutex.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";
const FRAME_HEADER: usize = 8;
/// A bound on one record, so that a corrupted length cannot make a reader allocate gigabytes.
const MAX_RECORD: usize = 1 << 20;

/// The `audit` table of the configuration.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AuditConfig {
    /// Where the log lives; default [`DEFAULT_AUDIT_PATH`] in the working directory.
    pub(crate) path: Option<PathBuf>,
}

/// The log file used when the configuration names none.
pub const DEFAULT_AUDIT_PATH: &str = "orchestrator-audit.log";

/// The part of a record the hash covers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct RecordBody {
    sequence: u64,
    timestamp_ms: u64,
    agent_id: String,
    action: String,
    resource: String,
    outcome: String,
    prev_hash: String,
}

/// A record as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Record {
    #[serde(flatten)]
    body: RecordBody,
    hash: String,
}

fn chain_hash(body: &RecordBody) -> String {
    let mut hasher = Sha256::new();
    hasher.update(body.prev_hash.as_bytes());
    hasher.update(b"\n");
    hasher.update(serde_json::to_vec(body).unwrap_or_default());
    hasher.finalize().iter().fold(String::with_capacity(64), |mut s, b| {
        use std::fmt::Write as _;
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// What open found and repaired.
#[derive(Debug, Clone, Serialize)]
struct Recovery {
    truncated_bytes: u64,
    kept_records: u64,
}

struct State {
    file: File,
    next_sequence: u64,
    head: String,
    recovery: Option<Recovery>,
}

/// The open log.
pub(crate) struct AuditLog {
    path: PathBuf,
    state: Mutex<State>,
}

/// One frame read back: where it starts, and its record or what is wrong with it.
struct Frame {
    offset: u64,
    record: Result<Record, String>,
}

/// Splits file bytes into frames; the second value is the offset where a torn tail starts.
fn read_frames(bytes: &[u8]) -> (Vec<Frame>, Option<(u64, String)>) {
    let mut frames = Vec::new();
    let mut at = 0usize;
    while at < bytes.len() {
        let rest = &bytes[at..];
        if rest.len() < FRAME_HEADER {
            return (frames, Some((at as u64, "a frame header is cut short".into())));
        }
        let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        let crc = u32::from_le_bytes([rest[4], rest[5], rest[6], rest[7]]);
        if len > MAX_RECORD || rest.len() < FRAME_HEADER + len {
            return (frames, Some((at as u64, "a frame is cut short".into())));
        }
        let body = &rest[FRAME_HEADER..FRAME_HEADER + len];
        let is_last = at + FRAME_HEADER + len == bytes.len();
        let record = if crc32fast::hash(body) != crc {
            if is_last {
                return (frames, Some((at as u64, "the last frame's checksum is wrong".into())));
            }
            Err("its checksum does not match its contents".to_owned())
        } else {
            serde_json::from_slice::<Record>(body).map_err(|e| format!("it is not a record: {e}"))
        };
        frames.push(Frame {
            offset: at as u64,
            record,
        });
        at += FRAME_HEADER + len;
    }
    (frames, None)
}

impl AuditLog {
    /// Opens (creating) the log at `path`, truncating a torn last record.
    pub(crate) fn open(path: &Path) -> Result<Self, String> {
        let fail = |what: &str, e: std::io::Error| format!("audit log {}: {what}: {e}", path.display());
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| fail("cannot create its directory", e))?;
        }
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(path)
            .map_err(|e| fail("cannot open", e))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(|e| fail("cannot read", e))?;
        let (frames, torn) = read_frames(&bytes);
        let recovery = match torn {
            Some((offset, _why)) => {
                file.set_len(offset)
                    .map_err(|e| fail("cannot truncate a torn record", e))?;
                file.sync_data().map_err(|e| fail("cannot sync", e))?;
                Some(Recovery {
                    truncated_bytes: bytes.len() as u64 - offset,
                    kept_records: frames.len() as u64,
                })
            }
            None => None,
        };
        let last = frames.iter().rev().find_map(|f| f.record.as_ref().ok());
        let (next_sequence, head) = match last {
            Some(r) => (r.body.sequence + 1, r.hash.clone()),
            None => (0, GENESIS.to_owned()),
        };
        Ok(Self {
            path: path.to_owned(),
            state: Mutex::new(State {
                file,
                next_sequence,
                head,
                recovery,
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends one record; answers with its sequence number and hash once it is on disk.
    pub(crate) fn append(&self, agent_id: &str, action: &str, resource: &str, outcome: &str) -> Result<Value, String> {
        let mut state = self.lock();
        let body = RecordBody {
            sequence: state.next_sequence,
            timestamp_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
            agent_id: agent_id.to_owned(),
            action: action.to_owned(),
            resource: resource.to_owned(),
            outcome: outcome.to_owned(),
            prev_hash: state.head.clone(),
        };
        let hash = chain_hash(&body);
        let record = Record { body, hash };
        let json = serde_json::to_vec(&record).map_err(|e| e.to_string())?;
        if json.len() > MAX_RECORD {
            return Err(format!("the record is {} bytes; the limit is {MAX_RECORD}", json.len()));
        }
        let mut frame = Vec::with_capacity(FRAME_HEADER + json.len());
        frame.extend_from_slice(&(json.len() as u32).to_le_bytes());
        frame.extend_from_slice(&crc32fast::hash(&json).to_le_bytes());
        frame.extend_from_slice(&json);
        let io = |e: std::io::Error| format!("audit log {}: cannot write: {e}", self.path.display());
        state.file.write_all(&frame).map_err(io)?;
        state.file.sync_data().map_err(io)?;
        state.next_sequence += 1;
        state.head = record.hash.clone();
        Ok(json!({ "sequence": record.body.sequence, "hash": record.hash }))
    }

    fn read_back(&self) -> Result<Vec<u8>, String> {
        std::fs::read(&self.path).map_err(|e| format!("audit log {}: cannot read: {e}", self.path.display()))
    }

    /// Checks the whole file; answers `valid`, `records`, and where and why it is not valid.
    pub(crate) fn verify(&self) -> Result<Value, String> {
        let (head, recovery) = {
            let state = self.lock();
            (state.head.clone(), state.recovery.clone())
        };
        let bytes = self.read_back()?;
        let (frames, torn) = read_frames(&bytes);
        let invalid = |index: usize, reason: String| json!({ "valid": false, "records": frames.len(), "first_bad": index, "reason": reason, "recovered": recovery });
        let mut prev = GENESIS.to_owned();
        for (index, frame) in frames.iter().enumerate() {
            let record = match &frame.record {
                Ok(r) => r,
                Err(why) => return Ok(invalid(index, format!("record {index} (byte {}): {why}", frame.offset))),
            };
            if record.body.sequence != index as u64 {
                return Ok(invalid(
                    index,
                    format!(
                        "record {index} carries sequence {}: records were deleted, inserted or reordered",
                        record.body.sequence
                    ),
                ));
            }
            if record.body.prev_hash != prev {
                return Ok(invalid(
                    index,
                    format!("record {index} does not link to the record before it"),
                ));
            }
            if chain_hash(&record.body) != record.hash {
                return Ok(invalid(
                    index,
                    format!("record {index} was edited: its hash does not match its contents"),
                ));
            }
            prev = record.hash.clone();
        }
        if let Some((offset, why)) = torn {
            return Ok(invalid(frames.len(), format!("byte {offset}: {why}")));
        }
        if prev != head {
            return Ok(invalid(
                frames.len(),
                format!(
                    "the log ends after record {} but later records were appended: records were removed from the end",
                    frames.len() as i64 - 1
                ),
            ));
        }
        Ok(json!({ "valid": true, "records": frames.len(), "head": head, "recovered": recovery }))
    }

    /// Reads records back, oldest first: those of `agent_id` (when given) at or after
    /// `since` (milliseconds since the epoch, when given), at most `limit`, the newest kept.
    pub(crate) fn query(&self, agent_id: Option<&str>, since: Option<u64>, limit: usize) -> Result<Value, String> {
        let bytes = self.read_back()?;
        let (frames, _) = read_frames(&bytes);
        let matching: Vec<Record> = frames
            .into_iter()
            .filter_map(|f| f.record.ok())
            .filter(|r| agent_id.is_none_or(|a| r.body.agent_id == a))
            .filter(|r| since.is_none_or(|s| r.body.timestamp_ms >= s))
            .collect();
        let skip = matching.len().saturating_sub(limit);
        Ok(json!({ "records": matching[skip..] }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_log(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("orch-audit-unit-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir.join("audit.log")
    }

    #[test]
    fn appends_chain_and_verify() {
        let path = temp_log("chain");
        let log = AuditLog::open(&path).expect("opens");
        let a = log.append("a1", "login", "console", "ok").expect("appends");
        let b = log.append("a1", "deploy", "svc", "ok").expect("appends");
        assert_eq!((a["sequence"].as_u64(), b["sequence"].as_u64()), (Some(0), Some(1)));
        assert_eq!(log.verify().expect("reads")["valid"], true);
        drop(log);
        let reopened = AuditLog::open(&path).expect("reopens");
        assert_eq!(reopened.append("a2", "x", "y", "z").expect("appends")["sequence"], 2);
        assert_eq!(reopened.verify().expect("reads")["records"], 3);
    }

    #[test]
    fn a_torn_tail_is_truncated_and_reported() {
        let path = temp_log("torn");
        let log = AuditLog::open(&path).expect("opens");
        log.append("a", "b", "c", "d").expect("appends");
        log.append("a", "b", "c", "d").expect("appends");
        drop(log);
        let full = std::fs::metadata(&path).expect("exists").len();
        let file = OpenOptions::new().write(true).open(&path).expect("opens");
        file.set_len(full - 5).expect("truncates");
        let log = AuditLog::open(&path).expect("recovers");
        let report = log.verify().expect("reads");
        assert_eq!(report["valid"], true, "{report}");
        assert_eq!(report["records"], 1);
        assert_eq!(report["recovered"]["kept_records"], 1);
        assert_eq!(log.append("a", "b", "c", "d").expect("appends")["sequence"], 1);
    }
}
