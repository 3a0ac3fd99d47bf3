//! Configuration errors that never show a value: a TOML syntax error names its line and
//! column and what is wrong, without quoting the line; a value of the wrong type names its
//! key, its line (or its environment variable) and the kind of value found, never the value
//! itself. The patient id, a secret or the kit's id mistyped in `gateway.toml` thus never
//! reaches the journal. Messages about other keys (an unknown key, an unknown variant of
//! an enumeration) are kept as they are: they name keys and the allowed words.

use std::ops::Range;

use toml::de::{DeTable, DeValue};

/// The problem in a TOML text's syntax, if any: `line L, column C: message`.
pub(super) fn syntax_problem(text: &str) -> Option<String> {
    let e = DeTable::parse(text).err()?;
    let at = e
        .span()
        .map(|s| {
            format!(
                "line {}, column {}: ",
                line_of(text, s.start),
                column_of(text, s.start)
            )
        })
        .unwrap_or_default();
    // The message alone: the error's display quotes the offending line.
    let message = e.message().trim().replace('\n', "; ");
    Some(format!(
        "{at}{message} (TOML syntax; the line is not shown, it may hold a secret)"
    ))
}

/// A problem the `config` crate found, told without any value; `text` is the file's
/// TOML text, when there is one, to find the key's line in.
pub(super) fn describe(e: &config::ConfigError, text: Option<&str>) -> String {
    use config::ConfigError as E;
    match e {
        E::Type {
            origin,
            unexpected,
            expected,
            key,
        } => {
            let key = key.as_deref().unwrap_or("a key");
            format!(
                "{key}{}: invalid type: {} (the value is not shown), expected {expected}",
                whereabouts(key, origin.as_deref(), text),
                kind(unexpected)
            )
        }
        E::At {
            error,
            origin,
            key: Some(key),
        } if sensitive(key) => format!(
            "{key}{}: invalid value (not shown){}",
            whereabouts(key, origin.as_deref(), text),
            match error.as_ref() {
                E::Type { expected, .. } => format!(", expected {expected}"),
                _ => String::new(),
            }
        ),
        E::At { error, .. } if matches!(error.as_ref(), E::Type { .. }) => describe(error, text),
        E::FileParse { .. } => match text.and_then(syntax_problem) {
            Some(problem) => problem,
            None => "the file is not valid TOML (the line is not shown)".into(),
        },
        other => other.to_string(),
    }
}

/// Keys whose values identify a person or the kit, or are secrets.
fn sensitive(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    key.starts_with("patient")
        || key == "gateway.id"
        || ["secret", "password", "token", "credential"]
            .iter()
            .any(|w| key.contains(w))
}

/// The kind of a value, without the value: the `config` crate's description of it (its
/// type cannot be named) up to the quoted value.
fn kind(unexpected: &impl std::fmt::Display) -> String {
    let shown = unexpected.to_string();
    let cut = shown.find(['`', '"']).unwrap_or(shown.len());
    shown[..cut].trim().to_string()
}

/// ` (line N)`, or ` (environment variable IOMT_GATEWAY__…)` when the value came from
/// the environment, or nothing when the key cannot be found.
fn whereabouts(key: &str, origin: Option<&str>, text: Option<&str>) -> String {
    let var = format!(
        "{}__{}",
        super::ENV_PREFIX,
        key.replace('.', "__").to_ascii_uppercase()
    );
    if origin.is_some_and(|o| o.contains("environment")) || std::env::var_os(&var).is_some() {
        return format!(" (environment variable {var})");
    }
    text.and_then(|t| key_span(t, key).map(|s| format!(" (line {})", line_of(t, s.start))))
        .unwrap_or_default()
}

/// The span of `key` (`section.key`, `uplinks[0].name`) in a TOML text.
fn key_span(text: &str, key: &str) -> Option<Range<usize>> {
    let root = DeTable::parse(text).ok()?;
    let mut table: &DeTable<'_> = root.get_ref();
    let mut span = None;
    let mut segments = key.split('.').peekable();
    while let Some(segment) = segments.next() {
        let (name, index) = match segment.split_once('[') {
            Some((name, rest)) => (name, rest.trim_end_matches(']').parse::<usize>().ok()),
            None => (segment, None),
        };
        let (k, v) = table.iter().find(|(k, _)| k.get_ref() == name)?;
        span = Some(k.span());
        let mut value = v;
        if let (Some(i), DeValue::Array(items)) = (index, v.get_ref()) {
            value = items.get(i)?;
            span = Some(value.span());
        }
        match value.get_ref() {
            DeValue::Table(t) if segments.peek().is_some() => table = t,
            _ => break,
        }
    }
    span
}

/// The 1-based line of a byte offset.
fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// The 1-based column (in characters) of a byte offset.
fn column_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    let start = text.as_bytes()[..end]
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |i| i + 1);
    text.get(start..end).map_or(1, |s| s.chars().count() + 1)
}
