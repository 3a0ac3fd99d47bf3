//! The outbox: an encrypted SQLite store-and-forward queue. Nothing measured is lost
//! while the link is down, the power is cut, or the process crashes.
//!
//! # Design
//!
//! **Schema** (`store.rs`). `rows` holds one sealed Observation per row, keyed by `seq`
//! (insertion order, so delivery is oldest first), with the id of the Device resource it
//! references, its enqueue time, the key id it was sealed with, and `pending`: a bitmask
//! of the uplinks that still have to deliver it (`uplinks` maps names to bits). Device
//! resources are stored once in `devices`. `dead_letters` keeps rows an uplink rejected
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
//! database: only their ids and check values do.
//!
//! **Key rotation.** `iomt-gateway keygen --rotate` moves the current key to
//! `<key file>.retired` and writes a new one. New rows use the new key; rows sealed with a
//! retired key stay readable until delivered. `outbox status` lists the key ids still in
//! use, so a retired key file can be deleted once none of its ids remain.
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
//! transaction on a blocking thread, commits once, then replies. Under load hundreds of
//! readings share a commit; at low rates a reading waits at most `commit_window`.
//!
//! **Limits.** `max_bytes` caps the sealed payload bytes, `max_age` the age of a row.
//! When full, `when_full = "evict-oldest"` (the default) deletes the oldest rows, counts
//! them in `outbox status` and logs a warning; `when_full = "block"` stops taking appends
//! until deliveries make room, which blocks the pipeline and, through the bounded
//! channels, the drivers.

pub mod config;
pub mod seal;
pub mod store;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use iomt_drivers::Committed;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use seal::{Keyring, SealError, Sealed};
use store::{Status, Store, StoredDevice, StoredRow};

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
    /// Longest wait for more operations before a commit.
    pub commit_window: Duration,
    /// Most rows in one transaction.
    pub max_batch_rows: usize,
}

