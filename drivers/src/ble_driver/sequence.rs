//! The last glucose record sequence number fetched from each meter, kept in a small
//! JSON file so that a restart neither fetches a record twice nor skips one.
//!
//! A sequence number is recorded only after its reading is committed to the outbox
//! (acknowledge after commit). The file is rewritten atomically: written to a temporary
//! file in the same directory, synced, then renamed over the old one. It is created 0600
//! whatever the umask: it names meters by their Bluetooth address.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Why the sequence file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum SequenceError {
    /// Reading or writing the file failed.
    #[error("glucose sequence file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file exists but is not what this module writes.
    #[error("glucose sequence file {path} is corrupt ({reason}); move it away to fetch every stored record again")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The parse error.
        reason: String,
    },
}

/// Last fetched sequence number per device address.
#[derive(Debug)]
pub struct SequenceStore {
    path: PathBuf,
    last: BTreeMap<String, u16>,
}

impl SequenceStore {
    /// Opens the store at `path`; a missing file is an empty store, a corrupt one an error.
    pub fn open(path: &Path) -> Result<Self, SequenceError> {
        let last = match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| SequenceError::Corrupt {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(source) => {
                return Err(SequenceError::Io {
                    path: path.to_path_buf(),
                    source,
                })
            }
        };
        Ok(Self {
            path: path.to_path_buf(),
            last,
        })
    }

    /// The last sequence number fetched from `address`, if any.
    pub fn last(&self, address: &str) -> Option<u16> {
        self.last.get(address).copied()
    }

    /// Records `sequence` as fetched from `address` (if it is newer) and writes the file.
    pub fn record(&mut self, address: &str, sequence: u16) -> Result<(), SequenceError> {
        if self.last(address).is_some_and(|l| l >= sequence) {
            return Ok(());
        }
        self.last.insert(address.to_string(), sequence);
        self.write()
    }

    fn write(&self) -> Result<(), SequenceError> {
        let io = |source| SequenceError::Io {
            path: self.path.clone(),
            source,
        };
        let dir = self
            .path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let bytes = serde_json::to_vec_pretty(&self.last).map_err(|e| io(e.into()))?;
        let mut tmp = tempfile_in(dir, &self.path).map_err(io)?;
        tmp.1.write_all(&bytes).map_err(io)?;
        tmp.1.sync_all().map_err(io)?;
        std::fs::rename(&tmp.0, &self.path).map_err(io)?;
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }
}

fn tempfile_in(dir: &Path, target: &Path) -> std::io::Result<(PathBuf, std::fs::File)> {
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "sequence".into());
    let path = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    // 0600 whatever the umask: the file names meters by their Bluetooth address.
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)?;
    // A leftover from a crash keeps its old mode when opened again.
    file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    Ok((path, file))
}

/// The RACP request for the records after `last` (all records when none was fetched).
pub fn racp_request(last: Option<u16>) -> Option<Vec<u8>> {
    match last {
        None => Some(vec![0x01, 0x01]),
        Some(u16::MAX) => None,
        Some(l) => {
            let [lo, hi] = (l + 1).to_le_bytes();
            Some(vec![0x01, 0x03, 0x01, lo, hi])
        }
    }
}

/// A Record Access Control Point indication, as far as the driver cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RacpResponse {
    /// The report of stored records ended successfully.
    Success,
    /// The meter has no records matching the request.
    NoRecords,
    /// Any other response code (request opcode, code).
    Failed(u8, u8),
    /// Not a response code indication.
    Other,
}

/// Reads a RACP indication.
pub fn racp_response(bytes: &[u8]) -> RacpResponse {
    match bytes {
        [0x06, 0x00, 0x01, 0x01] => RacpResponse::Success,
        [0x06, 0x00, 0x01, 0x06] => RacpResponse::NoRecords,
        [0x06, 0x00, op, code] => RacpResponse::Failed(*op, *code),
        _ => RacpResponse::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_store_remembers_the_last_sequence_across_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("seq.json");
        let mut s = SequenceStore::open(&path).unwrap();
        assert_eq!(s.last("AA"), None);
        s.record("AA", 5).unwrap();
        s.record("AA", 3).unwrap();
        let s = SequenceStore::open(&path).unwrap();
        assert_eq!(s.last("AA"), Some(5));
        // It names meters by their Bluetooth address: never readable by others, whatever
        // the umask (before, 0644 under the usual umask 022).
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "mode {mode:o}");
    }

    #[test]
    fn a_corrupt_store_is_refused_not_reset() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("seq.json");
        std::fs::write(&path, b"{not json").unwrap();
        assert!(matches!(
            SequenceStore::open(&path),
            Err(SequenceError::Corrupt { .. })
        ));
    }

    #[test]
    fn the_request_asks_for_records_after_the_last_one_fetched() {
        assert_eq!(racp_request(None), Some(vec![1, 1]));
        assert_eq!(racp_request(Some(0x0010)), Some(vec![1, 3, 1, 0x11, 0]));
        assert_eq!(racp_request(Some(u16::MAX)), None);
    }

    #[test]
    fn racp_responses_are_told_apart() {
        assert_eq!(racp_response(&[6, 0, 1, 1]), RacpResponse::Success);
        assert_eq!(racp_response(&[6, 0, 1, 6]), RacpResponse::NoRecords);
        assert_eq!(racp_response(&[6, 0, 1, 5]), RacpResponse::Failed(1, 5));
        assert_eq!(racp_response(&[5, 0, 2, 0]), RacpResponse::Other);
    }
}
