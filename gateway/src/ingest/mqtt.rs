//! `[mqtt]`: the MQTT ingest driver's settings (devices publishing JSON to a local
//! broker), and its subscriptions: one per selected MQTT profile.

use std::path::PathBuf;
use std::time::Duration;

use iomt_drivers::mqtt::{Credentials, MqttConfig, MqttDriver, MqttTls, Subscription};
use iomt_drivers::reject_channel;
use serde::Deserialize;

use super::{
    check_reconnect, default_reconnect_initial, default_reconnect_max, of_transport, select, Built,
    Context, IngestError, Source,
};
use crate::limits;
use crate::net::tls::TlsSettings;
use crate::net::{self, client_identity, is_loopback_host};
use crate::profile::TransportSpec;

/// `[mqtt]`: the MQTT ingest driver (devices publishing JSON to a local broker).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMqtt {
    /// Run the MQTT driver (default false).
    #[serde(default)]
    pub enabled: bool,
    /// Broker host (default `127.0.0.1`).
    #[serde(default = "default_mqtt_host")]
    pub host: String,
    /// Broker port (default 1883, or 8883 with `tls`).
    #[serde(default)]
    pub port: Option<u16>,
    /// Connect with TLS (default false): the broker's certificate verified against the
    /// system roots and `ca_file`.
    #[serde(default)]
    pub tls: bool,
    /// PEM bundle of extra trusted CAs (private PKI), added to the system roots (`tls` only).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Client certificate (PEM, mode 0600) for mutual TLS (`tls` only).
    #[serde(default)]
    pub client_cert_file: Option<PathBuf>,
    /// Client private key (PEM, mode 0600) for mutual TLS (`tls` only).
    #[serde(default)]
    pub client_key_file: Option<PathBuf>,
    /// The stable client id of the gateway's persistent session (default `iomt-gateway`).
    #[serde(default = "default_mqtt_client_id")]
    pub client_id: String,
    /// File with the user name (first line) and password (second line), mode 0600.
    /// Without `tls`, refused for a broker that is not loopback unless `allow_insecure`.
    #[serde(default)]
    pub credentials_file: Option<PathBuf>,
    /// Allow `credentials_file` over plain MQTT (no `tls`) to a broker that is not
    /// loopback (default false): the password then crosses the network in clear. A
    /// warning is logged at every start when used.
    #[serde(default)]
    pub allow_insecure: bool,
    /// MQTT keep-alive in seconds (default 30; 5 to 65535).
    #[serde(default = "default_keep_alive")]
    pub keep_alive_secs: u64,
    /// Largest payload accepted, in bytes (default 65536; at most 16 MiB); larger ones go
    /// to the dead letters.
    #[serde(default = "default_mqtt_max_payload")]
    pub max_payload_bytes: usize,
    /// Most messages the broker holds as unacknowledged (waiting for their commit or for
    /// their PUBACK) before the driver stops reading (default 64; 1 to 65535).
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
    /// Most refused messages kept in the dead letters; the oldest go first (default 1000;
    /// 1 to 1000000).
    #[serde(default = "default_dead_letter_limit")]
    pub dead_letter_limit: usize,
    /// Milliseconds before the first reconnect attempt (default 500).
    #[serde(default = "default_reconnect_initial")]
    pub reconnect_initial_ms: u64,
    /// Longest wait between reconnect attempts in milliseconds (default 30000).
    #[serde(default = "default_reconnect_max")]
    pub reconnect_max_ms: u64,
    /// MQTT profile ids to subscribe for; empty (default): every MQTT profile.
    #[serde(default)]
    pub profiles: Vec<String>,
}

impl Default for RawMqtt {
    fn default() -> Self {
        Self {
            enabled: false,
            host: default_mqtt_host(),
            port: None,
            tls: false,
            ca_file: None,
            client_cert_file: None,
            client_key_file: None,
            client_id: default_mqtt_client_id(),
            credentials_file: None,
            allow_insecure: false,
            keep_alive_secs: default_keep_alive(),
            max_payload_bytes: default_mqtt_max_payload(),
            max_in_flight: default_max_in_flight(),
            dead_letter_limit: default_dead_letter_limit(),
            reconnect_initial_ms: default_reconnect_initial(),
            reconnect_max_ms: default_reconnect_max(),
            profiles: Vec::new(),
        }
    }
}

fn default_mqtt_host() -> String {
    "127.0.0.1".into()
}
fn default_mqtt_client_id() -> String {
    "iomt-gateway".into()
}
fn default_keep_alive() -> u64 {
    30
}
fn default_mqtt_max_payload() -> usize {
    65536
}
fn default_max_in_flight() -> usize {
    64
}
fn default_dead_letter_limit() -> usize {
    1000
}

