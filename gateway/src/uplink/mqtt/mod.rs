//! The MQTT uplink: pseudonymized FHIR published to a cloud broker at QoS 1.
//!
//! Each Bundle the delivery loop hands over is published as one message (`mode =
//! "bundle"`: the transaction Bundle as JSON) or as one message per Observation (`mode =
//! "observation"`: the Observation's JSON; Device resources are not sent in this mode), on
//! the configured topic, where `{gateway}` stands for the gateway's pseudonym (never its
//! configured id). In bundle mode a message is at most `max_message_bytes`: the delivery
//! loop makes Bundles no larger ([`Uplink::max_bundle_bytes`]).
//!
//! **Delete after delivery.** [`Uplink::deliver`] returns `Ok` only once the broker has
//! PUBACKed every message of the Bundle; the delivery loop then marks the rows delivered.
//! In observation mode the uplink has a window ([`Uplink::window`], two batches, at most
//! [`MAX_WINDOW`] messages): the delivery loop hands it rows while the window has room
//! and marks each row delivered as its PUBACK arrives (`stream.rs`), so a batch does not
//! wait for the last PUBACK of the one before.
//! A lost connection or a missing PUBACK within `ack_timeout` is a transient failure:
//! the connection is dropped (so no acknowledgement of an earlier attempt can be mistaken
//! for one of the retry) and the delivery loop retries with its capped backoff, on a new
//! connection. Delivery is at-least-once: a subscriber deduplicates by the Observations'
//! deterministic identifiers.
//!
//! **Connection.** A clean session (the outbox, not the broker, holds what is not yet
//! delivered), a client id derived from the gateway's pseudonym unless configured, and a
//! background task driving rumqttc's event loop that keeps the connection alive between
//! deliveries and reconnects with backoff (from 0.5 s, with jitter, capped at
//! [`config::MAX_RECONNECT_DELAY`] whatever `max_backoff_secs` is). A delivery that finds
//! the broker unreachable keeps that connection trying; after a connection lost during a
//! delivery a fresh one starts trying. Either way [`Uplink::reachable`] tells the delivery
//! loop when it is up, and the retry comes then, not at the end of the delivery loop's
//! (longer) backoff: delivery resumes within a few seconds of the broker being back.
//!
//! **Security.** `mqtts://` uses TLS (`crate::net::mqtt`, the one place an MQTT connection's
//! TLS and credentials are set up, for ingest and uplink alike): the broker's
//! certificate verified against the system's roots plus an optional `ca_file`, and a client
//! certificate for mutual TLS when configured. Plain `mqtt://` is accepted by the
//! configuration only to a loopback broker or with `allow_insecure` (then a warning at
//! every start). A handshake failure is reported with what to configure.

pub mod config;
mod stream;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rumqttc::{AsyncClient, Event, LastWill, MqttOptions, Outgoing, Packet, QoS};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::{
    bundle, AckedFuture, DeliveryError, DeliveryFuture, Heartbeat, ReachableFuture, Uplink,
    UplinkError,
};
use crate::fhir::Bundle;
use crate::net;
pub use config::{check_topic, parse_url, MqttUplinkSettings, PublishMode};
use stream::Stream;

/// What the background connection task reports to a delivery.
#[derive(Debug)]
enum Report {
    /// A publish went out with this packet id.
    Published(u16),
    /// The broker acknowledged this packet id.
    Acked(u16),
    /// The connection failed.
    Down(String),
}

struct Connection {
    client: AsyncClient,
    reports: mpsc::Receiver<Report>,
    connected: watch::Receiver<bool>,
    task: JoinHandle<()>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The MQTT uplink.
pub struct MqttUplink {
    settings: MqttUplinkSettings,
    topic: String,
    client_id: String,
    credentials: Option<(String, String)>,
    transport: rumqttc::Transport,
    connection: Option<Connection>,
    /// Observation mode: the messages sent and not yet acknowledged.
    stream: Stream,
    /// The status topic (the template resolved).
    status_topic: String,
    /// The last will: the `offline` status.
    will: Vec<u8>,
    /// The latest status message, published again at every connection.
    status: Arc<Mutex<Option<Vec<u8>>>>,
}

impl std::fmt::Debug for MqttUplink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MqttUplink")
            .field("name", &self.settings.name)
            .field("host", &self.settings.host)
            .field("port", &self.settings.port)
            .field("tls", &self.settings.tls.is_some())
            .finish_non_exhaustive()
    }
}

