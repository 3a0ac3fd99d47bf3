//! Sealing at rest: AES-256-GCM under sub-keys derived (HKDF-SHA256) from the storage key.
//!
//! The storage key file holds 32 random bytes; it never leaves the device and never lives
//! in the database. From it HKDF derives the AEAD key, a 32-bit key id recorded on every
//! sealed row, and a check value recorded once in the database, so a wrong key file is
//! recognised before anything is written. After a rotation the previous keys live in
//! `<key file>.retired` (concatenated 32-byte keys) until no row needs them.

use std::collections::HashMap;
use std::path::Path;

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::hkdf;
use ring::rand::{SecureRandom, SystemRandom};

use crate::secret_file::{read_key_file, retired_path, KeyError, KEY_LEN};

/// The bytes the authentication tag adds to a sealed value (AES-256-GCM).
pub const TAG_LEN: usize = 16;

const SALT: &[u8] = b"iomt-gateway outbox v1";

/// Length of the key check value stored in the database.
pub const CHECK_LEN: usize = 16;

struct Len(usize);

impl hkdf::KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

/// One storage key with its derived material.
pub struct StorageKey {
    /// The 32-bit key id recorded on rows sealed with it.
    pub id: u32,
    /// The check value recorded in the database.
    pub check: [u8; CHECK_LEN],
    aead: LessSafeKey,
}

impl std::fmt::Debug for StorageKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StorageKey {{ id: {:08x}, .. }}", self.id)
    }
}

impl StorageKey {
    /// Derives the key material from 32 secret bytes.
    pub fn derive(secret: &[u8; KEY_LEN]) -> Self {
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, SALT).extract(secret);
        let mut id = [0u8; 4];
        let mut check = [0u8; CHECK_LEN];
        let mut aead_key = [0u8; 32];
        // Fill can only fail for lengths above 255 × 32 bytes; these are constant and small.
        let _ = prk
            .expand(&[b"key-id"], Len(4))
            .and_then(|okm| okm.fill(&mut id));
        let _ = prk
            .expand(&[b"key-check"], Len(CHECK_LEN))
            .and_then(|okm| okm.fill(&mut check));
        let _ = prk
            .expand(&[b"aead"], Len(32))
            .and_then(|okm| okm.fill(&mut aead_key));
        let unbound = UnboundKey::new(&AES_256_GCM, &aead_key)
            .unwrap_or_else(|_| unreachable!("32-byte AES-256 key"));
        Self {
            id: u32::from_be_bytes(id),
            check,
            aead: LessSafeKey::new(unbound),
        }
    }
}

/// Sealing or opening failed.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    /// The system random generator failed.
    #[error("the system random generator failed")]
    Random,
    /// The ciphertext does not authenticate: wrong key, tampering, or a row moved.
    #[error("a sealed value does not authenticate (wrong key, or the database was altered)")]
    Authentication,
    /// No key with this id is in the keyring.
    #[error("a sealed value needs key id {0:08x}, which is not in the keyring")]
    UnknownKey(u32),
}

/// A sealed value: the key id, the nonce, and ciphertext with tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    /// The key id.
    pub key_id: u32,
    /// The 96-bit nonce.
    pub nonce: [u8; NONCE_LEN],
    /// Ciphertext followed by the 16-byte tag.
    pub ciphertext: Vec<u8>,
}

/// Which sealing a sealed value has: its key id and nonce. The nonce is
/// random for each sealing and the id is in the associated data, so one (id, sealing)
/// pair stands for one ciphertext.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sealing {
    /// The key id.
    pub key_id: u32,
    /// The nonce.
    pub nonce: [u8; ring::aead::NONCE_LEN],
}

impl Sealing {
    /// The sealing of `sealed`.
    pub fn of(sealed: &Sealed) -> Self {
        Self {
            key_id: sealed.key_id,
            nonce: sealed.nonce,
        }
    }
}

/// The current key and the retired keys still needed to open old rows.
pub struct Keyring {
    current: StorageKey,
    retired: HashMap<u32, StorageKey>,
    rng: Random,
}

/// Where nonces come from: the system's random source. The tests can make it fail, as
/// a broken `getrandom` would.
struct Random {
    system: SystemRandom,
    #[cfg(test)]
    failing: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Random {
    fn system() -> Self {
        Random {
            system: SystemRandom::new(),
            #[cfg(test)]
            failing: Default::default(),
        }
    }

    fn fill(&self, dest: &mut [u8]) -> Result<(), ring::error::Unspecified> {
        #[cfg(test)]
        if self.failing.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(ring::error::Unspecified);
        }
        self.system.fill(dest)
    }
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Keyring {{ current: {:08x}, retired: {} }}",
            self.current.id,
            self.retired.len()
        )
    }
}

impl Keyring {
    /// A keyring with only a current key.
    pub fn new(current: &[u8; KEY_LEN]) -> Self {
        Self {
            current: StorageKey::derive(current),
            retired: HashMap::new(),
            rng: Random::system(),
        }
    }

