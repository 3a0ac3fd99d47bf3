//! Opening the outbox database: the schema, creation under a temporary name, and the
//! checks that refuse (never reset) a damaged file, a newer schema or a wrong key.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use rusqlite::config::DbConfig;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};

use super::{now_ms, sql, Store};
use crate::outbox::seal::{Keyring, CHECK_LEN};
use crate::outbox::OutboxError;

/// The size the write-ahead log is cut back to after a checkpoint (about SQLite's
/// automatic checkpoint of 1,000 pages).
pub const WAL_LIMIT_BYTES: i64 = 4 * 1024 * 1024;

/// SQLite's page cache, as `PRAGMA cache_size` takes it (negative: KiB).
const PAGE_CACHE_KIB: i64 = -512;

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

/// Reads the first bytes of an existing file to tell an SQLite database from anything else.
pub(super) fn check_header(path: &Path) -> Result<(), OutboxError> {
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

/// Creates an empty file readable and writable by its owner only (whatever the umask),
/// never through a symbolic link.
fn create_private(path: &Path) -> Result<(), OutboxError> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
        .open(path)
        .map(drop)
        .map_err(|e| OutboxError::Io {
            path: path.to_path_buf(),
            source: e,
        })
}

/// Takes the permissions of group and others away from a database (and its -wal and -shm)
/// an older gateway created readable by them; logs what it changed.
fn make_private(path: &Path) -> Result<(), OutboxError> {
    use std::os::unix::fs::PermissionsExt;
    for suffix in ["", "-wal", "-shm"] {
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        let file = PathBuf::from(name);
        let Ok(meta) = std::fs::symlink_metadata(&file) else {
            continue;
        };
        let mode = meta.permissions().mode() & 0o777;
        if meta.file_type().is_file() && mode & 0o077 != 0 {
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode & 0o700))
                .map_err(|e| OutboxError::Io {
                    path: file.clone(),
                    source: e,
                })?;
            tracing::info!(file = %file.display(), was = format!("{mode:o}"), now = format!("{:o}", mode & 0o700), "outbox file made private to the service user");
        }
    }
    Ok(())
}

impl Store {
    /// Opens (or creates) the database at `path` for the configured `uplinks`.
    ///
    /// Refuses, without writing anything, a file that is not an SQLite database, a damaged
    /// database, a newer schema, or a database sealed with keys the keyring lacks.
    pub fn open(path: &Path, keyring: &Keyring, uplinks: &[String]) -> Result<Self, OutboxError> {
        let conn = if path.exists() {
            check_header(path)?;
            make_private(path)?;
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
        // The write-ahead log goes back to at most this size after a checkpoint, so one
        // large transaction (a drain, a vacuum) does not keep its disk space for ever.
        conn.pragma_update(None, "journal_size_limit", WAL_LIMIT_BYTES)
            .map_err(sql(path))?;
        // A page cache of 512 KiB instead of SQLite's 2 MiB: the writer appends at one end
        // of `rows` and deletes at the other, and what it reads again is in the system's
        // page cache anyway. In the MQTT round trip this took 1.5 MiB off the daemon's
        // peak RSS at the same speed (docs/benchmarks.md).
        conn.pragma_update(None, "cache_size", PAGE_CACHE_KIB)
            .map_err(sql(path))?;
        let mut store = Store {
            conn,
            path: path.to_path_buf(),
            bits: HashMap::new(),
            all_bits: 0,
            known_devices: super::devices::KnownDevices::new(),
            opened: None,
            next_seq: 1,
            payload_bytes: 0,
        };
        store
            .conn
            .execute_batch(INGEST_DEAD_LETTERS)
            .map_err(sql(path))?;
        store.register_key(keyring)?;
        // After a rotation, what is kept for good moves to the current key, so only
        // queued rows still need a retired key (see `reseal.rs`).
        let resealed = store.reseal(keyring)?;
        if resealed.resealed > 0 {
            tracing::info!(
                resealed = resealed.resealed,
                "sealed Device resources and dead letters again under the current storage key"
            );
        }
        if resealed.unopened > 0 {
            tracing::warn!(
                unopened = resealed.unopened,
                "stored values under a retired storage key do not open (damaged); they keep that key listed as in use by `outbox status`"
            );
        }
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
        // SQLite would create the file 0644 less the umask; created 0600 first, it keeps
        // that mode, and gives it to the -wal and -shm files it makes next to it.
        create_private(&tmp)?;
        {
            let conn = Connection::open(&tmp).map_err(sql(&tmp))?;
            // No `auto_vacuum`: its pointer-map pages made every deletion commit write
            // about twice the pages (`pipeline` benchmark: 2,848 against 1,477 bytes per
            // delivered Observation). A drained backlog's pages go back to the file
            // system with `VACUUM` instead (`Store::shrink`).
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
        // A key id that is not an integer belongs to a damaged row, which the delivery
        // loop dead-letters; it names no key to ask for.
        let tables: &[&str] = if has_ingest {
            &["rows", "devices", "dead_letters", "ingest_dead_letters"]
        } else {
            &["rows", "devices", "dead_letters"]
        };
        let query = tables
            .iter()
            .map(|t| format!("SELECT DISTINCT key_id FROM {t} WHERE typeof(key_id) = 'integer'"))
            .collect::<Vec<_>>()
            .join(" UNION ");
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
}
