//! Gateway configuration: built-in defaults, then one TOML file, then environment
//! variables `IOMT_GATEWAY__SECTION__KEY`, layered with the `config` crate.
//!
//! The raw structs reject unknown keys; [`Config::from_raw`] then validates everything and
//! reports every problem at once. `gateway.example.toml` documents every key.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::normalize::{OutOfRange, Zone};
use crate::outbox::{OutboxSettings, WhenFull};
use crate::smart::Alg;
use crate::uplink::fhir_http::{AuthSettings, FhirSettings, OAuth2Settings, SmartSettings};
use crate::uplink::mqtt::tls::TlsSettings;
use crate::uplink::mqtt::{MqttUplinkSettings, PublishMode};

/// The default configuration file.
pub const DEFAULT_PATH: &str = "/etc/iomt-gateway/gateway.toml";

/// The prefix of environment overrides.
pub const ENV_PREFIX: &str = "IOMT_GATEWAY";

/// Configuration problems, all of them.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration{}:\n  - {}", source_name.as_ref().map(|s| format!(" in {s}")).unwrap_or_default(), problems.join("\n  - "))]
pub struct ConfigError {
    /// The file, when there is one.
    pub source_name: Option<String>,
    /// Each problem, naming its key.
    pub problems: Vec<String>,
}

/// `[gateway]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGateway {
    /// This kit's identifier (pseudonymized before it leaves the device).
    pub id: String,
    /// Directory of device profiles.
    #[serde(default = "default_profiles_dir")]
    pub profiles_dir: PathBuf,
    /// IANA zone for device times without zone; default: the system's zone.
    #[serde(default)]
    pub time_zone: Option<String>,
    /// Capacity of the reading channel between drivers and the pipeline.
    #[serde(default = "default_channel_capacity")]
    pub channel_capacity: usize,
}

fn default_profiles_dir() -> PathBuf {
    PathBuf::from("/usr/share/iomt-gateway/device-profiles")
}
fn default_channel_capacity() -> usize {
    256
}

/// `[patient]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPatient {
    /// The patient identifier (e.g. an MRN). Never emitted or logged: only its pseudonym.
    pub id: String,
}

/// `[pseudonymization]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPseudonymization {
    /// Path of the 32-byte key file (mode 0600), shared with the backend's
    /// re-identification service.
    pub key_file: PathBuf,
}

/// `[normalize]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNormalize {
    /// `flag` (keep, marked questionable) or `reject` (drop, counted).
    #[serde(default)]
    pub out_of_range: OutOfRange,
}

/// `[sim]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSim {
    /// Run the simulator.
    #[serde(default)]
    pub enabled: bool,
    /// Profile ids to simulate; empty: every sim profile.
    #[serde(default)]
    pub profiles: Vec<String>,
    /// Seconds between two readings of one simulated device.
    #[serde(default = "default_sim_interval")]
    pub interval_secs: f64,
    /// Probability of a "not a number" quantity per reading.
    #[serde(default = "default_nan")]
    pub nan_probability: f64,
    /// Probability of an implausible quantity per reading.
    #[serde(default = "default_oor")]
    pub out_of_range_probability: f64,
    /// Random seed.
    #[serde(default)]
    pub seed: u64,
    /// Stop after this many readings (0: never).
    #[serde(default)]
    pub max_readings: u64,
}

impl Default for RawSim {
    fn default() -> Self {
        Self {
            enabled: false,
            profiles: Vec::new(),
            interval_secs: default_sim_interval(),
            nan_probability: default_nan(),
            out_of_range_probability: default_oor(),
            seed: 0,
            max_readings: 0,
        }
    }
}

fn default_sim_interval() -> f64 {
    5.0
}
fn default_nan() -> f64 {
    0.02
}
fn default_oor() -> f64 {
    0.01
}

/// `[serial]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSerial {
    /// Milliseconds before the first attempt to reopen a port that failed or vanished.
    #[serde(default = "default_reconnect_initial")]
    pub reconnect_initial_ms: u64,
    /// Longest wait between two attempts, in milliseconds (the wait doubles up to it).
    #[serde(default = "default_reconnect_max")]
    pub reconnect_max_ms: u64,
    /// The ports to read; none (default) leaves the serial driver off.
    #[serde(default)]
    pub ports: Vec<RawSerialPort>,
}

impl Default for RawSerial {
    fn default() -> Self {
        Self {
            reconnect_initial_ms: default_reconnect_initial(),
            reconnect_max_ms: default_reconnect_max(),
            ports: Vec::new(),
        }
    }
}

fn default_reconnect_initial() -> u64 {
    500
}
fn default_reconnect_max() -> u64 {
    30_000
}

/// `[ble]`: the Bluetooth LE driver, on when `[[ble.devices]]` lists a device.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBle {
    /// The adapter to use (`hci0`); default: the first one BlueZ reports.
    #[serde(default)]
    pub adapter: Option<String>,
    /// Milliseconds before retrying a failed connect (or a Bluetooth stack not up yet).
    #[serde(default = "default_reconnect_initial")]
    pub reconnect_initial_ms: u64,
    /// Longest wait between two attempts, in milliseconds (the wait doubles up to it).
    #[serde(default = "default_reconnect_max")]
    pub reconnect_max_ms: u64,
    /// The allow-list: only these devices are connected, whatever else advertises.
    #[serde(default)]
    pub devices: Vec<RawBleDevice>,
}

impl Default for RawBle {
    fn default() -> Self {
        Self {
            adapter: None,
            reconnect_initial_ms: default_reconnect_initial(),
            reconnect_max_ms: default_reconnect_max(),
            devices: Vec::new(),
        }
    }
}

