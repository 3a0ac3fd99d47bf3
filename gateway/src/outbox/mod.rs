//! The outbox: an encrypted SQLite store-and-forward queue. Nothing measured is lost
//! while the link is down, the power is cut, or the process crashes.
//!
//! # Design
//!
//! **Schema** (`store.rs`). `rows` holds one sealed Observation per row, keyed by `seq`
//! (insertion order, so delivery is oldest first), with the id of the Device resource it
//! references, its enqueue time, the key id it was sealed with, and `pending`: a bitmask
//! of the uplinks that still have to deliver it (`uplinks` maps names to bits). Device
//! resources are stored once in `devices`, and removed once no row and no dead letter
//! references them (`store/devices.rs`: when a transaction that deleted rows leaves
//! `rows` empty, else at most once a minute). `dead_letters` keeps rows an uplink rejected
//! for good, with the server's reason (sealed too). `keys` records each storage key's id
//! and check value; `counters` and `uplinks` keep totals for `outbox status`.
//! `ingest_dead_letters` keeps messages a driver refused (an MQTT payload that is not JSON,
//! lacks the profile's fields, has a wrong type, or is too large): the time, transport and
//! size in clear, and the source (topic), reason and payload (cut to the size limit)
//! sealed, bound to the row id. It holds at most `limit` messages (`[mqtt]
//! dead_letter_limit`); the oldest beyond it are deleted and counted
//! (`ingest_dead_letters_evicted`) with a warning. The table was added after schema 1
//! shipped and is created when missing, so older gateways still open the file.
//!
//! **Sealing** (`seal.rs`). Every payload is compressed (LZ4, a leading format byte) and
//! then sealed with AES-256-GCM under a key derived
//! by HKDF-SHA256 from the 32-byte storage key file. The associated data binds each
//! ciphertext to its identity (`row` + seq + device id; `device` + id; `reason` + uplink +
//! seq), so a ciphertext moved to another row does not open. Keys never live in the
//! database: only their ids and check values do. Who seals: an append travels to the
//! writer task plain; the task compresses and seals its rows as it takes it, while the
//! previous transaction runs on the database thread (so the pipeline's task only
//! normalizes, and sealing still overlaps the commit before it); a Device resource is
//! sealed only by the transaction that stores it. Measured (docs/benchmarks.md): with
//! sealing on the pipeline's task, that task was the bottleneck of ingest (one core
//! saturated, LZ4 a tenth of it) while the writer idled half the time.
//!
//! **Threat model of the file** (docs/security.md). Who can write the database can also
//! read the storage key: under systemd both belong to the service user (the state
//! directory is 0700, the key 0600, and the database, its -wal and -shm are created 0600
//! whatever the umask), and root, or whoever holds the SD card, reads both. Sealing
//! therefore promises two things, and no more: a copy of the database alone (a backup
//! without the keys, a file sent for support) reveals no reading and no identifier; and a
//! ciphertext damaged, or moved to another row, Device or dead letter, never opens, so it
//! is never sent as another device's or patient's reading. What is bound is what does not
//! change: the row's seq and its device id (`payload.rs`). The queue's metadata (a row's
//! `pending` bits, its `created_ms`, the counters, which rows exist) is not authenticated,
//! by decision: `pending` changes at every delivery, so binding it would mean sealing the
//! row again at each one (the SD card writes group commit saves), and no associated data
//! can prove a deleted row existed. A writer of the file could as well delete rows, and
//! can read the key; authenticating the rest would add cost and no protection against any
//! writer there is. Against someone who holds the card, keep the keys off it (see
//! docs/security.md).
//!
//! **Pseudonymization key** (`store/pseudonym_key.rs`). The `meta` table records a
//! fingerprint of the pseudonymization key at the first start (an HMAC of a fixed label,
//! never the key); a later start with another key is refused, since every pseudonym would
//! change, until `iomt-gateway outbox accept-pseudonym-key` accepts it (recorded, and
//! warned once at the next start).
//!
//! **Key rotation.** `iomt-gateway keygen --rotate` moves the current key to
//! `<key file>.retired` and writes a new one. New rows use the new key; rows sealed with a
//! retired key stay readable until delivered. What is kept for good (Device resources,
//! dead letters, refused messages) is sealed again under the current key each time the
//! outbox opens (`store/reseal.rs`), so after the restart only queued rows still need a
//! retired key. `outbox status` lists every key id still sealing something, in every
//! table, so a retired key file can be deleted once none of its ids remain (a stored
//! value too damaged to open keeps its key listed). A dead letter's `key_id` is its
//! reason's key; its payload is sealed again under that key when it opens (a damaged
//! one is kept as it was).
//!
//! **Damaged rows.** A fetch reads each column by its type: a row whose device id is not
//! UTF-8 text, whose key id is not an integer, or whose ciphertext does not open goes to
//! the dead letters with a reason naming the row and what is wrong (never its content),
//! and the rows behind it flow; a damaged enqueue time only blinds the age cap to that
//! row. Key ids that are not integers are ignored by the open checks.
//!
//! **Invariants.**
//! - *Acknowledge after commit*: an appended reading's acknowledgement is sent only after
//!   the transaction holding its rows has committed (`synchronous = FULL` in WAL mode, so
//!   a commit is on disk when it returns).
//! - *Delete after delivery*: a row leaves `rows` only when every uplink it waits for has
//!   acknowledged it (or dead-lettered it), or when the size/age cap evicts it.
//! - *Refuse, never reset*: a file that is not an SQLite database, a damaged database, a
//!   newer schema, or a wrong key makes [`Outbox::open`] fail with a message saying what
//!   is wrong and what to do. Nothing is written to such a file (checkpoint-on-close is
//!   off while checking), so it stays byte-identical for recovery.
//!
//! **Group commit.** One writer task owns the database. It takes every operation that is
//! waiting (appends from the pipeline, acknowledgements and fetches from the uplinks), up
//! to `max_batch_rows` rows or `commit_window` after the first, applies them in one
//! transaction on the database thread (`thread.rs`), commits once, then replies. Under load
//! hundreds of readings share a commit. At low rates the wait for company depends on who
//! waits for the commit: a source that does (an MQTT message's PUBACK, a glucose record
//! marked as fetched) gets its answer within `commit_window` (20 ms by default); a reading
//! nobody waits for (a BLE notification, a serial line, the simulator) may wait
//! `quiet_commit_window` (2 s by default), so that at one reading a second two or three
//! share a commit. The price is what a power cut can take: at most that window of readings
//! that were never acknowledged to anyone.
//!
//! **Deletions ride on other commits.** On an SD card the cost is per commit and per
//! page touched, not per byte: each commit appends every page it changed to the WAL and
//! waits for an fsync. Deleting each delivered row in a commit of its own doubled the
//! commits of a kit that reads one value at a time. So a delivery is recorded in memory and
//! answered at once; its deletion is carried by the next transaction that writes anyway
//! (an append, a dead letter), or, when none comes, committed on its own
//! [`DELETE_DELAY`] later (one commit for all that waited), at once when a batch's worth
//! waits or a blocking outbox is full, and at shutdown. Until then a fetch passes over
//! those rows, so nothing is sent twice while the gateway runs; a crash in between loses
//! only the deletion, and the rows go out again after the restart, which the conditional
//! creates on deterministic identifiers absorb (*delete after delivery* still holds: a
//! row is never deleted before its delivery). `outbox status`, read from another process,
//! counts such rows as queued for at most [`DELETE_DELAY`].
//!
//! **At rest.** The writer waits on its channels and on the deletions' deadline: with
//! nothing to do it runs no timer and no SQLite statement. The commit notification that
//! wakes the delivery loops ([`Outbox::committed`]) changes only when new rows are
//! committed, not after a fetch, a deletion or a dead letter, so a loop never wakes itself.
//! A ping (the watchdog's health check) needs no transaction: it is answered at once, or,
//! while a transaction is in flight, when that one ends (a writer stuck in SQLite never
//! answers). A batch of fetches alone runs without a write transaction.
//!
//! **Limits.** `max_bytes` caps the sealed payload bytes, `max_age` the age of a row.
//! When full, `when_full = "evict-oldest"` (the default) deletes the oldest rows, counts
//! them in `outbox status` and logs one warning per episode, then a count at most once a
//! minute; `when_full = "block"` stops taking appends until deliveries make room, which
//! blocks the pipeline and, through the bounded channels, the drivers. The files take
//! more than the payload: about 1.5 × for the database, up to [`store::WAL_LIMIT_BYTES`]
//! of WAL, the reserve and the floor ([`disk::needed_bytes`]; checked at start).
//!
//! **Disk full** (`disk.rs`). Below a free-space floor (one `statvfs` per transaction
//! that stores readings), or when SQLite answers "database or disk is full", appends
//! wait unacknowledged, a reserve file is released so deletions commit, and the writer
//! looks again every few seconds until space returns; one log line each way.
//!
//! **Shrinking.** A commit that deleted rows and left fifteen sixteenths of the file free
//! (at least 4 MiB) is followed by a `VACUUM` ([`store::Store::shrink`]): the few live
//! pages are copied into a smaller file, so a drained backlog does not keep its disk for
//! ever and an idle gateway never wakes for it. Not `auto_vacuum`: its pointer-map pages
//! made every deletion commit write twice the pages (`pipeline` benchmark, drain: 2,848
//! against 1,477 bytes written per delivered Observation, and a quarter slower); files
//! created with it (before this) keep it, and shrink the same way.
//!
//! **Per device**, memory holds at most [`store::KNOWN_DEVICES`] ids (a
//! least-recently-used cache; a forgotten device's resource is simply written again), and
//! the `devices` table the Devices that queued rows and dead letters reference, plus at
//! most a minute of traffic's while rows are queued.

