//! `SecurityIntegrationPlugin`: bearer-token authentication, role-based access control and a
//! tamper-evident audit log for `orchestrator`. For applications that embed the orchestrator
//! (statically, or as a dynamic library built from this crate).
//!
//! # Capabilities
//!
//! **`oauth_auth`**: verifies a bearer JWT.
//! - request: `{"token": string (a "Bearer " prefix is accepted), "required_scopes"?: [string]}`
//! - response: `{"authenticated": true, "subject", "scopes": [..], "expires_at": unix seconds}`, or
//!   `{"authenticated": false, "reason"}` for any token that is refused: bad signature, an
//!   algorithm that no configured key allows (`none` included), expired, not yet valid, wrong or
//!   missing issuer or audience when configured, `exp` missing or not a number, malformed, or a
//!   required scope missing. Scopes come from the OAuth 2 `scope` claim (space separated) and/or
//!   an `scp` array.
//!
//! **`rbac_enforcement`**: decides whether roles allow an action on a resource.
//! - request: `{"subject": string}` (roles from configuration) or `{"roles": [string]}`, with
//!   `"resource"` and `"action"`
//! - response: `{"allowed": bool, "rule": "role operator allows agents:*" | "deny by default: ..."}`
//!
//! **`audit_logging`**: an append-only, hash-chained log on disk (see the `audit` module docs).
//! - `{"op": "append" (default), "agent_id", "action", "resource", "outcome"?}` ->
//!   `{"sequence", "hash"}` once the record is on disk (and, with a `head_file`, once the head
//!   file names it)
//! - `{"op": "verify", "anchor"?: {"sequence", "hash"}}` -> `{"valid", "records", "first_bad"?,
//!   "reason"?, "recovered"?, "anchor"?, "head_file"?, "head_file_adopted"?}` (see below)
//! - `{"op": "query", "agent_id"?, "since"? (ms since the epoch), "limit"? (100)}` -> `{"records": [..]}`
//!
//! Malformed requests (a missing or mistyped field, an unknown `op`, an `anchor` that is not
//! `{"sequence": non-negative integer, "hash": 64 hex digits}`) are refused with
//! `PluginError::invalid_request`, saying what was expected.
//!
//! # The audit log: crashes, tampering, anchors
//!
//! Records are framed (`[length u32 LE][crc32 u32 LE][JSON]`) and chained (`hash =
//! sha256(prev_hash + "\n" + record without hash)`); an append is synced (`sync_data`) before it
//! is answered. After a crash, the next open truncates a torn last record (a short frame, or a
//! bad checksum on the last frame) and `verify` reports it as `"recovered": {"truncated_bytes",
//! "kept_records"}`; every answered append survives. `verify` finds and locates (`first_bad`) an
//! edited, deleted, inserted or reordered record.
//!
//! A chain kept in the same file cannot catch a forger who rewrites every record from an edit
//! onward with recomputed hashes, or who cuts records off the end while the plugin is not
//! running: the result is a well-formed log. Anchoring the head elsewhere does:
//!
//! - **`anchor` in `verify`**: pass back an `append` answer kept elsewhere. The record at its
//!   `sequence` must be in the log with its `hash`: `"anchor": "matched"`, or `"mismatch"` (the
//!   log was rewritten at or before it) or `"missing"` (records were removed), either making
//!   `valid` false with a `reason`. An anchor vouches for its record and every record before it.
//! - **`head_file`** (configuration): after every append, before answering, the plugin replaces
//!   that file with the new head `{"sequence", "hash"}` (temporary file, sync, rename, directory
//!   sync: three syncs per append instead of one); an append whose head file cannot be written
//!   is taken back out of the log and refused. `verify` checks the log against the file:
//!   `"head_file": "matched"`, `"behind"` (one record past it, from a crash between the two
//!   writes: valid), or, invalid, `"behind"` by more, `"mismatch"`, `"missing"`, `"absent"`,
//!   `"unreadable"`. An absent head file is created at open from the log as it stands, and a head
//!   file one record behind (that crash) is moved over the record; `"head_file_adopted": n` says
//!   how many records an open anchored that no earlier head vouched for. When the log disagrees
//!   with its head file at open, nothing is truncated or rewritten, appends are refused and the
//!   health check says degraded, until an operator restores the log or removes the head file. A
//!   head file helps only where the forger cannot rewrite it too (another volume, write-once
//!   storage, a copy shipped off the machine); the embedder's anchor is the stronger of the two.
//!
//! # Configuration
//!
//! ```toml
//! [SecurityIntegrationPlugin.jwt]
//! hs256_secret = "at least sixteen bytes"   # each key allows only its own algorithm
//! rs256_public_key_pem = "-----BEGIN PUBLIC KEY-----..."
//! es256_public_key_pem = "-----BEGIN PUBLIC KEY-----..."
//! issuer = "https://issuer.example"         # when set, required in every token
//! audience = "orchestrator"                 # when set, required in every token
//! leeway_s = 30                             # clock skew allowed on exp and nbf (default 30, at most 86400)
//!
//! [SecurityIntegrationPlugin.audit]
//! path = "var/audit.log"                    # default: orchestrator-audit.log in the working directory,
//!                                           # opened on first use
//! head_file = "/mnt/other/audit.head"       # optional, off by default: the head {"sequence", "hash"}
//!                                           # rewritten (temp file, sync, rename, directory sync)
//!                                           # after every append and checked by verify, so that a
//!                                           # rewrite of the log's whole tail is found. It costs two
//!                                           # more syncs per append (three instead of one). Created
//!                                           # when absent; keep it where the log's writer cannot
//!                                           # rewrite it afterwards. Must not be the log itself.
//!
//! [SecurityIntegrationPlugin.rbac.roles.viewer]
//! allow = ["agents:read"]                   # "resource:action"; `*` on either side
//! [SecurityIntegrationPlugin.rbac.roles.operator]
//! inherits = ["viewer"]
//! allow = ["tasks:submit", "agents:*"]
//! [SecurityIntegrationPlugin.rbac.subjects]
//! alice = ["operator"]
//! ```
//!
//! An unknown key anywhere is an error at initialization that names it; so are an unreadable
//! PEM key, a secret shorter than 16 bytes, a malformed permission, an unknown role, an
//! inheritance cycle and a `head_file` that is the log itself. With no JWT key configured, every
//! token is refused, saying so. When the log disagrees with its head file at open (it was
//! rewritten or cut short), appends are refused with a reason and the health check reports the
//! plugin degraded, until an operator restores the log or removes the head file.

