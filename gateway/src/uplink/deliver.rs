//! One delivery loop per uplink: fetch the oldest rows waiting for it, send them as a
//! Bundle, and tell the outbox what happened.
//!
//! - Delivered (2xx, every entry successful): the rows are marked delivered and deleted
//!   once no other uplink waits for them.
//! - Rejected entries (a 4xx with an OperationOutcome naming them): those rows go to the
//!   dead letters with the server's reason and the rest is sent again. When the server
//!   does not say which entries are at fault, the batch is split in halves until the
//!   poison rows are isolated, so one bad row never blocks the others and is never retried
//!   forever: a single row refused without names is the poison, dead-lettered with the
//!   server's reason for the whole Bundle.
//! - Transient failures: the same rows are retried after the backoff (exponential with
//!   jitter, capped, Retry-After respected).
//! - A row that cannot be read or opened (wrong key, damaged column or ciphertext) never
//!   goes out: it goes to the dead letters with the reason, logged with its seq.
//! - Rows holding the same Observation (stored twice) share one Bundle entry, and its
//!   fate: all delivered, or all dead-lettered with its reason.
//! - A row received while the gateway's clock was not synchronized (`clock::hold`) is held
//!   back while the clock is still not synchronized and its wait is not over, and the
//!   passes after it stop there (oldest first; every row committed meanwhile is held too,
//!   so the loop then waits for the clock's next change or the end of the first held
//!   row's wait, not for commits). Once the clock is synchronized it goes out with its
//!   receipt time corrected (also one of an earlier boot that has an anchor); past the
//!   wait, or from an earlier boot never synchronized, marked uncertain.
//!   The gateway's Device in the Bundle says whether the clock is synchronized.
//!
//! These decisions are pure functions in [`plan`], unit-tested rule by rule; this module
//! carries them out (the outbox, the uplink, the timers, the logs).
//!
//! On shutdown the loop makes one last pass so what is already committed has its chance
//! to go out. The whole of shutdown is bounded by `drain_deadline`, counted from the
//! moment the loop is cancelled: the pass in flight and the last pass share it. When it
//! passes, a request still waiting for the server is abandoned (its rows stay in the
//! outbox and go again after the restart; the conditional creates make that retry
//! harmless). What is never abandoned is the bookkeeping after an answer: once the server
//! has acknowledged a Bundle, its rows are marked delivered before the loop stops, so a
//! service manager's stop timeout (systemd's, 5 s and more) is met without breaking
//! *delete after delivery*.

use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use tokio_util::sync::CancellationToken;

use super::{bundle, DeliveryError, Uplink};
use iomt_drivers::backoff::Backoff;
use serde_json::value::RawValue;

use crate::clock::{hold, Clock, ClockSettings, ClockSource, Release};
use crate::fhir::Device;
use crate::health::Health;
use crate::normalize::set_clock_synchronized;
use crate::outbox::{Fetched, Outbox, PendingRow};

mod chunks;
mod heartbeat;
pub mod plan;
#[cfg(test)]
mod tests;
mod window;

use plan::{Next, Pass, Phase, Step};

/// How one uplink's loop behaves.
#[derive(Debug, Clone)]
pub struct DeliverySettings {
    /// Most Observations per Bundle.
    pub batch_size: usize,
    /// First retry delay.
    pub backoff_base: Duration,
    /// Longest retry delay.
    pub backoff_max: Duration,
    /// How long the loop may go on once cancelled: the request in flight and the last
    /// pass together. Past it, a request still waiting for the server is abandoned (its
    /// rows stay queued); an acknowledged Bundle is still marked delivered.
    pub drain_deadline: Duration,
    /// The gateway's clock: rows received while it was not synchronized are held back,
    /// corrected or marked (`clock::hold`), and its transitions wake the loop. `None`:
    /// the clock is assumed synchronized.
    pub clock: Option<Arc<Clock>>,
    /// The kit's health model, told of deliveries, failures and dead letters (`None`:
    /// not reported).
    pub health: Option<Health>,
    /// With an uplink that sends heartbeats ([`Uplink::heartbeat`]), how long between
    /// them (`heartbeat.rs`); `None`: never, not even on state changes.
    pub heartbeat: Option<Duration>,
}