pub mod config;
pub mod disk;
mod error;
mod ingest;
pub mod latency;
mod opened;
mod payload;
mod queued;
pub mod seal;
pub mod store;
mod thread;
mod transaction;
mod writer;

pub use error::OutboxError;
pub use ingest::{read_ingest_dead_letters, IngestDeadLetter};
pub use opened::{DeviceJson, OPENED_DEVICES};
pub use payload::{device_aad, pack, reason_aad, row_aad, unpack};
pub use queued::DeviceJsonIn;
pub use store::accept_pseudonym_key;
pub use writer::DELETE_DELAY;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use iomt_drivers::Committed;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use payload::observation_from;
use queued::{QueuedAppend, QueuedRow};
use seal::Keyring;
use store::{FetchedDevice, Status, Store};
use transaction::{Control, Reply};
use writer::Writer;

/// What to do when the outbox is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum WhenFull {
    /// Delete the oldest rows, counted and logged (the default).
    #[default]
    EvictOldest,
    /// Take no new rows until deliveries make room (backpressure to the devices).
    Block,
}

/// Outbox settings.
#[derive(Debug, Clone)]
pub struct OutboxSettings {
    /// The database file.
    pub path: PathBuf,
    /// Most sealed payload bytes kept.
    pub max_bytes: u64,
    /// Rows older than this are evicted, if set.
    pub max_age: Option<Duration>,
    /// What to do when full.
    pub when_full: WhenFull,
    /// Longest wait for more operations before a commit when a source waits for the
    /// commit (an MQTT PUBACK, a glucose record).
    pub commit_window: Duration,
    /// Longest wait for company when no source waits (BLE notifications, serial devices,
    /// the simulator): at low rates several readings then share one commit. At least
    /// `commit_window`.
    pub quiet_commit_window: Duration,
    /// Most rows in one transaction.
    pub max_batch_rows: usize,
    /// The fingerprint of the pseudonymization key
    /// ([`crate::pseudonym::Pseudonymizer::fingerprint`]): recorded at the first open,
    /// and a different one refused later (`store/pseudonym_key.rs`). `None`: not checked.
    pub pseudonym_key: Option<String>,
}