/// MQTT driver settings, validated.
#[derive(Debug, Clone)]
pub struct MqttSettings {
    /// Broker host.
    pub host: String,
    /// Broker port.
    pub port: u16,
    /// TLS to the broker and how it is set up; `None` for plain TCP.
    pub tls: Option<TlsSettings>,
    /// Client id.
    pub client_id: String,
    /// Credentials file.
    pub credentials_file: Option<PathBuf>,
    /// Keep-alive.
    pub keep_alive: Duration,
    /// Payload limit.
    pub max_payload: usize,
    /// Messages waiting for their commit or their PUBACK.
    pub max_in_flight: usize,
    /// Refused messages kept.
    pub dead_letter_limit: usize,
    /// First reconnect delay.
    pub reconnect_initial: Duration,
    /// Longest reconnect delay.
    pub reconnect_max: Duration,
    /// Profile ids (empty: all MQTT profiles).
    pub profiles: Vec<String>,
}

impl RawMqtt {
    /// Validates the section, adding each problem to `problems`; the settings when the
    /// driver is enabled.
    pub fn validate(&self, problems: &mut Vec<String>) -> Option<MqttSettings> {
        let m = self;
        let identity = client_identity(&m.client_cert_file, &m.client_key_file)
            .map_err(|e| problems.push(format!("mqtt: {e}")))
            .ok()
            .flatten();
        if !m.enabled {
            return None;
        }
        if m.host.trim().is_empty() {
            problems.push("mqtt.host must not be empty".into());
        }
        if m.port == Some(0) {
            problems.push("mqtt.port must not be 0".into());
        }
        if !m.tls
            && (m.ca_file.is_some() || m.client_cert_file.is_some() || m.client_key_file.is_some())
        {
            problems.push(
                "mqtt.ca_file, mqtt.client_cert_file and mqtt.client_key_file need mqtt.tls = true"
                    .into(),
            );
        }
        if !m.tls
            && m.credentials_file.is_some()
            && !is_loopback_host(m.host.trim())
            && !m.allow_insecure
        {
            problems.push(format!(
                "mqtt.credentials_file over plain MQTT to the broker `{}`, which is not loopback: the password would cross the network unencrypted. Set mqtt.tls = true, or mqtt.allow_insecure = true if this link is protected otherwise",
                m.host
            ));
        }
        if m.client_id.trim().is_empty() {
            problems.push("mqtt.client_id must not be empty (the broker keeps the gateway's session under it)".into());
        }
        let before = problems.len();
        limits::check(
            "mqtt.keep_alive_secs",
            m.keep_alive_secs,
            &limits::KEEP_ALIVE_SECS,
            problems,
        );
        limits::check(
            "mqtt.max_payload_bytes",
            m.max_payload_bytes,
            &limits::MAX_PAYLOAD_BYTES,
            problems,
        );
        limits::check(
            "mqtt.max_in_flight",
            m.max_in_flight,
            &limits::MAX_IN_FLIGHT,
            problems,
        );
        limits::check(
            "mqtt.dead_letter_limit",
            m.dead_letter_limit,
            &limits::DEAD_LETTER_LIMIT,
            problems,
        );
        check_reconnect("mqtt", m.reconnect_initial_ms, m.reconnect_max_ms, problems);
        if problems.len() > before {
            // Numbers out of range make no settings (no channel of 2^61 slots is built).
            return None;
        }
        Some(MqttSettings {
            host: m.host.clone(),
            port: m.port.unwrap_or(if m.tls { 8883 } else { 1883 }),
            tls: m.tls.then(|| TlsSettings {
                ca_file: m.ca_file.clone(),
                client_identity: identity,
            }),
            client_id: m.client_id.clone(),
            credentials_file: m.credentials_file.clone(),
            keep_alive: Duration::from_secs(m.keep_alive_secs),
            max_payload: m.max_payload_bytes,
            max_in_flight: m.max_in_flight,
            dead_letter_limit: m.dead_letter_limit,
            reconnect_initial: Duration::from_millis(m.reconnect_initial_ms),
            reconnect_max: Duration::from_millis(m.reconnect_max_ms),
            profiles: m.profiles.clone(),
        })
    }
}

/// Builds the MQTT driver's subscriptions: one per selected MQTT profile.
pub fn mqtt_subscriptions(
    ctx: &Context<'_>,
    settings: &MqttSettings,
) -> Result<Vec<Subscription>, IngestError> {
    let subs: Vec<Subscription> = select(
        of_transport(ctx.profiles, TransportSpec::as_mqtt),
        &settings.profiles,
    )
    .map_err(IngestError::UnknownMqttProfile)?
    .into_iter()
    .map(|(p, spec)| Subscription {
        profile: p.id.clone(),
        manufacturer: p.manufacturer.clone(),
        model: p.model.clone(),
        filter: spec.topic.clone(),
        decoder: spec.json.clone(),
        device_id_level: spec.device_id_level,
    })
    .collect();
    if subs.is_empty() {
        return Err(IngestError::NoMqttProfile);
    }
    Ok(subs)
}

