//! `[outbox]`: the table as written, its defaults and its validation into
//! [`OutboxSettings`].

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{OutboxSettings, WhenFull};
use crate::limits;

/// `[outbox]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOutbox {
    /// The SQLite database file.
    #[serde(default = "default_outbox_path")]
    pub path: PathBuf,
    /// The 32-byte storage key file (mode 0600), made by `iomt-gateway keygen`.
    #[serde(default = "default_storage_key")]
    pub key_file: PathBuf,
    /// Most sealed payload, in MiB.
    #[serde(default = "default_max_size_mb")]
    pub max_size_mb: u64,
    /// Rows older than this many days are evicted (unset: no age limit).
    #[serde(default)]
    pub max_age_days: Option<f64>,
    /// `evict-oldest` (default) or `block`.
    #[serde(default)]
    pub when_full: WhenFull,
    /// Longest wait, in milliseconds, to group more readings into one commit while their
    /// source waits for the commit (an MQTT PUBACK, a glucose meter's record).
    #[serde(default = "default_commit_window")]
    pub commit_window_ms: u64,
    /// Longest wait, in milliseconds, to group a reading nobody waits for (BLE
    /// notifications, serial devices, the simulator) with later ones into one commit: at
    /// low rates the readings of a kit then share commits, and the SD card is written less
    /// often. A power cut loses at most this much of such readings. At least
    /// `commit_window_ms`.
    #[serde(default = "default_quiet_commit_window")]
    pub quiet_commit_window_ms: u64,
    /// Most rows in one transaction.
    #[serde(default = "default_max_batch_rows")]
    pub max_batch_rows: usize,
}

impl Default for RawOutbox {
    fn default() -> Self {
        Self {
            path: default_outbox_path(),
            key_file: default_storage_key(),
            max_size_mb: default_max_size_mb(),
            max_age_days: None,
            when_full: WhenFull::default(),
            commit_window_ms: default_commit_window(),
            quiet_commit_window_ms: default_quiet_commit_window(),
            max_batch_rows: default_max_batch_rows(),
        }
    }
}

fn default_outbox_path() -> PathBuf {
    PathBuf::from("/var/lib/iomt-gateway/outbox.db")
}
fn default_storage_key() -> PathBuf {
    PathBuf::from("/etc/iomt-gateway/storage.key")
}
fn default_max_size_mb() -> u64 {
    512
}
fn default_commit_window() -> u64 {
    20
}
fn default_quiet_commit_window() -> u64 {
    2000
}
fn default_max_batch_rows() -> usize {
    1000
}

impl RawOutbox {
    /// Validates the table into the outbox's settings, adding each problem to `problems`
    /// (the key file is read by the caller: it is not the outbox's to open).
    pub fn validate(&self, problems: &mut Vec<String>) -> OutboxSettings {
        if self.max_size_mb == 0 {
            problems.push("outbox.max_size_mb must be at least 1".into());
        }
        limits::check(
            "outbox.max_batch_rows",
            self.max_batch_rows,
            &limits::MAX_BATCH_ROWS,
            problems,
        );
        limits::check(
            "outbox.commit_window_ms",
            self.commit_window_ms,
            &limits::COMMIT_WINDOW_MS,
            problems,
        );
        limits::check(
            "outbox.quiet_commit_window_ms",
            self.quiet_commit_window_ms,
            &limits::COMMIT_WINDOW_MS,
            problems,
        );
        let age_ok = |d: f64| d.is_finite() && d > 0.0 && d <= limits::MAX_AGE_DAYS;
        if self.max_age_days.is_some_and(|d| !age_ok(d)) {
            problems.push(format!(
                "outbox.max_age_days must be a positive number of days: between 0 (exclusive) and {}",
                limits::MAX_AGE_DAYS
            ));
        }
        OutboxSettings {
            path: self.path.clone(),
            max_bytes: self.max_size_mb.saturating_mul(1024 * 1024),
            max_age: self
                .max_age_days
                .filter(|d| age_ok(*d))
                .map(|d| Duration::from_secs_f64(d * 86_400.0)),
            when_full: self.when_full,
            commit_window: Duration::from_millis(
                self.commit_window_ms.min(*limits::COMMIT_WINDOW_MS.end()),
            ),
            quiet_commit_window: Duration::from_millis(
                self.quiet_commit_window_ms
                    .min(*limits::COMMIT_WINDOW_MS.end())
                    .max(self.commit_window_ms.min(*limits::COMMIT_WINDOW_MS.end())),
            ),
            max_batch_rows: self.max_batch_rows,
            pseudonym_key: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_are_the_documented_ones() {
        let mut problems = Vec::new();
        let s = RawOutbox::default().validate(&mut problems);
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(s.max_bytes, 512 * 1024 * 1024);
        assert_eq!(s.when_full, WhenFull::EvictOldest);
        assert_eq!(s.max_age, None);
        assert_eq!(s.commit_window, Duration::from_millis(20));
        assert_eq!(s.quiet_commit_window, Duration::from_secs(2));
    }

    #[test]
    fn limits_of_zero_and_a_negative_age_are_refused_naming_each_key() {
        let raw = RawOutbox {
            max_size_mb: 0,
            max_batch_rows: 0,
            max_age_days: Some(-1.0),
            ..RawOutbox::default()
        };
        let mut problems = Vec::new();
        raw.validate(&mut problems);
        let text = problems.join("\n");
        for key in [
            "outbox.max_size_mb",
            "outbox.max_batch_rows",
            "outbox.max_age_days",
        ] {
            assert!(text.contains(key), "{key} missing from {text}");
        }
    }
}
