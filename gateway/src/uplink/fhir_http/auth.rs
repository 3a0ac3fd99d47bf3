//! System-to-system authorization for the FHIR uplink: OAuth2 client credentials (client
//! secret from a file) and SMART Backend Services (a JWT client assertion signed with the
//! gateway's key). Access tokens are cached until shortly before they expire; after a 401
//! the uplink asks for a new one once.
//!
//! Every token endpoint, configured or discovered, is held to the base URL's rule (no
//! plain http beyond loopback unless `allow_insecure`): a refused one gets no request.
//! Secrets, assertions and tokens never appear in logs or error messages.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::describe;
use crate::net::https;
use crate::smart::{Alg, SigningKey};
use crate::uplink::DeliveryError;

/// OAuth2 client credentials settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OAuth2Settings {
    /// The token endpoint.
    pub token_url: String,
    /// The client id.
    pub client_id: String,
    /// File holding the client secret (mode 0600).
    pub client_secret_file: PathBuf,
    /// Requested scopes, space-separated.
    pub scope: Option<String>,
}

/// SMART Backend Services settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmartSettings {
    /// The client id registered with the backend.
    pub client_id: String,
    /// The private key (PEM PKCS#8, mode 0600) made by `keygen --smart`.
    pub private_key_file: PathBuf,
    /// Its algorithm.
    pub alg: Alg,
    /// Requested scopes, e.g. `system/Observation.write system/Device.write`.
    pub scope: String,
    /// The token endpoint; discovered from `{base}/.well-known/smart-configuration` when
    /// not set.
    pub token_url: Option<String>,
}

/// How the uplink authenticates.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum AuthSettings {
    /// No authorization header.
    #[default]
    None,
    /// A static bearer token from a file (mode 0600).
    Bearer(PathBuf),
    /// OAuth2 client credentials.
    OAuth2(OAuth2Settings),
    /// SMART Backend Services.
    Smart(SmartSettings),
}

struct Cached {
    token: String,
    refresh_at: Instant,
}

/// The uplink's authorization state.
pub(super) struct Auth {
    settings: AuthSettings,
    uplink: String,
    static_token: Option<String>,
    key: Option<SigningKey>,
    token_url: Option<String>,
    /// `allow_insecure`: a discovered plain-http token endpoint beyond loopback is used.
    allow_insecure: bool,
    cached: Option<Cached>,
}

fn transient(reason: String) -> DeliveryError {
    DeliveryError::Transient {
        reason,
        retry_after: None,
    }
}

fn read_secret_text(path: &std::path::Path, what: &str) -> Result<String, String> {
    let bytes = crate::secret_file::read_secret_file(path).map_err(|e| e.to_string())?;
    let text = String::from_utf8(bytes)
        .map_err(|_| format!("the {what} file {} is not text", path.display()))?;
    let text = text.trim().to_string();
    if text.is_empty() {
        return Err(format!("the {what} file {} is empty", path.display()));
    }
    Ok(text)
}

/// The longest a token is kept, in seconds (a day): a longer `expires_in` from the
/// token endpoint is clamped to it, so an absurd answer cannot overflow the clock.
const MAX_TOKEN_SECS: u64 = 86_400;

/// How long to keep a token that lives `expires_in`: until shortly before it expires.
fn keep_for(expires_in: Duration) -> Duration {
    let margin = (expires_in / 5).min(Duration::from_secs(30));
    expires_in.saturating_sub(margin)
}

impl Auth {
    /// Loads what the settings need (token file, private key) so that mistakes show at
    /// start.
    pub(super) fn new(
        uplink: &str,
        settings: AuthSettings,
        allow_insecure: bool,
    ) -> Result<Self, String> {
        let mut auth = Self {
            uplink: uplink.into(),
            static_token: None,
            key: None,
            token_url: None,
            allow_insecure,
            cached: None,
            settings: settings.clone(),
        };
        match &settings {
            AuthSettings::None => {}
            AuthSettings::Bearer(path) => {
                auth.static_token = Some(read_secret_text(path, "bearer token")?)
            }
            AuthSettings::OAuth2(o) => {
                read_secret_text(&o.client_secret_file, "client secret")?;
                auth.token_url = Some(o.token_url.clone());
            }
            AuthSettings::Smart(s) => {
                auth.key =
                    Some(SigningKey::load(s.alg, &s.private_key_file).map_err(|e| e.to_string())?);
                auth.token_url = s.token_url.clone();
            }
        }
        Ok(auth)
    }

