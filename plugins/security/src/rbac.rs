//! `rbac_enforcement`: roles with inheritance over `resource:action` permissions.
//!
//! A permission is `resource:action`, where either side may be `*`. Each role's permissions,
//! inherited ones included, are flattened once at configuration into hash sets (exact pairs,
//! whole-resource grants `resource:*`, whole-action grants `*:action`, and `*:*`), so a check
//! costs a handful of hash lookups per role whatever the number of rules. Deny by default.
//! Inheritance cycles are refused at configuration, naming the cycle.

use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap, HashSet};

/// The `rbac` table of the configuration.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RbacConfig {
    #[serde(default)]
    roles: BTreeMap<String, RoleConfig>,
    #[serde(default)]
    subjects: BTreeMap<String, Vec<String>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RoleConfig {
    #[serde(default)]
    allow: Vec<String>,
    #[serde(default)]
    inherits: Vec<String>,
}

/// One role's flattened grants; each grant remembers the role that declared it.
#[derive(Debug, Default)]
struct Grants {
    exact: HashMap<(String, String), String>,
    any_action: HashMap<String, String>,
    any_resource: HashMap<String, String>,
    everything: Option<String>,
}

impl Grants {
    fn add(&mut self, permission: &str, declared_by: &str) -> Result<(), String> {
        let (resource, action) = permission
            .split_once(':')
            .filter(|(r, a)| !r.is_empty() && !a.is_empty() && !a.contains(':'))
            .ok_or_else(|| {
                format!("role `{declared_by}`: permission {permission:?} in `allow` is not `resource:action`")
            })?;
        let by = declared_by.to_owned();
        match (resource, action) {
            ("*", "*") => {
                self.everything.get_or_insert(by);
            }
            ("*", action) => {
                self.any_resource.entry(action.to_owned()).or_insert(by);
            }
            (resource, "*") => {
                self.any_action.entry(resource.to_owned()).or_insert(by);
            }
            (resource, action) => {
                self.exact.entry((resource.to_owned(), action.to_owned())).or_insert(by);
            }
        }
        Ok(())
    }

    /// The rule that allows `resource:action`, if any.
    fn allows(&self, resource: &str, action: &str) -> Option<String> {
        if let Some(by) = self.exact.get(&(resource.to_owned(), action.to_owned())) {
            return Some(format!("{by} allows {resource}:{action}"));
        }
        if let Some(by) = self.any_action.get(resource) {
            return Some(format!("{by} allows {resource}:*"));
        }
        if let Some(by) = self.any_resource.get(action) {
            return Some(format!("{by} allows *:{action}"));
        }
        self.everything.as_ref().map(|by| format!("{by} allows *:*"))
    }
}

/// The policy: flattened roles and the subjects' roles.
#[derive(Debug, Default)]
pub(crate) struct Rbac {
    roles: HashMap<String, Grants>,
    subjects: HashMap<String, Vec<String>>,
}

impl Rbac {
    pub(crate) fn new(config: &RbacConfig) -> Result<Self, String> {
        let mut roles = HashMap::new();
        for name in config.roles.keys() {
            let mut grants = Grants::default();
            let mut seen = HashSet::new();
            flatten(config, name, &mut Vec::new(), &mut seen, &mut grants)?;
            roles.insert(name.clone(), grants);
        }
        for (subject, subject_roles) in &config.subjects {
            if let Some(unknown) = subject_roles.iter().find(|r| !config.roles.contains_key(*r)) {
                return Err(format!("subject `{subject}` has unknown role `{unknown}`"));
            }
        }
        Ok(Self {
            roles,
            subjects: config.subjects.clone().into_iter().collect(),
        })
    }

