//! Reading request data: every field checked for its type, every unknown field refused, and
//! every refusal a `PluginError::invalid_request` that says what was expected.
//!
//! The generic readers come from [`plugin_api::fields`]; this file adds the ones only this crate
//! needs.

use plugin_api::PluginError;
use plugin_api::fields::mistyped;
pub(crate) use plugin_api::fields::{Object, kind, object, only, op, opt_bool, opt_string, opt_u64, string};
use serde_json::Value;

pub(crate) fn opt_u32(obj: &Object, field: &str, expected: &str) -> Result<Option<u32>, PluginError> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .map(Some)
            .ok_or_else(|| mistyped(field, "a non-negative integer below 2^32", v, expected)),
    }
}

pub(crate) fn opt_i64(obj: &Object, field: &str, expected: &str) -> Result<Option<i64>, PluginError> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_i64()
            .map(Some)
            .ok_or_else(|| mistyped(field, "an integer (64-bit signed)", v, expected)),
    }
}

/// An optional list of non-empty strings.
pub(crate) fn opt_strings(obj: &Object, field: &str, expected: &str) -> Result<Option<Vec<String>>, PluginError> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| v.as_str().filter(|s| !s.is_empty()).map(str::to_owned))
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
        let o = obj(json!({"n": -1, "list": ["x", 2], "names": ["x", "y"], "big": 5_000_000_000u64}));
        assert_eq!(opt_i64(&o, "n", "E").ok(), Some(Some(-1)));
        assert!(opt_strings(&o, "list", "E").is_err());
        assert_eq!(
            opt_strings(&o, "names", "E").ok(),
            Some(Some(vec!["x".to_owned(), "y".to_owned()]))
        );
        assert!(opt_u32(&o, "big", "E").is_err());
        assert!(opt_u32(&o, "n", "E").unwrap_err().message.contains("below 2^32"));
        assert_eq!(opt_u32(&o, "absent", "E").ok(), Some(None));
    }
}