    /// Whether a 401 can be cured by asking for a new token.
    pub(super) fn renewable(&self) -> bool {
        matches!(
            self.settings,
            AuthSettings::OAuth2(_) | AuthSettings::Smart(_)
        )
    }

    /// Forgets the cached token (after a 401); a static token is re-read from its file.
    pub(super) fn invalidate(&mut self) {
        self.cached = None;
        if let AuthSettings::Bearer(path) = &self.settings {
            if let Ok(t) = read_secret_text(path, "bearer token") {
                self.static_token = Some(t);
            }
        }
    }

    /// The bearer token to send, fetching a new access token when needed.
    pub(super) async fn bearer(
        &mut self,
        client: &reqwest::Client,
        base_url: &str,
    ) -> Result<Option<String>, DeliveryError> {
        match &self.settings {
            AuthSettings::None => return Ok(None),
            AuthSettings::Bearer(_) => return Ok(self.static_token.clone()),
            _ => {}
        }
        if let Some(c) = &self.cached {
            if Instant::now() < c.refresh_at {
                return Ok(Some(c.token.clone()));
            }
        }
        let token_url = match &self.token_url {
            Some(u) => u.clone(),
            None => {
                let u = discover(client, base_url, self.allow_insecure).await?;
                self.token_url = Some(u.clone());
                u
            }
        };
        let form: Vec<(&str, String)> = match &self.settings {
            AuthSettings::OAuth2(o) => {
                let mut f = vec![("grant_type", "client_credentials".to_string())];
                if let Some(scope) = &o.scope {
                    f.push(("scope", scope.clone()));
                }
                f
            }
            AuthSettings::Smart(s) => {
                let key = self
                    .key
                    .as_ref()
                    .ok_or_else(|| transient("the SMART key is not loaded".into()))?;
                let now = chrono::Utc::now().timestamp();
                let assertion = key
                    .client_assertion(&s.client_id, &token_url, now, 300)
                    .map_err(|e| transient(e.to_string()))?;
                vec![
                    ("grant_type", "client_credentials".to_string()),
                    ("scope", s.scope.clone()),
                    (
                        "client_assertion_type",
                        "urn:ietf:params:oauth:client-assertion-type:jwt-bearer".to_string(),
                    ),
                    ("client_assertion", assertion),
                ]
            }
            _ => return Ok(None),
        };
        let mut request = client
            .post(&token_url)
            .header(reqwest::header::ACCEPT, "application/json")
            .form(&form);
        if let AuthSettings::OAuth2(o) = &self.settings {
            let secret =
                read_secret_text(&o.client_secret_file, "client secret").map_err(transient)?;
            request = request.basic_auth(&o.client_id, Some(secret));
        }
        let response = request
            .send()
            .await
            .map_err(|e| transient(format!("token endpoint: {}", describe(&e))))?;
        if let Some(note) = https::redirect_not_followed(&response) {
            return Err(transient(format!(
                "token endpoint: {note}; if the new address is right, set token_url to it"
            )));
        }
        let status = response.status();
        let body: serde_json::Value = response.json().await.unwrap_or(serde_json::Value::Null);
        if !status.is_success() {
            return Err(transient(token_error(status, &body)));
        }
        let token = body["access_token"]
            .as_str()
            .filter(|t| !t.is_empty())
            .ok_or_else(|| transient("token endpoint: the response has no access_token".into()))?
            .to_string();
        let announced = body["expires_in"].as_u64().unwrap_or(300);
        let expires_in = Duration::from_secs(announced.min(MAX_TOKEN_SECS));
        if announced > MAX_TOKEN_SECS {
            tracing::warn!(uplink = %self.uplink, expires_in_secs = announced, "the token endpoint's expires_in is longer than a day; the token is kept for at most {MAX_TOKEN_SECS} s");
        }
        tracing::info!(uplink = %self.uplink, expires_in_secs = expires_in.as_secs(), "new access token");
        let now = Instant::now();
        self.cached = Some(Cached {
            token: token.clone(),
            // Never past what the clock can hold: then the token is simply fetched again.
            refresh_at: now.checked_add(keep_for(expires_in)).unwrap_or(now),
        });
        Ok(Some(token))
    }
}