impl MqttUplink {
    /// Sets up the uplink for the gateway with pseudonym `gateway_pseudonym`: reads the
    /// credentials, prepares TLS, resolves the topic. Connects on the first delivery.
    pub fn new(settings: MqttUplinkSettings, gateway_pseudonym: &str) -> Result<Self, UplinkError> {
        let fail = |reason: String| UplinkError::Setup {
            uplink: settings.name.clone(),
            reason,
        };
        check_topic(&settings.topic).map_err(fail)?;
        let credentials =
            net::mqtt::credentials(settings.credentials_file.as_deref()).map_err(fail)?;
        let transport = net::mqtt::transport(settings.tls.as_ref()).map_err(fail)?;
        if settings.insecure {
            tracing::warn!(uplink = %settings.name, broker = %settings.host, "allow_insecure: observations go over plain mqtt:// to a broker that is not loopback");
        }
        let short: String = gateway_pseudonym.chars().take(16).collect();
        let offline = crate::health::heartbeat::StatusMessage::offline(gateway_pseudonym);
        Ok(Self {
            status_topic: settings
                .status_topic
                .replace("{gateway}", gateway_pseudonym),
            will: serde_json::to_vec(&offline).unwrap_or_default(),
            status: Arc::default(),
            topic: settings.topic.replace("{gateway}", gateway_pseudonym),
            client_id: settings
                .client_id
                .clone()
                .unwrap_or_else(|| format!("iomt-gateway-{short}")),
            credentials,
            transport,
            connection: None,
            stream: Stream::default(),
            settings,
        })
    }

