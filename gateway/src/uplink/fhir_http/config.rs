//! `[[uplinks]]` with `kind = "fhir"`: the table as written, its validation, and the
//! validated [`FhirSettings`].

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::auth::{AuthSettings, OAuth2Settings, SmartSettings};
use crate::net::{client_identity, https};
use crate::smart::Alg;
use crate::uplink::{backoff_max, batch_size, timeout, Settings};

/// `[[uplinks]]` with `kind = "fhir"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFhirUplink {
    /// A unique name (default `fhir`); the outbox tracks delivery per name.
    pub name: Option<String>,
    /// The FHIR base URL.
    pub base_url: String,
    /// File with a bearer token (mode 0600), if the server needs one.
    pub bearer_token_file: Option<PathBuf>,
    /// Most Observations per Bundle (default 100; 1 to 10000).
    pub batch_size: Option<usize>,
    /// Timeout of one request in seconds (default 30; 1 to 3600).
    pub timeout_secs: Option<u64>,
    /// Longest retry delay in seconds (default 300; 1 to 86400).
    pub max_backoff_secs: Option<u64>,
    /// PEM bundle of extra trusted CAs (private PKI), added to the system roots.
    pub ca_file: Option<PathBuf>,
    /// Client certificate (PEM, mode 0600) for mutual TLS.
    pub client_cert_file: Option<PathBuf>,
    /// Client private key (PEM, mode 0600) for mutual TLS.
    pub client_key_file: Option<PathBuf>,
    /// Allow plain `http://` to a host that is not loopback, for the base URL and the
    /// token endpoint (configured or discovered) alike (default false; a warning is
    /// logged at every start when used).
    #[serde(default)]
    pub allow_insecure: bool,
    /// OAuth2 client credentials.
    pub oauth2: Option<Box<RawOAuth2>>,
    /// SMART Backend Services.
    pub smart: Option<Box<RawSmart>>,
}

/// `[uplinks.oauth2]`: OAuth2 client credentials.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOAuth2 {
    /// The token endpoint (https://, or plain http only to loopback unless
    /// `allow_insecure`: the client secret goes to it).
    pub token_url: String,
    /// The client id.
    pub client_id: String,
    /// File holding the client secret (mode 0600).
    pub client_secret_file: PathBuf,
    /// Requested scopes, space-separated.
    pub scope: Option<String>,
}

/// `[uplinks.smart]`: SMART Backend Services (client-confidential-asymmetric).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSmart {
    /// The client id registered with the backend.
    pub client_id: String,
    /// The private key made by `iomt-gateway keygen --smart` (PEM, mode 0600).
    pub private_key_file: PathBuf,
    /// `ES384` (default) or `RS384`.
    #[serde(default = "default_smart_alg")]
    pub alg: Alg,
    /// Requested scopes (default `system/Observation.write system/Device.write`).
    #[serde(default = "default_smart_scope")]
    pub scope: String,
    /// The token endpoint (default: discovered from `{base_url}/.well-known/smart-configuration`);
    /// configured or discovered, held to the rule of `base_url`.
    pub token_url: Option<String>,
}

fn default_smart_alg() -> Alg {
    Alg::Es384
}
fn default_smart_scope() -> String {
    "system/Observation.write system/Device.write".into()
}

/// Settings of one FHIR uplink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FhirSettings {
    /// The uplink's name.
    pub name: String,
    /// The FHIR base URL (Bundles are POSTed to it).
    pub base_url: String,
    /// How the uplink authenticates.
    pub auth: AuthSettings,
    /// Timeout of one request.
    pub timeout: Duration,
    /// Extra trusted CAs (PEM bundle), besides the system roots.
    pub ca_file: Option<PathBuf>,
    /// Client certificate and key files (PEM, mode 0600) for mutual TLS.
    pub client_identity: Option<(PathBuf, PathBuf)>,
    /// Plain http to a host that is not loopback, allowed by `allow_insecure`.
    pub insecure: bool,
    /// `allow_insecure` as configured: also admits a plain-http token endpoint beyond
    /// loopback that SMART discovery names.
    pub allow_insecure: bool,
}

impl RawFhirUplink {
    /// Validates the table: the URL rule of [`https::check_url`] for the base URL and any
    /// configured token endpoint, the mutual-TLS pair, at most one way to authenticate.
    pub fn validate(&self) -> Result<Settings<FhirSettings>, String> {
        let insecure = https::check_url("base_url", &self.base_url, self.allow_insecure)?;
        let token_urls = [
            (
                "oauth2.token_url",
                self.oauth2.as_ref().map(|o| &o.token_url),
            ),
            (
                "smart.token_url",
                self.smart.as_ref().and_then(|s| s.token_url.as_ref()),
            ),
        ];
        for (key, url) in token_urls {
            if let Some(url) = url {
                https::check_credentials_url(key, url, self.allow_insecure)?;
            }
        }
        let client_identity = client_identity(&self.client_cert_file, &self.client_key_file)?;
        let auth = match (&self.bearer_token_file, &self.oauth2, &self.smart) {
            (None, None, None) => AuthSettings::None,
            (Some(file), None, None) => AuthSettings::Bearer(file.clone()),
            (None, Some(o), None) => AuthSettings::OAuth2(OAuth2Settings {
                token_url: o.token_url.clone(),
                client_id: o.client_id.clone(),
                client_secret_file: o.client_secret_file.clone(),
                scope: o.scope.clone(),
            }),
            (None, None, Some(sm)) => AuthSettings::Smart(SmartSettings {
                client_id: sm.client_id.clone(),
                private_key_file: sm.private_key_file.clone(),
                alg: sm.alg,
                scope: sm.scope.clone(),
                token_url: sm.token_url.clone(),
            }),
            _ => return Err("choose one way to authenticate: bearer_token_file, [uplinks.oauth2] or [uplinks.smart]".into()),
        };
        let name = self.name.clone().unwrap_or_else(|| "fhir".into());
        Ok(Settings {
            batch_size: batch_size(self.batch_size)?,
            backoff_max: backoff_max(self.max_backoff_secs)?,
            kind: FhirSettings {
                name: name.clone(),
                base_url: self.base_url.clone(),
                auth,
                timeout: timeout(self.timeout_secs)?,
                ca_file: self.ca_file.clone(),
                client_identity,
                insecure,
                allow_insecure: self.allow_insecure,
            },
            name,
        })
    }
}
