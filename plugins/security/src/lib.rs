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
//!   `{"sequence", "hash"}` once the record is on disk
//! - `{"op": "verify"}` -> `{"valid", "records", "first_bad"?, "reason"?, "recovered"?}`
//! - `{"op": "query", "agent_id"?, "since"? (ms since the epoch), "limit"? (100)}` -> `{"records": [..]}`
//!
//! Malformed requests (a missing or mistyped field, an unknown `op`) are refused with
//! `PluginError::invalid_request`, saying what was expected.
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
//! leeway_s = 30                             # clock skew allowed on exp and nbf (default 30)
//!
//! [SecurityIntegrationPlugin.audit]
//! path = "var/audit.log"                    # default: orchestrator-audit.log in the working directory,
//!                                           # opened on first use
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
//! PEM key, a secret shorter than 16 bytes, a malformed permission, an unknown role and an
//! inheritance cycle. With no JWT key configured, every token is refused, saying so.

mod audit;
mod jwt;
mod rbac;

pub use audit::DEFAULT_AUDIT_PATH;

use audit::{AuditConfig, AuditLog};
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
    audit: OnceLock<Result<AuditLog, String>>,
}

impl Security {
    fn audit(&self) -> Result<&AuditLog, PluginError> {
        self.audit
            .get_or_init(|| AuditLog::open(&self.audit_path))
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

    fn audit_logging(security: &Security, data: &Value) -> Result<Value, PluginError> {
        const EXPECTED: &str = "{\"agent_id\", \"action\", \"resource\", \"outcome\"?} (strings), or {\"op\": \"verify\"}, or {\"op\": \"query\", \"agent_id\"?, \"since\"?, \"limit\"?}";
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
            "verify" => log.verify(),
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
        let audit_path = config.audit.path.unwrap_or_else(|| PathBuf::from(DEFAULT_AUDIT_PATH));
        let security = Security {
            jwt,
            rbac,
            audit_path,
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
                _ => HealthStatus::healthy(),
            },
        }
    }
}