mod audit;
mod jwt;
mod rbac;

pub use audit::DEFAULT_AUDIT_PATH;

use audit::{Anchor, AuditConfig, AuditLog};
use jwt::{JwtConfig, JwtVerifier};
use plugin_api::prelude::*;
use rbac::{Rbac, RbacConfig};
use serde::Deserialize;
use serde_json::Value;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock, RwLock};

/// The plugin's name.
pub const NAME: &str = "SecurityIntegrationPlugin";

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SecurityConfig {
    #[serde(default)]
    jwt: JwtConfig,
    #[serde(default)]
    rbac: RbacConfig,
    #[serde(default)]
    audit: AuditConfig,
}

struct Security {
    jwt: JwtVerifier,
    rbac: Rbac,
    audit_path: PathBuf,
    audit_head_file: Option<PathBuf>,
    audit: OnceLock<Result<AuditLog, String>>,
}

impl Security {
    fn audit(&self) -> Result<&AuditLog, PluginError> {
        self.audit
            .get_or_init(|| AuditLog::open(&self.audit_path, self.audit_head_file.as_deref()))
            .as_ref()
            .map_err(|e| PluginError::new(e.clone()))
    }
}

/// JWT authentication, RBAC and the audit log. Configure it before `initialize` (through the
/// orchestrator's `configure` or configuration file); until then it answers "unavailable".
#[derive(Default)]
pub struct SecurityIntegrationPlugin {
    state: RwLock<Option<Arc<Security>>>,
}

