//! Observation mode's window: each Observation published as its own QoS 1 message
//! without waiting for the acknowledgements of those before
//! ([`Uplink::send`](crate::uplink::Uplink::send)), and the acknowledgements reported
//! oldest first as they come ([`Uplink::acked`](crate::uplink::Uplink::acked)), so the
//! delivery loop marks each row delivered on its PUBACK and fetches more while the window
//! has room.
//!
//! The messages are tracked by packet id in the order they went out (rumqttc sends them
//! in the order they were published); a PUBACK marks the oldest message with its packet
//! id, and the messages acknowledged at the head of the queue are reported. Brokers
//! acknowledge in order (MQTT 3.1.1, 4.6), so this is the usual case; an acknowledgement
//! out of order waits for those before it. When no acknowledgement comes for
//! `timeout_secs` while messages wait, the connection is dropped and the delivery loop
//! retries from the oldest row not acknowledged.

use std::collections::VecDeque;

use rumqttc::QoS;
use tokio::time::Instant;

use super::{Failure, MqttUplink, Report};

/// The messages of the window.
#[derive(Debug, Default)]
pub(super) struct Stream {
    /// Handed to the client, not yet gone out.
    queued: usize,
    /// Gone out, oldest first: packet id and whether the broker acknowledged it.
    sent: VecDeque<(u16, bool)>,
    /// Acknowledged at the head of the queue and not yet reported.
    acked: usize,
    /// Since when the oldest message waits (the last acknowledgement or the first
    /// publish after an empty window).
    since: Option<Instant>,
}

impl Stream {
    fn waiting(&self) -> bool {
        self.queued > 0 || !self.sent.is_empty()
    }

    /// Takes one report of the connection task.
    fn take(&mut self, report: Option<Report>) -> Result<(), Failure> {
        match report {
            Some(Report::Published(pkid)) => {
                self.queued = self.queued.saturating_sub(1);
                self.sent.push_back((pkid, false));
            }
            Some(Report::Acked(pkid)) => {
                if let Some(m) = self.sent.iter_mut().find(|(p, acked)| *p == pkid && !acked) {
                    m.1 = true;
                }
                while self.sent.front().is_some_and(|(_, acked)| *acked) {
                    self.sent.pop_front();
                    self.acked += 1;
                    self.since = Some(Instant::now());
                }
            }
            Some(Report::Down(e)) => return Err(Failure::Lost(format!("connection lost: {e}"))),
            None => return Err(Failure::Other("the connection task stopped".into())),
        }
        Ok(())
    }
}

impl MqttUplink {
    /// Publishes `messages` in order, reading the connection's reports meanwhile; returns
    /// once the client has taken them all.
    pub(super) async fn send_window(&mut self, messages: Vec<Vec<u8>>) -> Result<(), Failure> {
        if messages.is_empty() {
            return Ok(());
        }
        if !self.stream.waiting() {
            self.stream = Stream::default();
            self.ready(Instant::now() + self.settings.ack_timeout)
                .await?;
            self.stream.since = Some(Instant::now());
        }
        let topic = self.topic.clone();
        let Some(conn) = self.connection.as_mut() else {
            return Err(Failure::Unreachable("no connection".into()));
        };
        let stream = &mut self.stream;
        for m in messages {
            let mut publish =
                std::pin::pin!(conn
                    .client
                    .publish(topic.as_str(), QoS::AtLeastOnce, false, m));
            // Publishing waits when rumqttc's request queue is full; reports are read
            // meanwhile, so the connection task never waits on us.
            loop {
                tokio::select! {
                    biased;
                    r = conn.reports.recv() => stream.take(r)?,
                    sent = &mut publish => {
                        sent.map_err(|e| Failure::Other(format!("cannot publish: {e}")))?;
                        stream.queued += 1;
                        break;
                    }
                }
            }
        }
        Ok(())
    }

    /// Waits for the next acknowledgements; returns how many messages, oldest first, were
    /// acknowledged since the last call (at least one).
    pub(super) async fn acked_window(&mut self) -> Result<usize, Failure> {
        let timeout = self.settings.ack_timeout;
        let stream = &mut self.stream;
        if stream.acked == 0 && !stream.waiting() {
            return std::future::pending().await;
        }
        let Some(conn) = self.connection.as_mut() else {
            return Err(Failure::Other("no connection".into()));
        };
        while stream.acked == 0 {
            let since = stream.since.unwrap_or_else(Instant::now);
            tokio::select! {
                biased;
                r = conn.reports.recv() => stream.take(r)?,
                _ = tokio::time::sleep_until(since + timeout) => {
                    return Err(Failure::Other(format!(
                        "no acknowledgement within {timeout:?} ({} messages waiting)",
                        stream.sent.len() + stream.queued
                    )));
                }
            }
        }
        // What else has come meanwhile, so that one call reports a run of them.
        while let Ok(r) = conn.reports.try_recv() {
            stream.take(Some(r))?;
        }
        Ok(std::mem::take(&mut stream.acked))
    }
}