/// Observations of one reading to store, with the Device resource they reference.
#[derive(Debug)]
pub struct Append {
    /// The Device resource's id.
    pub device_id: String,
    /// The Device resource (JSON), shared: the writer seals and stores it only when it
    /// does not hold that Device already (the same text), so most appends never copy or
    /// seal it.
    pub device_json: DeviceJsonIn,
    /// (identifier, Observation JSON) pairs.
    pub observations: Vec<(String, Vec<u8>)>,
    /// Acknowledged with the identifiers once committed.
    pub ack: Option<oneshot::Sender<Committed>>,
    /// Whether the source waits for `ack` (see `OutboxSettings::commit_window`).
    pub source_waits: bool,
}

/// A row fetched for delivery, opened.
#[derive(Debug, Clone)]
pub struct PendingRow {
    /// Its sequence number.
    pub seq: i64,
    /// Its sealed length (for accounting).
    pub len: usize,
    /// The Device resource id it references.
    pub device_id: String,
    /// The Observation, or why it cannot be opened.
    pub observation: Result<StoredObservation, String>,
}

/// An opened Observation: its JSON text and the fields a Bundle entry needs.
#[derive(Debug, Clone)]
pub struct StoredObservation {
    /// The Observation's id.
    pub id: String,
    /// Its first identifier as `system|value`.
    pub identifier: Option<String>,
    /// Set when it was received while the clock was not synchronized: the delivery loop
    /// holds it back, corrects it or marks it (`clock::hold`).
    pub hold: Option<crate::clock::TimeHold>,
    /// The JSON text, as stored.
    pub json: Box<serde_json::value::RawValue>,
}

