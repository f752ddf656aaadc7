//! Parsing `/name --flag=value "quoted arg"` with shell-like quoting.
//!
//! Words are separated by whitespace. Double quotes group words and honour backslash escapes
//! (`\"`, `\\`); single quotes group words literally; outside quotes a backslash escapes the next
//! character. `--flag=value` sets a flag, `--flag` alone sets it to `true`, `--` ends the flags.
//! Every other word is a positional argument. The parser never panics: malformed input
//! (unterminated quotes, a dangling backslash, a missing or malformed name) is an error that says
//! where.

use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt;

/// A parsed command line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ParsedCommand {
    /// The command's name, without the slash.
    pub name: String,
    /// `--flag=value` pairs (`true` for a bare `--flag`).
    pub flags: BTreeMap<String, String>,
    /// The other words, in order.
    pub positional: Vec<String>,
}

/// Why a command line could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    /// What is wrong.
    pub message: String,
    /// The character column (1-based) where it went wrong.
    pub column: usize,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (at column {})", self.message, self.column)
    }
}

impl std::error::Error for ParseError {}

/// Splits a line into words with shell-like quoting.
fn words(line: &str) -> Result<Vec<String>, ParseError> {
    let mut words = Vec::new();
    let mut current: Option<String> = None;
    let mut chars = line.chars().enumerate().peekable();
    while let Some((i, c)) = chars.next() {
        match c {
            c if c.is_whitespace() => {
                if let Some(w) = current.take() {
                    words.push(w);
                }
            }
            '"' => {
                let word = current.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        Some((_, '"')) => break,
                        Some((j, '\\')) => match chars.next() {
                            Some((_, e)) => word.push(e),
                            None => {
                                return Err(ParseError {
                                    message: "a backslash ends the line".into(),
                                    column: j + 1,
                                });
                            }
                        },
                        Some((_, other)) => word.push(other),
                        None => {
                            return Err(ParseError {
                                message: "unterminated double quote".into(),
                                column: i + 1,
                            });
                        }
                    }
                }
            }
            '\'' => {
                let word = current.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        Some((_, '\'')) => break,
                        Some((_, other)) => word.push(other),
                        None => {
                            return Err(ParseError {
                                message: "unterminated single quote".into(),
                                column: i + 1,
                            });
                        }
                    }
                }
            }
            '\\' => match chars.next() {
                Some((_, e)) => current.get_or_insert_with(String::new).push(e),
                None => {
                    return Err(ParseError {
                        message: "a backslash ends the line".into(),
                        column: i + 1,
                    });
                }
            },
            other => current.get_or_insert_with(String::new).push(other),
        }
    }
    if let Some(w) = current {
        words.push(w);
    }
    Ok(words)
}

/// Parses a command line such as `/analyze --depth=high "the parser"`.
pub fn parse_command(line: &str) -> Result<ParsedCommand, ParseError> {
    let trimmed = line.trim_start();
    let offset = line.chars().count() - trimmed.chars().count();
    if !trimmed.starts_with('/') {
        return Err(ParseError {
            message: "a command starts with `/`, e.g. /help".into(),
            column: offset + 1,
        });
    }
    let words = words(line)?;
    let mut iter = words.into_iter();
    let first = iter.next().unwrap_or_default();
    let name = first.strip_prefix('/').unwrap_or(&first).to_owned();
    let valid_name = !name.is_empty()
        && name.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if !valid_name {
        return Err(ParseError {
            message: format!("`/{name}` is not a command name (letters, digits, `_` and `-`, starting with a letter)"),
            column: offset + 1,
        });
    }
    let mut flags = BTreeMap::new();
    let mut positional = Vec::new();
    let mut flags_done = false;
    for word in iter {
        if !flags_done && word == "--" {
            flags_done = true;
        } else if let Some(flag) = word.strip_prefix("--").filter(|_| !flags_done) {
            let (key, value) = flag.split_once('=').unwrap_or((flag, "true"));
            if key.is_empty() {
                return Err(ParseError {
                    message: format!("`{word}` has no flag name"),
                    column: offset + 1,
                });
            }
            flags.insert(key.to_owned(), value.to_owned());
        } else {
            positional.push(word);
        }
    }
    Ok(ParsedCommand {
        name,
        flags,
        positional,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn flags_quotes_and_positionals() {
        let parsed = parse_command(
            r#"/analyze --depth=high --verbose "the \"parser\" module" 'it''s' plain\ word -- --not-a-flag"#,
        )
        .expect("parses");
        assert_eq!(parsed.name, "analyze");
        assert_eq!(parsed.flags.get("depth").map(String::as_str), Some("high"));
        assert_eq!(parsed.flags.get("verbose").map(String::as_str), Some("true"));
        assert_eq!(
            parsed.positional,
            ["the \"parser\" module", "its", "plain word", "--not-a-flag"]
        );
    }

    #[test]
    fn errors_say_where() {
        let err = parse_command(r#"/route "unterminated"#).unwrap_err();
        assert_eq!(err.to_string(), "unterminated double quote (at column 8)");
        let err = parse_command("/x 'open").unwrap_err();
        assert_eq!(err.column, 4);
        assert!(
            parse_command("analyze")
                .unwrap_err()
                .message
                .contains("starts with `/`")
        );
        assert!(parse_command("/").is_err());
        assert!(parse_command("/9lives").is_err());
        assert!(parse_command("/x --=v").is_err());
        assert!(parse_command("/x trailing\\").is_err());
    }

    /// Quotes a word so that `words` reads it back unchanged.
    fn quote(word: &str) -> String {
        format!("\"{}\"", word.replace('\\', "\\\\").replace('"', "\\\""))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// The parser never panics, whatever it is given.
        #[test]
        fn never_panics(line in ".{0,200}") {
            let _ = parse_command(&line);
            let _ = parse_command(&format!("/cmd {line}"));
        }

        /// Any words, quoted, come back as the same positionals.
        #[test]
        fn quoted_words_round_trip(args in prop::collection::vec("[^\\x00]{0,20}", 0..6)) {
            let args: Vec<String> = args.into_iter().filter(|a| !a.starts_with("--") && a != "--").collect();
            let line = format!("/echo -- {}", args.iter().map(|a| quote(a)).collect::<Vec<_>>().join(" "));
            let parsed = parse_command(&line).expect("quoted words parse");
            prop_assert_eq!(parsed.positional, args);
        }
    }
}
