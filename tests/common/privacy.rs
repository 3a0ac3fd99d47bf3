//! What the kit's health views and heartbeats must never show: the patient id, device ids,
//! serials and addresses, measured values. Shared by the status and MQTT tests.
//!
//! Measured values are looked for as whole numbers: `72` counts where it stands alone,
//! not inside `172`, `7.72`, a time stamp's `.072` or a pseudonym's `a72f`. A counter may equal a measured value
//! by chance (72 readings, 97 s of uptime), so in a JSON document numbers are checked in
//! value positions only: a number under a key that names a count, a size or an age
//! ([`COUNTER_KEYS`]) is the gateway's own and is skipped; every other number and every
//! string is checked. Text views (a table, a page) are checked as text: the tests that
//! scan them for integers use values no counter of theirs reaches.

#![allow(dead_code)]

use std::path::Path;

use super::observations_in;

/// JSON keys whose numbers are the gateway's counters, sizes, ages or ports, never a
/// measured value.
pub const COUNTER_KEYS: &[&str] = &[
    "uptime_seconds",
    "outbox_bytes",
    "disk_free_bytes",
    "dead_letters",
    "readings_24h",
    "battery_percent",
    "consecutive_failures",
    "backlog_rows",
    "oldest_age_seconds",
    "delivered",
    "failures",
    "dead_lettered",
    "readings",
    "observations",
    "rejected",
    "count",
    "sum",
    "buckets",
    "bounds",
];

/// Whether `text` holds `secret`; a number only as a whole token.
fn holds(text: &str, secret: &str) -> bool {
    let numeric = secret.chars().all(|c| c.is_ascii_digit() || c == '.');
    text.match_indices(secret).any(|(i, _)| {
        if !numeric {
            return true;
        }
        let before = text[..i].chars().next_back();
        let after = text[i + secret.len()..].chars().next();
        let joined = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric() || c == '.');
        !(joined(before) || joined(after))
    })
}

/// Fails if any of `secrets` appears in `text` (numbers as whole tokens).
pub fn assert_free_of(what: &str, text: &str, secrets: &[String]) {
    for s in secrets {
        assert!(!holds(text, s), "{what} shows `{s}`:\n{text}");
    }
}

/// Fails if any of `secrets` appears in the JSON document `json`: in a string (numbers as
/// whole tokens), in a key, or as a number outside [`COUNTER_KEYS`].
pub fn assert_json_free_of(what: &str, json: &serde_json::Value, secrets: &[String]) {
    fn walk(v: &serde_json::Value, key: &str, found: &mut Vec<String>, secrets: &[String]) {
        match v {
            serde_json::Value::String(s) => {
                found.extend(secrets.iter().filter(|x| holds(s, x)).cloned());
            }
            serde_json::Value::Number(n) if !COUNTER_KEYS.contains(&key) => {
                let n = n.to_string();
                found.extend(secrets.iter().filter(|x| **x == n).cloned());
            }
            serde_json::Value::Array(a) => a.iter().for_each(|v| walk(v, key, found, secrets)),
            serde_json::Value::Object(o) => {
                for (k, v) in o {
                    found.extend(secrets.iter().filter(|x| holds(k, x)).cloned());
                    walk(v, k, found, secrets);
                }
            }
            _ => {}
        }
    }
    let mut found = Vec::new();
    walk(json, "", &mut found, secrets);
    assert!(found.is_empty(), "{what} shows {found:?}:\n{json:#}");
}

/// The measured values of the Observations written to `out` by a file uplink, as their
/// JSON numbers: decimals and integers.
pub fn measured_values(out: &Path) -> Vec<String> {
    let mut values = Vec::new();
    for o in observations_in(out) {
        let mut quantities = vec![o["valueQuantity"]["value"].clone()];
        if let Some(c) = o["component"].as_array() {
            quantities.extend(c.iter().map(|c| c["valueQuantity"]["value"].clone()));
        }
        for q in quantities {
            if let Some(n) = q.as_number() {
                let n = n.to_string();
                if !values.contains(&n) {
                    values.push(n);
                }
            }
        }
    }
    values
}
