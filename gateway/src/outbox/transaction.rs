//! One transaction of the writer: what a batch is, how it is applied on the blocking
//! thread (deletions first, then appends and controls, then the size and age caps), and
//! the replies it owes.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;

use iomt_drivers::Committed;
use tokio::sync::oneshot;

use super::payload::{device_aad, pack, reason_aad};
use super::queued::SealedAppend;
use super::seal::{Keyring, Sealed};
use super::store::{FetchedRows, Status, Store, StoredDevice};
use super::{OutboxError, OutboxSettings, WhenFull};

/// A reply owed to a caller of the outbox handle.
pub(super) type Reply<T> = oneshot::Sender<Result<T, OutboxError>>;

/// An operation of the outbox handle that goes through the writer.
pub(super) enum Control {
    Fetch {
        uplink: String,
        after: i64,
        limit: usize,
        reply: Reply<FetchedRows>,
    },
    Delivered {
        uplink: String,
        rows: Vec<(i64, usize)>,
        reply: Reply<()>,
    },
    DeadLetter {
        uplink: String,
        seq: i64,
        len: usize,
        reason: Vec<u8>,
        reply: Reply<()>,
    },
    Status {
        configured: Vec<String>,
        reply: Reply<Status>,
    },
    Ping {
        reply: Reply<()>,
    },
    /// Commit what is waiting now, without waiting for company.
    Flush {
        reply: Reply<()>,
    },
    IngestDeadLetter {
        at_ms: i64,
        transport: String,
        size: usize,
        plain: Vec<u8>,
        limit: usize,
        reply: Reply<()>,
    },
}

/// What one transaction did, for the replies.
pub(super) struct Applied {
    pub(super) store: Store,
    pub(super) acks: Vec<(oneshot::Sender<Committed>, Vec<String>)>,
    /// The appends of a failed transaction, their acknowledgements not sent: the writer
    /// keeps them when the disk is full, else drops them (not acknowledged).
    pub(super) unstored: Vec<SealedAppend>,
    pub(super) controls: Vec<(Control, Option<Result<ControlResult, String>>)>,
    /// The deletions it carried (put back when it failed).
    pub(super) deletions: Vec<(String, Vec<(i64, usize)>)>,
    pub(super) error: Option<OutboxError>,
    pub(super) evicted: u64,
    pub(super) last_seq: i64,
}

pub(super) enum ControlResult {
    Fetched(FetchedRows),
    Done,
    Status(Box<Status>),
}

/// Operations gathered for one transaction.
#[derive(Default)]
pub(super) struct Batch {
    pub(super) appends: Vec<SealedAppend>,
    pub(super) controls: Vec<Control>,
    pub(super) rows: usize,
    /// Whether a source waits for this batch's commit.
    pub(super) source_waits: bool,
}

impl Batch {
    pub(super) fn push_append(&mut self, a: SealedAppend) {
        self.rows += a.rows.len();
        self.source_waits |= a.source_waits;
        self.appends.push(a);
    }

    pub(super) fn is_empty(&self) -> bool {
        self.appends.is_empty() && self.controls.is_empty()
    }

    /// Whether its transaction writes anyway (rows, dead letters), or reports counts
    /// (which must not include rows already delivered).
    pub(super) fn writes(&self) -> bool {
        !self.appends.is_empty()
            || self.controls.iter().any(|c| {
                matches!(
                    c,
                    Control::DeadLetter { .. }
                        | Control::IngestDeadLetter { .. }
                        | Control::Status { .. }
                        | Control::Flush { .. }
                )
            })
    }
}

