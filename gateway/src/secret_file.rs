//! Secret files: the storage and pseudonymization keys, SMART keys, client credentials,
//! TLS private keys. One place creates them (mode 0600, never overwriting, never through a
//! symbolic link), reads them and rotates the storage key (the current key appended to
//! `<file>.retired`). The outbox, the pseudonyms, SMART and TLS set-up all use it, so none
//! of them imports another for it.
//!
//! A secret file is opened once, without blocking (a FIFO would block an `open` for ever)
//! and without becoming a controlling terminal; the checks then look at the open file, not
//! at the path again, so nothing can be swapped in between: a regular file (not a FIFO, a
//! device, a directory), owned by the service user or root (when root runs a command, a
//! system account's too, never a login user's), readable by its owner only,
//! and exactly as long as expected (a key) or at most [`MAX_SECRET_BYTES`] (a PEM file, a
//! token). The bytes are read from that same handle, at most the size checked. Reading
//! follows a symbolic link (systemd credentials and provisioning tools use them); writing
//! never does.

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::fcntl::OFlag;

/// Length of a key (storage or pseudonymization) in bytes.
pub const KEY_LEN: usize = 32;

/// The largest secret file read (a PEM private key, a certificate chain, a token).
pub const MAX_SECRET_BYTES: u64 = 1024 * 1024;

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
    /// The path names a FIFO, a device, a directory or a socket.
    #[error("secret file {path} is not a regular file (it is {kind}); point the configuration at a file created with `iomt-gateway keygen` (mode 0600)")]
    NotRegular {
        /// The secret file.
        path: String,
        /// What it is instead.
        kind: &'static str,
    },
    /// Another user owns the file.
    #[error("secret file {path} is owned by uid {owner}, not by the user the gateway runs as (uid {user}) or root; give it to the service user (`chown iomt-gateway: {path}`, or the uid the gateway runs as)")]
    Owner {
        /// The secret file.
        path: String,
        /// Its owner.
        owner: u32,
        /// The user the gateway runs as.
        user: u32,
    },
    /// A secret file (not a key) larger than [`MAX_SECRET_BYTES`].
    #[error("secret file {path} holds {len} bytes, more than the {MAX_SECRET_BYTES} a key, certificate or token file may hold")]
    TooLarge {
        /// The secret file.
        path: String,
        /// Its size.
        len: u64,
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

/// The size a secret file must have.
#[derive(Debug, Clone, Copy)]
enum Size {
    /// Exactly this many bytes (a key).
    Exactly(u64),
    /// A non-zero multiple of [`KEY_LEN`] (retired keys).
    Keys,
    /// At most [`MAX_SECRET_BYTES`] (PEM files, tokens).
    Bounded,
}

/// What a file's type is, for a message.
fn kind_of(ft: std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if ft.is_fifo() {
        "a FIFO"
    } else if ft.is_char_device() {
        "a character device"
    } else if ft.is_block_device() {
        "a block device"
    } else if ft.is_dir() {
        "a directory"
    } else if ft.is_socket() {
        "a socket"
    } else {
        "not a plain file"
    }
}

/// The first uid of a login user (Debian's `SYS_UID_MAX` is 999): below it, system
/// accounts such as the service user.
const FIRST_LOGIN_UID: u32 = 1000;

/// Whether a secret file owned by `owner` may be read by `user`: its own files and
/// root's; root (an administrator's `sudo iomt-gateway keygen --rotate`) also reads a
/// system account's, such as the service user's, never a login user's.
fn owner_trusted(owner: u32, user: u32) -> bool {
    owner == user || owner == 0 || (user == 0 && owner < FIRST_LOGIN_UID)
}

/// Checks an open secret file: regular, owned by the service user or root, private, of
/// the expected size. Returns its size.
fn check_open(f: &File, path: &Path, size: Size) -> Result<u64, KeyError> {
    let shown = || path.display().to_string();
    let meta = f.metadata().map_err(|source| KeyError::Read {
        path: shown(),
        source,
    })?;
    if !meta.file_type().is_file() {
        return Err(KeyError::NotRegular {
            path: shown(),
            kind: kind_of(meta.file_type()),
        });
    }
    let user = nix::unistd::geteuid().as_raw();
    if !owner_trusted(meta.uid(), user) {
        return Err(KeyError::Owner {
            path: shown(),
            owner: meta.uid(),
            user,
        });
    }
    if meta.mode() & 0o077 != 0 {
        return Err(KeyError::Permissions {
            path: shown(),
            mode: meta.mode() & 0o777,
        });
    }
    let len = meta.len();
    let fits = match size {
        Size::Exactly(n) => len == n,
        Size::Keys => len > 0 && len % KEY_LEN as u64 == 0 && len <= MAX_SECRET_BYTES,
        Size::Bounded => len <= MAX_SECRET_BYTES,
    };
    if !fits {
        return Err(match size {
            Size::Bounded => KeyError::TooLarge { path: shown(), len },
            _ => KeyError::Length {
                path: shown(),
                len: usize::try_from(len).unwrap_or(usize::MAX),
            },
        });
    }
    Ok(len)
}

/// Opens, checks and reads a secret file through one handle.
fn read_checked(path: &Path, size: Size) -> Result<Vec<u8>, KeyError> {
    let read_err = |source| KeyError::Read {
        path: path.display().to_string(),
        source,
    };
    // O_NONBLOCK: opening a FIFO must not wait for a writer; O_NOCTTY: a terminal device
    // never becomes the gateway's. The standard library adds O_CLOEXEC.
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags((OFlag::O_NONBLOCK | OFlag::O_NOCTTY).bits())
        .open(path)
        .map_err(read_err)?;
    let len = check_open(&f, path, size)?;
    let mut bytes = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
    // One byte more than checked: a file that grew since is noticed, never read on.
    f.take(len.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(read_err)?;
    if bytes.len() as u64 != len {
        return Err(read_err(std::io::Error::other(
            "the file changed while it was read",
        )));
    }
    Ok(bytes)
}

/// Reads a file of one or more concatenated 32-byte keys (mode 0600), e.g. retired keys.
pub fn read_key_list(path: &Path) -> Result<Vec<[u8; KEY_LEN]>, KeyError> {
    let bytes = read_checked(path, Size::Keys)?;
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
/// existing file or to follow a symbolic link.
pub fn write_new_secret_file(path: &Path, content: &[u8]) -> Result<(), KeyError> {
    let err = |source| KeyError::Write {
        path: path.display().to_string(),
        source,
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(OFlag::O_NOFOLLOW.bits())
        .open(path)
        .map_err(err)?;
    f.write_all(content).map_err(err)?;
    f.sync_all().map_err(err)
}

/// Creates a new key file with mode 0600; refuses to overwrite an existing file.
pub fn write_new_key_file(path: &Path, key: &[u8; KEY_LEN]) -> Result<(), KeyError> {
    write_new_secret_file(path, key)
}

/// Rotates a storage key file: the current key is appended to `<path>.retired` (created
/// with mode 0600; an existing one must pass the checks of a key file, and is never
/// written through a symbolic link), then `new` replaces it atomically. Old rows stay
/// readable.
pub fn rotate_key_file(path: &Path, new: &[u8; KEY_LEN]) -> Result<(), KeyError> {
    let current = read_key_file(path)?;
    let retired = retired_path(path);
    let err = |p: &Path| {
        let p = p.display().to_string();
        move |source| KeyError::Write { path: p, source }
    };
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .custom_flags((OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_NOCTTY).bits())
        .open(&retired)
        .map_err(|e| {
            if e.raw_os_error() == Some(nix::errno::Errno::ELOOP as i32) {
                err(&retired)(std::io::Error::other(
                    "it is a symbolic link; retired keys are never written through one (move it away)",
                ))
            } else {
                err(&retired)(e)
            }
        })?;
    let existing = f.metadata().map_err(err(&retired))?.len();
    let size = if existing == 0 {
        Size::Exactly(0)
    } else {
        Size::Keys
    };
    check_open(&f, &retired, size)?;
    f.write_all(&current).map_err(err(&retired))?;
    f.sync_all().map_err(err(&retired))?;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".new");
    let tmp = std::path::PathBuf::from(tmp);
    let _ = std::fs::remove_file(&tmp);
    write_new_key_file(&tmp, new)?;
    std::fs::rename(&tmp, path).map_err(err(path))
}

/// Reads a secret file (a token, a credential, a PEM key): a private regular file of at
/// most [`MAX_SECRET_BYTES`].
pub fn read_secret_file(path: &Path) -> Result<Vec<u8>, KeyError> {
    read_checked(path, Size::Bounded)
}

/// Reads a 32-byte secret key file: a private regular file of exactly [`KEY_LEN`] bytes.
pub fn read_key_file(path: &Path) -> Result<[u8; KEY_LEN], KeyError> {
    let bytes = read_checked(path, Size::Exactly(KEY_LEN as u64))?;
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

    /// Before, a FIFO blocked the read for ever and a private character device (a
    /// `/dev/zero`) was read until memory ran out: both are refused from the open handle.
    #[test]
    fn fifos_and_devices_are_refused_without_reading() {
        use nix::sys::stat::{makedev, mknod, Mode, SFlag};
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, Mode::from_bits_truncate(0o600)).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let f = fifo.clone();
        std::thread::spawn(move || tx.send(read_key_file(&f).map(|_| ())).unwrap());
        let result = rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("reading a FIFO must not block");
        assert!(
            matches!(result, Err(KeyError::NotRegular { kind: "a FIFO", .. })),
            "{result:?}"
        );
        let zero = dir.path().join("zero");
        mknod(
            &zero,
            SFlag::S_IFCHR,
            Mode::from_bits_truncate(0o600),
            makedev(1, 5),
        )
        .unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&zero, &link).unwrap();
        for path in [&zero, &link] {
            let err = read_secret_file(path).unwrap_err();
            assert!(err.to_string().contains("character device"), "{err}");
        }
    }

    #[test]
    fn key_files_of_another_user_or_the_wrong_size_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        write_new_key_file(&path, &[1; KEY_LEN]).unwrap();
        nix::unistd::chown(&path, Some(nix::unistd::Uid::from_raw(65534)), None).unwrap();
        assert!(matches!(
            read_key_file(&path),
            Err(KeyError::Owner { owner: 65534, .. })
        ));
        nix::unistd::chown(&path, Some(nix::unistd::Uid::from_raw(0)), None).unwrap();
        assert!(owner_trusted(0, 0) && owner_trusted(999, 999) && owner_trusted(0, 999));
        assert!(owner_trusted(998, 0), "root reads the service user's keys");
        assert!(!owner_trusted(1000, 0) && !owner_trusted(998, 999));
        std::fs::write(&path, [1u8; KEY_LEN + 1]).unwrap();
        assert!(matches!(
            read_key_file(&path),
            Err(KeyError::Length { len: 33, .. })
        ));
        std::fs::write(&path, vec![0u8; MAX_SECRET_BYTES as usize + 1]).unwrap();
        assert!(matches!(
            read_secret_file(&path),
            Err(KeyError::TooLarge { .. })
        ));
    }

    /// Before, rotation appended the current key through a `.retired` symbolic link and
    /// to a `.retired` file others could read.
    #[test]
    fn rotation_never_writes_through_a_link_or_to_a_readable_retired_file() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("storage.key");
        write_new_key_file(&key, &[1; KEY_LEN]).unwrap();
        let victim = dir.path().join("elsewhere");
        std::fs::write(&victim, b"").unwrap();
        std::os::unix::fs::symlink(&victim, retired_path(&key)).unwrap();
        let err = rotate_key_file(&key, &[2; KEY_LEN]).unwrap_err();
        assert!(err.to_string().contains("symbolic link"), "{err}");
        assert_eq!(std::fs::read(&victim).unwrap(), b"");
        assert_eq!(read_key_file(&key).unwrap(), [1; KEY_LEN]);

        std::fs::remove_file(retired_path(&key)).unwrap();
        std::fs::write(retired_path(&key), [9u8; KEY_LEN]).unwrap();
        std::fs::set_permissions(retired_path(&key), std::fs::Permissions::from_mode(0o644))
            .unwrap();
        assert!(matches!(
            rotate_key_file(&key, &[2; KEY_LEN]),
            Err(KeyError::Permissions { .. })
        ));
        assert_eq!(std::fs::read(retired_path(&key)).unwrap(), [9u8; KEY_LEN]);

        std::fs::set_permissions(retired_path(&key), std::fs::Permissions::from_mode(0o600))
            .unwrap();
        rotate_key_file(&key, &[2; KEY_LEN]).unwrap();
        assert_eq!(
            read_key_list(&retired_path(&key)).unwrap(),
            [[9; KEY_LEN], [1; KEY_LEN]]
        );
        assert_eq!(read_key_file(&key).unwrap(), [2; KEY_LEN]);
    }
}
