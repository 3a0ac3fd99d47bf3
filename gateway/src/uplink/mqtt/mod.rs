//! The MQTT uplink: pseudonymized FHIR published to a cloud broker at QoS 1.
//!
//! Each Bundle the delivery loop hands over is published as one message (`mode =
//! "bundle"`: the transaction Bundle as JSON) or as one message per Observation (`mode =
//! "observation"`: the Observation's JSON; Device resources are not sent in this mode), on
//! the configured topic, where `{gateway}` stands for the gateway's pseudonym (never its
//! configured id).
//!
//! **Delete after delivery.** [`Uplink::deliver`] returns `Ok` only once the broker has
//! PUBACKed every message of the Bundle; the delivery loop then marks the rows delivered.
//! A lost connection or a missing PUBACK within `ack_timeout` is a transient failure:
//! the connection is dropped (so no acknowledgement of an earlier attempt can be mistaken
//! for one of the retry) and the delivery loop retries with its capped backoff, on a new
//! connection. Delivery is at-least-once: a subscriber deduplicates by the Observations'
//! deterministic identifiers.
//!
//! **Connection.** A clean session (the outbox, not the broker, holds what is not yet
//! delivered), a client id derived from the gateway's pseudonym unless configured, and a
//! background task driving rumqttc's event loop that reconnects with capped backoff and
//! keeps the connection alive between deliveries.
//!
//! **Security.** `mqtts://` uses TLS (`tls.rs`, the one place TLS is set up): the broker's
//! certificate verified against the system's roots plus an optional `ca_file`, and a client
//! certificate for mutual TLS when configured. Plain `mqtt://` is accepted by the
//! configuration only to a loopback broker or with `allow_insecure` (then a warning at
//! every start). A handshake failure is reported with what to configure.

pub mod tls;

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, Packet, QoS};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::{DeliveryError, DeliveryFuture, Uplink, UplinkError};
use crate::fhir::Bundle;

/// What one MQTT message carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PublishMode {
    /// One transaction Bundle per batch (the default).
    #[default]
    Bundle,
    /// One Observation per message.
    Observation,
}

/// Settings of one MQTT uplink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MqttUplinkSettings {
    /// The uplink's name.
    pub name: String,
    /// Broker host.
    pub host: String,
    /// Broker port.
    pub port: u16,
    /// TLS (`mqtts://`) and how it is set up; `None` for plain `mqtt://`.
    pub tls: Option<tls::TlsSettings>,
    /// Plain `mqtt://` to a broker that is not loopback, allowed by `allow_insecure`.
    pub insecure: bool,
    /// The client id; default: derived from the gateway's pseudonym.
    pub client_id: Option<String>,
    /// The topic template (`{gateway}`: the gateway's pseudonym).
    pub topic: String,
    /// One message per Bundle or per Observation.
    pub mode: PublishMode,
    /// File with the user name (first line) and password (second line), mode 0600.
    pub credentials_file: Option<PathBuf>,
    /// How long to wait for the connection and for every PUBACK of one Bundle.
    pub ack_timeout: Duration,
    /// MQTT keep-alive interval.
    pub keep_alive: Duration,
    /// Most Observations per Bundle (sizes the event queue).
    pub batch_size: usize,
    /// First reconnect delay of the background connection.
    pub reconnect_initial: Duration,
    /// Longest reconnect delay of the background connection.
    pub reconnect_max: Duration,
}

/// Parses an `mqtt://host:port` or `mqtts://host:port` URL into (host, port, tls).
/// The port defaults to 1883, or 8883 with TLS. Credentials in the URL are refused.
pub fn parse_url(url: &str) -> Result<(String, u16, bool), String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("`{url}` is not a URL: {e}"))?;
    let tls = match parsed.scheme() {
        "mqtt" => false,
        "mqtts" => true,
        other => {
            return Err(format!(
                "`{url}`: the scheme must be mqtt:// or mqtts://, not {other}://"
            ))
        }
    };
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err("the URL must not carry credentials; use credentials_file".into());
    }
    if !matches!(parsed.path(), "" | "/") || parsed.query().is_some() {
        return Err(format!(
            "`{url}`: give only the broker (mqtts://host:port); the topic is set by `topic`"
        ));
    }
    let host = parsed
        .host_str()
        .filter(|h| !h.is_empty())
        .ok_or_else(|| format!("`{url}` names no broker host"))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = parsed.port().unwrap_or(if tls { 8883 } else { 1883 });
    Ok((host, port, tls))
}