impl std::fmt::Debug for SecurityIntegrationPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecurityIntegrationPlugin").finish_non_exhaustive()
    }
}

fn string_field<'a>(data: &'a Value, field: &str, expected: &str) -> Result<&'a str, PluginError> {
    data.get(field)
        .and_then(Value::as_str)
        .ok_or_else(|| PluginError::invalid_request(format!("missing or non-string `{field}`; expected {expected}")))
}

impl SecurityIntegrationPlugin {
    fn security(&self) -> Result<Arc<Security>, PluginError> {
        self.state
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(|| PluginError::unavailable("SecurityIntegrationPlugin is not initialized"))
    }

    fn oauth_auth(security: &Security, data: &Value) -> Result<Value, PluginError> {
        const EXPECTED: &str = "{\"token\": string, \"required_scopes\"?: [string]}";
        let token = string_field(data, "token", EXPECTED)?;
        let token = token.strip_prefix("Bearer ").unwrap_or(token).trim();
        let required: Vec<String> = match data.get("required_scopes") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| v.as_str().map(str::to_owned))
                .collect::<Option<_>>()
                .ok_or_else(|| {
                    PluginError::invalid_request(format!("`required_scopes` must hold strings; expected {EXPECTED}"))
                })?,
            Some(_) => {
                return Err(PluginError::invalid_request(format!(
                    "`required_scopes` must be a list; expected {EXPECTED}"
                )));
            }
        };
        Ok(security.jwt.verify(token, &required))
    }

    /// The `anchor` of a `verify` request: an `append` answer, `{"sequence", "hash"}`.
    fn anchor(data: &Value) -> Result<Option<Anchor>, PluginError> {
        const EXPECTED: &str = "{\"sequence\": non-negative integer, \"hash\": 64 hex digits} (an `append` answer)";
        let anchor = match data.get("anchor") {
            None | Some(Value::Null) => return Ok(None),
            Some(Value::Object(anchor)) => anchor,
            Some(other) => {
                return Err(PluginError::invalid_request(format!(
                    "`anchor` must be an object, not {other}; expected {EXPECTED}"
                )));
            }
        };
        let sequence = anchor.get("sequence").and_then(Value::as_u64).ok_or_else(|| {
            PluginError::invalid_request(format!("missing or mistyped `anchor.sequence`; expected {EXPECTED}"))
        })?;
        let hash = anchor
            .get("hash")
            .and_then(Value::as_str)
            .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
            .ok_or_else(|| {
                PluginError::invalid_request(format!("missing or malformed `anchor.hash`; expected {EXPECTED}"))
            })?;
        Ok(Some(Anchor {
            sequence,
            hash: hash.to_ascii_lowercase(),
        }))
    }

    fn audit_logging(security: &Security, data: &Value) -> Result<Value, PluginError> {
        const EXPECTED: &str = "{\"agent_id\", \"action\", \"resource\", \"outcome\"?} (strings), or {\"op\": \"verify\", \"anchor\"?: {\"sequence\", \"hash\"}}, or {\"op\": \"query\", \"agent_id\"?, \"since\"?, \"limit\"?}";
        let op = match data.get("op") {
            None => "append",
            Some(Value::String(op)) => op.as_str(),
            Some(_) => {
                return Err(PluginError::invalid_request(format!(
                    "`op` must be a string; expected {EXPECTED}"
                )));
            }
        };
        let log = security.audit()?;
        let result = match op {
            "append" => {
                let agent = string_field(data, "agent_id", EXPECTED)?;
                let action = string_field(data, "action", EXPECTED)?;
                let resource = string_field(data, "resource", EXPECTED)?;
                let outcome = match data.get("outcome") {
                    None | Some(Value::Null) => "recorded",
                    Some(Value::String(s)) => s.as_str(),
                    Some(_) => {
                        return Err(PluginError::invalid_request(format!(
                            "`outcome` must be a string; expected {EXPECTED}"
                        )));
                    }
                };
                log.append(agent, action, resource, outcome)
            }
            "verify" => {
                let anchor = Self::anchor(data)?;
                log.verify(anchor.as_ref())
            }
            "query" => {
                let agent = match data.get("agent_id") {
                    None | Some(Value::Null) => None,
                    Some(Value::String(s)) => Some(s.as_str()),
                    Some(_) => return Err(PluginError::invalid_request("`agent_id` must be a string")),
                };
                let number = |field: &str| match data.get(field) {
                    None | Some(Value::Null) => Ok(None),
                    Some(v) => v.as_u64().map(Some).ok_or_else(|| {
                        PluginError::invalid_request(format!("`{field}` must be a non-negative integer"))
                    }),
                };
                let since = number("since")?;
                let limit = number("limit")?.unwrap_or(100) as usize;
                log.query(agent, since, limit)
            }
            other => {
                return Err(PluginError::invalid_request(format!(
                    "unknown op `{other}`; expected {EXPECTED}"
                )));
            }
        };
        result.map_err(PluginError::new)
    }
}

