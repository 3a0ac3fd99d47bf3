//! The SQLite side of the outbox: schema, opening checks, and the statements. Synchronous;
//! owned by the outbox's writer task, which runs it on a blocking thread.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use rusqlite::config::DbConfig;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};

use super::seal::{Keyring, Sealed, CHECK_LEN};
use super::OutboxError;

/// The schema version this code writes.
pub const SCHEMA_VERSION: i64 = 1;

const SCHEMA: &str = "
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE keys (key_id INTEGER PRIMARY KEY, check_value BLOB NOT NULL, first_used_ms INTEGER NOT NULL);
CREATE TABLE uplinks (name TEXT PRIMARY KEY, bit INTEGER NOT NULL UNIQUE,
    delivered INTEGER NOT NULL DEFAULT 0, dead_lettered INTEGER NOT NULL DEFAULT 0);
CREATE TABLE devices (id TEXT PRIMARY KEY, key_id INTEGER NOT NULL, nonce BLOB NOT NULL, sealed BLOB NOT NULL);
CREATE TABLE rows (seq INTEGER PRIMARY KEY AUTOINCREMENT, created_ms INTEGER NOT NULL, device_id TEXT NOT NULL,
    pending INTEGER NOT NULL, key_id INTEGER NOT NULL, nonce BLOB NOT NULL, sealed BLOB NOT NULL);
CREATE TABLE dead_letters (uplink TEXT NOT NULL, seq INTEGER NOT NULL, at_ms INTEGER NOT NULL,
    device_id TEXT NOT NULL, key_id INTEGER NOT NULL, nonce BLOB NOT NULL, sealed BLOB NOT NULL,
    reason_nonce BLOB NOT NULL, reason_sealed BLOB NOT NULL, PRIMARY KEY (uplink, seq));
CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
";

/// Messages a driver refused (dead letters of the ingest side). Added after schema 1 was
/// released and created when missing: additive, so an older gateway still opens the file
/// (and ignores the table).
const INGEST_DEAD_LETTERS: &str = "
CREATE TABLE IF NOT EXISTS ingest_dead_letters (id INTEGER PRIMARY KEY AUTOINCREMENT,
    at_ms INTEGER NOT NULL, transport TEXT NOT NULL, size INTEGER NOT NULL,
    key_id INTEGER NOT NULL, nonce BLOB NOT NULL, sealed BLOB NOT NULL);
";

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

/// Per-uplink counters for `outbox status`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct UplinkStatus {
    /// The uplink's name.
    pub name: String,
    /// Whether the current configuration still has it.
    pub configured: bool,
    /// Rows waiting for it.
    pub queued: u64,
    /// Enqueue time of its oldest waiting row (Unix ms).
    pub oldest_ms: Option<i64>,
    /// Rows it has acknowledged since the database was created.
    pub delivered: u64,
    /// Rows it rejected for good (kept in dead letters).
    pub dead_lettered: u64,
}

/// The outbox's state for `outbox status`: counts only, never content.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Status {
    /// The database file.
    pub path: PathBuf,
    /// Rows stored (each waits for at least one uplink).
    pub rows: u64,
    /// Bytes of sealed payloads.
    pub payload_bytes: u64,
    /// Bytes of the database files on disk (main file and write-ahead log).
    pub disk_bytes: u64,
    /// Rows evicted by the size or age cap since the database was created.
    pub evicted: u64,
    /// Per uplink.
    pub uplinks: Vec<UplinkStatus>,
    /// Key ids still needed, with the rows sealed under each.
    pub keys_in_use: Vec<(String, u64)>,
}