/// Checks a topic template: not empty, no wildcards, only the `{gateway}` placeholder.
pub fn check_topic(template: &str) -> Result<(), String> {
    if template.is_empty() {
        return Err("topic must not be empty".into());
    }
    if template.contains(['+', '#']) {
        return Err(format!(
            "topic `{template}` must not contain the wildcards + or # (it is a topic to publish to)"
        ));
    }
    let rest = template.replace("{gateway}", "");
    if rest.contains(['{', '}']) {
        return Err(format!(
            "topic `{template}`: the only placeholder is {{gateway}} (the gateway's pseudonym)"
        ));
    }
    Ok(())
}

/// Reads an MQTT credentials file: the user name on the first line, the password on the
/// second; mode 0600 (group- or world-readable files are refused).
pub fn read_credentials(path: &std::path::Path) -> Result<(String, String), String> {
    let bytes = crate::pseudonym::read_secret_file(path).map_err(|e| e.to_string())?;
    let text = String::from_utf8(bytes)
        .map_err(|_| format!("the credentials file {} is not text", path.display()))?;
    let mut lines = text.lines();
    let user = lines.next().unwrap_or("").trim().to_string();
    let password = lines
        .next()
        .unwrap_or("")
        .trim_end_matches('\r')
        .to_string();
    if user.is_empty() {
        return Err(format!(
            "the credentials file {} must hold the user name on its first line and the password on its second",
            path.display()
        ));
    }
    Ok((user, password))
}

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
        let credentials = match &settings.credentials_file {
            Some(path) => Some(read_credentials(path).map_err(fail)?),
            None => None,
        };
        let transport = tls::transport(settings.tls.as_ref()).map_err(fail)?;
        if settings.insecure {
            tracing::warn!(uplink = %settings.name, broker = %settings.host, "allow_insecure: observations go over plain mqtt:// to a broker that is not loopback");
        }
        let short: String = gateway_pseudonym.chars().take(16).collect();
        Ok(Self {
            topic: settings.topic.replace("{gateway}", gateway_pseudonym),
            client_id: settings
                .client_id
                .clone()
                .unwrap_or_else(|| format!("iomt-gateway-{short}")),
            credentials,
            transport,
            connection: None,
            settings,
        })
    }

    /// The topic messages are published on (the template resolved).
    pub fn topic(&self) -> &str {
        &self.topic
    }

    fn connect(&self) -> Connection {
        let s = &self.settings;
        let mut o = MqttOptions::new(&self.client_id, &s.host, s.port);
        o.set_clean_session(true)
            .set_keep_alive(s.keep_alive.max(Duration::from_secs(5)))
            .set_transport(self.transport.clone())
            .set_max_packet_size(256 << 20, 256 << 20);
        if let Some((u, p)) = &self.credentials {
            o.set_credentials(u.clone(), p.clone());
        }
        let n = s.batch_size.max(1);
        let (client, mut eventloop) = AsyncClient::new(o, n + 8);
        // Each message of one delivery yields at most two reports; a delivery reads them
        // all before it returns, so the task never waits on a full queue.
        let (report_tx, reports) = mpsc::channel(2 * n + 16);
        let (connected_tx, connected) = watch::channel(false);
        let name = s.name.clone();
        let broker = format!("{}:{}", s.host, s.port);
        let mut backoff = iomt_drivers::backoff::Backoff::new(s.reconnect_initial, s.reconnect_max);
        let task = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        backoff.succeed();
                        connected_tx.send_replace(true);
                        tracing::info!(uplink = %name, broker = %broker, "connected to the MQTT broker");
                    }
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
                        let delay = backoff.fail();
                        let error = iomt_drivers::net::describe_mqtt_error(&e);
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

    fn messages(&self, bundle: &Bundle) -> Result<Vec<Vec<u8>>, DeliveryError> {
        let encode = |e: serde_json::Error| DeliveryError::Transient {
            reason: format!("cannot encode a message: {e}"),
            retry_after: None,
        };
        Ok(match self.settings.mode {
            PublishMode::Bundle => vec![serde_json::to_vec(bundle).map_err(encode)?],
            PublishMode::Observation => bundle
                .entry
                .iter()
                .filter(|e| e.request.url == "Observation")
                .map(|e| e.resource.get().as_bytes().to_vec())
                .collect(),
        })
    }

    async fn publish_all(&mut self, messages: Vec<Vec<u8>>) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + self.settings.ack_timeout;
        if self.connection.is_none() {
            self.connection = Some(self.connect());
        }
        let topic = self.topic.clone();
        let Some(conn) = self.connection.as_mut() else {
            return Err("no connection".into());
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
            return Err(format!(
                "cannot connect to the broker{}",
                last_down.map(|e| format!(": {e}")).unwrap_or_default()
            ));
        }
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
                    Some(Report::Down(e)) => return Err(format!("connection lost: {e}")),
                    None => return Err("the connection task stopped".into()),
                },
                sent = publish => {
                    if let Some(Err(e)) = sent {
                        return Err(format!("cannot publish: {e}"));
                    }
                    next = to_send.next();
                }
                _ = tokio::time::sleep_until(deadline) => {
                    return Err(format!(
                        "{acked} of {total} messages acknowledged ({published} sent) within {:?}",
                        self.settings.ack_timeout
                    ));
                }
            }
        }
        Ok(())
    }
}

