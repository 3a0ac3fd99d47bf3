//! TLS client configurations for MQTT connections (ingest and uplink), in one place:
//! rustls with the ring provider (as the HTTPS client's reqwest), servers verified against
//! the system's root certificates plus an optional private CA bundle, and an optional
//! client certificate for mutual TLS.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// How one connection is secured.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsSettings {
    /// PEM bundle of extra trusted CAs (a private PKI), added to the system roots.
    pub ca_file: Option<PathBuf>,
    /// Client certificate and key files (PEM, mode 0600) for mutual TLS.
    pub client_identity: Option<(PathBuf, PathBuf)>,
}

/// The certificates in a PEM file (`what` names the file in errors).
fn read_certs(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem =
        std::fs::read(path).map_err(|e| format!("cannot read {what} {}: {e}", path.display()))?;
    parse_certs(&pem, path, what)
}

/// The certificates in PEM text read from `path` (`what` names the file in errors).
fn parse_certs(
    pem: &[u8],
    path: &Path,
    what: &str,
) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{what} {} is not valid PEM: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{what} {} holds no certificate", path.display()));
    }
    Ok(certs)
}

/// A rustls client configuration: servers verified against the system's roots
/// (`/etc/ssl/certs` through `rustls-native-certs`) and the certificates of `ca_file`;
/// the client certificate presented when configured. The key file must be mode 0600.
pub fn client_config(settings: &TlsSettings) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    let found = rustls_native_certs::load_native_certs();
    for cert in found.certs {
        // A system store may hold a certificate rustls cannot parse; the rest still count.
        let _ = roots.add(cert);
    }
    if let Some(ca) = &settings.ca_file {
        for cert in read_certs(ca, "ca_file")? {
            roots
                .add(cert)
                .map_err(|e| format!("ca_file {}: unusable CA certificate: {e}", ca.display()))?;
        }
    }
    if roots.is_empty() {
        return Err(
            "no root certificate to verify the broker with (install the ca-certificates package, or set ca_file)"
                .into(),
        );
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup failed: {e}"))?
        .with_root_certificates(roots);
    let config = match &settings.client_identity {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            // Both files are the gateway's identity: both must be mode 0600.
            let cert_pem = crate::secret_file::read_secret_file(cert).map_err(|e| e.to_string())?;
            let key_pem = crate::secret_file::read_secret_file(key).map_err(|e| e.to_string())?;
            let chain = parse_certs(&cert_pem, cert, "client_cert_file")?;
            // The parse error could quote key material: name the file only.
            let key_der = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|_| {
                format!(
                    "client_key_file {} holds no PEM private key (PKCS#8, PKCS#1 or SEC1)",
                    key.display()
                )
            })?;
            builder.with_client_auth_cert(chain, key_der).map_err(|e| {
                format!(
                    "client_cert_file {} and client_key_file {} do not make a usable identity: {e}",
                    cert.display(),
                    key.display()
                )
            })?
        }
    };
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn private(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        path
    }

    #[test]
    fn a_ca_file_without_certificates_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let ca = private(dir.path(), "ca.pem", "not a certificate\n");
        let err = client_config(&TlsSettings {
            ca_file: Some(ca.clone()),
            client_identity: None,
        })
        .unwrap_err();
        assert!(
            err.contains("ca_file") && err.contains("no certificate"),
            "{err}"
        );
        let missing = dir.path().join("absent.pem");
        let err = client_config(&TlsSettings {
            ca_file: Some(missing),
            client_identity: None,
        })
        .unwrap_err();
        assert!(err.contains("cannot read ca_file"), "{err}");
    }

    #[test]
    fn a_client_key_that_is_not_a_key_is_refused_without_quoting_it() {
        let dir = tempfile::tempdir().unwrap();
        let secret = "-----BEGIN SECRET-----\nc2VjcmV0LWtleS1tYXRlcmlhbA==\n-----END SECRET-----\n";
        let key = private(dir.path(), "client.key", secret);
        let pki = iomt_testkit::tls::TestPki::new("unit CA").unwrap();
        let issued = pki.client("unit").unwrap();
        let cert = private(dir.path(), "client.pem", &issued.cert_pem);
        let err = client_config(&TlsSettings {
            ca_file: None,
            client_identity: Some((cert, key)),
        })
        .unwrap_err();
        assert!(
            err.contains("client_key_file") && err.contains("no PEM private key"),
            "{err}"
        );
        assert!(!err.contains("c2VjcmV0"), "{err}");

        // The matching key makes a usable identity.
        let key = private(dir.path(), "client.key", &issued.key_pem);
        let cert = dir.path().join("client.pem");
        assert!(client_config(&TlsSettings {
            ca_file: None,
            client_identity: Some((cert, key)),
        })
        .is_ok());
    }

    #[test]
    fn a_group_readable_client_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let cert = private(dir.path(), "client.pem", "x\n");
        let key = private(dir.path(), "client.key", "x\n");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o640)).unwrap();
        let err = client_config(&TlsSettings {
            ca_file: None,
            client_identity: Some((cert, key)),
        })
        .unwrap_err();
        assert!(err.contains("chmod 600"), "{err}");
    }
}