    /// A keyring with only a current key, whose random source fails while `failing` is
    /// set.
    #[cfg(test)]
    pub(crate) fn failing_when(
        current: &[u8; KEY_LEN],
        failing: std::sync::Arc<std::sync::atomic::AtomicBool>,
    ) -> Self {
        Self {
            rng: Random {
                system: SystemRandom::new(),
                failing,
            },
            ..Self::new(current)
        }
    }

    /// Loads the key file and, if present, its `.retired` companion (both must be 0600).
    pub fn load(key_file: &Path) -> Result<Self, KeyError> {
        let mut ring = Self::new(&read_key_file(key_file)?);
        let retired = retired_path(key_file);
        if retired.exists() {
            for key in crate::secret_file::read_key_list(&retired)? {
                let k = StorageKey::derive(&key);
                ring.retired.insert(k.id, k);
            }
        }
        Ok(ring)
    }

    /// The current key (new rows are sealed with it).
    pub fn current(&self) -> &StorageKey {
        &self.current
    }

    /// Every key: current first.
    pub fn keys(&self) -> impl Iterator<Item = &StorageKey> {
        std::iter::once(&self.current).chain(self.retired.values())
    }

    fn key(&self, id: u32) -> Option<&StorageKey> {
        if id == self.current.id {
            Some(&self.current)
        } else {
            self.retired.get(&id)
        }
    }

    /// Seals `plaintext`, binding it to `aad`.
    pub fn seal(&self, plaintext: &[u8], aad: &[u8]) -> Result<Sealed, SealError> {
        let mut buf = Vec::with_capacity(plaintext.len() + TAG_LEN);
        buf.extend_from_slice(plaintext);
        self.seal_owned(buf, aad)
    }

    /// [`Keyring::seal`] in place: encrypts `buf` without copying it (give it
    /// [`TAG_LEN`] bytes of spare capacity and the tag is appended without growing it).
    pub fn seal_owned(&self, mut buf: Vec<u8>, aad: &[u8]) -> Result<Sealed, SealError> {
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).map_err(|_| SealError::Random)?;
        self.current
            .aead
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                &mut buf,
            )
            .map_err(|_| SealError::Random)?;
        Ok(Sealed {
            key_id: self.current.id,
            nonce,
            ciphertext: buf,
        })
    }

    /// Opens a sealed value bound to `aad`.
    pub fn open(&self, sealed: &Sealed, aad: &[u8]) -> Result<Vec<u8>, SealError> {
        let key = self
            .key(sealed.key_id)
            .ok_or(SealError::UnknownKey(sealed.key_id))?;
        let mut buf = sealed.ciphertext.clone();
        let plain = key
            .aead
            .open_in_place(
                Nonce::assume_unique_for_key(sealed.nonce),
                Aad::from(aad),
                &mut buf,
            )
            .map_err(|_| SealError::Authentication)?;
        Ok(plain.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_open_only_with_their_key_and_their_aad() {
        let ring = Keyring::new(&[1; KEY_LEN]);
        let s = ring.seal(b"observation", b"row 1").unwrap();
        assert_eq!(ring.open(&s, b"row 1").unwrap(), b"observation");
        assert!(matches!(
            ring.open(&s, b"row 2"),
            Err(SealError::Authentication)
        ));
        let other = Keyring::new(&[2; KEY_LEN]);
        assert!(matches!(
            other.open(&s, b"row 1"),
            Err(SealError::UnknownKey(_))
        ));
        assert!(!s.ciphertext.windows(11).any(|w| w == b"observation"));
        // The room `pack` leaves is the tag the cipher appends.
        assert_eq!(TAG_LEN, AES_256_GCM.tag_len());
        assert_eq!(s.ciphertext.len(), b"observation".len() + TAG_LEN);
    }

    #[test]
    fn key_ids_and_checks_are_stable_and_distinct() {
        let a = StorageKey::derive(&[1; KEY_LEN]);
        let a2 = StorageKey::derive(&[1; KEY_LEN]);
        let b = StorageKey::derive(&[2; KEY_LEN]);
        assert_eq!((a.id, a.check), (a2.id, a2.check));
        assert_ne!(a.id, b.id);
        assert_ne!(a.check, b.check);
    }

    #[test]
    fn retired_keys_still_open_old_rows() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("storage.key");
        crate::secret_file::write_new_key_file(&key, &[3; KEY_LEN]).unwrap();
        let old = Keyring::load(&key).unwrap();
        let sealed = old.seal(b"old row", b"aad").unwrap();
        crate::secret_file::rotate_key_file(&key, &[4; KEY_LEN]).unwrap();
        let new = Keyring::load(&key).unwrap();
        assert_ne!(new.current().id, old.current().id);
        assert_eq!(new.open(&sealed, b"aad").unwrap(), b"old row");
    }
}
