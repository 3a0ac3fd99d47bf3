//! The SQLite side of the outbox: the statements the writer runs in its transactions
//! (`open.rs`: schema and the refuse-never-reset opening checks; `read.rs`: counts and
//! read-only listings for `outbox status` and `outbox dead-letters`). Synchronous; owned
//! by the outbox's writer task, which runs it on the database thread.

mod devices;
mod fetch;
mod open;
mod pseudonym_key;
mod read;
mod reseal;

pub use pseudonym_key::accept_pseudonym_key;

pub use devices::{KNOWN_DEVICES, PRUNE_INTERVAL};

pub use open::{SCHEMA_VERSION, WAL_LIMIT_BYTES};

/// Free pages from which, once they are at least [`SHRINK_FREE_SIXTEENTHS`] sixteenths of
/// the file, a commit that deleted rows gives them back to the file system
/// (`Store::shrink`): 4 MiB of 4 KiB pages.
pub const SHRINK_MIN_FREE_PAGES: i64 = 1024;

/// How much of the file must be free, in sixteenths, before a drained backlog's pages are
/// given back. Shrinking (`VACUUM`) copies the live pages, each written about three times
/// (a temporary file, the WAL, the checkpoint): at seven eighths a drain of 100,000 queued
/// rows (`pipeline` benchmark) wrote 1,900 bytes per delivered Observation against 1,450
/// without shrinking. At fifteen sixteenths at most a sixteenth of the file is copied,
/// once per backlog.
pub const SHRINK_FREE_SIXTEENTHS: i64 = 15;
pub use read::{
    disk_bytes, read_only_dead_letters, read_only_ingest_dead_letters, read_only_status, Status,
    StoredDeadLetter, StoredIngestDeadLetter, UplinkStatus,
};

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rusqlite::{params, Connection, OptionalExtension};

use super::opened::{DeviceJson, OpenedDevices};
use super::seal::{Keyring, Sealed, Sealing};
use super::OutboxError;

/// The associated data of an ingest dead letter: bound to its row id.
pub fn ingest_aad(id: i64) -> Vec<u8> {
    let mut aad = b"iomt-gateway/outbox/v1/ingest-dead-letter\0".to_vec();
    aad.extend_from_slice(&id.to_be_bytes());
    aad
}

/// A row as stored: sealed.
#[derive(Debug, Clone)]
pub struct StoredRow {
    /// Sequence number (insertion order; oldest first).
    pub seq: i64,
    /// When it was enqueued (Unix ms).
    pub created_ms: i64,
    /// The Device resource it references.
    pub device_id: String,
    /// The sealed Observation.
    pub sealed: Sealed,
}

/// A sealed Device resource.
#[derive(Debug, Clone)]
pub struct StoredDevice {
    /// Its id.
    pub id: String,
    /// The sealed resource.
    pub sealed: Sealed,
}

fn sql(path: &Path) -> impl Fn(rusqlite::Error) -> OutboxError + '_ {
    move |e| OutboxError::from_sqlite(path, e)
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// The open database.
pub struct Store {
    conn: Connection,
    path: PathBuf,
    /// Uplink name → bit in `rows.pending`.
    bits: HashMap<String, i64>,
    /// The bits of the configured uplinks (new rows wait for all of them).
    all_bits: i64,
    known_devices: devices::KnownDevices,
    /// The Device resources the delivery side has opened, when it shares them: a fetch
    /// hands those over in place of their sealed text (see `outbox::opened`).
    opened: Option<Arc<OpenedDevices>>,
    next_seq: i64,
    payload_bytes: u64,
}

impl Store {
    /// The uplink names this database knows.
    pub fn uplink_names(&self) -> HashSet<String> {
        self.bits.keys().cloned().collect()
    }

    /// The database path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes of sealed payloads stored.
    pub fn payload_bytes(&self) -> u64 {
        self.payload_bytes
    }

    /// The sequence number the next row gets.
    pub fn next_seq(&self) -> i64 {
        self.next_seq
    }

    /// Whether Device `id` is stored with the text of `fingerprint` (as far as this
    /// process remembers: a Device read back, not written, is not known by its text).
    pub fn has_device(&mut self, id: &str, fingerprint: u64) -> bool {
        self.known_devices.holds_text(id, fingerprint)
    }

