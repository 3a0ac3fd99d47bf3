//! `[[uplinks]]` with `kind = "mqtt"`: the table as written, its validation, and the
//! validated [`MqttUplinkSettings`].

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::limits;
use crate::net::tls::TlsSettings;
use crate::net::{client_identity, is_loopback_host};
use crate::uplink::{backoff_max, batch_size, timeout, Settings};

/// `[[uplinks]]` with `kind = "mqtt"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMqttUplink {
    /// A unique name (default `mqtt`); the outbox tracks delivery per name.
    pub name: Option<String>,
    /// The broker: `mqtts://host:port` (TLS verified against the system roots and
    /// `ca_file`; port 8883 by default) or `mqtt://host:port` (plain, port 1883 by
    /// default; only to a loopback broker unless `allow_insecure`).
    pub url: String,
    /// Topic to publish on; `{gateway}` is replaced by the gateway's pseudonym.
    pub topic: String,
    /// `bundle` (default: one transaction Bundle per message) or `observation` (one
    /// Observation per message).
    pub mode: Option<PublishMode>,
    /// Topic of the gateway's retained status message and last will (default
    /// `iomt/{gateway}/status`); must hold `{gateway}`, so kits do not overwrite each
    /// other's status.
    pub status_topic: Option<String>,
    /// Client id (default: `iomt-gateway-` and the start of the gateway's pseudonym).
    pub client_id: Option<String>,
    /// File with the user name (first line) and password (second line), mode 0600.
    pub credentials_file: Option<PathBuf>,
    /// Most Observations per Bundle (default 100; 1 to 10000).
    pub batch_size: Option<usize>,
    /// Largest message in bundle mode, in bytes (default 262144, 256 KiB; 4096 to
    /// 268435456): a batch whose Bundle would be larger goes as several Bundles, so a
    /// broker's message size limit (AWS IoT Core: 128 KiB) is respected and the memory a
    /// Bundle takes is bounded whatever `batch_size` is. A single Observation larger than
    /// this still goes, alone.
    pub max_message_bytes: Option<usize>,
    /// Seconds to wait for the connection and every PUBACK of a Bundle (default 30; 1 to
    /// 3600).
    pub timeout_secs: Option<u64>,
    /// Longest retry delay in seconds (default 300; 1 to 86400).
    pub max_backoff_secs: Option<u64>,
    /// PEM bundle of extra trusted CAs (private PKI), added to the system roots
    /// (`mqtts://` only).
    pub ca_file: Option<PathBuf>,
    /// Client certificate (PEM, mode 0600) for mutual TLS (`mqtts://` only).
    pub client_cert_file: Option<PathBuf>,
    /// Client private key (PEM, mode 0600) for mutual TLS (`mqtts://` only).
    pub client_key_file: Option<PathBuf>,
    /// Allow plain `mqtt://` to a broker that is not loopback (default false; a
    /// warning is logged at every start when used).
    #[serde(default)]
    pub allow_insecure: bool,
}

/// What one MQTT message carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
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
    pub tls: Option<TlsSettings>,
    /// Plain `mqtt://` to a broker that is not loopback, allowed by `allow_insecure`.
    pub insecure: bool,
    /// The client id; default: derived from the gateway's pseudonym.
    pub client_id: Option<String>,
    /// The topic template (`{gateway}`: the gateway's pseudonym).
    pub topic: String,
    /// One message per Bundle or per Observation.
    pub mode: PublishMode,
    /// The status topic template (`{gateway}`: the gateway's pseudonym).
    pub status_topic: String,
    /// File with the user name (first line) and password (second line), mode 0600.
    pub credentials_file: Option<PathBuf>,
    /// How long to wait for the connection and for every PUBACK of one Bundle.
    pub ack_timeout: Duration,
    /// MQTT keep-alive interval.
    pub keep_alive: Duration,
    /// Most Observations per Bundle (sizes the event queue).
    pub batch_size: usize,
    /// Largest message in bundle mode, in bytes.
    pub max_message_bytes: usize,
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

