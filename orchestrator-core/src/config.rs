//! Plugin configuration: one TOML file with a table per plugin, and/or JSON values given in
//! code. Each plugin reads its own table through
//! [`HostHandle::config`](plugin_api::HostHandle::config) and reports unknown keys itself; the
//! orchestrator refuses configuration for a plugin that is not registered, so a misspelt table
//! name is an error rather than silently ignored.

use crate::error::ConfigError;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;

/// Reads a TOML file into one JSON value per top-level table.
pub(crate) fn read_toml_file(path: &Path) -> Result<BTreeMap<String, Value>, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse_toml(&text).map_err(|e| match e {
        ParseFailure::Syntax(message) => ConfigError::Parse {
            path: path.to_owned(),
            message,
        },
        ParseFailure::NotATable(plugin) => ConfigError::NotATable { plugin },
    })
}

enum ParseFailure {
    Syntax(String),
    NotATable(String),
}

fn parse_toml(text: &str) -> Result<BTreeMap<String, Value>, ParseFailure> {
    let table: BTreeMap<String, Value> =
        toml::from_str(text).map_err(|e| ParseFailure::Syntax(e.to_string().trim_end().to_owned()))?;
    for (plugin, value) in &table {
        if !value.is_object() {
            return Err(ParseFailure::NotATable(plugin.clone()));
        }
    }
    Ok(table)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tables_become_json_objects() {
        let parsed = parse_toml(
            "[SecurityIntegrationPlugin.jwt]\nissuer = \"me\"\nleeway_s = 30\n[SharedStatePlugin]\nbackend = \"memory\"\n",
        )
        .ok()
        .expect("parses");
        assert_eq!(
            parsed["SecurityIntegrationPlugin"],
            json!({"jwt": {"issuer": "me", "leeway_s": 30}})
        );
        assert_eq!(parsed["SharedStatePlugin"], json!({"backend": "memory"}));
    }

    #[test]
    fn top_level_values_must_be_tables() {
        assert!(matches!(parse_toml("x = 1"), Err(ParseFailure::NotATable(p)) if p == "x"));
        assert!(matches!(parse_toml("[a\n"), Err(ParseFailure::Syntax(m)) if m.contains("line 1")));
    }
}
