//! Uplinks: where Bundles go. Each uplink lives in its own module with its configuration
//! next to it; `config.rs` lists the kinds (the `[[uplinks]]` table by `kind`, and the
//! settings that build each uplink); `deliver.rs` runs one delivery loop per uplink over
//! the outbox.

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
use crate::limits;

/// An uplink's validated settings: what the delivery loop needs of every uplink, and in
/// `kind` what its kind needs (one kind's settings, or [`config::UplinkKind`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings<K> {
    /// Its unique name.
    pub name: String,
    /// Most Observations per Bundle.
    pub batch_size: usize,
    /// Longest retry delay.
    pub backoff_max: Duration,
    /// What it is.
    pub kind: K,
}

impl<K> Settings<K> {
    /// The same settings with `kind` turned into another type.
    pub fn map_kind<L>(self, f: impl FnOnce(K) -> L) -> Settings<L> {
        Settings {
            name: self.name,
            batch_size: self.batch_size,
            backoff_max: self.backoff_max,
            kind: f(self.kind),
        }
    }
}

/// `batch_size`: 100 when not set, within [`limits::BATCH_SIZE`].
pub fn batch_size(configured: Option<usize>) -> Result<usize, String> {
    limits::optional("batch_size", configured, 100, &limits::BATCH_SIZE)
}

/// `max_backoff_secs`: the longest retry delay, 300 s when not set, within
/// [`limits::MAX_BACKOFF_SECS`].
pub fn backoff_max(max_backoff_secs: Option<u64>) -> Result<Duration, String> {
    limits::optional(
        "max_backoff_secs",
        max_backoff_secs,
        300,
        &limits::MAX_BACKOFF_SECS,
    )
    .map(Duration::from_secs)
}

/// `timeout_secs`: 30 s when not set, within [`limits::TIMEOUT_SECS`].
pub fn timeout(timeout_secs: Option<u64>) -> Result<Duration, String> {
    limits::optional("timeout_secs", timeout_secs, 30, &limits::TIMEOUT_SECS)
        .map(Duration::from_secs)
}

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
    fn deliver<'a>(&'a mut self, bundle: &'a Bundle<'_>) -> DeliveryFuture<'a>;

    /// After a failed delivery: resolves once the destination is reachable again, so that
    /// the retry need not wait out the rest of its backoff (the MQTT uplink: its background
    /// connection is back). By default it never resolves: the backoff alone times the
    /// retry.
    fn reachable(&mut self) -> ReachableFuture<'_> {
        Box::pin(std::future::pending())
    }

    /// The largest Bundle this uplink takes, in bytes of JSON (the MQTT uplink in bundle
    /// mode: its `max_message_bytes`). The delivery loop sends a batch whose Bundle would
    /// be larger as several Bundles, in order, and fetches about one Bundle's rows at a
    /// time. `None` (the default): bounded by `batch_size` only.
    fn max_bundle_bytes(&self) -> Option<usize> {
        None
    }

    /// For an uplink whose destination acknowledges each Observation on its own (the MQTT
    /// uplink in observation mode): how many Observations may wait for their
    /// acknowledgement at once. The delivery loop then keeps that window full through
    /// [`Uplink::send`] and [`Uplink::acked`], marking rows delivered as their
    /// acknowledgements arrive, instead of waiting for whole Bundles through
    /// [`Uplink::deliver`]. `None` (the default): whole Bundles.
    fn window(&self) -> Option<usize> {
        None
    }

    /// With a [`Uplink::window`]: hands the Observations of `bundle` (its `Observation`
    /// entries, in order) to the destination without waiting for their acknowledgements.
    /// `Err`: none of the Observations still waiting will be acknowledged; they are sent
    /// again. By default it fails: an uplink with a window implements it.
    fn send<'a>(&'a mut self, _bundle: &'a Bundle<'_>) -> DeliveryFuture<'a> {
        Box::pin(std::future::ready(Err(DeliveryError::Transient {
            reason: "this uplink sends whole Bundles only".into(),
            retry_after: None,
        })))
    }

    /// With a [`Uplink::window`]: resolves with how many more of the Observations sent,
    /// oldest first, the destination has acknowledged (at least one). `Err`: the
    /// connection was lost or an acknowledgement did not come in time; none of the
    /// Observations still waiting will be acknowledged. By default it never resolves.
    fn acked(&mut self) -> AckedFuture<'_> {
        Box::pin(std::future::pending())
    }

    /// How this uplink sends heartbeats (when nothing was delivered for `[status]
    /// heartbeat_interval_secs`, and soon after a device's state changes). Default: none.
    fn heartbeat(&self) -> Heartbeat {
        Heartbeat::None
    }

    /// With [`Heartbeat::Status`]: publishes `message` (the gateway's status, JSON) so the
    /// destination keeps it as the latest (MQTT: retained). `Ok` once handed over.
    fn status<'a>(&'a mut self, _message: &'a [u8]) -> DeliveryFuture<'a> {
        Box::pin(std::future::ready(Ok(())))
    }
}

/// How an uplink sends heartbeats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Heartbeat {
    /// None.
    None,
    /// A Bundle through [`Uplink::deliver`]: the gateway's Device (whose
    /// `meta.lastUpdated` at a FHIR server is then the kit's last contact) and the Device
    /// of each device whose reported state changed, with that state.
    Bundle,
    /// A status message through [`Uplink::status`].
    Status,
}

/// A boxed future of [`Uplink::acked`].
pub type AckedFuture<'a> = Pin<Box<dyn Future<Output = Result<usize, DeliveryError>> + Send + 'a>>;

/// A boxed future of [`Uplink::reachable`].
pub type ReachableFuture<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;
