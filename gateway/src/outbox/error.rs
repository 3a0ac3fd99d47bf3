//! Why the outbox cannot work: the errors of opening it and of its transactions.

use std::path::{Path, PathBuf};

use super::seal::SealError;

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
    /// The pseudonymization key is not the one the outbox was used with.
    #[error("the pseudonymization key ([pseudonymization] key_file) is not the one the outbox {path} was used with (its fingerprint is {current}, the outbox recorded {recorded}): every patient and device pseudonym would change and the backend would file new readings under unknown patients. If the key file was replaced by mistake (a rebuilt SD card, a wrong file), put the original back. If the key was changed on purpose and the backend has the new key, run `iomt-gateway outbox accept-pseudonym-key --config FILE` and start again")]
    PseudonymKeyChanged {
        /// The outbox database.
        path: PathBuf,
        /// The fingerprint recorded.
        recorded: String,
        /// The fingerprint of the key given now.
        current: String,
    },
    /// SQLite failed.
    #[error("outbox database {path}: {reason}")]
    Sqlite {
        /// The file.
        path: PathBuf,
        /// SQLite's message.
        reason: String,
    },
    /// The file system holding the database is full (SQLite's own words in `reason`).
    #[error("outbox database {path}: {reason} (the file system is full: free space there)")]
    DiskFull {
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
    /// The same failure again, for every caller of a transaction that failed (the error
    /// itself cannot be cloned): SQLite's reason is kept, never replaced by a summary.
    pub(super) fn again(&self) -> OutboxError {
        match self {
            OutboxError::DiskFull { path, reason } => OutboxError::DiskFull {
                path: path.clone(),
                reason: reason.clone(),
            },
            OutboxError::Sqlite { path, reason } | OutboxError::Damaged { path, reason } => {
                OutboxError::Sqlite {
                    path: path.clone(),
                    reason: reason.clone(),
                }
            }
            other => OutboxError::Sqlite {
                path: PathBuf::from("outbox"),
                reason: other.to_string(),
            },
        }
    }

    /// Whether the file system holding the database is full.
    pub fn is_disk_full(&self) -> bool {
        matches!(self, OutboxError::DiskFull { .. })
    }

    pub(super) fn from_sqlite(path: &Path, e: rusqlite::Error) -> Self {
        use rusqlite::ErrorCode;
        if let rusqlite::Error::SqliteFailure(f, _) = &e {
            if f.code == ErrorCode::DiskFull {
                return OutboxError::DiskFull {
                    path: path.to_path_buf(),
                    reason: e.to_string(),
                };
            }
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
