//! The driver contract: how every transport hands readings to the gateway.
//!
//! A driver is a tokio task. It finds its devices, reads and decodes their data, and sends
//! each [`Reading`] on a **bounded** channel. When the channel is full, `send` waits: a slow
//! pipeline slows the source down (backpressure) instead of growing memory. The driver
//! stops when its [`CancellationToken`] is cancelled, or when the receiving side is gone.

use std::future::Future;
use std::pin::Pin;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::reading::Reading;

/// The sending side of the bounded channel drivers put readings on.
pub type ReadingSender = mpsc::Sender<Reading>;

/// The receiving side of the bounded channel the pipeline takes readings from.
pub type ReadingReceiver = mpsc::Receiver<Reading>;

/// A boxed driver future, so drivers of different types can be run side by side.
pub type DriverFuture = Pin<Box<dyn Future<Output = Result<(), DriverError>> + Send>>;

/// Why a driver stopped before it was asked to.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    /// The driver's configuration cannot work (named field, reason).
    #[error("driver {driver}: invalid configuration: {reason}")]
    Config {
        /// The driver's name.
        driver: String,
        /// What is wrong and how to fix it.
        reason: String,
    },
    /// The transport failed in a way the driver cannot recover from.
    #[error("driver {driver}: {reason}")]
    Transport {
        /// The driver's name.
        driver: String,
        /// What failed.
        reason: String,
    },
}

/// A source of readings: BLE, serial, MQTT or the simulator.
pub trait Driver: Send {
    /// A short name for logs (`sim`, `ble`, ...).
    fn name(&self) -> &str;

    /// Runs until `cancel` fires or the receiver is dropped, sending readings on `tx`.
    ///
    /// Returns `Ok(())` on a requested stop. Errors on individual devices or packets are
    /// logged and counted inside the driver and never end it; only a failure of the
    /// whole transport returns an error.
    fn run(self: Box<Self>, tx: ReadingSender, cancel: CancellationToken) -> DriverFuture;
}

/// Creates the bounded channel between drivers and the pipeline.
///
/// `capacity` must be at least 1; it is the most readings held in memory between the
/// drivers and the normalizer.
pub fn reading_channel(capacity: usize) -> (ReadingSender, ReadingReceiver) {
    mpsc::channel(capacity.max(1))
}
