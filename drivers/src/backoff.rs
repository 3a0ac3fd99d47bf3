//! Capped exponential backoff: the one retry-timing state machine of the drivers (reopening
//! a serial port, reconnecting a BLE device or an MQTT broker) and the gateway's uplinks
//! (reconnecting the MQTT uplink, retrying a delivery). No IO and no clock, so it is
//! tested without waiting.
//!
//! The delays are `initial`, doubling per consecutive failure, at most `max`; a success
//! starts over from `initial`. [`Backoff::fail`] gives exactly that delay;
//! [`Backoff::fail_with`] adds jitter (so that many gateways do not retry in step) and
//! takes a server's Retry-After as a floor.

use std::time::Duration;

/// The longest Retry-After honoured; a server asking for more is retried after this.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// The delays between attempts: `initial`, doubling, at most `max`; back to `initial`
/// after a success.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    failures: u32,
}

impl Backoff {
    /// A backoff starting at `initial` (at least 1 ms) and capped at `max` (at least
    /// `initial`).
    pub fn new(initial: Duration, max: Duration) -> Self {
        let initial = initial.max(Duration::from_millis(1));
        Self {
            initial,
            max: max.max(initial),
            failures: 0,
        }
    }

    /// Records a failure and returns how long to wait before the next attempt.
    pub fn fail(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        self.initial
            .saturating_mul(
                1u32.checked_shl(self.failures.saturating_sub(1).min(31))
                    .unwrap_or(u32::MAX),
            )
            .min(self.max)
    }

    /// Records a failure and returns how long to wait, with jitter and a server's floor.
    ///
    /// `jitter` in `[0, 1]` spreads retries of many gateways ("equal jitter": between half
    /// and all of the exponential delay). A `retry_after` from the server is a floor: the
    /// caller never retries earlier than asked (up to [`MAX_RETRY_AFTER`]).
    pub fn fail_with(&mut self, retry_after: Option<Duration>, jitter: f64) -> Duration {
        let exp = self.fail();
        let jitter = jitter.clamp(0.0, 1.0);
        let delay = exp.mul_f64(0.5 + 0.5 * jitter);
        match retry_after {
            Some(asked) => delay.max(asked.min(MAX_RETRY_AFTER)),
            None => delay,
        }
    }

    /// Consecutive failures since the last success.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// Records a success: the next failure waits `initial` again.
    pub fn succeed(&mut self) {
        self.failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn delays_double_from_the_initial_delay_up_to_the_cap() {
        let mut b = Backoff::new(ms(250), ms(2000));
        let delays: Vec<Duration> = (0..6).map(|_| b.fail()).collect();
        assert_eq!(
            delays,
            [ms(250), ms(500), ms(1000), ms(2000), ms(2000), ms(2000)]
        );
        assert_eq!(b.failures(), 6);
    }

    #[test]
    fn a_success_starts_over_from_the_initial_delay() {
        let mut b = Backoff::new(ms(100), ms(10_000));
        b.fail();
        b.fail();
        b.succeed();
        assert_eq!(b.failures(), 0);
        assert_eq!(b.fail(), ms(100));
    }

    #[test]
    fn a_cap_below_the_initial_delay_is_raised_to_it() {
        let mut b = Backoff::new(ms(500), ms(10));
        assert_eq!(b.fail(), ms(500));
        assert_eq!(b.fail(), ms(500));
    }

    fn backoff() -> Backoff {
        Backoff::new(Duration::from_secs(1), Duration::from_secs(60))
    }

    #[test]
    fn delays_double_per_failure_up_to_the_cap() {
        let mut b = backoff();
        let delays: Vec<u64> = (0..9).map(|_| b.fail_with(None, 1.0).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
    }

    #[test]
    fn jitter_spreads_between_half_and_all_of_the_delay() {
        let mut low = backoff();
        let mut high = backoff();
        for _ in 0..3 {
            low.fail_with(None, 0.0);
            high.fail_with(None, 1.0);
        }
        assert_eq!(low.fail_with(None, 0.0), Duration::from_secs(4));
        assert_eq!(high.fail_with(None, 1.0), Duration::from_secs(8));
    }

    #[test]
    fn retries_after_503_respecting_retry_after() {
        let mut b = backoff();
        assert_eq!(
            b.fail_with(Some(Duration::from_secs(30)), 0.5),
            Duration::from_secs(30)
        );
        // A short Retry-After does not shorten the exponential delay.
        let mut b = backoff();
        for _ in 0..5 {
            b.fail_with(None, 1.0);
        }
        assert_eq!(
            b.fail_with(Some(Duration::from_secs(1)), 1.0),
            Duration::from_secs(32)
        );
    }

    #[test]
    fn an_absurd_retry_after_is_capped_at_an_hour() {
        let mut b = backoff();
        assert_eq!(
            b.fail_with(Some(Duration::from_secs(86_400 * 7)), 0.0),
            MAX_RETRY_AFTER
        );
    }

    #[test]
    fn success_starts_over_from_the_base_delay() {
        let mut b = backoff();
        for _ in 0..6 {
            b.fail_with(None, 1.0);
        }
        b.succeed();
        assert_eq!(b.failures(), 0);
        assert_eq!(b.fail_with(None, 1.0), Duration::from_secs(1));
    }

    #[test]
    fn many_failures_never_overflow() {
        let mut b = backoff();
        for _ in 0..10_000 {
            assert!(b.fail_with(None, 1.0) <= Duration::from_secs(60));
        }
        // Without a practical cap the doubling stops at 2^31 times the initial delay.
        let mut plain = Backoff::new(ms(1), Duration::MAX);
        for _ in 0..10_000 {
            plain.fail();
        }
        assert_eq!(plain.fail(), ms(1 << 31));
    }
}