    /// Shares the delivery side's opened Device resources: a fetch then hands over the
    /// opened resource of a Device whose stored sealing this process knows, without
    /// reading it from the database.
    pub(in crate::outbox) fn share_opened(&mut self, opened: Arc<OpenedDevices>) {
        self.opened = Some(opened);
    }

    /// Starts a transaction.
    pub fn begin(&mut self) -> Result<(), OutboxError> {
        self.conn
            .execute_batch("BEGIN IMMEDIATE")
            .map_err(sql(&self.path))
    }

    /// Commits the transaction (durable when this returns).
    pub fn commit(&mut self) -> Result<(), OutboxError> {
        self.conn.execute_batch("COMMIT").map_err(sql(&self.path))
    }

    /// Rolls the transaction back after a failure and reloads the in-memory counters.
    pub fn rollback(&mut self) {
        let _ = self.conn.execute_batch("ROLLBACK");
        self.known_devices.clear();
        if let Ok((seq, bytes)) = self.load_counters() {
            self.next_seq = seq;
            self.payload_bytes = bytes;
        }
    }

    /// (next sequence number, payload bytes) as stored.
    fn load_counters(&self) -> Result<(i64, u64), OutboxError> {
        let p = &self.path;
        let (max_seq, bytes): (Option<i64>, Option<i64>) = self
            .conn
            .query_row("SELECT MAX(seq), SUM(LENGTH(sealed)) FROM rows", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .map_err(sql(p))?;
        let dead_max: Option<i64> = self
            .conn
            .query_row("SELECT MAX(seq) FROM dead_letters", [], |r| r.get(0))
            .map_err(sql(p))?;
        // AUTOINCREMENT keeps the highest sequence number ever used, so a sequence number
        // (part of each row's associated data) is never given to a second row.
        let ever: Option<i64> = self
            .conn
            .query_row(
                "SELECT seq FROM sqlite_sequence WHERE name = 'rows'",
                [],
                |r| r.get(0),
            )
            .optional()
            .map_err(sql(p))?;
        let highest = max_seq
            .unwrap_or(0)
            .max(dead_max.unwrap_or(0))
            .max(ever.unwrap_or(0));
        Ok((highest + 1, bytes.unwrap_or(0).max(0) as u64))
    }

    /// Stores a Device resource (inside a transaction), with the fingerprint of its text
    /// when known (`DeviceJsonIn`).
    pub fn put_device(
        &mut self,
        device: &StoredDevice,
        fingerprint: Option<u64>,
    ) -> Result<(), OutboxError> {
        self.conn
            .prepare_cached("INSERT OR REPLACE INTO devices (id, key_id, nonce, sealed) VALUES (?1, ?2, ?3, ?4)")
            .and_then(|mut s| s.execute(params![device.id, device.sealed.key_id as i64, device.sealed.nonce.as_slice(), device.sealed.ciphertext]))
            .map_err(sql(&self.path))?;
        self.known_devices
            .insert(device.id.clone(), Sealing::of(&device.sealed), fingerprint);
        Ok(())
    }

    /// Inserts a row (inside a transaction); its `seq` must be at least [`Store::next_seq`].
    pub fn insert(&mut self, row: &StoredRow) -> Result<(), OutboxError> {
        self.conn
            .prepare_cached("INSERT INTO rows (seq, created_ms, device_id, pending, key_id, nonce, sealed) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)")
            .and_then(|mut s| {
                s.execute(params![
                    row.seq,
                    row.created_ms,
                    row.device_id,
                    self.all_bits,
                    row.sealed.key_id as i64,
                    row.sealed.nonce.as_slice(),
                    row.sealed.ciphertext
                ])
            })
            .map_err(sql(&self.path))?;
        self.next_seq = self.next_seq.max(row.seq + 1);
        self.payload_bytes += row.sealed.ciphertext.len() as u64;
        Ok(())
    }

    fn bit(&self, uplink: &str) -> Result<i64, OutboxError> {
        self.bits
            .get(uplink)
            .copied()
            .ok_or_else(|| OutboxError::UnknownUplink(uplink.into()))
    }

    /// Marks rows delivered to `uplink` (inside a transaction); rows no uplink still waits
    /// for are deleted. `rows` holds (seq, sealed length).
    pub fn delivered(&mut self, uplink: &str, rows: &[(i64, usize)]) -> Result<(), OutboxError> {
        let bit = self.bit(uplink)?;
        let p = self.path.clone();
        let mut done = 0i64;
        for (seq, len) in rows {
            // Usually this uplink is the last one the row waits for: delete it at once.
            let last = self
                .conn
                .prepare_cached("DELETE FROM rows WHERE seq = ?1 AND pending = ?2")
                .and_then(|mut s| s.execute(params![seq, bit]))
                .map_err(sql(&p))?;
            if last > 0 {
                done += 1;
                self.payload_bytes = self.payload_bytes.saturating_sub(*len as u64);
                continue;
            }
            let changed = self
                .conn
                .prepare_cached("UPDATE rows SET pending = pending & ~?1 WHERE seq = ?2 AND (pending & ?1) != 0")
                .and_then(|mut s| s.execute(params![bit, seq]))
                .map_err(sql(&p))?;
            done += changed as i64;
            let deleted = self
                .conn
                .prepare_cached("DELETE FROM rows WHERE seq = ?1 AND pending = 0")
                .and_then(|mut s| s.execute([seq]))
                .map_err(sql(&p))?;
            if deleted > 0 {
                self.payload_bytes = self.payload_bytes.saturating_sub(*len as u64);
            }
        }
        self.conn
            .prepare_cached("UPDATE uplinks SET delivered = delivered + ?1 WHERE name = ?2")
            .and_then(|mut s| s.execute(params![done, uplink]))
            .map_err(sql(&p))?;
        Ok(())
    }

    /// After deletions (inside their transaction): whether the file should shrink, that
    /// is at least [`SHRINK_MIN_FREE_PAGES`] pages are free and they are at least
    /// [`SHRINK_FREE_SIXTEENTHS`] sixteenths of the file (a backlog drained).
    pub fn shrink_due(&mut self) -> Result<bool, OutboxError> {
        let p = self.path.clone();
        let free: i64 = self
            .conn
            .query_row("PRAGMA freelist_count", [], |r| r.get(0))
            .map_err(sql(&p))?;
        let total: i64 = self
            .conn
            .query_row("PRAGMA page_count", [], |r| r.get(0))
            .map_err(sql(&p))?;
        Ok(free >= SHRINK_MIN_FREE_PAGES
            && free.saturating_mul(16) >= total.saturating_mul(SHRINK_FREE_SIXTEENTHS))
    }

    /// Outside a transaction, when [`Store::shrink_due`] said so: gives the free pages back
    /// to the file system with `VACUUM`, which copies the few live pages into a new file
    /// (through the WAL; the file is cut at the next checkpoint). Never on its own: it
    /// follows the commit of the deletions that freed the pages. Returns the pages freed.
    pub fn shrink(&mut self) -> Result<i64, OutboxError> {
        let p = self.path.clone();
        let page_count = |conn: &rusqlite::Connection| -> Result<i64, OutboxError> {
            conn.query_row("PRAGMA page_count", [], |r| r.get(0))
                .map_err(sql(&p))
        };
        let before = page_count(&self.conn)?;
        self.conn.execute_batch("VACUUM").map_err(sql(&p))?;
        let after = page_count(&self.conn)?;
        Ok(before.saturating_sub(after))
    }

    /// Keeps a message a driver refused, sealed (`plain` is its packed description), and
    /// evicts the oldest beyond `limit`. Returns how many were evicted.
    pub fn ingest_dead_letter(
        &mut self,
        keyring: &Keyring,
        at_ms: i64,
        transport: &str,
        size: usize,
        plain: &[u8],
        limit: usize,
    ) -> Result<u64, OutboxError> {
        let p = self.path.clone();
        // The row id is part of the associated data, so the row is inserted first and
        // sealed once its id is known, inside the same transaction.
        self.conn
            .prepare_cached(
                "INSERT INTO ingest_dead_letters (at_ms, transport, size, key_id, nonce, sealed) VALUES (?1, ?2, ?3, 0, x'', x'')",
            )
            .and_then(|mut s| s.execute(params![at_ms, transport, size as i64]))
            .map_err(sql(&p))?;
        let id = self.conn.last_insert_rowid();
        let sealed = keyring.seal(plain, &ingest_aad(id))?;
        self.conn
            .prepare_cached(
                "UPDATE ingest_dead_letters SET key_id = ?1, nonce = ?2, sealed = ?3 WHERE id = ?4",
            )
            .and_then(|mut s| {
                s.execute(params![
                    sealed.key_id as i64,
                    sealed.nonce.as_slice(),
                    sealed.ciphertext,
                    id
                ])
            })
            .map_err(sql(&p))?;
        let limit = i64::try_from(limit.max(1)).unwrap_or(i64::MAX);
        let evicted = self
            .conn
            .prepare_cached("DELETE FROM ingest_dead_letters WHERE id <= ?1 - ?2")
            .and_then(|mut s| s.execute(params![id, limit]))
            .map_err(sql(&p))? as u64;
        if evicted > 0 {
            self.conn
                .prepare_cached(
                    "INSERT INTO counters (name, value) VALUES ('ingest_dead_letters_evicted', ?1)
                     ON CONFLICT (name) DO UPDATE SET value = value + ?1",
                )
                .and_then(|mut s| s.execute(params![evicted as i64]))
                .map_err(sql(&p))?;
        }
        Ok(evicted)
    }

    /// Moves one row into the dead letters of `uplink` with a sealed reason (inside a
    /// transaction), then treats it as done for that uplink.
    ///
    /// A dead letter's `key_id` is the key of its reason (the current key): its payload
    /// is sealed again under that key when it opens, so one key opens the whole dead
    /// letter and a retired key is not needed for it. A payload that does not open (a
    /// damaged row) is kept as it was; its columns are copied as stored, whatever their
    /// type, so moving a damaged row never fails.
    pub fn dead_letter(
        &mut self,
        keyring: &Keyring,
        uplink: &str,
        seq: i64,
        len: usize,
        reason: &Sealed,
    ) -> Result<(), OutboxError> {
        let p = self.path.clone();
        let stored = self
            .conn
            .prepare_cached("SELECT seq, created_ms, device_id, key_id, nonce, sealed, LENGTH(sealed) FROM rows WHERE seq = ?1")
            .and_then(|mut s| s.query_row([seq], read_row).optional())
            .map_err(sql(&p))?;
        let resealed = match stored {
            Some(Ok(row)) => {
                let aad = crate::outbox::row_aad(seq, &row.device_id);
                match keyring.open(&row.sealed, &aad) {
                    Ok(plain) => Some(keyring.seal(&plain, &aad)?),
                    Err(_) => None,
                }
            }
            _ => None,
        };
        let (nonce, sealed) = match &resealed {
            Some(s) => (Some(s.nonce.as_slice()), Some(s.ciphertext.as_slice())),
            None => (None, None),
        };
        self.conn
            .prepare_cached(
                "INSERT OR REPLACE INTO dead_letters (uplink, seq, at_ms, device_id, key_id, nonce, sealed, reason_nonce, reason_sealed)
                 SELECT ?1, seq, ?2, device_id, ?3, COALESCE(?4, nonce), COALESCE(?5, sealed), ?6, ?7 FROM rows WHERE seq = ?8",
            )
            .and_then(|mut s| {
                s.execute(params![
                    uplink,
                    now_ms(),
                    reason.key_id as i64,
                    nonce,
                    sealed,
                    reason.nonce.as_slice(),
                    reason.ciphertext,
                    seq
                ])
            })
            .map_err(sql(&p))?;
        self.delivered(uplink, &[(seq, len)])?;
        self.conn
            .prepare_cached("UPDATE uplinks SET delivered = delivered - 1, dead_lettered = dead_lettered + 1 WHERE name = ?1")
            .and_then(|mut s| s.execute([uplink]))
            .map_err(sql(&p))?;
        Ok(())
    }

    /// Deletes the oldest rows until the payload is at most `max_bytes` and no row is older
    /// than `min_created_ms` (inside a transaction). Returns how many rows were evicted.
    pub fn evict(
        &mut self,
        max_bytes: u64,
        min_created_ms: Option<i64>,
    ) -> Result<u64, OutboxError> {
        let p = self.path.clone();
        let mut evicted = 0u64;
        loop {
            let over_size = self.payload_bytes > max_bytes;
            // A damaged enqueue time (not an integer) reads as unknown: such a row is not
            // taken for too old, and reading it never fails the transaction.
            let oldest: Option<(i64, Option<i64>, i64)> = self
                .conn
                .prepare_cached(
                    "SELECT seq, CASE WHEN typeof(created_ms) = 'integer' THEN created_ms END, LENGTH(sealed) FROM rows ORDER BY seq LIMIT 1",
                )
                .and_then(|mut s| {
                    s.query_row([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                        .optional()
                })
                .map_err(sql(&p))?;
            let Some((seq, created, len)) = oldest else {
                break;
            };
            let too_old = min_created_ms.is_some_and(|m| created.is_some_and(|c| c < m));
            if !(over_size || too_old) {
                break;
            }
            self.conn
                .prepare_cached("DELETE FROM rows WHERE seq = ?1")
                .and_then(|mut s| s.execute([seq]))
                .map_err(sql(&p))?;
            self.payload_bytes = self.payload_bytes.saturating_sub(len as u64);
            evicted += 1;
        }
        if evicted > 0 {
            self.conn
                .execute(
                    "UPDATE counters SET value = value + ?1 WHERE name = 'evicted'",
                    [evicted as i64],
                )
                .map_err(sql(&p))?;
        }
        Ok(evicted)
    }
}

/// What a fetch finds: the rows that read (oldest first), the damaged rows, and the
/// Device resources the rows reference.
pub type FetchedRows = (Vec<StoredRow>, Vec<DamagedRow>, Vec<FetchedDevice>);

/// A Device resource a fetch hands over.
#[derive(Debug, Clone)]
pub enum FetchedDevice {
    /// Read from the database, sealed.
    Sealed(StoredDevice),
    /// Already opened by the delivery side, from the sealing stored now: (id, JSON).
    Opened(String, DeviceJson),
}

/// A row whose columns cannot be read as written: it cannot be sent, only dead-lettered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DamagedRow {
    /// Its sequence number.
    pub seq: i64,
    /// Its sealed length as stored (for accounting).
    pub len: usize,
    /// What is wrong, naming the row and the column, never the content.
    pub reason: String,
}

/// Reads a fetched row column by column, checking each value's type instead of failing
/// the whole query on the first surprise. Only `seq` (SQLite's rowid) is always an integer.
fn read_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Result<StoredRow, DamagedRow>> {
    use rusqlite::types::ValueRef;
    let seq: i64 = r.get(0)?;
    let len = match r.get_ref(6)? {
        ValueRef::Integer(n) => usize::try_from(n).unwrap_or(0),
        _ => 0,
    };
    let damaged = |what: &str| {
        Ok(Err(DamagedRow {
            seq,
            len,
            reason: format!("row {seq} is damaged: {what}"),
        }))
    };
    let device_id = match r.get_ref(2)? {
        ValueRef::Text(t) => match std::str::from_utf8(t) {
            Ok(id) => id.to_string(),
            Err(_) => return damaged("its device id is not valid UTF-8"),
        },
        other => return damaged(&format!("its device id is {}, not text", kind(other))),
    };
    let key_id = match r.get_ref(3)? {
        ValueRef::Integer(k) => k,
        other => return damaged(&format!("its key id is {}, not an integer", kind(other))),
    };
    let (ValueRef::Blob(nonce), ValueRef::Blob(sealed)) = (r.get_ref(4)?, r.get_ref(5)?) else {
        return damaged("its nonce or ciphertext is not a blob");
    };
    // The enqueue time only serves the age cap; a damaged one does not stop delivery.
    let created_ms = match r.get_ref(1)? {
        ValueRef::Integer(t) => t,
        _ => 0,
    };
    Ok(Ok(StoredRow {
        seq,
        created_ms,
        device_id,
        sealed: sealed_from(key_id, nonce.to_vec(), sealed.to_vec()),
    }))
}

/// The SQLite type of a value, for messages (never the value itself).
fn kind(v: rusqlite::types::ValueRef<'_>) -> &'static str {
    use rusqlite::types::ValueRef;
    match v {
        ValueRef::Null => "NULL",
        ValueRef::Integer(_) => "an integer",
        ValueRef::Real(_) => "a real number",
        ValueRef::Text(_) => "text",
        ValueRef::Blob(_) => "a blob",
    }
}

fn sealed_from(key_id: i64, nonce: Vec<u8>, ciphertext: Vec<u8>) -> Sealed {
    let mut n = [0u8; 12];
    // A stored nonce of the wrong length fails authentication later, as tampering should.
    if nonce.len() == n.len() {
        n.copy_from_slice(&nonce);
    }
    Sealed {
        key_id: key_id as u32,
        nonce: n,
        ciphertext,
    }
}
