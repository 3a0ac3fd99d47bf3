//! The HTTPS client every HTTP uplink uses (reqwest + rustls), and the rule for its URL.
//!
//! The server's certificate is always verified, against the system's roots plus an
//! optional private CA bundle (`ca_file`); a client certificate authenticates the kit for
//! mutual TLS; plain `http://` is accepted only to a loopback host unless the
//! configuration says `allow_insecure`. The same client also makes the uplink's token
//! requests (OAuth2, SMART Backend Services), so they follow the same rules.

use std::path::PathBuf;
use std::time::Duration;

pub use iomt_drivers::net::tls_hint;

use super::is_loopback_host;

/// How an HTTPS client is set up.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HttpsSettings {
    /// Timeout of one request.
    pub timeout: Duration,
    /// Extra trusted CAs (PEM bundle), besides the system roots.
    pub ca_file: Option<PathBuf>,
    /// Client certificate and key files (PEM, mode 0600) for mutual TLS.
    pub client_identity: Option<(PathBuf, PathBuf)>,
}

/// Checks an uplink's URL, configured under `key`: http or https, no credentials in it,
/// and plain http only to a loopback host unless `allow_insecure`. Returns whether the
/// URL is plain http to a host that is not loopback (allowed, to be warned about).
pub fn check_url(key: &str, url: &str, allow_insecure: bool) -> Result<bool, String> {
    let parsed =
        reqwest::Url::parse(url).map_err(|e| format!("{key} `{url}` is not a URL: {e}"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(format!("{key} `{url}` must be http:// or https://"));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(format!(
            "{key} must not carry credentials; use bearer_token_file"
        ));
    }
    let loopback = parsed.host_str().is_some_and(is_loopback_host);
    if parsed.scheme() == "http" && !loopback && !allow_insecure {
        return Err(format!(
            "{key} `{url}` is plain http to a host that is not loopback: patient data would cross the network unencrypted. Use https://, or set allow_insecure = true if this link is protected otherwise"
        ));
    }
    Ok(parsed.scheme() == "http" && !loopback)
}

/// Builds the client for requests to `base_url`: the system's roots plus `ca_file`, the
/// client certificate when configured (both files mode 0600), and HTTPS only unless
/// `base_url` is plain http (which [`check_url`] admitted).
pub fn client(settings: &HttpsSettings, base_url: &str) -> Result<reqwest::Client, String> {
    let mut builder = reqwest::Client::builder()
        .timeout(settings.timeout)
        .user_agent(concat!("iomt-gateway/", env!("CARGO_PKG_VERSION")))
        .tls_built_in_root_certs(true)
        .https_only(!base_url.starts_with("http://"));
    if let Some(ca) = &settings.ca_file {
        let pem =
            std::fs::read(ca).map_err(|e| format!("cannot read ca_file {}: {e}", ca.display()))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
            format!(
                "ca_file {} holds no valid PEM certificate: {e}",
                ca.display()
            )
        })?;
        if certs.is_empty() {
            return Err(format!("ca_file {} holds no certificate", ca.display()));
        }
        for cert in certs {
            builder = builder.add_root_certificate(cert);
        }
    }
    if let Some((cert, key)) = &settings.client_identity {
        let mut pem = crate::secret_file::read_secret_file(cert).map_err(|e| e.to_string())?;
        pem.push(b'\n');
        pem.extend(crate::secret_file::read_secret_file(key).map_err(|e| e.to_string())?);
        let identity = reqwest::Identity::from_pem(&pem).map_err(|e| {
            format!("client_cert_file/client_key_file are not a PEM certificate and key: {e}")
        })?;
        builder = builder.identity(identity);
    }
    builder
        .build()
        .map_err(|e| format!("cannot build the HTTP client: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_is_refused_beyond_loopback_unless_allowed() {
        assert_eq!(
            check_url("base_url", "https://fhir.example.org/r4", false),
            Ok(false)
        );
        assert_eq!(
            check_url("base_url", "http://127.0.0.1:8080/fhir", false),
            Ok(false)
        );
        assert_eq!(
            check_url("base_url", "http://localhost/fhir", false),
            Ok(false)
        );
        let e = check_url("base_url", "http://fhir.example.org", false).unwrap_err();
        assert!(
            e.contains("plain http to a host that is not loopback"),
            "{e}"
        );
        assert_eq!(
            check_url("base_url", "http://fhir.example.org", true),
            Ok(true)
        );
    }

    #[test]
    fn a_url_with_credentials_or_another_scheme_is_refused() {
        let e = check_url("base_url", "https://u:p@fhir.example.org", false).unwrap_err();
        assert!(e.contains("must not carry credentials"), "{e}");
        let e = check_url("base_url", "ftp://fhir.example.org", false).unwrap_err();
        assert!(e.contains("must be http:// or https://"), "{e}");
        let e = check_url("base_url", "not a url", false).unwrap_err();
        assert!(e.contains("is not a URL"), "{e}");
    }

    #[test]
    fn a_ca_file_without_certificates_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, "not a certificate\n").unwrap();
        let settings = HttpsSettings {
            timeout: Duration::from_secs(1),
            ca_file: Some(ca),
            client_identity: None,
        };
        let e = client(&settings, "https://fhir.example.org").unwrap_err();
        assert!(e.contains("ca_file"), "{e}");
    }
}