/// Why the outbox cannot work.
#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    /// The database file is damaged or not an outbox.
    #[error("the outbox database {path} is damaged: {reason}. The gateway will not modify it. Move it aside (keep it: `sqlite3 FILE .recover` may save its rows) and start again with an empty outbox")]
    Damaged {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The key file does not belong to this database.
    #[error("the outbox database {path} was sealed with a different storage key: check [outbox] key_file (after a rotation, keep the `.retired` file next to it). The gateway will not modify the database")]
    WrongKey {
        /// The file.
        path: PathBuf,
    },
    /// A key still needed is missing.
    #[error("the outbox database {path} holds rows sealed with key id {key_id:08x}, which is neither the current nor a retired key: restore the `.retired` key file. The gateway will not modify the database")]
    MissingKey {
        /// The file.
        path: PathBuf,
        /// The missing key id.
        key_id: u32,
    },
    /// SQLite failed.
    #[error("outbox database {path}: {reason}")]
    Sqlite {
        /// The file.
        path: PathBuf,
        /// SQLite's message.
        reason: String,
    },
    /// A file operation failed.
    #[error("outbox {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// Sealing failed.
    #[error(transparent)]
    Seal(#[from] SealError),
    /// More than 62 uplinks were ever configured.
    #[error("the outbox supports at most 62 uplink names")]
    TooManyUplinks,
    /// An uplink name the outbox does not know.
    #[error("unknown uplink `{0}`")]
    UnknownUplink(String),
    /// The outbox has shut down.
    #[error("the outbox is closed")]
    Closed,
}

impl OutboxError {
    fn from_sqlite(path: &Path, e: rusqlite::Error) -> Self {
        use rusqlite::ErrorCode;
        if let rusqlite::Error::SqliteFailure(f, _) = &e {
            if matches!(f.code, ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase) {
                return OutboxError::Damaged {
                    path: path.to_path_buf(),
                    reason: e.to_string(),
                };
            }
        }
        OutboxError::Sqlite {
            path: path.to_path_buf(),
            reason: e.to_string(),
        }
    }
}

/// The first byte of a compressed payload: an LZ4 block with its length prepended.
/// Uncompressed JSON starts with `{` and is read as is.
const LZ4: u8 = 0x01;

/// Compresses a JSON payload before sealing. FHIR JSON repeats its system URIs and keys
/// within every resource, so LZ4 roughly halves it for a few microseconds: fewer bytes
/// sealed, written to the SD card and counted against the size cap.
pub fn pack(json: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(json.len() / 2 + 8);
    out.push(LZ4);
    out.extend_from_slice(&lz4_flex::compress_prepend_size(json));
    out
}

/// Reverses [`pack`] (opened payloads are authenticated, so only our own data arrives here).
pub fn unpack(payload: &[u8]) -> Result<Vec<u8>, String> {
    match payload.first() {
        Some(&LZ4) => lz4_flex::decompress_size_prepended(&payload[1..])
            .map_err(|e| format!("cannot decompress a stored payload: {e}")),
        _ => Ok(payload.to_vec()),
    }
}

/// The associated data of a row.
pub fn row_aad(seq: i64, device_id: &str) -> Vec<u8> {
    let mut aad = b"iomt-gateway/outbox/v1/row\0".to_vec();
    aad.extend_from_slice(&seq.to_be_bytes());
    aad.extend_from_slice(device_id.as_bytes());
    aad
}

/// The associated data of a Device resource.
pub fn device_aad(id: &str) -> Vec<u8> {
    let mut aad = b"iomt-gateway/outbox/v1/device\0".to_vec();
    aad.extend_from_slice(id.as_bytes());
    aad
}

/// The associated data of a dead letter's reason.
pub fn reason_aad(uplink: &str, seq: i64) -> Vec<u8> {
    let mut aad = b"iomt-gateway/outbox/v1/reason\0".to_vec();
    aad.extend_from_slice(uplink.as_bytes());
    aad.push(0);
    aad.extend_from_slice(&seq.to_be_bytes());
    aad
}

/// Observations of one reading to store, with the Device resource they reference.
#[derive(Debug)]
pub struct Append {
    /// The Device resource's id.
    pub device_id: String,
    /// The Device resource (JSON).
    pub device_json: Vec<u8>,
    /// (identifier, Observation JSON) pairs.
    pub observations: Vec<(String, Vec<u8>)>,
    /// Acknowledged with the identifiers once committed.
    pub ack: Option<oneshot::Sender<Committed>>,
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
    /// The JSON text, as stored.
    pub json: Box<serde_json::value::RawValue>,
}

/// The fields of an Observation a Bundle entry needs; serde skips the rest of the text.
#[derive(serde::Deserialize)]
struct Head {
    id: String,
    #[serde(default)]
    identifier: Vec<crate::fhir::Identifier>,
}

fn observation_from(json: Vec<u8>) -> Result<StoredObservation, String> {
    let text = String::from_utf8(json).map_err(|_| "stored JSON is not UTF-8".to_string())?;
    let head: Head =
        serde_json::from_str(&text).map_err(|e| format!("stored JSON is invalid: {e}"))?;
    let json = serde_json::value::RawValue::from_string(text)
        .map_err(|e| format!("stored JSON is invalid: {e}"))?;
    Ok(StoredObservation {
        id: head.id,
        identifier: head
            .identifier
            .first()
            .map(|i| format!("{}|{}", i.system, i.value)),
        json,
    })
}

/// A batch fetched for one uplink.
#[derive(Debug, Clone, Default)]
pub struct Fetched {
    /// Rows, oldest first.
    pub rows: Vec<PendingRow>,
    /// Device resources (JSON text) by id.
    pub devices: HashMap<String, Box<serde_json::value::RawValue>>,
}

type Reply<T> = oneshot::Sender<Result<T, OutboxError>>;

enum Control {
    Fetch {
        uplink: String,
        limit: usize,
        reply: Reply<(Vec<StoredRow>, Vec<StoredDevice>)>,
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
    IngestDeadLetter {
        at_ms: i64,
        transport: String,
        size: usize,
        plain: Vec<u8>,
        limit: usize,
        reply: Reply<()>,
    },
}

/// What an ingest dead letter holds under its seal.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct IngestSealed {
    source: String,
    reason: String,
    /// The payload as text when it is UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    payload: Option<String>,
    /// The payload in hex otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    payload_hex: Option<String>,
}

/// A message a driver refused, opened.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct IngestDeadLetter {
    /// Its id (insertion order).
    pub id: i64,
    /// When it was received (Unix ms).
    pub at_ms: i64,
    /// The transport (`mqtt`).
    pub transport: String,
    /// Its size as received, in bytes.
    pub size: u64,
    /// Where it came from (the MQTT topic), or why the seal cannot be opened.
    pub source: String,
    /// Why it was refused.
    pub reason: String,
    /// The payload kept (cut to the size limit): text, or hex when it is not UTF-8.
    pub payload: String,
}