fn sql(path: &Path) -> impl Fn(rusqlite::Error) -> OutboxError + '_ {
    move |e| OutboxError::from_sqlite(path, e)
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Reads the first bytes of an existing file to tell an SQLite database from anything else.
fn check_header(path: &Path) -> Result<(), OutboxError> {
    use std::io::Read;
    let mut header = [0u8; 16];
    let mut f = std::fs::File::open(path).map_err(|e| OutboxError::Io {
        path: path.to_path_buf(),
        source: e,
    })?;
    let n = f.read(&mut header).map_err(|e| OutboxError::Io {
        path: path.to_path_buf(),
        source: e,
    })?;
    if n < 16 || &header != b"SQLite format 3\0" {
        return Err(OutboxError::Damaged {
            path: path.to_path_buf(),
            reason: if n == 0 {
                "the file is empty (truncated)".into()
            } else {
                "the file is not an SQLite database (its header is wrong or truncated)".into()
            },
        });
    }
    Ok(())
}

/// The open database.
pub struct Store {
    conn: Connection,
    path: PathBuf,
    /// Uplink name → bit in `rows.pending`.
    bits: HashMap<String, i64>,
    /// The bits of the configured uplinks (new rows wait for all of them).
    all_bits: i64,
    known_devices: HashSet<String>,
    next_seq: i64,
    payload_bytes: u64,
}

impl Store {
    /// Opens (or creates) the database at `path` for the configured `uplinks`.
    ///
    /// Refuses, without writing anything, a file that is not an SQLite database, a damaged
    /// database, a newer schema, or a database sealed with keys the keyring lacks.
    pub fn open(path: &Path, keyring: &Keyring, uplinks: &[String]) -> Result<Self, OutboxError> {
        let conn = if path.exists() {
            check_header(path)?;
            let conn = Connection::open_with_flags(
                path,
                OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )
            .map_err(sql(path))?;
            // While checking, never checkpoint on close: a refused file stays byte-identical.
            conn.set_db_config(DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, true)
                .map_err(sql(path))?;
            conn.busy_timeout(std::time::Duration::from_secs(5))
                .map_err(sql(path))?;
            Self::verify(&conn, path, keyring)?;
            conn.set_db_config(DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, false)
                .map_err(sql(path))?;
            conn
        } else {
            Self::create(path)?
        };
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(sql(path))?;
        // FULL: a commit is on disk when it returns, so a reading acknowledged to its
        // source survives a power cut. Group commit keeps the cost per reading low.
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(sql(path))?;
        let mut store = Store {
            conn,
            path: path.to_path_buf(),
            bits: HashMap::new(),
            all_bits: 0,
            known_devices: HashSet::new(),
            next_seq: 1,
            payload_bytes: 0,
        };
        store
            .conn
            .execute_batch(INGEST_DEAD_LETTERS)
            .map_err(sql(path))?;
        store.register_key(keyring)?;
        store.register_uplinks(uplinks)?;
        (store.next_seq, store.payload_bytes) = store.load_counters()?;
        Ok(store)
    }

