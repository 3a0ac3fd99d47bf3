//! The allowed range of every number in the configuration, in one place, and the check
//! that refuses a value outside it with a text naming the key and the range.
//!
//! A number the gateway cannot honour (a channel of 2^61 slots, a commit window of
//! centuries, a timeout the clock cannot add) is refused at start instead of aborting on
//! an overflow later or silently never committing. Numbers from outside the kit (a token
//! endpoint's `expires_in`, `Retry-After`) are clamped where they are read, with a log
//! line. This module imports nothing of the crate, so every section may use it.

use std::fmt::Display;
use std::ops::RangeInclusive;

/// `[gateway] channel_capacity`: readings waiting between the drivers and the pipeline.
pub const CHANNEL_CAPACITY: RangeInclusive<usize> = 1..=65_536;
/// `[outbox] max_batch_rows`: rows in one transaction.
pub const MAX_BATCH_ROWS: RangeInclusive<usize> = 1..=100_000;
/// `[outbox] commit_window_ms` and `quiet_commit_window_ms`: the longest waits to group
/// readings into one commit.
pub const COMMIT_WINDOW_MS: RangeInclusive<u64> = 0..=10_000;
/// `[outbox] max_age_days`: at most a century (positive; fractions allowed).
pub const MAX_AGE_DAYS: f64 = 36_500.0;
/// `[[uplinks]] batch_size`: Observations in one Bundle.
pub const BATCH_SIZE: RangeInclusive<usize> = 1..=10_000;
/// `[[uplinks]] max_message_bytes` (MQTT): the largest bundle-mode message (MQTT's own
/// limit is 256 MiB).
pub const MAX_MESSAGE_BYTES: RangeInclusive<usize> = 4_096..=268_435_456;
/// `[[uplinks]] timeout_secs`: one request, or one Bundle's PUBACKs.
pub const TIMEOUT_SECS: RangeInclusive<u64> = 1..=3_600;
/// `[[uplinks]] max_backoff_secs`: the longest retry delay (a day).
pub const MAX_BACKOFF_SECS: RangeInclusive<u64> = 1..=86_400;
/// `[mqtt] keep_alive_secs` (MQTT carries it in 16 bits; rumqttc needs at least 5).
pub const KEEP_ALIVE_SECS: RangeInclusive<u64> = 5..=65_535;
/// `[mqtt] max_payload_bytes` (16 MiB).
pub const MAX_PAYLOAD_BYTES: RangeInclusive<usize> = 1..=16 * 1024 * 1024;
/// `[mqtt] max_in_flight` (MQTT packet ids are 16 bits).
pub const MAX_IN_FLIGHT: RangeInclusive<usize> = 1..=65_535;
/// `[mqtt] dead_letter_limit`.
pub const DEAD_LETTER_LIMIT: RangeInclusive<usize> = 1..=1_000_000;
/// `[clock] unsynchronized_wait_secs`: a second to thirty days.
pub const UNSYNCHRONIZED_WAIT_SECS: RangeInclusive<u64> = 1..=2_592_000;
/// `reconnect_initial_ms` of `[serial]`, `[ble]` and `[mqtt]` (an hour).
pub const RECONNECT_INITIAL_MS: RangeInclusive<u64> = 1..=3_600_000;
/// `reconnect_max_ms` of `[serial]`, `[ble]` and `[mqtt]` (a day; also at least the
/// section's `reconnect_initial_ms`).
pub const RECONNECT_MAX_MS: u64 = 86_400_000;
/// `min_interval_ms` of `[[serial.ports]]` and `[[ble.devices]]` (a day).
pub const MIN_INTERVAL_MS: RangeInclusive<u64> = 0..=86_400_000;

/// The problem text of `key = value` outside `range`, or `None` when it is inside.
pub fn out_of_range<T: PartialOrd + Display>(
    key: &str,
    value: T,
    range: &RangeInclusive<T>,
) -> Option<String> {
    (!range.contains(&value)).then(|| {
        format!(
            "{key} = {value} is out of range: it must be between {} and {}",
            range.start(),
            range.end()
        )
    })
}

/// Adds the problem of `key = value` outside `range` to `problems`; whether it was in.
pub fn check<T: PartialOrd + Display>(
    key: &str,
    value: T,
    range: &RangeInclusive<T>,
    problems: &mut Vec<String>,
) -> bool {
    match out_of_range(key, value, range) {
        Some(p) => {
            problems.push(p);
            false
        }
        None => true,
    }
}

/// An optional key of an `[[uplinks]]` table: its value or `default`, checked.
pub fn optional<T: PartialOrd + Display + Copy>(
    key: &str,
    value: Option<T>,
    default: T,
    range: &RangeInclusive<T>,
) -> Result<T, String> {
    let v = value.unwrap_or(default);
    out_of_range(key, v, range).map_or(Ok(v), Err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_outside_its_range_is_named_with_the_range() {
        assert_eq!(
            out_of_range("outbox.commit_window_ms", 10_001, &COMMIT_WINDOW_MS).unwrap(),
            "outbox.commit_window_ms = 10001 is out of range: it must be between 0 and 10000"
        );
        assert_eq!(out_of_range("x", 10_000, &COMMIT_WINDOW_MS), None);
        assert_eq!(optional("batch_size", None, 100, &BATCH_SIZE), Ok(100));
        assert!(optional("batch_size", Some(0), 100, &BATCH_SIZE)
            .unwrap_err()
            .contains("between 1 and 10000"));
    }
}
