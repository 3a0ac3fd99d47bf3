//! The MQTT ingest driver: readings published as JSON to a (usually local) broker, through
//! `rumqttc`.
//!
//! **Session.** The driver connects with a stable client id and a persistent session
//! (clean session off) and subscribes at QoS 1 to the topic filter of every MQTT profile,
//! so the broker keeps what is published while the gateway is down or restarting and
//! delivers it when the gateway is back.
//!
//! **Acknowledge after commit.** Acknowledgements are manual. A message is decoded with its
//! profile's [`JsonDecoder`] into readings, each sent with
//! [`send_acked`](crate::ReadingSender::send_acked); its PUBACK goes to the broker only once
//! every reading of the message is committed to the outbox. A message that does not decode
//! (not JSON, no matching field, a wrong type, a bad timestamp, over the size limit) goes to
//! the gateway's dead letters through the [`RejectSender`], and is acknowledged once that is
//! committed: a bad message is kept, never redelivered forever, and never stops the driver.
//! PUBACKs are sent in the order the messages arrived (MQTT 3.1.1, 4.6): the driver's loop
//! keeps the messages waiting for their commit, oldest first, and writes the PUBACKs of
//! those committed straight to the connection between polls of rumqttc's event loop, all
//! that are ready with one flush (`acks.rs` says why not through rumqttc's client). At
//! most `max_in_flight` messages are owed a PUBACK (waiting for their commit, or for their
//! PUBACK to be written): with that many, the driver stops polling rumqttc's event loop,
//! so nothing more is read from the socket until a commit frees room, and TCP holds the
//! broker back (backpressure: a slow outbox slows the broker's deliveries). It also bounds
//! what the broker delivers again, so stores twice, after a crash. The broker's own
//! in-flight window (mosquitto's `max_inflight_messages`) is not relied on: mosquitto 2.0.11 lets more
//! unacknowledged messages out than it once PUBACKs flow. When rumqttc already holds a
//! message read beyond the bound, a warning says the broker's window is the larger.
//! If the gateway dies between receiving a message and committing it, the message was not
//! acknowledged and the broker delivers it again to the next session.
//!
//! **Failed commits.** A message whose commit failed (the outbox cannot write: a full
//! disk, a damaged database) gets no PUBACK; the broker holds it in its in-flight window
//! and sends it again only to a new connection. So after a failed commit the driver takes
//! no new message (those it receives meanwhile are not acknowledged either), waits until
//! every message handed over is settled and every PUBACK written, drops the connection and
//! reconnects after a delay growing with each consecutive failure ([`Backoff`] between the
//! reconnect settings), logging a warning once per episode and an info line when messages
//! are stored again. Intake resumes by itself once the outbox can commit, and such a
//! reconnect stores no message twice: every PUBACK due is written before it, and the
//! messages rumqttc read but the driver did not take are dropped with the connection.
//!
//! **Size limits.** A payload over the limit (the smaller of `[mqtt] max_payload_bytes`
//! and the profile's `max_payload`) is refused into the dead letters, keeping its first
//! bytes up to the limit and its size, and is acknowledged once that is committed. This
//! holds for messages far larger than the limit too: the driver reads packets up to
//! [`read_limit`] (at least [`OVERSIZED_READ_LIMIT`], 64 MiB; one such message in memory at
//! a time, its payload dropped once the cut copy is handed over). Only larger packets
//! cannot be read (rumqttc drops the connection and the broker sends the message again on
//! every reconnect, an error logged with its size): the broker must refuse them
//! (`message_size_limit` in mosquitto.conf, which has no limit by default).
//!
//! **Reconnect.** A lost connection is logged (warn, once per outage) and retried with
//! capped exponential [`Backoff`]; a reconnection is an info line.
//!
//! **Logs.** Never a payload or a value. A refused message is a warning with its profile,
//! topic filter and reason; its full topic (which may name a device) is logged at debug
//! only and stored sealed in the dead letter.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use rumqttc::{
    AsyncClient, ConnectReturnCode, Event, MqttOptions, Packet, Publish, QoS, SubscribeFilter,
};
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::decode::json::JsonDecoder;
use crate::decode::DecodeError;
use crate::driver::{Driver, DriverError, DriverFuture, ReadingSender, RejectSender, Rejected};
use crate::reading::{DeviceIdentity, Transport};

