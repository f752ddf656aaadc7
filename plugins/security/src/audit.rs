//! `audit_logging`: an append-only, hash-chained audit log in one file.
//!
//! Each record is framed as `[length: u32 LE][crc32 of the body: u32 LE][body]`, the body being
//! the record as JSON. Records are chained: `hash = sha256(prev_hash + "\n" + body without
//! hash)`, starting from 64 zeros. An append is written whole and `sync_data`'d before it is
//! acknowledged; an append that fails part-way is taken back (the file is cut back to where it
//! was). On open, a torn last record (a short frame, or a bad checksum on the very last frame: a
//! write interrupted by a crash) is truncated away and reported (`recovered` in `verify`);
//! damage anywhere else is left in place for `verify` to find.
//!
//! `verify` reads the file back and checks every frame, every checksum, the sequence numbers
//! (0, 1, 2, ...), every link of the chain and every hash, and that the file still ends with
//! the last record this process appended: an edited, deleted, reordered or inserted record, or
//! a cut-off end, is found and located.
//!
//! # Anchoring the head
//!
//! A chain kept in the same file cannot, by itself, catch a forger who rewrites every record
//! from an edit onward (recomputing each hash), nor one who cuts records off the end between
//! two runs of the process: the result is a well-formed chain. The remedy is a copy of a
//! recent head kept somewhere else, which the log must still contain. Two ways:
//!
//! - **An anchor the embedder keeps.** Every `append` answers `{"sequence", "hash"}`; store one
//!   (in another system, a database, a signed event) and pass it back later:
//!   `{"op": "verify", "anchor": {"sequence": n, "hash": "..."}}`. `verify` then also checks
//!   that record `n` exists and carries that hash, and answers `"anchor": "matched"`,
//!   `"mismatch"` (the record was rewritten: the log was rewritten at or before `n`) or
//!   `"missing"` (the log is shorter: records were removed); either of the last two makes
//!   `valid` false with a reason. An anchor vouches for its record and, through the chain, every
//!   record before it; records after it are only as good as the chain.
//! - **A head file** (`head_file` in the `audit` table). After each append, and before the
//!   append is acknowledged, the plugin writes the new head `{"sequence", "hash"}` to that file:
//!   a temporary file in the same directory is written and synced, renamed over the head file,
//!   and the directory is synced. That costs two more syncs per append (three instead of one),
//!   so an append is several times slower on a disk where syncs dominate. If the head file
//!   cannot be written the append fails and its record is taken back out of the log. `verify`
//!   then checks the log against the file and answers `"head_file"`: `"matched"` (the log ends
//!   with the head), `"behind"` (the log holds one record past the head: a crash between the
//!   log's sync and the head file's rename, the record never acknowledged; valid), or, all
//!   invalid, `"behind"` by more than one record (records were appended behind the plugin's
//!   back), `"mismatch"` (the record at the head's sequence has another hash: the log was
//!   rewritten), `"missing"` (the log is shorter than the head says), `"absent"` or
//!   `"unreadable"`. The head file holds `{"sequence": null, "hash": <64 zeros>}` while the log
//!   is empty. When it is absent at open (first use) it is created from the log as it stands;
//!   when the log holds one record past it at open (that crash), it is moved over that record
//!   before anything is appended, so that the log is never two records ahead. `verify` reports
//!   the records the open moved the head file over, when there were any, as
//!   `head_file_adopted`: they are anchored from then on, but no earlier head vouched for them
//!   (a forger's one appended record would be adopted the same way). When the log disagrees with
//!   an existing head file at open, nothing is truncated or written: appends are refused (and
//!   the health check reports the plugin degraded) until an operator restores the log or
//!   removes the head file to accept the log as it stands. A torn last record the head file
//!   names is therefore not truncated as a crash would be: it was acknowledged, so it was
//!   damaged afterwards. A head file protects only as long as the forger cannot rewrite it too:
//!   put it on another volume, a file system the writer cannot change afterwards, or copy it
//!   off the machine; the embedder's anchor is the stronger of the two.
//!
//! File I/O is synchronous (it is short, and the syncs must complete before the answer);
//! appends are serialized by a mutex, and `verify` reads the log and the head file under the
//! same mutex so that it never sees an append half done.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";
const FRAME_HEADER: usize = 8;
/// A bound on one record, so that a corrupted length cannot make a reader allocate gigabytes.
const MAX_RECORD: usize = 1 << 20;
/// A bound on the head file (a few dozen bytes when it is what the plugin wrote).
const MAX_HEAD_FILE: u64 = 4096;