/// `[[ble.devices]]`: one allow-listed device.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBleDevice {
    /// The Bluetooth address, `AA:BB:CC:DD:EE:FF` (`bluetoothctl devices` lists it).
    pub address: String,
    /// The id of the BLE profile of this device.
    pub profile: String,
    /// IANA zone of this device's clock; default: `[devices.<profile>]`, then `[gateway]`.
    #[serde(default)]
    pub time_zone: Option<String>,
}

/// `[[serial.ports]]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSerialPort {
    /// The device path; prefer a stable `/dev/serial/by-id/...` name.
    pub path: String,
    /// The id of the serial profile of the device on this port.
    pub profile: String,
    /// IANA zone of this device's clock; default: `[devices.<profile>]`, then `[gateway]`.
    #[serde(default)]
    pub time_zone: Option<String>,
    /// Forward at most one reading per this many milliseconds (0, default: all).
    #[serde(default)]
    pub min_interval_ms: u64,
}

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
    #[serde(default)]
    pub credentials_file: Option<PathBuf>,
    /// MQTT keep-alive in seconds (default 30).
    #[serde(default = "default_keep_alive")]
    pub keep_alive_secs: u64,
    /// Largest payload accepted, in bytes (default 65536); larger ones go to the dead letters.
    #[serde(default = "default_mqtt_max_payload")]
    pub max_payload_bytes: usize,
    /// Most messages waiting for their commit before the driver stops reading (default 64).
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
    /// Most refused messages kept in the dead letters; the oldest go first (default 1000).
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
    /// Messages waiting for their commit.
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

/// `[devices.<profile-id>]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDevice {
    /// IANA zone of this device's clock, when it differs from the gateway's.
    #[serde(default)]
    pub time_zone: Option<String>,
}

/// `[outbox]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOutbox {
    /// The SQLite database file.
    #[serde(default = "default_outbox_path")]
    pub path: PathBuf,
    /// The 32-byte storage key file (mode 0600), made by `iomt-gateway keygen`.
    #[serde(default = "default_storage_key")]
    pub key_file: PathBuf,
    /// Most sealed payload, in MiB.
    #[serde(default = "default_max_size_mb")]
    pub max_size_mb: u64,
    /// Rows older than this many days are evicted (unset: no age limit).
    #[serde(default)]
    pub max_age_days: Option<f64>,
    /// `evict-oldest` (default) or `block`.
    #[serde(default)]
    pub when_full: WhenFull,
    /// Longest wait, in milliseconds, to group more readings into one commit.
    #[serde(default = "default_commit_window")]
    pub commit_window_ms: u64,
    /// Most rows in one transaction.
    #[serde(default = "default_max_batch_rows")]
    pub max_batch_rows: usize,
}

impl Default for RawOutbox {
    fn default() -> Self {
        Self {
            path: default_outbox_path(),
            key_file: default_storage_key(),
            max_size_mb: default_max_size_mb(),
            max_age_days: None,
            when_full: WhenFull::default(),
            commit_window_ms: default_commit_window(),
            max_batch_rows: default_max_batch_rows(),
        }
    }
}

fn default_outbox_path() -> PathBuf {
    PathBuf::from("/var/lib/iomt-gateway/outbox.db")
}
fn default_storage_key() -> PathBuf {
    PathBuf::from("/etc/iomt-gateway/storage.key")
}
fn default_max_size_mb() -> u64 {
    512
}
fn default_commit_window() -> u64 {
    20
}
fn default_max_batch_rows() -> usize {
    1000
}

/// `[[uplinks]]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, tag = "kind", rename_all = "lowercase")]
pub enum RawUplink {
    /// Writes each Bundle as a JSON file.
    File {
        /// A unique name (default `file`); the outbox tracks delivery per name.
        name: Option<String>,
        /// The directory.
        dir: PathBuf,
        /// Most Observations per Bundle (default 100).
        batch_size: Option<usize>,
    },
    /// POSTs transaction Bundles to a FHIR server.
    Fhir {
        /// A unique name (default `fhir`); the outbox tracks delivery per name.
        name: Option<String>,
        /// The FHIR base URL.
        base_url: String,
        /// File with a bearer token (mode 0600), if the server needs one.
        bearer_token_file: Option<PathBuf>,
        /// Most Observations per Bundle (default 100).
        batch_size: Option<usize>,
        /// Timeout of one request in seconds (default 30).
        timeout_secs: Option<u64>,
        /// Longest retry delay in seconds (default 300).
        max_backoff_secs: Option<u64>,
        /// PEM bundle of extra trusted CAs (private PKI), added to the system roots.
        ca_file: Option<PathBuf>,
        /// Client certificate (PEM, mode 0600) for mutual TLS.
        client_cert_file: Option<PathBuf>,
        /// Client private key (PEM, mode 0600) for mutual TLS.
        client_key_file: Option<PathBuf>,
        /// Allow plain `http://` to a host that is not loopback (default false; a warning
        /// is logged at every start when used).
        #[serde(default)]
        allow_insecure: bool,
        /// OAuth2 client credentials.
        oauth2: Option<Box<RawOAuth2>>,
        /// SMART Backend Services.
        smart: Option<Box<RawSmart>>,
    },
    /// Publishes pseudonymized FHIR to an MQTT broker at QoS 1.
    Mqtt {
        /// A unique name (default `mqtt`); the outbox tracks delivery per name.
        name: Option<String>,
        /// The broker: `mqtts://host:port` (TLS verified against the system roots and
        /// `ca_file`; port 8883 by default) or `mqtt://host:port` (plain, port 1883 by
        /// default; only to a loopback broker unless `allow_insecure`).
        url: String,
        /// Topic to publish on; `{gateway}` is replaced by the gateway's pseudonym.
        topic: String,
        /// `bundle` (default: one transaction Bundle per message) or `observation` (one
        /// Observation per message).
        mode: Option<PublishMode>,
        /// Client id (default: `iomt-gateway-` and the start of the gateway's pseudonym).
        client_id: Option<String>,
        /// File with the user name (first line) and password (second line), mode 0600.
        credentials_file: Option<PathBuf>,
        /// Most Observations per Bundle (default 100).
        batch_size: Option<usize>,
        /// Seconds to wait for the connection and every PUBACK of a Bundle (default 30).
        timeout_secs: Option<u64>,
        /// Longest retry delay in seconds (default 300).
        max_backoff_secs: Option<u64>,
        /// PEM bundle of extra trusted CAs (private PKI), added to the system roots
        /// (`mqtts://` only).
        ca_file: Option<PathBuf>,
        /// Client certificate (PEM, mode 0600) for mutual TLS (`mqtts://` only).
        client_cert_file: Option<PathBuf>,
        /// Client private key (PEM, mode 0600) for mutual TLS (`mqtts://` only).
        client_key_file: Option<PathBuf>,
        /// Allow plain `mqtt://` to a broker that is not loopback (default false; a
        /// warning is logged at every start when used).
        #[serde(default)]
        allow_insecure: bool,
    },
}