    /// The topic messages are published on (the template resolved).
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// A new connection whose background task makes its first attempt after
    /// `first_delay` (after a lost connection: not at once, so that a broker that drops
    /// every connection is not hammered).
    fn connect(&self, first_delay: Duration) -> Connection {
        let s = &self.settings;
        let mut o = MqttOptions::new(&self.client_id, &s.host, s.port);
        o.set_clean_session(true)
            .set_keep_alive(s.keep_alive.max(Duration::from_secs(5)))
            .set_transport(self.transport.clone())
            .set_max_packet_size(256 << 20, 256 << 20);
        if let Some((u, p)) = &self.credentials {
            o.set_credentials(u.clone(), p.clone());
        }
        // Published, retained, by the broker when the connection ends without a goodbye
        // (the gateway killed, the power or the network gone).
        o.set_last_will(LastWill::new(
            &self.status_topic,
            self.will.clone(),
            QoS::AtLeastOnce,
            true,
        ));
        let n = self.unacknowledged();
        o.set_inflight(u16::try_from(n).unwrap_or(u16::MAX).max(1));
        let (client, mut eventloop) = AsyncClient::new(o, n + 8);
        // Each message waiting for its acknowledgement yields at most two reports; they
        // are all read before a delivery returns (observation mode: while the window is
        // full), so the task never waits long on a full queue.
        let (report_tx, reports) = mpsc::channel(2 * n + 16);
        let (connected_tx, connected) = watch::channel(false);
        let name = s.name.clone();
        let broker = format!("{}:{}", s.host, s.port);
        let mut backoff = iomt_drivers::backoff::Backoff::new(s.reconnect_initial, s.reconnect_max);
        let (status, status_topic, status_client) = (
            self.status.clone(),
            self.status_topic.clone(),
            client.clone(),
        );
        let task = tokio::spawn(async move {
            tokio::time::sleep(first_delay).await;
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        backoff.succeed();
                        connected_tx.send_replace(true);
                        tracing::info!(uplink = %name, broker = %broker, "connected to the MQTT broker");
                        // Online again: replaces the last will a lost connection left.
                        let latest = status.lock().ok().and_then(|s| s.clone());
                        if let Some(message) = latest {
                            let _ = status_client.try_publish(
                                &status_topic,
                                QoS::AtMostOnce,
                                true,
                                message,
                            );
                        }
                    }
                    // A status message (QoS 0, packet id 0): no delivery waits for it.
                    Ok(Event::Outgoing(Outgoing::Publish(0))) => {}
                    Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                        if report_tx.send(Report::Published(pkid)).await.is_err() {
                            return;
                        }
                    }
                    Ok(Event::Incoming(Packet::PubAck(ack))) => {
                        if report_tx.send(Report::Acked(ack.pkid)).await.is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        let was = connected_tx.send_replace(false);
                        let delay = backoff.fail_with(None, rand::random::<f64>());
                        let error = net::mqtt::describe_mqtt_error(&e);
                        if was || backoff.failures() == 1 {
                            tracing::warn!(uplink = %name, broker = %broker, error = %error, "MQTT uplink: broker unreachable or connection lost; reconnecting with backoff");
                        } else {
                            tracing::debug!(uplink = %name, error = %error, "MQTT uplink: broker still unreachable");
                        }
                        let _ = report_tx.try_send(Report::Down(error));
                        tokio::time::sleep(delay).await;
                    }
                }
            }
        });
        Connection {
            client,
            reports,
            connected,
            task,
        }
    }

    fn messages(&self, bundle: &Bundle<'_>) -> Result<Vec<Vec<u8>>, DeliveryError> {
        let encode = |e: serde_json::Error| DeliveryError::Transient {
            reason: format!("cannot encode a message: {e}"),
            retry_after: None,
        };
        Ok(match self.settings.mode {
            PublishMode::Bundle => {
                // Sized once: grown by doubling, the buffer of a large Bundle would take
                // up to twice its size, and copies on the way.
                let mut json = Vec::with_capacity(bundle::encoded_len(bundle));
                serde_json::to_writer(&mut json, bundle).map_err(encode)?;
                vec![json]
            }
            PublishMode::Observation => bundle
                .entry
                .iter()
                .filter(|e| e.request.url == "Observation")
                .map(|e| e.resource.get().as_bytes().to_vec())
                .collect(),
        })
    }

    /// Most messages waiting for their acknowledgement at once, which sizes rumqttc's
    /// in-flight state and request queue and the report queue: one in bundle mode (one
    /// message per delivery), the window in observation mode (two batches, at most
    /// [`MAX_WINDOW`] messages, so that one is fetched and sent while the other is
    /// acknowledged).
    fn unacknowledged(&self) -> usize {
        match self.settings.mode {
            PublishMode::Bundle => 1,
            PublishMode::Observation => self
                .settings
                .batch_size
                .max(1)
                .saturating_mul(2)
                .min(MAX_WINDOW),
        }
    }

    async fn publish_all(&mut self, messages: Vec<Vec<u8>>) -> Result<(), Failure> {
        let deadline = tokio::time::Instant::now() + self.settings.ack_timeout;
        self.ready(deadline).await?;
        let topic = self.topic.clone();
        let Some(conn) = self.connection.as_mut() else {
            return Err(Failure::Unreachable("no connection".into()));
        };
        let total = messages.len();
        let mut outstanding: HashSet<u16> = HashSet::new();
        let (mut published, mut acked) = (0usize, 0usize);
        let mut to_send = messages.into_iter();
        let mut next = to_send.next();
        while acked < total {
            // Publishing waits when rumqttc's request queue is full; reports are read
            // meanwhile, so the connection task never waits on us.
            let publish = async {
                match next.take() {
                    Some(m) => Some(
                        conn.client
                            .publish(topic.as_str(), QoS::AtLeastOnce, false, m)
                            .await,
                    ),
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                r = conn.reports.recv() => match r {
                    Some(Report::Published(pkid)) => {
                        published += 1;
                        outstanding.insert(pkid);
                    }
                    Some(Report::Acked(pkid)) => {
                        if outstanding.remove(&pkid) {
                            acked += 1;
                        }
                    }
                    Some(Report::Down(e)) => return Err(Failure::Lost(format!("connection lost: {e}"))),
                    None => return Err(Failure::Other("the connection task stopped".into())),
                },
                sent = publish => {
                    if let Some(Err(e)) = sent {
                        return Err(Failure::Other(format!("cannot publish: {e}")));
                    }
                    next = to_send.next();
                }
                _ = tokio::time::sleep_until(deadline) => {
                    return Err(Failure::Other(format!(
                        "{acked} of {total} messages acknowledged ({published} sent) within {:?}",
                        self.settings.ack_timeout
                    )));
                }
            }
        }
        Ok(())
    }

    /// What a failure means for the connection, and for the delivery loop. Whatever
    /// waited for its acknowledgement is lost.
    fn fail(&mut self, failure: Failure) -> DeliveryError {
        self.stream = Stream::default();
        let reason = match failure {
            // The connection keeps trying (capped backoff with jitter); the retry comes
            // once it is up (`reachable`).
            Failure::Unreachable(reason) => reason,
            // A fresh connection for the retry, so that nothing of this attempt lingers,
            // trying from now on.
            Failure::Lost(reason) => {
                self.connection = Some(self.connect(self.settings.reconnect_initial));
                reason
            }
            // Connected but not acknowledged: a fresh connection at the delivery loop's
            // next attempt, timed by its backoff.
            Failure::Other(reason) => {
                self.connection = None;
                reason
            }
        };
        DeliveryError::Transient {
            reason,
            retry_after: None,
        }
    }

    /// Publishing with nothing waiting for its acknowledgement, or from a failure:
    /// connects if there is no connection, waits for it until `deadline`.
    async fn ready(&mut self, deadline: tokio::time::Instant) -> Result<(), Failure> {
        if self.connection.is_none() {
            self.connection = Some(self.connect(Duration::ZERO));
        }
        let Some(conn) = self.connection.as_mut() else {
            return Err(Failure::Unreachable("no connection".into()));
        };
        // Reports of an idle period (a connection loss since recovered) are stale.
        let mut last_down = None;
        while let Ok(r) = conn.reports.try_recv() {
            if let Report::Down(e) = r {
                last_down = Some(e);
            }
        }
        let mut connected = conn.connected.clone();
        let up = tokio::time::timeout_at(deadline, connected.wait_for(|c| *c))
            .await
            .is_ok_and(|r| r.is_ok());
        if !up {
            // The attempts made while waiting say why.
            while let Ok(r) = conn.reports.try_recv() {
                if let Report::Down(e) = r {
                    last_down = Some(e);
                }
            }
            return Err(Failure::Unreachable(format!(
                "cannot connect to the broker{}",
                last_down.map(|e| format!(": {e}")).unwrap_or_default()
            )));
        }
        Ok(())
    }
}

