//! Reading request data: every field checked for its type, every unknown field refused, and
//! every refusal a `PluginError::invalid_request` that says what was expected.
//!
//! The generic readers come from [`plugin_api::fields`]; this file adds the ones only this crate
//! needs.

use crate::balancer::MAX_LATENCY_MS;
use plugin_api::PluginError;
pub(crate) use plugin_api::fields::{Object, mistyped, object, only, op, opt_bool, opt_string, opt_u64, string};
use serde_json::Value;
use std::collections::HashSet;

pub(crate) fn bool(obj: &Object, field: &str, expected: &str) -> Result<bool, PluginError> {
    opt_bool(obj, field, expected)?
        .ok_or_else(|| PluginError::invalid_request(format!("missing `{field}` (true or false); expected {expected}")))
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
        let o = obj(json!({"n": -1, "f": 2.5, "b": 3, "t": false, "list": ["x", 2], "nan": "NaN"}));
        assert_eq!(millis(&o, "f", "E").ok(), Some(2.5));
        assert!(millis(&o, "n", "E").is_err());
        assert!(millis(&o, "nan", "E").is_err());
        assert!(
            millis(&o, "absent", "E")
                .unwrap_err()
                .message
                .contains("missing `absent`")
        );
        assert!(bool(&o, "b", "E").is_err());
        assert_eq!(bool(&o, "t", "E").ok(), Some(false));
        assert!(
            bool(&o, "absent", "E")
                .unwrap_err()
                .message
                .contains("missing `absent` (true or false)")
        );
        assert!(opt_ids(&o, "list", "E").is_err());
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
}