use acks::{Ack, Acks, Pending, Wait};

mod acks;

/// One MQTT profile's subscription: its topic filter and how its payloads decode.
#[derive(Debug, Clone)]
pub struct Subscription {
    /// The profile id.
    pub profile: String,
    /// The manufacturer, for the device identity.
    pub manufacturer: String,
    /// The model, for the device identity.
    pub model: String,
    /// The topic filter (`+` and `#` wildcards).
    pub filter: String,
    /// The payload decoder.
    pub decoder: JsonDecoder,
    /// The topic level (0-based) that holds the device id, when the payload has none.
    pub device_id_level: Option<usize>,
}

/// The broker's credentials.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// User name.
    pub username: String,
    /// Password.
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// TLS for the connection to the broker: a ready rustls client configuration (the
/// gateway builds it: roots, private CA, client certificate).
#[derive(Clone)]
pub struct MqttTls(pub rumqttc::TlsConfiguration);

impl std::fmt::Debug for MqttTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MqttTls(..)")
    }
}

/// The MQTT driver's configuration.
#[derive(Debug, Clone)]
pub struct MqttConfig {
    /// Broker host name or address.
    pub host: String,
    /// Broker port.
    pub port: u16,
    /// TLS to the broker; `None`: plain TCP.
    pub tls: Option<MqttTls>,
    /// The stable client id of the persistent session.
    pub client_id: String,
    /// User name and password, if the broker needs them.
    pub credentials: Option<Credentials>,
    /// MQTT keep-alive interval.
    pub keep_alive: Duration,
    /// The largest payload accepted, in bytes (each profile may set a smaller one).
    pub max_payload: usize,
    /// The most messages owed a PUBACK (waiting for their commit or for their PUBACK)
    /// before the driver stops reading.
    pub max_in_flight: usize,
    /// First reconnect delay.
    pub reconnect_initial: Duration,
    /// Longest reconnect delay.
    pub reconnect_max: Duration,
    /// The subscriptions (at least one).
    pub subscriptions: Vec<Subscription>,
    /// Where refused messages go (the dead letters).
    pub rejects: RejectSender,
}

/// The packet size an MQTT message with a payload within the limit `max_payload` stays
/// under, with room for its topic: max(8 × `max_payload`, 1 MiB).
pub fn protocol_limit(max_payload: usize) -> usize {
    max_payload.saturating_mul(8).max(1 << 20)
}

/// How large a packet the driver reads at least, whatever its payload limit: an
/// oversized message is read once, in full, only to keep its first bytes in the dead
/// letters and acknowledge it. The most memory one message takes.
pub const OVERSIZED_READ_LIMIT: usize = 64 << 20;

/// The largest MQTT packet the driver reads for a payload limit: the larger of
/// [`protocol_limit`] and [`OVERSIZED_READ_LIMIT`]. A larger packet cannot be read: it
/// drops the connection, and the broker, delivering it again on every reconnect, must be
/// told to refuse it (`message_size_limit` in mosquitto.conf, below this limit).
pub fn read_limit(max_payload: usize) -> usize {
    protocol_limit(max_payload).max(OVERSIZED_READ_LIMIT)
}

/// Whether `topic` matches the MQTT topic `filter` (`+` one level, `#` the rest).
pub fn topic_matches(filter: &str, topic: &str) -> bool {
    // Wildcards at the first level do not match `$SYS`-style topics.
    let system_ok = !topic.starts_with('$') || filter.starts_with('$');
    let mut t = topic.split('/');
    for f in filter.split('/') {
        match (f, t.next()) {
            ("#", _) => return system_ok,
            ("+", Some(_)) => {}
            (f, Some(level)) if f == level => {}
            _ => return false,
        }
    }
    system_ok && t.next().is_none()
}

/// Counters of one run, logged when the driver stops.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct MqttStats {
    /// Messages received.
    pub messages: u64,
    /// Readings sent to the pipeline.
    pub readings: u64,
    /// Messages refused into the dead letters.
    pub rejected: u64,
    /// Connections established.
    pub connections: u64,
}

/// The MQTT ingest driver.
#[derive(Debug)]
pub struct MqttDriver {
    config: MqttConfig,
}