/// The `audit` table of the configuration.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AuditConfig {
    /// Where the log lives; default [`DEFAULT_AUDIT_PATH`] in the working directory.
    pub(crate) path: Option<PathBuf>,
    /// Where to keep the head (`{"sequence", "hash"}` of the last record), rewritten after
    /// every append and checked by `verify`; none by default.
    pub(crate) head_file: Option<PathBuf>,
}

impl AuditConfig {
    /// The log's path and the head file's, checked.
    pub(crate) fn paths(&self) -> Result<(PathBuf, Option<PathBuf>), String> {
        let path = self.path.clone().unwrap_or_else(|| PathBuf::from(DEFAULT_AUDIT_PATH));
        if let Some(head) = &self.head_file {
            if head.as_os_str().is_empty() || head.file_name().is_none() {
                return Err(format!("audit.head_file {head:?} does not name a file"));
            }
            if *head == path {
                return Err(format!(
                    "audit.head_file is the log itself ({}); it must be another file",
                    head.display()
                ));
            }
        }
        Ok((path, self.head_file.clone()))
    }
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

/// What the head file holds: the last record's sequence and hash (`null` and the genesis hash
/// while the log is empty).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Head {
    sequence: Option<u64>,
    hash: String,
}

/// A head the embedder kept (an `append` answer), passed back to `verify`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Anchor {
    /// The record's sequence number.
    pub(crate) sequence: u64,
    /// Its hash, 64 lower-case hex digits.
    pub(crate) hash: String,
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
    /// The file's length: where the next frame starts, and where a failed append is cut back to.
    len: u64,
    next_sequence: u64,
    head: String,
    recovery: Option<Recovery>,
}

