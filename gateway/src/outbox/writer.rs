//! The writer task: the one owner of the database. It gathers appends and controls into
//! group commits, applies each group in one transaction on the database thread
//! (`thread.rs`), and replies.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use iomt_drivers::Committed;
use tokio::sync::{mpsc, watch};

use super::disk::Space;
use super::queued::{QueuedAppend, SealedAppend};
use super::seal::Keyring;
use super::store::Store;
use super::thread::{DbThread, Running};
use super::transaction::{apply, reply, Applied, Batch, Control, Reply};
use super::{OutboxError, OutboxSettings, WhenFull};

/// A transaction running on the database thread.
type Transaction = Running<Applied>;

pub(super) struct Writer {
    /// Shared with the handles: forgotten after a failed transaction, so the Device
    /// resources it did not store are sealed and sent again.
    pub(super) store: Option<Store>,
    /// The thread that runs the transactions.
    pub(super) thread: DbThread,
    /// The store's payload bytes, known also while a transaction is in flight.
    pub(super) payload_bytes: u64,
    pub(super) appends_open: bool,
    pub(super) control_open: bool,
    pub(super) keyring: Arc<Keyring>,
    pub(super) settings: OutboxSettings,
    pub(super) appends: mpsc::Receiver<QueuedAppend>,
    pub(super) control: mpsc::Receiver<Control>,
    pub(super) committed: watch::Sender<i64>,
    /// The uplink names the store knows (a delivery for another name is refused at once).
    pub(super) uplinks: HashSet<String>,
    /// Rows delivered and not yet deleted: their deletion rides on the next transaction
    /// that writes anyway, or is flushed on its own after [`DELETE_DELAY`].
    pub(super) deletions: Deletions,
    /// Pings that arrived while a transaction was in flight: answered when it ends.
    pub(super) pings: Vec<Reply<()>>,
    /// Transactions run so far (read or write), for [`super::Outbox::transactions`].
    pub(super) transactions: Arc<AtomicU64>,
    /// How long write transactions take, for [`super::Outbox::commit_latency`].
    pub(super) latency: Arc<super::latency::CommitLatency>,
    /// The file system's free space and the reserve (see [`super::disk`]).
    pub(super) space: Space,
    /// Appends waiting, unacknowledged, for disk space (oldest first).
    pub(super) held: Vec<SealedAppend>,
    /// The eviction episode under way, for its aggregated warnings.
    pub(super) evictions: Evictions,
}

/// How long an eviction episode's counts are gathered before the next warning, and how
/// long without an eviction ends an episode.
pub const EVICTION_REPORT: Duration = Duration::from_secs(60);

/// Evictions by the size or age cap, logged by episode: one warning when an episode
/// starts, then at most one summary per [`EVICTION_REPORT`], and a last summary when the
/// writer stops (or when a new episode starts after a quiet [`EVICTION_REPORT`]).
#[derive(Default)]
pub(super) struct Evictions {
    /// Rows evicted in this episode.
    total: u64,
    /// Rows evicted since the last warning.
    unreported: u64,
    started: Option<tokio::time::Instant>,
    reported: Option<tokio::time::Instant>,
    last: Option<tokio::time::Instant>,
}

impl Evictions {
    /// Counts `n` rows evicted by a transaction that just committed. Returns how many
    /// warnings it logged (for tests).
    pub(super) fn add(&mut self, n: u64) -> usize {
        if n == 0 {
            return 0;
        }
        let mut logged = 0;
        let now = tokio::time::Instant::now();
        if self
            .last
            .is_some_and(|last| now.duration_since(last) >= EVICTION_REPORT)
        {
            logged += self.end();
        }
        self.last = Some(now);
        self.total = self.total.saturating_add(n);
        let Some(reported) = self.reported else {
            self.started = Some(now);
            self.reported = Some(now);
            tracing::warn!(
                evicted = n,
                "outbox over its size or age limit: oldest undelivered rows evicted (further evictions are summed up at most once a minute)"
            );
            return logged + 1;
        };
        self.unreported = self.unreported.saturating_add(n);
        if now.duration_since(reported) >= EVICTION_REPORT {
            tracing::warn!(
                evicted = self.unreported,
                total = self.total,
                since_secs = self.started.map_or(0, |s| now.duration_since(s).as_secs()),
                "outbox still over its size or age limit: oldest undelivered rows evicted in the last minute"
            );
            self.unreported = 0;
            self.reported = Some(now);
            logged += 1;
        }
        logged
    }

