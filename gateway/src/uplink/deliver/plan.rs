//! The delivery loop's decisions, without IO and without a clock: given the rows of a
//! batch and the uplink's answer, what is marked delivered, what goes to the dead letters
//! (and why), what is split and sent again, and when the loop tries again.
//! [`super`] only carries these decisions out (outbox calls, the uplink, timers, logs).
//!
//! Rows are named by their index in the batch they were sent in (`0..sent`); the caller
//! maps them back to outbox rows.

use std::ops::Range;
use std::time::Duration;

use super::Backoff;
use crate::outbox::PendingRow;
use crate::uplink::DeliveryError;

/// What to do with the rows of one Bundle once the uplink has answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// The uplink has every row: mark them all delivered.
    Delivered,
    /// The uplink refused these rows for good and named them: dead-letter each with the
    /// server's reason for it, then send `rest` (the rows it did not name) again.
    DeadLetter {
        /// (row, the server's reason), each row once, in the order the server named them.
        rows: Vec<(usize, String)>,
        /// The other rows, in their order.
        rest: Vec<usize>,
    },
    /// Several rows refused without a word on which: send each half on its own, `left`
    /// first, so the poison rows end up alone.
    Split {
        /// The first half (the smaller one when the count is odd).
        left: Range<usize>,
        /// The second half.
        right: Range<usize>,
    },
    /// One row refused without naming it: it is the poison. Dead-letter it with the
    /// server's reason for the whole Bundle.
    Isolated {
        /// The server's reason.
        reason: String,
    },
    /// The uplink could not take the Bundle now: stop the pass; nothing is marked, so the
    /// same rows, still the oldest, go again after the backoff.
    Retry(DeliveryError),
}

/// Decides what follows the uplink's `answer` to a Bundle of `sent` rows, whose entry `i`
/// came from row `rows_of_entries[i]` (`None` for Device entries).
///
/// A rejection that names only entries that are not rows (a Device, an index past the
/// end) names no row: it is treated as a rejection without names.
pub fn after_answer(
    sent: usize,
    rows_of_entries: &[Option<usize>],
    answer: Result<(), DeliveryError>,
) -> Step {
    let (entries, reason) = match answer {
        Ok(()) => return Step::Delivered,
        Err(e @ DeliveryError::Transient { .. }) => return Step::Retry(e),
        Err(DeliveryError::Rejected { entries, reason }) => (entries, reason),
    };
    let mut named: Vec<(usize, String)> = Vec::new();
    for (entry, why) in entries {
        let row = rows_of_entries.get(entry).copied().flatten();
        if let Some(row) = row.filter(|r| *r < sent) {
            if !named.iter().any(|(r, _)| *r == row) {
                named.push((row, why));
            }
        }
    }
    if !named.is_empty() {
        let rest = (0..sent)
            .filter(|i| !named.iter().any(|(r, _)| r == i))
            .collect();
        return Step::DeadLetter { rows: named, rest };
    }
    if sent <= 1 {
        return Step::Isolated { reason };
    }
    let half = sent / 2;
    Step::Split {
        left: 0..half,
        right: half..sent,
    }
}

/// Extends a [`Step`] to the rows that had no entry of their own because another row of
/// the Bundle held the same Observation (`duplicates`: (row left out, row whose entry
/// stood for it), from the Bundle's building): a row whose entry was refused for good
/// goes to the dead letters with the same reason, together with every row it stood for.
/// (Delivered marks every row sent, duplicates included; a split sends each half
/// again, where they meet again or each has its own entry.)
pub fn with_duplicates(step: Step, duplicates: &[(usize, usize)]) -> Step {
    let Step::DeadLetter { mut rows, rest } = step else {
        return step;
    };
    for (dup, of) in duplicates {
        let reason = rows
            .iter()
            .find(|(r, _)| r == of)
            .map(|(_, why)| why.clone());
        if let Some(why) = reason.filter(|_| !rows.iter().any(|(r, _)| r == dup)) {
            rows.push((*dup, why));
        }
    }
    let rest = rest
        .into_iter()
        .filter(|i| !rows.iter().any(|(r, _)| r == i))
        .collect();
    Step::DeadLetter { rows, rest }
}