/// A batch fetched for one uplink.
#[derive(Debug, Clone, Default)]
pub struct Fetched {
    /// Rows, oldest first.
    pub rows: Vec<PendingRow>,
    /// Device resources (JSON text) by id.
    pub devices: HashMap<String, DeviceJson>,
}

/// A handle to the outbox. Cheap to clone; the writer stops when every handle is gone.
#[derive(Clone)]
pub struct Outbox {
    appends: mpsc::Sender<QueuedAppend>,
    control: mpsc::Sender<Control>,
    keyring: Arc<Keyring>,
    committed: watch::Receiver<i64>,
    /// The next sequence number to give out, here, in append order and never twice (a
    /// row's associated data binds it; the writer task seals with it).
    next_seq: Arc<AtomicI64>,
    /// Transactions the writer has run.
    transactions: Arc<AtomicU64>,
    /// How long its write transactions took.
    latency: Arc<latency::CommitLatency>,
    /// Device resources opened for earlier batches.
    opened: Arc<opened::OpenedDevices>,
}

impl Outbox {
    /// Opens the database (see the module doc for what is refused) and starts the writer
    /// task. Returns the handle and the writer's join handle.
    pub async fn open(
        settings: OutboxSettings,
        keyring: Arc<Keyring>,
        uplinks: Vec<String>,
    ) -> Result<(Outbox, JoinHandle<()>), OutboxError> {
        let path = settings.path.clone();
        let ring = keyring.clone();
        let max_bytes = settings.max_bytes;
        let pseudonym_key = settings.pseudonym_key.clone();
        // The unit tests pause tokio's clock around the outbox (`thread.rs`).
        #[cfg(not(test))]
        let thread = thread::DbThread::spawn();
        #[cfg(test)]
        let thread = thread::DbThread::spawn_for_paused_clock();
        let thread = thread.map_err(|e| OutboxError::Sqlite {
            path: settings.path.clone(),
            reason: format!("cannot start the database thread: {e}"),
        })?;
        let (mut store, space) = thread
            .run(move || {
                let mut space = disk::Space::open(&path);
                let mut store = Store::open(&path, &ring, &uplinks)?;
                if let Some(fingerprint) = &pseudonym_key {
                    store.check_pseudonym_key(fingerprint)?;
                }
                space.ensure_reserve();
                disk::check_cap(&path, max_bytes);
                Ok::<_, OutboxError>((store, space))
            })
            .await
            .map_err(|e| OutboxError::Sqlite {
                path: settings.path.clone(),
                reason: format!("the opening failed on the database thread: {e}"),
            })??;
        let opened = Arc::new(opened::OpenedDevices::new());
        store.share_opened(opened.clone());
        let (append_tx, append_rx) = mpsc::channel(settings.max_batch_rows.max(16));
        let (control_tx, control_rx) = mpsc::channel(64);
        let (committed_tx, committed_rx) = watch::channel(store.next_seq() - 1);
        let writer_uplinks = store.uplink_names();
        let transactions = Arc::new(AtomicU64::new(0));
        let latency = Arc::new(latency::CommitLatency::default());
        let writer = Writer {
            latency: latency.clone(),
            payload_bytes: store.payload_bytes(),
            appends_open: true,
            control_open: true,
            store: Some(store),
            thread,
            keyring: keyring.clone(),
            settings,
            appends: append_rx,
            control: control_rx,
            committed: committed_tx,
            uplinks: writer_uplinks,
            deletions: Default::default(),
            pings: Vec::new(),
            transactions: transactions.clone(),
            space,
            held: Vec::new(),
            evictions: Default::default(),
        };
        let next_seq = Arc::new(AtomicI64::new(
            writer.store.as_ref().map(|s| s.next_seq()).unwrap_or(1),
        ));
        let handle = tokio::spawn(writer.run());
        Ok((
            Outbox {
                appends: append_tx,
                control: control_tx,
                keyring,
                committed: committed_rx,
                next_seq,
                transactions,
                latency,
                opened,
            },
            handle,
        ))
    }