    /// Ends the episode with its summary, if there is one. Returns how many warnings it
    /// logged (for tests).
    pub(super) fn end(&mut self) -> usize {
        let mut logged = 0;
        if let (Some(started), Some(last)) = (self.started, self.last) {
            logged = 1;
            tracing::warn!(
                evicted = self.unreported,
                total = self.total,
                during_secs = last.duration_since(started).as_secs(),
                "outbox eviction episode summary: oldest undelivered rows evicted"
            );
        }
        *self = Evictions::default();
        logged
    }
}

/// How long a delivered row may wait for its deletion to share a commit with other
/// writes. Past it, the deletions are committed on their own (one commit for all of them).
/// Short enough that `outbox status` catches up within seconds.
pub const DELETE_DELAY: Duration = Duration::from_secs(5);

/// Delivered rows waiting to be deleted, by uplink.
#[derive(Default)]
pub(super) struct Deletions {
    by_uplink: HashMap<String, Vec<(i64, usize)>>,
    rows: usize,
    /// When they must be committed at the latest.
    due: Option<tokio::time::Instant>,
}

impl Deletions {
    fn add(&mut self, uplink: String, rows: Vec<(i64, usize)>) {
        if rows.is_empty() {
            return;
        }
        self.rows += rows.len();
        self.due
            .get_or_insert_with(|| tokio::time::Instant::now() + DELETE_DELAY);
        self.by_uplink.entry(uplink).or_default().extend(rows);
    }

    /// Puts back deletions whose transaction failed.
    fn restore(&mut self, failed: Vec<(String, Vec<(i64, usize)>)>) {
        for (uplink, rows) in failed {
            self.add(uplink, rows);
        }
    }

    fn take(&mut self) -> Vec<(String, Vec<(i64, usize)>)> {
        self.rows = 0;
        self.due = None;
        self.by_uplink.drain().collect()
    }

    /// The rows of each uplink a fetch must skip (delivered, not yet deleted).
    fn skip(&self) -> HashMap<String, HashSet<i64>> {
        self.by_uplink
            .iter()
            .map(|(u, rows)| (u.clone(), rows.iter().map(|(seq, _)| *seq).collect()))
            .collect()
    }

    fn is_empty(&self) -> bool {
        self.rows == 0
    }
}

/// What [`Writer::take`] found.
enum Took {
    /// An operation (possibly answered at once, leaving the batch empty).
    Something,
    /// The deletions are due.
    DeletionsDue,
    /// The disk had no room, and now has: the held appends are in the batch.
    SpaceBack,
    /// Nothing can arrive any more.
    Closed,
}

impl Writer {
    /// Seals an append's rows and adds it to `batch`. A row that cannot be sealed (the
    /// system's random source failed) is not stored, and its reading not acknowledged.
    fn take_append(&mut self, batch: &mut Batch, a: QueuedAppend) {
        match a.seal(&self.keyring) {
            Ok(sealed) => batch.push_append(sealed),
            Err(e) => {
                tracing::error!(error = %e, "a reading could not be sealed; it is not stored and not acknowledged, so its source can send it again")
            }
        }
    }

    fn full(&self) -> bool {
        self.settings.when_full == WhenFull::Block && self.payload_bytes >= self.settings.max_bytes
    }

    /// Whether no appends are taken: the outbox is full and blocking, or the disk is full.
    fn intake_stopped(&self) -> bool {
        self.full() || self.space.is_full()
    }

    /// While the disk is full: looks again; once there is room, puts the held appends at
    /// the head of `batch`.
    fn recheck_space(&mut self, batch: &mut Batch) -> bool {
        if !self.space.recheck() {
            return false;
        }
        let mut held = std::mem::take(&mut self.held);
        let later = std::mem::take(&mut batch.appends);
        batch.rows = 0;
        held.extend(later);
        for a in held {
            batch.push_append(a);
        }
        true
    }

    /// Whether the waiting deletions must be committed now, even on their own: they are
    /// due, there are a batch's worth of them, or the outbox is full and blocking (their
    /// deletion makes room).
    fn deletions_due(&self) -> bool {
        !self.deletions.is_empty()
            && (self.deletions.rows >= self.settings.max_batch_rows
                || self.full()
                || self
                    .deletions
                    .due
                    .is_some_and(|due| tokio::time::Instant::now() >= due))
    }

    /// Takes a control. Pings and deliveries need no transaction: a ping is answered at
    /// once when no transaction is in flight (else when it ends, proving SQLite is not
    /// stuck), a delivery is recorded for a later deletion.
    fn accept(&mut self, c: Control, batch: &mut Batch, busy: bool) {
        match c {
            Control::Ping { reply } if busy => self.pings.push(reply),
            Control::Ping { reply } => {
                let _ = reply.send(Ok(()));
            }
            Control::Delivered {
                uplink,
                rows,
                reply,
            } => {
                if self.uplinks.contains(&uplink) {
                    self.deletions.add(uplink, rows);
                    let _ = reply.send(Ok(()));
                } else {
                    let _ = reply.send(Err(OutboxError::UnknownUplink(uplink)));
                }
            }
            c => batch.controls.push(c),
        }
    }

