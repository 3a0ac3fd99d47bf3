//! The ingest dead letters: messages a driver refused, sealed and bound to their row id.

use std::path::{Path, PathBuf};

use super::payload::{pack, unpack};
use super::seal::Keyring;
use super::store;
use super::transaction::Control;
use super::{Outbox, OutboxError};

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

impl Outbox {
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
}
