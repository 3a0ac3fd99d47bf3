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
//! PUBACKs are sent in the order the messages arrived (MQTT 3.1.1, 4.6), by one acker task
//! working through a bounded queue of messages waiting for their commit; when
//! `max_in_flight` messages wait, the driver stops reading from the broker (backpressure).
//! If the gateway dies between receiving a message and committing it, the message was not
//! acknowledged and the broker delivers it again to the next session.
//!
//! **Size limits.** A payload over the limit (the smaller of `[mqtt] max_payload_bytes`
//! and the profile's `max_payload`) is refused into the dead letters, keeping its first
//! bytes up to the limit. MQTT packets larger than [`protocol_limit`] cannot be read at
//! all (rumqttc drops the connection); the broker must refuse them
//! (`message_size_limit` in mosquitto.conf).
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
    AsyncClient, ConnectReturnCode, Event, EventLoop, MqttOptions, Packet, Publish, QoS,
    SubscribeFilter,
};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::decode::json::JsonDecoder;
use crate::decode::DecodeError;
use crate::driver::{
    Committed, Driver, DriverError, DriverFuture, ReadingSender, RejectSender, Rejected,
};
use crate::reading::{DeviceIdentity, Transport};
use crate::serial::Backoff;

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

/// The MQTT driver's configuration.
#[derive(Debug, Clone)]
pub struct MqttConfig {
    /// Broker host name or address.
    pub host: String,
    /// Broker port.
    pub port: u16,
    /// The stable client id of the persistent session.
    pub client_id: String,
    /// User name and password, if the broker needs them.
    pub credentials: Option<Credentials>,
    /// MQTT keep-alive interval.
    pub keep_alive: Duration,
    /// The largest payload accepted, in bytes (each profile may set a smaller one).
    pub max_payload: usize,
    /// The most messages waiting for their commit before the driver stops reading.
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

/// The largest MQTT packet the driver can read for a payload limit: packets above it drop
/// the connection (configure the broker's `message_size_limit` below it).
pub fn protocol_limit(max_payload: usize) -> usize {
    max_payload.saturating_mul(8).max(1 << 20)
}

/// Whether `topic` matches the MQTT topic `filter` (`+` one level, `#` the rest).
pub fn topic_matches(filter: &str, topic: &str) -> bool {
    let mut t = topic.split('/');
    for f in filter.split('/') {
        match (f, t.next()) {
            ("#", _) => return !(topic.starts_with('$') && !filter.starts_with('$')),
            ("+", Some(_)) => {}
            (f, Some(level)) if f == level => {}
            _ => return false,
        }
    }
    t.next().is_none() && !(topic.starts_with('$') && !filter.starts_with('$'))
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

/// What a message waits for before its PUBACK.
enum Wait {
    Readings(Vec<oneshot::Receiver<Committed>>),
    DeadLetter(oneshot::Receiver<()>),
}

struct Pending {
    publish: Publish,
    wait: Wait,
}

/// Sends PUBACKs in arrival order, each once its message is committed.
async fn acker(client: AsyncClient, mut queue: mpsc::Receiver<Pending>) {
    while let Some(p) = queue.recv().await {
        let committed = match p.wait {
            Wait::Readings(rxs) => {
                let mut ok = true;
                for rx in rxs {
                    ok &= rx.await.is_ok();
                }
                ok
            }
            Wait::DeadLetter(rx) => rx.await.is_ok(),
        };
        if !committed {
            tracing::error!(
                "an MQTT message could not be stored; it is not acknowledged and the broker delivers it again after the next reconnect"
            );
            continue;
        }
        if let Err(e) = client.ack(&p.publish).await {
            tracing::debug!(error = %e, "PUBACK not sent: the client is closed");
            return;
        }
    }
}

fn options(config: &MqttConfig) -> MqttOptions {
    let mut o = MqttOptions::new(&config.client_id, &config.host, config.port);
    o.set_clean_session(false)
        .set_manual_acks(true)
        .set_keep_alive(config.keep_alive.max(Duration::from_secs(5)));
    let limit = protocol_limit(config.max_payload);
    o.set_max_packet_size(limit, limit);
    if let Some(c) = &config.credentials {
        o.set_credentials(c.username.clone(), c.password.clone());
    }
    o
}

struct Session<'a> {
    config: &'a MqttConfig,
    tx: &'a ReadingSender,
    queue: &'a mpsc::Sender<Pending>,
    devices: HashMap<(usize, String), Arc<DeviceIdentity>>,
    stats: MqttStats,
}

/// The most device identities remembered (a bound on memory with many devices).
const MAX_KNOWN_DEVICES: usize = 10_000;

impl Session<'_> {
    /// Decodes one message and queues it for its PUBACK. Returns false when the gateway is
    /// shutting down (the channel is closed).
    async fn handle(&mut self, publish: Publish) -> bool {
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
                        Err(_) => return false,
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
                    Err(_) => return false,
                }
            }
        };
        self.queue.send(Pending { publish, wait }).await.is_ok()
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
        if self.devices.len() >= MAX_KNOWN_DEVICES {
            self.devices.clear();
        }
        let device = self
            .devices
            .entry((index, id.clone()))
            .or_insert_with(|| {
                Arc::new(DeviceIdentity {
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

async fn run(config: MqttConfig, tx: ReadingSender, cancel: CancellationToken) -> MqttStats {
    let capacity = config.max_in_flight.max(1);
    // Room for every PUBACK the acker can produce between two polls (the queue's worth
    // and one), and the subscribe and disconnect requests: the acker never blocks on it.
    let (client, mut eventloop) = AsyncClient::new(options(&config), 2 * capacity + 8);
    let (queue_tx, queue_rx) = mpsc::channel(capacity);
    let acker_task = tokio::spawn(acker(client.clone(), queue_rx));
    let filters: Vec<SubscribeFilter> = config
        .subscriptions
        .iter()
        .map(|s| SubscribeFilter::new(s.filter.clone(), QoS::AtLeastOnce))
        .collect();
    let mut backoff = Backoff::new(config.reconnect_initial, config.reconnect_max);
    let mut session = Session {
        config: &config,
        tx: &tx,
        queue: &queue_tx,
        devices: HashMap::new(),
        stats: MqttStats::default(),
    };
    let broker = format!("{}:{}", config.host, config.port);
    let mut connected = false;
    loop {
        let event = tokio::select! {
            _ = cancel.cancelled() => break,
            e = eventloop.poll() => e,
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
                if client.subscribe_many(filters.clone()).await.is_err() {
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
            Ok(Event::Incoming(Packet::Publish(p))) => {
                if !session.handle(p).await {
                    break;
                }
            }
            Ok(_) => {}
            Err(e) => {
                let delay = backoff.fail();
                if connected || backoff.failures() == 1 {
                    tracing::warn!(broker = %broker, error = %e, "MQTT broker unreachable or connection lost; reconnecting with backoff");
                } else {
                    tracing::debug!(broker = %broker, error = %e, delay_ms = delay.as_millis() as u64, "MQTT broker still unreachable");
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
    drop(queue_tx);
    drop(tx);
    let mut acker_task = acker_task;
    let deadline = tokio::time::sleep(Duration::from_secs(10));
    tokio::pin!(deadline);
    let mut acker_done = false;
    loop {
        tokio::select! {
            _ = &mut acker_task, if !acker_done => {
                acker_done = true;
                let _ = client.try_disconnect();
            }
            _ = &mut deadline => break,
            e = poll_quietly(&mut eventloop) => {
                if e.is_err() || acker_done && matches!(e, Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect))) {
                    break;
                }
            }
        }
    }
    stats
}

/// Polls the event loop while draining (incoming messages are not taken).
async fn poll_quietly(eventloop: &mut EventLoop) -> Result<Event, rumqttc::ConnectionError> {
    eventloop.poll().await
}

#[cfg(test)]
mod tests;
