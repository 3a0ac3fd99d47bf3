//! SMART Backend Services keys: generation (`iomt-gateway keygen --smart`), the public
//! JWK Set a backend registers, and signed JWT client assertions (ES384 or RS384, ring).

use std::path::Path;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, KeyPair, RsaKeyPair};
use serde_json::json;

/// The JWS algorithm of a SMART key.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize, clap::ValueEnum,
)]
pub enum Alg {
    /// ECDSA P-384 with SHA-384.
    #[serde(rename = "ES384")]
    #[value(name = "ES384")]
    Es384,
    /// RSASSA-PKCS1-v1_5 with SHA-384 (2048-bit key).
    #[serde(rename = "RS384")]
    #[value(name = "RS384")]
    Rs384,
}

impl Alg {
    /// The JWS name.
    pub fn as_str(self) -> &'static str {
        match self {
            Alg::Es384 => "ES384",
            Alg::Rs384 => "RS384",
        }
    }
}

/// Why a SMART key could not be made, read or used. Never contains key material.
#[derive(Debug, thiserror::Error)]
pub enum SmartKeyError {
    /// Reading or writing the key file failed.
    #[error(transparent)]
    File(#[from] crate::secret_file::KeyError),
    /// The file is not a PKCS#8 private key of the expected algorithm.
    #[error("{path} is not a PKCS#8 {alg} private key (make one with `iomt-gateway keygen --smart --alg {alg}`)")]
    Format {
        /// The key file.
        path: String,
        /// The expected algorithm.
        alg: &'static str,
    },
    /// Key generation or signing failed.
    #[error("cannot {0} with the SMART key")]
    Crypto(&'static str),
}

/// A loaded signing key.
pub struct SigningKey {
    alg: Alg,
    kid: String,
    ecdsa: Option<EcdsaKeyPair>,
    rsa: Option<RsaKeyPair>,
    public_jwk: serde_json::Value,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "SigningKey {{ alg: {}, kid: {} }}",
            self.alg.as_str(),
            self.kid
        )
    }
}

fn pem(label: &str, der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

fn unpem(text: &str) -> Option<Vec<u8>> {
    let body: String = text.lines().filter(|l| !l.starts_with("-----")).collect();
    STANDARD.decode(body.trim()).ok()
}

fn kid_of(public: &[u8]) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, public);
    URL_SAFE_NO_PAD.encode(&d.as_ref()[..16])
}

impl SigningKey {
    /// Parses a PKCS#8 key (DER) of `alg`.
    pub fn from_pkcs8(alg: Alg, der: &[u8], path: &str) -> Result<Self, SmartKeyError> {
        let format = || SmartKeyError::Format {
            path: path.into(),
            alg: alg.as_str(),
        };
        match alg {
            Alg::Es384 => {
                let rng = SystemRandom::new();
                let key = EcdsaKeyPair::from_pkcs8(
                    &signature::ECDSA_P384_SHA384_FIXED_SIGNING,
                    der,
                    &rng,
                )
                .map_err(|_| format())?;
                let point = key.public_key().as_ref().to_vec();
                if point.len() != 97 {
                    return Err(format());
                }
                let kid = kid_of(&point);
                let public_jwk = json!({
                    "kty": "EC", "crv": "P-384",
                    "x": URL_SAFE_NO_PAD.encode(&point[1..49]),
                    "y": URL_SAFE_NO_PAD.encode(&point[49..97]),
                    "alg": "ES384", "use": "sig", "key_ops": ["verify"], "kid": kid,
                });
                Ok(Self {
                    alg,
                    kid,
                    ecdsa: Some(key),
                    rsa: None,
                    public_jwk,
                })
            }
            Alg::Rs384 => {
                use rsa::pkcs8::DecodePrivateKey;
                use rsa::traits::PublicKeyParts;
                let key = RsaKeyPair::from_pkcs8(der).map_err(|_| format())?;
                let parsed = rsa::RsaPrivateKey::from_pkcs8_der(der).map_err(|_| format())?;
                let n = parsed.n().to_bytes_be();
                let e = parsed.e().to_bytes_be();
                let kid = kid_of(&n);
                let public_jwk = json!({
                    "kty": "RSA",
                    "n": URL_SAFE_NO_PAD.encode(&n),
                    "e": URL_SAFE_NO_PAD.encode(&e),
                    "alg": "RS384", "use": "sig", "key_ops": ["verify"], "kid": kid,
                });
                Ok(Self {
                    alg,
                    kid,
                    ecdsa: None,
                    rsa: Some(key),
                    public_jwk,
                })
            }
        }
    }

    /// Loads a key file (PEM PKCS#8, mode 0600).
    pub fn load(alg: Alg, path: &Path) -> Result<Self, SmartKeyError> {
        let shown = path.display().to_string();
        let bytes = crate::secret_file::read_secret_file(path)?;
        let der = unpem(&String::from_utf8_lossy(&bytes)).ok_or(SmartKeyError::Format {
            path: shown.clone(),
            alg: alg.as_str(),
        })?;
        Self::from_pkcs8(alg, &der, &shown)
    }