    /// Creates a new database under a temporary name and renames it into place, so a
    /// crash never leaves a half-initialized file at `path`.
    fn create(path: &Path) -> Result<Connection, OutboxError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| OutboxError::Io {
                path: dir.to_path_buf(),
                source: e,
            })?;
        }
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".creating");
        let tmp = PathBuf::from(tmp);
        let _ = std::fs::remove_file(&tmp);
        {
            let conn = Connection::open(&tmp).map_err(sql(&tmp))?;
            conn.execute_batch(SCHEMA).map_err(sql(&tmp))?;
            conn.execute(
                "INSERT INTO meta (key, value) VALUES ('schema_version', ?1)",
                [SCHEMA_VERSION.to_string()],
            )
            .map_err(sql(&tmp))?;
            conn.execute(
                "INSERT INTO counters (name, value) VALUES ('evicted', 0)",
                [],
            )
            .map_err(sql(&tmp))?;
        }
        std::fs::File::open(&tmp)
            .and_then(|f| f.sync_all())
            .map_err(|e| OutboxError::Io {
                path: tmp.clone(),
                source: e,
            })?;
        std::fs::rename(&tmp, path).map_err(|e| OutboxError::Io {
            path: path.to_path_buf(),
            source: e,
        })?;
        Connection::open(path).map_err(sql(path))
    }

    fn verify(conn: &Connection, path: &Path, keyring: &Keyring) -> Result<(), OutboxError> {
        let check: String = conn
            .query_row("PRAGMA quick_check", [], |r| r.get(0))
            .map_err(sql(path))?;
        if check != "ok" {
            return Err(OutboxError::Damaged {
                path: path.to_path_buf(),
                reason: format!("SQLite's integrity check failed: {check}"),
            });
        }
        let version: Option<String> = conn
            .query_row(
                "SELECT value FROM meta WHERE key = 'schema_version'",
                [],
                |r| r.get(0),
            )
            .optional()
            .map_err(sql(path))?;
        match version.as_deref().map(str::parse::<i64>) {
            Some(Ok(SCHEMA_VERSION)) => {}
            Some(Ok(v)) if v > SCHEMA_VERSION => {
                return Err(OutboxError::Damaged {
                    path: path.to_path_buf(),
                    reason: format!(
                        "it was written by a newer iomt-gateway (schema {v}); upgrade the gateway"
                    ),
                })
            }
            _ => {
                return Err(OutboxError::Damaged {
                    path: path.to_path_buf(),
                    reason: "it is not an iomt-gateway outbox (no schema version)".into(),
                })
            }
        }
        let mut stmt = conn
            .prepare("SELECT key_id, check_value FROM keys")
            .map_err(sql(path))?;
        let recorded: Vec<(u32, Vec<u8>)> = stmt
            .query_map([], |r| Ok((r.get::<_, i64>(0)? as u32, r.get(1)?)))
            .map_err(sql(path))?
            .collect::<Result<_, _>>()
            .map_err(sql(path))?;
        let ours: HashMap<u32, [u8; CHECK_LEN]> = keyring.keys().map(|k| (k.id, k.check)).collect();
        for (id, check) in &recorded {
            if ours
                .get(id)
                .is_some_and(|c| c.as_slice() != check.as_slice())
            {
                return Err(OutboxError::WrongKey {
                    path: path.to_path_buf(),
                });
            }
        }
        if !recorded.is_empty() && !recorded.iter().any(|(id, _)| ours.contains_key(id)) {
            return Err(OutboxError::WrongKey {
                path: path.to_path_buf(),
            });
        }
        // Every key still sealing something must be in the keyring.
        let has_ingest: bool = conn
            .query_row(
                "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'ingest_dead_letters'",
                [],
                |r| r.get::<_, i64>(0),
            )
            .map_err(sql(path))?
            > 0;
        let mut query = "SELECT DISTINCT key_id FROM rows UNION SELECT DISTINCT key_id FROM devices UNION SELECT DISTINCT key_id FROM dead_letters".to_string();
        if has_ingest {
            query.push_str(" UNION SELECT DISTINCT key_id FROM ingest_dead_letters");
        }
        let mut stmt = conn.prepare(&query).map_err(sql(path))?;
        let needed: Vec<i64> = stmt
            .query_map([], |r| r.get(0))
            .map_err(sql(path))?
            .collect::<Result<_, _>>()
            .map_err(sql(path))?;
        if let Some(missing) = needed
            .into_iter()
            .map(|id| id as u32)
            .find(|id| !ours.contains_key(id))
        {
            return Err(OutboxError::MissingKey {
                path: path.to_path_buf(),
                key_id: missing,
            });
        }
        Ok(())
    }

    fn register_key(&mut self, keyring: &Keyring) -> Result<(), OutboxError> {
        let k = keyring.current();
        self.conn
            .execute(
                "INSERT OR IGNORE INTO keys (key_id, check_value, first_used_ms) VALUES (?1, ?2, ?3)",
                params![k.id as i64, k.check.as_slice(), now_ms()],
            )
            .map_err(sql(&self.path))?;
        Ok(())
    }

    fn register_uplinks(&mut self, uplinks: &[String]) -> Result<(), OutboxError> {
        let p = self.path.clone();
        let mut stmt = self
            .conn
            .prepare("SELECT name, bit FROM uplinks")
            .map_err(sql(&p))?;
        let existing: Vec<(String, i64)> = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(sql(&p))?
            .collect::<Result<_, _>>()
            .map_err(sql(&p))?;
        drop(stmt);
        let mut bits: HashMap<String, i64> = existing.into_iter().collect();
        for name in uplinks {
            if !bits.contains_key(name) {
                let used: HashSet<i64> = bits.values().copied().collect();
                let bit = (0..62)
                    .map(|i| 1i64 << i)
                    .find(|b| !used.contains(b))
                    .ok_or(OutboxError::TooManyUplinks)?;
                self.conn
                    .execute(
                        "INSERT INTO uplinks (name, bit) VALUES (?1, ?2)",
                        params![name, bit],
                    )
                    .map_err(sql(&p))?;
                bits.insert(name.clone(), bit);
            }
        }
        self.all_bits = uplinks
            .iter()
            .filter_map(|n| bits.get(n))
            .fold(0, |a, b| a | b);
        self.bits = bits;
        Ok(())
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

    /// Whether a Device resource is already stored.
    pub fn has_device(&self, id: &str) -> bool {
        self.known_devices.contains(id)
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

    /// Stores a Device resource (inside a transaction).
    pub fn put_device(&mut self, device: &StoredDevice) -> Result<(), OutboxError> {
        self.conn
            .prepare_cached("INSERT OR REPLACE INTO devices (id, key_id, nonce, sealed) VALUES (?1, ?2, ?3, ?4)")
            .and_then(|mut s| s.execute(params![device.id, device.sealed.key_id as i64, device.sealed.nonce.as_slice(), device.sealed.ciphertext]))
            .map_err(sql(&self.path))?;
        self.known_devices.insert(device.id.clone());
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

    /// Up to `limit` rows waiting for `uplink` with `seq > after`, oldest first, with the
    /// Device resources they reference.
    pub fn fetch(
        &mut self,
        uplink: &str,
        after: i64,
        limit: usize,
    ) -> Result<(Vec<StoredRow>, Vec<StoredDevice>), OutboxError> {
        let bit = self.bit(uplink)?;
        let p = self.path.clone();
        let mut stmt = self
            .conn
            .prepare_cached("SELECT seq, created_ms, device_id, key_id, nonce, sealed FROM rows WHERE seq > ?1 AND (pending & ?2) != 0 ORDER BY seq LIMIT ?3")
            .map_err(sql(&p))?;
        let rows: Vec<StoredRow> = stmt
            .query_map(params![after, bit, limit as i64], |r| {
                Ok(StoredRow {
                    seq: r.get(0)?,
                    created_ms: r.get(1)?,
                    device_id: r.get(2)?,
                    sealed: sealed_from(r.get(3)?, r.get(4)?, r.get(5)?),
                })
            })
            .map_err(sql(&p))?
            .collect::<Result<_, _>>()
            .map_err(sql(&p))?;
        drop(stmt);
        let ids: HashSet<&str> = rows.iter().map(|r| r.device_id.as_str()).collect();
        let mut devices = Vec::with_capacity(ids.len());
        let mut stmt = self
            .conn
            .prepare_cached("SELECT key_id, nonce, sealed FROM devices WHERE id = ?1")
            .map_err(sql(&p))?;
        for id in ids {
            if let Some(sealed) = stmt
                .query_row([id], |r| Ok(sealed_from(r.get(0)?, r.get(1)?, r.get(2)?)))
                .optional()
                .map_err(sql(&p))?
            {
                devices.push(StoredDevice {
                    id: id.to_string(),
                    sealed,
                });
            }
        }
        Ok((rows, devices))
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
    pub fn dead_letter(
        &mut self,
        uplink: &str,
        seq: i64,
        len: usize,
        reason: &Sealed,
    ) -> Result<(), OutboxError> {
        let p = self.path.clone();
        self.conn
            .prepare_cached(
                "INSERT OR REPLACE INTO dead_letters (uplink, seq, at_ms, device_id, key_id, nonce, sealed, reason_nonce, reason_sealed)
                 SELECT ?1, seq, ?2, device_id, key_id, nonce, sealed, ?3, ?4 FROM rows WHERE seq = ?5",
            )
            .and_then(|mut s| s.execute(params![uplink, now_ms(), reason.nonce.as_slice(), reason.ciphertext, seq]))
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
            let oldest: Option<(i64, i64, i64)> = self
                .conn
                .prepare_cached(
                    "SELECT seq, created_ms, LENGTH(sealed) FROM rows ORDER BY seq LIMIT 1",
                )
                .and_then(|mut s| {
                    s.query_row([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                        .optional()
                })
                .map_err(sql(&p))?;
            let Some((seq, created, len)) = oldest else {
                break;
            };
            let too_old = min_created_ms.is_some_and(|m| created < m);
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

    /// Counts for `outbox status`.
    pub fn status(&self, configured: &[String]) -> Result<Status, OutboxError> {
        let p = &self.path;
        let rows: i64 = self
            .conn
            .query_row("SELECT COUNT(*) FROM rows", [], |r| r.get(0))
            .map_err(sql(p))?;
        let evicted: i64 = self
            .conn
            .query_row(
                "SELECT value FROM counters WHERE name = 'evicted'",
                [],
                |r| r.get(0),
            )
            .optional()
            .map_err(sql(p))?
            .unwrap_or(0);
        let mut stmt = self
            .conn
            .prepare("SELECT name, bit, delivered, dead_lettered FROM uplinks ORDER BY bit")
            .map_err(sql(p))?;
        let list: Vec<(String, i64, i64, i64)> = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .map_err(sql(p))?
            .collect::<Result<_, _>>()
            .map_err(sql(p))?;
        let mut uplinks = Vec::new();
        for (name, bit, delivered, dead) in list {
            let (queued, oldest): (i64, Option<i64>) = self
                .conn
                .query_row(
                    "SELECT COUNT(*), MIN(created_ms) FROM rows WHERE (pending & ?1) != 0",
                    [bit],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .map_err(sql(p))?;
            uplinks.push(UplinkStatus {
                configured: configured.contains(&name),
                name,
                queued: queued as u64,
                oldest_ms: oldest,
                delivered: delivered.max(0) as u64,
                dead_lettered: dead.max(0) as u64,
            });
        }
        let mut stmt = self
            .conn
            .prepare("SELECT key_id, COUNT(*) FROM rows GROUP BY key_id")
            .map_err(sql(p))?;
        let keys_in_use = stmt
            .query_map([], |r| {
                Ok((
                    format!("{:08x}", r.get::<_, i64>(0)? as u32),
                    r.get::<_, i64>(1)? as u64,
                ))
            })
            .map_err(sql(p))?
            .collect::<Result<_, _>>()
            .map_err(sql(p))?;
        Ok(Status {
            path: self.path.clone(),
            rows: rows as u64,
            payload_bytes: self.payload_bytes,
            disk_bytes: disk_bytes(&self.path),
            evicted: evicted.max(0) as u64,
            uplinks,
            keys_in_use,
        })
    }
}

/// The status of a database opened read-only, without a key (safe while the daemon runs).
pub fn read_only_status(path: &Path, configured: &[String]) -> Result<Status, OutboxError> {
    if !path.exists() {
        return Err(OutboxError::Io {
            path: path.to_path_buf(),
            source: std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "no outbox database here yet (the gateway creates it at its first start)",
            ),
        });
    }
    let conn = open_read_only(path)?;
    let mut store = Store {
        conn,
        path: path.to_path_buf(),
        bits: HashMap::new(),
        all_bits: 0,
        known_devices: HashSet::new(),
        next_seq: 0,
        payload_bytes: 0,
    };
    (store.next_seq, store.payload_bytes) = store.load_counters()?;
    store.status(configured)
}

/// A dead letter as stored (the reason still sealed).
#[derive(Debug, Clone)]
pub struct StoredDeadLetter {
    /// The uplink that rejected the row.
    pub uplink: String,
    /// The row's sequence number.
    pub seq: i64,
    /// When it was rejected (Unix ms).
    pub at_ms: i64,
    /// The server's reason, sealed.
    pub reason: Sealed,
}

/// Opens an existing outbox read-only (its header checked first), waiting up to 5 s
/// for the daemon's writer.
fn open_read_only(path: &Path) -> Result<Connection, OutboxError> {
    check_header(path)?;
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(sql(path))?;
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .map_err(sql(path))?;
    Ok(conn)
}

/// The dead letters of a database opened read-only.
pub fn read_only_dead_letters(path: &Path) -> Result<Vec<StoredDeadLetter>, OutboxError> {
    let conn = open_read_only(path)?;
    let mut stmt = conn
        .prepare("SELECT uplink, seq, at_ms, key_id, reason_nonce, reason_sealed FROM dead_letters ORDER BY at_ms, seq")
        .map_err(sql(path))?;
    let rows = stmt
        .query_map([], |r| {
            Ok(StoredDeadLetter {
                uplink: r.get(0)?,
                seq: r.get(1)?,
                at_ms: r.get(2)?,
                reason: sealed_from(r.get(3)?, r.get(4)?, r.get(5)?),
            })
        })
        .map_err(sql(path))?
        .collect::<Result<_, _>>()
        .map_err(sql(path))?;
    Ok(rows)
}

/// A message a driver refused, as stored (sealed).
#[derive(Debug, Clone)]
pub struct StoredIngestDeadLetter {
    /// Its id (insertion order).
    pub id: i64,
    /// When it was received (Unix ms).
    pub at_ms: i64,
    /// The transport (`mqtt`).
    pub transport: String,
    /// The payload's size as received.
    pub size: u64,
    /// Source, reason and payload, packed and sealed.
    pub sealed: Sealed,
}

/// The ingest dead letters of a database opened read-only (none in a database created
/// before they existed).
pub fn read_only_ingest_dead_letters(
    path: &Path,
) -> Result<Vec<StoredIngestDeadLetter>, OutboxError> {
    let conn = open_read_only(path)?;
    let exists: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'ingest_dead_letters'",
            [],
            |r| r.get(0),
        )
        .map_err(sql(path))?;
    if exists == 0 {
        return Ok(Vec::new());
    }
    let mut stmt = conn
        .prepare("SELECT id, at_ms, transport, size, key_id, nonce, sealed FROM ingest_dead_letters ORDER BY id")
        .map_err(sql(path))?;
    let rows = stmt
        .query_map([], |r| {
            Ok(StoredIngestDeadLetter {
                id: r.get(0)?,
                at_ms: r.get(1)?,
                transport: r.get(2)?,
                size: r.get::<_, i64>(3)?.max(0) as u64,
                sealed: sealed_from(r.get(4)?, r.get(5)?, r.get(6)?),
            })
        })
        .map_err(sql(path))?
        .collect::<Result<_, _>>()
        .map_err(sql(path))?;
    Ok(rows)
}

/// Bytes of a database's files (main, `-wal`, `-shm`).
pub fn disk_bytes(path: &Path) -> u64 {
    ["", "-wal", "-shm"]
        .iter()
        .filter_map(|suffix| {
            let mut p = path.as_os_str().to_owned();
            p.push(suffix);
            std::fs::metadata(PathBuf::from(p)).ok().map(|m| m.len())
        })
        .sum()
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