    /// Decides a request: `{subject | roles, resource, action}`.
    pub(crate) fn check(&self, data: &Value) -> Result<Value, String> {
        const EXPECTED: &str =
            "expected {\"subject\": string} or {\"roles\": [string]}, with \"resource\" and \"action\" strings";
        let field = |name: &str| data.get(name).and_then(Value::as_str).filter(|s| !s.is_empty());
        let (resource, action) = match (field("resource"), field("action")) {
            (Some(r), Some(a)) => (r, a),
            _ => return Err(EXPECTED.into()),
        };
        let roles: Vec<String> = match (field("subject"), data.get("roles")) {
            (Some(subject), _) => match self.subjects.get(subject) {
                Some(roles) => roles.clone(),
                None => {
                    return Ok(json!({
                        "allowed": false,
                        "rule": format!("deny by default: subject `{subject}` has no roles"),
                    }));
                }
            },
            (None, Some(Value::Array(items))) => items
                .iter()
                .map(|v| v.as_str().map(str::to_owned).ok_or(EXPECTED))
                .collect::<Result<_, _>>()?,
            _ => return Err(EXPECTED.into()),
        };
        if let Some(unknown) = roles.iter().find(|r| !self.roles.contains_key(*r)) {
            return Err(format!("unknown role `{unknown}`"));
        }
        for role in &roles {
            if let Some(rule) = self.roles.get(role).and_then(|g| g.allows(resource, action)) {
                let rule = if rule.starts_with(role.as_str()) {
                    format!("role {rule}")
                } else {
                    format!("role {role} inherits: role {rule}")
                };
                return Ok(json!({ "allowed": true, "rule": rule, "roles": roles }));
            }
        }
        Ok(json!({
            "allowed": false,
            "rule": format!("deny by default: no role of [{}] allows {resource}:{action}", roles.join(", ")),
            "roles": roles,
        }))
    }
}

fn flatten(
    config: &RbacConfig,
    role: &str,
    path: &mut Vec<String>,
    seen: &mut HashSet<String>,
    grants: &mut Grants,
) -> Result<(), String> {
    if path.iter().any(|r| r == role) {
        path.push(role.to_owned());
        return Err(format!("role inheritance cycle: {}", path.join(" -> ")));
    }
    if !seen.insert(role.to_owned()) {
        return Ok(());
    }
    let declared = config.roles.get(role).ok_or_else(|| {
        format!(
            "role `{}` inherits unknown role `{role}`",
            path.last().map(String::as_str).unwrap_or_default()
        )
    })?;
    for permission in &declared.allow {
        grants.add(permission, role)?;
    }
    path.push(role.to_owned());
    for parent in &declared.inherits {
        flatten(config, parent, path, seen, grants)?;
    }
    path.pop();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(toml_like: Value) -> Result<Rbac, String> {
        let config: RbacConfig = serde_json::from_value(toml_like).map_err(|e| e.to_string())?;
        Rbac::new(&config)
    }

    #[test]
    fn cycles_are_named() {
        let err = policy(json!({"roles": {
            "a": {"inherits": ["b"]}, "b": {"inherits": ["c"]}, "c": {"inherits": ["a"]}
        }}))
        .unwrap_err();
        assert_eq!(err, "role inheritance cycle: a -> b -> c -> a");
    }

    #[test]
    fn wildcards_and_inheritance() {
        let rbac = policy(json!({
            "roles": {
                "viewer": {"allow": ["agents:read", "*:list"]},
                "operator": {"inherits": ["viewer"], "allow": ["tasks:submit", "agents:*"]},
                "root": {"allow": ["*:*"]}
            },
            "subjects": {"alice": ["operator"], "bob": ["viewer"]}
        }))
        .expect("valid");
        let ask = |who: &str, r: &str, a: &str| {
            rbac.check(&json!({"subject": who, "resource": r, "action": a}))
                .expect("decides")
        };
        assert_eq!(
            ask("alice", "agents", "delete")["rule"],
            "role operator allows agents:*"
        );
        assert_eq!(ask("alice", "agents", "read")["allowed"], true);
        assert_eq!(
            ask("alice", "plugins", "list")["rule"],
            "role operator inherits: role viewer allows *:list"
        );
        assert_eq!(ask("bob", "tasks", "submit")["allowed"], false);
        assert_eq!(ask("mallory", "tasks", "submit")["allowed"], false);
        let by_roles = rbac
            .check(&json!({"roles": ["root"], "resource": "x", "action": "y"}))
            .expect("decides");
        assert_eq!(by_roles["rule"], "role root allows *:*");
        assert!(
            rbac.check(&json!({"roles": ["ghost"], "resource": "x", "action": "y"}))
                .is_err()
        );
        assert!(rbac.check(&json!({"resource": "x"})).is_err());
    }

    #[test]
    fn malformed_permissions_are_refused() {
        assert!(policy(json!({"roles": {"a": {"allow": ["nocolon"]}}})).is_err());
        assert!(policy(json!({"roles": {"a": {"allow": [":read"]}}})).is_err());
        assert!(policy(json!({"roles": {"a": {"inherits": ["missing"]}}})).is_err());
        assert!(policy(json!({"subjects": {"x": ["missing"]}})).is_err());
    }
}
