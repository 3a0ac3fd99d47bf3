//! Uplinks: where Bundles go. Each uplink lives in its own module with its config next to
//! it; `deliver.rs` runs one delivery loop per uplink over the outbox.

pub mod backoff;
pub mod bundle;
pub mod deliver;
pub mod fhir_http;
pub mod file;
pub mod mqtt;

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use crate::fhir::Bundle;

/// Why an uplink could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum UplinkError {
    /// The uplink's configuration cannot work.
    #[error("uplink {uplink}: {reason}")]
    Setup {
        /// The uplink's name.
        uplink: String,
        /// What is wrong.
        reason: String,
    },
}

/// Why one delivery failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeliveryError {
    /// The destination could not take the Bundle now (network, 5xx, 429, 401...): retry
    /// later, after `retry_after` if the server said so.
    #[error("{reason}")]
    Transient {
        /// What happened, without credentials or patient data.
        reason: String,
        /// The server's Retry-After, if any.
        retry_after: Option<Duration>,
    },
    /// The destination refused some entries for good (a 4xx with an OperationOutcome).
    /// `entries` are indexes into the Bundle's entries; empty when the server did not say
    /// which entries were at fault.
    #[error("rejected: {reason}")]
    Rejected {
        /// The offending entries and the server's reason for each.
        entries: Vec<(usize, String)>,
        /// The server's reason for the whole Bundle.
        reason: String,
    },
}

/// What to configure, given the text of a failed TLS connection (rustls's error names),
/// or "" when the text is not about TLS. Shared by the FHIR and MQTT uplinks.
pub(crate) fn tls_hint(cause: &str) -> &'static str {
    if cause.contains("UnknownIssuer") || cause.contains("invalid peer certificate") {
        " (the server's certificate is not trusted: for a private CA set ca_file)"
    } else if cause.contains("CertificateRequired")
        || cause.contains("certificate required")
        || cause.contains("HandshakeFailure")
    {
        " (the TLS handshake failed: the server may require a client certificate, see client_cert_file and client_key_file)"
    } else if cause.contains("BadCertificate")
        || cause.contains("UnknownCA")
        || cause.contains("CertificateUnknown")
    {
        " (the server refused the client certificate: check client_cert_file against the CA the server trusts)"
    } else {
        ""
    }
}

/// A boxed delivery future.
pub type DeliveryFuture<'a> = Pin<Box<dyn Future<Output = Result<(), DeliveryError>> + Send + 'a>>;

/// A destination for Bundles.
pub trait Uplink: Send {
    /// The uplink's configured name (unique; the outbox tracks delivery per name).
    fn name(&self) -> &str;

    /// Delivers one Bundle. `Ok` means the destination acknowledged every entry.
    fn deliver<'a>(&'a mut self, bundle: &'a Bundle) -> DeliveryFuture<'a>;
}
