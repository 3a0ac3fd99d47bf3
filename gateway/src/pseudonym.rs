//! Keyed pseudonyms: HMAC-SHA256 of an identifier under the pseudonymization key.
//!
//! Patient and device identifiers leave the gateway only as pseudonyms. The backend holds
//! the same key, so its re-identification service can compute the pseudonym of a patient
//! it enrols (`iomt-gateway pseudonym ID`) and map observations back; anyone without the
//! key learns nothing from a pseudonym, not even whether two deployments share a patient.
//! Each kind of identifier is hashed in its own domain, so a device address can never
//! collide with a patient id.

use ring::hmac;

use crate::secret_file::KEY_LEN;

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

    /// A fingerprint of the key: the first 16 bytes, in hex, of the HMAC of a fixed label
    /// of its own (no pseudonym's input starts with it). Tells keys apart without
    /// revealing them; the outbox records it to notice a swapped key.
    pub fn fingerprint(&self) -> String {
        let tag = hmac::sign(&self.key, b"iomt-gateway/v1/key-fingerprint\0");
        hex::encode(&tag.as_ref()[..16])
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
        assert_eq!(
            a.fingerprint(),
            Pseudonymizer::new(&[1; KEY_LEN]).fingerprint()
        );
        assert_ne!(a.fingerprint(), b.fingerprint());
    }
}