/// Sends the reply `control` is owed: its result, or `failure` (the transaction's own
/// error, SQLite's words kept) when the transaction failed.
pub(super) fn reply(
    control: Control,
    result: Option<Result<ControlResult, String>>,
    failure: Option<&OutboxError>,
) {
    let fail = || {
        failure
            .map(OutboxError::again)
            .unwrap_or_else(|| OutboxError::Sqlite {
                path: PathBuf::from("outbox"),
                reason: "the operation was not applied".into(),
            })
    };
    match (control, result) {
        (Control::Fetch { reply, .. }, Some(Ok(ControlResult::Fetched(f)))) => {
            let _ = reply.send(Ok(f));
        }
        (Control::Status { reply, .. }, Some(Ok(ControlResult::Status(s)))) => {
            let _ = reply.send(Ok(*s));
        }
        (
            Control::Delivered { reply, .. }
            | Control::DeadLetter { reply, .. }
            | Control::Ping { reply }
            | Control::Flush { reply }
            | Control::IngestDeadLetter { reply, .. },
            Some(Ok(ControlResult::Done)),
        ) => {
            let _ = reply.send(Ok(()));
        }
        (Control::Fetch { reply, .. }, r) => {
            let _ = reply.send(Err(r
                .and_then(|r| r.err())
                .map(|m| OutboxError::Sqlite {
                    path: PathBuf::new(),
                    reason: m,
                })
                .unwrap_or_else(fail)));
        }
        (Control::Status { reply, .. }, r) => {
            let _ = reply.send(Err(r
                .and_then(|r| r.err())
                .map(|m| OutboxError::Sqlite {
                    path: PathBuf::new(),
                    reason: m,
                })
                .unwrap_or_else(fail)));
        }
        (
            Control::Delivered { reply, .. }
            | Control::DeadLetter { reply, .. }
            | Control::Ping { reply }
            | Control::Flush { reply }
            | Control::IngestDeadLetter { reply, .. },
            r,
        ) => {
            let _ = reply.send(Err(r
                .and_then(|r| r.err())
                .map(|m| OutboxError::Sqlite {
                    path: PathBuf::new(),
                    reason: m,
                })
                .unwrap_or_else(fail)));
        }
    }
}