impl Uplink for MqttUplink {
    fn name(&self) -> &str {
        &self.settings.name
    }

    fn deliver<'a>(&'a mut self, bundle: &'a Bundle<'_>) -> DeliveryFuture<'a> {
        Box::pin(async move {
            let messages = self.messages(bundle)?;
            if messages.is_empty() {
                return Ok(());
            }
            let count = messages.len();
            match self.publish_all(messages).await {
                Ok(()) => {
                    tracing::debug!(uplink = %self.settings.name, messages = count, "published and acknowledged");
                    Ok(())
                }
                Err(failure) => Err(self.fail(failure)),
            }
        })
    }

    fn window(&self) -> Option<usize> {
        (self.settings.mode == PublishMode::Observation).then(|| self.unacknowledged())
    }

    fn max_bundle_bytes(&self) -> Option<usize> {
        (self.settings.mode == PublishMode::Bundle).then_some(self.settings.max_message_bytes)
    }

    fn send<'a>(&'a mut self, bundle: &'a Bundle<'_>) -> DeliveryFuture<'a> {
        Box::pin(async move {
            let messages = self.messages(bundle)?;
            self.send_window(messages).await.map_err(|f| self.fail(f))
        })
    }

    fn acked(&mut self) -> AckedFuture<'_> {
        Box::pin(async move { self.acked_window().await.map_err(|f| self.fail(f)) })
    }

    fn heartbeat(&self) -> Heartbeat {
        Heartbeat::Status
    }

    /// Keeps `message` as the status published at every connection, and publishes it
    /// (QoS 0, retained: no PUBACK to wait for, and a lost one is replaced by the next
    /// heartbeat or connection). Connects first if need be, waiting at most
    /// `timeout_secs`; without a connection by then it fails (the connection publishes it
    /// when it comes up).
    fn status<'a>(&'a mut self, message: &'a [u8]) -> DeliveryFuture<'a> {
        Box::pin(async move {
            if let Ok(mut s) = self.status.lock() {
                *s = Some(message.to_vec());
            }
            if self.connection.is_none() {
                self.connection = Some(self.connect(Duration::ZERO));
            }
            let Some(conn) = self.connection.as_ref() else {
                return Ok(());
            };
            let timeout = self.settings.ack_timeout;
            let not_now = |what: &str| DeliveryError::Transient {
                reason: format!("status not published: {what}; it goes out once connected"),
                retry_after: None,
            };
            let mut connected = conn.connected.clone();
            match tokio::time::timeout(timeout, connected.wait_for(|c| *c)).await {
                Ok(Ok(_)) => {}
                _ => return Err(not_now("not connected to the broker")),
            }
            let publish = conn.client.publish(
                self.status_topic.as_str(),
                QoS::AtMostOnce,
                true,
                message.to_vec(),
            );
            match tokio::time::timeout(timeout, publish).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(not_now(&format!("cannot publish: {e}"))),
                Err(_) => Err(not_now("the request queue stayed full")),
            }
        })
    }

    fn reachable(&mut self) -> ReachableFuture<'_> {
        let connected = self.connection.as_ref().map(|c| c.connected.clone());
        Box::pin(async move {
            // Only a connection that is down now can come back.
            if let Some(mut c) = connected.filter(|c| !*c.borrow()) {
                if c.wait_for(|up| *up).await.is_ok() {
                    return;
                }
            }
            std::future::pending().await
        })
    }
}

/// The most Observations waiting for their PUBACK at once in observation mode, whatever
/// `batch_size` is: enough to keep a link busy (at 25,000 messages a second, a PUBACK may
/// take 20 ms), while the messages held for a resend and the rows fetched for them stay
/// bounded (two batches of 1000 were about 8 MB at the peak of the round-trip benchmark).
pub const MAX_WINDOW: usize = 512;

/// Why publishing failed, for what to do with the connection.
#[derive(Debug)]
enum Failure {
    /// The broker could not be reached: the connection keeps trying.
    Unreachable(String),
    /// The connection was lost during the delivery.
    Lost(String),
    /// Anything else (no acknowledgement in time, the client closed).
    Other(String),
}

#[cfg(test)]
mod tests;