/// The default status topic.
pub const DEFAULT_STATUS_TOPIC: &str = "iomt/{gateway}/status";

/// Checks a status topic template: a topic as [`check_topic`] wants it, naming the gateway.
pub fn check_status_topic(template: &str) -> Result<(), String> {
    check_topic(template).map_err(|e| format!("status_{e}"))?;
    if !template.contains("{gateway}") {
        return Err(format!(
            "status_topic `{template}` must hold {{gateway}}: each kit's retained status has its own topic"
        ));
    }
    Ok(())
}

impl RawMqttUplink {
    /// Validates the table: the broker URL, plain `mqtt://` only to loopback unless
    /// `allow_insecure`, TLS files only with `mqtts://`, the topic template.
    pub fn validate(&self) -> Result<Settings<MqttUplinkSettings>, String> {
        let batch_size = batch_size(self.batch_size)?;
        let max_message_bytes = limits::optional(
            "max_message_bytes",
            self.max_message_bytes,
            DEFAULT_MAX_MESSAGE_BYTES,
            &limits::MAX_MESSAGE_BYTES,
        )?;
        let url = &self.url;
        let (host, port, tls) = parse_url(url)?;
        let loopback = is_loopback_host(&host);
        if !tls && !loopback && !self.allow_insecure {
            return Err(format!(
                "url `{url}` is plain mqtt:// to a broker that is not loopback: patient data would cross the network unencrypted. Use mqtts://, or set allow_insecure = true if this link is protected otherwise"
            ));
        }
        if !tls
            && (self.ca_file.is_some()
                || self.client_cert_file.is_some()
                || self.client_key_file.is_some())
        {
            return Err(format!(
                "ca_file, client_cert_file and client_key_file need a TLS broker: use mqtts:// instead of `{url}`"
            ));
        }
        let client_identity = client_identity(&self.client_cert_file, &self.client_key_file)?;
        check_topic(&self.topic)?;
        let status_topic = self
            .status_topic
            .clone()
            .unwrap_or_else(|| DEFAULT_STATUS_TOPIC.into());
        check_status_topic(&status_topic)?;
        if self.client_id.as_deref().is_some_and(str::is_empty) {
            return Err("client_id must not be empty (leave it out for the default)".into());
        }
        let name = self.name.clone().unwrap_or_else(|| "mqtt".into());
        let backoff_max = backoff_max(self.max_backoff_secs)?;
        let ack_timeout = timeout(self.timeout_secs)?;
        Ok(Settings {
            batch_size,
            backoff_max,
            kind: MqttUplinkSettings {
                name: name.clone(),
                host,
                port,
                tls: tls.then(|| TlsSettings {
                    ca_file: self.ca_file.clone(),
                    client_identity,
                }),
                insecure: !tls && !loopback,
                client_id: self.client_id.clone(),
                topic: self.topic.clone(),
                mode: self.mode.unwrap_or_default(),
                status_topic,
                credentials_file: self.credentials_file.clone(),
                ack_timeout,
                keep_alive: Duration::from_secs(30),
                batch_size,
                max_message_bytes,
                reconnect_initial: Duration::from_millis(500),
                reconnect_max: backoff_max.min(MAX_RECONNECT_DELAY),
            },
            name,
        })
    }
}

/// `max_message_bytes` when not set: 256 KiB, within the limits of the common cloud
/// brokers, and a few hundred Observations with their Devices.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 256 << 10;