/// Counters of one uplink's loop.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct DeliveryStats {
    /// Bundles acknowledged.
    pub bundles: u64,
    /// Observations acknowledged.
    pub delivered: u64,
    /// Observations moved to the dead letters.
    pub dead_lettered: u64,
    /// Failed attempts.
    pub failures: u64,
}

struct Loop<'a> {
    outbox: &'a Outbox,
    uplink: &'a mut dyn Uplink,
    /// The gateway's Device, as reported with the clock synchronized and not.
    gateway: &'a [(String, Box<RawValue>); 2],
    clock: &'a Clock,
    /// When the last pass held rows back for the clock: how long until the first of them
    /// has waited `[clock] unsynchronized_wait_secs`. Until then only the clock's next
    /// change can free them (every row committed meanwhile is held too).
    held_back: Option<Duration>,
    stats: DeliveryStats,
    /// Fires when the shutdown deadline has passed: requests still waiting are abandoned.
    abandon: CancellationToken,
    health: Option<&'a Health>,
    /// The last delivery or heartbeat.
    last_contact: tokio::time::Instant,
    /// The heartbeat interval (`None`: no heartbeats).
    heartbeat_interval: Option<Duration>,
    /// The gateway's pseudonym (names it in the MQTT status message).
    gateway_pseudonym: &'a str,
    /// What heartbeats keep.
    beats: heartbeat::Beats,
    /// The next batch, read and opened while the current one is on its way (after a full
    /// batch only; see [`Loop::pass`]).
    prefetch: Option<Prefetch>,
    /// With Bundles bounded in bytes: how many rows a fetch asks for (`chunks::fit_after`).
    fit: Option<usize>,
}

/// The next batch, fetched ahead, and how many rows that fetch asked for.
struct Prefetch {
    task: tokio::task::JoinHandle<Result<Fetched, crate::outbox::OutboxError>>,
    limit: usize,
}

/// An outbox failure, for the loop: retried like a transient delivery failure.
fn outbox_failed(e: crate::outbox::OutboxError) -> DeliveryError {
    DeliveryError::Transient {
        reason: format!("outbox: {e}"),
        retry_after: None,
    }
}

impl<'a> Loop<'a> {
    /// Fetches the oldest rows and carries out the [`plan`] for them: rows that cannot be
    /// opened to the dead letters, the rest sent, split and sent again until each row is
    /// delivered or dead-lettered. A transient failure ends the pass (`Err`).
    ///
    /// A backlog is drained two batches at a time: after a full batch with nothing held
    /// for the clock, the rows after its last one are fetched and opened in a task of
    /// their own while this batch is sent, so reading the outbox overlaps the server's
    /// work. That read is older than the loop's last look at the commit notification, so
    /// a short batch fetched ahead is followed by a fresh fetch, and an empty one is
    /// replaced by one. Every row of a pass that ends well is delivered or dead-lettered,
    /// so the next pass starts after it; a pass that fails drops the prefetched rows, and
    /// the next starts again from the oldest row.
    async fn pass(&mut self, batch: usize) -> Result<Pass, DeliveryError> {
        let result = self.pass_once(batch).await;
        if result.is_err() {
            if let Some(prefetch) = self.prefetch.take() {
                prefetch.task.abort();
            }
        }
        result
    }