#[async_trait]
impl OrchestrationPlugin for SecurityIntegrationPlugin {
    fn name(&self) -> &str {
        NAME
    }

    fn version(&self) -> &str {
        env!("CARGO_PKG_VERSION")
    }

    fn capabilities(&self) -> Vec<String> {
        vec!["oauth_auth".into(), "rbac_enforcement".into(), "audit_logging".into()]
    }

    async fn initialize(&self, host: HostHandle) -> Result<(), PluginError> {
        let config: SecurityConfig = host.config_as()?;
        let jwt = JwtVerifier::new(&config.jwt).map_err(|e| PluginError::new(format!("{NAME} configuration: {e}")))?;
        let rbac = Rbac::new(&config.rbac).map_err(|e| PluginError::new(format!("{NAME} configuration: rbac: {e}")))?;
        let (audit_path, audit_head_file) = config
            .audit
            .paths()
            .map_err(|e| PluginError::new(format!("{NAME} configuration: {e}")))?;
        let security = Security {
            jwt,
            rbac,
            audit_path,
            audit_head_file,
            audit: OnceLock::new(),
        };
        *self.state.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(security));
        Ok(())
    }

    async fn process_request(&self, request: IntegrationRequest) -> Result<IntegrationResponse, PluginError> {
        let security = self.security()?;
        let data = &request.data;
        let answer = match request.capability.as_str() {
            "oauth_auth" => Self::oauth_auth(&security, data)?,
            "rbac_enforcement" => security.rbac.check(data).map_err(PluginError::invalid_request)?,
            "audit_logging" => Self::audit_logging(&security, data)?,
            other => {
                return Err(PluginError::invalid_request(format!(
                    "{NAME} does not serve `{other}` (it serves oauth_auth, rbac_enforcement, audit_logging)"
                )));
            }
        };
        Ok(IntegrationResponse::ok(answer))
    }

    async fn health_check(&self) -> HealthStatus {
        match self.security() {
            Err(e) => HealthStatus::unhealthy(e.message),
            Ok(security) => match security.audit.get() {
                Some(Err(e)) => HealthStatus::degraded(format!("audit log unavailable: {e}")),
                Some(Ok(log)) => match log.blocked() {
                    Some(why) => HealthStatus::degraded(format!("audit log refuses appends: {why}")),
                    None => HealthStatus::healthy(),
                },
                _ => HealthStatus::healthy(),
            },
        }
    }
}
