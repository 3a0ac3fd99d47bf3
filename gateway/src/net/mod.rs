//! Network set-up shared by the ingest drivers and the uplinks, so that neither imports
//! from the other: the loopback rule, TLS client configurations (`tls.rs`), the HTTPS
//! client every HTTP uplink uses (`https.rs`), and what an MQTT connection needs
//! (`mqtt.rs`: TLS transport, credentials file, error texts).

pub mod https;
pub mod mqtt;
pub mod tls;

use std::path::PathBuf;

/// Whether a URL's host is this machine: a loopback address or `localhost` (IPv6 with or
/// without brackets).
pub fn is_loopback_host(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    bare.eq_ignore_ascii_case("localhost")
        || bare
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// A mutual-TLS identity as configured (`client_cert_file`, `client_key_file`): both
/// files or neither.
pub fn client_identity(
    cert: &Option<PathBuf>,
    key: &Option<PathBuf>,
) -> Result<Option<(PathBuf, PathBuf)>, String> {
    match (cert, key) {
        (Some(c), Some(k)) => Ok(Some((c.clone(), k.clone()))),
        (None, None) => Ok(None),
        _ => Err("mutual TLS needs both client_cert_file and client_key_file".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts_are_localhost_and_loopback_addresses() {
        for host in [
            "localhost",
            "LOCALHOST",
            "127.0.0.1",
            "127.1.2.3",
            "::1",
            "[::1]",
        ] {
            assert!(is_loopback_host(host), "{host}");
        }
        for host in [
            "example.org",
            "10.0.0.1",
            "[2001:db8::1]",
            "localhost.example.org",
        ] {
            assert!(!is_loopback_host(host), "{host}");
        }
    }

    #[test]
    fn a_client_identity_needs_both_files() {
        let (c, k) = (Some(PathBuf::from("/c.pem")), Some(PathBuf::from("/c.key")));
        assert_eq!(client_identity(&None, &None), Ok(None));
        assert!(client_identity(&c, &k).unwrap().is_some());
        let e = client_identity(&c, &None).unwrap_err();
        assert!(
            e.contains("both client_cert_file and client_key_file"),
            "{e}"
        );
        assert!(client_identity(&None, &k).is_err());
    }
}