    async fn pass_once(&mut self, batch: usize) -> Result<Pass, DeliveryError> {
        let max_bytes = self.uplink.max_bundle_bytes();
        // Rows fetched ahead were read before the loop last looked at the commit
        // notification: fewer than asked for then does not mean nothing waits now. An
        // empty batch fetched ahead is dropped for a fresh fetch, which is the one that
        // can tell the loop that nothing waits.
        let ahead = match self.prefetch.take() {
            Some(prefetch) => Some((
                prefetch
                    .task
                    .await
                    .map_err(|e| DeliveryError::Transient {
                        reason: format!("outbox: the fetch ahead failed: {e}"),
                        retry_after: None,
                    })?
                    .map_err(outbox_failed)?,
                prefetch.limit,
            )),
            None => None,
        }
        .filter(|(fetched, _)| !fetched.rows.is_empty());
        let prefetched = ahead.is_some();
        let (mut fetched, limit) = match ahead {
            Some(ahead) => ahead,
            None => {
                let limit = self.fetch_limit(batch, max_bytes);
                let fetched = self
                    .outbox
                    .fetch(self.uplink.name(), limit)
                    .await
                    .map_err(outbox_failed)?;
                (fetched, limit)
            }
        };
        let fetched_rows = fetched.rows.len();
        let held_back = self.release_held(&mut fetched.rows);
        if fetched.rows.is_empty() {
            return Ok(Pass::Idle);
        }
        let (sendable, unreadable) = plan::triage(&fetched.rows);
        // Depth first: the first half of a split, and all that follows from it, before
        // the second; and the first of the Bundles a byte bound makes before the next.
        let mut todo: Vec<Vec<usize>> = match max_bytes {
            Some(max) => {
                let chunked = self.chunk(&fetched, &sendable, max);
                self.fit = chunks::fit_after(self.fit, &chunked, fetched_rows, limit, max, batch);
                chunked.into_iter().rev().map(|(rows, _)| rows).collect()
            }
            None => vec![sendable],
        };
        if fetched_rows >= limit && !held_back {
            if let Some(last) = fetched.rows.iter().map(|r| r.seq).max() {
                let outbox = self.outbox.clone();
                let uplink = self.uplink.name().to_string();
                let limit = self.fetch_limit(batch, max_bytes);
                self.prefetch = Some(Prefetch {
                    task: tokio::spawn(
                        async move { outbox.fetch_after(&uplink, last, limit).await },
                    ),
                    limit,
                });
            }
        }
        for (i, reason) in unreadable {
            // The reason names the row and what is wrong with it, never its content.
            tracing::error!(
                uplink = self.uplink.name(),
                seq = fetched.rows[i].seq,
                reason = %reason,
                "an outbox row cannot be opened; moved to the dead letters"
            );
            self.dead_letter(&fetched.rows[i], &reason).await?;
        }
        while let Some(rows) = todo.pop() {
            if rows.is_empty() {
                continue;
            }
            let sent: Vec<&PendingRow> = rows.iter().map(|&i| &fetched.rows[i]).collect();
            match self.send(&fetched, &sent).await {
                Step::Delivered => {
                    let done: Vec<(i64, usize)> = sent.iter().map(|r| (r.seq, r.len)).collect();
                    self.outbox
                        .delivered(self.uplink.name(), done)
                        .await
                        .map_err(outbox_failed)?;
                    self.acknowledged();
                    self.stats.bundles += 1;
                    self.stats.delivered += sent.len() as u64;
                    self.last_contact = tokio::time::Instant::now();
                    if let Some(h) = self.health {
                        h.delivered(self.uplink.name(), sent.len() as u64);
                    }
                }
                Step::DeadLetter { rows: named, rest } => {
                    self.log_rejected(sent.len(), named.len());
                    for (row, why) in &named {
                        self.dead_letter(sent[*row], why).await?;
                    }
                    todo.push(rest.into_iter().map(|r| rows[r]).collect());
                }
                Step::Split { left, right } => {
                    self.log_rejected(sent.len(), 0);
                    todo.push(rows[right].to_vec());
                    todo.push(rows[left].to_vec());
                }
                Step::Isolated { reason } => {
                    self.log_rejected(sent.len(), 0);
                    self.dead_letter(sent[0], &reason).await?;
                }
                Step::Retry(e) => return Err(e),
            }
        }
        // Rows held for the clock wait for its next change, not for another fetch. A short
        // batch fetched ahead is followed by a fresh fetch: rows committed after it was
        // read, and before this pass began, woke no one (their notification was taken
        // at the top of the loop), and would wait for the next commit.
        Ok(Pass::Progress {
            drained: held_back || (fetched_rows < limit && !prefetched),
        })
    }

