//! Counts and read-only listings: `outbox status` and `outbox dead-letters`, safe while
//! the daemon runs (the database opened read-only, without a key).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags, OptionalExtension};

use super::open::check_header;
use super::{sealed_from, sql, Store};
use crate::outbox::seal::Sealed;
use crate::outbox::OutboxError;

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
    /// Bytes of the outbox's files on disk (main file, write-ahead log, shared memory
    /// index and the disk-space reserve).
    pub disk_bytes: u64,
    /// Rows evicted by the size or age cap since the database was created.
    pub evicted: u64,
    /// Per uplink.
    pub uplinks: Vec<UplinkStatus>,
    /// Key ids still needed, with how many sealed values (queued rows, Device resources,
    /// dead letters, refused messages) each one seals.
    pub keys_in_use: Vec<(String, u64)>,
}

impl Store {
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
                    "SELECT COUNT(*), MIN(CASE WHEN typeof(created_ms) = 'integer' THEN created_ms END) FROM rows WHERE (pending & ?1) != 0",
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
        // Every sealed table counts: a key is needed as long as anything it sealed is
        // kept, not only queued rows (deleting a retired key that Device resources or
        // dead letters still needed locked the gateway out).
        let has_ingest: bool = self
            .conn
            .query_row(
                "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'ingest_dead_letters'",
                [],
                |r| r.get::<_, i64>(0),
            )
            .map_err(sql(p))?
            > 0;
        let mut tables = vec!["rows", "devices", "dead_letters"];
        if has_ingest {
            tables.push("ingest_dead_letters");
        }
        let union = tables
            .iter()
            .map(|t| format!("SELECT key_id FROM {t}"))
            .collect::<Vec<_>>()
            .join(" UNION ALL ");
        let mut stmt = self
            .conn
            .prepare(&format!("SELECT key_id, COUNT(*) FROM ({union}) WHERE typeof(key_id) = 'integer' GROUP BY key_id"))
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
        known_devices: super::devices::KnownDevices::new(),
        opened: None,
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

/// Bytes of a database's files (main, `-wal`, `-shm`, and the disk-space `-reserve`).
pub fn disk_bytes(path: &Path) -> u64 {
    ["", "-wal", "-shm", "-reserve"]
        .iter()
        .filter_map(|suffix| {
            let mut p = path.as_os_str().to_owned();
            p.push(suffix);
            std::fs::metadata(PathBuf::from(p)).ok().map(|m| m.len())
        })
        .sum()
}
