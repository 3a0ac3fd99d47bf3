//! TLS for MQTT connections, in one place: rustls with the ring provider (as the FHIR
//! uplink's reqwest) and the system's root certificates. Private CAs and client
//! certificates will be added here.

use std::sync::Arc;

/// A rustls client configuration that verifies servers against the system's roots
/// (`/etc/ssl/certs` through `rustls-native-certs`).
pub fn client_config() -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    let found = rustls_native_certs::load_native_certs();
    for cert in found.certs {
        // A system store may hold a certificate rustls cannot parse; the rest still count.
        let _ = roots.add(cert);
    }
    if roots.is_empty() {
        return Err(
            "no system root certificate found (install the ca-certificates package)".into(),
        );
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup failed: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// The rumqttc transport for a connection: TLS (with [`client_config`]) or plain TCP.
pub fn transport(tls: bool) -> Result<rumqttc::Transport, String> {
    if tls {
        Ok(rumqttc::Transport::tls_with_config(
            rumqttc::TlsConfiguration::Rustls(client_config()?),
        ))
    } else {
        Ok(rumqttc::Transport::tcp())
    }
}