/// `[uplinks.oauth2]`: OAuth2 client credentials.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOAuth2 {
    /// The token endpoint.
    pub token_url: String,
    /// The client id.
    pub client_id: String,
    /// File holding the client secret (mode 0600).
    pub client_secret_file: PathBuf,
    /// Requested scopes, space-separated.
    pub scope: Option<String>,
}

/// `[uplinks.smart]`: SMART Backend Services (client-confidential-asymmetric).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSmart {
    /// The client id registered with the backend.
    pub client_id: String,
    /// The private key made by `iomt-gateway keygen --smart` (PEM, mode 0600).
    pub private_key_file: PathBuf,
    /// `ES384` (default) or `RS384`.
    #[serde(default = "default_smart_alg")]
    pub alg: Alg,
    /// Requested scopes (default `system/Observation.write system/Device.write`).
    #[serde(default = "default_smart_scope")]
    pub scope: String,
    /// The token endpoint (default: discovered from `{base_url}/.well-known/smart-configuration`).
    pub token_url: Option<String>,
}

fn default_smart_alg() -> Alg {
    Alg::Es384
}
fn default_smart_scope() -> String {
    "system/Observation.write system/Device.write".into()
}

/// `[log]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    /// A tracing filter (`info`, `iomt_gateway=debug`...); `RUST_LOG` overrides it.
    #[serde(default = "default_level")]
    pub level: String,
    /// `text` or `json`.
    #[serde(default)]
    pub format: LogFormat,
}

impl Default for RawLog {
    fn default() -> Self {
        Self {
            level: default_level(),
            format: LogFormat::Text,
        }
    }
}

fn default_level() -> String {
    "info".into()
}

/// Log output format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line (structured fields kept).
    Json,
}

/// The whole file as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// `[gateway]`
    pub gateway: RawGateway,
    /// `[patient]`
    pub patient: RawPatient,
    /// `[pseudonymization]`
    pub pseudonymization: RawPseudonymization,
    /// `[normalize]`
    #[serde(default)]
    pub normalize: RawNormalize,
    /// `[sim]`
    #[serde(default)]
    pub sim: RawSim,
    /// `[serial]`
    #[serde(default)]
    pub serial: RawSerial,
    /// `[ble]`
    #[serde(default)]
    pub ble: RawBle,
    /// `[mqtt]`
    #[serde(default)]
    pub mqtt: RawMqtt,
    /// `[devices.<profile-id>]`
    #[serde(default)]
    pub devices: BTreeMap<String, RawDevice>,
    /// `[outbox]`
    #[serde(default)]
    pub outbox: RawOutbox,
    /// `[[uplinks]]`
    #[serde(default)]
    pub uplinks: Vec<RawUplink>,
    /// `[log]`
    #[serde(default)]
    pub log: RawLog,
}

/// Simulator settings, validated.
#[derive(Debug, Clone)]
pub struct SimSettings {
    /// Profile ids (empty: all sim profiles).
    pub profiles: Vec<String>,
    /// Interval between readings of one device.
    pub interval: Duration,
    /// NaN probability.
    pub nan_probability: f64,
    /// Implausible-value probability.
    pub out_of_range_probability: f64,
    /// Seed.
    pub seed: u64,
    /// Reading limit.
    pub max_readings: Option<u64>,
}

/// One serial port, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct SerialPort {
    /// The device path.
    pub path: String,
    /// The profile id.
    pub profile: String,
    /// The zone of the device's clock, when set for this port.
    pub zone: Option<Zone>,
    /// At most one reading per this interval, if set.
    pub min_interval: Option<Duration>,
}

/// One allow-listed BLE device, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct BleDevice {
    /// The address, upper case.
    pub address: String,
    /// The profile id.
    pub profile: String,
    /// The zone of the device's clock, when set for this device.
    pub zone: Option<Zone>,
}

/// BLE driver settings, validated.
#[derive(Debug, Clone)]
pub struct BleSettings {
    /// The adapter (`hci0`), or the first.
    pub adapter: Option<String>,
    /// The allow-list (at least one device).
    pub devices: Vec<BleDevice>,
    /// First reconnect delay.
    pub reconnect_initial: Duration,
    /// Longest reconnect delay.
    pub reconnect_max: Duration,
}

