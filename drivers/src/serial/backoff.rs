//! Capped exponential backoff for reopening a serial port: a small state machine without
//! IO or clock, so it is tested without waiting.

use std::time::Duration;

/// The delays between attempts to (re)open a port: `initial`, doubling, at most `max`;
/// back to `initial` once the port delivers data again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    next: Duration,
    failures: u32,
}

impl Backoff {
    /// A backoff starting at `initial` and capped at `max` (at least `initial`).
    pub fn new(initial: Duration, max: Duration) -> Self {
        let initial = initial.max(Duration::from_millis(1));
        Self {
            initial,
            max: max.max(initial),
            next: initial,
            failures: 0,
        }
    }

    /// Records a failure and returns how long to wait before the next attempt.
    pub fn fail(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(self.max);
        self.failures = self.failures.saturating_add(1);
        delay
    }

    /// Failures since the last success.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// Records a success: the next failure waits `initial` again.
    pub fn succeed(&mut self) {
        self.next = self.initial;
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
}
