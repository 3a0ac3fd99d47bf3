//! The HTTPS client every HTTP uplink uses (reqwest + rustls), and the rule for its URL.
//!
//! The server's certificate is always verified, against the system's roots plus an
//! optional private CA bundle (`ca_file`); a client certificate authenticates the kit for
//! mutual TLS; plain `http://` is accepted only to a loopback host unless the
//! configuration says `allow_insecure`; the same rule holds for every token endpoint,
//! configured or found by SMART discovery ([`check_credentials_url`]). The same client
//! also makes the uplink's token requests (OAuth2, SMART Backend Services), so they follow
//! the same rules. It follows no redirect: a 3xx is an answer, logged with where it
//! pointed ([`redirect_not_followed`]), so Bundles and credentials never go elsewhere.

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
    check(key, url, allow_insecure, "patient data")
}

/// Checks a URL the gateway sends credentials to (a token endpoint, configured under
/// `key` or discovered): the rule of [`check_url`], the same `allow_insecure`.
pub fn check_credentials_url(key: &str, url: &str, allow_insecure: bool) -> Result<(), String> {
    check(key, url, allow_insecure, "the credentials").map(|_| ())
}

fn check(key: &str, url: &str, allow_insecure: bool, what: &str) -> Result<bool, String> {
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
            "{key} `{url}` is plain http to a host that is not loopback: {what} would cross the network unencrypted. Use https://, or set allow_insecure = true if this link is protected otherwise"
        ));
    }
    Ok(parsed.scheme() == "http" && !loopback)
}

/// For a redirect answer (3xx with a `Location`), the text to log: where it pointed
/// (without user info, query or fragment) and that it was not followed. The client of
/// [`client`] follows no redirect: a Bundle or a credential goes only to the configured
/// (or, for a token endpoint, discovered and checked) URL.
pub fn redirect_not_followed(response: &reqwest::Response) -> Option<String> {
    if !response.status().is_redirection() {
        return None;
    }
    let location = response
        .headers()
        .get(reqwest::header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .map(|l| shown_location(response.url(), l))
        .unwrap_or_else(|| "no Location".into());
    Some(format!(
        "HTTP {}, a redirect to {location}: the Location was not followed (the gateway follows no redirects)",
        response.status()
    ))
}

/// A redirect's `Location`, resolved against the request's URL, as safe to log: scheme,
/// host, port and path only, cut to 200 characters.
fn shown_location(base: &reqwest::Url, location: &str) -> String {
    match base.join(location) {
        Ok(mut url) => {
            let _ = url.set_username("");
            let _ = url.set_password(None);
            url.set_query(None);
            url.set_fragment(None);
            format!("`{}`", url.as_str().chars().take(200).collect::<String>())
        }
        Err(_) => "a Location that is not a URL".into(),
    }
}

/// Builds the client for requests to `base_url`: the system's roots plus `ca_file`, the
/// client certificate when configured (both files mode 0600), HTTPS only unless
/// `base_url` is plain http (which [`check_url`] admitted), and no redirect followed.
pub fn client(settings: &HttpsSettings, base_url: &str) -> Result<reqwest::Client, String> {
    let mut builder = reqwest::Client::builder()
        .timeout(settings.timeout)
        .user_agent(concat!("iomt-gateway/", env!("CARGO_PKG_VERSION")))
        .tls_built_in_root_certs(true)
        // A redirect would re-send the Bundle (307/308) or the credentials elsewhere.
        .redirect(reqwest::redirect::Policy::none())
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
    fn a_token_endpoint_follows_the_same_rule_naming_the_credentials() {
        let e = check_credentials_url("token_url", "http://auth.example.org/t", false).unwrap_err();
        assert!(
            e.contains("token_url") && e.contains("the credentials would cross"),
            "{e}"
        );
        assert!(check_credentials_url("token_url", "http://auth.example.org/t", true).is_ok());
        assert!(check_credentials_url("token_url", "http://[::1]:8/t", false).is_ok());
        assert!(check_credentials_url("token_url", "https://auth.example.org/t", false).is_ok());
    }

    #[test]
    fn a_logged_location_keeps_no_user_info_query_or_fragment() {
        let base = reqwest::Url::parse("https://fhir.example.org/r4").unwrap();
        assert_eq!(
            shown_location(&base, "https://u:p@other.example.org/fhir?x=1#f"),
            "`https://other.example.org/fhir`"
        );
        assert_eq!(
            shown_location(&base, "/r4/"),
            "`https://fhir.example.org/r4/`"
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
