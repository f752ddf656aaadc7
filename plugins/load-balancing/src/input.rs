//! Reading request data: every field checked for its type, every unknown field refused, and
//! every refusal a `PluginError::invalid_request` that says what was expected.

use plugin_api::PluginError;
use serde_json::{Map, Value};

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

/// A required number of milliseconds: finite and not negative (fractions allowed).
pub(crate) fn millis(obj: &Object, field: &str, expected: &str) -> Result<f64, PluginError> {
    match obj.get(field) {
        None | Some(Value::Null) => Err(PluginError::invalid_request(format!(
            "missing `{field}` (a non-negative number of milliseconds); expected {expected}"
        ))),
        Some(v) => v
            .as_f64()
            .filter(|ms| ms.is_finite() && *ms >= 0.0)
            .ok_or_else(|| mistyped(field, "a non-negative number of milliseconds", v, expected)),
    }
}

/// An optional list of non-empty strings.
pub(crate) fn opt_strings<'a>(
    obj: &'a Object,
    field: &str,
    expected: &str,
) -> Result<Option<Vec<&'a str>>, PluginError> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| v.as_str().filter(|s| !s.is_empty()))
            .collect::<Option<Vec<_>>>()
            .map(Some)
            .ok_or_else(|| {
                PluginError::invalid_request(format!(
                    "`{field}` must hold non-empty strings only; expected {expected}"
                ))
            }),
        Some(other) => Err(mistyped(field, "a list of strings", other, expected)),
    }
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
        assert!(opt_strings(&o, "list", "E").is_err());
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
}