    /// Generates a key of `alg` and writes it to `path` (PEM, mode 0600; never overwrites).
    pub fn generate(alg: Alg, path: &Path) -> Result<Self, SmartKeyError> {
        let der = match alg {
            Alg::Es384 => EcdsaKeyPair::generate_pkcs8(
                &signature::ECDSA_P384_SHA384_FIXED_SIGNING,
                &SystemRandom::new(),
            )
            .map_err(|_| SmartKeyError::Crypto("generate a key"))?
            .as_ref()
            .to_vec(),
            Alg::Rs384 => {
                use rsa::pkcs8::EncodePrivateKey;
                let key = rsa::RsaPrivateKey::new(&mut rand::rngs::OsRng, 2048)
                    .map_err(|_| SmartKeyError::Crypto("generate a key"))?;
                key.to_pkcs8_der()
                    .map_err(|_| SmartKeyError::Crypto("encode a key"))?
                    .as_bytes()
                    .to_vec()
            }
        };
        crate::secret_file::write_new_secret_file(path, pem("PRIVATE KEY", &der).as_bytes())?;
        Self::from_pkcs8(alg, &der, &path.display().to_string())
    }

    /// The key id (`kid`) announced in the JWT header and the JWK.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public JWK Set to register with the backend.
    pub fn jwks(&self) -> serde_json::Value {
        json!({ "keys": [self.public_jwk.clone()] })
    }

    /// A signed client assertion: `iss` = `sub` = `client_id`, `aud` = `token_url`,
    /// `exp` = now + `lifetime_secs` (at most 300), a unique `jti`.
    pub fn client_assertion(
        &self,
        client_id: &str,
        token_url: &str,
        now: i64,
        lifetime_secs: i64,
    ) -> Result<String, SmartKeyError> {
        let mut jti = [0u8; 16];
        ring::rand::SecureRandom::fill(&SystemRandom::new(), &mut jti)
            .map_err(|_| SmartKeyError::Crypto("make a jti"))?;
        let header = json!({"alg": self.alg.as_str(), "typ": "JWT", "kid": self.kid});
        let claims = json!({
            "iss": client_id,
            "sub": client_id,
            "aud": token_url,
            "exp": now + lifetime_secs.clamp(1, 300),
            "iat": now,
            "jti": hex::encode(jti),
        });
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let rng = SystemRandom::new();
        let sig = match (&self.ecdsa, &self.rsa) {
            (Some(k), _) => k
                .sign(&rng, input.as_bytes())
                .map_err(|_| SmartKeyError::Crypto("sign"))?
                .as_ref()
                .to_vec(),
            (_, Some(k)) => {
                let mut sig = vec![0u8; k.public().modulus_len()];
                k.sign(
                    &signature::RSA_PKCS1_SHA384,
                    &rng,
                    input.as_bytes(),
                    &mut sig,
                )
                .map_err(|_| SmartKeyError::Crypto("sign"))?;
                sig
            }
            _ => return Err(SmartKeyError::Crypto("sign")),
        };
        Ok(format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn es384_assertions_verify_against_the_published_jwk() {
        let dir = tempfile::tempdir().unwrap();
        let key = SigningKey::generate(Alg::Es384, &dir.path().join("smart.pem")).unwrap();
        let jwt = key
            .client_assertion("client-1", "https://auth.example/token", 1_700_000_000, 300)
            .unwrap();
        let parts: Vec<&str> = jwt.split('.').collect();
        assert_eq!(parts.len(), 3);
        let jwk = &key.jwks()["keys"][0];
        let mut point = vec![4u8];
        point.extend(URL_SAFE_NO_PAD.decode(jwk["x"].as_str().unwrap()).unwrap());
        point.extend(URL_SAFE_NO_PAD.decode(jwk["y"].as_str().unwrap()).unwrap());
        let sig = URL_SAFE_NO_PAD.decode(parts[2]).unwrap();
        signature::UnparsedPublicKey::new(&signature::ECDSA_P384_SHA384_FIXED, &point)
            .verify(format!("{}.{}", parts[0], parts[1]).as_bytes(), &sig)
            .unwrap();
        let claims: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
        assert_eq!(claims["iss"], "client-1");
        assert_eq!(claims["sub"], "client-1");
        assert_eq!(claims["exp"], 1_700_000_300);
        // The same file loads to the same key id, and the key is never overwritten.
        let again = SigningKey::load(Alg::Es384, &dir.path().join("smart.pem")).unwrap();
        assert_eq!(again.kid(), key.kid());
        assert!(SigningKey::generate(Alg::Es384, &dir.path().join("smart.pem")).is_err());
    }

    #[test]
    fn assertions_never_live_longer_than_five_minutes() {
        let dir = tempfile::tempdir().unwrap();
        let key = SigningKey::generate(Alg::Es384, &dir.path().join("k.pem")).unwrap();
        let jwt = key.client_assertion("c", "u", 0, 86_400).unwrap();
        let claims: serde_json::Value = serde_json::from_slice(
            &URL_SAFE_NO_PAD
                .decode(jwt.split('.').nth(1).unwrap())
                .unwrap(),
        )
        .unwrap();
        assert_eq!(claims["exp"], 300);
    }

    #[test]
    fn a_key_of_the_wrong_algorithm_is_refused_with_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        SigningKey::generate(Alg::Es384, &dir.path().join("k.pem")).unwrap();
        let err = SigningKey::load(Alg::Rs384, &dir.path().join("k.pem")).unwrap_err();
        assert!(
            err.to_string().contains("keygen --smart --alg RS384"),
            "{err}"
        );
    }
}
