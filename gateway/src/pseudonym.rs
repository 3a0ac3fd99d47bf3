//! Keyed pseudonyms: HMAC-SHA256 of an identifier under the pseudonymization key.
//!
//! Patient and device identifiers leave the gateway only as pseudonyms. The backend holds
//! the same key, so its re-identification service can compute the pseudonym of a patient
//! it enrols (`iomt-gateway pseudonym ID`) and map observations back; anyone without the
//! key learns nothing from a pseudonym, not even whether two deployments share a patient.
//! Each kind of identifier is hashed in its own domain, so a device address can never
//! collide with a patient id.

use std::path::Path;

use ring::hmac;

/// Length of a pseudonymization key in bytes.
pub const KEY_LEN: usize = 32;

/// The kind of identifier being pseudonymized (domain separation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Domain {
    /// A patient identifier.
    Patient,
    /// A measuring device (transport + address, or serial number).
    Device,
    /// The gateway itself.
    Gateway,
}

impl Domain {
    fn label(self) -> &'static [u8] {
        match self {
            Domain::Patient => b"iomt-gateway/v1/patient\0",
            Domain::Device => b"iomt-gateway/v1/device\0",
            Domain::Gateway => b"iomt-gateway/v1/gateway\0",
        }
    }
}

/// Why a key could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The file could not be read.
    #[error("cannot read key file {path}: {source}")]
    Read {
        /// The key file.
        path: String,
        /// The IO error.
        source: std::io::Error,
    },
    /// Group or others may read the file.
    #[error(
        "key file {path} is readable by group or others (mode {mode:o}); run `chmod 600 {path}`"
    )]
    Permissions {
        /// The key file.
        path: String,
        /// Its permission bits.
        mode: u32,
    },
    /// The file does not hold exactly 32 bytes.
    #[error("key file {path} holds {len} bytes, expected {KEY_LEN}; create it with `head -c 32 /dev/urandom > {path} && chmod 600 {path}`")]
    Length {
        /// The key file.
        path: String,
        /// Its length.
        len: usize,
    },
}

/// Reads a 32-byte secret key file, refusing group- or world-readable files.
pub fn read_key_file(path: &Path) -> Result<[u8; KEY_LEN], KeyError> {
    let shown = path.display().to_string();
    let read_err = |source| KeyError::Read {
        path: shown.clone(),
        source,
    };
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path)
            .map_err(read_err)?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            return Err(KeyError::Permissions {
                path: shown,
                mode: mode & 0o777,
            });
        }
    }
    let bytes = std::fs::read(path).map_err(read_err)?;
    <[u8; KEY_LEN]>::try_from(bytes.as_slice()).map_err(|_| KeyError::Length {
        path: shown,
        len: bytes.len(),
    })
}

/// Computes pseudonyms under one key.
#[derive(Clone)]
pub struct Pseudonymizer {
    key: hmac::Key,
}

impl std::fmt::Debug for Pseudonymizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pseudonymizer { key: <redacted> }")
    }
}

impl Pseudonymizer {
    /// A pseudonymizer for a 32-byte key.
    pub fn new(key: &[u8; KEY_LEN]) -> Self {
        Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, key),
        }
    }

    /// The pseudonym of `id` in `domain`: 32 lowercase hex characters (128 bits).
    pub fn pseudonym(&self, domain: Domain, id: &str) -> String {
        let mut ctx = hmac::Context::with_key(&self.key);
        ctx.update(domain.label());
        ctx.update(id.as_bytes());
        hex::encode(&ctx.sign().as_ref()[..16])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pseudonyms_are_stable_keyed_and_domain_separated() {
        let a = Pseudonymizer::new(&[1; KEY_LEN]);
        let b = Pseudonymizer::new(&[2; KEY_LEN]);
        let p = a.pseudonym(Domain::Patient, "MRN-0042");
        assert_eq!(p, a.pseudonym(Domain::Patient, "MRN-0042"));
        assert_eq!(p.len(), 32);
        assert_ne!(p, b.pseudonym(Domain::Patient, "MRN-0042"));
        assert_ne!(p, a.pseudonym(Domain::Device, "MRN-0042"));
        assert!(!p.contains("0042"));
    }

    #[test]
    fn key_files_readable_by_others_are_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        std::fs::write(&path, [7u8; KEY_LEN]).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            read_key_file(&path),
            Err(KeyError::Permissions { .. })
        ));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(read_key_file(&path).unwrap(), [7u8; KEY_LEN]);
        std::fs::write(&path, [7u8; 5]).unwrap();
        assert!(matches!(
            read_key_file(&path),
            Err(KeyError::Length { len: 5, .. })
        ));
    }
}
