//! The PUBACK side of the MQTT driver: the messages waiting for their commit, oldest
//! first; the PUBACKs ready to be written; and what follows a failed commit (a
//! resynchronization: once everything handed over is settled and every PUBACK written,
//! the session is reconnected so that the broker delivers the unacknowledged messages
//! again).
//!
//! PUBACKs are written to the connection by the driver, all those ready at once with one
//! flush, not handed to rumqttc's client: rumqttc 0.25 writes and flushes each request on
//! its own, one turn of its event loop and one system call each, and its turns serve what
//! it has read first (bytebeamio/rumqtt#810). Under load the PUBACKs fell tens of
//! thousands behind the commits (45,000 of 50,000 in the round-trip benchmark), all of
//! them messages the broker still held as unacknowledged: delivered again, so stored and
//! forwarded twice, after a crash or a restart. Now a message's PUBACK is written as soon
//! as its commit is known, and `max_in_flight` bounds what the broker holds.

use std::collections::VecDeque;
use std::time::Duration;

use rumqttc::{AsyncClient, ConnectionError, EventLoop, Packet, PubAck, Publish, QoS, StateError};
use tokio::sync::oneshot;

use crate::backoff::Backoff;
use crate::driver::Committed;

/// What a message waits for before its PUBACK.
pub(super) enum Wait {
    /// The commit of each of its readings.
    Readings(Vec<oneshot::Receiver<Committed>>),
    /// The commit of its dead letter.
    DeadLetter(oneshot::Receiver<()>),
}

/// What a message's acknowledgement needs of it: a few bytes, where the message kept its
/// topic (a PUBACK is owed for each message read, and a broker that lets more out than
/// its window can make many wait).
#[derive(Debug, Clone, Copy)]
pub(super) struct Ack {
    qos: QoS,
    pkid: u16,
}

impl Ack {
    /// The acknowledgement `publish` is owed.
    pub(super) fn of(publish: &Publish) -> Self {
        Self {
            qos: publish.qos,
            pkid: publish.pkid,
        }
    }

    /// Hands it to rumqttc's client without waiting (`Err`: its request queue is full):
    /// for QoS 2, whose PUBREC rumqttc must record (the driver subscribes at QoS 1, so a
    /// broker never sends one).
    fn try_send(self, client: &AsyncClient) -> Result<(), rumqttc::ClientError> {
        // rumqttc builds the PUBACK from these two fields alone; an empty topic and
        // payload allocate nothing.
        let mut publish = Publish::new(String::new(), self.qos, Vec::new());
        publish.pkid = self.pkid;
        client.try_ack(&publish)
    }
}

/// A message handed over, waiting for its commit. Its payload is no longer held (only
/// what its PUBACK needs).
pub(super) struct Pending {
    /// Its acknowledgement.
    pub(super) ack: Ack,
    /// What its PUBACK waits for.
    pub(super) wait: Wait,
    /// Whether something of it could not be stored.
    pub(super) failed: bool,
}

impl Pending {
    /// Resolves once everything of the message is committed (or failed). Cancel-safe: a
    /// receiver is removed as soon as it has resolved.
    async fn committed(&mut self) {
        match &mut self.wait {
            Wait::Readings(rxs) => {
                while let Some(rx) = rxs.first_mut() {
                    let ok = rx.await.is_ok();
                    rxs.remove(0);
                    self.failed |= !ok;
                }
            }
            Wait::DeadLetter(rx) => {
                let ok = rx.await.is_ok();
                self.failed |= !ok;
                self.wait = Wait::Readings(Vec::new());
            }
        }
    }
}

/// The PUBACK side: messages waiting for their commit, oldest first, and PUBACKs ready
/// but not yet written.
pub(super) struct Acks {
    /// Messages handed over, oldest first.
    pub(super) pending: VecDeque<Pending>,
    ready: VecDeque<Ack>,
    /// Acknowledgements handed to rumqttc's client (QoS 2) and not yet written.
    unwritten: usize,
    /// Whether the broker's excess in-flight window was warned about.
    pub(super) warned: bool,
    /// A commit failed: the session is to be reconnected once everything is settled.
    resync: bool,
    /// Messages not stored in this episode of failed commits.
    failed: u64,
    /// Delays between reconnects after failed commits.
    backoff: Backoff,
}

impl Acks {
    /// No message waiting; reconnects after failed commits wait from `initial` up to
    /// `max`.
    pub(super) fn new(initial: Duration, max: Duration) -> Self {
        Self {
            pending: VecDeque::new(),
            ready: VecDeque::new(),
            unwritten: 0,
            warned: false,
            resync: false,
            failed: 0,
            backoff: Backoff::new(initial, max),
        }
    }

