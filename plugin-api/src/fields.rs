//! Reading the JSON data of an [`IntegrationRequest`](crate::IntegrationRequest): every field
//! checked for its type, every unknown field refused, and every refusal a
//! [`PluginError::invalid_request`] that says what was expected.
//!
//! Each reader takes `expected`, a short description of the data the caller accepts, and ends
//! its error messages with `expected {expected}`, so that a caller who got the request wrong
//! learns what to send instead.
//!
//! Every plugin reads its request data, so these readers live here rather than in each plugin.
//! Unlike the rest of this crate they cross no boundary between host and plugin: they are plain
//! Rust over [`serde_json::Value`], compiled into the plugin that calls them.
//!
//! ```
//! use plugin_api::fields::{self, Object};
//! use serde_json::json;
//!
//! const EXPECTED: &str = "{\"op\": \"greet\", \"name\": string}";
//!
//! let data = json!({ "op": "greet", "name": "Ada" });
//! let empty = Object::new();
//! let obj = fields::object(&data, &empty, EXPECTED)?;
//! assert_eq!(fields::op(obj, &["greet", "part"], EXPECTED)?, "greet");
//! assert_eq!(fields::string(obj, "name", EXPECTED)?, "Ada");
//!
//! let refused = fields::string(obj, "title", EXPECTED).unwrap_err();
//! assert!(refused.is_invalid_request());
//! assert_eq!(refused.message, format!("missing `title` (a string); expected {EXPECTED}"));
//! # Ok::<(), plugin_api::PluginError>(())
//! ```

use crate::PluginError;
use serde_json::{Map, Value};

/// A JSON object, as request data is read.
pub type Object = Map<String, Value>;

/// The data as an object (`null` reads as `empty`, normally `{}`), or a refusal.
pub fn object<'a>(data: &'a Value, empty: &'a Object, expected: &str) -> Result<&'a Object, PluginError> {
    match data {
        Value::Object(map) => Ok(map),
        Value::Null => Ok(empty),
        other => Err(PluginError::invalid_request(format!(
            "the data must be a JSON object, not {}; expected {expected}",
            kind(other)
        ))),
    }
}

/// The `op` field, one of `ops` (the first is the default when it is absent or `null`).
pub fn op<'a>(obj: &'a Object, ops: &[&'static str], expected: &str) -> Result<&'a str, PluginError> {
    let known = || ops.iter().map(|o| format!("`{o}`")).collect::<Vec<_>>().join(", ");
    match obj.get("op") {
        None | Some(Value::Null) => Ok(ops.first().copied().unwrap_or_default()),
        Some(Value::String(op)) if ops.contains(&op.as_str()) => Ok(op),
        Some(Value::String(op)) => Err(PluginError::invalid_request(format!(
            "unknown op `{op}`: expected one of {}; {expected}",
            known()
        ))),
        Some(other) => Err(PluginError::invalid_request(format!(
            "`op` must be a string (one of {}), not {}; {expected}",
            known(),
            kind(other)
        ))),
    }
}

/// Refuses any field outside `allowed` (a misspelt optional field would otherwise be ignored).
/// `context` names what is being read, e.g. ``"op `start`"``.
pub fn only(obj: &Object, allowed: &[&str], context: &str, expected: &str) -> Result<(), PluginError> {
    match obj.keys().find(|k| !allowed.contains(&k.as_str())) {
        None => Ok(()),
        Some(key) => Err(PluginError::invalid_request(format!(
            "unexpected field `{key}` for {context}; expected {expected}"
        ))),
    }
}

/// A required, non-empty string.
pub fn string<'a>(obj: &'a Object, field: &str, expected: &str) -> Result<&'a str, PluginError> {
    match obj.get(field) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s),
        Some(Value::String(_)) => Err(PluginError::invalid_request(format!(
            "`{field}` must not be empty; expected {expected}"
        ))),
        None | Some(Value::Null) => Err(PluginError::invalid_request(format!(
            "missing `{field}` (a string); expected {expected}"
        ))),
        Some(other) => Err(mistyped(field, "a string", other, expected)),
    }
}

