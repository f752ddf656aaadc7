//! `quality_gates`: criteria evaluated against metrics, with a report per gate.
//!
//! A criterion is `{"min"?: n, "max"?: n, "equals"?: n}` (at least one; `equals` compares within
//! 1e-9). A metric that is missing, or not a number, fails its gate and says so. The whole
//! passes when every gate passes.

use serde_json::{Map, Value, json};

const EXPECTED: &str = "expected {\"criteria\": {metric: {\"min\"?: number, \"max\"?: number, \"equals\"?: number}}, \"metrics\": {metric: number}, \"workflow_id\"?: string}";

/// Evaluates a `quality_gates` request; `Err` explains a malformed request.
pub(crate) fn evaluate(data: &Value) -> Result<Value, String> {
    let criteria = data.get("criteria").and_then(Value::as_object).ok_or(EXPECTED)?;
    if criteria.is_empty() {
        return Err(format!("`criteria` is empty; {EXPECTED}"));
    }
    let empty = Map::new();
    let metrics = match data.get("metrics") {
        None | Some(Value::Null) => &empty,
        Some(Value::Object(m)) => m,
        Some(_) => return Err(format!("`metrics` must be an object; {EXPECTED}")),
    };
    let workflow_id = match data.get("workflow_id") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err(format!("`workflow_id` must be a string; {EXPECTED}")),
    };
    let mut gates = Vec::with_capacity(criteria.len());
    for (metric, criterion) in criteria {
        let bounds = criterion
            .as_object()
            .ok_or_else(|| format!("criterion for `{metric}` must be an object; {EXPECTED}"))?;
        if let Some(unknown) = bounds.keys().find(|k| !matches!(k.as_str(), "min" | "max" | "equals")) {
            return Err(format!(
                "criterion for `{metric}` has unknown key `{unknown}` (known: min, max, equals)"
            ));
        }
        let bound = |key: &str| -> Result<Option<f64>, String> {
            match bounds.get(key) {
                None => Ok(None),
                Some(v) => v
                    .as_f64()
                    .map(Some)
                    .ok_or_else(|| format!("`{metric}.{key}` must be a number")),
            }
        };
        let (min, max, equals) = (bound("min")?, bound("max")?, bound("equals")?);
        if min.is_none() && max.is_none() && equals.is_none() {
            return Err(format!("criterion for `{metric}` needs min, max or equals"));
        }
        let actual = metrics.get(metric);
        let (passed, reason) = match actual.and_then(Value::as_f64) {
            None if actual.is_none() => (false, format!("metric `{metric}` is missing")),
            None => (false, format!("metric `{metric}` is not a number")),
            Some(v) => {
                let mut failures = Vec::new();
                if let Some(m) = min.filter(|m| v < *m) {
                    failures.push(format!("{v} is below the minimum {m}"));
                }
                if let Some(m) = max.filter(|m| v > *m) {
                    failures.push(format!("{v} is above the maximum {m}"));
                }
                if let Some(e) = equals.filter(|e| (v - e).abs() > 1e-9) {
                    failures.push(format!("{v} is not {e}"));
                }
                if failures.is_empty() {
                    (true, format!("{v} is within bounds"))
                } else {
                    (false, failures.join("; "))
                }
            }
        };
        gates.push(json!({
            "metric": metric,
            "passed": passed,
            "actual": actual.cloned().unwrap_or(Value::Null),
            "threshold": criterion,
            "reason": reason,
        }));
    }
    let failed = gates.iter().filter(|g| g["passed"] == false).count();
    Ok(json!({
        "passed": failed == 0,
        "workflow_id": workflow_id,
        "gates": gates,
        "failed": failed,
        "total": criteria.len(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gates_report_each_metric() {
        let out = evaluate(&json!({
            "workflow_id": "wf-1",
            "criteria": {"coverage": {"min": 0.8}, "p99_ms": {"max": 50}, "errors": {"equals": 0}, "lint": {"min": 1}},
            "metrics": {"coverage": 0.85, "p99_ms": 72.5, "errors": 0, "lint": "clean"}
        }))
        .expect("evaluates");
        assert_eq!(out["passed"], false);
        assert_eq!(out["failed"], 2);
        let reasons: Vec<&str> = out["gates"]
            .as_array()
            .expect("gates")
            .iter()
            .filter_map(|g| g["reason"].as_str())
            .collect();
        assert_eq!(
            reasons,
            [
                "0.85 is within bounds",
                "0 is within bounds",
                "metric `lint` is not a number",
                "72.5 is above the maximum 50"
            ]
        );
    }

    #[test]
    fn missing_metrics_fail_their_gate() {
        let out = evaluate(&json!({"criteria": {"coverage": {"min": 0.8}}})).expect("evaluates");
        assert_eq!(out["gates"][0]["reason"], "metric `coverage` is missing");
        assert_eq!(out["passed"], false);
    }

    #[test]
    fn malformed_criteria_are_refused() {
        for bad in [
            json!({}),
            json!({"criteria": {}}),
            json!({"criteria": {"x": 3}}),
            json!({"criteria": {"x": {}}}),
            json!({"criteria": {"x": {"minimum": 1}}}),
            json!({"criteria": {"x": {"min": "1"}}}),
            json!({"criteria": {"x": {"min": 1}}, "metrics": [1]}),
        ] {
            assert!(evaluate(&bad).is_err(), "{bad}");
        }
    }
}