/// Lists the messages drivers refused, read-only, opening them.
pub fn read_ingest_dead_letters(
    path: &Path,
    keyring: &Keyring,
) -> Result<Vec<IngestDeadLetter>, OutboxError> {
    Ok(store::read_only_ingest_dead_letters(path)?
        .into_iter()
        .map(|d| {
            let opened = keyring
                .open(&d.sealed, &store::ingest_aad(d.id))
                .map_err(|e| e.to_string())
                .and_then(|p| unpack(&p))
                .and_then(|j| {
                    serde_json::from_slice::<IngestSealed>(&j).map_err(|e| e.to_string())
                });
            let (source, reason, payload) = match opened {
                Ok(o) => (
                    o.source,
                    o.reason,
                    o.payload
                        .or(o.payload_hex.map(|h| format!("hex:{h}")))
                        .unwrap_or_default(),
                ),
                Err(e) => (format!("<{e}>"), String::new(), String::new()),
            };
            IngestDeadLetter {
                id: d.id,
                at_ms: d.at_ms,
                transport: d.transport,
                size: d.size,
                source,
                reason,
                payload,
            }
        })
        .collect())
}

/// A handle to the outbox. Cheap to clone; the writer stops when every handle is gone.
#[derive(Clone)]
pub struct Outbox {
    appends: mpsc::Sender<SealedAppend>,
    control: mpsc::Sender<Control>,
    keyring: Arc<Keyring>,
    committed: watch::Receiver<i64>,
    /// The next sequence number to give out. Appends are sealed by the caller (on its own
    /// core, not the writer's), and a row's associated data binds its sequence number, so
    /// numbers are handed out here, in append order, and never twice.
    next_seq: Arc<AtomicI64>,
    /// Device ids already handed to the writer (their resource need not be sealed again).
    known_devices: Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
}