/// Splits a fetched batch: the rows that open are sent (their indexes, in order); a row
/// that cannot be opened never goes to the uplink: it goes to the dead letters with
/// this reason.
pub fn triage(rows: &[PendingRow]) -> (Vec<usize>, Vec<(usize, String)>) {
    let mut send = Vec::with_capacity(rows.len());
    let mut dead = Vec::new();
    for (i, row) in rows.iter().enumerate() {
        match &row.observation {
            Ok(_) => send.push(i),
            Err(why) => dead.push((i, format!("cannot be opened: {why}"))),
        }
    }
    (send, dead)
}

/// How one pass of the loop (a fetch and everything sent from it) ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pass {
    /// Nothing was waiting.
    Idle,
    /// Some rows went out (or to the dead letters). `drained`: the fetch found fewer rows
    /// than a batch, so nothing else was waiting then.
    Progress {
        /// Whether the pass took everything that was waiting.
        drained: bool,
    },
}

/// Whether the loop still runs or drains at shutdown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Until shutdown.
    Running,
    /// The last pass after shutdown began, within the drain deadline.
    Draining,
}

/// What the loop does after a pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// Fetch again at once: more rows may be waiting. `after_failures` is how many
    /// failed passes came just before this one (0 when none did).
    FetchAgain {
        /// Consecutive failures that this pass ended.
        after_failures: u32,
    },
    /// Nothing waits: sleep until rows are committed (or shutdown). `after_failures` as
    /// for `FetchAgain`.
    WaitForCommit {
        /// Consecutive failures that this pass ended.
        after_failures: u32,
    },
    /// The pass failed: try again after this delay (or at shutdown).
    RetryIn(Duration),
    /// Stop the loop (only when draining).
    Stop,
}

/// Decides what follows a pass. While running, a failure backs off (exponential with
/// `jitter` in `[0, 1]`, capped, never earlier than the server's Retry-After) and a pass
/// that delivered resets the backoff. A pass that took everything waiting leads to a
/// wait for the next commit, not to a fetch that would find nothing (rows committed
/// meanwhile have changed the commit notification, so the wait ends at once). When
/// draining, the loop goes on only while it makes progress.
pub fn next(
    pass: &Result<Pass, DeliveryError>,
    phase: Phase,
    backoff: &mut Backoff,
    jitter: f64,
) -> Next {
    match (phase, pass) {
        (_, Ok(Pass::Progress { drained })) => {
            let after_failures = backoff.failures();
            if phase == Phase::Running {
                backoff.succeed();
            }
            if *drained && phase == Phase::Running {
                Next::WaitForCommit { after_failures }
            } else {
                Next::FetchAgain { after_failures }
            }
        }
        (Phase::Running, Ok(Pass::Idle)) => Next::WaitForCommit { after_failures: 0 },
        (Phase::Running, Err(e)) => Next::RetryIn(backoff.fail_with(retry_after(e), jitter)),
        (Phase::Draining, Ok(Pass::Idle) | Err(_)) => Next::Stop,
    }
}