    /// Queues observations for storage; the append's `ack` fires after the commit. Waits
    /// while the writer is busy (backpressure).
    pub async fn append(&self, append: Append) -> Result<(), OutboxError> {
        // Carried every time, sealed by the writer only when it has no row for it (it may
        // have removed the Device row since this device's last append, once no row
        // needed it).
        let device = Some((append.device_id.clone(), append.device_json));
        let now = chrono::Utc::now().timestamp_millis();
        let mut rows = Vec::with_capacity(append.observations.len());
        for (id, json) in append.observations {
            let seq = self.next_seq.fetch_add(1, Ordering::SeqCst);
            rows.push((
                id,
                QueuedRow {
                    seq,
                    created_ms: now,
                    device_id: append.device_id.clone(),
                    json,
                },
            ));
        }
        self.appends
            .send(QueuedAppend {
                device,
                rows,
                ack: append.ack,
                source_waits: append.source_waits,
            })
            .await
            .map_err(|_| OutboxError::Closed)
    }

    /// A receiver that changes whenever new rows are committed (its value: the last
    /// sequence number committed). Nothing else changes it: not a fetch, a delivery, a
    /// dead letter or an eviction, so a delivery loop waiting on it sleeps until there is
    /// something new to send.
    pub fn committed(&self) -> watch::Receiver<i64> {
        self.committed.clone()
    }

    /// How many transactions the writer has run (reads and writes), for tests and
    /// benchmarks that check an idle gateway leaves SQLite alone.
    pub fn transactions(&self) -> u64 {
        self.transactions.load(Ordering::Relaxed)
    }

    async fn call<T>(&self, make: impl FnOnce(Reply<T>) -> Control) -> Result<T, OutboxError> {
        let (tx, rx) = oneshot::channel();
        self.control
            .send(make(tx))
            .await
            .map_err(|_| OutboxError::Closed)?;
        rx.await.map_err(|_| OutboxError::Closed)?
    }

    /// Up to `limit` rows waiting for `uplink`, oldest first, opened.
    pub async fn fetch(&self, uplink: &str, limit: usize) -> Result<Fetched, OutboxError> {
        self.fetch_after(uplink, 0, limit).await
    }

