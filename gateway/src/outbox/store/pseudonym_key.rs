//! The pseudonymization key the outbox was used with. The `meta` table records a
//! fingerprint of it (an HMAC of a fixed label under the key, never the key), taken at the
//! first start; a later start with another key is refused, since every pseudonym would
//! change and the backend would file new readings under unknown patients. Accepting a new
//! key is explicit: `iomt-gateway outbox accept-pseudonym-key` records its fingerprint,
//! the previous one and the time, and the daemon's next start warns once that pseudonyms
//! changed.

use std::path::Path;

use rusqlite::{params, Connection, OpenFlags, OptionalExtension};

use super::{now_ms, sql, Store};
use crate::outbox::OutboxError;

/// The `meta` key of the fingerprint in use.
const FINGERPRINT: &str = "pseudonym_key_fingerprint";
/// The `meta` key of the fingerprint before the last accepted change.
const PREVIOUS: &str = "pseudonym_key_previous_fingerprint";
/// The `meta` key of when a new key was accepted (ms since the epoch).
const ACCEPTED_MS: &str = "pseudonym_key_accepted_ms";
/// The `meta` key set once the daemon logged an accepted change.
const ACCEPT_LOGGED: &str = "pseudonym_key_accept_logged";

fn meta(conn: &Connection, path: &Path, key: &str) -> Result<Option<String>, OutboxError> {
    conn.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
        .optional()
        .map_err(sql(path))
}

fn set_meta(conn: &Connection, path: &Path, key: &str, value: &str) -> Result<(), OutboxError> {
    conn.execute(
        "INSERT INTO meta (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        params![key, value],
    )
    .map(drop)
    .map_err(sql(path))
}

impl Store {
    /// Records the pseudonymization key's `fingerprint` at the first start; refuses
    /// another key later. Logs once (a warning) a change accepted with the command.
    pub fn check_pseudonym_key(&mut self, fingerprint: &str) -> Result<(), OutboxError> {
        let path = self.path.clone();
        match meta(&self.conn, &path, FINGERPRINT)? {
            None => {
                set_meta(&self.conn, &path, FINGERPRINT, fingerprint)?;
                tracing::info!(
                    fingerprint,
                    "recorded the pseudonymization key's fingerprint with the outbox; another key will be refused"
                );
            }
            Some(recorded) if recorded == fingerprint => {
                if meta(&self.conn, &path, ACCEPTED_MS)?.is_some()
                    && meta(&self.conn, &path, ACCEPT_LOGGED)?.is_none()
                {
                    tracing::warn!(
                        fingerprint,
                        previous = meta(&self.conn, &path, PREVIOUS)?.unwrap_or_default(),
                        "running with a new pseudonymization key accepted by `outbox accept-pseudonym-key`: patient, device and gateway pseudonyms differ from those sent before"
                    );
                    set_meta(&self.conn, &path, ACCEPT_LOGGED, "1")?;
                }
            }
            Some(recorded) => {
                return Err(OutboxError::PseudonymKeyChanged {
                    path,
                    recorded,
                    current: fingerprint.to_string(),
                })
            }
        }
        Ok(())
    }
}

/// Accepts the pseudonymization key of `fingerprint` for the outbox at `path` (which must
/// exist): records it with the previous one and the time. Returns the previous
/// fingerprint (`None` when none was recorded).
pub fn accept_pseudonym_key(path: &Path, fingerprint: &str) -> Result<Option<String>, OutboxError> {
    if !path.exists() {
        return Err(OutboxError::Io {
            path: path.to_path_buf(),
            source: std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "no outbox database here; the daemon records the key at its first start, there is nothing to accept",
            ),
        });
    }
    super::open::check_header(path)?;
    let mut conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(sql(path))?;
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .map_err(sql(path))?;
    let tx = conn.transaction().map_err(sql(path))?;
    let previous = meta(&tx, path, FINGERPRINT)?;
    if previous.as_deref() != Some(fingerprint) {
        if let Some(p) = &previous {
            set_meta(&tx, path, PREVIOUS, p)?;
        }
        set_meta(&tx, path, FINGERPRINT, fingerprint)?;
        set_meta(&tx, path, ACCEPTED_MS, &now_ms().to_string())?;
        tx.execute("DELETE FROM meta WHERE key = ?1", [ACCEPT_LOGGED])
            .map_err(sql(path))?;
    }
    tx.commit().map_err(sql(path))?;
    Ok(previous)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbox::seal::Keyring;

    #[test]
    fn a_changed_key_is_refused_until_accepted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("o.db");
        let ring = Keyring::new(&[1; 32]);
        let names = ["fhir".to_string()];
        Store::open(&path, &ring, &names)
            .unwrap()
            .check_pseudonym_key("aaaa")
            .unwrap();
        let mut store = Store::open(&path, &ring, &names).unwrap();
        store.check_pseudonym_key("aaaa").unwrap();
        let err = store.check_pseudonym_key("bbbb").unwrap_err().to_string();
        assert!(err.contains("accept-pseudonym-key"), "{err}");
        drop(store);
        assert_eq!(
            accept_pseudonym_key(&path, "bbbb").unwrap().as_deref(),
            Some("aaaa")
        );
        let mut store = Store::open(&path, &ring, &names).unwrap();
        store.check_pseudonym_key("bbbb").unwrap();
        assert!(store.check_pseudonym_key("aaaa").is_err());
    }
}
