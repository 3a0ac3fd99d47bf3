//! The FHIR REST uplink: transaction Bundles POSTed to a FHIR server's base URL.
//!
//! Every Observation entry is a conditional create on its deterministic identifier, so a
//! retry after a lost response never duplicates. A Bundle counts as delivered only on a
//! 2xx whose every entry response is 2xx.
//!
//! The HTTP client comes from [`crate::net::https`] (system roots plus `ca_file`, mutual
//! TLS, plain http refused beyond loopback unless `allow_insecure`, no redirect followed:
//! a 3xx is a transient failure that keeps the rows queued and says where it pointed). Authentication
//! (`auth.rs`) is one of: none, a bearer token read from a file (mode 0600, re-read after
//! a 401 so a rotated token is picked up), OAuth2 client credentials, or SMART Backend
//! Services (a signed JWT client assertion); access tokens are cached in memory and
//! renewed once after a 401. Token requests go through the same HTTPS client.

use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use reqwest::header::{ACCEPT, CONTENT_TYPE, RETRY_AFTER};
use reqwest::StatusCode;

mod auth;
pub mod config;

use auth::Auth;
pub use auth::{AuthSettings, OAuth2Settings, SmartSettings};
pub use config::FhirSettings;

use super::backoff::parse_retry_after;
use super::{DeliveryError, DeliveryFuture, Uplink, UplinkError};
use crate::fhir::Bundle;
use crate::net::https::{self, HttpsSettings};

/// The FHIR JSON media type.
pub const FHIR_JSON: &str = "application/fhir+json";

/// The uplink.
pub struct FhirUplink {
    settings: FhirSettings,
    client: reqwest::Client,
    auth: Auth,
}

impl std::fmt::Debug for FhirUplink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FhirUplink")
            .field("name", &self.settings.name)
            .field("base_url", &self.settings.base_url)
            .finish_non_exhaustive()
    }
}

impl FhirUplink {
    /// Creates the uplink (reads the token file, builds the HTTP client).
    pub fn new(settings: FhirSettings) -> Result<Self, UplinkError> {
        let auth = Auth::new(
            &settings.name,
            settings.auth.clone(),
            settings.allow_insecure,
        )
        .map_err(|reason| UplinkError::Setup {
            uplink: settings.name.clone(),
            reason,
        })?;
        let setup = |reason: String| UplinkError::Setup {
            uplink: settings.name.clone(),
            reason,
        };
        if settings.insecure {
            tracing::warn!(uplink = %settings.name, "allow_insecure: observations go over plain http to a host that is not loopback");
        }
        let client = https::client(
            &HttpsSettings {
                timeout: settings.timeout,
                ca_file: settings.ca_file.clone(),
                client_identity: settings.client_identity.clone(),
            },
            &settings.base_url,
        )
        .map_err(setup)?;
        Ok(Self {
            settings,
            client,
            auth,
        })
    }

    async fn post(&mut self, bundle: &Bundle<'_>) -> Result<(), DeliveryError> {
        let body = serde_json::to_vec(bundle).map_err(|e| DeliveryError::Transient {
            reason: format!("cannot serialize the bundle: {e}"),
            retry_after: None,
        })?;
        let (mut status, mut retry_after, mut text) = self.send(&body).await?;
        if status == StatusCode::UNAUTHORIZED && self.auth.renewable() {
            // The token may have been revoked or expired early: get a new one, once.
            tracing::info!(uplink = %self.settings.name, "HTTP 401: asking for a new access token");
            self.auth.invalidate();
            (status, retry_after, text) = self.send(&body).await?;
        }
        if status == StatusCode::UNAUTHORIZED {
            self.auth.invalidate();
        }
        classify(status, retry_after, &text, bundle.entry.len())
    }

    async fn send(
        &mut self,
        body: &[u8],
    ) -> Result<(StatusCode, Option<Duration>, String), DeliveryError> {
        let token = self
            .auth
            .bearer(&self.client, &self.settings.base_url)
            .await?;
        let mut request = self
            .client
            .post(&self.settings.base_url)
            .header(CONTENT_TYPE, FHIR_JSON)
            .header(ACCEPT, FHIR_JSON)
            .body(body.to_vec());
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.map_err(|e| DeliveryError::Transient {
            reason: describe(&e),
            retry_after: None,
        })?;
        if let Some(note) = https::redirect_not_followed(&response) {
            // Transient: the rows stay queued until the configuration or the server is
            // put right.
            return Err(DeliveryError::Transient {
                reason: format!(
                    "the FHIR server answered {note}; if the new address is right, set base_url to it"
                ),
                retry_after: None,
            });
        }
        let status = response.status();
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, SystemTime::now()));
        let text = response
            .text()
            .await
            .map_err(|e| DeliveryError::Transient {
                reason: format!("reading the response failed: {}", describe(&e)),
                retry_after: None,
            })?;
        Ok((status, retry_after, text))
    }
}

pub(crate) fn describe(e: &reqwest::Error) -> String {
    let kind = if e.is_connect() {
        "cannot connect"
    } else if e.is_timeout() {
        "timed out"
    } else if e.is_request() {
        "request failed"
    } else {
        "HTTP error"
    };
    // The chain names the cause (refused, DNS, TLS) without credentials.
    let mut cause = String::new();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        cause = s.to_string();
        source = s.source();
    }
    let hint = https::tls_hint(&cause);
    if cause.is_empty() {
        format!("{kind}{hint}")
    } else {
        format!("{kind}: {cause}{hint}")
    }
}