/// An optional, non-empty string (absent or `null` reads as `None`).
pub fn opt_string<'a>(obj: &'a Object, field: &str, expected: &str) -> Result<Option<&'a str>, PluginError> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(_) => string(obj, field, expected).map(Some),
    }
}

/// An optional boolean (absent or `null` reads as `None`).
pub fn opt_bool(obj: &Object, field: &str, expected: &str) -> Result<Option<bool>, PluginError> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(other) => Err(mistyped(field, "true or false", other, expected)),
    }
}

/// An optional non-negative integer (absent or `null` reads as `None`).
pub fn opt_u64(obj: &Object, field: &str, expected: &str) -> Result<Option<u64>, PluginError> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .map(Some)
            .ok_or_else(|| mistyped(field, "a non-negative integer", v, expected)),
    }
}

/// The refusal for a `field` that holds `found` where `wanted` (e.g. `"a string"`) was needed:
/// for writing readers of other types with the same messages as these.
pub fn mistyped(field: &str, wanted: &str, found: &Value, expected: &str) -> PluginError {
    PluginError::invalid_request(format!(
        "`{field}` must be {wanted}, not {} {found}; expected {expected}",
        kind(found)
    ))
}

/// The JSON type of a value, for messages: `"null"`, `"a boolean"`, `"a number"`, `"a string"`,
/// `"a list"` or `"an object"`.
pub fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Object {
        match v {
            Value::Object(m) => m,
            _ => Object::new(),
        }
    }

    #[test]
    fn fields_are_type_checked_and_say_what_was_expected() {
        let o = obj(json!({"a": "x", "empty": "", "n": -1, "b": 3, "t": true, "big": 5_000_000_000u64}));
        assert_eq!(string(&o, "a", "E").ok(), Some("x"));
        let e = string(&o, "missing", "E").unwrap_err();
        assert!(e.is_invalid_request() && e.message.contains("missing `missing`") && e.message.ends_with("E"));
        assert_eq!(
            string(&o, "empty", "E").unwrap_err().message,
            "`empty` must not be empty; expected E"
        );
        assert_eq!(
            string(&o, "n", "E").unwrap_err().message,
            "`n` must be a string, not a number -1; expected E"
        );
        assert_eq!(opt_string(&o, "a", "E").ok(), Some(Some("x")));
        assert_eq!(opt_string(&o, "absent", "E").ok(), Some(None));
        assert!(opt_string(&o, "empty", "E").is_err());
        assert!(
            opt_u64(&o, "n", "E")
                .unwrap_err()
                .message
                .contains("non-negative integer")
        );
        assert!(opt_bool(&o, "b", "E").is_err());
        assert_eq!(opt_bool(&o, "t", "E").ok(), Some(Some(true)));
        assert_eq!(opt_bool(&o, "absent", "E").ok(), Some(None));
        assert_eq!(opt_u64(&o, "big", "E").ok(), Some(Some(5_000_000_000)));
        assert_eq!(opt_u64(&o, "absent", "E").ok(), Some(None));
    }

    #[test]
    fn ops_and_unknown_fields() {
        let ops = ["first", "second"];
        assert_eq!(op(&obj(json!({})), &ops, "E").ok(), Some("first"));
        assert_eq!(op(&obj(json!({"op": "second"})), &ops, "E").ok(), Some("second"));
        let e = op(&obj(json!({"op": "third"})), &ops, "E").unwrap_err();
        assert!(e.message.contains("unknown op `third`") && e.message.contains("`second`"));
        assert!(op(&obj(json!({"op": 1})), &ops, "E").is_err());
        let e = only(&obj(json!({"op": "x", "typo": 1})), &["op"], "op `x`", "E").unwrap_err();
        assert!(e.message.contains("unexpected field `typo`"));
        let empty = Object::new();
        assert!(object(&json!(null), &empty, "E").is_ok());
        assert!(object(&json!([1]), &empty, "E").unwrap_err().message.contains("a list"));
    }

    #[test]
    fn kinds_name_every_json_type() {
        let kinds: Vec<_> = [json!(null), json!(true), json!(1), json!("s"), json!([]), json!({})]
            .iter()
            .map(kind)
            .collect();
        assert_eq!(
            kinds,
            ["null", "a boolean", "a number", "a string", "a list", "an object"]
        );
    }
}