/// Applies one group of operations in one transaction (on the database thread).
///
/// The waiting `deletions` come first, so the size cap counts only rows still queued;
/// a fetch skips the rows of `skip` (delivered, their deletion still waiting). A batch
/// that writes nothing and has no age cap to enforce runs without a write transaction.
pub(super) fn apply(
    mut store: Store,
    keyring: &Keyring,
    settings: &OutboxSettings,
    batch: Batch,
    deletions: Vec<(String, Vec<(i64, usize)>)>,
    skip: &HashMap<String, HashSet<i64>>,
) -> Applied {
    let Batch {
        appends, controls, ..
    } = batch;
    let read_only = appends.is_empty()
        && deletions.is_empty()
        && settings.max_age.is_none()
        && controls
            .iter()
            .all(|c| matches!(c, Control::Fetch { .. } | Control::Status { .. }));
    let mut applied_controls = Vec::with_capacity(controls.len());
    let mut acks = Vec::new();
    let mut evicted = 0;
    let mut ingest_evicted = 0;
    let mut shrink = false;
    let result = (|| -> Result<(), OutboxError> {
        if read_only {
            for c in controls {
                let r = match &c {
                    Control::Fetch {
                        uplink,
                        after,
                        limit,
                        ..
                    } => store
                        .fetch(uplink, *after, *limit, skip.get(uplink))
                        .map(ControlResult::Fetched),
                    Control::Status { configured, .. } => store
                        .status(configured)
                        .map(|s| ControlResult::Status(Box::new(s))),
                    _ => Ok(ControlResult::Done),
                };
                applied_controls.push((c, Some(r.map_err(|e| e.to_string()))));
            }
            return Ok(());
        }
        store.begin()?;
        let now = chrono::Utc::now().timestamp_millis();
        for (uplink, rows) in &deletions {
            store.delivered(uplink, rows)?;
        }
        if !deletions.is_empty() {
            shrink = store.shrink_due()?;
        }
        for a in &appends {
            if let Some((id, json)) = a
                .device
                .as_ref()
                .filter(|(id, json)| !store.has_device(id, json.fingerprint()))
            {
                let sealed = keyring.seal_owned(pack(json.json()), &device_aad(id))?;
                store.put_device(
                    &StoredDevice {
                        id: id.clone(),
                        sealed,
                    },
                    Some(json.fingerprint()),
                )?;
            }
            for (_, row) in &a.rows {
                store.insert(row)?;
            }
        }
        for c in controls {
            let r = match &c {
                Control::Fetch {
                    uplink,
                    after,
                    limit,
                    ..
                } => store
                    .fetch(uplink, *after, *limit, skip.get(uplink))
                    .map(ControlResult::Fetched),
                Control::Delivered { uplink, rows, .. } => {
                    store.delivered(uplink, rows).map(|_| ControlResult::Done)
                }
                Control::DeadLetter {
                    uplink,
                    seq,
                    len,
                    reason,
                    ..
                } => keyring
                    .seal(reason, &reason_aad(uplink, *seq))
                    .map_err(OutboxError::from)
                    .and_then(|sealed: Sealed| {
                        store.dead_letter(keyring, uplink, *seq, *len, &sealed)
                    })
                    .map(|_| ControlResult::Done),
                Control::Status { configured, .. } => store
                    .status(configured)
                    .map(|s| ControlResult::Status(Box::new(s))),
                Control::Ping { .. } | Control::Flush { .. } => Ok(ControlResult::Done),
                Control::IngestDeadLetter {
                    at_ms,
                    transport,
                    size,
                    plain,
                    limit,
                    ..
                } => store
                    .ingest_dead_letter(keyring, *at_ms, transport, *size, plain, *limit)
                    .map(|evicted| {
                        ingest_evicted += evicted;
                        ControlResult::Done
                    }),
            };
            applied_controls.push((c, Some(r.map_err(|e| e.to_string()))));
        }
        let min_created = settings
            .max_age
            .map(|age| now.saturating_sub(i64::try_from(age.as_millis()).unwrap_or(i64::MAX)));
        if settings.when_full == WhenFull::EvictOldest || min_created.is_some() {
            let cap = if settings.when_full == WhenFull::EvictOldest {
                settings.max_bytes
            } else {
                u64::MAX
            };
            evicted = store.evict(cap, min_created)?;
        }
        let deleted_rows = !deletions.is_empty()
            || evicted > 0
            || applied_controls
                .iter()
                .any(|(c, _)| matches!(c, Control::Delivered { .. }));
        if deleted_rows {
            store.prune_devices()?;
        }
        store.commit()
    })();
    if shrink && result.is_ok() {
        // After the commit (VACUUM runs outside a transaction); a failure (no room for the
        // copy) costs nothing but the disk the file keeps until the next drain.
        match store.shrink() {
            Ok(pages) => tracing::debug!(pages, "outbox: free pages given back after a drain"),
            Err(e) => {
                tracing::warn!(error = %e, "outbox: could not give the free pages of a drained backlog back to the file system; the file keeps its size")
            }
        }
    }
    let last_seq = store.next_seq() - 1;
    let error = result.err();
    let mut unstored = Vec::new();
    if error.is_none() {
        for a in appends {
            if let Some(ack) = a.ack {
                acks.push((ack, a.rows.into_iter().map(|(id, _)| id).collect()));
            }
        }
    } else {
        unstored = appends;
    }
    if error.is_none() && ingest_evicted > 0 {
        tracing::warn!(
            evicted = ingest_evicted,
            "ingest dead letters over their limit: the oldest were deleted"
        );
    }
    if error.is_some() && !read_only {
        store.rollback();
        acks.clear();
        for (_, r) in applied_controls.iter_mut() {
            *r = None;
        }
    }
    Applied {
        store,
        acks,
        unstored,
        controls: applied_controls,
        deletions,
        error,
        evicted,
        last_seq,
    }
}
