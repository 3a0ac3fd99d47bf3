//! The file uplink: each Bundle becomes one JSON file in a directory.
//!
//! Used by `demo` and for air-gapped kits whose data is collected by hand. A file is
//! written under a temporary name, synced, and renamed into place, so a reader (or a crash)
//! never sees half a Bundle. Bundles are created mode 0640 whatever the umask (pseudonymized,
//! but health data): the service user and its group, never others.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::{batch_size, DeliveryError, DeliveryFuture, Settings, Uplink, UplinkError};
use crate::fhir::Bundle;

/// `[[uplinks]]` with `kind = "file"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFileUplink {
    /// A unique name (default `file`); the outbox tracks delivery per name.
    pub name: Option<String>,
    /// The directory.
    pub dir: PathBuf,
    /// Most Observations per Bundle (default 100; 1 to 10000).
    pub batch_size: Option<usize>,
}

impl RawFileUplink {
    /// Validates the table into settings whose kind is the directory (retries of a failed
    /// write wait at most 60 s).
    pub fn validate(&self) -> Result<Settings<PathBuf>, String> {
        Ok(Settings {
            name: self.name.clone().unwrap_or_else(|| "file".into()),
            batch_size: batch_size(self.batch_size)?,
            backoff_max: Duration::from_secs(60),
            kind: self.dir.clone(),
        })
    }
}

/// Writes Bundles as `bundle-<UTC time>-<n>.json`.
#[derive(Debug)]
pub struct FileUplink {
    name: String,
    dir: PathBuf,
    written: u64,
}

impl FileUplink {
    /// An uplink writing into `dir`, which is created if missing.
    pub fn new(name: &str, dir: &Path) -> Result<Self, UplinkError> {
        std::fs::create_dir_all(dir).map_err(|e| UplinkError::Setup {
            uplink: name.into(),
            reason: format!("cannot create directory {}: {e}", dir.display()),
        })?;
        Ok(Self {
            name: name.into(),
            dir: dir.to_path_buf(),
            written: 0,
        })
    }

    /// How many Bundles were written.
    pub fn written(&self) -> u64 {
        self.written
    }

    fn write(&mut self, bundle: &Bundle<'_>) -> std::io::Result<PathBuf> {
        let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%S%.3fZ");
        let name = format!("bundle-{stamp}-{:06}.json", self.written + 1);
        let tmp = self.dir.join(format!(".{name}.tmp"));
        let path = self.dir.join(&name);
        // 0640 whatever the umask: the service user writes, its group (a collector) may
        // read, others may not.
        let _ = std::fs::remove_file(&tmp);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o640)
            .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
            .open(&tmp)?;
        serde_json::to_writer_pretty(&mut f, bundle)?;
        f.write_all(b"\n")?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        std::fs::File::open(&self.dir)?.sync_all()?;
        self.written += 1;
        Ok(path)
    }
}

impl Uplink for FileUplink {
    fn name(&self) -> &str {
        &self.name
    }

    fn deliver<'a>(&'a mut self, bundle: &'a Bundle<'_>) -> DeliveryFuture<'a> {
        Box::pin(async move {
            // Bundles are small; a blocking write of a few KiB does not stall the runtime
            // noticeably, and keeps ordering trivially.
            let path = self.write(bundle).map_err(|e| DeliveryError::Transient {
                reason: format!("cannot write a bundle into {}: {e}", self.dir.display()),
                retry_after: None,
            })?;
            tracing::debug!(path = %path.display(), entries = bundle.entry.len(), "bundle written");
            Ok(())
        })
    }
}