/// An append, compressed and sealed by the caller.
struct SealedAppend {
    /// The Device resource, sealed only the first time this handle sees the device.
    device: Option<StoredDevice>,
    rows: Vec<(String, StoredRow)>,
    ack: Option<oneshot::Sender<Committed>>,
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
        let store = tokio::task::spawn_blocking(move || Store::open(&path, &ring, &uplinks))
            .await
            .map_err(|e| OutboxError::Sqlite {
                path: settings.path.clone(),
                reason: format!("the opening task failed: {e}"),
            })??;
        let (append_tx, append_rx) = mpsc::channel(settings.max_batch_rows.max(16));
        let (control_tx, control_rx) = mpsc::channel(64);
        let (committed_tx, committed_rx) = watch::channel(store.next_seq() - 1);
        let writer = Writer {
            known_devices: Default::default(),
            payload_bytes: store.payload_bytes(),
            appends_open: true,
            control_open: true,
            store: Some(store),
            keyring: keyring.clone(),
            settings,
            appends: append_rx,
            control: control_rx,
            committed: committed_tx,
        };
        let known_devices = writer.known_devices.clone();
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
                known_devices,
            },
            handle,
        ))
    }

    /// Queues observations for storage; the append's `ack` fires after the commit. Waits
    /// while the writer is busy (backpressure).
    pub async fn append(&self, append: Append) -> Result<(), OutboxError> {
        let first_time = self
            .known_devices
            .lock()
            .map(|mut known| known.insert(append.device_id.clone()))
            .unwrap_or(true);
        let device = if first_time {
            Some(StoredDevice {
                sealed: self
                    .keyring
                    .seal(&pack(&append.device_json), &device_aad(&append.device_id))?,
                id: append.device_id.clone(),
            })
        } else {
            None
        };
        let now = chrono::Utc::now().timestamp_millis();
        let mut rows = Vec::with_capacity(append.observations.len());
        for (id, json) in append.observations {
            let seq = self.next_seq.fetch_add(1, Ordering::SeqCst);
            let sealed = self
                .keyring
                .seal(&pack(&json), &row_aad(seq, &append.device_id))?;
            rows.push((
                id,
                StoredRow {
                    seq,
                    created_ms: now,
                    device_id: append.device_id.clone(),
                    sealed,
                },
            ));
        }
        self.appends
            .send(SealedAppend {
                device,
                rows,
                ack: append.ack,
            })
            .await
            .map_err(|_| OutboxError::Closed)
    }

    /// A receiver that changes whenever rows are committed.
    pub fn committed(&self) -> watch::Receiver<i64> {
        self.committed.clone()
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
        let (rows, devices) = self
            .call(|reply| Control::Fetch {
                uplink: uplink.into(),
                limit,
                reply,
            })
            .await?;
        let mut out = Fetched::default();
        for d in devices {
            if let Ok(plain) = self.keyring.open(&d.sealed, &device_aad(&d.id)) {
                if let Ok(v) = unpack(&plain).and_then(|j| {
                    String::from_utf8(j)
                        .map_err(|e| e.to_string())
                        .and_then(|t| {
                            serde_json::value::RawValue::from_string(t).map_err(|e| e.to_string())
                        })
                }) {
                    out.devices.insert(d.id, v);
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

    /// Keeps a message a driver refused in the ingest dead letters (sealed), keeping at
    /// most `limit` of them; returns once committed.
    pub async fn ingest_dead_letter(
        &self,
        rejected: &iomt_drivers::Rejected,
        limit: usize,
    ) -> Result<(), OutboxError> {
        let sealed = IngestSealed {
            source: rejected.source.clone(),
            reason: rejected.reason.clone(),
            payload: std::str::from_utf8(&rejected.payload)
                .ok()
                .map(str::to_string),
            payload_hex: std::str::from_utf8(&rejected.payload)
                .is_err()
                .then(|| hex::encode(&rejected.payload)),
        };
        let plain = pack(
            &serde_json::to_vec(&sealed).map_err(|e| OutboxError::Sqlite {
                path: PathBuf::new(),
                reason: format!("cannot encode a dead letter: {e}"),
            })?,
        );
        self.call(|reply| Control::IngestDeadLetter {
            at_ms: rejected.received_at.timestamp_millis(),
            transport: rejected.transport.to_string(),
            size: rejected.size,
            plain,
            limit,
            reply,
        })
        .await
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

struct Writer {
    /// Shared with the handles: forgotten after a failed transaction, so the Device
    /// resources it did not store are sealed and sent again.
    known_devices: Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
    store: Option<Store>,
    /// The store's payload bytes, known also while a transaction is in flight.
    payload_bytes: u64,
    appends_open: bool,
    control_open: bool,
    keyring: Arc<Keyring>,
    settings: OutboxSettings,
    appends: mpsc::Receiver<SealedAppend>,
    control: mpsc::Receiver<Control>,
    committed: watch::Sender<i64>,
}

/// What one transaction did, for the replies.
struct Applied {
    store: Store,
    acks: Vec<(oneshot::Sender<Committed>, Vec<String>)>,
    controls: Vec<(Control, Option<Result<ControlResult, String>>)>,
    error: Option<OutboxError>,
    evicted: u64,
    last_seq: i64,
}

enum ControlResult {
    Fetched(Vec<StoredRow>, Vec<StoredDevice>),
    Done,
    Status(Box<Status>),
}

impl Writer {
    fn full(&self) -> bool {
        self.settings.when_full == WhenFull::Block && self.payload_bytes >= self.settings.max_bytes
    }

    /// Takes one operation, waiting if none is there yet. Returns false when nothing can
    /// arrive any more.
    async fn take(&mut self, batch: &mut Batch) -> bool {
        let take_appends = self.appends_open && !self.full();
        if !take_appends && !self.control_open {
            return false;
        }
        tokio::select! {
            a = self.appends.recv(), if take_appends => match a {
                Some(a) => batch.push_append(a),
                None => self.appends_open = false,
            },
            c = self.control.recv(), if self.control_open => match c {
                Some(c) => batch.controls.push(c),
                None => self.control_open = false,
            },
        }
        true
    }

    /// Takes what is waiting right now, without waiting.
    fn take_ready(&mut self, batch: &mut Batch) {
        while let Ok(c) = self.control.try_recv() {
            batch.controls.push(c);
        }
        while batch.rows < self.settings.max_batch_rows && self.appends_open && !self.full() {
            match self.appends.try_recv() {
                Ok(a) => batch.push_append(a),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => self.appends_open = false,
            }
        }
    }

    /// The writer loop. While one transaction is being applied on the blocking thread, the
    /// next batch is gathered, so the database is never idle under load; with no load, a
    /// batch waits at most `commit_window` for company.
    async fn run(mut self) {
        let mut in_flight: Option<tokio::task::JoinHandle<Applied>> = None;
        let mut batch = Batch::default();
        loop {
            if let Some(task) = in_flight.as_mut() {
                // Gather while the previous transaction is applied.
                let more = batch.rows < self.settings.max_batch_rows;
                let take_appends = more && self.appends_open && !self.full();
                tokio::select! {
                    done = task => {
                        in_flight = None;
                        match done {
                            Ok(applied) => self.finish(applied),
                            Err(e) => {
                                tracing::error!(error = %e, "outbox writer thread failed; the outbox stops");
                                return;
                            }
                        }
                    }
                    a = self.appends.recv(), if take_appends => match a {
                        Some(a) => batch.push_append(a),
                        None => self.appends_open = false,
                    },
                    c = self.control.recv(), if self.control_open => match c {
                        Some(c) => batch.controls.push(c),
                        None => self.control_open = false,
                    },
                }
                continue;
            }
            if batch.is_empty() {
                if !self.take(&mut batch).await {
                    break;
                }
                if batch.is_empty() {
                    continue;
                }
                // Alone so far: wait up to the commit window for company.
                let deadline = tokio::time::Instant::now() + self.settings.commit_window;
                loop {
                    self.take_ready(&mut batch);
                    if batch.rows >= self.settings.max_batch_rows
                        || batch.rows == 0
                        || tokio::time::Instant::now() >= deadline
                    {
                        break;
                    }
                    if !self.appends_open || self.full() {
                        break;
                    }
                    match tokio::time::timeout_at(deadline, self.appends.recv()).await {
                        Ok(Some(a)) => batch.push_append(a),
                        Ok(None) => self.appends_open = false,
                        Err(_) => break,
                    }
                }
            } else {
                self.take_ready(&mut batch);
            }
            let Some(store) = self.store.take() else {
                return;
            };
            let keyring = self.keyring.clone();
            let settings = self.settings.clone();
            let work = std::mem::take(&mut batch);
            in_flight = Some(tokio::task::spawn_blocking(move || {
                apply(store, &keyring, &settings, work.appends, work.controls)
            }));
        }
        if let Some(task) = in_flight {
            if let Ok(applied) = task.await {
                self.finish(applied);
            }
        }
        if !batch.is_empty() {
            tracing::warn!(
                "outbox full at shutdown: waiting readings were not stored and not acknowledged"
            );
        }
        tracing::debug!("outbox writer stopped");
    }

    /// Sends the replies of an applied transaction.
    fn finish(&mut self, applied: Applied) {
        self.payload_bytes = applied.store.payload_bytes();
        self.store = Some(applied.store);
        if let Some(e) = &applied.error {
            tracing::error!(error = %e, "outbox transaction failed; its readings are not acknowledged");
            if let Ok(mut known) = self.known_devices.lock() {
                known.clear();
            }
        }
        if applied.evicted > 0 {
            tracing::warn!(
                evicted = applied.evicted,
                "outbox over its size or age limit: oldest undelivered rows evicted"
            );
        }
        for (ack, ids) in applied.acks {
            let _ = ack.send(Committed { observations: ids });
        }
        for (control, result) in applied.controls {
            reply(control, result);
        }
        if applied.error.is_none() {
            self.committed.send_replace(applied.last_seq);
        }
    }
}

/// Operations gathered for one transaction.
#[derive(Default)]
struct Batch {
    appends: Vec<SealedAppend>,
    controls: Vec<Control>,
    rows: usize,
}

impl Batch {
    fn push_append(&mut self, a: SealedAppend) {
        self.rows += a.rows.len();
        self.appends.push(a);
    }

    fn is_empty(&self) -> bool {
        self.appends.is_empty() && self.controls.is_empty()
    }
}

fn reply(control: Control, result: Option<Result<ControlResult, String>>) {
    let fail = |path: &str| OutboxError::Sqlite {
        path: PathBuf::from(path),
        reason: "the transaction failed".into(),
    };
    match (control, result) {
        (Control::Fetch { reply, .. }, Some(Ok(ControlResult::Fetched(r, d)))) => {
            let _ = reply.send(Ok((r, d)));
        }
        (Control::Status { reply, .. }, Some(Ok(ControlResult::Status(s)))) => {
            let _ = reply.send(Ok(*s));
        }
        (
            Control::Delivered { reply, .. }
            | Control::DeadLetter { reply, .. }
            | Control::Ping { reply }
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
                .unwrap_or_else(|| fail("outbox"))));
        }
        (Control::Status { reply, .. }, _) => {
            let _ = reply.send(Err(fail("outbox")));
        }
        (
            Control::Delivered { reply, .. }
            | Control::DeadLetter { reply, .. }
            | Control::Ping { reply }
            | Control::IngestDeadLetter { reply, .. },
            _,
        ) => {
            let _ = reply.send(Err(fail("outbox")));
        }
    }
}

/// Applies one group of operations in one transaction (on a blocking thread).
fn apply(
    mut store: Store,
    keyring: &Keyring,
    settings: &OutboxSettings,
    appends: Vec<SealedAppend>,
    controls: Vec<Control>,
) -> Applied {
    let mut applied_controls = Vec::with_capacity(controls.len());
    let mut acks = Vec::new();
    let mut evicted = 0;
    let mut ingest_evicted = 0;
    let result = (|| -> Result<(), OutboxError> {
        store.begin()?;
        let now = chrono::Utc::now().timestamp_millis();
        for a in appends {
            if let Some(device) = a.device.filter(|d| !store.has_device(&d.id)) {
                store.put_device(&device)?;
            }
            let mut ids = Vec::with_capacity(a.rows.len());
            for (id, row) in a.rows {
                store.insert(&row)?;
                ids.push(id);
            }
            if let Some(ack) = a.ack {
                acks.push((ack, ids));
            }
        }
        for c in controls {
            let r = match &c {
                Control::Fetch { uplink, limit, .. } => store
                    .fetch(uplink, 0, *limit)
                    .map(|(r, d)| ControlResult::Fetched(r, d)),
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
                    .and_then(|sealed: Sealed| store.dead_letter(uplink, *seq, *len, &sealed))
                    .map(|_| ControlResult::Done),
                Control::Status { configured, .. } => store
                    .status(configured)
                    .map(|s| ControlResult::Status(Box::new(s))),
                Control::Ping { .. } => Ok(ControlResult::Done),
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
            .map(|age| now - i64::try_from(age.as_millis()).unwrap_or(i64::MAX));
        if settings.when_full == WhenFull::EvictOldest || min_created.is_some() {
            let cap = if settings.when_full == WhenFull::EvictOldest {
                settings.max_bytes
            } else {
                u64::MAX
            };
            evicted = store.evict(cap, min_created)?;
        }
        store.commit()
    })();
    let last_seq = store.next_seq() - 1;
    let error = result.err();
    if error.is_none() && ingest_evicted > 0 {
        tracing::warn!(
            evicted = ingest_evicted,
            "ingest dead letters over their limit: the oldest were deleted"
        );
    }
    if error.is_some() {
        store.rollback();
        acks.clear();
        for (_, r) in applied_controls.iter_mut() {
            *r = None;
        }
    }
    Applied {
        store,
        acks,
        controls: applied_controls,
        error,
        evicted,
        last_seq,
    }
}

#[cfg(test)]
mod tests;