/// Serial driver settings, validated.
#[derive(Debug, Clone)]
pub struct SerialSettings {
    /// The ports (at least one).
    pub ports: Vec<SerialPort>,
    /// First reconnect delay.
    pub reconnect_initial: Duration,
    /// Longest reconnect delay.
    pub reconnect_max: Duration,
}

/// What an uplink is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UplinkKind {
    /// JSON files in a directory.
    File {
        /// The directory.
        dir: PathBuf,
    },
    /// A FHIR server.
    Fhir(Box<FhirSettings>),
    /// An MQTT broker.
    Mqtt(Box<MqttUplinkSettings>),
}

/// An uplink, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uplink {
    /// Its unique name.
    pub name: String,
    /// Most Observations per Bundle.
    pub batch_size: usize,
    /// Longest retry delay.
    pub backoff_max: Duration,
    /// What it is.
    pub kind: UplinkKind,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The kit's id.
    pub gateway_id: String,
    /// Profiles directory.
    pub profiles_dir: PathBuf,
    /// Zone for device times without zone.
    pub zone: Zone,
    /// Per-profile zones.
    pub device_zones: BTreeMap<String, Zone>,
    /// Reading channel capacity.
    pub channel_capacity: usize,
    /// The patient id (never logged).
    pub patient_id: String,
    /// The pseudonymization key file.
    pub pseudonym_key_file: PathBuf,
    /// Out-of-range rule.
    pub out_of_range: OutOfRange,
    /// Simulator, when enabled.
    pub sim: Option<SimSettings>,
    /// Serial driver, when ports are configured.
    pub serial: Option<SerialSettings>,
    /// BLE driver, when devices are configured.
    pub ble: Option<BleSettings>,
    /// MQTT driver, when enabled.
    pub mqtt: Option<MqttSettings>,
    /// The outbox.
    pub outbox: OutboxSettings,
    /// The storage key file.
    pub storage_key_file: PathBuf,
    /// Uplinks.
    pub uplinks: Vec<Uplink>,
    /// Log filter.
    pub log_level: String,
    /// Log format.
    pub log_format: LogFormat,
}

fn validate_uplink(u: &RawUplink) -> Result<Uplink, String> {
    let batch = |b: &Option<usize>| match b {
        Some(0) => Err("batch_size must be at least 1".to_string()),
        Some(n) => Ok(*n),
        None => Ok(100),
    };
    match u {
        RawUplink::File {
            name,
            dir,
            batch_size,
        } => Ok(Uplink {
            name: name.clone().unwrap_or_else(|| "file".into()),
            batch_size: batch(batch_size)?,
            backoff_max: Duration::from_secs(60),
            kind: UplinkKind::File { dir: dir.clone() },
        }),
        RawUplink::Fhir {
            name,
            base_url,
            bearer_token_file,
            batch_size,
            timeout_secs,
            max_backoff_secs,
            ca_file,
            client_cert_file,
            client_key_file,
            allow_insecure,
            oauth2,
            smart,
        } => {
            let url = reqwest::Url::parse(base_url)
                .map_err(|e| format!("base_url `{base_url}` is not a URL: {e}"))?;
            if !matches!(url.scheme(), "http" | "https") {
                return Err(format!("base_url `{base_url}` must be http:// or https://"));
            }
            if !url.username().is_empty() || url.password().is_some() {
                return Err("base_url must not carry credentials; use bearer_token_file".into());
            }
            let loopback = url.host_str().is_some_and(is_loopback_host);
            if url.scheme() == "http" && !loopback && !allow_insecure {
                return Err(format!(
                    "base_url `{base_url}` is plain http to a host that is not loopback: patient data would cross the network unencrypted. Use https://, or set allow_insecure = true if this link is protected otherwise"
                ));
            }
            let client_identity = client_identity(client_cert_file, client_key_file)?;
            let auth = match (bearer_token_file, oauth2, smart) {
                (None, None, None) => AuthSettings::None,
                (Some(file), None, None) => AuthSettings::Bearer(file.clone()),
                (None, Some(o), None) => AuthSettings::OAuth2(OAuth2Settings {
                    token_url: o.token_url.clone(),
                    client_id: o.client_id.clone(),
                    client_secret_file: o.client_secret_file.clone(),
                    scope: o.scope.clone(),
                }),
                (None, None, Some(sm)) => AuthSettings::Smart(SmartSettings {
                    client_id: sm.client_id.clone(),
                    private_key_file: sm.private_key_file.clone(),
                    alg: sm.alg,
                    scope: sm.scope.clone(),
                    token_url: sm.token_url.clone(),
                }),
                _ => return Err("choose one way to authenticate: bearer_token_file, [uplinks.oauth2] or [uplinks.smart]".into()),
            };
            let name = name.clone().unwrap_or_else(|| "fhir".into());
            Ok(Uplink {
                batch_size: batch(batch_size)?,
                backoff_max: Duration::from_secs(max_backoff_secs.unwrap_or(300).max(1)),
                kind: UplinkKind::Fhir(Box::new(FhirSettings {
                    name: name.clone(),
                    base_url: base_url.clone(),
                    auth,
                    timeout: Duration::from_secs(timeout_secs.unwrap_or(30).max(1)),
                    ca_file: ca_file.clone(),
                    client_identity,
                    insecure: url.scheme() == "http" && !loopback,
                })),
                name,
            })
        }
        RawUplink::Mqtt { batch_size, .. } => validate_mqtt_uplink(u, batch(batch_size)?),
    }
}