    /// Takes one operation, waiting if none is there yet (and at most until the waiting
    /// deletions are due).
    async fn take(&mut self, batch: &mut Batch) -> Took {
        let take_appends = self.appends_open && !self.intake_stopped();
        if !take_appends && !self.control_open {
            return Took::Closed;
        }
        let due = self.deletions.due;
        let recheck = self.space.next_check();
        tokio::select! {
            a = self.appends.recv(), if take_appends => match a {
                Some(a) => self.take_append(batch, a),
                None => self.appends_open = false,
            },
            c = self.control.recv(), if self.control_open => match c {
                Some(c) => self.accept(c, batch, false),
                None => self.control_open = false,
            },
            _ = sleep_until_some(due), if due.is_some() => return Took::DeletionsDue,
            _ = sleep_until_some(recheck), if recheck.is_some() => {
                if self.recheck_space(batch) {
                    return Took::SpaceBack;
                }
            }
        }
        Took::Something
    }

    /// Takes what is waiting right now, without waiting.
    fn take_ready(&mut self, batch: &mut Batch) {
        while let Ok(c) = self.control.try_recv() {
            self.accept(c, batch, false);
        }
        while batch.rows < self.settings.max_batch_rows
            && self.appends_open
            && !self.intake_stopped()
        {
            match self.appends.try_recv() {
                Ok(a) => self.take_append(batch, a),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => self.appends_open = false,
            }
        }
    }

    /// The writer loop. While one transaction is being applied on the database thread, the
    /// next batch is gathered, so the database is never idle under load; with no load, a
    /// batch waits at most `commit_window` for company. With nothing to do it waits on
    /// its channels (and on the deletions' deadline): no timer, no SQLite work.
    pub(super) async fn run(mut self) {
        let mut in_flight: Option<Transaction> = None;
        let mut batch = Batch::default();
        loop {
            if let Some(task) = in_flight.as_mut() {
                // Gather while the previous transaction is applied.
                let more = batch.rows < self.settings.max_batch_rows;
                let take_appends = more && self.appends_open && !self.intake_stopped();
                tokio::select! {
                    done = task => {
                        in_flight = None;
                        match done {
                            Ok(applied) => self.finish(applied),
                            Err(e) => {
                                tracing::error!(error = %e, "outbox transaction failed on its thread; the outbox stops");
                                return;
                            }
                        }
                    }
                    a = self.appends.recv(), if take_appends => match a {
                        Some(a) => self.take_append(&mut batch, a),
                        None => self.appends_open = false,
                    },
                    c = self.control.recv(), if self.control_open => match c {
                        Some(c) => self.accept(c, &mut batch, true),
                        None => self.control_open = false,
                    },
                }
                continue;
            }
            if batch.is_empty() {
                if let Took::Closed = self.take(&mut batch).await {
                    break;
                }
                if batch.is_empty() && !self.deletions_due() {
                    continue;
                }
                // Alone so far: wait for company, up to the commit window when a source
                // waits for this commit, else up to the quiet commit window. Reads (a
                // delivery loop's fetch) do not wait for it: they are answered apart; a
                // write that cannot wait (a dead letter, a flush) ends the window.
                let opened = tokio::time::Instant::now();
                loop {
                    self.take_ready(&mut batch);
                    if batch.rows > 0 {
                        self.answer_reads_now(&mut batch).await;
                    }
                    let deadline = opened
                        + if batch.source_waits {
                            self.settings.commit_window
                        } else {
                            self.settings.quiet_commit_window
                        };
                    if batch.rows >= self.settings.max_batch_rows
                        || batch.rows == 0
                        || !batch.controls.is_empty()
                        || tokio::time::Instant::now() >= deadline
                    {
                        break;
                    }
                    if !self.appends_open || self.intake_stopped() {
                        break;
                    }
                    tokio::select! {
                        a = self.appends.recv() => match a {
                            Some(a) => self.take_append(&mut batch, a),
                            None => self.appends_open = false,
                        },
                        c = self.control.recv(), if self.control_open => match c {
                            Some(c) => self.accept(c, &mut batch, false),
                            None => self.control_open = false,
                        },
                        _ = tokio::time::sleep_until(deadline) => break,
                    }
                }
            } else {
                self.take_ready(&mut batch);
            }
            if let Some(task) = self.start(&mut batch, false) {
                in_flight = Some(task);
            }
        }
        if let Some(task) = in_flight {
            if let Ok(applied) = task.await {
                self.finish(applied);
            }
        }
        // The deletions still waiting, and what arrived meanwhile, in one last transaction.
        if let Some(task) = self.start(&mut batch, true) {
            if let Ok(applied) = task.await {
                self.finish(applied);
            }
        }
        self.evictions.end();
        if !batch.is_empty() || !self.held.is_empty() {
            tracing::warn!(
                "outbox full at shutdown: waiting readings were not stored and not acknowledged"
            );
        }
        tracing::debug!("outbox writer stopped");
    }