impl Source for MqttSettings {
    fn build(&self, ctx: &Context<'_>) -> Result<Built, IngestError> {
        let subscriptions = mqtt_subscriptions(ctx, self)?;
        let credentials = net::mqtt::credentials(self.credentials_file.as_deref())
            .map_err(IngestError::MqttCredentials)?
            .map(|(username, password)| Credentials { username, password });
        let (reject_tx, reject_rx) = reject_channel(self.max_in_flight);
        let tls = match &self.tls {
            Some(t) => Some(MqttTls(
                net::mqtt::configuration(t).map_err(IngestError::MqttTls)?,
            )),
            None => {
                if !is_loopback_host(&self.host) {
                    tracing::warn!(broker = %self.host, "mqtt.tls is off: readings travel unencrypted to a broker that is not on this machine");
                    if credentials.is_some() {
                        // Only with mqtt.allow_insecure (validate refuses it otherwise).
                        tracing::warn!(broker = %self.host, "mqtt.allow_insecure: the broker's user name and password go over plain MQTT to a host that is not loopback");
                    }
                }
                None
            }
        };
        let driver = MqttDriver::new(MqttConfig {
            host: self.host.clone(),
            port: self.port,
            tls,
            client_id: self.client_id.clone(),
            credentials,
            keep_alive: self.keep_alive,
            max_payload: self.max_payload,
            max_in_flight: self.max_in_flight,
            reconnect_initial: self.reconnect_initial,
            reconnect_max: self.reconnect_max,
            subscriptions,
            rejects: reject_tx,
        })?;
        Ok(Built {
            driver: Box::new(driver),
            address_zones: Vec::new(),
            rejects: Some((reject_rx, self.dead_letter_limit)),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use crate::config::testing::{assert_problems, minimal_with, MINIMAL};
    use crate::config::UplinkKind;
    use crate::uplink::mqtt::PublishMode;

    #[test]
    fn mqtt_ingest_and_uplink_are_validated_naming_each_key() {
        let text = format!(
            "{MINIMAL}\n[mqtt]\nenabled = true\nclient_id = \"\"\nmax_in_flight = 0\n[[uplinks]]\nkind = \"mqtt\"\nurl = \"https://cloud\"\ntopic = \"iomt/{{gateway}}\"\n[[uplinks]]\nkind = \"mqtt\"\nname = \"m2\"\nurl = \"mqtt://localhost\"\ntopic = \"iomt/#\"\n"
        );
        assert_problems(
            &text,
            &[
                "mqtt.client_id",
                "mqtt.max_in_flight",
                "uplinks[1]: `https://cloud`",
                "uplinks[2]: topic `iomt/#`",
            ],
        );
    }

    #[test]
    fn credentials_over_plain_mqtt_beyond_loopback_need_allow_insecure() {
        let mqtt = |extra: &str| {
            format!("[mqtt]\nenabled = true\ncredentials_file = \"/etc/c\"\n{extra}\n")
        };
        assert_problems(
            &format!("{MINIMAL}\n{}", mqtt("host = \"broker.ward.example\"")),
            &["mqtt.credentials_file over plain MQTT to the broker `broker.ward.example`"],
        );
        for extra in [
            "host = \"broker.ward.example\"\nallow_insecure = true",
            "host = \"broker.ward.example\"\ntls = true",
            "host = \"::1\"",
            "",
        ] {
            assert!(minimal_with(&mqtt(extra)).is_ok(), "{extra}");
        }
    }

    #[test]
    fn an_mqtts_uplink_defaults_to_port_8883_and_bundles() {
        let c = minimal_with(
            "[mqtt]\nenabled = true\n[[uplinks]]\nkind = \"mqtt\"\nurl = \"mqtts://broker.example.org\"\ntopic = \"iomt/{gateway}/fhir\"\n",
        )
        .unwrap();
        let mqtt = c.mqtt.unwrap();
        assert_eq!((mqtt.host.as_str(), mqtt.port), ("127.0.0.1", 1883));
        assert_eq!(mqtt.client_id, "iomt-gateway");
        let UplinkKind::Mqtt(u) = &c.uplinks[1].kind else {
            panic!("not an MQTT uplink")
        };
        assert_eq!(
            (u.port, u.tls.is_some(), u.mode),
            (8883, true, PublishMode::Bundle)
        );
        assert_eq!(c.uplinks[1].name, "mqtt");
    }

    #[test]
    fn mqtt_ingest_over_tls_defaults_to_port_8883_and_takes_a_client_identity() {
        let mqtt = minimal_with(
            "[mqtt]\nenabled = true\nhost = \"broker.ward.example\"\ntls = true\nca_file = \"/ca.pem\"\nclient_cert_file = \"/c.pem\"\nclient_key_file = \"/c.key\"\n",
        )
        .unwrap()
        .mqtt
        .unwrap();
        assert_eq!(mqtt.port, 8883);
        let tls = mqtt.tls.unwrap();
        assert_eq!(tls.ca_file, Some(PathBuf::from("/ca.pem")));
        assert_eq!(
            tls.client_identity,
            Some((PathBuf::from("/c.pem"), PathBuf::from("/c.key")))
        );
        // An explicit port wins; a certificate without its key is named.
        assert_problems(
            &format!("{MINIMAL}\n[mqtt]\nenabled = true\ntls = true\nport = 0\nclient_cert_file = \"/c.pem\"\n"),
            &["mqtt.port must not be 0", "mqtt: mutual TLS needs both"],
        );
    }
}