fn validate_mqtt_uplink(u: &RawUplink, batch_size: usize) -> Result<Uplink, String> {
    let RawUplink::Mqtt {
        name,
        url,
        topic,
        mode,
        client_id,
        credentials_file,
        timeout_secs,
        max_backoff_secs,
        ca_file,
        client_cert_file,
        client_key_file,
        allow_insecure,
        ..
    } = u
    else {
        return Err("not an MQTT uplink".into());
    };
    let (mode, timeout_secs, max_backoff_secs) = (*mode, *timeout_secs, *max_backoff_secs);
    let (host, port, tls) = crate::uplink::mqtt::parse_url(url)?;
    let loopback = is_loopback_host(&host);
    if !tls && !loopback && !allow_insecure {
        return Err(format!(
            "url `{url}` is plain mqtt:// to a broker that is not loopback: patient data would cross the network unencrypted. Use mqtts://, or set allow_insecure = true if this link is protected otherwise"
        ));
    }
    if !tls && (ca_file.is_some() || client_cert_file.is_some() || client_key_file.is_some()) {
        return Err(format!(
            "ca_file, client_cert_file and client_key_file need a TLS broker: use mqtts:// instead of `{url}`"
        ));
    }
    let client_identity = client_identity(client_cert_file, client_key_file)?;
    crate::uplink::mqtt::check_topic(topic)?;
    if client_id.as_deref().is_some_and(str::is_empty) {
        return Err("client_id must not be empty (leave it out for the default)".into());
    }
    let name = name.clone().unwrap_or_else(|| "mqtt".into());
    let backoff_max = Duration::from_secs(max_backoff_secs.unwrap_or(300).max(1));
    Ok(Uplink {
        batch_size,
        backoff_max,
        kind: UplinkKind::Mqtt(Box::new(MqttUplinkSettings {
            name: name.clone(),
            host,
            port,
            tls: tls.then(|| TlsSettings {
                ca_file: ca_file.clone(),
                client_identity,
            }),
            insecure: !tls && !loopback,
            client_id: client_id.clone(),
            topic: topic.to_string(),
            mode: mode.unwrap_or_default(),
            credentials_file: credentials_file.clone(),
            ack_timeout: Duration::from_secs(timeout_secs.unwrap_or(30).max(1)),
            keep_alive: Duration::from_secs(30),
            batch_size,
            reconnect_initial: Duration::from_millis(500),
            reconnect_max: backoff_max,
        })),
        name,
    })
}

/// An uplink's mutual-TLS identity: both files or neither.
fn client_identity(
    cert: &Option<PathBuf>,
    key: &Option<PathBuf>,
) -> Result<Option<(PathBuf, PathBuf)>, String> {
    match (cert, key) {
        (Some(c), Some(k)) => Ok(Some((c.clone(), k.clone()))),
        (None, None) => Ok(None),
        _ => Err("mutual TLS needs both client_cert_file and client_key_file".into()),
    }
}