/// Reads `token_endpoint` from `{base}/.well-known/smart-configuration`, and holds it to
/// the rule of the base URL: the signed assertion goes to it.
async fn discover(
    client: &reqwest::Client,
    base_url: &str,
    allow_insecure: bool,
) -> Result<String, DeliveryError> {
    let url = format!(
        "{}/.well-known/smart-configuration",
        base_url.trim_end_matches('/')
    );
    let response = client
        .get(&url)
        .header(reqwest::header::ACCEPT, "application/json")
        .send()
        .await
        .map_err(|e| transient(format!("SMART discovery at {url}: {}", describe(&e))))?;
    if let Some(note) = https::redirect_not_followed(&response) {
        return Err(transient(format!(
            "SMART discovery at {url}: {note}; check base_url, or set token_url in [uplinks.smart]"
        )));
    }
    let status = response.status();
    let body: serde_json::Value = response.json().await.unwrap_or(serde_json::Value::Null);
    let endpoint = body["token_endpoint"]
        .as_str()
        .filter(|_| status.is_success())
        .map(str::to_string)
        .ok_or_else(|| transient(format!("SMART discovery at {url}: HTTP {status} without token_endpoint; set token_url in [uplinks.smart]")))?;
    https::check_credentials_url("the discovered token_endpoint", &endpoint, allow_insecure)
        .map_err(|e| {
            transient(format!(
                "SMART discovery at {url}: {e}. No token was requested; set token_url in [uplinks.smart] to an https:// endpoint"
            ))
        })?;
    Ok(endpoint)
}

/// An actionable description of a token endpoint's refusal (RFC 6749 error response).
fn token_error(status: reqwest::StatusCode, body: &serde_json::Value) -> String {
    let error = body["error"].as_str().unwrap_or("no error code");
    let description = body["error_description"].as_str().unwrap_or("");
    let lower = description.to_lowercase();
    let hint = if ["exp", "iat", "nbf", "expired", "clock", "time", "future"]
        .iter()
        .any(|w| lower.contains(w))
    {
        " — the token endpoint rejected the assertion's time: check this gateway's clock (NTP)"
    } else if error == "invalid_client" {
        " — check client_id and that the backend has the key (`iomt-gateway keygen --smart` prints the JWK Set) or the client secret"
    } else {
        ""
    };
    format!("token endpoint refused: HTTP {status} {error}: {description}{hint}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_kept_until_shortly_before_they_expire() {
        assert_eq!(
            keep_for(Duration::from_secs(3600)),
            Duration::from_secs(3570)
        );
        assert_eq!(keep_for(Duration::from_secs(10)), Duration::from_secs(8));
        assert_eq!(keep_for(Duration::ZERO), Duration::ZERO);
    }

    #[test]
    fn a_time_refusal_says_to_check_the_clock() {
        let body = serde_json::json!({"error": "invalid_grant", "error_description": "assertion exp is in the past"});
        assert!(token_error(reqwest::StatusCode::BAD_REQUEST, &body)
            .contains("check this gateway's clock"));
        let body = serde_json::json!({"error": "invalid_client", "error_description": "signature does not verify"});
        assert!(token_error(reqwest::StatusCode::UNAUTHORIZED, &body).contains("keygen --smart"));
    }
}
