//! Secret files: the storage and pseudonymization keys, SMART keys, client credentials,
//! TLS private keys. One place creates them (mode 0600, never overwriting), reads them
//! (refusing group- or world-readable files) and rotates the storage key (the current key
//! appended to `<file>.retired`). The outbox, the pseudonyms, SMART and TLS set-up all use
//! it, so none of them imports another for it.

use std::path::{Path, PathBuf};

/// Length of a key (storage or pseudonymization) in bytes.
pub const KEY_LEN: usize = 32;

/// Why a key could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The file could not be read.
    #[error("cannot read secret file {path}: {source}")]
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
    /// The key file could not be written.
    #[error("cannot write key file {path}: {source}")]
    Write {
        /// The key file.
        path: String,
        /// The IO error.
        source: std::io::Error,
    },
    /// The system random generator failed.
    #[error("the system random generator failed")]
    Random,
    /// The file does not hold exactly 32 bytes (or a multiple, for retired keys).
    #[error("key file {path} holds {len} bytes, expected {KEY_LEN}; create keys with `iomt-gateway keygen`")]
    Length {
        /// The key file.
        path: String,
        /// Its length.
        len: usize,
    },
}

/// Reads a file of one or more concatenated 32-byte keys (mode 0600), e.g. retired keys.
pub fn read_key_list(path: &Path) -> Result<Vec<[u8; KEY_LEN]>, KeyError> {
    let bytes = read_private(path)?;
    if bytes.is_empty() || bytes.len() % KEY_LEN != 0 {
        return Err(KeyError::Length {
            path: path.display().to_string(),
            len: bytes.len(),
        });
    }
    Ok(bytes
        .chunks_exact(KEY_LEN)
        .map(|c| {
            let mut k = [0u8; KEY_LEN];
            k.copy_from_slice(c);
            k
        })
        .collect())
}

/// Creates a new secret file with mode 0600 holding `content`; refuses to overwrite an
/// existing file.
pub fn write_new_secret_file(path: &Path, content: &[u8]) -> Result<(), KeyError> {
    use std::io::Write;
    let err = |source| KeyError::Write {
        path: path.display().to_string(),
        source,
    };
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut f = options.open(path).map_err(err)?;
    f.write_all(content).map_err(err)?;
    f.sync_all().map_err(err)
}

/// Creates a new key file with mode 0600; refuses to overwrite an existing file.
pub fn write_new_key_file(path: &Path, key: &[u8; KEY_LEN]) -> Result<(), KeyError> {
    write_new_secret_file(path, key)
}

/// Rotates a storage key file: the current key is appended to `<path>.retired` (created
/// with mode 0600), then `new` replaces it atomically. Old rows stay readable.
pub fn rotate_key_file(path: &Path, new: &[u8; KEY_LEN]) -> Result<(), KeyError> {
    use std::io::Write;
    let current = read_key_file(path)?;
    let retired = retired_path(path);
    let err = |p: &Path| {
        let p = p.display().to_string();
        move |source| KeyError::Write { path: p, source }
    };
    let mut options = std::fs::OpenOptions::new();
    options.append(true).create(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut f = options.open(&retired).map_err(err(&retired))?;
    f.write_all(&current).map_err(err(&retired))?;
    f.sync_all().map_err(err(&retired))?;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".new");
    let tmp = std::path::PathBuf::from(tmp);
    let _ = std::fs::remove_file(&tmp);
    write_new_key_file(&tmp, new)?;
    std::fs::rename(&tmp, path).map_err(err(path))
}

/// Reads a secret file (a token, a credential), refusing group- or world-readable files.
pub fn read_secret_file(path: &Path) -> Result<Vec<u8>, KeyError> {
    read_private(path)
}

fn read_private(path: &Path) -> Result<Vec<u8>, KeyError> {
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
    std::fs::read(path).map_err(read_err)
}

/// Reads a 32-byte secret key file, refusing group- or world-readable files.
pub fn read_key_file(path: &Path) -> Result<[u8; KEY_LEN], KeyError> {
    let bytes = read_private(path)?;
    <[u8; KEY_LEN]>::try_from(bytes.as_slice()).map_err(|_| KeyError::Length {
        path: path.display().to_string(),
        len: bytes.len(),
    })
}

/// 32 fresh random bytes for a new key.
pub fn random_key() -> Result<[u8; KEY_LEN], KeyError> {
    use ring::rand::SecureRandom;
    let mut key = [0u8; KEY_LEN];
    ring::rand::SystemRandom::new()
        .fill(&mut key)
        .map_err(|_| KeyError::Random)?;
    Ok(key)
}

/// The path of the retired keys next to a key file.
pub fn retired_path(key_file: &Path) -> PathBuf {
    let mut name = key_file.as_os_str().to_owned();
    name.push(".retired");
    PathBuf::from(name)
}

#[cfg(test)]
mod tests {
    use super::*;

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