fn retry_after(e: &DeliveryError) -> Option<Duration> {
    match e {
        DeliveryError::Transient { retry_after, .. } => *retry_after,
        DeliveryError::Rejected { .. } => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbox::StoredObservation;

    /// A Bundle of the gateway's Device, one other Device, then `rows` Observations.
    fn entries(rows: usize) -> Vec<Option<usize>> {
        [None, None]
            .into_iter()
            .chain((0..rows).map(Some))
            .collect()
    }

    fn rejected(entries: &[(usize, &str)], reason: &str) -> Result<(), DeliveryError> {
        Err(DeliveryError::Rejected {
            entries: entries.iter().map(|(e, w)| (*e, w.to_string())).collect(),
            reason: reason.into(),
        })
    }

    fn transient(retry_after: Option<u64>) -> DeliveryError {
        DeliveryError::Transient {
            reason: "HTTP 503".into(),
            retry_after: retry_after.map(Duration::from_secs),
        }
    }

    fn backoff() -> Backoff {
        Backoff::new(Duration::from_secs(1), Duration::from_secs(60))
    }

    #[test]
    fn a_delivered_batch_marks_every_row_delivered() {
        assert_eq!(after_answer(5, &entries(5), Ok(())), Step::Delivered);
    }

    #[test]
    fn named_rejected_entries_go_to_dead_letters_and_the_rest_is_sent_again() {
        // Entries 3 and 5 are rows 1 and 3 (two Device entries come first).
        let step = after_answer(
            5,
            &entries(5),
            rejected(&[(3, "bad unit"), (5, "bad code")], "HTTP 400"),
        );
        assert_eq!(
            step,
            Step::DeadLetter {
                rows: vec![(1, "bad unit".into()), (3, "bad code".into())],
                rest: vec![0, 2, 4],
            }
        );
    }

    #[test]
    fn a_row_named_twice_goes_to_the_dead_letters_once_with_the_first_reason() {
        let step = after_answer(
            2,
            &entries(2),
            rejected(&[(2, "bad unit"), (2, "bad code")], "HTTP 400"),
        );
        assert_eq!(
            step,
            Step::DeadLetter {
                rows: vec![(0, "bad unit".into())],
                rest: vec![1],
            }
        );
    }

    #[test]
    fn when_every_row_is_named_nothing_is_sent_again() {
        let step = after_answer(2, &entries(2), rejected(&[(2, "a"), (3, "b")], "HTTP 400"));
        assert_eq!(
            step,
            Step::DeadLetter {
                rows: vec![(0, "a".into()), (1, "b".into())],
                rest: vec![],
            }
        );
    }

    #[test]
    fn rows_holding_a_refused_observation_twice_go_to_the_dead_letters_together() {
        // Rows 0 and 2 hold the same Observation (one entry, entry 2); so do 1 and 3.
        let entries = [None, None, Some(0), Some(1)];
        let step = after_answer(4, &entries, rejected(&[(2, "bad unit")], "HTTP 400"));
        assert_eq!(
            with_duplicates(step, &[(2, 0), (3, 1)]),
            Step::DeadLetter {
                rows: vec![(0, "bad unit".into()), (2, "bad unit".into())],
                rest: vec![1, 3],
            }
        );
        // Other steps are left as they are: delivered marks every row sent.
        assert_eq!(
            with_duplicates(after_answer(4, &entries, Ok(())), &[(2, 0)]),
            Step::Delivered
        );
    }

    #[test]
    fn an_unnamed_rejection_of_several_rows_splits_them_in_halves() {
        let step = after_answer(16, &entries(16), rejected(&[], "HTTP 400: invalid"));
        assert_eq!(
            step,
            Step::Split {
                left: 0..8,
                right: 8..16
            }
        );
        // An odd count: the second half takes the extra row.
        let step = after_answer(5, &entries(5), rejected(&[], "HTTP 400: invalid"));
        assert_eq!(
            step,
            Step::Split {
                left: 0..2,
                right: 2..5
            }
        );
    }

    #[test]
    fn an_unnamed_rejection_of_one_row_dead_letters_it() {
        let step = after_answer(1, &entries(1), rejected(&[], "HTTP 400: invalid"));
        assert_eq!(
            step,
            Step::Isolated {
                reason: "HTTP 400: invalid".into()
            }
        );
    }

    #[test]
    fn a_rejection_naming_only_device_entries_or_unknown_entries_counts_as_unnamed() {
        let step = after_answer(
            4,
            &entries(4),
            rejected(
                &[(0, "gateway device"), (1, "device"), (99, "?")],
                "HTTP 400",
            ),
        );
        assert_eq!(
            step,
            Step::Split {
                left: 0..2,
                right: 2..4
            }
        );
    }

    #[test]
    fn halving_isolates_one_poison_row_among_a_hundred_in_few_requests() {
        // Runs the decisions as the loop does (depth first, left half first) against a
        // server that rejects, without naming it, any Bundle holding row 37.
        let poison = 37;
        let mut todo: Vec<Vec<usize>> = vec![(0..100).collect()];
        let (mut delivered, mut dead, mut requests) = (Vec::new(), Vec::new(), 0);
        while let Some(rows) = todo.pop() {
            requests += 1;
            let answer = if rows.contains(&poison) {
                rejected(&[], "HTTP 400: invalid")
            } else {
                Ok(())
            };
            match after_answer(rows.len(), &entries(rows.len()), answer) {
                Step::Delivered => delivered.extend(rows),
                Step::Split { left, right } => {
                    todo.push(rows[right].to_vec());
                    todo.push(rows[left].to_vec());
                }
                Step::Isolated { .. } => dead.extend(rows),
                other => panic!("unexpected {other:?}"),
            }
        }
        delivered.sort_unstable();
        assert_eq!(dead, vec![poison]);
        assert_eq!(
            delivered,
            (0..100).filter(|r| *r != poison).collect::<Vec<_>>()
        );
        // One request for the whole batch, then two per halving: at most 7 halvings
        // bring 100 rows down to one.
        assert!(requests <= 1 + 2 * 7, "{requests} requests");
    }

    #[test]
    fn a_transient_failure_retries_the_same_rows_no_earlier_than_retry_after() {
        let e = transient(Some(30));
        assert_eq!(
            after_answer(3, &entries(3), Err(e.clone())),
            Step::Retry(e.clone())
        );
        let mut b = backoff();
        // Even with the shortest jitter, not before the 30 s the server asked for.
        assert_eq!(
            next(&Err(e), Phase::Running, &mut b, 0.0),
            Next::RetryIn(Duration::from_secs(30))
        );
    }

    #[test]
    fn transient_failures_back_off_exponentially_up_to_the_cap() {
        let mut b = backoff();
        let delays: Vec<Next> = (0..8)
            .map(|_| next(&Err(transient(None)), Phase::Running, &mut b, 1.0))
            .collect();
        let secs = [1, 2, 4, 8, 16, 32, 60, 60];
        assert_eq!(delays, secs.map(|s| Next::RetryIn(Duration::from_secs(s))));
    }

    #[test]
    fn a_pass_that_delivers_after_failures_says_how_many_and_resets_the_backoff() {
        let mut b = backoff();
        for _ in 0..3 {
            next(&Err(transient(None)), Phase::Running, &mut b, 1.0);
        }
        assert_eq!(
            next(
                &Ok(Pass::Progress { drained: false }),
                Phase::Running,
                &mut b,
                1.0
            ),
            Next::FetchAgain { after_failures: 3 }
        );
        assert_eq!(
            next(&Err(transient(None)), Phase::Running, &mut b, 1.0),
            Next::RetryIn(Duration::from_secs(1))
        );
    }

    #[test]
    fn an_idle_pass_waits_for_the_next_commit() {
        let mut b = backoff();
        assert_eq!(
            next(&Ok(Pass::Idle), Phase::Running, &mut b, 0.5),
            Next::WaitForCommit { after_failures: 0 }
        );
    }

    #[test]
    fn a_pass_that_took_everything_waiting_waits_for_the_next_commit_instead_of_fetching() {
        let mut b = backoff();
        next(&Err(transient(None)), Phase::Running, &mut b, 1.0);
        assert_eq!(
            next(
                &Ok(Pass::Progress { drained: true }),
                Phase::Running,
                &mut b,
                0.5
            ),
            Next::WaitForCommit { after_failures: 1 }
        );
        assert_eq!(
            next(&Err(transient(None)), Phase::Running, &mut b, 1.0),
            Next::RetryIn(Duration::from_secs(1)),
            "the delivery reset the backoff"
        );
    }

    #[test]
    fn at_shutdown_the_loop_drains_while_it_progresses_and_stops_when_idle_or_failing() {
        let mut b = backoff();
        assert_eq!(
            next(
                &Ok(Pass::Progress { drained: true }),
                Phase::Draining,
                &mut b,
                0.5
            ),
            Next::FetchAgain { after_failures: 0 }
        );
        assert_eq!(
            next(&Ok(Pass::Idle), Phase::Draining, &mut b, 0.5),
            Next::Stop
        );
        assert_eq!(
            next(&Err(transient(Some(5))), Phase::Draining, &mut b, 0.5),
            Next::Stop
        );
        assert_eq!(
            b.failures(),
            0,
            "a failure while draining schedules no retry"
        );
    }

    #[test]
    fn a_row_that_cannot_be_opened_goes_to_the_dead_letters_and_never_to_the_uplink() {
        let row = |seq: i64, ok: bool| PendingRow {
            seq,
            len: 10,
            device_id: "dev-1".into(),
            observation: if ok {
                Ok(StoredObservation {
                    id: format!("obs-{seq}"),
                    identifier: None,
                    hold: None,
                    json: serde_json::value::RawValue::from_string("{}".into())
                        .unwrap_or_else(|_| unreachable!()),
                })
            } else {
                Err("authentication failed".into())
            },
        };
        let rows = [row(1, true), row(2, false), row(3, true)];
        let (send, dead) = triage(&rows);
        assert_eq!(send, vec![0, 2]);
        assert_eq!(
            dead,
            vec![(1, "cannot be opened: authentication failed".to_string())]
        );
    }
}