    /// Takes the reads (fetches, status) out of `batch` and answers them now, in a
    /// transaction of their own, while the batch's readings go on waiting for company.
    async fn answer_reads_now(&mut self, batch: &mut Batch) {
        let (reads, rest): (Vec<Control>, Vec<Control>) = std::mem::take(&mut batch.controls)
            .into_iter()
            .partition(|c| matches!(c, Control::Fetch { .. } | Control::Status { .. }));
        batch.controls = rest;
        if reads.is_empty() {
            return;
        }
        let mut alone = Batch {
            controls: reads,
            ..Batch::default()
        };
        if let Some(task) = self.start(&mut alone, false) {
            match task.await {
                Ok(applied) => self.finish(applied),
                Err(e) => tracing::error!(error = %e, "outbox read failed on its thread"),
            }
        }
    }

    /// Starts the transaction of `batch` on the database thread, carrying the waiting
    /// deletions when it writes anyway, when they are due, or when `flush` is set.
    /// Returns `None` when there is nothing to do.
    fn start(&mut self, batch: &mut Batch, flush: bool) -> Option<Transaction> {
        // Readings are stored only when the file system has room for them; else they wait,
        // unacknowledged, and the rest of the batch (deletions above all) goes on.
        if !batch.appends.is_empty() && !self.space.room_for_appends() {
            self.held.append(&mut batch.appends);
            batch.rows = 0;
        }
        let carry = flush || batch.writes() || self.deletions_due();
        let flushing = carry && !self.deletions.is_empty();
        if batch.is_empty() && !flushing {
            return None;
        }
        let (deletions, skip) = if carry {
            (self.deletions.take(), HashMap::new())
        } else {
            (Vec::new(), self.deletions.skip())
        };
        let store = self.store.take()?;
        let keyring = self.keyring.clone();
        let settings = self.settings.clone();
        let work = std::mem::take(batch);
        self.transactions.fetch_add(1, Ordering::Relaxed);
        let latency = (work.writes() || !deletions.is_empty()).then(|| self.latency.clone());
        Some(self.thread.run(move || {
            let started = std::time::Instant::now();
            let applied = apply(store, &keyring, &settings, work, deletions, &skip);
            if let Some(latency) = latency {
                latency.record(started.elapsed());
            }
            applied
        }))
    }

    /// Sends the replies of an applied transaction.
    fn finish(&mut self, applied: Applied) {
        self.payload_bytes = applied.store.payload_bytes();
        self.store = Some(applied.store);
        if let Some(e) = &applied.error {
            self.deletions.restore(applied.deletions);
            if e.is_disk_full() {
                // Logged once per episode; the readings wait for space, unacknowledged.
                let first = !self.space.is_full();
                self.space.sqlite_full(&e.to_string());
                if !first {
                    tracing::debug!(error = %e, "outbox transaction failed: the disk is still full");
                }
                let mut unstored = applied.unstored;
                unstored.append(&mut self.held);
                self.held = unstored;
            } else {
                tracing::error!(error = %e, "outbox transaction failed; its readings are not acknowledged");
            }
        }
        if applied.error.is_none() {
            self.evictions.add(applied.evicted);
        }
        for (ack, ids) in applied.acks {
            let _ = ack.send(Committed { observations: ids });
        }
        for (control, result) in applied.controls {
            reply(control, result, applied.error.as_ref());
        }
        for ping in self.pings.drain(..) {
            let _ = ping.send(match &applied.error {
                None => Ok(()),
                Some(e) => Err(e.again()),
            });
        }
        if applied.error.is_none() {
            // Only new rows wake the delivery loops: a transaction that committed none
            // (a fetch, a deletion, a dead letter) changes nothing they could send.
            self.committed.send_if_modified(|last| {
                let newer = applied.last_seq > *last;
                if newer {
                    *last = applied.last_seq;
                }
                newer
            });
        }
    }
}

/// Sleeps until `at` (never returns for `None`; the caller guards the branch).
async fn sleep_until_some(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