    /// Rows received while the clock was not synchronized: held back (removed from
    /// `rows`), corrected, or marked uncertain, as `clock::hold` decides. Returns whether
    /// any was held back, and sets [`Loop::held_back`].
    fn release_held(&mut self, rows: &mut Vec<PendingRow>) -> bool {
        self.held_back = None;
        if !rows
            .iter()
            .any(|r| matches!(&r.observation, Ok(o) if o.hold.is_some()))
        {
            return false;
        }
        let now = self.clock.now();
        let wait_ms = i64::try_from(self.clock.wait().as_millis()).unwrap_or(i64::MAX);
        let (mut held, mut corrected, mut uncertain) = (0usize, 0usize, 0usize);
        let mut first_due = i64::MAX;
        rows.retain_mut(|r| {
            let seq = r.seq;
            let Ok(o) = &mut r.observation else {
                return true;
            };
            let Some(h) = o.hold.take() else {
                return true;
            };
            let release = hold::decide(&h, &now, wait_ms);
            if release == Release::Hold {
                held += 1;
                let waited = now.boottime_ms.saturating_sub(h.boottime_ms);
                first_due = first_due.min(wait_ms.saturating_sub(waited));
                return false;
            }
            match hold::release(&o.json, release) {
                Ok(json) => {
                    o.json = json;
                    if release == Release::Uncertain {
                        uncertain += 1;
                    } else {
                        corrected += 1;
                    }
                }
                Err(e) => r.observation = Err(format!("row {seq} cannot be released: {e}")),
            }
            true
        });
        let uplink = self.uplink.name();
        if corrected > 0 {
            tracing::info!(uplink, corrected, "readings received while the clock was not synchronized go out with their receipt time corrected");
        }
        if uncertain > 0 {
            tracing::warn!(uplink, uncertain, "readings received while the clock was not synchronized go out marked uncertain (the wait is over, or they come from an earlier boot whose clock was never synchronized)");
        }
        if held > 0 {
            tracing::debug!(
                uplink,
                held,
                "readings held back until the clock is synchronized"
            );
            let due = u64::try_from(first_due.max(0)).unwrap_or(0);
            // A millisecond late, so the first row's wait is over when the loop looks.
            self.held_back = Some(Duration::from_millis(due.saturating_add(1)));
        }
        held > 0
    }

    fn log_rejected(&self, batch: usize, named: usize) {
        tracing::warn!(
            uplink = self.uplink.name(),
            batch,
            named,
            "the server rejected entries of a bundle"
        );
    }

    async fn dead_letter(&mut self, row: &PendingRow, reason: &str) -> Result<(), DeliveryError> {
        self.outbox
            .dead_letter(self.uplink.name(), row.seq, row.len, reason)
            .await
            .map_err(outbox_failed)?;
        self.stats.dead_lettered += 1;
        if let Some(h) = self.health {
            h.dead_lettered(self.uplink.name(), 1);
        }
        Ok(())
    }

    /// Sends `rows` as one Bundle and decides, from the answer, what follows.
    async fn send(&mut self, fetched: &Fetched, rows: &[&PendingRow]) -> Step {
        let built = self.build(fetched, rows);
        // Only the wait for the server is abandoned at the shutdown deadline; once it has
        // answered, what follows (marking rows delivered) always runs to the end.
        let answer = tokio::select! {
            biased;
            answer = self.uplink.deliver(&built.bundle) => answer,
            _ = self.abandon.cancelled() => Err(DeliveryError::Transient {
                reason: ABANDONED.into(),
                retry_after: None,
            }),
        };
        plan::with_duplicates(
            plan::after_answer(rows.len(), &built.rows_of_entries, answer),
            &built.duplicates,
        )
    }

