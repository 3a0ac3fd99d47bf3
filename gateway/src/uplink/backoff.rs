//! Retry timing as a small state machine without IO: exponential backoff with jitter,
//! capped, and the server's Retry-After respected.

use std::time::Duration;

/// The longest Retry-After honoured; a server asking for more is retried after this.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// Exponential backoff state for one uplink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    failures: u32,
}

impl Backoff {
    /// Starts at `base`, doubles per consecutive failure, never exceeds `max`.
    pub fn new(base: Duration, max: Duration) -> Self {
        Self {
            base,
            max: max.max(base),
            failures: 0,
        }
    }

    /// Consecutive failures so far.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// A success: the next failure starts from `base` again.
    pub fn succeeded(&mut self) {
        self.failures = 0;
    }

    /// A failure: how long to wait before the next attempt.
    ///
    /// `jitter` in `[0, 1]` spreads retries of many gateways ("equal jitter": between half
    /// and all of the exponential delay). A `retry_after` from the server is a floor: the
    /// gateway never retries earlier than asked (up to [`MAX_RETRY_AFTER`]).
    pub fn failed(&mut self, retry_after: Option<Duration>, jitter: f64) -> Duration {
        self.failures = self.failures.saturating_add(1);
        let exp = self
            .base
            .saturating_mul(
                1u32.checked_shl(self.failures.saturating_sub(1).min(31))
                    .unwrap_or(u32::MAX),
            )
            .min(self.max);
        let jitter = jitter.clamp(0.0, 1.0);
        let delay = exp.mul_f64(0.5 + 0.5 * jitter);
        match retry_after {
            Some(asked) => delay.max(asked.min(MAX_RETRY_AFTER)),
            None => delay,
        }
    }
}

/// Parses a Retry-After header: delay-seconds or an HTTP-date, relative to `now`.
pub fn parse_retry_after(value: &str, now: std::time::SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backoff() -> Backoff {
        Backoff::new(Duration::from_secs(1), Duration::from_secs(60))
    }

    #[test]
    fn delays_double_per_failure_up_to_the_cap() {
        let mut b = backoff();
        let delays: Vec<u64> = (0..9).map(|_| b.failed(None, 1.0).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
    }

    #[test]
    fn jitter_spreads_between_half_and_all_of_the_delay() {
        let mut low = backoff();
        let mut high = backoff();
        for _ in 0..3 {
            low.failed(None, 0.0);
            high.failed(None, 1.0);
        }
        assert_eq!(low.failed(None, 0.0), Duration::from_secs(4));
        assert_eq!(high.failed(None, 1.0), Duration::from_secs(8));
    }

    #[test]
    fn retries_after_503_respecting_retry_after() {
        let mut b = backoff();
        assert_eq!(
            b.failed(Some(Duration::from_secs(30)), 0.5),
            Duration::from_secs(30)
        );
        // A short Retry-After does not shorten the exponential delay.
        let mut b = backoff();
        for _ in 0..5 {
            b.failed(None, 1.0);
        }
        assert_eq!(
            b.failed(Some(Duration::from_secs(1)), 1.0),
            Duration::from_secs(32)
        );
    }

    #[test]
    fn an_absurd_retry_after_is_capped_at_an_hour() {
        let mut b = backoff();
        assert_eq!(
            b.failed(Some(Duration::from_secs(86_400 * 7)), 0.0),
            MAX_RETRY_AFTER
        );
    }

    #[test]
    fn success_starts_over_from_the_base_delay() {
        let mut b = backoff();
        for _ in 0..6 {
            b.failed(None, 1.0);
        }
        b.succeeded();
        assert_eq!(b.failures(), 0);
        assert_eq!(b.failed(None, 1.0), Duration::from_secs(1));
    }

    #[test]
    fn many_failures_never_overflow() {
        let mut b = backoff();
        for _ in 0..10_000 {
            assert!(b.failed(None, 1.0) <= Duration::from_secs(60));
        }
    }

    #[test]
    fn retry_after_is_read_as_seconds_or_an_http_date() {
        let now = std::time::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        let later = httpdate::fmt_http_date(now + Duration::from_secs(90));
        assert_eq!(
            parse_retry_after(&later, now),
            Some(Duration::from_secs(90))
        );
        let earlier = httpdate::fmt_http_date(now - Duration::from_secs(90));
        assert_eq!(parse_retry_after(&earlier, now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon", now), None);
    }
}