impl MqttDriver {
    /// Checks the configuration and builds the driver.
    pub fn new(config: MqttConfig) -> Result<Self, DriverError> {
        let fail = |reason: String| DriverError::Config {
            driver: "mqtt".into(),
            reason,
        };
        if config.subscriptions.is_empty() {
            return Err(fail("no MQTT profile to subscribe to".into()));
        }
        if config.client_id.is_empty() {
            return Err(fail(
                "the client id must not be empty (the persistent session is keyed by it)".into(),
            ));
        }
        Ok(Self { config })
    }
}

impl Driver for MqttDriver {
    fn name(&self) -> &str {
        "mqtt"
    }

    fn run(self: Box<Self>, tx: ReadingSender, cancel: CancellationToken) -> DriverFuture {
        Box::pin(async move {
            let stats = run(self.config, tx, cancel).await;
            tracing::info!(
                messages = stats.messages,
                readings = stats.readings,
                rejected = stats.rejected,
                connections = stats.connections,
                "mqtt driver stopped"
            );
            Ok(())
        })
    }
}

fn options(config: &MqttConfig) -> MqttOptions {
    let mut o = MqttOptions::new(&config.client_id, &config.host, config.port);
    o.set_clean_session(false)
        .set_manual_acks(true)
        .set_keep_alive(config.keep_alive.max(Duration::from_secs(5)));
    o.set_max_packet_size(
        read_limit(config.max_payload),
        protocol_limit(config.max_payload),
    );
    if let Some(c) = &config.credentials {
        o.set_credentials(c.username.clone(), c.password.clone());
    }
    if let Some(tls) = &config.tls {
        o.set_transport(rumqttc::Transport::tls_with_config(tls.0.clone()));
    }
    o
}

struct Session<'a> {
    config: &'a MqttConfig,
    tx: &'a ReadingSender,
    devices: HashMap<(usize, String), Arc<DeviceIdentity>>,
    stats: MqttStats,
}

/// The most device identities remembered (a bound on memory with many devices).
const MAX_KNOWN_DEVICES: usize = 10_000;

impl Session<'_> {
    /// Decodes one message and hands its readings (or itself, refused) over. Returns what
    /// its PUBACK waits for, or `None` when the gateway is shutting down (a channel is
    /// closed).
    async fn handle(&mut self, publish: Publish) -> Option<Pending> {
        self.stats.messages += 1;
        let received_at = Utc::now();
        let topic = publish.topic.clone();
        let found = self
            .config
            .subscriptions
            .iter()
            .enumerate()
            .find(|(_, s)| topic_matches(&s.filter, &topic));
        let outcome = match found {
            None => Err((
                None,
                "no MQTT profile subscribes to this topic (a subscription left in the broker's session by an earlier configuration?)".to_string(),
            )),
            Some((i, sub)) => self
                .decode(i, sub, &topic, &publish.payload, received_at)
                .map_err(|e| (Some(sub), e.to_string())),
        };
        let wait = match outcome {
            Ok(readings) => {
                let mut rxs = Vec::with_capacity(readings.len());
                for r in readings {
                    match self.tx.send_acked(r).await {
                        Ok(rx) => rxs.push(rx),
                        Err(_) => return None,
                    }
                    self.stats.readings += 1;
                }
                tracing::debug!(topic = %topic, readings = rxs.len(), "MQTT message handed to the pipeline; PUBACK after the commit");
                Wait::Readings(rxs)
            }
            Err((sub, reason)) => {
                self.stats.rejected += 1;
                let limit = sub
                    .map(|s| s.decoder.max_payload.min(self.config.max_payload))
                    .unwrap_or(self.config.max_payload);
                tracing::warn!(
                    profile = sub.map(|s| s.profile.as_str()).unwrap_or("-"),
                    filter = sub.map(|s| s.filter.as_str()).unwrap_or("-"),
                    reason = %reason,
                    "MQTT message refused; kept in the dead letters"
                );
                tracing::debug!(topic = %topic, reason = %reason, "MQTT message refused");
                let size = publish.payload.len();
                let rejected = Rejected {
                    transport: Transport::Mqtt,
                    source: topic,
                    reason,
                    payload: publish.payload[..size.min(limit)].to_vec(),
                    size,
                    received_at,
                };
                match self.config.rejects.send_acked(rejected).await {
                    Ok(rx) => Wait::DeadLetter(rx),
                    Err(_) => return None,
                }
            }
        };
        // Only what the PUBACK needs is kept while the commit is awaited.
        Some(Pending {
            ack: Ack::of(&publish),
            wait,
            failed: false,
        })
    }

    fn decode(
        &mut self,
        index: usize,
        sub: &Subscription,
        topic: &str,
        payload: &[u8],
        received_at: chrono::DateTime<Utc>,
    ) -> Result<Vec<crate::Reading>, DecodeError> {
        let limit = sub.decoder.max_payload.min(self.config.max_payload);
        if payload.len() > limit {
            return Err(DecodeError::TooLarge {
                size: payload.len(),
                limit,
            });
        }
        let value = sub.decoder.parse(payload)?;
        let id = sub
            .decoder
            .device_id(&value)
            .or_else(|| {
                sub.device_id_level
                    .and_then(|l| topic.split('/').nth(l))
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
            })
            .unwrap_or_else(|| topic.to_string());
        if id.len() > crate::reading::MAX_DEVICE_ID_BYTES {
            return Err(DecodeError::DeviceIdTooLong {
                len: id.len(),
                limit: crate::reading::MAX_DEVICE_ID_BYTES,
            });
        }
        if self.devices.len() >= MAX_KNOWN_DEVICES {
            self.devices.clear();
        }
        let device = self
            .devices
            .entry((index, id.clone()))
            .or_insert_with(|| {
                Arc::new(DeviceIdentity {
                    revisions: Default::default(),
                    profile: sub.profile.clone(),
                    transport: Transport::Mqtt,
                    address: id,
                    serial_number: None,
                    manufacturer: Some(sub.manufacturer.clone()),
                    model: Some(sub.model.clone()),
                })
            })
            .clone();
        sub.decoder.decode_all(&value, device, received_at)
    }
}

