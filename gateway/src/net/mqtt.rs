//! What an MQTT connection needs, set up in one place for the MQTT ingest driver and the
//! MQTT uplink: the TLS transport (rustls, see [`super::tls`]), the credentials file, and
//! the texts describing a failed connection (kept in `iomt_drivers::net`, where the
//! driver's own event loop also uses them).

use std::path::Path;

pub use iomt_drivers::net::describe_mqtt_error;

use super::tls::{client_config, TlsSettings};

/// The rumqttc TLS configuration for a connection (see [`client_config`]).
pub fn configuration(settings: &TlsSettings) -> Result<rumqttc::TlsConfiguration, String> {
    Ok(rumqttc::TlsConfiguration::Rustls(client_config(settings)?))
}

/// The rumqttc transport for a connection: TLS (see [`configuration`]) or plain TCP.
pub fn transport(tls: Option<&TlsSettings>) -> Result<rumqttc::Transport, String> {
    match tls {
        Some(settings) => Ok(rumqttc::Transport::tls_with_config(configuration(
            settings,
        )?)),
        None => Ok(rumqttc::Transport::tcp()),
    }
}

/// Reads an MQTT credentials file: the user name on the first line, the password on the
/// second; mode 0600 (group- or world-readable files are refused).
pub fn read_credentials(path: &Path) -> Result<(String, String), String> {
    let bytes = crate::secret_file::read_secret_file(path).map_err(|e| e.to_string())?;
    let text = String::from_utf8(bytes)
        .map_err(|_| format!("the credentials file {} is not text", path.display()))?;
    let mut lines = text.lines();
    let user = lines.next().unwrap_or("").trim().to_string();
    let password = lines
        .next()
        .unwrap_or("")
        .trim_end_matches('\r')
        .to_string();
    if user.is_empty() {
        return Err(format!(
            "the credentials file {} must hold the user name on its first line and the password on its second",
            path.display()
        ));
    }
    Ok((user, password))
}

/// The credentials of `file`, when one is configured (see [`read_credentials`]).
pub fn credentials(file: Option<&Path>) -> Result<Option<(String, String)>, String> {
    file.map(read_credentials).transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_readable_credentials_file_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mqtt.credentials");
        std::fs::write(&path, "gateway\ns3cret\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(read_credentials(&path).is_err());
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(
            read_credentials(&path).unwrap(),
            ("gateway".into(), "s3cret".into())
        );
    }

    #[test]
    fn plain_tcp_needs_no_tls_settings() {
        assert!(matches!(transport(None), Ok(rumqttc::Transport::Tcp)));
    }
}