impl Uplink for MqttUplink {
    fn name(&self) -> &str {
        &self.settings.name
    }

    fn deliver<'a>(&'a mut self, bundle: &'a Bundle) -> DeliveryFuture<'a> {
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
                Err(reason) => {
                    // A fresh connection for the retry: nothing of this attempt lingers.
                    self.connection = None;
                    Err(DeliveryError::Transient {
                        reason,
                        retry_after: None,
                    })
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_give_host_port_and_tls_with_the_usual_default_ports() {
        assert_eq!(
            parse_url("mqtts://broker.example.org").unwrap(),
            ("broker.example.org".into(), 8883, true)
        );
        assert_eq!(
            parse_url("mqtt://127.0.0.1:18830").unwrap(),
            ("127.0.0.1".into(), 18830, false)
        );
        assert!(parse_url("https://broker").is_err());
        assert!(parse_url("mqtt://user:pw@broker").is_err());
        assert!(parse_url("mqtt://broker/some/topic").is_err());
    }

    #[test]
    fn topic_templates_take_only_the_gateway_placeholder_and_no_wildcards() {
        assert!(check_topic("iomt/{gateway}/fhir").is_ok());
        assert!(check_topic("iomt/+/fhir").is_err());
        assert!(check_topic("iomt/{patient}/fhir").is_err());
        assert!(check_topic("").is_err());
    }

    fn settings(tls: bool) -> MqttUplinkSettings {
        MqttUplinkSettings {
            name: "cloud".into(),
            host: "broker.example.org".into(),
            port: 8883,
            tls: tls.then(tls::TlsSettings::default),
            insecure: false,
            client_id: None,
            topic: "iomt/{gateway}/fhir".into(),
            mode: PublishMode::Bundle,
            credentials_file: None,
            ack_timeout: Duration::from_secs(5),
            keep_alive: Duration::from_secs(30),
            batch_size: 10,
            reconnect_initial: Duration::from_millis(100),
            reconnect_max: Duration::from_secs(1),
        }
    }

    #[test]
    fn the_topic_carries_the_gateway_pseudonym_and_mqtts_uses_system_roots() {
        let u = MqttUplink::new(settings(true), "0123456789abcdef0123").unwrap();
        assert_eq!(u.topic(), "iomt/0123456789abcdef0123/fhir");
        assert_eq!(u.client_id, "iomt-gateway-0123456789abcdef");
        assert!(matches!(u.transport, rumqttc::Transport::Tls(_)));
    }

    #[test]
    fn a_readable_credentials_file_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mqtt.credentials");
        std::fs::write(&path, "gateway\ns3cret\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(read_credentials(&path).is_err());
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(
            read_credentials(&path).unwrap(),
            ("gateway".into(), "s3cret".into())
        );
    }
}
