//! The delivery loop with an uplink that acknowledges each Observation on its own
//! ([`Uplink::window`](crate::uplink::Uplink::window), the MQTT uplink in observation
//! mode): a sliding window of unacknowledged Observations instead of whole Bundles.
//!
//! - Rows are fetched while the window has room (in batches of at most `batch_size`, once
//!   at least half a batch is free, so that one acknowledgement does not cost one fetch),
//!   and handed to the uplink without waiting for the acknowledgements of those before.
//! - The rows already sent are not fetched again: a fetch takes only rows above the
//!   highest seq sent in this pass; the rows acknowledged are marked delivered at once,
//!   and the outbox skips them until their deletion.
//! - Acknowledgements come oldest first; each marks its row (and the rows holding the same
//!   Observation) delivered, so a row is never sent twice while the connection holds.
//! - When the uplink fails (connection lost, acknowledgement late), the Observations still
//!   in flight are lost and the pass ends with the failure: the retry fetches from the
//!   oldest row not acknowledged, so only those go again (at least once, as with
//!   Bundles).
//! - Rows that cannot be opened go to the dead letters, rows held for the clock stop the
//!   fetching, as in a whole-Bundle pass.

use std::collections::VecDeque;

use tokio_util::sync::CancellationToken;

use super::plan::{self, Pass};
use super::{outbox_failed, Loop, ABANDONED};
use crate::outbox::PendingRow;
use crate::uplink::DeliveryError;

/// One Observation sent and waiting for its acknowledgement.
struct InFlight {
    /// (seq, sealed length) of its row and of the rows holding the same Observation.
    rows: Vec<(i64, usize)>,
    /// Whether it is the last Observation of the Bundle it was sent with.
    last: bool,
}

fn abandoned() -> DeliveryError {
    DeliveryError::Transient {
        reason: ABANDONED.into(),
        retry_after: None,
    }
}

impl Loop<'_> {
    /// Keeps up to `window` Observations waiting for their acknowledgement, fetching more
    /// as they are acknowledged, until nothing is waiting in the outbox and nothing is in
    /// flight. Once `stop` fires no more rows are fetched; those in flight are waited
    /// for. A failure of the uplink ends the pass (`Err`).
    pub(super) async fn stream(
        &mut self,
        batch: usize,
        window: usize,
        stop: &CancellationToken,
    ) -> Result<Pass, DeliveryError> {
        let window = window.max(1);
        let low = batch.min(window).div_ceil(2).max(1);
        let mut in_flight: VecDeque<InFlight> = VecDeque::with_capacity(window);
        let mut committed = self.outbox.committed();
        // The highest seq fetched in this pass; rows up to it are sent or done.
        let mut after = 0i64;
        // Whether rows may be waiting in the outbox beyond `after`.
        let mut more = true;
        let (mut held, mut progress) = (false, false);
        loop {
            let room = window.saturating_sub(in_flight.len());
            if more && !held && !stop.is_cancelled() && (room >= low || in_flight.is_empty()) {
                committed.borrow_and_update();
                let limit = batch.min(room).max(1);
                let (fetched, sent) = self.fetch_and_send(after, limit, &mut in_flight).await?;
                more = fetched.count == limit;
                after = after.max(fetched.last_seq);
                held |= fetched.held;
                progress |= sent || fetched.dead_lettered;
                continue;
            }
            if in_flight.is_empty() {
                return Ok(if progress {
                    Pass::Progress {
                        drained: held || !more,
                    }
                } else {
                    Pass::Idle
                });
            }
            tokio::select! {
                biased;
                acked = self.uplink.acked() => {
                    let n = acked?;
                    let mut rows = Vec::new();
                    for m in in_flight.drain(..n.min(in_flight.len())) {
                        rows.extend(m.rows);
                        self.stats.bundles += u64::from(m.last);
                    }
                    let count = rows.len() as u64;
                    self.outbox
                        .delivered(self.uplink.name(), rows)
                        .await
                        .map_err(outbox_failed)?;
                    self.stats.delivered += count;
                    if let Some(h) = self.health {
                        h.delivered(self.uplink.name(), count);
                    }
                }
                _ = committed.changed(), if !more && !held => more = true,
                _ = self.abandon.cancelled() => return Err(abandoned()),
            }
        }
    }

    /// Fetches up to `limit` rows above `after`, moves those that cannot be opened to the
    /// dead letters, holds back those waiting for the clock, and sends the rest, each
    /// Observation then waiting in `in_flight`. Returns what the fetch found and whether
    /// anything was sent.
    async fn fetch_and_send(
        &mut self,
        after: i64,
        limit: usize,
        in_flight: &mut VecDeque<InFlight>,
    ) -> Result<(FetchedWindow, bool), DeliveryError> {
        let mut fetched = self
            .outbox
            .fetch_after(self.uplink.name(), after, limit)
            .await
            .map_err(outbox_failed)?;
        let mut found = FetchedWindow {
            count: fetched.rows.len(),
            last_seq: fetched.rows.iter().map(|r| r.seq).max().unwrap_or(after),
            held: false,
            dead_lettered: false,
        };
        found.held = self.release_held(&mut fetched.rows);
        let (sendable, unreadable) = plan::triage(&fetched.rows);
        for (i, reason) in unreadable {
            // The reason names the row and what is wrong with it, never its content.
            tracing::error!(
                uplink = self.uplink.name(),
                seq = fetched.rows[i].seq,
                reason = %reason,
                "an outbox row cannot be opened; moved to the dead letters"
            );
            self.dead_letter(&fetched.rows[i], &reason).await?;
            found.dead_lettered = true;
        }
        if sendable.is_empty() {
            return Ok((found, false));
        }
        let rows: Vec<&PendingRow> = sendable.iter().map(|&i| &fetched.rows[i]).collect();
        let built = self.build(&fetched, &rows);
        // One message per Observation entry, in order, with the rows it stands for.
        let mut messages: Vec<InFlight> = Vec::with_capacity(rows.len());
        let mut message_of_row = vec![usize::MAX; rows.len()];
        for row in built.rows_of_entries.iter().flatten() {
            message_of_row[*row] = messages.len();
            messages.push(InFlight {
                rows: vec![(rows[*row].seq, rows[*row].len)],
                last: false,
            });
        }
        for (left_out, standing) in &built.duplicates {
            if let Some(m) = messages.get_mut(message_of_row[*standing]) {
                m.rows.push((rows[*left_out].seq, rows[*left_out].len));
            }
        }
        if let Some(m) = messages.last_mut() {
            m.last = true;
        }
        tokio::select! {
            biased;
            sent = self.uplink.send(&built.bundle) => sent?,
            _ = self.abandon.cancelled() => return Err(abandoned()),
        }
        in_flight.extend(messages);
        Ok((found, true))
    }
}

/// What one fetch of a windowed pass found.
struct FetchedWindow {
    /// Rows fetched.
    count: usize,
    /// The highest seq among them (`after` when none).
    last_seq: i64,
    /// Whether rows were held back for the clock.
    held: bool,
    /// Whether rows went to the dead letters.
    dead_lettered: bool,
}
