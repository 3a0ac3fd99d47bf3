//! Uplinks: where Bundles go. Each uplink lives in its own module with its config.

pub mod file;

use std::future::Future;
use std::pin::Pin;

use crate::fhir::Bundle;

/// Why a delivery failed.
#[derive(Debug, thiserror::Error)]
pub enum UplinkError {
    /// Writing or sending failed; the delivery may be retried.
    #[error("uplink {uplink}: {reason}")]
    Transient {
        /// The uplink's name.
        uplink: String,
        /// What failed.
        reason: String,
    },
}

/// A boxed delivery future.
pub type DeliveryFuture<'a> = Pin<Box<dyn Future<Output = Result<(), UplinkError>> + Send + 'a>>;

/// A destination for Bundles.
pub trait Uplink: Send {
    /// A short name for logs.
    fn name(&self) -> &str;

    /// Delivers one Bundle. `Ok` means the destination has it durably.
    fn deliver<'a>(&'a mut self, bundle: &'a Bundle) -> DeliveryFuture<'a>;
}
