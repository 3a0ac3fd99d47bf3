//! Uplinks: where Bundles go. Each uplink lives in its own module with its config next to
//! it; `deliver.rs` runs one delivery loop per uplink over the outbox.

pub mod backoff;
pub mod bundle;
pub mod config;
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

/// A boxed delivery future.
pub type DeliveryFuture<'a> = Pin<Box<dyn Future<Output = Result<(), DeliveryError>> + Send + 'a>>;

/// A destination for Bundles.
pub trait Uplink: Send {
    /// The uplink's configured name (unique; the outbox tracks delivery per name).
    fn name(&self) -> &str;

    /// Delivers one Bundle. `Ok` means the destination acknowledged every entry.
    fn deliver<'a>(&'a mut self, bundle: &'a Bundle) -> DeliveryFuture<'a>;
}
