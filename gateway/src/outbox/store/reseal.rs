//! Re-sealing after a key rotation: what is kept for good (Device resources, dead
//! letters, refused messages) is sealed again under the current key when the outbox
//! opens, so a retired key is needed only by queued rows, which leave once delivered.
//! Without it, a retired key would be needed for ever, and deleting it (as `outbox
//! status` seemed to allow) locked the gateway out of its own database.

use rusqlite::{params, OptionalExtension};

use super::{ingest_aad, sealed_from, sql, Store};
use crate::outbox::seal::{Keyring, Sealed};
use crate::outbox::{device_aad, reason_aad, row_aad, OutboxError};

/// What one opening re-sealed, and what it could not.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Resealed {
    /// Values sealed again under the current key.
    pub resealed: u64,
    /// Values under another key that do not open (damaged): left as they are, they keep
    /// their key listed in `outbox status`.
    pub unopened: u64,
}

/// A dead letter under another key: (uplink, seq, device id if text, payload, reason).
type OldDeadLetter = (String, i64, Option<String>, Sealed, Sealed);

impl Store {
    /// Seals again, under the current key, every Device resource, dead letter and
    /// refused message sealed under another key, in one transaction.
    pub(super) fn reseal(&mut self, keyring: &Keyring) -> Result<Resealed, OutboxError> {
        let current = i64::from(keyring.current().id);
        let p = self.path.clone();
        let mut done = Resealed::default();
        let devices: Vec<(String, Sealed)> = self
            .conn
            .prepare("SELECT id, key_id, nonce, sealed FROM devices WHERE key_id != ?1 AND typeof(key_id) = 'integer' AND typeof(id) = 'text' AND typeof(nonce) = 'blob' AND typeof(sealed) = 'blob'")
            .and_then(|mut s| {
                s.query_map([current], |r| {
                    Ok((r.get(0)?, sealed_from(r.get(1)?, r.get(2)?, r.get(3)?)))
                })?
                .collect()
            })
            .map_err(sql(&p))?;
        let letters: Vec<OldDeadLetter> = self
            .conn
            .prepare("SELECT uplink, seq, CASE WHEN typeof(device_id) = 'text' THEN device_id END, key_id, nonce, sealed, reason_nonce, reason_sealed FROM dead_letters WHERE key_id != ?1 AND typeof(key_id) = 'integer' AND typeof(nonce) = 'blob' AND typeof(sealed) = 'blob' AND typeof(reason_nonce) = 'blob' AND typeof(reason_sealed) = 'blob'")
            .and_then(|mut s| {
                s.query_map([current], |r| {
                    let key: i64 = r.get(3)?;
                    Ok((
                        r.get(0)?,
                        r.get(1)?,
                        r.get::<_, Option<String>>(2).unwrap_or(None),
                        sealed_from(key, r.get(4)?, r.get(5)?),
                        sealed_from(key, r.get(6)?, r.get(7)?),
                    ))
                })?
                .collect()
            })
            .map_err(sql(&p))?;
        let has_ingest = self
            .conn
            .query_row(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'ingest_dead_letters'",
                [],
                |_| Ok(()),
            )
            .optional()
            .map_err(sql(&p))?
            .is_some();
        let refused: Vec<(i64, Sealed)> = if has_ingest {
            self.conn
                .prepare("SELECT id, key_id, nonce, sealed FROM ingest_dead_letters WHERE key_id != ?1 AND typeof(key_id) = 'integer' AND typeof(nonce) = 'blob' AND typeof(sealed) = 'blob'")
                .and_then(|mut s| {
                    s.query_map([current], |r| {
                        Ok((r.get(0)?, sealed_from(r.get(1)?, r.get(2)?, r.get(3)?)))
                    })?
                    .collect()
                })
                .map_err(sql(&p))?
        } else {
            Vec::new()
        };
        if devices.is_empty() && letters.is_empty() && refused.is_empty() {
            return Ok(done);
        }
        self.begin()?;
        let result = (|| -> Result<(), OutboxError> {
            for (id, sealed) in devices {
                let aad = device_aad(&id);
                let Ok(plain) = keyring.open(&sealed, &aad) else {
                    done.unopened += 1;
                    continue;
                };
                let new = keyring.seal(&plain, &aad)?;
                self.conn
                    .execute(
                        "UPDATE devices SET key_id = ?1, nonce = ?2, sealed = ?3 WHERE id = ?4",
                        params![current, new.nonce.as_slice(), new.ciphertext, id],
                    )
                    .map_err(sql(&p))?;
                done.resealed += 1;
            }
            for (uplink, seq, device_id, payload, reason) in letters {
                let reason_aad = reason_aad(&uplink, seq);
                // Dead letters written before their reason's key was recorded carry
                // their row's key id, while the reason was sealed under the key current
                // then: try every key of the keyring.
                let reason_plain = keyring.open(&reason, &reason_aad).ok().or_else(|| {
                    keyring.keys().find_map(|k| {
                        let under = Sealed {
                            key_id: k.id,
                            ..reason.clone()
                        };
                        keyring.open(&under, &reason_aad).ok()
                    })
                });
                let Some(reason_plain) = reason_plain else {
                    done.unopened += 1;
                    continue;
                };
                let new_reason = keyring.seal(&reason_plain, &reason_aad)?;
                // A payload that does not open (a damaged row) is kept as it was.
                let new_payload = match device_id {
                    Some(device) => {
                        let aad = row_aad(seq, &device);
                        match keyring.open(&payload, &aad) {
                            Ok(plain) => Some(keyring.seal(&plain, &aad)?),
                            Err(_) => None,
                        }
                    }
                    None => None,
                };
                let payload = new_payload.as_ref().unwrap_or(&payload);
                self.conn
                    .execute(
                        "UPDATE dead_letters SET key_id = ?1, nonce = ?2, sealed = ?3, reason_nonce = ?4, reason_sealed = ?5 WHERE uplink = ?6 AND seq = ?7",
                        params![
                            current,
                            payload.nonce.as_slice(),
                            payload.ciphertext,
                            new_reason.nonce.as_slice(),
                            new_reason.ciphertext,
                            uplink,
                            seq
                        ],
                    )
                    .map_err(sql(&p))?;
                done.resealed += 1;
            }
            for (id, sealed) in refused {
                let aad = ingest_aad(id);
                let Ok(plain) = keyring.open(&sealed, &aad) else {
                    done.unopened += 1;
                    continue;
                };
                let new = keyring.seal(&plain, &aad)?;
                self.conn
                    .execute(
                        "UPDATE ingest_dead_letters SET key_id = ?1, nonce = ?2, sealed = ?3 WHERE id = ?4",
                        params![current, new.nonce.as_slice(), new.ciphertext, id],
                    )
                    .map_err(sql(&p))?;
                done.resealed += 1;
            }
            Ok(())
        })();
        match result {
            Ok(()) => self.commit()?,
            Err(e) => {
                self.rollback();
                return Err(e);
            }
        }
        Ok(done)
    }
}
