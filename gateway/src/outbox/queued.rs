//! Appends on their way to the writer: plain as the pipeline hands them over, sealed as
//! the writer task takes them (see "Sealing" in the module doc of `outbox`).

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use iomt_drivers::Committed;
use tokio::sync::oneshot;

use super::payload::{pack, row_aad};
use super::seal::{self, Keyring};
use super::store::StoredRow;

/// A Device resource's JSON as an append carries it: shared (most appends never copy or
/// seal it), with a fingerprint of its text, by which the store tells a Device it holds
/// already from a new resource under the same id (a device that reports a new firmware
/// revision, say).
#[derive(Debug, Clone)]
pub struct DeviceJsonIn {
    json: Arc<[u8]>,
    fingerprint: u64,
}

impl DeviceJsonIn {
    /// Takes `json`, fingerprinting it once.
    pub fn new(json: Arc<[u8]>) -> Self {
        // SipHash with fixed keys: the same text gives the same value in this process
        // (fingerprints are kept in memory only); telling changes apart needs no secret.
        let mut hasher = std::hash::DefaultHasher::new();
        json.hash(&mut hasher);
        Self {
            fingerprint: hasher.finish(),
            json,
        }
    }

    /// The JSON text.
    pub fn json(&self) -> &[u8] {
        &self.json
    }

    /// The fingerprint of the text.
    pub fn fingerprint(&self) -> u64 {
        self.fingerprint
    }
}

impl From<Vec<u8>> for DeviceJsonIn {
    fn from(json: Vec<u8>) -> Self {
        Self::new(json.into())
    }
}

/// An append on its way to the writer task, which compresses and seals its rows as it
/// takes it (`writer.rs`), while the previous transaction runs on the database thread:
/// the pipeline's task, the busier one under load, only normalizes and serializes, and
/// the sealing still overlaps the commit before it.
pub(super) struct QueuedAppend {
    /// The Device resource, plain (every append carries it: the writer seals and stores
    /// it only when it does not remember having done so, see `store/devices.rs`).
    pub(super) device: Option<(String, DeviceJsonIn)>,
    /// (identifier, row) pairs.
    pub(super) rows: Vec<(String, QueuedRow)>,
    pub(super) ack: Option<oneshot::Sender<Committed>>,
    pub(super) source_waits: bool,
}

/// A row to store, its Observation's JSON still plain.
pub(super) struct QueuedRow {
    pub(super) seq: i64,
    pub(super) created_ms: i64,
    pub(super) device_id: String,
    pub(super) json: Vec<u8>,
}

/// An append as the writer batches it: its rows compressed and sealed.
pub(super) struct SealedAppend {
    /// The Device resource, plain (sealed by the transaction that stores it, if any).
    pub(super) device: Option<(String, DeviceJsonIn)>,
    /// (identifier, row) pairs.
    pub(super) rows: Vec<(String, StoredRow)>,
    pub(super) ack: Option<oneshot::Sender<Committed>>,
    pub(super) source_waits: bool,
}

impl QueuedAppend {
    /// Compresses and seals the rows (each bound to its seq and device).
    pub(super) fn seal(self, keyring: &Keyring) -> Result<SealedAppend, seal::SealError> {
        let mut rows = Vec::with_capacity(self.rows.len());
        for (id, row) in self.rows {
            let sealed = keyring.seal_owned(pack(&row.json), &row_aad(row.seq, &row.device_id))?;
            rows.push((
                id,
                StoredRow {
                    seq: row.seq,
                    created_ms: row.created_ms,
                    device_id: row.device_id,
                    sealed,
                },
            ));
        }
        Ok(SealedAppend {
            device: self.device,
            rows,
            ack: self.ack,
            source_waits: self.source_waits,
        })
    }
}
