//! The driver contract: how every transport hands readings to the gateway.
//!
//! A driver is a tokio task. It finds its devices, reads and decodes their data, and sends
//! each [`Reading`] on a **bounded** channel. When the channel is full, `send` waits: a slow
//! pipeline slows the source down (backpressure) instead of growing memory. The driver
//! stops when its [`CancellationToken`] is cancelled, or when the receiving side is gone.

use std::future::Future;
use std::pin::Pin;

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::reading::Reading;

/// What the gateway tells a driver once a reading is durably stored.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Committed {
    /// The identifiers (UUIDs) of the Observations committed for the reading; empty when
    /// the reading yielded none (e.g. only unmapped fields or test data).
    pub observations: Vec<String>,
}

/// Resolves once the reading is committed to the outbox; an error means it was not (the
/// gateway could not store it), so a source that can redeliver should.
pub type CommitReceiver = oneshot::Receiver<Committed>;

/// A reading on its way through the channel, with the optional commit acknowledgement.
#[derive(Debug)]
pub struct Envelope {
    /// The reading.
    pub reading: Reading,
    /// Where to acknowledge the commit, if the driver asked for it.
    pub ack: Option<oneshot::Sender<Committed>>,
    /// Whether the source waits for that acknowledgement before it goes on (an MQTT
    /// PUBACK, a glucose record marked as fetched): the outbox then commits within its
    /// short commit window. A reading nobody waits for may wait longer for company, so
    /// that several share one commit (fewer writes to the SD card).
    pub source_waits: bool,
}

/// The channel is closed: the gateway is shutting down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the reading channel is closed")]
pub struct ChannelClosed;

/// The sending side of the bounded channel drivers put readings on.
#[derive(Debug, Clone)]
pub struct ReadingSender {
    inner: mpsc::Sender<Envelope>,
}

impl ReadingSender {
    /// Sends a reading, waiting while the channel is full (backpressure).
    pub async fn send(&self, reading: Reading) -> Result<(), ChannelClosed> {
        self.inner
            .send(Envelope {
                reading,
                ack: None,
                source_waits: false,
            })
            .await
            .map_err(|_| ChannelClosed)
    }

    /// Sends a reading and returns a receiver that resolves once it is committed to the
    /// outbox. Sources that acknowledge to the device (an MQTT PUBACK, a glucose record
    /// marked as fetched) acknowledge only then.
    pub async fn send_acked(&self, reading: Reading) -> Result<CommitReceiver, ChannelClosed> {
        self.send_with_ack(reading, true).await
    }

    /// Sends a reading and returns a receiver that resolves once it is committed, for a
    /// source that does not wait for it (the simulator only logs its commits): the
    /// reading may share a later commit (see [`Envelope::source_waits`]).
    pub async fn send_noted(&self, reading: Reading) -> Result<CommitReceiver, ChannelClosed> {
        self.send_with_ack(reading, false).await
    }

    async fn send_with_ack(
        &self,
        reading: Reading,
        source_waits: bool,
    ) -> Result<CommitReceiver, ChannelClosed> {
        let (tx, rx) = oneshot::channel();
        self.inner
            .send(Envelope {
                reading,
                ack: Some(tx),
                source_waits,
            })
            .await
            .map_err(|_| ChannelClosed)?;
        Ok(rx)
    }
}

/// The receiving side of the bounded channel the pipeline takes readings from.
#[derive(Debug)]
pub struct ReadingReceiver {
    inner: mpsc::Receiver<Envelope>,
}

impl ReadingReceiver {
    /// The next reading, or `None` once every sender is gone and the channel is drained.
    pub async fn recv(&mut self) -> Option<Envelope> {
        self.inner.recv().await
    }
}

/// A message from a source that did not decode (not JSON, missing fields, wrong types,
/// too large). The gateway keeps it in its dead letters, sealed like everything it stores;
/// the driver acknowledges it to its source once the dead letter is committed, so a bad
/// message is neither lost nor redelivered forever.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    /// The transport it came through.
    pub transport: crate::reading::Transport,
    /// Where it came from (an MQTT topic). May name a device: stored sealed, never logged
    /// above `debug`.
    pub source: String,
    /// Why it was refused (names the field, never quotes the payload).
    pub reason: String,
    /// The payload as received, cut to the configured limit when it was larger.
    pub payload: Vec<u8>,
    /// The payload's size as received, in bytes.
    pub size: usize,
    /// When the gateway received it.
    pub received_at: chrono::DateTime<chrono::Utc>,
}

/// A rejected message on its way to the dead letters, with its commit acknowledgement.
#[derive(Debug)]
pub struct RejectEnvelope {
    /// The message.
    pub rejected: Rejected,
    /// Fired once the dead letter is committed.
    pub ack: oneshot::Sender<()>,
}

/// The sending side of the bounded channel of rejected messages.
#[derive(Debug, Clone)]
pub struct RejectSender {
    inner: mpsc::Sender<RejectEnvelope>,
}

impl RejectSender {
    /// Hands a rejected message to the dead letters; the receiver resolves once it is
    /// committed (an error: it was not stored, so a source that can redeliver should).
    /// Waits while the channel is full (backpressure).
    pub async fn send_acked(
        &self,
        rejected: Rejected,
    ) -> Result<oneshot::Receiver<()>, ChannelClosed> {
        let (tx, rx) = oneshot::channel();
        self.inner
            .send(RejectEnvelope { rejected, ack: tx })
            .await
            .map_err(|_| ChannelClosed)?;
        Ok(rx)
    }
}

/// The receiving side of the channel of rejected messages.
#[derive(Debug)]
pub struct RejectReceiver {
    inner: mpsc::Receiver<RejectEnvelope>,
}

impl RejectReceiver {
    /// The next rejected message, or `None` once every sender is gone.
    pub async fn recv(&mut self) -> Option<RejectEnvelope> {
        self.inner.recv().await
    }
}

/// Creates the bounded channel of rejected messages (`capacity` at least 1).
pub fn reject_channel(capacity: usize) -> (RejectSender, RejectReceiver) {
    let (tx, rx) = mpsc::channel(capacity.max(1));
    (RejectSender { inner: tx }, RejectReceiver { inner: rx })
}

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
    let (tx, rx) = mpsc::channel(capacity.max(1));
    (ReadingSender { inner: tx }, ReadingReceiver { inner: rx })
}