/// The longest delay between the background connection's attempts (before jitter, which
/// takes up to half of it off): the broker is found again within this long of coming back,
/// however long it was away.
pub const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(4);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::testing::minimal_with;
    use crate::config::UplinkKind;

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
        assert!(check_status_topic("iomt/{gateway}/status").is_ok());
        let e = check_status_topic("iomt/status").unwrap_err();
        assert!(e.contains("must hold {gateway}"), "{e}");
        let e = check_status_topic("iomt/+/status").unwrap_err();
        assert!(e.starts_with("status_topic"), "{e}");
    }

    fn mqtt_uplink(keys: &str) -> Result<MqttUplinkSettings, String> {
        let c = minimal_with(&format!(
            "[[uplinks]]\nkind = \"mqtt\"\ntopic = \"iomt/{{gateway}}\"\n{keys}\n"
        ))
        .map_err(|e| e.to_string())?;
        match &c.uplinks[1].kind {
            UplinkKind::Mqtt(u) => Ok((**u).clone()),
            _ => Err("not an MQTT uplink".into()),
        }
    }

    /// A broker back after a 5 minute outage (or any other) is found again within the
    /// capped delay, whatever `max_backoff_secs` is: the delays the background connection
    /// waits over 5 minutes of failed attempts never exceed it.
    #[test]
    fn the_background_connection_retries_at_least_every_few_seconds() {
        let u = mqtt_uplink("url = \"mqtt://127.0.0.1\"\nmax_backoff_secs = 3600").unwrap();
        assert_eq!(u.reconnect_max, MAX_RECONNECT_DELAY);
        let mut b = iomt_drivers::backoff::Backoff::new(u.reconnect_initial, u.reconnect_max);
        let (mut waited, mut longest) = (Duration::ZERO, Duration::ZERO);
        while waited < Duration::from_secs(300) {
            let d = b.fail_with(None, 1.0);
            longest = longest.max(d);
            waited += d;
        }
        assert!(longest <= Duration::from_secs(4), "{longest:?}");
        assert!(b.fail_with(None, 0.0) >= Duration::from_secs(2));
    }

    #[test]
    fn plain_mqtt_beyond_loopback_needs_allow_insecure() {
        for local in [
            "mqtt://127.0.0.1:1883",
            "mqtt://localhost",
            "mqtt://[::1]:1884",
        ] {
            let u = mqtt_uplink(&format!("url = \"{local}\"")).unwrap();
            assert!(u.tls.is_none() && !u.insecure, "{local}");
        }
        let e = mqtt_uplink("url = \"mqtt://broker.example.org\"").unwrap_err();
        assert!(
            e.contains("plain mqtt:// to a broker that is not loopback") && e.contains("mqtts://"),
            "{e}"
        );
        let u = mqtt_uplink("url = \"mqtt://broker.example.org\"\nallow_insecure = true").unwrap();
        assert!(u.insecure);
        let u = mqtt_uplink("url = \"mqtts://broker.example.org\"").unwrap();
        assert!(!u.insecure);
    }

    #[test]
    fn mqtt_tls_files_need_mqtts_and_a_client_certificate_needs_its_key() {
        let u = mqtt_uplink(
            "url = \"mqtts://broker.example.org\"\nca_file = \"/etc/iomt-gateway/ca.pem\"\nclient_cert_file = \"/c.pem\"\nclient_key_file = \"/c.key\"",
        )
        .unwrap();
        let tls = u.tls.unwrap();
        assert_eq!(tls.ca_file, Some(PathBuf::from("/etc/iomt-gateway/ca.pem")));
        assert_eq!(
            tls.client_identity,
            Some((PathBuf::from("/c.pem"), PathBuf::from("/c.key")))
        );
        let e = mqtt_uplink("url = \"mqtt://127.0.0.1\"\nca_file = \"/ca.pem\"").unwrap_err();
        assert!(e.contains("need a TLS broker"), "{e}");
        let e = mqtt_uplink("url = \"mqtts://broker.example.org\"\nclient_cert_file = \"/c.pem\"")
            .unwrap_err();
        assert!(
            e.contains("both client_cert_file and client_key_file"),
            "{e}"
        );
    }
}