    /// The Bundle of `rows` (indexes into `rows` in [`bundle::Built`]), borrowing their
    /// resources.
    fn build<'f>(&mut self, fetched: &'f Fetched, rows: &[&'f PendingRow]) -> bundle::Built<'f>
    where
        'a: 'f,
    {
        self.beats.in_flight.clear();
        let items: Vec<bundle::Item<'_>> = rows
            .iter()
            .enumerate()
            .filter_map(|(i, r)| {
                r.observation.as_ref().ok().map(|o| bundle::Item {
                    row: i,
                    id: &o.id,
                    identifier: o.identifier.as_deref(),
                    device_id: &r.device_id,
                    json: &o.json,
                })
            })
            .collect();
        let replaced = self.with_states(&fetched.devices);
        let gateway: &'a (String, Box<RawValue>) =
            &self.gateway[usize::from(!self.clock.synchronized())];
        bundle::build(
            (gateway.0.as_str(), &gateway.1),
            &fetched.devices,
            replaced,
            &items,
        )
    }
}

/// The reason of a request abandoned at the shutdown deadline.
const ABANDONED: &str =
    "shutdown deadline reached before the server answered; the rows stay in the outbox";

/// Runs one uplink until `cancel` fires, then makes a last pass; the pass in flight and
/// the last pass end within the drain deadline. `gateway` is the gateway's own Device resource, sent in every Bundle.
pub async fn run(
    outbox: Outbox,
    mut uplink: Box<dyn Uplink>,
    settings: DeliverySettings,
    gateway: Device,
    cancel: CancellationToken,
) -> DeliveryStats {
    let gateway_pseudonym = gateway
        .identifier
        .first()
        .map(|i| i.value.clone())
        .unwrap_or_default();
    let raw = |synchronized: bool| {
        let mut device = gateway.clone();
        set_clock_synchronized(&mut device, synchronized);
        serde_json::value::to_raw_value(&device).map(|raw| (device.id.clone(), raw))
    };
    let gateway: [(String, Box<RawValue>); 2] = match (raw(true), raw(false)) {
        (Ok(synced), Ok(unsynced)) => [synced, unsynced],
        (Err(e), _) | (_, Err(e)) => {
            tracing::error!(error = %e, "the gateway's Device resource cannot be serialized; uplink not started");
            return DeliveryStats::default();
        }
    };
    let clock = settings.clock.clone().unwrap_or_else(|| {
        Clock::new(ClockSettings {
            source: ClockSource::AssumeSynchronized,
            ..ClockSettings::default()
        })
    });
    let mut clock_changes = clock.subscribe();
    let mut state_changes = settings.health.as_ref().map(|h| h.state_changes());
    let mut committed = outbox.committed();
    let mut backoff = Backoff::new(settings.backoff_base, settings.backoff_max);
    let name = uplink.name().to_string();
    let abandon = CancellationToken::new();
    // Fires `drain_deadline` after `cancel`; stopped with the loop.
    let deadline_timer = {
        let (cancel, abandon, deadline) =
            (cancel.clone(), abandon.clone(), settings.drain_deadline);
        tokio::spawn(async move {
            cancel.cancelled().await;
            tokio::time::sleep(deadline).await;
            abandon.cancel();
        })
    };
    let mut l = Loop {
        outbox: &outbox,
        uplink: uplink.as_mut(),
        gateway: &gateway,
        clock: &clock,
        held_back: None,
        stats: DeliveryStats::default(),
        abandon: abandon.clone(),
        health: settings.health.as_ref(),
        last_contact: tokio::time::Instant::now(),
        heartbeat_interval: settings.heartbeat,
        gateway_pseudonym: &gateway_pseudonym,
        beats: heartbeat::Beats::default(),
        prefetch: None,
        fit: None,
    };
    let heartbeat = settings
        .heartbeat
        .filter(|_| l.uplink.heartbeat() != super::Heartbeat::None);
    // A status message tells the broker at once that the kit is online.
    l.beats.pending = heartbeat.is_some() && l.uplink.heartbeat() == super::Heartbeat::Status;
    let batch = settings.batch_size.max(1);
    let window = l.uplink.window();
    while !cancel.is_cancelled() {
        committed.borrow_and_update();
        clock_changes.borrow_and_update();
        // A pass is never abandoned half-way: a Bundle the server acknowledged must be
        // marked delivered. Each request is bounded by the uplink's timeout.
        let outcome = match window {
            Some(window) => l.stream(batch, window, &cancel).await,
            None => l.pass(batch).await,
        };
        let jitter = rand::thread_rng().gen::<f64>();
        match plan::next(&outcome, Phase::Running, &mut backoff, jitter) {
            Next::FetchAgain { after_failures } => {
                if after_failures > 0 {
                    tracing::info!(uplink = %name, after_failures, "uplink delivering again");
                }
            }
            Next::WaitForCommit { after_failures } => {
                if after_failures > 0 {
                    tracing::info!(uplink = %name, after_failures, "uplink delivering again");
                }
                // Rows held for the clock: what is committed meanwhile is held too, so only
                // the clock's next transition (noticed by a reading or by its
                // once-a-minute look while unsynchronized) or the end of the first held
                // row's wait frees anything.
                let held_back = l.held_back;
                let beat = l.next_beat(heartbeat);
                let changes = async {
                    match state_changes.as_mut() {
                        Some(c) if heartbeat.is_some() => c.changed().await,
                        _ => std::future::pending().await,
                    }
                };
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = committed.changed(), if held_back.is_none() => {}
                    // A transition of the clock: the gateway's Device says so.
                    _ = clock_changes.changed() => l.beats.pending = heartbeat.is_some(),
                    changed = changes => match changed {
                        Ok(()) => l.beats.pending = true,
                        Err(_) => state_changes = None,
                    },
                    _ = tokio::time::sleep(held_back.unwrap_or_default()), if held_back.is_some() => {}
                    _ = tokio::time::sleep_until(beat.unwrap_or_else(tokio::time::Instant::now)), if beat.is_some() => l.heartbeat().await,
                }
            }
            Next::RetryIn(delay) => {
                l.stats.failures += 1;
                if let Some(h) = &settings.health {
                    h.delivery_failed(&name);
                }
                if let Err(e) = &outcome {
                    tracing::warn!(uplink = %name, error = %e, attempt = backoff.failures(), retry_in_ms = delay.as_millis() as u64, "delivery failed; rows kept, will retry");
                }
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = tokio::time::sleep(delay) => {}
                    _ = l.uplink.reachable() => {
                        tracing::info!(uplink = %name, "destination reachable again; retrying before the backoff is over");
                    }
                }
            }
            Next::Stop => break,
        }
    }
    // Last pass: deliver what is committed, within what is left of the deadline.
    let never = CancellationToken::new();
    while !abandon.is_cancelled() {
        let outcome = match window {
            Some(window) => l.stream(batch, window, &never).await,
            None => l.pass(batch).await,
        };
        match plan::next(&outcome, Phase::Draining, &mut backoff, 0.0) {
            Next::FetchAgain { .. } => continue,
            _ => {
                if let Err(e) = outcome {
                    tracing::warn!(uplink = %name, error = %e, "last delivery pass at shutdown failed; rows stay in the outbox");
                }
                break;
            }
        }
    }
    if abandon.is_cancelled() {
        tracing::info!(uplink = %name, "shutdown deadline reached; undelivered rows stay in the outbox");
    }
    deadline_timer.abort();
    tracing::debug!(uplink = %name, delivered = l.stats.delivered, "uplink stopped");
    l.stats
}