    /// Up to `limit` rows waiting for `uplink` with a seq above `after` (rows sent and
    /// still waiting for their acknowledgement are not fetched again), oldest first,
    /// opened.
    pub async fn fetch_after(
        &self,
        uplink: &str,
        after: i64,
        limit: usize,
    ) -> Result<Fetched, OutboxError> {
        let (rows, damaged, devices) = self
            .call(|reply| Control::Fetch {
                uplink: uplink.into(),
                after,
                limit,
                reply,
            })
            .await?;
        let mut out = Fetched::default();
        for d in devices {
            match d {
                FetchedDevice::Opened(id, json) => {
                    out.devices.insert(id, json);
                }
                FetchedDevice::Sealed(d) => {
                    if let Some(json) = self.opened.open(&self.keyring, &d.id, &d.sealed) {
                        out.devices.insert(d.id, json);
                    }
                }
            }
        }
        for r in rows {
            let observation = self
                .keyring
                .open(&r.sealed, &row_aad(r.seq, &r.device_id))
                .map_err(|e| e.to_string())
                .and_then(|plain| unpack(&plain))
                .and_then(observation_from);
            out.rows.push(PendingRow {
                seq: r.seq,
                len: r.sealed.ciphertext.len(),
                device_id: r.device_id,
                observation,
            });
        }
        // Damaged rows cannot be sent; the delivery loop moves them to the dead letters.
        for d in damaged {
            out.rows.push(PendingRow {
                seq: d.seq,
                len: d.len,
                device_id: String::new(),
                observation: Err(d.reason),
            });
        }
        Ok(out)
    }

    /// Marks rows delivered to `uplink`.
    pub async fn delivered(
        &self,
        uplink: &str,
        rows: Vec<(i64, usize)>,
    ) -> Result<(), OutboxError> {
        self.call(|reply| Control::Delivered {
            uplink: uplink.into(),
            rows,
            reply,
        })
        .await
    }

    /// Moves a row to `uplink`'s dead letters with the server's reason (sealed).
    pub async fn dead_letter(
        &self,
        uplink: &str,
        seq: i64,
        len: usize,
        reason: &str,
    ) -> Result<(), OutboxError> {
        self.call(|reply| Control::DeadLetter {
            uplink: uplink.into(),
            seq,
            len,
            reason: reason.as_bytes().to_vec(),
            reply,
        })
        .await
    }

    /// A round trip through the writer: resolves once the writer has taken the request
    /// and applied the transaction it landed in. The daemon's liveness check (the systemd
    /// watchdog): a writer stuck in SQLite or gone never answers `Ok`.
    pub async fn ping(&self) -> Result<(), OutboxError> {
        self.call(|reply| Control::Ping { reply }).await
    }

    /// Commits what is waiting now (readings waiting for company, deletions waiting for
    /// a commit) and resolves once that is done. The daemon calls it when no reading can
    /// come any more (the pipeline has ended), so the last readings need not wait out a
    /// commit window before the uplinks' last pass.
    pub async fn flush(&self) -> Result<(), OutboxError> {
        self.call(|reply| Control::Flush { reply }).await
    }

    /// How long the write transactions took since the outbox was opened.
    pub fn commit_latency(&self) -> latency::LatencySnapshot {
        self.latency.snapshot()
    }

    /// Counts for `outbox status`.
    pub async fn status(&self, configured: Vec<String>) -> Result<Status, OutboxError> {
        self.call(|reply| Control::Status { configured, reply })
            .await
    }
}

/// Reads the status of an outbox database without a key and without writing (for
/// `outbox status` while the daemon runs).
pub fn read_status(path: &Path, configured: &[String]) -> Result<Status, OutboxError> {
    store::read_only_status(path, configured)
}

/// A dead letter with its reason opened.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DeadLetter {
    /// The uplink that rejected the row.
    pub uplink: String,
    /// The row's sequence number.
    pub seq: i64,
    /// When it was rejected (Unix ms).
    pub at_ms: i64,
    /// The server's reason (or why it cannot be opened).
    pub reason: String,
}

/// Lists the dead letters of an outbox database, read-only, opening their reasons.
pub fn read_dead_letters(path: &Path, keyring: &Keyring) -> Result<Vec<DeadLetter>, OutboxError> {
    Ok(store::read_only_dead_letters(path)?
        .into_iter()
        .map(|d| DeadLetter {
            reason: keyring
                .open(&d.reason, &reason_aad(&d.uplink, d.seq))
                .map(|p| String::from_utf8_lossy(&p).into_owned())
                .unwrap_or_else(|e| format!("<{e}>")),
            uplink: d.uplink,
            seq: d.seq,
            at_ms: d.at_ms,
        })
        .collect())
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_seal;
#[cfg(test)]
mod tests_space;
