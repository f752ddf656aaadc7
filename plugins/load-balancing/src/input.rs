//! Reading request data: every field checked for its type, every unknown field refused, and
//! every refusal a `PluginError::invalid_request` that says what was expected.

use crate::balancer::MAX_LATENCY_MS;
use plugin_api::PluginError;
use serde_json::{Map, Value};
use std::collections::HashSet;

pub(crate) type Object = Map<String, Value>;

/// The data as an object (`null` reads as `{}`), or a refusal.
pub(crate) fn object<'a>(data: &'a Value, empty: &'a Object, expected: &str) -> Result<&'a Object, PluginError> {
    match data {
        Value::Object(map) => Ok(map),
        Value::Null => Ok(empty),
        other => Err(PluginError::invalid_request(format!(
            "the data must be a JSON object, not {}; expected {expected}",
            kind(other)
        ))),
    }
}

/// The `op` field, one of `ops` (the first is the default when it is absent).
pub(crate) fn op<'a>(obj: &'a Object, ops: &[&'static str], expected: &str) -> Result<&'a str, PluginError> {
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
pub(crate) fn only(obj: &Object, allowed: &[&str], context: &str, expected: &str) -> Result<(), PluginError> {
    match obj.keys().find(|k| !allowed.contains(&k.as_str())) {
        None => Ok(()),
        Some(key) => Err(PluginError::invalid_request(format!(
            "unexpected field `{key}` for {context}; expected {expected}"
        ))),
    }
}

/// A required, non-empty string.
pub(crate) fn string<'a>(obj: &'a Object, field: &str, expected: &str) -> Result<&'a str, PluginError> {
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

/// An optional, non-empty string.
pub(crate) fn opt_string<'a>(obj: &'a Object, field: &str, expected: &str) -> Result<Option<&'a str>, PluginError> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(_) => string(obj, field, expected).map(Some),
    }
}

pub(crate) fn opt_bool(obj: &Object, field: &str, expected: &str) -> Result<Option<bool>, PluginError> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(other) => Err(mistyped(field, "true or false", other, expected)),
    }
}

pub(crate) fn bool(obj: &Object, field: &str, expected: &str) -> Result<bool, PluginError> {
    opt_bool(obj, field, expected)?
        .ok_or_else(|| PluginError::invalid_request(format!("missing `{field}` (true or false); expected {expected}")))
}

pub(crate) fn opt_u64(obj: &Object, field: &str, expected: &str) -> Result<Option<u64>, PluginError> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .map(Some)
            .ok_or_else(|| mistyped(field, "a non-negative integer", v, expected)),
    }
}

/// A required latency in milliseconds: finite, not negative and at most
/// [`MAX_LATENCY_MS`] (one day; fractions allowed). A bigger value is no latency a balancer can
/// use: `1e303` ms overflows to infinity in nanoseconds, and decays to NaN.
pub(crate) fn millis(obj: &Object, field: &str, expected: &str) -> Result<f64, PluginError> {
    match obj.get(field) {
        None | Some(Value::Null) => Err(PluginError::invalid_request(format!(
            "missing `{field}` (a non-negative number of milliseconds); expected {expected}"
        ))),
        Some(v) => v
            .as_f64()
            .filter(|ms| ms.is_finite() && (0.0..=MAX_LATENCY_MS).contains(ms))
            .ok_or_else(|| {
                mistyped(
                    field,
                    "a non-negative number of milliseconds, at most 86400000 (one day)",
                    v,
                    expected,
                )
            }),
    }
}

/// An optional list of non-empty strings, with duplicates dropped (the first of each kept, in
/// order): an id listed twice would otherwise count twice in P2C draws and round-robin turns.
pub(crate) fn opt_ids<'a>(obj: &'a Object, field: &str, expected: &str) -> Result<Option<Vec<&'a str>>, PluginError> {
    let ids = match obj.get(field) {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| v.as_str().filter(|s| !s.is_empty()))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| {
                PluginError::invalid_request(format!(
                    "`{field}` must hold non-empty strings only; expected {expected}"
                ))
            })?,
        Some(other) => return Err(mistyped(field, "a list of strings", other, expected)),
    };
    Ok(Some(dedup(ids)))
}

/// `ids` without repeats, the first occurrence of each kept in place.
fn dedup(mut ids: Vec<&str>) -> Vec<&str> {
    if ids.len() <= 16 {
        let mut kept = 0;
        for i in 0..ids.len() {
            if !ids[..kept].contains(&ids[i]) {
                ids[kept] = ids[i];
                kept += 1;
            }
        }
        ids.truncate(kept);
    } else {
        let mut seen = HashSet::with_capacity(ids.len());
        ids.retain(|id| seen.insert(*id));
    }
    ids
}

pub(crate) fn mistyped(field: &str, wanted: &str, found: &Value, expected: &str) -> PluginError {
    PluginError::invalid_request(format!(
        "`{field}` must be {wanted}, not {} {found}; expected {expected}",
        kind(found)
    ))
}

/// The JSON type of a value, for messages.
pub(crate) fn kind(value: &Value) -> &'static str {
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
        let o = obj(json!({"a": "x", "n": -1, "f": 2.5, "b": 3, "list": ["x", 2], "nan": "NaN"}));
        assert_eq!(string(&o, "a", "E").ok(), Some("x"));
        let e = string(&o, "missing", "E").unwrap_err();
        assert!(e.is_invalid_request() && e.message.contains("missing `missing`") && e.message.ends_with("E"));
        assert!(
            opt_u64(&o, "n", "E")
                .unwrap_err()
                .message
                .contains("non-negative integer")
        );
        assert_eq!(millis(&o, "f", "E").ok(), Some(2.5));
        assert!(millis(&o, "n", "E").is_err());
        assert!(millis(&o, "nan", "E").is_err());
        assert!(
            millis(&o, "absent", "E")
                .unwrap_err()
                .message
                .contains("missing `absent`")
        );
        assert!(opt_bool(&o, "b", "E").is_err());
        assert!(bool(&o, "absent", "E").is_err());
        assert!(opt_ids(&o, "list", "E").is_err());
        assert_eq!(opt_u64(&o, "absent", "E").ok(), Some(None));
    }

    #[test]
    fn latency_beyond_a_day_or_negative_is_refused() {
        let o = obj(json!({"huge": 1e303, "day": 86_400_000, "over": 86_400_000.5, "neg": -0.5, "zero": 0}));
        let e = millis(&o, "huge", "E").unwrap_err();
        assert!(
            e.is_invalid_request() && e.message.contains("at most 86400000"),
            "{}",
            e.message
        );
        assert!(e.message.contains("must be a non-negative number"), "{}", e.message);
        assert_eq!(millis(&o, "day", "E").ok(), Some(86_400_000.0));
        assert!(millis(&o, "over", "E").is_err());
        assert!(millis(&o, "neg", "E").is_err());
        assert_eq!(millis(&o, "zero", "E").ok(), Some(0.0));
    }

    #[test]
    fn duplicate_available_agents_are_dropped_keeping_the_first() {
        let o = obj(
            json!({"few": ["b", "a", "b", "c", "a"], "many": (0..40).map(|i| format!("x{}", i % 7)).collect::<Vec<_>>()}),
        );
        assert_eq!(opt_ids(&o, "few", "E").ok(), Some(Some(vec!["b", "a", "c"])));
        let many = opt_ids(&o, "many", "E").ok().flatten().unwrap_or_default();
        assert_eq!(many, ["x0", "x1", "x2", "x3", "x4", "x5", "x6"]);
        assert_eq!(opt_ids(&o, "absent", "E").ok(), Some(None));
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
}