/// Whether rumqttc holds a message it read beyond those the driver took: with the driver
/// at `max_in_flight`, the broker has more unacknowledged messages out than that.
fn broker_sent_more(eventloop: &rumqttc::EventLoop) -> bool {
    eventloop
        .state
        .events
        .iter()
        .any(|e| matches!(e, Event::Incoming(Packet::Publish(_))))
}

async fn run(config: MqttConfig, tx: ReadingSender, cancel: CancellationToken) -> MqttStats {
    let capacity = config.max_in_flight.max(1);
    let (client, mut eventloop) = AsyncClient::new(options(&config), capacity + 8);
    let filters: Vec<SubscribeFilter> = config
        .subscriptions
        .iter()
        .map(|s| SubscribeFilter::new(s.filter.clone(), QoS::AtLeastOnce))
        .collect();
    let mut backoff = Backoff::new(config.reconnect_initial, config.reconnect_max);
    let mut session = Session {
        config: &config,
        tx: &tx,
        devices: HashMap::new(),
        stats: MqttStats::default(),
    };
    let mut acks = Acks::new(config.reconnect_initial, config.reconnect_max);
    // The size of a message too large to read, once logged.
    let mut unreadable: Option<usize> = None;
    let broker = format!("{}:{}", config.host, config.port);
    let mut connected = false;
    loop {
        // The PUBACKs of what is committed first, all at once (see `acks`).
        let written = tokio::select! {
            _ = cancel.cancelled() => break,
            w = acks.write(&mut eventloop, &client) => w,
        };
        let event = if let Err(e) = written {
            // The connection failed under the PUBACKs: it is dropped as the event loop
            // drops a failed one, and the error handled as its own.
            eventloop.clean();
            Err(e)
        } else {
            // The bound: with `max_in_flight` messages the broker holds as unacknowledged
            // (waiting for their commit, or for their PUBACK to be written), the event loop is
            // not polled, so nothing more is read from the socket until a commit frees room
            // (TCP holds the broker back). Each poll yields at most one message (rumqttc
            // returns what it has buffered before reading again). Without a connection it is
            // polled, to connect.
            let full = acks.outstanding() >= capacity && eventloop.network.is_some();
            if full && !acks.warned && broker_sent_more(&eventloop) {
                acks.warned = true;
                tracing::warn!(broker = %broker, waiting = acks.outstanding(), max_in_flight = capacity, "the broker sends more unacknowledged messages than mqtt.max_in_flight; the gateway stops reading until commits free room (lower the broker's in-flight window to max_in_flight; mosquitto: max_inflight_messages)");
            }
            if let Some(delay) = acks.resync_due() {
                // A commit failed: the broker holds those messages as in flight and sends
                // them again only to a new connection.
                eventloop.clean();
                acks.connection_gone(&mut eventloop);
                connected = false;
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = tokio::time::sleep(delay) => continue,
                }
            }
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = acks.next_committed() => continue,
                e = eventloop.poll(), if !full => e,
            }
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                if ack.code != ConnectReturnCode::Success {
                    tracing::warn!(broker = %broker, code = ?ack.code, "MQTT broker refused the connection");
                    continue;
                }
                backoff.succeed();
                connected = true;
                session.stats.connections += 1;
                tracing::info!(broker = %broker, session_present = ack.session_present, subscriptions = filters.len(), "connected to the MQTT broker");
                if client.try_subscribe_many(filters.clone()).is_err() {
                    tracing::error!(broker = %broker, "cannot subscribe: the client is closed");
                    break;
                }
            }
            Ok(Event::Incoming(Packet::SubAck(ack))) => {
                if ack
                    .return_codes
                    .iter()
                    .any(|c| matches!(c, rumqttc::SubscribeReasonCode::Failure))
                {
                    tracing::error!(broker = %broker, "the MQTT broker refused a subscription (check its ACL for the profiles' topic filters)");
                }
            }
            Ok(Event::Incoming(Packet::Publish(p))) if acks.resyncing() => {
                // Not acknowledged: the broker delivers it again after the reconnect.
                tracing::debug!(topic = %p.topic, "MQTT message left for the next connection (a commit failed)");
            }
            Ok(Event::Outgoing(rumqttc::Outgoing::PubAck(_) | rumqttc::Outgoing::PubRec(_))) => {
                acks.written()
            }
            Ok(Event::Incoming(Packet::Publish(p))) => match session.handle(p).await {
                Some(pending) => acks.pending.push_back(pending),
                None => break,
            },
            Ok(_) => {}
            Err(e) => {
                acks.connection_gone(&mut eventloop);
                if let rumqttc::ConnectionError::MqttState(rumqttc::StateError::Deserialization(
                    rumqttc::Error::PayloadSizeLimitExceeded(size),
                )) = &e
                {
                    if unreadable != Some(*size) {
                        unreadable = Some(*size);
                        tracing::error!(broker = %broker, size = *size, limit = read_limit(config.max_payload), "an MQTT message is larger than the gateway can read; the broker delivers it again on every reconnect and nothing behind it is read: set mosquitto's message_size_limit below the limit and restart the broker");
                    }
                }
                let delay = backoff.fail();
                let error = crate::net::describe_mqtt_error(&e);
                if connected || backoff.failures() == 1 {
                    tracing::warn!(broker = %broker, error = %error, "MQTT broker unreachable or connection lost; reconnecting with backoff");
                } else {
                    tracing::debug!(broker = %broker, error = %error, delay_ms = delay.as_millis() as u64, "MQTT broker still unreachable");
                }
                connected = false;
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
    // Drain: the messages handed over get their PUBACK once committed. New messages are
    // no longer taken; the broker keeps them for the next session.
    let stats = session.stats;
    drop(session);
    drop(tx);
    let deadline = tokio::time::sleep(Duration::from_secs(10));
    tokio::pin!(deadline);
    let mut disconnecting = false;
    loop {
        if acks.write(&mut eventloop, &client).await.is_err() {
            // The connection is gone: the broker delivers what is not acknowledged again.
            break;
        }
        if acks.is_empty() && !disconnecting {
            // Behind any acknowledgement still queued in rumqttc's client.
            disconnecting = client.try_disconnect().is_ok();
        }
        tokio::select! {
            _ = &mut deadline => break,
            _ = acks.next_committed() => {}
            e = eventloop.poll() => match e {
                Err(_) => break,
                Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) if disconnecting => break,
                Ok(_) => {}
            },
        }
    }
    stats
}

#[cfg(test)]
mod tests;