    /// Writes the ready PUBACKs to the connection, in order, and flushes them together,
    /// within rumqttc's own bound on a flush. Without a connection they wait for the next
    /// one. `Err`: the connection failed or took longer (the caller drops it); what was
    /// written is lost with it, and the broker delivers those messages again.
    pub(super) async fn write(
        &mut self,
        eventloop: &mut EventLoop,
        client: &AsyncClient,
    ) -> Result<(), ConnectionError> {
        if self.ready.is_empty() || eventloop.network.is_none() {
            return Ok(());
        }
        let bound = Duration::from_secs(eventloop.network_options.connection_timeout());
        match tokio::time::timeout(bound, self.write_ready(eventloop, client)).await {
            Ok(written) => written.map_err(ConnectionError::MqttState),
            Err(_) => Err(ConnectionError::FlushTimeout),
        }
    }

    async fn write_ready(
        &mut self,
        eventloop: &mut EventLoop,
        client: &AsyncClient,
    ) -> Result<(), StateError> {
        let Some(network) = eventloop.network.as_mut() else {
            return Ok(());
        };
        while let Some(&ack) = self.ready.front() {
            match ack.qos {
                QoS::AtLeastOnce => network.write(Packet::PubAck(PubAck::new(ack.pkid))).await?,
                QoS::AtMostOnce => {}
                QoS::ExactlyOnce => {
                    if ack.try_send(client).is_err() {
                        break;
                    }
                    self.unwritten += 1;
                }
            }
            // Nothing awaits between the write and this: a cancelled write leaves the
            // PUBACK here, not in the connection's buffer.
            self.ready.pop_front();
        }
        network.flush().await
    }

    /// rumqttc wrote an acknowledgement handed to its client.
    pub(super) fn written(&mut self) {
        self.unwritten = self.unwritten.saturating_sub(1);
    }

    /// The connection is gone (rumqttc dropped it after an error, or the driver did, with
    /// `EventLoop::clean`): what belonged to it goes, and the broker delivers those
    /// messages again. The acknowledgements handed to rumqttc and not yet written; and the
    /// messages rumqttc read and has not yet given out, which would otherwise come after
    /// the reconnect and be taken beside the broker's copies (stored twice).
    pub(super) fn connection_gone(&mut self, eventloop: &mut EventLoop) {
        self.unwritten = 0;
        eventloop.state.events.clear();
    }

    /// Messages the broker holds as unacknowledged here: waiting for their commit, or
    /// committed with their PUBACK not yet written.
    pub(super) fn outstanding(&self) -> usize {
        self.pending.len() + self.ready.len() + self.unwritten
    }

    /// Waits for the oldest message's commit and moves its PUBACK to `ready`; a message
    /// that could not be stored gets none and calls for a resynchronization.
    pub(super) async fn next_committed(&mut self) {
        let Some(front) = self.pending.front_mut() else {
            return std::future::pending().await;
        };
        front.committed().await;
        let Some(p) = self.pending.pop_front() else {
            return;
        };
        if p.failed {
            self.failed = self.failed.saturating_add(1);
            self.resync = true;
        } else {
            if self.failed > 0 || self.backoff.failures() > 0 {
                tracing::info!(
                    not_stored = self.failed,
                    "MQTT messages are stored again; intake resumed"
                );
                self.failed = 0;
                self.backoff.succeed();
            }
            self.ready.push_back(p.ack);
        }
    }

    /// Whether a commit failed, so that new messages are not taken (the broker delivers
    /// them again after the reconnect).
    pub(super) fn resyncing(&self) -> bool {
        self.resync
    }

    /// When a commit failed and everything handed over is settled, with every PUBACK
    /// written: the delay before reconnecting (logged at warn once per episode of failed
    /// commits). The caller drops the connection and waits that long.
    pub(super) fn resync_due(&mut self) -> Option<Duration> {
        if !self.resync || !self.is_empty() || self.unwritten > 0 {
            return None;
        }
        self.resync = false;
        let first = self.backoff.failures() == 0;
        let delay = self.backoff.fail();
        if first {
            tracing::warn!(
                not_stored = self.failed,
                delay_ms = delay.as_millis() as u64,
                "MQTT message could not be stored (the outbox could not commit; its error names the cause); not acknowledged: reconnecting so that the broker delivers them again"
            );
        } else {
            tracing::debug!(
                not_stored = self.failed,
                delay_ms = delay.as_millis() as u64,
                "MQTT messages still not stored; reconnecting again"
            );
        }
        Some(delay)
    }

    /// Whether no message waits for its commit or for its PUBACK to be handed over.
    pub(super) fn is_empty(&self) -> bool {
        self.pending.is_empty() && self.ready.is_empty()
    }
}