fn entry_index_regex() -> &'static regex::Regex {
    static RE: OnceLock<regex::Regex> = OnceLock::new();
    RE.get_or_init(|| {
        regex::Regex::new(r"Bundle\.entry\[(\d+)\]")
            .unwrap_or_else(|_| unreachable!("constant regex"))
    })
}

/// Reads an OperationOutcome: (entries it names, with their diagnostics; overall text).
fn outcome(text: &str) -> (Vec<(usize, String)>, String) {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(text) else {
        return (Vec::new(), "no OperationOutcome in the response".into());
    };
    let mut entries = Vec::new();
    let mut texts = Vec::new();
    for issue in v["issue"].as_array().into_iter().flatten() {
        let why = issue["diagnostics"]
            .as_str()
            .or_else(|| issue["details"]["text"].as_str())
            .unwrap_or_else(|| issue["code"].as_str().unwrap_or("rejected"))
            .to_string();
        texts.push(why.clone());
        let paths = issue["expression"]
            .as_array()
            .into_iter()
            .chain(issue["location"].as_array())
            .flatten();
        for p in paths.filter_map(|p| p.as_str()) {
            if let Some(n) = entry_index_regex()
                .captures(p)
                .and_then(|c| c[1].parse::<usize>().ok())
            {
                if !entries.iter().any(|(e, _)| *e == n) {
                    entries.push((n, why.clone()));
                }
            }
        }
    }
    (
        entries,
        if texts.is_empty() {
            "rejected without details".into()
        } else {
            texts.join("; ")
        },
    )
}

fn classify(
    status: StatusCode,
    retry_after: Option<Duration>,
    text: &str,
    sent: usize,
) -> Result<(), DeliveryError> {
    if status.is_success() {
        let v: serde_json::Value =
            serde_json::from_str(text).map_err(|_| DeliveryError::Transient {
                reason: format!(
                    "HTTP {status} without a transaction-response Bundle; delivery not confirmed"
                ),
                retry_after: None,
            })?;
        let entries = v["entry"].as_array().cloned().unwrap_or_default();
        if entries.len() != sent {
            return Err(DeliveryError::Transient {
                reason: format!(
                    "the response has {} entries for {sent} sent; delivery not confirmed",
                    entries.len()
                ),
                retry_after: None,
            });
        }
        let failed: Vec<(usize, String)> = entries
            .iter()
            .enumerate()
            .filter(|(_, e)| {
                !e["response"]["status"]
                    .as_str()
                    .is_some_and(|s| s.trim_start().starts_with('2'))
            })
            .map(|(i, e)| {
                let why = outcome(&e["response"]["outcome"].to_string()).1;
                (
                    i,
                    format!(
                        "{}: {why}",
                        e["response"]["status"].as_str().unwrap_or("no status")
                    ),
                )
            })
            .collect();
        return if failed.is_empty() {
            Ok(())
        } else {
            Err(DeliveryError::Rejected {
                reason: format!("{} entries failed", failed.len()),
                entries: failed,
            })
        };
    }
    match status.as_u16() {
                401 | 403 => Err(DeliveryError::Transient {
            reason: format!("HTTP {status}: the FHIR server refused the credentials; check bearer_token_file, [uplinks.oauth2] or [uplinks.smart]"),
            retry_after,
        }),
        408 | 425 | 429 | 500..=599 => Err(DeliveryError::Transient {
            reason: format!("HTTP {status}"),
            retry_after,
        }),
        400..=499 => {
            let (entries, reason) = outcome(text);
            Err(DeliveryError::Rejected {
                entries,
                reason: format!("HTTP {status}: {reason}"),
            })
        }
        _ => Err(DeliveryError::Transient {
            reason: format!("unexpected HTTP {status}"),
            retry_after,
        }),
    }
}

impl Uplink for FhirUplink {
    fn name(&self) -> &str {
        &self.settings.name
    }

    fn heartbeat(&self) -> crate::uplink::Heartbeat {
        crate::uplink::Heartbeat::Bundle
    }

    fn deliver<'a>(&'a mut self, bundle: &'a Bundle<'_>) -> DeliveryFuture<'a> {
        Box::pin(self.post(bundle))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_operation_outcome_names_the_offending_entries() {
        let text = r#"{"resourceType":"OperationOutcome","issue":[
            {"severity":"error","code":"invalid","diagnostics":"bad unit","expression":["Bundle.entry[3].resource.valueQuantity"]},
            {"severity":"error","code":"invalid","details":{"text":"bad code"},"location":["Bundle.entry[5]"]}]}"#;
        let (entries, reason) = outcome(text);
        assert_eq!(
            entries,
            vec![(3, "bad unit".to_string()), (5, "bad code".to_string())]
        );
        assert!(reason.contains("bad unit") && reason.contains("bad code"));
    }

    #[test]
    fn a_rejection_without_outcome_names_no_entry() {
        let (entries, reason) = outcome("<html>bad request</html>");
        assert!(entries.is_empty());
        assert!(reason.contains("no OperationOutcome"));
    }
}