/// The open log.
pub(crate) struct AuditLog {
    path: PathBuf,
    head_file: Option<PathBuf>,
    /// Why appends are refused: the log disagreed with its head file at open.
    blocked: Option<String>,
    /// The records at the end of the log that this process's open moved the head file over
    /// (when > 0): all of them when it created the head file, one after a crash.
    head_adopted: Option<u64>,
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
            // A frame that runs past the end is a torn last record only if nothing intact
            // follows it: a damaged length field earlier in the log would otherwise make every
            // record after it look like the tail of a torn write, and be cut away on open.
            match next_intact_frame(bytes, at + 1) {
                None => return (frames, Some((at as u64, "a frame is cut short".into()))),
                Some(next) => {
                    frames.push(Frame {
                        offset: at as u64,
                        record: Err(format!(
                            "its length field is damaged ({len} bytes announced; the next intact frame is at offset {next})"
                        )),
                    });
                    at = next;
                    continue;
                }
            }
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

/// The offset of the first whole frame at or after `from` whose checksum matches and whose body
/// is a record, if any. Only damaged logs are scanned this way.
fn next_intact_frame(bytes: &[u8], from: usize) -> Option<usize> {
    (from..bytes.len().saturating_sub(FRAME_HEADER)).find(|&at| {
        let rest = &bytes[at..];
        let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        if len == 0 || len > MAX_RECORD || rest.len() < FRAME_HEADER + len || rest[FRAME_HEADER] != b'{' {
            return false;
        }
        let crc = u32::from_le_bytes([rest[4], rest[5], rest[6], rest[7]]);
        let body = &rest[FRAME_HEADER..FRAME_HEADER + len];
        crc32fast::hash(body) == crc && serde_json::from_slice::<Record>(body).is_ok()
    })
}

/// Where a head (from the head file or an anchor) stands in the frames read back.
#[derive(Debug, PartialEq)]
enum Standing {
    /// The log ends with it.
    Last,
    /// The log holds it, then this many records more.
    Followed(u64),
    /// The record at its sequence is not it.
    Mismatch(String),
    /// The log ends before its sequence.
    Missing,
}

fn standing(frames: &[Frame], sequence: Option<u64>, hash: &str) -> Standing {
    let count = frames.len() as u64;
    let Some(sequence) = sequence else {
        if hash != GENESIS {
            return Standing::Mismatch(format!(
                "a head with no sequence must carry the genesis hash, not {hash}"
            ));
        }
        return if count == 0 {
            Standing::Last
        } else {
            Standing::Followed(count)
        };
    };
    if sequence >= count {
        return Standing::Missing;
    }
    match &frames[sequence as usize].record {
        Err(why) => Standing::Mismatch(format!("record {sequence} is damaged: {why}")),
        Ok(r) if r.body.sequence != sequence => Standing::Mismatch(format!(
            "the record in position {sequence} carries sequence {}",
            r.body.sequence
        )),
        Ok(r) if r.hash != hash => Standing::Mismatch(format!("record {sequence} has hash {}, not {hash}", r.hash)),
        Ok(_) if sequence + 1 == count => Standing::Last,
        Ok(_) => Standing::Followed(count - sequence - 1),
    }
}

/// The head file's contents: `None` when it does not exist, an error saying why when it cannot
/// be read or is not a head.
fn read_head(path: &Path) -> Result<Option<Head>, String> {
    let fail = |what: String| format!("head file {}: {what}", path.display());
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(fail(format!("cannot open: {e}"))),
    };
    let mut bytes = Vec::new();
    file.take(MAX_HEAD_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| fail(format!("cannot read: {e}")))?;
    if bytes.len() as u64 > MAX_HEAD_FILE {
        return Err(fail(format!("longer than {MAX_HEAD_FILE} bytes: not a head")));
    }
    let head: Head = serde_json::from_slice(&bytes).map_err(|e| fail(format!("not a head ({e})")))?;
    let well_formed = head.hash.len() == 64 && head.hash.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    if !well_formed {
        return Err(fail(format!(
            "its hash {:?} is not 64 lower-case hex digits",
            head.hash
        )));
    }
    Ok(Some(head))
}

fn parent_dir(path: &Path) -> &Path {
    path.parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// Makes a file's creation or renaming in `dir` durable (on Unix; elsewhere a no-op).
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        File::open(dir)?.sync_all()
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        Ok(())
    }
}

/// Replaces the head file atomically: a temporary file beside it, synced, renamed over it, and
/// the directory synced.
fn write_head(path: &Path, head: &Head) -> Result<(), String> {
    let fail = |what: &str, e: std::io::Error| format!("head file {}: {what}: {e}", path.display());
    let mut bytes = serde_json::to_vec(head).map_err(|e| e.to_string())?;
    bytes.push(b'\n');
    let mut temp_name = path.file_name().unwrap_or_default().to_owned();
    temp_name.push(".tmp");
    let temp = path.with_file_name(temp_name);
    let mut file = File::create(&temp).map_err(|e| fail("cannot create its temporary file", e))?;
    file.write_all(&bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| fail("cannot write its temporary file", e))?;
    drop(file);
    std::fs::rename(&temp, path).map_err(|e| fail("cannot rename its temporary file over it", e))?;
    sync_dir(parent_dir(path)).map_err(|e| fail("cannot sync its directory", e))
}