/// Whether a URL's host is this machine: a loopback address or `localhost` (IPv6 with or
/// without brackets).
pub fn is_loopback_host(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    bare.eq_ignore_ascii_case("localhost")
        || bare
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The zone `{key}.time_zone` names, if set; a name that is not a zone is a problem.
fn optional_zone(key: &str, name: &Option<String>, problems: &mut Vec<String>) -> Option<Zone> {
    let name = name.as_ref()?;
    parse_zone(name)
        .map_err(|e| problems.push(format!("{key}.time_zone: {e}")))
        .ok()
}

/// Checks a driver section's reconnect delays: the first at least 1 ms, the longest at
/// least the first.
fn check_reconnect(section: &str, initial_ms: u64, max_ms: u64, problems: &mut Vec<String>) {
    if initial_ms == 0 {
        problems.push(format!("{section}.reconnect_initial_ms must be at least 1"));
    }
    if max_ms < initial_ms {
        problems.push(format!(
            "{section}.reconnect_max_ms must be at least {section}.reconnect_initial_ms"
        ));
    }
}

fn parse_zone(name: &str) -> Result<Zone, String> {
    name.parse::<chrono_tz::Tz>().map(Zone::Named).map_err(|_| {
        format!("`{name}` is not an IANA time zone name (e.g. `Europe/Berlin`, `UTC`)")
    })
}

impl Config {
    /// Loads `path` (TOML) with environment overrides.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        if !path.exists() {
            return Err(ConfigError {
                source_name: Some(path.display().to_string()),
                problems: vec![format!(
                    "the file does not exist; copy gateway.example.toml to {} and edit it, or pass --config FILE",
                    path.display()
                )],
            });
        }
        let source = config::File::from(path).format(config::FileFormat::Toml);
        Self::build(source, Some(path.display().to_string()))
    }

    /// Loads a TOML text (the demo's embedded default) with environment overrides.
    pub fn from_toml_str(text: &str, name: &str) -> Result<Self, ConfigError> {
        Self::build(
            config::File::from_str(text, config::FileFormat::Toml),
            Some(name.into()),
        )
    }

    fn build<S>(source: S, name: Option<String>) -> Result<Self, ConfigError>
    where
        S: config::Source + Send + Sync + 'static,
    {
        let fail = |e: config::ConfigError| ConfigError {
            source_name: name.clone(),
            problems: vec![e.to_string()],
        };
        let raw: RawConfig = config::Config::builder()
            .add_source(source)
            .add_source(
                config::Environment::with_prefix(ENV_PREFIX)
                    .prefix_separator("__")
                    .separator("__")
                    .try_parsing(true)
                    .list_separator(",")
                    .with_list_parse_key("sim.profiles")
                    .with_list_parse_key("mqtt.profiles"),
            )
            .build()
            .map_err(fail)?
            .try_deserialize()
            .map_err(fail)?;
        Self::from_raw(raw).map_err(|problems| ConfigError {
            source_name: name,
            problems,
        })
    }

    /// Validates raw settings, collecting every problem.
    pub fn from_raw(raw: RawConfig) -> Result<Self, Vec<String>> {
        let mut problems = Vec::new();
        if raw.gateway.id.trim().is_empty() {
            problems.push("gateway.id must not be empty".into());
        }
        if raw.patient.id.trim().is_empty() {
            problems.push("patient.id must not be empty".into());
        }
        if raw.gateway.channel_capacity == 0 {
            problems.push("gateway.channel_capacity must be at least 1".into());
        }
        let zone = optional_zone("gateway", &raw.gateway.time_zone, &mut problems)
            .unwrap_or(Zone::GatewayLocal);
        let mut device_zones = BTreeMap::new();
        for (profile, dev) in &raw.devices {
            let key = format!("devices.{profile}");
            if let Some(zone) = optional_zone(&key, &dev.time_zone, &mut problems) {
                device_zones.insert(profile.clone(), zone);
            }
        }
        let s = &raw.sim;
        if !(s.interval_secs.is_finite() && s.interval_secs > 0.0 && s.interval_secs <= 86_400.0) {
            problems.push(
                "sim.interval_secs must be between 0 and 86400 seconds (exclusive of 0)".into(),
            );
        }
        for (key, p) in [
            ("sim.nan_probability", s.nan_probability),
            ("sim.out_of_range_probability", s.out_of_range_probability),
        ] {
            if !(0.0..=1.0).contains(&p) {
                problems.push(format!("{key} must be between 0 and 1"));
            }
        }
        let mut serial_ports = Vec::new();
        for (i, p) in raw.serial.ports.iter().enumerate() {
            let key = format!("serial.ports[{i}]");
            if p.path.trim().is_empty() {
                problems.push(format!("{key}.path must not be empty"));
            }
            if p.profile.trim().is_empty() {
                problems.push(format!("{key}.profile must name a serial profile id"));
            }
            if raw.serial.ports[..i].iter().any(|q| q.path == p.path) {
                problems.push(format!(
                    "{key}.path `{}` is configured twice; one port, one device",
                    p.path
                ));
            }
            let zone = optional_zone(&key, &p.time_zone, &mut problems);
            serial_ports.push(SerialPort {
                path: p.path.clone(),
                profile: p.profile.clone(),
                zone,
                min_interval: (p.min_interval_ms > 0)
                    .then(|| Duration::from_millis(p.min_interval_ms)),
            });
        }
        let r = &raw.serial;
        check_reconnect(
            "serial",
            r.reconnect_initial_ms,
            r.reconnect_max_ms,
            &mut problems,
        );
        let mut ble_devices = Vec::new();
        for (i, d) in raw.ble.devices.iter().enumerate() {
            let key = format!("ble.devices[{i}]");
            let address = d.address.trim().to_uppercase();
            let valid = address.len() == 17
                && address.split(':').count() == 6
                && address
                    .split(':')
                    .all(|b| b.len() == 2 && b.chars().all(|c| c.is_ascii_hexdigit()));
            if !valid {
                problems.push(format!(
                    "{key}.address `{}` is not a Bluetooth address like `AA:BB:CC:DD:EE:FF`",
                    d.address
                ));
            }
            if d.profile.trim().is_empty() {
                problems.push(format!("{key}.profile must name a BLE profile id"));
            }
            if raw.ble.devices[..i]
                .iter()
                .any(|q| q.address.trim().to_uppercase() == address)
            {
                problems.push(format!(
                    "{key}.address `{}` is configured twice; one address, one device",
                    d.address
                ));
            }
            let zone = optional_zone(&key, &d.time_zone, &mut problems);
            ble_devices.push(BleDevice {
                address,
                profile: d.profile.clone(),
                zone,
            });
        }
        let r = &raw.ble;
        check_reconnect(
            "ble",
            r.reconnect_initial_ms,
            r.reconnect_max_ms,
            &mut problems,
        );
        let m = &raw.mqtt;
        let mqtt_identity = client_identity(&m.client_cert_file, &m.client_key_file)
            .map_err(|e| problems.push(format!("mqtt: {e}")))
            .ok()
            .flatten();
        if m.enabled {
            if m.host.trim().is_empty() {
                problems.push("mqtt.host must not be empty".into());
            }
            if m.port == Some(0) {
                problems.push("mqtt.port must not be 0".into());
            }
            if !m.tls
                && (m.ca_file.is_some()
                    || m.client_cert_file.is_some()
                    || m.client_key_file.is_some())
            {
                problems.push(
                    "mqtt.ca_file, mqtt.client_cert_file and mqtt.client_key_file need mqtt.tls = true"
                        .into(),
                );
            }
            if m.client_id.trim().is_empty() {
                problems.push("mqtt.client_id must not be empty (the broker keeps the gateway's session under it)".into());
            }
            if m.max_payload_bytes == 0 {
                problems.push("mqtt.max_payload_bytes must be at least 1".into());
            }
            if m.max_in_flight == 0 {
                problems.push("mqtt.max_in_flight must be at least 1".into());
            }
            if m.dead_letter_limit == 0 {
                problems.push("mqtt.dead_letter_limit must be at least 1".into());
            }
            check_reconnect(
                "mqtt",
                m.reconnect_initial_ms,
                m.reconnect_max_ms,
                &mut problems,
            );
        }
        let o = &raw.outbox;
        if o.max_size_mb == 0 {
            problems.push("outbox.max_size_mb must be at least 1".into());
        }
        if o.max_batch_rows == 0 {
            problems.push("outbox.max_batch_rows must be at least 1".into());
        }
        if o.max_age_days.is_some_and(|d| !(d.is_finite() && d > 0.0)) {
            problems.push("outbox.max_age_days must be a positive number of days".into());
        }
        if raw.uplinks.is_empty() {
            problems.push("no uplink configured: add an [[uplinks]] table (kind = \"fhir\" for a FHIR server, kind = \"file\" for a directory)".into());
        }
        let mut uplinks = Vec::new();
        for (i, u) in raw.uplinks.iter().enumerate() {
            match validate_uplink(u) {
                Ok(u) => {
                    if uplinks.iter().any(|o: &Uplink| o.name == u.name) {
                        problems.push(format!("uplinks[{i}]: the name `{}` is used twice; give each uplink a unique `name`", u.name));
                    }
                    uplinks.push(u);
                }
                Err(e) => problems.push(format!("uplinks[{i}]: {e}")),
            }
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&raw.log.level) {
            problems.push(format!(
                "log.level `{}` is not a valid filter: {e}",
                raw.log.level
            ));
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(Config {
            gateway_id: raw.gateway.id,
            profiles_dir: raw.gateway.profiles_dir,
            zone,
            device_zones,
            channel_capacity: raw.gateway.channel_capacity,
            patient_id: raw.patient.id,
            pseudonym_key_file: raw.pseudonymization.key_file,
            out_of_range: raw.normalize.out_of_range,
            sim: s.enabled.then(|| SimSettings {
                profiles: s.profiles.clone(),
                interval: Duration::from_secs_f64(s.interval_secs),
                nan_probability: s.nan_probability,
                out_of_range_probability: s.out_of_range_probability,
                seed: s.seed,
                max_readings: (s.max_readings > 0).then_some(s.max_readings),
            }),
            serial: (!serial_ports.is_empty()).then(|| SerialSettings {
                ports: serial_ports,
                reconnect_initial: Duration::from_millis(raw.serial.reconnect_initial_ms),
                reconnect_max: Duration::from_millis(raw.serial.reconnect_max_ms),
            }),
            ble: (!ble_devices.is_empty()).then(|| BleSettings {
                adapter: raw.ble.adapter.clone(),
                devices: ble_devices,
                reconnect_initial: Duration::from_millis(raw.ble.reconnect_initial_ms),
                reconnect_max: Duration::from_millis(raw.ble.reconnect_max_ms),
            }),
            mqtt: m.enabled.then(|| MqttSettings {
                host: m.host.clone(),
                port: m.port.unwrap_or(if m.tls { 8883 } else { 1883 }),
                tls: m.tls.then(|| TlsSettings {
                    ca_file: m.ca_file.clone(),
                    client_identity: mqtt_identity.clone(),
                }),
                client_id: m.client_id.clone(),
                credentials_file: m.credentials_file.clone(),
                keep_alive: Duration::from_secs(m.keep_alive_secs.max(5)),
                max_payload: m.max_payload_bytes,
                max_in_flight: m.max_in_flight,
                dead_letter_limit: m.dead_letter_limit,
                reconnect_initial: Duration::from_millis(m.reconnect_initial_ms),
                reconnect_max: Duration::from_millis(m.reconnect_max_ms),
                profiles: m.profiles.clone(),
            }),
            outbox: OutboxSettings {
                path: raw.outbox.path,
                max_bytes: raw.outbox.max_size_mb.saturating_mul(1024 * 1024),
                max_age: raw
                    .outbox
                    .max_age_days
                    .map(|d| Duration::from_secs_f64(d * 86_400.0)),
                when_full: raw.outbox.when_full,
                commit_window: Duration::from_millis(raw.outbox.commit_window_ms),
                max_batch_rows: raw.outbox.max_batch_rows,
            },
            storage_key_file: raw.outbox.key_file,
            uplinks,
            log_level: raw.log.level,
            log_format: raw.log.format,
        })
    }

    /// The names of the configured uplinks.
    pub fn uplink_names(&self) -> Vec<String> {
        self.uplinks.iter().map(|u| u.name.clone()).collect()
    }

    /// The zone for a profile's devices.
    pub fn zone_for(&self, profile: &str) -> Zone {
        self.device_zones.get(profile).copied().unwrap_or(self.zone)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[gateway]
id = "kit-1"
[patient]
id = "MRN-1"
[pseudonymization]
key_file = "/tmp/key"
[[uplinks]]
kind = "file"
dir = "/tmp/out"
"#;

    #[test]
    fn the_example_configuration_is_valid() {
        let text = include_str!("../../gateway.example.toml");
        let c = Config::from_toml_str(text, "gateway.example.toml").unwrap();
        assert_eq!(c.uplinks.len(), 1);
        assert_eq!(c.uplinks[0].batch_size, 100);
    }

    #[test]
    fn a_minimal_file_gets_the_documented_defaults() {
        let c = Config::from_toml_str(MINIMAL, "test").unwrap();
        assert_eq!(c.uplinks[0].name, "file");
        assert_eq!(c.outbox.max_bytes, 512 * 1024 * 1024);
        assert_eq!(c.outbox.when_full, WhenFull::EvictOldest);
        assert_eq!(c.out_of_range, OutOfRange::Flag);
        assert!(c.sim.is_none());
        assert_eq!(c.zone, Zone::GatewayLocal);
    }

    /// The configuration `text` is refused with a message naming every one of `needles`.
    fn assert_problems(text: &str, needles: &[&str]) {
        let msg = Config::from_toml_str(text, "test").unwrap_err().to_string();
        for needle in needles {
            assert!(msg.contains(needle), "{needle} missing from {msg}");
        }
    }

    #[test]
    fn unknown_keys_are_refused_naming_the_key() {
        let text = format!("{MINIMAL}\n[sim]\nenabeld = true\n");
        let err = Config::from_toml_str(&text, "test").unwrap_err();
        assert!(err.to_string().contains("enabeld"), "{err}");
    }

    #[test]
    fn every_semantic_problem_is_reported_at_once() {
        let text = MINIMAL.replace("kit-1", "").replace("MRN-1", "")
            + "[sim]\ninterval_secs = 0\nnan_probability = 2\n[devices.cuff]\ntime_zone = \"Mars/Olympus\"\n";
        assert_problems(
            &text,
            &[
                "gateway.id",
                "patient.id",
                "sim.interval_secs",
                "sim.nan_probability",
                "devices.cuff.time_zone",
            ],
        );
    }

    #[test]
    fn serial_ports_are_validated_naming_each_key() {
        let text = format!(
            "{MINIMAL}\n[serial]\nreconnect_initial_ms = 0\n[[serial.ports]]\npath = \"/dev/ttyUSB0\"\nprofile = \"masimo\"\ntime_zone = \"Mars/Olympus\"\n[[serial.ports]]\npath = \"/dev/ttyUSB0\"\nprofile = \"nonin\"\n"
        );
        assert_problems(
            &text,
            &[
                "serial.ports[0].time_zone",
                "serial.ports[1].path `/dev/ttyUSB0` is configured twice",
                "serial.reconnect_initial_ms",
            ],
        );
    }

    #[test]
    fn ble_devices_are_validated_naming_each_key() {
        let text = format!(
            "{MINIMAL}\n[[ble.devices]]\naddress = \"AA:BB:CC\"\nprofile = \"cuff\"\n[[ble.devices]]\naddress = \"aa:bb:cc:dd:ee:ff\"\nprofile = \"cuff\"\ntime_zone = \"Mars/Olympus\"\n[[ble.devices]]\naddress = \"AA:BB:CC:DD:EE:FF\"\nprofile = \"cuff\"\n"
        );
        assert_problems(
            &text,
            &[
                "ble.devices[0].address `AA:BB:CC`",
                "ble.devices[1].time_zone",
                "ble.devices[2].address `AA:BB:CC:DD:EE:FF` is configured twice",
            ],
        );
    }

    #[test]
    fn a_ble_device_binds_an_address_to_a_profile_with_its_zone() {
        let text = format!(
            "{MINIMAL}\n[ble]\nadapter = \"hci1\"\n[[ble.devices]]\naddress = \"aa:bb:cc:dd:ee:ff\"\nprofile = \"cuff\"\ntime_zone = \"UTC\"\n"
        );
        let c = Config::from_toml_str(&text, "test").unwrap();
        let ble = c.ble.unwrap();
        assert_eq!(ble.adapter.as_deref(), Some("hci1"));
        assert_eq!(ble.devices[0].address, "AA:BB:CC:DD:EE:FF");
        assert_eq!(ble.devices[0].zone, Some(Zone::Named(chrono_tz::UTC)));
    }

    #[test]
    fn a_serial_port_binds_a_path_to_a_profile_with_its_zone() {
        let text = format!(
            "{MINIMAL}\n[[serial.ports]]\npath = \"/dev/serial/by-id/usb-FTDI-if00\"\nprofile = \"masimo\"\ntime_zone = \"UTC\"\n"
        );
        let c = Config::from_toml_str(&text, "test").unwrap();
        let serial = c.serial.unwrap();
        assert_eq!(serial.ports[0].profile, "masimo");
        assert_eq!(serial.ports[0].zone, Some(Zone::Named(chrono_tz::UTC)));
        assert_eq!(serial.reconnect_max, Duration::from_secs(30));
    }

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
    fn an_mqtts_uplink_defaults_to_port_8883_and_bundles() {
        let text = format!(
            "{MINIMAL}\n[mqtt]\nenabled = true\n[[uplinks]]\nkind = \"mqtt\"\nurl = \"mqtts://broker.example.org\"\ntopic = \"iomt/{{gateway}}/fhir\"\n"
        );
        let c = Config::from_toml_str(&text, "test").unwrap();
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
        let text = format!(
            "{MINIMAL}\n[mqtt]\nenabled = true\nhost = \"broker.ward.example\"\ntls = true\nca_file = \"/ca.pem\"\nclient_cert_file = \"/c.pem\"\nclient_key_file = \"/c.key\"\n"
        );
        let mqtt = Config::from_toml_str(&text, "test").unwrap().mqtt.unwrap();
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

    fn mqtt_uplink(keys: &str) -> Result<MqttUplinkSettings, String> {
        let text = format!(
            "{MINIMAL}\n[[uplinks]]\nkind = \"mqtt\"\ntopic = \"iomt/{{gateway}}\"\n{keys}\n"
        );
        let c = Config::from_toml_str(&text, "test").map_err(|e| e.to_string())?;
        match &c.uplinks[1].kind {
            UplinkKind::Mqtt(u) => Ok((**u).clone()),
            _ => Err("not an MQTT uplink".into()),
        }
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

    #[test]
    fn environment_variables_override_the_file() {
        // A key no other test asserts on, so tests running in parallel are not disturbed.
        std::env::set_var("IOMT_GATEWAY__LOG__LEVEL", "iomt_gateway=trace");
        let c = Config::from_toml_str(MINIMAL, "test");
        std::env::remove_var("IOMT_GATEWAY__LOG__LEVEL");
        assert_eq!(c.unwrap().log_level, "iomt_gateway=trace");
    }
}