impl AuditLog {
    /// Opens (creating) the log at `path`, truncating a torn last record, and checks it against
    /// `head_file` (creating that when absent).
    pub(crate) fn open(path: &Path, head_file: Option<&Path>) -> Result<Self, String> {
        let fail = |what: &str, e: std::io::Error| format!("audit log {}: {what}: {e}", path.display());
        let dir = parent_dir(path);
        std::fs::create_dir_all(dir).map_err(|e| fail("cannot create its directory", e))?;
        let existed = path.exists();
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(path)
            .map_err(|e| fail("cannot open", e))?;
        if !existed {
            sync_dir(dir).map_err(|e| fail("cannot sync its directory", e))?;
        }
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(|e| fail("cannot read", e))?;
        let (frames, torn) = read_frames(&bytes);

        // Compared with the head file before anything is truncated: a torn record the head file
        // names was acknowledged, so it is evidence, not the debris of a crash.
        let mut blocked = None;
        // How many records at the end of the log the head file is to be moved over at open.
        let mut adopt = None;
        if let Some(head_path) = head_file {
            std::fs::create_dir_all(parent_dir(head_path))
                .map_err(|e| format!("head file {}: cannot create its directory: {e}", head_path.display()))?;
            match read_head(head_path) {
                Err(why) => blocked = Some(why),
                Ok(None) => adopt = Some(frames.len() as u64),
                Ok(Some(head)) => {
                    let at = head
                        .sequence
                        .map_or("the empty log".to_owned(), |s| format!("record {s}"));
                    blocked = match standing(&frames, head.sequence, &head.hash) {
                        Standing::Last => None,
                        // A crash between the log's sync and the head file's rename: caught up
                        // now, so that an append, which writes the log first, never leaves the
                        // log more than one record past the head file.
                        Standing::Followed(1) => {
                            adopt = Some(1);
                            None
                        }
                        Standing::Followed(n) => Some(format!(
                            "the log holds {n} records past its head file's {at}, which the plugin did not write"
                        )),
                        Standing::Mismatch(why) => Some(format!(
                            "the log does not match its head file's {at} ({why}): it was rewritten"
                        )),
                        Standing::Missing => Some(format!(
                            "the log ends before its head file's {at} (it holds {} intact records): records were removed",
                            frames.len()
                        )),
                    };
                }
            }
        }

        let mut len = bytes.len() as u64;
        let mut recovery = None;
        if let Some((offset, _why)) = torn.as_ref().filter(|_| blocked.is_none()) {
            file.set_len(*offset)
                .map_err(|e| fail("cannot truncate a torn record", e))?;
            file.sync_data().map_err(|e| fail("cannot sync", e))?;
            recovery = Some(Recovery {
                truncated_bytes: len - offset,
                kept_records: frames.len() as u64,
            });
            len = *offset;
        }
        let last = frames.iter().rev().find_map(|f| f.record.as_ref().ok());
        let (next_sequence, head) = match last {
            // A damaged or forged log may carry any number: the last one is never used, so that
            // `next_sequence` cannot overflow (appends are refused at it).
            Some(r) => (r.body.sequence.saturating_add(1), r.hash.clone()),
            None => (0, GENESIS.to_owned()),
        };
        if let (Some(_), Some(head_path)) = (adopt, head_file) {
            let sequence = last.map(|r| r.body.sequence);
            write_head(
                head_path,
                &Head {
                    sequence,
                    hash: head.clone(),
                },
            )?;
        }
        let head_adopted = adopt.filter(|&n| n > 0);
        Ok(Self {
            path: path.to_owned(),
            head_file: head_file.map(Path::to_owned),
            blocked,
            head_adopted,
            state: Mutex::new(State {
                file,
                len,
                next_sequence,
                head,
                recovery,
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Why appends are refused, when they are.
    pub(crate) fn blocked(&self) -> Option<&str> {
        self.blocked.as_deref()
    }

    /// Appends one record; answers with its sequence number and hash once it is on disk (and,
    /// with a head file, once the head file names it).
    pub(crate) fn append(&self, agent_id: &str, action: &str, resource: &str, outcome: &str) -> Result<Value, String> {
        if let Some(why) = &self.blocked {
            let remedy = self.head_file.as_ref().map_or(String::new(), |h| {
                format!(
                    "; restore the log, or remove the head file {} to accept the log as it stands",
                    h.display()
                )
            });
            return Err(format!(
                "audit log {}: appends refused: {why}{remedy}",
                self.path.display()
            ));
        }
        let mut state = self.lock();
        if state.next_sequence == u64::MAX {
            return Err(format!(
                "audit log {}: appends refused: it has used every sequence number; start a new log",
                self.path.display()
            ));
        }
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
        let written = state
            .file
            .write_all(&frame)
            .and_then(|()| state.file.sync_data())
            .map_err(|e| format!("audit log {}: cannot write: {e}", self.path.display()));
        let written = written.and_then(|()| match &self.head_file {
            None => Ok(()),
            Some(head_path) => write_head(
                head_path,
                &Head {
                    sequence: Some(record.body.sequence),
                    hash: record.hash.clone(),
                },
            ),
        });
        if let Err(why) = written {
            // Take the record back, so that the file holds whole frames only and the head file
            // (unchanged, or already naming this record) is not behind.
            let len = state.len;
            let taken_back = state.file.set_len(len).and_then(|()| state.file.sync_data());
            return match taken_back {
                Ok(()) => Err(format!("{why}; the record was not kept")),
                Err(e) => {
                    // The frame may be on disk whole: continue the chain after it, or the next
                    // record would not link.
                    state.len += frame.len() as u64;
                    state.next_sequence += 1;
                    state.head = record.hash.clone();
                    Err(format!(
                        "{why}; taking the record back failed too ({e}): record {} may be in the log, unacknowledged",
                        record.body.sequence
                    ))
                }
            };
        }
        state.len += frame.len() as u64;
        state.next_sequence += 1;
        state.head = record.hash.clone();
        Ok(json!({ "sequence": record.body.sequence, "hash": record.hash }))
    }

    fn read_back(&self) -> Result<Vec<u8>, String> {
        std::fs::read(&self.path).map_err(|e| format!("audit log {}: cannot read: {e}", self.path.display()))
    }

    /// Checks the whole file, and its head against `anchor` and the head file when given;
    /// answers `valid`, `records`, and where and why it is not valid.
    pub(crate) fn verify(&self, anchor: Option<&Anchor>) -> Result<Value, String> {
        // Read under the lock, so that no append is half done.
        let (head, recovery, bytes, stored_head) = {
            let state = self.lock();
            let bytes = self.read_back()?;
            let stored_head = self.head_file.as_deref().map(read_head);
            (state.head.clone(), state.recovery.clone(), bytes, stored_head)
        };
        let (frames, torn) = read_frames(&bytes);
        let mut problem = Self::chain_problem(&frames, torn, &head);
        let mut answer = json!({ "records": frames.len(), "recovered": recovery });

        if let Some(anchor) = anchor {
            let s = anchor.sequence;
            let (status, why) = match standing(&frames, Some(s), &anchor.hash) {
                Standing::Last | Standing::Followed(_) => ("matched", None),
                Standing::Mismatch(why) => (
                    "mismatch",
                    Some(format!("anchor: {why}: the log was rewritten at or before record {s}")),
                ),
                Standing::Missing => (
                    "missing",
                    Some(format!(
                        "anchor: record {s} is not in the log (it holds {} records): records were removed",
                        frames.len()
                    )),
                ),
            };
            answer["anchor"] = json!(status);
            if let (None, Some(why)) = (&problem, why) {
                problem = Some((None, why));
            }
        }

        if let (Some(stored), Some(head_path)) = (stored_head, &self.head_file) {
            let (status, why) = match stored {
                Err(why) => ("unreadable", Some(why)),
                Ok(None) => (
                    "absent",
                    Some(format!(
                        "head file {}: gone (it was there, or created, when the log was opened)",
                        head_path.display()
                    )),
                ),
                Ok(Some(stored)) => {
                    let at = stored
                        .sequence
                        .map_or("the empty log".to_owned(), |s| format!("record {s}"));
                    match standing(&frames, stored.sequence, &stored.hash) {
                        Standing::Last => ("matched", None),
                        Standing::Followed(1) => ("behind", None),
                        Standing::Followed(n) => (
                            "behind",
                            Some(format!(
                                "head file: the log holds {n} records past its {at}: records were appended behind the plugin's back"
                            )),
                        ),
                        Standing::Mismatch(why) => (
                            "mismatch",
                            Some(format!("head file: {why}: the log was rewritten at or before {at}")),
                        ),
                        Standing::Missing => (
                            "missing",
                            Some(format!(
                                "head file: the log ends before its {at} (it holds {} records): records were removed",
                                frames.len()
                            )),
                        ),
                    }
                }
            };
            answer["head_file"] = json!(status);
            if let (None, Some(why)) = (&problem, why) {
                problem = Some((None, why));
            }
        }
        if let Some(n) = self.head_adopted {
            answer["head_file_adopted"] = json!(n);
        }

        match problem {
            Some((first_bad, reason)) => {
                answer["valid"] = json!(false);
                if let Some(index) = first_bad {
                    answer["first_bad"] = json!(index);
                }
                answer["reason"] = json!(reason);
            }
            None => {
                answer["valid"] = json!(true);
                answer["head"] = json!(head);
            }
        }
        Ok(answer)
    }

    /// What is wrong with the chain itself, if anything: the first bad record's index (when one
    /// can be named) and why.
    fn chain_problem(frames: &[Frame], torn: Option<(u64, String)>, head: &str) -> Option<(Option<usize>, String)> {
        let mut prev = GENESIS;
        for (index, frame) in frames.iter().enumerate() {
            let record = match &frame.record {
                Ok(r) => r,
                Err(why) => return Some((Some(index), format!("record {index} (byte {}): {why}", frame.offset))),
            };
            if record.body.sequence != index as u64 {
                return Some((
                    Some(index),
                    format!(
                        "record {index} carries sequence {}: records were deleted, inserted or reordered",
                        record.body.sequence
                    ),
                ));
            }
            if record.body.prev_hash != prev {
                return Some((
                    Some(index),
                    format!("record {index} does not link to the record before it"),
                ));
            }
            if chain_hash(&record.body) != record.hash {
                return Some((
                    Some(index),
                    format!("record {index} was edited: its hash does not match its contents"),
                ));
            }
            prev = record.hash.as_str();
        }
        if let Some((offset, why)) = torn {
            return Some((Some(frames.len()), format!("byte {offset}: {why}")));
        }
        if prev != head {
            return Some((
                Some(frames.len()),
                format!(
                    "the log ends after record {} but later records were appended: records were removed from the end",
                    frames.len() as i64 - 1
                ),
            ));
        }
        None
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
        let log = AuditLog::open(&path, None).expect("opens");
        let a = log.append("a1", "login", "console", "ok").expect("appends");
        let b = log.append("a1", "deploy", "svc", "ok").expect("appends");
        assert_eq!((a["sequence"].as_u64(), b["sequence"].as_u64()), (Some(0), Some(1)));
        assert_eq!(log.verify(None).expect("reads")["valid"], true);
        drop(log);
        let reopened = AuditLog::open(&path, None).expect("reopens");
        assert_eq!(reopened.append("a2", "x", "y", "z").expect("appends")["sequence"], 2);
        assert_eq!(reopened.verify(None).expect("reads")["records"], 3);
    }

    #[test]
    fn a_torn_tail_is_truncated_and_reported() {
        let path = temp_log("torn");
        let log = AuditLog::open(&path, None).expect("opens");
        log.append("a", "b", "c", "d").expect("appends");
        log.append("a", "b", "c", "d").expect("appends");
        drop(log);
        let full = std::fs::metadata(&path).expect("exists").len();
        let file = OpenOptions::new().write(true).open(&path).expect("opens");
        file.set_len(full - 5).expect("truncates");
        let log = AuditLog::open(&path, None).expect("recovers");
        let report = log.verify(None).expect("reads");
        assert_eq!(report["valid"], true, "{report}");
        assert_eq!(report["records"], 1);
        assert_eq!(report["recovered"]["kept_records"], 1);
        assert_eq!(log.append("a", "b", "c", "d").expect("appends")["sequence"], 1);
    }
}
